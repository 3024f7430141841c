//! Command definitions and dispatch. One file per group of commands.

mod ledger;
mod projections;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use journey_ledger::config::Config;

/// An event-sourced ledger of customer journeys.
///
/// Every customer interaction is stored as an immutable, hash-chained event;
/// lifecycle stages, loyalty, CLV and churn alerts are projected from them.
///
/// Quick start:
///   journey serve --demo                       # demo data + GraphiQL at http://127.0.0.1:8080/graphql
///   journey import orders.txt --format cdnow    # load CDNOW purchase histories
///   journey events 00003                        # one customer's history as JSON lines
///
/// The store defaults to the embedded SQLite file ./journey.db. Choose another
/// with --store, JOURNEY_STORE, or `store = "..."` in journey.toml:
///   sqlite://path/to/file.db   postgres://user@host/db   esdb://host:2113?tls=false
#[derive(Debug, Parser)]
#[command(name = "journey", version, verbatim_doc_comment)]
pub struct Cli {
    /// Store URL; overrides JOURNEY_STORE and the config file.
    #[arg(long, global = true, value_name = "URL")]
    pub store: Option<String>,
    /// Config file (TOML); default ./journey.toml when present.
    #[arg(long, global = true, value_name = "FILE", env = "JOURNEY_CONFIG")]
    pub config: Option<PathBuf>,
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Import events from a file (CDNOW purchases or JSON lines), idempotently.
    ///
    /// Importing the same file twice stores it once: event ids are derived
    /// from the file's content. A bad line stops the import with
    /// `file:line: reason`, and nothing of the batch holding it is stored.
    #[command(verbatim_doc_comment)]
    Import(ledger::ImportArgs),
    /// Print one customer's event stream as JSON lines, oldest first.
    Events(ledger::EventsArgs),
    /// Print counts of events, streams and event types.
    Stats,
    /// Measure the store: `bench append`, `bench read`, `bench rebuild`.
    #[command(subcommand)]
    Bench(ledger::BenchCommand),
    /// Replay the whole log into a fresh version of the read models under
    /// the rules in projections/ (or --rules DIR), then switch to it.
    ///
    /// Queries keep reading the previous version until the new one is
    /// complete. An interrupted rebuild under the same rules resumes from its
    /// last committed batch when run again.
    #[command(verbatim_doc_comment)]
    Rebuild(projections::RebuildArgs),
    /// Keep the active read models up to date: follow the store and apply
    /// new events as they are committed (--once: catch up and exit).
    Run(projections::RunArgs),
    /// Compare two rule sets: replay the log in memory under both and report,
    /// per projection, how many customers change stage or value tier, with
    /// examples (JSON). Nothing is written.
    ///
    ///   cp -r projections /tmp/rules-b && $EDITOR /tmp/rules-b/lifecycle.toml
    ///   journey diff --rules-a projections --rules-b /tmp/rules-b
    #[command(verbatim_doc_comment)]
    Diff(projections::DiffArgs),
    /// Print a customer's projected state as JSON: lifecycle stage, stage
    /// history and value tier, as of now or --as-of RFC3339.
    ///
    ///   journey customer 00003 --as-of 1998-06-30T00:00:00Z
    #[command(verbatim_doc_comment)]
    Customer(projections::CustomerArgs),
    /// List the read-model versions (building, active, retired) as JSON lines.
    Versions(projections::ReadModelArgs),
}

/// Sets up `tracing` to stderr; `RUST_LOG` wins over `-v`.
pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Settings after merging the config file, environment and flags.
pub fn settings(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = Config::load(cli.config.as_deref()).context("loading configuration")?;
    if let Some(store) = &cli.store {
        config.store = store.clone();
    }
    Ok(config)
}

/// Runs the chosen command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = settings(&cli)?;
    match cli.command {
        Command::Import(args) => ledger::import(&config, args).await,
        Command::Events(args) => ledger::events(&config, args).await,
        Command::Stats => ledger::stats(&config).await,
        Command::Bench(cmd) => ledger::bench(&config, cmd).await,
        Command::Rebuild(args) => projections::rebuild(&config, args).await,
        Command::Run(args) => projections::run(&config, args).await,
        Command::Diff(args) => projections::diff(&config, args).await,
        Command::Customer(args) => projections::customer(&config, args).await,
        Command::Versions(args) => projections::versions(&config, args).await,
    }
}

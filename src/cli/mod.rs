//! Command definitions and dispatch. One file per group of commands.

mod ledger;
mod serve;

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
    /// Measure the store: `bench append` and `bench read`.
    #[command(subcommand)]
    Bench(ledger::BenchCommand),
    /// Serve the GraphQL API (GraphiQL at /graphql, subscriptions at
    /// /graphql/ws, /healthz, /metrics).
    ///
    /// Try it:  journey serve --demo
    /// Requests need `Authorization: Bearer <key>`; keys come from
    /// [[server.api_keys]] in journey.toml (name, key, role) or
    /// JOURNEY_API_KEYS="name:role:key,...". Roles: app < analyst < auditor < admin.
    #[command(verbatim_doc_comment)]
    Serve(serve::ServeArgs),
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
        Command::Serve(args) => serve::serve(&config, args).await,
    }
}

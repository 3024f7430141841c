//! Command definitions and dispatch. One file per group of commands.

mod audit;
mod clv;
mod ledger;
mod projections;
mod report;
mod serve;
mod validate;

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
    /// Pin "now" for the read models (RFC 3339): rebuilds and the live
    /// runner advance customers to this instant instead of the wall clock.
    /// For historical data sets and reproducible runs; also JOURNEY_NOW or
    /// `[projections] now` in the config.
    #[arg(long, global = true, value_name = "RFC3339")]
    pub now: Option<String>,
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Import events from a file (CDNOW purchases, JSON lines or CloudEvents), idempotently.
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
    /// Customer lifetime value: fit BG/NBD, Pareto/NBD, Gamma-Gamma; score; validate.
    #[command(subcommand)]
    Clv(clv::ClvCommand),
    /// Recompute every hash chain and the global order; exit non-zero at tampering.
    ///
    /// Streams the whole log once and checks each event's SHA-256 against its
    /// content and predecessor, contiguous versions, increasing (gapless)
    /// positions, canonical JSON, and every stream's recorded head. Prints a
    /// JSON summary; on a problem names stream, version, position and what
    /// is wrong, e.g.
    ///   customer-00017 v3 @ position 58: hash mismatch (...) — payload, metadata, envelope or stored hash altered
    ///   customer-00017: version 3 missing (v2 @ 57 followed by v4 @ 59) — event deleted
    /// --customer checks one stream; --file checks an audit export offline.
    #[command(verbatim_doc_comment)]
    Verify(audit::VerifyArgs),
    /// Write one customer's history as a self-verifying JSON audit export.
    ///
    /// Holds the events exactly as stored, the chain head (the last included
    /// event's hash) and a projected_state object whose sections each name
    /// their source. --as-of exports the stream's prefix recorded by then.
    /// Re-check it anywhere with `journey verify --file EXPORT.json`.
    #[command(verbatim_doc_comment)]
    Export(audit::ExportArgs),
    /// Write every customer's analytics figures as CSV, ids pseudonymised.
    ///
    /// One row per customer from the active read models' population
    /// snapshot: cohort, stage, value tier, revenue, loyalty tier and
    /// balance, repeat purchases, P(alive), CLV, RFM segment. Customer ids
    /// are replaced by a keyed hash (HMAC-SHA256) of the secret in
    /// JOURNEY_PSEUDONYM_KEY (at least 16 bytes): stable for one key, so
    /// exports join; unlinkable without it. Prints a JSON summary to stderr.
    ///
    ///   JOURNEY_PSEUDONYM_KEY=$(cat /run/secrets/pseudonym) journey export-analytics --out customers.csv
    #[command(verbatim_doc_comment)]
    ExportAnalytics(projections::ExportAnalyticsArgs),
    /// Erase a customer's personal data by destroying their key.
    ///
    /// Personal profile fields are stored encrypted with a per-customer key
    /// kept outside the events. Erasing deletes that key (SQLite: with
    /// secure_delete and a WAL truncation; PostgreSQL: DELETE + VACUUM) and
    /// appends a PersonalDataErased event (actor, reason). The events stay,
    /// the chain still verifies, and the fields read as "[erased]".
    #[command(verbatim_doc_comment)]
    Erase(audit::EraseArgs),
    /// Serve the GraphQL API (GraphiQL at /graphql, subscriptions at
    /// /graphql/ws, /healthz, /readyz, /metrics) and the pipeline endpoints.
    ///
    /// Segment / RudderStack SDKs: point their host at this server, with an
    /// `app` API key as the write key (POST /v1/batch, /v1/track, ...);
    /// CloudEvents: POST /cloudevents. Mapping: projections/ingest/segment.toml.
    ///
    /// Try it:  journey serve --demo
    /// Requests need `Authorization: Bearer <key>`; keys come from
    /// [[server.api_keys]] in journey.toml (name, key, role) or
    /// JOURNEY_API_KEYS="name:role:key,...". Roles: app < analyst < auditor < admin.
    #[command(verbatim_doc_comment)]
    Serve(serve::ServeArgs),
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
    /// Compare two rule sets: replay the log under both, customer by
    /// customer, and report per projection how many customers change stage
    /// or value tier, with examples (JSON). Nothing is written; memory holds
    /// a few dozen bytes per customer.
    ///
    ///   cp -r projections /tmp/rules-b && $EDITOR /tmp/rules-b/lifecycle.toml
    ///   journey diff --rules-a projections --rules-b /tmp/rules-b
    #[command(verbatim_doc_comment)]
    Diff(projections::DiffArgs),
    /// Print a customer's projected state as JSON: lifecycle stage, stage
    /// history and value tier, as of now or --as-of RFC3339. Add --known-at
    /// to leave out events recorded after that instant (what an auditor saw).
    ///
    ///   journey customer 00003 --as-of 1998-06-30T00:00:00Z
    ///   journey customer 00003 --as-of 1998-06-30T00:00:00Z --known-at 2026-11-01T00:00:00Z
    #[command(verbatim_doc_comment)]
    Customer(projections::CustomerArgs),
    /// List the read-model versions (building, active, retired) as JSON
    /// lines, with their customers, rows and estimated bytes.
    ///
    /// Rebuilds keep the active version and the previous one
    /// (`[projections] keep_versions`) and drop older ones; --prune drops
    /// them now (--keep N to keep another number).
    #[command(verbatim_doc_comment)]
    Versions(projections::VersionsArgs),
    /// Backtest the churn signals on a holdout period: fold the ledger as of
    /// --calibration-end, score every customer who had bought by then with
    /// each signal (BG/NBD and Pareto/NBD P(alive) and expected purchases,
    /// RFM, lifecycle stage, every alert rule, the fitted churn score), and
    /// compare with who bought again by --holdout-end: ROC AUC, precision,
    /// recall and lift among the riskiest 10 % / 20 %, and the purchase
    /// models' calibration tables.
    ///
    /// The churn score (projections/validation/churn_score.toml) is fitted on
    /// an earlier window (features as of calibration end − fit_window_days,
    /// labelled by purchases up to the calibration end): it never sees the
    /// holdout it is judged on.
    ///
    ///   journey validate --calibration-end 1997-09-30 --holdout-end 1998-06-30
    ///   journey validate --calibration-end 1997-09-30 --holdout-end 1998-06-30 --format json
    #[command(verbatim_doc_comment)]
    Validate(validate::ValidateArgs),
    /// Write the analysts' workbench as one self-contained HTML file (charts
    /// and data inline; opens offline): stages over time, stage flows
    /// between the two dates, cohort retention, P(alive) and CLV
    /// distributions, the holdout calibration and tracking plots, the churn
    /// signals' ROC curves and, with --compare-rules, who moves where under
    /// other rules. `journey serve` shows the same charts live at /workbench.
    ///
    ///   journey report --calibration-end 1997-09-30 --holdout-end 1998-06-30 --out report.html
    ///   journey report --calibration-end 1997-09-30 --holdout-end 1998-06-30 \
    ///       --compare-rules projections/presets/practice
    #[command(verbatim_doc_comment)]
    Report(report::ReportArgs),
}

impl Command {
    /// Whether the command runs an HTTP server (which must survive clients
    /// that disconnect mid-write).
    pub fn serves_http(&self) -> bool {
        matches!(
            self,
            Command::Serve(_) | Command::Bench(_) | Command::Run(_)
        )
    }
}

/// Sets up `tracing` to stderr; `RUST_LOG` wins over `-v`.
pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn,sqlx::query=error",
        1 => "info,sqlx::query=warn",
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
    if let Some(now) = &cli.now {
        config.projections.now = Some(now.clone());
    }
    Ok(config)
}

/// The runner's options from the configuration: the clock (pinned by
/// `--now` / JOURNEY_NOW / `[projections] now`, else the wall clock) and the
/// state cache budget.
pub fn projector_options(
    config: &Config,
) -> anyhow::Result<journey_ledger::projections::runner::ProjectorOptions> {
    use journey_ledger::projections::clock::Clock;
    let clock = match &config.projections.now {
        Some(text) => Clock::Fixed(
            chrono::DateTime::parse_from_rfc3339(text)
                .with_context(|| {
                    format!("--now / JOURNEY_NOW: {text:?} is not an RFC 3339 instant")
                })?
                .with_timezone(&chrono::Utc),
        ),
        None => Clock::Wall,
    };
    Ok(journey_ledger::projections::runner::ProjectorOptions {
        clock,
        cache_bytes: config.projections.state_cache_mb.max(1) << 20,
        keep_versions: config.projections.keep_versions.max(1),
        fence: None,
    })
}

/// Runs the chosen command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = settings(&cli)?;
    match cli.command {
        Command::Import(args) => ledger::import(&config, args).await,
        Command::Events(args) => ledger::events(&config, args).await,
        Command::Stats => ledger::stats(&config).await,
        Command::Bench(cmd) => ledger::bench(&config, cmd).await,
        Command::Clv(cmd) => clv::run(&config, cmd).await,
        Command::Verify(args) => audit::verify(&config, args).await,
        Command::Export(args) => audit::export(&config, args).await,
        Command::ExportAnalytics(args) => projections::export_analytics(&config, args).await,
        Command::Erase(args) => audit::erase(&config, args).await,
        Command::Serve(args) => serve::serve(&config, args).await,
        Command::Rebuild(args) => projections::rebuild(&config, args).await,
        Command::Run(args) => projections::run(&config, args).await,
        Command::Diff(args) => projections::diff(&config, args).await,
        Command::Customer(args) => projections::customer(&config, args).await,
        Command::Versions(args) => projections::versions(&config, args).await,
        Command::Validate(args) => validate::run(&config, args).await,
        Command::Report(args) => report::run(&config, args).await,
    }
}

//! Commands on the event log itself: import, events, stats, bench.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use journey_ledger::config::Config;
use journey_ledger::domain::CustomerId;
use journey_ledger::import::{self, ImportFormat};
use journey_ledger::store::{self, EventStore, ReadStream};

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The file to import.
    pub file: PathBuf,
    /// File format.
    #[arg(long, value_enum)]
    pub format: ImportFormat,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Customer id (the stream is `customer-<ID>`).
    pub customer_id: String,
    /// Decrypt personal profile fields (they read "[erased]" after
    /// `journey erase`); without it they print sealed, exactly as stored.
    #[arg(long)]
    pub reveal: bool,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Append N events across many customer streams in batches; prints one
    /// JSON line with `events_per_sec`, beside a bare batched-INSERT baseline.
    ///
    /// With --writers W: W concurrent writers, each appending --batch events
    /// per call to a random customer stream (no version check, 256-byte
    /// payloads) for --seconds; prints `events_per_sec` and the p50, p99 and
    /// p99.9 latency of an acknowledged append. Use a scratch store.
    Append {
        /// Number of events to append (bulk mode).
        #[arg(long, default_value_t = 100_000)]
        events: u64,
        /// Skip the bare baseline (bulk mode).
        #[arg(long)]
        no_baseline: bool,
        /// Concurrent writers: switches to the concurrent-writers load.
        #[arg(long)]
        writers: Option<usize>,
        /// Events per append (with --writers).
        #[arg(long, default_value_t = 1, requires = "writers")]
        batch: usize,
        /// Seconds to run (with --writers).
        #[arg(long, default_value_t = 10.0, requires = "writers")]
        seconds: f64,
        /// Write each acknowledged append's event ids to FILE as it is
        /// acknowledged (with --writers; for crash tests).
        #[arg(long, value_name = "FILE", requires = "writers")]
        ack_log: Option<std::path::PathBuf>,
    },
    /// Serve the API in-process on loopback and post Segment batches to
    /// `/v1/batch` from --clients concurrent clients (orders, page views,
    /// email opens, identifies for --customers random customers) for
    /// --seconds; prints `events_per_sec`, batch latency p50/p99/p99.9 and
    /// a full hash-chain verification afterwards. Use a scratch store.
    Ingest {
        /// Concurrent HTTP clients.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Messages per request.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Customers the messages are spread over.
        #[arg(long, default_value_t = 10_000)]
        customers: u64,
        /// Seconds to send.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// Replay every event from position 0, decoding each into the typed
    /// model; prints `events_per_sec` beside a bare ordered-scan baseline.
    Read {
        /// Skip the bare baseline.
        #[arg(long)]
        no_baseline: bool,
    },
    /// Serve the API in-process on loopback and drive `customer(id)` lookups
    /// over HTTP at a fixed rate; prints p50/p99 latency and requests/s.
    ///
    /// With --populate, synthetic customers are appended until the store
    /// has --customers of them (use a scratch store!).
    #[command(verbatim_doc_comment)]
    Query {
        /// Customers to spread lookups over.
        #[arg(long, default_value_t = 1_000_000)]
        customers: u64,
        /// Append synthetic customers if the store has fewer.
        #[arg(long)]
        populate: bool,
        /// Requests per second to issue.
        #[arg(long, default_value_t = 1_000)]
        rps: u64,
        /// How long to measure.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Requests at the same rate before measuring, not counted (the
        /// first seconds after start-up pay for page faults and freed
        /// start-up memory; lookups then go to other customers).
        #[arg(long, default_value_t = 5)]
        warmup_seconds: u64,
        /// Drive running servers instead of one started in-process, the
        /// requests spread over them in turn (e.g. two `journey serve`
        /// replicas on one PostgreSQL):
        /// --servers http://127.0.0.1:8080,http://127.0.0.1:8081
        #[arg(long, value_delimiter = ',', value_name = "URL,...")]
        servers: Vec<String>,
        /// An API key of those servers that may read customers.
        #[arg(
            long,
            env = "JOURNEY_API_KEY",
            hide_env_values = true,
            requires = "servers"
        )]
        api_key: Option<String>,
        /// Ask for each customer as of this instant (RFC 3339), e.g. one
        /// before the population snapshot, whose value tier is ranked as of
        /// a past month end.
        #[arg(long, value_name = "RFC3339")]
        as_of: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Rebuild every projection into a fresh version; prints one JSON line
    /// with `events_per_sec`, `peak_rss_bytes` and a bare ordered-scan rate.
    /// With --events N, first appends synthetic events up to N.
    Rebuild(super::projections::BenchRebuildArgs),
    /// Time one deadline tick of the active read models: the clock is set
    /// to the instant --due customers are due, and the runner advances them
    /// (stage changes, expiries, alerts, rows and states in one
    /// transaction). Prints `tick_secs`. Advances those customers for good:
    /// use a scratch store (e.g. after `bench rebuild --events ...`).
    #[command(verbatim_doc_comment)]
    Deadlines(super::projections::BenchDeadlinesArgs),
}

/// Opens the configured store.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn EventStore>> {
    store::open(&config.store)
        .await
        .with_context(|| format!("opening store {}", config.store))
}

/// Opens the configured store for a command that only reads (or acts on
/// what is there): a SQLite path that does not exist is an error, never a
/// new empty store — an auditor who mistypes a path must not be told an
/// empty ledger verifies.
pub async fn open_existing_store(config: &Config) -> anyhow::Result<Arc<dyn EventStore>> {
    require_existing(&config.store)?;
    open_store(config).await
}

/// Opens the configured store for a command that only reads: as
/// [`open_existing_store`], and on SQLite the file is opened read-only, so
/// the command works on a file this process may not write (an archived
/// copy, another user's file, a read-only mount) and never changes it.
pub async fn open_store_read_only(config: &Config) -> anyhow::Result<Arc<dyn EventStore>> {
    require_existing(&config.store)?;
    store::open_read_only(&config.store)
        .await
        .with_context(|| format!("opening store {} to read", config.store))
}

/// Fails with "no store at …" when `url` names a SQLite file that does not
/// exist.
pub fn require_existing(url: &str) -> anyhow::Result<()> {
    if let Some(file) = store::sqlite_file(url) {
        if !file.exists() {
            anyhow::bail!(
                "no store at {}: check --store or JOURNEY_STORE (this command only reads, so it \
                 never creates one)",
                file.display()
            );
        }
    }
    Ok(())
}

/// A bar counting items (`unit`) with their rate and the time left.
pub fn rate_bar(total: u64, what: &str, unit: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what} [{{elapsed_precise}}] {{wide_bar}} {{human_pos}}/{{human_len}} {unit} \
             ({{per_sec}}, {{eta}} left)"
        ))
        .expect("valid template"),
    );
    bar
}

pub fn progress_bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what} [{{elapsed_precise}}] {{wide_bar}} {{percent}}% ({{eta}} left)"
        ))
        .expect("valid template"),
    );
    bar
}

pub async fn import(config: &Config, args: ImportArgs) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    let size = std::fs::metadata(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?
        .len();
    let bar = progress_bar(size, "importing");
    let started = std::time::Instant::now();
    let vault = journey_ledger::privacy::Vault::open_if_supported(&config.store)
        .await
        .context("opening the key table")?;
    let progress = |bytes| bar.set_position(bytes);
    let result = match &vault {
        Some(vault) => {
            import::import_file_with_vault(store, vault, &args.file, args.format, progress).await
        }
        None => import::import_file(store, &args.file, args.format, progress).await,
    };
    bar.finish_and_clear();
    let report = result?;
    tracing::info!(?report, elapsed = ?started.elapsed(), "import finished");
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

pub async fn events(config: &Config, args: EventsArgs) -> anyhow::Result<()> {
    let customer = CustomerId::parse(&args.customer_id)?;
    let store = open_store_read_only(config).await?;
    let events = store
        .read_stream(&customer.stream_id(), ReadStream::all_forwards())
        .await?;
    if events.is_empty() {
        anyhow::bail!("no events for customer {customer}");
    }
    let vault = if args.reveal {
        Some(journey_ledger::privacy::Vault::open_read_only(&config.store).await?)
    } else {
        None
    };
    let mut lines = Vec::with_capacity(events.len());
    for event in events {
        let mut value = serde_json::to_value(&event)?;
        if let Some(vault) = &vault {
            value["payload"] = vault.reveal_payload(&event).await?;
        }
        lines.push(value);
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for line in lines {
        use std::io::Write;
        serde_json::to_writer(&mut out, &line)?;
        writeln!(out)?;
    }
    Ok(())
}

pub async fn stats(config: &Config) -> anyhow::Result<()> {
    let store = open_store_read_only(config).await?;
    let stats = store.stats().await?;
    println!("{}", serde_json::to_string_pretty(&stats)?);
    Ok(())
}

pub async fn bench(config: &Config, cmd: BenchCommand) -> anyhow::Result<()> {
    let line = match cmd {
        BenchCommand::Append {
            writers: Some(writers),
            batch,
            seconds,
            ack_log,
            ..
        } => {
            anyhow::ensure!(
                writers > 0 && batch > 0 && seconds > 0.0,
                "--writers, --batch and --seconds must be positive"
            );
            let load = journey_ledger::bench::writers::WritersLoad {
                writers,
                batch,
                seconds,
            };
            let acks = match ack_log {
                Some(path) => Some(std::sync::Arc::new(std::sync::Mutex::new(
                    std::fs::File::create(&path)
                        .with_context(|| format!("creating {}", path.display()))?,
                ))),
                None => None,
            };
            serde_json::to_string(
                &journey_ledger::bench::writers::run(&config.store, load, acks).await?,
            )?
        }
        BenchCommand::Append {
            events,
            no_baseline,
            ..
        } => serde_json::to_string(
            &journey_ledger::bench::append(&config.store, events, !no_baseline).await?,
        )?,
        BenchCommand::Ingest {
            clients,
            batch,
            customers,
            seconds,
        } => {
            anyhow::ensure!(
                clients > 0 && batch > 0 && customers > 0 && seconds > 0.0,
                "--clients, --batch, --customers and --seconds must be positive"
            );
            let load = journey_ledger::bench::ingest::IngestLoad {
                clients,
                batch,
                customers,
                seconds,
            };
            serde_json::to_string(&journey_ledger::bench::ingest::run(&config.store, load).await?)?
        }
        BenchCommand::Query {
            customers,
            populate,
            rps,
            seconds,
            warmup_seconds,
            servers,
            api_key,
            as_of,
        } => serde_json::to_string(
            &journey_ledger::api::bench::query(
                &config.store,
                &journey_ledger::api::bench::QueryBench {
                    customers,
                    populate,
                    rps,
                    seconds,
                    warmup_seconds,
                    servers,
                    api_key,
                    as_of,
                },
                super::projector_options(config)?,
            )
            .await?,
        )?,
        BenchCommand::Read { no_baseline } => {
            serde_json::to_string(&journey_ledger::bench::read(&config.store, !no_baseline).await?)?
        }
        BenchCommand::Rebuild(args) => {
            return super::projections::bench_rebuild(config, args).await
        }
        BenchCommand::Deadlines(args) => {
            return super::projections::bench_deadlines(config, args).await
        }
    };
    println!("{line}");
    Ok(())
}

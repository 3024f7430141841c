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
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Append N events across many customer streams in batches; prints one
    /// JSON line with `events_per_sec`, beside a bare batched-INSERT baseline.
    Append {
        /// Number of events to append.
        #[arg(long, default_value_t = 100_000)]
        events: u64,
        /// Skip the bare baseline.
        #[arg(long)]
        no_baseline: bool,
    },
    /// Replay every event from position 0, decoding each into the typed
    /// model; prints `events_per_sec` beside a bare ordered-scan baseline.
    Read {
        /// Skip the bare baseline.
        #[arg(long)]
        no_baseline: bool,
    },
    /// Rebuild every projection into a fresh version; prints one JSON line
    /// with `events_per_sec`, `peak_rss_bytes` and a bare ordered-scan rate.
    /// With --events N, first appends synthetic events up to N.
    Rebuild(super::projections::BenchRebuildArgs),
}

/// Opens the configured store.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn EventStore>> {
    store::open(&config.store)
        .await
        .with_context(|| format!("opening store {}", config.store))
}

/// A byte- or count-based progress bar on stderr (hidden when not a TTY).
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
    let result = import::import_file(store, &args.file, args.format, |bytes| {
        bar.set_position(bytes)
    })
    .await;
    bar.finish_and_clear();
    let report = result?;
    tracing::info!(?report, elapsed = ?started.elapsed(), "import finished");
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

pub async fn events(config: &Config, args: EventsArgs) -> anyhow::Result<()> {
    let customer = CustomerId::parse(&args.customer_id)?;
    let store = open_store(config).await?;
    let events = store
        .read_stream(&customer.stream_id(), ReadStream::all_forwards())
        .await?;
    if events.is_empty() {
        anyhow::bail!("no events for customer {customer}");
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for event in events {
        use std::io::Write;
        serde_json::to_writer(&mut out, &event)?;
        writeln!(out)?;
    }
    Ok(())
}

pub async fn stats(config: &Config) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    let stats = store.stats().await?;
    println!("{}", serde_json::to_string_pretty(&stats)?);
    Ok(())
}

pub async fn bench(config: &Config, cmd: BenchCommand) -> anyhow::Result<()> {
    let line = match cmd {
        BenchCommand::Append {
            events,
            no_baseline,
        } => serde_json::to_string(
            &journey_ledger::bench::append(&config.store, events, !no_baseline).await?,
        )?,
        BenchCommand::Read { no_baseline } => {
            serde_json::to_string(&journey_ledger::bench::read(&config.store, !no_baseline).await?)?
        }
        BenchCommand::Rebuild(args) => {
            return super::projections::bench_rebuild(config, args).await
        }
    };
    println!("{line}");
    Ok(())
}

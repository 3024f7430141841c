//! Commands on the read models: rebuild, run, diff, customer, versions and
//! `bench rebuild`.

use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use journey_ledger::config::Config;
use journey_ledger::domain::CustomerId;
use journey_ledger::projections::rebuild::DEFAULT_BATCH_EVENTS;
use journey_ledger::projections::rules::RuleSet;
use journey_ledger::projections::runner::{self, RebuildOptions};
use journey_ledger::projections::storage::ReadModelDb;
use journey_ledger::projections::{bench, diff, query};

use super::ledger::{open_store, open_store_read_only, progress_bar, rate_bar};
use super::projector_options;

/// Where the read models live.
#[derive(Debug, Args)]
pub struct ReadModelArgs {
    /// Read-model database (sqlite://FILE or postgres://...). Default: the
    /// store's own database.
    #[arg(long, value_name = "URL", env = "JOURNEY_READ_MODELS")]
    pub read_models: Option<String>,
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// Rules directory (default: `rules_dir` of the config, `projections`).
    #[arg(long, value_name = "DIR")]
    pub rules: Option<PathBuf>,
    /// Events per committed batch.
    #[arg(long, default_value_t = DEFAULT_BATCH_EVENTS)]
    pub batch: usize,
    /// Who asks for the rebuild (recorded in the `ledger-admin` stream).
    #[arg(long, default_value = "cli")]
    pub actor: String,
    /// Why (recorded in the `ledger-admin` stream).
    #[arg(long, default_value = "manual rebuild")]
    pub reason: String,
    #[command(flatten)]
    pub read_models: ReadModelArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Events per committed batch at most.
    #[arg(long, default_value_t = DEFAULT_BATCH_EVENTS)]
    pub batch: usize,
    /// Catch up to the head and exit instead of following.
    #[arg(long)]
    pub once: bool,
    #[command(flatten)]
    pub read_models: ReadModelArgs,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The current rules directory.
    #[arg(long, value_name = "DIR")]
    pub rules_a: PathBuf,
    /// The proposed rules directory.
    #[arg(long, value_name = "DIR")]
    pub rules_b: PathBuf,
    /// Compare as of this instant (RFC 3339); default: the newest event.
    #[arg(long, value_name = "RFC3339")]
    pub as_of: Option<DateTime<Utc>>,
}

#[derive(Debug, Args)]
pub struct CustomerArgs {
    /// Customer id (e.g. 00003).
    pub customer_id: String,
    /// The instant to answer for (RFC 3339); default: now.
    #[arg(long, value_name = "RFC3339")]
    pub as_of: Option<DateTime<Utc>>,
    /// Answer with what the ledger knew then: only events recorded by this
    /// instant (RFC 3339), folded under the active version's rules. Without
    /// it, every event known now counts, including backdated corrections.
    #[arg(long, value_name = "RFC3339")]
    pub known_at: Option<DateTime<Utc>>,
    #[command(flatten)]
    pub read_models: ReadModelArgs,
}

#[derive(Debug, Args)]
pub struct VersionsArgs {
    /// Drop the versions beyond --keep (older retired and abandoned ones).
    #[arg(long)]
    pub prune: bool,
    /// Versions to keep, the active one included (default: the config's
    /// `keep_versions`, 2).
    #[arg(long, value_name = "N")]
    pub keep: Option<usize>,
    #[command(flatten)]
    pub read_models: ReadModelArgs,
}

#[derive(Debug, Args)]
pub struct ExportAnalyticsArgs {
    /// Write the CSV here (default: standard output).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub read_models: ReadModelArgs,
}

#[derive(Debug, Args)]
pub struct BenchRebuildArgs {
    /// First append synthetic events until the store holds this many.
    #[arg(long)]
    pub events: Option<u64>,
    /// The synthetic histories appended for --events.
    #[arg(long, value_enum, default_value_t)]
    pub generator: journey_ledger::bench::Generator,
    /// Folding workers (default: one per core).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Events per committed batch.
    #[arg(long, default_value_t = DEFAULT_BATCH_EVENTS)]
    pub batch: usize,
    /// Rules directory (default: the config's).
    #[arg(long, value_name = "DIR")]
    pub rules: Option<PathBuf>,
    #[command(flatten)]
    pub read_models: ReadModelArgs,
}

#[derive(Debug, Args)]
pub struct BenchDeadlinesArgs {
    /// Customers due in the measured tick.
    #[arg(long, default_value_t = 10_000)]
    pub due: u64,
    #[command(flatten)]
    pub read_models: ReadModelArgs,
}

async fn open_db(config: &Config, args: &ReadModelArgs) -> anyhow::Result<ReadModelDb> {
    let url = args.read_models.as_deref().unwrap_or(&config.store);
    super::ledger::require_existing(url)?;
    ReadModelDb::open(url).await.with_context(|| {
        format!("opening read models at {url} (use --read-models for stores without SQL)")
    })
}

/// [`open_db`] for a command that only reads the read models: on SQLite the
/// file is opened read-only (see [`ReadModelDb::open_read_only`]).
async fn open_db_read_only(config: &Config, args: &ReadModelArgs) -> anyhow::Result<ReadModelDb> {
    let url = args.read_models.as_deref().unwrap_or(&config.store);
    super::ledger::require_existing(url)?;
    ReadModelDb::open_read_only(url).await.with_context(|| {
        format!("opening read models at {url} to read (use --read-models for stores without SQL)")
    })
}

/// The rules of `--rules DIR`, else of the configured rules directory; when
/// that is the default and absent (run outside the repository), the rules
/// built into the binary, as `journey serve` does.
pub(crate) fn load_rules(config: &Config, dir: Option<&PathBuf>) -> anyhow::Result<RuleSet> {
    match dir {
        Some(dir) => Ok(RuleSet::load(dir)?),
        None if config.rules_dir.join("lifecycle.toml").exists()
            || config.rules_dir
                != std::path::Path::new(journey_ledger::config::DEFAULT_RULES_DIR) =>
        {
            Ok(RuleSet::load(&config.rules_dir)?)
        }
        None => {
            eprintln!(
                "no {}/ here: using the rules built into journey (--rules DIR to choose)",
                journey_ledger::config::DEFAULT_RULES_DIR
            );
            Ok(RuleSet::shipped_defaults())
        }
    }
}

pub async fn rebuild(config: &Config, args: RebuildArgs) -> anyhow::Result<()> {
    let rules = load_rules(config, args.rules.as_ref())?;
    let store = open_store(config).await?;
    let db = open_db(config, &args.read_models).await?;
    let head = store.head_position().await?;
    let options = projector_options(config)?;
    let bar = rate_bar(head, "rebuilding", "events");
    let progress = bar.clone();
    let report = runner::rebuild(
        store.clone(),
        &db,
        &rules,
        &RebuildOptions {
            batch_events: args.batch,
            clock: options.clock,
            cache_bytes: options.cache_bytes,
            keep_versions: Some(options.keep_versions),
            ..RebuildOptions::default()
        },
        Utc::now(),
        move |events| progress.set_position(events),
    )
    .await;
    bar.finish_and_clear();
    let report = report?;
    if report.activated {
        // Every rebuild is itself part of the audit trail: who, when, why.
        journey_ledger::audit::record_rebuild(
            store.as_ref(),
            &args.actor,
            &args.reason,
            journey_ledger::audit::RebuildDetails {
                rules_version: Some(format!("{} ({})", rules.lifecycle.rules_id, rules.hash)),
                projections: runner::folds_for(&rules)
                    .names()
                    .iter()
                    .map(|name| (*name).to_owned())
                    .collect(),
            },
        )
        .await
        .context("recording the rebuild in the ledger-admin stream")?;
    }
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

pub async fn run(config: &Config, args: RunArgs) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    let db = open_db(config, &args.read_models).await?;
    let options = projector_options(config)?;
    if args.once {
        let applied = runner::catch_up_with(store, &db, args.batch, options).await?;
        println!("{}", serde_json::json!({ "applied": applied }));
        return Ok(());
    }
    eprintln!("following the store; Ctrl-C to stop");
    let follower = runner::Follower::open(store, &db, options).await?;
    tokio::select! {
        result = follower.run(args.batch, |committed| {
            tracing::info!(checkpoint = committed.checkpoint, "read models committed");
        }) => result?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

pub async fn diff(config: &Config, args: DiffArgs) -> anyhow::Result<()> {
    let a = RuleSet::load(&args.rules_a)?;
    let b = RuleSet::load(&args.rules_b)?;
    let store = open_store_read_only(config).await?;
    let bar = rate_bar(store.head_position().await?, "comparing", "events");
    let report = diff::diff(store, &a, &b, args.as_of, |events| bar.set_position(events)).await;
    bar.finish_and_clear();
    let report = report?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

pub async fn customer(config: &Config, args: CustomerArgs) -> anyhow::Result<()> {
    let id = CustomerId::parse(&args.customer_id)?;
    let store = open_store_read_only(config).await?;
    let db = open_db_read_only(config, &args.read_models).await?;
    // Instants are stored to the microsecond; "now" is too.
    let now = Utc::now().timestamp_micros();
    let as_of = args
        .as_of
        .unwrap_or_else(|| chrono::DateTime::from_timestamp_micros(now).expect("now is in range"));
    if let Some(known_at) = args.known_at {
        let rules = query::active_rules_or_shipped(Some(&db)).await?;
        let Some(view) = query::customer_known_at(store, &rules, &id, as_of, known_at).await?
        else {
            anyhow::bail!("customer {id} has no events up to {as_of} recorded by {known_at}");
        };
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    match query::customer_as_of(store, &db, &id, as_of).await? {
        Some(view) => println!("{}", serde_json::to_string_pretty(&view)?),
        None => anyhow::bail!("customer {id} has no events up to {as_of}"),
    }
    Ok(())
}

pub async fn versions(config: &Config, args: VersionsArgs) -> anyhow::Result<()> {
    let db = if args.prune {
        open_db(config, &args.read_models).await?
    } else {
        open_db_read_only(config, &args.read_models).await?
    };
    let folds = runner::folds_for(&RuleSet::shipped_defaults());
    if args.prune {
        let keep = args.keep.unwrap_or(config.projections.keep_versions).max(1);
        let pruned = journey_ledger::projections::versions::prune(&db, &folds, keep).await?;
        eprintln!("{}", serde_json::to_string(&pruned)?);
    }
    let by_number: std::collections::HashMap<i64, _> = db
        .versions()
        .await?
        .into_iter()
        .map(|v| (v.model_version, v))
        .collect();
    for size in db.version_sizes(&folds).await? {
        let v = &by_number[&size.model_version];
        println!(
            "{}",
            serde_json::json!({
                "model_version": size.model_version,
                "status": size.status,
                "rules_id": size.rules_id,
                "rules_hash": v.rules_hash,
                "checkpoint": size.checkpoint,
                "events_applied": v.events_applied,
                "customers": size.customers,
                "rows": size.rows,
                "bytes": size.bytes,
                "clock": v.clock_us.and_then(DateTime::from_timestamp_micros),
                "state_format": v.state_format,
            })
        );
    }
    Ok(())
}

pub async fn bench_rebuild(config: &Config, args: BenchRebuildArgs) -> anyhow::Result<()> {
    let rules = load_rules(config, args.rules.as_ref())?;
    let store = open_store(config).await?;
    let db = open_db(config, &args.read_models).await?;
    let options = projector_options(config)?;
    let report = bench::rebuild_bench(
        store,
        &db,
        &rules,
        args.events,
        args.generator,
        RebuildOptions {
            batch_events: args.batch,
            clock: options.clock,
            workers: args.workers,
            keep_versions: Some(options.keep_versions),
            ..RebuildOptions::default()
        },
    )
    .await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

pub async fn bench_deadlines(config: &Config, args: BenchDeadlinesArgs) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    let db = open_db(config, &args.read_models).await?;
    let report = bench::deadlines_bench(store, &db, args.due).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

pub async fn export_analytics(config: &Config, args: ExportAnalyticsArgs) -> anyhow::Result<()> {
    let key = journey_ledger::privacy::PseudonymKey::from_env()?;
    let db = open_db_read_only(config, &args.read_models).await?;
    let bar = progress_bar(0, "exporting customers");
    let progress = |n: u64| bar.set_position(n);
    let summary = match &args.out {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            let mut out = std::io::BufWriter::new(file);
            journey_ledger::projections::export::export_customers(&db, &key, &mut out, progress)
                .await?
        }
        None => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            journey_ledger::projections::export::export_customers(&db, &key, &mut out, progress)
                .await?
        }
    };
    bar.finish_and_clear();
    eprintln!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

//! `journey bench rebuild`: rebuild every projection from the full log and
//! report the rate, the peak memory and, for comparison, the rate of a bare
//! ordered scan of the same store. Timed here, never in tests.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::rules::RuleSet;
use super::runner::{rebuild, RebuildOptions, RunnerError};
use super::storage::ReadModelDb;
use crate::bench::Generator;
use crate::store::{EventStore, ExpectedVersion, StreamWrite};

/// Figures of `bench rebuild`.
#[derive(Debug, Serialize)]
pub struct RebuildBenchReport {
    /// Backend of the store.
    pub backend: &'static str,
    /// Events replayed.
    pub events: u64,
    /// Customers projected.
    pub customers: u64,
    /// Events appended first to reach `--events`.
    pub appended_first: u64,
    /// The generator of those events.
    pub generator: Generator,
    /// Rebuild rate, events per second (dropping old versions afterwards is
    /// not counted: see `prune_secs`).
    pub events_per_sec: f64,
    /// Seconds spent in the rebuild, to the switch.
    pub rebuild_secs: f64,
    /// Of which, summed over workers: decoding and folding.
    pub fold_secs: f64,
    /// Summed over writers: writing read models and states.
    pub write_secs: f64,
    /// Computing and writing the population tables.
    pub population_secs: f64,
    /// Dropping versions beyond `keep_versions` after the switch.
    pub prune_secs: f64,
    /// Bare ordered scan of `events` parsing each payload, rows per second,
    /// measured in the same run.
    pub bare_scan_rows_per_sec: f64,
    /// `events_per_sec / bare_scan_rows_per_sec`.
    pub ratio_to_bare_scan: f64,
    /// Average stored state per customer, bytes.
    pub state_bytes_per_customer: f64,
    /// Peak resident memory of the process (VmHWM), bytes.
    pub peak_rss_bytes: Option<u64>,
}

/// The process's peak resident set size from `/proc/self/status` (Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Appends synthetic customer histories until the store holds `target`
/// events; returns how many were appended.
pub async fn fill_to(
    store: &Arc<dyn EventStore>,
    target: u64,
    generator: Generator,
) -> Result<u64, RunnerError> {
    let head = store.stats().await?.events;
    if head >= target {
        return Ok(0);
    }
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mut appended = 0u64;
    let mut customer = 0u64;
    while head + appended < target {
        let mut writes = Vec::with_capacity(100);
        for _ in 0..100 {
            let (id, events) = generator.history(&run, customer);
            customer += 1;
            appended += events.len() as u64;
            writes.push(StreamWrite {
                stream: id.stream_id(),
                expected: ExpectedVersion::NoStream,
                events,
            });
            if head + appended >= target {
                break;
            }
        }
        store.append_batch(writes).await?;
    }
    Ok(appended)
}

/// Runs `bench rebuild` on the store and read models given: fills the store
/// to `events` with `generator`'s histories if asked, measures a bare
/// ordered scan, then rebuilds into a fresh version.
pub async fn rebuild_bench(
    store: Arc<dyn EventStore>,
    db: &ReadModelDb,
    rules: &RuleSet,
    events: Option<u64>,
    generator: Generator,
    options: RebuildOptions,
) -> Result<RebuildBenchReport, RunnerError> {
    let appended_first = match events {
        Some(n) => fill_to(&store, n, generator).await?,
        None => 0,
    };
    let scan = bare_scan(db).await?;
    // A rebuild under the same rules would resume a crashed one; the bench
    // always starts a fresh version (create_version abandons the others).
    let mut rules = rules.clone();
    rules.hash = format!("{}-bench-{}", rules.hash, uuid::Uuid::new_v4().simple());
    let started = Instant::now();
    let report = rebuild(store.clone(), db, &rules, &options, Utc::now(), |_| {}).await?;
    let secs = started.elapsed().as_secs_f64() - report.prune_secs;
    let rate = report.events as f64 / secs;
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    Ok(RebuildBenchReport {
        backend: store.backend(),
        events: report.events,
        customers: report.customers,
        appended_first,
        generator,
        events_per_sec: rate.round(),
        rebuild_secs: round(secs),
        fold_secs: round(report.fold_secs),
        write_secs: round(report.write_secs),
        population_secs: round(report.population_secs),
        prune_secs: round(report.prune_secs),
        bare_scan_rows_per_sec: scan.round(),
        ratio_to_bare_scan: (rate / scan * 100.0).round() / 100.0,
        state_bytes_per_customer: db.average_state_bytes(report.model_version).await?.round(),
        peak_rss_bytes: peak_rss_bytes(),
    })
}

/// One ordered scan of `events` parsing every payload as untyped JSON
/// (the same baseline as `journey bench read`).
async fn bare_scan(db: &ReadModelDb) -> Result<f64, RunnerError> {
    let rate = match db {
        ReadModelDb::Sqlite(pool) => crate::bench::bare_scan_sqlite(pool).await,
        ReadModelDb::Postgres(pool) => crate::bench::bare_scan_postgres(pool).await,
    };
    Ok(rate.map_err(super::storage::StorageError::from)?)
}

/// Figures of `bench deadlines`.
#[derive(Debug, Serialize)]
pub struct DeadlinesBenchReport {
    /// Backend of the read models.
    pub backend: &'static str,
    /// Customers in the active version.
    pub customers: u64,
    /// Customers due and advanced in the tick.
    pub due: u64,
    /// The instant the clock was set to.
    pub now: DateTime<Utc>,
    /// The whole tick: finding, loading, advancing, committing.
    pub tick_secs: f64,
    /// Of which committing (rows, states, deadlines).
    pub commit_secs: f64,
    /// After the tick (its changes committed and published): copying the
    /// write-ahead log's pages into the database file (SQLite), before the
    /// next tick.
    pub checkpoint_secs: f64,
    /// History rows the tick added (stage changes, alerts).
    pub history_rows: u64,
    /// Customers' tables rewritten because their current rows changed
    /// (a stage, an expiry); the other tables of the due customers stand.
    pub tables_rewritten: u64,
}

/// Runs `bench deadlines`: one tick of `due` customers on the active
/// version, timed.
pub async fn deadlines_bench(
    store: Arc<dyn EventStore>,
    db: &ReadModelDb,
    due: u64,
) -> Result<DeadlinesBenchReport, RunnerError> {
    let (version, rules) = super::runner::active(db).await?;
    let customers = db.count_customers(version.model_version).await?;
    let now = db
        .nth_deadline(version.model_version, due.max(1))
        .await?
        .and_then(DateTime::from_timestamp_micros)
        .ok_or(RunnerError::Unavailable(format!(
            "fewer than {due} customers of version {} have a deadline; rebuild with an earlier \
             clock (--now) so more customers are mid-way",
            version.model_version
        )))?;
    let mut projector = super::runner::Projector::open(
        store.clone(),
        db.clone(),
        &version,
        &rules,
        super::runner::ProjectorOptions {
            clock: super::clock::Clock::Fixed(now),
            ..Default::default()
        },
    )
    .await?;
    let started = Instant::now();
    let folded = projector
        .tick(due as usize)
        .await?
        .ok_or(RunnerError::Unavailable("nobody was due".into()))?;
    let advanced = folded.batch.states.len() as u64;
    let history_rows = folded.new_history.len() as u64;
    let tables_rewritten = folded.batch.replace_in.len() as u64;
    let committing = Instant::now();
    projector.commit(folded.batch).await?;
    let commit_secs = committing.elapsed().as_secs_f64();
    let tick_secs = started.elapsed().as_secs_f64();
    let checkpointing = Instant::now();
    projector.checkpoint_wal().await?;
    let checkpoint_secs = checkpointing.elapsed().as_secs_f64();
    Ok(DeadlinesBenchReport {
        backend: match db {
            ReadModelDb::Sqlite(_) => "sqlite",
            ReadModelDb::Postgres(_) => "postgres",
        },
        customers,
        due: advanced,
        now,
        tick_secs: (tick_secs * 1000.0).round() / 1000.0,
        commit_secs: (commit_secs * 1000.0).round() / 1000.0,
        checkpoint_secs: (checkpoint_secs * 1000.0).round() / 1000.0,
        history_rows,
        tables_rewritten,
    })
}

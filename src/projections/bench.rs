//! `journey bench rebuild`: rebuild every projection from the full log and
//! report the rate, the peak memory and, for comparison, the rate of a bare
//! ordered scan of the same store. Timed here, never in tests.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use serde::Serialize;

use super::rules::RuleSet;
use super::runner::{rebuild, RebuildOptions, RunnerError};
use super::storage::ReadModelDb;
use crate::bench::synthetic_history;
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
    /// Rebuild rate, events per second.
    pub events_per_sec: f64,
    /// Seconds spent in the rebuild.
    pub rebuild_secs: f64,
    /// Of which: decoding and folding (CPU in this process).
    pub fold_secs: f64,
    /// Of which: writing read models and checkpoints.
    pub write_secs: f64,
    /// Bare ordered scan of `events` parsing each payload, rows per second.
    pub bare_scan_rows_per_sec: f64,
    /// `events_per_sec / bare_scan_rows_per_sec`.
    pub ratio_to_bare_scan: f64,
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
pub async fn fill_to(store: &Arc<dyn EventStore>, target: u64) -> Result<u64, RunnerError> {
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
            let (id, events) = synthetic_history(&run, customer);
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

/// Runs `bench rebuild` on the store and read models given.
pub async fn rebuild_bench(
    store: Arc<dyn EventStore>,
    db: &ReadModelDb,
    rules: &RuleSet,
    events: Option<u64>,
    batch_events: usize,
) -> Result<RebuildBenchReport, RunnerError> {
    let appended_first = match events {
        Some(n) => fill_to(&store, n).await?,
        None => 0,
    };
    let scan = bare_scan(db).await?;
    // A rebuild under the same rules would resume a crashed one; the bench
    // always starts a fresh version (create_version abandons the others).
    let mut rules = rules.clone();
    rules.hash = format!("{}-bench-{}", rules.hash, uuid::Uuid::new_v4().simple());
    let started = Instant::now();
    let report = rebuild(
        store.clone(),
        db,
        &rules,
        &RebuildOptions {
            batch_events,
            ..RebuildOptions::default()
        },
        Utc::now(),
        |_| {},
    )
    .await?;
    let secs = started.elapsed().as_secs_f64();
    let rate = report.events as f64 / secs;
    Ok(RebuildBenchReport {
        backend: store.backend(),
        events: report.events,
        customers: report.customers,
        appended_first,
        events_per_sec: rate.round(),
        rebuild_secs: (secs * 1000.0).round() / 1000.0,
        fold_secs: (report.fold_secs * 1000.0).round() / 1000.0,
        write_secs: (report.write_secs * 1000.0).round() / 1000.0,
        bare_scan_rows_per_sec: scan.round(),
        ratio_to_bare_scan: (rate / scan * 100.0).round() / 100.0,
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

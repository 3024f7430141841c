//! Rebuilds: every read model replayed from the log into a fresh version,
//! activated atomically when complete.
//!
//! Folds are pure per-customer functions, so a rebuild needs no global pass
//! holding every customer's state. It records the log's head, splits the
//! customer streams into partitions (ranges of stream ids) and lets one
//! worker per core take partitions one at a time: each reads its customers'
//! events through the `(stream_id, version)` index, folds each customer's
//! whole history once (a late event is just a sort), advances them to the
//! rebuild's clock, and hands their rows and state to the bulk writer
//! ([`super::bulk`]), then forgets them. Memory depends on the chunk size,
//! not on the number of customers.
//!
//! Each chunk commits with its partition's progress (the last customer
//! done), so an interrupted rebuild resumes after it and ends with exactly
//! the tables an uninterrupted one gives. When every partition is done, the
//! events appended since the recorded head are folded incrementally
//! ([`super::runner::Projector`]), the population tables are computed from
//! the stored states ([`super::runner::refit_population`]), and the version
//! is activated.
//!
//! The partition pass reads the `events` table itself when the read models
//! live in the store's database (SQLite through the C API, PostgreSQL with
//! one connection per worker); other stores (EventStoreDB) are read stream
//! by stream through [`EventStore`].

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::Row as _;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::bulk::{
    open_bulk_reader, send_blocking, BulkWork, BulkWriter, PartitionProgress, WriteStats,
};
use super::clock::Clock;
use super::population::{PopulationCollector, PopulationInputs};
use super::rules::RuleSet;
use super::runner::{refit_population, Projector, ProjectorOptions, RunnerError};
use super::state::Folds;
use super::storage::{both, ReadModelDb, StateRow, StorageError, VersionStatus};
use super::FoldEvent;
use crate::domain::customer::{CUSTOMER_STREAMS_END, CUSTOMER_STREAM_PREFIX};
use crate::domain::{CustomerId, DomainEvent};
use crate::store::sqlite_raw::{Bind, RawConnection};
use crate::store::{EventStore, ReadStream};

/// Versions kept after a rebuild: the new one and the previous.
pub const DEFAULT_KEEP_VERSIONS: usize = 2;

/// Events per committed chunk unless told otherwise.
pub const DEFAULT_BATCH_EVENTS: usize = 10_000;

/// Options of a rebuild.
#[derive(Debug, Clone)]
pub struct RebuildOptions {
    /// Events per committed chunk (whole customers).
    pub batch_events: usize,
    /// Stop (as if crashed) after this many committed chunks; for tests of
    /// crash recovery.
    pub stop_after_batches: Option<usize>,
    /// The instant customers are advanced to.
    pub clock: Clock,
    /// Folding workers (0: one per core).
    pub workers: usize,
    /// State cache of the catch-up after the partitions, bytes.
    pub cache_bytes: usize,
    /// After the switch, keep this many versions (the new one included)
    /// and drop older ones ([`super::versions::prune`]); `None` keeps all.
    pub keep_versions: Option<usize>,
}

impl Default for RebuildOptions {
    fn default() -> Self {
        Self {
            batch_events: DEFAULT_BATCH_EVENTS,
            stop_after_batches: None,
            clock: Clock::Wall,
            workers: 0,
            cache_bytes: ProjectorOptions::default().cache_bytes,
            keep_versions: Some(DEFAULT_KEEP_VERSIONS),
        }
    }
}

/// What a rebuild did.
#[derive(Debug, Clone, Serialize)]
pub struct RebuildReport {
    /// The version written.
    pub model_version: i64,
    /// Whether it was activated (false when stopped early).
    pub activated: bool,
    /// When an interrupted rebuild was resumed: the events it had folded.
    pub resumed_from: Option<u64>,
    /// Events folded in this run.
    pub events: u64,
    /// Customers in the version.
    pub customers: u64,
    /// The log position the version is complete through (0 when stopped
    /// before every partition was done).
    pub checkpoint: u64,
    /// The instant the tables are as of.
    pub clock: DateTime<Utc>,
    /// Seconds of folding (summed over workers).
    pub fold_secs: f64,
    /// Seconds of writing read models (summed over writers).
    pub write_secs: f64,
    /// Seconds computing the population tables.
    pub population_secs: f64,
    /// Versions dropped after the switch.
    pub pruned_versions: Vec<i64>,
    /// Seconds spent dropping them.
    pub prune_secs: f64,
}

/// A rebuild's unit of parallel work: customer streams in
/// `[first_stream, end_stream)`.
#[derive(Debug, Clone)]
struct Partition {
    no: i64,
    first_stream: String,
    end_stream: Option<String>,
    done_through: Option<String>,
}

impl Partition {
    /// The SQL bound after which to read: the last committed stream
    /// (exclusive) or the first stream (inclusive).
    fn lower(&self) -> (&str, bool) {
        match &self.done_through {
            Some(done) => (done.as_str(), false),
            None => (self.first_stream.as_str(), true),
        }
    }

    fn end(&self) -> &str {
        self.end_stream.as_deref().unwrap_or(CUSTOMER_STREAMS_END)
    }
}

/// Rebuilds every read model into a fresh version from the full log, then
/// activates it. Resumes a building version with the same rules (and
/// format). `progress` receives the events folded so far.
pub async fn rebuild(
    store: Arc<dyn EventStore>,
    db: &ReadModelDb,
    rules: &RuleSet,
    options: &RebuildOptions,
    started_at: DateTime<Utc>,
    progress: impl Fn(u64) + Send + Sync + 'static,
) -> Result<RebuildReport, RunnerError> {
    let rules_json = serde_json::to_string(rules).expect("rules serialize");
    let resumable = db
        .latest_with_status(VersionStatus::Building)
        .await?
        .filter(|v| v.rules_hash == rules.hash && v.rules_json == rules_json && v.maintainable());
    let (version, resumed_from) = match resumable {
        Some(v) => {
            let done = v.events_applied.max(0) as u64;
            (v, Some(done))
        }
        None => {
            let clock = options.clock.now();
            let head = store.head_position().await?;
            let version = db
                .create_version(
                    &rules.rules_id(),
                    &rules.hash,
                    &rules_json,
                    started_at.timestamp_micros(),
                    clock.timestamp_micros(),
                )
                .await?;
            let partitions = plan_partitions(db, workers(options)).await?;
            db.start_partitions(version.model_version, head as i64, &partitions)
                .await?;
            let version = db
                .version(version.model_version)
                .await?
                .expect("just created");
            (version, None)
        }
    };
    let clock = version
        .clock_us
        .and_then(DateTime::from_timestamp_micros)
        .unwrap_or_else(|| options.clock.now());
    let head = version.rebuild_head.unwrap_or(0).max(0) as u64;
    let folds = Folds::new(rules);
    let progress = Arc::new(progress);
    let done_before = resumed_from.unwrap_or(0);
    progress(done_before);

    let pass = PartitionPass {
        collect_inputs: resumed_from.is_none(),
        inputs: Mutex::new(PopulationCollector::default()),
        folds: folds.clone(),
        clock,
        head,
        batch_events: options.batch_events.max(1),
        stop_after: options.stop_after_batches,
        partitions: Mutex::new(db.open_partitions(version.model_version).await?),
        stopped: AtomicBool::new(false),
        committed: AtomicUsize::new(0),
        events: AtomicU64::new(0),
        progress: {
            let progress = progress.clone();
            Box::new(move |n| progress(done_before + n))
        },
    };
    let source = source_for(&store, db, head).await?;
    let pass = Arc::new(pass);
    let (fold_secs, mut write_stats, events) = run_partitions(
        pass.clone(),
        source,
        db,
        version.model_version,
        &folds,
        options,
    )
    .await?;
    let report =
        |activated: bool, checkpoint: u64, write: &WriteStats, population_secs| RebuildReport {
            model_version: version.model_version,
            activated,
            resumed_from,
            events,
            customers: 0,
            checkpoint,
            clock,
            fold_secs,
            write_secs: write.secs,
            population_secs,
            pruned_versions: Vec::new(),
            prune_secs: 0.0,
        };
    if !db.partitions_finished(version.model_version).await? {
        return Ok(report(false, 0, &write_stats, 0.0));
    }
    db.set_checkpoint(version.model_version, head as i64)
        .await?;

    // Events appended while the partitions were folded.
    let current = db
        .version(version.model_version)
        .await?
        .expect("the version exists");
    let mut projector = Projector::open(
        store.clone(),
        db.clone(),
        &current,
        rules,
        ProjectorOptions {
            clock: options.clock.clone(),
            cache_bytes: options.cache_bytes,
            ..ProjectorOptions::default()
        },
    )
    .await?;
    let caught_up = projector.catch_up(options.batch_events.max(1)).await?;
    let (_, catch_up_write) = projector.secs();
    write_stats.secs += catch_up_write;
    let checkpoint = projector.checkpoint();
    let current = db
        .version(version.model_version)
        .await?
        .expect("the version exists");

    let population_started = Instant::now();
    if let Some(watermark) = current
        .watermark_us
        .and_then(DateTime::from_timestamp_micros)
    {
        // As of the clock, or the newest event when that is earlier (a
        // historical ledger's models are fitted as of its end).
        let as_of = clock.min(watermark);
        // The first pass was made while folding, unless this run resumed
        // (earlier partitions' inputs are gone) or the catch-up changed
        // customers since.
        let inputs = if pass.collect_inputs && caught_up == 0 {
            std::mem::take(&mut *pass.inputs.lock().expect("not poisoned")).finish()
        } else {
            None
        };
        refit_population(db, version.model_version, &folds, as_of, inputs).await?;
    }
    let population_secs = population_started.elapsed().as_secs_f64();
    db.activate(version.model_version, Utc::now().timestamp_micros())
        .await?;
    let mut done = report(true, checkpoint, &write_stats, population_secs);
    done.events += caught_up;
    done.customers = db.count_customers(version.model_version).await?;
    if let Some(keep) = options.keep_versions {
        let started = Instant::now();
        done.pruned_versions = super::versions::prune(db, &folds, keep).await?.versions;
        done.prune_secs = started.elapsed().as_secs_f64();
    }
    Ok(done)
}

fn workers(options: &RebuildOptions) -> usize {
    if options.workers > 0 {
        options.workers
    } else {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }
}

/// Splits the customer streams into ranges of about equal size: a few per
/// worker (so a slow partition does not leave the others idle), none
/// smaller than a couple of thousand customers.
async fn plan_partitions(
    db: &ReadModelDb,
    workers: usize,
) -> Result<Vec<(String, Option<String>)>, RunnerError> {
    let customers = db.count_customer_streams().await?;
    let parts = (customers / 2_000).clamp(1, (workers * 4) as u64);
    let mut bounds = vec![CUSTOMER_STREAM_PREFIX.to_owned()];
    for k in 1..parts {
        if let Some(stream) = db.customer_stream_at(customers * k / parts).await? {
            if bounds.last().is_none_or(|b| *b < stream) {
                bounds.push(stream);
            }
        }
    }
    Ok(bounds
        .iter()
        .enumerate()
        .map(|(i, first)| (first.clone(), bounds.get(i + 1).cloned()))
        .collect())
}

/// Where the partition pass reads events from.
enum Source {
    /// The read models share the SQLite file with the store.
    Sqlite(Box<SqliteConnectOptions>),
    /// The read models share the PostgreSQL database with the store.
    Postgres(sqlx::PgPool),
    /// Any store, stream by stream.
    Store(Arc<dyn EventStore>),
}

/// The SQL source when the read-model database holds the store's log (the
/// same event at the head position), else the store itself.
async fn source_for(
    store: &Arc<dyn EventStore>,
    db: &ReadModelDb,
    head: u64,
) -> Result<Source, RunnerError> {
    let sql = match (db, store.backend()) {
        (ReadModelDb::Sqlite(pool), "sqlite") => {
            Some(Source::Sqlite(Box::new((*pool.connect_options()).clone())))
        }
        (ReadModelDb::Postgres(pool), "postgres") => Some(Source::Postgres(pool.clone())),
        _ => None,
    };
    let Some(sql) = sql else {
        return Ok(Source::Store(store.clone()));
    };
    if head == 0 {
        return Ok(sql);
    }
    let at_head = store.read_all_page(head, 1).await?;
    let Some(event) = at_head.first().filter(|e| e.position == head) else {
        return Ok(Source::Store(store.clone()));
    };
    Ok(if db.holds_event(head as i64, event.event_id).await? {
        sql
    } else {
        Source::Store(store.clone())
    })
}

/// The shared state of the workers of one partition pass.
struct PartitionPass {
    /// Whether workers collect the population's first pass as they fold.
    collect_inputs: bool,
    /// The collected first pass, joined as partitions finish.
    inputs: Mutex<PopulationCollector>,
    folds: Folds,
    clock: DateTime<Utc>,
    head: u64,
    batch_events: usize,
    stop_after: Option<usize>,
    partitions: Mutex<Vec<Partition>>,
    stopped: AtomicBool,
    committed: AtomicUsize,
    events: AtomicU64,
    progress: Box<dyn Fn(u64) + Send + Sync>,
}

/// Why a worker stopped early on purpose.
const STOPPED: &str = "stopped";

impl PartitionPass {
    fn next_partition(&self) -> Option<Partition> {
        if self.stopped.load(Ordering::Relaxed) {
            return None;
        }
        self.partitions.lock().expect("not poisoned").pop()
    }

    /// Counts a committed chunk; true when the pass must stop (a simulated
    /// crash).
    fn chunk_sent(&self, events: u64) -> bool {
        let total = self.events.fetch_add(events, Ordering::Relaxed) + events;
        (self.progress)(total);
        let chunks = self.committed.fetch_add(1, Ordering::Relaxed) + 1;
        if self.stop_after.is_some_and(|n| chunks >= n) {
            self.stopped.store(true, Ordering::Relaxed);
        }
        self.stopped.load(Ordering::Relaxed)
    }
}

/// One worker's chunk under construction.
struct Chunk {
    work: BulkWork,
    last_stream: Option<String>,
    fold_secs: f64,
    /// The partition's population inputs, when collected.
    inputs: Option<PopulationInputs>,
}

impl Chunk {
    fn new(pass: &PartitionPass) -> Self {
        Self {
            work: BulkWork::default(),
            last_stream: None,
            fold_secs: 0.0,
            inputs: pass
                .collect_inputs
                .then(|| PopulationInputs::new(&pass.folds, pass.clock)),
        }
    }

    /// Folds one customer's whole history into the chunk.
    fn add(&mut self, pass: &PartitionPass, customer: CustomerId, mut events: Vec<FoldEvent>) {
        let started = Instant::now();
        let folds = &pass.folds;
        let rows = &mut self.work.rows;
        let mut state = folds.fold_history(&customer, &mut events, rows);
        folds.advance_to(&customer, &mut state, pass.clock, rows);
        folds.current_rows(&customer, &state, rows);
        if let Some(inputs) = &mut self.inputs {
            inputs.observe(folds, &customer, &state);
        }
        self.work.states.push(StateRow {
            customer_id: customer.as_str().to_owned(),
            last_occurred_us: state.last_occurred_us,
            due_us: folds.deadline(&state),
            state: state.encode(),
        });
        self.work.events += events.len() as i64;
        self.work.watermark_us = self.work.watermark_us.max(Some(state.last_occurred_us));
        self.last_stream = Some(customer.stream_id().to_string());
        self.fold_secs += started.elapsed().as_secs_f64();
    }

    fn full(&self, pass: &PartitionPass) -> bool {
        self.work.events as usize >= pass.batch_events
    }

    /// Takes the work to send, with the partition's progress.
    fn take(&mut self, partition: &Partition, finished: bool) -> BulkWork {
        let mut work = std::mem::take(&mut self.work);
        work.partition = Some(PartitionProgress {
            partition_no: partition.no,
            done_through: self.last_stream.clone(),
            finished,
        });
        work.commit = true;
        work
    }
}

/// Runs the workers; returns fold seconds, write stats and events folded.
async fn run_partitions(
    pass: Arc<PartitionPass>,
    source: Source,
    db: &ReadModelDb,
    model_version: i64,
    folds: &Folds,
    options: &RebuildOptions,
) -> Result<(f64, WriteStats, u64), RunnerError> {
    let tables = folds.tables();
    let workers = match &source {
        Source::Store(_) => 1,
        _ => workers(options),
    };
    let handle = tokio::runtime::Handle::current();
    // SQLite has one writer per file: every worker feeds the same one.
    // PostgreSQL takes a writer per worker.
    let shared = match db {
        ReadModelDb::Sqlite(_) => Some(BulkWriter::open(db, model_version, &tables).await?),
        ReadModelDb::Postgres(_) => None,
    };
    let mut own_writers = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let sender = match &shared {
            Some(writer) => writer.sender(),
            None => {
                let writer = BulkWriter::open(db, model_version, &tables).await?;
                let sender = writer.sender();
                own_writers.push(writer);
                sender
            }
        };
        let pass = pass.clone();
        let source = match &source {
            Source::Sqlite(o) => Source::Sqlite(o.clone()),
            Source::Postgres(p) => Source::Postgres(p.clone()),
            Source::Store(s) => Source::Store(s.clone()),
        };
        let handle = handle.clone();
        tasks.push(tokio::task::spawn_blocking(move || {
            worker(&pass, &source, sender, &handle)
        }));
    }
    let mut fold_secs = 0.0;
    let mut failure: Option<RunnerError> = None;
    for task in tasks {
        match task.await {
            Ok(Ok(secs)) => fold_secs += secs,
            Ok(Err(e)) => {
                pass.stopped.store(true, Ordering::Relaxed);
                failure.get_or_insert(e);
            }
            Err(e) => {
                pass.stopped.store(true, Ordering::Relaxed);
                failure.get_or_insert(RunnerError::Task(e.to_string()));
            }
        }
    }
    let mut stats = WriteStats::default();
    for writer in shared.into_iter().chain(own_writers) {
        match writer.finish().await {
            Ok(s) => stats += s,
            Err(e) => {
                failure.get_or_insert(e.into());
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    Ok((fold_secs, stats, pass.events.load(Ordering::Relaxed)))
}

/// A worker: takes partitions until none is left, folding each customer
/// and sending chunks to the writer. Returns its fold seconds.
fn worker(
    pass: &PartitionPass,
    source: &Source,
    sender: mpsc::Sender<BulkWork>,
    handle: &tokio::runtime::Handle,
) -> Result<f64, RunnerError> {
    let mut fold_secs = 0.0;
    while let Some(partition) = pass.next_partition() {
        let mut chunk = Chunk::new(pass);
        let outcome = match source {
            Source::Sqlite(options) => {
                scan_sqlite(pass, options, &partition, &mut chunk, &sender, handle)
            }
            Source::Postgres(pool) => {
                handle.block_on(scan_postgres(pass, pool, &partition, &mut chunk, &sender))
            }
            Source::Store(store) => {
                handle.block_on(scan_store(pass, store, &partition, &mut chunk, &sender))
            }
        };
        fold_secs += chunk.fold_secs;
        match outcome {
            Ok(()) => {}
            Err(RunnerError::Task(reason)) if reason == STOPPED => return Ok(fold_secs),
            Err(e) => return Err(e),
        }
        if let Some(inputs) = chunk.inputs.take() {
            pass.inputs.lock().expect("not poisoned").add(inputs);
        }
        let work = chunk.take(&partition, true);
        let events = work.events as u64;
        if !send_blocking(&sender, work) {
            return Err(StorageError::WriterStopped.into());
        }
        if pass.chunk_sent(events) {
            return Ok(fold_secs);
        }
    }
    Ok(fold_secs)
}

fn stopped() -> RunnerError {
    RunnerError::Task(STOPPED.to_owned())
}

/// Decodes one event row of the partition scan.
#[allow(clippy::too_many_arguments)]
fn decode_event(
    position: i64,
    stream: &str,
    event_id: Uuid,
    version: i64,
    event_type: &str,
    schema_version: i64,
    occurred_us: i64,
    payload: &str,
) -> Result<FoldEvent, RunnerError> {
    let corrupt = |reason: String| RunnerError::Decode {
        position: position as u64,
        stream: stream.to_owned(),
        reason,
    };
    let occurred_at = DateTime::from_timestamp_micros(occurred_us)
        .ok_or_else(|| corrupt(format!("occurred_at {occurred_us} is out of range")))?;
    let event = DomainEvent::decode(event_type, schema_version as u32, payload)
        .map_err(|e| corrupt(e.to_string()))?;
    Ok(FoldEvent {
        event_id,
        position: position as u64,
        version: version as u64,
        occurred_at,
        event,
    })
}

fn customer_of(stream: &str, position: i64) -> Result<CustomerId, RunnerError> {
    stream
        .strip_prefix(CUSTOMER_STREAM_PREFIX)
        .and_then(|id| CustomerId::parse(id).ok())
        .ok_or_else(|| RunnerError::Decode {
            position: position as u64,
            stream: stream.to_owned(),
            reason: "not a customer stream".into(),
        })
}

/// Customers per read transaction of the SQLite scan: ending the read
/// transaction now and then lets SQLite checkpoint the write-ahead log
/// while the writer keeps appending to it.
const SQLITE_SCAN_EVENTS: usize = 100_000;

/// Scans a partition from the SQLite file through the C API.
fn scan_sqlite(
    pass: &PartitionPass,
    options: &SqliteConnectOptions,
    partition: &Partition,
    chunk: &mut Chunk,
    sender: &mpsc::Sender<BulkWork>,
    handle: &tokio::runtime::Handle,
) -> Result<(), RunnerError> {
    let mut conn = open_bulk_reader(options, handle)?;
    let raw = RawConnection::lock(&mut conn).map_err(StorageError::from)?;
    let columns =
        "position, stream_id, event_id, version, event_type, schema_version, occurred_at, payload";
    let mut from_start = raw
        .prepare(&format!(
            "SELECT {columns} FROM events WHERE stream_id >= ?1 AND stream_id < ?2 AND position <= ?3 \
             ORDER BY stream_id, version"
        ))
        .map_err(StorageError::from)?;
    let mut after = raw
        .prepare(&format!(
            "SELECT {columns} FROM events WHERE stream_id > ?1 AND stream_id < ?2 AND position <= ?3 \
             ORDER BY stream_id, version"
        ))
        .map_err(StorageError::from)?;
    let mut lower = partition.lower().0.to_owned();
    let mut inclusive = partition.lower().1;
    loop {
        let statement = if inclusive {
            &mut from_start
        } else {
            &mut after
        };
        statement
            .bind(1, Bind::Text(&lower))
            .map_err(StorageError::from)?;
        statement
            .bind(2, Bind::Text(partition.end()))
            .map_err(StorageError::from)?;
        statement
            .bind(3, Bind::Int(pass.head as i64))
            .map_err(StorageError::from)?;
        let mut current: Option<(String, CustomerId)> = None;
        let mut events: Vec<FoldEvent> = Vec::new();
        let mut read = 0usize;
        let mut more = false;
        while let Some(row) = statement.next_row().map_err(StorageError::from)? {
            let position = row.int(0);
            let stream = row.text(1).map_err(|e| RunnerError::Decode {
                position: position as u64,
                stream: String::new(),
                reason: e.to_string(),
            })?;
            if current.as_ref().is_none_or(|(s, _)| s != stream) {
                if let Some((_, customer)) = current.take() {
                    chunk.add(pass, customer, std::mem::take(&mut events));
                    if chunk.full(pass) {
                        let work = chunk.take(partition, false);
                        let n = work.events as u64;
                        if !send_blocking(sender, work) {
                            return Err(StorageError::WriterStopped.into());
                        }
                        if pass.chunk_sent(n) {
                            return Err(stopped());
                        }
                    }
                    if read >= SQLITE_SCAN_EVENTS {
                        // Resume after the last complete customer in a new
                        // read transaction.
                        more = true;
                        break;
                    }
                }
                current = Some((stream.to_owned(), customer_of(stream, position)?));
            }
            let text = |i| {
                row.text(i).map_err(|e| RunnerError::Decode {
                    position: position as u64,
                    stream: stream.to_owned(),
                    reason: e.to_string(),
                })
            };
            let event_id = Uuid::from_slice(row.bytes(2)).map_err(|e| RunnerError::Decode {
                position: position as u64,
                stream: stream.to_owned(),
                reason: format!("event_id: {e}"),
            })?;
            events.push(decode_event(
                position,
                stream,
                event_id,
                row.int(3),
                text(4)?,
                row.int(5),
                row.int(6),
                text(7)?,
            )?);
            read += 1;
        }
        if more {
            // The statement stopped mid-scan: reset it (ending the read
            // transaction) and continue after the last customer folded.
            drop(events);
            statement.reset();
            lower = chunk.last_stream.clone().expect("a customer was folded");
            inclusive = false;
            continue;
        }
        if let Some((_, customer)) = current.take() {
            chunk.add(pass, customer, events);
        }
        return Ok(());
    }
}

/// Scans a partition from PostgreSQL.
async fn scan_postgres(
    pass: &PartitionPass,
    pool: &sqlx::PgPool,
    partition: &Partition,
    chunk: &mut Chunk,
    sender: &mpsc::Sender<BulkWork>,
) -> Result<(), RunnerError> {
    let (lower, inclusive) = partition.lower();
    let sql = format!(
        "SELECT position, stream_id, event_id, version, event_type, schema_version, occurred_at, payload \
         FROM events WHERE stream_id {} $1 AND stream_id < $2 AND position <= $3 ORDER BY stream_id, version",
        if inclusive { ">=" } else { ">" }
    );
    let mut rows = sqlx::query(&sql)
        .bind(lower)
        .bind(partition.end())
        .bind(pass.head as i64)
        .fetch(pool);
    let mut current: Option<(String, CustomerId)> = None;
    let mut events: Vec<FoldEvent> = Vec::new();
    while let Some(row) = rows.next().await {
        let row = row.map_err(StorageError::from)?;
        let position: i64 = row.try_get(0).map_err(StorageError::from)?;
        let stream: &str = row.try_get(1).map_err(StorageError::from)?;
        if current.as_ref().is_none_or(|(s, _)| s != stream) {
            if let Some((_, customer)) = current.take() {
                chunk.add(pass, customer, std::mem::take(&mut events));
                if chunk.full(pass) {
                    let work = chunk.take(partition, false);
                    let n = work.events as u64;
                    if sender.send(work).await.is_err() {
                        return Err(StorageError::WriterStopped.into());
                    }
                    if pass.chunk_sent(n) {
                        return Err(stopped());
                    }
                }
            }
            current = Some((stream.to_owned(), customer_of(stream, position)?));
        }
        let occurred_at: DateTime<Utc> = row.try_get(6).map_err(StorageError::from)?;
        let schema_version: i32 = row.try_get(5).map_err(StorageError::from)?;
        events.push(decode_event(
            position,
            stream,
            row.try_get(2).map_err(StorageError::from)?,
            row.try_get(3).map_err(StorageError::from)?,
            row.try_get(4).map_err(StorageError::from)?,
            i64::from(schema_version),
            occurred_at.timestamp_micros(),
            row.try_get(7).map_err(StorageError::from)?,
        )?);
    }
    if let Some((_, customer)) = current.take() {
        chunk.add(pass, customer, events);
    }
    Ok(())
}

/// Scans a partition stream by stream through the store (EventStoreDB).
async fn scan_store(
    pass: &PartitionPass,
    store: &Arc<dyn EventStore>,
    partition: &Partition,
    chunk: &mut Chunk,
    sender: &mpsc::Sender<BulkWork>,
) -> Result<(), RunnerError> {
    let (lower, inclusive) = partition.lower();
    let mut after: Option<crate::domain::StreamId> = None;
    loop {
        let page = store.list_streams(after.as_ref(), 1_000).await?;
        let Some(last) = page.last().cloned() else {
            return Ok(());
        };
        for stream in page {
            let name = stream.as_str();
            let below = if inclusive {
                name < lower
            } else {
                name <= lower
            };
            if below || !name.starts_with(CUSTOMER_STREAM_PREFIX) {
                continue;
            }
            if name >= partition.end() {
                return Ok(());
            }
            let customer = customer_of(name, 0)?;
            let mut events = Vec::new();
            for recorded in store
                .read_stream(&stream, ReadStream::all_forwards())
                .await?
            {
                if recorded.position > pass.head {
                    continue;
                }
                if let Some((_, event)) = super::runner::fold_event(&recorded)? {
                    events.push(event);
                }
            }
            if events.is_empty() {
                continue;
            }
            chunk.add(pass, customer, events);
            if chunk.full(pass) {
                let work = chunk.take(partition, false);
                let n = work.events as u64;
                if sender.send(work).await.is_err() {
                    return Err(StorageError::WriterStopped.into());
                }
                if pass.chunk_sent(n) {
                    return Err(stopped());
                }
            }
        }
        after = Some(last);
    }
}

impl ReadModelDb {
    /// Customer streams in the store's `streams` table (the read models
    /// share the database) or, for other stores, 0.
    async fn count_customer_streams(&self) -> Result<u64, StorageError> {
        const SQL: &str = "SELECT COUNT(*) FROM streams WHERE stream_id > $1 AND stream_id < $2";
        let n: i64 = both!(self, pool => {
            sqlx::query_scalar(SQL)
                .bind(CUSTOMER_STREAM_PREFIX)
                .bind(CUSTOMER_STREAMS_END)
                .fetch_one(pool)
                .await
                .unwrap_or(0)
        });
        Ok(n.max(0) as u64)
    }

    /// The customer stream at `offset` in id order.
    async fn customer_stream_at(&self, offset: u64) -> Result<Option<String>, StorageError> {
        const SQL: &str = "SELECT stream_id FROM streams WHERE stream_id > $1 AND stream_id < $2 \
                           ORDER BY stream_id LIMIT 1 OFFSET $3";
        Ok(both!(self, pool => {
            sqlx::query_scalar(SQL)
                .bind(CUSTOMER_STREAM_PREFIX)
                .bind(CUSTOMER_STREAMS_END)
                .bind(offset as i64)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// Whether the database's `events` table holds `event_id` at `position`
    /// (the read models share the store's database).
    async fn holds_event(&self, position: i64, event_id: Uuid) -> Result<bool, StorageError> {
        Ok(match self {
            ReadModelDb::Sqlite(pool) => {
                sqlx::query_scalar::<_, Vec<u8>>("SELECT event_id FROM events WHERE position = $1")
                    .bind(position)
                    .fetch_optional(pool)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|id| id == event_id.as_bytes())
            }
            ReadModelDb::Postgres(pool) => {
                sqlx::query_scalar::<_, Uuid>("SELECT event_id FROM events WHERE position = $1")
                    .bind(position)
                    .fetch_optional(pool)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|id| id == event_id)
            }
        })
    }

    /// Records a new rebuild's head and partitions.
    async fn start_partitions(
        &self,
        model_version: i64,
        head: i64,
        partitions: &[(String, Option<String>)],
    ) -> Result<(), StorageError> {
        both!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("UPDATE projection_versions SET rebuild_head = $1 WHERE model_version = $2")
                .bind(head)
                .bind(model_version)
                .execute(&mut *tx)
                .await?;
            for (no, (first, end)) in partitions.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO projection_partitions (model_version, partition_no, first_stream, end_stream) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(model_version)
                .bind(no as i32)
                .bind(first)
                .bind(end.as_deref())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// The partitions of a version not finished yet, the last to take first.
    async fn open_partitions(&self, model_version: i64) -> Result<Vec<Partition>, StorageError> {
        const SQL: &str = "SELECT partition_no, first_stream, end_stream, done_through FROM projection_partitions \
                           WHERE model_version = $1 AND finished = 0 ORDER BY partition_no DESC";
        Ok(both!(self, pool => {
            sqlx::query(SQL)
                .bind(model_version)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| {
                    Ok::<_, sqlx::Error>(Partition {
                        no: i64::from(r.try_get::<i32, _>(0)?),
                        first_stream: r.try_get(1)?,
                        end_stream: r.try_get(2)?,
                        done_through: r.try_get(3)?,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
        }))
    }

    /// Whether every partition of a version is finished.
    async fn partitions_finished(&self, model_version: i64) -> Result<bool, StorageError> {
        const SQL: &str =
            "SELECT COUNT(*) FROM projection_partitions WHERE model_version = $1 AND finished = 0";
        let open: i64 = both!(self, pool => {
            sqlx::query_scalar(SQL).bind(model_version).fetch_one(pool).await?
        });
        Ok(open == 0)
    }

    /// Sets a version's checkpoint.
    async fn set_checkpoint(
        &self,
        model_version: i64,
        checkpoint: i64,
    ) -> Result<(), StorageError> {
        const SQL: &str = "UPDATE projection_versions SET checkpoint = $1 WHERE model_version = $2";
        both!(self, pool => {
            sqlx::query(SQL).bind(checkpoint).bind(model_version).execute(pool).await?;
        });
        Ok(())
    }

    /// Customers with a state in a version.
    pub async fn count_customers(&self, model_version: i64) -> Result<u64, StorageError> {
        const SQL: &str = "SELECT COUNT(*) FROM customer_state WHERE model_version = $1";
        let n: i64 = both!(self, pool => {
            sqlx::query_scalar(SQL).bind(model_version).fetch_one(pool).await?
        });
        Ok(n.max(0) as u64)
    }
}

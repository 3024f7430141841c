//! The projection runner: replays the global log into versioned read
//! models, batch by batch, each batch committed with its checkpoint.
//!
//! - [`rebuild`] writes a fresh version (status `building`) from position 1
//!   and activates it atomically when complete; queries keep reading the
//!   old active version meanwhile. If a building version with the same rules
//!   hash exists (a crashed rebuild), it resumes from that version's
//!   checkpoint, reloading the persisted per-customer states, and ends with
//!   exactly the tables an uninterrupted rebuild gives.
//! - [`catch_up`] / [`follow`] maintain the active version incrementally
//!   from its checkpoint (to the head, or live on the subscription).
//!
//! Late events: a customer's events are folded in `(occurred_at, version)`
//! order. When an event's `occurred_at` is earlier than the last one folded
//! for its customer, the customer's rows in this version are deleted and
//! their stream (up to this event's position) is refolded in that order, so
//! incremental maintenance and a rebuild from scratch always agree.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use thiserror::Error;

use super::alerts::Alerts;
use super::clv_scores::ClvScores;
use super::cohorts::Cohorts;
use super::lifecycle::Lifecycle;
use super::loyalty::Loyalty;
use super::rules::RuleSet;
use super::storage::{
    BatchWrite, ReadModelDb, StorageError, StoredState, VersionInfo, VersionStatus,
};
use super::value::HistoricalValue;
use super::{CustomerFold, FoldEvent, Row, TableSpec};
use crate::domain::{CustomerId, RecordedEvent};
use crate::store::{EventStore, ReadStream, StoreError};

/// Events per committed batch unless told otherwise.
pub const DEFAULT_BATCH_EVENTS: usize = 10_000;

/// Why the runner stopped.
#[derive(Debug, Error)]
pub enum RunnerError {
    /// Reading the log failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing read models failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A stored event did not decode; projections cannot skip it silently.
    #[error("event at position {position} ({stream}) does not decode: {reason}")]
    Decode {
        /// Position.
        position: u64,
        /// Stream.
        stream: String,
        /// Why.
        reason: String,
    },
    /// A persisted state did not parse (schema changed without a rebuild).
    #[error("persisted {projection} state of customer {customer} is unreadable: {reason}; run `journey rebuild`")]
    State {
        /// Projection.
        projection: String,
        /// Customer.
        customer: String,
        /// Why.
        reason: String,
    },
    /// No active version to maintain.
    #[error("no active read-model version; run `journey rebuild` first")]
    NoActiveVersion,
    /// A background commit task died (panicked or was cancelled).
    #[error("a read-model commit task failed: {0}")]
    Task(String),
    /// The active version's rules are not loadable by this build.
    #[error("the active version's rules are unreadable: {0}")]
    Rules(String),
    /// The rebuild could not be recorded in the admin stream.
    #[error("recording the rebuild in the admin stream: {0}")]
    Record(String),
}

/// The object-safe face of a [`CustomerFold`] with its per-customer states.
pub trait FoldRunner: Send {
    /// The fold's name.
    fn name(&self) -> &'static str;
    /// Its tables.
    fn tables(&self) -> &'static [TableSpec];
    /// Forgets a customer (before a refold).
    fn reset(&mut self, customer: &CustomerId);
    /// Folds one event into the customer's state.
    fn apply(&mut self, customer: &CustomerId, event: &FoldEvent, out: &mut Vec<Row>);
    /// Current rows of one customer.
    fn current_rows(&self, customer: &CustomerId, out: &mut Vec<Row>);
    /// Population rows as of an instant.
    fn population_rows(&self, as_of: DateTime<Utc>, out: &mut Vec<Row>);
    /// The customer's state as JSON, if known.
    fn save(&self, customer: &CustomerId) -> Option<String>;
    /// Restores a customer's state from JSON.
    fn load(&mut self, customer: CustomerId, json: &str) -> Result<(), String>;
}

/// Holds one fold and the states of every customer it has seen.
pub struct Folder<F: CustomerFold> {
    fold: F,
    states: HashMap<CustomerId, F::State>,
}

impl<F: CustomerFold> Folder<F> {
    /// Wraps a fold with no customers yet.
    pub fn new(fold: F) -> Self {
        Self {
            fold,
            states: HashMap::new(),
        }
    }
}

impl<F: CustomerFold> FoldRunner for Folder<F> {
    fn name(&self) -> &'static str {
        self.fold.name()
    }
    fn tables(&self) -> &'static [TableSpec] {
        self.fold.tables()
    }
    fn reset(&mut self, customer: &CustomerId) {
        self.states.remove(customer);
    }
    fn apply(&mut self, customer: &CustomerId, event: &FoldEvent, out: &mut Vec<Row>) {
        let state = self.states.entry(customer.clone()).or_default();
        self.fold.apply(customer, state, event, out);
    }
    fn current_rows(&self, customer: &CustomerId, out: &mut Vec<Row>) {
        if let Some(state) = self.states.get(customer) {
            self.fold.current_rows(customer, state, out);
        }
    }
    fn population_rows(&self, as_of: DateTime<Utc>, out: &mut Vec<Row>) {
        let mut states: Vec<(&CustomerId, &F::State)> = self.states.iter().collect();
        states.sort_by(|a, b| a.0.cmp(b.0));
        self.fold.population_rows(&states, as_of, out);
    }
    fn save(&self, customer: &CustomerId) -> Option<String> {
        self.states
            .get(customer)
            .map(|s| serde_json::to_string(s).expect("states serialize"))
    }
    fn load(&mut self, customer: CustomerId, json: &str) -> Result<(), String> {
        let state = serde_json::from_str(json).map_err(|e| e.to_string())?;
        self.states.insert(customer, state);
        Ok(())
    }
}

/// The folds a rule set defines. Register new read models here.
pub fn folds_for(rules: &RuleSet) -> Vec<Box<dyn FoldRunner>> {
    vec![
        Box::new(Folder::new(Lifecycle {
            rules: rules.lifecycle.clone(),
        })),
        Box::new(Folder::new(Loyalty {
            rules: rules.loyalty.clone(),
        })),
        Box::new(Folder::new(Alerts {
            rules: rules.alerts.clone(),
            lifecycle: rules.lifecycle.clone(),
        })),
        Box::new(Folder::new(HistoricalValue)),
        Box::new(Folder::new(Cohorts {
            reporting_currency: rules.lifecycle.currency,
        })),
        Box::new(Folder::new(ClvScores {
            rules: rules.clv.clone(),
        })),
    ]
}

/// Every table of every fold (for commits and dumps).
pub fn all_tables(folds: &[Box<dyn FoldRunner>]) -> Vec<TableSpec> {
    folds
        .iter()
        .flat_map(|f| f.tables().iter().copied())
        .collect()
}

/// Decodes a customer event for folding; `None` for non-customer streams.
pub fn fold_event(event: &RecordedEvent) -> Result<Option<(CustomerId, FoldEvent)>, RunnerError> {
    let Some(customer) = event.stream_id.customer_id() else {
        return Ok(None);
    };
    let decoded = event.decode().map_err(|e| RunnerError::Decode {
        position: event.position,
        stream: event.stream_id.to_string(),
        reason: e.to_string(),
    })?;
    Ok(Some((
        customer,
        FoldEvent {
            event_id: event.event_id,
            position: event.position,
            version: event.version,
            occurred_at: event.occurred_at,
            event: decoded,
        },
    )))
}

/// Folds events into one version of the read models.
pub struct Projector {
    store: Arc<dyn EventStore>,
    db: ReadModelDb,
    version: i64,
    folds: Vec<Box<dyn FoldRunner>>,
    tables: Vec<TableSpec>,
    /// Per customer: `occurred_at` (µs) of the latest event folded.
    cursors: HashMap<CustomerId, i64>,
    checkpoint: u64,
    /// The last position folded (ahead of `checkpoint` while a commit is
    /// in flight).
    folded_to: u64,
    /// The newest `occurred_at` folded (the population's "as of").
    watermark: Option<DateTime<Utc>>,
    /// Seconds spent decoding and folding.
    fold_secs: f64,
    /// Seconds spent committing.
    write_secs: f64,
    /// How long the last population refit took (live maintenance spaces
    /// refits by it).
    last_refit: std::time::Duration,
}

impl Projector {
    /// Opens a projector on `version`, reloading persisted states.
    pub async fn open(
        store: Arc<dyn EventStore>,
        db: ReadModelDb,
        version: &VersionInfo,
        rules: &RuleSet,
    ) -> Result<Self, RunnerError> {
        let mut folds = folds_for(rules);
        let tables = all_tables(&folds);
        let mut cursors = HashMap::new();
        let mut watermark_us: Option<i64> = None;
        db.for_each_state(version.model_version, None, |stored| {
            let customer =
                CustomerId::parse(&stored.customer_id).map_err(|e| RunnerError::State {
                    projection: stored.projection.clone(),
                    customer: stored.customer_id.clone(),
                    reason: e.to_string(),
                })?;
            if let Some(fold) = folds.iter_mut().find(|f| f.name() == stored.projection) {
                fold.load(customer.clone(), &stored.state)
                    .map_err(|reason| RunnerError::State {
                        projection: stored.projection.clone(),
                        customer: stored.customer_id.clone(),
                        reason,
                    })?;
            }
            watermark_us = watermark_us.max(Some(stored.last_occurred_us));
            cursors.insert(customer, stored.last_occurred_us);
            Ok::<_, RunnerError>(())
        })
        .await??;
        Ok(Self {
            store,
            db,
            version: version.model_version,
            folds,
            tables,
            cursors,
            checkpoint: version.checkpoint.max(0) as u64,
            folded_to: version.checkpoint.max(0) as u64,
            watermark: watermark_us.and_then(DateTime::from_timestamp_micros),
            fold_secs: 0.0,
            write_secs: 0.0,
            last_refit: std::time::Duration::ZERO,
        })
    }

    /// The last position committed.
    pub fn checkpoint(&self) -> u64 {
        self.checkpoint
    }

    /// The version written.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// Customers folded so far.
    pub fn customers(&self) -> usize {
        self.cursors.len()
    }

    /// Folds a batch of events (in position order, all after the
    /// checkpoint) and commits it; `with_population` also rewrites the
    /// population tables as of the newest event.
    pub async fn process(
        &mut self,
        events: &[RecordedEvent],
        with_population: bool,
    ) -> Result<(), RunnerError> {
        let batch = self.fold(events, with_population).await?;
        self.commit(batch).await
    }

    /// Folds a batch of events (in position order, all after what was
    /// folded before) into the write it must commit: rows, the touched
    /// customers' states and the new checkpoint. Nothing is written; the
    /// caller commits the writes in the order they were folded.
    pub async fn fold(
        &mut self,
        events: &[RecordedEvent],
        with_population: bool,
    ) -> Result<BatchWrite, RunnerError> {
        let started = std::time::Instant::now();
        let mut touched: Vec<CustomerId> = Vec::new();
        let mut touched_set: HashSet<CustomerId> = HashSet::new();
        let mut existed: HashSet<CustomerId> = HashSet::new();
        let mut reset: HashSet<CustomerId> = HashSet::new();
        let mut rows: Vec<Row> = Vec::with_capacity(events.len());
        let mut last_position = self.folded_to;
        for recorded in events {
            last_position = recorded.position;
            let Some((customer, event)) = fold_event(recorded)? else {
                continue;
            };
            let at_us = event.occurred_at.timestamp_micros();
            self.watermark = self.watermark.max(Some(event.occurred_at));
            if touched_set.insert(customer.clone()) {
                if self.cursors.contains_key(&customer) {
                    existed.insert(customer.clone());
                }
                touched.push(customer.clone());
            }
            let late = self
                .cursors
                .get(&customer)
                .is_some_and(|&last| at_us < last);
            if late {
                self.refold(&customer, recorded.position, &mut rows).await?;
                reset.insert(customer.clone());
            } else {
                for fold in &mut self.folds {
                    fold.apply(&customer, &event, &mut rows);
                }
                self.cursors.insert(customer, at_us);
            }
        }
        let mut batch = BatchWrite {
            checkpoint: last_position as i64,
            events: events.len() as i64,
            ..Default::default()
        };
        for customer in &touched {
            for fold in &self.folds {
                fold.current_rows(customer, &mut rows);
                if let Some(state) = fold.save(customer) {
                    batch.states.push(StoredState {
                        projection: fold.name().to_owned(),
                        customer_id: customer.as_str().to_owned(),
                        last_occurred_us: self.cursors[customer],
                        state,
                    });
                }
            }
            if reset.contains(customer) {
                batch.reset_customers.push(customer.as_str().to_owned());
            } else if existed.contains(customer) {
                batch.replace_customers.push(customer.as_str().to_owned());
            }
        }
        // A refolded customer's rows were regenerated in full by `refold`
        // (which dropped the ones folded earlier in this batch).
        batch.rows = rows;
        if with_population {
            batch.population = self.refit_population();
        }
        self.folded_to = last_position;
        self.fold_secs += started.elapsed().as_secs_f64();
        Ok(batch)
    }

    /// Commits a folded batch (rows, states and checkpoint in one
    /// transaction).
    pub async fn commit(&mut self, batch: BatchWrite) -> Result<(), RunnerError> {
        let started = std::time::Instant::now();
        let checkpoint = batch.checkpoint as u64;
        self.db
            .commit_batch(self.version, &self.tables, batch)
            .await?;
        self.write_secs += started.elapsed().as_secs_f64();
        self.checkpoint = checkpoint;
        Ok(())
    }

    /// Commits a folded batch on another task, so the next batch can be
    /// folded meanwhile; await the handle (with [`Projector::committed`])
    /// before committing the next one, to keep commits in order.
    fn commit_in_background(&self, batch: BatchWrite) -> InFlight {
        let db = self.db.clone();
        let tables = self.tables.clone();
        let version = self.version;
        let checkpoint = batch.checkpoint as u64;
        let handle = tokio::spawn(async move {
            let started = std::time::Instant::now();
            db.commit_batch(version, &tables, batch).await?;
            Ok(started.elapsed().as_secs_f64())
        });
        InFlight { handle, checkpoint }
    }

    /// Waits for a background commit and records its checkpoint.
    async fn committed(&mut self, inflight: InFlight) -> Result<(), RunnerError> {
        let secs = inflight
            .handle
            .await
            .map_err(|e| RunnerError::Task(e.to_string()))??;
        self.write_secs += secs;
        self.checkpoint = inflight.checkpoint;
        Ok(())
    }

    /// [`Self::population_rows`] off the reactor, timed.
    fn refit_population(&mut self) -> Option<(i64, Vec<Row>)> {
        let started = std::time::Instant::now();
        let rows = off_the_reactor(|| self.population_rows());
        self.last_refit = started.elapsed();
        rows
    }

    /// When live maintenance may refit the population next: at least
    /// [`POPULATION_EVERY`] apart, and at least four refits' durations, so
    /// refits over a large population (minutes at a million customers when
    /// a model fit struggles) take at most a fifth of the time.
    fn next_refit(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + POPULATION_EVERY.max(self.last_refit * 4)
    }

    /// Every fold's population rows as of the newest event folded, with
    /// that instant (µs); `None` before any customer event.
    fn population_rows(&self) -> Option<(i64, Vec<Row>)> {
        let as_of = self.watermark?;
        let mut rows = Vec::new();
        for fold in &self.folds {
            fold.population_rows(as_of, &mut rows);
        }
        Some((as_of.timestamp_micros(), rows))
    }

    /// Rewrites the population tables as of the newest event folded.
    pub async fn write_population(&mut self) -> Result<(), RunnerError> {
        let started = std::time::Instant::now();
        let batch = BatchWrite {
            checkpoint: self.checkpoint as i64,
            population: self.refit_population(),
            ..Default::default()
        };
        self.db
            .commit_batch(self.version, &self.tables, batch)
            .await?;
        self.write_secs += started.elapsed().as_secs_f64();
        Ok(())
    }

    /// Refolds one customer from their stream, up to `position`, in
    /// `(occurred_at, version)` order.
    async fn refold(
        &mut self,
        customer: &CustomerId,
        position: u64,
        rows: &mut Vec<Row>,
    ) -> Result<(), RunnerError> {
        tracing::debug!(%customer, position, "late event: refolding the customer");
        let stream = self
            .store
            .read_stream(&customer.stream_id(), ReadStream::all_forwards())
            .await?;
        let mut events = Vec::with_capacity(stream.len());
        for recorded in stream.iter().filter(|e| e.position <= position) {
            if let Some((_, event)) = fold_event(recorded)? {
                events.push(event);
            }
        }
        events.sort_by_key(|e| (e.occurred_at, e.version));
        rows.retain(|r| r.customer_id != customer.as_str());
        for fold in &mut self.folds {
            fold.reset(customer);
        }
        for event in &events {
            for fold in &mut self.folds {
                fold.apply(customer, event, rows);
            }
        }
        let last = events.last().map(|e| e.occurred_at.timestamp_micros());
        self.cursors
            .insert(customer.clone(), last.unwrap_or_default());
        Ok(())
    }
}

/// A batch being committed on another task.
struct InFlight {
    handle: tokio::task::JoinHandle<Result<f64, StorageError>>,
    checkpoint: u64,
}

/// Options of a rebuild.
#[derive(Debug, Clone)]
pub struct RebuildOptions {
    /// Events per committed batch.
    pub batch_events: usize,
    /// Stop (as if crashed) after this many committed batches; for tests of
    /// crash recovery.
    pub stop_after_batches: Option<usize>,
}

impl Default for RebuildOptions {
    fn default() -> Self {
        Self {
            batch_events: DEFAULT_BATCH_EVENTS,
            stop_after_batches: None,
        }
    }
}

/// What a rebuild did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RebuildReport {
    /// The version written.
    pub model_version: i64,
    /// Whether it was activated (false when stopped early).
    pub activated: bool,
    /// Whether an interrupted rebuild was resumed.
    pub resumed_from: Option<u64>,
    /// Events read in this run.
    pub events: u64,
    /// Customers in the version.
    pub customers: usize,
    /// Last position applied.
    pub checkpoint: u64,
    /// Seconds spent decoding and folding.
    pub fold_secs: f64,
    /// Seconds spent writing read models.
    pub write_secs: f64,
}

/// Rebuilds every read model into a fresh version from the full log, then
/// activates it. Resumes a building version with the same rules hash.
/// `progress` receives each committed checkpoint.
pub async fn rebuild(
    store: Arc<dyn EventStore>,
    db: &ReadModelDb,
    rules: &RuleSet,
    options: &RebuildOptions,
    started_at: DateTime<Utc>,
    mut progress: impl FnMut(u64),
) -> Result<RebuildReport, RunnerError> {
    let rules_json = serde_json::to_string(rules).expect("rules serialize");
    let resumable = db
        .latest_with_status(VersionStatus::Building)
        .await?
        .filter(|v| v.rules_hash == rules.hash && v.rules_json == rules_json);
    let (version, resumed_from) = match resumable {
        Some(v) => {
            let from = v.checkpoint as u64;
            (v, Some(from))
        }
        None => (
            db.create_version(
                &rules.rules_id(),
                &rules.hash,
                &rules_json,
                started_at.timestamp_micros(),
            )
            .await?,
            None,
        ),
    };
    let mut projector = Projector::open(store.clone(), db.clone(), &version, rules).await?;
    let batch_size = options.batch_events.max(1);
    let mut events =
        crate::store::read_all(store, projector.checkpoint() + 1, batch_size.min(5_000))
            .chunks(batch_size);
    let mut read = 0u64;
    let mut batches = 0usize;
    // Fold batch N+1 while batch N commits: commits stay in order, each
    // with its own checkpoint, so a crash loses at most uncommitted work.
    let mut inflight: Option<InFlight> = None;
    while let Some(chunk) = events.next().await {
        let chunk: Vec<RecordedEvent> = chunk.into_iter().collect::<Result<_, _>>()?;
        read += chunk.len() as u64;
        let batch = projector.fold(&chunk, false).await?;
        if let Some(previous) = inflight.take() {
            projector.committed(previous).await?;
            progress(projector.checkpoint());
        }
        batches += 1;
        if options.stop_after_batches.is_some_and(|n| batches >= n) {
            projector.commit(batch).await?;
            progress(projector.checkpoint());
            return Ok(RebuildReport {
                model_version: projector.version(),
                activated: false,
                resumed_from,
                events: read,
                customers: projector.customers(),
                checkpoint: projector.checkpoint(),
                fold_secs: projector.fold_secs,
                write_secs: projector.write_secs,
            });
        }
        inflight = Some(projector.commit_in_background(batch));
    }
    if let Some(previous) = inflight.take() {
        projector.committed(previous).await?;
        progress(projector.checkpoint());
    }
    projector.write_population().await?;
    db.activate(projector.version(), started_at.timestamp_micros())
        .await?;
    Ok(RebuildReport {
        model_version: projector.version(),
        activated: true,
        resumed_from,
        events: read,
        customers: projector.customers(),
        checkpoint: projector.checkpoint(),
        fold_secs: projector.fold_secs,
        write_secs: projector.write_secs,
    })
}

/// The active version and its rules.
pub async fn active(db: &ReadModelDb) -> Result<(VersionInfo, RuleSet), RunnerError> {
    let version = db
        .latest_with_status(VersionStatus::Active)
        .await?
        .ok_or(RunnerError::NoActiveVersion)?;
    let rules: RuleSet =
        serde_json::from_str(&version.rules_json).map_err(|e| RunnerError::Rules(e.to_string()))?;
    Ok((version, rules))
}

/// Brings the active version up to the store's head (incremental
/// maintenance), committing every `batch_events`; returns events applied.
pub async fn catch_up(
    store: Arc<dyn EventStore>,
    db: &ReadModelDb,
    batch_events: usize,
) -> Result<u64, RunnerError> {
    let (version, rules) = active(db).await?;
    let mut projector = Projector::open(store.clone(), db.clone(), &version, &rules).await?;
    let batch_size = batch_events.max(1);
    let mut events =
        crate::store::read_all(store, projector.checkpoint() + 1, batch_size.min(5_000))
            .chunks(batch_size);
    let mut applied = 0u64;
    while let Some(chunk) = events.next().await {
        let chunk: Vec<RecordedEvent> = chunk.into_iter().collect::<Result<_, _>>()?;
        applied += chunk.len() as u64;
        projector.process(&chunk, false).await?;
    }
    if applied > 0 {
        projector.write_population().await?;
    }
    Ok(applied)
}

/// How often live maintenance rewrites the population tables at most
/// (slow refits are spaced further apart: see `Projector::next_refit`).
pub const POPULATION_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// What one live batch committed, for listeners (the API's subscriptions).
#[derive(Debug, Clone)]
pub struct Committed {
    /// The checkpoint now committed.
    pub checkpoint: u64,
    /// History rows the batch appended (stage transitions, alerts), except
    /// those of customers refolded because of a late event (their history
    /// was regenerated, not extended).
    pub new_history: Vec<Row>,
}

/// Follows the store's subscription forever, maintaining the active
/// version: each ready group of events (up to `batch_events`) is one
/// transaction; population tables follow within [`POPULATION_EVERY`] (or
/// four refits' durations, when refits are slower than half a second).
/// `on_batch` hears of each committed batch.
pub async fn follow(
    store: Arc<dyn EventStore>,
    db: &ReadModelDb,
    batch_events: usize,
    on_batch: impl FnMut(&Committed),
) -> Result<(), RunnerError> {
    Follower::open(store, db)
        .await?
        .run(batch_events, on_batch)
        .await
}

/// The live runner between loading the active version's states (which
/// takes a while on large stores: every customer's fold state is read) and
/// following the store; [`follow`] in two steps, so a server can wait for
/// the first before it starts serving.
pub struct Follower {
    store: Arc<dyn EventStore>,
    projector: Projector,
}

impl Follower {
    /// Loads the active version's per-customer states.
    pub async fn open(store: Arc<dyn EventStore>, db: &ReadModelDb) -> Result<Self, RunnerError> {
        let (version, rules) = active(db).await?;
        let projector = Projector::open(store.clone(), db.clone(), &version, &rules).await?;
        Ok(Self { store, projector })
    }

    /// Follows the store forever (see [`follow`]).
    pub async fn run(
        self,
        batch_events: usize,
        mut on_batch: impl FnMut(&Committed),
    ) -> Result<(), RunnerError> {
        let Follower {
            store,
            mut projector,
        } = self;
        let history: HashSet<&'static str> = projector
            .tables
            .iter()
            .filter(|t| t.kind == super::TableKind::History)
            .map(|t| t.name)
            .collect();
        let mut events = crate::store::subscribe_all(store, projector.checkpoint() + 1)
            .ready_chunks(batch_events.max(1));
        // Population tables (value tiers, CLV refits) cost O(customers): they
        // are rewritten at most every POPULATION_EVERY (longer when refits
        // are slow), and once more when the stream goes quiet, not after
        // every small live batch.
        let mut population_due = tokio::time::Instant::now();
        let mut population_stale = false;
        loop {
            let chunk = tokio::select! {
                chunk = events.next() => chunk,
                _ = tokio::time::sleep_until(population_due), if population_stale => {
                    projector.write_population().await?;
                    population_stale = false;
                    population_due = projector.next_refit();
                    continue;
                }
            };
            let Some(chunk) = chunk else { break };
            let chunk: Vec<RecordedEvent> = chunk.into_iter().collect::<Result<_, _>>()?;
            let with_population = tokio::time::Instant::now() >= population_due;
            let batch = projector.fold(&chunk, with_population).await?;
            if with_population {
                population_stale = false;
                population_due = projector.next_refit();
            } else {
                population_stale = true;
            }
            let refolded: HashSet<&str> =
                batch.reset_customers.iter().map(String::as_str).collect();
            let new_history: Vec<Row> = batch
                .rows
                .iter()
                .filter(|r| history.contains(r.table) && !refolded.contains(r.customer_id.as_str()))
                .cloned()
                .collect();
            projector.commit(batch).await?;
            on_batch(&Committed {
                checkpoint: projector.checkpoint(),
                new_history,
            });
        }
        Ok(())
    }
}

/// Runs CPU-heavy work (population refits: the CLV models over every
/// customer take seconds to minutes at a million customers) without
/// stalling the async worker it is called on: on a multi-threaded runtime
/// the worker's other tasks (a server's requests) move to another thread
/// meanwhile. A current-thread runtime (tests, one-shot commands) has no
/// other worker to hand them to, so there it simply runs.
fn off_the_reactor<R>(work: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

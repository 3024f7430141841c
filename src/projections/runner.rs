//! The incremental runner: maintains a read-model version from its
//! checkpoint, batch by batch, each batch committed with its checkpoint.
//!
//! - [`catch_up`] / [`follow`] bring the active version to the store's head
//!   (once, or live on the subscription); a rebuild ([`super::rebuild`])
//!   uses the same [`Projector`] for the events appended while it ran.
//! - States are loaded on demand into a bounded cache ([`StateCache`]) and
//!   written back with each batch: memory depends on the cache budget, not
//!   on the number of customers, and a server starts without loading any.
//! - Each touched customer is advanced to the clock ([`Clock`]) after its
//!   events, so its tables show it as of now.
//!
//! Late events: a customer's events are folded in `(occurred_at, version)`
//! order. When an event's `occurred_at` is earlier than the last one folded
//! for its customer, or not after the instant the customer was advanced to
//! ([`CustomerState::is_late`]), the customer's rows in this version are
//! deleted and their stream (up to this event's position) is refolded in
//! that order, so incremental maintenance and a rebuild from scratch agree.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use thiserror::Error;

use super::bulk::{scan_states, BulkWork, BulkWriter, CustomerRange};
use super::cache::StateCache;
use super::clock::Clock;
use super::live_feed::FeedItem;
use super::population::{PopulationChanged, PopulationInputs};
use super::rules::RuleSet;
use super::state::{CustomerState, Folds, StateError};
use super::storage::{BatchWrite, ReadModelDb, StateRow, StorageError, VersionInfo, VersionStatus};
use super::{FoldEvent, Row, TableKind, TableSpec};
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
    /// A stored state did not decode (its format changed without a rebuild).
    #[error("the stored state of customer {customer} is unreadable: {source}")]
    State {
        /// Customer.
        customer: String,
        /// Why.
        source: StateError,
    },
    /// The version was built by a build with another state format.
    #[error("read-model version {model_version} was built with state format {found}, this build uses {expected}; run `journey rebuild`")]
    StateFormat {
        /// The version.
        model_version: i64,
        /// Its format.
        found: i64,
        /// This build's.
        expected: u8,
    },
    /// What was asked cannot be done on this version (a benchmark's
    /// precondition).
    #[error("{0}")]
    Unavailable(String),
    /// The population changed under a refit (another writer).
    #[error(transparent)]
    Population(#[from] PopulationChanged),
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

/// The folds a rule set defines (see [`Folds`]).
pub fn folds_for(rules: &RuleSet) -> Folds {
    Folds::new(rules)
}

/// Every table of every fold (for commits and dumps).
pub fn all_tables(folds: &Folds) -> Vec<TableSpec> {
    folds.tables()
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

/// Settings of a [`Projector`].
#[derive(Debug, Clone)]
pub struct ProjectorOptions {
    /// Where "now" comes from.
    pub clock: Clock,
    /// Budget of the state cache, bytes.
    pub cache_bytes: usize,
    /// Versions kept after a rebuild this runner's owner starts
    /// (`[projections] keep_versions`).
    pub keep_versions: usize,
    /// The fencing epoch of a server's projector: its batches commit only
    /// while no other server has taken the role over
    /// ([`super::leadership`]). `None` when nothing else projects.
    pub fence: Option<i64>,
}

/// The default state cache budget: `[projections] state_cache_mb`.
pub const DEFAULT_STATE_CACHE_MB: usize = 64;

impl Default for ProjectorOptions {
    fn default() -> Self {
        Self {
            clock: Clock::Wall,
            cache_bytes: DEFAULT_STATE_CACHE_MB << 20,
            keep_versions: super::rebuild::DEFAULT_KEEP_VERSIONS,
            fence: None,
        }
    }
}

/// A folded batch: what to commit, and the history rows new to listeners.
pub struct Folded {
    /// Rows, states and checkpoint to commit.
    pub batch: BatchWrite,
    /// Stage transitions and alerts the batch adds (for a refolded
    /// customer, those beyond the history they had).
    pub new_history: Vec<Row>,
}

/// How many history rows a customer had, per history table.
#[derive(Debug, Clone, Copy)]
struct HistoryCounts {
    transitions: i64,
    alerts: i64,
}

impl HistoryCounts {
    fn of(state: &CustomerState) -> Self {
        Self {
            transitions: state.lifecycle.transitions,
            alerts: i64::from(state.alerts.written),
        }
    }
}

/// A history row's sequence number (its first value).
fn seq_of(row: &Row) -> i64 {
    match row.values.first() {
        Some(super::Value::Int(seq)) => *seq,
        _ => 0,
    }
}

type HistoryCount = fn(&HistoryCounts) -> i64;

/// Folds events into one version of the read models, incrementally.
pub struct Projector {
    store: Arc<dyn EventStore>,
    db: ReadModelDb,
    version: i64,
    folds: Folds,
    tables: Vec<TableSpec>,
    cache: StateCache,
    clock: Clock,
    /// The history tables and the count of rows a customer had in each.
    history_tables: std::collections::HashMap<&'static str, HistoryCount>,
    checkpoint: u64,
    /// The newest `occurred_at` folded (the population's "as of").
    watermark: Option<DateTime<Utc>>,
    /// Seconds spent decoding and folding.
    fold_secs: f64,
    /// Seconds spent committing.
    write_secs: f64,
    /// How long the last population refit took (live maintenance spaces
    /// refits by it).
    last_refit: std::time::Duration,
    /// The fencing epoch every commit checks ([`ProjectorOptions::fence`]).
    fence: Option<i64>,
}

impl Projector {
    /// Opens a projector on `version` (no state is loaded until a batch
    /// needs it).
    pub async fn open(
        store: Arc<dyn EventStore>,
        db: ReadModelDb,
        version: &VersionInfo,
        rules: &RuleSet,
        options: ProjectorOptions,
    ) -> Result<Self, RunnerError> {
        if !version.maintainable() {
            return Err(RunnerError::StateFormat {
                model_version: version.model_version,
                found: version.state_format,
                expected: super::state::STATE_FORMAT,
            });
        }
        let folds = Folds::new(rules);
        let mut history_tables: std::collections::HashMap<&'static str, HistoryCount> =
            std::collections::HashMap::new();
        history_tables.insert("lifecycle_transitions", |c| c.transitions);
        history_tables.insert("churn_alerts", |c| c.alerts);
        debug_assert!(folds
            .tables()
            .iter()
            .filter(|t| t.kind == TableKind::History)
            .all(|t| history_tables.contains_key(t.name)));
        Ok(Self {
            history_tables,
            tables: folds.tables(),
            folds,
            store,
            db,
            version: version.model_version,
            cache: StateCache::new(options.cache_bytes),
            clock: options.clock,
            checkpoint: version.checkpoint.max(0) as u64,
            watermark: version
                .watermark_us
                .and_then(DateTime::from_timestamp_micros),
            fold_secs: 0.0,
            write_secs: 0.0,
            last_refit: std::time::Duration::ZERO,
            fence: options.fence,
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

    /// The state cache (for metrics).
    pub fn cache(&self) -> &StateCache {
        &self.cache
    }

    /// Seconds spent folding and writing so far.
    pub fn secs(&self) -> (f64, f64) {
        (self.fold_secs, self.write_secs)
    }

    /// Folds a batch of events (in position order, all after the
    /// checkpoint) and commits it.
    pub async fn process(&mut self, events: &[RecordedEvent]) -> Result<(), RunnerError> {
        let folded = self.fold(events).await?;
        self.commit(folded.batch).await
    }

    /// Loads the stored states of the batch's customers that are not cached.
    async fn load_missing(&mut self, customers: &[CustomerId]) -> Result<(), RunnerError> {
        let missing: Vec<&str> = customers
            .iter()
            .filter(|c| !self.cache.contains(c))
            .map(CustomerId::as_str)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        for row in self.db.load_states(self.version, &missing).await? {
            let (customer, state) = decode_state_row(&row)?;
            self.cache.put(customer, state, row.state.len());
        }
        Ok(())
    }

    /// Folds a batch of events (in position order, all after what was
    /// folded before) into the write it must commit: rows, the touched
    /// customers' states and the new checkpoint. Nothing is written.
    pub async fn fold(&mut self, events: &[RecordedEvent]) -> Result<Folded, RunnerError> {
        let started = std::time::Instant::now();
        let mut decoded: Vec<(CustomerId, FoldEvent, u64)> = Vec::with_capacity(events.len());
        let mut last_position = self.checkpoint;
        for recorded in events {
            last_position = recorded.position;
            if let Some((customer, event)) = fold_event(recorded)? {
                decoded.push((customer, event, recorded.position));
            }
        }
        let mut touched: Vec<CustomerId> = Vec::new();
        let mut seen: HashSet<CustomerId> = HashSet::new();
        for (customer, _, _) in &decoded {
            if seen.insert(customer.clone()) {
                touched.push(customer.clone());
            }
        }
        self.load_missing(&touched).await?;
        let existed: HashSet<CustomerId> = touched
            .iter()
            .filter(|c| self.cache.contains(c))
            .cloned()
            .collect();
        let mut reset: HashSet<CustomerId> = HashSet::new();
        // History rows each refolded customer had before (their history is
        // regenerated; only rows beyond these are new to listeners).
        let mut had: std::collections::HashMap<String, HistoryCounts> =
            std::collections::HashMap::new();
        let mut rows: Vec<Row> = Vec::with_capacity(events.len() * 2);
        for (customer, event, position) in &decoded {
            self.watermark = self.watermark.max(Some(event.occurred_at));
            let at_us = event.occurred_at.timestamp_micros();
            let late = match self.cache.get_mut(customer) {
                Some(state) => state.is_late(at_us),
                None => {
                    self.cache
                        .put(customer.clone(), CustomerState::default(), 0);
                    false
                }
            };
            if late {
                if let Some(state) = self.cache.get_mut(customer) {
                    had.entry(customer.as_str().to_owned())
                        .or_insert_with(|| HistoryCounts::of(state));
                }
                self.refold(customer, *position, &mut rows).await?;
                reset.insert(customer.clone());
            } else {
                let state = self.cache.get_mut(customer).expect("cached above");
                self.folds.apply(customer, state, event, &mut rows);
            }
        }
        let now = self.clock.now();
        let mut batch = BatchWrite {
            checkpoint: last_position as i64,
            events: events.len() as i64,
            watermark_us: self.watermark.map(|w| w.timestamp_micros()),
            earliest_event_us: decoded
                .iter()
                .map(|(_, e, _)| e.occurred_at.timestamp_micros())
                .min(),
            clock_us: Some(now.timestamp_micros()),
            ..Default::default()
        };
        for customer in &touched {
            let state = self
                .cache
                .get_mut(customer)
                .expect("touched customers are cached");
            self.folds.advance_to(customer, state, now, &mut rows);
            self.folds.current_rows(customer, state, &mut rows);
            let bytes = state.encode();
            batch.states.push(StateRow {
                customer_id: customer.as_str().to_owned(),
                last_occurred_us: state.last_occurred_us,
                due_us: self.folds.deadline(state),
                state: bytes,
            });
            let len = batch.states.last().map_or(0, |s| s.state.len());
            self.cache.resize(customer, len);
            if reset.contains(customer) {
                batch.reset_customers.push(customer.as_str().to_owned());
            } else if existed.contains(customer) {
                batch.replace_customers.push(customer.as_str().to_owned());
            }
        }
        let new_history = rows
            .iter()
            .filter(|r| match self.history_tables.get(r.table) {
                None => false,
                Some(count) => had
                    .get(r.customer_id.as_str())
                    .is_none_or(|before| seq_of(r) > count(before)),
            })
            .cloned()
            .collect();
        batch.rows = rows;
        self.fold_secs += started.elapsed().as_secs_f64();
        Ok(Folded { batch, new_history })
    }

    /// Advances the customers whose deadline has passed (at most `limit`,
    /// earliest first) to the clock's now, without an event: their stage
    /// transitions, alerts and expiries, current rows and next deadlines,
    /// to commit like a batch (the checkpoint does not move). `None` when
    /// nobody is due.
    pub async fn tick(&mut self, limit: usize) -> Result<Option<Folded>, RunnerError> {
        let started = std::time::Instant::now();
        let now = self.clock.now();
        let due = self
            .db
            .due_states(self.version, now.timestamp_micros(), limit as i64)
            .await?;
        if due.is_empty() {
            return Ok(None);
        }
        let mut rows = Vec::new();
        let mut batch = BatchWrite {
            checkpoint: self.checkpoint as i64,
            clock_us: Some(now.timestamp_micros()),
            checkpoint_later: true,
            ..Default::default()
        };
        for row in due {
            let (customer, stored) = decode_state_row(&row)?;
            // The cache holds what was last committed, like the table.
            if !self.cache.contains(&customer) {
                self.cache.put(customer.clone(), stored, row.state.len());
            }
            let state = self.cache.get_mut(&customer).expect("cached above");
            let mut before = Vec::new();
            self.folds.current_rows(&customer, state, &mut before);
            self.folds.advance_to(&customer, state, now, &mut rows);
            let mut after = Vec::new();
            self.folds.current_rows(&customer, state, &mut after);
            // Most deadlines change one table or none (a window closes
            // without an alert): rewrite only the tables that changed.
            for table in changed_tables(&before, &after) {
                rows.extend(after.iter().filter(|r| r.table == table).cloned());
                batch.replace_in.push((table, customer.as_str().to_owned()));
            }
            batch.state_only.push(customer.as_str().to_owned());
            batch.states.push(StateRow {
                customer_id: customer.as_str().to_owned(),
                last_occurred_us: state.last_occurred_us,
                due_us: self.folds.deadline(state),
                state: state.encode(),
            });
            let len = batch.states.last().map_or(0, |s| s.state.len());
            self.cache.resize(&customer, len);
        }
        let new_history = rows
            .iter()
            .filter(|r| self.history_tables.contains_key(r.table))
            .cloned()
            .collect();
        batch.rows = rows;
        self.fold_secs += started.elapsed().as_secs_f64();
        Ok(Some(Folded { batch, new_history }))
    }

    /// Ticks until nobody is due, committing each tick; returns the history
    /// rows the ticks added.
    pub async fn tick_all(&mut self, limit: usize) -> Result<Vec<Row>, RunnerError> {
        let mut added = Vec::new();
        while let Some(Folded { batch, new_history }) = self.tick(limit).await? {
            self.commit(batch).await?;
            self.checkpoint_wal().await?;
            added.extend(new_history);
        }
        Ok(added)
    }

    /// Commits a folded batch (rows, states and checkpoint in one
    /// transaction), then trims the cache to its budget.
    pub async fn commit(&mut self, mut batch: BatchWrite) -> Result<(), RunnerError> {
        let started = std::time::Instant::now();
        batch.fence = self.fence;
        let checkpoint = batch.checkpoint as u64;
        self.db
            .commit_batch(self.version, &self.tables, batch)
            .await?;
        self.write_secs += started.elapsed().as_secs_f64();
        self.checkpoint = checkpoint;
        self.cache.shrink(|_| false);
        Ok(())
    }

    /// Commits a live batch (an event batch or a deadline tick) with its
    /// stage transitions and alerts in the live feed, and returns them for
    /// this server's own subscribers.
    pub async fn commit_live(&mut self, folded: Folded) -> Result<Committed, RunnerError> {
        let Folded {
            mut batch,
            new_history,
        } = folded;
        let feed = FeedItem::from_history(&new_history);
        batch.feed = feed.clone();
        self.commit(batch).await?;
        Ok(Committed {
            checkpoint: self.checkpoint(),
            feed,
        })
    }

    /// Checkpoints the read models' write-ahead log after a tick's changes
    /// are published (see [`BatchWrite::checkpoint_later`]).
    pub async fn checkpoint_wal(&mut self) -> Result<(), RunnerError> {
        let started = std::time::Instant::now();
        self.db.checkpoint_wal().await?;
        self.write_secs += started.elapsed().as_secs_f64();
        Ok(())
    }

    /// When live maintenance may refit the population next: at least
    /// [`POPULATION_EVERY`] apart, and at least four refits' durations, so
    /// refits over a large population take at most a fifth of the time.
    fn next_refit(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + POPULATION_EVERY.max(self.last_refit * 4)
    }

    /// Rewrites the population tables (see [`refit_population`]) as of the
    /// clock's now, or the newest event folded when that is earlier (a
    /// quiet or historical ledger: the models are fitted as of its end);
    /// nothing before the first event.
    pub async fn write_population(&mut self) -> Result<(), RunnerError> {
        let Some(watermark) = self.watermark else {
            return Ok(());
        };
        let as_of = self.clock.now().min(watermark);
        let started = std::time::Instant::now();
        refit_population(&self.db, self.version, &self.folds, as_of, None).await?;
        self.last_refit = started.elapsed();
        self.write_secs += self.last_refit.as_secs_f64();
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
        rows.retain(|r| r.customer_id != customer.as_str());
        let state = self.folds.fold_history(customer, &mut events, rows);
        self.cache.put(customer.clone(), state, 0);
        Ok(())
    }
}

/// Rewrites the population tables of a version as of `as_of`: two
/// streaming passes over the stored states (see [`super::population`]),
/// the second writing customer range by customer range, each range in one
/// transaction (every row carries the instant it is as of; the version's
/// `population_as_of_us` moves with the last range). `inputs`, when given,
/// are the first pass already made (a rebuild collects them while folding).
pub async fn refit_population(
    db: &ReadModelDb,
    model_version: i64,
    folds: &Folds,
    as_of: DateTime<Utc>,
    inputs: Option<PopulationInputs>,
) -> Result<(), RunnerError> {
    let started = std::time::Instant::now();
    let inputs = match inputs {
        Some(inputs) => inputs,
        None => {
            let mut inputs = PopulationInputs::new(folds, as_of);
            let mut states = scan_states(db, model_version);
            while let Some(chunk) = states.recv().await {
                for (customer, state) in chunk? {
                    inputs.observe(folds, &customer, &state);
                }
            }
            inputs
        }
    };
    debug_assert!(inputs.as_of() >= as_of);
    let customers = inputs.customers();
    let observed = started.elapsed();
    let mut models = off_the_reactor(|| inputs.fit(folds, as_of));
    let fitted = started.elapsed();
    let writer = BulkWriter::open(db, model_version, &folds.tables()).await?;
    let outcome = async {
        // Each chunk of customers replaces their population rows in its own
        // transaction; the last one also records the instant.
        let mut work = BulkWork::default();
        let mut after: Option<String> = None;
        let mut states = scan_states(db, model_version);
        while let Some(chunk) = states.recv().await {
            let chunk = chunk?;
            for (customer, state) in &chunk {
                models.rows(customer, state, &mut work.rows)?;
            }
            if work.rows.len() >= 20_000 {
                let last = chunk.last().map(|(c, _)| c.as_str().to_owned());
                work.clear_population = Some(CustomerRange {
                    after: std::mem::replace(&mut after, last.clone()),
                    through: last,
                });
                work.commit = true;
                writer.send(std::mem::take(&mut work)).await?;
            }
        }
        models.finish()?;
        work.clear_population = Some(CustomerRange {
            after,
            through: None,
        });
        work.population_as_of = Some(as_of.timestamp_micros());
        work.commit = true;
        writer.send(work).await?;
        Ok::<_, RunnerError>(())
    }
    .await;
    // On failure the writer rolls back the open transaction when it stops.
    let written = writer.finish().await;
    outcome?;
    written?;
    tracing::info!(
        customers,
        %as_of,
        first_pass_secs = observed.as_secs_f64(),
        fit_secs = (fitted - observed).as_secs_f64(),
        second_pass_secs = (started.elapsed() - fitted).as_secs_f64(),
        "population refitted"
    );
    Ok(())
}

/// The tables whose rows differ between two sets of a customer's current
/// rows.
fn changed_tables(before: &[Row], after: &[Row]) -> Vec<&'static str> {
    let mut tables: Vec<&'static str> = before.iter().chain(after).map(|r| r.table).collect();
    tables.sort_unstable();
    tables.dedup();
    tables.retain(|&table| {
        let of_table = |r: &&Row| r.table == table;
        !before
            .iter()
            .filter(of_table)
            .eq(after.iter().filter(of_table))
    });
    tables
}

/// Decodes a stored state row.
pub fn decode_state_row(row: &StateRow) -> Result<(CustomerId, CustomerState), RunnerError> {
    decode_customer_state(&row.customer_id, &row.state)
}

/// Decodes a customer's stored state, naming the customer on failure.
pub fn decode_customer_state(
    customer_id: &str,
    state: &[u8],
) -> Result<(CustomerId, CustomerState), RunnerError> {
    let customer = CustomerId::parse(customer_id).map_err(|e| RunnerError::Decode {
        position: 0,
        stream: customer_id.to_owned(),
        reason: e.to_string(),
    })?;
    let state = CustomerState::decode(state).map_err(|source| RunnerError::State {
        customer: customer_id.to_owned(),
        source,
    })?;
    Ok((customer, state))
}

pub use super::rebuild::{rebuild, RebuildOptions, RebuildReport};

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
    catch_up_with(store, db, batch_events, ProjectorOptions::default()).await
}

/// [`catch_up`] with explicit options (clock, cache).
pub async fn catch_up_with(
    store: Arc<dyn EventStore>,
    db: &ReadModelDb,
    batch_events: usize,
    options: ProjectorOptions,
) -> Result<u64, RunnerError> {
    let (version, rules) = active(db).await?;
    let mut projector =
        Projector::open(store.clone(), db.clone(), &version, &rules, options).await?;
    let applied = projector.catch_up(batch_events).await?;
    if applied > 0 {
        projector.write_population().await?;
    }
    Ok(applied)
}

impl Projector {
    /// Folds and commits everything after the checkpoint up to the store's
    /// head, in batches; returns events applied.
    pub async fn catch_up(&mut self, batch_events: usize) -> Result<u64, RunnerError> {
        let batch_size = batch_events.max(1);
        let mut events = crate::store::read_all(
            self.store.clone(),
            self.checkpoint + 1,
            batch_size.min(5_000),
        )
        .chunks(batch_size);
        let mut applied = 0u64;
        while let Some(chunk) = events.next().await {
            let chunk: Vec<RecordedEvent> = chunk.into_iter().collect::<Result<_, _>>()?;
            applied += chunk.len() as u64;
            self.process(&chunk).await?;
        }
        Ok(applied)
    }
}

/// How often the live runner looks for customers whose deadline passed:
/// a silent customer's stage change or alert reaches the tables and the
/// subscriptions within this long of its instant.
pub const TICK_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Customers advanced per tick transaction at most.
pub const TICK_CUSTOMERS: usize = 10_000;

/// How often live maintenance rewrites the population tables at most
/// (slow refits are spaced further apart: see `Projector::next_refit`).
pub const POPULATION_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// What one live batch committed, for listeners (the API's subscriptions).
#[derive(Debug, Clone)]
pub struct Committed {
    /// The checkpoint now committed.
    pub checkpoint: u64,
    /// The stage transitions and alerts the batch appended (also written to
    /// the live feed with it), except those of customers refolded because
    /// of a late event (their history was regenerated, not extended).
    pub feed: Vec<FeedItem>,
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
    Follower::open(store, db, ProjectorOptions::default())
        .await?
        .run(batch_events, on_batch)
        .await
}

/// The live runner on the active version, between opening it and following
/// the store; [`follow`] in two steps, so a server can report that it is
/// ready first.
pub struct Follower {
    store: Arc<dyn EventStore>,
    projector: Projector,
}

impl Follower {
    /// Opens the active version (its states load on demand).
    pub async fn open(
        store: Arc<dyn EventStore>,
        db: &ReadModelDb,
        options: ProjectorOptions,
    ) -> Result<Self, RunnerError> {
        let (version, rules) = active(db).await?;
        let projector =
            Projector::open(store.clone(), db.clone(), &version, &rules, options).await?;
        Ok(Self { store, projector })
    }

    /// The version it maintains.
    pub fn version(&self) -> i64 {
        self.projector.version()
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
        let mut events = crate::store::subscribe_all(store, projector.checkpoint() + 1)
            .ready_chunks(batch_events.max(1));
        // Population tables (value tiers, CLV refits) cost O(customers): they
        // are rewritten at most every POPULATION_EVERY (longer when refits
        // are slow), and once more when the stream goes quiet, not after
        // every small live batch.
        let mut population_due = tokio::time::Instant::now();
        let mut population_stale = false;
        let mut next_tick = tokio::time::Instant::now();
        loop {
            let chunk = tokio::select! {
                chunk = events.next() => chunk,
                _ = tokio::time::sleep_until(next_tick) => {
                    // Customers whose deadline passed, without an event.
                    while let Some(folded) = projector.tick(TICK_CUSTOMERS).await? {
                        let committed = projector.commit_live(folded).await?;
                        population_stale = true;
                        on_batch(&committed);
                        projector.checkpoint_wal().await?;
                    }
                    next_tick = tokio::time::Instant::now() + TICK_EVERY;
                    continue;
                }
                _ = tokio::time::sleep_until(population_due), if population_stale => {
                    projector.write_population().await?;
                    population_stale = false;
                    population_due = projector.next_refit();
                    continue;
                }
            };
            let Some(chunk) = chunk else { break };
            let chunk: Vec<RecordedEvent> = chunk.into_iter().collect::<Result<_, _>>()?;
            let folded = projector.fold(&chunk).await?;
            let committed = projector.commit_live(folded).await?;
            on_batch(&committed);
            if tokio::time::Instant::now() >= population_due {
                projector.write_population().await?;
                population_stale = false;
                population_due = projector.next_refit();
            } else {
                population_stale = true;
            }
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
pub(crate) fn off_the_reactor<R>(work: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

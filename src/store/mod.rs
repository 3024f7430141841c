//! The event store: one trait, one file per backend, one contract suite.
//!
//! Every backend guarantees the same things (see [`EventStore`]); the
//! contract suite in [`contract`] is written once and run against each.

pub(crate) mod batch;
pub mod contract;
pub mod error;
pub mod esdb;
pub(crate) mod group_commit;
pub mod postgres;
mod postgres_row;
pub mod sqlite;
mod sqlite_append;
mod sqlite_checkpoint;
pub mod sqlite_raw;
pub mod subscription;

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::Serialize;

use crate::domain::{EventHash, NewEvent, RecordedEvent, StreamId};

pub use error::StoreError;

/// What the caller believes the stream's current version is.
///
/// Versions are 1-based: a stream with `n` events is at version `n`, and an
/// absent stream is at version 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ExpectedVersion {
    /// Append regardless of the current version.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must be exactly at this version.
    Exact(u64),
}

/// Events destined for one stream, with the version the writer expects.
#[derive(Debug, Clone)]
pub struct StreamWrite {
    /// Target stream.
    pub stream: StreamId,
    /// Optimistic concurrency check.
    pub expected: ExpectedVersion,
    /// Events in order; at least one.
    pub events: Vec<NewEvent>,
}

/// The result of a successful append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppendOutcome {
    /// The stream's version after the append (its last event's version).
    pub next_version: u64,
    /// Global position of the first event appended.
    pub first_position: u64,
    /// Global position of the last event appended.
    pub last_position: u64,
    /// True when every event was already stored with identical content
    /// (an idempotent retry): nothing was written.
    pub already_stored: bool,
    /// How many events this append newly stored (the rest were stored
    /// already, identically).
    pub appended: usize,
}

/// Which way to read a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Oldest first.
    Forwards,
    /// Newest first.
    Backwards,
}

/// Options for [`EventStore::read_stream`].
#[derive(Debug, Clone, Copy)]
pub struct ReadStream {
    /// Reading direction.
    pub direction: Direction,
    /// First version to return (inclusive). Forwards: defaults to 1;
    /// backwards: defaults to the last version.
    pub from_version: Option<u64>,
    /// At most this many events.
    pub limit: usize,
}

impl ReadStream {
    /// The whole stream, oldest first.
    pub fn all_forwards() -> Self {
        Self {
            direction: Direction::Forwards,
            from_version: None,
            limit: usize::MAX,
        }
    }
}

/// What a backend can promise beyond the common contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// Global positions are 1, 2, 3, … with no gaps (SQL stores). When
    /// false (EventStoreDB), positions are strictly increasing but sparse.
    pub gapless_positions: bool,
    /// An [`EventStore::append_batch`] over several streams commits all or
    /// nothing (SQL stores). When false (EventStoreDB), the batch is checked
    /// as a whole before anything is written, but written stream by stream:
    /// a failure after the first write reports which writes are stored, and
    /// re-sending the same events completes the batch idempotently.
    pub atomic_multi_stream_batches: bool,
    /// Reusing a stored event id in *another* stream is refused (SQL stores
    /// index ids globally). When false (EventStoreDB), ids are checked
    /// against the target streams only.
    pub unique_event_ids_across_streams: bool,
}

impl Capabilities {
    /// Everything promised: what the SQL stores give.
    pub const FULL: Self = Self {
        gapless_positions: true,
        atomic_multi_stream_batches: true,
        unique_event_ids_across_streams: true,
    };
}

/// Counts reported by `journey stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    /// Number of events.
    pub events: u64,
    /// Number of streams.
    pub streams: u64,
    /// Last global position (0 when empty).
    pub head_position: u64,
    /// Events per type, sorted by type name.
    pub event_types: Vec<(String, u64)>,
}

/// The head of a stream: its version and last hash (for chaining).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHead {
    /// Current version (number of events).
    pub version: u64,
    /// Hash of the last event.
    pub hash: EventHash,
}

/// An append-only, totally ordered store of customer event streams.
///
/// Guarantees every backend gives (checked by [`contract`]):
/// - an append is atomic: all of its events are stored, or none;
/// - stream versions are contiguous from 1; the expected version is checked
///   atomically with the write, and a mismatch is
///   [`StoreError::WrongExpectedVersion`];
/// - re-appending events whose ids are stored with identical content is a
///   no-op success; the same id with different content is an error;
/// - global positions strictly increase in commit order, so a reader that
///   tails the log from its last position never skips or repeats an event;
/// - each stored event carries the SHA-256 chained to its predecessor.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Short backend name (`sqlite`, `postgres`, `eventstoredb`).
    fn backend(&self) -> &'static str;

    /// What this backend promises beyond the contract.
    fn capabilities(&self) -> Capabilities;

    /// Appends to several streams in one all-or-nothing transaction, each
    /// write checked against its own expected version. Imports use this so
    /// that a bad line leaves nothing of its batch behind.
    async fn append_batch(
        &self,
        writes: Vec<StreamWrite>,
    ) -> Result<Vec<AppendOutcome>, StoreError>;

    /// Appends `events` to `stream` if its version matches `expected`.
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        let mut outcomes = self
            .append_batch(vec![StreamWrite {
                stream: stream.clone(),
                expected,
                events,
            }])
            .await?;
        Ok(outcomes.pop().expect("one write, one outcome"))
    }

    /// Reads part of one stream.
    async fn read_stream(
        &self,
        stream: &StreamId,
        options: ReadStream,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// The current head of a stream, or `None` if it does not exist.
    async fn stream_head(&self, stream: &StreamId) -> Result<Option<StreamHead>, StoreError>;

    /// The heads of several streams, in order (`None` where a stream does
    /// not exist). SQL stores answer in one query; the default asks stream
    /// by stream.
    async fn stream_heads(
        &self,
        streams: &[StreamId],
    ) -> Result<Vec<Option<StreamHead>>, StoreError> {
        let mut heads = Vec::with_capacity(streams.len());
        for stream in streams {
            heads.push(self.stream_head(stream).await?);
        }
        Ok(heads)
    }

    /// Reads up to `limit` events with position `>= from`, in position order.
    async fn read_all_page(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Sends the events with position `>= from`, at most `limit` of them,
    /// to `sink` in position order, in non-empty pages of at most `page`
    /// events, and says how far it got. It sends fewer than `limit` only at
    /// the end of the log or when the receiver has gone (it then stops
    /// without error). On an error, the pages already sent stand: the
    /// caller resumes after the last event it received.
    ///
    /// A replay calls this with a `limit` many pages long, so a backend
    /// that streams rows can serve the pages from one query as they arrive
    /// (PostgreSQL does) while memory holds only the pages in flight. The
    /// default reads page by page with [`EventStore::read_all_page`].
    async fn read_all_into(
        &self,
        from: u64,
        limit: usize,
        page: usize,
        sink: &PageSink,
    ) -> Result<PagesSent, StoreError> {
        let page = page.max(1);
        let mut sent = PagesSent::default();
        while sent.events < limit {
            let want = page.min(limit - sent.events);
            let events = self.read_all_page(sent.next_from(from), want).await?;
            let short = events.len() < want;
            if events.is_empty() || !sent.send(sink, events).await || short {
                break;
            }
        }
        Ok(sent)
    }

    /// The last committed global position (0 when empty).
    async fn head_position(&self) -> Result<u64, StoreError>;

    /// Counts of events, streams and event types.
    async fn stats(&self) -> Result<StoreStats, StoreError>;

    /// Lists stream ids in name order, starting after `after`.
    async fn list_streams(
        &self,
        after: Option<&StreamId>,
        limit: usize,
    ) -> Result<Vec<StreamId>, StoreError>;

    /// Whole customer streams in stream order, the first after `after`
    /// (from the first customer stream when `None`): about `limit` events
    /// per call, and at least one whole stream however long. Empty at the
    /// end. SQL stores read them with one range scan over the
    /// `(stream_id, version)` index per call; the default lists streams and
    /// reads them one by one.
    async fn read_customer_streams(
        &self,
        after: Option<&StreamId>,
        limit: usize,
    ) -> Result<Vec<(StreamId, Vec<RecordedEvent>)>, StoreError> {
        let mut out = Vec::new();
        let mut events = 0;
        let mut cursor = after.cloned();
        while events < limit.max(1) {
            let streams = self.list_streams(cursor.as_ref(), 100).await?;
            let Some(last) = streams.last().cloned() else {
                break;
            };
            for stream in streams {
                if stream.customer_id().is_none() {
                    continue;
                }
                let read = self
                    .read_stream(&stream, ReadStream::all_forwards())
                    .await?;
                events += read.len();
                out.push((stream, read));
                if events >= limit.max(1) {
                    return Ok(out);
                }
            }
            cursor = Some(last);
        }
        Ok(out)
    }

    /// The latest `occurred_at` of any event in a customer stream (`None`
    /// when there is none): the instant analyses default to. SQL stores
    /// answer with one query over the stream index; the default reads every
    /// customer stream.
    async fn newest_customer_occurred_at(
        &self,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
        let mut newest = None;
        for_each_customer_stream(self, |_, events| {
            newest = newest.max(events.iter().map(|e| e.occurred_at).max());
            Ok::<_, StoreError>(())
        })
        .await?;
        Ok(newest)
    }

    /// Resolves when new events may have been committed (by this process or,
    /// where the backend can tell, another). May resolve spuriously;
    /// callers re-read. Backends without notifications poll.
    async fn wait_for_append(&self, after_position: u64);
}

/// Where [`EventStore::read_all_into`] sends its pages.
pub type PageSink = tokio::sync::mpsc::Sender<Result<Vec<RecordedEvent>, StoreError>>;

/// How far [`EventStore::read_all_into`] got.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PagesSent {
    /// Events sent.
    pub events: usize,
    /// The position of the last event sent.
    pub last_position: Option<u64>,
    /// Whether the receiver had gone.
    pub receiver_gone: bool,
}

impl PagesSent {
    /// Where reading resumes: after the last event sent, else at `from`.
    pub fn next_from(&self, from: u64) -> u64 {
        self.last_position.map_or(from, |p| p + 1)
    }

    /// Sends a non-empty page; false (and `receiver_gone`) if nobody
    /// receives any more.
    pub async fn send(&mut self, sink: &PageSink, page: Vec<RecordedEvent>) -> bool {
        let (count, last) = (page.len(), page.last().map(|e| e.position));
        if sink.send(Ok(page)).await.is_err() {
            self.receiver_gone = true;
            return false;
        }
        self.events += count;
        self.last_position = last.or(self.last_position);
        true
    }
}

/// Reads all events from `from` (inclusive) as an async stream, fetching the
/// next page while the caller decodes the current one.
pub fn read_all(
    store: Arc<dyn EventStore>,
    from: u64,
    page_size: usize,
) -> BoxStream<'static, Result<RecordedEvent, StoreError>> {
    subscription::read_all(store, from, page_size)
}

/// Calls `visit` with every customer's whole stream, one stream at a time in
/// stream order (non-customer streams skipped): for analyses that fold each
/// customer once and keep only a summary, so memory follows the number of
/// customers, not the length of the log.
pub async fn for_each_customer_stream<E, S>(
    store: &S,
    mut visit: impl FnMut(crate::domain::CustomerId, Vec<RecordedEvent>) -> Result<(), E>,
) -> Result<(), E>
where
    E: From<StoreError>,
    S: EventStore + ?Sized,
{
    const PAGE_EVENTS: usize = 5_000;
    let mut after: Option<StreamId> = None;
    loop {
        let streams = store
            .read_customer_streams(after.as_ref(), PAGE_EVENTS)
            .await?;
        let Some((last, _)) = streams.last() else {
            return Ok(());
        };
        after = Some(last.clone());
        for (stream, events) in streams {
            if let Some(customer) = stream.customer_id() {
                visit(customer, events)?;
            }
        }
    }
}

/// The range scan behind [`EventStore::read_customer_streams`] on the SQL
/// stores, with its lower bound: `$1` the bound, `$2` the end of customer
/// streams, `$3` the page size (SQLite and PostgreSQL both take `$n`).
pub(crate) fn customer_streams_scan<'a>(
    columns: &str,
    after: Option<&'a StreamId>,
) -> (String, &'a str) {
    use crate::domain::customer::CUSTOMER_STREAM_PREFIX;
    let (lower, op) = match after {
        Some(stream) => (stream.as_str(), ">"),
        None => (CUSTOMER_STREAM_PREFIX, ">="),
    };
    let sql = format!(
        "SELECT {columns} FROM events WHERE stream_id {op} $1 AND stream_id < $2 \
         ORDER BY stream_id, version LIMIT $3"
    );
    (sql, lower)
}

/// [`EventStore::newest_customer_occurred_at`] on the SQL stores: `$1` and
/// `$2` the customer streams' range.
pub(crate) const NEWEST_CUSTOMER_OCCURRED_AT_SQL: &str =
    "SELECT MAX(occurred_at) FROM events WHERE stream_id >= $1 AND stream_id < $2";

/// Groups events read in `(stream_id, version)` order into whole streams
/// for [`EventStore::read_customer_streams`]: when the page was full
/// (`limit` rows), its last stream may continue past it and is dropped,
/// unless it is the only one, which `rest_of` then reads whole.
pub(crate) async fn whole_streams<F, Fut>(
    rows: Vec<RecordedEvent>,
    limit: usize,
    rest_of: F,
) -> Result<Vec<(StreamId, Vec<RecordedEvent>)>, StoreError>
where
    F: FnOnce(StreamId) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<RecordedEvent>, StoreError>>,
{
    let full = rows.len() >= limit;
    let mut streams: Vec<(StreamId, Vec<RecordedEvent>)> = Vec::new();
    for event in rows {
        match streams.last_mut() {
            Some((stream, events)) if *stream == event.stream_id => events.push(event),
            _ => streams.push((event.stream_id.clone(), vec![event])),
        }
    }
    if full {
        if streams.len() > 1 {
            streams.pop();
        } else if let Some((stream, _)) = streams.pop() {
            let events = rest_of(stream.clone()).await?;
            streams.push((stream, events));
        }
    }
    Ok(streams)
}

/// Catch-up subscription: every event from `from` (inclusive), then live
/// events as they commit — never skipping or repeating one.
pub fn subscribe_all(
    store: Arc<dyn EventStore>,
    from: u64,
) -> BoxStream<'static, Result<RecordedEvent, StoreError>> {
    subscription::subscribe_all(store, from)
}

/// Pool options for every sqlx pool of the ledger: no idle timeout and no
/// maximum lifetime, so sqlx starts no maintenance task.
///
/// That task sweeps `0..num_idle()` idle connections; in sqlx 0.8.6 a race
/// between returning and taking a connection can wrap `num_idle` below
/// zero, and the sweep then spins for good. Seen here as `journey
/// customer` printing its answer and never exiting, a runtime worker at
/// 85 % CPU (4 runs in ~26,000; sqlx issue #3645, fixed upstream after
/// 0.8.6). Our pools are small and long-lived, so reaping idle connections
/// buys nothing.
pub fn pool_options<DB: sqlx::Database>() -> sqlx::pool::PoolOptions<DB> {
    sqlx::pool::PoolOptions::new()
        .idle_timeout(None)
        .max_lifetime(None)
        .min_connections(0)
}

/// The file a `sqlite://` URL names (`None` for other URLs and for
/// in-memory databases).
pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    if !url.starts_with("sqlite:") {
        return None;
    }
    let options = sqlite::connect_options(url).ok()?;
    let file = options.get_filename();
    (file.as_os_str() != ":memory:" && !file.as_os_str().is_empty()).then(|| file.to_path_buf())
}

/// Opens the store a URL names, migrating it on first use.
///
/// - `sqlite://path/to/journey.db` (created if missing) — embedded default;
/// - `postgres://user@host:port/db` — production;
/// - `esdb://host:2113?tls=false` — EventStoreDB/KurrentDB (also
///   `esdb+discover://`, `kurrentdb://`, `kurrentdb+discover://`; add
///   `&namespace=NAME` to share a server between ledgers).
pub async fn open(url: &str) -> Result<Arc<dyn EventStore>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PostgresStore::connect(url).await?))
    } else if esdb::mapping::is_esdb_url(url) {
        Ok(Arc::new(esdb::EsdbStore::connect(url).await?))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_owned()))
    }
}

/// Opens the store a URL names for a command that only reads. On SQLite
/// the file must exist and is never written (see
/// [`sqlite::SqliteStore::open_read_only`]): a mistyped path is "no store
/// at …", not a new empty ledger, and a file this process may not write is
/// read as it is. Other backends open as [`open`] does.
pub async fn open_read_only(url: &str) -> Result<Arc<dyn EventStore>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open_read_only(url).await?))
    } else {
        open(url).await
    }
}

#[cfg(test)]
mod pool_tests {
    use super::*;

    #[test]
    fn pools_run_no_maintenance_task() {
        let options = pool_options::<sqlx::Sqlite>();
        assert_eq!(options.get_idle_timeout(), None);
        assert_eq!(options.get_max_lifetime(), None);
        assert_eq!(options.get_min_connections(), 0);
    }
}

//! The production backend: PostgreSQL.
//!
//! Appenders serialize on the single `ledger_head` row lock until they
//! commit, so positions are gapless and become visible in position order —
//! unlike a sequence, which hands out numbers that can commit out of order
//! and make tailing readers skip events. The lock is held for the write
//! alone: a group is planned (heads read, requests checked, hashes chained)
//! without it, and written by one call of `journey_append_group`
//! (`schema/postgres/0070_append_group.sql`), which takes the lock, checks
//! the planned heads still hold, numbers the rows and commits. Commits are
//! announced with `NOTIFY` so subscribers in other processes wake at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::postgres::{PgListener, PgPool};
use sqlx::Row;
use tokio::sync::watch;

use super::batch::{self, RequestResult};
use super::group_commit::{CommitGroup, GroupCommitter};
use super::postgres_row::decode_row;
use super::{
    AppendOutcome, Capabilities, Direction, EventStore, PageSink, PagesSent, ReadStream,
    StoreError, StoreStats, StreamHead, StreamWrite,
};
use crate::domain::{EventHash, RecordedEvent, StreamId};

/// The embedded migrations under `schema/postgres/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("schema/postgres");

/// The `NOTIFY` channel announcing new positions.
const CHANNEL: &str = "journey_events";

/// The event columns, in the order [`decode_row`] reads them.
pub(super) const COLUMNS: &str = "position, event_id, stream_id, version, event_type, \
     schema_version, occurred_at, recorded_at, metadata, payload, hash";

/// Fallback re-check interval should a notification be lost.
const POLL: Duration = Duration::from_secs(1);

/// An event store in a PostgreSQL database.
pub struct PostgresStore {
    pool: PgPool,
    head: Arc<watch::Sender<u64>>,
    listener: tokio::task::JoinHandle<()>,
    committer: GroupCommitter,
}

/// The write side the group committer drives.
struct Appender {
    pool: PgPool,
    head: Arc<watch::Sender<u64>>,
    /// The committer's own connection, opened on first use and dropped
    /// after any failure. The committer writes one group at a time, so one
    /// connection serves it; taking one from the pool per group cost a
    /// liveness round trip (the pool pings a connection before handing it
    /// out), about 0.1 ms of every group's wait at 16 writers. The group's
    /// first statement, the heads read, checks it instead (see
    /// [`Appender::commit_group`]).
    connection: tokio::sync::Mutex<Option<sqlx::PgConnection>>,
}

/// How long the pool waits for a connection, and the committer to open
/// its own.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PostgresStore {
    /// Connects to the database a `postgres://` URL names and migrates it.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = crate::store::pool_options::<sqlx::Postgres>()
            .max_connections(8)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect(url)
            .await?;
        Self::from_pool(pool).await
    }

    /// Uses an existing pool (tests, or read models sharing the database).
    pub async fn from_pool(pool: PgPool) -> Result<Self, StoreError> {
        MIGRATOR.run(&pool).await?;
        let head = Arc::new(watch::channel(0u64).0);
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(CHANNEL).await?;
        let notify = head.clone();
        let listener = tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(n) => {
                        if let Ok(position) = n.payload().parse::<u64>() {
                            batch::advance_head(&notify, position);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "event notification listener failed; polling");
                        tokio::time::sleep(POLL).await;
                    }
                }
            }
        });
        let committer = GroupCommitter::start(Arc::new(Appender {
            pool: pool.clone(),
            head: head.clone(),
            connection: tokio::sync::Mutex::new(None),
        }));
        let store = Self {
            pool,
            head,
            listener,
            committer,
        };
        let last = store.head_position().await?;
        store.head.send_replace(last);
        Ok(store)
    }

    /// The connection pool, for read models that live in the same database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Up to `limit` events from position `from`, in position order.
fn replay_query(
    from: u64,
    limit: usize,
) -> sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!("SELECT {COLUMNS} FROM events WHERE position >= $1 ORDER BY position LIMIT $2")
    });
    sqlx::query(SQL.as_str())
        .bind(i64::try_from(from).unwrap_or(i64::MAX))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
}

async fn stream_heads(
    conn: &mut sqlx::PgConnection,
    streams: &[StreamId],
) -> Result<HashMap<StreamId, StreamHead>, StoreError> {
    let names: Vec<&str> = streams.iter().map(|s| s.as_str()).collect();
    // Prepared once, planned afresh on every call inside the function
    // (schema `0090_stream_heads.sql` says why).
    let rows = sqlx::query("SELECT stream_id, version, head_hash FROM journey_stream_heads($1)")
        .bind(&names)
        .fetch_all(&mut *conn)
        .await?;
    let mut heads = HashMap::with_capacity(rows.len());
    for row in rows {
        let stream: String = row.try_get(0)?;
        let version: i64 = row.try_get(1)?;
        let hash: &[u8] = row.try_get(2)?;
        let hash = EventHash::from_slice(hash).map_err(|reason| StoreError::Corrupt {
            position: 0,
            reason: format!("head of {stream}: {reason}"),
        })?;
        heads.insert(
            StreamId::from_trusted(stream),
            StreamHead {
                version: version as u64,
                hash,
            },
        );
    }
    Ok(heads)
}

/// Why a group could not be written as planned.
enum Replan {
    /// A stream it grows moved after its heads were read.
    Moved,
    /// One of its event ids is stored already (a retry in disguise).
    Stored,
}

/// Writes a planned group in one call of `journey_append_group` (schema
/// `0070_append_group.sql`), which takes the global position lock, checks
/// the plan's stream heads, numbers the rows after the last committed
/// position and announces the new head. Returns the position the rows were
/// numbered after, or why the plan no longer holds. `heads` are the stream
/// heads the plan started from.
async fn append_group(
    conn: &mut sqlx::PgConnection,
    plan: &batch::GroupPlan<'_>,
    heads: &HashMap<StreamId, StreamHead>,
    recorded_at: DateTime<Utc>,
) -> Result<Result<u64, Replan>, StoreError> {
    let n = plan.rows.len();
    let mut event_ids = Vec::with_capacity(n);
    let mut stream_ids = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut schemas = Vec::with_capacity(n);
    let mut occurred = Vec::with_capacity(n);
    let mut metadata = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    let mut hashes = Vec::with_capacity(n);
    for row in &plan.rows {
        event_ids.push(row.event.event_id());
        stream_ids.push(row.stream.as_str());
        versions.push(row.version as i64);
        types.push(row.event.event_type());
        schemas.push(row.event.schema_version() as i32);
        occurred.push(row.event.occurred_at());
        metadata.push(row.event.metadata_json());
        payloads.push(row.event.payload_json());
        hashes.push(row.hash.0.to_vec());
    }
    let head_streams: Vec<&str> = plan.heads.iter().map(|(s, _)| s.as_str()).collect();
    let prior_versions: Vec<i64> = plan
        .heads
        .iter()
        .map(|(s, _)| heads.get(s).map_or(0, |h| h.version as i64))
        .collect();
    let head_versions: Vec<i64> = plan.heads.iter().map(|(_, h)| h.version as i64).collect();
    let head_hashes: Vec<Vec<u8>> = plan.heads.iter().map(|(_, h)| h.hash.0.to_vec()).collect();
    let written = sqlx::query_scalar::<_, i64>(
        "SELECT journey_append_group($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
         $14, $15)",
    )
    .bind(&event_ids)
    .bind(&stream_ids)
    .bind(&versions)
    .bind(&types)
    .bind(&schemas)
    .bind(&occurred)
    .bind(&metadata)
    .bind(&payloads)
    .bind(&hashes)
    .bind(recorded_at)
    .bind(&head_streams)
    .bind(&prior_versions)
    .bind(&head_versions)
    .bind(&head_hashes)
    .bind(CHANNEL)
    .fetch_one(&mut *conn)
    .await;
    match written {
        Ok(base) => Ok(Ok(base as u64)),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("JL409") => {
            Ok(Err(Replan::Moved))
        }
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("JL001") => {
            Ok(Err(Replan::Stored))
        }
        Err(e) => Err(e.into()),
    }
}

/// Moves the positions of a plan made as if the log ended at `planned`
/// to where the server numbered its rows, after `base`.
fn renumber(results: &mut [RequestResult], planned: u64, base: u64) {
    if base == planned {
        return;
    }
    for outcome in results.iter_mut().flatten().flatten() {
        outcome.first_position = outcome.first_position - planned + base;
        outcome.last_position = outcome.last_position - planned + base;
    }
}

impl Appender {
    /// Opens the committer's connection with the pool's settings.
    async fn connect(&self) -> Result<sqlx::PgConnection, StoreError> {
        let options = self.pool.connect_options();
        tokio::time::timeout(CONNECT_TIMEOUT, sqlx::ConnectOptions::connect(&*options))
            .await
            .map_err(|_| StoreError::Backend {
                backend: "postgres",
                message: format!(
                    "no connection to the server within {} s",
                    CONNECT_TIMEOUT.as_secs()
                ),
            })?
            .map_err(StoreError::from)
    }

    /// The common case, on the heads just read and with no lock held
    /// between the two round trips: plan as if no id were stored, write.
    /// `None` when a request was refused (a refusal may be a retry in
    /// disguise, decided with the stored events in hand) or the plan no
    /// longer holds.
    async fn commit_unlocked(
        &self,
        conn: &mut sqlx::PgConnection,
        group: &[Vec<StreamWrite>],
        heads: &HashMap<StreamId, StreamHead>,
    ) -> Result<Option<Vec<RequestResult>>, StoreError> {
        let recorded_at = batch::now_micros();
        // Planned as if the log ended at 0: with no stored events in hand,
        // every position in the results is one of the group's own rows.
        let mut plan = batch::plan_group(group, &HashMap::new(), heads, 0, recorded_at);
        if !plan.all_accepted() {
            return Ok(None);
        }
        let Some(last) = plan.last_position() else {
            return Ok(Some(plan.results));
        };

        match append_group(conn, &plan, heads, recorded_at).await? {
            Ok(base) => {
                renumber(&mut plan.results, 0, base);
                batch::advance_head(&self.head, base + last);
                Ok(Some(plan.results))
            }
            Err(Replan::Moved | Replan::Stored) => Ok(None),
        }
    }

    /// The general case, under the global lock from the start: heads and
    /// stored events are read under it, so the plan is final.
    async fn commit_locked(
        &self,
        conn: &mut sqlx::PgConnection,
        group: &[Vec<StreamWrite>],
        streams: &[StreamId],
    ) -> Result<Vec<RequestResult>, StoreError> {
        let mut tx = sqlx::Connection::begin(conn).await?;
        let head: i64 = sqlx::query_scalar("SELECT position FROM ledger_head WHERE id FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
        let head = head as u64;
        // Read by statements of their own after the lock: under READ
        // COMMITTED each statement reads a fresh snapshot, so they see
        // the previous holder's commit.
        let heads = stream_heads(&mut tx, streams).await?;
        let ids = batch::event_ids(group);
        // Planned afresh each time, as `stream_heads` is.
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM events WHERE event_id = ANY($1)"
        ))
        .bind(&ids)
        .persistent(false)
        .fetch_all(&mut *tx)
        .await?;
        let mut existing = HashMap::with_capacity(rows.len());
        for row in &rows {
            let event = decode_row(row)?;
            existing.insert(event.event_id, event);
        }
        let recorded_at = batch::now_micros();
        let mut plan = batch::plan_group(group, &existing, &heads, head, recorded_at);
        let Some(last) = plan.last_position() else {
            tx.rollback().await?;
            return Ok(plan.results);
        };
        match append_group(&mut tx, &plan, &heads, recorded_at).await? {
            Ok(base) => {
                tx.commit().await?;
                renumber(&mut plan.results, head, base);
                batch::advance_head(&self.head, last - head + base);
                Ok(plan.results)
            }
            Err(_) => Err(StoreError::Backend {
                backend: "postgres",
                message: "the log changed while this append held the global position lock \
                          (is another program writing the events table directly?)"
                    .to_owned(),
            }),
        }
    }
}

#[async_trait]
impl CommitGroup for Appender {
    /// Two round trips in the common case (heads, then one call that
    /// writes and commits); should the plan not hold (a retry, a refused
    /// request, a stream another process grew meanwhile), the group is
    /// planned again under the global lock.
    async fn commit_group(
        &self,
        group: &[Vec<StreamWrite>],
    ) -> Result<Vec<RequestResult>, StoreError> {
        let streams = batch::streams_of(group.iter().flatten());
        let mut slot = self.connection.lock().await;
        // The heads read is the group's first statement and writes nothing:
        // should it fail on a connection that served before (the server or
        // the network closed it since: a restart, an idle timeout), it is
        // read again on a new one instead of failing the group. A
        // connection lost after it fails the group, as a pooled one would.
        let mut heads = None;
        if let Some(open) = slot.as_mut() {
            match stream_heads(open, &streams).await {
                Ok(read) => heads = Some(read),
                Err(e) => {
                    tracing::debug!(error = %e, "committer connection failed; reconnecting");
                    *slot = None;
                }
            }
        }
        let conn = match &mut *slot {
            Some(open) => open,
            empty => empty.insert(self.connect().await?),
        };
        let committed = async {
            let heads = match heads {
                Some(heads) => heads,
                None => stream_heads(conn, &streams).await?,
            };
            match self.commit_unlocked(conn, group, &heads).await? {
                Some(results) => Ok(results),
                None => self.commit_locked(conn, group, &streams).await,
            }
        }
        .await;
        if committed.is_err() {
            // Whatever failed, a fresh connection serves the next group.
            *slot = None;
        }
        committed
    }
}

#[async_trait]
impl EventStore for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::FULL
    }

    async fn append_batch(
        &self,
        writes: Vec<StreamWrite>,
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        batch::check_writes(&writes)?;
        self.committer.append(writes).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        options: ReadStream,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let limit = i64::try_from(options.limit).unwrap_or(i64::MAX);
        let sql = match options.direction {
            Direction::Forwards => format!(
                "SELECT {COLUMNS} FROM events WHERE stream_id = $1 AND version >= $2 \
                 ORDER BY version ASC LIMIT $3"
            ),
            Direction::Backwards => format!(
                "SELECT {COLUMNS} FROM events WHERE stream_id = $1 AND version <= $2 \
                 ORDER BY version DESC LIMIT $3"
            ),
        };
        let from = match (options.direction, options.from_version) {
            (_, Some(v)) => i64::try_from(v).unwrap_or(i64::MAX),
            (Direction::Forwards, None) => 1,
            (Direction::Backwards, None) => i64::MAX,
        };
        let rows = sqlx::query(&sql)
            .bind(stream.as_str())
            .bind(from)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode_row).collect()
    }

    async fn stream_heads(
        &self,
        streams: &[StreamId],
    ) -> Result<Vec<Option<StreamHead>>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let found = stream_heads(&mut conn, streams).await?;
        Ok(streams.iter().map(|s| found.get(s).copied()).collect())
    }

    async fn stream_head(&self, stream: &StreamId) -> Result<Option<StreamHead>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Ok(stream_heads(&mut conn, std::slice::from_ref(stream))
            .await?
            .remove(stream))
    }

    async fn read_all_page(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut rows = replay_query(from, limit).fetch(&self.pool);
        // Decode while streaming: each row is dropped as soon as it is
        // converted, instead of holding a whole page of driver rows.
        let mut events = Vec::with_capacity(limit.min(100_000));
        while let Some(row) = rows.try_next().await? {
            events.push(decode_row(&row)?);
        }
        Ok(events)
    }

    async fn read_all_into(
        &self,
        from: u64,
        limit: usize,
        page: usize,
        sink: &PageSink,
    ) -> Result<PagesSent, StoreError> {
        let page = page.max(1);
        // Room for a page, but not reserved ahead for huge pages or limits.
        let room = |sent: &PagesSent| page.min(limit - sent.events).min(8_192);
        let mut rows = replay_query(from, limit).fetch(&self.pool);
        let mut sent = PagesSent::default();
        let mut events = Vec::with_capacity(room(&sent));
        while let Some(row) = rows.try_next().await? {
            events.push(decode_row(&row)?);
            if events.len() == page {
                let full = std::mem::take(&mut events);
                if !sent.send(sink, full).await {
                    return Ok(sent);
                }
                events.reserve(room(&sent));
            }
        }
        if !events.is_empty() {
            // A receiver gone now is noted in `sent`; nothing is left to stop.
            let _ = sent.send(sink, events).await;
        }
        Ok(sent)
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        let head: i64 = sqlx::query_scalar("SELECT position FROM ledger_head WHERE id")
            .fetch_one(&self.pool)
            .await?;
        Ok(head as u64)
    }

    async fn read_customer_streams(
        &self,
        after: Option<&StreamId>,
        limit: usize,
    ) -> Result<Vec<(StreamId, Vec<RecordedEvent>)>, StoreError> {
        let limit = limit.max(1);
        let (sql, lower) = super::customer_streams_scan(COLUMNS, after);
        let rows = sqlx::query(&sql)
            .bind(lower)
            .bind(crate::domain::customer::CUSTOMER_STREAMS_END)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        let rows = rows.iter().map(decode_row).collect::<Result<Vec<_>, _>>()?;
        super::whole_streams(rows, limit, |stream| async move {
            self.read_stream(&stream, ReadStream::all_forwards()).await
        })
        .await
    }

    async fn newest_customer_occurred_at(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(sqlx::query_scalar(super::NEWEST_CUSTOMER_OCCURRED_AT_SQL)
            .bind(crate::domain::customer::CUSTOMER_STREAM_PREFIX)
            .bind(crate::domain::customer::CUSTOMER_STREAMS_END)
            .fetch_one(&self.pool)
            .await?)
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let streams: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM streams")
            .fetch_one(&self.pool)
            .await?;
        let types: Vec<(String, i64)> = sqlx::query_as(
            "SELECT event_type, COUNT(*) FROM events GROUP BY event_type ORDER BY event_type",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(StoreStats {
            events: types.iter().map(|(_, n)| *n as u64).sum(),
            streams: streams as u64,
            head_position: self.head_position().await?,
            event_types: types.into_iter().map(|(t, n)| (t, n as u64)).collect(),
        })
    }

    async fn list_streams(
        &self,
        after: Option<&StreamId>,
        limit: usize,
    ) -> Result<Vec<StreamId>, StoreError> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT stream_id FROM streams WHERE stream_id > $1 ORDER BY stream_id LIMIT $2",
        )
        .bind(after.map(|s| s.as_str()).unwrap_or(""))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        Ok(names.into_iter().map(StreamId::from_trusted).collect())
    }

    async fn wait_for_append(&self, after_position: u64) {
        let mut rx = self.head.subscribe();
        tokio::select! {
            _ = rx.wait_for(|h| *h > after_position) => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

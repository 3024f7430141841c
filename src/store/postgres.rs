//! The production backend: PostgreSQL.
//!
//! Appenders serialize on the single `ledger_head` row lock for the length of
//! their transaction, so positions are gapless and become visible in
//! position order — unlike a sequence, which hands out numbers that can
//! commit out of order and make tailing readers skip events. Rows are
//! written with one `UNNEST` insert per batch; commits are announced with
//! `NOTIFY` so subscribers in other processes wake at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::postgres::{PgListener, PgPool, PgRow};
use sqlx::Row;
use sqlx::{Postgres, Transaction};
use tokio::sync::watch;

use super::batch::{self, RequestResult};
use super::group_commit::{CommitGroup, GroupCommitter};
use super::{
    AppendOutcome, Capabilities, Direction, EventStore, ReadStream, StoreError, StoreStats,
    StreamHead, StreamWrite,
};
use crate::domain::{EventHash, RecordedEvent, StreamId};

/// The embedded migrations under `schema/postgres/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("schema/postgres");

/// The `NOTIFY` channel announcing new positions.
const CHANNEL: &str = "journey_events";

const COLUMNS: &str = "position, event_id, stream_id, version, event_type, schema_version, \
                       occurred_at, recorded_at, metadata, payload, hash";

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
    /// A transaction already holding the `ledger_head` lock, with the
    /// position read under it ([`CommitGroup::open_group`]).
    opened: std::sync::Mutex<Option<(Transaction<'static, Postgres>, i64)>>,
}

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
            .acquire_timeout(Duration::from_secs(30))
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
            opened: std::sync::Mutex::new(None),
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

fn decode_row(row: &PgRow) -> Result<RecordedEvent, StoreError> {
    let position: i64 = row.try_get(0)?;
    let position = position as u64;
    let stream: String = row.try_get(2)?;
    let version: i64 = row.try_get(3)?;
    let schema_version: i32 = row.try_get(5)?;
    let hash: &[u8] = row.try_get(10)?;
    Ok(RecordedEvent {
        event_id: row.try_get(1)?,
        stream_id: StreamId::from_trusted(stream),
        version: version as u64,
        position,
        event_type: row.try_get(4)?,
        schema_version: schema_version as u32,
        occurred_at: row.try_get::<DateTime<Utc>, _>(6)?,
        recorded_at: row.try_get::<DateTime<Utc>, _>(7)?,
        metadata_json: row.try_get(8)?,
        payload_json: row.try_get(9)?,
        hash: EventHash::from_slice(hash)
            .map_err(|reason| StoreError::Corrupt { position, reason })?,
    })
}

async fn stream_heads(
    conn: &mut sqlx::PgConnection,
    streams: &[StreamId],
) -> Result<HashMap<StreamId, StreamHead>, StoreError> {
    let names: Vec<&str> = streams.iter().map(|s| s.as_str()).collect();
    // Not a prepared statement: a cached generic plan made while `streams`
    // was small scans the whole table on every batch once it is large
    // (seen: 2.8k events/s at 290k streams, one full scan per batch, where
    // statistics never refresh); a fresh plan per batch sees the real size.
    let rows =
        sqlx::query("SELECT stream_id, version, head_hash FROM streams WHERE stream_id = ANY($1)")
            .bind(&names)
            .persistent(false)
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

/// Writes a planned group in one statement: the events (one `UNNEST`
/// insert), the stream heads, the global head and the notification. With
/// `skip_stored_ids`, events whose id is already stored are skipped instead
/// of failing. Returns how many events were inserted.
async fn write_group(
    conn: &mut sqlx::PgConnection,
    plan: &batch::GroupPlan<'_>,
    last: u64,
    recorded_at: DateTime<Utc>,
    skip_stored_ids: bool,
) -> Result<u64, StoreError> {
    let n = plan.rows.len();
    let mut positions = Vec::with_capacity(n);
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
        positions.push(row.position as i64);
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
    let head_versions: Vec<i64> = plan.heads.iter().map(|(_, h)| h.version as i64).collect();
    let head_hashes: Vec<Vec<u8>> = plan.heads.iter().map(|(_, h)| h.hash.0.to_vec()).collect();
    let on_conflict = if skip_stored_ids {
        " ON CONFLICT (event_id) DO NOTHING"
    } else {
        ""
    };
    // One round trip while the position lock is held; `pg_notify` is
    // delivered at commit only, so a group rolled back announces nothing.
    let inserted: i64 = sqlx::query_scalar(&format!(
        "WITH inserted AS (\
           INSERT INTO events ({COLUMNS}) \
           SELECT p, e, s, v, t, sv, o, $11, m, pl, h FROM UNNEST(\
             $1::bigint[], $2::uuid[], $3::text[], $4::bigint[], $5::text[], $6::int[], \
             $7::timestamptz[], $8::text[], $9::text[], $10::bytea[]) \
           AS u(p, e, s, v, t, sv, o, m, pl, h){on_conflict} RETURNING 1), \
         heads AS (\
           INSERT INTO streams (stream_id, version, head_hash) \
           SELECT * FROM UNNEST($12::text[], $13::bigint[], $14::bytea[]) \
           ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, \
           head_hash = excluded.head_hash), \
         moved AS (UPDATE ledger_head SET position = $15 WHERE id), \
         announced AS (SELECT pg_notify($16, $17)) \
         SELECT (SELECT count(*) FROM inserted) FROM announced"
    ))
    .bind(&positions)
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
    .bind(&head_versions)
    .bind(&head_hashes)
    .bind(last as i64)
    .bind(CHANNEL)
    .bind(last.to_string())
    .fetch_one(&mut *conn)
    .await?;
    Ok(inserted as u64)
}

impl Appender {
    /// Begins a transaction and takes the global position lock, returning
    /// the position under it. The heads are read by a statement of their
    /// own after this: under READ COMMITTED each statement reads a fresh
    /// snapshot, so they are read after the previous holder of the lock
    /// has committed (one statement doing both would read them as of
    /// before the wait).
    async fn begin_locked(&self) -> Result<(Transaction<'static, Postgres>, i64), StoreError> {
        let mut tx = self.pool.begin().await?;
        let head: i64 = sqlx::query_scalar("SELECT position FROM ledger_head WHERE id FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
        Ok((tx, head))
    }

    /// Plans and writes a group in a transaction of its own; with
    /// `assume_new`, as if none of its ids were stored (the common case,
    /// no lookup): `None` when that was wrong, the transaction then
    /// rolled back.
    async fn try_commit(
        &self,
        group: &[Vec<StreamWrite>],
        assume_new: bool,
    ) -> Result<Option<Vec<RequestResult>>, StoreError> {
        let streams = batch::streams_of(group.iter().flatten());
        let opened = self.opened.lock().expect("not poisoned").take();
        let (mut tx, head) = match opened {
            Some(opened) => opened,
            None => self.begin_locked().await?,
        };
        let head = head as u64;
        let heads = stream_heads(&mut tx, &streams).await?;
        let recorded_at = batch::now_micros();
        let mut existing = HashMap::new();
        if !assume_new {
            let ids = batch::event_ids(group);
            // Planned afresh each time, as `stream_heads` is.
            let rows = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM events WHERE event_id = ANY($1)"
            ))
            .bind(&ids)
            .persistent(false)
            .fetch_all(&mut *tx)
            .await?;
            for row in &rows {
                let event = decode_row(row)?;
                existing.insert(event.event_id, event);
            }
        }
        let plan = batch::plan_group(group, &existing, &heads, head, recorded_at);
        if assume_new && !plan.all_accepted() {
            // A refusal may be a retry in disguise: decide with the stored
            // events in hand.
            tx.rollback().await?;
            return Ok(None);
        }
        let Some(last) = plan.last_position() else {
            tx.rollback().await?;
            return Ok(Some(plan.results));
        };
        let inserted = write_group(&mut tx, &plan, last, recorded_at, assume_new).await?;
        if inserted != plan.rows.len() as u64 {
            tx.rollback().await?;
            return Ok(None);
        }
        tx.commit().await?;
        batch::advance_head(&self.head, last);
        Ok(Some(plan.results))
    }
}

#[async_trait]
impl CommitGroup for Appender {
    /// Five round trips: begin, lock (both made by `open_group` while the
    /// group forms), heads, write, commit. When some id turns out to be
    /// stored already (a retry), the group is planned again in a new
    /// transaction with the stored events in hand.
    async fn commit_group(
        &self,
        group: &[Vec<StreamWrite>],
    ) -> Result<Vec<RequestResult>, StoreError> {
        if let Some(results) = self.try_commit(group, true).await? {
            return Ok(results);
        }
        Ok(self
            .try_commit(group, false)
            .await?
            .expect("with the stored events in hand the plan is final"))
    }

    async fn open_group(&self) {
        match self.begin_locked().await {
            Ok(opened) => *self.opened.lock().expect("not poisoned") = Some(opened),
            Err(e) => tracing::debug!(error = %e, "opening a group's transaction failed"),
        }
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
        let sql =
            format!("SELECT {COLUMNS} FROM events WHERE position >= $1 ORDER BY position LIMIT $2");
        let mut rows = sqlx::query(&sql)
            .bind(i64::try_from(from).unwrap_or(i64::MAX))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch(&self.pool);
        // Decode while streaming: each row is dropped as soon as it is
        // converted, instead of holding a whole page of driver rows.
        let mut events = Vec::with_capacity(limit.min(100_000));
        while let Some(row) = rows.try_next().await? {
            events.push(decode_row(&row)?);
        }
        Ok(events)
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

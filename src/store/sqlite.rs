//! The embedded default: one SQLite file in WAL mode.
//!
//! Writes go through a single connection with `BEGIN IMMEDIATE`, so SQLite's
//! one-writer rule gives commit order = position order; reads use a separate
//! pool and never block the writer.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};
use tokio::sync::watch;
use uuid::Uuid;

use super::batch;
use super::group_commit::{Flusher, GroupCommitter};
use super::sqlite_append::Appender;
use super::sqlite_checkpoint::Checkpoints;
use super::sqlite_raw::RawConnection;
use super::{
    AppendOutcome, Capabilities, Direction, EventStore, ReadStream, StoreError, StoreStats,
    StreamHead, StreamWrite,
};
use crate::domain::{EventHash, RecordedEvent, StreamId};

/// The embedded migrations under `schema/sqlite/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("schema/sqlite");

/// Columns of `events` in the order [`decode_row`] reads them.
pub(crate) const COLUMNS: &str =
    "position, event_id, stream_id, version, event_type, schema_version, \
                       occurred_at, recorded_at, metadata, payload, hash";

/// Binds per `IN (...)` lookup.
const LOOKUP_CHUNK: usize = 900;

/// How often a waiting subscriber re-checks the file for appends made by
/// other processes (appends in this process wake it at once).
const CROSS_PROCESS_POLL: Duration = Duration::from_millis(200);

/// Connection options for a `sqlite://` URL, which may carry
/// `synchronous=full|normal|extra|off` for the event log (default `full`:
/// an acknowledged append survives power loss, each commit waiting for
/// its log write to reach the disk, which group commit shares among
/// concurrent appends). `normal` skips that wait in WAL mode: still no
/// corruption, but the last commits before a power loss or OS crash can
/// disappear although they were acknowledged (a process crash loses
/// nothing). Other query parameters are sqlx's.
pub fn connect_options(url: &str) -> Result<SqliteConnectOptions, sqlx::Error> {
    let (url, synchronous) = split_synchronous(url)?;
    Ok(SqliteConnectOptions::from_str(&url)?.synchronous(synchronous))
}

/// The URL without its `synchronous` parameter, and that parameter
/// (`full` when absent).
fn split_synchronous(url: &str) -> Result<(String, SqliteSynchronous), sqlx::Error> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut synchronous = SqliteSynchronous::Full;
    let mut rest = Vec::new();
    for param in query.split('&').filter(|p| !p.is_empty()) {
        match param.split_once('=') {
            Some(("synchronous", value)) => {
                synchronous = SqliteSynchronous::from_str(value).map_err(|_| {
                    sqlx::Error::Configuration(
                        format!(
                            "synchronous={value:?} in the store URL: use full (the default), \
                             normal, extra or off"
                        )
                        .into(),
                    )
                })?;
            }
            _ => rest.push(param),
        }
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, synchronous))
}

/// Options for opening the file read-write, creating it if missing, in
/// WAL mode (readers never wait for the writer).
pub fn writable_options(url: &str) -> Result<SqliteConnectOptions, sqlx::Error> {
    Ok(connect_options(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal))
}

/// Runs the migrations, first putting a file that has no tables yet in
/// incremental auto-vacuum mode. Without it a file never shrinks: the
/// pages a dropped read-model version freed stay in the file, and a ledger
/// that has rebuilt keeps the size of three versions for good. With it,
/// [`reclaim_free_pages`] gives them back in short steps. The mode can
/// only be chosen before the first table (the `VACUUM` that applies it is
/// instant on an empty file); an older file keeps reusing its free pages
/// instead, until a `VACUUM` of its own converts it.
pub async fn migrate(pool: &SqlitePool) -> Result<(), sqlx::migrate::MigrateError> {
    let tables: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_schema")
        .fetch_one(pool)
        .await?;
    if tables == 0 {
        sqlx::query("PRAGMA auto_vacuum = INCREMENTAL")
            .execute(pool)
            .await?;
        sqlx::query("VACUUM").execute(pool).await?;
    }
    MIGRATOR.run(pool).await
}

/// Free pages returned to the file system per write transaction.
const VACUUM_STEP_PAGES: i64 = 2_048;

/// Truncates the free pages off the end of a file in incremental
/// auto-vacuum mode, a few thousand pages per transaction so the write
/// lock is never held for long. Returns the pages released (0 on a file
/// without auto-vacuum, whose free pages are reused by later writes).
pub async fn reclaim_free_pages(pool: &SqlitePool) -> Result<i64, sqlx::Error> {
    // `PRAGMA auto_vacuum` answers 0 (none), 1 (full) or 2 (incremental).
    const INCREMENTAL: i64 = 2;
    let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
        .fetch_one(pool)
        .await?;
    if mode != INCREMENTAL {
        return Ok(0);
    }
    // Bounded by the pages free at the start: pages other writers free
    // meanwhile wait for the next reclaim.
    let free: i64 = sqlx::query_scalar("PRAGMA freelist_count")
        .fetch_one(pool)
        .await?;
    let mut released = 0;
    while released < free {
        let step = (free - released).min(VACUUM_STEP_PAGES);
        sqlx::query(&format!("PRAGMA incremental_vacuum({step})"))
            .execute(pool)
            .await?;
        released += step;
    }
    Ok(released)
}

/// An event store in one SQLite file.
pub struct SqliteStore {
    reader: SqlitePool,
    /// `None` when opened with [`SqliteStore::open_read_only`].
    write: Option<WritePath>,
    head: Arc<watch::Sender<u64>>,
}

/// What appending needs: the single-connection pool read models in the
/// same file write through, and the group committer's own connection.
struct WritePath {
    writer: SqlitePool,
    committer: GroupCommitter,
}

/// Connection options for reading a SQLite file that may not be writable
/// by this process (`journey verify` on an archived copy, a file owned by
/// the service's user, a read-only mount): never creates the file, never
/// writes to it.
///
/// A WAL-mode file is read through its `-shm` index, which SQLite creates
/// beside the file if it is missing. When it is missing and the directory
/// is not writable, nothing can be writing the file either (a writer keeps
/// `-shm` while it runs), so the file is opened `immutable` — unless a
/// non-empty `-wal` holds commits not yet copied into the file, which could
/// only be read through an index that cannot be created: that is an error
/// that says what to do, not a silently older ledger.
pub fn read_only_options(url: &str) -> Result<SqliteConnectOptions, StoreError> {
    let options = connect_options(url)?.read_only(true);
    let file = options.get_filename().to_path_buf();
    if file.as_os_str() == ":memory:" {
        return Ok(options);
    }
    let sibling = |suffix: &str| {
        let mut name = file.as_os_str().to_owned();
        name.push(suffix);
        std::path::PathBuf::from(name)
    };
    let dir = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    if sibling("-shm").exists() || directory_writable(&dir) {
        return Ok(options);
    }
    let wal = sibling("-wal");
    if std::fs::metadata(&wal)
        .map(|m| m.len() > 0)
        .unwrap_or(false)
    {
        return Err(StoreError::Backend {
            backend: "sqlite",
            message: format!(
                "{} holds commits not yet in {} and {} is not writable, so they cannot be read; \
                 open the store once as a user who may write there (any journey command does)",
                wal.display(),
                file.display(),
                dir.display()
            ),
        });
    }
    Ok(options.immutable(true))
}

fn directory_writable(dir: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `path` is a valid NUL-terminated string for the call's duration.
    unsafe { libc::access(path.as_ptr(), libc::W_OK) == 0 }
}

/// The embedded migrations a database has not applied yet (empty when its
/// schema is this build's).
pub async fn pending_migrations(pool: &SqlitePool) -> Result<Vec<i64>, StoreError> {
    let applied: Vec<i64> = match sqlx::query_scalar(
        "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
    )
    .fetch_all(pool)
    .await
    {
        Ok(applied) => applied,
        // No migration table: nothing has been applied.
        Err(sqlx::Error::Database(e)) if e.message().contains("no such table") => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    Ok(MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| m.version)
        .filter(|v| applied.binary_search(v).is_err())
        .collect())
}

/// How a command that only reads opens something kept in a SQLite file
/// (events, read models, keys): `from_pool` on a read-only pool when the
/// schema is this build's; otherwise `migrate` (the writable open, which
/// migrates), whose failure is [`StoreError::NeedsMigration`].
pub async fn open_read_only_with<T, E, M>(
    url: &str,
    connections: u32,
    from_pool: impl FnOnce(SqlitePool) -> T,
    migrate: impl FnOnce() -> M,
) -> Result<T, E>
where
    M: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display + From<StoreError>,
{
    match open_read_only_pool(url, connections).await? {
        Some(pool) => Ok(from_pool(pool)),
        None => migrate().await.map_err(|e| {
            StoreError::NeedsMigration {
                store: url.to_owned(),
                reason: e.to_string(),
            }
            .into()
        }),
    }
}

/// Opens a read-only pool on a SQLite file whose schema is this build's
/// (see [`read_only_options`]); `Ok(None)` when it needs migrations first.
pub async fn open_read_only_pool(
    url: &str,
    connections: u32,
) -> Result<Option<SqlitePool>, StoreError> {
    let options = read_only_options(url)?
        .busy_timeout(Duration::from_secs(10))
        .pragma("cache_size", "-65536");
    let pool = crate::store::pool_options::<sqlx::Sqlite>()
        .max_connections(connections.max(1))
        .connect_with(options)
        .await?;
    if pending_migrations(&pool).await?.is_empty() {
        Ok(Some(pool))
    } else {
        pool.close().await;
        Ok(None)
    }
}

/// WAL pages the committer lets accumulate before it checkpoints them into
/// the database file (SQLite's default is 1,000). Appends touch random pages
/// of the id and stream indexes; the fewer checkpoints, the more of those
/// pages are written back once for many commits instead of once per few.
/// Measured with `bench ingest` (4 clients × Segment batches of 100, 30 s):
/// 1,000 pages 17.5k events/s, 4,000 pages 21.1k, 8,000 pages 21.5k with a
/// worse p99 (45 → 64 ms). Costs a WAL file of up to ~16 MiB.
/// Only used when the WAL checkpointer cannot start (see
/// [`super::sqlite_checkpoint`], which otherwise takes over).
const COMMITTER_WAL_AUTOCHECKPOINT_PAGES: u32 = 4_000;

/// The committer's page cache, as SQLite's negative `cache_size` (KiB).
/// Small on purpose: when a B-tree page splits, SQLite renumbers the new
/// pages through a temporary number past the 1 GiB lock page, and at the
/// end of that transaction its page cache then visits every cached page
/// (`pcache1TruncateUnsafe`: 12 % of the committer's samples with 64 MiB).
/// Appends split index pages in most commits, and the OS caches the file
/// anyway. `bench append --writers 16`, 6 s: 64 MiB 19.3k events/s (one
/// run); then two runs each, 16 MiB 19.3k / 19.4k, 8 MiB 20.3k / 20.2k,
/// 4 MiB 19.6k / 19.5k, 1 MiB 19.7k / 19.5k.
const COMMITTER_CACHE_KIB: i64 = -8_192;

impl SqliteStore {
    /// Opens (creating if missing) and migrates the file a `sqlite://` URL names.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = writable_options(url)?
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            .pragma("cache_size", "-65536");
        let writer = crate::store::pool_options::<sqlx::Sqlite>()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        migrate(&writer).await?;
        let reader = crate::store::pool_options::<sqlx::Sqlite>()
            .max_connections(4)
            .connect_with(options.clone().read_only(true))
            .await?;
        let committer_options = options
            .pragma(
                "wal_autocheckpoint",
                COMMITTER_WAL_AUTOCHECKPOINT_PAGES.to_string(),
            )
            .pragma("cache_size", COMMITTER_CACHE_KIB.to_string());
        let (_, synchronous) = split_synchronous(url)?;
        let flush_before_ack = matches!(
            synchronous,
            SqliteSynchronous::Full | SqliteSynchronous::Extra
        );
        let head = Arc::new(watch::channel(0).0);
        let committer = start_committer(committer_options, head.clone(), flush_before_ack).await?;
        let store = Self {
            reader,
            write: Some(WritePath { writer, committer }),
            head,
        };
        let head = store.head_position().await?;
        store.head.send_replace(head);
        Ok(store)
    }

    /// Opens an existing file for reading only: no file is created, nothing
    /// is written (it works on a file this process may not write), and
    /// appends fail with [`StoreError::ReadOnly`]. A file written by an
    /// older build is migrated first when it is writable, and refused with
    /// [`StoreError::NeedsMigration`] when it is not.
    pub async fn open_read_only(url: &str) -> Result<Self, StoreError> {
        let store = open_read_only_with(
            url,
            4,
            |reader| Self {
                reader,
                write: None,
                head: Arc::new(watch::channel(0).0),
            },
            || Self::open(url),
        )
        .await?;
        let head = store.head_position().await?;
        store.head.send_replace(head);
        Ok(store)
    }

    /// The read pool, for read models that live in the same file.
    pub fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    /// The single-connection write pool, for read models in the same file.
    pub fn writer(&self) -> Result<&SqlitePool, StoreError> {
        self.write
            .as_ref()
            .map(|w| &w.writer)
            .ok_or(StoreError::ReadOnly)
    }
}

fn from_micros(position: u64, value: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(value).ok_or_else(|| StoreError::Corrupt {
        position,
        reason: format!("timestamp {value} is out of range"),
    })
}

/// Turns one `events` row into a [`RecordedEvent`].
fn decode_row(row: &SqliteRow) -> Result<RecordedEvent, StoreError> {
    let position: i64 = row.try_get(0)?;
    let position = position as u64;
    let corrupt = |reason: String| StoreError::Corrupt { position, reason };
    let id_bytes: &[u8] = row.try_get(1)?;
    let event_id = Uuid::from_slice(id_bytes).map_err(|e| corrupt(format!("event_id: {e}")))?;
    let stream: String = row.try_get(2)?;
    let version: i64 = row.try_get(3)?;
    let schema_version: i64 = row.try_get(5)?;
    let hash_bytes: &[u8] = row.try_get(10)?;
    Ok(RecordedEvent {
        event_id,
        stream_id: StreamId::from_trusted(stream),
        version: version as u64,
        position,
        event_type: row.try_get(4)?,
        schema_version: u32::try_from(schema_version)
            .map_err(|_| corrupt(format!("schema_version {schema_version}")))?,
        occurred_at: from_micros(position, row.try_get(6)?)?,
        recorded_at: from_micros(position, row.try_get(7)?)?,
        metadata_json: row.try_get(8)?,
        payload_json: row.try_get(9)?,
        hash: EventHash::from_slice(hash_bytes).map_err(corrupt)?,
    })
}

async fn stream_heads(
    conn: &mut sqlx::SqliteConnection,
    streams: &[StreamId],
) -> Result<HashMap<StreamId, StreamHead>, StoreError> {
    let mut heads = HashMap::new();
    for chunk in streams.chunks(LOOKUP_CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT stream_id, version, head_hash FROM streams WHERE stream_id IN (",
        );
        let mut sep = q.separated(", ");
        for s in chunk {
            sep.push_bind(s.as_str());
        }
        q.push(")");
        for row in q.build().fetch_all(&mut *conn).await? {
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
    }
    Ok(heads)
}

/// Opens the committer's own connection and starts the committer thread
/// on it (see [`super::sqlite_append`]).
///
/// With `flush_before_ack` (`synchronous=full` or `extra`, the default),
/// the committer's own commits skip SQLite's flush (`synchronous=normal`)
/// and a second thread flushes the WAL file before any append is answered
/// (see [`super::group_commit::GroupQueue::serve_flushed`]): acknowledged still means on disk,
/// but the next group is written while the disk works. What this costs:
/// another connection may read a group up to one flush (about a
/// millisecond) before it is durable, so after a power loss a reader in
/// another process could have seen an event that the file no longer holds
/// (never one that was acknowledged). Read models in the same file cannot:
/// the WAL is recovered as a prefix, and their writes come after the
/// events they fold. Where the WAL file cannot be opened (an in-memory
/// database), the committer keeps SQLite's own flush instead.
async fn start_committer(
    options: SqliteConnectOptions,
    head: Arc<watch::Sender<u64>>,
    flush_before_ack: bool,
) -> Result<GroupCommitter, StoreError> {
    use sqlx::ConnectOptions;
    let wal_path = {
        let mut name = options.get_filename().as_os_str().to_owned();
        name.push("-wal");
        std::path::PathBuf::from(name)
    };
    let mut conn = options.connect().await?;
    let checkpoints = start_checkpointer(&options).await;
    let committer = GroupCommitter::start_on_thread("journey-sqlite-commit", move |queue| {
        let _stop_checkpointer = checkpoints.as_ref().map(Checkpoints::stop_when_dropped);
        let mut raw = match RawConnection::lock(&mut conn) {
            Ok(raw) => raw,
            Err(e) => {
                let why = e.to_string();
                return queue.refuse_all(|| StoreError::Backend {
                    backend: "sqlite",
                    message: format!("the committer's connection: {why}"),
                });
            }
        };
        let committed = Arc::new(AtomicU64::new(0));
        let flusher = match flush_before_ack {
            true => wal_flusher(&raw, &wal_path, committed.clone(), head.clone()),
            false => None,
        };
        let published = flusher.is_none().then_some(head);
        if let Some(checkpoints) = &checkpoints {
            raw.count_wal_frames(checkpoints.frame_counter());
        }
        let after_commit = |raw: &RawConnection<'_>| {
            if let Some(checkpoints) = &checkpoints {
                checkpoints.after_commit(raw);
            }
        };
        match Appender::prepare(&raw, committed, published) {
            Ok(mut appender) => {
                let commit = |group: &[Vec<StreamWrite>]| {
                    let results = appender.commit_group(group);
                    after_commit(&raw);
                    results
                };
                match flusher {
                    Some(flusher) => queue.serve_flushed(commit, flusher),
                    None => queue.serve(commit),
                }
            }
            Err(e) => {
                let why = e.to_string();
                queue.refuse_all(|| StoreError::Backend {
                    backend: "sqlite",
                    message: format!("the committer's statements: {why}"),
                })
            }
        };
    })
    .map_err(|e| StoreError::Backend {
        backend: "sqlite",
        message: format!("starting the committer thread: {e}"),
    })?;
    Ok(committer)
}

/// Starts the WAL checkpointer on a connection of its own (see
/// [`super::sqlite_checkpoint`]); `None` when it cannot, and the committer
/// then leaves checkpoints to SQLite as before.
async fn start_checkpointer(options: &SqliteConnectOptions) -> Option<Arc<Checkpoints>> {
    use sqlx::ConnectOptions;
    let mut conn = match options.connect().await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(error = %e, "no WAL checkpointer connection; commits checkpoint");
            return None;
        }
    };
    let checkpoints = Checkpoints::new();
    let shared = checkpoints.clone();
    let (started, ready) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("journey-sqlite-checkpoint".to_owned())
        .spawn(move || match RawConnection::lock(&mut conn) {
            Ok(raw) => {
                let _ = started.send(true);
                shared.run(&raw);
            }
            Err(e) => {
                tracing::warn!(error = %e, "WAL checkpointer connection");
                let _ = started.send(false);
            }
        });
    let running = spawned.is_ok()
        && tokio::task::spawn_blocking(move || ready.recv().unwrap_or(false))
            .await
            .unwrap_or(false);
    running.then_some(checkpoints)
}

/// A flusher for the committer's WAL file, with the committer's connection
/// switched to `synchronous=normal`; `None` (and the connection left as
/// it was) when the file cannot be opened.
fn wal_flusher(
    raw: &RawConnection<'_>,
    wal_path: &std::path::Path,
    committed: Arc<AtomicU64>,
    published: Arc<watch::Sender<u64>>,
) -> Option<Flusher> {
    // A read makes this connection open the WAL, which SQLite then keeps
    // (same file, same inode) for as long as any connection is open: this
    // one lives as long as the committer, so the handle below always
    // names the live log.
    raw.execute("SELECT COUNT(*) FROM sqlite_schema").ok()?;
    let wal = match std::fs::File::open(wal_path) {
        Ok(wal) => wal,
        Err(e) => {
            tracing::debug!(path = %wal_path.display(), error = %e,
                "no WAL file to flush; commits flush themselves");
            return None;
        }
    };
    raw.execute("PRAGMA synchronous = NORMAL").ok()?;
    Some(Flusher {
        flush: Box::new(move || wal.sync_data()),
        committed,
        published,
    })
}

#[async_trait]
impl EventStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::FULL
    }

    async fn append_batch(
        &self,
        writes: Vec<StreamWrite>,
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        batch::check_writes(&writes)?;
        let write = self.write.as_ref().ok_or(StoreError::ReadOnly)?;
        write.committer.append(writes).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        options: ReadStream,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let limit = i64::try_from(options.limit).unwrap_or(i64::MAX);
        let sql = match options.direction {
            Direction::Forwards => format!(
                "SELECT {COLUMNS} FROM events WHERE stream_id = ? AND version >= ? \
                 ORDER BY version ASC LIMIT ?"
            ),
            Direction::Backwards => format!(
                "SELECT {COLUMNS} FROM events WHERE stream_id = ? AND version <= ? \
                 ORDER BY version DESC LIMIT ?"
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
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(decode_row).collect()
    }

    async fn stream_heads(
        &self,
        streams: &[StreamId],
    ) -> Result<Vec<Option<StreamHead>>, StoreError> {
        let mut conn = self.reader.acquire().await?;
        let found = stream_heads(&mut conn, streams).await?;
        Ok(streams.iter().map(|s| found.get(s).copied()).collect())
    }

    async fn stream_head(&self, stream: &StreamId) -> Result<Option<StreamHead>, StoreError> {
        let mut conn = self.reader.acquire().await?;
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
            format!("SELECT {COLUMNS} FROM events WHERE position >= ? ORDER BY position LIMIT ?");
        let mut rows = sqlx::query(&sql)
            .bind(i64::try_from(from).unwrap_or(i64::MAX))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch(&self.reader);
        // Decode while streaming: each row is dropped as soon as it is
        // converted, instead of holding a whole page of driver rows.
        let mut events = Vec::with_capacity(limit.min(100_000));
        while let Some(row) = rows.try_next().await? {
            events.push(decode_row(&row)?);
        }
        Ok(events)
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM events")
            .fetch_one(&self.reader)
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
            .fetch_all(&self.reader)
            .await?;
        let rows = rows.iter().map(decode_row).collect::<Result<Vec<_>, _>>()?;
        super::whole_streams(rows, limit, |stream| async move {
            self.read_stream(&stream, ReadStream::all_forwards()).await
        })
        .await
    }

    async fn newest_customer_occurred_at(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let newest: Option<i64> = sqlx::query_scalar(super::NEWEST_CUSTOMER_OCCURRED_AT_SQL)
            .bind(crate::domain::customer::CUSTOMER_STREAM_PREFIX)
            .bind(crate::domain::customer::CUSTOMER_STREAMS_END)
            .fetch_one(&self.reader)
            .await?;
        newest.map(|us| from_micros(0, us)).transpose()
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let streams: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM streams")
            .fetch_one(&self.reader)
            .await?;
        let types: Vec<(String, i64)> = sqlx::query_as(
            "SELECT event_type, COUNT(*) FROM events GROUP BY event_type ORDER BY event_type",
        )
        .fetch_all(&self.reader)
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
            "SELECT stream_id FROM streams WHERE stream_id > ? ORDER BY stream_id LIMIT ?",
        )
        .bind(after.map(|s| s.as_str()).unwrap_or(""))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.reader)
        .await?;
        Ok(names.into_iter().map(StreamId::from_trusted).collect())
    }

    async fn wait_for_append(&self, after_position: u64) {
        let mut rx = self.head.subscribe();
        tokio::select! {
            _ = rx.wait_for(|h| *h > after_position) => {}
            _ = tokio::time::sleep(CROSS_PROCESS_POLL) => {}
        }
    }
}

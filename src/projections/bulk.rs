//! The bulk write path of rebuilds and population refits: whole customers'
//! rows and states, millions of them, each unit of work one transaction.
//! On SQLite the live runner's batches and deadline ticks go through the
//! same C-API statements (`commit_sqlite_batch`): a tick's thousands of
//! customers are scattered over the version, and per-row statements on
//! prepared handles cost a third of what multi-row statements through sqlx
//! did there.
//!
//! - **SQLite** has one writer per file, so one thread owns a dedicated
//!   connection and steps prepared `INSERT`s on it through the C API
//!   ([`crate::store::sqlite_raw`]): about a microsecond a row, where
//!   multi-row `INSERT`s through sqlx cost several. Workers hand it work
//!   through a bounded channel (back-pressure: a fast fold waits for the
//!   disk instead of filling memory).
//! - **PostgreSQL** takes concurrent writers, so each worker gets its own
//!   writer task and connection, and rows go in with binary `COPY` (no
//!   number formatting or parsing on either side).
//!
//! A unit of work ([`BulkWork`]) carries its bookkeeping (a partition's
//! progress, the population instant) so it commits atomically with its
//! rows: a crash loses at most the work in flight, and resuming redoes
//! exactly that.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::ConnectOptions;
use tokio::sync::mpsc;

use super::runner::{decode_customer_state, RunnerError};
use super::state::CustomerState;
use super::storage::{BatchWrite, ReadModelDb, StateRow, StorageError};
use super::{Row, TableKind, TableSpec, Value};
use crate::domain::CustomerId;
use crate::store::sqlite_raw::{Bind, BorrowedBinds, RawConnection, RawError, Statement};

/// A partition's progress, committed with its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionProgress {
    /// The partition.
    pub partition_no: i64,
    /// The last customer stream whose rows and state are in this work.
    pub done_through: Option<String>,
    /// Whether the partition is complete with this work.
    pub finished: bool,
}

/// A range of customers, `after < customer_id <= through` (unbounded where
/// `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomerRange {
    /// Exclusive lower bound.
    pub after: Option<String>,
    /// Inclusive upper bound.
    pub through: Option<String>,
}

/// Below every customer id (ids are never empty).
pub const BEFORE_ALL_CUSTOMERS: &str = "";
/// Above every customer id: `~` sorts after every character an id may hold.
pub const AFTER_ALL_CUSTOMERS: &str = "~";

impl CustomerRange {
    /// Both bounds as text, sentinels where unbounded: a bound that may be
    /// NULL in SQL (`?2 IS NULL OR …`) keeps the planner from using the
    /// index, and every range would then scan the whole version.
    pub fn bounds(&self) -> (&str, &str) {
        (
            self.after.as_deref().unwrap_or(BEFORE_ALL_CUSTOMERS),
            self.through.as_deref().unwrap_or(AFTER_ALL_CUSTOMERS),
        )
    }
}

/// One transaction's worth of bulk writes.
#[derive(Debug, Default)]
pub struct BulkWork {
    /// Delete the population tables' rows of these customers first (a
    /// refit rewrites the population range by range, so no transaction
    /// holds SQLite's write lock for long; each row says what instant it
    /// is as of).
    pub clear_population: Option<CustomerRange>,
    /// Rows of any of the version's tables.
    pub rows: Vec<Row>,
    /// Customer states (none may exist yet in the version).
    pub states: Vec<StateRow>,
    /// Events folded into this work (added to the version's count).
    pub events: i64,
    /// The newest `occurred_at` folded in this work (µs): the version's
    /// watermark moves up to it.
    pub watermark_us: Option<i64>,
    /// A partition's progress.
    pub partition: Option<PartitionProgress>,
    /// Marks the population tables as computed as of this instant (µs).
    pub population_as_of: Option<i64>,
    /// Commit after this work; `false` keeps the transaction open so the
    /// next work joins it (a population rewrite readers see all at once).
    pub commit: bool,
}

/// What a writer did.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteStats {
    /// Rows written (states included).
    pub rows: u64,
    /// Seconds spent writing (inside the database calls).
    pub secs: f64,
}

impl std::ops::AddAssign for WriteStats {
    fn add_assign(&mut self, other: Self) {
        self.rows += other.rows;
        self.secs += other.secs;
    }
}

/// A bulk writer for one version: send work, then [`BulkWriter::finish`].
pub struct BulkWriter {
    sender: Option<mpsc::Sender<BulkWork>>,
    done: tokio::task::JoinHandle<Result<WriteStats, StorageError>>,
}

/// The bulk writer's page cache, as SQLite's negative `cache_size` (KiB).
/// Its rows go in customer order, so the pages it revisits are the few
/// B-tree paths it is appending along; a larger cache mostly holds pages
/// already written. 10M events / 1,045,266 customers on SQLite (two runs
/// each): 16 MiB 309k–328k events/s, 309–338 MB peak; 64 MiB 289k–300k,
/// 382–388 MB peak.
const WRITER_CACHE_KIB: i64 = -16_384;

/// Units of work queued per writer before senders wait (each holds a
/// chunk's rows: memory is about this many chunks per worker).
const QUEUE: usize = 2;

impl BulkWriter {
    /// Starts a writer for `model_version` of `db`.
    pub async fn open(
        db: &ReadModelDb,
        model_version: i64,
        tables: &[TableSpec],
    ) -> Result<Self, StorageError> {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let tables: Arc<[TableSpec]> = tables.into();
        let done = match db {
            ReadModelDb::Sqlite(pool) => {
                let options: SqliteConnectOptions = (*pool.connect_options()).clone();
                let conn = options
                    .pragma("cache_size", WRITER_CACHE_KIB.to_string())
                    .connect()
                    .await?;
                tokio::task::spawn_blocking(move || {
                    sqlite_writer(conn, model_version, &tables, receiver)
                })
            }
            ReadModelDb::Postgres(pool) => {
                let conn = pool.acquire().await?.detach();
                tokio::spawn(postgres_writer(conn, model_version, tables, receiver))
            }
        };
        Ok(Self {
            sender: Some(sender),
            done,
        })
    }

    /// A handle to send work from other tasks or threads.
    pub fn sender(&self) -> mpsc::Sender<BulkWork> {
        self.sender.clone().expect("open until finished")
    }

    /// Sends work from async code.
    pub async fn send(&self, work: BulkWork) -> Result<(), StorageError> {
        if self.sender().send(work).await.is_err() {
            return Err(StorageError::WriterStopped);
        }
        Ok(())
    }

    /// Waits until everything sent is written; an open transaction (work
    /// sent with `commit: false` and nothing after) is rolled back.
    pub async fn finish(mut self) -> Result<WriteStats, StorageError> {
        self.sender = None;
        self.done
            .await
            .map_err(|e| StorageError::Task(e.to_string()))?
    }
}

/// Customers per chunk of [`scan_states`].
const STATE_CHUNK: usize = 2_000;

/// One customer's stored state, decoded.
pub type DecodedState = (CustomerId, CustomerState);

/// Streams every stored state of a version, decoded, in customer id order,
/// in chunks: through SQLite's C API on a read connection of its own (sqlx
/// costs about 13 µs per state row here, the C API under 1 µs), or through
/// sqlx on PostgreSQL. Memory: a few chunks.
pub fn scan_states(
    db: &ReadModelDb,
    model_version: i64,
) -> mpsc::Receiver<Result<Vec<DecodedState>, RunnerError>> {
    let (sender, receiver) = mpsc::channel(QUEUE);
    match db {
        ReadModelDb::Sqlite(pool) => {
            let options: SqliteConnectOptions = (*pool.connect_options()).clone();
            let handle = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || {
                let outcome = scan_sqlite_states(&options, model_version, &sender, &handle);
                if let Err(e) = outcome {
                    let _ = sender.blocking_send(Err(e));
                }
            });
        }
        ReadModelDb::Postgres(pool) => {
            let pool = pool.clone();
            tokio::spawn(async move {
                let outcome = scan_postgres_states(&pool, model_version, &sender).await;
                if let Err(e) = outcome {
                    let _ = sender.send(Err(e)).await;
                }
            });
        }
    }
    receiver
}

/// A read-only connection of its own for a bulk scan through the C API.
/// No memory map: mapped pages of the whole file would count as the
/// process's memory, and the page cache serves the reads as well.
pub(crate) fn open_bulk_reader(
    options: &SqliteConnectOptions,
    handle: &tokio::runtime::Handle,
) -> Result<sqlx::SqliteConnection, StorageError> {
    let options = options
        .clone()
        .read_only(true)
        .pragma("mmap_size", "0")
        .pragma("cache_size", "-16384");
    Ok(handle.block_on(options.connect())?)
}

fn scan_sqlite_states(
    options: &SqliteConnectOptions,
    model_version: i64,
    sender: &mpsc::Sender<Result<Vec<DecodedState>, RunnerError>>,
    handle: &tokio::runtime::Handle,
) -> Result<(), RunnerError> {
    let mut conn = open_bulk_reader(options, handle)?;
    let raw_conn = RawConnection::lock(&mut conn).map_err(StorageError::from)?;
    let mut statement = raw_conn
        .prepare(
            "SELECT customer_id, state FROM customer_state WHERE model_version = ?1 ORDER BY customer_id",
        )
        .map_err(raw)?;
    statement.bind(1, Bind::Int(model_version)).map_err(raw)?;
    let mut chunk = Vec::with_capacity(STATE_CHUNK);
    while let Some(row) = statement.next_row().map_err(raw)? {
        let customer = row.text(0).map_err(|e| RunnerError::Decode {
            position: 0,
            stream: String::new(),
            reason: e.to_string(),
        })?;
        chunk.push(decode_customer_state(customer, row.bytes(1))?);
        if chunk.len() == STATE_CHUNK {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(STATE_CHUNK));
            if sender.blocking_send(Ok(full)).is_err() {
                return Ok(());
            }
        }
    }
    if !chunk.is_empty() {
        let _ = sender.blocking_send(Ok(chunk));
    }
    Ok(())
}

async fn scan_postgres_states(
    pool: &sqlx::PgPool,
    model_version: i64,
    sender: &mpsc::Sender<Result<Vec<DecodedState>, RunnerError>>,
) -> Result<(), RunnerError> {
    use futures::StreamExt;
    use sqlx::Row as _;
    let mut rows = sqlx::query(
        "SELECT customer_id, state FROM customer_state WHERE model_version = $1 ORDER BY customer_id",
    )
    .bind(model_version)
    .fetch(pool);
    let mut chunk = Vec::with_capacity(STATE_CHUNK);
    while let Some(row) = rows.next().await {
        let row = row.map_err(StorageError::from)?;
        let customer: &str = row.try_get(0).map_err(StorageError::from)?;
        let state: &[u8] = row.try_get(1).map_err(StorageError::from)?;
        chunk.push(decode_customer_state(customer, state)?);
        if chunk.len() == STATE_CHUNK {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(STATE_CHUNK));
            if sender.send(Ok(full)).await.is_err() {
                return Ok(());
            }
        }
    }
    if !chunk.is_empty() {
        let _ = sender.send(Ok(chunk)).await;
    }
    Ok(())
}

/// Sends work from a blocking thread; `false` when the writer has stopped
/// (its error comes from [`BulkWriter::finish`]).
pub fn send_blocking(sender: &mpsc::Sender<BulkWork>, work: BulkWork) -> bool {
    sender.blocking_send(work).is_ok()
}

fn raw(e: RawError) -> StorageError {
    StorageError::Raw(e)
}

fn bind_value(value: &Value) -> Bind<'_> {
    match value {
        Value::Int(v) => Bind::Int(*v),
        Value::Real(v) => Bind::Real(*v),
        Value::Text(v) => Bind::Text(v),
        Value::Uuid(v) => Bind::Blob(v.as_bytes()),
        Value::Bytes(v) => Bind::Blob(v),
        Value::NullInt | Value::NullReal | Value::NullText | Value::NullUuid => Bind::Null,
    }
}

/// Rows per multi-row `INSERT` of the SQLite writer: stepping one statement
/// for 16 rows costs about 25 % less than 16 single-row statements (the
/// per-statement work is shared; the B-tree work per row stays).
const ROWS_PER_INSERT: usize = 16;

/// One table's prepared inserts.
struct TableInserts<'c> {
    many: Statement<'c>,
    one: Statement<'c>,
    spec: &'c TableSpec,
}

impl TableInserts<'_> {
    /// Inserts rows of this table, [`ROWS_PER_INSERT`] per statement.
    fn insert(&mut self, model_version: i64, rows: &[&Row]) -> Result<(), StorageError> {
        let width = self.spec.columns.len() + 2;
        let mut chunks = rows.chunks_exact(ROWS_PER_INSERT);
        let spec = self.spec;
        for chunk in chunks.by_ref() {
            self.many.execute_borrowing(|binds| {
                for (r, row) in chunk.iter().enumerate() {
                    bind_row(binds, r * width, model_version, spec, row)?;
                }
                Ok::<_, StorageError>(())
            })?;
        }
        for row in chunks.remainder() {
            self.one
                .execute_borrowing(|binds| bind_row(binds, 0, model_version, spec, row))?;
        }
        Ok(())
    }
}

/// Prepares every table's inserts, by table name.
fn prepare_inserts<'c>(
    raw_conn: &'c RawConnection<'_>,
    tables: &'c [TableSpec],
) -> Result<HashMap<&'static str, TableInserts<'c>>, StorageError> {
    let mut inserts = HashMap::new();
    for spec in tables {
        let width = spec.columns.len() + 2;
        let prepare = |rows: usize| {
            let tuples: Vec<String> = (0..rows)
                .map(|r| {
                    let marks: Vec<String> =
                        (1..=width).map(|i| format!("?{}", r * width + i)).collect();
                    format!("({})", marks.join(", "))
                })
                .collect();
            // `OR FAIL`: a multi-row statement that may abort half-way
            // keeps a statement journal, a copy of every page it touches
            // (a tenth of the rebuild writer's time). Failing instead
            // leaves the earlier rows of the statement in place, and every
            // caller rolls the whole transaction back on any error.
            raw_conn.prepare(&format!(
                "INSERT OR FAIL INTO {} (model_version, customer_id, {}) VALUES {}",
                spec.name,
                spec.columns.join(", "),
                tuples.join(", ")
            ))
        };
        let statements = TableInserts {
            many: prepare(ROWS_PER_INSERT).map_err(raw)?,
            one: prepare(1).map_err(raw)?,
            spec,
        };
        inserts.insert(spec.name, statements);
    }
    Ok(inserts)
}

/// Inserts rows of any of the tables, table by table (in the given order
/// within each), several per statement.
fn insert_rows(
    inserts: &mut HashMap<&'static str, TableInserts<'_>>,
    model_version: i64,
    rows: &[Row],
) -> Result<(), StorageError> {
    let mut by_table: Vec<&Row> = rows.iter().collect();
    by_table.sort_by_key(|r| r.table);
    for group in by_table.chunk_by(|a, b| a.table == b.table) {
        let table = group[0].table;
        let statements = inserts
            .get_mut(table)
            .ok_or_else(|| StorageError::RowShape {
                table: table.to_owned(),
                expected: 0,
                got: group[0].values.len(),
            })?;
        statements.insert(model_version, group)?;
    }
    Ok(())
}

/// Writes a state row with `statement`, whose parameters 1–5 are
/// `(model_version, customer_id, last_occurred_us, due_us, state)`.
fn write_state(
    statement: &mut Statement<'_>,
    model_version: i64,
    state: &StateRow,
) -> Result<(), StorageError> {
    statement.execute_borrowing(|binds| {
        binds.bind(1, Bind::Int(model_version))?;
        binds.bind(2, Bind::Text(&state.customer_id))?;
        binds.bind(3, Bind::Int(state.last_occurred_us))?;
        binds.bind(4, state.due_us.map_or(Bind::Null, Bind::Int))?;
        binds.bind(5, Bind::Blob(&state.state))?;
        Ok::<_, StorageError>(())
    })
}

/// Binds one row's values from parameter `offset + 1` on.
fn bind_row<'b>(
    binds: &mut BorrowedBinds<'_, '_, 'b>,
    offset: usize,
    model_version: i64,
    spec: &TableSpec,
    row: &'b Row,
) -> Result<(), StorageError> {
    if row.values.len() != spec.columns.len() {
        return Err(StorageError::RowShape {
            table: row.table.to_owned(),
            expected: spec.columns.len(),
            got: row.values.len(),
        });
    }
    binds.bind(offset + 1, Bind::Int(model_version))?;
    binds.bind(offset + 2, Bind::Text(&row.customer_id))?;
    for (i, value) in row.values.iter().enumerate() {
        binds.bind(offset + i + 3, bind_value(value))?;
    }
    Ok(())
}

/// The SQLite writer thread: one connection, prepared statements, one
/// transaction per committed unit of work.
fn sqlite_writer(
    mut conn: sqlx::SqliteConnection,
    model_version: i64,
    tables: &[TableSpec],
    mut receiver: mpsc::Receiver<BulkWork>,
) -> Result<WriteStats, StorageError> {
    let raw_conn = RawConnection::lock(&mut conn)?;
    // Checkpoint the write-ahead log every 64 MiB instead of every 4 MiB:
    // each checkpoint syncs the database file, hundreds of times per
    // rebuild at the default.
    raw_conn
        .execute("PRAGMA wal_autocheckpoint = 16384")
        .map_err(raw)?;
    let mut inserts = prepare_inserts(&raw_conn, tables)?;
    let mut insert_state = raw_conn
        .prepare(
            "INSERT INTO customer_state (model_version, customer_id, last_occurred_us, due_us, state) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(raw)?;
    let mut progress = raw_conn
        .prepare(
            "UPDATE projection_partitions SET done_through = COALESCE(?1, done_through), finished = ?2 \
             WHERE model_version = ?3 AND partition_no = ?4",
        )
        .map_err(raw)?;
    let mut count_events = raw_conn
        .prepare(
            "UPDATE projection_versions SET events_applied = events_applied + ?1, \
             watermark_us = CASE WHEN ?2 IS NOT NULL AND (watermark_us IS NULL OR watermark_us < ?2) \
             THEN ?2 ELSE watermark_us END WHERE model_version = ?3",
        )
        .map_err(raw)?;
    let mut population_as_of = raw_conn
        .prepare("UPDATE projection_versions SET population_as_of_us = ?1 WHERE model_version = ?2")
        .map_err(raw)?;
    let mut clear: Vec<_> = tables
        .iter()
        .filter(|t| t.kind == TableKind::Population)
        .map(|t| {
            raw_conn.prepare(&format!(
                "DELETE FROM {} WHERE model_version = ?1 AND customer_id > ?2 AND customer_id <= ?3",
                t.name
            ))
        })
        .collect::<Result<_, _>>()
        .map_err(raw)?;

    let mut stats = WriteStats::default();
    let mut in_transaction = false;
    let outcome = (|| {
        while let Some(work) = receiver.blocking_recv() {
            let started = std::time::Instant::now();
            if !in_transaction {
                raw_conn.execute("BEGIN IMMEDIATE").map_err(raw)?;
                in_transaction = true;
            }
            if let Some(range) = &work.clear_population {
                let (after, through) = range.bounds();
                for statement in &mut clear {
                    statement.bind(1, Bind::Int(model_version)).map_err(raw)?;
                    statement.bind(2, Bind::Text(after)).map_err(raw)?;
                    statement.bind(3, Bind::Text(through)).map_err(raw)?;
                    statement.execute().map_err(raw)?;
                }
            }
            // Rows come customer by customer; insert them table by table
            // (in customer order within each), several per statement.
            insert_rows(&mut inserts, model_version, &work.rows)?;
            for state in &work.states {
                write_state(&mut insert_state, model_version, state)?;
            }
            if work.events > 0 || work.watermark_us.is_some() {
                count_events.bind(1, Bind::Int(work.events)).map_err(raw)?;
                count_events
                    .bind(2, work.watermark_us.map_or(Bind::Null, Bind::Int))
                    .map_err(raw)?;
                count_events
                    .bind(3, Bind::Int(model_version))
                    .map_err(raw)?;
                count_events.execute().map_err(raw)?;
            }
            if let Some(p) = &work.partition {
                progress
                    .bind(1, p.done_through.as_deref().map_or(Bind::Null, Bind::Text))
                    .map_err(raw)?;
                progress
                    .bind(2, Bind::Int(i64::from(p.finished)))
                    .map_err(raw)?;
                progress.bind(3, Bind::Int(model_version)).map_err(raw)?;
                progress.bind(4, Bind::Int(p.partition_no)).map_err(raw)?;
                progress.execute().map_err(raw)?;
            }
            if let Some(as_of) = work.population_as_of {
                population_as_of.bind(1, Bind::Int(as_of)).map_err(raw)?;
                population_as_of
                    .bind(2, Bind::Int(model_version))
                    .map_err(raw)?;
                population_as_of.execute().map_err(raw)?;
            }
            if work.commit {
                raw_conn.execute("COMMIT").map_err(raw)?;
                in_transaction = false;
            }
            stats.rows += (work.rows.len() + work.states.len()) as u64;
            stats.secs += started.elapsed().as_secs_f64();
        }
        Ok(())
    })();
    let cache_bytes = raw_conn.cache_used_bytes();
    tracing::debug!(
        page_cache_mib = cache_bytes >> 20,
        rows = stats.rows,
        "bulk writer done"
    );
    if in_transaction {
        let _ = raw_conn.execute("ROLLBACK");
    }
    outcome.map(|()| stats)
}

/// Runs `sql` (`SELECT customer_id, last_occurred_us, due_us, state …`
/// with the version, the instant and the limit as parameters 1–3) through
/// the C API. Call from a blocking thread.
pub(crate) fn due_sqlite_states(
    conn: &mut sqlx::SqliteConnection,
    sql: &str,
    model_version: i64,
    now_us: i64,
    limit: i64,
) -> Result<Vec<StateRow>, StorageError> {
    let raw_conn = RawConnection::lock(conn)?;
    let mut statement = raw_conn.prepare(sql).map_err(raw)?;
    statement.bind(1, Bind::Int(model_version)).map_err(raw)?;
    statement.bind(2, Bind::Int(now_us)).map_err(raw)?;
    statement.bind(3, Bind::Int(limit)).map_err(raw)?;
    let mut states = Vec::new();
    while let Some(row) = statement.next_row().map_err(raw)? {
        let customer_id = row
            .text(0)
            .map_err(|e| StorageError::Task(format!("customer_state.customer_id: {e}")))?;
        states.push(StateRow {
            customer_id: customer_id.to_owned(),
            last_occurred_us: row.int(1),
            due_us: (!row.is_null(2)).then(|| row.int(2)),
            state: row.bytes(3).to_vec(),
        });
    }
    Ok(states)
}

/// Commits a live batch or a deadline tick ([`BatchWrite`]) on SQLite
/// through the C API, in one transaction with its checkpoint: per-customer
/// deletes and single-row inserts stepped on prepared statements, and the
/// states upserted in place. A tick's customers are scattered over the
/// version, so each one is a few B-tree descents; through sqlx, statements
/// of hundreds of bound values prepared per batch cost more than the
/// descents themselves. Call from a blocking thread.
pub(crate) fn commit_sqlite_batch(
    conn: &mut sqlx::SqliteConnection,
    model_version: i64,
    tables: &[TableSpec],
    batch: &BatchWrite,
) -> Result<(), StorageError> {
    let raw_conn = RawConnection::lock(conn)?;
    let mut inserts = prepare_inserts(&raw_conn, tables)?;
    let mut deletes = tables
        .iter()
        .map(|t| {
            let sql = format!(
                "DELETE FROM {} WHERE model_version = ?1 AND customer_id = ?2",
                t.name
            );
            raw_conn.prepare(&sql).map(|statement| (t.name, statement))
        })
        .collect::<Result<HashMap<_, _>, _>>()
        .map_err(raw)?;
    let mut delete_state = raw_conn
        .prepare("DELETE FROM customer_state WHERE model_version = ?1 AND customer_id = ?2")
        .map_err(raw)?;
    let mut upsert_state = raw_conn
        .prepare(
            "INSERT INTO customer_state (model_version, customer_id, last_occurred_us, due_us, state) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (model_version, customer_id) DO UPDATE SET \
             last_occurred_us = excluded.last_occurred_us, due_us = excluded.due_us, \
             state = excluded.state",
        )
        .map_err(raw)?;
    let mut checkpoint = raw_conn
        .prepare(
            "UPDATE projection_versions SET checkpoint = ?1, events_applied = events_applied + ?2, \
             watermark_us = CASE WHEN watermark_us IS NULL OR watermark_us < ?3 THEN ?3 ELSE watermark_us END, \
             clock_us = COALESCE(?4, clock_us) WHERE model_version = ?5",
        )
        .map_err(raw)?;
    let mut delete = |table: &str, customer: &str| -> Result<(), StorageError> {
        let statement = deletes
            .get_mut(table)
            .ok_or_else(|| StorageError::RowShape {
                table: table.to_owned(),
                expected: 0,
                got: 0,
            })?;
        statement.bind(1, Bind::Int(model_version)).map_err(raw)?;
        statement.bind(2, Bind::Text(customer)).map_err(raw)?;
        statement.execute().map_err(raw)
    };
    // A tick's commit leaves the write-ahead log to be checkpointed after
    // its changes are published ([`ReadModelDb::checkpoint_wal`]): copying
    // its pages into the database file is maintenance, not part of the
    // latency of a silent customer's stage change.
    if batch.checkpoint_later {
        raw_conn
            .execute("PRAGMA wal_autocheckpoint = 0")
            .map_err(raw)?;
    }
    let mut fence = raw_conn
        .prepare("SELECT epoch FROM projector_fence WHERE id = 1")
        .map_err(raw)?;
    let mut feed = raw_conn
        .prepare(
            "INSERT INTO live_feed (epoch, model_version, kind, customer_id, from_stage, to_stage, \
             message, at_us, recorded_us) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .map_err(raw)?;
    raw_conn.execute("BEGIN IMMEDIATE").map_err(raw)?;
    let outcome = (|| {
        // 0. Fence: inside the write transaction, so no successor can bump
        // the epoch between this check and the commit.
        if let Some(epoch) = batch.fence {
            let current = fence
                .next_row()
                .map_err(raw)?
                .map(|row| row.int(0))
                .unwrap_or(0);
            fence.reset();
            if current != epoch {
                return Err(StorageError::Fenced { epoch, current });
            }
        }
        // 1. Deletions, each table in customer order. States are replaced
        // in place below; only a listed customer without a new state loses
        // its stored one.
        let restated: std::collections::HashSet<&str> = batch
            .states
            .iter()
            .map(|s| s.customer_id.as_str())
            .collect();
        for (customers, scope) in [
            (&batch.reset_customers, Some(true)),
            (&batch.replace_customers, Some(false)),
            (&batch.state_only, None),
        ] {
            for spec in tables.iter().filter(|t| match scope {
                Some(all) => t.kind == TableKind::Current || (all && t.kind == TableKind::History),
                None => false,
            }) {
                for customer in customers {
                    delete(spec.name, customer)?;
                }
            }
            for customer in customers.iter().filter(|c| !restated.contains(c.as_str())) {
                delete_state
                    .bind(1, Bind::Int(model_version))
                    .map_err(raw)?;
                delete_state.bind(2, Bind::Text(customer)).map_err(raw)?;
                delete_state.execute().map_err(raw)?;
            }
        }
        for (table, customer) in &batch.replace_in {
            delete(table, customer)?;
        }
        // 2. Rows.
        insert_rows(&mut inserts, model_version, &batch.rows)?;
        // 3. States.
        for state in &batch.states {
            write_state(&mut upsert_state, model_version, state)?;
        }
        // 4. The live feed.
        let recorded_us = chrono::Utc::now().timestamp_micros();
        for item in &batch.feed {
            let (kind, customer, from, to, message, at_us) = item.columns();
            fn text(t: Option<&str>) -> Bind<'_> {
                t.map_or(Bind::Null, Bind::Text)
            }
            feed.bind(1, Bind::Int(batch.fence.unwrap_or(0)))
                .map_err(raw)?;
            feed.bind(2, Bind::Int(model_version)).map_err(raw)?;
            feed.bind(3, Bind::Text(kind)).map_err(raw)?;
            feed.bind(4, Bind::Text(customer)).map_err(raw)?;
            feed.bind(5, text(from)).map_err(raw)?;
            feed.bind(6, text(to)).map_err(raw)?;
            feed.bind(7, text(message)).map_err(raw)?;
            feed.bind(8, Bind::Int(at_us)).map_err(raw)?;
            feed.bind(9, Bind::Int(recorded_us)).map_err(raw)?;
            feed.execute().map_err(raw)?;
        }
        // 5. Checkpoint.
        checkpoint
            .bind(1, Bind::Int(batch.checkpoint))
            .map_err(raw)?;
        checkpoint.bind(2, Bind::Int(batch.events)).map_err(raw)?;
        checkpoint
            .bind(3, batch.watermark_us.map_or(Bind::Null, Bind::Int))
            .map_err(raw)?;
        checkpoint
            .bind(4, batch.clock_us.map_or(Bind::Null, Bind::Int))
            .map_err(raw)?;
        checkpoint.bind(5, Bind::Int(model_version)).map_err(raw)?;
        checkpoint.execute().map_err(raw)?;
        // 6. Value-tier bounds the batch's events change (`tier_bounds`).
        if let Some(earliest) = batch.earliest_event_us {
            let mut stale = raw_conn
                .prepare(super::tier_bounds::DROP_STALE_SQL)
                .map_err(raw)?;
            stale.bind(1, Bind::Int(model_version)).map_err(raw)?;
            stale.bind(2, Bind::Int(earliest)).map_err(raw)?;
            stale.execute().map_err(raw)?;
        }
        raw_conn.execute("COMMIT").map_err(raw)
    })();
    if outcome.is_err() {
        let _ = raw_conn.execute("ROLLBACK");
    }
    if batch.checkpoint_later {
        raw_conn
            .execute(&format!(
                "PRAGMA wal_autocheckpoint = {SQLITE_AUTOCHECKPOINT_PAGES}"
            ))
            .map_err(raw)?;
    }
    outcome
}

/// SQLite's default automatic checkpoint threshold (pages of the log),
/// which the read-model writer keeps outside ticks.
const SQLITE_AUTOCHECKPOINT_PAGES: u32 = 1000;

/// The PostgreSQL writer task: one connection, binary `COPY` per table.
async fn postgres_writer(
    mut conn: PgConnection,
    model_version: i64,
    tables: Arc<[TableSpec]>,
    mut receiver: mpsc::Receiver<BulkWork>,
) -> Result<WriteStats, StorageError> {
    let specs: HashMap<&str, &TableSpec> = tables.iter().map(|t| (t.name, t)).collect();
    let mut stats = WriteStats::default();
    let mut open = false;
    let tx = &mut conn;
    while let Some(work) = receiver.recv().await {
        let started = std::time::Instant::now();
        if !open {
            sqlx::query("BEGIN").execute(&mut *tx).await?;
            open = true;
        }
        if let Some(range) = &work.clear_population {
            let (after, through) = range.bounds();
            for t in tables.iter().filter(|t| t.kind == TableKind::Population) {
                sqlx::query(&format!(
                    "DELETE FROM {} WHERE model_version = $1 AND customer_id > $2 AND customer_id <= $3",
                    t.name
                ))
                .bind(model_version)
                .bind(after)
                .bind(through)
                .execute(&mut *tx)
                .await?;
            }
        }
        let mut by_table: HashMap<&str, BinaryCopy> = HashMap::new();
        for row in &work.rows {
            let spec = specs.get(row.table).ok_or_else(|| StorageError::RowShape {
                table: row.table.to_owned(),
                expected: 0,
                got: row.values.len(),
            })?;
            if row.values.len() != spec.columns.len() {
                return Err(StorageError::RowShape {
                    table: row.table.to_owned(),
                    expected: spec.columns.len(),
                    got: row.values.len(),
                });
            }
            let copy = by_table
                .entry(spec.name)
                .or_insert_with(|| BinaryCopy::new(spec.columns.len() + 2));
            copy.row();
            copy.int(model_version);
            copy.text(&row.customer_id);
            for value in &row.values {
                copy.value(value);
            }
        }
        let mut names: Vec<&str> = by_table.keys().copied().collect();
        names.sort_unstable();
        for name in names {
            let spec = specs[name];
            let target = format!(
                "{} (model_version, customer_id, {})",
                spec.name,
                spec.columns.join(", ")
            );
            let copy = by_table.remove(name).expect("listed");
            copy.send(&mut *tx, &target).await?;
        }
        if !work.states.is_empty() {
            let mut copy = BinaryCopy::new(5);
            for s in &work.states {
                copy.row();
                copy.int(model_version);
                copy.text(&s.customer_id);
                copy.int(s.last_occurred_us);
                copy.opt_int(s.due_us);
                copy.bytes(&s.state);
            }
            copy.send(
                &mut *tx,
                "customer_state (model_version, customer_id, last_occurred_us, due_us, state)",
            )
            .await?;
        }
        if work.events > 0 || work.watermark_us.is_some() {
            sqlx::query(
                "UPDATE projection_versions SET events_applied = events_applied + $1, \
                 watermark_us = CASE WHEN $2::bigint IS NOT NULL AND (watermark_us IS NULL OR watermark_us < $2) \
                 THEN $2 ELSE watermark_us END WHERE model_version = $3",
            )
            .bind(work.events)
            .bind(work.watermark_us)
            .bind(model_version)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(p) = &work.partition {
            sqlx::query(
                "UPDATE projection_partitions SET done_through = COALESCE($1, done_through), finished = $2 \
                 WHERE model_version = $3 AND partition_no = $4",
            )
            .bind(p.done_through.as_deref())
            .bind(i32::from(p.finished))
            .bind(model_version)
            .bind(p.partition_no as i32)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(as_of) = work.population_as_of {
            sqlx::query(
                "UPDATE projection_versions SET population_as_of_us = $1 WHERE model_version = $2",
            )
            .bind(as_of)
            .bind(model_version)
            .execute(&mut *tx)
            .await?;
        }
        if work.commit {
            sqlx::query("COMMIT").execute(&mut *tx).await?;
            open = false;
        }
        stats.rows += (work.rows.len() + work.states.len()) as u64;
        stats.secs += started.elapsed().as_secs_f64();
    }
    if open {
        sqlx::query("ROLLBACK").execute(&mut *tx).await?;
    }
    Ok(stats)
}

/// Rows in PostgreSQL's binary `COPY` format: every integer column is
/// `BIGINT`, every real `DOUBLE PRECISION`, text `TEXT`, bytes `BYTEA`.
pub struct BinaryCopy {
    buf: Vec<u8>,
    fields: i16,
    rows: usize,
}

impl BinaryCopy {
    /// An empty copy of rows with `fields` columns.
    pub fn new(fields: usize) -> Self {
        let mut buf = Vec::with_capacity(64 * 1024);
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags
        buf.extend_from_slice(&0i32.to_be_bytes()); // header extension
        Self {
            buf,
            fields: fields as i16,
            rows: 0,
        }
    }

    /// Starts a row.
    pub fn row(&mut self) {
        self.buf.extend_from_slice(&self.fields.to_be_bytes());
        self.rows += 1;
    }

    /// A `BIGINT` field.
    pub fn int(&mut self, v: i64) {
        self.buf.extend_from_slice(&8i32.to_be_bytes());
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// A nullable `BIGINT` field.
    pub fn opt_int(&mut self, v: Option<i64>) {
        match v {
            Some(v) => self.int(v),
            None => self.null(),
        }
    }

    /// A `DOUBLE PRECISION` field.
    pub fn real(&mut self, v: f64) {
        self.buf.extend_from_slice(&8i32.to_be_bytes());
        self.buf.extend_from_slice(&v.to_bits().to_be_bytes());
    }

    /// A `TEXT` field.
    pub fn text(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }

    /// A `BYTEA` (or text) field.
    pub fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(&(v.len() as i32).to_be_bytes());
        self.buf.extend_from_slice(v);
    }

    /// A NULL field.
    pub fn null(&mut self) {
        self.buf.extend_from_slice(&(-1i32).to_be_bytes());
    }

    /// A read-model value.
    pub fn value(&mut self, value: &Value) {
        match value {
            Value::Int(v) => self.int(*v),
            Value::Real(v) => self.real(*v),
            Value::Text(v) => self.text(v),
            // A `UUID`'s binary form is its 16 bytes.
            Value::Uuid(v) => self.bytes(v.as_bytes()),
            Value::Bytes(v) => self.bytes(v),
            Value::NullInt | Value::NullReal | Value::NullText | Value::NullUuid => self.null(),
        }
    }

    /// Streams the rows into `target` (`table (columns)`).
    pub async fn send(mut self, conn: &mut PgConnection, target: &str) -> Result<(), sqlx::Error> {
        if self.rows == 0 {
            return Ok(());
        }
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        let mut copy = conn
            .copy_in_raw(&format!("COPY {target} FROM STDIN (FORMAT binary)"))
            .await?;
        copy.send(self.buf).await?;
        copy.finish().await?;
        Ok(())
    }
}

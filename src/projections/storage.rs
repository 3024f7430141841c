//! Where read models live: SQL tables in SQLite (the store's file by
//! default) or PostgreSQL (the store's database), written only by the
//! runner, one transaction per batch together with the checkpoint.
//!
//! Both backends run the same statements (upserts use `ON CONFLICT`, which
//! both understand); [`both!`] expands one body per backend so that each is
//! type-checked against its own driver.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use sqlx::postgres::PgPool;
use sqlx::sqlite::{SqlitePool, SqliteSynchronous};
use sqlx::{QueryBuilder, Row as _};
use thiserror::Error;

use super::{Row, TableKind, TableSpec, Value};

/// One customer's figures at a version's population snapshot, across read
/// models (what an analytics export lists).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SummaryRow {
    /// The customer (pseudonymise before it leaves the ledger).
    pub customer_id: String,
    /// Acquisition cohort, `YYYY-MM`.
    pub cohort_month: Option<String>,
    /// Lifecycle stage.
    pub stage: String,
    /// Value tier.
    pub value_tier: String,
    /// Orders minus refunds in the lifecycle currency, minor units.
    pub revenue_minor: i64,
    /// Loyalty tier.
    pub loyalty_tier: Option<String>,
    /// Loyalty points balance.
    pub points_balance: Option<i64>,
    /// Repeat purchase days (CLV frequency).
    pub repeat_purchases: Option<i64>,
    /// P(alive), when the models were fitted.
    pub p_alive: Option<f64>,
    /// Discounted CLV, minor units, when fitted.
    pub clv_minor: Option<i64>,
    /// RFM segment.
    pub rfm_segment: Option<String>,
}

/// One customer's population rows in a version (see
/// [`ReadModelDb::customer_population`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CustomerPopulation {
    /// The version's population snapshot instant (µs), once computed.
    pub snapshot_us: Option<i64>,
    /// The customer's `lifecycle_snapshot` value tier.
    pub tier: Option<SnapshotTier>,
    /// The customer's `churn_value_alerts` row.
    pub value_alert: Option<ValueAlertRow>,
    /// The customer's `customer_clv` row.
    pub scores: Option<ScoresRow>,
}

/// The value tier of a `lifecycle_snapshot` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotTier {
    /// The instant the tier was ranked as of (µs).
    pub as_of_us: i64,
    /// The tier (`high`, `mid`, `low`).
    pub value_tier: String,
}

/// A `churn_value_alerts` row: a high-value customer in the at-risk stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueAlertRow {
    /// When they fell into the stage (µs).
    pub at_us: i64,
    /// Their value tier at the snapshot.
    pub value_tier: String,
    /// Why the alert stands.
    pub cause: String,
}

/// A `customer_clv` row: CLV model outputs and RFM scores.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoresRow {
    /// Repeat purchase days.
    pub frequency: i64,
    /// First to last purchase, model time units.
    pub recency: f64,
    /// First purchase to the snapshot, model time units.
    pub t: f64,
    /// P(alive); absent when the models could not be fitted.
    pub p_alive: Option<f64>,
    /// Expected purchases over the CLV horizon.
    pub expected_purchases: Option<f64>,
    /// Discounted CLV over the horizon, minor units.
    pub clv_minor: Option<i64>,
    /// RFM scores 1–5 (recency, frequency, monetary).
    pub rfm: Option<[i64; 3]>,
    /// Weighted RFM total.
    pub rfm_total: Option<f64>,
    /// RFM segment.
    pub rfm_segment: Option<String>,
}

/// The joined row [`ReadModelDb::customer_population`] reads, by column
/// name; every table's columns are absent when the customer has no row
/// there.
#[derive(sqlx::FromRow)]
struct PopulationJoin {
    population_as_of_us: Option<i64>,
    tier_as_of_us: Option<i64>,
    value_tier: Option<String>,
    alert_customer: Option<String>,
    alert_at_us: Option<i64>,
    alert_value_tier: Option<String>,
    alert_cause: Option<String>,
    scores_customer: Option<String>,
    frequency: Option<i64>,
    recency: Option<f64>,
    t: Option<f64>,
    p_alive: Option<f64>,
    expected_purchases: Option<f64>,
    clv_minor: Option<i64>,
    rfm_r: Option<i64>,
    rfm_f: Option<i64>,
    rfm_m: Option<i64>,
    rfm_total: Option<f64>,
    rfm_segment: Option<String>,
}

impl PopulationJoin {
    /// Splits the join into each table's row; a present row with a
    /// missing `NOT NULL` column is corrupt.
    fn split(self) -> Result<CustomerPopulation, StorageError> {
        fn required<T>(value: Option<T>, table: &str, column: &str) -> Result<T, StorageError> {
            value.ok_or_else(|| StorageError::Corrupt(format!("{table}.{column} is NULL")))
        }
        let tier = match (self.tier_as_of_us, self.value_tier) {
            (Some(as_of_us), Some(value_tier)) => Some(SnapshotTier {
                as_of_us,
                value_tier,
            }),
            _ => None,
        };
        let value_alert = match self.alert_customer {
            None => None,
            Some(_) => Some(ValueAlertRow {
                at_us: required(self.alert_at_us, "churn_value_alerts", "at_us")?,
                value_tier: required(self.alert_value_tier, "churn_value_alerts", "value_tier")?,
                cause: required(self.alert_cause, "churn_value_alerts", "cause")?,
            }),
        };
        let scores = match self.scores_customer {
            None => None,
            Some(_) => Some(ScoresRow {
                frequency: required(self.frequency, "customer_clv", "frequency")?,
                recency: required(self.recency, "customer_clv", "recency")?,
                t: required(self.t, "customer_clv", "t")?,
                p_alive: self.p_alive,
                expected_purchases: self.expected_purchases,
                clv_minor: self.clv_minor,
                rfm: match (self.rfm_r, self.rfm_f, self.rfm_m) {
                    (Some(r), Some(f), Some(m)) => Some([r, f, m]),
                    _ => None,
                },
                rfm_total: self.rfm_total,
                rfm_segment: self.rfm_segment,
            }),
        };
        Ok(CustomerPopulation {
            snapshot_us: self.population_as_of_us,
            tier,
            value_alert,
            scores,
        })
    }
}

/// Why a read-model operation failed.
#[derive(Debug, Error)]
pub enum StorageError {
    /// The database refused a statement.
    #[error("read-model database: {0}")]
    Sql(#[from] sqlx::Error),
    /// The schema could not be migrated.
    #[error("read-model migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The URL names no supported database.
    #[error("read models need a sqlite:// or postgres:// URL, got {0:?}")]
    UnsupportedUrl(String),
    /// SQLite's C API refused a bulk statement.
    #[error("read-model database: {0}")]
    Raw(#[from] crate::store::sqlite_raw::RawError),
    /// A bulk writer stopped before taking all its work (its own error is
    /// reported by `finish`).
    #[error("the read-model writer stopped")]
    WriterStopped,
    /// A background writer or worker died.
    #[error("a read-model task failed: {0}")]
    Task(String),
    /// Another server became the projector: this one's batch was not
    /// committed (see `projections::leadership`).
    #[error("fenced off: this server's projector epoch is {epoch}, the database's is {current} (another server took over projecting)")]
    Fenced {
        /// The epoch this server projects under.
        epoch: i64,
        /// The epoch in the database.
        current: i64,
    },
    /// Opening the file for reading only failed (see
    /// [`ReadModelDb::open_read_only`]).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A row does not fit its table.
    #[error("table {table}: row has {got} values, the table spec has {expected} columns")]
    RowShape {
        /// Table.
        table: String,
        /// Columns in the spec.
        expected: usize,
        /// Values in the row.
        got: usize,
    },
    /// A stored value this build cannot read (e.g. an unknown stage code).
    #[error("read-model row: {0}")]
    Corrupt(String),
}

/// A connection pool to the read-model database.
#[derive(Clone)]
pub enum ReadModelDb {
    /// An SQLite file (one writer connection).
    Sqlite(SqlitePool),
    /// A PostgreSQL database.
    Postgres(PgPool),
}

/// Expands `$body` once per backend with `$pool` bound to that pool.
macro_rules! both {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            ReadModelDb::Sqlite($pool) => $body,
            ReadModelDb::Postgres($pool) => $body,
        }
    };
}
pub(crate) use both;

/// Builds a [`StateRow`] from a row of
/// `SELECT customer_id, last_occurred_us, due_us, state` (either backend).
macro_rules! state_row {
    ($r:expr) => {
        StateRow {
            customer_id: $r.try_get(0)?,
            last_occurred_us: $r.try_get(1)?,
            due_us: $r.try_get(2)?,
            state: $r.try_get(3)?,
        }
    };
}

/// Streams `$rows` (a `fetch` stream), each built into a value by `$build`,
/// into the callback `$f`; evaluates to `Ok(())` or the callback's first
/// error, which stops the stream.
macro_rules! stream_into {
    ($rows:expr, |$r:ident| $build:expr, $f:expr) => {{
        use futures::TryStreamExt;
        let mut rows = $rows;
        let mut outcome = Ok(());
        while let Some($r) = rows.try_next().await? {
            if let Err(e) = $f($build) {
                outcome = Err(e);
                break;
            }
        }
        outcome
    }};
}

/// Binds one value into a query under construction.
macro_rules! push_value {
    ($sep:expr, $value:expr) => {
        match $value {
            Value::Int(v) => {
                $sep.push_bind(*v);
            }
            Value::Text(v) => {
                $sep.push_bind(v.clone());
            }
            Value::Real(v) => {
                $sep.push_bind(*v);
            }
            Value::NullInt => {
                $sep.push_bind(None::<i64>);
            }
            Value::NullReal => {
                $sep.push_bind(None::<f64>);
            }
            Value::NullText => {
                $sep.push_bind(None::<String>);
            }
            Value::Uuid(v) => {
                $sep.push_bind(*v);
            }
            Value::NullUuid => {
                $sep.push_bind(None::<uuid::Uuid>);
            }
            Value::Bytes(v) => {
                $sep.push_bind(v.clone());
            }
        }
    };
}

/// Lifecycle of a model version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionStatus {
    /// Being rebuilt; not read by queries.
    Building,
    /// What queries read. At most one.
    Active,
    /// Replaced by a newer active version.
    Retired,
    /// A rebuild under other rules started before this one finished.
    Abandoned,
}

impl VersionStatus {
    /// The status as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionStatus::Building => "building",
            VersionStatus::Active => "active",
            VersionStatus::Retired => "retired",
            VersionStatus::Abandoned => "abandoned",
        }
    }
}

/// One row of `projection_versions`.
#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    /// The version number (all read-model rows carry it).
    pub model_version: i64,
    /// Status.
    pub status: String,
    /// Rules id.
    pub rules_id: String,
    /// Hash of the rules directory.
    pub rules_hash: String,
    /// The rules as JSON (queries use the version's own rules).
    pub rules_json: String,
    /// Last position applied.
    pub checkpoint: i64,
    /// Events applied so far.
    pub events_applied: i64,
    /// Format of the version's fold states ([`super::state::STATE_FORMAT`]
    /// when this build can maintain it; 0 for versions built before).
    pub state_format: i64,
    /// The instant the per-customer tables are as of (the clock of the
    /// rebuild or of the last live batch).
    pub clock_us: Option<i64>,
    /// The newest `occurred_at` folded (the population's "as of").
    pub watermark_us: Option<i64>,
    /// The log position the rebuild read through before catching up.
    pub rebuild_head: Option<i64>,
}

impl VersionInfo {
    /// Whether this build can read and maintain the version's states.
    pub fn maintainable(&self) -> bool {
        self.state_format == i64::from(super::state::STATE_FORMAT)
    }
}

/// A customer's stored fold state ([`super::state::CustomerState`] in its
/// binary form) with what the runner looks up without decoding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRow {
    /// Customer.
    pub customer_id: String,
    /// `occurred_at` (µs) of the latest event folded.
    pub last_occurred_us: i64,
    /// The next instant a time rule changes the customer, if any.
    pub due_us: Option<i64>,
    /// The state, binary.
    pub state: Vec<u8>,
}

/// Everything one batch commits, atomically with its checkpoint.
#[derive(Debug, Default)]
pub struct BatchWrite {
    /// Customers refolded from scratch: all their rows go first.
    pub reset_customers: Vec<String>,
    /// Customers that already had rows: their current rows are replaced.
    pub replace_customers: Vec<String>,
    /// Customers whose stored state is replaced while their rows stand,
    /// except those [`BatchWrite::replace_in`] names (a deadline tick).
    pub state_only: Vec<String>,
    /// One table's current rows of one customer, replaced: a deadline
    /// changes one or two tables (a stage, an expiry), and rewriting only
    /// those touches a fraction of the pages.
    pub replace_in: Vec<(&'static str, String)>,
    /// New rows (history rows and the touched customers' current rows).
    pub rows: Vec<Row>,
    /// Fold states of touched customers.
    pub states: Vec<StateRow>,
    /// Last position applied.
    pub checkpoint: i64,
    /// Events applied in this batch.
    pub events: i64,
    /// The newest `occurred_at` folded so far (µs).
    pub watermark_us: Option<i64>,
    /// The earliest `occurred_at` among this batch's events (µs): stored
    /// value-tier bounds from that instant on no longer hold.
    pub earliest_event_us: Option<i64>,
    /// The instant the touched customers were advanced to (µs).
    pub clock_us: Option<i64>,
    /// Leave the write-ahead log's pages to [`ReadModelDb::checkpoint_wal`]
    /// after the batch is published, instead of copying them into the
    /// database file inside the commit (SQLite; a deadline tick rewrites
    /// pages all over the version).
    pub checkpoint_later: bool,
    /// Stage changes and alerts for every server's subscribers
    /// ([`super::live_feed`]), written with the batch.
    pub feed: Vec<super::live_feed::FeedItem>,
    /// The projector's fencing epoch: the batch commits only while the
    /// database's epoch is still this one ([`super::leadership`]). `None`
    /// for a process that projects alone (a CLI command, a test).
    pub fence: Option<i64>,
}

/// Criteria of [`ReadModelDb::filter_customers`]; `None` means any.
#[derive(Debug, Clone, Default)]
pub struct CustomerCriteria {
    /// Lifecycle stage at the snapshot.
    pub stage: Option<String>,
    /// Loyalty tier.
    pub loyalty_tier: Option<String>,
    /// RFM segment.
    pub rfm_segment: Option<String>,
    /// Minimum CLV, minor units.
    pub min_clv: Option<i64>,
    /// Maximum CLV, minor units.
    pub max_clv: Option<i64>,
    /// With (true) or without (false) an alert at or after `alert_since_us`
    /// or a high-value-at-risk alert.
    pub has_alert: Option<bool>,
    /// See `has_alert`.
    pub alert_since_us: i64,
}

const SELECT_VERSION: &str = "SELECT model_version, status, rules_id, rules_hash, rules_json, \
                              checkpoint, events_applied, state_format, clock_us, watermark_us, \
                              rebuild_head FROM projection_versions";

impl ReadModelDb {
    /// Opens the database a URL names and applies the migrations.
    pub async fn open(url: &str) -> Result<Self, StorageError> {
        if url.starts_with("sqlite:") {
            let options = crate::store::sqlite::writable_options(url)?
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(30))
                .pragma("cache_size", "-65536");
            let pool = crate::store::pool_options::<sqlx::Sqlite>()
                .max_connections(1)
                .connect_with(options)
                .await?;
            crate::store::sqlite::migrate(&pool).await?;
            Ok(ReadModelDb::Sqlite(pool))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = crate::store::pool_options::<sqlx::Postgres>()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(30))
                .connect(url)
                .await?;
            crate::store::postgres::MIGRATOR.run(&pool).await?;
            Ok(ReadModelDb::Postgres(pool))
        } else {
            Err(StorageError::UnsupportedUrl(url.to_owned()))
        }
    }

    /// Opens the read models for a command that only reads them. On SQLite
    /// the file is never created or written (it may belong to another user
    /// or sit on a read-only mount; see
    /// [`crate::store::sqlite::read_only_options`]) unless its schema is an
    /// older build's, which is migrated first when the file is writable.
    pub async fn open_read_only(url: &str) -> Result<Self, StorageError> {
        if url.starts_with("sqlite:") {
            crate::store::sqlite::open_read_only_with(url, 1, ReadModelDb::Sqlite, || {
                Self::open(url)
            })
            .await
        } else {
            Self::open(url).await
        }
    }

    /// Opens a pool for queries beside the runner's: on SQLite several
    /// read-only connections (WAL lets them read while the runner writes),
    /// on PostgreSQL an ordinary pool. Runs no migrations: open the
    /// writer with [`ReadModelDb::open`] first.
    pub async fn open_for_queries(url: &str, connections: u32) -> Result<Self, StorageError> {
        if url.starts_with("sqlite:") {
            let options = crate::store::sqlite::connect_options(url)?
                .read_only(true)
                .busy_timeout(Duration::from_secs(30))
                .pragma("cache_size", "-65536")
                // Map the file: point lookups then read pages without a
                // syscall each (SQLite caps this at its compiled maximum).
                .pragma("mmap_size", "17179869184");
            let pool = crate::store::pool_options::<sqlx::Sqlite>()
                .max_connections(connections.max(1))
                .connect_with(options)
                .await?;
            Ok(ReadModelDb::Sqlite(pool))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = crate::store::pool_options::<sqlx::Postgres>()
                .max_connections(connections.max(1))
                .acquire_timeout(Duration::from_secs(30))
                .connect(url)
                .await?;
            Ok(ReadModelDb::Postgres(pool))
        } else {
            Err(StorageError::UnsupportedUrl(url.to_owned()))
        }
    }

    /// Closes the pool.
    pub async fn close(&self) {
        both!(self, pool => pool.close().await)
    }

    /// Creates a version in `building` status with checkpoint 0 and marks
    /// every other building version abandoned.
    pub async fn create_version(
        &self,
        rules_id: &str,
        rules_hash: &str,
        rules_json: &str,
        started_at_us: i64,
        clock_us: i64,
    ) -> Result<VersionInfo, StorageError> {
        let version: i64 = both!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("UPDATE projection_versions SET status = 'abandoned' WHERE status = 'building'")
                .execute(&mut *tx)
                .await?;
            let next: i64 = sqlx::query("SELECT COALESCE(MAX(model_version), 0) + 1 FROM projection_versions")
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
            sqlx::query(
                "INSERT INTO projection_versions (model_version, status, rules_id, rules_hash, rules_json, \
                 started_at_us, checkpoint, events_applied, state_format, clock_us) \
                 VALUES ($1, 'building', $2, $3, $4, $5, 0, 0, $6, $7)",
            )
            .bind(next)
            .bind(rules_id)
            .bind(rules_hash)
            .bind(rules_json)
            .bind(started_at_us)
            .bind(i32::from(super::state::STATE_FORMAT))
            .bind(clock_us)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            next
        });
        Ok(self.version(version).await?.expect("just created"))
    }

    /// One version by number.
    pub async fn version(&self, model_version: i64) -> Result<Option<VersionInfo>, StorageError> {
        let sql = format!("{SELECT_VERSION} WHERE model_version = $1");
        Ok(both!(self, pool => {
            sqlx::query(&sql).bind(model_version).fetch_optional(pool).await?
                .map(|r| version_info(&r)).transpose()?
        }))
    }

    /// The latest version with `status`, if any.
    pub async fn latest_with_status(
        &self,
        status: VersionStatus,
    ) -> Result<Option<VersionInfo>, StorageError> {
        let sql = format!("{SELECT_VERSION} WHERE status = $1 ORDER BY model_version DESC LIMIT 1");
        Ok(both!(self, pool => {
            sqlx::query(&sql).bind(status.as_str()).fetch_optional(pool).await?
                .map(|r| version_info(&r)).transpose()?
        }))
    }

    /// Every version, newest first.
    pub async fn versions(&self) -> Result<Vec<VersionInfo>, StorageError> {
        let sql = format!("{SELECT_VERSION} ORDER BY model_version DESC");
        Ok(both!(self, pool => {
            sqlx::query(&sql).fetch_all(pool).await?
                .iter().map(version_info).collect::<Result<Vec<_>, _>>()?
        }))
    }

    /// Makes `model_version` the active one and retires the previous active
    /// version, in one transaction: a reader sees either the old or the new.
    pub async fn activate(
        &self,
        model_version: i64,
        finished_at_us: i64,
    ) -> Result<(), StorageError> {
        both!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("UPDATE projection_versions SET status = 'retired' WHERE status = 'active'")
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE projection_versions SET status = 'active', finished_at_us = $1 WHERE model_version = $2",
            )
            .bind(finished_at_us)
            .bind(model_version)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Hands every stored state of a version to `f`, in customer id order,
    /// streaming (a million customers' states do not fit in memory). Stops
    /// at the first error `f` returns.
    pub async fn for_each_customer_state<E>(
        &self,
        model_version: i64,
        mut f: impl FnMut(StateRow) -> Result<(), E>,
    ) -> Result<Result<(), E>, StorageError> {
        const SQL: &str =
            "SELECT customer_id, last_occurred_us, due_us, state FROM customer_state \
                           WHERE model_version = $1 ORDER BY customer_id";
        Ok(both!(self, pool => {
            stream_into!(sqlx::query(SQL).bind(model_version).fetch(pool), |r| state_row!(r), f)
        }))
    }

    /// Every stored state of a version, in customer id order, streaming.
    pub fn customer_states(
        &self,
        model_version: i64,
    ) -> futures::stream::BoxStream<'_, Result<StateRow, StorageError>> {
        use futures::StreamExt;
        const SQL: &str =
            "SELECT customer_id, last_occurred_us, due_us, state FROM customer_state \
                           WHERE model_version = $1 ORDER BY customer_id";
        both!(self, pool => {
            sqlx::query(SQL)
                .bind(model_version)
                .fetch(pool)
                .map(|r| {
                    let r = r?;
                    Ok(state_row!(r))
                })
                .boxed()
        })
    }

    /// The stored states whose deadline is at or before `now_us`, earliest
    /// first, at most `limit` (an index on `(model_version, due_us)`).
    pub async fn due_states(
        &self,
        model_version: i64,
        now_us: i64,
        limit: i64,
    ) -> Result<Vec<StateRow>, StorageError> {
        const SQL: &str =
            "SELECT customer_id, last_occurred_us, due_us, state FROM customer_state \
                           WHERE model_version = $1 AND due_us IS NOT NULL AND due_us <= $2 \
                           ORDER BY due_us LIMIT $3";
        match self {
            // Thousands of states at random places of the version: stepped
            // through the C API on the writer's connection (sqlx hands each
            // row across threads as owned values, several µs a row).
            ReadModelDb::Sqlite(pool) => {
                let mut conn = pool.acquire().await?;
                tokio::task::spawn_blocking(move || {
                    super::bulk::due_sqlite_states(&mut conn, SQL, model_version, now_us, limit)
                })
                .await
                .map_err(|e| StorageError::Task(e.to_string()))?
            }
            ReadModelDb::Postgres(pool) => Ok(sqlx::query(SQL)
                .bind(model_version)
                .bind(now_us)
                .bind(limit)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| Ok::<_, sqlx::Error>(state_row!(r)))
                .collect::<Result<Vec<_>, _>>()?),
        }
    }

    /// The `n`-th earliest deadline of a version (µs), if that many are set.
    pub async fn nth_deadline(
        &self,
        model_version: i64,
        n: u64,
    ) -> Result<Option<i64>, StorageError> {
        const SQL: &str = "SELECT due_us FROM customer_state WHERE model_version = $1 \
                           AND due_us IS NOT NULL ORDER BY due_us LIMIT 1 OFFSET $2";
        Ok(both!(self, pool => {
            sqlx::query_scalar::<_, i64>(SQL)
                .bind(model_version)
                .bind(n.saturating_sub(1) as i64)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// The stored states of `customers` in a version (those that have one).
    pub async fn load_states(
        &self,
        model_version: i64,
        customers: &[&str],
    ) -> Result<Vec<StateRow>, StorageError> {
        let mut out = Vec::with_capacity(customers.len());
        for chunk in customers.chunks(500) {
            both!(self, pool => {
                let mut q = QueryBuilder::new(
                    "SELECT customer_id, last_occurred_us, due_us, state FROM customer_state WHERE model_version = ",
                );
                q.push_bind(model_version).push(" AND customer_id IN (");
                let mut sep = q.separated(", ");
                for c in chunk {
                    sep.push_bind(c.to_string());
                }
                q.push(")");
                for r in q.build().fetch_all(pool).await? {
                    out.push(state_row!(r));
                }
            });
        }
        Ok(out)
    }

    /// Customer ids of a version matching `criteria`, in id order, after
    /// `after`, at most `limit`. Stage is the stage at the population
    /// snapshot; customers without CLV figures fail any CLV bound.
    pub async fn filter_customers(
        &self,
        model_version: i64,
        criteria: &CustomerCriteria,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<String>, StorageError> {
        const SQL: &str = "SELECT s.customer_id FROM lifecycle_snapshot s \
             LEFT JOIN loyalty_accounts la ON la.model_version = s.model_version AND la.customer_id = s.customer_id \
             LEFT JOIN customer_clv c ON c.model_version = s.model_version AND c.customer_id = s.customer_id \
             WHERE s.model_version = $1 \
             AND ($2 IS NULL OR s.stage = $2) \
             AND ($3 IS NULL OR la.tier = $3) \
             AND ($4 IS NULL OR c.rfm_segment = $4) \
             AND ($5 IS NULL OR c.clv_minor >= $5) \
             AND ($6 IS NULL OR c.clv_minor <= $6) \
             AND ($7 IS NULL OR (EXISTS (SELECT 1 FROM churn_alerts a WHERE a.model_version = s.model_version \
                   AND a.customer_id = s.customer_id AND a.at_us >= $8) \
                  OR EXISTS (SELECT 1 FROM churn_value_alerts v WHERE v.model_version = s.model_version \
                   AND v.customer_id = s.customer_id)) = $7) \
             AND s.customer_id > $9 \
             ORDER BY s.customer_id LIMIT $10";
        Ok(both!(self, pool => {
            sqlx::query_scalar::<_, String>(SQL)
                .bind(model_version)
                .bind(criteria.stage.clone())
                .bind(criteria.loyalty_tier.clone())
                .bind(criteria.rfm_segment.clone())
                .bind(criteria.min_clv)
                .bind(criteria.max_clv)
                .bind(criteria.has_alert)
                .bind(criteria.alert_since_us)
                // A bound always: "$9 IS NULL OR …" would keep the index
                // from starting the page at the cursor.
                .bind(after.unwrap_or(super::bulk::BEFORE_ALL_CUSTOMERS).to_owned())
                .bind(limit)
                .fetch_all(pool)
                .await?
        }))
    }

    /// The instant (µs) the version's population tables were last computed
    /// as of, if ever.
    pub async fn population_as_of(&self, model_version: i64) -> Result<Option<i64>, StorageError> {
        const SQL: &str =
            "SELECT population_as_of_us FROM projection_versions WHERE model_version = $1";
        Ok(both!(self, pool => {
            sqlx::query_scalar::<_, Option<i64>>(SQL)
                .bind(model_version)
                .fetch_optional(pool)
                .await?
                .flatten()
        }))
    }

    /// One customer's rows of the population tables a projected view reads
    /// (value tier, high-value-at-risk alert, CLV scores) with the
    /// version's population snapshot instant, in one statement; `None`
    /// when the version does not exist.
    pub async fn customer_population(
        &self,
        model_version: i64,
        customer_id: &str,
    ) -> Result<Option<CustomerPopulation>, StorageError> {
        const SQL: &str = "SELECT v.population_as_of_us, \
             s.as_of_us AS tier_as_of_us, s.value_tier, \
             a.customer_id AS alert_customer, a.at_us AS alert_at_us, \
             a.value_tier AS alert_value_tier, a.cause AS alert_cause, \
             c.customer_id AS scores_customer, c.frequency, c.recency, c.t, c.p_alive, \
             c.expected_purchases, c.clv_minor, c.rfm_r, c.rfm_f, c.rfm_m, c.rfm_total, \
             c.rfm_segment \
             FROM projection_versions v \
             LEFT JOIN lifecycle_snapshot s \
                 ON s.model_version = v.model_version AND s.customer_id = $2 \
             LEFT JOIN churn_value_alerts a \
                 ON a.model_version = v.model_version AND a.customer_id = $2 \
             LEFT JOIN customer_clv c \
                 ON c.model_version = v.model_version AND c.customer_id = $2 \
             WHERE v.model_version = $1";
        let joined: Option<PopulationJoin> = both!(self, pool => {
            sqlx::query_as(SQL)
                .bind(model_version)
                .bind(customer_id.to_owned())
                .fetch_optional(pool)
                .await?
        });
        joined.map(PopulationJoin::split).transpose()
    }

    /// Every customer's row of the population snapshot of a version,
    /// joined across read models, in customer id order, streaming (see
    /// [`SummaryRow`]).
    pub async fn for_each_summary<E>(
        &self,
        model_version: i64,
        mut f: impl FnMut(SummaryRow) -> Result<(), E>,
    ) -> Result<Result<(), E>, StorageError> {
        const SQL: &str = "SELECT s.customer_id, cm.cohort_month, s.stage, s.value_tier, \
             s.revenue_minor, la.tier, la.balance, c.frequency, c.p_alive, c.clv_minor, \
             c.rfm_segment \
             FROM lifecycle_snapshot s \
             LEFT JOIN cohort_members cm ON cm.model_version = s.model_version AND cm.customer_id = s.customer_id \
             LEFT JOIN loyalty_accounts la ON la.model_version = s.model_version AND la.customer_id = s.customer_id \
             LEFT JOIN customer_clv c ON c.model_version = s.model_version AND c.customer_id = s.customer_id \
             WHERE s.model_version = $1 ORDER BY s.customer_id";
        Ok(both!(self, pool => {
            stream_into!(
                sqlx::query(SQL).bind(model_version).fetch(pool),
                |r| SummaryRow {
                    customer_id: r.try_get(0)?,
                    cohort_month: r.try_get(1)?,
                    stage: r.try_get(2)?,
                    value_tier: r.try_get(3)?,
                    revenue_minor: r.try_get(4)?,
                    loyalty_tier: r.try_get(5)?,
                    points_balance: r.try_get(6)?,
                    repeat_purchases: r.try_get(7)?,
                    p_alive: r.try_get(8)?,
                    clv_minor: r.try_get(9)?,
                    rfm_segment: r.try_get(10)?,
                },
                f
            )
        }))
    }

    /// The active version's number, without its rules (cheap enough to ask
    /// on every query).
    pub async fn active_model_version(&self) -> Result<Option<i64>, StorageError> {
        const SQL: &str = "SELECT model_version FROM projection_versions WHERE status = 'active'";
        Ok(both!(self, pool => {
            sqlx::query_scalar::<_, i64>(SQL).fetch_optional(pool).await?
        }))
    }

    /// A column as text in SQL: ids and bytes as hexadecimal (PostgreSQL
    /// renders a `UUID` with dashes and a `BYTEA` as `\x…` by itself).
    fn as_text(&self, column: &str) -> String {
        match self {
            ReadModelDb::Sqlite(_) => format!(
                "CASE WHEN typeof({column}) = 'blob' THEN lower(hex({column})) \
                 ELSE CAST({column} AS TEXT) END"
            ),
            ReadModelDb::Postgres(_) => format!("CAST({column} AS TEXT)"),
        }
    }

    /// Rows of `table` in a version as text, ordered by every column, for
    /// comparisons and reports. `customer` narrows to one customer.
    pub async fn dump(
        &self,
        table: &TableSpec,
        model_version: i64,
        customer: Option<&str>,
    ) -> Result<Vec<Vec<Option<String>>>, StorageError> {
        let mut cols = vec!["customer_id"];
        cols.extend(table.columns.iter().copied());
        let select: Vec<String> = cols.iter().map(|c| self.as_text(c)).collect();
        let order: Vec<String> = (1..=cols.len()).map(|i| i.to_string()).collect();
        let filter = if customer.is_some() {
            " AND customer_id = $2"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {} FROM {} WHERE model_version = $1{filter} ORDER BY {}",
            select.join(", "),
            table.name,
            order.join(", ")
        );
        Ok(both!(self, pool => {
            let mut q = sqlx::query(&sql).bind(model_version);
            if let Some(c) = customer {
                q = q.bind(c.to_owned());
            }
            let rows = q.fetch_all(pool).await?;
            rows.iter()
                .map(|r| (0..cols.len()).map(|i| r.try_get::<Option<String>, _>(i)).collect::<Result<Vec<_>, _>>())
                .collect::<Result<Vec<_>, _>>()?
        }))
    }

    /// Copies the write-ahead log's committed pages into the database file
    /// (SQLite, passive: readers are not waited for; what they still use
    /// is copied next time). Nothing to do on PostgreSQL.
    pub async fn checkpoint_wal(&self) -> Result<(), StorageError> {
        if let ReadModelDb::Sqlite(pool) = self {
            sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(pool)
                .await?;
        }
        Ok(())
    }

    /// Commits one batch: deletions, rows, states, the optional population
    /// rewrite and the checkpoint, in one transaction.
    pub async fn commit_batch(
        &self,
        model_version: i64,
        tables: &[TableSpec],
        mut batch: BatchWrite,
    ) -> Result<(), StorageError> {
        // In key order: a batch's customers are scattered over the version
        // (a deadline tick picks them by instant), and writing each table's
        // rows in key order touches each B-tree page once instead of
        // thrashing the page cache.
        batch.reset_customers.sort_unstable();
        batch.replace_customers.sort_unstable();
        batch.state_only.sort_unstable();
        batch.replace_in.sort_unstable();
        batch
            .states
            .sort_by(|a, b| a.customer_id.cmp(&b.customer_id));
        batch.rows.sort_by(|a, b| a.customer_id.cmp(&b.customer_id));
        let specs: HashMap<&str, &TableSpec> = tables.iter().map(|t| (t.name, t)).collect();
        let mut by_table: HashMap<&'static str, Vec<&Row>> = HashMap::new();
        for row in &batch.rows {
            let spec = specs.get(row.table).ok_or_else(|| StorageError::RowShape {
                table: row.table.to_owned(),
                expected: 0,
                got: row.values.len(),
            })?;
            if spec.columns.len() != row.values.len() {
                return Err(StorageError::RowShape {
                    table: row.table.to_owned(),
                    expected: spec.columns.len(),
                    got: row.values.len(),
                });
            }
            by_table.entry(row.table).or_default().push(row);
        }
        let pool = match self {
            ReadModelDb::Sqlite(pool) => {
                let mut conn = pool.acquire().await?;
                let tables = tables.to_vec();
                return tokio::task::spawn_blocking(move || {
                    super::bulk::commit_sqlite_batch(&mut conn, model_version, &tables, &batch)
                })
                .await
                .map_err(|e| StorageError::Task(e.to_string()))?;
            }
            ReadModelDb::Postgres(pool) => pool,
        };
        {
            let mut tx = pool.begin().await?;
            // 0. Fence: the share lock makes a successor's epoch bump wait
            // for this batch, and this batch see a bump that came first.
            if let Some(epoch) = batch.fence {
                let current: i64 =
                    sqlx::query_scalar("SELECT epoch FROM projector_fence WHERE id = 1 FOR SHARE")
                        .fetch_one(&mut *tx)
                        .await?;
                if current != epoch {
                    return Err(StorageError::Fenced { epoch, current });
                }
            }
            // 1. Deletions.
            for (customers, scope) in [
                (&batch.reset_customers, Some(true)),
                (&batch.replace_customers, Some(false)),
                (&batch.state_only, None),
            ] {
                if customers.is_empty() {
                    continue;
                }
                // Some(all): current tables (and history too when `all`),
                // then the state; None: the state alone.
                let mut targets: Vec<&str> = tables
                    .iter()
                    .filter(|t| match scope {
                        Some(all) => {
                            t.kind == TableKind::Current || (all && t.kind == TableKind::History)
                        }
                        None => false,
                    })
                    .map(|t| t.name)
                    .collect();
                targets.push("customer_state");
                for table in targets {
                    for chunk in customers.chunks(500) {
                        let mut q = QueryBuilder::new(format!(
                            "DELETE FROM {table} WHERE model_version = "
                        ));
                        q.push_bind(model_version).push(" AND customer_id IN (");
                        let mut sep = q.separated(", ");
                        for c in chunk {
                            sep.push_bind(c.clone());
                        }
                        q.push(")");
                        q.build().execute(&mut *tx).await?;
                    }
                }
            }
            for (table, customers) in batch
                .replace_in
                .chunk_by(|a, b| a.0 == b.0)
                .map(|c| (c[0].0, c))
            {
                for chunk in customers.chunks(500) {
                    let mut q =
                        QueryBuilder::new(format!("DELETE FROM {table} WHERE model_version = "));
                    q.push_bind(model_version).push(" AND customer_id IN (");
                    let mut sep = q.separated(", ");
                    for (_, c) in chunk {
                        sep.push_bind(c.clone());
                    }
                    q.push(")");
                    q.build().execute(&mut *tx).await?;
                }
            }
            // 2. Rows.
            for (table, rows) in &by_table {
                tx.insert_rows(model_version, specs[table], rows).await?;
            }
            // 3. States (the touched customers' old states were deleted in 1).
            tx.insert_states(model_version, &batch.states).await?;
            // 4. The live feed.
            let recorded_us = chrono::Utc::now().timestamp_micros();
            for chunk in batch.feed.chunks(1_000) {
                let mut q = QueryBuilder::new(
                    "INSERT INTO live_feed (epoch, model_version, kind, customer_id, from_stage, \
                     to_stage, message, at_us, recorded_us) ",
                );
                q.push_values(chunk, |mut b, item| {
                    let (kind, customer, from, to, message, at_us) = item.columns();
                    b.push_bind(batch.fence.unwrap_or(0))
                        .push_bind(model_version)
                        .push_bind(kind)
                        .push_bind(customer.to_owned())
                        .push_bind(from.map(str::to_owned))
                        .push_bind(to.map(str::to_owned))
                        .push_bind(message.map(str::to_owned))
                        .push_bind(at_us)
                        .push_bind(recorded_us);
                });
                q.build().execute(&mut *tx).await?;
            }
            // 5. Checkpoint.
            sqlx::query(
                "UPDATE projection_versions SET checkpoint = $1, events_applied = events_applied + $2, \
                 watermark_us = CASE WHEN watermark_us IS NULL OR watermark_us < $3 THEN $3 ELSE watermark_us END, \
                 clock_us = COALESCE($4, clock_us) WHERE model_version = $5",
            )
            .bind(batch.checkpoint)
            .bind(batch.events)
            .bind(batch.watermark_us)
            .bind(batch.clock_us)
            .bind(model_version)
            .execute(&mut *tx)
            .await?;
            // 6. Value-tier bounds the batch's events change (after the
            // version's row is locked by the update above, so bounds being
            // computed meanwhile are stored before this runs or not at all;
            // see `tier_bounds`).
            if let Some(earliest) = batch.earliest_event_us {
                sqlx::query(super::tier_bounds::DROP_STALE_SQL)
                    .bind(model_version)
                    .bind(earliest)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        }
        Ok(())
    }
}

/// Bulk inserts, per backend: multi-row `INSERT`s on SQLite, `COPY` on
/// PostgreSQL (several times faster there than bound `INSERT`s).
trait BulkInsert {
    /// Inserts rows of one table.
    fn insert_rows(
        &mut self,
        model_version: i64,
        spec: &TableSpec,
        rows: &[&Row],
    ) -> impl std::future::Future<Output = Result<(), sqlx::Error>> + Send;

    /// Inserts fold states (none of them may exist yet).
    fn insert_states(
        &mut self,
        model_version: i64,
        states: &[StateRow],
    ) -> impl std::future::Future<Output = Result<(), sqlx::Error>> + Send;
}

impl BulkInsert for sqlx::Transaction<'_, sqlx::Sqlite> {
    async fn insert_rows(
        &mut self,
        model_version: i64,
        spec: &TableSpec,
        rows: &[&Row],
    ) -> Result<(), sqlx::Error> {
        let per_stmt = (30_000 / (spec.columns.len() + 2)).min(2_000);
        for chunk in rows.chunks(per_stmt) {
            let mut q = QueryBuilder::new(format!(
                "INSERT INTO {} (model_version, customer_id, {}) ",
                spec.name,
                spec.columns.join(", ")
            ));
            q.push_values(chunk, |mut sep, row| {
                sep.push_bind(model_version);
                sep.push_bind(row.customer_id.clone());
                for v in &row.values {
                    push_value!(sep, v);
                }
            });
            q.build().execute(&mut **self).await?;
        }
        Ok(())
    }

    async fn insert_states(
        &mut self,
        model_version: i64,
        states: &[StateRow],
    ) -> Result<(), sqlx::Error> {
        for chunk in states.chunks(2_000) {
            let mut q = QueryBuilder::new(
                "INSERT INTO customer_state (model_version, customer_id, last_occurred_us, due_us, state) ",
            );
            q.push_values(chunk, |mut sep, s| {
                sep.push_bind(model_version);
                sep.push_bind(s.customer_id.clone());
                sep.push_bind(s.last_occurred_us);
                sep.push_bind(s.due_us);
                sep.push_bind(s.state.clone());
            });
            q.build().execute(&mut **self).await?;
        }
        Ok(())
    }
}

impl BulkInsert for sqlx::Transaction<'_, sqlx::Postgres> {
    async fn insert_rows(
        &mut self,
        model_version: i64,
        spec: &TableSpec,
        rows: &[&Row],
    ) -> Result<(), sqlx::Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut copy = super::bulk::BinaryCopy::new(spec.columns.len() + 2);
        for row in rows {
            copy.row();
            copy.int(model_version);
            copy.text(&row.customer_id);
            for v in &row.values {
                copy.value(v);
            }
        }
        let columns = format!(
            "{} (model_version, customer_id, {})",
            spec.name,
            spec.columns.join(", ")
        );
        copy.send(self, &columns).await
    }

    async fn insert_states(
        &mut self,
        model_version: i64,
        states: &[StateRow],
    ) -> Result<(), sqlx::Error> {
        if states.is_empty() {
            return Ok(());
        }
        let mut copy = super::bulk::BinaryCopy::new(5);
        for s in states {
            copy.row();
            copy.int(model_version);
            copy.text(&s.customer_id);
            copy.int(s.last_occurred_us);
            copy.opt_int(s.due_us);
            copy.bytes(&s.state);
        }
        copy.send(
            self,
            "customer_state (model_version, customer_id, last_occurred_us, due_us, state)",
        )
        .await
    }
}

fn version_info<R: sqlx::Row>(r: &R) -> Result<VersionInfo, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    i64: sqlx::Type<R::Database> + for<'a> sqlx::Decode<'a, R::Database>,
    i32: sqlx::Type<R::Database> + for<'a> sqlx::Decode<'a, R::Database>,
    Option<i64>: sqlx::Type<R::Database> + for<'a> sqlx::Decode<'a, R::Database>,
    String: sqlx::Type<R::Database> + for<'a> sqlx::Decode<'a, R::Database>,
{
    Ok(VersionInfo {
        model_version: r.try_get(0)?,
        status: r.try_get(1)?,
        rules_id: r.try_get(2)?,
        rules_hash: r.try_get(3)?,
        rules_json: r.try_get(4)?,
        checkpoint: r.try_get(5)?,
        events_applied: r.try_get(6)?,
        state_format: r
            .try_get::<i64, _>(7)
            .or_else(|_| r.try_get::<i32, _>(7).map(i64::from))?,
        clock_us: r.try_get(8)?,
        watermark_us: r.try_get(9)?,
        rebuild_head: r.try_get(10)?,
    })
}

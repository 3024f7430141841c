//! Events an ingestion source holds back: recorded at `release_at` unless an
//! order of the same customer arrives first (the cart-abandonment rule of
//! the Segment mapping: a `Checkout Started` with no `Order Completed`
//! within an hour is an abandoned cart).
//!
//! The rows live beside the events (table `ingest_held_events`, SQLite or
//! PostgreSQL) so a restart loses none. Releasing is idempotent: a released
//! event keeps the id it was given when held, so a crash between the append
//! and the delete, or two servers releasing the same row, stores it once.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgPool;
use sqlx::sqlite::{SqliteJournalMode, SqlitePool};
use uuid::Uuid;

use crate::domain::CustomerId;
use crate::store::StoreError;

/// One held event.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldEvent {
    /// The id it will be stored with.
    pub event_id: Uuid,
    /// Whose.
    pub customer: CustomerId,
    /// When the message says it happened.
    pub occurred_at: DateTime<Utc>,
    /// When it is recorded unless an order comes first.
    pub release_at: DateTime<Utc>,
    /// Ledger event type.
    pub event_type: String,
    /// Payload JSON (current schema version).
    pub payload: String,
    /// Metadata JSON.
    pub metadata: String,
    /// Channel to register the customer with, if they are new by then.
    pub channel: String,
}

#[derive(Clone)]
enum Table {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The held-events table of a SQL store.
#[derive(Clone)]
pub struct HeldEvents {
    table: Table,
}

const COLUMNS: &str =
    "event_id, customer_id, occurred_us, release_us, event_type, payload, metadata, channel";

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn instant(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

impl HeldEvents {
    /// Opens the table of the store at `url`; `None` for stores without
    /// SQL (EventStoreDB), where holding mappings are refused.
    pub async fn open_if_supported(url: &str) -> Result<Option<Self>, StoreError> {
        let table = if url.starts_with("sqlite:") {
            let options = crate::store::sqlite::connect_options(url)?
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10));
            let pool = crate::store::pool_options::<sqlx::Sqlite>()
                .max_connections(1)
                .connect_with(options)
                .await?;
            crate::store::sqlite::migrate(&pool).await?;
            Table::Sqlite(pool)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = crate::store::pool_options::<sqlx::Postgres>()
                .max_connections(2)
                .connect(url)
                .await?;
            crate::store::postgres::MIGRATOR.run(&pool).await?;
            Table::Postgres(pool)
        } else {
            return Ok(None);
        };
        Ok(Some(Self { table }))
    }

    /// Holds `events`; one already held (same id) is left as it is.
    pub async fn hold(&self, events: &[HeldEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        macro_rules! insert {
            ($pool:expr, $db:ty) => {{
                let mut tx = $pool.begin().await?;
                for chunk in events.chunks(500) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(format!(
                        "INSERT INTO ingest_held_events ({COLUMNS}) "
                    ));
                    q.push_values(chunk, |mut row, e| {
                        row.push_bind(e.event_id.to_string())
                            .push_bind(e.customer.as_str().to_owned())
                            .push_bind(micros(e.occurred_at))
                            .push_bind(micros(e.release_at))
                            .push_bind(e.event_type.clone())
                            .push_bind(e.payload.clone())
                            .push_bind(e.metadata.clone())
                            .push_bind(e.channel.clone());
                    });
                    q.push(" ON CONFLICT (event_id) DO NOTHING");
                    q.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }};
        }
        match &self.table {
            Table::Sqlite(pool) => insert!(pool, sqlx::Sqlite),
            Table::Postgres(pool) => insert!(pool, sqlx::Postgres),
        }
        Ok(())
    }

    /// Orders of customers at instants: settles the held events they
    /// cancel (held at or before the order and not yet due by then), in one
    /// transaction, after one read that usually finds nothing to settle.
    /// Returns how many were settled.
    pub async fn settle(&self, orders: &[(CustomerId, DateTime<Utc>)]) -> Result<u64, StoreError> {
        if orders.is_empty() {
            return Ok(0);
        }
        let now = micros(Utc::now());
        macro_rules! settle {
            ($pool:expr, $db:ty, $update:literal) => {{
                let mut probe = sqlx::QueryBuilder::<$db>::new(
                    "SELECT COUNT(*) FROM ingest_held_events WHERE done_us IS NULL AND customer_id IN (",
                );
                let mut list = probe.separated(", ");
                for (customer, _) in orders {
                    list.push_bind(customer.as_str().to_owned());
                }
                probe.push(")");
                let pending: i64 = probe.build_query_scalar().fetch_one($pool).await?;
                if pending == 0 {
                    return Ok(0);
                }
                let mut tx = $pool.begin().await?;
                let mut settled = 0;
                for (customer, at) in orders {
                    settled += sqlx::query($update)
                        .bind(customer.as_str())
                        .bind(micros(*at))
                        .bind(now)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
                tx.commit().await?;
                settled
            }};
        }
        Ok(match &self.table {
            Table::Sqlite(pool) => settle!(
                pool,
                sqlx::Sqlite,
                "UPDATE ingest_held_events SET done_us = ?3 \
                 WHERE customer_id = ?1 AND occurred_us <= ?2 AND release_us > ?2 \
                 AND done_us IS NULL"
            ),
            Table::Postgres(pool) => settle!(
                pool,
                sqlx::Postgres,
                "UPDATE ingest_held_events SET done_us = $3 \
                 WHERE customer_id = $1 AND occurred_us <= $2 AND release_us > $2 \
                 AND done_us IS NULL"
            ),
        })
    }

    /// Held events due at `now`, oldest release first, at most `limit`.
    pub async fn due(&self, now: DateTime<Utc>, limit: i64) -> Result<Vec<HeldEvent>, StoreError> {
        let sql = |p: [&str; 2]| {
            format!(
                "SELECT {COLUMNS} FROM ingest_held_events \
                 WHERE release_us <= {} AND done_us IS NULL \
                 ORDER BY release_us, event_id LIMIT {}",
                p[0], p[1]
            )
        };
        macro_rules! due {
            ($pool:expr, $params:expr) => {
                sqlx::query(&sql($params))
                    .bind(micros(now))
                    .bind(limit)
                    .fetch_all($pool)
                    .await?
                    .into_iter()
                    .map(|r| row_of(&r))
                    .collect::<Result<Vec<_>, _>>()?
            };
        }
        let rows = match &self.table {
            Table::Sqlite(pool) => due!(pool, ["?1", "?2"]),
            Table::Postgres(pool) => due!(pool, ["$1", "$2"]),
        };
        Ok(rows)
    }

    /// Marks events released, and forgets rows done for over a week (a
    /// resend of their message after that would be held again).
    pub async fn mark_released(&self, ids: &[Uuid]) -> Result<(), StoreError> {
        let now = micros(Utc::now());
        let week_ago = now - 7 * 24 * 3600 * 1_000_000;
        macro_rules! mark {
            ($pool:expr, $update:literal, $prune:literal) => {{
                let mut tx = $pool.begin().await?;
                for id in ids {
                    sqlx::query($update)
                        .bind(now)
                        .bind(id.to_string())
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query($prune).bind(week_ago).execute(&mut *tx).await?;
                tx.commit().await?;
            }};
        }
        match &self.table {
            Table::Sqlite(pool) => mark!(
                pool,
                "UPDATE ingest_held_events SET done_us = ?1 WHERE event_id = ?2 AND done_us IS NULL",
                "DELETE FROM ingest_held_events WHERE done_us < ?1"
            ),
            Table::Postgres(pool) => mark!(
                pool,
                "UPDATE ingest_held_events SET done_us = $1 WHERE event_id = $2 AND done_us IS NULL",
                "DELETE FROM ingest_held_events WHERE done_us < $1"
            ),
        }
        Ok(())
    }

    /// How many events are held and not yet settled or released.
    pub async fn count(&self) -> Result<i64, StoreError> {
        let sql = "SELECT COUNT(*) FROM ingest_held_events WHERE done_us IS NULL";
        Ok(match &self.table {
            Table::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
            Table::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
        })
    }
}

fn row_of<R>(row: &R) -> Result<HeldEvent, StoreError>
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let corrupt = |reason: String| StoreError::Backend {
        backend: "ingest_held_events",
        message: reason,
    };
    let id: String = row.try_get("event_id")?;
    let customer: String = row.try_get("customer_id")?;
    Ok(HeldEvent {
        event_id: id
            .parse()
            .map_err(|e| corrupt(format!("event_id {id:?}: {e}")))?,
        customer: CustomerId::parse(&customer).map_err(|e| corrupt(e.to_string()))?,
        occurred_at: instant(row.try_get("occurred_us")?),
        release_at: instant(row.try_get("release_us")?),
        event_type: row.try_get("event_type")?,
        payload: row.try_get("payload")?,
        metadata: row.try_get("metadata")?,
        channel: row.try_get("channel")?,
    })
}

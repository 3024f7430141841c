//! Read-model versions: what each holds, and dropping the old ones.
//!
//! Every rebuild writes a full new version beside the active one, so
//! without garbage collection the database grows by a version per rebuild.
//! After a switch the runner keeps the active version and the ones before
//! it up to `keep_versions` (default 2: the active one and the previous,
//! to compare with), and deletes the rest with their rows and states. A
//! retired version that is kept keeps its read-model rows but loses its
//! fold states: states exist only to fold further events, and nothing
//! folds into a retired version (a third of a version's bytes on CDNOW).
//! Deletion goes customer range by customer range, each range one short
//! transaction, so it never holds SQLite's write lock for long. Afterwards
//! PostgreSQL's tables are vacuumed so the space is reused, and a SQLite
//! file in incremental auto-vacuum mode gives the freed pages back.

use serde::Serialize;
use sqlx::Row as _;

use super::bulk::CustomerRange;
use super::state::Folds;
use super::storage::{both, ReadModelDb, StorageError, VersionInfo, VersionStatus};
use super::TableSpec;

/// Customers per deletion transaction.
const PRUNE_CUSTOMERS: i64 = 5_000;

/// The table of fold states, one row per customer and version.
const STATES_TABLE: &str = "customer_state";

/// The table with one row per customer of a version (states are dropped
/// from retired versions, so they do not count them).
const CUSTOMERS_TABLE: &str = "lifecycle_customers";

/// A version's size.
#[derive(Debug, Clone, Serialize)]
pub struct VersionSize {
    /// The version.
    pub model_version: i64,
    /// Its status.
    pub status: String,
    /// Its rules id.
    pub rules_id: String,
    /// Customers in its read models.
    pub customers: i64,
    /// Rows in read-model tables, states included.
    pub rows: i64,
    /// Estimated bytes on disk: each table's size times the version's share
    /// of its rows.
    pub bytes: i64,
    /// The log position it is complete through.
    pub checkpoint: i64,
}

/// Every table of a version (read models and states).
fn version_tables(folds: &Folds) -> Vec<String> {
    let mut tables: Vec<String> = folds
        .tables()
        .iter()
        .map(|t: &TableSpec| t.name.to_owned())
        .collect();
    tables.push(STATES_TABLE.into());
    tables
}

impl ReadModelDb {
    /// The average size of a version's stored states, bytes.
    pub async fn average_state_bytes(&self, model_version: i64) -> Result<f64, StorageError> {
        Ok(match self {
            ReadModelDb::Sqlite(pool) => sqlx::query_scalar::<_, Option<f64>>(
                "SELECT AVG(LENGTH(state)) FROM customer_state WHERE model_version = $1",
            )
            .bind(model_version)
            .fetch_one(pool)
            .await?,
            ReadModelDb::Postgres(pool) => sqlx::query_scalar::<_, Option<f64>>(
                "SELECT AVG(OCTET_LENGTH(state))::float8 FROM customer_state WHERE model_version = $1",
            )
            .bind(model_version)
            .fetch_one(pool)
            .await?,
        }
        .unwrap_or(0.0))
    }

    /// Sizes of every version, newest first.
    pub async fn version_sizes(&self, folds: &Folds) -> Result<Vec<VersionSize>, StorageError> {
        let versions = self.versions().await?;
        let tables = version_tables(folds);
        // Per table: rows per version and the table's bytes.
        let mut per_table: Vec<(Vec<(i64, i64)>, i64)> = Vec::new();
        for table in &tables {
            let counts = self.rows_per_version(table).await?;
            let bytes = self.table_bytes(table).await?;
            per_table.push((counts, bytes));
        }
        let mut out = Vec::with_capacity(versions.len());
        for v in &versions {
            let (mut rows, mut bytes) = (0i64, 0f64);
            let mut customers = 0;
            for ((counts, table_bytes), name) in per_table.iter().zip(&tables) {
                let total: i64 = counts.iter().map(|(_, n)| n).sum();
                let mine = counts
                    .iter()
                    .find(|(version, _)| *version == v.model_version)
                    .map_or(0, |(_, n)| *n);
                if name == CUSTOMERS_TABLE {
                    customers = mine;
                }
                rows += mine;
                if total > 0 {
                    bytes += *table_bytes as f64 * mine as f64 / total as f64;
                }
            }
            out.push(VersionSize {
                model_version: v.model_version,
                status: v.status.clone(),
                rules_id: v.rules_id.clone(),
                customers,
                rows,
                bytes: bytes.round() as i64,
                checkpoint: v.checkpoint,
            });
        }
        Ok(out)
    }

    async fn rows_per_version(&self, table: &str) -> Result<Vec<(i64, i64)>, StorageError> {
        let sql = format!("SELECT model_version, COUNT(*) FROM {table} GROUP BY model_version");
        Ok(both!(self, pool => sqlx::query_as(&sql).fetch_all(pool).await?))
    }

    async fn table_bytes(&self, table: &str) -> Result<i64, StorageError> {
        Ok(match self {
            // dbstat is compiled into the bundled SQLite; 0 where it is not.
            ReadModelDb::Sqlite(pool) => sqlx::query_scalar::<_, i64>(
                "SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE name = $1 \
                 OR name IN (SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = $1)",
            )
            .bind(table)
            .fetch_one(pool)
            .await
            .unwrap_or(0),
            ReadModelDb::Postgres(pool) => {
                sqlx::query_scalar::<_, i64>("SELECT pg_total_relation_size($1::regclass)")
                    .bind(table)
                    .fetch_one(pool)
                    .await?
            }
        })
    }

    /// The versions to drop to keep the active one and the `keep - 1`
    /// newest retired ones: older retired versions and every abandoned one.
    /// Building versions (a rebuild in progress or to resume) stay.
    pub async fn versions_to_prune(&self, keep: usize) -> Result<Vec<VersionInfo>, StorageError> {
        let versions = self.versions().await?;
        let keep_retired = keep.saturating_sub(1);
        let mut retired_kept = 0;
        let mut prune = Vec::new();
        for v in versions {
            match v.status.as_str() {
                "retired" if retired_kept < keep_retired => retired_kept += 1,
                "retired" | "abandoned" => prune.push(v),
                _ => {}
            }
        }
        Ok(prune)
    }

    /// Deletes a version's rows, states, partitions and its entry.
    pub async fn drop_version(
        &self,
        folds: &Folds,
        model_version: i64,
    ) -> Result<u64, StorageError> {
        let tables = version_tables(folds);
        let deleted = self
            .delete_customer_rows(&tables, CUSTOMERS_TABLE, model_version)
            .await?;
        both!(self, pool => {
            let mut tx = pool.begin().await?;
            for sql in [
                "DELETE FROM projection_partitions WHERE model_version = $1",
                "DELETE FROM value_tier_bounds WHERE model_version = $1",
                "DELETE FROM projection_versions WHERE model_version = $1",
            ] {
                sqlx::query(sql).bind(model_version).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(deleted)
    }

    /// Deletes a retired version's fold states, keeping its read models.
    pub async fn drop_states(&self, model_version: i64) -> Result<u64, StorageError> {
        let tables = [STATES_TABLE.to_owned()];
        self.delete_customer_rows(&tables, STATES_TABLE, model_version)
            .await
    }

    /// Deletes a version's rows from `tables`, customer range by customer
    /// range, each range `PRUNE_CUSTOMERS` rows of `ranges_from`; the ranges
    /// are contiguous, so rows of customers `ranges_from` lacks go too.
    async fn delete_customer_rows(
        &self,
        tables: &[String],
        ranges_from: &str,
        model_version: i64,
    ) -> Result<u64, StorageError> {
        let mut deleted = 0u64;
        let mut after = String::new();
        // Rows of customers past the last range go with the last statement.
        loop {
            let through: Option<String> = self
                .customer_at_offset(ranges_from, model_version, &after, PRUNE_CUSTOMERS)
                .await?;
            deleted += self
                .delete_range(tables, model_version, &after, through.as_deref())
                .await?;
            match through {
                Some(t) => after = t,
                None => break,
            }
        }
        Ok(deleted)
    }

    /// The customer `n` places after `after` among the version's rows of
    /// `table` (None when fewer are left).
    async fn customer_at_offset(
        &self,
        table: &str,
        model_version: i64,
        after: &str,
        n: i64,
    ) -> Result<Option<String>, StorageError> {
        let sql = format!(
            "SELECT customer_id FROM {table} WHERE model_version = $1 \
             AND customer_id > $2 ORDER BY customer_id LIMIT 1 OFFSET $3"
        );
        Ok(both!(self, pool => {
            sqlx::query(&sql)
                .bind(model_version)
                .bind(after)
                .bind(n - 1)
                .fetch_optional(pool)
                .await?
                .map(|r| r.try_get::<String, _>(0))
                .transpose()?
        }))
    }

    /// Deletes the rows of customers in `(after, through]` (to the end when
    /// `through` is `None`) from every table, in one transaction.
    async fn delete_range(
        &self,
        tables: &[String],
        model_version: i64,
        after: &str,
        through: Option<&str>,
    ) -> Result<u64, StorageError> {
        let range = CustomerRange {
            after: Some(after.to_owned()),
            through: through.map(str::to_owned),
        };
        let (after, through) = range.bounds();
        Ok(both!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut deleted = 0;
            for table in tables {
                let sql = format!(
                    "DELETE FROM {table} WHERE model_version = $1 AND customer_id > $2 \
                     AND customer_id <= $3"
                );
                deleted += sqlx::query(&sql)
                    .bind(model_version)
                    .bind(after)
                    .bind(through)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            tx.commit().await?;
            deleted
        }))
    }

    /// After deletions: lets PostgreSQL reuse the space (autovacuum may be
    /// off); gives a SQLite file's freed pages back to the file system
    /// where the file allows it (otherwise SQLite reuses them).
    pub async fn reclaim(&self, folds: &Folds) -> Result<(), StorageError> {
        match self {
            ReadModelDb::Postgres(pool) => {
                for table in version_tables(folds) {
                    sqlx::query(&format!("VACUUM {table}"))
                        .execute(pool)
                        .await?;
                }
            }
            ReadModelDb::Sqlite(pool) => {
                let pages = crate::store::sqlite::reclaim_free_pages(pool).await?;
                tracing::debug!(pages, "free pages returned to the file system");
            }
        }
        Ok(())
    }
}

/// What a prune did.
#[derive(Debug, Clone, Serialize)]
pub struct Pruned {
    /// Versions dropped.
    pub versions: Vec<i64>,
    /// Retired versions kept whose fold states were dropped.
    pub states_dropped: Vec<i64>,
    /// Rows deleted.
    pub rows: u64,
}

/// Drops the versions beyond `keep` (see [`ReadModelDb::versions_to_prune`]).
pub async fn prune(db: &ReadModelDb, folds: &Folds, keep: usize) -> Result<Pruned, StorageError> {
    let mut pruned = Pruned {
        versions: Vec::new(),
        states_dropped: Vec::new(),
        rows: 0,
    };
    for version in db.versions_to_prune(keep.max(1)).await? {
        pruned.rows += db.drop_version(folds, version.model_version).await?;
        pruned.versions.push(version.model_version);
        tracing::info!(
            model_version = version.model_version,
            "read-model version dropped"
        );
    }
    for version in db.versions().await? {
        if version.status == VersionStatus::Retired.as_str() {
            let states = db.drop_states(version.model_version).await?;
            if states > 0 {
                pruned.rows += states;
                pruned.states_dropped.push(version.model_version);
                tracing::info!(
                    model_version = version.model_version,
                    states,
                    "fold states of a retired version dropped"
                );
            }
        }
    }
    if !pruned.versions.is_empty() || !pruned.states_dropped.is_empty() {
        db.reclaim(folds).await?;
    }
    Ok(pruned)
}

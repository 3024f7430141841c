//! The live feed: stage changes and alerts in the order the projector
//! committed them, kept in the read-model database (`live_feed`).
//!
//! Why a table and not only an in-process channel: several servers share
//! one read-model database, and only one of them (the projector, see
//! [`super::leadership`]) folds events. Subscribers connect to any of
//! them. The projector writes each batch's new transitions and alerts into
//! `live_feed` in the batch's own transaction (so a row exists exactly when
//! its read-model change does), sends them to its own subscribers at once,
//! and every other server tails the table ([`FeedTail`]) and sends what it
//! did not write itself. Rows carry the writer's fencing epoch for that.

use chrono::{DateTime, Utc};

use super::lifecycle::Stage;
use super::storage::{both, ReadModelDb, StorageError};
use super::{Row, Value};

/// How long feed rows are kept: a server that was paused longer than this
/// has missed them (subscriptions are "from now on", not a replay log).
pub const FEED_RETENTION: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// One change a subscriber hears of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedItem {
    /// A customer moved to another lifecycle stage.
    Stage {
        /// Customer.
        customer_id: String,
        /// The stage left (none for a first stage).
        from: Option<String>,
        /// The stage entered.
        to: String,
        /// When the change took effect.
        at: DateTime<Utc>,
    },
    /// A churn alert was raised.
    Alert {
        /// Customer.
        customer_id: String,
        /// The alert rule.
        kind: String,
        /// Its explanation.
        message: String,
        /// When it was raised.
        at: DateTime<Utc>,
    },
}

impl FeedItem {
    /// The feed items among a batch's new history rows
    /// (`lifecycle_transitions`: seq, from_stage, to_stage, at_us, … with
    /// stages as codes; `churn_alerts`: seq, rule, at_us, event_ids,
    /// detail).
    pub fn from_history(rows: &[Row]) -> Vec<FeedItem> {
        rows.iter()
            .filter_map(|row| {
                let v = &row.values;
                match row.table {
                    "lifecycle_transitions" => Some(FeedItem::Stage {
                        customer_id: row.customer_id.clone(),
                        from: stage(v.get(1)?),
                        to: stage(v.get(2)?)?,
                        at: instant(v.get(3)?)?,
                    }),
                    "churn_alerts" => Some(FeedItem::Alert {
                        customer_id: row.customer_id.clone(),
                        kind: text(v.get(1)?)?,
                        message: v.get(4).and_then(text).unwrap_or_default(),
                        at: instant(v.get(2)?)?,
                    }),
                    _ => None,
                }
            })
            .collect()
    }

    /// The row's columns: kind, customer, from_stage, to_stage, message, at.
    pub(crate) fn columns(
        &self,
    ) -> (
        &'static str,
        &str,
        Option<&str>,
        Option<&str>,
        Option<&str>,
        i64,
    ) {
        match self {
            FeedItem::Stage {
                customer_id,
                from,
                to,
                at,
            } => (
                "stage",
                customer_id,
                from.as_deref(),
                Some(to),
                None,
                at.timestamp_micros(),
            ),
            FeedItem::Alert {
                customer_id,
                kind,
                message,
                at,
            } => (
                "alert",
                customer_id,
                None,
                Some(kind),
                Some(message),
                at.timestamp_micros(),
            ),
        }
    }

    fn from_columns(
        kind: &str,
        customer_id: String,
        from: Option<String>,
        to: Option<String>,
        message: Option<String>,
        at_us: i64,
    ) -> Option<FeedItem> {
        let at = DateTime::from_timestamp_micros(at_us)?;
        match kind {
            "stage" => Some(FeedItem::Stage {
                customer_id,
                from,
                to: to?,
                at,
            }),
            "alert" => Some(FeedItem::Alert {
                customer_id,
                kind: to?,
                message: message.unwrap_or_default(),
                at,
            }),
            _ => None,
        }
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::Text(t) => Some(t.clone()),
        _ => None,
    }
}

/// A stage name from a history row's stage code.
fn stage(value: &Value) -> Option<String> {
    match value {
        Value::Int(code) => Stage::from_code(*code).map(|s| s.as_str().to_owned()),
        _ => None,
    }
}

fn instant(value: &Value) -> Option<DateTime<Utc>> {
    match value {
        Value::Int(us) => DateTime::from_timestamp_micros(*us),
        _ => None,
    }
}

/// A feed row as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEntry {
    /// Position in the feed.
    pub id: i64,
    /// The fencing epoch of the projector that wrote it.
    pub epoch: i64,
    /// The read-model version it belongs to.
    pub model_version: i64,
    /// The change.
    pub item: FeedItem,
}

type FeedRecord = (
    i64,
    i64,
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
);

impl ReadModelDb {
    /// The newest feed id (0 when the feed is empty): a server tails from
    /// here, as subscriptions start "from now on".
    pub async fn feed_head(&self) -> Result<i64, StorageError> {
        Ok(both!(self, pool => {
            sqlx::query_scalar::<_, Option<i64>>("SELECT MAX(id) FROM live_feed")
                .fetch_one(pool)
                .await?
        })
        .unwrap_or(0))
    }

    /// Up to `limit` feed entries after `after`, in order.
    pub async fn feed_after(&self, after: i64, limit: i64) -> Result<Vec<FeedEntry>, StorageError> {
        const SQL: &str =
            "SELECT id, epoch, model_version, kind, customer_id, from_stage, to_stage, \
                           message, at_us FROM live_feed WHERE id > $1 ORDER BY id LIMIT $2";
        let records: Vec<FeedRecord> = both!(self, pool => {
            sqlx::query_as(SQL).bind(after).bind(limit).fetch_all(pool).await?
        });
        Ok(records
            .into_iter()
            .filter_map(
                |(id, epoch, model_version, kind, customer, from, to, message, at_us)| {
                    let item = FeedItem::from_columns(&kind, customer, from, to, message, at_us)?;
                    Some(FeedEntry {
                        id,
                        epoch,
                        model_version,
                        item,
                    })
                },
            )
            .collect())
    }

    /// Drops feed rows recorded before `before_us`.
    pub async fn prune_feed(&self, before_us: i64) -> Result<u64, StorageError> {
        Ok(both!(self, pool => {
            sqlx::query("DELETE FROM live_feed WHERE recorded_us < $1")
                .bind(before_us)
                .execute(pool)
                .await?
                .rows_affected()
        }))
    }
}

/// Reads the feed forward from where it started, skipping what the local
/// projector wrote (it sent those to its subscribers itself).
pub struct FeedTail {
    db: ReadModelDb,
    after: i64,
}

impl FeedTail {
    /// Tails from the current end of the feed.
    pub async fn from_now(db: ReadModelDb) -> Result<Self, StorageError> {
        let after = db.feed_head().await?;
        Ok(Self { db, after })
    }

    /// The entries committed since the last call, except those whose
    /// epoch `own` says this process wrote.
    pub async fn next_entries(
        &mut self,
        own: impl Fn(i64) -> bool,
    ) -> Result<Vec<FeedEntry>, StorageError> {
        let mut out = Vec::new();
        loop {
            let entries = self.db.feed_after(self.after, 1_000).await?;
            let Some(last) = entries.last() else { break };
            self.after = last.id;
            let full = entries.len() == 1_000;
            out.extend(entries.into_iter().filter(|e| !own(e.epoch)));
            if !full {
                break;
            }
        }
        Ok(out)
    }
}

//! Value tiers as of past instants without replaying the log.
//!
//! A value tier ranks every customer's revenue, so a customer's tier as
//! of an instant before the version's population snapshot used to need
//! every customer's revenue then: a replay of the whole log per query
//! (minutes at a million customers). But the ranking (revenue descending,
//! ties by customer id) gives the high tier a prefix and the mid tier the
//! stretch after it, so two keys decide every customer's tier: the last
//! high customer and the last mid customer, each as (revenue, id). With
//! those kept per month end, a customer's tier as of any instant is their
//! own revenue at the month end at or before it compared with two keys:
//! per-customer work, like the rest of the view.
//!
//! The keys of a month end are computed on first use from the version's
//! `customer_months` rows (revenue per customer and month, the same sums
//! as the lifecycle's revenue) and stored in `value_tier_bounds`; a live
//! batch that folds an event which occurred at or before a stored instant
//! drops the keys from that instant on, in its own transaction
//! ([`super::storage::ReadModelDb::commit_batch`]), so a late event never
//! leaves a stale tier behind.

use std::cmp::Ordering;

use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};

use super::cohorts::YearMonth;
use super::lifecycle::{TierCut, ValueTier, ValueTierCuts};
use super::rules::LifecycleRules;
use super::storage::{both, ReadModelDb, StorageError};

/// Drops a version's (`$1`) bounds from an instant (`$2`, µs) on: run by
/// every live batch with its earliest event's `occurred_at`, on both
/// commit paths.
pub(crate) const DROP_STALE_SQL: &str =
    "DELETE FROM value_tier_bounds WHERE model_version = $1 AND as_of_us >= $2";

/// One end of a tier: the last customer in it, in ranking order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierEnd {
    /// Their revenue (minor units, lifecycle currency).
    pub revenue_minor: i64,
    /// Their id.
    pub customer_id: String,
}

impl TierEnd {
    /// Whether a customer with `revenue_minor` and `customer_id` ranks at
    /// or before this end (more revenue, or as much and an id not after).
    fn reaches(&self, revenue_minor: i64, customer_id: &str) -> bool {
        match revenue_minor.cmp(&self.revenue_minor) {
            Ordering::Greater => true,
            Ordering::Less => false,
            Ordering::Equal => customer_id <= self.customer_id.as_str(),
        }
    }
}

/// The keys deciding every customer's value tier as of one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierBounds {
    /// The instant (the last microsecond of a month).
    pub as_of: DateTime<Utc>,
    /// The last high-tier customer (none when nobody has revenue).
    pub high: Option<TierEnd>,
    /// The last mid-tier customer (none when the tier is empty).
    pub mid: Option<TierEnd>,
}

impl TierBounds {
    /// The bounds of a population given as `(customer id, revenue)` in any
    /// order, ranked as [`ValueTierCuts`] ranks them.
    pub fn rank(
        rules: &LifecycleRules,
        as_of: DateTime<Utc>,
        mut revenues: Vec<(String, i64)>,
    ) -> Self {
        revenues.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let cuts = ValueTierCuts::rank(rules, revenues.iter().map(|(_, r)| *r).collect());
        // A tier ends at the `ties`-th customer, in id order, of those with
        // the cut's revenue.
        let end_at = |cut: TierCut| {
            let nth = cut
                .ties
                .checked_sub(1)
                .and_then(|n| usize::try_from(n).ok())
                .expect("a cut ends at a customer");
            revenues
                .iter()
                .filter(|(_, revenue)| *revenue == cut.revenue_minor)
                .nth(nth)
                .map(|(id, revenue)| TierEnd {
                    revenue_minor: *revenue,
                    customer_id: id.clone(),
                })
        };
        Self {
            as_of,
            high: cuts.high().and_then(end_at),
            mid: cuts.mid().and_then(end_at),
        }
    }

    /// The tier of a customer whose revenue as of [`TierBounds::as_of`]
    /// was `revenue_minor`.
    pub fn tier_of(&self, revenue_minor: i64, customer_id: &str) -> ValueTier {
        if revenue_minor <= 0 {
            return ValueTier::Low;
        }
        let within = |end: &Option<TierEnd>| {
            end.as_ref()
                .is_some_and(|e| e.reaches(revenue_minor, customer_id))
        };
        if within(&self.high) {
            ValueTier::High
        } else if within(&self.mid) {
            ValueTier::Mid
        } else {
            ValueTier::Low
        }
    }
}

/// The last month end at or before `at`: the last microsecond of the month
/// before `at`'s, or `at` itself when it is the last microsecond of its
/// month. Tiers as of any instant are answered as of this one.
pub fn month_end_at_or_before(at: DateTime<Utc>) -> DateTime<Utc> {
    let next = at + Duration::microseconds(1);
    let month_start = Utc
        .with_ymd_and_hms(next.year(), next.month(), 1, 0, 0, 0)
        .single()
        .expect("the first of a month at midnight exists in UTC");
    month_start - Duration::microseconds(1)
}

/// Where a process gets bounds: stored ones, else computed one month end
/// at a time (the requests that need a month end at once wait for one
/// computation instead of each scanning the version), and stored through
/// `writer`, since the pool queries read from may be read-only.
#[derive(Default)]
pub struct TierBoundsCache {
    writer: Option<ReadModelDb>,
    computing: tokio::sync::Mutex<()>,
}

impl TierBoundsCache {
    /// Bounds stored through `writer` (`None`: through the reader, best
    /// effort).
    pub fn new(writer: Option<ReadModelDb>) -> Self {
        Self {
            writer,
            computing: tokio::sync::Mutex::new(()),
        }
    }

    /// The bounds of `model_version` as of `as_of` (a month end): stored, or
    /// computed from its `customer_months` rows and stored for the next
    /// query.
    pub async fn bounds_as_of(
        &self,
        reader: &ReadModelDb,
        model_version: i64,
        rules: &LifecycleRules,
        as_of: DateTime<Utc>,
    ) -> Result<TierBounds, StorageError> {
        if let Some(stored) = stored_bounds(reader, model_version, as_of).await? {
            return Ok(stored);
        }
        let _one_at_a_time = self.computing.lock().await;
        if let Some(stored) = stored_bounds(reader, model_version, as_of).await? {
            return Ok(stored);
        }
        let db = self.writer.as_ref().unwrap_or(reader);
        compute_and_store(db, model_version, rules, as_of).await
    }
}

/// Computes the bounds from `customer_months` and stores them. Storing is
/// best effort: a read-only database, or a batch committed meanwhile
/// (SQLite refuses the write then), leaves the computed bounds unstored but
/// still right for the rows they were computed from.
async fn compute_and_store(
    db: &ReadModelDb,
    model_version: i64,
    rules: &LifecycleRules,
    as_of: DateTime<Utc>,
) -> Result<TierBounds, StorageError> {
    let through = YearMonth::of(as_of).to_string();
    // Revenue per customer through the month, with a checked sum (SQLite
    // raises an error on overflow; PostgreSQL's cast to BIGINT does).
    const REVENUES: &str = "SELECT customer_id, CAST(SUM(revenue_minor) AS BIGINT) \
         FROM customer_months WHERE model_version = $1 AND month <= $2 GROUP BY customer_id";
    const INSERT: &str = "INSERT INTO value_tier_bounds (model_version, as_of_us, \
         high_revenue_minor, high_customer_id, mid_revenue_minor, mid_customer_id) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (model_version, as_of_us) DO NOTHING";
    let as_of_us = as_of.timestamp_micros();
    both!(db, pool => {
        let mut tx = pool.begin().await?;
        // On PostgreSQL, wait for a batch in flight and keep the next one
        // (which updates this row first) from dropping stale bounds before
        // these are stored; SQLite's single writer gives the same order.
        tx.lock_version(model_version).await?;
        let revenues: Vec<(String, i64)> = sqlx::query_as(REVENUES)
            .bind(model_version)
            .bind(&through)
            .fetch_all(&mut *tx)
            .await?;
        let bounds = TierBounds::rank(rules, as_of, revenues);
        let stored = sqlx::query(INSERT)
            .bind(model_version)
            .bind(as_of_us)
            .bind(bounds.high.as_ref().map(|e| e.revenue_minor))
            .bind(bounds.high.as_ref().map(|e| e.customer_id.clone()))
            .bind(bounds.mid.as_ref().map(|e| e.revenue_minor))
            .bind(bounds.mid.as_ref().map(|e| e.customer_id.clone()))
            .execute(&mut *tx)
            .await;
        match stored {
            Ok(_) => tx.commit().await?,
            Err(e) => tracing::debug!(error = %e, "value-tier bounds not stored"),
        }
        Ok(bounds)
    })
}

/// Takes a share lock on the version's row (PostgreSQL; nothing to do on
/// SQLite, whose writers are serialized by the database).
trait LockVersion {
    async fn lock_version(&mut self, model_version: i64) -> Result<(), sqlx::Error>;
}

impl LockVersion for sqlx::Transaction<'_, sqlx::Sqlite> {
    async fn lock_version(&mut self, _model_version: i64) -> Result<(), sqlx::Error> {
        Ok(())
    }
}

impl LockVersion for sqlx::Transaction<'_, sqlx::Postgres> {
    async fn lock_version(&mut self, model_version: i64) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1 FROM projection_versions WHERE model_version = $1 FOR SHARE")
            .bind(model_version)
            .execute(&mut **self)
            .await?;
        Ok(())
    }
}

/// The bounds stored for `as_of`, if any.
async fn stored_bounds(
    db: &ReadModelDb,
    model_version: i64,
    as_of: DateTime<Utc>,
) -> Result<Option<TierBounds>, StorageError> {
    const SQL: &str = "SELECT high_revenue_minor, high_customer_id, mid_revenue_minor, \
         mid_customer_id FROM value_tier_bounds WHERE model_version = $1 AND as_of_us = $2";
    type Stored = (Option<i64>, Option<String>, Option<i64>, Option<String>);
    let row: Option<Stored> = both!(db, pool => {
        sqlx::query_as(SQL)
            .bind(model_version)
            .bind(as_of.timestamp_micros())
            .fetch_optional(pool)
            .await?
    });
    let end = |revenue: Option<i64>, id: Option<String>| match (revenue, id) {
        (Some(revenue_minor), Some(customer_id)) => Some(TierEnd {
            revenue_minor,
            customer_id,
        }),
        _ => None,
    };
    Ok(row.map(|(hr, hc, mr, mc)| TierBounds {
        as_of,
        high: end(hr, hc),
        mid: end(mr, mc),
    }))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::domain::CustomerId;
    use crate::projections::lifecycle::value_tiers;
    use crate::projections::rules::RuleSet;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn month_ends() {
        for (instant, month_end) in [
            ("1998-03-15T10:00:00Z", "1998-02-28T23:59:59.999999Z"),
            ("1998-03-01T00:00:00Z", "1998-02-28T23:59:59.999999Z"),
            ("1998-03-31T23:59:59.999999Z", "1998-03-31T23:59:59.999999Z"),
            ("2000-01-01T00:00:00Z", "1999-12-31T23:59:59.999999Z"),
        ] {
            assert_eq!(
                month_end_at_or_before(at(instant)),
                at(month_end),
                "{instant}"
            );
        }
    }

    proptest! {
        /// Two keys give every customer the tier a full ranking gives,
        /// ties and customers without revenue included.
        #[test]
        fn bounds_give_the_ranking_tiers(
            revenues in proptest::collection::vec(-3i64..40, 0..60),
            high in 0u32..=100,
            mid in 0u32..=100,
        ) {
            let mut rules = RuleSet::shipped_defaults().lifecycle;
            rules.value_tiers.high_revenue_share_percent = high;
            rules.value_tiers.mid_revenue_share_percent = mid.min(100 - high);
            // Ids out of order, so ties are broken by id, not by position.
            let ids: Vec<CustomerId> = (0..revenues.len())
                .map(|i| CustomerId::parse(&format!("c{}", (i * 7919) % 1000)).unwrap())
                .collect();
            let mut unique = ids.clone();
            unique.sort();
            unique.dedup();
            prop_assume!(unique.len() == ids.len());
            let expected = value_tiers(&rules, ids.iter().zip(revenues.iter().copied()));
            let bounds = TierBounds::rank(
                &rules,
                at("1998-02-28T23:59:59.999999Z"),
                ids.iter().map(|c| c.as_str().to_owned()).zip(revenues.iter().copied()).collect(),
            );
            for (id, revenue) in ids.iter().zip(&revenues) {
                prop_assert_eq!(bounds.tier_of(*revenue, id.as_str()), expected[id], "{} {}", id, revenue);
            }
        }
    }
}

//! The cohort retention heatmap: customers grouped by the month of their
//! first order, and for each later month the share of the cohort that
//! ordered in it. Computed from the orders alone, up to an explicit instant.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Datelike, Utc};
use serde::Serialize;

use crate::clv::Transaction;

/// Share of each acquisition cohort ordering in each month since.
#[derive(Debug, Clone, Serialize)]
pub struct CohortRetention {
    /// Cohort months (`YYYY-MM`), oldest first.
    pub cohorts: Vec<String>,
    /// Customers per cohort.
    pub sizes: Vec<u64>,
    /// `retention[c][k]`: share of cohort `c` with an order in its `k`-th
    /// month (0 = the acquisition month, always 1); only months that began
    /// by the instant.
    pub retention: Vec<Vec<f64>>,
    /// The instant the orders were read up to.
    pub as_of: DateTime<Utc>,
}

fn month_index(at: DateTime<Utc>) -> i32 {
    at.year() * 12 + at.month0() as i32
}

impl CohortRetention {
    /// From orders at or before `as_of` (refund-only rows with no value
    /// still count as the order they belong to).
    pub fn from_transactions(transactions: &[Transaction], as_of: DateTime<Utc>) -> Self {
        let mut months: HashMap<&str, BTreeSet<i32>> = HashMap::new();
        for t in transactions.iter().filter(|t| t.at <= as_of) {
            months
                .entry(t.customer.as_str())
                .or_default()
                .insert(month_index(t.at));
        }
        let last = month_index(as_of);
        // cohort month → (size, customers ordering in month offset k)
        let mut by_cohort: BTreeMap<i32, (u64, Vec<u64>)> = BTreeMap::new();
        for active in months.values() {
            let Some(&first) = active.first() else {
                continue;
            };
            let entry = by_cohort
                .entry(first)
                .or_insert_with(|| (0, vec![0; (last - first + 1) as usize]));
            entry.0 += 1;
            for &m in active {
                entry.1[(m - first) as usize] += 1;
            }
        }
        let mut out = Self {
            cohorts: Vec::new(),
            sizes: Vec::new(),
            retention: Vec::new(),
            as_of,
        };
        for (month, (size, active)) in by_cohort {
            out.cohorts
                .push(format!("{:04}-{:02}", month / 12, month % 12 + 1));
            out.sizes.push(size);
            out.retention
                .push(active.iter().map(|&n| n as f64 / size as f64).collect());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn order(customer: &str, month: u32, day: u32) -> Transaction {
        Transaction {
            customer: customer.into(),
            at: Utc.with_ymd_and_hms(2024, month, day, 12, 0, 0).unwrap(),
            amount_minor: 1_000,
        }
    }

    #[test]
    fn each_cohort_counts_its_customers_ordering_in_each_later_month() {
        let orders = [
            order("a", 1, 5),
            order("a", 1, 20),
            order("a", 3, 1),
            order("b", 1, 9),
            order("b", 2, 9),
            order("c", 2, 1),
            order("c", 4, 1), // after the instant: ignored
        ];
        let as_of = Utc.with_ymd_and_hms(2024, 3, 31, 0, 0, 0).unwrap();
        let r = CohortRetention::from_transactions(&orders, as_of);
        assert_eq!(r.cohorts, ["2024-01", "2024-02"]);
        assert_eq!(r.sizes, [2, 1]);
        assert_eq!(r.retention[0], [1.0, 0.5, 0.5]);
        assert_eq!(r.retention[1], [1.0, 0.0]);
    }
}

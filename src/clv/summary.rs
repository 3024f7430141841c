//! Per-customer (frequency, recency, T, monetary) summaries and their
//! compression into weighted groups.
//!
//! # Time convention (reproduces the published CDNOW results)
//! Time is measured at **whole-UTC-day granularity**, as in Fader, Hardie &
//! Lee (2005) and in Lifetimes' `summary_data_from_transaction_data(freq="D")`
//! rescaled by the unit length:
//! * all purchases of a customer on the same UTC calendar date form **one**
//!   transaction whose amount is the sum of the purchases;
//! * `frequency` = number of such transactions minus one (repeat transactions);
//! * `recency` = (date of last transaction − date of first) in days ÷ unit days;
//! * `t` (T) = (UTC date of `calibration_end` − date of first) in days ÷ unit days;
//! * transactions strictly after `calibration_end` are ignored, and customers
//!   whose first transaction is after it are excluded.
//!
//! For CDNOW (first purchases in 1997-Q1) with `calibration_end` =
//! 1997-09-30T23:59:59Z and [`TimeUnit::Week`], a customer who first bought on
//! 1997-01-01 has T = 272/7 = 38.857 weeks — the value in the Fader/Hardie
//! data — and this convention reproduces the published log-likelihoods
//! (BG/NBD −9582.4, Pareto/NBD −9595.0). Use [`end_of_day`] to build an
//! inclusive end instant from a date.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::{invalid, ClvError};

/// One purchase event. Money is in integer minor units (cents) so that sums
/// are exact; it only becomes f64 when fed to a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// Customer identifier.
    pub customer: String,
    /// When the purchase happened.
    pub at: DateTime<Utc>,
    /// Purchase value in minor currency units (may be negative for refunds).
    pub amount_minor: i64,
}

/// Unit in which recency, T and model time parameters are expressed; model
/// scale parameters (alpha, beta) are only meaningful with the unit they were
/// fitted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    /// One day.
    Day,
    /// Seven days.
    Week,
    /// An average Gregorian month: 365.25 / 12 = 30.4375 days.
    Month,
}

impl TimeUnit {
    /// Length of the unit in days, used to convert whole-day differences.
    pub fn days(self) -> f64 {
        match self {
            Self::Day => 1.0,
            Self::Week => 7.0,
            Self::Month => 30.4375,
        }
    }
}

/// The sufficient statistics of one customer's calibration history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerSummary {
    /// Customer identifier.
    pub customer: String,
    /// Number of repeat transactions (distinct purchase days minus one).
    pub frequency: u32,
    /// Time from first to last transaction day, in the chosen unit.
    pub recency: f64,
    /// Time from the first transaction day to the calibration end day ("T").
    pub t: f64,
    /// Mean value of the repeat transactions in minor units (0 when
    /// `frequency == 0`), as in Lifetimes; the first purchase is excluded
    /// because it is often atypical.
    pub monetary_value_minor_avg: f64,
    /// Instant of the first purchase.
    pub first: DateTime<Utc>,
    /// Instant of the last purchase within the calibration period.
    pub last: DateTime<Utc>,
}

/// The last representable instant of a UTC date, so "calibration through
/// 1997-09-30" can be written `end_of_day(1997-09-30)`.
pub fn end_of_day(date: NaiveDate) -> DateTime<Utc> {
    let next = date.succ_opt().unwrap_or(date);
    let midnight = next.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc();
    if next == date {
        midnight
    } else {
        midnight - chrono::Duration::nanoseconds(1)
    }
}

/// Builds one [`CustomerSummary`] per customer whose first transaction is at
/// or before `calibration_end` (see the module docs for the time convention).
/// Output is sorted by customer id so results are reproducible.
pub fn summarize(
    transactions: &[Transaction],
    calibration_end: DateTime<Utc>,
    unit: TimeUnit,
) -> Result<Vec<CustomerSummary>, ClvError> {
    let end_day = calibration_end.date_naive();
    let unit_days = unit.days();
    // Sort references by (customer, instant) and scan groups: cheaper than
    // hashing every id and allocating a vector per customer.
    let mut rows: Vec<&Transaction> = Vec::with_capacity(transactions.len());
    for tx in transactions {
        if tx.at > calibration_end {
            continue;
        }
        if tx.customer.is_empty() {
            return Err(invalid("customer", "customer id must not be empty"));
        }
        rows.push(tx);
    }
    rows.sort_unstable_by(|a, b| a.customer.cmp(&b.customer).then(a.at.cmp(&b.at)));
    let mut out = Vec::new();
    for group in rows.chunk_by(|a, b| a.customer == b.customer) {
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            continue;
        };
        let customer = first.customer.as_str();
        let first_day = first.at.date_naive();
        let mut last_day = first_day;
        let mut n_days: u64 = 1;
        let mut repeat_sum: i128 = 0;
        for tx in &group[1..] {
            let d = tx.at.date_naive();
            if d != last_day {
                n_days += 1;
                last_day = d;
            }
            // Same-day purchases merge into one transaction, so every
            // purchase after the first *day* is part of a repeat transaction.
            if d != first_day {
                repeat_sum += i128::from(tx.amount_minor);
            }
        }
        let frequency = u32::try_from(n_days - 1).map_err(|_| {
            invalid(
                "transactions",
                format!("too many transactions for {customer}"),
            )
        })?;
        let monetary = if frequency > 0 {
            repeat_sum as f64 / f64::from(frequency)
        } else {
            0.0
        };
        out.push(CustomerSummary {
            customer: customer.to_string(),
            frequency,
            recency: (last_day - first_day).num_days() as f64 / unit_days,
            t: (end_day - first_day).num_days() as f64 / unit_days,
            monetary_value_minor_avg: monetary,
            first: first.at,
            last: last.at,
        });
    }
    Ok(out)
}

/// Customers grouped by identical (x, tₓ, T): the BG/NBD and Pareto/NBD
/// likelihoods depend only on these, so fitting cost scales with the number
/// of distinct histories instead of the number of customers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompressedData {
    /// Frequency (repeat transactions) per group.
    pub x: Vec<f64>,
    /// Recency per group.
    pub t_x: Vec<f64>,
    /// Age T per group.
    pub t: Vec<f64>,
    /// Number of customers in each group.
    pub weight: Vec<f64>,
}

impl CompressedData {
    /// Groups summaries by exact (frequency, recency, T).
    pub fn from_summaries(summaries: &[CustomerSummary]) -> Self {
        Self::from_triples(
            summaries
                .iter()
                .map(|s| (f64::from(s.frequency), s.recency, s.t)),
        )
    }

    /// Groups raw (x, tₓ, T) triples (bitwise-equal values are merged); the
    /// output is sorted by (x, tₓ, T) so it is deterministic.
    pub fn from_triples<I: IntoIterator<Item = (f64, f64, f64)>>(triples: I) -> Self {
        let mut groups = HistoryGroups::default();
        for (x, tx, t) in triples {
            groups.add(x, tx, t);
        }
        groups.finish()
    }

    /// Number of distinct groups.
    pub fn len(&self) -> usize {
        self.x.len()
    }

    /// True when there are no groups.
    pub fn is_empty(&self) -> bool {
        self.x.is_empty()
    }

    /// Total number of customers represented (sum of weights).
    pub fn n_customers(&self) -> f64 {
        self.weight.iter().sum()
    }

    /// Checks lengths, weights and each (x, tₓ, T) before fitting.
    pub fn validate(&self) -> Result<(), ClvError> {
        let n = self.x.len();
        if self.t_x.len() != n || self.t.len() != n || self.weight.len() != n {
            return Err(invalid("CompressedData", "column lengths differ"));
        }
        if n == 0 {
            return Err(ClvError::NoCustomers);
        }
        for i in 0..n {
            super::check_history(self.x[i], self.t_x[i], self.t[i])?;
            if !(self.weight[i].is_finite() && self.weight[i] >= 0.0) {
                return Err(invalid(
                    "weight",
                    format!("must be finite and >= 0, got {}", self.weight[i]),
                ));
            }
        }
        if self.n_customers() <= 0.0 {
            return Err(ClvError::NoCustomers);
        }
        Ok(())
    }

    /// Index form used by the likelihoods: distinct x values and distinct
    /// time values (union of tₓ and T) get lookup tables so per-parameter
    /// transcendental work is done once per distinct value.
    pub(crate) fn indexed(&self) -> Indexed {
        fn intern(map: &mut HashMap<u64, u32>, vals: &mut Vec<f64>, v: f64) -> u32 {
            let key = (v + 0.0).to_bits();
            *map.entry(key).or_insert_with(|| {
                vals.push(v);
                (vals.len() - 1) as u32
            })
        }
        let mut xmap = HashMap::new();
        let mut tmap = HashMap::new();
        let mut idx = Indexed::default();
        for i in 0..self.x.len() {
            idx.xi.push(intern(&mut xmap, &mut idx.x_vals, self.x[i]));
            idx.txi
                .push(intern(&mut tmap, &mut idx.time_vals, self.t_x[i]));
            idx.ti
                .push(intern(&mut tmap, &mut idx.time_vals, self.t[i]));
            idx.w.push(self.weight[i]);
        }
        idx
    }
}

/// Builds [`CompressedData`] one customer at a time, keeping only the
/// distinct (x, tₓ, T) groups (bitwise-equal values merge).
#[derive(Debug, Default)]
pub struct HistoryGroups {
    counts: HashMap<(u64, u64, u64), f64>,
}

impl HistoryGroups {
    /// Adds one customer's (x, tₓ, T).
    pub fn add(&mut self, x: f64, tx: f64, t: f64) {
        self.add_weighted(x, tx, t, 1.0);
    }

    /// Adds `weight` customers with the same (x, tₓ, T).
    pub fn add_weighted(&mut self, x: f64, tx: f64, t: f64, weight: f64) {
        // Normalise -0.0 so it merges with 0.0.
        let key = (
            (x + 0.0).to_bits(),
            (tx + 0.0).to_bits(),
            (t + 0.0).to_bits(),
        );
        *self.counts.entry(key).or_insert(0.0) += weight;
    }

    /// Adds every group of `other`.
    pub fn absorb(&mut self, other: HistoryGroups) {
        for (key, weight) in other.counts {
            *self.counts.entry(key).or_insert(0.0) += weight;
        }
    }

    /// The groups, sorted by (x, tₓ, T) so the result is deterministic.
    pub fn finish(self) -> CompressedData {
        let mut rows: Vec<((f64, f64, f64), f64)> = self
            .counts
            .into_iter()
            .map(|((a, b, c), w)| ((f64::from_bits(a), f64::from_bits(b), f64::from_bits(c)), w))
            .collect();
        rows.sort_unstable_by(|a, b| {
            a.0 .0
                .total_cmp(&b.0 .0)
                .then(a.0 .1.total_cmp(&b.0 .1))
                .then(a.0 .2.total_cmp(&b.0 .2))
        });
        let mut out = CompressedData::default();
        for ((x, tx, t), w) in rows {
            out.x.push(x);
            out.t_x.push(tx);
            out.t.push(t);
            out.weight.push(w);
        }
        out
    }
}

/// Lookup-table form of [`CompressedData`] (crate-internal).
#[derive(Debug, Default)]
pub(crate) struct Indexed {
    pub x_vals: Vec<f64>,
    pub time_vals: Vec<f64>,
    pub xi: Vec<u32>,
    pub txi: Vec<u32>,
    pub ti: Vec<u32>,
    pub w: Vec<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn tx(c: &str, y: i32, m: u32, d: u32, h: u32, amt: i64) -> Transaction {
        Transaction {
            customer: c.into(),
            at: Utc.with_ymd_and_hms(y, m, d, h, 0, 0).single().unwrap(),
            amount_minor: amt,
        }
    }

    #[test]
    fn same_day_merge_and_day_granular_times() {
        let txs = vec![
            tx("a", 2024, 1, 1, 9, 1000),
            tx("a", 2024, 1, 1, 18, 500), // same day: merged
            tx("a", 2024, 1, 8, 23, 300),
            tx("a", 2024, 1, 15, 1, 700),
            tx("a", 2024, 2, 1, 0, 9999), // after end: ignored
            tx("b", 2024, 1, 10, 12, 200),
            tx("c", 2024, 3, 1, 12, 200), // first after end: excluded
        ];
        let end = end_of_day(NaiveDate::from_ymd_opt(2024, 1, 29).unwrap());
        let s = summarize(&txs, end, TimeUnit::Week).unwrap();
        assert_eq!(s.len(), 2);
        let a = &s[0];
        assert_eq!(a.customer, "a");
        assert_eq!(a.frequency, 2);
        assert_eq!(a.recency, 2.0);
        assert_eq!(a.t, 4.0);
        assert_eq!(a.monetary_value_minor_avg, 500.0);
        assert_eq!(a.first, Utc.with_ymd_and_hms(2024, 1, 1, 9, 0, 0).unwrap());
        assert_eq!(a.last, Utc.with_ymd_and_hms(2024, 1, 15, 1, 0, 0).unwrap());
        let b = &s[1];
        assert_eq!(
            (b.frequency, b.recency, b.monetary_value_minor_avg),
            (0, 0.0, 0.0)
        );
        assert_eq!(b.t, 19.0 / 7.0);
        let days = summarize(&txs, end, TimeUnit::Day).unwrap();
        assert_eq!(days[0].t, 28.0);
        assert_eq!(TimeUnit::Month.days(), 30.4375);
    }

    #[test]
    fn compression_groups_identical_histories() {
        let c = CompressedData::from_triples(vec![
            (0.0, 0.0, 5.0),
            (1.0, 2.0, 5.0),
            (0.0, 0.0, 5.0),
            (0.0, -0.0, 5.0),
        ]);
        assert_eq!(c.len(), 2);
        assert_eq!(c.weight, vec![3.0, 1.0]);
        assert_eq!(c.n_customers(), 4.0);
        c.validate().unwrap();
        let idx = c.indexed();
        assert_eq!(idx.x_vals.len(), 2);
        assert_eq!(idx.time_vals.len(), 3); // 0, 5, 2
        assert!(CompressedData::default().validate().is_err());
        let bad = CompressedData::from_triples(vec![(1.0, 6.0, 5.0)]);
        assert!(matches!(bad.validate(), Err(ClvError::InvalidInput { .. })));
    }
}

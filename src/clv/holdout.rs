//! Calibration/holdout validation: compares a fitted purchase model's
//! conditional expectations with the repeat transactions customers actually
//! made in a later holdout period, grouped by calibration frequency (the
//! standard "conditional expectations" check of Fader, Hardie & Lee 2005).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::summary::{CustomerSummary, Transaction};
use super::{invalid, ClvError, PurchaseModel};

/// Calibration frequencies 0..=6 get their own bucket; 7+ are pooled.
const POOLED_FROM: u32 = 7;

/// One calibration-frequency bucket of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldoutBucket {
    /// Bucket label: "0" … "6" or "7+".
    pub frequency: String,
    /// Customers in the bucket.
    pub customers: u64,
    /// Sum of predicted holdout repeat transactions.
    pub predicted: f64,
    /// Sum of actual holdout repeat transactions.
    pub actual: u64,
    /// Predicted per customer.
    pub predicted_mean: f64,
    /// Actual per customer.
    pub actual_mean: f64,
}

/// Predicted vs actual holdout repeat transactions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldoutReport {
    /// Holdout length in model time units.
    pub holdout_length: f64,
    /// Buckets "0" … "6", "7+" (empty buckets included with zeros).
    pub buckets: Vec<HoldoutBucket>,
    /// Customers in the report.
    pub customers: u64,
    /// Total predicted holdout repeat transactions.
    pub total_predicted: f64,
    /// Total actual holdout repeat transactions.
    pub total_actual: u64,
    /// (predicted − actual) / actual; `None` if nothing was bought.
    pub total_relative_error: Option<f64>,
}

/// Counts transaction days (same-day purchases merged, as in calibration) in
/// (calibration_end, holdout_end] for each customer — the "actual" side of
/// the report.
pub fn holdout_repeat_counts(
    transactions: &[Transaction],
    calibration_end: DateTime<Utc>,
    holdout_end: DateTime<Utc>,
) -> Result<HashMap<String, u32>, ClvError> {
    if holdout_end < calibration_end {
        return Err(invalid("holdout_end", "must not be before calibration_end"));
    }
    let cal_day = calibration_end.date_naive();
    let mut days: HashSet<(&str, NaiveDate)> = HashSet::new();
    for tx in transactions {
        let d = tx.at.date_naive();
        // Whole-day convention: the calibration end day belongs to calibration.
        if tx.at <= holdout_end && tx.at > calibration_end && d > cal_day {
            days.insert((tx.customer.as_str(), d));
        }
    }
    let mut out: HashMap<String, u32> = HashMap::new();
    for (c, _) in days {
        *out.entry(c.to_string()).or_insert(0) += 1;
    }
    Ok(out)
}

/// Builds the report; customers missing from `holdout_counts` made no
/// holdout purchases.
pub fn holdout_report(
    model: &PurchaseModel,
    calibration: &[CustomerSummary],
    holdout_counts: &HashMap<String, u32>,
    holdout_length: f64,
) -> Result<HoldoutReport, ClvError> {
    if calibration.is_empty() {
        return Err(ClvError::NoCustomers);
    }
    if !(holdout_length.is_finite() && holdout_length > 0.0) {
        return Err(invalid("holdout_length", "must be finite and > 0"));
    }
    let nb = POOLED_FROM as usize + 1;
    let mut customers = vec![0u64; nb];
    let mut predicted = vec![0.0f64; nb];
    let mut actual = vec![0u64; nb];
    // Many customers share (x, tₓ, T): cache predictions per distinct history.
    let mut cache: HashMap<(u32, u64, u64), f64> = HashMap::new();
    for s in calibration {
        let k = s.frequency.min(POOLED_FROM) as usize;
        let key = (s.frequency, s.recency.to_bits(), s.t.to_bits());
        let pred = match cache.get(&key) {
            Some(v) => *v,
            None => {
                let v = model.conditional_expected_purchases(
                    holdout_length,
                    f64::from(s.frequency),
                    s.recency,
                    s.t,
                )?;
                cache.insert(key, v);
                v
            }
        };
        customers[k] += 1;
        predicted[k] += pred;
        actual[k] += u64::from(holdout_counts.get(&s.customer).copied().unwrap_or(0));
    }
    let buckets = (0..nb)
        .map(|k| {
            let n = customers[k];
            let mean = |v: f64| if n > 0 { v / n as f64 } else { 0.0 };
            HoldoutBucket {
                frequency: if k == nb - 1 {
                    format!("{POOLED_FROM}+")
                } else {
                    k.to_string()
                },
                customers: n,
                predicted: predicted[k],
                actual: actual[k],
                predicted_mean: mean(predicted[k]),
                actual_mean: mean(actual[k] as f64),
            }
        })
        .collect();
    let total_predicted: f64 = predicted.iter().sum();
    let total_actual: u64 = actual.iter().sum();
    Ok(HoldoutReport {
        holdout_length,
        buckets,
        customers: calibration.len() as u64,
        total_predicted,
        total_actual,
        total_relative_error: (total_actual > 0)
            .then(|| (total_predicted - total_actual as f64) / total_actual as f64),
    })
}

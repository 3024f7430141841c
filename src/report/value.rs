//! Value charts from the purchase models the holdout validation fitted as of
//! the calibration end: P(alive) and CLV distributions over the customers
//! who had bought by then, and the cumulative tracking plot of the CLV
//! literature (Fader, Hardie & Lee 2005, fig. 2): repeat purchases summed
//! week by week, as they happened and as each model expected them, through
//! the calibration period and on into the holdout.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::Serialize;

use crate::backtest::BacktestReport;
use crate::clv::ledger::minor_per_major;
use crate::clv::{
    customer_lifetime_value, summarize, ClvOptions, CustomerSummary, FitOptions, GammaGammaData,
    GammaGammaParams, PurchaseModel, TimeUnit, Transaction,
};
use crate::projections::rules::RuleSet;

use super::ReportError;

/// Bins of the P(alive) histograms.
const P_ALIVE_BINS: usize = 20;
/// Bins of the CLV histogram.
const CLV_BINS: usize = 25;

/// Customers per value bin.
#[derive(Debug, Clone, Serialize)]
pub struct Histogram {
    /// What is counted, with its model and instant.
    pub label: String,
    /// Bin edges (`counts.len() + 1` of them); the last bin also holds
    /// everything above it.
    pub edges: Vec<f64>,
    /// Customers per bin.
    pub counts: Vec<u64>,
}

impl Histogram {
    fn of(label: String, values: &[f64], low: f64, high: f64, bins: usize) -> Self {
        let width = (high - low) / bins as f64;
        let mut counts = vec![0; bins];
        for &v in values {
            let bin = if width > 0.0 {
                ((v - low) / width).floor().clamp(0.0, (bins - 1) as f64) as usize
            } else {
                0
            };
            counts[bin] += 1;
        }
        Self {
            label,
            edges: (0..=bins).map(|i| low + width * i as f64).collect(),
            counts,
        }
    }
}

/// One step of the cumulative tracking plot.
#[derive(Debug, Clone, Serialize)]
pub struct TrackingPoint {
    /// End of the step.
    pub at: DateTime<Utc>,
    /// Repeat purchases (distinct purchase days after the first) so far by
    /// the customers who had bought by the calibration end.
    pub actual: u64,
    /// The same as expected by each fitted model, in the order of
    /// [`ValueCharts::models`].
    pub expected: Vec<f64>,
}

/// P(alive), CLV and the tracking plot.
#[derive(Debug, Clone, Serialize)]
pub struct ValueCharts {
    /// The instant the models were fitted for (the calibration end).
    pub as_of: DateTime<Utc>,
    /// Names of the fitted models.
    pub models: Vec<String>,
    /// P(alive) at `as_of`, one histogram per model.
    pub p_alive: Vec<Histogram>,
    /// Discounted CLV over the rules' horizon, in major currency units,
    /// under the rules' purchase model with Gamma-Gamma spend.
    pub clv: Option<Histogram>,
    /// Why the CLV histogram is absent.
    pub clv_unavailable: Option<String>,
    /// Cumulative repeat purchases, one point per time unit.
    pub tracking: Vec<TrackingPoint>,
}

impl ValueCharts {
    /// Computes the charts with the models `validation` fitted.
    pub fn compute(
        validation: &BacktestReport,
        transactions: &[Transaction],
        rules: &RuleSet,
        unit: TimeUnit,
    ) -> Result<Self, ReportError> {
        let d = validation.calibration_end;
        let summaries = summarize(transactions, d, unit)?;
        let models: Vec<PurchaseModel> = validation.calibration.iter().map(|c| c.model).collect();
        let day = d.format("%Y-%m-%d");
        let p_alive = models
            .iter()
            .map(|m| {
                let values = summaries
                    .iter()
                    .map(|s| m.p_alive(f64::from(s.frequency), s.recency, s.t))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Histogram::of(
                    format!("{} P(alive) at {day}", m.name()),
                    &values,
                    0.0,
                    1.0,
                    P_ALIVE_BINS,
                ))
            })
            .collect::<Result<Vec<_>, ReportError>>()?;
        let chosen = models
            .iter()
            .find(|m| m.choice() == rules.clv.model.purchase_model)
            .or(models.first());
        let (clv, clv_unavailable) = match chosen {
            None => (None, Some("no purchase model fitted".to_owned())),
            Some(model) => match clv_histogram(model, &summaries, rules, unit, &day.to_string()) {
                Ok(h) => (Some(h), None),
                Err(why) => (None, Some(why)),
            },
        };
        Ok(Self {
            as_of: d,
            models: models.iter().map(|m| m.name().to_owned()).collect(),
            p_alive,
            clv,
            clv_unavailable,
            tracking: tracking(
                &models,
                &summaries,
                transactions,
                validation.holdout_end,
                unit,
            )?,
        })
    }
}

fn clv_histogram(
    model: &PurchaseModel,
    summaries: &[CustomerSummary],
    rules: &RuleSet,
    unit: TimeUnit,
    day: &str,
) -> Result<Histogram, String> {
    let scale = minor_per_major(rules.clv.currency);
    let spend = GammaGammaData::from_summaries(summaries, scale)
        .and_then(|data| GammaGammaParams::fit(&data, &FitOptions::point_estimates()))
        .map_err(|e| format!("Gamma-Gamma did not fit: {e}"))?
        .params;
    let options = ClvOptions::monthly(
        unit,
        rules.clv.clv.horizon_months,
        rules.clv.clv.monthly_discount_rate,
    );
    let mut values: Vec<f64> = customer_lifetime_value(model, &spend, summaries, scale, &options)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|c| c.clv)
        .collect();
    values.sort_by(f64::total_cmp);
    let top = values
        .get(((values.len() as f64) * 0.99) as usize)
        .or(values.last())
        .copied()
        .unwrap_or(0.0);
    Ok(Histogram::of(
        format!(
            "{}-month CLV ({}) at {day}, {} {}; the last bin holds the top 1 %",
            rules.clv.clv.horizon_months,
            model.name(),
            rules.clv.currency,
            "major units"
        ),
        &values,
        0.0,
        top.max(1.0),
        CLV_BINS,
    ))
}

/// Cumulative repeat purchases, actual and expected, one point per `unit`
/// from the first purchase to `end`. Customers are grouped by the day of
/// their first purchase, so each model is evaluated once per (day, step).
fn tracking(
    models: &[PurchaseModel],
    summaries: &[CustomerSummary],
    transactions: &[Transaction],
    end: DateTime<Utc>,
    unit: TimeUnit,
) -> Result<Vec<TrackingPoint>, ReportError> {
    let Some(start) = summaries.iter().map(|s| s.first).min() else {
        return Ok(Vec::new());
    };
    let cohort: HashMap<&str, NaiveDate> = summaries
        .iter()
        .map(|s| (s.customer.as_str(), s.first.date_naive()))
        .collect();
    let mut first_days: BTreeMap<NaiveDate, u64> = BTreeMap::new();
    for day in cohort.values() {
        *first_days.entry(*day).or_default() += 1;
    }
    // Repeat purchase days of the cohort, as the summaries count them.
    let mut days: HashMap<&str, BTreeSet<NaiveDate>> = HashMap::new();
    for t in transactions.iter().filter(|t| t.at <= end) {
        if cohort.contains_key(t.customer.as_str()) {
            days.entry(t.customer.as_str())
                .or_default()
                .insert(t.at.date_naive());
        }
    }
    let mut repeats: Vec<NaiveDate> = days
        .values()
        .flat_map(|d| d.iter().skip(1).copied())
        .collect();
    repeats.sort();
    let step = Duration::seconds((unit.days() * 86_400.0).round() as i64);
    let start_day = start.date_naive();
    let mut points = Vec::new();
    let mut at = start_day.and_hms_opt(0, 0, 0).expect("midnight").and_utc() + step;
    loop {
        let at_clamped = at.min(end);
        let today = at_clamped.date_naive();
        let actual = repeats.partition_point(|d| *d < today) as u64;
        let expected = models
            .iter()
            .map(|m| {
                first_days
                    .range(..today)
                    .map(|(first, n)| {
                        let t = (today - *first).num_days() as f64 / unit.days();
                        m.expected_purchases(t).map(|e| e * *n as f64)
                    })
                    .sum::<Result<f64, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        points.push(TrackingPoint {
            at: at_clamped,
            actual,
            expected,
        });
        if at >= end {
            break;
        }
        at += step;
    }
    Ok(points)
}

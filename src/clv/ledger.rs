//! Where the CLV mathematics meets the ledger: turning stored order and
//! refund events into [`Transaction`]s, and the fit/score/holdout workflows
//! behind `journey clv`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use thiserror::Error;

use super::rules::{ClvRules, ModelChoice};
use super::{
    customer_lifetime_value, holdout_repeat_counts, holdout_report, summarize, BgNbdParams,
    ClvError, ClvOptions, CompressedData, CustomerSummary, FitOptions, GammaGammaData,
    GammaGammaParams, HoldoutReport, ParetoNbdParams, PurchaseModel, TimeUnit, Transaction,
};
use crate::domain::{Currency, DomainEvent};
use crate::store::{EventStore, StoreError};

/// Why a CLV workflow failed.
#[derive(Debug, Error)]
pub enum ClvLedgerError {
    /// Reading events failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored event did not decode.
    #[error("event at position {position}: {reason}")]
    Decode {
        /// Where.
        position: u64,
        /// Why.
        reason: String,
    },
    /// The mathematics refused the data.
    #[error(transparent)]
    Clv(#[from] ClvError),
    /// The customer has no purchase before the calibration end.
    #[error("customer {0} has no order in {1} before the calibration end")]
    UnknownCustomer(String, Currency),
}

/// Every order in `currency`, net of its refunds, as model transactions.
///
/// Refunds are subtracted from the order they reference (at the order's
/// instant), so a fully refunded order keeps its date with zero value; other
/// currencies are ignored (models are fitted per currency).
pub async fn load_transactions(
    store: Arc<dyn EventStore>,
    currency: Currency,
) -> Result<Vec<Transaction>, ClvLedgerError> {
    let mut transactions: Vec<Transaction> = Vec::new();
    let mut by_order: HashMap<(String, String), usize> = HashMap::new();
    let mut events = crate::store::read_all(store, 0, 10_000);
    while let Some(event) = events.next().await {
        let event = event?;
        let Some(customer) = event.stream_id.customer_id() else {
            continue;
        };
        if event.event_type != "OrderPlaced" && event.event_type != "OrderRefunded" {
            continue;
        }
        let decoded = event.decode().map_err(|e| ClvLedgerError::Decode {
            position: event.position,
            reason: e.to_string(),
        })?;
        match decoded {
            DomainEvent::OrderPlaced(o) if o.amount.currency == currency => {
                by_order.insert(
                    (customer.as_str().to_owned(), o.order_id),
                    transactions.len(),
                );
                transactions.push(Transaction {
                    customer: customer.as_str().to_owned(),
                    at: event.occurred_at,
                    amount_minor: o.amount.minor,
                });
            }
            DomainEvent::OrderRefunded(r) if r.amount.currency == currency => {
                if let Some(&i) = by_order.get(&(customer.as_str().to_owned(), r.order_id)) {
                    transactions[i].amount_minor -= r.amount.minor;
                }
            }
            _ => {}
        }
    }
    Ok(transactions)
}

/// Parameters of a fitted model, in the CLI's JSON shape.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum FittedParams {
    /// BG/NBD: r, alpha, a, b.
    BgNbd(BgNbdParams),
    /// Pareto/NBD: r, alpha, s, beta.
    ParetoNbd(ParetoNbdParams),
    /// Gamma-Gamma: p, q, gamma.
    GammaGamma(GammaGammaParams),
}

/// Output of `journey clv fit`.
#[derive(Debug, Clone, Serialize)]
pub struct FitReport {
    /// `bgnbd`, `paretonbd` or `gammagamma`.
    pub model: &'static str,
    /// Maximum-likelihood estimates.
    pub params: FittedParams,
    /// Standard errors from the numerical Hessian, when computable.
    pub standard_errors: Option<FittedParams>,
    /// Log-likelihood at the estimates.
    pub log_likelihood: f64,
    /// Customers in the fit (repeat buyers for Gamma-Gamma).
    pub customers: u64,
    /// Distinct (x, t_x, T) histories actually evaluated.
    pub distinct_histories: Option<usize>,
    /// Optimiser iterations.
    pub iterations: usize,
    /// Calibration end (inclusive, end of day UTC).
    pub calibration_end: DateTime<Utc>,
    /// Time unit.
    pub time_unit: TimeUnit,
    /// Seconds spent summarising and fitting (not reading the log).
    pub fit_seconds: f64,
}

/// Which model `journey clv fit` estimates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FitModel {
    /// BG/NBD purchase model.
    Bgnbd,
    /// Pareto/NBD purchase model.
    Paretonbd,
    /// Gamma-Gamma spend model (repeat buyers).
    Gammagamma,
}

/// Fits one model on the summaries of `transactions`.
pub fn fit(
    transactions: &[Transaction],
    calibration_end: DateTime<Utc>,
    unit: TimeUnit,
    model: FitModel,
    currency: Currency,
) -> Result<FitReport, ClvLedgerError> {
    let started = Instant::now();
    let summaries = summarize(transactions, calibration_end, unit)?;
    let opts = FitOptions::default();
    let report = match model {
        FitModel::Bgnbd | FitModel::Paretonbd => {
            let data = CompressedData::from_summaries(&summaries);
            let distinct = Some(data.len());
            if model == FitModel::Bgnbd {
                let fit = BgNbdParams::fit(&data, &opts)?;
                (
                    "bgnbd",
                    FittedParams::BgNbd(fit.params),
                    fit.standard_errors.map(FittedParams::BgNbd),
                    fit.log_likelihood,
                    fit.n_customers,
                    distinct,
                    fit.iterations,
                )
            } else {
                let fit = ParetoNbdParams::fit(&data, &opts)?;
                (
                    "paretonbd",
                    FittedParams::ParetoNbd(fit.params),
                    fit.standard_errors.map(FittedParams::ParetoNbd),
                    fit.log_likelihood,
                    fit.n_customers,
                    distinct,
                    fit.iterations,
                )
            }
        }
        FitModel::Gammagamma => {
            let data = GammaGammaData::from_summaries(&summaries, minor_per_major(currency))?;
            let fit = GammaGammaParams::fit(&data, &opts)?;
            (
                "gammagamma",
                FittedParams::GammaGamma(fit.params),
                fit.standard_errors.map(FittedParams::GammaGamma),
                fit.log_likelihood,
                fit.n_customers,
                None,
                fit.iterations,
            )
        }
    };
    Ok(FitReport {
        model: report.0,
        params: report.1,
        standard_errors: report.2,
        log_likelihood: report.3,
        customers: report.4,
        distinct_histories: report.5,
        iterations: report.6,
        calibration_end,
        time_unit: unit,
        fit_seconds: started.elapsed().as_secs_f64(),
    })
}

/// Minor units in one major unit of `currency` (100 for USD, 1 for JPY).
pub(crate) fn minor_per_major(currency: Currency) -> u32 {
    10u32.pow(u32::from(currency.minor_digits()))
}

/// Output of `journey clv score`.
#[derive(Debug, Clone, Serialize)]
pub struct ScoreReport {
    /// Customer id.
    pub customer: String,
    /// Purchase model used.
    pub model: PurchaseModel,
    /// Spend model used.
    pub spend_model: GammaGammaParams,
    /// Repeat transactions in calibration.
    pub frequency: u32,
    /// Recency (time units).
    pub recency: f64,
    /// Age T (time units).
    pub t: f64,
    /// P(alive) at the calibration end.
    pub p_alive: f64,
    /// Expected purchases in the horizon after the calibration end.
    pub expected_purchases: f64,
    /// Gamma-Gamma expected average spend (major units).
    pub expected_avg_spend: f64,
    /// Discounted CLV over the horizon (major units).
    pub clv: f64,
    /// Horizon in time units.
    pub horizon: f64,
}

/// Fits the purchase model and Gamma-Gamma, then scores one customer over
/// `horizon` time units (discounted monthly per the rules).
pub fn score(
    transactions: &[Transaction],
    customer: &str,
    calibration_end: DateTime<Utc>,
    unit: TimeUnit,
    model: ModelChoice,
    horizon: f64,
    rules: &ClvRules,
) -> Result<ScoreReport, ClvLedgerError> {
    let summaries = summarize(transactions, calibration_end, unit)?;
    let summary: &CustomerSummary = summaries
        .iter()
        .find(|s| s.customer == customer)
        .ok_or_else(|| ClvLedgerError::UnknownCustomer(customer.to_owned(), rules.currency))?;
    let purchase = fit_purchase_model(&summaries, model)?;
    let scale = minor_per_major(rules.currency);
    let spend = GammaGammaParams::fit(
        &GammaGammaData::from_summaries(&summaries, scale)?,
        &FitOptions::point_estimates(),
    )?
    .params;
    let month = TimeUnit::Month.days() / unit.days();
    let months = (horizon / month).round().max(1.0) as u32;
    let options = ClvOptions {
        horizon_periods: months,
        period_length: horizon / f64::from(months),
        discount_rate: rules.clv.monthly_discount_rate,
    };
    let clv = customer_lifetime_value(
        &purchase,
        &spend,
        std::slice::from_ref(summary),
        scale,
        &options,
    )?
    .remove(0);
    Ok(ScoreReport {
        customer: customer.to_owned(),
        model: purchase,
        spend_model: spend,
        frequency: summary.frequency,
        recency: summary.recency,
        t: summary.t,
        p_alive: clv.p_alive,
        expected_purchases: clv.expected_purchases,
        expected_avg_spend: clv.expected_average_spend,
        clv: clv.clv,
        horizon,
    })
}

/// Fits the chosen purchase model (parameters only, no standard errors).
pub fn fit_purchase_model(
    summaries: &[CustomerSummary],
    model: ModelChoice,
) -> Result<PurchaseModel, ClvError> {
    fit_purchase_model_on(
        &CompressedData::from_summaries(summaries),
        model,
        &FitOptions::point_estimates(),
    )
}

/// [`fit_purchase_model`] on histories already grouped by (x, tₓ, T), with
/// the given fit options.
pub fn fit_purchase_model_on(
    data: &CompressedData,
    model: ModelChoice,
    opts: &FitOptions,
) -> Result<PurchaseModel, ClvError> {
    let data = data.clone();
    let opts = *opts;
    Ok(match model {
        ModelChoice::Bgnbd => PurchaseModel::BgNbd(BgNbdParams::fit(&data, &opts)?.params),
        ModelChoice::Paretonbd => {
            PurchaseModel::ParetoNbd(ParetoNbdParams::fit(&data, &opts)?.params)
        }
    })
}

/// Calibration/holdout validation: fit on the calibration period, compare
/// predicted and actual repeat transactions in the holdout.
pub fn holdout(
    transactions: &[Transaction],
    calibration_end: DateTime<Utc>,
    holdout_end: DateTime<Utc>,
    unit: TimeUnit,
    model: ModelChoice,
) -> Result<HoldoutReport, ClvLedgerError> {
    let summaries = summarize(transactions, calibration_end, unit)?;
    let purchase = fit_purchase_model(&summaries, model)?;
    let counts = holdout_repeat_counts(transactions, calibration_end, holdout_end)?;
    let days = (holdout_end.date_naive() - calibration_end.date_naive()).num_days();
    let length = days as f64 / unit.days();
    Ok(holdout_report(&purchase, &summaries, &counts, length)?)
}

/// How a customer was acquired, from their registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquisition {
    /// Acquisition channel.
    pub channel: String,
    /// Cost in the rules' currency, when recorded in it.
    pub cost_minor: Option<i64>,
}

/// Every customer's acquisition channel and cost (in `currency` only).
pub async fn load_acquisitions(
    store: Arc<dyn EventStore>,
    currency: Currency,
) -> Result<HashMap<String, Acquisition>, ClvLedgerError> {
    let mut out = HashMap::new();
    let mut events = crate::store::read_all(store, 0, 10_000);
    while let Some(event) = events.next().await {
        let event = event?;
        if event.event_type != "CustomerRegistered" {
            continue;
        }
        let Some(customer) = event.stream_id.customer_id() else {
            continue;
        };
        if let DomainEvent::CustomerRegistered(r) =
            event.decode().map_err(|e| ClvLedgerError::Decode {
                position: event.position,
                reason: e.to_string(),
            })?
        {
            out.insert(
                customer.as_str().to_owned(),
                Acquisition {
                    channel: r.channel,
                    cost_minor: r
                        .acquisition_cost
                        .filter(|c| c.currency == currency)
                        .map(|c| c.minor),
                },
            );
        }
    }
    Ok(out)
}

/// CLV against acquisition cost for one channel.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelEconomics {
    /// Acquisition channel.
    pub channel: String,
    /// Customers acquired through it (with an order before the calibration end).
    pub customers: u64,
    /// Of those, how many have a recorded acquisition cost.
    pub customers_with_cost: u64,
    /// Sum of the recorded costs, minor units.
    pub acquisition_cost_minor: i64,
    /// Sum of the predicted discounted CLV of customers with a cost (major units).
    pub clv_of_costed_customers: f64,
    /// Mean predicted CLV per customer (major units).
    pub mean_clv: f64,
    /// CLV / CAC over the customers with a cost; `None` when no cost is recorded.
    pub clv_to_cac: Option<f64>,
}

/// CLV/CAC by acquisition channel: fits the purchase model and Gamma-Gamma
/// as of the calibration end, scores every customer over the rules' horizon
/// and compares the predicted value with what acquiring them cost.
pub fn channel_economics(
    transactions: &[Transaction],
    acquisitions: &HashMap<String, Acquisition>,
    calibration_end: DateTime<Utc>,
    unit: TimeUnit,
    rules: &ClvRules,
) -> Result<Vec<ChannelEconomics>, ClvLedgerError> {
    let summaries = summarize(transactions, calibration_end, unit)?;
    let purchase = fit_purchase_model(&summaries, rules.model.purchase_model)?;
    let scale = minor_per_major(rules.currency);
    let spend = GammaGammaParams::fit(
        &GammaGammaData::from_summaries(&summaries, scale)?,
        &FitOptions::point_estimates(),
    )?
    .params;
    let options = ClvOptions::monthly(
        unit,
        rules.clv.horizon_months,
        rules.clv.monthly_discount_rate,
    );
    let values = customer_lifetime_value(&purchase, &spend, &summaries, scale, &options)?;
    let mut by_channel: std::collections::BTreeMap<String, ChannelEconomics> = Default::default();
    for value in values {
        let acquisition = acquisitions.get(&value.customer);
        let channel = acquisition.map_or("unknown", |a| a.channel.as_str());
        let entry = by_channel
            .entry(channel.to_owned())
            .or_insert_with(|| ChannelEconomics {
                channel: channel.to_owned(),
                customers: 0,
                customers_with_cost: 0,
                acquisition_cost_minor: 0,
                clv_of_costed_customers: 0.0,
                mean_clv: 0.0,
                clv_to_cac: None,
            });
        entry.customers += 1;
        entry.mean_clv += value.clv;
        if let Some(cost) = acquisition.and_then(|a| a.cost_minor) {
            entry.customers_with_cost += 1;
            entry.acquisition_cost_minor += cost;
            entry.clv_of_costed_customers += value.clv;
        }
    }
    Ok(by_channel
        .into_values()
        .map(|mut c| {
            c.mean_clv /= c.customers as f64;
            if c.acquisition_cost_minor > 0 {
                let cac = c.acquisition_cost_minor as f64 / f64::from(scale);
                c.clv_to_cac = super::clv_to_cac_ratio(c.clv_of_costed_customers, cac).ok();
            }
            c
        })
        .collect())
}

/// RFM as of an instant: every customer's scores and the segment sizes.
#[derive(Debug, Clone, Serialize)]
pub struct RfmReport {
    /// Evaluation instant.
    pub as_of: DateTime<Utc>,
    /// Customers with an order at or before `as_of`.
    pub customers: usize,
    /// Customers per segment (`unsegmented` when no rule matched).
    pub segments: std::collections::BTreeMap<String, usize>,
    /// Scores of the requested customers (all when none were named).
    pub scores: Vec<super::RfmScore>,
}

/// Scores RFM quintiles over customers active as of `as_of`, with the rules'
/// weights and segments.
pub fn rfm(
    transactions: &[Transaction],
    as_of: DateTime<Utc>,
    rules: &ClvRules,
    only: Option<&str>,
) -> Result<RfmReport, ClvLedgerError> {
    let inputs = super::rfm_inputs_from_transactions(transactions, as_of);
    let scores = super::score_rfm(&inputs, &rules.rfm.weights, &rules.rfm.segments)?;
    let mut segments = std::collections::BTreeMap::new();
    for s in &scores {
        *segments
            .entry(s.segment.clone().unwrap_or_else(|| "unsegmented".into()))
            .or_insert(0) += 1;
    }
    let customers = scores.len();
    let scores = match only {
        Some(id) => scores.into_iter().filter(|s| s.customer == id).collect(),
        None => scores,
    };
    Ok(RfmReport {
        as_of,
        customers,
        segments,
        scores,
    })
}

//! Holdout validation of churn signals: do the warnings predict churn?
//!
//! Lifecycle management trusts a churn signal only after it has been
//! backtested: fold the ledger as of a calibration end `D`, score every
//! customer who had bought by `D`, and compare with what they did in the
//! holdout `(D, E]`. This module does that for every signal the product
//! offers — P(alive) and expected purchases from BG/NBD and Pareto/NBD, the
//! RFM score, the lifecycle stage, each churn-alert rule, and the fitted
//! [`churn_score`] — and reports, per signal, the ROC AUC for "bought again
//! in the holdout" (ties by average ranks), the precision, recall and lift
//! among the 10 % and 20 % it ranks riskiest, and for the purchase models the
//! classic calibration table (predicted vs actual repeat purchases by
//! calibration frequency).
//!
//! Every instant is explicit and every figure is computed from events that
//! occurred by the instant it is "as of", so the same ledger, rules and
//! dates give the same report.

pub mod churn_score;
pub mod ledger_facts;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::Serialize;
use thiserror::Error;

use crate::clv::ledger::{fit_purchase_model_on, load_transactions, ClvLedgerError};
use crate::clv::ranking::{roc_auc, roc_curve, top_fraction, Scored, TopFraction};
use crate::clv::rules::ModelChoice;
use crate::clv::{
    end_of_day, holdout_repeat_counts, holdout_report, rfm_inputs_from_transactions, score_rfm,
    summarize, ClvError, CompressedData, CustomerSummary, FitOptions, HoldoutReport, PurchaseModel,
    TimeUnit, Transaction,
};
use crate::projections::alerts::AlertRule;
use crate::projections::rules::RuleSet;
use crate::store::{EventStore, StoreError};

use churn_score::{ChurnScore, ChurnScoreSettings, FeatureInputs, TrainingSet};
use ledger_facts::{FactsTable, LedgerFacts};

/// Points kept of each ROC curve (enough to draw it).
const ROC_POINTS: usize = 200;

/// Why a backtest could not run.
#[derive(Debug, Error)]
pub enum BacktestError {
    /// The request is inconsistent.
    #[error("{field}: {problem}")]
    Request {
        /// The offending argument.
        field: &'static str,
        /// Why.
        problem: String,
    },
    /// Not enough data for a figure.
    #[error("{0}")]
    Insufficient(String),
    /// The churn-score settings file is wrong.
    #[error("{file}: {problem}")]
    Settings {
        /// The file.
        file: String,
        /// Why.
        problem: String,
    },
    /// A fitting example would have seen the evaluation window.
    #[error("the churn score's fit would see data from {seen}, after its cut-off {cutoff}")]
    Leak {
        /// The evaluation window's start.
        cutoff: DateTime<Utc>,
        /// The instant the example reached.
        seen: DateTime<Utc>,
    },
    /// A customer's events did not fold.
    #[error("folding customer {customer}: {reason}")]
    Fold {
        /// The customer.
        customer: String,
        /// Why.
        reason: String,
    },
    /// Reading the log failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading orders failed.
    #[error(transparent)]
    Ledger(#[from] ClvLedgerError),
    /// A model refused the data.
    #[error(transparent)]
    Clv(#[from] ClvError),
    /// A revenue sum left the range of 64-bit minor units.
    #[error("holdout revenue of {0} overflows 64-bit minor units")]
    Overflow(String),
}

/// What to backtest.
#[derive(Debug, Clone)]
pub struct BacktestRequest {
    /// Last day of the calibration period (inclusive).
    pub calibration_end: NaiveDate,
    /// Last day of the holdout (inclusive).
    pub holdout_end: NaiveDate,
    /// Model time unit.
    pub unit: TimeUnit,
}

/// How well one signal ranks customers.
#[derive(Debug, Clone, Serialize)]
pub struct SignalReport {
    /// The signal's name.
    pub signal: String,
    /// What it is.
    pub description: String,
    /// ROC AUC for "bought again in the holdout" (higher score = more
    /// likely to buy); `None` when everyone or no one bought.
    pub auc: Option<f64>,
    /// The 10 % the signal ranks riskiest: precision, recall and lift for
    /// "did not buy again".
    pub riskiest_10: Option<TopFraction>,
    /// The same for the riskiest 20 %.
    pub riskiest_20: Option<TopFraction>,
    /// The ROC curve (false positive rate, true positive rate), thinned.
    pub roc: Vec<(f64, f64)>,
    /// Share of the holdout revenue made by the 20 % the signal ranks most
    /// likely to buy again (ties at the cut split pro rata); `None` without
    /// holdout revenue.
    pub revenue_share_top_20: Option<f64>,
    /// Why the signal has no figures (its model did not fit), if so.
    pub unavailable: Option<String>,
}

/// One alert rule as a churn predictor: "fired in the lookback window
/// before the calibration end" predicts "did not buy again".
#[derive(Debug, Clone, Serialize)]
pub struct AlertRuleReport {
    /// The rule.
    pub rule: AlertRule,
    /// Whether the rule is enabled in the active rules.
    pub enabled: bool,
    /// Customers it had fired for.
    pub fired: usize,
    /// Of those, the share who did not buy again.
    pub precision: Option<f64>,
    /// Of everyone who did not buy again, the share it had fired for.
    pub recall: Option<f64>,
    /// Precision over the share who did not buy again overall.
    pub lift: Option<f64>,
}

/// Customers per lifecycle stage at the calibration end, and how many
/// bought again.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    /// The stage.
    pub stage: String,
    /// Customers in it.
    pub customers: usize,
    /// Of those, how many bought again.
    pub bought_again: usize,
    /// The share.
    pub rate: f64,
    /// What they spent in the holdout (orders net of refunds, minor units
    /// of the rules' currency).
    pub holdout_revenue_minor: i64,
}

/// One purchase model's calibration table.
#[derive(Debug, Clone, Serialize)]
pub struct CalibrationTable {
    /// The model and its fitted parameters (as of the calibration end).
    pub model: PurchaseModel,
    /// Predicted vs actual repeat purchases by calibration frequency.
    pub table: HoldoutReport,
}

/// The fitted churn score and the window it was fitted on.
#[derive(Debug, Clone, Serialize)]
pub struct ChurnScoreReport {
    /// Features as of this instant …
    pub fitted_as_of: DateTime<Utc>,
    /// … labelled by purchases up to this one (the calibration end).
    pub labels_through: DateTime<Utc>,
    /// The fit: features, weights, standardization.
    pub fit: ChurnScore,
}

/// Everything `journey validate` reports.
#[derive(Debug, Clone, Serialize)]
pub struct BacktestReport {
    /// End of the calibration period (exclusive upper instant).
    pub calibration_end: DateTime<Utc>,
    /// End of the holdout.
    pub holdout_end: DateTime<Utc>,
    /// The model time unit.
    pub unit: TimeUnit,
    /// Holdout length in units.
    pub holdout_length: f64,
    /// Customers scored: those with an order by the calibration end.
    pub customers: usize,
    /// Of those, how many bought again in the holdout.
    pub bought_again: usize,
    /// The share who bought again.
    pub base_rate: f64,
    /// What they spent in the holdout: orders net of refunds, minor units.
    pub holdout_revenue_minor: i64,
    /// The currency of the revenue (the rules' CLV currency).
    pub currency: String,
    /// Every ranking signal, best AUC first.
    pub signals: Vec<SignalReport>,
    /// Every alert rule as a binary predictor.
    pub alert_rules: Vec<AlertRuleReport>,
    /// Repeat-purchase rate per lifecycle stage at the calibration end.
    pub stages: Vec<StageReport>,
    /// Calibration tables of the purchase models.
    pub calibration: Vec<CalibrationTable>,
    /// The churn score, when it could be fitted.
    pub churn_score: Option<ChurnScoreReport>,
    /// Why it could not, otherwise.
    pub churn_score_unavailable: Option<String>,
}

/// The purchase models fitted as of one instant. A model that does not fit
/// (a small or degenerate ledger) makes its signals unavailable, with the
/// reason, rather than failing the whole report.
struct Models {
    bgnbd: Result<PurchaseModel, String>,
    paretonbd: Result<PurchaseModel, String>,
}

impl Models {
    /// Fits with the read models' bounded iteration budget
    /// ([`FitOptions::refit`]): a population with no finite maximum gives up
    /// in seconds instead of walking its likelihood ridge for minutes.
    fn fit(summaries: &[CustomerSummary], at: DateTime<Utc>) -> Self {
        let data = CompressedData::from_summaries(summaries);
        let fit = |choice, name: &str| {
            fit_purchase_model_on(&data, choice, &FitOptions::refit())
                .map_err(|e| format!("{name} did not fit the histories as of {at}: {e}"))
        };
        Self {
            bgnbd: fit(ModelChoice::Bgnbd, "BG/NBD"),
            paretonbd: fit(ModelChoice::Paretonbd, "Pareto/NBD"),
        }
    }

    /// Both models, or why the churn score cannot use them.
    fn both(&self) -> Result<(PurchaseModel, PurchaseModel), BacktestError> {
        match (&self.bgnbd, &self.paretonbd) {
            (Ok(b), Ok(p)) => Ok((*b, *p)),
            (Err(why), _) | (_, Err(why)) => Err(BacktestError::Insufficient(why.clone())),
        }
    }
}

/// One signal's scores as the customers are visited.
struct Column {
    signal: String,
    description: String,
    scored: Vec<Scored>,
    /// Holdout revenue of each scored customer, in the order of `scored`.
    revenue: Vec<i64>,
    unavailable: Option<String>,
}

impl Column {
    fn new(signal: &str, description: String, unavailable: Option<String>) -> Self {
        Self {
            signal: signal.into(),
            description,
            scored: Vec::new(),
            revenue: Vec::new(),
            unavailable,
        }
    }

    fn push(
        &mut self,
        score: Result<f64, ClvError>,
        positive: bool,
        revenue: i64,
    ) -> Result<(), ClvError> {
        if self.unavailable.is_none() {
            self.scored.push(Scored {
                score: score?,
                positive,
            });
            self.revenue.push(revenue);
        }
        Ok(())
    }
}

/// The churn score's inputs for one customer as of an instant.
fn feature_inputs(
    s: &CustomerSummary,
    facts: &LedgerFacts,
    (bgnbd, paretonbd): &(PurchaseModel, PurchaseModel),
    horizon: f64,
    at: DateTime<Utc>,
) -> Result<FeatureInputs, BacktestError> {
    let x = f64::from(s.frequency);
    Ok(FeatureInputs {
        repeat_purchases: x,
        recency: s.recency,
        age: s.t,
        days_since_last_order: (at.date_naive() - s.last.date_naive()).num_days() as f64,
        average_spend: s.monetary_value_minor_avg / 100.0,
        bgnbd_p_alive: bgnbd.p_alive(x, s.recency, s.t)?,
        bgnbd_expected: bgnbd.conditional_expected_purchases(horizon, x, s.recency, s.t)?,
        paretonbd_p_alive: paretonbd.p_alive(x, s.recency, s.t)?,
        complaints: f64::from(facts.complaints),
        refunds: f64::from(facts.refunds),
        sessions: f64::from(facts.sessions),
        carts_abandoned: f64::from(facts.carts_abandoned),
        loyalty_tier: f64::from(facts.loyalty_tier),
        alerts_fired: facts.alerts_fired.len() as f64,
    })
}

/// How alive a stage says a customer is, for ranking (higher = more alive).
fn stage_rank(stage: Option<&str>) -> f64 {
    match stage {
        Some("mature") => 6.0,
        Some("active") => 5.0,
        Some("reactivated") => 4.0,
        Some("new") => 3.0,
        Some("at_risk") => 2.0,
        Some("dormant") => 1.0,
        _ => 0.0,
    }
}

/// Runs the backtest on every order in the rules' currency.
pub async fn run(
    store: Arc<dyn EventStore>,
    rules: &RuleSet,
    settings: &ChurnScoreSettings,
    request: &BacktestRequest,
) -> Result<BacktestReport, BacktestError> {
    let transactions = load_transactions(store.clone(), rules.clv.currency).await?;
    run_on(store, &transactions, rules, settings, request).await
}

/// [`run`] with the orders already read (by [`load_transactions`] in the
/// rules' currency), for callers that use them for more than the backtest.
pub async fn run_on(
    store: Arc<dyn EventStore>,
    transactions: &[Transaction],
    rules: &RuleSet,
    settings: &ChurnScoreSettings,
    request: &BacktestRequest,
) -> Result<BacktestReport, BacktestError> {
    if request.holdout_end <= request.calibration_end {
        return Err(BacktestError::Request {
            field: "holdout_end",
            problem: format!(
                "{} must be after the calibration end {}",
                request.holdout_end, request.calibration_end
            ),
        });
    }
    let unit = request.unit;
    let d = end_of_day(request.calibration_end);
    let e = end_of_day(request.holdout_end);
    let holdout_days = (request.holdout_end - request.calibration_end).num_days();
    let holdout_length = holdout_days as f64 / unit.days();
    let fit_at = d - Duration::days(i64::from(settings.fit_window_days));
    let fit_horizon = f64::from(settings.fit_window_days) / unit.days();
    let lookback = Duration::days(i64::from(settings.lookback_days));

    let summaries = summarize(transactions, d, unit)?;
    if summaries.is_empty() {
        return Err(BacktestError::Insufficient(format!(
            "no customer has an order in {} by the calibration end {}",
            rules.clv.currency, request.calibration_end
        )));
    }
    let models = Models::fit(&summaries, d);
    let holdout_counts = holdout_repeat_counts(transactions, d, e)?;
    let holdout_revenue = holdout_revenue(transactions, d, e)?;
    let facts = ledger_facts::collect(store, rules, &[d, fit_at], lookback).await?;
    let bought = |customer: &str| holdout_counts.get(customer).is_some_and(|&n| n > 0);

    let churn = fit_churn_score(settings, transactions, &facts, fit_at, d, fit_horizon, unit);
    let (churn_score, churn_score_unavailable) = match churn {
        Ok(fit) => (Some(fit), None),
        Err(BacktestError::Insufficient(why)) => (None, Some(why)),
        Err(other) => return Err(other),
    };

    let rfm_inputs = rfm_inputs_from_transactions(transactions, d);
    let rfm: HashMap<String, f64> =
        score_rfm(&rfm_inputs, &rules.clv.rfm.weights, &rules.clv.rfm.segments)?
            .into_iter()
            .map(|s| (s.customer, s.total))
            .collect();

    let unfit = |m: &Result<PurchaseModel, String>| m.as_ref().err().cloned();
    let mut columns = vec![
        Column::new(
            "bgnbd_expected_purchases",
            format!("BG/NBD expected repeat purchases in the next {holdout_length} units"),
            unfit(&models.bgnbd),
        ),
        Column::new(
            "bgnbd_p_alive",
            "BG/NBD P(alive) at the calibration end".into(),
            unfit(&models.bgnbd),
        ),
        Column::new(
            "paretonbd_expected_purchases",
            format!("Pareto/NBD expected repeat purchases in the next {holdout_length} units"),
            unfit(&models.paretonbd),
        ),
        Column::new(
            "paretonbd_p_alive",
            "Pareto/NBD P(alive) at the calibration end".into(),
            unfit(&models.paretonbd),
        ),
        Column::new(
            "rfm_score",
            "weighted RFM quintile score (clv.toml)".into(),
            None,
        ),
        Column::new(
            "lifecycle_stage",
            "stage: mature > active > reactivated > new > at_risk > dormant > churned".into(),
            None,
        ),
        Column::new(
            "churn_score",
            format!(
                "logistic churn score (validation/churn_score.toml), fitted as of {} days \
                 before the calibration end",
                settings.fit_window_days
            ),
            churn_score_unavailable
                .clone()
                .or_else(|| models.both().err().map(|e| e.to_string())),
        ),
    ];
    let scoring_models = models.both().ok();
    let enabled = enabled_rules(rules);
    let mut fired: HashMap<AlertRule, (usize, usize)> = HashMap::new();
    let mut stages: HashMap<String, (usize, usize, i64)> = HashMap::new();
    let mut buyers = 0;
    for s in &summaries {
        let positive = bought(&s.customer);
        buyers += usize::from(positive);
        let revenue = holdout_revenue.get(&s.customer).copied().unwrap_or(0);
        let (x, t_x, t) = (f64::from(s.frequency), s.recency, s.t);
        let f = facts.at(&s.customer, 0);
        let model = |m: &Result<PurchaseModel, String>| m.as_ref().ok().copied();
        let expected = |m: Option<PurchaseModel>| {
            m.map_or(Ok(0.0), |m| {
                m.conditional_expected_purchases(holdout_length, x, t_x, t)
            })
        };
        let alive = |m: Option<PurchaseModel>| m.map_or(Ok(0.0), |m| m.p_alive(x, t_x, t));
        let churn = match (&churn_score, &scoring_models) {
            (Some(report), Some(both)) => {
                let inputs = feature_inputs(s, &f, both, fit_horizon, d)?;
                report
                    .fit
                    .predict(&ChurnScore::row(&report.fit.features, &inputs))
            }
            _ => 0.0,
        };
        let values = [
            expected(model(&models.bgnbd)),
            alive(model(&models.bgnbd)),
            expected(model(&models.paretonbd)),
            alive(model(&models.paretonbd)),
            Ok(rfm.get(&s.customer).copied().unwrap_or(0.0)),
            Ok(stage_rank(f.stage.as_deref())),
            Ok(churn),
        ];
        for (column, value) in columns.iter_mut().zip(values) {
            column.push(value, positive, revenue)?;
        }
        for rule in &f.alerts_fired {
            let entry = fired.entry(*rule).or_default();
            entry.0 += 1;
            entry.1 += usize::from(!positive);
        }
        let stage = stages
            .entry(f.stage.clone().unwrap_or_else(|| "none".into()))
            .or_default();
        stage.0 += 1;
        stage.1 += usize::from(positive);
        stage.2 = stage.2.checked_add(revenue).ok_or_else(|| {
            BacktestError::Overflow(format!("stage {}", f.stage.as_deref().unwrap_or("none")))
        })?;
    }
    let n = summaries.len();
    let churned = n - buyers;
    let mut signals: Vec<SignalReport> = columns.into_iter().map(signal_report).collect();
    signals.sort_by(|a, b| {
        b.auc
            .unwrap_or(f64::NEG_INFINITY)
            .total_cmp(&a.auc.unwrap_or(f64::NEG_INFINITY))
    });
    let alert_rules = ALL_RULES
        .iter()
        .map(|&rule| {
            let (hits, correct) = fired.get(&rule).copied().unwrap_or_default();
            let precision = (hits > 0).then(|| correct as f64 / hits as f64);
            AlertRuleReport {
                rule,
                enabled: enabled.contains(&rule),
                fired: hits,
                precision,
                recall: (churned > 0).then(|| correct as f64 / churned as f64),
                lift: precision
                    .filter(|_| churned > 0)
                    .map(|p| p / (churned as f64 / n as f64)),
            }
        })
        .collect();
    let mut stages: Vec<StageReport> = stages
        .into_iter()
        .map(
            |(stage, (customers, bought_again, holdout_revenue_minor))| StageReport {
                rate: bought_again as f64 / customers as f64,
                stage,
                customers,
                bought_again,
                holdout_revenue_minor,
            },
        )
        .collect();
    stages.sort_by(|a, b| {
        stage_rank(Some(&b.stage))
            .total_cmp(&stage_rank(Some(&a.stage)))
            .then(a.stage.cmp(&b.stage))
    });
    let calibration = [&models.bgnbd, &models.paretonbd]
        .into_iter()
        .filter_map(|m| m.as_ref().ok().copied())
        .map(|model| {
            Ok(CalibrationTable {
                table: holdout_report(&model, &summaries, &holdout_counts, holdout_length)?,
                model,
            })
        })
        .collect::<Result<Vec<_>, BacktestError>>()?;
    Ok(BacktestReport {
        calibration_end: d,
        holdout_end: e,
        unit,
        holdout_length,
        customers: n,
        bought_again: buyers,
        base_rate: buyers as f64 / n as f64,
        holdout_revenue_minor: summaries.iter().try_fold(0_i64, |sum, s| {
            sum.checked_add(holdout_revenue.get(&s.customer).copied().unwrap_or(0))
                .ok_or_else(|| BacktestError::Overflow("all customers".into()))
        })?,
        currency: rules.clv.currency.code().to_owned(),
        signals,
        alert_rules,
        stages,
        calibration,
        churn_score,
        churn_score_unavailable,
    })
}

const ALL_RULES: [AlertRule; 5] = [
    AlertRule::FrequencyDrop,
    AlertRule::Complaints,
    AlertRule::LongOutage,
    AlertRule::CartAbandonment,
    AlertRule::HighValueAtRisk,
];

fn enabled_rules(rules: &RuleSet) -> Vec<AlertRule> {
    let a = &rules.alerts;
    [
        (AlertRule::FrequencyDrop, a.frequency_drop.enabled),
        (AlertRule::Complaints, a.complaints.enabled),
        (AlertRule::LongOutage, a.outage.enabled),
        (AlertRule::CartAbandonment, a.cart_abandonment.enabled),
        (AlertRule::HighValueAtRisk, a.high_value_at_risk.enabled),
    ]
    .into_iter()
    .filter_map(|(rule, on)| on.then_some(rule))
    .collect()
}

/// Fits the churn score on customers as of `fit_at`, labelled by whether
/// they bought in `(fit_at, cutoff]`.
fn fit_churn_score(
    settings: &ChurnScoreSettings,
    transactions: &[Transaction],
    facts: &FactsTable,
    fit_at: DateTime<Utc>,
    cutoff: DateTime<Utc>,
    horizon: f64,
    unit: TimeUnit,
) -> Result<ChurnScoreReport, BacktestError> {
    let summaries = summarize(transactions, fit_at, unit)?;
    if summaries.len() < 20 {
        return Err(BacktestError::Insufficient(format!(
            "only {} customers had bought by {fit_at}, the churn score's fitting instant \
             ({} days before the calibration end); a later calibration end or a shorter \
             fit_window_days gives it more",
            summaries.len(),
            settings.fit_window_days
        )));
    }
    let models = Models::fit(&summaries, fit_at).both()?;
    let labels = holdout_repeat_counts(transactions, fit_at, cutoff)?;
    let mut set = TrainingSet::until(cutoff);
    for s in &summaries {
        let inputs = feature_inputs(s, &facts.at(&s.customer, 1), &models, horizon, fit_at)?;
        let label = labels.get(&s.customer).is_some_and(|&n| n > 0);
        set.push(
            ChurnScore::row(&settings.features, &inputs),
            fit_at,
            label,
            cutoff,
        )?;
    }
    Ok(ChurnScoreReport {
        fitted_as_of: fit_at,
        labels_through: cutoff,
        fit: ChurnScore::fit(&settings.features, &set, settings.l2)?,
    })
}

fn signal_report(column: Column) -> SignalReport {
    let Column {
        signal,
        description,
        scored,
        revenue,
        unavailable,
    } = column;
    let scored = &scored[..];
    let riskiest: Vec<Scored> = scored
        .iter()
        .map(|s| Scored {
            score: -s.score,
            positive: !s.positive,
        })
        .collect();
    let curve = roc_curve(scored);
    let step = curve.len().div_ceil(ROC_POINTS).max(1);
    let mut roc: Vec<(f64, f64)> = curve.iter().copied().step_by(step).collect();
    if let Some(last) = curve.last() {
        if roc.last() != Some(last) {
            roc.push(*last);
        }
    }
    SignalReport {
        signal,
        description,
        auc: roc_auc(scored),
        riskiest_10: top_fraction(&riskiest, 0.1),
        riskiest_20: top_fraction(&riskiest, 0.2),
        roc,
        revenue_share_top_20: revenue_share_of_top(scored, &revenue, 0.2),
        unavailable,
    }
}

/// Each customer's holdout spend: orders (net of their refunds) in
/// `(from, to]`, summed with overflow checks.
fn holdout_revenue(
    transactions: &[Transaction],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<HashMap<String, i64>, BacktestError> {
    let mut out: HashMap<String, i64> = HashMap::new();
    for t in transactions.iter().filter(|t| t.at > from && t.at <= to) {
        let sum = out.entry(t.customer.clone()).or_default();
        *sum = sum
            .checked_add(t.amount_minor)
            .ok_or_else(|| BacktestError::Overflow(format!("customer {}", t.customer)))?;
    }
    Ok(out)
}

/// Share of the total revenue made by the `fraction` of customers with the
/// highest scores; customers tied at the cut count pro rata.
fn revenue_share_of_top(scored: &[Scored], revenue: &[i64], fraction: f64) -> Option<f64> {
    let total: f64 = revenue.iter().map(|&r| r as f64).sum();
    if scored.is_empty() || total <= 0.0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scored.len()).collect();
    order.sort_by(|&a, &b| scored[b].score.total_cmp(&scored[a].score));
    let mut room = fraction * scored.len() as f64;
    let mut captured = 0.0;
    let mut i = 0;
    while i < order.len() && room > 0.0 {
        // The group tied at this score.
        let mut j = i;
        while j < order.len() && scored[order[j]].score == scored[order[i]].score {
            j += 1;
        }
        let size = (j - i) as f64;
        let take = room.min(size);
        let group: f64 = order[i..j].iter().map(|&k| revenue[k] as f64).sum();
        captured += group * take / size;
        room -= take;
        i = j;
    }
    Some(captured / total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn scored(scores: &[f64]) -> Vec<Scored> {
        scores
            .iter()
            .map(|&score| Scored {
                score,
                positive: false,
            })
            .collect()
    }

    #[test]
    fn the_top_fifth_captures_its_revenue_with_ties_split_pro_rata() {
        // Ten customers; the top 20 % is two of them.
        let s = scored(&[9.0, 8.0, 7.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
        let r = [50, 30, 20, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(revenue_share_of_top(&s, &r, 0.2), Some(0.8));
        // Three tied at the top share the two places: 2/3 of their revenue.
        let s = scored(&[5.0, 5.0, 5.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
        let r = [30, 30, 0, 40, 0, 0, 0, 0, 0, 0];
        let share = revenue_share_of_top(&s, &r, 0.2).unwrap();
        assert!((share - 0.6 * 2.0 / 3.0).abs() < 1e-12, "{share}");
        assert_eq!(revenue_share_of_top(&s, &[0; 10], 0.2), None);
    }

    #[test]
    fn holdout_revenue_counts_orders_after_the_start_through_the_end() {
        let at = |d: u32| Utc.with_ymd_and_hms(2024, 1, d, 12, 0, 0).unwrap();
        let t = |c: &str, d: u32, amount_minor: i64| Transaction {
            customer: c.into(),
            at: at(d),
            amount_minor,
        };
        let txs = [
            t("a", 1, 100),
            t("a", 2, 200),
            t("a", 3, -50),
            t("b", 4, 70),
        ];
        let r = holdout_revenue(&txs, at(1), at(3)).unwrap();
        assert_eq!(r.get("a"), Some(&150));
        assert_eq!(r.get("b"), None);
        let huge = [t("a", 2, i64::MAX), t("a", 3, 1)];
        assert!(matches!(
            holdout_revenue(&huge, at(1), at(3)),
            Err(BacktestError::Overflow(_))
        ));
    }
}

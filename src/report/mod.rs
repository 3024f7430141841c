//! The analysts' workbench: everything the charts show, computed from the
//! ledger for one set of instants, and the page that draws it.
//!
//! The same [`Workbench`] value feeds `journey report --out report.html` (a
//! self-contained file: the data and the vendored chart library inline, so
//! it opens without a network) and the `/workbench` page of `journey serve`
//! (which fetches it over GraphQL with an analyst key). Keeping one data
//! type means the shared file and the live page cannot disagree.
//!
//! Every figure is computed for an explicit instant named in the data: the
//! stage timeline up to `to`, flows between two dates, the purchase models
//! fitted as of the calibration end (the holdout validation of
//! [`crate::backtest`]), so a chart never mixes "now" with "then".

mod cohorts;
pub mod page;
mod stages;
mod value;

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use thiserror::Error;

use crate::backtest::churn_score::ChurnScoreSettings;
use crate::backtest::{self, BacktestError, BacktestReport, BacktestRequest};
use crate::clv::ledger::{load_transactions, ClvLedgerError};
use crate::clv::{end_of_day, TimeUnit};
use crate::projections::rules::RuleSet;
use crate::store::EventStore;

pub use cohorts::CohortRetention;
pub use stages::{FlowMatrix, StageTimeline};
pub use value::{Histogram, TrackingPoint, ValueCharts};

/// Why the workbench could not be computed.
#[derive(Debug, Error)]
pub enum ReportError {
    /// The holdout validation failed.
    #[error(transparent)]
    Backtest(#[from] BacktestError),
    /// Reading the orders failed.
    #[error(transparent)]
    Transactions(#[from] ClvLedgerError),
    /// The store could not be read.
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// A customer's history could not be folded.
    #[error("folding customer {customer}: {reason}")]
    Fold {
        /// Customer id.
        customer: String,
        /// Why.
        reason: String,
    },
    /// A model formula failed.
    #[error("model: {0}")]
    Model(#[from] crate::clv::ClvError),
}

/// What the workbench is computed for.
#[derive(Debug, Clone)]
pub struct ReportRequest {
    /// Scoring instant of the holdout validation (end of that UTC day); also
    /// the first date of the stage-flow chart.
    pub calibration_end: NaiveDate,
    /// End of the holdout; also the last date of the stage timeline and the
    /// second date of the stage-flow chart.
    pub holdout_end: NaiveDate,
    /// Time unit of the purchase models.
    pub unit: TimeUnit,
}

/// Everything the workbench charts show.
#[derive(Debug, Clone, Serialize)]
pub struct Workbench {
    /// When this was computed (wall clock), for the page's footer.
    pub generated_at: DateTime<Utc>,
    /// Rules the figures were folded with (`name@version`, hash).
    pub rules: RulesLabel,
    /// Rules the diff chart compares against, when asked.
    pub compare_rules: Option<RulesLabel>,
    /// Customers per stage at regular instants.
    pub stage_timeline: StageTimeline,
    /// Who moved from which stage to which between the calibration end and
    /// the holdout end.
    pub stage_flows: FlowMatrix,
    /// Stage at the holdout end under `rules` (rows) and `compare_rules`
    /// (columns); absent without `compare_rules`.
    pub rules_diff: Option<FlowMatrix>,
    /// Share of each monthly acquisition cohort ordering in each later month.
    pub cohorts: CohortRetention,
    /// CLV and P(alive) distributions and the cumulative tracking plot.
    pub value: ValueCharts,
    /// The holdout validation (ROC curves, calibration tables).
    pub validation: BacktestReport,
}

/// Which rules a figure was computed with.
#[derive(Debug, Clone, Serialize)]
pub struct RulesLabel {
    /// `name@version` of each rule file.
    pub id: String,
    /// Hash of the rule files.
    pub hash: String,
}

impl RulesLabel {
    fn of(rules: &RuleSet) -> Self {
        Self {
            id: rules.rules_id(),
            hash: rules.hash.clone(),
        }
    }
}

/// Computes the workbench: one read of the orders (for the validation,
/// cohorts and value charts), the validation's pass over every stream for
/// its ledger facts, and one more for the stage charts (folded as of the
/// holdout end, and under the compared rules).
pub async fn build(
    store: Arc<dyn EventStore>,
    rules: &RuleSet,
    compare: Option<&RuleSet>,
    settings: &ChurnScoreSettings,
    request: &ReportRequest,
) -> Result<Workbench, ReportError> {
    let transactions = load_transactions(store.clone(), rules.clv.currency).await?;
    let validation = backtest::run_on(
        store.clone(),
        &transactions,
        rules,
        settings,
        &BacktestRequest {
            calibration_end: request.calibration_end,
            holdout_end: request.holdout_end,
            unit: request.unit,
        },
    )
    .await?;
    let d = end_of_day(request.calibration_end);
    let e = end_of_day(request.holdout_end);
    let histories = stages::collect(store, rules, compare, e).await?;
    Ok(Workbench {
        generated_at: Utc::now(),
        rules: RulesLabel::of(rules),
        compare_rules: compare.map(RulesLabel::of),
        stage_timeline: histories.timeline(e),
        stage_flows: histories.flows(d, e),
        rules_diff: compare.map(|_| histories.rules_diff(e)),
        cohorts: CohortRetention::from_transactions(&transactions, e),
        value: ValueCharts::compute(&validation, &transactions, rules, request.unit)?,
        validation,
    })
}

/// What a server's analysts validate and chart with: its rules, the rules
/// its operator chose to compare against (`journey serve --compare-rules`),
/// and the churn score's settings. Callers cannot point a server at other
/// rule files; the operator does.
#[derive(Debug, Clone)]
pub struct AnalysisSettings {
    /// The rules the server projects with.
    pub rules: RuleSet,
    /// Rules for the workbench's diff chart.
    pub compare: Option<RuleSet>,
    /// The churn score's features and fit window.
    pub churn_score: ChurnScoreSettings,
}

impl AnalysisSettings {
    /// The rules built into the binary, nothing to compare with.
    pub fn shipped() -> Self {
        Self {
            rules: RuleSet::shipped_defaults(),
            compare: None,
            churn_score: ChurnScoreSettings::shipped(),
        }
    }
}

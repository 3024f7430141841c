//! Customer-lifetime-value mathematics: the probabilistic "buy till you die"
//! purchase models (BG/NBD, Pareto/NBD), the Gamma-Gamma spend model,
//! discounted CLV, RFM scoring and holdout validation.
//!
//! The module is pure computation: callers hand in [`Transaction`]s (money in
//! integer minor units) and get back summaries, fitted parameters, scores and
//! reports. Nothing here performs I/O.
//!
//! Typical flow:
//! 1. [`summarize`] transactions as of a calibration end → [`CustomerSummary`]s
//!    (day-granular, see [`summary`] for the exact time convention).
//! 2. [`CompressedData::from_summaries`] groups identical (x, tₓ, T) triples
//!    so that fitting cost scales with distinct histories, not customers.
//! 3. [`BgNbdParams::fit`] / [`ParetoNbdParams::fit`] → [`PurchaseModel`];
//!    [`GammaGammaParams::fit`] on repeat buyers for spend.
//! 4. [`customer_lifetime_value`], [`holdout_report`], [`score_rfm`].
//! 5. [`ranking`]: how well any score (P(alive), RFM, an alert) ranks who
//!    then churned — ROC AUC with average ranks, the ROC curve, precision,
//!    recall and lift among the top fraction.

pub mod bgnbd;
#[allow(clippy::module_inception)]
pub mod clv;
pub mod gamma_gamma;
pub mod holdout;
pub mod ledger;
pub mod optimize;
pub mod paretonbd;
pub mod ranking;
pub mod rfm;
pub mod rules;
pub mod special;
pub mod summary;

pub use bgnbd::BgNbdParams;
pub use clv::{
    clv_to_cac_ratio, customer_lifetime_value, discounted_clv, discounted_purchases,
    discounted_purchases_if_alive, ClvOptions, CustomerClv,
};
pub use gamma_gamma::{GammaGammaData, GammaGammaParams};
pub use holdout::{holdout_repeat_counts, holdout_report, HoldoutBucket, HoldoutReport};
pub use optimize::FitOptions;
pub use paretonbd::ParetoNbdParams;
pub use rfm::{
    default_segment_rules, rfm_inputs_from_transactions, score_rfm, RfmInput, RfmScore, RfmWeights,
    SegmentRule, SegmentRules,
};
pub use summary::{end_of_day, summarize, CompressedData, CustomerSummary, TimeUnit, Transaction};

use serde::{Deserialize, Serialize};

/// Everything that can go wrong in CLV computations; callers get a typed
/// reason instead of a panic or a NaN.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClvError {
    /// A fit or report was asked for with no (eligible) customers.
    #[error("no customers to fit")]
    NoCustomers,
    /// The optimiser hit its iteration budget before meeting the tolerance.
    #[error("optimizer did not converge after {iterations} iterations (best log-likelihood {log_likelihood})")]
    DidNotConverge {
        /// Iterations spent.
        iterations: usize,
        /// Best log-likelihood reached.
        log_likelihood: f64,
    },
    /// Input data or parameters violate the model's assumptions.
    #[error("invalid input `{field}`: {reason}")]
    InvalidInput {
        /// Name of the offending field or argument.
        field: &'static str,
        /// Human-readable explanation.
        reason: String,
    },
    /// A special function could not be evaluated to full precision.
    #[error("numerical failure: {0}")]
    Numerical(String),
}

/// Shorthand for building [`ClvError::InvalidInput`].
pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> ClvError {
    ClvError::InvalidInput {
        field,
        reason: reason.into(),
    }
}

/// Result of a maximum-likelihood fit, generic over the parameter struct so
/// every model reports the same diagnostics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitResult<P> {
    /// Maximum-likelihood estimates.
    pub params: P,
    /// Log-likelihood at the estimates (sum over customers, weights applied).
    pub log_likelihood: f64,
    /// Number of customers the fit used (sum of weights).
    pub n_customers: u64,
    /// Number of distinct compressed rows the likelihood was evaluated on.
    pub n_distinct: usize,
    /// Optimiser iterations used (all restarts).
    pub iterations: usize,
    /// Asymptotic standard errors from the inverted numerical Hessian of the
    /// negative log-likelihood; `None` if not requested or not positive definite.
    pub standard_errors: Option<P>,
}

/// A fitted purchase-frequency model, so downstream code (CLV, holdout) can
/// be written once for both BG/NBD and Pareto/NBD.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "model", content = "params", rename_all = "snake_case")]
pub enum PurchaseModel {
    /// Fader, Hardie & Lee (2005) beta-geometric/NBD.
    BgNbd(BgNbdParams),
    /// Schmittlein, Morrison & Colombo (1987) Pareto/NBD.
    ParetoNbd(ParetoNbdParams),
}

impl PurchaseModel {
    /// The model's usual name, for people ("BG/NBD", "Pareto/NBD").
    pub fn name(&self) -> &'static str {
        match self {
            Self::BgNbd(_) => "BG/NBD",
            Self::ParetoNbd(_) => "Pareto/NBD",
        }
    }

    /// Which of the rules' choices this model is.
    pub fn choice(&self) -> rules::ModelChoice {
        match self {
            Self::BgNbd(_) => rules::ModelChoice::Bgnbd,
            Self::ParetoNbd(_) => rules::ModelChoice::Paretonbd,
        }
    }

    /// Probability the customer is still active at `t_cal` given frequency `x`
    /// and recency `t_x` — drives churn-risk flags.
    pub fn p_alive(&self, x: f64, t_x: f64, t_cal: f64) -> Result<f64, ClvError> {
        match self {
            Self::BgNbd(p) => p.p_alive(x, t_x, t_cal),
            Self::ParetoNbd(p) => p.p_alive(x, t_x, t_cal),
        }
    }

    /// Expected repeat purchases in (T, T + t] for a customer with history
    /// (x, tₓ, T) — the quantity CLV and holdout validation are built on.
    pub fn conditional_expected_purchases(
        &self,
        t: f64,
        x: f64,
        t_x: f64,
        t_cal: f64,
    ) -> Result<f64, ClvError> {
        match self {
            Self::BgNbd(p) => p.conditional_expected_purchases(t, x, t_x, t_cal),
            Self::ParetoNbd(p) => p.conditional_expected_purchases(t, x, t_x, t_cal),
        }
    }

    /// Expected repeat purchases in (T, T + t] of a customer still alive at
    /// T after x repeat purchases; times P(alive), the conditional
    /// expectation. Both models factor so, and this part does not depend
    /// on tₓ: customers who share (x, T) share it.
    pub fn expected_purchases_if_alive(&self, t: f64, x: f64, t_cal: f64) -> Result<f64, ClvError> {
        match self {
            Self::BgNbd(p) => p.expected_purchases_if_alive(t, x, t_cal),
            Self::ParetoNbd(p) => p.expected_purchases_if_alive(t, x, t_cal),
        }
    }

    /// Expected repeat purchases in (0, t] for a randomly chosen new customer
    /// — used for cohort forecasts before any history exists.
    pub fn expected_purchases(&self, t: f64) -> Result<f64, ClvError> {
        match self {
            Self::BgNbd(p) => p.expected_purchases(t),
            Self::ParetoNbd(p) => p.expected_purchases(t),
        }
    }

    /// Log-likelihood of compressed data under this model, for model
    /// comparison on the same data.
    pub fn log_likelihood(&self, data: &CompressedData) -> Result<f64, ClvError> {
        match self {
            Self::BgNbd(p) => p.log_likelihood(data),
            Self::ParetoNbd(p) => p.log_likelihood(data),
        }
    }
}

/// Checks a (x, tₓ, T) history before it is fed to a model formula.
pub(crate) fn check_history(x: f64, t_x: f64, t_cal: f64) -> Result<(), ClvError> {
    if !(x.is_finite() && x >= 0.0) {
        return Err(invalid(
            "x",
            format!("frequency must be finite and >= 0, got {x}"),
        ));
    }
    if !(t_x.is_finite() && t_x >= 0.0) {
        return Err(invalid(
            "t_x",
            format!("recency must be finite and >= 0, got {t_x}"),
        ));
    }
    if !(t_cal.is_finite() && t_cal >= t_x) {
        return Err(invalid(
            "t",
            format!("age T must be finite and >= recency ({t_x}), got {t_cal}"),
        ));
    }
    if x == 0.0 && t_x != 0.0 {
        return Err(invalid("t_x", "recency must be 0 when frequency is 0"));
    }
    Ok(())
}

/// Checks that a model parameter is strictly positive and finite.
pub(crate) fn check_positive(field: &'static str, v: f64) -> Result<(), ClvError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(invalid(field, format!("must be finite and > 0, got {v}")))
    }
}

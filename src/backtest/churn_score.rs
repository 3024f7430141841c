//! The churn score: a logistic model over the purchase models' outputs and
//! the ledger's own facts, fitted on an earlier window than the one it is
//! judged on.
//!
//! The textbook models (BG/NBD, Pareto/NBD) see only (frequency, recency, T).
//! The ledger knows more: complaints, refunds, sessions, abandoned carts, the
//! loyalty tier, the alerts its rules raised. The score combines them in a
//! penalized logistic regression ("will the customer buy again within the
//! window?"): features are standardized on the fitting set, the L2 penalty
//! keeps weights of uninformative features near zero, and Newton's method
//! (iteratively reweighted least squares) finds the optimum — the problem is
//! convex, so the answer does not depend on a starting point or a seed.
//!
//! Which features and how strong a penalty are data
//! (`projections/validation/churn_score.toml`); the fitted weights are part of
//! every report, so an analyst can see what the score leans on.
//!
//! The fitting set is built from customers as of `D − W` labelled by what
//! they did in `(D − W, D]`; the score is then computed as of `D` and judged
//! on `(D, E]`. [`TrainingSet`] refuses any example whose features or label
//! reach past `D`, so the evaluation window can never leak into the fit.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::BacktestError;

/// The shipped churn-score settings.
pub const SHIPPED_TOML: &str = include_str!("../../projections/validation/churn_score.toml");

/// Inputs one customer offers the score, as of one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeatureInputs {
    /// Repeat purchase days (x).
    pub repeat_purchases: f64,
    /// First to last purchase, in model units (tₓ).
    pub recency: f64,
    /// First purchase to the instant, in model units (T).
    pub age: f64,
    /// Days since the last purchase.
    pub days_since_last_order: f64,
    /// Mean value of repeat purchases, major units.
    pub average_spend: f64,
    /// BG/NBD P(alive).
    pub bgnbd_p_alive: f64,
    /// BG/NBD expected purchases over the fit window's length.
    pub bgnbd_expected: f64,
    /// Pareto/NBD P(alive).
    pub paretonbd_p_alive: f64,
    /// Complaints in the lookback window.
    pub complaints: f64,
    /// Refunds in the lookback window.
    pub refunds: f64,
    /// Sessions in the lookback window.
    pub sessions: f64,
    /// Abandoned carts in the lookback window.
    pub carts_abandoned: f64,
    /// Loyalty tier (0–3).
    pub loyalty_tier: f64,
    /// Alert rules fired in the lookback window.
    pub alerts_fired: f64,
}

/// A feature the score can use, by the name the settings file gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    /// ln(1 + x).
    LogRepeatPurchases,
    /// tₓ / T (0 when T = 0).
    RecencyRatio,
    /// ln(1 + T).
    LogAge,
    /// ln(1 + days since the last purchase).
    LogDaysSinceLastOrder,
    /// Days since the last purchase over the customer's mean gap between
    /// purchase days (capped at 10; 0 without a repeat purchase): how
    /// overdue the next purchase is by the customer's own rhythm.
    OverdueRatio,
    /// ln(1 + average repeat spend).
    LogAverageSpend,
    /// BG/NBD P(alive).
    BgnbdPAlive,
    /// ln(1 + BG/NBD expected purchases).
    LogBgnbdExpected,
    /// Pareto/NBD P(alive).
    ParetonbdPAlive,
    /// Complaints in the lookback window.
    Complaints,
    /// Refunds in the lookback window.
    Refunds,
    /// ln(1 + sessions in the lookback window).
    LogSessions,
    /// Abandoned carts in the lookback window.
    CartsAbandoned,
    /// Loyalty tier.
    LoyaltyTier,
    /// Alert rules fired in the lookback window.
    AlertsFired,
}

impl Feature {
    /// The feature's value for `f`.
    pub fn value(self, f: &FeatureInputs) -> f64 {
        match self {
            Feature::LogRepeatPurchases => f.repeat_purchases.ln_1p(),
            Feature::RecencyRatio => {
                if f.age > 0.0 {
                    f.recency / f.age
                } else {
                    0.0
                }
            }
            Feature::LogAge => f.age.ln_1p(),
            Feature::LogDaysSinceLastOrder => f.days_since_last_order.ln_1p(),
            Feature::OverdueRatio => {
                if f.repeat_purchases >= 1.0 && f.recency > 0.0 {
                    let mean_gap_units = f.recency / f.repeat_purchases;
                    let since_units = (f.age - f.recency).max(0.0);
                    (since_units / mean_gap_units).min(10.0)
                } else {
                    0.0
                }
            }
            Feature::LogAverageSpend => f.average_spend.max(0.0).ln_1p(),
            Feature::BgnbdPAlive => f.bgnbd_p_alive,
            Feature::LogBgnbdExpected => f.bgnbd_expected.max(0.0).ln_1p(),
            Feature::ParetonbdPAlive => f.paretonbd_p_alive,
            Feature::Complaints => f.complaints,
            Feature::Refunds => f.refunds,
            Feature::LogSessions => f.sessions.ln_1p(),
            Feature::CartsAbandoned => f.carts_abandoned,
            Feature::LoyaltyTier => f.loyalty_tier,
            Feature::AlertsFired => f.alerts_fired,
        }
    }
}

/// `projections/validation/churn_score.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChurnScoreSettings {
    /// File format version (1).
    pub version: u32,
    /// Length of the fitting window W, days: the score is fitted on
    /// customers as of `calibration_end − W`, labelled by whether they
    /// bought in the W days up to `calibration_end`.
    pub fit_window_days: u32,
    /// L2 penalty on the standardized weights (not the intercept).
    pub l2: f64,
    /// Interactions are counted over this many days before the instant.
    pub lookback_days: u32,
    /// Features, by name.
    pub features: Vec<Feature>,
}

impl ChurnScoreSettings {
    /// The shipped settings.
    pub fn shipped() -> Self {
        Self::parse(
            Path::new("projections/validation/churn_score.toml"),
            SHIPPED_TOML,
        )
        .expect("shipped churn-score settings are valid")
    }

    /// `dir/validation/churn_score.toml`, or the shipped settings when the
    /// rules directory has none.
    pub fn load_dir(dir: &Path) -> Result<Self, BacktestError> {
        let path = dir.join("validation").join("churn_score.toml");
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::shipped()),
            Err(e) => Err(BacktestError::Settings {
                file: path.display().to_string(),
                problem: e.to_string(),
            }),
        }
    }

    /// Parses and checks settings read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, BacktestError> {
        let bad = |problem: String| BacktestError::Settings {
            file: path.display().to_string(),
            problem,
        };
        let settings: Self = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        if settings.version != 1 {
            return Err(bad(format!("version {} is not 1", settings.version)));
        }
        if settings.fit_window_days == 0 {
            return Err(bad("fit_window_days must be at least 1".into()));
        }
        if !(settings.l2.is_finite() && settings.l2 >= 0.0) {
            return Err(bad("l2 must be a finite number >= 0".into()));
        }
        if settings.features.is_empty() {
            return Err(bad("features must name at least one feature".into()));
        }
        Ok(settings)
    }
}

/// Labelled examples for the fit, all as of instants no later than the
/// cut-off (the evaluation window's start).
#[derive(Debug, Clone)]
pub struct TrainingSet {
    cutoff: DateTime<Utc>,
    rows: Vec<Vec<f64>>,
    labels: Vec<bool>,
}

impl TrainingSet {
    /// An empty set that accepts only examples known by `cutoff`.
    pub fn until(cutoff: DateTime<Utc>) -> Self {
        Self {
            cutoff,
            rows: Vec::new(),
            labels: Vec::new(),
        }
    }

    /// Adds an example whose features are as of `features_at` and whose
    /// label was observed through `label_through`. Refuses anything past the
    /// cut-off: that would be fitting on the evaluation window.
    pub fn push(
        &mut self,
        features: Vec<f64>,
        features_at: DateTime<Utc>,
        label: bool,
        label_through: DateTime<Utc>,
    ) -> Result<(), BacktestError> {
        if features_at > self.cutoff || label_through > self.cutoff {
            return Err(BacktestError::Leak {
                cutoff: self.cutoff,
                seen: features_at.max(label_through),
            });
        }
        self.rows.push(features);
        self.labels.push(label);
        Ok(())
    }

    /// Examples.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// A fitted score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChurnScore {
    /// The features, in order.
    pub features: Vec<Feature>,
    /// Intercept (standardized space).
    pub intercept: f64,
    /// One weight per feature, on the standardized feature: comparable
    /// across features (the change in log-odds per standard deviation).
    pub weights: Vec<f64>,
    /// Fitting-set mean of each feature.
    pub means: Vec<f64>,
    /// Fitting-set standard deviation of each feature (1 where constant).
    pub scales: Vec<f64>,
    /// Newton iterations used.
    pub iterations: u32,
    /// Examples fitted on.
    pub examples: usize,
    /// Positive examples among them.
    pub positives: usize,
}

impl ChurnScore {
    /// Fits the score. Needs both outcomes among the examples.
    pub fn fit(
        features: &[Feature],
        set: &TrainingSet,
        l2: f64,
    ) -> Result<ChurnScore, BacktestError> {
        let n = set.rows.len();
        let positives = set.labels.iter().filter(|&&y| y).count();
        if positives == 0 || positives == n {
            return Err(BacktestError::Insufficient(format!(
                "the fitting window has {n} customers of whom {positives} bought again; \
                 the churn score needs both outcomes (try a longer fit_window_days or a \
                 later calibration end)"
            )));
        }
        let p = features.len();
        let mut means = vec![0.0; p];
        let mut scales = vec![0.0; p];
        for row in &set.rows {
            for (m, v) in means.iter_mut().zip(row) {
                *m += v / n as f64;
            }
        }
        for row in &set.rows {
            for ((s, v), m) in scales.iter_mut().zip(row).zip(&means) {
                *s += (v - m).powi(2) / n as f64;
            }
        }
        for s in &mut scales {
            *s = if *s > 1e-12 { s.sqrt() } else { 1.0 };
        }
        let standardized: Vec<Vec<f64>> = set
            .rows
            .iter()
            .map(|row| {
                std::iter::once(1.0)
                    .chain(
                        row.iter()
                            .zip(&means)
                            .zip(&scales)
                            .map(|((v, m), s)| (v - m) / s),
                    )
                    .collect()
            })
            .collect();
        let k = p + 1;
        let mut beta = vec![0.0; k];
        let mut iterations = 0;
        loop {
            iterations += 1;
            let mut gradient = vec![0.0; k];
            let mut hessian = vec![vec![0.0; k]; k];
            for (x, &y) in standardized.iter().zip(&set.labels) {
                let eta: f64 = x.iter().zip(&beta).map(|(a, b)| a * b).sum();
                let prob = sigmoid(eta);
                let residual = f64::from(u8::from(y)) - prob;
                let w = (prob * (1.0 - prob)).max(1e-12);
                for i in 0..k {
                    gradient[i] += residual * x[i];
                    for (h, xj) in hessian[i].iter_mut().zip(x.iter()) {
                        *h += w * x[i] * xj;
                    }
                }
            }
            for i in 1..k {
                gradient[i] -= l2 * beta[i];
                hessian[i][i] += l2;
            }
            let step = solve_spd(hessian, gradient).ok_or_else(|| {
                BacktestError::Insufficient(
                    "the churn score's fit is singular (features perfectly separate the \
                     outcomes; raise l2)"
                        .into(),
                )
            })?;
            let largest = step.iter().fold(0.0_f64, |m, s| m.max(s.abs()));
            for (b, s) in beta.iter_mut().zip(&step) {
                *b += s;
            }
            if largest < 1e-10 || iterations >= 100 {
                break;
            }
        }
        Ok(ChurnScore {
            features: features.to_vec(),
            intercept: beta[0],
            weights: beta[1..].to_vec(),
            means,
            scales,
            iterations,
            examples: n,
            positives,
        })
    }

    /// P(buys again within the window) for a feature row.
    pub fn predict(&self, row: &[f64]) -> f64 {
        let eta = self.intercept
            + row
                .iter()
                .zip(&self.weights)
                .zip(self.means.iter().zip(&self.scales))
                .map(|((v, w), (m, s))| w * (v - m) / s)
                .sum::<f64>();
        sigmoid(eta)
    }

    /// A customer's feature row.
    pub fn row(features: &[Feature], inputs: &FeatureInputs) -> Vec<f64> {
        features.iter().map(|f| f.value(inputs)).collect()
    }
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Solves `a · x = b` for a symmetric positive definite `a` (Cholesky);
/// `None` when `a` is not positive definite. Written with indices as the
/// textbook states it; the matrices are at most a few dozen wide.
#[allow(clippy::needless_range_loop)]
fn solve_spd(mut a: Vec<Vec<f64>>, b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for j in 0..n {
        let mut d = a[j][j];
        for k in 0..j {
            d -= a[j][k] * a[j][k];
        }
        if d.is_nan() || d <= 1e-14 {
            return None;
        }
        let d = d.sqrt();
        a[j][j] = d;
        for i in j + 1..n {
            let mut s = a[i][j];
            for k in 0..j {
                s -= a[i][k] * a[j][k];
            }
            a[i][j] = s / d;
        }
    }
    let mut y = b;
    for i in 0..n {
        for k in 0..i {
            y[i] -= a[i][k] * y[k];
        }
        y[i] /= a[i][i];
    }
    for i in (0..n).rev() {
        for k in i + 1..n {
            y[i] -= a[k][i] * y[k];
        }
        y[i] /= a[i][i];
    }
    Some(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(day: u32) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&format!("2024-01-{day:02}T00:00:00Z"))
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn the_shipped_settings_parse() {
        let s = ChurnScoreSettings::shipped();
        assert!(!s.features.is_empty());
    }

    #[test]
    fn an_example_past_the_cutoff_is_refused() {
        let mut set = TrainingSet::until(at(10));
        set.push(vec![1.0], at(5), true, at(10)).unwrap();
        assert!(matches!(
            set.push(vec![1.0], at(5), true, at(11)),
            Err(BacktestError::Leak { .. })
        ));
        assert!(matches!(
            set.push(vec![1.0], at(11), true, at(9)),
            Err(BacktestError::Leak { .. })
        ));
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn the_fit_recovers_a_known_logistic_relation() {
        // y = 1 with probability sigmoid(-0.5 + 2·x), x on a grid: the
        // expected counts make the maximum-likelihood estimate exact.
        let mut set = TrainingSet::until(at(10));
        for i in 0..200 {
            let x = (i as f64 - 100.0) / 50.0;
            let p = sigmoid(-0.5 + 2.0 * x);
            let positives = (p * 1000.0).round() as usize;
            for j in 0..1000 {
                set.push(vec![x], at(1), j < positives, at(2)).unwrap();
            }
        }
        let score = ChurnScore::fit(&[Feature::Complaints], &set, 0.0).unwrap();
        let slope = score.weights[0] / score.scales[0];
        let intercept = score.intercept - score.weights[0] * score.means[0] / score.scales[0];
        assert!((slope - 2.0).abs() < 0.01, "{slope}");
        assert!((intercept + 0.5).abs() < 0.01, "{intercept}");
        assert!((score.predict(&[0.0]) - sigmoid(-0.5)).abs() < 0.002);
    }

    #[test]
    fn one_outcome_only_is_an_error_that_says_why() {
        let mut set = TrainingSet::until(at(10));
        set.push(vec![1.0], at(1), true, at(2)).unwrap();
        set.push(vec![2.0], at(1), true, at(2)).unwrap();
        let err = ChurnScore::fit(&[Feature::Complaints], &set, 1.0).unwrap_err();
        assert!(err.to_string().contains("both outcomes"), "{err}");
    }

    #[test]
    fn the_overdue_ratio_measures_time_since_the_last_purchase_in_own_gaps() {
        let f = FeatureInputs {
            repeat_purchases: 4.0,
            recency: 8.0,
            age: 14.0,
            ..FeatureInputs::default()
        };
        // Mean gap 2 units, 6 units since the last purchase: 3 gaps overdue.
        assert_eq!(Feature::OverdueRatio.value(&f), 3.0);
        let first_only = FeatureInputs {
            age: 14.0,
            ..FeatureInputs::default()
        };
        assert_eq!(Feature::OverdueRatio.value(&first_only), 0.0);
    }
}

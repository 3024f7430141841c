//! The CLV/RFM rules file (`projections/clv.toml`): which model, time unit,
//! horizon, discounting, RFM weights and segments. Validated on load with
//! errors naming the file, the key and the problem.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::rfm::{RfmWeights, SegmentRule};
use super::summary::TimeUnit;
use crate::domain::Currency;

/// The file name inside a rules directory.
pub const FILE_NAME: &str = "clv.toml";

/// A rules file that cannot be used.
#[derive(Debug, Error)]
#[error("{file}: {key}: {problem}")]
pub struct ClvRulesError {
    /// The file.
    pub file: PathBuf,
    /// Dotted key path (or `-` for the whole file).
    pub key: String,
    /// What is wrong.
    pub problem: String,
}

/// Which purchase-process model to fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ModelChoice {
    /// BG/NBD.
    Bgnbd,
    /// Pareto/NBD.
    Paretonbd,
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Purchase model.
    pub purchase_model: ModelChoice,
    /// Time unit of recency, T and horizons.
    pub time_unit: TimeUnit,
}

/// `[clv]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClvSection {
    /// Horizon of the discounted CLV, in months.
    pub horizon_months: u32,
    /// Discount rate per month.
    pub monthly_discount_rate: f64,
}

/// `[rfm]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RfmSection {
    /// Weights of the scores in the total.
    #[serde(default)]
    pub weights: RfmWeights,
    /// Segments, first match wins.
    pub segments: Vec<SegmentRule>,
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClvRules {
    /// Format version of the file (1).
    pub version: u32,
    /// Currency whose orders feed the models.
    pub currency: Currency,
    /// Model choice.
    pub model: ModelSection,
    /// CLV horizon and discounting.
    pub clv: ClvSection,
    /// RFM weights and segments.
    pub rfm: RfmSection,
}

impl ClvRules {
    /// Loads `DIR/clv.toml`.
    pub fn load_dir(dir: &Path) -> Result<Self, ClvRulesError> {
        Self::load(&dir.join(FILE_NAME))
    }

    /// Loads and validates one file.
    pub fn load(file: &Path) -> Result<Self, ClvRulesError> {
        let err = |key: &str, problem: String| ClvRulesError {
            file: file.to_owned(),
            key: key.to_owned(),
            problem,
        };
        let text = std::fs::read_to_string(file).map_err(|e| err("-", e.to_string()))?;
        Self::parse(&text).map_err(|(key, problem)| err(&key, problem))
    }

    /// Parses and validates TOML text; errors are `(key, problem)`.
    pub fn parse(text: &str) -> Result<Self, (String, String)> {
        let rules: Self = toml::from_str(text).map_err(|e| {
            let message = e.message().to_owned();
            let line = e
                .span()
                .map(|s| text[..s.start].lines().count().max(1))
                .map(|l| format!(" (line {l})"))
                .unwrap_or_default();
            ("-".to_owned(), format!("{message}{line}"))
        })?;
        rules.validate()?;
        Ok(rules)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, problem: &str| Err((key.to_owned(), problem.to_owned()));
        if self.version != 1 {
            return bad("version", "only version 1 is understood by this build");
        }
        if self.clv.horizon_months == 0 || self.clv.horizon_months > 600 {
            return bad("clv.horizon_months", "must be between 1 and 600");
        }
        let d = self.clv.monthly_discount_rate;
        if !(0.0..1.0).contains(&d) {
            return bad(
                "clv.monthly_discount_rate",
                "must be at least 0 and below 1",
            );
        }
        let w = &self.rfm.weights;
        for (key, v) in [
            ("rfm.weights.recency", w.recency),
            ("rfm.weights.frequency", w.frequency),
            ("rfm.weights.monetary", w.monetary),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(key, "must be a non-negative number");
            }
        }
        if self.rfm.segments.is_empty() {
            return bad("rfm.segments", "needs at least one segment");
        }
        for (i, s) in self.rfm.segments.iter().enumerate() {
            for (name, lo, hi) in [
                ("r", s.r_min, s.r_max),
                ("f", s.f_min, s.f_max),
                ("m", s.m_min, s.m_max),
            ] {
                if !(1..=5).contains(&lo) || !(1..=5).contains(&hi) || lo > hi {
                    return Err((
                        format!("rfm.segments[{i}] ({})", s.name),
                        format!("{name}_min..{name}_max must be within 1..5 and ordered, got {lo}..{hi}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> String {
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/projections/clv.toml"))
            .unwrap()
    }

    #[test]
    fn shipped_rules_load_with_the_documented_defaults() {
        let rules = ClvRules::parse(&shipped()).unwrap();
        assert_eq!(rules.model.purchase_model, ModelChoice::Bgnbd);
        assert_eq!(rules.model.time_unit, TimeUnit::Week);
        assert_eq!(rules.rfm.weights.monetary, 0.45);
        assert_eq!(rules.rfm.segments[0].name, "champions");
    }

    #[test]
    fn errors_name_the_key() {
        let text = shipped().replace(
            "monthly_discount_rate = 0.01",
            "monthly_discount_rate = 1.5",
        );
        let (key, _) = ClvRules::parse(&text).unwrap_err();
        assert_eq!(key, "clv.monthly_discount_rate");
        let text = shipped().replace("r_min = 4\nf_min = 4", "r_min = 6\nf_min = 4");
        let (key, problem) = ClvRules::parse(&text).unwrap_err();
        assert!(key.contains("champions"), "{key}");
        assert!(problem.contains("6..5"), "{problem}");
        let text = shipped().replace("currency = \"USD\"", "currency = \"XYZ\"");
        let (_, problem) = ClvRules::parse(&text).unwrap_err();
        assert!(
            problem.contains("ISO 4217") && problem.contains("line"),
            "{problem}"
        );
        let text = shipped().replace("time_unit = \"week\"", "time_unit = \"fortnight\"");
        assert!(ClvRules::parse(&text).is_err());
    }
}

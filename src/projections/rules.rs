//! Projection rules as data: versioned TOML files in a rules directory
//! (`projections/` by default), validated on load.
//!
//! Each projection owns one file (`lifecycle.toml`, later `loyalty.toml`,
//! `alerts.toml`, ...). Every file carries `rules_id` (a name for humans)
//! and `version` (the file format version this build understands). Errors
//! name the file, the key and the problem, e.g.
//! `projections/lifecycle.toml: stages.at_risk.after_days: must be less than
//! stages.dormant.after_days (180), got 200`.

use std::path::{Path, PathBuf};

use chrono::Duration;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::alerts::AlertRules;
use super::loyalty::LoyaltyRules;
use super::rules_error::RulesFile;
use crate::clv::rules::ClvRules;
use crate::domain::Currency;

/// The only rules file format version this build reads.
pub const RULES_FORMAT_VERSION: u32 = 1;

/// Why a rules directory could not be loaded.
#[derive(Debug, Error)]
pub enum RulesError {
    /// A file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A file is not valid TOML of the expected shape.
    #[error("{path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// The parser's message, naming the key and line.
        message: String,
    },
    /// A loyalty or alerts rules file is invalid (names file, key, problem).
    #[error(transparent)]
    File(#[from] super::rules_error::RulesError),
    /// A value is out of range or inconsistent with another.
    #[error("{path}: {key}: {problem}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// Dotted key, e.g. `stages.at_risk.after_days`.
        key: String,
        /// What is wrong.
        problem: String,
    },
}

/// All rule sets of a rules directory, plus a hash identifying them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RuleSet {
    /// Lifecycle stages and value tiers (`lifecycle.toml`).
    pub lifecycle: LifecycleRules,
    /// Points, lots, expiry and loyalty tiers (`loyalty.toml`).
    #[serde(default = "LoyaltyRules::shipped")]
    pub loyalty: LoyaltyRules,
    /// Churn early-warning rules (`alerts.toml`).
    #[serde(default = "AlertRules::shipped")]
    pub alerts: AlertRules,
    /// CLV model and RFM segments (`clv.toml`).
    #[serde(default = "shipped_clv")]
    pub clv: ClvRules,
    /// SHA-256 over every `*.toml` file of the directory (names and bytes,
    /// in name order): two rebuilds with the same hash must agree.
    pub hash: String,
}

fn shipped_clv() -> ClvRules {
    ClvRules::parse(SHIPPED_CLV_TOML).expect("shipped clv rules are valid")
}

const SHIPPED_LIFECYCLE_TOML: &str = include_str!("../../projections/lifecycle.toml");
const SHIPPED_CLV_TOML: &str = include_str!("../../projections/clv.toml");

impl RuleSet {
    /// Loads and validates every rules file of `dir` (all four must exist:
    /// a rebuild under half-defaulted rules would be hard to explain).
    pub fn load(dir: &Path) -> Result<Self, RulesError> {
        let lifecycle_path = dir.join("lifecycle.toml");
        let text = read(&lifecycle_path)?;
        let lifecycle = LifecycleRules::parse(&lifecycle_path, &text)?;
        let loyalty = LoyaltyRules::load_dir(dir)?;
        let alerts = AlertRules::load_dir(dir)?;
        let clv = ClvRules::load_dir(dir).map_err(|e| RulesError::Invalid {
            path: e.file,
            key: e.key,
            problem: e.problem,
        })?;
        Ok(Self {
            lifecycle,
            loyalty,
            alerts,
            clv,
            hash: hash_dir(dir)?,
        })
    }

    /// The default rules shipped in `projections/`, compiled in, for tests
    /// and for a first run without a rules directory. The hash equals what
    /// [`RuleSet::load`] computes for an unchanged `projections/`.
    pub fn shipped_defaults() -> Self {
        let lifecycle = LifecycleRules::parse(
            Path::new("projections/lifecycle.toml"),
            SHIPPED_LIFECYCLE_TOML,
        )
        .expect("shipped rules are valid");
        let mut hasher = Sha256::new();
        for (name, text) in [
            ("alerts.toml", AlertRules::SHIPPED_TOML),
            ("clv.toml", SHIPPED_CLV_TOML),
            ("lifecycle.toml", SHIPPED_LIFECYCLE_TOML),
            ("loyalty.toml", LoyaltyRules::SHIPPED_TOML),
        ] {
            hasher.update(name.as_bytes());
            hasher.update(b"\0");
            hasher.update(text.as_bytes());
        }
        Self {
            lifecycle,
            loyalty: LoyaltyRules::shipped(),
            alerts: AlertRules::shipped(),
            clv: shipped_clv(),
            hash: hex::encode(hasher.finalize()),
        }
    }

    /// A rule set built in code (tests, diff experiments) from lifecycle
    /// rules and the shipped others; its hash covers its serialized content.
    pub fn from_lifecycle(lifecycle: LifecycleRules) -> Self {
        Self {
            lifecycle,
            ..Self::shipped_defaults()
        }
        .rehashed()
    }

    /// The same rules with the hash recomputed over their content (after
    /// changing a field in code).
    pub fn rehashed(mut self) -> Self {
        self.hash = String::new();
        let json = serde_json::to_string(&self).expect("rules serialize");
        self.hash = hex::encode(Sha256::digest(json.as_bytes()));
        self
    }

    /// A short label for reports: the rules ids.
    pub fn rules_id(&self) -> String {
        self.lifecycle.rules_id.clone()
    }
}

fn read(path: &Path) -> Result<String, RulesError> {
    std::fs::read_to_string(path).map_err(|source| RulesError::Read {
        path: path.to_owned(),
        source,
    })
}

fn hash_dir(dir: &Path) -> Result<String, RulesError> {
    let entries = std::fs::read_dir(dir).map_err(|source| RulesError::Read {
        path: dir.to_owned(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let mut hasher = Sha256::new();
    for file in files {
        hasher.update(file.file_name().unwrap_or_default().as_encoded_bytes());
        hasher.update(b"\0");
        hasher.update(read(&file)?.as_bytes());
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Thresholds of the lifecycle stages and value tiers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LifecycleRules {
    /// A name for this rule set, shown in reports.
    pub rules_id: String,
    /// File format version; must be [`RULES_FORMAT_VERSION`].
    pub version: u32,
    /// Revenue for value tiers counts this currency only.
    pub currency: Currency,
    /// Stage thresholds.
    pub stages: StageRules,
    /// Revenue-share cut-offs of the value tiers.
    pub value_tiers: ValueTierRules,
}

/// Thresholds per stage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StageRules {
    /// `new`: first order within the last `within_days`.
    pub new: NewRule,
    /// `mature`: long tenure and frequent orders.
    pub mature: MatureRule,
    /// `at_risk`: no order for `after_days`.
    pub at_risk: AfterRule,
    /// `dormant`: no order for `after_days`.
    pub dormant: AfterRule,
    /// `churned`: no order for `after_days`, or a cancelled subscription.
    pub churned: ChurnedRule,
    /// `reactivated`: an order while dormant or churned.
    pub reactivated: ReactivatedRule,
}

/// The `new` stage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NewRule {
    /// Days after the first order during which the customer is new.
    pub within_days: u32,
}

/// The `mature` stage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MatureRule {
    /// Minimum days since registration.
    pub tenure_days: u32,
    /// Length of the order-counting window, days.
    pub window_days: u32,
    /// Minimum orders within the window.
    pub min_orders: u32,
}

/// A stage entered after a period without orders.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AfterRule {
    /// Days without an order.
    pub after_days: u32,
}

/// The `churned` stage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ChurnedRule {
    /// Days without an order.
    pub after_days: u32,
    /// Whether cancelling a subscription churns the customer at once.
    pub on_subscription_cancelled: bool,
}

/// The `reactivated` stage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReactivatedRule {
    /// Days the stage lasts after the reactivating order.
    pub lasts_days: u32,
}

/// Value tiers by share of revenue.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ValueTierRules {
    /// The top customers holding this share of revenue are `high`.
    pub high_revenue_share_percent: u32,
    /// The next customers holding this share are `mid`.
    pub mid_revenue_share_percent: u32,
}

/// Whole days as a duration.
pub fn days(n: u32) -> Duration {
    Duration::days(n as i64)
}

impl LifecycleRules {
    /// Parses and validates the text of `lifecycle.toml`; `path` is only
    /// used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, RulesError> {
        let rules: Self = toml::from_str(text).map_err(|e| RulesError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " | "),
        })?;
        rules.validate(path)?;
        Ok(rules)
    }

    /// Checks ranges and the order of the inactivity thresholds.
    pub fn validate(&self, path: &Path) -> Result<(), RulesError> {
        let invalid = |key: &str, problem: String| RulesError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            problem,
        };
        if self.version != RULES_FORMAT_VERSION {
            return Err(invalid(
                "version",
                format!(
                    "this build reads version {RULES_FORMAT_VERSION}, got {}",
                    self.version
                ),
            ));
        }
        if self.rules_id.trim().is_empty() {
            return Err(invalid("rules_id", "must not be empty".into()));
        }
        let s = &self.stages;
        for (key, value) in [
            ("stages.new.within_days", s.new.within_days),
            ("stages.mature.tenure_days", s.mature.tenure_days),
            ("stages.mature.window_days", s.mature.window_days),
            ("stages.mature.min_orders", s.mature.min_orders),
            ("stages.at_risk.after_days", s.at_risk.after_days),
            ("stages.dormant.after_days", s.dormant.after_days),
            ("stages.churned.after_days", s.churned.after_days),
            ("stages.reactivated.lasts_days", s.reactivated.lasts_days),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0".into()));
            }
            if value > 36_500 {
                return Err(invalid(
                    key,
                    format!("must be at most 36500 (100 years), got {value}"),
                ));
            }
        }
        if s.at_risk.after_days >= s.dormant.after_days {
            return Err(invalid(
                "stages.at_risk.after_days",
                format!(
                    "must be less than stages.dormant.after_days ({}), got {}",
                    s.dormant.after_days, s.at_risk.after_days
                ),
            ));
        }
        if s.dormant.after_days >= s.churned.after_days {
            return Err(invalid(
                "stages.dormant.after_days",
                format!(
                    "must be less than stages.churned.after_days ({}), got {}",
                    s.churned.after_days, s.dormant.after_days
                ),
            ));
        }
        let t = &self.value_tiers;
        if t.high_revenue_share_percent == 0 {
            return Err(invalid(
                "value_tiers.high_revenue_share_percent",
                "must be greater than 0".into(),
            ));
        }
        if t.high_revenue_share_percent + t.mid_revenue_share_percent > 100 {
            return Err(invalid(
                "value_tiers.mid_revenue_share_percent",
                format!(
                    "high + mid must be at most 100 percent, got {} + {}",
                    t.high_revenue_share_percent, t.mid_revenue_share_percent
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../projections/lifecycle.toml");

    fn parse(text: &str) -> Result<LifecycleRules, RulesError> {
        LifecycleRules::parse(Path::new("projections/lifecycle.toml"), text)
    }

    #[test]
    fn compiled_in_defaults_equal_the_projections_directory() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("projections");
        assert_eq!(RuleSet::load(&dir).unwrap(), RuleSet::shipped_defaults());
    }

    #[test]
    fn a_bad_loyalty_file_names_file_key_and_problem() {
        let dir = shipped_copy();
        let loyalty = dir.path().join("loyalty.toml");
        let text = std::fs::read_to_string(&loyalty).unwrap();
        std::fs::write(&loyalty, text.replace("version = 1", "version = 7")).unwrap();
        let err = RuleSet::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("loyalty.toml: version:"), "{err}");
    }

    #[test]
    fn shipped_defaults_follow_the_issue() {
        let r = parse(SHIPPED).unwrap();
        assert_eq!(r.stages.new.within_days, 90);
        assert_eq!(r.stages.at_risk.after_days, 90);
        assert_eq!(r.stages.dormant.after_days, 180);
        assert_eq!(r.stages.churned.after_days, 365);
        assert_eq!(r.stages.mature.min_orders, 4);
        assert_eq!(r.value_tiers.high_revenue_share_percent, 60);
    }

    #[test]
    fn inconsistent_thresholds_name_file_key_and_problem() {
        let text = SHIPPED.replace(
            "[stages.at_risk]\n# No order for N days.\nafter_days = 90",
            "[stages.at_risk]\nafter_days = 200",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert_eq!(
            err,
            "projections/lifecycle.toml: stages.at_risk.after_days: must be less than stages.dormant.after_days (180), got 200"
        );
    }

    #[test]
    fn unknown_keys_wrong_types_and_versions_are_rejected() {
        let err = parse(&SHIPPED.replace("within_days = 90", "within_dayz = 90"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("projections/lifecycle.toml: "), "{err}");
        assert!(err.contains("within_dayz"), "{err}");
        let err = parse(&SHIPPED.replace("min_orders = 4", "min_orders = \"four\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("min_orders"), "{err}");
        let err = parse(&SHIPPED.replace("version = 1", "version = 2"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("version: this build reads version 1, got 2"),
            "{err}"
        );
        let err = parse(&SHIPPED.replace(
            "mid_revenue_share_percent = 30",
            "mid_revenue_share_percent = 50",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("high + mid must be at most 100"), "{err}");
        let err = parse(&SHIPPED.replace("currency = \"USD\"", "currency = \"USX\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("USX"), "{err}");
    }

    /// A temporary copy of the shipped `projections/` directory.
    fn shipped_copy() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("projections");
        for name in ["alerts.toml", "clv.toml", "lifecycle.toml", "loyalty.toml"] {
            std::fs::copy(shipped.join(name), dir.path().join(name)).unwrap();
        }
        dir
    }

    #[test]
    fn loading_a_directory_hashes_its_files() {
        let dir = shipped_copy();
        let a = RuleSet::load(dir.path()).unwrap();
        std::fs::write(
            dir.path().join("lifecycle.toml"),
            SHIPPED.replace("after_days = 180", "after_days = 170"),
        )
        .unwrap();
        let b = RuleSet::load(dir.path()).unwrap();
        assert_ne!(a.hash, b.hash);
        assert_eq!(b.lifecycle.stages.dormant.after_days, 170);
        let missing = RuleSet::load(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("lifecycle.toml: cannot read"), "{missing}");
    }
}

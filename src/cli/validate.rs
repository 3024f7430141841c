//! `journey validate`: backtest every churn signal on a holdout period.

use std::fmt::Write as _;
use std::path::PathBuf;

use chrono::NaiveDate;
use clap::{Args, ValueEnum};
use journey_ledger::backtest::churn_score::ChurnScoreSettings;
use journey_ledger::backtest::{self, BacktestReport, BacktestRequest};
use journey_ledger::clv::TimeUnit;
use journey_ledger::config::Config;
use journey_ledger::projections::rules::RuleSet;

use super::ledger::open_store_read_only;
use super::projections::load_rules;

/// The period and rules of a holdout validation (shared with `journey
/// report`).
#[derive(Debug, Args)]
pub struct HoldoutArgs {
    /// Last day of the calibration period (inclusive), YYYY-MM-DD: customers
    /// are scored on what happened up to the end of this day.
    #[arg(long)]
    pub calibration_end: NaiveDate,
    /// Last day of the holdout (inclusive), YYYY-MM-DD: "bought again" means
    /// an order after the calibration end and by the end of this day.
    #[arg(long)]
    pub holdout_end: NaiveDate,
    /// Model time unit (default from clv.toml).
    #[arg(long, value_enum)]
    pub time_unit: Option<Unit>,
    /// Rules directory (lifecycle, alerts, clv, validation/churn_score.toml;
    /// default: the config's rules_dir, else the built-in rules).
    #[arg(long, value_name = "DIR")]
    pub rules: Option<PathBuf>,
}

impl HoldoutArgs {
    /// The rules, the churn score's settings and the time unit asked for.
    pub fn load(&self, config: &Config) -> anyhow::Result<(RuleSet, ChurnScoreSettings, TimeUnit)> {
        let rules = load_rules(config, self.rules.as_ref())?;
        let settings =
            ChurnScoreSettings::load_dir(self.rules.as_ref().unwrap_or(&config.rules_dir))?;
        let unit = match self.time_unit {
            Some(Unit::Day) => TimeUnit::Day,
            Some(Unit::Week) => TimeUnit::Week,
            Some(Unit::Month) => TimeUnit::Month,
            None => rules.clv.model.time_unit,
        };
        Ok((rules, settings, unit))
    }
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    holdout: HoldoutArgs,
    /// Output: a table for people, or the whole report as JSON (with ROC
    /// curves and the churn score's weights).
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Unit {
    Day,
    Week,
    Month,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

pub async fn run(config: &Config, args: ValidateArgs) -> anyhow::Result<()> {
    let (rules, settings, unit) = args.holdout.load(config)?;
    let store = open_store_read_only(config).await?;
    let report = backtest::run(
        store,
        &rules,
        &settings,
        &BacktestRequest {
            calibration_end: args.holdout.calibration_end,
            holdout_end: args.holdout.holdout_end,
            unit,
        },
    )
    .await?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string(&report)?),
        Format::Table => print!("{}", table(&report)),
    }
    Ok(())
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{:.1}%", 100.0 * v))
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

/// The report as text tables.
pub fn table(r: &BacktestReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Holdout validation: scored as of {}, outcome = an order in ({}, {}]",
        r.calibration_end.date_naive(),
        r.calibration_end.date_naive(),
        r.holdout_end.date_naive(),
    );
    let _ = writeln!(
        out,
        "{} customers with an order by then; {} ({:.1}%) bought again in the holdout, \
         spending {} {} (orders net of refunds, minor units).\n",
        r.customers,
        r.bought_again,
        100.0 * r.base_rate,
        r.holdout_revenue_minor,
        r.currency
    );
    let _ = writeln!(
        out,
        "{:<30} {:>6}   {:>22}   {:>22}   {:>14}",
        "signal",
        "AUC",
        "riskiest 10%: prec/rec/lift",
        "riskiest 20%: prec/rec/lift",
        "revenue top 20%"
    );
    for s in &r.signals {
        let top = |t: &Option<journey_ledger::clv::ranking::TopFraction>| {
            t.map_or_else(
                || "-".into(),
                |t| {
                    format!(
                        "{:.1}% {:.1}% {:.2}",
                        100.0 * t.precision,
                        100.0 * t.recall,
                        t.lift
                    )
                },
            )
        };
        let _ = writeln!(
            out,
            "{:<30} {:>6}   {:>22}   {:>22}   {:>14}",
            s.signal,
            num(s.auc, 4),
            top(&s.riskiest_10),
            top(&s.riskiest_20),
            s.revenue_share_top_20
                .map_or_else(|| "-".into(), |v| format!("{:.1}%", 100.0 * v))
        );
    }
    let _ = writeln!(
        out,
        "\nAlert rules (fired in the lookback before the calibration end → \"will not buy again\"):"
    );
    let _ = writeln!(
        out,
        "{:<20} {:>8} {:>8} {:>10} {:>10} {:>6}",
        "rule", "enabled", "fired", "precision", "recall", "lift"
    );
    for a in &r.alert_rules {
        let name = serde_json::to_value(a.rule)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<20} {:>8} {:>8} {:>10} {:>10} {:>6}",
            name,
            if a.enabled { "yes" } else { "no" },
            a.fired,
            pct(a.precision),
            pct(a.recall),
            num(a.lift, 2)
        );
    }
    let _ = writeln!(
        out,
        "\nStage at the calibration end → bought again, and holdout revenue ({}, minor units):",
        r.currency
    );
    for s in &r.stages {
        let _ = writeln!(
            out,
            "{:<14} {:>8} customers {:>7.1}% {:>14}",
            s.stage,
            s.customers,
            100.0 * s.rate,
            s.holdout_revenue_minor
        );
    }
    for c in &r.calibration {
        let name = c.model.name();
        let _ = writeln!(
            out,
            "\n{name}: repeat purchases in the holdout by calibration frequency"
        );
        let _ = writeln!(
            out,
            "{:>9} {:>9} {:>14} {:>11}",
            "frequency", "customers", "predicted/cust", "actual/cust"
        );
        for b in &c.table.buckets {
            let _ = writeln!(
                out,
                "{:>9} {:>9} {:>14.3} {:>11.3}",
                b.frequency, b.customers, b.predicted_mean, b.actual_mean
            );
        }
        let _ = writeln!(
            out,
            "{:>9} {:>9} {:>14.1} {:>11}",
            "total", c.table.customers, c.table.total_predicted, c.table.total_actual
        );
    }
    match (&r.churn_score, &r.churn_score_unavailable) {
        (Some(score), _) => {
            let _ = writeln!(
                out,
                "\nChurn score: fitted on {} customers as of {} ({} bought again by {}); \
                 weights per standard deviation:",
                score.fit.examples,
                score.fitted_as_of.format("%Y-%m-%d %H:%M"),
                score.fit.positives,
                score.labels_through.format("%Y-%m-%d %H:%M"),
            );
            for (feature, weight) in score.fit.features.iter().zip(&score.fit.weights) {
                let name = serde_json::to_value(feature)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let _ = writeln!(out, "  {name:<28} {weight:>+8.3}");
            }
        }
        (None, Some(why)) => {
            let _ = writeln!(out, "\nChurn score not fitted: {why}");
        }
        (None, None) => {}
    }
    out
}

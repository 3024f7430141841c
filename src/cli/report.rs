//! `journey report`: the analysts' workbench as one HTML file.

use std::path::PathBuf;

use anyhow::Context as _;
use chrono::NaiveDate;
use clap::Args;
use journey_ledger::backtest::churn_score::ChurnScoreSettings;
use journey_ledger::config::Config;
use journey_ledger::projections::rules::RuleSet;
use journey_ledger::report::{self, page, ReportRequest};

use super::ledger::open_existing_store;
use super::projections::load_rules;
use super::validate::{unit_or_rules, Unit};

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Where to write the HTML file (self-contained: opens offline).
    #[arg(long, value_name = "FILE", default_value = "report.html")]
    out: PathBuf,
    /// Scoring instant of the holdout validation and first date of the
    /// stage flows (YYYY-MM-DD, end of that UTC day).
    #[arg(long)]
    calibration_end: NaiveDate,
    /// End of the holdout, of the stage timeline and second date of the
    /// stage flows (YYYY-MM-DD, end of that UTC day).
    #[arg(long)]
    holdout_end: NaiveDate,
    /// Model time unit (default from clv.toml).
    #[arg(long, value_enum)]
    time_unit: Option<Unit>,
    /// Rules directory (default: the config's rules_dir, else the built-in
    /// rules).
    #[arg(long, value_name = "DIR")]
    rules: Option<PathBuf>,
    /// A second rules directory: the rules-diff chart shows who would sit in
    /// which stage under it (e.g. projections/presets/practice).
    #[arg(long, value_name = "DIR")]
    compare_rules: Option<PathBuf>,
}

pub async fn run(config: &Config, args: ReportArgs) -> anyhow::Result<()> {
    let rules = load_rules(config, args.rules.as_ref())?;
    let compare = args
        .compare_rules
        .as_deref()
        .map(RuleSet::load)
        .transpose()
        .context("reading --compare-rules")?;
    let settings = ChurnScoreSettings::load_dir(args.rules.as_ref().unwrap_or(&config.rules_dir))?;
    let store = open_existing_store(config).await?;
    let workbench = report::build(
        store,
        &rules,
        compare.as_ref(),
        &settings,
        &ReportRequest {
            calibration_end: args.calibration_end,
            holdout_end: args.holdout_end,
            unit: unit_or_rules(args.time_unit, &rules),
        },
    )
    .await?;
    let html = page::report_html(&workbench)?;
    std::fs::write(&args.out, html).with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "wrote {} ({} customers; open it in a browser, no network needed)",
        args.out.display(),
        workbench.validation.customers
    );
    Ok(())
}

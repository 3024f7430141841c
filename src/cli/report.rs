//! `journey report`: the analysts' workbench as one HTML file.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use journey_ledger::config::Config;
use journey_ledger::projections::rules::RuleSet;
use journey_ledger::report::{self, page, ReportRequest};

use super::ledger::open_store_read_only;
use super::validate::HoldoutArgs;

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Where to write the HTML file (self-contained: opens offline).
    #[arg(long, value_name = "FILE", default_value = "report.html")]
    out: PathBuf,
    #[command(flatten)]
    holdout: HoldoutArgs,
    /// A second rules directory: the rules-diff chart shows who would sit in
    /// which stage under it (e.g. projections/presets/practice).
    #[arg(long, value_name = "DIR")]
    compare_rules: Option<PathBuf>,
}

pub async fn run(config: &Config, args: ReportArgs) -> anyhow::Result<()> {
    let (rules, settings, unit) = args.holdout.load(config)?;
    let compare = args
        .compare_rules
        .as_deref()
        .map(RuleSet::load)
        .transpose()
        .context("reading --compare-rules")?;
    let store = open_store_read_only(config).await?;
    let workbench = report::build(
        store,
        &rules,
        compare.as_ref(),
        &settings,
        &ReportRequest {
            calibration_end: args.holdout.calibration_end,
            holdout_end: args.holdout.holdout_end,
            unit,
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

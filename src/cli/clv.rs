//! `journey clv fit|score|holdout`: probabilistic CLV on the ledger's orders.

use std::path::PathBuf;

use anyhow::Context;
use chrono::NaiveDate;
use clap::{Args, Subcommand};
use journey_ledger::clv::ledger::{self, FitModel};
use journey_ledger::clv::rules::{ClvRules, ModelChoice};
use journey_ledger::clv::{end_of_day, TimeUnit};
use journey_ledger::config::Config;

use super::ledger::open_store_read_only;

#[derive(Debug, Subcommand)]
pub enum ClvCommand {
    /// Fit a model by maximum likelihood on the calibration period; prints
    /// one JSON object with `model`, `params`, `log_likelihood`, `customers`.
    ///
    /// Example (the CDNOW benchmark):
    ///   journey clv fit --calibration-end 1997-09-30 --time-unit week --model bgnbd
    #[command(verbatim_doc_comment)]
    Fit {
        #[command(flatten)]
        period: Period,
        /// Model to fit.
        #[arg(long, value_enum)]
        model: FitModel,
    },
    /// Score one customer: P(alive), expected purchases in the horizon,
    /// Gamma-Gamma expected average spend and discounted CLV (JSON).
    Score {
        /// Customer id.
        customer_id: String,
        #[command(flatten)]
        period: Period,
        /// Purchase model (default from the rules file).
        #[arg(long, value_enum)]
        model: Option<ModelChoice>,
        /// Horizon in time units (default: the rules file's months).
        #[arg(long)]
        horizon: Option<f64>,
    },
    /// RFM quintile scores (1-5, higher is better) and named segments as of
    /// a day, with the rules file's weights and segments (JSON).
    Rfm {
        /// Evaluation day (inclusive), YYYY-MM-DD.
        #[arg(long)]
        as_of: NaiveDate,
        /// Only print this customer's scores (segment sizes are always printed).
        #[arg(long)]
        customer: Option<String>,
        /// Rules directory holding clv.toml.
        #[arg(long, value_name = "DIR")]
        rules: Option<PathBuf>,
    },
    /// CLV/CAC by acquisition channel: predicted discounted CLV (rules'
    /// horizon) against the acquisition costs recorded at registration (JSON).
    Cac {
        #[command(flatten)]
        period: Period,
    },
    /// Calibration/holdout validation: predicted vs actual repeat
    /// transactions per calibration-frequency bucket and in total (JSON).
    Holdout {
        #[command(flatten)]
        period: Period,
        /// Last day of the holdout period (inclusive), YYYY-MM-DD.
        #[arg(long)]
        holdout_end: NaiveDate,
        /// Purchase model (default from the rules file).
        #[arg(long, value_enum)]
        model: Option<ModelChoice>,
    },
}

#[derive(Debug, Args)]
pub struct Period {
    /// Last day of the calibration period (inclusive), YYYY-MM-DD.
    #[arg(long)]
    calibration_end: NaiveDate,
    /// Time unit (default from the rules file).
    #[arg(long, value_enum)]
    time_unit: Option<TimeUnitArg>,
    /// Rules directory holding clv.toml (default: the configured one).
    #[arg(long, value_name = "DIR")]
    rules: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TimeUnitArg {
    Day,
    Week,
    Month,
}

impl From<TimeUnitArg> for TimeUnit {
    fn from(value: TimeUnitArg) -> Self {
        match value {
            TimeUnitArg::Day => TimeUnit::Day,
            TimeUnitArg::Week => TimeUnit::Week,
            TimeUnitArg::Month => TimeUnit::Month,
        }
    }
}

pub async fn run(config: &Config, cmd: ClvCommand) -> anyhow::Result<()> {
    if let ClvCommand::Rfm {
        as_of,
        customer,
        rules,
    } = &cmd
    {
        let rules = ClvRules::load_dir(rules.as_ref().unwrap_or(&config.rules_dir))?;
        let store = open_store_read_only(config).await?;
        let transactions = ledger::load_transactions(store, rules.currency)
            .await
            .context("reading orders")?;
        let report = ledger::rfm(
            &transactions,
            end_of_day(*as_of),
            &rules,
            customer.as_deref(),
        )?;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let period = match &cmd {
        ClvCommand::Fit { period, .. }
        | ClvCommand::Score { period, .. }
        | ClvCommand::Cac { period }
        | ClvCommand::Holdout { period, .. } => period,
        ClvCommand::Rfm { .. } => unreachable!("handled above"),
    };
    let rules_dir = period
        .rules
        .clone()
        .unwrap_or_else(|| config.rules_dir.clone());
    let rules = ClvRules::load_dir(&rules_dir)?;
    let unit: TimeUnit = period
        .time_unit
        .map(Into::into)
        .unwrap_or(rules.model.time_unit);
    let calibration_end = end_of_day(period.calibration_end);
    let store = open_store_read_only(config).await?;
    let transactions = ledger::load_transactions(store.clone(), rules.currency)
        .await
        .context("reading orders")?;
    let json = match cmd {
        ClvCommand::Fit { model, .. } => serde_json::to_string(&ledger::fit(
            &transactions,
            calibration_end,
            unit,
            model,
            rules.currency,
        )?)?,
        ClvCommand::Score {
            customer_id,
            model,
            horizon,
            ..
        } => {
            let month = TimeUnit::Month.days() / unit.days();
            let horizon = horizon.unwrap_or(f64::from(rules.clv.horizon_months) * month);
            anyhow::ensure!(horizon > 0.0, "--horizon must be positive");
            serde_json::to_string(&ledger::score(
                &transactions,
                &customer_id,
                calibration_end,
                unit,
                model.unwrap_or(rules.model.purchase_model),
                horizon,
                &rules,
            )?)?
        }
        ClvCommand::Cac { .. } => {
            let acquisitions = ledger::load_acquisitions(store, rules.currency).await?;
            serde_json::to_string(&ledger::channel_economics(
                &transactions,
                &acquisitions,
                calibration_end,
                unit,
                &rules,
            )?)?
        }
        ClvCommand::Rfm { .. } => unreachable!("handled above"),
        ClvCommand::Holdout {
            holdout_end, model, ..
        } => serde_json::to_string(&ledger::holdout(
            &transactions,
            calibration_end,
            end_of_day(holdout_end),
            unit,
            model.unwrap_or(rules.model.purchase_model),
        )?)?,
    };
    println!("{json}");
    Ok(())
}

//! Auditor and privacy commands: verify, export, erase.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use journey_ledger::audit::export::{export_customer, verify_export_file};
use journey_ledger::audit::verify::{verify_customer, verify_store, VerifyReport};
use journey_ledger::config::Config;
use journey_ledger::domain::CustomerId;
use journey_ledger::privacy::{erase_customer, Vault};

use super::ledger::{open_existing_store, open_store_read_only, progress_bar};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Verify only this customer's stream (chain and recorded head).
    #[arg(long, value_name = "ID", conflicts_with = "file")]
    pub customer: Option<String>,
    /// Verify an audit export offline instead of the store.
    #[arg(long, value_name = "EXPORT.json")]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Customer id (the stream is `customer-<ID>`).
    pub customer_id: String,
    /// Only events recorded at or before this instant (RFC 3339, e.g.
    /// 2024-03-01T00:00:00Z): the stream's prefix as it stood then.
    #[arg(long, value_name = "RFC3339")]
    pub as_of: Option<String>,
    /// Write to this file instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct EraseArgs {
    /// Customer id whose personal data is erased.
    pub customer_id: String,
    /// Why: legal basis or ticket (recorded in the erasure event).
    #[arg(long)]
    pub reason: String,
    /// Who requests it (recorded as the event's actor).
    #[arg(long, env = "USER", default_value = "cli")]
    pub actor: String,
}

fn finish(report: VerifyReport) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(&report)?);
    report.into_result()?;
    Ok(())
}

pub async fn verify(config: &Config, args: VerifyArgs) -> anyhow::Result<()> {
    if let Some(file) = args.file {
        return finish(verify_export_file(&file)?);
    }
    let store = open_store_read_only(config).await?;
    if let Some(id) = args.customer {
        let customer = CustomerId::parse(&id)?;
        return finish(verify_customer(store.as_ref(), &customer).await?);
    }
    let bar = progress_bar(store.head_position().await?, "verifying");
    let result = verify_store(store, |position| bar.set_position(position)).await;
    bar.finish_and_clear();
    finish(result?)
}

pub async fn export(config: &Config, args: ExportArgs) -> anyhow::Result<()> {
    let customer = CustomerId::parse(&args.customer_id)?;
    let as_of = args
        .as_of
        .as_deref()
        .map(|text| {
            DateTime::parse_from_rfc3339(text)
                .map(|t| t.with_timezone(&Utc))
                .with_context(|| format!("--as-of {text:?} is not an RFC 3339 instant"))
        })
        .transpose()?;
    let store = open_store_read_only(config).await?;
    let vault = Vault::open_read_only_if_supported(&config.store)
        .await
        .context("opening the key table")?;
    // The projected state rides along when the store has SQL read models.
    // The rules of the active read models, when the store has them.
    let db = match journey_ledger::projections::storage::ReadModelDb::open_read_only(&config.store)
        .await
    {
        Ok(db) => Some(db),
        Err(e) => {
            tracing::warn!(error = %e, "no read models: the export folds with the shipped rules");
            None
        }
    };
    let now = chrono::DateTime::from_timestamp_micros(Utc::now().timestamp_micros())
        .expect("now is in range");
    let projections = journey_ledger::projections::query::ProjectionsExportSection {
        db,
        default_as_of: now,
    };
    let sections: Vec<&dyn journey_ledger::audit::export::StateSection> = vec![&projections];
    let doc = export_customer(store.as_ref(), vault.as_ref(), &customer, as_of, &sections).await?;
    let text = serde_json::to_string_pretty(&doc)?;
    match args.out {
        Some(path) => std::fs::write(&path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => writeln!(std::io::stdout().lock(), "{text}")?,
    }
    Ok(())
}

pub async fn erase(config: &Config, args: EraseArgs) -> anyhow::Result<()> {
    let customer = CustomerId::parse(&args.customer_id)?;
    let store = open_existing_store(config).await?;
    let vault = Vault::open(&config.store)
        .await
        .context("opening the key table")?;
    let report =
        erase_customer(store.as_ref(), &vault, &customer, &args.actor, &args.reason).await?;
    if !report.key.purged {
        eprintln!(
            "warning: the SQLite WAL could not be truncated (another process is reading); \
             run `journey erase` again when it is idle so no old page survives in the -wal file"
        );
    }
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

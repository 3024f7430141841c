//! The analytics export: one CSV row per customer with what analysts work
//! with — cohort, stage, value tier, revenue, loyalty tier and balance,
//! repeat purchases, P(alive), CLV, RFM segment — from the active version's
//! population snapshot.
//!
//! Customer ids never leave in clear: each is replaced by a keyed hash
//! ([`crate::privacy::pseudonymize`]), stable for one key so analysts can
//! join exports, meaningless without it. The export has no personal fields
//! at all (those live sealed in the events).

use std::io::Write;

use serde::Serialize;

use super::runner::{active, RunnerError};
use super::storage::{ReadModelDb, SummaryRow};
use crate::domain::CustomerId;
use crate::privacy::{pseudonymize, PseudonymKey};

/// The CSV header, in column order.
pub const HEADER: &str = "customer,cohort_month,stage,value_tier,revenue_minor,loyalty_tier,\
points_balance,repeat_purchases,p_alive,clv_minor,rfm_segment";

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportSummary {
    /// Customers written.
    pub customers: u64,
    /// The read-model version exported.
    pub model_version: i64,
    /// Its rules.
    pub rules_id: String,
    /// The population snapshot instant the figures are as of (RFC 3339).
    pub as_of: Option<String>,
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the read models failed (or none is active).
    #[error(transparent)]
    Runner(#[from] RunnerError),
    /// Writing the output failed.
    #[error("writing the export: {0}")]
    Write(#[from] std::io::Error),
    /// A stored customer id is not one (the read models are damaged).
    #[error("stored customer id {0:?} is invalid")]
    BadId(String),
}

/// Writes the active version's customers as CSV to `out`, ids
/// pseudonymised with `key`; `progress` hears the running count.
pub async fn export_customers(
    db: &ReadModelDb,
    key: &PseudonymKey,
    out: &mut impl Write,
    mut progress: impl FnMut(u64),
) -> Result<ExportSummary, ExportError> {
    let (version, rules) = active(db).await?;
    let as_of = db
        .population_as_of(version.model_version)
        .await
        .map_err(RunnerError::from)?
        .and_then(chrono::DateTime::from_timestamp_micros)
        .map(|t| crate::domain::envelope::display_instant(&t));
    writeln!(out, "{HEADER}")?;
    let mut customers = 0u64;
    db.for_each_summary(version.model_version, |row| {
        write_row(out, key, &row)?;
        customers += 1;
        if customers % 10_000 == 0 {
            progress(customers);
        }
        Ok::<_, ExportError>(())
    })
    .await
    .map_err(RunnerError::from)??;
    progress(customers);
    out.flush()?;
    Ok(ExportSummary {
        customers,
        model_version: version.model_version,
        rules_id: rules.rules_id(),
        as_of,
    })
}

fn write_row(
    out: &mut impl Write,
    key: &PseudonymKey,
    row: &SummaryRow,
) -> Result<(), ExportError> {
    let id = CustomerId::parse(&row.customer_id)
        .map_err(|_| ExportError::BadId(row.customer_id.clone()))?;
    let cells = [
        pseudonymize(key, &id),
        row.cohort_month.clone().unwrap_or_default(),
        row.stage.clone(),
        row.value_tier.clone(),
        row.revenue_minor.to_string(),
        row.loyalty_tier.clone().unwrap_or_default(),
        row.points_balance
            .map(|b| b.to_string())
            .unwrap_or_default(),
        row.repeat_purchases
            .map(|f| f.to_string())
            .unwrap_or_default(),
        row.p_alive.map(|p| format!("{p:.6}")).unwrap_or_default(),
        row.clv_minor.map(|c| c.to_string()).unwrap_or_default(),
        row.rfm_segment.clone().unwrap_or_default(),
    ];
    let line: Vec<String> = cells.iter().map(|c| csv_cell(c)).collect();
    writeln!(out, "{}", line.join(","))?;
    Ok(())
}

/// Quotes a cell when it holds a comma, quote or line break (RFC 4180).
fn csv_cell(cell: &str) -> String {
    if cell.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_with_separators_are_quoted() {
        assert_eq!(csv_cell("at_risk"), "at_risk");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}

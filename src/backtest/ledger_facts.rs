//! What the ledger knew about each customer at an instant, beyond the
//! (frequency, recency, T) the textbook purchase models see: the lifecycle
//! stage and the churn alerts the active rules had raised by then, and
//! counts of the interactions that often precede churn (complaints, refunds,
//! sessions, abandoned carts), the loyalty tier and the acquisition channel.
//!
//! Every fact is computed from the customer's events that *occurred* at or
//! before the instant, folded with the same code `customer(id, asOf)` uses
//! ([`crate::projections::query::fold_customer_events`]), so a backtest sees
//! exactly what the projections would have shown on that day. One stream is
//! read at a time and only the facts are kept: memory grows with the number
//! of customers, not with the length of the log.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use crate::domain::{CustomerId, RecordedEvent};
use crate::projections::alerts::AlertRule;
use crate::projections::query::fold_customer_events;
use crate::projections::rules::RuleSet;
use crate::store::{for_each_customer_stream, EventStore};

use super::BacktestError;

/// Facts about one customer as of one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LedgerFacts {
    /// Lifecycle stage (`None`: no event by then).
    pub stage: Option<String>,
    /// Alert rules that fired in the lookback window ending at the instant.
    pub alerts_fired: Vec<AlertRule>,
    /// Complaints filed in the lookback window.
    pub complaints: u32,
    /// Refunds in the lookback window.
    pub refunds: u32,
    /// Sessions in the lookback window.
    pub sessions: u32,
    /// Carts abandoned in the lookback window.
    pub carts_abandoned: u32,
    /// Loyalty tier: 0 regular, 1 silver, 2 gold, 3 diamond.
    pub loyalty_tier: u8,
    /// Acquisition channel from the registration, if any.
    pub channel: Option<String>,
}

/// The facts of every customer at each of the instants asked for.
#[derive(Debug, Default)]
pub struct FactsTable {
    /// Per customer id, one entry per instant (in the order asked).
    pub by_customer: HashMap<String, Vec<LedgerFacts>>,
}

impl FactsTable {
    /// The facts of `customer` at the `k`-th instant (defaults when the
    /// customer had no stream).
    pub fn at(&self, customer: &str, k: usize) -> LedgerFacts {
        self.by_customer
            .get(customer)
            .and_then(|v| v.get(k))
            .cloned()
            .unwrap_or_default()
    }
}

/// Reads every customer stream once and computes its facts at each of
/// `instants`, counting interactions within `lookback` before each.
pub async fn collect(
    store: Arc<dyn EventStore>,
    rules: &RuleSet,
    instants: &[DateTime<Utc>],
    lookback: Duration,
) -> Result<FactsTable, BacktestError> {
    let mut table = FactsTable::default();
    for_each_customer_stream(store.as_ref(), |customer, events| {
        let facts = instants
            .iter()
            .map(|&t| facts_at(rules, &customer, &events, t, lookback))
            .collect::<Result<Vec<_>, _>>()?;
        table
            .by_customer
            .insert(customer.as_str().to_owned(), facts);
        Ok::<_, BacktestError>(())
    })
    .await?;
    Ok(table)
}

/// One customer's facts at `at`.
pub fn facts_at(
    rules: &RuleSet,
    customer: &CustomerId,
    events: &[RecordedEvent],
    at: DateTime<Utc>,
    lookback: Duration,
) -> Result<LedgerFacts, BacktestError> {
    let folded = fold_customer_events(rules, events, at).map_err(|e| BacktestError::Fold {
        customer: customer.as_str().to_owned(),
        reason: e.to_string(),
    })?;
    let from = at - lookback;
    let in_window = |e: &&RecordedEvent| e.occurred_at > from && e.occurred_at <= at;
    let count = |kind: &str| {
        events
            .iter()
            .filter(in_window)
            .filter(|e| e.event_type == kind)
            .count() as u32
    };
    let mut alerts_fired: Vec<AlertRule> = folded
        .alerts
        .iter()
        .filter(|a| a.at > from && a.at <= at)
        .map(|a| a.rule)
        .collect();
    alerts_fired.sort_by_key(|r| *r as u8);
    alerts_fired.dedup();
    let channel = events
        .iter()
        .filter(|e| e.occurred_at <= at && e.event_type == "CustomerRegistered")
        .find_map(|e| match e.decode() {
            Ok(crate::domain::events::DomainEvent::CustomerRegistered(r)) => Some(r.channel),
            _ => None,
        });
    Ok(LedgerFacts {
        stage: folded.stage,
        alerts_fired,
        complaints: count("ComplaintFiled"),
        refunds: count("OrderRefunded"),
        sessions: count("SessionRecorded"),
        carts_abandoned: count("CartAbandoned"),
        loyalty_tier: folded.loyalty.tier as u8,
        channel,
    })
}

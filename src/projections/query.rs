//! Reading the projected state of one customer "as of" an instant.
//!
//! Queries read the active version and use that version's own rules. The
//! stage as of `T` is the fold of the customer's events with
//! `occurred_at <= T` advanced to `T`: when `T` is at or after the
//! customer's last folded event, the persisted state is advanced (no replay);
//! otherwise the customer's stream is refolded. Value tiers need the whole
//! population: as of the version's snapshot instant or later they come from
//! `lifecycle_snapshot`; earlier instants replay the revenue of every
//! customer up to `T`.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;

use super::lifecycle::{self, fold_as_of, LifecycleState, Transition};
use super::rules::RuleSet;
use super::runner::{active, fold_event, RunnerError};
use super::storage::ReadModelDb;
use crate::domain::events::DomainEvent;
use crate::domain::CustomerId;
use crate::store::{EventStore, ReadStream};

/// One transition as shown to users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransitionView {
    /// Previous stage.
    pub from: Option<String>,
    /// New stage.
    pub to: String,
    /// When (RFC 3339, µs).
    pub at: String,
    /// Event id or `rule:<name>`.
    pub cause: String,
}

/// A customer's projected state as of an instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CustomerView {
    /// The customer.
    pub customer_id: String,
    /// The instant the view is as of.
    pub as_of: String,
    /// The read-model version answering.
    pub model_version: i64,
    /// The rules of that version.
    pub rules_id: String,
    /// Stage as of the instant (none before the first event).
    pub stage: Option<String>,
    /// When the stage began.
    pub stage_since: Option<String>,
    /// Every stage change up to the instant, oldest first.
    pub stage_history: Vec<TransitionView>,
    /// Value tier as of the instant.
    pub value_tier: Option<String>,
    /// Orders minus refunds in `currency`, minor units.
    pub revenue_minor: i64,
    /// Currency of the revenue.
    pub currency: String,
    /// Orders placed up to the instant.
    pub orders: i64,
    /// Whether the answer advanced the stored state (`state`) or refolded
    /// the stream (`replay`).
    pub computed_from: &'static str,
}

fn show(at: DateTime<Utc>) -> String {
    crate::domain::envelope::display_instant(&at)
}

fn view_transition(t: &Transition) -> TransitionView {
    TransitionView {
        from: t.from.map(|s| s.as_str().to_owned()),
        to: t.to.as_str().to_owned(),
        at: show(t.at),
        cause: t.cause.clone(),
    }
}

/// The customer's projected state as of `as_of`, or `None` when the
/// customer has no events up to then.
pub async fn customer_as_of(
    store: Arc<dyn EventStore>,
    db: &ReadModelDb,
    customer: &CustomerId,
    as_of: DateTime<Utc>,
) -> Result<Option<CustomerView>, RunnerError> {
    let (version, rules) = active(db).await?;
    let lc = &rules.lifecycle;
    let stored = db
        .load_state(version.model_version, "lifecycle", customer.as_str())
        .await?;
    let (state, history, computed_from) = match stored {
        Some(s) if as_of.timestamp_micros() >= s.last_occurred_us => {
            let mut state: LifecycleState =
                serde_json::from_str(&s.state).map_err(|e| RunnerError::State {
                    projection: "lifecycle".into(),
                    customer: customer.to_string(),
                    reason: e.to_string(),
                })?;
            let spec = lifecycle::TABLES[1];
            let mut history: Vec<TransitionView> = db
                .dump(&spec, version.model_version, Some(customer.as_str()))
                .await?
                .into_iter()
                .map(|r| {
                    (
                        r[1].as_deref().unwrap_or("0").parse::<i64>().unwrap_or(0),
                        r,
                    )
                })
                .collect::<std::collections::BTreeMap<_, _>>()
                .into_values()
                .map(|r| TransitionView {
                    from: r[2].clone(),
                    to: r[3].clone().unwrap_or_default(),
                    at: r[4]
                        .as_deref()
                        .and_then(|v| v.parse::<i64>().ok())
                        .and_then(DateTime::from_timestamp_micros)
                        .map(show)
                        .unwrap_or_default(),
                    cause: r[5].clone().unwrap_or_default(),
                })
                .collect();
            let mut more = Vec::new();
            state.advance_to(lc, as_of.timestamp_micros(), &mut more);
            history.extend(more.iter().map(view_transition));
            (state, history, "state")
        }
        _ => {
            let recorded = store
                .read_stream(&customer.stream_id(), ReadStream::all_forwards())
                .await?;
            let mut events = Vec::with_capacity(recorded.len());
            for r in &recorded {
                if let Some((_, e)) = fold_event(r)? {
                    events.push(e);
                }
            }
            let (state, transitions) = fold_as_of(lc, &events, as_of);
            (
                state,
                transitions.iter().map(view_transition).collect(),
                "replay",
            )
        }
    };
    let Some(stage) = state.stage else {
        return Ok(None);
    };
    let value_tier = tier_as_of(store, db, version.model_version, &rules, customer, as_of).await?;
    Ok(Some(CustomerView {
        customer_id: customer.to_string(),
        as_of: show(as_of),
        model_version: version.model_version,
        rules_id: version.rules_id,
        stage: Some(stage.as_str().to_owned()),
        stage_since: DateTime::from_timestamp_micros(state.stage_since_us).map(show),
        stage_history: history,
        value_tier,
        revenue_minor: state.revenue_minor,
        currency: lc.currency.to_string(),
        orders: state.orders,
        computed_from,
    }))
}

async fn tier_as_of(
    store: Arc<dyn EventStore>,
    db: &ReadModelDb,
    model_version: i64,
    rules: &RuleSet,
    customer: &CustomerId,
    as_of: DateTime<Utc>,
) -> Result<Option<String>, RunnerError> {
    let spec = lifecycle::TABLES[2];
    let snapshot = db
        .dump(&spec, model_version, Some(customer.as_str()))
        .await?;
    if let Some(row) = snapshot.first() {
        let snap_us: i64 = row[1]
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or(i64::MAX);
        if as_of.timestamp_micros() >= snap_us {
            return Ok(row[3].clone());
        }
    }
    let revenues = revenue_as_of(store, rules, as_of).await?;
    let tiers = lifecycle::value_tiers(&rules.lifecycle, revenues.iter().map(|(c, r)| (c, *r)));
    Ok(tiers.get(customer).map(|t| t.as_str().to_owned()))
}

/// Every customer's revenue (orders minus refunds in the rules' currency)
/// from events with `occurred_at <= as_of`, by a full replay.
pub async fn revenue_as_of(
    store: Arc<dyn EventStore>,
    rules: &RuleSet,
    as_of: DateTime<Utc>,
) -> Result<HashMap<CustomerId, i64>, RunnerError> {
    let mut revenues: HashMap<CustomerId, i64> = HashMap::new();
    let mut events = crate::store::read_all(store, 1, 5_000);
    while let Some(recorded) = events.next().await {
        let recorded = recorded?;
        if recorded.occurred_at > as_of {
            continue;
        }
        let Some((customer, event)) = fold_event(&recorded)? else {
            continue;
        };
        let delta = match &event.event {
            DomainEvent::OrderPlaced(o) if o.amount.currency == rules.lifecycle.currency => {
                o.amount.minor
            }
            DomainEvent::OrderRefunded(r) if r.amount.currency == rules.lifecycle.currency => {
                -r.amount.minor
            }
            _ => 0,
        };
        *revenues.entry(customer).or_default() += delta;
    }
    Ok(revenues)
}

/// The lifecycle projection as a section of an audit export
/// ([`crate::audit::export`]): the customer's stage, stage history and value
/// tier as of the export's instant, from the active read-model version.
pub struct LifecycleExportSection {
    /// The event store (for replays before the saved state).
    pub store: Arc<dyn EventStore>,
    /// The read models.
    pub db: ReadModelDb,
    /// The instant used when the export has no `as_of` (the CLI passes now).
    pub default_as_of: DateTime<Utc>,
}

#[async_trait::async_trait]
impl crate::audit::export::StateSection for LifecycleExportSection {
    fn name(&self) -> &str {
        "lifecycle"
    }

    async fn compute(
        &self,
        customer: &CustomerId,
        as_of: Option<DateTime<Utc>>,
        _events: &[crate::domain::RecordedEvent],
    ) -> Result<crate::audit::export::StateSectionValue, String> {
        let at = as_of.unwrap_or(self.default_as_of);
        match customer_as_of(self.store.clone(), &self.db, customer, at).await {
            Ok(view) => Ok(crate::audit::export::StateSectionValue {
                source: "projection:lifecycle".into(),
                value: serde_json::to_value(view).map_err(|e| e.to_string())?,
            }),
            // Nothing projected yet: say so rather than inventing a state.
            Err(RunnerError::NoActiveVersion) => Ok(crate::audit::export::StateSectionValue {
                source: "projection:lifecycle".into(),
                value: serde_json::json!({
                    "available": false,
                    "reason": "no active read-model version; run `journey rebuild`"
                }),
            }),
            Err(e) => Err(e.to_string()),
        }
    }
}

//! Reading the projected state of one customer "as of" an instant.
//!
//! Queries read the active version and use that version's own rules. The
//! state as of `T` is the fold of the customer's events with
//! `occurred_at <= T` advanced to `T`, computed from their stream on each
//! query: one indexed read of a short stream and a fold of microseconds,
//! exact for any instant, and independent of how the runner stores its
//! states. Value tiers need the whole population: as of the version's
//! snapshot instant or later they come from `lifecycle_snapshot`; earlier
//! instants get the tier as of the last month end at or before `T`, from
//! the customer's own revenue then and that month's two boundary keys
//! ([`super::tier_bounds`]).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::alerts::{self, Alert, AlertsFoldState};
use super::lifecycle::{self, fold_as_of, Transition};
use super::loyalty::{self, LoyaltySnapshot, LoyaltyState};
use super::rules::RuleSet;
use super::runner::{active, fold_event, RunnerError};
use super::storage::{CustomerPopulation, ReadModelDb, ScoresRow, SnapshotTier};
use super::tier_bounds::{month_end_at_or_before, TierBoundsCache};
use super::value::{self, ValueSnapshot, ValueState};
use super::FoldEvent;
use crate::domain::{CustomerId, RecordedEvent};
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
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    /// Value tier (tiers rank every customer's revenue).
    pub value_tier: Option<String>,
    /// The instant the value tier was computed for: the population snapshot
    /// when the instant is at or after it, else the last month end at or
    /// before the instant.
    pub value_tier_as_of: Option<String>,
    /// Orders minus refunds in `currency`, minor units.
    pub revenue_minor: i64,
    /// Currency of the revenue.
    pub currency: String,
    /// Orders placed up to the instant.
    pub orders: i64,
    /// Loyalty balance, lots, tier and its history, conflicts.
    pub loyalty: LoyaltySnapshot,
    /// Historical value: revenue per currency, orders, tenure, gaps.
    pub value: ValueSnapshot,
    /// Churn alerts fired up to the instant (per-customer rules), oldest first.
    pub alerts: Vec<Alert>,
    /// Population figures as of the version's snapshot instant (value-tier
    /// alerts, CLV and RFM); absent for earlier instants, whose population
    /// is not stored (`journey clv score|rfm --as-of` computes them).
    pub population: Option<PopulationView>,
    /// The version's population snapshot instant, when it has one (also
    /// when `population` is absent because the instant is earlier).
    pub population_snapshot: Option<String>,
}

/// A customer's figures that depend on every customer, from the version's
/// population snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PopulationView {
    /// The snapshot instant (the newest event folded).
    pub as_of: String,
    /// High-value-at-risk alert: when the customer fell into the stage and why.
    pub value_alert: Option<ValueAlertView>,
    /// CLV model outputs and RFM scores, when the customer has orders.
    pub scores: Option<ScoresView>,
}

/// A high-value customer in the at-risk stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValueAlertView {
    /// When they fell into the stage.
    pub at: String,
    /// Their value tier at the snapshot.
    pub value_tier: String,
    /// The event id or time rule of the fall.
    pub cause: String,
}

/// CLV and RFM of one customer (see `customer_clv` in migration 0011).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoresView {
    /// The customer's `customer_clv` row.
    #[serde(flatten)]
    pub figures: ScoresRow,
    /// Currency of the CLV (the `clv.toml` currency).
    pub currency: String,
    /// CLV horizon in days (`clv.horizon_months` × 30.4375, rounded).
    pub horizon_days: i32,
}

fn show(at: DateTime<Utc>) -> String {
    crate::domain::envelope::display_instant(&at)
}

fn view_transition(t: &Transition) -> TransitionView {
    TransitionView {
        from: t.from.map(|s| s.as_str().to_owned()),
        to: t.to.as_str().to_owned(),
        at: show(t.at),
        cause: t.cause.to_string(),
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
    let bounds = TierBoundsCache::default();
    customer_in_version(store, db, &bounds, &version, &rules, customer, as_of).await
}

/// [`customer_as_of`] in a given version with its (already parsed) rules,
/// for callers that keep them between queries. The stream and the
/// customer's rows are read concurrently.
pub async fn customer_in_version(
    store: Arc<dyn EventStore>,
    db: &ReadModelDb,
    bounds: &TierBoundsCache,
    version: &crate::projections::storage::VersionInfo,
    rules: &RuleSet,
    customer: &CustomerId,
    as_of: DateTime<Utc>,
) -> Result<Option<CustomerView>, RunnerError> {
    let stream = customer.stream_id();
    let (recorded, rows) = tokio::join!(
        store.read_stream(&stream, ReadStream::all_forwards()),
        CustomerRows::read(db, version.model_version, customer),
    );
    customer_from_parts(
        db, bounds, version, rules, customer, &recorded?, rows?, as_of,
    )
    .await
}

/// A customer's rows of the population tables a projected view reads
/// (value tier, value alert, scores) with the version's population
/// snapshot instant: one statement.
pub struct CustomerRows(CustomerPopulation);

impl CustomerRows {
    /// Reads them from `model_version`.
    pub async fn read(
        db: &ReadModelDb,
        model_version: i64,
        customer: &CustomerId,
    ) -> Result<Self, RunnerError> {
        let rows = db
            .customer_population(model_version, customer.as_str())
            .await?
            .unwrap_or_default();
        Ok(Self(rows))
    }
}

/// The customer's projected state as of `as_of` in `version` from their
/// recorded events and rows already read (a caller that also needs the
/// events reads the stream once).
#[allow(clippy::too_many_arguments)]
pub async fn customer_from_parts(
    db: &ReadModelDb,
    bounds: &TierBoundsCache,
    version: &crate::projections::storage::VersionInfo,
    rules: &RuleSet,
    customer: &CustomerId,
    recorded: &[RecordedEvent],
    rows: CustomerRows,
    as_of: DateTime<Utc>,
) -> Result<Option<CustomerView>, RunnerError> {
    let version = version.clone();
    let lc = &rules.lifecycle;
    let mut events = Vec::with_capacity(recorded.len());
    for r in recorded {
        if let Some((_, e)) = fold_event(r)? {
            events.push(e);
        }
    }
    let (state, transitions) = fold_as_of(lc, &events, as_of);
    events.retain(|e| e.occurred_at <= as_of);
    events.sort_by_key(|e| (e.occurred_at, e.version));
    let history: Vec<TransitionView> = transitions.iter().map(view_transition).collect();
    let Some(stage) = state.stage else {
        return Ok(None);
    };
    let others = Others::fold(rules, &events, as_of);
    let CustomerRows(rows) = rows;
    let snapshot_us = rows.snapshot_us;
    let population = population_view(&rows, rules, as_of);
    let (value_tier, value_tier_as_of) = tier_as_of(
        db,
        bounds,
        version.model_version,
        rows.tier.as_ref(),
        rules,
        customer,
        &events,
        as_of,
    )
    .await?;
    Ok(Some(CustomerView {
        customer_id: customer.to_string(),
        as_of: show(as_of),
        model_version: version.model_version,
        rules_id: version.rules_id,
        stage: Some(stage.as_str().to_owned()),
        stage_since: DateTime::from_timestamp_micros(state.stage_since_us).map(show),
        stage_history: history,
        value_tier,
        value_tier_as_of: value_tier_as_of.map(show),
        revenue_minor: state.revenue_minor,
        currency: lc.currency.to_string(),
        orders: state.orders,
        loyalty: loyalty::as_of(&others.loyalty, &rules.loyalty, as_of),
        value: value::snapshot(&others.value, as_of),
        alerts: alerts::as_of(&others.alerts.alerts, &rules.alerts, as_of).alerts,
        population,
        population_snapshot: snapshot_us
            .and_then(DateTime::from_timestamp_micros)
            .map(show),
    }))
}

/// The per-customer states of the folds besides lifecycle.
#[derive(Default)]
struct Others {
    loyalty: LoyaltyState,
    value: ValueState,
    alerts: AlertsFoldState,
}

impl Others {
    /// Folds events (already filtered to `occurred_at <= as_of` and sorted).
    fn fold(rules: &RuleSet, events: &[FoldEvent], _as_of: DateTime<Utc>) -> Self {
        let mut others = Others::default();
        for event in events {
            let view = event.view();
            loyalty::apply(&mut others.loyalty, &rules.loyalty, &view);
            value::apply(&mut others.value, &view);
            alerts::apply(&mut others.alerts.alerts, &rules.alerts, &view);
        }
        others
    }
}

/// The customer's population figures from their `churn_value_alerts` and
/// `customer_clv` rows, when `as_of` is at or after the version's snapshot.
fn population_view(
    rows: &CustomerPopulation,
    rules: &RuleSet,
    as_of: DateTime<Utc>,
) -> Option<PopulationView> {
    let snapshot_us = rows.snapshot_us?;
    if as_of.timestamp_micros() < snapshot_us {
        return None;
    }
    let value_alert = rows.value_alert.as_ref().map(|a| ValueAlertView {
        at: DateTime::from_timestamp_micros(a.at_us)
            .map(show)
            .unwrap_or_default(),
        value_tier: a.value_tier.clone(),
        cause: a.cause.clone(),
    });
    let scores = rows.scores.as_ref().map(|c| ScoresView {
        figures: c.clone(),
        currency: rules.clv.currency.code().to_owned(),
        horizon_days: (f64::from(rules.clv.clv.horizon_months) * crate::clv::TimeUnit::Month.days())
            .round() as i32,
    });
    Some(PopulationView {
        as_of: DateTime::from_timestamp_micros(snapshot_us)
            .map(show)
            .unwrap_or_default(),
        value_alert,
        scores,
    })
}

/// The value tier and the instant it was computed for: from the customer's
/// `lifecycle_snapshot` row when `as_of` is at or after it, else as of the
/// last month end at or before `as_of`, from the customer's own revenue
/// then and that month end's [`TierBounds`] (none when the customer had no
/// event by then). `events` are the customer's, up to `as_of`.
#[allow(clippy::too_many_arguments)]
async fn tier_as_of(
    db: &ReadModelDb,
    bounds: &TierBoundsCache,
    model_version: i64,
    snapshot: Option<&SnapshotTier>,
    rules: &RuleSet,
    customer: &CustomerId,
    events: &[FoldEvent],
    as_of: DateTime<Utc>,
) -> Result<(Option<String>, Option<DateTime<Utc>>), RunnerError> {
    if let Some(snapshot) = snapshot {
        if as_of.timestamp_micros() >= snapshot.as_of_us {
            return Ok((
                Some(snapshot.value_tier.clone()),
                DateTime::from_timestamp_micros(snapshot.as_of_us),
            ));
        }
    }
    let month_end = month_end_at_or_before(as_of);
    let mut revenue: Option<i64> = None;
    for event in events.iter().filter(|e| e.occurred_at <= month_end) {
        let sum = revenue
            .unwrap_or(0)
            .checked_add(lifecycle::revenue_delta(
                &event.event,
                rules.lifecycle.currency,
            ))
            .ok_or_else(|| RunnerError::Decode {
                position: 0,
                stream: customer.stream_id().to_string(),
                reason: "revenue overflows 64 bits".to_owned(),
            })?;
        revenue = Some(sum);
    }
    let Some(revenue) = revenue else {
        return Ok((None, None));
    };
    let tier = bounds
        .bounds_as_of(db, model_version, &rules.lifecycle, month_end)
        .await?
        .tier_of(revenue, customer.as_str());
    Ok((Some(tier.as_str().to_owned()), Some(month_end)))
}

/// A customer's folded state computed from a given list of events, for
/// audit exports: everything the per-customer rules decide, and nothing
/// that needs other customers (value tier, CLV), so it is a pure function
/// of the exported events and the rules.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FoldedCustomer {
    /// The instant the state is as of.
    pub as_of: String,
    /// The rules used (id and hash).
    pub rules_id: String,
    /// Hash of the rules.
    pub rules_hash: String,
    /// Stage at the instant.
    pub stage: Option<String>,
    /// Every stage change up to the instant.
    pub stage_history: Vec<TransitionView>,
    /// Orders minus refunds in the lifecycle currency, minor units.
    pub revenue_minor: i64,
    /// Loyalty balance, lots, tier history, conflicts.
    pub loyalty: LoyaltySnapshot,
    /// Historical value.
    pub value: ValueSnapshot,
    /// Alerts fired up to the instant.
    pub alerts: Vec<Alert>,
}

/// Folds `events` (one customer's, any order) with `occurred_at <= as_of`
/// under `rules`, advanced to `as_of`.
pub fn fold_customer_events(
    rules: &RuleSet,
    events: &[crate::domain::RecordedEvent],
    as_of: DateTime<Utc>,
) -> Result<FoldedCustomer, RunnerError> {
    let mut folded = Vec::with_capacity(events.len());
    for recorded in events {
        if let Some((_, event)) = fold_event(recorded)? {
            folded.push(event);
        }
    }
    let (state, transitions) = fold_as_of(&rules.lifecycle, &folded, as_of);
    folded.retain(|e| e.occurred_at <= as_of);
    folded.sort_by_key(|e| (e.occurred_at, e.version));
    let others = Others::fold(rules, &folded, as_of);
    Ok(FoldedCustomer {
        as_of: show(as_of),
        rules_id: rules.rules_id(),
        rules_hash: rules.hash.clone(),
        stage: state.stage.map(|s| s.as_str().to_owned()),
        stage_history: transitions.iter().map(view_transition).collect(),
        revenue_minor: state.revenue_minor,
        loyalty: loyalty::as_of(&others.loyalty, &rules.loyalty, as_of),
        value: value::snapshot(&others.value, as_of),
        alerts: alerts::as_of(&others.alerts.alerts, &rules.alerts, as_of).alerts,
    })
}

/// The active version's rules, or the shipped rules when no version is
/// active (or there are no read models): what folds outside the runner use.
pub async fn active_rules_or_shipped(db: Option<&ReadModelDb>) -> Result<RuleSet, RunnerError> {
    match db {
        Some(db) => match active(db).await {
            Ok((_, rules)) => Ok(rules),
            Err(RunnerError::NoActiveVersion) => Ok(RuleSet::shipped_defaults()),
            Err(e) => Err(e),
        },
        None => Ok(RuleSet::shipped_defaults()),
    }
}

/// What the ledger *knew* at `known_at` about the customer as of `as_of`
/// (bitemporal): the fold of the stream's events recorded by `known_at`,
/// keeping those that occurred by `as_of`, under `rules`. Events recorded
/// later — including corrections backdated before `as_of` — are left out,
/// so the answer never changes once `known_at` has passed. `None` when no
/// such event exists.
pub async fn customer_known_at(
    store: Arc<dyn EventStore>,
    rules: &RuleSet,
    customer: &CustomerId,
    as_of: DateTime<Utc>,
    known_at: DateTime<Utc>,
) -> Result<Option<FoldedCustomer>, RunnerError> {
    let mut events = store
        .read_stream(&customer.stream_id(), ReadStream::all_forwards())
        .await?;
    events.retain(|e| e.recorded_at <= known_at);
    let folded = fold_customer_events(rules, &events, as_of)?;
    Ok(folded.stage.is_some().then_some(folded))
}

/// The projections as a section of an audit export
/// ([`crate::audit::export`]), bitemporal like the export itself: the
/// export lists the events *recorded* by its instant T, and this section
/// folds exactly those, keeping the ones that *occurred* by T, under the
/// active read-model version's rules (the shipped rules when none is
/// active). An auditor can recompute it from the export alone.
pub struct ProjectionsExportSection {
    /// The read models (for the active version's rules), if any.
    pub db: Option<ReadModelDb>,
    /// The instant used when the export has no `as_of` (the CLI passes now).
    pub default_as_of: DateTime<Utc>,
}

#[async_trait::async_trait]
impl crate::audit::export::StateSection for ProjectionsExportSection {
    fn name(&self) -> &str {
        "projections"
    }

    async fn compute(
        &self,
        _customer: &CustomerId,
        as_of: Option<DateTime<Utc>>,
        events: &[crate::domain::RecordedEvent],
    ) -> Result<crate::audit::export::StateSectionValue, String> {
        let at = as_of.unwrap_or(self.default_as_of);
        let rules = active_rules_or_shipped(self.db.as_ref())
            .await
            .map_err(|e| e.to_string())?;
        let folded = fold_customer_events(&rules, events, at).map_err(|e| e.to_string())?;
        Ok(crate::audit::export::StateSectionValue {
            source: format!("fold of the exported events under rules {}", rules.hash),
            value: serde_json::to_value(folded).map_err(|e| e.to_string())?,
        })
    }
}

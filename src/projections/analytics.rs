//! Population queries over the active read-model version: acquisition
//! cohorts with retention, lifecycle stage distribution as of any instant,
//! and stage distribution and flows per month.
//!
//! They read the tables and persisted states the runner wrote and add what
//! time alone changed since each customer's last event (a stage reached by
//! a time rule), so every answer is exact as of its instant — no answer is
//! "as of whenever the runner last ran".

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::cohorts::{
    self, CohortAccumulator, CohortTable, StageCount, StageFlowAccumulator, StageTable,
    StageTransitionFact, YearMonth,
};
use super::lifecycle::{self, fold_as_of, LifecycleState, Transition};
use super::runner::{active, fold_event, RunnerError};
use super::storage::ReadModelDb;
use crate::domain::CustomerId;
use crate::store::{EventStore, ReadStream};

fn state_error(customer: &str, reason: impl ToString) -> RunnerError {
    RunnerError::Decode {
        position: 0,
        stream: customer.to_owned(),
        reason: reason.to_string(),
    }
}

/// The instant the active version's population was computed as of (the
/// newest event folded), or `None` when nothing was folded yet.
pub async fn snapshot_instant(db: &ReadModelDb) -> Result<Option<DateTime<Utc>>, RunnerError> {
    let (version, _) = active(db).await?;
    Ok(db
        .population_as_of(version.model_version)
        .await?
        .and_then(DateTime::from_timestamp_micros))
}

/// Cohort retention for cohorts in `[from, to)` (all when `None`), through
/// the month of the newest event.
pub async fn cohort_table(
    db: &ReadModelDb,
    from: Option<YearMonth>,
    to: Option<YearMonth>,
) -> Result<CohortTable, RunnerError> {
    let (version, rules) = active(db).await?;
    let v = version.model_version;
    let mut through: Option<YearMonth> = None;
    let mut accumulator = CohortAccumulator::new(rules.lifecycle.currency);
    cohorts::for_each_stored_facts(db, v, |customer| {
        through = through.max(customer.months.keys().next_back().copied());
        let in_range = customer
            .cohort()
            .is_some_and(|c| from.is_none_or(|f| c >= f) && to.is_none_or(|t| c < t));
        if in_range {
            accumulator.add(&customer);
        }
    })
    .await?;
    if let Some(snapshot) = db
        .population_as_of(v)
        .await?
        .and_then(DateTime::from_timestamp_micros)
    {
        through = through.max(Some(YearMonth::of(snapshot)));
    }
    let through = through.unwrap_or_else(|| YearMonth::of(Utc::now()));
    Ok(accumulator.table(through))
}

/// Every customer's lifecycle state as stored, with the instant of their
/// last event, streamed in customer order.
async fn lifecycle_states(
    db: &ReadModelDb,
    model_version: i64,
) -> Result<Vec<(String, i64, LifecycleState)>, RunnerError> {
    use futures::StreamExt;
    let mut out = Vec::new();
    let mut states = db.customer_states(model_version);
    while let Some(row) = states.next().await {
        let row = row?;
        let (_, state) = super::runner::decode_state_row(&row)?;
        out.push((row.customer_id, state.last_occurred_us, state.lifecycle));
    }
    Ok(out)
}

/// Customers per lifecycle stage as of `as_of`: persisted states advanced
/// to it, and customers whose last event is later refolded from their
/// stream up to it.
pub async fn stage_distribution(
    store: Arc<dyn EventStore>,
    db: &ReadModelDb,
    as_of: DateTime<Utc>,
) -> Result<Vec<StageCount>, RunnerError> {
    let (version, rules) = active(db).await?;
    let t = as_of.timestamp_micros();
    let mut counts: BTreeMap<&'static str, i64> = BTreeMap::new();
    for (customer, last_us, mut state) in lifecycle_states(db, version.model_version).await? {
        // A state already advanced past `t` (to the runner's clock) cannot
        // go back: refold the customer's stream up to `t`.
        if last_us.max(state.cursor_us) > t {
            let id = CustomerId::parse(&customer).map_err(|e| state_error(&customer, e))?;
            let recorded = store
                .read_stream(&id.stream_id(), ReadStream::all_forwards())
                .await?;
            let mut events = Vec::with_capacity(recorded.len());
            for r in &recorded {
                if let Some((_, e)) = fold_event(r)? {
                    events.push(e);
                }
            }
            state = fold_as_of(&rules.lifecycle, &events, as_of).0;
        } else if state.stage.is_some() {
            state.advance_to(&rules.lifecycle, t, &mut Vec::new());
        }
        if let Some(stage) = state.stage {
            *counts.entry(stage.as_str()).or_default() += 1;
        }
    }
    Ok(counts
        .into_iter()
        .map(|(stage, customers)| StageCount {
            stage: stage.to_owned(),
            customers,
        })
        .collect())
}

/// Stage distribution at the end of each month and the transitions in it,
/// from the first transition through the month of the population snapshot
/// (the last month as of the snapshot instant).
pub async fn stage_table(db: &ReadModelDb) -> Result<StageTable, RunnerError> {
    let (version, rules) = active(db).await?;
    let v = version.model_version;
    let Some(snapshot) = db
        .population_as_of(v)
        .await?
        .and_then(DateTime::from_timestamp_micros)
    else {
        return Ok(StageTable { months: Vec::new() });
    };
    let mut flows = StageFlowAccumulator::default();
    for change in lifecycle::stage_changes(db, v).await? {
        // Customers' tables run to their clock or their last event, which
        // may be later than the snapshot: the last month ends at it.
        if change.at > snapshot {
            continue;
        }
        flows.record(&StageTransitionFact {
            customer: change.customer_id,
            from: change.from.map(|s| s.as_str().to_owned()),
            to: change.to.as_str().to_owned(),
            at: change.at,
        });
    }
    // Time rules that fired between each customer's last event and the snapshot.
    let t = snapshot.timestamp_micros();
    for (customer, _, mut state) in lifecycle_states(db, v).await? {
        if state.stage.is_none() {
            continue;
        }
        let mut later: Vec<Transition> = Vec::new();
        state.advance_to(&rules.lifecycle, t, &mut later);
        for transition in later {
            flows.record(&StageTransitionFact {
                customer: customer.clone(),
                from: transition.from.map(|s| s.as_str().to_owned()),
                to: transition.to.as_str().to_owned(),
                at: transition.at,
            });
        }
    }
    Ok(flows.table(YearMonth::of(snapshot)))
}

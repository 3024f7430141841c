//! `journey diff`: what changing the rules would change. Replays the whole
//! log in memory under two rule sets (nothing is written) and compares every
//! customer's stage and value tier as of one instant (default: the newest
//! event's `occurred_at`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;

use super::lifecycle::{fold_as_of, value_tiers, LifecycleState, Stage};
use super::rules::{LifecycleRules, RuleSet};
use super::runner::{fold_event, RunnerError};
use super::FoldEvent;
use crate::domain::CustomerId;
use crate::store::{EventStore, ReadStream};

/// Examples listed per projection.
pub const MAX_EXAMPLES: usize = 20;

/// The outcome of a diff.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DiffReport {
    /// The instant compared.
    pub as_of: Option<String>,
    /// Customers replayed.
    pub customers: usize,
    /// Rules A (id and hash).
    pub rules_a: RulesLabel,
    /// Rules B (id and hash).
    pub rules_b: RulesLabel,
    /// Per projection.
    pub projections: BTreeMap<String, ProjectionDiff>,
}

/// Which rules were compared.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RulesLabel {
    /// Rules id.
    pub rules_id: String,
    /// Rules hash.
    pub hash: String,
}

/// Differences within one projection.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct ProjectionDiff {
    /// Customers whose stage differs.
    pub stage_changes: usize,
    /// Customers whose value tier differs.
    pub tier_changes: usize,
    /// Counts per `from->to` stage move (A to B).
    pub stage_moves: BTreeMap<String, usize>,
    /// Up to [`MAX_EXAMPLES`] customers that change, in id order.
    pub examples: Vec<CustomerDiff>,
}

/// One customer that changes.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CustomerDiff {
    /// The customer.
    pub customer_id: String,
    /// Stage under A.
    pub stage_a: Option<String>,
    /// Stage under B.
    pub stage_b: Option<String>,
    /// Tier under A.
    pub tier_a: String,
    /// Tier under B.
    pub tier_b: String,
}

struct Pair {
    a: LifecycleState,
    b: LifecycleState,
    last_us: i64,
}

/// Replays the log under both rule sets and compares them as of `as_of`
/// (default: the newest `occurred_at`).
pub async fn diff(
    store: Arc<dyn EventStore>,
    rules_a: &RuleSet,
    rules_b: &RuleSet,
    as_of: Option<DateTime<Utc>>,
) -> Result<DiffReport, RunnerError> {
    let (ra, rb) = (&rules_a.lifecycle, &rules_b.lifecycle);
    let mut customers: HashMap<CustomerId, Pair> = HashMap::new();
    let mut newest: Option<DateTime<Utc>> = None;
    let mut events = crate::store::read_all(store.clone(), 1, 5_000);
    let mut sink = Vec::new();
    while let Some(recorded) = events.next().await {
        let recorded = recorded?;
        if as_of.is_some_and(|t| recorded.occurred_at > t) {
            continue;
        }
        let Some((customer, event)) = fold_event(&recorded)? else {
            continue;
        };
        newest = newest.max(Some(event.occurred_at));
        let at_us = event.occurred_at.timestamp_micros();
        let pair = customers.entry(customer.clone()).or_insert_with(|| Pair {
            a: LifecycleState::default(),
            b: LifecycleState::default(),
            last_us: i64::MIN,
        });
        if at_us < pair.last_us {
            // Late event: refold this customer in (occurred_at, version) order.
            let stream = store
                .read_stream(&customer.stream_id(), ReadStream::all_forwards())
                .await?;
            let mut folded: Vec<FoldEvent> = Vec::new();
            for r in stream.iter().filter(|r| r.position <= recorded.position) {
                if let Some((_, e)) = fold_event(r)? {
                    if as_of.is_none_or(|t| e.occurred_at <= t) {
                        folded.push(e);
                    }
                }
            }
            let last = folded
                .iter()
                .map(|e| e.occurred_at)
                .max()
                .expect("this event");
            pair.a = refold(ra, &folded, last);
            pair.b = refold(rb, &folded, last);
            pair.last_us = pair.last_us.max(at_us);
            continue;
        }
        sink.clear();
        pair.a.apply(ra, &event, &mut sink);
        pair.b.apply(rb, &event, &mut sink);
        pair.last_us = at_us;
    }
    let at = as_of.or(newest);
    let mut report = DiffReport {
        as_of: at.map(|t| crate::domain::envelope::display_instant(&t)),
        customers: customers.len(),
        rules_a: RulesLabel {
            rules_id: rules_a.rules_id(),
            hash: rules_a.hash.clone(),
        },
        rules_b: RulesLabel {
            rules_id: rules_b.rules_id(),
            hash: rules_b.hash.clone(),
        },
        projections: BTreeMap::new(),
    };
    let Some(at) = at else {
        report
            .projections
            .insert("lifecycle".into(), ProjectionDiff::default());
        return Ok(report);
    };
    let t = at.timestamp_micros();
    for pair in customers.values_mut() {
        pair.a.advance_to(ra, t, &mut sink);
        pair.b.advance_to(rb, t, &mut sink);
        sink.clear();
    }
    let tiers_a = value_tiers(ra, customers.iter().map(|(c, p)| (c, p.a.revenue_minor)));
    let tiers_b = value_tiers(rb, customers.iter().map(|(c, p)| (c, p.b.revenue_minor)));
    let mut ids: Vec<&CustomerId> = customers.keys().collect();
    ids.sort();
    let mut lifecycle = ProjectionDiff::default();
    for id in ids {
        let pair = &customers[id];
        let stage_changed = pair.a.stage != pair.b.stage;
        let tier_changed = tiers_a[id] != tiers_b[id];
        if stage_changed {
            lifecycle.stage_changes += 1;
            *lifecycle
                .stage_moves
                .entry(format!("{}->{}", name(pair.a.stage), name(pair.b.stage)))
                .or_default() += 1;
        }
        if tier_changed {
            lifecycle.tier_changes += 1;
        }
        if (stage_changed || tier_changed) && lifecycle.examples.len() < MAX_EXAMPLES {
            lifecycle.examples.push(CustomerDiff {
                customer_id: id.to_string(),
                stage_a: pair.a.stage.map(|s| s.as_str().to_owned()),
                stage_b: pair.b.stage.map(|s| s.as_str().to_owned()),
                tier_a: tiers_a[id].as_str().to_owned(),
                tier_b: tiers_b[id].as_str().to_owned(),
            });
        }
    }
    report.projections.insert("lifecycle".into(), lifecycle);
    Ok(report)
}

fn refold(rules: &LifecycleRules, events: &[FoldEvent], last: DateTime<Utc>) -> LifecycleState {
    fold_as_of(rules, events, last).0
}

fn name(stage: Option<Stage>) -> &'static str {
    stage.map_or("none", |s| s.as_str())
}

//! `journey diff`: what changing the rules would change. Replays the whole
//! log under two rule sets, customer by customer (nothing is written, and
//! nothing is held per customer but what the value tiers rank), and
//! compares, as of one instant (default: the newest event's `occurred_at`),
//! every customer's lifecycle stage and value tier, loyalty tier, balance
//! and conflicts (a past redemption the new rules cannot cover), and alerts.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::alerts::{self, Alert, AlertState};
use super::lifecycle::{value_tiers_in_order, LifecycleState, Stage, Transition};
use super::loyalty::{self, LoyaltySnapshot, LoyaltyState};
use super::rules::RuleSet;
use super::runner::{fold_event, RunnerError};
use super::FoldEvent;
use crate::domain::CustomerId;
use crate::store::EventStore;

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
    /// Lifecycle stages and value tiers.
    pub lifecycle: ProjectionDiff,
    /// Loyalty tiers, balances and conflicts.
    pub loyalty: LoyaltyDiff,
    /// Churn alerts.
    pub alerts: AlertsDiff,
}

/// Which rules were compared.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RulesLabel {
    /// Rules id.
    pub rules_id: String,
    /// Rules hash.
    pub hash: String,
}

/// Differences in the lifecycle projection.
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

/// Differences in the loyalty projection.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct LoyaltyDiff {
    /// Customers whose loyalty tier differs.
    pub tier_changes: usize,
    /// Customers whose points balance differs.
    pub balance_changes: usize,
    /// Sum of balances under A and under B.
    pub points_a: i64,
    /// Sum of balances under B.
    pub points_b: i64,
    /// Consumptions exceeding the balance under A (all customers).
    pub conflicts_a: usize,
    /// Consumptions exceeding the balance under B: a past redemption the new
    /// rules cannot cover shows up here.
    pub conflicts_b: usize,
    /// Counts per `from->to` loyalty tier move (A to B).
    pub tier_moves: BTreeMap<String, usize>,
    /// Up to [`MAX_EXAMPLES`] customers that change, in id order.
    pub examples: Vec<LoyaltyCustomerDiff>,
}

/// One customer whose loyalty figures change.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LoyaltyCustomerDiff {
    /// The customer.
    pub customer_id: String,
    /// Tier under A and B.
    pub tier: [String; 2],
    /// Balance under A and B.
    pub balance: [i64; 2],
    /// Conflicts under A and B.
    pub conflicts: [usize; 2],
}

/// Differences in the churn-alert projection (per-customer rules).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct AlertsDiff {
    /// Customers whose alerts differ (rule, instant or events).
    pub customers_changed: usize,
    /// Alerts fired under A, per rule.
    pub alerts_a: BTreeMap<String, usize>,
    /// Alerts fired under B, per rule.
    pub alerts_b: BTreeMap<String, usize>,
    /// Up to [`MAX_EXAMPLES`] customers that change: alert counts under A and B.
    pub examples: Vec<(String, [usize; 2])>,
}

/// Every per-customer state one rule set folds, for comparison.
#[derive(Default)]
struct Side {
    lifecycle: LifecycleState,
    loyalty: LoyaltyState,
    alerts: AlertState,
}

impl Side {
    fn apply(&mut self, rules: &RuleSet, event: &FoldEvent, sink: &mut Vec<Transition>) {
        self.lifecycle.apply(&rules.lifecycle, event, sink);
        let view = event.view();
        loyalty::apply(&mut self.loyalty, &rules.loyalty, &view);
        alerts::apply(&mut self.alerts, &rules.alerts, &view);
    }

    /// Folds `events`, already in `(occurred_at, version)` order, from scratch.
    fn fold(rules: &RuleSet, events: &[FoldEvent]) -> Self {
        let mut side = Side::default();
        let mut sink = Vec::new();
        for event in events {
            side.apply(rules, event, &mut sink);
        }
        side
    }
}

/// What the value tiers need of a customer once the rest is compared: the
/// tiers rank the whole population, so this is all a diff keeps per
/// customer.
struct Compared {
    customer: CustomerId,
    revenue: [i64; 2],
    stage: [Option<Stage>; 2],
}

/// Replays the log under both rule sets and compares them as of `as_of`
/// (default: the newest `occurred_at` of a customer event), customer by
/// customer: each stream is read once, folded under A and under B,
/// compared and dropped; only what the value tiers rank stays (a few dozen
/// bytes a customer). `progress` gets the number of events read so far.
pub async fn diff(
    store: Arc<dyn EventStore>,
    rules_a: &RuleSet,
    rules_b: &RuleSet,
    as_of: Option<DateTime<Utc>>,
    mut progress: impl FnMut(u64),
) -> Result<DiffReport, RunnerError> {
    let (ra, rb) = (&rules_a.lifecycle, &rules_b.lifecycle);
    let at = match as_of {
        Some(t) => Some(t),
        None => store.newest_customer_occurred_at().await?,
    };
    let mut report = DiffReport {
        as_of: at.map(|t| crate::domain::envelope::display_instant(&t)),
        customers: 0,
        rules_a: RulesLabel {
            rules_id: rules_a.rules_id(),
            hash: rules_a.hash.clone(),
        },
        rules_b: RulesLabel {
            rules_id: rules_b.rules_id(),
            hash: rules_b.hash.clone(),
        },
        lifecycle: ProjectionDiff::default(),
        loyalty: LoyaltyDiff::default(),
        alerts: AlertsDiff::default(),
    };
    let Some(at) = at else {
        return Ok(report);
    };
    let t = at.timestamp_micros();
    let mut compared: Vec<Compared> = Vec::new();
    let mut read = 0u64;
    let mut sink = Vec::new();
    crate::store::for_each_customer_stream(&*store, |customer, recorded| {
        read += recorded.len() as u64;
        progress(read);
        let mut events: Vec<FoldEvent> = Vec::with_capacity(recorded.len());
        for r in &recorded {
            if let Some((_, e)) = fold_event(r)? {
                if e.occurred_at <= at {
                    events.push(e);
                }
            }
        }
        if events.is_empty() {
            // Every event happened after the instant: not a customer yet.
            return Ok(());
        }
        // A late event is just a sort: both sides fold in occurrence order.
        events.sort_by_key(|e| (e.occurred_at, e.version));
        let mut sides = [Side::fold(rules_a, &events), Side::fold(rules_b, &events)];
        for (side, rules) in sides.iter_mut().zip([ra, rb]) {
            if side.lifecycle.stage.is_some() {
                side.lifecycle.advance_to(rules, t, &mut sink);
            }
            sink.clear();
        }
        let [a, b] = &sides;
        let la = loyalty::as_of(&a.loyalty, &rules_a.loyalty, at);
        let lb = loyalty::as_of(&b.loyalty, &rules_b.loyalty, at);
        compare_loyalty(&mut report.loyalty, &customer, &la, &lb);
        let aa = alerts::as_of(&a.alerts, &rules_a.alerts, at).alerts;
        let ab = alerts::as_of(&b.alerts, &rules_b.alerts, at).alerts;
        compare_alerts(&mut report.alerts, &customer, &aa, &ab);
        compared.push(Compared {
            customer,
            revenue: [a.lifecycle.revenue_minor, b.lifecycle.revenue_minor],
            stage: [a.lifecycle.stage, b.lifecycle.stage],
        });
        Ok::<_, RunnerError>(())
    })
    .await?;
    report.customers = compared.len();
    // Streams come in name order, which is customer id order; the tiers
    // break revenue ties by that order.
    compared.sort_by(|x, y| x.customer.cmp(&y.customer));
    let tiers = |rules, side: usize| {
        let revenues: Vec<i64> = compared.iter().map(|c| c.revenue[side]).collect();
        value_tiers_in_order(rules, &revenues)
    };
    let (tiers_a, tiers_b) = (tiers(ra, 0), tiers(rb, 1));
    for ((c, tier_a), tier_b) in compared.iter().zip(&tiers_a).zip(&tiers_b) {
        compare_lifecycle(
            &mut report.lifecycle,
            &c.customer,
            (c.stage[0], c.stage[1]),
            (tier_a.as_str(), tier_b.as_str()),
        );
    }
    Ok(report)
}

fn compare_lifecycle(
    diff: &mut ProjectionDiff,
    id: &CustomerId,
    (a, b): (Option<Stage>, Option<Stage>),
    (tier_a, tier_b): (&str, &str),
) {
    let stage_changed = a != b;
    let tier_changed = tier_a != tier_b;
    if stage_changed {
        diff.stage_changes += 1;
        *diff
            .stage_moves
            .entry(format!("{}->{}", name(a), name(b)))
            .or_default() += 1;
    }
    if tier_changed {
        diff.tier_changes += 1;
    }
    if (stage_changed || tier_changed) && diff.examples.len() < MAX_EXAMPLES {
        diff.examples.push(CustomerDiff {
            customer_id: id.to_string(),
            stage_a: a.map(|s| s.as_str().to_owned()),
            stage_b: b.map(|s| s.as_str().to_owned()),
            tier_a: tier_a.to_owned(),
            tier_b: tier_b.to_owned(),
        });
    }
}

fn compare_loyalty(
    diff: &mut LoyaltyDiff,
    id: &CustomerId,
    a: &LoyaltySnapshot,
    b: &LoyaltySnapshot,
) {
    diff.points_a += a.balance;
    diff.points_b += b.balance;
    diff.conflicts_a += a.conflicts.len();
    diff.conflicts_b += b.conflicts.len();
    let tier_changed = a.tier != b.tier;
    let balance_changed = a.balance != b.balance;
    if tier_changed {
        diff.tier_changes += 1;
        *diff
            .tier_moves
            .entry(format!("{}->{}", a.tier.as_str(), b.tier.as_str()))
            .or_default() += 1;
    }
    if balance_changed {
        diff.balance_changes += 1;
    }
    let conflicts_changed = a.conflicts != b.conflicts;
    if (tier_changed || balance_changed || conflicts_changed) && diff.examples.len() < MAX_EXAMPLES
    {
        diff.examples.push(LoyaltyCustomerDiff {
            customer_id: id.to_string(),
            tier: [a.tier.as_str().to_owned(), b.tier.as_str().to_owned()],
            balance: [a.balance, b.balance],
            conflicts: [a.conflicts.len(), b.conflicts.len()],
        });
    }
}

fn compare_alerts(diff: &mut AlertsDiff, id: &CustomerId, a: &[Alert], b: &[Alert]) {
    for (alerts, counts) in [(a, &mut diff.alerts_a), (b, &mut diff.alerts_b)] {
        for alert in alerts {
            *counts.entry(alert.rule.as_str().to_owned()).or_default() += 1;
        }
    }
    if a != b {
        diff.customers_changed += 1;
        if diff.examples.len() < MAX_EXAMPLES {
            diff.examples.push((id.to_string(), [a.len(), b.len()]));
        }
    }
}

fn name(stage: Option<Stage>) -> &'static str {
    stage.map_or("none", |s| s.as_str())
}

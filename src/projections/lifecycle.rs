//! The lifecycle projection: each customer's stage (prospect, new, active,
//! mature, at_risk, dormant, churned, reactivated) with its full transition
//! history, and value tiers (high / mid / low by share of revenue).
//!
//! The stage at instant `t` is a pure function of the folded facts
//! ([`LifecycleState::stage_at`]); it is piecewise constant and changes only
//! at "boundary" instants (last order + 90 days, ...). Advancing time walks
//! those boundaries in order and records a transition at the exact instant
//! a threshold is crossed. Every comparison is `>=` at the threshold: a
//! customer whose last order was exactly 90 days ago is at_risk; one
//! microsecond earlier, not yet.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::rules::{days, LifecycleRules};
use super::storage::{both, ReadModelDb, StorageError};
use super::{CustomerFold, FoldEvent, Row, TableKind, TableSpec, Value};
use crate::domain::{Currency, CustomerId, DomainEvent};
use uuid::Uuid;

/// A lifecycle stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Registered, no order yet.
    Prospect,
    /// First order recently.
    New,
    /// Ordering, neither new nor mature.
    Active,
    /// Long tenure and frequent orders.
    Mature,
    /// No order for a while.
    AtRisk,
    /// No order for longer.
    Dormant,
    /// Gone: no order for a long time, or subscription cancelled.
    Churned,
    /// Came back after dormant or churned.
    Reactivated,
}

impl Stage {
    /// Every stage, in lifecycle order.
    pub const ALL: [Stage; 8] = [
        Stage::Prospect,
        Stage::New,
        Stage::Active,
        Stage::Mature,
        Stage::AtRisk,
        Stage::Dormant,
        Stage::Churned,
        Stage::Reactivated,
    ];

    /// The stored name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Stage::Prospect => "prospect",
            Stage::New => "new",
            Stage::Active => "active",
            Stage::Mature => "mature",
            Stage::AtRisk => "at_risk",
            Stage::Dormant => "dormant",
            Stage::Churned => "churned",
            Stage::Reactivated => "reactivated",
        }
    }

    /// The stored code (`lifecycle_stages.code`): history rows hold a
    /// small integer, not the name.
    pub fn code(&self) -> i64 {
        match self {
            Stage::Prospect => 1,
            Stage::New => 2,
            Stage::Active => 3,
            Stage::Mature => 4,
            Stage::AtRisk => 5,
            Stage::Dormant => 6,
            Stage::Churned => 7,
            Stage::Reactivated => 8,
        }
    }

    /// The stage of a stored code (the inverse of [`Stage::code`]).
    pub fn from_code(code: i64) -> Option<Stage> {
        Stage::ALL.into_iter().find(|stage| stage.code() == code)
    }
}

/// A value tier by share of revenue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueTier {
    /// Among the customers holding the top share of revenue.
    High,
    /// The next share.
    Mid,
    /// The rest, and customers without revenue.
    Low,
}

impl ValueTier {
    /// The stored name.
    pub fn as_str(&self) -> &'static str {
        match self {
            ValueTier::High => "high",
            ValueTier::Mid => "mid",
            ValueTier::Low => "low",
        }
    }
}

/// One stage change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// Previous stage (none for the first).
    pub from: Option<Stage>,
    /// New stage.
    pub to: Stage,
    /// The instant of the change.
    pub at: DateTime<Utc>,
    /// The event, or the time rule, that moved the customer.
    pub cause: Cause,
}

/// What moved a customer to a stage. Displayed as the event id, or as
/// `rule:<name>` (e.g. `rule:at_risk_after_90_days`); stored as a 16-byte
/// id or a [`TimeRule::code`], never as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cause {
    /// An event (an order, a registration, a cancellation...).
    Event(Uuid),
    /// Time passing, under a rule.
    Rule(TimeRule),
}

/// The time rules of the lifecycle, with the thresholds of the rules they
/// were applied under (a version's rules never change, so the stored code
/// and the version's rules give the name back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimeRule {
    /// No order for `days`.
    AtRiskAfter { days: u32 },
    /// No order for `days`.
    DormantAfter { days: u32 },
    /// No order for `days`.
    ChurnedAfter { days: u32 },
    /// Tenure and recent orders reached.
    MatureAfter {
        tenure_days: u32,
        min_orders: u32,
        window_days: u32,
    },
    /// The first order is more than `days` old.
    NewEndsAfter { days: u32 },
    /// The comeback is more than `days` old.
    ReactivatedEndsAfter { days: u32 },
    /// Too few orders in the window to stay mature.
    MatureNeeds { min_orders: u32, window_days: u32 },
    /// Any other change time alone made.
    ByTime(Stage),
}

impl TimeRule {
    /// The stored code (`lifecycle_time_rules.code`; 100 + the stage's code
    /// for [`TimeRule::ByTime`]).
    pub fn code(&self) -> i64 {
        match self {
            TimeRule::AtRiskAfter { .. } => 1,
            TimeRule::DormantAfter { .. } => 2,
            TimeRule::ChurnedAfter { .. } => 3,
            TimeRule::MatureAfter { .. } => 4,
            TimeRule::NewEndsAfter { .. } => 5,
            TimeRule::ReactivatedEndsAfter { .. } => 6,
            TimeRule::MatureNeeds { .. } => 7,
            TimeRule::ByTime(stage) => 100 + stage.code(),
        }
    }
}

impl std::fmt::Display for TimeRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TimeRule::AtRiskAfter { days } => write!(f, "at_risk_after_{days}_days"),
            TimeRule::DormantAfter { days } => write!(f, "dormant_after_{days}_days"),
            TimeRule::ChurnedAfter { days } => write!(f, "churned_after_{days}_days"),
            TimeRule::MatureAfter {
                tenure_days,
                min_orders,
                window_days,
            } => write!(
                f,
                "mature_after_{tenure_days}_days_with_{min_orders}_orders_in_{window_days}_days"
            ),
            TimeRule::NewEndsAfter { days } => write!(f, "new_ends_after_{days}_days"),
            TimeRule::ReactivatedEndsAfter { days } => {
                write!(f, "reactivated_ends_after_{days}_days")
            }
            TimeRule::MatureNeeds {
                min_orders,
                window_days,
            } => write!(f, "mature_needs_{min_orders}_orders_in_{window_days}_days"),
            TimeRule::ByTime(stage) => write!(f, "{}_by_time", stage.as_str()),
        }
    }
}

impl Cause {
    /// The event, when an event caused the change.
    pub fn event(&self) -> Option<Uuid> {
        match self {
            Cause::Event(id) => Some(*id),
            Cause::Rule(_) => None,
        }
    }

    /// The time rule, when time caused the change.
    pub fn rule(&self) -> Option<TimeRule> {
        match self {
            Cause::Event(_) => None,
            Cause::Rule(rule) => Some(*rule),
        }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Event(id) => write!(f, "{id}"),
            Cause::Rule(rule) => write!(f, "rule:{rule}"),
        }
    }
}

/// What the lifecycle fold remembers about one customer. Instants are µs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleState {
    /// Current stage (none before the first event).
    pub stage: Option<Stage>,
    /// When the current stage began.
    pub stage_since_us: i64,
    /// The instant the state has been advanced to.
    pub cursor_us: i64,
    /// Registration (or first event) instant: the start of tenure.
    pub tenure_start_us: Option<i64>,
    /// First order.
    pub first_order_us: Option<i64>,
    /// Latest order.
    pub last_order_us: Option<i64>,
    /// Orders inside the mature window as of the cursor, oldest first.
    pub window_orders_us: VecDeque<i64>,
    /// The order that reactivated the customer, if any.
    pub reactivated_us: Option<i64>,
    /// Latest subscription cancellation.
    pub cancelled_us: Option<i64>,
    /// Orders minus refunds in the rules' currency, minor units.
    pub revenue_minor: i64,
    /// Number of orders.
    pub orders: i64,
    /// Number of transitions recorded (the next one's sequence number).
    pub transitions: i64,
}

fn to_us(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn from_us(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).expect("instants in range")
}

fn day_us(n: u32) -> i64 {
    days(n).num_microseconds().expect("at most 100 years")
}

impl LifecycleState {
    /// The stage at instant `t` (>= the cursor), from the folded facts.
    pub fn stage_at(&self, rules: &LifecycleRules, t: i64) -> Option<Stage> {
        let s = &rules.stages;
        self.tenure_start_us?;
        if s.churned.on_subscription_cancelled {
            if let Some(c) = self.cancelled_us {
                if self.last_order_us.is_none_or(|o| c >= o) {
                    return Some(Stage::Churned);
                }
            }
        }
        let Some(last) = self.last_order_us else {
            return Some(Stage::Prospect);
        };
        let idle = t - last;
        if idle >= day_us(s.churned.after_days) {
            return Some(Stage::Churned);
        }
        if idle >= day_us(s.dormant.after_days) {
            return Some(Stage::Dormant);
        }
        if idle >= day_us(s.at_risk.after_days) {
            return Some(Stage::AtRisk);
        }
        if self
            .reactivated_us
            .is_some_and(|r| t - r < day_us(s.reactivated.lasts_days))
        {
            return Some(Stage::Reactivated);
        }
        if self
            .first_order_us
            .is_some_and(|f| t - f < day_us(s.new.within_days))
        {
            return Some(Stage::New);
        }
        let tenure_ok = self
            .tenure_start_us
            .is_some_and(|start| t - start >= day_us(s.mature.tenure_days));
        let window = day_us(s.mature.window_days);
        let recent = self
            .window_orders_us
            .iter()
            .filter(|&&o| t - o < window)
            .count();
        if tenure_ok && recent >= s.mature.min_orders as usize {
            return Some(Stage::Mature);
        }
        Some(Stage::Active)
    }

    /// The next instant after the cursor at which `stage_at` may change
    /// without an event (a threshold the runner must advance the customer
    /// to: see [`crate::projections::state::Folds::deadline`]).
    pub fn next_boundary(&self, rules: &LifecycleRules) -> Option<i64> {
        let s = &rules.stages;
        let c = self.cursor_us;
        let mut candidates: Vec<i64> = Vec::with_capacity(8);
        if let Some(last) = self.last_order_us {
            candidates.push(last + day_us(s.at_risk.after_days));
            candidates.push(last + day_us(s.dormant.after_days));
            candidates.push(last + day_us(s.churned.after_days));
        }
        if let Some(first) = self.first_order_us {
            candidates.push(first + day_us(s.new.within_days));
        }
        if let Some(start) = self.tenure_start_us {
            candidates.push(start + day_us(s.mature.tenure_days));
        }
        if let Some(oldest) = self.window_orders_us.front() {
            candidates.push(oldest + day_us(s.mature.window_days));
        }
        if let Some(r) = self.reactivated_us {
            candidates.push(r + day_us(s.reactivated.lasts_days));
        }
        candidates.into_iter().filter(|&b| b > c).min()
    }

    fn set_cursor(&mut self, rules: &LifecycleRules, t: i64) {
        self.cursor_us = t;
        let window = day_us(rules.stages.mature.window_days);
        while self
            .window_orders_us
            .front()
            .is_some_and(|&o| t - o >= window)
        {
            self.window_orders_us.pop_front();
        }
    }

    fn change(&mut self, to: Option<Stage>, at: i64, cause: Cause, out: &mut Vec<Transition>) {
        if to == self.stage {
            return;
        }
        let Some(to) = to else { return };
        out.push(Transition {
            from: self.stage,
            to,
            at: from_us(at),
            cause,
        });
        self.stage = Some(to);
        self.stage_since_us = at;
        self.transitions += 1;
    }

    /// Advances to `t`, recording each threshold crossing at its instant.
    pub fn advance_to(&mut self, rules: &LifecycleRules, t: i64, out: &mut Vec<Transition>) {
        if t <= self.cursor_us {
            return;
        }
        while let Some(b) = self.next_boundary(rules).filter(|&b| b <= t) {
            self.set_cursor(rules, b);
            let from = self.stage;
            let to = self.stage_at(rules, b);
            if to != from {
                let rule = time_rule(rules, from, to.expect("known customer"));
                self.change(to, b, Cause::Rule(rule), out);
            }
        }
        self.set_cursor(rules, t);
    }

    /// Folds one event (after advancing to its instant).
    pub fn apply(&mut self, rules: &LifecycleRules, event: &FoldEvent, out: &mut Vec<Transition>) {
        let t = to_us(event.occurred_at);
        self.advance_to(rules, t, out);
        if self.tenure_start_us.is_none() {
            self.tenure_start_us = Some(t);
            self.cursor_us = t;
        }
        self.revenue_minor += revenue_delta(&event.event, rules.currency);
        match &event.event {
            DomainEvent::OrderPlaced(_) => {
                if matches!(self.stage, Some(Stage::Dormant | Stage::Churned)) {
                    self.reactivated_us = Some(t);
                }
                self.first_order_us.get_or_insert(t);
                self.last_order_us = Some(t);
                self.window_orders_us.push_back(t);
                self.orders += 1;
            }
            DomainEvent::SubscriptionCancelled(_) => {
                self.cancelled_us = Some(t);
            }
            _ => {}
        }
        let to = self.stage_at(rules, t);
        self.change(to, t, Cause::Event(event.event_id), out);
    }
}

/// What an event adds to a customer's revenue: orders minus refunds in
/// `currency` (the lifecycle's currency), minor units.
pub fn revenue_delta(event: &DomainEvent, currency: Currency) -> i64 {
    match event {
        DomainEvent::OrderPlaced(o) if o.amount.currency == currency => o.amount.minor,
        DomainEvent::OrderRefunded(r) if r.amount.currency == currency => -r.amount.minor,
        _ => 0,
    }
}

/// The time rule behind a time-based change.
fn time_rule(rules: &LifecycleRules, from: Option<Stage>, to: Stage) -> TimeRule {
    let s = &rules.stages;
    match (from, to) {
        (_, Stage::AtRisk) => TimeRule::AtRiskAfter {
            days: s.at_risk.after_days,
        },
        (_, Stage::Dormant) => TimeRule::DormantAfter {
            days: s.dormant.after_days,
        },
        (_, Stage::Churned) => TimeRule::ChurnedAfter {
            days: s.churned.after_days,
        },
        (_, Stage::Mature) => TimeRule::MatureAfter {
            tenure_days: s.mature.tenure_days,
            min_orders: s.mature.min_orders,
            window_days: s.mature.window_days,
        },
        (Some(Stage::New), _) => TimeRule::NewEndsAfter {
            days: s.new.within_days,
        },
        (Some(Stage::Reactivated), _) => TimeRule::ReactivatedEndsAfter {
            days: s.reactivated.lasts_days,
        },
        (Some(Stage::Mature), _) => TimeRule::MatureNeeds {
            min_orders: s.mature.min_orders,
            window_days: s.mature.window_days,
        },
        (_, to) => TimeRule::ByTime(to),
    }
}

/// Value tiers of a population: customers ranked by revenue (ties by id);
/// while the revenue of those ranked above a customer is below the high
/// share of the total, they are high; then mid; then low. Customers with
/// no positive revenue are low.
pub fn value_tiers<'a>(
    rules: &LifecycleRules,
    revenues: impl IntoIterator<Item = (&'a CustomerId, i64)>,
) -> HashMap<&'a CustomerId, ValueTier> {
    let mut by_id: Vec<(&CustomerId, i64)> = revenues.into_iter().collect();
    by_id.sort_by(|a, b| a.0.cmp(b.0));
    let revenues: Vec<i64> = by_id.iter().map(|(_, r)| *r).collect();
    by_id
        .iter()
        .zip(value_tiers_in_order(rules, &revenues))
        .map(|((c, _), tier)| (*c, tier))
        .collect()
}

/// [`value_tiers`] of customers given in id order (ties go to the earlier
/// position): one tier per revenue, in the same order.
pub fn value_tiers_in_order(rules: &LifecycleRules, revenues: &[i64]) -> Vec<ValueTier> {
    let mut tiers = ValueTierCuts::rank(rules, revenues.to_vec()).assigner();
    revenues.iter().map(|r| tiers.next(*r)).collect()
}

/// Where a value tier ends in the ranking (revenue descending, ties in id
/// order): it holds every customer with more revenue than `revenue_minor`
/// and the first `ties` customers, in id order, with exactly that revenue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TierCut {
    pub(crate) revenue_minor: i64,
    /// At least 1: a cut ends at a customer.
    pub(crate) ties: u64,
}

/// The two cuts that decide every customer's value tier ([`value_tiers`]).
///
/// The high tier is a prefix of the ranking and the mid tier the stretch
/// after it, so a population pass ranks the revenues once, keeps these
/// two cuts (a few bytes, whatever the customer count) and assigns each
/// customer's tier from their own revenue as it streams the customers
/// again in id order ([`ValueTierAssigner`]), instead of keeping one tier
/// per customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueTierCuts {
    /// The end of the high tier (none when it is empty).
    high: Option<TierCut>,
    /// The end of the high and mid tiers together (none when both are
    /// empty).
    high_or_mid: Option<TierCut>,
}

impl ValueTierCuts {
    /// Ranks a population's revenues, given in any order.
    pub fn rank(rules: &LifecycleRules, mut revenues: Vec<i64>) -> Self {
        revenues.sort_unstable_by(|a, b| b.cmp(a));
        let total: i128 = revenues.iter().map(|r| i128::from((*r).max(0))).sum();
        let shares = &rules.value_tiers;
        let high = total * i128::from(shares.high_revenue_share_percent);
        let high_or_mid = total
            * i128::from(shares.high_revenue_share_percent + shares.mid_revenue_share_percent);
        // A customer is high while the revenue ranked before them is below
        // the high share of the total, then mid while it is below the two
        // shares; without positive revenue they are low.
        let (mut high_len, mut high_or_mid_len) = (0, 0);
        let mut before: i128 = 0;
        for (position, &revenue) in revenues.iter().enumerate() {
            if revenue <= 0 || before * 100 >= high_or_mid {
                break;
            }
            if before * 100 < high {
                high_len = position + 1;
            }
            high_or_mid_len = position + 1;
            before += i128::from(revenue);
        }
        let cut = |len: usize| {
            let ranked = &revenues[..len];
            let revenue_minor = *ranked.last()?;
            let above = ranked.partition_point(|r| *r > revenue_minor);
            Some(TierCut {
                revenue_minor,
                ties: (len - above) as u64,
            })
        };
        Self {
            high: cut(high_len),
            high_or_mid: cut(high_or_mid_len),
        }
    }

    /// Where the high tier ends (none when it is empty).
    pub(crate) fn high(&self) -> Option<TierCut> {
        self.high
    }

    /// Where the mid tier ends (none when it is empty). Over one ranking a
    /// cut names one length (the customers above its revenue plus its
    /// ties), so the two ends are equal exactly when the mid tier is empty.
    pub(crate) fn mid(&self) -> Option<TierCut> {
        self.high_or_mid.filter(|end| Some(*end) != self.high)
    }

    /// Assigns tiers to the ranked customers, streamed in id order.
    pub fn assigner(self) -> ValueTierAssigner {
        ValueTierAssigner {
            cuts: self,
            high_ties: 0,
            high_or_mid_ties: 0,
        }
    }
}

/// Tiers of the customers [`ValueTierCuts`] ranked, one after another in
/// id order; it counts the customers tied at each cut, so a tie goes to
/// the customer first in id order.
#[derive(Debug)]
pub struct ValueTierAssigner {
    cuts: ValueTierCuts,
    high_ties: u64,
    high_or_mid_ties: u64,
}

impl ValueTierAssigner {
    /// The tier of the next customer in id order, whose revenue is
    /// `revenue_minor`.
    pub fn next(&mut self, revenue_minor: i64) -> ValueTier {
        if revenue_minor <= 0 {
            return ValueTier::Low;
        }
        // Both counters see every customer, whatever tier they get.
        let high = within(self.cuts.high, &mut self.high_ties, revenue_minor);
        let high_or_mid = within(
            self.cuts.high_or_mid,
            &mut self.high_or_mid_ties,
            revenue_minor,
        );
        if high {
            ValueTier::High
        } else if high_or_mid {
            ValueTier::Mid
        } else {
            ValueTier::Low
        }
    }
}

/// Whether a customer with `revenue_minor` falls within `cut`, counting
/// them in `ties` when they are tied at it.
fn within(cut: Option<TierCut>, ties: &mut u64, revenue_minor: i64) -> bool {
    let Some(cut) = cut else { return false };
    match revenue_minor.cmp(&cut.revenue_minor) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => {
            *ties += 1;
            *ties <= cut.ties
        }
    }
}

/// The lifecycle fold under one rule set.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    /// The thresholds.
    pub rules: LifecycleRules,
}

/// Tables of the lifecycle projection (created by migration 0010).
pub const TABLES: &[TableSpec] = &[
    TableSpec {
        name: "lifecycle_customers",
        columns: &[
            "stage",
            "stage_since_us",
            "revenue_minor",
            "orders",
            "last_order_us",
        ],
        kind: TableKind::Current,
    },
    TableSpec {
        name: "lifecycle_transitions",
        columns: &[
            "seq",
            "from_stage",
            "to_stage",
            "at_us",
            "cause_event",
            "cause_rule",
        ],
        kind: TableKind::History,
    },
    TableSpec {
        name: "lifecycle_snapshot",
        columns: &["as_of_us", "stage", "value_tier", "revenue_minor"],
        kind: TableKind::Population,
    },
];

/// One row of `lifecycle_transitions` as read back: the stage codes and
/// microsecond instants decoded, so readers never index columns by position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageChange {
    /// The customer.
    pub customer_id: String,
    /// The stage left (none for a customer's first stage).
    pub from: Option<Stage>,
    /// The stage entered.
    pub to: Stage,
    /// When the customer entered `to`.
    pub at: DateTime<Utc>,
}

/// Every stage change of a version, by customer and sequence.
pub async fn stage_changes(
    db: &ReadModelDb,
    model_version: i64,
) -> Result<Vec<StageChange>, StorageError> {
    const SQL: &str = "SELECT customer_id, from_stage, to_stage, at_us FROM lifecycle_transitions \
                       WHERE model_version = $1 ORDER BY customer_id, seq";
    let rows: Vec<(String, Option<i64>, i64, i64)> = both!(db, pool => {
        sqlx::query_as(SQL).bind(model_version).fetch_all(pool).await?
    });
    rows.into_iter()
        .map(|(customer_id, from, to, at_us)| {
            let stage = |code: i64| {
                Stage::from_code(code).ok_or_else(|| {
                    StorageError::Corrupt(format!(
                        "lifecycle_transitions of {customer_id}: unknown stage code {code}"
                    ))
                })
            };
            Ok(StageChange {
                from: from.map(stage).transpose()?,
                to: stage(to)?,
                at: from_us(at_us),
                customer_id: customer_id.clone(),
            })
        })
        .collect()
}

impl Lifecycle {
    /// [`CustomerFold::apply`] that also hands the stage changes to
    /// `changes` (the alerts fold watches them).
    pub fn apply_noting(
        &self,
        customer: &CustomerId,
        state: &mut LifecycleState,
        event: &FoldEvent,
        out: &mut Vec<Row>,
        changes: &mut Vec<Transition>,
    ) {
        changes.clear();
        state.apply(&self.rules, event, changes);
        Self::history_rows(customer, state, changes, out);
    }

    /// [`CustomerFold::advance_to`] that also hands the stage changes to
    /// `changes`.
    pub fn advance_noting(
        &self,
        customer: &CustomerId,
        state: &mut LifecycleState,
        at: DateTime<Utc>,
        out: &mut Vec<Row>,
        changes: &mut Vec<Transition>,
    ) {
        changes.clear();
        state.advance_to(&self.rules, to_us(at), changes);
        Self::history_rows(customer, state, changes, out);
    }

    fn history_rows(
        customer: &CustomerId,
        state: &LifecycleState,
        transitions: &[Transition],
        out: &mut Vec<Row>,
    ) {
        let first_seq = state.transitions - transitions.len() as i64;
        for (i, t) in transitions.iter().enumerate() {
            out.push(Row {
                table: "lifecycle_transitions",
                customer_id: customer.as_str().to_owned(),
                values: vec![
                    Value::Int(first_seq + i as i64 + 1),
                    t.from.map(|s| s.code()).into(),
                    Value::Int(t.to.code()),
                    Value::Int(to_us(t.at)),
                    t.cause.event().into(),
                    t.cause.rule().map(|r| r.code()).into(),
                ],
            });
        }
    }
}

impl CustomerFold for Lifecycle {
    type State = LifecycleState;

    fn name(&self) -> &'static str {
        "lifecycle"
    }

    fn tables(&self) -> &'static [TableSpec] {
        TABLES
    }

    fn apply(
        &self,
        customer: &CustomerId,
        state: &mut LifecycleState,
        event: &FoldEvent,
        out: &mut Vec<Row>,
    ) {
        self.apply_noting(customer, state, event, out, &mut Vec::new());
    }

    fn advance_to(
        &self,
        customer: &CustomerId,
        state: &mut LifecycleState,
        at: DateTime<Utc>,
        out: &mut Vec<Row>,
    ) {
        self.advance_noting(customer, state, at, out, &mut Vec::new());
    }

    fn current_rows(&self, customer: &CustomerId, state: &LifecycleState, out: &mut Vec<Row>) {
        let Some(stage) = state.stage else { return };
        out.push(Row {
            table: "lifecycle_customers",
            customer_id: customer.as_str().to_owned(),
            values: vec![
                stage.as_str().into(),
                Value::Int(state.stage_since_us),
                Value::Int(state.revenue_minor),
                Value::Int(state.orders),
                state.last_order_us.into(),
            ],
        });
    }
}

impl Lifecycle {
    /// The customer's `lifecycle_snapshot` row as of `as_of` (their stage
    /// then), given their value tier; `None` before their first event.
    pub fn snapshot_row(
        &self,
        customer: &CustomerId,
        state: &LifecycleState,
        tier: ValueTier,
        as_of: DateTime<Utc>,
    ) -> Option<Row> {
        let t = to_us(as_of);
        let mut advanced = state.clone();
        advanced.advance_to(&self.rules, t, &mut Vec::new());
        let stage = advanced.stage?;
        Some(Row {
            table: "lifecycle_snapshot",
            customer_id: customer.as_str().to_owned(),
            values: vec![
                Value::Int(t),
                stage.as_str().into(),
                tier.as_str().into(),
                Value::Int(state.revenue_minor),
            ],
        })
    }
}

/// Folds one customer's events as of `as_of`: sorts them by
/// `(occurred_at, version)`, keeps those with `occurred_at <= as_of`, folds
/// them and advances to `as_of`. Returns the state and every transition.
pub fn fold_as_of(
    rules: &LifecycleRules,
    events: &[FoldEvent],
    as_of: DateTime<Utc>,
) -> (LifecycleState, Vec<Transition>) {
    let mut ordered: Vec<&FoldEvent> = events.iter().filter(|e| e.occurred_at <= as_of).collect();
    ordered.sort_by_key(|e| (e.occurred_at, e.version));
    let mut state = LifecycleState::default();
    let mut transitions = Vec::new();
    for event in ordered {
        state.apply(rules, event, &mut transitions);
    }
    if state.stage.is_some() {
        state.advance_to(rules, to_us(as_of), &mut transitions);
    }
    (state, transitions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The ranking [`value_tiers`] documents, done the obvious way: every
    /// customer sorted, one tier per position.
    fn ranked_one_by_one(rules: &LifecycleRules, revenues: &[i64]) -> Vec<ValueTier> {
        let mut ranked: Vec<usize> = (0..revenues.len()).collect();
        ranked.sort_by(|&a, &b| revenues[b].cmp(&revenues[a]).then(a.cmp(&b)));
        let total: i128 = revenues.iter().map(|r| i128::from((*r).max(0))).sum();
        let shares = &rules.value_tiers;
        let high = total * i128::from(shares.high_revenue_share_percent);
        let mid = total
            * i128::from(shares.high_revenue_share_percent + shares.mid_revenue_share_percent);
        let mut before: i128 = 0;
        let mut tiers = vec![ValueTier::Low; revenues.len()];
        for index in ranked {
            let revenue = revenues[index];
            tiers[index] = if revenue <= 0 {
                ValueTier::Low
            } else if before * 100 < high {
                ValueTier::High
            } else if before * 100 < mid {
                ValueTier::Mid
            } else {
                ValueTier::Low
            };
            before += i128::from(revenue.max(0));
        }
        tiers
    }

    proptest! {
        /// The two cuts give every customer the tier of the one-by-one
        /// ranking, ties (few distinct revenues), zero and negative
        /// revenues included.
        #[test]
        fn cuts_assign_the_tiers_of_the_full_ranking(
            revenues in prop::collection::vec(-3i64..12, 0..200),
            scale in prop::sample::select(vec![1i64, 1_000, 1_000_003]),
            high in 1u32..=100,
            mid in 0u32..=100,
        ) {
            let mut rules = crate::projections::rules::RuleSet::shipped_defaults().lifecycle;
            rules.value_tiers.high_revenue_share_percent = high;
            rules.value_tiers.mid_revenue_share_percent = mid.min(100 - high);
            let revenues: Vec<i64> = revenues.iter().map(|r| r * scale).collect();
            prop_assert_eq!(
                value_tiers_in_order(&rules, &revenues),
                ranked_one_by_one(&rules, &revenues)
            );
        }
    }
}

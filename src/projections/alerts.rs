//! Churn early-warning alerts: a deterministic per-customer fold.
//!
//! Five rules (frequency drop, complaint burst, long outage, cart
//! abandonment, high-value customer falling into at-risk), each with its
//! thresholds and cooldown in `projections/alerts.toml`. Every alert names
//! its rule, the instant and the event ids that triggered it.
//!
//! Time-based rules fire at their exact instant without clock events. Each
//! rule is evaluated exactly at the instants where its condition can turn
//! true (documented per rule in the rules file), so an alert's instant is
//! the first instant the condition holds, outside cooldown:
//! - event-driven checks run right after the event is applied;
//! - time thresholds at instant θ run once every event with
//!   `occurred_at <= θ` has been applied: before an event at `t > θ` in
//!   [`apply`], or in [`as_of`] for θ up to and including the asked instant.
//!
//! Events are expected in the customer's stream order; a late event (earlier
//! than a threshold already evaluated) is counted in later windows but does
//! not re-open thresholds that were already evaluated.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::events::DomainEvent;
use crate::domain::CustomerId;
use crate::projections::rules_error::{RulesError, RulesFile};
use crate::projections::view::EventView;
use crate::projections::{FoldEvent, Row, TableKind, TableSpec, Value};

/// The shipped default rules file, embedded so a fresh install works.
pub const DEFAULT_RULES_TOML: &str = include_str!("../../projections/alerts.toml");

/// The file name inside a rules directory (`projections/` by default).
pub const FILE_NAME: &str = "alerts.toml";

/// Name used for the embedded default rules in error messages.
pub const DEFAULT_RULES_FILE: &str = "projections/alerts.toml";

fn enabled_by_default() -> bool {
    true
}

/// Purchase frequency drop between two consecutive windows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrequencyDropRule {
    /// Whether the rule runs.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Length of the recent and the previous window, in days.
    pub window_days: u32,
    /// The drop must be strictly more than this percentage.
    pub min_drop_percent: u32,
    /// Fewer orders than this in the previous window never alert (noise).
    pub min_previous_orders: u32,
    /// Days of silence after an alert of this rule.
    pub cooldown_days: u32,
}

/// Several complaints within a short time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComplaintsRule {
    /// Whether the rule runs.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Complaints needed in the window, the current one included.
    pub min_count: u32,
    /// Window in days.
    pub window_days: u32,
    /// Days of silence after an alert of this rule.
    pub cooldown_days: u32,
}

/// A service outage that lasts too long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutageRule {
    /// Whether the rule runs.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// The outage must last strictly longer than this.
    pub max_hours: u32,
    /// Days of silence after an alert of this rule.
    pub cooldown_days: u32,
}

/// Too many abandoned carts per session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CartAbandonmentRule {
    /// Whether the rule runs.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Window in days.
    pub window_days: u32,
    /// Alert when carts are strictly more than this percentage of sessions.
    pub max_percent: u32,
    /// Minimum sessions in the window for the rule to speak.
    pub min_sessions: u32,
    /// Days of silence after an alert of this rule.
    pub cooldown_days: u32,
}

/// A valuable customer entering a risky lifecycle stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HighValueAtRiskRule {
    /// Whether the rule runs.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// The lifecycle stage name that triggers it.
    pub stage: String,
    /// Value tiers (lifecycle projection's names) that count as high value.
    pub value_tiers: Vec<String>,
    /// Days of silence after an alert of this rule.
    pub cooldown_days: u32,
}

/// The whole alerts rules file, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRules {
    /// Format version of the file; only 1 exists.
    pub version: u32,
    /// Purchase frequency drop.
    pub frequency_drop: FrequencyDropRule,
    /// Complaint burst.
    pub complaints: ComplaintsRule,
    /// Long outage.
    pub outage: OutageRule,
    /// Cart abandonment.
    pub cart_abandonment: CartAbandonmentRule,
    /// High-value customer at risk.
    pub high_value_at_risk: HighValueAtRiskRule,
}

impl RulesFile for AlertRules {
    const FILE_NAME: &'static str = FILE_NAME;
    const SHIPPED_PATH: &'static str = DEFAULT_RULES_FILE;
    const SHIPPED_TOML: &'static str = DEFAULT_RULES_TOML;

    fn check(&self, file: &str) -> Result<(), RulesError> {
        self.validate(file)
    }
}

impl AlertRules {
    /// Checks every value's range.
    pub fn validate(&self, file: &str) -> Result<(), RulesError> {
        if self.version != 1 {
            return Err(RulesError::new(
                file,
                "version",
                format!("unsupported version {}, expected 1", self.version),
            ));
        }
        let range = |key: &str, value: u32, lo: u32, hi: u32| {
            if (lo..=hi).contains(&value) {
                Ok(())
            } else {
                Err(RulesError::new(
                    file,
                    key,
                    format!("{value} must be between {lo} and {hi}"),
                ))
            }
        };
        let f = &self.frequency_drop;
        range("frequency_drop.window_days", f.window_days, 1, 3660)?;
        range("frequency_drop.min_drop_percent", f.min_drop_percent, 0, 99)?;
        range(
            "frequency_drop.min_previous_orders",
            f.min_previous_orders,
            1,
            100_000,
        )?;
        range("frequency_drop.cooldown_days", f.cooldown_days, 0, 3660)?;
        let c = &self.complaints;
        range("complaints.min_count", c.min_count, 1, 100_000)?;
        range("complaints.window_days", c.window_days, 1, 3660)?;
        range("complaints.cooldown_days", c.cooldown_days, 0, 3660)?;
        let o = &self.outage;
        range("outage.max_hours", o.max_hours, 1, 87_600)?;
        range("outage.cooldown_days", o.cooldown_days, 0, 3660)?;
        let a = &self.cart_abandonment;
        range("cart_abandonment.window_days", a.window_days, 1, 3660)?;
        range("cart_abandonment.max_percent", a.max_percent, 0, 100)?;
        range("cart_abandonment.min_sessions", a.min_sessions, 1, 100_000)?;
        range("cart_abandonment.cooldown_days", a.cooldown_days, 0, 3660)?;
        let h = &self.high_value_at_risk;
        if h.stage.trim().is_empty() {
            return Err(RulesError::new(
                file,
                "high_value_at_risk.stage",
                "must not be empty",
            ));
        }
        if h.value_tiers.is_empty() || h.value_tiers.iter().any(|t| t.trim().is_empty()) {
            return Err(RulesError::new(
                file,
                "high_value_at_risk.value_tiers",
                "must list at least one non-empty value tier",
            ));
        }
        range("high_value_at_risk.cooldown_days", h.cooldown_days, 0, 3660)?;
        Ok(())
    }

    fn cooldown(&self, rule: AlertRule) -> Duration {
        Duration::days(match rule {
            AlertRule::FrequencyDrop => self.frequency_drop.cooldown_days,
            AlertRule::Complaints => self.complaints.cooldown_days,
            AlertRule::LongOutage => self.outage.cooldown_days,
            AlertRule::CartAbandonment => self.cart_abandonment.cooldown_days,
            AlertRule::HighValueAtRisk => self.high_value_at_risk.cooldown_days,
        } as i64)
    }
}

/// Which rule raised an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertRule {
    /// Purchase frequency dropped.
    FrequencyDrop,
    /// Complaint burst.
    Complaints,
    /// Outage longer than allowed.
    LongOutage,
    /// Cart abandonment rate too high.
    CartAbandonment,
    /// High-value customer became at risk.
    HighValueAtRisk,
}

/// One churn warning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// The rule that fired.
    pub rule: AlertRule,
    /// The instant it fired.
    #[serde(with = "crate::projections::compact::instant")]
    pub at: DateTime<Utc>,
    /// The events that made the condition true (orders, complaints, carts,
    /// the outage start/end, or the stage change's cause).
    pub event_ids: Vec<Uuid>,
    /// The measured numbers, for people.
    pub detail: String,
}

/// An outage that has started and not ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenOutage {
    /// Outage id.
    pub outage_id: String,
    /// Start instant.
    #[serde(with = "crate::projections::compact::instant")]
    pub started_at: DateTime<Utc>,
    /// The start event.
    pub start_event: Uuid,
    /// Whether the long-outage check already ran for this outage.
    pub checked: bool,
}

/// The per-customer alert state, persisted by the runner between batches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertState {
    /// Recent orders (instant, event id), in time order.
    #[serde(with = "crate::projections::compact::instant_pairs")]
    pub orders: Vec<(DateTime<Utc>, Uuid)>,
    /// Recent complaints, in time order.
    #[serde(with = "crate::projections::compact::instant_pairs")]
    pub complaints: Vec<(DateTime<Utc>, Uuid)>,
    /// Recent sessions, in time order.
    #[serde(with = "crate::projections::compact::instant_pairs")]
    pub sessions: Vec<(DateTime<Utc>, Uuid)>,
    /// Recent abandoned carts, in time order.
    #[serde(with = "crate::projections::compact::instant_pairs")]
    pub carts: Vec<(DateTime<Utc>, Uuid)>,
    /// Outages still open.
    pub open_outages: Vec<OpenOutage>,
    /// Last firing instant per rule (for cooldowns).
    #[serde(with = "crate::projections::compact::pairs_instant")]
    pub last_fired: Vec<(AlertRule, DateTime<Utc>)>,
    /// Alerts fired, in firing order.
    pub alerts: Vec<Alert>,
    /// Time thresholds at instants before this one have been evaluated.
    #[serde(with = "crate::projections::compact::instant_opt")]
    pub thresholds_before: Option<DateTime<Utc>>,
}

/// The alerts as of an instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertSnapshot {
    /// The instant.
    pub as_of: DateTime<Utc>,
    /// Alerts fired at or before it.
    pub alerts: Vec<Alert>,
    /// Outages open at it.
    pub open_outages: Vec<OpenOutage>,
}

fn micro() -> Duration {
    Duration::microseconds(1)
}

/// `at + d`, saturating at the end of time instead of panicking.
fn plus(at: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    at.checked_add_signed(d).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `at - d`, saturating at the start of time instead of panicking.
fn minus(at: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    at.checked_sub_signed(d).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn days(n: u32) -> Duration {
    Duration::days(n as i64)
}

/// Events `e` with `from <= e <= to`.
fn within(
    list: &[(DateTime<Utc>, Uuid)],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> &[(DateTime<Utc>, Uuid)] {
    let start = list.partition_point(|(t, _)| *t < from);
    let end = list.partition_point(|(t, _)| *t <= to);
    &list[start..end.max(start)]
}

fn insert_sorted(list: &mut Vec<(DateTime<Utc>, Uuid)>, at: DateTime<Utc>, id: Uuid) {
    let index = list.partition_point(|(t, _)| *t <= at);
    list.insert(index, (at, id));
}

fn ids(list: &[(DateTime<Utc>, Uuid)]) -> Vec<Uuid> {
    list.iter().map(|(_, id)| *id).collect()
}

/// Folds one event into the customer's alert state.
pub fn apply(state: &mut AlertState, rules: &AlertRules, view: &EventView<'_>) {
    let at = view.occurred_at;
    state.run_thresholds(rules, at);
    match view.event {
        DomainEvent::OrderPlaced(_) => insert_sorted(&mut state.orders, at, view.event_id),
        DomainEvent::ComplaintFiled(_) => {
            insert_sorted(&mut state.complaints, at, view.event_id);
            state.check_complaints(rules, at);
        }
        DomainEvent::SessionRecorded(_) => insert_sorted(&mut state.sessions, at, view.event_id),
        DomainEvent::CartAbandoned(_) => {
            insert_sorted(&mut state.carts, at, view.event_id);
            state.check_carts(rules, at);
        }
        DomainEvent::ServiceOutageStarted(started) => {
            state
                .open_outages
                .retain(|o| o.outage_id != started.outage_id);
            state.open_outages.push(OpenOutage {
                outage_id: started.outage_id.clone(),
                started_at: at,
                start_event: view.event_id,
                checked: false,
            });
        }
        DomainEvent::ServiceOutageEnded(ended) => {
            if let Some(index) = state
                .open_outages
                .iter()
                .position(|o| o.outage_id == ended.outage_id)
            {
                let outage = state.open_outages.remove(index);
                if !outage.checked
                    && at - outage.started_at > Duration::hours(rules.outage.max_hours as i64)
                {
                    let detail = format!(
                        "outage {} lasted {} hours (limit {})",
                        outage.outage_id,
                        (at - outage.started_at).num_hours(),
                        rules.outage.max_hours
                    );
                    state.fire(
                        rules,
                        rules.outage.enabled,
                        AlertRule::LongOutage,
                        at,
                        vec![outage.start_event, view.event_id],
                        detail,
                    );
                }
            }
        }
        _ => {}
    }
    state.prune(rules);
}

/// Input hook from the lifecycle projection: the runner calls it for every
/// stage transition, in time order together with the events.
///
/// `from` is `None` for a customer's first stage; `value_tier` is the
/// lifecycle projection's value tier at `at`; `cause` is the event that
/// caused the transition, or `None` when a time rule did.
pub fn on_stage_change(
    state: &mut AlertState,
    rules: &AlertRules,
    at: DateTime<Utc>,
    from: Option<&str>,
    to: &str,
    value_tier: &str,
    cause: Option<Uuid>,
) {
    state.run_thresholds(rules, at);
    let rule = &rules.high_value_at_risk;
    if to == rule.stage && from != Some(to) && rule.value_tiers.iter().any(|t| t == value_tier) {
        let detail = format!(
            "moved from {} to {to} with value tier {value_tier}",
            from.unwrap_or("(none)")
        );
        state.fire(
            rules,
            rule.enabled,
            AlertRule::HighValueAtRisk,
            at,
            cause.into_iter().collect(),
            detail,
        );
    }
}

/// The alerts as of `instant`: the state must hold exactly the customer's
/// events with `occurred_at <= instant`; time thresholds up to and
/// including `instant` are evaluated.
pub fn as_of(state: &AlertState, rules: &AlertRules, instant: DateTime<Utc>) -> AlertSnapshot {
    let mut state = state.clone();
    state.run_thresholds(rules, plus(instant, micro()));
    AlertSnapshot {
        as_of: instant,
        alerts: state
            .alerts
            .into_iter()
            .filter(|a| a.at <= instant)
            .collect(),
        open_outages: state.open_outages,
    }
}

impl AlertState {
    /// The next instant a time threshold must be evaluated (a window closing
    /// after an order or session, an outage reaching its limit): the
    /// earliest check not evaluated yet.
    pub fn next_check(&self, rules: &AlertRules) -> Option<DateTime<Utc>> {
        let from = self.thresholds_before;
        let pending = |t: &DateTime<Utc>| from.is_none_or(|f| *t >= f);
        let mut next: Option<DateTime<Utc>> = None;
        let mut consider = |t: DateTime<Utc>| {
            if pending(&t) && t < DateTime::<Utc>::MAX_UTC {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        if rules.frequency_drop.enabled {
            let exit = days(rules.frequency_drop.window_days) + micro();
            self.orders
                .iter()
                .for_each(|(t, _)| consider(plus(*t, exit)));
        }
        if rules.cart_abandonment.enabled {
            let exit = days(rules.cart_abandonment.window_days) + micro();
            self.sessions
                .iter()
                .for_each(|(t, _)| consider(plus(*t, exit)));
        }
        let limit = Duration::hours(rules.outage.max_hours as i64) + micro();
        self.open_outages
            .iter()
            .filter(|o| !o.checked)
            .for_each(|o| consider(plus(o.started_at, limit)));
        next
    }

    /// Evaluates every time threshold at an instant before `until`, in time
    /// order, once.
    fn run_thresholds(&mut self, rules: &AlertRules, until: DateTime<Utc>) {
        let from = self.thresholds_before;
        if from.is_some_and(|f| f >= until) {
            return;
        }
        let pending = |t: &DateTime<Utc>| from.is_none_or(|f| *t >= f) && *t < until;
        #[derive(PartialEq, Eq, PartialOrd, Ord)]
        enum Check {
            Outage(String),
            Frequency,
            Carts,
        }
        let mut checks: Vec<(DateTime<Utc>, Check)> = Vec::new();
        if rules.frequency_drop.enabled {
            let exit = days(rules.frequency_drop.window_days) + micro();
            checks.extend(
                self.orders
                    .iter()
                    .map(|(t, _)| plus(*t, exit))
                    .filter(pending)
                    .map(|t| (t, Check::Frequency)),
            );
        }
        if rules.cart_abandonment.enabled {
            let exit = days(rules.cart_abandonment.window_days) + micro();
            checks.extend(
                self.sessions
                    .iter()
                    .map(|(t, _)| plus(*t, exit))
                    .filter(pending)
                    .map(|t| (t, Check::Carts)),
            );
        }
        let limit = Duration::hours(rules.outage.max_hours as i64) + micro();
        checks.extend(
            self.open_outages
                .iter()
                .filter(|o| !o.checked)
                .map(|o| {
                    (
                        plus(o.started_at, limit),
                        Check::Outage(o.outage_id.clone()),
                    )
                })
                .filter(|(t, _)| pending(t)),
        );
        checks.sort();
        checks.dedup();
        for (at, check) in checks {
            match check {
                Check::Frequency => self.check_frequency(rules, at),
                Check::Carts => self.check_carts(rules, at),
                Check::Outage(id) => self.check_outage(rules, at, &id),
            }
        }
        self.thresholds_before = Some(until);
    }

    fn check_frequency(&mut self, rules: &AlertRules, at: DateTime<Utc>) {
        let rule = &rules.frequency_drop;
        let window = days(rule.window_days);
        let recent = within(&self.orders, minus(at, window), at);
        let previous = within(
            &self.orders,
            minus(at, window * 2),
            minus(at, window + micro()),
        );
        let (r, p) = (recent.len() as u64, previous.len() as u64);
        if p >= rule.min_previous_orders as u64
            && r * 100 < p * (100 - rule.min_drop_percent as u64)
        {
            let mut event_ids = ids(previous);
            event_ids.extend(ids(recent));
            let detail = format!(
                "{r} orders in the last {} days against {p} in the {} days before",
                rule.window_days, rule.window_days
            );
            self.fire(
                rules,
                rule.enabled,
                AlertRule::FrequencyDrop,
                at,
                event_ids,
                detail,
            );
        }
    }

    fn check_complaints(&mut self, rules: &AlertRules, at: DateTime<Utc>) {
        let rule = &rules.complaints;
        let recent = within(&self.complaints, minus(at, days(rule.window_days)), at);
        if recent.len() as u64 >= rule.min_count as u64 {
            let detail = format!(
                "{} complaints within {} days",
                recent.len(),
                rule.window_days
            );
            let event_ids = ids(recent);
            self.fire(
                rules,
                rule.enabled,
                AlertRule::Complaints,
                at,
                event_ids,
                detail,
            );
        }
    }

    fn check_carts(&mut self, rules: &AlertRules, at: DateTime<Utc>) {
        let rule = &rules.cart_abandonment;
        let from = minus(at, days(rule.window_days));
        let sessions = within(&self.sessions, from, at).len() as u64;
        let carts = within(&self.carts, from, at);
        if sessions >= rule.min_sessions as u64
            && carts.len() as u64 * 100 > rule.max_percent as u64 * sessions
        {
            let detail = format!(
                "{} abandoned carts for {sessions} sessions in {} days (limit {} %)",
                carts.len(),
                rule.window_days,
                rule.max_percent
            );
            let event_ids = ids(carts);
            self.fire(
                rules,
                rule.enabled,
                AlertRule::CartAbandonment,
                at,
                event_ids,
                detail,
            );
        }
    }

    fn check_outage(&mut self, rules: &AlertRules, at: DateTime<Utc>, outage_id: &str) {
        let Some(outage) = self
            .open_outages
            .iter_mut()
            .find(|o| o.outage_id == outage_id)
        else {
            return;
        };
        outage.checked = true;
        let detail = format!(
            "outage {outage_id} still open after {} hours",
            rules.outage.max_hours
        );
        let event_ids = vec![outage.start_event];
        self.fire(
            rules,
            rules.outage.enabled,
            AlertRule::LongOutage,
            at,
            event_ids,
            detail,
        );
    }

    /// Records an alert unless the rule is disabled or cooling down.
    fn fire(
        &mut self,
        rules: &AlertRules,
        enabled: bool,
        rule: AlertRule,
        at: DateTime<Utc>,
        event_ids: Vec<Uuid>,
        detail: String,
    ) {
        if !enabled {
            return;
        }
        let last = self.last_fired.iter_mut().find(|(r, _)| *r == rule);
        match last {
            Some((_, last)) if at < plus(*last, rules.cooldown(rule)) => return,
            Some((_, last)) => *last = at,
            None => self.last_fired.push((rule, at)),
        }
        self.alerts.push(Alert {
            rule,
            at,
            event_ids,
            detail,
        });
    }

    /// Drops facts too old to matter for any window still to be evaluated.
    fn prune(&mut self, rules: &AlertRules) {
        let Some(now) = self.thresholds_before else {
            return;
        };
        let keep = |list: &mut Vec<(DateTime<Utc>, Uuid)>, horizon: Duration| {
            let cut = list.partition_point(|(t, _)| *t < minus(now, horizon));
            list.drain(..cut);
        };
        keep(&mut self.orders, days(rules.frequency_drop.window_days) * 2);
        keep(&mut self.complaints, days(rules.complaints.window_days));
        keep(&mut self.sessions, days(rules.cart_abandonment.window_days));
        keep(&mut self.carts, days(rules.cart_abandonment.window_days));
    }
}

/// The churn-alert read model: the runner's face of [`apply`], plus the
/// high-value-at-risk rule, which needs every customer's value tier.
///
/// The per-customer rules (frequency drop, complaints, outage, cart
/// abandonment) fire inside the fold and are kept as history rows. The
/// value tier is a population figure (share of total revenue), which no
/// per-customer fold can know at the instant a customer falls into
/// `at_risk`; that rule is therefore evaluated over the population
/// snapshot: a customer in the rule's stage at the snapshot instant whose
/// value tier *at that instant* is one of the rule's tiers is listed, with
/// the instant and cause of their fall. Its cooldown does not apply (one
/// row per customer per snapshot).
#[derive(Debug, Clone)]
pub struct Alerts {
    /// Alert thresholds.
    pub rules: AlertRules,
    /// Lifecycle rules: stages and value tiers for the high-value rule.
    pub lifecycle: crate::projections::rules::LifecycleRules,
}

/// Per-customer state of [`Alerts`]: the alert fold, and what the
/// high-value rule needs from the customer's lifecycle (which the runner
/// folds first and passes in: see [`Alerts::apply_after_lifecycle`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertsFoldState {
    /// Alert windows, cooldowns and fired alerts.
    pub alerts: AlertState,
    /// The latest fall into the high-value rule's stage: instant and cause.
    #[serde(with = "crate::projections::compact::instant_pair_opt")]
    pub entered: Option<(DateTime<Utc>, crate::projections::lifecycle::Cause)>,
    /// Alerts already written as `churn_alerts` rows: fired alerts leave the
    /// state once written, and this numbers the next one.
    pub written: u32,
}

/// Tables of the alerts projection (migration 0011).
pub const TABLES: &[TableSpec] = &[
    TableSpec {
        name: "churn_alerts",
        columns: &["seq", "rule", "at_us", "event_ids", "detail"],
        kind: TableKind::History,
    },
    TableSpec {
        name: "churn_value_alerts",
        columns: &["as_of_us", "rule", "at_us", "value_tier", "cause"],
        kind: TableKind::Population,
    },
];

impl AlertRule {
    /// The stored (rules-file) name.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertRule::FrequencyDrop => "frequency_drop",
            AlertRule::Complaints => "complaints",
            AlertRule::LongOutage => "long_outage",
            AlertRule::CartAbandonment => "cart_abandonment",
            AlertRule::HighValueAtRisk => "high_value_at_risk",
        }
    }
}

impl Alerts {
    fn note_entries(
        &self,
        state: &mut AlertsFoldState,
        transitions: &[crate::projections::lifecycle::Transition],
    ) {
        for t in transitions {
            if t.to.as_str() == self.rules.high_value_at_risk.stage {
                state.entered = Some((t.at, t.cause));
            }
        }
    }

    /// Writes the alerts fired since the last call as history rows and
    /// drops them from the state (the rows keep them; the state only needs
    /// cooldowns and windows).
    fn history_rows(customer: &CustomerId, state: &mut AlertsFoldState, out: &mut Vec<Row>) {
        let first = state.written as usize;
        for (i, alert) in state.alerts.alerts.drain(..).enumerate() {
            let i = first + i;
            // The ids end to end, 16 bytes each.
            let ids: Vec<u8> = alert
                .event_ids
                .iter()
                .flat_map(|id| *id.as_bytes())
                .collect();
            out.push(Row {
                table: "churn_alerts",
                customer_id: customer.as_str().to_owned(),
                values: vec![
                    Value::Int(i as i64 + 1),
                    alert.rule.as_str().into(),
                    Value::Int(alert.at.timestamp_micros()),
                    Value::Bytes(ids),
                    alert.detail.into(),
                ],
            });
            state.written += 1;
        }
    }
}

impl Alerts {
    /// The fold's name (its state is part of every customer's state).
    pub fn name(&self) -> &'static str {
        "alerts"
    }

    /// The tables the fold writes.
    pub fn tables(&self) -> &'static [TableSpec] {
        TABLES
    }

    /// Folds one event, after the lifecycle fold has folded it into
    /// `stage_changes` (the high-value rule watches falls into a stage).
    pub fn apply_after_lifecycle(
        &self,
        customer: &CustomerId,
        state: &mut AlertsFoldState,
        event: &FoldEvent,
        stage_changes: &[crate::projections::lifecycle::Transition],
        out: &mut Vec<Row>,
    ) {
        self.note_entries(state, stage_changes);
        apply(&mut state.alerts, &self.rules, &event.view());
        Self::history_rows(customer, state, out);
    }

    /// Advances to `at`, after the lifecycle fold has advanced with
    /// `stage_changes`.
    pub fn advance_after_lifecycle(
        &self,
        customer: &CustomerId,
        state: &mut AlertsFoldState,
        at: DateTime<Utc>,
        stage_changes: &[crate::projections::lifecycle::Transition],
        out: &mut Vec<Row>,
    ) {
        self.note_entries(state, stage_changes);
        state.alerts.run_thresholds(&self.rules, plus(at, micro()));
        Self::history_rows(customer, state, out);
    }
}

impl Alerts {
    /// The customer's `churn_value_alerts` row as of `as_of`, given their
    /// value tier then: listed when they are in the rule's stage at that
    /// instant and the tier is one of the rule's. The cooldown does not
    /// apply (one row per customer per snapshot).
    pub fn value_alert_row(
        &self,
        customer: &CustomerId,
        state: &AlertsFoldState,
        lifecycle: &crate::projections::lifecycle::LifecycleState,
        tier: &str,
        as_of: DateTime<Utc>,
    ) -> Option<Row> {
        let rule = &self.rules.high_value_at_risk;
        if !rule.enabled || !rule.value_tiers.iter().any(|v| v == tier) {
            return None;
        }
        let t = as_of.timestamp_micros();
        let mut stage = lifecycle.clone();
        let mut transitions = Vec::new();
        if stage.stage.is_some() {
            stage.advance_to(&self.lifecycle, t, &mut transitions);
        }
        let mut entered = state.entered;
        for change in transitions.iter().filter(|c| c.to.as_str() == rule.stage) {
            entered = Some((change.at, change.cause));
        }
        let in_stage = stage.stage.is_some_and(|s| s.as_str() == rule.stage);
        let (at, cause) = entered.filter(|_| in_stage)?;
        Some(Row {
            table: "churn_value_alerts",
            customer_id: customer.as_str().to_owned(),
            values: vec![
                Value::Int(t),
                AlertRule::HighValueAtRisk.as_str().into(),
                Value::Int(at.timestamp_micros()),
                tier.into(),
                cause.to_string().into(),
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::domain::events::{
        CartAbandoned, ComplaintFiled, OrderPlaced, ServiceOutageEnded, ServiceOutageStarted,
        SessionRecorded,
    };
    use crate::domain::{Currency, Money};
    use proptest::prelude::*;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn day(n: i64) -> DateTime<Utc> {
        t0() + Duration::days(n)
    }

    fn order() -> DomainEvent {
        DomainEvent::OrderPlaced(OrderPlaced {
            order_id: "o".into(),
            amount: Money::new(1000, Currency::USD),
            item_count: 1,
        })
    }

    fn complaint() -> DomainEvent {
        DomainEvent::ComplaintFiled(ComplaintFiled {
            complaint_id: "c".into(),
            category: "delivery".into(),
            description: None,
        })
    }

    fn session() -> DomainEvent {
        DomainEvent::SessionRecorded(SessionRecorded {
            session_id: "s".into(),
            channel: "web".into(),
            duration_secs: None,
        })
    }

    fn cart() -> DomainEvent {
        DomainEvent::CartAbandoned(CartAbandoned {
            cart_id: "k".into(),
            value: Money::new(500, Currency::USD),
            item_count: 1,
        })
    }

    fn outage_start(id: &str) -> DomainEvent {
        DomainEvent::ServiceOutageStarted(ServiceOutageStarted {
            outage_id: id.into(),
            service: "streaming".into(),
        })
    }

    fn outage_end(id: &str) -> DomainEvent {
        DomainEvent::ServiceOutageEnded(ServiceOutageEnded {
            outage_id: id.into(),
        })
    }

    struct Stream {
        events: Vec<(Uuid, DateTime<Utc>, DomainEvent)>,
    }

    impl Stream {
        fn new() -> Self {
            Self { events: Vec::new() }
        }
        fn push(&mut self, at: DateTime<Utc>, event: DomainEvent) -> Uuid {
            let id = Uuid::new_v5(&Uuid::NAMESPACE_OID, &self.events.len().to_be_bytes());
            self.events.push((id, at, event));
            id
        }
        fn fold_until(&self, rules: &AlertRules, until: DateTime<Utc>) -> AlertState {
            let mut state = AlertState::default();
            for (id, at, event) in self.events.iter().filter(|(_, at, _)| *at <= until) {
                apply(
                    &mut state,
                    rules,
                    &EventView {
                        event_id: *id,
                        occurred_at: *at,
                        event,
                    },
                );
            }
            state
        }
        fn alerts_as_of(&self, rules: &AlertRules, at: DateTime<Utc>) -> Vec<Alert> {
            as_of(&self.fold_until(rules, at), rules, at).alerts
        }
    }

    fn micro() -> Duration {
        Duration::microseconds(1)
    }

    #[test]
    fn shipped_rules_load_with_documented_defaults() {
        let r = AlertRules::shipped();
        assert_eq!(
            (
                r.frequency_drop.window_days,
                r.frequency_drop.min_drop_percent
            ),
            (90, 20)
        );
        assert_eq!((r.complaints.min_count, r.complaints.window_days), (3, 30));
        assert_eq!(r.outage.max_hours, 72);
        assert_eq!(
            (
                r.cart_abandonment.window_days,
                r.cart_abandonment.max_percent
            ),
            (30, 15)
        );
        assert_eq!(r.high_value_at_risk.stage, "at_risk");
        assert_eq!(r.high_value_at_risk.value_tiers, vec!["high".to_owned()]);
    }

    #[test]
    fn frequency_drop_fires_at_the_first_instant_the_drop_exceeds_twenty_percent() {
        let rules = AlertRules::shipped();
        let mut s = Stream::new();
        let early: Vec<Uuid> = (0..5).map(|d| s.push(day(d), order())).collect();
        let late: Vec<Uuid> = (92..95).map(|d| s.push(day(d), order())).collect();
        // At day 93 + 1µs the day-3 order leaves the recent window:
        // recent = {d4, d92, d93} = 3, previous = {d0..d3} = 4: 25 % down.
        let fire_at = day(93) + micro();
        assert!(s.alerts_as_of(&rules, fire_at - micro()).is_empty());
        let alerts = s.alerts_as_of(&rules, fire_at);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(
            (alerts[0].rule, alerts[0].at),
            (AlertRule::FrequencyDrop, fire_at)
        );
        let mut expected = early[..4].to_vec();
        expected.extend([early[4], late[0], late[1]]);
        assert_eq!(alerts[0].event_ids, expected);
        // The same alert is found by the incremental fold of everything.
        let all = as_of(&s.fold_until(&rules, day(400)), &rules, day(400)).alerts;
        assert_eq!(all[0], alerts[0]);
    }

    #[test]
    fn frequency_drop_of_exactly_twenty_percent_does_not_fire() {
        let rules = AlertRules::shipped();
        let mut s = Stream::new();
        for d in [0, 1, 2, 3, 4, 91, 92, 93, 94] {
            s.push(day(d), order());
        }
        // At day 94 + 1µs: 4 recent against 5 previous.
        assert!(s.alerts_as_of(&rules, day(94) + micro()).is_empty());
        let mut looser = rules.clone();
        looser.frequency_drop.min_drop_percent = 19;
        let alerts = s.alerts_as_of(&looser, day(94) + micro());
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].at, day(94) + micro());
    }

    #[test]
    fn frequency_drop_needs_the_minimum_previous_orders() {
        let rules = AlertRules::shipped();
        let mut s = Stream::new();
        s.push(day(0), order());
        assert!(s.alerts_as_of(&rules, day(400)).is_empty());
        s.push(day(1), order());
        let alerts = s.alerts_as_of(&rules, day(400));
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].at, day(91) + micro());
    }

    #[test]
    fn third_complaint_on_day_thirty_fires_but_not_a_microsecond_later() {
        let rules = AlertRules::shipped();
        for (third, fires) in [
            (day(30), true),
            (day(30) + micro(), false),
            (day(31), false),
        ] {
            let mut s = Stream::new();
            let a = s.push(day(0), complaint());
            let b = s.push(day(10), complaint());
            let c = s.push(third, complaint());
            let alerts = s.alerts_as_of(&rules, day(60));
            if fires {
                assert_eq!(alerts.len(), 1);
                assert_eq!(alerts[0].rule, AlertRule::Complaints);
                assert_eq!(alerts[0].at, third);
                assert_eq!(alerts[0].event_ids, vec![a, b, c]);
            } else {
                assert!(alerts.is_empty(), "third at {third}: {alerts:?}");
            }
        }
    }

    #[test]
    fn cooldown_silences_repeats_until_exactly_its_end() {
        let rules = AlertRules::shipped();
        let mut s = Stream::new();
        for d in 0..=40 {
            s.push(day(d), complaint());
        }
        let at: Vec<DateTime<Utc>> = s
            .alerts_as_of(&rules, day(40))
            .iter()
            .map(|a| a.at)
            .collect();
        assert_eq!(at, vec![day(2), day(32)]);
    }

    #[test]
    fn open_outage_fires_the_microsecond_it_passes_seventy_two_hours() {
        let rules = AlertRules::shipped();
        let start = day(5);
        let mut s = Stream::new();
        let id = s.push(start, outage_start("x"));
        let limit = start + Duration::hours(72);
        assert!(s.alerts_as_of(&rules, limit).is_empty());
        let alerts = s.alerts_as_of(&rules, limit + micro());
        assert_eq!(alerts.len(), 1);
        assert_eq!(
            (alerts[0].rule, alerts[0].at, alerts[0].event_ids.clone()),
            (AlertRule::LongOutage, limit + micro(), vec![id])
        );
        // Ending later does not raise a second alert.
        s.push(start + Duration::hours(100), outage_end("x"));
        s.push(day(40), session());
        assert_eq!(s.alerts_as_of(&rules, day(40)), alerts);
    }

    #[test]
    fn outage_of_exactly_seventy_two_hours_is_fine_and_one_microsecond_more_is_not() {
        let rules = AlertRules::shipped();
        let start = day(5);
        let mut s = Stream::new();
        s.push(start, outage_start("x"));
        s.push(start + Duration::hours(72), outage_end("x"));
        assert!(s.alerts_as_of(&rules, day(30)).is_empty());
        let mut s = Stream::new();
        let a = s.push(start, outage_start("x"));
        let end = start + Duration::hours(72) + micro();
        let b = s.push(end, outage_end("x"));
        let alerts = s.alerts_as_of(&rules, day(30));
        assert_eq!(alerts.len(), 1);
        assert_eq!(
            (alerts[0].at, alerts[0].event_ids.clone()),
            (end, vec![a, b])
        );
    }

    #[test]
    fn outage_alerts_cool_down_for_seven_days() {
        let rules = AlertRules::shipped();
        let over = Duration::hours(72) + micro();
        // First alert at day 0 + 72h + 1µs; the next may come 7 days later,
        // i.e. from a second outage starting at day 7 or later.
        for (second_start, fires) in [(day(7) - micro(), false), (day(7), true)] {
            let mut s = Stream::new();
            s.push(day(0), outage_start("a"));
            s.push(second_start, outage_start("b"));
            let at: Vec<_> = s
                .alerts_as_of(&rules, day(30))
                .iter()
                .map(|a| a.at)
                .collect();
            if fires {
                assert_eq!(at, vec![day(0) + over, second_start + over]);
            } else {
                assert_eq!(at, vec![day(0) + over]);
            }
        }
    }

    #[test]
    fn cart_abandonment_above_fifteen_percent_of_sessions_fires() {
        let rules = AlertRules::shipped();
        let mut s = Stream::new();
        for h in 0..20 {
            s.push(day(0) + Duration::hours(h), session());
        }
        for d in 1..=3 {
            s.push(day(d), cart());
        }
        // 3 / 20 = 15 %: not above.
        assert!(s.alerts_as_of(&rules, day(4)).is_empty());
        let fourth = s.push(day(5), cart());
        let alerts = s.alerts_as_of(&rules, day(5));
        assert_eq!(alerts.len(), 1);
        assert_eq!(
            (alerts[0].rule, alerts[0].at),
            (AlertRule::CartAbandonment, day(5))
        );
        assert_eq!(alerts[0].event_ids.len(), 4);
        assert_eq!(alerts[0].event_ids[3], fourth);
    }

    #[test]
    fn cart_rate_rises_when_a_session_leaves_the_window() {
        let rules = AlertRules::shipped();
        let mut s = Stream::new();
        for h in 0..20 {
            s.push(day(0) + Duration::hours(h), session());
        }
        for d in 1..=3 {
            s.push(day(d), cart());
        }
        // The first session leaves at day 30 + 1µs: 3 carts / 19 sessions.
        let exit = day(30) + micro();
        assert!(s.alerts_as_of(&rules, exit - micro()).is_empty());
        let alerts = s.alerts_as_of(&rules, exit);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].at, exit);
    }

    #[test]
    fn cart_rule_is_silent_below_the_minimum_sessions() {
        let rules = AlertRules::shipped();
        let mut s = Stream::new();
        for h in 0..4 {
            s.push(day(0) + Duration::hours(h), session());
            s.push(day(1) + Duration::hours(h), cart());
        }
        assert!(s.alerts_as_of(&rules, day(2)).is_empty());
        s.push(day(2), session());
        s.push(day(3), cart());
        assert_eq!(s.alerts_as_of(&rules, day(3)).len(), 1);
    }

    #[test]
    fn high_value_customer_falling_into_at_risk_fires_with_cooldown() {
        let rules = AlertRules::shipped();
        let mut state = AlertState::default();
        let cause = Uuid::new_v4();
        on_stage_change(
            &mut state,
            &rules,
            day(1),
            Some("active"),
            "at_risk",
            "mid",
            None,
        );
        on_stage_change(
            &mut state,
            &rules,
            day(2),
            Some("at_risk"),
            "dormant",
            "high",
            None,
        );
        assert!(state.alerts.is_empty());
        on_stage_change(
            &mut state,
            &rules,
            day(3),
            Some("active"),
            "at_risk",
            "high",
            Some(cause),
        );
        assert_eq!(state.alerts.len(), 1);
        assert_eq!(
            (
                state.alerts[0].rule,
                state.alerts[0].at,
                state.alerts[0].event_ids.clone()
            ),
            (AlertRule::HighValueAtRisk, day(3), vec![cause])
        );
        on_stage_change(
            &mut state,
            &rules,
            day(92) - micro(),
            Some("active"),
            "at_risk",
            "high",
            None,
        );
        assert_eq!(state.alerts.len(), 1, "still cooling down");
        on_stage_change(
            &mut state,
            &rules,
            day(93),
            Some("active"),
            "at_risk",
            "high",
            None,
        );
        assert_eq!(state.alerts.len(), 2);
    }

    #[test]
    fn instants_at_the_edge_of_time_do_not_panic() {
        let rules = AlertRules::shipped();
        let mut s = Stream::new();
        let end = DateTime::<Utc>::MAX_UTC;
        s.push(end, outage_start("x"));
        s.push(end, order());
        assert!(s.alerts_as_of(&rules, end).is_empty());
        let mut s = Stream::new();
        s.push(DateTime::<Utc>::MIN_UTC, complaint());
        assert!(s.alerts_as_of(&rules, DateTime::<Utc>::MIN_UTC).is_empty());
    }

    #[test]
    fn the_shipped_file_on_disk_loads_from_its_directory() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("projections");
        assert_eq!(AlertRules::load_dir(&dir).unwrap(), AlertRules::shipped());
        let e = AlertRules::load_dir(Path::new("/nonexistent")).unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.key.as_str()),
            ("/nonexistent/alerts.toml", "(file)")
        );
    }

    #[test]
    fn disabled_rules_never_fire() {
        let mut rules = AlertRules::shipped();
        rules.complaints.enabled = false;
        let mut s = Stream::new();
        for d in 0..5 {
            s.push(day(d), complaint());
        }
        assert!(s.alerts_as_of(&rules, day(5)).is_empty());
        assert_eq!(s.alerts_as_of(&AlertRules::shipped(), day(5)).len(), 1);
    }

    #[test]
    fn rules_errors_name_file_key_and_problem() {
        let err = |text: String| AlertRules::from_toml_str("x/alerts.toml", &text).unwrap_err();
        let base = DEFAULT_RULES_TOML;
        let e = err(base.replace("min_drop_percent = 20", "min_drop_percent = 100"));
        assert_eq!(
            (e.file.as_str(), e.key.as_str()),
            ("x/alerts.toml", "frequency_drop.min_drop_percent")
        );
        assert!(e.problem.contains("between 0 and 99"), "{e}");
        let e = err(base.replace("value_tiers = [\"high\"]", "value_tiers = []"));
        assert_eq!(e.key, "high_value_at_risk.value_tiers");
        let e = err(base.replace("max_hours = 72", "max_hours = 0"));
        assert_eq!(e.key, "outage.max_hours");
        let e = err(base.replace("min_sessions = 5", "min_sesions = 5"));
        assert_eq!(e.key, "min_sesions");
        assert!(e.problem.contains("unknown field"), "{e}");
        let e = err(base.replace("min_count = 3", "min_count = -3"));
        assert_eq!(e.key, "min_count");
        let e = err(base.replace("version = 1", "version = 7"));
        assert_eq!(e.key, "version");
    }

    #[derive(Debug, Clone)]
    enum Kind {
        Order,
        Complaint,
        Session,
        Cart,
        OutageStart(u8),
        OutageEnd(u8),
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            3 => Just(Kind::Order),
            2 => Just(Kind::Complaint),
            3 => Just(Kind::Session),
            2 => Just(Kind::Cart),
            1 => (0u8..3).prop_map(Kind::OutageStart),
            1 => (0u8..3).prop_map(Kind::OutageEnd),
        ]
    }

    fn stream_of(ops: &[(Kind, i64)]) -> Stream {
        let mut s = Stream::new();
        let mut at = t0();
        for (k, gap_hours) in ops {
            at += Duration::hours(*gap_hours);
            let event = match k {
                Kind::Order => order(),
                Kind::Complaint => complaint(),
                Kind::Session => session(),
                Kind::Cart => cart(),
                Kind::OutageStart(i) => outage_start(&format!("o{i}")),
                Kind::OutageEnd(i) => outage_end(&format!("o{i}")),
            };
            s.push(at, event);
        }
        s
    }

    proptest! {
        #[test]
        fn alerts_as_of_equal_a_rebuild_from_only_the_events_up_to_that_instant(
            ops in prop::collection::vec((kind(), 0i64..400), 1..80),
            probe_hours in 0i64..20_000,
        ) {
            let rules = AlertRules::shipped();
            let s = stream_of(&ops);
            let probe = t0() + Duration::hours(probe_hours);
            let end = s.events.last().unwrap().1.max(probe);
            let full = s.fold_until(&rules, end);
            let from_full: Vec<Alert> = as_of(&full, &rules, end)
                .alerts
                .into_iter()
                .filter(|a| a.at <= probe)
                .collect();
            prop_assert_eq!(from_full, s.alerts_as_of(&rules, probe));
        }

        #[test]
        fn persisted_alert_state_continues_like_an_uninterrupted_fold(
            ops in prop::collection::vec((kind(), 0i64..400), 2..60),
            split in 0usize..60,
        ) {
            let rules = AlertRules::shipped();
            let s = stream_of(&ops);
            let whole = s.fold_until(&rules, DateTime::<Utc>::MAX_UTC);
            let mut state = AlertState::default();
            for (i, (id, at, event)) in s.events.iter().enumerate() {
                if i == split {
                    state = serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
                }
                apply(&mut state, &rules, &EventView { event_id: *id, occurred_at: *at, event });
            }
            prop_assert_eq!(state, whole);
        }

        #[test]
        fn alert_instants_respect_each_rules_cooldown(
            ops in prop::collection::vec((kind(), 0i64..200), 1..120),
        ) {
            let rules = AlertRules::shipped();
            let s = stream_of(&ops);
            let end = s.events.last().unwrap().1 + Duration::days(400);
            let alerts = s.alerts_as_of(&rules, end);
            for pair in alerts.windows(2) {
                prop_assert!(pair[0].at <= pair[1].at);
            }
            for rule in [AlertRule::FrequencyDrop, AlertRule::Complaints, AlertRule::LongOutage, AlertRule::CartAbandonment] {
                let at: Vec<_> = alerts.iter().filter(|a| a.rule == rule).map(|a| a.at).collect();
                for pair in at.windows(2) {
                    prop_assert!(pair[1] >= pair[0] + rules.cooldown(rule));
                }
            }
        }
    }
}

//! One customer's fold state across every read model, and its binary form.
//!
//! The runner keeps a customer's states together ([`CustomerState`]): they
//! are loaded, folded and written back together, so one row per customer
//! (`customer_state`) holds them all. The stored form is a format byte
//! followed by the postcard encoding of the struct (varints, instants as
//! microseconds: see [`super::compact`]). A state written by another format
//! is refused with "run `journey rebuild`", never misread.
//!
//! [`Folds`] is the set of read models a rule set defines; adding a read
//! model adds its fold here and its state to [`CustomerState`], and bumps
//! [`STATE_FORMAT`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::alerts::{Alerts, AlertsFoldState};
use super::clv_scores::{ClvHistory, ClvScores};
use super::cohorts::{Cohorts, CustomerFacts};
use super::lifecycle::{Lifecycle, LifecycleState};
use super::loyalty::{Loyalty, LoyaltyState};
use super::rules::RuleSet;
use super::value::{HistoricalValue, ValueState};
use super::{CustomerFold, FoldEvent, Row, TableSpec};
use crate::domain::CustomerId;

/// The binary state format this build writes and reads. Bump it whenever
/// [`CustomerState`] or a fold state changes shape.
pub const STATE_FORMAT: u8 = 4;

/// Why a stored state could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StateError {
    /// Written by another build's format.
    #[error(
        "fold state format {found} is not this build's ({STATE_FORMAT}); run `journey rebuild`"
    )]
    Format {
        /// The format byte found.
        found: u8,
    },
    /// The bytes do not decode.
    #[error("fold state does not decode ({0}); run `journey rebuild`")]
    Corrupt(String),
}

/// Everything the read models remember about one customer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CustomerState {
    /// `occurred_at` (µs) of the latest event folded: a later event with an
    /// earlier instant is late and makes the runner refold the customer.
    pub last_occurred_us: i64,
    /// The instant the runner advanced the customer to without an event (its
    /// clock) since their last event, if it did. An event at or before it is
    /// late: time rules already fired up to it without knowing the event.
    pub advanced_to_us: Option<i64>,
    /// Lifecycle stage and its inputs.
    pub lifecycle: LifecycleState,
    /// Loyalty lots, orders, tier.
    pub loyalty: LoyaltyState,
    /// Alert windows and cooldowns.
    pub alerts: AlertsFoldState,
    /// Historical value.
    pub value: ValueState,
    /// Cohort and monthly activity.
    pub cohorts: CustomerFacts,
    /// Orders as the CLV models see them.
    pub clv: ClvHistory,
}

impl CustomerState {
    /// Appends the stored form (format byte, then postcard) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(STATE_FORMAT);
        let body = postcard::to_extend(self, std::mem::take(out)).expect("states serialize");
        *out = body;
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.encode_into(&mut out);
        out
    }

    /// Reads a stored form.
    pub fn decode(bytes: &[u8]) -> Result<Self, StateError> {
        match bytes.split_first() {
            Some((&STATE_FORMAT, body)) => {
                postcard::from_bytes(body).map_err(|e| StateError::Corrupt(e.to_string()))
            }
            Some((&found, _)) => Err(StateError::Format { found }),
            None => Err(StateError::Corrupt("empty".into())),
        }
    }

    /// Whether any event was folded into this state.
    pub fn is_known(&self) -> bool {
        self.lifecycle.stage.is_some()
    }

    /// Whether an event at `at_us` comes too late to be folded on top of
    /// this state: it is earlier than the last event folded, or at or before
    /// an instant the customer was advanced to (time rules fired up to it
    /// without knowing the event). The runner then refolds the customer.
    pub fn is_late(&self, at_us: i64) -> bool {
        at_us < self.last_occurred_us || self.advanced_to_us.is_some_and(|a| at_us <= a)
    }
}

/// The read models of one rule set, folded together per customer.
#[derive(Debug, Clone)]
pub struct Folds {
    /// Lifecycle stages.
    pub lifecycle: Lifecycle,
    /// Loyalty.
    pub loyalty: Loyalty,
    /// Churn alerts.
    pub alerts: Alerts,
    /// Historical value.
    pub value: HistoricalValue,
    /// Cohorts.
    pub cohorts: Cohorts,
    /// CLV/RFM.
    pub clv: ClvScores,
}

impl Folds {
    /// The folds `rules` define.
    pub fn new(rules: &RuleSet) -> Self {
        Self {
            lifecycle: Lifecycle {
                rules: rules.lifecycle.clone(),
            },
            loyalty: Loyalty {
                rules: rules.loyalty.clone(),
            },
            alerts: Alerts {
                rules: rules.alerts.clone(),
                lifecycle: rules.lifecycle.clone(),
            },
            value: HistoricalValue,
            cohorts: Cohorts {
                reporting_currency: rules.lifecycle.currency,
            },
            clv: ClvScores {
                rules: rules.clv.clone(),
            },
        }
    }

    /// The read models' names, in a fixed order.
    pub fn names(&self) -> [&'static str; 6] {
        [
            self.lifecycle.name(),
            self.loyalty.name(),
            self.alerts.name(),
            self.value.name(),
            self.cohorts.name(),
            self.clv.name(),
        ]
    }

    /// Every table every fold writes, in a fixed order.
    pub fn tables(&self) -> Vec<TableSpec> {
        [
            self.lifecycle.tables(),
            self.loyalty.tables(),
            self.alerts.tables(),
            self.value.tables(),
            self.cohorts.tables(),
            self.clv.tables(),
        ]
        .concat()
    }

    /// Folds one event (in `(occurred_at, version)` order) into every read
    /// model; history rows go to `out`.
    pub fn apply(
        &self,
        customer: &CustomerId,
        state: &mut CustomerState,
        event: &FoldEvent,
        out: &mut Vec<Row>,
    ) {
        let mut changes = Vec::new();
        self.lifecycle
            .apply_noting(customer, &mut state.lifecycle, event, out, &mut changes);
        self.loyalty.apply(customer, &mut state.loyalty, event, out);
        self.alerts
            .apply_after_lifecycle(customer, &mut state.alerts, event, &changes, out);
        self.value.apply(customer, &mut state.value, event, out);
        self.cohorts.apply(customer, &mut state.cohorts, event, out);
        self.clv.apply(customer, &mut state.clv, event, out);
        state.last_occurred_us = state
            .last_occurred_us
            .max(event.occurred_at.timestamp_micros());
        state.advanced_to_us = None;
    }

    /// Advances every read model to `at` without an event.
    pub fn advance_to(
        &self,
        customer: &CustomerId,
        state: &mut CustomerState,
        at: DateTime<Utc>,
        out: &mut Vec<Row>,
    ) {
        if !state.is_known() {
            return;
        }
        let at_us = at.timestamp_micros();
        if at_us < state.last_occurred_us || state.advanced_to_us.is_some_and(|a| at_us <= a) {
            return;
        }
        state.advanced_to_us = Some(at_us);
        let mut changes = Vec::new();
        self.lifecycle
            .advance_noting(customer, &mut state.lifecycle, at, out, &mut changes);
        self.loyalty
            .advance_to(customer, &mut state.loyalty, at, out);
        self.alerts
            .advance_after_lifecycle(customer, &mut state.alerts, at, &changes, out);
        self.value.advance_to(customer, &mut state.value, at, out);
        self.cohorts
            .advance_to(customer, &mut state.cohorts, at, out);
        self.clv.advance_to(customer, &mut state.clv, at, out);
    }

    /// The next instant a time rule changes the customer's read models
    /// without a new event (a stage threshold, a lot expiring, an order
    /// leaving the spend window, an alert window closing): the runner
    /// advances the customer to it then ("deadlines"). `None` when no time
    /// rule will change anything (a churned customer with no points left).
    pub fn deadline(&self, state: &CustomerState) -> Option<i64> {
        if !state.is_known() {
            return None;
        }
        let lifecycle = state.lifecycle.next_boundary(&self.lifecycle.rules);
        let loyalty = state
            .loyalty
            .next_change(&self.loyalty.rules)
            .map(|t| t.timestamp_micros());
        let alerts = state
            .alerts
            .alerts
            .next_check(&self.alerts.rules)
            .map(|t| t.timestamp_micros());
        [lifecycle, loyalty, alerts].into_iter().flatten().min()
    }

    /// The customer's current rows of every read model.
    pub fn current_rows(&self, customer: &CustomerId, state: &CustomerState, out: &mut Vec<Row>) {
        self.lifecycle.current_rows(customer, &state.lifecycle, out);
        self.loyalty.current_rows(customer, &state.loyalty, out);
        self.value.current_rows(customer, &state.value, out);
        self.cohorts.current_rows(customer, &state.cohorts, out);
        self.clv.current_rows(customer, &state.clv, out);
    }

    /// Folds a customer's whole history from scratch: sorts `events` by
    /// `(occurred_at, version)` and applies them in that order.
    pub fn fold_history(
        &self,
        customer: &CustomerId,
        events: &mut [FoldEvent],
        out: &mut Vec<Row>,
    ) -> CustomerState {
        events.sort_by_key(|e| (e.occurred_at, e.version));
        let mut state = CustomerState::default();
        for event in events.iter() {
            self.apply(customer, &mut state, event, out);
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::events::{CustomerRegistered, DomainEvent, OrderPlaced, Profile};
    use crate::domain::{Currency, Money};

    fn event(at: &str, version: u64, event: DomainEvent) -> FoldEvent {
        FoldEvent {
            event_id: uuid::Uuid::new_v4(),
            position: version,
            version,
            occurred_at: DateTime::parse_from_rfc3339(at)
                .unwrap()
                .with_timezone(&Utc),
            event,
        }
    }

    fn order(at: &str, version: u64) -> FoldEvent {
        event(
            at,
            version,
            DomainEvent::OrderPlaced(OrderPlaced {
                order_id: format!("o{version}"),
                amount: Money::new(2_500, Currency::USD),
                item_count: 1,
            }),
        )
    }

    #[test]
    fn the_deadline_is_the_next_instant_time_alone_changes_something() {
        let folds = Folds::new(&RuleSet::shipped_defaults());
        let customer = CustomerId::parse("quiet").unwrap();
        let mut events = vec![
            event(
                "2024-01-01T10:00:00Z",
                1,
                DomainEvent::CustomerRegistered(CustomerRegistered {
                    channel: "web".into(),
                    acquisition_cost: None,
                    profile: Profile::default(),
                }),
            ),
            order("2024-01-02T10:00:00Z", 2),
            order("2024-01-20T10:00:00Z", 3),
            order("2024-02-10T10:00:00Z", 4),
        ];
        let mut rows = Vec::new();
        let mut state = folds.fold_history(&customer, &mut events, &mut rows);
        let now = DateTime::parse_from_rfc3339("2024-02-11T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        folds.advance_to(&customer, &mut state, now, &mut rows);
        // "new" ends 90 days after the first order.
        let new_ends = DateTime::parse_from_rfc3339("2024-04-01T10:00:00Z").unwrap();
        assert_eq!(folds.deadline(&state), Some(new_ends.timestamp_micros()));
        // Advancing to it changes the stage, and the next deadline follows:
        // the frequency check a microsecond later.
        let mut changes = Vec::new();
        folds.advance_to(
            &customer,
            &mut state,
            new_ends.with_timezone(&Utc),
            &mut changes,
        );
        assert_eq!(
            state.lifecycle.stage,
            Some(crate::projections::lifecycle::Stage::Active)
        );
        assert_eq!(
            folds.deadline(&state),
            Some(new_ends.timestamp_micros() + 1)
        );
    }

    #[test]
    fn another_format_is_refused_with_the_fix() {
        let mut bytes = CustomerState::default().encode();
        assert_eq!(
            CustomerState::decode(&bytes).unwrap(),
            CustomerState::default()
        );
        bytes[0] = STATE_FORMAT + 1;
        let err = CustomerState::decode(&bytes).unwrap_err();
        assert!(err.to_string().contains("run `journey rebuild`"), "{err}");
        assert!(CustomerState::decode(&[]).is_err());
        assert!(CustomerState::decode(&[STATE_FORMAT, 0xff]).is_err());
    }
}

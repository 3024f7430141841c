//! A fold over one customer's event stream: the facts that business rules
//! and the event-only read model need (registration, orders and what is
//! left to refund, consents, open complaints/tickets/outages, active
//! subscriptions, revenue).
//!
//! Pure and deterministic: the result depends only on the events folded.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use crate::domain::events::Profile;
use crate::domain::{Currency, DomainEvent, Money, RecordedEvent};

/// What an order still has to give back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderBalance {
    /// The order's amount.
    pub amount: Money,
    /// Refunded so far, in the order's currency.
    pub refunded_minor: i64,
}

impl OrderBalance {
    /// Minor units that can still be refunded.
    pub fn remaining_minor(&self) -> i64 {
        self.amount.minor - self.refunded_minor
    }
}

/// Everything known about a customer from their events alone.
#[derive(Debug, Clone, Default)]
pub struct CustomerHistory {
    /// The stream's version after the events folded (0 = no stream).
    pub version: u64,
    /// When the customer registered, if they did.
    pub registered_at: Option<DateTime<Utc>>,
    /// Acquisition channel from registration.
    pub acquisition_channel: Option<String>,
    /// Acquisition cost from registration.
    pub acquisition_cost: Option<Money>,
    /// The current profile (registration merged with later changes).
    pub profile: Profile,
    /// Whether personal data was erased.
    pub erased: bool,
    /// Purposes with consent currently given.
    pub consents: BTreeSet<String>,
    /// Orders by id.
    pub orders: BTreeMap<String, OrderBalance>,
    /// Refund ids already used.
    pub refund_ids: BTreeSet<String>,
    /// Gross order value per currency (minor units).
    pub gross_minor: BTreeMap<Currency, i64>,
    /// Refunded value per currency (minor units).
    pub refunded_minor: BTreeMap<Currency, i64>,
    /// First order instant.
    pub first_order_at: Option<DateTime<Utc>>,
    /// Last order instant.
    pub last_order_at: Option<DateTime<Utc>>,
    /// Complaints filed and not yet resolved.
    pub open_complaints: BTreeSet<String>,
    /// Every complaint id ever filed.
    pub complaint_ids: BTreeSet<String>,
    /// Tickets opened and not yet closed.
    pub open_tickets: BTreeSet<String>,
    /// Every ticket id ever opened.
    pub ticket_ids: BTreeSet<String>,
    /// Outages started and not yet ended.
    pub open_outages: BTreeSet<String>,
    /// Every outage id ever started.
    pub outage_ids: BTreeSet<String>,
    /// Subscriptions started and not cancelled.
    pub active_subscriptions: BTreeSet<String>,
    /// Every subscription id ever started.
    pub subscription_ids: BTreeSet<String>,
    /// Redemption ids already used.
    pub redemption_ids: BTreeSet<String>,
    /// Adjustment ids already used.
    pub adjustment_ids: BTreeSet<String>,
    /// Instant of the last event folded.
    pub last_event_at: Option<DateTime<Utc>>,
}

impl CustomerHistory {
    /// Folds a stream's events (oldest first), ignoring those that happened
    /// after `as_of` when given. Events that do not decode are reported.
    pub fn fold(
        events: &[RecordedEvent],
        as_of: Option<DateTime<Utc>>,
    ) -> Result<Self, crate::domain::DecodeError> {
        let mut history = Self::default();
        for recorded in events {
            if as_of.is_some_and(|limit| recorded.occurred_at > limit) {
                continue;
            }
            let event = recorded.decode()?;
            history.apply(recorded.version, recorded.occurred_at, &event);
        }
        Ok(history)
    }

    /// Applies one event.
    pub fn apply(&mut self, version: u64, at: DateTime<Utc>, event: &DomainEvent) {
        self.version = self.version.max(version);
        self.last_event_at = Some(self.last_event_at.map_or(at, |t| t.max(at)));
        match event {
            DomainEvent::CustomerRegistered(e) => {
                self.registered_at.get_or_insert(at);
                self.acquisition_channel = Some(e.channel.clone());
                self.acquisition_cost = e.acquisition_cost;
                merge_profile(&mut self.profile, &e.profile);
            }
            DomainEvent::ProfileChanged(e) => merge_profile(&mut self.profile, &e.profile),
            DomainEvent::ConsentGiven(c) => {
                self.consents.insert(c.purpose.clone());
            }
            DomainEvent::ConsentWithdrawn(c) => {
                self.consents.remove(&c.purpose);
            }
            DomainEvent::OrderPlaced(o) => {
                self.orders.insert(
                    o.order_id.clone(),
                    OrderBalance {
                        amount: o.amount,
                        refunded_minor: 0,
                    },
                );
                *self.gross_minor.entry(o.amount.currency).or_default() += o.amount.minor;
                self.first_order_at = Some(self.first_order_at.map_or(at, |t| t.min(at)));
                self.last_order_at = Some(self.last_order_at.map_or(at, |t| t.max(at)));
            }
            DomainEvent::OrderRefunded(r) => {
                self.refund_ids.insert(r.refund_id.clone());
                if let Some(order) = self.orders.get_mut(&r.order_id) {
                    order.refunded_minor += r.amount.minor;
                }
                *self.refunded_minor.entry(r.amount.currency).or_default() += r.amount.minor;
            }
            DomainEvent::ComplaintFiled(c) => {
                self.complaint_ids.insert(c.complaint_id.clone());
                self.open_complaints.insert(c.complaint_id.clone());
            }
            DomainEvent::ComplaintResolved(c) => {
                self.open_complaints.remove(&c.complaint_id);
            }
            DomainEvent::SupportTicketOpened(t) => {
                self.ticket_ids.insert(t.ticket_id.clone());
                self.open_tickets.insert(t.ticket_id.clone());
            }
            DomainEvent::SupportTicketClosed(t) => {
                self.open_tickets.remove(&t.ticket_id);
            }
            DomainEvent::ServiceOutageStarted(o) => {
                self.outage_ids.insert(o.outage_id.clone());
                self.open_outages.insert(o.outage_id.clone());
            }
            DomainEvent::ServiceOutageEnded(o) => {
                self.open_outages.remove(&o.outage_id);
            }
            DomainEvent::SubscriptionStarted(s) => {
                self.subscription_ids.insert(s.subscription_id.clone());
                self.active_subscriptions.insert(s.subscription_id.clone());
            }
            DomainEvent::SubscriptionCancelled(s) => {
                self.active_subscriptions.remove(&s.subscription_id);
            }
            DomainEvent::PointsRedeemed(p) => {
                self.redemption_ids.insert(p.redemption_id.clone());
            }
            DomainEvent::PointsAdjusted(p) => {
                self.adjustment_ids.insert(p.adjustment_id.clone());
            }
            DomainEvent::PersonalDataErased(_) => {
                self.erased = true;
                self.profile = Profile::default();
            }
            DomainEvent::SessionRecorded(_)
            | DomainEvent::CartAbandoned(_)
            | DomainEvent::CampaignTouched(_)
            | DomainEvent::SurveyAnswered(_)
            | DomainEvent::ReadModelsRebuilt(_) => {}
        }
    }

    /// Whether the customer has registered.
    pub fn is_registered(&self) -> bool {
        self.registered_at.is_some()
    }

    /// Net revenue (orders minus refunds) per currency, in currency order.
    pub fn net_minor(&self) -> BTreeMap<Currency, i64> {
        let mut net = self.gross_minor.clone();
        for (currency, refunded) in &self.refunded_minor {
            *net.entry(*currency).or_default() -= refunded;
        }
        net
    }
}

fn merge_profile(current: &mut Profile, change: &Profile) {
    for (slot, value) in [
        (&mut current.name, &change.name),
        (&mut current.email, &change.email),
        (&mut current.phone, &change.phone),
        (&mut current.address, &change.address),
    ] {
        if value.is_some() {
            slot.clone_from(value);
        }
    }
}

//! Commands: the write side. A command names a customer, an interaction and
//! when it happened; its handler checks the business rules against the
//! customer's history and appends the event only if they hold.
//!
//! Rules that need history live here (the payload's own invariants are in
//! [`crate::domain::DomainEvent::validate`]):
//! - every interaction but registration needs a registered customer, and a
//!   customer registers once;
//! - a refund names an order of the customer, in its currency, for at most
//!   what the order has left (a `full` refund returns exactly that);
//! - a redemption spends at most the current points balance;
//! - a campaign touch on channel `X` needs consent `marketing_X`;
//! - resolving, closing, ending and cancelling need something open to act on;
//!   identifiers are not reused.
//!
//! Concurrency: the rules are checked against the version read, and the
//! append is conditional on that version, so two racing commands cannot both
//! pass a rule that only one of them may (e.g. two refunds of the last cent).

pub mod history;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use thiserror::Error;
use uuid::Uuid;

use crate::domain::{
    CustomerId, DecodeError, DomainEvent, EventMetadata, NewEvent, RecordedEvent, ValidationError,
};
use crate::import::check_not_in_future;
use crate::privacy::vault::has_plaintext_personal_data;
use crate::privacy::Vault;
use crate::store::{Direction, EventStore, ExpectedVersion, ReadStream, StoreError};

pub use history::CustomerHistory;

/// Where the command side learns a customer's loyalty points balance.
///
/// Points are earned by rules (the loyalty projection), so the balance is
/// not a fact of the stream alone; `Ok(None)` means nobody can tell yet.
#[async_trait]
pub trait BalanceSource: Send + Sync {
    /// The balance at `at` (the redemption's instant: lots may have expired
    /// since or before), or `None` when the loyalty projection is not
    /// available.
    async fn points_balance(
        &self,
        customer: &CustomerId,
        at: DateTime<Utc>,
    ) -> Result<Option<i64>, String>;
}

/// One interaction to record.
#[derive(Debug, Clone)]
pub struct Command {
    /// Whose stream it goes to.
    pub customer: CustomerId,
    /// When it happened (business time).
    pub occurred_at: DateTime<Utc>,
    /// The stream version the caller last saw, for optimistic concurrency.
    pub expected_version: Option<u64>,
    /// The interaction.
    pub event: DomainEvent,
    /// Who asks (recorded in metadata), e.g. an API key name.
    pub actor: String,
    /// Where the command came from (recorded in metadata), e.g. `graphql`.
    pub source: String,
}

/// Why a command was refused.
#[derive(Debug, Error)]
pub enum CommandError {
    /// The input breaks a rule; `field` names it.
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    /// The stream moved on since the caller read it.
    #[error("customer {customer} is at version {actual}, not the expected {expected}")]
    Conflict {
        /// Customer.
        customer: String,
        /// What the caller expected.
        expected: u64,
        /// The actual version.
        actual: u64,
    },
    /// A rule cannot be checked because the read model it needs is missing.
    #[error("{0}")]
    Unavailable(String),
    /// The store failed.
    #[error("store error: {0}")]
    Store(#[from] StoreError),
    /// A stored event of the customer does not decode.
    #[error("stored event does not decode: {0}")]
    Corrupt(#[from] DecodeError),
}

/// How often a command without an expected version is tried against a
/// history that keeps moving under it before the conflict is reported.
pub const UNCONDITIONED_ATTEMPTS: u32 = 50;

/// Checks rules and appends; shared by the API and any other writer.
#[derive(Clone)]
pub struct CommandHandler {
    store: Arc<dyn EventStore>,
    balances: Arc<dyn BalanceSource>,
    vault: Option<Arc<Vault>>,
}

impl CommandHandler {
    /// A handler over `store`, asking `balances` for loyalty balances.
    pub fn new(store: Arc<dyn EventStore>, balances: Arc<dyn BalanceSource>) -> Self {
        Self {
            store,
            balances,
            vault: None,
        }
    }

    /// Seals personal profile fields with `vault` before they are stored.
    /// Without a vault, commands carrying personal data are refused: plain
    /// personal data never reaches the event log.
    pub fn with_vault(mut self, vault: Option<Arc<Vault>>) -> Self {
        self.vault = vault;
        self
    }

    /// Validates `command` against the customer's history and appends its
    /// event, returning the stored event. Nothing is stored on error.
    ///
    /// Without an expected version the caller asked for no concurrency
    /// check, so a race with another writer of the same customer is not
    /// their conflict: the history is read again and the rules re-checked
    /// against it, up to [`UNCONDITIONED_ATTEMPTS`] times.
    pub async fn execute(&self, command: Command) -> Result<RecordedEvent, CommandError> {
        let mut attempt = 1;
        loop {
            match self.execute_once(&command).await {
                Err(CommandError::Conflict { .. })
                    if command.expected_version.is_none() && attempt < UNCONDITIONED_ATTEMPTS =>
                {
                    attempt += 1;
                    // Spread racing writers apart a little (0–4 ms).
                    let jitter = u64::from(Uuid::new_v4().as_bytes()[0] % 5);
                    tokio::time::sleep(std::time::Duration::from_millis(jitter)).await;
                }
                other => return other,
            }
        }
    }

    async fn execute_once(&self, command: &Command) -> Result<RecordedEvent, CommandError> {
        check_not_in_future("occurredAt", command.occurred_at)?;
        command.event.validate().map_err(|e| e.within("input"))?;
        let stream = command.customer.stream_id();
        let events = self
            .store
            .read_stream(&stream, ReadStream::all_forwards())
            .await?;
        let history = CustomerHistory::fold(&events, None)?;
        if let Some(expected) = command.expected_version {
            if expected != history.version {
                return Err(CommandError::Conflict {
                    customer: command.customer.to_string(),
                    expected,
                    actual: history.version,
                });
            }
        }
        let balance = match &command.event {
            DomainEvent::PointsRedeemed(_) => self
                .balances
                .points_balance(&command.customer, command.occurred_at)
                .await
                .map_err(CommandError::Unavailable)?,
            _ => None,
        };
        check_rules(&history, &command.event, balance)?;
        let metadata = EventMetadata {
            correlation_id: Some(Uuid::new_v4()),
            actor: Some(command.actor.clone()),
            source: Some(command.source.clone()),
            ..Default::default()
        };
        let mut event = command.event.clone();
        if let Some(vault) = &self.vault {
            vault
                .seal_event(&command.customer, &mut event)
                .await
                .map_err(|e| CommandError::Unavailable(format!("privacy vault: {e}")))?;
        }
        let new = NewEvent::from_domain(Uuid::new_v4(), command.occurred_at, &metadata, &event)
            .map_err(|e| e.within("input"))?;
        if has_plaintext_personal_data(&new) {
            return Err(CommandError::Invalid(ValidationError::new(
                "input.profile",
                "personal data needs the privacy vault, which this store does not have",
            )));
        }
        let expected = match history.version {
            0 => ExpectedVersion::NoStream,
            v => ExpectedVersion::Exact(v),
        };
        let outcome = match self.store.append(&stream, expected, vec![new]).await {
            Ok(outcome) => outcome,
            Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                return Err(CommandError::Conflict {
                    customer: command.customer.to_string(),
                    expected: history.version,
                    actual,
                })
            }
            Err(e) => return Err(e.into()),
        };
        let mut stored = self
            .store
            .read_stream(
                &stream,
                ReadStream {
                    direction: Direction::Forwards,
                    from_version: Some(outcome.next_version),
                    limit: 1,
                },
            )
            .await?;
        stored.pop().ok_or_else(|| {
            CommandError::Store(StoreError::Corrupt {
                position: outcome.last_position,
                reason: "appended event not readable".into(),
            })
        })
    }
}

/// The history-dependent business rules, pure so they can be tested alone.
/// `balance` is the loyalty balance when the event is a redemption.
pub fn check_rules(
    history: &CustomerHistory,
    event: &DomainEvent,
    balance: Option<i64>,
) -> Result<(), CommandError> {
    let invalid = |field: &str, reason: String| {
        Err(CommandError::Invalid(ValidationError::new(field, reason)))
    };
    if let DomainEvent::CustomerRegistered(_) = event {
        if history.version > 0 {
            return invalid("customerId", "is already registered".into());
        }
        return Ok(());
    }
    if !history.is_registered() {
        return invalid(
            "customerId",
            "is not a registered customer; register them first".into(),
        );
    }
    let reused = |field: &str, used: &std::collections::BTreeSet<String>, id: &String| {
        if used.contains(id) {
            invalid(field, format!("{id:?} is already used by this customer"))
        } else {
            Ok(())
        }
    };
    match event {
        DomainEvent::OrderPlaced(o) => {
            if history.orders.contains_key(&o.order_id) {
                return invalid(
                    "input.orderId",
                    format!("order {:?} already exists", o.order_id),
                );
            }
            Ok(())
        }
        DomainEvent::OrderRefunded(r) => {
            reused("input.refundId", &history.refund_ids, &r.refund_id)?;
            let Some(order) = history.orders.get(&r.order_id) else {
                return invalid(
                    "input.orderId",
                    format!("customer has no order {:?}", r.order_id),
                );
            };
            if r.amount.currency != order.amount.currency {
                return invalid(
                    "input.amount.currency",
                    format!(
                        "order {:?} is in {}, not {}",
                        r.order_id, order.amount.currency, r.amount.currency
                    ),
                );
            }
            let left = order.remaining_minor();
            if r.amount.minor > left {
                return invalid(
                    "input.amount.minor",
                    format!(
                        "refund of {} exceeds the {left} minor units order {:?} has left",
                        r.amount.minor, r.order_id
                    ),
                );
            }
            if r.kind == crate::domain::events::RefundKind::Full && r.amount.minor != left {
                return invalid(
                    "input.kind",
                    format!("a full refund must return exactly the {left} minor units left"),
                );
            }
            Ok(())
        }
        DomainEvent::ComplaintFiled(c) => {
            reused("input.complaintId", &history.complaint_ids, &c.complaint_id)
        }
        DomainEvent::ComplaintResolved(c) if !history.open_complaints.contains(&c.complaint_id) => {
            invalid(
                "input.complaintId",
                format!("no open complaint {:?}", c.complaint_id),
            )
        }
        DomainEvent::SupportTicketOpened(t) => {
            reused("input.ticketId", &history.ticket_ids, &t.ticket_id)
        }
        DomainEvent::SupportTicketClosed(t) if !history.open_tickets.contains(&t.ticket_id) => {
            invalid(
                "input.ticketId",
                format!("no open ticket {:?}", t.ticket_id),
            )
        }
        DomainEvent::ServiceOutageStarted(o) => {
            reused("input.outageId", &history.outage_ids, &o.outage_id)
        }
        DomainEvent::ServiceOutageEnded(o) if !history.open_outages.contains(&o.outage_id) => {
            invalid(
                "input.outageId",
                format!("no ongoing outage {:?}", o.outage_id),
            )
        }
        DomainEvent::SubscriptionStarted(s) => reused(
            "input.subscriptionId",
            &history.subscription_ids,
            &s.subscription_id,
        ),
        DomainEvent::SubscriptionCancelled(s)
            if !history.active_subscriptions.contains(&s.subscription_id) =>
        {
            invalid(
                "input.subscriptionId",
                format!("no active subscription {:?}", s.subscription_id),
            )
        }
        DomainEvent::CampaignTouched(c) => {
            let purpose = format!("marketing_{}", c.channel);
            if !history.consents.contains(&purpose) {
                return invalid(
                    "input.channel",
                    format!("customer has not given consent {purpose:?} for this channel"),
                );
            }
            Ok(())
        }
        DomainEvent::PointsAdjusted(p) => reused(
            "input.adjustmentId",
            &history.adjustment_ids,
            &p.adjustment_id,
        ),
        DomainEvent::PointsRedeemed(p) => {
            reused(
                "input.redemptionId",
                &history.redemption_ids,
                &p.redemption_id,
            )?;
            match balance {
                None => Err(CommandError::Unavailable(
                    "the points balance is not available until the loyalty projection is running; \
                     redemptions cannot be checked"
                        .into(),
                )),
                Some(balance) if p.points > balance => invalid(
                    "input.points",
                    format!(
                        "redeeming {} points exceeds the balance of {balance}",
                        p.points
                    ),
                ),
                Some(_) => Ok(()),
            }
        }
        DomainEvent::PersonalDataErased(_) if history.erased => {
            invalid("customerId", "personal data is already erased".into())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::events::*;
    use crate::domain::{Currency, Money};
    use chrono::TimeZone;

    fn at(day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 1, day, 0, 0, 0).unwrap()
    }

    fn registered() -> CustomerHistory {
        let mut h = CustomerHistory::default();
        h.apply(
            1,
            at(1),
            &DomainEvent::CustomerRegistered(CustomerRegistered {
                channel: "web".into(),
                acquisition_cost: None,
                profile: Profile::default(),
            }),
        );
        h.apply(
            2,
            at(2),
            &DomainEvent::OrderPlaced(OrderPlaced {
                order_id: "o1".into(),
                amount: Money::new(1000, Currency::USD),
                item_count: 1,
            }),
        );
        h
    }

    fn refund(minor: i64, kind: RefundKind) -> DomainEvent {
        DomainEvent::OrderRefunded(OrderRefunded {
            order_id: "o1".into(),
            refund_id: format!("r{minor}"),
            amount: Money::new(minor, Currency::USD),
            kind,
            reason: None,
        })
    }

    fn field_of(result: Result<(), CommandError>) -> String {
        match result {
            Err(CommandError::Invalid(e)) => e.field,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn refunds_are_bounded_by_what_the_order_has_left() {
        let mut h = registered();
        check_rules(&h, &refund(600, RefundKind::Partial), None).unwrap();
        h.apply(3, at(3), &refund(600, RefundKind::Partial));
        assert_eq!(
            field_of(check_rules(&h, &refund(401, RefundKind::Partial), None)),
            "input.amount.minor"
        );
        assert_eq!(
            field_of(check_rules(&h, &refund(300, RefundKind::Full), None)),
            "input.kind"
        );
        check_rules(&h, &refund(400, RefundKind::Full), None).unwrap();
    }

    #[test]
    fn orders_need_a_registered_customer() {
        let order = DomainEvent::OrderPlaced(OrderPlaced {
            order_id: "o9".into(),
            amount: Money::new(5, Currency::USD),
            item_count: 1,
        });
        assert_eq!(
            field_of(check_rules(&CustomerHistory::default(), &order, None)),
            "customerId"
        );
        check_rules(&registered(), &order, None).unwrap();
    }

    #[test]
    fn redemptions_need_a_known_sufficient_balance() {
        let redeem = DomainEvent::PointsRedeemed(PointsRedeemed {
            redemption_id: "x".into(),
            points: 50,
            reward: None,
        });
        let h = registered();
        assert!(matches!(
            check_rules(&h, &redeem, None),
            Err(CommandError::Unavailable(_))
        ));
        assert_eq!(field_of(check_rules(&h, &redeem, Some(49))), "input.points");
        check_rules(&h, &redeem, Some(50)).unwrap();
    }

    #[test]
    fn campaign_touches_need_marketing_consent_for_the_channel() {
        let touch = DomainEvent::CampaignTouched(CampaignTouched {
            campaign_id: "c".into(),
            channel: "email".into(),
        });
        let mut h = registered();
        assert_eq!(field_of(check_rules(&h, &touch, None)), "input.channel");
        let consent = Consent {
            purpose: "marketing_email".into(),
        };
        h.apply(3, at(3), &DomainEvent::ConsentGiven(consent.clone()));
        check_rules(&h, &touch, None).unwrap();
        h.apply(4, at(4), &DomainEvent::ConsentWithdrawn(consent));
        assert_eq!(field_of(check_rules(&h, &touch, None)), "input.channel");
    }
}

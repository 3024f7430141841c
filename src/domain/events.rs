//! The typed events of customer lifecycle management.
//!
//! Each variant of [`DomainEvent`] is one kind of customer interaction. Its
//! payload struct is what is stored (as canonical JSON) and what every
//! projection decodes. Payloads reject unknown fields so that a typo never
//! silently becomes missing data.
//!
//! Schema evolution happens in exactly one place, [`DomainEvent::decode`]:
//! old schema versions are upcast there; newer ones are refused with a clear
//! error (a newer writer must not be half-understood by an older reader).

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::money::{Currency, Money};
use super::validation::{limit_text, require_id, ValidationError};

/// Why a stored payload could not be turned into a [`DomainEvent`].
#[derive(Debug, Error)]
pub enum DecodeError {
    /// The event type is not part of this ledger's model.
    #[error("unknown event type {0:?}")]
    UnknownEventType(String),
    /// Written by a newer version of the ledger than this one.
    #[error("{event_type} schema version {found} is newer than the supported version {supported}; upgrade the ledger")]
    NewerSchema {
        /// Event type.
        event_type: String,
        /// Version found in the store.
        found: u32,
        /// Highest version this build understands.
        supported: u32,
    },
    /// A schema version that never existed (0, or a gap).
    #[error("{event_type} has no schema version {found}")]
    UnknownSchema {
        /// Event type.
        event_type: String,
        /// Version found.
        found: u32,
    },
    /// A field of the payload does not fit (names the field's path).
    #[error("{path}: {message}")]
    Field {
        /// Event type.
        event_type: String,
        /// Dotted path of the field, e.g. `amount.minor` (`.` for the
        /// payload itself).
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// The JSON does not match the payload's shape.
    #[error("{event_type} v{schema_version} payload: {source}")]
    Payload {
        /// Event type.
        event_type: String,
        /// Schema version.
        schema_version: u32,
        /// The parser's message (names the field and column).
        #[source]
        source: serde_json::Error,
    },
}

/// Personal data about a customer. Fields that identify a person are kept
/// together so the privacy layer can seal (encrypt) and erase them as one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Full name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// E-mail address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Phone number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// Postal address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

impl Profile {
    fn validate(&self) -> Result<(), ValidationError> {
        for (field, value) in [
            ("name", &self.name),
            ("email", &self.email),
            ("phone", &self.phone),
            ("address", &self.address),
        ] {
            if let Some(v) = value {
                limit_text(field, v, 4096)?;
            }
        }
        Ok(())
    }

    /// Whether no field is set.
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.email.is_none()
            && self.phone.is_none()
            && self.address.is_none()
    }
}

/// A customer joined; the start of every customer stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerRegistered {
    /// Acquisition channel, e.g. `cdnow`, `paid_search`, `referral`.
    pub channel: String,
    /// What it cost to acquire the customer (for CLV/CAC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acquisition_cost: Option<Money>,
    /// Personal data, sealed by the privacy layer before storage.
    #[serde(default, skip_serializing_if = "Profile::is_empty")]
    pub profile: Profile,
}

/// Some profile fields changed; absent fields are unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileChanged {
    /// The new values.
    pub profile: Profile,
}

/// Consent for a purpose (e.g. `marketing_email`) given or withdrawn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consent {
    /// What the consent covers, e.g. `marketing_email`, `profiling`.
    pub purpose: String,
}

/// A visit or session on any channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRecorded {
    /// Session identifier.
    pub session_id: String,
    /// Channel: `web`, `app`, `store`, ...
    pub channel: String,
    /// Length of the session in seconds, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<u32>,
}

/// A cart was left without checkout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CartAbandoned {
    /// Cart identifier.
    pub cart_id: String,
    /// Value of the cart.
    pub value: Money,
    /// Number of items in the cart.
    pub item_count: u32,
}

/// A purchase (schema version 2; version 1 stored `amount_cents` in USD).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderPlaced {
    /// Order identifier, unique per customer.
    pub order_id: String,
    /// Order value in minor units.
    pub amount: Money,
    /// Number of items.
    pub item_count: u32,
}

/// Schema version 1 of `OrderPlaced`, kept only to upcast old events.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderPlacedV1 {
    order_id: String,
    amount_cents: i64,
    item_count: u32,
}

/// Whether a refund returns the whole order or part of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundKind {
    /// The whole remaining amount.
    Full,
    /// Part of the order.
    Partial,
}

/// Money returned for an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRefunded {
    /// The order refunded.
    pub order_id: String,
    /// Refund identifier.
    pub refund_id: String,
    /// Amount refunded.
    pub amount: Money,
    /// Full or partial.
    pub kind: RefundKind,
    /// Why, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A complaint was filed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComplaintFiled {
    /// Complaint identifier.
    pub complaint_id: String,
    /// Category, e.g. `delivery`, `billing`.
    pub category: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A complaint was resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComplaintResolved {
    /// Complaint identifier.
    pub complaint_id: String,
    /// How it was resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
}

/// A support ticket was opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupportTicketOpened {
    /// Ticket identifier.
    pub ticket_id: String,
    /// Subject line.
    pub subject: String,
}

/// A support ticket was closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupportTicketClosed {
    /// Ticket identifier.
    pub ticket_id: String,
    /// Whether the customer's problem was solved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solved: Option<bool>,
}

/// A service the customer relies on went down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceOutageStarted {
    /// Outage identifier.
    pub outage_id: String,
    /// Affected service.
    pub service: String,
}

/// The service came back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceOutageEnded {
    /// Outage identifier.
    pub outage_id: String,
}

/// The customer was reached by a marketing campaign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignTouched {
    /// Campaign identifier (bonus multipliers in the rules refer to it).
    pub campaign_id: String,
    /// Channel: `email`, `sms`, `push`, `display`, ...
    pub channel: String,
}

/// Which satisfaction scale a survey answer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SurveyMetric {
    /// Net Promoter Score, 0–10.
    Nps,
    /// Customer satisfaction, 1–5.
    Csat,
}

/// The customer answered a survey.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SurveyAnswered {
    /// Survey identifier.
    pub survey_id: String,
    /// Scale.
    pub metric: SurveyMetric,
    /// Score on that scale.
    pub score: u8,
}

/// Loyalty points spent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointsRedeemed {
    /// Redemption identifier.
    pub redemption_id: String,
    /// Points spent (positive).
    pub points: i64,
    /// What they were spent on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward: Option<String>,
}

/// A manual correction of the points balance (positive or negative).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointsAdjusted {
    /// Adjustment identifier.
    pub adjustment_id: String,
    /// Points added (positive) or removed (negative), never zero.
    pub points: i64,
    /// Why.
    pub reason: String,
}

/// A subscription began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionStarted {
    /// Subscription identifier.
    pub subscription_id: String,
    /// Plan name.
    pub plan: String,
    /// Recurring price, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Money>,
}

/// A subscription ended at the customer's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionCancelled {
    /// Subscription identifier.
    pub subscription_id: String,
    /// Why, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The customer's personal data was erased (its key destroyed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonalDataErased {
    /// Who requested or performed the erasure.
    pub requested_by: String,
    /// Legal basis or ticket.
    pub reason: String,
}

/// The read models were rebuilt from the log; recorded in `ledger-admin` so
/// every rebuild is itself part of the audited history (who, when, why).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadModelsRebuilt {
    /// Who requested the rebuild.
    pub requested_by: String,
    /// Why (rules change, repair, ticket).
    pub reason: String,
    /// Version of the rules the projections were rebuilt with, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules_version: Option<String>,
    /// Names of the projections rebuilt (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub projections: Vec<String>,
}

/// Declares the event catalogue once: variant, payload type, type name and
/// current schema version. Everything that maps between names and types is
/// generated from this single list.
/// serde_json's message without its " at line 1 column 9" suffix, which
/// means nothing for a value that was never text.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

macro_rules! domain_events {
    ($( $(#[$doc:meta])* $variant:ident($payload:ty) = $name:literal, $version:literal ),+ $(,)?) => {
        /// A customer interaction, typed.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum DomainEvent {
            $( $(#[$doc])* $variant($payload), )+
        }

        /// Every event type name with its current schema version.
        pub const EVENT_TYPES: &[(&str, u32)] = &[ $( ($name, $version), )+ ];

        impl DomainEvent {
            /// The stored type name.
            pub fn event_type(&self) -> &'static str {
                match self { $( Self::$variant(_) => $name, )+ }
            }

            /// The schema version this build writes.
            pub fn schema_version(&self) -> u32 {
                match self { $( Self::$variant(_) => $version, )+ }
            }

            /// The payload as JSON.
            pub fn to_payload(&self) -> serde_json::Value {
                match self {
                    $( Self::$variant(p) => serde_json::to_value(p).expect("payloads serialize"), )+
                }
            }

            /// Decodes the current schema version of a known type.
            fn decode_current(event_type: &str, payload: &str) -> Option<Result<Self, serde_json::Error>> {
                match event_type {
                    $( $name => Some(serde_json::from_str::<$payload>(payload).map(Self::$variant)), )+
                    _ => None,
                }
            }

            /// Decodes the current schema version of a known type from a
            /// JSON value, keeping the path of the field a failure is in.
            fn decode_current_value(
                event_type: &str,
                payload: &serde_json::Value,
            ) -> Option<Result<Self, serde_path_to_error::Error<serde_json::Error>>> {
                match event_type {
                    $( $name => Some(serde_path_to_error::deserialize::<_, $payload>(payload).map(Self::$variant)), )+
                    _ => None,
                }
            }
        }
    };
}

domain_events! {
    /// Registration, with acquisition channel and cost.
    CustomerRegistered(CustomerRegistered) = "CustomerRegistered", 1,
    /// Profile fields changed.
    ProfileChanged(ProfileChanged) = "ProfileChanged", 1,
    /// Consent given for a purpose.
    ConsentGiven(Consent) = "ConsentGiven", 1,
    /// Consent withdrawn for a purpose.
    ConsentWithdrawn(Consent) = "ConsentWithdrawn", 1,
    /// A visit or session.
    SessionRecorded(SessionRecorded) = "SessionRecorded", 1,
    /// A cart abandoned.
    CartAbandoned(CartAbandoned) = "CartAbandoned", 1,
    /// A purchase.
    OrderPlaced(OrderPlaced) = "OrderPlaced", 2,
    /// A refund against an order.
    OrderRefunded(OrderRefunded) = "OrderRefunded", 1,
    /// A complaint filed.
    ComplaintFiled(ComplaintFiled) = "ComplaintFiled", 1,
    /// A complaint resolved.
    ComplaintResolved(ComplaintResolved) = "ComplaintResolved", 1,
    /// A support ticket opened.
    SupportTicketOpened(SupportTicketOpened) = "SupportTicketOpened", 1,
    /// A support ticket closed.
    SupportTicketClosed(SupportTicketClosed) = "SupportTicketClosed", 1,
    /// A service outage began.
    ServiceOutageStarted(ServiceOutageStarted) = "ServiceOutageStarted", 1,
    /// A service outage ended.
    ServiceOutageEnded(ServiceOutageEnded) = "ServiceOutageEnded", 1,
    /// A campaign reached the customer.
    CampaignTouched(CampaignTouched) = "CampaignTouched", 1,
    /// A survey answer (NPS or CSAT).
    SurveyAnswered(SurveyAnswered) = "SurveyAnswered", 1,
    /// Points redeemed.
    PointsRedeemed(PointsRedeemed) = "PointsRedeemed", 1,
    /// Points adjusted by hand.
    PointsAdjusted(PointsAdjusted) = "PointsAdjusted", 1,
    /// A subscription started.
    SubscriptionStarted(SubscriptionStarted) = "SubscriptionStarted", 1,
    /// A subscription cancelled.
    SubscriptionCancelled(SubscriptionCancelled) = "SubscriptionCancelled", 1,
    /// Personal data erased (crypto-shredding).
    PersonalDataErased(PersonalDataErased) = "PersonalDataErased", 1,
    /// Read models rebuilt (in the `ledger-admin` stream).
    ReadModelsRebuilt(ReadModelsRebuilt) = "ReadModelsRebuilt", 1,
}

impl DomainEvent {
    /// Current schema version of a type name, if the type is known.
    pub fn current_schema_version(event_type: &str) -> Option<u32> {
        EVENT_TYPES
            .iter()
            .find(|(name, _)| *name == event_type)
            .map(|(_, v)| *v)
    }

    /// Decodes a stored payload, upcasting older schema versions.
    ///
    /// This is the only place that knows about old schemas.
    pub fn decode(
        event_type: &str,
        schema_version: u32,
        payload: &str,
    ) -> Result<Self, DecodeError> {
        let supported = Self::current_schema_version(event_type)
            .ok_or_else(|| DecodeError::UnknownEventType(event_type.to_owned()))?;
        let payload_err = |source| DecodeError::Payload {
            event_type: event_type.to_owned(),
            schema_version,
            source,
        };
        if schema_version > supported {
            return Err(DecodeError::NewerSchema {
                event_type: event_type.to_owned(),
                found: schema_version,
                supported,
            });
        }
        if schema_version == supported {
            return Self::decode_current(event_type, payload)
                .expect("known type")
                .map_err(payload_err);
        }
        match (event_type, schema_version) {
            ("OrderPlaced", 1) => {
                // v1 (early imports) stored USD cents as a bare integer.
                let v1: OrderPlacedV1 = serde_json::from_str(payload).map_err(payload_err)?;
                Ok(Self::OrderPlaced(OrderPlaced {
                    order_id: v1.order_id,
                    amount: Money::new(v1.amount_cents, Currency::USD),
                    item_count: v1.item_count,
                }))
            }
            _ => Err(DecodeError::UnknownSchema {
                event_type: event_type.to_owned(),
                found: schema_version,
            }),
        }
    }

    /// The money fields of the payload, with their field names.
    fn amounts(&self) -> Vec<(&'static str, &Money)> {
        match self {
            Self::CustomerRegistered(e) => e
                .acquisition_cost
                .iter()
                .map(|m| ("acquisition_cost", m))
                .collect(),
            Self::CartAbandoned(e) => vec![("value", &e.value)],
            Self::OrderPlaced(e) => vec![("amount", &e.amount)],
            Self::OrderRefunded(e) => vec![("amount", &e.amount)],
            Self::SubscriptionStarted(e) => e.price.iter().map(|m| ("price", m)).collect(),
            _ => Vec::new(),
        }
    }

    /// Decodes a payload given as JSON (what the ways in — GraphQL inputs,
    /// JSON lines, CloudEvents, Segment mappings — produce). `None` takes
    /// the current schema version. Errors name the field's path, e.g.
    /// `amount.minor: invalid type: string "x", expected i64`.
    pub fn from_json(
        event_type: &str,
        schema_version: Option<u32>,
        payload: &serde_json::Value,
    ) -> Result<Self, DecodeError> {
        let supported = Self::current_schema_version(event_type)
            .ok_or_else(|| DecodeError::UnknownEventType(event_type.to_owned()))?;
        match schema_version {
            Some(version) if version != supported => {
                Self::decode(event_type, version, &payload.to_string())
            }
            _ => Self::decode_current_value(event_type, payload)
                .expect("known type")
                .map_err(|e| DecodeError::Field {
                    event_type: event_type.to_owned(),
                    path: e.path().to_string(),
                    message: strip_position(&e.into_inner().to_string()),
                }),
        }
    }

    /// Checks business-independent invariants of the payload (ranges,
    /// required identifiers, sizes). Rules that need history (refund not
    /// above the order, redemption not above the balance) are checked by
    /// the command layer.
    pub fn validate(&self) -> Result<(), ValidationError> {
        for (field, amount) in self.amounts() {
            amount.require_within_limit(field)?;
        }
        match self {
            Self::CustomerRegistered(e) => {
                require_id("channel", &e.channel)?;
                if let Some(cost) = &e.acquisition_cost {
                    if cost.minor < 0 {
                        return Err(ValidationError::new(
                            "acquisition_cost.minor",
                            "must not be negative",
                        ));
                    }
                }
                e.profile.validate().map_err(|err| err.within("profile"))
            }
            Self::ProfileChanged(e) => {
                if e.profile.is_empty() {
                    return Err(ValidationError::new(
                        "profile",
                        "must change at least one field",
                    ));
                }
                e.profile.validate().map_err(|err| err.within("profile"))
            }
            Self::ConsentGiven(e) | Self::ConsentWithdrawn(e) => require_id("purpose", &e.purpose),
            Self::SessionRecorded(e) => {
                require_id("session_id", &e.session_id)?;
                require_id("channel", &e.channel)
            }
            Self::CartAbandoned(e) => {
                require_id("cart_id", &e.cart_id)?;
                if e.value.minor < 0 {
                    return Err(ValidationError::new("value.minor", "must not be negative"));
                }
                Ok(())
            }
            Self::OrderPlaced(e) => {
                require_id("order_id", &e.order_id)?;
                // Zero-value orders are real (promotions, free replacements;
                // CDNOW has 80 of them); negative ones are refunds.
                if e.amount.minor < 0 {
                    return Err(ValidationError::new("amount.minor", "must not be negative"));
                }
                if e.item_count == 0 {
                    return Err(ValidationError::new("item_count", "must be at least 1"));
                }
                Ok(())
            }
            Self::OrderRefunded(e) => {
                require_id("order_id", &e.order_id)?;
                require_id("refund_id", &e.refund_id)?;
                e.amount.require_positive("amount")?;
                if let Some(r) = &e.reason {
                    limit_text("reason", r, 4096)?;
                }
                Ok(())
            }
            Self::ComplaintFiled(e) => {
                require_id("complaint_id", &e.complaint_id)?;
                require_id("category", &e.category)?;
                if let Some(d) = &e.description {
                    limit_text("description", d, 64 * 1024)?;
                }
                Ok(())
            }
            Self::ComplaintResolved(e) => require_id("complaint_id", &e.complaint_id),
            Self::SupportTicketOpened(e) => {
                require_id("ticket_id", &e.ticket_id)?;
                limit_text("subject", &e.subject, 4096)
            }
            Self::SupportTicketClosed(e) => require_id("ticket_id", &e.ticket_id),
            Self::ServiceOutageStarted(e) => {
                require_id("outage_id", &e.outage_id)?;
                require_id("service", &e.service)
            }
            Self::ServiceOutageEnded(e) => require_id("outage_id", &e.outage_id),
            Self::CampaignTouched(e) => {
                require_id("campaign_id", &e.campaign_id)?;
                require_id("channel", &e.channel)
            }
            Self::SurveyAnswered(e) => {
                require_id("survey_id", &e.survey_id)?;
                let (lo, hi) = match e.metric {
                    SurveyMetric::Nps => (0, 10),
                    SurveyMetric::Csat => (1, 5),
                };
                if !(lo..=hi).contains(&e.score) {
                    return Err(ValidationError::new(
                        "score",
                        format!(
                            "{:?} scores run from {lo} to {hi}, got {}",
                            e.metric, e.score
                        ),
                    ));
                }
                Ok(())
            }
            Self::PointsRedeemed(e) => {
                require_id("redemption_id", &e.redemption_id)?;
                if e.points <= 0 {
                    return Err(ValidationError::new("points", "must be greater than zero"));
                }
                Ok(())
            }
            Self::PointsAdjusted(e) => {
                require_id("adjustment_id", &e.adjustment_id)?;
                if e.points == 0 {
                    return Err(ValidationError::new("points", "must not be zero"));
                }
                require_id("reason", &e.reason)
            }
            Self::SubscriptionStarted(e) => {
                require_id("subscription_id", &e.subscription_id)?;
                require_id("plan", &e.plan)?;
                if let Some(p) = &e.price {
                    p.require_positive("price")?;
                }
                Ok(())
            }
            Self::SubscriptionCancelled(e) => require_id("subscription_id", &e.subscription_id),
            Self::PersonalDataErased(e) => {
                require_id("requested_by", &e.requested_by)?;
                require_id("reason", &e.reason)
            }
            Self::ReadModelsRebuilt(e) => {
                require_id("requested_by", &e.requested_by)?;
                require_id("reason", &e.reason)
            }
        }
    }

    /// Parses an event from its type name and JSON payload at the current
    /// schema version (the shape clients and JSONL files write).
    pub fn from_type_and_payload(
        event_type: &str,
        payload: &serde_json::Value,
    ) -> Result<Self, DecodeError> {
        let version = Self::current_schema_version(event_type)
            .ok_or_else(|| DecodeError::UnknownEventType(event_type.to_owned()))?;
        Self::decode(event_type, version, &payload.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_type_name_is_unique() {
        let mut names: Vec<_> = EVENT_TYPES.iter().map(|(n, _)| *n).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), EVENT_TYPES.len());
    }

    #[test]
    fn current_payloads_round_trip() {
        let e = DomainEvent::OrderPlaced(OrderPlaced {
            order_id: "o1".into(),
            amount: Money::new(2933, Currency::USD),
            item_count: 2,
        });
        let text = e.to_payload().to_string();
        assert_eq!(DomainEvent::decode("OrderPlaced", 2, &text).unwrap(), e);
    }

    #[test]
    fn order_placed_v1_is_upcast_to_usd_money() {
        let v1 = r#"{"order_id":"o1","amount_cents":1999,"item_count":1}"#;
        match DomainEvent::decode("OrderPlaced", 1, v1).unwrap() {
            DomainEvent::OrderPlaced(o) => {
                assert_eq!(o.amount, Money::new(1999, Currency::USD));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_types_and_newer_schemas_are_refused_clearly() {
        let err = DomainEvent::decode("OrderShipped", 1, "{}").unwrap_err();
        assert_eq!(err.to_string(), "unknown event type \"OrderShipped\"");
        let err = DomainEvent::decode("OrderPlaced", 3, "{}").unwrap_err();
        assert!(
            err.to_string()
                .contains("newer than the supported version 2"),
            "{err}"
        );
        let err = DomainEvent::decode("ConsentGiven", 0, "{}").unwrap_err();
        assert!(matches!(err, DecodeError::UnknownSchema { .. }));
    }

    #[test]
    fn unknown_fields_are_named() {
        let err =
            DomainEvent::decode("ConsentGiven", 1, r#"{"purpose":"x","extra":1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `extra`"), "{err}");
    }

    #[test]
    fn json_payload_errors_name_the_field_path() {
        let payload = serde_json::json!({
            "order_id": "o1", "amount": {"minor": "12", "currency": "EUR"}, "item_count": 1
        });
        let err = DomainEvent::from_json("OrderPlaced", None, &payload).unwrap_err();
        assert_eq!(
            err.to_string(),
            "amount.minor: invalid type: string \"12\", expected i64"
        );
        let old = serde_json::json!({"order_id": "o1", "amount_cents": 5, "item_count": 1});
        let upcast = DomainEvent::from_json("OrderPlaced", Some(1), &old).unwrap();
        assert!(matches!(upcast, DomainEvent::OrderPlaced(o) if o.amount.minor == 5));
    }

    #[test]
    fn amounts_above_the_limit_are_refused_by_every_way_in() {
        let too_big = Money::MAX_MINOR + 1;
        let order = DomainEvent::from_json(
            "OrderPlaced",
            None,
            &serde_json::json!({"order_id": "o", "amount": {"minor": too_big, "currency": "USD"}, "item_count": 1}),
        )
        .unwrap();
        let err = order.validate().unwrap_err();
        assert_eq!(err.field, "amount.minor");
        assert!(err.reason.contains("at most 10000000000000"), "{err}");
        let at_limit = DomainEvent::from_json(
            "CartAbandoned",
            None,
            &serde_json::json!({"cart_id": "c", "value": {"minor": Money::MAX_MINOR, "currency": "USD"}, "item_count": 1}),
        )
        .unwrap();
        at_limit.validate().unwrap();
    }

    #[test]
    fn validation_names_fields() {
        let bad = DomainEvent::from_type_and_payload(
            "SurveyAnswered",
            &json!({"survey_id": "s", "metric": "csat", "score": 0}),
        )
        .unwrap();
        assert_eq!(bad.validate().unwrap_err().field, "score");
        let neg = DomainEvent::from_type_and_payload(
            "OrderPlaced",
            &json!({"order_id": "o", "amount": {"minor": -5, "currency": "USD"}, "item_count": 1}),
        )
        .unwrap();
        assert_eq!(neg.validate().unwrap_err().field, "amount.minor");
        let bad_currency = DomainEvent::from_type_and_payload(
            "OrderPlaced",
            &json!({"order_id": "o", "amount": {"minor": 5, "currency": "ZZZ"}, "item_count": 1}),
        )
        .unwrap_err();
        assert!(
            bad_currency.to_string().contains("ISO 4217"),
            "{bad_currency}"
        );
    }
}

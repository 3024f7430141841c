//! The Segment tracking API's messages (also spoken by RudderStack's SDKs
//! and server): `identify`, `track`, `page`, `screen`, alone or in a
//! `batch`.
//!
//! - The customer is the message's `userId`; a message with only an
//!   `anonymousId` is refused (the ledger keeps streams of known customers).
//! - `messageId` makes delivery idempotent: the event id is a UUID v5 of the
//!   write key's name and the `messageId`, so an SDK retry stores nothing new.
//!   A message without one gets an id derived from its content.
//! - `timestamp` (else `originalTimestamp`) is when it happened
//!   (`occurred_at`); the store stamps `recorded_at`. Without either, the
//!   time the ledger received it is used.
//! - `identify` registers a new customer (channel: `[identify] channel` of
//!   the mapping) and records personal traits (`traits`, or `context.traits`
//!   as RudderStack's SDKs send them) as `ProfileChanged`, sealed by the
//!   privacy vault; `track`, `page` and `screen` map through
//!   [`super::mapping`] tables, and a customer first seen in one of them is
//!   registered the same way.

use std::collections::HashMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::ingest::{Action, Incoming};
use super::mapping::{at_path, parse_event_mapping, EventMapping, MappingError};
use super::{check_not_in_future, derived_id};
use crate::domain::canonical::to_canonical_string;
use crate::domain::events::{Profile, ProfileChanged};
use crate::domain::{CustomerId, DomainEvent, EventMetadata};

/// The mapping shipped with the ledger (`projections/ingest/segment.toml`).
pub const SHIPPED_TOML: &str = include_str!("../../projections/ingest/segment.toml");

/// How Segment messages become ledger events (the mapping file, parsed).
#[derive(Debug, Clone)]
pub struct SegmentMapping {
    channel_paths: Vec<String>,
    default_channel: String,
    page: Option<EventMapping>,
    screen: Option<EventMapping>,
    track: HashMap<String, EventMapping>,
}

impl SegmentMapping {
    /// The shipped mapping.
    pub fn shipped() -> Self {
        Self::parse("projections/ingest/segment.toml", SHIPPED_TOML)
            .expect("the shipped mapping is valid")
    }

    /// Reads a mapping file.
    pub fn load(path: &Path) -> Result<Self, MappingError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| MappingError {
            file: file.clone(),
            at: "file".into(),
            reason: e.to_string(),
        })?;
        Self::parse(&file, &text)
    }

    /// Parses mapping text; errors name the file and the table.
    pub fn parse(file: &str, text: &str) -> Result<Self, MappingError> {
        let err = |at: &str, reason: String| MappingError {
            file: file.to_owned(),
            at: at.to_owned(),
            reason,
        };
        let root: toml::Table = toml::from_str(text).map_err(|e| err("file", e.to_string()))?;
        let mut mapping = Self {
            channel_paths: Vec::new(),
            default_channel: "segment".into(),
            page: None,
            screen: None,
            track: HashMap::new(),
        };
        for (key, value) in &root {
            match key.as_str() {
                "identify" => {
                    let table = value
                        .as_table()
                        .ok_or_else(|| err("identify", "must be a table".into()))?;
                    for (k, v) in table {
                        match k.as_str() {
                            "channel" => {
                                mapping.channel_paths = match v {
                                    toml::Value::String(s) => vec![s.clone()],
                                    toml::Value::Array(a) => a
                                        .iter()
                                        .filter_map(|p| p.as_str().map(str::to_owned))
                                        .collect(),
                                    _ => {
                                        return Err(err(
                                            "identify.channel",
                                            "must be a path or a list of paths".into(),
                                        ))
                                    }
                                }
                            }
                            "default_channel" => {
                                mapping.default_channel = v
                                    .as_str()
                                    .ok_or_else(|| {
                                        err("identify.default_channel", "must be text".into())
                                    })?
                                    .to_owned()
                            }
                            other => {
                                return Err(err(
                                    &format!("identify.{other}"),
                                    "unknown key (channel, default_channel)".into(),
                                ))
                            }
                        }
                    }
                }
                "page" => mapping.page = Some(parse_event_mapping(file, "page", value)?),
                "screen" => mapping.screen = Some(parse_event_mapping(file, "screen", value)?),
                "track" => {
                    let table = value
                        .as_table()
                        .ok_or_else(|| err("track", "must be a table of event names".into()))?;
                    for (name, value) in table {
                        let at = format!("track.{name:?}");
                        mapping
                            .track
                            .insert(name.clone(), parse_event_mapping(file, &at, value)?);
                    }
                }
                other => {
                    return Err(err(
                        other,
                        "unknown table (identify, page, screen, track)".into(),
                    ))
                }
            }
        }
        Ok(mapping)
    }

    /// The `track` event names this mapping records.
    pub fn track_names(&self) -> impl Iterator<Item = &str> {
        self.track.keys().map(String::as_str)
    }

    /// Converts one message. `kind` is the endpoint's type (`track` for
    /// `/v1/track`) or `None` inside a batch, where the message's `type`
    /// says it; `source` is the write key's name (ids are scoped by it).
    /// The error says what is wrong, naming the field.
    pub fn convert(
        &self,
        source: &str,
        kind: Option<&str>,
        message: &Value,
        received_at: DateTime<Utc>,
    ) -> Result<Incoming, String> {
        if !message.is_object() {
            return Err("message must be a JSON object".into());
        }
        let kind = match (message.get("type").and_then(Value::as_str), kind) {
            (Some(t), Some(k)) if t != k => {
                return Err(format!("type: {t:?} sent to the /v1/{k} endpoint"))
            }
            (Some(t), _) => t,
            (None, Some(k)) => k,
            (None, None) => return Err("type: missing (identify, track, page or screen)".into()),
        };
        let customer = match message.get("userId") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                return Err(
                    "userId: missing; the ledger keeps a stream per known customer, \
                     so anonymousId-only calls are not recorded (identify the user first)"
                        .into(),
                )
            }
        };
        let customer = CustomerId::parse(&customer).map_err(|e| format!("userId: {}", e.reason))?;
        let occurred_at = occurred_at(message, received_at)?;
        let message_id = match message.get("messageId") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) if !id.is_empty() && id.len() <= 256 => Some(id.clone()),
            Some(_) => return Err("messageId: must be text of 1 to 256 bytes".into()),
        };
        // Without a messageId the content stands in for it, also where the
        // mapping reads `messageId` (e.g. a refund or session id).
        let with_id;
        let (message, key) = match &message_id {
            Some(id) => (message, id.clone()),
            None => {
                let key = format!("content/{}", content_key(message));
                let mut copy = message.clone();
                copy["messageId"] = Value::String(key.clone());
                with_id = copy;
                (&with_id, key)
            }
        };
        let event_id = derived_id(&format!("segment/{source}/{key}"));
        let channel = self
            .channel_paths
            .iter()
            .find_map(|p| at_path(message, p).and_then(Value::as_str))
            .filter(|c| !c.trim().is_empty() && c.len() <= 64)
            .unwrap_or(&self.default_channel)
            .to_owned();
        let metadata = EventMetadata {
            actor: Some(source.to_owned()),
            source: Some(format!("segment:{kind}")),
            ..Default::default()
        };
        let customer_key = customer.to_string();
        let mapped = |mapping: &EventMapping| -> Result<Action, String> {
            let event_id = match mapping.key_of(message) {
                Some(key) => derived_id(&format!(
                    "segment/{source}/{}/{customer_key}/{key}",
                    mapping.event_type
                )),
                None => event_id,
            };
            let payload = mapping.payload(message)?;
            let event = DomainEvent::from_json(&mapping.event_type, None, &payload)
                .map_err(|e| format!("{} {e}", mapping.event_type))?;
            event
                .validate()
                .map_err(|e| format!("{} {e}", mapping.event_type))?;
            Ok(match mapping.hold_without_order_secs {
                Some(secs) => Action::HoldUnlessOrdered {
                    event_id,
                    event,
                    release_at: occurred_at + chrono::Duration::seconds(secs as i64),
                },
                None => Action::Record { event_id, event },
            })
        };
        let action = match kind {
            "identify" => {
                // Segment's SDKs send `traits`; RudderStack's send
                // `context.traits`.
                let traits = [message.get("traits"), at_path(message, "context.traits")]
                    .into_iter()
                    .flatten()
                    .find(|t| t.as_object().is_some_and(|o| !o.is_empty()))
                    .unwrap_or(&Value::Null);
                let profile = profile_of(traits)?;
                if profile.is_empty() {
                    Action::Register
                } else {
                    Action::Record {
                        event_id,
                        event: DomainEvent::ProfileChanged(ProfileChanged { profile }),
                    }
                }
            }
            "track" => {
                let name = match message.get("event") {
                    Some(Value::String(name)) if !name.is_empty() => name,
                    _ => return Err("event: missing (the name of the track call)".into()),
                };
                let mapping = self.track.get(name).ok_or_else(|| {
                    format!(
                        "event: no mapping for track event {name:?} in the ledger's segment \
                         mapping; add a [track.{name:?}] table or leave it out of this destination"
                    )
                })?;
                mapped(mapping)?
            }
            "page" | "screen" => {
                let mapping = if kind == "page" {
                    &self.page
                } else {
                    &self.screen
                };
                let mapping = mapping
                    .as_ref()
                    .ok_or_else(|| format!("type: {kind} calls are not mapped"))?;
                mapped(mapping)?
            }
            other => {
                return Err(format!(
                    "type: {other:?} is not recorded (identify, track, page and screen are)"
                ))
            }
        };
        Ok(Incoming {
            customer,
            occurred_at,
            action,
            metadata,
            channel,
            reference: message_id,
        })
    }
}

/// `timestamp`, else `originalTimestamp`, else when it was received.
fn occurred_at(message: &Value, received_at: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    for field in ["timestamp", "originalTimestamp"] {
        match message.get(field) {
            None | Some(Value::Null) => continue,
            Some(Value::String(text)) => {
                let at = DateTime::parse_from_rfc3339(text)
                    .map_err(|e| format!("{field}: {text:?} is not an ISO 8601 instant: {e}"))?
                    .with_timezone(&Utc);
                check_not_in_future(field, at).map_err(|e| e.to_string())?;
                return Ok(at);
            }
            Some(_) => return Err(format!("{field}: must be an ISO 8601 instant")),
        }
    }
    Ok(received_at)
}

/// What identifies a message without a `messageId`: its content without
/// the fields that change on a resend.
fn content_key(message: &Value) -> String {
    let mut copy = message.clone();
    if let Some(object) = copy.as_object_mut() {
        for volatile in ["sentAt", "receivedAt", "_metadata", "writeKey"] {
            object.remove(volatile);
        }
    }
    let text = to_canonical_string(&copy);
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()))
}

/// The personal traits of an `identify` (Segment's reserved traits), as a
/// profile: `name` (else `firstName` + `lastName`), `email`, `phone`,
/// `address` (text, or Segment's object joined as one line).
fn profile_of(traits: &Value) -> Result<Profile, String> {
    let text = |key: &str| -> Result<Option<String>, String> {
        match traits.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(format!("traits.{key}: must be text")),
        }
    };
    let name = match text("name")? {
        Some(name) => Some(name),
        None => {
            let parts: Vec<String> = [text("firstName")?, text("lastName")?]
                .into_iter()
                .flatten()
                .collect();
            (!parts.is_empty()).then(|| parts.join(" "))
        }
    };
    let address = match traits.get("address") {
        Some(Value::Object(parts)) => {
            let line: Vec<&str> = ["street", "city", "state", "postalCode", "country"]
                .iter()
                .filter_map(|k| parts.get(*k).and_then(Value::as_str))
                .filter(|s| !s.trim().is_empty())
                .collect();
            (!line.is_empty()).then(|| line.join(", "))
        }
        _ => text("address")?,
    };
    Ok(Profile {
        name,
        email: text("email")?,
        phone: text("phone")?,
        address,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        "2024-06-01T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn the_shipped_mapping_parses_and_maps_order_completed() {
        let mapping = SegmentMapping::shipped();
        let message = json!({
            "type": "track", "event": "Order Completed", "userId": "u1",
            "messageId": "m-1", "timestamp": "2024-05-01T10:00:00Z",
            "properties": {"order_id": "o-9", "total": 42.5, "currency": "EUR",
                           "products": [{"quantity": 2}]}
        });
        let incoming = mapping.convert("web", None, &message, now()).unwrap();
        assert_eq!(incoming.customer.as_str(), "u1");
        assert_eq!(
            incoming.occurred_at,
            "2024-05-01T10:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        let Action::Record { event_id, event } = incoming.action else {
            panic!("recorded")
        };
        // The mapping's business key (the order id), not the message id.
        assert_eq!(event_id, derived_id("segment/web/OrderPlaced/u1/o-9"));
        match event {
            DomainEvent::OrderPlaced(o) => {
                assert_eq!(
                    (o.order_id.as_str(), o.amount.minor, o.item_count),
                    ("o-9", 4250, 2)
                );
                assert_eq!(o.amount.currency.code(), "EUR");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refusals_say_why() {
        let mapping = SegmentMapping::shipped();
        let refuse = |m: Value| mapping.convert("web", None, &m, now()).unwrap_err();
        assert!(
            refuse(json!({"type": "track", "event": "Teleported", "userId": "u"}))
                .starts_with("event: no mapping for track event \"Teleported\"")
        );
        assert!(
            refuse(json!({"type": "track", "event": "Order Completed", "anonymousId": "a"}))
                .starts_with("userId: missing")
        );
        assert_eq!(
            refuse(
                json!({"type": "track", "event": "Order Completed", "userId": "u",
                          "properties": {"order_id": "o", "total": -3}})
            ),
            "OrderPlaced amount.minor: must not be negative"
        );
        assert!(refuse(json!({"type": "alias", "userId": "u"})).contains("not recorded"));
    }

    #[test]
    fn identify_records_personal_traits_or_only_registers() {
        let mapping = SegmentMapping::shipped();
        let with = json!({"type": "identify", "userId": "u", "messageId": "i1",
            "context": {"campaign": {"source": "newsletter"}},
            "traits": {"firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.com",
                       "address": {"city": "London", "country": "UK"}, "plan": "pro"}});
        let incoming = mapping
            .convert("web", Some("identify"), &with, now())
            .unwrap();
        assert_eq!(incoming.channel, "newsletter");
        let Action::Record {
            event: DomainEvent::ProfileChanged(p),
            ..
        } = incoming.action
        else {
            panic!("profile change")
        };
        assert_eq!(p.profile.name.as_deref(), Some("Ada Lovelace"));
        assert_eq!(p.profile.address.as_deref(), Some("London, UK"));
        let rudder = json!({"type": "identify", "userId": "u", "messageId": "i2",
            "context": {"traits": {"email": "grace@example.com", "name": "Grace Hopper"}}});
        let incoming = mapping.convert("web", None, &rudder, now()).unwrap();
        let Action::Record {
            event: DomainEvent::ProfileChanged(p),
            ..
        } = incoming.action
        else {
            panic!("RudderStack's context.traits are read")
        };
        assert_eq!(p.profile.email.as_deref(), Some("grace@example.com"));
        let without = json!({"type": "identify", "userId": "u", "traits": {"plan": "pro"}});
        let incoming = mapping.convert("web", None, &without, now()).unwrap();
        assert!(matches!(incoming.action, Action::Register));
        assert_eq!(incoming.channel, "segment");
        assert_eq!(incoming.occurred_at, now());
    }

    #[test]
    fn ids_are_stable_across_resends_and_scoped_by_source() {
        let mapping = SegmentMapping::shipped();
        let m = json!({"type": "page", "userId": "u", "timestamp": "2024-01-01T00:00:00Z",
                       "sentAt": "2024-01-01T00:00:01Z"});
        let mut resent = m.clone();
        resent["sentAt"] = json!("2024-01-01T00:05:00Z");
        let id =
            |source: &str, m: &Value| match mapping.convert(source, None, m, now()).unwrap().action
            {
                Action::Record { event_id, .. } => event_id,
                _ => panic!("recorded"),
            };
        assert_eq!(id("web", &m), id("web", &resent));
        assert_ne!(id("web", &m), id("app", &m));
    }
}

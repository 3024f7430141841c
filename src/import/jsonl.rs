//! JSON lines: one event per line.
//!
//! ```json
//! {"customer_id": "c-1", "event_type": "OrderPlaced",
//!  "occurred_at": "2024-03-01T10:15:00Z",
//!  "payload": {"order_id": "o-1", "amount": {"minor": 1999, "currency": "EUR"}, "item_count": 1},
//!  "event_id": "optional UUID", "schema_version": 2, "metadata": {"actor": "crm"}}
//! ```
//!
//! `event_id` defaults to a UUID v5 of the line's content (customer, type,
//! instant and canonical payload), so re-importing a file stores it once.
//! Profile *values* are left out of that content (only the field names
//! count), so the id is no hash of personal data that would outlive an
//! erasure. Profile fields are sealed by the importer's privacy vault.
//! `schema_version` defaults to the current one; older payloads are upcast
//! and stored at the current version. Unknown fields are rejected.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::{check_not_in_future, derived_id, LineEvents, LineParser};
use crate::domain::canonical::to_canonical_string;
use crate::domain::{CustomerId, DomainEvent, EventMetadata, NewEvent};

/// One line of the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonlEvent {
    customer_id: String,
    event_type: String,
    occurred_at: DateTime<Utc>,
    payload: serde_json::Value,
    #[serde(default)]
    event_id: Option<Uuid>,
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    metadata: Option<EventMetadata>,
}

/// Stateless JSON-lines parser.
#[derive(Debug, Default)]
pub struct JsonlParser;

impl LineParser for JsonlParser {
    fn parse_line(&mut self, _line_no: usize, line: &str) -> Result<Option<LineEvents>, String> {
        if line.trim().is_empty() {
            return Ok(None);
        }
        let raw: JsonlEvent =
            serde_json::from_str(line).map_err(|e| format!("invalid event JSON: {e}"))?;
        let customer = CustomerId::parse(&raw.customer_id).map_err(|e| e.to_string())?;
        check_not_in_future("occurred_at", raw.occurred_at).map_err(|e| e.to_string())?;
        if DomainEvent::current_schema_version(&raw.event_type).is_none() {
            return Err(format!(
                "event_type: unknown event type {:?}",
                raw.event_type
            ));
        }
        let event = DomainEvent::from_json(&raw.event_type, raw.schema_version, &raw.payload)
            .map_err(|e| match e {
                crate::domain::DecodeError::Field { .. } => format!("payload.{e}"),
                other => other.to_string(),
            })?;
        let event_id = raw.event_id.unwrap_or_else(|| {
            derived_id(&format!(
                "jsonl/{customer}/{}/{}/{}",
                raw.event_type,
                raw.occurred_at.timestamp_micros(),
                to_canonical_string(&without_profile_values(&raw.payload))
            ))
        });
        let metadata = raw.metadata.unwrap_or_else(|| EventMetadata {
            actor: Some("import".into()),
            source: Some("jsonl".into()),
            ..Default::default()
        });
        let new = NewEvent::from_domain(event_id, raw.occurred_at, &metadata, &event)
            .map_err(|e| format!("payload.{e}"))?;
        Ok(Some(LineEvents {
            stream: customer.stream_id(),
            events: vec![new],
        }))
    }
}

/// The payload with every profile value replaced by a placeholder.
fn without_profile_values(payload: &serde_json::Value) -> serde_json::Value {
    let mut copy = payload.clone();
    if let Some(profile) = copy.get_mut("profile").and_then(|p| p.as_object_mut()) {
        for value in profile.values_mut() {
            *value = serde_json::Value::String("<personal>".to_owned());
        }
    }
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_with_derived_ids() {
        let line = r#"{"customer_id":"c1","event_type":"ConsentGiven","occurred_at":"2024-01-01T00:00:00Z","payload":{"purpose":"marketing_email"}}"#;
        let a = JsonlParser.parse_line(1, line).unwrap().unwrap();
        let b = JsonlParser.parse_line(9, line).unwrap().unwrap();
        assert_eq!(a.events[0].event_id(), b.events[0].event_id());
        assert_eq!(a.stream.as_str(), "customer-c1");
    }

    #[test]
    fn errors_name_the_field() {
        let unknown = r#"{"customer_id":"c1","event_type":"Teleported","occurred_at":"2024-01-01T00:00:00Z","payload":{}}"#;
        assert!(JsonlParser
            .parse_line(1, unknown)
            .unwrap_err()
            .contains("Teleported"));
        let negative = r#"{"customer_id":"c1","event_type":"PointsRedeemed","occurred_at":"2024-01-01T00:00:00Z","payload":{"redemption_id":"r","points":-5}}"#;
        assert_eq!(
            JsonlParser.parse_line(1, negative).unwrap_err(),
            "payload.points: must be greater than zero"
        );
        let extra = r#"{"customer_id":"c1","event_type":"ConsentGiven","occurred_at":"2024-01-01T00:00:00Z","payload":{"purpose":"x"},"colour":1}"#;
        assert!(JsonlParser
            .parse_line(1, extra)
            .unwrap_err()
            .contains("unknown field `colour`"));
        let wrong_type = r#"{"customer_id":"c1","event_type":"SessionRecorded","occurred_at":"2024-01-01T00:00:00Z","payload":{"session_id":"s","channel":"web","duration_secs":"long"}}"#;
        assert_eq!(
            JsonlParser.parse_line(1, wrong_type).unwrap_err(),
            "payload.duration_secs: invalid type: string \"long\", expected u32"
        );
        assert!(JsonlParser
            .parse_line(1, "{not json")
            .unwrap_err()
            .starts_with("invalid event JSON"));
    }
}

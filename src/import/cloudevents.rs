//! CloudEvents 1.0 (the CNCF envelope event routers speak): structured JSON,
//! batches (`application/cloudevents-batch+json`) and binary mode over HTTP
//! (`POST /cloudevents`), and `journey import --format cloudevents` (one
//! structured event per line). Envelopes are parsed by the CloudEvents SDK
//! crate; this module only maps them to ledger events:
//!
//! - `type` is the ledger event type (`OrderPlaced`), after stripping the
//!   configured prefix (e.g. `com.example.journey.`);
//! - `subject` is the customer id; `time` when it happened (else when it was
//!   received); `data` the payload (JSON, the current schema version unless
//!   the extension `schemaversion` says otherwise);
//! - `id` + `source` are the idempotency key (the spec makes them unique),
//!   so a redelivered event is stored once;
//! - a customer first seen here is registered with channel `cloudevents`
//!   (or the extension `channel`); a `CustomerRegistered` event registers
//!   them itself.

use chrono::{DateTime, Utc};
use cloudevents::event::ExtensionValue;
use cloudevents::{AttributesReader, Data, Event};
use serde_json::Value;

use std::io::BufRead;
use std::sync::Arc;

use super::ingest::{Action, Incoming, Ingestor, Status};
use super::{check_not_in_future, derived_id, ImportError, ImportReport, BATCH_EVENTS};
use crate::domain::{CustomerId, DomainEvent, EventMetadata};
use crate::privacy::Vault;
use crate::store::EventStore;

/// Event types no external source may record: they have commands of their
/// own with checks an envelope cannot carry.
const COMMAND_ONLY: [(&str, &str); 3] = [
    ("PersonalDataErased", "use the eraseCustomer mutation"),
    ("ReadModelsRebuilt", "use journey rebuild"),
    (
        "PointsRedeemed",
        "redemptions are checked against the balance; use the redeemPoints mutation",
    ),
];

/// How envelopes are read.
#[derive(Debug, Clone, Default)]
pub struct CloudEventsOptions {
    /// Stripped from `type` before it names a ledger event type.
    pub type_prefix: Option<String>,
}

/// Parses one structured-mode event from JSON; the error is the SDK's.
pub fn parse_structured(value: Value) -> Result<Event, String> {
    serde_json::from_value::<Event>(value).map_err(|e| format!("not a CloudEvent: {e}"))
}

impl CloudEventsOptions {
    /// Converts one envelope received by the key named `source_name`.
    pub fn convert(
        &self,
        source_name: &str,
        event: &Event,
        received_at: DateTime<Utc>,
    ) -> Result<Incoming, String> {
        let ty = event.ty();
        let event_type = match &self.type_prefix {
            Some(prefix) => ty.strip_prefix(prefix.as_str()).ok_or_else(|| {
                format!("type: {ty:?} does not start with the configured prefix {prefix:?}")
            })?,
            None => ty,
        };
        if let Some((_, why)) = COMMAND_ONLY.iter().find(|(t, _)| *t == event_type) {
            return Err(format!(
                "type: {event_type} is not accepted from outside; {why}"
            ));
        }
        if DomainEvent::current_schema_version(event_type).is_none() {
            return Err(format!(
                "type: {ty:?} names no ledger event type (e.g. OrderPlaced, SessionRecorded)"
            ));
        }
        let subject = event
            .subject()
            .ok_or("subject: missing; it names the customer")?;
        let customer = CustomerId::parse(subject).map_err(|e| format!("subject: {}", e.reason))?;
        let occurred_at = match event.time() {
            Some(at) => {
                check_not_in_future("time", *at).map_err(|e| e.to_string())?;
                *at
            }
            None => received_at,
        };
        let schema_version = match event.extension("schemaversion") {
            None => None,
            Some(ExtensionValue::Integer(v)) if *v > 0 && *v <= u32::MAX as i64 => Some(*v as u32),
            Some(ExtensionValue::String(s)) => Some(
                s.parse()
                    .map_err(|_| format!("schemaversion: {s:?} is not a version number"))?,
            ),
            Some(other) => return Err(format!("schemaversion: {other} is not a version number")),
        };
        let payload = match event.data() {
            Some(Data::Json(v)) => v.clone(),
            Some(Data::String(s)) => serde_json::from_str(s)
                .map_err(|e| format!("data: not JSON ({e}); send the payload as JSON"))?,
            Some(Data::Binary(b)) => serde_json::from_slice(b)
                .map_err(|e| format!("data: not JSON ({e}); send the payload as JSON"))?,
            None => return Err("data: missing; it carries the event's payload".into()),
        };
        let domain = DomainEvent::from_json(event_type, schema_version, &payload)
            .map_err(|e| format!("data.{e}"))?;
        domain.validate().map_err(|e| format!("data.{e}"))?;
        let source = event.source().to_string();
        if source.len() > 512 {
            return Err("source: longer than 512 bytes".into());
        }
        let channel = match event.extension("channel") {
            Some(ExtensionValue::String(c)) if !c.trim().is_empty() && c.len() <= 64 => c.clone(),
            _ => "cloudevents".into(),
        };
        Ok(Incoming {
            customer,
            occurred_at,
            action: Action::Record {
                event_id: derived_id(&format!("cloudevents/{source}/{}", event.id())),
                event: domain,
            },
            metadata: EventMetadata {
                actor: Some(source_name.to_owned()),
                source: Some(format!("cloudevents:{source}")),
                ..Default::default()
            },
            channel,
            reference: Some(event.id().to_owned()),
        })
    }
}

/// `journey import --format cloudevents`: one structured CloudEvent per
/// line, stored in batches like the HTTP endpoint does (new customers
/// registered, redeliveries stored once). A line that does not convert
/// stops the import before its batch is stored, with `file:line: reason`.
pub async fn import_lines(
    store: Arc<dyn EventStore>,
    vault: Option<Arc<Vault>>,
    file_name: &str,
    reader: impl BufRead,
    options: &CloudEventsOptions,
    progress: &mut impl FnMut(u64),
) -> Result<ImportReport, ImportError> {
    let ingestor = Ingestor::new(store, vault, None);
    let mut report = ImportReport::default();
    let mut streams = std::collections::HashSet::new();
    let mut batch: Vec<(usize, Incoming)> = Vec::new();
    let mut bytes = 0u64;
    let line_error = |line: usize, reason: String| ImportError::Line {
        file: file_name.to_owned(),
        line,
        reason,
    };
    let now = chrono::Utc::now();
    let mut lines = reader.lines().enumerate().peekable();
    while let Some((index, line)) = lines.next() {
        let line_no = index + 1;
        let line = line.map_err(|source| ImportError::Io {
            file: file_name.to_owned(),
            source,
        })?;
        bytes += line.len() as u64 + 1;
        report.lines = line_no;
        if !line.trim().is_empty() {
            let value: Value = serde_json::from_str(&line)
                .map_err(|e| line_error(line_no, format!("invalid JSON: {e}")))?;
            let incoming = parse_structured(value)
                .and_then(|event| options.convert("import", &event, now))
                .map_err(|reason| line_error(line_no, reason))?;
            streams.insert(incoming.customer.clone());
            batch.push((line_no, incoming));
        }
        if batch.len() >= BATCH_EVENTS || (lines.peek().is_none() && !batch.is_empty()) {
            let first_line = batch[0].0;
            let (numbers, items): (Vec<usize>, Vec<_>) = std::mem::take(&mut batch)
                .into_iter()
                .map(|(n, i)| (n, Ok(i)))
                .unzip();
            let outcomes = ingestor
                .ingest(items)
                .await
                .map_err(|source| ImportError::Store {
                    file: file_name.to_owned(),
                    first_line,
                    last_line: line_no,
                    source,
                })?;
            for (outcome, number) in outcomes.iter().zip(&numbers) {
                match outcome.status {
                    Status::Accepted => report.appended += 1,
                    Status::Refused => {
                        return Err(line_error(
                            *number,
                            outcome.reason.clone().unwrap_or_default(),
                        ))
                    }
                    _ => report.already_stored += 1,
                }
            }
            progress(bytes);
        }
    }
    progress(bytes);
    report.streams = streams.len();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope(ty: &str, data: Value) -> Event {
        parse_structured(json!({
            "specversion": "1.0", "id": "e-1", "source": "/shop", "type": ty,
            "subject": "c-1", "time": "2024-02-01T08:00:00Z", "data": data
        }))
        .unwrap()
    }

    #[test]
    fn envelopes_become_events_with_ids_from_id_and_source() {
        let options = CloudEventsOptions {
            type_prefix: Some("com.example.journey.".into()),
        };
        let ev = envelope(
            "com.example.journey.SessionRecorded",
            json!({"session_id": "s", "channel": "web"}),
        );
        let incoming = options.convert("router", &ev, Utc::now()).unwrap();
        assert_eq!(incoming.customer.as_str(), "c-1");
        let Action::Record { event_id, event } = incoming.action else {
            panic!()
        };
        assert_eq!(event_id, derived_id("cloudevents//shop/e-1"));
        assert_eq!(event.event_type(), "SessionRecorded");
    }

    #[test]
    fn refusals_name_the_attribute_or_field() {
        let options = CloudEventsOptions::default();
        let err = |ev: Event| options.convert("r", &ev, Utc::now()).unwrap_err();
        assert!(err(envelope("Teleported", json!({}))).starts_with("type: \"Teleported\""));
        assert!(err(envelope("PersonalDataErased", json!({}))).contains("eraseCustomer"));
        assert_eq!(
            err(envelope(
                "SessionRecorded",
                json!({"session_id": 5, "channel": "web"})
            )),
            "data.session_id: invalid type: integer `5`, expected a string"
        );
        assert!(parse_structured(json!({"specversion": "1.0", "type": "x"}))
            .unwrap_err()
            .starts_with("not a CloudEvent"));
    }
}

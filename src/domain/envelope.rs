//! The envelope around every stored event: identity, order, time, metadata
//! and the hash chain, with the payload kept as canonical JSON text.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::canonical::to_canonical_string;
use super::customer::StreamId;
use super::events::{DecodeError, DomainEvent};
use super::hash::{format_instant, EventHash, HashInput};
use super::validation::ValidationError;

/// Who and what caused an event; carried alongside, never in, the payload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventMetadata {
    /// Groups all events caused by one business request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The event or command that directly caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// Who did it: a user, an API key name, `import`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Where it came from: `cdnow:cdnow_master.txt:17`, `graphql`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl EventMetadata {
    /// Longest `actor`, in bytes (API key names, user ids, tool names).
    pub const MAX_ACTOR_BYTES: usize = 256;
    /// Longest `source`, in bytes (a file path and line, an endpoint).
    pub const MAX_SOURCE_BYTES: usize = 1024;

    /// Checks the free-text fields: bounded and printable, like payload
    /// text, so metadata cannot carry what a payload may not (a 10 MB
    /// `actor` was once stored).
    pub fn validate(&self) -> Result<(), ValidationError> {
        for (field, value, max) in [
            ("metadata.actor", &self.actor, Self::MAX_ACTOR_BYTES),
            ("metadata.source", &self.source, Self::MAX_SOURCE_BYTES),
        ] {
            let Some(value) = value else { continue };
            if value.len() > max {
                return Err(ValidationError::new(
                    field,
                    format!("must be at most {max} bytes, got {}", value.len()),
                ));
            }
            if value.chars().any(char::is_control) {
                return Err(ValidationError::new(
                    field,
                    "must not contain control characters",
                ));
            }
        }
        Ok(())
    }

    /// Canonical JSON text of the metadata, as stored and hashed.
    pub fn to_canonical_json(&self) -> String {
        to_canonical_string(&serde_json::to_value(self).expect("metadata serializes"))
    }
}

/// Truncates an instant to microseconds, the precision every store keeps,
/// so that what is hashed at append time equals what is read back.
pub fn truncate_to_micros(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(at.timestamp_micros()).expect("in range")
}

/// An event about to be appended. Its payload is already canonical JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    event_id: Uuid,
    event_type: String,
    schema_version: u32,
    occurred_at: DateTime<Utc>,
    metadata_json: String,
    payload_json: String,
}

impl NewEvent {
    /// Wraps a validated domain event at its current schema version.
    pub fn from_domain(
        event_id: Uuid,
        occurred_at: DateTime<Utc>,
        metadata: &EventMetadata,
        event: &DomainEvent,
    ) -> Result<Self, ValidationError> {
        event.validate()?;
        metadata.validate()?;
        Ok(Self::from_parts(
            event_id,
            event.event_type(),
            event.schema_version(),
            occurred_at,
            metadata,
            &event.to_payload(),
        ))
    }

    /// Builds an envelope from raw parts without domain validation.
    ///
    /// Stores are type-agnostic; this is how tests and tools append payloads
    /// the domain does not know (they then fail to decode, clearly).
    pub fn from_parts(
        event_id: Uuid,
        event_type: &str,
        schema_version: u32,
        occurred_at: DateTime<Utc>,
        metadata: &EventMetadata,
        payload: &serde_json::Value,
    ) -> Self {
        Self {
            event_id,
            event_type: event_type.to_owned(),
            schema_version,
            occurred_at: truncate_to_micros(occurred_at),
            metadata_json: metadata.to_canonical_json(),
            payload_json: to_canonical_string(payload),
        }
    }

    /// Unique id; appending the same id twice is idempotent.
    pub fn event_id(&self) -> Uuid {
        self.event_id
    }
    /// Event type name, e.g. `OrderPlaced`.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }
    /// Payload schema version.
    pub fn schema_version(&self) -> u32 {
        self.schema_version
    }
    /// When the interaction happened (UTC, microseconds).
    pub fn occurred_at(&self) -> DateTime<Utc> {
        self.occurred_at
    }
    /// Canonical JSON text of the metadata.
    pub fn metadata_json(&self) -> &str {
        &self.metadata_json
    }
    /// Canonical JSON text of the payload.
    pub fn payload_json(&self) -> &str {
        &self.payload_json
    }

    /// Computes this event's chained hash once the store has placed it.
    pub fn chain_hash(
        &self,
        previous: &EventHash,
        stream_id: &StreamId,
        version: u64,
        recorded_at: &DateTime<Utc>,
    ) -> EventHash {
        HashInput {
            previous,
            stream_id: stream_id.as_str(),
            version,
            event_id: &self.event_id,
            event_type: &self.event_type,
            schema_version: self.schema_version,
            occurred_at: &self.occurred_at,
            recorded_at,
            metadata_json: &self.metadata_json,
            payload_json: &self.payload_json,
        }
        .compute()
    }

    /// Whether a stored event carries exactly this content (idempotency).
    pub fn same_content_as(&self, stored: &RecordedEvent) -> bool {
        self.event_id == stored.event_id
            && self.event_type == stored.event_type
            && self.schema_version == stored.schema_version
            && self.occurred_at == stored.occurred_at
            && self.metadata_json == stored.metadata_json
            && self.payload_json == stored.payload_json
    }
}

/// An event as stored: the envelope plus its place in stream and global order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// Unique id.
    pub event_id: Uuid,
    /// The stream it belongs to.
    pub stream_id: StreamId,
    /// 1-based, contiguous version within the stream.
    pub version: u64,
    /// Global position: strictly increasing in commit order.
    pub position: u64,
    /// Event type name.
    pub event_type: String,
    /// Payload schema version as written.
    pub schema_version: u32,
    /// When it happened.
    #[serde(with = "instant_micros")]
    pub occurred_at: DateTime<Utc>,
    /// When the ledger stored it.
    #[serde(with = "instant_micros")]
    pub recorded_at: DateTime<Utc>,
    /// Canonical JSON of the metadata, exactly as stored and hashed.
    #[serde(rename = "metadata", with = "raw_json")]
    pub metadata_json: String,
    /// Canonical JSON of the payload, exactly as stored and hashed.
    #[serde(rename = "payload", with = "raw_json")]
    pub payload_json: String,
    /// Chained SHA-256 (see [`super::hash`]).
    pub hash: EventHash,
}

impl RecordedEvent {
    /// Decodes the payload into the typed domain model (upcasting old versions).
    pub fn decode(&self) -> Result<DomainEvent, DecodeError> {
        DomainEvent::decode(&self.event_type, self.schema_version, &self.payload_json)
    }

    /// Parses the metadata.
    pub fn metadata(&self) -> Result<EventMetadata, serde_json::Error> {
        serde_json::from_str(&self.metadata_json)
    }

    /// Recomputes this event's hash given the previous event's hash.
    pub fn recompute_hash(&self, previous: &EventHash) -> EventHash {
        HashInput {
            previous,
            stream_id: self.stream_id.as_str(),
            version: self.version,
            event_id: &self.event_id,
            event_type: &self.event_type,
            schema_version: self.schema_version,
            occurred_at: &self.occurred_at,
            recorded_at: &self.recorded_at,
            metadata_json: &self.metadata_json,
            payload_json: &self.payload_json,
        }
        .compute()
    }
}

/// Serializes instants as RFC 3339 with microseconds, the hashed format.
mod instant_micros {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_instant(at))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

/// Writes stored JSON text as embedded JSON (not as a string) and reads it
/// back into canonical text, so exported events stay verifiable.
mod raw_json {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_json::value::RawValue;

    pub fn serialize<S: Serializer>(text: &str, s: S) -> Result<S::Ok, S::Error> {
        let raw: &RawValue = serde_json::from_str(text).map_err(serde::ser::Error::custom)?;
        serde::Serialize::serialize(raw, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        Ok(crate::domain::canonical::to_canonical_string(&value))
    }
}

/// Formats an instant for display and JSON output.
pub fn display_instant(at: &DateTime<Utc>) -> String {
    format_instant(at)
}

//! The per-stream SHA-256 hash chain that makes history tamper-evident.
//!
//! # Canonical encoding (version 1)
//!
//! The hash of the event at version `n` of a stream is
//! `SHA-256(encoding)`, where `encoding` is the ASCII tag
//! `journey-ledger/event/v1` followed by these fields, each written as an
//! unsigned 64-bit big-endian byte length and then the bytes:
//!
//! 1. the previous event's hash in the same stream (32 bytes; 32 zero bytes
//!    for version 1),
//! 2. the stream id (UTF-8),
//! 3. the stream version (8 bytes, big-endian),
//! 4. the event id (the UUID's 16 bytes),
//! 5. the event type (UTF-8),
//! 6. the schema version (4 bytes, big-endian),
//! 7. `occurred_at` as RFC 3339 UTC with exactly 6 fractional digits and `Z`,
//! 8. `recorded_at`, in the same format,
//! 9. the metadata as canonical JSON ([`super::canonical`]),
//! 10. the payload as canonical JSON.
//!
//! The global position is deliberately *not* hashed: it is assigned at commit
//! time and a backend such as EventStoreDB only knows it afterwards. The
//! global order is verified separately (positions strictly increasing, and
//! each stream's versions increasing with position).

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Domain-separation tag that starts every hashed encoding.
pub const HASH_TAG: &[u8] = b"journey-ledger/event/v1";

/// A SHA-256 digest in the chain.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EventHash(pub [u8; 32]);

impl EventHash {
    /// The "previous hash" of a stream's first event.
    pub const GENESIS: EventHash = EventHash([0u8; 32]);

    /// Parses a 64-character lower-case hex digest.
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let bytes = hex::decode(text).map_err(|e| format!("hash is not hex: {e}"))?;
        Self::from_slice(&bytes)
    }

    /// Wraps 32 raw bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, String> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| format!("hash must be 32 bytes, got {}", bytes.len()))?;
        Ok(Self(arr))
    }

    /// Lower-case hex text.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for EventHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventHash({})", self.to_hex())
    }
}

impl fmt::Display for EventHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl TryFrom<String> for EventHash {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::from_hex(&value)
    }
}

impl From<EventHash> for String {
    fn from(value: EventHash) -> Self {
        value.to_hex()
    }
}

/// Formats an instant the way the hash encoding (and JSON output) does.
pub fn format_instant(at: &DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// The fields of an event that the chain covers, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct HashInput<'a> {
    /// Hash of the previous event in the stream (or [`EventHash::GENESIS`]).
    pub previous: &'a EventHash,
    /// Stream name.
    pub stream_id: &'a str,
    /// 1-based version within the stream.
    pub version: u64,
    /// Event id.
    pub event_id: &'a Uuid,
    /// Event type name.
    pub event_type: &'a str,
    /// Payload schema version.
    pub schema_version: u32,
    /// When it happened.
    pub occurred_at: &'a DateTime<Utc>,
    /// When the ledger stored it.
    pub recorded_at: &'a DateTime<Utc>,
    /// Canonical JSON of the metadata.
    pub metadata_json: &'a str,
    /// Canonical JSON of the payload.
    pub payload_json: &'a str,
}

impl HashInput<'_> {
    /// Computes the chained hash.
    pub fn compute(&self) -> EventHash {
        fn field(h: &mut Sha256, bytes: &[u8]) {
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        }
        let mut h = Sha256::new();
        h.update(HASH_TAG);
        field(&mut h, &self.previous.0);
        field(&mut h, self.stream_id.as_bytes());
        field(&mut h, &self.version.to_be_bytes());
        field(&mut h, self.event_id.as_bytes());
        field(&mut h, self.event_type.as_bytes());
        field(&mut h, &self.schema_version.to_be_bytes());
        field(&mut h, format_instant(self.occurred_at).as_bytes());
        field(&mut h, format_instant(self.recorded_at).as_bytes());
        field(&mut h, self.metadata_json.as_bytes());
        field(&mut h, self.payload_json.as_bytes());
        EventHash(h.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn input<'a>(
        prev: &'a EventHash,
        id: &'a Uuid,
        at: &'a DateTime<Utc>,
        payload: &'a str,
    ) -> HashInput<'a> {
        HashInput {
            previous: prev,
            stream_id: "customer-1",
            version: 1,
            event_id: id,
            event_type: "OrderPlaced",
            schema_version: 2,
            occurred_at: at,
            recorded_at: at,
            metadata_json: "{}",
            payload_json: payload,
        }
    }

    #[test]
    fn every_field_changes_the_hash() {
        let id = Uuid::from_u128(7);
        let at = Utc.with_ymd_and_hms(1997, 1, 1, 0, 0, 0).unwrap();
        let base = input(&EventHash::GENESIS, &id, &at, "{}").compute();
        let other_prev = EventHash([1; 32]);
        assert_ne!(base, input(&other_prev, &id, &at, "{}").compute());
        assert_ne!(
            base,
            input(&EventHash::GENESIS, &id, &at, "{\"a\":1}").compute()
        );
        let mut moved = input(&EventHash::GENESIS, &id, &at, "{}");
        moved.version = 2;
        assert_ne!(base, moved.compute());
        // Length prefixes stop field boundaries from being shifted.
        let mut a = input(&EventHash::GENESIS, &id, &at, "{}");
        a.stream_id = "customer-1";
        a.event_type = "xOrderPlaced";
        let mut b = input(&EventHash::GENESIS, &id, &at, "{}");
        b.stream_id = "customer-1x";
        b.event_type = "OrderPlaced";
        assert_ne!(a.compute(), b.compute());
    }

    #[test]
    fn hex_round_trips_and_instants_have_micros() {
        let h = EventHash([0xab; 32]);
        assert_eq!(EventHash::from_hex(&h.to_hex()).unwrap(), h);
        assert!(EventHash::from_hex("abc").is_err());
        let at = Utc.with_ymd_and_hms(1997, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(format_instant(&at), "1997-01-01T00:00:00.000000Z");
    }
}

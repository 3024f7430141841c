//! Pure translation between the ledger's model and EventStoreDB's, kept
//! free of I/O so every rule is unit-tested without a server.
//!
//! - **URLs**: `esdb://`, `esdb+discover://`, `kurrentdb://` and
//!   `kurrentdb+discover://` connection strings; our own `namespace=`
//!   parameter is taken out before the rest goes to the `eventstore` client.
//! - **Stream names**: with a namespace `ns`, stream `customer-42` lives in
//!   the server stream `ns_customer-42`; anything else is not ours.
//! - **Versions**: ours count events from 1; ESDB revisions number them
//!   from 0, so version `n` is revision `n - 1`.
//! - **Positions**: the ledger position of an event is `2 × commit + 1`,
//!   where `commit` is its commit position in `$all` (for the implicit
//!   transactions every gRPC append makes, each event's commit position is
//!   its own log position). Odd positions name an event; `position + 1`
//!   (even) means "just after it". Both map back to a real log record, which
//!   is the only place ESDB lets a `$all` read start.
//! - **Envelope**: the payload is the ESDB event data, byte for byte; the
//!   rest of our envelope (id, version, schema version, instants, metadata,
//!   hash) travels as the event's custom metadata, a JSON object.

use chrono::{DateTime, Utc};
use eventstore::{CurrentRevision, EventData, ExpectedRevision, Position, StreamPosition};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::domain::hash::format_instant;
use crate::domain::{EventHash, NewEvent, RecordedEvent, StreamId};
use crate::store::{ExpectedVersion, StoreError};

/// Backend name used in errors and [`crate::store::EventStore::backend`].
pub const BACKEND: &str = "eventstoredb";

/// Version of the envelope layout written into custom metadata.
pub const ENVELOPE_FORMAT: u32 = 1;

/// URL schemes this backend accepts, and the scheme the client expects.
const SCHEMES: [(&str, &str); 4] = [
    ("esdb://", "esdb://"),
    ("esdb+discover://", "esdb+discover://"),
    ("kurrentdb://", "esdb://"),
    ("kurrentdb+discover://", "esdb+discover://"),
];

/// Our own query parameter: the stream-name namespace.
const NAMESPACE_PARAM: &str = "namespace";

/// Builds a backend error with a message.
pub fn backend_error(message: impl Into<String>) -> StoreError {
    StoreError::Backend {
        backend: BACKEND,
        message: message.into(),
    }
}

/// Whether a store URL names this backend.
pub fn is_esdb_url(url: &str) -> bool {
    scheme_of(url).is_some()
}

fn scheme_of(url: &str) -> Option<(usize, &'static str)> {
    let lower = url.get(..24).unwrap_or(url).to_ascii_lowercase();
    SCHEMES
        .iter()
        .find(|(ours, _)| lower.starts_with(ours))
        .map(|(ours, client)| (ours.len(), *client))
}

/// A store URL split into the client's connection string and our options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EsdbUrl {
    /// Connection string for the `eventstore` client (`esdb://…`).
    pub client_url: String,
    /// Stream-name namespace isolating this ledger; empty for none.
    pub namespace: String,
}

/// Parses `esdb://host:2113?tls=false&namespace=ns` and its variants.
///
/// Gossip seeds (`esdb://a:2113,b:2113`) pass through untouched, which is
/// why this works on the text rather than through a URL parser.
pub fn parse_url(url: &str) -> Result<EsdbUrl, StoreError> {
    let (scheme_len, client_scheme) =
        scheme_of(url).ok_or_else(|| StoreError::UnsupportedUrl(url.to_owned()))?;
    let rest = &url[scheme_len..];
    let (authority, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    if authority.trim_matches('/').is_empty() {
        return Err(backend_error(format!(
            "store URL {url:?} names no host: use esdb://HOST:2113?tls=false"
        )));
    }
    let mut namespace = String::new();
    let mut kept = Vec::new();
    for param in query.into_iter().flat_map(|q| q.split('&')) {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        if key.eq_ignore_ascii_case(NAMESPACE_PARAM) {
            validate_namespace(value)?;
            namespace = value.to_owned();
        } else if !param.is_empty() {
            kept.push(param);
        }
    }
    let mut client_url = format!("{client_scheme}{authority}");
    if !kept.is_empty() {
        client_url.push('?');
        client_url.push_str(&kept.join("&"));
    }
    Ok(EsdbUrl {
        client_url,
        namespace,
    })
}

/// Checks a namespace: 1–64 ASCII letters, digits or `_`, starting with a
/// letter (so a namespaced stream can never look like a `$` system stream).
pub fn validate_namespace(namespace: &str) -> Result<(), StoreError> {
    let ok = !namespace.is_empty()
        && namespace.len() <= 64
        && namespace.starts_with(|c: char| c.is_ascii_alphabetic())
        && namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(backend_error(format!(
            "namespace {namespace:?} must be 1 to 64 letters, digits or _, starting with a letter"
        )))
    }
}

/// The server stream holding a ledger stream.
pub fn server_stream_name(namespace: &str, stream: &StreamId) -> String {
    if namespace.is_empty() {
        stream.as_str().to_owned()
    } else {
        format!("{namespace}_{}", stream.as_str())
    }
}

/// The ledger stream a server stream holds, or `None` when it is not ours
/// (system streams, other namespaces, other applications' streams).
pub fn ledger_stream_name(namespace: &str, server_name: &str) -> Option<StreamId> {
    if server_name.starts_with('$') {
        return None;
    }
    let name = if namespace.is_empty() {
        server_name
    } else {
        server_name
            .strip_prefix(namespace)?
            .strip_prefix('_')
            .filter(|rest| !rest.is_empty())?
    };
    StreamId::parse(name).ok()
}

/// The ESDB expectation equivalent to ours: version `n` (n ≥ 1) is revision
/// `n - 1`; version 0 means the stream does not exist.
pub fn expected_revision(expected: ExpectedVersion) -> ExpectedRevision {
    match expected {
        ExpectedVersion::Any => ExpectedRevision::Any,
        ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => ExpectedRevision::NoStream,
        ExpectedVersion::Exact(version) => ExpectedRevision::Exact(version - 1),
    }
}

/// Our version of the event at an ESDB revision.
pub fn version_of_revision(revision: u64) -> u64 {
    revision + 1
}

/// The version a stream is at, from the server's view of its revision.
pub fn current_version(current: CurrentRevision) -> u64 {
    match current {
        CurrentRevision::NoStream => 0,
        CurrentRevision::Current(revision) => version_of_revision(revision),
    }
}

/// Where a stream read starts, or `None` when it can return nothing
/// (backwards from version 0).
pub fn stream_read_start(
    backwards: bool,
    from_version: Option<u64>,
) -> Option<StreamPosition<u64>> {
    match (backwards, from_version) {
        (false, None | Some(0)) => Some(StreamPosition::Start),
        (false, Some(v)) => Some(StreamPosition::Position(v - 1)),
        (true, None) => Some(StreamPosition::End),
        (true, Some(0)) => None,
        (true, Some(v)) => Some(StreamPosition::Position(v - 1)),
    }
}

/// The ledger position of an event at `commit` in `$all`.
pub fn ledger_position(commit: u64) -> Result<u64, StoreError> {
    if commit == u64::MAX {
        // Servers older than 22.10 report no $all position on stream reads.
        return Err(backend_error(
            "the server reported no $all position for an event read from its stream; \
             EventStoreDB 22.10 or newer (or any KurrentDB) is required",
        ));
    }
    commit
        .checked_mul(2)
        .and_then(|p| p.checked_add(1))
        .ok_or_else(|| backend_error(format!("commit position {commit} is out of range")))
}

/// Where a forward `$all` read for "ledger position ≥ `from`" begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllReadStart {
    /// The (real) log position to start at, inclusive.
    pub start: StreamPosition<Position>,
    /// Skip events at or before this commit position (the "just after"
    /// form of `from`).
    pub skip_through: Option<u64>,
}

/// Maps a ledger `from` position onto a `$all` read.
///
/// `0` starts at the beginning; an odd `from` (an event's position) starts
/// at that event; an even `from` (an event's position + 1) starts at that
/// event and skips it. Positions not obtained from this store may point
/// into the middle of a log record, which the server rejects.
pub fn all_read_start(from: u64) -> AllReadStart {
    if from == 0 {
        return AllReadStart {
            start: StreamPosition::Start,
            skip_through: None,
        };
    }
    let (commit, skip) = if from % 2 == 1 {
        ((from - 1) / 2, None)
    } else {
        let commit = from / 2 - 1;
        (commit, Some(commit))
    };
    AllReadStart {
        start: StreamPosition::Position(Position {
            commit,
            prepare: commit,
        }),
        skip_through: skip,
    }
}

/// The envelope fields stored as the event's custom metadata.
#[derive(Debug, Serialize, Deserialize)]
struct StoredEnvelope {
    /// Layout version ([`ENVELOPE_FORMAT`]); marks the event as the ledger's.
    journey_ledger: u32,
    event_id: Uuid,
    version: u64,
    schema_version: u32,
    occurred_at: String,
    recorded_at: String,
    /// The canonical metadata JSON, embedded verbatim.
    metadata: Box<RawValue>,
    hash: String,
}

fn raw_json(text: &str, what: &str) -> Result<Box<RawValue>, StoreError> {
    RawValue::from_string(text.to_owned())
        .map_err(|e| backend_error(format!("{what} is not JSON: {e}")))
}

fn envelope(
    event: &NewEvent,
    version: u64,
    recorded_at: &DateTime<Utc>,
    hash: &EventHash,
) -> Result<StoredEnvelope, StoreError> {
    Ok(StoredEnvelope {
        journey_ledger: ENVELOPE_FORMAT,
        event_id: event.event_id(),
        version,
        schema_version: event.schema_version(),
        occurred_at: format_instant(&event.occurred_at()),
        recorded_at: format_instant(recorded_at),
        metadata: raw_json(event.metadata_json(), "event metadata")?,
        hash: hash.to_hex(),
    })
}

/// The custom-metadata bytes for an event placed at `version`.
pub fn encode_custom_metadata(
    event: &NewEvent,
    version: u64,
    recorded_at: &DateTime<Utc>,
    hash: &EventHash,
) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(&envelope(event, version, recorded_at, hash)?)
        .map_err(|e| backend_error(format!("encoding the envelope: {e}")))
}

/// The ESDB event for a planned row: payload as data, envelope as custom
/// metadata, our event id as the ESDB event id (so the server's own
/// idempotency applies too).
pub fn event_data(
    event: &NewEvent,
    version: u64,
    recorded_at: &DateTime<Utc>,
    hash: &EventHash,
) -> Result<EventData, StoreError> {
    let payload = raw_json(event.payload_json(), "event payload")?;
    let encode = |e: serde_json::Error| backend_error(format!("encoding event: {e}"));
    EventData::json(event.event_type(), &payload)
        .map_err(encode)?
        .id(event.event_id())
        .metadata_as_json(&envelope(event, version, recorded_at, hash)?)
        .map_err(encode)
}

/// Whether a server event is one the ledger never reads: system streams,
/// system event types (`$metadata`, `$>` links, statistics).
pub fn is_system_event(stream: &str, event_type: &str) -> bool {
    stream.starts_with('$') || event_type.starts_with('$')
}

/// Decodes a server event into a ledger event; `Ok(None)` when it is not
/// ours (see [`is_system_event`], [`ledger_stream_name`]).
///
/// An event in one of our streams without a valid envelope is
/// [`StoreError::Corrupt`]: something other than the ledger wrote there.
pub fn decode_event(
    namespace: &str,
    event: &eventstore::RecordedEvent,
) -> Result<Option<RecordedEvent>, StoreError> {
    if is_system_event(&event.stream_id, &event.event_type) {
        return Ok(None);
    }
    let Some(stream_id) = ledger_stream_name(namespace, &event.stream_id) else {
        return Ok(None);
    };
    let position = ledger_position(event.position.commit)?;
    let corrupt = |reason: String| StoreError::Corrupt {
        position,
        reason: format!("{} revision {}: {reason}", event.stream_id, event.revision),
    };
    let envelope: StoredEnvelope = serde_json::from_slice(&event.custom_metadata)
        .map_err(|e| corrupt(format!("custom metadata is not a ledger envelope: {e}")))?;
    if envelope.journey_ledger != ENVELOPE_FORMAT {
        return Err(corrupt(format!(
            "unknown envelope format {}",
            envelope.journey_ledger
        )));
    }
    if envelope.event_id != event.id {
        return Err(corrupt(format!(
            "envelope names event {} but the server stored {}",
            envelope.event_id, event.id
        )));
    }
    let version = version_of_revision(event.revision);
    if envelope.version != version {
        return Err(corrupt(format!(
            "envelope says version {} but the event sits at version {version}",
            envelope.version
        )));
    }
    let instant = |text: &str, field: &str| {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| corrupt(format!("{field} {text:?}: {e}")))
    };
    let payload_json = String::from_utf8(event.data.to_vec())
        .map_err(|e| corrupt(format!("payload is not UTF-8: {e}")))?;
    Ok(Some(RecordedEvent {
        event_id: envelope.event_id,
        stream_id,
        version,
        position,
        event_type: event.event_type.clone(),
        schema_version: envelope.schema_version,
        occurred_at: instant(&envelope.occurred_at, "occurred_at")?,
        recorded_at: instant(&envelope.recorded_at, "recorded_at")?,
        metadata_json: envelope.metadata.get().to_owned(),
        payload_json,
        hash: EventHash::from_hex(&envelope.hash).map_err(|e| corrupt(format!("hash: {e}")))?,
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use chrono::TimeZone;
    use serde_json::json;

    use super::*;
    use crate::domain::EventMetadata;

    fn stream(name: &str) -> StreamId {
        StreamId::parse(name).unwrap()
    }

    #[test]
    fn urls_of_every_accepted_scheme_parse() {
        for (url, client) in [
            (
                "esdb://localhost:2113?tls=false",
                "esdb://localhost:2113?tls=false",
            ),
            ("ESDB://localhost:2113", "esdb://localhost:2113"),
            (
                "esdb+discover://cluster.example:2113",
                "esdb+discover://cluster.example:2113",
            ),
            (
                "kurrentdb://10.0.0.1:2113?tls=false",
                "esdb://10.0.0.1:2113?tls=false",
            ),
            (
                "kurrentdb+discover://kdb.example?tlsVerifyCert=false",
                "esdb+discover://kdb.example?tlsVerifyCert=false",
            ),
            (
                "esdb://a:2113,b:2113,c:2113?tls=false&nodePreference=leader",
                "esdb://a:2113,b:2113,c:2113?tls=false&nodePreference=leader",
            ),
        ] {
            assert!(is_esdb_url(url), "{url}");
            let parsed = parse_url(url).unwrap();
            assert_eq!(parsed.client_url, client, "{url}");
            assert_eq!(parsed.namespace, "");
            client
                .parse::<eventstore::ClientSettings>()
                .unwrap_or_else(|e| panic!("client rejects {client}: {e}"));
        }
    }

    #[test]
    fn the_namespace_parameter_is_ours_and_removed() {
        let parsed =
            parse_url("esdb://h:2113?tls=false&namespace=staging_1&defaultDeadline=5000").unwrap();
        assert_eq!(parsed.namespace, "staging_1");
        assert_eq!(
            parsed.client_url,
            "esdb://h:2113?tls=false&defaultDeadline=5000"
        );
        let only = parse_url("esdb://h:2113?Namespace=t1").unwrap();
        assert_eq!(only.client_url, "esdb://h:2113");
        assert_eq!(only.namespace, "t1");
    }

    #[test]
    fn bad_urls_and_namespaces_are_refused_clearly() {
        assert!(!is_esdb_url("postgres://x"));
        assert!(!is_esdb_url("es"));
        assert!(matches!(
            parse_url("tcp://h:1113"),
            Err(StoreError::UnsupportedUrl(_))
        ));
        let err = parse_url("esdb://?tls=false").unwrap_err();
        assert!(err.to_string().contains("names no host"), "{err}");
        for bad in ["", "1abc", "a-b", "$sys", "a.b", &"x".repeat(65)] {
            let err = parse_url(&format!("esdb://h:2113?namespace={bad}")).unwrap_err();
            assert!(err.to_string().contains("namespace"), "{bad}: {err}");
        }
    }

    #[test]
    fn stream_names_round_trip_through_the_namespace() {
        let s = stream("customer-00042");
        assert_eq!(server_stream_name("", &s), "customer-00042");
        assert_eq!(server_stream_name("t9", &s), "t9_customer-00042");
        assert_eq!(ledger_stream_name("", "customer-00042"), Some(s.clone()));
        assert_eq!(
            ledger_stream_name("t9", "t9_customer-00042"),
            Some(s.clone())
        );
        assert_eq!(
            ledger_stream_name("t9", "t9_ledger-rebuild"),
            Some(stream("ledger-rebuild"))
        );
        // Not ours: other namespaces, the bare name, system and foreign streams.
        assert_eq!(ledger_stream_name("t9", "customer-00042"), None);
        assert_eq!(ledger_stream_name("t9", "t99_customer-00042"), None);
        assert_eq!(ledger_stream_name("t9", "t9_"), None);
        assert_eq!(ledger_stream_name("", "t9_customer-00042"), None);
        assert_eq!(ledger_stream_name("", "$ce-customer"), None);
        assert_eq!(ledger_stream_name("", "orders-1"), None);
        assert_eq!(ledger_stream_name("", "customer-bad id"), None);
    }

    #[test]
    fn expected_versions_map_to_zero_based_revisions() {
        assert_eq!(
            expected_revision(ExpectedVersion::Any),
            ExpectedRevision::Any
        );
        assert_eq!(
            expected_revision(ExpectedVersion::NoStream),
            ExpectedRevision::NoStream
        );
        assert_eq!(
            expected_revision(ExpectedVersion::Exact(0)),
            ExpectedRevision::NoStream
        );
        assert_eq!(
            expected_revision(ExpectedVersion::Exact(1)),
            ExpectedRevision::Exact(0)
        );
        assert_eq!(
            expected_revision(ExpectedVersion::Exact(u64::MAX)),
            ExpectedRevision::Exact(u64::MAX - 1)
        );
        assert_eq!(version_of_revision(0), 1);
        assert_eq!(current_version(CurrentRevision::NoStream), 0);
        assert_eq!(current_version(CurrentRevision::Current(4)), 5);
    }

    #[test]
    fn stream_reads_start_at_the_right_revision() {
        assert_eq!(stream_read_start(false, None), Some(StreamPosition::Start));
        assert_eq!(
            stream_read_start(false, Some(0)),
            Some(StreamPosition::Start)
        );
        assert_eq!(
            stream_read_start(false, Some(3)),
            Some(StreamPosition::Position(2))
        );
        assert_eq!(stream_read_start(true, None), Some(StreamPosition::End));
        assert_eq!(
            stream_read_start(true, Some(2)),
            Some(StreamPosition::Position(1))
        );
        assert_eq!(stream_read_start(true, Some(0)), None);
    }

    #[test]
    fn positions_are_odd_strictly_increasing_and_resume_at_real_records() {
        assert_eq!(ledger_position(0).unwrap(), 1);
        assert_eq!(ledger_position(1234).unwrap(), 2469);
        assert!(ledger_position(u64::MAX).is_err(), "missing position");
        assert!(ledger_position(u64::MAX / 2 + 1).is_err(), "overflow");
        let commits = [0u64, 117, 118, 5_000, 1 << 40];
        let positions: Vec<u64> = commits
            .iter()
            .map(|&c| ledger_position(c).unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]));

        assert_eq!(
            all_read_start(0),
            AllReadStart {
                start: StreamPosition::Start,
                skip_through: None
            }
        );
        for &commit in &commits {
            let p = ledger_position(commit).unwrap();
            let at = Position {
                commit,
                prepare: commit,
            };
            // `from = p` includes the event at `commit`…
            assert_eq!(
                all_read_start(p),
                AllReadStart {
                    start: StreamPosition::Position(at),
                    skip_through: None
                }
            );
            // …and `from = p + 1` starts at it but skips it.
            assert_eq!(
                all_read_start(p + 1),
                AllReadStart {
                    start: StreamPosition::Position(at),
                    skip_through: Some(commit)
                }
            );
        }
    }

    fn sample() -> NewEvent {
        NewEvent::from_parts(
            Uuid::from_u128(7),
            "OrderPlaced",
            2,
            Utc.with_ymd_and_hms(1997, 1, 3, 10, 11, 12).unwrap()
                + chrono::Duration::microseconds(345_678),
            &EventMetadata {
                actor: Some("opérateur 东".into()),
                source: Some("cdnow:x.txt:3".into()),
                ..Default::default()
            },
            &json!({"order_id": "o-1", "note": "Zoë \u{0} \"q\" 🎉", "amount": {"minor": 2933, "currency": "USD"}}),
        )
    }

    fn server_event(
        stream_id: &str,
        revision: u64,
        commit: u64,
        event: &NewEvent,
        custom_metadata: Vec<u8>,
    ) -> eventstore::RecordedEvent {
        eventstore::RecordedEvent {
            stream_id: stream_id.to_owned(),
            id: event.event_id(),
            revision,
            event_type: event.event_type().to_owned(),
            data: event.payload_json().as_bytes().to_vec().into(),
            metadata: HashMap::new(),
            custom_metadata: custom_metadata.into(),
            is_json: true,
            position: Position {
                commit,
                prepare: commit,
            },
            created: Utc::now(),
        }
    }

    #[test]
    fn the_envelope_round_trips_and_the_hash_chain_verifies() {
        let s = stream("customer-7");
        let recorded_at = crate::store::batch::now_micros();
        let first = sample();
        let h1 = first.chain_hash(&EventHash::GENESIS, &s, 1, &recorded_at);
        let meta = encode_custom_metadata(&first, 1, &recorded_at, &h1).unwrap();
        let text = String::from_utf8(meta.clone()).unwrap();
        assert!(text.contains("\"journey_ledger\":1"), "{text}");
        assert!(
            text.contains(first.metadata_json()),
            "metadata embedded verbatim: {text}"
        );
        // Building the ESDB event succeeds for the same inputs.
        event_data(&first, 1, &recorded_at, &h1).unwrap();

        let read = decode_event("ns", &server_event("ns_customer-7", 0, 4242, &first, meta))
            .unwrap()
            .expect("ours");
        assert!(first.same_content_as(&read), "{read:?}");
        assert_eq!(read.stream_id, s);
        assert_eq!(read.version, 1);
        assert_eq!(read.position, ledger_position(4242).unwrap());
        assert_eq!(read.recorded_at, recorded_at);
        assert_eq!(read.hash, h1);
        assert_eq!(read.recompute_hash(&EventHash::GENESIS), h1);
        assert_eq!(
            read.metadata().unwrap().actor.as_deref(),
            Some("opérateur 东")
        );
    }

    #[test]
    fn foreign_and_system_events_are_skipped() {
        let e = sample();
        let meta = encode_custom_metadata(&e, 1, &Utc::now(), &EventHash::GENESIS).unwrap();
        for stream_id in ["$stats-127.0.0.1:2113", "other_customer-7", "orders-1"] {
            let ev = server_event(stream_id, 0, 10, &e, meta.clone());
            assert!(decode_event("ns", &ev).unwrap().is_none(), "{stream_id}");
        }
        let mut link = server_event("ns_customer-7", 0, 10, &e, meta);
        link.event_type = "$>".into();
        assert!(decode_event("ns", &link).unwrap().is_none());
        assert!(is_system_event("x", "$metadata"));
        assert!(!is_system_event("customer-1", "OrderPlaced"));
    }

    #[test]
    fn damaged_envelopes_are_corrupt_not_skipped() {
        let e = sample();
        let at = Utc::now();
        let good = encode_custom_metadata(&e, 1, &at, &EventHash::GENESIS).unwrap();
        let reasons = |ev: eventstore::RecordedEvent| match decode_event("", &ev) {
            Err(StoreError::Corrupt { reason, .. }) => reason,
            other => panic!("expected Corrupt, got {other:?}"),
        };
        // Written by someone else: no envelope at all.
        assert!(
            reasons(server_event("customer-7", 0, 1, &e, b"{}".to_vec()))
                .contains("not a ledger envelope")
        );
        // The server placed it at another revision than the hash covers.
        assert!(reasons(server_event("customer-7", 3, 1, &e, good.clone())).contains("version 1"));
        // The ESDB event id differs from the envelope's.
        let mut other_id = server_event("customer-7", 0, 1, &e, good.clone());
        other_id.id = Uuid::from_u128(8);
        assert!(reasons(other_id).contains("server stored"));
        // Unknown layout version.
        let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
        v["journey_ledger"] = json!(99);
        assert!(reasons(server_event(
            "customer-7",
            0,
            1,
            &e,
            serde_json::to_vec(&v).unwrap()
        ))
        .contains("format 99"));
        // A bad hash.
        v["journey_ledger"] = json!(1);
        v["hash"] = json!("zz");
        assert!(reasons(server_event(
            "customer-7",
            0,
            1,
            &e,
            serde_json::to_vec(&v).unwrap()
        ))
        .contains("hash"));
        // A missing $all position (old servers) is a clear backend error.
        let old = server_event("customer-7", 0, u64::MAX, &e, good);
        assert!(decode_event("", &old)
            .unwrap_err()
            .to_string()
            .contains("22.10"));
    }
}

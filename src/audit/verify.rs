//! Verification of the hash chains and the global order, from a store or an
//! audit export.
//!
//! [`ChainVerifier`] is fed events in global-position order and keeps only
//! the last version, hash and position of every stream (memory is
//! O(streams), not O(events)). It checks:
//!
//! - every event's hash against the one recomputed from its content and its
//!   predecessor's hash (an edited payload, metadata, envelope or stored hash);
//! - versions contiguous from 1 in position order (a deleted or reordered
//!   event);
//! - global positions strictly increasing, and gapless where the backend
//!   promises it (a deleted event, whichever stream it was in);
//! - payload and metadata are canonical JSON, byte for byte (an edit that
//!   re-serialized them);
//! - at the end, each stream's recorded head (version and hash) against the
//!   last event of that stream (a deleted tail event, or an event inserted
//!   behind the ledger's back).
//!
//! Limits, stated honestly: the chain is an unkeyed SHA-256 chain. Someone
//! who edits the file *and* recomputes every later hash *and* rewrites the
//! `streams` heads is not detectable from the file alone — compare against a
//! head hash kept elsewhere (an audit export, see [`super::export`]). Global
//! positions are not hashed (see [`crate::domain::hash`]), so swapping the
//! positions of two events of *different* streams that keeps each stream's
//! order is not detected either; swaps within a stream are.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;
use thiserror::Error;

use crate::domain::canonical::canonicalize_text;
use crate::domain::{CustomerId, EventHash, RecordedEvent, StreamId};
use crate::store::{self, EventStore, ReadStream, StoreError, StreamHead};

/// Events per page when streaming the whole log.
pub const VERIFY_PAGE: usize = 10_000;

/// At most this many problems are kept; the rest are only counted.
pub const MAX_PROBLEMS: usize = 1_000;

/// What is wrong at one place in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    /// The stored hash differs from the one recomputed from the content.
    HashMismatch {
        /// Stream.
        stream: StreamId,
        /// Version.
        version: u64,
        /// Global position.
        position: u64,
        /// Hash in the store.
        stored: EventHash,
        /// Hash recomputed from the event's content and its predecessor.
        recomputed: EventHash,
    },
    /// Payload or metadata text is not canonical JSON (or not JSON at all).
    NotCanonical {
        /// Stream.
        stream: StreamId,
        /// Version.
        version: u64,
        /// Global position.
        position: u64,
        /// `payload` or `metadata`.
        field: &'static str,
        /// Why (parse error, or "not in canonical form").
        reason: String,
    },
    /// Versions skip: `missing_from..=missing_to` never appeared.
    VersionMissing {
        /// Stream.
        stream: StreamId,
        /// First missing version.
        missing_from: u64,
        /// Last missing version.
        missing_to: u64,
        /// The version and position before the hole (none: the stream
        /// starts after the hole).
        before: Option<(u64, u64)>,
        /// The version found after the hole.
        found_version: u64,
        /// Its position.
        position: u64,
        /// Global positions that are gone from the log in between.
        missing_positions: Vec<u64>,
    },
    /// A version appears after a later version of the same stream.
    Reordered {
        /// Stream.
        stream: StreamId,
        /// The later version, which came first.
        version: u64,
        /// Its position.
        position: u64,
        /// The earlier version, which came after it.
        earlier_version: u64,
        /// Its (larger) position.
        earlier_position: u64,
    },
    /// A global position is not larger than the one before it.
    PositionNotIncreasing {
        /// Stream of the offending event.
        stream: StreamId,
        /// Its version.
        version: u64,
        /// Its position.
        position: u64,
        /// The previous event's position.
        previous: u64,
    },
    /// Positions `from..=to` are absent from a store whose positions are
    /// gapless: events were deleted.
    PositionGap {
        /// First missing position.
        from: u64,
        /// Last missing position.
        to: u64,
    },
    /// The recorded stream head is ahead of the log: tail events deleted.
    TailMissing {
        /// Stream.
        stream: StreamId,
        /// Version the head records.
        head_version: u64,
        /// Last version in the log (0: none left).
        log_version: u64,
        /// Position of that last event (0: none).
        log_position: u64,
    },
    /// The log holds versions the recorded head does not know: events
    /// inserted behind the ledger's back.
    BeyondHead {
        /// Stream.
        stream: StreamId,
        /// First version beyond the head.
        version: u64,
        /// Last version in the log.
        log_version: u64,
        /// Position of the last event.
        position: u64,
        /// Version the head records.
        head_version: u64,
    },
    /// Head and log agree on the version but not on its hash.
    HeadHashMismatch {
        /// Stream.
        stream: StreamId,
        /// Version.
        version: u64,
        /// Position of the last event.
        position: u64,
        /// Hash the head records.
        head: EventHash,
        /// Hash of the last event in the log.
        log: EventHash,
    },
    /// A stream has events but no recorded head.
    HeadMissing {
        /// Stream.
        stream: StreamId,
        /// Last version in the log.
        version: u64,
        /// Its position.
        position: u64,
    },
    /// An event in an export is outside what the export claims to hold.
    Foreign {
        /// Stream.
        stream: StreamId,
        /// Version.
        version: u64,
        /// Position.
        position: u64,
        /// Why it does not belong.
        reason: String,
    },
}

fn short(hash: &EventHash) -> String {
    hash.to_hex()[..12].to_owned()
}

impl Problem {
    /// The global position the problem is anchored at (for ordering).
    pub fn position(&self) -> u64 {
        match self {
            Problem::HashMismatch { position, .. }
            | Problem::NotCanonical { position, .. }
            | Problem::VersionMissing { position, .. }
            | Problem::Reordered { position, .. }
            | Problem::PositionNotIncreasing { position, .. }
            | Problem::BeyondHead { position, .. }
            | Problem::HeadHashMismatch { position, .. }
            | Problem::HeadMissing { position, .. }
            | Problem::Foreign { position, .. } => *position,
            Problem::PositionGap { from, .. } => *from,
            Problem::TailMissing { log_position, .. } => *log_position,
        }
    }

    /// The stream the problem is in, when it can be told.
    pub fn stream(&self) -> Option<&StreamId> {
        match self {
            Problem::PositionGap { .. } => None,
            Problem::HashMismatch { stream, .. }
            | Problem::NotCanonical { stream, .. }
            | Problem::VersionMissing { stream, .. }
            | Problem::Reordered { stream, .. }
            | Problem::PositionNotIncreasing { stream, .. }
            | Problem::TailMissing { stream, .. }
            | Problem::BeyondHead { stream, .. }
            | Problem::HeadHashMismatch { stream, .. }
            | Problem::HeadMissing { stream, .. }
            | Problem::Foreign { stream, .. } => Some(stream),
        }
    }
}

impl Problem {
    /// Where the problem is: stream, version and global position, as far as
    /// the problem has them (a position gap names no stream).
    pub fn location(&self) -> (Option<&StreamId>, Option<u64>, Option<u64>) {
        match self {
            Problem::HashMismatch {
                stream,
                version,
                position,
                ..
            }
            | Problem::NotCanonical {
                stream,
                version,
                position,
                ..
            }
            | Problem::Reordered {
                stream,
                version,
                position,
                ..
            }
            | Problem::PositionNotIncreasing {
                stream,
                version,
                position,
                ..
            }
            | Problem::HeadHashMismatch {
                stream,
                version,
                position,
                ..
            }
            | Problem::HeadMissing {
                stream,
                version,
                position,
            }
            | Problem::Foreign {
                stream,
                version,
                position,
                ..
            } => (Some(stream), Some(*version), Some(*position)),
            Problem::VersionMissing {
                stream,
                missing_from,
                position,
                ..
            } => (Some(stream), Some(*missing_from), Some(*position)),
            Problem::PositionGap { from, .. } => (None, None, Some(*from)),
            Problem::TailMissing {
                stream,
                log_version,
                log_position,
                ..
            } => (Some(stream), Some(*log_version + 1), Some(*log_position)),
            Problem::BeyondHead {
                stream,
                version,
                position,
                ..
            } => (Some(stream), Some(*version), Some(*position)),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::HashMismatch {
                stream,
                version,
                position,
                stored,
                recomputed,
            } => write!(
                f,
                "{stream} v{version} @ position {position}: hash mismatch (stored {}…, recomputed {}…) \
                 — payload, metadata, envelope or stored hash altered",
                short(stored),
                short(recomputed)
            ),
            Problem::NotCanonical {
                stream,
                version,
                position,
                field,
                reason,
            } => write!(
                f,
                "{stream} v{version} @ position {position}: {field} is not canonical JSON ({reason}) — edited outside the ledger"
            ),
            Problem::VersionMissing {
                stream,
                missing_from,
                missing_to,
                before,
                found_version,
                position,
                missing_positions,
            } => {
                let which = if missing_from == missing_to {
                    format!("version {missing_from} missing")
                } else {
                    format!("versions {missing_from}-{missing_to} missing")
                };
                let context = match before {
                    Some((v, p)) => format!("v{v} @ {p} followed by v{found_version} @ {position}"),
                    None => format!("stream starts at v{found_version} @ {position}"),
                };
                write!(f, "{stream}: {which} ({context}")?;
                if !missing_positions.is_empty() {
                    let list: Vec<String> =
                        missing_positions.iter().map(u64::to_string).collect();
                    write!(f, "; position {} gone from the log", list.join(", "))?;
                }
                write!(f, ") — event deleted")
            }
            Problem::Reordered {
                stream,
                version,
                position,
                earlier_version,
                earlier_position,
            } => write!(
                f,
                "{stream} v{version} @ position {position} comes before v{earlier_version} @ position {earlier_position} — reordered"
            ),
            Problem::PositionNotIncreasing {
                stream,
                version,
                position,
                previous,
            } => write!(
                f,
                "{stream} v{version}: position {position} < previous {previous} — reordered"
            ),
            Problem::PositionGap { from, to } => {
                if from == to {
                    write!(f, "position {from} missing from a gapless log — event deleted")
                } else {
                    write!(f, "positions {from}-{to} missing from a gapless log — events deleted")
                }
            }
            Problem::TailMissing {
                stream,
                head_version,
                log_version,
                log_position,
            } => {
                let missing = if log_version + 1 == *head_version {
                    format!("version {head_version} missing")
                } else {
                    format!("versions {}-{head_version} missing", log_version + 1)
                };
                write!(
                    f,
                    "{stream}: {missing} (stream head records v{head_version}, the log ends at v{log_version} @ {log_position}) — tail event deleted"
                )
            }
            Problem::BeyondHead {
                stream,
                version,
                log_version,
                position,
                head_version,
            } => write!(
                f,
                "{stream} v{version}: not recorded in the stream head (head v{head_version}, log ends at v{log_version} @ position {position}) — event inserted behind the ledger's back"
            ),
            Problem::HeadHashMismatch {
                stream,
                version,
                position,
                head,
                log,
            } => write!(
                f,
                "{stream} v{version} @ position {position}: stream head hash {}… differs from the last event's hash {}… — head or event altered",
                short(head),
                short(log)
            ),
            Problem::HeadMissing {
                stream,
                version,
                position,
            } => write!(
                f,
                "{stream}: has events up to v{version} @ position {position} but no recorded stream head — inserted behind the ledger's back"
            ),
            Problem::Foreign {
                stream,
                version,
                position,
                reason,
            } => write!(f, "{stream} v{version} @ position {position}: {reason}"),
        }
    }
}

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// What was verified: `store`, `customer <id>`, or `file <path>`.
    pub scope: String,
    /// Events checked.
    pub events: u64,
    /// Streams seen.
    pub streams: u64,
    /// Last position seen (0 when empty).
    pub head_position: u64,
    /// Problems, most specific first (see [`VerifyReport::first_problem`]).
    pub problems: Vec<Problem>,
    /// Problems found beyond [`MAX_PROBLEMS`] (not kept).
    pub problems_not_kept: u64,
}

impl VerifyReport {
    /// Whether nothing was found wrong.
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }

    /// The problem to report first: the earliest that names a stream, else
    /// the earliest overall.
    pub fn first_problem(&self) -> Option<&Problem> {
        self.problems.first()
    }

    /// Turns a report with problems into an error.
    pub fn into_result(self) -> Result<VerifyReport, VerifyError> {
        if self.is_intact() {
            Ok(self)
        } else {
            Err(VerifyError::Tampered(Box::new(self)))
        }
    }
}

/// Why verification failed.
#[derive(Debug, Error)]
pub enum VerifyError {
    /// The history was altered; the report names where and how.
    #[error("{}", tampered_message(.0))]
    Tampered(Box<VerifyReport>),
    /// The store could not be read (a row that does not even decode is
    /// itself evidence of tampering).
    #[error("cannot read the store: {0}")]
    Store(#[from] StoreError),
    /// No such customer.
    #[error("no events for customer {0}")]
    UnknownCustomer(String),
    /// An export file could not be read or parsed.
    #[error("cannot read export {file}: {reason}")]
    File {
        /// File.
        file: String,
        /// Why.
        reason: String,
    },
}

fn tampered_message(report: &VerifyReport) -> String {
    let total = report.problems.len() as u64 + report.problems_not_kept;
    let first = report
        .first_problem()
        .map(ToString::to_string)
        .unwrap_or_default();
    if total > 1 {
        format!(
            "{first} (and {} more problem{})",
            total - 1,
            if total == 2 { "" } else { "s" }
        )
    } else {
        first
    }
}

#[derive(Debug, Clone, Copy)]
struct StreamState {
    version: u64,
    /// Stored hash of the last event.
    hash: EventHash,
    /// Hash recomputed for the last event, when it differed from the stored
    /// one (so a follower matching either is not blamed for its predecessor).
    recomputed: Option<EventHash>,
    position: u64,
}

/// Checks events fed in position order; see the module docs.
#[derive(Debug)]
pub struct ChainVerifier {
    gapless: bool,
    streams: HashMap<StreamId, StreamState>,
    last_position: Option<u64>,
    events: u64,
    problems: Vec<Problem>,
    not_kept: u64,
}

impl ChainVerifier {
    /// A verifier; `gapless` when every position from 1 must be present.
    pub fn new(gapless: bool) -> Self {
        Self {
            gapless,
            streams: HashMap::new(),
            last_position: None,
            events: 0,
            problems: Vec::new(),
            not_kept: 0,
        }
    }

    fn problem(&mut self, p: Problem) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(p);
        } else {
            self.not_kept += 1;
        }
    }

    /// Checks one event, the next in position order.
    pub fn feed(&mut self, event: &RecordedEvent) {
        self.events += 1;
        let (stream, version, position) = (&event.stream_id, event.version, event.position);
        match self.last_position {
            Some(prev) if position <= prev => self.problem(Problem::PositionNotIncreasing {
                stream: stream.clone(),
                version,
                position,
                previous: prev,
            }),
            Some(prev) if self.gapless && position > prev + 1 => {
                self.problem(Problem::PositionGap {
                    from: prev + 1,
                    to: position - 1,
                })
            }
            None if self.gapless && position > 1 => self.problem(Problem::PositionGap {
                from: 1,
                to: position - 1,
            }),
            _ => {}
        }
        self.last_position = Some(self.last_position.unwrap_or(0).max(position));

        for (field, text) in [
            ("payload", &event.payload_json),
            ("metadata", &event.metadata_json),
        ] {
            let reason = match canonicalize_text(text) {
                Ok(canonical) if canonical == *text => continue,
                Ok(_) => "not in canonical form".to_owned(),
                Err(e) => format!("not JSON: {e}"),
            };
            self.problem(Problem::NotCanonical {
                stream: stream.clone(),
                version,
                position,
                field,
                reason,
            });
        }

        let state = self.streams.get(stream).copied();
        let expected = state.map_or(1, |s| s.version + 1);
        if version < expected {
            let state = state.expect("version < expected implies a previous event");
            self.reordered(event, state);
            return;
        }
        let mut recomputed_differs = None;
        if version == expected {
            let previous = state.map_or(EventHash::GENESIS, |s| s.hash);
            let recomputed = event.recompute_hash(&previous);
            let via_recomputed = state
                .and_then(|s| s.recomputed)
                .map(|alt| event.recompute_hash(&alt));
            if recomputed != event.hash && via_recomputed != Some(event.hash) {
                self.problem(Problem::HashMismatch {
                    stream: stream.clone(),
                    version,
                    position,
                    stored: event.hash,
                    recomputed,
                });
                recomputed_differs = Some(recomputed);
            }
        } else {
            // The link to the missing predecessor cannot be checked.
            self.problem(Problem::VersionMissing {
                stream: stream.clone(),
                missing_from: expected,
                missing_to: version - 1,
                before: state.map(|s| (s.version, s.position)),
                found_version: version,
                position,
                missing_positions: Vec::new(),
            });
        }
        self.streams.insert(
            stream.clone(),
            StreamState {
                version,
                hash: event.hash,
                recomputed: recomputed_differs,
                position,
            },
        );
    }

    /// A version older than the stream's last one: if it fills a hole
    /// recorded earlier, that hole was a reordering, not a deletion.
    fn reordered(&mut self, event: &RecordedEvent, state: StreamState) {
        let hole = self.problems.iter().position(|p| {
            matches!(p, Problem::VersionMissing { stream, missing_from, missing_to, .. }
                if *stream == event.stream_id && (*missing_from..=*missing_to).contains(&event.version))
        });
        let (version, position) = match hole.map(|i| self.problems.remove(i)) {
            Some(Problem::VersionMissing {
                found_version,
                position,
                ..
            }) => (found_version, position),
            _ => (state.version, state.position),
        };
        self.problem(Problem::Reordered {
            stream: event.stream_id.clone(),
            version,
            position,
            earlier_version: event.version,
            earlier_position: event.position,
        });
    }

    /// Compares every stream's recorded head with the log.
    pub fn check_head(&mut self, stream: &StreamId, head: Option<StreamHead>) {
        let state = self.streams.get(stream).copied();
        match (head, state) {
            (None, None) => {}
            (None, Some(s)) => self.problem(Problem::HeadMissing {
                stream: stream.clone(),
                version: s.version,
                position: s.position,
            }),
            (Some(h), s) => {
                let (log_version, log_position) = s.map_or((0, 0), |s| (s.version, s.position));
                if h.version > log_version {
                    self.problem(Problem::TailMissing {
                        stream: stream.clone(),
                        head_version: h.version,
                        log_version,
                        log_position,
                    });
                } else if h.version < log_version {
                    self.problem(Problem::BeyondHead {
                        stream: stream.clone(),
                        version: h.version + 1,
                        log_version,
                        position: log_position,
                        head_version: h.version,
                    });
                } else if let Some(s) = s {
                    if s.hash != h.hash {
                        self.problem(Problem::HeadHashMismatch {
                            stream: stream.clone(),
                            version: s.version,
                            position: s.position,
                            head: h.hash,
                            log: s.hash,
                        });
                    }
                }
            }
        }
    }

    /// The streams seen so far, with their last version and hash.
    pub fn stream_heads(&self) -> impl Iterator<Item = (&StreamId, StreamHead)> {
        self.streams.iter().map(|(id, s)| {
            (
                id,
                StreamHead {
                    version: s.version,
                    hash: s.hash,
                },
            )
        })
    }

    /// Records a problem found outside the chain (exports use this).
    pub fn report(&mut self, problem: Problem) {
        self.problem(problem);
    }

    /// Finishes: folds position gaps into the version holes they explain
    /// and orders problems, stream-specific ones first.
    pub fn finish(mut self, scope: String) -> VerifyReport {
        let gaps: Vec<(u64, u64)> = self
            .problems
            .iter()
            .filter_map(|p| match p {
                Problem::PositionGap { from, to } => Some((*from, *to)),
                _ => None,
            })
            .collect();
        let mut explained = Vec::new();
        for p in &mut self.problems {
            if let Problem::VersionMissing {
                before: Some((_, before)),
                position,
                missing_positions,
                ..
            } = p
            {
                for &(from, to) in &gaps {
                    if from > *before && to < *position {
                        missing_positions.extend(from..=to.min(from + 16));
                        explained.push((from, to));
                    }
                }
            }
        }
        self.problems.retain(
            |p| !matches!(p, Problem::PositionGap { from, to } if explained.contains(&(*from, *to))),
        );
        self.problems
            .sort_by_key(|p| (p.stream().is_none(), p.position()));
        VerifyReport {
            scope,
            events: self.events,
            streams: self.streams.len() as u64,
            head_position: self.last_position.unwrap_or(0),
            problems: self.problems,
            problems_not_kept: self.not_kept,
        }
    }
}

/// Verifies the whole store: streams the log once in large pages, then
/// compares every recorded stream head. `progress` gets the last position
/// checked (compare with [`EventStore::head_position`]).
pub async fn verify_store(
    store: Arc<dyn EventStore>,
    mut progress: impl FnMut(u64),
) -> Result<VerifyReport, VerifyError> {
    let mut verifier = ChainVerifier::new(store.capabilities().gapless_positions);
    let mut events = store::read_all(store.clone(), 0, VERIFY_PAGE);
    let mut n = 0u64;
    while let Some(event) = events.next().await {
        let event = event?;
        verifier.feed(&event);
        n += 1;
        if n % 4096 == 0 {
            progress(event.position);
        }
    }
    progress(verifier.last_position.unwrap_or(0));
    // Heads recorded for streams the log lacks entirely, plus every stream
    // seen: both lists come from the store, so a deleted stream is caught.
    let mut after: Option<StreamId> = None;
    let mut listed = std::collections::HashSet::new();
    loop {
        let page = store.list_streams(after.as_ref(), 1_000).await?;
        let Some(last) = page.last().cloned() else {
            break;
        };
        for stream in page {
            let head = store.stream_head(&stream).await?;
            verifier.check_head(&stream, head);
            listed.insert(stream);
        }
        after = Some(last);
    }
    let unlisted: Vec<StreamId> = verifier
        .streams
        .keys()
        .filter(|s| !listed.contains(*s))
        .cloned()
        .collect();
    for stream in unlisted {
        let head = store.stream_head(&stream).await?;
        verifier.check_head(&stream, head);
    }
    Ok(verifier.finish("store".to_owned()))
}

/// Verifies one customer's stream: its chain from genesis and its head.
pub async fn verify_customer(
    store: &dyn EventStore,
    customer: &CustomerId,
) -> Result<VerifyReport, VerifyError> {
    let stream = customer.stream_id();
    let events = store
        .read_stream(&stream, ReadStream::all_forwards())
        .await?;
    let head = store.stream_head(&stream).await?;
    if events.is_empty() && head.is_none() {
        return Err(VerifyError::UnknownCustomer(customer.to_string()));
    }
    let mut verifier = ChainVerifier::new(false);
    // Read by version; re-sort by position so reordering is seen.
    let mut events = events;
    events.sort_by_key(|e| e.position);
    for event in &events {
        verifier.feed(event);
    }
    verifier.check_head(&stream, head);
    Ok(verifier.finish(format!("customer {customer}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventMetadata, NewEvent};
    use chrono::{TimeZone, Utc};
    use uuid::Uuid;

    /// A well-formed chain of `n` events in stream `s`, positions from `start`.
    fn chain(s: &str, n: u64, start: u64) -> Vec<RecordedEvent> {
        let stream = StreamId::parse(s).unwrap();
        let at = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
        let mut prev = EventHash::GENESIS;
        (1..=n)
            .map(|v| {
                let new = NewEvent::from_parts(
                    Uuid::from_u128(v as u128 + start as u128 * 1000),
                    "ConsentGiven",
                    1,
                    at,
                    &EventMetadata::default(),
                    &serde_json::json!({"purpose": format!("p{v}")}),
                );
                let hash = new.chain_hash(&prev, &stream, v, &at);
                prev = hash;
                RecordedEvent {
                    event_id: new.event_id(),
                    stream_id: stream.clone(),
                    version: v,
                    position: start + v - 1,
                    event_type: new.event_type().into(),
                    schema_version: 1,
                    occurred_at: at,
                    recorded_at: at,
                    metadata_json: new.metadata_json().into(),
                    payload_json: new.payload_json().into(),
                    hash,
                }
            })
            .collect()
    }

    fn run(events: &[RecordedEvent], gapless: bool) -> VerifyReport {
        let mut v = ChainVerifier::new(gapless);
        for e in events {
            v.feed(e);
        }
        v.finish("test".into())
    }

    #[test]
    fn an_intact_chain_passes() {
        let report = run(&chain("customer-a", 5, 1), true);
        assert!(report.is_intact(), "{:?}", report.problems);
        assert_eq!(report.events, 5);
    }

    #[test]
    fn a_changed_payload_is_blamed_on_that_event_only() {
        let mut events = chain("customer-a", 5, 1);
        events[2].payload_json = r#"{"purpose":"px"}"#.into();
        let report = run(&events, true);
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert!(matches!(
            report.problems[0],
            Problem::HashMismatch {
                version: 3,
                position: 3,
                ..
            }
        ));
    }

    #[test]
    fn a_deleted_middle_event_names_the_hole_and_the_position() {
        let mut events = chain("customer-a", 5, 1);
        events.remove(2);
        let report = run(&events, true);
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        let text = report.problems[0].to_string();
        assert_eq!(
            text,
            "customer-a: version 3 missing (v2 @ 2 followed by v4 @ 4; position 3 gone from the log) — event deleted"
        );
    }

    #[test]
    fn swapped_versions_are_reported_as_reordered() {
        let mut events = chain("customer-a", 4, 1);
        events.swap(1, 2);
        events[1].position = 2;
        events[2].position = 3;
        let report = run(&events, true);
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert_eq!(
            report.problems[0].to_string(),
            "customer-a v3 @ position 2 comes before v2 @ position 3 — reordered"
        );
    }

    #[test]
    fn non_canonical_json_is_found() {
        let mut events = chain("customer-a", 2, 1);
        events[1].metadata_json = "{ }".into();
        let report = run(&events, true);
        assert!(report.problems.iter().any(|p| matches!(
            p,
            Problem::NotCanonical {
                field: "metadata",
                version: 2,
                ..
            }
        )));
    }
}

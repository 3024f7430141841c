//! Backend-independent planning of an append: idempotency, optimistic
//! concurrency, versions, positions and hash chaining.
//!
//! Each SQL backend reads what the plan needs (existing ids, stream heads,
//! the last position) inside its write transaction, calls [`plan`], and
//! writes the planned rows. Keeping the rules here means every backend
//! decides conflicts and duplicates identically.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{AppendOutcome, ExpectedVersion, StoreError, StreamHead, StreamWrite};
use crate::domain::{EventHash, NewEvent, RecordedEvent, StreamId};

/// One event placed in its stream and in the global order.
#[derive(Debug)]
pub(crate) struct PlannedRow<'a> {
    pub event: &'a NewEvent,
    pub stream: &'a StreamId,
    pub version: u64,
    pub position: u64,
    pub hash: EventHash,
}

/// Everything a backend writes for one batch.
#[derive(Debug)]
pub(crate) struct AppendPlan<'a> {
    pub rows: Vec<PlannedRow<'a>>,
    /// New head of every stream the batch touches (only those that grow).
    pub heads: Vec<(StreamId, StreamHead)>,
    pub outcomes: Vec<AppendOutcome>,
    pub recorded_at: DateTime<Utc>,
}

/// Rejects empty writes and ids repeated within the batch; returns all ids.
pub(crate) fn check_writes(writes: &[StreamWrite]) -> Result<Vec<Uuid>, StoreError> {
    if writes.is_empty() || writes.iter().any(|w| w.events.is_empty()) {
        return Err(StoreError::EmptyAppend);
    }
    let mut seen = HashSet::new();
    let mut ids = Vec::new();
    for event in writes.iter().flat_map(|w| &w.events) {
        if !seen.insert(event.event_id()) {
            return Err(StoreError::DuplicateInBatch(event.event_id()));
        }
        ids.push(event.event_id());
    }
    Ok(ids)
}

/// The distinct streams a batch touches, in first-seen order.
pub(crate) fn streams_of<'a>(writes: impl IntoIterator<Item = &'a StreamWrite>) -> Vec<StreamId> {
    let mut seen = HashSet::new();
    writes
        .into_iter()
        .filter(|w| seen.insert(&w.stream))
        .map(|w| w.stream.clone())
        .collect()
}

/// The recording instant for a batch, at the precision stores keep.
pub(crate) fn now_micros() -> DateTime<Utc> {
    crate::domain::envelope::truncate_to_micros(Utc::now())
}

/// Plans a batch given what is already stored.
///
/// `existing` holds the stored events whose ids the batch reuses; `heads`
/// the current head of every existing stream the batch touches;
/// `head_position` the last committed global position.
pub(crate) fn plan<'a>(
    writes: &'a [StreamWrite],
    existing: &HashMap<Uuid, RecordedEvent>,
    heads: &HashMap<StreamId, StreamHead>,
    head_position: u64,
    recorded_at: DateTime<Utc>,
) -> Result<AppendPlan<'a>, StoreError> {
    let mut current: HashMap<StreamId, StreamHead> = heads.clone();
    let mut touched: Vec<StreamId> = Vec::new();
    let mut touched_set: HashSet<StreamId> = HashSet::new();
    let mut rows = Vec::new();
    let mut outcomes = Vec::with_capacity(writes.len());
    let mut position = head_position;

    for write in writes {
        let total = write.events.len();
        let mut stored: Vec<&RecordedEvent> = Vec::new();
        for event in &write.events {
            if let Some(found) = existing.get(&event.event_id()) {
                if found.stream_id != write.stream || !event.same_content_as(found) {
                    return Err(StoreError::EventIdConflict {
                        event_id: event.event_id(),
                        stream: found.stream_id.to_string(),
                        version: found.version,
                    });
                }
                stored.push(found);
            }
        }
        if stored.len() == total {
            outcomes.push(AppendOutcome {
                next_version: stored.iter().map(|e| e.version).max().unwrap_or(0),
                first_position: stored.iter().map(|e| e.position).min().unwrap_or(0),
                last_position: stored.iter().map(|e| e.position).max().unwrap_or(0),
                already_stored: true,
                appended: 0,
            });
            continue;
        }
        if !stored.is_empty() && write.expected != ExpectedVersion::Any {
            return Err(StoreError::PartiallyStored {
                stored: stored.len(),
                total,
            });
        }

        let head = current.get(&write.stream).copied().unwrap_or(StreamHead {
            version: 0,
            hash: EventHash::GENESIS,
        });
        let matches = match write.expected {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => head.version == 0,
            ExpectedVersion::Exact(v) => head.version == v,
        };
        if !matches {
            return Err(StoreError::WrongExpectedVersion {
                stream: write.stream.to_string(),
                expected: write.expected,
                actual: head.version,
            });
        }

        let mut version = head.version;
        let mut previous = head.hash;
        let first_position = position + 1;
        let appended = total - stored.len();
        for event in &write.events {
            if existing.contains_key(&event.event_id()) {
                continue;
            }
            version += 1;
            position += 1;
            let hash = event.chain_hash(&previous, &write.stream, version, &recorded_at);
            previous = hash;
            rows.push(PlannedRow {
                event,
                stream: &write.stream,
                version,
                position,
                hash,
            });
        }
        if touched_set.insert(write.stream.clone()) {
            touched.push(write.stream.clone());
        }
        current.insert(
            write.stream.clone(),
            StreamHead {
                version,
                hash: previous,
            },
        );
        outcomes.push(AppendOutcome {
            next_version: version,
            first_position,
            last_position: position,
            already_stored: false,
            appended,
        });
    }

    let heads = final_heads(touched, &current);
    Ok(AppendPlan {
        rows,
        heads,
        outcomes,
        recorded_at,
    })
}

/// One request's share of a group commit: its outcomes, or why it alone
/// was refused.
pub(crate) type RequestResult = Result<Vec<AppendOutcome>, StoreError>;

/// Everything a backend writes for a group of appends committed together.
#[derive(Debug)]
pub(crate) struct GroupPlan<'a> {
    /// The rows of every accepted request, in position order.
    pub rows: Vec<PlannedRow<'a>>,
    /// The final head of every stream that grows.
    pub heads: Vec<(StreamId, StreamHead)>,
    /// Per request, in order: its outcomes or its own error.
    pub results: Vec<RequestResult>,
}

impl GroupPlan<'_> {
    /// True when every request was accepted.
    pub fn all_accepted(&self) -> bool {
        self.results.iter().all(Result::is_ok)
    }

    /// The last position the group writes (None when it writes nothing).
    pub fn last_position(&self) -> Option<u64> {
        self.rows.last().map(|r| r.position)
    }
}

/// Plans a group of independent requests, each an all-or-nothing batch,
/// one after another as if committed in that order: each sees the streams
/// as the earlier ones leave them, and ids an earlier request stores are
/// "already stored" for a later one (two concurrent retries of one event
/// store it once). A request refused (expected version, id conflict) is
/// refused alone and leaves nothing behind for the rest.
pub(crate) fn plan_group<'a>(
    group: &'a [Vec<StreamWrite>],
    existing: &HashMap<Uuid, RecordedEvent>,
    heads: &HashMap<StreamId, StreamHead>,
    head_position: u64,
    recorded_at: DateTime<Utc>,
) -> GroupPlan<'a> {
    // Only ids that more than one request carries need to be remembered
    // as placed for the requests after them.
    let mut requests_with_id: HashMap<Uuid, usize> = HashMap::new();
    if group.len() > 1 {
        for writes in group {
            for event in writes.iter().flat_map(|w| &w.events) {
                *requests_with_id.entry(event.event_id()).or_default() += 1;
            }
        }
    }
    let shared_ids = requests_with_id.values().any(|&n| n > 1);
    let mut known = existing.clone();
    let mut current = heads.clone();
    let mut position = head_position;
    let mut rows = Vec::new();
    let mut touched: Vec<StreamId> = Vec::new();
    let mut touched_set: HashSet<StreamId> = HashSet::new();
    let mut results = Vec::with_capacity(group.len());
    for writes in group {
        match plan(writes, &known, &current, position, recorded_at) {
            Ok(request) => {
                if let Some(last) = request.rows.last() {
                    position = last.position;
                }
                for (stream, head) in request.heads {
                    current.insert(stream.clone(), head);
                    if touched_set.insert(stream.clone()) {
                        touched.push(stream);
                    }
                }
                if shared_ids {
                    for row in &request.rows {
                        if requests_with_id.get(&row.event.event_id()) > Some(&1) {
                            known.insert(row.event.event_id(), recorded(row, recorded_at));
                        }
                    }
                }
                rows.extend(request.rows);
                results.push(Ok(request.outcomes));
            }
            Err(refused) => results.push(Err(refused)),
        }
    }
    let heads = final_heads(touched, &current);
    GroupPlan {
        rows,
        heads,
        results,
    }
}

/// The stored form of a planned row, for later requests of the same group.
fn recorded(row: &PlannedRow<'_>, recorded_at: DateTime<Utc>) -> RecordedEvent {
    RecordedEvent {
        event_id: row.event.event_id(),
        stream_id: row.stream.clone(),
        version: row.version,
        position: row.position,
        event_type: row.event.event_type().to_owned(),
        schema_version: row.event.schema_version(),
        occurred_at: row.event.occurred_at(),
        recorded_at,
        metadata_json: row.event.metadata_json().to_owned(),
        payload_json: row.event.payload_json().to_owned(),
        hash: row.hash,
    }
}

/// The heads of the touched streams, in the order they were first touched.
fn final_heads(
    touched: Vec<StreamId>,
    current: &HashMap<StreamId, StreamHead>,
) -> Vec<(StreamId, StreamHead)> {
    touched
        .into_iter()
        .map(|s| {
            let head = current[&s];
            (s, head)
        })
        .collect()
}

/// Every event id of a group, for looking up those already stored.
pub(crate) fn event_ids(group: &[Vec<StreamWrite>]) -> Vec<Uuid> {
    group
        .iter()
        .flatten()
        .flat_map(|w| &w.events)
        .map(|e| e.event_id())
        .collect()
}

/// Moves a store's published head to `last` (subscribers wake only when it
/// grows).
pub(crate) fn advance_head(head: &tokio::sync::watch::Sender<u64>, last: u64) {
    head.send_if_modified(|h| {
        let grew = last > *h;
        *h = (*h).max(last);
        grew
    });
}

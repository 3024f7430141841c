//! Recording batches of converted messages from the pipelines users run
//! (Segment/RudderStack, CloudEvents), with a result per message.
//!
//! A source converts each message to an [`Incoming`] (or a refusal saying
//! why); [`Ingestor::ingest`] stores the batch:
//! - events arriving from outside are facts that already happened, so, as
//!   with file imports, they are validated (payload invariants) but not held
//!   to the command side's history rules, and they append without an
//!   expected version;
//! - a customer seen for the first time is registered first
//!   (`CustomerRegistered` with the message's channel; its id is derived
//!   from the customer, and the write expects no stream, so two racing
//!   batches register them once);
//! - the whole batch is one atomic append; if the store refuses it for one
//!   message's sake (an id reused with other content, a lost registration
//!   race), it is re-read once and retried, then appended message by
//!   message so only the guilty one is refused;
//! - personal fields are sealed by the privacy vault, or refused without
//!   one; held events go to [`super::held`].

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::derived_id;
use super::held::{HeldEvent, HeldEvents};
use crate::domain::events::CustomerRegistered;
use crate::domain::{CustomerId, DomainEvent, EventMetadata, NewEvent};
use crate::privacy::vault::has_plaintext_personal_data;
use crate::privacy::Vault;
use crate::store::{EventStore, ExpectedVersion, StoreError, StreamWrite};

/// What one converted message asks for.
#[derive(Debug, Clone)]
pub enum Action {
    /// Record this event.
    Record {
        /// Its id (derived from the message's own id, for idempotency).
        event_id: Uuid,
        /// The event.
        event: DomainEvent,
    },
    /// Record `event` at `release_at` unless an order of the customer
    /// arrives first.
    HoldUnlessOrdered {
        /// Its id.
        event_id: Uuid,
        /// The event.
        event: DomainEvent,
        /// When it is recorded if no order comes.
        release_at: DateTime<Utc>,
    },
    /// Only make sure the customer exists.
    Register,
}

/// One converted message.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Whose stream.
    pub customer: CustomerId,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// What to do.
    pub action: Action,
    /// Stored with the event (deterministic, so retries match).
    pub metadata: EventMetadata,
    /// Acquisition channel, should this message register the customer.
    pub channel: String,
    /// The message's own id (`messageId`, CloudEvents `id`), echoed in the
    /// result.
    pub reference: Option<String>,
}

/// What became of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Stored now.
    Accepted,
    /// Stored before (a retry): nothing new.
    Duplicate,
    /// Held back (see [`super::held`]).
    Held,
    /// Nothing to record (e.g. an `identify` without personal traits for a
    /// known customer).
    Unchanged,
    /// Not stored; `reason` says why.
    Refused,
}

impl Status {
    /// Every status, for metrics.
    pub const ALL: [Status; 5] = [
        Status::Accepted,
        Status::Duplicate,
        Status::Held,
        Status::Unchanged,
        Status::Refused,
    ];

    /// The lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Status::Accepted => "accepted",
            Status::Duplicate => "duplicate",
            Status::Held => "held",
            Status::Unchanged => "unchanged",
            Status::Refused => "refused",
        }
    }
}

/// The result for one message of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// 0-based position in the batch.
    pub index: usize,
    /// The message's own id, when it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// What happened.
    pub status: Status,
    /// The ledger event type recorded or held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// The ledger event id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<Uuid>,
    /// Why it was refused (or, for a duplicate, why it counts as one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Outcome {
    /// A refusal of message `index`.
    pub fn refused(index: usize, id: Option<String>, reason: impl Into<String>) -> Self {
        Self {
            index,
            id,
            status: Status::Refused,
            event_type: None,
            event_id: None,
            reason: Some(reason.into()),
        }
    }
}

/// A message ready to store.
#[derive(Debug, Clone)]
struct Prepared {
    index: usize,
    customer: CustomerId,
    occurred_at: DateTime<Utc>,
    metadata: EventMetadata,
    channel: String,
    reference: Option<String>,
    work: Work,
}

#[derive(Debug, Clone)]
enum Work {
    Append(NewEvent),
    Hold(HeldEvent),
    Register,
}

/// Stores converted batches (shared by every HTTP source and the bench).
#[derive(Clone)]
pub struct Ingestor {
    store: Arc<dyn EventStore>,
    vault: Option<Arc<Vault>>,
    held: Option<HeldEvents>,
}

/// The id of the registration an ingestion source records for a customer
/// it sees first: the same whichever source or server does it.
pub fn registration_id(customer: &CustomerId) -> Uuid {
    derived_id(&format!("ingest/registration/{customer}"))
}

impl Ingestor {
    /// An ingestor over `store`, sealing personal data with `vault` and
    /// holding events in `held` (holding mappings are refused without).
    pub fn new(
        store: Arc<dyn EventStore>,
        vault: Option<Arc<Vault>>,
        held: Option<HeldEvents>,
    ) -> Self {
        Self { store, vault, held }
    }

    /// The held-events table, when this store has one.
    pub fn held(&self) -> Option<&HeldEvents> {
        self.held.as_ref()
    }

    /// Stores a batch; one outcome per item, in order. `Err` only when the
    /// store itself failed (nothing of the batch may be assumed stored;
    /// resending it is safe).
    pub async fn ingest(
        &self,
        items: Vec<Result<Incoming, String>>,
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; items.len()];
        let mut prepared = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            match item {
                Err(reason) => outcomes[index] = Some(Outcome::refused(index, None, reason)),
                Ok(incoming) => {
                    let reference = incoming.reference.clone();
                    match self.prepare(index, incoming).await {
                        Ok(p) => prepared.push(p),
                        Err(reason) => {
                            outcomes[index] = Some(Outcome::refused(index, reference, reason))
                        }
                    }
                }
            }
        }
        for outcome in self.store_prepared(&prepared).await? {
            let index = outcome.index;
            outcomes[index] = Some(outcome);
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.expect("every message has an outcome"))
            .collect())
    }

    async fn prepare(&self, index: usize, incoming: Incoming) -> Result<Prepared, String> {
        let stream = incoming.customer.stream_id();
        let work = match incoming.action {
            Action::Register => Work::Register,
            Action::Record { event_id, event } => {
                let new = NewEvent::from_domain(
                    event_id,
                    incoming.occurred_at,
                    &incoming.metadata,
                    &event,
                )
                .map_err(|e| format!("{} {e}", event.event_type()))?;
                let new = match &self.vault {
                    Some(vault) => vault
                        .seal_new_event(&stream, new)
                        .await
                        .map_err(|e| format!("privacy vault: {e}"))?,
                    None if has_plaintext_personal_data(&new) => {
                        return Err(
                            "traits: personal fields need the privacy vault, which this \
                                    store does not have"
                                .into(),
                        )
                    }
                    None => new,
                };
                Work::Append(new)
            }
            Action::HoldUnlessOrdered {
                event_id,
                event,
                release_at,
            } => {
                if self.held.is_none() {
                    return Err(format!(
                        "{} is held until no order follows, which needs a SQL store \
                         (SQLite or PostgreSQL)",
                        event.event_type()
                    ));
                }
                event
                    .validate()
                    .and_then(|()| incoming.metadata.validate())
                    .map_err(|e| format!("{} {e}", event.event_type()))?;
                Work::Hold(HeldEvent {
                    event_id,
                    customer: incoming.customer.clone(),
                    occurred_at: incoming.occurred_at,
                    release_at,
                    event_type: event.event_type().to_owned(),
                    payload: event.to_payload().to_string(),
                    metadata: incoming.metadata.to_canonical_json(),
                    channel: incoming.channel.clone(),
                })
            }
        };
        Ok(Prepared {
            index,
            customer: incoming.customer,
            occurred_at: incoming.occurred_at,
            metadata: incoming.metadata,
            channel: incoming.channel,
            reference: incoming.reference,
            work,
        })
    }

    /// Registers the new customers, then appends the batch in one
    /// transaction; if the store refuses it for one message's sake (an id
    /// reused with other content), message by message so the refusal stays
    /// with its message.
    async fn store_prepared(&self, prepared: &[Prepared]) -> Result<Vec<Outcome>, StoreError> {
        if prepared.is_empty() {
            return Ok(Vec::new());
        }
        let registered_here = self.register_new_customers(prepared).await?;
        let mut outcomes: Vec<Outcome> = prepared
            .iter()
            .map(|p| outcome_of(p, &registered_here))
            .collect();
        match self.append_and_hold(prepared, &mut outcomes).await {
            Ok(()) => return Ok(outcomes),
            Err(e) if blames_one_message(&e) => {}
            Err(e) => return Err(e),
        }
        for (one, outcome) in prepared.iter().zip(outcomes.iter_mut()) {
            let mut single = vec![outcome.clone()];
            match self
                .append_and_hold(std::slice::from_ref(one), &mut single)
                .await
            {
                Ok(()) => *outcome = single.remove(0),
                // Segment's rule for a reused message id: the first stands.
                Err(StoreError::EventIdConflict { .. }) => {
                    outcome.status = Status::Duplicate;
                    outcome.reason = Some(
                        "a different event with this id (message id or business key) was \
                         stored first; it stands"
                            .into(),
                    );
                }
                Err(e) if blames_one_message(&e) => {
                    *outcome = Outcome::refused(one.index, one.reference.clone(), e.to_string())
                }
                Err(e) => return Err(e),
            }
        }
        Ok(outcomes)
    }

    /// Registers every customer of the batch whose stream does not exist,
    /// each in an append of its own expecting no stream (concurrent, so the
    /// store commits them together): a registration lost to a racing batch
    /// fails alone and means the customer exists. Returns the indexes of
    /// the messages whose registration this call stored.
    async fn register_new_customers(
        &self,
        prepared: &[Prepared],
    ) -> Result<HashSet<usize>, StoreError> {
        let mut firsts: Vec<&Prepared> = Vec::new();
        let mut seen = HashSet::new();
        for p in prepared {
            if seen.insert(&p.customer) {
                firsts.push(p);
            }
        }
        let streams: Vec<_> = firsts.iter().map(|p| p.customer.stream_id()).collect();
        let heads = self.store.stream_heads(&streams).await?;
        let new: Vec<(&Prepared, _)> = firsts
            .into_iter()
            .zip(streams)
            .zip(heads)
            .filter(|(_, head)| head.is_none())
            .map(|(first, _)| first)
            .collect();
        let results = futures::future::join_all(new.iter().map(|(p, stream)| {
            self.store.append(
                stream,
                ExpectedVersion::NoStream,
                vec![self.registration(p)],
            )
        }))
        .await;
        let mut registered = HashSet::new();
        for ((p, _), result) in new.iter().zip(results) {
            match result {
                Ok(outcome) if outcome.appended > 0 => {
                    registered.insert(p.index);
                }
                Ok(_)
                | Err(StoreError::WrongExpectedVersion { .. })
                | Err(StoreError::EventIdConflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(registered)
    }

    /// Appends the messages' events in one transaction (no expected
    /// version: they are facts from outside) and holds the held ones;
    /// orders settle held events. Marks duplicates in `outcomes`.
    async fn append_and_hold(
        &self,
        prepared: &[Prepared],
        outcomes: &mut [Outcome],
    ) -> Result<(), StoreError> {
        let mut writes = Vec::new();
        let mut owners = Vec::new();
        let mut holds = Vec::new();
        for (i, p) in prepared.iter().enumerate() {
            match &p.work {
                Work::Append(event) => {
                    writes.push(StreamWrite {
                        stream: p.customer.stream_id(),
                        expected: ExpectedVersion::Any,
                        events: vec![event.clone()],
                    });
                    owners.push(i);
                }
                Work::Hold(held) => holds.push(held.clone()),
                Work::Register => {}
            }
        }
        if !writes.is_empty() {
            let stored = self.store.append_batch(writes).await?;
            for (result, i) in stored.iter().zip(owners) {
                if result.appended == 0 {
                    outcomes[i].status = Status::Duplicate;
                }
            }
        }
        if let Some(held) = &self.held {
            held.hold(&holds).await?;
            let orders: Vec<(CustomerId, DateTime<Utc>)> = prepared
                .iter()
                .filter(|p| matches!(&p.work, Work::Append(e) if e.event_type() == "OrderPlaced"))
                .map(|p| (p.customer.clone(), p.occurred_at))
                .collect();
            held.settle(&orders).await?;
        }
        Ok(())
    }

    fn registration(&self, p: &Prepared) -> NewEvent {
        let registered = |channel: &str| {
            let event = DomainEvent::CustomerRegistered(CustomerRegistered {
                channel: channel.to_owned(),
                acquisition_cost: None,
                profile: Default::default(),
            });
            NewEvent::from_domain(
                registration_id(&p.customer),
                p.occurred_at,
                &p.metadata,
                &event,
            )
        };
        // A channel the domain refuses (too long, control characters)
        // registers under the neutral name instead of losing the event.
        registered(&p.channel)
            .or_else(|_| registered("ingest"))
            .expect("a neutral registration is valid")
    }

    /// Records the held events due at `now` (at their release instant) and
    /// forgets them; returns how many were recorded. Safe to run on several
    /// servers at once.
    pub async fn release_due(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let Some(held) = &self.held else {
            return Ok(0);
        };
        let mut released = 0;
        loop {
            let due = held.due(now, 500).await?;
            if due.is_empty() {
                return Ok(released);
            }
            let mut prepared = Vec::with_capacity(due.len());
            for (index, h) in due.iter().enumerate() {
                let metadata: EventMetadata = serde_json::from_str(&h.metadata).unwrap_or_default();
                let payload: serde_json::Value =
                    serde_json::from_str(&h.payload).unwrap_or_default();
                let version = DomainEvent::current_schema_version(&h.event_type).unwrap_or(1);
                let event = NewEvent::from_parts(
                    h.event_id,
                    &h.event_type,
                    version,
                    h.release_at,
                    &metadata,
                    &payload,
                );
                prepared.push(Prepared {
                    index,
                    customer: h.customer.clone(),
                    occurred_at: h.release_at,
                    metadata,
                    channel: h.channel.clone(),
                    reference: None,
                    work: Work::Append(event),
                });
            }
            for outcome in self.store_prepared(&prepared).await? {
                match outcome.status {
                    Status::Accepted => released += 1,
                    Status::Refused => tracing::warn!(
                        event_id = %due[outcome.index].event_id,
                        reason = outcome.reason.as_deref().unwrap_or(""),
                        "a held event could not be recorded; dropped"
                    ),
                    _ => {}
                }
            }
            let ids: Vec<Uuid> = due.iter().map(|h| h.event_id).collect();
            held.mark_released(&ids).await?;
        }
    }
}

/// The outcome of a message before its events are appended: accepted
/// (duplicates are found by the append), held, or for a bare
/// registration, accepted if this batch registered the customer.
fn outcome_of(p: &Prepared, registered_here: &HashSet<usize>) -> Outcome {
    let (status, event_type, event_id) = match &p.work {
        Work::Register if registered_here.contains(&p.index) => (
            Status::Accepted,
            "CustomerRegistered".to_owned(),
            registration_id(&p.customer),
        ),
        Work::Register => (
            Status::Unchanged,
            "CustomerRegistered".to_owned(),
            registration_id(&p.customer),
        ),
        Work::Append(event) => (
            Status::Accepted,
            event.event_type().to_owned(),
            event.event_id(),
        ),
        Work::Hold(held) => (Status::Held, held.event_type.clone(), held.event_id),
    };
    Outcome {
        index: p.index,
        id: p.reference.clone(),
        status,
        event_type: Some(event_type),
        event_id: Some(event_id),
        reason: None,
    }
}

/// Whether the store refused a batch because of one message in it (so
/// storing the messages one by one isolates it).
fn blames_one_message(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::EventIdConflict { .. }
            | StoreError::DuplicateInBatch(_)
            | StoreError::PartiallyStored { .. }
    )
}

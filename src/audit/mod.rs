//! Auditor guarantees: verification of the hash chains, self-verifying
//! customer exports, and recording administrative acts (rebuilds) as events.
//!
//! - [`verify`]: `journey verify` — recompute every chain and the global order;
//! - [`export`]: `journey export` — one customer's history plus state, re-verifiable offline;
//! - [`record_rebuild`]: every read-model rebuild is itself an event in `ledger-admin`.

pub mod export;
pub mod verify;

use chrono::Utc;
use thiserror::Error;
use uuid::Uuid;

use crate::domain::events::{DomainEvent, ReadModelsRebuilt};
use crate::domain::{EventMetadata, NewEvent, StreamId, ValidationError};
use crate::store::{AppendOutcome, EventStore, ExpectedVersion, StoreError};

/// The stream holding the ledger's own administrative events.
pub const ADMIN_STREAM: &str = "ledger-admin";

/// Why an administrative event could not be recorded.
#[derive(Debug, Error)]
pub enum RecordError {
    /// The event failed validation (empty actor or reason, …).
    #[error("invalid administrative event: {0}")]
    Invalid(#[from] ValidationError),
    /// The store refused the append.
    #[error("store error: {0}")]
    Store(#[from] StoreError),
}

/// What was rebuilt, for [`record_rebuild`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildDetails {
    /// Version of the rules the projections were rebuilt with.
    pub rules_version: Option<String>,
    /// Names of the projections rebuilt (empty: all).
    pub projections: Vec<String>,
}

/// Checks that a rebuild by `actor` for `reason` can be recorded (who and
/// why are required, printable and bounded), before the rebuild starts:
/// a request that could not be recorded must be refused, not run.
pub fn check_rebuild_request(actor: &str, reason: &str) -> Result<(), ValidationError> {
    rebuild_event(actor, reason, RebuildDetails::default()).validate()
}

fn rebuild_event(actor: &str, reason: &str, details: RebuildDetails) -> DomainEvent {
    DomainEvent::ReadModelsRebuilt(ReadModelsRebuilt {
        requested_by: actor.to_owned(),
        reason: reason.to_owned(),
        rules_version: details.rules_version,
        projections: details.projections,
    })
}

/// Records that read models were rebuilt, as a `ReadModelsRebuilt` event in
/// the [`ADMIN_STREAM`] (who = `actor`, why = `reason`, when = now).
pub async fn record_rebuild(
    store: &dyn EventStore,
    actor: &str,
    reason: &str,
    details: RebuildDetails,
) -> Result<AppendOutcome, RecordError> {
    let event = rebuild_event(actor, reason, details);
    let metadata = EventMetadata {
        actor: Some(actor.to_owned()),
        source: Some("rebuild".to_owned()),
        ..Default::default()
    };
    let new = NewEvent::from_domain(Uuid::new_v4(), Utc::now(), &metadata, &event)?;
    let stream = StreamId::parse(ADMIN_STREAM).expect("valid stream name");
    Ok(store
        .append(&stream, ExpectedVersion::Any, vec![new])
        .await?)
}

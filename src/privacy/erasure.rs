//! Erasure by crypto-shredding: destroy the customer's key, then record the
//! erasure (who, why; when is the event's time) in their own stream.
//!
//! The events stay as they were — the chain still verifies and projections
//! still rebuild — but their sealed personal fields can never be opened
//! again and read as `[erased]` everywhere.

use chrono::Utc;
use serde::Serialize;
use uuid::Uuid;

use super::vault::{KeyDestruction, Vault};
use super::PrivacyError;
use crate::domain::events::{DomainEvent, PersonalDataErased};
use crate::domain::{CustomerId, EventMetadata, NewEvent};
use crate::store::{EventStore, ExpectedVersion};

/// What `journey erase` did.
#[derive(Debug, Clone, Serialize)]
pub struct ErasureReport {
    /// The customer.
    pub customer_id: String,
    /// What happened to the key.
    pub key: KeyDestruction,
    /// Version of the `PersonalDataErased` event in the customer's stream.
    pub event_version: u64,
    /// Its global position.
    pub event_position: u64,
}

/// Erases a customer's personal data: validates the request, destroys the
/// key ([`Vault::destroy_key`]), appends `PersonalDataErased` (actor =
/// `requested_by`) and checkpoints again so the file holds no stale copy.
/// Repeating it is harmless (the key is already gone; another event records
/// the repeated request).
pub async fn erase_customer(
    store: &dyn EventStore,
    vault: &Vault,
    customer: &CustomerId,
    requested_by: &str,
    reason: &str,
) -> Result<ErasureReport, PrivacyError> {
    let event = DomainEvent::PersonalDataErased(PersonalDataErased {
        requested_by: requested_by.to_owned(),
        reason: reason.to_owned(),
    });
    let metadata = EventMetadata {
        actor: Some(requested_by.to_owned()),
        source: Some("erase".to_owned()),
        ..Default::default()
    };
    let new = NewEvent::from_domain(Uuid::new_v4(), Utc::now(), &metadata, &event)?;
    let stream = customer.stream_id();
    if store.stream_head(&stream).await?.is_none() {
        return Err(PrivacyError::UnknownCustomer(customer.to_string()));
    }
    let key = vault.destroy_key(customer).await?;
    let outcome = store
        .append(&stream, ExpectedVersion::Any, vec![new])
        .await?;
    let purged = vault.checkpoint().await?;
    Ok(ErasureReport {
        customer_id: customer.to_string(),
        key: KeyDestruction {
            purged: key.purged && purged,
            ..key
        },
        event_version: outcome.next_version,
        event_position: outcome.last_position,
    })
}

//! The borrowed view of one stored event that every per-customer fold takes.
//!
//! Projections never see the store's envelope: the runner decodes a
//! [`RecordedEvent`] once and hands each fold this small, copyable view, so
//! the folds stay pure and can be driven by tests without a store.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::events::DomainEvent;
use crate::domain::RecordedEvent;

/// One decoded event as a projection sees it: identity, business time, payload.
#[derive(Debug, Clone, Copy)]
pub struct EventView<'a> {
    /// The stored event id; alerts, conflicts and history entries cite it.
    pub event_id: Uuid,
    /// When the interaction happened (business time, not `recorded_at`).
    pub occurred_at: DateTime<Utc>,
    /// The typed payload.
    pub event: &'a DomainEvent,
}

impl<'a> EventView<'a> {
    /// Builds the view of a stored event whose payload the caller already decoded.
    pub fn of_recorded(recorded: &RecordedEvent, event: &'a DomainEvent) -> Self {
        Self {
            event_id: recorded.event_id,
            occurred_at: recorded.occurred_at,
            event,
        }
    }
}

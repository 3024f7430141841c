//! The domain model: who a customer is, what can happen to them, and how an
//! event is wrapped, hashed and versioned once it is stored.
//!
//! Everything here is pure (no I/O), so every other layer — stores,
//! projections, the API — can rely on the same validation and encoding.

pub mod canonical;
pub mod customer;
pub mod envelope;
pub mod events;
pub mod hash;
pub mod money;
pub mod validation;

pub use customer::{CustomerId, StreamId};
pub use envelope::{EventMetadata, NewEvent, RecordedEvent};
pub use events::{DecodeError, DomainEvent};
pub use hash::EventHash;
pub use money::{Currency, Money};
pub use validation::ValidationError;

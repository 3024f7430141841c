//! Errors every backend reports in the same shape.

use thiserror::Error;
use uuid::Uuid;

use super::ExpectedVersion;

/// Why a store operation failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// Optimistic concurrency: somebody else appended first.
    #[error(
        "wrong expected version for {stream}: expected {expected:?}, stream is at version {actual}"
    )]
    WrongExpectedVersion {
        /// Stream name.
        stream: String,
        /// What the caller expected.
        expected: ExpectedVersion,
        /// The actual version (0 = no stream).
        actual: u64,
    },
    /// An append needs at least one event.
    #[error("an append needs at least one event")]
    EmptyAppend,
    /// The same event id appears twice in one append.
    #[error("event id {0} appears more than once in the append")]
    DuplicateInBatch(Uuid),
    /// The id is stored already, with different content or in another stream.
    #[error("event id {event_id} is already stored with different content (in {stream} at version {version})")]
    EventIdConflict {
        /// The clashing id.
        event_id: Uuid,
        /// Where the stored one lives.
        stream: String,
        /// Its version.
        version: u64,
    },
    /// Some events of the append are stored already and some are new.
    #[error("{stored} of {total} events are already stored; retry the exact original append or use ExpectedVersion::Any")]
    PartiallyStored {
        /// How many were stored.
        stored: usize,
        /// Batch size.
        total: usize,
    },
    /// A stored row could not be read back (corruption or manual edits).
    #[error("stored event at position {position} is unreadable: {reason}")]
    Corrupt {
        /// Where.
        position: u64,
        /// What is wrong.
        reason: String,
    },
    /// The URL names no known backend.
    #[error("unsupported store URL {0:?}: use sqlite://FILE, postgres://… or esdb://HOST:PORT")]
    UnsupportedUrl(String),
    /// A database error (connection, I/O, constraint).
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying the embedded schema migrations failed.
    #[error("schema migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// The store's committer has stopped (the runtime is shutting down).
    #[error("the store is closed")]
    Closed,
    /// An append to a store opened for reading only.
    #[error("the store was opened for reading only")]
    ReadOnly,
    /// A read-only command found a store written by an older build, whose
    /// schema it cannot migrate (the file is not writable).
    #[error(
        "the store at {store} was written by an older journey and needs a schema migration, \
         which failed ({reason}); run any journey command once as a user who may write it"
    )]
    NeedsMigration {
        /// The store URL.
        store: String,
        /// Why migrating failed.
        reason: String,
    },
    /// A backend-specific failure (e.g. EventStoreDB gRPC).
    #[error("{backend} error: {message}")]
    Backend {
        /// Backend name.
        backend: &'static str,
        /// Its message.
        message: String,
    },
}

impl StoreError {
    /// Whether retrying the same call may succeed (lost a race, busy database).
    pub fn is_concurrency_conflict(&self) -> bool {
        matches!(self, StoreError::WrongExpectedVersion { .. })
    }
}

//! Personal data: sealed (encrypted) inside events with a per-customer key
//! kept outside them, erasable by destroying that key (crypto-shredding),
//! and pseudonymised identifiers for analytics.
//!
//! - [`seal`]: the AEAD format of one sealed field (`enc:v1:…`);
//! - [`vault`]: the key table and [`Vault::seal_profile`] / [`Vault::reveal_profile`];
//! - [`erasure`]: `journey erase` — destroy the key, record who and why;
//! - [`pseudonym`]: keyed hashes of customer ids for analytics exports.

pub mod erasure;
pub mod pseudonym;
pub mod seal;
pub mod vault;

use thiserror::Error;

use crate::domain::{DecodeError, ValidationError};
use crate::store::StoreError;

pub use erasure::{erase_customer, ErasureReport};
pub use pseudonym::{pseudonymize, PseudonymKey, PSEUDONYM_KEY_ENV};
pub use seal::ERASED;
pub use vault::{RevealedProfile, Vault};

/// Why a privacy operation failed.
#[derive(Debug, Error)]
pub enum PrivacyError {
    /// The key table could not be read or written.
    #[error("key table: {0}")]
    Database(#[from] sqlx::Error),
    /// The key table's migration failed.
    #[error("key table migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// The event store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The customer's personal data was erased; no new personal data is
    /// stored for them (re-importing it would undo the erasure).
    #[error(
        "customer {0}'s personal data was erased; profile fields cannot be stored for them again"
    )]
    Erased(String),
    /// A sealed field exists but its customer has no key and was not erased.
    #[error("customer {0} has sealed personal data but no key (key table lost or edited)")]
    KeyMissing(String),
    /// A sealed field does not open with its customer's key.
    #[error("customer {customer}: profile.{field} does not open with the customer's key (altered, or sealed for another customer)")]
    Undecryptable {
        /// Customer.
        customer: String,
        /// Profile field.
        field: &'static str,
    },
    /// Personal data in a stream that is not a customer's.
    #[error("stream {0} is not a customer stream; it cannot hold personal data")]
    NotCustomerStream(String),
    /// No such customer.
    #[error("no events for customer {0}")]
    UnknownCustomer(String),
    /// The store URL names no backend with a key table.
    #[error("the privacy vault needs a sqlite:// or postgres:// store, not {0:?}")]
    UnsupportedUrl(String),
    /// An input failed validation.
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    /// A stored payload did not decode.
    #[error("{0}")]
    Decode(#[from] DecodeError),
    /// The pseudonymisation secret is missing or too short.
    #[error("pseudonym key: {0}")]
    PseudonymKey(String),
}

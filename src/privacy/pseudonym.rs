//! Pseudonymous customer identifiers for analytics exports (CLV, cohorts).
//!
//! `pseudonymize(key, id)` is a keyed hash (HMAC-SHA256, first 16 bytes as
//! hex, prefixed `anon-`): stable for one key, so analysts can join exports,
//! but not reversible or guessable without the key — unlike a plain hash of
//! a short id, which anyone could recompute for every possible id. The key
//! comes from the `JOURNEY_PSEUDONYM_KEY` environment variable (at least 16
//! bytes; rotate it to unlink old exports from new ones).

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::PrivacyError;
use crate::domain::CustomerId;

/// The environment variable holding the pseudonymisation secret.
pub const PSEUDONYM_KEY_ENV: &str = "JOURNEY_PSEUDONYM_KEY";

/// Minimum secret length in bytes.
pub const MIN_KEY_BYTES: usize = 16;

/// The secret of [`pseudonymize`]. Never printed.
#[derive(Clone)]
pub struct PseudonymKey(Zeroizing<Vec<u8>>);

impl fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PseudonymKey(<redacted>)")
    }
}

impl PseudonymKey {
    /// Wraps a secret of at least [`MIN_KEY_BYTES`] bytes.
    pub fn new(secret: impl Into<Vec<u8>>) -> Result<Self, PrivacyError> {
        let secret = Zeroizing::new(secret.into());
        if secret.len() < MIN_KEY_BYTES {
            return Err(PrivacyError::PseudonymKey(format!(
                "must be at least {MIN_KEY_BYTES} bytes, got {}",
                secret.len()
            )));
        }
        Ok(Self(secret))
    }

    /// Reads the secret from [`PSEUDONYM_KEY_ENV`].
    pub fn from_env() -> Result<Self, PrivacyError> {
        let value = std::env::var(PSEUDONYM_KEY_ENV).map_err(|_| {
            PrivacyError::PseudonymKey(format!(
                "set {PSEUDONYM_KEY_ENV} to a secret of at least {MIN_KEY_BYTES} bytes"
            ))
        })?;
        Self::new(value.into_bytes())
    }
}

/// The pseudonym of a customer under `key`: `anon-` + 32 hex digits.
pub fn pseudonymize(key: &PseudonymKey, customer: &CustomerId) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key.0).expect("any key length");
    mac.update(b"journey-ledger/pseudonym/v1\0");
    mac.update(customer.as_str().as_bytes());
    let digest = mac.finalize().into_bytes();
    format!("anon-{}", hex::encode(&digest[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_stable_per_key_and_unlinkable_across_keys() {
        let k1 = PseudonymKey::new(b"0123456789abcdef".to_vec()).unwrap();
        let k2 = PseudonymKey::new(b"fedcba9876543210".to_vec()).unwrap();
        let c = CustomerId::parse("00017").unwrap();
        let d = CustomerId::parse("00018").unwrap();
        let p = pseudonymize(&k1, &c);
        assert_eq!(p, pseudonymize(&k1, &c));
        assert_ne!(p, pseudonymize(&k1, &d));
        assert_ne!(p, pseudonymize(&k2, &c));
        assert!(p.starts_with("anon-") && p.len() == 5 + 32);
        assert!(!p.contains("00017"));
        assert!(PseudonymKey::new(b"short".to_vec()).is_err());
        assert_eq!(format!("{k1:?}"), "PseudonymKey(<redacted>)");
    }
}

//! Sealing one personal field with XChaCha20-Poly1305.
//!
//! Format: `enc:v1:` followed by base64 (standard, padded) of
//! `nonce (24 bytes) || ciphertext+tag`. The associated data binds the
//! ciphertext to its customer and field
//! (`journey-ledger/profile/v1\0<customer>\0<field>`), so a sealed value
//! copied into another customer's event or another field does not open.
//!
//! The nonce is synthetic: the first 24 bytes of HMAC-SHA256(key, "nonce" ‖
//! associated data ‖ plaintext). Sealing is therefore deterministic per
//! customer, which keeps re-imports idempotent (same file, same stored
//! bytes) and is safe: a nonce only repeats for the very same plaintext under
//! the same key and associated data. The cost is that equal values of one
//! field of one customer have equal ciphertexts, which reveals nothing to
//! anyone who cannot already see that customer's events.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, OsRng, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Prefix of every sealed value.
pub const SEALED_PREFIX: &str = "enc:v1:";

/// What an erased field reads as.
pub const ERASED: &str = "[erased]";

/// A customer's 256-bit data key. Zeroed on drop; never printed.
#[derive(Clone)]
pub struct CustomerKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for CustomerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CustomerKey(<redacted>)")
    }
}

impl CustomerKey {
    /// A fresh random key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        Self(Zeroizing::new(key.into()))
    }

    /// Wraps stored key bytes (32 of them).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; 32] = bytes.try_into().ok()?;
        Some(Self(Zeroizing::new(arr)))
    }

    /// The raw bytes, for storing in the key table only.
    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// Whether a value is in the sealed format.
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(SEALED_PREFIX)
}

fn associated_data(customer: &str, field: &str) -> Vec<u8> {
    format!("journey-ledger/profile/v1\0{customer}\0{field}").into_bytes()
}

/// Seals `plaintext` as field `field` of `customer`.
pub fn seal(key: &CustomerKey, customer: &str, field: &str, plaintext: &str) -> String {
    let aad = associated_data(customer, field);
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(b"nonce");
    mac.update(&(aad.len() as u64).to_be_bytes());
    mac.update(&aad);
    mac.update(plaintext.as_bytes());
    let digest = mac.finalize().into_bytes();
    let nonce = XNonce::from_slice(&digest[..24]);
    let cipher = XChaCha20Poly1305::new(Key::from_slice(key.as_bytes()));
    let ciphertext = cipher
        .encrypt(
            nonce,
            Payload {
                msg: plaintext.as_bytes(),
                aad: &aad,
            },
        )
        .expect("encryption of in-memory text cannot fail");
    let mut blob = Vec::with_capacity(24 + ciphertext.len());
    blob.extend_from_slice(nonce);
    blob.extend_from_slice(&ciphertext);
    format!("{SEALED_PREFIX}{}", STANDARD.encode(blob))
}

/// Opens a sealed value; `None` when it is malformed, altered, or sealed
/// under another key, customer or field.
pub fn open(key: &CustomerKey, customer: &str, field: &str, sealed: &str) -> Option<String> {
    let blob = STANDARD.decode(sealed.strip_prefix(SEALED_PREFIX)?).ok()?;
    if blob.len() < 24 + 16 {
        return None;
    }
    let (nonce, ciphertext) = blob.split_at(24);
    let cipher = XChaCha20Poly1305::new(Key::from_slice(key.as_bytes()));
    let plain = cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: &associated_data(customer, field),
            },
        )
        .ok()?;
    String::from_utf8(plain).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_for_their_customer_and_field() {
        let key = CustomerKey::generate();
        let sealed = seal(&key, "c1", "email", "ada@example.com");
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("ada"));
        assert_eq!(
            open(&key, "c1", "email", &sealed).as_deref(),
            Some("ada@example.com")
        );
        assert_eq!(open(&key, "c2", "email", &sealed), None);
        assert_eq!(open(&key, "c1", "name", &sealed), None);
        assert_eq!(open(&CustomerKey::generate(), "c1", "email", &sealed), None);
        // Deterministic (idempotent re-imports), but not across fields.
        assert_eq!(seal(&key, "c1", "email", "ada@example.com"), sealed);
        assert_ne!(seal(&key, "c1", "name", "ada@example.com"), sealed);
    }

    #[test]
    fn a_flipped_byte_does_not_open_and_keys_never_print() {
        let key = CustomerKey::generate();
        let sealed = seal(&key, "c1", "phone", "+41 44 000 00 00");
        let mut blob = STANDARD.decode(&sealed[SEALED_PREFIX.len()..]).unwrap();
        blob[30] ^= 1;
        let altered = format!("{SEALED_PREFIX}{}", STANDARD.encode(blob));
        assert_eq!(open(&key, "c1", "phone", &altered), None);
        assert_eq!(format!("{key:?}"), "CustomerKey(<redacted>)");
    }
}

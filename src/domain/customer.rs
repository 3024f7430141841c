//! Customer identity and the stream that holds a customer's history.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::validation::ValidationError;

/// The prefix of every customer stream: one stream per customer.
pub const CUSTOMER_STREAM_PREFIX: &str = "customer-";

/// The first stream id after every customer stream (`customer.` sorts
/// right after `customer-` and every id character): customer streams are
/// the range `CUSTOMER_STREAM_PREFIX..CUSTOMER_STREAMS_END`.
pub const CUSTOMER_STREAMS_END: &str = "customer.";

/// A customer identifier as the business knows it (e.g. `00003`).
///
/// Restricted to `[A-Za-z0-9_.:@-]`, 1–64 bytes, so it can be embedded in
/// stream names, URLs and file names without escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CustomerId(String);

impl CustomerId {
    /// Validates and wraps a customer identifier.
    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        if value.is_empty() || value.len() > 64 {
            return Err(ValidationError::new(
                "customer_id",
                "must be 1 to 64 bytes long",
            ));
        }
        if let Some(bad) = value
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '@' | '-')))
        {
            return Err(ValidationError::new(
                "customer_id",
                format!("character {bad:?} is not allowed (use letters, digits, _ . : @ -)"),
            ));
        }
        Ok(Self(value.to_owned()))
    }

    /// The identifier text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The stream holding this customer's events.
    pub fn stream_id(&self) -> StreamId {
        StreamId(format!("{CUSTOMER_STREAM_PREFIX}{}", self.0))
    }
}

impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for CustomerId {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for CustomerId {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<CustomerId> for String {
    fn from(value: CustomerId) -> Self {
        value.0
    }
}

/// The name of an event stream. Customer streams are `customer-<id>`;
/// the ledger's own bookkeeping (rebuilds, erasures) uses `ledger-<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamId(String);

impl StreamId {
    /// Validates a stream name: `customer-<customer id>` or `ledger-<name>`.
    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        if let Some(id) = value.strip_prefix(CUSTOMER_STREAM_PREFIX) {
            CustomerId::parse(id).map_err(|e| ValidationError::new("stream_id", e.reason))?;
            return Ok(Self(value.to_owned()));
        }
        if let Some(name) = value.strip_prefix("ledger-") {
            CustomerId::parse(name).map_err(|e| ValidationError::new("stream_id", e.reason))?;
            return Ok(Self(value.to_owned()));
        }
        Err(ValidationError::new(
            "stream_id",
            format!("{value:?} must start with \"customer-\" or \"ledger-\""),
        ))
    }

    /// Wraps a stream name read back from a store, which validated it on write.
    pub(crate) fn from_trusted(value: String) -> Self {
        Self(value)
    }

    /// The stream name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The customer this stream belongs to, if it is a customer stream.
    pub fn customer_id(&self) -> Option<CustomerId> {
        self.0
            .strip_prefix(CUSTOMER_STREAM_PREFIX)
            .map(|id| CustomerId(id.to_owned()))
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for StreamId {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<StreamId> for String {
    fn from(value: StreamId) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customer_ids_are_restricted_to_safe_characters() {
        assert!(CustomerId::parse("00003").is_ok());
        assert!(CustomerId::parse("a.b_c-d@e:f").is_ok());
        let err = CustomerId::parse("a b").unwrap_err();
        assert_eq!(err.field, "customer_id");
        assert!(err.reason.contains("' '"));
        assert!(CustomerId::parse("").is_err());
        assert!(CustomerId::parse(&"x".repeat(65)).is_err());
    }

    #[test]
    fn stream_ids_round_trip_to_customers() {
        let c = CustomerId::parse("42").unwrap();
        let s = c.stream_id();
        assert_eq!(s.as_str(), "customer-42");
        assert_eq!(StreamId::parse("customer-42").unwrap(), s);
        assert_eq!(s.customer_id(), Some(c));
        assert!(StreamId::parse("ledger-admin")
            .unwrap()
            .customer_id()
            .is_none());
        assert!(StreamId::parse("orders-1").is_err());
        assert!(StreamId::parse("customer-").is_err());
    }
}

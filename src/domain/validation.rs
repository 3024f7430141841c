//! Validation errors shared by every input path (commands, imports, API).

use thiserror::Error;

/// A rejected input, naming the offending field so that users can fix it.
///
/// Every entry point (CLI import, GraphQL mutation, store append) reports
/// this same shape, so an error always says *which field* and *why*.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    /// Dotted path of the field, e.g. `amount.currency`.
    pub field: String,
    /// Human-readable explanation of what is wrong.
    pub reason: String,
}

impl ValidationError {
    /// Builds an error for `field` with a reason.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Prefixes the field path, so nested structures report full paths.
    pub fn within(mut self, parent: &str) -> Self {
        self.field = format!("{parent}.{}", self.field);
        self
    }
}

/// Checks that a free-text identifier is present, short and printable.
pub fn require_id(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.trim().is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.len() > 128 {
        return Err(ValidationError::new(field, "must be at most 128 bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Checks that an optional free text stays within a size bound.
pub fn limit_text(field: &str, value: &str, max_bytes: usize) -> Result<(), ValidationError> {
    if value.len() > max_bytes {
        return Err(ValidationError::new(
            field,
            format!("must be at most {max_bytes} bytes"),
        ));
    }
    Ok(())
}

//! `Long`: the GraphQL scalar for amounts, points, versions and positions.
//!
//! GraphQL's `Int` is a *32-bit* signed integer: a spec-following client
//! (graphql-js, Apollo) refuses an `Int` above 2,147,483,647 — USD 21.4
//! million in cents, a customer's lifetime revenue at a large retailer, a
//! log position after two billion events. Declaring such fields `Int` and
//! answering bigger numbers breaks those clients; accepting any 64-bit
//! number silently invites overflow. So they are `Long`, as commerce APIs
//! do: a 64-bit integer that travels as a JSON number when it is exactly
//! representable in a JavaScript number (|n| ≤ 2^53 − 1, which every amount
//! within the money limit is) and as a decimal string otherwise; inputs
//! may be either form. Domain limits (the maximum amount, a stream's real
//! version) are checked where the value is used, with the field's name.

use async_graphql::{InputValueError, InputValueResult, Scalar, ScalarType, Value};

/// A 64-bit integer (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Long(pub i64);

/// The largest integer a JavaScript number holds exactly.
const MAX_SAFE: i64 = (1 << 53) - 1;

#[Scalar(name = "Long")]
/// A 64-bit signed integer: a JSON number up to ±(2^53 − 1), a decimal
/// string beyond; accepted as either.
impl ScalarType for Long {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::Number(n) => n
                .as_i64()
                .map(Long)
                .ok_or_else(|| InputValueError::custom(format!("{n} is not a 64-bit integer"))),
            Value::String(s) => s.trim().parse::<i64>().map(Long).map_err(|_| {
                InputValueError::custom(format!("{s:?} is not a decimal 64-bit integer"))
            }),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn is_valid(value: &Value) -> bool {
        matches!(value, Value::Number(_) | Value::String(_))
    }

    fn to_value(&self) -> Value {
        if (-MAX_SAFE..=MAX_SAFE).contains(&self.0) {
            Value::Number(self.0.into())
        } else {
            Value::String(self.0.to_string())
        }
    }
}

impl From<i64> for Long {
    fn from(n: i64) -> Self {
        Long(n)
    }
}

impl From<u64> for Long {
    /// Counts and positions; saturates at `i64::MAX` (never reached).
    fn from(n: u64) -> Self {
        Long(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl From<Long> for i64 {
    fn from(n: Long) -> Self {
        n.0
    }
}

impl std::fmt::Display for Long {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl serde::Serialize for Long {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i64(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_strings_in_numbers_or_strings_out() {
        assert_eq!(
            Long::parse(Value::from(2_147_483_648_i64)).unwrap(),
            Long(2_147_483_648)
        );
        assert_eq!(Long::parse(Value::from("-12")).unwrap(), Long(-12));
        assert!(Long::parse(Value::from("12.5")).is_err());
        assert!(Long::parse(Value::from(1.5)).is_err());
        assert!(Long::parse(Value::Boolean(true)).is_err());
        assert_eq!(Long(MAX_SAFE).to_value(), Value::from(MAX_SAFE));
        assert_eq!(
            Long(MAX_SAFE + 1).to_value(),
            Value::from((MAX_SAFE + 1).to_string())
        );
        assert_eq!(Long(i64::MIN).to_value(), Value::from(i64::MIN.to_string()));
    }
}

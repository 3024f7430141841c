//! Money as integer minor units with an ISO 4217 currency.
//!
//! Amounts are never floating point: sums of `f64` drift, and an auditor must
//! be able to add the events up to the cent.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::validation::ValidationError;

/// ISO 4217 codes the ledger accepts, with their minor-unit exponent.
///
/// A closed list, so that typos such as `USX` are rejected at the door
/// rather than creating a currency nobody reports on. Sorted by code: every
/// decoded amount looks its currency up, and a linear scan comparing
/// strings was 4 % of a rebuild's samples (CDNOW ×10, `perf`).
const CURRENCIES: &[(&str, u8)] = &[
    ("AED", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("BGN", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EGP", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("MXN", 2),
    ("MYR", 2),
    ("NGN", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PEN", 2),
    ("PHP", 2),
    ("PKR", 2),
    ("PLN", 2),
    ("QAR", 2),
    ("RON", 2),
    ("RUB", 2),
    ("SAR", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("THB", 2),
    ("TRY", 2),
    ("TWD", 2),
    ("UAH", 2),
    ("USD", 2),
    ("VND", 0),
    ("ZAR", 2),
];

/// An ISO 4217 currency code from the accepted list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct Currency([u8; 3]);

/// The entry of [`CURRENCIES`] for a code, by binary search.
fn listed(code: &[u8]) -> Option<&'static (&'static str, u8)> {
    CURRENCIES
        .binary_search_by(|(listed, _)| listed.as_bytes().cmp(code))
        .ok()
        .map(|index| &CURRENCIES[index])
}

impl Currency {
    /// US dollars, the currency of the CDNOW data set.
    pub const USD: Currency = Currency(*b"USD");

    /// Parses an upper-case ISO 4217 code such as `EUR`.
    pub fn parse(code: &str) -> Result<Self, ValidationError> {
        match listed(code.as_bytes()) {
            Some((c, _)) => {
                let b = c.as_bytes();
                Ok(Currency([b[0], b[1], b[2]]))
            }
            None => Err(ValidationError::new(
                "currency",
                format!("{code:?} is not a supported ISO 4217 currency code"),
            )),
        }
    }

    /// The three-letter code.
    pub fn code(&self) -> &str {
        std::str::from_utf8(&self.0).expect("currency codes are ASCII")
    }

    /// Digits after the decimal point (2 for USD, 0 for JPY).
    pub fn minor_digits(&self) -> u8 {
        listed(&self.0)
            .map(|(_, d)| *d)
            .expect("constructed from the list")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Deserialized from the borrowed text where the format allows (JSON
/// payloads): no `String` per amount.
impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Code;
        impl serde::de::Visitor<'_> for Code {
            type Value = Currency;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an ISO 4217 currency code")
            }
            fn visit_str<E: serde::de::Error>(self, code: &str) -> Result<Currency, E> {
                Currency::parse(code).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Code)
    }
}

impl From<Currency> for String {
    fn from(value: Currency) -> Self {
        value.code().to_owned()
    }
}

/// An amount in integer minor units (cents) of a currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    /// Amount in minor units, e.g. 1999 for USD 19.99.
    pub minor: i64,
    /// The currency of the amount.
    pub currency: Currency,
}

impl Money {
    /// Builds an amount from minor units.
    pub fn new(minor: i64, currency: Currency) -> Self {
        Self { minor, currency }
    }

    /// Requires a strictly positive amount (orders, refunds, costs).
    /// Largest amount one event may carry, in minor units: 10^13 (a
    /// hundred billion in a two-decimal currency). Sums over a customer's
    /// or a population's events then stay far inside `i64` (over 900,000
    /// amounts at the limit), so a total cannot wrap through any real
    /// history; an amount above it is an input error, named as such.
    pub const MAX_MINOR: i64 = 10_000_000_000_000;

    /// Refuses an amount above [`Money::MAX_MINOR`] (in either sign).
    pub fn require_within_limit(&self, field: &str) -> Result<(), ValidationError> {
        if self.minor.unsigned_abs() > Self::MAX_MINOR as u64 {
            return Err(ValidationError::new(
                format!("{field}.minor"),
                format!(
                    "{} is larger than the ledger accepts (at most {} minor units per amount)",
                    self.minor,
                    Self::MAX_MINOR
                ),
            ));
        }
        Ok(())
    }

    pub fn require_positive(&self, field: &str) -> Result<(), ValidationError> {
        if self.minor <= 0 {
            return Err(ValidationError::new(
                format!("{field}.minor"),
                format!("must be greater than zero, got {}", self.minor),
            ));
        }
        Ok(())
    }

    /// Parses a decimal text such as `29.33` exactly into minor units.
    ///
    /// Rejects more fractional digits than the currency has, rather than
    /// rounding silently.
    pub fn parse_decimal(text: &str, currency: Currency) -> Result<Self, ValidationError> {
        let digits = currency.minor_digits() as usize;
        let bad = || ValidationError::new("amount", format!("{text:?} is not a decimal amount"));
        let (neg, body) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (int_part, frac_part) = body.split_once('.').unwrap_or((body, ""));
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(bad());
        }
        if !int_part.bytes().all(|b| b.is_ascii_digit())
            || !frac_part.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        if frac_part.len() > digits {
            return Err(ValidationError::new(
                "amount",
                format!("{text:?} has more than {digits} decimal places for {currency}"),
            ));
        }
        let scale = 10i64.pow(digits as u32);
        let int: i64 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| bad())?
        };
        let frac: i64 = if frac_part.is_empty() {
            0
        } else {
            frac_part.parse::<i64>().map_err(|_| bad())?
                * 10i64.pow((digits - frac_part.len()) as u32)
        };
        let minor = int
            .checked_mul(scale)
            .and_then(|v| v.checked_add(frac))
            .ok_or_else(|| ValidationError::new("amount", format!("{text:?} is too large")))?;
        Ok(Self::new(if neg { -minor } else { minor }, currency))
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.currency.minor_digits() as u32;
        if digits == 0 {
            return write!(f, "{} {}", self.minor, self.currency);
        }
        let scale = 10i64.pow(digits);
        let sign = if self.minor < 0 { "-" } else { "" };
        let abs = self.minor.unsigned_abs();
        write!(
            f,
            "{sign}{}.{:0width$} {}",
            abs / scale as u64,
            abs % scale as u64,
            self.currency,
            width = digits as usize
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_sorted_for_its_binary_search() {
        assert!(CURRENCIES.windows(2).all(|w| w[0].0 < w[1].0));
        for (code, digits) in CURRENCIES {
            let currency = Currency::parse(code).unwrap();
            assert_eq!((currency.code(), currency.minor_digits()), (*code, *digits));
        }
    }

    #[test]
    fn currencies_round_trip_through_serde() {
        let json = serde_json::to_string(&Currency::parse("JPY").unwrap()).unwrap();
        assert_eq!(json, "\"JPY\"");
        let back: Currency = serde_json::from_str(&json).unwrap();
        assert_eq!(back.code(), "JPY");
        let error = serde_json::from_str::<Currency>("\"usd\"").unwrap_err();
        assert!(
            error.to_string().contains("not a supported ISO 4217"),
            "{error}"
        );
        assert!(serde_json::from_str::<Currency>("7").is_err());
    }

    #[test]
    fn unknown_currencies_are_rejected() {
        assert!(Currency::parse("USD").is_ok());
        let err = Currency::parse("USX").unwrap_err();
        assert_eq!(err.field, "currency");
        assert!(Currency::parse("usd").is_err());
        assert!(serde_json::from_str::<Currency>("\"XXX\"").is_err());
    }

    #[test]
    fn decimal_amounts_parse_exactly() {
        let m = Money::parse_decimal("29.33", Currency::USD).unwrap();
        assert_eq!(m.minor, 2933);
        assert_eq!(
            Money::parse_decimal("0.1", Currency::USD).unwrap().minor,
            10
        );
        assert_eq!(Money::parse_decimal("7", Currency::USD).unwrap().minor, 700);
        assert_eq!(
            Money::parse_decimal("-1.05", Currency::USD).unwrap().minor,
            -105
        );
        assert!(Money::parse_decimal("1.234", Currency::USD).is_err());
        assert!(Money::parse_decimal("1e3", Currency::USD).is_err());
        assert!(Money::parse_decimal(".", Currency::USD).is_err());
        let jpy = Currency::parse("JPY").unwrap();
        assert!(Money::parse_decimal("1.5", jpy).is_err());
        assert_eq!(Money::parse_decimal("150", jpy).unwrap().minor, 150);
    }

    #[test]
    fn money_displays_in_major_units() {
        assert_eq!(Money::new(2933, Currency::USD).to_string(), "29.33 USD");
        assert_eq!(Money::new(-5, Currency::USD).to_string(), "-0.05 USD");
    }
}

//! Field mappings: how an external message's fields become a ledger event's
//! payload, as data (`projections/ingest/segment.toml`).
//!
//! A mapping names the ledger event type and, per payload field, where its
//! value comes from (a path into the message, a literal, a decimal amount, a
//! product count). The payload it builds is decoded by the same
//! [`crate::domain::DomainEvent::from_json`] every way in uses, so a value
//! of the wrong shape is refused naming both the payload field and the
//! message path it came from.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use thiserror::Error;

use crate::domain::{Currency, Money};

/// A mapping file that cannot be used.
#[derive(Debug, Error)]
#[error("{file}: {at}: {reason}")]
pub struct MappingError {
    /// The file.
    pub file: String,
    /// Where in it, e.g. `track."Order Completed".fields.amount`.
    pub at: String,
    /// What is wrong.
    pub reason: String,
}

/// Where one payload field's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldSource {
    /// The first present path, as is.
    Path(Vec<String>),
    /// The first present path; numbers and booleans become text.
    Text(Vec<String>),
    /// Always this value.
    Literal(Value),
    /// A decimal amount at the first present path, in the currency at
    /// `currency` (or `default_currency`), as exact minor units.
    Money {
        /// Paths of the amount.
        amount: Vec<String>,
        /// Paths of the ISO 4217 code.
        currency: Vec<String>,
        /// Used when no currency path is present.
        default_currency: Option<Currency>,
    },
    /// The sum of `quantity` over the products array at the path (1 each
    /// without one; 1 when there are no products).
    ItemCount(String),
    /// `partial` when a non-empty products array is at the path, else
    /// `full`.
    RefundKind(String),
}

/// One payload field: its source and whether it may be left out.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldMapping {
    /// Where the value comes from.
    pub source: FieldSource,
    /// Leave the field out when no path is present (else refuse).
    pub optional: bool,
}

/// How one kind of message becomes one ledger event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventMapping {
    /// The ledger event type, e.g. `OrderPlaced`.
    pub event_type: String,
    /// Payload field name → source.
    pub fields: BTreeMap<String, FieldMapping>,
    /// Hold the event this long and drop it if an order of the customer
    /// arrives meanwhile (cart abandonment); `None` records at once.
    pub hold_without_order_secs: Option<u64>,
    /// Paths of the business key that identifies the event for
    /// idempotency (e.g. `properties.order_id`: an order completed twice
    /// under two message ids is stored once); `None` uses the message id.
    pub key: Option<Vec<String>>,
}

impl EventMapping {
    /// The business key of `message`, when the mapping names one and the
    /// message has it (as text).
    pub fn key_of(&self, message: &Value) -> Option<String> {
        let paths = self.key.as_ref()?;
        match first_value(message, paths)? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            v @ Value::Number(_) => Some(v.to_string()),
            _ => None,
        }
    }
}

/// The value at a dotted path (`properties.order_id`) of a message.
pub fn at_path<'a>(message: &'a Value, path: &str) -> Option<&'a Value> {
    let mut here = message;
    for part in path.split('.') {
        here = here.get(part)?;
    }
    (!here.is_null()).then_some(here)
}

/// The first present path and its value.
fn first<'m, 'p>(message: &'m Value, paths: &'p [String]) -> Option<(&'p str, &'m Value)> {
    paths
        .iter()
        .find_map(|p| at_path(message, p).map(|v| (p.as_str(), v)))
}

impl EventMapping {
    /// Builds the payload for `message`. Errors name the payload field and
    /// the message paths looked at.
    pub fn payload(&self, message: &Value) -> Result<Value, String> {
        let mut payload = Map::new();
        for (field, mapping) in &self.fields {
            match mapping.source.extract(message) {
                Ok(Some(value)) => {
                    payload.insert(field.clone(), value);
                }
                Ok(None) if mapping.optional => {}
                Ok(None) => {
                    return Err(format!(
                        "{field}: missing; looked at {}",
                        mapping.source.describe()
                    ))
                }
                Err(reason) => return Err(format!("{field}: {reason}")),
            }
        }
        Ok(Value::Object(payload))
    }
}

impl FieldSource {
    fn describe(&self) -> String {
        match self {
            FieldSource::Path(p) | FieldSource::Text(p) => p.join(", "),
            FieldSource::Money { amount, .. } => amount.join(", "),
            FieldSource::ItemCount(p) | FieldSource::RefundKind(p) => p.clone(),
            FieldSource::Literal(_) => "a literal".into(),
        }
    }

    /// The field's value, `None` when no path is present.
    fn extract(&self, message: &Value) -> Result<Option<Value>, String> {
        Ok(match self {
            FieldSource::Literal(v) => Some(v.clone()),
            FieldSource::Path(paths) => first_value(message, paths).cloned(),
            FieldSource::Text(paths) => match first_value(message, paths) {
                None => None,
                Some(Value::String(s)) => Some(Value::String(s.clone())),
                Some(v @ (Value::Number(_) | Value::Bool(_))) => Some(Value::String(v.to_string())),
                Some(other) => {
                    return Err(format!(
                        "{} must be text or a number, got {}",
                        paths.join(" / "),
                        kind_of(other)
                    ))
                }
            },
            FieldSource::Money {
                amount,
                currency,
                default_currency,
            } => {
                let Some((path, value)) = first(message, amount) else {
                    return Ok(None);
                };
                let code = match first_value(message, currency) {
                    Some(Value::String(code)) => Currency::parse(&code.to_ascii_uppercase())
                        .map_err(|e| format!("{}: {}", currency.join(" / "), e.reason))?,
                    Some(other) => {
                        return Err(format!(
                            "{} must be an ISO 4217 code, got {}",
                            currency.join(" / "),
                            kind_of(other)
                        ))
                    }
                    None => default_currency.ok_or_else(|| {
                        format!("currency missing; looked at {}", currency.join(", "))
                    })?,
                };
                let text = match value {
                    Value::Number(n) => n.to_string(),
                    Value::String(s) => s.trim().to_owned(),
                    other => {
                        return Err(format!(
                            "{path} must be a decimal amount, got {}",
                            kind_of(other)
                        ))
                    }
                };
                let money = Money::parse_decimal(&text, code)
                    .map_err(|e| format!("{path}: {}", e.reason))?;
                Some(serde_json::to_value(money).expect("money serializes"))
            }
            FieldSource::ItemCount(path) => {
                let count = match at_path(message, path) {
                    None => 1,
                    Some(Value::Array(products)) if products.is_empty() => 1,
                    Some(Value::Array(products)) => {
                        let mut total: u64 = 0;
                        for (i, product) in products.iter().enumerate() {
                            let quantity = match product.get("quantity") {
                                None | Some(Value::Null) => 1,
                                Some(q) => q.as_u64().ok_or_else(|| {
                                    format!("{path}[{i}].quantity must be a whole number ≥ 0")
                                })?,
                            };
                            total = total.saturating_add(quantity);
                        }
                        total.max(1)
                    }
                    Some(other) => {
                        return Err(format!("{path} must be an array, got {}", kind_of(other)))
                    }
                };
                Some(Value::from(count))
            }
            FieldSource::RefundKind(path) => Some(Value::from(match at_path(message, path) {
                Some(Value::Array(products)) if !products.is_empty() => "partial",
                _ => "full",
            })),
        })
    }
}

fn first_value<'a>(message: &'a Value, paths: &[String]) -> Option<&'a Value> {
    paths.iter().find_map(|p| at_path(message, p))
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses one `[...]` mapping table of a file.
pub fn parse_event_mapping(
    file: &str,
    at: &str,
    table: &toml::Value,
) -> Result<EventMapping, MappingError> {
    let err = |at: String, reason: String| MappingError {
        file: file.to_owned(),
        at,
        reason,
    };
    let table = table
        .as_table()
        .ok_or_else(|| err(at.to_owned(), "must be a table".into()))?;
    let mut event_type = None;
    let mut fields = BTreeMap::new();
    let mut hold = None;
    let mut business_key = None;
    for (key, value) in table {
        let here = format!("{at}.{key}");
        match key.as_str() {
            "event_type" => {
                let name = value
                    .as_str()
                    .ok_or_else(|| err(here.clone(), "must be text".into()))?;
                if crate::domain::DomainEvent::current_schema_version(name).is_none() {
                    return Err(err(here, format!("unknown ledger event type {name:?}")));
                }
                event_type = Some(name.to_owned());
            }
            "hold_without_order_secs" => {
                let secs = value
                    .as_integer()
                    .filter(|s| *s >= 0)
                    .ok_or_else(|| err(here, "must be a whole number of seconds".into()))?;
                hold = Some(secs as u64);
            }
            "key" => business_key = Some(paths(value).map_err(|reason| err(here, reason))?),
            "fields" => {
                let table = value
                    .as_table()
                    .ok_or_else(|| err(here.clone(), "must be a table".into()))?;
                for (field, source) in table {
                    let at = format!("{here}.{field}");
                    let mapping = parse_field(source).map_err(|reason| err(at, reason))?;
                    fields.insert(field.clone(), mapping);
                }
            }
            other => {
                return Err(err(
                    here,
                    format!(
                        "unknown key {other:?} (event_type, fields, key, hold_without_order_secs)"
                    ),
                ))
            }
        }
    }
    let event_type = event_type.ok_or_else(|| err(at.to_owned(), "event_type missing".into()))?;
    Ok(EventMapping {
        event_type,
        fields,
        hold_without_order_secs: hold,
        key: business_key,
    })
}

fn paths(value: &toml::Value) -> Result<Vec<String>, String> {
    match value {
        toml::Value::String(s) => Ok(vec![s.clone()]),
        toml::Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| "paths must be text".to_owned())
            })
            .collect(),
        _ => Err("must be a path or a non-empty list of paths".into()),
    }
}

fn parse_field(value: &toml::Value) -> Result<FieldMapping, String> {
    let table = match value {
        toml::Value::Table(table) => table,
        other => {
            return Ok(FieldMapping {
                source: FieldSource::Path(paths(other)?),
                optional: false,
            })
        }
    };
    let mut optional = false;
    let mut source = None;
    let mut currency = None;
    let mut default_currency = None;
    for (key, value) in table {
        let set = |source: &mut Option<FieldSource>, s: FieldSource| {
            if source.replace(s).is_some() {
                Err("give one of path, text, value, money, item_count, refund_kind".to_owned())
            } else {
                Ok(())
            }
        };
        match key.as_str() {
            "optional" => optional = value.as_bool().ok_or("optional must be true or false")?,
            "path" => set(&mut source, FieldSource::Path(paths(value)?))?,
            "text" => set(&mut source, FieldSource::Text(paths(value)?))?,
            "value" => set(
                &mut source,
                FieldSource::Literal(
                    serde_json::to_value(value).map_err(|e| format!("value: {e}"))?,
                ),
            )?,
            "money" => set(
                &mut source,
                FieldSource::Money {
                    amount: paths(value)?,
                    currency: Vec::new(),
                    default_currency: None,
                },
            )?,
            "currency" => currency = Some(paths(value)?),
            "default_currency" => {
                let code = value.as_str().ok_or("default_currency must be text")?;
                default_currency = Some(
                    Currency::parse(code).map_err(|e| format!("default_currency: {}", e.reason))?,
                );
            }
            "item_count" => set(
                &mut source,
                FieldSource::ItemCount(value.as_str().ok_or("item_count must be a path")?.into()),
            )?,
            "refund_kind" => set(
                &mut source,
                FieldSource::RefundKind(value.as_str().ok_or("refund_kind must be a path")?.into()),
            )?,
            other => return Err(format!("unknown key {other:?}")),
        }
    }
    let mut source =
        source.ok_or("give one of path, text, value, money, item_count, refund_kind")?;
    match &mut source {
        FieldSource::Money {
            currency: c,
            default_currency: d,
            ..
        } => {
            *c = currency.unwrap_or_default();
            *d = default_currency;
            if c.is_empty() && d.is_none() {
                return Err("money needs currency (a path) or default_currency".into());
            }
        }
        _ if currency.is_some() || default_currency.is_some() => {
            return Err("currency and default_currency go with money".into())
        }
        _ => {}
    }
    Ok(FieldMapping { source, optional })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mapping(text: &str) -> Result<EventMapping, MappingError> {
        let value: toml::Value = toml::from_str(text).unwrap();
        parse_event_mapping("t.toml", "m", &value)
    }

    #[test]
    fn builds_payloads_from_paths_money_and_counts() {
        let m = mapping(
            r#"
            event_type = "OrderPlaced"
            fields.order_id = { text = ["properties.order_id", "messageId"] }
            fields.amount = { money = ["properties.total", "properties.revenue"], currency = "properties.currency", default_currency = "USD" }
            fields.item_count = { item_count = "properties.products" }
            "#,
        )
        .unwrap();
        let message = json!({"messageId": "m1", "properties": {
            "order_id": 5001, "revenue": 19.99, "currency": "eur",
            "products": [{"quantity": 2}, {"sku": "x"}]}});
        assert_eq!(
            m.payload(&message).unwrap(),
            json!({"order_id": "5001", "amount": {"minor": 1999, "currency": "EUR"}, "item_count": 3})
        );
        let no_products = json!({"properties": {"order_id": "a", "total": "7"}});
        assert_eq!(
            m.payload(&no_products).unwrap(),
            json!({"order_id": "a", "amount": {"minor": 700, "currency": "USD"}, "item_count": 1})
        );
    }

    #[test]
    fn errors_name_the_field_and_the_path() {
        let m = mapping(
            r#"
            event_type = "OrderPlaced"
            fields.order_id = { text = "properties.order_id" }
            fields.amount = { money = "properties.total", currency = "properties.currency" }
            fields.item_count = { value = 1 }
            "#,
        )
        .unwrap();
        let err = m
            .payload(&json!({"properties": {"total": 1.999, "currency": "USD"}}))
            .unwrap_err();
        assert_eq!(
            err,
            "amount: properties.total: \"1.999\" has more than 2 decimal places for USD"
        );
        let err = m.payload(&json!({"properties": {}})).unwrap_err();
        assert_eq!(err, "amount: missing; looked at properties.total");
        let err = m
            .payload(&json!({"properties": {"order_id": {"a": 1}, "total": 1, "currency": "USD"}}))
            .unwrap_err();
        assert_eq!(
            err,
            "order_id: properties.order_id must be text or a number, got an object"
        );
    }

    #[test]
    fn bad_mapping_files_are_named() {
        let err = mapping("event_type = \"Teleported\"").unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.toml: m.event_type: unknown ledger event type \"Teleported\""
        );
        let err =
            mapping("event_type = \"OrderPlaced\"\nfields.amount = { mony = \"x\" }").unwrap_err();
        assert!(
            err.to_string()
                .contains("m.fields.amount: unknown key \"mony\""),
            "{err}"
        );
        let err =
            mapping("event_type = \"OrderPlaced\"\nfields.amount = { money = \"x\" }").unwrap_err();
        assert!(err.to_string().contains("money needs currency"), "{err}");
    }
}

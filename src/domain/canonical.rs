//! Canonical JSON: the one byte encoding of a JSON value that hashes use.
//!
//! Objects have their keys sorted by UTF-8 bytes, no insignificant white
//! space is written, and strings and numbers use `serde_json`'s escaping and
//! formatting. Sorting is done here explicitly so that the encoding does not
//! depend on whether some dependency enables `serde_json/preserve_order`.

use serde_json::Value;

/// Encodes `value` canonically (sorted keys, compact).
pub fn to_canonical_string(value: &Value) -> String {
    let mut out = String::with_capacity(128);
    write_value(value, &mut out);
    out
}

fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (key, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(key).expect("strings serialize"));
                out.push(':');
                write_value(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&serde_json::to_string(scalar).expect("scalars serialize")),
    }
}

/// Re-encodes JSON text canonically; used to check stored payloads.
pub fn canonicalize_text(text: &str) -> Result<String, serde_json::Error> {
    let value: Value = serde_json::from_str(text)?;
    Ok(to_canonical_string(&value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_at_every_depth() {
        let v = json!({"b": 1, "a": {"z": [1, {"y": 2, "x": 3}], "c": "é\n"}});
        assert_eq!(
            to_canonical_string(&v),
            r#"{"a":{"c":"é\n","z":[1,{"x":3,"y":2}]},"b":1}"#
        );
    }

    #[test]
    fn canonical_text_is_a_fixed_point() {
        let text = r#"{ "b" : 1.5, "a" : null }"#;
        let once = canonicalize_text(text).unwrap();
        assert_eq!(once, r#"{"a":null,"b":1.5}"#);
        assert_eq!(canonicalize_text(&once).unwrap(), once);
    }
}

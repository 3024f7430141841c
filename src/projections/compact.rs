//! Serde helpers that keep fold states small in the binary state format
//! ([`super::state`]) and unchanged in JSON.
//!
//! `chrono` writes every instant as an RFC 3339 string (27 bytes and more)
//! whatever the format. Persisted fold states hold many instants, so in
//! formats that are not human readable (postcard) these helpers write an
//! instant as its microseconds since the Unix epoch (a varint, at most 10
//! bytes) and a calendar day as days since the epoch. Human-readable formats
//! (JSON: the API, exports, `journey customer`) keep the strings, so the
//! same types print as before.

use chrono::{DateTime, NaiveDate, Utc};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

fn to_micros(at: &DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn from_micros<E: serde::de::Error>(us: i64) -> Result<DateTime<Utc>, E> {
    DateTime::from_timestamp_micros(us)
        .ok_or_else(|| E::custom(format!("instant {us} µs is out of range")))
}

/// An instant: RFC 3339 in JSON, microseconds in binary.
pub mod instant {
    use super::*;

    /// Serializes one instant.
    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            at.serialize(s)
        } else {
            to_micros(at).serialize(s)
        }
    }

    /// Deserializes one instant.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        if d.is_human_readable() {
            DateTime::<Utc>::deserialize(d)
        } else {
            from_micros(i64::deserialize(d)?)
        }
    }
}

/// An optional instant (see [`instant`]).
pub mod instant_opt {
    use super::*;

    /// Serializes an optional instant.
    pub fn serialize<S: Serializer>(at: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            at.serialize(s)
        } else {
            at.as_ref().map(to_micros).serialize(s)
        }
    }

    /// Deserializes an optional instant.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        if d.is_human_readable() {
            Option::<DateTime<Utc>>::deserialize(d)
        } else {
            Option::<i64>::deserialize(d)?.map(from_micros).transpose()
        }
    }
}

/// A list of `(instant, T)` pairs, oldest first (see [`instant`]).
pub mod instant_pairs {
    use super::*;

    /// Serializes the pairs.
    pub fn serialize<S: Serializer, T: Serialize>(
        pairs: &[(DateTime<Utc>, T)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            pairs.serialize(s)
        } else {
            s.collect_seq(pairs.iter().map(|(at, v)| (to_micros(at), v)))
        }
    }

    /// Deserializes the pairs.
    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Vec<(DateTime<Utc>, T)>, D::Error> {
        if d.is_human_readable() {
            Vec::<(DateTime<Utc>, T)>::deserialize(d)
        } else {
            Vec::<(i64, T)>::deserialize(d)?
                .into_iter()
                .map(|(us, v)| Ok((from_micros(us)?, v)))
                .collect()
        }
    }
}

/// A list of `(T, instant)` pairs (see [`instant`]).
pub mod pairs_instant {
    use super::*;

    /// Serializes the pairs.
    pub fn serialize<S: Serializer, T: Serialize>(
        pairs: &[(T, DateTime<Utc>)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            pairs.serialize(s)
        } else {
            s.collect_seq(pairs.iter().map(|(v, at)| (v, to_micros(at))))
        }
    }

    /// Deserializes the pairs.
    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Vec<(T, DateTime<Utc>)>, D::Error> {
        if d.is_human_readable() {
            Vec::<(T, DateTime<Utc>)>::deserialize(d)
        } else {
            Vec::<(T, i64)>::deserialize(d)?
                .into_iter()
                .map(|(v, us)| Ok((v, from_micros(us)?)))
                .collect()
        }
    }
}

/// An optional `(instant, T)` pair (see [`instant`]).
pub mod instant_pair_opt {
    use super::*;

    /// Serializes the pair.
    pub fn serialize<S: Serializer, T: Serialize>(
        pair: &Option<(DateTime<Utc>, T)>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            pair.serialize(s)
        } else {
            pair.as_ref().map(|(at, v)| (to_micros(at), v)).serialize(s)
        }
    }

    /// Deserializes the pair.
    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<(DateTime<Utc>, T)>, D::Error> {
        if d.is_human_readable() {
            Option::<(DateTime<Utc>, T)>::deserialize(d)
        } else {
            Option::<(i64, T)>::deserialize(d)?
                .map(|(us, v)| Ok((from_micros(us)?, v)))
                .transpose()
        }
    }
}

/// Calendar days, ascending: ISO dates in JSON; in binary the first day
/// since the epoch and then the gaps between consecutive days (small
/// numbers, one byte each for most customers).
pub mod day_list {
    use super::*;

    const EPOCH: NaiveDate = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");

    /// Serializes the days.
    pub fn serialize<S: Serializer>(days: &[NaiveDate], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return days.serialize(s);
        }
        let mut previous = EPOCH;
        s.collect_seq(days.iter().map(|day| {
            let gap = (*day - previous).num_days();
            previous = *day;
            gap
        }))
    }

    /// Deserializes the days.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<NaiveDate>, D::Error> {
        if d.is_human_readable() {
            return Vec::<NaiveDate>::deserialize(d);
        }
        let mut previous = EPOCH;
        Vec::<i64>::deserialize(d)?
            .into_iter()
            .map(|gap| {
                previous = previous
                    .checked_add_signed(chrono::Duration::days(gap))
                    .ok_or_else(|| D::Error::custom(format!("day gap {gap} is out of range")))?;
                Ok(previous)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        #[serde(with = "instant")]
        at: DateTime<Utc>,
        #[serde(with = "instant_opt")]
        maybe: Option<DateTime<Utc>>,
        #[serde(with = "instant_pairs")]
        pairs: Vec<(DateTime<Utc>, u8)>,
        #[serde(with = "pairs_instant")]
        flipped: Vec<(u8, DateTime<Utc>)>,
        #[serde(with = "instant_pair_opt")]
        pair: Option<(DateTime<Utc>, String)>,
        #[serde(with = "day_list")]
        days: Vec<NaiveDate>,
    }

    fn sample() -> Sample {
        let t = DateTime::from_timestamp_micros(852_076_800_123_456).unwrap();
        let day = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        Sample {
            at: t,
            maybe: Some(t),
            pairs: vec![(t, 1), (t, 2)],
            flipped: vec![(3, t)],
            pair: Some((t, "x".into())),
            days: vec![day(1997, 1, 1), day(1997, 1, 9), day(1998, 6, 30)],
        }
    }

    #[test]
    fn json_keeps_rfc3339_and_binary_round_trips_compactly() {
        let json = serde_json::to_string(&sample()).unwrap();
        assert!(json.contains("\"1997-01-01T00:00:00.123456Z\""), "{json}");
        assert!(json.contains("\"1997-01-09\""), "{json}");
        assert_eq!(serde_json::from_str::<Sample>(&json).unwrap(), sample());
        let bytes = postcard::to_allocvec(&sample()).unwrap();
        assert!(bytes.len() < json.len() / 3, "{} bytes", bytes.len());
        assert_eq!(postcard::from_bytes::<Sample>(&bytes).unwrap(), sample());
    }

    #[test]
    fn out_of_range_instants_are_errors_not_panics() {
        let bytes = postcard::to_allocvec(&(i64::MAX, None::<i64>)).unwrap();
        #[derive(Debug, Deserialize)]
        struct One {
            #[serde(with = "instant")]
            _at: DateTime<Utc>,
            #[serde(with = "instant_opt")]
            _maybe: Option<DateTime<Utc>>,
        }
        assert!(postcard::from_bytes::<One>(&bytes).is_err());
    }
}

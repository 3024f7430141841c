//! Decoding an event row of PostgreSQL from its columns' binary values.
//!
//! A replay is bound by the client's per-row work, not the server's: in the
//! profile of `bench read` the thread turning rows into events was busy
//! while the server was not, and about a third of that thread went to
//! sqlx's typed `try_get` (each call clones and compares the column's
//! `PgType` before decoding) and to chrono's calendar arithmetic for the
//! two timestamps. The event columns' types are fixed by the schema
//! (`schema/postgres/0001_events.sql`), so this module reads each column's
//! binary value directly: big-endian integers, the 16 bytes of a `UUID`,
//! `TEXT` as UTF-8, a `TIMESTAMPTZ` as microseconds since 2000-01-01 UTC.
//! Each row's column types are checked against the schema's first (a few
//! integer comparisons, where `try_get` compared types per value), and a
//! value of another shape is reported as corrupt, never misread.
//!
//! (Binary `COPY … TO STDOUT` was tried too: the client's work fell a
//! further 30 %, but the server's per row rose by half, and the server
//! shares the same two cores.)

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgRow, PgValueFormat};
use sqlx::{Column, Row};
use uuid::Uuid;

use super::StoreError;
use crate::domain::{EventHash, RecordedEvent, StreamId};

/// The event columns in the order every event query selects them.
pub(super) const COLUMNS: [&str; 11] = [
    "position",
    "event_id",
    "stream_id",
    "version",
    "event_type",
    "schema_version",
    "occurred_at",
    "recorded_at",
    "metadata",
    "payload",
    "hash",
];

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC), the
/// origin of a binary `TIMESTAMPTZ`.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// The type of each of [`COLUMNS`], as PostgreSQL numbers them (`pg_type`
/// oids): `BIGINT`, `UUID`, `TEXT`, `BIGINT`, `TEXT`, `INTEGER`,
/// `TIMESTAMPTZ` twice, `TEXT` twice, `BYTEA`.
const COLUMN_TYPES: [u32; COLUMNS.len()] = [20, 2950, 25, 20, 25, 23, 1184, 1184, 25, 25, 17];

/// Decodes a row selected with [`COLUMNS`].
pub(super) fn decode_row(row: &PgRow) -> Result<RecordedEvent, StoreError> {
    check_shape(row)?;
    let mut values: [Option<&[u8]>; COLUMNS.len()] = [None; COLUMNS.len()];
    for (index, value) in values.iter_mut().enumerate() {
        *value = row.try_get_raw(index)?.as_bytes().ok();
    }
    decode_values(values)
}

/// Checks that the row holds the event columns, each of the type whose
/// binary form [`decode_values`] reads and in binary form: the byte
/// lengths alone would let, say, a `jsonb` payload (a version byte, then
/// the text) or a `TIMESTAMP` without time zone through, misread.
fn check_shape(row: &PgRow) -> Result<(), StoreError> {
    let mismatch = |reason: String| StoreError::Database(sqlx::Error::Protocol(reason));
    let columns = row.columns();
    if columns.len() != COLUMNS.len() {
        return Err(mismatch(format!(
            "an event row has {} columns, not {}",
            columns.len(),
            COLUMNS.len()
        )));
    }
    // The format is the row's, the same for every column.
    if row.try_get_raw(0)?.format() != PgValueFormat::Binary {
        return Err(mismatch("an event row arrived as text, not binary".into()));
    }
    for (index, column) in columns.iter().enumerate() {
        let oid = column.type_info().oid().map(|oid| oid.0);
        if oid != Some(COLUMN_TYPES[index]) {
            return Err(mismatch(format!(
                "column {} of the events table has type {} (oid {oid:?}), not oid {}",
                COLUMNS[index],
                column.type_info(),
                COLUMN_TYPES[index]
            )));
        }
    }
    Ok(())
}

/// Decodes the binary values of one event row, in [`COLUMNS`] order
/// (`None` for NULL).
fn decode_values(values: [Option<&[u8]>; COLUMNS.len()]) -> Result<RecordedEvent, StoreError> {
    // The position first, so every other error can say where it is.
    let position = match values[0] {
        Some(bytes) => big_int(bytes, 0, "position")?,
        None => 0,
    };
    let position = u64::try_from(position).map_err(|_| StoreError::Corrupt {
        position: 0,
        reason: format!("negative position {position}"),
    })?;
    let corrupt = |reason: String| StoreError::Corrupt { position, reason };
    if let Some(null) = values.iter().position(Option::is_none) {
        return Err(corrupt(format!("{} is NULL", COLUMNS[null])));
    }
    let [_position, event_id, stream, version, event_type, schema_version, occurred_at, recorded_at, metadata, payload, hash] =
        values.map(Option::unwrap_or_default);
    let text = |bytes: &[u8], column: &str| {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|e| corrupt(format!("{column} is not UTF-8: {e}")))
    };
    let event_id = Uuid::from_slice(event_id)
        .map_err(|_| corrupt(format!("event_id has {} bytes, not 16", event_id.len())))?;
    let version = u64::try_from(big_int(version, position, "version")?)
        .map_err(|_| corrupt("version is negative".into()))?;
    let schema_version: [u8; 4] = schema_version.try_into().map_err(|_| {
        corrupt(format!(
            "schema_version has {} bytes, not 4",
            schema_version.len()
        ))
    })?;
    let schema_version = u32::try_from(i32::from_be_bytes(schema_version))
        .map_err(|_| corrupt("schema_version is negative".into()))?;
    Ok(RecordedEvent {
        event_id,
        stream_id: StreamId::from_trusted(text(stream, "stream_id")?),
        version,
        position,
        event_type: text(event_type, "event_type")?,
        schema_version,
        occurred_at: timestamp(occurred_at, position, "occurred_at")?,
        recorded_at: timestamp(recorded_at, position, "recorded_at")?,
        metadata_json: text(metadata, "metadata")?,
        payload_json: text(payload, "payload")?,
        hash: EventHash::from_slice(hash).map_err(|e| corrupt(format!("hash: {e}")))?,
    })
}

/// A binary `BIGINT`.
fn big_int(bytes: &[u8], position: u64, column: &str) -> Result<i64, StoreError> {
    let bytes: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        position,
        reason: format!("{column} has {} bytes, not 8", bytes.len()),
    })?;
    Ok(i64::from_be_bytes(bytes))
}

/// A binary `TIMESTAMPTZ`: microseconds since 2000-01-01 UTC.
fn timestamp(bytes: &[u8], position: u64, column: &str) -> Result<DateTime<Utc>, StoreError> {
    let micros = big_int(bytes, position, column)?;
    micros
        .checked_add(PG_EPOCH_UNIX_MICROS)
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(|| StoreError::Corrupt {
            position,
            reason: format!("{column} is out of range ({micros} µs from 2000-01-01)"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The binary values of one event, as PostgreSQL sends them.
    struct Values(Vec<Vec<u8>>);

    impl Values {
        fn of(e: &RecordedEvent) -> Self {
            let micros = |t: DateTime<Utc>| {
                (t.timestamp_micros() - PG_EPOCH_UNIX_MICROS)
                    .to_be_bytes()
                    .to_vec()
            };
            Self(vec![
                (e.position as i64).to_be_bytes().to_vec(),
                e.event_id.as_bytes().to_vec(),
                e.stream_id.as_str().as_bytes().to_vec(),
                (e.version as i64).to_be_bytes().to_vec(),
                e.event_type.as_bytes().to_vec(),
                (e.schema_version as i32).to_be_bytes().to_vec(),
                micros(e.occurred_at),
                micros(e.recorded_at),
                e.metadata_json.as_bytes().to_vec(),
                e.payload_json.as_bytes().to_vec(),
                e.hash.0.to_vec(),
            ])
        }

        fn decode(&self) -> Result<RecordedEvent, StoreError> {
            let values: [Option<&[u8]>; COLUMNS.len()] =
                std::array::from_fn(|i| Some(self.0[i].as_slice()));
            decode_values(values)
        }
    }

    fn event() -> RecordedEvent {
        RecordedEvent {
            event_id: Uuid::from_u128(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
            stream_id: StreamId::from_trusted("customer-00042".into()),
            version: 3,
            position: 1_234_567,
            event_type: "OrderPlaced".into(),
            schema_version: 2,
            occurred_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            // Before PostgreSQL's epoch: a negative binary value.
            recorded_at: DateTime::from_timestamp_micros(PG_EPOCH_UNIX_MICROS - 7).unwrap(),
            metadata_json: "{}".into(),
            payload_json: r#"{"note":"grüße"}"#.into(),
            hash: EventHash::from_slice(&[9; 32]).unwrap(),
        }
    }

    #[test]
    fn the_store_selects_the_columns_in_the_order_they_are_decoded() {
        let selected: Vec<&str> = super::super::postgres::COLUMNS
            .split(',')
            .map(str::trim)
            .collect();
        assert_eq!(selected, COLUMNS);
    }

    #[test]
    fn binary_values_decode_to_the_event() {
        assert_eq!(Values::of(&event()).decode().unwrap(), event());
    }

    #[test]
    fn a_null_value_is_corrupt_at_its_position_and_names_its_column() {
        let values = Values::of(&event());
        let mut with_null: [Option<&[u8]>; COLUMNS.len()] =
            std::array::from_fn(|i| Some(values.0[i].as_slice()));
        with_null[2] = None;
        match decode_values(with_null) {
            Err(StoreError::Corrupt { position, reason }) => {
                assert_eq!(
                    (position, reason.as_str()),
                    (1_234_567, "stream_id is NULL")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_misshapen_value_is_corrupt_and_names_its_column() {
        let cases: [(usize, Vec<u8>, &str); 6] = [
            (1, vec![1; 15], "event_id has 15 bytes"),
            (2, vec![0xff, 0xfe], "stream_id is not UTF-8"),
            (3, (-1i64).to_be_bytes().to_vec(), "version is negative"),
            (5, vec![0; 8], "schema_version has 8 bytes"),
            (
                6,
                i64::MAX.to_be_bytes().to_vec(),
                "occurred_at is out of range",
            ),
            (10, vec![0; 31], "hash: hash must be 32 bytes"),
        ];
        for (column, value, expected) in cases {
            let mut values = Values::of(&event());
            values.0[column] = value;
            match values.decode() {
                Err(StoreError::Corrupt { position, reason }) => {
                    assert_eq!(position, 1_234_567);
                    assert!(reason.contains(expected), "{reason}");
                }
                other => panic!("column {}: {other:?}", COLUMNS[column]),
            }
        }
    }
}

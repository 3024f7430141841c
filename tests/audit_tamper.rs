//! Tampering with a real SQLite file (and a PostgreSQL database) behind the
//! ledger's back: each edit must be found at the exact stream, version and
//! position. The immutability triggers are dropped first, as an attacker
//! with file access would.

use std::path::Path;
use std::sync::Arc;

use journey_ledger::audit::verify::{verify_store, Problem, VerifyReport};
use journey_ledger::domain::{EventHash, EventMetadata, NewEvent, StreamId};
use journey_ledger::import::{import_file, ImportFormat};
use journey_ledger::store::{self, EventStore};
use journey_ledger::testing::{temp_sqlite, TempDatabase};
use sqlx::{Connection, Executor, Row, SqliteConnection};

#[path = "common/cli.rs"]
mod cli;

const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/cdnow_sample.txt");

/// An imported CDNOW sample in a fresh file; the store is closed again.
async fn imported() -> (tempfile::TempDir, String) {
    let (dir, url) = temp_sqlite();
    let store = store::open(&url).await.unwrap();
    import_file(
        store.clone(),
        Path::new(SAMPLE),
        ImportFormat::Cdnow,
        |_| {},
    )
    .await
    .unwrap();
    (dir, url)
}

async fn verify(url: &str) -> VerifyReport {
    let store = store::open(url).await.unwrap();
    verify_store(store, |_| {}).await.unwrap()
}

async fn attacker(url: &str) -> SqliteConnection {
    let mut conn = SqliteConnection::connect(url).await.unwrap();
    conn.execute("DROP TRIGGER events_no_update; DROP TRIGGER events_no_delete;")
        .await
        .unwrap();
    conn
}

/// A customer stream with at least 5 events: (stream, [(version, position)]).
async fn victim(conn: &mut SqliteConnection) -> (String, Vec<(u64, u64)>) {
    let stream: String = sqlx::query_scalar(
        "SELECT stream_id FROM streams WHERE version >= 5 ORDER BY stream_id LIMIT 1 OFFSET 7",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    let rows: Vec<(i64, i64)> =
        sqlx::query_as("SELECT version, position FROM events WHERE stream_id = ? ORDER BY version")
            .bind(&stream)
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    (
        stream,
        rows.into_iter()
            .map(|(v, p)| (v as u64, p as u64))
            .collect(),
    )
}

fn first(report: &VerifyReport) -> &Problem {
    report
        .first_problem()
        .unwrap_or_else(|| panic!("tampering not detected: {report:?}"))
}

#[tokio::test]
async fn an_untouched_import_verifies() {
    let (_dir, url) = imported().await;
    let report = verify(&url).await;
    assert!(report.is_intact(), "{:?}", report.problems);
    assert!(report.events > 6_919, "{report:?}");
    assert_eq!(report.streams, 2_357);
}

#[tokio::test]
async fn a_changed_payload_byte_is_found_at_that_event() {
    let (_dir, url) = imported().await;
    let mut conn = attacker(&url).await;
    let (stream, events) = victim(&mut conn).await;
    let (version, position) = events[2];
    let payload: String = sqlx::query_scalar("SELECT payload FROM events WHERE position = ?")
        .bind(position as i64)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    // Flip one digit of the amount: still canonical JSON, different bytes.
    let at = payload.find("\"minor\":").unwrap() + "\"minor\":".len();
    let mut bytes = payload.into_bytes();
    bytes[at] = if bytes[at] == b'9' {
        b'8'
    } else {
        bytes[at] + 1
    };
    sqlx::query("UPDATE events SET payload = ? WHERE position = ?")
        .bind(String::from_utf8(bytes).unwrap())
        .bind(position as i64)
        .execute(&mut conn)
        .await
        .unwrap();
    let report = verify(&url).await;
    match first(&report) {
        Problem::HashMismatch {
            stream: s,
            version: v,
            position: p,
            ..
        } => assert_eq!((s.as_str(), *v, *p), (stream.as_str(), version, position)),
        other => panic!("unexpected {other}"),
    }
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let text = first(&report).to_string();
    assert!(
        text.starts_with(&format!(
            "{stream} v{version} @ position {position}: hash mismatch"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn a_deleted_middle_event_is_named() {
    let (_dir, url) = imported().await;
    let mut conn = attacker(&url).await;
    let (stream, events) = victim(&mut conn).await;
    let (version, position) = events[2];
    sqlx::query("DELETE FROM events WHERE position = ?")
        .bind(position as i64)
        .execute(&mut conn)
        .await
        .unwrap();
    let report = verify(&url).await;
    let text = first(&report).to_string();
    assert_eq!(
        text,
        format!(
            "{stream}: version {version} missing (v{} @ {} followed by v{} @ {}; position {position} gone from the log) — event deleted",
            events[1].0, events[1].1, events[3].0, events[3].1
        )
    );
}

#[tokio::test]
async fn a_deleted_tail_event_is_found_through_the_stream_head() {
    let (_dir, url) = imported().await;
    let mut conn = attacker(&url).await;
    let (stream, events) = victim(&mut conn).await;
    let (last_version, last_position) = *events.last().unwrap();
    sqlx::query("DELETE FROM events WHERE position = ?")
        .bind(last_position as i64)
        .execute(&mut conn)
        .await
        .unwrap();
    let report = verify(&url).await;
    match first(&report) {
        Problem::TailMissing {
            stream: s,
            head_version,
            log_version,
            ..
        } => {
            assert_eq!(s.as_str(), stream);
            assert_eq!(
                (*head_version, *log_version),
                (last_version, last_version - 1)
            );
        }
        other => panic!("unexpected {other}"),
    }
    // The hole in the gapless positions is reported too.
    assert!(report.problems.iter().any(|p| matches!(p,
        Problem::PositionGap { from, to } if *from == last_position && *to == last_position)));
}

#[tokio::test]
async fn swapped_positions_are_reported_as_reordered() {
    let (_dir, url) = imported().await;
    let mut conn = attacker(&url).await;
    let (stream, events) = victim(&mut conn).await;
    let ((v2, p2), (v3, p3)) = (events[1], events[2]);
    for (from, to) in [(p2 as i64, -1i64), (p3 as i64, p2 as i64), (-1, p3 as i64)] {
        sqlx::query("UPDATE events SET position = ? WHERE position = ?")
            .bind(to)
            .bind(from)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let report = verify(&url).await;
    assert_eq!(
        first(&report).to_string(),
        format!("{stream} v{v3} @ position {p2} comes before v{v2} @ position {p3} — reordered")
    );
}

#[tokio::test]
async fn a_changed_stored_hash_is_found_at_that_event() {
    let (_dir, url) = imported().await;
    let mut conn = attacker(&url).await;
    let (stream, events) = victim(&mut conn).await;
    let (version, position) = events[3];
    sqlx::query("UPDATE events SET hash = randomblob(32) WHERE position = ?")
        .bind(position as i64)
        .execute(&mut conn)
        .await
        .unwrap();
    let report = verify(&url).await;
    assert!(
        matches!(first(&report), Problem::HashMismatch { stream: s, version: v, position: p, .. }
            if s.as_str() == stream && *v == version && *p == position),
        "{:?}",
        report.problems
    );
}

#[tokio::test]
async fn a_forged_event_with_a_correct_chain_is_found_through_the_head() {
    let (_dir, url) = imported().await;
    let mut conn = attacker(&url).await;
    let (stream, events) = victim(&mut conn).await;
    let (last_version, last_position) = *events.last().unwrap();
    let row = sqlx::query("SELECT hash, recorded_at FROM events WHERE position = ?")
        .bind(last_position as i64)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let previous = EventHash::from_slice(row.get::<&[u8], _>(0)).unwrap();
    let recorded: i64 = row.get(1);
    let at = chrono::DateTime::from_timestamp_micros(recorded).unwrap();
    // The attacker knows the (public) hash algorithm and chains correctly.
    let forged = NewEvent::from_parts(
        uuid::Uuid::new_v4(),
        "OrderRefunded",
        1,
        at,
        &EventMetadata::default(),
        &serde_json::json!({"order_id": "x", "refund_id": "r", "kind": "full",
                            "amount": {"minor": 100000, "currency": "USD"}}),
    );
    let sid = StreamId::parse(&stream).unwrap();
    let hash = forged.chain_hash(&previous, &sid, last_version + 1, &at);
    let head: i64 = sqlx::query_scalar("SELECT MAX(position) FROM events")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO events (position, event_id, stream_id, version, event_type, schema_version, occurred_at, recorded_at, metadata, payload, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?)")
        .bind(head + 1)
        .bind(forged.event_id().as_bytes().to_vec())
        .bind(&stream)
        .bind((last_version + 1) as i64)
        .bind(forged.event_type())
        .bind(1i64)
        .bind(recorded)
        .bind(recorded)
        .bind(forged.metadata_json())
        .bind(forged.payload_json())
        .bind(hash.0.to_vec())
        .execute(&mut conn)
        .await
        .unwrap();
    let report = verify(&url).await;
    assert_eq!(
        first(&report).to_string(),
        format!(
            "{stream} v{}: not recorded in the stream head (head v{last_version}, log ends at v{} @ position {}) — event inserted behind the ledger's back",
            last_version + 1,
            last_version + 1,
            head + 1
        )
    );
}

#[tokio::test]
async fn the_cli_exits_non_zero_on_a_tampered_file_and_zero_on_an_intact_one() {
    let (_dir, url) = imported().await;
    let run = |url: &str| cli::journey(url, &["verify"]);
    let ok = run(&url);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(summary["problems"], serde_json::json!([]));

    let mut conn = attacker(&url).await;
    let (stream, events) = victim(&mut conn).await;
    let (version, position) = events[1];
    sqlx::query("UPDATE events SET metadata = '{\"actor\":\"mallory\"}' WHERE position = ?")
        .bind(position as i64)
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let bad = run(&url);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains(&format!(
            "{stream} v{version} @ position {position}: hash mismatch"
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn postgres_tampering_is_found_too() {
    let db = TempDatabase::create()
        .await
        .expect("PostgreSQL at DATABASE_URL");
    let store: Arc<dyn EventStore> = store::open(&db.url).await.unwrap();
    let text: String = std::fs::read_to_string(SAMPLE)
        .unwrap()
        .lines()
        .take(300)
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("part.txt");
    std::fs::write(&file, text).unwrap();
    import_file(store.clone(), &file, ImportFormat::Cdnow, |_| {})
        .await
        .unwrap();
    assert!(verify_store(store.clone(), |_| {})
        .await
        .unwrap()
        .is_intact());
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    conn.execute("DROP TRIGGER events_no_update ON events")
        .await
        .unwrap();
    let (stream, version, position): (String, i64, i64) = sqlx::query_as(
        "SELECT stream_id, version, position FROM events WHERE version = 3 ORDER BY position LIMIT 1",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    sqlx::query("UPDATE events SET payload = replace(payload, '\"item_count\":', '\"item_count\":1') WHERE position = $1")
        .bind(position)
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let report = verify_store(store.clone(), |_| {}).await.unwrap();
    assert!(
        matches!(first(&report), Problem::HashMismatch { stream: s, version: v, position: p, .. }
            if s.as_str() == stream && *v == version as u64 && *p == position as u64),
        "{:?}",
        report.problems
    );
    drop(store);
    db.drop_database().await;
}

//! Acknowledged means stored, and a commit group is all or nothing, through
//! a real crash: `journey bench append --writers 8 --batch 3` appends from
//! eight concurrent writers (so the store commits them in groups), logs
//! each append's event ids the moment it is acknowledged, and is killed
//! with SIGKILL mid-run. Then every acknowledged event must be stored,
//! positions gapless, every stream whole (each append's three events
//! together, in order) and every hash chain intact. On SQLite (the default
//! `synchronous=full`) and on PostgreSQL.

#[path = "common/cli.rs"]
mod cli;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use journey_ledger::domain::RecordedEvent;
use journey_ledger::store::contract::assert_chain;
use journey_ledger::store::{self, EventStore};
use journey_ledger::testing::TempDatabase;
use uuid::Uuid;

const BATCH: usize = 3;
/// Acknowledged appends to wait for before the kill.
const ACKED_BEFORE_KILL: usize = 300;

/// Complete lines of the ack log (a line cut by the kill is not counted).
fn acknowledged(log: &std::path::Path) -> Vec<Vec<Uuid>> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete
        .lines()
        .map(|line| {
            line.split(' ')
                .map(|id| Uuid::parse_str(id).expect("an event id"))
                .collect()
        })
        .collect()
}

/// Runs the writers, kills them mid-run and returns what they had been
/// told was stored.
fn append_then_kill(store_url: &str, dir: &std::path::Path) -> Vec<Vec<Uuid>> {
    let log = dir.join("acks.log");
    let mut child = cli::journey_command(store_url)
        .args(["bench", "append", "--writers", "8", "--batch", "3"])
        .args(["--seconds", "120", "--ack-log"])
        .arg(&log)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start journey");
    let started = Instant::now();
    while acknowledged(&log).len() < ACKED_BEFORE_KILL {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the writers acknowledged too little in a minute"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "journey exited before the kill"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL"); // Child::kill sends SIGKILL on Unix.
    child.wait().unwrap();
    acknowledged(&log)
}

async fn check_after_crash(store: Arc<dyn EventStore>, acked: &[Vec<Uuid>]) {
    let all: Vec<RecordedEvent> = store::read_all(store.clone(), 0, 1_000)
        .try_collect()
        .await
        .expect("read the log");
    let stored: HashSet<Uuid> = all.iter().map(|e| e.event_id).collect();
    for append in acked {
        for id in append {
            assert!(stored.contains(id), "acknowledged event {id} is missing");
        }
    }
    assert!(acked.len() >= ACKED_BEFORE_KILL && all.len() >= acked.len() * BATCH);
    eprintln!(
        "{} appends acknowledged, {} events stored",
        acked.len(),
        all.len()
    );
    let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
    assert_eq!(positions, (1..=all.len() as u64).collect::<Vec<_>>());

    let mut streams: HashMap<String, Vec<RecordedEvent>> = HashMap::new();
    for event in all {
        streams
            .entry(event.stream_id.to_string())
            .or_default()
            .push(event);
    }
    for (stream, events) in &streams {
        assert_chain(events);
        assert_eq!(
            events.len() % BATCH,
            0,
            "{stream} holds part of an append ({} events)",
            events.len()
        );
        // Each append's events are one writer's consecutive sessions.
        for append in events.chunks(BATCH) {
            let origin: Vec<(String, u64)> = append.iter().map(session_origin).collect();
            for pair in origin.windows(2) {
                assert_eq!(pair[0].0, pair[1].0, "{stream}: an append mixes writers");
                assert_eq!(pair[0].1 + 1, pair[1].1, "{stream}: an append is not whole");
            }
        }
    }
}

/// The writer and sequence number a benchmark session id starts with
/// (`w{writer}-{sequence}-xxx…`).
fn session_origin(event: &RecordedEvent) -> (String, u64) {
    let payload: serde_json::Value = serde_json::from_str(&event.payload_json).unwrap();
    let id = payload["session_id"].as_str().expect("a session id");
    let mut parts = id.split('-');
    let writer = parts.next().unwrap().to_owned();
    let sequence = parts.next().unwrap().parse().unwrap();
    (writer, sequence)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_every_acknowledged_append_through_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("crash.db").display());
    let acked = tokio::task::block_in_place(|| append_then_kill(&url, dir.path()));
    let store = store::open(&url).await.expect("reopen after the crash");
    check_after_crash(store, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_every_acknowledged_append_through_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let db = TempDatabase::create().await.expect(
        "PostgreSQL must be reachable at DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test)",
    );
    let acked = tokio::task::block_in_place(|| append_then_kill(&db.url, dir.path()));
    let store = store::open(&db.url)
        .await
        .expect("reconnect after the crash");
    check_after_crash(store, &acked).await;
    db.drop_database().await;
}

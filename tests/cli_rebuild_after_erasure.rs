//! Issue "auditor and privacy": after an erasure, `journey verify` and
//! `journey rebuild` still succeed, the erased email is nowhere in the store
//! file, and the rebuild itself is recorded (who, why) in `ledger-admin`.

use journey_ledger::domain::StreamId;
use journey_ledger::store::{self, ReadStream};
use journey_ledger::testing::temp_sqlite;

#[path = "common/cli.rs"]
mod cli;
use cli::{journey, ok};

#[tokio::test]
async fn rebuild_and_verify_succeed_after_erasure_and_rebuilds_are_recorded() {
    let (dir, url) = temp_sqlite();
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/events.jsonl");
    ok(journey(&url, &["import", fixture, "--format", "jsonl"]));
    ok(journey(
        &url,
        &["erase", "ada", "--reason", "GDPR art. 17 request"],
    ));
    ok(journey(&url, &["verify"]));
    let rebuilt = ok(journey(
        &url,
        &[
            "rebuild",
            "--actor",
            "analyst-jo",
            "--reason",
            "threshold review",
        ],
    ));
    assert!(rebuilt.contains("\"activated\":true"), "{rebuilt}");
    ok(journey(&url, &["verify"]));

    let store = store::open(&url).await.unwrap();
    let admin = store
        .read_stream(
            &StreamId::parse("ledger-admin").unwrap(),
            ReadStream::all_forwards(),
        )
        .await
        .unwrap();
    let last = admin.last().expect("the rebuild was recorded");
    assert_eq!(last.event_type, "ReadModelsRebuilt");
    assert!(
        last.payload_json.contains("analyst-jo"),
        "{}",
        last.payload_json
    );
    assert!(last.payload_json.contains("threshold review"));
    drop(store);

    for suffix in ["", "-wal", "-shm"] {
        let path = dir.path().join(format!("journey.db{suffix}"));
        if let Ok(bytes) = std::fs::read(&path) {
            let needle = b"ada@example.org";
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds the erased email",
                path.display()
            );
        }
    }
}

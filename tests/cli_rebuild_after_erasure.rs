//! Issue "auditor and privacy": after an erasure, `journey verify` and
//! `journey rebuild` still succeed, the erased email is nowhere in the store
//! file, and the rebuild itself is recorded (who, why) in `ledger-admin`.

use std::process::{Command, Output};

use journey_ledger::domain::StreamId;
use journey_ledger::store::{self, ReadStream};
use journey_ledger::testing::temp_sqlite;

fn journey(store: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_journey"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("JOURNEY_STORE")
        .env_remove("JOURNEY_CONFIG")
        .output()
        .expect("run journey")
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "journey failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

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

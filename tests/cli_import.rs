//! `journey import|events|stats` as a user runs them: the real binary on a
//! real SQLite file.

use std::path::Path;

use journey_ledger::testing::temp_sqlite;

#[path = "common/cli.rs"]
mod cli;
use cli::{journey, ok};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/events.jsonl");
const CDNOW_SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/cdnow_sample.txt");

#[test]
fn jsonl_fixture_imports_once_and_reads_back() {
    let (_dir, store) = temp_sqlite();
    let first = json(&ok(journey(
        &store,
        &["import", FIXTURE, "--format", "jsonl"],
    )));
    let lines = std::fs::read_to_string(FIXTURE).unwrap().lines().count() as u64;
    assert_eq!(first["appended"], lines);
    let again = json(&ok(journey(
        &store,
        &["import", FIXTURE, "--format", "jsonl"],
    )));
    assert_eq!(again["appended"], 0, "a second import stores nothing");
    assert_eq!(again["already_stored"], lines);

    let stats = json(&ok(journey(&store, &["stats"])));
    assert_eq!(stats["events"], lines);
    assert_eq!(stats["streams"], 4);
    assert_eq!(
        stats["event_types"].as_array().unwrap().len(),
        20,
        "every event type"
    );

    let events = ok(journey(&store, &["events", "grace"]));
    let versions: Vec<u64> = events
        .lines()
        .map(|l| json(l)["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, (1..=versions.len() as u64).collect::<Vec<_>>());
    assert!(events
        .lines()
        .next()
        .unwrap()
        .contains("CustomerRegistered"));

    let missing = journey(&store, &["events", "nobody"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no events for customer nobody"));
}

/// Runs an import that must fail; returns its standard error.
fn failed_import(store: &str, file: &std::path::Path, format: &str) -> String {
    let out = journey(
        store,
        &["import", file.to_str().unwrap(), "--format", format],
    );
    assert!(
        !out.status.success(),
        "the import of {} failed",
        file.display()
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_bad_line_is_reported_with_its_number_and_stores_nothing() {
    let (dir, store) = temp_sqlite();
    let good = std::fs::read_to_string(FIXTURE).unwrap();
    let mut lines: Vec<&str> = good.lines().take(6).collect();
    let bad = r#"{"customer_id":"ada","event_type":"OrderPlaced","occurred_at":"2024-05-01T00:00:00Z","payload":{"order_id":"x","amount":{"minor":100,"currency":"ZZZ"},"item_count":1}}"#;
    lines.push(bad);
    let file = dir.path().join("bad.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let stderr = failed_import(&store, &file, "jsonl");
    assert!(
        stderr.contains("bad.jsonl:7: ") && stderr.contains("ZZZ"),
        "error names file, line and value: {stderr}"
    );
    let stats = json(&ok(journey(&store, &["stats"])));
    assert_eq!(stats["events"], 0, "nothing of the batch was stored");

    // Metadata is bounded like payload text: a 10 MB actor names its line
    // and field, and nothing is stored.
    let huge_actor = format!(
        r#"{{"customer_id":"ada","event_type":"CustomerRegistered","occurred_at":"2024-05-01T00:00:00Z","payload":{{"channel":"web"}},"metadata":{{"actor":"{}"}}}}"#,
        "a".repeat(10 * 1024 * 1024)
    );
    let file = dir.path().join("actor.jsonl");
    std::fs::write(&file, format!("{}\n{huge_actor}\n", lines[0])).unwrap();
    let stderr = failed_import(&store, &file, "jsonl");
    assert!(
        stderr.contains("actor.jsonl:2: ")
            && stderr.contains("metadata.actor: must be at most 256 bytes"),
        "{stderr}"
    );
    assert_eq!(json(&ok(journey(&store, &["stats"])))["events"], 0);

    let cdnow = dir.path().join("bad.txt");
    std::fs::write(
        &cdnow,
        " 00001 19970101  1   11.77\n 00002 19970112  x   12.00\n",
    )
    .unwrap();
    let stderr = failed_import(&store, &cdnow, "cdnow");
    assert!(stderr.contains("bad.txt:2: number_of_cds"), "{stderr}");
    assert_eq!(json(&ok(journey(&store, &["stats"])))["events"], 0);
}

/// The issue's acceptance check on the full CDNOW master file (read from
/// `../shared/data` when present).
#[test]
fn cdnow_master_imported_twice_is_stored_once() {
    let master = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cdnow_master.txt");
    if !master.exists() {
        eprintln!("SKIPPED: {} is absent", master.display());
        return;
    }
    let (_dir, store) = temp_sqlite();
    let path = master.to_str().unwrap();
    ok(journey(&store, &["import", path, "--format", "cdnow"]));
    let again = json(&ok(journey(&store, &["import", path, "--format", "cdnow"])));
    assert_eq!(again["appended"], 0);
    let stats = json(&ok(journey(&store, &["stats"])));
    assert_eq!(stats["streams"], 23_570);
    let orders = stats["event_types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t[0] == "OrderPlaced")
        .unwrap()[1]
        .clone();
    assert_eq!(orders, 69_659);
}

#[test]
fn cloudevents_lines_import_once_and_a_bad_line_is_named() {
    let (dir, store) = temp_sqlite();
    let event = |id: &str, subject: &str, ty: &str, data: &str| {
        format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"/router","type":"{ty}","subject":"{subject}","time":"2024-05-01T10:00:00Z","data":{data}}}"#
        )
    };
    let good = [
        event(
            "1",
            "ce-a",
            "SessionRecorded",
            r#"{"session_id":"s","channel":"web"}"#,
        ),
        event(
            "2",
            "ce-a",
            "OrderPlaced",
            r#"{"order_id":"o","amount":{"minor":100,"currency":"EUR"},"item_count":1}"#,
        ),
    ]
    .join("\n");
    let file = dir.path().join("events.ce.jsonl");
    std::fs::write(&file, &good).unwrap();
    let path = file.to_str().unwrap();
    let first = json(&ok(journey(
        &store,
        &["import", path, "--format", "cloudevents"],
    )));
    assert_eq!(first["appended"], 2, "{first}");
    assert_eq!(first["streams"], 1);
    let again = json(&ok(journey(
        &store,
        &["import", path, "--format", "cloudevents"],
    )));
    assert_eq!(again["appended"], 0);
    assert_eq!(again["already_stored"], 2);
    let events = ok(journey(&store, &["events", "ce-a"]));
    let types: Vec<String> = events
        .lines()
        .map(|l| json(l)["event_type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        types,
        ["CustomerRegistered", "SessionRecorded", "OrderPlaced"]
    );

    let bad = [
        event(
            "3",
            "ce-b",
            "SessionRecorded",
            r#"{"session_id":"s","channel":"web"}"#,
        ),
        event(
            "4",
            "ce-b",
            "SessionRecorded",
            r#"{"session_id":7,"channel":"web"}"#,
        ),
    ]
    .join("\n");
    std::fs::write(&file, bad).unwrap();
    let out = journey(&store, &["import", path, "--format", "cloudevents"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "events.ce.jsonl:2: data.session_id: invalid type: integer `7`, expected a string"
        ),
        "{stderr}"
    );
    let missing = journey(&store, &["events", "ce-b"]);
    assert!(
        !missing.status.success(),
        "nothing of the bad line's batch is stored"
    );
}

/// Commands that only read never create a store: a mistyped path is an
/// error naming it, not an empty ledger that verifies.
#[test]
fn read_only_commands_on_a_missing_store_fail_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("typo.db");
    let url = format!("sqlite://{}", missing.display());
    for args in [
        vec!["verify"],
        vec!["stats"],
        vec!["events", "c1"],
        vec!["customer", "c1"],
        vec!["export", "c1"],
        vec!["versions"],
    ] {
        let out = journey(&url, &args);
        assert!(
            !out.status.success(),
            "{args:?} succeeded on a missing store"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("no store at {}", missing.display())),
            "{args:?}: {stderr}"
        );
        assert!(!missing.exists(), "{args:?} created {}", missing.display());
    }
}

/// The commands that only read, with arguments that make their output
/// independent of the wall clock (`as_of`: an instant after every event).
fn read_only_commands(as_of: &str) -> Vec<Vec<&str>> {
    vec![
        vec!["verify"],
        vec!["stats"],
        vec!["events", "grace", "--reveal"],
        vec!["customer", "grace", "--as-of", "2025-01-01T00:00:00Z"],
        vec!["export", "grace", "--as-of", as_of],
        vec!["versions"],
    ]
}

/// A command's output without the instant it ran (an export's
/// `exported_at`).
fn without_run_instant(output: String) -> String {
    match serde_json::from_str::<serde_json::Value>(&output) {
        Ok(serde_json::Value::Object(mut doc)) if doc.contains_key("exported_at") => {
            doc.remove("exported_at");
            serde_json::Value::Object(doc).to_string()
        }
        _ => output,
    }
}

/// Runs `journey --store URL ARGS…` as the unprivileged user `nobody`
/// (file modes do not bind root, who runs CI): `None` when this process
/// cannot switch users or `nobody` cannot run the test binary.
fn as_nobody(url: &str, args: &[&str]) -> Option<std::process::Output> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let run = |args: &[&str]| {
        let mut cmd = if root {
            let mut cmd = std::process::Command::new("setpriv");
            cmd.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
                env!("CARGO_BIN_EXE_journey"),
            ]);
            cmd
        } else {
            std::process::Command::new(env!("CARGO_BIN_EXE_journey"))
        };
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .arg("--store")
            .arg(url)
            .args(args)
            .output()
    };
    match run(&["--version"]) {
        Ok(out) if out.status.success() => Some(run(args).expect("run journey")),
        other => {
            eprintln!("skipped: cannot run journey as another user here ({other:?})");
            None
        }
    }
}

/// An auditor reads a ledger they may not change — an archived copy, the
/// service user's file, a read-only mount: every read-only command answers
/// exactly as it does for the owner, and the file is not touched. In a
/// read-only directory with the log and index a server left beside the
/// file, in one with the file alone (read as immutable), and with only the
/// file read-only (SQLite makes its index beside it). A log of commits not
/// yet in the file that cannot be read is refused with what to do.
#[test]
fn read_only_commands_work_on_a_store_this_user_cannot_write() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ledger.db");
    let url = format!("sqlite://{}", file.display());
    ok(journey(&url, &["import", FIXTURE, "--format", "jsonl"]));
    ok(journey(&url, &["rebuild"]));
    let as_of = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let commands = read_only_commands(&as_of);
    let owners: Vec<String> = commands
        .iter()
        .map(|args| without_run_instant(ok(journey(&url, args))))
        .collect();
    let sibling = |suffix: &str| dir.path().join(format!("ledger.db{suffix}"));
    assert!(sibling("-wal").exists() && sibling("-shm").exists());
    let set_mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let answers_as_for_the_owner = |case: &str| {
        for (args, owner) in commands.iter().zip(&owners) {
            let Some(out) = as_nobody(&url, args) else {
                return false;
            };
            assert!(
                out.status.success(),
                "{case}: {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                &without_run_instant(String::from_utf8(out.stdout).unwrap()),
                owner,
                "{case}: {args:?} answers as for the owner"
            );
        }
        let refused = as_nobody(&url, &["import", CDNOW_SAMPLE, "--format", "cdnow"]).unwrap();
        assert!(!refused.status.success(), "{case}: an import cannot write");
        true
    };
    set_mode(&file, 0o444);
    let runtime = tokio::runtime::Runtime::new().unwrap();

    // A copy of a file in use, taken with its log but not its index, where
    // no index can be made: refused, naming the log.
    let live = tempfile::tempdir().unwrap();
    let copy = tempfile::tempdir().unwrap();
    // The file alone is not a snapshot: its log may hold pages a
    // checkpoint has only partly copied into it.
    for suffix in ["", "-wal"] {
        std::fs::copy(
            sibling(suffix),
            live.path().join(format!("ledger.db{suffix}")),
        )
        .unwrap();
    }
    let live_url = format!("sqlite://{}", live.path().join("ledger.db").display());
    runtime.block_on(async {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect(&live_url)
            .await
            .unwrap();
        for sql in [
            "PRAGMA journal_mode = WAL",
            "PRAGMA wal_autocheckpoint = 0",
            "CREATE TABLE scratch (x)",
        ] {
            sqlx::query(sql).execute(&pool).await.unwrap();
        }
        for name in ["ledger.db", "ledger.db-wal"] {
            std::fs::copy(live.path().join(name), copy.path().join(name)).unwrap();
        }
        pool.close().await;
    });
    assert!(
        std::fs::metadata(copy.path().join("ledger.db-wal"))
            .unwrap()
            .len()
            > 0
    );
    set_mode(copy.path(), 0o555);
    let copy_url = format!("sqlite://{}", copy.path().join("ledger.db").display());
    let refused = as_nobody(&copy_url, &["stats"]);
    set_mode(copy.path(), 0o700);
    if let Some(refused) = refused {
        assert!(!refused.status.success());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("ledger.db-wal holds commits not yet in")
                && stderr.contains("is not writable"),
            "{stderr}"
        );
    }

    set_mode(dir.path(), 0o555);
    let ran = answers_as_for_the_owner("read-only directory, log and index beside the file");
    set_mode(dir.path(), 0o700);
    if !ran {
        return;
    }
    // Copy the log into the file and close it: the log and index go away.
    let bytes = {
        runtime.block_on(async {
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        });
        // sqlx closes the handle on its worker thread, possibly after
        // close() returned: wait for the last close to remove the files.
        let gone = || !sibling("-wal").exists() && !sibling("-shm").exists();
        for _ in 0..250 {
            if gone() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(gone(), "the last close removes the log and index");
        std::fs::read(&file).unwrap()
    };
    set_mode(dir.path(), 0o555);
    answers_as_for_the_owner("read-only directory, the file alone");
    set_mode(dir.path(), 0o777);
    answers_as_for_the_owner("read-only file in a writable directory");
    set_mode(dir.path(), 0o700);
    assert_eq!(
        std::fs::read(&file).unwrap(),
        bytes,
        "the file is unchanged"
    );
}

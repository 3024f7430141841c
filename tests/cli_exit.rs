//! One-shot commands exit once they have answered: `journey customer` run
//! many times in a row, each bounded by a deadline (the sqlx pool
//! maintenance task once spun after the answer in a few runs out of ten
//! thousand; see `journey_ledger::store::pool_options`).

#[path = "common/cli.rs"]
mod cli;

use std::process::Stdio;
use std::time::{Duration, Instant};

use cli::{journey, journey_command, ok};

#[test]
fn customer_queries_exit_after_answering_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("exit.db").display());
    ok(journey(
        &store,
        &["import", "fixtures/cdnow_sample.txt", "--format", "cdnow"],
    ));
    ok(journey(
        &store,
        &["--now", "1998-06-30T00:00:00Z", "rebuild"],
    ));
    let sample = std::fs::read_to_string("fixtures/cdnow_sample.txt").unwrap();
    let mut ids: Vec<&str> = sample
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    ids.dedup();
    for (run, id) in ids.iter().step_by(37).take(60).enumerate() {
        let started = Instant::now();
        let mut child = journey_command(&store)
            .args(["customer", id, "--as-of", "1998-06-30T00:00:00Z"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "run {run} ({id}) failed");
                break;
            }
            if started.elapsed() > Duration::from_secs(20) {
                child.kill().unwrap();
                panic!("run {run} (customer {id}) did not exit within 20 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

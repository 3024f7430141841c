//! `journey export-analytics`: one CSV row per customer from the active read
//! models, customer ids replaced by a keyed hash — stable for one key,
//! different under another, never the id itself — and a clear error, with
//! nothing written, when the key is missing.

use std::collections::BTreeSet;
use std::process::Output;

use journey_ledger::testing::temp_sqlite;

#[path = "common/cli.rs"]
mod cli;
use cli::{journey_command, ok};

const KEY_ENV: &str = "JOURNEY_PSEUDONYM_KEY";

fn journey(store: &str, key: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = journey_command(store);
    cmd.args(args);
    if let Some(key) = key {
        cmd.env(KEY_ENV, key);
    }
    cmd.output().expect("run journey")
}

/// The CDNOW sample's customer ids.
fn sample_ids() -> BTreeSet<String> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/cdnow_sample.txt"
    ))
    .unwrap();
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn analytics_rows_carry_pseudonyms_not_customer_ids() {
    let (dir, url) = temp_sqlite();
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/cdnow_sample.txt");
    ok(journey(
        &url,
        None,
        &["import", sample, "--format", "cdnow"],
    ));
    ok(journey(&url, None, &["rebuild", "--reason", "export test"]));

    let out = dir.path().join("customers.csv");
    let out_arg = out.to_str().unwrap();
    let refused = journey(&url, None, &["export-analytics", "--out", out_arg]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains(KEY_ENV), "{stderr}");
    assert!(!out.exists(), "nothing is written without a key");
    let short = journey(&url, Some("short"), &["export-analytics", "--out", out_arg]);
    assert!(!short.status.success());
    assert!(!out.exists());

    let key_a = "correct horse battery staple";
    let key_b = "another secret of enough length";
    ok(journey(
        &url,
        Some(key_a),
        &["export-analytics", "--out", out_arg],
    ));
    let first = std::fs::read_to_string(&out).unwrap();
    let again = ok(journey(&url, Some(key_a), &["export-analytics"]));
    let other = ok(journey(&url, Some(key_b), &["export-analytics"]));
    assert_eq!(first, again, "same key, same export");

    let rows: Vec<Vec<&str>> = first.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(
        rows[0].join(","),
        journey_ledger::projections::export::HEADER
    );
    let ids = sample_ids();
    assert_eq!(rows.len() - 1, ids.len(), "one row per customer");
    let pseudonyms: BTreeSet<&str> = rows[1..].iter().map(|r| r[0]).collect();
    assert_eq!(pseudonyms.len(), ids.len(), "pseudonyms are distinct");
    for p in &pseudonyms {
        assert!(p.starts_with("anon-") && p.len() == 37, "{p}");
    }
    for row in &rows[1..] {
        assert!(
            !ids.contains(row[0]),
            "customer id {} in the export",
            row[0]
        );
    }
    assert!(rows[1..].iter().all(|r| r.len() == rows[0].len()));
    assert!(
        rows[1..].iter().any(|r| !r[9].is_empty()),
        "some CLV figures"
    );
    // Another key links nothing: no pseudonym in common.
    let other_ids: BTreeSet<&str> = other
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert!(pseudonyms.is_disjoint(&other_ids));
    // The figures are the same, only the ids differ.
    let figures = |text: &str| -> BTreeSet<String> {
        text.lines()
            .skip(1)
            .map(|l| l.split_once(',').unwrap().1.to_owned())
            .collect()
    };
    assert_eq!(figures(&first), figures(&other));
}

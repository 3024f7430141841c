//! After a rebuild with the clock pinned, every customer's rows in the
//! per-customer tables (stage, loyalty balance, churn alerts) are what
//! `journey customer ID --as-of CLOCK` says: checked for every customer, the
//! tables read in one query each, on the CDNOW sample (always) and on
//! CDNOW master (when `../shared/data` is present).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use futures::StreamExt;
use journey_ledger::domain::{CustomerId, RecordedEvent};
use journey_ledger::import::{import_file, ImportFormat};
use journey_ledger::projections::clock::Clock;
use journey_ledger::projections::query::{customer_as_of, fold_customer_events};
use journey_ledger::projections::rules::RuleSet;
use journey_ledger::projections::runner::{self, RebuildOptions};
use journey_ledger::projections::storage::ReadModelDb;
use journey_ledger::store::{self, EventStore};
use journey_ledger::testing::temp_sqlite;
use sqlx::Row;

/// What the tables say of one customer.
#[derive(Debug, Default, PartialEq)]
struct Tables {
    stage: String,
    balance: i64,
    alerts: Vec<(String, i64)>,
}

async fn tables(pool: &sqlx::SqlitePool, version: i64) -> BTreeMap<String, Tables> {
    let mut out: BTreeMap<String, Tables> = BTreeMap::new();
    let rows = sqlx::query(
        "SELECT c.customer_id, c.stage, COALESCE(a.balance, 0) FROM lifecycle_customers c \
         LEFT JOIN loyalty_accounts a ON a.model_version = c.model_version AND a.customer_id = c.customer_id \
         WHERE c.model_version = ?",
    )
    .bind(version)
    .fetch_all(pool)
    .await
    .unwrap();
    for r in rows {
        let entry = out.entry(r.get(0)).or_default();
        entry.stage = r.get(1);
        entry.balance = r.get(2);
    }
    let rows = sqlx::query(
        "SELECT customer_id, rule, at_us FROM churn_alerts WHERE model_version = ? ORDER BY customer_id, seq",
    )
    .bind(version)
    .fetch_all(pool)
    .await
    .unwrap();
    for r in rows {
        out.entry(r.get(0))
            .or_default()
            .alerts
            .push((r.get(1), r.get(2)));
    }
    out
}

async fn check(file: &Path, clock: DateTime<Utc>) {
    let (_dir, url) = temp_sqlite();
    let store: Arc<dyn EventStore> = store::open(&url).await.unwrap();
    import_file(store.clone(), file, ImportFormat::Cdnow, |_| {})
        .await
        .unwrap();
    let db = ReadModelDb::open(&url).await.unwrap();
    let rules = RuleSet::shipped_defaults();
    let report = runner::rebuild(
        store.clone(),
        &db,
        &rules,
        &RebuildOptions {
            clock: Clock::Fixed(clock),
            ..RebuildOptions::default()
        },
        Utc::now(),
        |_| {},
    )
    .await
    .unwrap();
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let got = tables(&pool, report.model_version).await;

    // Each customer's events, read once, folded as `journey customer` does.
    let mut streams: BTreeMap<String, Vec<RecordedEvent>> = BTreeMap::new();
    let mut all = store::read_all(store.clone(), 1, 10_000);
    while let Some(event) = all.next().await {
        let event = event.unwrap();
        if let Some(customer) = event.stream_id.customer_id() {
            streams.entry(customer.to_string()).or_default().push(event);
        }
    }
    assert_eq!(got.len(), streams.len(), "customers in the tables");
    let mut wrong = Vec::new();
    for (customer, events) in &streams {
        let folded = fold_customer_events(&rules, events, clock).unwrap();
        let expected = Tables {
            stage: folded.stage.clone().unwrap_or_default(),
            balance: folded.loyalty.balance,
            alerts: folded
                .alerts
                .iter()
                .map(|a| (a.rule.as_str().to_owned(), a.at.timestamp_micros()))
                .collect(),
        };
        if got.get(customer) != Some(&expected) {
            wrong.push((customer.clone(), got.get(customer), expected));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} customers differ from their fold as of {clock}, e.g. {:?}",
        wrong.len(),
        streams.len(),
        &wrong[..wrong.len().min(3)]
    );
    // And `journey customer ID --as-of CLOCK` itself, for a few.
    for id in streams.keys().take(20) {
        let view = customer_as_of(store.clone(), &db, &CustomerId::parse(id).unwrap(), clock)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(view.stage.as_deref(), Some(got[id].stage.as_str()), "{id}");
        assert_eq!(view.loyalty.balance, got[id].balance, "{id}");
    }
    pool.close().await;
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdnow_sample_tables_equal_the_customer_view_as_of_the_clock() {
    check(
        Path::new("fixtures/cdnow_sample.txt"),
        Utc.with_ymd_and_hms(1998, 6, 30, 0, 0, 0).unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdnow_master_tables_equal_the_customer_view_as_of_the_clock() {
    let master = Path::new("../shared/data/cdnow_master.txt");
    if !master.exists() {
        eprintln!("SKIPPED: {} is absent", master.display());
        return;
    }
    check(master, Utc.with_ymd_and_hms(1998, 6, 30, 0, 0, 0).unwrap()).await;
}

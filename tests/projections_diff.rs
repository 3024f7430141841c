//! `journey diff`: editing a threshold in a copy of `projections/` reports
//! exactly the customers it moves — lifecycle stage, loyalty balance, and a
//! past redemption the new rules cannot cover (a conflict).

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use journey_ledger::domain::events::{
    CustomerRegistered, DomainEvent, OrderPlaced, PointsRedeemed, Profile,
};
use journey_ledger::domain::{Currency, CustomerId, EventMetadata, Money, NewEvent};
use journey_ledger::projections::diff::diff;
use journey_ledger::projections::rules::RuleSet;
use journey_ledger::store::{self, EventStore, ExpectedVersion};
use journey_ledger::testing::temp_sqlite;
use uuid::Uuid;

fn day(n: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2022, 1, 1, 0, 0, 0).unwrap() + Duration::days(n)
}

async fn append(
    store: &Arc<dyn EventStore>,
    customer: &str,
    at: DateTime<Utc>,
    event: DomainEvent,
) {
    let id = CustomerId::parse(customer).unwrap();
    let e = NewEvent::from_domain(Uuid::new_v4(), at, &EventMetadata::default(), &event).unwrap();
    store
        .append(&id.stream_id(), ExpectedVersion::Any, vec![e])
        .await
        .unwrap();
}

fn order(id: &str, cents: i64) -> DomainEvent {
    DomainEvent::OrderPlaced(OrderPlaced {
        order_id: id.into(),
        amount: Money::new(cents, Currency::USD),
        item_count: 1,
    })
}

/// A copy of the shipped rules with `edits` applied as (file, from, to).
fn edited_rules(edits: &[(&str, &str, &str)]) -> (tempfile::TempDir, RuleSet) {
    let dir = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("projections");
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let path = entry.unwrap().path();
        // The rules files, not the presets/ directory beside them.
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let mut text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        for (file, from, to) in edits {
            if *file == name {
                assert!(text.contains(from), "{name} has no {from:?}");
                text = text.replace(from, to);
            }
        }
        std::fs::write(dir.path().join(&name), text).unwrap();
    }
    let rules = RuleSet::load(dir.path()).unwrap();
    (dir, rules)
}

#[tokio::test]
async fn an_edited_threshold_reports_the_customers_that_move() {
    let (_dir, url) = temp_sqlite();
    let store = store::open(&url).await.unwrap();
    for customer in ["a", "b"] {
        append(
            &store,
            customer,
            day(0),
            DomainEvent::CustomerRegistered(CustomerRegistered {
                channel: "web".into(),
                acquisition_cost: None,
                profile: Profile::default(),
            }),
        )
        .await;
        append(
            &store,
            customer,
            day(0),
            order(&format!("{customer}1"), 10_000),
        )
        .await;
    }
    // a: last order on day 100, then spends every point (200 at the shipped
    // rate of 1 point per dollar).
    append(&store, "a", day(100), order("a2", 10_000)).await;
    append(
        &store,
        "a",
        day(110),
        DomainEvent::PointsRedeemed(PointsRedeemed {
            redemption_id: "r1".into(),
            points: 200,
            reward: None,
        }),
    )
    .await;
    // b: ordered recently, never redeems.
    append(&store, "b", day(150), order("b2", 10_000)).await;

    let shipped =
        RuleSet::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("projections")).unwrap();
    let as_of = Some(day(175));

    let same = diff(store.clone(), &shipped, &shipped, as_of, |_| {})
        .await
        .unwrap();
    assert_eq!(same.customers, 2);
    assert_eq!(same.lifecycle.stage_changes, 0);
    assert_eq!(same.loyalty.balance_changes, 0);
    assert!(same.loyalty.examples.is_empty() && same.alerts.examples.is_empty());

    // Without an instant: the newest customer event's, not that of the
    // admin stream's records (written at the wall clock).
    let record = NewEvent::from_parts(
        Uuid::new_v4(),
        "SessionRecorded",
        1,
        day(400),
        &EventMetadata::default(),
        &serde_json::json!({"session_id": "admin", "channel": "web"}),
    );
    let admin = journey_ledger::domain::StreamId::parse("ledger-admin").unwrap();
    store
        .append(&admin, ExpectedVersion::Any, vec![record])
        .await
        .unwrap();
    let newest = diff(store.clone(), &shipped, &shipped, None, |_| {})
        .await
        .unwrap();
    assert_eq!(newest.customers, 2);
    assert_eq!(
        newest.as_of.as_deref(),
        Some(journey_ledger::domain::envelope::display_instant(&day(150)).as_str()),
        "{newest:#?}"
    );

    // at_risk after 60 days instead of 90; half the points per dollar.
    let (_edited, edited) = edited_rules(&[
        (
            "lifecycle.toml",
            "[stages.at_risk]\n# No order for N days.\nafter_days = 90",
            "[stages.at_risk]\nafter_days = 60",
        ),
        ("loyalty.toml", "regular = 100", "regular = 50"),
    ]);
    assert_ne!(edited.hash, shipped.hash);
    let report = diff(store.clone(), &shipped, &edited, as_of, |_| {})
        .await
        .unwrap();

    // a: 75 days without an order on day 175 — active under 90, at_risk under 60.
    assert_eq!(report.lifecycle.stage_changes, 1, "{report:#?}");
    assert_eq!(report.lifecycle.stage_moves["active->at_risk"], 1);
    assert_eq!(report.lifecycle.examples[0].customer_id, "a");

    // b keeps 200 points under A and earns 100 under B; a spent everything
    // under A, and under B its redemption of 200 exceeds the 100 earned.
    assert_eq!(report.loyalty.points_a, 200);
    assert_eq!(report.loyalty.points_b, 100);
    assert_eq!(report.loyalty.balance_changes, 1);
    assert_eq!(
        (report.loyalty.conflicts_a, report.loyalty.conflicts_b),
        (0, 1)
    );
    let a = &report.loyalty.examples[0];
    assert_eq!(
        (a.customer_id.as_str(), a.balance, a.conflicts),
        ("a", [0, 0], [0, 1])
    );
    let b = &report.loyalty.examples[1];
    assert_eq!((b.customer_id.as_str(), b.balance), ("b", [200, 100]));
}

//! An audit export "as of T" is bitemporal: it lists the events the ledger
//! had *recorded* by T, and its projected state folds exactly those (the
//! ones that *occurred* by T), so a correction recorded later — even one
//! backdated to before T — changes neither, and the export re-verifies.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use journey_ledger::audit::export::{export_customer, verify_export};
use journey_ledger::domain::events::{CustomerRegistered, DomainEvent, OrderPlaced, Profile};
use journey_ledger::domain::{Currency, CustomerId, EventMetadata, Money, NewEvent};
use journey_ledger::projections::query::ProjectionsExportSection;
use journey_ledger::store::{self, EventStore, ExpectedVersion};
use journey_ledger::testing::temp_sqlite;
use uuid::Uuid;

fn day(n: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap() + Duration::days(n)
}

async fn append(store: &Arc<dyn EventStore>, at: DateTime<Utc>, event: DomainEvent) {
    let id = CustomerId::parse("bt").unwrap();
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

#[tokio::test]
async fn export_as_of_lists_and_folds_only_what_was_recorded_by_then() {
    let (_dir, url) = temp_sqlite();
    let store = store::open(&url).await.unwrap();
    append(
        &store,
        day(0),
        DomainEvent::CustomerRegistered(CustomerRegistered {
            channel: "web".into(),
            acquisition_cost: None,
            profile: Profile::default(),
        }),
    )
    .await;
    append(&store, day(1), order("o1", 10_000)).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let known_at = Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    // Recorded after `known_at`, but backdated to day 2.
    append(&store, day(2), order("o2", 5_000)).await;

    let customer = CustomerId::parse("bt").unwrap();
    let section = ProjectionsExportSection {
        db: None,
        default_as_of: known_at,
    };
    let then = export_customer(store.as_ref(), None, &customer, Some(known_at), &[&section])
        .await
        .unwrap();
    assert_eq!(then.events.len(), 2, "only what was recorded by then");
    let state = &then.projected_state["projections"].value;
    assert_eq!(state["revenue_minor"], 10_000);
    assert_eq!(state["value"]["orders"], 1);
    assert_eq!(state["loyalty"]["totals"]["earned"], 100);
    let report = verify_export(&then);
    assert!(report.problems.is_empty(), "{:?}", report.problems);

    let now = export_customer(store.as_ref(), None, &customer, None, &[&section])
        .await
        .unwrap();
    assert_eq!(now.events.len(), 3);
    let state = &now.projected_state["projections"].value;
    assert_eq!(state["revenue_minor"], 15_000);
    assert_eq!(state["value"]["orders"], 2);
}

//! Property: for any event sequence (late events included) appended in any
//! number of rounds, maintaining the read models incrementally after each
//! round gives exactly the tables of a rebuild from scratch. SQLite only:
//! every case needs a fresh store.

use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use journey_ledger::domain::events::{
    CustomerRegistered, DomainEvent, OrderPlaced, OrderRefunded, Profile, RefundKind,
    SubscriptionCancelled,
};
use journey_ledger::domain::{Currency, CustomerId, EventMetadata, Money, NewEvent};
use journey_ledger::projections::clock::Clock;
use journey_ledger::projections::lifecycle::fold_as_of;
use journey_ledger::projections::query::customer_as_of;
use journey_ledger::projections::rules::RuleSet;
use journey_ledger::projections::runner::{
    self, all_tables, folds_for, ProjectorOptions, RebuildOptions,
};
use journey_ledger::projections::storage::ReadModelDb;
use journey_ledger::store::{self, EventStore, ExpectedVersion, ReadStream};
use journey_ledger::testing::temp_sqlite;
use proptest::prelude::*;
use uuid::Uuid;

#[derive(Debug, Clone)]
struct Step {
    customer: u8,
    day: i64,
    kind: u8,
    /// Run the incremental runner after this step.
    catch_up: bool,
}

fn event(kind: u8, n: usize) -> DomainEvent {
    match kind {
        0 => DomainEvent::CustomerRegistered(CustomerRegistered {
            channel: "web".into(),
            acquisition_cost: None,
            profile: Profile::default(),
        }),
        1..=5 => DomainEvent::OrderPlaced(OrderPlaced {
            order_id: format!("o{n}"),
            amount: Money::new(500 + n as i64 * 37, Currency::USD),
            item_count: 1,
        }),
        6 => DomainEvent::OrderRefunded(OrderRefunded {
            order_id: "o".into(),
            refund_id: format!("r{n}"),
            amount: Money::new(100, Currency::USD),
            kind: RefundKind::Partial,
            reason: None,
        }),
        _ => DomainEvent::SubscriptionCancelled(SubscriptionCancelled {
            subscription_id: "s".into(),
            reason: None,
        }),
    }
}

async fn dump(db: &ReadModelDb, version: i64) -> Vec<Vec<Vec<Option<String>>>> {
    let mut out = Vec::new();
    for table in all_tables(&folds_for(&RuleSet::shipped_defaults())) {
        out.push(db.dump(&table, version, None).await.unwrap());
    }
    out
}

async fn check(steps: Vec<Step>, batch: usize) {
    let (_dir, url) = temp_sqlite();
    let store: Arc<dyn EventStore> = store::open(&url).await.unwrap();
    let db = ReadModelDb::open(&url).await.unwrap();
    let rules = RuleSet::shipped_defaults();
    let start = Utc.with_ymd_and_hms(2022, 1, 1, 0, 0, 0).unwrap();
    // Now is pinned: the tables show every customer as of it.
    let clock = Clock::Fixed(start + Duration::days(950));
    let opts = RebuildOptions {
        batch_events: batch,
        clock: clock.clone(),
        ..RebuildOptions::default()
    };
    let live = ProjectorOptions {
        clock,
        ..ProjectorOptions::default()
    };
    let incremental = runner::rebuild(store.clone(), &db, &rules, &opts, start, |_| {})
        .await
        .unwrap();
    for (n, step) in steps.iter().enumerate() {
        let id = CustomerId::parse(&format!("p{}", step.customer)).unwrap();
        let at = start + Duration::days(step.day) + Duration::microseconds(step.day % 7);
        let e = NewEvent::from_domain(
            Uuid::new_v4(),
            at,
            &EventMetadata::default(),
            &event(step.kind, n),
        )
        .unwrap();
        store
            .append(&id.stream_id(), ExpectedVersion::Any, vec![e])
            .await
            .unwrap();
        if step.catch_up {
            runner::catch_up_with(store.clone(), &db, batch, live.clone())
                .await
                .unwrap();
        }
    }
    runner::catch_up_with(store.clone(), &db, batch, live.clone())
        .await
        .unwrap();
    let mut fresh = rules.clone();
    fresh.hash = "from-scratch".into();
    let rebuilt = runner::rebuild(store.clone(), &db, &fresh, &opts, start, |_| {})
        .await
        .unwrap();
    assert_eq!(
        dump(&db, incremental.model_version).await,
        dump(&db, rebuilt.model_version).await
    );
    // And both equal folding each stream in (occurred_at, version) order.
    let far = start + Duration::days(5000);
    for c in 0..4 {
        let id = CustomerId::parse(&format!("p{c}")).unwrap();
        let stream = store
            .read_stream(&id.stream_id(), ReadStream::all_forwards())
            .await
            .unwrap();
        let events: Vec<_> = stream
            .iter()
            .map(|e| runner::fold_event(e).unwrap().unwrap().1)
            .collect();
        let (state, expected) = fold_as_of(&rules.lifecycle, &events, far);
        let view = customer_as_of(store.clone(), &db, &id, far).await.unwrap();
        assert_eq!(
            view.as_ref().and_then(|v| v.stage.clone()),
            state.stage.map(|s| s.as_str().to_owned())
        );
        let got: Vec<(String, String, String)> = view
            .map(|v| {
                v.stage_history
                    .into_iter()
                    .map(|t| (t.to, t.at, t.cause))
                    .collect()
            })
            .unwrap_or_default();
        let want: Vec<(String, String, String)> = expected
            .iter()
            .map(|t| {
                (
                    t.to.as_str().to_owned(),
                    journey_ledger::domain::envelope::display_instant(&t.at),
                    t.cause.to_string(),
                )
            })
            .collect();
        assert_eq!(got, want, "customer p{c}");
    }
    db.close().await;
}

fn step() -> impl Strategy<Value = Step> {
    (0u8..4, 0i64..900, 0u8..8, proptest::bool::weighted(0.3)).prop_map(
        |(customer, day, kind, catch_up)| Step {
            customer,
            day,
            kind,
            catch_up,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn incremental_maintenance_equals_rebuild_from_scratch(
        steps in proptest::collection::vec(step(), 1..40),
        batch in 1usize..9,
    ) {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(check(steps, batch));
    }
}

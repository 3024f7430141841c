//! Property (issue 6, "as-of everywhere"): what the read models answered
//! for an instant T while the ledger held only the events recorded so far
//! equals
//! (a) the answer of read models rebuilt from scratch on a store holding
//!     only those events, and
//! (b) the bitemporal answer `customer_known_at(T, known_at)` on the full
//!     store later, after further events — backdated corrections among
//!     them — have arrived.
//! Random histories mix registrations, orders, refunds, complaints,
//! redemptions (some beyond the balance) and cancellations, appended in
//! rounds with occurred_at in any order. Every projection's per-customer
//! state is compared (stage and history, revenue, loyalty, value, alerts),
//! and the population figures (value tier, CLV, RFM) between (a) and the
//! live read models. SQLite files; every case builds fresh stores.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use journey_ledger::domain::events::{
    ComplaintFiled, CustomerRegistered, DomainEvent, OrderPlaced, OrderRefunded, PointsRedeemed,
    Profile, RefundKind, SubscriptionCancelled,
};
use journey_ledger::domain::{Currency, CustomerId, EventMetadata, Money, NewEvent};
use journey_ledger::projections::query::{customer_as_of, customer_known_at, CustomerView};
use journey_ledger::projections::rules::RuleSet;
use journey_ledger::projections::runner::{self, RebuildOptions};
use journey_ledger::projections::storage::ReadModelDb;
use journey_ledger::store::{self, EventStore, ExpectedVersion};
use journey_ledger::testing::temp_sqlite;
use proptest::prelude::*;
use uuid::Uuid;

const CUSTOMERS: u8 = 3;
const BATCH: usize = 4;

#[derive(Debug, Clone)]
struct Step {
    customer: u8,
    day: i64,
    kind: u8,
}

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2022, 1, 1, 0, 0, 0).unwrap()
}

fn customer(c: u8) -> CustomerId {
    CustomerId::parse(&format!("p{c}")).unwrap()
}

fn domain_event(kind: u8, n: usize) -> DomainEvent {
    match kind {
        0 => DomainEvent::CustomerRegistered(CustomerRegistered {
            channel: "web".into(),
            acquisition_cost: None,
            profile: Profile::default(),
        }),
        1..=4 => DomainEvent::OrderPlaced(OrderPlaced {
            order_id: format!("o{n}"),
            amount: Money::new(4_000 + n as i64 * 1_337, Currency::USD),
            item_count: 1,
        }),
        5 => DomainEvent::OrderRefunded(OrderRefunded {
            order_id: "o".into(),
            refund_id: format!("r{n}"),
            amount: Money::new(1_500, Currency::USD),
            kind: RefundKind::Partial,
            reason: None,
        }),
        6 => DomainEvent::ComplaintFiled(ComplaintFiled {
            complaint_id: format!("c{n}"),
            category: "delivery".into(),
            description: None,
        }),
        7 => DomainEvent::PointsRedeemed(PointsRedeemed {
            redemption_id: format!("x{n}"),
            points: 20 + (n as i64 % 5) * 40,
            reward: None,
        }),
        _ => DomainEvent::SubscriptionCancelled(SubscriptionCancelled {
            subscription_id: "s".into(),
            reason: None,
        }),
    }
}

/// The parts of a view that depend on the events and rules only (not on
/// which version answered or how it computed).
fn comparable(view: Option<CustomerView>) -> Option<CustomerView> {
    view.map(|mut v| {
        v.model_version = 0;
        v
    })
}

/// Per-customer figures only, as `customer_known_at` returns them.
fn per_customer(view: &Option<CustomerView>) -> Option<String> {
    view.as_ref().map(|v| {
        serde_json::json!({
            "stage": v.stage,
            "stage_history": v.stage_history,
            "revenue_minor": v.revenue_minor,
            "loyalty": v.loyalty,
            "value": v.value,
            "alerts": v.alerts,
        })
        .to_string()
    })
}

async fn append_all(store: &Arc<dyn EventStore>, events: &[(u8, NewEvent)]) {
    for (c, e) in events {
        store
            .append(
                &customer(*c).stream_id(),
                ExpectedVersion::Any,
                vec![e.clone()],
            )
            .await
            .unwrap();
    }
}

async fn rebuilt_view(
    events: &[(u8, NewEvent)],
    rules: &RuleSet,
    at: DateTime<Utc>,
) -> Vec<Option<CustomerView>> {
    let (_dir, url) = temp_sqlite();
    let store: Arc<dyn EventStore> = store::open(&url).await.unwrap();
    append_all(&store, events).await;
    let db = ReadModelDb::open(&url).await.unwrap();
    let opts = RebuildOptions {
        batch_events: BATCH,
        ..RebuildOptions::default()
    };
    runner::rebuild(store.clone(), &db, rules, &opts, start(), |_| {})
        .await
        .unwrap();
    let views = views_at(&store, &db, at).await;
    db.close().await;
    views
}

/// Every customer's view as of `at` from the active read models.
async fn views_at(
    store: &Arc<dyn EventStore>,
    db: &ReadModelDb,
    at: DateTime<Utc>,
) -> Vec<Option<CustomerView>> {
    let mut views = Vec::new();
    for c in 0..CUSTOMERS {
        views.push(comparable(
            customer_as_of(store.clone(), db, &customer(c), at)
                .await
                .unwrap(),
        ));
    }
    views
}

/// One round's observation: the instant asked about, when it was asked
/// (every event recorded so far is recorded by then) and the answers.
struct Observation {
    at: DateTime<Utc>,
    known_at: DateTime<Utc>,
    appended: usize,
    views: Vec<Option<CustomerView>>,
}

async fn check(rounds: Vec<(Vec<Step>, i64)>) {
    let rules = RuleSet::shipped_defaults();
    let (_dir, url) = temp_sqlite();
    let store: Arc<dyn EventStore> = store::open(&url).await.unwrap();
    let db = ReadModelDb::open(&url).await.unwrap();
    let opts = RebuildOptions {
        batch_events: BATCH,
        ..RebuildOptions::default()
    };
    runner::rebuild(store.clone(), &db, &rules, &opts, start(), |_| {})
        .await
        .unwrap();

    let mut appended: Vec<(u8, NewEvent)> = Vec::new();
    let mut observations = Vec::new();
    for (steps, ask_day) in rounds {
        for step in steps {
            let n = appended.len();
            let occurred = start() + Duration::days(step.day) + Duration::minutes(n as i64);
            let event = NewEvent::from_domain(
                Uuid::new_v4(),
                occurred,
                &EventMetadata::default(),
                &domain_event(step.kind, n),
            )
            .unwrap();
            append_all(&store, &[(step.customer, event.clone())]).await;
            appended.push((step.customer, event));
        }
        runner::catch_up(store.clone(), &db, BATCH).await.unwrap();
        let at = start() + Duration::days(ask_day);
        let views = views_at(&store, &db, at).await;
        // Everything appended so far was recorded before this instant, and
        // the next round's events after it.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        let known_at = Utc::now();
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        observations.push(Observation {
            at,
            known_at,
            appended: appended.len(),
            views,
        });
    }

    for (round, seen) in observations.iter().enumerate() {
        let rebuilt = rebuilt_view(&appended[..seen.appended], &rules, seen.at).await;
        for (c, (live, rebuilt)) in seen.views.iter().zip(&rebuilt).enumerate() {
            assert_eq!(
                live, rebuilt,
                "round {round}, customer p{c}: live read models vs rebuild of the events recorded by then"
            );
            let known = customer_known_at(
                store.clone(),
                &rules,
                &customer(c as u8),
                seen.at,
                seen.known_at,
            )
            .await
            .unwrap()
            .map(|f| {
                serde_json::json!({
                    "stage": f.stage,
                    "stage_history": f.stage_history,
                    "revenue_minor": f.revenue_minor,
                    "loyalty": f.loyalty,
                    "value": f.value,
                    "alerts": f.alerts,
                })
                .to_string()
            });
            assert_eq!(
                per_customer(live),
                known,
                "round {round}, customer p{c}: live read models vs the full store asked what it knew then"
            );
        }
    }
    db.close().await;
}

fn step() -> impl Strategy<Value = Step> {
    (0..CUSTOMERS, 0i64..720, 0u8..9).prop_map(|(customer, day, kind)| Step {
        customer,
        day,
        kind,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn as_of_answers_equal_a_rebuild_from_the_events_recorded_by_then(
        rounds in proptest::collection::vec(
            (proptest::collection::vec(step(), 1..10), 0i64..900),
            1..4,
        ),
    ) {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(check(rounds));
    }
}

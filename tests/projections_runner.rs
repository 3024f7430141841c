//! The projection runner on real stores (SQLite file and a fresh PostgreSQL
//! database per test): versioned rebuilds, crash recovery, incremental
//! maintenance with late events, as-of queries and the CDNOW sample.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use journey_ledger::clv::ledger::{load_transactions, score as clv_score};
use journey_ledger::clv::TimeUnit;
use journey_ledger::domain::events::{
    ComplaintFiled, CustomerRegistered, DomainEvent, OrderPlaced, OrderRefunded, PointsRedeemed,
    Profile, RefundKind, SessionRecorded, SubscriptionCancelled,
};
use journey_ledger::domain::{Currency, CustomerId, EventMetadata, Money, NewEvent};
use journey_ledger::import::{import_file, ImportFormat};
use journey_ledger::projections::analytics;
use journey_ledger::projections::clock::Clock;
use journey_ledger::projections::cohorts::{CohortAccumulator, CustomerFacts, YearMonth};
use journey_ledger::projections::lifecycle::{fold_as_of, value_tiers};
use journey_ledger::projections::query::customer_as_of;
use journey_ledger::projections::rules::RuleSet;
use journey_ledger::projections::runner::{
    self, all_tables, folds_for, ProjectorOptions, RebuildOptions,
};
use journey_ledger::projections::storage::{ReadModelDb, VersionStatus};
use journey_ledger::projections::tier_bounds::month_end_at_or_before;
use journey_ledger::store::{self, EventStore, ExpectedVersion};
use journey_ledger::testing::{temp_sqlite, TempDatabase};
use uuid::Uuid;

/// A store and its read-model database, disposed of at the end.
struct Env {
    store: Arc<dyn EventStore>,
    db: ReadModelDb,
    pg: Option<TempDatabase>,
    _dir: Option<tempfile::TempDir>,
}

impl Env {
    async fn sqlite() -> Self {
        let (dir, url) = temp_sqlite();
        let store = store::open(&url).await.unwrap();
        let db = ReadModelDb::open(&url).await.unwrap();
        Env {
            store,
            db,
            pg: None,
            _dir: Some(dir),
        }
    }

    async fn postgres() -> Self {
        let pg = TempDatabase::create()
            .await
            .expect("PostgreSQL must be reachable at DATABASE_URL");
        let store = store::open(&pg.url).await.unwrap();
        let db = ReadModelDb::open(&pg.url).await.unwrap();
        Env {
            store,
            db,
            pg: Some(pg),
            _dir: None,
        }
    }

    async fn finish(self) {
        self.db.close().await;
        drop(self.store);
        if let Some(pg) = self.pg {
            pg.drop_database().await;
        }
    }
}

fn day(n: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2021, 1, 1, 0, 0, 0).unwrap() + Duration::days(n)
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

fn registered() -> DomainEvent {
    DomainEvent::CustomerRegistered(CustomerRegistered {
        channel: "web".into(),
        acquisition_cost: None,
        profile: Profile::default(),
    })
}

fn order(n: u64, cents: i64) -> DomainEvent {
    DomainEvent::OrderPlaced(OrderPlaced {
        order_id: format!("o{n}"),
        amount: Money::new(cents, Currency::USD),
        item_count: 1,
    })
}

/// A varied history for `customers` customers, some events late.
async fn seed(store: &Arc<dyn EventStore>, customers: u64) {
    for c in 0..customers {
        let id = format!("c{c}");
        append(store, &id, day(c as i64 % 30), registered()).await;
        for k in 0..(c % 6) {
            let at = day((c as i64 % 30) + 1 + k as i64 * (20 + c as i64 * 13 % 150));
            append(store, &id, at, order(k, 1_000 + (c as i64 * 777 % 9_000))).await;
        }
        if c % 5 == 0 {
            append(
                store,
                &id,
                day(400),
                DomainEvent::SessionRecorded(SessionRecorded {
                    session_id: "s".into(),
                    channel: "web".into(),
                    duration_secs: None,
                }),
            )
            .await;
        }
        if c % 7 == 3 {
            // Late: happened before the last order, stored after it.
            append(store, &id, day(c as i64 % 30 + 2), order(99, 500)).await;
        }
        if c % 11 == 4 {
            append(
                store,
                &id,
                day(300),
                DomainEvent::SubscriptionCancelled(SubscriptionCancelled {
                    subscription_id: "s".into(),
                    reason: None,
                }),
            )
            .await;
        }
        if c % 4 == 1 && c % 6 > 0 {
            append(
                store,
                &id,
                day(350),
                DomainEvent::OrderRefunded(OrderRefunded {
                    order_id: "o0".into(),
                    refund_id: "r".into(),
                    amount: Money::new(100, Currency::USD),
                    kind: RefundKind::Partial,
                    reason: None,
                }),
            )
            .await;
        }
    }
}

/// Every read-model table of a version, as text rows.
async fn dump(db: &ReadModelDb, version: i64) -> Vec<(String, Vec<Vec<Option<String>>>)> {
    let rules = RuleSet::shipped_defaults();
    let mut out = Vec::new();
    for table in all_tables(&folds_for(&rules)) {
        out.push((
            table.name.to_owned(),
            db.dump(&table, version, None).await.unwrap(),
        ));
    }
    out
}

/// The instant every test here pins "now" to: inside the seeded histories,
/// so some lots are unexpired and some customers not yet churned.
fn now() -> DateTime<Utc> {
    day(450)
}

fn options(batch: usize) -> RebuildOptions {
    RebuildOptions {
        batch_events: batch,
        clock: Clock::Fixed(now()),
        // These tests compare versions: keep them all.
        keep_versions: None,
        ..RebuildOptions::default()
    }
}

fn live() -> ProjectorOptions {
    ProjectorOptions {
        clock: Clock::Fixed(now()),
        ..ProjectorOptions::default()
    }
}

async fn rebuild_twice_is_identical_and_switches_atomically(env: Env) {
    let rules = RuleSet::shipped_defaults();
    seed(&env.store, 40).await;
    let first = runner::rebuild(
        env.store.clone(),
        &env.db,
        &rules,
        &options(37),
        day(0),
        |_| {},
    )
    .await
    .unwrap();
    assert!(first.activated);
    let a = dump(&env.db, first.model_version).await;
    // The seed has registrations, orders, sessions, refunds and
    // cancellations: every table those feed must have rows. Its spend is
    // too small for a loyalty tier and it redeems nothing (no conflicts).
    let empty: Vec<&str> = a
        .iter()
        .filter(|(_, rows)| rows.is_empty())
        .map(|(t, _)| t.as_str())
        .collect();
    assert_eq!(
        empty,
        ["loyalty_tier_history", "loyalty_conflicts"],
        "tables without rows"
    );

    // A second rebuild (other rules, so no resume) stopped half-way leaves
    // the first version active and untouched.
    let mut other = rules.clone();
    other.hash = "other".into();
    let stopped = runner::rebuild(
        env.store.clone(),
        &env.db,
        &other,
        &RebuildOptions {
            stop_after_batches: Some(2),
            ..options(20)
        },
        day(0),
        |_| {},
    )
    .await
    .unwrap();
    assert!(!stopped.activated);
    let (active, _) = runner::active(&env.db).await.unwrap();
    assert_eq!(active.model_version, first.model_version);

    let second = runner::rebuild(
        env.store.clone(),
        &env.db,
        &rules,
        &options(1000),
        day(0),
        |_| {},
    )
    .await
    .unwrap();
    assert_ne!(second.model_version, first.model_version);
    assert_eq!(dump(&env.db, second.model_version).await, a);
    let versions = env.db.versions().await.unwrap();
    let status = |v: i64| {
        versions
            .iter()
            .find(|x| x.model_version == v)
            .unwrap()
            .status
            .clone()
    };
    assert_eq!(status(second.model_version), "active");
    assert_eq!(status(first.model_version), "retired");
    assert_eq!(status(stopped.model_version), "abandoned");
    env.finish().await;
}

async fn crash_mid_rebuild_resumes_to_identical_results(env: Env) {
    let rules = RuleSet::shipped_defaults();
    seed(&env.store, 60).await;
    let reference = runner::rebuild(
        env.store.clone(),
        &env.db,
        &rules,
        &options(25),
        day(0),
        |_| {},
    )
    .await
    .unwrap();
    let expected = dump(&env.db, reference.model_version).await;

    let mut fresh = rules.clone();
    fresh.hash = "fresh".into();
    let crashed = runner::rebuild(
        env.store.clone(),
        &env.db,
        &fresh,
        &RebuildOptions {
            stop_after_batches: Some(3),
            ..options(25)
        },
        day(0),
        |_| {},
    )
    .await
    .unwrap();
    assert!(!crashed.activated);
    assert_eq!(crashed.checkpoint, 0, "not complete through any position");
    let building = env
        .db
        .latest_with_status(VersionStatus::Building)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(building.model_version, crashed.model_version);
    // Three chunks of whole customers (at least 25 events each) committed.
    let folded = building.events_applied as u64;
    assert!(folded >= 75, "{folded} events committed");

    // Restart: the same rules resume the building version.
    let resumed = runner::rebuild(
        env.store.clone(),
        &env.db,
        &fresh,
        &options(25),
        day(0),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(resumed.model_version, crashed.model_version);
    assert_eq!(resumed.resumed_from, Some(folded));
    assert!(resumed.activated);
    assert_eq!(dump(&env.db, resumed.model_version).await, expected);
    env.finish().await;
}

async fn incremental_equals_rebuild_with_late_events(env: Env) {
    let rules = RuleSet::shipped_defaults();
    // Start from an empty store, then maintain incrementally in rounds.
    let start = runner::rebuild(
        env.store.clone(),
        &env.db,
        &rules,
        &options(50),
        day(0),
        |_| {},
    )
    .await
    .unwrap();
    for round in 0..3 {
        for c in 0..10 {
            let id = format!("c{c}");
            if round == 0 {
                append(&env.store, &id, day(c), registered()).await;
            }
            // Later rounds also insert events earlier than ones applied.
            let at = day(c + 1 + ((round * 97 + c * 31) % 200));
            append(&env.store, &id, at, order(round as u64, 1000 + c * 10)).await;
        }
        // Tiers as of past month ends, read before the round is folded:
        // their bounds are kept, and the late events must drop them.
        let past = [day(45), day(100), day(150)];
        for at in past {
            tiers_as_of(&env, 10, at).await;
        }
        runner::catch_up_with(env.store.clone(), &env.db, 7, live())
            .await
            .unwrap();
        for at in past {
            assert_eq!(
                tiers_as_of(&env, 10, at).await,
                replayed_tiers(&env.store, &rules, 10, at).await,
                "round {round}, as of {at}"
            );
        }
    }
    let incremental = dump(&env.db, start.model_version).await;
    // The maintained history equals folding each stream in business-time
    // order, late events included.
    for c in 0..10 {
        let id = CustomerId::parse(&format!("c{c}")).unwrap();
        let view = customer_as_of(env.store.clone(), &env.db, &id, day(1000))
            .await
            .unwrap()
            .unwrap();
        let stream = env
            .store
            .read_stream(
                &id.stream_id(),
                journey_ledger::store::ReadStream::all_forwards(),
            )
            .await
            .unwrap();
        let events: Vec<_> = stream
            .iter()
            .map(|e| runner::fold_event(e).unwrap().unwrap().1)
            .collect();
        let (_, expected) = fold_as_of(&rules.lifecycle, &events, day(1000));
        let got: Vec<(String, String)> = view
            .stage_history
            .iter()
            .map(|t| (t.to.clone(), t.cause.clone()))
            .collect();
        let want: Vec<(String, String)> = expected
            .iter()
            .map(|t| (t.to.as_str().to_owned(), t.cause.to_string()))
            .collect();
        assert_eq!(got, want, "customer c{c}");
    }
    let mut fresh = rules.clone();
    fresh.hash = "fresh".into();
    let rebuilt = runner::rebuild(
        env.store.clone(),
        &env.db,
        &fresh,
        &options(1000),
        day(0),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(dump(&env.db, rebuilt.model_version).await, incremental);
    env.finish().await;
}

/// Customers `c0..cN`'s value tiers as of `at` (with the instant each is
/// labelled with), as queries answer them.
async fn tiers_as_of(
    env: &Env,
    customers: i64,
    at: DateTime<Utc>,
) -> Vec<(Option<String>, Option<String>)> {
    let mut tiers = Vec::new();
    for c in 0..customers {
        let id = CustomerId::parse(&format!("c{c}")).unwrap();
        let view = customer_as_of(env.store.clone(), &env.db, &id, at)
            .await
            .unwrap();
        tiers.push(view.map_or((None, None), |v| (v.value_tier, v.value_tier_as_of)));
    }
    tiers
}

/// The same tiers from a replay of every stream: each customer's revenue
/// at the last month end at or before `at`, ranked.
async fn replayed_tiers(
    store: &Arc<dyn EventStore>,
    rules: &RuleSet,
    customers: i64,
    at: DateTime<Utc>,
) -> Vec<(Option<String>, Option<String>)> {
    let month_end = month_end_at_or_before(at);
    let mut revenues: Vec<(CustomerId, i64)> = Vec::new();
    for c in 0..customers {
        let id = CustomerId::parse(&format!("c{c}")).unwrap();
        let stream = store
            .read_stream(&id.stream_id(), store::ReadStream::all_forwards())
            .await
            .unwrap();
        let mut revenue = None;
        for recorded in stream.iter().filter(|e| e.occurred_at <= month_end) {
            let delta = match recorded.decode().unwrap() {
                DomainEvent::OrderPlaced(o) => o.amount.minor,
                DomainEvent::OrderRefunded(r) => -r.amount.minor,
                _ => 0,
            };
            revenue = Some(revenue.unwrap_or(0) + delta);
        }
        if let Some(revenue) = revenue {
            revenues.push((id, revenue));
        }
    }
    let tiers = value_tiers(&rules.lifecycle, revenues.iter().map(|(c, r)| (c, *r)));
    let label = journey_ledger::domain::envelope::display_instant(&month_end);
    (0..customers)
        .map(|c| {
            let id = CustomerId::parse(&format!("c{c}")).unwrap();
            match tiers.get(&id) {
                Some(tier) => (Some(tier.as_str().to_owned()), Some(label.clone())),
                None => (None, None),
            }
        })
        .collect()
}

async fn as_of_equals_rebuilding_with_only_earlier_events(env: Env) {
    let rules = RuleSet::shipped_defaults();
    seed(&env.store, 30).await;
    runner::rebuild(
        env.store.clone(),
        &env.db,
        &rules,
        &options(100),
        day(0),
        |_| {},
    )
    .await
    .unwrap();
    // Month ends: before the snapshot a value tier is answered as of the
    // last month end, so at a month end it must be the tier a store of only
    // the earlier events ranks.
    for cutoff in [day(20), day(120), day(260)].map(month_end_at_or_before) {
        // A second store holding only the events with occurred_at <= cutoff.
        let (dir, url) = temp_sqlite();
        let partial = store::open(&url).await.unwrap();
        let partial_db = ReadModelDb::open(&url).await.unwrap();
        let all = journey_ledger::store::read_all(env.store.clone(), 1, 1000);
        use futures::StreamExt;
        let all: Vec<_> = all.map(|e| e.unwrap()).collect().await;
        for e in all.iter().filter(|e| e.occurred_at <= cutoff) {
            let event = e.decode().unwrap();
            let new =
                NewEvent::from_domain(e.event_id, e.occurred_at, &EventMetadata::default(), &event)
                    .unwrap();
            partial
                .append(&e.stream_id, ExpectedVersion::Any, vec![new])
                .await
                .unwrap();
        }
        runner::rebuild(
            partial.clone(),
            &partial_db,
            &rules,
            &options(100),
            day(0),
            |_| {},
        )
        .await
        .unwrap();
        for c in 0..30 {
            let id = CustomerId::parse(&format!("c{c}")).unwrap();
            let full = customer_as_of(env.store.clone(), &env.db, &id, cutoff)
                .await
                .unwrap();
            let only = customer_as_of(partial.clone(), &partial_db, &id, cutoff)
                .await
                .unwrap();
            let strip = |v: Option<journey_ledger::projections::query::CustomerView>| {
                v.map(|mut v| {
                    v.model_version = 0;
                    // Population figures exist only as of a version's
                    // snapshot (the newest event), which differs here; so
                    // does the instant a tier read from it is labelled with.
                    v.population = None;
                    v.population_snapshot = None;
                    v.value_tier_as_of = None;
                    v
                })
            };
            assert_eq!(strip(full), strip(only), "customer c{c} as of {cutoff}");
        }
        partial_db.close().await;
        drop(dir);
    }
    env.finish().await;
}

async fn cdnow_sample_gives_a_consistent_stage_history(env: Env) {
    let rules = RuleSet::shipped_defaults();
    import_file(
        env.store.clone(),
        Path::new("fixtures/cdnow_sample.txt"),
        ImportFormat::Cdnow,
        |_| {},
    )
    .await
    .unwrap();
    // A historical data set: now is pinned at its end.
    let as_of = Utc.with_ymd_and_hms(1998, 6, 30, 0, 0, 0).unwrap();
    let report = runner::rebuild(
        env.store.clone(),
        &env.db,
        &rules,
        &RebuildOptions {
            clock: Clock::Fixed(as_of),
            ..options(5000)
        },
        day(0),
        |_| {},
    )
    .await
    .unwrap();
    assert!(report.customers > 1000, "{report:?}");
    // Customer 00004 bought on 1997-01-01, 01-18, 08-02 and 12-12.
    let id = CustomerId::parse("00004").unwrap();
    let view = customer_as_of(env.store.clone(), &env.db, &id, as_of)
        .await
        .unwrap()
        .unwrap();
    let moves: Vec<(String, String, bool)> = view
        .stage_history
        .iter()
        .map(|t| {
            (
                t.to.clone(),
                t.at[..10].to_owned(),
                t.cause.starts_with("rule:"),
            )
        })
        .collect();
    let expect = |s: &str, d: &str, rule: bool| (s.to_owned(), d.to_owned(), rule);
    assert_eq!(
        moves,
        vec![
            expect("prospect", "1997-01-01", false),
            expect("new", "1997-01-01", false),
            expect("active", "1997-04-01", true), // new ends 90 days after 01-01
            expect("at_risk", "1997-04-18", true), // 90 days after 01-18
            expect("dormant", "1997-07-17", true), // 180 days after 01-18
            expect("reactivated", "1997-08-02", false),
            expect("at_risk", "1997-10-31", true), // 90 days after 08-02
            expect("active", "1997-12-12", false),
            expect("at_risk", "1998-03-12", true),
            expect("dormant", "1998-06-10", true),
        ]
    );
    assert_eq!(view.stage.as_deref(), Some("dormant"));
    assert_eq!(view.orders, 4);
    assert_eq!(view.revenue_minor, 2933 + 2973 + 1496 + 2648);
    assert!(view.value_tier.is_some());
    // Before the last order the answer comes from replaying the stream,
    // and agrees with the stored history up to then.
    let earlier = customer_as_of(
        env.store.clone(),
        &env.db,
        &id,
        Utc.with_ymd_and_hms(1997, 9, 1, 0, 0, 0).unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(earlier.stage.as_deref(), Some("reactivated"));
    assert_eq!(earlier.stage_history[..], view.stage_history[..6]);

    // Loyalty: 1 point per whole dollar (29 + 29 + 14 + 26), lots expire 12
    // months after earning, so by 1998-06-30 the January lots are gone.
    assert_eq!(view.loyalty.totals.earned, 98);
    assert_eq!(view.loyalty.totals.expired, 58);
    assert_eq!(view.loyalty.balance, 40);
    assert_eq!(view.loyalty.lots.len(), 2);
    assert_eq!(view.loyalty.tier.as_str(), "regular");
    // Historical value: gaps between purchase days.
    assert_eq!(view.value.orders, 4);
    assert_eq!(view.value.inter_purchase_days, vec![17, 196, 132]);

    // CLV and RFM come from the population snapshot (the newest event) and
    // equal what `journey clv score` computes from the same log.
    let population = view.population.expect("as_of is at the snapshot");
    let scores = population.scores.expect("00004 has orders");
    let clv_rules = &rules.clv;
    let transactions = load_transactions(env.store.clone(), clv_rules.currency)
        .await
        .unwrap();
    let snapshot = DateTime::parse_from_rfc3339(&population.as_of)
        .unwrap()
        .with_timezone(&Utc);
    let months = f64::from(clv_rules.clv.horizon_months);
    let unit = clv_rules.model.time_unit;
    let horizon = months * TimeUnit::Month.days() / unit.days();
    let cli = clv_score(
        &transactions,
        "00004",
        snapshot,
        unit,
        clv_rules.model.purchase_model,
        horizon,
        clv_rules,
    )
    .unwrap();
    assert_eq!(scores.figures.frequency, i64::from(cli.frequency));
    assert!((scores.figures.p_alive.unwrap() - cli.p_alive).abs() < 1e-9);
    assert_eq!(
        scores.figures.clv_minor,
        Some((cli.clv * 100.0).round() as i64)
    );
    assert!(scores.figures.rfm_segment.is_some());
    env.finish().await;
}

/// Three complaints within 30 days raise one alert naming all three; the
/// loyalty conflict of an over-redemption is stored with its event.
async fn alerts_and_conflicts_are_stored_with_their_events(env: Env) {
    let rules = RuleSet::shipped_defaults();
    append(&env.store, "c", day(0), registered()).await;
    append(&env.store, "c", day(1), order(1, 5_000)).await;
    for n in 0..3 {
        append(
            &env.store,
            "c",
            day(10 + 10 * n),
            DomainEvent::ComplaintFiled(ComplaintFiled {
                complaint_id: format!("k{n}"),
                category: "delivery".into(),
                description: None,
            }),
        )
        .await;
    }
    append(
        &env.store,
        "c",
        day(40),
        DomainEvent::PointsRedeemed(PointsRedeemed {
            redemption_id: "r".into(),
            points: 80,
            reward: None,
        }),
    )
    .await;
    let report = runner::rebuild(
        env.store.clone(),
        &env.db,
        &rules,
        &options(3),
        day(0),
        |_| {},
    )
    .await
    .unwrap();
    let stream = env
        .store
        .read_stream(
            &CustomerId::parse("c").unwrap().stream_id(),
            store::ReadStream::all_forwards(),
        )
        .await
        .unwrap();
    let complaints: Vec<String> = stream[2..5]
        .iter()
        .map(|e| e.event_id.simple().to_string())
        .collect();
    let table = |name: &str| {
        *all_tables(&folds_for(&rules))
            .iter()
            .find(|t| t.name == name)
            .unwrap()
    };
    let alerts = env
        .db
        .dump(&table("churn_alerts"), report.model_version, Some("c"))
        .await
        .unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0][2].as_deref(), Some("complaints"));
    assert_eq!(alerts[0][3], Some(day(30).timestamp_micros().to_string()));
    // The ids are stored as their 16 bytes each, one after the other; the
    // dump shows bytes as hex (PostgreSQL's bytea text form starts `\x`).
    let ids_hex = alerts[0][4].as_deref().unwrap().trim_start_matches("\\x");
    assert_eq!(ids_hex, complaints.concat());
    let conflicts = env
        .db
        .dump(&table("loyalty_conflicts"), report.model_version, Some("c"))
        .await
        .unwrap();
    // 50 points earned, 80 asked for.
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0][2], Some(stream[5].event_id.to_string()));
    assert_eq!(conflicts[0][4].as_deref(), Some("redemption"));
    assert_eq!(conflicts[0][5].as_deref(), Some("80"));
    assert_eq!(conflicts[0][6].as_deref(), Some("50"));
    let account = env
        .db
        .dump(&table("loyalty_accounts"), report.model_version, Some("c"))
        .await
        .unwrap();
    assert_eq!(
        account[0][2].as_deref(),
        Some("0"),
        "balance floors at zero"
    );
    env.finish().await;
}

/// Population queries (stage distribution as of any instant, monthly stage
/// table, cohorts) agree with per-customer answers and with a direct fold of
/// the events.
async fn population_queries_agree_with_per_customer_answers(env: Env) {
    let rules = RuleSet::shipped_defaults();
    seed(&env.store, 40).await;
    runner::rebuild(
        env.store.clone(),
        &env.db,
        &rules,
        &options(50),
        day(0),
        |_| {},
    )
    .await
    .unwrap();
    let snapshot = analytics::snapshot_instant(&env.db).await.unwrap().unwrap();
    let ids: Vec<CustomerId> = (0..40)
        .map(|c| CustomerId::parse(&format!("c{c}")).unwrap())
        .collect();
    for at in [day(30), day(200), snapshot, snapshot + Duration::days(400)] {
        let mut expected: std::collections::BTreeMap<String, i64> = Default::default();
        for id in &ids {
            if let Some(view) = customer_as_of(env.store.clone(), &env.db, id, at)
                .await
                .unwrap()
            {
                *expected.entry(view.stage.unwrap()).or_default() += 1;
            }
        }
        let got: std::collections::BTreeMap<String, i64> =
            analytics::stage_distribution(env.store.clone(), &env.db, at)
                .await
                .unwrap()
                .into_iter()
                .map(|c| (c.stage, c.customers))
                .collect();
        assert_eq!(got, expected, "stage distribution as of {at}");
        if at == snapshot {
            let table = analytics::stage_table(&env.db).await.unwrap();
            let last = table.months.last().unwrap();
            assert_eq!(last.month, YearMonth::of(snapshot));
            let monthly: std::collections::BTreeMap<String, i64> = last
                .distribution
                .iter()
                .map(|c| (c.stage.clone(), c.customers))
                .collect();
            assert_eq!(monthly, expected, "stage table at the snapshot month");
        }
    }
    // Cohorts from the tables equal cohorts folded straight from the events.
    let mut direct = CohortAccumulator::new(rules.lifecycle.currency);
    // Through the later of the snapshot (the clock) and the newest event.
    let mut through = YearMonth::of(snapshot);
    for id in &ids {
        let mut facts = CustomerFacts::default();
        let stream = env
            .store
            .read_stream(&id.stream_id(), store::ReadStream::all_forwards())
            .await
            .unwrap();
        for recorded in &stream {
            let (_, event) = runner::fold_event(recorded).unwrap().unwrap();
            facts.apply(rules.lifecycle.currency, &event.view());
            if matches!(
                event.event,
                DomainEvent::OrderPlaced(_) | DomainEvent::OrderRefunded(_)
            ) {
                through = through.max(YearMonth::of(event.occurred_at));
            }
        }
        direct.add(&facts);
    }
    let table = analytics::cohort_table(&env.db, None, None).await.unwrap();
    assert_eq!(table, direct.table(through));
    assert!(!table.cohorts.is_empty());
    env.finish().await;
}

/// Rebuilds keep the active version and the previous one: older versions
/// go with every row and state, the previous one keeps its read models but
/// not its fold states, and the space they held is given back (a new
/// SQLite file is in incremental auto-vacuum mode) or reused.
async fn rebuilds_keep_two_versions_and_drop_the_rest(env: Env) {
    let rules = RuleSet::shipped_defaults();
    let folds = folds_for(&rules);
    seed(&env.store, 60).await;
    let keep_two = RebuildOptions {
        keep_versions: Some(2),
        ..options(40)
    };
    let mut built = Vec::new();
    let mut pages = Vec::new();
    for _ in 0..4 {
        let report = runner::rebuild(
            env.store.clone(),
            &env.db,
            &rules,
            &keep_two,
            day(0),
            |_| {},
        )
        .await
        .unwrap();
        built.push(report.model_version);
        if let ReadModelDb::Sqlite(pool) = &env.db {
            let pragma = |name: &str| {
                let sql = format!("PRAGMA {name}");
                async move {
                    sqlx::query_scalar::<_, i64>(&sql)
                        .fetch_one(pool)
                        .await
                        .unwrap()
                }
            };
            assert_eq!(pragma("auto_vacuum").await, 2, "incremental");
            assert_eq!(pragma("freelist_count").await, 0, "freed pages given back");
            pages.push(pragma("page_count").await);
        }
    }
    let versions = env.db.versions().await.unwrap();
    let numbers: Vec<i64> = versions.iter().map(|v| v.model_version).collect();
    assert_eq!(numbers, [built[3], built[2]]);
    assert_eq!(versions[0].status, "active");
    assert_eq!(versions[1].status, "retired");
    // Nothing of the dropped versions is left in any table.
    for table in all_tables(&folds) {
        for dropped in &built[..2] {
            assert!(
                env.db
                    .dump(&table, *dropped, None)
                    .await
                    .unwrap()
                    .is_empty(),
                "{} keeps rows of version {dropped}",
                table.name
            );
        }
        // Same rules, same log: the retired version's read models equal
        // the active one's.
        assert_eq!(
            env.db.dump(&table, built[2], None).await.unwrap(),
            env.db.dump(&table, built[3], None).await.unwrap(),
            "{}",
            table.name
        );
    }
    // The retired version's states are gone, the active one's are there.
    assert_eq!(env.db.average_state_bytes(built[2]).await.unwrap(), 0.0);
    assert!(env.db.average_state_bytes(built[3]).await.unwrap() > 0.0);
    let listed = env.db.version_sizes(&folds).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].rows, listed[1].rows + 60, "60 states: {listed:?}");
    assert!(
        listed[0].customers == 60 && listed[1].customers == 60 && listed[0].rows > 60 * 5,
        "{listed:?}"
    );
    assert!(listed[1].bytes < listed[0].bytes, "{listed:?}");
    // From the second rebuild on, the file keeps its size.
    if let [_, second, .., fourth] = pages[..] {
        assert!(
            fourth <= second + second / 10,
            "pages {second} then {fourth}"
        );
    }
    env.finish().await;
}

macro_rules! on_both {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Env::sqlite().await).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Env::postgres().await).await;
                }
            )+
        }
    };
}

on_both!(
    rebuild_twice_is_identical_and_switches_atomically,
    crash_mid_rebuild_resumes_to_identical_results,
    incremental_equals_rebuild_with_late_events,
    as_of_equals_rebuilding_with_only_earlier_events,
    cdnow_sample_gives_a_consistent_stage_history,
    alerts_and_conflicts_are_stored_with_their_events,
    population_queries_agree_with_per_customer_answers,
    rebuilds_keep_two_versions_and_drop_the_rest,
);

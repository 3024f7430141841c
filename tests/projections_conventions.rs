//! The conventions the rules files and the README state, each checked at
//! its boundary: an independent re-implementation of the documented rules
//! must be able to read them one way only.

use chrono::{DateTime, Duration, TimeZone, Utc};
use journey_ledger::clv::rules::ClvRules;
use journey_ledger::clv::TimeUnit;
use journey_ledger::domain::events::{DomainEvent, OrderPlaced};
use journey_ledger::domain::{Currency, CustomerId, Money};
use journey_ledger::projections::alerts::{self, AlertRule, AlertState};
use journey_ledger::projections::clv_scores::{ClvHistory, ModelOrder};
use journey_ledger::projections::lifecycle::{fold_as_of, value_tiers, Stage, ValueTier};
use journey_ledger::projections::loyalty::{self, LoyaltyState};
use journey_ledger::projections::rules::RuleSet;
use journey_ledger::projections::view::EventView;
use journey_ledger::projections::FoldEvent;
use uuid::Uuid;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 1, 12, 0, 0).unwrap()
}

fn order(n: u64, minor: i64) -> DomainEvent {
    DomainEvent::OrderPlaced(OrderPlaced {
        order_id: format!("o{n}"),
        amount: Money::new(minor, Currency::USD),
        item_count: 1,
    })
}

fn fold_event(version: u64, at: DateTime<Utc>, event: DomainEvent) -> FoldEvent {
    FoldEvent {
        event_id: Uuid::new_v4(),
        position: version,
        version,
        occurred_at: at,
        event,
    }
}

/// Loyalty: an order earns at the tier held immediately before it, and
/// "before" includes earlier orders of the same day, even of the same
/// instant (stream order breaks the tie).
#[test]
fn an_order_earns_at_the_tier_its_earlier_same_day_orders_reached() {
    let rules = RuleSet::shipped_defaults().loyalty;
    let mut state = LoyaltyState::default();
    // 500.00 reaches silver (silver_min_spend_minor = 50000) ...
    let first = order(1, 50_000);
    let second = order(2, 10_000);
    for event in [&first, &second] {
        let view = EventView {
            event_id: Uuid::new_v4(),
            occurred_at: t0(),
            event,
        };
        loyalty::apply(&mut state, &rules, &view);
    }
    let snapshot = loyalty::as_of(&state, &rules, t0());
    // ... so the second order at the same instant earns 1.25 points per
    // dollar: 500 + 125.
    assert_eq!(snapshot.totals.earned, 500 + 125);
}

/// Alerts: the recent window is [T − N days, T] and the previous one
/// [T − 2N days, T − N days − 1 µs], both ends included.
#[test]
fn frequency_drop_windows_include_both_ends() {
    let rules = RuleSet::shipped_defaults().alerts;
    let window = Duration::days(i64::from(rules.frequency_drop.window_days));
    let micro = Duration::microseconds(1);
    // Two orders exactly at the start of the previous window and one
    // exactly at its end: three previous orders.
    let evaluate = |orders: &[DateTime<Utc>], at: DateTime<Utc>| {
        let mut state = AlertState::default();
        for (n, when) in orders.iter().enumerate() {
            let event = order(n as u64, 1_000);
            let view = EventView {
                event_id: Uuid::new_v4(),
                occurred_at: *when,
                event: &event,
            };
            alerts::apply(&mut state, &rules, &view);
        }
        alerts::as_of(&state, &rules, at)
            .alerts
            .into_iter()
            .filter(|a| a.rule == AlertRule::FrequencyDrop)
            .map(|a| a.at)
            .collect::<Vec<_>>()
    };
    let a = t0();
    // Checks run when an order's window closes: at order + N + 1 µs.
    // Orders at A and A + N − 1 µs: the check at T = A + 2N sees both in
    // its previous window, exactly at its start and exactly at its end,
    // and none in the recent one: a drop at T.
    let fired = evaluate(&[a, a + window - micro], a + window * 2);
    assert_eq!(fired, [a + window * 2]);
    // Add orders exactly at T − N and a day later: at T the recent window
    // holds two (T − N included), the previous two: no drop at T (the next
    // check, a microsecond later, sees one against two and fires).
    let orders = [
        a,
        a + window - micro,
        a + window,
        a + window + Duration::days(1),
    ];
    assert_eq!(
        evaluate(&orders, a + window * 2),
        Vec::<DateTime<Utc>>::new()
    );
    assert_eq!(
        evaluate(&orders, a + window * 2 + micro),
        [a + window * 2 + micro]
    );
}

/// Lifecycle: "orders" in stage rules count order events (two orders of one
/// day are two), while the CLV models merge a day's purchases into one
/// transaction.
#[test]
fn stage_rules_count_order_events_clv_counts_purchase_days() {
    let rules = RuleSet::shipped_defaults();
    let mature = &rules.lifecycle.stages.mature;
    assert_eq!(mature.min_orders, 4);
    let start = t0();
    let mut events = vec![fold_event(
        1,
        start,
        DomainEvent::CustomerRegistered(journey_ledger::domain::events::CustomerRegistered {
            channel: "web".into(),
            acquisition_cost: None,
            profile: Default::default(),
        }),
    )];
    // Four orders, two on each of two days, in the last year of a tenure
    // of more than a year (the first more than 90 days ago: no longer new).
    let day_a = start + Duration::days(275);
    let day_b = start + Duration::days(355);
    for (n, at) in [(2, day_a), (3, day_a), (4, day_b), (5, day_b)] {
        events.push(fold_event(n, at, order(n, 1_000)));
    }
    let as_of = start + Duration::days(366);
    let (state, _) = fold_as_of(&rules.lifecycle, &events, as_of);
    assert_eq!(state.orders, 4);
    assert_eq!(
        state.stage,
        Some(Stage::Mature),
        "4 order events in the window"
    );
    let history = ClvHistory {
        orders: events[1..]
            .iter()
            .map(|e| ModelOrder {
                order_id: e.version.to_string(),
                at: e.occurred_at,
                net_minor: 1_000,
            })
            .collect(),
    };
    let mut clv_rules: ClvRules = rules.clv.clone();
    clv_rules.model.time_unit = TimeUnit::Day;
    let facts = history.facts(as_of, &clv_rules).unwrap();
    assert_eq!(facts.purchase_days, 2);
    assert_eq!(facts.frequency, 1, "one repeat purchase day");
}

/// Value tiers: customers ranked by revenue (ties by id); a customer is
/// in the higher tier while the revenue ranked above them is below that
/// tier's share, so the one who crosses a boundary gets the higher tier.
#[test]
fn the_customer_crossing_a_share_boundary_gets_the_higher_tier() {
    let rules = RuleSet::shipped_defaults().lifecycle;
    assert_eq!(rules.value_tiers.high_revenue_share_percent, 60);
    assert_eq!(rules.value_tiers.mid_revenue_share_percent, 30);
    let ids: Vec<CustomerId> = ["a", "b", "c", "d"]
        .iter()
        .map(|c| CustomerId::parse(c).unwrap())
        .collect();
    // 50 + 30 + 15 + 5: b crosses 60 % (50 → 80) and is high; c crosses
    // 90 % (80 → 95) and is mid; d is low.
    let revenues = [50, 30, 15, 5];
    let tiers = value_tiers(&rules, ids.iter().zip(revenues));
    assert_eq!(tiers[&ids[0]], ValueTier::High);
    assert_eq!(tiers[&ids[1]], ValueTier::High);
    assert_eq!(tiers[&ids[2]], ValueTier::Mid);
    assert_eq!(tiers[&ids[3]], ValueTier::Low);
    // Exactly at a boundary: 60 above means the next one is no longer high.
    let tiers = value_tiers(&rules, ids.iter().zip([60, 30, 5, 5]));
    assert_eq!(tiers[&ids[1]], ValueTier::Mid);
    assert_eq!(tiers[&ids[2]], ValueTier::Low);
}

/// Lifecycle and loyalty thresholds are durations: exactly at the
/// threshold is past it (at_risk at exactly 90 days; a lot is gone at
/// exactly 12 months). Alert windows are closed intervals [T − N, T].
#[test]
fn exactly_at_a_threshold_is_past_it() {
    let rules = RuleSet::shipped_defaults();
    let start = t0();
    let events = vec![fold_event(1, start, order(1, 10_000))];
    let at_risk = start + Duration::days(i64::from(rules.lifecycle.stages.at_risk.after_days));
    let micro = Duration::microseconds(1);
    let (before, _) = fold_as_of(&rules.lifecycle, &events, at_risk - micro);
    let (at, _) = fold_as_of(&rules.lifecycle, &events, at_risk);
    assert_ne!(before.stage, Some(Stage::AtRisk));
    assert_eq!(at.stage, Some(Stage::AtRisk));

    let mut loyalty_state = LoyaltyState::default();
    let event = order(1, 10_000);
    loyalty::apply(
        &mut loyalty_state,
        &rules.loyalty,
        &EventView {
            event_id: Uuid::new_v4(),
            occurred_at: start,
            event: &event,
        },
    );
    let expiry = start.checked_add_months(chrono::Months::new(12)).unwrap();
    assert_eq!(
        loyalty::as_of(&loyalty_state, &rules.loyalty, expiry - micro).balance,
        100
    );
    assert_eq!(
        loyalty::as_of(&loyalty_state, &rules.loyalty, expiry).balance,
        0
    );
}

/// The lifecycle-management practice preset: new for 6 months, dormant
/// after 12 months without an order, churned after 24; the other rules as
/// shipped.
#[test]
fn the_practice_preset_loads_with_its_time_standard() {
    let preset = RuleSet::load(std::path::Path::new("projections/presets/practice")).unwrap();
    let stages = &preset.lifecycle.stages;
    assert_eq!(preset.lifecycle.rules_id, "lifecycle-practice");
    assert_eq!(
        (
            stages.new.within_days,
            stages.at_risk.after_days,
            stages.dormant.after_days,
            stages.churned.after_days
        ),
        (180, 270, 365, 730)
    );
    let shipped = RuleSet::shipped_defaults();
    assert_eq!(preset.loyalty, shipped.loyalty);
    assert_eq!(preset.alerts, shipped.alerts);
    assert_ne!(preset.hash, shipped.hash);
}

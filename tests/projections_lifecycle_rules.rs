//! Every default lifecycle rule, with its boundary instants: exactly at a
//! threshold the customer has crossed it, one microsecond before not yet.

use chrono::{DateTime, Duration, TimeZone, Utc};
use journey_ledger::domain::events::{
    CustomerRegistered, DomainEvent, OrderPlaced, OrderRefunded, Profile, RefundKind,
    SubscriptionCancelled,
};
use journey_ledger::domain::{Currency, CustomerId, Money};
use journey_ledger::projections::lifecycle::{fold_as_of, value_tiers, Stage, ValueTier};
use journey_ledger::projections::rules::{LifecycleRules, RuleSet};
use journey_ledger::projections::FoldEvent;
use uuid::Uuid;

fn rules() -> LifecycleRules {
    RuleSet::shipped_defaults().lifecycle
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap()
}

fn day(n: i64) -> DateTime<Utc> {
    t0() + Duration::days(n)
}

const US: Duration = Duration::microseconds(1);

struct History {
    events: Vec<FoldEvent>,
}

impl History {
    fn new() -> Self {
        Self { events: vec![] }
    }
    fn push(&mut self, at: DateTime<Utc>, event: DomainEvent) -> Uuid {
        let id = Uuid::new_v4();
        self.events.push(FoldEvent {
            event_id: id,
            position: self.events.len() as u64 + 1,
            version: self.events.len() as u64 + 1,
            occurred_at: at,
            event,
        });
        id
    }
    fn register(&mut self, at: DateTime<Utc>) -> Uuid {
        self.push(
            at,
            DomainEvent::CustomerRegistered(CustomerRegistered {
                channel: "web".into(),
                acquisition_cost: None,
                profile: Profile::default(),
            }),
        )
    }
    fn order(&mut self, at: DateTime<Utc>, cents: i64) -> Uuid {
        let n = self.events.len();
        self.push(
            at,
            DomainEvent::OrderPlaced(OrderPlaced {
                order_id: format!("o{n}"),
                amount: Money::new(cents, Currency::USD),
                item_count: 1,
            }),
        )
    }
    fn stage(&self, rules: &LifecycleRules, at: DateTime<Utc>) -> Option<Stage> {
        fold_as_of(rules, &self.events, at).0.stage
    }
    fn transitions(
        &self,
        rules: &LifecycleRules,
        at: DateTime<Utc>,
    ) -> Vec<(Option<Stage>, Stage, DateTime<Utc>, String)> {
        fold_as_of(rules, &self.events, at)
            .1
            .into_iter()
            .map(|t| (t.from, t.to, t.at, t.cause.to_string()))
            .collect()
    }
}

#[test]
fn registered_without_orders_is_a_prospect() {
    let r = rules();
    let mut h = History::new();
    let reg = h.register(day(0));
    assert_eq!(h.stage(&r, day(0) - US), None);
    assert_eq!(h.stage(&r, day(0)), Some(Stage::Prospect));
    // Time alone never moves a prospect.
    assert_eq!(h.stage(&r, day(5000)), Some(Stage::Prospect));
    assert_eq!(
        h.transitions(&r, day(5000)),
        vec![(None, Stage::Prospect, day(0), reg.to_string())]
    );
}

#[test]
fn first_order_makes_new_for_exactly_90_days() {
    let r = rules();
    let mut h = History::new();
    h.register(day(0));
    let first = h.order(day(10), 1000);
    h.order(day(50), 1000);
    assert_eq!(h.stage(&r, day(10) - US), Some(Stage::Prospect));
    assert_eq!(h.stage(&r, day(10)), Some(Stage::New));
    assert_eq!(h.stage(&r, day(100) - US), Some(Stage::New));
    assert_eq!(h.stage(&r, day(100)), Some(Stage::Active));
    let tr = h.transitions(&r, day(100));
    assert_eq!(
        tr[1],
        (
            Some(Stage::Prospect),
            Stage::New,
            day(10),
            first.to_string()
        )
    );
    assert_eq!(
        tr[2],
        (
            Some(Stage::New),
            Stage::Active,
            day(100),
            "rule:new_ends_after_90_days".into()
        )
    );
}

#[test]
fn no_order_for_90_180_365_days_is_at_risk_dormant_churned() {
    let r = rules();
    let mut h = History::new();
    h.register(day(0));
    h.order(day(0), 1000);
    h.order(day(60), 1000); // last order: day 60
    assert_eq!(h.stage(&r, day(150) - US), Some(Stage::Active));
    assert_eq!(h.stage(&r, day(150)), Some(Stage::AtRisk));
    assert_eq!(h.stage(&r, day(239)), Some(Stage::AtRisk)); // 179 days
    assert_eq!(h.stage(&r, day(240) - US), Some(Stage::AtRisk));
    assert_eq!(h.stage(&r, day(240)), Some(Stage::Dormant)); // 180 days
    assert_eq!(h.stage(&r, day(425) - US), Some(Stage::Dormant));
    assert_eq!(h.stage(&r, day(425)), Some(Stage::Churned)); // 365 days
    let causes: Vec<(Stage, DateTime<Utc>, String)> = h
        .transitions(&r, day(1000))
        .into_iter()
        .skip(3)
        .map(|(_, to, at, cause)| (to, at, cause))
        .collect();
    assert_eq!(
        causes,
        vec![
            (Stage::AtRisk, day(150), "rule:at_risk_after_90_days".into()),
            (
                Stage::Dormant,
                day(240),
                "rule:dormant_after_180_days".into()
            ),
            (
                Stage::Churned,
                day(425),
                "rule:churned_after_365_days".into()
            ),
        ]
    );
}

#[test]
fn a_cancelled_subscription_churns_at_once() {
    let r = rules();
    let mut h = History::new();
    h.register(day(0));
    h.order(day(1), 1000);
    let cancel = h.push(
        day(20),
        DomainEvent::SubscriptionCancelled(SubscriptionCancelled {
            subscription_id: "s".into(),
            reason: None,
        }),
    );
    assert_eq!(h.stage(&r, day(20) - US), Some(Stage::New));
    assert_eq!(h.stage(&r, day(20)), Some(Stage::Churned));
    assert_eq!(
        h.transitions(&r, day(20)).last().unwrap().3,
        cancel.to_string()
    );
    let mut off = r.clone();
    off.stages.churned.on_subscription_cancelled = false;
    assert_eq!(h.stage(&off, day(20)), Some(Stage::New));
}

#[test]
fn an_order_after_dormant_or_churned_reactivates_for_90_days() {
    let r = rules();
    for (gap, from) in [(200, Stage::Dormant), (400, Stage::Churned)] {
        let mut h = History::new();
        h.register(day(0));
        h.order(day(0), 1000);
        let back = h.order(day(gap), 1000);
        h.order(day(gap + 30), 1000);
        assert_eq!(h.stage(&r, day(gap) - US), Some(from));
        assert_eq!(h.stage(&r, day(gap)), Some(Stage::Reactivated));
        assert_eq!(h.stage(&r, day(gap + 90) - US), Some(Stage::Reactivated));
        assert_eq!(h.stage(&r, day(gap + 90)), Some(Stage::Active));
        let tr = h.transitions(&r, day(gap + 90));
        assert!(tr.contains(&(Some(from), Stage::Reactivated, day(gap), back.to_string())));
        assert_eq!(tr.last().unwrap().3, "rule:reactivated_ends_after_90_days");
    }
    // An order while merely at_risk is not a reactivation.
    let mut h = History::new();
    h.register(day(0));
    h.order(day(0), 1000);
    h.order(day(100), 1000);
    assert_eq!(h.stage(&r, day(100)), Some(Stage::Active));
}

#[test]
fn mature_needs_a_year_of_tenure_and_4_orders_in_the_last_year() {
    let r = rules();
    let mut h = History::new();
    h.register(day(0));
    for d in [1, 61, 121, 181, 241, 301, 361] {
        h.order(day(d), 1000);
    }
    assert_eq!(h.stage(&r, day(365) - US), Some(Stage::Active));
    assert_eq!(h.stage(&r, day(365)), Some(Stage::Mature));
    assert_eq!(
        h.transitions(&r, day(365)).last().unwrap().3,
        "rule:mature_after_365_days_with_4_orders_in_365_days"
    );
    // With 7 orders required, the order of day 1 leaving the window (at
    // day 366) ends maturity at that instant.
    let mut strict = r.clone();
    strict.stages.mature.min_orders = 7;
    assert_eq!(h.stage(&strict, day(365)), Some(Stage::Mature));
    assert_eq!(h.stage(&strict, day(366) - US), Some(Stage::Mature));
    assert_eq!(h.stage(&strict, day(366)), Some(Stage::Active));
    assert_eq!(
        h.transitions(&strict, day(366)).last().unwrap().3,
        "rule:mature_needs_7_orders_in_365_days"
    );
    // Three orders in the year are not enough.
    let mut few = History::new();
    few.register(day(0));
    for d in [300, 330, 360] {
        few.order(day(d), 1000);
    }
    assert_eq!(few.stage(&r, day(400)), Some(Stage::Active));
}

#[test]
fn late_events_fold_in_business_time_order() {
    let r = rules();
    let mut in_order = History::new();
    in_order.register(day(0));
    in_order.order(day(10), 1000);
    in_order.order(day(200), 1000);
    let mut late = History::new();
    late.register(day(0));
    late.order(day(200), 1000);
    late.order(day(10), 1000); // stored later, happened earlier
    let a = fold_as_of(&r, &in_order.events, day(300));
    let b = fold_as_of(&r, &late.events, day(300));
    assert_eq!(a.0.stage, b.0.stage);
    assert_eq!(
        a.1.iter().map(|t| (t.from, t.to, t.at)).collect::<Vec<_>>(),
        b.1.iter().map(|t| (t.from, t.to, t.at)).collect::<Vec<_>>()
    );
    assert_eq!(b.0.stage, Some(Stage::AtRisk));
}

#[test]
fn refunds_reduce_revenue_and_tiers_split_by_revenue_share() {
    let r = rules();
    let mut h = History::new();
    h.register(day(0));
    h.order(day(1), 5000);
    h.push(
        day(2),
        DomainEvent::OrderRefunded(OrderRefunded {
            order_id: "o1".into(),
            refund_id: "r".into(),
            amount: Money::new(1500, Currency::USD),
            kind: RefundKind::Partial,
            reason: None,
        }),
    );
    assert_eq!(fold_as_of(&r, &h.events, day(3)).0.revenue_minor, 3500);

    let ids: Vec<CustomerId> = (0..7)
        .map(|i| CustomerId::parse(&format!("c{i}")).unwrap())
        .collect();
    let revenue = [50, 10, 10, 10, 10, 10, 0];
    let tiers = value_tiers(&r, ids.iter().zip(revenue));
    let got: Vec<ValueTier> = ids.iter().map(|c| tiers[c]).collect();
    // Ranked: c0 (before 0%) high, c1 (before 50%) high, c2 (60%) mid,
    // c3 (70%) mid, c4 (80%) mid, c5 (90%) low, c6 no revenue low.
    use ValueTier::*;
    assert_eq!(got, vec![High, High, Mid, Mid, Mid, Low, Low]);
}

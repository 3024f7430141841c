//! Historical value of a customer: what they have actually been worth so far.
//!
//! Revenue is kept per currency in integer minor units, net of refunds;
//! order count, average order value, first and last order, tenure and the
//! gaps between purchase days. A pure per-customer fold like the others, so
//! its state as of any instant is the fold of the events up to it.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::view::EventView;
use crate::domain::events::DomainEvent;
use crate::domain::{Currency, CustomerId, Money};
use crate::projections::{CustomerFold, FoldEvent, Row, TableKind, TableSpec, Value};

/// Per-currency running totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrencyTotals {
    /// Sum of order amounts.
    pub gross_minor: i64,
    /// Sum of refunds.
    pub refunded_minor: i64,
    /// Orders in this currency.
    pub orders: u32,
}

/// Folded state of one customer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueState {
    /// Totals by currency code.
    pub by_currency: BTreeMap<Currency, CurrencyTotals>,
    /// First order instant.
    #[serde(with = "crate::projections::compact::instant_opt")]
    pub first_order_at: Option<DateTime<Utc>>,
    /// Last order instant.
    #[serde(with = "crate::projections::compact::instant_opt")]
    pub last_order_at: Option<DateTime<Utc>>,
    /// Registration instant (tenure starts here, else at the first order).
    #[serde(with = "crate::projections::compact::instant_opt")]
    pub registered_at: Option<DateTime<Utc>>,
    /// Distinct purchase days, in order (for inter-purchase times).
    #[serde(with = "crate::projections::compact::day_list")]
    pub purchase_days: Vec<NaiveDate>,
    /// Acquisition cost, when the registration carried one.
    pub acquisition_cost: Option<Money>,
    /// Acquisition channel.
    pub channel: Option<String>,
}

/// Applies one event.
pub fn apply(state: &mut ValueState, view: &EventView<'_>) {
    match view.event {
        DomainEvent::CustomerRegistered(r) => {
            state.registered_at.get_or_insert(view.occurred_at);
            state.acquisition_cost = r.acquisition_cost;
            state.channel = Some(r.channel.clone());
        }
        DomainEvent::OrderPlaced(o) => {
            let totals = state.by_currency.entry(o.amount.currency).or_default();
            totals.gross_minor = totals.gross_minor.saturating_add(o.amount.minor);
            totals.orders += 1;
            let at = view.occurred_at;
            if state.first_order_at.is_none_or(|f| at < f) {
                state.first_order_at = Some(at);
            }
            if state.last_order_at.is_none_or(|l| at > l) {
                state.last_order_at = Some(at);
            }
            let day = at.date_naive();
            if let Err(i) = state.purchase_days.binary_search(&day) {
                state.purchase_days.insert(i, day);
            }
        }
        DomainEvent::OrderRefunded(r) => {
            let totals = state.by_currency.entry(r.amount.currency).or_default();
            totals.refunded_minor = totals.refunded_minor.saturating_add(r.amount.minor);
        }
        _ => {}
    }
}

/// Historical value as of an instant, for output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValueSnapshot {
    /// Net revenue (gross − refunds) per currency, minor units.
    pub net_revenue_minor: BTreeMap<Currency, i64>,
    /// Orders placed (all currencies).
    pub orders: u32,
    /// Average order value per currency, minor units, rounded half away from zero.
    pub average_order_value_minor: BTreeMap<Currency, i64>,
    /// First order.
    #[serde(with = "crate::projections::compact::instant_opt")]
    pub first_order_at: Option<DateTime<Utc>>,
    /// Last order.
    #[serde(with = "crate::projections::compact::instant_opt")]
    pub last_order_at: Option<DateTime<Utc>>,
    /// Days from registration (or first order) to the as-of instant.
    pub tenure_days: Option<i64>,
    /// Days between consecutive purchase days.
    pub inter_purchase_days: Vec<i64>,
    /// Mean of `inter_purchase_days`.
    pub mean_inter_purchase_days: Option<f64>,
}

/// Renders the state as of `as_of` (the state must hold only earlier events).
pub fn snapshot(state: &ValueState, as_of: DateTime<Utc>) -> ValueSnapshot {
    let gaps: Vec<i64> = state
        .purchase_days
        .windows(2)
        .map(|w| (w[1] - w[0]).num_days())
        .collect();
    let start = state.registered_at.or(state.first_order_at);
    ValueSnapshot {
        net_revenue_minor: state
            .by_currency
            .iter()
            .map(|(c, t)| (*c, t.gross_minor - t.refunded_minor))
            .collect(),
        orders: state.by_currency.values().map(|t| t.orders).sum(),
        average_order_value_minor: state
            .by_currency
            .iter()
            .filter(|(_, t)| t.orders > 0)
            .map(|(c, t)| {
                let net = (t.gross_minor - t.refunded_minor) as i128;
                let n = i128::from(t.orders);
                let rounded = (2 * net + n * net.signum()) / (2 * n);
                (*c, rounded as i64)
            })
            .collect(),
        first_order_at: state.first_order_at,
        last_order_at: state.last_order_at,
        tenure_days: start.map(|s| (as_of - s).num_days().max(0)),
        mean_inter_purchase_days: (!gaps.is_empty())
            .then(|| gaps.iter().sum::<i64>() as f64 / gaps.len() as f64),
        inter_purchase_days: gaps,
    }
}

/// The historical-value read model: the runner's face of [`apply`].
#[derive(Debug, Clone, Copy, Default)]
pub struct HistoricalValue;

/// Tables of the value projection (migration 0011): one row per customer
/// and currency they ordered or were refunded in.
pub const TABLES: &[TableSpec] = &[TableSpec {
    name: "customer_value",
    columns: &[
        "currency",
        "gross_minor",
        "refunded_minor",
        "net_minor",
        "orders",
        "first_order_us",
        "last_order_us",
    ],
    kind: TableKind::Current,
}];

impl CustomerFold for HistoricalValue {
    type State = ValueState;

    fn name(&self) -> &'static str {
        "value"
    }

    fn tables(&self) -> &'static [TableSpec] {
        TABLES
    }

    fn apply(&self, _: &CustomerId, state: &mut ValueState, event: &FoldEvent, _: &mut Vec<Row>) {
        apply(state, &event.view());
    }

    fn advance_to(&self, _: &CustomerId, _: &mut ValueState, _: DateTime<Utc>, _: &mut Vec<Row>) {}

    fn current_rows(&self, customer: &CustomerId, state: &ValueState, out: &mut Vec<Row>) {
        let us = |at: Option<DateTime<Utc>>| Value::from(at.map(|t| t.timestamp_micros()));
        for (currency, totals) in &state.by_currency {
            out.push(Row {
                table: "customer_value",
                customer_id: customer.as_str().to_owned(),
                values: vec![
                    currency.code().into(),
                    Value::Int(totals.gross_minor),
                    Value::Int(totals.refunded_minor),
                    Value::Int(totals.gross_minor - totals.refunded_minor),
                    Value::Int(i64::from(totals.orders)),
                    us(state.first_order_at),
                    us(state.last_order_at),
                ],
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::events::{
        CustomerRegistered, OrderPlaced, OrderRefunded, Profile, RefundKind,
    };
    use chrono::TimeZone;
    use uuid::Uuid;

    fn at(m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, m, d, 12, 0, 0).unwrap()
    }

    fn fold(events: &[(DateTime<Utc>, DomainEvent)]) -> ValueState {
        let mut s = ValueState::default();
        for (t, e) in events {
            apply(
                &mut s,
                &EventView {
                    event_id: Uuid::nil(),
                    occurred_at: *t,
                    event: e,
                },
            );
        }
        s
    }

    fn order(id: &str, minor: i64) -> DomainEvent {
        DomainEvent::OrderPlaced(OrderPlaced {
            order_id: id.into(),
            amount: Money::new(minor, Currency::USD),
            item_count: 1,
        })
    }

    #[test]
    fn revenue_is_net_of_refunds_and_gaps_count_purchase_days() {
        let s = fold(&[
            (
                at(1, 1),
                DomainEvent::CustomerRegistered(CustomerRegistered {
                    channel: "web".into(),
                    acquisition_cost: Some(Money::new(500, Currency::USD)),
                    profile: Profile::default(),
                }),
            ),
            (at(1, 5), order("a", 1000)),
            (at(1, 5), order("b", 501)),
            (at(1, 15), order("c", 2000)),
            (
                at(1, 20),
                DomainEvent::OrderRefunded(OrderRefunded {
                    order_id: "c".into(),
                    refund_id: "r".into(),
                    amount: Money::new(500, Currency::USD),
                    kind: RefundKind::Partial,
                    reason: None,
                }),
            ),
        ]);
        let snap = snapshot(&s, at(2, 1));
        assert_eq!(snap.net_revenue_minor[&Currency::USD], 3001);
        assert_eq!(snap.orders, 3);
        assert_eq!(snap.average_order_value_minor[&Currency::USD], 1000); // 3001/3 = 1000.33
        assert_eq!(snap.inter_purchase_days, vec![10]);
        assert_eq!(snap.tenure_days, Some(31));
        assert_eq!(snap.first_order_at, Some(at(1, 5)));
        assert_eq!(snap.last_order_at, Some(at(1, 15)));
    }

    #[test]
    fn average_order_value_rounds_half_away_from_zero() {
        let s = fold(&[(at(1, 1), order("a", 1)), (at(1, 2), order("b", 2))]);
        assert_eq!(
            snapshot(&s, at(1, 3)).average_order_value_minor[&Currency::USD],
            2
        );
    }
}

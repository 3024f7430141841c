//! Cohort analytics: monthly acquisition cohorts with customer and revenue
//! retention, and lifecycle stage distribution and flows per month.
//!
//! These are population aggregates built from per-customer facts, so they
//! are additive: [`CohortAccumulator::add`] and [`StageFlowAccumulator::record`]
//! commute (the order customers or transitions arrive in does not matter),
//! and [`CohortAccumulator::remove`] undoes an `add` so the runner can
//! replace a customer's old facts with new ones incrementally.
//!
//! Definitions (all months are UTC calendar months):
//! - A customer's cohort is the month of `CustomerRegistered`; a customer
//!   without one falls back to the month of their first order.
//! - Month offset k of a cohort is the k-th calendar month after it (k = 0
//!   is the cohort month itself).
//! - Retention(k) = customers of the cohort with at least one order in month
//!   k / customers in the cohort.
//! - Revenue(k) = order amounts minus refunds (each in the month it
//!   happened) in the reporting currency; revenue retention(k) =
//!   revenue(k) / revenue(0), absent when revenue(0) is not positive.
//! - Stage distribution of month M = customers per stage after the last
//!   transition at or before the end of M; flows of M = transitions whose
//!   instant falls in M, counted per (from, to).

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::domain::events::DomainEvent;
use crate::domain::{Currency, CustomerId};
use crate::projections::storage::{both, ReadModelDb, StorageError};
use crate::projections::view::EventView;
use crate::projections::{CustomerFold, FoldEvent, Row, TableKind, TableSpec, Value};

/// A UTC calendar month, written `YYYY-MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct YearMonth {
    /// Calendar year.
    pub year: i32,
    /// Month, 1–12.
    pub month: u32,
}

impl YearMonth {
    /// The month an instant falls in (UTC).
    pub fn of(at: DateTime<Utc>) -> Self {
        Self {
            year: at.year(),
            month: at.month(),
        }
    }

    /// Months since year 0, so differences are month counts.
    fn index(self) -> i64 {
        self.year as i64 * 12 + (self.month as i64 - 1)
    }

    fn from_index(index: i64) -> Self {
        Self {
            year: index.div_euclid(12) as i32,
            month: index.rem_euclid(12) as u32 + 1,
        }
    }

    /// Whole months from `earlier` to `self` (negative if `self` is earlier).
    pub fn months_since(self, earlier: YearMonth) -> i64 {
        self.index() - earlier.index()
    }

    /// The month `n` months after this one.
    pub fn plus(self, n: i64) -> Self {
        Self::from_index(self.index() + n)
    }

    /// Parses `YYYY-MM`.
    pub fn parse(text: &str) -> Option<Self> {
        let (y, m) = text.split_once('-')?;
        let year: i32 = y.parse().ok()?;
        let month: u32 = m.parse().ok()?;
        (m.len() == 2 && (1..=12).contains(&month)).then_some(Self { year, month })
    }
}

impl fmt::Display for YearMonth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// `YYYY-MM` in human-readable formats; months since year 0 in binary
/// fold states (one varint instead of eight bytes of text).
impl Serialize for YearMonth {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_i64(self.index())
        }
    }
}

impl<'de> Deserialize<'de> for YearMonth {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if !d.is_human_readable() {
            let index = i64::deserialize(d)?;
            return (0..=i64::from(i32::MAX) * 12)
                .contains(&index)
                .then(|| Self::from_index(index))
                .ok_or_else(|| {
                    serde::de::Error::custom(format!("month index {index} out of range"))
                });
        }
        let text = String::deserialize(d)?;
        Self::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not a YYYY-MM month")))
    }
}

/// What one customer did in one month.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonthActivity {
    /// Orders placed (any currency).
    pub orders: u32,
    /// Order amounts minus refunds, reporting currency, minor units.
    pub revenue_minor: i64,
}

/// The per-customer facts cohorts need, folded from the customer's events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerFacts {
    /// Month of registration, if the customer registered.
    pub registered: Option<YearMonth>,
    /// Activity per month.
    pub months: BTreeMap<YearMonth, MonthActivity>,
}

impl CustomerFacts {
    /// Folds one event; only money in `reporting_currency` counts as revenue.
    pub fn apply(&mut self, reporting_currency: Currency, view: &EventView<'_>) {
        let month = YearMonth::of(view.occurred_at);
        match view.event {
            DomainEvent::CustomerRegistered(_) if self.registered.is_none() => {
                self.registered = Some(month);
            }
            DomainEvent::OrderPlaced(order) => {
                let entry = self.months.entry(month).or_default();
                entry.orders += 1;
                if order.amount.currency == reporting_currency {
                    entry.revenue_minor += order.amount.minor;
                }
            }
            DomainEvent::OrderRefunded(refund) if refund.amount.currency == reporting_currency => {
                self.months.entry(month).or_default().revenue_minor -= refund.amount.minor;
            }
            _ => {}
        }
    }

    /// The acquisition cohort: registration month, else first order month.
    pub fn cohort(&self) -> Option<YearMonth> {
        self.registered.or_else(|| {
            self.months
                .iter()
                .find(|(_, a)| a.orders > 0)
                .map(|(m, _)| *m)
        })
    }
}

/// Running counts of one cohort.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CohortCounts {
    /// Customers in the cohort.
    pub customers: u64,
    /// Of them, customers without a registration (cohort = first order).
    pub without_registration: u64,
    /// Per month offset: customers with at least one order.
    pub active: BTreeMap<u32, u64>,
    /// Per month offset: revenue in minor units.
    pub revenue_minor: BTreeMap<u32, i64>,
    /// Customer-months with activity before the cohort month (not counted).
    pub activity_before_cohort: u64,
}

/// Sums per-customer facts into cohort tables; additive and order independent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CohortAccumulator {
    /// The currency revenue is reported in.
    pub reporting_currency: Currency,
    /// Counts per cohort month.
    pub cohorts: BTreeMap<YearMonth, CohortCounts>,
}

/// One month offset of a cohort row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CohortMonth {
    /// Months after the cohort month (0 = the cohort month).
    pub offset: u32,
    /// The calendar month.
    pub month: YearMonth,
    /// Customers of the cohort who ordered that month.
    pub active_customers: u64,
    /// `active_customers / cohort customers`.
    pub retention: f64,
    /// Revenue that month, minor units.
    pub revenue_minor: i64,
    /// `revenue(k) / revenue(0)`; absent when revenue(0) is not positive.
    pub revenue_retention: Option<f64>,
}

/// One cohort's row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CohortRow {
    /// The acquisition month.
    pub cohort: YearMonth,
    /// Customers acquired that month.
    pub customers: u64,
    /// Of them, without a registration event.
    pub without_registration: u64,
    /// Offsets 0 up to the table's last month.
    pub months: Vec<CohortMonth>,
}

/// The cohort table through a month.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CohortTable {
    /// Last month shown.
    pub through: YearMonth,
    /// Currency of revenue figures.
    pub reporting_currency: Currency,
    /// One row per cohort up to `through`, oldest first.
    pub cohorts: Vec<CohortRow>,
}

impl CohortAccumulator {
    /// An empty accumulator reporting revenue in `reporting_currency`.
    pub fn new(reporting_currency: Currency) -> Self {
        Self {
            reporting_currency,
            cohorts: BTreeMap::new(),
        }
    }

    /// Adds one customer's facts.
    pub fn add(&mut self, facts: &CustomerFacts) {
        self.change(facts, 1);
    }

    /// Removes facts previously added (to replace them with newer ones).
    pub fn remove(&mut self, facts: &CustomerFacts) {
        self.change(facts, -1);
    }

    fn change(&mut self, facts: &CustomerFacts, sign: i64) {
        let Some(cohort) = facts.cohort() else {
            return;
        };
        let counts = self.cohorts.entry(cohort).or_default();
        let bump = |v: &mut u64| *v = v.checked_add_signed(sign).expect("remove after add");
        bump(&mut counts.customers);
        if facts.registered.is_none() {
            bump(&mut counts.without_registration);
        }
        for (month, activity) in &facts.months {
            let offset = month.months_since(cohort);
            if offset < 0 {
                bump(&mut counts.activity_before_cohort);
                continue;
            }
            let offset = offset as u32;
            if activity.orders > 0 {
                bump(counts.active.entry(offset).or_default());
            }
            *counts.revenue_minor.entry(offset).or_default() += sign * activity.revenue_minor;
        }
        counts.active.retain(|_, v| *v != 0);
        counts.revenue_minor.retain(|_, v| *v != 0);
        if counts.customers == 0 && counts.activity_before_cohort == 0 {
            self.cohorts.remove(&cohort);
        }
    }

    /// The table of every cohort up to and including `through`.
    pub fn table(&self, through: YearMonth) -> CohortTable {
        let cohorts = self
            .cohorts
            .range(..=through)
            .filter(|(_, c)| c.customers > 0)
            .map(|(cohort, counts)| {
                let base_revenue = counts.revenue_minor.get(&0).copied().unwrap_or(0);
                let months = (0..=through.months_since(*cohort))
                    .map(|k| {
                        let offset = k as u32;
                        let active = counts.active.get(&offset).copied().unwrap_or(0);
                        let revenue = counts.revenue_minor.get(&offset).copied().unwrap_or(0);
                        CohortMonth {
                            offset,
                            month: cohort.plus(k),
                            active_customers: active,
                            retention: active as f64 / counts.customers as f64,
                            revenue_minor: revenue,
                            revenue_retention: (base_revenue > 0)
                                .then(|| revenue as f64 / base_revenue as f64),
                        }
                    })
                    .collect();
                CohortRow {
                    cohort: *cohort,
                    customers: counts.customers,
                    without_registration: counts.without_registration,
                    months,
                }
            })
            .collect();
        CohortTable {
            through,
            reporting_currency: self.reporting_currency,
            cohorts,
        }
    }
}

/// One lifecycle stage transition, as the lifecycle projection records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageTransitionFact {
    /// The customer (not needed for the counts; kept for traceability).
    pub customer: String,
    /// Stage before; `None` for the customer's first stage.
    pub from: Option<String>,
    /// Stage after.
    pub to: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// Stage distribution and flow counts per month; additive and order
/// independent, provided each customer's transitions form a chain (every
/// `from` is the previous `to`, the first has `from: None`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageFlowAccumulator {
    /// Per month, net change of customers per stage.
    pub net_change: BTreeMap<YearMonth, BTreeMap<String, i64>>,
    /// Per month, transitions counted by from-stage ("" for none) then to-stage.
    pub flows: BTreeMap<YearMonth, BTreeMap<String, BTreeMap<String, u64>>>,
}

/// Customers in one stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageCount {
    /// Stage name.
    pub stage: String,
    /// Customers in it.
    pub customers: i64,
}

/// Transitions between two stages in a month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowCount {
    /// Stage before (`None`: the customer's first stage).
    pub from: Option<String>,
    /// Stage after.
    pub to: String,
    /// Number of transitions.
    pub count: u64,
}

/// One month of the stage table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageMonth {
    /// The month.
    pub month: YearMonth,
    /// Customers per stage at the end of the month (non-zero stages only).
    pub distribution: Vec<StageCount>,
    /// Transitions during the month.
    pub flows: Vec<FlowCount>,
}

/// Stage distribution and flows for every month from the first transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageTable {
    /// One entry per month, oldest first.
    pub months: Vec<StageMonth>,
}

impl StageFlowAccumulator {
    /// Counts one transition.
    pub fn record(&mut self, transition: &StageTransitionFact) {
        let month = YearMonth::of(transition.at);
        let net = self.net_change.entry(month).or_default();
        *net.entry(transition.to.clone()).or_default() += 1;
        if let Some(from) = &transition.from {
            *net.entry(from.clone()).or_default() -= 1;
        }
        *self
            .flows
            .entry(month)
            .or_default()
            .entry(transition.from.clone().unwrap_or_default())
            .or_default()
            .entry(transition.to.clone())
            .or_default() += 1;
    }

    /// The table from the first month with a transition through `through`.
    pub fn table(&self, through: YearMonth) -> StageTable {
        let Some(first) = self.net_change.keys().next().copied() else {
            return StageTable { months: Vec::new() };
        };
        let mut running: BTreeMap<String, i64> = BTreeMap::new();
        let mut months = Vec::new();
        for k in 0..=through.months_since(first) {
            let month = first.plus(k);
            if let Some(net) = self.net_change.get(&month) {
                for (stage, delta) in net {
                    *running.entry(stage.clone()).or_default() += delta;
                }
            }
            let distribution = running
                .iter()
                .filter(|(_, n)| **n != 0)
                .map(|(stage, n)| StageCount {
                    stage: stage.clone(),
                    customers: *n,
                })
                .collect();
            let flows = self
                .flows
                .get(&month)
                .into_iter()
                .flat_map(|by_from| {
                    by_from.iter().flat_map(|(from, by_to)| {
                        by_to.iter().map(move |(to, count)| FlowCount {
                            from: (!from.is_empty()).then(|| from.clone()),
                            to: to.clone(),
                            count: *count,
                        })
                    })
                })
                .collect();
            months.push(StageMonth {
                month,
                distribution,
                flows,
            });
        }
        StageTable { months }
    }
}

/// The cohort read model: each customer's cohort and monthly activity as
/// rows, from which cohort tables are summed at query time
/// ([`crate::projections::analytics::cohort_table`]).
#[derive(Debug, Clone, Copy)]
pub struct Cohorts {
    /// Revenue counts only in this currency (the lifecycle rules' currency).
    pub reporting_currency: Currency,
}

/// Tables of the cohort projection (migration 0011).
pub const TABLES: &[TableSpec] = &[
    TableSpec {
        name: "cohort_members",
        columns: &["cohort_month", "registered"],
        kind: TableKind::Current,
    },
    TableSpec {
        name: "customer_months",
        columns: &["month", "orders", "revenue_minor"],
        kind: TableKind::Current,
    },
];

/// A row of `cohort_members` (month and `registered` set) or of
/// `customer_months` (month, orders and revenue set), read by name.
#[derive(sqlx::FromRow)]
struct StoredFactRow {
    customer_id: String,
    month: String,
    registered: Option<i64>,
    orders: Option<i64>,
    revenue_minor: Option<i64>,
}

/// Each customer's cohort facts as stored in `model_version`, one customer
/// at a time (one statement streaming both tables in customer order, so
/// memory does not grow with the customers).
pub async fn for_each_stored_facts(
    db: &ReadModelDb,
    model_version: i64,
    mut f: impl FnMut(CustomerFacts),
) -> Result<(), StorageError> {
    const SQL: &str = "SELECT customer_id, cohort_month AS month, registered, \
         CAST(NULL AS BIGINT) AS orders, CAST(NULL AS BIGINT) AS revenue_minor \
         FROM cohort_members WHERE model_version = $1 \
         UNION ALL \
         SELECT customer_id, month, CAST(NULL AS BIGINT), orders, revenue_minor \
         FROM customer_months WHERE model_version = $1 \
         ORDER BY customer_id";
    let mut current: Option<(String, CustomerFacts)> = None;
    both!(db, pool => {
        let mut rows = sqlx::query_as::<_, StoredFactRow>(SQL).bind(model_version).fetch(pool);
        while let Some(row) = futures::TryStreamExt::try_next(&mut rows).await? {
            add_stored_fact(&mut current, row, &mut f)?;
        }
    });
    if let Some((_, facts)) = current {
        f(facts);
    }
    Ok(())
}

/// Adds one stored row to the customer being gathered, handing the
/// previous customer to `f` when the row starts another.
fn add_stored_fact(
    current: &mut Option<(String, CustomerFacts)>,
    row: StoredFactRow,
    f: &mut impl FnMut(CustomerFacts),
) -> Result<(), StorageError> {
    let month = YearMonth::parse(&row.month).ok_or_else(|| {
        StorageError::Corrupt(format!(
            "cohort rows of {}: month {:?} is not YYYY-MM",
            row.customer_id, row.month
        ))
    })?;
    if current.as_ref().is_none_or(|(c, _)| *c != row.customer_id) {
        if let Some((_, facts)) = current.take() {
            f(facts);
        }
        *current = Some((row.customer_id.clone(), CustomerFacts::default()));
    }
    let (_, facts) = current.as_mut().expect("set above");
    match (row.registered, row.orders, row.revenue_minor) {
        (Some(registered), _, _) => facts.registered = (registered != 0).then_some(month),
        (None, Some(orders), Some(revenue_minor)) => {
            let orders = u32::try_from(orders).map_err(|_| {
                StorageError::Corrupt(format!(
                    "customer_months of {}: {orders} orders in {month}",
                    row.customer_id
                ))
            })?;
            facts.months.insert(
                month,
                MonthActivity {
                    orders,
                    revenue_minor,
                },
            );
        }
        _ => {
            return Err(StorageError::Corrupt(format!(
                "cohort rows of {}: a row with neither registration nor activity",
                row.customer_id
            )))
        }
    }
    Ok(())
}

impl CustomerFold for Cohorts {
    type State = CustomerFacts;

    fn name(&self) -> &'static str {
        "cohorts"
    }

    fn tables(&self) -> &'static [TableSpec] {
        TABLES
    }

    fn apply(
        &self,
        _: &CustomerId,
        state: &mut CustomerFacts,
        event: &FoldEvent,
        _: &mut Vec<Row>,
    ) {
        state.apply(self.reporting_currency, &event.view());
    }

    fn advance_to(
        &self,
        _: &CustomerId,
        _: &mut CustomerFacts,
        _: DateTime<Utc>,
        _: &mut Vec<Row>,
    ) {
    }

    fn current_rows(&self, customer: &CustomerId, state: &CustomerFacts, out: &mut Vec<Row>) {
        let Some(cohort) = state.cohort() else { return };
        let row = |table: &'static str, values: Vec<Value>| Row {
            table,
            customer_id: customer.as_str().to_owned(),
            values,
        };
        out.push(row(
            "cohort_members",
            vec![
                cohort.to_string().into(),
                Value::Int(i64::from(state.registered.is_some())),
            ],
        ));
        for (month, activity) in &state.months {
            out.push(row(
                "customer_months",
                vec![
                    month.to_string().into(),
                    Value::Int(i64::from(activity.orders)),
                    Value::Int(activity.revenue_minor),
                ],
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::events::{
        CustomerRegistered, OrderPlaced, OrderRefunded, Profile, RefundKind,
    };
    use crate::domain::Money;
    use proptest::prelude::*;
    use uuid::Uuid;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn ym(text: &str) -> YearMonth {
        YearMonth::parse(text).unwrap()
    }

    fn registered() -> DomainEvent {
        DomainEvent::CustomerRegistered(CustomerRegistered {
            channel: "web".into(),
            acquisition_cost: None,
            profile: Profile::default(),
        })
    }

    fn order(minor: i64) -> DomainEvent {
        DomainEvent::OrderPlaced(OrderPlaced {
            order_id: "o".into(),
            amount: Money::new(minor, Currency::USD),
            item_count: 1,
        })
    }

    fn facts(events: &[(&str, DomainEvent)]) -> CustomerFacts {
        let mut f = CustomerFacts::default();
        for (when, event) in events {
            f.apply(
                Currency::USD,
                &EventView {
                    event_id: Uuid::nil(),
                    occurred_at: at(when),
                    event,
                },
            );
        }
        f
    }

    fn sample_customers() -> Vec<CustomerFacts> {
        vec![
            facts(&[
                ("2024-01-05T00:00:00Z", registered()),
                ("2024-01-06T00:00:00Z", order(10_000)),
                ("2024-03-31T23:59:59.999999Z", order(5_000)),
            ]),
            facts(&[
                ("2024-01-31T23:59:59.999999Z", registered()),
                ("2024-02-01T00:00:00Z", order(20_000)),
            ]),
            facts(&[("2024-01-20T00:00:00Z", registered())]),
            // No registration: cohort is the first order's month.
            facts(&[("2024-02-10T00:00:00Z", order(30_000))]),
        ]
    }

    #[test]
    fn year_months_parse_print_and_count() {
        assert_eq!(ym("2024-03").to_string(), "2024-03");
        assert_eq!(ym("2024-03").months_since(ym("2023-11")), 4);
        assert_eq!(ym("2023-11").plus(2), ym("2024-01"));
        assert!(YearMonth::parse("2024-13").is_none());
        assert!(YearMonth::parse("2024-3").is_none());
        assert_eq!(
            YearMonth::of(at("2024-02-29T23:59:59.999999Z")),
            ym("2024-02")
        );
        assert_eq!(
            serde_json::to_string(&ym("2024-02")).unwrap(),
            "\"2024-02\""
        );
    }

    #[test]
    fn retention_and_revenue_retention_per_cohort_month() {
        let mut acc = CohortAccumulator::new(Currency::USD);
        for f in sample_customers() {
            acc.add(&f);
        }
        let table = acc.table(ym("2024-03"));
        assert_eq!(table.cohorts.len(), 2);
        let jan = &table.cohorts[0];
        assert_eq!(
            (jan.cohort, jan.customers, jan.without_registration),
            (ym("2024-01"), 3, 0)
        );
        let active: Vec<u64> = jan.months.iter().map(|m| m.active_customers).collect();
        assert_eq!(active, vec![1, 1, 1]);
        assert!((jan.months[0].retention - 1.0 / 3.0).abs() < 1e-12);
        let revenue: Vec<i64> = jan.months.iter().map(|m| m.revenue_minor).collect();
        assert_eq!(revenue, vec![10_000, 20_000, 5_000]);
        let rr: Vec<Option<f64>> = jan.months.iter().map(|m| m.revenue_retention).collect();
        assert_eq!(rr, vec![Some(1.0), Some(2.0), Some(0.5)]);
        let feb = &table.cohorts[1];
        assert_eq!(
            (feb.cohort, feb.customers, feb.without_registration),
            (ym("2024-02"), 1, 1)
        );
        assert_eq!(feb.months.len(), 2);
        assert_eq!(
            (feb.months[1].month, feb.months[1].retention),
            (ym("2024-03"), 0.0)
        );
        // A table through January shows only the January cohort's month 0.
        let early = acc.table(ym("2024-01"));
        assert_eq!(early.cohorts.len(), 1);
        assert_eq!(early.cohorts[0].months.len(), 1);
    }

    #[test]
    fn refunds_reduce_revenue_in_their_month_and_other_currencies_do_not_count() {
        let jpy = Currency::parse("JPY").unwrap();
        let f = facts(&[
            ("2024-01-05T00:00:00Z", registered()),
            ("2024-01-06T00:00:00Z", order(10_000)),
            (
                "2024-02-02T00:00:00Z",
                DomainEvent::OrderRefunded(OrderRefunded {
                    order_id: "o".into(),
                    refund_id: "r".into(),
                    amount: Money::new(4_000, Currency::USD),
                    kind: RefundKind::Partial,
                    reason: None,
                }),
            ),
            (
                "2024-02-03T00:00:00Z",
                DomainEvent::OrderPlaced(OrderPlaced {
                    order_id: "p".into(),
                    amount: Money::new(999, jpy),
                    item_count: 1,
                }),
            ),
        ]);
        let mut acc = CohortAccumulator::new(Currency::USD);
        acc.add(&f);
        let row = &acc.table(ym("2024-02")).cohorts[0];
        assert_eq!(row.months[1].revenue_minor, -4_000);
        assert_eq!(
            row.months[1].active_customers, 1,
            "the JPY order still counts as ordering"
        );
        assert_eq!(row.months[1].revenue_retention, Some(-0.4));
    }

    #[test]
    fn stage_distribution_and_flows_per_month() {
        let t = |c: &str, from: Option<&str>, to: &str, when: &str| StageTransitionFact {
            customer: c.into(),
            from: from.map(str::to_owned),
            to: to.into(),
            at: at(when),
        };
        let mut acc = StageFlowAccumulator::default();
        for tr in [
            t("a", None, "prospect", "2024-01-01T00:00:00Z"),
            t("a", Some("prospect"), "new", "2024-01-10T00:00:00Z"),
            t("b", None, "prospect", "2024-01-31T23:59:59.999999Z"),
            t("a", Some("new"), "at_risk", "2024-03-01T00:00:00Z"),
            t("b", Some("prospect"), "new", "2024-03-02T00:00:00Z"),
        ] {
            acc.record(&tr);
        }
        let table = acc.table(ym("2024-03"));
        let months: Vec<YearMonth> = table.months.iter().map(|m| m.month).collect();
        assert_eq!(months, vec![ym("2024-01"), ym("2024-02"), ym("2024-03")]);
        let dist = |i: usize| -> Vec<(String, i64)> {
            table.months[i]
                .distribution
                .iter()
                .map(|s| (s.stage.clone(), s.customers))
                .collect()
        };
        assert_eq!(dist(0), vec![("new".into(), 1), ("prospect".into(), 1)]);
        assert_eq!(dist(1), dist(0));
        assert!(table.months[1].flows.is_empty());
        assert_eq!(dist(2), vec![("at_risk".into(), 1), ("new".into(), 1)]);
        assert_eq!(
            table.months[0].flows,
            vec![
                FlowCount {
                    from: None,
                    to: "prospect".into(),
                    count: 2
                },
                FlowCount {
                    from: Some("prospect".into()),
                    to: "new".into(),
                    count: 1
                },
            ]
        );
    }

    fn arbitrary_facts() -> impl Strategy<Value = CustomerFacts> {
        (
            prop::option::of(0i64..24),
            prop::collection::vec((0i64..30, 0u32..3, -5_000i64..50_000), 0..6),
        )
            .prop_map(|(reg, months)| CustomerFacts {
                registered: reg.map(|m| ym("2023-01").plus(m)),
                months: months
                    .into_iter()
                    .map(|(m, orders, revenue)| {
                        (
                            ym("2023-01").plus(m),
                            MonthActivity {
                                orders,
                                revenue_minor: revenue,
                            },
                        )
                    })
                    .collect(),
            })
    }

    proptest! {
        #[test]
        fn cohort_tables_do_not_depend_on_customer_order_and_remove_undoes_add(
            customers in prop::collection::vec(arbitrary_facts(), 0..30),
            seed in any::<u64>(),
        ) {
            let mut forward = CohortAccumulator::new(Currency::USD);
            for f in &customers {
                forward.add(f);
            }
            let mut shuffled = customers.clone();
            // Deterministic shuffle from the seed.
            let n = shuffled.len();
            let mut x = seed | 1;
            for i in (1..n).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut backward = CohortAccumulator::new(Currency::USD);
            for f in &shuffled {
                backward.add(f);
            }
            prop_assert_eq!(&forward, &backward);
            let through = ym("2025-12");
            let table = forward.table(through);
            prop_assert_eq!(&table, &backward.table(through));
            let total: u64 = table.cohorts.iter().map(|c| c.customers).sum();
            prop_assert_eq!(total as usize, customers.iter().filter(|f| f.cohort().is_some()).count());
            for f in &customers {
                forward.remove(f);
            }
            prop_assert_eq!(forward, CohortAccumulator::new(Currency::USD));
        }

        #[test]
        fn stage_tables_do_not_depend_on_transition_order(
            chains in prop::collection::vec(prop::collection::vec((0usize..4, 1i64..2_000), 1..6), 0..20),
            rotate in 0usize..50,
        ) {
            let stages = ["prospect", "new", "active", "at_risk"];
            let mut transitions = Vec::new();
            for (c, chain) in chains.iter().enumerate() {
                let mut when = at("2024-01-01T00:00:00Z");
                let mut from: Option<String> = None;
                for (stage, gap_hours) in chain {
                    when += chrono::Duration::hours(*gap_hours);
                    transitions.push(StageTransitionFact {
                        customer: format!("c{c}"),
                        from: from.clone(),
                        to: stages[*stage].into(),
                        at: when,
                    });
                    from = Some(stages[*stage].into());
                }
            }
            let mut a = StageFlowAccumulator::default();
            transitions.iter().for_each(|t| a.record(t));
            let mut b = StageFlowAccumulator::default();
            let k = if transitions.is_empty() { 0 } else { rotate % transitions.len() };
            transitions.rotate_left(k);
            transitions.iter().rev().for_each(|t| b.record(t));
            let through = ym("2025-06");
            let table = a.table(through);
            prop_assert_eq!(&table, &b.table(through));
            // Every customer is in exactly one stage at the end.
            if let Some(last) = table.months.last() {
                let total: i64 = last.distribution.iter().map(|s| s.customers).sum();
                prop_assert_eq!(total as usize, chains.len());
                prop_assert!(last.distribution.iter().all(|s| s.customers > 0));
            }
        }
    }
}

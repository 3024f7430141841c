//! The CLV and RFM read model: every customer's predicted lifetime value,
//! P(alive) and RFM scores, refitted over the whole population whenever the
//! population tables are rewritten (end of a rebuild, live refits).
//!
//! The refit is two streaming passes over the customers' states
//! ([`super::population`]): the first adds each customer's (x, tₓ, T),
//! spend and RFM keys to [`ClvPopulation`], which keeps groups and sorted
//! keys, not customers; the models are fitted on them ([`ClvModels`]); the
//! second pass scores each customer again from their own state.
//!
//! Per customer the fold keeps only their orders in the rules' currency, net
//! of refunds (a refund reduces the order it references, as in
//! [`crate::clv::ledger::load_transactions`]). The models need everyone's
//! histories, so the figures are [`TableKind::Population`] rows as of the
//! newest event: calibration ends at that instant. With too few histories
//! for a fit (a fresh store) the model columns stay NULL and RFM is still
//! written; the reason is logged, never guessed around.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::population::Values;
use super::{CustomerFold, FoldEvent, Row, TableKind, TableSpec, Value};
use crate::clv::gamma_gamma::SpendGroups;
use crate::clv::ledger::fit_purchase_model_on;
use crate::clv::rfm::{total_and_segment, QuintileCuts};
use crate::clv::rules::ClvRules;
use crate::clv::summary::HistoryGroups;
use crate::clv::{
    discounted_purchases_if_alive, ClvOptions, CompressedData, FitOptions, GammaGammaParams,
    PurchaseModel,
};
use crate::domain::events::DomainEvent;
use crate::domain::CustomerId;

/// The CLV/RFM read model under one `clv.toml`.
#[derive(Debug, Clone)]
pub struct ClvScores {
    /// Model, horizon and RFM settings.
    pub rules: ClvRules,
}

/// One order as the models see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelOrder {
    /// Order id (refunds name it).
    pub order_id: String,
    /// When it was placed.
    #[serde(with = "crate::projections::compact::instant")]
    pub at: DateTime<Utc>,
    /// Amount net of refunds, minor units.
    pub net_minor: i64,
}

/// What the fold remembers per customer: orders in the rules' currency.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClvHistory {
    /// Orders, in the order they were folded.
    pub orders: Vec<ModelOrder>,
}

/// Tables of the CLV projection (migration 0011).
pub const TABLES: &[TableSpec] = &[TableSpec {
    name: "customer_clv",
    columns: &[
        "as_of_us",
        "frequency",
        "recency",
        "t",
        "p_alive",
        "expected_purchases",
        "expected_avg_spend_minor",
        "clv_minor",
        "rfm_r",
        "rfm_f",
        "rfm_m",
        "rfm_total",
        "rfm_segment",
    ],
    kind: TableKind::Population,
}];

/// One customer's model inputs as of an instant, with the literature's
/// conventions (see [`crate::clv::summary`]): same-day purchases are one
/// transaction, frequency counts repeat days, recency and T are whole days
/// in the model's time unit; RFM counts purchase days and total spend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClvFacts {
    /// Repeat purchase days.
    pub frequency: u32,
    /// First to last purchase day, model time units.
    pub recency: f64,
    /// First purchase day to the as-of day, model time units.
    pub t: f64,
    /// Mean value of the repeat days' purchases, minor units (0 without).
    pub monetary_minor_avg: f64,
    /// Days from the last purchase day to the as-of day.
    pub days_since_last: f64,
    /// Purchase days.
    pub purchase_days: u32,
    /// Total spend, minor units.
    pub total_minor: i64,
    /// The first purchase day.
    pub first_day: NaiveDate,
    /// The last purchase day.
    pub last_day: NaiveDate,
}

impl ClvHistory {
    /// The model inputs from the orders at or before `as_of`; `None`
    /// without such an order.
    pub fn facts(&self, as_of: DateTime<Utc>, rules: &ClvRules) -> Option<ClvFacts> {
        let mut orders: Vec<(NaiveDate, i64)> = self
            .orders
            .iter()
            .filter(|o| o.at <= as_of)
            .map(|o| (o.at.date_naive(), o.net_minor))
            .collect();
        orders.sort_by_key(|(day, _)| *day);
        let (first_day, _) = *orders.first()?;
        let mut last_day = first_day;
        let mut days: u32 = 1;
        let mut repeat_sum: i128 = 0;
        let mut total: i64 = 0;
        for (i, (day, amount)) in orders.iter().enumerate() {
            total = total.saturating_add(*amount);
            if i == 0 {
                continue;
            }
            if *day != last_day {
                days = days.saturating_add(1);
                last_day = *day;
            }
            if *day != first_day {
                repeat_sum += i128::from(*amount);
            }
        }
        let unit = rules.model.time_unit.days();
        let end_day = as_of.date_naive();
        let frequency = days - 1;
        Some(ClvFacts {
            frequency,
            recency: (last_day - first_day).num_days() as f64 / unit,
            t: (end_day - first_day).num_days() as f64 / unit,
            monetary_minor_avg: if frequency > 0 {
                repeat_sum as f64 / f64::from(frequency)
            } else {
                0.0
            },
            days_since_last: (end_day - last_day).num_days() as f64,
            purchase_days: days,
            total_minor: total,
            first_day,
            last_day,
        })
    }
}

/// The first pass of a refit: what the models need from every customer,
/// grouped (histories, spends, RFM days) or as a bare list (RFM spends),
/// never per customer id. Everything here is in calendar days, independent
/// of the instant the models are fitted as of (a rebuild collects it while
/// folding, before it knows the newest event), and converted when fitting.
#[derive(Debug)]
pub struct ClvPopulation {
    /// (repeat days, first-to-last days, first day) → customers.
    /// A million customers have hundreds of thousands of distinct ones:
    /// 12-byte keys and 4-byte counts keep each entry at 16 bytes.
    histories: HashMap<(u32, i32, i32), u32>,
    spends: Option<SpendGroups>,
    spend_error: Option<String>,
    /// RFM recency: customers per last purchase day (days from CE).
    last_days: BTreeMap<i32, u64>,
    /// RFM frequency: customers per number of purchase days.
    purchase_days: BTreeMap<u32, u64>,
    /// RFM monetary: every customer's total spend (nearly all distinct).
    totals: Values,
}

/// Distinct histories the purchase model is fitted on exactly. Each
/// likelihood evaluation costs one pass over the groups, and a fit takes
/// hundreds: a million customers' histories spread over years of days are
/// nearly all distinct (a minute or more per refit here). Beyond this many,
/// tₓ and T are rounded to a coarser grid of days for the fit only (whole
/// weeks, then two weeks, ...), a shift of at most half the grid in either;
/// every customer is still scored with their exact history.
pub const MAX_FIT_GROUPS: usize = 50_000;

/// The (x, tₓ, T) groups the purchase model is fitted on, in model units:
/// exact while there are at most [`MAX_FIT_GROUPS`] distinct histories,
/// else on the finest grid of days that brings them under it.
fn fit_groups(histories: &HashMap<(u32, i32, i32), u32>, end: i32, unit: f64) -> CompressedData {
    let mut grid: i64 = 1;
    loop {
        let mut coarse: HashMap<(u32, i64, i64), f64> = HashMap::new();
        for (&(x, recency_days, first_day), &customers) in histories {
            // The middle of the grid cell, so rounding does not bias; zero
            // stays zero (no repeat purchase).
            let snap = |days: i64| {
                if grid == 1 || days == 0 {
                    days
                } else {
                    (days.div_euclid(grid) * grid) + grid / 2
                }
            };
            let age = snap(i64::from(end - first_day));
            let recency = snap(i64::from(recency_days)).min(age);
            *coarse.entry((x, recency, age)).or_insert(0.0) += f64::from(customers);
            // Past the limit this grid is too fine: stop filling it (a
            // million histories would otherwise be copied once more).
            if coarse.len() > MAX_FIT_GROUPS && grid < 364 {
                break;
            }
        }
        if coarse.len() <= MAX_FIT_GROUPS || grid >= 364 {
            if grid > 1 {
                tracing::info!(
                    histories = histories.len(),
                    groups = coarse.len(),
                    grid_days = grid,
                    "purchase model fitted on histories rounded to a grid of days"
                );
            }
            let mut groups = HistoryGroups::default();
            for ((x, recency, age), weight) in coarse {
                groups.add_weighted(
                    f64::from(x),
                    recency as f64 / unit,
                    age as f64 / unit,
                    weight,
                );
            }
            return groups.finish();
        }
        grid = if grid == 1 { 7 } else { grid * 2 };
    }
}

fn day_number(day: NaiveDate) -> i32 {
    day.num_days_from_ce()
}

impl ClvPopulation {
    /// An empty population for `rules`.
    pub fn new(rules: &ClvRules) -> Self {
        let scale = 10u32.pow(u32::from(rules.currency.minor_digits()));
        Self {
            histories: HashMap::new(),
            spends: SpendGroups::new(scale).ok(),
            spend_error: None,
            last_days: BTreeMap::new(),
            purchase_days: BTreeMap::new(),
            totals: Values::default(),
        }
    }

    /// Adds one customer.
    pub fn observe(&mut self, customer: &str, facts: &ClvFacts) {
        let (first_day, last_day) = (day_number(facts.first_day), day_number(facts.last_day));
        let key = (facts.frequency, last_day - first_day, first_day);
        let customers = self.histories.entry(key).or_insert(0);
        *customers = customers.saturating_add(1);
        if let Some(spends) = &mut self.spends {
            if let Err(e) = spends.add(customer, facts.frequency, facts.monetary_minor_avg) {
                self.spend_error = Some(e.to_string());
                self.spends = None;
            }
        }
        *self.last_days.entry(last_day).or_insert(0) += 1;
        *self.purchase_days.entry(facts.purchase_days).or_insert(0) += 1;
        self.totals.push(facts.total_minor);
    }

    /// Adds another part of the population (order does not matter).
    pub fn absorb(&mut self, other: ClvPopulation) {
        for (key, theirs) in other.histories {
            let customers = self.histories.entry(key).or_insert(0);
            *customers = customers.saturating_add(theirs);
        }
        match (&mut self.spends, other.spends) {
            (Some(mine), Some(theirs)) => mine.absorb(theirs),
            (_, None) => self.spends = None,
            (None, Some(_)) => {}
        }
        if other.spend_error.is_some() {
            self.spend_error = other.spend_error;
        }
        for (day, count) in other.last_days {
            *self.last_days.entry(day).or_insert(0) += count;
        }
        for (days, count) in other.purchase_days {
            *self.purchase_days.entry(days).or_insert(0) += count;
        }
        self.totals.absorb(other.totals);
    }

    /// Fits the purchase and spend models as of `as_of` (T runs to its
    /// day) and cuts the RFM keys into quintiles. Without a purchase model
    /// (too little data) nobody gets model figures, and the reason is
    /// logged; without a spend model (Gamma-Gamma did not fit) customers
    /// keep P(alive) and expected purchases, and CLV stays empty.
    pub fn fit(self, rules: &ClvRules, as_of: DateTime<Utc>) -> ClvModels {
        let customers = self.totals.len();
        let unit = rules.model.time_unit.days();
        let end = day_number(as_of.date_naive());
        let groups = fit_groups(&self.histories, end, unit);
        // The two models are independent: the spend model is fitted on
        // another core while the purchase model is (a second each at a
        // million customers), and dropped when there is no purchase model.
        let (purchase, spend) = std::thread::scope(|scope| {
            let spend = self.spends.map(|spends| {
                scope.spawn(move || GammaGammaParams::fit(&spends.finish(), &FitOptions::refit()))
            });
            let purchase = if customers == 0 {
                None
            } else {
                fit_purchase_model_on(&groups, rules.model.purchase_model, &FitOptions::refit())
                    .map_err(|e| tracing::warn!(customers, "CLV models not fitted: {e}"))
                    .ok()
            };
            let spend =
                spend.map(|fit| fit.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
            (purchase, spend)
        });
        let spend = match (&purchase, spend, self.spend_error) {
            (None, _, _) => None,
            (Some(_), _, Some(e)) => {
                tracing::warn!(
                    customers,
                    "spend model not fitted, CLV left empty (P(alive) kept): {e}"
                );
                None
            }
            (Some(_), None, None) => None,
            (Some(_), Some(fitted), None) => fitted
                .map(|fit| fit.params)
                .map_err(|e| {
                    tracing::warn!(
                        customers,
                        "spend model not fitted, CLV left empty (P(alive) kept): {e}"
                    )
                })
                .ok(),
        };
        // Recency: days since the last purchase, negated (later is better).
        let recency = QuintileCuts::from_counts(
            self.last_days
                .iter()
                .map(|(day, count)| (f64::from(*day) - f64::from(end), *count)),
        );
        let frequency = QuintileCuts::from_counts(
            self.purchase_days
                .iter()
                .map(|(days, count)| (f64::from(*days), *count)),
        );
        let monetary = QuintileCuts::from_keys(&mut self.totals.into_vec());
        let rfm_cuts = match (recency, frequency, monetary) {
            (Some(r), Some(f), Some(m)) => Some([r, f, m]),
            _ => None,
        };
        let options = ClvOptions::monthly(
            rules.model.time_unit,
            rules.clv.horizon_months,
            rules.clv.monthly_discount_rate,
        );
        ClvModels {
            rules: rules.clone(),
            purchase,
            spend,
            horizon: f64::from(options.horizon_periods) * options.period_length,
            options,
            rfm_cuts,
            outlooks: HashMap::new(),
        }
    }
}

fn rfm_keys(facts: &ClvFacts) -> [f64; 3] {
    [
        -facts.days_since_last,
        f64::from(facts.purchase_days),
        facts.total_minor as f64,
    ]
}

/// The fitted models and the population's RFM quintile cuts: what the
/// second pass scores each customer with.
#[derive(Debug)]
pub struct ClvModels {
    rules: ClvRules,
    purchase: Option<PurchaseModel>,
    spend: Option<GammaGammaParams>,
    options: ClvOptions,
    horizon: f64,
    /// Recency, frequency and monetary cuts (none without customers).
    rfm_cuts: Option<[QuintileCuts; 3]>,
    /// The outlooks of the (x, T) pairs scored so far by
    /// [`ClvModels::row`].
    outlooks: HashMap<(u32, u64), Option<Outlook>>,
}

/// Distinct (x, T) pairs whose outlook [`ClvModels::row`] keeps; past this
/// many it forgets them and starts over, so memory stays bounded however
/// many customers a refit scores.
const MAX_REMEMBERED_OUTLOOKS: usize = 1 << 20;

/// What the purchase model expects of a customer still alive at age T
/// after x repeat purchases; times their P(alive), their figures. Both
/// models factor so, and this part is most of the cost of scoring a
/// customer (a dozen hypergeometric series for the discounted purchases)
/// while a million customers share far fewer (x, T) pairs: a refit
/// computes it once per pair.
#[derive(Debug, Clone, Copy)]
struct Outlook {
    expected_purchases: f64,
    /// With a spend model, [`discounted_purchases_if_alive`]: times
    /// P(alive) and a customer's expected spend per purchase, their CLV.
    discounted_purchases: Option<f64>,
}

/// One customer's model outputs: the purchase model's, and the spend
/// model's when there is one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// P(alive).
    pub p_alive: f64,
    /// Expected purchases over the horizon.
    pub expected_purchases: f64,
    /// Spend figures, when the spend model fitted and applies.
    pub value: Option<SpendValue>,
}

/// What the spend model adds for one customer (major units).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpendValue {
    /// Expected spend per future purchase.
    pub average: f64,
    /// Discounted value over the horizon.
    pub clv: f64,
}

impl ClvModels {
    /// The model figures of one customer, when the purchase model fitted
    /// and can score them.
    pub fn score(&self, facts: &ClvFacts) -> Option<Scored> {
        let outlook = self.outlook(facts)?;
        self.scored(outlook, facts)
    }

    fn outlook(&self, facts: &ClvFacts) -> Option<Outlook> {
        let purchase = self.purchase.as_ref()?;
        let x = f64::from(facts.frequency);
        let expected_purchases = purchase
            .expected_purchases_if_alive(self.horizon, x, facts.t)
            .ok()?;
        let discounted_purchases = self
            .spend
            .as_ref()
            .and_then(|_| discounted_purchases_if_alive(purchase, x, facts.t, &self.options).ok());
        Some(Outlook {
            expected_purchases,
            discounted_purchases,
        })
    }

    /// [`Self::outlook`], computed once per distinct (x, T).
    fn remembered_outlook(&mut self, facts: &ClvFacts) -> Option<Outlook> {
        let pair = (facts.frequency, facts.t.to_bits());
        if let Some(outlook) = self.outlooks.get(&pair) {
            return *outlook;
        }
        let outlook = self.outlook(facts);
        if self.outlooks.len() >= MAX_REMEMBERED_OUTLOOKS {
            self.outlooks.clear();
        }
        self.outlooks.insert(pair, outlook);
        outlook
    }

    /// An (x, T) outlook applied to the customer's own recency and spend.
    fn scored(&self, outlook: Outlook, facts: &ClvFacts) -> Option<Scored> {
        let purchase = self.purchase.as_ref()?;
        let scale = 10u32.pow(u32::from(self.rules.currency.minor_digits()));
        let x = f64::from(facts.frequency);
        let p_alive = purchase.p_alive(x, facts.recency, facts.t).ok()?;
        let value = self
            .spend
            .as_ref()
            .zip(outlook.discounted_purchases)
            .and_then(|(spend, discounted)| {
                let average = spend
                    .conditional_expected_average_spend(
                        x,
                        facts.monetary_minor_avg / f64::from(scale),
                    )
                    .ok()
                    .filter(|average| average.is_finite())?;
                Some(SpendValue {
                    average,
                    clv: p_alive * discounted * average,
                })
            });
        Some(Scored {
            p_alive,
            expected_purchases: p_alive * outlook.expected_purchases,
            value,
        })
    }

    /// The customer's `customer_clv` row as of `as_of_us`.
    pub fn row(&mut self, customer: &CustomerId, facts: &ClvFacts, as_of_us: i64) -> Row {
        let c = self
            .remembered_outlook(facts)
            .and_then(|outlook| self.scored(outlook, facts));
        let value = c.and_then(|c| c.value);
        let rfm = self.rfm_cuts.map(|[r_cuts, f_cuts, m_cuts]| {
            let [r, f, m] = rfm_keys(facts);
            let scores = (r_cuts.score(r), f_cuts.score(f), m_cuts.score(m));
            let (total, segment) =
                total_and_segment(scores, &self.rules.rfm.weights, &self.rules.rfm.segments);
            (scores, total, segment)
        });
        let scale = f64::from(10u32.pow(u32::from(self.rules.currency.minor_digits())));
        let score = |pick: fn((u8, u8, u8)) -> u8| {
            Value::from(rfm.as_ref().map(|(s, _, _)| i64::from(pick(*s))))
        };
        Row {
            table: "customer_clv",
            customer_id: customer.as_str().to_owned(),
            values: vec![
                Value::Int(as_of_us),
                Value::Int(i64::from(facts.frequency)),
                Value::Real(facts.recency),
                Value::Real(facts.t),
                c.map(|c| c.p_alive).into(),
                c.map(|c| c.expected_purchases).into(),
                value.map(|v| v.average * scale).into(),
                Value::from(value.map(|v| (v.clv * scale).round() as i64)),
                score(|s| s.0),
                score(|s| s.1),
                score(|s| s.2),
                rfm.as_ref().map(|(_, total, _)| *total).into(),
                Value::from(rfm.as_ref().and_then(|(_, _, segment)| segment.as_deref())),
            ],
        }
    }
}

impl CustomerFold for ClvScores {
    type State = ClvHistory;

    fn name(&self) -> &'static str {
        "clv"
    }

    fn tables(&self) -> &'static [TableSpec] {
        TABLES
    }

    fn apply(&self, _: &CustomerId, state: &mut ClvHistory, event: &FoldEvent, _: &mut Vec<Row>) {
        match &event.event {
            DomainEvent::OrderPlaced(o) if o.amount.currency == self.rules.currency => {
                state.orders.push(ModelOrder {
                    order_id: o.order_id.clone(),
                    at: event.occurred_at,
                    net_minor: o.amount.minor,
                });
            }
            DomainEvent::OrderRefunded(r) if r.amount.currency == self.rules.currency => {
                if let Some(order) = state.orders.iter_mut().find(|o| o.order_id == r.order_id) {
                    order.net_minor -= r.amount.minor;
                }
            }
            _ => {}
        }
    }

    fn advance_to(&self, _: &CustomerId, _: &mut ClvHistory, _: DateTime<Utc>, _: &mut Vec<Row>) {}

    fn current_rows(&self, _: &CustomerId, _: &ClvHistory, _: &mut Vec<Row>) {}
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::domain::{Currency, Money};

    /// The CDNOW sample's orders per customer, as `fixtures/cdnow_sample.txt`
    /// lists them (`id sample date cds dollars`).
    fn cdnow_histories() -> BTreeMap<String, ClvHistory> {
        let text = include_str!("../../fixtures/cdnow_sample.txt");
        let mut histories: BTreeMap<String, ClvHistory> = BTreeMap::new();
        for (n, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
            let f: Vec<&str> = line.split_whitespace().collect();
            histories
                .entry(f[0].to_owned())
                .or_default()
                .orders
                .push(ModelOrder {
                    order_id: format!("o{n}"),
                    at: NaiveDate::parse_from_str(f[2], "%Y%m%d")
                        .expect("date")
                        .and_hms_opt(0, 0, 0)
                        .expect("midnight")
                        .and_utc(),
                    net_minor: Money::parse_decimal(f[4], Currency::USD)
                        .expect("dollars")
                        .minor,
                });
        }
        histories
    }

    fn end() -> DateTime<Utc> {
        NaiveDate::from_ymd_opt(1998, 6, 30)
            .expect("date")
            .and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc()
    }

    fn shipped() -> ClvRules {
        ClvRules::parse(include_str!("../../projections/clv.toml")).expect("shipped clv.toml")
    }

    fn fit(histories: &BTreeMap<String, ClvHistory>) -> (ClvModels, Vec<ClvFacts>) {
        let rules = shipped();
        let mut population = ClvPopulation::new(&rules);
        let mut all = Vec::new();
        for (customer, history) in histories {
            let facts = history.facts(end(), &rules).expect("orders");
            population.observe(customer, &facts);
            all.push(facts);
        }
        (population.fit(&rules, end()), all)
    }

    #[test]
    fn every_customer_is_scored_when_both_models_fit() {
        let (models, all) = fit(&cdnow_histories());
        let scored: Vec<Scored> = all.iter().filter_map(|f| models.score(f)).collect();
        assert_eq!(scored.len(), all.len());
        let repeat_with_value = all
            .iter()
            .filter(|f| f.frequency > 0 && f.monetary_minor_avg > 0.0)
            .filter(|f| models.score(f).unwrap().value.is_some())
            .count();
        assert!(repeat_with_value > 0, "no repeat buyer got a CLV");
    }

    /// A row scored from a remembered history's outlook carries exactly the
    /// figures of a fresh score of the same customer.
    #[test]
    fn remembered_outlooks_score_as_fresh_ones() {
        let histories = cdnow_histories();
        let (mut models, all) = fit(&histories);
        let customer = CustomerId::parse("00001").unwrap();
        let figures = |row: &Row| row.values[4..8].to_vec();
        let mut remembered = 0;
        for facts in &all {
            let fresh = models.score(facts).expect("scored");
            let expected = vec![
                Value::Real(fresh.p_alive),
                Value::Real(fresh.expected_purchases),
                fresh.value.map(|v| v.average * 100.0).into(),
                Value::from(fresh.value.map(|v| (v.clv * 100.0).round() as i64)),
            ];
            let pair = (facts.frequency, facts.t.to_bits());
            remembered += usize::from(models.outlooks.contains_key(&pair));
            for _ in 0..2 {
                assert_eq!(figures(&models.row(&customer, facts, 0)), expected);
            }
        }
        assert!(remembered > 0, "no two CDNOW customers share a history?");
    }

    /// Facts follow the literature's conventions: the same-day purchases of
    /// the first day are one transaction, and only later days are repeat
    /// spend.
    #[test]
    fn facts_merge_same_day_purchases_and_exclude_the_first_day_from_spend() {
        let day = |d: u32, h: u32| {
            NaiveDate::from_ymd_opt(1997, 1, d)
                .unwrap()
                .and_hms_opt(h, 0, 0)
                .unwrap()
                .and_utc()
        };
        let order = |at, net_minor| ModelOrder {
            order_id: String::new(),
            at,
            net_minor,
        };
        let history = ClvHistory {
            orders: vec![
                order(day(1, 9), 1_000),
                order(day(1, 18), 500),
                order(day(8, 10), 300),
                order(day(8, 11), 100),
                order(day(15, 10), 800),
            ],
        };
        let mut rules = shipped();
        rules.model.time_unit = crate::clv::TimeUnit::Day;
        let facts = history.facts(day(29, 0), &rules).unwrap();
        assert_eq!(facts.frequency, 2);
        assert_eq!(facts.recency, 14.0);
        assert_eq!(facts.t, 28.0);
        assert_eq!(facts.monetary_minor_avg, 600.0);
        assert_eq!(facts.days_since_last, 14.0);
        assert_eq!(facts.purchase_days, 3);
        assert_eq!(facts.total_minor, 2_700);
        assert!(history.facts(day(1, 8), &rules).is_none());
    }

    #[test]
    fn many_distinct_histories_are_fitted_on_a_coarser_grid_with_every_customer() {
        let mut histories = HashMap::new();
        let end = 800_000;
        for i in 0..60_000i32 {
            let x = (i % 7) as u32;
            let recency = if x == 0 { 0 } else { 1 + i % 500 };
            let first = end - 500 - i % 900;
            *histories.entry((x, recency, first)).or_insert(0) += 1;
        }
        let exact = fit_groups(&histories, end, 7.0);
        assert!(exact.len() <= MAX_FIT_GROUPS, "{} groups", exact.len());
        assert_eq!(exact.n_customers(), 60_000.0);
        exact.validate().unwrap();
        let few: HashMap<_, _> = histories.into_iter().take(1_000).collect();
        let data = fit_groups(&few, end, 7.0);
        assert_eq!(
            data.len(),
            1_000,
            "under the limit every history is its own group"
        );
    }

    /// Gamma-Gamma has nothing to fit when no repeat purchase has positive
    /// value; the purchase model still fits, so P(alive) must survive.
    #[test]
    fn p_alive_survives_a_spend_model_that_cannot_fit() {
        let mut histories = cdnow_histories();
        for history in histories.values_mut() {
            for order in &mut history.orders {
                order.net_minor = 0;
            }
        }
        let (models, all) = fit(&histories);
        for facts in &all {
            let scored = models.score(facts).expect("purchase model fitted");
            assert!(scored.value.is_none(), "CLV without a spend model");
            assert!(
                (0.0..=1.0).contains(&scored.p_alive),
                "P(alive) {}",
                scored.p_alive
            );
            assert!(scored.expected_purchases >= 0.0);
        }
    }
}

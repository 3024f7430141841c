//! The CLV and RFM read model: every customer's predicted lifetime value,
//! P(alive) and RFM scores, refitted over the whole population whenever the
//! population tables are rewritten (end of a rebuild, each live batch).
//!
//! Per customer the fold keeps only their orders in the rules' currency, net
//! of refunds (a refund reduces the order it references, as in
//! [`crate::clv::ledger::load_transactions`]). The models need everyone's
//! histories, so the figures are [`TableKind::Population`] rows as of the
//! newest event: calibration ends at that instant. With too few histories
//! for a fit (a fresh store) the model columns stay NULL and RFM is still
//! written; the reason is logged, never guessed around.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{CustomerFold, FoldEvent, Row, TableKind, TableSpec, Value};
use crate::clv::ledger::fit_purchase_model;
use crate::clv::rules::ClvRules;
use crate::clv::{
    discounted_clv, rfm_inputs_from_transactions, score_rfm, summarize, ClvOptions,
    CustomerSummary, FitOptions, GammaGammaData, GammaGammaParams, Transaction,
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

impl ClvScores {
    /// Fits the purchase and spend models on the summaries and scores every
    /// customer. Without a purchase model (too little data) nobody is
    /// scored, and the reason is logged. Without a spend model (Gamma-Gamma
    /// did not fit) customers keep P(alive) and expected purchases, and CLV
    /// stays empty; so does the CLV of a customer the spend model cannot
    /// score (repeat purchases averaging zero or less).
    fn fit(&self, summaries: &[CustomerSummary]) -> HashMap<String, Scored> {
        let rules = &self.rules;
        let unit = rules.model.time_unit;
        let scale = 10u32.pow(u32::from(rules.currency.minor_digits()));
        let purchase = match fit_purchase_model(summaries, rules.model.purchase_model) {
            Ok(model) => model,
            Err(e) => {
                tracing::warn!(customers = summaries.len(), "CLV models not fitted: {e}");
                return HashMap::new();
            }
        };
        let spend = GammaGammaData::from_summaries(summaries, scale)
            .and_then(|data| GammaGammaParams::fit(&data, &FitOptions::point_estimates()))
            .map(|fit| fit.params)
            .map_err(|e| {
                tracing::warn!(
                    customers = summaries.len(),
                    "spend model not fitted, CLV left empty (P(alive) kept): {e}"
                )
            })
            .ok();
        let options = ClvOptions::monthly(
            unit,
            rules.clv.horizon_months,
            rules.clv.monthly_discount_rate,
        );
        let horizon = f64::from(options.horizon_periods) * options.period_length;
        let (mut unscored, mut without_value) = (0usize, 0usize);
        let scores: HashMap<String, Scored> = summaries
            .iter()
            .filter_map(|summary| {
                let x = f64::from(summary.frequency);
                let (Ok(p_alive), Ok(expected_purchases)) = (
                    purchase.p_alive(x, summary.recency, summary.t),
                    purchase.conditional_expected_purchases(horizon, x, summary.recency, summary.t),
                ) else {
                    unscored += 1;
                    return None;
                };
                let value = spend.as_ref().and_then(|spend| {
                    let average = spend.conditional_expected_average_spend(
                        x,
                        summary.monetary_value_minor_avg / f64::from(scale),
                    );
                    let value = average.and_then(|average| {
                        let clv = discounted_clv(
                            &purchase,
                            x,
                            summary.recency,
                            summary.t,
                            average,
                            &options,
                        )?;
                        Ok(SpendValue { average, clv })
                    });
                    without_value += usize::from(value.is_err());
                    value.ok()
                });
                Some((
                    summary.customer.clone(),
                    Scored {
                        p_alive,
                        expected_purchases,
                        value,
                    },
                ))
            })
            .collect();
        if unscored > 0 {
            tracing::info!(unscored, "customers the purchase model could not score");
        }
        if without_value > 0 {
            tracing::info!(
                without_value,
                "customers without CLV (non-positive repeat spend)"
            );
        }
        scores
    }
}

/// One customer's model outputs: the purchase model's, and the spend
/// model's when there is one.
struct Scored {
    p_alive: f64,
    expected_purchases: f64,
    value: Option<SpendValue>,
}

/// What the spend model adds for one customer (major units).
struct SpendValue {
    /// Expected spend per future purchase.
    average: f64,
    /// Discounted value over the horizon.
    clv: f64,
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

    fn population_rows(
        &self,
        states: &[(&CustomerId, &ClvHistory)],
        as_of: DateTime<Utc>,
        out: &mut Vec<Row>,
    ) {
        let transactions: Vec<Transaction> = states
            .iter()
            .flat_map(|(customer, history)| {
                history.orders.iter().map(|o| Transaction {
                    customer: customer.as_str().to_owned(),
                    at: o.at,
                    amount_minor: o.net_minor,
                })
            })
            .collect();
        if transactions.is_empty() {
            return;
        }
        let unit = self.rules.model.time_unit;
        let summaries = match summarize(&transactions, as_of, unit) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("CLV summaries not computed: {e}");
                return;
            }
        };
        let clv = self.fit(&summaries);
        let rfm = rfm_inputs_from_transactions(&transactions, as_of);
        let rfm: HashMap<String, crate::clv::RfmScore> =
            match score_rfm(&rfm, &self.rules.rfm.weights, &self.rules.rfm.segments) {
                Ok(scores) => scores
                    .into_iter()
                    .map(|s| (s.customer.clone(), s))
                    .collect(),
                Err(e) => {
                    tracing::warn!("RFM not scored: {e}");
                    HashMap::new()
                }
            };
        let scale = f64::from(10u32.pow(u32::from(self.rules.currency.minor_digits())));
        let t = as_of.timestamp_micros();
        for summary in &summaries {
            let c = clv.get(&summary.customer);
            let value = c.and_then(|c| c.value.as_ref());
            let r = rfm.get(&summary.customer);
            let score =
                |f: fn(&crate::clv::RfmScore) -> u8| Value::from(r.map(|s| i64::from(f(s))));
            out.push(Row {
                table: "customer_clv",
                customer_id: summary.customer.clone(),
                values: vec![
                    Value::Int(t),
                    Value::Int(i64::from(summary.frequency)),
                    Value::Real(summary.recency),
                    Value::Real(summary.t),
                    c.map(|c| c.p_alive).into(),
                    c.map(|c| c.expected_purchases).into(),
                    value.map(|v| v.average * scale).into(),
                    Value::from(value.map(|v| (v.clv * scale).round() as i64)),
                    score(|s| s.r),
                    score(|s| s.f),
                    score(|s| s.m),
                    r.map(|s| s.total).into(),
                    Value::from(r.and_then(|s| s.segment.as_deref())),
                ],
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::*;
    use crate::domain::{Currency, Money};

    /// The CDNOW sample's transactions, as `fixtures/cdnow_sample.txt`
    /// lists them (`id sample date cds dollars`).
    fn cdnow_summaries(rules: &ClvRules) -> Vec<CustomerSummary> {
        let text = include_str!("../../fixtures/cdnow_sample.txt");
        let transactions: Vec<Transaction> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                Transaction {
                    customer: f[0].to_owned(),
                    at: NaiveDate::parse_from_str(f[2], "%Y%m%d")
                        .expect("date")
                        .and_hms_opt(0, 0, 0)
                        .expect("midnight")
                        .and_utc(),
                    amount_minor: Money::parse_decimal(f[4], Currency::USD)
                        .expect("dollars")
                        .minor,
                }
            })
            .collect();
        let end = NaiveDate::from_ymd_opt(1998, 6, 30)
            .expect("date")
            .and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc();
        summarize(&transactions, end, rules.model.time_unit).expect("summaries")
    }

    fn shipped() -> ClvScores {
        let text = include_str!("../../projections/clv.toml");
        ClvScores {
            rules: ClvRules::parse(text).expect("shipped clv.toml"),
        }
    }

    #[test]
    fn every_customer_is_scored_when_both_models_fit() {
        let scores = shipped();
        let summaries = cdnow_summaries(&scores.rules);
        let fitted = scores.fit(&summaries);
        assert_eq!(fitted.len(), summaries.len());
        let repeat_with_value = summaries
            .iter()
            .filter(|s| s.frequency > 0 && s.monetary_value_minor_avg > 0.0)
            .filter(|s| fitted[&s.customer].value.is_some())
            .count();
        assert!(repeat_with_value > 0, "no repeat buyer got a CLV");
    }

    /// Gamma-Gamma has nothing to fit when no repeat purchase has positive
    /// value; the purchase model still fits, so P(alive) must survive.
    #[test]
    fn p_alive_survives_a_spend_model_that_cannot_fit() {
        let scores = shipped();
        let mut summaries = cdnow_summaries(&scores.rules);
        for s in &mut summaries {
            s.monetary_value_minor_avg = 0.0;
        }
        let fitted = scores.fit(&summaries);
        assert_eq!(fitted.len(), summaries.len());
        for (customer, scored) in &fitted {
            assert!(
                scored.value.is_none(),
                "{customer} got a CLV without a spend model"
            );
            assert!(
                (0.0..=1.0).contains(&scored.p_alive),
                "{customer}: P(alive) {}",
                scored.p_alive
            );
            assert!(scored.expected_purchases >= 0.0);
        }
    }
}

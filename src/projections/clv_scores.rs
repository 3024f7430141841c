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
    customer_lifetime_value, rfm_inputs_from_transactions, score_rfm, summarize, ClvOptions,
    CustomerClv, CustomerSummary, FitOptions, GammaGammaData, GammaGammaParams, Transaction,
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
    /// customer. A customer the spend model cannot score (repeat purchases
    /// averaging zero or less, which Gamma-Gamma excludes from its fit) gets
    /// no CLV; with no fit at all (too little data) nobody does, and the
    /// reason is logged.
    fn fit(&self, summaries: &[CustomerSummary]) -> HashMap<String, CustomerClv> {
        let rules = &self.rules;
        let unit = rules.model.time_unit;
        let scale = 10u32.pow(u32::from(rules.currency.minor_digits()));
        let models = || -> Result<_, crate::clv::ClvError> {
            let purchase = fit_purchase_model(summaries, rules.model.purchase_model)?;
            let spend = GammaGammaParams::fit(
                &GammaGammaData::from_summaries(summaries, scale)?,
                &FitOptions::default(),
            )?
            .params;
            Ok((purchase, spend))
        };
        let (purchase, spend) = match models() {
            Ok(models) => models,
            Err(e) => {
                tracing::warn!(customers = summaries.len(), "CLV models not fitted: {e}");
                return HashMap::new();
            }
        };
        let options = ClvOptions::monthly(
            unit,
            rules.clv.horizon_months,
            rules.clv.monthly_discount_rate,
        );
        let mut unscored = 0usize;
        let scores: HashMap<String, CustomerClv> = summaries
            .iter()
            .filter_map(|summary| {
                let one = std::slice::from_ref(summary);
                match customer_lifetime_value(&purchase, &spend, one, scale, &options) {
                    Ok(mut v) => v.pop().map(|c| (c.customer.clone(), c)),
                    Err(_) => {
                        unscored += 1;
                        None
                    }
                }
            })
            .collect();
        if unscored > 0 {
            tracing::info!(
                unscored,
                "customers without CLV (non-positive repeat spend)"
            );
        }
        scores
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
                    c.map(|c| c.expected_average_spend * scale).into(),
                    Value::from(c.map(|c| (c.clv * scale).round() as i64)),
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

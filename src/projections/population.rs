//! Population read models: figures that depend on every customer (value
//! tiers, the high-value-at-risk alert, CLV and RFM), computed as of one
//! instant from the customers' stored states in two streaming passes.
//!
//! A million customers' states do not fit the memory budget, and a refit
//! does not need them at once: the first pass ([`PopulationInputs`]) keeps
//! one revenue per customer (value tiers are ranks) and the CLV models'
//! grouped inputs; after fitting ([`PopulationInputs::fit`]) the second pass
//! ([`PopulationModels::rows`]) reads the states again in the same order
//! (customer id) and writes each customer's rows. Memory is about 30 bytes
//! per customer, whatever their histories.

use chrono::{DateTime, Utc};

use super::clv_scores::{ClvModels, ClvPopulation};
use super::lifecycle::{value_tiers_in_order, ValueTier};
use super::state::{CustomerState, Folds};
use super::Row;
use crate::domain::CustomerId;

/// The first pass: what the population models need from each customer.
/// A rebuild's workers each collect the inputs of their partitions while
/// folding, and [`PopulationCollector`] joins them, so the first pass
/// costs nothing extra there.
///
/// Inputs count the orders up to the instant they are collected as of; the
/// models are fitted as of that instant or an earlier one after every order
/// (the newest event), see [`PopulationInputs::fit`].
pub struct PopulationInputs {
    as_of: DateTime<Utc>,
    revenues: Vec<i64>,
    clv: ClvPopulation,
}

impl PopulationInputs {
    /// An empty first pass as of `as_of`.
    pub fn new(folds: &Folds, as_of: DateTime<Utc>) -> Self {
        Self {
            as_of,
            revenues: Vec::new(),
            clv: ClvPopulation::new(&folds.clv.rules),
        }
    }

    /// The instant the inputs count orders up to.
    pub fn as_of(&self) -> DateTime<Utc> {
        self.as_of
    }

    /// Adds the next customer (customers come in id order).
    pub fn observe(&mut self, folds: &Folds, customer: &CustomerId, state: &CustomerState) {
        self.revenues.push(state.lifecycle.revenue_minor);
        if let Some(facts) = state.clv.facts(self.as_of, &folds.clv.rules) {
            self.clv.observe(customer.as_str(), &facts);
        }
    }

    /// Appends the inputs of customers that come after these in id order.
    pub fn absorb(&mut self, later: PopulationInputs) {
        self.revenues.extend(later.revenues);
        self.clv.absorb(later.clv);
    }

    /// Customers observed.
    pub fn customers(&self) -> usize {
        self.revenues.len()
    }

    /// Ranks the value tiers and fits the CLV models as of `as_of`: the
    /// collection instant, or an earlier one no earlier than every order.
    pub fn fit(self, folds: &Folds, as_of: DateTime<Utc>) -> PopulationModels<'_> {
        let tiers = value_tiers_in_order(&folds.lifecycle.rules, &self.revenues);
        PopulationModels {
            folds,
            as_of,
            tiers,
            clv: self.clv.fit(&folds.clv.rules, as_of),
            next: 0,
        }
    }
}

/// Joins the first passes of a rebuild's partitions as they finish, in
/// whatever order: the CLV models' grouped inputs are merged at once (one
/// set of groups instead of one per partition until the end), and only
/// what depends on the customers' order, one revenue per customer, waits
/// per partition to be joined in partition order.
#[derive(Default)]
pub struct PopulationCollector {
    merged: Option<PopulationInputs>,
    revenues: std::collections::BTreeMap<i64, Vec<i64>>,
}

impl PopulationCollector {
    /// Adds the inputs of partition `partition_no` (partitions are
    /// numbered in customer order).
    pub fn add(&mut self, partition_no: i64, mut inputs: PopulationInputs) {
        let mut revenues = std::mem::take(&mut inputs.revenues);
        revenues.shrink_to_fit();
        self.revenues.insert(partition_no, revenues);
        match &mut self.merged {
            Some(merged) => merged.absorb(inputs),
            None => self.merged = Some(inputs),
        }
    }

    /// The whole first pass, customers in id order; `None` when no
    /// partition was added.
    pub fn finish(self) -> Option<PopulationInputs> {
        let mut merged = self.merged?;
        let total = self.revenues.values().map(Vec::len).sum();
        let mut revenues = Vec::with_capacity(total);
        for part in self.revenues.into_values() {
            revenues.extend(part);
        }
        merged.revenues = revenues;
        Some(merged)
    }
}

/// The second pass: fitted figures, applied to each customer again.
pub struct PopulationModels<'f> {
    folds: &'f Folds,
    as_of: DateTime<Utc>,
    tiers: Vec<ValueTier>,
    clv: ClvModels,
    next: usize,
}

/// The second pass saw other customers than the first (the states changed
/// in between).
#[derive(Debug, thiserror::Error)]
#[error("the population changed during a refit ({seen} customers, {expected} expected)")]
pub struct PopulationChanged {
    /// Customers seen so far in the second pass.
    pub seen: usize,
    /// Customers of the first pass.
    pub expected: usize,
}

impl PopulationModels<'_> {
    /// The instant the figures are as of.
    pub fn as_of(&self) -> DateTime<Utc> {
        self.as_of
    }

    /// The next customer's population rows (same order as the first pass).
    pub fn rows(
        &mut self,
        customer: &CustomerId,
        state: &CustomerState,
        out: &mut Vec<Row>,
    ) -> Result<(), PopulationChanged> {
        let tier = *self.tiers.get(self.next).ok_or(PopulationChanged {
            seen: self.next + 1,
            expected: self.tiers.len(),
        })?;
        self.next += 1;
        let folds = self.folds;
        out.extend(
            folds
                .lifecycle
                .snapshot_row(customer, &state.lifecycle, tier, self.as_of),
        );
        out.extend(folds.alerts.value_alert_row(
            customer,
            &state.alerts,
            &state.lifecycle,
            tier.as_str(),
            self.as_of,
        ));
        if let Some(facts) = state.clv.facts(self.as_of, &folds.clv.rules) {
            out.push(
                self.clv
                    .row(customer, &facts, self.as_of.timestamp_micros()),
            );
        }
        Ok(())
    }

    /// Checks that the second pass saw every customer of the first.
    pub fn finish(self) -> Result<(), PopulationChanged> {
        if self.next == self.tiers.len() {
            Ok(())
        } else {
            Err(PopulationChanged {
                seen: self.next,
                expected: self.tiers.len(),
            })
        }
    }
}

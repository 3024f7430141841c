//! Population read models: figures that depend on every customer (value
//! tiers, the high-value-at-risk alert, CLV and RFM), computed as of one
//! instant from the customers' stored states in two streaming passes.
//!
//! A million customers' states do not fit the memory budget, and a refit
//! does not need them at once. The first pass ([`PopulationInputs`]) keeps
//! two numbers per customer (revenue and total spend, in any order,
//! compressed to a few bytes: [`Values`]) and the CLV models' grouped
//! inputs. The fit ([`PopulationInputs::fit`]) reduces those numbers to a
//! few cuts (value tiers, RFM quintiles) and frees them, so the second pass
//! ([`PopulationModels::rows`]), which reads the states again in customer
//! id order (value-tier ties go to the first id) and writes each
//! customer's rows, keeps nothing per customer.

use chrono::{DateTime, Utc};

use super::clv_scores::{ClvModels, ClvPopulation};
use super::lifecycle::{ValueTierAssigner, ValueTierCuts};
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
    /// Every customer's revenue, for the value tiers (a ranking: the order
    /// they came in does not matter).
    revenues: Values,
    clv: ClvPopulation,
}

impl PopulationInputs {
    /// An empty first pass as of `as_of`.
    pub fn new(folds: &Folds, as_of: DateTime<Utc>) -> Self {
        Self {
            as_of,
            revenues: Values::default(),
            clv: ClvPopulation::new(&folds.clv.rules),
        }
    }

    /// The instant the inputs count orders up to.
    pub fn as_of(&self) -> DateTime<Utc> {
        self.as_of
    }

    /// Adds one customer (the first pass may see them in any order).
    pub fn observe(&mut self, folds: &Folds, customer: &CustomerId, state: &CustomerState) {
        self.revenues.push(state.lifecycle.revenue_minor);
        if let Some(facts) = state.clv.facts(self.as_of, &folds.clv.rules) {
            self.clv.observe(customer.as_str(), &facts);
        }
    }

    /// Adds the inputs of other customers (in any order).
    pub fn absorb(&mut self, other: PopulationInputs) {
        self.revenues.absorb(other.revenues);
        self.clv.absorb(other.clv);
    }

    /// Customers observed.
    pub fn customers(&self) -> usize {
        self.revenues.len()
    }

    /// Ranks the value tiers and fits the CLV models as of `as_of`: the
    /// collection instant, or an earlier one no earlier than every order.
    pub fn fit(self, folds: &Folds, as_of: DateTime<Utc>) -> PopulationModels<'_> {
        let customers = self.revenues.len();
        let tiers = ValueTierCuts::rank(&folds.lifecycle.rules, self.revenues.into_vec());
        PopulationModels {
            folds,
            as_of,
            tiers: tiers.assigner(),
            clv: self.clv.fit(&folds.clv.rules, as_of),
            customers,
            next: 0,
        }
    }
}

/// Joins the first passes of a rebuild's partitions as they finish, in
/// whatever order (nothing in them depends on the customers' order).
#[derive(Default)]
pub struct PopulationCollector {
    merged: Option<PopulationInputs>,
}

impl PopulationCollector {
    /// Adds the inputs of one partition.
    pub fn add(&mut self, inputs: PopulationInputs) {
        match &mut self.merged {
            Some(merged) => merged.absorb(inputs),
            None => self.merged = Some(inputs),
        }
    }

    /// The whole first pass; `None` when no partition was added.
    pub fn finish(self) -> Option<PopulationInputs> {
        self.merged
    }
}

/// A multiset of integers gathered in parts (a rebuild's partitions), kept
/// compressed: each closed part is sorted and stored as varint deltas,
/// about 2 bytes per value for amounts of money instead of 8, so a
/// million customers' revenues do not grow the rebuild's peak. The values
/// come back at once, in no particular order, when the population is
/// fitted.
#[derive(Debug, Default)]
pub struct Values {
    open: Vec<i64>,
    /// Sorted parts: the first value zigzag-encoded, then the gaps, each
    /// as a LEB128 varint.
    closed: Vec<(usize, Vec<u8>)>,
}

impl Values {
    /// Adds one value.
    pub fn push(&mut self, value: i64) {
        self.open.push(value);
    }

    /// Adds every value of `other`.
    pub fn absorb(&mut self, mut other: Values) {
        other.close();
        self.closed.append(&mut other.closed);
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.open.len() + self.closed.iter().map(|(n, _)| n).sum::<usize>()
    }

    /// Whether no value is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every value, in one vector of exactly their number.
    pub fn into_vec(mut self) -> Vec<i64> {
        self.close();
        let mut all = Vec::with_capacity(self.len());
        for (count, bytes) in self.closed {
            let mut bytes = bytes.iter();
            let mut next = || {
                let mut value: u64 = 0;
                for shift in (0..64).step_by(7) {
                    let byte = bytes.next().expect("a part holds its count of values");
                    value |= u64::from(byte & 0x7f) << shift;
                    if byte & 0x80 == 0 {
                        break;
                    }
                }
                value
            };
            let first = next();
            let mut value = ((first >> 1) as i64) ^ -((first & 1) as i64);
            all.push(value);
            for _ in 1..count {
                value = value.wrapping_add(next() as i64);
                all.push(value);
            }
        }
        all
    }

    fn close(&mut self) {
        if self.open.is_empty() {
            return;
        }
        let mut part = std::mem::take(&mut self.open);
        part.sort_unstable();
        let mut bytes = Vec::with_capacity(part.len() * 2);
        let mut put = |mut value: u64| loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                bytes.push(byte);
                break;
            }
            bytes.push(byte | 0x80);
        };
        put(((part[0] << 1) ^ (part[0] >> 63)) as u64);
        for pair in part.windows(2) {
            // Sorted, so each gap is non-negative (wrapping: up to 2⁶⁴ - 1).
            put(pair[1].wrapping_sub(pair[0]) as u64);
        }
        bytes.shrink_to_fit();
        self.closed.push((part.len(), bytes));
    }
}

/// The second pass: fitted figures, applied to each customer again.
pub struct PopulationModels<'f> {
    folds: &'f Folds,
    as_of: DateTime<Utc>,
    tiers: ValueTierAssigner,
    clv: ClvModels,
    /// Customers of the first pass.
    customers: usize,
    /// Customers of the second pass so far.
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

    /// The next customer's population rows (customers in id order, each
    /// once, the ones the first pass saw).
    pub fn rows(
        &mut self,
        customer: &CustomerId,
        state: &CustomerState,
        out: &mut Vec<Row>,
    ) -> Result<(), PopulationChanged> {
        if self.next == self.customers {
            return Err(PopulationChanged {
                seen: self.next + 1,
                expected: self.customers,
            });
        }
        self.next += 1;
        let tier = self.tiers.next(state.lifecycle.revenue_minor);
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
        if self.next == self.customers {
            Ok(())
        } else {
            Err(PopulationChanged {
                seen: self.next,
                expected: self.customers,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the parts and the values (extremes included), the same
        /// multiset comes back.
        #[test]
        fn values_come_back_as_the_same_multiset(
            parts in prop::collection::vec(
                prop::collection::vec(
                    prop_oneof![any::<i64>(), -1_000i64..1_000, Just(i64::MIN), Just(i64::MAX)],
                    0..50,
                ),
                0..6,
            ),
        ) {
            let mut all = Values::default();
            for part in &parts {
                let mut values = Values::default();
                for v in part {
                    values.push(*v);
                }
                all.absorb(values);
            }
            all.push(7);
            let mut expected: Vec<i64> = parts.concat();
            expected.push(7);
            expected.sort_unstable();
            prop_assert_eq!(all.len(), expected.len());
            let mut got = all.into_vec();
            got.sort_unstable();
            prop_assert_eq!(got, expected);
        }
    }
}

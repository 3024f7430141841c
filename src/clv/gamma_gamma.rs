//! Gamma-Gamma spend model (Fader, Hardie & Lee 2005b; Colombo & Jiang 1999):
//! each transaction value is Gamma(p, ν) with ν ~ Gamma(q, γ) across
//! customers, independent of purchase frequency. Fitted on repeat buyers'
//! average repeat-transaction value; it predicts a customer's expected
//! average spend by shrinking their observed mean towards the population
//! mean.
//!
//! Money units: the model is scale-equivariant (γ scales with the currency
//! unit, p and q do not). [`GammaGammaData::from_summaries`] converts minor
//! units to major units with an explicit `minor_per_major`, so fitted γ and
//! all predicted spends are in **major units** (e.g. dollars).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::optimize::{fit_in_log_space, FitOptions};
use super::special::ln_gamma;
use super::summary::CustomerSummary;
use super::{check_positive, invalid, ClvError, FitResult};

/// Gamma-Gamma parameters `p`, `q`, `gamma` (gamma in the money unit fitted).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GammaGammaParams {
    /// Shape of the per-transaction spend distribution.
    pub p: f64,
    /// Shape of the customer-level rate distribution.
    pub q: f64,
    /// Scale of the customer-level rate distribution (money units).
    pub gamma: f64,
}

/// Repeat buyers' (frequency, mean spend) pairs, grouped with weights.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GammaGammaData {
    /// Number of repeat transactions (> 0).
    pub frequency: Vec<f64>,
    /// Mean value of those transactions (> 0), in the chosen money unit.
    pub monetary: Vec<f64>,
    /// Number of customers with this exact pair.
    pub weight: Vec<f64>,
    /// Repeat buyers left out because their average repeat value was not
    /// positive (free orders, refunds); the model needs positive spend.
    pub skipped_non_positive: u64,
}

impl GammaGammaData {
    /// Takes customers with `frequency > 0` and converts their average repeat
    /// value to major units (`minor_per_major` = 100 for USD/EUR, 1 for JPY,
    /// 1000 for KWD). Customers whose average is not positive (refunds,
    /// free orders) are skipped and counted in `skipped_non_positive`.
    pub fn from_summaries(
        summaries: &[CustomerSummary],
        minor_per_major: u32,
    ) -> Result<Self, ClvError> {
        let mut builder = SpendGroups::new(minor_per_major)?;
        for s in summaries {
            builder.add(&s.customer, s.frequency, s.monetary_value_minor_avg)?;
        }
        Ok(builder.finish())
    }

    /// Number of customers represented.
    pub fn n_customers(&self) -> f64 {
        self.weight.iter().sum()
    }

    /// Checks lengths and positivity.
    pub fn validate(&self) -> Result<(), ClvError> {
        let n = self.frequency.len();
        if self.monetary.len() != n || self.weight.len() != n {
            return Err(invalid("GammaGammaData", "column lengths differ"));
        }
        if n == 0 || self.n_customers() <= 0.0 {
            return Err(ClvError::NoCustomers);
        }
        for i in 0..n {
            if !(self.frequency[i].is_finite() && self.frequency[i] > 0.0) {
                return Err(invalid("frequency", "must be > 0 (repeat buyers only)"));
            }
            if !(self.monetary[i].is_finite() && self.monetary[i] > 0.0) {
                return Err(invalid("monetary", "must be > 0"));
            }
            if !(self.weight[i].is_finite() && self.weight[i] >= 0.0) {
                return Err(invalid("weight", "must be finite and >= 0"));
            }
        }
        Ok(())
    }
}

/// Builds [`GammaGammaData`] one customer at a time, keeping only the
/// distinct (frequency, mean spend) groups: a population pass over a
/// million customers holds groups, not customers.
#[derive(Debug)]
pub struct SpendGroups {
    scale: f64,
    /// Frequency → mean spend (its bits) → customers. Nearly every repeat
    /// customer's mean is distinct, so entries are kept at 16 bytes (the
    /// few frequencies are the outer keys).
    counts: BTreeMap<u32, HashMap<u64, u32>>,
    skipped: u64,
}

impl SpendGroups {
    /// An empty builder converting minor units with `minor_per_major`.
    pub fn new(minor_per_major: u32) -> Result<Self, ClvError> {
        if minor_per_major == 0 {
            return Err(invalid("minor_per_major", "must be > 0"));
        }
        Ok(Self {
            scale: f64::from(minor_per_major),
            counts: BTreeMap::new(),
            skipped: 0,
        })
    }

    /// Adds one customer (ignored unless `frequency > 0`).
    pub fn add(
        &mut self,
        customer: &str,
        frequency: u32,
        monetary_minor_avg: f64,
    ) -> Result<(), ClvError> {
        if frequency == 0 {
            return Ok(());
        }
        let m = monetary_minor_avg / self.scale;
        if !m.is_finite() {
            return Err(invalid(
                "monetary_value_minor_avg",
                format!("customer {customer} has non-finite average spend"),
            ));
        }
        if m <= 0.0 {
            self.skipped += 1;
        } else {
            let customers = self
                .counts
                .entry(frequency)
                .or_default()
                .entry(m.to_bits())
                .or_insert(0);
            *customers = customers.saturating_add(1);
        }
        Ok(())
    }

    /// Adds every group of `other` (same scale).
    pub fn absorb(&mut self, other: SpendGroups) {
        for (frequency, theirs) in other.counts {
            let mine = self.counts.entry(frequency).or_default();
            for (spend, customers) in theirs {
                let count = mine.entry(spend).or_insert(0);
                *count = count.saturating_add(customers);
            }
        }
        self.skipped += other.skipped;
    }

    /// The grouped data, sorted by (frequency, spend).
    pub fn finish(self) -> GammaGammaData {
        let mut out = GammaGammaData {
            skipped_non_positive: self.skipped,
            ..GammaGammaData::default()
        };
        for (f, spends) in self.counts {
            let mut spends: Vec<(u64, u32)> = spends.into_iter().collect();
            spends.sort_unstable_by(|a, b| f64::from_bits(a.0).total_cmp(&f64::from_bits(b.0)));
            for (m, customers) in spends {
                out.frequency.push(f64::from(f));
                out.monetary.push(f64::from_bits(m));
                out.weight.push(f64::from(customers));
            }
        }
        out
    }
}

impl GammaGammaParams {
    /// Rejects non-positive or non-finite parameters.
    pub fn validate(&self) -> Result<(), ClvError> {
        check_positive("p", self.p)?;
        check_positive("q", self.q)?;
        check_positive("gamma", self.gamma)
    }

    fn from_log(v: &[f64]) -> Self {
        Self {
            p: v[0].exp(),
            q: v[1].exp(),
            gamma: v[2].exp(),
        }
    }

    /// Log-likelihood of the mean spends
    /// ln f(m | x) = lnΓ(px+q) − lnΓ(px) − lnΓ(q) + q ln γ + (px−1) ln m + px ln x − (px+q) ln(γ + x m).
    pub fn log_likelihood(&self, data: &GammaGammaData) -> Result<f64, ClvError> {
        self.validate()?;
        data.validate()?;
        Ok(SpendLikelihood::new(data).at(self))
    }

    /// Maximum-likelihood fit of p, q, γ in log-parameter space.
    pub fn fit(data: &GammaGammaData, opts: &FitOptions) -> Result<FitResult<Self>, ClvError> {
        data.validate()?;
        let n = data.n_customers();
        let mean_m = data
            .monetary
            .iter()
            .zip(&data.weight)
            .map(|(m, w)| m * w)
            .sum::<f64>()
            / n;
        // p = 1, q = 2 ⇒ population mean spend pγ/(q−1) = γ; start γ at the sample mean.
        let start = [0.0, 2.0_f64.ln(), mean_m.ln()];
        let likelihood = SpendLikelihood::new(data);
        let objective = |v: &[f64]| {
            if v.iter().any(|x| x.abs() > 30.0) {
                return f64::INFINITY;
            }
            -likelihood.at(&Self::from_log(v))
        };
        fit_in_log_space(
            objective,
            &start,
            opts,
            Self::from_log,
            |se| Self {
                p: se[0],
                q: se[1],
                gamma: se[2],
            },
            n,
            data.frequency.len(),
        )
    }

    /// E[mean spend | x, m̄] = (p(γ + x m̄)) / (px + q − 1): the observed mean
    /// shrunk towards the population mean pγ/(q−1). For x = 0 this is the
    /// population mean. Requires q > 1 (otherwise the mean is infinite).
    pub fn conditional_expected_average_spend(
        &self,
        frequency: f64,
        monetary: f64,
    ) -> Result<f64, ClvError> {
        self.validate()?;
        if !(frequency.is_finite() && frequency >= 0.0) {
            return Err(invalid("frequency", "must be finite and >= 0"));
        }
        if !monetary.is_finite() || (frequency > 0.0 && monetary <= 0.0) {
            return Err(invalid(
                "monetary",
                "must be finite and > 0 for repeat buyers",
            ));
        }
        if self.q <= 1.0 {
            return Err(invalid("q", "expected spend is infinite when q <= 1"));
        }
        let m = if frequency > 0.0 { monetary } else { 0.0 };
        Ok(self.p * (self.gamma + frequency * m) / (self.p * frequency + self.q - 1.0))
    }

    /// Population mean spend per transaction pγ/(q−1).
    pub fn population_mean_spend(&self) -> Result<f64, ClvError> {
        self.conditional_expected_average_spend(0.0, 0.0)
    }
}

/// The log-likelihood of grouped spends, arranged for the hundreds of
/// evaluations a fit makes.
///
/// Summed over customers i with x repeat purchases of mean m,
/// ln f = lnΓ(px+q) − lnΓ(px) − lnΓ(q) + q ln γ + (px−1) ln m + px ln x − (px+q) ln(γ + x m).
/// Only the last term depends on both the parameters and a customer's own
/// spend; the Gamma functions depend on x alone and ln m on the data alone.
/// So the sum is taken per distinct x (a few dozen) for the Gamma terms,
/// with Σ w ln m computed once, and per group for the last term: one
/// logarithm per group and evaluation instead of two lnΓ and four
/// logarithms (the spend fit took most of a million-customer refit).
struct SpendLikelihood {
    /// Σ w over the groups.
    customers: f64,
    /// Per distinct frequency: (x, ln x, Σ w, Σ w ln m).
    frequencies: Vec<FrequencyTerms>,
    /// Per group with weight: (x, m, w).
    groups: Vec<(f64, f64, f64)>,
}

struct FrequencyTerms {
    x: f64,
    ln_x: f64,
    weight: f64,
    weighted_ln_m: f64,
}

impl SpendLikelihood {
    fn new(d: &GammaGammaData) -> Self {
        let mut frequencies: Vec<FrequencyTerms> = Vec::new();
        let mut groups = Vec::with_capacity(d.frequency.len());
        for i in 0..d.frequency.len() {
            let (x, m, w) = (d.frequency[i], d.monetary[i], d.weight[i]);
            if w == 0.0 {
                continue;
            }
            groups.push((x, m, w));
            // `finish` sorts by frequency; any order still sums right.
            match frequencies.iter_mut().rev().find(|f| f.x == x) {
                Some(f) => {
                    f.weight += w;
                    f.weighted_ln_m += w * m.ln();
                }
                None => frequencies.push(FrequencyTerms {
                    x,
                    ln_x: x.ln(),
                    weight: w,
                    weighted_ln_m: w * m.ln(),
                }),
            }
        }
        Self {
            customers: groups.iter().map(|(_, _, w)| w).sum(),
            frequencies,
            groups,
        }
    }

    fn at(&self, params: &GammaGammaParams) -> f64 {
        let GammaGammaParams { p, q, gamma } = *params;
        let mut s = self.customers * (-ln_gamma(q) + q * gamma.ln());
        for f in &self.frequencies {
            let px = p * f.x;
            s += f.weight * (ln_gamma(px + q) - ln_gamma(px) + px * f.ln_x)
                + (px - 1.0) * f.weighted_ln_m;
        }
        for &(x, m, w) in &self.groups {
            s -= w * (p * x + q) * (gamma + x * m).ln();
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_transaction_density_integrates_to_one() {
        // For x = 1 the density of m is a compound gamma; integrate numerically.
        let g = GammaGammaParams {
            p: 6.25,
            q: 3.74,
            gamma: 15.44,
        };
        let mut total = 0.0;
        let h = 0.01;
        let mut m = h / 2.0;
        while m < 2000.0 {
            let d = GammaGammaData {
                frequency: vec![1.0],
                monetary: vec![m],
                weight: vec![1.0],
                skipped_non_positive: 0,
            };
            total += g.log_likelihood(&d).unwrap().exp() * h;
            m += h;
        }
        assert!((total - 1.0).abs() < 1e-3, "{total}");
    }

    /// The grouped sum equals the textbook per-customer formula.
    #[test]
    fn grouped_likelihood_equals_the_per_customer_sum() {
        let mut groups = SpendGroups::new(100).unwrap();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for i in 0..5_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let frequency = 1 + (state % 40) as u32;
            let spend = 50.0 + (state >> 20) as f64 % 90_000.0;
            groups.add(&format!("c{i}"), frequency, spend).unwrap();
        }
        let data = groups.finish();
        for params in [
            GammaGammaParams {
                p: 6.25,
                q: 3.74,
                gamma: 15.44,
            },
            GammaGammaParams {
                p: 0.4,
                q: 12.0,
                gamma: 900.0,
            },
        ] {
            let direct: f64 = (0..data.frequency.len())
                .map(|i| {
                    let (x, m, w) = (data.frequency[i], data.monetary[i], data.weight[i]);
                    let GammaGammaParams { p, q, gamma } = params;
                    let px = p * x;
                    w * (ln_gamma(px + q) - ln_gamma(px) - ln_gamma(q)
                        + q * gamma.ln()
                        + (px - 1.0) * m.ln()
                        + px * x.ln()
                        - (px + q) * (gamma + x * m).ln())
                })
                .sum();
            let grouped = params.log_likelihood(&data).unwrap();
            assert!(
                (grouped - direct).abs() <= 1e-9 * direct.abs(),
                "{grouped} vs {direct}"
            );
        }
    }

    #[test]
    fn expected_spend_shrinks_towards_population_mean() {
        let g = GammaGammaParams {
            p: 6.25,
            q: 3.74,
            gamma: 15.44,
        };
        let pop = g.population_mean_spend().unwrap();
        assert!((pop - 6.25 * 15.44 / 2.74).abs() < 1e-12);
        let one = g.conditional_expected_average_spend(1.0, 100.0).unwrap();
        let many = g.conditional_expected_average_spend(50.0, 100.0).unwrap();
        assert!(pop < one && one < many && many < 100.0);
        assert!(GammaGammaParams { q: 0.9, ..g }
            .population_mean_spend()
            .is_err());
    }
}

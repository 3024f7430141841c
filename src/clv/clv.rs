//! Discounted customer lifetime value, in the style of Lifetimes'
//! `customer_lifetime_value`:
//!
//! `CLV = Σᵢ₌₁ⁿ (E[Y(i·Δ) | x, tₓ, T] − E[Y((i−1)·Δ) | x, tₓ, T]) · E[spend] / (1 + d)ⁱ`
//!
//! where Δ is the discount period length in model time units, d the discount
//! rate per period and `E[spend]` the Gamma-Gamma expected average spend.
//!
//! Money: [`discounted_clv`] returns the value in whatever unit the expected
//! spend is in; [`customer_lifetime_value`] uses a Gamma-Gamma model fitted
//! on major units (see [`super::gamma_gamma`]) and therefore returns **major
//! currency units as f64** (e.g. dollars) — round to minor units only at the
//! presentation edge.

use serde::{Deserialize, Serialize};

use super::gamma_gamma::GammaGammaParams;
use super::summary::{CustomerSummary, TimeUnit};
use super::{invalid, ClvError, PurchaseModel};

/// Horizon and discounting for CLV.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClvOptions {
    /// Number of discount periods in the horizon.
    pub horizon_periods: u32,
    /// Length of one discount period in the model's time unit.
    pub period_length: f64,
    /// Discount rate per period (0.01 = 1 % per period).
    pub discount_rate: f64,
}

impl ClvOptions {
    /// Monthly periods (30.4375 days) for a model fitted in `unit`, the
    /// usual setup: e.g. `monthly(TimeUnit::Week, 12, 0.01)` for a 12-month
    /// CLV at 1 % a month.
    pub fn monthly(unit: TimeUnit, months: u32, monthly_discount_rate: f64) -> Self {
        Self {
            horizon_periods: months,
            period_length: TimeUnit::Month.days() / unit.days(),
            discount_rate: monthly_discount_rate,
        }
    }

    fn validate(&self) -> Result<(), ClvError> {
        if !(self.period_length.is_finite() && self.period_length > 0.0) {
            return Err(invalid("period_length", "must be finite and > 0"));
        }
        if !(self.discount_rate.is_finite() && self.discount_rate > -1.0) {
            return Err(invalid("discount_rate", "must be finite and > -1"));
        }
        Ok(())
    }
}

/// Per-customer CLV output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerClv {
    /// Customer identifier.
    pub customer: String,
    /// P(alive) at the end of calibration.
    pub p_alive: f64,
    /// Undiscounted expected repeat purchases over the whole horizon.
    pub expected_purchases: f64,
    /// Expected average spend per transaction (major units).
    pub expected_average_spend: f64,
    /// Discounted CLV over the horizon (major units).
    pub clv: f64,
}

/// Discounted CLV of one history (x, tₓ, T) given an expected spend per
/// transaction; the result is in the spend's unit: the spend times
/// [`discounted_purchases`].
pub fn discounted_clv(
    model: &PurchaseModel,
    x: f64,
    t_x: f64,
    t_cal: f64,
    expected_spend: f64,
    opts: &ClvOptions,
) -> Result<f64, ClvError> {
    opts.validate()?;
    if !expected_spend.is_finite() {
        return Err(invalid("expected_spend", "must be finite"));
    }
    Ok(expected_spend * discounted_purchases(model, x, t_x, t_cal, opts)?)
}

/// The purchases a history (x, tₓ, T) is expected to make over the
/// horizon, each period's discounted to today:
/// Σᵢ (E[Y(i·L)] − E[Y((i−1)·L)]) / (1 + d)ⁱ. A customer's CLV is it
/// times their expected spend per purchase. It is P(alive) times
/// [`discounted_purchases_if_alive`].
pub fn discounted_purchases(
    model: &PurchaseModel,
    x: f64,
    t_x: f64,
    t_cal: f64,
    opts: &ClvOptions,
) -> Result<f64, ClvError> {
    let if_alive = discounted_purchases_if_alive(model, x, t_cal, opts)?;
    if opts.horizon_periods == 0 {
        return Ok(0.0);
    }
    Ok(model.p_alive(x, t_x, t_cal)? * if_alive)
}

/// [`discounted_purchases`] of a customer still alive at T after x repeat
/// purchases. It depends on (x, T) alone, not on tₓ, so the customers who
/// share those share it: a population refit computes it once per pair
/// (a dozen hypergeometric series each, most of the cost of scoring).
pub fn discounted_purchases_if_alive(
    model: &PurchaseModel,
    x: f64,
    t_cal: f64,
    opts: &ClvOptions,
) -> Result<f64, ClvError> {
    opts.validate()?;
    let mut total = 0.0;
    let mut prev = 0.0;
    for i in 1..=opts.horizon_periods {
        let cum = model.expected_purchases_if_alive(f64::from(i) * opts.period_length, x, t_cal)?;
        total += (cum - prev) / (1.0 + opts.discount_rate).powi(i as i32);
        prev = cum;
    }
    Ok(total)
}

/// CLV for every summarised customer: purchase model for the counts,
/// Gamma-Gamma (fitted in major units) for the spend; `minor_per_major`
/// converts the summaries' minor-unit averages. Returns major units.
pub fn customer_lifetime_value(
    model: &PurchaseModel,
    spend: &GammaGammaParams,
    summaries: &[CustomerSummary],
    minor_per_major: u32,
    opts: &ClvOptions,
) -> Result<Vec<CustomerClv>, ClvError> {
    if minor_per_major == 0 {
        return Err(invalid("minor_per_major", "must be > 0"));
    }
    let scale = f64::from(minor_per_major);
    summaries
        .iter()
        .map(|s| {
            let x = f64::from(s.frequency);
            let spend_avg =
                spend.conditional_expected_average_spend(x, s.monetary_value_minor_avg / scale)?;
            let horizon = f64::from(opts.horizon_periods) * opts.period_length;
            Ok(CustomerClv {
                customer: s.customer.clone(),
                p_alive: model.p_alive(x, s.recency, s.t)?,
                expected_purchases: model
                    .conditional_expected_purchases(horizon, x, s.recency, s.t)?,
                expected_average_spend: spend_avg,
                clv: discounted_clv(model, x, s.recency, s.t, spend_avg, opts)?,
            })
        })
        .collect()
}

/// CLV / CAC — the usual "is acquisition paying off" ratio; errors on a
/// non-positive acquisition cost instead of returning ∞.
pub fn clv_to_cac_ratio(clv: f64, acquisition_cost: f64) -> Result<f64, ClvError> {
    if !(acquisition_cost.is_finite() && acquisition_cost > 0.0) {
        return Err(invalid("acquisition_cost", "must be finite and > 0"));
    }
    if !clv.is_finite() {
        return Err(invalid("clv", "must be finite"));
    }
    Ok(clv / acquisition_cost)
}

#[cfg(test)]
mod tests {
    use super::super::BgNbdParams;
    use super::*;

    #[test]
    fn zero_discount_equals_spend_times_expected_purchases() {
        let m = PurchaseModel::BgNbd(BgNbdParams {
            r: 0.243,
            alpha: 4.414,
            a: 0.793,
            b: 2.426,
        });
        let opts = ClvOptions::monthly(TimeUnit::Week, 12, 0.0);
        let clv = discounted_clv(&m, 3.0, 30.0, 38.0, 20.0, &opts).unwrap();
        let e = m
            .conditional_expected_purchases(12.0 * opts.period_length, 3.0, 30.0, 38.0)
            .unwrap();
        assert!((clv - 20.0 * e).abs() < 1e-9);
        let discounted = discounted_clv(
            &m,
            3.0,
            30.0,
            38.0,
            20.0,
            &ClvOptions {
                discount_rate: 0.05,
                ..opts
            },
        )
        .unwrap();
        assert!(discounted < clv && discounted > clv / 1.05_f64.powi(12));
        assert!((clv_to_cac_ratio(30.0, 10.0).unwrap() - 3.0).abs() < 1e-15);
        assert!(clv_to_cac_ratio(30.0, 0.0).is_err());
    }
}

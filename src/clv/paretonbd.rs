//! Pareto/NBD purchase model (Schmittlein, Morrison & Colombo 1987), with the
//! likelihood in the 2F1 form of Fader & Hardie (2005), "A Note on Deriving
//! the Pareto/NBD Model and Related Expressions": purchases follow a Poisson
//! process with rate λ ~ Gamma(r, α); lifetimes are exponential with dropout
//! rate μ ~ Gamma(s, β), so dropout can happen at any time.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::optimize::{fit_in_log_space, FitOptions};
use super::special::{ln_gamma, ln_hyp2f1_c_is_a_plus_1, log_diff_exp, log_sum_exp};
use super::summary::{CompressedData, Indexed};
use super::{check_history, check_positive, invalid, ClvError, FitResult};

/// Pareto/NBD parameters: `r`, `alpha` (purchase rate) and `s`, `beta`
/// (dropout rate); alpha and beta are in the fitted time unit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ParetoNbdParams {
    /// Shape of the Gamma purchase-rate distribution.
    pub r: f64,
    /// Scale (rate) of the Gamma purchase-rate distribution.
    pub alpha: f64,
    /// Shape of the Gamma dropout-rate distribution.
    pub s: f64,
    /// Scale (rate) of the Gamma dropout-rate distribution.
    pub beta: f64,
}

/// Bound on |ln θ| for every parameter during the fit. When customers look
/// alike (no heterogeneity in rates), the likelihood keeps rising as r, α,
/// s, β grow together toward the homogeneous-Poisson limit; far out there
/// the ₂F₁ argument approaches 1 with huge first parameters, where the
/// connection formula ([`ln_hyp2f1_c_is_a_plus_1`]) answers fast except
/// near integer second parameters, and there the series needs millions of
/// terms per evaluation. e¹² ≈
/// 160,000 is far beyond any fit on real purchase data (CDNOW: all of
/// ln r, ln α, ln s, ln β within ±3) yet keeps each evaluation cheap; a fit
/// that stops at this bound is the homogeneous limit.
const LOG_BOUND: f64 = 12.0;

/// Likelihood data with the distinct (x, time) pairs at which the 2F1 term
/// must be evaluated, so each is computed once per parameter vector.
struct Prepared {
    idx: Indexed,
    /// (x index, time index) pairs.
    pairs: Vec<(u32, u32)>,
    row_tx_pair: Vec<u32>,
    row_t_pair: Vec<u32>,
}

impl Prepared {
    fn new(data: &CompressedData) -> Self {
        let idx = data.indexed();
        let mut map: HashMap<(u32, u32), u32> = HashMap::new();
        let mut pairs = Vec::new();
        let mut intern = |k: (u32, u32)| {
            *map.entry(k).or_insert_with(|| {
                pairs.push(k);
                (pairs.len() - 1) as u32
            })
        };
        let mut row_tx_pair = Vec::with_capacity(idx.w.len());
        let mut row_t_pair = Vec::with_capacity(idx.w.len());
        for i in 0..idx.w.len() {
            row_tx_pair.push(intern((idx.xi[i], idx.txi[i])));
            row_t_pair.push(intern((idx.xi[i], idx.ti[i])));
        }
        Self {
            idx,
            pairs,
            row_tx_pair,
            row_t_pair,
        }
    }
}

impl ParetoNbdParams {
    /// Rejects non-positive or non-finite parameters before any formula runs.
    pub fn validate(&self) -> Result<(), ClvError> {
        check_positive("r", self.r)?;
        check_positive("alpha", self.alpha)?;
        check_positive("s", self.s)?;
        check_positive("beta", self.beta)
    }

    fn from_log(v: &[f64]) -> Self {
        Self {
            r: v[0].exp(),
            alpha: v[1].exp(),
            s: v[2].exp(),
            beta: v[3].exp(),
        }
    }

    /// ln of the A₀ "F" term at time `t`:
    /// α ≥ β: 2F1(r+s+x, s+1; r+s+x+1; (α−β)/(α+t)) / (α+t)^(r+s+x),
    /// α < β: 2F1(r+s+x, r+x; r+s+x+1; (β−α)/(β+t)) / (β+t)^(r+s+x).
    /// The branch keeps the 2F1 argument in [0, 1).
    fn ln_f(&self, x: f64, t: f64) -> Result<f64, ClvError> {
        let rho = self.r + self.s + x;
        if self.alpha >= self.beta {
            let z = (self.alpha - self.beta) / (self.alpha + t);
            Ok(ln_hyp2f1_c_is_a_plus_1(rho, self.s + 1.0, z)? - rho * (self.alpha + t).ln())
        } else {
            let z = (self.beta - self.alpha) / (self.beta + t);
            Ok(ln_hyp2f1_c_is_a_plus_1(rho, self.r + x, z)? - rho * (self.beta + t).ln())
        }
    }

    /// ln A₀ = ln(F(tₓ) − F(T)); −∞ when tₓ = T (the term vanishes).
    fn ln_a0(ln_f_tx: f64, ln_f_t: f64) -> f64 {
        if ln_f_t >= ln_f_tx {
            f64::NEG_INFINITY
        } else {
            log_diff_exp(ln_f_tx, ln_f_t)
        }
    }

    /// (ln of the "alive through T" term, ln of the "died in (tₓ, T]" term)
    /// of the likelihood bracket, without the common prefactor.
    fn components(&self, x: f64, t_x: f64, t_cal: f64) -> Result<(f64, f64), ClvError> {
        let alive = -(self.r + x) * (self.alpha + t_cal).ln() - self.s * (self.beta + t_cal).ln();
        let ln_a0 = Self::ln_a0(self.ln_f(x, t_x)?, self.ln_f(x, t_cal)?);
        let died = (self.s / (self.r + self.s + x)).ln() + ln_a0;
        Ok((alive, died))
    }

    /// Total log-likelihood of `data` (weights applied).
    pub fn log_likelihood(&self, data: &CompressedData) -> Result<f64, ClvError> {
        self.validate()?;
        data.validate()?;
        ll_prepared(self, &Prepared::new(data))
    }

    /// Maximum-likelihood fit on compressed data.
    pub fn fit(data: &CompressedData, opts: &FitOptions) -> Result<FitResult<Self>, ClvError> {
        data.validate()?;
        let prep = Prepared::new(data);
        let n_customers = data.n_customers();
        let mean_t = data
            .t
            .iter()
            .zip(&data.weight)
            .map(|(t, w)| t * w)
            .sum::<f64>()
            / n_customers;
        let m0 = mean_t.max(1e-3).ln();
        let start = [0.0, m0, 0.0, m0];
        let objective = |v: &[f64]| {
            if v.iter().any(|x| x.abs() > LOG_BOUND) {
                return f64::INFINITY;
            }
            match ll_prepared(&Self::from_log(v), &prep) {
                Ok(ll) => -ll,
                Err(_) => f64::INFINITY,
            }
        };
        fit_in_log_space(
            objective,
            &start,
            opts,
            Self::from_log,
            |se| Self {
                r: se[0],
                alpha: se[1],
                s: se[2],
                beta: se[3],
            },
            n_customers,
            data.len(),
        )
    }

    /// P(customer still active at T | x, tₓ, T).
    pub fn p_alive(&self, x: f64, t_x: f64, t_cal: f64) -> Result<f64, ClvError> {
        self.validate()?;
        check_history(x, t_x, t_cal)?;
        let (alive, died) = self.components(x, t_x, t_cal)?;
        Ok(1.0 / (1.0 + (died - alive).exp()))
    }

    /// [1 − ((β+T)/(β+T+t))^(s−1)] / (s−1), with the s → 1 limit ln(1 + t/(β+T)).
    fn dropout_integral(&self, t: f64, t_cal: f64) -> f64 {
        let u = (self.beta + t_cal).ln() - (self.beta + t_cal + t).ln();
        let sm1 = self.s - 1.0;
        if sm1.abs() < 1e-10 {
            -u
        } else {
            -(sm1 * u).exp_m1() / sm1
        }
    }

    /// Expected repeat purchases in (T, T+t] given (x, tₓ, T): P(alive)
    /// times [`Self::expected_purchases_if_alive`].
    pub fn conditional_expected_purchases(
        &self,
        t: f64,
        x: f64,
        t_x: f64,
        t_cal: f64,
    ) -> Result<f64, ClvError> {
        let if_alive = self.expected_purchases_if_alive(t, x, t_cal)?;
        Ok(self.p_alive(x, t_x, t_cal)? * if_alive)
    }

    /// Expected repeat purchases in (T, T+t] of a customer still alive at T
    /// after x repeat purchases (it does not depend on tₓ):
    /// (r+x)(β+T)/(α+T) · [1 − ((β+T)/(β+T+t))^(s−1)]/(s−1).
    pub fn expected_purchases_if_alive(&self, t: f64, x: f64, t_cal: f64) -> Result<f64, ClvError> {
        self.validate()?;
        check_history(x, 0.0, t_cal)?;
        if !(t.is_finite() && t >= 0.0) {
            return Err(invalid(
                "t",
                format!("horizon must be finite and >= 0, got {t}"),
            ));
        }
        Ok((self.r + x) * (self.beta + t_cal) / (self.alpha + t_cal)
            * self.dropout_integral(t, t_cal))
    }

    /// E[X(t)] for a new customer: rβ/(α(s−1)) · [1 − (β/(β+t))^(s−1)].
    pub fn expected_purchases(&self, t: f64) -> Result<f64, ClvError> {
        self.validate()?;
        if !(t.is_finite() && t >= 0.0) {
            return Err(invalid("t", format!("must be finite and >= 0, got {t}")));
        }
        Ok(self.r * self.beta / self.alpha * self.dropout_integral(t, 0.0))
    }
}

fn ll_prepared(p: &ParetoNbdParams, prep: &Prepared) -> Result<f64, ClvError> {
    let ParetoNbdParams { r, alpha, s, beta } = *p;
    let idx = &prep.idx;
    let base = -ln_gamma(r) + r * alpha.ln() + s * beta.ln();
    let per_x: Vec<(f64, f64)> = idx
        .x_vals
        .iter()
        .map(|&x| (base + ln_gamma(r + x), (s / (r + s + x)).ln()))
        .collect();
    let ln_f: Vec<f64> = prep
        .pairs
        .iter()
        .map(|&(xi, ti)| p.ln_f(idx.x_vals[xi as usize], idx.time_vals[ti as usize]))
        .collect::<Result<_, _>>()?;
    let mut total = 0.0;
    for i in 0..idx.w.len() {
        let w = idx.w[i];
        if w == 0.0 {
            continue;
        }
        let x = idx.x_vals[idx.xi[i] as usize];
        let t_cal = idx.time_vals[idx.ti[i] as usize];
        let (c, ln_s_rho) = per_x[idx.xi[i] as usize];
        let alive = -(r + x) * (alpha + t_cal).ln() - s * (beta + t_cal).ln();
        let ln_a0 = ParetoNbdParams::ln_a0(
            ln_f[prep.row_tx_pair[i] as usize],
            ln_f[prep.row_t_pair[i] as usize],
        );
        total += w * (c + log_sum_exp(alive, ln_s_rho + ln_a0));
    }
    if total.is_finite() {
        Ok(total)
    } else {
        Err(ClvError::Numerical(
            "Pareto/NBD log-likelihood is not finite".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: ParetoNbdParams = ParetoNbdParams {
        r: 0.553,
        alpha: 10.578,
        s: 0.606,
        beta: 11.669,
    };

    /// Direct numerical integration of the Pareto/NBD individual likelihood
    /// over the Gamma mixing distributions is expensive; instead check the
    /// closed form at x = 0, tₓ = 0 against the integral over the dropout
    /// time computed by simple quadrature in the α = β case, where 2F1 = 1.
    #[test]
    fn equal_scale_case_matches_quadrature() {
        let q = ParetoNbdParams {
            r: 0.7,
            alpha: 5.0,
            s: 0.9,
            beta: 5.0,
        };
        let (x, tx, t) = (2.0, 4.0, 10.0);
        let data = CompressedData {
            x: vec![x],
            t_x: vec![tx],
            t: vec![t],
            weight: vec![1.0],
        };
        let ll = q.log_likelihood(&data).unwrap();
        // With α = β = k: L = Γ(r+x) k^(r+s)/Γ(r) · [ (k+T)^-(r+s+x)
        //   + s/(r+s+x) ((k+tₓ)^-(r+s+x) − (k+T)^-(r+s+x)) ]
        let (r, s, k) = (q.r, q.s, q.alpha);
        let rho = r + s + x;
        let direct = (ln_gamma(r + x) - ln_gamma(r) + (r + s) * k.ln()).exp()
            * ((k + t).powf(-rho) + s / rho * ((k + tx).powf(-rho) - (k + t).powf(-rho)));
        assert!((ll - direct.ln()).abs() < 1e-12, "{ll} vs {}", direct.ln());
    }

    #[test]
    fn branches_agree_near_equal_scales() {
        // The α ≥ β and α < β formulas must agree as α → β.
        let a = ParetoNbdParams {
            alpha: 5.0 + 1e-9,
            beta: 5.0,
            ..P
        };
        let b = ParetoNbdParams {
            alpha: 5.0,
            beta: 5.0 + 1e-9,
            ..P
        };
        let la = a.p_alive(3.0, 6.0, 12.0).unwrap();
        let lb = b.p_alive(3.0, 6.0, 12.0).unwrap();
        assert!((la - lb).abs() < 1e-8);
        // Both branches on well separated values give probabilities in (0, 1).
        for q in [P, ParetoNbdParams { alpha: 30.0, ..P }] {
            let pa = q.p_alive(2.0, 10.0, 30.0).unwrap();
            assert!(pa > 0.0 && pa < 1.0);
        }
    }

    #[test]
    fn heavy_buyers_stay_finite() {
        for q in [P, ParetoNbdParams { alpha: 40.0, ..P }] {
            let pa = q.p_alive(300.0, 90.0, 100.0).unwrap();
            assert!(pa > 0.0 && pa < 1.0, "{pa}");
            let e = q
                .conditional_expected_purchases(52.0, 300.0, 99.0, 100.0)
                .unwrap();
            assert!(e.is_finite() && e > 0.0);
        }
        let model = super::super::PurchaseModel::ParetoNbd(P);
        let json = serde_json::to_string(&model).unwrap();
        assert!(json.contains("\"model\":\"pareto_nbd\"") && json.contains("\"beta\""));
        let back: super::super::PurchaseModel = serde_json::from_str(&json).unwrap();
        assert_eq!(back, model);
    }

    #[test]
    fn p_alive_and_expectations() {
        // Just purchased at T: P(alive) = 1.
        assert!((P.p_alive(4.0, 20.0, 20.0).unwrap() - 1.0).abs() < 1e-12);
        // Silence lowers P(alive).
        assert!(P.p_alive(4.0, 2.0, 20.0).unwrap() < P.p_alive(4.0, 18.0, 20.0).unwrap());
        let e = P.expected_purchases(39.0).unwrap();
        let small = P.expected_purchases(1e-5).unwrap();
        assert!((small / 1e-5 - P.r / P.alpha).abs() < 1e-4);
        assert!(e > 0.0 && e < 39.0 * P.r / P.alpha);
        // s = 1 limit is continuous.
        let q1 = ParetoNbdParams { s: 1.0, ..P };
        let q2 = ParetoNbdParams { s: 1.0 + 1e-7, ..P };
        assert!(
            (q1.expected_purchases(39.0).unwrap() - q2.expected_purchases(39.0).unwrap()).abs()
                < 1e-6
        );
        let c = P
            .conditional_expected_purchases(39.0, 5.0, 30.0, 38.0)
            .unwrap();
        assert!(c > 0.0);
    }
}

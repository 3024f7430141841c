//! BG/NBD purchase model (Fader, Hardie & Lee 2005, "Counting Your Customers
//! the Easy Way"): while active, a customer buys as a Poisson process with
//! rate λ ~ Gamma(r, α); after each repeat purchase they drop out with
//! probability p ~ Beta(a, b).
//!
//! The likelihood is evaluated in log space with per-distinct-value lookup
//! tables, and maximised over (ln r, ln α, ln a, ln b) so the parameters stay
//! positive without constraints.

use serde::{Deserialize, Serialize};

use super::optimize::{
    bfgs, chunked_sum, chunked_sum_n, nelder_mead, standard_errors_from_log_space, FitOptions,
};
use super::special::{digamma, ln_gamma, ln_hyp2f1_signed, log_sum_exp};
use super::summary::{CompressedData, Indexed};
use super::{check_history, check_positive, ClvError, FitResult};

/// BG/NBD parameters: `r`, `alpha` (purchase-rate heterogeneity, alpha in the
/// fitted time unit) and `a`, `b` (dropout heterogeneity).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BgNbdParams {
    /// Shape of the Gamma purchase-rate distribution.
    pub r: f64,
    /// Scale (rate) of the Gamma purchase-rate distribution, in time units.
    pub alpha: f64,
    /// First Beta shape of the dropout probability.
    pub a: f64,
    /// Second Beta shape of the dropout probability.
    pub b: f64,
}

/// Log-parameters are kept within ±this bound during optimisation, which is
/// far beyond any meaningful value but keeps exp() finite.
const LOG_BOUND: f64 = 25.0;

impl BgNbdParams {
    /// Rejects non-positive or non-finite parameters before any formula runs.
    pub fn validate(&self) -> Result<(), ClvError> {
        check_positive("r", self.r)?;
        check_positive("alpha", self.alpha)?;
        check_positive("a", self.a)?;
        check_positive("b", self.b)
    }

    fn to_log(self) -> [f64; 4] {
        [self.r.ln(), self.alpha.ln(), self.a.ln(), self.b.ln()]
    }

    fn from_log(v: &[f64]) -> Self {
        Self {
            r: v[0].exp(),
            alpha: v[1].exp(),
            a: v[2].exp(),
            b: v[3].exp(),
        }
    }

    /// Total log-likelihood of `data` (weights applied), for fitting and for
    /// comparing models on the same customers.
    pub fn log_likelihood(&self, data: &CompressedData) -> Result<f64, ClvError> {
        self.validate()?;
        data.validate()?;
        Ok(ll_indexed(self, &data.indexed()))
    }

    /// Log-likelihood of a single history (x, tₓ, T).
    pub fn log_likelihood_one(&self, x: f64, t_x: f64, t_cal: f64) -> Result<f64, ClvError> {
        self.validate()?;
        check_history(x, t_x, t_cal)?;
        let data = CompressedData {
            x: vec![x],
            t_x: vec![t_x],
            t: vec![t_cal],
            weight: vec![1.0],
        };
        Ok(ll_indexed(self, &data.indexed()))
    }

    /// Maximum-likelihood fit on compressed data; fails with
    /// [`ClvError::DidNotConverge`] rather than returning a half-fitted model.
    ///
    /// Uses BFGS with the analytic gradient in log-parameter space (tens of
    /// likelihood passes), falling back to Nelder–Mead from the BFGS end
    /// point if BFGS does not reach its gradient tolerance.
    pub fn fit(data: &CompressedData, opts: &FitOptions) -> Result<FitResult<Self>, ClvError> {
        data.validate()?;
        let idx = data.indexed();
        let n_customers = data.n_customers();
        let mean_t = data
            .t
            .iter()
            .zip(&data.weight)
            .map(|(t, w)| t * w)
            .sum::<f64>()
            / n_customers;
        let start = Self {
            r: 1.0,
            alpha: mean_t.max(1e-3),
            a: 1.0,
            b: 1.0,
        };
        let objective = |v: &[f64]| {
            if v.iter().any(|x| x.abs() > LOG_BOUND) {
                return f64::INFINITY;
            }
            -ll_indexed(&Self::from_log(v), &idx)
        };
        let x_weight = weight_per_x(&idx);
        let fg = |v: &[f64]| {
            if v.iter().any(|x| x.abs() > LOG_BOUND) {
                return (f64::INFINITY, vec![0.0; 4]);
            }
            neg_ll_grad_log(&Self::from_log(v), &idx, &x_weight)
        };
        let mut m = bfgs(
            fg,
            &start.to_log(),
            opts.max_iterations.min(2_000),
            BFGS_GTOL,
            2.0,
        );
        if !m.converged {
            let from = if m.value.is_finite() {
                m.x.clone()
            } else {
                start.to_log().to_vec()
            };
            let nm = nelder_mead(objective, &from, 0.5, opts);
            m = super::optimize::Minimum {
                iterations: m.iterations + nm.iterations,
                ..nm
            };
        }
        if !m.converged {
            return Err(ClvError::DidNotConverge {
                iterations: m.iterations,
                log_likelihood: -m.value,
            });
        }
        let params = Self::from_log(&m.x);
        let standard_errors = if opts.standard_errors {
            standard_errors_from_log_space(objective, &m.x).map(|se| Self::from_log_se(&se))
        } else {
            None
        };
        Ok(FitResult {
            params,
            log_likelihood: -m.value,
            n_customers: n_customers.round() as u64,
            n_distinct: data.len(),
            iterations: m.iterations,
            standard_errors,
        })
    }

    fn from_log_se(se: &[f64]) -> Self {
        Self {
            r: se[0],
            alpha: se[1],
            a: se[2],
            b: se[3],
        }
    }

    /// P(customer still active at T | x, tₓ, T). Equals 1 for x = 0 because
    /// in the BG/NBD model dropout can only happen right after a repeat
    /// purchase.
    pub fn p_alive(&self, x: f64, t_x: f64, t_cal: f64) -> Result<f64, ClvError> {
        self.validate()?;
        check_history(x, t_x, t_cal)?;
        if x == 0.0 {
            return Ok(1.0);
        }
        let ln_odds = self.a.ln() - (self.b + x - 1.0).ln()
            + (self.r + x) * ((self.alpha + t_cal).ln() - (self.alpha + t_x).ln());
        Ok(1.0 / (1.0 + ln_odds.exp()))
    }

    /// Expected repeat purchases in (T, T+t] given history (x, tₓ, T)
    /// (FHL 2005 eq. 10): P(alive) times
    /// [`Self::expected_purchases_if_alive`].
    pub fn conditional_expected_purchases(
        &self,
        t: f64,
        x: f64,
        t_x: f64,
        t_cal: f64,
    ) -> Result<f64, ClvError> {
        let p_alive = self.p_alive(x, t_x, t_cal)?;
        Ok(p_alive * self.expected_purchases_if_alive(t, x, t_cal)?)
    }

    /// Expected repeat purchases in (T, T+t] of a customer still alive at
    /// T after x repeat purchases: the numerator of FHL 2005 eq. 10 (its
    /// denominator is 1 / P(alive)). It does not depend on tₓ. Evaluated
    /// with 2F1 in log space so heavy buyers and long horizons do not
    /// overflow.
    pub fn expected_purchases_if_alive(&self, t: f64, x: f64, t_cal: f64) -> Result<f64, ClvError> {
        self.validate()?;
        check_history(x, 0.0, t_cal)?;
        if !(t.is_finite() && t >= 0.0) {
            return Err(super::invalid(
                "t",
                format!("horizon must be finite and >= 0, got {t}"),
            ));
        }
        if t == 0.0 {
            return Ok(0.0);
        }
        self.bracket(t, x, t_cal)
    }

    /// (a+b+x-1)/(a-1) · [1 − ((α+T)/(α+T+t))^(r+x) · 2F1(r+x, b+x; a+b+x-1; t/(α+T+t))].
    /// At a = 1 the expression is 0/0; it is continuous in `a`, so we average
    /// the values just either side.
    fn bracket(&self, t: f64, x: f64, t_cal: f64) -> Result<f64, ClvError> {
        const EPS: f64 = 1e-6;
        if (self.a - 1.0).abs() < EPS {
            let lo = Self {
                a: 1.0 - 2.0 * EPS,
                ..*self
            }
            .bracket_raw(t, x, t_cal)?;
            let hi = Self {
                a: 1.0 + 2.0 * EPS,
                ..*self
            }
            .bracket_raw(t, x, t_cal)?;
            return Ok(0.5 * (lo + hi));
        }
        self.bracket_raw(t, x, t_cal)
    }

    fn bracket_raw(&self, t: f64, x: f64, t_cal: f64) -> Result<f64, ClvError> {
        let (r, alpha, a, b) = (self.r, self.alpha, self.a, self.b);
        let c = a + b + x - 1.0;
        let z = t / (alpha + t_cal + t);
        let (sign, ln_h) = ln_hyp2f1_signed(r + x, b + x, c, z)?;
        let ln_term = (r + x) * ((alpha + t_cal).ln() - (alpha + t_cal + t).ln()) + ln_h;
        let one_minus = if sign > 0.0 {
            -ln_term.exp_m1()
        } else {
            1.0 + ln_term.exp()
        };
        let v = c / (a - 1.0) * one_minus;
        if v.is_finite() {
            Ok(v)
        } else {
            Err(ClvError::Numerical(format!(
                "BG/NBD expectation overflowed (t={t}, x={x}, T={t_cal})"
            )))
        }
    }

    /// E[X(t)]: expected repeat purchases in (0, t] for a new customer
    /// (FHL 2005 eq. 9).
    pub fn expected_purchases(&self, t: f64) -> Result<f64, ClvError> {
        self.validate()?;
        if !(t.is_finite() && t >= 0.0) {
            return Err(super::invalid(
                "t",
                format!("must be finite and >= 0, got {t}"),
            ));
        }
        if t == 0.0 {
            return Ok(0.0);
        }
        self.bracket(t, 0.0, 0.0)
    }
}

/// Gradient tolerance for BFGS: largest |∂(−LL)/∂ln θ| ≤ 1e-10 · (1 + |LL|).
const BFGS_GTOL: f64 = 1e-10;

/// Total weight per distinct x (constant during a fit).
fn weight_per_x(idx: &Indexed) -> Vec<f64> {
    let mut wx = vec![0.0; idx.x_vals.len()];
    for (xi, w) in idx.xi.iter().zip(&idx.w) {
        wx[*xi as usize] += w;
    }
    wx
}

/// −LL and its gradient with respect to (ln r, ln α, ln a, ln b). Terms that
/// depend only on x are summed once per distinct x using `x_weight`; each
/// row adds one log-sum-exp and its mixing weights.
fn neg_ll_grad_log(p: &BgNbdParams, idx: &Indexed, x_weight: &[f64]) -> (f64, Vec<f64>) {
    let BgNbdParams { r, alpha, a, b } = *p;
    let ln_alpha = alpha.ln();
    let (psi_r, psi_ab, psi_b) = (digamma(r), digamma(a + b), digamma(b));
    let base = -ln_gamma(r) + r * ln_alpha + ln_gamma(a + b) - ln_gamma(b);
    let mut acc = [0.0f64; 5];
    let mut per_x = Vec::with_capacity(idx.x_vals.len());
    for (&x, &wx) in idx.x_vals.iter().zip(x_weight) {
        let c = base + ln_gamma(r + x) + ln_gamma(b + x) - ln_gamma(a + b + x);
        let psi_abx = digamma(a + b + x);
        acc[0] += wx * c;
        acc[1] += wx * (digamma(r + x) - psi_r + ln_alpha);
        acc[2] += wx * r / alpha;
        acc[3] += wx * (psi_ab - psi_abx);
        acc[4] += wx * (psi_ab - psi_b + digamma(b + x) - psi_abx);
        let (d, inv_b) = if x > 0.0 {
            (a.ln() - (b + x - 1.0).ln(), 1.0 / (b + x - 1.0))
        } else {
            (f64::NEG_INFINITY, 0.0)
        };
        per_x.push((r + x, d, inv_b));
    }
    let lt: Vec<f64> = idx.time_vals.iter().map(|&v| (alpha + v).ln()).collect();
    let it: Vec<f64> = idx.time_vals.iter().map(|&v| 1.0 / (alpha + v)).collect();
    let inv_a = 1.0 / a;
    let rows = chunked_sum_n::<5, _>(idx.w.len(), |range| {
        let mut s = [0.0f64; 5];
        for i in range {
            let w = idx.w[i];
            if w == 0.0 {
                continue;
            }
            let (rx, d, inv_b) = per_x[idx.xi[i] as usize];
            let (ti, txi) = (idx.ti[i] as usize, idx.txi[i] as usize);
            let a3 = -rx * lt[ti];
            if d == f64::NEG_INFINITY {
                s[0] += w * a3;
                s[1] -= w * lt[ti];
                s[2] -= w * rx * it[ti];
                continue;
            }
            let a4 = d - rx * lt[txi];
            // Mixing weights w3 = e^a3 / (e^a3 + e^a4), w4 = 1 − w3.
            let (lse, w3, w4) = if a3 >= a4 {
                let e = (a4 - a3).exp();
                (a3 + e.ln_1p(), 1.0 / (1.0 + e), e / (1.0 + e))
            } else {
                let e = (a3 - a4).exp();
                (a4 + e.ln_1p(), e / (1.0 + e), 1.0 / (1.0 + e))
            };
            s[0] += w * lse;
            s[1] -= w * (w3 * lt[ti] + w4 * lt[txi]);
            s[2] -= w * rx * (w3 * it[ti] + w4 * it[txi]);
            s[3] += w * w4 * inv_a;
            s[4] -= w * w4 * inv_b;
        }
        s
    });
    let ll = acc[0] + rows[0];
    let grad = vec![
        -r * (acc[1] + rows[1]),
        -alpha * (acc[2] + rows[2]),
        -a * (acc[3] + rows[3]),
        -b * (acc[4] + rows[4]),
    ];
    (-ll, grad)
}

/// Log-likelihood on indexed data. Per distinct x we precompute the gamma
/// terms; per distinct time value ln(α + t); per row only a log-sum-exp
/// remains, which is what makes million-customer fits fast.
pub(crate) fn ll_indexed(p: &BgNbdParams, idx: &Indexed) -> f64 {
    let BgNbdParams { r, alpha, a, b } = *p;
    let base = -ln_gamma(r) + r * alpha.ln() + ln_gamma(a + b) - ln_gamma(b);
    let ln_a = a.ln();
    let per_x: Vec<(f64, f64, f64)> = idx
        .x_vals
        .iter()
        .map(|&x| {
            let c = base + ln_gamma(r + x) + ln_gamma(b + x) - ln_gamma(a + b + x);
            let d = if x > 0.0 {
                ln_a - (b + x - 1.0).ln()
            } else {
                f64::NEG_INFINITY
            };
            (c, r + x, d)
        })
        .collect();
    let ln_time: Vec<f64> = idx.time_vals.iter().map(|&v| (alpha + v).ln()).collect();
    chunked_sum(idx.w.len(), |range| {
        let mut s = 0.0;
        for i in range {
            let w = idx.w[i];
            if w == 0.0 {
                continue;
            }
            let (c, rx, d) = per_x[idx.xi[i] as usize];
            let a3 = -rx * ln_time[idx.ti[i] as usize];
            let ll = if d == f64::NEG_INFINITY {
                c + a3
            } else {
                c + log_sum_exp(a3, d - rx * ln_time[idx.txi[i] as usize])
            };
            s += w * ll;
        }
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: BgNbdParams = BgNbdParams {
        r: 0.243,
        alpha: 4.414,
        a: 0.793,
        b: 2.426,
    };

    #[test]
    fn analytic_gradient_matches_finite_differences() {
        let data = CompressedData {
            x: vec![0.0, 1.0, 4.0, 12.0],
            t_x: vec![0.0, 3.0, 20.5, 30.0],
            t: vec![35.0, 30.0, 38.0, 31.0],
            weight: vec![10.0, 3.0, 2.0, 1.0],
        };
        let idx = data.indexed();
        let wx = weight_per_x(&idx);
        let v = P.to_log();
        let (f, g) = neg_ll_grad_log(&P, &idx, &wx);
        assert!((f + ll_indexed(&P, &idx)).abs() < 1e-9);
        for k in 0..4 {
            let h = 1e-6;
            let mut vp = v;
            let mut vm = v;
            vp[k] += h;
            vm[k] -= h;
            let fp = -ll_indexed(&BgNbdParams::from_log(&vp), &idx);
            let fm = -ll_indexed(&BgNbdParams::from_log(&vm), &idx);
            let fd = (fp - fm) / (2.0 * h);
            assert!(
                (g[k] - fd).abs() < 1e-5 * (1.0 + fd.abs()),
                "k={k}: {} vs {fd}",
                g[k]
            );
        }
    }

    #[test]
    fn p_alive_boundaries() {
        assert_eq!(P.p_alive(0.0, 0.0, 38.0).unwrap(), 1.0);
        // Just bought (tₓ = T): P(alive) = 1 / (1 + a/(b+x-1)).
        let pa = P.p_alive(3.0, 20.0, 20.0).unwrap();
        assert!((pa - 1.0 / (1.0 + 0.793 / (2.426 + 2.0))).abs() < 1e-12);
        // Long silence after many purchases → nearly surely dead.
        assert!(P.p_alive(50.0, 1.0, 100.0).unwrap() < 1e-10);
        assert!(P.p_alive(1.0, 5.0, 4.0).is_err());
        assert!(P.p_alive(0.0, 1.0, 4.0).is_err());
    }

    #[test]
    fn single_customer_likelihood_matches_closed_form() {
        // x = 0: L = B(a, b)/B(a, b) · (α/(α+T))^r
        let l = P.log_likelihood_one(0.0, 0.0, 10.0).unwrap();
        assert!((l - 0.243 * (4.414_f64 / 14.414).ln()).abs() < 1e-12);
        // x = 1 direct formula.
        let (r, al, a, b) = (P.r, P.alpha, P.a, P.b);
        let (x, tx, t) = (1.0, 3.0, 10.0);
        let lb = |p: f64, q: f64| super::super::special::ln_beta(p, q);
        let direct = (ln_gamma(r + x) - ln_gamma(r) + r * al.ln() + lb(a, b + x) - lb(a, b)).exp()
            * ((al + t).powf(-(r + x)) + (a / (b + x - 1.0)) * (al + tx).powf(-(r + x)));
        let l1 = P.log_likelihood_one(x, tx, t).unwrap();
        assert!((l1 - direct.ln()).abs() < 1e-12);
    }

    #[test]
    fn expectations_are_consistent() {
        // Unconditional expectation equals the conditional one for x=0, T=0.
        let e = P.expected_purchases(39.0).unwrap();
        let c = P
            .conditional_expected_purchases(39.0, 0.0, 0.0, 0.0)
            .unwrap();
        assert!((e - c).abs() < 1e-12);
        assert!(e > 0.0 && e < 39.0 * P.r / P.alpha);
        // FHL 2005's worked example on CDNOW: x = 2, tₓ = 30.43, T = 38.86
        // expects 1.226 purchases in the next 39 weeks (P(alive) 0.7266).
        let worked = P
            .conditional_expected_purchases(39.0, 2.0, 30.43, 38.86)
            .unwrap();
        assert!((worked - 1.226_028).abs() < 1e-6, "{worked}");
        assert!((P.p_alive(2.0, 30.43, 38.86).unwrap() - 0.726_579).abs() < 1e-6);
        // Monotone in the horizon.
        let e2 = P.expected_purchases(78.0).unwrap();
        assert!(e2 > e);
        // Small-t limit: E[X(t)] ≈ t·r/α.
        let small = P.expected_purchases(1e-4).unwrap();
        assert!((small / 1e-4 - P.r / P.alpha).abs() < 1e-3);
        // Heavy buyer with long history stays finite.
        let heavy = P
            .conditional_expected_purchases(52.0, 300.0, 99.0, 100.0)
            .unwrap();
        assert!(heavy.is_finite() && heavy > 0.0);
        // a == 1 handled by continuity.
        let q = BgNbdParams { a: 1.0, ..P };
        let v = q.expected_purchases(10.0).unwrap();
        let v2 = BgNbdParams { a: 1.0 + 1e-3, ..P }
            .expected_purchases(10.0)
            .unwrap();
        assert!((v - v2).abs() < 1e-3);
    }
}

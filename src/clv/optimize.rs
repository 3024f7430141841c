//! Optimisers and helpers for maximum likelihood: Nelder–Mead with restarts
//! (derivative-free, used where gradients involve 2F1 derivatives), BFGS for
//! likelihoods with analytic gradients (BG/NBD), a numerically differentiated
//! Hessian for standard errors, and a deterministic parallel sum.
//!
//! Kept in-house so the module has no heavy numeric dependencies; the models
//! have at most four parameters.

// Small dense matrix code reads best with explicit indices.
#![allow(clippy::needless_range_loop)]

use serde::{Deserialize, Serialize};

/// Settings shared by every model fit, so callers can trade accuracy for
/// time in one place.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FitOptions {
    /// Upper bound on Nelder–Mead iterations over all restarts.
    pub max_iterations: usize,
    /// Convergence tolerance: absolute spread of the negative log-likelihood
    /// across the simplex, relative to `1 + |value|`.
    pub tolerance: f64,
    /// Whether to compute standard errors from the numerical Hessian (costs
    /// roughly 4n² extra likelihood evaluations).
    pub standard_errors: bool,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            max_iterations: 10_000,
            tolerance: 1e-12,
            standard_errors: true,
        }
    }
}

impl FitOptions {
    /// The defaults without standard errors, for callers that use only the
    /// parameters (scoring, the CLV read model's refits): the numerical
    /// Hessian would cost 4n² likelihood evaluations over every customer.
    pub fn point_estimates() -> Self {
        Self {
            standard_errors: false,
            ..Self::default()
        }
    }

    /// [`FitOptions::point_estimates`] with a bounded number of iterations,
    /// for the read models' population refits, which run again and again
    /// on a live ledger: a population whose likelihood has no finite
    /// maximum (no heterogeneity to fit) gives up after this many instead
    /// of 10,000 (minutes at a million customers).
    pub fn refit() -> Self {
        Self {
            max_iterations: 3_000,
            ..Self::point_estimates()
        }
    }
}

/// Outcome of [`nelder_mead`]; `x` is the best point seen.
#[derive(Debug, Clone)]
pub(crate) struct Minimum {
    pub x: Vec<f64>,
    pub value: f64,
    pub iterations: usize,
    pub converged: bool,
}

/// Minimise `f` from `start` with Nelder–Mead, restarting from the best point
/// until a restart no longer improves the value. Non-finite values of `f` are
/// treated as +∞ so the simplex simply avoids them.
pub(crate) fn nelder_mead<F>(f: F, start: &[f64], step: f64, opts: &FitOptions) -> Minimum
where
    F: Fn(&[f64]) -> f64,
{
    let eval = |x: &[f64]| {
        let v = f(x);
        if v.is_finite() {
            v
        } else {
            f64::INFINITY
        }
    };
    let mut best = start.to_vec();
    let mut best_val = eval(&best);
    let mut total_iter = 0usize;
    let mut converged = false;
    for restart in 0..8 {
        let budget = opts.max_iterations.saturating_sub(total_iter);
        if budget == 0 {
            break;
        }
        // Later restarts use a smaller simplex around the incumbent.
        let s = if restart == 0 { step } else { step * 0.25 };
        let (x, v, it, conv) = nm_run(&eval, &best, best_val, s, opts.tolerance, budget);
        total_iter += it;
        let improved = best_val - v;
        if v <= best_val {
            best = x;
            best_val = v;
        }
        converged = conv;
        if conv && restart > 0 && improved.abs() <= opts.tolerance * (1.0 + best_val.abs()) * 10.0 {
            break;
        }
    }
    Minimum {
        x: best,
        value: best_val,
        iterations: total_iter,
        converged,
    }
}

/// One Nelder–Mead run (standard coefficients 1, 2, ½, ½).
fn nm_run<F>(
    f: &F,
    start: &[f64],
    start_val: f64,
    step: f64,
    tol: f64,
    max_iter: usize,
) -> (Vec<f64>, f64, usize, bool)
where
    F: Fn(&[f64]) -> f64,
{
    let n = start.len();
    let mut pts: Vec<Vec<f64>> = Vec::with_capacity(n + 1);
    let mut vals: Vec<f64> = Vec::with_capacity(n + 1);
    pts.push(start.to_vec());
    vals.push(start_val);
    for i in 0..n {
        let mut p = start.to_vec();
        p[i] += step;
        vals.push(f(&p));
        pts.push(p);
    }
    let mut order: Vec<usize> = (0..=n).collect();
    let mut iter = 0;
    let mut converged = false;
    while iter < max_iter {
        order.sort_by(|&i, &j| vals[i].total_cmp(&vals[j]));
        let (b, w, sw) = (order[0], order[n], order[n - 1]);
        let spread = vals[w] - vals[b];
        let size = pts
            .iter()
            .map(|p| {
                p.iter()
                    .zip(&pts[b])
                    .map(|(a, c)| (a - c).abs())
                    .fold(0.0, f64::max)
            })
            .fold(0.0, f64::max);
        if vals[b].is_finite() && spread <= tol * (1.0 + vals[b].abs()) && size <= 1e-7 {
            converged = true;
            break;
        }
        iter += 1;
        let mut centroid = vec![0.0; n];
        for &i in &order[..n] {
            for (c, v) in centroid.iter_mut().zip(&pts[i]) {
                *c += v / n as f64;
            }
        }
        let along = |t: f64| -> Vec<f64> {
            centroid
                .iter()
                .zip(&pts[w])
                .map(|(c, x)| c + t * (x - c))
                .collect()
        };
        let xr = along(-1.0);
        let fr = f(&xr);
        if fr < vals[b] {
            let xe = along(-2.0);
            let fe = f(&xe);
            if fe < fr {
                pts[w] = xe;
                vals[w] = fe;
            } else {
                pts[w] = xr;
                vals[w] = fr;
            }
        } else if fr < vals[sw] {
            pts[w] = xr;
            vals[w] = fr;
        } else {
            let (xc, fc) = if fr < vals[w] {
                let xc = along(-0.5);
                let fc = f(&xc);
                (xc, fc)
            } else {
                let xc = along(0.5);
                let fc = f(&xc);
                (xc, fc)
            };
            if fc < vals[w].min(fr) {
                pts[w] = xc;
                vals[w] = fc;
            } else {
                // Shrink towards the best point.
                let best = pts[b].clone();
                for &i in &order[1..] {
                    let p: Vec<f64> = pts[i]
                        .iter()
                        .zip(&best)
                        .map(|(x, bx)| bx + 0.5 * (x - bx))
                        .collect();
                    vals[i] = f(&p);
                    pts[i] = p;
                }
            }
        }
    }
    let b = (0..=n)
        .min_by(|&i, &j| vals[i].total_cmp(&vals[j]))
        .unwrap_or(0);
    (pts[b].clone(), vals[b], iter, converged)
}

/// Central-difference Hessian of `f` at `x` with step `h` (same in every
/// coordinate; callers work in log-parameter space where that is natural).
pub(crate) fn numerical_hessian<F>(f: F, x: &[f64], h: f64) -> Vec<Vec<f64>>
where
    F: Fn(&[f64]) -> f64,
{
    let n = x.len();
    let f0 = f(x);
    let mut hess = vec![vec![0.0; n]; n];
    let shifted = |pairs: &[(usize, f64)]| {
        let mut p = x.to_vec();
        for &(i, d) in pairs {
            p[i] += d;
        }
        f(&p)
    };
    for i in 0..n {
        let fp = shifted(&[(i, h)]);
        let fm = shifted(&[(i, -h)]);
        hess[i][i] = (fp - 2.0 * f0 + fm) / (h * h);
        for j in 0..i {
            let fpp = shifted(&[(i, h), (j, h)]);
            let fpm = shifted(&[(i, h), (j, -h)]);
            let fmp = shifted(&[(i, -h), (j, h)]);
            let fmm = shifted(&[(i, -h), (j, -h)]);
            let v = (fpp - fpm - fmp + fmm) / (4.0 * h * h);
            hess[i][j] = v;
            hess[j][i] = v;
        }
    }
    hess
}

/// Inverse of a symmetric positive-definite matrix via Cholesky; `None` if
/// the matrix is not positive definite (e.g. the optimum is on a ridge).
pub(crate) fn invert_spd(m: &[Vec<f64>]) -> Option<Vec<Vec<f64>>> {
    let n = m.len();
    let mut l = vec![vec![0.0; n]; n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = m[i][j];
            for k in 0..j {
                s -= l[i][k] * l[j][k];
            }
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    return None;
                }
                l[i][i] = s.sqrt();
            } else {
                l[i][j] = s / l[j][j];
            }
        }
    }
    // Inverse of L, then (L⁻¹)ᵀ L⁻¹.
    let mut li = vec![vec![0.0; n]; n];
    for i in 0..n {
        li[i][i] = 1.0 / l[i][i];
        for j in 0..i {
            let mut s = 0.0;
            for k in j..i {
                s -= l[i][k] * li[k][j];
            }
            li[i][j] = s / l[i][i];
        }
    }
    let mut inv = vec![vec![0.0; n]; n];
    for i in 0..n {
        for j in 0..n {
            let mut s = 0.0;
            for k in i.max(j)..n {
                s += li[k][i] * li[k][j];
            }
            inv[i][j] = s;
        }
    }
    Some(inv)
}

/// Standard errors of the natural parameters from the Hessian of the
/// negative log-likelihood in log-parameter space (delta method:
/// se(θ) = θ · se(ln θ), exact at a stationary point).
pub(crate) fn standard_errors_from_log_space<F>(neg_ll: F, log_params: &[f64]) -> Option<Vec<f64>>
where
    F: Fn(&[f64]) -> f64,
{
    let hess = numerical_hessian(neg_ll, log_params, 1e-4);
    let cov = invert_spd(&hess)?;
    let se: Vec<f64> = log_params
        .iter()
        .enumerate()
        .map(|(i, lp)| lp.exp() * cov[i][i].sqrt())
        .collect();
    if se.iter().all(|v| v.is_finite()) {
        Some(se)
    } else {
        None
    }
}

/// Below this many items a likelihood is summed on the calling thread.
const PARALLEL_THRESHOLD: usize = 20_000;
/// Fixed number of chunks, so the floating-point summation order (and hence
/// the result) does not depend on how many cores the machine has.
const CHUNKS: usize = 16;

/// Σ f(range) over `0..n`, split into a fixed number of chunks evaluated on
/// up to `available_parallelism` scoped threads and added in chunk order.
pub(crate) fn chunked_sum<F>(n: usize, f: F) -> f64
where
    F: Fn(std::ops::Range<usize>) -> f64 + Sync,
{
    chunked_sum_n(n, |r| [f(r)])[0]
}

/// Vector version of [`chunked_sum`]: sums `[f64; N]` partial results
/// (e.g. a log-likelihood and its gradient) deterministically.
pub(crate) fn chunked_sum_n<const N: usize, F>(n: usize, f: F) -> [f64; N]
where
    F: Fn(std::ops::Range<usize>) -> [f64; N] + Sync,
{
    let add = |acc: [f64; N], v: [f64; N]| {
        let mut out = acc;
        for (o, x) in out.iter_mut().zip(v) {
            *o += x;
        }
        out
    };
    if n < PARALLEL_THRESHOLD {
        return f(0..n);
    }
    let threads = std::thread::available_parallelism()
        .map(|v| v.get())
        .unwrap_or(1)
        .clamp(1, CHUNKS);
    let chunk_len = n.div_ceil(CHUNKS);
    let ranges: Vec<std::ops::Range<usize>> = (0..CHUNKS)
        .map(|c| (c * chunk_len).min(n)..((c + 1) * chunk_len).min(n))
        .collect();
    if threads == 1 {
        return ranges.into_iter().map(&f).fold([0.0; N], add);
    }
    let mut partial = vec![[0.0; N]; CHUNKS];
    std::thread::scope(|scope| {
        let f = &f;
        let ranges = &ranges;
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (t..CHUNKS)
                        .step_by(threads)
                        .map(|c| (c, f(ranges[c].clone())))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(results) => {
                    for (c, v) in results {
                        partial[c] = v;
                    }
                }
                Err(_) => partial[0] = [f64::NAN; N],
            }
        }
    });
    partial.into_iter().fold([0.0; N], add)
}

/// Quasi-Newton (BFGS) minimisation with an analytic gradient and Armijo
/// backtracking. `fg` returns (value, gradient); non-finite values make the
/// line search back off. Converges when the largest gradient component is
/// below `gtol · (1 + |f|)` or the value stops changing.
pub(crate) fn bfgs<F>(fg: F, start: &[f64], max_iter: usize, gtol: f64, max_step: f64) -> Minimum
where
    F: Fn(&[f64]) -> (f64, Vec<f64>),
{
    let n = start.len();
    let identity = |n: usize| {
        let mut h = vec![vec![0.0; n]; n];
        for (i, row) in h.iter_mut().enumerate() {
            row[i] = 1.0;
        }
        h
    };
    let mut x = start.to_vec();
    let (mut fx, mut g) = fg(&x);
    let mut h = identity(n);
    let mut first = true;
    let mut stalls = 0;
    let gmax = |g: &[f64]| g.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
    if !fx.is_finite() || g.iter().any(|v| !v.is_finite()) {
        return Minimum {
            x,
            value: f64::INFINITY,
            iterations: 0,
            converged: false,
        };
    }
    for iter in 0..max_iter {
        if gmax(&g) <= gtol * (1.0 + fx.abs()) {
            return Minimum {
                x,
                value: fx,
                iterations: iter,
                converged: true,
            };
        }
        let mut p: Vec<f64> = (0..n)
            .map(|i| -(0..n).map(|j| h[i][j] * g[j]).sum::<f64>())
            .collect();
        let mut slope: f64 = p.iter().zip(&g).map(|(a, b)| a * b).sum();
        if slope.is_nan() || slope >= 0.0 {
            h = identity(n);
            p = g.iter().map(|v| -v).collect();
            slope = -g.iter().map(|v| v * v).sum::<f64>();
        }
        let pmax = gmax(&p);
        if pmax > max_step {
            let k = max_step / pmax;
            p.iter_mut().for_each(|v| *v *= k);
            slope *= k;
        }
        let mut t = 1.0;
        let mut accepted = None;
        for _ in 0..60 {
            let xn: Vec<f64> = x.iter().zip(&p).map(|(a, b)| a + t * b).collect();
            let (fnew, gnew) = fg(&xn);
            if fnew.is_finite()
                && gnew.iter().all(|v| v.is_finite())
                && fnew <= fx + 1e-4 * t * slope
            {
                accepted = Some((xn, fnew, gnew));
                break;
            }
            t *= 0.5;
        }
        let Some((xn, fnew, gnew)) = accepted else {
            // No descent possible along p: converged to machine precision
            // if the gradient is small, otherwise report failure.
            let ok = gmax(&g) <= 1e3 * gtol * (1.0 + fx.abs());
            return Minimum {
                x,
                value: fx,
                iterations: iter,
                converged: ok,
            };
        };
        let s: Vec<f64> = xn.iter().zip(&x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = gnew.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy: f64 = s.iter().zip(&y).map(|(a, b)| a * b).sum();
        let decrease = fx - fnew;
        x = xn;
        fx = fnew;
        g = gnew;
        if sy > 1e-300 {
            if first {
                let yy: f64 = y.iter().map(|v| v * v).sum();
                let scale = sy / yy;
                h = identity(n);
                h.iter_mut().enumerate().for_each(|(i, row)| row[i] = scale);
                first = false;
            }
            let rho = 1.0 / sy;
            // H ← (I − ρ s yᵀ) H (I − ρ y sᵀ) + ρ s sᵀ
            let hy: Vec<f64> = (0..n)
                .map(|i| (0..n).map(|j| h[i][j] * y[j]).sum())
                .collect();
            let yhy: f64 = y.iter().zip(&hy).map(|(a, b)| a * b).sum();
            for i in 0..n {
                for j in 0..n {
                    h[i][j] += -rho * (s[i] * hy[j] + hy[i] * s[j])
                        + (rho * rho * yhy + rho) * s[i] * s[j];
                }
            }
        }
        if decrease.abs() <= 1e-15 * (1.0 + fx.abs()) {
            stalls += 1;
            if stalls >= 3 {
                let ok = gmax(&g) <= 1e3 * gtol * (1.0 + fx.abs());
                return Minimum {
                    x,
                    value: fx,
                    iterations: iter + 1,
                    converged: ok,
                };
            }
        } else {
            stalls = 0;
        }
    }
    let ok = gmax(&g) <= gtol * (1.0 + fx.abs());
    Minimum {
        x,
        value: fx,
        iterations: max_iter,
        converged: ok,
    }
}

/// Fits a model without analytic gradients: Nelder–Mead on the negative
/// log-likelihood in log-parameter space, then the diagnostics every fit
/// reports. `from_log` maps a log-space point to parameters; `from_values`
/// maps standard errors (already in natural units) to the same struct.
pub(crate) fn fit_in_log_space<P, F>(
    neg_ll: F,
    start: &[f64],
    opts: &FitOptions,
    from_log: fn(&[f64]) -> P,
    from_values: fn(&[f64]) -> P,
    n_customers: f64,
    n_distinct: usize,
) -> Result<super::FitResult<P>, super::ClvError>
where
    F: Fn(&[f64]) -> f64,
{
    let m = nelder_mead(&neg_ll, start, 0.5, opts);
    if !m.converged {
        return Err(super::ClvError::DidNotConverge {
            iterations: m.iterations,
            log_likelihood: -m.value,
        });
    }
    let standard_errors = if opts.standard_errors {
        standard_errors_from_log_space(&neg_ll, &m.x).map(|se| from_values(&se))
    } else {
        None
    };
    Ok(super::FitResult {
        params: from_log(&m.x),
        log_likelihood: -m.value,
        n_customers: n_customers.round() as u64,
        n_distinct,
        iterations: m.iterations,
        standard_errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nelder_mead_finds_rosenbrock_minimum() {
        let rosen = |x: &[f64]| (1.0 - x[0]).powi(2) + 100.0 * (x[1] - x[0] * x[0]).powi(2);
        let m = nelder_mead(rosen, &[-1.2, 1.0], 0.5, &FitOptions::default());
        assert!(m.converged);
        assert!(
            (m.x[0] - 1.0).abs() < 1e-5 && (m.x[1] - 1.0).abs() < 1e-5,
            "{:?}",
            m.x
        );
    }

    #[test]
    fn bfgs_finds_rosenbrock_minimum() {
        let fg = |x: &[f64]| {
            let f = (1.0 - x[0]).powi(2) + 100.0 * (x[1] - x[0] * x[0]).powi(2);
            let g0 = -2.0 * (1.0 - x[0]) - 400.0 * x[0] * (x[1] - x[0] * x[0]);
            let g1 = 200.0 * (x[1] - x[0] * x[0]);
            (f, vec![g0, g1])
        };
        let m = bfgs(fg, &[-1.2, 1.0], 500, 1e-10, 2.0);
        assert!(m.converged);
        assert!(
            (m.x[0] - 1.0).abs() < 1e-6 && (m.x[1] - 1.0).abs() < 1e-6,
            "{:?}",
            m.x
        );
    }

    #[test]
    fn hessian_and_inverse_of_quadratic() {
        // f = x² + xy + 2y² → H = [[2,1],[1,4]], H⁻¹ = [[4,-1],[-1,2]]/7
        let f = |x: &[f64]| x[0] * x[0] + x[0] * x[1] + 2.0 * x[1] * x[1];
        let h = numerical_hessian(f, &[0.3, -0.2], 1e-3);
        assert!((h[0][0] - 2.0).abs() < 1e-6 && (h[0][1] - 1.0).abs() < 1e-6);
        let inv = invert_spd(&h).unwrap();
        assert!((inv[0][0] - 4.0 / 7.0).abs() < 1e-6);
        assert!((inv[0][1] + 1.0 / 7.0).abs() < 1e-6);
        assert!(invert_spd(&[vec![1.0, 2.0], vec![2.0, 1.0]]).is_none());
    }

    #[test]
    fn chunked_sum_matches_serial() {
        let n = 100_003;
        let total = chunked_sum(n, |r| r.map(|i| i as f64).sum());
        assert_eq!(total, (n as f64 - 1.0) * n as f64 / 2.0);
    }
}

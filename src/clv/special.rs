//! Special functions needed by the purchase and spend models.
//!
//! Everything here is written for the parameter ranges that occur in CLV
//! models (positive shape/scale parameters, arguments of 2F1 in `[0, 1)` after
//! transformation) and favours accuracy over raw speed. All functions are pure.

use super::ClvError;

/// ln(2π)/2, used by the Lanczos approximation.
const HALF_LN_2PI: f64 = 0.918_938_533_204_672_8;

/// Lanczos coefficients for g = 7, n = 9 (≈ 1e-15 relative accuracy).
const LANCZOS_G: f64 = 7.0;
const LANCZOS: [f64; 9] = [
    0.999_999_999_999_809_9,
    676.520_368_121_885_1,
    -1_259.139_216_722_402_8,
    771.323_428_777_653_1,
    -176.615_029_162_140_6,
    12.507_343_278_686_905,
    -0.138_571_095_265_720_12,
    9.984_369_578_019_572e-6,
    1.505_632_735_149_311_6e-7,
];

/// Natural log of |Γ(x)|, because likelihoods need ratios of huge gamma
/// values that would overflow if computed directly.
///
/// Returns `+inf` at the poles (x = 0, -1, -2, ...).
pub fn ln_gamma(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x <= 0.0 && x == x.floor() {
        return f64::INFINITY;
    }
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1-x) = π / sin(πx)
        let s = (std::f64::consts::PI * x).sin().abs();
        return std::f64::consts::PI.ln() - s.ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut acc = LANCZOS[0];
    for (i, c) in LANCZOS.iter().enumerate().skip(1) {
        acc += c / (x + i as f64);
    }
    let t = x + LANCZOS_G + 0.5;
    HALF_LN_2PI + (x + 0.5) * t.ln() - t + acc.ln()
}

/// Digamma ψ(x) = d/dx lnΓ(x) for x > 0, needed for analytic likelihood
/// gradients. Recurrence up to x ≥ 6, then the asymptotic series.
pub fn digamma(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        return f64::NAN;
    }
    let mut x = x;
    let mut acc = 0.0;
    while x < 12.0 {
        acc -= 1.0 / x;
        x += 1.0;
    }
    let inv = 1.0 / x;
    let inv2 = inv * inv;
    acc + x.ln()
        - 0.5 * inv
        - inv2
            * (1.0 / 12.0
                - inv2 * (1.0 / 120.0 - inv2 * (1.0 / 252.0 - inv2 * (1.0 / 240.0 - inv2 / 132.0))))
}

/// ln B(a, b) = lnΓ(a) + lnΓ(b) - lnΓ(a+b), the log of the Beta function,
/// used by the beta-geometric dropout process.
pub fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// ln(e^a + e^b) without overflow/underflow, so that sums of likelihood
/// components can stay in log space. Handles `-inf` operands.
pub fn log_sum_exp(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a >= b { (a, b) } else { (b, a) };
    if hi == f64::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    if hi == f64::INFINITY {
        return f64::INFINITY;
    }
    hi + (lo - hi).exp().ln_1p()
}

/// ln(e^a - e^b) for a ≥ b, so that differences of tiny positive terms can be
/// taken in log space. Returns `-inf` when a == b and NaN when a < b.
pub fn log_diff_exp(a: f64, b: f64) -> f64 {
    if b > a {
        return f64::NAN;
    }
    if b == f64::NEG_INFINITY {
        return a;
    }
    if a == b {
        return f64::NEG_INFINITY;
    }
    a + ln_one_minus_exp(b - a)
}

/// ln(1 - e^x) for x ≤ 0, accurate both near 0 and for very negative x
/// (Mächler's switch at -ln 2).
pub fn ln_one_minus_exp(x: f64) -> f64 {
    if x > -std::f64::consts::LN_2 {
        (-x.exp_m1()).ln()
    } else {
        (-x.exp()).ln_1p()
    }
}

/// Maximum number of series terms before [`hyp2f1`] gives up.
const HYP2F1_MAX_TERMS: usize = 10_000_000;

/// Gauss hypergeometric function ₂F₁(a, b; c; z), needed by the BG/NBD
/// expectations and the Pareto/NBD likelihood.
///
/// Evaluated by its power series for `0 ≤ z < 1`; for `z < 0` the Pfaff
/// transformation ₂F₁(a,b;c;z) = (1-z)^(-a) ₂F₁(a, c-b; c; z/(z-1)) maps the
/// argument into `[0, 1)`. The series is summed with rescaling so that
/// intermediate terms may exceed the f64 range (large `a`, `b`, as happen for
/// heavy buyers), and stops only once the geometric tail bound is below
/// machine precision. Returns an error when `c` is a non-positive integer,
/// when `z ≥ 1` (divergent) or when the series needs more than ten million
/// terms (|z| extremely close to 1).
pub fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> Result<f64, ClvError> {
    let (sign, ln_abs) = ln_hyp2f1_signed(a, b, c, z)?;
    Ok(sign * ln_abs.exp())
}

/// ln ₂F₁(a, b; c; z) for arguments where the function is positive (always
/// the case in the CLV models: a, b, c > 0 and z ≥ 0). Lets callers combine
/// huge hypergeometric values with tiny powers in log space. Errors if the
/// value is not positive.
pub fn ln_hyp2f1(a: f64, b: f64, c: f64, z: f64) -> Result<f64, ClvError> {
    let (sign, ln_abs) = ln_hyp2f1_signed(a, b, c, z)?;
    if sign > 0.0 {
        Ok(ln_abs)
    } else {
        Err(ClvError::Numerical(format!(
            "2F1({a}, {b}; {c}; {z}) is not positive"
        )))
    }
}

/// (sign, ln|₂F₁|): lets callers keep huge or sign-changing values (e.g. a
/// negative `c`) in log space. The workhorse behind [`hyp2f1`] and
/// [`ln_hyp2f1`].
pub fn ln_hyp2f1_signed(a: f64, b: f64, c: f64, z: f64) -> Result<(f64, f64), ClvError> {
    if !(a.is_finite() && b.is_finite() && c.is_finite() && z.is_finite()) {
        return Err(ClvError::Numerical(format!(
            "2F1 arguments must be finite (a={a}, b={b}, c={c}, z={z})"
        )));
    }
    if c <= 0.0 && c == c.floor() {
        return Err(ClvError::Numerical(format!(
            "2F1 undefined for non-positive integer c = {c}"
        )));
    }
    if z == 0.0 {
        return Ok((1.0, 0.0));
    }
    if z < 0.0 {
        // Pfaff transformation into [0, 1).
        let w = z / (z - 1.0);
        let (s, l) = series(a, c - b, c, w)?;
        return Ok((s, l - a * (1.0 - z).ln()));
    }
    series(a, b, c, z)
}

/// ln ₂F₁(a, b; a + 1; z) for a > 0, a + 1 − b > 0 and 0 ≤ z < 1: the form
/// the Pareto/NBD likelihood needs.
///
/// Its power series shrinks like zⁿ, so as z → 1 it needs about 36 / (1 − z)
/// terms — hundreds of thousands per customer when one rate's scale dwarfs
/// the other's, which is where an optimizer's first steps often go. Past
/// z = 0.9 the connection formula to 1 − z (Abramowitz & Stegun 15.3.6)
/// answers instead; its first series has equal second and third parameters
/// and collapses to z^(−a):
///
/// F = Γ(a+1) Γ(1−b) / Γ(a+1−b) · z^(−a)
///   + a / (b−1) · (1−z)^(1−b) · ₂F₁(1, a+1−b; 2−b; 1−z).
///
/// When b is within 10⁻⁴ of an integer the two terms nearly cancel (Γ(1−b)
/// has a pole), and when their sum is not positive, the direct series
/// answers.
pub fn ln_hyp2f1_c_is_a_plus_1(a: f64, b: f64, z: f64) -> Result<f64, ClvError> {
    let near_integer = (b - b.round()).abs() < 1e-4;
    if z <= 0.9 || near_integer || !(a > 0.0 && a + 1.0 - b > 0.0) {
        return ln_hyp2f1(a, b, a + 1.0, z);
    }
    let gamma_sign = |x: f64| {
        if x > 0.0 || (x.floor() as i64) % 2 == 0 {
            1.0
        } else {
            -1.0
        }
    };
    let first_sign = gamma_sign(1.0 - b);
    let first_ln = ln_gamma(a + 1.0) + ln_gamma(1.0 - b) - ln_gamma(a + 1.0 - b) - a * z.ln();
    let second = ln_hyp2f1_signed(1.0, a + 1.0 - b, 2.0 - b, 1.0 - z).ok();
    let total = second.and_then(|(series_sign, series_ln)| {
        let second_sign = series_sign * (b - 1.0).signum();
        let second_ln = (a / (b - 1.0)).abs().ln() + (1.0 - b) * (1.0 - z).ln() + series_ln;
        let (big, small, big_sign, small_sign) = if first_ln >= second_ln {
            (first_ln, second_ln, first_sign, second_sign)
        } else {
            (second_ln, first_ln, second_sign, first_sign)
        };
        if big_sign < 0.0 {
            return None;
        }
        let ln = if small_sign > 0.0 {
            log_sum_exp(big, small)
        } else if big > small {
            log_diff_exp(big, small)
        } else {
            return None;
        };
        ln.is_finite().then_some(ln)
    });
    match total {
        Some(ln) => Ok(ln),
        None => ln_hyp2f1(a, b, a + 1.0, z),
    }
}

/// Power series in rescaled arithmetic; returns (sign, ln|sum|).
fn series(a: f64, b: f64, c: f64, z: f64) -> Result<(f64, f64), ClvError> {
    let terminating = |v: f64| v <= 0.0 && v == v.floor();
    if z >= 1.0 && !(terminating(a) || terminating(b)) {
        return Err(ClvError::Numerical(format!(
            "2F1 series diverges for z = {z} >= 1"
        )));
    }
    const BIG: f64 = 1e200;
    let ln_big = BIG.ln();
    let mut term = 1.0_f64;
    let mut sum = 1.0_f64;
    let mut ln_scale = 0.0_f64;
    for n in 0..HYP2F1_MAX_TERMS {
        let nf = n as f64;
        let ratio = (a + nf) * (b + nf) / ((c + nf) * (nf + 1.0)) * z;
        term *= ratio;
        sum += term;
        if term == 0.0 {
            break;
        }
        if sum.abs() > BIG || term.abs() > BIG {
            sum /= BIG;
            term /= BIG;
            ln_scale += ln_big;
        }
        let r = ratio.abs();
        if r < 1.0 && term.abs() <= f64::EPSILON * 0.5 * (1.0 - r) * sum.abs() {
            break;
        }
        if n + 1 == HYP2F1_MAX_TERMS {
            return Err(ClvError::Numerical(format!(
                "2F1({a}, {b}; {c}; {z}) series did not converge"
            )));
        }
    }
    if sum == 0.0 || !sum.is_finite() {
        return Err(ClvError::Numerical(format!(
            "2F1({a}, {b}; {c}; {z}) evaluated to {sum}"
        )));
    }
    Ok((sum.signum(), sum.abs().ln() + ln_scale))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_connection_formula_agrees_with_the_series_near_one() {
        for &(a, b) in &[
            (2.3, 1.6),
            (10.5, 1.2),
            (0.8, 1.7),
            (50.0, 1.5),
            (3.0, 0.4),
            (7.25, 2.6),
            (1.5, 1.0 + 3e-4),
        ] {
            for &z in &[0.905, 0.95, 0.99, 0.999] {
                let direct = ln_hyp2f1(a, b, a + 1.0, z).unwrap();
                let connected = ln_hyp2f1_c_is_a_plus_1(a, b, z).unwrap();
                assert!(
                    (direct - connected).abs() <= 1e-9 * direct.abs().max(1.0),
                    "a={a} b={b} z={z}: series {direct}, connection {connected}"
                );
            }
        }
    }

    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-300)
    }

    #[test]
    fn ln_gamma_known_values() {
        assert!(ln_gamma(1.0).abs() < 1e-14);
        assert!(ln_gamma(2.0).abs() < 1e-14);
        // Γ(0.5) = √π
        assert!(close(ln_gamma(0.5), 0.5 * std::f64::consts::PI.ln(), 1e-14));
        // Γ(10) = 9! = 362880
        assert!(close(ln_gamma(10.0), 362_880.0_f64.ln(), 1e-14));
        // lnΓ(100) = ln(99!)
        assert!(close(ln_gamma(100.0), 359.134_205_369_575_4, 1e-13));
        // Γ(0.1) = 9.513507698668732
        assert!(close(ln_gamma(0.1), 9.513_507_698_668_732_f64.ln(), 1e-13));
        // Γ(-0.5) = -2√π → ln|Γ| = ln(2√π)
        assert!(close(
            ln_gamma(-0.5),
            (2.0 * std::f64::consts::PI.sqrt()).ln(),
            1e-13
        ));
        // Large argument against Stirling with correction terms.
        let x: f64 = 1e6;
        let stirling = (x - 0.5) * x.ln() - x + HALF_LN_2PI + 1.0 / (12.0 * x);
        assert!(close(ln_gamma(x), stirling, 1e-14));
        assert_eq!(ln_gamma(0.0), f64::INFINITY);
    }

    #[test]
    fn digamma_known_values() {
        // ψ(1) = -γ, ψ(1/2) = -γ - 2 ln 2
        let euler = 0.577_215_664_901_532_9;
        assert!(close(digamma(1.0), -euler, 1e-13));
        assert!(close(digamma(0.5), -euler - 2.0 * 2.0_f64.ln(), 1e-13));
        // Matches a central difference of ln_gamma.
        for &x in &[0.243_f64, 3.7, 50.0, 1234.5] {
            let h = 1e-5 * x.max(1.0);
            let fd = (ln_gamma(x + h) - ln_gamma(x - h)) / (2.0 * h);
            assert!((digamma(x) - fd).abs() < 1e-6 * (1.0 + fd.abs()), "x={x}");
        }
    }

    #[test]
    fn ln_beta_identity() {
        // B(2, 3) = 1/12
        assert!(close(ln_beta(2.0, 3.0), (1.0_f64 / 12.0).ln(), 1e-13));
    }

    #[test]
    fn hyp2f1_elementary_identities() {
        // 2F1(1,1;2;z) = -ln(1-z)/z
        for &z in &[0.1, 0.5, 0.9, 0.99, -0.5, -3.0] {
            let expected = -(1.0_f64 - z).ln() / z;
            let got = hyp2f1(1.0, 1.0, 2.0, z).unwrap();
            assert!(close(got, expected, 1e-12), "z={z}: {got} vs {expected}");
        }
        // 2F1(a,b;b;z) = (1-z)^-a
        for &(a, z) in &[(0.3, 0.7), (2.5, 0.95), (7.0, -2.0)] {
            let expected = (1.0_f64 - z).powf(-a);
            let got = hyp2f1(a, 1.7, 1.7, z).unwrap();
            assert!(
                close(got, expected, 1e-12),
                "a={a} z={z}: {got} vs {expected}"
            );
        }
        // 2F1(1/2,1/2;3/2;z^2) = arcsin(z)/z
        let z: f64 = 0.8;
        let got = hyp2f1(0.5, 0.5, 1.5, z * z).unwrap();
        assert!(close(got, z.asin() / z, 1e-12));
        // Gauss's theorem at z→1 approached: 2F1(a,b;c;1) = Γ(c)Γ(c-a-b)/(Γ(c-a)Γ(c-b))
        let (a, b, c) = (0.3, 0.4, 2.0);
        let gauss = (ln_gamma(c) + ln_gamma(c - a - b) - ln_gamma(c - a) - ln_gamma(c - b)).exp();
        let near = hyp2f1(a, b, c, 1.0 - 1e-5).unwrap();
        assert!(close(near, gauss, 1e-4), "{near} vs {gauss}");
        // Terminating polynomial: 2F1(-2, b; c; z) = 1 - 2bz/c + b(b+1)z²/(c(c+1))
        let (b, c, z) = (3.0, 4.0, 0.5);
        let poly = 1.0 - 2.0 * b * z / c + b * (b + 1.0) * z * z / (c * (c + 1.0));
        assert!(close(hyp2f1(-2.0, b, c, z).unwrap(), poly, 1e-14));
    }

    #[test]
    fn hyp2f1_large_parameters_stay_finite_in_log_space() {
        // (1-z)^-a with a huge: value overflows f64 but its log does not.
        let l = ln_hyp2f1(800.0, 5.0, 5.0, 0.9).unwrap();
        assert!(close(l, -800.0 * 0.1_f64.ln(), 1e-12));
        assert!(hyp2f1(1.0, 1.0, 0.0, 0.5).is_err());
        assert!(hyp2f1(1.0, 1.0, 2.0, 1.5).is_err());
    }

    #[test]
    fn log_space_helpers() {
        assert!(close(
            log_sum_exp(1000.0, 1000.0),
            1000.0 + 2.0_f64.ln(),
            1e-15
        ));
        assert_eq!(log_sum_exp(f64::NEG_INFINITY, 3.0), 3.0);
        assert!(close(
            log_diff_exp(2.0, 1.0),
            (2.0_f64.exp() - 1.0_f64.exp()).ln(),
            1e-14
        ));
        assert_eq!(log_diff_exp(1.0, 1.0), f64::NEG_INFINITY);
        assert!(close(ln_one_minus_exp(-1e-20), (1e-20_f64).ln(), 1e-12));
    }
}

//! BG/NBD transaction simulator shared by the simulation test and the
//! `fit_million` example (both include this file with `#[path]`).

use chrono::{DateTime, Duration, NaiveDate, Utc};
use journey_ledger::clv::Transaction;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Beta, Distribution, Exp, Gamma};

/// Cohort start: 1997-01-01T00:00Z (like CDNOW).
#[allow(dead_code)]
pub fn cohort_start() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(1997, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc())
        .expect("valid date")
}

/// Simulates `n` customers from BG/NBD(r, alpha, a, b) with alpha per week.
/// First purchases are spread uniformly over the first `acquisition_days`
/// days; purchases are generated up to `horizon_days` after the cohort start.
/// Each purchase is stamped with its exact (sub-day) instant and a random
/// amount between 5.00 and 100.00.
#[allow(clippy::too_many_arguments, dead_code)]
pub fn simulate_bgnbd(
    n: usize,
    r: f64,
    alpha: f64,
    a: f64,
    b: f64,
    acquisition_days: u32,
    horizon_days: f64,
    seed: u64,
) -> Vec<Transaction> {
    let mut rng = StdRng::seed_from_u64(seed);
    let lambda_dist = Gamma::new(r, 1.0 / alpha).expect("gamma params");
    let p_dist = Beta::new(a, b).expect("beta params");
    let start = cohort_start();
    let mut out = Vec::with_capacity(n * 3);
    for i in 0..n {
        let customer = format!("sim{i:07}");
        let first_day = rng.random_range(0..acquisition_days) as f64 + rng.random::<f64>();
        let lambda: f64 = lambda_dist.sample(&mut rng);
        let p: f64 = p_dist.sample(&mut rng);
        let mut t_days = first_day;
        let mut push = |t_days: f64, rng: &mut StdRng| {
            out.push(Transaction {
                customer: customer.clone(),
                at: start + Duration::milliseconds((t_days * 86_400_000.0) as i64),
                amount_minor: rng.random_range(500..10_000),
            });
        };
        push(t_days, &mut rng);
        if lambda <= 0.0 {
            continue;
        }
        let gap = Exp::new(lambda).expect("rate");
        loop {
            let dt_weeks: f64 = gap.sample(&mut rng);
            t_days += dt_weeks * 7.0;
            if t_days >= horizon_days {
                break;
            }
            push(t_days, &mut rng);
            if rng.random::<f64>() < p {
                break;
            }
        }
    }
    out
}

/// Simulates `n` BG/NBD histories directly as (x, tₓ, T) in weeks, with
/// purchase times rounded to whole days but never merged. Unlike
/// [`simulate_bgnbd`] + day aggregation, this matches the continuous-time
/// model exactly up to rounding, so it checks the estimator itself.
#[allow(dead_code)]
pub fn simulate_bgnbd_histories(
    n: usize,
    r: f64,
    alpha: f64,
    a: f64,
    b: f64,
    seed: u64,
) -> Vec<(f64, f64, f64)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let lambda_dist = Gamma::new(r, 1.0 / alpha).expect("gamma params");
    let p_dist = Beta::new(a, b).expect("beta params");
    let day = |w: f64| (w * 7.0).round() / 7.0;
    (0..n)
        .map(|_| {
            // T between 27 and 39 weeks, on the day grid.
            let t_cal = f64::from(189 + rng.random_range(0..84u32)) / 7.0;
            let lambda: f64 = lambda_dist.sample(&mut rng);
            let p: f64 = p_dist.sample(&mut rng);
            let (mut t, mut x, mut t_x) = (0.0, 0.0, 0.0);
            if let Ok(gap) = Exp::new(lambda) {
                loop {
                    t += gap.sample(&mut rng);
                    if t >= t_cal {
                        break;
                    }
                    x += 1.0;
                    t_x = t;
                    if rng.random::<f64>() < p {
                        break;
                    }
                }
            }
            (x, day(t_x).min(t_cal), t_cal)
        })
        .collect()
}

//! Parameter recovery: simulate customers from known BG/NBD parameters
//! (seeded), fit, and check the estimates land near the truth.

#[path = "common/sim.rs"]
mod sim;

use chrono::Duration;
use journey_ledger::clv::{
    summarize, BgNbdParams, CompressedData, FitOptions, FitResult, PurchaseModel, TimeUnit,
};

const TRUTH: BgNbdParams = BgNbdParams {
    r: 0.243,
    alpha: 4.414,
    a: 0.793,
    b: 2.426,
};

/// Asserts every estimate is within `max_z` standard errors and `max_rel`
/// relative error of the truth.
fn assert_recovers(fit: &FitResult<BgNbdParams>, max_z: f64, max_rel: f64) {
    let se = fit.standard_errors.expect("standard errors");
    let p = fit.params;
    for (name, est, sd, want) in [
        ("r", p.r, se.r, TRUTH.r),
        ("alpha", p.alpha, se.alpha, TRUTH.alpha),
        ("a", p.a, se.a, TRUTH.a),
        ("b", p.b, se.b, TRUTH.b),
    ] {
        let z = (est - want) / sd;
        assert!(
            z.abs() < max_z,
            "{name}: est {est} se {sd} truth {want} (z = {z:.2})"
        );
        assert!(
            ((est - want) / want).abs() < max_rel,
            "{name}: est {est} vs {want}"
        );
    }
}

/// Estimator check on model-exact histories (times on the day grid, no
/// same-day merging).
#[test]
fn bgnbd_recovers_parameters_from_model_histories() {
    let h = sim::simulate_bgnbd_histories(60_000, TRUTH.r, TRUTH.alpha, TRUTH.a, TRUTH.b, 2024);
    let data = CompressedData::from_triples(h);
    assert!(data.len() < 30_000, "compression: {}", data.len());
    let fit = BgNbdParams::fit(&data, &FitOptions::default()).expect("fit");
    assert_eq!(fit.n_customers, 60_000);
    assert_recovers(&fit, 3.5, 0.15);
}

/// End-to-end: transactions → day-level summaries → fit. Day aggregation
/// merges the ~4 % of purchases that fall on the same day as another one
/// (heavy buyers), which biases the rate slightly downwards (alpha up a few
/// percent); at this sample size that is well inside the tolerance.
#[test]
fn bgnbd_recovers_parameters_through_the_summary_pipeline() {
    let n = 40_000;
    let txs = sim::simulate_bgnbd(n, TRUTH.r, TRUTH.alpha, TRUTH.a, TRUTH.b, 84, 273.0, 42);
    let end = sim::cohort_start() + Duration::days(273) - Duration::nanoseconds(1);
    let s = summarize(&txs, end, TimeUnit::Week).expect("summaries");
    assert_eq!(s.len(), n);
    let data = CompressedData::from_summaries(&s);
    assert!(data.len() < n / 2, "compression: {}", data.len());
    let fit = BgNbdParams::fit(&data, &FitOptions::default()).expect("fit");
    assert_recovers(&fit, 4.0, 0.15);
    // The fitted model's cohort forecast matches the true model's closely.
    let e_true = PurchaseModel::BgNbd(TRUTH)
        .expected_purchases(39.0)
        .expect("e");
    let e_fit = PurchaseModel::BgNbd(fit.params)
        .expected_purchases(39.0)
        .expect("e");
    assert!(
        ((e_fit - e_true) / e_true).abs() < 0.06,
        "{e_fit} vs {e_true}"
    );
}

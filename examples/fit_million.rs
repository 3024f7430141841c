//! Simulates 1,000,000 BG/NBD customers (parameters = the published CDNOW
//! fit), runs them through the summary pipeline, then times compression +
//! BG/NBD fit. Prints one JSON object.
//!
//! `cargo run --release --example fit_million`

#[path = "../tests/common/sim.rs"]
mod sim;

use std::time::Instant;

use chrono::Duration;
use journey_ledger::clv::{summarize, BgNbdParams, CompressedData, FitOptions, TimeUnit};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n = 1_000_000;
    let truth = BgNbdParams {
        r: 0.243,
        alpha: 4.414,
        a: 0.793,
        b: 2.426,
    };
    let t0 = Instant::now();
    let txs = sim::simulate_bgnbd(n, truth.r, truth.alpha, truth.a, truth.b, 84, 273.0, 7);
    let simulate_s = t0.elapsed().as_secs_f64();

    let end = sim::cohort_start() + Duration::days(273) - Duration::nanoseconds(1);
    let t1 = Instant::now();
    let summaries = summarize(&txs, end, TimeUnit::Week)?;
    let summarize_s = t1.elapsed().as_secs_f64();

    let t2 = Instant::now();
    let data = CompressedData::from_summaries(&summaries);
    let compress_s = t2.elapsed().as_secs_f64();
    let t3 = Instant::now();
    let fit = BgNbdParams::fit(&data, &FitOptions::point_estimates())?;
    let fit_s = t3.elapsed().as_secs_f64();
    let t4 = Instant::now();
    let fit_se = BgNbdParams::fit(&data, &FitOptions::default())?;
    let fit_with_se_s = t4.elapsed().as_secs_f64();

    let out = serde_json::json!({
        "customers": summaries.len(),
        "transactions": txs.len(),
        "distinct_histories": data.len(),
        "true_params": truth,
        "fit": fit,
        "standard_errors": fit_se.standard_errors,
        "seconds": {
            "simulate": simulate_s,
            "summarize_transactions": summarize_s,
            "compress": compress_s,
            "fit": fit_s,
            "compress_plus_fit": compress_s + fit_s,
            "fit_with_standard_errors": fit_with_se_s,
        },
        "threads": std::thread::available_parallelism().map(|v| v.get()).unwrap_or(1),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

//! Fits BG/NBD, Pareto/NBD and Gamma-Gamma on the full CDNOW master data set
//! (23,570 customers; 39-week calibration ending 1997-09-30) and on the
//! 1/10 sample fixture, timing each fit. Prints one JSON object.
//!
//! `cargo run --release --example cdnow_master [-- /path/to/cdnow_master.txt]`

use std::time::Instant;

use chrono::{DateTime, NaiveDate, Utc};
use journey_ledger::clv::{
    end_of_day, holdout_repeat_counts, holdout_report, summarize, BgNbdParams, CompressedData,
    FitOptions, GammaGammaData, GammaGammaParams, ParetoNbdParams, PurchaseModel, TimeUnit,
    Transaction,
};

type BoxErr = Box<dyn std::error::Error>;

fn parse_cents(s: &str) -> Result<i64, BoxErr> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 2 {
        return Err(format!("too many decimals in {s}").into());
    }
    let frac = format!("{frac:0<2}");
    Ok(whole.parse::<i64>()? * 100 + frac.parse::<i64>()?)
}

fn parse_date(s: &str) -> Result<DateTime<Utc>, BoxErr> {
    Ok(NaiveDate::parse_from_str(s, "%Y%m%d")?
        .and_hms_opt(0, 0, 0)
        .ok_or("midnight")?
        .and_utc())
}

/// Column positions of (customer, date, dollars) differ between the files.
fn load(
    path: &str,
    cols: (usize, usize, usize),
    skip_header: bool,
) -> Result<Vec<Transaction>, BoxErr> {
    let text = std::fs::read_to_string(path)?;
    let mut out = Vec::new();
    for line in text.lines().skip(usize::from(skip_header)) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.is_empty() {
            continue;
        }
        out.push(Transaction {
            customer: f[cols.0].to_string(),
            at: parse_date(f[cols.1])?,
            amount_minor: parse_cents(f[cols.2])?,
        });
    }
    Ok(out)
}

fn fit_all(name: &str, txs: &[Transaction]) -> Result<serde_json::Value, BoxErr> {
    let end = end_of_day(NaiveDate::from_ymd_opt(1997, 9, 30).ok_or("date")?);
    let t = Instant::now();
    let s = summarize(txs, end, TimeUnit::Week)?;
    let data = CompressedData::from_summaries(&s);
    let prep_s = t.elapsed().as_secs_f64();
    let opts = FitOptions::default();
    let t = Instant::now();
    let bg = BgNbdParams::fit(&data, &opts)?;
    let bg_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let pn = ParetoNbdParams::fit(&data, &opts)?;
    let pn_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let gg_data = GammaGammaData::from_summaries(&s, 100)?;
    let gg = GammaGammaParams::fit(&gg_data, &opts)?;
    let gg_s = t.elapsed().as_secs_f64();
    let holdout_end = end_of_day(NaiveDate::from_ymd_opt(1998, 6, 30).ok_or("date")?);
    let counts = holdout_repeat_counts(txs, end, holdout_end)?;
    let bg_holdout = holdout_report(&PurchaseModel::BgNbd(bg.params), &s, &counts, 39.0)?;
    let pn_holdout = holdout_report(&PurchaseModel::ParetoNbd(pn.params), &s, &counts, 39.0)?;
    Ok(serde_json::json!({
        "data": name,
        "transactions": txs.len(),
        "customers": s.len(),
        "repeat_buyers": s.iter().filter(|c| c.frequency > 0).count(),
        "distinct_histories": data.len(),
        "bgnbd": bg,
        "paretonbd": pn,
        "gamma_gamma": gg,
        "gamma_gamma_skipped_non_positive": gg_data.skipped_non_positive,
        "holdout_39_weeks": { "bgnbd": bg_holdout, "paretonbd": pn_holdout },
        "seconds": {
            "summarize_and_compress": prep_s,
            "bgnbd_fit": bg_s,
            "paretonbd_fit": pn_s,
            "gamma_gamma_fit": gg_s,
        },
        "note": "fit times include standard errors (numerical Hessian)"
    }))
}

fn main() -> Result<(), BoxErr> {
    let master = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/work/shared/data/cdnow_master.txt".to_string());
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/cdnow_sample.txt");
    let mut results = vec![fit_all("cdnow_sample", &load(sample, (0, 2, 4), false)?)?];
    match load(&master, (0, 1, 3), true) {
        Ok(txs) => results.push(fit_all("cdnow_master", &txs)?),
        Err(e) => eprintln!("skipping master data ({master}): {e}"),
    }
    println!("{}", serde_json::to_string_pretty(&results)?);
    Ok(())
}

//! Issue "CLV": importing the CDNOW sample into a real SQLite store and
//! fitting through the ledger reproduces the published estimates
//! (Fader, Hardie & Lee 2005; 39-week calibration ending 1997-09-30) to 3
//! significant figures.

use std::sync::Arc;

use chrono::NaiveDate;
use journey_ledger::clv::ledger::{self, FitModel, FitReport, FittedParams};
use journey_ledger::clv::{end_of_day, TimeUnit};
use journey_ledger::domain::Currency;
use journey_ledger::import::{import_file, ImportFormat};
use journey_ledger::store::sqlite::SqliteStore;
use journey_ledger::store::EventStore;
use journey_ledger::testing::temp_sqlite;

fn sig3(value: f64, published: f64, what: &str) {
    // Agreement to 3 significant figures: within half a unit of the third
    // significant digit of the published value.
    let unit = 10f64.powi(published.abs().log10().floor() as i32 - 2);
    assert!(
        (value - published).abs() <= unit / 2.0,
        "{what}: fitted {value}, published {published} (tolerance {})",
        unit / 2.0
    );
}

async fn fit_all() -> Vec<FitReport> {
    let (_dir, url) = temp_sqlite();
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(&url).await.unwrap());
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/cdnow_sample.txt");
    let report = import_file(store.clone(), fixture.as_ref(), ImportFormat::Cdnow, |_| {})
        .await
        .unwrap();
    assert_eq!(report.streams, 2_357);
    let transactions = ledger::load_transactions(store, Currency::USD)
        .await
        .unwrap();
    assert_eq!(
        transactions.len(),
        6_919,
        "one transaction per purchase line"
    );
    let end = end_of_day(NaiveDate::from_ymd_opt(1997, 9, 30).unwrap());
    [FitModel::Bgnbd, FitModel::Paretonbd, FitModel::Gammagamma]
        .into_iter()
        .map(|m| ledger::fit(&transactions, end, TimeUnit::Week, m, Currency::USD).unwrap())
        .collect()
}

#[tokio::test]
async fn cdnow_sample_reproduces_published_parameters() {
    let fits = fit_all().await;
    match &fits[0].params {
        FittedParams::BgNbd(p) => {
            sig3(p.r, 0.243, "BG/NBD r");
            sig3(p.alpha, 4.414, "BG/NBD alpha");
            sig3(p.a, 0.793, "BG/NBD a");
            sig3(p.b, 2.426, "BG/NBD b");
        }
        other => panic!("expected BG/NBD, got {other:?}"),
    }
    sig3(fits[0].log_likelihood, -9582.4, "BG/NBD log-likelihood");
    assert_eq!(fits[0].customers, 2_357);

    match &fits[1].params {
        FittedParams::ParetoNbd(p) => {
            sig3(p.r, 0.553, "Pareto/NBD r");
            sig3(p.alpha, 10.578, "Pareto/NBD alpha");
            sig3(p.s, 0.606, "Pareto/NBD s");
            sig3(p.beta, 11.669, "Pareto/NBD beta");
        }
        other => panic!("expected Pareto/NBD, got {other:?}"),
    }
    sig3(fits[1].log_likelihood, -9595.0, "Pareto/NBD log-likelihood");

    match &fits[2].params {
        FittedParams::GammaGamma(p) => {
            sig3(p.p, 6.25, "Gamma-Gamma p");
            sig3(p.q, 3.74, "Gamma-Gamma q");
            sig3(p.gamma, 15.44, "Gamma-Gamma gamma");
        }
        other => panic!("expected Gamma-Gamma, got {other:?}"),
    }
    assert_eq!(fits[2].customers, 946, "repeat buyers");
}

//! Issue 14: headless Chromium draws every workbench chart with data and no
//! script error, both from the self-contained report file (opened from
//! disk, so without any network) and from the live `/workbench` page of a
//! real server (library from the binary, data over GraphQL with an analyst
//! key). A screenshot per chart lands under `target/tmp/workbench/` for
//! review.
//!
//! The demo data is the CDNOW sample (calibration to 1997-09-30, holdout to
//! 1998-06-30) with the practice preset as the rules to compare with.
//! Skips, saying so, when `/usr/bin/chromium` is absent (`.ci/run` installs
//! Debian's `chromium`).

mod api_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use api_support::{key, TestServer, CHROMIUM};
use chrono::NaiveDate;
use journey_ledger::api::auth::Role;
use journey_ledger::backtest::churn_score::ChurnScoreSettings;
use journey_ledger::clv::TimeUnit;
use journey_ledger::import::{import_file, ImportFormat};
use journey_ledger::projections::rules::RuleSet;
use journey_ledger::report::{self, page, AnalysisSettings, ReportRequest};
use journey_ledger::store::EventStore;
use serde_json::Value;

/// Every chart the workbench must draw.
const CHARTS: [&str; 9] = [
    "stage-timeline",
    "stage-flows",
    "cohort-retention",
    "p-alive",
    "clv",
    "holdout-calibration",
    "tracking",
    "roc",
    "rules-diff",
];

fn chromium_missing(test: &str) -> bool {
    let missing = !Path::new(CHROMIUM).exists();
    if missing {
        eprintln!("SKIPPED {test}: {CHROMIUM} is not installed (apt-get install chromium)");
    }
    missing
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("workbench");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn practice() -> RuleSet {
    RuleSet::load(concat!(env!("CARGO_MANIFEST_DIR"), "/projections/presets/practice").as_ref())
        .unwrap()
}

fn request() -> ReportRequest {
    ReportRequest {
        calibration_end: NaiveDate::from_ymd_opt(1997, 9, 30).unwrap(),
        holdout_end: NaiveDate::from_ymd_opt(1998, 6, 30).unwrap(),
        unit: TimeUnit::Week,
    }
}

async fn import_sample(store: Arc<dyn EventStore>) {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/cdnow_sample.txt");
    import_file(store, fixture.as_ref(), ImportFormat::Cdnow, |_| {})
        .await
        .unwrap();
}

/// Runs headless Chromium on `url`; with `screenshot`, writes a PNG, else
/// returns the DOM after the scripts ran.
async fn chromium(url: &str, screenshot: Option<&Path>) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut command = api_support::headless_chromium(profile.path());
    command.args(["--hide-scrollbars", "--virtual-time-budget=30000"]);
    match screenshot {
        Some(png) => {
            command.arg("--window-size=1280,560");
            command.arg(format!("--screenshot={}", png.display()));
        }
        None => {
            command.arg("--dump-dom");
        }
    }
    let output = command.arg(url).output().await.expect("chromium runs");
    if let Some(png) = screenshot {
        let size = std::fs::metadata(png).map(|m| m.len()).unwrap_or(0);
        assert!(
            size > 10_000,
            "no screenshot of {url} (stderr: {})",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The page's own record of what it drew (see `report::page`).
fn drawn(dom: &str) -> Value {
    let marker = "<pre id=\"status\">";
    let start = dom
        .find(marker)
        .unwrap_or_else(|| panic!("no status element in:\n{dom}"))
        + marker.len();
    let end = start + dom[start..].find("</pre>").unwrap();
    let text = dom[start..end]
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("status is not JSON ({e}): {text}"))
}

fn assert_every_chart_drawn(status: &Value, what: &str) {
    assert_eq!(
        status["done"], true,
        "{what} did not finish drawing: {status}"
    );
    assert_eq!(
        status["errors"],
        serde_json::json!([]),
        "{what}: script errors"
    );
    for chart in CHARTS {
        let points = status["charts"][chart]["points"].as_u64().unwrap_or(0);
        assert!(points > 0, "{what}: chart {chart} drew no data: {status}");
    }
}

#[tokio::test]
async fn the_report_file_draws_every_chart_offline() {
    if chromium_missing("the_report_file_draws_every_chart_offline") {
        return;
    }
    let (_dir, url) = journey_ledger::testing::temp_sqlite();
    let store: Arc<dyn EventStore> = Arc::new(
        journey_ledger::store::sqlite::SqliteStore::open(&url)
            .await
            .unwrap(),
    );
    import_sample(store.clone()).await;
    let compare = practice();
    let workbench = report::build(
        store,
        &RuleSet::shipped_defaults(),
        Some(&compare),
        &ChurnScoreSettings::shipped(),
        &request(),
    )
    .await
    .unwrap();
    let html = page::report_html(&workbench).unwrap();
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "the report must not load anything from the network"
    );
    let out = screenshots();
    let file = out.join("report.html");
    std::fs::write(&file, html).unwrap();
    let address = format!("file://{}", file.display());
    assert_every_chart_drawn(&drawn(&chromium(&address, None).await), "report file");
    for chart in CHARTS {
        let png = out.join(format!("report-{chart}.png"));
        chromium(&format!("{address}?only={chart}"), Some(&png)).await;
    }
}

#[tokio::test]
async fn the_live_workbench_draws_every_chart_with_an_analyst_key() {
    if chromium_missing("the_live_workbench_draws_every_chart_with_an_analyst_key") {
        return;
    }
    let server = TestServer::start().await;
    import_sample(server.store.clone()).await;
    server.state.attach_analysis(AnalysisSettings {
        compare: Some(practice()),
        ..AnalysisSettings::shipped()
    });
    let page = format!(
        "{}/workbench?calibrationEnd=1997-09-30&holdoutEnd=1998-06-30#key={}",
        server.base,
        key(Role::Analyst)
    );
    assert_every_chart_drawn(&drawn(&chromium(&page, None).await), "live workbench");
    chromium(&page, Some(&screenshots().join("live-workbench.png"))).await;

    // An app key may not read the workbench: the page says why, draws nothing.
    let refused = format!(
        "{}/workbench?calibrationEnd=1997-09-30&holdoutEnd=1998-06-30#key={}",
        server.base,
        key(Role::App)
    );
    let dom = chromium(&refused, None).await;
    assert!(dom.contains("needs analyst or above"), "{dom}");
}

/// `validation` over GraphQL answers what `journey validate` does, for
/// analysts only, and names the field of a bad request.
#[tokio::test]
async fn analysts_validate_over_graphql() {
    let server = TestServer::start().await;
    import_sample(server.store.clone()).await;
    let query = r#"query($c: NaiveDate!, $h: NaiveDate!) {
        validation(calibrationEnd: $c, holdoutEnd: $h, unit: "week") }"#;
    let dates = serde_json::json!({"c": "1997-09-30", "h": "1998-06-30"});
    let answer = server.gql(Some(Role::Analyst), query, dates.clone()).await;
    let report = &answer["data"]["validation"];
    assert_eq!(report["customers"], 2357, "{answer}");
    assert_eq!(report["bought_again"], 684);
    let bgnbd = report["signals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["signal"] == "bgnbd_expected_purchases")
        .unwrap();
    assert!((bgnbd["auc"].as_f64().unwrap() - 0.772_524_5).abs() < 5e-4);

    let app = server.gql(Some(Role::App), query, dates).await;
    assert_eq!(app["errors"][0]["extensions"]["code"], "FORBIDDEN", "{app}");

    let backwards = serde_json::json!({"c": "1998-06-30", "h": "1997-09-30"});
    let bad = server.gql(Some(Role::Analyst), query, backwards).await;
    let message = bad["errors"][0]["message"].as_str().unwrap();
    assert!(message.starts_with("holdoutEnd:"), "{bad}");
}

//! Headless Chromium loads GraphiQL from the server — page, React and
//! GraphiQL all served by the binary — and runs a query through GraphiQL's
//! own fetcher (`?autorun=1`, see `assets/graphiql/journey-graphiql.js`).
//!
//! Skips, saying so, when `/usr/bin/chromium` is absent (`.ci/run` installs
//! Debian's `chromium`).

mod api_support;

use api_support::{key, TestServer, CHROMIUM};
use journey_ledger::api::auth::Role;
use serde_json::json;

#[tokio::test]
async fn graphiql_loads_offline_and_runs_a_query() {
    if !std::path::Path::new(CHROMIUM).exists() {
        eprintln!("SKIPPED graphiql_loads_offline_and_runs_a_query: {CHROMIUM} is not installed (apt-get install chromium)");
        return;
    }
    let server = TestServer::start().await;
    server
        .ok(
            r#"mutation { registerCustomer(customerId: "browser", occurredAt: "2024-01-01T00:00:00Z", input: {channel: "web"}) { version } }"#,
            json!({}),
        )
        .await;
    let query = r#"{ customer(id: "browser") { id acquisitionChannel } }"#;
    let headers = json!({"Authorization": format!("Bearer {}", key(Role::App))}).to_string();
    let mut url = url::Url::parse(&format!("{}/graphql", server.base)).unwrap();
    url.query_pairs_mut()
        .append_pair("autorun", "1")
        .append_pair("query", query)
        .append_pair("headers", &headers);
    let profile = tempfile::tempdir().unwrap();
    let output = api_support::headless_chromium(profile.path())
        .args(["--virtual-time-budget=20000", "--dump-dom"])
        .arg(url.as_str())
        .output()
        .await
        .expect("chromium runs");
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(
        dom.contains("graphiql-container"),
        "GraphiQL did not render; stderr:\n{}\nDOM:\n{dom}",
        String::from_utf8_lossy(&output.stderr)
    );
    let marker = "<pre id=\"autorun-result\">";
    let start = dom.find(marker).expect("result element") + marker.len();
    let end = start + dom[start..].find("</pre>").unwrap();
    let result: serde_json::Value = serde_json::from_str(&unescape(&dom[start..end]))
        .unwrap_or_else(|e| panic!("autorun result is not JSON ({e}): {}", &dom[start..end]));
    assert_eq!(result["data"]["customer"]["id"], "browser", "{result}");
    assert_eq!(result["data"]["customer"]["acquisitionChannel"], "web");
}

/// Undoes the HTML escaping of a serialized text node.
fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&")
}

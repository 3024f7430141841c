//! The API over the running projections, on a real HTTP server: a customer
//! query returns stage history, loyalty and alerts; mutations reach the
//! stage-transition and alert subscriptions through the live runner; the
//! redemption rule reads the projected balance; filters and pages work.

mod api_support;

use api_support::{error_code, key, ws, TestServer};
use journey_ledger::api::auth::Role;
use serde_json::{json, Value};

const RESULT: &str = "{ events { position eventType } }";

fn mutation(name: &str, customer: &str, at: &str, input: &str) -> String {
    format!(
        r#"mutation {{ {name}(customerId: "{customer}", occurredAt: "{at}", input: {input}) {RESULT} }}"#
    )
}

async fn register(server: &TestServer, customer: &str, at: &str) {
    server
        .ok(
            &mutation("registerCustomer", customer, at, r#"{channel: "web"}"#),
            json!({}),
        )
        .await;
}

async fn order(server: &TestServer, customer: &str, at: &str, id: &str, cents: i64) {
    let input = format!(
        r#"{{orderId: "{id}", amount: {{minor: {cents}, currency: "USD"}}, itemCount: 1}}"#
    );
    server
        .ok(&mutation("placeOrder", customer, at, &input), json!({}))
        .await;
}

/// Waits until the projections have applied everything appended so far.
async fn caught_up(server: &TestServer) {
    for _ in 0..200 {
        let status = server
            .ok(
                "{ projectionStatus { headPosition projections { lag } } }",
                json!({}),
            )
            .await;
        let lags: Vec<u64> = status["projectionStatus"]["projections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["lag"].as_u64().unwrap())
            .collect();
        if !lags.is_empty() && lags.iter().all(|l| *l == 0) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("projections did not catch up");
}

#[tokio::test]
async fn mutations_reach_stage_and_alert_subscriptions_through_the_runner() {
    let server = TestServer::start_projected().await;
    let (mut stages, mut alerts) =
        ws::stage_and_alert_feeds(&server.ws_url(), &key(Role::App)).await;

    register(&server, "sub", "2024-03-01T10:00:00Z").await;
    let first = ws::next_json(&mut stages).await;
    assert_eq!(
        first["payload"]["data"]["stageChanged"],
        json!({
            "customerId": "sub", "from": null, "to": "prospect", "at": "2024-03-01T10:00:00+00:00"
        })
    );
    order(&server, "sub", "2024-03-02T10:00:00Z", "o1", 5_000).await;
    let second = ws::next_json(&mut stages).await;
    assert_eq!(
        second["payload"]["data"]["stageChanged"]["from"],
        "prospect"
    );
    assert_eq!(second["payload"]["data"]["stageChanged"]["to"], "new");

    // Three complaints within 30 days: one alert, at the third.
    for (n, day) in [(1, 3), (2, 10), (3, 20)] {
        let input = format!(r#"{{complaintId: "k{n}", category: "delivery"}}"#);
        let at = format!("2024-03-{day:02}T10:00:00Z");
        server
            .ok(&mutation("fileComplaint", "sub", &at, &input), json!({}))
            .await;
    }
    let alert = ws::next_json(&mut alerts).await;
    assert_eq!(
        alert["payload"]["data"]["alertRaised"],
        json!({
            "customerId": "sub", "kind": "complaints", "raisedAt": "2024-03-20T10:00:00+00:00"
        })
    );
}

#[tokio::test]
async fn a_customer_query_returns_projected_stage_loyalty_clv_and_alerts() {
    let server = TestServer::start_projected().await;
    // Enough customers with repeat purchases for the CLV models to fit.
    for c in 0..40 {
        let id = format!("c{c:02}");
        register(&server, &id, "2023-01-01T00:00:00Z").await;
        for k in 0..(1 + c % 5) {
            let at = format!(
                "2023-{:02}-{:02}T12:00:00Z",
                1 + (k * 2 + c) % 11,
                1 + (c * 7 + k) % 27
            );
            order(
                &server,
                &id,
                &at,
                &format!("o{k}"),
                1_000 + 250 * (c * k % 17) as i64,
            )
            .await;
        }
    }
    caught_up(&server).await;
    let query = r#"query($id: ID!) { customer(id: $id) {
        source stage valueTier tier stageHistory { stage enteredAt reason }
        loyalty { balance lots { points expiresAt } }
        clv { expectedValue { minor currency } probabilityAlive expectedPurchases horizonDays }
        rfm { recency frequency monetary segment } alerts { kind } } }"#;
    // Population figures (CLV, RFM, value tier) follow within a couple of
    // seconds of the last live batch.
    let mut view = Value::Null;
    for _ in 0..100 {
        view = server.ok(query, json!({"id": "c04"})).await["customer"].clone();
        let listed = server
            .ok("{ customers(first: 100) { edges { cursor } } }", json!({}))
            .await["customers"]["edges"]
            .as_array()
            .map_or(0, Vec::len);
        if !view["clv"].is_null() && listed == 40 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(view["source"], "PROJECTION");
    let history: Vec<&str> = view["stageHistory"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(history[..2], ["prospect", "new"], "{view}");
    assert_eq!(view["stage"], *history.last().unwrap());
    // Lots hold what the orders earned (1 point per dollar) minus expiry.
    let lots: i64 = view["loyalty"]["lots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["points"].as_i64().unwrap())
        .sum();
    assert_eq!(view["loyalty"]["balance"].as_i64().unwrap(), lots);
    assert_eq!(view["clv"]["expectedValue"]["currency"], "USD");
    let p_alive = view["clv"]["probabilityAlive"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p_alive), "{view}");
    assert_eq!(view["clv"]["horizonDays"], 365);
    assert!(view["rfm"]["segment"].is_string(), "{view}");
    assert!(view["valueTier"].is_string());
    assert_eq!(view["tier"], "regular");

    // Every population figure names the instant it was computed for; with
    // an explicit asOf the answer is for that one instant, or says which
    // figures it cannot give and why.
    let labelled = r#"query($id: ID!, $at: DateTime) { customer(id: $id, asOf: $at) {
        asOf valueTier valueTierAsOf clv { probabilityAlive asOf } rfm { segment asOf }
        unavailable { field reason } } }"#;
    let latest = server.ok(labelled, json!({"id": "c04", "at": null})).await["customer"].clone();
    let snapshot = latest["clv"]["asOf"].as_str().unwrap().to_owned();
    assert_eq!(latest["rfm"]["asOf"], snapshot.as_str(), "{latest}");
    assert_eq!(latest["valueTierAsOf"], snapshot.as_str(), "{latest}");
    assert_eq!(latest["unavailable"], json!([]));
    let then = server
        .ok(labelled, json!({"id": "c04", "at": snapshot}))
        .await["customer"]
        .clone();
    assert_eq!(then["asOf"], snapshot.as_str());
    assert!(then["clv"]["probabilityAlive"].is_number(), "{then}");
    assert!(then["rfm"]["segment"].is_string(), "{then}");
    assert_eq!(then["unavailable"], json!([]));
    let earlier = server
        .ok(labelled, json!({"id": "c04", "at": "2023-06-01T00:00:00Z"}))
        .await["customer"]
        .clone();
    assert!(
        earlier["clv"].is_null() && earlier["rfm"].is_null(),
        "{earlier}"
    );
    // Before the snapshot a value tier is ranked as of the last month end
    // at or before the instant, and says so.
    assert_eq!(
        earlier["valueTierAsOf"], "2023-05-31T23:59:59.999999+00:00",
        "{earlier}"
    );
    assert!(earlier["valueTier"].is_string(), "{earlier}");
    let missing: Vec<&str> = earlier["unavailable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["field"].as_str().unwrap())
        .collect();
    assert_eq!(missing, ["rfm", "clv"]);
    let reason = earlier["unavailable"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("population snapshot {snapshot}")),
        "{reason}"
    );

    // Filters and pages over the projected tables.
    let page = |after: Value| {
        let server = &server;
        async move {
            server
                .ok(
                    r#"query($after: String) { customers(first: 15, after: $after, filter: {tier: "regular"}) {
                        edges { cursor node { id } } pageInfo { hasNextPage endCursor } } }"#,
                    json!({"after": after}),
                )
                .await["customers"]
                .clone()
        }
    };
    let mut ids = Vec::new();
    let mut after = Value::Null;
    loop {
        let p = page(after).await;
        ids.extend(
            p["edges"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["node"]["id"].as_str().unwrap().to_owned()),
        );
        if !p["pageInfo"]["hasNextPage"].as_bool().unwrap() {
            break;
        }
        after = p["pageInfo"]["endCursor"].clone();
    }
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted);
    assert_eq!(ids.len(), 40);
    let none = server
        .ok(
            r#"{ customers(first: 5, filter: {tier: "diamond"}) { edges { node { id } } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(none["customers"]["edges"], json!([]));
    let dist = server
        .ok("{ stageDistribution { stage customers } }", json!({}))
        .await;
    let total: u64 = dist["stageDistribution"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["customers"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 40);
}

#[tokio::test]
async fn redemptions_are_checked_against_the_projected_balance() {
    let server = TestServer::start_projected().await;
    register(&server, "r", "2024-03-01T10:00:00Z").await;
    order(&server, "r", "2024-03-02T10:00:00Z", "o1", 12_345).await; // 123 points
    caught_up(&server).await;
    let redeem = |points: i64, version: u32| {
        mutation(
            "redeemPoints",
            "r",
            &format!("2024-03-0{}T10:00:00Z", 2 + version),
            &format!(r#"{{redemptionId: "x{version}", points: {points}}}"#),
        )
    };
    let head = server.head().await;
    let refused = server
        .gql(Some(Role::Admin), &redeem(124, 1), json!({}))
        .await;
    assert!(error_code(&refused).is_some(), "{refused}");
    assert!(
        refused["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("123"),
        "{refused}"
    );
    assert_eq!(server.head().await, head, "nothing appended");
    server.ok(&redeem(123, 2), json!({})).await;
}

#[tokio::test]
async fn an_analyst_rebuilds_the_read_models_and_the_rebuild_is_recorded() {
    let server = TestServer::start_projected().await;
    register(&server, "rb-1", "2024-01-02T00:00:00Z").await;
    order(&server, "rb-1", "2024-01-03T00:00:00Z", "o1", 2_500).await;
    caught_up(&server).await;
    let status = "{ projectionStatus { projections { version } } }";
    let before = server.ok(status, json!({})).await;
    let version_before = before["projectionStatus"]["projections"][0]["version"].clone();

    let rebuild = r#"mutation { rebuildReadModels(reason: "loyalty rates changed, ticket 7") { rulesId rulesHash } }"#;
    let denied = server.gql(Some(Role::App), rebuild, json!({})).await;
    assert_eq!(
        error_code(&denied).as_deref(),
        Some("FORBIDDEN"),
        "{denied}"
    );
    let blank = server
        .gql(
            Some(Role::Analyst),
            r#"mutation { rebuildReadModels(reason: " ") { rulesId } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        error_code(&blank).as_deref(),
        Some("BAD_USER_INPUT"),
        "{blank}"
    );
    // A reason that could not be recorded (a control character) is refused
    // before anything starts: no rebuild runs, none is reported.
    let unprintable = server
        .gql(
            Some(Role::Analyst),
            "mutation($r: String!) { rebuildReadModels(reason: $r) { rulesId } }",
            json!({"r": "bad\u{1}reason"}),
        )
        .await;
    assert_eq!(
        error_code(&unprintable).as_deref(),
        Some("BAD_USER_INPUT"),
        "{unprintable}"
    );
    assert_eq!(unprintable["errors"][0]["extensions"]["field"], "reason");
    let last =
        "{ projectionStatus { lastRebuild { requestedBy reason finishedAt modelVersion error } } }";
    let after_refusal = server.ok(last, json!({})).await;
    assert_eq!(
        after_refusal["projectionStatus"]["lastRebuild"]["requestedBy"], "journey serve",
        "only the start-up rebuild ran: {after_refusal}"
    );
    let started = server.gql(Some(Role::Analyst), rebuild, json!({})).await;
    assert!(started["errors"].is_null(), "{started}");

    // The new version becomes active and keeps following the store.
    let mut switched = false;
    for _ in 0..200 {
        let now = server.ok(status, json!({})).await;
        if now["projectionStatus"]["projections"][0]["version"] != version_before {
            switched = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(switched, "no new read-model version became active");
    let mut finished = Value::Null;
    for _ in 0..200 {
        let now = server.ok(last, json!({})).await;
        if !now["projectionStatus"]["lastRebuild"]["finishedAt"].is_null() {
            finished = now["projectionStatus"]["lastRebuild"].clone();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(finished["requestedBy"], "analyst-client", "{finished}");
    assert_eq!(finished["reason"], "loyalty rates changed, ticket 7");
    assert!(finished["error"].is_null(), "{finished}");
    assert!(
        finished["modelVersion"].as_i64().unwrap() >= 2,
        "{finished}"
    );
    order(&server, "rb-1", "2024-01-04T00:00:00Z", "o2", 1_000).await;
    caught_up(&server).await;
    let customer = server
        .ok(
            r#"{ customer(id: "rb-1") { historicalValue { orderCount } stageHistory { stage } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(customer["customer"]["historicalValue"]["orderCount"], 2);

    // Who, when and why, in the admin stream.
    let admin = server
        .store
        .read_stream(
            &journey_ledger::domain::StreamId::parse(journey_ledger::audit::ADMIN_STREAM).unwrap(),
            journey_ledger::store::ReadStream::all_forwards(),
        )
        .await
        .unwrap();
    let recorded: Vec<Value> = admin
        .iter()
        .filter(|e| e.event_type == "ReadModelsRebuilt")
        .map(|e| serde_json::from_str(&e.payload_json).unwrap())
        .collect();
    assert!(
        recorded
            .iter()
            .any(|p| p["requested_by"] == "analyst-client"
                && p["reason"] == "loyalty rates changed, ticket 7"),
        "{recorded:?}"
    );
    // The server's own start-up rebuild is recorded too.
    assert!(
        recorded
            .iter()
            .any(|p| p["requested_by"] == "journey serve"),
        "{recorded:?}"
    );
}

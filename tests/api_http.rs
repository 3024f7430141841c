//! The GraphQL API over a real HTTP server on a random local port: every
//! query, mutation and subscription; roles field by field; bad input.

mod api_support;

use api_support::ws;
use api_support::{error_code, key, TestServer};
use chrono::{TimeZone, Utc};
use journey_ledger::api::auth::Role;
use journey_ledger::api::read_models::{Alert, StageTransition};
use serde_json::{json, Value};

const RESULT: &str =
    "{ version events { eventType version position customerId payload metadata } }";

/// A mutation document for `customer` on day `day` of February 2024.
fn mutation(name: &str, customer: &str, day: u32, input: &str) -> String {
    format!(
        r#"mutation {{ {name}(customerId: "{customer}", occurredAt: "2024-02-{day:02}T10:00:00Z", input: {input}) {RESULT} }}"#
    )
}

/// Every mutation with a valid input, in an order whose rules all hold,
/// with the event type each appends.
fn full_history(customer: &str) -> Vec<(String, &'static str)> {
    let steps: [(&str, &str, &str); 20] = [
        (
            "registerCustomer",
            r#"{channel: "web", acquisitionCost: {minor: 1500, currency: "EUR"}, profile: {name: "Tess", email: "tess@example.org"}}"#,
            "CustomerRegistered",
        ),
        (
            "giveConsent",
            r#"{purpose: "marketing_email"}"#,
            "ConsentGiven",
        ),
        (
            "changeProfile",
            r#"{phone: "+1 555 0100"}"#,
            "ProfileChanged",
        ),
        (
            "recordSession",
            r#"{sessionId: "s1", channel: "web", durationSecs: 60}"#,
            "SessionRecorded",
        ),
        (
            "abandonCart",
            r#"{cartId: "c1", value: {minor: 500, currency: "EUR"}, itemCount: 1}"#,
            "CartAbandoned",
        ),
        (
            "placeOrder",
            r#"{orderId: "o1", amount: {minor: 10000, currency: "EUR"}, itemCount: 2}"#,
            "OrderPlaced",
        ),
        (
            "placeOrder",
            r#"{orderId: "o2", amount: {minor: 2500, currency: "USD"}, itemCount: 1}"#,
            "OrderPlaced",
        ),
        (
            "refundOrder",
            r#"{orderId: "o1", refundId: "r1", amount: {minor: 4000, currency: "EUR"}, kind: PARTIAL, reason: "damaged"}"#,
            "OrderRefunded",
        ),
        (
            "fileComplaint",
            r#"{complaintId: "k1", category: "delivery", description: "late"}"#,
            "ComplaintFiled",
        ),
        (
            "resolveComplaint",
            r#"{complaintId: "k1", resolution: "apologised"}"#,
            "ComplaintResolved",
        ),
        (
            "openTicket",
            r#"{ticketId: "t1", subject: "where is my parcel"}"#,
            "SupportTicketOpened",
        ),
        (
            "closeTicket",
            r#"{ticketId: "t1", solved: true}"#,
            "SupportTicketClosed",
        ),
        (
            "startOutage",
            r#"{outageId: "x1", service: "app"}"#,
            "ServiceOutageStarted",
        ),
        ("endOutage", r#"{outageId: "x1"}"#, "ServiceOutageEnded"),
        (
            "touchCampaign",
            r#"{campaignId: "spring", channel: "email"}"#,
            "CampaignTouched",
        ),
        (
            "answerSurvey",
            r#"{surveyId: "nps1", metric: NPS, score: 9}"#,
            "SurveyAnswered",
        ),
        (
            "adjustPoints",
            r#"{adjustmentId: "a1", points: 100, reason: "goodwill"}"#,
            "PointsAdjusted",
        ),
        (
            "startSubscription",
            r#"{subscriptionId: "sub1", plan: "gold", price: {minor: 999, currency: "EUR"}}"#,
            "SubscriptionStarted",
        ),
        (
            "cancelSubscription",
            r#"{subscriptionId: "sub1", reason: "too expensive"}"#,
            "SubscriptionCancelled",
        ),
        (
            "withdrawConsent",
            r#"{purpose: "marketing_email"}"#,
            "ConsentWithdrawn",
        ),
    ];
    steps
        .iter()
        .enumerate()
        .map(|(i, (name, input, ty))| (mutation(name, customer, i as u32 + 1, input), *ty))
        .collect()
}

fn money_of(list: &Value, currency: &str) -> i64 {
    list.as_array()
        .unwrap()
        .iter()
        .find(|m| m["currency"] == currency)
        .unwrap_or_else(|| panic!("no {currency} in {list}"))["minor"]
        .as_i64()
        .unwrap()
}

#[tokio::test]
async fn every_mutation_appends_its_event_and_queries_read_it_back() {
    let server = TestServer::start().await;
    for (i, (doc, event_type)) in full_history("tess").iter().enumerate() {
        let data = server.ok(doc, json!({})).await;
        let result = data.as_object().unwrap().values().next().unwrap();
        assert_eq!(result["version"], i as u64 + 1, "{doc}");
        assert_eq!(result["events"][0]["eventType"], *event_type);
        assert_eq!(result["events"][0]["customerId"], "tess");
        assert_eq!(result["events"][0]["metadata"]["actor"], "admin-client");
    }
    assert_eq!(server.head().await, 20);

    // Redemption needs the loyalty projection: refused, nothing stored.
    let redeem = server
        .gql(
            Some(Role::App),
            &mutation(
                "redeemPoints",
                "tess",
                25,
                r#"{redemptionId: "p1", points: 10}"#,
            ),
            json!({}),
        )
        .await;
    assert_eq!(
        error_code(&redeem).as_deref(),
        Some("PRECONDITION_UNAVAILABLE")
    );
    assert_eq!(server.head().await, 20);

    let view = server
        .ok(
            r#"query($id: String!) { customer(id: $id) {
                id source version registeredAt acquisitionChannel acquisitionCost { minor currency }
                profile { name email phone } erased consents
                historicalValue { orderCount gross { minor currency } refunded { minor currency }
                                  net { minor currency } firstOrderAt lastOrderAt }
                stage stageHistory { stage } tier loyalty { balance } rfm { segment }
                clv { probabilityAlive } alerts { id } } }"#,
            json!({"id": "tess"}),
        )
        .await["customer"]
        .clone();
    assert_eq!(view["source"], "EVENT_FOLD");
    assert_eq!(view["version"], 20);
    assert_eq!(view["acquisitionChannel"], "web");
    assert_eq!(view["profile"]["name"], "Tess");
    assert_eq!(view["profile"]["phone"], "+1 555 0100");
    assert_eq!(view["consents"], json!([]));
    let value = &view["historicalValue"];
    assert_eq!(value["orderCount"], 2);
    assert_eq!(money_of(&value["gross"], "EUR"), 10000);
    assert_eq!(money_of(&value["refunded"], "EUR"), 4000);
    assert_eq!(money_of(&value["net"], "EUR"), 6000);
    assert_eq!(money_of(&value["net"], "USD"), 2500);
    assert_eq!(value["firstOrderAt"], "2024-02-06T10:00:00+00:00");
    assert_eq!(value["lastOrderAt"], "2024-02-07T10:00:00+00:00");
    for projected in [
        "stage",
        "stageHistory",
        "tier",
        "loyalty",
        "rfm",
        "clv",
        "alerts",
    ] {
        assert_eq!(
            view[projected],
            Value::Null,
            "{projected} must be null without projections"
        );
    }

    // As of a past instant, later events are ignored; before registration
    // the customer does not exist.
    let past = server
        .ok(
            r#"{ customer(id: "tess", asOf: "2024-02-06T12:00:00Z") { version consents historicalValue { orderCount } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(past["customer"]["version"], 6);
    assert_eq!(past["customer"]["consents"], json!(["marketing_email"]));
    assert_eq!(past["customer"]["historicalValue"]["orderCount"], 1);
    let before = server
        .ok(
            r#"{ customer(id: "tess", asOf: "2024-01-01T00:00:00Z") { id } }"#,
            json!({}),
        )
        .await;
    assert_eq!(before["customer"], Value::Null);
    assert_eq!(
        server
            .ok(r#"{ customer(id: "nobody") { id } }"#, json!({}))
            .await["customer"],
        Value::Null
    );

    // Raw history, paged by version cursors.
    let first = server
        .ok(
            r#"{ events(customerId: "tess", first: 5) { edges { cursor node { version eventType hash } } pageInfo { hasNextPage endCursor } } }"#,
            json!({}),
        )
        .await;
    let edges = first["events"]["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 5);
    assert_eq!(edges[0]["node"]["eventType"], "CustomerRegistered");
    assert_eq!(edges[0]["node"]["hash"].as_str().unwrap().len(), 64);
    assert_eq!(first["events"]["pageInfo"]["hasNextPage"], true);
    let rest = server
        .ok(
            r#"query($after: String) { events(customerId: "tess", after: $after, first: 100) { edges { node { version } } pageInfo { hasNextPage } } }"#,
            json!({"after": first["events"]["pageInfo"]["endCursor"]}),
        )
        .await;
    let rest_edges = rest["events"]["edges"].as_array().unwrap();
    assert_eq!(rest_edges.len(), 15);
    assert_eq!(rest_edges[0]["node"]["version"], 6);
    assert_eq!(rest["events"]["pageInfo"]["hasNextPage"], false);

    // Read models that need projections say so with null.
    let status = server
        .ok(
            r#"{ projectionStatus { headPosition source projections { name lag } }
                 stageDistribution { stage customers }
                 cohortRetention(from: "2024-01-01T00:00:00Z", to: "2024-03-01T00:00:00Z") { size } }"#,
            json!({}),
        )
        .await;
    assert_eq!(status["projectionStatus"]["headPosition"], 20);
    assert_eq!(status["projectionStatus"]["projections"], json!([]));
    assert_eq!(status["stageDistribution"], Value::Null);
    assert_eq!(status["cohortRetention"], Value::Null);
}

#[tokio::test]
async fn customers_connection_pages_with_a_hard_cap() {
    let server = TestServer::start().await;
    for id in ["c1", "c2", "c3"] {
        server
            .ok(
                &mutation("registerCustomer", id, 1, r#"{channel: "web"}"#),
                json!({}),
            )
            .await;
    }
    let page = r#"query($after: String, $first: Int) { customers(first: $first, after: $after) {
        edges { cursor node { id } } pageInfo { hasNextPage endCursor } } }"#;
    let one = server.ok(page, json!({"first": 2})).await;
    let ids: Vec<_> = one["customers"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["c1", "c2"]);
    assert_eq!(one["customers"]["pageInfo"]["hasNextPage"], true);
    let two = server
        .ok(
            page,
            json!({"first": 2, "after": one["customers"]["pageInfo"]["endCursor"]}),
        )
        .await;
    assert_eq!(two["customers"]["edges"][0]["node"]["id"], "c3");
    assert_eq!(two["customers"]["edges"].as_array().unwrap().len(), 1);
    assert_eq!(two["customers"]["pageInfo"]["hasNextPage"], false);

    let too_big = server
        .gql(Some(Role::App), page, json!({"first": 101}))
        .await;
    assert_eq!(error_code(&too_big).as_deref(), Some("BAD_USER_INPUT"));
    assert_eq!(too_big["errors"][0]["extensions"]["field"], "first");
    let filtered = server
        .gql(
            Some(Role::App),
            r#"{ customers(filter: {stage: "active"}) { edges { cursor } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        error_code(&filtered).as_deref(),
        Some("PRECONDITION_UNAVAILABLE")
    );
    assert!(filtered["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("stage"));
}

/// Root query and mutation fields with the weakest role allowed to use them.
fn guarded_fields() -> Vec<(String, Role)> {
    let mut fields: Vec<(String, Role)> = vec![
        (r#"{ customer(id: "x") { id } }"#.into(), Role::App),
        ("{ customers(first: 1) { edges { cursor } } }".into(), Role::App),
        (r#"{ events(customerId: "x") { edges { cursor } } }"#.into(), Role::Auditor),
        ("{ stageDistribution { stage } }".into(), Role::App),
        (
            r#"{ cohortRetention(from: "2024-01-01T00:00:00Z", to: "2024-02-01T00:00:00Z") { size } }"#.into(),
            Role::Analyst,
        ),
        ("{ projectionStatus { headPosition } }".into(), Role::App),
        ("{ verify { intact } }".into(), Role::Auditor),
        (
            r#"mutation { rebuildReadModels(reason: "probe") { rulesId } }"#.into(),
            Role::Analyst,
        ),
    ];
    // Every mutation, aimed at an unregistered customer: an allowed role
    // gets a business-rule error (or success for registration), never a
    // role error.
    for (doc, _) in full_history("role-probe") {
        fields.push((doc, Role::App));
    }
    fields.push((
        mutation(
            "redeemPoints",
            "role-probe",
            1,
            r#"{redemptionId: "p", points: 1}"#,
        ),
        Role::App,
    ));
    fields.push((
        r#"mutation { eraseCustomer(customerId: "role-probe-erase", reason: "probe") { eventVersion } }"#
            .into(),
        Role::Admin,
    ));
    fields
}

#[tokio::test]
async fn profiles_are_sealed_revealed_and_erased_by_an_admin() {
    let server = TestServer::start().await;
    server
        .ok(
            &mutation(
                "registerCustomer",
                "pii",
                1,
                r#"{channel: "web", profile: {name: "Zoë Example", email: "zoe@example.org"}}"#,
            ),
            json!({}),
        )
        .await;
    let query = r#"{ customer(id: "pii") { erased profile { name email } } }"#;
    let before = server.ok(query, json!({})).await;
    assert_eq!(before["customer"]["profile"]["email"], "zoe@example.org");
    assert_eq!(before["customer"]["erased"], false);
    // The stored event holds ciphertext only.
    let raw = server
        .store
        .read_stream(
            &journey_ledger::domain::CustomerId::parse("pii")
                .unwrap()
                .stream_id(),
            journey_ledger::store::ReadStream::all_forwards(),
        )
        .await
        .unwrap();
    assert!(
        !raw[0].payload_json.contains("zoe@example.org"),
        "{}",
        raw[0].payload_json
    );

    let erase = r#"mutation { eraseCustomer(customerId: "pii", reason: "GDPR art. 17 #42") { eventVersion } }"#;
    let denied = server.gql(Some(Role::Auditor), erase, json!({})).await;
    assert_eq!(error_code(&denied).as_deref(), Some("FORBIDDEN"));
    // An unknown customer and an unrecordable reason are refused by code,
    // and nothing is appended.
    let head = server.store.head_position().await.unwrap();
    let unknown = server
        .gql(
            Some(Role::Admin),
            r#"mutation { eraseCustomer(customerId: "nobody-here", reason: "GDPR art. 17 #43") { eventVersion } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        error_code(&unknown).as_deref(),
        Some("NOT_FOUND"),
        "{unknown}"
    );
    let control = server
        .gql(
            Some(Role::Admin),
            r#"mutation($r: String!) { eraseCustomer(customerId: "pii", reason: $r) { eventVersion } }"#,
            json!({"r": "tab\there"}),
        )
        .await;
    assert_eq!(
        error_code(&control).as_deref(),
        Some("BAD_USER_INPUT"),
        "{control}"
    );
    assert_eq!(
        control["errors"][0]["extensions"]["field"], "reason",
        "{control}"
    );
    assert_eq!(server.store.head_position().await.unwrap(), head);
    let done = server.ok(erase, json!({})).await;
    assert_eq!(done["eraseCustomer"]["eventVersion"], 2);
    let after = server.ok(query, json!({})).await;
    assert_eq!(after["customer"]["erased"], true);
    assert!(after["customer"]["profile"].is_null(), "{after}");
}

#[tokio::test]
async fn roles_are_enforced_field_by_field() {
    let server = TestServer::start().await;
    let callers = [
        None,
        Some(Role::App),
        Some(Role::Analyst),
        Some(Role::Auditor),
        Some(Role::Admin),
    ];
    for (doc, min) in guarded_fields() {
        for caller in callers {
            let before = server.head().await;
            let response = server.gql(caller, &doc, json!({})).await;
            let code = error_code(&response);
            match caller {
                None => {
                    assert_eq!(
                        code.as_deref(),
                        Some("UNAUTHENTICATED"),
                        "{doc}: {response}"
                    );
                    assert_eq!(server.head().await, before);
                }
                Some(role) if role < min => {
                    assert_eq!(
                        code.as_deref(),
                        Some("FORBIDDEN"),
                        "{role} on {doc}: {response}"
                    );
                    assert_eq!(
                        response["errors"][0]["extensions"]["requiredRole"],
                        min.name()
                    );
                    assert_eq!(server.head().await, before);
                }
                Some(role) => assert!(
                    !matches!(code.as_deref(), Some("FORBIDDEN" | "UNAUTHENTICATED")),
                    "{role} should be allowed {doc}: {response}"
                ),
            }
        }
    }
    // A key that is not configured is refused before GraphQL runs.
    let resp = reqwest::Client::new()
        .post(format!("{}/graphql", server.base))
        .bearer_auth("not-a-configured-key-at-all")
        .json(&json!({"query": "{ projectionStatus { headPosition } }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(error_code(&body).as_deref(), Some("UNAUTHENTICATED"));
}

#[tokio::test]
async fn subscription_roles_are_enforced() {
    let server = TestServer::start().await;
    server
        .ok(
            &mutation("registerCustomer", "sub-probe", 1, r#"{channel: "web"}"#),
            json!({}),
        )
        .await;
    let subscriptions = [
        (
            "subscription { eventAppended(fromPosition: 1) { position } }",
            Role::Auditor,
        ),
        ("subscription { alertRaised { id } }", Role::App),
        ("subscription { stageChanged { to } }", Role::App),
    ];
    for (doc, min) in subscriptions {
        for role in Role::ALL {
            let (mut socket, ack) = ws::connect(
                &server.ws_url(),
                json!({"Authorization": format!("Bearer {}", key(role))}),
            )
            .await;
            assert_eq!(ack["type"], "connection_ack");
            ws::subscribe(&mut socket, "1", doc).await;
            if role < min {
                let reply = ws::next_json(&mut socket).await;
                let text = reply.to_string();
                assert!(text.contains("FORBIDDEN"), "{role} on {doc}: {reply}");
                continue;
            }
            // Allowed: make the feed produce something and receive it.
            let live = server.state.live.clone();
            let feeder = tokio::spawn(async move {
                loop {
                    live.publish_alert(Alert {
                        id: "a1".into(),
                        customer_id: "sub-probe".into(),
                        kind: "churn_risk".into(),
                        message: "no order for 90 days".into(),
                        raised_at: Utc.with_ymd_and_hms(2024, 5, 1, 0, 0, 0).unwrap(),
                    });
                    live.publish_stage_transition(StageTransition {
                        customer_id: "sub-probe".into(),
                        from: Some("active".into()),
                        to: "at_risk".into(),
                        at: Utc.with_ymd_and_hms(2024, 5, 1, 0, 0, 0).unwrap(),
                    });
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            });
            let reply = ws::next_json(&mut socket).await;
            feeder.abort();
            assert_eq!(reply["type"], "next", "{role} on {doc}: {reply}");
            assert!(reply["payload"].get("errors").is_none(), "{reply}");
        }
    }
    // No key, or a wrong key, in connection_init.
    let (mut socket, ack) = ws::connect(&server.ws_url(), json!({})).await;
    assert_eq!(ack["type"], "connection_ack");
    ws::subscribe(&mut socket, "1", "subscription { alertRaised { id } }").await;
    assert!(ws::next_json(&mut socket)
        .await
        .to_string()
        .contains("UNAUTHENTICATED"));
    let (_, refused) = ws::connect(
        &server.ws_url(),
        json!({"Authorization": "Bearer wrong-key-wrong-key-wrong"}),
    )
    .await;
    // graphql-ws's convention for a refused connection_init: 4403 Forbidden.
    assert_eq!(refused["type"], "closed", "{refused}");
    assert_eq!(refused["code"], 4403, "{refused}");
}

#[tokio::test]
async fn a_mutation_reaches_a_running_subscription() {
    let server = TestServer::start().await;
    let (mut socket, ack) = ws::connect(
        &server.ws_url(),
        json!({"headers": {"Authorization": format!("Bearer {}", key(Role::Auditor))}}),
    )
    .await;
    assert_eq!(ack["type"], "connection_ack");
    ws::subscribe(
        &mut socket,
        "live",
        r#"subscription { eventAppended(fromPosition: 1, customerId: "live") { position eventType customerId payload } }"#,
    )
    .await;
    let appended = server
        .ok(
            &mutation("registerCustomer", "live", 1, r#"{channel: "referral"}"#),
            json!({}),
        )
        .await;
    let reply = ws::next_json(&mut socket).await;
    assert_eq!(reply["id"], "live");
    assert_eq!(reply["type"], "next");
    let event = &reply["payload"]["data"]["eventAppended"];
    assert_eq!(event["eventType"], "CustomerRegistered");
    assert_eq!(event["customerId"], "live");
    assert_eq!(event["payload"]["channel"], "referral");
    assert_eq!(
        event["position"],
        appended["registerCustomer"]["events"][0]["position"]
    );
    // Another customer's event is filtered out; the next one of ours arrives.
    server
        .ok(
            &mutation("registerCustomer", "other", 1, r#"{channel: "web"}"#),
            json!({}),
        )
        .await;
    server
        .ok(
            &mutation(
                "recordSession",
                "live",
                2,
                r#"{sessionId: "s", channel: "app"}"#,
            ),
            json!({}),
        )
        .await;
    let reply = ws::next_json(&mut socket).await;
    assert_eq!(
        reply["payload"]["data"]["eventAppended"]["eventType"],
        "SessionRecorded"
    );
}

/// Amounts beyond GraphQL's 32-bit `Int` are `Long`s: accepted as a number
/// or a decimal string, summed without wrapping, answered as numbers.
#[tokio::test]
async fn amounts_beyond_32_bits_travel_as_longs() {
    let server = TestServer::start().await;
    server
        .ok(
            &mutation("registerCustomer", "big", 1, r#"{channel: "web"}"#),
            json!({}),
        )
        .await;
    for (day, minor) in [(2, "2147483648"), (3, "\"2147483648\"")] {
        let input = format!(
            r#"{{orderId: "o{day}", amount: {{minor: {minor}, currency: "USD"}}, itemCount: 1}}"#
        );
        server
            .ok(&mutation("placeOrder", "big", day, &input), json!({}))
            .await;
    }
    let data = server
        .ok(
            r#"query($id: String!) { customer(id: $id) { historicalValue { gross { minor currency } } } }"#,
            json!({"id": "big"}),
        )
        .await;
    assert_eq!(
        money_of(&data["customer"]["historicalValue"]["gross"], "USD"),
        4_294_967_296
    );
    let sdl = server
        .ok(
            r#"{ __type(name: "Money") { fields { name type { ofType { name } } } } }"#,
            json!({}),
        )
        .await;
    assert!(sdl.to_string().contains(r#""name":"Long""#), "{sdl}");
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_appends_nothing() {
    let server = TestServer::start().await;
    server
        .ok(
            &mutation("registerCustomer", "b1", 1, r#"{channel: "web"}"#),
            json!({}),
        )
        .await;
    server
        .ok(
            &mutation(
                "placeOrder",
                "b1",
                2,
                r#"{orderId: "o1", amount: {minor: 1000, currency: "USD"}, itemCount: 1}"#,
            ),
            json!({}),
        )
        .await;
    let head = server.head().await;
    let deep = format!(
        "{{ __schema {{ types {{ {}name{} }} }} }}",
        "fields { type { ofType { ofType { ofType { ofType { ofType { ofType { ofType { ofType { ofType { ofType { ofType { ofType { ",
        " } } } } } } } } } } } } } }"
    );
    let complex = format!(
        "{{ {} }}",
        (0..600)
            .map(|i| format!("a{i}: projectionStatus {{ headPosition }}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    // (document, expected code or None for GraphQL validation errors, text the message must contain)
    let cases: Vec<(String, Option<&str>, &str)> = vec![
        (
            mutation("placeOrder", "b1", 3, r#"{orderId: "o2", amount: {minor: -5, currency: "USD"}, itemCount: 1}"#),
            Some("BAD_USER_INPUT"),
            "input.amount.minor",
        ),
        (
            mutation("placeOrder", "b1", 3, r#"{orderId: "o2", amount: {minor: "9223372036854775807", currency: "USD"}, itemCount: 1}"#),
            Some("BAD_USER_INPUT"),
            "input.amount.minor",
        ),
        (
            mutation("placeOrder", "b1", 3, r#"{orderId: "o2", amount: {minor: 9223372036854775808, currency: "USD"}, itemCount: 1}"#),
            None,
            "64-bit",
        ),
        (
            mutation("placeOrder", "b1", 3, r#"{orderId: "o2", amount: {minor: 12.5, currency: "USD"}, itemCount: 1}"#),
            None,
            "64-bit",
        ),
        (
            r#"mutation { recordSession(customerId: "b1", occurredAt: "2024-02-03T00:00:00Z", expectedVersion: -1, input: {sessionId: "s", channel: "web"}) { version } }"#.into(),
            Some("BAD_USER_INPUT"),
            "expectedVersion",
        ),
        (
            r#"mutation { recordSession(customerId: "b1", occurredAt: "2024-02-03T00:00:00Z", expectedVersion: 7749117461110, input: {sessionId: "s", channel: "web"}) { version } }"#.into(),
            Some("CONCURRENCY_CONFLICT"),
            "version 2",
        ),
        (
            mutation("placeOrder", "b1", 3, r#"{orderId: "o2", amount: {minor: 5, currency: "USX"}, itemCount: 1}"#),
            Some("BAD_USER_INPUT"),
            "input.amount.currency",
        ),
        (
            mutation("placeOrder", "b1", 3, r#"{orderId: "o2", amount: {minor: 5, currency: "USD"}, itemCount: 1, colour: "red"}"#),
            None,
            "colour",
        ),
        (
            mutation("placeOrder", "b1", 3, r#"{orderId: "o2", amount: {minor: 5, currency: "USD"}, itemCount: -1}"#),
            Some("BAD_USER_INPUT"),
            "input.itemCount",
        ),
        (
            r#"mutation { placeOrder(customerId: "b1", occurredAt: "2999-01-01T00:00:00Z", input: {orderId: "o2", amount: {minor: 5, currency: "USD"}, itemCount: 1}) { version } }"#.into(),
            Some("BAD_USER_INPUT"),
            "occurredAt",
        ),
        (
            r#"mutation { placeOrder(customerId: "b1", occurredAt: "yesterday", input: {orderId: "o2", amount: {minor: 5, currency: "USD"}, itemCount: 1}) { version } }"#.into(),
            None,
            "DateTime",
        ),
        (
            mutation("placeOrder", "ghost", 3, r#"{orderId: "o2", amount: {minor: 5, currency: "USD"}, itemCount: 1}"#),
            Some("BAD_USER_INPUT"),
            "not a registered customer",
        ),
        (
            mutation("placeOrder", "bad id!", 3, r#"{orderId: "o2", amount: {minor: 5, currency: "USD"}, itemCount: 1}"#),
            Some("BAD_USER_INPUT"),
            "customerId",
        ),
        (
            mutation("refundOrder", "b1", 3, r#"{orderId: "o1", refundId: "r1", amount: {minor: 1001, currency: "USD"}, kind: PARTIAL}"#),
            Some("BAD_USER_INPUT"),
            "exceeds",
        ),
        (
            mutation("refundOrder", "b1", 3, r#"{orderId: "o1", refundId: "r1", amount: {minor: 10, currency: "EUR"}, kind: PARTIAL}"#),
            Some("BAD_USER_INPUT"),
            "input.amount.currency",
        ),
        (
            mutation("touchCampaign", "b1", 3, r#"{campaignId: "c", channel: "sms"}"#),
            Some("BAD_USER_INPUT"),
            "marketing_sms",
        ),
        (
            mutation("answerSurvey", "b1", 3, r#"{surveyId: "s", metric: CSAT, score: 9}"#),
            Some("BAD_USER_INPUT"),
            "input.score",
        ),
        (
            mutation("registerCustomer", "b1", 3, r#"{channel: "web"}"#),
            Some("BAD_USER_INPUT"),
            "already registered",
        ),
        (
            r#"mutation { recordSession(customerId: "b1", occurredAt: "2024-02-03T00:00:00Z", expectedVersion: 1, input: {sessionId: "s", channel: "web"}) { version } }"#.into(),
            Some("CONCURRENCY_CONFLICT"),
            "version 2",
        ),
        (
            r#"{ events(customerId: "b1", first: 1000) { edges { cursor } } }"#.into(),
            Some("BAD_USER_INPUT"),
            "first",
        ),
        (deep, None, "nested too deep"),
        (complex, None, "complex"),
    ];
    for (doc, code, text) in cases {
        let response = server.gql(Some(Role::Admin), &doc, json!({})).await;
        let errors = response["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("no error for {doc}: {response}"));
        let message = errors[0]["message"].as_str().unwrap();
        if let Some(code) = code {
            assert_eq!(
                error_code(&response).as_deref(),
                Some(code),
                "{doc}: {response}"
            );
        }
        assert!(
            response.to_string().contains(text),
            "{doc}: error should mention {text:?}: {message}"
        );
        assert!(!message.to_lowercase().contains("sql"), "{message}");
        assert_eq!(server.head().await, head, "{doc} appended something");
    }
    let (status, body) = server.post_raw(Some(Role::Admin), "{\"query\": ").await;
    assert_eq!(status, 400, "{body}");
    // A GraphQL-shaped error clients can parse, not Rust's debug text.
    assert_eq!(error_code(&body).as_deref(), Some("BAD_REQUEST"), "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("not a GraphQL request"), "{message}");
    assert!(!message.contains("InvalidRequest("), "{message}");
    let (status, _) = server
        .post_raw(
            Some(Role::Admin),
            format!("{{\"query\": \"{}\"}}", "x".repeat(300 * 1024)),
        )
        .await;
    assert_eq!(status, 413);
    assert_eq!(server.head().await, head);
}

#[tokio::test]
async fn health_metrics_and_graphiql_are_served() {
    let server = TestServer::start().await;
    server
        .ok(
            &mutation("registerCustomer", "m1", 1, r#"{channel: "web"}"#)
                .replace("mutation {", "mutation Register {"),
            json!({}),
        )
        .await;
    let health: Value = server.get("/healthz").await.json().await.unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["headPosition"], 1);
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["headPosition"], 1);
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("journey_graphql_requests_total{operation=\"anonymous\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("journey_events_appended_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("journey_store_head_position 1"),
        "{metrics}"
    );
    assert!(metrics.contains("journey_graphql_request_duration_seconds_bucket"));

    let page = server.get("/graphql").await.text().await.unwrap();
    assert!(page.contains("/graphql/assets/graphiql.min.js"));
    assert!(
        !page.contains("https://") && !page.contains("http://"),
        "page loads nothing from elsewhere"
    );
    for asset in [
        "graphiql.min.js",
        "graphiql.min.css",
        "react.production.min.js",
        "react-dom.production.min.js",
        "journey-graphiql.js",
    ] {
        let resp = server.get(&format!("/graphql/assets/{asset}")).await;
        assert_eq!(resp.status().as_u16(), 200, "{asset}");
        assert!(resp.bytes().await.unwrap().len() > 1000 || asset == "journey-graphiql.js");
    }
    assert_eq!(
        server
            .get("/graphql/assets/nope.js")
            .await
            .status()
            .as_u16(),
        404
    );
}

#[tokio::test]
async fn auditors_verify_a_customer_and_see_where_it_was_tampered() {
    use sqlx::{Connection, Executor};
    let server = TestServer::start().await;
    for (doc, _) in full_history("audited").into_iter().take(3) {
        server.ok(&doc, json!({})).await;
    }
    let query = r#"{ verify(customerId: "audited") { scope intact events problems { kind stream version position message } } }"#;
    let intact = server.gql(Some(Role::Auditor), query, json!({})).await;
    assert_eq!(intact["data"]["verify"]["intact"], true, "{intact}");
    assert_eq!(intact["data"]["verify"]["events"], 3);
    assert_eq!(intact["data"]["verify"]["scope"], "customer audited");
    let whole = server
        .gql(
            Some(Role::Admin),
            "{ verify { intact streams } }",
            json!({}),
        )
        .await;
    assert_eq!(whole["data"]["verify"]["intact"], true, "{whole}");
    let denied = server.gql(Some(Role::Analyst), query, json!({})).await;
    assert_eq!(error_code(&denied).as_deref(), Some("FORBIDDEN"));
    let unknown = server
        .gql(
            Some(Role::Auditor),
            r#"{ verify(customerId: "nobody") { intact } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        error_code(&unknown).as_deref(),
        Some("BAD_USER_INPUT"),
        "{unknown}"
    );

    // Change one byte of the second event behind the ledger's back.
    let mut conn = sqlx::SqliteConnection::connect(&server.url).await.unwrap();
    conn.execute("DROP TRIGGER events_no_update").await.unwrap();
    let (position, payload): (i64, String) = sqlx::query_as(
        "SELECT position, payload FROM events WHERE stream_id = 'customer-audited' AND version = 2",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let tampered = payload.replacen(':', ": ", 1);
    assert_ne!(tampered, payload);
    sqlx::query("UPDATE events SET payload = ? WHERE position = ?")
        .bind(&tampered)
        .bind(position)
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();

    let found = server.gql(Some(Role::Auditor), query, json!({})).await;
    let verify = &found["data"]["verify"];
    assert_eq!(verify["intact"], false, "{found}");
    let problem = &verify["problems"][0];
    assert_eq!(problem["stream"], "customer-audited", "{found}");
    assert_eq!(problem["version"], 2, "{found}");
    assert_eq!(problem["position"], position, "{found}");
    assert!(
        problem["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("customer-audited v2 @ position {position}")),
        "{found}"
    );
    // No SQL or internals in what the auditor sees.
    assert!(!found.to_string().contains("sqlx"), "{found}");
}

/// A caller that asks for no concurrency check gets none: 50 concurrent
/// orders for one customer without `expectedVersion` are 50 orders.
#[tokio::test]
async fn concurrent_orders_without_expected_version_all_append() {
    let server = TestServer::start().await;
    server
        .ok(
            &mutation("registerCustomer", "busy", 1, r#"{channel: "web"}"#),
            json!({}),
        )
        .await;
    let orders = (0..50).map(|i| {
        let doc = mutation(
            "placeOrder",
            "busy",
            2,
            &format!(
                r#"{{orderId: "o{i}", amount: {{minor: 100, currency: "USD"}}, itemCount: 1}}"#
            ),
        );
        let server = &server;
        async move { server.gql(Some(Role::App), &doc, json!({})).await }
    });
    let answers = futures::future::join_all(orders).await;
    for answer in &answers {
        assert!(answer.get("errors").is_none(), "{answer}");
    }
    let data = server
        .ok(
            r#"{ customer(id: "busy") { version historicalValue { orderCount } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(data["customer"]["historicalValue"]["orderCount"], 50);
    assert_eq!(data["customer"]["version"], 51);
}

/// An amount beyond what the ledger accepts is refused naming the field,
/// and nothing is stored (a sum of such amounts once wrapped to −2).
#[tokio::test]
async fn amounts_beyond_the_limit_are_refused() {
    let server = TestServer::start().await;
    server
        .ok(
            &mutation("registerCustomer", "rich", 1, r#"{channel: "web"}"#),
            json!({}),
        )
        .await;
    let head = server.head().await;
    let answer = server
        .gql(
            Some(Role::App),
            &mutation(
                "placeOrder",
                "rich",
                2,
                r#"{orderId: "o1", amount: {minor: 9223372036854775807, currency: "USD"}, itemCount: 1}"#,
            ),
            json!({}),
        )
        .await;
    assert_eq!(
        error_code(&answer),
        Some("BAD_USER_INPUT".to_owned()),
        "{answer}"
    );
    assert!(
        answer.to_string().contains("input.amount.minor"),
        "{answer}"
    );
    assert_eq!(server.head().await, head);
}

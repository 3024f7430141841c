//! The pipeline endpoints over real HTTP: the Segment tracking API and
//! CloudEvents, with per-message results, idempotent retries, refusals that
//! name the message and the reason, auth and body limits.

mod api_support;

use std::collections::BTreeSet;

use api_support::{key, TestServer};
use base64::Engine as _;
use chrono::Utc;
use journey_ledger::api::auth::Role;
use journey_ledger::import::segment::SegmentMapping;
use journey_ledger::store::ReadStream;
use serde_json::{json, Value};

fn basic(write_key: &str) -> (&'static str, String) {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{write_key}:"));
    ("authorization", format!("Basic {token}"))
}

fn json_type() -> (&'static str, String) {
    ("content-type", "application/json".into())
}

fn track(id: &str, at: &str, event: &str, properties: Value) -> Value {
    json!({"type": "track", "userId": "seg-1", "messageId": id, "timestamp": at,
           "event": event, "properties": properties})
}

/// One message per mapped `track` name (and identify, page, screen), in an
/// order whose ids all exist: what a shop's SDK would send over a day.
fn every_mapped_event() -> Vec<Value> {
    vec![
        json!({"type": "identify", "userId": "seg-1", "messageId": "m00",
               "timestamp": "2024-03-01T09:00:00Z",
               "context": {"campaign": {"source": "newsletter"}},
               "traits": {"email": "ada@example.com", "firstName": "Ada", "plan": "pro"}}),
        json!({"type": "page", "userId": "seg-1", "messageId": "m01",
               "timestamp": "2024-03-01T09:01:00Z", "properties": {"url": "/"}}),
        json!({"type": "screen", "userId": "seg-1", "messageId": "m02",
               "timestamp": "2024-03-01T09:02:00Z", "name": "Home"}),
        track(
            "m03",
            "2024-03-01T09:03:00Z",
            "Consent Given",
            json!({"purpose": "marketing_email"}),
        ),
        track(
            "m04",
            "2024-03-01T09:04:00Z",
            "Email Opened",
            json!({"campaign_id": "spring"}),
        ),
        track(
            "m05",
            "2024-03-01T09:05:00Z",
            "Checkout Started",
            json!({"order_id": "o-1", "value": 30, "currency": "EUR"}),
        ),
        track(
            "m06",
            "2024-03-01T09:10:00Z",
            "Order Completed",
            json!({"order_id": "o-1", "total": 30.0, "revenue": 25, "currency": "EUR",
                     "products": [{"sku": "a", "quantity": 2}, {"sku": "b"}]}),
        ),
        track(
            "m07",
            "2024-03-01T10:00:00Z",
            "Order Refunded",
            json!({"order_id": "o-1", "total": 10, "currency": "EUR", "products": [{"sku": "b"}]}),
        ),
        track(
            "m08",
            "2024-03-01T11:00:00Z",
            "Cart Viewed",
            json!({"cart_id": "cart-9", "value": "12.50", "currency": "EUR"}),
        ),
        track(
            "m09",
            "2024-03-01T12:00:00Z",
            "Complaint Filed",
            json!({"complaint_id": "k1", "category": "delivery"}),
        ),
        track(
            "m10",
            "2024-03-01T12:30:00Z",
            "Complaint Resolved",
            json!({"complaint_id": "k1"}),
        ),
        track(
            "m11",
            "2024-03-01T13:00:00Z",
            "Ticket Opened",
            json!({"ticket_id": 77, "subject": "late parcel"}),
        ),
        track(
            "m12",
            "2024-03-01T13:30:00Z",
            "Ticket Closed",
            json!({"ticket_id": 77, "solved": true}),
        ),
        track(
            "m13",
            "2024-03-01T14:00:00Z",
            "Survey Answered",
            json!({"survey_id": "nps-q1", "metric": "nps", "score": 9}),
        ),
        track(
            "m14",
            "2024-03-01T15:00:00Z",
            "Subscription Started",
            json!({"subscription_id": "sub1", "plan": "gold", "price": 9.99, "currency": "EUR"}),
        ),
        track(
            "m15",
            "2024-03-01T16:00:00Z",
            "Subscription Cancelled",
            json!({"subscription_id": "sub1"}),
        ),
        track(
            "m16",
            "2024-03-01T17:00:00Z",
            "Consent Withdrawn",
            json!({"purpose": "marketing_email"}),
        ),
    ]
}

async fn stream_types(server: &TestServer, customer: &str) -> Vec<String> {
    let stream = journey_ledger::domain::CustomerId::parse(customer)
        .unwrap()
        .stream_id();
    server
        .store
        .read_stream(&stream, ReadStream::all_forwards())
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_type)
        .collect()
}

fn statuses(body: &Value) -> Vec<String> {
    body["results"]
        .as_array()
        .unwrap_or_else(|| panic!("results in {body}"))
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_segment_batch_records_every_mapped_event_once() {
    let server = TestServer::start().await;
    let batch = every_mapped_event();
    let covered: BTreeSet<String> = batch
        .iter()
        .filter_map(|m| m["event"].as_str().map(str::to_owned))
        .collect();
    let mapped: BTreeSet<String> = SegmentMapping::shipped()
        .track_names()
        .map(str::to_owned)
        .collect();
    assert_eq!(covered, mapped, "the test sends every mapped track name");

    let body = json!({"batch": batch, "sentAt": Utc::now().to_rfc3339()}).to_string();
    let headers = [basic(&key(Role::App)), json_type()];
    let (status, answer) = server.post_to("/v1/batch", &headers, body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["success"], true);
    let got = statuses(&answer);
    assert_eq!(got[5], "held", "Checkout Started waits for an order");
    assert_eq!(got[8], "held", "Cart Viewed waits for an order");
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, s)| s == "accepted" || i == 5 || i == 8),
        "{got:?}"
    );
    assert_eq!(answer["results"][6]["eventType"], "OrderPlaced");
    assert_eq!(answer["results"][6]["id"], "m06");

    let types = stream_types(&server, "seg-1").await;
    assert_eq!(
        types,
        [
            "CustomerRegistered",
            "ProfileChanged",
            "SessionRecorded",
            "SessionRecorded",
            "ConsentGiven",
            "CampaignTouched",
            "OrderPlaced",
            "OrderRefunded",
            "ComplaintFiled",
            "ComplaintResolved",
            "SupportTicketOpened",
            "SupportTicketClosed",
            "SurveyAnswered",
            "SubscriptionStarted",
            "SubscriptionCancelled",
            "ConsentWithdrawn",
        ]
    );
    let stream = journey_ledger::domain::CustomerId::parse("seg-1")
        .unwrap()
        .stream_id();
    let events = server
        .store
        .read_stream(&stream, ReadStream::all_forwards())
        .await
        .unwrap();
    assert!(events[0]
        .payload_json
        .contains("\"channel\":\"newsletter\""));
    assert!(
        !events[1].payload_json.contains("ada@example.com"),
        "personal traits are sealed: {}",
        events[1].payload_json
    );
    let order: Value = serde_json::from_str(&events[6].payload_json).unwrap();
    assert_eq!(
        order,
        json!({"order_id": "o-1", "amount": {"minor": 3000, "currency": "EUR"}, "item_count": 3})
    );
    let refund: Value = serde_json::from_str(&events[7].payload_json).unwrap();
    assert_eq!(refund["kind"], "partial");
    assert_eq!(refund["refund_id"], "m07");

    // The SDK retries the whole batch: nothing new is stored.
    let (status, again) = server.post_to("/v1/batch", &headers, body).await;
    assert_eq!(status, 200, "{again}");
    let got = statuses(&again);
    assert!(
        got.iter().enumerate().all(|(i, s)| match i {
            0 => s == "duplicate", // the profile change
            5 | 8 => s == "held",
            _ => s == "duplicate",
        }),
        "{got:?}"
    );
    assert_eq!(stream_types(&server, "seg-1").await.len(), types.len());

    // The order settled the checkout; the viewed cart was never bought.
    let ingestor = &server.state.ingest.ingestor;
    assert_eq!(ingestor.held().unwrap().count().await.unwrap(), 1);
    assert_eq!(ingestor.release_due(Utc::now()).await.unwrap(), 1);
    assert_eq!(ingestor.release_due(Utc::now()).await.unwrap(), 0);
    let types = stream_types(&server, "seg-1").await;
    assert_eq!(types.last().map(String::as_str), Some("CartAbandoned"));
    let last = server
        .store
        .read_stream(&stream, ReadStream::all_forwards())
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(last.occurred_at.to_rfc3339(), "2024-03-01T12:00:00+00:00");
    assert!(last.payload_json.contains("\"cart_id\":\"cart-9\""));

    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics
            .contains(r#"journey_ingested_messages_total{source="segment",outcome="accepted"} 15"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn duplicates_within_a_batch_and_single_calls_are_stored_once() {
    let server = TestServer::start().await;
    let headers = [basic(&key(Role::App)), json_type()];
    let page = json!({"userId": "seg-2", "messageId": "p1", "timestamp": "2024-03-02T10:00:00Z"});
    let (status, answer) = server
        .post_to("/v1/batch", &headers, json!({"batch": [
            {"type": "page", "userId": "seg-2", "messageId": "p1", "timestamp": "2024-03-02T10:00:00Z"},
            {"type": "page", "userId": "seg-2", "messageId": "p1", "timestamp": "2024-03-02T10:00:00Z"}
        ]}).to_string())
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(statuses(&answer), ["accepted", "duplicate"]);
    let (status, answer) = server.post_to("/v1/page", &headers, page.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(statuses(&answer), ["duplicate"]);
    assert_eq!(
        stream_types(&server, "seg-2").await,
        ["CustomerRegistered", "SessionRecorded"]
    );
}

#[tokio::test]
async fn unmapped_events_are_refused_by_name_and_the_rest_is_stored() {
    let server = TestServer::start().await;
    let headers = [basic(&key(Role::App)), json_type()];
    let batch = json!({"batch": [
        track("u1", "2024-03-03T10:00:00Z", "Order Completed",
              json!({"order_id": "o-7", "total": 5, "currency": "USD"})),
        track("u2", "2024-03-03T10:01:00Z", "Product Teleported", json!({})),
        {"type": "track", "anonymousId": "anon-1", "messageId": "u3", "event": "Order Completed"},
        track("u4", "2024-03-03T10:02:00Z", "Order Completed",
              json!({"order_id": "o-8", "total": 5.001, "currency": "USD"})),
    ]});
    let (status, answer) = server
        .post_to("/v1/batch", &headers, batch.to_string())
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["code"], "refused");
    let message = answer["message"].as_str().unwrap();
    assert!(message.starts_with("3 of 4 messages refused"), "{message}");
    assert!(
        message.contains("#1 (u2): event: no mapping for track event \"Product Teleported\""),
        "{message}"
    );
    assert!(message.contains("#2 (u3): userId: missing"), "{message}");
    assert!(message.contains("more than 2 decimal places"), "{message}");
    assert_eq!(
        statuses(&answer),
        ["accepted", "refused", "refused", "refused"]
    );
    assert_eq!(
        stream_types(&server, "seg-1").await,
        ["CustomerRegistered", "OrderPlaced"]
    );
}

#[tokio::test]
async fn bad_keys_bad_json_and_huge_bodies_store_nothing() {
    let server = TestServer::start().await;
    let batch = json!({"batch": [track("k1", "2024-03-04T10:00:00Z", "Order Completed",
        json!({"order_id": "o", "total": 1, "currency": "USD"}))]})
    .to_string();
    for headers in [
        vec![basic("not-a-configured-write-key"), json_type()],
        vec![json_type()],
        vec![("authorization", "Basic !!!".to_owned()), json_type()],
    ] {
        let (status, answer) = server.post_to("/v1/batch", &headers, batch.clone()).await;
        assert_eq!(status, 401, "{answer}");
        assert!(answer["message"].as_str().unwrap().contains("write key"));
    }
    let (status, answer) = server
        .post_to(
            "/v1/batch",
            &[basic(&key(Role::App)), json_type()],
            "{not json",
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(answer["code"], "invalid_json");

    let padding = "x".repeat(10 * 1024 * 1024);
    let huge = json!({"batch": [track("k2", "2024-03-04T10:00:00Z", "Order Completed",
        json!({"order_id": "o", "total": 1, "currency": "USD", "note": padding}))]})
    .to_string();
    let (status, _) = server
        .post_to("/v1/batch", &[basic(&key(Role::App)), json_type()], huge)
        .await;
    assert_eq!(status, 413);

    let big_message = json!({"batch": [track("k3", "2024-03-04T10:00:00Z", "Order Completed",
        json!({"order_id": "o", "total": 1, "currency": "USD", "note": "y".repeat(40_000)}))]})
    .to_string();
    let (status, answer) = server
        .post_to(
            "/v1/batch",
            &[basic(&key(Role::App)), json_type()],
            big_message,
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["message"]
        .as_str()
        .unwrap()
        .contains("at most 32768 per message"));
    assert_eq!(server.head().await, 0, "nothing was stored");
}

#[tokio::test]
async fn a_cloudevents_batch_stores_the_good_members_and_names_the_bad_one() {
    let server = TestServer::start().await;
    let member = |id: &str, ty: &str, data: Value| {
        json!({"specversion": "1.0", "id": id, "source": "/shop/checkout", "type": ty,
               "subject": "ce-1", "time": "2024-03-05T10:00:00Z",
               "datacontenttype": "application/json", "data": data})
    };
    let batch = json!([
        member(
            "e1",
            "OrderPlaced",
            json!({"order_id": "o1", "amount": {"minor": 1250, "currency": "EUR"}, "item_count": 1})
        ),
        member(
            "e2",
            "OrderPlaced",
            json!({"order_id": "o2", "amount": {"minor": "lots", "currency": "EUR"}, "item_count": 1})
        ),
        member(
            "e3",
            "SessionRecorded",
            json!({"session_id": "s1", "channel": "app"})
        ),
    ]);
    let headers = [
        ("authorization", format!("Bearer {}", key(Role::App))),
        (
            "content-type",
            "application/cloudevents-batch+json".to_owned(),
        ),
    ];
    let (status, answer) = server
        .post_to("/cloudevents", &headers, batch.to_string())
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(statuses(&answer), ["accepted", "refused", "accepted"]);
    assert_eq!(answer["results"][1]["id"], "e2");
    assert_eq!(
        answer["results"][1]["reason"],
        "data.amount.minor: invalid type: string \"lots\", expected i64"
    );
    assert_eq!(
        stream_types(&server, "ce-1").await,
        ["CustomerRegistered", "OrderPlaced", "SessionRecorded"]
    );

    // Redelivery of the good members is idempotent (id + source).
    let (status, answer) = server
        .post_to(
            "/cloudevents",
            &headers,
            json!([batch[0], batch[2]]).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(statuses(&answer), ["duplicate", "duplicate"]);

    // Binary mode: attributes in ce-* headers, the payload as the body.
    let binary = [
        ("authorization", format!("Bearer {}", key(Role::App))),
        ("content-type", "application/json".to_owned()),
        ("ce-specversion", "1.0".to_owned()),
        ("ce-id", "e4".to_owned()),
        ("ce-source", "/support".to_owned()),
        ("ce-type", "ComplaintFiled".to_owned()),
        ("ce-subject", "ce-1".to_owned()),
        ("ce-time", "2024-03-05T11:00:00Z".to_owned()),
    ];
    let (status, answer) = server
        .post_to(
            "/cloudevents",
            &binary,
            json!({"complaint_id": "k", "category": "billing"}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        stream_types(&server, "ce-1").await.last().unwrap(),
        "ComplaintFiled"
    );
}

#[tokio::test]
async fn an_order_completed_twice_under_two_message_ids_is_stored_once() {
    let server = TestServer::start().await;
    let headers = [basic(&key(Role::App)), json_type()];
    let order = |id: &str, at: &str| {
        track(
            id,
            at,
            "Order Completed",
            json!({"order_id": "o-77", "total": 19.99, "currency": "USD"}),
        )
    };
    let (status, first) = server
        .post_to(
            "/v1/track",
            &headers,
            order("r1", "2024-03-06T10:00:00Z").to_string(),
        )
        .await;
    assert_eq!(status, 200, "{first}");
    // The confirmation page reloaded: same order, new message id and time.
    let (status, again) = server
        .post_to(
            "/v1/track",
            &headers,
            order("r2", "2024-03-06T10:00:07Z").to_string(),
        )
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(statuses(&again), ["duplicate"]);
    assert!(again["results"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("stored first"));
    assert_eq!(
        stream_types(&server, "seg-1").await,
        ["CustomerRegistered", "OrderPlaced"]
    );
}

/// The same ingestion on PostgreSQL: registration, per-message results,
/// held carts settled by an order or released, resends stored once.
#[tokio::test]
async fn ingestion_on_postgres_holds_settles_and_releases() {
    use journey_ledger::import::held::HeldEvents;
    use journey_ledger::import::ingest::{Ingestor, Status};
    let db = journey_ledger::testing::TempDatabase::create()
        .await
        .expect("PostgreSQL at DATABASE_URL");
    let store = journey_ledger::store::open(&db.url).await.unwrap();
    let held = HeldEvents::open_if_supported(&db.url).await.unwrap();
    assert!(held.is_some(), "PostgreSQL keeps held events");
    let ingestor = Ingestor::new(store.clone(), None, held);
    let mapping = SegmentMapping::shipped();
    let messages = [
        track(
            "p1",
            "2024-04-01T10:00:00Z",
            "Checkout Started",
            json!({"order_id": "o-1", "value": 20, "currency": "EUR"}),
        ),
        track(
            "p2",
            "2024-04-01T10:05:00Z",
            "Order Completed",
            json!({"order_id": "o-1", "total": 20, "currency": "EUR"}),
        ),
        track(
            "p3",
            "2024-04-01T11:00:00Z",
            "Cart Viewed",
            json!({"cart_id": "c-2", "value": 5, "currency": "EUR"}),
        ),
    ];
    let convert = || {
        messages
            .iter()
            .map(|m| mapping.convert("pg-shop", None, m, Utc::now()))
            .collect::<Vec<_>>()
    };
    let outcomes = ingestor.ingest(convert()).await.unwrap();
    let got: Vec<Status> = outcomes.iter().map(|o| o.status).collect();
    assert_eq!(got, [Status::Held, Status::Accepted, Status::Held]);
    let again = ingestor.ingest(convert()).await.unwrap();
    let got: Vec<Status> = again.iter().map(|o| o.status).collect();
    assert_eq!(got, [Status::Held, Status::Duplicate, Status::Held]);
    let held = ingestor.held().unwrap();
    assert_eq!(
        held.count().await.unwrap(),
        1,
        "the order settled the checkout"
    );
    assert_eq!(ingestor.release_due(Utc::now()).await.unwrap(), 1);
    assert_eq!(held.count().await.unwrap(), 0);
    let stream = journey_ledger::domain::CustomerId::parse("seg-1")
        .unwrap()
        .stream_id();
    let types: Vec<String> = store
        .read_stream(&stream, ReadStream::all_forwards())
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    assert_eq!(
        types,
        ["CustomerRegistered", "OrderPlaced", "CartAbandoned"]
    );
    drop(store);
    db.drop_database().await;
}

//! Churn warnings on time: a server whose clock the test moves sends
//! `stageChanged` and `alertRaised` for a customer who has gone silent,
//! within a second of the deadline and with no event appended, and a
//! restart in between neither loses nor repeats anything.

mod api_support;

use std::time::{Duration, Instant};

use api_support::{key, ws, TestServer};
use chrono::{DateTime, Utc};
use journey_ledger::api::auth::Role;
use journey_ledger::projections::clock::{Clock, ManualClock};
use journey_ledger::projections::runner::ProjectorOptions;
use serde_json::{json, Value};
use sqlx::Row;

const RESULT: &str = "{ events { position } }";

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

async fn record(server: &TestServer, name: &str, when: &str, input: &str) {
    let query = format!(
        r#"mutation {{ {name}(customerId: "quiet", occurredAt: "{when}", input: {input}) {RESULT} }}"#
    );
    server.ok(&query, json!({})).await;
}

async fn order(server: &TestServer, when: &str, id: &str) {
    let input =
        format!(r#"{{orderId: "{id}", amount: {{minor: 2500, currency: "USD"}}, itemCount: 1}}"#);
    record(server, "placeOrder", when, &input).await;
}

async fn subscribe(server: &TestServer) -> (ws::Socket, ws::Socket) {
    ws::stage_and_alert_feeds(&server.ws_url(), &key(Role::App)).await
}

/// Moves the clock to `to` and returns the next message of `socket` and
/// how long after the move it came.
async fn after_moving(clock: &ManualClock, to: &str, socket: &mut ws::Socket) -> (Value, Duration) {
    let moved = Instant::now();
    clock.set(at(to));
    let message = ws::next_json(socket).await;
    (message["payload"]["data"].clone(), moved.elapsed())
}

async fn caught_up(server: &TestServer) {
    for _ in 0..200 {
        let status = server
            .ok("{ projectionStatus { projections { lag } } }", json!({}))
            .await;
        let lags = status["projectionStatus"]["projections"]
            .as_array()
            .unwrap();
        if !lags.is_empty() && lags.iter().all(|p| p["lag"] == 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("projections did not catch up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_customers_change_stage_and_raise_alerts_on_time_across_a_restart() {
    let clock = ManualClock::new(at("2024-02-11T00:00:00Z"));
    let options = ProjectorOptions {
        clock: Clock::Manual(clock.clone()),
        ..ProjectorOptions::default()
    };
    let server = TestServer::start_projected_with(options.clone()).await;
    record(
        &server,
        "registerCustomer",
        "2024-01-01T10:00:00Z",
        r#"{channel: "web"}"#,
    )
    .await;
    order(&server, "2024-01-02T10:00:00Z", "o1").await;
    order(&server, "2024-01-20T10:00:00Z", "o2").await;
    order(&server, "2024-02-10T10:00:00Z", "o3").await;
    caught_up(&server).await;
    let (mut stages, mut alerts) = subscribe(&server).await;

    // New ends 90 days after the first order: no event, the clock alone.
    let (data, took) = after_moving(&clock, "2024-04-01T10:00:00Z", &mut stages).await;
    assert_eq!(
        data["stageChanged"],
        json!({"customerId": "quiet", "from": "new", "to": "active", "at": "2024-04-01T10:00:00+00:00"})
    );
    assert!(took < Duration::from_secs(1), "stage change after {took:?}");

    // One order in the 90 days before 2024-04-19 10:00 against two in the 90
    // before those: a frequency drop, the microsecond the window closes.
    let (data, took) = after_moving(&clock, "2024-04-19T10:00:01Z", &mut alerts).await;
    assert_eq!(data["alertRaised"]["kind"], "frequency_drop");
    assert_eq!(
        data["alertRaised"]["raisedAt"],
        "2024-04-19T10:00:00.000001+00:00"
    );
    assert!(took < Duration::from_secs(1), "alert after {took:?}");

    // Restart: nothing is redone, and the next deadline still comes.
    let files = server.stop().await;
    let server = TestServer::restart(files, options.clone()).await;
    let (mut stages, _alerts) = subscribe(&server).await;
    let (data, took) = after_moving(&clock, "2024-05-10T10:00:00Z", &mut stages).await;
    assert_eq!(
        data["stageChanged"],
        json!({"customerId": "quiet", "from": "active", "to": "at_risk", "at": "2024-05-10T10:00:00+00:00"})
    );
    assert!(took < Duration::from_secs(1), "stage change after {took:?}");

    // The tables hold every change once, as a rebuild at this clock would.
    caught_up(&server).await;
    let pool = sqlx::SqlitePool::connect(&server.url).await.unwrap();
    let stages: Vec<String> = sqlx::query(
        "SELECT s.name FROM lifecycle_transitions t JOIN lifecycle_stages s ON s.code = t.to_stage \
         WHERE t.customer_id = 'quiet' \
         AND t.model_version = (SELECT model_version FROM projection_versions WHERE status = 'active') \
         ORDER BY t.seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect();
    assert_eq!(stages, ["prospect", "new", "active", "at_risk"]);
    let alerts: Vec<(String, i64)> = sqlx::query(
        "SELECT rule, at_us FROM churn_alerts WHERE customer_id = 'quiet' \
         AND model_version = (SELECT model_version FROM projection_versions WHERE status = 'active')",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    assert_eq!(
        alerts,
        [(
            "frequency_drop".to_owned(),
            at("2024-04-19T10:00:00.000001Z").timestamp_micros()
        )]
    );
    let current: String = sqlx::query_scalar(
        "SELECT stage FROM lifecycle_customers WHERE customer_id = 'quiet' \
         AND model_version = (SELECT model_version FROM projection_versions WHERE status = 'active')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(current, "at_risk");
    pool.close().await;
}

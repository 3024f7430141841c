//! `journey bench ingest`: Segment batches over HTTP on loopback, as a
//! shop's SDKs send them, into the server `journey serve` runs.
//!
//! C clients each post `/v1/batch` requests of B messages (a realistic mix:
//! orders, page views, email opens, identifies) for customers drawn at random,
//! closed loop, for S seconds. Reported: messages stored per second, the
//! latency of a batch (p50, p99, p99.9), refusals (must be 0), and a full
//! hash-chain verification of the store afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{percentile, BenchError, SplitMix};
use crate::api::auth::{random_key, ApiKeys, Role};
use crate::api::ingest::IngestSources;
use crate::api::read_models::EventFoldReadModels;
use crate::api::{router, serve, ApiState};
use crate::import::cloudevents::CloudEventsOptions;
use crate::import::held::HeldEvents;
use crate::import::ingest::Ingestor;
use crate::import::segment::SegmentMapping;
use crate::privacy::Vault;
use crate::store;

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct IngestLoad {
    /// Concurrent HTTP clients.
    pub clients: usize,
    /// Messages per `/v1/batch` request.
    pub batch: usize,
    /// Customers messages are spread over.
    pub customers: u64,
    /// How long to send.
    pub seconds: f64,
}

/// Figures of one run.
#[derive(Debug, Serialize)]
pub struct IngestReport {
    /// Backend measured.
    pub backend: &'static str,
    /// Concurrent clients.
    pub clients: usize,
    /// Messages per request.
    pub batch: usize,
    /// Seconds measured.
    pub seconds: f64,
    /// Requests answered 200.
    pub batches: u64,
    /// Messages stored (accepted; registrations of new customers not
    /// counted).
    pub events: u64,
    /// Stored messages per second.
    pub events_per_sec: f64,
    /// Median batch latency, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// Messages refused (a correct run has none).
    pub refused: u64,
    /// The first refusal's reason, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_refusal: Option<String>,
    /// Events whose hash chain was verified after the run.
    pub verified_events: u64,
    /// Whether every chain verified.
    pub intact: bool,
}

/// A realistic message for `customer`: mostly page views, then orders,
/// email opens and identifies.
fn message(rng: &mut SplitMix, customer: u64, run: &str, seq: u64) -> Value {
    let user = format!("ing-{customer:07}");
    let id = format!("{run}-{seq}");
    let at = chrono::Utc::now().to_rfc3339();
    match rng.next_u64() % 10 {
        0..=4 => json!({"type": "page", "userId": user, "messageId": id, "timestamp": at,
                        "properties": {"url": "/products", "title": "Products"}}),
        5..=6 => json!({"type": "track", "event": "Order Completed", "userId": user,
                        "messageId": id, "timestamp": at,
                        "properties": {"order_id": id, "total": 10 + (rng.next_u64() % 9000) as i64 / 100,
                                       "currency": "USD",
                                       "products": [{"sku": "a", "quantity": 1 + rng.next_u64() % 3}]}}),
        7..=8 => json!({"type": "track", "event": "Email Opened", "userId": user,
                        "messageId": id, "timestamp": at,
                        "properties": {"campaign_id": "weekly", "email_subject": "News"}}),
        _ => json!({"type": "identify", "userId": user, "messageId": id, "timestamp": at,
                    "traits": {"plan": "basic", "logins": seq % 50}}),
    }
}

/// Builds the request bodies of one client.
struct BodyGenerator {
    rng: SplitMix,
    run: String,
    seq: u64,
    load: IngestLoad,
}

impl BodyGenerator {
    fn body(&mut self) -> String {
        let batch: Vec<Value> = (0..self.load.batch)
            .map(|_| {
                self.seq += 1;
                let customer = self.rng.next_u64() % self.load.customers;
                message(&mut self.rng, customer, &self.run, self.seq)
            })
            .collect();
        json!({"batch": batch}).to_string()
    }
}

/// Runs the load against a server over the store at `url` (a scratch
/// store: it is appended to).
pub async fn run(url: &str, load: IngestLoad) -> Result<IngestReport, BenchError> {
    let store = store::open(url).await?;
    let vault = Vault::open_if_supported(url)
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?
        .map(Arc::new);
    let held = HeldEvents::open_if_supported(url).await?;
    let key = random_key();
    let mut keys = ApiKeys::default();
    keys.add("bench-shop", Role::App, &key)
        .expect("random keys are long");
    let state = ApiState::new(
        store.clone(),
        Arc::new(EventFoldReadModels::new(store.clone())),
        keys,
        vault.clone(),
    )
    .with_ingest(IngestSources {
        ingestor: Ingestor::new(store.clone(), vault, held),
        segment: Arc::new(SegmentMapping::shipped()),
        cloudevents: Arc::new(CloudEventsOptions::default()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, router(state), async move {
        let _ = stopped.await;
    }));
    let endpoint = format!("http://{addr}/v1/batch");
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    );
    let run = Uuid::new_v4().simple().to_string()[..8].to_owned();
    // Request bodies are built before the clock starts, as a load
    // generator does (an SDK builds them on the shop's machines, not on
    // the ledger's cores); a client that runs out builds more as it goes.
    let prebuilt = ((load.seconds * 150.0) as usize).min(3_000);
    let mut generators = Vec::with_capacity(load.clients);
    for client_no in 0..load.clients {
        let mut generator = BodyGenerator {
            rng: SplitMix((client_no as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            run: format!("{run}-{client_no}"),
            seq: 0,
            load,
        };
        let bodies: Vec<String> = (0..prebuilt).map(|_| generator.body()).collect();
        generators.push((generator, bodies));
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(load.seconds);
    let mut tasks = Vec::with_capacity(load.clients);
    for (mut generator, bodies) in generators {
        let endpoint = endpoint.clone();
        let auth = auth.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut bodies = bodies.into_iter();
            let mut latencies = Vec::new();
            let (mut stored, mut refused) = (0u64, 0u64);
            let mut first_refusal = None;
            while Instant::now() < deadline {
                let body = bodies.next().unwrap_or_else(|| generator.body());
                let sent = Instant::now();
                let answer = client
                    .post(&endpoint)
                    .header("authorization", &auth)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| BenchError::Setup(format!("request failed: {e}")))?;
                let status = answer.status();
                let answer: Value = answer
                    .json()
                    .await
                    .map_err(|e| BenchError::Setup(format!("answer is not JSON: {e}")))?;
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                if !status.is_success() && status.as_u16() != 400 {
                    return Err(BenchError::Setup(format!("status {status}: {answer}")));
                }
                for result in answer["results"].as_array().into_iter().flatten() {
                    match result["status"].as_str() {
                        Some("accepted") => stored += 1,
                        Some("refused") => {
                            refused += 1;
                            first_refusal.get_or_insert_with(|| result["reason"].to_string());
                        }
                        _ => {}
                    }
                }
            }
            Ok::<_, BenchError>((latencies, stored, refused, first_refusal))
        }));
    }
    let mut latencies = Vec::new();
    let (mut stored, mut refused, mut first_refusal) = (0, 0, None);
    for task in tasks {
        let (l, s, r, f) = task
            .await
            .map_err(|e| BenchError::Setup(format!("client task: {e}")))??;
        latencies.extend(l);
        stored += s;
        refused += r;
        first_refusal = first_refusal.or(f);
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = stop.send(());
    let _ = server.await;
    latencies.sort_by(f64::total_cmp);
    let ms = |q: f64| percentile(&latencies, q);
    let report = crate::audit::verify::verify_store(store.clone(), |_| {})
        .await
        .map_err(|e| BenchError::Setup(format!("verification: {e}")))?;
    Ok(IngestReport {
        backend: store.backend(),
        clients: load.clients,
        batch: load.batch,
        seconds,
        batches: latencies.len() as u64,
        events: stored,
        events_per_sec: stored as f64 / seconds,
        p50_ms: ms(0.50),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        refused,
        first_refusal,
        verified_events: report.events,
        intact: report.is_intact(),
    })
}

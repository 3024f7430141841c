//! `journey bench query`: `customer(id)` lookups over HTTP on loopback at a
//! fixed request rate, against a server started in-process.
//!
//! Open loop: requests are issued on a fixed schedule whatever the server's
//! speed, and each latency is measured from its *scheduled* start, so a
//! stalled server shows up in p99 instead of silently lowering the rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use thiserror::Error;

use super::auth::{random_key, ApiKeys, Role};
use super::projected::{start_projections, ProjectedReadModels};
use super::{router, serve, ApiState};
use crate::domain::StreamId;
use crate::projections::rules::RuleSet;
use crate::projections::storage::{ReadModelDb, VersionStatus};
use crate::store::{self, ExpectedVersion, StoreError, StreamWrite};

/// Customers appended per atomic batch while populating.
const POPULATE_BATCH: u64 = 100;

/// How long the live runner may take to apply what the rebuild left
/// (a population refit over a million customers takes minutes).
const CATCH_UP_LIMIT: Duration = Duration::from_secs(30 * 60);

/// Figures of `bench query`.
#[derive(Debug, Serialize)]
pub struct QueryBenchReport {
    /// Backend measured.
    pub backend: &'static str,
    /// Customer streams in the store.
    pub customers: u64,
    /// Customers appended to reach `customers`.
    pub populated: u64,
    /// Where the requests went: `in-process`, or the `--servers` in turn.
    pub targets: Vec<String>,
    /// Requested rate.
    pub target_rps: u64,
    /// The instant customers were asked as of (RFC 3339), when not now.
    pub as_of: Option<String>,
    /// Seconds of requests at the same rate before measuring (not counted
    /// in `requests` or the latencies; their errors are counted).
    pub warmup_seconds: u64,
    /// Requests issued while measuring.
    pub requests: u64,
    /// Requests that failed or returned GraphQL errors.
    pub errors: u64,
    /// Completed requests per second of wall time.
    pub achieved_rps: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Worst latency, ms.
    pub max_ms: f64,
}

/// Why the benchmark could not run.
#[derive(Debug, Error)]
pub enum QueryBenchError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The local server could not start.
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    /// Arguments out of range.
    #[error("{0}")]
    Arguments(String),
    /// The read models could not be opened.
    #[error(transparent)]
    ReadModels(#[from] crate::projections::storage::StorageError),
    /// The projections could not be brought up to date.
    #[error(transparent)]
    Projections(#[from] crate::projections::runner::RunnerError),
    /// The live runner did not apply the store's events in time.
    #[error(
        "the read models did not reach position {head} within {CATCH_UP_LIMIT:?}; see the log"
    )]
    NotCaughtUp {
        /// The store's last position when the server started.
        head: u64,
    },
    /// The key table could not be opened.
    #[error(transparent)]
    Privacy(#[from] crate::privacy::PrivacyError),
}

/// What `bench query` measures.
#[derive(Debug, Clone)]
pub struct QueryBench {
    /// Customers to spread lookups over.
    pub customers: u64,
    /// Append synthetic customers if the store has fewer.
    pub populate: bool,
    /// Requests per second.
    pub rps: u64,
    /// Seconds measured.
    pub seconds: u64,
    /// Seconds at the same rate before measuring, not counted.
    pub warmup_seconds: u64,
    /// Running servers (`http://host:port`) to drive, request by request
    /// in turn, instead of one started in this process: a deployment of
    /// several replicas on one store. Empty: serve in-process.
    pub servers: Vec<String>,
    /// The API key for `servers` (a role that may read customers).
    pub api_key: Option<String>,
    /// Look customers up as of this instant instead of now.
    pub as_of: Option<DateTime<Utc>>,
}

/// What each request asks for.
#[derive(Debug, Clone)]
struct Lookup {
    /// Customers, picked in a scattered order.
    ids: Arc<Vec<String>>,
    /// `customer(asOf:)`, when given.
    as_of: Option<DateTime<Utc>>,
}

/// Runs the benchmark on the store at `url`.
pub async fn query(
    url: &str,
    bench: &QueryBench,
    options: crate::projections::runner::ProjectorOptions,
) -> Result<QueryBenchReport, QueryBenchError> {
    let QueryBench {
        customers,
        populate,
        rps,
        seconds,
        warmup_seconds,
        ..
    } = *bench;
    if rps == 0 || seconds == 0 || customers == 0 {
        return Err(QueryBenchError::Arguments(
            "--customers, --rps and --seconds must be positive".into(),
        ));
    }
    let external = !bench.servers.is_empty();
    if external && bench.api_key.is_none() {
        return Err(QueryBenchError::Arguments(
            "--servers needs --api-key (or JOURNEY_API_KEY): a key of those servers".into(),
        ));
    }
    let store = store::open(url).await?;
    let mut ids = customer_ids(&store, customers).await?;
    let populated = customers.saturating_sub(ids.len() as u64);
    if populated > 0 && (!populate || external) {
        return Err(QueryBenchError::Arguments(format!(
            "the store has {} customers, fewer than --customers {customers}; \
             pass --populate to append synthetic ones (on a scratch store, without --servers)",
            ids.len()
        )));
    }
    if populated > 0 {
        populate_customers(&store, populated, &mut ids).await?;
    }
    let ids = Arc::new(ids);
    let lookup = Lookup {
        ids: ids.clone(),
        as_of: bench.as_of,
    };
    let report = |load: LoadFigures, targets: Vec<String>| QueryBenchReport {
        backend: store.backend(),
        customers: ids.len() as u64,
        populated,
        targets,
        target_rps: rps,
        as_of: bench.as_of.map(|at| at.to_rfc3339()),
        warmup_seconds,
        requests: load.requests,
        errors: load.errors,
        achieved_rps: load.achieved_rps,
        p50_ms: load.p50_ms,
        p99_ms: load.p99_ms,
        max_ms: load.max_ms,
    };
    if external {
        let endpoints = bench
            .servers
            .iter()
            .map(|s| format!("{}/graphql", s.trim_end_matches('/')))
            .collect();
        let key = bench.api_key.clone().expect("checked above");
        let load = drive(endpoints, key, lookup, rps, seconds, warmup_seconds).await?;
        return Ok(report(load, bench.servers.clone()));
    }

    let vault = crate::privacy::Vault::open_if_supported(url)
        .await?
        .map(Arc::new);
    let key = random_key();
    let mut keys = ApiKeys::default();
    keys.add("bench", Role::Admin, &key)
        .expect("random keys are long");
    // The server as `journey serve` runs it: projections rebuilt when no
    // version is active, then followed live; queries on a separate pool.
    let writer = ReadModelDb::open(url).await?;
    let reader = ReadModelDb::open_for_queries(url, 4).await?;
    let state = ApiState::new(
        store.clone(),
        Arc::new(
            ProjectedReadModels::new(store.clone(), reader, vault.clone())
                .with_writer(writer.clone()),
        ),
        keys,
        vault,
    );
    let rebuilding = Instant::now();
    let runner = start_projections(
        store.clone(),
        writer.clone(),
        &RuleSet::shipped_defaults(),
        state.live.clone(),
        // The configured clock (--now) and cache budget, as `journey serve`.
        options,
    )
    .await?;
    // Measure the steady state: events the read models have not applied
    // yet (at least the rebuild's own record in `ledger-admin`) and the
    // population refit they bring are waited for, not measured.
    let head = store.head_position().await?;
    while writer
        .latest_with_status(VersionStatus::Active)
        .await?
        .is_none_or(|active| (active.checkpoint as u64) < head)
    {
        if rebuilding.elapsed() > CATCH_UP_LIMIT {
            return Err(QueryBenchError::NotCaughtUp { head });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tracing::info!(
        secs = rebuilding.elapsed().as_secs_f64(),
        "read models ready and caught up"
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, router(state), async move {
        let _ = stopped.await;
    }));
    let endpoint = format!("http://{addr}/graphql");
    let load = drive(vec![endpoint], key, lookup, rps, seconds, warmup_seconds).await;
    let _ = stop.send(());
    let _ = server.await;
    runner.stop();
    Ok(report(load?, vec!["in-process".to_owned()]))
}

/// Appends `count` synthetic customers, adding their ids to `ids`.
async fn populate_customers(
    store: &Arc<dyn store::EventStore>,
    count: u64,
    ids: &mut Vec<String>,
) -> Result<(), StoreError> {
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mut next = 0u64;
    while next < count {
        let end = (next + POPULATE_BATCH).min(count);
        let writes = (next..end)
            .map(|i| {
                let (id, events) = crate::bench::synthetic_history(&run, i);
                ids.push(id.to_string());
                StreamWrite {
                    stream: id.stream_id(),
                    expected: ExpectedVersion::NoStream,
                    events,
                }
            })
            .collect();
        store.append_batch(writes).await?;
        next = end;
    }
    Ok(())
}

/// Latency figures of one open-loop run.
struct LoadFigures {
    requests: u64,
    errors: u64,
    achieved_rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// Issues `customer(id)` lookups at `rps` for `warmup + seconds`, request
/// `i` to `endpoints[i % n]`, and measures each from its scheduled start.
async fn drive(
    endpoints: Vec<String>,
    key: String,
    lookup: Lookup,
    rps: u64,
    seconds: u64,
    warmup_seconds: u64,
) -> Result<LoadFigures, QueryBenchError> {
    let Lookup { ids, as_of } = lookup;
    if ids.is_empty() {
        return Err(QueryBenchError::Arguments(
            "the store has no customers to look up".into(),
        ));
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .map_err(|e| QueryBenchError::Arguments(e.to_string()))?;
    let warmup = rps * warmup_seconds;
    let total = warmup + rps * seconds;
    let period = Duration::from_secs_f64(1.0 / rps as f64);
    let auth = Arc::new(format!("Bearer {key}"));
    let endpoints: Vec<Arc<str>> = endpoints.into_iter().map(Arc::from).collect();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = started + period.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let client = client.clone();
        let endpoint = endpoints[(i % endpoints.len() as u64) as usize].clone();
        let auth = auth.clone();
        let id = ids[(i.wrapping_mul(2_654_435_761) % ids.len() as u64) as usize].clone();
        tasks.push(tokio::spawn(async move {
            let body = serde_json::json!({
                "operationName": "BenchCustomer",
                "query": "query BenchCustomer($id: String!, $at: DateTime) { customer(id: $id, asOf: $at) { id version stage stageHistory { stage enteredAt } tier loyalty { balance } clv { probabilityAlive } rfm { segment } alerts { kind } historicalValue { orderCount net { minor currency } } } }",
                "variables": {"id": id, "at": as_of},
            });
            let ok = match client
                .post(&*endpoint)
                .header("authorization", auth.as_str())
                .json(&body)
                .send()
                .await
            {
                Ok(resp) if resp.status().is_success() => resp
                    .bytes()
                    .await
                    .map(|b| !b.windows(9).any(|w| w == b"\"errors\":"))
                    .unwrap_or(false),
                _ => false,
            };
            (scheduled.elapsed(), ok)
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut errors = 0u64;
    for (i, task) in tasks.into_iter().enumerate() {
        let (latency, ok) = task.await.expect("request task");
        errors += u64::from(!ok);
        if i as u64 >= warmup {
            latencies.push(latency);
        }
    }
    let wall = started.elapsed() - period.mul_f64(warmup as f64);
    latencies.sort();
    let pick = |q: f64| {
        let idx = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[idx].as_secs_f64() * 1e3
    };
    Ok(LoadFigures {
        requests: total - warmup,
        errors,
        achieved_rps: (total - warmup) as f64 / wall.as_secs_f64(),
        p50_ms: pick(0.50),
        p99_ms: pick(0.99),
        max_ms: latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
    })
}

/// Up to `limit` existing customer ids, in stream-name order.
async fn customer_ids(
    store: &Arc<dyn store::EventStore>,
    limit: u64,
) -> Result<Vec<String>, StoreError> {
    let mut ids = Vec::new();
    let mut after: Option<StreamId> = None;
    while (ids.len() as u64) < limit {
        let page = store.list_streams(after.as_ref(), 10_000).await?;
        let Some(last) = page.last().cloned() else {
            break;
        };
        ids.extend(
            page.iter()
                .filter_map(|s| s.customer_id())
                .map(|c| c.to_string())
                .take((limit - ids.len() as u64) as usize),
        );
        after = Some(last);
    }
    Ok(ids)
}

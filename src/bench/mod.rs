//! Store benchmarks behind `journey bench append|read`, each measured beside
//! a bare sqlx baseline on the same backend and row shape, so the figures
//! say what the ledger's own work (planning, hashing, idempotency checks,
//! typed decoding) costs.
//!
//! Timed here, never in tests: numbers on a shared 2-core machine are noisy.

pub mod ingest;
pub mod writers;

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Duration, TimeZone, Utc};
use futures::StreamExt;
use serde::Serialize;
use sqlx::{Executor, QueryBuilder};
use uuid::Uuid;

use crate::domain::events::{
    CampaignTouched, CartAbandoned, ComplaintFiled, CustomerRegistered, DomainEvent, OrderPlaced,
    OrderRefunded, PointsRedeemed, Profile, RefundKind, SessionRecorded, SubscriptionCancelled,
};
use crate::domain::{Currency, CustomerId, EventMetadata, Money, NewEvent};
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{EventStore, ExpectedVersion, StoreError, StreamWrite};

/// Events per generated customer history.
const EVENTS_PER_CUSTOMER: u64 = 10;
/// Customers per atomic batch (1,000 events per transaction).
const CUSTOMERS_PER_BATCH: u64 = 100;
/// Rows per transaction in the bare baseline.
const BARE_ROWS_PER_TX: usize = 1_000;

/// Figures of `bench append`.
#[derive(Debug, Serialize)]
pub struct AppendReport {
    /// Backend measured.
    pub backend: &'static str,
    /// Events appended.
    pub events: u64,
    /// Ledger appends, events per second.
    pub events_per_sec: f64,
    /// Bare batched INSERTs of the same rows, rows per second.
    pub baseline_inserts_per_sec: Option<f64>,
    /// `events_per_sec / baseline_inserts_per_sec`.
    pub ratio_to_baseline: Option<f64>,
    /// Median latency of a single one-event conditional append, ms.
    pub single_append_p50_ms: f64,
    /// 99th percentile of the same, ms.
    pub single_append_p99_ms: f64,
}

/// Figures of `bench read`.
#[derive(Debug, Serialize)]
pub struct ReadReport {
    /// Backend measured.
    pub backend: &'static str,
    /// Events replayed.
    pub events: u64,
    /// Replay with typed decoding, events per second.
    pub events_per_sec: f64,
    /// Bare ordered scan parsing each payload as JSON, rows per second.
    pub baseline_rows_per_sec: Option<f64>,
    /// `events_per_sec / baseline_rows_per_sec`.
    pub ratio_to_baseline: Option<f64>,
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Raw SQL of a baseline failed.
    #[error("baseline query failed: {0}")]
    Sql(#[from] sqlx::Error),
    /// The acknowledgement log of `bench append --writers` could not be
    /// written.
    #[error("writing the ack log: {0}")]
    AckLog(#[from] std::io::Error),
    /// The benchmark could not be set up or its load failed.
    #[error("{0}")]
    Setup(String),
    /// A stored event did not decode.
    #[error("event at position {position} does not decode: {reason}")]
    Decode {
        /// Where.
        position: u64,
        /// Why.
        reason: String,
    },
}

enum Backend {
    Sqlite(Arc<SqliteStore>),
    Postgres(Arc<PostgresStore>),
    Other(Arc<dyn EventStore>),
}

impl Backend {
    async fn open(url: &str) -> Result<Self, StoreError> {
        Ok(if url.starts_with("sqlite:") {
            Backend::Sqlite(Arc::new(SqliteStore::open(url).await?))
        } else if url.starts_with("postgres") {
            Backend::Postgres(Arc::new(PostgresStore::connect(url).await?))
        } else {
            Backend::Other(crate::store::open(url).await?)
        })
    }

    fn store(&self) -> Arc<dyn EventStore> {
        match self {
            Backend::Sqlite(s) => s.clone(),
            Backend::Postgres(s) => s.clone(),
            Backend::Other(s) => s.clone(),
        }
    }
}

/// A realistic customer history: registration, sessions and orders.
pub fn synthetic_history(run: &str, customer: u64) -> (CustomerId, Vec<NewEvent>) {
    let id = CustomerId::parse(&format!("bench-{run}-{customer}")).expect("valid id");
    let start = Utc.with_ymd_and_hms(2019, 1, 1, 0, 0, 0).unwrap()
        + Duration::minutes((customer % 500_000) as i64);
    let metadata = EventMetadata {
        actor: Some("bench".into()),
        source: Some("synthetic".into()),
        ..Default::default()
    };
    // Histories start in 2019 and span at most ~4.2 years, so every event
    // is in the past (as real ones are: commands refuse future instants).
    // Customers differ the way real ones do: each has their own pace
    // (an order every 5–95 days on average) and spend level ($10–$210),
    // and each gap and basket varies around them. Deterministic per
    // customer, so runs compare.
    let mut random = SplitMix(customer.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EED);
    let pace_days = 5.0 + 90.0 * random.unit();
    let spend_cents = 1_000.0 + 20_000.0 * random.unit() * random.unit();
    let mut at = start;
    let mut events = Vec::with_capacity(EVENTS_PER_CUSTOMER as usize);
    for i in 0..EVENTS_PER_CUSTOMER {
        let event = match i {
            0 => DomainEvent::CustomerRegistered(CustomerRegistered {
                channel: ["web", "app", "referral", "paid_search"][(customer % 4) as usize].into(),
                acquisition_cost: Some(Money::new(1_500 + (customer % 700) as i64, Currency::USD)),
                profile: Profile::default(),
            }),
            i if i % 2 == 1 => DomainEvent::SessionRecorded(SessionRecorded {
                session_id: format!("s-{customer}-{i}"),
                channel: "web".into(),
                duration_secs: Some(30 + (i * 17 % 600) as u32),
            }),
            i => DomainEvent::OrderPlaced(OrderPlaced {
                order_id: format!("o-{customer}-{i}"),
                amount: Money::new(
                    (spend_cents * (0.5 + random.unit())).round() as i64,
                    Currency::USD,
                ),
                item_count: 1 + (i % 4) as u32,
            }),
        };
        if i > 0 {
            let hours = (pace_days * 24.0 * (0.2 + 1.6 * random.unit())).round() as i64;
            at += Duration::hours(hours.max(1));
        }
        events.push(NewEvent::from_domain(Uuid::new_v4(), at, &metadata, &event).expect("valid"));
    }
    (id, events)
}

/// Which synthetic histories benchmarks generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Generator {
    /// Customers as varied as real ones: order counts from one to dozens,
    /// each with their own pace and lifetime, sessions and abandoned carts,
    /// refunds, complaints, campaign touches, redemptions and cancelled
    /// subscriptions; about ten events per customer on average.
    #[default]
    Realistic,
    /// Every customer: a registration, five sessions and four orders (the
    /// earlier benchmarks' histories, kept for comparison).
    Fixed,
}

impl Generator {
    /// One customer's history.
    pub fn history(self, run: &str, customer: u64) -> (CustomerId, Vec<NewEvent>) {
        match self {
            Generator::Realistic => realistic_history(run, customer),
            Generator::Fixed => synthetic_history(run, customer),
        }
    }
}

/// A varied customer history (see [`Generator::Realistic`]). Deterministic
/// per customer; every event lies in the past (2019 to 2025).
pub fn realistic_history(run: &str, customer: u64) -> (CustomerId, Vec<NewEvent>) {
    let id = CustomerId::parse(&format!("bench-{run}-{customer}")).expect("valid id");
    let mut random = SplitMix(customer.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ 0xC0FFEE);
    let metadata = EventMetadata {
        actor: Some("bench".into()),
        source: Some("synthetic".into()),
        ..Default::default()
    };
    let start = Utc.with_ymd_and_hms(2019, 1, 1, 0, 0, 0).unwrap()
        + Duration::minutes((random.unit() * 2.5 * 365.0 * 24.0 * 60.0) as i64);
    // Heterogeneous like CDNOW: each customer stops after any purchase with
    // their own probability (most buy once to three times, a few dozens of
    // times) and buys at their own pace, so the purchase models have
    // heterogeneity to fit; about ten events per customer in all.
    let dropout = 0.13 + 0.55 * random.unit();
    let mut orders = 1u32;
    while orders < 60 && random.unit() > dropout {
        orders += 1;
    }
    let pace_days = 4.0 + 120.0 * random.unit() * random.unit();
    let spend_cents = 800.0 + 25_000.0 * random.unit() * random.unit();
    let channel = ["web", "app", "referral", "paid_search", "store"][(customer % 5) as usize];
    let mut events: Vec<(DateTime<Utc>, DomainEvent)> = Vec::new();
    events.push((
        start,
        DomainEvent::CustomerRegistered(CustomerRegistered {
            channel: channel.into(),
            acquisition_cost: Some(Money::new(500 + (customer % 4_000) as i64, Currency::USD)),
            profile: Profile::default(),
        }),
    ));
    let mut at = start + Duration::hours(1 + (random.unit() * 72.0) as i64);
    let mut points_hint = 0i64;
    for n in 0..orders {
        // Sessions before the order, sometimes a cart left behind.
        let sessions = 1 + (random.unit() * 2.0) as u32;
        for k in 0..sessions {
            let session_at = at - Duration::minutes(10 + 40 * i64::from(k));
            events.push((
                session_at,
                DomainEvent::SessionRecorded(SessionRecorded {
                    session_id: format!("s{n}-{k}"),
                    channel: "web".into(),
                    duration_secs: Some(30 + (random.unit() * 900.0) as u32),
                }),
            ));
            if random.unit() < 0.12 {
                events.push((
                    session_at + Duration::minutes(5),
                    DomainEvent::CartAbandoned(CartAbandoned {
                        cart_id: format!("c{n}-{k}"),
                        value: Money::new(
                            (spend_cents * random.unit()) as i64 + 100,
                            Currency::USD,
                        ),
                        item_count: 1 + (random.unit() * 4.0) as u32,
                    }),
                ));
            }
        }
        let amount = (spend_cents * (0.4 + 1.2 * random.unit())).round() as i64;
        points_hint += amount / 100;
        let order_id = format!("o{n}");
        events.push((
            at,
            DomainEvent::OrderPlaced(OrderPlaced {
                order_id: order_id.clone(),
                amount: Money::new(amount, Currency::USD),
                item_count: 1 + (random.unit() * 5.0) as u32,
            }),
        ));
        if random.unit() < 0.06 {
            let full = random.unit() < 0.5;
            events.push((
                at + Duration::days(3 + (random.unit() * 20.0) as i64),
                DomainEvent::OrderRefunded(OrderRefunded {
                    order_id,
                    refund_id: format!("r{n}"),
                    amount: Money::new(if full { amount } else { amount / 3 }, Currency::USD),
                    kind: if full {
                        RefundKind::Full
                    } else {
                        RefundKind::Partial
                    },
                    reason: None,
                }),
            ));
        }
        if random.unit() < 0.04 {
            events.push((
                at + Duration::days(2 + (random.unit() * 10.0) as i64),
                DomainEvent::ComplaintFiled(ComplaintFiled {
                    complaint_id: format!("k{n}"),
                    category: "delivery".into(),
                    description: None,
                }),
            ));
        }
        if random.unit() < 0.05 {
            events.push((
                at - Duration::days(1 + (random.unit() * 5.0) as i64),
                DomainEvent::CampaignTouched(CampaignTouched {
                    campaign_id: "spring-double-points".into(),
                    channel: "email".into(),
                }),
            ));
        }
        if points_hint > 300 && random.unit() < 0.15 {
            events.push((
                at + Duration::days(1),
                DomainEvent::PointsRedeemed(PointsRedeemed {
                    redemption_id: format!("p{n}"),
                    points: 100 + (random.unit() * 200.0) as i64,
                    reward: None,
                }),
            ));
            points_hint = 0;
        }
        let gap_days = pace_days * (-random.unit().max(1e-9).ln());
        at += Duration::minutes((gap_days * 24.0 * 60.0).max(60.0) as i64);
    }
    if random.unit() < 0.03 {
        events.push((
            at,
            DomainEvent::SubscriptionCancelled(SubscriptionCancelled {
                subscription_id: "membership".into(),
                reason: None,
            }),
        ));
    }
    let latest = Utc.with_ymd_and_hms(2025, 12, 31, 0, 0, 0).unwrap();
    events.retain(|(t, _)| *t <= latest && *t >= start);
    events.sort_by_key(|(t, _)| *t);
    let events = events
        .into_iter()
        .map(|(t, e)| NewEvent::from_domain(Uuid::new_v4(), t, &metadata, &e).expect("valid"))
        .collect();
    (id, events)
}

/// A tiny deterministic generator (SplitMix64) for synthetic data.
struct SplitMix(u64);

impl SplitMix {
    /// The next 64 random bits.
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Runs `bench append`.
pub async fn append(url: &str, events: u64, baseline: bool) -> Result<AppendReport, BenchError> {
    let backend = Backend::open(url).await?;
    let store = backend.store();
    let run = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let customers = events.div_ceil(EVENTS_PER_CUSTOMER);
    let batches: Vec<Vec<StreamWrite>> = (0..customers)
        .collect::<Vec<_>>()
        .chunks(CUSTOMERS_PER_BATCH as usize)
        .map(|chunk| {
            chunk
                .iter()
                .map(|&c| {
                    let (id, events) = synthetic_history(&run, c);
                    StreamWrite {
                        stream: id.stream_id(),
                        expected: ExpectedVersion::NoStream,
                        events,
                    }
                })
                .collect()
        })
        .collect();
    let total: u64 = batches
        .iter()
        .flat_map(|b| b.iter().map(|w| w.events.len() as u64))
        .sum();

    // Alternate halves (bare, ledger, bare, ledger) so that background work
    // one leaves behind (checkpoints, vacuum) weighs on both alike.
    let half = batches.len().div_ceil(2);
    let (mut bare_rows, mut bare_secs, mut ledger_secs) = (0u64, 0f64, 0f64);
    for (i, part) in batches.chunks(half.max(1)).enumerate() {
        if baseline {
            let (rows, secs) = bare_insert(&backend, part, bare_rows as i64, i == 0).await?;
            bare_rows += rows;
            bare_secs += secs;
        }
        let owned = part.to_vec();
        let started = Instant::now();
        for batch in owned {
            store.append_batch(batch).await?;
        }
        ledger_secs += started.elapsed().as_secs_f64();
    }
    if baseline {
        drop_bare_table(&backend).await?;
    }
    let rate = total as f64 / ledger_secs;
    let baseline_rate = baseline.then(|| bare_rows as f64 / bare_secs);

    // Latency of single conditional appends, as an app recording one
    // interaction at a time would see it.
    let mut latencies = Vec::with_capacity(300);
    let (one, history) = synthetic_history(&format!("{run}-single"), 0);
    let stream = one.stream_id();
    for (version, event) in history.into_iter().cycle().take(300).enumerate() {
        let event = NewEvent::from_parts(
            Uuid::new_v4(),
            event.event_type(),
            event.schema_version(),
            event.occurred_at(),
            &EventMetadata::default(),
            &serde_json::from_str(event.payload_json()).expect("json"),
        );
        let expected = if version == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(version as u64)
        };
        let t = Instant::now();
        store.append(&stream, expected, vec![event]).await?;
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
    }
    latencies.sort_by(f64::total_cmp);
    Ok(AppendReport {
        backend: store.backend(),
        events: total,
        events_per_sec: rate.round(),
        baseline_inserts_per_sec: baseline_rate.map(f64::round),
        ratio_to_baseline: baseline_rate.map(|b| (rate / b * 100.0).round() / 100.0),
        single_append_p50_ms: percentile(&latencies, 0.50),
        single_append_p99_ms: percentile(&latencies, 0.99),
    })
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    (sorted[i] * 1000.0).round() / 1000.0
}

/// Bare baseline: the same rows, batched INSERTs of 1,000 rows per
/// transaction into a scratch table shaped like `events` (same columns,
/// same unique indexes), no ledger logic. Returns rows per second.
async fn bare_insert(
    backend: &Backend,
    batches: &[Vec<StreamWrite>],
    positions_before: i64,
    create: bool,
) -> Result<(u64, f64), BenchError> {
    let rows: Vec<(i64, &StreamWrite, &NewEvent, i64)> = batches
        .iter()
        .flatten()
        .flat_map(|w| {
            w.events
                .iter()
                .enumerate()
                .map(move |(v, e)| (w, e, v as i64 + 1))
        })
        .enumerate()
        .map(|(i, (w, e, v))| (positions_before + i as i64 + 1, w, e, v))
        .collect();
    let hash = vec![0u8; 32];
    match backend {
        Backend::Sqlite(s) => {
            let pool = s.writer()?;
            if create {
                pool.execute("DROP TABLE IF EXISTS bench_bare").await?;
                pool.execute(
                "CREATE TABLE bench_bare (position INTEGER PRIMARY KEY, event_id BLOB NOT NULL UNIQUE, \
                 stream_id TEXT NOT NULL, version INTEGER NOT NULL, event_type TEXT NOT NULL, \
                 schema_version INTEGER NOT NULL, occurred_at INTEGER NOT NULL, recorded_at INTEGER NOT NULL, \
                 metadata TEXT NOT NULL, payload TEXT NOT NULL, hash BLOB NOT NULL, UNIQUE (stream_id, version))",
                )
                .await?;
            }
            let started = Instant::now();
            for tx_rows in rows.chunks(BARE_ROWS_PER_TX) {
                let mut tx = pool.begin().await?;
                for chunk in tx_rows.chunks(500) {
                    let mut q = QueryBuilder::new("INSERT INTO bench_bare VALUES ");
                    let mut first = true;
                    for (pos, w, e, v) in chunk {
                        if !first {
                            q.push(", ");
                        }
                        first = false;
                        q.push("(")
                            .push_bind(*pos)
                            .push(", ")
                            .push_bind(e.event_id().as_bytes().to_vec())
                            .push(", ")
                            .push_bind(w.stream.as_str())
                            .push(", ")
                            .push_bind(*v)
                            .push(", ")
                            .push_bind(e.event_type())
                            .push(", ")
                            .push_bind(e.schema_version() as i64)
                            .push(", ")
                            .push_bind(e.occurred_at().timestamp_micros())
                            .push(", ")
                            .push_bind(e.occurred_at().timestamp_micros())
                            .push(", ")
                            .push_bind(e.metadata_json())
                            .push(", ")
                            .push_bind(e.payload_json())
                            .push(", ")
                            .push_bind(hash.clone())
                            .push(")");
                    }
                    q.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
            Ok((rows.len() as u64, started.elapsed().as_secs_f64()))
        }
        Backend::Postgres(s) => {
            let pool = s.pool();
            if create {
                pool.execute("DROP TABLE IF EXISTS bench_bare").await?;
                pool.execute(
                "CREATE TABLE bench_bare (position BIGINT PRIMARY KEY, event_id UUID NOT NULL UNIQUE, \
                 stream_id TEXT COLLATE \"C\" NOT NULL, version BIGINT NOT NULL, event_type TEXT NOT NULL, \
                 schema_version INTEGER NOT NULL, occurred_at TIMESTAMPTZ NOT NULL, recorded_at TIMESTAMPTZ NOT NULL, \
                 metadata TEXT NOT NULL, payload TEXT NOT NULL, hash BYTEA NOT NULL, UNIQUE (stream_id, version))",
                )
                .await?;
            }
            let started = Instant::now();
            for tx_rows in rows.chunks(BARE_ROWS_PER_TX) {
                let mut tx = pool.begin().await?;
                let mut q = QueryBuilder::new("INSERT INTO bench_bare ");
                q.push_values(tx_rows, |mut b, (pos, w, e, v)| {
                    b.push_bind(*pos)
                        .push_bind(e.event_id())
                        .push_bind(w.stream.as_str())
                        .push_bind(*v)
                        .push_bind(e.event_type())
                        .push_bind(e.schema_version() as i32)
                        .push_bind(e.occurred_at())
                        .push_bind(e.occurred_at())
                        .push_bind(e.metadata_json())
                        .push_bind(e.payload_json())
                        .push_bind(hash.clone());
                });
                q.build().execute(&mut *tx).await?;
                tx.commit().await?;
            }
            Ok((rows.len() as u64, started.elapsed().as_secs_f64()))
        }
        Backend::Other(_) => Ok((0, f64::NAN)),
    }
}

async fn drop_bare_table(backend: &Backend) -> Result<(), BenchError> {
    match backend {
        Backend::Sqlite(s) => {
            s.writer()?
                .execute("DROP TABLE IF EXISTS bench_bare")
                .await?;
        }
        Backend::Postgres(s) => {
            s.pool().execute("DROP TABLE IF EXISTS bench_bare").await?;
        }
        Backend::Other(_) => {}
    }
    Ok(())
}

/// Runs `bench read`.
pub async fn read(url: &str, baseline: bool) -> Result<ReadReport, BenchError> {
    let backend = Backend::open(url).await?;
    let store = backend.store();
    let baseline_rate = if baseline {
        bare_scan(&backend).await?
    } else {
        None
    };
    let started = Instant::now();
    let mut count = 0u64;
    let mut stream = crate::store::read_all(store.clone(), 0, 5_000);
    while let Some(event) = stream.next().await {
        let event = event?;
        event.decode().map_err(|e| BenchError::Decode {
            position: event.position,
            reason: e.to_string(),
        })?;
        count += 1;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    Ok(ReadReport {
        backend: store.backend(),
        events: count,
        events_per_sec: rate.round(),
        baseline_rows_per_sec: baseline_rate.map(f64::round),
        ratio_to_baseline: baseline_rate.map(|b| (rate / b * 100.0).round() / 100.0),
    })
}

/// The bare scan's query: every column of `events` in position order.
const BARE_SCAN_SQL: &str = "SELECT position, event_id, stream_id, version, event_type, \
     schema_version, occurred_at, recorded_at, metadata, payload, hash FROM events ORDER BY position";

/// Bare baseline on SQLite: one ordered scan of `events`, parsing every
/// payload as untyped JSON. Returns rows per second.
pub async fn bare_scan_sqlite(pool: &sqlx::SqlitePool) -> Result<f64, sqlx::Error> {
    use sqlx::Row;
    let started = Instant::now();
    let mut count = 0u64;
    let mut rows = sqlx::query(BARE_SCAN_SQL).fetch(pool);
    while let Some(row) = rows.next().await {
        let row = row?;
        let payload: &str = row.try_get(9)?;
        let _: serde_json::Value = serde_json::from_str(payload).unwrap_or_default();
        count += 1;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// Bare baseline on PostgreSQL, as [`bare_scan_sqlite`].
pub async fn bare_scan_postgres(pool: &sqlx::PgPool) -> Result<f64, sqlx::Error> {
    use sqlx::Row;
    let started = Instant::now();
    let mut count = 0u64;
    let mut rows = sqlx::query(BARE_SCAN_SQL).fetch(pool);
    while let Some(row) = rows.next().await {
        let row = row?;
        let payload: &str = row.try_get(9)?;
        let _: serde_json::Value = serde_json::from_str(payload).unwrap_or_default();
        count += 1;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

async fn bare_scan(backend: &Backend) -> Result<Option<f64>, BenchError> {
    Ok(match backend {
        Backend::Sqlite(s) => Some(bare_scan_sqlite(s.reader()).await?),
        Backend::Postgres(s) => Some(bare_scan_postgres(s.pool()).await?),
        Backend::Other(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realistic_histories_vary_like_customers_do() {
        let mut events = 0usize;
        let mut orders: Vec<usize> = Vec::new();
        let mut types = std::collections::BTreeSet::new();
        for c in 0..5_000 {
            let (_, history) = realistic_history("t", c);
            events += history.len();
            orders.push(
                history
                    .iter()
                    .filter(|e| e.event_type() == "OrderPlaced")
                    .count(),
            );
            types.extend(history.iter().map(|e| e.event_type().to_owned()));
            assert!(history
                .windows(2)
                .all(|w| w[0].occurred_at() <= w[1].occurred_at()));
        }
        let mean = events as f64 / 5_000.0;
        assert!((8.0..=12.0).contains(&mean), "{mean} events per customer");
        let once = orders.iter().filter(|n| **n == 1).count();
        let many = orders.iter().filter(|n| **n >= 10).count();
        assert!(
            once > 1_000 && many > 20,
            "{once} buy once, {many} ten times or more"
        );
        for t in [
            "OrderRefunded",
            "ComplaintFiled",
            "CartAbandoned",
            "PointsRedeemed",
        ] {
            assert!(types.contains(t), "no {t}");
        }
    }
}

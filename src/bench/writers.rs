//! `journey bench append --writers W`: many concurrent writers, each
//! appending small batches to random customer streams, as frontend apps and
//! ingestion do (one order, one session at a time, from many clients).
//!
//! Closed loop per writer: it sends its next append when the previous one
//! is acknowledged, so throughput rises with writers only if the store
//! commits concurrent appends together (group commit) instead of queueing
//! them one flush each. Latency is each append's, acknowledgement included.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{percentile, BenchError, SplitMix};
use crate::domain::events::{DomainEvent, SessionRecorded};
use crate::domain::{CustomerId, EventMetadata, NewEvent};
use crate::store::{self, EventStore, ExpectedVersion, StreamWrite};

/// Streams the writers pick from at random.
const STREAMS: u64 = 100_000;

/// Payload bytes per event (the peer benchmark's 256).
const PAYLOAD_BYTES: usize = 256;

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct WritersLoad {
    /// Concurrent writers.
    pub writers: usize,
    /// Events per append.
    pub batch: usize,
    /// How long to append.
    pub seconds: f64,
}

/// Where acknowledged appends are written as they are acknowledged, one
/// line each (`event_id` per event, space-separated), unbuffered, so that
/// a crash test can kill the process and check every acknowledged event
/// is stored.
pub type AckLog = Arc<std::sync::Mutex<std::fs::File>>;

/// Figures of one run.
#[derive(Debug, Serialize)]
pub struct WritersReport {
    /// Backend measured.
    pub backend: &'static str,
    /// Concurrent writers.
    pub writers: usize,
    /// Events per append.
    pub batch: usize,
    /// Seconds measured.
    pub seconds: f64,
    /// Acknowledged appends.
    pub appends: u64,
    /// Acknowledged events per second.
    pub events_per_sec: f64,
    /// Median append latency, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// Worst, ms.
    pub max_ms: f64,
}

/// Runs W writers for the given time against the store at `url`.
pub async fn run(
    url: &str,
    load: WritersLoad,
    acks: Option<AckLog>,
) -> Result<WritersReport, BenchError> {
    let store = store::open(url).await?;
    let run = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let deadline = Instant::now() + Duration::from_secs_f64(load.seconds);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(load.writers);
    for writer in 0..load.writers {
        let store = store.clone();
        let run = run.clone();
        let acks = acks.clone();
        tasks.push(tokio::spawn(async move {
            write_until(store, &run, writer as u64, load.batch, deadline, acks).await
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("writer task panicked")?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| match latencies.is_empty() {
        true => 0.0,
        false => percentile(&latencies, q),
    };
    let appends = latencies.len() as u64;
    Ok(WritersReport {
        backend: store.backend(),
        writers: load.writers,
        batch: load.batch,
        seconds: (elapsed * 1000.0).round() / 1000.0,
        appends,
        events_per_sec: (appends as f64 * load.batch as f64 / elapsed).round(),
        p50_ms: pick(0.50),
        p99_ms: pick(0.99),
        p999_ms: pick(0.999),
        max_ms: pick(1.0),
    })
}

/// One writer: appends `batch` events to a random stream, unconditionally,
/// until the deadline; returns each append's latency in milliseconds.
async fn write_until(
    store: Arc<dyn EventStore>,
    run: &str,
    writer: u64,
    batch: usize,
    deadline: Instant,
    acks: Option<AckLog>,
) -> Result<Vec<f64>, BenchError> {
    let mut random = SplitMix(writer.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5eed);
    let mut latencies = Vec::new();
    let mut sequence = 0u64;
    while Instant::now() < deadline {
        let customer = random.next_u64() % STREAMS;
        let id =
            CustomerId::parse(&format!("load-{run}-{customer}")).expect("generated ids are valid");
        let events = (0..batch)
            .map(|_| {
                sequence += 1;
                session(writer, sequence)
            })
            .collect();
        let write = StreamWrite {
            stream: id.stream_id(),
            expected: ExpectedVersion::Any,
            events,
        };
        let ids: Vec<Uuid> = write.events.iter().map(|e| e.event_id()).collect();
        let sent = Instant::now();
        store.append_batch(vec![write]).await?;
        latencies.push(sent.elapsed().as_secs_f64() * 1e3);
        if let Some(log) = &acks {
            use std::io::Write;
            let line: Vec<String> = ids.iter().map(Uuid::to_string).collect();
            let mut file = log.lock().expect("ack log lock");
            writeln!(file, "{}", line.join(" "))?;
        }
    }
    Ok(latencies)
}

/// A session event whose payload JSON is [`PAYLOAD_BYTES`] long (ids are
/// at most 128 bytes, so the session id and the channel share the padding).
fn session(writer: u64, sequence: u64) -> NewEvent {
    let payload = |session_id: String, channel: String| SessionRecorded {
        session_id,
        channel,
        duration_secs: Some(60),
    };
    let frame = serde_json::to_string(&payload(String::new(), String::new()))
        .expect("serializable")
        .len();
    let mut session_id = format!("w{writer}-{sequence}-");
    let mut channel = String::from("web-");
    let mut pad = PAYLOAD_BYTES.saturating_sub(frame + session_id.len() + channel.len());
    let into_id = pad.min(128 - session_id.len());
    session_id.extend(std::iter::repeat_n('x', into_id));
    pad -= into_id;
    channel.extend(std::iter::repeat_n('x', pad.min(124)));
    let at = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("valid")
        + chrono::Duration::seconds(sequence as i64);
    NewEvent::from_domain(
        Uuid::new_v4(),
        at,
        &EventMetadata::default(),
        &DomainEvent::SessionRecorded(payload(session_id, channel)),
    )
    .expect("a valid session")
}

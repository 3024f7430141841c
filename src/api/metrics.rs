//! Counters behind `GET /metrics`, in the Prometheus text format.
//!
//! Hand-rolled (a mutex-guarded map and a few atomics) because the set is
//! small: requests and latency per GraphQL operation, events appended
//! through the API, and projection lag read at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::read_models::ProjectionStatus;

/// Latency bucket upper bounds, seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
/// Distinct operation names tracked; more are counted as `other` so a
/// client cannot grow the label set without bound.
const MAX_OPERATIONS: usize = 200;

#[derive(Debug, Default, Clone)]
struct OperationStats {
    requests: u64,
    errors: u64,
    buckets: [u64; BUCKETS.len()],
    sum_seconds: f64,
}

/// The server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    operations: Mutex<BTreeMap<String, OperationStats>>,
    appended: AtomicU64,
    ingested: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl Metrics {
    /// Records one GraphQL request.
    pub fn observe_request(&self, operation: &str, elapsed: Duration, failed: bool) {
        let mut ops = self.operations.lock().expect("metrics lock");
        let name = sanitize(operation);
        let key = if ops.contains_key(&name) || ops.len() < MAX_OPERATIONS {
            name
        } else {
            "other".to_owned()
        };
        let stats = ops.entry(key).or_default();
        stats.requests += 1;
        stats.errors += u64::from(failed);
        let secs = elapsed.as_secs_f64();
        stats.sum_seconds += secs;
        for (bound, count) in BUCKETS.iter().zip(stats.buckets.iter_mut()) {
            if secs <= *bound {
                *count += 1;
            }
        }
    }

    /// Counts messages of an ingestion source (`segment`, `cloudevents`)
    /// by outcome (`accepted`, `duplicate`, `held`, `unchanged`, `refused`).
    pub fn ingested(&self, source: &'static str, outcome: &'static str, count: u64) {
        if count > 0 {
            *self
                .ingested
                .lock()
                .expect("metrics lock")
                .entry((source, outcome))
                .or_default() += count;
        }
    }

    /// Counts events appended through the API.
    pub fn events_appended(&self, count: u64) {
        self.appended.fetch_add(count, Ordering::Relaxed);
    }

    /// The Prometheus exposition text; `status` adds head and lag gauges,
    /// `rebuilds_failed` (a server running the projections) the count of
    /// failed rebuilds.
    pub fn render(
        &self,
        status: Option<&ProjectionStatus>,
        rebuilds_failed: Option<u64>,
    ) -> String {
        let mut out = String::new();
        let ops = self.operations.lock().expect("metrics lock").clone();
        let ingested = self.ingested.lock().expect("metrics lock").clone();
        out.push_str(
            "# HELP journey_ingested_messages_total Messages received from pipelines, by source and outcome.\n",
        );
        out.push_str("# TYPE journey_ingested_messages_total counter\n");
        for ((source, outcome), count) in &ingested {
            let _ = writeln!(
                out,
                "journey_ingested_messages_total{{source=\"{source}\",outcome=\"{outcome}\"}} {count}"
            );
        }
        out.push_str("# HELP journey_graphql_requests_total GraphQL requests by operation name.\n");
        out.push_str("# TYPE journey_graphql_requests_total counter\n");
        for (op, s) in &ops {
            let _ = writeln!(
                out,
                "journey_graphql_requests_total{{operation=\"{op}\"}} {}",
                s.requests
            );
        }
        out.push_str(
            "# HELP journey_graphql_errors_total GraphQL requests answered with errors.\n",
        );
        out.push_str("# TYPE journey_graphql_errors_total counter\n");
        for (op, s) in &ops {
            let _ = writeln!(
                out,
                "journey_graphql_errors_total{{operation=\"{op}\"}} {}",
                s.errors
            );
        }
        out.push_str("# HELP journey_graphql_request_duration_seconds GraphQL request latency.\n");
        out.push_str("# TYPE journey_graphql_request_duration_seconds histogram\n");
        for (op, s) in &ops {
            for (bound, count) in BUCKETS.iter().zip(s.buckets) {
                let _ = writeln!(
                    out,
                    "journey_graphql_request_duration_seconds_bucket{{operation=\"{op}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "journey_graphql_request_duration_seconds_bucket{{operation=\"{op}\",le=\"+Inf\"}} {}",
                s.requests
            );
            let _ = writeln!(
                out,
                "journey_graphql_request_duration_seconds_sum{{operation=\"{op}\"}} {}",
                s.sum_seconds
            );
            let _ = writeln!(
                out,
                "journey_graphql_request_duration_seconds_count{{operation=\"{op}\"}} {}",
                s.requests
            );
        }
        out.push_str("# HELP journey_events_appended_total Events appended through the API.\n");
        out.push_str("# TYPE journey_events_appended_total counter\n");
        let _ = writeln!(
            out,
            "journey_events_appended_total {}",
            self.appended.load(Ordering::Relaxed)
        );
        if let Some(failed) = rebuilds_failed {
            out.push_str(
                "# HELP journey_rebuilds_failed_total Read-model rebuilds that failed (the live read models stayed on their version).\n",
            );
            out.push_str("# TYPE journey_rebuilds_failed_total counter\n");
            let _ = writeln!(out, "journey_rebuilds_failed_total {failed}");
        }
        if let Some(status) = status {
            out.push_str("# HELP journey_store_head_position Last committed global position.\n");
            out.push_str("# TYPE journey_store_head_position gauge\n");
            let _ = writeln!(out, "journey_store_head_position {}", status.head_position);
            out.push_str(
                "# HELP journey_projection_lag_events Events not yet applied, per projection.\n",
            );
            out.push_str("# TYPE journey_projection_lag_events gauge\n");
            for p in &status.projections {
                let _ = writeln!(
                    out,
                    "journey_projection_lag_events{{projection=\"{}\"}} {}",
                    sanitize(&p.name),
                    p.lag
                );
            }
        }
        out
    }
}

/// Label values limited to `[A-Za-z0-9_]`, at most 64 bytes.
fn sanitize(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect();
    if cleaned.is_empty() {
        "anonymous".to_owned()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.observe_request("GetCustomer", Duration::from_micros(800), false);
        m.observe_request("GetCustomer", Duration::from_millis(30), true);
        m.observe_request("bad\"label", Duration::from_millis(1), false);
        let text = m.render(None, None);
        assert!(text.contains("journey_graphql_requests_total{operation=\"GetCustomer\"} 2"));
        assert!(text.contains("journey_graphql_errors_total{operation=\"GetCustomer\"} 1"));
        assert!(text.contains(
            "journey_graphql_request_duration_seconds_bucket{operation=\"GetCustomer\",le=\"0.001\"} 1"
        ));
        assert!(text.contains(
            "journey_graphql_request_duration_seconds_bucket{operation=\"GetCustomer\",le=\"0.05\"} 2"
        ));
        assert!(text.contains("operation=\"badlabel\""));
    }
}

//! HTTP sources for the pipelines users already run.
//!
//! - Segment tracking API (what Segment's and RudderStack's SDKs send):
//!   `POST /v1/batch`, `/v1/track`, `/v1/identify`, `/v1/page`,
//!   `/v1/screen`. The write key is an API key of role `app` or above, sent
//!   as the HTTP basic user name (the SDKs' convention; a bearer header or a
//!   `writeKey` body field work too).
//! - CloudEvents 1.0: `POST /cloudevents`, structured
//!   (`application/cloudevents+json`), batch
//!   (`application/cloudevents-batch+json`) or binary mode (`ce-*` headers).
//!
//! Every message gets its own result (`accepted`, `duplicate`, `held`,
//! `unchanged`, `refused` with the reason). When any is refused the answer is
//! `400` with `code` and a `message` naming them — the SDKs log that message
//! and do not retry a 4xx (the accepted ones are stored; resending the batch
//! is harmless, as every message is idempotent by its id). A store failure
//! is `503`, which the SDKs retry. Bodies are limited to
//! [`limits::MAX_INGEST_BODY_BYTES`] (gzip accepted), messages to
//! [`limits::MAX_MESSAGE_BYTES`].

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use chrono::Utc;
use serde_json::{json, Value};

use super::auth::{ApiKeys, Caller, Role};
use super::limits;
use super::ApiState;
use crate::import::cloudevents::{parse_structured, CloudEventsOptions};
use crate::import::ingest::{Incoming, Ingestor, Outcome, Status};
use crate::import::segment::SegmentMapping;

/// What the pipeline endpoints need.
#[derive(Clone)]
pub struct IngestSources {
    /// Stores converted batches.
    pub ingestor: Ingestor,
    /// How Segment messages map to events.
    pub segment: Arc<SegmentMapping>,
    /// How CloudEvents envelopes are read.
    pub cloudevents: Arc<CloudEventsOptions>,
}

/// A request refused as a whole, answered in the shape the Segment SDKs
/// log: `{"success": false, "code", "message"}`.
pub struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"success": false, "code": self.code, "message": self.message})),
        )
            .into_response()
    }
}

fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        code,
        message: message.into(),
    }
}

/// The key of a pipeline request: basic user name (Segment SDKs), bearer
/// token, or the body's `writeKey`.
fn caller(keys: &ApiKeys, headers: &HeaderMap, body: Option<&Value>) -> Result<Caller, Refusal> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let key = match header {
        Some(h) if h.starts_with("Basic ") || h.starts_with("basic ") => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(h[6..].trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok());
            decoded.map(|d| d.split(':').next().unwrap_or_default().to_owned())
        }
        Some(h) => h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
            .map(|t| t.trim().to_owned()),
        None => body
            .and_then(|b| b.get("writeKey"))
            .and_then(Value::as_str)
            .map(str::to_owned),
    };
    let refused = || {
        error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "invalid write key: send an API key of role app as the HTTP basic user name \
             (the SDKs' write key) or as a bearer token",
        )
    };
    let caller = key
        .filter(|k| !k.is_empty())
        .and_then(|k| keys.authenticate(&k))
        .ok_or_else(refused)?;
    if caller.role < Role::App {
        return Err(refused());
    }
    Ok(caller)
}

/// Stores converted messages and shapes the answer.
async fn answer(
    state: &ApiState,
    source: &'static str,
    items: Vec<Result<Incoming, String>>,
    references: Vec<Option<String>>,
) -> Response {
    let outcomes = match state.ingest.ingestor.ingest(items).await {
        Ok(outcomes) => outcomes,
        Err(e) => {
            tracing::error!(error = %e, source, "ingestion failed");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("the store failed; nothing may be assumed stored, resend: {e}"),
            )
            .into_response();
        }
    };
    let outcomes: Vec<Outcome> = outcomes
        .into_iter()
        .zip(references)
        .map(|(mut o, reference)| {
            o.id = o.id.or(reference);
            o
        })
        .collect();
    for status in Status::ALL {
        let n = outcomes.iter().filter(|o| o.status == status).count() as u64;
        state.metrics.ingested(source, status.name(), n);
    }
    let appended = outcomes
        .iter()
        .filter(|o| o.status == Status::Accepted)
        .count();
    state.metrics.events_appended(appended as u64);
    let refused: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.status == Status::Refused)
        .collect();
    if refused.is_empty() {
        return Json(json!({"success": true, "results": outcomes})).into_response();
    }
    let mut message = format!(
        "{} of {} messages refused (the others are stored):",
        refused.len(),
        outcomes.len()
    );
    for o in refused.iter().take(10) {
        let id =
            o.id.as_deref()
                .map(|i| format!(" ({i})"))
                .unwrap_or_default();
        message.push_str(&format!(
            " #{}{id}: {};",
            o.index,
            o.reason.as_deref().unwrap_or("refused")
        ));
    }
    if refused.len() > 10 {
        message.push_str(&format!(" and {} more", refused.len() - 10));
    }
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"success": false, "code": "refused", "message": message, "results": outcomes})),
    )
        .into_response()
}

fn reference_of(message: &Value, key: &str) -> Option<String> {
    message.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn parse_json(body: &Bytes) -> Result<Value, Refusal> {
    serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not JSON: {e}"),
        )
    })
}

/// Converts Segment messages (size-checked) for `caller`.
fn convert_segment(
    mapping: &SegmentMapping,
    caller: &Caller,
    kind: Option<&str>,
    messages: &[Value],
    context: Option<&Value>,
) -> (Vec<Result<Incoming, String>>, Vec<Option<String>>) {
    let now = Utc::now();
    let mut items = Vec::with_capacity(messages.len());
    let mut references = Vec::with_capacity(messages.len());
    for message in messages {
        references.push(reference_of(message, "messageId"));
        let size = serde_json::to_vec(message).map(|v| v.len()).unwrap_or(0);
        if size > limits::MAX_MESSAGE_BYTES {
            items.push(Err(format!(
                "message is {size} bytes; at most {} per message",
                limits::MAX_MESSAGE_BYTES
            )));
            continue;
        }
        let with_context;
        let message = match (context, message.get("context")) {
            (Some(batch_context), None) => {
                let mut m = message.clone();
                m["context"] = batch_context.clone();
                with_context = m;
                &with_context
            }
            _ => message,
        };
        items.push(mapping.convert(&caller.name, kind, message, now));
    }
    (items, references)
}

/// `POST /v1/batch`: `{"batch": [messages], "context": {...}}`.
pub async fn segment_batch(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let value = parse_json(&body)?;
    let caller = caller(&state.keys, &headers, Some(&value))?;
    let Some(messages) = value.get("batch").and_then(Value::as_array) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_batch",
            "batch: missing; send {\"batch\": [messages]}",
        ));
    };
    let (items, references) = convert_segment(
        &state.ingest.segment,
        &caller,
        None,
        messages,
        value.get("context"),
    );
    Ok(answer(&state, "segment", items, references).await)
}

/// `POST /v1/track`, `/v1/identify`, `/v1/page`, `/v1/screen`: one
/// message of that type.
pub async fn segment_single(
    State(state): State<ApiState>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    if !["track", "identify", "page", "screen"].contains(&kind.as_str()) {
        return Err(error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("/v1/{kind}: use /v1/batch, /v1/track, /v1/identify, /v1/page or /v1/screen"),
        ));
    }
    let value = parse_json(&body)?;
    let caller = caller(&state.keys, &headers, Some(&value))?;
    let (items, references) = convert_segment(
        &state.ingest.segment,
        &caller,
        Some(&kind),
        std::slice::from_ref(&value),
        None,
    );
    Ok(answer(&state, "segment", items, references).await)
}

/// `POST /cloudevents`: one event (structured or binary mode) or a batch.
pub async fn cloudevents(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let caller = caller(&state.keys, &headers, None)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let options = &state.ingest.cloudevents;
    let now = Utc::now();
    let (items, references) = if content_type.starts_with("application/cloudevents-batch+json") {
        let Value::Array(members) = parse_json(&body)? else {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "invalid_batch",
                "a CloudEvents batch is a JSON array of events",
            ));
        };
        let references = members.iter().map(|m| reference_of(m, "id")).collect();
        let items = members
            .into_iter()
            .map(|m| {
                let size = serde_json::to_vec(&m).map(|v| v.len()).unwrap_or(0);
                if size > limits::MAX_MESSAGE_BYTES {
                    return Err(format!(
                        "event is {size} bytes; at most {} per event",
                        limits::MAX_MESSAGE_BYTES
                    ));
                }
                parse_structured(m).and_then(|e| options.convert(&caller.name, &e, now))
            })
            .collect();
        (items, references)
    } else {
        match cloudevents::binding::http::to_event(&headers, body.to_vec()) {
            Ok(event) => {
                let reference = Some(cloudevents::AttributesReader::id(&event).to_owned());
                (
                    vec![options.convert(&caller.name, &event, now)],
                    vec![reference],
                )
            }
            Err(e) => (vec![Err(format!("not a CloudEvent: {e}"))], vec![None]),
        }
    };
    Ok(answer(&state, "cloudevents", items, references).await)
}

//! The HTTP edge: GraphQL over axum.
//!
//! Routes:
//! - `POST /graphql` — queries and mutations (bearer API key required);
//! - `GET /graphql` — GraphiQL, served from files embedded in the binary;
//! - `GET /workbench` — the analysts' charts (page and chart library
//!   embedded; the data comes from the `workbench` query with the key the
//!   analyst types);
//! - `GET /graphql/ws` — subscriptions (graphql-transport-ws); the key goes
//!   in the `connection_init` payload as `{"Authorization": "Bearer <key>"}`
//!   or in the upgrade request's `Authorization` header;
//! - `POST /v1/batch`, `/v1/track`, `/v1/identify`, `/v1/page`, `/v1/screen`
//!   — the Segment tracking API, and `POST /cloudevents` — CloudEvents
//!   (see [`ingest`]);
//! - `GET /healthz` — liveness: the process answers and reaches its store;
//! - `GET /readyz` — readiness: the store and the read models are readable
//!   (503 with the reason otherwise), with each projection's lag;
//! - `GET /metrics` — Prometheus text (request counts and latency per
//!   operation, events appended, store head, projection lag when known).
//!
//! This module stays thin: rules live in [`crate::commands`], queries behind
//! [`read_models::ReadModels`].

pub mod auth;
pub mod bench;
pub mod error;
pub mod graphiql;
pub mod ingest;
pub mod limits;
pub mod live;
pub mod metrics;
pub mod projected;
pub mod read_models;
pub mod scalars;
pub mod schema;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_graphql::http::ALL_WEBSOCKET_PROTOCOLS;
use async_graphql::Data;
use async_graphql_axum::rejection::GraphQLRejection;
use async_graphql_axum::{GraphQLProtocol, GraphQLRequest, GraphQLResponse, GraphQLWebSocket};
use axum::extract::ws::{CloseFrame, Message};
use axum::extract::{DefaultBodyLimit, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tower_http::decompression::RequestDecompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::commands::CommandHandler;
use crate::store::EventStore;
use auth::{ApiKeys, Caller};
use live::LiveFeeds;
use metrics::Metrics;
use read_models::{ReadModelBalances, ReadModels};
use schema::{build_schema, JourneySchema, Services};

/// Everything the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The executable schema (holds [`Services`]).
    pub schema: JourneySchema,
    /// Known API keys.
    pub keys: Arc<ApiKeys>,
    /// The store (for `/healthz`).
    pub store: Arc<dyn EventStore>,
    /// The read side (for `/metrics` lag).
    pub read_models: Arc<dyn ReadModels>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Broadcasts the projection runner feeds.
    pub live: LiveFeeds,
    /// The pipeline endpoints' converters and writer.
    pub ingest: ingest::IngestSources,
    /// The projections, once started.
    projections: Arc<std::sync::OnceLock<Arc<projected::ProjectionControl>>>,
    /// Rules and settings of `validation` and `workbench`.
    analysis: Arc<std::sync::OnceLock<Arc<crate::report::AnalysisSettings>>>,
}

impl ApiState {
    /// Wires the schema, command handler and counters over a store and a
    /// read side.
    pub fn new(
        store: Arc<dyn EventStore>,
        read_models: Arc<dyn ReadModels>,
        keys: ApiKeys,
        vault: Option<Arc<crate::privacy::Vault>>,
    ) -> Self {
        let metrics = Arc::new(Metrics::default());
        let live = LiveFeeds::default();
        let projections = Arc::new(std::sync::OnceLock::new());
        let analysis = Arc::new(std::sync::OnceLock::new());
        let ingest = ingest::IngestSources {
            ingestor: crate::import::ingest::Ingestor::new(store.clone(), vault.clone(), None),
            segment: Arc::new(crate::import::segment::SegmentMapping::shipped()),
            cloudevents: Arc::new(Default::default()),
        };
        let commands = CommandHandler::new(
            store.clone(),
            Arc::new(ReadModelBalances(read_models.clone())),
        )
        .with_vault(vault.clone());
        let schema = build_schema(Services {
            store: store.clone(),
            read_models: read_models.clone(),
            commands,
            live: live.clone(),
            metrics: metrics.clone(),
            vault,
            projections: projections.clone(),
            analysis: analysis.clone(),
        });
        Self {
            schema,
            keys: Arc::new(keys),
            store,
            read_models,
            metrics,
            live,
            ingest,
            projections,
            analysis,
        }
    }

    /// Uses these pipeline converters and writer (a held-events table, a
    /// mapping file, a CloudEvents type prefix) instead of the defaults.
    pub fn with_ingest(mut self, sources: ingest::IngestSources) -> Self {
        self.ingest = sources;
        self
    }

    /// Sets the rules analysts validate and chart with (first call wins).
    pub fn attach_analysis(&self, settings: crate::report::AnalysisSettings) {
        let _ = self.analysis.set(Arc::new(settings));
    }

    /// Hands the running projections to the API (for `rebuildReadModels`).
    pub fn attach_projections(&self, control: Arc<projected::ProjectionControl>) {
        let _ = self.projections.set(control);
    }
}

/// The application's routes with their limits.
pub fn router(state: ApiState) -> Router {
    let pipelines = Router::new()
        .route("/v1/batch", post(ingest::segment_batch))
        .route("/v1/{kind}", post(ingest::segment_single))
        .route("/cloudevents", post(ingest::cloudevents))
        .layer(DefaultBodyLimit::max(limits::MAX_INGEST_BODY_BYTES))
        .layer(RequestBodyLimitLayer::new(limits::MAX_INGEST_BODY_BYTES))
        .layer(RequestDecompressionLayer::new())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits::REQUEST_TIMEOUT,
        ));
    Router::new()
        .route(
            "/graphql",
            get(graphiql::page)
                .post(graphql_post)
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    limits::REQUEST_TIMEOUT,
                )),
        )
        .route("/graphql/ws", get(graphql_ws))
        .route("/graphql/assets/{name}", get(graphiql::assets))
        .route("/workbench", get(workbench_page))
        .route("/workbench/assets/echarts.min.js", get(echarts_js))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .layer(DefaultBodyLimit::max(limits::MAX_BODY_BYTES))
        .layer(RequestBodyLimitLayer::new(limits::MAX_BODY_BYTES))
        .merge(pipelines)
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` resolves, then finishes
/// the requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// A body that is not a GraphQL request (malformed JSON, no `query`, a
/// bad multipart upload): 400 (413 when too large) with a GraphQL-shaped
/// error, as clients parse every response, naming what is wrong without
/// Rust's debug text.
fn bad_request(rejection: GraphQLRejection) -> Response {
    use async_graphql::ParseRequestError;
    let (status, message) = match &rejection.0 {
        ParseRequestError::Io(e) => (
            StatusCode::BAD_REQUEST,
            format!("the request body could not be read: {e}"),
        ),
        ParseRequestError::InvalidRequest(e) => (
            StatusCode::BAD_REQUEST,
            format!("the request body is not a GraphQL request: {e}"),
        ),
        ParseRequestError::PayloadTooLarge => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is too large".to_owned(),
        ),
        other => (
            StatusCode::BAD_REQUEST,
            format!("the request could not be parsed: {other}"),
        ),
    };
    (
        status,
        Json(serde_json::json!({
            "errors": [{"message": message, "extensions": {"code": "BAD_REQUEST"}}]
        })),
    )
        .into_response()
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(serde_json::json!({
            "errors": [{
                "message": "invalid API key: send Authorization: Bearer <API key>",
                "extensions": {"code": "UNAUTHENTICATED"}
            }]
        })),
    )
        .into_response()
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

async fn graphql_post(
    State(state): State<ApiState>,
    headers: HeaderMap,
    request: Result<GraphQLRequest, GraphQLRejection>,
) -> Response {
    let caller = match state.keys.from_header(authorization(&headers)) {
        Ok(caller) => caller,
        Err(auth::InvalidKey) => return unauthorized(),
    };
    let request = match request {
        Ok(request) => request,
        Err(rejection) => return bad_request(rejection),
    };
    let mut request = request.into_inner();
    let operation = request
        .operation_name
        .clone()
        .unwrap_or_else(|| "anonymous".to_owned());
    if let Some(caller) = caller {
        request = request.data(caller);
    }
    let started = Instant::now();
    let response = state.schema.execute(request).await;
    state
        .metrics
        .observe_request(&operation, started.elapsed(), response.is_err());
    GraphQLResponse::from(response).into_response()
}

async fn graphql_ws(
    State(state): State<ApiState>,
    headers: HeaderMap,
    protocol: GraphQLProtocol,
    upgrade: WebSocketUpgrade,
) -> Response {
    let header_caller = match state.keys.from_header(authorization(&headers)) {
        Ok(caller) => caller,
        Err(auth::InvalidKey) => return unauthorized(),
    };
    let keys = state.keys.clone();
    let schema = state.schema.clone();
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| {
            let (sink, stream) = futures::StreamExt::split(socket);
            let sink = futures::SinkExt::with(sink, |message: Message| async move {
                Ok::<_, axum::Error>(forbidden_close(message))
            });
            GraphQLWebSocket::new_with_pair(sink, stream, schema, protocol)
                .on_connection_init(move |payload| async move {
                    let mut data = Data::default();
                    match connection_caller(&keys, &payload) {
                        Ok(Some(caller)) => data.insert(caller),
                        Ok(None) => {
                            if let Some(caller) = header_caller {
                                data.insert(caller);
                            }
                        }
                        Err(auth::InvalidKey) => {
                            return Err(async_graphql::Error::new(INVALID_KEY_CLOSE));
                        }
                    }
                    Ok(data)
                })
                .serve()
        })
}

/// Why a websocket's `connection_init` was refused (the close reason).
const INVALID_KEY_CLOSE: &str = "Forbidden: invalid API key";

/// async-graphql closes a refused `connection_init` with 1002 (protocol
/// error); graphql-ws clients expect 4403 Forbidden for a bad key, and
/// retry on 1002 as if the server were at fault.
fn forbidden_close(message: Message) -> Message {
    match message {
        Message::Close(Some(frame)) if frame.code == 1002 && frame.reason == INVALID_KEY_CLOSE => {
            Message::Close(Some(CloseFrame {
                code: 4403,
                reason: frame.reason,
            }))
        }
        other => other,
    }
}

/// The caller named by a `connection_init` payload: `{"Authorization":
/// "Bearer <key>"}`, lower-case `authorization`, or the same inside
/// `headers` (what GraphiQL sends).
fn connection_caller(
    keys: &ApiKeys,
    payload: &serde_json::Value,
) -> Result<Option<Caller>, auth::InvalidKey> {
    let find = |v: &serde_json::Value| {
        v.get("Authorization")
            .or_else(|| v.get("authorization"))
            .and_then(|a| a.as_str())
            .map(str::to_owned)
    };
    let value = find(payload).or_else(|| payload.get("headers").and_then(find));
    keys.from_header(value.as_deref())
}

async fn healthz(State(state): State<ApiState>) -> Response {
    match state.store.head_position().await {
        Ok(head) => Json(serde_json::json!({
            "status": "ok",
            "backend": state.store.backend(),
            "headPosition": head,
            "role": state.projections.get().map(|control| control.role()),
        }))
        .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "health check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({"status": "store unavailable"})),
            )
                .into_response()
        }
    }
}

/// Readiness (Kubernetes `readinessProbe`): 200 only when a query would be
/// answered — the store's head and the read models' status both readable.
async fn readyz(State(state): State<ApiState>) -> Response {
    let unready = |what: &str, error: &dyn std::fmt::Display| {
        tracing::warn!(error = %error, "not ready: {what}");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "not ready", "reason": format!("{what}: {error}")})),
        )
            .into_response()
    };
    let head = match state.store.head_position().await {
        Ok(head) => head,
        Err(e) => return unready("store unreadable", &e),
    };
    match state.read_models.projection_status().await {
        Ok(status) => Json(serde_json::json!({
            "status": "ready",
            "backend": state.store.backend(),
            "headPosition": head,
            "role": state.projections.get().map(|control| control.role()),
            "projections": status.projections.iter().map(|p| serde_json::json!({
                "name": p.name, "version": p.version, "checkpoint": p.checkpoint, "lag": p.lag,
            })).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => unready("read models unreadable", &e),
    }
}

async fn metrics_text(State(state): State<ApiState>) -> Response {
    let status = state.read_models.projection_status().await.ok();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(
            status.as_ref(),
            state
                .projections
                .get()
                .map(|control| control.rebuilds_failed()),
        ),
    )
        .into_response()
}

/// `GET /workbench`: the analysts' charts (data over GraphQL with a key).
async fn workbench_page() -> axum::response::Html<String> {
    axum::response::Html(crate::report::page::workbench_page())
}

/// The vendored chart library, cached for a day.
async fn echarts_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        crate::report::page::ECHARTS_JS,
    )
}

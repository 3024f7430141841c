//! A real server on a random local port over a temp SQLite store, with one
//! key per role, shared by the API tests.
#![allow(dead_code)]

pub mod ws;

use std::sync::Arc;

use journey_ledger::api::auth::{ApiKeys, Role};
use journey_ledger::api::ingest::IngestSources;
use journey_ledger::api::projected::{start_projections, ProjectedReadModels, ProjectionControl};
use journey_ledger::api::read_models::{EventFoldReadModels, ReadModels};
use journey_ledger::api::{router, serve, ApiState};
use journey_ledger::import::cloudevents::CloudEventsOptions;
use journey_ledger::import::held::HeldEvents;
use journey_ledger::import::ingest::Ingestor;
use journey_ledger::import::segment::SegmentMapping;
use journey_ledger::projections::rules::RuleSet;
use journey_ledger::projections::runner::ProjectorOptions;
use journey_ledger::projections::storage::ReadModelDb;
use journey_ledger::store::{self, EventStore};
use serde_json::{json, Value};

/// The key of each role (long enough for the 16-character minimum).
pub fn key(role: Role) -> String {
    format!("test-key-for-role-{}", role.name())
}

pub struct TestServer {
    pub base: String,
    /// The SQLite store's URL (tests may tamper with the file behind it).
    pub url: String,
    pub store: Arc<dyn EventStore>,
    pub state: ApiState,
    client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    control: Option<Arc<ProjectionControl>>,
    dir: Option<tempfile::TempDir>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// A server whose read models are the running projections (rebuilt at
    /// start, then following the store live), as `journey serve` runs.
    pub async fn start_projected() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(projected: bool) -> Self {
        let (dir, url) = journey_ledger::testing::temp_sqlite();
        Self::start_on(dir, url, projected.then(ProjectorOptions::default)).await
    }

    /// A projected server whose runner has `options` (its clock).
    pub async fn start_projected_with(options: ProjectorOptions) -> Self {
        let (dir, url) = journey_ledger::testing::temp_sqlite();
        Self::start_on(dir, url, Some(options)).await
    }

    /// Stops the server and its projection runner, keeping the store's
    /// files for [`TestServer::restart`].
    pub async fn stop(mut self) -> (tempfile::TempDir, String) {
        if let Some(control) = self.control.take() {
            control.stop();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let dir = self.dir.take().expect("kept until stopped");
        (dir, self.url.clone())
    }

    /// A projected server on the files of a stopped one.
    pub async fn restart(
        (dir, url): (tempfile::TempDir, String),
        options: ProjectorOptions,
    ) -> Self {
        Self::start_on(dir, url, Some(options)).await
    }

    async fn start_on(
        dir: tempfile::TempDir,
        url: String,
        projection: Option<ProjectorOptions>,
    ) -> Self {
        let projected = projection.is_some();
        let store = store::open(&url).await.expect("store");
        let vault = journey_ledger::privacy::Vault::open(&url)
            .await
            .map(Arc::new)
            .ok();
        let mut keys = ApiKeys::default();
        for role in Role::ALL {
            keys.add(&format!("{}-client", role.name()), role, &key(role))
                .unwrap();
        }
        let writer = ReadModelDb::open(&url).await.expect("read models");
        let read_models: Arc<dyn ReadModels> = if projected {
            Arc::new(
                ProjectedReadModels::new(
                    store.clone(),
                    ReadModelDb::open_for_queries(&url, 2).await.unwrap(),
                    vault.clone(),
                )
                .with_writer(writer.clone()),
            )
        } else {
            Arc::new(EventFoldReadModels::new(store.clone()).with_vault(vault.clone()))
        };
        let held = HeldEvents::open_if_supported(&url)
            .await
            .expect("held events");
        let ingest = IngestSources {
            ingestor: Ingestor::new(store.clone(), vault.clone(), held),
            segment: Arc::new(SegmentMapping::shipped()),
            cloudevents: Arc::new(CloudEventsOptions::default()),
        };
        let state = ApiState::new(store.clone(), read_models, keys, vault).with_ingest(ingest);
        let mut control = None;
        if let Some(options) = projection {
            let started = start_projections(
                store.clone(),
                writer,
                &RuleSet::shipped_defaults(),
                state.live.clone(),
                options,
            )
            .await
            .expect("projections start");
            state.attach_projections(started.clone());
            control = Some(started);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, router(state.clone()), async move {
            let _ = stopped.await;
        }));
        Self {
            base: format!("http://{addr}"),
            url,
            store,
            state,
            client: reqwest::Client::new(),
            stop: Some(stop),
            control,
            dir: Some(dir),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("{}/graphql/ws", self.base.replacen("http://", "ws://", 1))
    }

    /// POSTs a raw body; returns status and the body parsed as JSON (or as
    /// a JSON string when it is not JSON).
    pub async fn post_raw(
        &self,
        role: Option<Role>,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .post(format!("{}/graphql", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(role) = role {
            req = req.bearer_auth(key(role));
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub async fn gql(&self, role: Option<Role>, query: &str, variables: Value) -> Value {
        let body = json!({"query": query, "variables": variables}).to_string();
        let (status, value) = self.post_raw(role, body).await;
        assert!(status == 200 || status == 400, "status {status}: {value}");
        value
    }

    /// Runs a query as admin and insists it succeeds.
    pub async fn ok(&self, query: &str, variables: Value) -> Value {
        let value = self.gql(Some(Role::Admin), query, variables).await;
        assert!(value.get("errors").is_none(), "unexpected errors: {value}");
        value["data"].clone()
    }

    pub async fn head(&self) -> u64 {
        self.store.head_position().await.unwrap()
    }

    /// POSTs `body` to `path` with extra headers; status and JSON body.
    pub async fn post_to(
        &self,
        path: &str,
        headers: &[(&str, String)],
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let mut req = self.client.post(format!("{}{path}", self.base)).body(body);
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(control) = self.control.take() {
            control.stop();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The first error's `extensions.code`, or `None` when there is no error.
pub fn error_code(value: &Value) -> Option<String> {
    value["errors"][0]["extensions"]["code"]
        .as_str()
        .map(str::to_owned)
}

/// Debian's Chromium, which `.ci/run` installs; browser tests skip without it.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Headless Chromium on a throw-away profile, with everything that would
/// reach the network on its own turned off; the caller adds the output flag
/// (`--dump-dom`, `--screenshot=…`) and the address.
pub fn headless_chromium(profile: &std::path::Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(CHROMIUM);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()));
    command
}

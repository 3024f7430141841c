//! `journey serve`: the GraphQL server, and `--demo` for a one-command tour.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use journey_ledger::api::auth::{random_key, ApiKeys, Role};
use journey_ledger::api::read_models::EventFoldReadModels;
use journey_ledger::api::{router, serve as serve_http, ApiState};
use journey_ledger::config::Config;
use journey_ledger::import::{self, jsonl::JsonlParser, ImportFormat};
use journey_ledger::privacy::Vault;
use journey_ledger::store::{self, EventStore};

/// The hand-written demo stream (every event type), embedded so `--demo`
/// works from any directory.
const DEMO_EVENTS: &str = include_str!("../../fixtures/events.jsonl");

/// Where `--demo` looks for the CDNOW sample, first match wins.
const CDNOW_SAMPLES: &[&str] = &[
    "fixtures/cdnow_sample.txt",
    "../shared/data/cdnow_sample.txt",
];

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Listen address; overrides JOURNEY_ADDR and `[server] addr`.
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: Option<String>,
    /// Serve a fresh throw-away store filled with the demo customers (and
    /// the CDNOW sample when present), with a new admin key printed at start.
    #[arg(long)]
    pub demo: bool,
}

/// Runs the server until Ctrl-C.
pub async fn serve(config: &Config, args: ServeArgs) -> anyhow::Result<()> {
    let mut keys = ApiKeys::from_config(&config.server.api_keys)
        .context("reading [[server.api_keys]] from the config file")?;
    if let Ok(list) = std::env::var("JOURNEY_API_KEYS") {
        keys.add_env_list(&list)
            .context("reading JOURNEY_API_KEYS")?;
    }
    let mut _demo_dir = None;
    let mut demo_key = None;
    let (store, store_url): (Arc<dyn EventStore>, String) = if args.demo {
        let dir = tempfile::tempdir().context("creating the demo directory")?;
        let url = format!("sqlite://{}", dir.path().join("journey-demo.db").display());
        let store = store::open(&url).await.context("opening the demo store")?;
        let vault = Vault::open(&url)
            .await
            .context("opening the demo key table")?;
        load_demo_data(&store, &vault).await?;
        let key = random_key();
        keys.add("demo-admin", Role::Admin, &key)
            .expect("random keys are long");
        demo_key = Some(key);
        _demo_dir = Some(dir);
        (store, url)
    } else {
        let store = store::open(&config.store)
            .await
            .with_context(|| format!("opening store {}", config.store))?;
        (store, config.store.clone())
    };
    let vault = Vault::open_if_supported(&store_url)
        .await
        .context("opening the privacy key table")?
        .map(Arc::new);
    if keys.is_empty() {
        eprintln!(
            "warning: no API keys configured, so every request will be refused.\n\
             Add [[server.api_keys]] (name, key, role) to journey.toml or set\n\
             JOURNEY_API_KEYS=\"name:role:key,...\" (roles: app, analyst, auditor, admin)."
        );
    }
    let addr = args.addr.unwrap_or_else(|| config.server.addr.clone());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let local = listener.local_addr()?;
    let state = ApiState::new(
        store.clone(),
        Arc::new(EventFoldReadModels::new(store.clone()).with_vault(vault.clone())),
        keys,
        vault,
    );
    println!("journey ledger serving {} store", store.backend());
    println!("  GraphiQL:      http://{local}/graphql");
    println!("  subscriptions: ws://{local}/graphql/ws");
    if let Some(key) = demo_key {
        println!("  demo admin key (paste into GraphiQL's Headers tab):");
        println!("    {{\"Authorization\": \"Bearer {key}\"}}");
    }
    println!("Press Ctrl-C to stop.");
    serve_http(listener, router(state), async {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("shutting down: finishing requests in flight");
    })
    .await
    .context("serving HTTP")
}

async fn load_demo_data(store: &Arc<dyn EventStore>, vault: &Vault) -> anyhow::Result<()> {
    let report = import::import_lines_sealed(
        store.clone(),
        Some(vault),
        "fixtures/events.jsonl",
        std::io::Cursor::new(DEMO_EVENTS),
        &mut JsonlParser,
        &mut |_| {},
    )
    .await
    .context("importing the demo events")?;
    println!(
        "demo: imported {} events for {} customers",
        report.appended, report.streams
    );
    if let Some(sample) = CDNOW_SAMPLES.iter().map(PathBuf::from).find(|p| p.exists()) {
        let report = import::import_file(
            store.clone(),
            Path::new(&sample),
            ImportFormat::Cdnow,
            |_| {},
        )
        .await
        .with_context(|| format!("importing {}", sample.display()))?;
        println!(
            "demo: imported {} CDNOW events for {} customers from {}",
            report.appended,
            report.streams,
            sample.display()
        );
    }
    Ok(())
}

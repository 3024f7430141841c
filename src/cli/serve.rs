//! `journey serve`: the GraphQL server, and `--demo` for a one-command tour.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use journey_ledger::api::auth::{random_key, ApiKeys, Role};
use journey_ledger::api::ingest::IngestSources;
use journey_ledger::api::projected::{start_projections, ProjectedReadModels};
use journey_ledger::api::read_models::{EventFoldReadModels, ReadModels};
use journey_ledger::api::{router, serve as serve_http, ApiState};
use journey_ledger::backtest::churn_score::ChurnScoreSettings;
use journey_ledger::config::Config;
use journey_ledger::import::cloudevents::CloudEventsOptions;
use journey_ledger::import::held::HeldEvents;
use journey_ledger::import::ingest::Ingestor;
use journey_ledger::import::segment::SegmentMapping;
use journey_ledger::import::{self, jsonl::JsonlParser, ImportFormat};
use journey_ledger::privacy::Vault;
use journey_ledger::projections::rules::RuleSet;
use journey_ledger::projections::storage::{ReadModelDb, StorageError};
use journey_ledger::report::AnalysisSettings;
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
    /// Read-model database (sqlite://FILE or postgres://...). Default: the
    /// store's own database; an EventStoreDB store needs one, or the API
    /// answers from events alone (projected fields null).
    #[arg(long, value_name = "URL", env = "JOURNEY_READ_MODELS")]
    pub read_models: Option<String>,
    /// Rules directory for a first rebuild (default: the config's
    /// `rules_dir` when it exists, else the rules built into the binary).
    #[arg(long, value_name = "DIR")]
    pub rules: Option<PathBuf>,
    /// Rules the workbench's diff chart compares the served rules with
    /// (default with --demo: projections/presets/practice when present).
    #[arg(long, value_name = "DIR")]
    pub compare_rules: Option<PathBuf>,
}

/// Runs the server until Ctrl-C.
pub async fn serve(config: &Config, args: ServeArgs) -> anyhow::Result<()> {
    let mut keys = ApiKeys::from_config(&config.server.api_keys)
        .context("reading [[server.api_keys]] from the config file")?;
    if let Ok(list) = std::env::var("JOURNEY_API_KEYS") {
        keys.add_env_list(&list)
            .context("reading JOURNEY_API_KEYS")?;
    }
    // The port first: a server that cannot listen fails before it spends
    // minutes importing or rebuilding.
    let addr = args
        .addr
        .clone()
        .unwrap_or_else(|| config.server.addr.clone());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let local = listener.local_addr()?;
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
    let read_models_url = args
        .read_models
        .clone()
        .unwrap_or_else(|| store_url.clone());
    let projections = match ReadModelDb::open(&read_models_url).await {
        Ok(writer) => {
            let reader = ReadModelDb::open_for_queries(&read_models_url, 4)
                .await
                .context("opening the read models for queries")?;
            Some((writer, reader))
        }
        Err(StorageError::UnsupportedUrl(_)) => {
            eprintln!(
                "warning: {} keeps no SQL read models; projected fields (stage, loyalty, CLV,\n\
                 alerts) will be null. Pass --read-models sqlite://FILE or postgres://... to project.",
                store.backend()
            );
            None
        }
        Err(e) => return Err(e).context("opening the read models"),
    };
    let read_models: Arc<dyn ReadModels> = match &projections {
        Some((writer, reader)) => Arc::new(
            ProjectedReadModels::new(store.clone(), reader.clone(), vault.clone())
                .with_writer(writer.clone()),
        ),
        None => Arc::new(EventFoldReadModels::new(store.clone()).with_vault(vault.clone())),
    };
    let ingest = ingest_sources(config, &store, &store_url, vault.clone()).await?;
    let state = ApiState::new(store.clone(), read_models, keys, vault).with_ingest(ingest.clone());
    tokio::spawn(release_held_events(ingest.ingestor));
    state.attach_analysis(analysis_settings(config, &args)?);
    if let Some((writer, _)) = projections {
        let rules = serve_rules(config, args.rules.as_deref())?;
        println!("projecting read models (rules {})…", rules.rules_id());
        let control = start_projections(
            store.clone(),
            writer,
            &rules,
            state.live.clone(),
            super::projector_options(config)?,
        )
        .await
        .context("starting the projections")?;
        state.attach_projections(control);
    }
    println!("journey ledger serving {} store", store.backend());
    println!("  GraphiQL:      http://{local}/graphql");
    println!("  subscriptions: ws://{local}/graphql/ws");
    println!("  workbench:     http://{local}/workbench (analyst key)");
    if let Some(key) = demo_key {
        println!("  demo admin key (paste into GraphiQL's Headers tab):");
        println!("    {{\"Authorization\": \"Bearer {key}\"}}");
    }
    println!("Press Ctrl-C to stop (SIGTERM drains the same way).");
    serve_http(listener, router(state), async {
        shutdown_signal().await;
        eprintln!("shutting down: finishing requests in flight");
    })
    .await
    .context("serving HTTP")
}

/// Ctrl-C (SIGINT) or SIGTERM (what Kubernetes and systemd send on every
/// deploy): either drains the requests in flight.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
}

/// The pipeline endpoints' mapping, options and writer.
async fn ingest_sources(
    config: &Config,
    store: &Arc<dyn EventStore>,
    store_url: &str,
    vault: Option<Arc<Vault>>,
) -> anyhow::Result<IngestSources> {
    let held = HeldEvents::open_if_supported(store_url)
        .await
        .context("opening the held-events table")?;
    let default_file = config.rules_dir.join("ingest").join("segment.toml");
    let segment = match &config.ingest.segment_mapping {
        Some(path) => SegmentMapping::load(path)?,
        None if default_file.exists() => SegmentMapping::load(&default_file)?,
        None => SegmentMapping::shipped(),
    };
    Ok(IngestSources {
        ingestor: Ingestor::new(store.clone(), vault, held),
        segment: Arc::new(segment),
        cloudevents: Arc::new(CloudEventsOptions {
            type_prefix: config.ingest.cloudevents_type_prefix.clone(),
        }),
    })
}

/// Records held events when they fall due (abandoned carts), every second.
async fn release_held_events(ingestor: Ingestor) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match ingestor.release_due(chrono::Utc::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(released = n, "held events recorded"),
            Err(e) => tracing::warn!(error = %e, "releasing held events failed; retrying"),
        }
    }
}

/// What `validation` and `/workbench` use: the served rules, the comparison
/// rules, the churn score's settings from the same directory.
fn analysis_settings(config: &Config, args: &ServeArgs) -> anyhow::Result<AnalysisSettings> {
    let demo_compare = Path::new("projections/presets/practice");
    let compare = match &args.compare_rules {
        Some(dir) => Some(dir.as_path()),
        None if args.demo && demo_compare.join("lifecycle.toml").exists() => Some(demo_compare),
        None => None,
    };
    Ok(AnalysisSettings {
        rules: serve_rules(config, args.rules.as_deref())?,
        compare: compare
            .map(RuleSet::load)
            .transpose()
            .context("reading --compare-rules")?,
        churn_score: ChurnScoreSettings::load_dir(
            args.rules.as_deref().unwrap_or(&config.rules_dir),
        )?,
    })
}

/// The rules a server projects with: `--rules`, else the configured
/// directory when it exists, else the defaults built into the binary.
fn serve_rules(config: &Config, dir: Option<&Path>) -> anyhow::Result<RuleSet> {
    match dir {
        Some(dir) => Ok(RuleSet::load(dir)?),
        None if config.rules_dir.join("lifecycle.toml").exists() => {
            Ok(RuleSet::load(&config.rules_dir)?)
        }
        None => Ok(RuleSet::shipped_defaults()),
    }
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

//! Several `journey serve` processes on one store, as a deployment runs them
//! behind a load balancer: one projector, the others readers; the
//! projector killed with SIGKILL and a reader taking over; a rebuild from
//! the CLI followed by every server; subscriptions on every replica; two
//! servers started at once rebuilding once. Real processes, a real
//! PostgreSQL database (and a real SQLite file where it applies).

use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use journey_ledger::projections::rules::RuleSet;
use journey_ledger::projections::runner::{self, all_tables, folds_for, RebuildOptions};
use journey_ledger::projections::storage::ReadModelDb;
use journey_ledger::projections::TableKind;
use journey_ledger::store::{self, EventStore};
use journey_ledger::testing::{temp_sqlite, TempDatabase};
use serde_json::{json, Value};

#[path = "common/cli.rs"]
mod cli;
#[path = "api_support/ws.rs"]
mod ws;

const KEY: &str = "replica-test-admin-key-0123456789";
/// The servers' clock (`JOURNEY_NOW`), after every event the tests record,
/// so that a fresh rebuild at the same instant must give the same tables.
const NOW: &str = "2026-06-30T00:00:00Z";

/// A `journey serve` process.
struct Server {
    child: Child,
    base: String,
    client: reqwest::Client,
}

impl Server {
    /// Starts a server on `store` and waits until it answers `/healthz`.
    async fn start(store: &str) -> Server {
        let addr = format!("127.0.0.1:{}", cli::free_port());
        let child = cli::journey_command(store)
            .args(["serve", "--addr", &addr])
            .env("JOURNEY_API_KEYS", format!("ops:admin:{KEY}"))
            .env("JOURNEY_NOW", NOW)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Server {
            child,
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
        };
        server
            .wait_for("/healthz answering", Duration::from_secs(60), |_| true)
            .await;
        server
    }

    /// Kills the process with SIGKILL (no drain, no cleanup).
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    async fn graphql(&self, query: &str) -> Value {
        self.client
            .post(format!("{}/graphql", self.base))
            .bearer_auth(KEY)
            .json(&json!({ "query": query }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn ok(&self, query: &str) -> Value {
        let answer = self.graphql(query).await;
        assert!(answer.get("errors").is_none(), "{query}: {answer}");
        answer["data"].clone()
    }

    /// `projectionStatus`, or `None` while the server does not answer.
    async fn status(&self) -> Option<Value> {
        let answer = self
            .client
            .post(format!("{}/graphql", self.base))
            .bearer_auth(KEY)
            .json(&json!({ "query": "{ projectionStatus { headPosition role projections { version checkpoint lag } } }" }))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?
            .json::<Value>()
            .await
            .ok()?;
        Some(answer["data"]["projectionStatus"].clone()).filter(|s| !s.is_null())
    }

    /// Polls `projectionStatus` until `done` holds; returns the time it took.
    async fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Duration {
        let started = Instant::now();
        let mut last = None;
        while started.elapsed() < limit {
            if let Some(status) = self.status().await {
                if done(&status) {
                    return started.elapsed();
                }
                last = Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{}: not {what} within {limit:?}; last status {last:?}",
            self.base
        );
    }

    async fn role(&self) -> String {
        self.status().await.unwrap()["role"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// `/readyz`, which must answer 200.
    async fn readyz(&self) -> Value {
        let answer = self
            .client
            .get(format!("{}/readyz", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        answer.json().await.unwrap()
    }

    fn ws_url(&self) -> String {
        format!("{}/graphql/ws", self.base.replace("http://", "ws://"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn caught_up(status: &Value) -> bool {
    let projections = status["projections"].as_array().unwrap();
    !projections.is_empty() && projections.iter().all(|p| p["lag"] == 0)
}

fn version_of(status: &Value) -> Option<String> {
    status["projections"][0]["version"]
        .as_str()
        .map(str::to_owned)
}

fn mutation(name: &str, customer: &str, day: u32, input: &str) -> String {
    format!(
        r#"mutation {{ {name}(customerId: "{customer}", occurredAt: "2026-01-{day:02}T10:00:00Z", input: {input}) {{ version }} }}"#
    )
}

async fn register(server: &Server, customer: &str) {
    server
        .ok(&mutation(
            "registerCustomer",
            customer,
            1,
            r#"{channel: "web"}"#,
        ))
        .await;
}

async fn order(server: &Server, customer: &str, n: u32) {
    let input = format!(
        r#"{{orderId: "o{n}", amount: {{minor: {}, currency: "USD"}}, itemCount: 1}}"#,
        1_000 + n * 10
    );
    server
        .ok(&mutation("placeOrder", customer, 2 + n % 27, &input))
        .await;
}

/// The per-customer tables of the active version (current and history:
/// population tables are refitted on the projector's own schedule).
async fn customer_tables(db: &ReadModelDb) -> Vec<(String, Vec<Vec<Option<String>>>)> {
    let version = db.active_model_version().await.unwrap().unwrap();
    let mut out = Vec::new();
    for table in all_tables(&folds_for(&RuleSet::shipped_defaults())) {
        if table.kind == TableKind::Population {
            continue;
        }
        out.push((
            table.name.to_owned(),
            db.dump(&table, version, None).await.unwrap(),
        ));
    }
    out
}

/// A fresh rebuild of `store`'s log into `fresh` at the servers' instant.
async fn rebuilt_tables(
    store: Arc<dyn EventStore>,
    fresh: &ReadModelDb,
) -> Vec<(String, Vec<Vec<Option<String>>>)> {
    let now: DateTime<Utc> = NOW.parse().unwrap();
    runner::rebuild(
        store,
        fresh,
        &RuleSet::shipped_defaults(),
        &RebuildOptions {
            clock: journey_ledger::projections::clock::Clock::Fixed(now),
            ..RebuildOptions::default()
        },
        now,
        |_| {},
    )
    .await
    .unwrap();
    customer_tables(fresh).await
}

/// Two servers, orders through both, the projector killed with SIGKILL:
/// the reader takes over within 5 s, nothing is lost or written twice, the
/// read models equal a fresh rebuild; subscribers of the reader hear the
/// projector's changes; a CLI rebuild is followed by every server within
/// 2 s.
async fn projector_dies_and_a_reader_takes_over(store_url: &str, fresh: &ReadModelDb) {
    // An empty store: the first server builds version 1 and projects.
    let first = Server::start(store_url).await;
    first
        .wait_for("projecting", Duration::from_secs(60), |s| {
            s["role"] == "PROJECTOR" && caught_up(s)
        })
        .await;
    let second = Server::start(store_url).await;
    second
        .wait_for("reading version 1", Duration::from_secs(30), caught_up)
        .await;
    assert_eq!(second.role().await, "READER");
    assert_eq!(second.readyz().await["role"], "reader");

    // A subscriber on the reader hears what the projector folds.
    let init = json!({"headers": {"Authorization": format!("Bearer {KEY}")}});
    let (mut stages, ack) = ws::connect(&second.ws_url(), init).await;
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    ws::subscribe(
        &mut stages,
        "s",
        "subscription { stageChanged { customerId from to } }",
    )
    .await;
    register(&first, "watched").await;
    let heard = ws::next_json(&mut stages).await;
    assert_eq!(
        heard["payload"]["data"]["stageChanged"],
        json!({"customerId": "watched", "from": null, "to": "prospect"}),
        "the reader's subscriber heard the projector's change"
    );

    // Orders through both servers at once.
    let customers: Vec<String> = (0..8).map(|i| format!("r{i}")).collect();
    for (i, c) in customers.iter().enumerate() {
        register(if i % 2 == 0 { &first } else { &second }, c).await;
    }
    let mut appended = 1 + customers.len();
    let orders = customers.iter().enumerate().flat_map(|(i, c)| {
        let (first, second) = (&first, &second);
        (0..5u32).map(move |n| async move {
            let server = if (i + n as usize) % 2 == 0 {
                first
            } else {
                second
            };
            order(server, c, n).await;
        })
    });
    futures::future::join_all(orders).await;
    appended += customers.len() * 5;

    // SIGKILL the projector mid-stream: the reader takes over.
    first
        .wait_for("caught up", Duration::from_secs(30), caught_up)
        .await;
    first.kill();
    let took_over = second
        .wait_for("the projector", Duration::from_secs(10), |s| {
            s["role"] == "PROJECTOR"
        })
        .await;
    assert!(
        took_over < Duration::from_secs(5),
        "the reader took over after {took_over:?}"
    );
    assert_eq!(second.readyz().await["role"], "projector");
    for (i, c) in customers.iter().enumerate() {
        order(&second, c, 10 + i as u32).await;
    }
    appended += customers.len();
    second
        .wait_for(
            "caught up after the takeover",
            Duration::from_secs(30),
            caught_up,
        )
        .await;

    // No event lost, and the read models are a fresh rebuild's.
    let store = store::open(store_url).await.unwrap();
    let mut stored = 0;
    for c in customers.iter().map(String::as_str).chain(["watched"]) {
        let stream = journey_ledger::domain::StreamId::parse(&format!("customer-{c}")).unwrap();
        stored += store
            .read_stream(&stream, store::ReadStream::all_forwards())
            .await
            .unwrap()
            .len();
    }
    assert_eq!(stored, appended, "every acknowledged command is stored");
    let served = ReadModelDb::open(store_url).await.unwrap();
    let live = customer_tables(&served).await;
    assert_eq!(live, rebuilt_tables(store.clone(), fresh).await);
    assert!(live.iter().any(|(_, rows)| !rows.is_empty()));

    // A new replica joins as a reader; a CLI rebuild switches both.
    let third = Server::start(store_url).await;
    assert_eq!(third.role().await, "READER");
    let before = version_of(&second.status().await.unwrap()).unwrap();
    let output = cli::journey(store_url, &["rebuild", "--now", NOW]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let switched = Instant::now();
    let active = served.active_model_version().await.unwrap().unwrap();
    for server in [&second, &third] {
        server
            .wait_for("on the new version", Duration::from_secs(5), |s| {
                version_of(s).is_some_and(|v| v != before && v.starts_with(&format!("v{active} ")))
            })
            .await;
    }
    assert!(
        switched.elapsed() < Duration::from_secs(2),
        "both servers reported the new version after {:?}",
        switched.elapsed()
    );
    // The projector follows the new version: a new order is applied to it.
    order(&third, "r0", 20).await;
    for server in [&second, &third] {
        server
            .wait_for(
                "caught up on the new version",
                Duration::from_secs(30),
                |s| {
                    caught_up(s)
                        && version_of(s).is_some_and(|v| v.starts_with(&format!("v{active} ")))
                },
            )
            .await;
    }
    served.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_projector_dies_and_a_reader_takes_over() {
    let db = TempDatabase::create().await.unwrap();
    let fresh_db = TempDatabase::create().await.unwrap();
    let fresh = ReadModelDb::open(&fresh_db.url).await.unwrap();
    projector_dies_and_a_reader_takes_over(&db.url, &fresh).await;
    fresh.close().await;
    fresh_db.drop_database().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_projector_dies_and_a_reader_takes_over() {
    let (_dir, url) = temp_sqlite();
    let (_fresh_dir, fresh_url) = temp_sqlite();
    let fresh = ReadModelDb::open(&fresh_url).await.unwrap();
    projector_dies_and_a_reader_takes_over(&url, &fresh).await;
}

/// Two servers started together on a store without read models: one
/// rebuilds, the other waits for it and reads the same version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_servers_started_at_once_rebuild_once() {
    let db = TempDatabase::create().await.unwrap();
    cli::ok(cli::journey(
        &db.url,
        &["import", "fixtures/cdnow_sample.txt", "--format", "cdnow"],
    ));
    let (a, b) = tokio::join!(Server::start(&db.url), Server::start(&db.url));
    for server in [&a, &b] {
        server
            .wait_for("caught up", Duration::from_secs(120), caught_up)
            .await;
    }
    let roles = [a.role().await, b.role().await];
    assert!(
        roles.contains(&"PROJECTOR".to_owned()) && roles.contains(&"READER".to_owned()),
        "{roles:?}"
    );
    let read_models = ReadModelDb::open(&db.url).await.unwrap();
    let versions = read_models.versions().await.unwrap();
    assert_eq!(versions.len(), 1, "one rebuild: {versions:?}");
    assert_eq!(versions[0].status, "active");
    read_models.close().await;
    drop((a, b));
    db.drop_database().await;
}

/// A projector whose role was taken over commits nothing: its batch fails
/// as fenced off and the version's checkpoint stays where the successor
/// left it.
async fn a_stale_projector_is_fenced_off(url: &str) {
    cli::ok(cli::journey(
        url,
        &["import", "fixtures/events.jsonl", "--format", "jsonl"],
    ));
    cli::ok(cli::journey(url, &["rebuild", "--now", NOW]));
    let store = store::open(url).await.unwrap();
    let db = ReadModelDb::open(url).await.unwrap();
    let stale_epoch = db.take_fence("stale").await.unwrap();
    let (version, rules) = runner::active(&db).await.unwrap();
    let open = |fence| {
        runner::Projector::open(
            store.clone(),
            db.clone(),
            &version,
            &rules,
            runner::ProjectorOptions {
                fence: Some(fence),
                ..runner::ProjectorOptions::default()
            },
        )
    };
    let mut stale = open(stale_epoch).await.unwrap();
    let successor_epoch = db.take_fence("successor").await.unwrap();
    assert!(successor_epoch > stale_epoch);
    let batch = || journey_ledger::projections::storage::BatchWrite {
        checkpoint: version.checkpoint + 1_000,
        ..Default::default()
    };
    let refused = stale.commit(batch()).await.unwrap_err();
    assert!(refused.to_string().contains("fenced off"), "{refused}");
    let after = db.version(version.model_version).await.unwrap().unwrap();
    assert_eq!(after.checkpoint, version.checkpoint, "nothing committed");
    let mut successor = open(successor_epoch).await.unwrap();
    successor.commit(batch()).await.unwrap();
    let after = db.version(version.model_version).await.unwrap().unwrap();
    assert_eq!(after.checkpoint, version.checkpoint + 1_000);
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_stale_projector_is_fenced_off() {
    let db = TempDatabase::create().await.unwrap();
    a_stale_projector_is_fenced_off(&db.url).await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_stale_projector_is_fenced_off() {
    let (_dir, url) = temp_sqlite();
    a_stale_projector_is_fenced_off(&url).await;
}

/// What the database answers to a rebuild's switch while the test's
/// trigger is installed.
const REFUSAL: &str = "the database refuses to activate a read-model version";

/// Installs (or, with `refuse = false`, removes) a trigger that makes the
/// database refuse any version's activation: the failure a rebuild meets
/// at its very end (disk full, permissions, a cancelled statement) after
/// all its work, with the live follower still on the old version.
async fn refuse_activations(url: &str, refuse: bool) {
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        let sql = if refuse {
            format!(
                "CREATE TRIGGER refuse_activation BEFORE UPDATE OF status ON projection_versions \
                 WHEN NEW.status = 'active' AND OLD.status <> 'active' \
                 BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END"
            )
        } else {
            "DROP TRIGGER refuse_activation".to_owned()
        };
        sqlx::query(&sql).execute(&pool).await.unwrap();
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let statements = if refuse {
            vec![
                format!(
                    "CREATE FUNCTION refuse_activation() RETURNS trigger LANGUAGE plpgsql AS \
                     $$ BEGIN RAISE EXCEPTION '{REFUSAL}'; END $$"
                ),
                "CREATE TRIGGER refuse_activation BEFORE UPDATE ON projection_versions \
                 FOR EACH ROW WHEN (NEW.status = 'active' AND OLD.status <> 'active') \
                 EXECUTE FUNCTION refuse_activation()"
                    .to_owned(),
            ]
        } else {
            vec!["DROP FUNCTION refuse_activation() CASCADE".to_owned()]
        };
        for sql in statements {
            sqlx::query(&sql).execute(&pool).await.unwrap();
        }
        pool.close().await;
    }
}

/// `projectionStatus.lastRebuild` once it has finished.
async fn finished_rebuild(server: &Server) -> Value {
    let query =
        "{ projectionStatus { lastRebuild { requestedBy finishedAt modelVersion error } } }";
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        let last = server.ok(query).await["projectionStatus"]["lastRebuild"].clone();
        if last["requestedBy"] != "journey serve" && !last["finishedAt"].is_null() {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the rebuild did not finish within 60 s");
}

async fn rebuilds_failed(server: &Server) -> u64 {
    let text = server
        .client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("journey_rebuilds_failed_total "))
        .unwrap_or_else(|| panic!("no journey_rebuilds_failed_total in {text}"))
        .parse()
        .unwrap()
}

/// A rebuild that fails at its switch, after all its work, leaves the live
/// read models current: the server keeps following the store on the old
/// version (lag back to 0 after new orders, the orders in the answers),
/// `projectionStatus` says why the rebuild failed and `/metrics` counts
/// it; once the cause is gone the next rebuild switches as usual.
async fn a_failed_rebuild_leaves_the_live_read_models_current(url: &str) {
    let server = Server::start(url).await;
    server
        .wait_for("projecting", Duration::from_secs(60), |s| {
            s["role"] == "PROJECTOR" && caught_up(s)
        })
        .await;
    register(&server, "steady").await;
    order(&server, "steady", 1).await;
    server
        .wait_for("caught up", Duration::from_secs(30), caught_up)
        .await;
    let version = version_of(&server.status().await.unwrap()).unwrap();
    assert_eq!(rebuilds_failed(&server).await, 0);

    refuse_activations(url, true).await;
    let rebuild = r#"mutation { rebuildReadModels(reason: "rules review") { rulesId } }"#;
    server.ok(rebuild).await;
    let failed = finished_rebuild(&server).await;
    assert!(
        failed["error"].as_str().unwrap_or("").contains(REFUSAL),
        "{failed}"
    );
    assert!(failed["modelVersion"].is_null(), "{failed}");
    assert_eq!(rebuilds_failed(&server).await, 1);

    for n in 2..5 {
        order(&server, "steady", n).await;
    }
    server
        .wait_for(
            "caught up after the failure",
            Duration::from_secs(10),
            caught_up,
        )
        .await;
    let now = server.status().await.unwrap();
    assert_eq!(version_of(&now).as_deref(), Some(version.as_str()), "{now}");
    let answer = server
        .ok(r#"{ customer(id: "steady") { historicalValue { orderCount } } }"#)
        .await;
    assert_eq!(answer["customer"]["historicalValue"]["orderCount"], 4);

    refuse_activations(url, false).await;
    server.ok(rebuild).await;
    server
        .wait_for("on a new version", Duration::from_secs(60), |s| {
            caught_up(s) && version_of(s).as_deref() != Some(version.as_str())
        })
        .await;
    let last = finished_rebuild(&server).await;
    assert!(last["error"].is_null(), "{last}");
    assert_eq!(rebuilds_failed(&server).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_failed_rebuild_leaves_the_live_read_models_current() {
    let db = TempDatabase::create().await.unwrap();
    a_failed_rebuild_leaves_the_live_read_models_current(&db.url).await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_failed_rebuild_leaves_the_live_read_models_current() {
    let (_dir, url) = temp_sqlite();
    a_failed_rebuild_leaves_the_live_read_models_current(&url).await;
}

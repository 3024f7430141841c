//! The store contract on PostgreSQL: each check gets its own uniquely named
//! database on the server in `DATABASE_URL`, dropped afterwards.

use std::sync::Arc;

use journey_ledger::store::contract::Fixture;
use journey_ledger::store::postgres::PostgresStore;
use journey_ledger::testing::TempDatabase;

async fn setup() -> Option<Fixture> {
    let db = TempDatabase::create()
        .await
        .expect("PostgreSQL must be reachable at DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test)");
    let store = PostgresStore::connect(&db.url).await.expect("connect");
    Some(Fixture {
        store: Arc::new(store),
        teardown: Some(Box::pin(db.drop_database())),
    })
}

journey_ledger::store_contract_tests!("postgres", setup);

/// Two stores on one database, as two server processes are: each plans its
/// groups without the global lock, so a stream the other grew between a
/// plan and its write must be planned again, never overwritten or forked.
/// Both append to the same few streams at once; every append commits, each
/// stream's versions run 1..n with an intact hash chain, and positions stay
/// gapless.
#[tokio::test]
async fn two_stores_on_one_database_share_streams_without_forking_them() {
    use journey_ledger::audit::verify::verify_store;
    use journey_ledger::domain::StreamId;
    use journey_ledger::store::contract::sample_event;
    use journey_ledger::store::{EventStore, ExpectedVersion};

    const STREAMS: u64 = 3;
    const TASKS_PER_STORE: u64 = 8;
    const APPENDS_PER_TASK: u64 = 15;
    let db = TempDatabase::create()
        .await
        .expect("PostgreSQL at DATABASE_URL");
    let first: Arc<dyn EventStore> = Arc::new(PostgresStore::connect(&db.url).await.unwrap());
    let second: Arc<dyn EventStore> = Arc::new(PostgresStore::connect(&db.url).await.unwrap());
    let mut tasks = Vec::new();
    for (s, store) in [&first, &second].into_iter().enumerate() {
        for t in 0..TASKS_PER_STORE {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..APPENDS_PER_TASK {
                    let n = (s as u64 * TASKS_PER_STORE + t) * APPENDS_PER_TASK + i;
                    let stream =
                        StreamId::parse(&format!("customer-shared-{}", n % STREAMS)).unwrap();
                    store
                        .append(&stream, ExpectedVersion::Any, vec![sample_event(n)])
                        .await
                        .unwrap_or_else(|e| panic!("append {n} failed: {e}"));
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let total = 2 * TASKS_PER_STORE * APPENDS_PER_TASK;
    let report = verify_store(first.clone(), |_| {}).await.unwrap();
    assert!(report.is_intact(), "{:?}", report.problems);
    assert_eq!(report.events, total);
    assert_eq!(first.head_position().await.unwrap(), total);
    let mut versions = 0;
    for k in 0..STREAMS {
        let stream = StreamId::parse(&format!("customer-shared-{k}")).unwrap();
        versions += first.stream_head(&stream).await.unwrap().unwrap().version;
    }
    assert_eq!(versions, total, "every append is one version of its stream");
    drop((first, second));
    db.drop_database().await;
}

/// The group committer keeps a connection of its own; when the server
/// closes it between groups (a restart, an idle timeout), the next append
/// replaces it instead of failing.
#[tokio::test]
async fn appends_after_the_server_closed_the_committer_connection() {
    use journey_ledger::domain::StreamId;
    use journey_ledger::store::contract::sample_event;
    use journey_ledger::store::{EventStore, ExpectedVersion};

    let db = TempDatabase::create()
        .await
        .expect("PostgreSQL at DATABASE_URL");
    let store = PostgresStore::connect(&db.url).await.unwrap();
    let stream = StreamId::parse("customer-reconnect").unwrap();
    store
        .append(&stream, ExpectedVersion::NoStream, vec![sample_event(1)])
        .await
        .unwrap();
    // Every other session of this database: the committer's, the pool's
    // and the notification listener's.
    let admin = sqlx::PgPool::connect(&db.url).await.unwrap();
    let closed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    assert!(!closed.is_empty());
    admin.close().await;
    let outcome = store
        .append(&stream, ExpectedVersion::Exact(1), vec![sample_event(2)])
        .await
        .expect("the append after the connection was closed commits");
    assert_eq!(outcome.last_position, 2);
    drop(store);
    db.drop_database().await;
}

/// An events table whose column types drifted from the schema (here the
/// payload altered to `jsonb`, whose binary form is a version byte before
/// the text, and `occurred_at` to a `TIMESTAMP` without time zone) is
/// refused by name on every read path, never decoded into wrong events.
#[tokio::test]
async fn an_events_table_of_other_column_types_is_refused_by_name() {
    use futures::StreamExt;
    use journey_ledger::store::contract::sample_event;
    use journey_ledger::store::{read_all, EventStore, ExpectedVersion, ReadStream};

    let db = TempDatabase::create()
        .await
        .expect("PostgreSQL at DATABASE_URL");
    let store: Arc<dyn EventStore> = Arc::new(PostgresStore::connect(&db.url).await.unwrap());
    let stream = journey_ledger::domain::StreamId::parse("customer-drift").unwrap();
    store
        .append(&stream, ExpectedVersion::Any, vec![sample_event(1)])
        .await
        .unwrap();
    let admin = sqlx::PgPool::connect(&db.url).await.unwrap();
    for (alter, column) in [
        (
            "ALTER TABLE events ALTER COLUMN payload TYPE jsonb USING payload::jsonb",
            "payload",
        ),
        (
            "ALTER TABLE events ALTER COLUMN payload TYPE text, \
             ALTER COLUMN occurred_at TYPE timestamp",
            "occurred_at",
        ),
    ] {
        sqlx::query(alter).execute(&admin).await.unwrap();
        // A fresh store: statements prepared before the change would fail
        // with "cached plan must not change result type" instead.
        let store: Arc<dyn EventStore> = Arc::new(PostgresStore::connect(&db.url).await.unwrap());
        let page = store.read_all_page(0, 10).await.unwrap_err().to_string();
        assert!(page.contains(column), "{alter}: {page}");
        let stream_read = store
            .read_stream(&stream, ReadStream::all_forwards())
            .await
            .unwrap_err()
            .to_string();
        assert!(stream_read.contains(column), "{alter}: {stream_read}");
        let replay = read_all(store.clone(), 0, 10).next().await.unwrap();
        assert!(
            replay.unwrap_err().to_string().contains(column),
            "{alter}: replay"
        );
    }
    admin.close().await;
    db.drop_database().await;
}

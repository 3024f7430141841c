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

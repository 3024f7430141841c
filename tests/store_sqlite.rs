//! The store contract on the embedded SQLite backend (a real file per test).

use std::sync::{Arc, Mutex};

use journey_ledger::store::contract::Fixture;
use journey_ledger::store::sqlite::SqliteStore;
use journey_ledger::testing::temp_sqlite;

async fn setup() -> Option<Fixture> {
    let (dir, url) = temp_sqlite();
    let store = SqliteStore::open(&url).await.expect("open sqlite store");
    // The directory lives until teardown, after the check.
    let dir = Arc::new(Mutex::new(Some(dir)));
    Some(Fixture {
        store: Arc::new(store),
        teardown: Some(Box::pin(async move {
            dir.lock().unwrap().take();
        })),
    })
}

journey_ledger::store_contract_tests!("sqlite", setup);

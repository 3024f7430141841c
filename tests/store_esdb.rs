//! The store contract on EventStoreDB / KurrentDB, run when `EVENTSTORE_URL`
//! names a node (e.g. `esdb://127.0.0.1:2113?tls=false`); every check is
//! skipped with a visible message otherwise.
//!
//! ESDB has no "create database", so each check gets its own fresh
//! namespace (`t<uuid>`): its streams are stored as `t<uuid>_customer-…`
//! and its reads, `$all` included, see nothing else. Teardown soft-deletes
//! the namespace's streams.

use std::sync::Arc;

use journey_ledger::store::contract::Fixture;
use journey_ledger::store::esdb::EsdbStore;

async fn setup() -> Option<Fixture> {
    let url = std::env::var("EVENTSTORE_URL").ok()?;
    let namespace = format!("t{}", uuid::Uuid::new_v4().simple());
    let store = Arc::new(
        EsdbStore::connect_in_namespace(&url, &namespace)
            .await
            .unwrap_or_else(|e| {
                panic!("EventStoreDB must be reachable at EVENTSTORE_URL={url}: {e}")
            }),
    );
    let cleanup = store.clone();
    Some(Fixture {
        store,
        teardown: Some(Box::pin(async move {
            if let Err(e) = cleanup.delete_namespace().await {
                eprintln!("could not delete test namespace {namespace}: {e}");
            }
        })),
    })
}

journey_ledger::store_contract_tests!("eventstoredb", setup);

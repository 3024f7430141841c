//! Interleaved appends give exactly the outcomes of some serial order.
//!
//! Each case fires a random mix of appends at once — to three streams, with
//! `Any`, `NoStream` and `Exact(v)` expectations (so many conflict), one or
//! two events each, some sent two or three times with the same event ids
//! (a client retrying) — so the group committer coalesces them, and then
//! checks the store against a serial execution:
//! - the successful appends, in the order of their first position, replay
//!   serially with every expectation met and the very versions and
//!   positions each caller was told;
//! - every failed append failed with a version conflict that some place in
//!   that order explains, and stored nothing;
//! - every retried append succeeded every time and is stored once;
//! - each append's events are consecutive in its stream and in the global
//!   order (no group is interleaved or partly visible), positions are
//!   gapless, and every chain verifies.
//!
//! On SQLite and on PostgreSQL at `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`), each case in a store of its
//! own.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use futures::StreamExt;
use journey_ledger::domain::{EventMetadata, NewEvent, RecordedEvent, StreamId};
use journey_ledger::store::contract::assert_chain;
use journey_ledger::store::{self, AppendOutcome, EventStore, ExpectedVersion, StoreError};
use journey_ledger::testing::TempDatabase;
use proptest::prelude::*;
use serde_json::json;
use uuid::Uuid;

const STREAMS: usize = 3;

/// One append as generated: a stream, an expectation, how many events and
/// how many times it is sent (more than once only with `Any`: a retry).
#[derive(Debug, Clone)]
struct Request {
    stream: usize,
    expected: ExpectedVersion,
    events: usize,
    sends: usize,
}

fn request() -> impl Strategy<Value = Request> {
    let expected = prop_oneof![
        3 => Just(ExpectedVersion::Any),
        2 => Just(ExpectedVersion::NoStream),
        4 => (1u64..=4).prop_map(ExpectedVersion::Exact),
    ];
    (0..STREAMS, expected, 1usize..=2, 1usize..=3).prop_map(|(stream, expected, events, sends)| {
        Request {
            stream,
            sends: if expected == ExpectedVersion::Any {
                sends
            } else {
                1
            },
            expected,
            events,
        }
    })
}

fn stream_id(run: Uuid, i: usize) -> StreamId {
    StreamId::parse(&format!("customer-serial-{}-{i}", run.simple())).unwrap()
}

fn new_events(n: usize, request: usize) -> Vec<NewEvent> {
    let at = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
    (0..n)
        .map(|k| {
            NewEvent::from_parts(
                Uuid::new_v4(),
                "SerialProbe",
                1,
                at,
                &EventMetadata::default(),
                &json!({"request": request, "k": k}),
            )
        })
        .collect()
}

/// What the store answered to each send of each request.
type Answers = Vec<Vec<Result<AppendOutcome, StoreError>>>;

async fn fire(
    store: Arc<dyn EventStore>,
    run: Uuid,
    requests: &[Request],
) -> (Answers, Vec<Vec<NewEvent>>) {
    let batches: Vec<Vec<NewEvent>> = requests
        .iter()
        .enumerate()
        .map(|(i, r)| new_events(r.events, i))
        .collect();
    let start = Arc::new(tokio::sync::Barrier::new(
        requests.iter().map(|r| r.sends).sum(),
    ));
    let mut tasks = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        for _ in 0..r.sends {
            let (store, start) = (store.clone(), start.clone());
            let (stream, expected, batch) =
                (stream_id(run, r.stream), r.expected, batches[i].clone());
            tasks.push((
                i,
                tokio::spawn(async move {
                    start.wait().await;
                    store.append(&stream, expected, batch).await
                }),
            ));
        }
    }
    let mut answers: Answers = requests.iter().map(|_| Vec::new()).collect();
    for (i, task) in tasks {
        answers[i].push(task.await.expect("append task"));
    }
    (answers, batches)
}

fn meets(expected: ExpectedVersion, version: u64) -> bool {
    match expected {
        ExpectedVersion::Any => true,
        ExpectedVersion::NoStream => version == 0,
        ExpectedVersion::Exact(v) => version == v,
    }
}

async fn check_serial_order(store: Arc<dyn EventStore>, run: Uuid, requests: Vec<Request>) {
    let (answers, batches) = fire(store.clone(), run, &requests).await;
    let stored: Vec<RecordedEvent> = store::read_all(store.clone(), 0, 500)
        .map(|e| e.expect("read_all"))
        .collect()
        .await;
    let ours: Vec<&RecordedEvent> = stored
        .iter()
        .filter(|e| e.stream_id.as_str().contains(&run.simple().to_string()))
        .collect();
    let owner: HashMap<Uuid, usize> = batches
        .iter()
        .enumerate()
        .flat_map(|(i, b)| b.iter().map(move |e| (e.event_id(), i)))
        .collect();

    // Which requests are stored, and where.
    let mut placed: HashMap<usize, Vec<&RecordedEvent>> = HashMap::new();
    for e in &ours {
        let i = *owner.get(&e.event_id).expect("every stored event was sent");
        placed.entry(i).or_default().push(e);
    }
    for (i, events) in &placed {
        assert_eq!(
            events.len(),
            requests[*i].events,
            "request {i} stored whole, once"
        );
        for pair in events.windows(2) {
            assert_eq!(
                pair[1].position,
                pair[0].position + 1,
                "request {i} consecutive globally"
            );
            assert_eq!(
                pair[1].version,
                pair[0].version + 1,
                "request {i} consecutive in its stream"
            );
        }
    }

    // Every send of a request got the same kind of answer; retries succeed.
    for (i, sent) in answers.iter().enumerate() {
        let succeeded = sent.iter().filter(|a| a.is_ok()).count();
        if requests[i].sends > 1 {
            assert_eq!(
                succeeded,
                sent.len(),
                "every retry of request {i} succeeds: {sent:?}"
            );
        }
        for answer in sent {
            if let Err(e) = answer {
                assert!(
                    e.is_concurrency_conflict(),
                    "request {i} failed with a version conflict, not {e}"
                );
            }
        }
        assert_eq!(
            succeeded > 0,
            placed.contains_key(&i),
            "request {i}: stored exactly when acknowledged ({sent:?})"
        );
    }

    // The successes, by first position, replay serially with the answers given.
    let mut order: Vec<usize> = placed.keys().copied().collect();
    order.sort_by_key(|i| placed[i][0].position);
    let mut versions = [0u64; STREAMS];
    let mut history: Vec<[u64; STREAMS]> = vec![versions];
    let mut position = ours.first().map_or(0, |e| e.position - 1);
    for &i in &order {
        let r = &requests[i];
        assert!(
            meets(r.expected, versions[r.stream]),
            "request {i} ({:?}) committed at stream version {}",
            r.expected,
            versions[r.stream]
        );
        versions[r.stream] += r.events as u64;
        let first = position + 1;
        position += r.events as u64;
        assert_eq!(placed[&i][0].position, first, "gapless global order");
        for answer in answers[i].iter().flatten() {
            assert_eq!(
                answer.next_version, versions[r.stream],
                "request {i}'s answer"
            );
            assert_eq!(
                (answer.first_position, answer.last_position),
                (first, position)
            );
        }
        history.push(versions);
    }

    // Each failure is explained by some place in that order.
    for (i, sent) in answers.iter().enumerate() {
        if placed.contains_key(&i) {
            continue;
        }
        let r = &requests[i];
        assert!(
            history.iter().any(|v| !meets(r.expected, v[r.stream])),
            "request {i} ({:?} on stream {}) failed though every serial place admits it: {sent:?}",
            r.expected,
            r.stream
        );
    }
    for s in 0..STREAMS {
        let events: Vec<RecordedEvent> = ours
            .iter()
            .filter(|e| e.stream_id == stream_id(run, s))
            .map(|e| (*e).clone())
            .collect();
        assert_chain(&events);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn sqlite_appends_serialize(requests in prop::collection::vec(request(), 2..24)) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("serial.db").display());
        runtime().block_on(async {
            let store = store::open(&url).await.expect("open SQLite store");
            check_serial_order(store, Uuid::new_v4(), requests).await;
        });
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn postgres_appends_serialize(requests in prop::collection::vec(request(), 2..24)) {
        runtime().block_on(async {
            let db = TempDatabase::create().await.expect(
                "PostgreSQL must be reachable at DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test)",
            );
            let store = store::open(&db.url).await.expect("open PostgreSQL store");
            check_serial_order(store, Uuid::new_v4(), requests).await;
            db.drop_database().await;
        });
    }
}

//! The contract every [`EventStore`] backend must satisfy, written once.
//!
//! Each backend's test file invokes [`crate::store_contract_tests!`] with a
//! setup function; every check below then runs against that backend on a
//! fresh, empty store. Checks assert through panics, like any test.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde_json::json;
use uuid::Uuid;

use super::{
    read_all, subscribe_all, Direction, EventStore, ExpectedVersion, ReadStream, StoreError,
    StreamWrite,
};
use crate::domain::{EventHash, EventMetadata, NewEvent, RecordedEvent, StreamId};

/// A fresh store for one check, and how to dispose of it afterwards.
pub struct Fixture {
    /// The store under test, empty.
    pub store: Arc<dyn EventStore>,
    /// Runs after the check, even when it failed (drops a test database).
    pub teardown: Option<BoxFuture<'static, ()>>,
}

/// Runs one check on a fresh store from `setup`; `None` from setup means the
/// backend is unavailable and the check is skipped with a visible message.
pub async fn run<S, SF, C, CF>(backend: &str, setup: S, check: C)
where
    S: FnOnce() -> SF,
    SF: Future<Output = Option<Fixture>>,
    C: FnOnce(Arc<dyn EventStore>) -> CF,
    CF: Future<Output = ()>,
{
    let Some(fixture) = setup().await else {
        // Written to stderr directly (not through `eprintln!`), so the test
        // harness does not capture it: a skip must be visible.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: the {backend} backend is not configured for this run (EventStoreDB: set EVENTSTORE_URL)"
        );
        return;
    };
    let result = AssertUnwindSafe(check(fixture.store)).catch_unwind().await;
    if let Some(teardown) = fixture.teardown {
        teardown.await;
    }
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Generates one `#[tokio::test]` per contract check for a backend.
///
/// `$setup` is an `async fn() -> Option<Fixture>`.
#[macro_export]
macro_rules! store_contract_tests {
    ($backend:literal, $setup:path) => {
        $crate::store_contract_tests!(@each $backend, $setup;
            append_and_read_back,
            expected_version_is_enforced,
            idempotent_retry_is_a_no_op,
            conflicting_reuse_of_an_event_id_is_rejected,
            empty_and_self_duplicating_appends_are_rejected,
            multi_stream_batches_are_atomic,
            large_payload_round_trips,
            unicode_round_trips,
            reading_past_the_end_is_empty,
            stream_heads_answer_in_order,
            global_order_across_streams,
            replay_pages_keep_order_limit_and_stop_for_a_gone_reader,
            concurrent_appenders_with_a_tailing_reader,
            concurrent_requests_succeed_or_fail_alone,
            subscription_catches_up_then_goes_live,
            stats_and_stream_listing,
            newest_customer_event_ignores_other_streams,
            customer_streams_read_whole_in_pages,
            typed_events_decode,
        );
    };
    (@each $backend:literal, $setup:path; $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                $crate::store::contract::run($backend, $setup, |store| {
                    $crate::store::contract::$check(store)
                })
                .await;
            }
        )+
    };
}

fn at(day: u32) -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(1997, 1, day, 12, 0, 0).unwrap()
}

fn stream(name: &str) -> StreamId {
    StreamId::parse(&format!("customer-{name}")).unwrap()
}

/// A raw event with a small JSON payload.
pub fn sample_event(n: u64) -> NewEvent {
    NewEvent::from_parts(
        Uuid::new_v4(),
        "SessionRecorded",
        1,
        at(1 + (n % 28) as u32),
        &EventMetadata {
            actor: Some("contract".into()),
            ..Default::default()
        },
        &json!({"session_id": format!("s{n}"), "channel": "web"}),
    )
}

fn events(n: u64) -> Vec<NewEvent> {
    (0..n).map(sample_event).collect()
}

fn assert_same_content(written: &NewEvent, read: &RecordedEvent) {
    assert!(
        written.same_content_as(read),
        "read back differs:\n written {written:?}\n read    {read:?}"
    );
}

/// Checks hashes chain from genesis through `events` (a whole stream).
pub fn assert_chain(events: &[RecordedEvent]) {
    let mut previous = EventHash::GENESIS;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.version, i as u64 + 1, "versions are contiguous from 1");
        assert_eq!(
            e.recompute_hash(&previous),
            e.hash,
            "hash chain at version {}",
            e.version
        );
        previous = e.hash;
    }
}

async fn whole_stream(store: &dyn EventStore, s: &StreamId) -> Vec<RecordedEvent> {
    store
        .read_stream(s, ReadStream::all_forwards())
        .await
        .unwrap()
}

async fn everything(store: Arc<dyn EventStore>) -> Vec<RecordedEvent> {
    read_all(store, 0, 7)
        .map(|r| r.expect("read_all"))
        .collect()
        .await
}

/// Appends, then reads forwards, backwards, from a version and with a limit.
pub async fn append_and_read_back(store: Arc<dyn EventStore>) {
    let s = stream("a1");
    let batch = events(5);
    let out = store
        .append(&s, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    assert_eq!(out.next_version, 5);
    assert!(!out.already_stored);
    assert!(out.first_position < out.last_position);

    let read = whole_stream(&*store, &s).await;
    assert_eq!(read.len(), 5);
    for (w, r) in batch.iter().zip(&read) {
        assert_same_content(w, r);
        assert_eq!(r.stream_id, s);
    }
    assert_eq!(read[0].position, out.first_position);
    assert_eq!(read[4].position, out.last_position);
    assert!(read.windows(2).all(|w| w[0].position < w[1].position));
    assert_chain(&read);

    let back = store
        .read_stream(
            &s,
            ReadStream {
                direction: Direction::Backwards,
                from_version: None,
                limit: 2,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        back.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![5, 4]
    );

    let middle = store
        .read_stream(
            &s,
            ReadStream {
                direction: Direction::Forwards,
                from_version: Some(3),
                limit: 2,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        middle.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![3, 4]
    );

    let back_from = store
        .read_stream(
            &s,
            ReadStream {
                direction: Direction::Backwards,
                from_version: Some(2),
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        back_from.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![2, 1]
    );

    let head = store.stream_head(&s).await.unwrap().expect("head");
    assert_eq!(head.version, 5);
    assert_eq!(head.hash, read[4].hash);
    assert!(store
        .stream_head(&stream("nobody"))
        .await
        .unwrap()
        .is_none());
}

/// NoStream, Exact and Any behave as documented; a failed check stores nothing.
pub async fn expected_version_is_enforced(store: Arc<dyn EventStore>) {
    let s = stream("ev");
    store
        .append(&s, ExpectedVersion::NoStream, events(2))
        .await
        .unwrap();

    let err = store
        .append(&s, ExpectedVersion::NoStream, events(1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::WrongExpectedVersion { actual: 2, .. }),
        "{err:?}"
    );
    let err = store
        .append(&s, ExpectedVersion::Exact(1), events(1))
        .await
        .unwrap_err();
    assert!(err.is_concurrency_conflict(), "{err:?}");
    let err = store
        .append(&stream("absent"), ExpectedVersion::Exact(3), events(1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::WrongExpectedVersion { actual: 0, .. }),
        "{err:?}"
    );
    assert_eq!(
        whole_stream(&*store, &s).await.len(),
        2,
        "failed appends store nothing"
    );

    let out = store
        .append(&s, ExpectedVersion::Exact(2), events(2))
        .await
        .unwrap();
    assert_eq!(out.next_version, 4);
    let out = store
        .append(&s, ExpectedVersion::Any, events(1))
        .await
        .unwrap();
    assert_eq!(out.next_version, 5);
    let out = store
        .append(&stream("fresh"), ExpectedVersion::Any, events(1))
        .await
        .unwrap();
    assert_eq!(out.next_version, 1);
    assert_chain(&whole_stream(&*store, &s).await);
}

/// Re-sending the same append (same ids, same content) changes nothing.
pub async fn idempotent_retry_is_a_no_op(store: Arc<dyn EventStore>) {
    let s = stream("idem");
    let batch = events(3);
    let first = store
        .append(&s, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    let head_before = store.head_position().await.unwrap();
    let retry = store
        .append(&s, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    assert!(retry.already_stored);
    assert_eq!(retry.next_version, first.next_version);
    assert_eq!(retry.first_position, first.first_position);
    assert_eq!(retry.last_position, first.last_position);
    assert_eq!(store.head_position().await.unwrap(), head_before);
    assert_eq!(whole_stream(&*store, &s).await.len(), 3);

    // A retry that overlaps new events appends only the new ones under Any…
    let mut overlapping = batch[1..].to_vec();
    overlapping.push(sample_event(99));
    let out = store
        .append(&s, ExpectedVersion::Any, overlapping.clone())
        .await
        .unwrap();
    assert_eq!(out.next_version, 4);
    // …and is refused under an exact expectation, storing nothing.
    let mut partial = batch[..1].to_vec();
    partial.push(sample_event(100));
    let err = store
        .append(&s, ExpectedVersion::Exact(4), partial)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::PartiallyStored {
                stored: 1,
                total: 2
            }
        ),
        "{err:?}"
    );
    let all = whole_stream(&*store, &s).await;
    assert_eq!(all.len(), 4);
    assert_chain(&all);
}

/// The same id with other content, or in another stream, is an error.
pub async fn conflicting_reuse_of_an_event_id_is_rejected(store: Arc<dyn EventStore>) {
    let s = stream("conflict");
    let original = sample_event(1);
    store
        .append(&s, ExpectedVersion::NoStream, vec![original.clone()])
        .await
        .unwrap();
    let altered = NewEvent::from_parts(
        original.event_id(),
        original.event_type(),
        original.schema_version(),
        original.occurred_at(),
        &EventMetadata::default(),
        &json!({"session_id": "changed", "channel": "web"}),
    );
    let err = store
        .append(&s, ExpectedVersion::Any, vec![altered])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::EventIdConflict { event_id, version: 1, .. } if event_id == original.event_id()),
        "{err:?}"
    );
    // Reuse in another stream is caught only where ids are indexed
    // globally; EventStoreDB checks ids within the target stream only.
    if store.capabilities().unique_event_ids_across_streams {
        let err = store
            .append(&stream("other"), ExpectedVersion::Any, vec![original])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::EventIdConflict { .. }), "{err:?}");
        assert!(store.stream_head(&stream("other")).await.unwrap().is_none());
    }
}

/// Empty appends and ids repeated inside one append are refused.
pub async fn empty_and_self_duplicating_appends_are_rejected(store: Arc<dyn EventStore>) {
    let s = stream("empty");
    let err = store
        .append(&s, ExpectedVersion::Any, vec![])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::EmptyAppend), "{err:?}");
    let e = sample_event(1);
    let err = store
        .append(&s, ExpectedVersion::Any, vec![e.clone(), e])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::DuplicateInBatch(_)), "{err:?}");
    assert_eq!(store.head_position().await.unwrap(), 0);
}

/// A batch over several streams is checked as a whole before anything is
/// stored, on every backend: a failed expectation in any write stores
/// nothing. Where `atomic_multi_stream_batches` holds (SQL) the batch also
/// commits as one transaction; without it (EventStoreDB) writes commit
/// stream by stream, so only a writer racing between the check and the last
/// write can leave part of a batch stored — which the error then says.
pub async fn multi_stream_batches_are_atomic(store: Arc<dyn EventStore>) {
    let (a, b) = (stream("ba"), stream("bb"));
    store
        .append(&b, ExpectedVersion::NoStream, events(1))
        .await
        .unwrap();
    let err = store
        .append_batch(vec![
            StreamWrite {
                stream: a.clone(),
                expected: ExpectedVersion::NoStream,
                events: events(2),
            },
            StreamWrite {
                stream: b.clone(),
                expected: ExpectedVersion::NoStream,
                events: events(1),
            },
        ])
        .await
        .unwrap_err();
    assert!(err.is_concurrency_conflict(), "{err:?}");
    assert!(
        store.stream_head(&a).await.unwrap().is_none(),
        "nothing of the batch stored"
    );

    let outs = store
        .append_batch(vec![
            StreamWrite {
                stream: a.clone(),
                expected: ExpectedVersion::NoStream,
                events: events(2),
            },
            StreamWrite {
                stream: b.clone(),
                expected: ExpectedVersion::Exact(1),
                events: events(1),
            },
            StreamWrite {
                stream: a.clone(),
                expected: ExpectedVersion::Exact(2),
                events: events(1),
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        outs.iter().map(|o| o.next_version).collect::<Vec<_>>(),
        vec![2, 2, 3]
    );
    assert_chain(&whole_stream(&*store, &a).await);
    assert_chain(&whole_stream(&*store, &b).await);
}

/// A 1 MiB payload is stored and read back byte for byte.
pub async fn large_payload_round_trips(store: Arc<dyn EventStore>) {
    let s = stream("large");
    let big: String = (0..(1 << 20))
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let e = NewEvent::from_parts(
        Uuid::new_v4(),
        "ComplaintFiled",
        1,
        at(3),
        &EventMetadata::default(),
        &json!({"complaint_id": "c1", "category": "bulk", "description": big}),
    );
    assert!(e.payload_json().len() > 1 << 20);
    store
        .append(&s, ExpectedVersion::NoStream, vec![e.clone()])
        .await
        .unwrap();
    let read = whole_stream(&*store, &s).await;
    assert_same_content(&e, &read[0]);
    assert_chain(&read);
}

/// Non-ASCII text, escapes and NUL survive every layer.
pub async fn unicode_round_trips(store: Arc<dyn EventStore>) {
    let s = stream("unicode");
    let text = "Zoë 李小龙 — שלום 🎉 e\u{301} \"quoted\" \\ tab\t nul\u{0}";
    let e = NewEvent::from_parts(
        Uuid::new_v4(),
        "ComplaintFiled",
        1,
        at(4),
        &EventMetadata {
            actor: Some("opérateur 东".into()),
            ..Default::default()
        },
        &json!({"complaint_id": "ü", "category": "naïve", "description": text}),
    );
    store
        .append(&s, ExpectedVersion::NoStream, vec![e.clone()])
        .await
        .unwrap();
    let read = whole_stream(&*store, &s).await;
    assert_same_content(&e, &read[0]);
    let payload: serde_json::Value = serde_json::from_str(&read[0].payload_json).unwrap();
    assert_eq!(payload["description"], text);
    assert_eq!(
        read[0].metadata().unwrap().actor.as_deref(),
        Some("opérateur 东")
    );
}

/// Reading beyond the last version or position returns nothing, not an error.
pub async fn reading_past_the_end_is_empty(store: Arc<dyn EventStore>) {
    let s = stream("end");
    let out = store
        .append(&s, ExpectedVersion::NoStream, events(2))
        .await
        .unwrap();
    let past = store
        .read_stream(
            &s,
            ReadStream {
                direction: Direction::Forwards,
                from_version: Some(3),
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert!(past.is_empty());
    assert!(store
        .read_all_page(out.last_position + 1, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(whole_stream(&*store, &stream("missing")).await.is_empty());
    assert!(store
        .read_stream(
            &s,
            ReadStream {
                direction: Direction::Forwards,
                from_version: None,
                limit: 0,
            },
        )
        .await
        .unwrap()
        .is_empty());
}

/// Several heads at once equal the heads asked one by one, in the order
/// asked, with `None` for streams that do not exist.
pub async fn stream_heads_answer_in_order(store: Arc<dyn EventStore>) {
    let (a, b, missing) = (stream("heads-a"), stream("heads-b"), stream("heads-none"));
    store
        .append(&a, ExpectedVersion::NoStream, events(3))
        .await
        .unwrap();
    store
        .append(&b, ExpectedVersion::NoStream, events(1))
        .await
        .unwrap();
    let asked = [b.clone(), missing.clone(), a.clone(), b.clone()];
    let heads = store.stream_heads(&asked).await.unwrap();
    let mut one_by_one = Vec::new();
    for s in &asked {
        one_by_one.push(store.stream_head(s).await.unwrap());
    }
    assert_eq!(heads, one_by_one);
    assert_eq!(
        heads
            .iter()
            .map(|h| h.map(|h| h.version))
            .collect::<Vec<_>>(),
        [Some(1), None, Some(3), Some(1)]
    );
    assert!(store.stream_heads(&[]).await.unwrap().is_empty());
}

/// Interleaved appends to many streams come back in one global order.
pub async fn global_order_across_streams(store: Arc<dyn EventStore>) {
    let mut written = Vec::new();
    for round in 0..4u64 {
        for c in 0..5 {
            let e = events(1 + (round + c) % 3);
            written.extend(e.iter().map(|e| e.event_id()));
            store
                .append(&stream(&format!("g{c}")), ExpectedVersion::Any, e)
                .await
                .unwrap();
        }
    }
    let all = everything(store.clone()).await;
    assert_eq!(all.iter().map(|e| e.event_id).collect::<Vec<_>>(), written);
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    if store.capabilities().gapless_positions {
        let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
        assert_eq!(positions, (1..=all.len() as u64).collect::<Vec<_>>());
    }
    assert_eq!(
        store.head_position().await.unwrap(),
        all.last().unwrap().position
    );
    let tail = all[7].position;
    let from_middle: Vec<_> = read_all(store.clone(), tail, 3)
        .map(|r| r.unwrap().event_id)
        .collect()
        .await;
    assert_eq!(from_middle, written[7..]);
}

/// [`EventStore::read_all_into`], which replays hand on in pages: events
/// from `from` in position order, at most `limit`, in non-empty pages of at
/// most `page`; the count and last position say where to resume; a reader
/// that has gone stops it without error and without counting what it did
/// not take. And a replay spanning several such reads misses nothing.
pub async fn replay_pages_keep_order_limit_and_stop_for_a_gone_reader(store: Arc<dyn EventStore>) {
    for c in 0..4u64 {
        store
            .append(&stream(&format!("p{c}")), ExpectedVersion::Any, events(3))
            .await
            .unwrap();
    }
    // The expectation comes from one plain page read, not from a replay.
    let all = store.read_all_page(0, 100).await.unwrap();
    assert_eq!(all.len(), 12);
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    let ids = |events: &[RecordedEvent]| events.iter().map(|e| e.event_id).collect::<Vec<_>>();
    let pages_of = |from: u64, limit: usize, page: usize| {
        let store = store.clone();
        async move {
            let (tx, mut rx) = tokio::sync::mpsc::channel(16);
            let sent = store.read_all_into(from, limit, page, &tx).await.unwrap();
            drop(tx);
            let mut pages = Vec::new();
            while let Some(page) = rx.recv().await {
                pages.push(page.unwrap());
            }
            (sent, pages)
        }
    };

    let from = all[2].position;
    let (sent, pages) = pages_of(from, 7, 3).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
    assert_eq!(ids(&pages.concat()), ids(&all[2..9]));
    assert_eq!((sent.events, sent.receiver_gone), (7, false));
    assert_eq!(sent.last_position, Some(all[8].position));
    assert_eq!(sent.next_from(from), all[8].position + 1);

    // A page larger than the limit: one page of the limit.
    let (sent, pages) = pages_of(from, 4, 50).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [4]);
    assert_eq!(sent.events, 4);

    // Past the end: fewer than the limit, no empty page, and the total
    // says so; from beyond the end, nothing at all.
    let (sent, pages) = pages_of(from, 100, 5).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [5, 5]);
    assert_eq!(sent.events, 10);
    let (sent, pages) = pages_of(all[11].position + 1, 100, 5).await;
    assert!(pages.is_empty());
    assert_eq!((sent.events, sent.last_position), (0, None));
    assert_eq!(sent.next_from(all[11].position + 1), all[11].position + 1);

    // The reader takes one page and closes: what it had taken and what was
    // already buffered count, nothing after.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<RecordedEvent>, StoreError>>(1);
    let reader = tokio::spawn(async move {
        let mut delivered = rx.recv().await.unwrap().unwrap();
        rx.close();
        while let Some(page) = rx.recv().await {
            delivered.extend(page.unwrap());
        }
        delivered
    });
    let sent = store.read_all_into(0, 100, 2, &tx).await.unwrap();
    let delivered = reader.await.unwrap();
    assert!(sent.receiver_gone, "{sent:?}");
    assert_eq!(sent.events, delivered.len());
    assert_eq!(ids(&delivered), ids(&all[..delivered.len()]));
    assert_eq!(sent.last_position, delivered.last().map(|e| e.position));

    // A replay over several reads of five events each, in pages of two.
    let replayed: Vec<_> = super::subscription::read_all_in_reads(store.clone(), from, 2, 5)
        .map(|e| e.unwrap())
        .collect()
        .await;
    assert_eq!(ids(&replayed), ids(&all[2..]));
}

/// Many tasks race on one stream with expected versions while a subscriber
/// tails the log: versions stay contiguous, nothing is lost or duplicated,
/// the reader sees each committed event exactly once in order, and losers
/// are told so.
/// Many appends at once (which group-committing backends coalesce into
/// shared transactions): each keeps its own checks. Of the racers that
/// create one stream exactly one wins and the rest fail alone; concurrent
/// retries of one event store it once; the unconditional appends all
/// commit; positions stay gapless and chains intact.
pub async fn concurrent_requests_succeed_or_fail_alone(store: Arc<dyn EventStore>) {
    const RACERS: usize = 12;
    const FREE: usize = 24;
    const RETRIES: usize = 6;
    let raced = stream("raced");
    let retried_stream = stream("retried");
    let retried = sample_event(7);
    let mut tasks = Vec::new();
    for i in 0..RACERS {
        let (store, s) = (store.clone(), raced.clone());
        tasks.push(tokio::spawn(async move {
            (
                "racer",
                store
                    .append(&s, ExpectedVersion::NoStream, vec![sample_event(i as u64)])
                    .await,
            )
        }));
    }
    for i in 0..FREE {
        let (store, s) = (store.clone(), stream(&format!("free-{}", i % 5)));
        tasks.push(tokio::spawn(async move {
            (
                "free",
                store.append(&s, ExpectedVersion::Any, events(2)).await,
            )
        }));
    }
    for _ in 0..RETRIES {
        let (store, s, e) = (store.clone(), retried_stream.clone(), retried.clone());
        tasks.push(tokio::spawn(async move {
            (
                "retry",
                store.append(&s, ExpectedVersion::Any, vec![e]).await,
            )
        }));
    }
    let mut winners = 0;
    for task in tasks {
        match task.await.unwrap() {
            ("racer", Ok(_)) => winners += 1,
            ("racer", Err(e)) => assert!(
                matches!(e, StoreError::WrongExpectedVersion { .. }),
                "a losing racer fails with a version conflict, not {e}"
            ),
            (kind, result) => {
                result.unwrap_or_else(|e| panic!("{kind} append failed: {e}"));
            }
        }
    }
    assert_eq!(winners, 1, "exactly one racer creates the stream");
    assert_eq!(whole_stream(&*store, &raced).await.len(), 1);
    let stored = whole_stream(&*store, &retried_stream).await;
    assert_eq!(stored.len(), 1, "concurrent retries store the event once");
    assert_eq!(stored[0].event_id, retried.event_id());
    let all = everything(store.clone()).await;
    assert_eq!(all.len(), 1 + FREE * 2 + 1);
    if store.capabilities().gapless_positions {
        let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
        assert_eq!(positions, (1..=all.len() as u64).collect::<Vec<_>>());
    }
    for i in 0..5 {
        let events = whole_stream(&*store, &stream(&format!("free-{i}"))).await;
        assert_chain(&events);
    }
}

pub async fn concurrent_appenders_with_a_tailing_reader(store: Arc<dyn EventStore>) {
    const TASKS: usize = 8;
    const APPENDS_PER_TASK: usize = 12;
    let contested = stream("contested");

    let reader_store = store.clone();
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut sub = subscribe_all(reader_store, 0);
        let want = TASKS * APPENDS_PER_TASK * 2 + TASKS * APPENDS_PER_TASK;
        while seen.len() < want {
            match tokio::time::timeout(Duration::from_secs(60), sub.next()).await {
                Ok(Some(Ok(e))) => seen.push(e),
                Ok(Some(Err(e))) => panic!("subscription failed: {e}"),
                Ok(None) => panic!("subscription ended"),
                Err(_) => panic!("subscription stalled after {} events", seen.len()),
            }
        }
        seen
    });

    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        let contested = contested.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0usize;
            let mut mine = Vec::new();
            let side = stream(&format!("side{t}"));
            let mut lock_step = true;
            for _ in 0..APPENDS_PER_TASK {
                loop {
                    // In the very first attempt everybody reads the same
                    // head and appends at once, so conflicts are certain.
                    if lock_step {
                        barrier.wait().await;
                    }
                    let version = store
                        .stream_head(&contested)
                        .await
                        .unwrap()
                        .map_or(0, |h| h.version);
                    if lock_step {
                        barrier.wait().await;
                        lock_step = false;
                    }
                    let batch = events(2);
                    let ids: Vec<Uuid> = batch.iter().map(|e| e.event_id()).collect();
                    let expected = if version == 0 {
                        ExpectedVersion::NoStream
                    } else {
                        ExpectedVersion::Exact(version)
                    };
                    match store.append(&contested, expected, batch).await {
                        Ok(out) => {
                            assert_eq!(out.next_version, version + 2);
                            mine.extend(ids);
                            break;
                        }
                        Err(e) if e.is_concurrency_conflict() => conflicts += 1,
                        Err(e) => panic!("unexpected append error: {e}"),
                    }
                }
                let side_event = events(1);
                mine.push(side_event[0].event_id());
                store
                    .append(&side, ExpectedVersion::Any, side_event)
                    .await
                    .unwrap();
            }
            (mine, conflicts)
        }));
    }

    let mut committed = HashSet::new();
    let mut conflicts = 0;
    for t in tasks {
        let (mine, c) = t.await.unwrap();
        conflicts += c;
        for id in mine {
            assert!(committed.insert(id), "an event id was committed twice");
        }
    }
    assert!(
        conflicts >= TASKS - 1,
        "losers got concurrency errors ({conflicts})"
    );

    let contested_events = whole_stream(&*store, &contested).await;
    assert_eq!(contested_events.len(), TASKS * APPENDS_PER_TASK * 2);
    assert_chain(&contested_events);

    let seen = reader.await.unwrap();
    assert!(
        seen.windows(2).all(|w| w[0].position < w[1].position),
        "in position order"
    );
    let seen_ids: HashSet<Uuid> = seen.iter().map(|e| e.event_id).collect();
    assert_eq!(seen_ids.len(), seen.len(), "no event seen twice");
    assert_eq!(
        seen_ids, committed,
        "the reader saw exactly the committed events"
    );
    let all = everything(store.clone()).await;
    assert_eq!(all.len(), committed.len());
}

/// A subscription delivers history, then events appended after it started.
pub async fn subscription_catches_up_then_goes_live(store: Arc<dyn EventStore>) {
    let s = stream("live");
    store
        .append(&s, ExpectedVersion::NoStream, events(3))
        .await
        .unwrap();
    // Start at the second event's own position: positions are sparse on
    // some backends (see `Capabilities::gapless_positions`).
    let second = whole_stream(&*store, &s).await[1].position;
    let mut sub = subscribe_all(store.clone(), second);
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(next_within(&mut sub).await);
    }
    assert_eq!(
        got.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![2, 3]
    );
    store
        .append(&s, ExpectedVersion::Exact(3), events(2))
        .await
        .unwrap();
    for _ in 0..2 {
        got.push(next_within(&mut sub).await);
    }
    assert_eq!(
        got.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![2, 3, 4, 5]
    );
    let extra = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
    assert!(extra.is_err(), "nothing more than what was appended");
}

async fn next_within(
    sub: &mut futures::stream::BoxStream<'static, Result<RecordedEvent, StoreError>>,
) -> RecordedEvent {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("subscription delivered in time")
        .expect("subscription open")
        .expect("no error")
}

/// `stats` counts events, streams and types; streams list in name order.
pub async fn stats_and_stream_listing(store: Arc<dyn EventStore>) {
    for name in ["c", "a", "b"] {
        store
            .append(&stream(name), ExpectedVersion::Any, events(2))
            .await
            .unwrap();
    }
    let large = NewEvent::from_parts(
        Uuid::new_v4(),
        "ConsentGiven",
        1,
        at(2),
        &EventMetadata::default(),
        &json!({"purpose": "marketing_email"}),
    );
    store
        .append(&stream("a"), ExpectedVersion::Any, vec![large])
        .await
        .unwrap();
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.events, 7);
    assert_eq!(stats.streams, 3);
    let types: HashMap<_, _> = stats.event_types.into_iter().collect();
    assert_eq!(types["SessionRecorded"], 6);
    assert_eq!(types["ConsentGiven"], 1);
    let first = store.list_streams(None, 2).await.unwrap();
    assert_eq!(first, vec![stream("a"), stream("b")]);
    let rest = store.list_streams(first.last(), 10).await.unwrap();
    assert_eq!(rest, vec![stream("c")]);
}

/// The newest `occurred_at` among customer streams, whatever the order of
/// appends, and not that of other streams (the admin stream's records are
/// written at the wall clock).
pub async fn newest_customer_event_ignores_other_streams(store: Arc<dyn EventStore>) {
    assert_eq!(store.newest_customer_occurred_at().await.unwrap(), None);
    let on = |day: u32| {
        NewEvent::from_parts(
            Uuid::new_v4(),
            "SessionRecorded",
            1,
            at(day),
            &EventMetadata::default(),
            &json!({"session_id": format!("s{day}"), "channel": "web"}),
        )
    };
    for (name, day) in [("late", 9), ("early", 3), ("later-but-first", 5)] {
        store
            .append(&stream(name), ExpectedVersion::Any, vec![on(day)])
            .await
            .unwrap();
    }
    let admin = StreamId::parse("ledger-admin").unwrap();
    store
        .append(&admin, ExpectedVersion::Any, vec![on(20)])
        .await
        .unwrap();
    assert_eq!(
        store.newest_customer_occurred_at().await.unwrap(),
        Some(at(9))
    );
}

/// Paging through customer streams gives each one whole, once, in stream
/// order, whatever the page size: a stream longer than a page comes whole,
/// one cut by the page's end comes in the next; other streams never.
pub async fn customer_streams_read_whole_in_pages(store: Arc<dyn EventStore>) {
    for (name, n) in [("d", 1), ("a", 2), ("c", 7), ("b", 3), ("e", 2)] {
        store
            .append(&stream(name), ExpectedVersion::Any, events(n))
            .await
            .unwrap();
    }
    let admin = StreamId::parse("ledger-admin").unwrap();
    store
        .append(&admin, ExpectedVersion::Any, events(2))
        .await
        .unwrap();
    let mut expected = Vec::new();
    for name in ["a", "b", "c", "d", "e"] {
        expected.push((stream(name), whole_stream(&*store, &stream(name)).await));
    }
    for limit in [1, 2, 3, 4, 100] {
        let mut got = Vec::new();
        let mut after: Option<StreamId> = None;
        loop {
            let page = store
                .read_customer_streams(after.as_ref(), limit)
                .await
                .unwrap();
            let Some((last, _)) = page.last() else {
                break;
            };
            after = Some(last.clone());
            got.extend(page);
        }
        let names = |v: &[(StreamId, Vec<RecordedEvent>)]| {
            v.iter()
                .map(|(s, e)| (s.to_string(), e.len()))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&got), names(&expected), "page size {limit}");
        for ((_, read), (_, whole)) in got.iter().zip(&expected) {
            let ids = |e: &[RecordedEvent]| e.iter().map(|e| e.event_id).collect::<Vec<_>>();
            assert_eq!(ids(read), ids(whole), "page size {limit}");
        }
    }
}

/// Domain events survive the store and decode to the same typed values.
pub async fn typed_events_decode(store: Arc<dyn EventStore>) {
    use crate::domain::events::{DomainEvent, OrderPlaced};
    use crate::domain::{Currency, Money};
    let s = stream("typed");
    let order = DomainEvent::OrderPlaced(OrderPlaced {
        order_id: "o-1".into(),
        amount: Money::new(2933, Currency::USD),
        item_count: 2,
    });
    let e =
        NewEvent::from_domain(Uuid::new_v4(), at(5), &EventMetadata::default(), &order).unwrap();
    store
        .append(&s, ExpectedVersion::NoStream, vec![e])
        .await
        .unwrap();
    let read = whole_stream(&*store, &s).await;
    assert_eq!(read[0].decode().unwrap(), order);
    assert_eq!(read[0].schema_version, 2);
}

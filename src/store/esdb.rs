//! EventStoreDB / KurrentDB backend over gRPC (the `eventstore` crate).
//!
//! Each ledger stream is one server stream (optionally prefixed by a
//! namespace, see [`mapping`]); the payload is the event data and the rest of
//! the envelope, including the chained hash, is the event's custom metadata.
//!
//! How the contract is kept, and where it differs from the SQL stores
//! (each difference is stated in [`Capabilities`] and in the contract suite):
//!
//! - **Appends** read every target stream, plan the batch with the shared
//!   [`batch::plan`] (idempotency, expected versions, hash chain), then
//!   append each write with the *observed* revision as ESDB's expected
//!   revision, so the server rejects the write if anyone appended in between;
//!   the whole cycle is then retried, re-reading. A single-stream append is
//!   therefore atomic and checked exactly as on SQL.
//! - **Multi-stream batches** are validated as a whole before anything is
//!   written, then written stream by stream: ESDB has no multi-stream
//!   transactions. If a later write fails after earlier ones committed, the
//!   error says which writes are stored; re-sending the same events (same
//!   ids) completes the batch idempotently. `atomic_multi_stream_batches` is
//!   false.
//! - **Idempotency** is checked against the target streams only (ESDB has no
//!   index by event id), so reusing an id in *another* stream is not
//!   detected: `unique_event_ids_across_streams` is false.
//! - **Positions** are `2 × commit + 1`: strictly increasing in commit order,
//!   sparse (`gapless_positions` is false). Resume with a position this store
//!   returned (or that + 1); arbitrary numbers may point into a log record.
//! - **Costs**: an append reads its target streams whole (customer streams
//!   are short); `$all` reads are filtered client-side (system events, other
//!   namespaces and foreign streams are skipped), so `head_position` scans
//!   backwards to the newest ledger event, and `stats` and `list_streams`
//!   scan the whole log (O(events in the database)).
//! - **Live tailing** wakes at once for appends made through this process
//!   and polls every 200 ms for appends made elsewhere.

pub mod mapping;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use eventstore::{
    AppendToStreamOptions, Client, ClientSettings, DeleteStreamOptions, ReadAllOptions,
    ReadStreamOptions, StreamPosition,
};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::watch;
use uuid::Uuid;

use self::mapping::{backend_error, BACKEND};
use super::batch::{self, AppendPlan};
use super::{
    AppendOutcome, Capabilities, Direction, EventStore, ExpectedVersion, ReadStream, StoreError,
    StoreStats, StreamHead, StreamWrite,
};
use crate::domain::{RecordedEvent, StreamId};

/// How often a waiting subscriber re-reads `$all` for appends made by other
/// processes (appends through this store wake it at once).
const CROSS_PROCESS_POLL: Duration = Duration::from_millis(200);

/// Events per server round trip when scanning `$all`.
const ALL_CHUNK: usize = 1_000;

/// Target streams read concurrently while planning an append.
const READ_CONCURRENCY: usize = 16;

/// Plan-and-write cycles before a lost race is reported to the caller.
const MAX_ATTEMPTS: usize = 8;

/// An event store on an EventStoreDB / KurrentDB node or cluster.
pub struct EsdbStore {
    client: Client,
    namespace: String,
    head: watch::Sender<u64>,
}

fn grpc_error(e: eventstore::Error) -> StoreError {
    backend_error(e.to_string())
}

impl EsdbStore {
    /// Connects to the node an `esdb://`, `esdb+discover://`, `kurrentdb://`
    /// or `kurrentdb+discover://` URL names (see [`mapping::parse_url`]) and
    /// checks that `$all` can be read.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let parsed = mapping::parse_url(url)?;
        Self::connect_parsed(&parsed.client_url, parsed.namespace).await
    }

    /// Connects like [`EsdbStore::connect`] but confines the ledger to
    /// `namespace`: streams are stored as `<namespace>_<stream>` and every
    /// read sees only them. Tests use a fresh namespace per check, since
    /// ESDB has no "create database".
    pub async fn connect_in_namespace(url: &str, namespace: &str) -> Result<Self, StoreError> {
        mapping::validate_namespace(namespace)?;
        let parsed = mapping::parse_url(url)?;
        Self::connect_parsed(&parsed.client_url, namespace.to_owned()).await
    }

    async fn connect_parsed(client_url: &str, namespace: String) -> Result<Self, StoreError> {
        let settings: ClientSettings = client_url
            .parse()
            .map_err(|e| backend_error(format!("bad connection string {client_url:?}: {e}")))?;
        let client = Client::new(settings).map_err(|e| {
            backend_error(format!("cannot create a client for {client_url:?}: {e}"))
        })?;
        let store = Self {
            client,
            namespace,
            head: watch::channel(0).0,
        };
        // Fail fast (unreachable node, TLS mismatch, no read permission).
        let probe = ReadAllOptions::default()
            .position(StreamPosition::End)
            .max_count(1);
        let mut read = store.client.read_all(&probe).await.map_err(|e| {
            backend_error(format!(
                "cannot read $all at {client_url}: {e} (is the node up? for an insecure node add ?tls=false)"
            ))
        })?;
        read.next().await.map_err(|e| {
            backend_error(format!(
                "cannot read $all at {client_url}: {e} (is the node up? for an insecure node add ?tls=false)"
            ))
        })?;
        Ok(store)
    }

    /// The namespace this store is confined to ("" for none).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Soft-deletes every ledger stream of this store's namespace. Meant
    /// for test teardown; refuses to run without a namespace.
    pub async fn delete_namespace(&self) -> Result<usize, StoreError> {
        if self.namespace.is_empty() {
            return Err(backend_error(
                "delete_namespace needs a namespace; refusing to delete a whole ledger",
            ));
        }
        let streams = self.list_streams(None, usize::MAX).await?;
        for s in &streams {
            self.client
                .delete_stream(self.server_name(s), &DeleteStreamOptions::default())
                .await
                .map_err(grpc_error)?;
        }
        Ok(streams.len())
    }

    fn server_name(&self, stream: &StreamId) -> String {
        mapping::server_stream_name(&self.namespace, stream)
    }

    /// Reads a stream with `options`; a missing stream reads as empty.
    async fn read_server_stream(
        &self,
        stream: &StreamId,
        options: ReadStreamOptions,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut read = match self
            .client
            .read_stream(self.server_name(stream), &options)
            .await
        {
            Ok(read) => read,
            Err(eventstore::Error::ResourceNotFound) => return Ok(Vec::new()),
            Err(e) => return Err(grpc_error(e)),
        };
        let mut events = Vec::new();
        loop {
            match read.next().await {
                Ok(Some(resolved)) => {
                    if let Some(e) =
                        mapping::decode_event(&self.namespace, resolved.get_original_event())?
                    {
                        events.push(e);
                    }
                }
                Ok(None) => return Ok(events),
                Err(eventstore::Error::ResourceNotFound) => return Ok(Vec::new()),
                Err(e) => return Err(grpc_error(e)),
            }
        }
    }

    async fn whole_stream(
        &self,
        stream: StreamId,
    ) -> Result<(StreamId, Vec<RecordedEvent>), StoreError> {
        let events = self
            .read_server_stream(&stream, ReadStreamOptions::default().forwards())
            .await?;
        Ok((stream, events))
    }

    /// Plans `writes` against what the target streams hold right now.
    async fn plan<'a>(&self, writes: &'a [StreamWrite]) -> Result<AppendPlan<'a>, StoreError> {
        let ids: HashSet<Uuid> = writes
            .iter()
            .flat_map(|w| w.events.iter().map(|e| e.event_id()))
            .collect();
        let contents: Vec<(StreamId, Vec<RecordedEvent>)> =
            futures::stream::iter(batch::streams_of(writes))
                .map(|s| self.whole_stream(s))
                .buffered(READ_CONCURRENCY)
                .try_collect()
                .await?;
        let mut existing = HashMap::new();
        let mut heads = HashMap::new();
        for (stream, events) in contents {
            if let Some(last) = events.last() {
                heads.insert(
                    stream,
                    StreamHead {
                        version: last.version,
                        hash: last.hash,
                    },
                );
            }
            for e in events {
                if ids.contains(&e.event_id) {
                    existing.insert(e.event_id, e);
                }
            }
        }
        // Positions are assigned by the server; the plan's are placeholders.
        batch::plan(writes, &existing, &heads, 0, batch::now_micros())
    }

    /// Appends one write's planned rows with the observed revision as the
    /// server-side check, then reads them back for their positions.
    async fn write_rows(
        &self,
        stream: &StreamId,
        rows: &[batch::PlannedRow<'_>],
        recorded_at: &chrono::DateTime<chrono::Utc>,
    ) -> Result<(u64, u64), WriteError> {
        let first_version = rows[0].version;
        let expected = mapping::expected_revision(ExpectedVersion::Exact(first_version - 1));
        let events = rows
            .iter()
            .map(|r| mapping::event_data(r.event, r.version, recorded_at, &r.hash))
            .collect::<Result<Vec<_>, _>>()?;
        let options = AppendToStreamOptions::default().expected_revision(expected);
        match self
            .client
            .append_to_stream(self.server_name(stream), &options, events)
            .await
        {
            Ok(_) => {}
            Err(eventstore::Error::WrongExpectedVersion { current, .. }) => {
                return Err(WriteError::Raced {
                    actual: mapping::current_version(current),
                })
            }
            Err(e) => return Err(grpc_error(e).into()),
        }
        let start = mapping::stream_read_start(false, Some(first_version)).expect("forwards");
        let stored = self
            .read_server_stream(
                stream,
                ReadStreamOptions::default()
                    .forwards()
                    .position(start)
                    .max_count(rows.len()),
            )
            .await?;
        let same = stored.len() == rows.len()
            && stored
                .iter()
                .zip(rows)
                .all(|(s, r)| s.event_id == r.event.event_id() && s.hash == r.hash);
        if !same {
            return Err(backend_error(format!(
                "{stream}: the events read back after the append are not the ones written"
            ))
            .into());
        }
        Ok((stored[0].position, stored[stored.len() - 1].position))
    }

    /// One plan-and-write cycle over `writes`; pushes an outcome per write
    /// that committed, so a failure leaves `done` telling what is stored.
    async fn attempt(
        &self,
        writes: &[StreamWrite],
        done: &mut Vec<AppendOutcome>,
    ) -> Result<(), WriteError> {
        let plan = self.plan(writes).await?;
        let mut rows = plan.rows.into_iter();
        for (write, mut outcome) in writes.iter().zip(plan.outcomes) {
            if outcome.appended > 0 {
                let mine: Vec<_> = rows.by_ref().take(outcome.appended).collect();
                let (first, last) = self
                    .write_rows(&write.stream, &mine, &plan.recorded_at)
                    .await
                    .map_err(|e| match e {
                        WriteError::Raced { actual } => WriteError::RacedOn {
                            stream: write.stream.to_string(),
                            expected: write.expected,
                            actual,
                        },
                        other => other,
                    })?;
                outcome.first_position = first;
                outcome.last_position = last;
                batch::advance_head(&self.head, last);
            }
            done.push(outcome);
        }
        Ok(())
    }
}

/// Why writing a planned batch stopped.
#[derive(Debug)]
enum WriteError {
    /// The server's revision check failed: someone appended in between.
    Raced { actual: u64 },
    /// [`WriteError::Raced`] with the write it happened to.
    RacedOn {
        stream: String,
        expected: ExpectedVersion,
        actual: u64,
    },
    /// Anything else (including the plan refusing the batch).
    Store(StoreError),
}

impl From<StoreError> for WriteError {
    fn from(e: StoreError) -> Self {
        WriteError::Store(e)
    }
}

/// The error for a batch of which the first `committed` writes are stored.
fn partially_applied(committed: usize, writes: &[StreamWrite], cause: StoreError) -> StoreError {
    let stored: Vec<&str> = writes[..committed]
        .iter()
        .map(|w| w.stream.as_str())
        .collect();
    backend_error(format!(
        "multi-stream batch partially applied: writes 1-{committed} of {} are stored ({}); \
         write {} failed: {cause}. EventStoreDB has no multi-stream transactions; re-send the \
         same events (same ids) with ExpectedVersion::Any to complete the batch idempotently",
        writes.len(),
        stored.join(", "),
        committed + 1,
    ))
}

#[async_trait]
impl EventStore for EsdbStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            gapless_positions: false,
            atomic_multi_stream_batches: false,
            unique_event_ids_across_streams: false,
        }
    }

    async fn append_batch(
        &self,
        writes: Vec<StreamWrite>,
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        batch::check_writes(&writes)?;
        if let Some(e) = writes
            .iter()
            .flat_map(|w| &w.events)
            .find(|e| e.event_type().starts_with('$'))
        {
            return Err(backend_error(format!(
                "event type {:?} starts with '$', which EventStoreDB reserves for system events",
                e.event_type()
            )));
        }
        let mut done: Vec<AppendOutcome> = Vec::with_capacity(writes.len());
        let mut last_race = None;
        for _ in 0..MAX_ATTEMPTS {
            let before = done.len();
            match self.attempt(&writes[before..], &mut done).await {
                Ok(()) => return Ok(done),
                // Lost a race: re-read and re-plan what is not stored yet.
                // The plan turns it into WrongExpectedVersion if the caller's
                // expectation no longer holds.
                Err(WriteError::RacedOn {
                    stream,
                    expected,
                    actual,
                }) => {
                    last_race = Some(StoreError::WrongExpectedVersion {
                        stream,
                        expected,
                        actual,
                    })
                }
                Err(WriteError::Raced { .. }) => unreachable!("attempt names the stream"),
                Err(WriteError::Store(e)) if done.is_empty() => return Err(e),
                Err(WriteError::Store(e)) => return Err(partially_applied(done.len(), &writes, e)),
            }
        }
        let race = last_race.expect("only races loop");
        if done.is_empty() {
            Err(race)
        } else {
            Err(partially_applied(done.len(), &writes, race))
        }
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        options: ReadStream,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let backwards = options.direction == Direction::Backwards;
        let Some(start) = mapping::stream_read_start(backwards, options.from_version) else {
            return Ok(Vec::new());
        };
        if options.limit == 0 {
            return Ok(Vec::new());
        }
        let read = ReadStreamOptions::default()
            .position(start)
            .max_count(options.limit);
        let read = if backwards {
            read.backwards()
        } else {
            read.forwards()
        };
        self.read_server_stream(stream, read).await
    }

    async fn stream_head(&self, stream: &StreamId) -> Result<Option<StreamHead>, StoreError> {
        let last = self
            .read_stream(
                stream,
                ReadStream {
                    direction: Direction::Backwards,
                    from_version: None,
                    limit: 1,
                },
            )
            .await?;
        Ok(last.first().map(|e| StreamHead {
            version: e.version,
            hash: e.hash,
        }))
    }

    async fn read_all_page(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut page = Vec::new();
        if limit == 0 {
            return Ok(page);
        }
        let start = mapping::all_read_start(from);
        let mut position = start.start;
        let mut skip_through = start.skip_through;
        loop {
            let options = ReadAllOptions::default()
                .position(position)
                .forwards()
                .max_count(ALL_CHUNK);
            let mut read = self.client.read_all(&options).await.map_err(grpc_error)?;
            let mut seen = 0;
            while let Some(resolved) = read.next().await.map_err(grpc_error)? {
                seen += 1;
                let raw = resolved.get_original_event();
                if skip_through.is_some_and(|c| raw.position.commit <= c) {
                    continue;
                }
                skip_through = Some(raw.position.commit);
                position = StreamPosition::Position(raw.position);
                if let Some(event) = mapping::decode_event(&self.namespace, raw)? {
                    if event.position >= from {
                        page.push(event);
                        if page.len() == limit {
                            return Ok(page);
                        }
                    }
                }
            }
            if seen < ALL_CHUNK {
                return Ok(page);
            }
        }
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        let mut position = StreamPosition::End;
        loop {
            let options = ReadAllOptions::default()
                .position(position)
                .backwards()
                .max_count(ALL_CHUNK);
            let mut read = self.client.read_all(&options).await.map_err(grpc_error)?;
            let mut seen = 0;
            while let Some(resolved) = read.next().await.map_err(grpc_error)? {
                seen += 1;
                let raw = resolved.get_original_event();
                // Backward reads from a position exclude it.
                position = StreamPosition::Position(raw.position);
                if let Some(event) = mapping::decode_event(&self.namespace, raw)? {
                    return Ok(event.position);
                }
            }
            if seen < ALL_CHUNK {
                return Ok(0);
            }
        }
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let mut stats = StoreStats::default();
        let mut streams = HashSet::new();
        let mut types: HashMap<String, u64> = HashMap::new();
        let mut next = 0;
        loop {
            let page = self.read_all_page(next, ALL_CHUNK).await?;
            for e in &page {
                stats.events += 1;
                stats.head_position = e.position;
                streams.insert(e.stream_id.clone());
                *types.entry(e.event_type.clone()).or_default() += 1;
            }
            match page.last() {
                Some(last) if page.len() == ALL_CHUNK => next = last.position + 1,
                _ => break,
            }
        }
        stats.streams = streams.len() as u64;
        let mut types: Vec<(String, u64)> = types.into_iter().collect();
        types.sort();
        stats.event_types = types;
        Ok(stats)
    }

    async fn list_streams(
        &self,
        after: Option<&StreamId>,
        limit: usize,
    ) -> Result<Vec<StreamId>, StoreError> {
        let mut names = BTreeSet::new();
        let mut next = 0;
        loop {
            let page = self.read_all_page(next, ALL_CHUNK).await?;
            for e in &page {
                if after.is_none_or(|a| e.stream_id > *a) {
                    names.insert(e.stream_id.clone());
                }
            }
            match page.last() {
                Some(last) if page.len() == ALL_CHUNK => next = last.position + 1,
                _ => break,
            }
        }
        Ok(names.into_iter().take(limit).collect())
    }

    async fn wait_for_append(&self, after_position: u64) {
        let mut rx = self.head.subscribe();
        tokio::select! {
            _ = rx.wait_for(|h| *h > after_position) => {}
            _ = tokio::time::sleep(CROSS_PROCESS_POLL) => {}
        }
    }
}

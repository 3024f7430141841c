//! Group commit: appends that arrive while a commit is in flight share the
//! next transaction and its one durable flush.
//!
//! A durable commit costs a flush of the log, and on PostgreSQL it holds
//! the global position lock until it is done; committing each append alone
//! caps the store at one flush per append however many writers wait, and
//! more writers only queue longer (four writers were slower than one). The
//! committer is one task per store: it takes the first waiting request and
//! every request queued behind it (up to [`MAX_GROUP_EVENTS`]), commits them
//! as one transaction, answers each, and starts over. One group at a time: on
//! PostgreSQL a second group in flight only queued at the global lock and
//! split the crowd into smaller groups (measured slower at 4 and 16
//! writers). No timer: a group is whatever arrived
//! while the previous one committed (and whatever the appenders ready to
//! run add to it), so a lone writer pays no added wait and a crowd shares
//! each flush.
//!
//! Each request keeps its own rules (planned by [`super::batch::plan_group`]
//! as if committed one after another): a wrong expected version or a
//! conflicting id refuses that request alone. Should the database refuse the
//! group's transaction as a whole, its requests are committed one by one,
//! so no request fails for another's fault.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::batch::RequestResult;
use super::{StoreError, StreamWrite};

/// Events in one group, beyond which later requests wait for the next
/// (a request larger than this, an import batch, forms a group alone).
pub const MAX_GROUP_EVENTS: usize = 4_096;

/// Times the committer lets ready tasks run before closing a group.
const YIELDS_BEFORE_CLOSING: usize = 2;

/// Requests queued before appenders wait to enqueue.
const QUEUE: usize = 1_024;

/// A backend that commits a group of independent append requests in one
/// transaction.
#[async_trait]
pub(crate) trait CommitGroup: Send + Sync + 'static {
    /// Commits `group` in one transaction: one result per request, in
    /// order. `Err` means the transaction failed as a whole and nothing of
    /// the group is stored.
    async fn commit_group(
        &self,
        group: &[Vec<StreamWrite>],
    ) -> Result<Vec<RequestResult>, StoreError>;
}

struct Request {
    writes: Vec<StreamWrite>,
    reply: oneshot::Sender<RequestResult>,
}

/// The handle appenders send their requests through.
pub(crate) struct GroupCommitter {
    queue: mpsc::Sender<Request>,
}

impl GroupCommitter {
    /// Starts the committer task for `backend` (it ends when the handle is
    /// dropped and the queue is drained).
    pub fn start(backend: Arc<dyn CommitGroup>) -> Self {
        let (queue, requests) = mpsc::channel(QUEUE);
        tokio::spawn(run(backend, requests));
        Self { queue }
    }

    /// Commits `writes` with whatever else is waiting; resolves once they
    /// are durable (or refused).
    pub async fn append(&self, writes: Vec<StreamWrite>) -> RequestResult {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Request { writes, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

impl GroupCommitter {
    /// Starts a committer on an OS thread of its own, for a backend whose
    /// calls block (SQLite's C API): `body` sets the backend up on that
    /// thread and hands [`GroupQueue::serve`] its commit function.
    pub fn start_on_thread(
        name: &str,
        body: impl FnOnce(GroupQueue) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (queue, requests) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || body(GroupQueue { requests }))?;
        Ok(Self { queue })
    }
}

/// The receiving end of a committer running on its own thread.
pub(crate) struct GroupQueue {
    requests: mpsc::Receiver<Request>,
}

impl GroupQueue {
    /// Commits groups with `commit` until every handle is dropped, with
    /// the same grouping and one-by-one fallback as the async committer,
    /// answering each group as soon as its commit returns.
    pub fn serve(
        mut self,
        mut commit: impl FnMut(&[Vec<StreamWrite>]) -> Result<Vec<RequestResult>, StoreError>,
    ) {
        while let Some(first) = self.requests.blocking_recv() {
            let (writes, replies) = take_group(first, &mut self.requests);
            answer(replies, commit_or_split(&writes, &mut commit));
        }
    }

    /// As [`GroupQueue::serve`], for a `commit` that returns before its
    /// log write is on disk: groups are answered by a second thread once
    /// `flusher` has made them durable, while this one commits the next.
    /// One flush covers every group committed before it starts, so the
    /// wait for the disk overlaps the next group's work instead of adding
    /// to it. Should a flush fail, the groups it covered are answered with
    /// the failure, and every later append is refused: after a failed
    /// flush the kernel may have dropped the unwritten pages, so nothing
    /// this process acknowledges afterwards could be trusted.
    pub fn serve_flushed(
        mut self,
        mut commit: impl FnMut(&[Vec<StreamWrite>]) -> Result<Vec<RequestResult>, StoreError>,
        flusher: Flusher,
    ) {
        let failed = Arc::new(std::sync::OnceLock::<String>::new());
        let (to_flush, committed) = std::sync::mpsc::channel::<Answers>();
        let flushing = {
            let failed = failed.clone();
            std::thread::Builder::new()
                .name("journey-sqlite-flush".to_owned())
                .spawn(move || flusher.run(committed, &failed))
        };
        if let Err(e) = flushing {
            let why = format!("starting the flush thread: {e}");
            return self.refuse_all(|| StoreError::Backend {
                backend: "sqlite",
                message: why.clone(),
            });
        }
        while let Some(first) = self.requests.blocking_recv() {
            let (writes, replies) = take_group(first, &mut self.requests);
            if let Some(why) = failed.get() {
                answer(replies, unflushed(writes.len(), why));
                continue;
            }
            let results = commit_or_split(&writes, &mut commit);
            if let Err(lost) = to_flush.send((replies, results)) {
                let (replies, _) = lost.0;
                let why = "the flush thread stopped";
                answer(replies, unflushed(writes.len(), why));
            }
        }
    }

    /// Refuses every request with `why` (the backend could not start).
    pub fn refuse_all(mut self, why: impl Fn() -> StoreError) {
        while let Some(request) = self.requests.blocking_recv() {
            let _ = request.reply.send(Err(why()));
        }
    }
}

/// A committed group's replies and results, waiting for their flush.
type Answers = (Vec<oneshot::Sender<RequestResult>>, Vec<RequestResult>);

/// Makes committed groups durable before they are answered (see
/// [`GroupQueue::serve_flushed`]).
pub(crate) struct Flusher {
    /// Forces the log to disk (`fdatasync` of the WAL file).
    pub flush: Box<dyn FnMut() -> std::io::Result<()> + Send>,
    /// The last position committed, read before each flush: everything up
    /// to it is durable once the flush returns.
    pub committed: Arc<std::sync::atomic::AtomicU64>,
    /// Where durable positions are announced to subscribers.
    pub published: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Flusher {
    fn run(
        mut self,
        committed: std::sync::mpsc::Receiver<Answers>,
        failed: &std::sync::OnceLock<String>,
    ) {
        use std::sync::atomic::Ordering;
        while let Ok(first) = committed.recv() {
            let mut waiting = vec![first];
            waiting.extend(committed.try_iter());
            // Every group taken above returned from its commit before this
            // read, so the flush below covers it.
            let durable = self.committed.load(Ordering::Acquire);
            match failed
                .get()
                .map(|why| Err(why.clone()))
                .unwrap_or_else(|| (self.flush)().map_err(|e| e.to_string()))
            {
                Ok(()) => {
                    super::batch::advance_head(&self.published, durable);
                    for (replies, results) in waiting {
                        answer(replies, results);
                    }
                }
                Err(why) => {
                    tracing::error!(error = %why,
                        "flushing the event log failed; this process refuses appends from now on");
                    let _ = failed.set(why.clone());
                    for (replies, results) in waiting {
                        answer(replies, unflushed(results.len(), &why));
                    }
                }
            }
        }
    }
}

/// The answers to `requests` appends whose durability is unknown.
fn unflushed(requests: usize, why: &str) -> Vec<RequestResult> {
    let error = || StoreError::Backend {
        backend: "sqlite",
        message: format!(
            "the event log could not be flushed to disk ({why}); the append may or may not \
             be stored, and this process refuses appends until it is restarted"
        ),
    };
    (0..requests).map(|_| Err(error())).collect()
}

/// Commits a group; should its transaction fail as a whole, commits its
/// requests one by one.
fn commit_or_split(
    writes: &[Vec<StreamWrite>],
    commit: &mut impl FnMut(&[Vec<StreamWrite>]) -> Result<Vec<RequestResult>, StoreError>,
) -> Vec<RequestResult> {
    match commit(writes) {
        Ok(results) => results,
        Err(failed) => one_by_one(failed, writes, |one| commit(one)),
    }
}

/// The first request and every one queued behind it, up to
/// [`MAX_GROUP_EVENTS`].
fn take_group(
    first: Request,
    requests: &mut mpsc::Receiver<Request>,
) -> (Vec<Vec<StreamWrite>>, Vec<oneshot::Sender<RequestResult>>) {
    let mut events = events_in(&first.writes);
    let mut group = vec![first];
    while events < MAX_GROUP_EVENTS {
        match requests.try_recv() {
            Ok(next) => {
                events += events_in(&next.writes);
                group.push(next);
            }
            Err(_) => break,
        }
    }
    group.into_iter().map(|r| (r.writes, r.reply)).unzip()
}

/// The results of a group whose transaction failed as a whole: a lone
/// request gets the failure; otherwise each request is committed alone
/// with `commit`, so none fails for another's fault.
fn one_by_one(
    failed: StoreError,
    writes: &[Vec<StreamWrite>],
    mut commit: impl FnMut(&[Vec<StreamWrite>]) -> Result<Vec<RequestResult>, StoreError>,
) -> Vec<RequestResult> {
    if writes.len() == 1 {
        return vec![Err(failed)];
    }
    tracing::debug!(error = %failed, requests = writes.len(),
        "group commit failed; committing its requests one by one");
    writes
        .iter()
        .map(|one| alone(commit(std::slice::from_ref(one))))
        .collect()
}

/// A one-request group's result.
fn alone(outcome: Result<Vec<RequestResult>, StoreError>) -> RequestResult {
    outcome.and_then(|mut one| one.pop().expect("one request, one result"))
}

/// Answers each request of a group.
fn answer(replies: Vec<oneshot::Sender<RequestResult>>, results: Vec<RequestResult>) {
    for (reply, result) in replies.into_iter().zip(results) {
        // The appender may have gone (its caller cancelled): the events are
        // stored all the same, as when an acknowledgement is lost.
        let _ = reply.send(result);
    }
}

fn events_in(writes: &[StreamWrite]) -> usize {
    writes.iter().map(|w| w.events.len()).sum()
}

/// Takes groups off the queue and commits them one after another: what
/// queues while a group commits joins the next group.
async fn run(backend: Arc<dyn CommitGroup>, mut requests: mpsc::Receiver<Request>) {
    while let Some(first) = requests.recv().await {
        // The appenders the last group answered are ready to run; letting
        // them run first puts their next appends in this group rather than
        // the one after (without it, groups under steady load alternate
        // between full and nearly empty). Not a timer: only tasks already
        // ready run meanwhile.
        for _ in 0..YIELDS_BEFORE_CLOSING {
            tokio::task::yield_now().await;
        }
        let (writes, replies) = take_group(first, &mut requests);
        commit_and_answer(backend.as_ref(), writes, replies).await;
    }
}

/// Commits one group (one by one should it fail as a whole) and answers
/// its requests.
async fn commit_and_answer(
    backend: &dyn CommitGroup,
    writes: Vec<Vec<StreamWrite>>,
    replies: Vec<oneshot::Sender<RequestResult>>,
) {
    let results = match backend.commit_group(&writes).await {
        Ok(results) => results,
        Err(failed) if writes.len() == 1 => vec![Err(failed)],
        Err(failed) => {
            tracing::debug!(error = %failed, requests = writes.len(),
                "group commit failed; committing its requests one by one");
            let mut results = Vec::with_capacity(writes.len());
            for one in &writes {
                results.push(alone(backend.commit_group(std::slice::from_ref(one)).await));
            }
            results
        }
    };
    answer(replies, results);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    /// A committer whose commits always succeed (each bumps the committed
    /// position and the commit count), flushed by `flush`.
    fn flushed_committer(
        flush: impl FnMut() -> std::io::Result<()> + Send + 'static,
    ) -> (
        GroupCommitter,
        Arc<AtomicUsize>,
        Arc<tokio::sync::watch::Sender<u64>>,
    ) {
        let commits = Arc::new(AtomicUsize::new(0));
        let published = Arc::new(tokio::sync::watch::channel(0).0);
        let committed = Arc::new(AtomicU64::new(0));
        let flusher = Flusher {
            flush: Box::new(flush),
            committed: committed.clone(),
            published: published.clone(),
        };
        let counted = commits.clone();
        let committer = GroupCommitter::start_on_thread("test-commit", move |queue| {
            queue.serve_flushed(
                move |group| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    committed.fetch_add(group.len() as u64, Ordering::SeqCst);
                    Ok(group.iter().map(|_| Ok(Vec::new())).collect())
                },
                flusher,
            )
        })
        .unwrap();
        (committer, commits, published)
    }

    #[tokio::test]
    async fn an_append_is_answered_only_after_the_flush_that_covers_it() {
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = Mutex::new(released);
        let (committer, commits, published) = flushed_committer(move || {
            released.lock().unwrap().recv().unwrap();
            Ok(())
        });
        let committer = Arc::new(committer);
        let appending = tokio::spawn({
            let committer = committer.clone();
            async move { committer.append(Vec::new()).await }
        });
        // Committed but not flushed: no answer, and subscribers not told.
        while commits.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!appending.is_finished(), "answered before its flush");
        assert_eq!(*published.borrow(), 0);
        release.send(()).unwrap();
        appending.await.unwrap().unwrap();
        assert_eq!(*published.borrow(), 1);
    }

    #[tokio::test]
    async fn a_failed_flush_fails_its_appends_and_refuses_later_ones() {
        let (committer, commits, published) =
            flushed_committer(|| Err(std::io::Error::other("the disk is gone")));
        let first = committer.append(Vec::new()).await.unwrap_err().to_string();
        assert!(
            first.contains("could not be flushed") && first.contains("the disk is gone"),
            "{first}"
        );
        let second = committer.append(Vec::new()).await.unwrap_err().to_string();
        assert!(second.contains("refuses appends"), "{second}");
        // The refused append was never committed, and nothing was announced.
        assert_eq!(commits.load(Ordering::SeqCst), 1);
        assert_eq!(*published.borrow(), 0);
    }
}

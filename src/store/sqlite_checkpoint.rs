//! WAL checkpoints off the append path.
//!
//! SQLite copies the WAL back into the database file ("checkpoints") from
//! inside the commit that crosses `wal_autocheckpoint`: that append, and
//! every one queued behind it, waits while thousands of pages are written
//! and the file is flushed. With sixteen writers this was the whole p99
//! (0.8 ms median, 9–12 ms p99, the stalls one checkpoint apart), and the
//! committer's own time.
//!
//! Here a thread of its own, on its own connection, runs passive
//! checkpoints (which never block the writer) while the committer keeps
//! appending. A passive checkpoint only copies the frames that existed
//! when it began, so it is repeated until few frames are left; the
//! committer then copies those few itself between two groups, which lets
//! its next transaction start the WAL over from the beginning. Without
//! that last step the WAL never restarts (a checkpoint can never catch a
//! writer that does not pause), grows without bound, and every page lookup
//! gets slower (measured: the WAL reached 130 MB in 18 s and throughput
//! fell by a quarter).
//!
//! Should the checkpointer fall behind (the disk slower than the appends),
//! the committer waits for its pass to end and checkpoints inline once the
//! WAL is [`BEHIND_FRAMES`] long, as SQLite itself would: a stall then,
//! but a bounded WAL.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::sqlite_raw::{RawConnection, WalProgress};

/// WAL frames (pages) after which the checkpointer starts a round: 64 MiB
/// of WAL at 4 KiB pages. Each round ends with a flush of the database
/// file, and the WAL flushes that acknowledge appends wait behind it on
/// the disk; fewer, larger rounds make those waits rarer (past the 99th
/// percentile) and copy a hot index page back once for more commits.
/// Measured with `bench append --writers 16` (6 s, one run each): 1,000
/// frames 15.3k events/s, p99 6.9 ms; 4,000 17.2k, 7.0 ms; 16,000 19.3k–
/// 22.2k, 2.1–2.2 ms; 32,000 20.5k, 1.6 ms with a 135 MB WAL.
pub const START_FRAMES: u32 = 16_000;

/// Frames left over that the committer copies back itself.
const FINISH_FRAMES: u32 = 256;

/// Passes per round before the committer is asked to finish, so a
/// checkpointer that cannot catch up hands over instead of chasing.
const MAX_PASSES: u32 = 4;

/// WAL length, in rounds' worth of frames, at which the committer stops
/// waiting for the checkpointer.
const BEHIND: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the WAL to grow.
    Idle,
    /// A round was asked for and not yet begun.
    Requested,
    /// The checkpointer is copying frames back.
    Running,
    /// Few frames are left: the committer copies them and restarts the WAL.
    Finish,
    /// The committer is gone.
    Stopped,
}

/// What the committer and the checkpointer thread share.
pub(crate) struct Checkpoints {
    /// WAL frames after the committer's last commit (set by its WAL hook).
    frames: Arc<AtomicU32>,
    /// [`START_FRAMES`] (smaller in tests).
    start: u32,
    phase: Mutex<Phase>,
    changed: Condvar,
}

impl Checkpoints {
    /// A fresh state, with the counter the committer's WAL hook writes.
    pub fn new() -> Arc<Self> {
        Self::starting_at(START_FRAMES)
    }

    fn starting_at(start: u32) -> Arc<Self> {
        Arc::new(Self {
            frames: Arc::new(AtomicU32::new(0)),
            start,
            phase: Mutex::new(Phase::Idle),
            changed: Condvar::new(),
        })
    }

    /// The counter to install on the committer's connection
    /// ([`RawConnection::count_wal_frames`]).
    pub fn frame_counter(&self) -> Arc<AtomicU32> {
        self.frames.clone()
    }

    fn set(&self, phase: &mut Phase, to: Phase) {
        *phase = to;
        self.changed.notify_all();
    }

    /// Called by the committer after each group, outside any transaction:
    /// starts a round when the WAL is long enough, finishes one the
    /// checkpointer handed over, or checkpoints inline when it fell behind.
    pub fn after_commit(&self, committer: &RawConnection<'_>) {
        let frames = self.frames.load(Ordering::Acquire);
        let mut phase = self.phase.lock().expect("not poisoned");
        match *phase {
            Phase::Idle if frames >= self.start => self.set(&mut phase, Phase::Requested),
            Phase::Finish => {
                drop(phase);
                self.checkpoint_inline(committer);
            }
            Phase::Requested | Phase::Running if frames >= BEHIND * self.start => {
                tracing::debug!(frames, "the WAL checkpointer fell behind; waiting for it");
                while matches!(*phase, Phase::Requested | Phase::Running) {
                    phase = self.changed.wait(phase).expect("not poisoned");
                }
                drop(phase);
                self.checkpoint_inline(committer);
            }
            _ => {}
        }
    }

    /// Copies back what is left, so the next transaction restarts the WAL.
    fn checkpoint_inline(&self, committer: &RawConnection<'_>) {
        if let Err(e) = committer.checkpoint_passive() {
            tracing::debug!(error = %e, "inline checkpoint");
        }
        let mut phase = self.phase.lock().expect("not poisoned");
        if *phase != Phase::Stopped {
            self.set(&mut phase, Phase::Idle);
        }
    }

    /// A guard that ends the checkpointer thread when the committer's
    /// thread ends, however it ends.
    pub fn stop_when_dropped(self: &Arc<Self>) -> StopWhenDropped {
        StopWhenDropped(self.clone())
    }

    /// The checkpointer thread's loop, on its own connection.
    pub fn run(&self, conn: &RawConnection<'_>) {
        loop {
            {
                let mut phase = self.phase.lock().expect("not poisoned");
                while *phase != Phase::Requested {
                    if *phase == Phase::Stopped {
                        return;
                    }
                    phase = self.changed.wait(phase).expect("not poisoned");
                }
                self.set(&mut phase, Phase::Running);
            }
            self.round(conn);
            let mut phase = self.phase.lock().expect("not poisoned");
            if *phase == Phase::Running {
                self.set(&mut phase, Phase::Finish);
            }
        }
    }

    /// Passive checkpoints until few frames are left, no progress is
    /// made (a reader holds old frames), or [`MAX_PASSES`] are done.
    fn round(&self, conn: &RawConnection<'_>) {
        let mut last = None;
        for _ in 0..MAX_PASSES {
            match conn.checkpoint_passive() {
                Ok(progress) => {
                    let WalProgress { frames, backfilled } = progress;
                    if frames.saturating_sub(backfilled) <= FINISH_FRAMES || last == Some(progress)
                    {
                        return;
                    }
                    last = Some(progress);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "background checkpoint");
                    return;
                }
            }
        }
    }
}

/// Ends the checkpointer thread when dropped (see
/// [`Checkpoints::stop_when_dropped`]).
pub(crate) struct StopWhenDropped(Arc<Checkpoints>);

impl Drop for StopWhenDropped {
    fn drop(&mut self) {
        if let Ok(mut phase) = self.0.phase.lock() {
            self.0.set(&mut phase, Phase::Stopped);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
    use sqlx::ConnectOptions;

    /// A writer that never pauses still gets its WAL restarted: the file
    /// stays a few rounds long however much is written, and every row is
    /// there at the end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_restarts_under_a_writer_that_never_pauses() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wal.db");
        let options = SqliteConnectOptions::new()
            .filename(&file)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let mut writer = options.connect().await.unwrap();
        let mut checkpointer = options.connect().await.unwrap();
        const START: u32 = 64;
        const ROWS: i64 = 3_000;
        let checkpoints = Checkpoints::starting_at(START);
        let shared = checkpoints.clone();
        let background = std::thread::spawn(move || {
            let raw = RawConnection::lock(&mut checkpointer).unwrap();
            shared.run(&raw);
        });
        let largest_wal = {
            let checkpoints = checkpoints.clone();
            let file = file.clone();
            tokio::task::spawn_blocking(move || {
                let _stop = checkpoints.stop_when_dropped();
                let mut raw = RawConnection::lock(&mut writer).unwrap();
                raw.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
                    .unwrap();
                raw.count_wal_frames(checkpoints.frame_counter());
                let mut insert = raw
                    .prepare("INSERT INTO t (id, body) VALUES (?1, zeroblob(3000))")
                    .unwrap();
                let wal = file.with_extension("db-wal");
                let mut largest = 0;
                for id in 1..=ROWS {
                    insert
                        .bind(1, super::super::sqlite_raw::Bind::Int(id))
                        .unwrap();
                    insert.execute().unwrap();
                    checkpoints.after_commit(&raw);
                    largest = largest.max(std::fs::metadata(&wal).unwrap().len());
                }
                drop(insert);
                let n = raw
                    .prepare("SELECT COUNT(*) FROM t")
                    .unwrap()
                    .next_row()
                    .unwrap()
                    .unwrap()
                    .int(0);
                (largest, n)
            })
            .await
            .unwrap()
        };
        background.join().unwrap();
        let (largest, rows) = largest_wal;
        assert_eq!(rows, ROWS);
        // Each row is a commit of a page or two: without restarts the WAL
        // would hold all ~3,000+ frames (12 MB and more).
        let page_frame = 4096 + 24;
        let bound = u64::from((BEHIND + 2) * START + FINISH_FRAMES) * page_frame;
        assert!(
            largest <= bound,
            "the WAL reached {largest} bytes, more than {bound}: it did not restart"
        );
    }
}

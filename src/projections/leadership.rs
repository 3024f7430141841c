//! One projector, many readers: which server maintains the read models.
//!
//! Several `journey serve` replicas share one read-model database. If each
//! folded the log into the active version, they would write every history
//! row twice and race on the checkpoint; so at most one of them — the
//! *projector* — runs the live follower and deadline ticks, and the others
//! answer queries from what it writes.
//!
//! The role is a lock the operating system or the database releases when
//! its holder dies, so a successor can take over within a poll interval of
//! a `kill -9`, without leases to renew:
//! - PostgreSQL: a session advisory lock on a connection of its own
//!   (released when the session ends, also when the process dies);
//! - SQLite: an exclusive lock on a file beside the database
//!   (`<file>-projector.lock`; released when the file is closed, also when
//!   the process dies).
//!
//! A lock alone does not stop a projector that *believes* it still holds
//! the role (a PostgreSQL session dropped by the network, a paused process)
//! from committing one more batch over its successor's. So each new
//! projector takes a *fencing epoch* (`projector_fence.epoch + 1`), and
//! every batch it commits checks the epoch inside its transaction
//! ([`super::storage::BatchWrite::fence`]): a stale projector's batch fails
//! with [`StorageError::Fenced`] and changes nothing.

use std::time::Duration;

use sqlx::Connection;

use super::storage::{both, ReadModelDb, StorageError};

/// How often a reader tries to become the projector (and the projector
/// checks that it still is): a successor takes over within this of its
/// predecessor's death.
pub const POLL: Duration = Duration::from_secs(1);

/// The advisory-lock key of the projector role ("journey" in ASCII).
const ADVISORY_KEY: i64 = 0x6a6f75726e6579;

/// The held role. Dropping it gives the role up.
pub enum ProjectorLock {
    /// The locked file beside an SQLite database.
    File(std::fs::File),
    /// The session holding the advisory lock.
    Session(sqlx::PgConnection),
    /// An in-memory SQLite database: no other process can share it.
    Alone,
}

impl std::fmt::Debug for ProjectorLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProjectorLock::File(_) => "ProjectorLock::File",
            ProjectorLock::Session(_) => "ProjectorLock::Session",
            ProjectorLock::Alone => "ProjectorLock::Alone",
        })
    }
}

impl ProjectorLock {
    /// Takes the projector role if no other process holds it.
    pub async fn try_acquire(db: &ReadModelDb) -> Result<Option<Self>, StorageError> {
        match db {
            ReadModelDb::Sqlite(pool) => {
                let file = pool.connect_options().get_filename().to_owned();
                if file.as_os_str().is_empty() || file.to_string_lossy().contains(":memory:") {
                    return Ok(Some(ProjectorLock::Alone));
                }
                let mut path = file.into_os_string();
                path.push("-projector.lock");
                let lock = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                    .map_err(|e| {
                        StorageError::Task(format!(
                            "opening the projector lock file {}: {e}",
                            std::path::Path::new(&path).display()
                        ))
                    })?;
                if try_lock_exclusive(&lock).map_err(|e| {
                    StorageError::Task(format!(
                        "locking {}: {e}",
                        std::path::Path::new(&path).display()
                    ))
                })? {
                    Ok(Some(ProjectorLock::File(lock)))
                } else {
                    Ok(None)
                }
            }
            ReadModelDb::Postgres(pool) => {
                let mut session = pool.acquire().await?.detach();
                let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(ADVISORY_KEY)
                    .fetch_one(&mut session)
                    .await?;
                if locked {
                    Ok(Some(ProjectorLock::Session(session)))
                } else {
                    let _ = session.close().await;
                    Ok(None)
                }
            }
        }
    }

    /// Whether the role is still held: a file lock is held until closed;
    /// an advisory lock as long as its session answers.
    pub async fn still_held(&mut self) -> bool {
        match self {
            ProjectorLock::File(_) | ProjectorLock::Alone => true,
            ProjectorLock::Session(session) => tokio::time::timeout(POLL, session.ping())
                .await
                .is_ok_and(|pinged| pinged.is_ok()),
        }
    }
}

impl ReadModelDb {
    /// Takes the next fencing epoch for a new projector (`holder` says who,
    /// for operators); batches committed under an older epoch fail from now on.
    pub async fn take_fence(&self, holder: &str) -> Result<i64, StorageError> {
        let now_us = chrono::Utc::now().timestamp_micros();
        Ok(both!(self, pool => {
            sqlx::query_scalar::<_, i64>(
                "UPDATE projector_fence SET epoch = epoch + 1, holder = $1, since_us = $2 \
                 WHERE id = 1 RETURNING epoch",
            )
            .bind(holder)
            .bind(now_us)
            .fetch_one(pool)
            .await?
        }))
    }

    /// The current fencing epoch (the projector's, while there is one).
    pub async fn fence_epoch(&self) -> Result<i64, StorageError> {
        Ok(both!(self, pool => {
            sqlx::query_scalar("SELECT epoch FROM projector_fence WHERE id = 1")
                .fetch_one(pool)
                .await?
        }))
    }
}

/// An exclusive, non-blocking `flock` on `file`: `Ok(false)` when another
/// open file description holds it. The kernel releases it when the file is
/// closed, also when the process dies.
#[cfg(unix)]
fn try_lock_exclusive(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a file descriptor this `File` owns for the call.
    let code = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if code == 0 {
        return Ok(true);
    }
    let error = std::io::Error::last_os_error();
    if error.kind() == std::io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(error)
    }
}

/// Without `flock`, a server assumes it is the only one on its SQLite file.
#[cfg(not(unix))]
fn try_lock_exclusive(_file: &std::fs::File) -> std::io::Result<bool> {
    Ok(true)
}

/// This process's name in `projector_fence.holder`: host and process id.
pub fn holder_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    format!("{host}:{}", std::process::id())
}

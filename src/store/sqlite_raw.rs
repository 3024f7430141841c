//! SQLite's C API for bulk work, on a connection sqlx opened.
//!
//! sqlx runs every SQLite connection on a worker thread and hands each row
//! across a channel as owned values: about 8 µs per event row here, where a
//! prepared statement stepped in place takes about 1 µs (a full scan of
//! CDNOW ×10: 125k rows/s through sqlx, 970k rows/s stepped directly, both
//! decoding every payload). Rebuilds read and write millions of rows, so
//! they take the connection's handle from sqlx
//! ([`sqlx::sqlite::SqliteConnection::lock_handle`], meant for this) and
//! step prepared statements on it from a blocking thread. Everything else
//! (appends, queries, migrations) stays on sqlx.
//!
//! The `unsafe` is confined here: [`RawConnection`] owns the locked handle,
//! [`Statement`] borrows the connection, and a row's text borrows the
//! statement until the next step, so no pointer outlives what it points to.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use libsqlite3_sys as ffi;
use sqlx::sqlite::{LockedSqliteHandle, SqliteConnection};

/// Makes SQLite allocate through the process's global allocator instead of
/// the C library's `malloc`. Call once at the start of `main`, before any
/// connection opens (SQLite accepts it only before it initializes; false
/// when it was too late and SQLite keeps `malloc`).
///
/// Why: SQLite's page caches are most of a rebuild's heap (up to 64 MiB
/// per connection), and each connection lives on its own thread. glibc gives
/// each thread an arena and keeps what a closed connection freed there, so
/// a million-customer rebuild peaked at 470–482 MB resident against about
/// 210 MB of live heap. The global allocator (mimalloc in the binary)
/// reuses and returns freed pages across threads.
pub fn allocate_through_global_allocator() -> bool {
    let methods = ffi::sqlite3_mem_methods {
        xMalloc: Some(sqlite_malloc),
        xFree: Some(sqlite_free),
        xRealloc: Some(sqlite_realloc),
        xSize: Some(sqlite_size),
        xRoundup: Some(sqlite_roundup),
        xInit: Some(sqlite_mem_init),
        xShutdown: Some(sqlite_mem_shutdown),
        pAppData: std::ptr::null_mut(),
    };
    // SAFETY: SQLITE_CONFIG_MALLOC copies the methods it is pointed at
    // (functions that live as long as the process), and refuses (MISUSE)
    // once initialized instead of switching allocators under live memory.
    let code = unsafe {
        ffi::sqlite3_config(
            ffi::SQLITE_CONFIG_MALLOC,
            &methods as *const ffi::sqlite3_mem_methods,
        )
    };
    if code != ffi::SQLITE_OK {
        return false;
    }
    // Nothing reads SQLite's process-wide memory statistics, and keeping
    // them takes a global mutex around every allocation: 9 % of the
    // rebuild writer's samples were that mutex (CDNOW ×10, `perf`).
    // SAFETY: a plain integer option, set before SQLite initializes.
    let code = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_MEMSTATUS, 0 as c_int) };
    code == ffi::SQLITE_OK
}

/// Each block SQLite gets starts with a header holding its size: SQLite
/// asks for a block's size (`xSize`), and Rust's allocator needs it to
/// free. Eight bytes keep SQLite's 8-byte alignment.
const HEADER: usize = 8;

fn block_layout(size: usize) -> Option<std::alloc::Layout> {
    std::alloc::Layout::from_size_align(size.checked_add(HEADER)?, HEADER).ok()
}

unsafe extern "C" fn sqlite_malloc(size: c_int) -> *mut c_void {
    let Some(layout) = usize::try_from(size).ok().and_then(block_layout) else {
        return std::ptr::null_mut();
    };
    // SAFETY: the layout's size is at least HEADER (non-zero).
    let block = unsafe { std::alloc::alloc(layout) };
    if block.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: the block holds HEADER bytes before what SQLite gets, aligned
    // for a usize.
    unsafe {
        block.cast::<usize>().write(layout.size() - HEADER);
        block.add(HEADER).cast()
    }
}

/// The start of a block SQLite holds `p` into, and its layout.
///
/// # Safety
/// `p` must come from [`sqlite_malloc`] or [`sqlite_realloc`].
unsafe fn block_of(p: *mut c_void) -> (*mut u8, std::alloc::Layout) {
    // SAFETY: per the contract, HEADER bytes before `p` hold the size.
    unsafe {
        let block = p.cast::<u8>().sub(HEADER);
        let size = block.cast::<usize>().read();
        let layout = std::alloc::Layout::from_size_align_unchecked(size + HEADER, HEADER);
        (block, layout)
    }
}

unsafe extern "C" fn sqlite_free(p: *mut c_void) {
    if p.is_null() {
        return;
    }
    // SAFETY: SQLite frees only what its xMalloc/xRealloc returned.
    unsafe {
        let (block, layout) = block_of(p);
        std::alloc::dealloc(block, layout);
    }
}

unsafe extern "C" fn sqlite_realloc(p: *mut c_void, size: c_int) -> *mut c_void {
    if p.is_null() {
        // SAFETY: same contract as xMalloc.
        return unsafe { sqlite_malloc(size) };
    }
    let Some(new_layout) = usize::try_from(size).ok().and_then(block_layout) else {
        return std::ptr::null_mut();
    };
    // SAFETY: `p` came from this allocator (SQLite's contract); the new
    // size is non-zero and fits a layout; on failure the old block stands.
    unsafe {
        let (block, layout) = block_of(p);
        let moved = std::alloc::realloc(block, layout, new_layout.size());
        if moved.is_null() {
            return std::ptr::null_mut();
        }
        moved.cast::<usize>().write(new_layout.size() - HEADER);
        moved.add(HEADER).cast()
    }
}

unsafe extern "C" fn sqlite_size(p: *mut c_void) -> c_int {
    if p.is_null() {
        return 0;
    }
    // SAFETY: SQLite asks only about blocks it got from this allocator.
    let (_, layout) = unsafe { block_of(p) };
    c_int::try_from(layout.size() - HEADER).unwrap_or(c_int::MAX)
}

unsafe extern "C" fn sqlite_roundup(size: c_int) -> c_int {
    size.saturating_add(7) & !7
}

unsafe extern "C" fn sqlite_mem_init(_: *mut c_void) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn sqlite_mem_shutdown(_: *mut c_void) {}

/// An SQLite error from the C API: the result code and SQLite's message.
#[derive(Debug, thiserror::Error)]
#[error("sqlite error {code} during {during}: {message}")]
pub struct RawError {
    /// SQLite's extended result code.
    pub code: c_int,
    /// What we were doing.
    pub during: String,
    /// SQLite's message.
    pub message: String,
}

fn error(db: *mut ffi::sqlite3, code: c_int, during: &str) -> RawError {
    // SAFETY: `db` is an open handle (callers hold the connection);
    // sqlite3_errmsg returns a NUL-terminated string owned by it.
    let message = unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(db)) }
        .to_string_lossy()
        .into_owned();
    RawError {
        code,
        during: during.to_owned(),
        message,
    }
}

/// A connection whose handle is locked away from sqlx's worker thread.
pub struct RawConnection<'c> {
    handle: NonNull<ffi::sqlite3>,
    /// The counter a WAL hook writes to, kept alive while it is installed.
    wal_frames: Option<Arc<AtomicU32>>,
    _guard: LockedSqliteHandle<'c>,
}

/// Where a checkpoint left the WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalProgress {
    /// Frames in the WAL.
    pub frames: u32,
    /// Frames copied back into the database file.
    pub backfilled: u32,
}

/// Stores the WAL's frame count after each commit (see
/// [`RawConnection::count_wal_frames`]).
extern "C" fn store_wal_frames(
    counter: *mut c_void,
    _db: *mut ffi::sqlite3,
    _schema: *const c_char,
    frames: c_int,
) -> c_int {
    // SAFETY: `counter` is the `Arc<AtomicU32>` the connection keeps alive
    // for as long as this hook is installed.
    let counter = unsafe { &*(counter as *const AtomicU32) };
    counter.store(frames.max(0) as u32, Ordering::Release);
    ffi::SQLITE_OK
}

// The handle is only used from the thread holding the `RawConnection`.
unsafe impl Send for RawConnection<'_> {}

impl<'c> RawConnection<'c> {
    /// Locks `conn`'s handle (blocking: call from a blocking thread).
    pub fn lock(conn: &'c mut SqliteConnection) -> Result<Self, sqlx::Error> {
        let mut guard = futures::executor::block_on(conn.lock_handle())?;
        let handle = guard.as_raw_handle();
        Ok(Self {
            handle,
            wal_frames: None,
            _guard: guard,
        })
    }

    /// After each commit, stores the number of frames in the WAL in
    /// `frames`. This replaces SQLite's automatic checkpoints on this
    /// connection (they are a WAL hook too): whoever counts checkpoints.
    pub fn count_wal_frames(&mut self, frames: Arc<AtomicU32>) {
        let context = Arc::as_ptr(&frames) as *mut c_void;
        // SAFETY: valid handle; `context` stays valid while `self` holds
        // the Arc, and `Drop` removes the hook before letting it go.
        unsafe {
            ffi::sqlite3_wal_hook(self.db(), Some(store_wal_frames), context);
        }
        self.wal_frames = Some(frames);
    }

    /// A passive checkpoint: copies back what WAL frames it can without
    /// waiting for anyone (writers go on appending meanwhile).
    pub fn checkpoint_passive(&self) -> Result<WalProgress, RawError> {
        let (mut frames, mut backfilled) = (0, 0);
        // SAFETY: valid handle; "main" is NUL-terminated; the out-pointers
        // are live locals.
        let code = unsafe {
            ffi::sqlite3_wal_checkpoint_v2(
                self.db(),
                c"main".as_ptr(),
                ffi::SQLITE_CHECKPOINT_PASSIVE,
                &mut frames,
                &mut backfilled,
            )
        };
        if code != ffi::SQLITE_OK {
            return Err(self.error(code, "a passive checkpoint"));
        }
        Ok(WalProgress {
            frames: frames.max(0) as u32,
            backfilled: backfilled.max(0) as u32,
        })
    }

    /// Bytes of heap the connection's page cache holds now (SQLite's
    /// `SQLITE_DBSTATUS_CACHE_USED`, which keeps no high-water mark).
    pub fn cache_used_bytes(&self) -> i64 {
        let (mut current, mut highwater) = (0, 0);
        // SAFETY: valid handle; the out-pointers are live locals.
        unsafe {
            ffi::sqlite3_db_status(
                self.db(),
                ffi::SQLITE_DBSTATUS_CACHE_USED,
                &mut current,
                &mut highwater,
                0,
            );
        }
        i64::from(current)
    }

    fn db(&self) -> *mut ffi::sqlite3 {
        self.handle.as_ptr()
    }

    fn error(&self, code: c_int, during: &str) -> RawError {
        error(self.db(), code, during)
    }

    /// Runs statements without results (`BEGIN`, `COMMIT`, pragmas).
    pub fn execute(&self, sql: &str) -> Result<(), RawError> {
        let text = CString::new(sql).map_err(|e| RawError {
            code: ffi::SQLITE_MISUSE,
            during: sql.to_owned(),
            message: e.to_string(),
        })?;
        // SAFETY: valid handle and NUL-terminated SQL; no callback.
        let code = unsafe {
            ffi::sqlite3_exec(
                self.db(),
                text.as_ptr(),
                None,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if code == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(self.error(code, sql))
        }
    }

    /// Prepares one statement.
    pub fn prepare(&self, sql: &str) -> Result<Statement<'_>, RawError> {
        let mut stmt = std::ptr::null_mut();
        // SAFETY: valid handle; the SQL length is passed, so no NUL is needed.
        let code = unsafe {
            ffi::sqlite3_prepare_v3(
                self.db(),
                sql.as_ptr() as *const c_char,
                sql.len() as c_int,
                ffi::SQLITE_PREPARE_PERSISTENT,
                &mut stmt,
                std::ptr::null_mut(),
            )
        };
        if code != ffi::SQLITE_OK || stmt.is_null() {
            return Err(self.error(code, sql));
        }
        Ok(Statement {
            stmt,
            db: self.db(),
            sql: sql.to_owned(),
            _conn: PhantomData,
        })
    }
}

/// A prepared statement of a [`RawConnection`].
pub struct Statement<'c> {
    stmt: *mut ffi::sqlite3_stmt,
    db: *mut ffi::sqlite3,
    sql: String,
    /// Borrows the connection (and is neither `Send` nor `Sync`, as the
    /// raw pointers say).
    _conn: PhantomData<&'c ()>,
}

impl Drop for RawConnection<'_> {
    fn drop(&mut self) {
        if self.wal_frames.is_some() {
            // SAFETY: valid handle; removes the hook before its counter goes.
            unsafe {
                ffi::sqlite3_wal_hook(self.db(), None, std::ptr::null_mut());
            }
        }
    }
}

impl Drop for Statement<'_> {
    fn drop(&mut self) {
        // SAFETY: the statement was prepared on a connection that outlives it.
        unsafe {
            ffi::sqlite3_finalize(self.stmt);
        }
    }
}

/// A value to bind. Text and blobs are copied by SQLite at bind time, so
/// the caller's buffers need not outlive the call.
#[derive(Debug, Clone, Copy)]
pub enum Bind<'a> {
    /// 64-bit integer.
    Int(i64),
    /// Double.
    Real(f64),
    /// UTF-8 text.
    Text(&'a str),
    /// Bytes.
    Blob(&'a [u8]),
    /// NULL.
    Null,
}

impl<'c> Statement<'c> {
    fn check(&self, code: c_int) -> Result<(), RawError> {
        if code == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(error(self.db, code, &self.sql))
        }
    }

    /// Binds parameter `index` (1-based).
    pub fn bind(&mut self, index: usize, value: Bind<'_>) -> Result<(), RawError> {
        // SAFETY: SQLITE_TRANSIENT makes SQLite copy text and blobs before
        // returning, so `value` need not outlive this call.
        unsafe { self.bind_with(index, value, ffi::SQLITE_TRANSIENT()) }
    }

    /// Binds parameter `index` (1-based), text and blobs with `destructor`.
    ///
    /// # Safety
    /// With `SQLITE_STATIC`, `value`'s buffers must stay valid until the
    /// binding is cleared or replaced.
    unsafe fn bind_with(
        &mut self,
        index: usize,
        value: Bind<'_>,
        destructor: ffi::sqlite3_destructor_type,
    ) -> Result<(), RawError> {
        let (stmt, i) = (self.stmt, index as c_int);
        // SAFETY: a live statement; the caller answers for the buffers.
        let code = unsafe {
            match value {
                Bind::Int(v) => ffi::sqlite3_bind_int64(stmt, i, v),
                Bind::Real(v) => ffi::sqlite3_bind_double(stmt, i, v),
                Bind::Text(v) => ffi::sqlite3_bind_text(
                    stmt,
                    i,
                    v.as_ptr() as *const c_char,
                    v.len() as c_int,
                    destructor,
                ),
                Bind::Blob(v) => ffi::sqlite3_bind_blob(
                    stmt,
                    i,
                    v.as_ptr() as *const std::ffi::c_void,
                    v.len() as c_int,
                    destructor,
                ),
                Bind::Null => ffi::sqlite3_bind_null(stmt, i),
            }
        };
        self.check(code)
    }

    /// Binds borrowed values without copying them, runs the statement
    /// (which returns no rows) and resets it.
    ///
    /// [`Statement::bind`] has SQLite copy every text and blob, since its
    /// buffers may be gone by the time the statement runs; for a bulk
    /// writer those copies are a large share of the work. Here `bind`
    /// binds values that outlive this call, and the bindings are cleared
    /// before it returns, so SQLite never holds a pointer past the borrow.
    pub fn execute_borrowing<'b, E: From<RawError>>(
        &mut self,
        bind: impl FnOnce(&mut BorrowedBinds<'_, 'c, 'b>) -> Result<(), E>,
    ) -> Result<(), E> {
        /// Clears the bindings however the call ends, a panic in `bind`
        /// included, so the statement holds no borrowed pointer after it.
        struct ClearBindings(*mut ffi::sqlite3_stmt);
        impl Drop for ClearBindings {
            fn drop(&mut self) {
                // SAFETY: the statement outlives this guard.
                unsafe { ffi::sqlite3_clear_bindings(self.0) };
            }
        }
        let _clear = ClearBindings(self.stmt);
        bind(&mut BorrowedBinds {
            statement: self,
            _values: PhantomData,
        })?;
        self.execute().map_err(E::from)
    }

    /// Runs a statement that returns no rows (after binding), then resets it.
    pub fn execute(&mut self) -> Result<(), RawError> {
        // SAFETY: a live statement.
        let code = unsafe { ffi::sqlite3_step(self.stmt) };
        // SAFETY: as above; reset keeps the bindings, which the next call
        // overwrites.
        unsafe { ffi::sqlite3_reset(self.stmt) };
        if code == ffi::SQLITE_DONE || code == ffi::SQLITE_ROW {
            Ok(())
        } else {
            Err(error(self.db, code, &self.sql))
        }
    }

    /// Resets a statement stopped before its last row (ending its read
    /// transaction when the connection is in autocommit mode).
    pub fn reset(&mut self) {
        // SAFETY: a live statement.
        unsafe { ffi::sqlite3_reset(self.stmt) };
    }

    /// Steps to the next row; `None` at the end (the statement is then
    /// reset, ready to be bound and run again).
    pub fn next_row(&mut self) -> Result<Option<RawRow<'_>>, RawError> {
        // SAFETY: a live statement.
        let code = unsafe { ffi::sqlite3_step(self.stmt) };
        match code {
            ffi::SQLITE_ROW => Ok(Some(RawRow { stmt: self })),
            ffi::SQLITE_DONE => {
                // SAFETY: a live statement.
                unsafe { ffi::sqlite3_reset(self.stmt) };
                Ok(None)
            }
            code => {
                // SAFETY: a live statement.
                unsafe { ffi::sqlite3_reset(self.stmt) };
                Err(error(self.db, code, &self.sql))
            }
        }
    }
}

/// Binds values that outlive one [`Statement::execute_borrowing`] call,
/// without copying them.
pub struct BorrowedBinds<'s, 'c, 'b> {
    statement: &'s mut Statement<'c>,
    _values: PhantomData<&'b ()>,
}

impl<'b> BorrowedBinds<'_, '_, 'b> {
    /// Binds parameter `index` (1-based) to a value borrowed for `'b`.
    pub fn bind(&mut self, index: usize, value: Bind<'b>) -> Result<(), RawError> {
        // SAFETY: SQLITE_STATIC lets SQLite read the caller's buffers in
        // place; they outlive the statement's run, because
        // `execute_borrowing` clears the bindings before `'b` can end.
        unsafe { self.statement.bind_with(index, value, ffi::SQLITE_STATIC()) }
    }
}

/// The current row of a stepping [`Statement`]; its text and blobs are
/// valid until the statement steps again.
pub struct RawRow<'s> {
    stmt: &'s Statement<'s>,
}

impl<'s> RawRow<'s> {
    /// Integer column `i` (0-based); NULL reads as 0.
    pub fn int(&self, i: usize) -> i64 {
        // SAFETY: a statement positioned on a row.
        unsafe { ffi::sqlite3_column_int64(self.stmt.stmt, i as c_int) }
    }

    /// Whether column `i` is NULL.
    pub fn is_null(&self, i: usize) -> bool {
        // SAFETY: a statement positioned on a row.
        unsafe { ffi::sqlite3_column_type(self.stmt.stmt, i as c_int) == ffi::SQLITE_NULL }
    }

    /// Blob (or text) column `i` as bytes; NULL reads as empty.
    pub fn bytes(&self, i: usize) -> &'s [u8] {
        // SAFETY: a statement positioned on a row. sqlite3_column_blob
        // returns a pointer valid until the next step/reset/finalize, which
        // need `&mut Statement` while this row borrows it; bytes() is called
        // after blob() as SQLite documents.
        unsafe {
            let p = ffi::sqlite3_column_blob(self.stmt.stmt, i as c_int);
            let n = ffi::sqlite3_column_bytes(self.stmt.stmt, i as c_int);
            if p.is_null() || n <= 0 {
                &[]
            } else {
                std::slice::from_raw_parts(p as *const u8, n as usize)
            }
        }
    }

    /// Text column `i`; an error names the column when it is not UTF-8.
    pub fn text(&self, i: usize) -> Result<&'s str, std::str::Utf8Error> {
        // SAFETY: as `bytes`; sqlite3_column_text converts to UTF-8 text
        // (a no-op for TEXT stored as UTF-8) before the length is read.
        let bytes = unsafe {
            let p = ffi::sqlite3_column_text(self.stmt.stmt, i as c_int);
            let n = ffi::sqlite3_column_bytes(self.stmt.stmt, i as c_int);
            if p.is_null() || n <= 0 {
                &[][..]
            } else {
                std::slice::from_raw_parts(p, n as usize)
            }
        };
        std::str::from_utf8(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The allocator SQLite is given keeps each block's size, grows blocks
    /// without losing their bytes, and frees what it handed out.
    #[test]
    fn sqlite_blocks_remember_their_size_across_reallocation() {
        // SAFETY: every pointer comes from these functions and is freed once.
        unsafe {
            assert_eq!(sqlite_roundup(13), 16);
            assert_eq!(sqlite_size(std::ptr::null_mut()), 0);
            let p = sqlite_malloc(13);
            assert!(!p.is_null());
            assert_eq!(p as usize % 8, 0, "SQLite needs 8-byte alignment");
            assert_eq!(sqlite_size(p), 13);
            std::ptr::copy_nonoverlapping(b"page contents".as_ptr(), p.cast::<u8>(), 13);
            let grown = sqlite_realloc(p, 4096);
            assert_eq!(sqlite_size(grown), 4096);
            assert_eq!(
                std::slice::from_raw_parts(grown.cast::<u8>(), 13),
                b"page contents"
            );
            sqlite_free(grown);
            sqlite_free(std::ptr::null_mut());
            let fresh = sqlite_realloc(std::ptr::null_mut(), 8);
            assert_eq!(sqlite_size(fresh), 8);
            sqlite_free(fresh);
            assert!(sqlite_malloc(-1).is_null());
        }
    }

    /// Values bound in place are stored, and the statement does not keep
    /// them: run again without binding, it inserts NULLs, not whatever the
    /// freed buffer held.
    #[tokio::test]
    async fn borrowed_bindings_are_written_and_then_cleared() {
        use sqlx::Connection;
        let mut conn = SqliteConnection::connect("sqlite::memory:").await.unwrap();
        let raw = RawConnection::lock(&mut conn).unwrap();
        raw.execute("CREATE TABLE t (name TEXT, bytes BLOB)")
            .unwrap();
        let mut insert = raw.prepare("INSERT INTO t VALUES (?1, ?2)").unwrap();
        let name = String::from("borrowed name");
        let bytes = vec![7u8; 40];
        insert
            .execute_borrowing(|binds| {
                binds.bind(1, Bind::Text(&name))?;
                binds.bind(2, Bind::Blob(&bytes))?;
                Ok::<_, RawError>(())
            })
            .unwrap();
        drop((name, bytes));
        insert.execute().unwrap();
        let mut select = raw
            .prepare("SELECT name, length(bytes) FROM t ORDER BY rowid")
            .unwrap();
        {
            let first = select.next_row().unwrap().unwrap();
            assert_eq!(first.text(0).unwrap(), "borrowed name");
            assert_eq!(first.int(1), 40);
        }
        let second = select.next_row().unwrap().unwrap();
        assert!(second.is_null(0) && second.is_null(1));
    }
}

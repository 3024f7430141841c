//! The SQLite committer: group commits on a thread of its own, stepping
//! prepared statements through SQLite's C API.
//!
//! Through sqlx every statement crosses to the connection's worker thread
//! and back; a group commit of single-event appends is seven statements,
//! so with sixteen writers the process spent 36 % of its time in futex
//! calls and 23 % switching threads, and SQLite itself 28 %. Here the
//! committer thread owns its connection: one handoff in (the queue), one
//! out (each reply), and the statements in between are plain calls.
//!
//! Every group looks its event ids up first (one index probe each, cheap
//! when stepped in place) instead of trying an insert under a savepoint:
//! the plan is then final, and a retry costs nothing extra.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;
use uuid::Uuid;

use super::batch::{self, RequestResult};
use super::sqlite_raw::{Bind, RawConnection, RawError, RawRow, Statement};
use super::{StoreError, StreamHead, StreamWrite};
use crate::domain::{EventHash, RecordedEvent, StreamId};

fn raw(e: RawError) -> StoreError {
    StoreError::Backend {
        backend: "sqlite",
        message: e.to_string(),
    }
}

/// Prepared statements of the committer's connection.
pub(crate) struct Appender<'a, 'c> {
    conn: &'a RawConnection<'c>,
    head_of: Statement<'a>,
    last_position: Statement<'a>,
    stored: Statement<'a>,
    insert: Statement<'a>,
    move_head: Statement<'a>,
    committed: Arc<AtomicU64>,
    published: Option<Arc<watch::Sender<u64>>>,
}

impl<'a, 'c> Appender<'a, 'c> {
    /// Prepares the statements on `conn`. The last committed position is
    /// kept in `committed`; with `published`, subscribers are told at once
    /// (when commits are durable as they return), otherwise whoever makes
    /// them durable tells them.
    pub fn prepare(
        conn: &'a RawConnection<'c>,
        committed: Arc<AtomicU64>,
        published: Option<Arc<watch::Sender<u64>>>,
    ) -> Result<Self, StoreError> {
        let columns = super::sqlite::COLUMNS;
        Ok(Self {
            conn,
            head_of: conn
                .prepare("SELECT version, head_hash FROM streams WHERE stream_id = ?1")
                .map_err(raw)?,
            last_position: conn
                .prepare("SELECT COALESCE(MAX(position), 0) FROM events")
                .map_err(raw)?,
            stored: conn
                .prepare(&format!("SELECT {columns} FROM events WHERE event_id = ?1"))
                .map_err(raw)?,
            insert: conn
                .prepare(&format!(
                    "INSERT INTO events ({columns}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                ))
                .map_err(raw)?,
            move_head: conn
                .prepare(
                    "INSERT INTO streams (stream_id, version, head_hash) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, \
                     head_hash = excluded.head_hash",
                )
                .map_err(raw)?,
            committed,
            published,
        })
    }

    /// Commits a group in one `BEGIN IMMEDIATE` transaction; on any failure
    /// it is rolled back whole.
    pub fn commit_group(
        &mut self,
        group: &[Vec<StreamWrite>],
    ) -> Result<Vec<RequestResult>, StoreError> {
        self.conn.execute("BEGIN IMMEDIATE").map_err(raw)?;
        match self.write(group) {
            Ok((results, last)) => {
                if let Err(e) = self.conn.execute("COMMIT") {
                    let _ = self.conn.execute("ROLLBACK");
                    return Err(raw(e));
                }
                if let Some(last) = last {
                    self.committed.fetch_max(last, Ordering::Release);
                    if let Some(published) = &self.published {
                        batch::advance_head(published, last);
                    }
                }
                Ok(results)
            }
            Err(e) => {
                let _ = self.conn.execute("ROLLBACK");
                Err(e)
            }
        }
    }

    fn write(
        &mut self,
        group: &[Vec<StreamWrite>],
    ) -> Result<(Vec<RequestResult>, Option<u64>), StoreError> {
        let mut heads = HashMap::new();
        for stream in batch::streams_of(group.iter().flatten()) {
            self.head_of
                .bind(1, Bind::Text(stream.as_str()))
                .map_err(raw)?;
            if let Some(row) = self.head_of.next_row().map_err(raw)? {
                let version = row.int(0) as u64;
                let hash =
                    EventHash::from_slice(row.bytes(1)).map_err(|reason| StoreError::Corrupt {
                        position: 0,
                        reason: format!("head of {stream}: {reason}"),
                    })?;
                heads.insert(stream, StreamHead { version, hash });
            }
            self.head_of.reset();
        }
        let last_position = match self.last_position.next_row().map_err(raw)? {
            Some(row) => row.int(0) as u64,
            None => 0,
        };
        self.last_position.reset();
        let mut existing = HashMap::new();
        for id in batch::event_ids(group) {
            self.stored
                .bind(1, Bind::Blob(id.as_bytes()))
                .map_err(raw)?;
            if let Some(row) = self.stored.next_row().map_err(raw)? {
                existing.insert(id, recorded(&row)?);
            }
            self.stored.reset();
        }
        let recorded_at = batch::now_micros();
        let plan = batch::plan_group(group, &existing, &heads, last_position, recorded_at);
        let recorded_us = recorded_at.timestamp_micros();
        for row in &plan.rows {
            let s = &mut self.insert;
            s.bind(1, Bind::Int(row.position as i64)).map_err(raw)?;
            s.bind(2, Bind::Blob(row.event.event_id().as_bytes()))
                .map_err(raw)?;
            s.bind(3, Bind::Text(row.stream.as_str())).map_err(raw)?;
            s.bind(4, Bind::Int(row.version as i64)).map_err(raw)?;
            s.bind(5, Bind::Text(row.event.event_type())).map_err(raw)?;
            s.bind(6, Bind::Int(row.event.schema_version() as i64))
                .map_err(raw)?;
            s.bind(7, Bind::Int(row.event.occurred_at().timestamp_micros()))
                .map_err(raw)?;
            s.bind(8, Bind::Int(recorded_us)).map_err(raw)?;
            s.bind(9, Bind::Text(row.event.metadata_json()))
                .map_err(raw)?;
            s.bind(10, Bind::Text(row.event.payload_json()))
                .map_err(raw)?;
            s.bind(11, Bind::Blob(&row.hash.0)).map_err(raw)?;
            s.execute().map_err(raw)?;
        }
        for (stream, head) in &plan.heads {
            let s = &mut self.move_head;
            s.bind(1, Bind::Text(stream.as_str())).map_err(raw)?;
            s.bind(2, Bind::Int(head.version as i64)).map_err(raw)?;
            s.bind(3, Bind::Blob(&head.hash.0)).map_err(raw)?;
            s.execute().map_err(raw)?;
        }
        let last = plan.last_position();
        Ok((plan.results, last))
    }
}

/// A stored event read back on the committer's connection.
fn recorded(row: &RawRow<'_>) -> Result<RecordedEvent, StoreError> {
    let position = row.int(0) as u64;
    let corrupt = |reason: String| StoreError::Corrupt { position, reason };
    let text = |i: usize| {
        row.text(i)
            .map(str::to_owned)
            .map_err(|e| corrupt(format!("column {i}: {e}")))
    };
    let instant = |i: usize| {
        chrono::DateTime::from_timestamp_micros(row.int(i))
            .ok_or_else(|| corrupt(format!("column {i}: {} is no instant", row.int(i))))
    };
    Ok(RecordedEvent {
        event_id: Uuid::from_slice(row.bytes(1)).map_err(|e| corrupt(e.to_string()))?,
        stream_id: StreamId::from_trusted(text(2)?),
        version: row.int(3) as u64,
        position,
        event_type: text(4)?,
        schema_version: u32::try_from(row.int(5))
            .map_err(|_| corrupt(format!("schema_version {}", row.int(5))))?,
        occurred_at: instant(6)?,
        recorded_at: instant(7)?,
        metadata_json: text(8)?,
        payload_json: text(9)?,
        hash: EventHash::from_slice(row.bytes(10)).map_err(corrupt)?,
    })
}

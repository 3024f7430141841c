//! The ways events come in from outside the API: files and pipelines.
//!
//! Files: [`cdnow`] (the CDNOW purchase files of Fader & Hardie), [`jsonl`]
//! (one event per line) and [`cloudevents`] (one structured CloudEvent per
//! line). They derive event ids deterministically from the content, so
//! importing a file twice stores it once, and stop at the first bad line
//! with `file:line: reason`, storing nothing of the batch that line belongs
//! to.
//!
//! Pipelines: [`segment`] (the Segment/RudderStack tracking API, mapped by
//! [`mapping`] tables) and [`cloudevents`] over HTTP; both convert messages
//! to [`ingest::Incoming`] and store them with [`ingest::Ingestor`], which
//! answers per message (accepted, duplicate, held, refused and why).
//! Every way in decodes payloads with the one
//! [`crate::domain::DomainEvent::from_json`].

pub mod cdnow;
pub mod cloudevents;
pub mod held;
pub mod ingest;
pub mod jsonl;
pub mod mapping;
pub mod segment;

use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use thiserror::Error;
use uuid::Uuid;

use crate::domain::{NewEvent, StreamId, ValidationError};
use crate::privacy::vault::has_plaintext_personal_data;
use crate::privacy::Vault;
use crate::store::{EventStore, ExpectedVersion, StoreError, StreamWrite};

/// Namespace of the UUID v5 ids that importers derive from content.
pub const IMPORT_NAMESPACE: Uuid = Uuid::from_u128(0x6a6f_7572_6e65_7969_6d70_6f72_7400_0001);

/// Events per atomic batch.
pub const BATCH_EVENTS: usize = 2_000;

/// Which parser to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportFormat {
    /// CDNOW purchase histories (`customer_id [sample_id] YYYYMMDD cds dollars`).
    Cdnow,
    /// One JSON event per line (see the README).
    Jsonl,
    /// One structured CloudEvents 1.0 event per line (`type` the event
    /// type, `subject` the customer, `data` the payload).
    Cloudevents,
}

/// Why an import stopped.
#[derive(Debug, Error)]
pub enum ImportError {
    /// A line could not be parsed or validated; its batch was not stored.
    #[error("{file}:{line}: {reason}")]
    Line {
        /// File name as given.
        file: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong, naming the field.
        reason: String,
    },
    /// The file could not be read.
    #[error("cannot read {file}: {source}")]
    Io {
        /// File.
        file: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The store refused a batch (lines `first_line..=last_line`).
    #[error("{file}:{first_line}-{last_line}: store refused the batch: {source}")]
    Store {
        /// File.
        file: String,
        /// First line of the batch.
        first_line: usize,
        /// Last line of the batch.
        last_line: usize,
        /// The store's error.
        #[source]
        source: StoreError,
    },
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// Lines read (including a header).
    pub lines: usize,
    /// Events newly stored.
    pub appended: u64,
    /// Events that were already stored (a repeated import).
    pub already_stored: u64,
    /// Distinct streams touched.
    pub streams: usize,
}

/// Events parsed from one line, all for one stream.
#[derive(Debug)]
pub struct LineEvents {
    /// Target stream.
    pub stream: StreamId,
    /// Events in order.
    pub events: Vec<NewEvent>,
}

/// A line-by-line parser of one format. Parsers may keep state across
/// lines (e.g. which customers they have registered).
pub trait LineParser {
    /// Parses one line (without its newline). `Ok(None)` skips it (blank
    /// lines, a header).
    fn parse_line(&mut self, line_no: usize, line: &str) -> Result<Option<LineEvents>, String>;
}

/// Latest `occurred_at` accepted: a day of clock skew, no more.
pub fn check_not_in_future(field: &str, at: DateTime<Utc>) -> Result<(), ValidationError> {
    if at > Utc::now() + chrono::Duration::days(1) {
        return Err(ValidationError::new(
            field,
            format!("{} is in the future", at.to_rfc3339()),
        ));
    }
    Ok(())
}

/// A deterministic event id from a content key.
pub fn derived_id(key: &str) -> Uuid {
    Uuid::new_v5(&IMPORT_NAMESPACE, key.as_bytes())
}

/// Reads `path` with `parser` and appends its events in atomic batches,
/// calling `progress` with the bytes consumed so far.
///
/// Without a vault, a line carrying personal profile fields is refused
/// (they must never be stored in plaintext); use [`import_file_with_vault`].
pub async fn import_file(
    store: Arc<dyn EventStore>,
    path: &Path,
    format: ImportFormat,
    progress: impl FnMut(u64),
) -> Result<ImportReport, ImportError> {
    read_and_import(store, None, path, format, progress).await
}

/// [`import_file`], sealing personal profile fields with `vault` before
/// they are stored.
pub async fn import_file_with_vault(
    store: Arc<dyn EventStore>,
    vault: &Vault,
    path: &Path,
    format: ImportFormat,
    progress: impl FnMut(u64),
) -> Result<ImportReport, ImportError> {
    read_and_import(store, Some(vault), path, format, progress).await
}

async fn read_and_import(
    store: Arc<dyn EventStore>,
    vault: Option<&Vault>,
    path: &Path,
    format: ImportFormat,
    mut progress: impl FnMut(u64),
) -> Result<ImportReport, ImportError> {
    let file_name = path.display().to_string();
    let io_err = |source| ImportError::Io {
        file: file_name.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_err)?;
    let reader = std::io::BufReader::with_capacity(1 << 16, file);
    let mut parser: Box<dyn LineParser + Send> = match format {
        ImportFormat::Cdnow => Box::new(cdnow::CdnowParser::default()),
        ImportFormat::Jsonl => Box::new(jsonl::JsonlParser),
        ImportFormat::Cloudevents => {
            let vault = vault.map(|v| Arc::new(v.clone()));
            return cloudevents::import_lines(
                store,
                vault,
                &file_name,
                reader,
                &cloudevents::CloudEventsOptions::default(),
                &mut progress,
            )
            .await;
        }
    };
    import_lines_sealed(
        store,
        vault,
        &file_name,
        reader,
        parser.as_mut(),
        &mut progress,
    )
    .await
}

/// The batching loop, separate from file handling so tests can feed text.
/// Lines with personal profile fields are refused (no vault to seal them).
pub async fn import_lines(
    store: Arc<dyn EventStore>,
    file_name: &str,
    reader: impl BufRead,
    parser: &mut (dyn LineParser + Send),
    progress: &mut impl FnMut(u64),
) -> Result<ImportReport, ImportError> {
    import_lines_sealed(store, None, file_name, reader, parser, progress).await
}

/// The batching loop, sealing personal fields with `vault` when given.
pub async fn import_lines_sealed(
    store: Arc<dyn EventStore>,
    vault: Option<&Vault>,
    file_name: &str,
    reader: impl BufRead,
    parser: &mut (dyn LineParser + Send),
    progress: &mut impl FnMut(u64),
) -> Result<ImportReport, ImportError> {
    let mut report = ImportReport::default();
    let mut streams = std::collections::HashSet::new();
    let mut batch: Vec<StreamWrite> = Vec::new();
    let mut batch_events = 0usize;
    let mut batch_first_line = 1usize;
    let mut bytes = 0u64;
    for (index, line) in reader.lines().enumerate() {
        let line_no = index + 1;
        let line = line.map_err(|source| ImportError::Io {
            file: file_name.to_owned(),
            source,
        })?;
        bytes += line.len() as u64 + 1;
        report.lines = line_no;
        let parsed = parser
            .parse_line(line_no, line.trim_end_matches('\r'))
            .map_err(|reason| ImportError::Line {
                file: file_name.to_owned(),
                line: line_no,
                reason,
            })?;
        let Some(mut parsed) = parsed else { continue };
        parsed.events = seal_line(vault, &parsed.stream, parsed.events)
            .await
            .map_err(|reason| ImportError::Line {
                file: file_name.to_owned(),
                line: line_no,
                reason,
            })?;
        if batch.is_empty() {
            batch_first_line = line_no;
        }
        batch_events += parsed.events.len();
        streams.insert(parsed.stream.clone());
        match batch.last_mut() {
            Some(last) if last.stream == parsed.stream => last.events.extend(parsed.events),
            _ => batch.push(StreamWrite {
                stream: parsed.stream,
                expected: ExpectedVersion::Any,
                events: parsed.events,
            }),
        }
        if batch_events >= BATCH_EVENTS {
            flush(
                &store,
                file_name,
                &mut batch,
                batch_first_line,
                line_no,
                &mut report,
            )
            .await?;
            batch_events = 0;
            progress(bytes);
        }
    }
    flush(
        &store,
        file_name,
        &mut batch,
        batch_first_line,
        report.lines,
        &mut report,
    )
    .await?;
    progress(bytes);
    report.streams = streams.len();
    Ok(report)
}

/// Seals a line's personal fields, or refuses them when there is no vault:
/// plaintext personal data never reaches the store.
async fn seal_line(
    vault: Option<&Vault>,
    stream: &StreamId,
    events: Vec<NewEvent>,
) -> Result<Vec<NewEvent>, String> {
    let mut sealed = Vec::with_capacity(events.len());
    for event in events {
        sealed.push(match vault {
            Some(vault) => vault
                .seal_new_event(stream, event)
                .await
                .map_err(|e| e.to_string())?,
            None if has_plaintext_personal_data(&event) => {
                return Err("payload.profile: personal fields must be sealed; import them with a privacy vault (`journey import` does)".to_owned());
            }
            None => event,
        });
    }
    Ok(sealed)
}

async fn flush(
    store: &Arc<dyn EventStore>,
    file_name: &str,
    batch: &mut Vec<StreamWrite>,
    first_line: usize,
    last_line: usize,
    report: &mut ImportReport,
) -> Result<(), ImportError> {
    if batch.is_empty() {
        return Ok(());
    }
    let writes = std::mem::take(batch);
    let sizes: Vec<usize> = writes.iter().map(|w| w.events.len()).collect();
    let outcomes = store
        .append_batch(writes)
        .await
        .map_err(|source| ImportError::Store {
            file: file_name.to_owned(),
            first_line,
            last_line,
            source,
        })?;
    for (outcome, size) in outcomes.iter().zip(sizes) {
        report.appended += outcome.appended as u64;
        report.already_stored += (size - outcome.appended) as u64;
    }
    Ok(())
}

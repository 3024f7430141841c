//! Audit exports: one customer's history as one self-verifying JSON document.
//!
//! The document holds the customer's events exactly as stored (payload and
//! metadata embedded as JSON, re-canonicalized on read, so the hashes can be
//! recomputed offline), the chain's head, and a `projected_state` object of
//! named sections. An export "as of" an instant holds the stream's *prefix*
//! of events recorded at or before it; its head is the last included event.
//!
//! Sections are pluggable ([`StateSection`]): the read models register theirs
//! (lifecycle stage, loyalty, CLV …) when they exist. This module only ships
//! sections computed from the exported events themselves, each labelled with
//! its `source` so nobody mistakes them for projection output.

use std::collections::BTreeMap;
use std::path::Path;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::verify::{ChainVerifier, Problem, VerifyError, VerifyReport};
use crate::domain::events::DomainEvent;
use crate::domain::{CustomerId, EventHash, Money, RecordedEvent, StreamId};
use crate::privacy::{PrivacyError, Vault};
use crate::store::{EventStore, ReadStream, StoreError};

/// The `format` tag of every export document.
pub const EXPORT_FORMAT: &str = "journey-ledger/audit-export";
/// The version of the document layout this build writes and reads.
pub const EXPORT_FORMAT_VERSION: u32 = 1;

/// The last event included in an export: what an auditor pins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportHead {
    /// Its version (the number of events exported).
    pub version: u64,
    /// Its chained hash: the head of the exported prefix.
    pub hash: EventHash,
    /// Its global position.
    pub position: u64,
}

/// One section of the projected state, with where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateSectionValue {
    /// Who computed it, e.g. `events` (this module, from the exported events
    /// alone) or `projection:lifecycle@rules-v3`.
    pub source: String,
    /// The state.
    pub value: serde_json::Value,
}

/// An audit export document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditExport {
    /// Always [`EXPORT_FORMAT`].
    pub format: String,
    /// Layout version, [`EXPORT_FORMAT_VERSION`].
    pub format_version: u32,
    /// The customer.
    pub customer_id: CustomerId,
    /// Their stream.
    pub stream_id: StreamId,
    /// Events recorded after this instant are excluded (`null`: all).
    pub as_of: Option<DateTime<Utc>>,
    /// When the export was made (informational; not verified).
    pub exported_at: DateTime<Utc>,
    /// The last exported event (`null` when none is included).
    pub head: Option<ExportHead>,
    /// The events, oldest first, exactly as stored.
    pub events: Vec<RecordedEvent>,
    /// Named state sections; see [`StateSection`].
    pub projected_state: BTreeMap<String, StateSectionValue>,
}

/// Why an export could not be produced.
#[derive(Debug, Error)]
pub enum ExportError {
    /// The store failed.
    #[error("store error: {0}")]
    Store(#[from] StoreError),
    /// The customer has no events.
    #[error("no events for customer {0}")]
    UnknownCustomer(CustomerId),
    /// The stream does not verify; exporting it would certify a tampered history.
    #[error("refusing to export {customer}: the stream fails verification: {problem}")]
    Tampered {
        /// Customer.
        customer: CustomerId,
        /// The first problem.
        problem: String,
    },
    /// Personal data could not be revealed.
    #[error("privacy vault: {0}")]
    Privacy(#[from] PrivacyError),
    /// A state section failed.
    #[error("state section {name}: {reason}")]
    Section {
        /// Section name.
        name: String,
        /// Why.
        reason: String,
    },
}

/// A pluggable part of `projected_state`: the read-model layer implements
/// this for each projection that can compute a customer's state as of an
/// instant, and passes the sections to [`export_customer`].
#[async_trait]
pub trait StateSection: Send + Sync {
    /// Key in `projected_state`.
    fn name(&self) -> &str;
    /// The customer's state as of `as_of` (`None`: now), computed from (at
    /// most) the exported `events`.
    async fn compute(
        &self,
        customer: &CustomerId,
        as_of: Option<DateTime<Utc>>,
        events: &[RecordedEvent],
    ) -> Result<StateSectionValue, String>;
}

/// Counts and sums derived from the exported events alone (not a projection).
#[derive(Debug, Clone, Default, Serialize)]
struct EventSummary {
    events: u64,
    first_occurred_at: Option<DateTime<Utc>>,
    last_occurred_at: Option<DateTime<Utc>>,
    events_by_type: BTreeMap<String, u64>,
    orders: u64,
    /// Per currency, in minor units.
    order_totals_minor: BTreeMap<String, i64>,
    refunds: u64,
    refund_totals_minor: BTreeMap<String, i64>,
    personal_data_erased: bool,
    undecodable_events: u64,
}

fn add(totals: &mut BTreeMap<String, i64>, money: &Money) {
    *totals.entry(money.currency.to_string()).or_default() += money.minor;
}

fn summarize(events: &[RecordedEvent]) -> EventSummary {
    let mut s = EventSummary::default();
    for e in events {
        s.events += 1;
        s.first_occurred_at = Some(
            s.first_occurred_at
                .map_or(e.occurred_at, |t| t.min(e.occurred_at)),
        );
        s.last_occurred_at = Some(
            s.last_occurred_at
                .map_or(e.occurred_at, |t| t.max(e.occurred_at)),
        );
        *s.events_by_type.entry(e.event_type.clone()).or_default() += 1;
        match e.decode() {
            Ok(DomainEvent::OrderPlaced(o)) => {
                s.orders += 1;
                add(&mut s.order_totals_minor, &o.amount);
            }
            Ok(DomainEvent::OrderRefunded(r)) => {
                s.refunds += 1;
                add(&mut s.refund_totals_minor, &r.amount);
            }
            Ok(DomainEvent::PersonalDataErased(_)) => s.personal_data_erased = true,
            Ok(_) => {}
            Err(_) => s.undecodable_events += 1,
        }
    }
    s
}

/// The customer's profile as of the export, folded from the exported events
/// and revealed through the vault (`[erased]` after an erasure).
async fn profile_section(
    vault: &Vault,
    customer: &CustomerId,
    events: &[RecordedEvent],
) -> Result<serde_json::Value, PrivacyError> {
    let mut profile = crate::domain::events::Profile::default();
    for e in events {
        let changed = match e.decode() {
            Ok(DomainEvent::CustomerRegistered(r)) => r.profile,
            Ok(DomainEvent::ProfileChanged(p)) => p.profile,
            _ => continue,
        };
        for (slot, value) in [
            (&mut profile.name, changed.name),
            (&mut profile.email, changed.email),
            (&mut profile.phone, changed.phone),
            (&mut profile.address, changed.address),
        ] {
            if value.is_some() {
                *slot = value;
            }
        }
    }
    let revealed = vault.reveal_profile(customer, &profile).await?;
    Ok(serde_json::to_value(revealed).expect("profile serializes"))
}

/// Builds the export of `customer` as of `as_of` (all events when `None`).
///
/// The stream is verified first (chain and, for a full export, the recorded
/// head); a tampered stream is refused. With a `vault`, a `profile` section
/// holds the revealed personal data; `sections` add the projections' state.
pub async fn export_customer(
    store: &dyn EventStore,
    vault: Option<&Vault>,
    customer: &CustomerId,
    as_of: Option<DateTime<Utc>>,
    sections: &[&dyn StateSection],
) -> Result<AuditExport, ExportError> {
    let stream = customer.stream_id();
    let all = store
        .read_stream(&stream, ReadStream::all_forwards())
        .await?;
    if all.is_empty() {
        return Err(ExportError::UnknownCustomer(customer.clone()));
    }
    let report = super::verify::verify_customer(store, customer)
        .await
        .map_err(|e| match e {
            VerifyError::Store(s) => ExportError::Store(s),
            other => ExportError::Tampered {
                customer: customer.clone(),
                problem: other.to_string(),
            },
        })?;
    if let Some(problem) = report.first_problem() {
        return Err(ExportError::Tampered {
            customer: customer.clone(),
            problem: problem.to_string(),
        });
    }
    let events: Vec<RecordedEvent> = match as_of {
        Some(at) => all
            .into_iter()
            .take_while(|e| e.recorded_at <= at)
            .collect(),
        None => all,
    };
    let head = events.last().map(|e| ExportHead {
        version: e.version,
        hash: e.hash,
        position: e.position,
    });
    let mut projected_state = BTreeMap::new();
    projected_state.insert(
        "event_summary".to_owned(),
        StateSectionValue {
            source: "events: computed by `journey export` from the exported events alone, not a projection"
                .to_owned(),
            value: serde_json::to_value(summarize(&events)).expect("summary serializes"),
        },
    );
    if let Some(vault) = vault {
        projected_state.insert(
            "profile".to_owned(),
            StateSectionValue {
                source: "events+vault: profile fields folded from the exported events, decrypted with the customer's key"
                    .to_owned(),
                value: profile_section(vault, customer, &events).await?,
            },
        );
    }
    for section in sections {
        let value = section
            .compute(customer, as_of, &events)
            .await
            .map_err(|reason| ExportError::Section {
                name: section.name().to_owned(),
                reason,
            })?;
        projected_state.insert(section.name().to_owned(), value);
    }
    Ok(AuditExport {
        format: EXPORT_FORMAT.to_owned(),
        format_version: EXPORT_FORMAT_VERSION,
        customer_id: customer.clone(),
        stream_id: stream,
        as_of,
        exported_at: crate::domain::envelope::truncate_to_micros(Utc::now()),
        head,
        events,
        projected_state,
    })
}

/// Re-verifies an export offline: the chain from genesis over the included
/// prefix, the stream and as-of bounds, and the recorded head.
pub fn verify_export(doc: &AuditExport) -> VerifyReport {
    let mut verifier = ChainVerifier::new(false);
    let scope = format!("export of customer {}", doc.customer_id);
    if doc.format != EXPORT_FORMAT || doc.format_version != EXPORT_FORMAT_VERSION {
        verifier.report(Problem::Foreign {
            stream: doc.stream_id.clone(),
            version: 0,
            position: 0,
            reason: format!(
                "unsupported export format {} v{} (this build reads {EXPORT_FORMAT} v{EXPORT_FORMAT_VERSION})",
                doc.format, doc.format_version
            ),
        });
    }
    if doc.stream_id != doc.customer_id.stream_id() {
        verifier.report(Problem::Foreign {
            stream: doc.stream_id.clone(),
            version: 0,
            position: 0,
            reason: format!("is not the stream of customer {}", doc.customer_id),
        });
    }
    for event in &doc.events {
        if event.stream_id != doc.stream_id {
            verifier.report(Problem::Foreign {
                stream: event.stream_id.clone(),
                version: event.version,
                position: event.position,
                reason: format!("belongs to another stream than {}", doc.stream_id),
            });
            continue;
        }
        if let Some(at) = doc.as_of {
            if event.recorded_at > at {
                verifier.report(Problem::Foreign {
                    stream: event.stream_id.clone(),
                    version: event.version,
                    position: event.position,
                    reason: format!(
                        "recorded at {} after the export's as-of {}",
                        crate::domain::envelope::display_instant(&event.recorded_at),
                        crate::domain::envelope::display_instant(&at)
                    ),
                });
            }
        }
        verifier.feed(event);
    }
    let computed = verifier
        .stream_heads()
        .find(|(s, _)| **s == doc.stream_id)
        .map(|(_, h)| h);
    let claimed = doc.head.as_ref().map(|h| crate::store::StreamHead {
        version: h.version,
        hash: h.hash,
    });
    if let (Some(h), Some(last)) = (&doc.head, doc.events.last()) {
        if h.position != last.position {
            verifier.report(Problem::Foreign {
                stream: doc.stream_id.clone(),
                version: h.version,
                position: h.position,
                reason: format!(
                    "head position {} is not the last event's position {}",
                    h.position, last.position
                ),
            });
        }
    }
    if claimed.is_some() || computed.is_some() {
        verifier.check_head(&doc.stream_id, claimed);
    }
    verifier.finish(scope)
}

/// Reads and re-verifies an export file.
pub fn verify_export_file(path: &Path) -> Result<VerifyReport, VerifyError> {
    let file_err = |reason: String| VerifyError::File {
        file: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
    let doc: AuditExport = serde_json::from_str(&text).map_err(|e| file_err(e.to_string()))?;
    let mut report = verify_export(&doc);
    report.scope = format!("file {}", path.display());
    Ok(report)
}

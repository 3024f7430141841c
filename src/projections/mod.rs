//! Read models projected from the event log: the runner, the rules, and one
//! module per projection.
//!
//! # How a projection is written
//!
//! A projection is a **pure per-customer fold** implementing
//! [`CustomerFold`]: the runner ([`runner`]) owns all I/O, ordering,
//! batching, checkpoints, versioning and crash recovery. Adding a read model
//! is one module implementing the trait plus its tables:
//!
//! 1. write `src/projections/<name>.rs` with a `State` (what you must remember
//!    per customer; `serde` so the runner can store it: keep it small — it
//!    is written with every change of the customer — and write instants
//!    with [`compact`]'s helpers) and `impl CustomerFold`;
//! 2. add its tables to a migration in `schema/sqlite/` **and**
//!    `schema/postgres/`. Every table starts with `model_version` and
//!    `customer_id` (the runner fills both; your rows hold the remaining
//!    columns, in [`TableSpec::columns`] order);
//! 3. add its rules (if any) to [`rules::RuleSet`] and a TOML file in
//!    `projections/`;
//! 4. add the fold to [`state::Folds`] and its state to
//!    [`state::CustomerState`], bump [`state::STATE_FORMAT`], and say in
//!    [`state::Folds::deadline`] when time alone next changes it.
//!
//! # The semantics every fold must keep
//!
//! - **Order.** A customer's events are folded in `(occurred_at, version)`
//!   order (business time, stream order for ties). The runner guarantees it:
//!   when a *late* event arrives (its `occurred_at` is earlier than one
//!   already applied to that customer, or not after the instant the runner
//!   advanced them to), the runner resets the customer (deletes their rows
//!   in this version) and refolds their stream up to that event's position,
//!   in that order.
//! - **Time from outside.** There are no clock events and no `Utc::now()`
//!   in a fold. Time-based changes (a stage after 90 days without orders,
//!   points expiring) happen when the fold is advanced to an instant:
//!   [`CustomerFold::apply`] first advances the state to the event's
//!   `occurred_at` (emitting every threshold crossing in `(previous, t]` at
//!   the exact crossing instant), then applies the event; the runner
//!   advances customers to its [`clock::Clock`] after their events and
//!   when their next deadline passes. The state "as of" `T` is: fold the
//!   events with `occurred_at <= T`, then [`CustomerFold::advance_to`]`(T)`.
//! - **Determinism.** Output depends only on the events, the rules and the
//!   explicit instant. Iterate `HashMap`s only where order cannot leak into
//!   output.
//!
//! # Tables
//!
//! - [`TableKind::Current`]: the customer's present rows (e.g. their stage).
//!   After each batch, the runner deletes a touched customer's rows and
//!   inserts what [`CustomerFold::current_rows`] returns.
//! - [`TableKind::History`]: append-only rows pushed from `apply` /
//!   `advance_to` (e.g. stage transitions). Give them a per-customer
//!   sequence number kept in the state so refolds reproduce them exactly.
//! - [`TableKind::Population`]: rows that depend on every customer (value
//!   tiers, CLV), rewritten from the stored states in two streaming passes
//!   ([`population`]) when a rebuild completes and by the live runner.

pub mod alerts;
pub mod analytics;
pub mod bench;
pub mod bulk;
pub mod cache;
pub mod clock;
pub mod clv_scores;
pub mod cohorts;
pub mod compact;
pub mod diff;
pub mod export;
pub mod leadership;
pub mod lifecycle;
pub mod live_feed;
pub mod loyalty;
pub mod population;
pub mod query;
pub mod rebuild;
pub mod rules;
pub mod rules_error;
pub mod runner;
pub mod state;
pub mod storage;
pub mod tier_bounds;
pub mod value;
pub mod versions;
pub mod view;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use crate::domain::{CustomerId, DomainEvent};

/// One decoded event of a customer stream, as a fold sees it.
#[derive(Debug, Clone)]
pub struct FoldEvent {
    /// The event's id (a transition's cause names it).
    pub event_id: Uuid,
    /// Global position (for logs; folds must not depend on it).
    pub position: u64,
    /// Version within the customer's stream.
    pub version: u64,
    /// Business time: when it happened.
    pub occurred_at: DateTime<Utc>,
    /// The typed event.
    pub event: DomainEvent,
}

impl FoldEvent {
    /// The borrowed view the pure folds take.
    pub fn view(&self) -> view::EventView<'_> {
        view::EventView {
            event_id: self.event_id,
            occurred_at: self.occurred_at,
            event: &self.event,
        }
    }
}

/// A column value of a read-model row. Nulls are typed because PostgreSQL
/// checks parameter types.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A 64-bit integer (counts, minor units, instants in µs).
    Int(i64),
    /// A model estimate (probabilities, expected counts); never money sums.
    Real(f64),
    /// SQL NULL in a real column.
    NullReal,
    /// Text (ids, stage names, causes).
    Text(String),
    /// SQL NULL in an integer column.
    NullInt,
    /// SQL NULL in a text column.
    NullText,
    /// An id (an event's): 16 bytes, a `BLOB` on SQLite, a `UUID` on
    /// PostgreSQL, instead of 36 characters of text.
    Uuid(Uuid),
    /// SQL NULL in an id column.
    NullUuid,
    /// Raw bytes (`BLOB` / `BYTEA`), e.g. several ids end to end.
    Bytes(Vec<u8>),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<Option<i64>> for Value {
    fn from(v: Option<i64>) -> Self {
        v.map_or(Value::NullInt, Value::Int)
    }
}
impl From<Option<f64>> for Value {
    fn from(v: Option<f64>) -> Self {
        v.map_or(Value::NullReal, Value::Real)
    }
}
impl From<Option<Uuid>> for Value {
    fn from(v: Option<Uuid>) -> Self {
        v.map_or(Value::NullUuid, Value::Uuid)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<Option<&str>> for Value {
    fn from(v: Option<&str>) -> Self {
        v.map_or(Value::NullText, |s| Value::Text(s.to_owned()))
    }
}

/// How the runner maintains a table (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// Present rows per customer, replaced when the customer changes.
    Current,
    /// Append-only per-customer history.
    History,
    /// Rows over the whole population, rewritten as a whole.
    Population,
}

/// A read-model table a fold writes. The table itself is created by a
/// migration; this tells the runner how to fill it.
#[derive(Debug, Clone, Copy)]
pub struct TableSpec {
    /// Table name.
    pub name: &'static str,
    /// Columns after `model_version, customer_id`, in row order.
    pub columns: &'static [&'static str],
    /// How rows are maintained.
    pub kind: TableKind,
}

/// A row for one table, without `model_version` (the runner adds it).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Target table (one of the fold's [`TableSpec`]s).
    pub table: &'static str,
    /// The customer the row belongs to.
    pub customer_id: String,
    /// Values in [`TableSpec::columns`] order.
    pub values: Vec<Value>,
}

/// A pure per-customer fold: the one trait a read model implements.
///
/// Implementations hold only rules (immutable); all per-customer memory is
/// in `State`, which the runner stores in binary with the customer's other
/// states ([`state::CustomerState`]) and loads only for the customers a
/// batch touches.
pub trait CustomerFold: Send + Sync + 'static {
    /// What the fold remembers about one customer.
    type State: Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Stable name, e.g. `lifecycle`; keys persisted state.
    fn name(&self) -> &'static str;

    /// The tables this fold writes.
    fn tables(&self) -> &'static [TableSpec];

    /// Folds one event, in `(occurred_at, version)` order: first advance to
    /// `event.occurred_at` (threshold crossings), then apply it. Pushes
    /// [`TableKind::History`] rows to `out`.
    fn apply(
        &self,
        customer: &CustomerId,
        state: &mut Self::State,
        event: &FoldEvent,
        out: &mut Vec<Row>,
    );

    /// Advances time to `at` (>= the last applied event) without an event,
    /// pushing history rows for crossings in `(previous, at]`. Used for
    /// "as of" queries; the runner's tables stay as of each customer's last
    /// event.
    fn advance_to(
        &self,
        customer: &CustomerId,
        state: &mut Self::State,
        at: DateTime<Utc>,
        out: &mut Vec<Row>,
    );

    /// The customer's [`TableKind::Current`] rows for `state`.
    fn current_rows(&self, customer: &CustomerId, state: &Self::State, out: &mut Vec<Row>);
}

//! The query side as the API sees it: one trait, [`ReadModels`], and the
//! GraphQL types it returns.
//!
//! Two implementations are meant to exist. [`EventFoldReadModels`] (here)
//! needs nothing but the store: it folds a customer's stream on each query
//! and answers what events alone determine — profile, orders, revenue net
//! of refunds, consents. Everything that rules and projections decide
//! (lifecycle stage and history, tier, loyalty balance and lots, RFM, CLV,
//! alerts, stage distribution, cohorts) it returns as `null`, documented in
//! the schema as "not available until the projection is running" — never a
//! guessed value. The projection-backed implementation answers all of it.

use std::sync::Arc;

use async_graphql::{Enum, InputObject, SimpleObject};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use thiserror::Error;

pub use super::scalars::Long;
use crate::commands::{BalanceSource, CustomerHistory};
use crate::domain::customer::CUSTOMER_STREAM_PREFIX;
use crate::domain::{CustomerId, RecordedEvent, StreamId};
use crate::store::{EventStore, ReadStream, StoreError};

/// Why a read-model query failed.
#[derive(Debug, Error)]
pub enum ReadModelError {
    /// The query needs a projection that is not running (e.g. a filter on
    /// stage); `what` says which.
    #[error("{what} is not available until the projection is running")]
    Unavailable {
        /// What was asked for.
        what: String,
    },
    /// A cursor that this implementation did not issue.
    #[error("invalid cursor {0:?}")]
    BadCursor(String),
    /// The store failed.
    #[error("store error: {0}")]
    Store(#[from] StoreError),
    /// A stored event does not decode.
    #[error("stored event does not decode: {0}")]
    Decode(#[from] crate::domain::DecodeError),
    /// The projections failed (a storage error or an unreadable state).
    #[error("projections: {0}")]
    Projection(String),
    /// Sealed personal data could not be opened.
    #[error("privacy vault: {0}")]
    Privacy(#[from] crate::privacy::PrivacyError),
}

/// Where a customer view's figures come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum ReadModelSource {
    /// Folded from the customer's events on request; projected fields are null.
    EventFold,
    /// Read from the running projections.
    Projection,
}

/// An amount of money in integer minor units.
#[derive(Debug, Clone, PartialEq, Eq, SimpleObject)]
#[graphql(name = "Money")]
pub struct MoneyView {
    /// Minor units (cents for USD, yen for JPY).
    pub minor: Long,
    /// ISO 4217 code.
    pub currency: String,
}

impl From<crate::domain::Money> for MoneyView {
    fn from(m: crate::domain::Money) -> Self {
        Self {
            minor: m.minor.into(),
            currency: m.currency.code().to_owned(),
        }
    }
}

/// Personal data of a customer (null after erasure).
#[derive(Debug, Clone, PartialEq, Eq, SimpleObject)]
pub struct ProfileView {
    /// Full name.
    pub name: Option<String>,
    /// E-mail address.
    pub email: Option<String>,
    /// Phone number.
    pub phone: Option<String>,
    /// Postal address.
    pub address: Option<String>,
}

/// What the customer has bought, from their order and refund events.
#[derive(Debug, Clone, PartialEq, Eq, SimpleObject)]
pub struct HistoricalValue {
    /// Number of orders placed.
    pub order_count: u64,
    /// Sum of order amounts, one entry per currency.
    pub gross: Vec<MoneyView>,
    /// Sum of refunds, one entry per currency.
    pub refunded: Vec<MoneyView>,
    /// Gross minus refunded, one entry per currency.
    pub net: Vec<MoneyView>,
    /// When the first order was placed.
    pub first_order_at: Option<DateTime<Utc>>,
    /// When the last order was placed.
    pub last_order_at: Option<DateTime<Utc>>,
}

/// One stage the customer entered.
#[derive(Debug, Clone, PartialEq, Eq, SimpleObject)]
pub struct StageChange {
    /// Stage name, as the lifecycle rules define it.
    pub stage: String,
    /// When the customer entered it.
    pub entered_at: DateTime<Utc>,
    /// Why (rule name and trigger).
    pub reason: String,
}

/// A batch of points with its own expiry.
#[derive(Debug, Clone, PartialEq, Eq, SimpleObject)]
pub struct PointsLot {
    /// Points left in the lot.
    pub points: Long,
    /// When they were earned.
    pub earned_at: DateTime<Utc>,
    /// When they expire, if they do.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Loyalty standing.
#[derive(Debug, Clone, PartialEq, Eq, SimpleObject)]
pub struct Loyalty {
    /// Spendable points.
    pub balance: Long,
    /// The lots making up the balance, oldest first.
    pub lots: Vec<PointsLot>,
}

/// Recency, frequency and monetary scores.
#[derive(Debug, Clone, PartialEq, Eq, SimpleObject)]
pub struct Rfm {
    /// Recency score (1–5).
    pub recency: i32,
    /// Frequency score (1–5).
    pub frequency: i32,
    /// Monetary score (1–5).
    pub monetary: i32,
    /// Segment name, e.g. `champions`.
    pub segment: String,
    /// The instant the scores were computed for: quintiles rank every
    /// customer, so they exist only at the read model's population snapshot.
    pub as_of: DateTime<Utc>,
}

/// Customer lifetime value figures.
#[derive(Debug, Clone, PartialEq, SimpleObject)]
pub struct Clv {
    /// Expected value over the horizon, minor units; null when the spend
    /// model could not be fitted (the purchase model's figures still are).
    pub expected_value: Option<MoneyView>,
    /// Probability the customer is still active (0–1).
    pub probability_alive: f64,
    /// Expected purchases over the horizon.
    pub expected_purchases: f64,
    /// Horizon in days.
    pub horizon_days: i32,
    /// The instant the figures were computed for (the population snapshot
    /// the models were fitted and scored at).
    pub as_of: DateTime<Utc>,
}

/// A churn or service alert raised by the rules.
#[derive(Debug, Clone, PartialEq, Eq, SimpleObject)]
pub struct Alert {
    /// Alert identifier.
    pub id: String,
    /// The customer concerned.
    pub customer_id: String,
    /// Kind, e.g. `churn_risk`.
    pub kind: String,
    /// Human-readable explanation.
    pub message: String,
    /// When it was raised.
    pub raised_at: DateTime<Utc>,
}

/// A customer's move from one lifecycle stage to another.
#[derive(Debug, Clone, PartialEq, Eq, SimpleObject)]
pub struct StageTransition {
    /// The customer concerned.
    pub customer_id: String,
    /// Previous stage (null for the first).
    pub from: Option<String>,
    /// New stage.
    pub to: String,
    /// When it happened.
    pub at: DateTime<Utc>,
}

/// A customer as the API shows them.
#[derive(Debug, Clone, PartialEq, SimpleObject)]
#[graphql(name = "Customer")]
pub struct CustomerView {
    /// Customer identifier.
    pub id: String,
    /// Where these figures come from.
    pub source: ReadModelSource,
    /// Stream version (pass as `expectedVersion` to mutations).
    pub version: Long,
    /// When the customer registered.
    pub registered_at: Option<DateTime<Utc>>,
    /// Acquisition channel.
    pub acquisition_channel: Option<String>,
    /// Acquisition cost.
    pub acquisition_cost: Option<MoneyView>,
    /// Personal data; null once erased.
    pub profile: Option<ProfileView>,
    /// Whether personal data was erased.
    pub erased: bool,
    /// Purposes with consent currently given, sorted.
    pub consents: Vec<String>,
    /// Orders, refunds and revenue (computed from events).
    pub historical_value: HistoricalValue,
    /// Current lifecycle stage. Null when not available until the
    /// projection is running.
    pub stage: Option<String>,
    /// Value tier by share of revenue (`high`, `mid`, `low`). Null when not
    /// available until the projection is running.
    pub value_tier: Option<String>,
    /// Stages entered, oldest first. Null when not available until the
    /// projection is running.
    pub stage_history: Option<Vec<StageChange>>,
    /// Loyalty tier. Null when not available until the projection is running.
    pub tier: Option<String>,
    /// Points balance and lots. Null when not available until the projection
    /// is running (points are earned by rules, not stored as events).
    pub loyalty: Option<Loyalty>,
    /// RFM scores. Null when not available until the projection is running.
    pub rfm: Option<Rfm>,
    /// CLV figures. Null when not available until the projection is running.
    pub clv: Option<Clv>,
    /// Open alerts: fired in the 90 days up to the instant asked (plus a
    /// high-value-at-risk alert at the population snapshot). Null when not
    /// available until the projection is running.
    pub alerts: Option<Vec<Alert>>,
    /// The instant the per-customer figures (stage, loyalty, alerts,
    /// historical value) are for: `asOf`, or now when it was not given.
    pub as_of: DateTime<Utc>,
    /// The instant `valueTier` was computed for (tiers rank every customer's
    /// revenue): the population snapshot, or for an earlier `asOf` the last
    /// month end at or before it.
    pub value_tier_as_of: Option<DateTime<Utc>>,
    /// Figures this answer leaves null, and why. With an explicit `asOf`
    /// every figure answered is for that one instant: population figures
    /// (rfm, clv) computed for another instant are left out and listed
    /// here. Without `asOf` they are the latest, each with its own `asOf`.
    pub unavailable: Vec<UnavailableFigure>,
}

/// A figure the answer leaves null, and why.
#[derive(Debug, Clone, PartialEq, Eq, SimpleObject)]
pub struct UnavailableFigure {
    /// The field, as named in the schema (e.g. `clv`).
    pub field: String,
    /// Why, and how to get it.
    pub reason: String,
}

/// Filters of the `customers` query. Every criterion but none needs the
/// projections.
#[derive(Debug, Clone, Default, InputObject)]
pub struct CustomerFilter {
    /// Lifecycle stage at the population snapshot (the newest event).
    pub stage: Option<String>,
    /// Loyalty tier.
    pub tier: Option<String>,
    /// RFM segment.
    pub rfm_segment: Option<String>,
    /// Minimum expected CLV, minor units.
    pub min_clv: Option<Long>,
    /// Maximum expected CLV, minor units.
    pub max_clv: Option<Long>,
    /// Only customers with (true) or without (false) open alerts: one fired
    /// in the 90 days before the population snapshot, or high value at risk.
    pub has_alert: Option<bool>,
}

impl CustomerFilter {
    /// The first criterion set, by GraphQL name, if any.
    pub fn first_criterion(&self) -> Option<&'static str> {
        [
            ("stage", self.stage.is_some()),
            ("tier", self.tier.is_some()),
            ("rfmSegment", self.rfm_segment.is_some()),
            ("minClv", self.min_clv.is_some()),
            ("maxClv", self.max_clv.is_some()),
            ("hasAlert", self.has_alert.is_some()),
        ]
        .into_iter()
        .find(|(_, set)| *set)
        .map(|(name, _)| name)
    }
}

/// One page of customers.
#[derive(Debug, Clone)]
pub struct CustomerPage {
    /// The customers with their opaque cursors.
    pub items: Vec<(String, CustomerView)>,
    /// Whether more follow the last one.
    pub has_next_page: bool,
}

/// Customers per stage at an instant.
#[derive(Debug, Clone, PartialEq, Eq, SimpleObject)]
pub struct StageCount {
    /// Stage name.
    pub stage: String,
    /// Customers in it.
    pub customers: u64,
}

/// Retention of one acquisition cohort.
#[derive(Debug, Clone, PartialEq, SimpleObject)]
pub struct CohortRow {
    /// First day of the cohort's period.
    pub cohort_start: DateTime<Utc>,
    /// Customers acquired in the period.
    pub size: u64,
    /// Share still active after 1, 2, … periods (0–1).
    pub retention: Vec<f64>,
}

/// Progress of one projection.
#[derive(Debug, Clone, PartialEq, Eq, SimpleObject)]
pub struct ProjectionState {
    /// Projection name.
    pub name: String,
    /// Rules/code version it was built with.
    pub version: String,
    /// Last global position applied.
    pub checkpoint: Long,
    /// Events committed but not yet applied.
    pub lag: Long,
}

/// How far the read side is behind the log.
#[derive(Debug, Clone, PartialEq, Eq, SimpleObject)]
pub struct ProjectionStatus {
    /// Last committed global position of the store.
    pub head_position: Long,
    /// Where the read models come from.
    pub source: ReadModelSource,
    /// Running projections (empty when none is running).
    pub projections: Vec<ProjectionState>,
    /// The last rebuild this server ran or is running (`rebuildReadModels`
    /// or its own start-up rebuild); null before the first.
    pub last_rebuild: Option<RebuildRun>,
    /// This server's part in maintaining the read models (null when it
    /// runs no projections: an event-only store).
    pub role: Option<ServerRole>,
}

/// What a server does with the read models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, async_graphql::Enum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerRole {
    /// Maintains the active version (folds events, runs deadline ticks);
    /// one server at a time.
    Projector,
    /// Answers from what the projector writes; takes the role over when
    /// the projector dies.
    Reader,
}

/// A rebuild a server ran: who asked, why, and how it ended. A failed
/// rebuild leaves the live read models on the version they followed.
#[derive(Debug, Clone, PartialEq, Eq, SimpleObject)]
pub struct RebuildRun {
    /// The API key's name, or `journey serve` for its own.
    pub requested_by: String,
    /// Why.
    pub reason: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended; null while it runs.
    pub finished_at: Option<DateTime<Utc>>,
    /// The version it built and activated, once it has.
    pub model_version: Option<Long>,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

/// The read side of the ledger, as the API needs it.
#[async_trait]
pub trait ReadModels: Send + Sync + 'static {
    /// One customer as of `as_of` (all events when `None`), or `None` if
    /// unknown.
    async fn customer(
        &self,
        id: &CustomerId,
        as_of: Option<DateTime<Utc>>,
    ) -> Result<Option<CustomerView>, ReadModelError>;

    /// A page of at most `first` customers after the opaque cursor `after`,
    /// in a stable order.
    async fn customers(
        &self,
        filter: &CustomerFilter,
        first: usize,
        after: Option<&str>,
    ) -> Result<CustomerPage, ReadModelError>;

    /// Customers per stage, or `None` when no lifecycle projection runs.
    async fn stage_distribution(
        &self,
        as_of: Option<DateTime<Utc>>,
    ) -> Result<Option<Vec<StageCount>>, ReadModelError>;

    /// Retention by acquisition cohort for cohorts starting in
    /// `[from, to)`, or `None` when no projection runs.
    async fn cohort_retention(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Option<Vec<CohortRow>>, ReadModelError>;

    /// Head position and each projection's checkpoint and lag.
    async fn projection_status(&self) -> Result<ProjectionStatus, ReadModelError>;

    /// Current loyalty points balance, or `None` when not known.
    async fn points_balance(
        &self,
        customer: &CustomerId,
        at: DateTime<Utc>,
    ) -> Result<Option<i64>, ReadModelError>;
}

/// Answers queries by folding each customer's stream on request.
pub struct EventFoldReadModels {
    store: Arc<dyn EventStore>,
    vault: Option<Arc<crate::privacy::Vault>>,
}

impl EventFoldReadModels {
    /// Read models over `store`.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self { store, vault: None }
    }

    /// Decrypts sealed profile fields with `vault` (erased ones stay hidden).
    pub fn with_vault(mut self, vault: Option<Arc<crate::privacy::Vault>>) -> Self {
        self.vault = vault;
        self
    }

    /// [`ReadModels::customer`] from the customer's events already read
    /// (all of them, oldest first), for callers that need them too.
    pub async fn customer_from_events(
        &self,
        id: &CustomerId,
        events: &[RecordedEvent],
        as_of: Option<DateTime<Utc>>,
    ) -> Result<Option<CustomerView>, ReadModelError> {
        if events.is_empty() {
            return Ok(None);
        }
        let history = CustomerHistory::fold(events, as_of)?;
        if history.version == 0 {
            // Every event happened after `as_of`: not a customer yet.
            return Ok(None);
        }
        let mut view = Self::view(id, &history, as_of.unwrap_or_else(Utc::now));
        if let (Some(vault), Some(profile)) = (&self.vault, view.profile.as_mut()) {
            let revealed = vault.reveal_profile(id, &history.profile).await?;
            if revealed.erased {
                view.profile = None;
                view.erased = true;
            } else {
                profile.name = revealed.name;
                profile.email = revealed.email;
                profile.phone = revealed.phone;
                profile.address = revealed.address;
            }
        }
        Ok(Some(view))
    }

    fn view(id: &CustomerId, history: &CustomerHistory, as_of: DateTime<Utc>) -> CustomerView {
        let money = |m: &std::collections::BTreeMap<crate::domain::Currency, i64>| {
            m.iter()
                .map(|(c, minor)| MoneyView {
                    minor: (*minor).into(),
                    currency: c.code().to_owned(),
                })
                .collect::<Vec<_>>()
        };
        let p = &history.profile;
        CustomerView {
            id: id.to_string(),
            source: ReadModelSource::EventFold,
            version: history.version.into(),
            registered_at: history.registered_at,
            acquisition_channel: history.acquisition_channel.clone(),
            acquisition_cost: history.acquisition_cost.map(Into::into),
            profile: (!history.erased).then(|| ProfileView {
                name: p.name.clone(),
                email: p.email.clone(),
                phone: p.phone.clone(),
                address: p.address.clone(),
            }),
            erased: history.erased,
            consents: history.consents.iter().cloned().collect(),
            historical_value: HistoricalValue {
                order_count: history.orders.len() as u64,
                gross: money(&history.gross_minor),
                refunded: money(&history.refunded_minor),
                net: money(&history.net_minor()),
                first_order_at: history.first_order_at,
                last_order_at: history.last_order_at,
            },
            stage: None,
            value_tier: None,
            stage_history: None,
            tier: None,
            loyalty: None,
            rfm: None,
            clv: None,
            alerts: None,
            as_of,
            value_tier_as_of: None,
            unavailable: Vec::new(),
        }
    }
}

#[async_trait]
impl ReadModels for EventFoldReadModels {
    async fn customer(
        &self,
        id: &CustomerId,
        as_of: Option<DateTime<Utc>>,
    ) -> Result<Option<CustomerView>, ReadModelError> {
        let events = self
            .store
            .read_stream(&id.stream_id(), ReadStream::all_forwards())
            .await?;
        self.customer_from_events(id, &events, as_of).await
    }

    async fn customers(
        &self,
        filter: &CustomerFilter,
        first: usize,
        after: Option<&str>,
    ) -> Result<CustomerPage, ReadModelError> {
        if let Some(criterion) = filter.first_criterion() {
            return Err(ReadModelError::Unavailable {
                what: format!("filtering customers by {criterion}"),
            });
        }
        let mut cursor = match after {
            Some(c) => Some(StreamId::parse(c).map_err(|_| ReadModelError::BadCursor(c.into()))?),
            None => None,
        };
        let mut items = Vec::new();
        // Stream names sort customer-* together; skip other prefixes.
        loop {
            let streams = self.store.list_streams(cursor.as_ref(), first + 1).await?;
            let exhausted = streams.len() < first + 1;
            for stream in &streams {
                cursor = Some(stream.clone());
                let Some(id) = stream.customer_id() else {
                    continue;
                };
                if items.len() == first {
                    return Ok(CustomerPage {
                        items,
                        has_next_page: true,
                    });
                }
                if let Some(view) = self.customer(&id, None).await? {
                    items.push((stream.as_str().to_owned(), view));
                }
            }
            let past_customers = cursor.as_ref().is_some_and(|c| {
                c.as_str() > CUSTOMER_STREAM_PREFIX
                    && !c.as_str().starts_with(CUSTOMER_STREAM_PREFIX)
            });
            if exhausted || past_customers {
                return Ok(CustomerPage {
                    items,
                    has_next_page: false,
                });
            }
        }
    }

    async fn stage_distribution(
        &self,
        _as_of: Option<DateTime<Utc>>,
    ) -> Result<Option<Vec<StageCount>>, ReadModelError> {
        Ok(None)
    }

    async fn cohort_retention(
        &self,
        _from: DateTime<Utc>,
        _to: DateTime<Utc>,
    ) -> Result<Option<Vec<CohortRow>>, ReadModelError> {
        Ok(None)
    }

    async fn projection_status(&self) -> Result<ProjectionStatus, ReadModelError> {
        Ok(ProjectionStatus {
            head_position: self.store.head_position().await?.into(),
            source: ReadModelSource::EventFold,
            projections: Vec::new(),
            last_rebuild: None,
            role: None,
        })
    }

    async fn points_balance(
        &self,
        _customer: &CustomerId,
        _at: DateTime<Utc>,
    ) -> Result<Option<i64>, ReadModelError> {
        Ok(None)
    }
}

/// Lets the command side ask any [`ReadModels`] for balances.
pub struct ReadModelBalances(pub Arc<dyn ReadModels>);

#[async_trait]
impl BalanceSource for ReadModelBalances {
    async fn points_balance(
        &self,
        customer: &CustomerId,
        at: DateTime<Utc>,
    ) -> Result<Option<i64>, String> {
        self.0.points_balance(customer, at).await.map_err(|e| {
            tracing::error!(error = %e, "points balance lookup failed");
            "the points balance could not be read".to_owned()
        })
    }
}

//! The GraphQL schema: queries over the read models, one mutation per
//! interaction of the event model (each a command, see [`crate::commands`]),
//! and subscriptions. Every root field is guarded by a minimum role.

use std::sync::Arc;

use super::scalars::Long;

use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, Enum, InputObject, Json, Object, Schema, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};

use super::auth::{Caller, Role, RoleGuard};
use super::error::{bad_input, camel_path, coded, command_error, internal, read_error};
use super::limits;
use super::live::LiveFeeds;
use super::metrics::Metrics;
use super::projected::RebuildRequestError;
use super::read_models::{
    Alert, CohortRow, CustomerFilter, CustomerView, ProjectionStatus, ReadModels, StageCount,
    StageTransition,
};
use crate::commands::{Command, CommandHandler};
use crate::domain::events::DomainEvent;
use crate::domain::{CustomerId, RecordedEvent, ValidationError};
use crate::store::{Direction, EventStore, ReadStream};

/// The executable schema.
pub type JourneySchema = Schema<Query, Mutation, Subscription>;

/// What resolvers need, shared by every request.
#[derive(Clone)]
pub struct Services {
    /// The event store.
    pub store: Arc<dyn EventStore>,
    /// The read side.
    pub read_models: Arc<dyn ReadModels>,
    /// The write side.
    pub commands: CommandHandler,
    /// Alert and stage-transition broadcasts.
    pub live: LiveFeeds,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The key table of personal data (absent on stores without one).
    pub vault: Option<Arc<crate::privacy::Vault>>,
    /// The projections this server runs, once started (rebuilds go there).
    pub projections: Arc<std::sync::OnceLock<Arc<super::projected::ProjectionControl>>>,
    /// Rules and settings for `validation` and `workbench` (the shipped
    /// ones until the server attaches its own).
    pub analysis: Arc<std::sync::OnceLock<Arc<crate::report::AnalysisSettings>>>,
}

/// What an erasure did.
#[derive(Debug, Clone, async_graphql::SimpleObject)]
pub struct ErasureResult {
    /// The customer erased.
    pub customer_id: String,
    /// Version of the `PersonalDataErased` event in their stream.
    pub event_version: Long,
    /// Its global position.
    pub event_position: Long,
}

/// Builds the schema with its depth and complexity limits.
pub fn build_schema(services: Services) -> JourneySchema {
    Schema::build(Query, Mutation, Subscription)
        .data(services)
        .limit_depth(limits::MAX_DEPTH)
        .limit_complexity(limits::MAX_COMPLEXITY)
        .finish()
}

/// The schema without services, for printing the SDL.
pub fn sdl() -> String {
    Schema::build(Query, Mutation, Subscription).finish().sdl()
}

fn services<'a>(ctx: &Context<'a>) -> &'a Services {
    ctx.data_unchecked::<Services>()
}

fn analysis(s: &Services) -> Arc<crate::report::AnalysisSettings> {
    s.analysis
        .get()
        .cloned()
        .unwrap_or_else(|| Arc::new(crate::report::AnalysisSettings::shipped()))
}

fn parse_unit(
    unit: Option<&str>,
    rules: &crate::projections::rules::RuleSet,
) -> async_graphql::Result<crate::clv::TimeUnit> {
    use crate::clv::TimeUnit;
    match unit {
        None => Ok(rules.clv.model.time_unit),
        Some("day") => Ok(TimeUnit::Day),
        Some("week") => Ok(TimeUnit::Week),
        Some("month") => Ok(TimeUnit::Month),
        Some(other) => Err(bad_input(
            "unit",
            format!("`{other}` is not a time unit; use day, week or month"),
        )),
    }
}

/// A request the backtest refuses (dates, too little data) is the caller's
/// to fix; anything else is ours.
fn backtest_error(e: crate::backtest::BacktestError) -> async_graphql::Error {
    use crate::backtest::BacktestError;
    match e {
        BacktestError::Request { field, problem } => bad_input(field, problem),
        BacktestError::Insufficient(why) => coded("INSUFFICIENT_DATA", why),
        other => internal(&other),
    }
}

fn parse_customer(field: &str, id: &str) -> async_graphql::Result<CustomerId> {
    CustomerId::parse(id).map_err(|e| bad_input(field, e.reason))
}

/// A stored event, as the API shows it.
#[derive(Debug, Clone, SimpleObject)]
#[graphql(name = "Event")]
pub struct EventView {
    /// Unique id.
    pub event_id: uuid::Uuid,
    /// Stream name (`customer-<id>`).
    pub stream_id: String,
    /// Customer id, for customer streams.
    pub customer_id: Option<String>,
    /// Version within the stream (1-based).
    pub version: Long,
    /// Global position.
    pub position: Long,
    /// Event type, e.g. `OrderPlaced`.
    pub event_type: String,
    /// Payload schema version.
    pub schema_version: u32,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// When the ledger stored it.
    pub recorded_at: DateTime<Utc>,
    /// The payload as stored.
    pub payload: Json<serde_json::Value>,
    /// Who and what caused it.
    pub metadata: Json<serde_json::Value>,
    /// Chained SHA-256, hex.
    pub hash: String,
}

impl From<RecordedEvent> for EventView {
    fn from(e: RecordedEvent) -> Self {
        Self {
            event_id: e.event_id,
            customer_id: e.stream_id.customer_id().map(|c| c.to_string()),
            stream_id: e.stream_id.to_string(),
            version: e.version.into(),
            position: e.position.into(),
            event_type: e.event_type,
            schema_version: e.schema_version,
            occurred_at: e.occurred_at,
            recorded_at: e.recorded_at,
            payload: Json(serde_json::from_str(&e.payload_json).unwrap_or_default()),
            metadata: Json(serde_json::from_str(&e.metadata_json).unwrap_or_default()),
            hash: e.hash.to_string(),
        }
    }
}

/// The outcome of recomputing hash chains (`verify`).
#[derive(Debug, Clone, SimpleObject)]
pub struct Verification {
    /// What was checked: `store` or `customer <id>`.
    pub scope: String,
    /// Whether nothing was found wrong.
    pub intact: bool,
    /// Events checked.
    pub events: u64,
    /// Streams seen.
    pub streams: u64,
    /// Last global position seen.
    pub head_position: Long,
    /// What is wrong and where, most specific first (at most 1,000).
    pub problems: Vec<VerificationProblem>,
}

/// One place where the history does not verify.
#[derive(Debug, Clone, SimpleObject)]
pub struct VerificationProblem {
    /// Kind, e.g. `hash_mismatch`, `version_missing`, `reordered`.
    pub kind: String,
    /// The stream, when the problem has one.
    pub stream: Option<String>,
    /// The stream version concerned.
    pub version: Option<Long>,
    /// The global position concerned.
    pub position: Option<Long>,
    /// What is wrong, in words.
    pub message: String,
}

impl From<crate::audit::verify::VerifyReport> for Verification {
    fn from(report: crate::audit::verify::VerifyReport) -> Self {
        Self {
            intact: report.is_intact(),
            problems: report
                .problems
                .iter()
                .map(|p| {
                    let (stream, version, position) = p.location();
                    VerificationProblem {
                        kind: serde_json::to_value(p)
                            .ok()
                            .and_then(|v| v["kind"].as_str().map(str::to_owned))
                            .unwrap_or_default(),
                        stream: stream.map(|s| s.to_string()),
                        version: version.map(Long::from),
                        position: position.map(Long::from),
                        message: p.to_string(),
                    }
                })
                .collect(),
            scope: report.scope,
            events: report.events,
            streams: report.streams,
            head_position: report.head_position.into(),
        }
    }
}

/// A rebuild that started (`rebuildReadModels`).
#[derive(Debug, Clone, SimpleObject)]
pub struct RebuildStarted {
    /// The rules it rebuilds with.
    pub rules_id: String,
    /// Their hash.
    pub rules_hash: String,
}

/// What a mutation stored.
#[derive(Debug, Clone, SimpleObject)]
pub struct CommandResult {
    /// The appended events.
    pub events: Vec<EventView>,
    /// The customer stream's version afterwards (next `expectedVersion`).
    pub version: Long,
}

/// The read side.
pub struct Query;

#[Object]
impl Query {
    /// One customer, as of `asOf` (default: all events). Null when unknown.
    #[graphql(guard = "RoleGuard::new(Role::App)")]
    async fn customer(
        &self,
        ctx: &Context<'_>,
        id: String,
        as_of: Option<DateTime<Utc>>,
    ) -> async_graphql::Result<Option<CustomerView>> {
        let id = parse_customer("id", &id)?;
        services(ctx)
            .read_models
            .customer(&id, as_of)
            .await
            .map_err(read_error)
    }

    /// Customers, a page at a time (Relay connection). `first` is at most 100.
    #[graphql(guard = "RoleGuard::new(Role::App)")]
    async fn customers(
        &self,
        ctx: &Context<'_>,
        filter: Option<CustomerFilter>,
        #[graphql(default = 20)] first: i32,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, CustomerView>> {
        let first = limits::page_size("first", first)?;
        let page = services(ctx)
            .read_models
            .customers(&filter.unwrap_or_default(), first, after.as_deref())
            .await
            .map_err(read_error)?;
        let mut connection = Connection::new(after.is_some(), page.has_next_page);
        connection.edges.extend(
            page.items
                .into_iter()
                .map(|(cursor, view)| Edge::new(cursor, view)),
        );
        Ok(connection)
    }

    /// A customer's raw events after version `after` (Relay connection;
    /// cursors are stream versions). Auditors and admins only.
    #[graphql(guard = "RoleGuard::new(Role::Auditor)")]
    async fn events(
        &self,
        ctx: &Context<'_>,
        customer_id: String,
        after: Option<String>,
        #[graphql(default = 50)] first: i32,
    ) -> async_graphql::Result<Connection<String, EventView>> {
        let customer = parse_customer("customerId", &customer_id)?;
        let first = limits::page_size("first", first)?;
        let after_version = match &after {
            Some(cursor) => cursor
                .parse::<u64>()
                .map_err(|_| bad_input("after", "is not a cursor this API issued"))?,
            None => 0,
        };
        let mut events = services(ctx)
            .store
            .read_stream(
                &customer.stream_id(),
                ReadStream {
                    direction: Direction::Forwards,
                    from_version: Some(after_version + 1),
                    limit: first + 1,
                },
            )
            .await
            .map_err(|e| internal(&e))?;
        let has_next = events.len() > first;
        events.truncate(first);
        let mut connection = Connection::new(after_version > 0, has_next);
        connection.edges.extend(
            events
                .into_iter()
                .map(|e| Edge::new(e.version.to_string(), EventView::from(e))),
        );
        Ok(connection)
    }

    /// Recomputes hash chains and says whether the history was altered:
    /// one customer's stream with `customerId`, else the whole log with its
    /// global order (bounded by the request timeout — use `journey verify`
    /// for large stores). Auditors and admins only.
    #[graphql(guard = "RoleGuard::new(Role::Auditor)")]
    async fn verify(
        &self,
        ctx: &Context<'_>,
        customer_id: Option<String>,
    ) -> async_graphql::Result<Verification> {
        let store = services(ctx).store.clone();
        let report = match customer_id {
            Some(id) => {
                let customer = parse_customer("customerId", &id)?;
                crate::audit::verify::verify_customer(store.as_ref(), &customer).await
            }
            None => crate::audit::verify::verify_store(store, |_| {}).await,
        };
        match report {
            Ok(report) => Ok(Verification::from(report)),
            Err(crate::audit::verify::VerifyError::UnknownCustomer(id)) => Err(bad_input(
                "customerId",
                format!("no events for customer {id}"),
            )),
            Err(e) => {
                tracing::error!(error = %e, "verification could not run");
                Err(async_graphql::Error::new(
                    "verification could not read the store; see the server log",
                ))
            }
        }
    }

    /// Customers per lifecycle stage as of `asOf`. Null when not available
    /// until the projection is running.
    #[graphql(guard = "RoleGuard::new(Role::App)")]
    async fn stage_distribution(
        &self,
        ctx: &Context<'_>,
        as_of: Option<DateTime<Utc>>,
    ) -> async_graphql::Result<Option<Vec<StageCount>>> {
        services(ctx)
            .read_models
            .stage_distribution(as_of)
            .await
            .map_err(read_error)
    }

    /// Retention by acquisition cohort for cohorts starting in `[from, to)`.
    /// Null when not available until the projection is running.
    #[graphql(guard = "RoleGuard::new(Role::Analyst)")]
    async fn cohort_retention(
        &self,
        ctx: &Context<'_>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> async_graphql::Result<Option<Vec<CohortRow>>> {
        if to <= from {
            return Err(bad_input("to", "must be after `from`"));
        }
        services(ctx)
            .read_models
            .cohort_retention(from, to)
            .await
            .map_err(read_error)
    }

    /// Holdout validation of every churn signal, as `journey validate`:
    /// the ledger folded as of `calibrationEnd` (end of that UTC day), each
    /// customer scored, and compared with whether they bought again by
    /// `holdoutEnd`. `unit`: `day`, `week` or `month` (default: the rules').
    /// The report is JSON (see `BacktestReport` in the docs).
    #[graphql(guard = "RoleGuard::new(Role::Analyst)")]
    async fn validation(
        &self,
        ctx: &Context<'_>,
        calibration_end: chrono::NaiveDate,
        holdout_end: chrono::NaiveDate,
        unit: Option<String>,
    ) -> async_graphql::Result<Json<crate::backtest::BacktestReport>> {
        let s = services(ctx);
        let analysis = analysis(s);
        let request = crate::backtest::BacktestRequest {
            calibration_end,
            holdout_end,
            unit: parse_unit(unit.as_deref(), &analysis.rules)?,
        };
        crate::backtest::run(
            s.store.clone(),
            &analysis.rules,
            &analysis.churn_score,
            &request,
        )
        .await
        .map(Json)
        .map_err(backtest_error)
    }

    /// Everything the analysts' workbench (`/workbench`) charts, computed
    /// for the two dates as in `validation`; the same data `journey report`
    /// writes into its HTML file.
    #[graphql(guard = "RoleGuard::new(Role::Analyst)")]
    async fn workbench(
        &self,
        ctx: &Context<'_>,
        calibration_end: chrono::NaiveDate,
        holdout_end: chrono::NaiveDate,
        unit: Option<String>,
    ) -> async_graphql::Result<Json<crate::report::Workbench>> {
        let s = services(ctx);
        let analysis = analysis(s);
        let request = crate::report::ReportRequest {
            calibration_end,
            holdout_end,
            unit: parse_unit(unit.as_deref(), &analysis.rules)?,
        };
        crate::report::build(
            s.store.clone(),
            &analysis.rules,
            analysis.compare.as_ref(),
            &analysis.churn_score,
            &request,
        )
        .await
        .map(Json)
        .map_err(|e| match e {
            crate::report::ReportError::Backtest(e) => backtest_error(e),
            other => internal(&other),
        })
    }

    /// The store's head and each projection's checkpoint and lag.
    #[graphql(guard = "RoleGuard::new(Role::App)")]
    async fn projection_status(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<ProjectionStatus> {
        let mut status = services(ctx)
            .read_models
            .projection_status()
            .await
            .map_err(read_error)?;
        if let Some(control) = services(ctx).projections.get() {
            status.last_rebuild = control.last_rebuild();
            status.role = Some(control.role());
        }
        Ok(status)
    }
}

/// An amount in integer minor units.
#[derive(Debug, Clone, InputObject, serde::Serialize)]
pub struct MoneyInput {
    /// Minor units (cents for USD).
    pub minor: Long,
    /// ISO 4217 code, upper case.
    pub currency: String,
}

/// Personal data fields; absent ones are left unchanged.
#[derive(Debug, Clone, Default, InputObject, serde::Serialize)]
pub struct ProfileInput {
    /// Full name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// E-mail address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Phone number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// Postal address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// Registration.
#[derive(Debug, Clone, InputObject, serde::Serialize)]
pub struct RegisterCustomerInput {
    /// Acquisition channel, e.g. `paid_search`.
    pub channel: String,
    /// What acquiring the customer cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acquisition_cost: Option<MoneyInput>,
    /// Personal data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<ProfileInput>,
}

/// A consent purpose, e.g. `marketing_email`.
#[derive(Debug, Clone, InputObject, serde::Serialize)]
pub struct ConsentInput {
    /// What the consent covers.
    pub purpose: String,
}

/// A visit.
#[derive(Debug, Clone, InputObject, serde::Serialize)]
pub struct RecordSessionInput {
    /// Session identifier.
    pub session_id: String,
    /// `web`, `app`, `store`, ...
    pub channel: String,
    /// Length in seconds (not negative).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<i32>,
}

/// A cart left without checkout.
#[derive(Debug, Clone, InputObject, serde::Serialize)]
pub struct AbandonCartInput {
    /// Cart identifier.
    pub cart_id: String,
    /// Cart value.
    pub value: MoneyInput,
    /// Items in the cart (not negative).
    pub item_count: i32,
}

/// A purchase.
#[derive(Debug, Clone, InputObject, serde::Serialize)]
pub struct PlaceOrderInput {
    /// Order identifier, unique per customer.
    pub order_id: String,
    /// Order value.
    pub amount: MoneyInput,
    /// Items (at least 1).
    pub item_count: i32,
}

/// Whether a refund returns the whole remaining amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundKindInput {
    /// Exactly what the order has left.
    Full,
    /// Part of it.
    Partial,
}

/// A refund against an order.
#[derive(Debug, Clone, InputObject, serde::Serialize)]
pub struct RefundOrderInput {
    /// The order.
    pub order_id: String,
    /// Refund identifier.
    pub refund_id: String,
    /// Amount, at most what the order has left, in its currency.
    pub amount: MoneyInput,
    /// Full or partial.
    pub kind: RefundKindInput,
    /// Why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A complaint.
#[derive(Debug, Clone, InputObject, serde::Serialize)]
pub struct FileComplaintInput {
    /// Complaint identifier.
    pub complaint_id: String,
    /// Category, e.g. `delivery`.
    pub category: String,
    /// Free text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Resolution of an open complaint.
#[derive(Debug, Clone, InputObject, serde::Serialize)]
pub struct ResolveComplaintInput {
    /// Complaint identifier.
    pub complaint_id: String,
    /// How it was resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
}

/// Points spent.
#[derive(Debug, Clone, InputObject, serde::Serialize)]
pub struct RedeemPointsInput {
    /// Redemption identifier.
    pub redemption_id: String,
    /// Points (positive, at most the balance).
    pub points: Long,
    /// What they were spent on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward: Option<String>,
}

/// A manual balance correction.
#[derive(Debug, Clone, InputObject, serde::Serialize)]
pub struct AdjustPointsInput {
    /// Adjustment identifier.
    pub adjustment_id: String,
    /// Points added (positive) or removed (negative).
    pub points: Long,
    /// Why.
    pub reason: String,
}

/// A campaign reaching the customer.
#[derive(Debug, Clone, InputObject, serde::Serialize)]
pub struct TouchCampaignInput {
    /// Campaign identifier.
    pub campaign_id: String,
    /// Channel; needs consent `marketing_<channel>`.
    pub channel: String,
}

/// Satisfaction scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SurveyMetricInput {
    /// Net Promoter Score, 0–10.
    Nps,
    /// Customer satisfaction, 1–5.
    Csat,
}

/// A survey answer.
#[derive(Debug, Clone, InputObject, serde::Serialize)]
pub struct AnswerSurveyInput {
    /// Survey identifier.
    pub survey_id: String,
    /// Scale.
    pub metric: SurveyMetricInput,
    /// Score on the scale.
    pub score: i32,
}

/// A support ticket.
#[derive(Debug, Clone, InputObject, serde::Serialize)]
pub struct OpenTicketInput {
    /// Ticket identifier.
    pub ticket_id: String,
    /// Subject line.
    pub subject: String,
}

/// Closing an open ticket.
#[derive(Debug, Clone, InputObject, serde::Serialize)]
pub struct CloseTicketInput {
    /// Ticket identifier.
    pub ticket_id: String,
    /// Whether the problem was solved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub solved: Option<bool>,
}

/// An outage affecting the customer.
#[derive(Debug, Clone, InputObject, serde::Serialize)]
pub struct StartOutageInput {
    /// Outage identifier.
    pub outage_id: String,
    /// Affected service.
    pub service: String,
}

/// The end of an ongoing outage.
#[derive(Debug, Clone, InputObject, serde::Serialize)]
pub struct EndOutageInput {
    /// Outage identifier.
    pub outage_id: String,
}

/// A subscription.
#[derive(Debug, Clone, InputObject, serde::Serialize)]
pub struct StartSubscriptionInput {
    /// Subscription identifier.
    pub subscription_id: String,
    /// Plan name.
    pub plan: String,
    /// Recurring price.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price: Option<MoneyInput>,
}

/// Cancelling an active subscription.
#[derive(Debug, Clone, InputObject, serde::Serialize)]
pub struct CancelSubscriptionInput {
    /// Subscription identifier.
    pub subscription_id: String,
    /// Why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Runs one command for the calling key and shapes the result.
async fn record(
    ctx: &Context<'_>,
    customer_id: String,
    occurred_at: DateTime<Utc>,
    expected_version: Option<Long>,
    event: Result<DomainEvent, ValidationError>,
) -> async_graphql::Result<CommandResult> {
    let customer = parse_customer("customerId", &customer_id)?;
    let expected_version = expected_version
        .map(|v| u64::try_from(v.0))
        .transpose()
        .map_err(|_| bad_input("expectedVersion", "must be 0 (no stream yet) or more"))?;
    let event = event.map_err(|e| bad_input(&e.field, e.reason))?;
    let caller = ctx.data::<Caller>()?;
    let svc = services(ctx);
    let stored = svc
        .commands
        .execute(Command {
            customer,
            occurred_at,
            expected_version,
            event,
            actor: caller.name.clone(),
            source: "graphql".into(),
        })
        .await
        .map_err(command_error)?;
    svc.metrics.events_appended(1);
    Ok(CommandResult {
        version: stored.version.into(),
        events: vec![stored.into()],
    })
}

/// The event a mutation's input describes, through the conversion every
/// way in shares ([`DomainEvent::from_json`]): the input serializes to the
/// payload's own shape (snake_case fields, the same money object), and a
/// value that does not fit is refused naming `input.<field>` in the API's
/// camelCase.
fn input_event<T: serde::Serialize>(
    event_type: &str,
    input: &T,
) -> Result<DomainEvent, ValidationError> {
    let payload =
        serde_json::to_value(input).map_err(|e| ValidationError::new("input", e.to_string()))?;
    DomainEvent::from_json(event_type, None, &payload).map_err(|e| match e {
        crate::domain::DecodeError::Field { path, message, .. } => {
            ValidationError::new(format!("input.{}", camel_path(&path)), message)
        }
        other => ValidationError::new("input", other.to_string()),
    })
}

/// The write side: one mutation per interaction. Each takes the customer,
/// when it happened (RFC 3339, not more than a day ahead), an optional
/// `expectedVersion` (the stream version last read; a mismatch is
/// `CONCURRENCY_CONFLICT`) and the interaction's fields.
pub struct Mutation;

#[Object]
impl Mutation {
    /// Erases a customer's personal data by destroying their key
    /// (crypto-shredding) and records `PersonalDataErased` (who: the calling
    /// key, why: `reason`). The events stay and still verify; profile fields
    /// read as erased from then on. Admin only.
    #[graphql(guard = "RoleGuard::new(Role::Admin)")]
    async fn erase_customer(
        &self,
        ctx: &Context<'_>,
        customer_id: String,
        reason: String,
    ) -> async_graphql::Result<ErasureResult> {
        let customer = parse_customer("customerId", &customer_id)?;
        if reason.trim().is_empty() {
            return Err(bad_input("reason", "must say why (legal basis or ticket)"));
        }
        let caller = ctx.data::<Caller>()?;
        let svc = services(ctx);
        let Some(vault) = &svc.vault else {
            return Err(bad_input(
                "customerId",
                "this store keeps no personal data keys, so there is nothing to erase",
            ));
        };
        let report = crate::privacy::erase_customer(
            svc.store.as_ref(),
            vault,
            &customer,
            &caller.name,
            &reason,
        )
        .await
        .map_err(|e| match e {
            crate::privacy::PrivacyError::UnknownCustomer(_) => {
                coded("NOT_FOUND", format!("customerId: {e}"))
            }
            crate::privacy::PrivacyError::Invalid(e) => bad_input(&e.field, e.reason),
            e => internal(&e),
        })?;
        Ok(ErasureResult {
            customer_id: report.customer_id,
            event_version: report.event_version.into(),
            event_position: report.event_position.into(),
        })
    }

    /// Rebuilds every read model from the full history under the server's
    /// rules, in the background, and switches to the new version when done
    /// (watch `projectionStatus`). Recorded as a `ReadModelsRebuilt` event in
    /// the admin stream: who (the calling key), when, why (`reason`).
    /// Analysts and above.
    #[graphql(guard = "RoleGuard::new(Role::Analyst)")]
    async fn rebuild_read_models(
        &self,
        ctx: &Context<'_>,
        reason: String,
    ) -> async_graphql::Result<RebuildStarted> {
        if reason.trim().is_empty() {
            return Err(bad_input("reason", "must say why (e.g. the rules change)"));
        }
        let caller = ctx.data::<Caller>()?;
        let Some(control) = services(ctx).projections.get() else {
            return Err(coded(
                "PRECONDITION_UNAVAILABLE",
                "this server does not run the projections, so there is nothing to rebuild",
            ));
        };
        match control.rebuild(&caller.name, &reason) {
            Ok(_) => Ok(RebuildStarted {
                rules_id: control.rules().rules_id(),
                rules_hash: control.rules().hash.clone(),
            }),
            Err(RebuildRequestError::Invalid(e)) => Err(bad_input(&e.field, e.reason)),
            Err(e @ RebuildRequestError::AlreadyRunning) => {
                Err(coded("REBUILD_RUNNING", e.to_string()))
            }
        }
    }

    /// A customer joins.
    #[graphql(guard = "RoleGuard::new(Role::App)")]
    async fn register_customer(
        &self,
        ctx: &Context<'_>,
        customer_id: String,
        occurred_at: DateTime<Utc>,
        expected_version: Option<Long>,
        input: RegisterCustomerInput,
    ) -> async_graphql::Result<CommandResult> {
        let event = input_event("CustomerRegistered", &input);
        record(ctx, customer_id, occurred_at, expected_version, event).await
    }

    /// Profile fields change.
    #[graphql(guard = "RoleGuard::new(Role::App)")]
    async fn change_profile(
        &self,
        ctx: &Context<'_>,
        customer_id: String,
        occurred_at: DateTime<Utc>,
        expected_version: Option<Long>,
        input: ProfileInput,
    ) -> async_graphql::Result<CommandResult> {
        let event = input_event("ProfileChanged", &serde_json::json!({ "profile": input }));
        record(ctx, customer_id, occurred_at, expected_version, event).await
    }

    /// Consent given for a purpose.
    #[graphql(guard = "RoleGuard::new(Role::App)")]
    async fn give_consent(
        &self,
        ctx: &Context<'_>,
        customer_id: String,
        occurred_at: DateTime<Utc>,
        expected_version: Option<Long>,
        input: ConsentInput,
    ) -> async_graphql::Result<CommandResult> {
        let event = input_event("ConsentGiven", &input);
        record(ctx, customer_id, occurred_at, expected_version, event).await
    }

    /// Consent withdrawn for a purpose.
    #[graphql(guard = "RoleGuard::new(Role::App)")]
    async fn withdraw_consent(
        &self,
        ctx: &Context<'_>,
        customer_id: String,
        occurred_at: DateTime<Utc>,
        expected_version: Option<Long>,
        input: ConsentInput,
    ) -> async_graphql::Result<CommandResult> {
        let event = input_event("ConsentWithdrawn", &input);
        record(ctx, customer_id, occurred_at, expected_version, event).await
    }

    /// A visit or session.
    #[graphql(guard = "RoleGuard::new(Role::App)")]
    async fn record_session(
        &self,
        ctx: &Context<'_>,
        customer_id: String,
        occurred_at: DateTime<Utc>,
        expected_version: Option<Long>,
        input: RecordSessionInput,
    ) -> async_graphql::Result<CommandResult> {
        let event = input_event("SessionRecorded", &input);
        record(ctx, customer_id, occurred_at, expected_version, event).await
    }

    /// A cart left without checkout.
    #[graphql(guard = "RoleGuard::new(Role::App)")]
    async fn abandon_cart(
        &self,
        ctx: &Context<'_>,
        customer_id: String,
        occurred_at: DateTime<Utc>,
        expected_version: Option<Long>,
        input: AbandonCartInput,
    ) -> async_graphql::Result<CommandResult> {
        let event = input_event("CartAbandoned", &input);
        record(ctx, customer_id, occurred_at, expected_version, event).await
    }

    /// A purchase; the customer must be registered.
    #[graphql(guard = "RoleGuard::new(Role::App)")]
    async fn place_order(
        &self,
        ctx: &Context<'_>,
        customer_id: String,
        occurred_at: DateTime<Utc>,
        expected_version: Option<Long>,
        input: PlaceOrderInput,
    ) -> async_graphql::Result<CommandResult> {
        let event = input_event("OrderPlaced", &input);
        record(ctx, customer_id, occurred_at, expected_version, event).await
    }

    /// A refund of at most what the order has left.
    #[graphql(guard = "RoleGuard::new(Role::App)")]
    async fn refund_order(
        &self,
        ctx: &Context<'_>,
        customer_id: String,
        occurred_at: DateTime<Utc>,
        expected_version: Option<Long>,
        input: RefundOrderInput,
    ) -> async_graphql::Result<CommandResult> {
        let event = input_event("OrderRefunded", &input);
        record(ctx, customer_id, occurred_at, expected_version, event).await
    }

    /// A complaint filed.
    #[graphql(guard = "RoleGuard::new(Role::App)")]
    async fn file_complaint(
        &self,
        ctx: &Context<'_>,
        customer_id: String,
        occurred_at: DateTime<Utc>,
        expected_version: Option<Long>,
        input: FileComplaintInput,
    ) -> async_graphql::Result<CommandResult> {
        let event = input_event("ComplaintFiled", &input);
        record(ctx, customer_id, occurred_at, expected_version, event).await
    }

    /// An open complaint resolved.
    #[graphql(guard = "RoleGuard::new(Role::App)")]
    async fn resolve_complaint(
        &self,
        ctx: &Context<'_>,
        customer_id: String,
        occurred_at: DateTime<Utc>,
        expected_version: Option<Long>,
        input: ResolveComplaintInput,
    ) -> async_graphql::Result<CommandResult> {
        let event = input_event("ComplaintResolved", &input);
        record(ctx, customer_id, occurred_at, expected_version, event).await
    }

    /// Points spent; at most the current balance (needs the loyalty
    /// projection: `PRECONDITION_UNAVAILABLE` without it).
    #[graphql(guard = "RoleGuard::new(Role::App)")]
    async fn redeem_points(
        &self,
        ctx: &Context<'_>,
        customer_id: String,
        occurred_at: DateTime<Utc>,
        expected_version: Option<Long>,
        input: RedeemPointsInput,
    ) -> async_graphql::Result<CommandResult> {
        let event = input_event("PointsRedeemed", &input);
        record(ctx, customer_id, occurred_at, expected_version, event).await
    }

    /// A manual points correction.
    #[graphql(guard = "RoleGuard::new(Role::App)")]
    async fn adjust_points(
        &self,
        ctx: &Context<'_>,
        customer_id: String,
        occurred_at: DateTime<Utc>,
        expected_version: Option<Long>,
        input: AdjustPointsInput,
    ) -> async_graphql::Result<CommandResult> {
        let event = input_event("PointsAdjusted", &input);
        record(ctx, customer_id, occurred_at, expected_version, event).await
    }

    /// A campaign reached the customer; needs consent `marketing_<channel>`.
    #[graphql(guard = "RoleGuard::new(Role::App)")]
    async fn touch_campaign(
        &self,
        ctx: &Context<'_>,
        customer_id: String,
        occurred_at: DateTime<Utc>,
        expected_version: Option<Long>,
        input: TouchCampaignInput,
    ) -> async_graphql::Result<CommandResult> {
        let event = input_event("CampaignTouched", &input);
        record(ctx, customer_id, occurred_at, expected_version, event).await
    }

    /// A survey answer.
    #[graphql(guard = "RoleGuard::new(Role::App)")]
    async fn answer_survey(
        &self,
        ctx: &Context<'_>,
        customer_id: String,
        occurred_at: DateTime<Utc>,
        expected_version: Option<Long>,
        input: AnswerSurveyInput,
    ) -> async_graphql::Result<CommandResult> {
        let event = input_event("SurveyAnswered", &input);
        record(ctx, customer_id, occurred_at, expected_version, event).await
    }

    /// A support ticket opened.
    #[graphql(guard = "RoleGuard::new(Role::App)")]
    async fn open_ticket(
        &self,
        ctx: &Context<'_>,
        customer_id: String,
        occurred_at: DateTime<Utc>,
        expected_version: Option<Long>,
        input: OpenTicketInput,
    ) -> async_graphql::Result<CommandResult> {
        let event = input_event("SupportTicketOpened", &input);
        record(ctx, customer_id, occurred_at, expected_version, event).await
    }

    /// An open ticket closed.
    #[graphql(guard = "RoleGuard::new(Role::App)")]
    async fn close_ticket(
        &self,
        ctx: &Context<'_>,
        customer_id: String,
        occurred_at: DateTime<Utc>,
        expected_version: Option<Long>,
        input: CloseTicketInput,
    ) -> async_graphql::Result<CommandResult> {
        let event = input_event("SupportTicketClosed", &input);
        record(ctx, customer_id, occurred_at, expected_version, event).await
    }

    /// A service the customer relies on went down.
    #[graphql(guard = "RoleGuard::new(Role::App)")]
    async fn start_outage(
        &self,
        ctx: &Context<'_>,
        customer_id: String,
        occurred_at: DateTime<Utc>,
        expected_version: Option<Long>,
        input: StartOutageInput,
    ) -> async_graphql::Result<CommandResult> {
        let event = input_event("ServiceOutageStarted", &input);
        record(ctx, customer_id, occurred_at, expected_version, event).await
    }

    /// An ongoing outage ended.
    #[graphql(guard = "RoleGuard::new(Role::App)")]
    async fn end_outage(
        &self,
        ctx: &Context<'_>,
        customer_id: String,
        occurred_at: DateTime<Utc>,
        expected_version: Option<Long>,
        input: EndOutageInput,
    ) -> async_graphql::Result<CommandResult> {
        let event = input_event("ServiceOutageEnded", &input);
        record(ctx, customer_id, occurred_at, expected_version, event).await
    }

    /// A subscription began.
    #[graphql(guard = "RoleGuard::new(Role::App)")]
    async fn start_subscription(
        &self,
        ctx: &Context<'_>,
        customer_id: String,
        occurred_at: DateTime<Utc>,
        expected_version: Option<Long>,
        input: StartSubscriptionInput,
    ) -> async_graphql::Result<CommandResult> {
        let event = input_event("SubscriptionStarted", &input);
        record(ctx, customer_id, occurred_at, expected_version, event).await
    }

    /// An active subscription cancelled.
    #[graphql(guard = "RoleGuard::new(Role::App)")]
    async fn cancel_subscription(
        &self,
        ctx: &Context<'_>,
        customer_id: String,
        occurred_at: DateTime<Utc>,
        expected_version: Option<Long>,
        input: CancelSubscriptionInput,
    ) -> async_graphql::Result<CommandResult> {
        let event = input_event("SubscriptionCancelled", &input);
        record(ctx, customer_id, occurred_at, expected_version, event).await
    }
}

/// Live feeds over the graphql-transport-ws protocol at `/graphql/ws`.
pub struct Subscription;

#[Subscription]
impl Subscription {
    /// Every appended event from global position `fromPosition` (inclusive;
    /// default: only events appended from now on), optionally for one
    /// customer. Catches up, then follows live. Auditors and admins only.
    #[graphql(guard = "RoleGuard::new(Role::Auditor)")]
    async fn event_appended(
        &self,
        ctx: &Context<'_>,
        from_position: Option<u64>,
        customer_id: Option<String>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<EventView>>> {
        let store = services(ctx).store.clone();
        let only = customer_id
            .map(|c| parse_customer("customerId", &c).map(|c| c.stream_id()))
            .transpose()?;
        let from = match from_position {
            Some(p) => p,
            None => store.head_position().await.map_err(|e| internal(&e))? + 1,
        };
        Ok(
            crate::store::subscribe_all(store, from).filter_map(move |item| {
                let only = only.clone();
                async move {
                    match item {
                        Ok(e) if only.as_ref().is_some_and(|s| *s != e.stream_id) => None,
                        Ok(e) => Some(Ok(EventView::from(e))),
                        Err(e) => Some(Err(internal(&e))),
                    }
                }
            }),
        )
    }

    /// Alerts as the projections raise them (nothing until the alert
    /// projection is running and feeding the broadcast).
    #[graphql(guard = "RoleGuard::new(Role::App)")]
    async fn alert_raised(&self, ctx: &Context<'_>) -> impl Stream<Item = Alert> {
        services(ctx).live.alerts()
    }

    /// Lifecycle stage transitions as the projections compute them (nothing
    /// until the lifecycle projection is running and feeding the broadcast).
    #[graphql(guard = "RoleGuard::new(Role::App)")]
    async fn stage_changed(&self, ctx: &Context<'_>) -> impl Stream<Item = StageTransition> {
        services(ctx).live.stage_transitions()
    }
}

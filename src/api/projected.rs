//! [`ReadModels`] backed by the running projections: what
//! [`EventFoldReadModels`] answers from the customer's events (profile,
//! orders, consents), plus everything the rules decide — lifecycle stage and
//! history, loyalty tier, balance and lots, RFM, CLV and alerts — read from
//! the active read-model version ([`crate::projections::query`],
//! [`crate::projections::analytics`]).
//!
//! [`start_projections`] is how a server gets there: it rebuilds when no
//! version is active yet, then follows the store live and publishes each
//! batch's new stage transitions and alerts to the GraphQL subscriptions.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Duration, TimeZone, Utc};

use super::live::LiveFeeds;
use super::read_models::{
    Alert, Clv, CohortRow, CustomerFilter, CustomerPage, CustomerView, EventFoldReadModels,
    Loyalty, MoneyView, PointsLot, ProjectionState, ProjectionStatus, ReadModelError,
    ReadModelSource, ReadModels, RebuildRun, Rfm, ServerRole, StageChange, StageCount,
    StageTransition, UnavailableFigure,
};
use crate::domain::CustomerId;
use crate::projections::analytics;
use crate::projections::cohorts::YearMonth;
use crate::projections::leadership::{self, ProjectorLock};
use crate::projections::live_feed::{FeedItem, FeedTail, FEED_RETENTION};
use crate::projections::query::{self, CustomerView as ProjectedView};
use crate::projections::rules::RuleSet;
use crate::projections::runner::{self, Committed, RebuildOptions, RunnerError};
use crate::projections::storage::{CustomerCriteria, ReadModelDb, VersionInfo, VersionStatus};
use crate::projections::tier_bounds::TierBoundsCache;
use crate::store::{EventStore, ReadStream};

/// How long queries trust the active version number they last read: a
/// newly activated version (a rebuild finished) answers within this long.
pub const ACTIVE_VERSION_TTL: std::time::Duration = std::time::Duration::from_millis(250);

/// Alerts count as open for this many days after they fired.
pub const OPEN_ALERT_DAYS: i64 = 90;

impl From<RunnerError> for ReadModelError {
    fn from(e: RunnerError) -> Self {
        match e {
            RunnerError::Store(s) => ReadModelError::Store(s),
            RunnerError::NoActiveVersion => ReadModelError::Unavailable {
                what: "projected figures (no read-model version is active yet)".into(),
            },
            other => ReadModelError::Projection(other.to_string()),
        }
    }
}

/// Read models answered by the projections.
pub struct ProjectedReadModels {
    store: Arc<dyn EventStore>,
    db: ReadModelDb,
    /// Value-tier bounds of past month ends (computed once, stored).
    tier_bounds: TierBoundsCache,
    events: EventFoldReadModels,
    /// The active version and its parsed rules, refreshed when another
    /// version becomes active (parsing the rules on every query costs more
    /// than the query), and when the active version number was last read.
    active: tokio::sync::RwLock<Option<(VersionInfo, Arc<RuleSet>, std::time::Instant)>>,
}

/// "Now", to the microsecond like every stored instant.
fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).expect("now is in range")
}

fn parse_instant(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

impl ProjectedReadModels {
    /// Read models over `store` and the read-model database `db`; sealed
    /// profile fields are opened with `vault`.
    pub fn new(
        store: Arc<dyn EventStore>,
        db: ReadModelDb,
        vault: Option<Arc<crate::privacy::Vault>>,
    ) -> Self {
        Self {
            events: EventFoldReadModels::new(store.clone()).with_vault(vault),
            store,
            db,
            tier_bounds: TierBoundsCache::default(),
            active: tokio::sync::RwLock::new(None),
        }
    }

    /// Stores the value-tier bounds queries compute through `writer` (the
    /// query pool may be read-only), so each month end is computed once.
    pub fn with_writer(mut self, writer: ReadModelDb) -> Self {
        self.tier_bounds = TierBoundsCache::new(Some(writer));
        self
    }

    /// The active version and its rules, reading and parsing them only
    /// when another version became active (the version's checkpoint in the
    /// answer is the one read then).
    async fn active(&self) -> Result<(VersionInfo, Arc<RuleSet>), RunnerError> {
        if let Some((cached, rules, checked)) = self.active.read().await.as_ref() {
            if checked.elapsed() < ACTIVE_VERSION_TTL {
                return Ok((cached.clone(), rules.clone()));
            }
        }
        let active = self
            .db
            .active_model_version()
            .await?
            .ok_or(RunnerError::NoActiveVersion)?;
        if let Some((cached, rules, checked)) = self.active.write().await.as_mut() {
            if cached.model_version == active {
                *checked = std::time::Instant::now();
                return Ok((cached.clone(), rules.clone()));
            }
        }
        let current = self
            .db
            .latest_with_status(VersionStatus::Active)
            .await?
            .ok_or(RunnerError::NoActiveVersion)?;
        let rules: Arc<RuleSet> = Arc::new(
            serde_json::from_str(&current.rules_json)
                .map_err(|e| RunnerError::Rules(e.to_string()))?,
        );
        *self.active.write().await =
            Some((current.clone(), rules.clone(), std::time::Instant::now()));
        Ok((current, rules))
    }

    async fn projected(
        &self,
        customer: &CustomerId,
        at: DateTime<Utc>,
    ) -> Result<Option<ProjectedView>, RunnerError> {
        let (version, rules) = self.active().await?;
        query::customer_in_version(
            self.store.clone(),
            &self.db,
            &self.tier_bounds,
            &version,
            &rules,
            customer,
            at,
        )
        .await
    }

    /// Adds the projected figures to a view folded from events. With an
    /// `explicit` instant, population figures computed for another instant
    /// are left out and listed in `unavailable`.
    fn fill(
        view: &mut CustomerView,
        projected: ProjectedView,
        as_of: DateTime<Utc>,
        explicit: bool,
    ) {
        view.source = ReadModelSource::Projection;
        view.as_of = as_of;
        view.stage = projected.stage.clone();
        view.value_tier = projected.value_tier.clone();
        view.value_tier_as_of = projected
            .value_tier_as_of
            .as_deref()
            .and_then(parse_instant);
        let snapshot = projected
            .population_snapshot
            .as_deref()
            .and_then(parse_instant);
        let population_missing = match snapshot {
            None => Some(
                "no population snapshot yet (the population refit has not run on this \
                 read-model version)"
                    .to_owned(),
            ),
            Some(snap) if explicit && snap != as_of => Some(format!(
                "computed only at the population snapshot {} (they rank or fit every \
                 customer); ask with asOf: \"{}\", or compute them for any instant with \
                 `journey clv score --calibration-end`",
                snap.to_rfc3339(),
                snap.to_rfc3339(),
            )),
            Some(_) => None,
        };
        view.stage_history = Some(
            projected
                .stage_history
                .iter()
                .filter_map(|t| {
                    Some(StageChange {
                        stage: t.to.clone(),
                        entered_at: parse_instant(&t.at)?,
                        reason: t.cause.clone(),
                    })
                })
                .collect(),
        );
        let loyalty = &projected.loyalty;
        view.tier = Some(loyalty.tier.as_str().to_owned());
        view.loyalty = Some(Loyalty {
            balance: loyalty.balance.into(),
            lots: loyalty
                .lots
                .iter()
                .map(|lot| PointsLot {
                    points: lot.remaining.into(),
                    earned_at: lot.earned_at,
                    expires_at: Some(lot.expires_at),
                })
                .collect(),
        });
        let open_since = as_of - Duration::days(OPEN_ALERT_DAYS);
        let mut alerts: Vec<Alert> = projected
            .alerts
            .iter()
            .filter(|a| a.at >= open_since)
            .map(|a| Alert {
                id: format!(
                    "{}:{}:{}",
                    view.id,
                    a.rule.as_str(),
                    a.at.timestamp_micros()
                ),
                customer_id: view.id.clone(),
                kind: a.rule.as_str().to_owned(),
                message: a.detail.clone(),
                raised_at: a.at,
            })
            .collect();
        if let Some(population) = &projected.population {
            if let Some(value_alert) = &population.value_alert {
                if let Some(at) = parse_instant(&value_alert.at) {
                    alerts.push(Alert {
                        id: format!("{}:high_value_at_risk:{}", view.id, at.timestamp_micros()),
                        customer_id: view.id.clone(),
                        kind: "high_value_at_risk".into(),
                        message: format!(
                            "{} value tier customer at risk since {} ({})",
                            value_alert.value_tier, value_alert.at, value_alert.cause
                        ),
                        raised_at: at,
                    });
                }
            }
            if let Some(scores) = &population.scores {
                if let (Some([r, f, m]), Some(segment)) =
                    (scores.figures.rfm, scores.figures.rfm_segment.clone())
                {
                    view.rfm = Some(Rfm {
                        recency: r as i32,
                        frequency: f as i32,
                        monetary: m as i32,
                        segment,
                        as_of: snapshot.unwrap_or(as_of),
                    });
                }
                if let (Some(p_alive), Some(purchases)) =
                    (scores.figures.p_alive, scores.figures.expected_purchases)
                {
                    view.clv = Some(Clv {
                        expected_value: scores.figures.clv_minor.map(|minor| MoneyView {
                            minor: minor.into(),
                            currency: scores.currency.clone(),
                        }),
                        probability_alive: p_alive,
                        expected_purchases: purchases,
                        horizon_days: scores.horizon_days,
                        as_of: snapshot.unwrap_or(as_of),
                    });
                }
            }
        }
        view.alerts = Some(alerts);
        if let Some(reason) = population_missing {
            view.rfm = None;
            view.clv = None;
            for field in ["rfm", "clv"] {
                view.unavailable.push(UnavailableFigure {
                    field: field.into(),
                    reason: reason.clone(),
                });
            }
        }
    }
}

#[async_trait]
impl ReadModels for ProjectedReadModels {
    async fn customer(
        &self,
        id: &CustomerId,
        as_of: Option<DateTime<Utc>>,
    ) -> Result<Option<CustomerView>, ReadModelError> {
        let at = as_of.unwrap_or_else(now);
        // The stream is read once, for both the event-folded half and the
        // projected one, concurrently with the customer's rows.
        let active = match self.active().await {
            Ok(active) => Some(active),
            Err(RunnerError::NoActiveVersion) => None,
            Err(e) => return Err(e.into()),
        };
        let stream_id = id.stream_id();
        let stream = self
            .store
            .read_stream(&stream_id, ReadStream::all_forwards());
        let (recorded, rows) = match &active {
            Some((version, _)) => {
                let (recorded, rows) = tokio::join!(
                    stream,
                    query::CustomerRows::read(&self.db, version.model_version, id)
                );
                (recorded?, Some(rows?))
            }
            None => (stream.await?, None),
        };
        let Some(mut view) = self
            .events
            .customer_from_events(id, &recorded, as_of)
            .await?
        else {
            return Ok(None);
        };
        if let (Some((version, rules)), Some(rows)) = (active, rows) {
            let projected = query::customer_from_parts(
                &self.db,
                &self.tier_bounds,
                &version,
                &rules,
                id,
                &recorded,
                rows,
                at,
            )
            .await?;
            if let Some(projected) = projected {
                Self::fill(&mut view, projected, at, as_of.is_some());
            }
        }
        Ok(Some(view))
    }

    async fn customers(
        &self,
        filter: &CustomerFilter,
        first: usize,
        after: Option<&str>,
    ) -> Result<CustomerPage, ReadModelError> {
        let (version, _) = runner::active(&self.db).await?;
        let snapshot = self
            .db
            .population_as_of(version.model_version)
            .await
            .map_err(RunnerError::from)?
            .unwrap_or(0);
        let criteria = CustomerCriteria {
            stage: filter.stage.clone(),
            loyalty_tier: filter.tier.clone(),
            rfm_segment: filter.rfm_segment.clone(),
            min_clv: filter.min_clv.map(i64::from),
            max_clv: filter.max_clv.map(i64::from),
            has_alert: filter.has_alert,
            alert_since_us: snapshot
                - Duration::days(OPEN_ALERT_DAYS)
                    .num_microseconds()
                    .unwrap_or(0),
        };
        let ids = self
            .db
            .filter_customers(version.model_version, &criteria, after, first as i64 + 1)
            .await
            .map_err(RunnerError::from)?;
        let has_next_page = ids.len() > first;
        let mut items = Vec::with_capacity(first);
        for id in ids.into_iter().take(first) {
            let customer =
                CustomerId::parse(&id).map_err(|_| ReadModelError::BadCursor(id.clone()))?;
            if let Some(view) = self.customer(&customer, None).await? {
                items.push((id, view));
            }
        }
        Ok(CustomerPage {
            items,
            has_next_page,
        })
    }

    async fn stage_distribution(
        &self,
        as_of: Option<DateTime<Utc>>,
    ) -> Result<Option<Vec<StageCount>>, ReadModelError> {
        let counts =
            analytics::stage_distribution(self.store.clone(), &self.db, as_of.unwrap_or_else(now))
                .await?;
        Ok(Some(
            counts
                .into_iter()
                .map(|c| StageCount {
                    stage: c.stage,
                    customers: c.customers.max(0) as u64,
                })
                .collect(),
        ))
    }

    async fn cohort_retention(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Option<Vec<CohortRow>>, ReadModelError> {
        // Cohorts are calendar months: those starting in [from, to).
        let first = YearMonth::of(from);
        let first = if Utc
            .with_ymd_and_hms(first.year, first.month, 1, 0, 0, 0)
            .single()
            .is_some_and(|start| start < from)
        {
            first.plus(1)
        } else {
            first
        };
        let table = analytics::cohort_table(&self.db, Some(first), Some(YearMonth::of(to))).await?;
        let to_inclusive = Utc
            .with_ymd_and_hms(YearMonth::of(to).year, YearMonth::of(to).month, 1, 0, 0, 0)
            .single()
            .is_some_and(|start| start < to);
        let extra = if to_inclusive {
            analytics::cohort_table(
                &self.db,
                Some(YearMonth::of(to)),
                Some(YearMonth::of(to).plus(1)),
            )
            .await?
            .cohorts
        } else {
            Vec::new()
        };
        Ok(Some(
            table
                .cohorts
                .into_iter()
                .chain(extra)
                .filter_map(|row| {
                    let start = Utc
                        .with_ymd_and_hms(row.cohort.year, row.cohort.month, 1, 0, 0, 0)
                        .single()?;
                    Some(CohortRow {
                        cohort_start: start,
                        size: row.customers,
                        retention: row.months.iter().skip(1).map(|m| m.retention).collect(),
                    })
                })
                .collect(),
        ))
    }

    async fn projection_status(&self) -> Result<ProjectionStatus, ReadModelError> {
        let head_position = self.store.head_position().await?;
        let (version, rules) = match runner::active(&self.db).await {
            Ok(active) => active,
            Err(RunnerError::NoActiveVersion) => {
                return Ok(ProjectionStatus {
                    head_position: head_position.into(),
                    source: ReadModelSource::Projection,
                    projections: Vec::new(),
                    last_rebuild: None,
                    role: None,
                })
            }
            Err(e) => return Err(e.into()),
        };
        let checkpoint = version.checkpoint.max(0) as u64;
        Ok(ProjectionStatus {
            head_position: head_position.into(),
            source: ReadModelSource::Projection,
            projections: runner::folds_for(&rules)
                .names()
                .iter()
                .map(|name| ProjectionState {
                    name: (*name).to_owned(),
                    version: format!("v{} {}", version.model_version, version.rules_id),
                    checkpoint: checkpoint.into(),
                    lag: head_position.saturating_sub(checkpoint).into(),
                })
                .collect(),
            last_rebuild: None,
            role: None,
        })
    }

    async fn points_balance(
        &self,
        customer: &CustomerId,
        at: DateTime<Utc>,
    ) -> Result<Option<i64>, ReadModelError> {
        match self.projected(customer, at).await {
            Ok(view) => Ok(view.map(|v| v.loyalty.balance)),
            Err(RunnerError::NoActiveVersion) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// The projections a server runs: the live follower of the active version
/// and on-demand rebuilds (GraphQL `rebuildReadModels`), which switch the
/// follower to the new version when they finish.
pub struct ProjectionControl {
    store: Arc<dyn EventStore>,
    db: ReadModelDb,
    rules: RuleSet,
    live: LiveFeeds,
    follower: std::sync::Mutex<Option<(tokio::task::JoinHandle<()>, i64)>>,
    rebuilding: std::sync::atomic::AtomicBool,
    options: runner::ProjectorOptions,
    last_rebuild: std::sync::Mutex<Option<RebuildRun>>,
    rebuilds_failed: std::sync::atomic::AtomicU64,
    /// The projector role, while this server holds it.
    lock: std::sync::Mutex<Option<ProjectorLock>>,
    /// Set by [`ProjectionControl::stop`]: no more projecting, role given up.
    stopped: std::sync::atomic::AtomicBool,
    /// The fencing epoch this server projects under; 0 while it reads only.
    fence: std::sync::atomic::AtomicI64,
    /// Every fencing epoch this server projected under (the feed's rows of
    /// these epochs were sent to subscribers when they were committed).
    epochs: std::sync::Mutex<Vec<i64>>,
    /// When this server last pruned the live feed.
    pruned_at: std::sync::Mutex<Option<std::time::Instant>>,
}

/// Why a rebuild could not start.
#[derive(Debug, thiserror::Error)]
pub enum RebuildRequestError {
    /// One rebuild at a time.
    #[error("a rebuild is already running")]
    AlreadyRunning,
    /// Who or why could not be recorded (empty, too long, control
    /// characters): the rebuild is refused, not run.
    #[error("{0}")]
    Invalid(#[from] crate::domain::ValidationError),
}

impl ProjectionControl {
    /// The rules rebuilds use (the server's).
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Whether a rebuild is running.
    pub fn is_rebuilding(&self) -> bool {
        self.rebuilding.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The last rebuild this server ran or runs.
    pub fn last_rebuild(&self) -> Option<RebuildRun> {
        self.last_rebuild.lock().expect("rebuild lock").clone()
    }

    /// Rebuilds that failed since the server started.
    pub fn rebuilds_failed(&self) -> u64 {
        self.rebuilds_failed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether this server is the projector or a reader.
    pub fn role(&self) -> ServerRole {
        if self.fence().is_some() {
            ServerRole::Projector
        } else {
            ServerRole::Reader
        }
    }

    /// The fencing epoch this server projects under, while it is the projector.
    fn fence(&self) -> Option<i64> {
        Some(self.fence.load(std::sync::atomic::Ordering::SeqCst)).filter(|epoch| *epoch > 0)
    }

    /// The version the live follower maintains, while it runs.
    fn following(&self) -> Option<i64> {
        match self.follower.lock().expect("follower lock").as_ref() {
            Some((task, version)) if !task.is_finished() => Some(*version),
            _ => None,
        }
    }

    /// One step of the projector role: take it when it is free (or check
    /// that it is still held), then, as the projector, make sure the active
    /// version exists and is the one followed — a rebuild by anyone (the
    /// CLI, another replica) switches versions under a running server.
    async fn supervise_once(&self) -> Result<(), RunnerError> {
        use std::sync::atomic::Ordering;
        if self.stopped.load(Ordering::SeqCst) {
            return Ok(());
        }
        let held = self.lock.lock().expect("role lock").take();
        let held = match held {
            Some(mut held) => {
                // A follower that stopped because a successor's epoch fenced
                // it off gives the role up too.
                let fenced = self.following().is_none()
                    && Some(self.db.fence_epoch().await?) != self.fence();
                if fenced || !held.still_held().await {
                    tracing::warn!(fenced, "this server lost the projector role; reading only");
                    self.fence.store(0, Ordering::SeqCst);
                    self.stop_follower();
                    return Ok(());
                }
                held
            }
            None => {
                let Some(acquired) = ProjectorLock::try_acquire(&self.db).await? else {
                    return Ok(());
                };
                let epoch = self.db.take_fence(&leadership::holder_name()).await?;
                self.epochs.lock().expect("epochs lock").push(epoch);
                self.fence.store(epoch, Ordering::SeqCst);
                tracing::info!(epoch, "this server is the projector");
                acquired
            }
        };
        if self.stopped.load(Ordering::SeqCst) {
            self.fence.store(0, Ordering::SeqCst);
            return Ok(());
        }
        *self.lock.lock().expect("role lock") = Some(held);
        self.prune_feed().await;
        if self.is_rebuilding() {
            return Ok(());
        }
        let active = self.db.active_model_version().await?;
        if active.is_some() && active == self.following() {
            return Ok(());
        }
        match active {
            None => {
                self.rebuild_exclusive("journey serve", "no read-model version was active at start")
                    .await
            }
            Some(version) => match self.start_follower().await {
                Err(RunnerError::StateFormat { .. }) => {
                    tracing::info!(
                        model_version = version,
                        "the active read-model version was built by an older build: rebuilding"
                    );
                    self.rebuild_exclusive(
                        "journey serve",
                        "the active read-model version's state format is not this build's",
                    )
                    .await
                }
                other => other,
            },
        }
    }

    /// Runs a rebuild unless one is running already.
    async fn rebuild_exclusive(&self, actor: &str, reason: &str) -> Result<(), RunnerError> {
        use std::sync::atomic::Ordering;
        if self
            .rebuilding
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Ok(());
        }
        let result = self.rebuild_now(actor, reason).await;
        self.rebuilding.store(false, Ordering::SeqCst);
        result.map(|_| ())
    }

    /// Drops feed rows older than [`FEED_RETENTION`], once a minute, on the
    /// projector.
    async fn prune_feed(&self) {
        {
            let mut pruned = self.pruned_at.lock().expect("prune lock");
            if pruned.is_some_and(|at| at.elapsed() < std::time::Duration::from_secs(60)) {
                return;
            }
            *pruned = Some(std::time::Instant::now());
        }
        let before = now() - Duration::from_std(FEED_RETENTION).expect("retention fits");
        if let Err(e) = self.db.prune_feed(before.timestamp_micros()).await {
            tracing::warn!(error = %e, "pruning the live feed failed");
        }
    }

    /// Starts following the active version (its states load on demand),
    /// when this server is the projector; a reader leaves it to the
    /// projector.
    async fn start_follower(&self) -> Result<(), RunnerError> {
        let Some(fence) = self.fence() else {
            return Ok(());
        };
        if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let follower = runner::Follower::open(
            self.store.clone(),
            &self.db,
            runner::ProjectorOptions {
                fence: Some(fence),
                ..self.options.clone()
            },
        )
        .await?;
        let version = follower.version();
        tracing::info!(model_version = version, fence, "following the store");
        let live = self.live.clone();
        let task = tokio::spawn(async move {
            let result = follower
                .run(runner::DEFAULT_BATCH_EVENTS, |committed| {
                    publish(&live, committed)
                })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "the projection runner stopped");
            }
        });
        if let Some((old, _)) = self
            .follower
            .lock()
            .expect("follower lock")
            .replace((task, version))
        {
            old.abort();
        }
        Ok(())
    }

    /// Stops projecting for good and gives the projector role up (another
    /// server, or a restarted one, takes it over).
    pub fn stop(&self) {
        use std::sync::atomic::Ordering;
        self.stopped.store(true, Ordering::SeqCst);
        self.stop_follower();
        self.fence.store(0, Ordering::SeqCst);
        self.lock.lock().expect("role lock").take();
    }

    fn stop_follower(&self) {
        if let Some((task, _)) = self.follower.lock().expect("follower lock").take() {
            task.abort();
        }
    }

    /// Rebuilds every read model from the full log under the server's
    /// rules in the background, records who asked and why as a
    /// `ReadModelsRebuilt` event in the admin stream, and switches the live
    /// follower to the new version. Returns once the rebuild has started;
    /// `projectionStatus` shows the new version when it is done.
    pub fn rebuild(
        self: &Arc<Self>,
        actor: &str,
        reason: &str,
    ) -> Result<
        tokio::task::JoinHandle<Result<runner::RebuildReport, RunnerError>>,
        RebuildRequestError,
    > {
        use std::sync::atomic::Ordering;
        crate::audit::check_rebuild_request(actor, reason)?;
        if self
            .rebuilding
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(RebuildRequestError::AlreadyRunning);
        }
        let control = self.clone();
        let (actor, reason) = (actor.to_owned(), reason.to_owned());
        Ok(tokio::spawn(async move {
            let result = control.rebuild_now(&actor, &reason).await;
            control.rebuilding.store(false, Ordering::SeqCst);
            result
        }))
    }

    /// Runs a rebuild now and keeps how it ended for `projectionStatus`
    /// and `/metrics`. A rebuild that fails before its switch leaves the
    /// follower on the version it follows; after the switch the follower
    /// moves to the new version before anything else can fail.
    async fn rebuild_now(
        &self,
        actor: &str,
        reason: &str,
    ) -> Result<runner::RebuildReport, RunnerError> {
        *self.last_rebuild.lock().expect("rebuild lock") = Some(RebuildRun {
            requested_by: actor.to_owned(),
            reason: reason.to_owned(),
            started_at: now(),
            finished_at: None,
            model_version: None,
            error: None,
        });
        let result = self.rebuild_and_switch(actor, reason).await;
        if let Some(run) = self.last_rebuild.lock().expect("rebuild lock").as_mut() {
            run.finished_at = Some(now());
            match &result {
                Ok(report) => run.model_version = Some(report.model_version.into()),
                Err(e) => run.error = Some(e.to_string()),
            }
        }
        if let Err(e) = &result {
            self.rebuilds_failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(error = %e, "rebuild failed; the live read models stay on their version");
        }
        result
    }

    async fn rebuild_and_switch(
        &self,
        actor: &str,
        reason: &str,
    ) -> Result<runner::RebuildReport, RunnerError> {
        tracing::info!(actor, reason, "rebuilding the read models");
        let report = runner::rebuild(
            self.store.clone(),
            &self.db,
            &self.rules,
            &RebuildOptions {
                clock: self.options.clock.clone(),
                cache_bytes: self.options.cache_bytes,
                keep_versions: Some(self.options.keep_versions),
                ..RebuildOptions::default()
            },
            now(),
            |events| tracing::debug!(events, "rebuild progress"),
        )
        .await?;
        if report.activated {
            // Follow the new version first: the old one is retired now,
            // whatever happens to the record below.
            self.start_follower().await?;
            crate::audit::record_rebuild(
                self.store.as_ref(),
                actor,
                reason,
                crate::audit::RebuildDetails {
                    rules_version: Some(format!(
                        "{} ({})",
                        self.rules.lifecycle.rules_id, self.rules.hash
                    )),
                    projections: runner::folds_for(&self.rules)
                        .names()
                        .iter()
                        .map(|name| (*name).to_owned())
                        .collect(),
                },
            )
            .await
            .map_err(|e| RunnerError::Record(e.to_string()))?;
        }
        tracing::info!(
            events = report.events,
            customers = report.customers,
            model_version = report.model_version,
            "read models rebuilt"
        );
        Ok(report)
    }
}

/// Makes sure a read-model version is active (rebuilding under `rules` when
/// none is, recorded as a rebuild by `journey serve`), loads its
/// per-customer states (returning once they are in memory, so callers serve
/// on warm read models), then follows the store in the background,
/// publishing each batch's new stage transitions and alerts to `live`.
pub async fn start_projections(
    store: Arc<dyn EventStore>,
    db: ReadModelDb,
    rules: &RuleSet,
    live: LiveFeeds,
    options: runner::ProjectorOptions,
) -> Result<Arc<ProjectionControl>, RunnerError> {
    let tail = FeedTail::from_now(db.clone()).await?;
    let control = Arc::new(ProjectionControl {
        store,
        db,
        rules: rules.clone(),
        live,
        follower: std::sync::Mutex::new(None),
        rebuilding: std::sync::atomic::AtomicBool::new(false),
        options,
        last_rebuild: std::sync::Mutex::new(None),
        rebuilds_failed: std::sync::atomic::AtomicU64::new(0),
        lock: std::sync::Mutex::new(None),
        stopped: std::sync::atomic::AtomicBool::new(false),
        fence: std::sync::atomic::AtomicI64::new(0),
        epochs: std::sync::Mutex::new(Vec::new()),
        pruned_at: std::sync::Mutex::new(None),
    });
    // The first step before serving: a lone server (or the first of
    // several) has its read models built or followed before it answers.
    control.supervise_once().await?;
    let weak = Arc::downgrade(&control);
    tokio::spawn(async move {
        let mut poll = tokio::time::interval(leadership::POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        loop {
            poll.tick().await;
            let Some(control) = weak.upgrade() else { break };
            if let Err(e) = control.supervise_once().await {
                tracing::warn!(error = %e, "projector supervision failed; retrying");
            }
        }
    });
    tokio::spawn(tail_feed(Arc::downgrade(&control), tail));
    Ok(control)
}

/// How often a server reads the feed of what the projector committed.
const FEED_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Sends what another server's projector committed to this server's
/// subscribers, in commit order.
async fn tail_feed(control: std::sync::Weak<ProjectionControl>, mut tail: FeedTail) {
    let mut poll = tokio::time::interval(FEED_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        poll.tick().await;
        let Some(control) = control.upgrade() else {
            break;
        };
        let own = control.epochs.lock().expect("epochs lock").clone();
        match tail.next_entries(|epoch| own.contains(&epoch)).await {
            Ok(entries) => {
                for entry in entries {
                    publish_item(&control.live, entry.item);
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the live feed failed; retrying"),
        }
    }
}

/// Sends a committed batch's stage transitions and alerts to subscribers.
fn publish(live: &LiveFeeds, committed: &Committed) {
    for item in &committed.feed {
        publish_item(live, item.clone());
    }
}

fn publish_item(live: &LiveFeeds, item: FeedItem) {
    match item {
        FeedItem::Stage {
            customer_id,
            from,
            to,
            at,
        } => live.publish_stage_transition(StageTransition {
            customer_id,
            from,
            to,
            at,
        }),
        FeedItem::Alert {
            customer_id,
            kind,
            message,
            at,
        } => live.publish_alert(Alert {
            id: format!("{customer_id}:{kind}:{}", at.timestamp_micros()),
            customer_id,
            kind,
            message,
            raised_at: at,
        }),
    }
}

//! Loyalty points and tiers: a deterministic per-customer fold.
//!
//! Points are earned per major currency unit of order value at the rate of
//! the customer's tier (in hundredths of a point, integer arithmetic, one
//! floor at the end), multiplied by a campaign bonus when a bonus campaign
//! touched the customer shortly before the order. Points live in lots that
//! expire a fixed number of calendar months after earning and are consumed
//! first-in first-out by redemptions, negative adjustments and refund
//! clawbacks. Tiers follow rolling qualifying spend, with history.
//!
//! Time rules (lot expiry, an order leaving the spend window) take effect at
//! their exact instant, before any event at that same instant, so the state
//! as of any instant is a pure function of the events up to it and the rules.
//! Events are expected in the customer's stream order; an event whose
//! `occurred_at` is earlier than an instant the fold already reached is
//! applied at that reached instant for time rules (a late event cannot
//! resurrect lots already expired).
//!
//! Balances never go negative: a consumption larger than the available
//! points takes what is there and records a [`Conflict`].

use chrono::{DateTime, Duration, Months, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::events::{DomainEvent, RefundKind};
use crate::domain::{Currency, CustomerId, Money};
use crate::projections::rules_error::{RulesError, RulesFile};
use crate::projections::view::EventView;
use crate::projections::{CustomerFold, FoldEvent, Row, TableKind, TableSpec, Value};

/// The shipped default rules file, embedded so a fresh install works.
pub const DEFAULT_RULES_TOML: &str = include_str!("../../projections/loyalty.toml");

/// The file name inside a rules directory (`projections/` by default).
pub const FILE_NAME: &str = "loyalty.toml";

/// Name used for the embedded default rules in error messages.
pub const DEFAULT_RULES_FILE: &str = "projections/loyalty.toml";

/// A loyalty tier, lowest first (the order is meaningful: `Ord` ranks tiers).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// No spend threshold reached.
    #[default]
    Regular,
    /// First threshold.
    Silver,
    /// Second threshold.
    Gold,
    /// Highest threshold.
    Diamond,
}

impl Tier {
    /// All tiers, lowest first.
    pub const ALL: [Tier; 4] = [Tier::Regular, Tier::Silver, Tier::Gold, Tier::Diamond];

    /// The rules-file name of the tier.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Regular => "regular",
            Tier::Silver => "silver",
            Tier::Gold => "gold",
            Tier::Diamond => "diamond",
        }
    }
}

/// Earning rates per tier, in hundredths of a point per major currency unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierRates {
    /// Rate for [`Tier::Regular`].
    pub regular: u32,
    /// Rate for [`Tier::Silver`].
    pub silver: u32,
    /// Rate for [`Tier::Gold`].
    pub gold: u32,
    /// Rate for [`Tier::Diamond`].
    pub diamond: u32,
}

impl TierRates {
    /// The rate of one tier.
    pub fn of(&self, tier: Tier) -> u32 {
        match tier {
            Tier::Regular => self.regular,
            Tier::Silver => self.silver,
            Tier::Gold => self.gold,
            Tier::Diamond => self.diamond,
        }
    }
}

/// How points are earned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarningRules {
    /// Hundredths of a point per major currency unit, by tier.
    pub rate_hundredths: TierRates,
}

/// When lots expire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpiryRules {
    /// Calendar months from earning to expiry (default 12).
    pub months: u32,
}

/// Tier thresholds on rolling qualifying spend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierRules {
    /// Only orders in this currency count as qualifying spend (no FX).
    pub spend_currency: String,
    /// Length of the rolling window in calendar months.
    pub window_months: u32,
    /// Minimum spend (minor units) for silver.
    pub silver_min_spend_minor: i64,
    /// Minimum spend (minor units) for gold.
    pub gold_min_spend_minor: i64,
    /// Minimum spend (minor units) for diamond.
    pub diamond_min_spend_minor: i64,
}

/// A bonus multiplier for orders shortly after a campaign touch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignBonus {
    /// The `CampaignTouched.campaign_id` this bonus applies to.
    pub campaign_id: String,
    /// Points multiplier in percent (200 = double points).
    pub multiplier_percent: u32,
    /// A touch at most this many days before the order (inclusive) counts.
    pub window_days: u32,
}

/// The whole loyalty rules file, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoyaltyRules {
    /// Format version of the file; only 1 exists.
    pub version: u32,
    /// Earning rates.
    pub earning: EarningRules,
    /// Lot expiry.
    pub expiry: ExpiryRules,
    /// Tier thresholds.
    pub tiers: TierRules,
    /// Campaign bonuses (may be empty).
    #[serde(default)]
    pub campaigns: Vec<CampaignBonus>,
}

impl RulesFile for LoyaltyRules {
    const FILE_NAME: &'static str = FILE_NAME;
    const SHIPPED_PATH: &'static str = DEFAULT_RULES_FILE;
    const SHIPPED_TOML: &'static str = DEFAULT_RULES_TOML;

    fn check(&self, file: &str) -> Result<(), RulesError> {
        self.validate(file)
    }
}

impl LoyaltyRules {
    /// Checks every value's range and the relations between values.
    pub fn validate(&self, file: &str) -> Result<(), RulesError> {
        let err = |key: &str, problem: String| Err(RulesError::new(file, key, problem));
        if self.version != 1 {
            return err(
                "version",
                format!("unsupported version {}, expected 1", self.version),
            );
        }
        let mut previous = 0u32;
        for tier in Tier::ALL {
            let rate = self.earning.rate_hundredths.of(tier);
            if rate > 100_000 {
                return err(
                    &format!("earning.rate_hundredths.{}", tier.as_str()),
                    format!("{rate} is above the maximum 100000 (1000 points per unit)"),
                );
            }
            if rate < previous {
                return err(
                    &format!("earning.rate_hundredths.{}", tier.as_str()),
                    format!("{rate} is below the rate of the tier beneath it ({previous})"),
                );
            }
            previous = rate;
        }
        if !(1..=120).contains(&self.expiry.months) {
            return err(
                "expiry.months",
                format!("{} must be between 1 and 120", self.expiry.months),
            );
        }
        if let Err(e) = Currency::parse(&self.tiers.spend_currency) {
            return err("tiers.spend_currency", e.to_string());
        }
        if !(1..=120).contains(&self.tiers.window_months) {
            return err(
                "tiers.window_months",
                format!("{} must be between 1 and 120", self.tiers.window_months),
            );
        }
        let t = &self.tiers;
        if t.silver_min_spend_minor <= 0 {
            return err(
                "tiers.silver_min_spend_minor",
                format!("{} must be greater than zero", t.silver_min_spend_minor),
            );
        }
        if t.gold_min_spend_minor <= t.silver_min_spend_minor {
            return err(
                "tiers.gold_min_spend_minor",
                format!(
                    "{} must be greater than silver_min_spend_minor ({})",
                    t.gold_min_spend_minor, t.silver_min_spend_minor
                ),
            );
        }
        if t.diamond_min_spend_minor <= t.gold_min_spend_minor {
            return err(
                "tiers.diamond_min_spend_minor",
                format!(
                    "{} must be greater than gold_min_spend_minor ({})",
                    t.diamond_min_spend_minor, t.gold_min_spend_minor
                ),
            );
        }
        for (i, c) in self.campaigns.iter().enumerate() {
            if c.campaign_id.trim().is_empty() {
                return err(
                    &format!("campaigns[{i}].campaign_id"),
                    "must not be empty".into(),
                );
            }
            if self.campaigns[..i]
                .iter()
                .any(|o| o.campaign_id == c.campaign_id)
            {
                return err(
                    &format!("campaigns[{i}].campaign_id"),
                    format!("{:?} is listed twice", c.campaign_id),
                );
            }
            if !(1..=10_000).contains(&c.multiplier_percent) {
                return err(
                    &format!("campaigns[{i}].multiplier_percent"),
                    format!("{} must be between 1 and 10000", c.multiplier_percent),
                );
            }
            if c.window_days > 366 {
                return err(
                    &format!("campaigns[{i}].window_days"),
                    format!("{} must be at most 366", c.window_days),
                );
            }
        }
        Ok(())
    }

    fn tier_for_spend(&self, spend_minor: i64) -> Tier {
        let t = &self.tiers;
        if spend_minor >= t.diamond_min_spend_minor {
            Tier::Diamond
        } else if spend_minor >= t.gold_min_spend_minor {
            Tier::Gold
        } else if spend_minor >= t.silver_min_spend_minor {
            Tier::Silver
        } else {
            Tier::Regular
        }
    }

    fn max_campaign_window(&self) -> Duration {
        Duration::days(
            self.campaigns
                .iter()
                .map(|c| c.window_days)
                .max()
                .unwrap_or(0) as i64,
        )
    }
}

/// Points for an order: `floor(minor × rate × multiplier / (100 × 100 × 10^digits))`.
///
/// One rounding step, always down, after the multiplier, so a bonus never
/// rounds twice. Negative amounts earn nothing.
pub fn points_for_amount(amount: Money, rate_hundredths: u32, multiplier_percent: u32) -> i64 {
    if amount.minor <= 0 {
        return 0;
    }
    let scale = 10i128.pow(amount.currency.minor_digits() as u32);
    let numerator = amount.minor as i128 * rate_hundredths as i128 * multiplier_percent as i128;
    (numerator / (100 * 100 * scale)) as i64
}

/// `at` plus calendar months, saturating at the end of time.
fn add_months(at: DateTime<Utc>, months: u32) -> DateTime<Utc> {
    at.checked_add_months(Months::new(months))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Where a lot of points came from. JSON: `{"kind": "order", "order_id":
/// …}`; the binary state format stores the variant index instead of the tag
/// (postcard cannot read internally tagged enums).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LotSource {
    /// Earned by an order.
    Order {
        /// The order id.
        order_id: String,
    },
    /// Granted by a positive manual adjustment.
    Adjustment {
        /// The adjustment id.
        adjustment_id: String,
    },
}

/// Points earned together, expiring together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lot {
    /// The event that created the lot.
    pub event_id: Uuid,
    /// Order or adjustment.
    pub source: LotSource,
    /// When the points were earned.
    #[serde(with = "crate::projections::compact::instant")]
    pub earned_at: DateTime<Utc>,
    /// The instant the lot expires (earned_at + expiry months); at this
    /// instant it is no longer available.
    #[serde(with = "crate::projections::compact::instant")]
    pub expires_at: DateTime<Utc>,
    /// Points originally in the lot.
    pub original: i64,
    /// Points not yet consumed.
    pub remaining: i64,
}

/// What kind of consumption ran short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictKind {
    /// A `PointsRedeemed`.
    Redemption,
    /// A negative `PointsAdjusted`.
    Adjustment,
    /// A refund clawing back its order's points.
    Clawback,
}

/// A consumption that exceeded the available balance; the balance floored
/// at zero and the shortfall is reported instead of hidden.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// The event that asked for the points.
    pub event_id: Uuid,
    /// When.
    #[serde(with = "crate::projections::compact::instant")]
    pub at: DateTime<Utc>,
    /// What kind of consumption.
    pub kind: ConflictKind,
    /// Points asked for.
    pub requested: i64,
    /// Points that were available (and were consumed).
    pub available: i64,
}

/// Why the tier changed (serialized like [`LotSource`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TierCause {
    /// An event (order or refund) changed the qualifying spend.
    Event {
        /// Its id.
        event_id: Uuid,
    },
    /// The time rule: an order left the rolling spend window.
    SpendWindow {
        /// The order that stopped counting.
        order_id: String,
    },
}

/// Serde for an enum that is internally tagged (`"kind"`) in JSON and
/// externally tagged (variant index) in binary formats: two mirror enums
/// derive the two shapes, the real one converts.
macro_rules! tagged_in_json {
    ($ty:ident { $($variant:ident { $field:ident: $fty:ty }),+ $(,)? }) => {
        const _: () = {
            #[derive(Serialize, Deserialize)]
            #[serde(tag = "kind", rename_all = "snake_case")]
            enum Tagged { $($variant { $field: $fty }),+ }
            #[derive(Serialize, Deserialize)]
            enum Plain { $($variant { $field: $fty }),+ }
            impl Serialize for $ty {
                fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    match (self, s.is_human_readable()) {
                        $(($ty::$variant { $field }, true) => Tagged::$variant { $field: $field.clone() }.serialize(s),
                          ($ty::$variant { $field }, false) => Plain::$variant { $field: $field.clone() }.serialize(s),)+
                    }
                }
            }
            impl<'de> Deserialize<'de> for $ty {
                fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                    if d.is_human_readable() {
                        Ok(match Tagged::deserialize(d)? { $(Tagged::$variant { $field } => $ty::$variant { $field }),+ })
                    } else {
                        Ok(match Plain::deserialize(d)? { $(Plain::$variant { $field } => $ty::$variant { $field }),+ })
                    }
                }
            }
        };
    };
}

tagged_in_json!(LotSource {
    Order { order_id: String },
    Adjustment { adjustment_id: String },
});

tagged_in_json!(TierCause {
    Event { event_id: Uuid },
    SpendWindow { order_id: String },
});

/// One entry of the tier history (the runner adds the customer id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierChange {
    /// Tier before.
    pub from: Tier,
    /// Tier after.
    pub to: Tier,
    /// When.
    #[serde(with = "crate::projections::compact::instant")]
    pub at: DateTime<Utc>,
    /// Why.
    pub cause: TierCause,
}

/// What the fold remembers about an order, for clawbacks and spend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPoints {
    /// Order id.
    pub order_id: String,
    /// When placed.
    #[serde(with = "crate::projections::compact::instant")]
    pub placed_at: DateTime<Utc>,
    /// Order value.
    pub amount: Money,
    /// Amount refunded so far (capped at the order value).
    pub refunded_minor: i64,
    /// Points the order earned.
    pub points: i64,
    /// Points clawed back so far.
    pub clawed_back: i64,
    /// Multiplier applied, percent.
    pub multiplier_percent: u32,
}

/// Running totals; `earned − consumed − expired` is always the balance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointTotals {
    /// Points put into lots (orders, positive adjustments).
    pub earned: i64,
    /// Points taken out by redemptions, negative adjustments and clawbacks.
    pub consumed: i64,
    /// Points that expired unused.
    pub expired: i64,
}

/// The per-customer loyalty state, persisted by the runner between batches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoyaltyState {
    /// Unexpired lots with points left, oldest first (FIFO order).
    pub lots: Vec<Lot>,
    /// Every order seen, in `placed_at` order.
    pub orders: Vec<OrderPoints>,
    /// Orders before this index have left the rolling spend window.
    #[serde(default)]
    pub in_window_from: usize,
    /// Recent touches of bonus campaigns: (campaign id, instant).
    #[serde(with = "crate::projections::compact::pairs_instant")]
    pub campaign_touches: Vec<(String, DateTime<Utc>)>,
    /// Current tier.
    pub tier: Tier,
    /// Tier changes, oldest first.
    pub tier_history: Vec<TierChange>,
    /// Consumptions that exceeded the balance.
    pub conflicts: Vec<Conflict>,
    /// Running totals.
    pub totals: PointTotals,
    /// Refund events whose order was unknown (no points moved).
    pub unmatched_refunds: Vec<Uuid>,
    /// The latest instant the time rules have been applied through.
    #[serde(with = "crate::projections::compact::instant_opt")]
    pub reached: Option<DateTime<Utc>>,
    /// The instant the account last changed: an order, refund, redemption
    /// or adjustment, a lot expiring, an order leaving the spend window (or
    /// its first event). `loyalty_accounts.as_of_us` shows it, so advancing
    /// the clock alone does not rewrite an account nothing happened to.
    #[serde(with = "crate::projections::compact::instant_opt")]
    pub changed_at: Option<DateTime<Utc>>,
}

/// The loyalty state as of an instant, for queries and diffs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoyaltySnapshot {
    /// The instant the snapshot describes.
    pub as_of: DateTime<Utc>,
    /// Available points.
    pub balance: i64,
    /// Tier at that instant.
    pub tier: Tier,
    /// Qualifying spend in the window ending at that instant (minor units).
    pub qualifying_spend_minor: i64,
    /// Totals; `earned − consumed − expired == balance`.
    pub totals: PointTotals,
    /// Lots still available, oldest first.
    pub lots: Vec<Lot>,
    /// Tier history up to the instant.
    pub tier_history: Vec<TierChange>,
    /// Conflicts up to the instant.
    pub conflicts: Vec<Conflict>,
    /// Refunds whose order was unknown.
    pub unmatched_refunds: Vec<Uuid>,
}

/// Folds one event into the customer's loyalty state.
///
/// Time rules up to and including the event's instant apply first; events
/// that do not concern loyalty only advance time.
pub fn apply(state: &mut LoyaltyState, rules: &LoyaltyRules, view: &EventView<'_>) {
    let at = state.advance_to(rules, view.occurred_at);
    let changes_account = matches!(
        view.event,
        DomainEvent::OrderPlaced(_)
            | DomainEvent::OrderRefunded(_)
            | DomainEvent::PointsRedeemed(_)
            | DomainEvent::PointsAdjusted(_)
    );
    if changes_account || state.changed_at.is_none() {
        state.changed(at);
    }
    match view.event {
        DomainEvent::OrderPlaced(order) => {
            let multiplier = state.multiplier_at(rules, at);
            let rate = rules.earning.rate_hundredths.of(state.tier);
            let points = points_for_amount(order.amount, rate, multiplier);
            if points > 0 {
                state.add_lot(Lot {
                    event_id: view.event_id,
                    source: LotSource::Order {
                        order_id: order.order_id.clone(),
                    },
                    earned_at: at,
                    expires_at: add_months(at, rules.expiry.months),
                    original: points,
                    remaining: points,
                });
            }
            state.orders.push(OrderPoints {
                order_id: order.order_id.clone(),
                placed_at: at,
                amount: order.amount,
                refunded_minor: 0,
                points,
                clawed_back: 0,
                multiplier_percent: multiplier,
            });
            state.update_tier(
                rules,
                at,
                TierCause::Event {
                    event_id: view.event_id,
                },
            );
        }
        DomainEvent::OrderRefunded(refund) => {
            let Some(index) = state
                .orders
                .iter()
                .rposition(|o| o.order_id == refund.order_id)
            else {
                state.unmatched_refunds.push(view.event_id);
                return;
            };
            let order = &mut state.orders[index];
            order.refunded_minor = match refund.kind {
                RefundKind::Full => order.amount.minor,
                RefundKind::Partial => order
                    .refunded_minor
                    .saturating_add(refund.amount.minor)
                    .min(order.amount.minor),
            };
            let target = if order.refunded_minor >= order.amount.minor {
                order.points
            } else {
                (order.points as i128 * order.refunded_minor as i128 / order.amount.minor as i128)
                    as i64
            };
            let claw = target - order.clawed_back;
            order.clawed_back = target;
            // The order's own lot: earned by this order id at its instant.
            let own_lot = (order.order_id.clone(), order.placed_at);
            if claw > 0 {
                state.consume(
                    view.event_id,
                    at,
                    ConflictKind::Clawback,
                    claw,
                    Some(own_lot),
                );
            }
            state.update_tier(
                rules,
                at,
                TierCause::Event {
                    event_id: view.event_id,
                },
            );
        }
        DomainEvent::PointsRedeemed(redeemed) if redeemed.points > 0 => {
            let points = redeemed.points;
            state.consume(view.event_id, at, ConflictKind::Redemption, points, None);
        }
        DomainEvent::PointsAdjusted(adjusted) => {
            if adjusted.points > 0 {
                state.add_lot(Lot {
                    event_id: view.event_id,
                    source: LotSource::Adjustment {
                        adjustment_id: adjusted.adjustment_id.clone(),
                    },
                    earned_at: at,
                    expires_at: add_months(at, rules.expiry.months),
                    original: adjusted.points,
                    remaining: adjusted.points,
                });
            } else if adjusted.points < 0 {
                let points = adjusted.points.checked_neg().unwrap_or(i64::MAX);
                state.consume(view.event_id, at, ConflictKind::Adjustment, points, None);
            }
        }
        DomainEvent::CampaignTouched(touch) => {
            if rules
                .campaigns
                .iter()
                .any(|c| c.campaign_id == touch.campaign_id)
            {
                state.campaign_touches.push((touch.campaign_id.clone(), at));
            }
            let horizon = at
                .checked_sub_signed(rules.max_campaign_window())
                .unwrap_or(DateTime::<Utc>::MIN_UTC);
            state.campaign_touches.retain(|(_, t)| *t >= horizon);
        }
        _ => {}
    }
}

/// The loyalty state as of `instant`: the state must hold exactly the
/// customer's events with `occurred_at <= instant`; time rules (lot expiry,
/// spend window) are applied up to and including `instant`. A state that
/// already went past `instant` cannot go back: the snapshot is then taken at
/// the instant the state reached, and its `as_of` says so.
pub fn as_of(
    state: &LoyaltyState,
    rules: &LoyaltyRules,
    instant: DateTime<Utc>,
) -> LoyaltySnapshot {
    let mut state = state.clone();
    let at = state.advance_to(rules, instant);
    LoyaltySnapshot {
        as_of: at,
        balance: state.lots.iter().map(|l| l.remaining).sum(),
        tier: state.tier,
        qualifying_spend_minor: state.qualifying_spend(rules, at),
        totals: state.totals.clone(),
        lots: state.lots,
        tier_history: state.tier_history,
        conflicts: state.conflicts,
        unmatched_refunds: state.unmatched_refunds,
    }
}

impl LoyaltyState {
    /// Applies every time rule up to and including `instant` and returns
    /// the instant the caller's event is treated as happening at (never
    /// earlier than an instant already reached).
    fn advance_to(&mut self, rules: &LoyaltyRules, instant: DateTime<Utc>) -> DateTime<Utc> {
        if let Some(reached) = self.reached.filter(|reached| *reached >= instant) {
            return reached;
        }
        // Spend-window roll-offs up to `instant`, in time order. Orders are
        // kept in placed_at order and `add_months` is monotonic, so the
        // orders still in the window are a suffix starting at `in_window_from`.
        while let Some(order) = self.orders.get(self.in_window_from) {
            let rolloff = add_months(order.placed_at, rules.tiers.window_months);
            if rolloff > instant {
                break;
            }
            let order_id = order.order_id.clone();
            self.in_window_from += 1;
            self.update_tier(rules, rolloff, TierCause::SpendWindow { order_id });
            self.changed(rolloff);
        }
        // Lot expiry.
        let mut expired = 0;
        let mut last_expiry = None;
        self.lots.retain(|lot| {
            if lot.expires_at <= instant {
                expired += lot.remaining;
                last_expiry = last_expiry.max(Some(lot.expires_at));
                false
            } else {
                true
            }
        });
        self.totals.expired += expired;
        if let Some(at) = last_expiry {
            self.changed(at);
        }
        self.reached = Some(instant);
        instant
    }

    /// Notes that the account changed at `at`.
    fn changed(&mut self, at: DateTime<Utc>) {
        self.changed_at = self.changed_at.max(Some(at));
    }

    /// The next instant time alone changes the account: a lot expiring or
    /// an order leaving the spend window.
    pub fn next_change(&self, rules: &LoyaltyRules) -> Option<DateTime<Utc>> {
        let expiry = self.lots.iter().map(|l| l.expires_at).min();
        let rolloff = self
            .orders
            .get(self.in_window_from)
            .map(|o| add_months(o.placed_at, rules.tiers.window_months));
        let next = expiry.into_iter().chain(rolloff).min()?;
        // Nothing happens at the end of time.
        (next < DateTime::<Utc>::MAX_UTC).then_some(next)
    }

    fn qualifying_spend(&self, rules: &LoyaltyRules, at: DateTime<Utc>) -> i64 {
        let currency = Currency::parse(&rules.tiers.spend_currency).ok();
        self.orders[self.in_window_from.min(self.orders.len())..]
            .iter()
            .filter(|o| Some(o.amount.currency) == currency && o.placed_at <= at)
            .map(|o| o.amount.minor - o.refunded_minor)
            .sum()
    }

    fn update_tier(&mut self, rules: &LoyaltyRules, at: DateTime<Utc>, cause: TierCause) {
        let to = rules.tier_for_spend(self.qualifying_spend(rules, at));
        if to == self.tier {
            return;
        }
        let from = self.tier;
        self.tier = to;
        // At most one change per instant: a second change at the same
        // instant is merged into the first (and vanishes if it undoes it).
        if let Some(last) = self.tier_history.last_mut() {
            if last.at == at {
                if last.from == to {
                    self.tier_history.pop();
                } else {
                    last.to = to;
                    last.cause = cause;
                }
                return;
            }
        }
        self.tier_history.push(TierChange {
            from,
            to,
            at,
            cause,
        });
    }

    fn multiplier_at(&self, rules: &LoyaltyRules, at: DateTime<Utc>) -> u32 {
        rules
            .campaigns
            .iter()
            .filter(|c| {
                let window = Duration::days(c.window_days as i64);
                self.campaign_touches
                    .iter()
                    .any(|(id, t)| *id == c.campaign_id && *t <= at && at - *t <= window)
            })
            .map(|c| c.multiplier_percent)
            .max()
            .unwrap_or(100)
    }

    fn add_lot(&mut self, lot: Lot) {
        self.totals.earned += lot.original;
        let index = self.lots.partition_point(|l| l.earned_at <= lot.earned_at);
        self.lots.insert(index, lot);
    }

    /// Takes `points` from the lots (the lot `preferred` names, by order id
    /// and earning instant, first, then oldest first); records a conflict
    /// when there are not enough.
    fn consume(
        &mut self,
        event_id: Uuid,
        at: DateTime<Utc>,
        kind: ConflictKind,
        points: i64,
        preferred: Option<(String, DateTime<Utc>)>,
    ) {
        let available: i64 = self.lots.iter().map(|l| l.remaining).sum();
        let mut left = points;
        let own = preferred.and_then(|(order_id, earned_at)| {
            self.lots.iter_mut().find(|l| {
                l.earned_at == earned_at
                    && matches!(&l.source, LotSource::Order { order_id: id } if *id == order_id)
            })
        });
        if let Some(lot) = own {
            let take = left.min(lot.remaining);
            lot.remaining -= take;
            left -= take;
        }
        for lot in self.lots.iter_mut() {
            if left == 0 {
                break;
            }
            let take = left.min(lot.remaining);
            lot.remaining -= take;
            left -= take;
        }
        self.lots.retain(|l| l.remaining > 0);
        self.totals.consumed += points - left;
        if left > 0 {
            self.conflicts.push(Conflict {
                event_id,
                at,
                kind,
                requested: points,
                available,
            });
        }
    }
}

/// The loyalty read model under one rule set: the runner's face of
/// [`apply`] (balances, lots, tier history and conflicts as SQL tables).
#[derive(Debug, Clone)]
pub struct Loyalty {
    /// Earning, expiry and tier rules.
    pub rules: LoyaltyRules,
}

/// Tables of the loyalty projection (migration 0011). All are
/// [`TableKind::Current`]: a tier change can be merged away by a later
/// change at the same instant, so no row is final before the state is.
pub const TABLES: &[TableSpec] = &[
    TableSpec {
        name: "loyalty_accounts",
        columns: &[
            "tier",
            "balance",
            "earned",
            "consumed",
            "expired",
            "qualifying_spend_minor",
            "conflicts",
            "as_of_us",
        ],
        kind: TableKind::Current,
    },
    TableSpec {
        name: "loyalty_lots",
        columns: &[
            "lot_event_id",
            "source",
            "earned_at_us",
            "expires_at_us",
            "original",
            "remaining",
        ],
        kind: TableKind::Current,
    },
    TableSpec {
        name: "loyalty_tier_history",
        columns: &["seq", "from_tier", "to_tier", "at_us", "cause"],
        kind: TableKind::Current,
    },
    TableSpec {
        name: "loyalty_conflicts",
        columns: &["seq", "event_id", "at_us", "kind", "requested", "available"],
        kind: TableKind::Current,
    },
];

impl LotSource {
    /// `order:<id>` or `adjustment:<id>`, as stored.
    pub fn label(&self) -> String {
        match self {
            LotSource::Order { order_id } => format!("order:{order_id}"),
            LotSource::Adjustment { adjustment_id } => format!("adjustment:{adjustment_id}"),
        }
    }
}

impl TierCause {
    /// The event id, or `rule:spend_window:<order>` for a roll-off.
    pub fn label(&self) -> String {
        match self {
            TierCause::Event { event_id } => event_id.to_string(),
            TierCause::SpendWindow { order_id } => format!("rule:spend_window:{order_id}"),
        }
    }
}

impl ConflictKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictKind::Redemption => "redemption",
            ConflictKind::Adjustment => "adjustment",
            ConflictKind::Clawback => "clawback",
        }
    }
}

impl CustomerFold for Loyalty {
    type State = LoyaltyState;

    fn name(&self) -> &'static str {
        "loyalty"
    }

    fn tables(&self) -> &'static [TableSpec] {
        TABLES
    }

    fn apply(&self, _: &CustomerId, state: &mut LoyaltyState, event: &FoldEvent, _: &mut Vec<Row>) {
        apply(state, &self.rules, &event.view());
    }

    fn advance_to(
        &self,
        _: &CustomerId,
        state: &mut LoyaltyState,
        at: DateTime<Utc>,
        _: &mut Vec<Row>,
    ) {
        state.advance_to(&self.rules, at);
    }

    fn current_rows(&self, customer: &CustomerId, state: &LoyaltyState, out: &mut Vec<Row>) {
        let Some(reached) = state.reached else { return };
        let changed_at = state.changed_at.unwrap_or(reached);
        let row = |table: &'static str, values: Vec<Value>| Row {
            table,
            customer_id: customer.as_str().to_owned(),
            values,
        };
        let us = |at: DateTime<Utc>| Value::Int(at.timestamp_micros());
        out.push(row(
            "loyalty_accounts",
            vec![
                state.tier.as_str().into(),
                Value::Int(state.lots.iter().map(|l| l.remaining).sum()),
                Value::Int(state.totals.earned),
                Value::Int(state.totals.consumed),
                Value::Int(state.totals.expired),
                Value::Int(state.qualifying_spend(&self.rules, reached)),
                Value::Int(state.conflicts.len() as i64),
                us(changed_at),
            ],
        ));
        for lot in &state.lots {
            out.push(row(
                "loyalty_lots",
                vec![
                    lot.event_id.to_string().into(),
                    lot.source.label().into(),
                    us(lot.earned_at),
                    us(lot.expires_at),
                    Value::Int(lot.original),
                    Value::Int(lot.remaining),
                ],
            ));
        }
        for (i, change) in state.tier_history.iter().enumerate() {
            out.push(row(
                "loyalty_tier_history",
                vec![
                    Value::Int(i as i64 + 1),
                    change.from.as_str().into(),
                    change.to.as_str().into(),
                    us(change.at),
                    change.cause.label().into(),
                ],
            ));
        }
        for (i, conflict) in state.conflicts.iter().enumerate() {
            out.push(row(
                "loyalty_conflicts",
                vec![
                    Value::Int(i as i64 + 1),
                    conflict.event_id.to_string().into(),
                    us(conflict.at),
                    conflict.kind.as_str().into(),
                    Value::Int(conflict.requested),
                    Value::Int(conflict.available),
                ],
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::domain::events::{
        CampaignTouched, OrderPlaced, OrderRefunded, PointsAdjusted, PointsRedeemed,
        SessionRecorded,
    };
    use proptest::prelude::*;

    fn t(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn usd(minor: i64) -> Money {
        Money::new(minor, Currency::USD)
    }

    fn order(id: &str, minor: i64) -> DomainEvent {
        DomainEvent::OrderPlaced(OrderPlaced {
            order_id: id.into(),
            amount: usd(minor),
            item_count: 1,
        })
    }

    fn refund(order_id: &str, minor: i64, kind: RefundKind) -> DomainEvent {
        DomainEvent::OrderRefunded(OrderRefunded {
            order_id: order_id.into(),
            refund_id: format!("r-{order_id}-{minor}"),
            amount: usd(minor),
            kind,
            reason: None,
        })
    }

    fn redeem(points: i64) -> DomainEvent {
        DomainEvent::PointsRedeemed(PointsRedeemed {
            redemption_id: format!("x{points}"),
            points,
            reward: None,
        })
    }

    fn adjust(points: i64) -> DomainEvent {
        DomainEvent::PointsAdjusted(PointsAdjusted {
            adjustment_id: format!("a{points}"),
            points,
            reason: "manual".into(),
        })
    }

    fn touch(campaign: &str) -> DomainEvent {
        DomainEvent::CampaignTouched(CampaignTouched {
            campaign_id: campaign.into(),
            channel: "email".into(),
        })
    }

    /// Events with deterministic ids (v5 of their position) for assertions.
    struct Stream {
        events: Vec<(Uuid, DateTime<Utc>, DomainEvent)>,
    }

    impl Stream {
        fn new() -> Self {
            Self { events: Vec::new() }
        }
        fn push(&mut self, at: DateTime<Utc>, event: DomainEvent) -> Uuid {
            let id = Uuid::new_v5(&Uuid::NAMESPACE_OID, &self.events.len().to_be_bytes());
            self.events.push((id, at, event));
            id
        }
        fn fold(&self, rules: &LoyaltyRules) -> LoyaltyState {
            let mut state = LoyaltyState::default();
            for (id, at, event) in &self.events {
                apply(
                    &mut state,
                    rules,
                    &EventView {
                        event_id: *id,
                        occurred_at: *at,
                        event,
                    },
                );
            }
            state
        }
        fn snapshot(&self, rules: &LoyaltyRules, at: DateTime<Utc>) -> LoyaltySnapshot {
            as_of(&self.fold(rules), rules, at)
        }
    }

    fn micro() -> Duration {
        Duration::microseconds(1)
    }

    #[test]
    fn shipped_rules_load_with_documented_defaults() {
        let rules = LoyaltyRules::shipped();
        let r = &rules.earning.rate_hundredths;
        assert_eq!(
            (r.regular, r.silver, r.gold, r.diamond),
            (100, 125, 150, 200)
        );
        assert_eq!(rules.expiry.months, 12);
        assert_eq!(rules.tiers.window_months, 12);
        assert_eq!(rules.tiers.spend_currency, "USD");
    }

    #[test]
    fn regular_tier_earns_one_point_per_unit_rounded_down() {
        let rules = LoyaltyRules::shipped();
        let mut s = Stream::new();
        s.push(t("2024-01-10T00:00:00Z"), order("o1", 1299));
        let snap = s.snapshot(&rules, t("2024-01-10T00:00:00Z"));
        assert_eq!(snap.balance, 12);
        assert_eq!(snap.tier, Tier::Regular);
    }

    #[test]
    fn each_tier_earns_at_its_rate_and_thresholds_are_inclusive() {
        let rules = LoyaltyRules::shipped();
        // Spend just below silver: still regular, next order at 1.00/unit.
        let mut s = Stream::new();
        s.push(t("2024-01-01T00:00:00Z"), order("a", 49_999));
        s.push(t("2024-01-02T00:00:00Z"), order("b", 10_000));
        let state = s.fold(&rules);
        assert_eq!(state.orders[1].points, 100);
        // Exactly at each threshold the next order earns at that tier's rate.
        for (threshold, tier, expected) in [
            (50_000, Tier::Silver, 125),
            (150_000, Tier::Gold, 150),
            (500_000, Tier::Diamond, 200),
        ] {
            let mut s = Stream::new();
            s.push(t("2024-01-01T00:00:00Z"), order("a", threshold));
            s.push(t("2024-01-02T00:00:00Z"), order("b", 10_000));
            let state = s.fold(&rules);
            assert_eq!(
                state.orders[0].points,
                threshold / 100,
                "first order at regular"
            );
            assert_eq!(state.orders[1].points, expected, "{tier:?}");
            assert_eq!(state.tier_history[0].to, tier);
        }
    }

    #[test]
    fn points_round_down_once_and_respect_currency_digits() {
        // 1.25 points per unit on 0.79: 0.9875 -> 0.
        assert_eq!(points_for_amount(usd(79), 125, 100), 0);
        // 2x bonus is applied before the single rounding: 1.5*2*0.50 = 1.5 -> 1.
        assert_eq!(points_for_amount(usd(50), 150, 200), 1);
        let jpy = Currency::parse("JPY").unwrap();
        assert_eq!(points_for_amount(Money::new(1500, jpy), 100, 100), 1500);
        assert_eq!(points_for_amount(usd(0), 200, 200), 0);
    }

    #[test]
    fn campaign_bonus_applies_within_window_days_inclusive() {
        let rules = LoyaltyRules::shipped();
        let touched = t("2024-03-01T12:00:00Z");
        for (order_at, expected) in [
            (touched, 200),
            (touched + Duration::days(14), 200),
            (touched + Duration::days(14) + micro(), 100),
            (touched - micro(), 100),
        ] {
            let mut s = Stream::new();
            if order_at < touched {
                s.push(order_at, order("o", 10_000));
                s.push(touched, touch("double-points"));
            } else {
                s.push(touched, touch("double-points"));
                s.push(order_at, order("o", 10_000));
            }
            let state = s.fold(&rules);
            assert_eq!(state.orders[0].points, expected, "order at {order_at}");
        }
    }

    #[test]
    fn campaign_bonuses_do_not_stack_and_unknown_campaigns_do_nothing() {
        let rules = LoyaltyRules::shipped();
        let mut s = Stream::new();
        s.push(t("2024-03-01T00:00:00Z"), touch("welcome-back"));
        s.push(t("2024-03-02T00:00:00Z"), touch("double-points"));
        s.push(t("2024-03-03T00:00:00Z"), touch("not-a-bonus"));
        s.push(t("2024-03-04T00:00:00Z"), order("o", 10_000));
        assert_eq!(s.fold(&rules).orders[0].points, 200);
        for (order_at, expected) in [
            (t("2024-03-31T00:00:00Z"), 150),
            (t("2024-03-31T00:00:00.000001Z"), 100),
        ] {
            let mut s = Stream::new();
            s.push(t("2024-03-01T00:00:00Z"), touch("welcome-back"));
            s.push(order_at, order("o", 10_000));
            assert_eq!(s.fold(&rules).orders[0].points, expected, "{order_at}");
        }
        let mut s = Stream::new();
        s.push(t("2024-03-01T00:00:00Z"), touch("not-a-bonus"));
        s.push(t("2024-03-02T00:00:00Z"), order("o", 10_000));
        assert_eq!(s.fold(&rules).orders[0].points, 100);
    }

    #[test]
    fn lot_expires_exactly_twelve_calendar_months_after_earning() {
        let rules = LoyaltyRules::shipped();
        let earned = t("2023-02-15T08:30:00.123456Z");
        let expiry = t("2024-02-15T08:30:00.123456Z");
        let mut s = Stream::new();
        s.push(earned, order("o", 10_000));
        let before = s.snapshot(&rules, expiry - micro());
        assert_eq!(before.balance, 100);
        assert_eq!(before.lots[0].expires_at, expiry);
        let at = s.snapshot(&rules, expiry);
        assert_eq!(at.balance, 0);
        assert_eq!(at.totals.expired, 100);
        // A redemption at the expiry instant finds nothing.
        s.push(expiry, redeem(10));
        let state = s.fold(&rules);
        assert_eq!(state.conflicts.len(), 1);
        assert_eq!(state.conflicts[0].available, 0);
        // One microsecond earlier it succeeds.
        let mut s = Stream::new();
        s.push(earned, order("o", 10_000));
        s.push(expiry - micro(), redeem(10));
        let state = s.fold(&rules);
        assert!(state.conflicts.is_empty());
        assert_eq!(as_of(&state, &rules, expiry).totals.expired, 90);
    }

    #[test]
    fn expiry_uses_calendar_months_clamped_to_month_end() {
        let mut rules = LoyaltyRules::shipped();
        rules.expiry.months = 1;
        let mut s = Stream::new();
        s.push(t("2024-01-31T10:00:00Z"), adjust(5));
        let lot = &s.fold(&rules).lots[0];
        assert_eq!(lot.expires_at, t("2024-02-29T10:00:00Z"));
    }

    #[test]
    fn redemptions_and_negative_adjustments_consume_oldest_lots_first() {
        let rules = LoyaltyRules::shipped();
        let mut s = Stream::new();
        let first = s.push(t("2024-01-01T00:00:00Z"), order("a", 5_000)); // 50
        let second = s.push(t("2024-02-01T00:00:00Z"), adjust(30));
        let third = s.push(t("2024-03-01T00:00:00Z"), order("b", 2_000)); // 20
        s.push(t("2024-04-01T00:00:00Z"), redeem(60));
        let state = s.fold(&rules);
        let left: Vec<(Uuid, i64)> = state
            .lots
            .iter()
            .map(|l| (l.event_id, l.remaining))
            .collect();
        assert_eq!(left, vec![(second, 20), (third, 20)]);
        assert!(!left.iter().any(|(id, _)| *id == first));
        s.push(t("2024-04-02T00:00:00Z"), adjust(-25));
        let state = s.fold(&rules);
        let left: Vec<(Uuid, i64)> = state
            .lots
            .iter()
            .map(|l| (l.event_id, l.remaining))
            .collect();
        assert_eq!(left, vec![(third, 15)]);
        assert_eq!(state.totals.consumed, 85);
    }

    #[test]
    fn positive_adjustment_creates_an_expiring_lot() {
        let rules = LoyaltyRules::shipped();
        let mut s = Stream::new();
        let id = s.push(t("2024-05-05T00:00:00Z"), adjust(40));
        let snap = s.snapshot(&rules, t("2024-05-05T00:00:00Z"));
        assert_eq!(snap.balance, 40);
        assert_eq!(snap.lots[0].event_id, id);
        assert_eq!(snap.lots[0].expires_at, t("2025-05-05T00:00:00Z"));
    }

    #[test]
    fn full_refund_claws_back_from_its_own_lot_first() {
        let rules = LoyaltyRules::shipped();
        let mut s = Stream::new();
        let older = s.push(t("2024-01-01T00:00:00Z"), adjust(50));
        s.push(t("2024-01-02T00:00:00Z"), order("o", 10_000));
        s.push(
            t("2024-01-03T00:00:00Z"),
            refund("o", 10_000, RefundKind::Full),
        );
        let state = s.fold(&rules);
        assert_eq!(state.lots.len(), 1);
        assert_eq!(
            (state.lots[0].event_id, state.lots[0].remaining),
            (older, 50)
        );
        assert_eq!(state.orders[0].clawed_back, 100);
        assert!(state.conflicts.is_empty());
    }

    #[test]
    fn partial_refunds_claw_back_proportionally_and_add_up_to_all() {
        let rules = LoyaltyRules::shipped();
        let mut s = Stream::new();
        s.push(t("2024-01-02T00:00:00Z"), order("o", 1_001)); // 10 points
        s.push(
            t("2024-01-03T00:00:00Z"),
            refund("o", 500, RefundKind::Partial),
        );
        let state = s.fold(&rules);
        // floor(10 * 500 / 1001) = 4
        assert_eq!(state.orders[0].clawed_back, 4);
        assert_eq!(state.lots[0].remaining, 6);
        s.push(
            t("2024-01-04T00:00:00Z"),
            refund("o", 501, RefundKind::Partial),
        );
        let state = s.fold(&rules);
        assert_eq!(state.orders[0].clawed_back, 10);
        assert!(state.lots.is_empty());
        assert_eq!(state.totals.consumed, 10);
    }

    #[test]
    fn clawback_continues_fifo_and_records_a_conflict_when_short() {
        let rules = LoyaltyRules::shipped();
        let mut s = Stream::new();
        s.push(t("2024-01-01T00:00:00Z"), order("o", 10_000)); // 100
        s.push(t("2024-01-02T00:00:00Z"), redeem(80)); // own lot left: 20
        let newer = s.push(t("2024-01-03T00:00:00Z"), adjust(50));
        let refund_id = s.push(
            t("2024-01-04T00:00:00Z"),
            refund("o", 10_000, RefundKind::Full),
        );
        let state = s.fold(&rules);
        assert!(state.lots.is_empty(), "20 from own lot, 50 from {newer}");
        assert_eq!(
            state.conflicts,
            vec![Conflict {
                event_id: refund_id,
                at: t("2024-01-04T00:00:00Z"),
                kind: ConflictKind::Clawback,
                requested: 100,
                available: 70,
            }]
        );
        assert_eq!(as_of(&state, &rules, t("2024-02-01T00:00:00Z")).balance, 0);
    }

    #[test]
    fn refund_of_unknown_order_moves_no_points() {
        let rules = LoyaltyRules::shipped();
        let mut s = Stream::new();
        s.push(t("2024-01-01T00:00:00Z"), order("o", 10_000));
        let r = s.push(
            t("2024-01-02T00:00:00Z"),
            refund("zzz", 100, RefundKind::Full),
        );
        let state = s.fold(&rules);
        assert_eq!(state.unmatched_refunds, vec![r]);
        assert_eq!(state.lots[0].remaining, 100);
    }

    #[test]
    fn redemption_beyond_balance_is_a_conflict_and_floors_at_zero() {
        let rules = LoyaltyRules::shipped();
        let mut s = Stream::new();
        s.push(t("2024-01-01T00:00:00Z"), adjust(30));
        let r = s.push(t("2024-01-02T00:00:00Z"), redeem(50));
        s.push(t("2024-01-03T00:00:00Z"), adjust(5));
        let state = s.fold(&rules);
        assert_eq!(state.conflicts.len(), 1);
        let c = &state.conflicts[0];
        assert_eq!((c.event_id, c.requested, c.available), (r, 50, 30));
        assert_eq!(c.kind, ConflictKind::Redemption);
        let snap = as_of(&state, &rules, t("2024-01-03T00:00:00Z"));
        assert_eq!(snap.balance, 5);
        assert_eq!(snap.totals.consumed, 30);
    }

    #[test]
    fn rebuild_under_stingier_rules_turns_a_past_redemption_into_a_conflict() {
        let rules = LoyaltyRules::shipped();
        let mut s = Stream::new();
        s.push(t("2024-01-01T00:00:00Z"), order("o", 10_000)); // 100 at 1.00
        s.push(t("2024-01-02T00:00:00Z"), redeem(100));
        assert!(s.fold(&rules).conflicts.is_empty());
        let mut stingy = rules.clone();
        stingy.earning.rate_hundredths.regular = 50;
        let state = s.fold(&stingy);
        assert_eq!(state.conflicts.len(), 1);
        assert_eq!(
            (state.conflicts[0].requested, state.conflicts[0].available),
            (100, 50)
        );
    }

    #[test]
    fn tier_rises_on_order_and_falls_exactly_when_the_order_leaves_the_window() {
        let rules = LoyaltyRules::shipped();
        let placed = t("2023-06-30T23:59:59.999999Z");
        let mut s = Stream::new();
        let id = s.push(placed, order("big", 150_000));
        let state = s.fold(&rules);
        assert_eq!(
            state.tier_history,
            vec![TierChange {
                from: Tier::Regular,
                to: Tier::Gold,
                at: placed,
                cause: TierCause::Event { event_id: id },
            }]
        );
        let rolloff = t("2024-06-30T23:59:59.999999Z");
        let before = as_of(&state, &rules, rolloff - micro());
        assert_eq!(
            (before.tier, before.qualifying_spend_minor),
            (Tier::Gold, 150_000)
        );
        let after = as_of(&state, &rules, rolloff);
        assert_eq!(
            (after.tier, after.qualifying_spend_minor),
            (Tier::Regular, 0)
        );
        assert_eq!(
            after.tier_history.last().unwrap(),
            &TierChange {
                from: Tier::Gold,
                to: Tier::Regular,
                at: rolloff,
                cause: TierCause::SpendWindow {
                    order_id: "big".into()
                },
            }
        );
    }

    #[test]
    fn refunds_reduce_qualifying_spend_from_the_refund_on() {
        let rules = LoyaltyRules::shipped();
        let mut s = Stream::new();
        s.push(t("2024-01-01T00:00:00Z"), order("o", 60_000));
        let r = s.push(
            t("2024-02-01T00:00:00Z"),
            refund("o", 10_001, RefundKind::Partial),
        );
        let state = s.fold(&rules);
        assert_eq!(state.tier, Tier::Regular);
        let last = state.tier_history.last().unwrap();
        assert_eq!(
            (last.from, last.to, last.cause.clone()),
            (
                Tier::Silver,
                Tier::Regular,
                TierCause::Event { event_id: r }
            )
        );
        assert_eq!(
            as_of(&state, &rules, t("2024-02-01T00:00:00Z")).qualifying_spend_minor,
            49_999
        );
    }

    #[test]
    fn same_instant_rolloff_and_order_leave_one_history_entry() {
        let rules = LoyaltyRules::shipped();
        let mut s = Stream::new();
        s.push(t("2023-01-01T00:00:00Z"), order("a", 60_000));
        s.push(t("2024-01-01T00:00:00Z"), order("b", 60_000));
        let state = s.fold(&rules);
        assert_eq!(state.tier, Tier::Silver);
        assert_eq!(state.tier_history.len(), 1, "{:?}", state.tier_history);
    }

    #[test]
    fn state_survives_a_json_round_trip() {
        let rules = LoyaltyRules::shipped();
        let mut s = Stream::new();
        s.push(t("2024-01-01T00:00:00Z"), order("o", 60_000));
        s.push(t("2024-01-02T00:00:00Z"), touch("double-points"));
        let state = s.fold(&rules);
        let back: LoyaltyState =
            serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        assert_eq!(back, state);
    }

    fn rules_error(text: &str) -> RulesError {
        LoyaltyRules::from_toml_str("rules/loyalty.toml", text).unwrap_err()
    }

    #[test]
    fn rules_errors_name_file_key_and_problem() {
        let base = DEFAULT_RULES_TOML;
        let e = rules_error(&base.replace(
            "gold_min_spend_minor = 150000",
            "gold_min_spend_minor = 40000",
        ));
        assert_eq!(e.file, "rules/loyalty.toml");
        assert_eq!(e.key, "tiers.gold_min_spend_minor");
        assert!(e.problem.contains("silver_min_spend_minor"), "{e}");
        let e = rules_error(&base.replace("\nmonths = 12", "\nmonths = 0"));
        assert_eq!(e.key, "expiry.months");
        let e = rules_error(&base.replace("spend_currency = \"USD\"", "spend_currency = \"usd\""));
        assert_eq!(e.key, "tiers.spend_currency");
        let e = rules_error(&base.replace("gold = 150", "gold = 120"));
        assert_eq!(e.key, "earning.rate_hundredths.gold");
        let e = rules_error(&base.replace("version = 1", "version = 2"));
        assert_eq!(e.key, "version");
        let e = rules_error(&base.replace("\"welcome-back\"", "\"double-points\""));
        assert_eq!(e.key, "campaigns[1].campaign_id");
        let e = rules_error(&base.replace("multiplier_percent = 150", "multiplier_percent = 0"));
        assert_eq!(e.key, "campaigns[1].multiplier_percent");
        // A typo in a key is refused, naming the key and its line.
        let e = rules_error(&base.replace("window_months = 12", "window_month = 12"));
        assert_eq!(e.key, "window_month");
        assert!(e.problem.contains("unknown field"), "{e}");
        assert!(e.problem.contains("line"), "{e}");
        // A missing key names the table it is missing from.
        let e = rules_error(&base.replace("\nmonths = 12\n", "\n"));
        assert!(e.problem.contains("missing field `months`"), "{e}");
        // Wrong type.
        let e = rules_error(&base.replace("window_days = 14", "window_days = \"two weeks\""));
        assert_eq!(e.key, "window_days");
        assert!(
            e.to_string()
                .starts_with("rules/loyalty.toml: window_days: "),
            "{e}"
        );
    }

    #[test]
    fn loading_a_missing_file_names_it() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("projections");
        assert_eq!(
            LoyaltyRules::load_dir(&dir).unwrap(),
            LoyaltyRules::shipped()
        );
        let e = LoyaltyRules::load_dir(Path::new("/nonexistent")).unwrap_err();
        assert_eq!(e.file, "/nonexistent/loyalty.toml");
        assert_eq!(e.key, "(file)");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Order(i64),
        Redeem(i64),
        Adjust(i64),
        Refund(usize, i64, bool),
        Touch(bool),
        Noise,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0i64..200_000).prop_map(Op::Order),
            3 => (1i64..3_000).prop_map(Op::Redeem),
            2 => (-2_000i64..2_000).prop_map(Op::Adjust),
            2 => (0usize..20, 1i64..100_000, any::<bool>()).prop_map(|(i, a, f)| Op::Refund(i, a, f)),
            1 => any::<bool>().prop_map(Op::Touch),
            1 => Just(Op::Noise),
        ]
    }

    fn stream_of(ops: &[(Op, i64)]) -> Stream {
        let mut s = Stream::new();
        let mut at = t("2020-01-01T00:00:00Z");
        for (i, (op, gap_hours)) in ops.iter().enumerate() {
            at += Duration::hours(*gap_hours);
            let event = match op {
                Op::Order(minor) => order(&format!("o{i}"), *minor),
                Op::Redeem(p) => redeem(*p),
                Op::Adjust(p) => adjust(*p),
                Op::Refund(k, minor, full) => refund(
                    &format!("o{}", i.saturating_sub(*k)),
                    *minor,
                    if *full {
                        RefundKind::Full
                    } else {
                        RefundKind::Partial
                    },
                ),
                Op::Touch(double) => touch(if *double {
                    "double-points"
                } else {
                    "welcome-back"
                }),
                Op::Noise => DomainEvent::SessionRecorded(SessionRecorded {
                    session_id: "s".into(),
                    channel: "web".into(),
                    duration_secs: None,
                }),
            };
            s.push(at, event);
        }
        s
    }

    /// Qualifying spend computed straight from the events (12-month window,
    /// refunds up to `at` capped at the order value), independent of the fold.
    fn oracle_spend(events: &[(Uuid, DateTime<Utc>, DomainEvent)], at: DateTime<Utc>) -> i64 {
        let seen: Vec<_> = events.iter().filter(|(_, t, _)| *t <= at).collect();
        seen.iter()
            .filter_map(|(_, placed, e)| match e {
                DomainEvent::OrderPlaced(o) if at < add_months(*placed, 12) => Some(o),
                _ => None,
            })
            .map(|o| {
                let mut refunded = 0i64;
                for (_, _, e) in &seen {
                    if let DomainEvent::OrderRefunded(r) = e {
                        if r.order_id == o.order_id {
                            refunded = match r.kind {
                                RefundKind::Full => o.amount.minor,
                                RefundKind::Partial => {
                                    (refunded + r.amount.minor).min(o.amount.minor)
                                }
                            };
                        }
                    }
                }
                o.amount.minor - refunded
            })
            .sum()
    }

    proptest! {
        #[test]
        fn balance_is_never_negative_and_equals_earned_minus_consumed_minus_expired(
            ops in prop::collection::vec((op(), 0i64..2_000), 1..60),
            probe_hours in 0i64..40_000,
        ) {
            let rules = LoyaltyRules::shipped();
            let s = stream_of(&ops);
            let mut state = LoyaltyState::default();
            for (i, (id, at, event)) in s.events.iter().enumerate() {
                apply(&mut state, &rules, &EventView { event_id: *id, occurred_at: *at, event });
                let snap = as_of(&state, &rules, *at);
                let spend = oracle_spend(&s.events[..=i], *at);
                prop_assert_eq!(snap.qualifying_spend_minor, spend);
                prop_assert_eq!(snap.tier, rules.tier_for_spend(spend));
                prop_assert!(snap.balance >= 0);
                prop_assert!(snap.lots.iter().all(|l| l.remaining > 0 && l.remaining <= l.original));
                prop_assert_eq!(snap.balance, snap.totals.earned - snap.totals.consumed - snap.totals.expired);
            }
            let last = s.events.last().unwrap().1;
            let later = as_of(&state, &rules, last + Duration::hours(probe_hours));
            prop_assert!(later.balance >= 0);
            prop_assert_eq!(later.balance, later.totals.earned - later.totals.consumed - later.totals.expired);
            // Every lot still counted is unexpired at the probe instant.
            prop_assert!(later.lots.iter().all(|l| l.expires_at > later.as_of));
        }

        #[test]
        fn persisted_state_continues_exactly_like_an_uninterrupted_fold(
            ops in prop::collection::vec((op(), 0i64..2_000), 2..40),
            split in 0usize..40,
        ) {
            let rules = LoyaltyRules::shipped();
            let s = stream_of(&ops);
            let split = split.min(s.events.len());
            let whole = s.fold(&rules);
            let mut state = LoyaltyState::default();
            for (i, (id, at, event)) in s.events.iter().enumerate() {
                if i == split {
                    state = serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
                }
                apply(&mut state, &rules, &EventView { event_id: *id, occurred_at: *at, event });
            }
            prop_assert_eq!(state, whole);
        }
    }
}

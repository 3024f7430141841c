//! The one clock the runner advances customers to.
//!
//! Folds have no clock of their own: time rules fire when a fold is
//! advanced to an instant. The runner advances each customer it touches to
//! "now", and every customer whose next deadline has passed (see
//! [`super::state::Folds::deadline`]), so the per-customer tables show every
//! customer as of the clock, not as of their last event. Now is the wall
//! clock unless pinned (`--now`, `[projections] now`): a pinned clock makes
//! rebuilds of historical data sets reproducible; a manual clock lets tests
//! move time.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};

/// Where "now" comes from.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The system's UTC time.
    #[default]
    Wall,
    /// A fixed instant.
    Fixed(DateTime<Utc>),
    /// An instant the owner moves (tests, simulations).
    Manual(ManualClock),
}

impl Clock {
    /// The current instant, truncated to microseconds like every stored
    /// instant.
    pub fn now(&self) -> DateTime<Utc> {
        let now = match self {
            Clock::Wall => Utc::now(),
            Clock::Fixed(at) => *at,
            Clock::Manual(clock) => clock.now(),
        };
        DateTime::from_timestamp_micros(now.timestamp_micros()).expect("now is in range")
    }
}

/// A clock that stands still until set.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock showing `at`.
    pub fn new(at: DateTime<Utc>) -> Self {
        Self(Arc::new(AtomicI64::new(at.timestamp_micros())))
    }

    /// The instant it shows.
    pub fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.0.load(Ordering::SeqCst)).expect("in range")
    }

    /// Moves it to `at` (every clone sees it).
    pub fn set(&self, at: DateTime<Utc>) {
        self.0.store(at.timestamp_micros(), Ordering::SeqCst);
    }
}

//! The one clock the runner advances customers to.
//!
//! Folds have no clock of their own: time rules fire when a fold is
//! advanced to an instant. The runner advances each customer it touches to
//! "now", so the per-customer tables show every customer as of the clock,
//! not as of their last event. Now is the wall clock unless pinned
//! (`--now`, `[projections] now` in the config): a pinned clock makes
//! rebuilds of historical data sets reproducible and lets tests control
//! time.

use chrono::{DateTime, Utc};

/// Where "now" comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Clock {
    /// The system's UTC time.
    #[default]
    Wall,
    /// A fixed instant.
    Fixed(DateTime<Utc>),
}

impl Clock {
    /// The current instant, truncated to microseconds like every stored
    /// instant.
    pub fn now(&self) -> DateTime<Utc> {
        let now = match self {
            Clock::Wall => Utc::now(),
            Clock::Fixed(at) => *at,
        };
        DateTime::from_timestamp_micros(now.timestamp_micros()).expect("now is in range")
    }
}

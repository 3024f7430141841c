//! Read models folded from the event stream (pure per-customer folds here;
//! the runner that persists them lives beside them in the main crate).

pub mod alerts;
pub mod cohorts;
pub mod loyalty;
pub mod rules_error;
pub mod value;
pub mod view;

//! Stage charts from one fold per customer: the fold as of the last instant
//! yields the customer's whole stage history (event-driven and time-driven
//! transitions, each with its instant), from which the stage at any earlier
//! instant is the last transition at or before it. One pass over the streams
//! serves the timeline, the flows and, folded a second time under other
//! rules, the rules diff.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde::Serialize;

use crate::projections::query::{fold_customer_events, TransitionView};
use crate::projections::rules::RuleSet;
use crate::store::{for_each_customer_stream, EventStore};

use super::ReportError;

/// Stage names in the order the charts stack and list them; "none" is a
/// customer without events yet.
pub const STAGE_ORDER: [&str; 9] = [
    "none",
    "prospect",
    "new",
    "active",
    "mature",
    "reactivated",
    "at_risk",
    "dormant",
    "churned",
];

/// Customers per stage at the first instant of each month.
#[derive(Debug, Clone, Serialize)]
pub struct StageTimeline {
    /// The instants (first of each month, UTC, then the last instant).
    pub instants: Vec<DateTime<Utc>>,
    /// Stage names, in stacking order.
    pub stages: Vec<String>,
    /// `counts[s][i]`: customers in `stages[s]` at `instants[i]`.
    pub counts: Vec<Vec<u64>>,
}

/// Customers by stage at one instant (rows) and at another instant or under
/// other rules (columns).
#[derive(Debug, Clone, Serialize)]
pub struct FlowMatrix {
    /// What the rows are.
    pub rows_label: String,
    /// What the columns are.
    pub columns_label: String,
    /// Stage names of rows and columns.
    pub stages: Vec<String>,
    /// `counts[r][c]`: customers in `stages[r]` then and `stages[c]` after.
    pub counts: Vec<Vec<u64>>,
}

/// Each customer's stage history under the rules and, when asked, the
/// comparison rules.
pub struct StageHistories {
    /// Per customer: transitions (instant, stage) in order.
    primary: Vec<Vec<(DateTime<Utc>, String)>>,
    /// The same under the comparison rules (empty without them).
    compare: Vec<Vec<(DateTime<Utc>, String)>>,
    /// First event instant over all customers.
    first: Option<DateTime<Utc>>,
}

/// Reads every customer stream once and folds it as of `as_of`.
pub async fn collect(
    store: Arc<dyn EventStore>,
    rules: &RuleSet,
    compare: Option<&RuleSet>,
    as_of: DateTime<Utc>,
) -> Result<StageHistories, ReportError> {
    let mut out = StageHistories {
        primary: Vec::new(),
        compare: Vec::new(),
        first: None,
    };
    for_each_customer_stream(store.as_ref(), |customer, events| {
        if let Some(first) = events.iter().map(|e| e.occurred_at).min() {
            out.first = Some(out.first.map_or(first, |f| f.min(first)));
        }
        let history = |rules: &RuleSet| {
            fold_customer_events(rules, &events, as_of)
                .map(|f| parse_history(&f.stage_history))
                .map_err(|e| ReportError::Fold {
                    customer: customer.as_str().to_owned(),
                    reason: e.to_string(),
                })
        };
        out.primary.push(history(rules)?);
        if let Some(compare) = compare {
            out.compare.push(history(compare)?);
        }
        Ok::<_, ReportError>(())
    })
    .await?;
    Ok(out)
}

fn parse_history(views: &[TransitionView]) -> Vec<(DateTime<Utc>, String)> {
    views
        .iter()
        .filter_map(|t| {
            DateTime::parse_from_rfc3339(&t.at)
                .ok()
                .map(|at| (at.with_timezone(&Utc), t.to.clone()))
        })
        .collect()
}

/// Stage at `at` given the transitions in order ("none" before the first).
fn stage_at(history: &[(DateTime<Utc>, String)], at: DateTime<Utc>) -> &str {
    let n = history.partition_point(|(t, _)| *t <= at);
    if n == 0 {
        "none"
    } else {
        &history[n - 1].1
    }
}

impl StageHistories {
    /// Stage counts on the first of every month from the first event to
    /// `end`, then at `end`.
    pub fn timeline(&self, end: DateTime<Utc>) -> StageTimeline {
        let mut instants = Vec::new();
        if let Some(first) = self.first {
            let mut month = NaiveDate::from_ymd_opt(first.year(), first.month(), 1)
                .expect("first of a month exists");
            loop {
                let at = Utc.from_utc_datetime(&month.and_hms_opt(0, 0, 0).expect("midnight"));
                if at >= end {
                    break;
                }
                instants.push(at);
                month = month
                    .checked_add_months(chrono::Months::new(1))
                    .expect("month in range");
            }
        }
        instants.push(end);
        let mut counts: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for history in &self.primary {
            for (i, &at) in instants.iter().enumerate() {
                let stage = stage_at(history, at);
                counts
                    .entry(stage)
                    .or_insert_with(|| vec![0; instants.len()])[i] += 1;
            }
        }
        counts.remove("none");
        let stages = ordered(counts.keys().copied());
        StageTimeline {
            counts: stages.iter().map(|s| counts[s.as_str()].clone()).collect(),
            stages,
            instants,
        }
    }

    /// Stage at `from` (rows) against stage at `to` (columns).
    pub fn flows(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> FlowMatrix {
        matrix(
            self.primary
                .iter()
                .map(|h| (stage_at(h, from), stage_at(h, to))),
            format!("stage at {}", from.format("%Y-%m-%d %H:%M UTC")),
            format!("stage at {}", to.format("%Y-%m-%d %H:%M UTC")),
        )
    }

    /// Stage at `at` under the rules (rows) against the comparison rules
    /// (columns).
    pub fn rules_diff(&self, at: DateTime<Utc>) -> FlowMatrix {
        matrix(
            self.primary
                .iter()
                .zip(&self.compare)
                .map(|(a, b)| (stage_at(a, at), stage_at(b, at))),
            "stage under the current rules".into(),
            "stage under the compared rules".into(),
        )
    }
}

fn matrix<'a>(
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
    rows_label: String,
    columns_label: String,
) -> FlowMatrix {
    let mut cells: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for pair in pairs {
        *cells.entry(pair).or_default() += 1;
    }
    let stages = ordered(cells.keys().flat_map(|&(a, b)| [a, b]));
    let index = |s: &str| stages.iter().position(|x| x == s).expect("listed");
    let mut counts = vec![vec![0; stages.len()]; stages.len()];
    for ((a, b), n) in cells {
        counts[index(a)][index(b)] += n;
    }
    FlowMatrix {
        rows_label,
        columns_label,
        stages,
        counts,
    }
}

/// Distinct stage names in [`STAGE_ORDER`], unknown names after, sorted.
fn ordered<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut names: Vec<&str> = names.collect();
    names.sort_by_key(|s| {
        (
            STAGE_ORDER
                .iter()
                .position(|x| x == s)
                .unwrap_or(usize::MAX),
            *s,
        )
    });
    names.dedup();
    names.into_iter().map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 1, day, 0, 0, 0).unwrap()
    }

    fn histories() -> StageHistories {
        let h = |v: &[(u32, &str)]| v.iter().map(|&(d, s)| (at(d), s.to_owned())).collect();
        StageHistories {
            primary: vec![
                h(&[(2, "new"), (10, "active"), (20, "at_risk")]),
                h(&[(5, "new")]),
                h(&[(15, "new")]),
            ],
            compare: vec![
                h(&[(2, "new"), (10, "active")]),
                h(&[(5, "new"), (12, "dormant")]),
                h(&[(15, "new")]),
            ],
            first: Some(at(2)),
        }
    }

    #[test]
    fn the_stage_at_an_instant_is_the_last_transition_at_or_before_it() {
        let h = &histories().primary[0];
        assert_eq!(stage_at(h, at(1)), "none");
        assert_eq!(stage_at(h, at(10)), "active");
        assert_eq!(stage_at(h, at(19)), "active");
        assert_eq!(stage_at(h, at(25)), "at_risk");
    }

    #[test]
    fn flows_count_every_customer_once_in_stage_order() {
        let flows = histories().flows(at(11), at(21));
        assert_eq!(flows.stages, ["none", "new", "active", "at_risk"]);
        // active → at_risk, new → new, none → new.
        assert_eq!(flows.counts[2][3], 1);
        assert_eq!(flows.counts[1][1], 1);
        assert_eq!(flows.counts[0][1], 1);
        assert_eq!(flows.counts.iter().flatten().sum::<u64>(), 3);
    }

    #[test]
    fn the_rules_diff_pairs_each_customer_under_both_rule_sets() {
        let diff = histories().rules_diff(at(25));
        assert_eq!(diff.stages, ["new", "active", "at_risk", "dormant"]);
        assert_eq!(diff.counts[2][1], 1, "at_risk now, active under the other");
        assert_eq!(diff.counts[0][3], 1, "new now, dormant under the other");
        assert_eq!(diff.counts[0][0], 1);
    }

    #[test]
    fn the_timeline_counts_customers_acquired_by_each_instant() {
        let t = histories().timeline(at(25));
        assert_eq!(t.instants, vec![at(1), at(25)]);
        let count = |stage: &str| t.counts[t.stages.iter().position(|s| s == stage).unwrap()][1];
        assert!(
            t.counts.iter().all(|row| row[0] == 0),
            "nobody before the first event"
        );
        assert_eq!((count("new"), count("at_risk")), (2, 1));
    }
}

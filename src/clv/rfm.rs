//! RFM (recency, frequency, monetary) scoring and rule-based segments — the
//! simple, explainable complement to the probabilistic models.
//!
//! # Scoring and ties
//! Each dimension is scored 1–5 by population quintile, higher is better
//! (more recent, more frequent, more spend). A customer's score is
//! `1 + floor(5 · w / n)` where `w` is the number of customers strictly
//! *worse* on that dimension and `n` the population size. Equal values thus
//! always get equal scores, the result is independent of input order, and a
//! large tie group (e.g. all one-time buyers) shares the score of its lowest
//! member rather than being split arbitrarily.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::summary::Transaction;
use super::{invalid, ClvError};

/// Raw RFM measures for one customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RfmInput {
    /// Customer identifier.
    pub customer: String,
    /// Days since the last purchase (lower is better).
    pub days_since_last: f64,
    /// Number of purchase days (same-day purchases count once).
    pub frequency: u32,
    /// Total spend in minor units.
    pub monetary_minor: i64,
}

/// Builds [`RfmInput`]s from transactions at or before `as_of`; whole-day
/// granularity as in [`super::summary`].
pub fn rfm_inputs_from_transactions(
    transactions: &[Transaction],
    as_of: DateTime<Utc>,
) -> Vec<RfmInput> {
    let as_of_day = as_of.date_naive();
    let mut acc: HashMap<&str, (Vec<NaiveDate>, i64)> = HashMap::new();
    for tx in transactions.iter().filter(|t| t.at <= as_of) {
        let e = acc.entry(tx.customer.as_str()).or_default();
        e.0.push(tx.at.date_naive());
        e.1 = e.1.saturating_add(tx.amount_minor);
    }
    let mut out: Vec<RfmInput> = acc
        .into_iter()
        .filter_map(|(c, (mut days, total))| {
            days.sort_unstable();
            days.dedup();
            let last = *days.last()?;
            Some(RfmInput {
                customer: c.to_string(),
                days_since_last: (as_of_day - last).num_days() as f64,
                frequency: u32::try_from(days.len()).unwrap_or(u32::MAX),
                monetary_minor: total,
            })
        })
        .collect();
    out.sort_unstable_by(|a, b| a.customer.cmp(&b.customer));
    out
}

/// Weights of the three scores in the total (need not sum to 1, but the
/// defaults do so the total stays on the 1–5 scale).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RfmWeights {
    /// Weight of the recency score.
    pub recency: f64,
    /// Weight of the frequency score.
    pub frequency: f64,
    /// Weight of the monetary score.
    pub monetary: f64,
}

impl Default for RfmWeights {
    fn default() -> Self {
        Self {
            recency: 0.25,
            frequency: 0.30,
            monetary: 0.45,
        }
    }
}

fn one() -> u8 {
    1
}
fn five() -> u8 {
    5
}

/// A named segment: inclusive score ranges on R, F and M. Omitted bounds in
/// TOML/JSON default to the full 1–5 range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentRule {
    /// Segment name reported for matching customers.
    pub name: String,
    /// Minimum recency score (inclusive).
    #[serde(default = "one")]
    pub r_min: u8,
    /// Maximum recency score (inclusive).
    #[serde(default = "five")]
    pub r_max: u8,
    /// Minimum frequency score (inclusive).
    #[serde(default = "one")]
    pub f_min: u8,
    /// Maximum frequency score (inclusive).
    #[serde(default = "five")]
    pub f_max: u8,
    /// Minimum monetary score (inclusive).
    #[serde(default = "one")]
    pub m_min: u8,
    /// Maximum monetary score (inclusive).
    #[serde(default = "five")]
    pub m_max: u8,
}

impl SegmentRule {
    /// Whether the (r, f, m) scores fall inside this rule.
    pub fn matches(&self, r: u8, f: u8, m: u8) -> bool {
        (self.r_min..=self.r_max).contains(&r)
            && (self.f_min..=self.f_max).contains(&f)
            && (self.m_min..=self.m_max).contains(&m)
    }

    fn new(name: &str, r: (u8, u8), f: (u8, u8), m: (u8, u8)) -> Self {
        Self {
            name: name.to_string(),
            r_min: r.0,
            r_max: r.1,
            f_min: f.0,
            f_max: f.1,
            m_min: m.0,
            m_max: m.1,
        }
    }
}

/// Ordered segment rules (first match wins), deserialisable from a TOML file
/// with `[[rules]]` tables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentRules {
    /// Rules in priority order.
    pub rules: Vec<SegmentRule>,
}

impl Default for SegmentRules {
    fn default() -> Self {
        Self {
            rules: default_segment_rules(),
        }
    }
}

/// Default segments; together they cover all 125 (r, f, m) combinations.
pub fn default_segment_rules() -> Vec<SegmentRule> {
    let all = (1, 5);
    vec![
        SegmentRule::new("champions", (4, 5), (4, 5), (4, 5)),
        SegmentRule::new("cant_lose", (1, 2), (4, 5), (4, 5)),
        SegmentRule::new("loyal", (3, 5), (4, 5), all),
        SegmentRule::new("at_risk", (1, 2), (3, 5), all),
        SegmentRule::new("new", (5, 5), (1, 1), all),
        SegmentRule::new("potential_loyalist", (4, 5), (2, 3), all),
        SegmentRule::new("promising", (4, 4), (1, 1), all),
        SegmentRule::new("need_attention", (3, 3), (2, 3), all),
        SegmentRule::new("about_to_sleep", (3, 3), (1, 1), all),
        SegmentRule::new("hibernating", (2, 2), (1, 2), all),
        SegmentRule::new("lost", (1, 1), (1, 2), all),
    ]
}

/// Scores of one customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RfmScore {
    /// Customer identifier.
    pub customer: String,
    /// Recency score 1–5 (5 = most recent).
    pub r: u8,
    /// Frequency score 1–5.
    pub f: u8,
    /// Monetary score 1–5.
    pub m: u8,
    /// Weighted total of the three scores.
    pub total: f64,
    /// First matching segment, if any.
    pub segment: Option<String>,
}

/// Quintile scores where a larger `key` is better (see module docs for ties).
fn quintile_scores(keys: &[f64]) -> Vec<u8> {
    let mut sorted = keys.to_vec();
    sorted.sort_unstable_by(f64::total_cmp);
    keys.iter().map(|k| quintile_score(&sorted, *k)).collect()
}

/// The quintile score of `key` in a population whose keys are `sorted`
/// (ascending, `key` among them): `1 + floor(5 · worse / n)`.
pub fn quintile_score(sorted: &[f64], key: f64) -> u8 {
    let worse = sorted.partition_point(|v| v.total_cmp(&key).is_lt());
    // worse < n when key is in the population, so the score is in 1..=5.
    (1 + (5 * worse) / sorted.len().max(1)).min(5) as u8
}

/// The four keys that split a population into quintiles: [`quintile_score`]
/// without the population. A key scores one more than the number of cuts
/// below it, so a pass over many customers keeps four numbers per key
/// instead of every customer's key.
///
/// `quintile_score` is `1 + floor(5 · worse / n)`, at most 5, where `worse`
/// counts the keys below; it reaches `j + 1` when `worse ≥ ⌈j·n/5⌉`, that is
/// when the key is above the `⌈j·n/5⌉`-th smallest key: that key is cut `j`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuintileCuts([f64; 4]);

impl QuintileCuts {
    /// The cuts of a population given as distinct keys, ascending, each
    /// with how many customers have it; `None` for an empty population.
    pub fn from_counts(counted: impl IntoIterator<Item = (f64, u64)>) -> Option<Self> {
        let counted: Vec<(f64, u64)> = counted.into_iter().collect();
        let n: u64 = counted.iter().map(|(_, count)| count).sum();
        if n == 0 {
            return None;
        }
        let mut cuts = [0.0; 4];
        let mut keys = counted.iter();
        let (mut key, mut through) = (0.0, 0);
        for (j, cut) in (1..).zip(&mut cuts) {
            let rank = (j * n).div_ceil(5);
            while through < rank {
                let (next, count) = keys.next().expect("ranks are within the population");
                (key, through) = (*next, through + count);
            }
            *cut = key;
        }
        Some(Self(cuts))
    }

    /// The cuts of a population given as every customer's key, in any
    /// order (sorted in place); `None` for an empty population.
    pub fn from_keys(keys: &mut [i64]) -> Option<Self> {
        keys.sort_unstable();
        let n = keys.len() as u64;
        if n == 0 {
            return None;
        }
        Some(Self([1, 2, 3, 4].map(|j: u64| {
            keys[((j * n).div_ceil(5) - 1) as usize] as f64
        })))
    }

    /// The score 1–5 of `key`, as [`quintile_score`] gives it.
    pub fn score(&self, key: f64) -> u8 {
        1 + self
            .0
            .iter()
            .filter(|cut| cut.total_cmp(&key).is_lt())
            .count() as u8
    }
}

/// The RFM keys of one customer, larger is better on each: recency is
/// negated days since the last purchase.
pub fn rfm_keys(input: &RfmInput) -> [f64; 3] {
    [
        -input.days_since_last,
        f64::from(input.frequency),
        input.monetary_minor as f64,
    ]
}

/// Weighted total and first matching segment of scores `r`, `f`, `m`.
pub fn total_and_segment(
    (r, f, m): (u8, u8, u8),
    weights: &RfmWeights,
    rules: &[SegmentRule],
) -> (f64, Option<String>) {
    (
        weights.recency * f64::from(r)
            + weights.frequency * f64::from(f)
            + weights.monetary * f64::from(m),
        rules
            .iter()
            .find(|rule| rule.matches(r, f, m))
            .map(|rule| rule.name.clone()),
    )
}

/// Scores every customer and assigns the first matching segment.
pub fn score_rfm(
    inputs: &[RfmInput],
    weights: &RfmWeights,
    rules: &[SegmentRule],
) -> Result<Vec<RfmScore>, ClvError> {
    for i in inputs {
        if !i.days_since_last.is_finite() {
            return Err(invalid(
                "days_since_last",
                format!("not finite for {}", i.customer),
            ));
        }
    }
    let keys: Vec<[f64; 3]> = inputs.iter().map(rfm_keys).collect();
    let score = |d: usize| quintile_scores(&keys.iter().map(|k| k[d]).collect::<Vec<_>>());
    let (r, f, m) = (score(0), score(1), score(2));
    Ok(inputs
        .iter()
        .enumerate()
        .map(|(k, inp)| {
            let (total, segment) = total_and_segment((r[k], f[k], m[k]), weights, rules);
            RfmScore {
                customer: inp.customer.clone(),
                r: r[k],
                f: f[k],
                m: m[k],
                total,
                segment,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The cuts score every key as the whole sorted population does,
        /// keys outside the population and heavy ties included, whether
        /// built from counted keys or from every key.
        #[test]
        fn cuts_score_as_the_sorted_population(
            keys in prop::collection::vec(-20i64..20, 1..120),
            probes in prop::collection::vec(-25i64..25, 1..20),
        ) {
            let mut sorted: Vec<f64> = keys.iter().map(|k| *k as f64).collect();
            sorted.sort_unstable_by(f64::total_cmp);
            let mut counts = std::collections::BTreeMap::new();
            for k in &keys {
                *counts.entry(*k).or_insert(0u64) += 1;
            }
            let counted = QuintileCuts::from_counts(counts.iter().map(|(k, c)| (*k as f64, *c)));
            let every = QuintileCuts::from_keys(&mut keys.clone());
            prop_assert_eq!(counted, every);
            let cuts = every.expect("a population");
            for key in keys.iter().chain(&probes) {
                let key = *key as f64;
                prop_assert_eq!(cuts.score(key), quintile_score(&sorted, key));
            }
        }
    }

    #[test]
    fn an_empty_population_has_no_cuts() {
        assert_eq!(QuintileCuts::from_counts([]), None);
        assert_eq!(QuintileCuts::from_keys(&mut []), None);
    }

    fn inp(c: &str, days: f64, f: u32, m: i64) -> RfmInput {
        RfmInput {
            customer: c.into(),
            days_since_last: days,
            frequency: f,
            monetary_minor: m,
        }
    }

    #[test]
    fn quintiles_on_ten_customers() {
        // Ten customers with distinct values: two per quintile.
        let pop: Vec<RfmInput> = (0..10)
            .map(|i| {
                inp(
                    &format!("c{i}"),
                    f64::from(i) * 10.0,
                    10 - i as u32,
                    1000 * (i as i64 + 1),
                )
            })
            .collect();
        let s = score_rfm(&pop, &RfmWeights::default(), &default_segment_rules()).unwrap();
        let r: Vec<u8> = s.iter().map(|x| x.r).collect();
        let f: Vec<u8> = s.iter().map(|x| x.f).collect();
        let m: Vec<u8> = s.iter().map(|x| x.m).collect();
        assert_eq!(r, vec![5, 5, 4, 4, 3, 3, 2, 2, 1, 1]); // most recent = 5
        assert_eq!(f, vec![5, 5, 4, 4, 3, 3, 2, 2, 1, 1]);
        assert_eq!(m, vec![1, 1, 2, 2, 3, 3, 4, 4, 5, 5]);
        assert!((s[0].total - (0.25 * 5.0 + 0.30 * 5.0 + 0.45 * 1.0)).abs() < 1e-12);
        assert_eq!(s[0].segment.as_deref(), Some("loyal"));
        assert_eq!(s[9].segment.as_deref(), Some("lost"));
    }

    #[test]
    fn ties_share_the_lower_score_and_order_does_not_matter() {
        let mut pop = vec![
            inp("a", 5.0, 1, 100),
            inp("b", 5.0, 1, 100),
            inp("c", 5.0, 1, 100),
            inp("d", 1.0, 3, 500),
            inp("e", 9.0, 2, 300),
        ];
        let s1 = score_rfm(&pop, &RfmWeights::default(), &[]).unwrap();
        // a, b, c: one customer (e) worse on recency → 1 + 5·1/5 = 2; none worse on F, M → 1.
        for x in &s1[..3] {
            assert_eq!((x.r, x.f, x.m), (2, 1, 1));
            assert_eq!(x.segment, None);
        }
        assert_eq!((s1[3].r, s1[3].f, s1[3].m), (5, 5, 5));
        assert_eq!((s1[4].r, s1[4].f, s1[4].m), (1, 4, 4));
        pop.reverse();
        let s2 = score_rfm(&pop, &RfmWeights::default(), &[]).unwrap();
        for a in &s1 {
            let b = s2.iter().find(|b| b.customer == a.customer).unwrap();
            assert_eq!((a.r, a.f, a.m), (b.r, b.f, b.m));
        }
    }

    #[test]
    fn rules_and_weights_load_from_toml() {
        let text = r#"
            [[rules]]
            name = "vip"
            r_min = 4
            m_min = 5

            [[rules]]
            name = "everyone_else"
        "#;
        let rules: SegmentRules = toml::from_str(text).unwrap();
        assert_eq!(rules.rules.len(), 2);
        assert_eq!(
            (
                rules.rules[0].r_min,
                rules.rules[0].r_max,
                rules.rules[0].f_min
            ),
            (4, 5, 1)
        );
        assert!(rules.rules[0].matches(5, 1, 5) && !rules.rules[0].matches(5, 1, 4));
        assert!(rules.rules[1].matches(1, 1, 1));
        let w: RfmWeights = toml::from_str("monetary = 0.5").unwrap();
        assert_eq!((w.monetary, w.recency), (0.5, 0.25));
        assert!(toml::from_str::<SegmentRules>("[[rules]]\nname='x'\nrmin=1").is_err());
        let round: SegmentRules =
            toml::from_str(&toml::to_string(&SegmentRules::default()).unwrap()).unwrap();
        assert_eq!(round, SegmentRules::default());
    }

    #[test]
    fn inputs_from_transactions_merge_days() {
        use chrono::TimeZone;
        let at = |d: u32, h: u32| Utc.with_ymd_and_hms(2024, 3, d, h, 0, 0).single().unwrap();
        let txs = vec![
            Transaction {
                customer: "a".into(),
                at: at(1, 9),
                amount_minor: 100,
            },
            Transaction {
                customer: "a".into(),
                at: at(1, 20),
                amount_minor: 50,
            },
            Transaction {
                customer: "a".into(),
                at: at(5, 9),
                amount_minor: 25,
            },
            Transaction {
                customer: "a".into(),
                at: at(20, 9),
                amount_minor: 999,
            },
        ];
        let inputs = rfm_inputs_from_transactions(&txs, at(10, 0));
        assert_eq!(inputs, vec![inp("a", 5.0, 2, 175)]);
    }

    #[test]
    fn default_rules_cover_every_combination() {
        let rules = default_segment_rules();
        for r in 1..=5 {
            for f in 1..=5 {
                for m in 1..=5 {
                    assert!(rules.iter().any(|x| x.matches(r, f, m)), "({r},{f},{m})");
                }
            }
        }
    }
}

//! How well a score ranks customers by what they then did: the figures a
//! holdout validation of churn signals reports beside the calibration
//! table of [`super::holdout`] — ROC AUC, the ROC curve, and precision,
//! recall and lift among the top-scored fraction.
//!
//! Scores are "higher = more likely positive" (for churn warnings: more
//! likely to *not* buy again). Ties are handled the standard way: AUC
//! uses average ranks (the Mann–Whitney statistic, a tied positive/negative
//! pair counting one half), and a top fraction whose cut falls inside a
//! group of tied scores takes that group's share pro rata — the expected
//! figures under a random order of the ties, so no arbitrary tie-break
//! (input order, customer id) can flatter a coarse score such as an RFM
//! cell or a fired/not-fired alert.

use serde::Serialize;

/// One customer: the signal's score and whether the outcome happened.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// The signal's score (higher = more likely positive). Must not be NaN.
    pub score: f64,
    /// Whether the outcome happened (e.g. no repeat purchase in the holdout).
    pub positive: bool,
}

/// Precision, recall and lift among the top-scored fraction.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TopFraction {
    /// The fraction asked for (0.1 = the top 10 %).
    pub fraction: f64,
    /// Customers selected: the fraction of all, rounded up.
    pub selected: usize,
    /// Expected positives among them (fractional when the cut splits ties).
    pub positives: f64,
    /// Positives among the selected / selected.
    pub precision: f64,
    /// Positives among the selected / all positives.
    pub recall: f64,
    /// Precision / the base rate (1.0 = no better than picking at random).
    pub lift: f64,
}

/// Groups of equal scores, highest first: (score, customers, positives).
fn tie_groups(items: &[Scored]) -> Vec<(f64, usize, usize)> {
    let mut sorted: Vec<Scored> = items.to_vec();
    sorted.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut groups: Vec<(f64, usize, usize)> = Vec::new();
    for item in sorted {
        match groups.last_mut() {
            Some((score, n, p)) if *score == item.score => {
                *n += 1;
                *p += usize::from(item.positive);
            }
            _ => groups.push((item.score, 1, usize::from(item.positive))),
        }
    }
    groups
}

/// ROC AUC: the probability that a random positive scores above a random
/// negative (ties count one half). `None` without positives or negatives.
pub fn roc_auc(items: &[Scored]) -> Option<f64> {
    let positives = items.iter().filter(|i| i.positive).count();
    let negatives = items.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    // Walk from the highest score: each positive beats the negatives of
    // every lower group, and ties with its own group's negatives.
    let mut negatives_below = negatives as f64;
    let mut wins = 0.0;
    for (_, n, p) in tie_groups(items) {
        let group_negatives = (n - p) as f64;
        negatives_below -= group_negatives;
        wins += p as f64 * (negatives_below + group_negatives / 2.0);
    }
    Some(wins / (positives as f64 * negatives as f64))
}

/// The ROC curve as (false-positive rate, true-positive rate) points from
/// (0, 0) to (1, 1), one per group of tied scores (a tie group is one
/// diagonal step). Empty without positives or negatives.
pub fn roc_curve(items: &[Scored]) -> Vec<(f64, f64)> {
    let positives = items.iter().filter(|i| i.positive).count();
    let negatives = items.len() - positives;
    if positives == 0 || negatives == 0 {
        return Vec::new();
    }
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut points = vec![(0.0, 0.0)];
    for (_, n, p) in tie_groups(items) {
        tp += p;
        fp += n - p;
        points.push((fp as f64 / negatives as f64, tp as f64 / positives as f64));
    }
    points
}

/// Precision, recall and lift among the top `fraction` (0 < fraction ≤ 1)
/// of customers by score. `None` when there are no customers, no
/// positives, or the fraction is out of range.
pub fn top_fraction(items: &[Scored], fraction: f64) -> Option<TopFraction> {
    let positives = items.iter().filter(|i| i.positive).count();
    if items.is_empty() || positives == 0 || !(fraction > 0.0 && fraction <= 1.0) {
        return None;
    }
    let selected = ((items.len() as f64 * fraction).ceil() as usize).clamp(1, items.len());
    let mut left = selected;
    let mut found = 0.0;
    for (_, n, p) in tie_groups(items) {
        if left == 0 {
            break;
        }
        let take = left.min(n);
        found += p as f64 * take as f64 / n as f64;
        left -= take;
    }
    let precision = found / selected as f64;
    let base_rate = positives as f64 / items.len() as f64;
    Some(TopFraction {
        fraction,
        selected,
        positives: found,
        precision,
        recall: found / positives as f64,
        lift: precision / base_rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scored(pairs: &[(f64, bool)]) -> Vec<Scored> {
        pairs
            .iter()
            .map(|&(score, positive)| Scored { score, positive })
            .collect()
    }

    /// The definition, pair by pair.
    fn auc_by_pairs(items: &[Scored]) -> Option<f64> {
        let (pos, neg): (Vec<&Scored>, Vec<&Scored>) = items.iter().partition(|i| i.positive);
        if pos.is_empty() || neg.is_empty() {
            return None;
        }
        let mut wins = 0.0;
        for p in &pos {
            for n in &neg {
                wins += if p.score > n.score {
                    1.0
                } else if p.score == n.score {
                    0.5
                } else {
                    0.0
                };
            }
        }
        Some(wins / (pos.len() * neg.len()) as f64)
    }

    #[test]
    fn perfect_reversed_and_uninformative_scores() {
        let perfect = scored(&[(0.9, true), (0.8, true), (0.2, false), (0.1, false)]);
        assert_eq!(roc_auc(&perfect), Some(1.0));
        let reversed = scored(&[(0.1, true), (0.2, true), (0.8, false), (0.9, false)]);
        assert_eq!(roc_auc(&reversed), Some(0.0));
        let flat = scored(&[(1.0, true), (1.0, false), (1.0, true), (1.0, false)]);
        assert_eq!(roc_auc(&flat), Some(0.5));
        assert_eq!(roc_auc(&scored(&[(1.0, true)])), None);
        assert_eq!(roc_curve(&flat), vec![(0.0, 0.0), (1.0, 1.0)]);
    }

    #[test]
    fn an_alert_that_fired_or_not_is_a_two_step_curve() {
        // Alert fired for 3 customers (2 then churned), not for 5 (1 churned).
        let items = scored(&[
            (1.0, true),
            (1.0, true),
            (1.0, false),
            (0.0, true),
            (0.0, false),
            (0.0, false),
            (0.0, false),
            (0.0, false),
        ]);
        // Pairs: positives 3, negatives 5; wins: 2 fired positives × 4 quiet
        // negatives + ties 2×1/2 + 1 quiet positive × 4 quiet negatives / 2.
        assert_eq!(roc_auc(&items), Some((8.0 + 1.0 + 2.0) / 15.0));
        assert_eq!(
            roc_curve(&items),
            vec![(0.0, 0.0), (0.2, 2.0 / 3.0), (1.0, 1.0)]
        );
        // Top 25 % = 2 of the 3 fired: 2/3 of their 2 positives expected.
        let top = top_fraction(&items, 0.25).unwrap();
        assert_eq!(top.selected, 2);
        assert!((top.positives - 4.0 / 3.0).abs() < 1e-12);
        assert!((top.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((top.recall - 4.0 / 9.0).abs() < 1e-12);
        assert!((top.lift - (2.0 / 3.0) / (3.0 / 8.0)).abs() < 1e-12);
    }

    #[test]
    fn the_whole_population_has_lift_one_and_full_recall() {
        let items = scored(&[(0.3, true), (0.2, false), (0.9, false), (0.5, true)]);
        let all = top_fraction(&items, 1.0).unwrap();
        assert_eq!(all.selected, 4);
        assert!((all.recall - 1.0).abs() < 1e-12);
        assert!((all.lift - 1.0).abs() < 1e-12);
        assert_eq!(top_fraction(&items, 0.0), None);
        assert_eq!(top_fraction(&items, 1.5), None);
    }

    proptest! {
        #[test]
        fn auc_equals_the_pairwise_definition(
            pairs in prop::collection::vec((0u8..6, any::<bool>()), 1..60)
        ) {
            let items: Vec<Scored> = pairs
                .iter()
                .map(|&(s, positive)| Scored { score: f64::from(s), positive })
                .collect();
            match (roc_auc(&items), auc_by_pairs(&items)) {
                (Some(a), Some(b)) => prop_assert!((a - b).abs() < 1e-12, "{a} vs {b}"),
                (a, b) => prop_assert_eq!(a, b),
            }
        }

        #[test]
        fn top_fractions_grow_with_the_fraction(
            pairs in prop::collection::vec((0u8..6, any::<bool>()), 1..60),
            small in 0.01f64..0.5,
        ) {
            let items: Vec<Scored> = pairs
                .iter()
                .map(|&(s, positive)| Scored { score: f64::from(s), positive })
                .collect();
            if let (Some(a), Some(b)) = (top_fraction(&items, small), top_fraction(&items, small * 2.0)) {
                prop_assert!(a.positives <= b.positives + 1e-9);
                prop_assert!(a.recall <= b.recall + 1e-9);
                prop_assert!(b.recall <= 1.0 + 1e-9);
            }
        }
    }
}

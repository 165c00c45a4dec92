//! Percentile bootstrap of a mean: resample the per-instruction scores with replacement,
//! take the mean of each resample, and read the interval off the sorted means. Seeded, so a
//! report is reproducible.

use crate::rng::Rng;

/// A confidence interval of a mean.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Interval {
    pub lo: f64,
    pub hi: f64,
    /// Coverage, e.g. 0.95.
    pub level: f64,
    pub resamples: usize,
}

/// The `level` (e.g. 0.95) percentile-bootstrap interval of the mean of `scores`, from
/// `resamples` resamples. `None` when there are no scores or no resamples.
pub fn mean_interval(scores: &[f64], resamples: usize, level: f64, seed: u64) -> Option<Interval> {
    let n = scores.len();
    if n == 0 || resamples == 0 || !(0.0..1.0).contains(&level) {
        return None;
    }
    let mut rng = Rng::new(seed);
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| {
            let sum: f64 = (0..n)
                .map(|_| scores[(rng.next_u64() % n as u64) as usize])
                .sum();
            sum / n as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    let tail = (1.0 - level) / 2.0;
    let lo_i = ((tail * resamples as f64).floor() as usize).min(resamples - 1);
    let hi_i = (((1.0 - tail) * resamples as f64).ceil() as usize)
        .saturating_sub(1)
        .min(resamples - 1);
    Some(Interval {
        lo: means[lo_i],
        hi: means[hi_i],
        level,
        resamples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_scores_give_a_point() {
        let ci = mean_interval(&[1.0; 30], 1000, 0.95, 1).expect("ci");
        assert_eq!((ci.lo, ci.hi), (1.0, 1.0));
        assert!(mean_interval(&[], 1000, 0.95, 1).is_none());
    }

    #[test]
    fn interval_matches_the_normal_approximation() {
        // 100 Bernoulli scores with mean 0.3: the 95% interval is about 0.3 +- 0.09.
        let scores: Vec<f64> = (0..100).map(|i| if i < 30 { 1.0 } else { 0.0 }).collect();
        let ci = mean_interval(&scores, 4000, 0.95, 7).expect("ci");
        let half = 1.96 * (0.3f64 * 0.7 / 100.0).sqrt();
        assert!((ci.lo - (0.3 - half)).abs() < 0.02, "{ci:?}");
        assert!((ci.hi - (0.3 + half)).abs() < 0.02, "{ci:?}");
        assert_eq!(ci, mean_interval(&scores, 4000, 0.95, 7).expect("ci"));
    }
}

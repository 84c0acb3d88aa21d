//! Rehearsal: frames from the original training set mixed into a retraining run so the old task is not forgotten.
//!
//! Frames are drawn without replacement with probability proportional to their rare-class content, so thin classes
//! (poles, signs, pedestrians, cyclists) keep appearing in a small rehearsal set. Only label maps are read to
//! choose; only the chosen frames are decoded into memory.

use anyhow::{Context, Result};
use models::dataset::Sample;
use models::image_ops::class_counts;
use rand::Rng;
use rand::rngs::StdRng;

/// A frame's rarity: the sum over its labelled pixels of 1/sqrt(global frequency of the pixel's class), averaged.
/// `histograms[i][c]` is the pixel count of class `c` in frame `i` (ignored pixels excluded).
pub fn rarity_weights(histograms: &[Vec<u64>]) -> Vec<f64> {
    let classes = histograms.iter().map(Vec::len).max().unwrap_or(0);
    let mut totals = vec![0u64; classes];
    for histogram in histograms {
        for (total, count) in totals.iter_mut().zip(histogram) {
            *total += count;
        }
    }
    let all: u64 = totals.iter().sum();
    let class_weight: Vec<f64> = totals
        .iter()
        .map(|t| {
            if *t == 0 {
                0.0
            } else {
                (all as f64 / *t as f64).sqrt()
            }
        })
        .collect();
    histograms
        .iter()
        .map(|histogram| {
            let pixels: u64 = histogram.iter().sum();
            if pixels == 0 {
                return 0.0;
            }
            histogram
                .iter()
                .zip(&class_weight)
                .map(|(count, weight)| *count as f64 * weight)
                .sum::<f64>()
                / pixels as f64
        })
        .collect()
}

/// Draws `count` distinct indices with probability proportional to `weights` (Efraimidis-Spirakis: keep the largest
/// `u^(1/w)`). Zero-weight items come last, in random order, only when there are not enough weighted ones.
pub fn weighted_sample(weights: &[f64], count: usize, rng: &mut StdRng) -> Vec<usize> {
    let mut keyed: Vec<(f64, usize)> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
            let key = if *w > 0.0 {
                u.ln() / w
            } else {
                f64::NEG_INFINITY
            };
            (key, i)
        })
        .collect();
    keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
    keyed.into_iter().take(count).map(|(_, i)| i).collect()
}

/// Chooses `count` rehearsal samples from `pool`, favouring frames rich in rare classes.
pub fn choose(
    pool: &[Sample],
    count: usize,
    classes: usize,
    rng: &mut StdRng,
) -> Result<Vec<Sample>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let bar = crate::progress::bar(pool.len() as u64, "rehearsal");
    let histograms = pool
        .iter()
        .map(|sample| {
            bar.inc(1);
            let path = sample
                .label
                .as_ref()
                .with_context(|| format!("{} has no label", sample.image.display()))?;
            let label = image::open(path)
                .with_context(|| format!("reading rehearsal label {}", path.display()))?
                .to_luma8();
            Ok(class_counts(label.as_raw(), classes))
        })
        .collect::<Result<Vec<_>>>()?;
    bar.finish_and_clear();
    let mut chosen = weighted_sample(&rarity_weights(&histograms), count, rng);
    chosen.sort_unstable();
    Ok(chosen.into_iter().map(|i| pool[i].clone()).collect())
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn frames_with_rare_classes_weigh_more() {
        // Class 0 is everywhere; class 1 is rare.
        let weights = rarity_weights(&[vec![100, 0], vec![90, 10], vec![100, 0], vec![0, 0]]);
        assert!(weights[1] > weights[0]);
        assert_eq!(weights[0], weights[2]);
        assert_eq!(weights[3], 0.0);
    }

    #[test]
    fn weighted_sampling_is_distinct_and_favours_heavy_items() {
        let mut rng = StdRng::seed_from_u64(1);
        let weights = [1.0, 1.0, 50.0, 0.0];
        let mut heavy_first = 0;
        for _ in 0..200 {
            let drawn = weighted_sample(&weights, 2, &mut rng);
            assert_eq!(drawn.len(), 2);
            assert_ne!(drawn[0], drawn[1]);
            assert!(
                !drawn.contains(&3),
                "a zero-weight item was drawn while weighted ones were left"
            );
            heavy_first += usize::from(drawn.contains(&2));
        }
        assert!(
            heavy_first > 180,
            "heavy item drawn {heavy_first}/200 times"
        );
        assert_eq!(weighted_sample(&weights, 10, &mut rng).len(), 4);
    }
}

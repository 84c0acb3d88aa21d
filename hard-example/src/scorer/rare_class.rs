//! Class-balanced uncertainty, aimed at the small objects road-scene models get wrong.

use super::kernel::{Needs, scan_pixels};
use super::{Scorer, finish};
use crate::dims::Dims;
use crate::error::{ConfigError, ScoreError};

/// CamVid's 11 classes in the order used by SegNet and most CamVid checkpoints.
pub const CAMVID_CLASSES: [&str; 11] = [
    "sky",
    "building",
    "pole",
    "road",
    "sidewalk",
    "tree",
    "sign",
    "fence",
    "car",
    "pedestrian",
    "bicyclist",
];

/// SegNet's median-frequency-balancing weights for [`CAMVID_CLASSES`]: a class's weight is
/// the median class frequency divided by its own frequency, so poles, signs, pedestrians
/// and bicyclists weigh 4.5-9.6 while road, sky and building weigh under 0.3.
pub const CAMVID_MEDIAN_FREQUENCY_WEIGHTS: [f32; 11] = [
    0.2595, 0.1826, 4.5640, 0.1417, 0.9051, 0.3826, 9.6446, 1.8418, 0.6823, 6.2478, 7.3614,
];

/// Uncertainty weighted toward rare, small-object classes.
///
/// Why: in road scenes the frame-wide mean confidence is dominated by road, sky and
/// building, which the model gets right almost always; the errors that matter (poles,
/// signs, pedestrians, bicyclists, fences) cover a few percent of the pixels and barely
/// move a plain mean. This scorer balances classes the way training losses do:
///
/// - each pixel's uncertainty is `u = 1 - (top1 - top2)` (one minus the margin), so pixels
///   torn between two classes count fully;
/// - each pixel's weight is its *expected* class weight `w = sum_c p_c * weight_c`; using
///   the whole distribution rather than the arg-max means a pole mistaken for a building
///   still draws weight from the pole probability it retains;
/// - the score is `1 - sum(w * u) / sum(w)`, a weighted mean confidence in `[0, 1]`
///   (1 when the total weight is zero: nothing the weights care about is in view).
///
/// The default weights are CamVid's median-frequency weights
/// ([`CAMVID_MEDIAN_FREQUENCY_WEIGHTS`]); other label sets need their own.
#[derive(Debug, Clone, PartialEq)]
pub struct RareClassWeighted {
    class_weights: Vec<f32>,
}

impl RareClassWeighted {
    pub const DEFAULT_THRESHOLD: f32 = 0.7;

    /// `class_weights[c]` is the importance of class `c`; all must be finite and
    /// non-negative, at least one positive.
    pub fn new(class_weights: Vec<f32>) -> Result<Self, ConfigError> {
        if class_weights.len() < 2 {
            return Err(ConfigError::invalid(
                "class_weights",
                format!(
                    "needs one weight per class (>= 2), got {}",
                    class_weights.len()
                ),
            ));
        }
        if let Some(bad) = class_weights
            .iter()
            .find(|w| !(w.is_finite() && **w >= 0.0))
        {
            return Err(ConfigError::invalid(
                "class_weights",
                format!("weights must be finite and non-negative, got {bad}"),
            ));
        }
        if class_weights.iter().all(|&w| w == 0.0) {
            return Err(ConfigError::invalid(
                "class_weights",
                "at least one weight must be positive",
            ));
        }
        Ok(Self { class_weights })
    }

    /// Median-frequency weights for CamVid's 11 classes.
    pub fn camvid() -> Self {
        Self {
            class_weights: CAMVID_MEDIAN_FREQUENCY_WEIGHTS.to_vec(),
        }
    }

    pub fn class_weights(&self) -> &[f32] {
        &self.class_weights
    }
}

impl Default for RareClassWeighted {
    fn default() -> Self {
        Self::camvid()
    }
}

impl Scorer for RareClassWeighted {
    fn score(&self, probs: &[f32], dims: Dims) -> Result<f32, ScoreError> {
        let pixels = dims.validate(probs)?;
        if dims.classes != self.class_weights.len() {
            return Err(ScoreError::ClassCountMismatch {
                expected: self.class_weights.len(),
                actual: dims.classes,
            });
        }
        let (mut weighted_uncertainty, mut total_weight) = (0.0_f64, 0.0_f64);
        let needs = Needs::TopTwoAndWeight(&self.class_weights);
        scan_pixels(probs, pixels, needs, |run| {
            let (mut run_uncertainty, mut run_weight) = (0.0_f32, 0.0_f32);
            for ((first, second), weight) in run.top1.iter().zip(run.top2).zip(run.weight) {
                run_uncertainty += weight * (1.0 - (first - second));
                run_weight += weight;
            }
            weighted_uncertainty += f64::from(run_uncertainty);
            total_weight += f64::from(run_weight);
        });
        if total_weight > 0.0 {
            finish(1.0 - weighted_uncertainty / total_weight)
        } else {
            Ok(1.0)
        }
    }

    fn default_threshold(&self) -> f32 {
        Self::DEFAULT_THRESHOLD
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scorer::Margin;
    use crate::scorer::test_maps::{assert_close, chw};

    #[test]
    fn weights_uncertain_rare_pixels_up() {
        // Class 0 "road" (weight 1), class 1 "pole" (weight 3). 2x2 pixels:
        //   confident road [1, 0]:      w = 1,   u = 0
        //   confident road [1, 0]:      w = 1,   u = 0
        //   confident road [1, 0]:      w = 1,   u = 0
        //   torn road/pole [0.5, 0.5]:  w = 2,   u = 1
        // score = 1 - 2 / 5 = 0.6, whereas the plain mean margin is 0.75.
        let (probs, dims) = chw(2, 2, &[&[1.0, 0.0], &[1.0, 0.0], &[1.0, 0.0], &[0.5, 0.5]]);
        let scorer = RareClassWeighted::new(vec![1.0, 3.0]).unwrap();
        assert_close(scorer.score(&probs, dims).unwrap(), 0.6);
        assert_close(Margin.score(&probs, dims).unwrap(), 0.75);
    }

    #[test]
    fn equal_weights_reduce_to_mean_margin() {
        let (probs, dims) = chw(1, 3, &[&[0.9, 0.1], &[0.3, 0.7], &[0.55, 0.45]]);
        let scorer = RareClassWeighted::new(vec![2.0, 2.0]).unwrap();
        let expected = (0.8 + 0.4 + 0.1) / 3.0;
        assert_close(scorer.score(&probs, dims).unwrap(), expected);
    }

    #[test]
    fn zero_weight_classes_only_count_through_other_classes() {
        // Weights [1, 0]: pixel [0.5, 0.5] has w = 0.5, u = 1; pixel [0.6, 0.4] has
        // w = 0.6, u = 0.8.
        let (probs, dims) = chw(1, 2, &[&[0.5, 0.5], &[0.6, 0.4]]);
        let scorer = RareClassWeighted::new(vec![1.0, 0.0]).unwrap();
        assert_close(
            scorer.score(&probs, dims).unwrap(),
            1.0 - (0.5 + 0.48) / 1.1,
        );
    }

    #[test]
    fn zero_total_weight_scores_as_confident() {
        let (probs, dims) = chw(1, 1, &[&[0.0, 1.0]]);
        let scorer = RareClassWeighted::new(vec![1.0, 0.0]).unwrap();
        assert_eq!(scorer.score(&probs, dims), Ok(1.0));
    }

    #[test]
    fn rejects_bad_weights_and_class_mismatch() {
        assert!(RareClassWeighted::new(vec![1.0]).is_err());
        assert!(RareClassWeighted::new(vec![1.0, -1.0]).is_err());
        assert!(RareClassWeighted::new(vec![0.0, 0.0]).is_err());
        assert!(RareClassWeighted::new(vec![1.0, f32::INFINITY]).is_err());
        let (probs, dims) = chw(1, 1, &[&[0.5, 0.5]]);
        assert_eq!(
            RareClassWeighted::camvid().score(&probs, dims),
            Err(ScoreError::ClassCountMismatch {
                expected: 11,
                actual: 2
            })
        );
    }
}

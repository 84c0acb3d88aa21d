//! Entropy-based scorer, as in KubeEdge Sedna.

use super::kernel::sum_p_log2_p;
use super::{Scorer, finish};
use crate::dims::Dims;
use crate::error::ScoreError;

/// Sedna's `CrossEntropy` filter applied per pixel: `1 - mean(H(p) / ln C)`, the mean
/// normalised entropy subtracted from one. (Despite Sedna's name it is the entropy of the
/// prediction; no label is involved.) 1 means every pixel is one-hot, 0 means every pixel
/// is uniform over the `C` classes. Sedna calls a frame hard below 0.5.
///
/// Logarithms use a fast vectorised approximation, so the score is within about 1e-4 of
/// the exact value (exact when every probability is 0 or a power of two).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CrossEntropy;

impl CrossEntropy {
    pub const DEFAULT_THRESHOLD: f32 = 0.5;
}

impl Scorer for CrossEntropy {
    fn score(&self, probs: &[f32], dims: Dims) -> Result<f32, ScoreError> {
        let pixels = dims.validate(probs)?;
        // The ratio H / ln C is base-independent, so bits are as good as nats.
        let max_entropy_bits = (dims.classes as f64).log2();
        let mean_entropy_bits = -sum_p_log2_p(probs) / pixels as f64;
        finish(1.0 - mean_entropy_bits / max_entropy_bits)
    }

    fn default_threshold(&self) -> f32 {
        Self::DEFAULT_THRESHOLD
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scorer::kernel::LOG2_MAX_ERROR;
    use crate::scorer::test_maps::{assert_close, chw};

    #[test]
    fn one_hot_and_uniform_pixels() {
        // 2 classes, 2x2: two one-hot pixels (entropy 0), two uniform (entropy ln 2).
        let (probs, dims) = chw(2, 2, &[&[1.0, 0.0], &[0.5, 0.5], &[0.0, 1.0], &[0.5, 0.5]]);
        assert_eq!(CrossEntropy.score(&probs, dims).unwrap(), 0.5);
    }

    #[test]
    fn matches_hand_computed_entropy() {
        // 2 classes, 1x2: H(0.9, 0.1) = 0.325083 nats and H(0.7, 0.3) = 0.610864 nats.
        let (probs, dims) = chw(1, 2, &[&[0.9, 0.1], &[0.3, 0.7]]);
        let mean_normalised = (0.325_083 + 0.610_864) / 2.0 / std::f32::consts::LN_2;
        let score = CrossEntropy.score(&probs, dims).unwrap();
        // log2 of 2 classes is 1, so the approximation error passes through unscaled.
        assert!((score - (1.0 - mean_normalised)).abs() <= LOG2_MAX_ERROR);
    }

    #[test]
    fn normalises_by_class_count() {
        // 4 classes, one uniform pixel and one one-hot pixel: mean normalised entropy 0.5.
        let (probs, dims) = chw(1, 2, &[&[0.25; 4], &[0.0, 0.0, 1.0, 0.0]]);
        assert_close(CrossEntropy.score(&probs, dims).unwrap(), 0.5);
    }
}

//! Frame scorers: turn one frame's class-probability map into a single confidence score.

mod confidence;
mod entropy;
mod kernel;
mod rare_class;

use std::fmt;

pub use confidence::{IanvsConfidence, LeastConfidence, Margin};
pub use entropy::CrossEntropy;
pub use rare_class::{CAMVID_CLASSES, CAMVID_MEDIAN_FREQUENCY_WEIGHTS, RareClassWeighted};

use crate::dims::Dims;
use crate::error::ScoreError;

/// Scores how confidently the edge model segmented one frame.
///
/// Convention shared by every scorer: the score lies in `[0, 1]` and **higher means more
/// confident, i.e. an easier frame**. A frame is *hard* (worth uploading) when its score
/// is **below** a threshold; see [`crate::policy`] for how the threshold is chosen.
///
/// `probs` is the softmax output of the model in CHW layout: `dims.classes` planes of
/// `dims.height * dims.width` values each. The length and shape are validated; the values
/// themselves are trusted to be probabilities (checking each one would cost another pass),
/// and the result is clamped into `[0, 1]`.
pub trait Scorer: Send + Sync + fmt::Debug {
    fn score(&self, probs: &[f32], dims: Dims) -> Result<f32, ScoreError>;

    /// Threshold to use when no policy is configured, so that every scorer is usable on
    /// its own: the Ianvs and Sedna defaults where they exist, rough starting points
    /// otherwise (calibrate them on real streams, or use an [`crate::UploadBudget`],
    /// which needs no calibration).
    fn default_threshold(&self) -> f32;
}

/// Turns an accumulated score into the public `[0, 1]` range. Rounding and the fast log
/// approximation can overshoot it slightly; a non-finite value means non-finite input.
fn finish(score: f64) -> Result<f32, ScoreError> {
    if score.is_finite() {
        Ok(score.clamp(0.0, 1.0) as f32)
    } else {
        Err(ScoreError::InvalidScore(score as f32))
    }
}

#[cfg(test)]
pub(crate) mod test_maps {
    use crate::dims::Dims;

    /// Builds a CHW map from per-pixel probability vectors given in row-major pixel order.
    pub fn chw(height: usize, width: usize, pixels: &[&[f32]]) -> (Vec<f32>, Dims) {
        let classes = pixels[0].len();
        assert_eq!(pixels.len(), height * width);
        let mut probs = vec![0.0; classes * height * width];
        for (pixel, distribution) in pixels.iter().enumerate() {
            for (class, &p) in distribution.iter().enumerate() {
                probs[class * height * width + pixel] = p;
            }
        }
        (probs, Dims::new(classes, height, width))
    }

    pub fn assert_close(actual: f32, expected: f32) {
        assert!(
            (actual - expected).abs() < 1e-5,
            "expected {expected}, got {actual}"
        );
    }
}

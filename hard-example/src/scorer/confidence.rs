//! Scorers built on the top-ranked class probabilities of each pixel.

use super::kernel::{Needs, scan_pixels};
use super::{Scorer, finish};
use crate::dims::Dims;
use crate::error::{ConfigError, ScoreError, check_unit_interval};

/// Ianvs' pixel-confidence rule: the fraction of pixels whose top-1 probability exceeds
/// `pixel_threshold`. Ianvs calls a frame hard when this fraction is below 0.95.
///
/// Sedna's `IBT` (image-box-threshold) filter is the same rule with detection boxes in
/// place of pixels, so it maps onto this scorer (`threshold_box` -> `pixel_threshold`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IanvsConfidence {
    pixel_threshold: f32,
}

impl IanvsConfidence {
    pub const DEFAULT_PIXEL_THRESHOLD: f32 = 0.9;
    pub const DEFAULT_FRAME_THRESHOLD: f32 = 0.95;

    pub fn new(pixel_threshold: f32) -> Result<Self, ConfigError> {
        Ok(Self {
            pixel_threshold: check_unit_interval("pixel_threshold", pixel_threshold)?,
        })
    }

    pub fn pixel_threshold(&self) -> f32 {
        self.pixel_threshold
    }
}

impl Default for IanvsConfidence {
    fn default() -> Self {
        Self {
            pixel_threshold: Self::DEFAULT_PIXEL_THRESHOLD,
        }
    }
}

impl Scorer for IanvsConfidence {
    fn score(&self, probs: &[f32], dims: Dims) -> Result<f32, ScoreError> {
        let pixels = dims.validate(probs)?;
        let mut confident = 0_usize;
        scan_pixels(probs, pixels, Needs::Top1, |run| {
            confident += run
                .top1
                .iter()
                .filter(|&&p| p > self.pixel_threshold)
                .count();
        });
        finish(confident as f64 / pixels as f64)
    }

    fn default_threshold(&self) -> f32 {
        Self::DEFAULT_FRAME_THRESHOLD
    }
}

/// Mean top-1 probability over the frame (the complement of the classic
/// least-confidence uncertainty).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LeastConfidence;

impl LeastConfidence {
    pub const DEFAULT_THRESHOLD: f32 = 0.9;
}

impl Scorer for LeastConfidence {
    fn score(&self, probs: &[f32], dims: Dims) -> Result<f32, ScoreError> {
        let pixels = dims.validate(probs)?;
        let mut total = 0.0_f64;
        scan_pixels(probs, pixels, Needs::Top1, |run| {
            total += f64::from(run.top1.iter().sum::<f32>());
        });
        finish(total / pixels as f64)
    }

    fn default_threshold(&self) -> f32 {
        Self::DEFAULT_THRESHOLD
    }
}

/// Mean gap between the top-1 and top-2 probabilities. Unlike top-1 alone, it notices
/// pixels torn between two classes even when the remaining classes are negligible.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Margin;

impl Margin {
    pub const DEFAULT_THRESHOLD: f32 = 0.8;
}

impl Scorer for Margin {
    fn score(&self, probs: &[f32], dims: Dims) -> Result<f32, ScoreError> {
        let pixels = dims.validate(probs)?;
        let mut total = 0.0_f64;
        scan_pixels(probs, pixels, Needs::TopTwo, |run| {
            let run_sum: f32 = run
                .top1
                .iter()
                .zip(run.top2)
                .map(|(first, second)| first - second)
                .sum();
            total += f64::from(run_sum);
        });
        finish(total / pixels as f64)
    }

    fn default_threshold(&self) -> f32 {
        Self::DEFAULT_THRESHOLD
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scorer::test_maps::{assert_close, chw};

    /// 2 classes, 2x2 pixels: top-1 probabilities 0.95, 0.6, 0.99, 0.5.
    fn two_by_two() -> (Vec<f32>, Dims) {
        chw(
            2,
            2,
            &[&[0.95, 0.05], &[0.4, 0.6], &[0.01, 0.99], &[0.5, 0.5]],
        )
    }

    #[test]
    fn ianvs_counts_pixels_strictly_above_threshold() {
        let (probs, dims) = two_by_two();
        let scorer = IanvsConfidence::default();
        assert_close(scorer.score(&probs, dims).unwrap(), 0.5);
        let strict = IanvsConfidence::new(0.95).unwrap();
        assert_close(strict.score(&probs, dims).unwrap(), 0.25);
        assert_eq!(scorer.default_threshold(), 0.95);
    }

    #[test]
    fn ianvs_rejects_threshold_outside_unit_interval() {
        assert!(IanvsConfidence::new(1.5).is_err());
        assert!(IanvsConfidence::new(f32::NAN).is_err());
    }

    #[test]
    fn least_confidence_is_mean_top1() {
        let (probs, dims) = two_by_two();
        let expected = (0.95 + 0.6 + 0.99 + 0.5) / 4.0;
        assert_close(LeastConfidence.score(&probs, dims).unwrap(), expected);
    }

    #[test]
    fn margin_is_mean_top1_minus_top2() {
        let (probs, dims) = two_by_two();
        let expected = (0.9 + 0.2 + 0.98 + 0.0) / 4.0;
        assert_close(Margin.score(&probs, dims).unwrap(), expected);
    }

    #[test]
    fn margin_uses_second_best_not_runner_up_of_order() {
        // 3 classes, 1x2 pixels; the best class comes last in one pixel and first in the other.
        let (probs, dims) = chw(1, 2, &[&[0.1, 0.3, 0.6], &[0.7, 0.2, 0.1]]);
        assert_close(Margin.score(&probs, dims).unwrap(), (0.3 + 0.5) / 2.0);
    }

    #[test]
    fn scorers_reject_malformed_maps() {
        let dims = Dims::new(2, 2, 2);
        assert!(matches!(
            Margin.score(&[0.5; 7], dims),
            Err(ScoreError::LengthMismatch { .. })
        ));
        assert_eq!(
            LeastConfidence.score(&[1.0; 4], Dims::new(1, 2, 2)),
            Err(ScoreError::TooFewClasses(1))
        );
    }
}

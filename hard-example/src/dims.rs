//! Shape of one frame's class-probability map.

use serde::{Deserialize, Serialize};

use crate::error::ScoreError;

/// Shape of a CHW probability map: `classes` planes of `height * width` pixels each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Dims {
    pub classes: usize,
    pub height: usize,
    pub width: usize,
}

impl Dims {
    pub const fn new(classes: usize, height: usize, width: usize) -> Self {
        Self {
            classes,
            height,
            width,
        }
    }

    /// Checks that `probs` can be a CHW map of this shape and returns the number of pixels
    /// per class plane. Scorers call this first so that indexing afterwards cannot fail.
    pub fn validate(self, probs: &[f32]) -> Result<usize, ScoreError> {
        if self.classes < 2 {
            return Err(ScoreError::TooFewClasses(self.classes));
        }
        let pixels = self
            .height
            .checked_mul(self.width)
            .filter(|&pixels| pixels > 0)
            .ok_or(ScoreError::EmptyOrOverflowingFrame(self))?;
        let expected = pixels
            .checked_mul(self.classes)
            .ok_or(ScoreError::EmptyOrOverflowingFrame(self))?;
        if probs.len() != expected {
            return Err(ScoreError::LengthMismatch {
                dims: self,
                expected,
                actual: probs.len(),
            });
        }
        Ok(pixels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_matching_length() {
        assert_eq!(Dims::new(2, 2, 3).validate(&[0.5; 12]), Ok(6));
    }

    #[test]
    fn rejects_wrong_length() {
        assert_eq!(
            Dims::new(2, 2, 3).validate(&[0.5; 11]),
            Err(ScoreError::LengthMismatch {
                dims: Dims::new(2, 2, 3),
                expected: 12,
                actual: 11
            })
        );
    }

    #[test]
    fn rejects_single_class_and_empty_frames() {
        assert_eq!(
            Dims::new(1, 2, 2).validate(&[1.0; 4]),
            Err(ScoreError::TooFewClasses(1))
        );
        let empty = Dims::new(2, 0, 5);
        assert_eq!(
            empty.validate(&[]),
            Err(ScoreError::EmptyOrOverflowingFrame(empty))
        );
        let huge = Dims::new(2, usize::MAX, 2);
        assert_eq!(
            huge.validate(&[]),
            Err(ScoreError::EmptyOrOverflowingFrame(huge))
        );
    }
}

//! Error types: one for bad frames at run time, one for bad configuration at start-up.

use thiserror::Error;

use crate::dims::Dims;

/// Why a frame could not be scored. The frame is then neither counted nor uploaded.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ScoreError {
    #[error("a probability map needs at least 2 classes, got {0}")]
    TooFewClasses(usize),
    #[error("frame {0:?} has no pixels or is too large to address")]
    EmptyOrOverflowingFrame(Dims),
    #[error("frame {dims:?} needs {expected} probabilities, got {actual}")]
    LengthMismatch {
        dims: Dims,
        expected: usize,
        actual: usize,
    },
    #[error("scorer is configured for {expected} classes but the frame has {actual}")]
    ClassCountMismatch { expected: usize, actual: usize },
    /// From a scorer: the map holds NaN or infinite values. From
    /// [`crate::Miner::decide_score`]: the caller's score is out of range.
    #[error("score {0} is not a finite number in [0, 1]")]
    InvalidScore(f32),
}

/// Why a scorer, policy or miner could not be built from its configuration.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("invalid parameter `{parameter}`: {reason}")]
    InvalidParameter {
        parameter: &'static str,
        reason: String,
    },
    #[error("invalid configuration: {0}")]
    Json(#[from] serde_json::Error),
    #[error("parameters must be a JSON object, got: {0}")]
    ParametersNotObject(serde_json::Value),
    #[error("HEM_PARAMETERS `{key}` must be a number or a numeric string, got {value}")]
    HemParameterNotNumber {
        key: String,
        value: serde_json::Value,
    },
}

impl ConfigError {
    pub(crate) fn invalid(parameter: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidParameter {
            parameter,
            reason: reason.into(),
        }
    }
}

/// Checks that a probability-like parameter is finite and inside `[0, 1]`.
pub(crate) fn check_unit_interval(parameter: &'static str, value: f32) -> Result<f32, ConfigError> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::invalid(
            parameter,
            format!("must be within [0, 1], got {value}"),
        ))
    }
}

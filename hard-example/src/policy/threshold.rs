use super::{Policy, Reason, Verdict};
use crate::error::{ConfigError, check_unit_interval};

/// Uploads every frame whose score is below a fixed threshold. Stateless; the upload
/// ratio then depends entirely on the stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    threshold: f32,
}

impl Threshold {
    pub fn new(threshold: f32) -> Result<Self, ConfigError> {
        Ok(Self {
            threshold: check_unit_interval("threshold", threshold)?,
        })
    }
}

impl Policy for Threshold {
    fn propose(&self, score: f32, _now_ms: u64) -> Verdict {
        Verdict {
            upload: score < self.threshold,
            reason: Reason::Threshold {
                threshold: self.threshold,
            },
        }
    }

    fn record(&mut self, _score: f32, _now_ms: u64, _uploaded: bool) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_strictly_below_threshold() {
        let mut policy = Threshold::new(0.5).unwrap();
        assert!(policy.decide(0.49, 0).upload);
        assert!(!policy.decide(0.5, 0).upload);
        assert!(!policy.decide(0.9, 0).upload);
    }

    #[test]
    fn rejects_threshold_outside_unit_interval() {
        assert!(Threshold::new(-0.1).is_err());
        assert!(Threshold::new(f32::NAN).is_err());
    }
}

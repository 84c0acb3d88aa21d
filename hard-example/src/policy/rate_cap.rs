use super::{Policy, Reason, Verdict};
use crate::error::ConfigError;

/// Refills are summed from many small elapsed times, so a bucket that should hold exactly
/// one token can hold 0.999...; this slack keeps such a frame from being refused.
const ROUNDING_SLACK: f64 = 1e-9;

/// At most `max_per_second` uploads per second on average, as a token bucket: tokens
/// refill continuously up to `burst`, and each upload spends one. Over any span of `T`
/// seconds the stream uploads at most `burst + max_per_second * T` frames.
///
/// Timestamps come from the caller. A timestamp earlier than the latest one seen (a clock
/// step backwards) refills nothing rather than failing.
#[derive(Debug, Clone, PartialEq)]
pub struct RateCap {
    tokens_per_ms: f64,
    burst: f64,
    tokens: f64,
    latest_ms: Option<u64>,
}

impl RateCap {
    /// `burst` (at least 1) is the bucket size: how many uploads may happen back to back
    /// after a quiet period. The bucket starts full.
    pub fn new(max_per_second: f64, burst: f64) -> Result<Self, ConfigError> {
        if !(max_per_second.is_finite() && max_per_second > 0.0) {
            return Err(ConfigError::invalid(
                "max_per_second",
                format!("must be a positive number, got {max_per_second}"),
            ));
        }
        if !(burst.is_finite() && burst >= 1.0) {
            return Err(ConfigError::invalid(
                "burst",
                format!("must be at least 1, got {burst}"),
            ));
        }
        Ok(Self {
            tokens_per_ms: max_per_second / 1000.0,
            burst,
            tokens: burst,
            latest_ms: None,
        })
    }

    fn tokens_at(&self, now_ms: u64) -> f64 {
        match self.latest_ms {
            None => self.burst,
            Some(latest) => {
                let elapsed_ms = now_ms.saturating_sub(latest) as f64;
                (self.tokens + elapsed_ms * self.tokens_per_ms).min(self.burst)
            }
        }
    }
}

impl Policy for RateCap {
    fn propose(&self, _score: f32, now_ms: u64) -> Verdict {
        let tokens = self.tokens_at(now_ms);
        Verdict {
            upload: tokens >= 1.0 - ROUNDING_SLACK,
            reason: Reason::RateCap {
                tokens: tokens as f32,
            },
        }
    }

    fn record(&mut self, _score: f32, now_ms: u64, uploaded: bool) {
        self.tokens = self.tokens_at(now_ms);
        self.latest_ms = Some(self.latest_ms.map_or(now_ms, |latest| latest.max(now_ms)));
        if uploaded {
            self.tokens = (self.tokens - 1.0).max(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paces_uploads_to_the_rate() {
        let mut cap = RateCap::new(2.0, 1.0).unwrap();
        assert!(cap.decide(0.0, 0).upload);
        assert!(!cap.decide(0.0, 499).upload);
        assert!(cap.decide(0.0, 500).upload);
        assert!(!cap.decide(0.0, 600).upload);
        assert!(cap.decide(0.0, 1_000).upload);
    }

    #[test]
    fn burst_allows_back_to_back_uploads_after_quiet_period() {
        let mut cap = RateCap::new(1.0, 3.0).unwrap();
        let uploads = (0..5).filter(|_| cap.decide(0.0, 10_000).upload).count();
        assert_eq!(uploads, 3);
    }

    #[test]
    fn clock_stepping_back_refills_nothing() {
        let mut cap = RateCap::new(1.0, 1.0).unwrap();
        assert!(cap.decide(0.0, 5_000).upload);
        assert!(!cap.decide(0.0, 1_000).upload);
        assert!(!cap.decide(0.0, 5_999).upload);
        assert!(cap.decide(0.0, 6_000).upload);
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!(RateCap::new(0.0, 1.0).is_err());
        assert!(RateCap::new(f64::INFINITY, 1.0).is_err());
        assert!(RateCap::new(1.0, 0.5).is_err());
    }
}

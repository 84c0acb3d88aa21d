use super::{Policy, Verdict};
use crate::error::ConfigError;

/// Uploads only when every inner policy agrees, e.g. a budget AND a rate cap.
///
/// The reason reported is that of the first policy that refused, or, when all agree,
/// that of the first policy (the primary criterion).
#[derive(Debug)]
pub struct AllOf {
    primary: Box<dyn Policy>,
    others: Vec<Box<dyn Policy>>,
}

impl AllOf {
    pub fn new(policies: Vec<Box<dyn Policy>>) -> Result<Self, ConfigError> {
        let mut policies = policies.into_iter();
        let primary = policies.next().ok_or_else(|| {
            ConfigError::invalid("policies", "a combination needs at least one policy")
        })?;
        Ok(Self {
            primary,
            others: policies.collect(),
        })
    }
}

impl Policy for AllOf {
    fn propose(&self, score: f32, now_ms: u64) -> Verdict {
        let primary = self.primary.propose(score, now_ms);
        if !primary.upload {
            return primary;
        }
        self.others
            .iter()
            .map(|policy| policy.propose(score, now_ms))
            .find(|verdict| !verdict.upload)
            .unwrap_or(primary)
    }

    fn record(&mut self, score: f32, now_ms: u64, uploaded: bool) {
        self.primary.record(score, now_ms, uploaded);
        for policy in &mut self.others {
            policy.record(score, now_ms, uploaded);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{RateCap, Reason, Threshold};

    #[test]
    fn needs_every_policy_to_agree() {
        let mut both = AllOf::new(vec![
            Box::new(Threshold::new(0.5).unwrap()),
            Box::new(RateCap::new(1.0, 1.0).unwrap()),
        ])
        .unwrap();
        let first = both.decide(0.1, 0);
        assert!(first.upload);
        assert_eq!(first.reason, Reason::Threshold { threshold: 0.5 });
        // Hard again but the single token is spent.
        let second = both.decide(0.1, 100);
        assert!(!second.upload);
        assert!(matches!(second.reason, Reason::RateCap { .. }));
        // Easy frames leave the bucket alone.
        assert!(!both.decide(0.9, 1_000).upload);
        assert!(both.decide(0.1, 1_000).upload);
    }

    #[test]
    fn rate_cap_spends_tokens_only_on_real_uploads() {
        // The threshold refuses the first frame, so the cap's token must still be there.
        let mut both = AllOf::new(vec![
            Box::new(Threshold::new(0.5).unwrap()),
            Box::new(RateCap::new(1.0, 1.0).unwrap()),
        ])
        .unwrap();
        assert!(!both.decide(0.9, 0).upload);
        assert!(both.decide(0.1, 1).upload);
    }

    #[test]
    fn rejects_empty_combination() {
        assert!(AllOf::new(Vec::new()).is_err());
    }
}

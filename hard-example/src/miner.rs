//! The per-stream hard example miner: a scorer plus a policy plus running stats.

use std::fmt;

use serde::Serialize;
use serde::ser::{SerializeStruct, Serializer};

use crate::dims::Dims;
use crate::error::ScoreError;
use crate::policy::{Policy, Reason};
use crate::scorer::Scorer;

/// Outcome for one frame.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Decision {
    /// Confidence score in `[0, 1]`; lower is harder.
    pub score: f32,
    /// Whether to upload the frame to the cloud as a hard example: the policy judged it
    /// hard and, where a budget or rate cap applies, within its allowance.
    pub hard: bool,
    pub reason: Reason,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // "skip" rather than "easy": a hard frame may be skipped by a budget or rate cap.
        let verdict = if self.hard { "upload" } else { "skip" };
        write!(f, "{verdict}: score {:.3}, {}", self.score, self.reason)
    }
}

/// Running counts for one stream. Serialises with the derived `upload_ratio` included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MinerStats {
    /// Frames scored and decided (frames rejected with an error are not counted).
    pub frames: u64,
    pub uploads: u64,
}

impl MinerStats {
    /// Realised share of frames uploaded; 0 before the first frame.
    pub fn upload_ratio(&self) -> f64 {
        if self.frames == 0 {
            0.0
        } else {
            self.uploads as f64 / self.frames as f64
        }
    }
}

impl Serialize for MinerStats {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut stats = serializer.serialize_struct("MinerStats", 3)?;
        stats.serialize_field("frames", &self.frames)?;
        stats.serialize_field("uploads", &self.uploads)?;
        stats.serialize_field("upload_ratio", &self.upload_ratio())?;
        stats.end()
    }
}

/// Decides which frames of one camera stream to upload. Keep one per stream: policies
/// carry per-stream state (budget window, token bucket).
#[derive(Debug)]
pub struct Miner {
    scorer: Box<dyn Scorer>,
    policy: Box<dyn Policy>,
    stats: MinerStats,
}

impl Miner {
    pub fn new(scorer: Box<dyn Scorer>, policy: Box<dyn Policy>) -> Self {
        Self {
            scorer,
            policy,
            stats: MinerStats::default(),
        }
    }

    /// Scores a CHW softmax map (see [`Scorer`]) and decides on it. `now_ms` is the
    /// frame's time on any monotonic millisecond clock; only differences matter.
    pub fn decide(
        &mut self,
        probs: &[f32],
        dims: Dims,
        now_ms: u64,
    ) -> Result<Decision, ScoreError> {
        self.decide_overridden(probs, dims, now_ms, None)
    }

    /// Like [`Self::decide`], for a caller that overrides the verdict: `Some(upload)` says whether the frame
    /// really goes to the cloud, whatever the miner thinks (a client asking for `never` or `always`). The returned
    /// decision is still the miner's own, but the policy's state and the stats follow what really happened, so a
    /// hard frame kept back spends no budget share or rate-cap token.
    pub fn decide_overridden(
        &mut self,
        probs: &[f32],
        dims: Dims,
        now_ms: u64,
        uploaded: Option<bool>,
    ) -> Result<Decision, ScoreError> {
        let score = self.scorer.score(probs, dims)?;
        self.judge(score, now_ms, uploaded)
    }

    /// Decides on a score computed elsewhere with this miner's scorer, e.g. on another
    /// thread. The score must be a finite number in `[0, 1]`.
    pub fn decide_score(&mut self, score: f32, now_ms: u64) -> Result<Decision, ScoreError> {
        self.judge(score, now_ms, None)
    }

    fn judge(
        &mut self,
        score: f32,
        now_ms: u64,
        uploaded: Option<bool>,
    ) -> Result<Decision, ScoreError> {
        if !(0.0..=1.0).contains(&score) {
            return Err(ScoreError::InvalidScore(score));
        }
        let verdict = self.policy.propose(score, now_ms);
        let uploaded = uploaded.unwrap_or(verdict.upload);
        self.policy.record(score, now_ms, uploaded);
        self.stats.frames += 1;
        self.stats.uploads += u64::from(uploaded);
        Ok(Decision {
            score,
            hard: verdict.upload,
            reason: verdict.reason,
        })
    }

    pub fn scorer(&self) -> &dyn Scorer {
        self.scorer.as_ref()
    }

    pub fn stats(&self) -> MinerStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{RateCap, Threshold};
    use crate::scorer::LeastConfidence;

    fn threshold_miner(threshold: f32) -> Miner {
        Miner::new(
            Box::new(LeastConfidence),
            Box::new(Threshold::new(threshold).unwrap()),
        )
    }

    #[test]
    fn decides_and_counts() {
        let mut miner = threshold_miner(0.8);
        let dims = Dims::new(2, 1, 2);
        // CHW: class 0 plane then class 1 plane; mean top-1 = (0.9 + 0.6) / 2 = 0.75.
        let hard = miner.decide(&[0.9, 0.4, 0.1, 0.6], dims, 0).unwrap();
        assert!(hard.hard);
        assert!((hard.score - 0.75).abs() < 1e-6);
        let easy = miner.decide(&[1.0, 0.9, 0.0, 0.1], dims, 33).unwrap();
        assert!(!easy.hard);
        assert_eq!(
            miner.stats(),
            MinerStats {
                frames: 2,
                uploads: 1
            }
        );
        assert_eq!(miner.stats().upload_ratio(), 0.5);
        assert_eq!(
            serde_json::to_string(&miner.stats()).unwrap(),
            r#"{"frames":2,"uploads":1,"upload_ratio":0.5}"#
        );
        assert_eq!(easy.to_string(), "skip: score 0.950, threshold 0.800");
        assert_eq!(
            serde_json::to_string(&hard).unwrap(),
            r#"{"score":0.75,"hard":true,"reason":{"policy":"threshold","threshold":0.8}}"#
        );
    }

    #[test]
    fn bad_frames_are_errors_and_not_counted() {
        let mut miner = threshold_miner(0.8);
        assert!(miner.decide(&[0.5; 3], Dims::new(2, 1, 2), 0).is_err());
        assert!(miner.decide_score(f32::NAN, 0).is_err());
        assert!(miner.decide_score(1.5, 0).is_err());
        assert_eq!(miner.stats(), MinerStats::default());
        assert_eq!(miner.stats().upload_ratio(), 0.0);
    }

    #[test]
    fn miner_can_move_between_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<Miner>();
    }

    #[test]
    fn passes_time_to_the_policy() {
        let mut miner = Miner::new(
            Box::new(LeastConfidence),
            Box::new(RateCap::new(1.0, 1.0).unwrap()),
        );
        assert!(miner.decide_score(0.5, 0).unwrap().hard);
        assert!(!miner.decide_score(0.5, 999).unwrap().hard);
        assert!(miner.decide_score(0.5, 1_000).unwrap().hard);
    }

    #[test]
    fn an_overridden_verdict_spends_the_allowance_only_for_real_uploads() {
        // One token per second; LeastConfidence scores this 1x1 map 0.6, and the rate cap passes every score.
        let mut miner = Miner::new(
            Box::new(LeastConfidence),
            Box::new(RateCap::new(1.0, 1.0).unwrap()),
        );
        let (probs, dims) = ([0.6, 0.4], Dims::new(2, 1, 1));
        // Kept back by the caller: the miner still says upload, but no token is spent.
        let kept = miner
            .decide_overridden(&probs, dims, 0, Some(false))
            .unwrap();
        assert!(kept.hard);
        assert!(miner.decide(&probs, dims, 1).unwrap().hard);
        // Forced up while the bucket is empty: reported as the miner's skip, counted as an upload.
        let forced = miner
            .decide_overridden(&probs, dims, 2, Some(true))
            .unwrap();
        assert!(!forced.hard);
        assert_eq!(
            miner.stats(),
            MinerStats {
                frames: 3,
                uploads: 2
            }
        );
    }
}

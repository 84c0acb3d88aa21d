use std::collections::VecDeque;

use super::{Policy, Reason, Verdict};
use crate::error::ConfigError;

/// Keeps the share of uploaded frames near `target_ratio`, whatever the score scale.
///
/// Fixed thresholds upload too much in a hard environment and nothing in an easy one, and
/// need recalibrating for every scorer. The budget instead ranks each score against the
/// last `window` scores and uploads it when it falls in the lowest `level` fraction, i.e.
/// below the `level`-quantile of the window. On a stationary stream `level = target_ratio`
/// would suffice; when scores drift, the window lags behind and the realised ratio moves
/// away from the target. An integral correction fixes this:
///
/// `level = target_ratio + deficit / correction_horizon`, where `deficit` is the running
/// count of uploads owed (`target_ratio` per frame seen, minus one per upload). A deficit
/// thus raises the level until it is paid back within about `correction_horizon` frames,
/// and a surplus lowers it. The deficit is clamped one upload beyond the range where
/// `level` saturates at 0 or 1: normal operation never reaches the clamp, but a long
/// stretch the policy cannot act on (e.g. a rate cap refusing) is forgotten instead of
/// winding up into an upload storm later.
///
/// Guarantee, for any stream when used alone: the deficit stays within a band of width
/// `correction_horizon + 1`, so any run of `n` frames uploads within
/// `(correction_horizon + 1) / n` of the target ratio (about ±5% over 1000 frames with the
/// default window of 200; much tighter on stationary streams).
///
/// Warm-up needs no special mode: the frame is ranked among the window *and itself*, so
/// with few scores in the window a frame uploads when it is among the worst seen so far,
/// the very first frame ranks as typical (0.5), and the deficit term pays back any early
/// excess within the horizon.
#[derive(Debug, Clone)]
pub struct UploadBudget {
    target_ratio: f64,
    correction_horizon: f64,
    deficit: f64,
    recent: ScoreWindow,
}

impl UploadBudget {
    pub const DEFAULT_WINDOW: usize = 200;

    /// The correction horizon defaults to a quarter of the window: long enough not to
    /// chase noise, short enough to correct drift well within one window.
    pub fn new(target_ratio: f32, window: usize) -> Result<Self, ConfigError> {
        if !(target_ratio > 0.0 && target_ratio < 1.0) {
            return Err(ConfigError::invalid(
                "target_ratio",
                format!("must be strictly between 0 and 1, got {target_ratio}"),
            ));
        }
        if window == 0 {
            return Err(ConfigError::invalid("window", "must hold at least 1 score"));
        }
        Ok(Self {
            target_ratio: f64::from(target_ratio),
            correction_horizon: (window / 4).max(1) as f64,
            deficit: 0.0,
            recent: ScoreWindow::new(window),
        })
    }

    /// Overrides the number of frames over which an upload deficit or surplus is evened
    /// out. Shorter tracks the target more tightly but lets the ratio decide more and the
    /// scores less.
    pub fn with_correction_horizon(mut self, frames: usize) -> Result<Self, ConfigError> {
        if frames == 0 {
            return Err(ConfigError::invalid(
                "correction_horizon",
                "must be at least 1 frame",
            ));
        }
        self.correction_horizon = frames as f64;
        Ok(self)
    }

    fn level(&self) -> f64 {
        (self.target_ratio + self.deficit / self.correction_horizon).clamp(0.0, 1.0)
    }
}

impl Policy for UploadBudget {
    fn propose(&self, score: f32, _now_ms: u64) -> Verdict {
        let rank = self.recent.mid_rank(score);
        let level = self.level();
        Verdict {
            upload: rank < level,
            reason: Reason::Budget {
                rank: rank as f32,
                level: level as f32,
                history: self.recent.len(),
            },
        }
    }

    fn record(&mut self, score: f32, _now_ms: u64, uploaded: bool) {
        let owed = self.target_ratio - if uploaded { 1.0 } else { 0.0 };
        let max_surplus = self.target_ratio * self.correction_horizon + 1.0;
        let max_deficit = (1.0 - self.target_ratio) * self.correction_horizon + 1.0;
        self.deficit = (self.deficit + owed).clamp(-max_surplus, max_deficit);
        self.recent.push(score);
    }
}

/// The last `capacity` scores, kept both in arrival order (to know which one leaves) and
/// sorted (to rank a new score by binary search). Memory is allocated once, up front.
#[derive(Debug, Clone)]
struct ScoreWindow {
    arrival: VecDeque<f32>,
    sorted: Vec<f32>,
    capacity: usize,
}

impl ScoreWindow {
    fn new(capacity: usize) -> Self {
        Self {
            arrival: VecDeque::with_capacity(capacity),
            sorted: Vec::with_capacity(capacity),
            capacity,
        }
    }

    fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Adds a score, evicting the oldest when full. Non-finite scores are not kept: they
    /// cannot be ordered and would corrupt the sorted copy.
    fn push(&mut self, score: f32) {
        if !score.is_finite() {
            return;
        }
        if self.arrival.len() == self.capacity
            && let Some(oldest) = self.arrival.pop_front()
        {
            let position = self.sorted.partition_point(|&s| s < oldest);
            self.sorted.remove(position);
        }
        self.arrival.push_back(score);
        let position = self.sorted.partition_point(|&s| s < score);
        self.sorted.insert(position, score);
    }

    /// Rank of `score` among the window plus the score itself, as a fraction in `(0, 1)`
    /// with ties counted as half: `(below + (ties + 1) / 2) / (len + 1)`. For i.i.d.
    /// continuous scores `P(rank < q)` is about `q`; a score equal to all others (or
    /// the first score) ranks 0.5; a new maximum stays below 1, so `level = 1` uploads
    /// everything.
    fn mid_rank(&self, score: f32) -> f64 {
        let below = self.sorted.partition_point(|&s| s < score);
        let not_above = self.sorted.partition_point(|&s| s <= score);
        // below + (ties + 1) / 2, doubled to stay in integers: below + not_above + 1.
        (below + not_above + 1) as f64 / (2 * (self.sorted.len() + 1)) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_ranks_and_evicts_oldest() {
        let mut window = ScoreWindow::new(3);
        assert_eq!(window.mid_rank(0.5), 0.5);
        for score in [0.2, 0.4, 0.6] {
            window.push(score);
        }
        assert_eq!(window.mid_rank(0.1), 0.125);
        assert_eq!(window.mid_rank(0.4), 0.5);
        assert_eq!(window.mid_rank(0.9), 0.875);
        window.push(0.8); // evicts 0.2
        assert_eq!(window.sorted, vec![0.4, 0.6, 0.8]);
        assert_eq!(window.mid_rank(0.5), 0.375);
    }

    #[test]
    fn window_ignores_non_finite_scores() {
        let mut window = ScoreWindow::new(2);
        window.push(f32::NAN);
        window.push(0.3);
        assert_eq!(window.sorted, vec![0.3]);
    }

    #[test]
    fn first_frame_ranks_as_typical() {
        let budget = UploadBudget::new(0.2, 10).unwrap();
        let verdict = budget.propose(0.0, 0);
        assert!(!verdict.upload);
        assert_eq!(
            verdict.reason,
            Reason::Budget {
                rank: 0.5,
                level: 0.2,
                history: 0
            }
        );
    }

    #[test]
    fn uploads_lowest_scores_of_a_repeating_pattern() {
        // Scores cycle through 0.0, 0.1, ..., 0.9; a 10% budget should pick the 0.0s.
        let mut budget = UploadBudget::new(0.1, 50).unwrap();
        let mut uploaded_scores = Vec::new();
        for frame in 0..1_000 {
            let score = (frame % 10) as f32 / 10.0;
            if budget.decide(score, frame).upload && frame >= 100 {
                uploaded_scores.push(score);
            }
        }
        assert_eq!(uploaded_scores.len(), 90);
        assert!(uploaded_scores.iter().all(|&s| s == 0.0));
    }

    #[test]
    fn constant_scores_still_meet_the_budget() {
        // Every score ties, so only the deficit term can decide; it must pace uploads.
        let mut budget = UploadBudget::new(0.25, 20).unwrap();
        let uploads = (0..400)
            .filter(|&frame| budget.decide(0.7, frame).upload)
            .count();
        assert!((95..=105).contains(&uploads), "{uploads} uploads");
    }

    #[test]
    fn deficit_is_bounded_when_uploads_are_vetoed() {
        // An outer policy refuses everything for a long time: the level saturates at 1
        // instead of winding up, and surplus is bounded the same way.
        let mut budget = UploadBudget::new(0.1, 40).unwrap();
        for frame in 0..10_000 {
            budget.record(0.5, frame, false);
        }
        assert_eq!(budget.level(), 1.0);
        for frame in 0..10_000 {
            budget.record(0.5, frame, true);
        }
        assert_eq!(budget.level(), 0.0);
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!(UploadBudget::new(0.0, 10).is_err());
        assert!(UploadBudget::new(1.0, 10).is_err());
        assert!(UploadBudget::new(f32::NAN, 10).is_err());
        assert!(UploadBudget::new(0.1, 0).is_err());
        let budget = UploadBudget::new(0.1, 10).unwrap();
        assert!(budget.with_correction_horizon(0).is_err());
    }
}

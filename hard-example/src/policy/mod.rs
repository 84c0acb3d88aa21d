//! Upload policies: small per-stream state machines that turn a frame's score into an
//! upload decision.
//!
//! Scores follow the [`crate::Scorer`] convention (in `[0, 1]`, lower = harder). Time is
//! always passed in as milliseconds on any monotonic clock the caller chooses; policies
//! never read a clock themselves, which keeps them deterministic and testable.

mod all;
mod budget;
mod rate_cap;
mod threshold;

use std::fmt;

use serde::Serialize;

pub use all::AllOf;
pub use budget::UploadBudget;
pub use rate_cap::RateCap;
pub use threshold::Threshold;

/// Decides, frame by frame, whether a stream's frame should be uploaded.
///
/// Deciding is split in two so that policies can be combined: [`Policy::propose`] only
/// looks, and [`Policy::record`] is told what was finally decided. A rate cap inside a
/// combination must spend a token only for frames that are really uploaded.
pub trait Policy: Send + fmt::Debug {
    /// What this policy alone would decide for a frame with `score` at `now_ms`.
    fn propose(&self, score: f32, now_ms: u64) -> Verdict;

    /// Updates the state with the final decision for that frame, which may differ from
    /// this policy's own proposal when it is part of a combination.
    fn record(&mut self, score: f32, now_ms: u64, uploaded: bool);

    /// Proposes and records in one step, for a policy used on its own.
    fn decide(&mut self, score: f32, now_ms: u64) -> Verdict {
        let verdict = self.propose(score, now_ms);
        self.record(score, now_ms, verdict.upload);
        verdict
    }
}

/// A policy's answer for one frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub upload: bool,
    pub reason: Reason,
}

/// The evidence behind a verdict, for logs and the stats endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "policy", rename_all = "kebab-case")]
pub enum Reason {
    /// The score was compared with a fixed threshold (upload when below).
    Threshold { threshold: f32 },
    /// The score ranked at `rank` (fraction of the `history` recent scores below it) and
    /// the budget uploads frames ranked below `level`.
    Budget {
        rank: f32,
        level: f32,
        history: usize,
    },
    /// The token bucket held `tokens` (an upload needs one).
    RateCap { tokens: f32 },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Threshold { threshold } => write!(f, "threshold {threshold:.3}"),
            Self::Budget {
                rank,
                level,
                history,
            } => write!(
                f,
                "ranks {rank:.3} among the last {history} scores, budget takes below {level:.3}"
            ),
            Self::RateCap { tokens } => write!(f, "rate cap has {tokens:.2} tokens"),
        }
    }
}

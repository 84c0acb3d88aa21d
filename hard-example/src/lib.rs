//! Hard example mining for cloud-edge collaborative semantic segmentation.
//!
//! The edge model segments every camera frame; this crate decides which frames are hard
//! enough to be worth sending to the cloud model (for a better answer and for later
//! retraining). It is a pure library: no I/O, no clock, no model runtime.
//!
//! - A [`Scorer`] turns the model's softmax output for one frame (CHW `&[f32]` plus
//!   [`Dims`]) into a confidence score in `[0, 1]`; **lower means harder**.
//! - A [`Policy`] turns the stream of scores into upload decisions: a fixed
//!   [`Threshold`], an [`UploadBudget`] that holds a target upload ratio, a [`RateCap`],
//!   or [`AllOf`] several.
//! - A [`Miner`] holds one scorer and one policy for one stream and keeps [`MinerStats`].
//! - [`MinerConfig`] builds a miner from JSON or from Sedna's `HEM_NAME` /
//!   `HEM_PARAMETERS`.
//!
//! ```
//! use hard_example::{Dims, MinerConfig};
//!
//! let config = MinerConfig::from_json(
//!     r#"{"scorer": {"name": "cross-entropy"},
//!         "policy": {"name": "all", "policies": [
//!             {"name": "budget", "target_ratio": 0.15, "window": 200},
//!             {"name": "rate-cap", "max_per_second": 2}]}}"#,
//! )?;
//! let mut miner = config.build()?;
//! let dims = Dims::new(2, 1, 2);
//! let probs = [0.5, 0.9, 0.5, 0.1]; // class 0 plane, then class 1 plane
//! let decision = miner.decide(&probs, dims, 0)?;
//! assert!((0.0..=1.0).contains(&decision.score));
//! assert_eq!(miner.stats().frames, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod config;
mod dims;
mod error;
mod miner;
pub mod policy;
pub mod scorer;

pub use config::{MinerConfig, PolicyConfig, ScorerConfig};
pub use dims::Dims;
pub use error::{ConfigError, ScoreError};
pub use miner::{Decision, Miner, MinerStats};
pub use policy::{AllOf, Policy, RateCap, Reason, Threshold, UploadBudget, Verdict};
pub use scorer::{
    CrossEntropy, IanvsConfidence, LeastConfidence, Margin, RareClassWeighted, Scorer,
};

//! Training and evaluation of the edge segmentation model with libtorch.
//!
//! The model architecture is defined once (`scripts/edge_model.py`), exported as a trainable TorchScript module and
//! an ONNX graph with the same parameter names. This crate fine-tunes the TorchScript module and writes the trained
//! weights back into the ONNX graph that the edge runs; the lifelong retraining job reuses it unchanged.

pub mod cloud_head;
pub mod data;
pub mod export;
pub mod gate;
pub mod optimizer;
pub mod progress;
pub mod registry;
pub mod rehearsal;
pub mod retrain;
pub mod retrain_cli;
pub mod snapshot;
pub mod train;
pub mod trigger;

pub use train::{TrainConfig, Trainer};

/// CamVid's "Unlabelled" label, ignored by the loss and by every metric.
pub const IGNORE_LABEL: u8 = 11;

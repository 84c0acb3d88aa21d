//! Everything that touches model files and ONNX Runtime, plus the pure pieces shared by every service:
//! manifests with checksums, sessions, image pre/post-processing, class-set mappings, Ianvs-style datasets,
//! segmentation metrics and the ONNX weight write-back used by the trainer.

pub mod class_map;
pub mod dataset;
pub mod edge;
pub mod evaluation;
pub mod image_ops;
pub mod manifest;
pub mod metrics;
pub mod onnx_weights;
pub mod paths;
pub mod refinement;
pub mod replay_export;
pub mod runtime;
pub mod sam;
pub mod semantic_head;

pub use edge::{EdgeModel, EdgeOutput, Lane};
pub use manifest::{Manifest, ManifestError};
pub use runtime::{SessionConfig, init_runtime};
pub use semantic_head::SemanticHead;

//! cloud-infer: the cloud half of the edge-cloud segmentation loop. Robots send hard frames with their own class
//! scores (`POST /v1/refine`, see the `wire` crate); the service refines each with MobileSAM masks fused with the
//! edge scores, answers with the refined label map, and keeps every refined frame in a durable replay buffer that
//! retraining and benchmarks read back (`export-index`).
//!
//! Layers: [`http`] (thin axum router) -> [`queue`] (bounded, one refinement thread) -> [`refiner`] (the backend
//! trait and its MobileSAM implementation), and [`replay`] (the buffer behind its own trait).

pub mod cli;
pub mod error;
pub mod http;
pub mod queue;
pub mod refiner;
pub mod replay;
pub mod scores;
pub mod telemetry;

pub use error::ApiError;
pub use http::{Auth, Limits, router};
pub use queue::{Readiness, RefineQueue};
pub use refiner::{
    RefineFrame, Refinement, Refiner, RefinerError, RefinerInfo, SamRefiner, SamSettings,
};

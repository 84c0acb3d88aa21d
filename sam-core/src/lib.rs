//! The pure half of MobileSAM automatic mask generation (AMG) and of the cloud refinement that follows it:
//! point grids and crops, mask post-processing from decoder logits, run-length encoded masks, box NMS,
//! small-region clean-up, prompt scheduling (grid, adaptive, guided) and the rules that fuse SAM masks with the
//! edge model's class scores into a refined label map. No I/O and no inference: `models::sam` runs the ONNX
//! graphs and calls into here, which keeps every piece unit-testable with hand-made inputs.
//!
//! Semantics follow the reference `SamAutomaticMaskGenerator` (segment_anything / MobileSAM `amg.py`).

pub mod fusion;
pub mod grid;
pub mod mask;
pub mod nms;
pub mod prompts;
pub mod regions;
pub mod rle;
pub mod upscale;

pub use fusion::{
    ClassScores, ConfidentVoteParams, ExpertEvidence, ExpertExponents, FusionRule, PRODUCT_FLOOR,
    fuse, fuse_oracle,
};
pub use grid::{
    CropBox, build_all_layer_point_grids, build_point_grid, generate_crop_boxes,
    is_box_near_crop_edge,
};
pub use mask::{AmgThresholds, Mask, masks_from_decoder_batch, postprocess_small_regions};
pub use nms::{box_iou, nms};
pub use prompts::{CoverageMap, PromptOrder, PromptScheduler};
pub use regions::{RegionMode, remove_small_regions};
pub use rle::{BoxXyxy, Rle, RleBuilder, Run};
pub use upscale::{MaskUpscaler, UpscaledMask};

//! Wire types shared by edge-infer and cloud-infer.
//!
//! `POST /v1/refine` is `multipart/form-data` with three parts, so the frame travels as its encoded bytes rather
//! than as JSON pixel lists:
//! - `meta`: [`RefineMeta`] as JSON;
//! - `image`: the frame as the robot encoded it (JPEG or PNG);
//! - `edge_scores`: the edge model's class probabilities, quantised to u8 (`round(p * 255)`), CHW, at the reduced
//!   resolution given in `meta.scores` ([`QuantisedScores`]). About 119 KB for 11 classes at 120x90.
//!
//! The response is [`RefineResponse`] as JSON. Every message carries [`PROTOCOL_VERSION`]; a cloud refuses a
//! request with a different major version with 400 and says which it speaks.

use base64::Engine;
use serde::{Deserialize, Serialize};

pub const PROTOCOL_VERSION: &str = "1.0";
pub const PART_META: &str = "meta";
pub const PART_IMAGE: &str = "image";
pub const PART_EDGE_SCORES: &str = "edge_scores";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelRef {
    pub name: String,
    pub version: String,
}

/// Resolution at which the edge uploads its class scores (box-averaged, one byte per class and cell): about
/// 119 KB for 11 classes. At 60x45 the refined labels lost 1.3 mIoU points on dusk-eval (README, "What the edge
/// sends the cloud").
pub const UPLOAD_SCORES_WIDTH: u32 = 120;
pub const UPLOAD_SCORES_HEIGHT: u32 = 90;

/// Shape of the quantised edge scores part.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantisedScores {
    pub classes: u32,
    pub height: u32,
    pub width: u32,
}

impl QuantisedScores {
    pub fn len(&self) -> usize {
        self.classes as usize * self.height as usize * self.width as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefineMeta {
    pub protocol: String,
    pub request_id: String,
    pub robot_id: String,
    /// The edge model whose scores are attached.
    pub edge_model: ModelRef,
    /// Milliseconds since the Unix epoch after which the edge no longer wants the answer.
    pub deadline_unix_ms: u64,
    /// The miner's score for this frame (higher = more confident) and the scorer's name.
    pub miner_score: f32,
    pub miner: String,
    /// Free-form domain tag for the replay buffer (e.g. `dusk`), if the robot knows it.
    #[serde(default)]
    pub domain: Option<String>,
    pub scores: QuantisedScores,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefineTimings {
    pub queue_ms: f64,
    pub encoder_ms: f64,
    pub decoder_ms: f64,
    /// Class evidence (the cloud's semantic head, when it is used) and labelling the masks.
    pub fusion_ms: f64,
    pub total_ms: f64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefineResponse {
    pub protocol: String,
    pub request_id: String,
    pub cloud_model: ModelRef,
    pub width: u32,
    pub height: u32,
    /// The fusion rule that produced the label map.
    pub fusion: String,
    pub mask_count: u32,
    /// 8-bit PNG of class indices, base64 (standard alphabet), same encoding as the edge's answer.
    pub label_map_png: String,
    /// Whether the frame was stored in the replay buffer (false for a duplicate already stored).
    pub stored: bool,
    pub timings: RefineTimings,
}

/// The JSON body of every error answer, on both services.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: String,
    /// A stable machine-readable kind, e.g. `bad_image`, `queue_full`, `unauthorized`.
    pub kind: String,
}

pub fn encode_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    base64::engine::general_purpose::STANDARD.decode(text)
}

/// Quantises probabilities in [0, 1] to bytes.
pub fn quantise(probabilities: &[f32]) -> Vec<u8> {
    probabilities
        .iter()
        .map(|p| (p.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect()
}

pub fn dequantise(bytes: &[u8]) -> Vec<f32> {
    bytes.iter().map(|b| f32::from(*b) / 255.0).collect()
}

/// True when the two protocol versions share a major version.
pub fn compatible(version: &str) -> bool {
    version.split('.').next() == PROTOCOL_VERSION.split('.').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantisation_error_is_at_most_half_a_step() {
        let p: Vec<f32> = (0..=100).map(|i| i as f32 / 100.0).collect();
        for (a, b) in p.iter().zip(dequantise(&quantise(&p))) {
            assert!((a - b).abs() <= 0.5 / 255.0 + 1e-6);
        }
    }

    #[test]
    fn meta_round_trips_through_json_and_versions_are_checked() {
        let meta = RefineMeta {
            protocol: PROTOCOL_VERSION.into(),
            request_id: "r1".into(),
            robot_id: "robot-7".into(),
            edge_model: ModelRef {
                name: "edge".into(),
                version: "1.0.0".into(),
            },
            deadline_unix_ms: 42,
            miner_score: 0.5,
            miner: "cross-entropy".into(),
            domain: None,
            scores: QuantisedScores {
                classes: 11,
                height: 45,
                width: 60,
            },
        };
        let back: RefineMeta =
            serde_json::from_str(&serde_json::to_string(&meta).unwrap()).unwrap();
        assert_eq!(back, meta);
        assert_eq!(meta.scores.len(), 11 * 45 * 60);
        assert!(compatible("1.7"));
        assert!(!compatible("2.0"));
    }
}

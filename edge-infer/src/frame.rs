//! The CPU work for one frame, run on an inference thread: decode, segment, mine, and render the answer.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use hard_example::{Decision, Dims, Miner};
use image::RgbImage;
use models::{EdgeOutput, Lane, image_ops};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use wire::QuantisedScores;

use crate::error::ApiError;
use crate::metrics;
use crate::registry::{LoadedModel, ModelRegistry};

/// Weight of the class colour in overlays.
const OVERLAY_ALPHA: f32 = 0.5;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Collaborate {
    /// Ask the cloud when the miner judges the frame hard.
    #[default]
    Auto,
    /// Never ask the cloud.
    Never,
    /// Ask the cloud for every frame (the miner still scores it).
    Always,
}

/// What one frame needs from the inference thread.
pub struct FrameJob {
    pub image: Bytes,
    pub collaborate: Collaborate,
    /// False when no cloud is configured: no point preparing an upload.
    pub cloud_available: bool,
    pub overlay: bool,
    pub max_pixels: u64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MinerReport {
    /// Confidence in [0, 1]; lower is harder.
    pub score: f32,
    /// The miner's verdict (policy included), whatever `collaborate` says.
    pub hard: bool,
    pub scorer: String,
}

/// Label map, overlay and class counts, ready to send.
pub struct Rendered {
    pub label_png: Vec<u8>,
    pub overlay_png: Option<Vec<u8>>,
    pub class_counts: Vec<u64>,
}

/// What the cloud needs to refine a frame, and the decoded image for an overlay of its answer.
pub struct Upload {
    pub scores: Vec<u8>,
    pub shape: QuantisedScores,
    pub image: Option<RgbImage>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct EdgeTimings {
    pub decode_ms: f64,
    pub queue_ms: f64,
    pub preprocess_ms: f64,
    pub inference_ms: f64,
    pub postprocess_ms: f64,
    pub mining_ms: f64,
    pub render_ms: f64,
}

/// The edge's complete answer to a frame; `upload` is set when the frame should go to the cloud.
pub struct EdgeFrame {
    pub model: Arc<LoadedModel>,
    pub width: u32,
    pub height: u32,
    pub rendered: Rendered,
    pub miner: MinerReport,
    pub upload: Option<Upload>,
    pub timings: EdgeTimings,
}

/// The stream's miner, shared by the inference threads; policies keep per-stream state.
pub struct SharedMiner {
    pub miner: Mutex<Miner>,
    pub scorer_name: String,
    /// Origin of the miner's millisecond clock.
    pub started: Instant,
}

pub fn process(
    job: FrameJob,
    queue_ms: f64,
    lane: Lane,
    registry: &ModelRegistry,
    miner: &SharedMiner,
) -> Result<EdgeFrame, ApiError> {
    let start = Instant::now();
    let image = image_ops::decode_rgb(&job.image, job.max_pixels)?;
    let decode_ms = ms_since(start);
    let model = registry.current().ok_or(ApiError::ModelNotReady)?;
    let output = model
        .model
        .segment_in(&image, lane)
        .map_err(|e| ApiError::Inference(e.to_string()))?;

    // The miner and the rendering of the edge answer only read the model's output, so they run side by side: the
    // model's threads are idle by now. The edge answer is rendered even when the cloud is asked: it is the fallback
    // and must be ready on time.
    let mut rendered = None;
    let mined = rayon::in_place_scope(|scope| {
        scope.spawn(|_| {
            let render_start = Instant::now();
            let result = render(
                &output.labels,
                output.width,
                output.height,
                job.overlay.then_some(&image),
                &model,
            );
            rendered = Some((result, ms_since(render_start)));
        });
        let mining_start = Instant::now();
        mine(&output, job.collaborate, job.cloud_available, miner)
            .map(|(decision, upload)| (decision, upload, ms_since(mining_start)))
    });
    let (decision, upload, mining_ms) = mined?;
    // The scope returns once its spawned job has run, so this is always set.
    let (rendered, render_ms) =
        rendered.ok_or_else(|| ApiError::Internal("the label map was not rendered".into()))?;
    let rendered = rendered?;
    let upload = upload.map(|upload| Upload {
        image: job.overlay.then_some(image),
        ..upload
    });
    Ok(EdgeFrame {
        width: output.width,
        height: output.height,
        rendered,
        miner: MinerReport {
            score: decision.score,
            hard: decision.hard,
            scorer: miner.scorer_name.clone(),
        },
        upload,
        timings: EdgeTimings {
            decode_ms,
            queue_ms,
            preprocess_ms: output.preprocess_ms,
            inference_ms: output.inference_ms,
            postprocess_ms: output.postprocess_ms,
            mining_ms,
            render_ms,
        },
        model,
    })
}

/// Scores the frame and, when it goes to the cloud, pools the class scores the cloud needs from the edge.
fn mine(
    output: &EdgeOutput,
    collaborate: Collaborate,
    cloud_available: bool,
    miner: &SharedMiner,
) -> Result<(Decision, Option<Upload>), ApiError> {
    let dims = Dims::new(
        output.classes,
        output.score_height as usize,
        output.score_width as usize,
    );
    // What the request (and the configuration) decides regardless of the miner; the miner's policy is told what
    // really happens, so frames kept on the edge spend no upload budget or rate-cap token.
    let overridden = match collaborate {
        _ if !cloud_available => Some(false),
        Collaborate::Auto => None,
        Collaborate::Always => Some(true),
        Collaborate::Never => Some(false),
    };
    let decision = {
        let mut miner_guard = miner
            .miner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now_ms = miner.started.elapsed().as_millis() as u64;
        let decision = miner_guard
            .decide_overridden(&output.probabilities, dims, now_ms, overridden)
            .map_err(|e| ApiError::Inference(format!("mining: {e}")))?;
        metrics::upload_ratio(miner_guard.stats().upload_ratio());
        decision
    };
    let upload = overridden.unwrap_or(decision.hard).then(|| {
        let shape = QuantisedScores {
            classes: output.classes as u32,
            height: wire::UPLOAD_SCORES_HEIGHT,
            width: wire::UPLOAD_SCORES_WIDTH,
        };
        let pooled = downsample_scores(
            &output.probabilities,
            dims,
            wire::UPLOAD_SCORES_HEIGHT,
            wire::UPLOAD_SCORES_WIDTH,
        );
        Upload {
            scores: wire::quantise(&pooled),
            shape,
            image: None,
        }
    });
    Ok((decision, upload))
}

/// Encodes a label map, and an overlay on `overlay_on` when given, and counts pixels per class.
pub fn render(
    labels: &[u8],
    width: u32,
    height: u32,
    overlay_on: Option<&RgbImage>,
    model: &LoadedModel,
) -> Result<Rendered, ApiError> {
    let label_png = image_ops::encode_label_png(labels, width, height)?;
    let overlay_png = match overlay_on {
        Some(image) => {
            let blended = image_ops::overlay(image, labels, &model.palette, OVERLAY_ALPHA);
            Some(image_ops::encode_png(&blended)?)
        }
        None => None,
    };
    Ok(Rendered {
        label_png,
        overlay_png,
        class_counts: image_ops::class_counts(labels, model.class_names.len()),
    })
}

/// Box-averages a CHW score map down to `out_height` x `out_width` (each output pixel averages its source block,
/// so the pooled map still sums to one per pixel).
pub fn downsample_scores(scores: &[f32], dims: Dims, out_height: u32, out_width: u32) -> Vec<f32> {
    let (height, width) = (dims.height, dims.width);
    let (out_height, out_width) = (out_height as usize, out_width as usize);
    let plane = height * width;
    let span = |index: usize, out: usize, size: usize| {
        let begin = index * size / out;
        let end = ((index + 1) * size / out).max(begin + 1).min(size);
        begin..end
    };
    let mut pooled = Vec::with_capacity(dims.classes * out_height * out_width);
    for class in 0..dims.classes {
        let channel = &scores[class * plane..(class + 1) * plane];
        for y in 0..out_height {
            let rows = span(y, out_height, height);
            for x in 0..out_width {
                let cols = span(x, out_width, width);
                let count = (rows.len() * cols.len()) as f32;
                let sum: f32 = rows
                    .clone()
                    .map(|row| {
                        channel[row * width + cols.start..row * width + cols.end]
                            .iter()
                            .sum::<f32>()
                    })
                    .sum();
                pooled.push(sum / count);
            }
        }
    }
    pooled
}

/// The MIME type the image bytes really are, for the upload's `image` part.
pub fn sniff_mime(bytes: &[u8]) -> &'static str {
    match image::guess_format(bytes) {
        Ok(image::ImageFormat::Jpeg) => "image/jpeg",
        Ok(image::ImageFormat::Png) => "image/png",
        _ => "application/octet-stream",
    }
}

pub fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsampling_averages_blocks_per_class() {
        // 2 classes, 2x4 map pooled to 1x2.
        let scores = [
            0.0, 0.2, 1.0, 1.0, //
            0.4, 0.2, 1.0, 1.0, //
            1.0, 0.8, 0.0, 0.0, //
            0.6, 0.8, 0.0, 0.0,
        ];
        let pooled = downsample_scores(&scores, Dims::new(2, 2, 4), 1, 2);
        let expected = [0.2, 1.0, 0.8, 0.0];
        for (a, b) in pooled.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{pooled:?}");
        }
    }

    #[test]
    fn downsampling_to_a_larger_size_repeats_pixels() {
        let pooled = downsample_scores(&[0.25, 0.75], Dims::new(2, 1, 1), 2, 2);
        assert_eq!(
            pooled,
            vec![0.25; 4]
                .into_iter()
                .chain([0.75; 4])
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn mime_is_sniffed_from_the_bytes() {
        assert_eq!(sniff_mime(&[0xFF, 0xD8, 0xFF, 0xE0]), "image/jpeg");
        assert_eq!(sniff_mime(b"\x89PNG\r\n\x1a\n"), "image/png");
        assert_eq!(sniff_mime(b"nope"), "application/octet-stream");
    }
}

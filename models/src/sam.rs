//! MobileSAM automatic mask generation over ONNX Runtime: the encoder and the point-prompt decoder run here, the
//! pure post-processing lives in `sam-core`.
//!
//! Three ways to spend prompts ([`PromptMode`]): SAM's full grid, an adaptive coarse-to-fine walk that skips grid
//! points already inside accepted masks, and a walk guided by the edge model's uncertainty. The latter two stop
//! at a prompt budget, which is what makes cloud refinement of a frame take seconds instead of a minute.

use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use image::RgbImage;
use ndarray::{Array2, Array3, Array4, s};
use ort::session::Session;
use ort::value::TensorRef;
use sam_core::{
    AmgThresholds, CoverageMap, CropBox, Mask, MaskUpscaler, PromptOrder, PromptScheduler,
    build_all_layer_point_grids, generate_crop_boxes, masks_from_decoder_batch, nms,
    postprocess_small_regions,
};

use crate::image_ops::to_input_tensor;
use crate::manifest::{LoadedManifest, Manifest, ManifestError};
use crate::runtime::{RuntimeError, SessionConfig, build_session};

/// The edge model's class probabilities for the frame (CHW, any resolution): what guided prompting samples from.
pub use sam_core::ClassScores as Guidance;

#[derive(Debug, thiserror::Error)]
pub enum SamError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("model {model} is not a SAM model (kind `{kind}`)")]
    WrongKind { model: String, kind: String },
    #[error("{output} has shape {shape:?}, expected {expected}")]
    OutputShape {
        output: &'static str,
        shape: Vec<i64>,
        expected: String,
    },
    #[error("crop layers need the image itself, not a precomputed embedding")]
    CropsNeedImage,
}

/// The encoder's output for one image, reusable across many `generate` calls.
#[derive(Debug, Clone)]
pub struct Embedding {
    pub(crate) embeddings: Array4<f32>,
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) content_width: u32,
    pub(crate) content_height: u32,
    /// Time the encoder took (preprocessing included).
    pub encoder_ms: f64,
}

/// Side of the square of encoder input pixels one embedding cell summarises (SAM: 1024 input, 64x64 cells).
pub const EMBEDDING_CELL: u32 = 16;

impl Embedding {
    /// Size of the image it was computed from.
    pub fn image_size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Columns and rows of cells that cover the image (the rest cover the zero padding).
    pub fn content_cells(&self) -> (usize, usize) {
        let cells = |content: u32, total: usize| {
            content.div_ceil(EMBEDDING_CELL).min(total as u32) as usize
        };
        let (_, _, rows, columns) = self.embeddings.dim();
        (
            cells(self.content_width, columns),
            cells(self.content_height, rows),
        )
    }

    /// Encoder input pixels per image pixel, horizontally and vertically.
    pub fn input_scale(&self) -> (f32, f32) {
        (
            self.content_width as f32 / self.width as f32,
            self.content_height as f32 / self.height as f32,
        )
    }

    /// The embedding vectors of the cells that cover the image, one row per cell in row-major order.
    pub fn content_features(&self) -> Array2<f32> {
        let (columns, rows) = self.content_cells();
        let channels = self.embeddings.dim().1;
        let planes = self.embeddings.slice(s![0, .., ..rows, ..columns]);
        let planes = planes
            .to_shape((channels, rows * columns))
            .expect("a row-major copy of the slice has this shape");
        planes.t().as_standard_layout().into_owned()
    }
}

/// Which prompts to spend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PromptMode {
    /// Every grid point, in batches of `points_per_batch` (SAM's automatic mask generator).
    Grid,
    /// The grid coarse-to-fine in batches of `batch_size`, skipping points inside accepted masks, at most
    /// `max_prompts` per crop.
    Adaptive {
        max_prompts: usize,
        batch_size: usize,
    },
    /// Like `Adaptive`, but most uncertain grid cells of the edge output first, skipping cells whose mean
    /// uncertainty (1 - top-2 margin) is below `min_uncertainty`. Without guidance it behaves as `Adaptive`.
    Guided {
        max_prompts: usize,
        batch_size: usize,
        min_uncertainty: f32,
    },
}

/// SAM's generator settings (same defaults) plus the prompting mode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeneratorConfig {
    pub points_per_side: usize,
    pub points_per_batch: usize,
    pub pred_iou_thresh: f32,
    pub stability_score_thresh: f32,
    pub stability_score_offset: f32,
    pub box_nms_thresh: f32,
    pub crop_n_layers: usize,
    pub crop_nms_thresh: f32,
    pub crop_overlap_ratio: f64,
    pub crop_n_points_downscale_factor: usize,
    pub min_mask_region_area: u32,
    pub prompting: PromptMode,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            points_per_side: 32,
            points_per_batch: 64,
            pred_iou_thresh: 0.88,
            stability_score_thresh: 0.95,
            stability_score_offset: 1.0,
            box_nms_thresh: 0.7,
            crop_n_layers: 0,
            crop_nms_thresh: 0.7,
            crop_overlap_ratio: 512.0 / 1500.0,
            crop_n_points_downscale_factor: 1,
            min_mask_region_area: 0,
            prompting: PromptMode::Grid,
        }
    }
}

/// The prompting choices the services offer (cloud-infer `--prompt-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prompting {
    Grid,
    Adaptive,
    Guided,
}

impl Prompting {
    /// `grid`, `adaptive` or `guided`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "grid" => Some(Self::Grid),
            "adaptive" => Some(Self::Adaptive),
            "guided" => Some(Self::Guided),
            _ => None,
        }
    }
}

impl GeneratorConfig {
    /// The cloud refinement settings: SAM's thresholds and `prompting` over a `points_per_side` grid. The budgeted
    /// modes ask at most `max_prompts` in batches of 16 (they decide after each batch which points are still worth
    /// asking, so small batches waste less); guided skips cells where the edge is sure.
    pub fn refinement(prompting: Prompting, points_per_side: usize, max_prompts: usize) -> Self {
        let batch_size = 16;
        Self {
            points_per_side,
            prompting: match prompting {
                Prompting::Grid => PromptMode::Grid,
                Prompting::Adaptive => PromptMode::Adaptive {
                    max_prompts,
                    batch_size,
                },
                Prompting::Guided => PromptMode::Guided {
                    max_prompts,
                    batch_size,
                    min_uncertainty: 0.1,
                },
            },
            ..Self::default()
        }
    }
}

/// What to generate masks for: an image, or the embedding of one computed earlier.
#[derive(Debug, Clone, Copy)]
pub enum SamInput<'a> {
    Image(&'a RgbImage),
    Embedding(&'a Embedding),
}

impl<'a> From<&'a RgbImage> for SamInput<'a> {
    fn from(image: &'a RgbImage) -> Self {
        SamInput::Image(image)
    }
}

impl<'a> From<&'a Embedding> for SamInput<'a> {
    fn from(embedding: &'a Embedding) -> Self {
        SamInput::Embedding(embedding)
    }
}

/// Generated masks (original image frame, NMS applied) and where the time went.
#[derive(Debug, Clone)]
pub struct Generated {
    pub masks: Vec<Mask>,
    /// Encoder time spent by this call (0 when given an embedding and no crops).
    pub encoder_ms: f64,
    pub decoder_ms: f64,
    /// Upscaling, thresholds, NMS and small-region clean-up.
    pub postprocess_ms: f64,
    pub decoder_calls: usize,
    pub prompts_used: usize,
}

pub struct SamModel {
    manifest: Manifest,
    /// Sessions need `&mut` to run; one frame at a time per model.
    encoder: Mutex<Session>,
    decoder: Mutex<Session>,
}

impl SamModel {
    /// Loads the encoder and decoder in `dir` after verifying the manifest's checksums.
    pub fn load(dir: &Path, config: SessionConfig) -> Result<Self, SamError> {
        let loaded = LoadedManifest::load_verified(dir)?;
        if loaded.manifest.kind != "sam" {
            return Err(SamError::WrongKind {
                model: loaded.manifest.name.clone(),
                kind: loaded.manifest.kind.clone(),
            });
        }
        let encoder = build_session(&loaded.file("encoder")?, config)?;
        let decoder = build_session(&loaded.file("decoder")?, config)?;
        Ok(Self {
            manifest: loaded.manifest,
            encoder: Mutex::new(encoder),
            decoder: Mutex::new(decoder),
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Runs the encoder on one image.
    pub fn embed(&self, image: &RgbImage) -> Result<Embedding, SamError> {
        let start = Instant::now();
        let (input, letterbox) = to_input_tensor(image, &self.manifest.input);
        let mut session = self
            .encoder
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let tensor = TensorRef::from_array_view(input.view()).map_err(run_error)?;
        let outputs = session
            .run(ort::inputs!["image" => tensor])
            .map_err(run_error)?;
        let (shape, data) = outputs["image_embeddings"]
            .try_extract_tensor::<f32>()
            .map_err(run_error)?;
        let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        if dims.len() != 4 || dims[0] != 1 {
            return Err(SamError::OutputShape {
                output: "image_embeddings",
                shape: shape.to_vec(),
                expected: "[1, C, H, W]".into(),
            });
        }
        let embeddings =
            Array4::from_shape_vec((dims[0], dims[1], dims[2], dims[3]), data.to_vec())
                .expect("shape checked above");
        let (width, height) = image.dimensions();
        Ok(Embedding {
            embeddings,
            width,
            height,
            content_width: letterbox.content_width,
            content_height: letterbox.content_height,
            encoder_ms: start.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Automatic mask generation. `guidance` feeds [`PromptMode::Guided`] and is ignored by the other modes.
    pub fn generate<'a>(
        &self,
        input: impl Into<SamInput<'a>>,
        config: &GeneratorConfig,
        guidance: Option<&Guidance>,
    ) -> Result<Generated, SamError> {
        let input = input.into();
        let (width, height) = match input {
            SamInput::Image(image) => image.dimensions(),
            SamInput::Embedding(embedding) => embedding.image_size(),
        };
        let crops = generate_crop_boxes(
            width,
            height,
            config.crop_n_layers,
            config.crop_overlap_ratio,
        );
        let grids = build_all_layer_point_grids(
            config.points_per_side,
            config.crop_n_layers,
            config.crop_n_points_downscale_factor.max(1),
        );
        let mut generated = Generated {
            masks: Vec::new(),
            encoder_ms: 0.0,
            decoder_ms: 0.0,
            postprocess_ms: 0.0,
            decoder_calls: 0,
            prompts_used: 0,
        };
        for crop in &crops {
            let computed;
            let embedding = match input {
                SamInput::Embedding(embedding) if crop.layer == 0 => embedding,
                SamInput::Embedding(_) => return Err(SamError::CropsNeedImage),
                SamInput::Image(image) => {
                    computed = if crop.layer == 0 {
                        self.embed(image)?
                    } else {
                        let cropped = image::imageops::crop_imm(
                            image,
                            crop.x0,
                            crop.y0,
                            crop.width(),
                            crop.height(),
                        )
                        .to_image();
                        self.embed(&cropped)?
                    };
                    generated.encoder_ms += computed.encoder_ms;
                    &computed
                }
            };
            let masks = self.process_crop(
                embedding,
                crop,
                &grids[crop.layer],
                (width, height),
                config,
                guidance,
                &mut generated,
            )?;
            generated.masks.extend(masks);
        }
        let start = Instant::now();
        if crops.len() > 1 {
            // Prefer masks from smaller crops when crops overlap.
            let boxes: Vec<_> = generated.masks.iter().map(|m| m.bbox).collect();
            let scores: Vec<f32> = generated
                .masks
                .iter()
                .map(|m| 1.0 / m.crop_box.area() as f32)
                .collect();
            generated.masks = keep(
                std::mem::take(&mut generated.masks),
                &nms(&boxes, &scores, config.crop_nms_thresh),
            );
        }
        generated.masks = postprocess_small_regions(
            std::mem::take(&mut generated.masks),
            config.min_mask_region_area,
            config.box_nms_thresh.max(config.crop_nms_thresh),
        );
        generated.postprocess_ms += start.elapsed().as_secs_f64() * 1e3;
        Ok(generated)
    }

    #[allow(clippy::too_many_arguments)]
    fn process_crop(
        &self,
        embedding: &Embedding,
        crop: &CropBox,
        grid: &[[f32; 2]],
        image_size: (u32, u32),
        config: &GeneratorConfig,
        guidance: Option<&Guidance>,
        generated: &mut Generated,
    ) -> Result<Vec<Mask>, SamError> {
        let input_size = self.manifest.input.width.max(self.manifest.input.height) as usize;
        let (crop_w, crop_h) = (crop.width() as f32, crop.height() as f32);
        let points: Vec<[f32; 2]> = grid
            .iter()
            .map(|&[x, y]| [x * crop_w + crop.x0 as f32, y * crop_h + crop.y0 as f32])
            .collect();
        let per_side = (grid.len() as f64).sqrt().round() as usize;
        let (order, budget, batch_size, skip_covered) = match config.prompting {
            PromptMode::Grid => (
                PromptOrder::RowMajor,
                usize::MAX,
                config.points_per_batch,
                false,
            ),
            PromptMode::Adaptive {
                max_prompts,
                batch_size,
            } => (PromptOrder::CoarseToFine, max_prompts, batch_size, true),
            PromptMode::Guided {
                max_prompts,
                batch_size,
                min_uncertainty,
            } => (
                PromptOrder::Uncertainty { min_uncertainty },
                max_prompts,
                batch_size,
                true,
            ),
        };
        let mut scheduler = PromptScheduler::new(
            points,
            per_side,
            &order,
            guidance,
            image_size,
            budget,
            skip_covered,
        );
        let mut coverage = CoverageMap::new(image_size.0, image_size.1);
        let thresholds = AmgThresholds {
            pred_iou_thresh: config.pred_iou_thresh,
            stability_score_thresh: config.stability_score_thresh,
            stability_score_offset: config.stability_score_offset,
            mask_threshold: 0.0,
        };
        // Prompts go to the decoder in the resized-input frame of this crop.
        let to_input_x = embedding.content_width as f32 / crop_w;
        let to_input_y = embedding.content_height as f32 / crop_h;
        let mut upscaler: Option<MaskUpscaler> = None;
        let mut masks = Vec::new();
        loop {
            let batch = scheduler.next_batch(batch_size.max(1), &coverage);
            if batch.is_empty() {
                break;
            }
            let coords = Array3::from_shape_fn((batch.len(), 1, 2), |(i, _, axis)| {
                if axis == 0 {
                    (batch[i][0] - crop.x0 as f32) * to_input_x
                } else {
                    (batch[i][1] - crop.y0 as f32) * to_input_y
                }
            });
            let start = Instant::now();
            let (iou_predictions, low_res, side) = self.decode(embedding, &coords)?;
            let decoded = Instant::now();
            generated.decoder_ms += (decoded - start).as_secs_f64() * 1e3;
            generated.decoder_calls += 1;
            let upscaler = upscaler.get_or_insert_with(|| {
                MaskUpscaler::new(
                    side,
                    input_size,
                    embedding.content_width as usize,
                    embedding.content_height as usize,
                    crop.width() as usize,
                    crop.height() as usize,
                )
            });
            let batch_masks = masks_from_decoder_batch(
                &batch,
                &iou_predictions,
                &low_res,
                upscaler,
                crop,
                image_size,
                &thresholds,
            );
            if skip_covered {
                batch_masks
                    .iter()
                    .for_each(|m| coverage.add(&m.segmentation));
            }
            masks.extend(batch_masks);
            generated.postprocess_ms += decoded.elapsed().as_secs_f64() * 1e3;
        }
        generated.prompts_used += scheduler.used();
        let start = Instant::now();
        let boxes: Vec<_> = masks.iter().map(|m| m.bbox).collect();
        let scores: Vec<f32> = masks.iter().map(|m| m.predicted_iou).collect();
        let kept = keep(masks, &nms(&boxes, &scores, config.box_nms_thresh));
        generated.postprocess_ms += start.elapsed().as_secs_f64() * 1e3;
        Ok(kept)
    }

    /// One decoder call: `[B, 3]` predicted IoUs, `[B, 3, side, side]` logits, and `side`.
    fn decode(
        &self,
        embedding: &Embedding,
        coords: &Array3<f32>,
    ) -> Result<(Vec<f32>, Vec<f32>, usize), SamError> {
        let batch = coords.dim().0 as i64;
        let mut session = self
            .decoder
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let outputs = session
            .run(ort::inputs![
                "image_embeddings" => TensorRef::from_array_view(embedding.embeddings.view()).map_err(run_error)?,
                "point_coords" => TensorRef::from_array_view(coords.view()).map_err(run_error)?,
            ])
            .map_err(run_error)?;
        let (iou_shape, iou) = outputs["iou_predictions"]
            .try_extract_tensor::<f32>()
            .map_err(run_error)?;
        if iou_shape.as_ref() != [batch, 3] {
            return Err(SamError::OutputShape {
                output: "iou_predictions",
                shape: iou_shape.to_vec(),
                expected: format!("[{batch}, 3]"),
            });
        }
        let (mask_shape, logits) = outputs["low_res_masks"]
            .try_extract_tensor::<f32>()
            .map_err(run_error)?;
        if mask_shape.len() != 4 || mask_shape[..2] != [batch, 3] || mask_shape[2] != mask_shape[3]
        {
            return Err(SamError::OutputShape {
                output: "low_res_masks",
                shape: mask_shape.to_vec(),
                expected: format!("[{batch}, 3, S, S]"),
            });
        }
        Ok((iou.to_vec(), logits.to_vec(), mask_shape[2] as usize))
    }
}

/// The masks at `indices`, in that order.
fn keep(masks: Vec<Mask>, indices: &[usize]) -> Vec<Mask> {
    let mut slots: Vec<Option<Mask>> = masks.into_iter().map(Some).collect();
    indices.iter().filter_map(|&i| slots[i].take()).collect()
}

fn run_error(error: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Run(error.to_string())
}

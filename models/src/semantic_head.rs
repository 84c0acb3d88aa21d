//! The cloud's own class evidence: a small MLP that reads MobileSAM's image embedding cell by cell and says which
//! class each cell shows.
//!
//! Semantic-Segment-Anything labels SAM's masks with a big semantic model; the cloud here has only the edge's class
//! scores otherwise, and those come from the very model that fails in the dark. The encoder, trained on 11M varied
//! photos, still describes a dusk frame well, so a head trained on the daylight training set alone (the same labels
//! the edge model learnt from, never the drift's) gives the cloud evidence that does not share the edge's blind
//! spots. It costs one matrix product per frame on top of the embedding the cloud computes anyway.
//!
//! Files: `manifest.json` (kind `sam-semantic-head`) and a safetensors file with `feature_mean`, `feature_std`
//! (per embedding channel), `w1` [channels, hidden], `b1`, `w2` [hidden, classes], `b2`.

use std::path::Path;

use ndarray::{Array1, Array2, ArrayView2, Axis};
use safetensors::{Dtype, SafeTensors};
use sam_core::{ClassScores, ExpertExponents};

use crate::manifest::{LoadedManifest, Manifest, ManifestError};
use crate::sam::{EMBEDDING_CELL, Embedding};

pub const SEMANTIC_HEAD_KIND: &str = "sam-semantic-head";

#[derive(Debug, thiserror::Error)]
pub enum SemanticHeadError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("model {model} is not a SAM semantic head (kind `{kind}`)")]
    WrongKind { model: String, kind: String },
    #[error("cannot read the weights of {model}: {reason}")]
    Weights { model: String, reason: String },
}

/// The head's parameters, as the trainer writes them.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadWeights {
    pub feature_mean: Array1<f32>,
    pub feature_std: Array1<f32>,
    pub w1: Array2<f32>,
    pub b1: Array1<f32>,
    pub w2: Array2<f32>,
    pub b2: Array1<f32>,
}

impl HeadWeights {
    pub fn channels(&self) -> usize {
        self.w1.nrows()
    }

    pub fn classes(&self) -> usize {
        self.w2.ncols()
    }

    /// Class logits of every row of `features` ([cells, channels]).
    pub fn logits(&self, features: ArrayView2<f32>) -> Array2<f32> {
        let standardised = (&features - &self.feature_mean) / &self.feature_std;
        let hidden = (standardised.dot(&self.w1) + &self.b1).mapv(|v| v.max(0.0));
        hidden.dot(&self.w2) + &self.b2
    }

    fn from_safetensors(bytes: &[u8]) -> Result<Self, String> {
        let tensors = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
        let read = |name: &str| -> Result<(Vec<usize>, Vec<f32>), String> {
            let view = tensors
                .tensor(name)
                .map_err(|e| format!("tensor `{name}`: {e}"))?;
            if view.dtype() != Dtype::F32 {
                return Err(format!(
                    "tensor `{name}` is {:?}, expected F32",
                    view.dtype()
                ));
            }
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Ok((view.shape().to_vec(), values))
        };
        let vector = |name: &str, len: Option<usize>| -> Result<Array1<f32>, String> {
            let (shape, values) = read(name)?;
            match (shape.as_slice(), len) {
                ([n], Some(len)) if *n != len => {
                    Err(format!("tensor `{name}` has {n} values, expected {len}"))
                }
                ([_], _) => Ok(Array1::from(values)),
                _ => Err(format!(
                    "tensor `{name}` has shape {shape:?}, expected a vector"
                )),
            }
        };
        let matrix = |name: &str, rows: usize| -> Result<Array2<f32>, String> {
            let (shape, values) = read(name)?;
            match shape.as_slice() {
                [r, c] if *r == rows => Ok(Array2::from_shape_vec((*r, *c), values)
                    .expect("safetensors checked the data length")),
                _ => Err(format!(
                    "tensor `{name}` has shape {shape:?}, expected [{rows}, _]"
                )),
            }
        };
        let feature_mean = vector("feature_mean", None)?;
        let channels = feature_mean.len();
        let feature_std = vector("feature_std", Some(channels))?;
        if feature_std.iter().any(|s| *s <= 0.0) {
            return Err("feature_std must be positive".into());
        }
        let w1 = matrix("w1", channels)?;
        let b1 = vector("b1", Some(w1.ncols()))?;
        let w2 = matrix("w2", w1.ncols())?;
        let b2 = vector("b2", Some(w2.ncols()))?;
        Ok(Self {
            feature_mean,
            feature_std,
            w1,
            b1,
            w2,
            b2,
        })
    }
}

/// A loaded head: weights plus the manifest that names its classes.
pub struct SemanticHead {
    manifest: Manifest,
    weights: HeadWeights,
}

impl SemanticHead {
    /// Loads the head in `dir` after verifying its manifest's checksums.
    pub fn load(dir: &Path) -> Result<Self, SemanticHeadError> {
        let loaded = LoadedManifest::load_verified(dir)?;
        let model = loaded.manifest.name.clone();
        if loaded.manifest.kind != SEMANTIC_HEAD_KIND {
            return Err(SemanticHeadError::WrongKind {
                model,
                kind: loaded.manifest.kind.clone(),
            });
        }
        let path = loaded.file("weights")?;
        let weights_error = |reason: String| SemanticHeadError::Weights {
            model: model.clone(),
            reason,
        };
        let bytes =
            std::fs::read(&path).map_err(|e| weights_error(format!("{}: {e}", path.display())))?;
        let weights = HeadWeights::from_safetensors(&bytes).map_err(weights_error)?;
        if !loaded.manifest.classes.is_empty() && loaded.manifest.classes.len() != weights.classes()
        {
            return Err(weights_error(format!(
                "the manifest names {} classes, the weights give {}",
                loaded.manifest.classes.len(),
                weights.classes()
            )));
        }
        Ok(Self {
            manifest: loaded.manifest,
            weights,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn weights(&self) -> &HeadWeights {
        &self.weights
    }

    /// The exponents of the edge's scores and of this head's in the cloud's product of experts.
    pub fn evidence_exponents(&self) -> ExpertExponents {
        self.manifest
            .evidence_exponents
            .map_or(ExpertExponents::EQUAL, |e| e.as_expert_exponents())
    }

    /// Class probabilities at the embedded image's size, or an error when the embedding has another channel count.
    pub fn class_scores(&self, embedding: &Embedding) -> Result<ClassScores, SemanticHeadError> {
        let features = embedding.content_features();
        if features.ncols() != self.weights.channels() {
            return Err(SemanticHeadError::Weights {
                model: self.manifest.name.clone(),
                reason: format!(
                    "the head reads {} channels, the embedding has {}",
                    self.weights.channels(),
                    features.ncols()
                ),
            });
        }
        let logits = self.weights.logits(features.view());
        Ok(upsample_softmax(&logits, embedding))
    }
}

/// Bilinear upsampling of per-cell logits ([cells, classes], row-major cells) to the image, then a softmax per pixel.
/// Cell centres sit at the middle of their 16x16 block of encoder input pixels.
pub fn upsample_softmax(logits: &Array2<f32>, embedding: &Embedding) -> ClassScores {
    let (columns, rows) = embedding.content_cells();
    let (width, height) = embedding.image_size();
    let (scale_x, scale_y) = embedding.input_scale();
    let classes = logits.ncols();
    let taps = |pixels: u32, scale: f32, cells: usize| -> Vec<(usize, usize, f32)> {
        (0..pixels)
            .map(|p| {
                let cell = ((p as f32 + 0.5) * scale / EMBEDDING_CELL as f32 - 0.5)
                    .clamp(0.0, (cells - 1) as f32);
                let low = cell.floor() as usize;
                (low, (low + 1).min(cells - 1), cell - low as f32)
            })
            .collect()
    };
    let (x_taps, y_taps) = (taps(width, scale_x, columns), taps(height, scale_y, rows));
    let plane = (width * height) as usize;
    let mut probabilities = vec![0.0f32; classes * plane];
    let mut pixel = vec![0.0f32; classes];
    for (y, &(y0, y1, fy)) in y_taps.iter().enumerate() {
        for (x, &(x0, x1, fx)) in x_taps.iter().enumerate() {
            let corners = [
                (y0 * columns + x0, (1.0 - fy) * (1.0 - fx)),
                (y0 * columns + x1, (1.0 - fy) * fx),
                (y1 * columns + x0, fy * (1.0 - fx)),
                (y1 * columns + x1, fy * fx),
            ];
            for (c, value) in pixel.iter_mut().enumerate() {
                *value = corners.iter().map(|&(cell, w)| w * logits[[cell, c]]).sum();
            }
            let max = pixel.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut total = 0.0;
            for value in pixel.iter_mut() {
                *value = (*value - max).exp();
                total += *value;
            }
            let offset = y * width as usize + x;
            for (c, value) in pixel.iter().enumerate() {
                probabilities[c * plane + offset] = value / total;
            }
        }
    }
    ClassScores {
        probabilities,
        classes,
        width,
        height,
    }
}

/// Training targets on the embedding's cell grid: for every cell, the fraction of its labelled image pixels in each
/// class ([cells, classes]; labels >= `classes` are ignored, and a cell without labelled pixels is all zeros).
pub fn cell_targets(labels: &[u8], embedding: &Embedding, classes: usize) -> Array2<f32> {
    let (columns, rows) = embedding.content_cells();
    let (width, height) = embedding.image_size();
    let (scale_x, scale_y) = embedding.input_scale();
    let cell_of = |p: u32, scale: f32, cells: usize| {
        (((p as f32 + 0.5) * scale / EMBEDDING_CELL as f32) as usize).min(cells - 1)
    };
    let x_cells: Vec<usize> = (0..width).map(|x| cell_of(x, scale_x, columns)).collect();
    let mut counts = Array2::<f32>::zeros((rows * columns, classes));
    for (y, row) in labels
        .chunks_exact(width as usize)
        .enumerate()
        .take(height as usize)
    {
        let cell_row = cell_of(y as u32, scale_y, rows) * columns;
        for (&label, &cell_x) in row.iter().zip(&x_cells) {
            if usize::from(label) < classes {
                counts[[cell_row + cell_x, usize::from(label)]] += 1.0;
            }
        }
    }
    for mut cell in counts.axis_iter_mut(Axis(0)) {
        let total: f32 = cell.sum();
        if total > 0.0 {
            cell /= total;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use ndarray::{Array4, array};

    use super::*;

    /// A 480x360 frame as SAM sees it (1024x768 content in a 1024x1024 input), with `channels` embedding channels
    /// where channel c of every cell holds `value(c, row, column)`.
    fn embedding(channels: usize, value: impl Fn(usize, usize, usize) -> f32) -> Embedding {
        Embedding {
            embeddings: Array4::from_shape_fn((1, channels, 64, 64), |(_, c, y, x)| value(c, y, x)),
            width: 480,
            height: 360,
            content_width: 1024,
            content_height: 768,
            encoder_ms: 0.0,
        }
    }

    #[test]
    fn only_the_cells_covering_the_image_are_read() {
        let embedding = embedding(2, |c, y, x| (c * 10_000 + y * 100 + x) as f32);
        assert_eq!(embedding.content_cells(), (64, 48));
        let features = embedding.content_features();
        assert_eq!(features.dim(), (64 * 48, 2));
        // Row-major cells, one column per channel; row 47 is the last one with image content.
        assert_eq!(features.row(64 * 47 + 5).to_vec(), vec![4705.0, 14705.0]);
    }

    #[test]
    fn cell_targets_are_the_class_fractions_of_each_cell() {
        let embedding = embedding(1, |_, _, _| 0.0);
        // Left half class 0, right half class 1, the top-left 15x15 block unlabelled (11), pixel (3, 3) class 2.
        let mut labels: Vec<u8> = (0..360 * 480).map(|i| u8::from(i % 480 >= 240)).collect();
        for y in 0..15 {
            labels[y * 480..y * 480 + 15].fill(11);
        }
        labels[3 * 480 + 3] = 2;
        let targets = cell_targets(&labels, &embedding, 3);
        assert_eq!(targets.dim(), (64 * 48, 3));
        // A cell is 7.5 image pixels wide: cell 0 takes pixels 0..=6 of rows 0..=6, all unlabelled but one.
        assert_eq!(targets.row(0).to_vec(), vec![0.0, 0.0, 1.0]);
        // Cell 31 (pixels 232.5..240) is all class 0, cell 32 all class 1; cell 64*10+40 is deep in the right half.
        assert_eq!(targets.row(64 * 10 + 31).to_vec(), vec![1.0, 0.0, 0.0]);
        assert_eq!(targets.row(64 * 10 + 32).to_vec(), vec![0.0, 1.0, 0.0]);
        // Every other cell sums to 1 but the three unlabelled ones next to cell 0 (pixels 7..=14), which are empty.
        let sums: Vec<f32> = targets.outer_iter().map(|row| row.sum()).collect();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-6 || *s == 0.0));
        assert_eq!(sums.iter().filter(|s| **s == 0.0).count(), 3);
        assert_eq!((sums[1], sums[64], sums[65]), (0.0, 0.0, 0.0));
        // A cell with no labelled pixel is all zeros, so training gives it no weight.
        let unlabelled = vec![11u8; 360 * 480];
        assert_eq!(cell_targets(&unlabelled, &embedding, 3).sum(), 0.0);
    }

    #[test]
    fn the_head_labels_each_pixel_by_the_cells_around_it() {
        // One channel that is +1 on the left 32 cell columns and -1 on the right; a head that reads its sign.
        let embedding = embedding(1, |_, _, x| if x < 32 { 1.0 } else { -1.0 });
        let weights = HeadWeights {
            feature_mean: array![0.0],
            feature_std: array![1.0],
            w1: array![[1.0, -1.0]],
            b1: array![0.0, 0.0],
            w2: array![[4.0, -4.0], [-4.0, 4.0]],
            b2: array![0.0, 0.0],
        };
        let logits = weights.logits(embedding.content_features().view());
        assert_eq!(logits.row(0).to_vec(), vec![4.0, -4.0]);
        let scores = upsample_softmax(&logits, &embedding);
        assert_eq!((scores.width, scores.height, scores.classes), (480, 360, 2));
        let labels = scores.labels();
        // The boundary between cell columns 31 and 32 is at image x = 32 * 7.5 = 240.
        for y in [0, 180, 359] {
            assert_eq!(labels[y * 480 + 230], 0);
            assert_eq!(labels[y * 480 + 250], 1);
        }
        let plane = 480 * 360;
        assert!((scores.probabilities[5] + scores.probabilities[plane + 5] - 1.0).abs() < 1e-6);
        // Bilinear: the pixel straddling the boundary is undecided.
        assert!((scores.probabilities[239] - 0.5).abs() < 0.35);
    }

    #[test]
    fn weights_with_inconsistent_shapes_are_refused() {
        let mut buffer = Vec::new();
        let f32s = |values: &[f32]| {
            values
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>()
        };
        let tensors = [
            ("feature_mean", vec![2], f32s(&[0.0, 0.0])),
            ("feature_std", vec![2], f32s(&[1.0, 1.0])),
            ("w1", vec![3, 1], f32s(&[1.0, 1.0, 1.0])),
            ("b1", vec![1], f32s(&[0.0])),
            ("w2", vec![1, 2], f32s(&[1.0, 1.0])),
            ("b2", vec![2], f32s(&[0.0, 0.0])),
        ];
        let views: Vec<(&str, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(name, shape, data)| {
                (
                    *name,
                    safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), data).unwrap(),
                )
            })
            .collect();
        buffer.extend(safetensors::tensor::serialize(views, &None).unwrap());
        let error = HeadWeights::from_safetensors(&buffer).unwrap_err();
        assert!(
            error.contains("`w1` has shape [3, 1], expected [2, _]"),
            "{error}"
        );
        assert!(HeadWeights::from_safetensors(b"not safetensors").is_err());
    }
}

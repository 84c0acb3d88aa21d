//! The edge segmentation model: an ONNX graph plus its manifest, run through ONNX Runtime.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use image::RgbImage;
use ort::session::Session;
use ort::value::{DynValue, TensorRef};

use crate::image_ops::{labels_and_subsampled_softmax, resize_labels, to_input_tensor};
use crate::manifest::{LoadedManifest, Manifest, ManifestError};
use crate::runtime::{RuntimeError, SessionConfig, build_session};

#[derive(Debug, thiserror::Error)]
pub enum EdgeModelError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("model {model} is not an edge segmenter (kind `{kind}`)")]
    WrongKind { model: String, kind: String },
    #[error("model output has shape {shape:?}, expected [1, {classes}, {height}, {width}]")]
    OutputShape {
        shape: Vec<i64>,
        classes: usize,
        height: u32,
        width: u32,
    },
}

/// What the edge model says about one frame.
#[derive(Debug, Clone)]
pub struct EdgeOutput {
    /// Softmax class scores, CHW, at every [`SCORE_STEP`]-th row and column of the model's input resolution.
    pub probabilities: Vec<f32>,
    pub classes: usize,
    pub score_height: u32,
    pub score_width: u32,
    /// Argmax labels at the original image resolution.
    pub labels: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub preprocess_ms: f64,
    pub inference_ms: f64,
    pub postprocess_ms: f64,
}

/// The class scores keep every second row and column of the model's output. Their consumers average them (the miner's
/// frame score, within 2e-4 of the full map's on CamVid) or pool them further (the cloud gets 120x90), so the full
/// map would only make the softmax, the edge's costliest step after the model, four times slower.
pub const SCORE_STEP: usize = 2;

impl EdgeOutput {
    /// The class scores at their own resolution, in the form SAM guidance and fusion take.
    pub fn class_scores(&self) -> sam_core::ClassScores {
        sam_core::ClassScores {
            probabilities: self.probabilities.clone(),
            classes: self.classes,
            width: self.score_width,
            height: self.score_height,
        }
    }
}

/// Which of a model's sessions runs a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// The session with all the configured threads: for a frame that has the cores to itself.
    Wide,
    /// A one-thread session, for a frame that runs beside others: single-thread runs side by side use the cores
    /// better than runs taking turns with all of them (no waiting on each other between a run's operators), and the
    /// frames' decoding and post-processing fill the gaps.
    Narrow,
}

pub struct EdgeModel {
    manifest: Manifest,
    /// ONNX Runtime sessions need `&mut` to run, so each runs one frame at a time.
    wide: Mutex<Session>,
    narrow: Vec<Mutex<Session>>,
}

impl EdgeModel {
    /// Loads the model in `dir` after verifying the checksums in its manifest.
    pub fn load(dir: &Path, config: SessionConfig) -> Result<Self, EdgeModelError> {
        Self::load_with_lanes(dir, config, 0)
    }

    /// Loads the model with a [`Lane::Wide`] session of `config`'s threads and `narrow` [`Lane::Narrow`] sessions of
    /// one thread each.
    pub fn load_with_lanes(
        dir: &Path,
        config: SessionConfig,
        narrow: usize,
    ) -> Result<Self, EdgeModelError> {
        let loaded = LoadedManifest::load_verified(dir)?;
        if loaded.manifest.kind != "edge-segmenter" {
            return Err(EdgeModelError::WrongKind {
                model: loaded.manifest.name.clone(),
                kind: loaded.manifest.kind.clone(),
            });
        }
        let file = loaded.file("model")?;
        let one_thread = SessionConfig {
            intra_threads: 1,
            ..config
        };
        let narrow = (0..narrow)
            .map(|_| build_session(&file, one_thread).map(Mutex::new))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            manifest: loaded.manifest,
            wide: Mutex::new(build_session(&file, config)?),
            narrow,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn num_classes(&self) -> usize {
        self.manifest.classes.len()
    }

    /// Runs the model on an already preprocessed NCHW tensor. The logits stay in ONNX Runtime's memory: a copy of a
    /// 480x360 frame's 7.6 MB would cost more than the argmax over them.
    pub fn run(&self, input: &ndarray::Array4<f32>) -> Result<Logits, EdgeModelError> {
        self.run_in(input, Lane::Wide)
    }

    /// [`Self::run`] in the given lane. A narrow run takes a free one-thread session (with one per calling thread
    /// there always is one); without any, it runs wide.
    pub fn run_in(
        &self,
        input: &ndarray::Array4<f32>,
        lane: Lane,
    ) -> Result<Logits, EdgeModelError> {
        let mut session = match lane {
            Lane::Narrow if !self.narrow.is_empty() => self
                .narrow
                .iter()
                .find_map(|session| session.try_lock().ok())
                .unwrap_or_else(|| lock_session(&self.narrow[0])),
            _ => lock_session(&self.wide),
        };
        let tensor = TensorRef::from_array_view(input.view())
            .map_err(|e| RuntimeError::Run(e.to_string()))?;
        let outputs = session
            .run(ort::inputs![tensor])
            .map_err(|e| RuntimeError::Run(e.to_string()))?;
        let (_, value) = outputs
            .into_iter()
            .next()
            .ok_or_else(|| RuntimeError::Run("the model has no output".into()))?;
        let (_, _, height, width) = input.dim();
        let logits = Logits {
            value,
            classes: self.num_classes(),
            height: height as u32,
            width: width as u32,
        };
        logits.values()?;
        Ok(logits)
    }

    /// Raw logits for an already preprocessed NCHW tensor, copied out: for parity tests.
    pub fn logits(&self, input: &ndarray::Array4<f32>) -> Result<Vec<f32>, EdgeModelError> {
        Ok(self.run(input)?.values()?.to_vec())
    }

    /// Segments one RGB frame.
    pub fn segment(&self, image: &RgbImage) -> Result<EdgeOutput, EdgeModelError> {
        self.segment_in(image, Lane::Wide)
    }

    /// [`Self::segment`] with the model run in the given lane.
    pub fn segment_in(&self, image: &RgbImage, lane: Lane) -> Result<EdgeOutput, EdgeModelError> {
        let start = Instant::now();
        let spec = &self.manifest.input;
        let (input, _) = to_input_tensor(image, spec);
        let preprocessed = Instant::now();
        let logits = self.run_in(&input, lane)?;
        let inferred = Instant::now();
        let classes = self.num_classes();
        // Labels from the full-resolution logits (same argmax, and exact whatever the softmax's rounding).
        let scores = labels_and_subsampled_softmax(
            logits.values()?,
            classes,
            spec.height as usize,
            spec.width as usize,
            SCORE_STEP,
        );
        drop(logits);
        let (width, height) = image.dimensions();
        let labels = if (width, height) == (spec.width, spec.height) {
            scores.labels
        } else {
            resize_labels(&scores.labels, spec.width, spec.height, width, height)
        };
        let done = Instant::now();
        Ok(EdgeOutput {
            probabilities: scores.probabilities,
            classes,
            score_height: scores.score_height as u32,
            score_width: scores.score_width as u32,
            labels,
            width,
            height,
            preprocess_ms: ms(preprocessed - start),
            inference_ms: ms(inferred - preprocessed),
            postprocess_ms: ms(done - inferred),
        })
    }
}

fn lock_session(session: &Mutex<Session>) -> MutexGuard<'_, Session> {
    session
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The edge model's output for one frame, `[1, classes, height, width]`, in ONNX Runtime's memory.
pub struct Logits {
    value: DynValue,
    classes: usize,
    height: u32,
    width: u32,
}

impl Logits {
    /// The logits, CHW; checked once by [`EdgeModel::run`], so later calls cannot fail.
    pub fn values(&self) -> Result<&[f32], EdgeModelError> {
        let (shape, data) = self
            .value
            .try_extract_tensor::<f32>()
            .map_err(|e| RuntimeError::Run(e.to_string()))?;
        let expected = [
            1,
            self.classes as i64,
            i64::from(self.height),
            i64::from(self.width),
        ];
        if shape.as_ref() != expected {
            return Err(EdgeModelError::OutputShape {
                shape: shape.to_vec(),
                classes: self.classes,
                height: self.height,
                width: self.width,
            });
        }
        Ok(data)
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

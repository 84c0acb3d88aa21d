//! The edge model of a benchmark run: our trained edge model, or the off-the-shelf Cityscapes baseline
//! (EdgeTPU-DeepLab-slim, 19 Cityscapes classes) with its class scores folded into CamVid's 11 classes.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use image::RgbImage;
use image::imageops::{FilterType, resize};
use models::class_map::ClassMap;
use models::edge::EdgeOutput;
use models::image_ops::{argmax_channels, softmax_channels};
use models::manifest::ClassInfo;
use models::paths::{edge_model_dir, shared_dir, workspace_root};
use models::runtime::build_session;
use models::{EdgeModel, SessionConfig};
use ort::session::Session;
use ort::value::TensorRef;

pub const EDGE_SEGMENTER: &str = "edge-segmenter";
pub const CITYSCAPES_BASELINE: &str = "cityscapes-baseline";

pub enum Segmenter {
    Edge(Box<EdgeModel>),
    Cityscapes(CityscapesBaseline),
}

impl Segmenter {
    /// `edge-segmenter` (a model directory with a manifest; default the shipped model) or `cityscapes-baseline`
    /// (the ONNX file; default under `$SHARED_DIR/models/coral-deeplab-cityscapes`).
    pub fn load(name: &str, url: Option<&Path>, threads: usize) -> Result<Self> {
        let config = SessionConfig {
            intra_threads: threads,
            ..SessionConfig::default()
        };
        match name {
            EDGE_SEGMENTER => {
                let dir = url.map_or_else(edge_model_dir, Path::to_path_buf);
                Ok(Self::Edge(Box::new(
                    EdgeModel::load(&dir, config)
                        .with_context(|| format!("loading the edge model {}", dir.display()))?,
                )))
            }
            CITYSCAPES_BASELINE => {
                let path = url.map_or_else(CityscapesBaseline::default_path, Path::to_path_buf);
                Ok(Self::Cityscapes(CityscapesBaseline::load(&path, config)?))
            }
            other => bail!(
                "basemodel `{other}` is unknown (use `{EDGE_SEGMENTER}` or `{CITYSCAPES_BASELINE}`)"
            ),
        }
    }

    /// Name and version, for reports and cache keys.
    pub fn identity(&self) -> (String, String) {
        match self {
            Self::Edge(model) => (
                model.manifest().name.clone(),
                model.manifest().version.clone(),
            ),
            Self::Cityscapes(_) => (CITYSCAPES_BASELINE.into(), "coral-edgetpu-slim-int8".into()),
        }
    }

    pub fn classes(&self) -> Vec<ClassInfo> {
        match self {
            Self::Edge(model) => model.manifest().classes.clone(),
            Self::Cityscapes(baseline) => baseline.classes.clone(),
        }
    }

    pub fn segment(&self, image: &RgbImage) -> Result<EdgeOutput> {
        match self {
            Self::Edge(model) => Ok(model.segment(image)?),
            Self::Cityscapes(baseline) => baseline.segment(image),
        }
    }
}

/// Cityscapes-trained DeepLab run on our frames: softmax over its 19 classes, probability mass summed into the
/// CamVid class each maps to (`models/class-maps/cityscapes-to-camvid.json`), classes without a counterpart
/// dropped and the rest renormalised.
pub struct CityscapesBaseline {
    session: Mutex<Session>,
    map: ClassMap,
    classes: Vec<ClassInfo>,
}

const BASELINE_SIDE: u32 = 513;
const CITYSCAPES_CLASSES: usize = 19;
const IGNORE_LABEL: u8 = 11;

impl CityscapesBaseline {
    pub fn default_path() -> PathBuf {
        shared_dir().join(
            "models/coral-deeplab-cityscapes/deeplab_mobilenet_edgetpu_slim_cityscapes_quant_logits.onnx",
        )
    }

    pub fn load(path: &Path, config: SessionConfig) -> Result<Self> {
        if !path.is_file() {
            bail!(
                "the Cityscapes baseline {} is missing (it lives in ../shared, set SHARED_DIR)",
                path.display()
            );
        }
        let map = ClassMap::load(
            &workspace_root().join("models/class-maps/cityscapes-to-camvid.json"),
            IGNORE_LABEL,
        )?;
        // The CamVid class list (names and colours) comes with our edge model's manifest.
        let classes = models::manifest::LoadedManifest::load_verified(&edge_model_dir())
            .map(|m| m.manifest.classes)
            .context("reading CamVid class names from the edge model manifest")?;
        Ok(Self {
            session: Mutex::new(build_session(path, config)?),
            map,
            classes,
        })
    }

    fn segment(&self, image: &RgbImage) -> Result<EdgeOutput> {
        let start = Instant::now();
        let (width, height) = image.dimensions();
        let resized = resize(image, BASELINE_SIDE, BASELINE_SIDE, FilterType::Triangle);
        let side = BASELINE_SIDE as usize;
        let input = ndarray::Array4::from_shape_vec((1, side, side, 3), resized.into_raw())?;
        let preprocessed = Instant::now();
        let logits = {
            let mut session = self
                .session
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let outputs = session.run(ort::inputs![TensorRef::from_array_view(input.view())?])?;
            outputs
                .iter()
                .find_map(|(_, value)| {
                    let (shape, data) = value.try_extract_tensor::<f32>().ok()?;
                    (shape.as_ref() == [1, CITYSCAPES_CLASSES as i64, side as i64, side as i64])
                        .then(|| data.to_vec())
                })
                .context("the baseline has no [1, 19, 513, 513] score output")?
        };
        let inferred = Instant::now();
        let mut cityscapes = logits;
        softmax_channels(&mut cityscapes, CITYSCAPES_CLASSES);
        let classes = self.classes.len();
        let plane = (width * height) as usize;
        let mut probabilities = vec![0.0f32; classes * plane];
        for y in 0..height as usize {
            let sy = y * side / height as usize;
            for x in 0..width as usize {
                let sx = x * side / width as usize;
                let mut total = 0.0;
                for source in 0..CITYSCAPES_CLASSES {
                    let target = self.map.map(source as u8);
                    if (target as usize) < classes {
                        let p = cityscapes[source * side * side + sy * side + sx];
                        probabilities[target as usize * plane + y * width as usize + x] += p;
                        total += p;
                    }
                }
                if total > 0.0 {
                    for c in 0..classes {
                        probabilities[c * plane + y * width as usize + x] /= total;
                    }
                }
            }
        }
        let labels = argmax_channels(&probabilities, classes);
        let done = Instant::now();
        Ok(EdgeOutput {
            probabilities,
            classes,
            score_height: height,
            score_width: width,
            labels,
            width,
            height,
            preprocess_ms: (preprocessed - start).as_secs_f64() * 1e3,
            inference_ms: (inferred - preprocessed).as_secs_f64() * 1e3,
            postprocess_ms: (done - inferred).as_secs_f64() * 1e3,
        })
    }
}

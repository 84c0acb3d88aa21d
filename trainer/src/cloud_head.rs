//! Training the cloud's semantic head ([`models::semantic_head`]): MobileSAM embeddings of labelled daylight frames,
//! one sample per embedding cell with the cell's class fractions as a soft target, and a two-layer MLP fitted with
//! libtorch. Only the initial training set's labels are used, so the cloud's labels for the drift stay label-free.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use image::RgbImage;
use models::EdgeModel;
use models::dataset::Sample;
use models::manifest::{
    ClassInfo, EvidenceExponents, FileEntry, LoadedManifest, Manifest, Provenance,
};
use models::metrics::{ConfusionMatrix, SegmentationScores};
use models::sam::SamModel;
use models::semantic_head::{HeadWeights, SEMANTIC_HEAD_KIND, SemanticHead, cell_targets};
use ndarray::{Array, Array1, Array2, Dimension};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sam_core::{ExpertEvidence, ExpertExponents, PRODUCT_FLOOR};
use tch::{Device, Kind, Tensor, nn, nn::Module, nn::OptimizerConfig};

pub const WEIGHTS_FILE: &str = "semantic_head.safetensors";

/// Embedding cells of labelled frames: features [cells, channels] and soft targets [cells, classes].
pub struct CellDataset {
    pub features: Vec<f32>,
    pub targets: Vec<f32>,
    pub channels: usize,
    pub classes: usize,
}

impl CellDataset {
    pub fn cells(&self) -> usize {
        self.targets.len() / self.classes
    }
}

/// Low-light copies of the training frames: each copy is the frame at `gain * (v / 255)^gamma * 255`, with gain and
/// gamma drawn uniformly from the ranges. Dusk is what the robot meets that daylight labels never show; darkening
/// the daylight frames is the label-free way to show it (no frame of the drift is used).
#[derive(Debug, Clone, PartialEq)]
pub struct LowLight {
    pub copies: usize,
    pub gain: (f32, f32),
    pub gamma: (f32, f32),
    pub seed: u64,
}

impl Default for LowLight {
    /// Day-train's mean brightness (146) falls to about 40-90, around CamVid's dusk drive (55).
    fn default() -> Self {
        Self {
            copies: 1,
            gain: (0.3, 0.7),
            gamma: (1.0, 1.6),
            seed: 0,
        }
    }
}

/// `image` as if lit by `gain` and seen through `gamma`.
pub fn darken(image: &RgbImage, gain: f32, gamma: f32) -> RgbImage {
    let table: Vec<u8> = (0..=255u8)
        .map(|v| {
            (255.0 * gain * (f32::from(v) / 255.0).powf(gamma))
                .round()
                .clamp(0.0, 255.0) as u8
        })
        .collect();
    let mut out = image.clone();
    for value in out.iter_mut() {
        *value = table[usize::from(*value)];
    }
    out
}

/// Embeds every frame of `samples`, and its low-light copies, and collects the labelled cells (cells without a
/// labelled pixel are skipped).
pub fn embed_cells(
    sam: &SamModel,
    samples: &[Sample],
    classes: usize,
    low_light: &LowLight,
    mut on_frame: impl FnMut(usize),
) -> Result<CellDataset> {
    let mut rng = StdRng::seed_from_u64(low_light.seed);
    let mut data = CellDataset {
        features: Vec::new(),
        targets: Vec::new(),
        channels: 0,
        classes,
    };
    for (i, sample) in samples.iter().enumerate() {
        let (image, label) = sample.load_labelled()?;
        let mut views = vec![image];
        for _ in 0..low_light.copies {
            let gain = rng.random_range(low_light.gain.0..=low_light.gain.1);
            let gamma = rng.random_range(low_light.gamma.0..=low_light.gamma.1);
            views.push(darken(&views[0], gain, gamma));
        }
        for view in &views {
            let embedding = sam.embed(view)?;
            let features = embedding.content_features();
            let targets = cell_targets(label.as_raw(), &embedding, classes);
            data.channels = features.ncols();
            for (feature, target) in features.outer_iter().zip(targets.outer_iter()) {
                if target.sum() > 0.0 {
                    data.features.extend(feature.iter());
                    data.targets.extend(target.iter());
                }
            }
        }
        on_frame(i + 1);
    }
    if data.cells() == 0 {
        bail!("no labelled cells in {} frames", samples.len());
    }
    Ok(data)
}

#[derive(Debug, Clone, PartialEq)]
pub struct HeadTrainConfig {
    pub hidden: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub seed: i64,
}

impl Default for HeadTrainConfig {
    fn default() -> Self {
        Self {
            hidden: 256,
            epochs: 8,
            batch_size: 4096,
            learning_rate: 1e-3,
            weight_decay: 1e-4,
            seed: 0,
        }
    }
}

/// 1/sqrt(frequency) per class, scaled so the average cell weighs 1 (the edge model's loss weighting).
fn class_weights(targets: &Tensor) -> Tensor {
    let frequency = targets.sum_dim_intlist(0, false, Kind::Float);
    let frequency = &frequency / frequency.sum(Kind::Float);
    let weights = frequency.clamp_min(1e-6).rsqrt();
    let mean = (&weights * &frequency).sum(Kind::Float);
    weights / mean
}

/// Fits the head with AdamW and a cosine learning-rate schedule; `on_epoch` gets each epoch's mean loss.
pub fn train_head(
    data: &CellDataset,
    config: &HeadTrainConfig,
    mut on_epoch: impl FnMut(usize, f64),
) -> Result<HeadWeights> {
    tch::manual_seed(config.seed);
    let cells = data.cells() as i64;
    let (channels, classes) = (data.channels as i64, data.classes as i64);
    let features = Tensor::from_slice(&data.features).view([cells, channels]);
    let targets = Tensor::from_slice(&data.targets).view([cells, classes]);
    let mean = features.mean_dim(0, false, Kind::Float);
    let std = features.std_dim(0, false, false).clamp_min(1e-6);
    let features = (&features - &mean) / &std;
    let cell_weights = targets.matmul(&class_weights(&targets));

    let vs = nn::VarStore::new(Device::Cpu);
    let hidden = config.hidden as i64;
    let first = nn::linear(vs.root() / "first", channels, hidden, Default::default());
    let second = nn::linear(vs.root() / "second", hidden, classes, Default::default());
    let mut optimizer = nn::AdamW {
        wd: config.weight_decay,
        ..Default::default()
    }
    .build(&vs, config.learning_rate)?;
    let batch = config.batch_size.max(1) as i64;
    for epoch in 0..config.epochs {
        let cosine =
            0.5 * (1.0 + (std::f64::consts::PI * epoch as f64 / config.epochs as f64).cos());
        optimizer.set_lr(config.learning_rate * cosine);
        let order = Tensor::randperm(cells, (Kind::Int64, Device::Cpu));
        let (mut loss_sum, mut batches) = (0.0, 0);
        for start in (0..cells).step_by(batch as usize) {
            let index = order.narrow(0, start, batch.min(cells - start));
            let x = features.index_select(0, &index);
            let y = targets.index_select(0, &index);
            let w = cell_weights.index_select(0, &index);
            let log_p = second
                .forward(&first.forward(&x).relu())
                .log_softmax(-1, Kind::Float);
            let per_cell = -(y * log_p).sum_dim_intlist(-1, false, Kind::Float);
            let loss = (per_cell * &w).sum(Kind::Float) / w.sum(Kind::Float).clamp_min(1e-6);
            optimizer.backward_step(&loss);
            loss_sum += loss.double_value(&[]);
            batches += 1;
        }
        on_epoch(epoch + 1, loss_sum / f64::from(batches.max(1)));
    }
    // nn::Linear keeps [out, in]; the head reads [in, out].
    let vector = |t: &Tensor| -> Result<Array1<f32>> {
        Ok(Array1::from(Vec::<f32>::try_from(t.flatten(0, -1))?))
    };
    let matrix = |t: &Tensor| -> Result<Array2<f32>> {
        let t = t.tr().contiguous();
        let (rows, columns) = (t.size()[0] as usize, t.size()[1] as usize);
        Ok(Array2::from_shape_vec(
            (rows, columns),
            Vec::<f32>::try_from(t.flatten(0, -1))?,
        )?)
    };
    Ok(HeadWeights {
        feature_mean: vector(&mean)?,
        feature_std: vector(&std)?,
        w1: matrix(&first.ws)?,
        b1: vector(first.bs.as_ref().context("the first layer has a bias")?)?,
        w2: matrix(&second.ws)?,
        b2: vector(second.bs.as_ref().context("the second layer has a bias")?)?,
    })
}

/// What goes into the manifest besides the weights.
pub struct HeadInfo<'a> {
    pub name: String,
    pub version: String,
    pub sam: &'a Manifest,
    pub classes: Vec<ClassInfo>,
    pub produced_by: String,
    pub training_data: String,
}

fn to_tensor<D: Dimension>(array: &Array<f32, D>) -> Tensor {
    let shape: Vec<i64> = array.shape().iter().map(|&d| d as i64).collect();
    let values = array.as_standard_layout();
    Tensor::from_slice(values.as_slice().expect("standard layout")).view(shape.as_slice())
}

/// Writes the weights and a checksummed manifest into `dir` (created if needed).
pub fn write_head(weights: &HeadWeights, dir: &Path, info: HeadInfo<'_>) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let named = [
        ("feature_mean", to_tensor(&weights.feature_mean)),
        ("feature_std", to_tensor(&weights.feature_std)),
        ("w1", to_tensor(&weights.w1)),
        ("b1", to_tensor(&weights.b1)),
        ("w2", to_tensor(&weights.w2)),
        ("b2", to_tensor(&weights.b2)),
    ];
    Tensor::write_safetensors(&named, dir.join(WEIGHTS_FILE))?;
    let sam = info.sam;
    let mut manifest = Manifest {
        name: info.name,
        version: info.version,
        kind: SEMANTIC_HEAD_KIND.into(),
        files: BTreeMap::from([(
            "weights".to_string(),
            FileEntry {
                path: WEIGHTS_FILE.into(),
                sha256: String::new(),
                bytes: 0,
            },
        )]),
        provenance: Provenance {
            source_package: sam.provenance.source_package.clone(),
            source_version: sam.provenance.source_version.clone(),
            checkpoint: format!("embeddings of {} {}", sam.name, sam.version),
            checkpoint_sha256: sam
                .files
                .get("encoder")
                .map(|e| e.sha256.clone())
                .unwrap_or_default(),
            produced_by: info.produced_by,
            parent_version: None,
            training_data: Some(info.training_data),
        },
        classes: info.classes,
        input: sam.input.clone(),
        outputs: Vec::new(),
        metrics: BTreeMap::new(),
        // Fitted afterwards against a given edge model: `trainer fit-evidence-exponents`.
        evidence_exponents: None,
    };
    manifest.write_with_checksums(dir)?;
    Ok(())
}

/// Scores the head's own labels (argmax of its class scores) on labelled frames.
pub fn evaluate_head(
    head: &SemanticHead,
    sam: &SamModel,
    samples: &[Sample],
    mut on_frame: impl FnMut(usize),
) -> Result<SegmentationScores> {
    let classes = head.weights().classes();
    let mut confusion = ConfusionMatrix::new(classes);
    for (i, sample) in samples.iter().enumerate() {
        let (image, label) = sample.load_labelled()?;
        let scores = head.class_scores(&sam.embed(&image)?)?;
        confusion.add(label.as_raw(), &scores.labels());
        on_frame(i + 1);
    }
    Ok(confusion.scores())
}

/// Log-probabilities of the edge's and the head's class scores at labelled pixels (every `pixel_step`-th pixel
/// across and down), as the cloud computes both: the head on MobileSAM's embedding, the edge's scores resized
/// to the frame. Probabilities are floored as in the cloud's product, so a zero is a finite log.
pub struct EvidenceSamples {
    pub edge: Vec<f32>,
    pub head: Vec<f32>,
    pub labels: Vec<u8>,
    pub classes: usize,
}

impl EvidenceSamples {
    pub fn evidence(&self) -> ExpertEvidence<'_> {
        ExpertEvidence {
            first_log_probabilities: &self.edge,
            second_log_probabilities: &self.head,
            labels: &self.labels,
            classes: self.classes,
        }
    }
}

/// Exponents tried for each expert by `trainer fit-evidence-exponents`: 0.1 to 2.0.
pub const EXPONENT_GRID: [f32; 20] = [
    0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9,
    2.0,
];

pub fn collect_evidence(
    head: &SemanticHead,
    sam: &SamModel,
    edge: &EdgeModel,
    samples: &[Sample],
    pixel_step: usize,
    mut on_frame: impl FnMut(usize),
) -> Result<EvidenceSamples> {
    let classes = head.weights().classes();
    if edge.num_classes() != classes {
        bail!(
            "the edge model has {} classes, the head {classes}",
            edge.num_classes()
        );
    }
    let mut collected = EvidenceSamples {
        edge: Vec::new(),
        head: Vec::new(),
        labels: Vec::new(),
        classes,
    };
    for (i, sample) in samples.iter().enumerate() {
        let (image, truth) = sample.load_labelled()?;
        let (width, height) = image.dimensions();
        let head_scores = head.class_scores(&sam.embed(&image)?)?;
        let edge_scores = edge
            .segment(&image)?
            .class_scores()
            .resized_nearest(width, height);
        let plane = (width * height) as usize;
        let step = pixel_step.max(1);
        for y in (0..height as usize).step_by(step) {
            for x in (0..width as usize).step_by(step) {
                let pixel = y * width as usize + x;
                let label = truth.as_raw()[pixel];
                if usize::from(label) >= classes {
                    continue;
                }
                collected.labels.push(label);
                for c in 0..classes {
                    collected.edge.push(
                        edge_scores.probabilities[c * plane + pixel]
                            .max(PRODUCT_FLOOR)
                            .ln(),
                    );
                    collected.head.push(
                        head_scores.probabilities[c * plane + pixel]
                            .max(PRODUCT_FLOOR)
                            .ln(),
                    );
                }
            }
        }
        on_frame(i + 1);
    }
    if collected.labels.is_empty() {
        bail!("no labelled pixel in the {} frames", samples.len());
    }
    Ok(collected)
}

/// Writes fitted exponents into the head's manifest as a new version (the old one becomes its parent; the
/// weights are unchanged).
pub fn record_evidence_exponents(
    head_dir: &Path,
    exponents: ExpertExponents,
    version: &str,
    note: &str,
) -> Result<()> {
    let mut loaded = LoadedManifest::load_verified(head_dir)?;
    let manifest = &mut loaded.manifest;
    manifest.evidence_exponents = Some(EvidenceExponents {
        edge: exponents.first,
        head: exponents.second,
    });
    manifest.provenance.parent_version = Some(manifest.version.clone());
    manifest.version = version.to_string();
    manifest.provenance.produced_by = format!("{}; {note}", manifest.provenance.produced_by);
    manifest.write_with_checksums(head_dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn darkening_scales_then_bends_every_channel_value() {
        let image = RgbImage::from_raw(2, 1, vec![0, 51, 255, 200, 128, 64]).unwrap();
        assert_eq!(
            darken(&image, 0.5, 1.0).into_raw(),
            vec![0, 26, 128, 100, 64, 32]
        );
        // gamma > 1 darkens the mid-tones more than the highlights: 51/255 = 0.2 -> 0.04 -> 5.1 at gain 0.5.
        assert_eq!(
            darken(&image, 0.5, 2.0).into_raw(),
            vec![0, 5, 128, 78, 32, 8]
        );
        assert_eq!(darken(&image, 1.0, 1.0), image);
    }
}

//! The training loop: AdamW, warm-up then polynomial learning-rate decay, class-weighted cross-entropy with the
//! ignore label (optionally plus a Lovasz-softmax term), checkpoints every epoch (weights, optimizer moments and the
//! sampling generator's position, so a resumed run ends with the weights an uninterrupted one would have), evaluation
//! on a validation split.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use models::manifest::{InputSpec, LoadedManifest, Manifest};
use models::metrics::{ConfusionMatrix, SegmentationScores};
use rand::SeedableRng;
use rand_chacha::ChaCha12Rng;
use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

use crate::IGNORE_LABEL;
use crate::data::{Augmentation, Frame, class_frequencies, epoch_batches, expose, normalise};
use crate::optimizer::AdamW;

#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub warmup_steps: usize,
    pub augmentation: Augmentation,
    /// Weigh the loss by 1/sqrt(class frequency) (normalised), so thin classes (poles, signs) are not drowned out.
    pub class_weighting: bool,
    /// Weight of the Lovasz-softmax term added to the cross-entropy (0: cross-entropy alone). The term is a convex
    /// surrogate of each class's IoU, so it optimises what mIoU measures, thin and rare classes included.
    pub lovasz_weight: f64,
    pub seed: u64,
    /// Parameters whose TorchScript name starts with one of these stay frozen (their BatchNorm statistics still
    /// adapt). Freezing the high-resolution stem saves most of the backward pass on a CPU.
    pub freeze_prefixes: Vec<String>,
    /// Evaluate on the validation frames every this many epochs (and after the last).
    pub validate_every: usize,
    /// Where each epoch's checkpoint (weights, optimizer state) and `progress.json` go; training resumes from them
    /// when present.
    pub checkpoint_dir: PathBuf,
}

/// Resumption state written beside each checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    pub epochs_done: usize,
    pub losses: Vec<f64>,
    pub validation_miou: Vec<f64>,
    /// Where the augmentation and shuffling generator (seeded with the configured seed) stands, in 32-bit words.
    pub sampler_position: u128,
}

const PROGRESS_FILE: &str = "progress.json";

/// The checkpoint files of the state after `epochs_done` epochs. Numbered, so `progress.json`, written last, always
/// names a complete pair even when a crash interrupts the writing of the next one.
fn checkpoint_files(dir: &Path, epochs_done: usize) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("weights-{epochs_done}.pt")),
        dir.join(format!("optimizer-{epochs_done}.pt")),
    )
}

pub struct Trainer {
    vs: nn::VarStore,
    module: tch::TrainableCModule,
    pub manifest: Manifest,
    /// The directory of the model this trainer started from (its ONNX graph is the write-back template).
    pub source_dir: PathBuf,
}

impl Trainer {
    /// Loads the trainable TorchScript module of the model in `dir` (checksums verified).
    pub fn load(dir: &Path) -> Result<Self> {
        let loaded = LoadedManifest::load_verified(dir)?;
        let path = loaded.file("trainable")?;
        Self::load_module(&path, loaded.manifest, dir)
    }

    fn load_module(path: &Path, manifest: Manifest, source_dir: &Path) -> Result<Self> {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut module = tch::TrainableCModule::load(path, vs.root())
            .with_context(|| format!("loading TorchScript module {}", path.display()))?;
        make_weights_trainable(&vs);
        module.set_eval();
        Ok(Self {
            vs,
            module,
            manifest,
            source_dir: source_dir.to_path_buf(),
        })
    }

    pub fn input_spec(&self) -> &InputSpec {
        &self.manifest.input
    }

    pub fn num_classes(&self) -> usize {
        self.manifest.classes.len()
    }

    /// Logits `[N, C, H, W]` for a normalised batch, in eval mode and without gradients.
    pub fn logits(&self, input: &Tensor) -> Tensor {
        tch::no_grad(|| self.module.forward_t(input, false))
    }

    /// Predicted labels for one frame at its own resolution, resized as the manifest's input spec says.
    pub fn predict(&self, frame: &Frame) -> Tensor {
        let (_, h, w) = frame.image.size3().expect("image is [3, H, W]");
        let spec = self.input_spec();
        let image = expose(&frame.image.to_kind(Kind::Float), spec)
            .unsqueeze(0)
            .upsample_bilinear2d([spec.height as i64, spec.width as i64], false, None, None);
        let logits = self.logits(&normalise(&image, spec));
        let labels = logits.argmax(1, false).to_kind(Kind::Float).unsqueeze(1);
        labels
            .upsample_nearest2d([h, w], None, None)
            .view([h, w])
            .to_kind(Kind::Uint8)
    }

    /// Whole-split confusion matrix of the current weights.
    pub fn evaluate(&self, frames: &[Frame]) -> SegmentationScores {
        let mut matrix = ConfusionMatrix::new(self.num_classes());
        for frame in frames {
            let predicted =
                Vec::<u8>::try_from(self.predict(frame).view([-1])).expect("uint8 labels");
            let truth = Vec::<u8>::try_from(frame.label.view([-1])).expect("uint8 labels");
            matrix.add(&truth, &predicted);
        }
        matrix.scores()
    }

    /// Fine-tunes on `frames`; after each epoch evaluates on `validation` (when given), checkpoints, and calls
    /// `on_epoch`. Resumes from `config.checkpoint_dir` when a checkpoint is there.
    pub fn fit(
        &mut self,
        frames: &[Frame],
        validation: &[Frame],
        config: &TrainConfig,
        mut on_epoch: impl FnMut(usize, f64, Option<&SegmentationScores>),
    ) -> Result<Progress> {
        if frames.len() < config.batch_size {
            bail!(
                "{} training frames are fewer than one batch of {}",
                frames.len(),
                config.batch_size
            );
        }
        std::fs::create_dir_all(&config.checkpoint_dir)?;
        let mut progress = self.resume_weights(config)?;
        let class_weights = config
            .class_weighting
            .then(|| loss_weights(&class_frequencies(frames, self.num_classes())));
        let steps_per_epoch = frames.len() / config.batch_size;
        let total_steps = (steps_per_epoch * config.epochs).max(1);
        self.freeze(&config.freeze_prefixes);
        let mut optimizer = AdamW::new(&self.vs, config.learning_rate, config.weight_decay);
        if progress.epochs_done > 0 {
            optimizer.load(&checkpoint_files(&config.checkpoint_dir, progress.epochs_done).1)?;
        }
        let mut rng = ChaCha12Rng::seed_from_u64(config.seed);
        rng.set_word_pos(progress.sampler_position);
        let bar = crate::progress::bar((total_steps) as u64, "training");
        bar.set_position((progress.epochs_done * steps_per_epoch) as u64);
        for epoch in progress.epochs_done..config.epochs {
            self.module.set_train();
            let mut loss_sum = 0.0;
            let mut batches = 0usize;
            for (step_in_epoch, (images, labels)) in epoch_batches(
                frames,
                config.batch_size,
                &config.augmentation,
                self.input_spec(),
                i64::from(IGNORE_LABEL),
                &mut rng,
            )
            .enumerate()
            {
                let step = epoch * steps_per_epoch + step_in_epoch;
                optimizer.set_learning_rate(learning_rate(config, step, total_steps));
                let logits = self.module.forward_t(&images, true);
                let mut loss = logits.cross_entropy_loss::<&Tensor>(
                    &labels,
                    class_weights.as_ref(),
                    tch::Reduction::Mean,
                    i64::from(IGNORE_LABEL),
                    0.0,
                );
                if config.lovasz_weight > 0.0 {
                    loss += lovasz_softmax(&logits, &labels) * config.lovasz_weight;
                }
                optimizer.backward_step(&loss);
                loss_sum += loss.double_value(&[]);
                batches += 1;
                bar.inc(1);
                bar.set_message(format!("loss {:.3}", loss_sum / batches as f64));
            }
            self.module.set_eval();
            let mean_loss = loss_sum / batches.max(1) as f64;
            let validate =
                (epoch + 1) % config.validate_every.max(1) == 0 || epoch + 1 == config.epochs;
            let scores = (validate && !validation.is_empty()).then(|| self.evaluate(validation));
            progress.epochs_done = epoch + 1;
            progress.losses.push(mean_loss);
            if let Some(s) = &scores {
                progress.validation_miou.push(s.miou);
            }
            progress.sampler_position = rng.get_word_pos();
            self.checkpoint(config, &optimizer, &progress)?;
            bar.suspend(|| on_epoch(epoch + 1, mean_loss, scores.as_ref()));
        }
        bar.finish_and_clear();
        Ok(progress)
    }

    fn freeze(&mut self, prefixes: &[String]) {
        let flat: Vec<String> = prefixes.iter().map(|p| p.replace('.', "_")).collect();
        for (name, tensor) in self.vs.variables() {
            if flat.iter().any(|p| name.starts_with(p.as_str())) {
                let _ = tensor.set_requires_grad(false);
            }
        }
    }

    /// Loads the weights of the last complete checkpoint in `config.checkpoint_dir`, if any, and says how far that
    /// run had come.
    fn resume_weights(&mut self, config: &TrainConfig) -> Result<Progress> {
        let progress_path = config.checkpoint_dir.join(PROGRESS_FILE);
        if !progress_path.is_file() {
            return Ok(Progress::default());
        }
        let progress: Progress = serde_json::from_str(&std::fs::read_to_string(&progress_path)?)
            .with_context(|| format!("reading {}", progress_path.display()))?;
        let (weights, _) = checkpoint_files(&config.checkpoint_dir, progress.epochs_done);
        let manifest = self.manifest.clone();
        let source = self.source_dir.clone();
        *self = Self::load_module(&weights, manifest, &source)?;
        tracing::info!(
            epochs_done = progress.epochs_done,
            "resuming from {}",
            weights.display()
        );
        Ok(progress)
    }

    fn checkpoint(
        &self,
        config: &TrainConfig,
        optimizer: &AdamW,
        progress: &Progress,
    ) -> Result<()> {
        let dir = &config.checkpoint_dir;
        let (weights, optimizer_state) = checkpoint_files(dir, progress.epochs_done);
        self.module.save(&weights)?;
        optimizer.save(&optimizer_state)?;
        // Write then rename: a crash leaves the previous progress file, which names the previous complete pair.
        let tmp = dir.join("progress.json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(progress)?)?;
        std::fs::rename(&tmp, dir.join(PROGRESS_FILE))?;
        if let Some(previous) = progress.epochs_done.checked_sub(1) {
            let (weights, optimizer_state) = checkpoint_files(dir, previous);
            let _ = std::fs::remove_file(weights);
            let _ = std::fs::remove_file(optimizer_state);
        }
        Ok(())
    }

    pub fn save_trainable(&self, path: &Path) -> Result<()> {
        self.module.save(path)?;
        Ok(())
    }

    /// Every parameter (running statistics included) as flat float vectors, keyed by the VarStore's name, which is
    /// the TorchScript name with `.` replaced by `_`.
    pub fn flat_parameters(&self) -> HashMap<String, Vec<f32>> {
        self.vs
            .variables()
            .into_iter()
            .map(|(name, tensor)| {
                let values = Vec::<f32>::try_from(tensor.detach().to_kind(Kind::Float).view([-1]))
                    .expect("float parameters");
                (name, values)
            })
            .collect()
    }

    /// Replaces every parameter (running statistics included) by its mean over this trainer and `others`, given as
    /// [`Trainer::flat_parameters`] of models of the same architecture: a uniform weight soup. A member that does
    /// not fit is refused before any weight changes.
    pub fn average_with(&mut self, others: &[HashMap<String, Vec<f32>>]) -> Result<()> {
        let variables = self.vs.variables();
        for other in others {
            for (name, tensor) in &variables {
                let values = other
                    .get(name)
                    .with_context(|| format!("soup member lacks parameter `{name}`"))?;
                if values.len() != tensor.numel() {
                    bail!(
                        "soup member's `{name}` has {} values, not {}",
                        values.len(),
                        tensor.numel()
                    );
                }
            }
        }
        let count = (others.len() + 1) as f64;
        tch::no_grad(|| {
            for (name, mut tensor) in variables {
                let mut sum = tensor.detach().to_kind(Kind::Float).copy();
                for other in others {
                    sum += Tensor::from_slice(&other[&name]).view_as(&sum);
                }
                tensor.copy_(&(sum / count).to_kind(tensor.kind()));
            }
        });
        Ok(())
    }
}

/// A module saved after training with frozen layers loads those layers as untrainable, so `freeze_prefixes` could
/// never unfreeze them: every learnt weight is made trainable here and the prefixes alone decide. BatchNorm running
/// statistics are parameters of this module but are never learnt by gradient.
fn make_weights_trainable(vs: &nn::VarStore) {
    let frozen: Vec<(String, Tensor)> = {
        let mut variables = vs.variables_.lock().expect("var store lock");
        let names: Vec<String> = variables
            .named_variables
            .iter()
            .filter(|(name, tensor)| !tensor.requires_grad() && !name.contains("running_"))
            .map(|(name, _)| name.clone())
            .collect();
        names
            .into_iter()
            .filter_map(|name| {
                let tensor = variables.named_variables.remove(&name)?;
                Some((name, tensor))
            })
            .collect()
    };
    // Re-adding under the same name registers the tensor as trainable (and turns its gradient on).
    let root = vs.root();
    for (name, tensor) in frozen {
        let _ = root.add(&name, tensor, true);
    }
}

fn learning_rate(config: &TrainConfig, step: usize, total_steps: usize) -> f64 {
    if step < config.warmup_steps {
        return config.learning_rate * (step + 1) as f64 / config.warmup_steps as f64;
    }
    let progress = step as f64 / total_steps as f64;
    config.learning_rate * (1.0 - progress).max(0.0).powf(0.9)
}

/// The Lovasz-softmax loss (Berman et al., CVPR 2018) of NCHW `logits` against NHW `labels` over the whole batch:
/// per class present in the labels, the Lovasz extension of the Jaccard loss applied to the sorted pixel errors
/// |[label == c] - p_c|, averaged over those classes. Pixels labelled [`IGNORE_LABEL`] do not count.
fn lovasz_softmax(logits: &Tensor, labels: &Tensor) -> Tensor {
    let classes = logits.size()[1];
    let labels = labels.reshape([-1]);
    let kept = labels.ne(i64::from(IGNORE_LABEL)).nonzero().squeeze_dim(1);
    if kept.numel() == 0 {
        // A crop with no labelled pixel: nothing to score (the mean over no class would be NaN).
        return Tensor::zeros([], (Kind::Float, logits.device()));
    }
    let probabilities = logits
        .softmax(1, Kind::Float)
        .permute([0, 2, 3, 1])
        .reshape([-1, classes])
        .index_select(0, &kept);
    let foreground = labels
        .index_select(0, &kept)
        .one_hot(classes)
        .to_kind(Kind::Float);
    let (sorted_errors, order) = (&foreground - &probabilities).abs().sort(0, true);
    let sorted_foreground = foreground.gather(0, &order, false);
    let totals = sorted_foreground.sum_dim_intlist(0, false, Kind::Float);
    let intersection = &totals - sorted_foreground.cumsum(0, Kind::Float);
    let union = &totals + (sorted_foreground.neg() + 1.0).cumsum(0, Kind::Float);
    let jaccard = (intersection / union).neg() + 1.0;
    // The extension's weights are the Jaccard loss's increments along the sorted errors.
    let increments = jaccard.diff(
        1,
        0,
        Some(jaccard.zeros_like().narrow(0, 0, 1)),
        None::<Tensor>,
    );
    let per_class = (sorted_errors * increments).sum_dim_intlist(0, false, Kind::Float);
    per_class.masked_select(&totals.gt(0.0)).mean(Kind::Float)
}

/// 1/sqrt(frequency), normalised to mean 1 over the classes present.
fn loss_weights(frequencies: &[f64]) -> Tensor {
    let raw: Vec<f64> = frequencies
        .iter()
        .map(|f| if *f > 0.0 { 1.0 / f.sqrt() } else { 0.0 })
        .collect();
    let present = raw.iter().filter(|w| **w > 0.0).count().max(1) as f64;
    let mean = raw.iter().sum::<f64>() / present;
    let weights: Vec<f32> = raw.iter().map(|w| (w / mean) as f32).collect();
    Tensor::from_slice(&weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_rate_warms_up_then_decays_to_zero() {
        let config = TrainConfig {
            epochs: 1,
            batch_size: 1,
            learning_rate: 1.0,
            weight_decay: 0.0,
            warmup_steps: 10,
            augmentation: Augmentation {
                crop_height: 1,
                crop_width: 1,
                min_scale: 1.0,
                max_scale: 1.0,
                flip: false,
                jitter: 0.0,
            },
            class_weighting: false,
            lovasz_weight: 0.0,
            seed: 0,
            freeze_prefixes: Vec::new(),
            validate_every: 1,
            checkpoint_dir: PathBuf::new(),
        };
        assert!((learning_rate(&config, 0, 100) - 0.1).abs() < 1e-12);
        assert!((learning_rate(&config, 9, 100) - 1.0).abs() < 1e-12);
        assert!(learning_rate(&config, 50, 100) < learning_rate(&config, 20, 100));
        assert_eq!(learning_rate(&config, 100, 100), 0.0);
    }

    #[test]
    fn rarer_classes_weigh_more() {
        let w = Vec::<f32>::try_from(loss_weights(&[0.81, 0.01, 0.0, 0.18])).unwrap();
        assert!(w[1] > w[3] && w[3] > w[0]);
        assert_eq!(w[2], 0.0);
    }

    /// One 1x`W` image: NCHW logits whose softmax is `probabilities` (one row per class), NHW labels.
    fn lovasz_of(probabilities: &[&[f32]], labels: &[i64]) -> f64 {
        let width = labels.len() as i64;
        let rows: Vec<f32> = probabilities
            .iter()
            .flat_map(|row| row.iter().copied())
            .collect();
        let logits = Tensor::from_slice(&rows)
            .reshape([1, probabilities.len() as i64, 1, width])
            .log();
        let labels = Tensor::from_slice(labels).reshape([1, 1, width]);
        lovasz_softmax(&logits, &labels).double_value(&[])
    }

    #[test]
    fn lovasz_softmax_matches_the_worked_example() {
        // Class 0: errors 0.2 / 0.6 / 0.3, sorted 0.6 (fg) 0.3 (bg) 0.2 (fg); Jaccard losses 1/2, 2/3, 1 -> increments
        // 1/2, 1/6, 1/3 -> 0.3 + 0.05 + 0.0667 = 0.41667. Class 1: the same errors sorted 0.6 (bg) 0.3 (fg) 0.2 (bg);
        // Jaccard losses 1/2, 1, 1 -> increments 1/2, 1/2, 0 -> 0.45. Mean 0.43333.
        let loss = lovasz_of(&[&[0.8, 0.4, 0.3], &[0.2, 0.6, 0.7]], &[0, 0, 1]);
        assert!((loss - 0.433_333).abs() < 1e-5, "{loss}");
    }

    #[test]
    fn lovasz_softmax_skips_ignored_pixels_and_absent_classes() {
        let ignored = i64::from(IGNORE_LABEL);
        // A fourth pixel with the ignore label, and a third class no pixel has (its probability ~0 everywhere).
        let loss = lovasz_of(
            &[
                &[0.8, 0.4, 0.3, 0.1],
                &[0.2, 0.6, 0.7, 0.9],
                &[1e-12, 1e-12, 1e-12, 1e-12],
            ],
            &[0, 0, 1, ignored],
        );
        assert!((loss - 0.433_333).abs() < 1e-5, "{loss}");
    }

    #[test]
    fn lovasz_softmax_is_zero_for_a_crop_without_labelled_pixels() {
        let ignored = i64::from(IGNORE_LABEL);
        assert_eq!(
            lovasz_of(&[&[0.8, 0.4], &[0.2, 0.6]], &[ignored, ignored]),
            0.0
        );
    }

    #[test]
    fn lovasz_softmax_is_zero_when_right_and_falls_along_its_gradient() {
        assert!(lovasz_of(&[&[1.0, 1e-9], &[1e-9, 1.0]], &[0, 1]) < 1e-6);
        let logits = Tensor::from_slice(&[0.3f32, -0.2, 0.5, 0.1, 0.4, -0.6])
            .reshape([1, 2, 1, 3])
            .set_requires_grad(true);
        let labels = Tensor::from_slice(&[1i64, 0, 1]).reshape([1, 1, 3]);
        let before = lovasz_softmax(&logits, &labels);
        before.backward();
        let stepped = tch::no_grad(|| &logits - logits.grad() * 0.5);
        let after = lovasz_softmax(&stepped, &labels);
        assert!(after.double_value(&[]) < before.double_value(&[]));
    }
}

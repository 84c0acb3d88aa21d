//! Training data in memory, augmentation (scale-crop, flip, colour jitter) and batching, all as tch tensor ops.

use std::path::Path;

use anyhow::{Context, Result};
use models::dataset::{Sample, read_index};
use models::manifest::InputSpec;
use rand::Rng;
use tch::{Kind, Tensor};

/// One decoded frame: image `[3, H, W]` uint8 and label map `[H, W]` uint8.
pub struct Frame {
    pub name: String,
    pub image: Tensor,
    pub label: Tensor,
}

impl Frame {
    pub fn from_sample(sample: &Sample) -> Result<Self> {
        let (image, label) = sample.load_labelled()?;
        Ok(Self::from_pixels(sample.name(), &image, label.as_raw()))
    }

    /// Builds a frame from an RGB image and a label map of the same size (e.g. a cloud label from the buffer).
    pub fn from_pixels(name: String, image: &image::RgbImage, labels: &[u8]) -> Self {
        let (w, h) = image.dimensions();
        let image = Tensor::from_slice(image.as_raw())
            .view([h as i64, w as i64, 3])
            .permute([2, 0, 1])
            .contiguous();
        let label = Tensor::from_slice(labels).view([h as i64, w as i64]);
        Self { name, image, label }
    }
}

/// Loads every labelled frame an index file lists.
pub fn load_frames(index: &Path) -> Result<Vec<Frame>> {
    let samples =
        read_index(index, None).with_context(|| format!("reading {}", index.display()))?;
    let bar = crate::progress::bar(samples.len() as u64, "loading");
    let frames = samples
        .iter()
        .map(|s| {
            bar.inc(1);
            Frame::from_sample(s)
        })
        .collect::<Result<Vec<_>>>()?;
    bar.finish_and_clear();
    Ok(frames)
}

#[derive(Debug, Clone, Copy)]
pub struct Augmentation {
    pub crop_height: i64,
    pub crop_width: i64,
    pub min_scale: f64,
    pub max_scale: f64,
    pub flip: bool,
    /// Brightness, contrast and saturation factors are drawn from `1 ± jitter`.
    pub jitter: f64,
}

/// A whole float RGB frame `[3, H, W]` or `[1, 3, H, W]` (0..255) after the manifest's exposure normalisation, as
/// `models::image_ops::to_input_tensor` does it at inference.
pub fn expose(image: &Tensor, spec: &InputSpec) -> Tensor {
    let gain = spec.exposure_gain(image.mean(Kind::Float).double_value(&[]) as f32);
    if gain == 1.0 {
        image.shallow_clone()
    } else {
        (image * f64::from(gain)).clamp_max(255.0)
    }
}

/// Normalises a float RGB tensor `[N, 3, H, W]` on the 0..255 scale as the model's manifest says.
pub fn normalise(image: &Tensor, spec: &InputSpec) -> Tensor {
    let mean = Tensor::from_slice(&spec.mean).view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&spec.std).view([1, 3, 1, 1]);
    (image - mean) / std
}

/// One augmented training pair: image float `[3, h, w]` (0..255) and label int64 `[h, w]`.
fn augment(
    frame: &Frame,
    aug: &Augmentation,
    spec: &InputSpec,
    ignore: i64,
    rng: &mut impl Rng,
) -> (Tensor, Tensor) {
    let (_, h, w) = frame.image.size3().expect("image is [3, H, W]");
    let scale = rng.random_range(aug.min_scale..=aug.max_scale);
    let (sh, sw) = (
        (h as f64 * scale).round() as i64,
        (w as f64 * scale).round() as i64,
    );
    // Exposure is judged on the whole frame, as at inference, before cropping.
    let image = expose(&frame.image.to_kind(Kind::Float), spec)
        .unsqueeze(0)
        .upsample_bilinear2d([sh, sw], false, None, None);
    let label = frame
        .label
        .to_kind(Kind::Float)
        .view([1, 1, h, w])
        .upsample_nearest2d([sh, sw], None, None);
    // Pad to at least the crop size: zeros for the image, the ignore label for the target.
    let (ph, pw) = ((aug.crop_height - sh).max(0), (aug.crop_width - sw).max(0));
    let image = image.constant_pad_nd([0, pw, 0, ph]);
    let label = (label - ignore as f64).constant_pad_nd([0, pw, 0, ph]) + ignore as f64;
    let top = rng.random_range(0..=(sh + ph - aug.crop_height));
    let left = rng.random_range(0..=(sw + pw - aug.crop_width));
    let mut image = image
        .narrow(2, top, aug.crop_height)
        .narrow(3, left, aug.crop_width)
        .squeeze_dim(0);
    let mut label = label
        .narrow(2, top, aug.crop_height)
        .narrow(3, left, aug.crop_width)
        .view([aug.crop_height, aug.crop_width]);
    if aug.flip && rng.random_bool(0.5) {
        image = image.flip([2]);
        label = label.flip([1]);
    }
    if aug.jitter > 0.0 {
        let mut factor = || rng.random_range((1.0 - aug.jitter)..=(1.0 + aug.jitter));
        let (brightness, contrast, saturation) = (factor(), factor(), factor());
        image *= brightness;
        let mean = image.mean(Kind::Float);
        image = (&image - &mean) * contrast + &mean;
        let grey = image.mean_dim(0, true, Kind::Float);
        image = (&image - &grey) * saturation + &grey;
        image = image.clamp(0.0, 255.0);
    }
    (image, label.to_kind(Kind::Int64))
}

/// Draws a shuffled epoch of augmented batches.
pub fn epoch_batches(
    frames: &[Frame],
    batch_size: usize,
    aug: &Augmentation,
    spec: &InputSpec,
    ignore: i64,
    rng: &mut impl Rng,
) -> impl Iterator<Item = (Tensor, Tensor)> {
    use rand::seq::SliceRandom;
    let mut order: Vec<usize> = (0..frames.len()).collect();
    order.shuffle(rng);
    let chunks: Vec<Vec<(Tensor, Tensor)>> = order
        .chunks(batch_size)
        .filter(|c| c.len() == batch_size)
        .map(|chunk| {
            chunk
                .iter()
                .map(|&i| augment(&frames[i], aug, spec, ignore, rng))
                .collect()
        })
        .collect();
    let spec = spec.clone();
    chunks.into_iter().map(move |pairs| {
        let (images, labels): (Vec<Tensor>, Vec<Tensor>) = pairs.into_iter().unzip();
        (
            normalise(&Tensor::stack(&images, 0), &spec),
            Tensor::stack(&labels, 0),
        )
    })
}

/// Per-class pixel frequencies over the frames (ignore label excluded), for class weighting and balanced sampling.
pub fn class_frequencies(frames: &[Frame], classes: usize) -> Vec<f64> {
    let mut counts = vec![0f64; classes];
    for frame in frames {
        let hist = frame
            .label
            .to_kind(Kind::Int64)
            .view([-1])
            .bincount::<Tensor>(None, classes as i64 + 1);
        for (c, count) in counts.iter_mut().enumerate() {
            *count += hist.int64_value(&[c as i64]) as f64;
        }
    }
    let total: f64 = counts.iter().sum::<f64>().max(1.0);
    counts.iter().map(|c| c / total).collect()
}

//! Shared pre- and post-processing, so no service re-implements them: decode, resize, normalise, letterbox,
//! softmax, argmax, label maps as 8-bit PNG, coloured overlays.

use std::io::Cursor;

use image::codecs::png::{CompressionType, FilterType as PngFilterType, PngEncoder};
use image::imageops::FilterType;
use image::{ExtendedColorType, ImageEncoder};
use image::{GrayImage, ImageFormat, RgbImage};
use multiversion::multiversion;
use ndarray::Array4;

use crate::manifest::{InputSpec, ResizeMode};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("the image is empty")]
    Empty,
    #[error("unsupported image format (expected PNG or JPEG)")]
    UnsupportedFormat,
    #[error("the image could not be decoded: {0}")]
    Decode(String),
    #[error("the image is {width}x{height} = {pixels} pixels, more than the limit of {limit}")]
    TooManyPixels {
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },
    #[error("the label map has {actual} pixels, expected {expected}")]
    LabelSize { expected: usize, actual: usize },
}

/// Decodes PNG or JPEG bytes to RGB, refusing images above `max_pixels` before decoding the pixel data.
pub fn decode_rgb(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let format = image::guess_format(bytes).map_err(|_| ImageError::UnsupportedFormat)?;
    if !matches!(format, ImageFormat::Png | ImageFormat::Jpeg) {
        return Err(ImageError::UnsupportedFormat);
    }
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(4).max(1 << 20));
    reader.limits(limits);
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| ImageError::Decode(e.to_string()))?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(ImageError::TooManyPixels {
            width,
            height,
            pixels,
            limit: max_pixels,
        });
    }
    let decoded = image::load_from_memory_with_format(bytes, format)
        .map_err(|e| ImageError::Decode(e.to_string()))?;
    Ok(decoded.to_rgb8())
}

/// How an original image maps into the model input: the scale and the size of the resized content.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    pub scale_x: f32,
    pub scale_y: f32,
    pub content_width: u32,
    pub content_height: u32,
}

/// Resizes and normalises an RGB image into an NCHW tensor as the manifest's input spec says.
pub fn to_input_tensor(image: &RgbImage, spec: &InputSpec) -> (Array4<f32>, Letterbox) {
    let (width, height) = image.dimensions();
    let (content_width, content_height) = match spec.resize {
        ResizeMode::Stretch => (spec.width, spec.height),
        ResizeMode::LongestSidePad => {
            let scale = spec.width.max(spec.height) as f32 / width.max(height) as f32;
            (
                ((width as f32 * scale) + 0.5).floor() as u32,
                ((height as f32 * scale) + 0.5).floor() as u32,
            )
        }
    };
    let resized;
    let source = if (content_width, content_height) == (width, height) {
        image
    } else {
        resized =
            image::imageops::resize(image, content_width, content_height, FilterType::Triangle);
        &resized
    };
    let mut tensor = Array4::<f32>::zeros((1, 3, spec.height as usize, spec.width as usize));
    let plane = (spec.height * spec.width) as usize;
    let data = tensor.as_slice_mut().expect("fresh array is contiguous");
    let row = spec.width as usize;
    // The brightness pass only when the model asks for exposure normalisation: this runs on every frame.
    let gain = match spec.exposure {
        Some(_) => spec.exposure_gain(mean_value(source)),
        None => 1.0,
    };
    normalise_into_planes(source, data, plane, row, gain, spec.mean, spec.std);
    let letterbox = Letterbox {
        scale_x: content_width as f32 / width as f32,
        scale_y: content_height as f32 / height as f32,
        content_width,
        content_height,
    };
    (tensor, letterbox)
}

/// Writes `image`'s pixels, times `gain` (capped at 255), minus `mean` and over `std` per channel, into the top-left
/// corner of three planes of `row`-wide rows. Row by row over the raw bytes so the loop vectorises (a per-pixel loop
/// with indexed writes took most of the preprocessing time).
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma"))]
fn normalise_into_planes(
    image: &RgbImage,
    data: &mut [f32],
    plane: usize,
    row: usize,
    gain: f32,
    mean: [f32; 3],
    std: [f32; 3],
) {
    let width = image.width() as usize;
    if width == 0 {
        return;
    }
    let (red, rest) = data.split_at_mut(plane);
    let (green, blue) = rest.split_at_mut(plane);
    let normalise = |value: u8, c: usize| ((f32::from(value) * gain).min(255.0) - mean[c]) / std[c];
    for (y, pixels) in image.as_raw().chunks_exact(width * 3).enumerate() {
        let start = y * row;
        let planes = red[start..start + width]
            .iter_mut()
            .zip(&mut green[start..start + width])
            .zip(&mut blue[start..start + width]);
        for (((r, g), b), pixel) in planes.zip(pixels.chunks_exact(3)) {
            *r = normalise(pixel[0], 0);
            *g = normalise(pixel[1], 1);
            *b = normalise(pixel[2], 2);
        }
    }
}

/// Mean of every channel value of an RGB image (0..255).
pub fn mean_value(image: &RgbImage) -> f32 {
    let raw = image.as_raw();
    if raw.is_empty() {
        return 0.0;
    }
    (raw.iter().map(|&v| u64::from(v)).sum::<u64>() as f64 / raw.len() as f64) as f32
}

/// Softmax over the class axis of a CHW score map, in place. It works plane by plane (contiguous, so the compiler
/// vectorises every pass) with [`exp_non_positive`]: a 480x360x11 map takes a fraction of the time a per-pixel loop
/// over libm's `expf` did, which was most of the edge's post-processing.
pub fn softmax_channels(scores: &mut [f32], classes: usize) {
    let plane = scores.len() / classes;
    if plane == 0 {
        return;
    }
    let mut max = scores[..plane].to_vec();
    for channel in scores.chunks_exact(plane).skip(1) {
        for (m, &s) in max.iter_mut().zip(channel) {
            *m = m.max(s);
        }
    }
    let mut sum = vec![0.0f32; plane];
    for channel in scores.chunks_exact_mut(plane) {
        for ((s, &m), total) in channel.iter_mut().zip(&max).zip(&mut sum) {
            *s = exp_non_positive(*s - m);
            *total += *s;
        }
    }
    for total in &mut sum {
        *total = 1.0 / *total;
    }
    for channel in scores.chunks_exact_mut(plane) {
        for (s, &inv) in channel.iter_mut().zip(&sum) {
            *s *= inv;
        }
    }
}

/// `e^x` for `x <= 0` (NaN stays NaN), within 2e-7 relative of `f32::exp` above the underflow point (results below
/// about 1e-38 flush to e^-87). Written with plain arithmetic and bit operations so that loops over it vectorise:
/// `e^x = 2^n * e^r` with `n = round(x / ln 2)` and `|r| <= ln 2 / 2`, `e^r` by its Taylor series to `r^7`.
#[inline(always)]
pub fn exp_non_positive(x: f32) -> f32 {
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without a libm call.
    const ROUNDER: f32 = 12_582_912.0;
    // ln 2 split in a short high part (exact products with n) and the rest, for an accurate reduction.
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 0.0);
    let biased = x * std::f32::consts::LOG2_E + ROUNDER;
    let n = biased - ROUNDER;
    let r = x - n * LN2_HIGH - n * LN2_LOW;
    let poly = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // n is in [-126, 0], so 2^n is a normal float built from its exponent bits. n as an integer is read from the
    // low mantissa bits of `biased` (a float-to-int cast would keep the loop from vectorising).
    let n_bits = biased.to_bits().wrapping_sub(ROUNDER.to_bits()) as i32;
    let scale = f32::from_bits(((n_bits + 127) as u32) << 23);
    poly * scale
}

/// A CHW score map's per-pixel argmax at full resolution, and the softmax of its scores at every `step`-th row and
/// column (starting at the first), as an edge model's raw output is turned into an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelsAndScores {
    pub labels: Vec<u8>,
    /// CHW, `score_height` x `score_width` per class.
    pub probabilities: Vec<f32>,
    pub score_height: usize,
    pub score_width: usize,
}

/// Computes [`LabelsAndScores`] from `logits` (`classes` planes of `height` x `width`). Equal to [`argmax_channels`]
/// on the whole map and [`softmax_channels`] on its subsampled copy, bit for bit.
///
/// The rows are cut into one band per thread of rayon's pool, the calling thread computing the last band itself:
/// after a model run both cores sit idle, and this is the longest step between the model and the answer (criterion:
/// 2.4 -> 1.8 ms for 480x360x11 on this 2-core VM, `RAYON_NUM_THREADS` 1 against 2).
pub fn labels_and_subsampled_softmax(
    logits: &[f32],
    classes: usize,
    height: usize,
    width: usize,
    step: usize,
) -> LabelsAndScores {
    let step = step.max(1);
    let (score_height, score_width) = (height.div_ceil(step), width.div_ceil(step));
    let score_plane = score_height * score_width;
    let mut labels = vec![0u8; height * width];
    let mut probabilities = vec![0.0f32; classes * score_plane];
    let bands = rayon::current_num_threads().clamp(1, height.max(1));
    // Band boundaries at multiples of `step`, so every band starts on a row whose scores are kept.
    let band_rows = height.div_ceil(bands).div_ceil(step) * step;
    let label_bands: Vec<&mut [u8]> = labels.chunks_mut((band_rows * width).max(1)).collect();
    // Each band's rows of every class plane (as many bands of score rows as of label rows, by the alignment above).
    let mut score_bands: Vec<Vec<&mut [f32]>> = label_bands
        .iter()
        .map(|_| Vec::with_capacity(classes))
        .collect();
    for plane in probabilities.chunks_mut(score_plane.max(1)) {
        let rows = plane.chunks_mut((band_rows / step * score_width).max(1));
        for (rows, planes) in rows.zip(&mut score_bands) {
            planes.push(rows);
        }
    }
    let mut bands = label_bands.into_iter().zip(score_bands).enumerate().map(
        |(index, (labels, probabilities))| BandOutput {
            first_row: index * band_rows,
            labels,
            probabilities,
        },
    );
    let last = bands.next_back();
    rayon::in_place_scope(|scope| {
        for band in bands {
            scope.spawn(move |_| fill_band(logits, classes, height, width, step, band));
        }
        if let Some(band) = last {
            fill_band(logits, classes, height, width, step, band);
        }
    });
    LabelsAndScores {
        labels,
        probabilities,
        score_height,
        score_width,
    }
}

/// One band of rows of [`labels_and_subsampled_softmax`]'s output: its labels, and its rows of each class's scores.
struct BandOutput<'a> {
    first_row: usize,
    labels: &'a mut [u8],
    probabilities: Vec<&'a mut [f32]>,
}

/// Fills a band row by row: the row's planes stay in the L1 cache while labels and scores are computed, where
/// separate passes would each stream the whole map (7.6 MB for 480x360x11) from memory. Compiled for AVX-512 and
/// AVX2 too, picked at run time: the same operations per lane in the same order, so the same result on every CPU.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma"))]
fn fill_band<'a>(
    logits: &[f32],
    classes: usize,
    height: usize,
    width: usize,
    step: usize,
    band: BandOutput<'a>,
) {
    let BandOutput {
        first_row,
        labels,
        mut probabilities,
    } = band;
    let plane = height * width;
    let score_width = width.div_ceil(step);
    let mut best = vec![0.0f32; width];
    let mut best_class = vec![0u32; width];
    let mut max = vec![0.0f32; score_width];
    let mut sum = vec![0.0f32; score_width];
    for (band_row, labels_row) in labels.chunks_exact_mut(width).enumerate() {
        let y = first_row + band_row;
        let row = |class: usize| &logits[class * plane + y * width..][..width];
        best.copy_from_slice(row(0));
        best_class.fill(0);
        for class in 1..classes {
            // Branch-free and all 32-bit lanes, so the loop vectorises.
            for ((index, best), &score) in best_class.iter_mut().zip(&mut best).zip(row(class)) {
                let higher = score > *best;
                *best = if higher { score } else { *best };
                *index = if higher { class as u32 } else { *index };
            }
        }
        for (label, &index) in labels_row.iter_mut().zip(&best_class) {
            *label = index as u8;
        }
        if band_row % step != 0 {
            continue;
        }
        // The row's maximum over classes, which the softmax subtracts, is `best`. The kept columns are gathered
        // first, so the exponentials run over contiguous slices and vectorise.
        let score_row = (band_row / step) * score_width;
        for (max, &best) in max.iter_mut().zip(best.iter().step_by(step)) {
            *max = best;
        }
        sum.fill(0.0);
        for (class, scores) in probabilities.iter_mut().enumerate() {
            let out = &mut scores[score_row..][..score_width];
            for (p, &score) in out.iter_mut().zip(row(class).iter().step_by(step)) {
                *p = score;
            }
            for ((p, &max), total) in out.iter_mut().zip(&max).zip(&mut sum) {
                *p = exp_non_positive(*p - max);
                *total += *p;
            }
        }
        for total in &mut sum {
            *total = 1.0 / *total;
        }
        for scores in &mut probabilities {
            let out = &mut scores[score_row..][..score_width];
            for (p, &inv) in out.iter_mut().zip(&sum) {
                *p *= inv;
            }
        }
    }
}

/// Per-pixel argmax over the class axis of a CHW score map.
pub fn argmax_channels(scores: &[f32], classes: usize) -> Vec<u8> {
    let plane = scores.len() / classes;
    let mut best = vec![0u8; plane];
    let mut best_score = scores[..plane].to_vec();
    for c in 1..classes {
        let channel = &scores[c * plane..(c + 1) * plane];
        for ((label, best), &s) in best.iter_mut().zip(best_score.iter_mut()).zip(channel) {
            if s > *best {
                *best = s;
                *label = c as u8;
            }
        }
    }
    best
}

/// Pixel count of every class in a label map (labels at or above `classes` are not counted).
///
/// Each block of 64 labels is compared with every class into byte-wide lane counters, which vectorises to a compare
/// and a subtract per class and block: a third of the time a histogram takes, whose increments of the same slot wait
/// on each other along a label map's long runs (criterion: 146 -> 48 us on a 480x360 map with 11 classes).
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma"))]
pub fn class_counts(labels: &[u8], classes: usize) -> Vec<u64> {
    const LANES: usize = 64;
    // A lane counts at most one label per block, so after 255 blocks it must be flushed before it wraps.
    const FLUSH: usize = u8::MAX as usize * LANES;
    // A u8 label can only name classes 0..=255.
    let counted = classes.min(256);
    let mut counts = vec![0u64; classes];
    let mut lanes = vec![[0u8; LANES]; counted];
    for chunk in labels.chunks(FLUSH) {
        let mut blocks = chunk.chunks_exact(LANES);
        for block in &mut blocks {
            for (class, class_lanes) in lanes.iter_mut().enumerate() {
                for (lane, &label) in class_lanes.iter_mut().zip(block) {
                    *lane += u8::from(label == class as u8);
                }
            }
        }
        for (class, (count, class_lanes)) in counts.iter_mut().zip(&mut lanes).enumerate() {
            let tail = blocks
                .remainder()
                .iter()
                .filter(|&&label| label == class as u8);
            *count +=
                class_lanes.iter().map(|&lane| u64::from(lane)).sum::<u64>() + tail.count() as u64;
            *class_lanes = [0; LANES];
        }
    }
    counts
}

/// Encodes a label map as an 8-bit greyscale PNG of class indices.
pub fn encode_label_png(labels: &[u8], width: u32, height: u32) -> Result<Vec<u8>, ImageError> {
    let expected = width as usize * height as usize;
    if labels.len() != expected {
        return Err(ImageError::LabelSize {
            expected,
            actual: labels.len(),
        });
    }
    // Label maps are long runs of a few values: the fast setting compresses them nearly as well, in a fraction
    // of the time, and this runs once per answered frame.
    let mut out = Vec::new();
    PngEncoder::new_with_quality(&mut out, CompressionType::Fast, PngFilterType::Sub)
        .write_image(labels, width, height, ExtendedColorType::L8)
        .map_err(|e| ImageError::Decode(e.to_string()))?;
    Ok(out)
}

/// Decodes an 8-bit greyscale PNG of class indices.
pub fn decode_label_png(bytes: &[u8]) -> Result<GrayImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let image = image::load_from_memory_with_format(bytes, ImageFormat::Png)
        .map_err(|e| ImageError::Decode(e.to_string()))?;
    Ok(image.to_luma8())
}

/// Colours a label map with the palette, blended over the image (`alpha` = weight of the label colour).
/// Labels outside the palette keep the image pixel.
pub fn overlay(image: &RgbImage, labels: &[u8], palette: &[[u8; 3]], alpha: f32) -> RgbImage {
    let mut out = image.clone();
    for (pixel, &label) in out.pixels_mut().zip(labels) {
        if let Some(color) = palette.get(usize::from(label)) {
            for c in 0..3 {
                pixel[c] = (f32::from(pixel[c]) * (1.0 - alpha) + f32::from(color[c]) * alpha)
                    .round() as u8;
            }
        }
    }
    out
}

/// Nearest-neighbour resize of a label map (labels must never be interpolated).
pub fn resize_labels(
    labels: &[u8],
    width: u32,
    height: u32,
    new_width: u32,
    new_height: u32,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(new_width as usize * new_height as usize);
    for y in 0..new_height {
        let sy = ((y as u64 * height as u64) / new_height as u64) as usize;
        for x in 0..new_width {
            let sx = ((x as u64 * width as u64) / new_width as u64) as usize;
            out.push(labels[sy * width as usize + sx]);
        }
    }
    out
}

pub fn encode_png(image: &RgbImage) -> Result<Vec<u8>, ImageError> {
    let mut out = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
        .map_err(|e| ImageError::Decode(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_rows_sum_to_one_and_argmax_picks_the_largest() {
        // 3 classes, 2 pixels.
        let mut scores = vec![1.0, 4.0, 3.0, 0.0, 2.0, 1.0];
        softmax_channels(&mut scores, 3);
        for p in 0..2 {
            let sum: f32 = (0..3).map(|c| scores[c * 2 + p]).sum();
            assert!((sum - 1.0).abs() < 1e-6);
        }
        assert_eq!(argmax_channels(&scores, 3), vec![1, 0]);
    }

    #[test]
    fn fast_exp_matches_libm_over_the_whole_range() {
        let mut worst = 0.0f64;
        for i in 0..=2_000_000 {
            let x = -87.0 * i as f32 / 2_000_000.0;
            let exact = f64::from(x).exp();
            let relative = ((f64::from(exp_non_positive(x)) - exact) / exact).abs();
            worst = worst.max(relative);
        }
        assert!(worst < 2e-7, "worst relative error {worst:e}");
        assert_eq!(exp_non_positive(0.0), 1.0);
        assert!(exp_non_positive(-1e6) > 0.0 && exp_non_positive(-1e6) < 1e-37);
        assert!(exp_non_positive(f32::NAN).is_nan());
    }

    #[test]
    fn fused_labels_and_scores_equal_the_separate_passes() {
        // 11 classes on 7x9 pixels (odd sizes: the last row and column are kept), with ties and a wide range; cut
        // into one to four bands of rows (the pool's size), some shorter than others.
        let (classes, height, width) = (11, 7, 9);
        let logits: Vec<f32> = (0..classes * height * width)
            .map(|i| ((i * 7919 % 61) as f32 - 30.0) * 0.75)
            .collect();
        for (threads, step) in (1..=4).flat_map(|threads| [1, 2, 3].map(|step| (threads, step))) {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let fused = pool
                .install(|| labels_and_subsampled_softmax(&logits, classes, height, width, step));
            assert_eq!(
                fused.labels,
                argmax_channels(&logits, classes),
                "{threads} threads, step {step}"
            );
            let mut subsampled: Vec<f32> = logits
                .chunks_exact(height * width)
                .flat_map(|plane| {
                    plane
                        .chunks_exact(width)
                        .step_by(step)
                        .flat_map(|row| row.iter().step_by(step).copied())
                })
                .collect();
            softmax_channels(&mut subsampled, classes);
            assert_eq!(
                fused.probabilities, subsampled,
                "{threads} threads, step {step}"
            );
            assert_eq!(
                (fused.score_height, fused.score_width),
                (height.div_ceil(step), width.div_ceil(step))
            );
        }
    }

    #[test]
    fn softmax_matches_the_definition_on_a_wide_score_map() {
        let (classes, plane) = (11, 1000);
        let logits: Vec<f32> = (0..classes * plane)
            .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 60.0)
            .collect();
        let mut probabilities = logits.clone();
        softmax_channels(&mut probabilities, classes);
        for p in 0..plane {
            let column: Vec<f64> = (0..classes)
                .map(|c| f64::from(logits[c * plane + p]))
                .collect();
            let max = column.iter().cloned().fold(f64::MIN, f64::max);
            let total: f64 = column.iter().map(|l| (l - max).exp()).sum();
            for c in 0..classes {
                let expected = (column[c] - max).exp() / total;
                let got = f64::from(probabilities[c * plane + p]);
                assert!(
                    (got - expected).abs() < 1e-6,
                    "pixel {p} class {c}: {got} vs {expected}"
                );
            }
        }
    }

    #[test]
    fn label_png_round_trips() {
        let labels: Vec<u8> = (0..12).map(|i| (i % 12) as u8).collect();
        let png = encode_label_png(&labels, 4, 3).unwrap();
        let back = decode_label_png(&png).unwrap();
        assert_eq!(back.into_raw(), labels);
    }

    #[test]
    fn label_png_refuses_a_wrong_size() {
        assert!(matches!(
            encode_label_png(&[0; 5], 2, 2),
            Err(ImageError::LabelSize {
                expected: 4,
                actual: 5
            })
        ));
    }

    #[test]
    fn decode_refuses_empty_garbage_and_oversized_images() {
        assert!(matches!(decode_rgb(&[], 100), Err(ImageError::Empty)));
        assert!(matches!(
            decode_rgb(b"hello world", 100),
            Err(ImageError::UnsupportedFormat)
        ));
        let png = encode_png(&RgbImage::new(20, 10)).unwrap();
        assert!(matches!(
            decode_rgb(&png, 100),
            Err(ImageError::TooManyPixels { pixels: 200, .. })
        ));
        assert!(matches!(
            decode_rgb(&png[..png.len() / 2], 1000),
            Err(ImageError::Decode(_))
        ));
        assert_eq!(decode_rgb(&png, 1000).unwrap().dimensions(), (20, 10));
    }

    #[test]
    fn longest_side_pad_keeps_aspect_and_pads_with_zero() {
        let spec = InputSpec {
            width: 8,
            height: 8,
            resize: ResizeMode::LongestSidePad,
            mean: [0.0; 3],
            std: [1.0; 3],
            exposure: None,
        };
        let image = RgbImage::from_pixel(4, 2, image::Rgb([10, 20, 30]));
        let (tensor, letterbox) = to_input_tensor(&image, &spec);
        assert_eq!((letterbox.content_width, letterbox.content_height), (8, 4));
        assert_eq!(tensor[[0, 2, 3, 7]], 30.0);
        assert_eq!(tensor[[0, 0, 4, 0]], 0.0);
    }

    #[test]
    fn exposure_brightens_only_frames_darker_than_the_training_set() {
        let spec = InputSpec {
            width: 2,
            height: 1,
            resize: ResizeMode::Stretch,
            mean: [0.0; 3],
            std: [1.0; 3],
            exposure: Some(crate::manifest::Exposure { target_mean: 100.0 }),
        };
        // Mean 50: everything doubles, saturating at 255.
        let dark = RgbImage::from_raw(2, 1, vec![20, 40, 60, 30, 50, 100]).unwrap();
        let (tensor, _) = to_input_tensor(&dark, &spec);
        assert_eq!(tensor[[0, 0, 0, 0]], 40.0);
        assert_eq!(tensor[[0, 2, 0, 1]], 200.0);
        // Mean 150: untouched.
        let bright = RgbImage::from_pixel(2, 1, image::Rgb([150, 150, 150]));
        assert_eq!(to_input_tensor(&bright, &spec).0[[0, 1, 0, 0]], 150.0);
        let saturating = RgbImage::from_raw(2, 1, vec![250, 0, 0, 0, 0, 50]).unwrap();
        assert_eq!(to_input_tensor(&saturating, &spec).0[[0, 0, 0, 0]], 255.0);
        assert_eq!(spec.exposure_gain(0.0), 1.0);
    }

    #[test]
    fn normalisation_follows_the_spec_for_every_pixel_and_channel() {
        // 6x3 content letterboxed into 6x6, distinct values per pixel and channel, a mean and std per channel.
        let spec = InputSpec {
            width: 6,
            height: 6,
            resize: ResizeMode::LongestSidePad,
            mean: [10.0, 20.0, 30.0],
            std: [2.0, 4.0, 8.0],
            exposure: None,
        };
        let raw: Vec<u8> = (0..6 * 3 * 3).map(|i| (i * 5) as u8).collect();
        let image = RgbImage::from_raw(6, 3, raw).unwrap();
        let (tensor, _) = to_input_tensor(&image, &spec);
        for (x, y, pixel) in image.enumerate_pixels() {
            for c in 0..3 {
                let expected = (f32::from(pixel[c]) - spec.mean[c]) / spec.std[c];
                assert_eq!(
                    tensor[[0, c, y as usize, x as usize]],
                    expected,
                    "({x}, {y}, {c})"
                );
            }
        }
        assert!(
            tensor
                .slice(ndarray::s![.., .., 3.., ..])
                .iter()
                .all(|&v| v == 0.0)
        );
    }

    #[test]
    fn class_counts_count_each_class_and_skip_other_labels() {
        // Shorter than a block, so only the remainder counts; 11 and 255 are not classes.
        let labels = [0u8, 2, 2, 11, 1, 2, 255, 0, 0, 2, 1];
        assert_eq!(class_counts(&labels, 3), vec![3, 2, 4]);
        assert_eq!(class_counts(&[], 3), vec![0, 0, 0]);
    }

    #[test]
    fn class_counts_match_a_histogram_past_the_lane_counters_range() {
        // Long runs (a lane sees the same class in every block, so it would wrap without the flush), a ragged tail,
        // and labels that are no class.
        let labels: Vec<u8> = (0..300_007u32)
            .map(|i| match i % 100_003 {
                i if i < 70_000 => 3,
                i => (i % 13) as u8,
            })
            .collect();
        let mut histogram = vec![0u64; 11];
        for &label in &labels {
            if let Some(count) = histogram.get_mut(usize::from(label)) {
                *count += 1;
            }
        }
        assert_eq!(class_counts(&labels, 11), histogram);
        assert_eq!(class_counts(&labels, 300)[3], histogram[3]);
    }

    #[test]
    fn nearest_resize_of_labels_keeps_label_values() {
        let labels = vec![0, 1, 2, 3];
        assert_eq!(
            resize_labels(&labels, 2, 2, 4, 2),
            vec![0, 0, 1, 1, 2, 2, 3, 3]
        );
    }
}

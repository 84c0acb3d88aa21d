//! Mask logits from the decoder's 256x256 low-resolution output to thresholded masks at the original image size.
//!
//! SAM's `postprocess_masks` upsamples bilinearly to the padded 1024 input, crops the resized content, then
//! resamples bilinearly to the original size. Both steps are separable and linear, so each output row (column)
//! is a fixed convex combination of at most three low-resolution rows (columns): the taps are precomputed once
//! per image size. Only the window whose taps reach a low-resolution logit above `threshold - offset` is
//! evaluated: a convex combination of logits at or below that value cannot pass any of the three thresholds
//! (stability low/high and the mask itself), so everything outside is known to be background.

use crate::grid::CropBox;
use crate::rle::{BoxXyxy, Rle, RleBuilder};

const MAX_TAPS: usize = 4;

/// One output index's support: `weights[k]` applies to low-resolution index `first + k`, `k < count`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Taps {
    first: usize,
    count: usize,
    weights: [f32; MAX_TAPS],
}

impl Taps {
    fn last(&self) -> usize {
        self.first + self.count - 1
    }
}

/// `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)` along one axis: the two source
/// indices and weights of output index `out_index`.
fn linear_taps(out_index: usize, in_len: usize, out_len: usize) -> [(usize, f32); 2] {
    let scale = in_len as f32 / out_len as f32;
    let source = (scale * (out_index as f32 + 0.5) - 0.5).max(0.0);
    let first = source as usize;
    let next = if first + 1 < in_len { first + 1 } else { first };
    let lambda = (source - first as f32).clamp(0.0, 1.0);
    [(first, 1.0 - lambda), (next, lambda)]
}

/// Low-res -> `input_size` -> first `content_len` entries -> `out_len`, composed.
fn composed_taps(
    low_res: usize,
    input_size: usize,
    content_len: usize,
    out_len: usize,
) -> Vec<Taps> {
    (0..out_len)
        .map(|o| {
            let mut weights = [0.0f32; MAX_TAPS];
            let stage_two = linear_taps(o, content_len, out_len);
            let first = linear_taps(stage_two[0].0, low_res, input_size)[0].0;
            let mut last = first;
            for (mid, w_mid) in stage_two {
                for (low, w_low) in linear_taps(mid, low_res, input_size) {
                    let k = low - first;
                    assert!(
                        k < MAX_TAPS,
                        "an output pixel depends on more than {MAX_TAPS} low-res pixels"
                    );
                    weights[k] += w_mid * w_low;
                    last = last.max(low);
                }
            }
            Taps {
                first,
                count: last - first + 1,
                weights,
            }
        })
        .collect()
}

/// A thresholded mask in the original image's frame and its stability score.
#[derive(Debug, Clone, PartialEq)]
pub struct UpscaledMask {
    pub rle: Rle,
    /// Box in the crop's frame (the original image when there are no crops).
    pub bbox_in_crop: BoxXyxy,
    /// IoU of the masks thresholded at `threshold + offset` and `threshold - offset`; 0 when both are empty.
    pub stability_score: f32,
}

/// Precomputed resampling from decoder logits to one output (crop) size.
#[derive(Debug, Clone)]
pub struct MaskUpscaler {
    low_res: usize,
    x_taps: Vec<Taps>,
    y_taps: Vec<Taps>,
}

impl MaskUpscaler {
    /// `low_res`: decoder mask side (256); `input_size`: encoder input side (1024); `content_*`: the resized
    /// image inside the padded input; `out_*`: the size to resample to (the crop's size).
    pub fn new(
        low_res: usize,
        input_size: usize,
        content_width: usize,
        content_height: usize,
        out_width: usize,
        out_height: usize,
    ) -> Self {
        Self {
            low_res,
            x_taps: composed_taps(low_res, input_size, content_width, out_width),
            y_taps: composed_taps(low_res, input_size, content_height, out_height),
        }
    }

    /// Thresholds one `low_res`² logit map at `threshold` into a mask placed at `crop` inside an
    /// `image_width` x `image_height` image, computing the stability score with `offset` on the way.
    pub fn threshold(
        &self,
        logits: &[f32],
        threshold: f32,
        offset: f32,
        crop: &CropBox,
        image_width: u32,
        image_height: u32,
    ) -> UpscaledMask {
        assert_eq!(logits.len(), self.low_res * self.low_res, "logit map size");
        let mut builder = RleBuilder::new(image_width, image_height);
        let empty = |builder: RleBuilder| UpscaledMask {
            rle: builder.finish(),
            bbox_in_crop: BoxXyxy::default(),
            stability_score: 0.0,
        };
        let low = threshold - offset;
        let row_limit = self.y_taps.last().map_or(0, |t| t.last() + 1);
        let col_limit = self.x_taps.last().map_or(0, |t| t.last() + 1);
        let Some((rows, cols)) = active_window(logits, self.low_res, row_limit, col_limit, low)
        else {
            return empty(builder);
        };
        let Some((oy0, oy1)) = reaching(&self.y_taps, rows) else {
            return empty(builder);
        };
        let Some((ox0, ox1)) = reaching(&self.x_taps, cols) else {
            return empty(builder);
        };
        let window_width = ox1 - ox0;
        let r0 = self.y_taps[oy0].first;
        let r1 = self.y_taps[oy1 - 1].last() + 1;
        let mut horizontal = vec![0.0f32; (r1 - r0) * window_width];
        for r in r0..r1 {
            let row = &logits[r * self.low_res..(r + 1) * self.low_res];
            let out = &mut horizontal[(r - r0) * window_width..(r - r0 + 1) * window_width];
            for (value, taps) in out.iter_mut().zip(&self.x_taps[ox0..ox1]) {
                *value = (0..taps.count)
                    .map(|k| taps.weights[k] * row[taps.first + k])
                    .sum();
            }
        }
        let high = threshold + offset;
        let (mut intersections, mut unions) = (0u64, 0u64);
        let mut bbox = BoxXyxy {
            x0: u32::MAX,
            y0: u32::MAX,
            x1: 0,
            y1: 0,
        };
        let mut values = vec![0.0f32; window_width];
        for (oy, taps) in self.y_taps.iter().enumerate().take(oy1).skip(oy0) {
            values.fill(0.0);
            for k in 0..taps.count {
                let source = &horizontal[(taps.first + k - r0) * window_width..][..window_width];
                let w = taps.weights[k];
                for (value, s) in values.iter_mut().zip(source) {
                    *value += w * s;
                }
            }
            let row_start = (oy as u32 + crop.y0) * image_width + crop.x0 + ox0 as u32;
            let mut run_start = None;
            for (i, &v) in values.iter().enumerate() {
                intersections += u64::from(v > high);
                unions += u64::from(v > low);
                let set = v > threshold;
                match (set, run_start) {
                    (true, None) => run_start = Some(i),
                    (false, Some(s)) => {
                        builder.push(row_start + s as u32, (i - s) as u32);
                        extend_box(&mut bbox, ox0 + s, ox0 + i - 1, oy);
                        run_start = None;
                    }
                    _ => {}
                }
            }
            if let Some(s) = run_start {
                builder.push(row_start + s as u32, (window_width - s) as u32);
                extend_box(&mut bbox, ox0 + s, ox1 - 1, oy);
            }
        }
        let rle = builder.finish();
        UpscaledMask {
            bbox_in_crop: if rle.runs.is_empty() {
                BoxXyxy::default()
            } else {
                bbox
            },
            rle,
            stability_score: if unions == 0 {
                0.0
            } else {
                intersections as f32 / unions as f32
            },
        }
    }
}

fn extend_box(bbox: &mut BoxXyxy, x_first: usize, x_last: usize, y: usize) {
    bbox.x0 = bbox.x0.min(x_first as u32);
    bbox.x1 = bbox.x1.max(x_last as u32);
    bbox.y0 = bbox.y0.min(y as u32);
    bbox.y1 = bbox.y1.max(y as u32);
}

/// Inclusive row and column ranges of low-res logits above `low`, within the part the output depends on.
type Range = (usize, usize);
fn active_window(
    logits: &[f32],
    side: usize,
    row_limit: usize,
    col_limit: usize,
    low: f32,
) -> Option<(Range, Range)> {
    let (mut r_lo, mut r_hi, mut c_lo, mut c_hi) = (usize::MAX, 0, usize::MAX, 0);
    for r in 0..row_limit {
        let row = &logits[r * side..r * side + col_limit];
        if let Some(first) = row.iter().position(|&v| v > low) {
            let last = row.iter().rposition(|&v| v > low).unwrap_or(first);
            r_lo = r_lo.min(r);
            r_hi = r;
            c_lo = c_lo.min(first);
            c_hi = c_hi.max(last);
        }
    }
    (r_lo != usize::MAX).then_some(((r_lo, r_hi), (c_lo, c_hi)))
}

/// The half-open range of output indices whose taps touch the inclusive low-res range.
fn reaching(taps: &[Taps], (lo, hi): Range) -> Option<(usize, usize)> {
    let start = taps.iter().position(|t| t.last() >= lo)?;
    let end = taps.iter().rposition(|t| t.first <= hi)? + 1;
    (start < end).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SAM's two interpolations done literally, for comparison.
    fn reference(
        logits: &[f32],
        low: usize,
        input: usize,
        content: (usize, usize),
        out: (usize, usize),
    ) -> Vec<f32> {
        let resize =
            |src: &[f32], (sw, sh): (usize, usize), (dw, dh): (usize, usize)| -> Vec<f32> {
                let mut dst = vec![0.0; dw * dh];
                for y in 0..dh {
                    let ty = linear_taps(y, sh, dh);
                    for x in 0..dw {
                        let tx = linear_taps(x, sw, dw);
                        let mut v = 0.0;
                        for (iy, wy) in ty {
                            for (ix, wx) in tx {
                                v += wy * wx * src[iy * sw + ix];
                            }
                        }
                        dst[y * dw + x] = v;
                    }
                }
                dst
            };
        let padded = resize(logits, (low, low), (input, input));
        let cropped: Vec<f32> = (0..content.1)
            .flat_map(|y| padded[y * input..y * input + content.0].to_vec())
            .collect();
        resize(&cropped, content, out)
    }

    #[test]
    fn taps_are_convex_and_short() {
        for taps in composed_taps(256, 1024, 1024, 480)
            .iter()
            .chain(&composed_taps(256, 1024, 768, 360))
        {
            let sum: f32 = taps.weights.iter().sum();
            assert!((sum - 1.0).abs() < 1e-6 && taps.count <= 3);
        }
        // Upscaling 1024 -> 4000 keeps supports short too.
        assert!(
            composed_taps(256, 1024, 1024, 4000)
                .iter()
                .all(|t| t.count <= 3)
        );
    }

    #[test]
    fn windowed_thresholding_matches_the_literal_two_step_resize() {
        // Small model: 8x8 logits over a 32 input, content 32x24, original 20x15.
        let (low, input, content, out) = (8, 32, (32, 24), (20, 15));
        let mut logits = vec![-5.0f32; 64];
        for (i, v) in [
            (18, 3.0),
            (19, 0.5),
            (26, 1.5),
            (27, -0.5),
            (34, 0.2),
            (20, -0.9),
        ] {
            logits[i] = v;
        }
        let upscaler = MaskUpscaler::new(low, input, content.0, content.1, out.0, out.1);
        let crop = CropBox::whole(20, 15);
        let mask = upscaler.threshold(&logits, 0.0, 1.0, &crop, 20, 15);
        let dense = reference(&logits, low, input, content, out);
        let expected: Vec<bool> = dense.iter().map(|&v| v > 0.0).collect();
        assert_eq!(mask.rle.to_bitmap(), expected);
        let inter = dense.iter().filter(|&&v| v > 1.0).count() as f32;
        let union = dense.iter().filter(|&&v| v > -1.0).count() as f32;
        assert!((mask.stability_score - inter / union).abs() < 1e-6);
        assert_eq!(mask.bbox_in_crop, mask.rle.bbox());
        assert!(mask.rle.area() > 0);
    }

    #[test]
    fn masks_are_placed_inside_their_crop_and_empty_logits_give_nothing() {
        let upscaler = MaskUpscaler::new(4, 8, 8, 8, 4, 4);
        let crop = CropBox {
            x0: 2,
            y0: 1,
            x1: 6,
            y1: 5,
            layer: 1,
        };
        let mask = upscaler.threshold(&[5.0; 16], 0.0, 1.0, &crop, 8, 6);
        assert_eq!(mask.rle.area(), 16);
        assert_eq!(
            mask.rle.bbox(),
            BoxXyxy {
                x0: 2,
                y0: 1,
                x1: 5,
                y1: 4
            }
        );
        assert_eq!(
            mask.bbox_in_crop,
            BoxXyxy {
                x0: 0,
                y0: 0,
                x1: 3,
                y1: 3
            }
        );
        assert_eq!(mask.stability_score, 1.0);
        let none = upscaler.threshold(&[-3.0; 16], 0.0, 1.0, &crop, 8, 6);
        assert!(none.rle.runs.is_empty());
        assert_eq!(none.stability_score, 0.0);
    }
}

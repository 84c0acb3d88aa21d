//! SAM masks and the per-batch filtering of decoder outputs (`_process_batch` of the reference generator).

use crate::grid::{CropBox, is_box_near_crop_edge};
use crate::nms::nms;
use crate::regions::{RegionMode, remove_small_regions};
use crate::rle::{BoxXyxy, Rle};
use crate::upscale::MaskUpscaler;

/// One generated mask, in the original image's frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Mask {
    pub segmentation: Rle,
    pub bbox: BoxXyxy,
    pub area: u32,
    pub predicted_iou: f32,
    pub stability_score: f32,
    /// The point prompt that produced it, in original image pixels.
    pub point: [f32; 2],
    pub crop_box: CropBox,
}

/// The thresholds a decoder output must pass to become a mask.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AmgThresholds {
    pub pred_iou_thresh: f32,
    pub stability_score_thresh: f32,
    pub stability_score_offset: f32,
    pub mask_threshold: f32,
}

impl Default for AmgThresholds {
    fn default() -> Self {
        Self {
            pred_iou_thresh: 0.88,
            stability_score_thresh: 0.95,
            stability_score_offset: 1.0,
            mask_threshold: 0.0,
        }
    }
}

/// Turns one decoder batch into the masks that pass the thresholds, in prompt order (3 candidates per prompt).
///
/// `points`: the prompts in original image pixels; `iou_predictions`: `[B, 3]`; `low_res_logits`:
/// `[B, 3, side, side]`. The predicted-IoU filter runs first, so rejected candidates are never upscaled.
pub fn masks_from_decoder_batch(
    points: &[[f32; 2]],
    iou_predictions: &[f32],
    low_res_logits: &[f32],
    upscaler: &MaskUpscaler,
    crop: &CropBox,
    (image_width, image_height): (u32, u32),
    thresholds: &AmgThresholds,
) -> Vec<Mask> {
    let candidates = iou_predictions.len();
    assert_eq!(candidates, points.len() * 3, "three masks per prompt");
    let plane = low_res_logits.len() / candidates.max(1);
    let mut masks = Vec::new();
    for (candidate, &predicted_iou) in iou_predictions.iter().enumerate() {
        if thresholds.pred_iou_thresh > 0.0 && predicted_iou <= thresholds.pred_iou_thresh {
            continue;
        }
        let logits = &low_res_logits[candidate * plane..(candidate + 1) * plane];
        let upscaled = upscaler.threshold(
            logits,
            thresholds.mask_threshold,
            thresholds.stability_score_offset,
            crop,
            image_width,
            image_height,
        );
        if thresholds.stability_score_thresh > 0.0
            && upscaled.stability_score < thresholds.stability_score_thresh
        {
            continue;
        }
        if is_box_near_crop_edge(
            &upscaled.bbox_in_crop,
            crop,
            image_width,
            image_height,
            20.0,
        ) {
            continue;
        }
        let bbox = if upscaled.rle.runs.is_empty() {
            BoxXyxy::default()
        } else {
            let b = upscaled.bbox_in_crop;
            BoxXyxy {
                x0: b.x0 + crop.x0,
                y0: b.y0 + crop.y0,
                x1: b.x1 + crop.x0,
                y1: b.y1 + crop.y0,
            }
        };
        masks.push(Mask {
            area: upscaled.rle.area(),
            segmentation: upscaled.rle,
            bbox,
            predicted_iou,
            stability_score: upscaled.stability_score,
            point: points[candidate / 3],
            crop_box: *crop,
        });
    }
    masks
}

/// Fills small holes and drops small islands in every mask, then removes new duplicates with box NMS, preferring
/// masks that needed no change (SAM's `postprocess_small_regions`). Keeps the input order of the survivors'
/// NMS ranking.
pub fn postprocess_small_regions(masks: Vec<Mask>, min_area: u32, nms_thresh: f32) -> Vec<Mask> {
    if masks.is_empty() || min_area == 0 {
        return masks;
    }
    let mut cleaned = Vec::with_capacity(masks.len());
    let mut scores = Vec::with_capacity(masks.len());
    for mask in masks {
        let (w, h) = (mask.segmentation.width, mask.segmentation.height);
        let mut bitmap = mask.segmentation.to_bitmap();
        let mut changed = false;
        for mode in [RegionMode::Holes, RegionMode::Islands] {
            if let Some(new) =
                remove_small_regions(&bitmap, w as usize, h as usize, f64::from(min_area), mode)
            {
                bitmap = new;
                changed = true;
            }
        }
        scores.push(if changed { 0.0 } else { 1.0 });
        cleaned.push(if changed {
            let segmentation = Rle::from_bitmap(&bitmap, w, h);
            Mask {
                area: segmentation.area(),
                bbox: segmentation.bbox(),
                segmentation,
                ..mask
            }
        } else {
            mask
        });
    }
    let boxes: Vec<BoxXyxy> = cleaned.iter().map(|m| m.bbox).collect();
    let keep = nms(&boxes, &scores, nms_thresh);
    let mut slots: Vec<Option<Mask>> = cleaned.into_iter().map(Some).collect();
    keep.into_iter().filter_map(|i| slots[i].take()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upscaler() -> MaskUpscaler {
        // 4x4 logits over an 8x8 input, content 8x8, original 4x4: every output pixel is one low-res pixel
        // blended with its neighbours, so uniform blocks stay uniform.
        MaskUpscaler::new(4, 8, 8, 8, 4, 4)
    }

    #[test]
    fn filters_by_predicted_iou_then_stability() {
        let points = [[1.0, 1.0]];
        let confident = [9.0f32; 16];
        let mut unstable = [0.5f32; 16];
        unstable[0] = 9.0;
        let logits: Vec<f32> = confident
            .iter()
            .chain(&unstable)
            .chain(&confident)
            .copied()
            .collect();
        let crop = CropBox::whole(4, 4);
        let masks = masks_from_decoder_batch(
            &points,
            &[0.95, 0.97, 0.5],
            &logits,
            &upscaler(),
            &crop,
            (4, 4),
            &AmgThresholds::default(),
        );
        // Candidate 0 passes; 1 is unstable (few pixels above +1); 2 fails the predicted IoU.
        assert_eq!(masks.len(), 1);
        assert_eq!(masks[0].area, 16);
        assert_eq!(
            masks[0].bbox,
            BoxXyxy {
                x0: 0,
                y0: 0,
                x1: 3,
                y1: 3
            }
        );
        assert_eq!(masks[0].predicted_iou, 0.95);
        assert_eq!(masks[0].point, [1.0, 1.0]);
    }

    #[test]
    fn small_region_cleanup_prefers_unchanged_masks() {
        let make = |rows: &[&str], iou: f32| {
            let bits: Vec<bool> = rows
                .iter()
                .flat_map(|r| r.chars().map(|c| c == '#'))
                .collect();
            let segmentation = Rle::from_bitmap(&bits, 5, 4);
            Mask {
                area: segmentation.area(),
                bbox: segmentation.bbox(),
                segmentation,
                predicted_iou: iou,
                stability_score: 1.0,
                point: [0.0, 0.0],
                crop_box: CropBox::whole(5, 4),
            }
        };
        // The first mask has a stray pixel; cleaned it duplicates the second, which needed no change and wins.
        let stray = make(&["###..", "###..", "###..", "....#"], 0.99);
        let clean = make(&["###..", "###..", "###..", "....."], 0.9);
        let far = make(&["....#", "....#", "....#", "....#"], 0.9);
        let kept = postprocess_small_regions(vec![stray, clean.clone(), far.clone()], 2, 0.7);
        assert_eq!(kept, vec![clean, far]);
    }
}

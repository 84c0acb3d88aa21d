//! Greedy box non-maximum suppression, as torchvision's `batched_nms` with a single category.

use crate::rle::BoxXyxy;

/// IoU of two boxes with torchvision's area convention (see [`BoxXyxy::nms_area`]); 0 when the union is empty.
pub fn box_iou(a: &BoxXyxy, b: &BoxXyxy) -> f32 {
    let width = (a.x1.min(b.x1) as f32 - a.x0.max(b.x0) as f32).max(0.0);
    let height = (a.y1.min(b.y1) as f32 - a.y0.max(b.y0) as f32).max(0.0);
    let intersection = width * height;
    let union = a.nms_area() + b.nms_area() - intersection;
    if union > 0.0 {
        intersection / union
    } else {
        0.0
    }
}

/// Indices of the boxes kept, by decreasing score (ties keep the earlier box first); a box is dropped when its
/// IoU with an already kept box is above `iou_threshold`.
pub fn nms(boxes: &[BoxXyxy], scores: &[f32], iou_threshold: f32) -> Vec<usize> {
    assert_eq!(boxes.len(), scores.len(), "one score per box");
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut kept: Vec<usize> = Vec::new();
    for candidate in order {
        if kept
            .iter()
            .all(|&k| box_iou(&boxes[k], &boxes[candidate]) <= iou_threshold)
        {
            kept.push(candidate);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(x0: u32, y0: u32, x1: u32, y1: u32) -> BoxXyxy {
        BoxXyxy { x0, y0, x1, y1 }
    }

    #[test]
    fn iou_uses_exclusive_style_areas() {
        assert_eq!(box_iou(&b(0, 0, 10, 10), &b(0, 0, 10, 10)), 1.0);
        assert_eq!(box_iou(&b(0, 0, 10, 10), &b(5, 0, 15, 10)), 50.0 / 150.0);
        assert_eq!(box_iou(&b(0, 0, 10, 10), &b(20, 20, 30, 30)), 0.0);
        assert_eq!(box_iou(&b(3, 3, 3, 3), &b(3, 3, 3, 3)), 0.0);
    }

    #[test]
    fn suppresses_overlaps_above_the_threshold_in_score_order() {
        let boxes = [
            b(0, 0, 10, 10),
            b(1, 0, 11, 10),
            b(20, 20, 30, 30),
            b(0, 0, 10, 12),
        ];
        let scores = [0.8, 0.9, 0.5, 0.95];
        // 3 (0.95) kept; 1 vs 3: inter 9*10=90, union 100+120-90=130 -> 0.69 kept; 0 vs 3: 100/120=0.83 dropped.
        assert_eq!(nms(&boxes, &scores, 0.7), vec![3, 1, 2]);
        assert_eq!(nms(&boxes, &scores, 0.99), vec![3, 1, 0, 2]);
    }
}

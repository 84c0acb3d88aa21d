//! Segmentation metrics over a whole split: one confusion matrix, then per-class IoU, mIoU and pixel accuracy.
//! The ignore label (CamVid's 11, "Unlabelled") never counts.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfusionMatrix {
    classes: usize,
    /// Row = ground truth, column = prediction.
    counts: Vec<u64>,
    /// Per ground-truth class, pixels predicted as a label outside the class set: misses that credit no class.
    invalid_predictions: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentationScores {
    /// `None` for a class that appears neither in the ground truth nor in the predictions.
    pub per_class_iou: Vec<Option<f64>>,
    pub miou: f64,
    pub pixel_accuracy: f64,
    pub pixels: u64,
}

impl ConfusionMatrix {
    pub fn new(classes: usize) -> Self {
        Self {
            classes,
            counts: vec![0; classes * classes],
            invalid_predictions: vec![0; classes],
        }
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Adds one frame. Pixels whose ground truth is outside `0..classes` (the ignore label) are skipped;
    /// a prediction outside the class range counts as wrong.
    pub fn add(&mut self, truth: &[u8], predicted: &[u8]) {
        assert_eq!(
            truth.len(),
            predicted.len(),
            "label maps of different sizes"
        );
        for (&t, &p) in truth.iter().zip(predicted) {
            let t = usize::from(t);
            if t >= self.classes {
                continue;
            }
            let p = usize::from(p);
            if p >= self.classes {
                self.invalid_predictions[t] += 1;
                continue;
            }
            self.counts[t * self.classes + p] += 1;
        }
    }

    pub fn merge(&mut self, other: &ConfusionMatrix) {
        assert_eq!(self.classes, other.classes);
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        for (a, b) in self
            .invalid_predictions
            .iter_mut()
            .zip(&other.invalid_predictions)
        {
            *a += b;
        }
    }

    pub fn get(&self, truth: usize, predicted: usize) -> u64 {
        self.counts[truth * self.classes + predicted]
    }

    pub fn scores(&self) -> SegmentationScores {
        let n = self.classes;
        let mut per_class_iou = Vec::with_capacity(n);
        let mut correct = 0u64;
        let mut total = 0u64;
        for c in 0..n {
            let tp = self.get(c, c);
            let gt: u64 = (0..n).map(|p| self.get(c, p)).sum::<u64>() + self.invalid_predictions[c];
            let pred: u64 = (0..n).map(|t| self.get(t, c)).sum();
            let union = gt + pred - tp;
            per_class_iou.push((union > 0).then(|| tp as f64 / union as f64));
            correct += tp;
            total += gt;
        }
        let present: Vec<f64> = per_class_iou.iter().flatten().copied().collect();
        let miou = if present.is_empty() {
            0.0
        } else {
            present.iter().sum::<f64>() / present.len() as f64
        };
        SegmentationScores {
            per_class_iou,
            miou,
            pixel_accuracy: if total > 0 {
                correct as f64 / total as f64
            } else {
                0.0
            },
            pixels: total,
        }
    }
}

impl SegmentationScores {
    /// A plain-text table of per-class IoU followed by mIoU and pixel accuracy.
    pub fn table(&self, class_names: &[String]) -> String {
        let mut out = String::from("| class | IoU |\n|---|---|\n");
        for (name, iou) in class_names.iter().zip(&self.per_class_iou) {
            match iou {
                Some(v) => out.push_str(&format!("| {name} | {v:.4} |\n")),
                None => out.push_str(&format!("| {name} | n/a |\n")),
            }
        }
        out.push_str(&format!(
            "| **mIoU** | **{:.4}** |\n| pixel accuracy | {:.4} |\n",
            self.miou, self.pixel_accuracy
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_from_a_hand_computed_confusion_matrix() {
        let mut cm = ConfusionMatrix::new(2);
        // truth:  0 0 1 1 (+ one ignored pixel)
        // pred:   0 1 1 1
        cm.add(&[0, 0, 1, 1, 11], &[0, 1, 1, 1, 0]);
        let s = cm.scores();
        assert_eq!(s.per_class_iou, vec![Some(0.5), Some(2.0 / 3.0)]);
        assert!((s.miou - (0.5 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        assert_eq!(s.pixel_accuracy, 0.75);
        assert_eq!(s.pixels, 4);
    }

    #[test]
    fn absent_classes_do_not_drag_the_mean() {
        let mut cm = ConfusionMatrix::new(3);
        cm.add(&[0, 0], &[0, 0]);
        let s = cm.scores();
        assert_eq!(s.per_class_iou, vec![Some(1.0), None, None]);
        assert_eq!(s.miou, 1.0);
    }

    #[test]
    fn merged_matrices_equal_one_matrix_over_all_frames() {
        let mut a = ConfusionMatrix::new(2);
        let mut b = ConfusionMatrix::new(2);
        let mut whole = ConfusionMatrix::new(2);
        a.add(&[0, 1], &[1, 1]);
        b.add(&[1, 0], &[1, 0]);
        whole.add(&[0, 1, 1, 0], &[1, 1, 1, 0]);
        a.merge(&b);
        assert_eq!(a, whole);
    }
}

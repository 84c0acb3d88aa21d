//! Fusing SAM masks with the edge model's per-pixel class scores into a refined label map.
//!
//! Every rule labels whole masks and paints them largest first, so smaller (usually finer) masks overwrite the
//! larger ones they sit in; pixels no mask covers keep the edge label.

use crate::mask::Mask;

/// Per-pixel class probabilities, CHW, row-major planes.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassScores {
    pub probabilities: Vec<f32>,
    pub classes: usize,
    pub width: u32,
    pub height: u32,
}

impl ClassScores {
    fn plane(&self) -> usize {
        (self.width * self.height) as usize
    }

    /// Argmax labels (ties go to the lower class).
    pub fn labels(&self) -> Vec<u8> {
        let plane = self.plane();
        (0..plane)
            .map(|p| {
                let mut best = 0;
                for c in 1..self.classes {
                    if self.probabilities[c * plane + p] > self.probabilities[best * plane + p] {
                        best = c;
                    }
                }
                best as u8
            })
            .collect()
    }

    /// Top-1 minus top-2 probability per pixel.
    pub fn margins(&self) -> Vec<f32> {
        let plane = self.plane();
        (0..plane)
            .map(|p| {
                let (mut first, mut second) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
                for c in 0..self.classes {
                    let v = self.probabilities[c * plane + p];
                    if v > first {
                        second = first;
                        first = v;
                    } else if v > second {
                        second = v;
                    }
                }
                if self.classes < 2 {
                    1.0
                } else {
                    first - second
                }
            })
            .collect()
    }

    /// Nearest-neighbour resampling to another size (e.g. from the edge model's input size to the frame's).
    pub fn resized_nearest(&self, width: u32, height: u32) -> Self {
        if (width, height) == (self.width, self.height) {
            return self.clone();
        }
        let (sw, sh) = (self.width as usize, self.height as usize);
        let source_x: Vec<usize> = (0..width as usize)
            .map(|x| (x * sw / width as usize).min(sw - 1))
            .collect();
        let source_y: Vec<usize> = (0..height as usize)
            .map(|y| (y * sh / height as usize).min(sh - 1))
            .collect();
        let mut probabilities = Vec::with_capacity(self.classes * width as usize * height as usize);
        for c in 0..self.classes {
            let plane = &self.probabilities[c * sw * sh..(c + 1) * sw * sh];
            for &y in &source_y {
                probabilities.extend(source_x.iter().map(|&x| plane[y * sw + x]));
            }
        }
        Self {
            probabilities,
            classes: self.classes,
            width,
            height,
        }
    }

    /// Two independent opinions about the same pixels combined as a product of experts: the normalised product of
    /// their probabilities, each raised to its expert's exponent, so a class wins where both find it plausible and
    /// either can rule one out, and an expert known to be overconfident counts for less. Each probability is floored
    /// at `PRODUCT_FLOOR` so one overconfident zero cannot veto alone. `None` when the two disagree on size or
    /// class count.
    pub fn product(&self, other: &ClassScores, exponents: ExpertExponents) -> Option<ClassScores> {
        if (self.classes, self.width, self.height) != (other.classes, other.width, other.height) {
            return None;
        }
        let plain = exponents == ExpertExponents::EQUAL;
        let plane = self.plane();
        let mut probabilities: Vec<f32> = self
            .probabilities
            .iter()
            .zip(&other.probabilities)
            .map(|(a, b)| {
                let (a, b) = (a.max(PRODUCT_FLOOR), b.max(PRODUCT_FLOOR));
                if plain {
                    a * b
                } else {
                    a.powf(exponents.first) * b.powf(exponents.second)
                }
            })
            .collect();
        for p in 0..plane {
            let total: f32 = (0..self.classes)
                .map(|c| probabilities[c * plane + p])
                .sum();
            for c in 0..self.classes {
                probabilities[c * plane + p] /= total;
            }
        }
        Some(ClassScores {
            probabilities,
            ..*self
        })
    }
}

/// The least probability either expert's opinion counts with in [`ClassScores::product`].
pub const PRODUCT_FLOOR: f32 = 1e-6;

/// The exponents of a two-expert product (`p_first^first * p_second^second`, normalised).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExpertExponents {
    pub first: f32,
    pub second: f32,
}

impl ExpertExponents {
    /// The plain product: both experts count alike.
    pub const EQUAL: Self = Self {
        first: 1.0,
        second: 1.0,
    };
}

/// Labelled pixels with both experts' log-probabilities, `classes` values per pixel each.
pub struct ExpertEvidence<'a> {
    pub first_log_probabilities: &'a [f32],
    pub second_log_probabilities: &'a [f32],
    pub labels: &'a [u8],
    pub classes: usize,
}

impl ExpertEvidence<'_> {
    /// Mean negative log-likelihood of the labels under the normalised weighted product.
    pub fn negative_log_likelihood(&self, exponents: ExpertExponents) -> f64 {
        let k = self.classes;
        let mut mixed = vec![0.0f32; k];
        let mut total = 0.0f64;
        for (pixel, &label) in self.labels.iter().enumerate() {
            let first = &self.first_log_probabilities[pixel * k..(pixel + 1) * k];
            let second = &self.second_log_probabilities[pixel * k..(pixel + 1) * k];
            for ((m, a), b) in mixed.iter_mut().zip(first).zip(second) {
                *m = exponents.first * a + exponents.second * b;
            }
            let max = mixed.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let log_sum = max + mixed.iter().map(|m| (m - max).exp()).sum::<f32>().ln();
            total += f64::from(log_sum - mixed[usize::from(label)]);
        }
        total / self.labels.len().max(1) as f64
    }

    /// The exponents on `grid` x `grid` with the lowest negative log-likelihood (a stacking of the two experts
    /// fitted by maximum likelihood), with that likelihood.
    pub fn fit_exponents(&self, grid: &[f32]) -> (ExpertExponents, f64) {
        let mut best = (
            ExpertExponents::EQUAL,
            self.negative_log_likelihood(ExpertExponents::EQUAL),
        );
        for &first in grid {
            for &second in grid {
                let exponents = ExpertExponents { first, second };
                let nll = self.negative_log_likelihood(exponents);
                if nll < best.1 {
                    best = (exponents, nll);
                }
            }
        }
        best
    }
}

/// Parameters of [`FusionRule::ConfidentVote`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConfidentVoteParams {
    /// A mask whose confidence-weighted winning share is below this straddles classes: it is left to the edge.
    pub min_purity: f32,
    /// Edge pixels at least this confident keep their own label inside a mask.
    pub keep_confidence: f32,
}

/// Tuned on 10 day-val frames (not the dusk evaluation split) with guided prompting.
impl Default for ConfidentVoteParams {
    fn default() -> Self {
        Self {
            min_purity: 0.5,
            keep_confidence: 0.8,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FusionRule {
    /// Semantic-SAM style: each mask takes the most frequent edge label inside it.
    SsaVote,
    /// Ianvs style: each mask takes the argmax of the class scores summed over it.
    LogitSum,
    /// Votes weighted by the edge's top-1 probability, straddling masks skipped, confident edge pixels kept.
    ConfidentVote(ConfidentVoteParams),
}

impl FusionRule {
    /// `ssa-vote`, `logit-sum` or `confident-vote` (with its default parameters).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "ssa-vote" => Some(FusionRule::SsaVote),
            "logit-sum" => Some(FusionRule::LogitSum),
            "confident-vote" => Some(FusionRule::ConfidentVote(ConfidentVoteParams::default())),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            FusionRule::SsaVote => "ssa-vote",
            FusionRule::LogitSum => "logit-sum",
            FusionRule::ConfidentVote(_) => "confident-vote",
        }
    }
}

/// Refined labels at the scores' size (which must be the masks' size).
pub fn fuse(rule: &FusionRule, masks: &[Mask], scores: &ClassScores) -> Vec<u8> {
    let edge_labels = scores.labels();
    let plane = edge_labels.len();
    let mut refined = edge_labels.clone();
    let classes = scores.classes;
    let confidence: Vec<f32> = match rule {
        FusionRule::ConfidentVote(_) => (0..plane)
            .map(|p| scores.probabilities[usize::from(edge_labels[p]) * plane + p])
            .collect(),
        _ => Vec::new(),
    };
    for mask in painting_order(masks, plane) {
        let mut totals = vec![0.0f64; classes];
        for_each_pixel(mask, |p| match rule {
            FusionRule::SsaVote => totals[usize::from(edge_labels[p])] += 1.0,
            FusionRule::LogitSum => {
                for (c, total) in totals.iter_mut().enumerate() {
                    *total += f64::from(scores.probabilities[c * plane + p]);
                }
            }
            FusionRule::ConfidentVote(_) => {
                totals[usize::from(edge_labels[p])] += f64::from(confidence[p])
            }
        });
        let Some(winner) = argmax(&totals) else {
            continue;
        };
        match rule {
            FusionRule::SsaVote | FusionRule::LogitSum => {
                for_each_pixel(mask, |p| refined[p] = winner)
            }
            FusionRule::ConfidentVote(params) => {
                let sum: f64 = totals.iter().sum();
                if totals[usize::from(winner)] < f64::from(params.min_purity) * sum {
                    continue;
                }
                for_each_pixel(mask, |p| {
                    refined[p] = if confidence[p] >= params.keep_confidence {
                        edge_labels[p]
                    } else {
                        winner
                    };
                });
            }
        }
    }
    refined
}

/// The ceiling of mask-level labelling: each mask takes the most frequent ground-truth label inside it (labels
/// `>= classes` are ignored; masks with no labelled pixel are skipped). For benchmarks only.
pub fn fuse_oracle(masks: &[Mask], edge_labels: &[u8], truth: &[u8], classes: usize) -> Vec<u8> {
    let mut refined = edge_labels.to_vec();
    for mask in painting_order(masks, edge_labels.len()) {
        let mut counts = vec![0.0f64; classes];
        for_each_pixel(mask, |p| {
            if usize::from(truth[p]) < classes {
                counts[usize::from(truth[p])] += 1.0;
            }
        });
        if let Some(winner) = argmax(&counts) {
            for_each_pixel(mask, |p| refined[p] = winner);
        }
    }
    refined
}

/// Largest first (stable for equal areas), checking every mask matches the label map's size.
fn painting_order(masks: &[Mask], plane: usize) -> Vec<&Mask> {
    let mut ordered: Vec<&Mask> = masks.iter().collect();
    for mask in &ordered {
        assert_eq!(
            (mask.segmentation.width * mask.segmentation.height) as usize,
            plane,
            "masks and scores must have the same size"
        );
    }
    ordered.sort_by_key(|m| std::cmp::Reverse(m.area));
    ordered
}

fn for_each_pixel(mask: &Mask, mut visit: impl FnMut(usize)) {
    for run in &mask.segmentation.runs {
        (run.start as usize..(run.start + run.len) as usize).for_each(&mut visit);
    }
}

/// Index of the largest positive total (ties go to the lower class), `None` if all are zero.
fn argmax(totals: &[f64]) -> Option<u8> {
    let mut best: Option<usize> = None;
    for (c, &t) in totals.iter().enumerate() {
        if t > 0.0 && best.is_none_or(|b| t > totals[b]) {
            best = Some(c);
        }
    }
    best.map(|c| c as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grid::CropBox;
    use crate::rle::Rle;

    /// A 4x2 frame with 3 classes; `probabilities` lists each pixel's (p0, p1, p2).
    fn scores(pixels: [[f32; 3]; 8]) -> ClassScores {
        let probabilities = (0..3)
            .flat_map(|c| pixels.iter().map(move |p| p[c]))
            .collect();
        ClassScores {
            probabilities,
            classes: 3,
            width: 4,
            height: 2,
        }
    }

    fn mask(rows: [&str; 2]) -> Mask {
        let bits: Vec<bool> = rows
            .iter()
            .flat_map(|r| r.chars().map(|c| c == '#'))
            .collect();
        let segmentation = Rle::from_bitmap(&bits, 4, 2);
        Mask {
            area: segmentation.area(),
            bbox: segmentation.bbox(),
            segmentation,
            predicted_iou: 0.9,
            stability_score: 0.96,
            point: [0.0, 0.0],
            crop_box: CropBox::whole(4, 2),
        }
    }

    const A: [f32; 3] = [0.6, 0.3, 0.1];
    const B: [f32; 3] = [0.1, 0.5, 0.4];
    const C: [f32; 3] = [0.0, 0.0, 1.0];
    const SURE_A: [f32; 3] = [0.97, 0.02, 0.01];

    #[test]
    fn the_product_of_two_opinions_picks_the_class_both_find_plausible() {
        let edge = scores([[0.5, 0.4, 0.1]; 8]);
        let head = scores([[0.1, 0.5, 0.4]; 8]);
        let combined = edge.product(&head, ExpertExponents::EQUAL).unwrap();
        // 0.05 : 0.20 : 0.04, normalised; neither input alone picks class 1 over both others this clearly.
        assert_eq!(combined.labels(), vec![1; 8]);
        assert!((combined.probabilities[8] - 0.20 / 0.29).abs() < 1e-6);
        let sums: Vec<f32> = (0..8)
            .map(|p| (0..3).map(|c| combined.probabilities[c * 8 + p]).sum())
            .collect();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-6));
        // A hard zero in one opinion is floored, not an absolute veto.
        let certain = scores([[0.0, 0.0, 1.0]; 8]);
        let doubtful = scores([[0.0, 0.999999, 0.000001]; 8]);
        assert!(
            certain
                .product(&doubtful, ExpertExponents::EQUAL)
                .unwrap()
                .probabilities
                .iter()
                .all(|p| p.is_finite())
        );
        let smaller = ClassScores {
            width: 2,
            ..scores([[1.0, 0.0, 0.0]; 8])
        };
        assert!(edge.product(&smaller, ExpertExponents::EQUAL).is_none());
    }

    #[test]
    fn exponents_weigh_the_experts() {
        let edge = scores([[0.5, 0.4, 0.1]; 8]);
        let head = scores([[0.1, 0.5, 0.4]; 8]);
        // Exponent 0 silences an expert: the product is the other one's opinion.
        let edge_only = ExpertExponents {
            first: 1.0,
            second: 0.0,
        };
        let alone = edge.product(&head, edge_only).unwrap();
        assert!(
            alone
                .probabilities
                .iter()
                .zip(&edge.probabilities)
                .all(|(a, b)| (a - b).abs() < 1e-6)
        );
        // sqrt(edge) * head: 0.0707 : 0.3162 : 0.1265, normalised.
        let half = ExpertExponents {
            first: 0.5,
            second: 1.0,
        };
        let weighted = edge.product(&head, half).unwrap();
        let expected =
            0.5f32.sqrt() * 0.1 / (0.5f32.sqrt() * 0.1 + 0.4f32.sqrt() * 0.5 + 0.1f32.sqrt() * 0.4);
        assert!((weighted.probabilities[0] - expected).abs() < 1e-6);
    }

    #[test]
    fn the_fitted_exponents_trust_the_calibrated_expert_over_the_overconfident_one() {
        // Two classes, 100 labelled pixels, truth alternating. The first expert says 0.95 for its pick and is right
        // on 60 pixels; the second says 0.7 for its pick and is right on 80.
        let classes = 2;
        let labels: Vec<u8> = (0..100).map(|i| (i % 2) as u8).collect();
        let opinion = |right: bool, label: u8, confidence: f32| -> [f32; 2] {
            let pick = if right { label } else { 1 - label };
            let mut p = [1.0 - confidence; 2];
            p[usize::from(pick)] = confidence;
            [p[0].ln(), p[1].ln()]
        };
        let first: Vec<f32> = labels
            .iter()
            .enumerate()
            .flat_map(|(i, &l)| opinion(i % 5 < 3, l, 0.95))
            .collect();
        let second: Vec<f32> = labels
            .iter()
            .enumerate()
            .flat_map(|(i, &l)| opinion(i % 5 != 4, l, 0.7))
            .collect();
        let evidence = ExpertEvidence {
            first_log_probabilities: &first,
            second_log_probabilities: &second,
            labels: &labels,
            classes,
        };
        let grid: Vec<f32> = (0..=30).map(|i| i as f32 * 0.1).collect();
        let (fitted, nll) = evidence.fit_exponents(&grid);
        assert!(fitted.first < fitted.second, "{fitted:?}");
        assert!(nll < evidence.negative_log_likelihood(ExpertExponents::EQUAL));
        // Likelihood by hand for the second expert alone: 80 pixels at ln 0.7, 20 at ln 0.3.
        let second_only = ExpertExponents {
            first: 0.0,
            second: 1.0,
        };
        let by_hand = -(0.8 * 0.7f64.ln() + 0.2 * 0.3f64.ln());
        assert!((evidence.negative_log_likelihood(second_only) - by_hand).abs() < 1e-5);
    }

    #[test]
    fn ssa_vote_takes_the_majority_and_small_masks_win() {
        // Edge labels: 0 1 1 0 / 2 2 1 0.
        let s = scores([A, B, B, A, C, C, B, A]);
        let big = mask(["####", "###."]);
        let small = mask(["....", "##.."]);
        assert_eq!(
            fuse(&FusionRule::SsaVote, &[small.clone(), big.clone()], &s),
            vec![1, 1, 1, 1, 2, 2, 1, 0]
        );
        // Without the small mask the big one paints everything it covers.
        assert_eq!(
            fuse(&FusionRule::SsaVote, &[big], &s),
            vec![1, 1, 1, 1, 1, 1, 1, 0]
        );
        assert_eq!(fuse(&FusionRule::SsaVote, &[], &s), s.labels());
    }

    #[test]
    fn logit_sum_takes_the_argmax_of_summed_scores() {
        let s = scores([A, A, C, B, A, A, A, A]);
        let m = mask(["###.", "...."]);
        // class0 = 1.2, class1 = 0.6, class2 = 1.2 (tie goes to 0); vote also says 0.
        assert_eq!(
            fuse(&FusionRule::LogitSum, std::slice::from_ref(&m), &s)[..4],
            [0, 0, 0, 1]
        );
        let s = scores([A, C, C, B, A, A, A, A]);
        // Votes: 0 once, 2 twice -> 2; sums: class0 0.6, class2 2.1 -> 2.
        assert_eq!(
            fuse(&FusionRule::LogitSum, std::slice::from_ref(&m), &s)[..4],
            [2, 2, 2, 1]
        );
        let s = scores([B, B, SURE_A, A, A, A, A, A]);
        // Votes say 1 (2 of 3); sums: class0 0.1+0.1+0.97 = 1.17, class1 1.02 -> 0.
        assert_eq!(
            fuse(&FusionRule::SsaVote, std::slice::from_ref(&m), &s)[..3],
            [1, 1, 1]
        );
        assert_eq!(fuse(&FusionRule::LogitSum, &[m], &s)[..3], [0, 0, 0]);
    }

    #[test]
    fn confident_vote_weighs_skips_straddling_masks_and_keeps_sure_pixels() {
        let params = ConfidentVoteParams {
            min_purity: 0.6,
            keep_confidence: 0.95,
        };
        let rule = FusionRule::ConfidentVote(params);
        // Mask over B, B, SURE_A: weights 0.5 + 0.5 for class 1, 0.97 for class 0 -> 0 wins with 0.97/1.97 < 0.6.
        let s = scores([B, B, SURE_A, A, A, A, A, A]);
        let m = mask(["###.", "...."]);
        assert_eq!(fuse(&rule, std::slice::from_ref(&m), &s), s.labels());
        // Mask over B, B, B, SURE_A: class 1 has 1.5 of 2.47 = 0.61 -> painted 1, but the sure pixel stays 0.
        let m = mask(["####", "...."]);
        let s = scores([B, B, B, SURE_A, A, A, A, A]);
        assert_eq!(fuse(&rule, &[m], &s)[..4], [1, 1, 1, 0]);
    }

    #[test]
    fn oracle_votes_ground_truth_ignoring_unlabelled_pixels() {
        let edge = vec![0; 8];
        let truth = vec![11, 11, 2, 1, 11, 2, 0, 0];
        let m = mask(["####", "##.."]);
        assert_eq!(
            fuse_oracle(std::slice::from_ref(&m), &edge, &truth, 3),
            vec![2, 2, 2, 2, 2, 2, 0, 0]
        );
        let unlabelled = mask(["##..", "...."]);
        assert_eq!(fuse_oracle(&[unlabelled], &edge, &truth, 3), edge);
    }

    #[test]
    fn scores_give_labels_margins_and_resize() {
        let s = scores([A, B, C, SURE_A, A, A, A, [0.4, 0.4, 0.2]]);
        assert_eq!(s.labels(), vec![0, 1, 2, 0, 0, 0, 0, 0]);
        let margins = s.margins();
        assert!(
            (margins[0] - 0.3).abs() < 1e-6 && (margins[2] - 1.0).abs() < 1e-6 && margins[7] == 0.0
        );
        let doubled = s.resized_nearest(8, 4);
        assert_eq!(doubled.labels()[..8], [0, 0, 1, 1, 2, 2, 0, 0]);
        assert_eq!(doubled.resized_nearest(4, 2), s);
    }
}

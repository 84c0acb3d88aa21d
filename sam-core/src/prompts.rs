//! Which point prompts to spend: SAM's full grid, or a budgeted walk over it that skips points already covered
//! by accepted masks, visiting the grid coarse-to-fine (adaptive) or by the edge model's uncertainty (guided).

use crate::fusion::ClassScores;
use crate::rle::Rle;

/// Pixels of the original image already inside an accepted mask.
#[derive(Debug, Clone)]
pub struct CoverageMap {
    width: u32,
    height: u32,
    covered: Vec<bool>,
}

impl CoverageMap {
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            covered: vec![false; (width * height) as usize],
        }
    }

    pub fn add(&mut self, mask: &Rle) {
        for run in &mask.runs {
            self.covered[run.start as usize..(run.start + run.len) as usize].fill(true);
        }
    }

    /// Whether the pixel holding point `(x, y)` (original image pixels) is covered.
    pub fn is_covered(&self, [x, y]: [f32; 2]) -> bool {
        let column = (x.max(0.0) as u32).min(self.width - 1);
        let row = (y.max(0.0) as u32).min(self.height - 1);
        self.covered[(row * self.width + column) as usize]
    }
}

/// The order in which a scheduler visits grid points.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptOrder {
    /// Row by row, as SAM.
    RowMajor,
    /// Sub-grids of stride `n/4`, `n/8`, ..., 1 (a 4x4 grid first, then the points that refine it).
    CoarseToFine,
    /// By decreasing uncertainty of the edge model around each point; points whose uncertainty is below
    /// `min_uncertainty` are never visited.
    Uncertainty { min_uncertainty: f32 },
}

/// Hands out batches of prompts from a square grid in a chosen order, within a budget, skipping covered points.
#[derive(Debug, Clone)]
pub struct PromptScheduler {
    points: Vec<[f32; 2]>,
    order: Vec<usize>,
    next: usize,
    budget: usize,
    skip_covered: bool,
    used: usize,
}

impl PromptScheduler {
    /// `points`: the `n_per_side`² grid in image pixels, row-major; `scores` are required by
    /// [`PromptOrder::Uncertainty`] (without them it falls back to coarse-to-fine); `image_size` is the frame
    /// `points` live in. `budget`: most prompts to hand out.
    pub fn new(
        points: Vec<[f32; 2]>,
        n_per_side: usize,
        order: &PromptOrder,
        scores: Option<&ClassScores>,
        image_size: (u32, u32),
        budget: usize,
        skip_covered: bool,
    ) -> Self {
        assert_eq!(points.len(), n_per_side * n_per_side, "a square grid");
        let order = match (order, scores) {
            (PromptOrder::RowMajor, _) => (0..points.len()).collect(),
            (PromptOrder::Uncertainty { min_uncertainty }, Some(scores)) => {
                uncertainty_order(&points, n_per_side, scores, image_size, *min_uncertainty)
            }
            (PromptOrder::CoarseToFine | PromptOrder::Uncertainty { .. }, _) => {
                coarse_to_fine_order(n_per_side)
            }
        };
        Self {
            points,
            order,
            next: 0,
            budget,
            skip_covered,
            used: 0,
        }
    }

    /// Up to `size` more prompts; empty when the grid or the budget is exhausted.
    pub fn next_batch(&mut self, size: usize, coverage: &CoverageMap) -> Vec<[f32; 2]> {
        let mut batch = Vec::with_capacity(size);
        while batch.len() < size && self.used < self.budget && self.next < self.order.len() {
            let point = self.points[self.order[self.next]];
            self.next += 1;
            if self.skip_covered && coverage.is_covered(point) {
                continue;
            }
            batch.push(point);
            self.used += 1;
        }
        batch
    }

    /// Prompts handed out so far.
    pub fn used(&self) -> usize {
        self.used
    }
}

/// Grid indices by sub-grid: stride `s` visits rows and columns `i` with `i % s == s / 2`, coarsest first.
pub fn coarse_to_fine_order(n_per_side: usize) -> Vec<usize> {
    let mut stride = 1;
    while stride * 8 <= n_per_side {
        stride *= 2;
    }
    let mut seen = vec![false; n_per_side * n_per_side];
    let mut order = Vec::with_capacity(seen.len());
    loop {
        let on_level = |i: usize| i % stride == stride / 2;
        for row in (0..n_per_side).filter(|&r| on_level(r)) {
            for col in (0..n_per_side).filter(|&c| on_level(c)) {
                let index = row * n_per_side + col;
                if !seen[index] {
                    seen[index] = true;
                    order.push(index);
                }
            }
        }
        if stride == 1 {
            break;
        }
        stride /= 2;
    }
    order
}

/// Grid indices by decreasing mean uncertainty `1 - (p_top1 - p_top2)` of the edge scores over each point's grid
/// cell (ties keep grid order), dropping points below `min_uncertainty`.
pub fn uncertainty_order(
    points: &[[f32; 2]],
    n_per_side: usize,
    scores: &ClassScores,
    (image_width, image_height): (u32, u32),
    min_uncertainty: f32,
) -> Vec<usize> {
    let uncertainty: Vec<f32> = scores.margins().iter().map(|m| 1.0 - m).collect();
    let (sw, sh) = (scores.width as f32, scores.height as f32);
    let to_x = sw / image_width as f32;
    let to_y = sh / image_height as f32;
    // Half a grid cell around each point, in score pixels.
    let half_w = 0.5 * image_width as f32 / n_per_side as f32 * to_x;
    let half_h = 0.5 * image_height as f32 / n_per_side as f32 * to_y;
    let mut ranked: Vec<(usize, f32)> = points
        .iter()
        .enumerate()
        .map(|(i, &[x, y])| {
            let (cx, cy) = (x * to_x, y * to_y);
            let x0 = (cx - half_w).floor().max(0.0) as usize;
            let x1 = ((cx + half_w).ceil() as usize).clamp(x0 + 1, scores.width as usize);
            let y0 = (cy - half_h).floor().max(0.0) as usize;
            let y1 = ((cy + half_h).ceil() as usize).clamp(y0 + 1, scores.height as usize);
            let mut sum = 0.0;
            for row in y0..y1 {
                sum += uncertainty
                    [row * scores.width as usize + x0..row * scores.width as usize + x1]
                    .iter()
                    .sum::<f32>();
            }
            (i, sum / ((x1 - x0) * (y1 - y0)) as f32)
        })
        .filter(|&(_, u)| u >= min_uncertainty)
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked.into_iter().map(|(i, _)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rle::RleBuilder;

    #[test]
    fn coarse_to_fine_visits_every_point_once_coarsest_first() {
        let order = coarse_to_fine_order(8);
        // Stride 2 first: rows/cols 1,3,5,7; then the rest row by row.
        assert_eq!(&order[..4], &[9, 11, 13, 15]);
        assert_eq!(order.len(), 64);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..64).collect::<Vec<_>>());
        // 32 per side: a 4x4 sub-grid (stride 8) first.
        let order = coarse_to_fine_order(32);
        assert_eq!(&order[..2], &[4 * 32 + 4, 4 * 32 + 12]);
        assert_eq!(coarse_to_fine_order(2), vec![0, 1, 2, 3]);
    }

    #[test]
    fn uncertainty_ranks_cells_with_low_margins_first() {
        // 2 classes on a 4x2 map: left half certain, right column uncertain, column 2 in between.
        let class0 = [1.0, 1.0, 0.7, 0.5, 1.0, 1.0, 0.7, 0.5];
        let probabilities: Vec<f32> = class0
            .iter()
            .copied()
            .chain(class0.iter().map(|p| 1.0 - p))
            .collect();
        let scores = ClassScores {
            probabilities,
            classes: 2,
            width: 4,
            height: 2,
        };
        // A 2x2 grid over an 8x4 image: points at x = 2, 6 and y = 1, 3; cells are 2x1 score pixels.
        let points = vec![[2.0, 1.0], [6.0, 1.0], [2.0, 3.0], [6.0, 3.0]];
        assert_eq!(
            uncertainty_order(&points, 2, &scores, (8, 4), 0.0),
            vec![1, 3, 0, 2]
        );
        assert_eq!(
            uncertainty_order(&points, 2, &scores, (8, 4), 0.5),
            vec![1, 3]
        );
    }

    #[test]
    fn scheduler_skips_covered_points_and_respects_the_budget() {
        let points = vec![[0.5, 0.5], [1.5, 0.5], [0.5, 1.5], [1.5, 1.5]];
        let mut coverage = CoverageMap::new(2, 2);
        let mut mask = RleBuilder::new(2, 2);
        mask.push(1, 1);
        coverage.add(&mask.finish());
        let mut scheduler = PromptScheduler::new(
            points.clone(),
            2,
            &PromptOrder::RowMajor,
            None,
            (2, 2),
            2,
            true,
        );
        assert_eq!(scheduler.next_batch(1, &coverage), vec![[0.5, 0.5]]);
        assert_eq!(scheduler.next_batch(5, &coverage), vec![[0.5, 1.5]]);
        assert!(scheduler.next_batch(5, &coverage).is_empty());
        assert_eq!(scheduler.used(), 2);
        let mut everything =
            PromptScheduler::new(points, 2, &PromptOrder::RowMajor, None, (2, 2), 10, false);
        assert_eq!(everything.next_batch(10, &coverage).len(), 4);
    }
}

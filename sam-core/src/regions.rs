//! Removal of small islands and holes in a binary mask (SAM's `remove_small_regions`, 8-connectivity as
//! OpenCV's `connectedComponentsWithStats(..., 8)`).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionMode {
    /// Fill background components smaller than the threshold (including ones touching the border, as SAM).
    Holes,
    /// Drop foreground components smaller than the threshold, keeping the largest if all are small.
    Islands,
}

/// Returns the cleaned mask, or `None` when nothing changed.
pub fn remove_small_regions(
    mask: &[bool],
    width: usize,
    height: usize,
    area_threshold: f64,
    mode: RegionMode,
) -> Option<Vec<bool>> {
    let target = mode == RegionMode::Islands;
    let (labels, sizes) = components(mask, width, height, target);
    let small: Vec<bool> = sizes.iter().map(|&s| (s as f64) < area_threshold).collect();
    if !small.iter().any(|&s| s) {
        return None;
    }
    let mut cleaned = mask.to_vec();
    match mode {
        RegionMode::Holes => {
            for (pixel, &label) in cleaned.iter_mut().zip(&labels) {
                if label > 0 && small[label - 1] {
                    *pixel = true;
                }
            }
        }
        RegionMode::Islands => {
            let mut keep: Vec<bool> = small.iter().map(|&s| !s).collect();
            if !keep.iter().any(|&k| k) {
                // First largest component, as `np.argmax` picks.
                let largest = (0..sizes.len())
                    .fold(0, |best, i| if sizes[i] > sizes[best] { i } else { best });
                keep[largest] = true;
            }
            for (pixel, &label) in cleaned.iter_mut().zip(&labels) {
                *pixel = label > 0 && keep[label - 1];
            }
        }
    }
    Some(cleaned)
}

/// Labels (1-based, 0 = not `target`) of the 8-connected components of pixels equal to `target`, numbered in
/// raster order of their first pixel, and their sizes.
fn components(
    mask: &[bool],
    width: usize,
    height: usize,
    target: bool,
) -> (Vec<usize>, Vec<usize>) {
    let mut labels = vec![0usize; mask.len()];
    let mut sizes = Vec::new();
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if mask[start] != target || labels[start] != 0 {
            continue;
        }
        sizes.push(0);
        let label = sizes.len();
        labels[start] = label;
        stack.push(start);
        while let Some(index) = stack.pop() {
            sizes[label - 1] += 1;
            let (x, y) = (index % width, index / width);
            for ny in y.saturating_sub(1)..=(y + 1).min(height - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(width - 1) {
                    let neighbour = ny * width + nx;
                    if mask[neighbour] == target && labels[neighbour] == 0 {
                        labels[neighbour] = label;
                        stack.push(neighbour);
                    }
                }
            }
        }
    }
    (labels, sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(rows: &[&str]) -> (Vec<bool>, usize, usize) {
        let bits = rows
            .iter()
            .flat_map(|r| r.chars().map(|c| c == '#'))
            .collect();
        (bits, rows[0].len(), rows.len())
    }

    #[test]
    fn fills_small_holes_only() {
        let (mask, w, h) = parse(&["#####.", "#.####", "######", "##..##", "##..##"]);
        let (expected, _, _) = parse(&["######", "######", "######", "##..##", "##..##"]);
        // Holes: the corner pixel (1, touching the border), the single pixel (1) and the 2x2 block (4).
        assert_eq!(
            remove_small_regions(&mask, w, h, 2.0, RegionMode::Holes),
            Some(expected)
        );
        assert_eq!(
            remove_small_regions(&mask, w, h, 1.0, RegionMode::Holes),
            None
        );
    }

    #[test]
    fn drops_small_islands_with_diagonal_connectivity() {
        let (mask, w, h) = parse(&["##...#", "##....", "..#...", "......"]);
        // The diagonal pixel joins the 2x2 block (5 pixels); the lone corner pixel is an island of 1.
        let (expected, _, _) = parse(&["##....", "##....", "..#...", "......"]);
        assert_eq!(
            remove_small_regions(&mask, w, h, 2.0, RegionMode::Islands),
            Some(expected)
        );
    }

    #[test]
    fn keeps_the_largest_island_when_all_are_small() {
        let (mask, w, h) = parse(&["#..##", ".....", "#...."]);
        let (expected, _, _) = parse(&["...##", ".....", "....."]);
        assert_eq!(
            remove_small_regions(&mask, w, h, 10.0, RegionMode::Islands),
            Some(expected)
        );
    }
}

//! The edge's quantised class scores: back to probabilities, and up to the frame's resolution for fusion.

use sam_core::ClassScores;
use wire::QuantisedScores;

/// Rebuilds probabilities from the `edge_scores` part; `bytes.len()` must equal `shape.len()`.
pub fn dequantise_scores(bytes: &[u8], shape: QuantisedScores) -> ClassScores {
    debug_assert_eq!(bytes.len(), shape.len());
    ClassScores {
        probabilities: wire::dequantise(bytes),
        classes: shape.classes as usize,
        width: shape.width,
        height: shape.height,
    }
}

/// Bilinear resampling with pixel centres aligned (`align_corners=false`, as PyTorch's `interpolate` and the edge
/// model's own upsampling), so the low-resolution scores land where the edge computed them.
pub fn upsample_bilinear(scores: &ClassScores, width: u32, height: u32) -> ClassScores {
    if (width, height) == (scores.width, scores.height) {
        return scores.clone();
    }
    let x_taps = taps(scores.width as usize, width as usize);
    let y_taps = taps(scores.height as usize, height as usize);
    let (source_width, source_plane) = (
        scores.width as usize,
        (scores.width * scores.height) as usize,
    );
    let mut probabilities = Vec::with_capacity(scores.classes * width as usize * height as usize);
    for class in 0..scores.classes {
        let plane = &scores.probabilities[class * source_plane..(class + 1) * source_plane];
        for &(y0, y1, wy) in &y_taps {
            let (row0, row1) = (&plane[y0 * source_width..], &plane[y1 * source_width..]);
            probabilities.extend(x_taps.iter().map(|&(x0, x1, wx)| {
                let top = row0[x0] + (row0[x1] - row0[x0]) * wx;
                let bottom = row1[x0] + (row1[x1] - row1[x0]) * wx;
                top + (bottom - top) * wy
            }));
        }
    }
    ClassScores {
        probabilities,
        classes: scores.classes,
        width,
        height,
    }
}

/// For each output coordinate: the two source neighbours and the weight of the second.
fn taps(source: usize, target: usize) -> Vec<(usize, usize, f32)> {
    let scale = source as f32 / target as f32;
    (0..target)
        .map(|i| {
            let position = ((i as f32 + 0.5) * scale - 0.5).clamp(0.0, (source - 1) as f32);
            let low = position.floor() as usize;
            let high = (low + 1).min(source - 1);
            (low, high, position - low as f32)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(probabilities: Vec<f32>, classes: usize, width: u32, height: u32) -> ClassScores {
        ClassScores {
            probabilities,
            classes,
            width,
            height,
        }
    }

    #[test]
    fn bilinear_interpolates_between_pixel_centres() {
        // One class, 2x1: values 0 and 1. At 4x1 the centres fall at source x = -0.25, 0.25, 0.75, 1.25.
        let up = upsample_bilinear(&scores(vec![0.0, 1.0], 1, 2, 1), 4, 1);
        assert_eq!(up.probabilities, vec![0.0, 0.25, 0.75, 1.0]);
    }

    #[test]
    fn upsampling_keeps_planes_apart_and_a_constant_constant() {
        let low = scores(
            vec![0.2; 6].into_iter().chain(vec![0.8; 6]).collect(),
            2,
            3,
            2,
        );
        let up = upsample_bilinear(&low, 7, 5);
        assert_eq!(up.probabilities.len(), 2 * 7 * 5);
        assert!(
            up.probabilities[..35]
                .iter()
                .all(|p| (p - 0.2).abs() < 1e-6)
        );
        assert!(
            up.probabilities[35..]
                .iter()
                .all(|p| (p - 0.8).abs() < 1e-6)
        );
        assert!(up.labels().iter().all(|&l| l == 1));
    }

    #[test]
    fn dequantised_scores_keep_their_shape() {
        let shape = QuantisedScores {
            classes: 2,
            height: 1,
            width: 2,
        };
        let scores = dequantise_scores(&[255, 0, 0, 255], shape);
        assert_eq!(scores.labels(), vec![0, 1]);
    }
}

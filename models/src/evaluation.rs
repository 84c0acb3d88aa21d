//! Whole-split evaluation of the deployed (ONNX) edge model against labelled frames.

use crate::dataset::Sample;
use crate::edge::EdgeModel;
use crate::metrics::{ConfusionMatrix, SegmentationScores};

#[derive(Debug, thiserror::Error)]
pub enum EvaluationError {
    #[error(transparent)]
    Dataset(#[from] crate::dataset::DatasetError),
    #[error(transparent)]
    Model(#[from] crate::edge::EdgeModelError),
}

/// Scores and per-frame inference times (ms) of the edge model over `samples`; `on_frame` sees progress.
pub fn evaluate_edge(
    model: &EdgeModel,
    samples: &[Sample],
    mut on_frame: impl FnMut(usize),
) -> Result<(SegmentationScores, Vec<f64>), EvaluationError> {
    let mut matrix = ConfusionMatrix::new(model.num_classes());
    let mut times = Vec::with_capacity(samples.len());
    for (i, sample) in samples.iter().enumerate() {
        let (image, label) = sample.load_labelled()?;
        let output = model.segment(&image)?;
        matrix.add(label.as_raw(), &output.labels);
        times.push(output.inference_ms);
        on_frame(i + 1);
    }
    Ok((matrix.scores(), times))
}

/// Median of a list of timings (0 for an empty list).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

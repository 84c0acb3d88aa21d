//! `benchmarks miners`: which hard-example scorer finds the frames the edge gets wrong?
//!
//! For every frame of each split the edge model runs once; every scorer scores its output; the cloud refinement
//! (MobileSAM + fusion, cached per frame) gives the label map the frame would get if uploaded. Reported per scorer:
//! Spearman correlation between hardness (1 - score) and the edge's per-frame error (1 - pixel accuracy), and the
//! whole-split mIoU of the collaborative result when the hardest 10/20/30% of frames are uploaded, against random
//! selection (mean of 20 seeded draws) and an oracle that uploads the frames with the largest true error.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use hard_example::{
    CrossEntropy, Dims, IanvsConfidence, LeastConfidence, Margin, RareClassWeighted, Scorer,
};
use models::metrics::ConfusionMatrix;
use models::{EdgeModel, SessionConfig};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::cloud_labels::{CloudArgs, CloudLabeller};
use crate::report;
use crate::run::{percentile, test_frames};

#[derive(Args)]
pub struct MinersArgs {
    /// Edge model directory.
    #[arg(long, default_value = "models/edge/current")]
    model: PathBuf,
    /// Index files to evaluate (each reported on its own).
    #[arg(long = "index", default_values = ["../shared/datasets/camvid/index/dusk-eval.txt", "../shared/datasets/camvid/index/dusk-stream.txt", "../shared/datasets/camvid/index/day-val.txt"])]
    indexes: Vec<PathBuf>,
    /// Evaluate at most this many frames per split (evenly spaced); 0 = all.
    #[arg(long, default_value_t = 0)]
    max_frames: usize,
    #[command(flatten)]
    cloud: CloudArgs,
    /// Write the tables into this README section (between `<!-- miners:begin -->` and `<!-- miners:end -->`).
    #[arg(long, default_value = "benchmarks/README.md")]
    readme: PathBuf,
}

/// What one frame contributes to every selection: its scores and its edge and cloud confusion matrices.
struct FrameResult {
    scores: Vec<f32>,
    edge_error: f64,
    edge: ConfusionMatrix,
    cloud: ConfusionMatrix,
}

fn scorers() -> Vec<(&'static str, Box<dyn Scorer>)> {
    vec![
        ("ianvs-confidence", Box::new(IanvsConfidence::default())),
        ("cross-entropy", Box::new(CrossEntropy)),
        ("margin", Box::new(Margin)),
        ("least-confidence", Box::new(LeastConfidence)),
        ("rare-class-weighted", Box::new(RareClassWeighted::camvid())),
    ]
}

pub fn run(args: MinersArgs) -> Result<()> {
    let model = EdgeModel::load(&args.model, SessionConfig::default())
        .with_context(|| format!("loading {}", args.model.display()))?;
    let mut labeller = CloudLabeller::new(
        &args.cloud,
        &model.manifest().name,
        &model.manifest().version,
    )?;
    let scorers = scorers();
    let mut out = format!(
        "Command: `benchmarks miners --max-frames {} {}`; edge model {} {}; cloud labels: {}; {}.\n\n",
        args.max_frames,
        args.indexes
            .iter()
            .map(|i| format!("--index {}", i.display()))
            .collect::<Vec<_>>()
            .join(" "),
        model.manifest().name,
        model.manifest().version,
        labeller.describe(),
        report::cpu_load_note()
    );
    for index in &args.indexes {
        let frames = evaluate_split(&model, &mut labeller, &scorers, index, args.max_frames)?;
        out.push_str(&split_table(index, &frames, &scorers));
    }
    println!("{out}");
    report::replace_readme_section(&args.readme, "miners", &out)?;
    Ok(())
}

fn evaluate_split(
    model: &EdgeModel,
    labeller: &mut CloudLabeller,
    scorers: &[(&'static str, Box<dyn Scorer>)],
    index: &Path,
    max_frames: usize,
) -> Result<Vec<FrameResult>> {
    let classes = model.num_classes();
    let mut results = Vec::new();
    for sample in &test_frames(index, max_frames)? {
        let (image, truth) = sample.load_labelled()?;
        let edge = model.segment(&image)?;
        let dims = Dims::new(
            edge.classes,
            edge.score_height as usize,
            edge.score_width as usize,
        );
        let scores = scorers
            .iter()
            .map(|(_, s)| s.score(&edge.probabilities, dims))
            .collect::<Result<Vec<_>, _>>()?;
        let cloud_labels = labeller.labels(sample, &image, &edge)?;
        let mut edge_cm = ConfusionMatrix::new(classes);
        edge_cm.add(truth.as_raw(), &edge.labels);
        let mut cloud_cm = ConfusionMatrix::new(classes);
        cloud_cm.add(truth.as_raw(), &cloud_labels);
        let edge_error = 1.0 - edge_cm.scores().pixel_accuracy;
        eprintln!(
            "{} {}: edge error {edge_error:.3}",
            index.display(),
            sample.name()
        );
        results.push(FrameResult {
            scores,
            edge_error,
            edge: edge_cm,
            cloud: cloud_cm,
        });
    }
    Ok(results)
}

/// Whole-split mIoU when the frames in `uploaded` take the cloud's labels and the rest keep the edge's.
fn collaborative_miou(frames: &[FrameResult], uploaded: &[bool]) -> f64 {
    let mut total = ConfusionMatrix::new(frames[0].edge.classes());
    for (frame, up) in frames.iter().zip(uploaded) {
        total.merge(if *up { &frame.cloud } else { &frame.edge });
    }
    total.scores().miou
}

/// Marks the `k` frames with the highest `hardness` for upload (ties broken by frame order).
fn select_hardest(hardness: &[f64], k: usize) -> Vec<bool> {
    let mut order: Vec<usize> = (0..hardness.len()).collect();
    order.sort_by(|&a, &b| hardness[b].total_cmp(&hardness[a]).then(a.cmp(&b)));
    let mut uploaded = vec![false; hardness.len()];
    for &i in order.iter().take(k) {
        uploaded[i] = true;
    }
    uploaded
}

/// Spearman rank correlation (average ranks for ties).
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    if va == 0.0 || vb == 0.0 {
        0.0
    } else {
        cov / (va * vb).sqrt()
    }
}

fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let average = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = average;
        }
        i = j + 1;
    }
    ranks
}

const RATIOS: [f64; 3] = [0.1, 0.2, 0.3];
const RANDOM_DRAWS: u64 = 20;

fn split_table(
    index: &Path,
    frames: &[FrameResult],
    scorers: &[(&'static str, Box<dyn Scorer>)],
) -> String {
    let n = frames.len();
    let errors: Vec<f64> = frames.iter().map(|f| f.edge_error).collect();
    let none = collaborative_miou(frames, &vec![false; n]);
    let all = collaborative_miou(frames, &vec![true; n]);
    let mut out = format!(
        "### {} ({n} frames)\n\nedge only mIoU {none:.4}; cloud on every frame {all:.4}\n\n\
         | selection | score p10 / p50 / p90 | Spearman(hardness, edge error) | mIoU @10% | mIoU @20% | mIoU @30% |\n\
         |---|---|---|---|---|---|\n",
        index
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let row = |name: &str, quantiles: &str, rho: Option<f64>, hardness: &[f64]| {
        let cells: Vec<String> = RATIOS
            .iter()
            .map(|r| {
                let k = (r * n as f64).round() as usize;
                format!(
                    "{:.4}",
                    collaborative_miou(frames, &select_hardest(hardness, k))
                )
            })
            .collect();
        let rho = rho.map_or("-".to_string(), |r| format!("{r:.3}"));
        format!("| {name} | {quantiles} | {rho} | {} |\n", cells.join(" | "))
    };
    for (i, (name, _)) in scorers.iter().enumerate() {
        let hardness: Vec<f64> = frames
            .iter()
            .map(|f| 1.0 - f64::from(f.scores[i]))
            .collect();
        let scores: Vec<f64> = frames.iter().map(|f| f64::from(f.scores[i])).collect();
        let quantiles = format!(
            "{:.3} / {:.3} / {:.3}",
            percentile(&scores, 10.0),
            percentile(&scores, 50.0),
            percentile(&scores, 90.0)
        );
        out.push_str(&row(
            name,
            &quantiles,
            Some(spearman(&hardness, &errors)),
            &hardness,
        ));
    }
    let random: Vec<String> = RATIOS
        .iter()
        .map(|r| {
            let k = (r * n as f64).round() as usize;
            let mean = (0..RANDOM_DRAWS)
                .map(|seed| {
                    let mut order: Vec<usize> = (0..n).collect();
                    order.shuffle(&mut StdRng::seed_from_u64(seed));
                    let mut uploaded = vec![false; n];
                    for &i in order.iter().take(k) {
                        uploaded[i] = true;
                    }
                    collaborative_miou(frames, &uploaded)
                })
                .sum::<f64>()
                / RANDOM_DRAWS as f64;
            format!("{mean:.4}")
        })
        .collect();
    out.push_str(&format!(
        "| random (mean of {RANDOM_DRAWS}) | - | - | {} |\n",
        random.join(" | ")
    ));
    out.push_str(&row("oracle (true edge error)", "-", Some(1.0), &errors));
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_of_monotone_and_reversed_orders() {
        let a = [1.0, 2.0, 3.0, 4.0];
        assert!((spearman(&a, &[10.0, 20.0, 30.0, 40.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&a, &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert_eq!(ranks(&[5.0, 1.0, 5.0]), vec![2.5, 1.0, 2.5]);
    }

    #[test]
    fn the_hardest_frames_are_selected() {
        assert_eq!(
            select_hardest(&[0.1, 0.9, 0.5, 0.7], 2),
            vec![false, true, false, true]
        );
        assert_eq!(select_hardest(&[0.1, 0.9], 0), vec![false, false]);
    }
}

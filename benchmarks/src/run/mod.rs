//! `benchmarks run -f <benchmarkingjob.yaml>`: Ianvs-style benchmark runs.
//!
//! The job (see [`job`]) names a test environment and algorithms; every hyperparameter combination becomes one
//! run. Each run of the job writes everything under a new folder `<workspace>/<job name>/<UTC time>/` (never
//! reusing an older one): the job file, one folder per algorithm run (`metrics.json`, `frames.csv`), Ianvs's
//! `all_rank.csv` and `selected_rank.csv`, `leaderboard.md` and PNG plots.

mod execute;
mod http;
pub mod job;
mod lifelong;
mod plots;
mod rank;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use image::{GrayImage, RgbImage};
use models::dataset::{Sample, read_index};
use models::manifest::ClassInfo;
use models::metrics::ConfusionMatrix;
use serde::Serialize;

use crate::report;
use job::{Job, Mode, ModuleType, Paradigm, RunSpec};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The benchmarking job file.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Also write the leaderboard into this Markdown file, in the section named after the job.
    #[arg(long)]
    readme: Option<PathBuf>,
    /// Cloud label maps computed in-process are cached here (keyed by edge model and refinement settings).
    #[arg(long, default_value = "runs/cache/cloud-labels")]
    cache: PathBuf,
    /// ONNX Runtime threads for the edge model.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// What one algorithm run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub id: String,
    pub algorithm: String,
    pub paradigm: Paradigm,
    /// Module type -> module name.
    pub modules: BTreeMap<String, String>,
    pub hyperparameters: BTreeMap<String, String>,
    pub metrics: BTreeMap<String, f64>,
    pub class_names: Vec<String>,
    #[serde(skip)]
    pub palette: Vec<[u8; 3]>,
    /// Final per-class IoU; `None` where a class is in neither truth nor prediction.
    pub per_class_iou: Vec<Option<f64>>,
    pub lifelong: Option<lifelong::AccuracyMatrix>,
    pub finished: String,
    pub dir: PathBuf,
    #[serde(skip)]
    pub overlays: Vec<OverlayFrame>,
}

impl RunResult {
    /// A finished run of `spec`; lifelong figures and overlays are added by the paradigms that have them.
    pub fn new(
        spec: &RunSpec,
        id: &str,
        dir: &Path,
        classes: &[ClassInfo],
        hyperparameters: BTreeMap<String, String>,
        metrics: BTreeMap<String, f64>,
        per_class_iou: Vec<Option<f64>>,
    ) -> Self {
        Self {
            id: id.to_string(),
            algorithm: spec.algorithm.clone(),
            paradigm: spec.paradigm,
            modules: module_names(spec),
            hyperparameters,
            metrics,
            class_names: classes.iter().map(|c| c.name.clone()).collect(),
            palette: classes.iter().map(|c| c.color).collect(),
            per_class_iou,
            lifelong: None,
            finished: chrono::Utc::now().to_rfc3339(),
            dir: dir.to_path_buf(),
            overlays: Vec::new(),
        }
    }
}

/// What the answers to a split add up to, whichever way they were produced.
pub struct Tally {
    pub confusion: ConfusionMatrix,
    /// Answer latency (ms) of the frames the edge answered, and of those the cloud refined.
    pub edge_latency: Vec<f64>,
    pub cloud_latency: Vec<f64>,
    pub bytes_up: usize,
    pub bytes_down: usize,
}

impl Tally {
    pub fn new(classes: usize) -> Self {
        Self {
            confusion: ConfusionMatrix::new(classes),
            edge_latency: Vec::new(),
            cloud_latency: Vec::new(),
            bytes_up: 0,
            bytes_down: 0,
        }
    }

    pub fn add(&mut self, refined: bool, latency_ms: f64, bytes_up: usize, bytes_down: usize) {
        if refined {
            self.cloud_latency.push(latency_ms);
        } else {
            self.edge_latency.push(latency_ms);
        }
        self.bytes_up += bytes_up;
        self.bytes_down += bytes_down;
    }

    /// mIoU, pixel accuracy, transfer ratio, bytes per frame and latency percentiles; and the per-class IoU.
    pub fn metrics(&self) -> (BTreeMap<String, f64>, Vec<Option<f64>>) {
        let scores = self.confusion.scores();
        let frames = (self.edge_latency.len() + self.cloud_latency.len()).max(1) as f64;
        let mut metrics = BTreeMap::from([
            ("miou".to_string(), scores.miou),
            ("pixel_accuracy".to_string(), scores.pixel_accuracy),
            (
                "samples_transfer_ratio".to_string(),
                self.cloud_latency.len() as f64 / frames,
            ),
            (
                "bytes_up_per_frame".to_string(),
                self.bytes_up as f64 / frames,
            ),
            (
                "bytes_down_per_frame".to_string(),
                self.bytes_down as f64 / frames,
            ),
            ("frames".to_string(), frames),
        ]);
        insert_latency(&mut metrics, "edge_latency", &self.edge_latency);
        insert_latency(&mut metrics, "cloud_latency", &self.cloud_latency);
        (metrics, scores.per_class_iou)
    }
}

/// One frame shown side by side: the image, its ground truth, the edge's labels and the run's final labels.
#[derive(Debug, Clone)]
pub struct OverlayFrame {
    pub name: String,
    pub image: RgbImage,
    pub truth: GrayImage,
    pub edge: Vec<u8>,
    pub result: Vec<u8>,
}

/// The labelled frames a run is scored on: evenly spaced over the index when capped.
pub fn test_frames(index: &Path, max_frames: usize) -> Result<Vec<Sample>> {
    let samples =
        read_index(index, None).with_context(|| format!("reading {}", index.display()))?;
    let step = if max_frames == 0 {
        1
    } else {
        samples.len().div_ceil(max_frames).max(1)
    };
    Ok(samples.into_iter().step_by(step).collect())
}

/// Which frames get overlays: `count` evenly spaced ones.
pub fn overlay_indices(frames: usize, count: usize) -> Vec<usize> {
    if count == 0 || frames == 0 {
        return Vec::new();
    }
    let count = count.min(frames);
    (0..count).map(|i| i * frames / count).collect()
}

pub fn run(args: &Args) -> Result<()> {
    let job = job::load(&args.file)?;
    let out = new_output_dir(&job)?;
    std::fs::copy(&job.file, out.join("job.yaml"))?;
    eprintln!(
        "job `{}`: {} runs, output in {}",
        job.name,
        job.runs.len(),
        out.display()
    );
    let mut results = Vec::new();
    let mut failures = Vec::new();
    for (i, spec) in job.runs.iter().enumerate() {
        let id = run_id(i, spec);
        let dir = out.join("runs").join(&id);
        std::fs::create_dir_all(&dir)?;
        eprintln!("[{}/{}] {id}", i + 1, job.runs.len());
        let outcome = match (spec.paradigm, job.testenv.mode) {
            (Paradigm::Lifelong, _) => lifelong::run(&job, spec, &id, &dir, args),
            (_, Mode::InProcess) => execute::run(&job, spec, &id, &dir, args),
            (_, Mode::Http) => http::run(&job, spec, &id, &dir),
        };
        match outcome {
            Ok(result) => {
                std::fs::write(
                    dir.join("metrics.json"),
                    serde_json::to_vec_pretty(&result)?,
                )?;
                results.push(result);
            }
            Err(error) => {
                eprintln!("run {id} failed: {error:#}");
                std::fs::write(dir.join("error.txt"), format!("{error:#}\n"))?;
                failures.push(format!("{id}: {error:#}"));
            }
        }
    }
    let ranked = rank::write(&out, &job, &results)?;
    plots::write(&out.join("plots"), &results)?;
    let mut leaderboard = format!(
        "Command: `benchmarks run -f {}`; output `{}`; {}.\n\n{ranked}",
        args.file.display(),
        out.display(),
        report::cpu_load_note()
    );
    if !failures.is_empty() {
        leaderboard.push_str(&format!(
            "\nFailed runs:\n{}\n",
            failures
                .iter()
                .map(|f| format!("- {f}"))
                .collect::<Vec<_>>()
                .join("\n")
        ));
    }
    std::fs::write(out.join("leaderboard.md"), &leaderboard)?;
    println!("{leaderboard}");
    if let Some(readme) = &args.readme {
        report::replace_readme_section(readme, &job.name, &leaderboard)?;
    }
    if results.is_empty() {
        anyhow::bail!("every run failed");
    }
    Ok(())
}

/// `<workspace>/<job>/<UTC time>`, with a numeric suffix if that exists already: an older run is never touched.
fn new_output_dir(job: &Job) -> Result<PathBuf> {
    let parent = job.workspace.join(&job.name);
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    for attempt in 0.. {
        let name = if attempt == 0 {
            stamp.clone()
        } else {
            format!("{stamp}-{attempt}")
        };
        let dir = parent.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    unreachable!("the loop only ends by returning")
}

fn run_id(index: usize, spec: &RunSpec) -> String {
    let mut id = format!("{:02}-{}", index + 1, spec.algorithm);
    for value in spec.hyperparameters().values() {
        id.push('-');
        id.push_str(value);
    }
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Module type -> name, for the rank tables.
fn module_names(spec: &RunSpec) -> BTreeMap<String, String> {
    spec.modules
        .iter()
        .map(|m| (m.kind.name().to_string(), m.name.clone()))
        .collect()
}

/// The percentile (0..=100) of `values` by nearest rank; `NaN` when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `<prefix>_p50_ms`, `_p95_ms` and `_p99_ms` of `values` into `metrics` (nothing when there are none).
pub fn insert_latency(metrics: &mut BTreeMap<String, f64>, prefix: &str, values: &[f64]) {
    if values.is_empty() {
        return;
    }
    for p in [50.0, 95.0, 99.0] {
        metrics.insert(format!("{prefix}_p{p}_ms"), percentile(values, p));
    }
}

fn module_threads(spec: &RunSpec, default: usize) -> Result<usize> {
    Ok(spec
        .module(ModuleType::Basemodel)
        .map(|m| m.number("threads"))
        .transpose()?
        .flatten()
        .map_or(default, |t| t as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), 50.0);
        assert_eq!(percentile(&values, 95.0), 95.0);
        assert_eq!(percentile(&values, 99.0), 99.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn overlays_are_spread_over_the_split() {
        assert_eq!(overlay_indices(22, 3), vec![0, 7, 14]);
        assert_eq!(overlay_indices(2, 3), vec![0, 1]);
        assert!(overlay_indices(5, 0).is_empty());
    }
}

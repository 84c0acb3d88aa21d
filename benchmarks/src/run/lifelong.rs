//! The lifelong paradigm (Ianvs lifelong learning, but label-free): the edge model meets each later task's
//! stream through the collaborative pipeline (edge -> miner -> cloud refinement); the frames it uploads, with the
//! CLOUD's labels, become a replay-buffer export; a retraining round (`trainer::retrain`: fine-tuning with
//! class-balanced rehearsal from the original training set and the evaluation gate) may publish a new version
//! into the run's own model registry; then the model the edge would serve is scored on every task.
//!
//! A later task can take several rounds (`lifelong_training` hyperparameter `rounds`, default 1): the robot meets
//! the task's stream again with the model it serves after the previous round, so the frames it uploads are
//! labelled with that model's better class scores and retrained from it (self-training with a teacher that
//! improves with the student). Hyperparameter `buffer` says what a round retrains on: `round` (default) the
//! frames uploaded in that round only, `all` every frame uploaded so far in the run, a frame uploaded again with
//! its newest cloud label.
//!
//! Rows of the accuracy matrix: the model before any round, then after each round. Columns: the tasks' labelled
//! validation splits. With `A[r][j]` the mIoU on task `j` after round `r`, and `L(j)` the row after task `j`'s
//! last round (`L(0) = 0`: the initial training):
//! - BWT = mean over tasks learned before the last one of `A[last][j] - A[L(j)][j]` (forgetting; Ianvs's BWT is
//!   this for a single drift),
//! - FWT = mean over the later tasks of `A[L(j)][j] - A[0][j]` (Ianvs's FWT: what learning a task gained on it),
//! - task_avg_acc = mean of the last row.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use hard_example::Dims;
use models::dataset::{Sample, read_index};
use models::evaluation::evaluate_edge;
use models::image_ops::encode_label_png;
use models::paths::edge_model_dir;
use models::replay_export::{INDEX_FILE, INDEX_HEADER, cloud_label_path, image_path, index_line};
use models::{EdgeModel, SessionConfig};
use serde::Serialize;
use trainer::registry::Registry;
use trainer::retrain::retrain;
use trainer::retrain_cli::{RetrainArgs, config as retrain_config};

use super::execute::{build_miner, cloud_labeller};
use super::job::{Job, ModuleType, RunSpec, TaskSpec, value_text};
use super::{Args, RunResult, test_frames};
use crate::cloud_labels::CloudLabeller;
use crate::segmenter::EDGE_SEGMENTER;

#[derive(Debug, Clone, Serialize)]
pub struct AccuracyMatrix {
    pub tasks: Vec<String>,
    /// Row labels: `initial`, then `round r (<task>)`.
    pub rows: Vec<String>,
    /// `miou[row][task]`.
    pub miou: Vec<Vec<f64>>,
    /// Per task learned so far, the row after its last round (0 for the initially trained task).
    pub learned_at: Vec<usize>,
}

impl AccuracyMatrix {
    pub fn bwt(&self) -> f64 {
        let last = self.miou.len() - 1;
        let learned_before_last = self.learned_at.len().saturating_sub(1);
        let earlier: Vec<f64> = self.learned_at[..learned_before_last]
            .iter()
            .enumerate()
            .map(|(j, &row)| self.miou[last][j] - self.miou[row][j])
            .collect();
        mean(&earlier)
    }

    pub fn fwt(&self) -> f64 {
        let later: Vec<f64> = self
            .learned_at
            .iter()
            .enumerate()
            .skip(1)
            .map(|(j, &row)| self.miou[row][j] - self.miou[0][j])
            .collect();
        mean(&later)
    }

    pub fn task_avg_acc(&self) -> f64 {
        mean(self.miou.last().expect("at least the initial row"))
    }

    pub fn markdown(&self) -> String {
        let mut out = format!(
            "| after | {} |\n|---|{}\n",
            self.tasks.join(" | "),
            "---|".repeat(self.tasks.len())
        );
        for (label, row) in self.rows.iter().zip(&self.miou) {
            let cells: Vec<String> = row.iter().map(|v| format!("{v:.4}")).collect();
            let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
        }
        out
    }
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

pub fn run(job: &Job, spec: &RunSpec, id: &str, dir: &Path, args: &Args) -> Result<RunResult> {
    let tasks = &job
        .testenv
        .lifelong
        .as_ref()
        .context("testenv.lifelong is missing")?
        .tasks;
    if tasks.len() < 2 || tasks.iter().skip(1).any(|t| t.stream_index.is_none()) {
        bail!(
            "lifelong tasks: the first is the trained one, every later task needs a stream_index"
        );
    }
    let seed_model = match spec.module(ModuleType::Basemodel) {
        Some(m) if m.name != EDGE_SEGMENTER => {
            bail!(
                "lifelong runs retrain the `{EDGE_SEGMENTER}` basemodel, not `{}`",
                m.name
            )
        }
        Some(m) => m.url.clone().unwrap_or_else(edge_model_dir),
        None => edge_model_dir(),
    };
    let registry_dir = dir.join("registry");
    let registry = Registry::open(&registry_dir)?;
    registry.adopt_if_empty(&seed_model)?;
    let session = SessionConfig {
        intra_threads: args.threads,
        ..SessionConfig::default()
    };
    let evaluate_all = |model_dir: &Path| -> Result<Vec<f64>> {
        let model = EdgeModel::load(model_dir, session)?;
        tasks
            .iter()
            .map(|task| {
                let frames = test_frames(&task.eval_index, task.max_eval_frames)?;
                Ok(evaluate_edge(&model, &frames, |_| {})?.0.miou)
            })
            .collect()
    };
    let mut matrix = AccuracyMatrix {
        tasks: tasks.iter().map(|t| t.name.clone()).collect(),
        rows: vec!["initial".into()],
        miou: vec![evaluate_all(&registry.current_link())?],
        learned_at: vec![0],
    };
    let (mut streamed, mut uploaded) = (0usize, 0usize);
    let mut notes = String::new();
    // What the last round's retrained model scored, published or not (the gate's own figures).
    let mut candidate = None;
    let mut published_rounds = 0;
    // Every other lifelong_training hyperparameter is a `trainer retrain run` flag (`learning_rate` ->
    // `--learning-rate`), with the same defaults and checks.
    let training = spec.module(ModuleType::LifelongTraining);
    let rounds_per_task = match training.map(|m| m.number("rounds")).transpose()?.flatten() {
        Some(n) if n >= 1.0 && n.fract() == 0.0 => n as usize,
        Some(n) => bail!("lifelong_training `rounds` must be a whole number >= 1, not {n}"),
        None => 1,
    };
    let whole_buffer = match training.map(|m| m.string("buffer")).transpose()?.flatten() {
        None => false,
        Some(scope) if scope == "round" => false,
        Some(scope) if scope == "all" => true,
        Some(other) => bail!("lifelong_training `buffer` must be `round` or `all`, not `{other}`"),
    };
    let named: Vec<(String, String)> = training
        .map(|m| {
            m.params
                .iter()
                .filter(|(k, _)| !NOT_RETRAIN_FLAGS.contains(&k.as_str()))
                .map(|(k, v)| (k.replace('_', "-"), value_text(v)))
                .collect()
        })
        .unwrap_or_default();
    let mut round = 0;
    let mut previous_export: Option<PathBuf> = None;
    for task in tasks.iter().skip(1) {
        for _ in 0..rounds_per_task {
            round += 1;
            let export = dir.join(format!("round-{round}-{}", task.name));
            let live = std::fs::canonicalize(registry.current_link())?;
            let (seen, sent) = stream_task(spec, task, &live, &export, args)?;
            streamed += seen;
            uploaded += sent;
            if let (true, Some(previous)) = (whole_buffer, &previous_export) {
                carry_over(previous, &export)?;
            }
            previous_export = Some(export.clone());
            let mut flags = vec![
                ("registry", path_text(&registry_dir)),
                ("seed-model", path_text(&seed_model)),
                ("buffer-export", path_text(&export)),
                ("runs-dir", path_text(&dir.join("retrain"))),
                ("old-task-index", path_text(&tasks[0].eval_index)),
                ("new-task-labelled-index", path_text(&task.eval_index)),
            ];
            if let Some(train_index) = &job.testenv.dataset.train_index {
                flags.push(("rehearsal-index", path_text(train_index)));
            }
            flags.extend(named.iter().map(|(k, v)| (k.as_str(), v.clone())));
            let retrain_args = RetrainArgs::from_flags(flags).context(
                "lifelong_training hyperparameters (they are `trainer retrain run` flags)",
            )?;
            tch::set_num_threads(retrain_args.threads());
            let config = retrain_config(&retrain_args);
            let report = retrain(&config, |epoch, loss| {
                eprintln!("  round {round} epoch {epoch}: loss {loss:.4}")
            })?;
            candidate = Some(report.decision.candidate);
            published_rounds += usize::from(report.decision.publish);
            let _ = writeln!(
                notes,
                "round {round} ({}): {sent}/{seen} frames uploaded; candidate {} {}; gate: parent {:?}, candidate {:?}, refusals {:?}",
                task.name,
                report.candidate_version,
                if report.decision.publish {
                    "published"
                } else {
                    "refused"
                },
                report.decision.parent,
                report.decision.candidate,
                report.decision.refusals
            );
            matrix.rows.push(format!("round {round} ({})", task.name));
            matrix.miou.push(evaluate_all(&registry.current_link())?);
        }
        matrix.learned_at.push(round);
    }
    std::fs::write(
        dir.join("lifelong.md"),
        format!("{}\n{notes}", matrix.markdown()),
    )?;
    let last_task = tasks.len() - 1;
    let mut metrics = BTreeMap::from([
        (
            "miou".to_string(),
            matrix.miou[matrix.miou.len() - 1][last_task],
        ),
        ("initial_miou".to_string(), matrix.miou[0][last_task]),
        (
            "old_task_miou".to_string(),
            matrix.miou[matrix.miou.len() - 1][0],
        ),
        ("task_avg_acc".to_string(), matrix.task_avg_acc()),
        ("bwt".to_string(), matrix.bwt()),
        ("fwt".to_string(), matrix.fwt()),
        (
            "samples_transfer_ratio".to_string(),
            uploaded as f64 / streamed.max(1) as f64,
        ),
    ]);
    metrics.insert("published_rounds".into(), published_rounds as f64);
    if let Some(candidate) = candidate {
        metrics.insert("candidate_old_task_miou".into(), candidate.old_task_miou);
        if let Some(new_task) = candidate.new_task_labelled_miou {
            metrics.insert("candidate_new_task_miou".into(), new_task);
        }
    }
    let final_model = EdgeModel::load(&registry.current_link(), session)?;
    let classes = final_model.manifest().classes.clone();
    let frames = test_frames(
        &tasks[last_task].eval_index,
        tasks[last_task].max_eval_frames,
    )?;
    let per_class_iou = evaluate_edge(&final_model, &frames, |_| {})?
        .0
        .per_class_iou;
    let mut hyperparameters = spec.hyperparameters();
    hyperparameters.insert(
        "basemodel-version".into(),
        final_model.manifest().version.clone(),
    );
    let mut result = RunResult::new(
        spec,
        id,
        dir,
        &classes,
        hyperparameters,
        metrics,
        per_class_iou,
    );
    result.lifelong = Some(matrix);
    Ok(result)
}

/// `lifelong_training` hyperparameters that set up the rounds rather than being `trainer retrain run` flags.
const NOT_RETRAIN_FLAGS: [&str; 2] = ["rounds", "buffer"];

/// Adds to the `current` export every entry of the `previous` one that `current` does not hold, before its own
/// (the index lists the oldest first), so the round retrains on all frames uploaded so far; a frame in both keeps
/// `current`'s label, the one made with the better model.
fn carry_over(previous: &Path, current: &Path) -> Result<()> {
    let current_samples = read_index(&current.join(INDEX_FILE), Some(current))?;
    let held: HashSet<String> = current_samples.iter().map(Sample::name).collect();
    let carried: Vec<Sample> = read_index(&previous.join(INDEX_FILE), Some(previous))?
        .into_iter()
        .filter(|sample| !held.contains(&sample.name()))
        .collect();
    for sample in &carried {
        let name = sample.name();
        let label = sample
            .label
            .as_ref()
            .with_context(|| format!("{name} in {} has no label", previous.display()))?;
        std::fs::copy(
            &sample.image,
            current.join(image_path(&name, image_extension(sample))),
        )?;
        std::fs::copy(label, current.join(cloud_label_path(&name)))?;
    }
    let mut index = format!("{INDEX_HEADER}\n");
    for sample in carried.iter().chain(&current_samples) {
        let _ = writeln!(
            index,
            "{}",
            index_line(&sample.name(), image_extension(sample))
        );
    }
    std::fs::write(current.join(INDEX_FILE), index)?;
    Ok(())
}

fn image_extension(sample: &Sample) -> &str {
    sample
        .image
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("png")
}

/// Streams `task`'s frames through the live model, the miner (every frame when the algorithm has none) and the
/// cloud refinement, writing the uploaded frames with their cloud labels as an export. Returns (seen, uploaded).
/// `cloud_refinement` name that labels the uploaded frames with the dataset's ground truth instead of the cloud: an
/// upper bound for what retraining can gain from those frames, never the product's path.
const GROUND_TRUTH_TEACHER: &str = "ground-truth";

/// Where the uploaded frames' training labels come from.
enum Teacher {
    Cloud(Box<CloudLabeller>),
    GroundTruth,
}

fn stream_task(
    spec: &RunSpec,
    task: &TaskSpec,
    live: &Path,
    export: &Path,
    args: &Args,
) -> Result<(usize, usize)> {
    let model = EdgeModel::load(live, SessionConfig::default())?;
    let mut miner = spec
        .module(ModuleType::HardExampleMining)
        .map(|_| build_miner(spec))
        .transpose()?;
    let mut teacher = match spec.module(ModuleType::CloudRefinement) {
        Some(module) if module.name == GROUND_TRUTH_TEACHER => Teacher::GroundTruth,
        _ => {
            // A retrained version's name follows its parent and snapshot only, so runs with other training settings
            // publish other weights under the same name: the cached labels are keyed by the weights too.
            let manifest = model.manifest();
            let weights = manifest
                .files
                .get("model")
                .map_or("", |file| &file.sha256[..file.sha256.len().min(12)]);
            Teacher::Cloud(Box::new(cloud_labeller(
                spec,
                &args.cache,
                &format!("{}-{}-{weights}", manifest.name, manifest.version),
            )?))
        }
    };
    let stream: Vec<Sample> = test_frames(
        task.stream_index.as_ref().expect("checked"),
        task.max_stream_frames,
    )?;
    std::fs::create_dir_all(export.join("images"))?;
    std::fs::create_dir_all(export.join("labels"))?;
    let mut index = format!("{INDEX_HEADER}\n");
    let mut uploaded = 0;
    let progress = trainer::progress::bar(stream.len() as u64, &task.name);
    for (i, sample) in stream.iter().enumerate() {
        let image = sample.load_image()?;
        let edge = model.segment(&image)?;
        let upload = match &mut miner {
            Some(miner) => {
                let dims = Dims::new(
                    edge.classes,
                    edge.score_height as usize,
                    edge.score_width as usize,
                );
                miner
                    .decide(&edge.probabilities, dims, i as u64 * 100)?
                    .hard
            }
            None => true,
        };
        if upload {
            let labels = match &mut teacher {
                Teacher::Cloud(labeller) => labeller.labels(sample, &image, &edge)?,
                Teacher::GroundTruth => sample.load_labelled()?.1.into_raw(),
            };
            let name = sample.name();
            let extension = image_extension(sample);
            std::fs::copy(&sample.image, export.join(image_path(&name, extension)))?;
            std::fs::write(
                export.join(cloud_label_path(&name)),
                encode_label_png(&labels, edge.width, edge.height)?,
            )?;
            let _ = writeln!(index, "{}", index_line(&name, extension));
            uploaded += 1;
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    if uploaded < 2 {
        bail!(
            "only {uploaded} of {} {} frames were uploaded; retraining needs at least 2",
            stream.len(),
            task.name
        );
    }
    std::fs::write(export.join(INDEX_FILE), index)?;
    Ok((stream.len(), uploaded))
}

fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_figures_follow_the_definitions() {
        let matrix = AccuracyMatrix {
            tasks: vec!["day".into(), "dusk".into()],
            rows: vec!["initial".into(), "round 1".into()],
            miou: vec![vec![0.67, 0.38], vec![0.66, 0.45]],
            learned_at: vec![0, 1],
        };
        assert!((matrix.bwt() - -0.01).abs() < 1e-12);
        assert!((matrix.fwt() - 0.07).abs() < 1e-12);
        assert!((matrix.task_avg_acc() - 0.555).abs() < 1e-12);
        assert!(matrix.markdown().contains("| round 1 | 0.6600 | 0.4500 |"));
    }

    #[test]
    fn carrying_over_keeps_older_frames_and_the_newest_labels() -> Result<()> {
        let root = std::env::temp_dir().join(format!("carry-over-{}", std::process::id()));
        let write_export = |name: &str, entries: &[(&str, &[u8])]| -> Result<std::path::PathBuf> {
            let dir = root.join(name);
            std::fs::create_dir_all(dir.join("images"))?;
            std::fs::create_dir_all(dir.join("labels"))?;
            let mut index = format!("{INDEX_HEADER}\n");
            for (frame, label) in entries {
                std::fs::write(dir.join(format!("images/{frame}.png")), frame.as_bytes())?;
                std::fs::write(dir.join(format!("labels/{frame}.png")), label)?;
                let _ = writeln!(index, "images/{frame}.png labels/{frame}.png");
            }
            std::fs::write(dir.join(INDEX_FILE), index)?;
            Ok(dir)
        };
        let previous = write_export("round-1", &[("a", b"old a"), ("b", b"old b")])?;
        let current = write_export("round-2", &[("b", b"new b"), ("c", b"new c")])?;
        carry_over(&previous, &current)?;
        let index = std::fs::read_to_string(current.join(INDEX_FILE))?;
        let frames: Vec<&str> = index.lines().skip(1).collect();
        assert_eq!(
            frames,
            [
                "images/a.png labels/a.png",
                "images/b.png labels/b.png",
                "images/c.png labels/c.png"
            ]
        );
        assert_eq!(std::fs::read(current.join("labels/a.png"))?, b"old a");
        assert_eq!(std::fs::read(current.join("images/a.png"))?, b"a");
        assert_eq!(std::fs::read(current.join("labels/b.png"))?, b"new b");
        std::fs::remove_dir_all(&root)?;
        Ok(())
    }

    #[test]
    fn a_task_of_several_rounds_counts_from_its_last_round() {
        // Dusk takes rounds 1 and 2: its transfer is measured after round 2, and so is day's forgetting.
        let matrix = AccuracyMatrix {
            tasks: vec!["day".into(), "dusk".into()],
            rows: vec!["initial".into(), "round 1".into(), "round 2".into()],
            miou: vec![vec![0.67, 0.38], vec![0.66, 0.45], vec![0.655, 0.48]],
            learned_at: vec![0, 2],
        };
        assert!((matrix.bwt() - -0.015).abs() < 1e-12);
        assert!((matrix.fwt() - 0.10).abs() < 1e-12);
        assert!((matrix.task_avg_acc() - 0.5675).abs() < 1e-12);
    }
}

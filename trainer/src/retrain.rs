//! The lifelong retraining job: fine-tune the live edge model on a replay-buffer snapshot, labelled by the cloud
//! (never by ground truth), mixed with rehearsal frames from the original training set; gate the result on the old
//! and the new task; publish it into the registry only when the gate passes.
//!
//! A run lives in `<runs>/<parent version>-<snapshot id>/`: checkpoints (so a killed run resumes) and `decision.json`
//! (every figure and the decision). Re-running a decided run returns the recorded decision without training again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use models::dataset::{Sample, read_index};
use models::metrics::SegmentationScores;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::data::Frame;
use crate::export::PublishInfo;
use crate::gate::{GateDecision, GatePolicy, TaskScores, decide};
use crate::registry::Registry;
use crate::snapshot::Snapshot;
use crate::{TrainConfig, Trainer, rehearsal};

pub const DECISION_FILE: &str = "decision.json";

#[derive(Debug, Clone)]
pub struct RetrainConfig {
    pub registry: PathBuf,
    /// Model the registry starts from when it has no live model yet.
    pub seed_model: PathBuf,
    /// A `cloud-infer export-index` directory.
    pub snapshot: PathBuf,
    /// Newest buffer frames used at most (training + held back).
    pub max_buffer_frames: usize,
    /// Share of the buffer frames held back to score the new task against the cloud's labels.
    pub holdout_fraction: f64,
    /// Index of the original training set; rehearsal frames come from it.
    pub rehearsal_index: Option<PathBuf>,
    /// Rehearsal frames per buffer training frame.
    pub rehearsal_ratio: f64,
    pub max_rehearsal_frames: usize,
    /// Old-task validation index (e.g. day-val) and how many of its frames to score.
    pub old_task_index: PathBuf,
    pub max_old_task_frames: usize,
    /// Labelled new-domain index (e.g. dusk-eval), scored when given.
    pub new_task_labelled_index: Option<PathBuf>,
    pub gate: GatePolicy,
    /// Training settings; `checkpoint_dir` is replaced by the run's own.
    pub train: TrainConfig,
    /// Members of the weight soup: each is fine-tuned from the parent on the same frames with its own seed
    /// (`train.seed + i`), and the candidate is their weight average. One fine-tune on a few dozen noisily
    /// labelled frames swings about a point with the seed; their average swings less.
    pub soup_members: usize,
    pub runs_dir: PathBuf,
    /// Version of the published model; default `<parent>-ll.<snapshot id>`.
    pub version: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FrameCounts {
    pub buffer_listed: usize,
    pub buffer_train: usize,
    pub buffer_holdout: usize,
    pub rehearsal: usize,
    pub old_task: usize,
    pub new_task_labelled: usize,
}

/// Everything a run decided and why; written as `decision.json` in the run directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetrainReport {
    pub snapshot_id: String,
    pub snapshot_dir: PathBuf,
    pub parent_version: String,
    pub candidate_version: String,
    pub frames: FrameCounts,
    pub epochs: usize,
    pub losses: Vec<f64>,
    pub decision: GateDecision,
    /// The published version directory, when the gate passed.
    pub published: Option<PathBuf>,
    pub run_dir: PathBuf,
    pub finished_unix_s: u64,
}

/// Runs one retraining: returns the report (also written to the run directory) whatever the gate decided.
pub fn retrain(
    config: &RetrainConfig,
    mut on_epoch: impl FnMut(usize, f64),
) -> Result<RetrainReport> {
    let snapshot = Snapshot::open(&config.snapshot, config.max_buffer_frames)?;
    let registry = Registry::open(&config.registry)?;
    let parent_version = registry.adopt_if_empty(&config.seed_model)?;
    let run_dir = config
        .runs_dir
        .join(format!("{parent_version}-{}", snapshot.id));
    let decision_path = run_dir.join(DECISION_FILE);
    if decision_path.is_file() {
        let report: RetrainReport = serde_json::from_str(&std::fs::read_to_string(&decision_path)?)
            .with_context(|| format!("reading {}", decision_path.display()))?;
        tracing::info!(
            "snapshot {} was already decided for {parent_version}: {}",
            snapshot.id,
            decision_path.display()
        );
        return Ok(report);
    }
    std::fs::create_dir_all(&run_dir)?;

    // The resolved version directory, not the link: a rollback during the run must not change the parent.
    let live = std::fs::canonicalize(registry.current_link())?;
    let mut trainer = Trainer::load(&live)
        .with_context(|| format!("loading the live model {}", live.display()))?;
    if trainer.manifest.version != parent_version {
        bail!(
            "the live model changed to {} while the run started",
            trainer.manifest.version
        );
    }
    let classes = trainer.num_classes();
    let (buffer_train, buffer_holdout) = snapshot.split(config.holdout_fraction)?;
    let mut rng = StdRng::seed_from_u64(config.train.seed);
    let rehearsal_samples = match &config.rehearsal_index {
        Some(index) => {
            let pool =
                read_index(index, None).with_context(|| format!("reading {}", index.display()))?;
            let wanted = (buffer_train.len() as f64 * config.rehearsal_ratio).round() as usize;
            rehearsal::choose(
                &pool,
                wanted.min(config.max_rehearsal_frames),
                classes,
                &mut rng,
            )?
        }
        None => Vec::new(),
    };

    let mut train_frames = snapshot.load_frames(&buffer_train, classes)?;
    train_frames.extend(load_labelled(&rehearsal_samples)?);
    let holdout_frames = snapshot.load_frames(&buffer_holdout, classes)?;
    let old_task_frames = load_capped(&config.old_task_index, config.max_old_task_frames)?;
    let labelled_frames = match &config.new_task_labelled_index {
        Some(index) => load_capped(index, usize::MAX)?,
        None => Vec::new(),
    };
    let frames = FrameCounts {
        buffer_listed: snapshot.listed,
        buffer_train: buffer_train.len(),
        buffer_holdout: holdout_frames.len(),
        rehearsal: rehearsal_samples.len(),
        old_task: old_task_frames.len(),
        new_task_labelled: labelled_frames.len(),
    };
    tracing::info!(
        ?frames,
        snapshot = snapshot.id,
        parent = parent_version,
        "retraining"
    );

    let score = |trainer: &Trainer| TaskScores {
        old_task_miou: trainer.evaluate(&old_task_frames).miou,
        new_task_buffer_miou: trainer.evaluate(&holdout_frames).miou,
        new_task_labelled_miou: (!labelled_frames.is_empty())
            .then(|| trainer.evaluate(&labelled_frames).miou),
    };
    let parent_scores = score(&trainer);
    // Forgetting is bounded against the registry's first version too, so it cannot build up over rounds.
    let first_version_old_task_miou = match registry.first_version()? {
        Some(first) if first != parent_version => {
            let first_model = Trainer::load(&registry.version_dir(&first))
                .with_context(|| format!("loading the registry's first version {first}"))?;
            Some(first_model.evaluate(&old_task_frames).miou)
        }
        _ => None,
    };

    let checkpoints = run_dir.join("checkpoints");
    let members = config.soup_members.max(1);
    let mut member_weights = Vec::with_capacity(members - 1);
    let mut losses = vec![0.0; config.train.epochs];
    let mut epochs_done = 0;
    for member in 0..members {
        // Member 0 trains the loaded parent itself; the others train fresh copies of it.
        let mut member_trainer = if member == 0 {
            None
        } else {
            Some(Trainer::load(&live)?)
        };
        let member_config = TrainConfig {
            checkpoint_dir: checkpoints.join(format!("member-{member}")),
            seed: config.train.seed.wrapping_add(member as u64),
            ..config.train.clone()
        };
        let progress = member_trainer.as_mut().unwrap_or(&mut trainer).fit(
            &train_frames,
            &[],
            &member_config,
            |epoch, loss, _: Option<&SegmentationScores>| on_epoch(epoch, loss),
        )?;
        for (sum, loss) in losses.iter_mut().zip(&progress.losses) {
            *sum += loss / members as f64;
        }
        epochs_done = progress.epochs_done;
        if let Some(member_trainer) = member_trainer {
            member_weights.push(member_trainer.flat_parameters());
        }
    }
    trainer.average_with(&member_weights)?;
    drop(train_frames);
    let candidate_scores = score(&trainer);
    let decision = decide(
        &parent_scores,
        &candidate_scores,
        first_version_old_task_miou,
        &config.gate,
    );
    tracing::info!(
        publish = decision.publish,
        parent = ?decision.parent,
        candidate = ?decision.candidate,
        refusals = ?decision.refusals,
        "gate decision"
    );

    let candidate_version = config
        .version
        .clone()
        .unwrap_or_else(|| derived_version(&parent_version, &snapshot.id));
    let published = if decision.publish {
        let info = PublishInfo {
            version: candidate_version.clone(),
            produced_by: format!(
                "trainer retrain (snapshot {}, {} buffer + {} rehearsal frames, {} epochs, soup of {members})",
                snapshot.id, frames.buffer_train, frames.rehearsal, config.train.epochs
            ),
            training_data: Some(format!(
                "replay-buffer snapshot {} ({})",
                snapshot.id,
                snapshot.dir.display()
            )),
            metrics: gate_metrics(&candidate_scores),
        };
        Some(registry.publish(&trainer, &info)?)
    } else {
        None
    };
    let report = RetrainReport {
        snapshot_id: snapshot.id.clone(),
        snapshot_dir: snapshot.dir.clone(),
        parent_version,
        candidate_version,
        frames,
        epochs: epochs_done,
        losses,
        decision,
        published,
        run_dir: run_dir.clone(),
        finished_unix_s: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let temp = run_dir.join(format!("{DECISION_FILE}.tmp"));
    std::fs::write(&temp, serde_json::to_string_pretty(&report)?)?;
    std::fs::rename(&temp, &decision_path)?;
    // The decision is recorded; the checkpoints (tens of MB) are only needed to resume an undecided run.
    std::fs::remove_dir_all(&checkpoints).ok();
    Ok(report)
}

/// `1.0.0` -> `1.0.0-ll.<snapshot>`; a retrained model's suffix is replaced rather than stacked.
pub fn derived_version(parent: &str, snapshot_id: &str) -> String {
    let base = parent.split_once("-ll.").map_or(parent, |(base, _)| base);
    format!("{base}-ll.{snapshot_id}")
}

fn gate_metrics(scores: &TaskScores) -> BTreeMap<String, f64> {
    let mut metrics = BTreeMap::from([
        (
            format!("{}/miou", crate::gate::OLD_TASK),
            scores.old_task_miou,
        ),
        (
            format!("{}/miou", crate::gate::NEW_TASK_BUFFER),
            scores.new_task_buffer_miou,
        ),
    ]);
    if let Some(miou) = scores.new_task_labelled_miou {
        metrics.insert(format!("{}/miou", crate::gate::NEW_TASK_LABELLED), miou);
    }
    metrics
}

fn load_labelled(samples: &[Sample]) -> Result<Vec<Frame>> {
    samples.iter().map(Frame::from_sample).collect()
}

/// At most `cap` frames of an index, evenly spaced so a capped split still spans all its sequences.
fn load_capped(index: &Path, cap: usize) -> Result<Vec<Frame>> {
    let samples =
        read_index(index, None).with_context(|| format!("reading {}", index.display()))?;
    let count = samples.len().min(cap);
    let chosen: Vec<Sample> = (0..count)
        .map(|i| samples[i * samples.len() / count].clone())
        .collect();
    load_labelled(&chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_versions_do_not_stack() {
        assert_eq!(derived_version("1.0.0", "abc"), "1.0.0-ll.abc");
        assert_eq!(derived_version("1.0.0-ll.abc", "def"), "1.0.0-ll.def");
    }
}

//! `trainer retrain run | watch | rollback | status`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::TrainConfig;
use crate::data::Augmentation;
use crate::gate::GatePolicy;
use crate::registry::Registry;
use crate::retrain::{RetrainConfig, RetrainReport, retrain};
use crate::snapshot::{Snapshot, SnapshotError};
use crate::trigger::{TimeWindow, TriggerCheck, TriggerPolicy, WatchState, check};
use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};

#[derive(Subcommand)]
pub enum RetrainAction {
    /// Retrain once on a buffer export now; publish if the gate passes.
    Run(RetrainArgs),
    /// Check the buffer export every period and retrain when the trigger fires (or once, for a cron job).
    Watch(WatchArgs),
    /// Point the registry's `current` back at the live model's parent version.
    Rollback(RegistryArgs),
    /// Show the live version and the registry's history.
    Status(RegistryArgs),
}

#[derive(Args)]
pub struct RegistryArgs {
    /// Model registry: `<registry>/<version>/` directories and a `current` link (run the edge on it).
    #[arg(long, env = "MODEL_REGISTRY", default_value = "models/registry")]
    registry: PathBuf,
    /// Also keep an object-store registry (`s3://bucket/prefix` with the usual `AWS_*` variables, or `file:///dir`)
    /// on the live version, for robots that follow it with `edge-infer --model-registry-url`: after every run, watch
    /// check and rollback, the live version is uploaded unless the store's `CURRENT` already names it.
    #[arg(long, env = "MODEL_REGISTRY_URL")]
    registry_url: Option<String>,
}

impl RegistryArgs {
    /// Uploads the local registry's live version to `--registry-url`, when one is set.
    fn mirror_live_version(&self) -> Result<()> {
        if let Some(url) = &self.registry_url
            && let Some(version) = mirror_live_version(&self.registry, url)?
        {
            println!("object-store registry {url}: CURRENT -> {version}");
        }
        Ok(())
    }
}

/// Makes the object-store registry at `url` serve the live version of the registry at `registry`: uploads it and
/// points `CURRENT` at it, unless `CURRENT` already names it (then nothing is sent). Returns the version, or `None`
/// when the local registry has no live version yet.
pub fn mirror_live_version(registry: &Path, url: &str) -> Result<Option<String>> {
    let local = Registry::open(registry)?;
    let Some(live) = local.current()? else {
        return Ok(None);
    };
    let objects = object_registry::ObjectRegistry::open(url)?;
    if objects.current_version()?.as_deref() != Some(live.version.as_str()) {
        objects.publish(&local.current_link())?;
    }
    Ok(Some(live.version))
}

#[derive(Args)]
pub struct RetrainArgs {
    #[command(flatten)]
    registry: RegistryArgs,
    /// Model the registry starts from when it is empty.
    #[arg(
        long,
        env = "RETRAIN_SEED_MODEL",
        default_value = "models/edge/current"
    )]
    seed_model: PathBuf,
    /// Replay-buffer export (`cloud-infer export-index --out DIR`): `index.txt`, `images/`, `labels/`.
    #[arg(long, env = "BUFFER_EXPORT")]
    buffer_export: PathBuf,
    /// Run directories (checkpoints, decision.json) go under this.
    #[arg(long, default_value = "runs/retrain")]
    runs_dir: PathBuf,
    /// Newest buffer frames used at most (bounds memory).
    #[arg(long, default_value_t = 200)]
    max_buffer_frames: usize,
    /// Share of buffer frames held back to score the new task against the cloud's labels.
    #[arg(long, default_value_t = 0.2)]
    holdout_fraction: f64,
    /// Original training index to draw rehearsal frames from (class-balanced).
    #[arg(long, env = "REHEARSAL_INDEX")]
    rehearsal_index: Option<PathBuf>,
    /// Rehearsal frames per buffer training frame.
    #[arg(long, default_value_t = 1.0)]
    rehearsal_ratio: f64,
    #[arg(long, default_value_t = 200)]
    max_rehearsal_frames: usize,
    /// Old-task validation index (ground truth), e.g. day-val.
    #[arg(long, env = "OLD_TASK_INDEX")]
    old_task_index: PathBuf,
    #[arg(long, default_value_t = 101)]
    max_old_task_frames: usize,
    /// Labelled new-domain index (e.g. dusk-eval): scored by the gate, never trained on.
    #[arg(long)]
    new_task_labelled_index: Option<PathBuf>,
    /// Largest old-task mIoU loss (points) the gate accepts.
    #[arg(long, default_value_t = 1.0)]
    max_old_task_drop: f64,
    /// Every new-task split must gain more than this (mIoU points).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    min_new_task_gain: f64,
    /// Let the held-back buffer frames (scored against the cloud's labels, which favour the parent they were fused
    /// from) gate even when `--new-task-labelled-index` is given; by default they are then only reported.
    #[arg(long)]
    buffer_gates_with_labels: bool,
    /// Published version; default `<parent>-ll.<snapshot id>`.
    #[arg(long)]
    version: Option<String>,
    #[arg(long, default_value_t = 8)]
    epochs: usize,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long, default_value_t = 5e-4)]
    learning_rate: f64,
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f64,
    #[arg(long, default_value_t = 10)]
    warmup_steps: usize,
    #[arg(long, default_value_t = 256)]
    crop_height: i64,
    #[arg(long, default_value_t = 320)]
    crop_width: i64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Weight of the Lovasz-softmax (IoU surrogate) term beside the cross-entropy; 0 for cross-entropy alone.
    #[arg(long, default_value_t = 0.0)]
    lovasz_weight: f64,
    /// Fine-tune this many copies of the parent (seeds `seed`, `seed + 1`, ...) and publish their weight average.
    #[arg(long, default_value_t = 1)]
    soup_members: usize,
    /// Parameter-name prefixes to keep frozen (comma-separated; empty to train everything).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "_conv_stem.,_bn0.,_blocks.0.,_blocks.1.,_blocks.2."
    )]
    freeze: Vec<String>,
    /// libtorch threads.
    #[arg(long, env = "TRAIN_THREADS", default_value_t = 2)]
    threads: i32,
}

#[derive(Args)]
pub struct WatchArgs {
    #[command(flatten)]
    retrain: RetrainArgs,
    /// Retrain when at least this many buffer entries are new since the last run.
    #[arg(long, default_value_t = 20)]
    min_new_samples: usize,
    #[arg(long, default_value_t = 300)]
    check_period_secs: u64,
    /// Only start a run inside this daily UTC window, `HH:MM-HH:MM` (may wrap past midnight).
    #[arg(long)]
    window: Option<TimeWindow>,
    /// Shell command run before each check to refresh the export, e.g.
    /// `cloud-infer export-index --buffer runs/replay-buffer --out runs/buffer-export`.
    #[arg(long)]
    refresh_command: Option<String>,
    /// Check once and exit (for cron or a Kubernetes CronJob).
    #[arg(long)]
    once: bool,
}

pub fn run(action: RetrainAction) -> Result<()> {
    match action {
        RetrainAction::Run(args) => {
            let report = run_once(&args)?;
            print_report(&report);
            args.registry.mirror_live_version()
        }
        RetrainAction::Watch(args) => watch(&args),
        RetrainAction::Rollback(args) => {
            let (from, to) = Registry::open(&args.registry)?.rollback()?;
            println!("rolled back {}: {from} -> {to}", args.registry.display());
            args.mirror_live_version()
        }
        RetrainAction::Status(args) => {
            let registry = Registry::open(&args.registry)?;
            match registry.current()? {
                Some(m) => println!(
                    "live: {} (parent {:?})",
                    m.version, m.provenance.parent_version
                ),
                None => println!("no live model in {}", args.registry.display()),
            }
            for change in registry.history()? {
                println!(
                    "{} {:>8} {} -> {}",
                    change.at_unix_s,
                    change.action,
                    change.from.as_deref().unwrap_or("-"),
                    change.to
                );
            }
            Ok(())
        }
    }
}

impl RetrainArgs {
    /// Parses `retrain run` flags given as `(flag, value)` pairs (flag without the leading `--`), e.g. from a
    /// benchmark job's hyperparameters, with the same defaults and checks as the command line.
    pub fn from_flags<'a>(flags: impl IntoIterator<Item = (&'a str, String)>) -> Result<Self> {
        #[derive(Parser)]
        struct Flags {
            #[command(flatten)]
            args: RetrainArgs,
        }
        let argv = std::iter::once("retrain".to_string()).chain(
            flags
                .into_iter()
                .flat_map(|(flag, value)| [format!("--{flag}"), value]),
        );
        Ok(Flags::try_parse_from(argv)?.args)
    }

    pub fn threads(&self) -> i32 {
        self.threads
    }
}

pub fn config(args: &RetrainArgs) -> RetrainConfig {
    RetrainConfig {
        registry: args.registry.registry.clone(),
        seed_model: args.seed_model.clone(),
        snapshot: args.buffer_export.clone(),
        max_buffer_frames: args.max_buffer_frames,
        holdout_fraction: args.holdout_fraction,
        rehearsal_index: args.rehearsal_index.clone(),
        rehearsal_ratio: args.rehearsal_ratio,
        max_rehearsal_frames: args.max_rehearsal_frames,
        old_task_index: args.old_task_index.clone(),
        max_old_task_frames: args.max_old_task_frames,
        new_task_labelled_index: args.new_task_labelled_index.clone(),
        gate: GatePolicy {
            max_old_task_drop: args.max_old_task_drop,
            min_new_task_gain: args.min_new_task_gain,
            buffer_gates_with_labels: args.buffer_gates_with_labels,
        },
        train: TrainConfig {
            epochs: args.epochs,
            batch_size: args.batch_size,
            learning_rate: args.learning_rate,
            weight_decay: args.weight_decay,
            warmup_steps: args.warmup_steps,
            augmentation: Augmentation {
                crop_height: args.crop_height,
                crop_width: args.crop_width,
                min_scale: 0.75,
                max_scale: 1.5,
                flip: true,
                jitter: 0.25,
            },
            class_weighting: true,
            lovasz_weight: args.lovasz_weight,
            seed: args.seed,
            freeze_prefixes: args
                .freeze
                .iter()
                .filter(|p| !p.is_empty())
                .cloned()
                .collect(),
            validate_every: args.epochs.max(1),
            checkpoint_dir: PathBuf::new(),
        },
        soup_members: args.soup_members,
        runs_dir: args.runs_dir.clone(),
        version: args.version.clone(),
    }
}

fn run_once(args: &RetrainArgs) -> Result<RetrainReport> {
    tch::set_num_threads(args.threads);
    retrain(&config(args), |epoch, loss| {
        println!("epoch {epoch:>3}  loss {loss:.4}")
    })
}

fn print_report(report: &RetrainReport) {
    let d = &report.decision;
    let f = &report.frames;
    println!(
        "snapshot {} ({} listed): {} buffer + {} rehearsal frames trained, {} held back; parent {}",
        report.snapshot_id,
        f.buffer_listed,
        f.buffer_train,
        f.rehearsal,
        f.buffer_holdout,
        report.parent_version
    );
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.2}", v * 100.0));
    println!("| split | parent mIoU | candidate mIoU |\n|---|---|---|");
    println!(
        "| old task ({} frames) | {:.2} | {:.2} |",
        f.old_task,
        d.parent.old_task_miou * 100.0,
        d.candidate.old_task_miou * 100.0
    );
    println!(
        "| new task, buffer held back vs cloud labels ({} frames) | {:.2} | {:.2} |",
        f.buffer_holdout,
        d.parent.new_task_buffer_miou * 100.0,
        d.candidate.new_task_buffer_miou * 100.0
    );
    println!(
        "| new task, labelled ({} frames) | {} | {} |",
        f.new_task_labelled,
        opt(d.parent.new_task_labelled_miou),
        opt(d.candidate.new_task_labelled_miou)
    );
    if let Some(first) = d.first_version_old_task_miou {
        println!(
            "old task of the registry's first version: {:.2} (the candidate may lose at most {:.2} from it)",
            first * 100.0,
            d.policy.max_old_task_drop
        );
    }
    match &report.published {
        Some(dir) => println!(
            "PUBLISHED {} at {}",
            report.candidate_version,
            dir.display()
        ),
        None => {
            println!("REFUSED {}:", report.candidate_version);
            for refusal in &d.refusals {
                println!("  - {refusal}");
            }
        }
    }
    println!(
        "decision: {}",
        report.run_dir.join(crate::retrain::DECISION_FILE).display()
    );
}

fn watch(args: &WatchArgs) -> Result<()> {
    let policy = TriggerPolicy {
        min_new_samples: args.min_new_samples,
        window: args.window,
    };
    std::fs::create_dir_all(&args.retrain.runs_dir)?;
    let state_path = args.retrain.runs_dir.join("watch-state.json");
    loop {
        if let Err(error) = check_and_retrain(args, &policy, &state_path) {
            // A bad export or a failed run must not stop the watcher; the next period tries again.
            tracing::error!("retraining check failed: {error:#}");
            if args.once {
                return Err(error);
            }
        }
        if args.once {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(args.check_period_secs.max(1)));
    }
}

fn check_and_retrain(
    args: &WatchArgs,
    policy: &TriggerPolicy,
    state_path: &std::path::Path,
) -> Result<()> {
    if let Some(command) = &args.refresh_command {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .status()?;
        if !status.success() {
            bail!("refresh command `{command}` failed: {status}");
        }
    }
    let snapshot = match Snapshot::open(&args.retrain.buffer_export, args.retrain.max_buffer_frames)
    {
        Ok(snapshot) => snapshot,
        Err(SnapshotError::Empty { .. }) => {
            println!(
                "buffer export {} is empty; waiting",
                args.retrain.buffer_export.display()
            );
            return Ok(());
        }
        Err(error) => return Err(error.into()),
    };
    let mut state = WatchState::load(state_path)?;
    let names: Vec<String> = snapshot.samples.iter().map(|s| s.name()).collect();
    let new_samples = state.new_samples(names.iter().map(String::as_str));
    let minute_of_day = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() % 86_400 / 60) as u32;
    match check(new_samples, minute_of_day, policy) {
        TriggerCheck::Retrain { new_samples } => {
            println!(
                "{new_samples} new buffer samples in snapshot {}: retraining",
                snapshot.id
            );
            let report = run_once(&args.retrain)?;
            print_report(&report);
            state.seen = names.into_iter().collect();
            state.last_snapshot_id = Some(report.snapshot_id);
            state.save(state_path)?;
        }
        TriggerCheck::NotEnoughSamples {
            new_samples,
            needed,
        } => {
            println!(
                "snapshot {}: {new_samples} new buffer samples, {needed} needed; not retraining",
                snapshot.id
            )
        }
        TriggerCheck::OutsideWindow { new_samples } => {
            println!(
                "snapshot {}: {new_samples} new buffer samples, outside the window; not retraining",
                snapshot.id
            )
        }
    }
    // Also after a check that trained nothing: a failed upload is retried, and a rollback is followed.
    args.retrain.registry.mirror_live_version()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args_with_freeze(freeze: &str) -> RetrainArgs {
        RetrainArgs::from_flags([
            ("buffer-export", "export".to_string()),
            ("old-task-index", "day-val.txt".to_string()),
            ("freeze", freeze.to_string()),
        ])
        .expect("flags parse")
    }

    #[test]
    fn freeze_takes_a_comma_separated_list_and_an_empty_one_trains_everything() {
        assert_eq!(
            config(&args_with_freeze("_conv_stem.,_bn0."))
                .train
                .freeze_prefixes,
            ["_conv_stem.", "_bn0."]
        );
        assert!(
            config(&args_with_freeze(""))
                .train
                .freeze_prefixes
                .is_empty()
        );
    }
}

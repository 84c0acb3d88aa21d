//! `trainer`: train the edge model on an Ianvs-style index with libtorch, write the weights back into ONNX, and
//! evaluate any model directory with ONNX Runtime.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use models::dataset::{Sample, read_index};
use models::evaluation::{evaluate_edge, median};
use models::metrics::SegmentationScores;
use models::{EdgeModel, SessionConfig};
use trainer::data::{Augmentation, load_frames};
use trainer::export::{PublishInfo, publish};
use trainer::{TrainConfig, Trainer};

use trainer::retrain_cli::{self, RetrainAction};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fine-tune a model directory's trainable module and publish the result as a new model directory.
    Train(TrainArgs),
    /// Evaluate a model directory's ONNX graph on labelled index files: per-class IoU, mIoU, median latency.
    Eval(EvalArgs),
    /// Turn on exposure normalisation in a model directory: frames darker than the mean brightness of the training
    /// frames are brightened to it before inference (written into the manifest as a new version; weights unchanged).
    CalibrateExposure(ExposureArgs),
    /// Train the cloud's semantic head on MobileSAM embeddings of labelled frames (the initial training set).
    CloudHead(CloudHeadArgs),
    /// Fit how much the edge's and the semantic head's class scores count in the cloud's product of experts, by
    /// maximum likelihood on labelled old-task frames; written into the head's manifest as a new version.
    FitEvidenceExponents(EvidenceExponentArgs),
    /// Lifelong retraining on the replay buffer, labelled by the cloud, gated, published into a model registry.
    Retrain {
        #[command(subcommand)]
        action: RetrainAction,
    },
}

#[derive(Args)]
struct TrainArgs {
    /// Model directory to start from (manifest with `model` and `trainable` files).
    #[arg(long, env = "TRAIN_MODEL", default_value = "models/edge/base")]
    model: PathBuf,
    /// Ianvs-style index of the training frames.
    #[arg(long, env = "TRAIN_INDEX")]
    train_index: PathBuf,
    /// Index evaluated after every epoch.
    #[arg(long, env = "VAL_INDEX")]
    val_index: Option<PathBuf>,
    /// Where the published model directory goes.
    #[arg(long, env = "TRAIN_OUT")]
    out: PathBuf,
    /// Version written into the published manifest.
    #[arg(long, default_value = "1.0.0")]
    version: String,
    #[arg(long, default_value_t = 60)]
    epochs: usize,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long, default_value_t = 2e-3)]
    learning_rate: f64,
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f64,
    #[arg(long, default_value_t = 50)]
    warmup_steps: usize,
    #[arg(long, default_value_t = 256)]
    crop_height: i64,
    #[arg(long, default_value_t = 320)]
    crop_width: i64,
    #[arg(long, default_value_t = 0.75)]
    min_scale: f64,
    #[arg(long, default_value_t = 1.5)]
    max_scale: f64,
    #[arg(long, default_value_t = 0.25)]
    jitter: f64,
    /// Disable the 1/sqrt(frequency) class weighting of the loss.
    #[arg(long)]
    no_class_weighting: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Parameter-name prefixes to keep frozen (comma-separated; empty to train everything).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "_conv_stem.,_bn0.,_blocks.0.,_blocks.1.,_blocks.2."
    )]
    freeze: Vec<String>,
    #[arg(long, default_value_t = 5)]
    validate_every: usize,
    /// Checkpoint directory; a run resumes from it. Default: `<out>.checkpoints`.
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// libtorch threads.
    #[arg(long, env = "TRAIN_THREADS", default_value_t = 2)]
    threads: i32,
}

#[derive(Args)]
struct EvalArgs {
    #[arg(long, env = "EDGE_MODEL_DIR", default_value = "models/edge/current")]
    model: PathBuf,
    /// One or more index files; each is scored on its own.
    #[arg(long = "index", required = true)]
    indexes: Vec<PathBuf>,
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

#[derive(Args)]
struct CloudHeadArgs {
    /// The SAM model whose embeddings the head reads.
    #[arg(long, default_value_os_t = models::paths::models_dir().join("mobilesam"))]
    sam_model: PathBuf,
    /// The labelled frames to learn from: the edge model's training set, never the drift's frames.
    #[arg(long)]
    train_index: PathBuf,
    /// Labelled frames scored after training; each figure goes into the manifest.
    #[arg(long = "eval-index")]
    eval_indexes: Vec<PathBuf>,
    /// The edge model whose class names and colours the head uses.
    #[arg(long, default_value_os_t = models::paths::edge_model_dir())]
    classes_from: PathBuf,
    #[arg(long, default_value = "models/cloud-head")]
    out: PathBuf,
    /// Low-light copies of every training frame (0: daylight only; 3 gives the cloud better dusk labels than 1).
    #[arg(long, default_value_t = 3)]
    low_light_copies: usize,
    #[arg(long, default_value = "1.0.0")]
    version: String,
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    #[arg(long, default_value_t = 8)]
    epochs: usize,
    #[arg(long, default_value_t = 4096)]
    batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    learning_rate: f64,
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f64,
    #[arg(long, default_value_t = 0)]
    seed: i64,
    #[arg(long, env = "TRAIN_THREADS", default_value_t = 2)]
    threads: usize,
}

#[derive(Args)]
struct EvidenceExponentArgs {
    /// The head directory to update in place.
    #[arg(long, default_value_os_t = models::paths::models_dir().join("cloud-head"))]
    head: PathBuf,
    /// The SAM model whose embeddings the head reads.
    #[arg(long, default_value_os_t = models::paths::models_dir().join("mobilesam"))]
    sam_model: PathBuf,
    /// The edge model whose scores the cloud multiplies with the head's.
    #[arg(long, default_value_os_t = models::paths::edge_model_dir())]
    edge_model: PathBuf,
    /// Labelled frames of the task both models were trained for (e.g. day-val), never the drift's frames.
    #[arg(long)]
    index: PathBuf,
    /// Every n-th pixel across and down is a sample.
    #[arg(long, default_value_t = 8)]
    pixel_step: usize,
    /// Version written into the head's manifest (the old one becomes its parent).
    #[arg(long)]
    version: String,
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

#[derive(Args)]
struct ExposureArgs {
    /// The model directory to update in place.
    #[arg(long, default_value = "models/edge/current")]
    model: PathBuf,
    /// The frames the model was trained on.
    #[arg(long)]
    train_index: PathBuf,
    /// Version written into the manifest (the old one becomes its parent).
    #[arg(long)]
    version: String,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Train(args) => train(args),
        Command::Eval(args) => eval(args),
        Command::CalibrateExposure(args) => calibrate_exposure(&args),
        Command::CloudHead(args) => cloud_head(&args),
        Command::FitEvidenceExponents(args) => fit_evidence_exponents(&args),
        Command::Retrain { action } => retrain_cli::run(action),
    }
}

fn cloud_head(args: &CloudHeadArgs) -> Result<()> {
    use trainer::cloud_head::{
        HeadInfo, HeadTrainConfig, LowLight, embed_cells, evaluate_head, train_head, write_head,
    };
    tch::set_num_threads(args.threads as i32);
    let sam = models::sam::SamModel::load(
        &args.sam_model,
        SessionConfig {
            intra_threads: args.threads,
            ..SessionConfig::default()
        },
    )
    .with_context(|| format!("loading {}", args.sam_model.display()))?;
    let edge = models::manifest::LoadedManifest::load_unverified(&args.classes_from)?.manifest;
    let samples = read_index(&args.train_index, None)?;
    let bar = trainer::progress::bar(samples.len() as u64, "embedding");
    let low_light = LowLight {
        copies: args.low_light_copies,
        seed: args.seed as u64,
        ..LowLight::default()
    };
    let data = embed_cells(&sam, &samples, edge.classes.len(), &low_light, |i| {
        bar.set_position(i as u64)
    })?;
    bar.finish_and_clear();
    let config = HeadTrainConfig {
        hidden: args.hidden,
        epochs: args.epochs,
        batch_size: args.batch_size,
        learning_rate: args.learning_rate,
        weight_decay: args.weight_decay,
        seed: args.seed,
    };
    println!(
        "training a {}-{}-{} head on {} cells of {} frames for {} epochs",
        data.channels,
        config.hidden,
        data.classes,
        data.cells(),
        samples.len(),
        config.epochs
    );
    let weights = train_head(&data, &config, |epoch, loss| {
        println!("epoch {epoch:>3}  loss {loss:.4}")
    })?;
    drop(data);
    let info = HeadInfo {
        name: "mobilesam-semantic-head".into(),
        version: args.version.clone(),
        sam: sam.manifest(),
        classes: edge.classes.clone(),
        produced_by: format!(
            "trainer cloud-head --train-index {} --low-light-copies {} --hidden {} --epochs {} --batch-size {} --learning-rate {} --weight-decay {} --seed {}",
            args.train_index.display(),
            args.low_light_copies,
            args.hidden,
            args.epochs,
            args.batch_size,
            args.learning_rate,
            args.weight_decay,
            args.seed
        ),
        training_data: args.train_index.display().to_string(),
    };
    write_head(&weights, &args.out, info)?;
    // Score the head as written, so the figures are those of the file the cloud loads.
    let head = models::SemanticHead::load(&args.out)?;
    let scored = score_each_index(
        &args.eval_indexes,
        &edge.class_names(),
        |samples, on_frame| Ok((evaluate_head(&head, &sam, samples, on_frame)?, ())),
    )?;
    let mut loaded = models::manifest::LoadedManifest::load_verified(&args.out)?;
    for (index, scores, ()) in scored {
        let split = index
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        loaded
            .manifest
            .metrics
            .insert(format!("{split}/miou"), scores.miou);
    }
    loaded.manifest.write_with_checksums(&args.out)?;
    println!("published {} version {}", args.out.display(), args.version);
    Ok(())
}

fn fit_evidence_exponents(args: &EvidenceExponentArgs) -> Result<()> {
    let session = SessionConfig {
        intra_threads: args.threads,
        ..SessionConfig::default()
    };
    let head = models::SemanticHead::load(&args.head)
        .with_context(|| format!("loading {}", args.head.display()))?;
    let sam = models::sam::SamModel::load(&args.sam_model, session)
        .with_context(|| format!("loading {}", args.sam_model.display()))?;
    let edge = EdgeModel::load(&args.edge_model, session)
        .with_context(|| format!("loading {}", args.edge_model.display()))?;
    let samples = read_index(&args.index, None)?;
    let bar = trainer::progress::bar(samples.len() as u64, "scoring");
    let collected = trainer::cloud_head::collect_evidence(
        &head,
        &sam,
        &edge,
        &samples,
        args.pixel_step,
        |i| bar.set_position(i as u64),
    )?;
    bar.finish_and_clear();
    let evidence = collected.evidence();
    let (fitted, nll) = evidence.fit_exponents(&trainer::cloud_head::EXPONENT_GRID);
    let equal = evidence.negative_log_likelihood(sam_core::ExpertExponents::EQUAL);
    println!(
        "{} labelled pixels of {} frames; mean negative log-likelihood per pixel:",
        collected.labels.len(),
        samples.len()
    );
    println!("| edge exponent | head exponent | NLL |\n|---|---|---|");
    println!("| 1.0 | 1.0 | {equal:.4} |");
    println!("| {:.1} | {:.1} | {nll:.4} |", fitted.first, fitted.second);
    let note = format!(
        "trainer fit-evidence-exponents --index {} --pixel-step {} with edge model {} {} (NLL {equal:.4} -> {nll:.4})",
        args.index.display(),
        args.pixel_step,
        edge.manifest().name,
        edge.manifest().version
    );
    trainer::cloud_head::record_evidence_exponents(&args.head, fitted, &args.version, &note)?;
    println!(
        "{} version {}: edge exponent {:.1}, head exponent {:.1}",
        args.head.display(),
        args.version,
        fitted.first,
        fitted.second
    );
    Ok(())
}

fn calibrate_exposure(args: &ExposureArgs) -> Result<()> {
    let samples = read_index(&args.train_index, None)?;
    let mut total = 0.0;
    for sample in &samples {
        total += f64::from(models::image_ops::mean_value(&sample.load_image()?));
    }
    let target_mean = (total / samples.len() as f64) as f32;
    let mut loaded = models::manifest::LoadedManifest::load_verified(&args.model)?;
    let manifest = &mut loaded.manifest;
    manifest.input.exposure = Some(models::manifest::Exposure { target_mean });
    manifest.provenance.parent_version = Some(manifest.version.clone());
    manifest.version = args.version.clone();
    manifest.provenance.produced_by = format!(
        "{}; trainer calibrate-exposure --train-index {} (mean brightness {target_mean:.2} over {} frames)",
        manifest.provenance.produced_by,
        args.train_index.display(),
        samples.len()
    );
    manifest.write_with_checksums(&args.model)?;
    println!(
        "{} {}: exposure target {target_mean:.2} (mean of {} training frames)",
        manifest.name,
        manifest.version,
        samples.len()
    );
    Ok(())
}

fn train(args: TrainArgs) -> Result<()> {
    tch::set_num_threads(args.threads);
    let mut trainer =
        Trainer::load(&args.model).with_context(|| format!("loading {}", args.model.display()))?;
    let frames = load_frames(&args.train_index)?;
    let validation = match &args.val_index {
        Some(index) => load_frames(index)?,
        None => Vec::new(),
    };
    let checkpoint_dir = args
        .checkpoint_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.checkpoints", args.out.display())));
    let config = TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        learning_rate: args.learning_rate,
        weight_decay: args.weight_decay,
        warmup_steps: args.warmup_steps,
        augmentation: Augmentation {
            crop_height: args.crop_height,
            crop_width: args.crop_width,
            min_scale: args.min_scale,
            max_scale: args.max_scale,
            flip: true,
            jitter: args.jitter,
        },
        class_weighting: !args.no_class_weighting,
        lovasz_weight: 0.0,
        seed: args.seed,
        freeze_prefixes: args
            .freeze
            .iter()
            .filter(|p| !p.is_empty())
            .cloned()
            .collect(),
        validate_every: args.validate_every,
        checkpoint_dir,
    };
    println!(
        "training {} ({} frames, validation {}) for {} epochs",
        args.model.display(),
        frames.len(),
        validation.len(),
        config.epochs
    );
    let progress = trainer.fit(
        &frames,
        &validation,
        &config,
        |epoch, loss, scores| match scores {
            Some(s) => println!(
                "epoch {epoch:>3}  loss {loss:.4}  val mIoU {:.4}  pixel acc {:.4}",
                s.miou, s.pixel_accuracy
            ),
            None => println!("epoch {epoch:>3}  loss {loss:.4}"),
        },
    )?;
    let mut metrics = BTreeMap::new();
    if let Some(miou) = progress.validation_miou.last() {
        metrics.insert("validation/miou".to_string(), *miou);
    }
    let info = PublishInfo {
        version: args.version.clone(),
        produced_by: format!(
            "trainer train --train-index {} --epochs {} --batch-size {} --learning-rate {} --crop {}x{}",
            args.train_index.display(),
            args.epochs,
            args.batch_size,
            args.learning_rate,
            args.crop_width,
            args.crop_height
        ),
        training_data: Some(args.train_index.display().to_string()),
        metrics,
    };
    publish(&trainer, &args.out, &info)?;
    println!("published {} version {}", args.out.display(), args.version);
    Ok(())
}

fn eval(args: EvalArgs) -> Result<()> {
    let model = EdgeModel::load(
        &args.model,
        SessionConfig {
            intra_threads: args.threads,
            ..SessionConfig::default()
        },
    )?;
    let manifest = model.manifest();
    println!(
        "model {} version {} ({})\n",
        manifest.name,
        manifest.version,
        args.model.display()
    );
    let scored = score_each_index(
        &args.indexes,
        &manifest.class_names(),
        |samples, on_frame| {
            let (scores, times) = evaluate_edge(&model, samples, on_frame)?;
            let median_ms = median(&times);
            Ok((scores, median_ms))
        },
    )?;
    println!(
        "| split | mIoU | median inference ms ({} threads) |\n|---|---|---|",
        args.threads
    );
    for (index, scores, ms) in scored {
        println!("| {} | {:.4} | {ms:.1} |", index.display(), scores.miou);
    }
    Ok(())
}

/// Scores each labelled index with `score` (given the frames and a progress callback), behind a progress bar, and
/// prints its per-class table.
fn score_each_index<T>(
    indexes: &[PathBuf],
    class_names: &[String],
    mut score: impl FnMut(&[Sample], &mut dyn FnMut(usize)) -> Result<(SegmentationScores, T)>,
) -> Result<Vec<(PathBuf, SegmentationScores, T)>> {
    let mut scored = Vec::new();
    for index in indexes {
        let samples = read_index(index, None)?;
        let bar = trainer::progress::bar(samples.len() as u64, "eval");
        let (scores, extra) = score(&samples, &mut |i| bar.set_position(i as u64))?;
        bar.finish_and_clear();
        println!(
            "## {} ({} frames)\n\n{}",
            index.display(),
            samples.len(),
            scores.table(class_names)
        );
        scored.push((index.clone(), scores, extra));
    }
    Ok(scored)
}

//! `benchmarks amg`: MobileSAM automatic mask generation on labelled frames, for each prompting mode and fusion
//! rule: seconds per frame (encoder, decoder, post-processing, fusion), masks, prompts and decoder calls per
//! frame, and mIoU of the edge model alone, of each rule, and of the ground-truth vote inside the same masks
//! (the ceiling any mask-level rule can reach). All modes share one encoder run per frame.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::ValueEnum;
use models::evaluation::median;
use models::metrics::ConfusionMatrix;
use models::paths::{camvid_dir, models_dir};
use models::sam::{GeneratorConfig, PromptMode, SamModel};
use models::{SemanticHead, SessionConfig};
use sam_core::{ConfidentVoteParams, FusionRule, fuse, fuse_oracle};
use serde::Deserialize;

use crate::report::{cpu_load_note, replace_readme_section};
use crate::segmenter::{EDGE_SEGMENTER, Segmenter};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Mode {
    /// SAM's full grid.
    Grid,
    /// Coarse-to-fine grid walk skipping covered points, within the prompt budget.
    Adaptive,
    /// Uncertainty-ordered grid walk skipping covered and confident points, within the prompt budget.
    Guided,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Index file of labelled frames.
    #[arg(long, default_value_os_t = camvid_dir().join("index/dusk-eval.txt"))]
    index: PathBuf,
    /// Use only the first N frames.
    #[arg(long)]
    frames: Option<usize>,
    /// The edge model whose scores guide and get fused: `edge-segmenter` (ours) or `cityscapes-baseline` (the
    /// Cityscapes DeepLab the reference figures used, from `$SHARED_DIR`).
    #[arg(long, default_value = EDGE_SEGMENTER)]
    basemodel: String,
    /// Edge model directory or baseline ONNX file (default: `EDGE_MODEL_DIR` or models/edge/current; the
    /// baseline's file under `$SHARED_DIR`).
    #[arg(long)]
    edge_model: Option<PathBuf>,
    #[arg(long, default_value_os_t = models_dir().join("mobilesam"))]
    sam_model: PathBuf,
    /// Fuse the edge's scores times this semantic head's (each raised to the head's fitted exponent), as
    /// cloud-infer does, instead of the edge's scores alone. Prompts are still guided by the edge's scores.
    #[arg(long)]
    semantic_head: Option<PathBuf>,
    #[arg(long, value_delimiter = ',', default_values = ["grid", "adaptive", "guided"])]
    modes: Vec<Mode>,
    /// Grid density of every mode (the budgeted modes walk the same grid).
    #[arg(long, default_value_t = 32)]
    points_per_side: usize,
    /// Prompt budgets of the adaptive and guided modes (comma-separated: one row group per budget).
    #[arg(long, value_delimiter = ',', default_values_t = [48])]
    budgets: Vec<usize>,
    /// Decoder batch of the adaptive and guided modes (smaller batches skip more covered points).
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Guided mode skips grid cells whose mean edge uncertainty (1 - top-2 margin) is below this.
    #[arg(long, default_value_t = 0.1)]
    min_uncertainty: f32,
    /// Confident-vote rule: masks whose weighted winning share is below this are left to the edge. Several
    /// values (comma-separated) add one rule per combination with `--keep-confidence`, for tuning.
    #[arg(long, value_delimiter = ',', default_values_t = [ConfidentVoteParams::default().min_purity])]
    min_purity: Vec<f32>,
    /// Confident-vote rule: edge pixels at least this confident keep their label (several values: see above).
    #[arg(long, value_delimiter = ',', default_values_t = [ConfidentVoteParams::default().keep_confidence])]
    keep_confidence: Vec<f32>,
    /// Seconds per frame PyTorch's generator took at the same settings (scripts/bench_pytorch_amg.py).
    #[arg(long, conflicts_with = "pytorch_json")]
    pytorch_seconds_per_frame: Option<f64>,
    /// The JSON scripts/bench_pytorch_amg.py writes (reads `seconds_per_frame`).
    #[arg(long)]
    pytorch_json: Option<PathBuf>,
    /// README whose `amg-<basemodel>` section receives the table.
    #[arg(long, default_value = "benchmarks/README.md")]
    readme: PathBuf,
    /// Print only, leave the README alone.
    #[arg(long)]
    no_readme: bool,
}

#[derive(Deserialize)]
struct PytorchTiming {
    seconds_per_frame: f64,
}

/// A prompting mode and, for the budgeted modes, its prompt budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Variant {
    mode: Mode,
    budget: Option<usize>,
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.budget {
            Some(budget) => write!(f, "{:?} {budget}", self.mode),
            None => write!(f, "{:?}", self.mode),
        }
    }
}

const GRID: Variant = Variant {
    mode: Mode::Grid,
    budget: None,
};

/// Everything measured for one prompting variant.
struct ModeStats {
    encoder_s: Vec<f64>,
    decoder_s: Vec<f64>,
    post_s: Vec<f64>,
    masks: Vec<usize>,
    prompts: Vec<usize>,
    calls: Vec<usize>,
    /// Per rule: confusion matrix and fusion seconds per frame.
    rules: Vec<(ConfusionMatrix, Vec<f64>)>,
    oracle: ConfusionMatrix,
}

fn mean<T: Copy + Into<f64>>(values: &[T]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().map(|&v| v.into()).sum::<f64>() / values.len() as f64
    }
}

fn mean_usize(values: &[usize]) -> f64 {
    mean(&values.iter().map(|&v| v as f64).collect::<Vec<_>>())
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let load_before = cpu_load_note();
    let mut samples = models::dataset::read_index(&args.index, None)?;
    if let Some(n) = args.frames {
        samples.truncate(n);
    }
    let edge = Segmenter::load(
        &args.basemodel,
        args.edge_model.as_deref(),
        SessionConfig::default().intra_threads,
    )?;
    let sam = SamModel::load(&args.sam_model, SessionConfig::default())?;
    let head = args
        .semantic_head
        .as_deref()
        .map(SemanticHead::load)
        .transpose()?;
    let classes = edge.classes().len();
    let mut rules = vec![FusionRule::SsaVote, FusionRule::LogitSum];
    for &min_purity in &args.min_purity {
        for &keep_confidence in &args.keep_confidence {
            rules.push(FusionRule::ConfidentVote(ConfidentVoteParams {
                min_purity,
                keep_confidence,
            }));
        }
    }
    let variants: Vec<Variant> = args
        .modes
        .iter()
        .flat_map(|&mode| match mode {
            Mode::Grid => vec![Variant { mode, budget: None }],
            _ => args
                .budgets
                .iter()
                .map(|&b| Variant {
                    mode,
                    budget: Some(b),
                })
                .collect(),
        })
        .collect();
    let mut stats: BTreeMap<Variant, ModeStats> = variants
        .iter()
        .map(|&v| {
            let s = ModeStats {
                encoder_s: Vec::new(),
                decoder_s: Vec::new(),
                post_s: Vec::new(),
                masks: Vec::new(),
                prompts: Vec::new(),
                calls: Vec::new(),
                rules: rules
                    .iter()
                    .map(|_| (ConfusionMatrix::new(classes), Vec::new()))
                    .collect(),
                oracle: ConfusionMatrix::new(classes),
            };
            (v, s)
        })
        .collect();
    let mut edge_matrix = ConfusionMatrix::new(classes);
    for (i, sample) in samples.iter().enumerate() {
        let (image, truth) = sample.load_labelled()?;
        let (width, height) = image.dimensions();
        let edge_output = edge.segment(&image)?;
        edge_matrix.add(truth.as_raw(), &edge_output.labels);
        let scores = edge_output.class_scores().resized_nearest(width, height);
        let embedding = sam.embed(&image)?;
        let combined;
        let evidence = match &head {
            Some(head) => {
                combined = scores
                    .product(&head.class_scores(&embedding)?, head.evidence_exponents())
                    .context("the semantic head and the edge model have different classes")?;
                &combined
            }
            None => &scores,
        };
        for (&variant, s) in stats.iter_mut() {
            let max_prompts = variant.budget.unwrap_or(0);
            let config = GeneratorConfig {
                points_per_side: args.points_per_side,
                prompting: match variant.mode {
                    Mode::Grid => PromptMode::Grid,
                    Mode::Adaptive => PromptMode::Adaptive {
                        max_prompts,
                        batch_size: args.batch_size,
                    },
                    Mode::Guided => PromptMode::Guided {
                        max_prompts,
                        batch_size: args.batch_size,
                        min_uncertainty: args.min_uncertainty,
                    },
                },
                ..GeneratorConfig::default()
            };
            let generated = sam.generate(&embedding, &config, Some(&scores))?;
            s.encoder_s.push(embedding.encoder_ms / 1e3);
            s.decoder_s.push(generated.decoder_ms / 1e3);
            s.post_s.push(generated.postprocess_ms / 1e3);
            s.masks.push(generated.masks.len());
            s.prompts.push(generated.prompts_used);
            s.calls.push(generated.decoder_calls);
            for (rule, (matrix, times)) in rules.iter().zip(&mut s.rules) {
                let start = Instant::now();
                let fused = fuse(rule, &generated.masks, evidence);
                times.push(start.elapsed().as_secs_f64());
                matrix.add(truth.as_raw(), &fused);
            }
            s.oracle.add(
                truth.as_raw(),
                &fuse_oracle(
                    &generated.masks,
                    &edge_output.labels,
                    truth.as_raw(),
                    classes,
                ),
            );
            eprintln!(
                "[{}/{}] {} {variant}: {} masks, {} prompts, encoder {:.2} s, decoder {:.2} s",
                i + 1,
                samples.len(),
                sample.name(),
                generated.masks.len(),
                generated.prompts_used,
                embedding.encoder_ms / 1e3,
                generated.decoder_ms / 1e3
            );
        }
    }
    let pytorch = match (&args.pytorch_json, args.pytorch_seconds_per_frame) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Some(serde_json::from_str::<PytorchTiming>(&text)?.seconds_per_frame)
        }
        (None, seconds) => seconds,
    };
    let table = render(
        args,
        &stats,
        &rules,
        &edge_matrix,
        samples.len(),
        &describe_models(&edge, head.as_ref()),
        pytorch,
    );
    let body = format!(
        "{table}\nCPU while measuring: before: {load_before}; after: {}.\n",
        cpu_load_note()
    );
    println!("{body}");
    if !args.no_readme {
        let section = match args.semantic_head {
            Some(_) => format!("amg-{}-head", args.basemodel),
            None => format!("amg-{}", args.basemodel),
        };
        replace_readme_section(&args.readme, &section, &body)?;
        eprintln!("wrote the {section} section of {}", args.readme.display());
    }
    Ok(())
}

/// The edge model, and whose class scores vote the masks.
fn describe_models(edge: &Segmenter, head: Option<&SemanticHead>) -> String {
    let (name, version) = edge.identity();
    match head {
        Some(head) => {
            let exponents = head.evidence_exponents();
            format!(
                "edge model {name} {version} (masks voted by its scores^{} times semantic head {} {}'s^{})",
                exponents.first,
                head.manifest().name,
                head.manifest().version,
                exponents.second
            )
        }
        None => format!("edge model {name} {version}"),
    }
}

fn rule_label(rule: &FusionRule) -> String {
    match rule {
        FusionRule::ConfidentVote(p) => {
            format!(
                "{} (purity {}, keep {})",
                rule.name(),
                p.min_purity,
                p.keep_confidence
            )
        }
        _ => rule.name().to_string(),
    }
}

/// One table row: a fusion rule (or the oracle) under one prompting mode.
struct Row {
    name: String,
    miou: f64,
    /// Fraction of the grid mode's gain over the edge under the same rule.
    share: Option<f64>,
    fusion_ms: f64,
    /// Seconds per frame, generation plus fusion.
    totals: Vec<f64>,
}

fn render(
    args: &Args,
    stats: &BTreeMap<Variant, ModeStats>,
    rules: &[FusionRule],
    edge_matrix: &ConfusionMatrix,
    frames: usize,
    models: &str,
    pytorch: Option<f64>,
) -> String {
    let edge_miou = edge_matrix.scores().miou;
    let command: Vec<String> = std::env::args().skip(1).collect();
    let mut out = format!(
        "Command (from the repository root): `cargo run --release -p benchmarks -- {}`\n\n\
         {frames} frames of `{}`, {models}, {}x{} grid, adaptive/guided budgets as named (batches of {}), \
         guided min uncertainty {}, SAM thresholds at their defaults. Seconds are means per frame; total = encoder + \
         decoder + post-processing + fusion (median in brackets). Edge-only mIoU **{edge_miou:.3}**.\n\n\
         | prompting | rule | mIoU | gain vs edge | share of grid gain | masks/frame | prompts/frame | decoder calls/frame | encoder s | decoder s | post s | fusion ms | total s |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        command.join(" "),
        args.index.display(),
        args.points_per_side,
        args.points_per_side,
        args.batch_size,
        args.min_uncertainty,
    );
    let grid_gain = |rule: usize| {
        stats
            .get(&GRID)
            .map(|g| g.rules[rule].0.scores().miou - edge_miou)
    };
    for (variant, s) in stats {
        let generation: Vec<f64> = (0..s.encoder_s.len())
            .map(|f| s.encoder_s[f] + s.decoder_s[f] + s.post_s[f])
            .collect();
        let mut rows: Vec<Row> = rules
            .iter()
            .enumerate()
            .map(|(r, rule)| {
                let (matrix, times) = &s.rules[r];
                let miou = matrix.scores().miou;
                let share = grid_gain(r)
                    .filter(|g| g.abs() > 1e-9)
                    .map(|g| (miou - edge_miou) / g);
                let totals: Vec<f64> = generation.iter().zip(times).map(|(g, t)| g + t).collect();
                Row {
                    name: rule_label(rule),
                    miou,
                    share,
                    fusion_ms: mean(times) * 1e3,
                    totals,
                }
            })
            .collect();
        rows.push(Row {
            name: "oracle (GT vote, ceiling)".into(),
            miou: s.oracle.scores().miou,
            share: None,
            fusion_ms: 0.0,
            totals: generation.clone(),
        });
        for Row {
            name,
            miou,
            share,
            fusion_ms,
            totals,
        } in rows
        {
            out += &format!(
                "| {variant} | {name} | {miou:.3} | {:+.3} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {fusion_ms:.1} | {:.2} ({:.2}) |\n",
                miou - edge_miou,
                share.map_or("-".into(), |s| format!("{:.0}%", s * 100.0)),
                mean_usize(&s.masks),
                mean_usize(&s.prompts),
                mean_usize(&s.calls),
                mean(&s.encoder_s),
                mean(&s.decoder_s),
                mean(&s.post_s),
                mean(&totals),
                median(&totals),
            );
        }
    }
    if let (Some(seconds), Some(grid)) = (pytorch, stats.get(&GRID)) {
        let ours = mean(&grid.encoder_s) + mean(&grid.decoder_s) + mean(&grid.post_s);
        out += &format!(
            "\nPyTorch `SamAutomaticMaskGenerator` at the same settings: {seconds:.1} s/frame; this Rust grid mode: \
             {ours:.1} s/frame -> **{:.1}x** faster.\n",
            seconds / ours
        );
    }
    out
}

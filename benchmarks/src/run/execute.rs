//! In-process runs of the edge-only, cloud-only and collaborative paradigms: the edge model, the miner and the
//! cloud refinement (MobileSAM + fusion) run here on every test frame, exactly as the services would.
//!
//! The miner sees the frames in index order on a simulated 10 fps clock, so budgets and rate caps behave as on a
//! robot. Latency is compute time (the edge answer: preprocessing, model, postprocessing; the cloud-refined
//! answer: that plus the refinement), without the network; `mode: http` measures it over the wire. Bytes are the
//! payloads the edge would send (encoded frame, its class scores pooled and quantised as edge-infer does, metadata) and get back (the label PNG
//! in base64).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use hard_example::{Dims, Miner, MinerConfig, PolicyConfig, ScorerConfig};
use models::image_ops::encode_label_png;
use models::metrics::ConfusionMatrix;
use models::paths::models_dir;
use serde_json::{Map, Value as Json};

use super::job::{Job, ModuleType, Paradigm, RunSpec};
use super::{Args, OverlayFrame, RunResult, Tally, module_threads, overlay_indices, test_frames};
use crate::cloud_labels::{CloudLabeller, RefinementSettings};
use crate::segmenter::{EDGE_SEGMENTER, Segmenter};

/// The simulated camera: one frame every 100 ms.
const FRAME_INTERVAL_MS: u64 = 100;
/// Metadata part of a refine request (request id, robot, model, miner, shapes), about this many bytes.
const REFINE_META_BYTES: usize = 400;

pub fn run(job: &Job, spec: &RunSpec, id: &str, dir: &Path, args: &Args) -> Result<RunResult> {
    let segmenter = load_segmenter(spec, args.threads)?;
    let (edge_name, edge_version) = segmenter.identity();
    let mut miner = match spec.paradigm {
        Paradigm::Collaborative => Some(build_miner(spec)?),
        _ => None,
    };
    let mut labeller = match spec.paradigm {
        Paradigm::EdgeOnly => None,
        _ => Some(cloud_labeller(
            spec,
            &args.cache,
            &format!("{edge_name}-{edge_version}"),
        )?),
    };
    let frames = test_frames(
        &job.testenv.dataset.test_index,
        job.testenv.dataset.max_frames,
    )?;
    if frames.is_empty() {
        bail!("the test index has no frames");
    }
    let classes = segmenter.classes();
    let class_count = classes.len();
    let overlay_at = overlay_indices(frames.len(), job.testenv.overlays);
    let mut edge_cm = ConfusionMatrix::new(class_count);
    let mut tally = Tally::new(class_count);
    let mut overlays = Vec::new();
    let mut csv = String::from(
        "frame,uploaded,miner_score,edge_ms,answer_ms,bytes_up,bytes_down,edge_pixel_accuracy,final_pixel_accuracy\n",
    );
    let progress = trainer::progress::bar(frames.len() as u64, id);
    for (i, sample) in frames.iter().enumerate() {
        let encoded = std::fs::read(&sample.image)
            .with_context(|| format!("reading {}", sample.image.display()))?;
        let (image, truth) = sample.load_labelled()?;
        let start = Instant::now();
        let edge = segmenter.segment(&image)?;
        let edge_ms = start.elapsed().as_secs_f64() * 1e3;
        let (upload, score) = match (&mut miner, spec.paradigm) {
            (Some(miner), _) => {
                let dims = Dims::new(
                    edge.classes,
                    edge.score_height as usize,
                    edge.score_width as usize,
                );
                let decision =
                    miner.decide(&edge.probabilities, dims, i as u64 * FRAME_INTERVAL_MS)?;
                (decision.hard, Some(decision.score))
            }
            (None, paradigm) => (paradigm == Paradigm::CloudOnly, None),
        };
        let (labels, answer_ms, up, down) = match (&mut labeller, upload) {
            (Some(labeller), true) => {
                let (labels, cost) = labeller.refine(sample, &image, &edge)?;
                let scores = edge.classes
                    * (wire::UPLOAD_SCORES_WIDTH * wire::UPLOAD_SCORES_HEIGHT) as usize;
                let up = encoded.len() + scores + REFINE_META_BYTES;
                let png = encode_label_png(&labels, edge.width, edge.height)?;
                let down = png.len().div_ceil(3) * 4;
                (labels, edge_ms + cost.refine_ms, up, down)
            }
            _ => (edge.labels.clone(), edge_ms, 0, 0),
        };
        tally.add(upload, answer_ms, up, down);
        let mut frame_edge = ConfusionMatrix::new(class_count);
        frame_edge.add(truth.as_raw(), &edge.labels);
        let mut frame_final = ConfusionMatrix::new(class_count);
        frame_final.add(truth.as_raw(), &labels);
        csv.push_str(&format!(
            "{},{upload},{},{edge_ms:.2},{answer_ms:.2},{up},{down},{:.4},{:.4}\n",
            sample.name(),
            score.map_or(String::new(), |s| format!("{s:.4}")),
            frame_edge.scores().pixel_accuracy,
            frame_final.scores().pixel_accuracy
        ));
        edge_cm.merge(&frame_edge);
        tally.confusion.merge(&frame_final);
        if overlay_at.contains(&i) {
            overlays.push(OverlayFrame {
                name: sample.name(),
                image,
                truth,
                edge: edge.labels,
                result: labels,
            });
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    std::fs::write(dir.join("frames.csv"), csv)?;
    let (mut metrics, per_class_iou) = tally.metrics();
    metrics.insert("edge_miou".into(), edge_cm.scores().miou);
    let mut hyperparameters = spec.hyperparameters();
    hyperparameters.insert("basemodel-version".into(), edge_version);
    if let Some(labeller) = &labeller {
        hyperparameters.insert("cloud_refinement-settings".into(), labeller.describe());
    }
    let mut result = RunResult::new(
        spec,
        id,
        dir,
        &classes,
        hyperparameters,
        metrics,
        per_class_iou,
    );
    result.overlays = overlays;
    Ok(result)
}

pub fn load_segmenter(spec: &RunSpec, default_threads: usize) -> Result<Segmenter> {
    let threads = module_threads(spec, default_threads)?;
    match spec.module(ModuleType::Basemodel) {
        Some(module) => Segmenter::load(&module.name, module.url.as_deref(), threads),
        None => Segmenter::load(EDGE_SEGMENTER, None, threads),
    }
}

/// The cloud-infer defaults, overridden by the `cloud_refinement` module's `prompt_mode`, `max_prompts`,
/// `points_per_side`, `fusion`, `class_evidence` and `semantic_head` (a model directory).
pub fn cloud_labeller(spec: &RunSpec, cache: &Path, edge_key: &str) -> Result<CloudLabeller> {
    let mut settings = RefinementSettings::default();
    let mut sam_dir = models_dir().join("mobilesam");
    let mut head_dir = models_dir().join("cloud-head");
    if let Some(module) = spec.module(ModuleType::CloudRefinement) {
        if module.name != "mobilesam" {
            bail!(
                "cloud_refinement `{}` is unknown (only `mobilesam`)",
                module.name
            );
        }
        if let Some(url) = &module.url {
            sam_dir = url.clone();
        }
        if let Some(mode) = module.string("prompt_mode")? {
            settings.prompting = mode;
        }
        if let Some(fusion) = module.string("fusion")? {
            settings.fusion = fusion;
        }
        if let Some(evidence) = module.string("class_evidence")? {
            settings.class_evidence = evidence;
        }
        if let Some(dir) = module.string("semantic_head")? {
            head_dir = dir.into();
        }
        if let Some(n) = module.number("max_prompts")? {
            settings.max_prompts = n as usize;
        }
        if let Some(n) = module.number("points_per_side")? {
            settings.points_per_side = n as usize;
        }
    }
    CloudLabeller::with_settings(&sam_dir, &head_dir, cache, edge_key, settings)
}

/// The `hard_example_mining` module as a miner: its name is the scorer; `upload_ratio` (with optional `window`
/// and `correction_horizon`) selects the upload budget policy, `threshold` a fixed threshold; every other
/// hyperparameter goes to the scorer (e.g. `pixel_threshold`).
pub fn build_miner(spec: &RunSpec) -> Result<Miner> {
    let module = spec
        .module(ModuleType::HardExampleMining)
        .context("a collaborative algorithm needs a hard_example_mining module")?;
    let mut scorer_params = Map::new();
    let mut policy_params = Map::new();
    for (key, value) in &module.params {
        let json = serde_json::to_value(value)?;
        match key.as_str() {
            "upload_ratio" => {
                policy_params.insert("target_ratio".into(), json);
            }
            "window" | "correction_horizon" | "threshold" => {
                policy_params.insert(key.clone(), json);
            }
            _ => {
                scorer_params.insert(key.clone(), json);
            }
        }
    }
    let policy = if policy_params.contains_key("target_ratio") {
        Some(PolicyConfig::from_name(
            "budget",
            Json::Object(policy_params),
        )?)
    } else if policy_params.contains_key("threshold") {
        Some(PolicyConfig::from_name(
            "threshold",
            Json::Object(policy_params),
        )?)
    } else {
        None
    };
    let config = MinerConfig {
        scorer: ScorerConfig::from_name(&module.name, Json::Object(scorer_params))?,
        policy,
    };
    Ok(config.build()?)
}

//! End-to-end runs over HTTP against a running edge-infer (which reaches cloud-infer itself): every test frame is
//! posted as its encoded file to `/v1/segment` with `collaborate=never` (edge-only), `always` (cloud-only) or
//! `auto` (collaborative: the service's own miner and budget decide, as reported by `/info`). Latency is the
//! client's round trip; bytes are the request and response bodies plus what the edge sent to the cloud (the
//! `edge_cloud_bytes_sent_total` counter of its `/metrics`, read before and after each frame).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use models::image_ops::decode_label_png;
use models::manifest::ClassInfo;
use reqwest::blocking::Client;
use serde_json::Value;

use super::job::{Job, Paradigm, RunSpec};
use super::{OverlayFrame, RunResult, Tally, overlay_indices, test_frames};

const CLOUD_BYTES_METRIC: &str = "edge_cloud_bytes_sent_total";

pub fn run(job: &Job, spec: &RunSpec, id: &str, dir: &Path) -> Result<RunResult> {
    let base = job
        .testenv
        .edge_url
        .as_deref()
        .context("mode: http needs testenv.edge_url")?
        .trim_end_matches('/')
        .to_string();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let authorised = |request: reqwest::blocking::RequestBuilder| match &job.testenv.edge_token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    let info: Value = authorised(client.get(format!("{base}/info")))
        .send()
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("asking {base}/info (is edge-infer running?)"))?
        .json()?;
    let collaborate = match spec.paradigm {
        Paradigm::EdgeOnly => "never",
        Paradigm::CloudOnly => "always",
        Paradigm::Collaborative => "auto",
        Paradigm::Lifelong => bail!("lifelong runs are in-process"),
    };
    let classes: Vec<ClassInfo> = serde_json::from_value(info["model"]["classes"].clone())
        .context("/info lists no model classes (is a model loaded?)")?;
    let frames = test_frames(
        &job.testenv.dataset.test_index,
        job.testenv.dataset.max_frames,
    )?;
    let overlay_at = overlay_indices(frames.len(), job.testenv.overlays);
    let mut tally = Tally::new(classes.len());
    let (mut to_cloud, mut fallbacks) = (0.0f64, 0usize);
    let mut overlays = Vec::new();
    let mut csv = String::from(
        "frame,source,miner_score,round_trip_ms,bytes_up,bytes_down,edge_to_cloud_bytes\n",
    );
    let progress = trainer::progress::bar(frames.len() as u64, id);
    for (i, sample) in frames.iter().enumerate() {
        let encoded = std::fs::read(&sample.image)?;
        let (image, truth) = sample.load_labelled()?;
        let mime = match sample.image.extension().and_then(|e| e.to_str()) {
            Some("jpg" | "jpeg") => "image/jpeg",
            _ => "image/png",
        };
        let cloud_before = cloud_bytes(&client, &base)?;
        let start = Instant::now();
        let response = authorised(
            client
                .post(format!("{base}/v1/segment?collaborate={collaborate}"))
                .header("content-type", mime)
                .body(encoded.clone()),
        )
        .send()?;
        let status = response.status();
        let body = response.bytes()?;
        let round_trip_ms = start.elapsed().as_secs_f64() * 1e3;
        if !status.is_success() {
            bail!(
                "{} answered {status}: {}",
                sample.name(),
                String::from_utf8_lossy(&body)
            );
        }
        let sent_to_cloud = cloud_bytes(&client, &base)? - cloud_before;
        let answer: Value = serde_json::from_slice(&body)?;
        let source = answer["source"].as_str().unwrap_or("?").to_string();
        let png = wire::decode_base64(answer["label_map_png"].as_str().unwrap_or_default())
            .context("the answer has no label map")?;
        let labels = decode_label_png(&png)?.into_raw();
        fallbacks += usize::from(source == "edge-fallback");
        tally.add(source == "cloud", round_trip_ms, encoded.len(), body.len());
        to_cloud += sent_to_cloud;
        tally.confusion.add(truth.as_raw(), &labels);
        csv.push_str(&format!(
            "{},{source},{},{round_trip_ms:.2},{},{},{sent_to_cloud}\n",
            sample.name(),
            answer["miner"]["score"],
            encoded.len(),
            body.len()
        ));
        if overlay_at.contains(&i) {
            overlays.push(OverlayFrame {
                name: sample.name(),
                image,
                truth,
                edge: Vec::new(),
                result: labels,
            });
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    std::fs::write(dir.join("frames.csv"), csv)?;
    let n = frames.len() as f64;
    let (mut metrics, per_class_iou) = tally.metrics();
    metrics.insert("fallback_ratio".into(), fallbacks as f64 / n);
    metrics.insert("edge_to_cloud_bytes_per_frame".into(), to_cloud / n);
    let mut hyperparameters = spec.hyperparameters();
    hyperparameters.insert(
        "basemodel-version".into(),
        info["model"]["version"].as_str().unwrap_or("?").to_string(),
    );
    hyperparameters.insert(
        "hard_example_mining-service".into(),
        info["miner"]["config"].to_string(),
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
    result.overlays = overlays;
    Ok(result)
}

/// The edge's running total of bytes sent to the cloud (0 before its first upload).
fn cloud_bytes(client: &Client, base: &str) -> Result<f64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.text())
        .with_context(|| format!("reading {base}/metrics"))?;
    Ok(text
        .lines()
        .filter(|line| line.starts_with(CLOUD_BYTES_METRIC))
        .filter_map(|line| line.split_whitespace().last()?.parse::<f64>().ok())
        .sum())
}

//! `benchmarks edge-overhead`: what the edge service costs on top of the model, on the same frames and threads.
//!
//! - Raw: ONNX Runtime `Session::run` alone on preprocessed tensors, and the whole in-process pipeline (decode,
//!   preprocess, run, softmax/argmax).
//! - Service: the release `edge-infer` binary started as its own process (no cloud), posting the same PNG frames
//!   with `collaborate=never`.
//!
//! Latency alternates the three paths frame by frame (one at a time, so they never steal each other's cores, and
//! load changes hit all alike); throughput runs each path alone, the service with several concurrent clients.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args as ClapArgs;
use models::dataset::read_index;
use models::evaluation::median;
use models::image_ops::{decode_rgb, to_input_tensor};
use models::{EdgeModel, SessionConfig};

use crate::report;
use crate::run::percentile;

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[arg(long, default_value = "models/edge/current")]
    model: PathBuf,
    #[arg(long, default_value = "../shared/datasets/camvid/index/day-val.txt")]
    index: PathBuf,
    /// Distinct frames used (each is sent `rounds` times).
    #[arg(long, default_value_t = 10)]
    frames: usize,
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// ONNX Runtime intra-op threads, for both the raw runs and the service.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// ONNX Runtime thread spinning, for both the raw runs and the service (edge-infer's `--ort-spinning`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    ort_spinning: bool,
    /// Concurrent clients in the throughput phase.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Seconds each throughput phase runs.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// The edge-infer binary to start.
    #[arg(long, default_value = "target/release/edge-infer")]
    edge_binary: PathBuf,
    #[arg(long, default_value = "127.0.0.1:18080")]
    listen: String,
    #[arg(long, default_value = "benchmarks/README.md")]
    readme: PathBuf,
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(args: &Args) -> Result<()> {
    // reqwest is built without a default TLS provider (the workspace picks ring); plain HTTP still needs one set.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let samples = read_index(&args.index, None)?;
    let pngs: Vec<Vec<u8>> = samples
        .iter()
        .take(args.frames)
        .map(|s| std::fs::read(&s.image).with_context(|| format!("reading {}", s.image.display())))
        .collect::<Result<_>>()?;
    if pngs.is_empty() {
        bail!("no frames in {}", args.index.display());
    }
    let session = SessionConfig {
        intra_threads: args.threads,
        inter_threads: 1,
        spinning: args.ort_spinning,
    };
    let model = EdgeModel::load(&args.model, session)?;
    let images: Vec<_> = pngs
        .iter()
        .map(|p| decode_rgb(p, u64::MAX))
        .collect::<Result<_, _>>()?;
    let tensors: Vec<_> = images
        .iter()
        .map(|i| to_input_tensor(i, &model.manifest().input).0)
        .collect();

    let server = KillOnDrop(
        Command::new(&args.edge_binary)
            .args(["serve", "--listen", &args.listen, "--queue-size", "64"])
            .arg("--model-dir")
            .arg(&args.model)
            .arg("--intra-threads")
            .arg(args.threads.to_string())
            .arg("--ort-spinning")
            .arg(args.ort_spinning.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (cargo build --release -p edge-infer)",
                    args.edge_binary.display()
                )
            })?,
    );
    let base = format!("http://{}", args.listen);
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    wait_ready(&client, &base)?;
    let url = format!("{base}/v1/segment?collaborate=never");

    // Latency: the three paths interleaved frame by frame, so a change in machine load hits all of them alike.
    model.logits(&tensors[0])?;
    post(&client, &url, &pngs[0])?;
    let mut samples = Samples::default();
    for _ in 0..args.rounds {
        for (png, tensor) in pngs.iter().zip(&tensors) {
            let start = Instant::now();
            model.logits(tensor)?;
            samples.raw_model.push(ms(start.elapsed()));
            let start = Instant::now();
            model.segment(&decode_rgb(png, u64::MAX)?)?;
            samples.raw_pipeline.push(ms(start.elapsed()));
            let start = Instant::now();
            let body = post(&client, &url, png)?;
            samples.service.push(ms(start.elapsed()));
            samples.add_stages(&body["timings"]);
            let start = Instant::now();
            let health = client.get(format!("{base}/health")).send()?;
            health.error_for_status()?.bytes()?;
            samples.http_floor.push(ms(start.elapsed()));
        }
    }

    // Throughput: each path alone for the same time (the idle side's threads sleep meanwhile).
    let raw_throughput = throughput_raw(&model, &tensors, args.seconds)?;
    let pipeline_throughput = throughput_pipeline(&model, &pngs, args.seconds)?;
    let service_throughput = throughput_http(&url, &pngs, args.clients, args.seconds)?;
    drop(server);

    let table = render(
        args,
        &samples,
        raw_throughput,
        pipeline_throughput,
        service_throughput,
    );
    println!("{table}");
    report::replace_readme_section(&args.readme, "edge-overhead", &table)?;
    Ok(())
}

/// Milliseconds per request of each path, and of each stage the service reports.
#[derive(Default)]
struct Samples {
    raw_model: Vec<f64>,
    raw_pipeline: Vec<f64>,
    service: Vec<f64>,
    /// `GET /health` round trips: what any HTTP exchange with the server costs on this machine.
    http_floor: Vec<f64>,
    /// The service's own `timings` per stage, in [`SERVICE_STAGES`] order.
    stages: [Vec<f64>; SERVICE_STAGES.len()],
}

/// The stages of the service's `timings` object that make up its edge path.
const SERVICE_STAGES: [&str; 7] = [
    "decode_ms",
    "queue_ms",
    "preprocess_ms",
    "inference_ms",
    "postprocess_ms",
    "mining_ms",
    "render_ms",
];
/// The stages the raw pipeline does too (decode, preprocess, run, softmax/argmax), as indices into
/// [`SERVICE_STAGES`]; everything else in the round trip is what the service adds.
const PIPELINE_STAGES: [usize; 4] = [0, 2, 3, 4];

impl Samples {
    fn add_stages(&mut self, timings: &serde_json::Value) {
        for (stage, values) in SERVICE_STAGES.iter().zip(&mut self.stages) {
            values.push(timings[stage].as_f64().unwrap_or(f64::NAN));
        }
    }

    /// Per request: its round trip minus the pipeline stages the server timed inside that same request (queueing,
    /// mining, rendering, HTTP and JSON remain). Unlike a comparison with the raw runs, this is immune to the model
    /// run itself varying by a few ms from one run to the next on this VM.
    fn service_overhead(&self) -> Vec<f64> {
        self.service
            .iter()
            .enumerate()
            .map(|(i, total)| {
                total
                    - PIPELINE_STAGES
                        .iter()
                        .map(|&s| self.stages[s][i])
                        .sum::<f64>()
            })
            .collect()
    }
}

fn render(
    args: &Args,
    samples: &Samples,
    raw_throughput: f64,
    pipeline_throughput: f64,
    service_throughput: f64,
) -> String {
    let raw_med = median(&samples.raw_model);
    let pipe_med = median(&samples.raw_pipeline);
    let http_med = median(&samples.service);
    let overhead = median(&samples.service_overhead());
    let row = |name: &str, values: &[f64]| {
        format!(
            "| {name} | {:.2} | {:.2} | {:.2} |\n",
            median(values),
            percentile(values, 95.0),
            median(values) / raw_med
        )
    };
    let mut out = format!(
        "Command: `cargo run --release -p benchmarks -- edge-overhead --frames {} --rounds {} --threads {} \
         --ort-spinning {} --clients {} --seconds {}` (edge model {}, 480x360 CamVid day-val PNGs; the raw paths and \
         the service alternate frame by frame; {}).\n\n\
         | path | median ms | p95 ms | vs raw model |\n|---|---|---|---|\n",
        args.frames,
        args.rounds,
        args.threads,
        args.ort_spinning,
        args.clients,
        args.seconds,
        args.model.display(),
        report::cpu_load_note(),
    );
    out += &row(
        "raw ONNX Runtime `run` (preprocessed tensor)",
        &samples.raw_model,
    );
    out += &row(
        "raw pipeline in-process (decode, preprocess, run, softmax/argmax)",
        &samples.raw_pipeline,
    );
    out += &row(
        "service: full `POST /v1/segment` round trip, JSON answer",
        &samples.service,
    );
    out += "\nWhere the service's time goes (its own `timings`, medians; the rest is HTTP, JSON and the hand-over \
            between the async and inference threads):\n\n| stage | median ms |\n|---|---|\n";
    let mut accounted = 0.0;
    for (stage, values) in SERVICE_STAGES.iter().zip(&samples.stages) {
        let value = median(values);
        accounted += value;
        out += &format!("| {} | {value:.2} |\n", stage.trim_end_matches("_ms"));
    }
    out += &format!(
        "| rest of the round trip | {:.2} |\n\n",
        http_med - accounted
    );
    out += &format!(
        "Service overhead (per request: round trip minus the decode, preprocess, inference and softmax/argmax the \
         server timed in it; median): **{overhead:.2} ms = {:.1}% of the raw model time** (goal <= 5%); against the model's time per frame when it runs back to back (the sequential \
         throughput below, {:.1} ms) it is {:.1}%. Difference of \
         the round trip's and the raw pipeline's medians: {:.2} ms. For scale, an empty `GET /health` round trip to \
         the same server takes {:.2} ms (median).\n\n\
         | throughput | frames/s |\n|---|---|\n| raw model, sequential | {raw_throughput:.2} |\n\
         | raw pipeline, sequential | {pipeline_throughput:.2} |\n\
         | service, {} concurrent clients | {service_throughput:.2} ({:.0}% of the raw pipeline, {:.0}% of the raw \
         model) |\n",
        overhead / raw_med * 100.0,
        1000.0 / raw_throughput,
        overhead * raw_throughput / 10.0,
        http_med - pipe_med,
        median(&samples.http_floor),
        args.clients,
        service_throughput / pipeline_throughput * 100.0,
        service_throughput / raw_throughput * 100.0,
    );
    out
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn wait_ready(client: &reqwest::blocking::Client, base: &str) -> Result<()> {
    for _ in 0..240 {
        if client
            .get(format!("{base}/ready"))
            .send()
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!("edge-infer at {base} did not become ready")
}

fn post(client: &reqwest::blocking::Client, url: &str, png: &[u8]) -> Result<serde_json::Value> {
    let response = client
        .post(url)
        .header("content-type", "image/png")
        .body(png.to_vec())
        .send()?;
    let status = response.status();
    let body: serde_json::Value = response.json()?;
    if !status.is_success() {
        bail!("edge-infer answered {status}: {body}");
    }
    Ok(body)
}

fn throughput_raw(
    model: &EdgeModel,
    tensors: &[ndarray::Array4<f32>],
    seconds: u64,
) -> Result<f64> {
    let start = Instant::now();
    let mut done = 0usize;
    while start.elapsed() < Duration::from_secs(seconds) {
        model.logits(&tensors[done % tensors.len()])?;
        done += 1;
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

fn throughput_pipeline(model: &EdgeModel, pngs: &[Vec<u8>], seconds: u64) -> Result<f64> {
    let start = Instant::now();
    let mut done = 0usize;
    while start.elapsed() < Duration::from_secs(seconds) {
        model.segment(&decode_rgb(&pngs[done % pngs.len()], u64::MAX)?)?;
        done += 1;
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

fn throughput_http(url: &str, pngs: &[Vec<u8>], clients: usize, seconds: u64) -> Result<f64> {
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    std::thread::scope(|scope| {
        for c in 0..clients {
            let (done, failed) = (Arc::clone(&done), Arc::clone(&failed));
            scope.spawn(move || {
                let client = reqwest::blocking::Client::new();
                let mut i = c;
                while start.elapsed() < Duration::from_secs(seconds) {
                    match post(&client, url, &pngs[i % pngs.len()]) {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                    i += 1;
                }
            });
        }
    });
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} requests failed during the throughput phase");
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

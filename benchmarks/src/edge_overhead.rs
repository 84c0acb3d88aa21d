//! `benchmarks edge-overhead`: what the edge service costs on top of the model, on the same frames and threads.
//!
//! 1. Raw: ONNX Runtime `Session::run` alone on preprocessed tensors, and the whole in-process pipeline (decode,
//!    preprocess, run, softmax/argmax), sequentially.
//! 2. Service: the release `edge-infer` binary started as its own process (no cloud), one client posting the
//!    same PNG frames with `collaborate=never`, then several concurrent clients for throughput.
//!
//! The two phases never overlap, so they do not steal each other's cores.

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

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[arg(long, default_value = "models/edge/current")]
    model: PathBuf,
    #[arg(long, default_value = "../shared/datasets/camvid/index/day-val.txt")]
    index: PathBuf,
    /// Distinct frames used (each is sent `rounds` times).
    #[arg(long, default_value_t = 10)]
    frames: usize,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// ONNX Runtime intra-op threads, for both the raw runs and the service.
    #[arg(long, default_value_t = 2)]
    threads: usize,
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
    };
    let model = EdgeModel::load(&args.model, session)?;

    // Raw model and raw pipeline, sequential.
    let images: Vec<_> = pngs
        .iter()
        .map(|p| decode_rgb(p, u64::MAX))
        .collect::<Result<_, _>>()?;
    let tensors: Vec<_> = images
        .iter()
        .map(|i| to_input_tensor(i, &model.manifest().input).0)
        .collect();
    model.logits(&tensors[0])?; // warm-up
    let mut raw_model = Vec::new();
    let mut raw_pipeline = Vec::new();
    for _ in 0..args.rounds {
        for (png, tensor) in pngs.iter().zip(&tensors) {
            let start = Instant::now();
            model.logits(tensor)?;
            raw_model.push(ms(start.elapsed()));
            let start = Instant::now();
            let image = decode_rgb(png, u64::MAX)?;
            model.segment(&image)?;
            raw_pipeline.push(ms(start.elapsed()));
        }
    }
    let raw_throughput = throughput_raw(&model, &tensors, args.seconds)?;
    let pipeline_throughput = throughput_pipeline(&model, &pngs, args.seconds)?;
    drop(model);

    // The service as its own process.
    let server = KillOnDrop(
        Command::new(&args.edge_binary)
            .args(["serve", "--listen", &args.listen, "--queue-size", "64"])
            .arg("--model-dir")
            .arg(&args.model)
            .arg("--intra-threads")
            .arg(args.threads.to_string())
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
    post(&client, &url, &pngs[0])?; // warm-up
    let mut service = Vec::new();
    let mut service_model = Vec::new();
    for _ in 0..args.rounds {
        for png in &pngs {
            let start = Instant::now();
            let body = post(&client, &url, png)?;
            service.push(ms(start.elapsed()));
            if let Some(inference) = body["timings"]["inference_ms"].as_f64() {
                service_model.push(inference);
            }
        }
    }
    let service_throughput = throughput_http(&url, &pngs, args.clients, args.seconds)?;
    drop(server);

    let (raw_med, pipe_med, http_med) =
        (median(&raw_model), median(&raw_pipeline), median(&service));
    let table = format!(
        "Command: `benchmarks edge-overhead --frames {} --rounds {} --threads {} --clients {} --seconds {}` \
         (edge model {}, 480x360 CamVid day-val PNGs; {}).\n\n\
         | path | median ms | p95 ms | vs raw model |\n|---|---|---|---|\n\
         | raw ONNX Runtime `run` (preprocessed tensor) | {raw_med:.1} | {:.1} | 1.00 |\n\
         | raw pipeline in-process (decode, preprocess, run, softmax/argmax) | {pipe_med:.1} | {:.1} | {:.2} |\n\
         | service: model time it reports (`timings.inference_ms`) | {:.1} | {:.1} | {:.2} |\n\
         | service: full `POST /v1/segment` round trip, JSON answer | {http_med:.1} | {:.1} | {:.2} |\n\n\
         Service overhead over the raw pipeline at the median: {:.1}% (goal <= 5% of the model time: {:.1}%).\n\n\
         | throughput | frames/s |\n|---|---|\n| raw model, sequential | {raw_throughput:.2} |\n\
         | raw pipeline, sequential | {pipeline_throughput:.2} |\n\
         | service, {} concurrent clients | {service_throughput:.2} ({:.0}% of the raw pipeline, {:.0}% of the raw model) |\n",
        args.frames,
        args.rounds,
        args.threads,
        args.clients,
        args.seconds,
        args.model.display(),
        report::cpu_load_note(),
        percentile(&raw_model, 0.95),
        percentile(&raw_pipeline, 0.95),
        pipe_med / raw_med,
        median(&service_model),
        percentile(&service_model, 0.95),
        median(&service_model) / raw_med,
        percentile(&service, 0.95),
        http_med / raw_med,
        (http_med - pipe_med) / pipe_med * 100.0,
        (http_med - pipe_med) / raw_med * 100.0,
        args.clients,
        service_throughput / pipeline_throughput * 100.0,
        service_throughput / raw_throughput * 100.0,
    );
    println!("{table}");
    report::replace_readme_section(&args.readme, "edge-overhead", &table)?;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
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

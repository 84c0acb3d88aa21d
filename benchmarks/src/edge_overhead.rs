//! `benchmarks edge-overhead`: what the edge service costs on top of the model, on the same frames and threads.
//!
//! - Raw: ONNX Runtime `Session::run` alone on preprocessed tensors, and the whole in-process pipeline (decode,
//!   preprocess, run, softmax/argmax).
//! - Service: the release `edge-infer` binary started as its own process (no cloud), posting the same PNG frames
//!   with `collaborate=never`.
//!
//! Latency alternates the three paths frame by frame (one at a time, so they never steal each other's cores, and
//! load changes hit all alike); throughput runs each path alone, the service with several concurrent clients, in
//! short windows that take turns for the same reason.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
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
    /// Inference threads of the service (edge-infer's `--workers`): a frame alone runs on `threads` threads, frames
    /// side by side on one thread each.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    workers: u16,
    /// ONNX Runtime thread spinning, for both the raw runs and the service (edge-infer's `--ort-spinning`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    ort_spinning: bool,
    /// Idle time before each latency sample, as between a camera's frames (30 ms: about 20 frames/s with the
    /// model's time).
    #[arg(long, default_value_t = 30)]
    idle_ms: u64,
    /// Concurrent clients in the throughput phase.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Seconds each path's throughput is measured for in all.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Windows those seconds are cut into; the paths take turns window by window, so a change in the machine's load
    /// (a shared VM's neighbours) hits all of them alike.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    windows: u32,
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
            .arg("--workers")
            .arg(args.workers.to_string())
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
    let client = LoopbackClient::new()?;
    client.wait_ready(&base)?;
    let url = format!("{base}/v1/segment?collaborate=never");
    let bodies: Vec<Bytes> = pngs.iter().map(|png| Bytes::from(png.clone())).collect();

    // Latency: the paths interleaved frame by frame, so a change in machine load hits all of them alike, and each
    // one after the same idle gap, as frames from a camera arrive. Without the gap a path would start while the
    // previous one's ONNX Runtime threads still spin, and lose cores to them.
    model.run(&tensors[0])?;
    client.post(&url, &bodies[0])?;
    let idle = || std::thread::sleep(Duration::from_millis(args.idle_ms));
    let mut samples = Samples::default();
    for _ in 0..args.rounds {
        for ((png, body), tensor) in pngs.iter().zip(&bodies).zip(&tensors) {
            idle();
            let start = Instant::now();
            model.run(tensor)?;
            samples.raw_model.push(ms(start.elapsed()));
            idle();
            let start = Instant::now();
            model.segment(&decode_rgb(png, u64::MAX)?)?;
            samples.raw_pipeline.push(ms(start.elapsed()));
            idle();
            let start = Instant::now();
            let answer = client.post(&url, body)?;
            samples.service.push(ms(start.elapsed()));
            samples.add_stages(&answer["timings"]);
            idle();
            let start = Instant::now();
            client.get(&format!("{base}/health"))?;
            samples.http_floor.push(ms(start.elapsed()));
        }
    }

    // Throughput: each path alone (the idle side's threads sleep meanwhile), window by window in turns whose order
    // flips each time, so no path always runs right after the same other one.
    let window = Duration::from_secs(args.seconds) / args.windows;
    let mut throughput = [Throughput::default(); 3];
    for turn in 0..args.windows {
        let mut order = [0, 1, 2];
        if turn % 2 == 1 {
            order.reverse();
        }
        for path in order {
            let start = Instant::now();
            let frames = match path {
                0 => throughput_raw(&model, &tensors, window)?,
                1 => throughput_pipeline(&model, &pngs, window)?,
                _ => throughput_http(&url, &bodies, args.clients, window)?,
            };
            throughput[path].frames += frames;
            throughput[path].elapsed += start.elapsed();
        }
    }
    drop(server);
    let [raw_throughput, pipeline_throughput, service_throughput] =
        throughput.map(|t| t.frames as f64 / t.elapsed.as_secs_f64());

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

/// Frames one throughput path finished, and the time its windows took.
#[derive(Default, Clone, Copy)]
struct Throughput {
    frames: usize,
    elapsed: Duration,
}

/// Milliseconds per request of each path, and of each stage the service reports.
#[derive(Default)]
struct Samples {
    raw_model: Vec<f64>,
    raw_pipeline: Vec<f64>,
    service: Vec<f64>,
    /// `GET /health` round trips after the same idle gap: what any HTTP exchange with the server costs here.
    http_floor: Vec<f64>,
    /// The service's own `timings` per stage, in [`SERVICE_STAGES`] order.
    stages: [Vec<f64>; SERVICE_STAGES.len()],
    /// The service's `total_ms`: from the handler's start to its answer being ready for serialisation.
    handler_total: Vec<f64>,
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
/// The stages the service runs one after the other, as indices into [`SERVICE_STAGES`].
const SEQUENTIAL_STAGES: [usize; 5] = [0, 1, 2, 3, 4];
/// Mining and rendering, which the service runs side by side: a request spends the longer of the two on them.
const SIDE_BY_SIDE_STAGES: [usize; 2] = [5, 6];

impl Samples {
    fn add_stages(&mut self, timings: &serde_json::Value) {
        for (stage, values) in SERVICE_STAGES.iter().zip(&mut self.stages) {
            values.push(timings[stage].as_f64().unwrap_or(f64::NAN));
        }
        self.handler_total
            .push(timings["total_ms"].as_f64().unwrap_or(f64::NAN));
    }

    /// Per request: its round trip minus the pipeline stages the server timed inside that same request (queueing,
    /// mining, rendering, HTTP and JSON remain). Unlike a comparison with the raw runs, this is immune to the model
    /// run itself varying by a few ms from one run to the next on this VM.
    fn service_overhead(&self) -> Vec<f64> {
        self.per_request(|i| self.service[i] - self.stage_sum(&PIPELINE_STAGES, i))
    }

    /// Per request: the handler's own `total_ms` minus the time its stages took, i.e. reading the body, handing the
    /// frame to an inference thread and back, and waiting for the side-by-side stages to join.
    fn handler_rest(&self) -> Vec<f64> {
        self.per_request(|i| self.handler_total[i] - self.staged(i))
    }

    /// Per request: the time its stages took, the side-by-side ones counted once (the longer of them).
    fn staged(&self, request: usize) -> f64 {
        let side_by_side = SIDE_BY_SIDE_STAGES
            .iter()
            .map(|&s| self.stages[s][request])
            .fold(0.0, f64::max);
        self.stage_sum(&SEQUENTIAL_STAGES, request) + side_by_side
    }

    /// Per request: the round trip minus the handler's `total_ms`, i.e. connection handling, routing, the JSON
    /// answer and both ends' HTTP work.
    fn outside_handler(&self) -> Vec<f64> {
        self.per_request(|i| self.service[i] - self.handler_total[i])
    }

    fn stage_sum(&self, stages: &[usize], request: usize) -> f64 {
        stages.iter().map(|&s| self.stages[s][request]).sum()
    }

    fn per_request(&self, value: impl Fn(usize) -> f64) -> Vec<f64> {
        (0..self.service.len()).map(value).collect()
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
         --workers {} --ort-spinning {} --idle-ms {} --clients {} --seconds {} --windows {}` (edge model {}, 480x360 CamVid day-val \
         PNGs; the raw paths and the service alternate frame by frame, each after {} ms idle, and take turns in the \
         throughput windows; {}).\n\n\
         | path | median ms | p95 ms | vs raw model |\n|---|---|---|---|\n",
        args.frames,
        args.rounds,
        args.threads,
        args.workers,
        args.ort_spinning,
        args.idle_ms,
        args.clients,
        args.seconds,
        args.windows,
        args.model.display(),
        args.idle_ms,
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
    for (index, (stage, values)) in SERVICE_STAGES.iter().zip(&samples.stages).enumerate() {
        let side_by_side = if SIDE_BY_SIDE_STAGES.contains(&index) {
            " (side by side with the other)"
        } else {
            ""
        };
        out += &format!(
            "| {}{side_by_side} | {:.2} |\n",
            stage.trim_end_matches("_ms"),
            median(values)
        );
    }
    let staged: Vec<f64> = samples.per_request(|i| samples.staged(i));
    out += &format!(
        "| rest of the round trip (round trip minus the stages, mining and render counted once) | {:.2} |\n\n",
        median(&samples.per_request(|i| samples.service[i] - staged[i]))
    );
    out += &format!(
        "That rest, per request (medians): {:.2} ms inside the handler (reading the body, handing the frame to an \
         inference thread and back, joining mining and render) and {:.2} ms outside it (connection, routing, JSON \
         answer, the client's side).\n\n",
        median(&samples.handler_rest()),
        median(&samples.outside_handler()),
    );
    out += &format!(
        "Service overhead (per request: round trip minus the decode, preprocess, inference and softmax/argmax the \
         server timed in it; median): **{overhead:.2} ms = {:.1}% of the raw model time** (goal <= 5%); against the model's time per frame when it runs back to back (the sequential \
         throughput below, {:.1} ms) it is {:.1}%. Difference of \
         the round trip's and the raw pipeline's medians: {:.2} ms. For scale, an empty `GET /health` round trip to \
         the same server after the same idle gap costs {:.2} ms (median): the part of the overhead any HTTP \
         exchange pays on this machine.\n\n\
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

/// An HTTP client on a single-threaded runtime driven by the calling thread: unlike `reqwest::blocking`, no request
/// or answer passes through a second client thread, so the round trip measures the server, not a client hand-off.
struct LoopbackClient {
    runtime: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl LoopbackClient {
    fn new() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self { runtime, http })
    }

    fn wait_ready(&self, base: &str) -> Result<()> {
        for _ in 0..240 {
            if self.get(&format!("{base}/ready")).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        bail!("edge-infer at {base} did not become ready")
    }

    fn get(&self, url: &str) -> Result<Bytes> {
        self.runtime.block_on(async {
            let response = self.http.get(url).send().await?.error_for_status()?;
            Ok(response.bytes().await?)
        })
    }

    /// Posts one PNG frame and returns the JSON answer.
    fn post(&self, url: &str, png: &Bytes) -> Result<serde_json::Value> {
        self.runtime.block_on(async {
            let response = self
                .http
                .post(url)
                .header("content-type", "image/png")
                .body(png.clone())
                .send()
                .await?;
            let status = response.status();
            let body: serde_json::Value = response.json().await?;
            if !status.is_success() {
                bail!("edge-infer answered {status}: {body}");
            }
            Ok(body)
        })
    }
}

/// Frames the raw model finishes back to back within `window`.
fn throughput_raw(
    model: &EdgeModel,
    tensors: &[ndarray::Array4<f32>],
    window: Duration,
) -> Result<usize> {
    let start = Instant::now();
    let mut done = 0usize;
    while start.elapsed() < window {
        model.run(&tensors[done % tensors.len()])?;
        done += 1;
    }
    Ok(done)
}

/// Frames the in-process pipeline finishes back to back within `window`.
fn throughput_pipeline(model: &EdgeModel, pngs: &[Vec<u8>], window: Duration) -> Result<usize> {
    let start = Instant::now();
    let mut done = 0usize;
    while start.elapsed() < window {
        model.segment(&decode_rgb(&pngs[done % pngs.len()], u64::MAX)?)?;
        done += 1;
    }
    Ok(done)
}

/// Frames the service answers within `window` to `clients` clients posting back to back.
fn throughput_http(url: &str, bodies: &[Bytes], clients: usize, window: Duration) -> Result<usize> {
    let done = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..clients)
            .map(|c| {
                let done = &done;
                scope.spawn(move || -> Result<()> {
                    let client = LoopbackClient::new()?;
                    let mut i = c;
                    while start.elapsed() < window {
                        client.post(url, &bodies[i % bodies.len()])?;
                        done.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                    }
                    Ok(())
                })
            })
            .collect();
        for worker in workers {
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))?
                .context("a request failed during the throughput phase")?;
        }
        Ok(())
    })?;
    Ok(done.load(Ordering::Relaxed))
}

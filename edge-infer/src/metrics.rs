//! Prometheus metrics. The recorder is process-wide (the `metrics` facade allows one), so every server in a process
//! (tests start several) shares it.

use std::sync::OnceLock;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

const REQUESTS: &str = "edge_requests_total";
const STAGE_SECONDS: &str = "edge_stage_duration_seconds";
const QUEUE_DEPTH: &str = "edge_queue_depth";
const UPLOAD_RATIO: &str = "edge_miner_upload_ratio";
const CLOUD_BYTES: &str = "edge_cloud_bytes_sent_total";
const CLOUD_ERRORS: &str = "edge_cloud_errors_total";
const BREAKER_OPEN: &str = "edge_cloud_breaker_open";
const MODEL_UPDATES: &str = "edge_model_updates_total";
const MODEL_INFO: &str = "edge_model_info";

/// Latency buckets from 1 ms to 5 s: the stages range from sub-millisecond mining to cloud round trips.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder once; `None` when another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .map_err(|error| tracing::warn!("metrics buckets refused: {error}"))
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder)
                .map_err(|error| tracing::warn!("a metrics recorder is already installed: {error}"))
                .ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

fn describe() {
    describe_counter!(
        REQUESTS,
        "Segmentation requests by outcome (ok or error kind) and answer source"
    );
    describe_histogram!(
        STAGE_SECONDS,
        metrics::Unit::Seconds,
        "Time per request stage"
    );
    describe_gauge!(QUEUE_DEPTH, "Frames waiting for an inference thread");
    describe_gauge!(
        UPLOAD_RATIO,
        "Share of frames the miner judged worth uploading"
    );
    describe_counter!(
        CLOUD_BYTES,
        metrics::Unit::Bytes,
        "Bytes uploaded to cloud-infer"
    );
    describe_counter!(CLOUD_ERRORS, "Failed or skipped cloud refinements by kind");
    describe_gauge!(
        BREAKER_OPEN,
        "1 while the cloud circuit breaker is open or half-open"
    );
    describe_counter!(
        MODEL_UPDATES,
        "Model updates by result (loaded, refused, rolled_back)"
    );
    describe_gauge!(MODEL_INFO, "1 for the version being served");
}

pub fn request(outcome: &'static str, source: &'static str) {
    counter!(REQUESTS, "outcome" => outcome, "source" => source).increment(1);
}

pub fn stage(stage: &'static str, ms: f64) {
    histogram!(STAGE_SECONDS, "stage" => stage).record(ms / 1e3);
}

pub fn queue_depth(depth: usize) {
    gauge!(QUEUE_DEPTH).set(depth as f64);
}

pub fn upload_ratio(ratio: f64) {
    gauge!(UPLOAD_RATIO).set(ratio);
}

pub fn cloud_bytes(bytes: usize) {
    counter!(CLOUD_BYTES).increment(bytes as u64);
}

pub fn cloud_error(kind: &'static str) {
    counter!(CLOUD_ERRORS, "kind" => kind).increment(1);
}

pub fn breaker_open(open: bool) {
    gauge!(BREAKER_OPEN).set(if open { 1.0 } else { 0.0 });
}

pub fn model_update(result: &'static str) {
    counter!(MODEL_UPDATES, "result" => result).increment(1);
}

pub fn model_info(version: &str) {
    // One series per version ever served; only the current one is 1.
    static LAST: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(old) = last.replace(version.to_owned()) {
        gauge!(MODEL_INFO, "version" => old).set(0.0);
    }
    gauge!(MODEL_INFO, "version" => version.to_owned()).set(1.0);
}

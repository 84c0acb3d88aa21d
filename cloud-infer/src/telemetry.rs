//! Prometheus metrics: metric names live here so the handlers only say what happened.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::replay::BufferStats;

const REQUESTS: &str = "cloud_refine_requests_total";
const STAGE_SECONDS: &str = "cloud_refine_stage_seconds";
const QUEUE_DEPTH: &str = "cloud_refine_queue_depth";
const MASKS_PER_FRAME: &str = "cloud_refine_masks_per_frame";
const BUFFER_ENTRIES: &str = "cloud_replay_buffer_entries";
const BUFFER_BYTES: &str = "cloud_replay_buffer_bytes";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide recorder (installed on first use, so several in-process servers in tests share it).
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(STAGE_SECONDS.into()),
                    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(MASKS_PER_FRAME.into()),
                        &[0.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0],
                    )
                })
                .expect("bucket lists are non-empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if let Err(error) = metrics::set_global_recorder(recorder) {
                tracing::warn!(%error, "another metrics recorder is installed; /metrics will stay empty");
            }
            handle
        })
        .clone()
}

pub fn record_outcome(outcome: &'static str) {
    metrics::counter!(REQUESTS, "outcome" => outcome).increment(1);
}

pub fn record_stage(stage: &'static str, milliseconds: f64) {
    metrics::histogram!(STAGE_SECONDS, "stage" => stage).record(milliseconds / 1e3);
}

pub fn set_queue_depth(depth: usize) {
    metrics::gauge!(QUEUE_DEPTH).set(depth as f64);
}

pub fn record_masks(count: u32) {
    metrics::histogram!(MASKS_PER_FRAME).record(f64::from(count));
}

pub fn set_buffer(stats: &BufferStats) {
    metrics::gauge!(BUFFER_ENTRIES).set(stats.count as f64);
    metrics::gauge!(BUFFER_BYTES).set(stats.bytes as f64);
}

//! Collaboration with cloud-infer: refinement, fallback on an absent, slow or failing cloud, and the breaker.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::{TestServer, frames_or_skip, model_dir_or_skip};
use serde_json::Value;
use wire::{ModelRef, RefineMeta, RefineResponse, RefineTimings};

/// The class the fake cloud paints every pixel with.
const CLOUD_CLASS: u8 = 3;

#[derive(Clone, Copy)]
enum Behaviour {
    Refine,
    Sleep(Duration),
    Fail,
}

struct FakeCloud {
    behaviour: Behaviour,
    hits: AtomicUsize,
}

/// A tiny cloud-infer stand-in on a loopback port; it checks the multipart contract on every call.
async fn fake_cloud(behaviour: Behaviour) -> (String, Arc<FakeCloud>) {
    let state = Arc::new(FakeCloud {
        behaviour,
        hits: AtomicUsize::new(0),
    });
    let router = Router::new()
        .route("/v1/refine", post(refine))
        .with_state(Arc::clone(&state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, state)
}

async fn refine(
    State(cloud): State<Arc<FakeCloud>>,
    headers: HeaderMap,
    mut multipart: Multipart,
) -> Response {
    cloud.hits.fetch_add(1, Ordering::SeqCst);
    assert_eq!(headers["authorization"], "Bearer cloud-token");
    let (mut meta, mut image, mut scores) = (None, None, None);
    while let Some(field) = multipart.next_field().await.unwrap() {
        let name = field.name().unwrap().to_owned();
        let bytes = field.bytes().await.unwrap();
        match name.as_str() {
            wire::PART_META => meta = Some(serde_json::from_slice::<RefineMeta>(&bytes).unwrap()),
            wire::PART_IMAGE => image = Some(bytes),
            wire::PART_EDGE_SCORES => scores = Some(bytes),
            other => panic!("unexpected part {other}"),
        }
    }
    let (meta, image, scores) = (meta.unwrap(), image.unwrap(), scores.unwrap());
    assert_eq!(
        (meta.scores.width, meta.scores.height),
        (wire::UPLOAD_SCORES_WIDTH, wire::UPLOAD_SCORES_HEIGHT)
    );
    assert_eq!(scores.len(), meta.scores.len());
    assert_eq!(meta.robot_id, "robot-7");
    let decoded = models::image_ops::decode_rgb(&image, u64::MAX).unwrap();
    match cloud.behaviour {
        Behaviour::Sleep(duration) => tokio::time::sleep(duration).await,
        Behaviour::Fail => {
            let body = wire::ErrorBody {
                error: "model exploded".into(),
                kind: "internal".into(),
            };
            return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response();
        }
        Behaviour::Refine => {}
    }
    let (width, height) = decoded.dimensions();
    let labels = vec![CLOUD_CLASS; width as usize * height as usize];
    let png = models::image_ops::encode_label_png(&labels, width, height).unwrap();
    axum::Json(RefineResponse {
        protocol: wire::PROTOCOL_VERSION.into(),
        request_id: meta.request_id,
        cloud_model: ModelRef {
            name: "fake-sam".into(),
            version: "1".into(),
        },
        width,
        height,
        fusion: "paint".into(),
        mask_count: 1,
        label_map_png: wire::encode_base64(&png),
        stored: true,
        timings: RefineTimings {
            queue_ms: 0.0,
            encoder_ms: 0.0,
            decoder_ms: 0.0,
            fusion_ms: 0.0,
            total_ms: 0.0,
        },
    })
    .into_response()
}

async fn start_edge(model_dir: &std::path::Path, cloud_url: &str, extra: &[&str]) -> TestServer {
    let mut args = vec![
        "--cloud-url",
        cloud_url,
        "--cloud-token",
        "cloud-token",
        "--robot-id",
        "robot-7",
    ];
    args.extend_from_slice(extra);
    TestServer::start(model_dir, &args).await
}

async fn segment(server: &TestServer, query: &str, frame: &[u8]) -> (Value, Duration) {
    let start = Instant::now();
    let response = server
        .post_png(&format!("/v1/segment?{query}"), frame.to_vec())
        .await;
    assert_eq!(response.status(), 200);
    let body = response.json().await.unwrap();
    (body, start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_frames_are_refined_by_the_cloud_and_easy_ones_stay_on_the_edge() {
    let test = "hard_frames_are_refined_by_the_cloud_and_easy_ones_stay_on_the_edge";
    let (Some(model_dir), Some(frames)) = (model_dir_or_skip(test), frames_or_skip(test, 1)) else {
        return;
    };
    let (cloud_url, cloud) = fake_cloud(Behaviour::Refine).await;
    // A threshold of 1 makes every frame hard, 0 none.
    let all_hard = r#"{"scorer": {"name": "cross-entropy"}, "policy": {"name": "threshold", "threshold": 1.0}}"#;
    let server = start_edge(
        &model_dir,
        &cloud_url,
        &["--miner", all_hard, "--cloud-timeout-ms", "5000"],
    )
    .await;

    let (body, _) = segment(&server, "deadline_ms=10000", &frames[0]).await;
    assert_eq!(body["source"], "cloud", "{body}");
    assert_eq!(body["miner"]["hard"], true);
    assert_eq!(body["cloud_model"]["name"], "fake-sam");
    let counts: Vec<u64> = serde_json::from_value(body["class_counts"].clone()).unwrap();
    assert_eq!(counts[usize::from(CLOUD_CLASS)], 480 * 360);
    assert!(body["timings"]["cloud_ms"].as_f64().unwrap() > 0.0);

    let (body, _) = segment(&server, "collaborate=never", &frames[0]).await;
    assert_eq!(body["source"], "edge");
    assert_eq!(cloud.hits.load(Ordering::SeqCst), 1);
    let metrics = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("edge_cloud_bytes_sent_total"), "{metrics}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_kept_on_the_edge_spend_no_upload_allowance() {
    let test = "frames_kept_on_the_edge_spend_no_upload_allowance";
    let (Some(model_dir), Some(frames)) = (model_dir_or_skip(test), frames_or_skip(test, 1)) else {
        return;
    };
    let (cloud_url, cloud) = fake_cloud(Behaviour::Refine).await;
    // Every frame is hard, but the rate cap allows a single upload in the test's lifetime.
    let one_upload = r#"{"scorer": {"name": "cross-entropy"}, "policy": {"name": "all", "policies": [
        {"name": "threshold", "threshold": 1.0}, {"name": "rate-cap", "max_per_second": 0.001, "burst": 1}]}}"#;
    let server = start_edge(
        &model_dir,
        &cloud_url,
        &["--miner", one_upload, "--cloud-timeout-ms", "5000"],
    )
    .await;

    // Hard frames the client keeps on the edge leave the single token unspent...
    for _ in 0..3 {
        let (body, _) = segment(&server, "collaborate=never", &frames[0]).await;
        assert_eq!(body["source"], "edge", "{body}");
        assert_eq!(body["miner"]["hard"], true, "{body}");
    }
    // ...so the first frame the miner may send goes to the cloud, and spends it.
    let (body, _) = segment(&server, "deadline_ms=10000", &frames[0]).await;
    assert_eq!(body["source"], "cloud", "{body}");
    let (body, _) = segment(&server, "deadline_ms=10000", &frames[0]).await;
    assert_eq!(body["source"], "edge", "{body}");
    assert_eq!(body["miner"]["hard"], false, "{body}");
    assert_eq!(cloud.hits.load(Ordering::SeqCst), 1);
    let info = server.info().await;
    assert_eq!(info["miner"]["uploads"], 1, "{info}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_cloud_falls_back_to_the_edge_on_time() {
    let test = "an_absent_cloud_falls_back_to_the_edge_on_time";
    let (Some(model_dir), Some(frames)) = (model_dir_or_skip(test), frames_or_skip(test, 1)) else {
        return;
    };
    // TEST-NET-1 (RFC 5737): never routed, so the connection hangs or fails at once.
    let server = start_edge(
        &model_dir,
        "http://192.0.2.1:9",
        &["--cloud-timeout-ms", "300"],
    )
    .await;
    let (body, elapsed) = segment(&server, "collaborate=always", &frames[0]).await;
    assert_eq!(body["source"], "edge-fallback", "{body}");
    assert!(body["fallback_reason"].as_str().is_some());
    assert!(
        body["timings"]["cloud_ms"].as_f64().unwrap() < 1000.0,
        "{body}"
    );
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_cloud_is_cut_off_at_the_request_deadline() {
    let test = "a_slow_cloud_is_cut_off_at_the_request_deadline";
    let (Some(model_dir), Some(frames)) = (model_dir_or_skip(test), frames_or_skip(test, 1)) else {
        return;
    };
    let (cloud_url, cloud) = fake_cloud(Behaviour::Sleep(Duration::from_secs(10))).await;
    let server = start_edge(&model_dir, &cloud_url, &["--cloud-timeout-ms", "10000"]).await;
    let deadline_ms: u32 = 2000;
    let (body, elapsed) = segment(
        &server,
        &format!("collaborate=always&deadline_ms={deadline_ms}"),
        &frames[0],
    )
    .await;
    assert_eq!(body["source"], "edge-fallback", "{body}");
    assert!(
        body["fallback_reason"]
            .as_str()
            .unwrap()
            .contains("did not answer"),
        "{body}"
    );
    let total_ms = body["timings"]["total_ms"].as_f64().unwrap();
    assert!(total_ms <= f64::from(deadline_ms) + 100.0, "{body}");
    assert!(
        elapsed < Duration::from_millis(u64::from(deadline_ms) + 1000),
        "{elapsed:?}"
    );
    assert_eq!(cloud.hits.load(Ordering::SeqCst), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_cloud_opens_the_breaker() {
    let test = "a_failing_cloud_opens_the_breaker";
    let (Some(model_dir), Some(frames)) = (model_dir_or_skip(test), frames_or_skip(test, 1)) else {
        return;
    };
    let (cloud_url, cloud) = fake_cloud(Behaviour::Fail).await;
    let server = start_edge(
        &model_dir,
        &cloud_url,
        &["--breaker-failures", "2", "--breaker-cool-down-ms", "60000"],
    )
    .await;
    for _ in 0..2 {
        let (body, _) = segment(&server, "collaborate=always", &frames[0]).await;
        assert_eq!(body["source"], "edge-fallback");
        assert!(
            body["fallback_reason"]
                .as_str()
                .unwrap()
                .contains("model exploded"),
            "{body}"
        );
    }
    assert_eq!(server.info().await["cloud"]["breaker"], "open");
    let (body, _) = segment(&server, "collaborate=always", &frames[0]).await;
    assert_eq!(body["source"], "edge-fallback");
    assert!(
        body["fallback_reason"]
            .as_str()
            .unwrap()
            .contains("circuit breaker"),
        "{body}"
    );
    assert_eq!(
        cloud.hits.load(Ordering::SeqCst),
        2,
        "an open breaker must not call the cloud"
    );
    server.stop().await;
}

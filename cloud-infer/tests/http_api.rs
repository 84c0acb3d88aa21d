//! The HTTP contract with a stand-in refiner: auth, validation, limits, deadlines, the queue, storage, and the
//! operational endpoints. Real models are exercised in `refine_camvid.rs`.

mod common;

use std::sync::{Arc, mpsc};
use std::time::Duration;

use cloud_infer::replay::{Capacity, ReplayStore, SqliteReplayStore};
use cloud_infer::{RefineQueue, RefinerError, router};
use common::*;
use reqwest::StatusCode;
use wire::{ErrorBody, RefineResponse};

fn temp_store() -> (tempfile::TempDir, Arc<dyn ReplayStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteReplayStore::open(dir.path(), Capacity::unbounded()).unwrap();
    (dir, Arc::new(store))
}

async fn post_refine(
    base: &str,
    form: reqwest::multipart::Form,
    token: Option<&str>,
) -> reqwest::Response {
    let mut request = client().post(format!("{base}/v1/refine")).multipart(form);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn expect_error(response: reqwest::Response, status: StatusCode, kind: &str) -> ErrorBody {
    assert_eq!(response.status(), status);
    let body: ErrorBody = response.json().await.unwrap();
    assert_eq!(body.kind, kind, "{}", body.error);
    body
}

fn valid_form(request_id: &str, seed: u8) -> reqwest::multipart::Form {
    let (shape, scores) = synthetic_scores();
    form(
        &meta(request_id, shape),
        synthetic_png(64, 48, seed),
        scores,
    )
}

#[tokio::test]
async fn refines_a_frame_and_stores_a_duplicate_only_once() {
    let (_dir, store) = temp_store();
    let base = serve_with(EchoRefiner::instant(), 4, Arc::clone(&store)).await;

    let response = post_refine(&base, valid_form("r1", 1), Some(TOKEN)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: RefineResponse = response.json().await.unwrap();
    assert_eq!(
        (answer.width, answer.height, answer.request_id.as_str()),
        (64, 48, "r1")
    );
    assert!(answer.stored);
    let labels =
        models::image_ops::decode_label_png(&wire::decode_base64(&answer.label_map_png).unwrap())
            .unwrap();
    assert_eq!(labels.dimensions(), (64, 48));
    // Bilinear upsampling of the left/right split: left edge class 0, right edge class 2.
    assert_eq!(labels.get_pixel(0, 10)[0], 0);
    assert_eq!(labels.get_pixel(63, 10)[0], 2);

    let again: RefineResponse = post_refine(&base, valid_form("r2", 1), Some(TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert!(!again.stored, "the same image bytes are stored once");
    let entries = store.entries().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].request_id, "r1");
    assert_eq!(entries[0].domain.as_deref(), Some("dusk"));
    assert_eq!(entries[0].class_pixels.iter().sum::<u64>(), 64 * 48);

    let stats: serde_json::Value = client()
        .get(format!("{base}/v1/buffer/stats"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["count"], 1);
    assert_eq!(stats["per_domain"]["dusk"], 1);
}

#[tokio::test]
async fn auth_is_required_and_checked() {
    let (_dir, store) = temp_store();
    let base = serve_with(EchoRefiner::instant(), 4, store).await;
    expect_error(
        post_refine(&base, valid_form("a", 2), None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    let malformed = client()
        .post(format!("{base}/v1/refine"))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .multipart(valid_form("a", 2))
        .send()
        .await
        .unwrap();
    expect_error(malformed, StatusCode::UNAUTHORIZED, "unauthorized").await;
    expect_error(
        post_refine(&base, valid_form("a", 2), Some("nope")).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let stats = client()
        .get(format!("{base}/v1/buffer/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(stats.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn bad_inputs_get_clear_4xx_errors() {
    let (_dir, store) = temp_store();
    let base = serve_with(EchoRefiner::instant(), 4, store).await;
    let (shape, scores) = synthetic_scores();
    let image = synthetic_png(64, 48, 3);

    let missing = reqwest::multipart::Form::new().text(
        wire::PART_META,
        serde_json::to_string(&meta("m", shape)).unwrap(),
    );
    expect_error(
        post_refine(&base, missing, Some(TOKEN)).await,
        StatusCode::BAD_REQUEST,
        "missing_part",
    )
    .await;

    let bad_meta = reqwest::multipart::Form::new()
        .text(wire::PART_META, "{not json")
        .part(
            wire::PART_IMAGE,
            reqwest::multipart::Part::bytes(image.clone()),
        )
        .part(
            wire::PART_EDGE_SCORES,
            reqwest::multipart::Part::bytes(scores.clone()),
        );
    expect_error(
        post_refine(&base, bad_meta, Some(TOKEN)).await,
        StatusCode::BAD_REQUEST,
        "bad_meta",
    )
    .await;

    let mut old = meta("p", shape);
    old.protocol = "2.0".into();
    let body = expect_error(
        post_refine(
            &base,
            form(&old, image.clone(), scores.clone()),
            Some(TOKEN),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "protocol_mismatch",
    )
    .await;
    assert!(body.error.contains(wire::PROTOCOL_VERSION));

    let short = form(&meta("s", shape), image.clone(), scores[..10].to_vec());
    expect_error(
        post_refine(&base, short, Some(TOKEN)).await,
        StatusCode::BAD_REQUEST,
        "bad_scores",
    )
    .await;

    let not_image = form(
        &meta("i", shape),
        b"GIF89a not really".to_vec(),
        scores.clone(),
    );
    expect_error(
        post_refine(&base, not_image, Some(TOKEN)).await,
        StatusCode::BAD_REQUEST,
        "bad_image",
    )
    .await;

    let huge = form(
        &meta("h", shape),
        synthetic_png(1200, 1000, 4),
        scores.clone(),
    );
    expect_error(
        post_refine(&base, huge, Some(TOKEN)).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_many_pixels",
    )
    .await;

    let oversized = form(
        &meta("b", shape),
        vec![0u8; 5 * 1024 * 1024],
        scores.clone(),
    );
    let response = post_refine(&base, oversized, Some(TOKEN)).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let not_multipart = client()
        .post(format!("{base}/v1/refine"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    expect_error(not_multipart, StatusCode::BAD_REQUEST, "bad_multipart").await;

    let unknown = client()
        .get(format!("{base}/v2/nothing"))
        .send()
        .await
        .unwrap();
    expect_error(unknown, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn an_expired_deadline_is_dropped_without_computing() {
    let (_dir, store) = temp_store();
    let (started, started_rx) = mpsc::channel();
    let refiner = Box::new(EchoRefiner {
        started: Some(started),
        proceed: None,
    });
    let base = serve_with(refiner, 4, Arc::clone(&store)).await;
    let (shape, scores) = synthetic_scores();
    let mut late = meta("late", shape);
    late.deadline_unix_ms = cloud_infer::queue::now_unix_ms() - 1;
    let response = post_refine(
        &base,
        form(&late, synthetic_png(64, 48, 5), scores),
        Some(TOKEN),
    )
    .await;
    expect_error(response, StatusCode::GATEWAY_TIMEOUT, "deadline_expired").await;
    assert!(
        started_rx.try_recv().is_err(),
        "the refiner never saw the frame"
    );
    assert!(store.entries().unwrap().is_empty());
}

#[tokio::test]
async fn a_deadline_passing_in_the_queue_drops_the_frame_and_a_full_queue_answers_429() {
    let (_dir, store) = temp_store();
    let (refiner, started_rx, proceed) = EchoRefiner::gated();
    let base = serve_with(refiner, 1, Arc::clone(&store)).await;

    // Frame 1 occupies the refinement thread until we let it go.
    let busy = tokio::spawn({
        let base = base.clone();
        async move { post_refine(&base, valid_form("busy", 10), Some(TOKEN)).await }
    });
    tokio::task::spawn_blocking(move || started_rx.recv_timeout(Duration::from_secs(10)).unwrap())
        .await
        .unwrap();
    // Frame 2 waits in the only queue slot, with a deadline that passes while it waits.
    let (shape, scores) = synthetic_scores();
    let mut soon = meta("waiting", shape);
    soon.deadline_unix_ms = cloud_infer::queue::now_unix_ms() + 300;
    let waiting = tokio::spawn({
        let base = base.clone();
        async move {
            post_refine(
                &base,
                form(&soon, synthetic_png(64, 48, 11), scores),
                Some(TOKEN),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Frame 3 finds the queue full.
    let full = post_refine(&base, valid_form("full", 12), Some(TOKEN)).await;
    assert_eq!(full.headers()["retry-after"], "1");
    expect_error(full, StatusCode::TOO_MANY_REQUESTS, "queue_full").await;

    tokio::time::sleep(Duration::from_millis(400)).await;
    proceed.send(()).unwrap();
    assert_eq!(busy.await.unwrap().status(), StatusCode::OK);
    expect_error(
        waiting.await.unwrap(),
        StatusCode::GATEWAY_TIMEOUT,
        "deadline_expired",
    )
    .await;
    assert_eq!(store.entries().unwrap().len(), 1);

    let metrics = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("cloud_refine_requests_total"), "{metrics}");
    assert!(metrics.contains("outcome=\"queue_full\""));
    assert!(metrics.contains("cloud_refine_stage_seconds"));
    assert!(metrics.contains("cloud_refine_queue_depth"));
    assert!(metrics.contains("cloud_replay_buffer_entries"));
}

#[tokio::test]
async fn a_frame_is_refined_and_stored_after_the_edge_stopped_waiting() {
    let (_dir, store) = temp_store();
    let (refiner, started_rx, proceed) = EchoRefiner::gated();
    let base = serve_with(refiner, 1, Arc::clone(&store)).await;

    // The edge gives up while the refinement is still running (its deadline is shorter than the cloud's work).
    let gave_up = client()
        .post(format!("{base}/v1/refine"))
        .multipart(valid_form("impatient", 20))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(gave_up.is_err_and(|e| e.is_timeout()));
    tokio::task::spawn_blocking(move || started_rx.recv_timeout(Duration::from_secs(10)).unwrap())
        .await
        .unwrap();
    assert!(store.entries().unwrap().is_empty());
    proceed.send(()).unwrap();

    let mut stored = Vec::new();
    for _ in 0..100 {
        stored = store.entries().unwrap();
        if !stored.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stored.len(), 1, "the abandoned frame was not stored");
    assert_eq!(stored[0].request_id, "impatient");
}

#[tokio::test]
async fn not_ready_answers_503_with_retry_after() {
    let (_dir, store) = temp_store();
    let queue = RefineQueue::start(2, || Err(RefinerError("no model here".into())));
    let base = spawn_server(router(queue, store, token_auth(), limits())).await;
    let mut response = post_refine(&base, valid_form("x", 20), Some(TOKEN)).await;
    for _ in 0..50 {
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        response = post_refine(&base, valid_form("x", 20), Some(TOKEN)).await;
    }
    assert!(response.headers().contains_key("retry-after"));
    expect_error(response, StatusCode::SERVICE_UNAVAILABLE, "not_ready").await;
    let ready = client().get(format!("{base}/ready")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["state"], "failed");
}

#[tokio::test]
async fn operational_endpoints_answer() {
    let (_dir, store) = temp_store();
    let base = serve_with(EchoRefiner::instant(), 4, store).await;
    let http = client();
    assert_eq!(
        http.get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        http.get(format!("{base}/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let info: serde_json::Value = http
        .get(format!("{base}/info"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["refiner"]["model"]["name"], "echo");
    assert_eq!(info["protocol"], wire::PROTOCOL_VERSION);
    assert!(info["buffer"].as_str().unwrap().starts_with("sqlite:"));
    let openapi: serde_json::Value = http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(openapi["paths"]["/v1/refine"]["post"].is_object());
    assert!(openapi["components"]["securitySchemes"]["bearer"].is_object());
    let docs = http.get(format!("{base}/docs")).send().await.unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.text().await.unwrap().contains("<html"));
}

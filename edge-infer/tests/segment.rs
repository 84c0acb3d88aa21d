//! `/v1/segment` and the operational endpoints, edge only.

mod common;

use std::io::Cursor;

use common::{TestServer, assert_error, decode_label_map, frames_or_skip, model_dir_or_skip};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;

const PIXELS: u64 = 480 * 360;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_a_real_frame_as_json_png_multipart_and_websocket() {
    let test = "segments_a_real_frame_as_json_png_multipart_and_websocket";
    let (Some(model_dir), Some(frames)) = (model_dir_or_skip(test), frames_or_skip(test, 1)) else {
        return;
    };
    let server = TestServer::start(&model_dir, &[]).await;
    let frame = frames[0].clone();

    let response = server.post_png("/v1/segment", frame.clone()).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["source"], "edge");
    assert_eq!(
        (body["width"].as_u64(), body["height"].as_u64()),
        (Some(480), Some(360))
    );
    let classes = body["classes"].as_array().unwrap();
    let counts: Vec<u64> = serde_json::from_value(body["class_counts"].clone()).unwrap();
    assert_eq!(counts.len(), classes.len());
    assert_eq!(counts.iter().sum::<u64>(), PIXELS);
    let (width, height, labels) = decode_label_map(body["label_map_png"].as_str().unwrap());
    assert_eq!((width, height), (480, 360));
    assert!(
        labels
            .iter()
            .all(|&label| usize::from(label) < classes.len())
    );
    for stage in [
        "decode",
        "queue",
        "preprocess",
        "inference",
        "postprocess",
        "mining",
        "cloud",
        "total",
    ] {
        assert!(
            body["timings"][format!("{stage}_ms")].as_f64().is_some(),
            "timing {stage}"
        );
    }
    assert!((0.0..=1.0).contains(&body["miner"]["score"].as_f64().unwrap()));
    assert_eq!(body["miner"]["scorer"], "cross-entropy");
    assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()));

    // Accept: image/png: the label map is the body, metadata in headers.
    let response = server
        .client
        .post(server.url("/v1/segment"))
        .header("content-type", "image/png")
        .header("accept", "image/png")
        .header("x-request-id", "frame-42")
        .body(frame.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/png");
    assert_eq!(response.headers()["x-source"], "edge");
    assert_eq!(response.headers()["x-request-id"], "frame-42");
    let header_counts: u64 = response.headers()["x-class-counts"]
        .to_str()
        .unwrap()
        .split(',')
        .map(|count| count.parse::<u64>().unwrap())
        .sum();
    assert_eq!(header_counts, PIXELS);
    let png = response.bytes().await.unwrap();
    let labels = models::image_ops::decode_label_png(&png).unwrap();
    assert_eq!(labels.dimensions(), (480, 360));

    // The overlay is an RGB image of the frame's size.
    let response = server
        .client
        .post(server.url("/v1/segment?overlay=true"))
        .header("content-type", "image/png")
        .header("accept", "image/png")
        .body(frame.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let overlay = image::load_from_memory(&response.bytes().await.unwrap()).unwrap();
    assert_eq!((overlay.width(), overlay.height()), (480, 360));
    assert!(overlay.color().has_color());

    // Multipart with an `image` part.
    let form = reqwest::multipart::Form::new().part(
        "image",
        reqwest::multipart::Part::bytes(frame.clone())
            .mime_str("image/png")
            .unwrap(),
    );
    let response = server
        .client
        .post(server.url("/v1/segment?collaborate=never"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["source"], "edge");

    // WebSocket: a frame in, a JSON segmentation out; garbage in, an error out.
    let ws_url = server.url("/v1/stream").replacen("http", "ws", 1);
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    use tokio_tungstenite::tungstenite::Message;
    socket
        .send(Message::Binary(frame.clone().into()))
        .await
        .unwrap();
    socket
        .send(Message::Binary(b"not an image".to_vec().into()))
        .await
        .unwrap();
    let first: Value =
        serde_json::from_str(socket.next().await.unwrap().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(first["width"], 480);
    let second: Value =
        serde_json::from_str(socket.next().await.unwrap().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(second["kind"], "not_an_image");
    socket.close(None).await.unwrap();

    // Operational endpoints.
    assert_eq!(
        server
            .client
            .get(server.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let info = server.info().await;
    assert_eq!(
        info["model"]["classes"].as_array().unwrap().len(),
        classes.len()
    );
    assert!(info["cloud"].is_null());
    assert!(info["miner"]["frames"].as_u64().unwrap() >= 4);
    let metrics = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("edge_requests_total"), "{metrics}");
    assert!(
        metrics.contains("edge_stage_duration_seconds_bucket"),
        "{metrics}"
    );
    let openapi: Value = server
        .client
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(openapi["paths"]["/v1/segment"]["post"].is_object());
    assert_eq!(
        server
            .client
            .get(server.url("/docs"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_4xx_json_errors() {
    let test = "bad_inputs_get_4xx_json_errors";
    let (Some(model_dir), Some(frames)) = (model_dir_or_skip(test), frames_or_skip(test, 1)) else {
        return;
    };
    let server = TestServer::start(
        &model_dir,
        &["--max-body-bytes", "1000000", "--max-pixels", "1000000"],
    )
    .await;
    let frame = &frames[0];

    assert_error(
        server.post_png("/v1/segment", Vec::new()).await,
        400,
        "empty_body",
    )
    .await;
    assert_error(
        server
            .post_png("/v1/segment", b"hello, world".to_vec())
            .await,
        400,
        "not_an_image",
    )
    .await;
    let truncated = frame[..frame.len() / 2].to_vec();
    assert_error(
        server.post_png("/v1/segment", truncated).await,
        400,
        "corrupt_image",
    )
    .await;
    let wrong_type = server
        .client
        .post(server.url("/v1/segment"))
        .header("content-type", "text/plain")
        .body(frame.clone())
        .send()
        .await
        .unwrap();
    assert_error(wrong_type, 415, "unsupported_media_type").await;
    assert_error(
        server.post_png("/v1/segment", vec![0u8; 2_000_000]).await,
        413,
        "body_too_large",
    )
    .await;

    // Small to send, too many pixels to decode.
    let mut huge = Vec::new();
    image::GrayImage::new(2000, 2000)
        .write_to(&mut Cursor::new(&mut huge), image::ImageFormat::Png)
        .unwrap();
    assert!(huge.len() < 1_000_000);
    assert_error(
        server.post_png("/v1/segment", huge).await,
        413,
        "too_many_pixels",
    )
    .await;

    for query in [
        "collaborate=sometimes",
        "deadline_ms=0",
        "deadline_ms=soon",
        "overlay=maybe",
        "colaborate=auto",
    ] {
        let response = server
            .post_png(&format!("/v1/segment?{query}"), frame.clone())
            .await;
        assert_error(response, 400, "bad_query").await;
    }
    let no_image_part = reqwest::multipart::Form::new().text("meta", "{}");
    let response = server
        .client
        .post(server.url("/v1/segment"))
        .multipart(no_image_part)
        .send()
        .await
        .unwrap();
    assert_error(response, 400, "bad_multipart").await;

    // Still healthy and counting.
    assert_eq!(
        server.post_png("/v1/segment", frame.clone()).await.status(),
        200
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_429_with_retry_after() {
    let test = "full_queue_answers_429_with_retry_after";
    let (Some(model_dir), Some(frames)) = (model_dir_or_skip(test), frames_or_skip(test, 1)) else {
        return;
    };
    let server = TestServer::start(&model_dir, &["--queue-size", "1", "--workers", "1"]).await;
    let mut served = 0;
    let mut refused = 0;
    // Bursts of 16 against room for 2 (one running, one waiting); a few bursts in case the machine is very fast.
    for _burst in 0..5 {
        let requests = (0..16).map(|_| {
            let request = server
                .client
                .post(server.url("/v1/segment"))
                .header("content-type", "image/png")
                .body(frames[0].clone());
            async move { request.send().await.unwrap() }
        });
        for response in futures_util::future::join_all(requests).await {
            match response.status().as_u16() {
                200 => served += 1,
                429 => {
                    let retry_after: u64 = response.headers()["retry-after"]
                        .to_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    assert!(retry_after >= 1);
                    assert_error(response, 429, "queue_full").await;
                    refused += 1;
                }
                other => panic!(
                    "unexpected status {other}: {}",
                    response.text().await.unwrap_or_default()
                ),
            }
        }
        if refused > 0 {
            break;
        }
    }
    assert!(
        served >= 1 && refused >= 1,
        "served {served}, refused {refused}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_token_guards_v1_but_not_health() {
    let test = "api_token_guards_v1_but_not_health";
    let (Some(model_dir), Some(frames)) = (model_dir_or_skip(test), frames_or_skip(test, 1)) else {
        return;
    };
    let server = TestServer::start(&model_dir, &["--api-token", "s3cret"]).await;
    assert_error(
        server.post_png("/v1/segment", frames[0].clone()).await,
        401,
        "unauthorized",
    )
    .await;
    let response = server
        .client
        .post(server.url("/v1/segment"))
        .bearer_auth("s3cret")
        .header("content-type", "image/png")
        .body(frames[0].clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        server
            .client
            .get(server.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    server.stop().await;
}

//! A real edge-infer server on a loopback port, with the real edge model and real CamVid frames.
#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use edge_infer::{Cli, Command};
use serde_json::Value;
use tokio::sync::oneshot;

/// The model to serve: `EDGE_MODEL_DIR`, else the shipped `models/edge/current`.
pub fn model_dir_or_skip(test: &str) -> Option<PathBuf> {
    let dir = models::paths::edge_model_dir();
    if dir.join("manifest.json").is_file() {
        return Some(dir);
    }
    eprintln!(
        "SKIPPED {test}: no edge model (set EDGE_MODEL_DIR or put one in models/edge/current)"
    );
    None
}

/// The first `count` CamVid validation frames, as PNG bytes.
pub fn frames_or_skip(test: &str, count: usize) -> Option<Vec<Vec<u8>>> {
    let camvid = models::paths::camvid_or_skip(test)?;
    let mut paths: Vec<PathBuf> = std::fs::read_dir(camvid.join("val"))
        .ok()?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "png"))
        .collect();
    paths.sort();
    if paths.len() < count {
        eprintln!("SKIPPED {test}: fewer than {count} CamVid validation frames");
        return None;
    }
    Some(
        paths[..count]
            .iter()
            .map(|path| std::fs::read(path).expect("frame readable"))
            .collect(),
    )
}

pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client builds")
}

/// Polls `<base_url>/ready` until it answers 200, for at most two minutes.
pub async fn wait_ready(client: &reqwest::Client, base_url: &str) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(120) {
        if let Ok(response) = client.get(format!("{base_url}/ready")).send().await
            && response.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("server at {base_url} not ready after 120 s");
}

pub struct TestServer {
    pub url: String,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Starts `edge-infer serve --model-dir <model_dir> <extra>` on a free port and waits until it is ready.
    pub async fn start(model_dir: &Path, extra: &[&str]) -> TestServer {
        let model_dir = model_dir.to_str().expect("utf-8 path");
        Self::start_with(&[&["--model-dir", model_dir], extra].concat()).await
    }

    /// Starts `edge-infer serve <args>` on a free port and waits until it is ready.
    pub async fn start_with(args: &[&str]) -> TestServer {
        let mut argv = vec!["edge-infer", "serve", "--listen", "127.0.0.1:0"];
        argv.extend_from_slice(args);
        let Command::Serve(args) = Cli::try_parse_from(argv).expect("arguments parse").command;
        let config = args.resolve().expect("configuration is valid");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(edge_infer::serve(listener, config, async {
            let _ = stop.await;
        }));
        let server = TestServer {
            url,
            client: http_client(),
            shutdown: Some(shutdown),
            task: Some(task),
        };
        wait_ready(&server.client, &server.url).await;
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    pub async fn post_png(&self, path: &str, body: Vec<u8>) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("content-type", "image/png")
            .body(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn info(&self) -> Value {
        self.client
            .get(self.url("/info"))
            .send()
            .await
            .expect("info")
            .json()
            .await
            .expect("info is JSON")
    }

    /// Graceful shutdown, checking the server stopped cleanly.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let result = tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("server stops within 30 s");
            result.expect("server task").expect("server exits cleanly");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Checks an error answer: status and the `wire::ErrorBody` kind.
pub async fn assert_error(response: reqwest::Response, status: u16, kind: &str) -> wire::ErrorBody {
    assert_eq!(response.status().as_u16(), status, "status for {kind}");
    let body: wire::ErrorBody = response.json().await.expect("error body is JSON");
    assert_eq!(body.kind, kind, "{body:?}");
    body
}

/// Decodes a base64 label map PNG to (width, height, labels).
pub fn decode_label_map(base64: &str) -> (u32, u32, Vec<u8>) {
    let png = wire::decode_base64(base64).expect("base64");
    let image = models::image_ops::decode_label_png(&png).expect("label PNG");
    (image.width(), image.height(), image.into_raw())
}

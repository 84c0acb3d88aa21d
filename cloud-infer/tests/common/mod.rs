//! Shared test helpers: a server on a loopback port, a stand-in refiner, multipart forms and synthetic frames.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::Cursor;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::mpsc;

use cloud_infer::replay::ReplayStore;
use cloud_infer::{
    Auth, Limits, RefineFrame, RefineQueue, Refinement, Refiner, RefinerError, RefinerInfo, router,
};
use image::{ImageFormat, RgbImage};
use wire::{ModelRef, QuantisedScores, RefineMeta};

pub const TOKEN: &str = "test-token";

/// Serves `app` on 127.0.0.1 at a port the OS picks; returns the base URL. The server lives as long as the runtime.
pub async fn spawn_server(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let address = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("server runs");
    });
    format!("http://{address}")
}

pub fn limits() -> Limits {
    Limits {
        max_body_bytes: 4 * 1024 * 1024,
        max_pixels: 1_000_000,
    }
}

pub fn token_auth() -> Auth {
    Auth::Tokens(Arc::new(vec![TOKEN.to_string()]))
}

pub async fn serve_with(
    refiner: Box<dyn Refiner>,
    queue_size: usize,
    store: Arc<dyn ReplayStore>,
) -> String {
    let queue = RefineQueue::start(queue_size, move || Ok(refiner));
    wait_ready(&queue);
    spawn_server(router(queue, store, token_auth(), limits())).await
}

pub fn wait_ready(queue: &RefineQueue) {
    for _ in 0..600 {
        if matches!(queue.readiness(), cloud_infer::Readiness::Ready(_)) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("refiner not ready: {:?}", queue.readiness());
}

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Answers with the edge's own labels, optionally waiting for a go-ahead per frame (to hold the thread busy).
pub struct EchoRefiner {
    pub started: Option<mpsc::Sender<()>>,
    pub proceed: Option<Mutex<mpsc::Receiver<()>>>,
}

impl EchoRefiner {
    pub fn instant() -> Box<dyn Refiner> {
        Box::new(Self {
            started: None,
            proceed: None,
        })
    }

    /// A refiner that reports each frame it starts on the returned receiver and answers only once the returned
    /// sender lets it.
    pub fn gated() -> (Box<dyn Refiner>, mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (started, started_rx) = mpsc::channel();
        let (proceed, proceed_rx) = mpsc::channel();
        let refiner = Box::new(Self {
            started: Some(started),
            proceed: Some(Mutex::new(proceed_rx)),
        });
        (refiner, started_rx, proceed)
    }
}

impl Refiner for EchoRefiner {
    fn info(&self) -> RefinerInfo {
        RefinerInfo {
            model: ModelRef {
                name: "echo".into(),
                version: "0".into(),
            },
            fusion: "none".into(),
            prompt_mode: "none".into(),
            points_per_side: 0,
            class_evidence: "none".into(),
            semantic_head: None,
        }
    }

    fn refine(&mut self, frame: RefineFrame<'_>) -> Result<Refinement, RefinerError> {
        if let Some(started) = &self.started {
            let _ = started.send(());
        }
        if let Some(proceed) = &self.proceed {
            let _ = proceed.lock().unwrap().recv();
        }
        Ok(Refinement {
            labels: frame.edge_scores_full.labels(),
            mask_count: 0,
            encoder_ms: 0.0,
            decoder_ms: 0.0,
            fusion_ms: 0.0,
        })
    }
}

pub fn far_deadline() -> u64 {
    cloud_infer::queue::now_unix_ms() + 600_000
}

pub fn meta(request_id: &str, scores: QuantisedScores) -> RefineMeta {
    RefineMeta {
        protocol: wire::PROTOCOL_VERSION.into(),
        request_id: request_id.into(),
        robot_id: "robot-1".into(),
        edge_model: ModelRef {
            name: "edge".into(),
            version: "1.0.0".into(),
        },
        deadline_unix_ms: far_deadline(),
        miner_score: 0.25,
        miner: "margin".into(),
        domain: Some("dusk".into()),
        scores,
    }
}

pub fn form(meta: &RefineMeta, image: Vec<u8>, edge_scores: Vec<u8>) -> reqwest::multipart::Form {
    reqwest::multipart::Form::new()
        .text(wire::PART_META, serde_json::to_string(meta).unwrap())
        .part(
            wire::PART_IMAGE,
            reqwest::multipart::Part::bytes(image).file_name("frame.png"),
        )
        .part(
            wire::PART_EDGE_SCORES,
            reqwest::multipart::Part::bytes(edge_scores),
        )
}

/// A small PNG whose content depends on `seed` (different seeds, different bytes).
pub fn synthetic_png(width: u32, height: u32, seed: u8) -> Vec<u8> {
    let image = RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([x as u8 ^ seed, y as u8, seed])
    });
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
        .unwrap();
    bytes
}

/// 3 classes at 8x6: class 0 on the left half, class 2 on the right half.
pub fn synthetic_scores() -> (QuantisedScores, Vec<u8>) {
    let shape = QuantisedScores {
        classes: 3,
        height: 6,
        width: 8,
    };
    let mut bytes = Vec::with_capacity(shape.len());
    for class in 0..3 {
        for _y in 0..6 {
            for x in 0..8 {
                let wins = (class == 0 && x < 4) || (class == 2 && x >= 4);
                bytes.push(if wins { 230 } else { 12 });
            }
        }
    }
    (shape, bytes)
}

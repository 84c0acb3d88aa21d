//! Scale-out as deployed, with real processes: two cloud-infer replicas share one object-store replay buffer
//! (`file://`, the same code path as `s3://`), three edge-infer processes play three robots, each pointed at one of
//! the clouds and all watching one model registry directory. Real CamVid frames go through the edges with
//! `collaborate=always`; one frame is sent by two robots through different clouds.
//!
//! Checks: every frame a cloud acknowledged is in the shared buffer exactly once (no loss, no duplicate, the shared
//! frame stored once), both replicas report the same buffer, and a version published into the registry (new version
//! directory, `current` link re-pointed) reaches every robot's `/info`.
//!
//! The edge-infer binary is a different package's, so Cargo gives no `CARGO_BIN_EXE_` for it: it is looked up next
//! to cloud-infer's own binary (`cargo test --workspace` builds both).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cloud_infer::replay::{Capacity, open_store, sha256_hex};
use models::manifest::LoadedManifest;
use serde_json::Value;

const TOKEN: &str = "scale-out-test-token";
const ROBOTS: usize = 3;
/// Distinct frames sent; the last one is sent by two robots (through different clouds).
const FRAMES: usize = 4;
const STARTUP_TIMEOUT: Duration = Duration::from_secs(180);
const SWAP_TIMEOUT: Duration = Duration::from_secs(60);

fn edge_infer_binary() -> PathBuf {
    let own = PathBuf::from(env!("CARGO_BIN_EXE_cloud-infer"));
    let edge = own.with_file_name(format!("edge-infer{}", std::env::consts::EXE_SUFFIX));
    assert!(
        edge.is_file(),
        "{} is missing: run `cargo build -p edge-infer` first (`cargo test --workspace` builds it)",
        edge.display()
    );
    edge
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| arg.to_string()).collect()
}

/// A port the OS reports free now; the child binds it a moment later (loopback only, so a clash is unlikely).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The processes of one test run; killed on drop, and their logs printed when the test failed.
struct Fleet {
    dir: tempfile::TempDir,
    children: Vec<(String, Child)>,
}

impl Fleet {
    fn spawn(&mut self, name: &str, program: &Path, args: &[String], env: &[(&str, &str)]) {
        let log = File::create(self.log_path(name)).expect("log file");
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({}): {e}", program.display()));
        self.children.push((name.to_string(), child));
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (name, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                let log = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                eprintln!("---- {name} log (last lines) ----");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

async fn wait_ready(client: &reqwest::Client, base: &str, fleet: &mut Fleet) {
    let start = Instant::now();
    loop {
        if let Ok(response) = client.get(format!("{base}/ready")).send().await {
            if response.status().is_success() {
                return;
            }
            // A model that failed to load will not recover: say why now rather than at the timeout.
            if let Ok(body) = response.json::<Value>().await {
                assert_ne!(body["state"], "failed", "{base} cannot get ready: {body}");
            }
        }
        for (name, child) in &mut fleet.children {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{name} exited early ({status}) while waiting for {base}");
            }
        }
        assert!(
            start.elapsed() < STARTUP_TIMEOUT,
            "{base} not ready after {STARTUP_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    client
        .get(url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .expect("JSON body")
}

/// Copies the model's regular files (a registry version directory holds no links).
fn copy_model(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Points `<registry>/current` at `version` the way the trainer's registry does: a relative link under a temporary
/// name renamed over the old one, so a robot polling the link never sees it missing.
fn point_current(registry: &Path, version: &str) {
    let staged = registry.join(".current.staged");
    let _ = std::fs::remove_file(&staged);
    std::os::unix::fs::symlink(version, &staged).unwrap();
    std::fs::rename(&staged, registry.join("current")).unwrap();
}

fn frames_or_skip(test: &str) -> Option<Vec<Vec<u8>>> {
    let camvid = models::paths::camvid_or_skip(test)?;
    let samples = models::dataset::read_index(&camvid.join("index/dusk-eval.txt"), None)
        .expect("dusk-eval index readable");
    assert!(
        samples.len() >= FRAMES,
        "dusk-eval has fewer than {FRAMES} frames"
    );
    Some(
        samples[..FRAMES]
            .iter()
            .map(|sample| std::fs::read(&sample.image).expect("frame readable"))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clouds_share_one_buffer_and_every_robot_follows_the_registry() {
    let test = "two_clouds_share_one_buffer_and_every_robot_follows_the_registry";
    let Some(frames) = frames_or_skip(test) else {
        return;
    };
    let model_dir = models::paths::edge_model_dir();
    let sam_dir = models::paths::models_dir().join("mobilesam");
    let edge_binary = edge_infer_binary();
    let cloud_binary = PathBuf::from(env!("CARGO_BIN_EXE_cloud-infer"));
    let started = Instant::now();

    let mut fleet = Fleet {
        dir: tempfile::Builder::new()
            .prefix("scale-out-")
            .tempdir()
            .unwrap(),
        children: Vec::new(),
    };
    let buffer_url = format!("file://{}", fleet.dir.path().join("buffer").display());
    let registry = fleet.dir.path().join("registry");
    let original = LoadedManifest::load_verified(&model_dir)
        .expect("edge model verifies")
        .manifest;
    copy_model(&model_dir, &registry.join(&original.version));
    point_current(&registry, &original.version);

    // Two cloud replicas, one buffer. A small prompt budget and one thread each: this checks scale-out, not quality.
    let mut clouds = Vec::new();
    for replica in 0..2 {
        let port = free_port();
        let args = strings(&[
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--buffer",
            &buffer_url,
            "--sam-dir",
            sam_dir.to_str().unwrap(),
            "--max-prompts",
            "8",
            "--threads",
            "1",
        ]);
        fleet.spawn(
            &format!("cloud-{replica}"),
            &cloud_binary,
            &args,
            &[("CLOUD_INFER_TOKENS", TOKEN)],
        );
        clouds.push(format!("http://127.0.0.1:{port}"));
    }
    // Robots alternate between the clouds, all on the registry's `current` link.
    let current = registry.join("current");
    let mut robots = Vec::new();
    for robot in 0..ROBOTS {
        let port = free_port();
        let cloud = &clouds[robot % clouds.len()];
        let args = strings(&[
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--model-dir",
            current.to_str().unwrap(),
            "--model-poll-secs",
            "1",
            "--robot-id",
            &format!("robot-{robot}"),
            // Long enough for MobileSAM on a busy 2-core machine: every frame must be answered by a cloud.
            "--cloud-timeout-ms",
            "120000",
        ]);
        fleet.spawn(
            &format!("edge-{robot}"),
            &edge_binary,
            &args,
            &[
                ("EDGE_CLOUD_URL", cloud.as_str()),
                ("EDGE_CLOUD_TOKEN", TOKEN),
            ],
        );
        robots.push(format!("http://127.0.0.1:{port}"));
    }

    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    for base in clouds.iter().chain(&robots) {
        wait_ready(&client, base, &mut fleet).await;
    }
    for base in &robots {
        let info = get_json(&client, &format!("{base}/info")).await;
        assert_eq!(
            info["model"]["version"],
            original.version.as_str(),
            "{info}"
        );
    }
    eprintln!("{test}: fleet ready after {:?}", started.elapsed());

    // (robot, frame): the first FRAMES-1 frames spread over the robots; the last one is the second frame of both
    // robot 0 (cloud 0) and robot 1 (cloud 1), so the two clouds store it at about the same time.
    let shared = FRAMES - 1;
    let mut plan: Vec<(usize, usize)> = (0..shared).map(|frame| (frame % ROBOTS, frame)).collect();
    plan.push((0, shared));
    plan.push((1, shared));
    let mut by_robot: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &(robot, frame) in &plan {
        by_robot.entry(robot).or_default().push(frame);
    }
    // Each robot sends its frames one after another; the robots run concurrently.
    let sends = by_robot.into_iter().map(|(robot, frame_ids)| {
        let (client, base, frames) = (client.clone(), robots[robot].clone(), frames.clone());
        async move {
            let mut answers = Vec::new();
            for frame in frame_ids {
                let response = client
                    .post(format!("{base}/v1/segment?collaborate=always"))
                    .header("content-type", "image/png")
                    .body(frames[frame].clone())
                    .send()
                    .await
                    .expect("segment request sent");
                assert!(
                    response.status().is_success(),
                    "robot {robot}: {response:?}"
                );
                let body: Value = response.json().await.expect("segment answer is JSON");
                answers.push((robot, frame, body));
            }
            answers
        }
    });
    let answers: Vec<(usize, usize, Value)> = futures::future::join_all(sends)
        .await
        .into_iter()
        .flatten()
        .collect();
    eprintln!(
        "{test}: {} frames answered after {:?}",
        answers.len(),
        started.elapsed()
    );

    // With collaborate=always and live clouds, every answer is the cloud's: the cloud stores a frame before it
    // answers, so each of these is an acknowledged frame.
    let mut acknowledged: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (robot, frame, body) in &answers {
        assert_eq!(
            body["source"], "cloud",
            "robot {robot} frame {frame} was not refined by the cloud: {}",
            body["fallback_reason"]
        );
        acknowledged
            .entry(sha256_hex(&frames[*frame]))
            .or_default()
            .insert(body["request_id"].as_str().unwrap().to_string());
    }
    assert_eq!(acknowledged.len(), FRAMES);

    // The shared buffer, read the way the retraining job reads it (the store blocks: off the async threads). Each
    // entry's parts must read back with their checksums, so nothing half-written was listed.
    let url = buffer_url.clone();
    let entries = tokio::task::spawn_blocking(move || {
        let store = open_store(&url, Capacity::unbounded()).expect("buffer opens");
        let entries = store.entries().expect("buffer lists");
        for entry in &entries {
            for part in cloud_infer::replay::Part::ALL {
                store.read(entry, part).expect("entry part reads back");
            }
        }
        entries
    })
    .await
    .unwrap();
    let stored: Vec<&str> = entries.iter().map(|entry| entry.id.as_str()).collect();
    let unique: BTreeSet<&str> = stored.iter().copied().collect();
    assert_eq!(
        unique.len(),
        stored.len(),
        "duplicate entries in the buffer: {stored:?}"
    );
    assert_eq!(
        unique,
        acknowledged.keys().map(String::as_str).collect(),
        "the buffer must hold exactly the acknowledged frames"
    );
    for entry in &entries {
        assert!(
            acknowledged[&entry.id].contains(&entry.request_id),
            "entry {} came from request {}, not one of {:?}",
            entry.id,
            entry.request_id,
            acknowledged[&entry.id]
        );
    }
    for cloud in &clouds {
        let stats = get_json(&client, &format!("{cloud}/v1/buffer/stats")).await;
        assert_eq!(stats["count"], FRAMES as u64, "{cloud}: {stats}");
    }

    // Publish a new version into the registry and re-point `current`: every robot must pick it up.
    let mut next = original.clone();
    next.version = format!("{}-scale-out", original.version);
    next.provenance.parent_version = Some(original.version.clone());
    let next_dir = registry.join(&next.version);
    copy_model(&registry.join(&original.version), &next_dir);
    next.write_with_checksums(&next_dir).unwrap();
    point_current(&registry, &next.version);
    let swap_started = Instant::now();
    for base in &robots {
        loop {
            let info = get_json(&client, &format!("{base}/info")).await;
            if info["model"]["version"] == next.version.as_str() {
                break;
            }
            assert!(
                swap_started.elapsed() < SWAP_TIMEOUT,
                "{base} still serves {} after {SWAP_TIMEOUT:?}: {info}",
                info["model"]["version"]
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    eprintln!(
        "{test}: every robot on {} {:?} after the publish; total {:?}",
        next.version,
        swap_started.elapsed(),
        started.elapsed()
    );
}

//! `benchmarks run -f job.yaml` end to end on real CamVid frames with the real edge model and MobileSAM: every
//! paradigm runs, the rank files, leaderboard and plots come out, and a second run never overwrites the first.

use std::path::{Path, PathBuf};
use std::process::Command;

use models::paths::camvid_or_skip;

fn run_job(job: &Path, cache: &Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_benchmarks"))
        .args(["run", "-f"])
        .arg(job)
        .arg("--cache")
        .arg(cache)
        .output()
        .expect("benchmarks binary starts");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "benchmarks run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The job's run folders, oldest first.
fn run_dirs(workspace: &Path, job: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(workspace.join(job))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    dirs
}

fn rank_rows(path: &Path) -> Vec<csv::StringRecord> {
    csv::Reader::from_path(path)
        .unwrap()
        .records()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn a_job_ranks_every_paradigm_and_never_overwrites_a_run() {
    let Some(camvid) = camvid_or_skip("a_job_ranks_every_paradigm_and_never_overwrites_a_run")
    else {
        return;
    };
    let baseline = models::paths::shared_dir()
        .join("models/coral-deeplab-cityscapes/deeplab_mobilenet_edgetpu_slim_cityscapes_quant_logits.onnx");
    if !baseline.is_file() {
        eprintln!(
            "SKIPPED a_job_ranks_every_paradigm_and_never_overwrites_a_run: {} is missing",
            baseline.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let workspace = dir.path().join("out");
    let index = camvid.join("index/dusk-eval.txt");
    let job = dir.path().join("job.yaml");
    std::fs::write(
        &job,
        format!(
            "benchmarkingjob:
  name: smoke
  workspace: {workspace}
  testenv:
    dataset:
      test_index: {index}
      max_frames: 3
    overlays: 2
  test_object:
    type: algorithms
    algorithms:
      - name: edge-only
        paradigm_type: edge-only
        modules: [{{type: basemodel, name: edge-segmenter}}]
      - name: baseline
        paradigm_type: edge-only
        modules: [{{type: basemodel, name: cityscapes-baseline}}]
      - name: collab
        paradigm_type: collaborative
        modules:
          - {{type: basemodel, name: edge-segmenter}}
          - type: hard_example_mining
            name: margin
            hyperparameters:
              - threshold: {{values: [0.0, 1.0]}}
          - type: cloud_refinement
            name: mobilesam
            hyperparameters:
              - max_prompts: {{values: [8]}}
  rank:
    sort_by: [{{samples_transfer_ratio: ascend}}]
    selected_dataitem:
      paradigms: [collaborative]
      modules: [all]
      hyperparameters: [threshold]
      metrics: [miou, samples_transfer_ratio]
",
            workspace = workspace.display(),
            index = index.display()
        ),
    )
    .unwrap();
    let cache = dir.path().join("cache");
    let leaderboard = run_job(&job, &cache);
    assert!(
        leaderboard.contains("| rank | algorithm | paradigm | miou | samples_transfer_ratio |")
    );

    let runs = run_dirs(&workspace, "smoke");
    assert_eq!(runs.len(), 1);
    let out = &runs[0];
    let all = rank_rows(&out.join("all_rank.csv"));
    assert_eq!(all.len(), 4, "edge-only, the baseline, two thresholds");
    let header = csv::Reader::from_path(out.join("all_rank.csv"))
        .unwrap()
        .headers()
        .unwrap()
        .clone();
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    let ratio = |row: &csv::StringRecord| {
        row[column("samples_transfer_ratio")]
            .parse::<f64>()
            .unwrap()
    };
    // Sorted ascending by upload ratio: a margin score is never below 0 (nothing uploaded) and always below 1.
    assert_eq!(ratio(&all[0]), 0.0);
    assert_eq!(ratio(&all[3]), 1.0);
    assert_eq!(&all[3][column("algorithm")], "collab");
    assert_eq!(&all[1][column("basemodel")], "cityscapes-baseline");
    let miou = |row: &csv::StringRecord| row[column("miou")].parse::<f64>().unwrap();
    assert!(all.iter().all(|r| (0.0..=1.0).contains(&miou(r))));
    assert!(
        miou(&all[3]) != miou(&all[0]),
        "refining every frame changes the labels"
    );
    assert!(
        miou(&all[1]) > 0.2 && miou(&all[1]) != miou(&all[0]),
        "the Cityscapes model, folded into CamVid classes, segments the frames its own way"
    );
    assert_eq!(
        &all[3][column("hard_example_mining-threshold")],
        "1.0",
        "hyperparameters get their own columns"
    );

    let selected_header: Vec<String> = csv::Reader::from_path(out.join("selected_rank.csv"))
        .unwrap()
        .headers()
        .unwrap()
        .iter()
        .map(String::from)
        .collect();
    assert!(selected_header.contains(&"hard_example_mining-threshold".to_string()));
    assert!(!selected_header.contains(&"pixel_accuracy".to_string()));
    assert_eq!(
        rank_rows(&out.join("selected_rank.csv")).len(),
        2,
        "only collaborative"
    );

    for plot in ["per_class_iou.png", "miou_vs_upload_ratio.png"] {
        let image = image::open(out.join("plots").join(plot)).unwrap();
        assert!(image.width() > 500, "{plot}");
    }
    let frames = std::fs::read_dir(out.join("plots"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("frames-")
        })
        .count();
    assert_eq!(frames, 4, "side-by-side frames for every run");
    assert!(out.join("runs").read_dir().unwrap().count() == 4);

    // A rerun (cloud labels now cached) gets its own folder and the same figures.
    run_job(&job, &cache);
    let runs = run_dirs(&workspace, "smoke");
    assert_eq!(runs.len(), 2);
    assert_eq!(
        std::fs::read_to_string(runs[0].join("all_rank.csv"))
            .unwrap()
            .lines()
            .count(),
        5
    );
    let again = rank_rows(&runs[1].join("all_rank.csv"));
    assert_eq!(miou(&again[3]), miou(&all[3]), "deterministic");
}

#[test]
fn a_lifelong_job_reports_the_accuracy_matrix() {
    let Some(camvid) = camvid_or_skip("a_lifelong_job_reports_the_accuracy_matrix") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let workspace = dir.path().join("out");
    let index = |name: &str| {
        camvid
            .join(format!("index/{name}.txt"))
            .display()
            .to_string()
    };
    let job = dir.path().join("job.yaml");
    std::fs::write(
        &job,
        format!(
            "benchmarkingjob:
  name: lifelong-smoke
  workspace: {workspace}
  testenv:
    dataset:
      train_index: {train}
      test_index: {dusk_eval}
    lifelong:
      tasks:
        - {{name: day, eval_index: {day_val}, max_eval_frames: 2}}
        - {{name: dusk, stream_index: {stream}, eval_index: {dusk_eval}, max_eval_frames: 2, max_stream_frames: 4}}
  test_object:
    type: algorithms
    algorithms:
      - name: lifelong
        paradigm_type: lifelong
        modules:
          - {{type: basemodel, name: edge-segmenter}}
          - type: cloud_refinement
            name: mobilesam
            hyperparameters:
              - max_prompts: {{values: [8]}}
          - type: lifelong_training
            name: trainer-retrain
            hyperparameters:
              - epochs: {{values: [1]}}
              - batch_size: {{values: [2]}}
              - crop_height: {{values: [128]}}
              - crop_width: {{values: [160]}}
              - max_old_task_frames: {{values: [2]}}
              - max_old_task_drop: {{values: [100]}}
              - min_new_task_gain: {{values: [-100]}}
              - rounds: {{values: [2]}}
",
            workspace = workspace.display(),
            train = index("day-train"),
            dusk_eval = index("dusk-eval"),
            day_val = index("day-val"),
            stream = index("dusk-stream"),
        ),
    )
    .unwrap();
    let leaderboard = run_job(&job, &dir.path().join("cache"));
    assert!(
        leaderboard.contains("Accuracy matrix (mIoU)"),
        "{leaderboard}"
    );
    assert!(leaderboard.contains("| round 1 (dusk) |"), "{leaderboard}");
    assert!(leaderboard.contains("| round 2 (dusk) |"), "{leaderboard}");
    let out = &run_dirs(&workspace, "lifelong-smoke")[0];
    let run = std::fs::read_dir(out.join("runs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let run_id = run.file_name().unwrap().to_string_lossy().into_owned();
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("metrics.json")).unwrap()).unwrap();
    let matrix = &metrics["lifelong"]["miou"];
    assert_eq!(
        matrix.as_array().unwrap().len(),
        3,
        "initial and two rounds of dusk"
    );
    assert_eq!(metrics["lifelong"]["learned_at"], serde_json::json!([0, 2]));
    // The gate was told to accept anything, so each round serves a newly retrained model: its scores differ.
    assert_ne!(matrix[0], matrix[1]);
    assert_ne!(matrix[1], matrix[2]);
    assert_eq!(
        metrics["metrics"]["samples_transfer_ratio"], 1.0,
        "no miner: every frame"
    );
    // Transfer is measured after the task's last round.
    let at = |row: usize, task: usize| matrix[row][task].as_f64().unwrap();
    let bwt = metrics["metrics"]["bwt"].as_f64().unwrap();
    let fwt = metrics["metrics"]["fwt"].as_f64().unwrap();
    assert!((bwt - (at(2, 0) - at(0, 0))).abs() < 1e-9);
    assert!((fwt - (at(2, 1) - at(0, 1))).abs() < 1e-9);
    // The second round's frames were labelled from the first round's model (its own cache entries), and its gate
    // also held the old task against the registry's first version.
    let labellers: Vec<String> = std::fs::read_dir(dir.path().join("cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(labellers.len(), 2, "{labellers:?}");
    let decisions: Vec<serde_json::Value> = std::fs::read_dir(run.join("retrain"))
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path().join("decision.json");
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
        })
        .collect();
    assert_eq!(decisions.len(), 2);
    let bounded: Vec<bool> = decisions
        .iter()
        .map(|d| d["decision"]["first_version_old_task_miou"].is_number())
        .collect();
    assert_eq!(
        bounded.iter().filter(|b| **b).count(),
        1,
        "only round 2 has an earlier version"
    );
    assert!(image::open(out.join(format!("plots/accuracy_matrix-{run_id}.png"))).is_ok());
}

/// A service binary of another package, next to this package's binary (`cargo test --workspace` builds all).
fn sibling_binary(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_benchmarks")).with_file_name(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p {name}` first (`cargo test --workspace` builds it)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port()
}

/// Kills the service when the test ends, however it ends.
struct Service(std::process::Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_ready(base: &str, service: &mut Service) {
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(120) {
        if reqwest::blocking::get(format!("{base}/ready")).is_ok_and(|r| r.status().is_success()) {
            return;
        }
        assert!(
            service.0.try_wait().unwrap().is_none(),
            "{base} exited while starting"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!("{base} not ready");
}

#[test]
fn an_http_job_measures_the_running_services() {
    let Some(camvid) = camvid_or_skip("an_http_job_measures_the_running_services") else {
        return;
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (edge_port, cloud_port) = (free_port(), free_port());
    let token = "benchmark-test-token";
    let mut cloud = Service(
        Command::new(sibling_binary("cloud-infer"))
            .args(["serve", "--listen", &format!("127.0.0.1:{cloud_port}")])
            .args(["--max-prompts", "8", "--buffer"])
            .arg(dir.path().join("buffer"))
            .env("CLOUD_INFER_TOKENS", token)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut edge = Service(
        Command::new(sibling_binary("edge-infer"))
            .args(["serve", "--listen", &format!("127.0.0.1:{edge_port}")])
            .args(["--cloud-url", &format!("http://127.0.0.1:{cloud_port}")])
            .args(["--cloud-token", token, "--cloud-timeout-ms", "60000"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_ready(&format!("http://127.0.0.1:{cloud_port}"), &mut cloud);
    wait_ready(&format!("http://127.0.0.1:{edge_port}"), &mut edge);

    let workspace = dir.path().join("out");
    let job = dir.path().join("job.yaml");
    std::fs::write(
        &job,
        format!(
            "benchmarkingjob:
  name: http
  workspace: {workspace}
  testenv:
    dataset:
      test_index: {index}
      max_frames: 2
    mode: http
    edge_url: http://127.0.0.1:{edge_port}
  test_object:
    type: algorithms
    algorithms:
      - {{name: edge-only, paradigm_type: edge-only}}
      - {{name: cloud-only, paradigm_type: cloud-only}}
",
            workspace = workspace.display(),
            index = camvid.join("index/dusk-eval.txt").display(),
        ),
    )
    .unwrap();
    run_job(&job, &dir.path().join("cache"));
    let out = &run_dirs(&workspace, "http")[0];
    let header = csv::Reader::from_path(out.join("all_rank.csv"))
        .unwrap()
        .headers()
        .unwrap()
        .clone();
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    let rows = rank_rows(&out.join("all_rank.csv"));
    let row = |algorithm: &str| {
        rows.iter()
            .find(|r| &r[column("algorithm")] == algorithm)
            .unwrap()
    };
    let number = |r: &csv::StringRecord, name: &str| r[column(name)].parse::<f64>().unwrap();
    let (edge_only, cloud_only) = (row("edge-only"), row("cloud-only"));
    assert_eq!(number(edge_only, "samples_transfer_ratio"), 0.0);
    assert_eq!(
        number(cloud_only, "samples_transfer_ratio"),
        1.0,
        "every frame refined"
    );
    assert_eq!(number(edge_only, "edge_to_cloud_bytes_per_frame"), 0.0);
    let frames = models::dataset::read_index(&camvid.join("index/dusk-eval.txt"), None).unwrap();
    let first = std::fs::metadata(&frames[0].image).unwrap().len() as f64;
    assert!(
        number(cloud_only, "edge_to_cloud_bytes_per_frame") > first * 0.5,
        "the edge sent the encoded frames to the cloud"
    );
    assert!(number(cloud_only, "cloud_latency_p50_ms") > number(edge_only, "edge_latency_p50_ms"));
    assert!(
        number(edge_only, "bytes_down_per_frame") > 100.0,
        "a label map came back"
    );
}

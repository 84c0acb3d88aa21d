//! A real, tiny retraining run: four dusk frames exported in the replay buffer's format with cloud-style labels,
//! rehearsal from day-train, one epoch at small crops, gated, published into a temporary registry, loaded by ONNX
//! Runtime as the edge would, then rolled back.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use models::dataset::{Sample, read_index, write_index};
use models::image_ops::encode_label_png;
use models::manifest::LoadedManifest;
use models::paths::{camvid_or_skip, edge_model_dir};
use models::replay_export::{INDEX_FILE, INDEX_HEADER, cloud_label_path, image_path, index_line};
use models::{EdgeModel, SessionConfig};
use sha2::{Digest, Sha256};
use trainer::TrainConfig;
use trainer::data::Augmentation;
use trainer::gate::{GatePolicy, Refusal};
use trainer::registry::Registry;
use trainer::retrain::{DECISION_FILE, RetrainConfig, RetrainReport, retrain};
use trainer::retrain_cli::mirror_live_version;

/// Stands in for MobileSAM's refinement: the annotation coarsened to 8x8 blocks (mask-like boundaries), with the
/// block seams ignored where the classes disagree. The job only ever sees it through the export, as a cloud label.
fn cloud_style_labels(truth: &image::GrayImage) -> Vec<u8> {
    let (w, h) = truth.dimensions();
    let block = |x: u32, y: u32| truth.get_pixel(x - x % 8, y - y % 8)[0];
    (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .map(|(x, y)| {
            let label = block(x, y);
            if label != truth.get_pixel(x, y)[0] && (x % 8 == 7 || y % 8 == 7) {
                11
            } else {
                label
            }
        })
        .collect()
}

/// Writes the frames as `cloud-infer export-index` does: content-addressed images, cloud label PNGs, `index.txt`.
fn export_buffer(samples: &[Sample], out: &Path) {
    let mut index = format!("{INDEX_HEADER}\n");
    for sample in samples {
        let bytes = std::fs::read(&sample.image).unwrap();
        let id = hex::encode(Sha256::digest(&bytes));
        let (image, truth) = sample.load_labelled().unwrap();
        let labels =
            encode_label_png(&cloud_style_labels(&truth), image.width(), image.height()).unwrap();
        for (path, bytes) in [
            (image_path(&id, "png"), bytes),
            (cloud_label_path(&id), labels),
        ] {
            let path = out.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
        index.push_str(&index_line(&id, "png"));
        index.push('\n');
    }
    std::fs::write(out.join(INDEX_FILE), index).unwrap();
}

fn small_index(camvid: &Path, split: &str, count: usize, out: &Path) -> PathBuf {
    let samples = read_index(&camvid.join(format!("index/{split}.txt")), None).unwrap();
    let path = out.join(format!("{split}.txt"));
    // Rooted at `out`, which the dataset paths are not under: they stay absolute.
    write_index(&path, &samples[..count], out).unwrap();
    path
}

/// Four dusk frames in the buffer (one or two held back), two rehearsal frames, two old-task and one labelled
/// new-task frame; one epoch at small crops.
fn tiny_config(camvid: &Path, work: &Path) -> RetrainConfig {
    let stream = read_index(&camvid.join("index/dusk-stream.txt"), None).unwrap();
    let export = work.join("buffer-export");
    export_buffer(&stream[..4], &export);
    RetrainConfig {
        registry: work.join("registry"),
        seed_model: edge_model_dir(),
        snapshot: export,
        max_buffer_frames: 4,
        holdout_fraction: 0.25,
        rehearsal_index: Some(small_index(camvid, "day-train", 4, work)),
        rehearsal_ratio: 0.5,
        max_rehearsal_frames: 2,
        old_task_index: small_index(camvid, "day-val", 2, work),
        max_old_task_frames: 2,
        new_task_labelled_index: Some(small_index(camvid, "dusk-eval", 1, work)),
        // One epoch on a handful of frames proves the plumbing, not the model: let any result through here (the
        // gate's refusals are covered by tests/gate.rs).
        gate: GatePolicy {
            max_old_task_drop: 100.0,
            min_new_task_gain: -100.0,
            ..GatePolicy::default()
        },
        train: TrainConfig {
            epochs: 1,
            batch_size: 2,
            learning_rate: 1e-3,
            weight_decay: 0.0,
            warmup_steps: 0,
            augmentation: Augmentation {
                crop_height: 96,
                crop_width: 128,
                min_scale: 0.4,
                max_scale: 0.5,
                flip: true,
                jitter: 0.1,
            },
            class_weighting: true,
            lovasz_weight: 0.0,
            seed: 3,
            freeze_prefixes: vec!["_conv_stem.".into(), "_bn0.".into()],
            validate_every: 1,
            checkpoint_dir: PathBuf::new(),
        },
        soup_members: 1,
        runs_dir: work.join("runs"),
        version: None,
    }
}

#[test]
fn retrains_on_a_buffer_snapshot_publishes_into_the_registry_and_rolls_back() {
    let Some(camvid) =
        camvid_or_skip("retrains_on_a_buffer_snapshot_publishes_into_the_registry_and_rolls_back")
    else {
        return;
    };
    tch::set_num_threads(2);
    let work = tempfile::tempdir().unwrap();
    let config = tiny_config(&camvid, work.path());
    let seed_version = LoadedManifest::load_unverified(&config.seed_model)
        .unwrap()
        .manifest
        .version;

    let mut epochs = Vec::new();
    let report =
        retrain(&config, |epoch, loss| epochs.push((epoch, loss))).expect("retraining runs");
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert_eq!(epochs.len(), 1);
    assert!(epochs[0].1.is_finite());
    assert_eq!(report.parent_version, seed_version);
    assert_eq!(report.frames.buffer_train + report.frames.buffer_holdout, 4);
    assert!(report.frames.buffer_holdout >= 1);
    assert_eq!(
        report.frames.rehearsal,
        2.min((report.frames.buffer_train as f64 * 0.5).round() as usize)
    );
    assert_eq!(
        (report.frames.old_task, report.frames.new_task_labelled),
        (2, 1)
    );
    assert!(report.decision.publish, "{:?}", report.decision.refusals);
    assert!(report.decision.parent.new_task_labelled_miou.is_some());
    // The parent is the registry's first version: there is no earlier version to bound forgetting against.
    assert_eq!(report.decision.first_version_old_task_miou, None);

    // The decision and its figures sit next to the run.
    let recorded: RetrainReport =
        serde_json::from_str(&std::fs::read_to_string(report.run_dir.join(DECISION_FILE)).unwrap())
            .unwrap();
    assert_eq!(recorded.decision.publish, report.decision.publish);
    assert!(
        (recorded.decision.candidate.old_task_miou - report.decision.candidate.old_task_miou).abs()
            < 1e-12
    );

    // Published as a new version, live, verifiable, with its lineage and training data.
    let registry = Registry::open(&config.registry).unwrap();
    let live = LoadedManifest::load_verified(&registry.current_link())
        .expect("published manifest verifies");
    assert_eq!(live.manifest.version, report.candidate_version);
    assert!(report.candidate_version.starts_with(&seed_version));
    assert_eq!(
        live.manifest.provenance.parent_version.as_deref(),
        Some(seed_version.as_str())
    );
    let training_data = live.manifest.provenance.training_data.clone().unwrap();
    assert!(
        training_data.contains(&report.snapshot_id),
        "{training_data}"
    );
    assert!(live.manifest.metrics.contains_key("old-task/miou"));
    assert_eq!(
        std::fs::canonicalize(registry.current_link()).unwrap(),
        std::fs::canonicalize(report.published.unwrap()).unwrap()
    );
    // What the edge does on a poll: load the ONNX graph through the link.
    let edge = EdgeModel::load(&registry.current_link(), SessionConfig::default())
        .expect("edge loads the new version");
    assert_eq!(edge.manifest().version, report.candidate_version);

    // Robots that follow an object-store registry see the same live version, also after a rollback.
    let bucket = format!("file://{}", work.path().join("bucket").display());
    let objects = object_registry::ObjectRegistry::open(&bucket).unwrap();
    let mirrored = mirror_live_version(&config.registry, &bucket).unwrap();
    assert_eq!(mirrored.as_deref(), Some(report.candidate_version.as_str()));
    assert_eq!(objects.current_version().unwrap(), mirrored);

    let (from, to) = registry.rollback().expect("rollback");
    assert_eq!(
        (from.as_str(), to.as_str()),
        (report.candidate_version.as_str(), seed_version.as_str())
    );
    assert_eq!(registry.current().unwrap().unwrap().version, seed_version);
    mirror_live_version(&config.registry, &bucket).unwrap();
    assert_eq!(
        objects.current_version().unwrap(),
        Some(seed_version.clone())
    );
    let actions: Vec<String> = registry
        .history()
        .unwrap()
        .into_iter()
        .map(|c| c.action)
        .collect();
    assert_eq!(actions, ["adopt", "publish", "rollback"]);

    // The same parent and snapshot again (a re-run after a crash, or a watcher firing twice): the recorded
    // decision comes back without a second training or publication.
    let again = retrain(&config, |_, _| {
        panic!("a decided snapshot was trained again")
    })
    .unwrap();
    assert_eq!(again.candidate_version, report.candidate_version);
    assert_eq!(registry.history().unwrap().len(), 3);
}

#[test]
fn a_killed_run_resumes_from_its_checkpoint_and_a_refused_model_is_not_published() {
    let Some(camvid) = camvid_or_skip(
        "a_killed_run_resumes_from_its_checkpoint_and_a_refused_model_is_not_published",
    ) else {
        return;
    };
    tch::set_num_threads(2);
    let work = tempfile::tempdir().unwrap();
    let base = tiny_config(&camvid, work.path());
    let config = RetrainConfig {
        train: TrainConfig {
            epochs: 2,
            ..base.train.clone()
        },
        // No model gains 100 points: the gate must refuse.
        gate: GatePolicy {
            max_old_task_drop: 1.0,
            min_new_task_gain: 100.0,
            ..GatePolicy::default()
        },
        // A soup of two: each member checkpoints on its own.
        soup_members: 2,
        ..base
    };
    // The process dies after the first member's first epoch checkpoint is written.
    let crashed = std::panic::catch_unwind(AssertUnwindSafe(|| {
        retrain(&config, |epoch, _| {
            assert_ne!(epoch, 1, "simulated crash after epoch 1");
        })
    }));
    assert!(crashed.is_err());

    let mut resumed = Vec::new();
    let report = retrain(&config, |epoch, _| resumed.push(epoch)).expect("the run resumes");
    assert_eq!(
        resumed,
        [2, 1, 2],
        "only the missing epochs run again: the first member's second, then the second member"
    );
    assert_eq!((report.epochs, report.losses.len()), (2, 2));

    // Weights, optimizer moments and the sampler's position all come back: the resumed soup scores exactly what an
    // uninterrupted run of the same configuration does.
    let fresh = tempfile::tempdir().unwrap();
    let uninterrupted = retrain(
        &RetrainConfig {
            train: config.train.clone(),
            gate: config.gate,
            soup_members: 2,
            ..tiny_config(&camvid, fresh.path())
        },
        |_, _| {},
    )
    .expect("the uninterrupted run");
    assert_eq!(uninterrupted.losses, report.losses);
    assert_eq!(uninterrupted.decision.candidate, report.decision.candidate);

    assert!(!report.decision.publish);
    assert!(report.published.is_none());
    assert!(
        report
            .decision
            .refusals
            .iter()
            .any(|r| matches!(r, Refusal::NewTaskNotImproved { .. })),
        "{:?}",
        report.decision.refusals
    );
    let registry = Registry::open(&config.registry).unwrap();
    assert_eq!(
        registry.current().unwrap().unwrap().version,
        report.parent_version
    );
    assert!(!registry.version_dir(&report.candidate_version).exists());
    assert_eq!(
        registry.history().unwrap().len(),
        1,
        "only the adoption of the seed"
    );
    assert!(report.run_dir.join(DECISION_FILE).is_file());
}

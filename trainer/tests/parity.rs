//! The ONNX graph the edge runs and the TorchScript module the trainer trains must compute the same function,
//! before and after a write-back of trained weights.

use std::collections::HashMap;
use std::path::Path;

use models::dataset::read_index;
use models::image_ops::to_input_tensor;
use models::paths::{camvid_or_skip, edge_model_dir};
use models::{EdgeModel, SessionConfig};
use tch::Tensor;
use trainer::data::{Augmentation, Frame};
use trainer::export::{PublishInfo, publish};
use trainer::{TrainConfig, Trainer};

const TOLERANCE: f32 = 1e-3;

/// Largest |tch - ort| logit difference over the frames, relative to the largest logit magnitude (at least 1).
fn max_difference(dir: &Path, frames: &[image::RgbImage]) -> f32 {
    let trainer = Trainer::load(dir).expect("trainable module loads");
    let onnx = EdgeModel::load(dir, SessionConfig::default()).expect("onnx model loads");
    let mut worst = 0f32;
    for image in frames {
        let (input, _) = to_input_tensor(image, &onnx.manifest().input);
        let from_onnx = onnx.logits(&input).expect("onnx inference");
        let shape: Vec<i64> = input.shape().iter().map(|d| *d as i64).collect();
        let tensor =
            Tensor::from_slice(input.as_slice().expect("contiguous")).view(shape.as_slice());
        let from_tch =
            Vec::<f32>::try_from(trainer.logits(&tensor).view([-1])).expect("float logits");
        assert_eq!(from_tch.len(), from_onnx.len());
        let scale = from_onnx.iter().fold(1f32, |m, v| m.max(v.abs()));
        let diff = from_tch
            .iter()
            .zip(&from_onnx)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        worst = worst.max(diff / scale);
    }
    worst
}

fn val_frames(camvid: &Path, n: usize) -> Vec<models::dataset::Sample> {
    read_index(&camvid.join("index/day-val.txt"), None).expect("day-val index")[..n].to_vec()
}

/// One epoch of two-frame batches on small crops: every trainable weight moves.
fn small_step_config(work: &Path, freeze_prefixes: Vec<String>) -> TrainConfig {
    TrainConfig {
        epochs: 1,
        batch_size: 2,
        learning_rate: 1e-2,
        weight_decay: 1e-2,
        warmup_steps: 0,
        augmentation: Augmentation {
            crop_height: 96,
            crop_width: 128,
            min_scale: 0.5,
            max_scale: 0.5,
            flip: true,
            jitter: 0.1,
        },
        class_weighting: true,
        lovasz_weight: 0.0,
        seed: 7,
        freeze_prefixes,
        validate_every: 1,
        checkpoint_dir: work.join("checkpoints"),
    }
}

/// The shipped model after training with `config` on `frames`, and its parameters before.
fn train_shipped_model(
    frames: &[Frame],
    config: &TrainConfig,
) -> (Trainer, HashMap<String, Vec<f32>>) {
    let mut trainer = Trainer::load(&edge_model_dir()).expect("trainer loads");
    let before = trainer.flat_parameters();
    trainer
        .fit(frames, &[], config, |_, _, _| {})
        .expect("training runs");
    (trainer, before)
}

#[test]
fn onnx_and_torchscript_agree_on_real_frames() {
    let Some(camvid) = camvid_or_skip("onnx_and_torchscript_agree_on_real_frames") else {
        return;
    };
    let images: Vec<_> = val_frames(&camvid, 2)
        .iter()
        .map(|s| s.load_image().expect("frame"))
        .collect();
    let diff = max_difference(&edge_model_dir(), &images);
    println!("max relative logit difference tch vs ort: {diff:e}");
    assert!(diff < TOLERANCE, "tch and ONNX Runtime disagree by {diff}");
}

#[test]
fn weights_written_back_after_training_match_torchscript() {
    let Some(camvid) = camvid_or_skip("weights_written_back_after_training_match_torchscript")
    else {
        return;
    };
    tch::set_num_threads(2);
    let samples = val_frames(&camvid, 4);
    let frames: Vec<Frame> = samples
        .iter()
        .map(|s| Frame::from_sample(s).expect("frame"))
        .collect();
    let work = std::env::temp_dir().join(format!("writeback-{}", std::process::id()));
    let (trainer, before) = train_shipped_model(&frames, &small_step_config(&work, Vec::new()));
    let after = trainer.flat_parameters();
    let changed = before
        .iter()
        .filter(|(name, values)| after[*name] != **values)
        .count();
    assert!(
        changed > 100,
        "only {changed} parameters changed after a training step"
    );

    let out = work.join("published");
    let info = PublishInfo {
        version: "test-writeback".into(),
        produced_by: "parity test".into(),
        ..Default::default()
    };
    publish(&trainer, &out, &info).expect("publish");
    let published =
        models::manifest::LoadedManifest::load_verified(&out).expect("published manifest verifies");
    assert_eq!(published.manifest.version, "test-writeback");
    assert_eq!(
        published.manifest.provenance.parent_version.as_deref(),
        Some(trainer.manifest.version.as_str())
    );

    let images: Vec<_> = samples[..1]
        .iter()
        .map(|s| s.load_image().expect("frame"))
        .collect();
    let diff = max_difference(&out, &images);
    println!("after write-back, max relative logit difference tch vs ort: {diff:e}");
    assert!(
        diff < TOLERANCE,
        "written-back ONNX disagrees with the trained module by {diff}"
    );
    std::fs::remove_dir_all(&work).ok();
}

/// The shipped model's TorchScript file was saved with its stem and first blocks frozen; `freeze_prefixes` alone
/// must decide what trains, so those layers train when not named and stay put when named.
#[test]
fn freeze_prefixes_alone_decide_which_layers_train() {
    let Some(camvid) = camvid_or_skip("freeze_prefixes_alone_decide_which_layers_train") else {
        return;
    };
    tch::set_num_threads(2);
    let frames: Vec<Frame> = val_frames(&camvid, 2)
        .iter()
        .map(|s| Frame::from_sample(s).expect("frame"))
        .collect();
    // Learnt weights of the layers under `prefix` (flat names) that one training step changed; BatchNorm running
    // statistics are not learnt and adapt whatever is frozen.
    let changed_weights = |freeze: &[&str], prefix: &str| {
        let work = std::env::temp_dir().join(format!("freeze-{}-{prefix}", std::process::id()));
        let freeze = freeze.iter().map(|p| p.to_string()).collect();
        let (trainer, before) = train_shipped_model(&frames, &small_step_config(&work, freeze));
        std::fs::remove_dir_all(&work).ok();
        let after = trainer.flat_parameters();
        let weights: Vec<&String> = before
            .keys()
            .filter(|n| n.starts_with(prefix) && !n.contains("running_"))
            .collect();
        assert!(!weights.is_empty(), "no weight is named {prefix}*");
        weights.iter().filter(|n| after[**n] != before[**n]).count()
    };
    assert!(
        changed_weights(&[], "_conv_stem_") > 0,
        "the stem did not train"
    );
    assert!(
        changed_weights(&[], "_blocks_0_") > 0,
        "block 0 did not train"
    );
    let freeze = ["_conv_stem.", "_bn0.", "_blocks.0."];
    assert_eq!(
        changed_weights(&freeze, "_conv_stem_"),
        0,
        "the frozen stem trained"
    );
    assert_eq!(
        changed_weights(&freeze, "_blocks_0_"),
        0,
        "frozen block 0 trained"
    );
    assert!(
        changed_weights(&freeze, "_blocks_1_") > 0,
        "block 1 did not train"
    );
}

#[test]
fn a_weight_soup_is_the_mean_of_its_members() {
    let mut trainer = Trainer::load(&edge_model_dir()).expect("trainer loads");
    let parent = trainer.flat_parameters();
    let shifted = |by: f32| -> HashMap<String, Vec<f32>> {
        parent
            .iter()
            .map(|(name, values)| (name.clone(), values.iter().map(|v| v + by).collect()))
            .collect()
    };
    trainer
        .average_with(&[shifted(1.0), shifted(2.0)])
        .expect("same architecture");
    for (name, values) in trainer.flat_parameters() {
        let expected = &parent[&name];
        assert!(
            values
                .iter()
                .zip(expected)
                .all(|(v, p)| (v - (p + 1.0)).abs() <= 1e-5 * p.abs().max(1.0)),
            "`{name}` is not the members' mean"
        );
    }

    let mut truncated = shifted(0.0);
    truncated.values_mut().next().expect("parameters").pop();
    let before = trainer.flat_parameters();
    assert!(trainer.average_with(&[truncated]).is_err());
    assert!(
        trainer.flat_parameters() == before,
        "a refused soup changed weights"
    );
}

//! The project's own model files: manifests verify, tampering is refused, and the edge model segments real frames.

use std::path::Path;

use models::dataset::read_index;
use models::manifest::{LoadedManifest, ManifestError};
use models::metrics::ConfusionMatrix;
use models::paths::{camvid_or_skip, edge_model_dir, models_dir};
use models::{EdgeModel, Lane, SessionConfig};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[test]
fn shipped_manifests_verify() {
    for dir in [edge_model_dir(), models_dir().join("mobilesam")] {
        let loaded = LoadedManifest::load_verified(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        assert!(!loaded.manifest.provenance.checkpoint_sha256.is_empty());
        assert!(!loaded.manifest.files.is_empty());
    }
    let edge = LoadedManifest::load_unverified(&edge_model_dir())
        .unwrap()
        .manifest;
    assert_eq!(edge.classes.len(), 11);
    assert_eq!(edge.classes[3].name, "Road");
}

#[test]
fn a_model_file_that_does_not_match_its_checksum_is_refused() {
    let tmp = std::env::temp_dir().join(format!("tampered-{}", std::process::id()));
    copy_dir(&edge_model_dir(), &tmp);
    let onnx = tmp.join("edge_model.onnx");
    let mut bytes = std::fs::read(&onnx).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&onnx, bytes).unwrap();
    let err = LoadedManifest::load_verified(&tmp).unwrap_err();
    assert!(matches!(err, ManifestError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("edge_model.onnx"));
    assert!(EdgeModel::load(&tmp, SessionConfig::default()).is_err());
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn edge_model_segments_real_daylight_frames_well() {
    let Some(camvid) = camvid_or_skip("edge_model_segments_real_daylight_frames_well") else {
        return;
    };
    let model = EdgeModel::load(&edge_model_dir(), SessionConfig::default()).unwrap();
    let samples = read_index(&camvid.join("index/day-val.txt"), None).unwrap();
    let mut matrix = ConfusionMatrix::new(model.num_classes());
    for sample in samples.iter().step_by(25) {
        let (image, label) = sample.load_labelled().unwrap();
        let out = model.segment(&image).unwrap();
        assert_eq!((out.width, out.height), image.dimensions());
        assert_eq!(out.labels.len(), (out.width * out.height) as usize);
        let plane = (out.score_width * out.score_height) as usize;
        let sum: f32 = (0..out.classes).map(|c| out.probabilities[c * plane]).sum();
        assert!(
            (sum - 1.0).abs() < 1e-4,
            "probabilities of a pixel sum to {sum}"
        );
        matrix.add(label.as_raw(), &out.labels);
    }
    let scores = matrix.scores();
    // A trained model is far above chance on daylight frames; an untrained or broken one is not.
    assert!(
        scores.pixel_accuracy > 0.8,
        "pixel accuracy {}",
        scores.pixel_accuracy
    );
    assert!(scores.miou > 0.45, "mIoU {}", scores.miou);
}

#[test]
fn narrow_lanes_segment_frames_side_by_side_as_a_one_thread_session_does() {
    let Some(camvid) =
        camvid_or_skip("narrow_lanes_segment_frames_side_by_side_as_a_one_thread_session_does")
    else {
        return;
    };
    let one_thread = SessionConfig {
        intra_threads: 1,
        ..SessionConfig::default()
    };
    let reference = EdgeModel::load(&edge_model_dir(), one_thread).unwrap();
    let lanes = EdgeModel::load_with_lanes(&edge_model_dir(), SessionConfig::default(), 2).unwrap();
    let samples = read_index(&camvid.join("index/day-val.txt"), None).unwrap();
    let images: Vec<_> = samples
        .iter()
        .step_by(50)
        .take(4)
        .map(|sample| sample.load_labelled().unwrap().0)
        .collect();
    // Two threads take turns through the frames, so the two narrow sessions run side by side.
    let side_by_side: Vec<Vec<u8>> = std::thread::scope(|scope| {
        let halves: Vec<_> = [0, 1]
            .map(|parity| {
                let (lanes, images) = (&lanes, &images);
                scope.spawn(move || {
                    images
                        .iter()
                        .enumerate()
                        .filter(|(index, _)| index % 2 == parity)
                        .map(|(index, image)| {
                            (index, lanes.segment_in(image, Lane::Narrow).unwrap().labels)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .into_iter()
            .collect();
        let mut labels: Vec<(usize, Vec<u8>)> = halves
            .into_iter()
            .flat_map(|half| half.join().unwrap())
            .collect();
        labels.sort_by_key(|(index, _)| *index);
        labels.into_iter().map(|(_, labels)| labels).collect()
    });
    assert_eq!(side_by_side.len(), images.len());
    for (image, labels) in images.iter().zip(&side_by_side) {
        assert_eq!(&reference.segment(image).unwrap().labels, labels);
    }
}

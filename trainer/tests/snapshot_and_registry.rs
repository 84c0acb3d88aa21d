//! Clear errors for empty and corrupt buffer snapshots, and the registry's pointer handling, without training.

use std::path::Path;

use models::image_ops::encode_label_png;
use models::manifest::{LoadedManifest, Manifest};
use models::paths::models_dir;
use models::replay_export::{INDEX_FILE, INDEX_HEADER, cloud_label_path, image_path, index_line};
use sha2::{Digest, Sha256};
use trainer::registry::Registry;
use trainer::snapshot::{Snapshot, SnapshotError};

/// Writes one entry the way `cloud-infer export-index` does and returns its index line.
fn write_entry(export: &Path, image: &[u8], labels_png: &[u8]) -> String {
    let id = hex::encode(Sha256::digest(image));
    for (path, bytes) in [
        (image_path(&id, "png"), image),
        (cloud_label_path(&id), labels_png),
    ] {
        let path = export.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    index_line(&id, "png")
}

fn tiny_png(width: u32, height: u32, shade: u8) -> Vec<u8> {
    let image = image::RgbImage::from_pixel(width, height, image::Rgb([shade, 0, 255 - shade]));
    models::image_ops::encode_png(&image).unwrap()
}

fn write_index(export: &Path, lines: &[String]) {
    let mut text = format!("{INDEX_HEADER}\n");
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    std::fs::write(export.join(INDEX_FILE), text).unwrap();
}

#[test]
fn a_missing_or_empty_snapshot_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let error = Snapshot::open(&dir.path().join("nowhere"), 10)
        .err()
        .unwrap();
    assert!(matches!(error, SnapshotError::NoIndex { .. }));
    assert!(error.to_string().contains("export-index"), "{error}");

    write_index(dir.path(), &[]);
    let error = Snapshot::open(dir.path(), 10).err().unwrap();
    assert!(matches!(error, SnapshotError::Empty { .. }), "{error}");
    assert!(error.to_string().contains("is empty"), "{error}");
}

#[test]
fn a_corrupt_snapshot_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path();
    let labels = encode_label_png(&[1u8; 8 * 6], 8, 6).unwrap();
    let good = write_entry(export, &tiny_png(8, 6, 10), &labels);
    let tampered = write_entry(export, &tiny_png(8, 6, 20), &labels);
    let bad_class = write_entry(
        export,
        &tiny_png(8, 6, 30),
        &encode_label_png(&[40u8; 8 * 6], 8, 6).unwrap(),
    );
    let wrong_size = write_entry(
        export,
        &tiny_png(8, 6, 40),
        &encode_label_png(&[1u8; 4 * 3], 4, 3).unwrap(),
    );
    // Overwrite the second image after export: its bytes no longer match its content id.
    let tampered_image = tampered.split_whitespace().next().unwrap();
    std::fs::write(export.join(tampered_image), tiny_png(8, 6, 99)).unwrap();
    write_index(export, &[good, tampered, bad_class, wrong_size]);

    let snapshot = Snapshot::open(export, 10).unwrap();
    assert_eq!(snapshot.samples.len(), 4);
    assert_eq!(snapshot.id.len(), 16);
    let frame = snapshot.load_frame(&snapshot.samples[0], 11).unwrap();
    assert_eq!(frame.image.size(), [3, 6, 8]);
    for (sample, expected) in
        snapshot.samples[1..]
            .iter()
            .zip(["sha256", "outside the 11 classes", "label"])
    {
        let error = snapshot.load_frame(sample, 11).err().unwrap();
        assert!(matches!(error, SnapshotError::Corrupt { .. }));
        assert!(error.to_string().contains(expected), "{error}");
    }
    assert!(snapshot.load_frames(&snapshot.samples, 11).is_err());

    std::fs::write(export.join(INDEX_FILE), "images/a.png labels/a.png extra\n").unwrap();
    let error = Snapshot::open(export, 10).err().unwrap();
    assert!(matches!(error, SnapshotError::Corrupt { .. }), "{error}");
    std::fs::write(export.join(INDEX_FILE), "images/a.png\n").unwrap();
    assert!(
        Snapshot::open(export, 10)
            .err()
            .unwrap()
            .to_string()
            .contains("no cloud label")
    );
}

#[test]
fn the_snapshot_keeps_only_the_newest_frames_and_its_id_follows_the_index_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    let labels = encode_label_png(&[1u8; 4 * 4], 4, 4).unwrap();
    let lines: Vec<String> = (0..5)
        .map(|i| write_entry(dir.path(), &tiny_png(4, 4, i), &labels))
        .collect();
    write_index(dir.path(), &lines);
    let capped = Snapshot::open(dir.path(), 3).unwrap();
    assert_eq!((capped.listed, capped.samples.len()), (5, 3));
    assert!(lines[4].contains(&capped.samples[2].name()));
    assert_eq!(Snapshot::open(dir.path(), 3).unwrap().id, capped.id);
    // The same frames with another label map for a kept one are other training data.
    let kept_label = capped.samples[2].label.clone().unwrap();
    std::fs::write(&kept_label, encode_label_png(&[2u8; 4 * 4], 4, 4).unwrap()).unwrap();
    let relabelled = Snapshot::open(dir.path(), 3).unwrap();
    assert_ne!(relabelled.id, capped.id);
    write_index(dir.path(), &lines[..4]);
    assert_ne!(Snapshot::open(dir.path(), 3).unwrap().id, relabelled.id);
}

/// A model directory with tiny stand-in files: enough for the registry, which never runs the model.
fn fake_model(dir: &Path, version: &str, parent: Option<&str>) {
    let base = LoadedManifest::load_unverified(&models_dir().join("edge/current")).unwrap();
    let mut manifest: Manifest = base.manifest;
    manifest.version = version.to_string();
    manifest.provenance.parent_version = parent.map(str::to_string);
    std::fs::create_dir_all(dir).unwrap();
    for entry in manifest.files.values() {
        std::fs::write(dir.join(&entry.path), format!("{version} {}", entry.path)).unwrap();
    }
    manifest.write_with_checksums(dir).unwrap();
}

#[test]
fn the_registry_adopts_a_seed_once_and_refuses_a_rollback_without_a_parent() {
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed");
    fake_model(&seed, "1.0.0", None);
    let registry = Registry::open(&dir.path().join("registry")).unwrap();
    assert!(registry.current().unwrap().is_none());
    assert_eq!(registry.first_version().unwrap(), None);
    assert_eq!(registry.adopt_if_empty(&seed).unwrap(), "1.0.0");
    assert!(
        std::fs::symlink_metadata(registry.current_link())
            .unwrap()
            .file_type()
            .is_symlink()
    );
    LoadedManifest::load_verified(&registry.current_link()).unwrap();
    // A second adoption with another seed changes nothing.
    let other = dir.path().join("other");
    fake_model(&other, "9.9.9", None);
    assert_eq!(registry.adopt_if_empty(&other).unwrap(), "1.0.0");
    assert_eq!(registry.history().unwrap().len(), 1);
    assert_eq!(registry.first_version().unwrap().as_deref(), Some("1.0.0"));

    let error = registry.rollback().err().unwrap();
    assert!(error.to_string().contains("no parent version"), "{error}");

    // A child whose parent is not in the registry cannot be rolled back either.
    let orphan_registry = Registry::open(&dir.path().join("orphan")).unwrap();
    let orphan = dir.path().join("orphan-seed");
    fake_model(&orphan, "2.0.0", Some("1.5.0"));
    orphan_registry.adopt_if_empty(&orphan).unwrap();
    let error = format!("{:#}", orphan_registry.rollback().err().unwrap());
    assert!(error.contains("1.5.0"), "{error}");
}

#[test]
fn a_plain_current_directory_is_moved_into_the_registry_and_linked() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(dir.path()).unwrap();
    fake_model(&registry.current_link(), "1.0.0", None);
    assert_eq!(
        registry.adopt_if_empty(Path::new("unused")).unwrap(),
        "1.0.0"
    );
    assert!(
        std::fs::symlink_metadata(registry.current_link())
            .unwrap()
            .file_type()
            .is_symlink()
    );
    LoadedManifest::load_verified(&registry.version_dir("1.0.0")).unwrap();
    LoadedManifest::load_verified(&registry.current_link()).unwrap();
}

//! Publishing trained weights: write them into the ONNX graph by name, save the TorchScript module, and write a
//! manifest with fresh checksums and the parent version.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context, Result, bail};
use models::manifest::{LoadedManifest, MANIFEST_FILE};
use models::onnx_weights::{initializers, replace_float_initializers};

use crate::train::Trainer;

/// What a published model records about how it was made.
#[derive(Debug, Clone, Default)]
pub struct PublishInfo {
    pub version: String,
    pub produced_by: String,
    pub training_data: Option<String>,
    pub metrics: BTreeMap<String, f64>,
}

/// Maps the trainer's parameters onto the ONNX graph's initializers. Every initializer must receive a value and
/// every parameter must land somewhere: a partial write-back would silently ship stale weights.
pub fn onnx_weights(trainer: &Trainer, onnx: &[u8]) -> Result<HashMap<String, Vec<f32>>> {
    let mut by_flat_name: HashMap<String, String> = HashMap::new();
    for init in initializers(onnx)? {
        let flat = init.name.replace('.', "_");
        if let Some(previous) = by_flat_name.insert(flat.clone(), init.name.clone()) {
            bail!(
                "initializers `{previous}` and `{}` both map to `{flat}`",
                init.name
            );
        }
    }
    let mut weights = HashMap::new();
    for (flat, values) in trainer.flat_parameters() {
        let Some(name) = by_flat_name.remove(&flat) else {
            bail!("parameter `{flat}` has no ONNX initializer");
        };
        weights.insert(name, values);
    }
    if !by_flat_name.is_empty() {
        let mut missing: Vec<_> = by_flat_name.into_values().collect();
        missing.sort();
        bail!("ONNX initializers without a trained value: {missing:?}");
    }
    Ok(weights)
}

/// Writes a complete model directory (`edge_model.onnx`, `edge_model.pt`, `manifest.json`) for the trainer's
/// current weights into `out`. The write goes to a temporary sibling first and is renamed into place, so a
/// registry watcher never sees a half-written model.
pub fn publish(trainer: &Trainer, out: &Path, info: &PublishInfo) -> Result<()> {
    let source = LoadedManifest::load_verified(&trainer.source_dir)?;
    let template = std::fs::read(source.file("model")?)?;
    let weights = onnx_weights(trainer, &template)?;
    let onnx = replace_float_initializers(&template, &weights)?;

    let parent = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let name = out
        .file_name()
        .context("output path has no final component")?
        .to_string_lossy();
    let staging = parent.join(format!(".{name}.staging-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;

    let mut manifest = source.manifest.clone();
    let model_entry = manifest
        .files
        .get("model")
        .context("manifest lists no model file")?
        .path
        .clone();
    let trainable_entry = manifest
        .files
        .get("trainable")
        .context("manifest lists no trainable file")?
        .path
        .clone();
    std::fs::write(staging.join(&model_entry), onnx)?;
    trainer.save_trainable(&staging.join(&trainable_entry))?;
    manifest.provenance.parent_version = Some(manifest.version.clone());
    manifest.version = info.version.clone();
    manifest.provenance.produced_by = info.produced_by.clone();
    manifest.provenance.training_data = info.training_data.clone();
    manifest.metrics = info.metrics.clone();
    manifest.write_with_checksums(&staging)?;
    for file in [&model_entry, &trainable_entry, &MANIFEST_FILE.to_string()] {
        std::fs::File::open(staging.join(file))?.sync_all()?;
    }
    if out.exists() {
        std::fs::remove_dir_all(out)?;
    }
    std::fs::rename(&staging, out)?;
    Ok(())
}

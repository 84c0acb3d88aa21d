//! Model manifests: what a model is, where it came from, and the checksum of every file it is made of.
//!
//! A model lives in a directory with a `manifest.json`. Loading verifies every file's sha256 and refuses a model
//! whose files do not match, so a half-copied or tampered model never reaches a session.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a valid manifest: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("checksum mismatch for {path}: manifest says {expected}, file has {actual}")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("manifest of {model} has no file with role `{role}`")]
    MissingRole { model: String, role: String },
    #[error("manifest of {model} is inconsistent: {reason}")]
    Invalid { model: String, reason: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    /// `edge-segmenter` or `sam`.
    pub kind: String,
    /// Files by role (`model`, `trainable`, `encoder`, `decoder`).
    pub files: BTreeMap<String, FileEntry>,
    pub provenance: Provenance,
    #[serde(default)]
    pub classes: Vec<ClassInfo>,
    pub input: InputSpec,
    #[serde(default)]
    pub outputs: Vec<TensorSpec>,
    /// Evaluation figures recorded when the model was produced (e.g. `day-val/miou`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    /// A semantic head's exponents in the cloud's product of experts with the edge's scores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence_exponents: Option<EvidenceExponents>,
}

/// How much the edge's and the semantic head's class scores count in their product (`p_edge^edge * p_head^head`),
/// fitted by maximum likelihood on labelled old-task frames (`trainer fit-evidence-exponents`). A head without them
/// counts as much as the edge.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvidenceExponents {
    pub edge: f32,
    pub head: f32,
}

impl EvidenceExponents {
    pub fn as_expert_exponents(self) -> sam_core::ExpertExponents {
        sam_core::ExpertExponents {
            first: self.edge,
            second: self.head,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub source_package: String,
    pub source_version: String,
    pub checkpoint: String,
    pub checkpoint_sha256: String,
    pub produced_by: String,
    pub parent_version: Option<String>,
    /// Identifies the data a retrained model learnt from (e.g. a replay-buffer snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_data: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassInfo {
    pub id: u8,
    pub name: String,
    pub color: [u8; 3],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResizeMode {
    /// Resize to exactly `width` x `height`, ignoring aspect ratio.
    Stretch,
    /// Scale the longest side to the input size and zero-pad bottom/right (SAM's convention).
    LongestSidePad,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    pub width: u32,
    pub height: u32,
    pub resize: ResizeMode,
    /// Per-channel RGB mean and standard deviation on the 0..255 scale.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Exposure normalisation before the mean/std step; absent = off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposure: Option<Exposure>,
}

/// Frames darker than the model's training frames are brightened (one gain for the whole frame) to their mean
/// brightness before normalising, so a dusk frame looks like the daylight the model learned from; brighter frames
/// are left alone. Label-free, and learned from the training set only.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Exposure {
    /// Mean RGB value (0..255) of the training frames.
    pub target_mean: f32,
}

impl InputSpec {
    /// The gain for a frame whose mean RGB value (0..255) is `frame_mean`: 1 without exposure normalisation or
    /// for frames at least as bright as the training frames.
    pub fn exposure_gain(&self, frame_mean: f32) -> f32 {
        match self.exposure {
            Some(exposure) if frame_mean > 0.0 && frame_mean < exposure.target_mean => {
                exposure.target_mean / frame_mean
            }
            _ => 1.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub file: String,
    pub name: String,
    /// `-1` marks a dynamic dimension.
    pub shape: Vec<i64>,
    #[serde(default)]
    pub description: String,
}

/// A manifest together with the directory its relative paths resolve against.
#[derive(Debug, Clone)]
pub struct LoadedManifest {
    pub manifest: Manifest,
    pub dir: PathBuf,
}

impl LoadedManifest {
    /// Reads `dir/manifest.json` and verifies the checksum of every file it lists.
    pub fn load_verified(dir: &Path) -> Result<Self, ManifestError> {
        let loaded = Self::load_unverified(dir)?;
        for entry in loaded.manifest.files.values() {
            let path = loaded.dir.join(&entry.path);
            let actual = sha256_file(&path)?;
            if !actual.eq_ignore_ascii_case(&entry.sha256) {
                return Err(ManifestError::Checksum {
                    path,
                    expected: entry.sha256.clone(),
                    actual,
                });
            }
        }
        Ok(loaded)
    }

    /// Reads the manifest without hashing files: for listing a registry, never for loading a model.
    pub fn load_unverified(dir: &Path) -> Result<Self, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Io {
            path: path.clone(),
            source,
        })?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|source| ManifestError::Parse { path, source })?;
        manifest.validate()?;
        Ok(Self {
            manifest,
            dir: dir.to_path_buf(),
        })
    }

    pub fn file(&self, role: &str) -> Result<PathBuf, ManifestError> {
        self.manifest
            .files
            .get(role)
            .map(|entry| self.dir.join(&entry.path))
            .ok_or_else(|| ManifestError::MissingRole {
                model: self.manifest.name.clone(),
                role: role.to_string(),
            })
    }
}

impl Manifest {
    fn validate(&self) -> Result<(), ManifestError> {
        let invalid = |reason: String| ManifestError::Invalid {
            model: self.name.clone(),
            reason,
        };
        for (index, class) in self.classes.iter().enumerate() {
            if usize::from(class.id) != index {
                return Err(invalid(format!(
                    "class `{}` has id {} at position {index}",
                    class.name, class.id
                )));
            }
        }
        if self.input.std.iter().any(|s| *s <= 0.0) {
            return Err(invalid("input std must be positive".into()));
        }
        for output in &self.outputs {
            if !self.files.contains_key(&output.file) {
                return Err(invalid(format!(
                    "output `{}` refers to unknown file role `{}`",
                    output.name, output.file
                )));
            }
        }
        Ok(())
    }

    pub fn class_names(&self) -> Vec<String> {
        self.classes.iter().map(|c| c.name.clone()).collect()
    }

    pub fn palette(&self) -> Vec<[u8; 3]> {
        self.classes.iter().map(|c| c.color).collect()
    }

    /// Writes the manifest to `dir/manifest.json`, recomputing size and checksum of every listed file.
    pub fn write_with_checksums(&mut self, dir: &Path) -> Result<(), ManifestError> {
        for entry in self.files.values_mut() {
            let path = dir.join(&entry.path);
            entry.sha256 = sha256_file(&path)?;
            entry.bytes = std::fs::metadata(&path)
                .map_err(|source| ManifestError::Io {
                    path: path.clone(),
                    source,
                })?
                .len();
        }
        let path = dir.join(MANIFEST_FILE);
        let mut text = serde_json::to_string_pretty(self).expect("manifest serialises");
        text.push('\n');
        std::fs::write(&path, text).map_err(|source| ManifestError::Io { path, source })
    }
}

pub fn sha256_file(path: &Path) -> Result<String, ManifestError> {
    let io_err = |source| ManifestError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

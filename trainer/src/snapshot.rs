//! A snapshot of the replay buffer, read from a `cloud-infer export-index` directory.
//!
//! The snapshot id is the sha256 of the index bytes and of the kept entries' label maps: entries are named by the
//! sha256 of their image, so the same id means the same training data, also for exports of the same frames with
//! other labels (e.g. from another cloud model). Only the newest `max_frames`
//! entries are kept (bounded memory however large the buffer grows), and every frame is checked when loaded: the
//! image against its content id, the label map against the image size and the class set.

use std::path::{Path, PathBuf};

use models::dataset::{DatasetError, Sample, read_index};
use models::replay_export::{INDEX_FILE, is_entry_id};
use sha2::{Digest, Sha256};

use crate::IGNORE_LABEL;
use crate::data::Frame;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(
        "replay-buffer snapshot {dir}: no {INDEX_FILE} (is it a `cloud-infer export-index` directory?): {source}"
    )]
    NoIndex {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("replay-buffer snapshot {dir} is empty: its {INDEX_FILE} lists no frames")]
    Empty { dir: PathBuf },
    #[error(
        "replay-buffer snapshot {dir} has {frames} frame(s); retraining needs at least {needed}"
    )]
    TooFew {
        dir: PathBuf,
        frames: usize,
        needed: usize,
    },
    #[error("replay-buffer snapshot {dir} is corrupt: {reason}")]
    Corrupt { dir: PathBuf, reason: String },
}

pub struct Snapshot {
    pub dir: PathBuf,
    /// First 16 hex digits of the sha256 of the index file and the kept entries' label maps.
    pub id: String,
    /// Entries in the index, newest last, at most the cap given to [`Snapshot::open`].
    pub samples: Vec<Sample>,
    /// Entries the index lists in all, before the cap.
    pub listed: usize,
}

impl Snapshot {
    /// Reads the index of an export directory, keeping its newest `max_frames` entries. Frames are not decoded yet.
    pub fn open(dir: &Path, max_frames: usize) -> Result<Self, SnapshotError> {
        let index = dir.join(INDEX_FILE);
        let bytes = std::fs::read(&index).map_err(|source| SnapshotError::NoIndex {
            dir: dir.to_path_buf(),
            source,
        })?;
        let corrupt = |reason: String| SnapshotError::Corrupt {
            dir: dir.to_path_buf(),
            reason,
        };
        let mut samples = match read_index(&index, Some(dir)) {
            Ok(samples) => samples,
            Err(DatasetError::Empty(_)) => {
                return Err(SnapshotError::Empty {
                    dir: dir.to_path_buf(),
                });
            }
            Err(error) => return Err(corrupt(error.to_string())),
        };
        if let Some(unlabelled) = samples.iter().find(|s| s.label.is_none()) {
            return Err(corrupt(format!(
                "{} has no cloud label",
                unlabelled.image.display()
            )));
        }
        let listed = samples.len();
        samples.drain(..listed.saturating_sub(max_frames));
        let mut digest = Sha256::new();
        digest.update(&bytes);
        for sample in &samples {
            let label = sample.label.as_ref().expect("checked above");
            let label_bytes =
                std::fs::read(label).map_err(|e| corrupt(format!("{}: {e}", label.display())))?;
            digest.update(&label_bytes);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            id: hex::encode(digest.finalize())[..16].to_string(),
            samples,
            listed,
        })
    }

    /// Splits the entries into (training, held back for new-task validation). Membership depends only on the
    /// entry's name, so a frame held back once stays held back in later snapshots and is never trained on. At least
    /// one frame goes each way.
    pub fn split(
        &self,
        holdout_fraction: f64,
    ) -> Result<(Vec<Sample>, Vec<Sample>), SnapshotError> {
        if self.samples.len() < 2 {
            return Err(SnapshotError::TooFew {
                dir: self.dir.clone(),
                frames: self.samples.len(),
                needed: 2,
            });
        }
        let keys: Vec<f64> = self
            .samples
            .iter()
            .map(|s| holdout_key(&s.name()))
            .collect();
        let mut held: Vec<bool> = keys.iter().map(|k| *k < holdout_fraction).collect();
        let lowest = |wanted: bool, held: &[bool]| {
            (0..keys.len())
                .filter(|&i| held[i] == wanted)
                .min_by(|&a, &b| keys[a].total_cmp(&keys[b]))
        };
        if !held.contains(&true) {
            let i = lowest(false, &held).expect("at least two frames");
            held[i] = true;
        }
        if !held.contains(&false) {
            let i = (0..keys.len())
                .max_by(|&a, &b| keys[a].total_cmp(&keys[b]))
                .expect("frames");
            held[i] = false;
        }
        let (mut train, mut holdout) = (Vec::new(), Vec::new());
        for (sample, held) in self.samples.iter().zip(held) {
            if held { &mut holdout } else { &mut train }.push(sample.clone());
        }
        Ok((train, holdout))
    }

    /// Decodes and checks one entry: the image must match its content id, the label map its size and the classes.
    pub fn load_frame(&self, sample: &Sample, classes: usize) -> Result<Frame, SnapshotError> {
        let corrupt = |reason: String| SnapshotError::Corrupt {
            dir: self.dir.clone(),
            reason,
        };
        let name = sample.name();
        if is_entry_id(&name) {
            let bytes = std::fs::read(&sample.image)
                .map_err(|e| corrupt(format!("{}: {e}", sample.image.display())))?;
            let actual = hex::encode(Sha256::digest(&bytes));
            if actual != name {
                return Err(corrupt(format!(
                    "{} has sha256 {actual}",
                    sample.image.display()
                )));
            }
        }
        let (image, label) = sample.load_labelled().map_err(|e| corrupt(e.to_string()))?;
        if let Some(bad) = label
            .as_raw()
            .iter()
            .find(|l| usize::from(**l) >= classes && **l != IGNORE_LABEL)
        {
            return Err(corrupt(format!(
                "{} has label {bad}, outside the {classes} classes and the ignore label {IGNORE_LABEL}",
                sample
                    .label
                    .as_ref()
                    .expect("checked when opened")
                    .display()
            )));
        }
        Ok(Frame::from_pixels(name, &image, label.as_raw()))
    }

    pub fn load_frames(
        &self,
        samples: &[Sample],
        classes: usize,
    ) -> Result<Vec<Frame>, SnapshotError> {
        let bar = crate::progress::bar(samples.len() as u64, "buffer");
        let frames = samples
            .iter()
            .map(|s| {
                bar.inc(1);
                self.load_frame(s, classes)
            })
            .collect();
        bar.finish_and_clear();
        frames
    }
}

/// A uniform number in [0, 1) derived from the name alone.
fn holdout_key(name: &str) -> f64 {
    let digest = Sha256::digest(name.as_bytes());
    f64::from(u32::from_be_bytes([
        digest[0], digest[1], digest[2], digest[3],
    ])) / (f64::from(u32::MAX) + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(names: &[&str]) -> Snapshot {
        Snapshot {
            dir: PathBuf::from("export"),
            id: "test".into(),
            samples: names
                .iter()
                .map(|n| Sample {
                    image: PathBuf::from(format!("images/{n}.png")),
                    label: Some(PathBuf::from(format!("labels/{n}.png"))),
                })
                .collect(),
            listed: names.len(),
        }
    }

    #[test]
    fn split_is_stable_and_never_leaves_a_side_empty() {
        let names: Vec<String> = (0..200).map(|i| format!("frame{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let (train, holdout) = snapshot(&refs).split(0.2).unwrap();
        assert_eq!(train.len() + holdout.len(), 200);
        assert!(
            (20..60).contains(&holdout.len()),
            "{} held back",
            holdout.len()
        );
        // A frame held back in a small snapshot stays held back in a larger one.
        let (_, small_holdout) = snapshot(&refs[..50]).split(0.2).unwrap();
        assert!(small_holdout.iter().all(|s| holdout.contains(s)));

        for fraction in [0.0, 1.0] {
            let (train, holdout) = snapshot(&["a", "b"]).split(fraction).unwrap();
            assert_eq!((train.len(), holdout.len()), (1, 1));
        }
        assert!(matches!(
            snapshot(&["a"]).split(0.2),
            Err(SnapshotError::TooFew { .. })
        ));
    }
}

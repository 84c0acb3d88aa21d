//! The replay buffer: every refined frame, stored durably for retraining and benchmarks.
//!
//! Entries are keyed by the sha256 of the image bytes, so a frame sent twice is stored once. Two backends sit
//! behind [`ReplayStore`]: [`SqliteReplayStore`] (one process, files + a SQLite index on local disk) and
//! [`ObjectReplayStore`] (any `object_store` backend, e.g. S3, shared by several cloud replicas).

mod capacity;
mod durable_file;
mod export;
mod object;
mod sqlite;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wire::ModelRef;

pub use capacity::{Admission, Capacity, CapacityPolicy, EntrySummary};
pub use export::{ExportSummary, export_index};
pub use object::ObjectReplayStore;
pub use sqlite::SqliteReplayStore;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("replay buffer I/O on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("replay buffer index: {0}")]
    Index(#[from] rusqlite::Error),
    #[error("replay buffer object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("replay buffer entry {id}: {message}")]
    Corrupt { id: String, message: String },
    #[error("replay buffer has no entry {0}")]
    NotFound(String),
    #[error("replay buffer location {location:?}: {message}")]
    Location { location: String, message: String },
}

impl ReplayError {
    pub(crate) fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_string(),
            source,
        }
    }
}

/// A refined frame as handed to the buffer.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub request_id: String,
    pub robot_id: String,
    pub edge_model: ModelRef,
    pub domain: Option<String>,
    pub miner: String,
    pub miner_score: f32,
    pub received_unix_ms: u64,
    /// The frame exactly as the robot encoded it.
    pub image: Vec<u8>,
    /// File extension of the image encoding (`jpg` or `png`), so exported files open by name.
    pub image_extension: String,
    pub width: u32,
    pub height: u32,
    /// 8-bit class-index PNGs at the image's size.
    pub edge_labels_png: Vec<u8>,
    pub cloud_labels_png: Vec<u8>,
    /// Pixels per class in the cloud label map.
    pub class_pixels: Vec<u64>,
}

/// The three stored parts of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Image,
    EdgeLabels,
    CloudLabels,
}

impl Part {
    pub const ALL: [Part; 3] = [Part::Image, Part::EdgeLabels, Part::CloudLabels];

    fn file_suffix(self) -> &'static str {
        match self {
            Part::Image => "image",
            Part::EdgeLabels => "edge.png",
            Part::CloudLabels => "cloud.png",
        }
    }
}

/// What the buffer knows about a stored entry, without its bytes. Also the object-store manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryRecord {
    /// sha256 of the image bytes, hex.
    pub id: String,
    pub request_id: String,
    pub robot_id: String,
    pub edge_model: ModelRef,
    pub domain: Option<String>,
    pub miner: String,
    pub miner_score: f32,
    pub received_unix_ms: u64,
    pub image_extension: String,
    pub width: u32,
    pub height: u32,
    pub image_bytes: u64,
    pub edge_labels_sha256: String,
    pub cloud_labels_sha256: String,
    /// Bytes of all three parts together.
    pub total_bytes: u64,
    pub class_pixels: Vec<u64>,
}

impl EntryRecord {
    fn new(entry: &NewEntry) -> Self {
        Self {
            id: sha256_hex(&entry.image),
            request_id: entry.request_id.clone(),
            robot_id: entry.robot_id.clone(),
            edge_model: entry.edge_model.clone(),
            domain: entry.domain.clone(),
            miner: entry.miner.clone(),
            miner_score: entry.miner_score,
            received_unix_ms: entry.received_unix_ms,
            image_extension: entry.image_extension.clone(),
            width: entry.width,
            height: entry.height,
            image_bytes: entry.image.len() as u64,
            edge_labels_sha256: sha256_hex(&entry.edge_labels_png),
            cloud_labels_sha256: sha256_hex(&entry.cloud_labels_png),
            total_bytes: (entry.image.len()
                + entry.edge_labels_png.len()
                + entry.cloud_labels_png.len()) as u64,
            class_pixels: entry.class_pixels.clone(),
        }
    }

    fn expected_sha256(&self, part: Part) -> &str {
        match part {
            Part::Image => &self.id,
            Part::EdgeLabels => &self.edge_labels_sha256,
            Part::CloudLabels => &self.cloud_labels_sha256,
        }
    }

    /// Checks bytes read back against the checksum recorded when the entry was written.
    fn verify(&self, part: Part, bytes: &[u8]) -> Result<(), ReplayError> {
        let actual = sha256_hex(bytes);
        if actual == self.expected_sha256(part) {
            Ok(())
        } else {
            Err(ReplayError::Corrupt {
                id: self.id.clone(),
                message: format!(
                    "{part:?} has sha256 {actual}, recorded {}",
                    self.expected_sha256(part)
                ),
            })
        }
    }

    pub fn summary(&self) -> EntrySummary {
        EntrySummary {
            id: self.id.clone(),
            received_unix_ms: self.received_unix_ms,
            dominant_class: dominant_class(&self.class_pixels),
        }
    }
}

/// The class with the most pixels (ties to the lower index); `None` for an empty histogram.
pub fn dominant_class(class_pixels: &[u64]) -> Option<u32> {
    class_pixels
        .iter()
        .enumerate()
        .filter(|(_, pixels)| **pixels > 0)
        .max_by(|(ia, a), (ib, b)| a.cmp(b).then(ib.cmp(ia)))
        .map(|(class, _)| class as u32)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    pub id: String,
    /// False when the frame was already stored, or the capacity policy turned it away.
    pub stored: bool,
    pub evicted: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BufferStats {
    pub backend: String,
    pub count: u64,
    pub bytes: u64,
    pub per_domain: BTreeMap<String, u64>,
    /// Cloud-label pixels per class index, summed over the buffer.
    pub class_pixels: Vec<u64>,
    pub oldest_unix_ms: Option<u64>,
    pub newest_unix_ms: Option<u64>,
    pub max_entries: Option<u64>,
    pub policy: String,
}

impl BufferStats {
    fn from_records(records: &[EntryRecord], backend: &str, capacity: &Capacity) -> Self {
        let mut stats = BufferStats {
            backend: backend.to_string(),
            max_entries: capacity.max_entries,
            policy: capacity.policy.name().to_string(),
            ..Default::default()
        };
        for record in records {
            stats.count += 1;
            stats.bytes += record.total_bytes;
            let domain = record
                .domain
                .clone()
                .unwrap_or_else(|| "unknown".to_string());
            *stats.per_domain.entry(domain).or_default() += 1;
            if stats.class_pixels.len() < record.class_pixels.len() {
                stats.class_pixels.resize(record.class_pixels.len(), 0);
            }
            for (total, pixels) in stats.class_pixels.iter_mut().zip(&record.class_pixels) {
                *total += pixels;
            }
            stats.oldest_unix_ms = Some(
                stats
                    .oldest_unix_ms
                    .map_or(record.received_unix_ms, |t| t.min(record.received_unix_ms)),
            );
            stats.newest_unix_ms = Some(
                stats
                    .newest_unix_ms
                    .map_or(record.received_unix_ms, |t| t.max(record.received_unix_ms)),
            );
        }
        stats
    }
}

/// A durable store of refined frames. Methods block (disk or network I/O): call them off the async runtime.
pub trait ReplayStore: Send + Sync {
    /// A short description for `/info`, e.g. `sqlite:runs/replay-buffer`.
    fn describe(&self) -> String;
    /// Stores the entry durably before returning; a frame already stored is not written again.
    fn put(&self, entry: &NewEntry) -> Result<PutOutcome, ReplayError>;
    /// Every entry, oldest first.
    fn entries(&self) -> Result<Vec<EntryRecord>, ReplayError>;
    /// One part of an entry, checked against its recorded sha256.
    fn read(&self, record: &EntryRecord, part: Part) -> Result<Vec<u8>, ReplayError>;
    fn stats(&self) -> Result<BufferStats, ReplayError>;
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Opens the buffer a `--buffer` value names: `s3://bucket/prefix` or `file:///dir` for the object-store backend,
/// anything else as a local directory for the SQLite backend.
pub fn open_store(location: &str, capacity: Capacity) -> Result<Box<dyn ReplayStore>, ReplayError> {
    if location.starts_with("s3://") || location.starts_with("file://") {
        Ok(Box::new(ObjectReplayStore::open_url(location, capacity)?))
    } else {
        Ok(Box::new(SqliteReplayStore::open(
            std::path::Path::new(location),
            capacity,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dominant_class_prefers_most_pixels_then_lower_index() {
        assert_eq!(dominant_class(&[1, 5, 5, 0]), Some(1));
        assert_eq!(dominant_class(&[0, 0, 9]), Some(2));
        assert_eq!(dominant_class(&[0, 0]), None);
    }
}

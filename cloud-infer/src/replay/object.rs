//! The shared backend on the `object_store` crate (S3 and compatibles; `LocalFileSystem` for tests and single
//! hosts). Several cloud replicas may write one buffer: each entry is its three content-addressed part objects plus
//! a JSON manifest written last with create-only semantics, so a listed manifest always names complete parts and
//! two replicas storing the same frame agree on one winner.
//!
//! Caveats of sharing without a coordinator: the reservoir's stream position is counted per replica (seeded from
//! the entry count at start), and two replicas evicting at once may evict one entry too many.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_registry::BlockingRuntime;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

use super::capacity::{Admission, Capacity};
use super::{BufferStats, EntryRecord, NewEntry, Part, PutOutcome, ReplayError, ReplayStore};

/// Parts without a manifest younger than this may belong to another replica's put in progress.
const ORPHAN_GRACE: Duration = Duration::from_secs(3600);
/// Manifests fetched at once when listing.
const LIST_CONCURRENCY: usize = 16;

pub struct ObjectReplayStore {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    description: String,
    capacity: Capacity,
    offered: AtomicU64,
    /// The object_store API is async while [`ReplayStore`] blocks.
    runtime: BlockingRuntime,
}

impl ObjectReplayStore {
    /// `s3://bucket/prefix` (credentials and endpoint from the usual `AWS_*` variables) or `file:///dir`.
    pub fn open_url(url: &str, capacity: Capacity) -> Result<Self, ReplayError> {
        let (store, prefix) =
            object_registry::store_from_url(url).map_err(|e| ReplayError::Location {
                location: url.to_string(),
                message: e.to_string(),
            })?;
        Self::open(store, prefix, url, capacity)
    }

    /// Opens a buffer under `prefix` in any object store, removing parts abandoned by interrupted puts.
    pub fn open(
        store: Arc<dyn ObjectStore>,
        prefix: ObjectPath,
        description: &str,
        capacity: Capacity,
    ) -> Result<Self, ReplayError> {
        let runtime = BlockingRuntime::new("replay-object-store")
            .map_err(|e| ReplayError::io("replay object-store runtime", e))?;
        let this = Self {
            store,
            prefix,
            description: format!("object-store:{description}"),
            capacity,
            offered: AtomicU64::new(0),
            runtime,
        };
        let records = this.entries()?;
        this.offered.store(records.len() as u64, Ordering::Relaxed);
        this.runtime
            .block_on(this.remove_abandoned_parts(&records))?;
        Ok(this)
    }

    fn manifest_path(&self, id: &str) -> ObjectPath {
        self.prefix.child("entries").child(format!("{id}.json"))
    }

    fn part_path(&self, id: &str, part: Part) -> ObjectPath {
        self.prefix
            .child("blobs")
            .child(format!("{id}.{}", part.file_suffix()))
    }

    async fn remove_abandoned_parts(&self, records: &[EntryRecord]) -> Result<(), ReplayError> {
        let known: std::collections::HashSet<&str> =
            records.iter().map(|r| r.id.as_str()).collect();
        let cutoff = chrono::Utc::now() - ORPHAN_GRACE;
        let blobs: Vec<_> = self
            .store
            .list(Some(&self.prefix.child("blobs")))
            .try_collect()
            .await?;
        for blob in blobs {
            let name = blob.location.filename().unwrap_or_default();
            let id = name.split('.').next().unwrap_or_default();
            if !known.contains(id) && blob.last_modified < cutoff {
                self.store.delete(&blob.location).await?;
            }
        }
        Ok(())
    }

    async fn list_records(&self) -> Result<Vec<EntryRecord>, ReplayError> {
        let manifests: Vec<_> = self
            .store
            .list(Some(&self.prefix.child("entries")))
            .try_collect()
            .await?;
        let mut records: Vec<EntryRecord> = futures::stream::iter(manifests)
            .map(|meta| async move {
                let bytes = self.store.get(&meta.location).await?.bytes().await?;
                serde_json::from_slice(&bytes).map_err(|e| ReplayError::Corrupt {
                    id: meta.location.to_string(),
                    message: format!("unreadable manifest: {e}"),
                })
            })
            .buffer_unordered(LIST_CONCURRENCY)
            .try_collect()
            .await?;
        records.sort_by(|a, b| {
            a.received_unix_ms
                .cmp(&b.received_unix_ms)
                .then(a.id.cmp(&b.id))
        });
        Ok(records)
    }

    async fn put_entry(&self, entry: &NewEntry) -> Result<PutOutcome, ReplayError> {
        let record = EntryRecord::new(entry);
        let not_stored = PutOutcome {
            id: record.id.clone(),
            stored: false,
            evicted: Vec::new(),
        };
        match self.store.head(&self.manifest_path(&record.id)).await {
            Ok(_) => return Ok(not_stored),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(error) => return Err(error.into()),
        }
        let offered_before = self.offered.fetch_add(1, Ordering::Relaxed);
        let admission = match self.capacity.max_entries {
            Some(_) => {
                let summaries: Vec<_> = self
                    .list_records()
                    .await?
                    .iter()
                    .map(EntryRecord::summary)
                    .collect();
                self.capacity.admit(
                    &summaries,
                    &record.summary(),
                    offered_before,
                    &mut rand::rng(),
                )
            }
            None => Admission::Admit { evict: Vec::new() },
        };
        let Admission::Admit { evict } = admission else {
            return Ok(not_stored);
        };
        for (part, bytes) in [
            (Part::Image, &entry.image),
            (Part::EdgeLabels, &entry.edge_labels_png),
            (Part::CloudLabels, &entry.cloud_labels_png),
        ] {
            let payload = PutPayload::from(bytes.clone());
            self.store
                .put(&self.part_path(&record.id, part), payload)
                .await?;
        }
        let manifest = serde_json::to_vec(&record).expect("records serialise");
        let create_only = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(
                &self.manifest_path(&record.id),
                manifest.into(),
                create_only,
            )
            .await
        {
            Ok(_) => {}
            // Another replica stored the same frame first; its parts are byte-identical to ours.
            Err(object_store::Error::AlreadyExists { .. }) => return Ok(not_stored),
            Err(error) => return Err(error.into()),
        }
        for id in &evict {
            // Manifest first: once it is gone the entry is gone, and leftover parts are only garbage.
            match self.store.delete(&self.manifest_path(id)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(error) => return Err(error.into()),
            }
            for part in Part::ALL {
                if let Err(error) = self.store.delete(&self.part_path(id, part)).await {
                    tracing::warn!(%error, id, "could not delete an evicted replay-buffer part");
                }
            }
        }
        Ok(PutOutcome {
            id: record.id,
            stored: true,
            evicted: evict,
        })
    }
}

impl ReplayStore for ObjectReplayStore {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn put(&self, entry: &NewEntry) -> Result<PutOutcome, ReplayError> {
        self.runtime.block_on(self.put_entry(entry))
    }

    fn entries(&self) -> Result<Vec<EntryRecord>, ReplayError> {
        self.runtime.block_on(self.list_records())
    }

    fn read(&self, record: &EntryRecord, part: Part) -> Result<Vec<u8>, ReplayError> {
        let bytes = self.runtime.block_on(async {
            match self.store.get(&self.part_path(&record.id, part)).await {
                Ok(result) => Ok(result.bytes().await?),
                Err(object_store::Error::NotFound { .. }) => {
                    Err(ReplayError::NotFound(format!("{} ({part:?})", record.id)))
                }
                Err(error) => Err(error.into()),
            }
        })?;
        record.verify(part, &bytes)?;
        Ok(bytes.to_vec())
    }

    fn stats(&self) -> Result<BufferStats, ReplayError> {
        Ok(BufferStats::from_records(
            &self.entries()?,
            &self.description,
            &self.capacity,
        ))
    }
}

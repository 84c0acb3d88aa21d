//! The embedded backend: content-addressed files in `blobs/` plus a SQLite index (WAL, `synchronous=FULL`).
//!
//! A put writes and fsyncs every file before the row that makes them visible commits, so an acknowledged entry is
//! complete on disk and a crash at any point leaves at worst files without a row, which [`SqliteReplayStore::open`]
//! deletes.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use super::capacity::{Admission, Capacity, EntrySummary};
use super::durable_file::{sync_dir, write_durably};
use super::{BufferStats, EntryRecord, NewEntry, Part, PutOutcome, ReplayError, ReplayStore};

const INDEX_FILE: &str = "index.sqlite3";
const OFFERED_COUNTER: &str = "offered";

pub struct SqliteReplayStore {
    dir: PathBuf,
    blobs: PathBuf,
    temp: PathBuf,
    capacity: Capacity,
    index: Mutex<Connection>,
}

impl SqliteReplayStore {
    /// Opens (creating if needed) the buffer in `dir`, deleting leftovers of interrupted writes.
    pub fn open(dir: &Path, capacity: Capacity) -> Result<Self, ReplayError> {
        let blobs = dir.join("blobs");
        let temp = dir.join("tmp");
        for folder in [&blobs, &temp] {
            fs::create_dir_all(folder).map_err(|e| ReplayError::io(folder.display(), e))?;
        }
        sync_dir(dir)?;
        let index = Connection::open(dir.join(INDEX_FILE))?;
        index.query_row("PRAGMA journal_mode=WAL", [], |row| row.get::<_, String>(0))?;
        index.execute_batch(
            "PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS entries (
                 id TEXT PRIMARY KEY,
                 received_unix_ms INTEGER NOT NULL,
                 dominant_class INTEGER,
                 record TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS entries_by_time ON entries(received_unix_ms);
             CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);",
        )?;
        let store = Self {
            dir: dir.to_path_buf(),
            blobs,
            temp,
            capacity,
            index: Mutex::new(index),
        };
        store.remove_leftovers()?;
        Ok(store)
    }

    fn blob_path(&self, id: &str, part: Part) -> PathBuf {
        self.blobs.join(format!("{id}.{}", part.file_suffix()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic mid-put leaves SQLite consistent (the transaction rolls back), so a poisoned lock is usable.
        self.index
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Temp files of unfinished writes and blobs whose row never committed (or whose eviction was interrupted).
    fn remove_leftovers(&self) -> Result<(), ReplayError> {
        for temp in read_dir(&self.temp)? {
            fs::remove_file(&temp).map_err(|e| ReplayError::io(temp.display(), e))?;
        }
        let known: HashSet<String> = {
            let index = self.lock();
            let mut statement = index.prepare("SELECT id FROM entries")?;
            statement
                .query_map([], |row| row.get(0))?
                .collect::<Result<_, _>>()?
        };
        let mut removed = 0;
        for blob in read_dir(&self.blobs)? {
            let name = blob
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let id = name.split('.').next().unwrap_or_default();
            if !known.contains(id) {
                fs::remove_file(&blob).map_err(|e| ReplayError::io(blob.display(), e))?;
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::warn!(removed, dir = %self.dir.display(), "removed replay-buffer files left by interrupted writes");
            sync_dir(&self.blobs)?;
        }
        Ok(())
    }

    fn summaries(index: &Connection) -> Result<Vec<EntrySummary>, ReplayError> {
        let mut statement =
            index.prepare("SELECT id, received_unix_ms, dominant_class FROM entries")?;
        let rows = statement.query_map([], |row| {
            Ok(EntrySummary {
                id: row.get(0)?,
                received_unix_ms: row.get(1)?,
                dominant_class: row.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, ReplayError> {
    fs::read_dir(dir)
        .and_then(|entries| entries.map(|e| e.map(|e| e.path())).collect())
        .map_err(|e| ReplayError::io(dir.display(), e))
}

fn bump_offered(transaction: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    transaction.execute(
        "INSERT INTO counters (name, value) VALUES (?1, 1) ON CONFLICT(name) DO UPDATE SET value = value + 1",
        params![OFFERED_COUNTER],
    )?;
    Ok(())
}

impl ReplayStore for SqliteReplayStore {
    fn describe(&self) -> String {
        format!("sqlite:{}", self.dir.display())
    }

    fn put(&self, entry: &NewEntry) -> Result<PutOutcome, ReplayError> {
        let record = EntryRecord::new(entry);
        let mut index = self.lock();
        let known: Option<i64> = index
            .query_row(
                "SELECT 1 FROM entries WHERE id = ?1",
                params![record.id],
                |row| row.get(0),
            )
            .optional()?;
        if known.is_some() {
            return Ok(PutOutcome {
                id: record.id,
                stored: false,
                evicted: Vec::new(),
            });
        }
        let offered_before: u64 = index
            .query_row(
                "SELECT value FROM counters WHERE name = ?1",
                params![OFFERED_COUNTER],
                |row| row.get(0),
            )
            .optional()?
            .unwrap_or(0);
        let count: u64 = index.query_row("SELECT COUNT(*) FROM entries", [], |row| row.get(0))?;
        let admission = match self.capacity.max_entries {
            Some(max) if count >= max => self.capacity.admit(
                &Self::summaries(&index)?,
                &record.summary(),
                offered_before,
                &mut rand::rng(),
            ),
            _ => Admission::Admit { evict: Vec::new() },
        };
        let Admission::Admit { evict } = admission else {
            let transaction = index.transaction()?;
            bump_offered(&transaction)?;
            transaction.commit()?;
            return Ok(PutOutcome {
                id: record.id,
                stored: false,
                evicted: Vec::new(),
            });
        };

        write_durably(
            &self.temp,
            &self.blob_path(&record.id, Part::Image),
            &entry.image,
        )?;
        write_durably(
            &self.temp,
            &self.blob_path(&record.id, Part::EdgeLabels),
            &entry.edge_labels_png,
        )?;
        write_durably(
            &self.temp,
            &self.blob_path(&record.id, Part::CloudLabels),
            &entry.cloud_labels_png,
        )?;

        let transaction = index.transaction()?;
        transaction.execute(
            "INSERT INTO entries (id, received_unix_ms, dominant_class, record) VALUES (?1, ?2, ?3, ?4)",
            params![
                record.id,
                record.received_unix_ms,
                record.summary().dominant_class,
                serde_json::to_string(&record).expect("records serialise")
            ],
        )?;
        for id in &evict {
            transaction.execute("DELETE FROM entries WHERE id = ?1", params![id])?;
        }
        bump_offered(&transaction)?;
        transaction.commit()?;
        drop(index);

        // The rows are gone; files that fail to delete here are orphans the next open removes.
        for id in &evict {
            for part in Part::ALL {
                let path = self.blob_path(id, part);
                if let Err(error) = fs::remove_file(&path) {
                    tracing::warn!(%error, path = %path.display(), "could not delete an evicted replay-buffer file");
                }
            }
        }
        Ok(PutOutcome {
            id: record.id,
            stored: true,
            evicted: evict,
        })
    }

    fn entries(&self) -> Result<Vec<EntryRecord>, ReplayError> {
        let index = self.lock();
        let mut statement =
            index.prepare("SELECT id, record FROM entries ORDER BY received_unix_ms, id")?;
        let rows = statement.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?;
        rows.map(|row| {
            let (id, json) = row?;
            serde_json::from_str(&json).map_err(|e| ReplayError::Corrupt {
                id,
                message: format!("unreadable record: {e}"),
            })
        })
        .collect()
    }

    fn read(&self, record: &EntryRecord, part: Part) -> Result<Vec<u8>, ReplayError> {
        let path = self.blob_path(&record.id, part);
        let bytes = fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                ReplayError::NotFound(format!("{} ({part:?})", record.id))
            }
            _ => ReplayError::io(path.display(), e),
        })?;
        record.verify(part, &bytes)?;
        Ok(bytes)
    }

    fn stats(&self) -> Result<BufferStats, ReplayError> {
        Ok(BufferStats::from_records(
            &self.entries()?,
            &self.describe(),
            &self.capacity,
        ))
    }
}

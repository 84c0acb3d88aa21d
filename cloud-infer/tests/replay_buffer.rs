//! The replay buffer's promises on both backends: durable across restarts and SIGKILL, deduplicated, bounded,
//! and exportable as an Ianvs index.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloud_infer::replay::{
    Capacity, CapacityPolicy, NewEntry, ObjectReplayStore, Part, ReplayStore, SqliteReplayStore,
    export_index,
};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use wire::ModelRef;

fn entry(seed: u8, time: u64, dominant: u8) -> NewEntry {
    let (width, height) = (16, 12);
    let labels = vec![dominant; (width * height) as usize];
    let labels_png = models::image_ops::encode_label_png(&labels, width, height).unwrap();
    let mut class_pixels = vec![0u64; 11];
    class_pixels[usize::from(dominant)] = u64::from(width * height);
    NewEntry {
        request_id: format!("req-{seed}"),
        robot_id: "robot-1".into(),
        edge_model: ModelRef {
            name: "edge".into(),
            version: "1.2.0".into(),
        },
        domain: Some(
            if seed.is_multiple_of(2) {
                "dusk"
            } else {
                "day"
            }
            .into(),
        ),
        miner: "margin".into(),
        miner_score: 0.5,
        received_unix_ms: time,
        image: common::synthetic_png(width, height, seed),
        image_extension: "png".into(),
        width,
        height,
        edge_labels_png: labels_png.clone(),
        cloud_labels_png: labels_png,
        class_pixels,
    }
}

fn assert_intact(store: &dyn ReplayStore) {
    for record in store.entries().unwrap() {
        for part in Part::ALL {
            store
                .read(&record, part)
                .unwrap_or_else(|e| panic!("{}: {e}", record.id));
        }
    }
}

fn object_store_in(dir: &Path, capacity: Capacity) -> ObjectReplayStore {
    let local = LocalFileSystem::new_with_prefix(dir).unwrap();
    ObjectReplayStore::open(
        Arc::new(local),
        ObjectPath::from("buffer"),
        "test",
        capacity,
    )
    .unwrap()
}

#[test]
fn sqlite_buffer_survives_restart_and_stores_duplicates_once() {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let store = SqliteReplayStore::open(dir.path(), Capacity::unbounded()).unwrap();
        let first = store.put(&entry(1, 100, 3)).unwrap();
        assert!(first.stored);
        assert!(store.put(&entry(2, 200, 4)).unwrap().stored);
        let again = store.put(&entry(1, 300, 3)).unwrap();
        assert_eq!(
            (again.id.as_str(), again.stored),
            (first.id.as_str(), false)
        );
        first
    };
    let store = SqliteReplayStore::open(dir.path(), Capacity::unbounded()).unwrap();
    let records = store.entries().unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].id, first.id);
    assert_eq!(records[0].edge_model.version, "1.2.0");
    assert_eq!(
        store.read(&records[0], Part::Image).unwrap(),
        entry(1, 0, 0).image
    );
    assert_intact(&store);
    let stats = store.stats().unwrap();
    assert_eq!(stats.count, 2);
    assert_eq!(stats.per_domain["day"], 1);
    assert_eq!(stats.per_domain["dusk"], 1);
    assert_eq!(stats.class_pixels[3], 192);
    assert_eq!(
        (stats.oldest_unix_ms, stats.newest_unix_ms),
        (Some(100), Some(200))
    );
}

#[test]
fn sqlite_buffer_detects_a_damaged_file_and_cleans_orphans_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteReplayStore::open(dir.path(), Capacity::unbounded()).unwrap();
    let id = store.put(&entry(7, 1, 1)).unwrap().id;
    drop(store);
    std::fs::write(
        dir.path().join("blobs").join(format!("{id}.cloud.png")),
        b"bit rot",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("blobs/feedface.image"),
        b"orphan from a crash",
    )
    .unwrap();
    std::fs::write(dir.path().join("tmp/half-written"), b"partial").unwrap();
    let store = SqliteReplayStore::open(dir.path(), Capacity::unbounded()).unwrap();
    assert!(!dir.path().join("blobs/feedface.image").exists());
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
    let record = &store.entries().unwrap()[0];
    assert!(store.read(record, Part::Image).is_ok());
    let damaged = store.read(record, Part::CloudLabels).unwrap_err();
    assert!(damaged.to_string().contains("sha256"), "{damaged}");
}

#[test]
fn fifo_capacity_evicts_the_oldest_and_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let capacity = Capacity {
        policy: CapacityPolicy::Fifo,
        max_entries: Some(2),
    };
    let store = SqliteReplayStore::open(dir.path(), capacity).unwrap();
    let oldest = store.put(&entry(1, 1, 0)).unwrap().id;
    store.put(&entry(2, 2, 0)).unwrap();
    let third = store.put(&entry(3, 3, 0)).unwrap();
    assert_eq!(third.evicted, vec![oldest.clone()]);
    assert_eq!(store.entries().unwrap().len(), 2);
    let blobs = std::fs::read_dir(dir.path().join("blobs")).unwrap().count();
    assert_eq!(
        blobs,
        2 * 3,
        "three files per kept entry, none for the evicted one"
    );
}

#[test]
fn class_balanced_capacity_keeps_rare_classes() {
    let dir = tempfile::tempdir().unwrap();
    let capacity = Capacity {
        policy: CapacityPolicy::ClassBalanced,
        max_entries: Some(3),
    };
    let store = SqliteReplayStore::open(dir.path(), capacity).unwrap();
    let sign = store.put(&entry(1, 1, 6)).unwrap().id;
    for (seed, time) in [(2, 2), (3, 3), (4, 4), (5, 5)] {
        store.put(&entry(seed, time, 3)).unwrap();
    }
    let ids: Vec<String> = store.entries().unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 3);
    assert!(
        ids.contains(&sign),
        "the only frame dominated by class 6 stays"
    );
}

#[test]
fn object_store_backend_on_a_local_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let capacity = Capacity {
        policy: CapacityPolicy::Fifo,
        max_entries: Some(2),
    };
    let replica_a = object_store_in(dir.path(), capacity);
    let first = replica_a.put(&entry(1, 10, 2)).unwrap();
    assert!(first.stored);
    // A second replica sharing the bucket sees the entry and does not store the same frame again.
    let replica_b = object_store_in(dir.path(), capacity);
    assert!(!replica_b.put(&entry(1, 11, 2)).unwrap().stored);
    assert!(replica_b.put(&entry(2, 20, 2)).unwrap().stored);
    let third = replica_a.put(&entry(3, 30, 2)).unwrap();
    assert_eq!(third.evicted, vec![first.id.clone()]);
    let records = replica_b.entries().unwrap();
    assert_eq!(records.len(), 2);
    assert_intact(&replica_b);
    let stats = replica_a.stats().unwrap();
    assert_eq!(stats.count, 2);
    assert!(stats.backend.starts_with("object-store:"));
    assert!(
        !dir.path()
            .join(format!("buffer/blobs/{}.image", first.id))
            .exists()
    );
    drop(replica_a);
    let reopened = object_store_in(dir.path(), capacity);
    assert_eq!(reopened.entries().unwrap(), records);
}

#[test]
fn export_writes_an_ianvs_index_that_the_dataset_reader_loads() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteReplayStore::open(&dir.path().join("buffer"), Capacity::unbounded()).unwrap();
    store.put(&entry(1, 1, 5)).unwrap();
    store.put(&entry(2, 2, 8)).unwrap();
    let out = dir.path().join("export");
    let summary = export_index(&store, &out).unwrap();
    assert_eq!(summary.entries, 2);
    let samples = models::dataset::read_index(&summary.index, None).unwrap();
    assert_eq!(samples.len(), 2);
    let (image, label) = samples[1].load_labelled().unwrap();
    assert_eq!(image.dimensions(), (16, 12));
    assert!(label.pixels().all(|p| p[0] == 8));
}

#[test]
fn export_index_command_writes_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let buffer = dir.path().join("buffer");
    SqliteReplayStore::open(&buffer, Capacity::unbounded())
        .unwrap()
        .put(&entry(4, 1, 2))
        .unwrap();
    let out = dir.path().join("export");
    let status = Command::new(env!("CARGO_BIN_EXE_cloud-infer"))
        .args(["export-index", "--buffer"])
        .arg(&buffer)
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        models::dataset::read_index(&out.join("index.txt"), None)
            .unwrap()
            .len(),
        1
    );
}

/// Runs the synthetic writer against `buffer`, SIGKILLs it after `kill_after` acknowledgements, and returns the
/// acknowledged ids.
fn kill_writer_mid_stream(buffer: &str, kill_after: usize) -> Vec<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloud-infer"))
        .args(["write-synthetic", "--count", "100000", "--buffer", buffer])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acknowledged = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        acknowledged.push(
            line.strip_prefix("acked ")
                .expect("writer prints `acked <id>`")
                .to_string(),
        );
        if acknowledged.len() >= kill_after || Instant::now() > deadline {
            break;
        }
    }
    // Child::kill is SIGKILL on Unix: no destructors, no flushing, mid-write.
    child.kill().unwrap();
    child.wait().unwrap();
    acknowledged
}

fn assert_acknowledged_entries_survived(store: &dyn ReplayStore, acknowledged: &[String]) {
    let records = store.entries().unwrap();
    let ids: std::collections::HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
    for id in acknowledged {
        assert!(ids.contains(id.as_str()), "acknowledged entry {id} lost");
    }
    // Every listed entry (acknowledged or caught between commit and print) is complete and matches its checksums.
    assert_intact(store);
    assert!(records.len() >= acknowledged.len());
}

#[test]
fn sigkill_mid_write_loses_no_acknowledged_entry_and_leaves_no_half_entry() {
    let dir = tempfile::tempdir().unwrap();
    let buffer = dir.path().join("buffer");
    let acknowledged = kill_writer_mid_stream(buffer.to_str().unwrap(), 25);
    assert!(acknowledged.len() >= 25);
    let store = SqliteReplayStore::open(&buffer, Capacity::unbounded()).unwrap();
    assert_acknowledged_entries_survived(&store, &acknowledged);
    // Open removed whatever the kill interrupted: exactly three files per entry remain, and no temp files.
    let records = store.entries().unwrap();
    assert_eq!(
        std::fs::read_dir(buffer.join("blobs")).unwrap().count(),
        records.len() * 3
    );
    assert_eq!(std::fs::read_dir(buffer.join("tmp")).unwrap().count(), 0);
}

#[test]
fn sigkill_mid_write_on_the_object_store_backend() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("bucket").display());
    let acknowledged = kill_writer_mid_stream(&url, 25);
    let local = LocalFileSystem::new_with_prefix(dir.path().join("bucket")).unwrap();
    let store = ObjectReplayStore::open(
        Arc::new(local),
        ObjectPath::default(),
        "test",
        Capacity::unbounded(),
    )
    .unwrap();
    assert_acknowledged_entries_survived(&store, &acknowledged);
}

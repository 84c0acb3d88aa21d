//! Hot model updates: a new version is swapped in under load without a failed request, a corrupt one is refused.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{TestServer, frames_or_skip, model_dir_or_skip};
use models::manifest::{LoadedManifest, MANIFEST_FILE};

fn copy_model(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Publishes a manifest: recomputing checksums like the trainer does, or as given (renamed into place whole, from
/// outside the watched directory).
fn publish(dir: &Path, mut manifest: models::Manifest, recompute_checksums: bool) {
    if recompute_checksums {
        manifest.write_with_checksums(dir).unwrap();
    } else {
        let staged = dir.with_extension("manifest.tmp");
        std::fs::write(&staged, serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
        std::fs::rename(&staged, dir.join(MANIFEST_FILE)).unwrap();
    }
}

async fn wait_for(
    server: &TestServer,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let info = server.info().await;
        if check(&info) {
            return info;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}: {info}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_versions_swap_in_under_load_and_corrupt_ones_are_refused() {
    let test = "new_versions_swap_in_under_load_and_corrupt_ones_are_refused";
    let (Some(model_dir), Some(frames)) = (model_dir_or_skip(test), frames_or_skip(test, 1)) else {
        return;
    };
    let registry = tempfile::tempdir().unwrap();
    let current = registry.path().join("current");
    copy_model(&model_dir, &current);
    let original = LoadedManifest::load_unverified(&current).unwrap().manifest;

    let server = Arc::new(
        TestServer::start(&current, &["--model-poll-secs", "1", "--queue-size", "8"]).await,
    );
    assert_eq!(
        server.info().await["model"]["version"],
        original.version.as_str()
    );

    // Two clients send frames back to back for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (server, stop, served, frame) = (
                Arc::clone(&server),
                Arc::clone(&stop),
                Arc::clone(&served),
                frames[0].clone(),
            );
            tokio::spawn(async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let response = server.post_png("/v1/segment", frame.clone()).await;
                    if response.status() == 200 {
                        served.fetch_add(1, Ordering::SeqCst);
                    } else {
                        failures.push(format!(
                            "{}: {}",
                            response.status(),
                            response.text().await.unwrap_or_default()
                        ));
                    }
                }
                failures
            })
        })
        .collect();

    let mut bumped = original.clone();
    bumped.version = format!("{}-hotswap", original.version);
    bumped.provenance.parent_version = Some(original.version.clone());
    publish(&current, bumped.clone(), true);
    wait_for(&server, "the new version", |info| {
        info["model"]["version"] == bumped.version.as_str()
    })
    .await;
    let served_at_swap = served.load(Ordering::SeqCst);

    // A manifest whose checksum does not match the model file must be refused, the old model kept.
    let mut corrupt = bumped.clone();
    corrupt.version = format!("{}-corrupt", original.version);
    if let Some(entry) = corrupt.files.get_mut("model") {
        entry.sha256 = "0".repeat(64);
    }
    publish(&current, corrupt, false);
    let info = wait_for(&server, "the refusal", |info| {
        !info["refused_update"].is_null()
    })
    .await;
    assert!(
        info["refused_update"]["error"]
            .as_str()
            .unwrap()
            .contains("checksum"),
        "{info}"
    );
    assert_eq!(info["model"]["version"], bumped.version.as_str());

    // Requests keep flowing after the swap and the refusal.
    let start = Instant::now();
    while served.load(Ordering::SeqCst) < served_at_swap + 2 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no requests served after the swap"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        let failures = client.await.unwrap();
        assert!(
            failures.is_empty(),
            "failed requests during the update: {failures:?}"
        );
    }

    // Rollback returns to the version served before the update.
    let rolled: serde_json::Value = server
        .client
        .post(server.url("/v1/model/rollback"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rolled["to"], original.version.as_str(), "{rolled}");
    assert_eq!(
        server.info().await["model"]["version"],
        original.version.as_str()
    );

    let server = Arc::into_inner(server).expect("clients finished");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_follows_an_object_store_registry() {
    let Some(model_dir) = model_dir_or_skip("the_edge_follows_an_object_store_registry") else {
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    let url = format!("file://{}", temp.path().join("bucket").display());
    let registry = object_registry::ObjectRegistry::open(&url).unwrap();
    let base = LoadedManifest::load_verified(&model_dir).unwrap().manifest;
    // The registry client blocks (it is what the trainer uses); keep it off this test's async threads.
    let publish_to_registry = |dir: &Path| {
        tokio::task::block_in_place(|| registry.publish(dir)).unwrap();
    };

    // Nothing published yet: the robot serves the model it shipped with (`--model-dir`).
    let cache = temp.path().join("cache");
    let server = TestServer::start_with(&[
        "--model-registry-url",
        &url,
        "--model-cache-dir",
        cache.to_str().unwrap(),
        "--model-dir",
        model_dir.to_str().unwrap(),
        "--model-poll-secs",
        "1",
    ])
    .await;
    let info = server.info().await;
    assert_eq!(info["model"]["version"], base.version.as_str());
    assert_eq!(info["model_registry_url"], url.as_str());
    publish_to_registry(&model_dir);

    // A retrained version published by another machine: the edge fetches and serves it.
    let next = temp.path().join("next");
    copy_model(&model_dir, &next);
    let mut manifest = base.clone();
    manifest.version = format!("{}-ll.registry-test", base.version);
    publish(&next, manifest, true);
    publish_to_registry(&next);
    let expected = format!("{}-ll.registry-test", base.version);
    wait_for(&server, "the published version", |info| {
        info["model"]["version"] == expected.as_str()
    })
    .await;
    let frames = frames_or_skip("the_edge_follows_an_object_store_registry", 1).unwrap_or_default();
    if let Some(frame) = frames.into_iter().next() {
        assert_eq!(
            server
                .post_png("/v1/segment?collaborate=never", frame)
                .await
                .status(),
            200
        );
    }

    // Rolled back in the registry: the edge follows without downloading again.
    tokio::task::block_in_place(|| registry.set_current(&base.version)).unwrap();
    wait_for(&server, "the rolled-back version", |info| {
        info["model"]["version"] == base.version.as_str()
    })
    .await;
    server.stop().await;
}

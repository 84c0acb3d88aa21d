//! The live model and its hot update.
//!
//! The registry watches one model directory (`--model-dir`, by default `models/edge/current`): either a real
//! directory whose files are replaced, or a symlink re-pointed at a new version directory. Every poll fingerprints
//! the directory (manifest bytes plus the name, size and mtime of each entry, after resolving the symlink); when
//! the fingerprint changes the model is loaded and its checksums verified off the request path, then swapped in
//! atomically. Requests already running keep the model they started with. A model that fails to load or verify is
//! refused, the old one stays, and the same files are not retried until they change again.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use models::manifest::{ClassInfo, MANIFEST_FILE};
use models::{EdgeModel, SessionConfig};
use object_registry::{Mirrored, ObjectRegistry};
use serde::Serialize;
use utoipa::ToSchema;

use crate::config::ModelRegistrySource;
use crate::metrics;

/// A loaded, verified model with what the API reports about it.
pub struct LoadedModel {
    pub model: EdgeModel,
    pub name: String,
    pub version: String,
    pub class_names: Vec<String>,
    pub palette: Vec<[u8; 3]>,
    fingerprint: u64,
}

impl LoadedModel {
    pub fn model_ref(&self) -> wire::ModelRef {
        wire::ModelRef {
            name: self.name.clone(),
            version: self.version.clone(),
        }
    }

    pub fn classes(&self) -> &[ClassInfo] {
        &self.model.manifest().classes
    }
}

/// Why the last attempted update was refused.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RefusedUpdate {
    pub error: String,
    /// Seconds since the Unix epoch.
    pub at_unix_s: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollOutcome {
    Unchanged,
    Loaded { from: Option<String>, to: String },
    Refused(String),
}

pub struct ModelRegistry {
    dir: PathBuf,
    session: SessionConfig,
    /// One-thread sessions per model beside the wide one: one per inference thread when there are several.
    narrow_lanes: usize,
    current: ArcSwapOption<LoadedModel>,
    previous: Mutex<Option<Arc<LoadedModel>>>,
    /// Fingerprint of the last files tried, loaded or refused, so a bad model is not re-hashed every poll.
    last_attempt: Mutex<Option<u64>>,
    last_refused: Mutex<Option<RefusedUpdate>>,
}

impl ModelRegistry {
    pub fn new(dir: PathBuf, session: SessionConfig, narrow_lanes: usize) -> Self {
        Self {
            dir,
            session,
            narrow_lanes,
            current: ArcSwapOption::empty(),
            previous: Mutex::new(None),
            last_attempt: Mutex::new(None),
            last_refused: Mutex::new(None),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn current(&self) -> Option<Arc<LoadedModel>> {
        self.current.load_full()
    }

    pub fn last_refused(&self) -> Option<RefusedUpdate> {
        lock(&self.last_refused).clone()
    }

    /// Checks the directory and loads a changed model. Blocking (hashes and loads the model): call it off the
    /// async runtime.
    pub fn poll(&self) -> PollOutcome {
        let fingerprint = match fingerprint(&self.dir) {
            Ok(fingerprint) => fingerprint,
            Err(error) => {
                return self.refuse(None, format!("cannot read {}: {error}", self.dir.display()));
            }
        };
        if *lock(&self.last_attempt) == Some(fingerprint) {
            return PollOutcome::Unchanged;
        }
        if self
            .current()
            .is_some_and(|model| model.fingerprint == fingerprint)
        {
            *lock(&self.last_attempt) = Some(fingerprint);
            return PollOutcome::Unchanged;
        }
        match EdgeModel::load_with_lanes(&self.dir, self.session, self.narrow_lanes) {
            Ok(model) => {
                let manifest = model.manifest();
                let loaded = Arc::new(LoadedModel {
                    name: manifest.name.clone(),
                    version: manifest.version.clone(),
                    class_names: manifest.class_names(),
                    palette: manifest.palette(),
                    model,
                    fingerprint,
                });
                let to = loaded.version.clone();
                let old = self.current.swap(Some(loaded));
                let from = old.as_ref().map(|old| old.version.clone());
                *lock(&self.previous) = old;
                *lock(&self.last_attempt) = Some(fingerprint);
                *lock(&self.last_refused) = None;
                metrics::model_update("loaded");
                metrics::model_info(&to);
                tracing::info!(
                    from = from.as_deref().unwrap_or("none"),
                    to,
                    "edge model loaded"
                );
                PollOutcome::Loaded { from, to }
            }
            Err(error) => self.refuse(Some(fingerprint), error.to_string()),
        }
    }

    fn refuse(&self, fingerprint: Option<u64>, error: String) -> PollOutcome {
        let first_time = {
            let mut last = lock(&self.last_attempt);
            let first_time = fingerprint.is_none() || *last != fingerprint;
            if fingerprint.is_some() {
                *last = fingerprint;
            }
            first_time
        };
        if first_time {
            metrics::model_update("refused");
            tracing::warn!(dir = %self.dir.display(), "model update refused, keeping the current model: {error}");
        }
        let at_unix_s = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        *lock(&self.last_refused) = Some(RefusedUpdate {
            error: error.clone(),
            at_unix_s,
        });
        PollOutcome::Refused(error)
    }

    /// Swaps the current and the previous model. Returns (from, to) versions, or `None` without a previous model.
    pub fn rollback(&self) -> Option<(String, String)> {
        let mut previous = lock(&self.previous);
        let target = previous.take()?;
        let to = target.version.clone();
        let old = self.current.swap(Some(target));
        let from = old
            .as_ref()
            .map_or_else(String::new, |old| old.version.clone());
        *previous = old;
        metrics::model_update("rolled_back");
        metrics::model_info(&to);
        tracing::info!(from, to, "edge model rolled back");
        Some((from, to))
    }
}

/// Polls the registry until the task is dropped: once at once (the initial load), then every `every`.
pub async fn watch(
    registry: Arc<ModelRegistry>,
    mirror: Option<Arc<ModelMirror>>,
    every: Option<Duration>,
) {
    loop {
        let polling = Arc::clone(&registry);
        let mirror = mirror.clone();
        let checked = tokio::task::spawn_blocking(move || {
            if let Some(mirror) = mirror {
                mirror.sync();
            }
            polling.poll()
        });
        if let Err(error) = checked.await {
            tracing::error!("model poll panicked: {error}");
        }
        // Without hot updates, keep retrying only until a first model is in.
        let wait = match every {
            Some(every) => every,
            None if registry.current().is_none() => Duration::from_secs(5),
            None => return,
        };
        tokio::time::sleep(wait).await;
    }
}

/// An object-store registry whose current version is copied into a local directory before each poll; the
/// directory watcher above then loads, verifies and swaps it in as for any other update.
pub struct ModelMirror {
    registry: ObjectRegistry,
    root: PathBuf,
    /// Served (linked as `<root>/current`) until the registry names a version.
    seed: PathBuf,
}

impl ModelMirror {
    pub fn open(source: &ModelRegistrySource) -> Result<Self, object_registry::RegistryError> {
        Ok(Self {
            registry: ObjectRegistry::open(&source.url)?,
            root: source.cache_dir.clone(),
            seed: source.seed_dir.clone(),
        })
    }

    pub fn url(&self) -> &str {
        self.registry.url()
    }

    /// Blocking (downloads): call it off the async runtime. A failure leaves the served model as it is.
    fn sync(&self) {
        match self.registry.mirror_current(&self.root) {
            Ok(Mirrored::Updated(version)) => {
                tracing::info!(
                    url = self.url(),
                    version,
                    "model registry: new current version mirrored"
                );
            }
            Ok(Mirrored::Empty) => {
                let link = self.root.join(object_registry::CURRENT_LINK);
                if std::fs::symlink_metadata(&link).is_err() {
                    match object_registry::link_seed(&self.root, &self.seed) {
                        Ok(()) => tracing::info!(
                            url = self.url(),
                            seed = %self.seed.display(),
                            "model registry: nothing published yet, serving the seed model"
                        ),
                        Err(error) => tracing::warn!(
                            url = self.url(),
                            "model registry: nothing published yet and the seed model cannot be linked: {error}"
                        ),
                    }
                }
            }
            Ok(Mirrored::Unchanged(_)) => {}
            Err(error) => {
                metrics::model_update("mirror_failed");
                tracing::warn!(
                    url = self.url(),
                    "model registry: mirroring failed: {error}"
                );
            }
        }
    }
}

fn fingerprint(dir: &Path) -> std::io::Result<u64> {
    let resolved = std::fs::canonicalize(dir)?;
    let mut hasher = DefaultHasher::new();
    resolved.hash(&mut hasher);
    std::fs::read(resolved.join(MANIFEST_FILE))?.hash(&mut hasher);
    let mut entries = std::fs::read_dir(&resolved)?
        .map(|entry| {
            let entry = entry?;
            let metadata = entry.metadata()?;
            Ok((entry.file_name(), metadata.len(), metadata.modified().ok()))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    entries.sort();
    entries.hash(&mut hasher);
    Ok(hasher.finish())
}

/// A poisoned lock only means another thread panicked mid-update of plain data; the data is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

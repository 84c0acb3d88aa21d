//! A model registry in an object store (S3 and compatibles; `file://` for one host and for tests), so trainers and
//! robots on different machines share model versions without a shared volume.
//!
//! Layout under the URL's prefix: `<version>/<file>` for each file of a version (its `manifest.json` and every file
//! the manifest lists), and `CURRENT`, a small object naming the version to serve. A version's files are all written
//! before `CURRENT` names it, so a reader that follows `CURRENT` finds them complete. Readers still verify every
//! checksum when they load a version (the edge's loader does) and refuse a damaged one.
//!
//! The edge mirrors the current version into a local directory (`<root>/<version>/` plus a `<root>/current` link
//! re-pointed atomically), which its directory watcher then loads and swaps in like any other update.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt;
use models::manifest::{MANIFEST_FILE, Manifest};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};
use tokio::runtime::Runtime;

/// The object naming the version to serve.
pub const CURRENT_OBJECT: &str = "CURRENT";
/// The link the mirror re-points at the current version's directory.
pub const CURRENT_LINK: &str = "current";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {url}: {message}")]
    Location { url: String, message: String },
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("version `{version}`: {message}")]
    BadVersion { version: String, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An object store and a prefix in it, from `s3://bucket/prefix` (credentials and endpoint from the usual `AWS_*`
/// variables) or `file:///dir` (created when missing).
pub fn store_from_url(url: &str) -> Result<(Arc<dyn ObjectStore>, ObjectPath), RegistryError> {
    let location = |message: &str| RegistryError::Location {
        url: url.to_string(),
        message: message.to_string(),
    };
    if let Some(dir) = url.strip_prefix("file://") {
        std::fs::create_dir_all(dir).map_err(io(Path::new(dir)))?;
        Ok((
            Arc::new(LocalFileSystem::new_with_prefix(dir)?),
            ObjectPath::default(),
        ))
    } else if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(location("no bucket named"));
        }
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()?;
        Ok((Arc::new(store), ObjectPath::from(prefix)))
    } else {
        Err(location("expected an s3:// or file:// URL"))
    }
}

/// A private async runtime for blocking callers of the async object_store API (any thread that is not itself
/// driving async tasks).
pub struct BlockingRuntime {
    /// An `Option` only so that `Drop` can take it out.
    runtime: Option<Runtime>,
}

impl BlockingRuntime {
    pub fn new(thread_name: &str) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(thread_name)
            .enable_all()
            .build()?;
        Ok(Self {
            runtime: Some(runtime),
        })
    }

    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime
            .as_ref()
            .expect("the runtime lives until drop")
            .block_on(future)
    }
}

impl Drop for BlockingRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics when its owner is dropped inside async code (a server shutting
        // down, a test).
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// What [`ObjectRegistry::mirror_current`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mirrored {
    /// Nothing published yet.
    Empty,
    /// The local link already pointed at the current version.
    Unchanged(String),
    /// The current version was fetched (or was already on disk) and the local link now points at it.
    Updated(String),
}

pub struct ObjectRegistry {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
    /// The object_store API is async while callers (the trainer, the edge's blocking poll) are not.
    runtime: BlockingRuntime,
}

impl ObjectRegistry {
    pub fn open(url: &str) -> Result<Self, RegistryError> {
        let (store, prefix) = store_from_url(url)?;
        let runtime = BlockingRuntime::new("model-registry")
            .map_err(io(Path::new("model registry runtime")))?;
        Ok(Self {
            store,
            prefix,
            url: url.to_string(),
            runtime,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn object(&self, version: &str, file: &str) -> ObjectPath {
        self.prefix.child(version).child(file)
    }

    /// The version `CURRENT` names, if any.
    pub fn current_version(&self) -> Result<Option<String>, RegistryError> {
        self.runtime.block_on(async {
            match self.store.get(&self.prefix.child(CURRENT_OBJECT)).await {
                Ok(result) => {
                    let bytes = result.bytes().await?;
                    let version = String::from_utf8_lossy(&bytes).trim().to_string();
                    Ok((!version.is_empty()).then_some(version))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(error) => Err(error.into()),
            }
        })
    }

    /// Uploads a model directory as the version its manifest names (the manifest last), then points `CURRENT` at
    /// it. Returns the version.
    pub fn publish(&self, dir: &Path) -> Result<String, RegistryError> {
        let manifest = read_manifest(dir)?;
        let version = manifest.version.clone();
        self.runtime.block_on(async {
            let mut files: Vec<&str> = manifest.files.values().map(|f| f.path.as_str()).collect();
            files.push(MANIFEST_FILE);
            for file in files {
                let path = dir.join(file);
                let bytes = std::fs::read(&path).map_err(io(&path))?;
                self.store
                    .put(&self.object(&version, file), PutPayload::from(bytes))
                    .await?;
            }
            Ok::<_, RegistryError>(())
        })?;
        self.set_current(&version)?;
        Ok(version)
    }

    /// Points `CURRENT` at a version already in the store (e.g. to roll back).
    pub fn set_current(&self, version: &str) -> Result<(), RegistryError> {
        self.runtime.block_on(async {
            let manifest = self.object(version, MANIFEST_FILE);
            if let Err(error) = self.store.head(&manifest).await {
                return Err(RegistryError::BadVersion {
                    version: version.to_string(),
                    message: format!("not in the registry ({error})"),
                });
            }
            self.store
                .put(
                    &self.prefix.child(CURRENT_OBJECT),
                    PutPayload::from(format!("{version}\n").into_bytes()),
                )
                .await?;
            Ok(())
        })
    }

    /// Versions in the store, sorted by name.
    pub fn versions(&self) -> Result<Vec<String>, RegistryError> {
        self.runtime.block_on(async {
            let listed = self.store.list_with_delimiter(Some(&self.prefix)).await?;
            let mut versions: Vec<String> = listed
                .common_prefixes
                .iter()
                .filter_map(|p| p.filename().map(str::to_string))
                .collect();
            versions.sort();
            Ok(versions)
        })
    }

    /// Makes `<root>/current` point at the current version, downloading it into `<root>/<version>/` first when it
    /// is not there yet. The download goes to a hidden directory renamed into place, and the link is replaced by a
    /// rename, so a reader of `<root>/current` never sees a partial version.
    pub fn mirror_current(&self, root: &Path) -> Result<Mirrored, RegistryError> {
        let Some(version) = self.current_version()? else {
            return Ok(Mirrored::Empty);
        };
        if version.contains('/') || version.starts_with('.') {
            return Err(RegistryError::BadVersion {
                version,
                message: "not a plain directory name".into(),
            });
        }
        let link = root.join(CURRENT_LINK);
        if std::fs::read_link(&link).is_ok_and(|target| target == Path::new(&version)) {
            return Ok(Mirrored::Unchanged(version));
        }
        std::fs::create_dir_all(root).map_err(io(root))?;
        let target = root.join(&version);
        if !target.join(MANIFEST_FILE).is_file() {
            self.download(&version, root, &target)?;
        }
        point_current(root, Path::new(&version))?;
        Ok(Mirrored::Updated(version))
    }

    fn download(&self, version: &str, root: &Path, target: &Path) -> Result<(), RegistryError> {
        let staging = root.join(format!(".{version}.partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(io(&staging))?;
        self.runtime.block_on(async {
            let manifest_bytes = self
                .store
                .get(&self.object(version, MANIFEST_FILE))
                .await?
                .bytes()
                .await?;
            let manifest: Manifest =
                serde_json::from_slice(&manifest_bytes).map_err(|e| RegistryError::BadVersion {
                    version: version.to_string(),
                    message: format!("unreadable manifest: {e}"),
                })?;
            for entry in manifest.files.values() {
                if entry.path.contains('/') || entry.path.starts_with('.') {
                    return Err(RegistryError::BadVersion {
                        version: version.to_string(),
                        message: format!("file `{}` is not a plain name", entry.path),
                    });
                }
                let path = staging.join(&entry.path);
                let mut file = std::fs::File::create(&path).map_err(io(&path))?;
                let mut stream = self
                    .store
                    .get(&self.object(version, &entry.path))
                    .await?
                    .into_stream();
                while let Some(chunk) = stream.try_next().await? {
                    std::io::Write::write_all(&mut file, &chunk).map_err(io(&path))?;
                }
                file.sync_all().map_err(io(&path))?;
            }
            // The manifest last: a directory with a manifest is complete.
            let path = staging.join(MANIFEST_FILE);
            std::fs::write(&path, &manifest_bytes).map_err(io(&path))?;
            Ok(())
        })?;
        std::fs::rename(&staging, target).map_err(io(target))
    }
}

/// Makes `<root>/current` point at `target` (relative to `root`, or absolute) by renaming a fresh link over it.
fn point_current(root: &Path, target: &Path) -> Result<(), RegistryError> {
    let link = root.join(CURRENT_LINK);
    let staged_link = root.join(format!(".{CURRENT_LINK}.{}", std::process::id()));
    let _ = std::fs::remove_file(&staged_link);
    std::os::unix::fs::symlink(target, &staged_link).map_err(io(&staged_link))?;
    std::fs::rename(&staged_link, &link).map_err(io(&link))
}

/// Points `<root>/current` at a local model directory (e.g. the model shipped with the edge), for as long as the
/// object store names no version; the first mirrored version replaces the link.
pub fn link_seed(root: &Path, seed: &Path) -> Result<(), RegistryError> {
    std::fs::create_dir_all(root).map_err(io(root))?;
    let seed = std::fs::canonicalize(seed).map_err(io(seed))?;
    point_current(root, &seed)
}

fn read_manifest(dir: &Path) -> Result<Manifest, RegistryError> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    serde_json::from_str(&text).map_err(|e| RegistryError::BadVersion {
        version: dir.display().to_string(),
        message: format!("unreadable manifest: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal model directory: a manifest listing one file with its real checksum.
    fn model_dir(root: &Path, version: &str, payload: &[u8]) -> PathBuf {
        let dir = root.join(format!("src-{version}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("weights.bin"), payload).unwrap();
        let template = models::paths::models_dir().join("edge/current/manifest.json");
        let mut manifest: Manifest =
            serde_json::from_str(&std::fs::read_to_string(template).unwrap()).unwrap();
        manifest.version = version.to_string();
        manifest.files.clear();
        manifest.files.insert(
            "model".into(),
            models::manifest::FileEntry {
                path: "weights.bin".into(),
                sha256: String::new(),
                bytes: 0,
            },
        );
        manifest.write_with_checksums(&dir).unwrap();
        dir
    }

    #[test]
    fn publish_then_mirror_follows_current_and_rolls_back() {
        let temp = tempfile::tempdir().unwrap();
        let url = format!("file://{}", temp.path().join("store").display());
        let registry = ObjectRegistry::open(&url).unwrap();
        let mirror = temp.path().join("mirror");
        assert_eq!(registry.current_version().unwrap(), None);
        assert_eq!(registry.mirror_current(&mirror).unwrap(), Mirrored::Empty);

        let first = model_dir(temp.path(), "1.0.0", b"first weights");
        assert_eq!(registry.publish(&first).unwrap(), "1.0.0");
        assert_eq!(
            registry.mirror_current(&mirror).unwrap(),
            Mirrored::Updated("1.0.0".into())
        );
        assert_eq!(
            registry.mirror_current(&mirror).unwrap(),
            Mirrored::Unchanged("1.0.0".into())
        );
        let served = mirror.join(CURRENT_LINK);
        assert_eq!(
            std::fs::read(served.join("weights.bin")).unwrap(),
            b"first weights"
        );
        models::manifest::LoadedManifest::load_verified(&served).unwrap();

        let second = model_dir(temp.path(), "1.1.0", b"second weights");
        registry.publish(&second).unwrap();
        assert_eq!(
            registry.mirror_current(&mirror).unwrap(),
            Mirrored::Updated("1.1.0".into())
        );
        assert_eq!(
            std::fs::read(served.join("weights.bin")).unwrap(),
            b"second weights"
        );
        assert_eq!(registry.versions().unwrap(), vec!["1.0.0", "1.1.0"]);

        // Rolling back re-points without downloading again.
        registry.set_current("1.0.0").unwrap();
        assert_eq!(
            registry.mirror_current(&mirror).unwrap(),
            Mirrored::Updated("1.0.0".into())
        );
        assert_eq!(
            std::fs::read(served.join("weights.bin")).unwrap(),
            b"first weights"
        );
        assert!(registry.set_current("9.9.9").is_err());
        // No staging leftovers.
        let hidden: Vec<_> = std::fs::read_dir(&mirror)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(hidden.is_empty(), "{hidden:?}");
    }

    #[test]
    fn a_damaged_version_is_mirrored_but_fails_verification() {
        let temp = tempfile::tempdir().unwrap();
        let store_dir = temp.path().join("store");
        let url = format!("file://{}", store_dir.display());
        let registry = ObjectRegistry::open(&url).unwrap();
        registry
            .publish(&model_dir(temp.path(), "2.0.0", b"good"))
            .unwrap();
        std::fs::write(store_dir.join("2.0.0/weights.bin"), b"tampered").unwrap();
        let mirror = temp.path().join("mirror");
        registry.mirror_current(&mirror).unwrap();
        assert!(
            models::manifest::LoadedManifest::load_verified(&mirror.join(CURRENT_LINK)).is_err()
        );
    }

    #[test]
    fn bad_urls_are_refused() {
        assert!(ObjectRegistry::open("http://example.com/models").is_err());
        assert!(ObjectRegistry::open("s3:///prefix").is_err());
    }
}

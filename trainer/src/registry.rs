//! The model registry the edge watches: one directory per version (`<registry>/<version>/`, manifest + files) and a
//! `<registry>/current` symlink to the live one. Run the edge with `--model-dir <registry>/current`: it resolves the
//! link on every poll, so re-pointing it (an atomic rename) hot-swaps the model, and a version directory is never
//! modified once published. `history.jsonl` records every change of `current`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use models::manifest::{LoadedManifest, Manifest};
use serde::{Deserialize, Serialize};

use crate::Trainer;
use crate::export::{PublishInfo, publish};

pub const CURRENT: &str = "current";
const HISTORY: &str = "history.jsonl";

pub struct Registry {
    dir: PathBuf,
}

/// One change of the `current` pointer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointerChange {
    pub at_unix_s: u64,
    /// `adopt`, `publish` or `rollback`.
    pub action: String,
    pub from: Option<String>,
    pub to: String,
}

impl Registry {
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating model registry {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    pub fn current_link(&self) -> PathBuf {
        self.dir.join(CURRENT)
    }

    pub fn version_dir(&self, version: &str) -> PathBuf {
        self.dir.join(version)
    }

    /// The live model's manifest (checksums not verified here; loading the model does that), if any.
    pub fn current(&self) -> Result<Option<Manifest>> {
        let link = self.current_link();
        if std::fs::symlink_metadata(&link).is_err() {
            return Ok(None);
        }
        let loaded = LoadedManifest::load_unverified(&link)
            .with_context(|| format!("reading the live model {}", link.display()))?;
        Ok(Some(loaded.manifest))
    }

    /// Makes `model_dir` the registry's first version when the registry has no live model: copies it into
    /// `<registry>/<version>/` (a `current` that is a plain directory is moved there) and points `current` at it.
    /// Returns the live version.
    pub fn adopt_if_empty(&self, model_dir: &Path) -> Result<String> {
        let link = self.current_link();
        if let Ok(meta) = std::fs::symlink_metadata(&link) {
            let manifest = self.current()?.context("registry has a current model")?;
            if meta.file_type().is_symlink() {
                return Ok(manifest.version);
            }
            // A plain directory cannot be swapped atomically: move it into the registry and link it.
            let target = self.version_dir(checked_version(&manifest.version)?);
            if target.exists() {
                bail!(
                    "{} is a directory and {} already exists",
                    link.display(),
                    target.display()
                );
            }
            std::fs::rename(&link, &target)?;
            self.point_current(&manifest.version, "adopt", None)?;
            return Ok(manifest.version);
        }
        let source = LoadedManifest::load_verified(model_dir)
            .with_context(|| format!("seeding the registry from {}", model_dir.display()))?;
        let version = source.manifest.version.clone();
        let target = self.version_dir(checked_version(&version)?);
        if !target.exists() {
            let staging = self
                .dir
                .join(format!(".{version}.staging-{}", std::process::id()));
            if staging.exists() {
                std::fs::remove_dir_all(&staging)?;
            }
            std::fs::create_dir_all(&staging)?;
            let mut manifest = source.manifest.clone();
            for entry in manifest.files.values() {
                std::fs::copy(source.dir.join(&entry.path), staging.join(&entry.path))?;
            }
            manifest.write_with_checksums(&staging)?;
            std::fs::rename(&staging, &target)?;
        }
        self.point_current(&version, "adopt", None)?;
        Ok(version)
    }

    /// Publishes the trainer's weights as a new version and makes it live. A version is never overwritten.
    pub fn publish(&self, trainer: &Trainer, info: &PublishInfo) -> Result<PathBuf> {
        let target = self.version_dir(checked_version(&info.version)?);
        if target.exists() {
            bail!(
                "version {} is already in the registry ({})",
                info.version,
                target.display()
            );
        }
        let from = self.current()?.map(|m| m.version);
        publish(trainer, &target, info)?;
        LoadedManifest::load_verified(&target).context("verifying the published model")?;
        self.point_current(&info.version, "publish", from)?;
        Ok(target)
    }

    /// Re-points `current` at the live model's parent version. Returns (from, to).
    pub fn rollback(&self) -> Result<(String, String)> {
        let current = self.current()?.with_context(|| {
            format!(
                "registry {} has no live model to roll back",
                self.dir.display()
            )
        })?;
        let parent = current.provenance.parent_version.with_context(|| {
            format!(
                "live model {} has no parent version to roll back to",
                current.version
            )
        })?;
        let target = self.version_dir(checked_version(&parent)?);
        let loaded = LoadedManifest::load_verified(&target)
            .with_context(|| format!("parent version {parent} is not intact in the registry"))?;
        if loaded.manifest.version != parent {
            bail!(
                "{} holds version {}, not {parent}",
                target.display(),
                loaded.manifest.version
            );
        }
        self.point_current(&parent, "rollback", Some(current.version.clone()))?;
        Ok((current.version, parent))
    }

    /// The version the registry started from (its first adoption), if any.
    pub fn first_version(&self) -> Result<Option<String>> {
        Ok(self
            .history()?
            .into_iter()
            .find(|change| change.action == "adopt")
            .map(|change| change.to))
    }

    /// Every pointer change so far, oldest first.
    pub fn history(&self) -> Result<Vec<PointerChange>> {
        let path = self.dir.join(HISTORY);
        if !path.exists() {
            return Ok(Vec::new());
        }
        std::fs::read_to_string(&path)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("parsing {}", path.display())))
            .collect()
    }

    /// Atomically replaces the `current` link: a new link under a temporary name, renamed over the old one.
    fn point_current(&self, version: &str, action: &str, from: Option<String>) -> Result<()> {
        let temp = self.dir.join(format!(".{CURRENT}.{}", std::process::id()));
        if std::fs::symlink_metadata(&temp).is_ok() {
            std::fs::remove_file(&temp)?;
        }
        // Relative, so the registry can be moved or mounted elsewhere.
        std::os::unix::fs::symlink(version, &temp)?;
        std::fs::rename(&temp, self.current_link())
            .with_context(|| format!("re-pointing {}", self.current_link().display()))?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        let change = PointerChange {
            at_unix_s: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            action: action.to_string(),
            from,
            to: version.to_string(),
        };
        let mut history = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(HISTORY))?;
        writeln!(history, "{}", serde_json::to_string(&change)?)?;
        tracing::info!(
            action,
            to = version,
            "registry {} now serves {version}",
            self.dir.display()
        );
        Ok(())
    }
}

/// A version names a directory: refuse anything that could escape the registry or shadow the pointer.
fn checked_version(version: &str) -> Result<&str> {
    let fine = !version.is_empty()
        && version != CURRENT
        && !version.starts_with('.')
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c));
    if !fine {
        bail!(
            "model version {version:?} cannot name a registry directory (letters, digits, `._+-` only)"
        );
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_that_could_escape_the_registry_are_refused() {
        for bad in ["", "current", "../x", ".hidden", "a/b", "1.0 beta"] {
            assert!(checked_version(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["1.0.0", "1.0.0-ll.ab12", "0.0.0-imagenet", "2+build"] {
            assert!(checked_version(good).is_ok(), "{good:?} refused");
        }
    }
}

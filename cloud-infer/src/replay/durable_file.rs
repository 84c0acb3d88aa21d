//! Crash-safe file writes: a reader sees either no file or the whole file, and a returned write survives power loss.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use super::ReplayError;

/// Writes `bytes` to `target` via a temp file in `temp_dir` (same file system): write, fsync the file, rename,
/// fsync the target's directory so the rename itself is durable. The target's directory must already exist durably.
pub fn write_durably(temp_dir: &Path, target: &Path, bytes: &[u8]) -> Result<(), ReplayError> {
    let temp = temp_dir.join(uuid::Uuid::new_v4().to_string());
    let mut file = File::create(&temp).map_err(|e| ReplayError::io(temp.display(), e))?;
    file.write_all(bytes)
        .map_err(|e| ReplayError::io(temp.display(), e))?;
    file.sync_all()
        .map_err(|e| ReplayError::io(temp.display(), e))?;
    drop(file);
    let parent = target.parent().expect("targets live in a directory");
    fs::rename(&temp, target).map_err(|e| ReplayError::io(target.display(), e))?;
    sync_dir(parent)
}

pub fn sync_dir(dir: &Path) -> Result<(), ReplayError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ReplayError::io(dir.display(), e))
}

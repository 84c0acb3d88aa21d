//! Where the project finds its shared data and its own model files, overridable by environment variables.

use std::path::PathBuf;

/// Root of the shared data (`datasets/camvid`, reference models). `SHARED_DIR`, default `../shared` relative to the
/// workspace root.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared"))
}

/// The CamVid copy inside the shared data.
pub fn camvid_dir() -> PathBuf {
    shared_dir().join("datasets/camvid")
}

/// The project's own model files (`models/edge/current`, `models/mobilesam`). `MODELS_DIR` overrides.
pub fn models_dir() -> PathBuf {
    std::env::var_os("MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("models"))
}

/// The edge model to use: `EDGE_MODEL_DIR`, else the shipped `models/edge/current`.
pub fn edge_model_dir() -> PathBuf {
    std::env::var_os("EDGE_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| models_dir().join("edge/current"))
}

/// The workspace root, found from this crate's location at build time so tests and tools work from any crate.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("models crate lives inside the workspace")
        .to_path_buf()
}

/// Returns the CamVid directory, or prints why tests that need it are skipped and returns `None`.
pub fn camvid_or_skip(test: &str) -> Option<PathBuf> {
    let dir = camvid_dir();
    if dir.join("index").is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED {test}: CamVid not found at {} (set SHARED_DIR to the shared data folder)",
            dir.display()
        );
        None
    }
}

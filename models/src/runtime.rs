//! The process-wide ONNX Runtime environment and session construction.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;

/// The library is loaded at run time (`load-dynamic`): the set-up installs it from PyPI's `onnxruntime` wheel.
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// ONNX Runtime (1.29 and later) starts a telemetry uploader on Linux unless this is set when the library loads:
/// it writes a device id and an event store under `~/.cache/Microsoft`, a `.ses` file in the temporary directory,
/// and looks up Microsoft's collector every half minute. `with_telemetry(false)` only stops events once it runs.
pub const ORT_TELEMETRY_ENV: &str = "ORT_DISABLE_TELEMETRY";

static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// Threads ONNX Runtime may use for one session. On a 2-core robot the defaults are chosen on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    pub intra_threads: usize,
    pub inter_threads: usize,
    /// Whether idle intra-op threads busy-wait for the next operator (ONNX Runtime's default). Spinning shaves
    /// wake-ups inside a run but keeps a core busy after it, which on 2 cores slows whatever runs next.
    pub spinning: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            intra_threads: 2,
            inter_threads: 1,
            spinning: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime could not be initialised: {0} (set {ORT_DYLIB_ENV} to libonnxruntime.so; `scripts/setup.sh` installs it)"
    )]
    Init(String),
    #[error("cannot build an ONNX Runtime session for {path}: {message}")]
    Session { path: PathBuf, message: String },
    #[error("inference failed: {0}")]
    Run(String),
}

/// Loads the ONNX Runtime library once per process, with its telemetry off unless `ORT_DISABLE_TELEMETRY` says
/// otherwise. Safe to call from many threads and many times.
pub fn init_runtime() -> Result<&'static ort::environment::Environment, RuntimeError> {
    let result = ENVIRONMENT.get_or_init(|| {
        if std::env::var_os(ORT_TELEMETRY_ENV).is_none() {
            // SAFETY: this runs once, before the library is loaded, at start-up while models load; nothing in the
            // services reads or writes the environment concurrently (configuration was parsed before). Test
            // binaries, whose other tests may read it meanwhile, run with the variable set (`scripts/env.sh`), so
            // this does not run there.
            unsafe { std::env::set_var(ORT_TELEMETRY_ENV, "1") };
        }
        let path = dylib_path()?;
        ort::init_from(&path)
            .map_err(|e| format!("loading {}: {e}", path.display()))?
            .with_name("perception")
            .with_telemetry(false)
            .build()
            .map_err(|e| e.to_string())
    });
    result.as_ref().map_err(|e| RuntimeError::Init(e.clone()))
}

fn dylib_path() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(ORT_DYLIB_ENV) {
        return Ok(PathBuf::from(path));
    }
    // The set-up script's install location, so a fresh clone works without exporting anything.
    let local = crate::paths::workspace_root()
        .join(".venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1");
    if local.is_file() {
        Ok(local)
    } else {
        Err(format!(
            "{ORT_DYLIB_ENV} is not set and {} does not exist",
            local.display()
        ))
    }
}

/// Builds a session with full graph optimisation (which also fuses Conv+BatchNorm of our un-fused exports).
pub fn build_session(path: &Path, config: SessionConfig) -> Result<Session, RuntimeError> {
    let environment = init_runtime()?;
    let session_err = |message: String| RuntimeError::Session {
        path: path.to_path_buf(),
        message,
    };
    Session::builder(environment)
        .map_err(|e| session_err(e.to_string()))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| session_err(e.to_string()))?
        .with_intra_threads(config.intra_threads)
        .map_err(|e| session_err(e.to_string()))?
        .with_inter_threads(config.inter_threads)
        .map_err(|e| session_err(e.to_string()))?
        .with_intra_op_spinning(config.spinning)
        .map_err(|e| session_err(e.to_string()))?
        // Spin inside a run only: parked as soon as `run` returns, the workers leave both cores to the
        // post-processing, the HTTP answer and whatever else shares the robot.
        .with_config_entry("session.force_spinning_stop", "1")
        .map_err(|e| session_err(e.to_string()))?
        .commit_from_file(path)
        .map_err(|e| session_err(e.to_string()))
}

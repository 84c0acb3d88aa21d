//! Command line and environment: every flag has an environment variable, so the same binary runs from a shell, a
//! systemd unit or a Sedna/KubeEdge pod spec.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use hard_example::MinerConfig;
use models::SessionConfig;

use crate::cloud::BreakerConfig;

#[derive(Debug, Parser)]
#[command(
    name = "edge-infer",
    version,
    about = "Edge semantic segmentation API for the robot"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API.
    Serve(ServeArgs),
}

/// The miner used when none is configured: Sedna's cross-entropy scorer (Sedna's 0.5 threshold never fires on this
/// model). 0.90 is label-free calibration on daylight frames, the domain the model was trained for: about the 10th
/// percentile of edge model 1.1.0's scores on day-val (0.904), where dusk-stream's median is 0.851
/// (`benchmarks miners`, benchmarks/README.md). At most one upload every 2 s (burst 2) on top, because a MobileSAM
/// refinement takes ~2.4 s of a cloud replica and the answer to an uploaded frame waits for it.
const DEFAULT_MINER: &str = r#"{"scorer": {"name": "cross-entropy"}, "policy": {"name": "all", "policies": [
    {"name": "threshold", "threshold": 0.90}, {"name": "rate-cap", "max_per_second": 0.5, "burst": 2}]}}"#;

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[arg(long, env = "EDGE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The model directory (manifest.json + files). It is polled for changes and a new, verified version is swapped
    /// in without dropping requests; point a `current` symlink at a version directory or replace the files in place.
    #[arg(long, env = "EDGE_MODEL_DIR", default_value_os_t = models::paths::models_dir().join("edge/current"))]
    pub model_dir: PathBuf,
    /// An object-store model registry to follow (`s3://bucket/prefix` with the usual `AWS_*` variables, or
    /// `file:///dir`), as `trainer retrain --registry-url` publishes it: before each check, the version its `CURRENT`
    /// object names is copied into `--model-cache-dir` and served from there. Until the registry names a version,
    /// `--model-dir` is served.
    #[arg(long, env = "EDGE_MODEL_REGISTRY_URL")]
    pub model_registry_url: Option<String>,
    /// Local copies of the registry's versions (with `--model-registry-url`).
    #[arg(long, env = "EDGE_MODEL_CACHE_DIR", default_value_os_t = models::paths::workspace_root().join("runs/model-cache"))]
    pub model_cache_dir: PathBuf,
    /// Seconds between checks of the model directory; 0 disables hot updates.
    #[arg(long, env = "EDGE_MODEL_POLL_SECS", default_value_t = 5)]
    pub model_poll_secs: u64,
    /// ONNX Runtime threads per inference; as many threads then turn the model output into the answer.
    #[arg(long, env = "EDGE_INTRA_THREADS", default_value_t = 2)]
    pub intra_threads: usize,
    /// Let idle ONNX Runtime threads busy-wait between operators within a run (faster model runs; they stop
    /// spinning when the run ends, so the cores are free between frames).
    #[arg(long, env = "EDGE_ORT_SPINNING", default_value_t = true, action = clap::ArgAction::Set)]
    pub ort_spinning: bool,
    /// Inference threads, each running one frame at a time. A frame alone runs on `--intra-threads` threads; with
    /// two or more workers, frames that overlap run on one thread each, side by side.
    #[arg(long, env = "EDGE_WORKERS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
    /// Frames that may wait for an inference thread; more are refused with 429.
    #[arg(long, env = "EDGE_QUEUE_SIZE", default_value_t = 4)]
    pub queue_size: usize,
    /// Miner configuration as JSON (see the hard-example crate), e.g.
    /// `{"scorer": {"name": "cross-entropy"}, "policy": {"name": "budget", "target_ratio": 0.15}}`.
    #[arg(long, env = "EDGE_MINER", conflicts_with = "hem_name")]
    pub miner: Option<String>,
    /// Sedna's hard example mining algorithm name (`CrossEntropy`, `IBT`, or a scorer name).
    #[arg(long, env = "HEM_NAME")]
    pub hem_name: Option<String>,
    /// Sedna's hard example mining parameters: a JSON object, or the `[{"key": ..., "value": ...}]` list Sedna's
    /// controller injects.
    #[arg(long, env = "HEM_PARAMETERS", default_value = "")]
    pub hem_parameters: String,
    /// Base URL of cloud-infer (e.g. `http://10.0.0.5:5000`); without it the robot answers from the edge only.
    #[arg(long, env = "EDGE_CLOUD_URL")]
    pub cloud_url: Option<String>,
    /// Sedna's address of the big model, used when `--cloud-url` is not given.
    #[arg(long, env = "BIG_MODEL_IP")]
    pub big_model_ip: Option<String>,
    #[arg(long, env = "BIG_MODEL_PORT", default_value_t = 5000)]
    pub big_model_port: u16,
    /// Longest wait for the cloud; a request's `deadline_ms` can shorten it.
    #[arg(long, env = "EDGE_CLOUD_TIMEOUT_MS", default_value_t = 800)]
    pub cloud_timeout_ms: u64,
    /// Bearer token sent to cloud-infer.
    #[arg(long, env = "EDGE_CLOUD_TOKEN")]
    pub cloud_token: Option<Secret>,
    /// Consecutive cloud failures that open the circuit breaker.
    #[arg(long, env = "EDGE_BREAKER_FAILURES", default_value_t = 3)]
    pub breaker_failures: u32,
    /// How long an open breaker waits before letting one probe through.
    #[arg(long, env = "EDGE_BREAKER_COOL_DOWN_MS", default_value_t = 10_000)]
    pub breaker_cool_down_ms: u64,
    /// When set, `/v1/*` requires `Authorization: Bearer <token>`.
    #[arg(long, env = "EDGE_API_TOKEN")]
    pub api_token: Option<Secret>,
    /// Largest accepted request body.
    #[arg(long, env = "EDGE_MAX_BODY_BYTES", default_value_t = 16 << 20)]
    pub max_body_bytes: usize,
    /// Largest accepted image, in pixels (checked before decoding the pixel data).
    #[arg(long, env = "EDGE_MAX_PIXELS", default_value_t = 12_000_000)]
    pub max_pixels: u64,
    /// Names this robot in uploads to the cloud.
    #[arg(long, env = "ROBOT_ID", default_value = "robot")]
    pub robot_id: String,
}

/// A credential: parsed from the command line, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl FromStr for Secret {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            Err("a token must not be empty".into())
        } else {
            Ok(Self(s.to_owned()))
        }
    }
}

/// Everything the server needs, resolved and validated from [`ServeArgs`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The directory served (with a registry URL: the mirror's `current` link).
    pub model_dir: PathBuf,
    pub model_registry: Option<ModelRegistrySource>,
    pub model_poll: Option<Duration>,
    pub session: SessionConfig,
    pub workers: usize,
    pub queue_size: usize,
    pub miner: MinerConfig,
    pub cloud: Option<CloudConfig>,
    pub api_token: Option<Secret>,
    pub max_body_bytes: usize,
    pub max_pixels: u64,
    pub robot_id: String,
}

/// An object-store registry to follow, where its versions are copied, and what to serve before it has one.
#[derive(Debug, Clone)]
pub struct ModelRegistrySource {
    pub url: String,
    pub cache_dir: PathBuf,
    pub seed_dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct CloudConfig {
    /// Base URL, without a trailing slash.
    pub base_url: String,
    pub token: Option<Secret>,
    pub timeout: Duration,
    pub breaker: BreakerConfig,
}

impl CloudConfig {
    pub fn refine_url(&self) -> String {
        format!("{}/v1/refine", self.base_url)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid miner configuration: {0}")]
    Miner(#[from] hard_example::ConfigError),
    #[error("invalid cloud URL `{0}`: it must start with http:// or https://")]
    CloudUrl(String),
    #[error("{0} must be at least 1")]
    Zero(&'static str),
}

impl ServeArgs {
    pub fn resolve(&self) -> Result<ServerConfig, ConfigError> {
        let miner = match (&self.miner, &self.hem_name) {
            (Some(json), _) => MinerConfig::from_json(json)?,
            (None, Some(name)) => MinerConfig::from_sedna(name, &self.hem_parameters)?,
            (None, None) => MinerConfig::from_json(DEFAULT_MINER)?,
        };
        // Fail at start-up, not on the first frame.
        miner.build()?;
        if self.intra_threads == 0 {
            return Err(ConfigError::Zero("--intra-threads"));
        }
        if self.max_pixels == 0 {
            return Err(ConfigError::Zero("--max-pixels"));
        }
        if self.breaker_failures == 0 {
            return Err(ConfigError::Zero("--breaker-failures"));
        }
        let cloud = self.cloud_base_url()?.map(|base_url| CloudConfig {
            base_url,
            token: self.cloud_token.clone(),
            timeout: Duration::from_millis(self.cloud_timeout_ms),
            breaker: BreakerConfig {
                failure_threshold: self.breaker_failures,
                cool_down: Duration::from_millis(self.breaker_cool_down_ms),
            },
        });
        let (model_dir, model_registry) = match &self.model_registry_url {
            Some(url) => (
                self.model_cache_dir.join(object_registry::CURRENT_LINK),
                Some(ModelRegistrySource {
                    url: url.clone(),
                    cache_dir: self.model_cache_dir.clone(),
                    seed_dir: self.model_dir.clone(),
                }),
            ),
            None => (self.model_dir.clone(), None),
        };
        Ok(ServerConfig {
            model_dir,
            model_registry,
            model_poll: (self.model_poll_secs > 0)
                .then(|| Duration::from_secs(self.model_poll_secs)),
            session: SessionConfig {
                intra_threads: self.intra_threads,
                inter_threads: 1,
                spinning: self.ort_spinning,
            },
            workers: usize::from(self.workers),
            queue_size: self.queue_size,
            miner,
            cloud,
            api_token: self.api_token.clone(),
            max_body_bytes: self.max_body_bytes,
            max_pixels: self.max_pixels,
            robot_id: self.robot_id.clone(),
        })
    }

    fn cloud_base_url(&self) -> Result<Option<String>, ConfigError> {
        let url = match (&self.cloud_url, &self.big_model_ip) {
            (Some(url), _) => url.trim().to_owned(),
            (None, Some(ip)) if ip.contains(':') => {
                format!("http://[{ip}]:{}", self.big_model_port)
            }
            (None, Some(ip)) => format!("http://{ip}:{}", self.big_model_port),
            (None, None) => return Ok(None),
        };
        if url.is_empty() {
            return Ok(None);
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::CloudUrl(url));
        }
        Ok(Some(url.trim_end_matches('/').to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn parse(args: &[&str]) -> ServeArgs {
        let mut argv = vec!["edge-infer"];
        argv.extend_from_slice(args);
        Wrapper::try_parse_from(argv).expect("arguments parse").args
    }

    #[test]
    fn sedna_big_model_address_forms_the_cloud_url() {
        let config = parse(&["--big-model-ip", "10.0.0.5", "--big-model-port", "5001"])
            .resolve()
            .unwrap();
        assert_eq!(
            config.cloud.unwrap().refine_url(),
            "http://10.0.0.5:5001/v1/refine"
        );
    }

    #[test]
    fn explicit_cloud_url_wins_and_loses_its_trailing_slash() {
        let config = parse(&[
            "--cloud-url",
            "https://cloud:9/",
            "--big-model-ip",
            "10.0.0.5",
        ])
        .resolve()
        .unwrap();
        assert_eq!(config.cloud.unwrap().base_url, "https://cloud:9");
    }

    #[test]
    fn sedna_miner_parameters_are_accepted_and_bad_ones_refused() {
        let config = parse(&[
            "--hem-name",
            "IBT",
            "--hem-parameters",
            r#"{"threshold_img": "0.9"}"#,
        ])
        .resolve()
        .unwrap();
        assert!(matches!(
            config.miner.scorer,
            hard_example::ScorerConfig::IanvsConfidence { .. }
        ));
        assert!(
            parse(&["--miner", r#"{"scorer": {"name": "nope"}}"#])
                .resolve()
                .is_err()
        );
        assert!(parse(&["--cloud-url", "ftp://x"]).resolve().is_err());
    }

    #[test]
    fn secrets_are_not_printed() {
        let args = parse(&["--api-token", "hunter2"]);
        assert!(!format!("{args:?}").contains("hunter2"));
    }
}

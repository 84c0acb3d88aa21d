//! Command line: every flag also reads an environment variable (`CLOUD_INFER_*`), for containers.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use image::{GrayImage, RgbImage};
use models::image_ops::{class_counts, encode_label_png, encode_png};
use rand::Rng;
use wire::ModelRef;

use crate::http::{Auth, Limits, router};
use crate::queue::{RefineQueue, now_unix_ms};
use crate::refiner::{
    ClassEvidenceArg, FusionArg, PromptModeArg, Refiner, SamRefiner, SamSettings,
};
use crate::replay::{Capacity, CapacityPolicy, NewEntry, ReplayStore, export_index, open_store};

#[derive(Debug, Parser)]
#[command(
    name = "cloud-infer",
    version,
    about = "Cloud refinement of hard frames (MobileSAM + fusion) and the replay buffer"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve `POST /v1/refine`, the buffer stats, health, metrics and API docs.
    Serve(ServeArgs),
    /// Write the replay buffer out as an Ianvs-style dataset (`index.txt` of `image label` lines).
    ExportIndex(ExportArgs),
    /// Durability drill: store synthetic entries in a loop, printing `acked <id>` after each durable put.
    #[command(hide = true)]
    WriteSynthetic(SyntheticArgs),
}

#[derive(Debug, Clone, Args)]
pub struct BufferArgs {
    /// A directory (SQLite backend) or an `s3://bucket/prefix` / `file:///dir` object-store URL.
    #[arg(long, env = "CLOUD_INFER_BUFFER", default_value = "runs/replay-buffer")]
    pub buffer: String,
    /// Entries kept at most; unset keeps everything.
    #[arg(long, env = "CLOUD_INFER_BUFFER_MAX_ENTRIES")]
    pub buffer_max_entries: Option<u64>,
    /// Which entries a full buffer keeps.
    #[arg(
        long,
        env = "CLOUD_INFER_BUFFER_POLICY",
        value_enum,
        default_value = "fifo"
    )]
    pub buffer_policy: CapacityPolicy,
}

impl BufferArgs {
    pub fn open(&self) -> anyhow::Result<Box<dyn ReplayStore>> {
        let capacity = Capacity {
            policy: self.buffer_policy,
            max_entries: self.buffer_max_entries,
        };
        open_store(&self.buffer, capacity)
            .with_context(|| format!("opening the replay buffer {}", self.buffer))
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[arg(long, env = "CLOUD_INFER_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// MobileSAM model directory (with manifest.json); default `models/mobilesam` of the workspace.
    #[arg(long, env = "CLOUD_INFER_SAM_DIR")]
    pub sam_dir: Option<PathBuf>,
    #[command(flatten)]
    pub buffer: BufferArgs,
    /// Bearer tokens allowed to call the API, comma-separated.
    #[arg(long, env = "CLOUD_INFER_TOKENS", value_delimiter = ',')]
    pub tokens: Vec<String>,
    /// Serve without authentication (only when no token is configured).
    #[arg(long, env = "CLOUD_INFER_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// Frames that may wait for the refinement thread; more are refused with 429.
    #[arg(long, env = "CLOUD_INFER_QUEUE_SIZE", default_value_t = 8)]
    pub queue_size: usize,
    /// SAM point grid density (points per image side).
    #[arg(long, env = "CLOUD_INFER_POINTS_PER_SIDE", default_value_t = 32)]
    pub points_per_side: usize,
    #[arg(
        long,
        env = "CLOUD_INFER_PROMPT_MODE",
        value_enum,
        default_value = "guided"
    )]
    pub prompt_mode: PromptModeArg,
    /// Prompt budget per frame for the adaptive and guided modes.
    /// 96 guided prompts take ~2.4 s on 2 cores and reach 97% of the full 32x32 grid's mIoU gain with the Cityscapes
    /// baseline as the edge model; 48 take ~1.4 s and reach 85% (benchmarks/README.md, `amg`).
    #[arg(long, env = "CLOUD_INFER_MAX_PROMPTS", default_value_t = 96)]
    pub max_prompts: usize,
    #[arg(
        long,
        env = "CLOUD_INFER_FUSION",
        value_enum,
        default_value = "confident-vote"
    )]
    pub fusion: FusionArg,
    /// Whose class scores label the masks. `edge-and-head` multiplies the edge's scores with the cloud's semantic
    /// head's (`--semantic-head`), each raised to the exponent in the head's manifest (fitted on day-val by
    /// `trainer fit-evidence-exponents`): on CamVid dusk it lifts the cloud's labels well above the edge's own
    /// (benchmarks/README.md, `miners`).
    #[arg(
        long,
        env = "CLOUD_INFER_CLASS_EVIDENCE",
        value_enum,
        default_value = "edge-and-head"
    )]
    pub class_evidence: ClassEvidenceArg,
    /// The semantic head's model directory; default `models/cloud-head` of the workspace.
    #[arg(long, env = "CLOUD_INFER_SEMANTIC_HEAD")]
    pub semantic_head: Option<PathBuf>,
    #[arg(long, env = "CLOUD_INFER_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Largest image accepted, in pixels (default: 3840x2160).
    #[arg(long, env = "CLOUD_INFER_MAX_PIXELS", default_value_t = 3840 * 2160)]
    pub max_pixels: u64,
    /// ONNX Runtime intra-op threads for MobileSAM (default: all cores).
    #[arg(long, env = "CLOUD_INFER_THREADS")]
    pub threads: Option<usize>,
}

#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub buffer: BufferArgs,
    /// Output directory (gets `index.txt`, `images/`, `labels/`).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct SyntheticArgs {
    #[command(flatten)]
    pub buffer: BufferArgs,
    #[arg(long, default_value_t = 1000)]
    pub count: u64,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::ExportIndex(args) => {
            let store = args.buffer.open()?;
            let summary = export_index(store.as_ref(), &args.out)?;
            println!(
                "exported {} entries to {}",
                summary.entries,
                summary.index.display()
            );
            Ok(())
        }
        Command::WriteSynthetic(args) => write_synthetic(args),
    }
}

/// Runs the service until Ctrl-C or SIGTERM.
pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let auth = match (
        args.tokens.iter().any(|t| !t.is_empty()),
        args.insecure_no_auth,
    ) {
        (true, _) => Auth::Tokens(Arc::new(
            args.tokens
                .iter()
                .filter(|t| !t.is_empty())
                .cloned()
                .collect(),
        )),
        (false, true) => {
            tracing::warn!("authentication is OFF (--insecure-no-auth)");
            Auth::Disabled
        }
        (false, false) => {
            bail!("no --tokens configured; pass some, or --insecure-no-auth to serve without auth")
        }
    };
    // Opened before the async runtime exists: the object-store backend runs its own runtime and blocks on it.
    let store: Arc<dyn ReplayStore> = Arc::from(args.buffer.open()?);
    let sam_dir = args
        .sam_dir
        .clone()
        .unwrap_or_else(|| models::paths::models_dir().join("mobilesam"));
    let settings = SamSettings {
        points_per_side: args.points_per_side,
        prompt_mode: args.prompt_mode,
        max_prompts: args.max_prompts,
        fusion: args.fusion,
        class_evidence: args.class_evidence,
        threads: args
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
    };
    let head_dir = args
        .semantic_head
        .clone()
        .unwrap_or_else(|| models::paths::models_dir().join("cloud-head"));
    let queue = RefineQueue::start(args.queue_size, move || {
        SamRefiner::load(&sam_dir, &head_dir, settings)
            .map(|refiner| Box::new(refiner) as Box<dyn Refiner>)
    });
    let limits = Limits {
        max_body_bytes: args.max_body_bytes,
        max_pixels: args.max_pixels,
    };
    let app = router(queue, Arc::clone(&store), auth, limits);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("binding {}", args.listen))?;
            tracing::info!(listen = %args.listen, buffer = %store.describe(), "cloud-infer serving");
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown_signal())
                .await
                .context("serving")
        })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}

/// Random 32x24 frames with random labels: unique images, so every put is a new entry.
fn write_synthetic(args: SyntheticArgs) -> anyhow::Result<()> {
    let store = args.buffer.open()?;
    let mut rng = rand::rng();
    let (width, height, classes) = (32, 24, 11u8);
    let mut stdout = std::io::stdout().lock();
    for i in 0..args.count {
        let image = RgbImage::from_fn(width, height, |_, _| image::Rgb(rng.random()));
        let labels = GrayImage::from_fn(width, height, |_, _| {
            image::Luma([rng.random_range(0..classes)])
        })
        .into_raw();
        let labels_png = encode_label_png(&labels, width, height)?;
        let entry = NewEntry {
            request_id: format!("synthetic-{i}"),
            robot_id: "drill".into(),
            edge_model: ModelRef {
                name: "synthetic".into(),
                version: "0".into(),
            },
            domain: Some("synthetic".into()),
            miner: "none".into(),
            miner_score: 0.0,
            received_unix_ms: now_unix_ms(),
            image: encode_png(&image)?,
            image_extension: "png".into(),
            width,
            height,
            edge_labels_png: labels_png.clone(),
            cloud_labels_png: labels_png,
            class_pixels: class_counts(&labels, usize::from(classes)),
        };
        let outcome = store.put(&entry)?;
        writeln!(stdout, "acked {}", outcome.id)?;
        stdout.flush()?;
    }
    Ok(())
}

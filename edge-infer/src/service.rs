//! The segmentation service behind the HTTP layer: queue the frame for the edge model, then ask the cloud for hard
//! frames within the request's deadline, falling back to the edge answer on any cloud trouble.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use models::image_ops;
use serde::Serialize;
use utoipa::ToSchema;
use wire::{ModelRef, RefineResponse};

use crate::cloud::{CloudClient, CloudError, RefineRequest};
use crate::config::ServerConfig;
use crate::engine::InferenceQueue;
use crate::error::ApiError;
use crate::frame::{
    self, Collaborate, EdgeFrame, FrameJob, MinerReport, Rendered, SharedMiner, Upload,
};
use crate::metrics;
use crate::registry::{LoadedModel, ModelMirror, ModelRegistry};

/// Time kept back from the deadline for rendering the cloud's answer and sending the response.
const RENDER_RESERVE: Duration = Duration::from_millis(30);
/// Below this, a cloud round trip cannot succeed; don't start one.
const MIN_CLOUD_TIME: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The edge model's answer; the cloud was not asked.
    Edge,
    /// The cloud's refined answer.
    Cloud,
    /// The cloud was asked but failed, was too slow or is cut off by the breaker: the edge model's answer.
    EdgeFallback,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Edge => "edge",
            Self::Cloud => "cloud",
            Self::EdgeFallback => "edge-fallback",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct SegmentOptions {
    pub collaborate: Collaborate,
    pub overlay: bool,
    /// Time from receipt by which the answer is due.
    pub deadline: Option<Duration>,
    pub domain: Option<String>,
}

/// Milliseconds per stage; `cloud_ms` is 0 when the cloud was not asked. `postprocess_ms` is the model output's
/// softmax and argmax, `render_ms` the encoding of the edge's label map (and overlay) and its class counts, which
/// runs side by side with `mining_ms`, so the two overlap in `total_ms`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct Timings {
    pub decode_ms: f64,
    pub queue_ms: f64,
    pub preprocess_ms: f64,
    pub inference_ms: f64,
    pub postprocess_ms: f64,
    pub mining_ms: f64,
    pub render_ms: f64,
    pub cloud_ms: f64,
    pub total_ms: f64,
}

impl Timings {
    fn stages(&self) -> [(&'static str, f64); 9] {
        [
            ("decode", self.decode_ms),
            ("queue", self.queue_ms),
            ("preprocess", self.preprocess_ms),
            ("inference", self.inference_ms),
            ("postprocess", self.postprocess_ms),
            ("mining", self.mining_ms),
            ("render", self.render_ms),
            ("cloud", self.cloud_ms),
            ("total", self.total_ms),
        ]
    }
}

/// The answer to one frame.
pub struct Segmented {
    pub request_id: String,
    pub model: Arc<LoadedModel>,
    pub width: u32,
    pub height: u32,
    pub source: Source,
    pub miner: MinerReport,
    pub timings: Timings,
    pub rendered: Rendered,
    pub cloud_model: Option<ModelRef>,
    /// Why the cloud's answer is not used, when `source` is `edge-fallback`.
    pub fallback_reason: Option<String>,
}

/// Everything a request handler needs, shared by all requests.
pub struct App {
    pub config: ServerConfig,
    pub registry: Arc<ModelRegistry>,
    pub model_mirror: Option<Arc<ModelMirror>>,
    pub queue: InferenceQueue,
    pub miner: Arc<SharedMiner>,
    pub cloud: Option<CloudClient>,
    pub metrics: Option<PrometheusHandle>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid miner configuration: {0}")]
    Miner(#[from] hard_example::ConfigError),
    #[error("cannot build the cloud client: {0}")]
    Cloud(#[from] reqwest::Error),
    #[error("cannot start the inference threads: {0}")]
    Threads(#[from] std::io::Error),
    #[error("cannot open the model registry: {0}")]
    ModelRegistry(#[from] object_registry::RegistryError),
}

impl App {
    /// Builds the service. The model is not loaded here: [`crate::registry::watch`] loads it in the background so
    /// the server answers `/health` at once and `/ready` once the model is in.
    pub fn new(config: ServerConfig) -> Result<Arc<Self>, StartError> {
        // With several inference threads, frames that run beside others get a one-thread session each.
        let narrow_lanes = if config.workers > 1 {
            config.workers
        } else {
            0
        };
        let registry = Arc::new(ModelRegistry::new(
            config.model_dir.clone(),
            config.session,
            narrow_lanes,
        ));
        let model_mirror = config
            .model_registry
            .as_ref()
            .map(|source| ModelMirror::open(source).map(Arc::new))
            .transpose()?;
        let miner = Arc::new(SharedMiner {
            miner: Mutex::new(config.miner.build()?),
            scorer_name: scorer_name(&config.miner),
            started: Instant::now(),
        });
        let queue = InferenceQueue::start(
            config.workers,
            config.queue_size,
            Arc::clone(&registry),
            Arc::clone(&miner),
        )?;
        let cloud = config
            .cloud
            .as_ref()
            .map(|cloud| CloudClient::new(cloud, &config.robot_id))
            .transpose()?;
        Ok(Arc::new(Self {
            registry,
            model_mirror,
            queue,
            miner,
            cloud,
            metrics: metrics::install(),
            config,
        }))
    }

    /// Segments one encoded frame received at `received`.
    pub async fn segment(
        &self,
        image: Bytes,
        options: SegmentOptions,
        received: Instant,
        request_id: String,
    ) -> Result<Segmented, ApiError> {
        let job = FrameJob {
            image: image.clone(),
            collaborate: options.collaborate,
            cloud_available: self.cloud.is_some(),
            overlay: options.overlay,
            max_pixels: self.config.max_pixels,
        };
        let mut edge = self.queue.submit(job).await?;
        let mut source = Source::Edge;
        let mut rendered = None;
        let mut cloud_model = None;
        let mut fallback_reason = None;
        let mut cloud_ms = 0.0;
        if let (Some(upload), Some(cloud)) = (edge.upload.take(), &self.cloud) {
            let cloud_start = Instant::now();
            match self
                .refine(cloud, &edge, upload, image, &options, received, &request_id)
                .await
            {
                Ok((cloud_rendered, model)) => {
                    source = Source::Cloud;
                    rendered = Some(cloud_rendered);
                    cloud_model = Some(model);
                }
                Err(error) => {
                    metrics::cloud_error(error.kind());
                    tracing::debug!(request_id, "cloud refinement skipped: {error}");
                    source = Source::EdgeFallback;
                    fallback_reason = Some(error.to_string());
                }
            }
            cloud_ms = frame::ms_since(cloud_start);
        }
        let t = edge.timings;
        let timings = Timings {
            decode_ms: t.decode_ms,
            queue_ms: t.queue_ms,
            preprocess_ms: t.preprocess_ms,
            inference_ms: t.inference_ms,
            postprocess_ms: t.postprocess_ms,
            mining_ms: t.mining_ms,
            render_ms: t.render_ms,
            cloud_ms,
            total_ms: frame::ms_since(received),
        };
        for (stage, ms) in timings.stages() {
            metrics::stage(stage, ms);
        }
        Ok(Segmented {
            request_id,
            model: edge.model,
            width: edge.width,
            height: edge.height,
            source,
            miner: edge.miner,
            timings,
            rendered: rendered.unwrap_or(edge.rendered),
            cloud_model,
            fallback_reason,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn refine(
        &self,
        cloud: &CloudClient,
        edge: &EdgeFrame,
        upload: Upload,
        image: Bytes,
        options: &SegmentOptions,
        received: Instant,
        request_id: &str,
    ) -> Result<(Rendered, ModelRef), CloudError> {
        let time_left = match options.deadline {
            Some(deadline) => deadline
                .saturating_sub(received.elapsed())
                .saturating_sub(RENDER_RESERVE),
            None => cloud.timeout(),
        };
        let timeout = time_left.min(cloud.timeout());
        if timeout < MIN_CLOUD_TIME {
            return Err(CloudError::NoTimeLeft);
        }
        let request = RefineRequest {
            request_id: request_id.to_owned(),
            image_mime: frame::sniff_mime(&image),
            image,
            scores: upload.scores,
            shape: upload.shape,
            edge_model: edge.model.model_ref(),
            miner_score: edge.miner.score,
            miner: edge.miner.scorer.clone(),
            domain: options.domain.clone(),
        };
        let response = cloud.refine(request, timeout).await?;
        let model = Arc::clone(&edge.model);
        let (width, height) = (edge.width, edge.height);
        let overlay_on = upload.image;
        let cloud_model = response.cloud_model.clone();
        // Decoding and re-encoding the label map is CPU work; keep it off the async threads.
        let rendered = tokio::task::spawn_blocking(move || {
            render_cloud_answer(&response, width, height, overlay_on.as_ref(), &model)
        })
        .await
        .map_err(|e| CloudError::BadResponse(format!("rendering failed: {e}")))??;
        Ok((rendered, cloud_model))
    }
}

fn render_cloud_answer(
    response: &RefineResponse,
    width: u32,
    height: u32,
    overlay_on: Option<&image::RgbImage>,
    model: &LoadedModel,
) -> Result<Rendered, CloudError> {
    let bad = |reason: String| CloudError::BadResponse(reason);
    let png = wire::decode_base64(&response.label_map_png)
        .map_err(|e| bad(format!("label map is not base64: {e}")))?;
    let labels = image_ops::decode_label_png(&png).map_err(|e| bad(format!("label map: {e}")))?;
    if labels.dimensions() != (width, height) {
        return Err(bad(format!(
            "label map is {}x{}, the frame {width}x{height}",
            labels.width(),
            labels.height()
        )));
    }
    frame::render(labels.as_raw(), width, height, overlay_on, model).map_err(|e| bad(e.to_string()))
}

/// The scorer's name as configured (its serde tag), e.g. `cross-entropy`.
fn scorer_name(config: &hard_example::MinerConfig) -> String {
    serde_json::to_value(&config.scorer)
        .ok()
        .and_then(|value| {
            value
                .get("name")
                .and_then(|name| name.as_str().map(str::to_owned))
        })
        .unwrap_or_else(|| "unknown".into())
}

//! The HTTP layer: routes, request parsing and response formatting. The work itself is in [`crate::service`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_scalar::{Scalar, Servable};
use wire::{ErrorBody, ModelRef};

use crate::cloud::BreakerPhase;
use crate::error::ApiError;
use crate::frame::{Collaborate, MinerReport};
use crate::metrics;
use crate::registry::RefusedUpdate;
use crate::service::{App, SegmentOptions, Segmented, Source, Timings};

/// Longest `deadline_ms` a client may ask for.
const MAX_DEADLINE_MS: u64 = 60_000;
const MAX_DOMAIN_LEN: usize = 64;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "edge-infer",
        description = "Semantic segmentation on the robot, refined by the cloud for hard frames"
    ),
    paths(segment, health, ready, info, prometheus, rollback, stream),
    components(schemas(ErrorBody, ModelRef, SegmentResponse, Info, Ready, RolledBack, Health))
)]
pub struct ApiDoc;

/// Builds the router; all state lives in `app`.
pub fn router(app: Arc<App>) -> Router {
    let v1 = Router::new()
        .route("/v1/segment", post(segment))
        .route("/v1/stream", get(stream))
        .route("/v1/model/rollback", post(rollback))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&app),
            require_token,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/info", get(info))
        .route("/metrics", get(prometheus))
        .route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
        .merge(v1)
        .merge(Scalar::with_url("/docs", ApiDoc::openapi()))
        .layer(DefaultBodyLimit::max(app.config.max_body_bytes))
        .with_state(app)
}

async fn require_token(
    State(app): State<Arc<App>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(expected) = &app.config.api_token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        if !given
            .is_some_and(|given| constant_time_eq(given.as_bytes(), expected.expose().as_bytes()))
        {
            drain(request, app.config.max_body_bytes).await;
            return Err(ApiError::Unauthorized);
        }
    }
    Ok(next.run(request).await)
}

/// Compares without an early exit, so response time does not leak how much of a token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SegmentQuery {
    /// `auto` (cloud for hard frames), `never` or `always`.
    #[serde(default)]
    #[param(inline)]
    collaborate: Collaborate,
    /// Milliseconds from receipt by which the answer is due; bounds the wait for the cloud.
    deadline_ms: Option<u64>,
    /// Also render the label map over the image.
    #[serde(default)]
    overlay: bool,
    /// Domain tag passed to the cloud's replay buffer, e.g. `dusk`.
    domain: Option<String>,
}

impl SegmentQuery {
    fn from_request(
        query: Result<Query<Self>, QueryRejection>,
    ) -> Result<SegmentOptions, ApiError> {
        let Query(query) = query.map_err(|rejection| ApiError::BadQuery(rejection.body_text()))?;
        let deadline = match query.deadline_ms {
            Some(ms @ 1..=MAX_DEADLINE_MS) => Some(Duration::from_millis(ms)),
            Some(ms) => {
                return Err(ApiError::BadQuery(format!(
                    "deadline_ms must be within 1..={MAX_DEADLINE_MS}, got {ms}"
                )));
            }
            None => None,
        };
        if let Some(domain) = &query.domain
            && (domain.len() > MAX_DOMAIN_LEN || domain.chars().any(char::is_control))
        {
            return Err(ApiError::BadQuery(format!(
                "domain must be at most {MAX_DOMAIN_LEN} printable characters"
            )));
        }
        Ok(SegmentOptions {
            collaborate: query.collaborate,
            overlay: query.overlay,
            deadline,
            domain: query.domain,
        })
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentResponse {
    pub request_id: String,
    pub model: ModelRef,
    pub width: u32,
    pub height: u32,
    /// Class names; index = label value in the label map.
    pub classes: Vec<String>,
    pub source: Source,
    pub miner: MinerReport,
    pub timings: Timings,
    /// Pixels per class, in the order of `classes`.
    pub class_counts: Vec<u64>,
    /// 8-bit greyscale PNG of class indices at the image's resolution, base64.
    pub label_map_png: String,
    /// The label map blended over the image, PNG, base64; with `overlay=true` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay_png: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_model: Option<ModelRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
}

impl From<Segmented> for SegmentResponse {
    fn from(segmented: Segmented) -> Self {
        Self {
            request_id: segmented.request_id,
            model: segmented.model.model_ref(),
            width: segmented.width,
            height: segmented.height,
            classes: segmented.model.class_names.clone(),
            source: segmented.source,
            miner: segmented.miner,
            timings: segmented.timings,
            class_counts: segmented.rendered.class_counts,
            label_map_png: wire::encode_base64(&segmented.rendered.label_png),
            overlay_png: segmented
                .rendered
                .overlay_png
                .as_deref()
                .map(wire::encode_base64),
            cloud_model: segmented.cloud_model,
            fallback_reason: segmented.fallback_reason,
        }
    }
}

/// Segments one frame.
///
/// The body is a PNG or JPEG image (`image/png`, `image/jpeg`, `application/octet-stream`) or `multipart/form-data`
/// with an `image` part. With `Accept: image/png` the body of the answer is the label map (or the overlay with
/// `overlay=true`) and the metadata travels in `x-*` headers.
#[utoipa::path(
    post,
    path = "/v1/segment",
    params(SegmentQuery),
    request_body(content = Vec<u8>, content_type = "image/png", description = "The encoded frame"),
    responses(
        (status = 200, description = "Segmentation", body = SegmentResponse),
        (status = 400, description = "Bad image or query", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 413, description = "Body or image too large", body = ErrorBody),
        (status = 415, description = "Unsupported content type", body = ErrorBody),
        (status = 429, description = "Queue full; see Retry-After", body = ErrorBody),
        (status = 503, description = "No model loaded yet", body = ErrorBody),
    ),
    tag = "segmentation"
)]
async fn segment(
    State(app): State<Arc<App>>,
    query: Result<Query<SegmentQuery>, QueryRejection>,
    request: Request,
) -> Response {
    let received = Instant::now();
    let wants_png = accepts_png(request.headers());
    let request_id = request_id(request.headers());
    let result = async {
        // The body is read even for a bad query: answering before the upload is consumed makes the server close
        // the connection under a client still sending, which the client sees as a reset instead of our 400.
        let image = read_image(request, app.config.max_body_bytes).await;
        let options = SegmentQuery::from_request(query)?;
        app.segment(image?, options, received, request_id).await
    }
    .await;
    match result {
        Ok(segmented) => {
            metrics::request("ok", segmented.source.as_str());
            if wants_png {
                png_response(segmented)
            } else {
                Json(SegmentResponse::from(segmented)).into_response()
            }
        }
        Err(error) => {
            metrics::request(error.kind(), "none");
            error.into_response()
        }
    }
}

fn accepts_png(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| {
            accept
                .split(',')
                .any(|kind| kind.trim().starts_with("image/png"))
        })
}

/// The client's `x-request-id` when it is a sane token, otherwise a fresh UUID.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

async fn read_image(request: Request, limit: usize) -> Result<Bytes, ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).to_ascii_lowercase());
    let essence = content_type
        .as_deref()
        .and_then(|value| value.split(';').next())
        .map_or("", str::trim);
    let too_large = |status: StatusCode, message: String| {
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge { limit }
        } else {
            ApiError::BadMultipart(message)
        }
    };
    match essence {
        // A missing type is sniffed like octet-stream: the decoder checks the magic bytes anyway.
        "" | "image/png" | "image/jpeg" | "image/jpg" | "application/octet-stream" => {
            let bytes = Bytes::from_request(request, &())
                .await
                .map_err(|rejection| {
                    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        ApiError::BodyTooLarge { limit }
                    } else {
                        ApiError::UnreadableBody(rejection.body_text())
                    }
                })?;
            Ok(bytes)
        }
        "multipart/form-data" => {
            let mut multipart = Multipart::from_request(request, &())
                .await
                .map_err(|rejection| ApiError::BadMultipart(rejection.body_text()))?;
            while let Some(field) = multipart
                .next_field()
                .await
                .map_err(|e| too_large(e.status(), e.body_text()))?
            {
                if field.name() == Some(wire::PART_IMAGE) {
                    return field
                        .bytes()
                        .await
                        .map_err(|e| too_large(e.status(), e.body_text()));
                }
            }
            Err(ApiError::BadMultipart(format!(
                "no `{}` part",
                wire::PART_IMAGE
            )))
        }
        other => {
            let unsupported = ApiError::UnsupportedMediaType(other.to_owned());
            drain(request, limit).await;
            Err(unsupported)
        }
    }
}

/// Reads and drops the body of a request refused early, so the connection stays usable (see [`segment`]).
async fn drain(request: Request, limit: usize) {
    let _ = axum::body::to_bytes(request.into_body(), limit).await;
}

/// The label map (or overlay) as the body, everything else in headers.
fn png_response(segmented: Segmented) -> Response {
    let t = &segmented.timings;
    let timings = format!(
        "decode={:.2},queue={:.2},preprocess={:.2},inference={:.2},postprocess={:.2},mining={:.2},render={:.2},cloud={:.2},total={:.2}",
        t.decode_ms,
        t.queue_ms,
        t.preprocess_ms,
        t.inference_ms,
        t.postprocess_ms,
        t.mining_ms,
        t.render_ms,
        t.cloud_ms,
        t.total_ms
    );
    let join = |items: Vec<String>| items.join(",");
    let mut fields = vec![
        ("x-request-id", segmented.request_id.clone()),
        ("x-model-name", segmented.model.name.clone()),
        ("x-model-version", segmented.model.version.clone()),
        ("x-width", segmented.width.to_string()),
        ("x-height", segmented.height.to_string()),
        ("x-source", segmented.source.as_str().to_owned()),
        ("x-miner-score", segmented.miner.score.to_string()),
        ("x-miner-hard", segmented.miner.hard.to_string()),
        ("x-miner-scorer", segmented.miner.scorer.clone()),
        ("x-classes", join(segmented.model.class_names.clone())),
        (
            "x-class-counts",
            join(
                segmented
                    .rendered
                    .class_counts
                    .iter()
                    .map(u64::to_string)
                    .collect(),
            ),
        ),
        ("x-timings-ms", timings),
    ];
    if let Some(reason) = &segmented.fallback_reason {
        fields.push(("x-fallback-reason", reason.clone()));
    }
    let body = segmented
        .rendered
        .overlay_png
        .unwrap_or(segmented.rendered.label_png);
    let mut response = (
        [(header::CONTENT_TYPE, HeaderValue::from_static("image/png"))],
        body,
    )
        .into_response();
    let headers = response.headers_mut();
    for (name, value) in fields {
        // Values that are not valid header text (exotic class names, error messages) are left out, not fatal.
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    response
}

/// A stream of frames over one WebSocket: send each frame as a binary message, receive one JSON text message per
/// frame (a segmentation like `/v1/segment`'s or an error body). Frames are answered in order, one at a time.
#[utoipa::path(
    get,
    path = "/v1/stream",
    params(SegmentQuery),
    responses((status = 101, description = "WebSocket upgrade")),
    tag = "segmentation"
)]
async fn stream(
    State(app): State<Arc<App>>,
    query: Result<Query<SegmentQuery>, QueryRejection>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let options = SegmentQuery::from_request(query)?;
    let limit = app.config.max_body_bytes;
    Ok(upgrade
        .max_message_size(limit)
        .on_upgrade(move |socket| serve_stream(socket, app, options)))
}

async fn serve_stream(mut socket: WebSocket, app: Arc<App>, options: SegmentOptions) {
    while let Some(Ok(message)) = socket.recv().await {
        let reply = match message {
            Message::Binary(frame) => {
                let received = Instant::now();
                let id = uuid::Uuid::new_v4().to_string();
                match app.segment(frame, options.clone(), received, id).await {
                    Ok(segmented) => {
                        metrics::request("ok", segmented.source.as_str());
                        serde_json::to_string(&SegmentResponse::from(segmented))
                    }
                    Err(error) => {
                        metrics::request(error.kind(), "none");
                        serde_json::to_string(&error.body())
                    }
                }
            }
            Message::Text(_) => serde_json::to_string(&ErrorBody {
                error: "send frames as binary messages".into(),
                kind: "not_an_image".into(),
            }),
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        let Ok(reply) = reply else { break };
        if socket.send(Message::Text(reply.into())).await.is_err() {
            break;
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", responses((status = 200, body = Health)), tag = "operations")]
async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    pub model: ModelRef,
}

/// Readiness: a model is loaded.
#[utoipa::path(
    get,
    path = "/ready",
    responses((status = 200, body = Ready), (status = 503, body = ErrorBody)),
    tag = "operations"
)]
async fn ready(State(app): State<Arc<App>>) -> Result<Json<Ready>, ApiError> {
    let model = app.registry.current().ok_or(ApiError::ModelNotReady)?;
    Ok(Json(Ready {
        model: model.model_ref(),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Info {
    pub service: &'static str,
    pub version: &'static str,
    /// The `/v1/refine` protocol spoken to the cloud.
    pub protocol: &'static str,
    pub model: Option<ModelInfo>,
    pub model_dir: String,
    /// The object-store registry followed, when one is.
    pub model_registry_url: Option<String>,
    /// Seconds between checks for a new model; absent when hot updates are off.
    pub model_poll_secs: Option<u64>,
    /// Why the last model update was refused, while the refused files are in place.
    pub refused_update: Option<RefusedUpdate>,
    pub miner: MinerInfo,
    pub cloud: Option<CloudInfo>,
    pub queue: QueueInfo,
    pub max_body_bytes: usize,
    pub max_pixels: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub parent_version: Option<String>,
    pub classes: Vec<ClassView>,
    pub input_width: u32,
    pub input_height: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClassView {
    pub id: u8,
    pub name: String,
    pub color: [u8; 3],
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MinerInfo {
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
    pub frames: u64,
    pub uploads: u64,
    pub upload_ratio: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CloudInfo {
    pub url: String,
    pub timeout_ms: u128,
    pub breaker: BreakerPhase,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueInfo {
    pub capacity: usize,
    pub depth: usize,
    pub workers: usize,
}

/// What is running: model, classes, miner, cloud link and queue.
#[utoipa::path(get, path = "/info", responses((status = 200, body = Info)), tag = "operations")]
async fn info(State(app): State<Arc<App>>) -> Json<Info> {
    let model = app.registry.current().map(|model| {
        let manifest = model.model.manifest();
        ModelInfo {
            name: model.name.clone(),
            version: model.version.clone(),
            parent_version: manifest.provenance.parent_version.clone(),
            classes: model
                .classes()
                .iter()
                .map(|class| ClassView {
                    id: class.id,
                    name: class.name.clone(),
                    color: class.color,
                })
                .collect(),
            input_width: manifest.input.width,
            input_height: manifest.input.height,
        }
    });
    let stats = app
        .miner
        .miner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .stats();
    Json(Info {
        service: env!("CARGO_PKG_NAME"),
        version: env!("CARGO_PKG_VERSION"),
        protocol: wire::PROTOCOL_VERSION,
        model,
        model_dir: app.registry.dir().display().to_string(),
        model_registry_url: app.model_mirror.as_ref().map(|m| m.url().to_string()),
        model_poll_secs: app.config.model_poll.map(|every| every.as_secs()),
        refused_update: app.registry.last_refused(),
        miner: MinerInfo {
            config: serde_json::to_value(&app.config.miner).unwrap_or_default(),
            frames: stats.frames,
            uploads: stats.uploads,
            upload_ratio: stats.upload_ratio(),
        },
        cloud: app.cloud.as_ref().map(|cloud| CloudInfo {
            url: cloud.base_url().to_owned(),
            timeout_ms: cloud.timeout().as_millis(),
            breaker: cloud.breaker().phase(),
        }),
        queue: QueueInfo {
            capacity: app.queue.capacity(),
            depth: app.queue.depth(),
            workers: app.queue.workers(),
        },
        max_body_bytes: app.config.max_body_bytes,
        max_pixels: app.config.max_pixels,
    })
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", responses((status = 200, content_type = "text/plain")), tag = "operations")]
async fn prometheus(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let handle = app
        .metrics
        .as_ref()
        .ok_or_else(|| ApiError::Internal("another metrics recorder owns this process".into()))?;
    handle.run_upkeep();
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        handle.render(),
    )
        .into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RolledBack {
    pub from: String,
    pub to: String,
}

/// Swaps back to the model served before the last update (calling it again rolls forward).
#[utoipa::path(
    post,
    path = "/v1/model/rollback",
    responses((status = 200, body = RolledBack), (status = 409, body = ErrorBody)),
    tag = "operations"
)]
async fn rollback(State(app): State<Arc<App>>) -> Result<Json<RolledBack>, ApiError> {
    let (from, to) = app.registry.rollback().ok_or(ApiError::NoPreviousModel)?;
    Ok(Json(RolledBack { from, to }))
}

//! The HTTP layer: parse and validate, hand the frame to the queue, store the result, answer. Everything heavy
//! happens on the refinement thread or in `spawn_blocking`.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::{DefaultBodyLimit, Multipart, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use image::ImageFormat;
use metrics_exporter_prometheus::PrometheusHandle;
use models::image_ops::{class_counts, encode_label_png};
use serde::Serialize;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_scalar::{Scalar, Servable};
use wire::{
    ErrorBody, PART_EDGE_SCORES, PART_IMAGE, PART_META, RefineMeta, RefineResponse, RefineTimings,
};

use crate::error::ApiError;
use crate::queue::{Readiness, RefineQueue, RefineRequest, RefinedFrame, now_unix_ms};
use crate::refiner::RefinerInfo;
use crate::replay::{BufferStats, NewEntry, PutOutcome, ReplayStore};
use crate::telemetry;

/// Who may call the protected routes.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Any of these bearer tokens.
    Tokens(Arc<Vec<String>>),
    /// Everyone (only with `--insecure-no-auth`).
    Disabled,
}

impl Auth {
    fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Auth::Tokens(tokens) = self else {
            return Ok(());
        };
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or(ApiError::MissingToken)?;
        let value = value.to_str().map_err(|_| ApiError::MalformedToken)?;
        let (scheme, token) = value.split_once(' ').ok_or(ApiError::MalformedToken)?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return Err(ApiError::MalformedToken);
        }
        // Compare against every token without stopping early, so timing says nothing about near misses.
        let allowed = tokens.iter().fold(false, |found, candidate| {
            found | constant_time_eq(candidate.as_bytes(), token.as_bytes())
        });
        if allowed {
            Ok(())
        } else {
            Err(ApiError::WrongToken)
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_pixels: u64,
}

#[derive(Clone)]
struct AppState {
    queue: RefineQueue,
    store: Arc<dyn ReplayStore>,
    limits: Limits,
    metrics: PrometheusHandle,
}

/// The whole service as a router, ready for `axum::serve` (or an in-process test).
pub fn router(
    queue: RefineQueue,
    store: Arc<dyn ReplayStore>,
    auth: Auth,
    limits: Limits,
) -> Router {
    let state = AppState {
        queue,
        store,
        limits,
        metrics: telemetry::handle(),
    };
    let protected = Router::new()
        .route("/v1/refine", post(refine))
        .route("/v1/buffer/stats", get(buffer_stats))
        .route_layer(middleware::from_fn_with_state(auth, require_bearer));
    Router::new()
        .merge(protected)
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/info", get(info))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .merge(Scalar::with_url("/docs", ApiDoc::openapi()))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .with_state(state)
}

async fn require_bearer(State(auth): State<Auth>, request: Request, next: Next) -> Response {
    match auth.check(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(error) => {
            telemetry::record_outcome(error.kind());
            error.into_response()
        }
    }
}

/// The `multipart/form-data` body of `POST /v1/refine` (documentation only; the handler reads the parts itself).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct RefineForm {
    /// `RefineMeta` as JSON.
    #[schema(value_type = RefineMeta)]
    meta: String,
    /// The frame, JPEG or PNG.
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
    /// u8-quantised edge class probabilities, CHW, `meta.scores` in size.
    #[schema(value_type = String, format = Binary)]
    edge_scores: Vec<u8>,
}

/// Refine a hard frame with MobileSAM + fusion and store it in the replay buffer.
#[utoipa::path(
    post,
    path = "/v1/refine",
    request_body(content = RefineForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, body = RefineResponse),
        (status = 400, description = "Malformed parts, bad image or scores, protocol mismatch", body = ErrorBody),
        (status = 401, description = "Missing or malformed bearer token", body = ErrorBody),
        (status = 403, description = "Token not allowed", body = ErrorBody),
        (status = 413, description = "Body or image over the limits", body = ErrorBody),
        (status = 429, description = "Queue full (see Retry-After)", body = ErrorBody),
        (status = 503, description = "Model not ready (see Retry-After)", body = ErrorBody),
        (status = 504, description = "Deadline passed; the frame was dropped", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn refine(
    State(app): State<AppState>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<RefineResponse>, ApiError> {
    let result = refine_upload(&app, multipart).await;
    telemetry::record_outcome(match &result {
        Ok(_) => "refined",
        Err(error) => error.kind(),
    });
    result.map(Json)
}

struct Upload {
    meta: RefineMeta,
    image: Bytes,
    edge_scores: Bytes,
}

async fn refine_upload(
    app: &AppState,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<RefineResponse, ApiError> {
    let started = Instant::now();
    let received_unix_ms = now_unix_ms();
    let multipart = multipart.map_err(|rejection| ApiError::BadMultipart(rejection.body_text()))?;
    let upload = read_upload(multipart, app.limits).await?;
    validate_meta(&upload)?;
    let image_extension = check_image_header(&upload.image, app.limits.max_pixels)?;
    if received_unix_ms > upload.meta.deadline_unix_ms {
        return Err(ApiError::DeadlineExpired);
    }
    // From here on the work runs as its own task, so a frame the cloud accepted is refined and stored even when
    // the edge stops waiting (a robot's deadline is often shorter than a refinement): the replay buffer still
    // learns from it. Dropping the handle detaches the task rather than cancelling it.
    let app = app.clone();
    tokio::spawn(async move {
        refine_and_store(&app, upload, image_extension, started, received_unix_ms).await
    })
    .await
    .map_err(|e| ApiError::Internal(format!("the refinement task failed: {e}")))?
}

/// Refines an accepted upload and stores it in the replay buffer.
async fn refine_and_store(
    app: &AppState,
    upload: Upload,
    image_extension: &'static str,
    started: Instant,
    received_unix_ms: u64,
) -> Result<RefineResponse, ApiError> {
    let refined = app
        .queue
        .refine(RefineRequest {
            image: upload.image.clone(),
            edge_scores: upload.edge_scores,
            scores_shape: upload.meta.scores,
            deadline_unix_ms: upload.meta.deadline_unix_ms,
            max_pixels: app.limits.max_pixels,
        })
        .await?;

    let store = Arc::clone(&app.store);
    let meta = upload.meta.clone();
    let store_started = Instant::now();
    let (label_map_png, outcome, refined) = tokio::task::spawn_blocking(move || {
        store_refined(
            store.as_ref(),
            &meta,
            upload.image,
            image_extension,
            &refined,
            received_unix_ms,
        )
        .map(|(png, outcome)| (png, outcome, refined))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("the storing task failed: {e}")))??;
    let store_ms = store_started.elapsed().as_secs_f64() * 1e3;
    let total_ms = started.elapsed().as_secs_f64() * 1e3;

    for (stage, ms) in [
        ("queue", refined.queue_ms),
        ("encoder", refined.encoder_ms),
        ("decoder", refined.decoder_ms),
        ("fusion", refined.fusion_ms),
        ("store", store_ms),
        ("total", total_ms),
    ] {
        telemetry::record_stage(stage, ms);
    }
    telemetry::record_masks(refined.mask_count);
    let Readiness::Ready(refiner) = app.queue.readiness() else {
        return Err(ApiError::Internal("the refiner stopped being ready".into()));
    };
    Ok(RefineResponse {
        protocol: wire::PROTOCOL_VERSION.to_string(),
        request_id: upload.meta.request_id,
        cloud_model: refiner.model,
        width: refined.width,
        height: refined.height,
        fusion: refiner.fusion,
        mask_count: refined.mask_count,
        label_map_png: wire::encode_base64(&label_map_png),
        stored: outcome.stored,
        timings: RefineTimings {
            queue_ms: refined.queue_ms,
            encoder_ms: refined.encoder_ms,
            decoder_ms: refined.decoder_ms,
            fusion_ms: refined.fusion_ms,
            total_ms,
        },
    })
}

async fn read_upload(mut multipart: Multipart, limits: Limits) -> Result<Upload, ApiError> {
    let part_error = |error: MultipartError| {
        if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge {
                limit: limits.max_body_bytes,
            }
        } else {
            ApiError::BadMultipart(error.body_text())
        }
    };
    let (mut meta, mut image, mut edge_scores) = (None, None, None);
    while let Some(field) = multipart.next_field().await.map_err(part_error)? {
        // Unknown parts are skipped (not refused) so newer edges can add parts without breaking older clouds.
        let slot = match field.name() {
            Some(PART_META) => &mut meta,
            Some(PART_IMAGE) => &mut image,
            Some(PART_EDGE_SCORES) => &mut edge_scores,
            _ => continue,
        };
        *slot = Some(field.bytes().await.map_err(part_error)?);
    }
    let meta = meta.ok_or(ApiError::MissingPart(PART_META))?;
    let meta: RefineMeta =
        serde_json::from_slice(&meta).map_err(|e| ApiError::BadMeta(e.to_string()))?;
    Ok(Upload {
        meta,
        image: image.ok_or(ApiError::MissingPart(PART_IMAGE))?,
        edge_scores: edge_scores.ok_or(ApiError::MissingPart(PART_EDGE_SCORES))?,
    })
}

fn validate_meta(upload: &Upload) -> Result<(), ApiError> {
    let meta = &upload.meta;
    if !wire::compatible(&meta.protocol) {
        return Err(ApiError::ProtocolMismatch {
            got: meta.protocol.clone(),
        });
    }
    let shape = meta.scores;
    if shape.classes == 0 || shape.classes > 256 || shape.width == 0 || shape.height == 0 {
        return Err(ApiError::BadScores(format!(
            "shape {}x{}x{} (classes x height x width) must be non-empty with at most 256 classes",
            shape.classes, shape.height, shape.width
        )));
    }
    if upload.edge_scores.len() != shape.len() {
        return Err(ApiError::BadScores(format!(
            "{} bytes, but meta.scores {}x{}x{} needs {}",
            upload.edge_scores.len(),
            shape.classes,
            shape.height,
            shape.width,
            shape.len()
        )));
    }
    Ok(())
}

/// Reads only the image header: the format and the pixel limit are checked before the frame takes a queue slot.
/// Returns the file extension to store the frame under.
fn check_image_header(bytes: &[u8], max_pixels: u64) -> Result<&'static str, ApiError> {
    let format =
        image::guess_format(bytes).map_err(|_| ApiError::BadImage("not a PNG or JPEG".into()))?;
    let extension = match format {
        ImageFormat::Png => "png",
        ImageFormat::Jpeg => "jpg",
        other => {
            return Err(ApiError::BadImage(format!(
                "{other:?} is not supported (send PNG or JPEG)"
            )));
        }
    };
    let (width, height) = image::ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| ApiError::BadImage(e.to_string()))?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels == 0 {
        return Err(ApiError::BadImage("the image has no pixels".into()));
    }
    if pixels > max_pixels {
        return Err(ApiError::TooManyPixels {
            width,
            height,
            pixels,
            limit: max_pixels,
        });
    }
    Ok(extension)
}

/// Encodes both label maps and stores the entry; returns the cloud label PNG for the answer.
fn store_refined(
    store: &dyn ReplayStore,
    meta: &RefineMeta,
    image: Bytes,
    image_extension: &str,
    refined: &RefinedFrame,
    received_unix_ms: u64,
) -> Result<(Vec<u8>, PutOutcome), ApiError> {
    let encode = |labels: &[u8]| {
        encode_label_png(labels, refined.width, refined.height)
            .map_err(|e| ApiError::Internal(e.to_string()))
    };
    let cloud_labels_png = encode(&refined.labels)?;
    let entry = NewEntry {
        request_id: meta.request_id.clone(),
        robot_id: meta.robot_id.clone(),
        edge_model: meta.edge_model.clone(),
        domain: meta.domain.clone(),
        miner: meta.miner.clone(),
        miner_score: meta.miner_score,
        received_unix_ms,
        image: image.to_vec(),
        image_extension: image_extension.to_string(),
        width: refined.width,
        height: refined.height,
        edge_labels_png: encode(&refined.edge_labels)?,
        cloud_labels_png,
        class_pixels: class_counts(&refined.labels, refined.classes),
    };
    let outcome = store.put(&entry)?;
    Ok((entry.cloud_labels_png, outcome))
}

/// Size and make-up of the replay buffer.
#[utoipa::path(get, path = "/v1/buffer/stats",
    responses((status = 200, body = BufferStats), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
async fn buffer_stats(State(app): State<AppState>) -> Result<Json<BufferStats>, ApiError> {
    let stats = tokio::task::spawn_blocking(move || app.store.stats())
        .await
        .map_err(|e| ApiError::Internal(format!("the stats task failed: {e}")))??;
    telemetry::set_buffer(&stats);
    Ok(Json(stats))
}

#[derive(Serialize, utoipa::ToSchema)]
struct HealthResponse {
    status: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", responses((status = 200, body = HealthResponse)))]
async fn health() -> Json<HealthResponse> {
    Json(HealthResponse { status: "ok" })
}

#[derive(Serialize, utoipa::ToSchema)]
struct ReadyResponse {
    ready: bool,
    /// `loading`, `ready` or `failed`.
    state: &'static str,
    error: Option<String>,
}

/// Readiness: the refinement model is loaded (503 while loading or after a failed load).
#[utoipa::path(get, path = "/ready", responses((status = 200, body = ReadyResponse), (status = 503, body = ReadyResponse)))]
async fn ready(State(app): State<AppState>) -> (StatusCode, Json<ReadyResponse>) {
    let (status, state, error) = match app.queue.readiness() {
        Readiness::Ready(_) => (StatusCode::OK, "ready", None),
        Readiness::Loading => (StatusCode::SERVICE_UNAVAILABLE, "loading", None),
        Readiness::Failed(error) => (StatusCode::SERVICE_UNAVAILABLE, "failed", Some(error)),
    };
    let ready = status == StatusCode::OK;
    (
        status,
        Json(ReadyResponse {
            ready,
            state,
            error,
        }),
    )
}

#[derive(Serialize, utoipa::ToSchema)]
struct InfoResponse {
    service: &'static str,
    version: &'static str,
    protocol: &'static str,
    /// The model, fusion rule and prompt mode; absent until the model has loaded.
    refiner: Option<RefinerInfo>,
    buffer: String,
    queue_size: usize,
    max_body_bytes: usize,
    max_pixels: u64,
}

/// What this service runs.
#[utoipa::path(get, path = "/info", responses((status = 200, body = InfoResponse)))]
async fn info(State(app): State<AppState>) -> Json<InfoResponse> {
    Json(InfoResponse {
        service: env!("CARGO_PKG_NAME"),
        version: env!("CARGO_PKG_VERSION"),
        protocol: wire::PROTOCOL_VERSION,
        refiner: match app.queue.readiness() {
            Readiness::Ready(info) => Some(info),
            _ => None,
        },
        buffer: app.store.describe(),
        queue_size: app.queue.capacity(),
        max_body_bytes: app.limits.max_body_bytes,
        max_pixels: app.limits.max_pixels,
    })
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", responses((status = 200, content_type = "text/plain", body = String)))]
async fn metrics(State(app): State<AppState>) -> Response {
    let store = Arc::clone(&app.store);
    match tokio::task::spawn_blocking(move || store.stats()).await {
        Ok(Ok(stats)) => telemetry::set_buffer(&stats),
        Ok(Err(error)) => tracing::warn!(%error, "could not read replay-buffer stats for /metrics"),
        Err(error) => tracing::warn!(%error, "the replay-buffer stats task failed"),
    }
    app.metrics.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(uri.path().to_string())
}

#[derive(OpenApi)]
#[openapi(
    info(title = "cloud-infer", description = "MobileSAM refinement of hard frames and the replay buffer they land in"),
    paths(refine, buffer_stats, health, ready, info, metrics),
    components(schemas(RefineForm, RefineMeta, RefineResponse, ErrorBody, BufferStats)),
    modifiers(&BearerSecurity)
)]
pub struct ApiDoc;

struct BearerSecurity;

impl utoipa::Modify for BearerSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

//! Every way a request can fail, and the one place that turns a failure into a status code and a JSON body.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use wire::ErrorBody;

use crate::replay::ReplayError;

/// Seconds a client should wait before retrying a full queue or a loading model.
const RETRY_AFTER_BUSY_S: u32 = 1;
const RETRY_AFTER_LOADING_S: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing bearer token (send `Authorization: Bearer <token>`)")]
    MissingToken,
    #[error("malformed Authorization header (expected `Bearer <token>`)")]
    MalformedToken,
    #[error("the bearer token is not allowed here")]
    WrongToken,
    #[error("malformed multipart body: {0}")]
    BadMultipart(String),
    #[error("the request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("missing multipart part `{0}`")]
    MissingPart(&'static str),
    #[error("part `meta` is not a valid RefineMeta: {0}")]
    BadMeta(String),
    #[error(
        "protocol {got} is not compatible with this service's {}",
        wire::PROTOCOL_VERSION
    )]
    ProtocolMismatch { got: String },
    #[error("part `edge_scores` is invalid: {0}")]
    BadScores(String),
    #[error("part `image` is invalid: {0}")]
    BadImage(String),
    #[error("the image is {width}x{height} = {pixels} pixels, more than the limit of {limit}")]
    TooManyPixels {
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },
    #[error("the request's deadline passed before it could be refined; it was dropped")]
    DeadlineExpired,
    #[error("the refinement queue is full; retry later")]
    QueueFull,
    #[error("the refinement model is not ready: {0}")]
    NotReady(String),
    #[error("refinement failed: {0}")]
    Refinement(String),
    #[error(transparent)]
    Buffer(#[from] ReplayError),
    #[error("no route {0}")]
    NotFound(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MissingToken | ApiError::MalformedToken => StatusCode::UNAUTHORIZED,
            ApiError::WrongToken => StatusCode::FORBIDDEN,
            ApiError::BadMultipart(_)
            | ApiError::MissingPart(_)
            | ApiError::BadMeta(_)
            | ApiError::ProtocolMismatch { .. }
            | ApiError::BadScores(_)
            | ApiError::BadImage(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTooLarge { .. } | ApiError::TooManyPixels { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::DeadlineExpired => StatusCode::GATEWAY_TIMEOUT,
            ApiError::QueueFull => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Refinement(_) | ApiError::Buffer(_) | ApiError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The stable machine-readable `kind` of [`ErrorBody`], also the `outcome` label of the request metric.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::MissingToken | ApiError::MalformedToken => "unauthorized",
            ApiError::WrongToken => "forbidden",
            ApiError::BadMultipart(_) => "bad_multipart",
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::MissingPart(_) => "missing_part",
            ApiError::BadMeta(_) => "bad_meta",
            ApiError::ProtocolMismatch { .. } => "protocol_mismatch",
            ApiError::BadScores(_) => "bad_scores",
            ApiError::BadImage(_) => "bad_image",
            ApiError::TooManyPixels { .. } => "too_many_pixels",
            ApiError::DeadlineExpired => "deadline_expired",
            ApiError::QueueFull => "queue_full",
            ApiError::NotReady(_) => "not_ready",
            ApiError::Refinement(_) => "refinement_failed",
            ApiError::Buffer(_) => "buffer_error",
            ApiError::NotFound(_) => "not_found",
            ApiError::Internal(_) => "internal",
        }
    }

    fn retry_after_s(&self) -> Option<u32> {
        match self {
            ApiError::QueueFull => Some(RETRY_AFTER_BUSY_S),
            ApiError::NotReady(_) => Some(RETRY_AFTER_LOADING_S),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, kind = self.kind(), "request failed");
        }
        let body = ErrorBody {
            error: self.to_string(),
            kind: self.kind().to_string(),
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after_s() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

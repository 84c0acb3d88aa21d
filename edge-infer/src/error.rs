//! Every way a request can fail, mapped to a status code and a [`wire::ErrorBody`] in one place.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use models::image_ops::ImageError;
use wire::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request body is empty")]
    EmptyBody,
    #[error("the body is not a PNG or JPEG image")]
    NotAnImage,
    #[error("the image could not be decoded (truncated or corrupt): {0}")]
    CorruptImage(String),
    #[error("{0}")]
    TooManyPixels(String),
    #[error(
        "unsupported content type `{0}`: send image/png, image/jpeg, application/octet-stream or multipart/form-data \
         with an `image` part"
    )]
    UnsupportedMediaType(String),
    #[error("the body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("bad multipart body: {0}")]
    BadMultipart(String),
    #[error("the body could not be read: {0}")]
    UnreadableBody(String),
    #[error("bad query: {0}")]
    BadQuery(String),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("the inference queue is full, retry later")]
    QueueFull { retry_after_secs: u64 },
    #[error("no model is loaded yet")]
    ModelNotReady,
    #[error("there is no previous model to roll back to")]
    NoPreviousModel,
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::EmptyBody
            | Self::NotAnImage
            | Self::CorruptImage(_)
            | Self::BadMultipart(_)
            | Self::UnreadableBody(_)
            | Self::BadQuery(_) => StatusCode::BAD_REQUEST,
            Self::TooManyPixels(_) | Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::ModelNotReady => StatusCode::SERVICE_UNAVAILABLE,
            Self::NoPreviousModel => StatusCode::CONFLICT,
            Self::Inference(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable machine-readable kind, also the `outcome` label of the request counter.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::EmptyBody => "empty_body",
            Self::NotAnImage => "not_an_image",
            Self::CorruptImage(_) => "corrupt_image",
            Self::TooManyPixels(_) => "too_many_pixels",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::BadMultipart(_) => "bad_multipart",
            Self::UnreadableBody(_) => "unreadable_body",
            Self::BadQuery(_) => "bad_query",
            Self::Unauthorized => "unauthorized",
            Self::QueueFull { .. } => "queue_full",
            Self::ModelNotReady => "model_not_ready",
            Self::NoPreviousModel => "no_previous_model",
            Self::Inference(_) => "inference_failed",
            Self::Internal(_) => "internal",
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.to_string(),
            kind: self.kind().to_owned(),
        }
    }
}

impl From<ImageError> for ApiError {
    fn from(error: ImageError) -> Self {
        match error {
            ImageError::Empty => Self::EmptyBody,
            ImageError::UnsupportedFormat => Self::NotAnImage,
            ImageError::Decode(message) => Self::CorruptImage(message),
            too_many @ ImageError::TooManyPixels { .. } => {
                Self::TooManyPixels(too_many.to_string())
            }
            other @ ImageError::LabelSize { .. } => Self::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status().is_server_error() {
            tracing::error!(kind = self.kind(), "{self}");
        }
        let mut response = (self.status(), Json(self.body())).into_response();
        let headers = response.headers_mut();
        match &self {
            Self::QueueFull { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            Self::ModelNotReady => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

//! The client for cloud-infer's `POST /v1/refine`, behind a circuit breaker so a dead cloud costs the robot
//! nothing but a skipped refinement.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use reqwest::multipart::{Form, Part};
use serde::Serialize;
use utoipa::ToSchema;
use wire::{ErrorBody, ModelRef, QuantisedScores, RefineMeta, RefineResponse};

use crate::config::{CloudConfig, Secret};
use crate::metrics;

#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays open before one probe request may try the cloud again.
    pub cool_down: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerPhase {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is in flight; everyone else still falls back.
    HalfOpen,
}

/// Closed → (N consecutive failures) → open → (cool-down) → half-open with one probe → closed on success, open
/// again on failure.
#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: Mutex<BreakerState>,
}

/// Permission to call the cloud. Dropping it without [`Permit::record`] (a cancelled request) counts as a failure,
/// so an abandoned probe cannot leave the breaker half-open forever.
#[must_use]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    recorded: bool,
}

impl Permit<'_> {
    pub fn record(mut self, success: bool) {
        self.recorded = true;
        self.breaker.record(self.probe, success);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.recorded && self.probe {
            self.breaker.record(true, false);
        }
    }
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: Mutex::new(BreakerState::Closed { failures: 0 }),
        }
    }

    pub fn phase(&self) -> BreakerPhase {
        match *self.lock() {
            BreakerState::Closed { .. } => BreakerPhase::Closed,
            BreakerState::Open { .. } => BreakerPhase::Open,
            BreakerState::HalfOpen => BreakerPhase::HalfOpen,
        }
    }

    pub fn try_acquire(&self) -> Option<Permit<'_>> {
        let mut state = self.lock();
        let probe = match *state {
            BreakerState::Closed { .. } => false,
            BreakerState::Open { until } if Instant::now() >= until => {
                *state = BreakerState::HalfOpen;
                true
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen => return None,
        };
        Some(Permit {
            breaker: self,
            probe,
            recorded: false,
        })
    }

    fn record(&self, probe: bool, success: bool) {
        let mut state = self.lock();
        let next = match (&*state, success) {
            (_, true) => BreakerState::Closed { failures: 0 },
            (BreakerState::Closed { failures }, false)
                if failures + 1 < self.config.failure_threshold =>
            {
                BreakerState::Closed {
                    failures: failures + 1,
                }
            }
            (BreakerState::Closed { .. }, false) => self.open(),
            (BreakerState::HalfOpen, false) if probe => self.open(),
            // A straggler that started before the breaker opened changes nothing.
            (BreakerState::HalfOpen | BreakerState::Open { .. }, false) => return,
        };
        let opened = !matches!(next, BreakerState::Closed { .. });
        if opened != !matches!(*state, BreakerState::Closed { .. }) {
            tracing::warn!(open = opened, "cloud circuit breaker changed state");
        }
        metrics::breaker_open(opened);
        *state = next;
    }

    fn open(&self) -> BreakerState {
        BreakerState::Open {
            until: Instant::now() + self.config.cool_down,
        }
    }

    fn lock(&self) -> MutexGuard<'_, BreakerState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("the circuit breaker is open after repeated cloud failures")]
    BreakerOpen,
    #[error("the request deadline leaves no time for the cloud")]
    NoTimeLeft,
    #[error("the cloud did not answer within {0} ms")]
    Timeout(u128),
    #[error("cannot reach the cloud: {0}")]
    Unreachable(String),
    #[error("the cloud answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("the cloud's answer is unusable: {0}")]
    BadResponse(String),
}

impl CloudError {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BreakerOpen => "breaker_open",
            Self::NoTimeLeft => "no_time_left",
            Self::Timeout(_) => "timeout",
            Self::Unreachable(_) => "unreachable",
            Self::Status { .. } => "status",
            Self::BadResponse(_) => "bad_response",
        }
    }

    /// Whether this says the cloud is unhealthy (as opposed to refusing this one frame).
    fn is_cloud_failure(&self) -> bool {
        match self {
            Self::Status { status, .. } => *status >= 500 || *status == 429,
            _ => true,
        }
    }
}

/// One frame to refine.
pub struct RefineRequest {
    pub request_id: String,
    pub image: Bytes,
    pub image_mime: &'static str,
    pub scores: Vec<u8>,
    pub shape: QuantisedScores,
    pub edge_model: ModelRef,
    pub miner_score: f32,
    pub miner: String,
    pub domain: Option<String>,
}

pub struct CloudClient {
    http: reqwest::Client,
    refine_url: String,
    base_url: String,
    token: Option<Secret>,
    timeout: Duration,
    robot_id: String,
    breaker: CircuitBreaker,
}

impl CloudClient {
    pub fn new(config: &CloudConfig, robot_id: &str) -> Result<Self, reqwest::Error> {
        // reqwest is built without a bundled crypto provider (ring builds in seconds, aws-lc in minutes); install
        // ring unless the process already chose one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(config.timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self {
            http,
            refine_url: config.refine_url(),
            base_url: config.base_url.clone(),
            token: config.token.clone(),
            timeout: config.timeout,
            robot_id: robot_id.to_owned(),
            breaker: CircuitBreaker::new(config.breaker),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The longest the client waits, before any request deadline shortens it.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// Sends one frame, giving up after `timeout`.
    pub async fn refine(
        &self,
        request: RefineRequest,
        timeout: Duration,
    ) -> Result<RefineResponse, CloudError> {
        let permit = self.breaker.try_acquire().ok_or(CloudError::BreakerOpen)?;
        let result = self.send(request, timeout).await;
        permit.record(
            result
                .as_ref()
                .map_or_else(|error| !error.is_cloud_failure(), |_| true),
        );
        result
    }

    async fn send(
        &self,
        request: RefineRequest,
        timeout: Duration,
    ) -> Result<RefineResponse, CloudError> {
        let deadline = SystemTime::now() + timeout;
        let meta = RefineMeta {
            protocol: wire::PROTOCOL_VERSION.to_owned(),
            request_id: request.request_id.clone(),
            robot_id: self.robot_id.clone(),
            edge_model: request.edge_model,
            deadline_unix_ms: deadline
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |since| since.as_millis() as u64),
            miner_score: request.miner_score,
            miner: request.miner,
            domain: request.domain,
            scores: request.shape,
        };
        let meta_json =
            serde_json::to_vec(&meta).map_err(|e| CloudError::BadResponse(e.to_string()))?;
        let sent_bytes = meta_json.len() + request.image.len() + request.scores.len();
        let bad_part = |e: reqwest::Error| CloudError::BadResponse(e.to_string());
        let form = Form::new()
            .part(
                wire::PART_META,
                Part::bytes(meta_json)
                    .mime_str("application/json")
                    .map_err(bad_part)?,
            )
            .part(
                wire::PART_IMAGE,
                Part::bytes(request.image.to_vec())
                    .file_name("frame")
                    .mime_str(request.image_mime)
                    .map_err(bad_part)?,
            )
            .part(
                wire::PART_EDGE_SCORES,
                Part::bytes(request.scores)
                    .mime_str("application/octet-stream")
                    .map_err(bad_part)?,
            );
        let mut builder = self
            .http
            .post(&self.refine_url)
            .timeout(timeout)
            .multipart(form);
        if let Some(token) = &self.token {
            builder = builder.bearer_auth(token.expose());
        }
        let transport = |error: reqwest::Error| {
            if error.is_timeout() {
                CloudError::Timeout(timeout.as_millis())
            } else {
                CloudError::Unreachable(error_chain(&error))
            }
        };
        let response = builder.send().await.map_err(transport)?;
        metrics::cloud_bytes(sent_bytes);
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            let message = serde_json::from_str::<ErrorBody>(&text).map_or(text, |body| body.error);
            return Err(CloudError::Status {
                status: status.as_u16(),
                message: message.chars().take(300).collect(),
            });
        }
        let body = response.bytes().await.map_err(transport)?;
        let refined: RefineResponse =
            serde_json::from_slice(&body).map_err(|e| CloudError::BadResponse(e.to_string()))?;
        if !wire::compatible(&refined.protocol) {
            return Err(CloudError::BadResponse(format!(
                "protocol {} is incompatible with {}",
                refined.protocol,
                wire::PROTOCOL_VERSION
            )));
        }
        Ok(refined)
    }
}

/// reqwest's top-level message hides the cause ("error sending request"); the chain says what went wrong.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(cool_down_ms: u64) -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig {
            failure_threshold: 2,
            cool_down: Duration::from_millis(cool_down_ms),
        })
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let breaker = breaker(60_000);
        breaker.try_acquire().unwrap().record(false);
        breaker.try_acquire().unwrap().record(true);
        breaker.try_acquire().unwrap().record(false);
        assert_eq!(breaker.phase(), BreakerPhase::Closed);
        breaker.try_acquire().unwrap().record(false);
        assert_eq!(breaker.phase(), BreakerPhase::Open);
        assert!(breaker.try_acquire().is_none());
    }

    #[test]
    fn half_open_lets_one_probe_through_and_closes_on_success() {
        let breaker = breaker(0);
        breaker.try_acquire().unwrap().record(false);
        breaker.try_acquire().unwrap().record(false);
        let probe = breaker.try_acquire().expect("cool-down over");
        assert_eq!(breaker.phase(), BreakerPhase::HalfOpen);
        assert!(breaker.try_acquire().is_none(), "only one probe at a time");
        probe.record(true);
        assert_eq!(breaker.phase(), BreakerPhase::Closed);
    }

    #[test]
    fn a_failed_or_abandoned_probe_opens_again() {
        let breaker = breaker(0);
        breaker.try_acquire().unwrap().record(false);
        breaker.try_acquire().unwrap().record(false);
        breaker.try_acquire().unwrap().record(false);
        assert_eq!(breaker.phase(), BreakerPhase::Open);
        drop(breaker.try_acquire().expect("cool-down over"));
        assert_eq!(breaker.phase(), BreakerPhase::Open);
    }
}

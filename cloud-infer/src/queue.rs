//! The bounded queue in front of the refinement thread. The encoder is the expensive, CPU-bound step, so frames
//! are refined one at a time on a dedicated OS thread (never on the async runtime), with at most `capacity` frames
//! waiting; a frame whose deadline passed while it waited is dropped without being computed.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use models::image_ops::{ImageError, decode_rgb};
use tokio::sync::oneshot;
use wire::QuantisedScores;

use crate::error::ApiError;
use crate::refiner::{RefineFrame, Refiner, RefinerError, RefinerInfo};
use crate::scores::{dequantise_scores, upsample_bilinear};
use crate::telemetry;

/// A validated request, still encoded: decoding is CPU work for the refinement thread.
pub struct RefineRequest {
    pub image: Bytes,
    pub edge_scores: Bytes,
    pub scores_shape: QuantisedScores,
    pub deadline_unix_ms: u64,
    pub max_pixels: u64,
}

#[derive(Debug, Clone)]
pub struct RefinedFrame {
    pub width: u32,
    pub height: u32,
    pub classes: usize,
    pub labels: Vec<u8>,
    /// Argmax of the upsampled edge scores: what the robot saw, kept next to the refinement in the buffer.
    pub edge_labels: Vec<u8>,
    pub mask_count: u32,
    pub queue_ms: f64,
    pub encoder_ms: f64,
    pub decoder_ms: f64,
    pub fusion_ms: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Readiness {
    Loading,
    Ready(RefinerInfo),
    Failed(String),
}

struct Job {
    request: RefineRequest,
    enqueued: Instant,
    reply: oneshot::Sender<Result<RefinedFrame, ApiError>>,
}

struct Shared {
    readiness: Mutex<Readiness>,
    depth: AtomicUsize,
}

impl Shared {
    fn set_readiness(&self, readiness: Readiness) {
        *self.readiness.lock().unwrap_or_else(|p| p.into_inner()) = readiness;
    }

    fn left_queue(&self) {
        let depth = self.depth.fetch_sub(1, Ordering::Relaxed) - 1;
        telemetry::set_queue_depth(depth);
    }
}

#[derive(Clone)]
pub struct RefineQueue {
    jobs: SyncSender<Job>,
    shared: Arc<Shared>,
    capacity: usize,
}

impl RefineQueue {
    /// Starts the refinement thread, which first runs `load` (model loading takes seconds; the server answers
    /// 503 meanwhile). The thread ends once every clone of the queue is dropped.
    pub fn start<L>(capacity: usize, load: L) -> Self
    where
        L: FnOnce() -> Result<Box<dyn Refiner>, RefinerError> + Send + 'static,
    {
        let (jobs, receiver) = sync_channel(capacity);
        let shared = Arc::new(Shared {
            readiness: Mutex::new(Readiness::Loading),
            depth: AtomicUsize::new(0),
        });
        let worker_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("refiner".into())
            .spawn(move || run_worker(receiver, &worker_shared, load))
            .expect("spawning the refinement thread");
        Self {
            jobs,
            shared,
            capacity,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn readiness(&self) -> Readiness {
        self.shared
            .readiness
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Queues the frame and waits for its refinement; refuses at once when the queue is full or not ready.
    pub async fn refine(&self, request: RefineRequest) -> Result<RefinedFrame, ApiError> {
        match self.readiness() {
            Readiness::Ready(_) => {}
            Readiness::Loading => {
                return Err(ApiError::NotReady("the model is still loading".into()));
            }
            Readiness::Failed(error) => return Err(ApiError::NotReady(error)),
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            request,
            enqueued: Instant::now(),
            reply,
        };
        // Count before sending: the worker may pick the job up (and decrement) before try_send returns.
        let depth = self.shared.depth.fetch_add(1, Ordering::Relaxed) + 1;
        match self.jobs.try_send(job) {
            Ok(()) => telemetry::set_queue_depth(depth),
            Err(error) => {
                self.shared.depth.fetch_sub(1, Ordering::Relaxed);
                return Err(match error {
                    TrySendError::Full(_) => ApiError::QueueFull,
                    TrySendError::Disconnected(_) => {
                        ApiError::NotReady("the refinement thread has stopped".into())
                    }
                });
            }
        }
        answer
            .await
            .map_err(|_| ApiError::Internal("the refinement thread dropped the request".into()))?
    }
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn run_worker<L>(receiver: Receiver<Job>, shared: &Shared, load: L)
where
    L: FnOnce() -> Result<Box<dyn Refiner>, RefinerError>,
{
    let mut refiner = match load() {
        Ok(refiner) => {
            tracing::info!(info = ?refiner.info(), "refinement model ready");
            shared.set_readiness(Readiness::Ready(refiner.info()));
            refiner
        }
        Err(error) => {
            tracing::error!(%error, "the refinement model failed to load");
            shared.set_readiness(Readiness::Failed(error.0.clone()));
            for job in receiver {
                shared.left_queue();
                let _ = job.reply.send(Err(ApiError::NotReady(error.0.clone())));
            }
            return;
        }
    };
    for job in receiver {
        shared.left_queue();
        let queue_ms = job.enqueued.elapsed().as_secs_f64() * 1e3;
        if job.reply.is_closed() {
            // The client hung up while the frame waited: nobody would read the answer.
            continue;
        }
        let result = if now_unix_ms() > job.request.deadline_unix_ms {
            Err(ApiError::DeadlineExpired)
        } else {
            // A panicking model must not take the only refinement thread down with it.
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                refine_one(refiner.as_mut(), &job.request, queue_ms)
            }))
            .unwrap_or_else(|_| Err(ApiError::Refinement("the refiner panicked".into())))
        };
        let _ = job.reply.send(result);
    }
}

fn refine_one(
    refiner: &mut dyn Refiner,
    request: &RefineRequest,
    queue_ms: f64,
) -> Result<RefinedFrame, ApiError> {
    let image = decode_rgb(&request.image, request.max_pixels).map_err(|error| match error {
        ImageError::TooManyPixels {
            width,
            height,
            pixels,
            limit,
        } => ApiError::TooManyPixels {
            width,
            height,
            pixels,
            limit,
        },
        other => ApiError::BadImage(other.to_string()),
    })?;
    let (width, height) = image.dimensions();
    let edge_scores = dequantise_scores(&request.edge_scores, request.scores_shape);
    let edge_scores_full = upsample_bilinear(&edge_scores, width, height);
    let edge_labels = edge_scores_full.labels();
    let refinement = refiner
        .refine(RefineFrame {
            image: &image,
            edge_scores: &edge_scores,
            edge_scores_full: &edge_scores_full,
        })
        .map_err(|e| ApiError::Refinement(e.0))?;
    if refinement.labels.len() != edge_labels.len() {
        return Err(ApiError::Refinement(format!(
            "the refiner returned {} labels for a {width}x{height} image",
            refinement.labels.len()
        )));
    }
    Ok(RefinedFrame {
        width,
        height,
        classes: edge_scores.classes,
        labels: refinement.labels,
        edge_labels,
        mask_count: refinement.mask_count,
        queue_ms,
        encoder_ms: refinement.encoder_ms,
        decoder_ms: refinement.decoder_ms,
        fusion_ms: refinement.fusion_ms,
    })
}

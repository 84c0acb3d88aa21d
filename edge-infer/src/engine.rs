//! The bounded inference queue: frames wait in a fixed-size channel for dedicated inference threads, so model work
//! never runs on (or starves) the async runtime and overload turns into quick 429s instead of growing latency.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use models::Lane;
use tokio::sync::oneshot;

use crate::error::ApiError;
use crate::frame::{self, EdgeFrame, FrameJob, SharedMiner};
use crate::metrics;
use crate::registry::ModelRegistry;

struct Queued {
    job: FrameJob,
    enqueued: Instant,
    reply: oneshot::Sender<Result<EdgeFrame, ApiError>>,
}

/// Initial guess of the time one frame takes, before any was measured.
const INITIAL_SERVICE_MS: u64 = 200;

pub struct InferenceQueue {
    sender: SyncSender<Queued>,
    depth: Arc<AtomicUsize>,
    capacity: usize,
    workers: usize,
    /// Moving average of the time one frame occupies a thread, for Retry-After.
    service_ms: Arc<AtomicU64>,
}

impl InferenceQueue {
    /// Starts `workers` inference threads behind a queue holding at most `capacity` waiting frames.
    pub fn start(
        workers: usize,
        capacity: usize,
        registry: Arc<ModelRegistry>,
        miner: Arc<SharedMiner>,
    ) -> std::io::Result<Self> {
        let (sender, receiver) = mpsc::sync_channel::<Queued>(capacity);
        let receiver = Arc::new(Mutex::new(receiver));
        let depth = Arc::new(AtomicUsize::new(0));
        let busy = Arc::new(AtomicUsize::new(0));
        let service_ms = Arc::new(AtomicU64::new(INITIAL_SERVICE_MS));
        for index in 0..workers {
            let worker = Worker {
                receiver: Arc::clone(&receiver),
                depth: Arc::clone(&depth),
                busy: Arc::clone(&busy),
                service_ms: Arc::clone(&service_ms),
                registry: Arc::clone(&registry),
                miner: Arc::clone(&miner),
            };
            std::thread::Builder::new()
                .name(format!("inference-{index}"))
                .spawn(move || worker.run())?;
        }
        Ok(Self {
            sender,
            depth,
            capacity,
            workers,
            service_ms,
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Queues a frame and waits for its result, or refuses at once when the queue is full.
    pub async fn submit(&self, job: FrameJob) -> Result<EdgeFrame, ApiError> {
        let (reply, answer) = oneshot::channel();
        // Count before sending so a fast worker never decrements below zero.
        let depth = self.depth.fetch_add(1, Ordering::Relaxed) + 1;
        let queued = Queued {
            job,
            enqueued: Instant::now(),
            reply,
        };
        match self.sender.try_send(queued) {
            Ok(()) => metrics::queue_depth(depth),
            Err(refused) => {
                self.depth.fetch_sub(1, Ordering::Relaxed);
                return Err(match refused {
                    TrySendError::Full(_) => ApiError::QueueFull {
                        retry_after_secs: self.retry_after_secs(),
                    },
                    TrySendError::Disconnected(_) => {
                        ApiError::Internal("the inference threads have stopped".into())
                    }
                });
            }
        }
        answer
            .await
            .map_err(|_| ApiError::Internal("the inference thread dropped the frame".into()))?
    }

    /// Time until a queue slot is likely free: the whole queue drained by all threads, at least one second.
    fn retry_after_secs(&self) -> u64 {
        let service_ms = self.service_ms.load(Ordering::Relaxed);
        let backlog = (self.capacity + self.workers) as u64;
        (backlog * service_ms / self.workers.max(1) as u64)
            .div_ceil(1000)
            .max(1)
    }
}

struct Worker {
    receiver: Arc<Mutex<Receiver<Queued>>>,
    depth: Arc<AtomicUsize>,
    /// Frames the inference threads are working on.
    busy: Arc<AtomicUsize>,
    service_ms: Arc<AtomicU64>,
    registry: Arc<ModelRegistry>,
    miner: Arc<SharedMiner>,
}

impl Worker {
    /// Serves frames until every sender is gone (the server shut down).
    fn run(self) {
        loop {
            let next = {
                let receiver = self
                    .receiver
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                receiver.recv()
            };
            let Ok(queued) = next else { return };
            let depth = self.depth.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
            metrics::queue_depth(depth);
            if queued.reply.is_closed() {
                // The client gave up while waiting; don't spend a model run on it.
                continue;
            }
            let started = Instant::now();
            let queue_ms = (started - queued.enqueued).as_secs_f64() * 1e3;
            // A frame alone gets all the model's threads (the lowest latency); frames that overlap run on one
            // thread each, side by side (the most frames per second).
            let alone = self.busy.fetch_add(1, Ordering::SeqCst) == 0 && depth == 0;
            let lane = if alone { Lane::Wide } else { Lane::Narrow };
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                frame::process(queued.job, queue_ms, lane, &self.registry, &self.miner)
            }))
            .unwrap_or_else(|_| {
                Err(ApiError::Internal(
                    "the inference thread panicked on this frame".into(),
                ))
            });
            self.busy.fetch_sub(1, Ordering::SeqCst);
            self.record_service_time(started);
            let _ = queued.reply.send(result);
        }
    }

    fn record_service_time(&self, started: Instant) {
        let sample = started.elapsed().as_millis() as u64;
        let old = self.service_ms.load(Ordering::Relaxed);
        // A racy update is fine: this only sizes Retry-After.
        self.service_ms
            .store((old * 7 + sample) / 8, Ordering::Relaxed);
    }
}

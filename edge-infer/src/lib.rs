//! edge-infer: the robot's segmentation API.
//!
//! Frames arrive over HTTP (`POST /v1/segment`) or a WebSocket (`/v1/stream`), wait in a bounded queue for the
//! edge model on dedicated inference threads, are scored by the hard-example miner, and hard frames are refined by
//! cloud-infer (`POST /v1/refine`) within the request's deadline. Any cloud trouble degrades to the edge answer
//! (`source = edge-fallback`), and a circuit breaker stops calling a dead cloud. The model directory is watched
//! and new verified versions are swapped in without dropping requests.
//!
//! [`serve`] runs the whole server on a listener; [`api::router`] builds the router for in-process use.

pub mod api;
pub mod cloud;
pub mod config;
pub mod engine;
pub mod error;
pub mod frame;
pub mod metrics;
pub mod registry;
pub mod service;

use std::future::Future;

use tokio::net::TcpListener;

pub use config::{Cli, Command, ServeArgs, ServerConfig};
pub use service::{App, StartError};

/// Serves until `shutdown` resolves, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = App::new(config)?;
    let watcher = tokio::spawn(registry::watch(
        std::sync::Arc::clone(&app.registry),
        app.model_mirror.clone(),
        app.config.model_poll,
    ));
    let served = axum::serve(listener, api::router(app))
        .with_graceful_shutdown(shutdown)
        .await;
    watcher.abort();
    Ok(served?)
}

/// Resolves on ctrl-c or SIGTERM (what Kubernetes and systemd send).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for ctrl-c: {error}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!("cannot listen for SIGTERM: {error}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

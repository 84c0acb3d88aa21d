use anyhow::Context;
use clap::Parser;
use edge_infer::{Cli, Command};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Serve(args) => {
            let config = args.resolve()?;
            // The pool that turns a model output into an answer (labels, scores, rendering) once the run is done:
            // as many threads as the model runs may use at once, whose cores are idle by then.
            rayon::ThreadPoolBuilder::new()
                .num_threads(config.session.intra_threads.max(config.workers))
                .thread_name(|index| format!("answer-{index}"))
                .build_global()
                .context("cannot start the answer threads")?;
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("cannot listen on {}", args.listen))?;
            tracing::info!(
                listen = %args.listen,
                model_dir = %config.model_dir.display(),
                cloud = config.cloud.as_ref().map_or("none", |cloud| cloud.base_url.as_str()),
                "edge-infer serving"
            );
            edge_infer::serve(listener, config, edge_infer::shutdown_signal()).await
        }
    }
}

//! Measurement runs over real frames. Each subcommand lives in its own module and can write its Markdown table
//! into a marked section of `benchmarks/README.md`.

mod amg;
mod cloud_labels;
mod edge_overhead;
mod miners;
mod report;
mod run;
mod segmenter;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Benchmarks of the perception stack on real frames")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// An Ianvs-style benchmarking job: paradigms x algorithms x hyperparameter sweeps, rank CSVs, plots.
    Run(run::Args),
    /// MobileSAM automatic mask generation: prompting modes x fusion rules, time and mIoU.
    Amg(amg::Args),
    /// Hard-example scorers: rank correlation with edge error, collaborative mIoU at 10/20/30% upload.
    Miners(miners::MinersArgs),
    /// Edge service overhead: raw ONNX Runtime vs a full POST /v1/segment round trip, latency and throughput.
    EdgeOverhead(edge_overhead::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run::run(&args),
        Command::Amg(args) => amg::run(&args),
        Command::Miners(args) => miners::run(args),
        Command::EdgeOverhead(args) => edge_overhead::run(&args),
    }
}

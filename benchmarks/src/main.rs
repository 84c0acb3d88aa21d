//! Measurement runs over real frames. Each subcommand lives in its own module and can write its Markdown table
//! into a marked section of `benchmarks/README.md`.

mod amg;
mod report;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Benchmarks of the perception stack on real frames")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// MobileSAM automatic mask generation: prompting modes x fusion rules, time and mIoU.
    Amg(amg::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Amg(args) => amg::run(&args),
    }
}

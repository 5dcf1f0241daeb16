//! The `e2e-infra` command: plan, bring up, inspect and clean stacks.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod images;
mod plan;
mod stacks;

#[derive(Parser)]
#[command(name = "e2e-infra", version, about = "One tag, one build, one deploy per end-to-end test run")]
struct Cli {
    /// The catalog file (default: E2E_INFRA_CONFIG, else the nearest e2e-infra.toml).
    #[arg(long, global = true)]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the plan of the current run: the one tag, every image reference, in dependency order.
    Plan(plan::Args),
    /// Build, load, deploy and wait until ready; leave the stack running.
    Up(stacks::UpArgs),
    /// Remove a consumer's stacks.
    Down(stacks::DownArgs),
    /// List the stacks on the engine (and cluster): run, consumer, alive, dead, kept or manual.
    Status(stacks::StatusArgs),
    /// Remove what finished or killed runs left behind; with --images, the image tags of older runs too.
    Clean(CleanAll),
}

/// `clean`: stacks first, so that tags only a dead run's containers used
/// are no longer in use when the images are looked at.
#[derive(clap::Args)]
struct CleanAll {
    #[command(flatten)]
    stacks: stacks::CleanArgs,
    #[command(flatten)]
    images: images::ImagesArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One short line per stage and component; RUST_LOG gives more.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("e2e_infra=info")),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .init();
    let result = match cli.command {
        Command::Plan(args) => plan::run(cli.config.as_deref(), &args),
        Command::Up(args) => stacks::up(cli.config.as_deref(), args),
        Command::Down(args) => stacks::down(&args),
        Command::Status(args) => stacks::status(&args),
        Command::Clean(args) => stacks::clean(&args.stacks).and_then(|()| images::clean(&args.images)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

//! The `e2e-infra` command: plan, bring up, inspect and clean stacks.
//!
//! Every failure is a [`CliError`](error::CliError) with its own exit code,
//! listed in `docs/cli.md`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod error;
mod images;
mod output;
mod plan;
mod report;
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
    /// List the stacks on the engine (and cluster): run, consumer, alive, dead, foreign, kept, reuse or manual.
    Status(stacks::StatusArgs),
    /// Remove what finished or killed runs left behind; with --images, the image tags of older runs too.
    Clean(CleanAll),
    /// Print a stack's logs, every container or one component's; --follow keeps printing.
    Logs(report::LogsArgs),
    /// Write the report folder of a live or kept stack: plan, timings, build output, each component's logs and state.
    Report(report::ReportArgs),
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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // `--help` and `--version` are "errors" that print to standard output.
        Err(usage) => {
            let code = if usage.use_stderr() { error::code::USAGE } else { error::code::OK };
            // Nothing is left to report to if the terminal is gone.
            let _ = usage.print();
            return ExitCode::from(code);
        }
    };
    // One short line per stage and component; RUST_LOG gives more.
    e2e_infra::cli_support::progress::init(
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("e2e_infra=info")),
    );
    let result = match cli.command {
        Command::Plan(args) => plan::run(cli.config.as_deref(), &args),
        Command::Up(args) => stacks::up(cli.config.as_deref(), args),
        Command::Down(args) => stacks::down(&args),
        Command::Status(args) => stacks::status(&args),
        Command::Clean(args) => {
            stacks::clean(&args.stacks).and_then(|()| images::clean(&args.images, args.stacks.consumer.as_ref()))
        }
        Command::Logs(args) => report::logs(&args),
        Command::Report(args) => report::report(&args),
    };
    match result {
        Ok(()) => ExitCode::from(error::code::OK),
        Err(error) => error.report(),
    }
}

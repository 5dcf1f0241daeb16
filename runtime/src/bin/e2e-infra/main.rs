//! The `e2e-infra` command: plan, bring up, inspect and clean stacks.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod plan;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Plan(args) => plan::run(cli.config.as_deref(), &args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

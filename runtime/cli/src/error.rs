//! Why a command failed, and the exit code each reason gives.
//!
//! A message states what failed; its cause is reached only through
//! `source()`, so [`report`] prints each cause once, in order.

use std::process::ExitCode;

use e2e_infra::backend::BackendError;
use e2e_infra::cli_support::housekeeping::HousekeepingError;
use e2e_infra::cli_support::report::logs::LogsError;
use e2e_infra::cli_support::report::ReportError;
use e2e_infra::engine::EngineError;
use e2e_infra::plan::IdentityError;
use e2e_infra::stack::StackError;
use e2e_infra::{CatalogError, Echo, PlanError};

/// The exit codes, as `docs/cli.md` lists them.
pub mod code {
    /// The command did what it was asked.
    pub const OK: u8 = 0;
    /// This machine let the command down: no async runtime, no randomness,
    /// no current directory, a closed output.
    pub const HOST: u8 = 1;
    /// The command line does not parse (clap reports these).
    pub const USAGE: u8 = 2;
    /// The catalog, the consumer and needs, the run id or the backend flags
    /// are wrong: fix the input and run it again.
    pub const CONFIG: u8 = 3;
    /// The container engine or the cluster cannot be reached or listed.
    pub const UNREACHABLE: u8 = 4;
    /// Bringing a stack up, taking one down or cleaning failed part way.
    pub const STACK: u8 = 5;
    /// `down` found no stack to take down.
    pub const NO_STACK: u8 = 6;
    /// `up` found the stack of its run already up and created nothing.
    pub const ALREADY_UP: u8 = 7;
    /// `down` found a run still going and removed nothing.
    pub const ALIVE: u8 = 8;
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
// Fields named for what they hold carry no doc of their own.
#[allow(missing_docs)]
pub enum CliError {
    /// The catalog cannot be found, read or accepted.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The consumer, the needs or the registry do not make a plan.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The run id cannot be had.
    #[error(transparent)]
    RunId(#[from] IdentityError),
    /// The backend flags do not make a backend.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The current directory, where the catalog search starts, cannot be read.
    #[error("reading the current directory failed")]
    CurrentDir(#[source] std::io::Error),
    /// No run id was given and none could be made.
    #[error("reading /dev/urandom for a run id failed; set E2E_INFRA_RUN_ID")]
    RandomRunId(#[source] std::io::Error),
    /// The async runtime the engine calls run on did not start.
    #[error("starting an async runtime failed")]
    AsyncRuntime(#[source] std::io::Error),
    /// Standard output is closed or full.
    #[error("writing to standard output failed")]
    Output(#[source] std::io::Error),
    /// No container engine answers.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The stacks on the engine or the cluster could not be listed.
    #[error("listing the stacks failed")]
    List(#[source] StackError),
    /// `up` of a run whose stack is already up.
    #[error("a `{consumer}` stack of run `{run}` is already up; nothing was created. Take it down with `{take_down}`, or use another run id")]
    AlreadyUp {
        consumer: String,
        run: String,
        /// The command that takes the stack down.
        take_down: String,
    },
    /// `up` failed; what it created was removed where it could be.
    #[error("bringing the stack up failed; what this command created was removed where it could be; list what is left with `e2e-infra status`")]
    Up(#[source] StackError),
    /// The stack is up, but the marker that keeps it until `down` could
    /// not be made.
    #[error("the stack is up, but marking it as finished failed, so it counts as dead once this command exits and `e2e-infra clean` may remove it; take it down with `{take_down}` and bring it up again")]
    MarkUp {
        take_down: String,
        /// The engine's or cluster's error.
        source: StackError,
    },
    /// `up` got SIGINT or SIGTERM and removed what it had created.
    #[error("`up` was stopped by {signal}; it removed what it had created ({removed})")]
    Interrupted {
        signal: &'static str,
        /// What was removed.
        removed: String,
    },
    /// The signal handlers of `up` could not be installed.
    #[error("installing the SIGINT and SIGTERM handlers failed")]
    Signals(#[source] std::io::Error),
    /// Taking a stack down failed.
    #[error("taking down {consumer} run {run} failed")]
    Down { consumer: String, run: String, source: StackError },
    /// `down` of a run whose launcher still runs, without `--force`.
    #[error("the `{consumer}` stack of {runs} is in use: its launcher still runs; nothing was removed. Let that run finish or stop it, or remove the stack under it with `{force}`")]
    Alive {
        consumer: String,
        /// Each run still going, with its launcher.
        runs: String,
        /// The command that removes it anyway.
        force: String,
    },
    /// `down` found nothing to take down.
    #[error("no stack of consumer `{}`{run} on this engine{place}; `e2e-infra status{flags}` lists what there is", Echo(.consumer))]
    NoStack {
        consumer: String,
        /// " and run `r`" when a run was named.
        run: String,
        /// Where else was looked, or how to look there.
        place: &'static str,
        /// The flags that name the cluster again.
        flags: String,
    },
    /// Removing the stacks of finished runs failed.
    #[error("cleaning the stacks of finished runs failed")]
    Clean(#[source] StackError),
    /// Removing the image tags of older runs failed.
    #[error("removing the image tags of older runs failed")]
    Images(#[source] HousekeepingError),
    /// `logs` or `report` was not told which of the consumer's stacks.
    #[error("consumer `{}` has {} stacks (runs {}); pick one with --run", Echo(.consumer), runs.len(), runs.join(", "))]
    Ambiguous { consumer: String, runs: Vec<String> },
    /// Reading a stack's logs failed.
    #[error("printing the logs failed")]
    Logs(#[source] LogsError),
    /// Writing a report folder failed.
    #[error("writing the report failed")]
    Report(#[source] ReportError),
}

impl CliError {
    /// The exit code of this failure; see [`code`].
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Catalog(_) | Self::Plan(_) | Self::RunId(_) | Self::Backend(_) => code::CONFIG,
            Self::CurrentDir(_) | Self::RandomRunId(_) | Self::AsyncRuntime(_) | Self::Signals(_) | Self::Output(_) => {
                code::HOST
            }
            Self::Engine(_) | Self::List(_) => code::UNREACHABLE,
            Self::Up(_)
            | Self::MarkUp { .. }
            | Self::Down { .. }
            | Self::Clean(_)
            | Self::Images(_)
            | Self::Interrupted { .. } => code::STACK,
            Self::NoStack { .. } => code::NO_STACK,
            Self::Ambiguous { .. } => code::CONFIG,
            Self::Logs(_) | Self::Report(_) => code::STACK,
            Self::AlreadyUp { .. } => code::ALREADY_UP,
            Self::Alive { .. } => code::ALIVE,
        }
    }

    /// Prints the error and its causes on standard error; the exit code.
    pub fn report(&self) -> ExitCode {
        eprintln!("error: {}", e2e_infra::error::error_chain(self));
        ExitCode::from(self.exit_code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_failure_has_its_code() {
        let io = || std::io::Error::other("closed");
        let cases = [
            (CliError::Catalog(CatalogError::NotFound { start: "/".into() }), code::CONFIG),
            (CliError::AsyncRuntime(io()), code::HOST),
            (CliError::Output(io()), code::HOST),
            (
                CliError::AlreadyUp { consumer: "c".into(), run: "r".into(), take_down: "e2e-infra down".into() },
                code::ALREADY_UP,
            ),
            (
                CliError::NoStack { consumer: "c".into(), run: String::new(), place: "", flags: String::new() },
                code::NO_STACK,
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(error.exit_code(), expected, "{error}");
        }
    }

    #[test]
    fn a_cause_is_printed_once_after_what_failed() {
        let error = CliError::Output(std::io::Error::other("broken pipe"));
        assert_eq!(
            e2e_infra::error::error_chain(&error),
            "writing to standard output failed\n  caused by: broken pipe"
        );
    }
}

//! Teardown after the run, in a process of its own.
//!
//! The process that sets the stack up starts its own executable (the test
//! binary) once more, in a process group of its own with its output in the
//! run's state directory, with the teardown's request in its environment.
//! This crate's constructor, which runs before the test harness's `main`,
//! recognises that process, tears down and exits: no test exists for it,
//! and the suite's crate has no code for it. That process waits for the
//! run's launcher (cargo, cargo-nextest) to exit and then removes the stack.
//! Neither a panicking test nor a test process killed with SIGKILL stops
//! it; if it is killed itself, the next run or `e2e-infra clean` finds the
//! leftovers by their labels.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::background;
use crate::error::error_chain;
use crate::stack::StackError;
use crate::record::RunKey;
use crate::state::RunDir;
use crate::backend::KubeTarget;
use super::KEEP_ENV;
use crate::plan::{Launcher, Plan, RunId, RUN_ID_ENV};

/// Holds the [`Request`] of a teardown process, as JSON.
const REQUEST_ENV: &str = "E2E_INFRA_TEARDOWN";
/// Arguments for the test harness of the teardown process. The constructor
/// exits before the harness starts; were it ever not linked in, the harness
/// only lists the tests named so (none) instead of running the run's tests
/// once more.
const HARNESS_ARGS: [&str; 3] = ["--list", "--exact", "e2e-infra teardown"];
const POLL: Duration = Duration::from_millis(200);

/// What a teardown process removes, and after which process. The run id
/// travels in [`RUN_ID_ENV`], as in every process of the run.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    consumer: String,
    /// [`Launcher::label`] of the run's launcher.
    launcher: String,
    /// The cluster of a Kubernetes suite, from the suite rather than from a
    /// record: a setup that failed half-way recorded no stack, but may have
    /// loaded images and created a namespace.
    kube: Option<KubeTarget>,
}

ctor::declarative::ctor! {
    /// In the teardown process, tears down and ends the process before the
    /// test harness starts; in every other process, returns at once.
    #[ctor(unsafe)]
    fn at_process_start() {
        let Some(request) = std::env::var_os(REQUEST_ENV) else { return };
        // Unwinding out of a constructor aborts: end with an exit code.
        let code = match std::panic::catch_unwind(|| teardown(&request.to_string_lossy())) {
            Ok(()) => 0,
            Err(_) => 101,
        };
        std::process::exit(code);
    }
}

/// Starts the teardown process for this run and consumer.
pub(super) fn spawn(plan: &Plan, kube: Option<KubeTarget>, dir: &RunDir) {
    let Some(launcher) = plan.run().launcher() else {
        tracing::warn!("no launcher process known: the stack stays until `e2e-infra clean`");
        return;
    };
    let request = Request { consumer: plan.consumer().as_str().to_owned(), launcher: launcher.label(), kube };
    let started = (|| -> std::io::Result<()> {
        let log = dir.open_reaper_log()?;
        Command::new(std::env::current_exe()?)
            .args(HARNESS_ARGS)
            .env(RUN_ID_ENV, plan.run().as_str())
            .env(REQUEST_ENV, serde_json::to_string(&request)?)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Out of the test's process group: test runners may signal the
            // group of a finished test.
            .process_group(0)
            .spawn()?;
        Ok(())
    })();
    if let Err(error) = started {
        tracing::warn!("starting the teardown process failed ({}); remove the stack with `e2e-infra clean`", error_chain(&error));
    }
}

/// The teardown process's body.
fn teardown(request: &str) {
    let request: Request = match serde_json::from_str(request) {
        Ok(request) => request,
        Err(error) => {
            eprintln!("e2e-infra teardown: {REQUEST_ENV} is no teardown request: {error}");
            return;
        }
    };
    let Some(launcher) = Launcher::from_label(&request.launcher) else {
        eprintln!("e2e-infra teardown: `{}` names no launcher to wait for", request.launcher);
        return;
    };
    if let Err(error) = survive_broken_pipes() {
        eprintln!("e2e-infra teardown: {}", error_chain(&error));
        return;
    }
    let consumer = request.consumer.as_str();
    let Ok(run) = RunId::detect() else { return };
    let key = RunKey::new(run.as_str(), consumer);
    let Some(dir) = RunDir::existing(&key) else { return };
    let _reaper = match dir.try_lock_reaper() {
        Ok(Some(lock)) => lock,
        // Another teardown process already watches this run.
        Ok(None) => return,
        Err(error) => {
            eprintln!("e2e-infra teardown: {}", error_chain(&error));
            return;
        }
    };
    // This process descends from the launcher: same PID namespace, so
    // the pid alone tells, even where the namespace cannot be read.
    while launcher.runs_in_this_namespace() {
        std::thread::sleep(POLL);
    }
    // A setup still running in a lingering test process finishes first.
    let setup_lock = match dir.lock_setup() {
        Ok(lock) => lock,
        Err(error) => {
            eprintln!("e2e-infra teardown: {}", error_chain(&error));
            return;
        }
    };
    let failed = dir.failed_tests();
    let keep = match std::env::var(KEEP_ENV).as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => !failed.is_empty(),
    };
    let placement = match dir.found() {
        Ok(super::state::Found::Ready(record)) => Some(record.placement),
        _ => None,
    };
    let kube = request.kube;
    if keep {
        let why = if failed.is_empty() { format!("{KEEP_ENV}=1") } else { format!("failed: {}", failed.join(", ")) };
        let _ = dir.mark_kept(&why);
        // The local folder is seen only by shells with this state root;
        // the engine or cluster is seen by every `clean`.
        let marked = background::block_on(|| async {
            let docker = crate::stack::engine_of(placement.as_ref()).await?;
            crate::stack::teardown::mark_kept(&docker, &key, Some(launcher), kube.as_ref(), &why).await
        });
        if let Err(error) = marked.map_err(StackError::from).and_then(|marked| marked) {
            eprintln!("e2e-infra teardown: recording on the engine that the stack is kept failed: {}", error_chain(&error));
        }
        println!("e2e-infra: kept the `{consumer}` stack of run {run} ({why})");
        return;
    }
    let removed = background::block_on(|| async {
        let docker = crate::stack::engine_of(placement.as_ref()).await?;
        crate::stack::down(&docker, &key, kube.as_ref()).await
    });
    match removed.map_err(StackError::from).and_then(|removed| removed) {
        Ok(summary) => {
            println!("e2e-infra: removed the `{consumer}` stack of run {run}: {summary}");
            drop(setup_lock);
            if let Err(error) = dir.remove() {
                eprintln!("e2e-infra teardown: {}", error_chain(&error));
            }
        }
        Err(error) => eprintln!("e2e-infra teardown of `{consumer}` failed: {}", error_chain(&error)),
    }
}

/// Rust's `main` ignores SIGPIPE, so that writing to a closed socket is an
/// error rather than death; this process never reaches `main`. Listening
/// for the signal replaces its default action for the rest of the process.
fn survive_broken_pipes() -> Result<(), TeardownError> {
    background::block_on(|| async { tokio::signal::unix::signal(tokio::signal::unix::SignalKind::pipe()).map(drop) })?
        .map_err(TeardownError::Signal)
}

/// Why the teardown process could not begin.
#[derive(Debug, thiserror::Error)]
enum TeardownError {
    #[error(transparent)]
    Runtime(#[from] background::RuntimeError),
    #[error("listening for SIGPIPE failed")]
    Signal(#[source] std::io::Error),
}

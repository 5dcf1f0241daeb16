//! Teardown after the run, in a process of its own.
//!
//! The process that sets the stack up starts the test binary once more,
//! selecting only the suite's hidden, ignored teardown test, in a process
//! group of its own with its output in the run's state directory. That
//! process waits for the run's launcher (cargo, cargo-nextest) to exit and
//! then removes the stack. Neither a panicking test nor a test process
//! killed with SIGKILL stops it; if it is killed itself, the next run or
//! `e2e-infra clean` finds the leftovers by their labels.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::background;
use crate::error::error_chain;
use crate::stack::StackError;
use crate::record::RunKey;
use crate::state::RunDir;
use crate::backend::Backend;
use super::{Suite, KEEP_ENV};
use crate::plan::{Launcher, Plan, RunId, RUN_ID_ENV};

/// The name of the hidden teardown test the attribute generates.
pub const REAPER_TEST: &str = "__e2e_infra_reaper";
/// Tells the teardown test which launcher to wait for.
const REAPER_ENV: &str = "E2E_INFRA_REAPER_LAUNCHER";
const POLL: Duration = Duration::from_millis(200);

/// The libtest name of the teardown test: the module path without the crate.
fn test_name(module_path: &str) -> String {
    match module_path.split_once("::") {
        Some((_, path)) => format!("{path}::{REAPER_TEST}"),
        None => REAPER_TEST.to_owned(),
    }
}

/// Starts the teardown process for this run and consumer.
pub(super) fn spawn(suite: &Suite, plan: &Plan, dir: &RunDir) {
    let Some(launcher) = plan.run().launcher() else {
        tracing::warn!("no launcher process known: the stack stays until `e2e-infra clean`");
        return;
    };
    let started = (|| -> std::io::Result<()> {
        let log = dir.open_reaper_log()?;
        Command::new(std::env::current_exe()?)
            .args(["--exact", &test_name(suite.spec.module_path), "--ignored", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(RUN_ID_ENV, plan.run().as_str())
            .env(REAPER_ENV, launcher.label())
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
pub(super) fn run(suite: &Suite) {
    let Some(launcher) = std::env::var(REAPER_ENV).ok().and_then(|l| Launcher::from_label(&l)) else {
        println!("e2e-infra: this is the suite's teardown entry point; it runs by itself after a test run");
        return;
    };
    let consumer = suite.spec.consumer;
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
    // From the suite, not the record: a setup that failed half-way recorded
    // no stack, but may have loaded images and created a namespace.
    let kube = match suite.backend() {
        Ok(Backend::Kubernetes(target)) => Some(target),
        _ => None,
    };
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

#[cfg(test)]
mod tests {
    use super::test_name;

    #[test]
    fn teardown_test_name_drops_the_crate() {
        assert_eq!(test_name("notification::notification_e2e"), "notification_e2e::__e2e_infra_reaper");
        assert_eq!(test_name("a::b::c"), "b::c::__e2e_infra_reaper");
    }
}

//! Teardown after the run, in a process of its own.
//!
//! The process that sets the stack up starts the test binary once more,
//! selecting only the suite's hidden, ignored teardown test, in a process
//! group of its own with its output in the run's state directory. That
//! process waits for the run's launcher (cargo, cargo-nextest) to exit and
//! then removes the stack. Neither a panicking test nor a test process
//! killed with SIGKILL stops it; if it is killed itself, the next run or
//! `e2e-infra clean` finds the leftovers by their labels.
//!
//! Being the run's one long-lived process, it also holds the port-forwards
//! of a Kubernetes stack: the setup process asks for them through the
//! socket that is the teardown process's stdin once the stack is ready, and
//! records their addresses, so no attaching test process needs a client or
//! a forward of its own.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::background;
use crate::error::error_chain;
use crate::stack::StackError;
use crate::deploy::kube::forward;
use crate::record::{Placement, RunKey, StackRecord};
use crate::state::RunDir;
use crate::backend::Backend;
use super::{Suite, KEEP_ENV};
use crate::plan::{Launcher, Plan, RunId, RUN_ID_ENV};

/// The name of the hidden teardown test the attribute generates.
pub const REAPER_TEST: &str = "__e2e_infra_reaper";
/// Tells the teardown test which launcher to wait for.
const REAPER_ENV: &str = "E2E_INFRA_REAPER_LAUNCHER";
const POLL: Duration = Duration::from_millis(200);
/// How long setup waits for the teardown process's port-forwards: a
/// connection to the cluster and a read of each Service.
const FORWARDS_WITHIN: Duration = Duration::from_secs(10);
/// What setup asks the teardown process for, on one line.
const FORWARD_REQUEST: &str = "forward";

/// The teardown process's answer to [`FORWARD_REQUEST`], on one line.
#[derive(Debug, Serialize, Deserialize)]
enum Forwards {
    /// Held by `keeper`: component -> container port -> local address.
    Held { keeper: Launcher, endpoints: BTreeMap<String, BTreeMap<u16, SocketAddr>> },
    /// None could be opened, and why.
    Failed(String),
}

/// The setup process's end of the socket to its teardown process.
#[derive(Debug)]
pub(super) struct Keeper(UnixStream);

impl Keeper {
    /// On Kubernetes, has the teardown process open a port-forward to
    /// every Service port of the stack and puts their addresses into
    /// `record`. When it cannot, the record keeps none and each test
    /// process forwards for itself, as it would without a teardown process.
    pub(super) fn forward_into(self, record: &mut StackRecord) {
        if !matches!(record.placement, Placement::Kubernetes { .. }) {
            return;
        }
        match self.ask() {
            Ok(Forwards::Held { keeper, endpoints }) => {
                record.endpoints = endpoints;
                record.forwarded_by = Some(keeper);
            }
            Ok(Forwards::Failed(why)) => tracing::warn!("the run's port-forwards could not be opened; each test process opens its own: {why}"),
            Err(error) => tracing::warn!("the teardown process gave no port-forwards; each test process opens its own: {error}"),
        }
    }

    fn ask(self) -> std::io::Result<Forwards> {
        let mut stream = self.0;
        stream.set_read_timeout(Some(FORWARDS_WITHIN))?;
        writeln!(stream, "{FORWARD_REQUEST}")?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line)?;
        serde_json::from_str(&line).map_err(std::io::Error::other)
    }
}

/// The libtest name of the teardown test: the module path without the crate.
fn test_name(module_path: &str) -> String {
    match module_path.split_once("::") {
        Some((_, path)) => format!("{path}::{REAPER_TEST}"),
        None => REAPER_TEST.to_owned(),
    }
}

/// Starts the teardown process for this run and consumer; returns the
/// socket to ask it for port-forwards through.
pub(super) fn spawn(suite: &Suite, plan: &Plan, dir: &RunDir) -> Option<Keeper> {
    let Some(launcher) = plan.run().launcher() else {
        tracing::warn!("no launcher process known: the stack stays until `e2e-infra clean`");
        return None;
    };
    let started = (|| -> std::io::Result<Keeper> {
        let log = dir.open_reaper_log()?;
        let (ours, theirs) = UnixStream::pair()?;
        Command::new(std::env::current_exe()?)
            .args(["--exact", &test_name(suite.spec.module_path), "--ignored", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(RUN_ID_ENV, plan.run().as_str())
            .env(REAPER_ENV, launcher.label())
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(log.try_clone()?)
            .stderr(log)
            // Out of the test's process group: test runners may signal the
            // group of a finished test.
            .process_group(0)
            .spawn()?;
        Ok(Keeper(ours))
    })();
    started
        .map_err(|error| {
            tracing::warn!("starting the teardown process failed ({}); remove the stack with `e2e-infra clean`", error_chain(&error));
        })
        .ok()
}

/// Answers the setup process's request for port-forwards, read from stdin;
/// the forwards then run on the background runtime until this process
/// exits. Setup closing its end instead (a Docker stack, a failed setup)
/// ends this at once.
fn keep_forwards(suite: &Suite, key: &RunKey) {
    // Stdin is the socket to the setup process, both ways.
    let Ok(socket) = std::io::stdin().as_fd().try_clone_to_owned().map(UnixStream::from) else { return };
    let mut request = String::new();
    if BufReader::new(&socket).read_line(&mut request).map_or(true, |_| request.trim() != FORWARD_REQUEST) {
        return;
    }
    let answer = match open_forwards(suite, key) {
        Ok(endpoints) => match Launcher::of(std::process::id()) {
            Some(keeper) => Forwards::Held { keeper, endpoints },
            None => Forwards::Failed("this process cannot be identified in /proc".to_owned()),
        },
        Err(why) => Forwards::Failed(why),
    };
    let sent = serde_json::to_string(&answer).map_err(std::io::Error::other).and_then(|line| writeln!(&socket, "{line}"));
    if let Err(error) = sent {
        eprintln!("e2e-infra teardown: answering the setup process failed: {error}");
    }
}

fn open_forwards(suite: &Suite, key: &RunKey) -> Result<BTreeMap<String, BTreeMap<u16, SocketAddr>>, String> {
    let Ok(Backend::Kubernetes(target)) = suite.backend() else { return Err("not a Kubernetes stack".to_owned()) };
    let run = RunId::detect().map_err(|e| error_chain(&e))?;
    let plan = suite.plan(run).map_err(|e| error_chain(&e))?;
    let components: Vec<String> = plan.components().iter().map(|c| c.name.clone()).collect();
    let namespace = key.namespace();
    let opened = background::block_on(|| forward::forward_all(target.context.as_deref(), namespace.as_str(), &components));
    match opened {
        Ok(Ok(endpoints)) => Ok(endpoints),
        Ok(Err(error)) => Err(error_chain(&error)),
        Err(error) => Err(error_chain(&error)),
    }
}

/// The teardown process's body.
pub(super) fn run(suite: &'static Suite) {
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
    // Detached: a setup process that never asks must not hold teardown up.
    let asked = key.clone();
    std::thread::spawn(move || keep_forwards(suite, &asked));
    wait_and_tear_down(suite, &key, dir, launcher);
}

fn wait_and_tear_down(suite: &Suite, key: &RunKey, dir: RunDir, launcher: Launcher) {
    let (consumer, run) = (suite.spec.consumer, key.run());
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
            crate::stack::teardown::mark_kept(&docker, key, Some(launcher), kube.as_ref(), &why).await
        });
        if let Err(error) = marked.map_err(StackError::from).and_then(|marked| marked) {
            eprintln!("e2e-infra teardown: recording on the engine that the stack is kept failed: {}", error_chain(&error));
        }
        println!("e2e-infra: kept the `{consumer}` stack of run {run} ({why})");
        return;
    }
    let removed = background::block_on(|| async {
        let docker = crate::stack::engine_of(placement.as_ref()).await?;
        crate::stack::down(&docker, key, kube.as_ref()).await
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

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
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::shard::Shard;
use super::KEEP_ENV;
use crate::backend::KubeTarget;
use crate::background;
use crate::deploy::kube::forward;
use crate::deploy::kube::shard::{self, Left};
use crate::error::error_chain;
use crate::plan::{Consumer, Launcher, Plan, RunId, RunKey, RUN_ID_ENV};
use crate::record::{Placement, StackRecord};
use crate::stack::StackError;
use crate::state::RunDir;

/// Holds the [`Request`] of a teardown process, as JSON.
const REQUEST_ENV: &str = "E2E_INFRA_TEARDOWN";
/// Arguments for the test harness of the teardown process. The constructor
/// exits before the harness starts; were it ever not linked in, the harness
/// only lists the tests named so (none) instead of running the run's tests
/// once more.
const HARNESS_ARGS: [&str; 3] = ["--list", "--exact", "e2e-infra teardown"];
const POLL: Duration = Duration::from_millis(200);
/// How long setup waits for the teardown process's port-forwards: a
/// connection to the cluster and a read of each Service.
const FORWARDS_WITHIN: Duration = Duration::from_secs(10);
/// What setup asks the teardown process for, on one line.
const FORWARD_REQUEST: &str = "forward";

/// What a teardown process removes, and after which process. The run id
/// travels in [`RUN_ID_ENV`], as in every process of the run.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    consumer: Consumer,
    /// [`Launcher::label`] of the run's launcher.
    launcher: String,
    /// The cluster of a Kubernetes suite, from the suite rather than from a
    /// record: a setup that failed half-way recorded no stack, but may have
    /// loaded images and created a namespace.
    kube: Option<KubeTarget>,
    /// The run's components, whose Services get port-forwards on request.
    components: Vec<String>,
    /// This machine's shard of a stack the run's shards share: renewed
    /// while the run lasts, then left; only the last shard out tears down.
    #[serde(default)]
    shard: Option<ShardRequest>,
}

/// A shard, as its teardown process needs it.
#[derive(Debug, Serialize, Deserialize)]
struct ShardRequest {
    name: String,
    ttl_secs: u64,
}

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
            Ok(Forwards::Failed(why)) => {
                tracing::warn!("the run's port-forwards could not be opened; each test process opens its own: {why}")
            }
            Err(error) => {
                tracing::warn!("the teardown process gave no port-forwards; each test process opens its own: {error}")
            }
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

/// Starts the teardown process for this run and consumer; returns the
/// socket to ask it for port-forwards through.
pub(super) fn spawn(plan: &Plan, kube: Option<KubeTarget>, dir: &RunDir, shard: Option<&Shard>) -> Option<Keeper> {
    let Some(launcher) = plan.run().launcher() else {
        tracing::warn!("no launcher process known: the stack stays until `e2e-infra clean`");
        return None;
    };
    let request = Request {
        consumer: plan.consumer().clone(),
        launcher: launcher.label(),
        kube,
        components: plan.components().iter().map(|c| c.name.clone()).collect(),
        shard: shard.map(|s| ShardRequest { name: s.name.clone(), ttl_secs: s.ttl.as_secs() }),
    };
    let started = (|| -> std::io::Result<Keeper> {
        let log = dir.open_reaper_log()?;
        let (ours, theirs) = UnixStream::pair()?;
        Command::new(std::env::current_exe()?)
            .args(HARNESS_ARGS)
            .env(RUN_ID_ENV, plan.run().as_str())
            .env(REQUEST_ENV, serde_json::to_string(&request)?)
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
            tracing::warn!(
                "starting the teardown process failed ({}); remove the stack with `e2e-infra clean`",
                error_chain(&error)
            );
        })
        .ok()
}

/// Answers the setup process's request for port-forwards, read from stdin;
/// the forwards then run on the background runtime until this process
/// exits. Setup closing its end instead (a Docker stack, a failed setup)
/// ends this at once.
fn keep_forwards(kube: Option<&KubeTarget>, components: &[String], key: &RunKey) {
    // Stdin is the socket to the setup process, both ways.
    let Ok(socket) = std::io::stdin().as_fd().try_clone_to_owned().map(UnixStream::from) else { return };
    let mut request = String::new();
    if BufReader::new(&socket).read_line(&mut request).map_or(true, |_| request.trim() != FORWARD_REQUEST) {
        return;
    }
    let answer = match open_forwards(kube, components, key) {
        Ok(endpoints) => match Launcher::of(std::process::id()) {
            Some(keeper) => Forwards::Held { keeper, endpoints },
            None => Forwards::Failed("this process cannot be identified in /proc".to_owned()),
        },
        Err(why) => Forwards::Failed(why),
    };
    let sent =
        serde_json::to_string(&answer).map_err(std::io::Error::other).and_then(|line| writeln!(&socket, "{line}"));
    if let Err(error) = sent {
        eprintln!("e2e-infra teardown: answering the setup process failed: {error}");
    }
}

fn open_forwards(
    kube: Option<&KubeTarget>,
    components: &[String],
    key: &RunKey,
) -> Result<BTreeMap<String, BTreeMap<u16, SocketAddr>>, String> {
    let Some(target) = kube else { return Err("not a Kubernetes stack".to_owned()) };
    let namespace = key.namespace();
    let opened =
        background::block_on(|| forward::forward_all(target.context.as_deref(), namespace.as_str(), components));
    match opened {
        Ok(Ok(endpoints)) => Ok(endpoints),
        Ok(Err(error)) => Err(error_chain(&error)),
        Err(error) => Err(error_chain(&error)),
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
    let Ok(run) = RunId::detect() else { return };
    let key = RunKey::new(run, request.consumer);
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
    let (asked, kube, components) = (key.clone(), request.kube.clone(), request.components.clone());
    std::thread::spawn(move || keep_forwards(kube.as_ref(), &components, &asked));
    let mut renewal = request.shard.as_ref().zip(request.kube.as_ref()).map(|(shard, target)| Renewal {
        shard,
        context: target.context.as_deref(),
        namespace: key.namespace().to_string(),
        next: Instant::now(),
    });
    // This process descends from the launcher: same PID namespace, so
    // the pid alone tells, even where the namespace cannot be read.
    while launcher.runs_in_this_namespace() {
        if let Some(renewal) = &mut renewal {
            renewal.tick();
        }
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
    let mut failed = dir.failed_tests();
    if let (Some(shard), Some(target)) = (&request.shard, &request.kube) {
        match last_out(shard, target, &key, &failed) {
            Some(every) => failed = every,
            None => {
                drop(setup_lock);
                let _ = dir.remove();
                return;
            }
        }
    }
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
        keep_stack(&dir, &key, launcher, kube.as_ref(), placement.as_ref(), &failed);
        return;
    }
    let removed = background::block_on(|| async {
        let docker = crate::stack::engine_of(placement.as_ref()).await?;
        crate::stack::down(&docker, &key, kube.as_ref()).await
    });
    match removed.map_err(StackError::from).and_then(|removed| removed) {
        Ok(summary) => {
            println!("e2e-infra: removed the `{}` stack of run {}: {summary}", key.consumer(), key.run());
            drop(setup_lock);
            if let Err(error) = dir.remove() {
                eprintln!("e2e-infra teardown: {}", error_chain(&error));
            }
        }
        Err(error) => eprintln!("e2e-infra teardown of `{}` failed: {}", key.consumer(), error_chain(&error)),
    }
}

/// As a CI shard, leaves the shared stack: every shard's failed tests when
/// this one was the last out and so tears the stack down; `None` when other
/// shards still use it, or it is gone.
fn last_out(shard: &ShardRequest, target: &KubeTarget, key: &RunKey, failed: &[String]) -> Option<Vec<String>> {
    match leave(target, key, &shard.name, failed) {
        Some(Left::LastOut { failed: every }) => Some(every),
        Some(Left::Others(others)) => {
            println!(
                "e2e-infra: shard `{}` left the `{}` stack of run {}; still used by shard(s) {}",
                shard.name,
                key.consumer(),
                key.run(),
                others.join(", ")
            );
            None
        }
        Some(Left::Gone) | None => None,
    }
}

/// Keeps the stack (a test failed, or it was asked for), marked as kept
/// both in the state folder and on the engine or cluster.
fn keep_stack(
    dir: &RunDir,
    key: &RunKey,
    launcher: Launcher,
    kube: Option<&KubeTarget>,
    placement: Option<&Placement>,
    failed: &[String],
) {
    let why = if failed.is_empty() { format!("{KEEP_ENV}=1") } else { format!("failed: {}", failed.join(", ")) };
    let _ = dir.mark_kept(&why);
    // The local folder is seen only by shells with this state root;
    // the engine or cluster is seen by every `clean`.
    let marked = background::block_on(|| async {
        let docker = crate::stack::engine_of(placement).await?;
        crate::stack::teardown::mark_kept(&docker, key, Some(launcher), kube, &why).await
    });
    if let Err(error) = marked.map_err(StackError::from).and_then(|marked| marked) {
        eprintln!("e2e-infra teardown: recording on the engine that the stack is kept failed: {}", error_chain(&error));
    }
    println!("e2e-infra: kept the `{}` stack of run {} ({why})", key.consumer(), key.run());
}

/// Renews this machine's shard on the Lease every third of its time to live.
struct Renewal<'a> {
    shard: &'a ShardRequest,
    context: Option<&'a str>,
    namespace: String,
    next: Instant,
}

impl Renewal<'_> {
    fn tick(&mut self) {
        if Instant::now() < self.next {
            return;
        }
        self.next = Instant::now() + Duration::from_secs(self.shard.ttl_secs) / 3;
        let renewed = background::block_on(|| async {
            let client = crate::deploy::kube::connect(self.context).await.map_err(StackError::from)?;
            Ok::<_, TeardownError>(shard::renew(&client, &self.namespace, &self.shard.name).await?)
        });
        if let Err(error) = renewed.map_err(TeardownError::from).and_then(|r| r) {
            eprintln!("e2e-infra teardown: renewing shard `{}` failed: {}", self.shard.name, error_chain(&error));
        }
    }
}

/// Leaves the shared stack; `None` (after saying why) when the cluster
/// cannot be told: the Lease's time to live then ends this shard.
fn leave(target: &KubeTarget, key: &RunKey, shard: &str, failed: &[String]) -> Option<Left> {
    let namespace = key.namespace().to_string();
    let left = background::block_on(|| async {
        let client = crate::deploy::kube::connect(target.context.as_deref()).await.map_err(StackError::from)?;
        Ok::<_, TeardownError>(shard::leave(&client, &namespace, shard, failed).await?)
    });
    match left.map_err(TeardownError::from).and_then(|l| l) {
        Ok(left) => Some(left),
        Err(error) => {
            eprintln!("e2e-infra teardown: shard `{shard}` could not leave: {}", error_chain(&error));
            None
        }
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
    #[error(transparent)]
    Stack(#[from] StackError),
    #[error(transparent)]
    Shard(#[from] shard::ShardError),
}

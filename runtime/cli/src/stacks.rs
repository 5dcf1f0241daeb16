//! `e2e-infra up`, `down`, `status` and `clean`: stacks for people.

use std::path::Path;

use e2e_infra::backend::{self, Backend, Declared};
use e2e_infra::cli_support::teardown::{self, Listing, Liveness, RunStack};
use e2e_infra::plan::{Consumer, Launcher, RunId};
use e2e_infra::stack::{self, StackOptions};
use e2e_infra::{engine, Plan};

use crate::error::CliError;
use crate::output::say;

/// Which Kubernetes cluster to look at besides the engine.
#[derive(clap::Args)]
pub struct ClusterArgs {
    /// Also the Kubernetes cluster of the kubeconfig's current context (KUBECONFIG).
    #[arg(long)]
    kubernetes: bool,
    /// Also the Kubernetes cluster of this kubeconfig context.
    #[arg(long)]
    context: Option<String>,
}

impl ClusterArgs {
    /// `Some(context)` when a cluster was asked for.
    pub fn wanted(&self) -> Option<Option<&str>> {
        (self.kubernetes || self.context.is_some()).then_some(self.context.as_deref())
    }

    /// The flags that name this cluster again, for the hints printed.
    fn flags(&self) -> String {
        match (&self.context, self.kubernetes) {
            (Some(context), _) => format!(" --context {context}"),
            (None, true) => " --kubernetes".to_owned(),
            (None, false) => String::new(),
        }
    }
}

/// Arguments of `up`.
#[derive(clap::Args)]
pub struct UpArgs {
    /// The consumer name (lowercase letters, digits, '-').
    #[arg(long)]
    consumer: String,
    /// Components to bring up, comma separated; their dependencies follow.
    #[arg(long, value_delimiter = ',', required = true)]
    needs: Vec<String>,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Run on Kubernetes, loading images into the nodes of this Kind cluster.
    #[arg(long)]
    kind: Option<String>,
    /// Run on Kubernetes, loading images into the containerd at this socket.
    #[arg(long)]
    containerd: Option<String>,
    /// Run on Kubernetes, pushing images to this registry (host:port).
    #[arg(long)]
    registry: Option<String>,
    /// Rebuild even when an image of the same inputs exists.
    #[arg(long)]
    force_build: bool,
}

/// Arguments of `down`.
#[derive(clap::Args)]
pub struct DownArgs {
    /// Remove this consumer's stacks.
    #[arg(long)]
    consumer: Consumer,
    /// Only the stack of this run (default: every run of the consumer).
    #[arg(long)]
    run: Option<RunId>,
    /// Also remove stacks of runs that are still going (their launcher runs).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Arguments of `status`.
#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Arguments of `clean`.
#[derive(clap::Args)]
pub struct CleanArgs {
    /// Only this consumer's stacks (default: every consumer's).
    #[arg(long)]
    pub(crate) consumer: Option<Consumer>,
    /// Also remove stacks kept because a test failed or E2E_INFRA_KEEP=1.
    #[arg(long)]
    kept: bool,
    /// Also remove foreign stacks: runs launched on another host or in
    /// another PID namespace (a container, a devcontainer, `unshare -p`),
    /// whose liveness cannot be seen from here. Without it they are removed
    /// only once older than 24 hours.
    #[arg(long)]
    foreign: bool,
    /// Also remove reusable stacks (kept between runs by E2E_INFRA_REUSE=1).
    #[arg(long)]
    reused: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// The stacks on the engine, and on the cluster when one was asked for,
/// with what carries e2e-infra's labels but names no stack.
pub async fn listing(docker: &bollard::Docker, cluster: Option<Option<&str>>) -> Result<Listing, CliError> {
    let mut listing = teardown::list(docker).await.map_err(CliError::List)?;
    if let Some(context) = cluster {
        listing.extend(teardown::list_kube(context).await.map_err(CliError::List)?);
    }
    Ok(listing)
}

/// The stacks on the engine, and on the cluster when one was asked for.
pub async fn stacks(docker: &bollard::Docker, cluster: Option<Option<&str>>) -> Result<Vec<RunStack>, CliError> {
    Ok(listing(docker, cluster).await?.stacks)
}

/// The stacks of `consumer`, only that of `run` when one is given.
pub fn select(runs: &mut Vec<RunStack>, consumer: &Consumer, run: Option<&RunId>) {
    runs.retain(|r| r.key.consumer() == consumer && run.is_none_or(|id| id == r.key.run()));
}

pub fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(CliError::AsyncRuntime)
}

/// Runs `up`.
pub fn up(config: Option<&Path>, args: UpArgs) -> Result<(), CliError> {
    let catalog = crate::plan::catalog(config)?;
    let id = match std::env::var(e2e_infra::plan::RUN_ID_ENV) {
        Ok(id) => id,
        Err(_) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            // The time orders ids for people; the random part keeps `up`s
            // started in the same millisecond, or on other hosts, apart.
            let random = e2e_infra::plan::random_hex(6).map_err(CliError::RandomRunId)?;
            format!("up-{:x}-{random}", now.as_millis())
        }
    };
    // This process is the stack's launcher until it finishes and marks the
    // stack as up: a stack whose `up` was killed half-way is then dead, one
    // whose `up` finished lives until `down`.
    let launcher = Launcher::of(std::process::id());
    let run = RunId::explicit(&id, launcher)?;
    let kubernetes =
        args.cluster.wanted().is_some() || args.kind.is_some() || args.containerd.is_some() || args.registry.is_some();
    // The flags play the part of the environment variables a suite reads.
    let backend = Backend::resolve_with(&Declared::default(), |name| match name {
        backend::BACKEND_ENV => kubernetes.then(|| "kubernetes".to_owned()),
        backend::KIND_CLUSTER_ENV => args.kind.clone(),
        backend::CONTAINERD_SOCKET_ENV => args.containerd.clone(),
        backend::REGISTRY_ENV => args.registry.clone(),
        backend::KUBE_CONTEXT_ENV => args.cluster.context.clone(),
        _ => None,
    })?;
    let needs: Vec<&str> = args.needs.iter().map(String::as_str).collect();
    let plan = Plan::new(&catalog, &args.consumer, &needs, run, &backend.delivery())?;
    let take_down = format!(
        "e2e-infra down --consumer {} --run {}{}",
        args.consumer,
        plan.run(),
        match &backend {
            Backend::Kubernetes(target) => match &target.context {
                Some(context) => format!(" --context {context}"),
                None => " --kubernetes".to_owned(),
            },
            _ => String::new(),
        }
    );
    let kube_context = match &backend {
        Backend::Kubernetes(target) => Some(target.context.clone()),
        _ => None,
    };
    let mut options = StackOptions { backend, ..StackOptions::default() };
    options.build.force = args.force_build;
    let runtime = runtime()?;
    // A second `up` with the same run id would take the first stack's
    // names; it refuses instead of replacing or removing anything.
    runtime.block_on(async {
        let docker = engine::connect().await?;
        let runs = stacks(&docker, kube_context.as_ref().map(Option::as_deref)).await?;
        match runs.iter().find(|r| &r.key == plan.key()) {
            Some(_) => Err(CliError::AlreadyUp {
                consumer: args.consumer.clone(),
                run: plan.run().to_string(),
                take_down: take_down.clone(),
            }),
            None => Ok(()),
        }
    })?;
    let kube_target = match &options.backend {
        Backend::Kubernetes(target) => Some(target.clone()),
        _ => None,
    };
    let record = runtime.block_on(async {
        let signals = interrupted()?;
        let key = plan.key();
        let up = async {
            let record = stack::up(&plan, &options).await.map_err(CliError::Up)?;
            let docker = engine::connect().await?;
            teardown::mark_up_finished(&docker, key, launcher, kube_target.as_ref())
                .await
                .map_err(|source| CliError::MarkUp { take_down: take_down.clone(), source })?;
            Ok::<_, CliError>(record)
        };
        tokio::select! {
            result = up => result,
            signal = signals => {
                // `up` is dropped here: it creates nothing more. What it
                // created so far carries the run's labels.
                let docker = engine::connect().await?;
                let removed = stack::down(&docker, key, kube_target.as_ref()).await.map_err(|source| {
                    CliError::Down { consumer: args.consumer.clone(), run: plan.run().to_string(), source }
                })?;
                Err(CliError::Interrupted { signal, removed })
            }
        }
    })?;
    crate::output::write(format_args!("{}", record.summary))?;
    for (component, ports) in &record.endpoints {
        for (port, addr) in ports {
            say!("  {component}:{port} -> {addr}")?;
        }
    }
    say!("take it down with: {take_down}")?;
    Ok(())
}

/// Resolves with the name of the first SIGINT or SIGTERM this process gets.
fn interrupted() -> Result<impl std::future::Future<Output = &'static str>, CliError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).map_err(CliError::Signals)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(CliError::Signals)?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        }
    })
}

/// Runs `down`.
pub fn down(args: &DownArgs) -> Result<(), CliError> {
    runtime()?.block_on(async {
        let docker = engine::connect().await?;
        let mut runs = stacks(&docker, args.cluster.wanted()).await?;
        select(&mut runs, &args.consumer, args.run.as_ref());
        // A run still going would lose its stack under its tests: refuse
        // before removing anything, unless told.
        let alive: Vec<String> = runs
            .iter()
            .filter(|r| r.liveness() == Liveness::Alive)
            .filter_map(|r| r.launcher.map(|l| format!("run {} (launched by {})", r.key.run(), launcher_name(l.pid))))
            .collect();
        if !alive.is_empty() && !args.force {
            return Err(CliError::Alive {
                consumer: args.consumer.to_string(),
                runs: alive.join(", "),
                force: format!(
                    "e2e-infra down --consumer {}{} --force{}",
                    args.consumer,
                    args.run.as_ref().map(|r| format!(" --run {r}")).unwrap_or_default(),
                    args.cluster.flags()
                ),
            });
        }
        let mut found = false;
        for run in &runs {
            found = true;
            let kube = run.kube.as_ref().map(|(_, target)| target);
            let summary = stack::down(&docker, &run.key, kube).await.map_err(|source| CliError::Down {
                consumer: run.key.consumer().to_string(),
                run: run.key.run().to_string(),
                source,
            })?;
            say!("removed {}: {summary}", run.key)?;
        }
        if !found {
            return Err(not_found(&args.consumer, args.run.as_ref(), &args.cluster));
        }
        Ok(())
    })
}

/// `pid N (command)`, the command as `/proc` names it while it runs.
fn launcher_name(pid: u32) -> String {
    match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) => format!("pid {pid} ({})", comm.trim_end()),
        Err(_) => format!("pid {pid}"),
    }
}

/// The error for a consumer (and run) with no stack where it was looked for.
pub fn not_found(consumer: &Consumer, run: Option<&RunId>, cluster: &ClusterArgs) -> CliError {
    CliError::NoStack {
        consumer: consumer.to_string(),
        run: run.map(|r| format!(" and run `{r}`")).unwrap_or_default(),
        place: if cluster.wanted().is_some() {
            " or cluster"
        } else {
            " (add --context or --kubernetes for a cluster)"
        },
        flags: cluster.flags(),
    }
}

/// Runs `status`.
pub fn status(args: &StatusArgs) -> Result<(), CliError> {
    runtime()?.block_on(async {
        let docker = engine::connect().await?;
        let Listing { stacks: runs, unrecognised } = listing(&docker, args.cluster.wanted()).await?;
        if runs.is_empty() && unrecognised.is_empty() {
            say!(
                "no e2e-infra stacks on this engine{}",
                if args.cluster.wanted().is_some() { " or cluster" } else { "" }
            )?;
        }
        let list = |names: &[String]| if names.is_empty() { "-".to_owned() } else { names.join(", ") };
        let now = teardown::now();
        for run in runs {
            let state = match (run.liveness(), run.kept) {
                _ if run.reused => "reuse",
                (_, true) => "kept",
                (Liveness::Alive, _) => "alive",
                (Liveness::Dead, _) => "dead",
                (Liveness::Foreign, _) if run.expired(now) => "expired",
                (Liveness::Foreign, _) => "foreign",
                (Liveness::Manual, _) => "manual",
            };
            match &run.kube {
                Some((namespace, target)) => {
                    say!(
                        "{:<14} {:<7} run {}  namespace: {namespace} ({target})",
                        run.key.consumer(),
                        state,
                        run.key.run()
                    )?;
                    if let Some(lease) = &run.shards {
                        say!("{:<22} {}", "", shards_line(lease))?;
                    }
                }
                None => say!(
                    "{:<14} {:<7} run {}  containers: {}  networks: {}",
                    run.key.consumer(),
                    state,
                    run.key.run(),
                    list(&run.containers),
                    list(&run.networks)
                )?,
            }
        }
        // Labelled as e2e-infra's, but by no run: shown, never touched.
        for found in unrecognised {
            say!(
                "unrecognised: {}, labelled run `{}` of consumer `{}` ({}); no command removes it",
                found.names.join(", "),
                e2e_infra::Echo(&found.run_id),
                e2e_infra::Echo(&found.consumer),
                found.why
            )?;
        }
        Ok(())
    })
}

/// The shards of a shared stack: the phase, then each shard with whether
/// it set up, still counts, left or went silent.
fn shards_line(lease: &e2e_infra::deploy::kube::shard::ShardLease) -> String {
    let now = e2e_infra::deploy::kube::shard::now_ms();
    let shards: Vec<String> = lease
        .members
        .iter()
        .map(|(name, member)| {
            let mut state = Vec::new();
            if *name == lease.holder {
                state.push("set up".to_owned());
            }
            state.push(if member.left {
                "left".to_owned()
            } else if lease.is_live(name, now) {
                format!("attached, renewed {}s ago", (now - member.renewed).max(0) / 1000)
            } else {
                "silent past its time to live".to_owned()
            });
            if !member.failed.is_empty() {
                state.push(format!("{} failed test(s)", member.failed.len()));
            }
            format!("{name} ({})", state.join(", "))
        })
        .collect();
    format!("shards ({}, time to live {}s): {}", lease.phase, lease.ttl.as_secs(), shards.join("; "))
}

/// Runs `clean`.
pub fn clean(args: &CleanArgs) -> Result<(), CliError> {
    runtime()?.block_on(async {
        let docker = engine::connect().await?;
        let mut runs = stacks(&docker, args.cluster.wanted()).await?;
        if let Some(consumer) = &args.consumer {
            select(&mut runs, consumer, None);
        }
        let now = teardown::now();
        let foreign: Vec<String> = runs
            .iter()
            .filter(|r| r.liveness() == Liveness::Foreign && !r.kept && !r.expired(now))
            .map(|r| r.key.to_string())
            .collect();
        let scope = teardown::Scope { kept: args.kept, foreign: args.foreign, reused: args.reused };
        let removed = teardown::clean_dead(&docker, runs, None, scope).await.map_err(CliError::Clean)?;
        if removed.is_empty() {
            say!("nothing to clean: no stack of a finished run is left")?;
        }
        if !args.foreign && !foreign.is_empty() {
            say!(
                "left foreign stacks (launched on another host or PID namespace, alive as far as can be told): {}; \
                 they go after 24 h, or now with `e2e-infra clean --foreign`",
                foreign.join(", ")
            )?;
        }
        for (run, summary) in removed {
            say!("removed {}: {summary}", run.key)?;
        }
        Ok(())
    })
}

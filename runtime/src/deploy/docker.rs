//! The Docker backend: one network per run and consumer, one container per
//! component, each started once its dependencies are ready.
//!
//! Works against the Docker engine and against Podman's compatible API.
//! Readiness probes connect to the container's address on the run's network
//! rather than to the published port: the engine's port proxy accepts
//! connections on the published port even while nothing listens inside.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, NetworkCreateRequest, NetworkingConfig, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListNetworksOptionsBuilder, ListVolumesOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::ready::{self, Deadline, Look, Outcome};
use crate::catalog::{DockerSpec, Probe, ReadySpec};
use crate::engine::{self, Silent};
use crate::error::error_chain;
use crate::labels::{self, StackLabels};
use crate::plan::{Plan, PlannedComponent};
use crate::record::Witness;

mod follow;
mod reuse;
pub use reuse::up_reusing;

/// How often a starting container's state and probe are checked.
const POLL: Duration = Duration::from_millis(250);
/// Longest single probe attempt.
const ATTEMPT: Duration = Duration::from_secs(2);
/// How many log lines an error carries.
const LOG_TAIL: &str = "30";
/// How long one engine call of `up` may take for a component that has no
/// readiness timeout; otherwise each call gets at most the component's
/// readiness timeout, and the readiness polls only what is left of it.
pub const ENGINE_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long fetching logs for an error message may take.
const LOGS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long removing a partly started stack may take before `up` reports
/// its own error and leaves the rest to `e2e-infra clean`.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(20);
/// The least time a readiness poll gives the engine to answer.
const MIN_POLL_CALL: Duration = Duration::from_secs(1);

/// A stack the Docker backend stood up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerStack {
    /// The run's network, named after the plan's namespace.
    pub network: String,
    /// The components, in the order they became ready.
    pub containers: Vec<RunningComponent>,
}

impl DockerStack {
    /// One component's container.
    pub fn component(&self, name: &str) -> Option<&RunningComponent> {
        self.containers.iter().find(|c| c.component == name)
    }
}

/// One ready component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Fields named for what they hold carry no doc of their own.
#[allow(missing_docs)]
pub struct RunningComponent {
    pub component: String,
    pub container_id: String,
    /// The container name, also its host name on the run's network.
    pub container_name: String,
    /// Container port to the address it is published on (127.0.0.1).
    pub ports: BTreeMap<u16, SocketAddr>,
    /// Time from start to ready.
    pub ready_after: Duration,
}

/// What [`remove_labelled`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    /// Container names.
    pub containers: Vec<String>,
    /// Network names.
    pub networks: Vec<String>,
    /// Marker volumes (a kept stack's record on the engine).
    #[serde(default)]
    pub markers: Vec<String>,
}

/// A Docker backend error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
// Fields named for what they hold carry no doc of their own.
#[allow(missing_docs)]
pub enum DockerError {
    /// The component has no `[components.<name>.docker]` section.
    #[error("component `{component}` has no `docker` section in the catalog, so the Docker backend cannot run it; add one (ports, env, ready)")]
    NotForDocker { component: String },
    /// A network operation failed.
    #[error("{operation} network `{network}` failed")]
    Network {
        network: String,
        /// What was asked of the engine.
        operation: &'static str,
        /// The engine's error.
        source: bollard::errors::Error,
    },
    /// A container operation failed.
    #[error("{operation} container `{container}` of `{component}` failed")]
    Container {
        component: String,
        /// The container name.
        container: String,
        /// What was asked of the engine.
        operation: &'static str,
        /// The engine's error.
        source: bollard::errors::Error,
    },
    /// The container stopped before it was ready.
    #[error("component `{component}` (container `{container}`) exited with code {exit_code} {after:.1?} after start, before it was ready; last log lines:\n{logs}")]
    Exited {
        component: String,
        /// The container name.
        container: String,
        exit_code: i64,
        /// Time from start to exit seen.
        after: Duration,
        /// Its last log lines.
        logs: String,
    },
    /// The probe did not succeed within its timeout.
    #[error("component `{component}` (container `{container}`) was not ready after {timeout:?}: {probe} never succeeded; last log lines:\n{logs}")]
    NotReady {
        component: String,
        /// The container name.
        container: String,
        /// The probe, described.
        probe: String,
        timeout: Duration,
        /// Its last log lines.
        logs: String,
    },
    /// A stack of the same run and consumer is already on the engine.
    #[error("the engine already holds a stack of run `{run_id}` and consumer `{consumer}` (network `{network}`); this call left nothing behind. Take it down with `e2e-infra down --consumer {consumer} --run {run_id}`, or use another run id")]
    StackExists {
        run_id: String,
        consumer: String,
        /// The network found.
        network: String,
    },
    /// A marker volume operation failed.
    #[error("{operation} marker volume `{volume}` failed")]
    Marker {
        volume: String,
        /// What was asked of the engine.
        operation: &'static str,
        /// The engine's error.
        source: bollard::errors::Error,
    },
    /// A volume of a marker's name (kept, or `up` finished) exists but is
    /// not that stack's marker.
    #[error("marking run `{run_id}` of consumer `{consumer}` with `{label}` failed: volume `{volume}` already exists and is not its marker (it is labelled for run `{found_run}` of consumer `{found_consumer}`); the stack is not marked, so `e2e-infra clean` may remove it. Remove that volume if nothing uses it, and mark the stack again")]
    MarkerTaken {
        volume: String,
        /// The marker's label.
        label: &'static str,
        run_id: String,
        consumer: String,
        /// The run its labels name.
        found_run: String,
        /// The consumer its labels name.
        found_consumer: String,
    },
    /// The engine did not answer a call in time (a frozen engine).
    #[error("starting `{component}` stopped")]
    Silent {
        /// The component, or the network for the run's network.
        component: String,
        /// The call and how long it was given.
        source: Silent,
    },
    /// Listing resources to remove failed.
    #[error("listing {what} labelled {filters:?} failed")]
    List {
        /// Containers or networks.
        what: &'static str,
        /// The label filters.
        filters: Vec<String>,
        /// The engine's error.
        source: bollard::errors::Error,
    },
}

/// A container's labels; a reusable stack's also carry the fingerprint.
fn component_labels(stack: &StackLabels, component: &str, fingerprint: Option<&str>) -> HashMap<String, String> {
    let mut labels = stack.component(component);
    if let Some(fingerprint) = fingerprint {
        labels.extend([labels::reuse(), (labels::FINGERPRINT.to_owned(), fingerprint.to_owned())]);
    }
    labels
}

/// The container name of `component` in `plan`: unique to the run and consumer.
pub fn container_name(plan: &Plan, component: &str) -> String {
    format!("{}-{component}", plan.namespace())
}

/// Creates the run's network and starts every component of `plan`, marked
/// with `labels`, each once
/// its dependencies are ready, components whose dependencies are ready
/// starting together. If a component fails, `report` (if any) writes the
/// failure report, then what `up` created is removed (the error carries
/// the failed component's logs).
///
/// # Errors
/// [`DockerError`] naming the component: no `docker` section, an env
/// reference that cannot be resolved, an engine error, a container that
/// exited before it was ready (reported at once) or a probe timeout.
///
/// # Example
/// ```no_run
/// # async fn demo(plan: e2e_infra::Plan) -> Result<(), Box<dyn std::error::Error>> {
/// let docker = e2e_infra::engine::connect().await?;
/// let labels = e2e_infra::labels::StackLabels::of(&plan);
/// let stack = e2e_infra::deploy::docker::up(&docker, &plan, &labels, None).await?;
/// let db = stack.component("postgres").and_then(|c| c.ports.get(&5432));
/// # Ok(()) }
/// ```
pub async fn up(
    docker: &Docker,
    plan: &Plan,
    labels: &StackLabels,
    report: Option<&dyn Witness>,
) -> Result<DockerStack, DockerError> {
    let envs = resolve_envs(plan)?;
    let network_id = create_network(docker, plan, labels, false).await?;
    start_on(docker, plan, labels, &network_id, envs, Started::default(), report).await
}

/// Every component's resolved environment.
fn resolve_envs(plan: &Plan) -> Result<HashMap<&str, Vec<String>>, DockerError> {
    let mut envs = HashMap::new();
    for component in plan.components() {
        envs.insert(component.name.as_str(), resolve_env(plan, component)?);
    }
    Ok(envs)
}

/// Creates the run's network (marked reusable when `reuse`); its id.
/// Refuses when the run already has one.
async fn create_network(docker: &Docker, plan: &Plan, stack: &StackLabels, reuse: bool) -> Result<String, DockerError> {
    let network = plan.namespace().to_string();
    // The engine lets two networks share a name; a second stack of one run
    // and consumer would then make both impossible to remove by name.
    let limit = plan.components().iter().map(call_limit).max().unwrap_or(ENGINE_CALL_TIMEOUT);
    let silent = |source| DockerError::Silent { component: format!("the network {network}"), source };
    if find_network(docker, plan).await?.is_some() {
        return Err(DockerError::StackExists {
            run_id: plan.run().as_str().to_owned(),
            consumer: plan.consumer().as_str().to_owned(),
            network,
        });
    }
    let request = NetworkCreateRequest {
        name: network.clone(),
        driver: Some("bridge".to_owned()),
        labels: Some(stack.run().into_iter().chain(reuse.then(labels::reuse)).collect()),
        ..Default::default()
    };
    let network_id = engine::within(docker, limit, "creating the run's network", docker.create_network(request))
        .await
        .map_err(silent)?
        .map_err(|source| DockerError::Network { network: network.clone(), operation: "creating", source })?
        .id;
    let settling = settle_same_name(docker, plan, &network, &network_id);
    engine::within(docker, limit, "checking the run's network is the only one of its name", settling)
        .await
        .map_err(silent)??;
    Ok(network_id)
}

/// The id of the run's network, if it has one.
async fn find_network(docker: &Docker, plan: &Plan) -> Result<Option<String>, DockerError> {
    let network = plan.namespace().to_string();
    let same_name = HashMap::from([("name", vec![network.clone()])]);
    let limit = plan.components().iter().map(call_limit).max().unwrap_or(ENGINE_CALL_TIMEOUT);
    let looking = docker.list_networks(Some(ListNetworksOptionsBuilder::new().filters(&same_name).build()));
    let existing = engine::within(docker, limit, "looking for the run's network", looking)
        .await
        .map_err(|source| DockerError::Silent { component: format!("the network {network}"), source })?
        .map_err(|source| DockerError::Network { network: network.clone(), operation: "looking for", source })?;
    // The filter matches names that contain the given one.
    Ok(existing.into_iter().find(|n| n.name.as_deref() == Some(network.as_str())).and_then(|n| n.id))
}

/// What a call to [`start_on`] starts from: components already running
/// (kept from an earlier run), and labels for the containers it creates.
#[derive(Default)]
struct Started {
    running: Vec<RunningComponent>,
    fingerprints: HashMap<String, String>,
}

/// Starts every component of `plan` not already running on the network
/// `network_id`. On failure, removes what this call created, by id, and the
/// network when it made the whole stack.
async fn start_on(
    docker: &Docker,
    plan: &Plan,
    labels: &StackLabels,
    network_id: &str,
    envs: HashMap<&str, Vec<String>>,
    started: Started,
    report: Option<&dyn Witness>,
) -> Result<DockerStack, DockerError> {
    let network = plan.namespace().to_string();
    let whole = started.running.is_empty();
    let created = std::sync::Mutex::new(Vec::new());
    let outcome = start_all(docker, plan, labels, network_id, envs, started, &created).await;
    if let (Err(error), Some(report)) = (&outcome, report) {
        // Before the removal below: the report is the stack's last trace.
        report.capture(&crate::error::error_chain(error)).await;
    }
    match outcome {
        Ok(containers) => Ok(DockerStack { network, containers }),
        Err(e @ DockerError::Silent { .. }) => {
            // Asking a frozen engine to remove the stack would only add its
            // own wait to the error; the next setup or `clean` removes it.
            tracing::warn!(
                %network,
                "the engine stopped answering; the partly started stack is left: once the engine answers, remove it with `e2e-infra down --consumer {} --run {}`",
                plan.consumer(),
                plan.run()
            );
            Err(e)
        }
        Err(e) => {
            // Only what this call created, by id: a stack of the same run
            // and consumer started by someone else carries the same labels.
            let containers = created.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
            let removing = remove_created(docker, &containers, whole.then_some(network_id));
            match engine::within(docker, CLEANUP_TIMEOUT, "removing the partly started stack", removing).await {
                Ok(Ok(())) => {}
                Ok(Err(cleanup)) => {
                    tracing::warn!(%network, error = %error_chain(&cleanup), "removing the partly started stack failed; remove it with `e2e-infra down`");
                }
                Err(silent) => {
                    tracing::warn!(%network, error = %error_chain(&silent), "removing the partly started stack failed; remove it with `e2e-infra down`");
                }
            }
            Err(e)
        }
    }
}

/// Two `up`s of one run and consumer racing past the check for an existing
/// network both create one of the same name, and the engine then refuses
/// to start containers on either ("ambiguous"). Both settle it the same
/// way: the oldest network (then the smallest id) wins; the other `up`
/// removes its own network and fails, and the winner waits until it has.
async fn settle_same_name(docker: &Docker, plan: &Plan, network: &str, ours: &str) -> Result<(), DockerError> {
    let same_name = HashMap::from([("name", vec![network.to_owned()])]);
    let exists = || DockerError::StackExists {
        run_id: plan.run().as_str().to_owned(),
        consumer: plan.consumer().as_str().to_owned(),
        network: network.to_owned(),
    };
    for _ in 0..SETTLE_ATTEMPTS {
        let listed = docker
            .list_networks(Some(ListNetworksOptionsBuilder::new().filters(&same_name).build()))
            .await
            .map_err(|source| DockerError::Network { network: network.to_owned(), operation: "looking for", source })?;
        let mut rivals: Vec<(String, String)> = listed
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(network))
            .filter_map(|n| Some((n.created.unwrap_or_default(), n.id?)))
            .collect();
        if rivals.iter().all(|(_, id)| id == ours) {
            return Ok(());
        }
        rivals.sort();
        if rivals.first().is_some_and(|(_, id)| id != ours) {
            remove_network(docker, ours, network).await?;
            return Err(exists());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    remove_network(docker, ours, network).await?;
    Err(exists())
}

/// How many times (100 ms apart) the winner of a race waits for the loser's
/// network to go.
const SETTLE_ATTEMPTS: u32 = 50;

/// Removes containers and a network by id, as created by one [`up`].
async fn remove_created(docker: &Docker, containers: &[String], network_id: Option<&str>) -> Result<(), DockerError> {
    for id in containers {
        match docker.remove_container(id, Some(RemoveContainerOptionsBuilder::new().force(true).v(true).build())).await
        {
            Ok(()) => {}
            Err(e) if gone(&e) => {}
            Err(source) => {
                return Err(DockerError::Container {
                    component: String::new(),
                    container: id.clone(),
                    operation: "removing",
                    source,
                })
            }
        }
    }
    match network_id {
        Some(id) => remove_network(docker, id, id).await.map(|_| ()),
        None => Ok(()),
    }
}

/// Removes the network with id `id` (`name` for messages), waiting out the
/// endpoints of containers removed a moment ago. `false` when it was gone.
async fn remove_network(docker: &Docker, id: &str, name: &str) -> Result<bool, DockerError> {
    let mut attempts = 0;
    loop {
        match docker.remove_network(id).await {
            Ok(()) => return Ok(true),
            Err(e) if gone(&e) => return Ok(false),
            // The engine detaches a removed container's endpoint a moment
            // after the removal returns; until then the network refuses to go.
            Err(e) if attempts < NETWORK_REMOVE_ATTEMPTS && has_active_endpoints(&e) => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(source) => {
                return Err(DockerError::Network { network: name.to_owned(), operation: "removing", source })
            }
        }
    }
}

/// How long one engine call for `component` may take.
fn call_limit(component: &PlannedComponent) -> Duration {
    component
        .spec
        .docker
        .as_ref()
        .and_then(|d| d.ready.as_ref())
        .map_or(ENGINE_CALL_TIMEOUT, |r| r.timeout.min(ENGINE_CALL_TIMEOUT))
}

async fn start_all(
    docker: &Docker,
    plan: &Plan,
    labels: &StackLabels,
    network: &str,
    mut envs: HashMap<&str, Vec<String>>,
    started: Started,
    created: &std::sync::Mutex<Vec<String>>,
) -> Result<Vec<RunningComponent>, DockerError> {
    let Started { running: mut ready, fingerprints } = started;
    let mut waiting: Vec<&PlannedComponent> =
        plan.components().iter().filter(|c| !ready.iter().any(|r| r.component == c.name)).collect();
    let mut starting = FuturesUnordered::new();
    loop {
        let (free, blocked): (Vec<_>, Vec<_>) =
            waiting.into_iter().partition(|c| c.depends_on.iter().all(|d| ready.iter().any(|r| &r.component == d)));
        waiting = blocked;
        for component in free {
            let env = envs.remove(component.name.as_str()).unwrap_or_default();
            let fingerprint = fingerprints.get(&component.name).map(String::as_str);
            starting.push(start_one(docker, plan, labels, component, network, env, fingerprint, created));
        }
        match starting.next().await {
            Some(result) => ready.push(result?),
            None => return Ok(ready),
        }
    }
}

fn docker_spec(component: &PlannedComponent) -> Result<&DockerSpec, DockerError> {
    component.spec.docker.as_ref().ok_or_else(|| DockerError::NotForDocker { component: component.name.clone() })
}

/// The component's env with `${dep.host}`, `${dep.port}` and `${dep.addr}`
/// filled in, as `KEY=value`. The catalog checked every reference when it
/// loaded: each names a dependency, and one with ports where it asks for one.
fn resolve_env(plan: &Plan, component: &PlannedComponent) -> Result<Vec<String>, DockerError> {
    let spec = docker_spec(component)?;
    let host_of = |dep: &str| container_name(plan, dep);
    Ok(spec.env.iter().map(|(key, template)| format!("{key}={}", template.fill(host_of))).collect())
}

// One argument a part of what a container is made from.
#[allow(clippy::too_many_arguments)]
async fn start_one(
    docker: &Docker,
    plan: &Plan,
    labels: &StackLabels,
    component: &PlannedComponent,
    network: &str,
    env: Vec<String>,
    fingerprint: Option<&str>,
    created_ids: &std::sync::Mutex<Vec<String>>,
) -> Result<RunningComponent, DockerError> {
    let spec = docker_spec(component)?;
    let name = container_name(plan, &component.name);
    let failed = |operation, source| DockerError::Container {
        component: component.name.clone(),
        container: name.clone(),
        operation,
        source,
    };
    let port_keys: Vec<String> = spec.ports.iter().map(|p| format!("{p}/tcp")).collect();
    let bindings = port_keys
        .iter()
        .map(|key| {
            let binding = PortBinding { host_ip: Some("127.0.0.1".to_owned()), host_port: Some(String::new()) };
            (key.clone(), Some(vec![binding]))
        })
        .collect();
    let endpoint = EndpointSettings { aliases: Some(vec![component.name.clone()]), ..Default::default() };
    let body = ContainerCreateBody {
        image: Some(component.image.to_string()),
        env: Some(env),
        cmd: spec.command.clone(),
        labels: Some(component_labels(labels, &component.name, fingerprint)),
        exposed_ports: Some(port_keys),
        host_config: Some(HostConfig {
            network_mode: Some(network.to_owned()),
            port_bindings: Some(bindings),
            ..Default::default()
        }),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(network.to_owned(), endpoint)])),
        }),
        ..Default::default()
    };
    let limit = call_limit(component);
    let silent = |source| DockerError::Silent { component: component.name.clone(), source };
    let creating = docker.create_container(Some(CreateContainerOptionsBuilder::new().name(&name).build()), body);
    let created = engine::within(docker, limit, "creating the container", creating)
        .await
        .map_err(silent)?
        .map_err(|e| failed("creating", e))?;
    created_ids.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(created.id.clone());
    // A racing `up` of the same run may hold a network of the same name for
    // the moment it takes to see it lost (see `settle_same_name`); the
    // engine resolves the network by name at start and calls it ambiguous.
    let mut attempts = 0;
    loop {
        let starting = docker.start_container(&created.id, None);
        match engine::within(docker, limit, "starting the container", starting).await.map_err(silent)? {
            Ok(()) => break,
            Err(e) if attempts < SETTLE_ATTEMPTS && is_ambiguous(&e) => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(failed("starting", e)),
        }
    }
    let started = Instant::now();
    tracing::info!(component = %component.name, container = %name, "started; waiting until ready");
    let probe = Prober::new(component, &name, spec.ready.as_ref());
    let ports = probe.wait(docker, &created.id, network, started).await?;
    let ready_after = started.elapsed();
    tracing::info!(component = %component.name, container = %name, ?ready_after, "ready");
    Ok(RunningComponent {
        component: component.name.clone(),
        container_id: created.id,
        container_name: name,
        ports: ports.into_iter().filter(|(port, _)| spec.ports.contains(port)).collect(),
        ready_after,
    })
}

/// Waits for one container to be ready.
struct Prober<'a> {
    component: &'a str,
    container: &'a str,
    ready: Option<&'a ReadySpec>,
}

/// What one look at the container found.
enum Seen {
    Running(Option<IpAddr>),
    Exited(i64),
}

impl<'a> Prober<'a> {
    fn new(component: &'a PlannedComponent, container: &'a str, ready: Option<&'a ReadySpec>) -> Self {
        Self { component: &component.name, container, ready }
    }

    /// Polls the container's state and the probe until ready; returns the
    /// published ports. A container that stops is reported at once.
    async fn wait(
        &self,
        docker: &Docker,
        id: &str,
        network: &str,
        started: Instant,
    ) -> Result<BTreeMap<u16, SocketAddr>, DockerError> {
        // Without a probe, running is ready: the first look decides.
        let deadline = Deadline::after(self.ready.map_or(ENGINE_CALL_TIMEOUT, |r| r.timeout));
        let mut looking = ContainerWatch { prober: self, docker, id, network, started, looked: false, log: None };
        match ready::until_ready(&mut looking, &deadline).await {
            Outcome::Ready(ports) => Ok(ports),
            Outcome::Failed(error) => Err(error),
            Outcome::TimedOut => Err(DockerError::NotReady {
                component: self.component.to_owned(),
                container: self.container.to_owned(),
                probe: self.ready.map_or_else(|| "running".to_owned(), |r| describe(&r.probe)),
                timeout: deadline.timeout(),
                logs: last_logs(docker, id).await,
            }),
        }
    }

    async fn attempt(&self, docker: &Docker, id: &str, ip: Option<IpAddr>, probe: &Probe) -> bool {
        match probe {
            Probe::Tcp(port) => match ip {
                Some(ip) => tcp_open(SocketAddr::new(ip, *port)).await,
                None => false,
            },
            Probe::Http(http) => match ip {
                Some(ip) => http_ok(SocketAddr::new(ip, http.port), &http.path).await,
                None => false,
            },
            // Followed by the wait ([`follow::LogFollower`]), not polled.
            Probe::Log(_) | Probe::Completes => false,
            Probe::Exec(argv) => {
                let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                let running = engine::exec(docker, id, &argv, None, (0, 0));
                matches!(tokio::time::timeout(ATTEMPT, running).await, Ok(Ok(out)) if out.exit_code == Some(0))
            }
        }
    }
}

/// One container as [`ready::until_ready`] looks at it: its state, then
/// its probe, every [`POLL`].
struct ContainerWatch<'a> {
    prober: &'a Prober<'a>,
    docker: &'a Docker,
    id: &'a str,
    network: &'a str,
    started: Instant,
    looked: bool,
    /// The followed log, for a `log` probe.
    log: Option<follow::LogFollower>,
}

impl ready::Watch for ContainerWatch<'_> {
    type Ready = BTreeMap<u16, SocketAddr>;
    type Error = DockerError;

    async fn look(&mut self, deadline: &Deadline) -> Look<Self::Ready, DockerError> {
        if std::mem::replace(&mut self.looked, true) {
            tokio::time::sleep(POLL).await;
        }
        let (prober, docker, id) = (self.prober, self.docker, self.id);
        // The deadline bounds the engine calls too, so a frozen engine
        // cannot stretch the wait; it is reported as such, not as a probe
        // that never passed.
        let inspecting = docker.inspect_container(id, None);
        let inspected =
            match engine::within(docker, deadline.left().max(MIN_POLL_CALL), "inspecting the container", inspecting)
                .await
            {
                Err(source) => {
                    return Look::Failed(DockerError::Silent { component: prober.component.to_owned(), source })
                }
                Ok(Err(source)) => {
                    return Look::Failed(DockerError::Container {
                        component: prober.component.to_owned(),
                        container: prober.container.to_owned(),
                        operation: "inspecting",
                        source,
                    })
                }
                Ok(Ok(inspected)) => inspected,
            };
        let ports = published_ports(&inspected);
        let completes = matches!(prober.ready.map(|r| &r.probe), Some(Probe::Completes));
        match seen(&inspected, self.network) {
            Seen::Exited(0) if completes => Look::Ready(ports),
            Seen::Exited(exit_code) => Look::Failed(DockerError::Exited {
                component: prober.component.to_owned(),
                container: prober.container.to_owned(),
                exit_code,
                after: self.started.elapsed(),
                logs: last_logs(docker, id).await,
            }),
            Seen::Running(ip) => {
                let ready = match prober.ready.map(|r| &r.probe) {
                    None => true,
                    Some(Probe::Log(pattern)) => {
                        self.log.get_or_insert_with(|| follow::LogFollower::new(docker, id)).saw(pattern).await
                    }
                    Some(probe) => prober.attempt(docker, id, ip, probe).await,
                };
                if ready {
                    Look::Ready(ports)
                } else {
                    Look::Waiting
                }
            }
        }
    }
}

fn seen(inspected: &bollard::models::ContainerInspectResponse, network: &str) -> Seen {
    use bollard::models::ContainerStateStatusEnum as Status;
    let state = inspected.state.clone().unwrap_or_default();
    if matches!(state.status, Some(Status::EXITED | Status::DEAD)) {
        return Seen::Exited(state.exit_code.unwrap_or(-1));
    }
    let ip = inspected
        .network_settings
        .as_ref()
        .and_then(|s| s.networks.as_ref())
        // `network` is the id the container was attached by; engines key
        // endpoints by network name, and Podman reports the name as the
        // network id too. The container is attached to that network only.
        .and_then(|n| {
            n.get(network).or_else(|| n.values().find(|e| e.network_id.as_deref() == Some(network))).or_else(|| {
                if n.len() == 1 {
                    n.values().next()
                } else {
                    None
                }
            })
        })
        .and_then(|e| e.ip_address.as_deref())
        .and_then(|ip| ip.parse().ok());
    Seen::Running(ip)
}

fn published_ports(inspected: &bollard::models::ContainerInspectResponse) -> BTreeMap<u16, SocketAddr> {
    let mut ports = BTreeMap::new();
    let map = inspected.network_settings.as_ref().and_then(|s| s.ports.as_ref());
    for (key, bindings) in map.into_iter().flatten() {
        let Some(port) = key.strip_suffix("/tcp").and_then(|p| p.parse().ok()) else { continue };
        let found = bindings.iter().flatten().find_map(|b| {
            let ip: IpAddr = match b.host_ip.as_deref() {
                None | Some("") | Some("0.0.0.0") => IpAddr::from([127, 0, 0, 1]),
                Some(ip) => ip.parse().ok()?,
            };
            let host_port = b.host_port.as_deref()?.parse().ok()?;
            Some(SocketAddr::new(ip, host_port))
        });
        if let Some(addr) = found {
            ports.insert(port, addr);
        }
    }
    ports
}

fn describe(probe: &Probe) -> String {
    match probe {
        Probe::Tcp(port) => format!("a TCP connect to port {port}"),
        Probe::Http(http) => format!("an HTTP GET of {} on port {} answering 2xx", http.path, http.port),
        Probe::Log(pattern) => format!("a log line matching `{pattern}`"),
        Probe::Completes => "running to completion with exit code 0".to_owned(),
        Probe::Exec(argv) => format!("the command {argv:?} exiting 0 inside the container"),
    }
}

async fn tcp_open(addr: SocketAddr) -> bool {
    matches!(tokio::time::timeout(ATTEMPT, TcpStream::connect(addr)).await, Ok(Ok(_)))
}

async fn http_ok(addr: SocketAddr, path: &str) -> bool {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut head = [0; 64];
        let mut read = 0;
        while read < head.len() {
            let n = stream.read(&mut head[read..]).await?;
            if n == 0 || head[..read + n].contains(&b'\n') {
                read += n;
                break;
            }
            read += n;
        }
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&head[..read]).into_owned())
    };
    match tokio::time::timeout(ATTEMPT, exchange).await {
        Ok(Ok(head)) => status_is_success(&head),
        _ => false,
    }
}

/// Whether an HTTP status line says 2xx.
fn status_is_success(head: &str) -> bool {
    let mut parts = head.split_whitespace();
    parts.next().is_some_and(|v| v.starts_with("HTTP/"))
        && parts.next().is_some_and(|code| code.len() == 3 && code.starts_with('2'))
}

async fn fetch_logs(docker: &Docker, id: &str, tail: &str) -> String {
    let options = LogsOptionsBuilder::new().stdout(true).stderr(true).tail(tail).build();
    let mut text = String::new();
    let mut logs = docker.logs(id, Some(options));
    let reading = async {
        while let Some(chunk) = logs.next().await {
            match chunk {
                Ok(out) => text.push_str(&out.to_string()),
                Err(e) => {
                    text.push_str(&format!("<reading the logs failed: {e}>"));
                    break;
                }
            }
        }
    };
    if tokio::time::timeout(LOGS_TIMEOUT, reading).await.is_err() {
        text.push_str(&format!("\n{LOGS_SILENT} within {LOGS_TIMEOUT:?}>"));
    }
    text
}

/// Marks logs cut short because the engine stopped sending them.
const LOGS_SILENT: &str = "<the engine did not send the logs";

async fn last_logs(docker: &Docker, id: &str) -> String {
    let text = fetch_logs(docker, id, LOG_TAIL).await;
    if text.trim().is_empty() {
        "<no output>".to_owned()
    } else {
        text.trim_end().to_owned()
    }
}

const NETWORK_REMOVE_ATTEMPTS: u32 = 25;

fn is_ambiguous(error: &bollard::errors::Error) -> bool {
    matches!(error, bollard::errors::Error::DockerResponseServerError { message, .. } if message.contains("is ambiguous"))
}

fn has_active_endpoints(error: &bollard::errors::Error) -> bool {
    matches!(error, bollard::errors::Error::DockerResponseServerError { message, .. } if message.contains("active endpoints"))
}

/// Removes (forcibly) every container, then every network (by id), then
/// every marker volume, that carries all
/// of `filters` (`key=value`, e.g. from [`labels::filter`]) and the
/// managed-by label. Images are never removed.
///
/// # Errors
/// [`DockerError::List`] when listing fails, [`DockerError::Container`] or
/// [`DockerError::Network`] when a removal fails; something removed
/// meanwhile by someone else is not an error.
pub async fn remove_labelled(docker: &Docker, filters: &[String]) -> Result<Removed, DockerError> {
    let mut labels = vec![format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE)];
    labels.extend(filters.iter().filter(|f| !labels.contains(f)).cloned().collect::<Vec<_>>());
    let filter = engine::label_filter(&labels);
    let list_error = |what| {
        let filters = labels.clone();
        move |source| DockerError::List { what, filters, source }
    };
    let mut removed = Removed::default();
    let containers = engine::labelled_containers(docker, &labels).await.map_err(list_error("containers"))?;
    for container in containers {
        let Some(id) = container.id.clone() else { continue };
        let name = engine::container_name(&container, &id);
        let component = container.labels.and_then(|l| l.get(labels::COMPONENT).cloned()).unwrap_or_default();
        match docker.remove_container(&id, Some(RemoveContainerOptionsBuilder::new().force(true).v(true).build())).await
        {
            Ok(()) => removed.containers.push(name),
            Err(e) if gone(&e) => {}
            Err(source) => {
                return Err(DockerError::Container { component, container: name, operation: "removing", source })
            }
        }
    }
    let networks = docker
        .list_networks(Some(ListNetworksOptionsBuilder::new().filters(&filter).build()))
        .await
        .map_err(list_error("networks"))?;
    for network in networks {
        // By id: two networks may share a name, and a name then is ambiguous.
        let Some(id) = network.id else { continue };
        let name = network.name.unwrap_or_else(|| id.clone());
        if remove_network(docker, &id, &name).await? {
            removed.networks.push(name);
        }
    }
    let volumes = docker
        .list_volumes(Some(ListVolumesOptionsBuilder::new().filters(&filter).build()))
        .await
        .map_err(list_error("volumes"))?;
    for volume in volumes.volumes.unwrap_or_default() {
        match docker.remove_volume(&volume.name, None::<bollard::query_parameters::RemoveVolumeOptions>).await {
            Ok(()) => removed.markers.push(volume.name),
            Err(e) if gone(&e) => {}
            Err(source) => return Err(DockerError::Marker { volume: volume.name, operation: "removing", source }),
        }
    }
    Ok(removed)
}

/// Whether the engine says the object no longer exists (or is already being
/// removed by someone else).
fn gone(error: &bollard::errors::Error) -> bool {
    match error {
        bollard::errors::Error::DockerResponseServerError { status_code: 404, .. } => true,
        bollard::errors::Error::DockerResponseServerError { status_code: 409, message } => {
            message.contains("already in progress")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{Catalog, Delivery, RunId};

    fn plan(catalog: &str) -> Plan {
        let catalog = Catalog::parse(Path::new("/project/e2e-infra.toml"), catalog).unwrap();
        Plan::new(&catalog, "unit", &["app"], RunId::explicit("unit-run", None).unwrap(), &Delivery::Local).unwrap()
    }

    const DB: &str = "[components.db]\nimage = \"postgres:16\"\ndocker = { ports = [5432, 9187] }\n";

    #[test]
    fn env_references_become_container_names_and_first_ports() {
        let plan = plan(&format!(
            "{DB}[components.app]\nimage = \"app:1\"\ndepends_on = [\"db\"]\ndocker = {{ env = {{ DSN = \"postgres://u@${{db.addr}}/x\", H = \"${{db.host}}\", P = \"${{db.port}}\", PLAIN = \"$HOME\" }} }}\n"
        ));
        let db = container_name(&plan, "db");
        let env = resolve_env(&plan, plan.component("app").unwrap()).unwrap();
        assert_eq!(
            env,
            [format!("DSN=postgres://u@{db}:5432/x"), format!("H={db}"), "P=5432".to_owned(), "PLAIN=$HOME".to_owned()]
        );
    }

    #[test]
    fn a_component_without_a_docker_section_cannot_run_here() {
        let plan = plan(&format!("{DB}[components.app]\nimage = \"app:1\"\ndepends_on = [\"db\"]\n"));
        let error = resolve_env(&plan, plan.component("app").unwrap()).unwrap_err();
        assert!(matches!(error, DockerError::NotForDocker { .. }), "{error}");
    }

    #[test]
    fn http_status_lines() {
        assert!(status_is_success("HTTP/1.0 200 OK\r\n"));
        assert!(status_is_success("HTTP/1.1 204 No Content\r\n"));
        assert!(!status_is_success("HTTP/1.1 404 Not Found\r\n"));
        assert!(!status_is_success("HTTP/1.1 500 Oops\r\n"));
        assert!(!status_is_success("SSH-2.0-OpenSSH\r\n"));
        assert!(!status_is_success(""));
    }
}

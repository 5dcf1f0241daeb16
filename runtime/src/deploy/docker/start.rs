//! Starting a plan's components: each once its dependencies are ready,
//! those whose dependencies are ready together; on failure, what this call
//! created is removed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, EndpointSettings, HostConfig, NetworkingConfig, PortBinding};
use bollard::query_parameters::CreateContainerOptionsBuilder;
use bollard::Docker;
use futures::stream::FuturesUnordered;
use futures::StreamExt;

use super::network::{is_ambiguous, SETTLE_ATTEMPTS};
use super::probe::Prober;
use super::remove::remove_created;
use super::{DockerError, DockerStack, RunningComponent, ENGINE_CALL_TIMEOUT};
use crate::catalog::DockerSpec;
use crate::engine;
use crate::error::error_chain;
use crate::labels::{self, StackLabels};
use crate::plan::{Plan, PlannedComponent};
use crate::record::Witness;

/// How long removing a partly started stack may take before `up` reports
/// its own error and leaves the rest to `e2e-infra clean`.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(20);

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

/// Every component's resolved environment.
pub(super) fn resolve_envs(plan: &Plan) -> Result<HashMap<&str, Vec<String>>, DockerError> {
    let mut envs = HashMap::new();
    for component in plan.components() {
        envs.insert(component.name.as_str(), resolve_env(plan, component)?);
    }
    Ok(envs)
}

/// What a call to [`start_on`] starts from: components already running
/// (kept from an earlier run), and labels for the containers it creates.
#[derive(Default)]
pub(super) struct Started {
    pub(super) running: Vec<RunningComponent>,
    pub(super) fingerprints: HashMap<String, String>,
}

/// Starts every component of `plan` not already running on the network
/// `network_id`. On failure, removes what this call created, by id, and the
/// network when it made the whole stack.
pub(super) async fn start_on(
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

/// How long one engine call for `component` may take.
pub(super) fn call_limit(component: &PlannedComponent) -> Duration {
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

pub(super) fn docker_spec(component: &PlannedComponent) -> Result<&DockerSpec, DockerError> {
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
}

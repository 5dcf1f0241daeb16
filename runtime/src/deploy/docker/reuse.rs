//! Reusable stacks (`E2E_INFRA_REUSE=1`): a stack that outlives its run and
//! is picked up again by the next one, container by container.
//!
//! Every container of a reusable stack carries a fingerprint of what it
//! runs: the image id, the resolved environment and the component's Docker
//! section (command, ports, probe). The next run computes the same for its
//! plan. A container whose fingerprint matches and that still runs is kept
//! as it is; every other one is replaced, and so is every component that
//! depends on a replaced one (it may hold connections to the old one).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bollard::models::{ContainerSummary, ContainerSummaryStateEnum};
use bollard::query_parameters::RemoveContainerOptionsBuilder;
use bollard::Docker;
use sha2::{Digest, Sha256};

use super::network::{create_network, find_network};
use super::remove::removed;
use super::start::{call_limit, docker_spec, resolve_envs, start_on, Started};
use super::{DockerError, DockerStack, RunningComponent, ENGINE_CALL_TIMEOUT};
use crate::engine;
use crate::labels::{self, StackLabels};
use crate::plan::Plan;
use crate::record::Witness;

/// Brings `plan`'s stack up as a reusable one, keeping the containers of an
/// earlier run whose fingerprint still matches. `image_ids` maps each
/// component to the id of the image its reference names now. Returns the
/// stack and the components kept as they were.
///
/// # Errors
/// [`DockerError`] as [`super::up`]; on failure only what this call created
/// is removed, and containers it kept stay for the next run.
pub async fn up_reusing(
    docker: &Docker,
    plan: &Plan,
    labels: &StackLabels,
    image_ids: &HashMap<String, String>,
    report: Option<&dyn Witness>,
) -> Result<(DockerStack, Vec<String>), DockerError> {
    let envs = resolve_envs(plan)?;
    let mut fingerprints = HashMap::new();
    for component in plan.components() {
        let image_id = image_ids.get(&component.name).map_or("", String::as_str);
        let env = envs.get(component.name.as_str()).map_or(&[][..], Vec::as_slice);
        fingerprints.insert(component.name.clone(), fingerprint(image_id, env, docker_spec(component)?));
    }
    let limit = plan.components().iter().map(call_limit).max().unwrap_or(ENGINE_CALL_TIMEOUT);
    let silent = |source| DockerError::Silent { component: format!("the reusable stack {}", plan.namespace()), source };
    let listing = engine::labelled_containers(docker, &labels.filter());
    let existing = engine::within(docker, limit, "listing the reusable stack's containers", listing)
        .await
        .map_err(silent)?
        .map_err(|source| DockerError::List { what: "containers", filters: labels.filter(), source })?;
    let network = plan.namespace().to_string();
    // The containers say which network they are on; only a stack without
    // containers needs to look for it.
    let attached =
        existing.iter().find_map(|c| c.network_settings.as_ref()?.networks.as_ref()?.get(&network)?.network_id.clone());
    let network_id = match attached {
        Some(id) => id,
        None => match find_network(docker, plan).await? {
            Some(id) => id,
            None => {
                let network_id = create_network(docker, plan, labels, true).await?;
                let stack = start_on(
                    docker,
                    plan,
                    labels,
                    &network_id,
                    envs,
                    Started { running: Vec::new(), fingerprints },
                    report,
                )
                .await?;
                return Ok((stack, Vec::new()));
            }
        },
    };

    // component -> the container, and whether it still matches
    let mut found: HashMap<String, (ContainerSummary, bool)> = HashMap::new();
    let mut strangers = Vec::new();
    for container in existing {
        let labels = container.labels.clone().unwrap_or_default();
        let component = labels.get(labels::COMPONENT).cloned().unwrap_or_default();
        let Some(wanted) = fingerprints.get(&component) else {
            strangers.extend(container.id);
            continue;
        };
        let running = container.state == Some(ContainerSummaryStateEnum::RUNNING);
        let matches = running && labels.get(labels::FINGERPRINT) == Some(wanted);
        found.insert(component, (container, matches));
    }
    let replaced = replaced(plan, &found);
    let mut removals = strangers;
    removals.extend(found.iter().filter(|(c, _)| replaced.contains(c.as_str())).filter_map(|(_, (c, _))| c.id.clone()));
    remove_changed(docker, plan, limit, &removals).await?;
    let mut running = Vec::new();
    for component in plan.components().iter().filter(|c| !replaced.contains(c.name.as_str())) {
        let Some((container, _)) = found.get(&component.name) else { continue };
        let declared = &docker_spec(component)?.ports;
        running.push(RunningComponent {
            component: component.name.clone(),
            container_id: container.id.clone().unwrap_or_default(),
            container_name: container
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_owned())
                .unwrap_or_default(),
            ports: published(container).into_iter().filter(|(port, _)| declared.contains(port)).collect(),
            ready_after: Duration::ZERO,
        });
    }
    let kept: Vec<String> = running.iter().map(|r| r.component.clone()).collect();
    tracing::info!(consumer = %plan.consumer(), ?kept, ?replaced, "reusing the stack");
    let stack = start_on(docker, plan, labels, &network_id, envs, Started { running, fingerprints }, report).await?;
    Ok((stack, kept))
}

/// Removes the containers `ids` of the reusable stack that changed or that
/// no component claims; one already gone is no error.
async fn remove_changed(docker: &Docker, plan: &Plan, limit: Duration, ids: &[String]) -> Result<(), DockerError> {
    let silent = |source| DockerError::Silent { component: format!("the reusable stack {}", plan.namespace()), source };
    for id in ids {
        let removing =
            docker.remove_container(id, Some(RemoveContainerOptionsBuilder::new().force(true).v(true).build()));
        removed(id, engine::within(docker, limit, "removing a changed container", removing).await.map_err(silent)?)?;
    }
    Ok(())
}

/// The components to (re)create: those without a matching running
/// container, and everything that depends on one of them.
fn replaced<'a>(plan: &'a Plan, found: &HashMap<String, (ContainerSummary, bool)>) -> BTreeSet<&'a str> {
    let mut replaced: BTreeSet<&str> = plan
        .components()
        .iter()
        .filter(|c| !found.get(&c.name).is_some_and(|(_, matches)| *matches))
        .map(|c| c.name.as_str())
        .collect();
    loop {
        let more: Vec<&str> = plan
            .components()
            .iter()
            .filter(|c| !replaced.contains(c.name.as_str()))
            .filter(|c| c.depends_on.iter().any(|d| replaced.contains(d.as_str())))
            .map(|c| c.name.as_str())
            .collect();
        if more.is_empty() {
            return replaced;
        }
        replaced.extend(more);
    }
}

/// The ports a listed container publishes, as the listing reports them.
fn published(container: &ContainerSummary) -> BTreeMap<u16, SocketAddr> {
    let mut ports = BTreeMap::new();
    for port in container.ports.iter().flatten() {
        let Some(public) = port.public_port else { continue };
        let ip: IpAddr = match port.ip.as_deref() {
            None | Some("" | "0.0.0.0") => IpAddr::from([127, 0, 0, 1]),
            Some(ip) => match ip.parse() {
                Ok(ip) => ip,
                Err(_) => continue,
            },
        };
        // The listing shows a port once per address family.
        ports.entry(port.private_port).or_insert(SocketAddr::new(ip, public));
    }
    ports
}

/// The digest of what a container runs.
fn fingerprint(image_id: &str, env: &[String], spec: &crate::catalog::DockerSpec) -> String {
    let mut hasher = Sha256::new();
    hasher.update(image_id.as_bytes());
    for line in env {
        hasher.update(b"\n");
        hasher.update(line.as_bytes());
    }
    hasher.update(format!("\n{:?}\n{:?}\n{:?}", spec.command, spec.ports, spec.ready).as_bytes());
    hex::encode(&hasher.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::fingerprint;
    use crate::catalog::DockerSpec;

    #[test]
    fn the_fingerprint_changes_with_the_image_the_env_and_the_command() {
        let spec = DockerSpec::default();
        let base = fingerprint("sha256:a", &["K=v".to_owned()], &spec);
        assert_eq!(base, fingerprint("sha256:a", &["K=v".to_owned()], &spec));
        assert_ne!(base, fingerprint("sha256:b", &["K=v".to_owned()], &spec));
        assert_ne!(base, fingerprint("sha256:a", &["K=w".to_owned()], &spec));
        let mut command = DockerSpec::default();
        command.command = Some(vec!["serve".to_owned()]);
        assert_ne!(base, fingerprint("sha256:a", &["K=v".to_owned()], &command));
    }
}

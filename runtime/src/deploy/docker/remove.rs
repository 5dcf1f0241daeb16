//! Removal: the containers and network one `up` created, by id, and
//! everything carrying a run's labels.

use std::time::Duration;

use bollard::query_parameters::{ListNetworksOptionsBuilder, ListVolumesOptionsBuilder, RemoveContainerOptionsBuilder};
use bollard::Docker;
use serde::{Deserialize, Serialize};

use super::DockerError;
use crate::engine;
use crate::labels;

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

/// What the engine's answer to removing container `id` means: one already
/// gone is removed too.
pub(super) fn removed(id: &str, answer: Result<(), bollard::errors::Error>) -> Result<(), DockerError> {
    match answer {
        Err(e) if !gone(&e) => Err(DockerError::Container {
            component: String::new(),
            container: id.to_owned(),
            operation: "removing",
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Removes containers and a network by id, as created by one [`super::up`].
pub(super) async fn remove_created(
    docker: &Docker,
    containers: &[String],
    network_id: Option<&str>,
) -> Result<(), DockerError> {
    for id in containers {
        let removing =
            docker.remove_container(id, Some(RemoveContainerOptionsBuilder::new().force(true).v(true).build())).await;
        removed(id, removing)?;
    }
    match network_id {
        Some(id) => remove_network(docker, id, id).await.map(|_| ()),
        None => Ok(()),
    }
}

/// Removes the network with id `id` (`name` for messages), waiting out the
/// endpoints of containers removed a moment ago. `false` when it was gone.
pub(super) async fn remove_network(docker: &Docker, id: &str, name: &str) -> Result<bool, DockerError> {
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

const NETWORK_REMOVE_ATTEMPTS: u32 = 25;

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
pub(super) fn gone(error: &bollard::errors::Error) -> bool {
    match error {
        bollard::errors::Error::DockerResponseServerError { status_code: 404, .. } => true,
        bollard::errors::Error::DockerResponseServerError { status_code: 409, message } => {
            message.contains("already in progress")
        }
        _ => false,
    }
}

//! The run's network: created once per run and consumer, found again by
//! name, and settled when two `up`s of one run race to create it.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::ListNetworksOptionsBuilder;
use bollard::Docker;

use super::remove::remove_network;
use super::start::call_limit;
use super::{DockerError, ENGINE_CALL_TIMEOUT};
use crate::engine;
use crate::labels::{self, StackLabels};
use crate::plan::Plan;

/// Creates the run's network (marked reusable when `reuse`); its id.
/// Refuses when the run already has one.
pub(super) async fn create_network(
    docker: &Docker,
    plan: &Plan,
    stack: &StackLabels,
    reuse: bool,
) -> Result<String, DockerError> {
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
pub(super) async fn find_network(docker: &Docker, plan: &Plan) -> Result<Option<String>, DockerError> {
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
pub(super) const SETTLE_ATTEMPTS: u32 = 50;

pub(super) fn is_ambiguous(error: &bollard::errors::Error) -> bool {
    matches!(error, bollard::errors::Error::DockerResponseServerError { message, .. } if message.contains("is ambiguous"))
}

//! Finding and removing what runs left behind, by their labels.
//!
//! A run's teardown process removes its stack when the run ends. When that
//! process could not (the machine went down, it was killed), the leftovers
//! carry the launcher's pid and start time: a run whose launcher is gone is
//! dead, and the next run or `e2e-infra clean` removes it. Stacks kept on
//! purpose (a failed test, `E2E_INFRA_KEEP=1`) and stacks brought up by hand
//! (`e2e-infra up`, no launcher) are left alone unless asked.

use std::collections::BTreeMap;
use std::collections::HashMap;

use bollard::query_parameters::{ListContainersOptions, ListNetworksOptions};
use bollard::Docker;

use crate::backend::{ImageTarget, KubeTarget};
use crate::deploy::docker::DockerError;
use crate::deploy::kube as kube_backend;
use crate::labels;
use crate::plan::Launcher;
use crate::stack::{self, StackError};
use crate::suite::state::RunDir;

/// Whether a run is still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Its launcher runs.
    Alive,
    /// Its launcher is gone.
    Dead,
    /// Brought up by hand; lives until `e2e-infra down`.
    Manual,
}

/// What one run and consumer owns on the engine.
#[derive(Debug, Clone)]
pub struct RunStack {
    /// The run identity.
    pub run_id: String,
    /// The consumer.
    pub consumer: String,
    /// The launcher recorded in the labels.
    pub launcher: Option<Launcher>,
    /// Container names.
    pub containers: Vec<String>,
    /// Network names.
    pub networks: Vec<String>,
    /// The namespace and cluster, for a stack on Kubernetes.
    pub kube: Option<(String, KubeTarget)>,
    /// Kept on purpose.
    pub kept: bool,
}

impl RunStack {
    /// Whether the run is still going.
    pub fn liveness(&self) -> Liveness {
        match self.launcher {
            None => Liveness::Manual,
            Some(launcher) if launcher.is_alive() => Liveness::Alive,
            Some(_) => Liveness::Dead,
        }
    }
}

fn managed_filter() -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_owned(),
        vec![format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE)],
    )])
}

fn listing(what: &'static str, source: bollard::errors::Error) -> StackError {
    StackError::Docker(DockerError::List { what, filters: managed_filter()["label"].clone(), source })
}

/// Every run and consumer that owns containers or networks on the engine.
///
/// # Errors
/// [`StackError::Docker`] when the engine cannot list them.
pub async fn list(docker: &Docker) -> Result<Vec<RunStack>, StackError> {
    let containers = docker
        .list_containers(Some(ListContainersOptions { all: true, filters: Some(managed_filter()), ..Default::default() }))
        .await
        .map_err(|source| listing("containers", source))?;
    let networks = docker
        .list_networks(Some(ListNetworksOptions { filters: Some(managed_filter()) }))
        .await
        .map_err(|source| listing("networks", source))?;
    let mut runs: BTreeMap<(String, String), RunStack> = BTreeMap::new();
    let owned = containers
        .into_iter()
        .map(|c| (c.labels, c.names.and_then(|n| n.into_iter().next()), true))
        .chain(networks.into_iter().map(|n| (n.labels, n.name, false)));
    for (labels, name, is_container) in owned {
        let Some(labels) = labels else { continue };
        let (Some(run_id), Some(consumer)) = (labels.get(labels::RUN), labels.get(labels::CONSUMER)) else {
            continue;
        };
        let run = runs.entry((run_id.clone(), consumer.clone())).or_insert_with(|| RunStack {
            kept: RunDir::existing(run_id, consumer).is_some_and(|d| d.is_kept()),
            run_id: run_id.clone(),
            consumer: consumer.clone(),
            launcher: labels.get(labels::LAUNCHER).and_then(|l| Launcher::from_label(l)),
            containers: Vec::new(),
            networks: Vec::new(),
            kube: None,
        });
        let name = name.unwrap_or_default().trim_start_matches('/').to_owned();
        if is_container {
            run.containers.push(name);
        } else {
            run.networks.push(name);
        }
    }
    Ok(runs.into_values().collect())
}

/// Every run and consumer that owns a namespace on the cluster of
/// kubeconfig context `context` (the current one when `None`). A namespace
/// that does not record where its images went is skipped with a warning.
///
/// # Errors
/// [`StackError::Kube`] when the cluster does not answer or refuses.
pub async fn list_kube(context: Option<&str>) -> Result<Vec<RunStack>, StackError> {
    let client = kube_backend::connect(context).await?;
    let mut runs = Vec::new();
    for found in kube_backend::run_namespaces(client).await? {
        let Some(images) = found.images.as_deref().and_then(|i| serde_json::from_str::<ImageTarget>(i).ok()) else {
            tracing::warn!(
                "namespace `{}` of run {} does not record where its images went; remove it with `kubectl delete namespace {}`",
                found.name,
                found.run_id,
                found.name
            );
            continue;
        };
        runs.push(RunStack {
            kept: RunDir::existing(&found.run_id, &found.consumer).is_some_and(|d| d.is_kept()),
            launcher: Launcher::from_label(&found.launcher),
            kube: Some((found.name, KubeTarget { context: context.map(str::to_owned), images })),
            run_id: found.run_id,
            consumer: found.consumer,
            containers: Vec::new(),
            networks: Vec::new(),
        });
    }
    Ok(runs)
}

/// Removes the stacks of dead runs among `runs` (of `consumer` only, when
/// given); kept ones only with `include_kept`. Returns each removed stack
/// with what was removed.
///
/// # Errors
/// [`StackError`] when the engine or cluster refuses.
pub async fn clean_dead(
    docker: &Docker,
    runs: Vec<RunStack>,
    consumer: Option<&str>,
    include_kept: bool,
) -> Result<Vec<(RunStack, String)>, StackError> {
    let mut removed = Vec::new();
    for run in runs {
        let ours = consumer.is_none_or(|c| c == run.consumer);
        if !ours || run.liveness() != Liveness::Dead || (run.kept && !include_kept) {
            continue;
        }
        let kube = run.kube.as_ref().map(|(_, target)| target);
        let summary = stack::down(docker, &run.run_id, &run.consumer, kube).await?;
        if let Some(dir) = RunDir::existing(&run.run_id, &run.consumer) {
            let _ = dir.remove();
        }
        removed.push((run, summary));
    }
    Ok(removed)
}

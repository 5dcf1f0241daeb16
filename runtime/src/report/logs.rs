//! A stack's logs for people: every container's lines, each prefixed with
//! its component and container, one container after the other, or all of
//! them interleaved as they come when followed.

use std::io::Write;

use futures::stream::{self, BoxStream};
use futures::{AsyncBufReadExt as _, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, LogParams};
use kube::{Api, ResourceExt};

use super::{bounded_call, CALL_LIMIT};
use crate::labels;
use crate::plan::RunKey;
use crate::record::Placement;

/// The logs of a stack could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogsError {
    /// The engine or cluster did not answer, or refused.
    #[error("reading the logs of the `{}` stack of run `{}` failed: {problem}", key.consumer(), key.run())]
    Source {
        /// Which stack.
        key: RunKey,
        /// What failed.
        problem: String,
    },
    /// Nothing of the component runs in the stack.
    #[error("the `{}` stack of run `{}` has no container of component `{component}`; its components: {}", key.consumer(), key.run(), known.join(", "))]
    NoComponent {
        /// Which stack.
        key: RunKey,
        /// The component asked for.
        component: String,
        /// The components it has.
        known: Vec<String>,
    },
    /// The output could not be written.
    #[error("writing the logs failed")]
    Output(#[source] std::io::Error),
}

/// Which logs to print.
#[derive(Debug, Clone)]
pub struct Selection {
    /// Which stack.
    pub key: RunKey,
    /// Only this component's containers.
    pub component: Option<String>,
    /// Keep printing new lines until the containers end or the process is stopped.
    pub follow: bool,
}

type Lines = BoxStream<'static, String>;

/// Writes the logs of the stack placed at `placement` to `out`. Without
/// `follow`, each read waits at most [`CALL_LIMIT`] for the engine.
///
/// # Errors
/// [`LogsError`] when the engine or cluster does not answer, when the
/// component has no container, or when `out` refuses.
pub async fn print(placement: &Placement, selection: &Selection, out: &mut impl Write) -> Result<(), LogsError> {
    let failed = |problem: String| LogsError::Source { key: selection.key.clone(), problem };
    let sources = match placement {
        Placement::Docker { docker_host, .. } => docker_lines(docker_host.as_deref(), selection).await,
        Placement::Kubernetes { target } => kube_lines(target.context.as_deref(), selection).await,
    }
    .map_err(failed)?;
    if let Some(component) = &selection.component {
        if !sources.iter().any(|(c, _)| c == component) {
            let mut known: Vec<String> = sources.iter().map(|(c, _)| c.clone()).collect();
            known.dedup();
            return Err(LogsError::NoComponent { key: selection.key.clone(), component: component.clone(), known });
        }
    }
    let chosen: Vec<Lines> = sources
        .into_iter()
        .filter(|(c, _)| selection.component.as_ref().is_none_or(|wanted| wanted == c))
        .map(|(_, lines)| lines)
        .collect();
    let mut lines: Lines =
        if selection.follow { stream::select_all(chosen).boxed() } else { stream::iter(chosen).flatten().boxed() };
    loop {
        let next = if selection.follow {
            lines.next().await
        } else {
            match tokio::time::timeout(CALL_LIMIT, lines.next()).await {
                Ok(next) => next,
                Err(_) => {
                    writeln!(out, "[e2e-infra: no more lines came within {CALL_LIMIT:?}; stopped]")
                        .map_err(LogsError::Output)?;
                    None
                }
            }
        };
        let Some(line) = next else { return Ok(()) };
        writeln!(out, "{line}").map_err(LogsError::Output)?;
    }
}

/// Per container of the stack on the engine: its component and its lines.
async fn docker_lines(host: Option<&str>, selection: &Selection) -> Result<Vec<(String, Lines)>, String> {
    let connecting = async {
        match host {
            Some(host) => crate::engine::connect_to(host).await,
            None => crate::engine::connect().await,
        }
    };
    let docker = bounded_call("connecting to the container engine", connecting).await?;
    let listing = crate::engine::labelled_containers(&docker, &labels::filter(&selection.key));
    let listed = bounded_call("listing the stack's containers", listing).await?;
    let mut sources = Vec::new();
    for container in listed {
        let Some(id) = container.id.clone() else { continue };
        let name = crate::engine::container_name(&container, &id);
        let component = container.labels.and_then(|l| l.get(labels::COMPONENT).cloned()).unwrap_or_default();
        let options = bollard::query_parameters::LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .follow(selection.follow)
            .tail("all")
            .build();
        let prefix = format!("{component}/{name} | ");
        let lines = docker
            .logs(&id, Some(options))
            .flat_map(move |chunk| {
                let text = match chunk {
                    Ok(output) => output.to_string(),
                    Err(error) => format!("[e2e-infra: reading the logs failed: {error}]\n"),
                };
                let prefix = prefix.clone();
                stream::iter(text.lines().map(|line| format!("{prefix}{line}")).collect::<Vec<_>>())
            })
            .boxed();
        sources.push((component, lines));
    }
    sources.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(sources)
}

/// Per container of every pod of the run's namespace: its component (from
/// the pod's owner) and its lines.
async fn kube_lines(context: Option<&str>, selection: &Selection) -> Result<Vec<(String, Lines)>, String> {
    let client = bounded_call("connecting to the cluster", crate::deploy::kube::connect(context)).await?;
    let namespace = selection.key.namespace();
    let (owners, problems) = super::kube::component_owners(&client, namespace.as_str()).await;
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    let api: Api<Pod> = Api::namespaced(client, namespace.as_str());
    let pods = bounded_call("listing the namespace's pods", api.list(&ListParams::default())).await?;
    let mut sources = Vec::new();
    for pod in pods.items {
        let component = super::kube::component_of(&pod, &owners);
        let name = pod.name_any();
        let containers = pod
            .spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
            .map(|c| c.name.clone());
        for container in containers.collect::<Vec<_>>() {
            let params =
                LogParams { container: Some(container.clone()), follow: selection.follow, ..LogParams::default() };
            let prefix = format!("{component}/{name}/{container} | ");
            let lines: Lines =
                match bounded_call(&format!("opening the log of `{name}/{container}`"), api.log_stream(&name, &params))
                    .await
                {
                    Ok(reader) => reader
                        .lines()
                        .map(move |line| match line {
                            Ok(line) => format!("{prefix}{line}"),
                            Err(error) => format!("{prefix}[e2e-infra: reading the log failed: {error}]"),
                        })
                        .boxed(),
                    Err(problem) => stream::iter([format!("{prefix}[e2e-infra: {problem}]")]).boxed(),
                };
            sources.push((component.clone(), lines));
        }
    }
    sources.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(sources)
}

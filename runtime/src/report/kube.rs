//! The Kubernetes side of a report: per pod of the run's namespace, under
//! its component's folder, `pod-<pod>.<container>.log` (and
//! `.previous.log` for a restarted container), `pod-<pod>.status.json` and
//! `pod-<pod>.describe.txt`; for the namespace, `events.txt`; for the
//! nodes, `node-images.txt`: what each holds of the run's references.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use futures::AsyncReadExt as _;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerState, Event as KubeEvent, Pod};
use kube::api::{ListParams, LogParams};
use kube::{Api, Client, Resource, ResourceExt};

use super::{append_bounded, bounded_call, path_name, Collect, Evidence, Folder, CALL_LIMIT};
use crate::backend::{ImageTarget, KubeTarget};
use crate::deploy::kube as kube_backend;
use crate::labels;
use crate::load::containerd::{self, Node};
use crate::load::kind;
use crate::plan::Namespace;

/// Collects from the cluster a stack runs on.
pub(crate) struct Collector {
    client: Result<Client, String>,
    target: KubeTarget,
}

impl Collector {
    /// Connects to the cluster of `target` within [`CALL_LIMIT`]; a failure
    /// is kept for the summary.
    pub async fn connect(target: &KubeTarget) -> Self {
        let client = bounded_call("connecting to the cluster", kube_backend::connect(target.context.as_deref())).await;
        Self { client, target: target.clone() }
    }
}

impl Collect for Collector {
    async fn collect(&self, folder: &Folder, evidence: &Evidence) {
        let namespace = evidence.key.namespace();
        match &self.client {
            Ok(client) => {
                let events = namespace_events(client, namespace.as_str(), folder).await;
                pods(client, namespace.as_str(), &events, folder).await;
            }
            Err(problem) => {
                folder.problem(format!("every pod's logs and state, and the namespace's events: {problem}"))
            }
        }
        node_images(&self.target, evidence, &namespace, folder).await;
    }
}

/// The namespace's events, oldest first, written to `events.txt`.
async fn namespace_events(client: &Client, namespace: &str, folder: &Folder) -> Vec<KubeEvent> {
    let api: Api<KubeEvent> = Api::namespaced(client.clone(), namespace);
    let mut events = match bounded_call("listing the namespace's events", api.list(&ListParams::default())).await {
        Ok(list) => list.items,
        Err(problem) => {
            folder.problem(problem);
            return Vec::new();
        }
    };
    events.sort_by_key(event_time);
    let text: String = events.iter().map(event_line).collect();
    folder.write("events.txt", if text.is_empty() { b"no events\n" } else { text.as_bytes() });
    events
}

fn event_time(event: &KubeEvent) -> String {
    let last = event.last_timestamp.as_ref().map(|t| t.0.to_string());
    let time = event.event_time.as_ref().map(|t| t.0.to_string());
    last.or(time).unwrap_or_default()
}

fn event_line(event: &KubeEvent) -> String {
    format!(
        "{} {} {} {}/{}: {} (x{})\n",
        event_time(event),
        event.type_.as_deref().unwrap_or("Normal"),
        event.reason.as_deref().unwrap_or("-"),
        event.involved_object.kind.as_deref().unwrap_or("-"),
        event.involved_object.name.as_deref().unwrap_or("-"),
        event.message.as_deref().unwrap_or("").trim(),
        event.count.unwrap_or(1)
    )
}

/// Workload `(kind, name)` -> component.
pub(super) type Owners = BTreeMap<(String, String), String>;

/// The component of every workload of the namespace, from the run's labels
/// on it (a ReplicaSet counts as its Deployment), and what could not be
/// listed.
pub(super) async fn component_owners(client: &Client, namespace: &str) -> (Owners, Vec<String>) {
    async fn labelled<K>(client: &Client, namespace: &str, into: &mut Owners, problems: &mut Vec<String>)
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(client.clone(), namespace);
        let kind = K::kind(&()).into_owned();
        match bounded_call(&format!("listing the namespace's {kind}s"), api.list(&ListParams::default())).await {
            Ok(list) => {
                for object in list.items {
                    if let Some(component) = object.labels().get(labels::COMPONENT) {
                        into.insert((kind.clone(), object.name_any()), component.clone());
                    }
                }
            }
            Err(problem) => problems.push(problem),
        }
    }
    let (mut map, mut problems) = (Owners::new(), Vec::new());
    labelled::<Deployment>(client, namespace, &mut map, &mut problems).await;
    labelled::<StatefulSet>(client, namespace, &mut map, &mut problems).await;
    labelled::<DaemonSet>(client, namespace, &mut map, &mut problems).await;
    labelled::<Job>(client, namespace, &mut map, &mut problems).await;
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
    match bounded_call("listing the namespace's ReplicaSets", replica_sets.list(&ListParams::default())).await {
        Ok(list) => {
            for set in list.items {
                let owner =
                    set.owner_references().iter().find_map(|o| map.get(&(o.kind.clone(), o.name.clone())).cloned());
                if let Some(component) = owner {
                    map.insert(("ReplicaSet".to_owned(), set.name_any()), component);
                }
            }
        }
        Err(problem) => problems.push(problem),
    }
    (map, problems)
}

/// The component a pod belongs to: its own label, else its owner's.
pub(super) fn component_of(pod: &Pod, owners: &Owners) -> String {
    pod.labels()
        .get(labels::COMPONENT)
        .cloned()
        .or_else(|| pod.owner_references().iter().find_map(|o| owners.get(&(o.kind.clone(), o.name.clone())).cloned()))
        .unwrap_or_else(|| "unlabelled".to_owned())
}

/// Every pod of the namespace: logs of every container (and of its
/// previous start), status and a describe-like text.
async fn pods(client: &Client, namespace: &str, events: &[KubeEvent], folder: &Folder) {
    let (owners, problems) = component_owners(client, namespace).await;
    for problem in problems {
        folder.problem(problem);
    }
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let listed = match bounded_call("listing the namespace's pods", api.list(&ListParams::default())).await {
        Ok(list) => list.items,
        Err(problem) => return folder.problem(problem),
    };
    for pod in listed {
        let name = pod.name_any();
        let component = component_of(&pod, &owners);
        let base = format!("components/{}/pod-{}", path_name(&component), path_name(&name));
        if let Some(status) = &pod.status {
            folder.write(
                &format!("{base}.status.json"),
                serde_json::to_string_pretty(status).unwrap_or_default().as_bytes(),
            );
        }
        let mine: Vec<&KubeEvent> =
            events.iter().filter(|e| e.involved_object.name.as_deref() == Some(name.as_str())).collect();
        folder.write(&format!("{base}.describe.txt"), describe(&pod, &mine).as_bytes());
        let containers: Vec<(String, i32)> = pod
            .status
            .iter()
            .flat_map(|s| s.init_container_statuses.iter().flatten().chain(s.container_statuses.iter().flatten()))
            .map(|s| (s.name.clone(), s.restart_count))
            .collect();
        for (container_name, restarts) in containers {
            let container = path_name(&container_name);
            let mut runs = vec![(false, format!("{base}.{container}.log"))];
            if restarts > 0 {
                runs.push((true, format!("{base}.{container}.previous.log")));
            }
            for (previous, file) in runs {
                let (log, problem) = logs(&api, &name, &container_name, previous).await;
                folder.write_log(&file, &log);
                if let Some(problem) = problem {
                    folder.problem(format!("{file}: {problem}"));
                }
            }
        }
    }
}

/// A container's log, or its previous start's, kept to its end within
/// [`CALL_LIMIT`]; what stopped the reading early, if anything.
pub async fn logs(api: &Api<Pod>, pod: &str, container: &str, previous: bool) -> (Vec<u8>, Option<String>) {
    let params = LogParams { container: Some(container.to_owned()), previous, ..LogParams::default() };
    let mut log = Vec::new();
    let reading = async {
        let mut stream = api.log_stream(pod, &params).await.map_err(|e| e.to_string())?;
        let mut chunk = vec![0; 64 * 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => return Ok(()),
                Ok(n) => append_bounded(&mut log, &chunk[..n]),
                Err(error) => return Err(error.to_string()),
            }
        }
    };
    let problem = match tokio::time::timeout(CALL_LIMIT, reading).await {
        Ok(Ok(())) => None,
        Ok(Err(problem)) => Some(problem),
        Err(_) => Some(format!("the cluster did not send it all within {CALL_LIMIT:?}")),
    };
    (log, problem)
}

/// Like `kubectl describe pod`: phase, conditions, every container's
/// state, last state, restarts, and the pod's events.
fn describe(pod: &Pod, events: &[&KubeEvent]) -> String {
    let mut out = format!("pod {}\n", pod.name_any());
    let spec = pod.spec.as_ref();
    let _ = writeln!(out, "node: {}", spec.and_then(|s| s.node_name.as_deref()).unwrap_or("-"));
    if let Some(status) = &pod.status {
        let _ = writeln!(out, "phase: {}", status.phase.as_deref().unwrap_or("-"));
        if let Some(reason) = &status.reason {
            let _ = writeln!(out, "reason: {reason}: {}", status.message.as_deref().unwrap_or(""));
        }
        out.push_str("conditions:\n");
        for condition in status.conditions.iter().flatten() {
            let _ = writeln!(
                out,
                "  {} {} {}",
                condition.type_,
                condition.status,
                condition.message.as_deref().or(condition.reason.as_deref()).unwrap_or("")
            );
        }
        out.push_str("containers:\n");
        let all = status.init_container_statuses.iter().flatten().chain(status.container_statuses.iter().flatten());
        for container in all {
            let _ = writeln!(out, "  {} (image {})", container.name, container.image);
            let _ = writeln!(out, "    ready: {}, restarts: {}", container.ready, container.restart_count);
            let _ = writeln!(out, "    state: {}", state_text(container.state.as_ref()));
            if let Some(last) = &container.last_state {
                let _ = writeln!(out, "    last state: {}", state_text(Some(last)));
            }
        }
    }
    out.push_str("events:\n");
    if events.is_empty() {
        out.push_str("  none\n");
    }
    for event in events {
        let _ = write!(out, "  {}", event_line(event));
    }
    out
}

fn state_text(state: Option<&ContainerState>) -> String {
    let Some(state) = state else { return "unknown".to_owned() };
    if let Some(waiting) = &state.waiting {
        return format!(
            "waiting: {} {}",
            waiting.reason.as_deref().unwrap_or("-"),
            waiting.message.as_deref().unwrap_or("")
        );
    }
    if let Some(running) = &state.running {
        return format!("running since {}", running.started_at.as_ref().map(|t| t.0.to_string()).unwrap_or_default());
    }
    if let Some(ended) = &state.terminated {
        return format!(
            "terminated: exit code {}, {} {}",
            ended.exit_code,
            ended.reason.as_deref().unwrap_or("-"),
            ended.message.as_deref().unwrap_or("")
        );
    }
    "unknown".to_owned()
}

/// What each node holds of the run's references, in `node-images.txt`.
async fn node_images(target: &KubeTarget, evidence: &Evidence, namespace: &Namespace, folder: &Folder) {
    let references: Vec<String> = evidence
        .plan
        .as_ref()
        .and_then(|p| p.get("components"))
        .and_then(|c| c.as_array())
        .map(|components| components.iter().filter_map(|c| c.get("image")?.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let tag = crate::plan::Tag::of(namespace);
    let docker = match &target.images {
        ImageTarget::Registry { .. } => {
            let text = format!(
                "images reach the cluster through a registry ({}); no node was asked\n",
                serde_json::to_string(&target.images).unwrap_or_default()
            );
            return folder.write("node-images.txt", text.as_bytes());
        }
        _ => match bounded_call("connecting to the container engine for the nodes' images", crate::engine::connect())
            .await
        {
            Ok(docker) => docker,
            Err(problem) => return folder.problem(format!("node-images.txt: {problem}")),
        },
    };
    let nodes = match &target.images {
        ImageTarget::KindNodes { cluster } => {
            match bounded_call("finding the Kind nodes", kind::nodes(&docker, cluster)).await {
                Ok(nodes) => nodes,
                Err(problem) => return folder.problem(format!("node-images.txt: {problem}")),
            }
        }
        ImageTarget::Containerd { socket } => vec![Node::Socket { path: socket.clone() }],
        ImageTarget::Registry { .. } => Vec::new(),
    };
    let mut out = String::new();
    for node in &nodes {
        let _ = writeln!(out, "{node}:");
        let held = match bounded_call(&format!("listing the images of {node}"), containerd::node_images(&docker, node))
            .await
        {
            Ok(held) => held,
            Err(problem) => {
                let _ = writeln!(out, "  cannot list: {problem}");
                continue;
            }
        };
        for reference in &references {
            let repository = reference.rsplit_once(':').map_or(reference.as_str(), |(r, _)| r);
            if held.iter().any(|h| h == reference) {
                let _ = writeln!(out, "  {reference}: present");
            } else {
                let same: Vec<&str> = held
                    .iter()
                    .filter(|h| h.rsplit_once(':').is_some_and(|(r, _)| r == repository))
                    .map(String::as_str)
                    .collect();
                let _ = writeln!(
                    out,
                    "  {reference}: absent; of its repository the node holds: {}",
                    if same.is_empty() { "nothing".to_owned() } else { same.join(", ") }
                );
            }
        }
        for extra in held.iter().filter(|h| h.ends_with(&format!(":{tag}")) && !references.contains(h)) {
            let _ = writeln!(out, "  {extra}: present (the run's tag, not in the plan)");
        }
    }
    folder.write("node-images.txt", out.as_bytes());
}

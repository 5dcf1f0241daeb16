//! Watching a namespace until its workloads are ready, and failing at the
//! first container that cannot start instead of waiting for the timeout.

use std::collections::BTreeMap;
use std::fmt;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStatus, Event as KubeEvent, Pod};
use kube::api::{ListParams, LogParams};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use serde_json::Value;

use super::super::ready::{self, Deadline, Look, Outcome};
use super::render::RenderedManifest;
use super::KubeError;

/// Waiting reasons that never resolve by themselves.
const FATAL_REASONS: &[&str] =
    &["ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "CrashLoopBackOff", "CreateContainerConfigError"];
/// Log lines kept for a failure.
const LOG_LINES: i64 = 20;
/// Events kept for a failure.
const EVENTS_KEPT: usize = 10;

/// The workload kinds whose readiness is awaited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum WorkloadKind {
    Deployment,
    StatefulSet,
    Job,
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Why a container cannot start: what [`KubeError::PodFailed`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
// Fields named for what they hold carry no doc of their own.
#[allow(missing_docs)]
pub struct PodFailure {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// The container's image.
    pub image: String,
    /// The waiting reason (`ImagePullBackOff`, `CrashLoopBackOff`, ...).
    pub reason: String,
    /// The kubelet's message for it.
    pub message: String,
    /// Recent events of the pod, oldest first.
    pub events: Vec<String>,
    /// The last log lines of the container (of its previous run after a crash).
    pub logs: String,
    /// For an image that cannot be had: the references the node holds of
    /// the same repository (the seed of a build/deploy tag mismatch).
    pub node_images: Option<(String, Vec<String>)>,
}

impl fmt::Display for PodFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "container `{}` of pod `{}` in namespace `{}` cannot start: {} for image `{}`",
            self.container, self.pod, self.namespace, self.reason, self.image
        )?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if let Some(hint) = self.pull_hint() {
            write!(f, "\n{hint}")?;
        }
        if !self.events.is_empty() {
            write!(f, "\nrecent events of the pod:")?;
            for event in &self.events {
                write!(f, "\n  {event}")?;
            }
        }
        if !self.logs.trim().is_empty() {
            write!(f, "\nlast log lines:\n{}", self.logs.trim_end())?;
        }
        if let Some((node, held)) = &self.node_images {
            let repository = self.image.rsplit_once(':').map_or(self.image.as_str(), |(r, _)| r);
            let held = if held.is_empty() { "nothing".to_owned() } else { held.join(", ") };
            write!(f, "\n{node} holds of `{repository}`: {held}")?;
        }
        Ok(())
    }
}

impl PodFailure {
    /// What to do about an image a registry would not give the node, from
    /// what containerd said of the registry's answer.
    pub fn pull_hint(&self) -> Option<&'static str> {
        if !["ErrImagePull", "ImagePullBackOff"].contains(&self.reason.as_str()) {
            return None;
        }
        let said = |words: &[&str]| {
            std::iter::once(&self.message).chain(&self.events).any(|text| words.iter().any(|w| text.contains(w)))
        };
        if said(&["x509:", "certificate signed by unknown authority"]) {
            Some("the node does not trust the registry's certificate: give the node's containerd the CA that signed it (a hosts.toml in the CRI plugin's registry config_path; see docs/kubernetes.md)")
        } else if said(&["401 Unauthorized", "403 Forbidden", "authorization failed", "no basic auth credentials"]) {
            Some("the registry refused the node's pull: the run's pull secret `e2e-infra-registry` holds the credential found in DOCKER_CONFIG (else ~/.docker/config.json) for the registry, or there was none; run `docker login <registry>` there with a credential that may pull")
        } else if said(&[": not found", "manifest unknown"]) {
            Some("the registry does not have this image: it was never pushed there, or was deleted since")
        } else {
            None
        }
    }
}

/// The Deployments, StatefulSets and Jobs among the rendered objects.
pub(super) fn workloads<'m>(rendered: impl IntoIterator<Item = &'m RenderedManifest>) -> Vec<(WorkloadKind, String)> {
    rendered
        .into_iter()
        .flat_map(|m| &m.objects)
        .filter_map(|object| {
            let kind = match object.get("kind").and_then(Value::as_str)? {
                "Deployment" => WorkloadKind::Deployment,
                "StatefulSet" => WorkloadKind::StatefulSet,
                "Job" => WorkloadKind::Job,
                _ => return None,
            };
            let name = object.get("metadata")?.get("name")?.as_str()?;
            Some((kind, name.to_owned()))
        })
        .collect()
}

/// An event of one of the watches; boxed, the objects are large.
enum Seen {
    Deployment(Box<Event<Deployment>>),
    StatefulSet(Box<Event<StatefulSet>>),
    Job(Box<Event<Job>>),
    Pod(Box<Event<Pod>>),
}

/// Where each awaited workload stands: ready or not, and a description.
struct Progress {
    namespace: String,
    workloads: BTreeMap<(WorkloadKind, String), (bool, String)>,
    last_watch_error: Option<String>,
}

impl Progress {
    fn update(&mut self, kind: WorkloadKind, name: &str, ready: bool, detail: String) {
        if let Some(entry) = self.workloads.get_mut(&(kind, name.to_owned())) {
            *entry = (ready, detail);
        }
    }

    fn all_ready(&self) -> bool {
        self.workloads.values().all(|(ready, _)| *ready)
    }

    fn pending(&self) -> Vec<String> {
        self.workloads
            .iter()
            .filter(|(_, (ready, _))| !ready)
            .map(|((kind, name), (_, detail))| format!("{kind}/{name} ({detail})"))
            .collect()
    }
}

/// Watches `namespace` until every workload is ready, or `deadline` passes.
pub(super) async fn until_ready(
    client: &Client,
    namespace: &str,
    workloads: Vec<(WorkloadKind, String)>,
    deadline: &Deadline,
) -> Result<(), KubeError> {
    let progress = Progress {
        namespace: namespace.to_owned(),
        workloads: workloads.iter().map(|w| (w.clone(), (false, "not seen yet".to_owned()))).collect(),
        last_watch_error: None,
    };
    if progress.all_ready() {
        return Ok(());
    }
    let has = |kind| workloads.iter().any(|(k, _)| *k == kind);
    let mut streams: Vec<BoxStream<'static, Result<Seen, watcher::Error>>> =
        vec![watch(client, namespace).map_ok(|e| Seen::Pod(Box::new(e))).boxed()];
    if has(WorkloadKind::Deployment) {
        streams.push(watch(client, namespace).map_ok(|e| Seen::Deployment(Box::new(e))).boxed());
    }
    if has(WorkloadKind::StatefulSet) {
        streams.push(watch(client, namespace).map_ok(|e| Seen::StatefulSet(Box::new(e))).boxed());
    }
    if has(WorkloadKind::Job) {
        streams.push(watch(client, namespace).map_ok(|e| Seen::Job(Box::new(e))).boxed());
    }
    let mut looking = NamespaceWatch { client, seen: futures::stream::select_all(streams), progress };
    match ready::until_ready(&mut looking, deadline).await {
        Outcome::Ready(()) => Ok(()),
        Outcome::Failed(error) => Err(error),
        Outcome::TimedOut => Err(KubeError::NotReady {
            namespace: namespace.to_owned(),
            timeout: deadline.timeout(),
            pending: looking.progress.pending(),
            unready: unready_containers(client, namespace).await,
            last_watch_error: looking.progress.last_watch_error,
        }),
    }
}

/// A namespace as [`ready::until_ready`] looks at it: one watch event of its
/// workloads or pods per look.
struct NamespaceWatch<'a> {
    client: &'a Client,
    seen: futures::stream::SelectAll<BoxStream<'static, Result<Seen, watcher::Error>>>,
    progress: Progress,
}

impl ready::Watch for NamespaceWatch<'_> {
    type Ready = ();
    type Error = KubeError;

    async fn look(&mut self, deadline: &Deadline) -> Look<(), KubeError> {
        let Ok(item) = tokio::time::timeout_at(deadline.at(), self.seen.next()).await else {
            return Look::Waiting;
        };
        let (client, progress) = (self.client, &mut self.progress);
        match item {
            None => return Look::Failed(KubeError::WatchEnded { namespace: progress.namespace.clone() }),
            // The watcher retries with a backoff; the error matters only if
            // nothing becomes ready before the timeout.
            Some(Err(error)) => progress.last_watch_error = Some(error.to_string()),
            Some(Ok(Seen::Deployment(event))) => {
                on_event(*event, progress, WorkloadKind::Deployment, deployment_progress)
            }
            Some(Ok(Seen::StatefulSet(event))) => {
                on_event(*event, progress, WorkloadKind::StatefulSet, statefulset_progress)
            }
            Some(Ok(Seen::Job(event))) => {
                if let Event::Apply(job) | Event::InitApply(job) = event.as_ref() {
                    if let Some(message) = job_failure(job) {
                        return Look::Failed(KubeError::JobFailed {
                            namespace: progress.namespace.clone(),
                            job: job.name_any(),
                            message,
                            logs: job_logs(client, &progress.namespace, &job.name_any()).await,
                        });
                    }
                }
                on_event(*event, progress, WorkloadKind::Job, job_progress);
            }
            Some(Ok(Seen::Pod(event))) => {
                if let Event::Apply(pod) | Event::InitApply(pod) = event.as_ref() {
                    if let Some(failure) = fatal_container(pod) {
                        return Look::Failed(KubeError::PodFailed(Box::new(explain(client, pod, failure).await)));
                    }
                }
            }
        }
        if progress.all_ready() {
            Look::Ready(())
        } else {
            Look::Waiting
        }
    }
}

fn watch<K>(client: &Client, namespace: &str) -> impl futures::Stream<Item = Result<Event<K>, watcher::Error>>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
    K::DynamicType: Default,
{
    watcher(Api::<K>::namespaced(client.clone(), namespace), watcher::Config::default()).default_backoff()
}

fn on_event<K: ResourceExt>(
    event: Event<K>,
    progress: &mut Progress,
    kind: WorkloadKind,
    judge: fn(&K) -> (bool, String),
) {
    match event {
        Event::Apply(object) | Event::InitApply(object) => {
            let (ready, detail) = judge(&object);
            progress.update(kind, &object.name_any(), ready, detail);
        }
        Event::Delete(object) => progress.update(kind, &object.name_any(), false, "deleted".to_owned()),
        Event::Init | Event::InitDone => {}
    }
}

fn deployment_progress(deployment: &Deployment) -> (bool, String) {
    let wanted = deployment.spec.replicas.unwrap_or(1);
    let status = deployment.status.as_ref();
    let available = status.and_then(|s| s.available_replicas).unwrap_or(0);
    // During a rollout the old pods are still available: count only those
    // of the current template.
    let updated = status.and_then(|s| s.updated_replicas).unwrap_or(0);
    // A status about an older generation says nothing about this one.
    let current = match (status.and_then(|s| s.observed_generation), deployment.metadata.generation) {
        (Some(observed), Some(generation)) => observed >= generation,
        _ => true,
    };
    let text = if updated < wanted {
        format!("{available}/{wanted} available, {updated}/{wanted} of the current template")
    } else {
        format!("{available}/{wanted} available")
    };
    (current && available >= wanted && updated >= wanted, text)
}

fn statefulset_progress(set: &StatefulSet) -> (bool, String) {
    let wanted = set.spec.replicas.unwrap_or(1);
    let ready = set.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
    (ready >= wanted, format!("{ready}/{wanted} ready"))
}

fn job_progress(job: &Job) -> (bool, String) {
    let wanted = job.spec.as_ref().and_then(|s| s.completions).unwrap_or(1);
    let succeeded = job.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0);
    (succeeded >= wanted, format!("{succeeded}/{wanted} succeeded"))
}

fn job_failure(job: &Job) -> Option<String> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    let failed = conditions.iter().find(|c| c.type_ == "Failed" && c.status == "True")?;
    Some(format!(
        "{}: {}",
        failed.reason.as_deref().unwrap_or("Failed"),
        failed.message.as_deref().unwrap_or("the job failed")
    ))
}

/// The first container of `pod` waiting for a reason that never resolves.
fn fatal_container(pod: &Pod) -> Option<PodFailure> {
    let status = pod.status.as_ref()?;
    let statuses: Vec<&ContainerStatus> =
        status.init_container_statuses.iter().flatten().chain(status.container_statuses.iter().flatten()).collect();
    statuses.into_iter().find_map(|container| {
        let waiting = container.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref().filter(|r| FATAL_REASONS.contains(r))?;
        let spec = pod.spec.as_ref();
        let image = spec
            .into_iter()
            .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
            .find(|c| c.name == container.name)
            .and_then(|c| c.image.clone())
            .unwrap_or_else(|| container.image.clone());
        Some(PodFailure {
            namespace: pod.namespace().unwrap_or_default(),
            pod: pod.name_any(),
            container: container.name.clone(),
            image,
            reason: reason.to_owned(),
            message: waiting.message.clone().unwrap_or_default(),
            events: Vec::new(),
            logs: String::new(),
            node_images: None,
        })
    })
}

/// Adds the pod's recent events and, after a crash, the last log lines.
async fn explain(client: &Client, pod: &Pod, mut failure: PodFailure) -> PodFailure {
    let namespace = failure.namespace.clone();
    let events: Api<KubeEvent> = Api::namespaced(client.clone(), &namespace);
    let selector = format!("involvedObject.kind=Pod,involvedObject.name={}", failure.pod);
    failure.events = match events.list(&ListParams::default().fields(&selector)).await {
        Ok(list) => {
            let mut lines: Vec<String> = list
                .items
                .iter()
                .map(|e| {
                    format!(
                        "{} {}: {}",
                        e.type_.as_deref().unwrap_or("Normal"),
                        e.reason.as_deref().unwrap_or("-"),
                        e.message.as_deref().unwrap_or("").trim()
                    )
                })
                .collect();
            let skip = lines.len().saturating_sub(EVENTS_KEPT);
            lines.drain(..skip);
            lines
        }
        Err(error) => vec![format!("(events unavailable: {error})")],
    };
    if failure.reason == "CrashLoopBackOff" {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        let params = LogParams {
            container: Some(failure.container.clone()),
            previous: true,
            tail_lines: Some(LOG_LINES),
            ..LogParams::default()
        };
        failure.logs = match pods.logs(&pod.name_any(), &params).await {
            Ok(logs) => logs,
            Err(error) => format!("(logs unavailable: {error})"),
        };
    }
    failure
}

/// The last log lines of the newest pod of `job`.
async fn job_logs(client: &Client, namespace: &str, job: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let listed = match pods.list(&ListParams::default().labels(&format!("job-name={job}"))).await {
        Ok(listed) => listed,
        Err(error) => return format!("(pods of the job unavailable: {error})"),
    };
    let Some(newest) = listed.items.iter().max_by_key(|p| p.metadata.creation_timestamp.clone()) else {
        return String::new();
    };
    let params = LogParams { tail_lines: Some(LOG_LINES), ..LogParams::default() };
    pods.logs(&newest.name_any(), &params).await.unwrap_or_else(|error| format!("(logs unavailable: {error})"))
}

/// For a timeout: every container that is not ready, with its readiness
/// probe and the last time the kubelet said why it failed.
async fn unready_containers(client: &Client, namespace: &str) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let Ok(listed) = pods.list(&ListParams::default()).await else { return Vec::new() };
    let events: Api<KubeEvent> = Api::namespaced(client.clone(), namespace);
    let unhealthy =
        events.list(&ListParams::default().fields("reason=Unhealthy")).await.map(|l| l.items).unwrap_or_default();
    let mut lines = Vec::new();
    for pod in &listed.items {
        let name = pod.name_any();
        let statuses = pod.status.iter().flat_map(|s| s.container_statuses.iter().flatten());
        for status in statuses.filter(|s| !s.ready) {
            let probe = pod
                .spec
                .iter()
                .flat_map(|s| &s.containers)
                .find(|c| c.name == status.name)
                .and_then(|c| c.readiness_probe.as_ref())
                .map_or_else(|| "no readiness probe".to_owned(), describe_probe);
            let last = unhealthy
                .iter()
                .filter(|e| e.involved_object.name.as_deref() == Some(name.as_str()))
                .filter_map(|e| e.message.as_deref())
                .next_back()
                .map(|m| format!(": {}", m.trim()))
                .unwrap_or_default();
            lines.push(format!("pod `{name}` container `{}`: {probe}{last}", status.name));
        }
    }
    lines
}

fn describe_probe(probe: &k8s_openapi::api::core::v1::Probe) -> String {
    let port = |p: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString| match p {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => n.to_string(),
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s.clone(),
    };
    let what = if let Some(http) = &probe.http_get {
        format!("HTTP GET {}:{}", http.path.as_deref().unwrap_or("/"), port(&http.port))
    } else if let Some(tcp) = &probe.tcp_socket {
        format!("TCP {}", port(&tcp.port))
    } else if let Some(exec) = &probe.exec {
        format!("exec {:?}", exec.command.clone().unwrap_or_default())
    } else if let Some(grpc) = &probe.grpc {
        format!("gRPC {}", grpc.port)
    } else {
        "a probe".to_owned()
    };
    format!("readiness probe {what} every {}s never passed", probe.period_seconds.unwrap_or(10))
}

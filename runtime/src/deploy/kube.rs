//! Deploying the planned components to Kubernetes (a Kind cluster, or any
//! cluster that can run the plan's images).
//!
//! One namespace per run and consumer ([`Plan::namespace`]). The catalog's
//! manifests are rendered with the plan's references (`render`), checked
//! before any request (the preflight: every container image must be planned
//! or a declared borrowed image), applied in dependency order with
//! server-side apply, then watched until Deployments, StatefulSets and Jobs
//! are ready. A container that cannot start (image pull errors, crash loops,
//! bad configuration) ends the wait at once with the pod's events and logs.

pub mod forward;
#[cfg(any(test, feature = "mock"))]
pub mod mock;
mod render;
pub mod shard;
mod wait;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace as KubeNamespace, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, KubeconfigError};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, Config, ResourceExt};
use serde_json::{json, Value};

use super::ready::Deadline;
use crate::labels::{self, StackLabels};
use crate::plan::{Namespace, Plan};

pub use render::{label_value, user_label, ImageProblem, USER_LABEL_PREFIX};
pub(crate) use render::{render, RenderedManifest};
pub use wait::PodFailure;

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "e2e-infra";
/// How long [`deploy`] waits for readiness unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the API server may take to answer [`connect`]'s first request.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`delete_namespace`] waits for the namespace to be gone.
pub const DELETE_TIMEOUT: Duration = Duration::from_secs(120);
/// The annotation on a run's namespace recording where its images went, so
/// that `down` and `clean` can remove them from the nodes later.
pub const IMAGES_ANNOTATION: &str = "io.e2e-infra.images";
/// The annotation on a run's namespace listing the cluster-scoped objects
/// the run uses (`apiVersion/kind/name`, one a line), released with the run.
pub const CLUSTER_OBJECTS_ANNOTATION: &str = "io.e2e-infra.cluster-objects";

/// Options of [`deploy`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KubeOptions {
    /// How long to wait for every workload to be ready.
    pub timeout: Duration,
    /// Where the run's images went, recorded on the namespace
    /// ([`IMAGES_ANNOTATION`]) for whoever removes the run later.
    pub images: Option<String>,
    /// The engine's id of each planned image, by reference: a pod template
    /// that names an image carries their digest ([`IMAGE_IDS_ANNOTATION`]),
    /// so that an image rebuilt under the same reference rolls its pods.
    pub image_ids: BTreeMap<String, String>,
    /// Marks the namespace as a reusable stack's (`E2E_INFRA_REUSE=1`).
    pub reuse: bool,
    /// The `.dockerconfigjson` of the registry's credential, when the
    /// registry needs one: it goes into the run's namespace as Secret
    /// [`PULL_SECRET`], which every pod spec names in `imagePullSecrets`.
    pub pull_secret: Option<String>,
}

/// The image pull secret of a run's namespace.
pub const PULL_SECRET: &str = "e2e-infra-registry";

/// On a pod template: the digest of the ids of the planned images it names.
pub const IMAGE_IDS_ANNOTATION: &str = "io.e2e-infra/image-ids";

impl KubeOptions {
    /// Options with this readiness timeout.
    pub fn with_timeout(timeout: Duration) -> Self {
        Self { timeout, images: None, image_ids: BTreeMap::new(), reuse: false, pull_secret: None }
    }
}

impl Default for KubeOptions {
    fn default() -> Self {
        Self::with_timeout(DEFAULT_TIMEOUT)
    }
}

/// An object [`deploy`] applied.
#[derive(Debug, Clone, PartialEq, Eq)]
// Fields named for what they hold carry no doc of their own.
#[allow(missing_docs)]
pub struct AppliedObject {
    /// The component whose manifest holds it.
    pub component: String,
    /// `apiVersion`.
    pub api_version: String,
    pub kind: String,
    /// `metadata.name`.
    pub name: String,
}

/// What [`deploy`] stood up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeStack {
    /// The run's namespace.
    pub namespace: Namespace,
    /// The objects applied, in order.
    pub objects: Vec<AppliedObject>,
    /// For each component with manifests, the time from the apply of its
    /// objects to its readiness. Components go in waves (each once what it
    /// depends on is ready) and a wave is awaited as a whole, so the
    /// components of one wave share this time.
    pub ready_after: BTreeMap<String, Duration>,
}

/// A failure of the Kubernetes stage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
// Fields named for what they hold carry no doc of their own.
#[allow(missing_docs)]
pub enum KubeError {
    /// The kubeconfig could not be loaded.
    #[error("loading {context} from the kubeconfig ({kubeconfig}) failed; point KUBECONFIG at the cluster's kubeconfig and name one of its contexts")]
    Kubeconfig {
        /// The context, in words.
        context: String,
        /// Where the kubeconfig was looked for.
        kubeconfig: String,
        /// The loader's error.
        source: KubeconfigError,
    },
    /// A client could not be made from the kubeconfig.
    #[error("making a Kubernetes client for {context} failed")]
    Client {
        /// The context, in words.
        context: String,
        /// kube's error.
        source: kube::Error,
    },
    /// The API server does not answer.
    #[error(
        "the API server of {context} at {server} does not answer: {problem}; start the cluster or pick another context"
    )]
    Unreachable {
        /// The context, in words.
        context: String,
        /// The server's address.
        server: String,
        /// What was seen.
        problem: String,
    },
    /// A manifest could not be read.
    #[error("reading manifest {} failed", file.display())]
    ReadManifest {
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A manifest is not YAML.
    #[error("parsing manifest {} failed", file.display())]
    ParseManifest {
        file: PathBuf,
        /// The parser's error.
        source: serde_yaml::Error,
    },
    /// A manifest object that cannot be applied.
    #[error("manifest {}: {problem}", file.display())]
    InvalidObject {
        file: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// Container images that are not the plan's: nothing was sent to the cluster.
    #[error("preflight refused {} container image(s); nothing was sent to the cluster:\n{}\nplanned references: {}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"), planned.join(", "))]
    Preflight {
        /// Every refused image.
        problems: Vec<ImageProblem>,
        /// The plan's references (and how to write them).
        planned: Vec<String>,
    },
    /// The namespace could not be created.
    #[error("creating namespace `{namespace}` failed")]
    Namespace {
        namespace: String,
        /// kube's error.
        source: kube::Error,
    },
    /// An object could not be applied.
    #[error("applying {object} from {} in namespace `{namespace}` failed", file.display())]
    Apply {
        /// `Kind/name`.
        object: String,
        /// Its manifest.
        file: PathBuf,
        namespace: String,
        /// kube's error.
        source: kube::Error,
    },
    /// A container cannot start.
    #[error("{0}")]
    PodFailed(Box<PodFailure>),
    /// A Job failed; the components that depend on it were not applied.
    #[error("job `{job}` in namespace `{namespace}` failed: {message}{}", if logs.trim().is_empty() { String::new() } else { format!("\nlast log lines of its pod:\n{}", logs.trim_end()) })]
    JobFailed {
        namespace: String,
        job: String,
        /// The failure condition's reason and message.
        message: String,
        /// The last log lines of its last pod.
        logs: String,
    },
    /// Workloads were not ready in time.
    #[error("namespace `{namespace}` not ready after {}: still waiting for {}{}{}", humantime::format_duration(*timeout), pending.join(", "), unready.iter().map(|u| format!("\n  {u}")).collect::<String>(), last_watch_error.as_ref().map(|e| format!("\n(last watch error: {e})")).unwrap_or_default())]
    NotReady {
        namespace: String,
        timeout: Duration,
        /// `Kind/name (state)` of each workload not ready.
        pending: Vec<String>,
        /// Each container not ready, its readiness probe and the probe's last failure.
        unready: Vec<String>,
        /// The last error of a watch, if any.
        last_watch_error: Option<String>,
    },
    /// The watches ended before the workloads were ready.
    #[error("watching namespace `{namespace}` ended before its workloads were ready")]
    WatchEnded { namespace: String },
    /// The namespace could not be deleted.
    #[error("deleting namespace `{namespace}` failed")]
    DeleteNamespace {
        namespace: String,
        /// kube's error.
        source: kube::Error,
    },
    /// Watching the namespace's deletion failed.
    #[error("watching the deletion of namespace `{namespace}` failed")]
    WatchDeletion {
        namespace: String,
        /// The watch's error.
        source: kube::runtime::wait::Error,
    },
    /// The namespace was still there after [`DELETE_TIMEOUT`].
    #[error(
        "namespace `{namespace}` is still terminating after {}; see `kubectl get all -n {namespace}` for what holds it",
        humantime::format_duration(DELETE_TIMEOUT)
    )]
    StillTerminating { namespace: String },
    /// A CustomResourceDefinition did not become Established.
    #[error("CustomResourceDefinition `{name}` is not Established: {problem}")]
    NotEstablished {
        /// The definition.
        name: String,
        /// What was seen.
        problem: String,
    },
    /// A shared cluster-scoped object could not be released.
    #[error("releasing {object} of namespace `{namespace}` failed")]
    Release {
        /// `Kind/name`.
        object: String,
        /// The run's namespace.
        namespace: String,
        /// kube's error.
        source: kube::Error,
    },
    /// A marker (kept, or `up` finished) could not be put on a namespace.
    #[error("marking namespace `{namespace}` with `{annotation}` failed; `e2e-infra clean` may remove it as the stack of a run that is over")]
    Mark {
        namespace: String,
        annotation: &'static str,
        /// kube's error.
        source: kube::Error,
    },
    /// The Lease of the run's shards could not be used.
    #[error(transparent)]
    Shard(#[from] shard::ShardError),
    /// The run's namespaces could not be listed.
    #[error("listing the namespaces of e2e-infra runs failed")]
    ListNamespaces {
        /// kube's error.
        source: kube::Error,
    },
}

/// A client for kubeconfig context `context` (the kubeconfig's current
/// context when `None`), after the API server answered a first request
/// within [`CONNECT_TIMEOUT`]. kube's usual kubeconfig inference applies:
/// `KUBECONFIG`, else `~/.kube/config`.
///
/// # Errors
/// [`KubeError::Kubeconfig`] when the kubeconfig or the context cannot be
/// loaded; [`KubeError::Client`] when no client can be made from it;
/// [`KubeError::Unreachable`], naming the context and the server, when the
/// API server does not answer in time.
pub async fn connect(context: Option<&str>) -> Result<Client, KubeError> {
    let described = context.map_or_else(|| "the current context".to_owned(), |c| format!("context `{c}`"));
    let options = KubeConfigOptions { context: context.map(str::to_owned), ..KubeConfigOptions::default() };
    let mut config = Config::from_kubeconfig(&options).await.map_err(|source| KubeError::Kubeconfig {
        context: described.clone(),
        kubeconfig: std::env::var("KUBECONFIG")
            .map_or_else(|_| "~/.kube/config".to_owned(), |k| format!("KUBECONFIG={k}")),
        source,
    })?;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|source| KubeError::Client { context: described.clone(), source })?;
    let unreachable =
        |problem: String| KubeError::Unreachable { context: described.clone(), server: server.clone(), problem };
    let started = Instant::now();
    match tokio::time::timeout(CONNECT_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(_)) => Ok(client),
        // The client's own connect timeout ends a server that accepts but
        // never answers: say so rather than only "client error (Connect)".
        Ok(Err(error)) if started.elapsed() >= CONNECT_TIMEOUT.saturating_sub(Duration::from_millis(200)) => {
            Err(unreachable(format!("no answer within {} ({error})", humantime::format_duration(CONNECT_TIMEOUT))))
        }
        Ok(Err(error)) => Err(unreachable(error.to_string())),
        Err(_) => Err(unreachable(format!("no answer within {}", humantime::format_duration(CONNECT_TIMEOUT)))),
    }
}

/// Deploys the plan: renders and checks every manifest, creates the run's
/// namespace, applies every object in dependency order and waits until the
/// workloads are ready.
///
/// # Errors
/// Rendering errors and [`KubeError::Preflight`] before any request;
/// [`KubeError::Namespace`] or [`KubeError::Apply`] when the cluster refuses
/// an object; [`KubeError::PodFailed`] as soon as a container cannot start
/// (naming the pod, container, image and reason, with events and logs);
/// [`KubeError::JobFailed`]; [`KubeError::NotReady`] naming what was still
/// not ready at the timeout.
///
/// # Example
/// ```no_run
/// # async fn example(plan: &e2e_infra::Plan) -> Result<(), Box<dyn std::error::Error>> {
/// use e2e_infra::deploy::kube::{connect, deploy, KubeOptions};
///
/// let client = connect(Some("kind-notification-e2e")).await?;
/// let labels = e2e_infra::labels::StackLabels::of(plan);
/// let stack = deploy(client, plan, &labels, &KubeOptions::default()).await?;
/// println!("deployed into {}", stack.namespace);
/// # Ok(())
/// # }
/// ```
pub async fn deploy(
    client: Client,
    plan: &Plan,
    labels: &StackLabels,
    options: &KubeOptions,
) -> Result<KubeStack, KubeError> {
    let rendered = render(plan, labels)?;
    let deadline = Deadline::after(options.timeout);
    let namespace = plan.namespace().as_str();
    let shared: Vec<String> = rendered
        .iter()
        .flat_map(|m| &m.objects)
        .filter(|o| is_cluster_scoped(o))
        .map(|o| {
            let a = applied_object("", o);
            format!("{}/{}/{}", a.api_version, a.kind, a.name)
        })
        .collect();
    apply_namespace(&client, plan, labels, options, &shared).await?;
    if let Some(config) = &options.pull_secret {
        apply_pull_secret(&client, namespace, config).await?;
    }
    let mut objects = Vec::new();
    // A component's objects go in once every component it depends on is
    // ready: a migration Job completes before the service that needs the
    // schema starts, and a failed one stops its dependents from being applied.
    let with_manifests: BTreeSet<&str> = rendered.iter().map(|m| m.component.as_str()).collect();
    let mut ready: BTreeSet<&str> = BTreeSet::new();
    let mut ready_after = BTreeMap::new();
    let mut pending: Vec<&str> =
        plan.components().iter().map(|c| c.name.as_str()).filter(|c| with_manifests.contains(c)).collect();
    while !pending.is_empty() {
        let wave: Vec<&str> = pending
            .iter()
            .copied()
            .filter(|name| {
                plan.component(name).is_some_and(|c| {
                    c.depends_on.iter().all(|d| ready.contains(d.as_str()) || !with_manifests.contains(d.as_str()))
                })
            })
            .collect();
        let manifests: Vec<&RenderedManifest> =
            rendered.iter().filter(|m| wave.contains(&m.component.as_str())).collect();
        let started = Instant::now();
        for manifest in &manifests {
            // Definitions and cluster-wide RBAC first: the namespaced
            // objects of the same component may be custom resources of them.
            let (cluster, namespaced): (Vec<&Value>, Vec<&Value>) =
                manifest.objects.iter().partition(|o| is_cluster_scoped(o));
            for object in cluster.into_iter().chain(namespaced) {
                let mut object = with_image_ids(object, &options.image_ids);
                if options.pull_secret.is_some() {
                    name_pull_secret(&mut object);
                }
                objects.push(apply(&client, manifest, &object, namespace, deadline.at()).await?);
            }
            tracing::info!(component = %manifest.component, file = %manifest.file.display(), "applied");
        }
        let awaited = wait::workloads(manifests.iter().copied());
        wait::until_ready(&client, namespace, awaited, &deadline).await?;
        let took = started.elapsed();
        for name in &wave {
            tracing::info!(component = %name, %namespace, ready_after = ?took, "ready");
            ready_after.insert((*name).to_owned(), took);
        }
        ready.extend(wave.iter().copied());
        pending.retain(|name| !wave.contains(name));
    }
    Ok(KubeStack { namespace: plan.namespace().clone(), objects, ready_after })
}

/// Applies one rendered object by server-side apply; waits until a
/// CustomResourceDefinition is Established.
///
/// A cluster-scoped object may be shared with other runs (two suites
/// applying one CRD): each run applies it as a field manager of its own, so
/// that each owns its own user label and applying it again keeps the
/// other runs' labels.
async fn apply(
    client: &Client,
    manifest: &RenderedManifest,
    object: &Value,
    namespace: &str,
    deadline: tokio::time::Instant,
) -> Result<AppliedObject, KubeError> {
    let applied = applied_object(&manifest.component, object);
    let (group, version) = applied.api_version.split_once('/').unwrap_or(("", &applied.api_version));
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &applied.kind));
    let shared = is_cluster_scoped(object);
    let (api, manager): (Api<DynamicObject>, String) = if shared {
        (Api::all_with(client.clone(), &resource), format!("{FIELD_MANAGER}-{namespace}"))
    } else {
        (Api::namespaced_with(client.clone(), namespace, &resource), FIELD_MANAGER.to_owned())
    };
    let params = PatchParams::apply(&manager).force();
    let mut patched = api.patch(&applied.name, &params, &Patch::Apply(object)).await;
    // A Job's or a Pod's spec cannot change in place: a reused stack whose
    // migration or pod changed gets a new one.
    if matches!(&patched, Err(kube::Error::Api(status)) if status.code == 422)
        && matches!(applied.kind.as_str(), "Job" | "Pod")
        && !shared
    {
        tracing::info!(object = %format!("{}/{}", applied.kind, applied.name), "changed and immutable: replacing it");
        if let Ok(old) = api.delete(&applied.name, &DeleteParams::foreground()).await {
            let uid = old.either(|o| o.uid(), |_| None).unwrap_or_default();
            let gone = await_condition(api.clone(), &applied.name, conditions::is_deleted(&uid));
            let _ = tokio::time::timeout_at(deadline, gone).await;
        }
        patched = api.patch(&applied.name, &params, &Patch::Apply(object)).await;
    }
    patched.map_err(|source| KubeError::Apply {
        object: format!("{}/{}", applied.kind, applied.name),
        file: manifest.file.clone(),
        namespace: if shared { "(cluster-scoped)".to_owned() } else { namespace.to_owned() },
        source,
    })?;
    if applied.kind == "CustomResourceDefinition" && group == "apiextensions.k8s.io" {
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        let established = await_condition(crds, &applied.name, conditions::is_crd_established());
        let problem = match tokio::time::timeout_at(deadline, established).await {
            Ok(Ok(_)) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(_) => Some("the readiness timeout passed first".to_owned()),
        };
        if let Some(problem) = problem {
            return Err(KubeError::NotEstablished { name: applied.name, problem });
        }
    }
    Ok(applied)
}

/// Render leaves `metadata.namespace` off exactly the cluster-scoped objects.
fn is_cluster_scoped(object: &Value) -> bool {
    object.get("metadata").and_then(|m| m.get("namespace")).is_none()
}

/// Gives up the run's share of the cluster-scoped objects its namespace
/// lists: removes its user label from each, and deletes each that no other
/// run's label holds any more. The delete names the object's version, so an
/// object another run labelled meanwhile stays.
///
/// # Errors
/// [`KubeError::Release`] when the cluster refuses.
pub async fn release_shared(client: &Client, namespace: &Namespace) -> Result<Vec<String>, KubeError> {
    let namespaces: Api<KubeNamespace> = Api::all(client.clone());
    let listed = match namespaces.get_opt(namespace.as_str()).await {
        Ok(Some(found)) => found.annotations().get(CLUSTER_OBJECTS_ANNOTATION).cloned().unwrap_or_default(),
        Ok(None) => String::new(),
        Err(source) => {
            return Err(KubeError::Release {
                object: "the run's list".to_owned(),
                namespace: namespace.to_string(),
                source,
            })
        }
    };
    let label = user_label(namespace);
    let mut deleted = Vec::new();
    for line in listed.lines() {
        let Some((api_version, rest)) = line.rsplit_once('/').and_then(|(head, name)| {
            head.rsplit_once('/')
                .map(|(api_version, kind)| (api_version.to_owned(), (kind.to_owned(), name.to_owned())))
        }) else {
            continue;
        };
        let (kind, name) = rest;
        let failed =
            |source| KubeError::Release { object: format!("{kind}/{name}"), namespace: namespace.to_string(), source };
        let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &kind));
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let patch = json!({ "metadata": { "labels": { label.clone(): null } } });
        let object = match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(object) => object,
            Err(kube::Error::Api(status)) if status.is_not_found() => continue,
            Err(source) => return Err(failed(source)),
        };
        if object.labels().keys().any(|k| k.starts_with(USER_LABEL_PREFIX)) {
            continue;
        }
        let precondition = kube::api::Preconditions { resource_version: object.resource_version(), uid: None };
        let params = DeleteParams { preconditions: Some(precondition), ..DeleteParams::background() };
        match api.delete(&name, &params).await {
            Ok(_) => deleted.push(format!("{kind}/{name}")),
            // Not found: released by another run; conflict: another run took it meanwhile.
            Err(kube::Error::Api(status)) if status.is_not_found() || status.code == 409 => {}
            Err(source) => return Err(failed(source)),
        }
    }
    Ok(deleted)
}

/// Deletes the run's namespace and everything in it, and waits until it is
/// gone; an absent namespace is not an error. The namespace goes first: once
/// it is terminating, no controller can create a pod in it, so the pods,
/// deleted next without a grace period, are not started again by their
/// ReplicaSets. A test stack has nothing to drain, and the pods' grace
/// periods would otherwise hold the namespace in `Terminating`.
///
/// # Errors
/// [`KubeError::DeleteNamespace`] when the cluster refuses;
/// [`KubeError::StillTerminating`] after [`DELETE_TIMEOUT`].
pub async fn delete_namespace(client: Client, namespace: &Namespace) -> Result<(), KubeError> {
    let name = namespace.as_str();
    let refused = |source| KubeError::DeleteNamespace { namespace: name.to_owned(), source };
    let api: Api<KubeNamespace> = Api::all(client.clone());
    let uid = match api.delete(name, &DeleteParams::background()).await {
        Ok(deleted) => deleted.left().and_then(|n| n.metadata.uid),
        Err(kube::Error::Api(status)) if status.is_not_found() => return Ok(()),
        Err(source) => return Err(refused(source)),
    };
    let pods: Api<Pod> = Api::namespaced(client, name);
    let now = DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::background() };
    match pods.delete_collection(&now, &ListParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.is_not_found() => {}
        Err(source) => return Err(refused(source)),
    }
    let Some(uid) = uid else { return Ok(()) };
    match tokio::time::timeout(DELETE_TIMEOUT, await_condition(api, name, conditions::is_deleted(&uid))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(source)) => Err(KubeError::WatchDeletion { namespace: name.to_owned(), source }),
        Err(_) => Err(KubeError::StillTerminating { namespace: name.to_owned() }),
    }
}

/// A namespace of an e2e-infra run, as found on the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
// Fields named for what they hold carry no doc of their own.
#[allow(missing_docs)]
pub(crate) struct RunNamespace {
    /// The namespace.
    pub name: String,
    /// The run identity.
    pub run_id: String,
    pub consumer: String,
    /// The launcher (`pid:ticks`), empty for a stack brought up by hand.
    pub launcher: String,
    /// Where its images went ([`IMAGES_ANNOTATION`]), if recorded.
    pub images: Option<String>,
    /// Why the stack was kept ([`labels::KEPT`]), if it was.
    pub kept: Option<String>,
    /// The `up` that made it finished ([`labels::UP_FINISHED`]).
    pub up_finished: bool,
    /// When the namespace was created, in seconds since the Unix epoch.
    pub created: Option<i64>,
    /// A reusable stack's ([`labels::REUSE`]).
    pub reused: bool,
}

/// Every namespace an e2e-infra run made on the cluster. The run, consumer
/// and launcher come from the annotations that keep the labels' full values.
///
/// # Errors
/// [`KubeError::ListNamespaces`] when the cluster refuses.
pub(crate) async fn run_namespaces(client: Client) -> Result<Vec<RunNamespace>, KubeError> {
    let api: Api<KubeNamespace> = Api::all(client);
    let selector = format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE);
    let listed = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| KubeError::ListNamespaces { source })?;
    Ok(listed
        .items
        .into_iter()
        .filter_map(|namespace| {
            let annotation = |key: &str| namespace.annotations().get(key).cloned();
            Some(RunNamespace {
                run_id: annotation(labels::RUN)?,
                consumer: annotation(labels::CONSUMER)?,
                launcher: annotation(labels::LAUNCHER).unwrap_or_default(),
                images: annotation(IMAGES_ANNOTATION),
                kept: annotation(labels::KEPT),
                up_finished: annotation(labels::UP_FINISHED).is_some(),
                reused: annotation(labels::REUSE).is_some() || namespace.labels().contains_key(labels::REUSE),
                created: namespace.creation_timestamp().map(|t| t.0.as_second()),
                name: namespace.name_any(),
            })
        })
        .collect())
}

/// Records on the namespace the marker `annotation` (such as
/// [`labels::KEPT`], with why), so that `clean` from any machine sees it.
///
/// # Errors
/// [`KubeError::Mark`] when the cluster refuses.
pub async fn mark(client: Client, namespace: &str, annotation: &'static str, value: &str) -> Result<(), KubeError> {
    let api: Api<KubeNamespace> = Api::all(client);
    let patch = json!({ "metadata": { "annotations": { annotation: value } } });
    // A merge patch, not the run's apply: the namespace's applied fields
    // stay the run's field manager's.
    api.patch(namespace, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
        .map_err(|source| KubeError::Mark { namespace: namespace.to_owned(), annotation, source })
}

/// Creates the run's namespace, labelled as [`deploy`] labels it, unless
/// it exists: the shards of a run coordinate through a Lease in it before
/// anything is deployed.
///
/// # Errors
/// [`KubeError::Namespace`] when the cluster refuses.
pub async fn ensure_namespace(client: &Client, plan: &Plan, images: Option<String>) -> Result<(), KubeError> {
    let api: Api<KubeNamespace> = Api::all(client.clone());
    let name = plan.namespace().as_str();
    match api.get_opt(name).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => {
            let options = KubeOptions { images, ..KubeOptions::default() };
            apply_namespace(client, plan, &StackLabels::of(plan), &options, &[]).await
        }
        Err(source) => Err(KubeError::Namespace { namespace: name.to_owned(), source }),
    }
}

async fn apply_namespace(
    client: &Client,
    plan: &Plan,
    stack: &StackLabels,
    options: &KubeOptions,
    shared: &[String],
) -> Result<(), KubeError> {
    let name = plan.namespace().as_str();
    let mut run_labels = stack.run();
    if options.reuse {
        run_labels.extend([labels::reuse()]);
    }
    let labels = render::kube_labels(run_labels);
    let mut annotations = labels.annotations;
    if let Some(images) = options.images.as_deref() {
        annotations.insert(IMAGES_ANNOTATION.to_owned(), images.to_owned());
    }
    if !shared.is_empty() {
        annotations.insert(CLUSTER_OBJECTS_ANNOTATION.to_owned(), shared.join("\n"));
    }
    let body = json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": name, "labels": labels.labels, "annotations": annotations },
    });
    let api: Api<KubeNamespace> = Api::all(client.clone());
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
        .await
        .map_err(|source| KubeError::Namespace { namespace: name.to_owned(), source })?;
    Ok(())
}

/// Applies the registry's credential as Secret [`PULL_SECRET`] of the run's namespace.
async fn apply_pull_secret(client: &Client, namespace: &str, config: &str) -> Result<(), KubeError> {
    use base64::Engine;
    let body = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": PULL_SECRET, "namespace": namespace },
        "type": "kubernetes.io/dockerconfigjson",
        "data": { ".dockerconfigjson": base64::engine::general_purpose::STANDARD.encode(config) },
    });
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    api.patch(PULL_SECRET, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
        .await
        .map_err(|source| KubeError::Namespace { namespace: namespace.to_owned(), source })?;
    Ok(())
}

/// Names [`PULL_SECRET`] in the pod spec of `object` (a Pod, a workload's
/// template, a CronJob's job template), if it has one.
fn name_pull_secret(object: &mut Value) {
    for pointer in ["/spec/template/spec", "/spec/jobTemplate/spec/template/spec"] {
        add_pull_secret(object.pointer_mut(pointer));
    }
    if object.get("kind").and_then(Value::as_str) == Some("Pod") {
        add_pull_secret(object.get_mut("spec"));
    }
}

fn add_pull_secret(spec: Option<&mut Value>) {
    let Some(Value::Object(spec)) = spec else { return };
    let secrets = spec.entry("imagePullSecrets").or_insert_with(|| json!([]));
    if let Value::Array(secrets) = secrets {
        if !secrets.iter().any(|s| s.get("name").and_then(Value::as_str) == Some(PULL_SECRET)) {
            secrets.push(json!({ "name": PULL_SECRET }));
        }
    }
}

/// `object` with [`IMAGE_IDS_ANNOTATION`] on its pod template (a bare Pod:
/// on itself) when it names planned images: the digest of their ids. A
/// rebuilt image under the same reference changes the template, and the
/// workload rolls; an unchanged one leaves the applied object as it was.
fn with_image_ids(object: &Value, image_ids: &BTreeMap<String, String>) -> Value {
    let mut object = object.clone();
    let text = object.to_string();
    let named: Vec<&String> = image_ids
        .iter()
        .filter(|(reference, _)| text.contains(&format!("\"{reference}\"")))
        .map(|(_, id)| id)
        .collect();
    if named.is_empty() {
        return object;
    }
    let digest = {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        for id in named {
            hasher.update(id.as_bytes());
            hasher.update(b"\n");
        }
        hex::encode(&hasher.finalize()[..12])
    };
    let is_pod = object.get("kind").and_then(Value::as_str) == Some("Pod");
    let target = if is_pod { Some(&mut object) } else { object.pointer_mut("/spec/template") };
    if let Some(Value::Object(target)) = target {
        let metadata = target.entry("metadata").or_insert_with(|| json!({}));
        if let Value::Object(metadata) = metadata {
            let annotations = metadata.entry("annotations").or_insert_with(|| json!({}));
            if let Value::Object(annotations) = annotations {
                annotations.insert(IMAGE_IDS_ANNOTATION.to_owned(), Value::String(digest));
            }
        }
    }
    object
}

/// The identity of a rendered object (render checked that it has one).
fn applied_object(component: &str, object: &Value) -> AppliedObject {
    let text = |value: Option<&Value>| value.and_then(Value::as_str).unwrap_or_default().to_owned();
    AppliedObject {
        component: component.to_owned(),
        api_version: text(object.get("apiVersion")),
        kind: text(object.get("kind")),
        name: text(object.get("metadata").and_then(|m| m.get("name"))),
    }
}

#[cfg(test)]
mod tests;

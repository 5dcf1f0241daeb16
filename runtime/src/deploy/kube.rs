//! Deploying the planned components to Kubernetes (a Kind cluster, or any
//! cluster that can run the plan's images).
//!
//! One namespace per run and consumer ([`Plan::namespace`]). The catalog's
//! manifests are rendered with the plan's references ([`render`]), checked
//! before any request (the preflight: every container image must be planned
//! or a declared borrowed image), applied in dependency order with
//! server-side apply, then watched until Deployments, StatefulSets and Jobs
//! are ready. A container that cannot start (image pull errors, crash loops,
//! bad configuration) ends the wait at once with the pod's events and logs.

pub mod forward;
#[cfg(any(test, feature = "mock"))]
pub mod mock;
mod render;
mod wait;

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace as KubeNamespace;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::config::{KubeConfigOptions, KubeconfigError};
use kube::{Api, Client, Config};
use serde_json::{json, Value};

use crate::labels;
use crate::plan::{Namespace, Plan};

pub use render::{label_value, render, ImageProblem, RenderedManifest};
pub use wait::PodFailure;

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "e2e-infra";
/// How long [`deploy`] waits for readiness unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Options of [`deploy`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KubeOptions {
    /// How long to wait for every workload to be ready.
    pub timeout: Duration,
}

impl KubeOptions {
    /// Options with this readiness timeout.
    pub fn with_timeout(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl Default for KubeOptions {
    fn default() -> Self {
        Self { timeout: DEFAULT_TIMEOUT }
    }
}

/// An object [`deploy`] applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedObject {
    /// The component whose manifest holds it.
    pub component: String,
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
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
}

/// A failure of the Kubernetes stage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeError {
    /// The kubeconfig could not be loaded.
    #[error("loading kubeconfig context `{context}` failed (set KUBECONFIG or name the context): {source}")]
    Kubeconfig {
        /// The context.
        context: String,
        /// The loader's error.
        source: KubeconfigError,
    },
    /// A client could not be made from the kubeconfig.
    #[error("making a Kubernetes client for context `{context}` failed: {source}")]
    Client {
        /// The context.
        context: String,
        /// kube's error.
        source: kube::Error,
    },
    /// A manifest could not be read.
    #[error("reading manifest {} failed: {source}", file.display())]
    ReadManifest {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A manifest is not YAML.
    #[error("parsing manifest {} failed: {source}", file.display())]
    ParseManifest {
        /// The file.
        file: PathBuf,
        /// The parser's error.
        source: serde_yaml::Error,
    },
    /// A manifest object that cannot be applied.
    #[error("manifest {}: {problem}", file.display())]
    InvalidObject {
        /// The file.
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
    #[error("creating namespace `{namespace}` failed: {source}")]
    Namespace {
        /// The namespace.
        namespace: String,
        /// kube's error.
        source: kube::Error,
    },
    /// An object could not be applied.
    #[error("applying {object} from {} in namespace `{namespace}` failed: {source}", file.display())]
    Apply {
        /// `Kind/name`.
        object: String,
        /// Its manifest.
        file: PathBuf,
        /// The namespace.
        namespace: String,
        /// kube's error.
        source: kube::Error,
    },
    /// A container cannot start.
    #[error("{0}")]
    PodFailed(Box<PodFailure>),
    /// A Job failed.
    #[error("job `{job}` in namespace `{namespace}` failed: {message}")]
    JobFailed {
        /// The namespace.
        namespace: String,
        /// The job.
        job: String,
        /// The failure condition's reason and message.
        message: String,
    },
    /// Workloads were not ready in time.
    #[error("namespace `{namespace}` not ready after {}: still waiting for {}{}", humantime::format_duration(*timeout), pending.join(", "), last_watch_error.as_ref().map(|e| format!(" (last watch error: {e})")).unwrap_or_default())]
    NotReady {
        /// The namespace.
        namespace: String,
        /// The timeout.
        timeout: Duration,
        /// `Kind/name (state)` of each workload not ready.
        pending: Vec<String>,
        /// The last error of a watch, if any.
        last_watch_error: Option<String>,
    },
    /// The watches ended before the workloads were ready.
    #[error("watching namespace `{namespace}` ended before its workloads were ready")]
    WatchEnded {
        /// The namespace.
        namespace: String,
    },
    /// The namespace could not be deleted.
    #[error("deleting namespace `{namespace}` failed: {source}")]
    DeleteNamespace {
        /// The namespace.
        namespace: String,
        /// kube's error.
        source: kube::Error,
    },
}

/// A client for Kind cluster `cluster`: kube's usual kubeconfig inference
/// (`KUBECONFIG`, else `~/.kube/config`) with context `kind-<cluster>`, or
/// `context` when given.
///
/// # Errors
/// [`KubeError::Kubeconfig`] when the kubeconfig or the context cannot be
/// loaded; [`KubeError::Client`] when no client can be made from it.
pub async fn client(cluster: &str, context: Option<&str>) -> Result<Client, KubeError> {
    let context = context.map_or_else(|| format!("kind-{cluster}"), str::to_owned);
    let options = KubeConfigOptions { context: Some(context.clone()), ..KubeConfigOptions::default() };
    let config = Config::from_kubeconfig(&options)
        .await
        .map_err(|source| KubeError::Kubeconfig { context: context.clone(), source })?;
    Client::try_from(config).map_err(|source| KubeError::Client { context, source })
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
/// use e2e_infra::deploy::kube::{client, deploy, KubeOptions};
///
/// let client = client("notification-e2e", None).await?;
/// let stack = deploy(client, plan, &KubeOptions::default()).await?;
/// println!("deployed into {}", stack.namespace);
/// # Ok(())
/// # }
/// ```
pub async fn deploy(client: Client, plan: &Plan, options: &KubeOptions) -> Result<KubeStack, KubeError> {
    let rendered = render(plan)?;
    let namespace = plan.namespace().as_str();
    apply_namespace(&client, plan).await?;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut objects = Vec::new();
    for manifest in &rendered {
        for object in &manifest.objects {
            let applied = applied_object(&manifest.component, object);
            let (group, version) = applied.api_version.split_once('/').unwrap_or(("", &applied.api_version));
            let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &applied.kind));
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
            api.patch(&applied.name, &params, &Patch::Apply(object)).await.map_err(|source| KubeError::Apply {
                object: format!("{}/{}", applied.kind, applied.name),
                file: manifest.file.clone(),
                namespace: namespace.to_owned(),
                source,
            })?;
            objects.push(applied);
        }
    }
    wait::until_ready(&client, namespace, wait::workloads(&rendered), options.timeout).await?;
    Ok(KubeStack { namespace: plan.namespace().clone(), objects })
}

/// Deletes the run's namespace and everything in it; an absent namespace is
/// not an error.
///
/// # Errors
/// [`KubeError::DeleteNamespace`] when the cluster refuses.
pub async fn delete_namespace(client: Client, namespace: &Namespace) -> Result<(), KubeError> {
    let api: Api<KubeNamespace> = Api::all(client);
    match api.delete(namespace.as_str(), &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(source) => Err(KubeError::DeleteNamespace { namespace: namespace.as_str().to_owned(), source }),
    }
}

async fn apply_namespace(client: &Client, plan: &Plan) -> Result<(), KubeError> {
    let name = plan.namespace().as_str();
    let labels = render::kube_labels(labels::for_run(plan));
    let body = json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": name, "labels": labels.labels, "annotations": labels.annotations },
    });
    let api: Api<KubeNamespace> = Api::all(client.clone());
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
        .await
        .map_err(|source| KubeError::Namespace { namespace: name.to_owned(), source })?;
    Ok(())
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

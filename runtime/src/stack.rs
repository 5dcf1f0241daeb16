//! One stack, end to end: build, load, deploy, ready; and its removal.
//!
//! This is where the stages meet. Each takes the plan's references and
//! returns what the next needs; none formats a tag.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::build::{self, BuildOptions, BuildOutcome};
use crate::deploy::{docker as docker_backend, kube as kube_backend};
use crate::engine;
use crate::handle::{Placement, StackRecord};
use crate::labels;
use crate::load::{kind, registry};
use crate::plan::{Namespace, Plan};
use crate::suite::Backend;

/// A stage of a stack's setup or removal failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StackError {
    /// The engine could not be reached.
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    /// A build failed.
    #[error(transparent)]
    Build(#[from] build::BuildError),
    /// Loading into Kind nodes failed.
    #[error(transparent)]
    Kind(#[from] kind::KindError),
    /// Pushing to a registry failed.
    #[error(transparent)]
    Registry(#[from] registry::LoadError),
    /// The Docker backend failed.
    #[error(transparent)]
    Docker(#[from] docker_backend::DockerError),
    /// The Kubernetes backend failed.
    #[error(transparent)]
    Kube(#[from] kube_backend::KubeError),
    /// No async runtime could be started.
    #[error("starting an async runtime failed: {0}")]
    Runtime(#[source] std::io::Error),
}

/// How to stand a stack up.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Where it runs.
    pub backend: Backend,
    /// Overrides every readiness timeout.
    pub ready_timeout: Option<Duration>,
    /// Build options.
    pub build: BuildOptions,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self { backend: Backend::Docker, ready_timeout: None, build: BuildOptions::default() }
    }
}

/// Per component: how long each stage took.
#[derive(Default)]
struct Timings {
    build: Option<(Duration, bool)>,
    load: Option<Duration>,
    ready: Option<Duration>,
}

/// The engine a recorded stack lives on.
///
/// # Errors
/// [`StackError::Engine`] when it does not answer.
pub async fn engine_of(placement: Option<&Placement>) -> Result<bollard::Docker, StackError> {
    Ok(match placement {
        Some(Placement::Docker { docker_host: Some(host), .. }) => engine::connect_to(host).await?,
        _ => engine::connect().await?,
    })
}

/// Builds, loads, deploys and waits until ready.
///
/// # Errors
/// [`StackError`] from the first stage that fails.
pub async fn up(plan: &Plan, options: &StackOptions) -> Result<StackRecord, StackError> {
    let docker = engine::connect().await?;
    let plan = match options.ready_timeout {
        Some(timeout) => {
            let mut overridden = plan.clone();
            overridden.set_ready_timeout(timeout);
            Cow::Owned(overridden)
        }
        None => Cow::Borrowed(plan),
    };
    let plan = &*plan;
    let mut timings: BTreeMap<String, Timings> = BTreeMap::new();
    let built: Vec<BuildOutcome> = build::build_all(&docker, plan, &options.build).await?;
    for outcome in &built {
        timings.entry(outcome.component.clone()).or_default().build = Some((outcome.elapsed, outcome.cached));
    }
    let mut endpoints = BTreeMap::new();
    let placement = match options.backend {
        Backend::Docker => {
            let stack = docker_backend::up(&docker, plan).await?;
            for running in &stack.containers {
                timings.entry(running.component.clone()).or_default().ready = Some(running.ready_after);
                endpoints.insert(running.component.clone(), running.ports.clone());
            }
            Placement::Docker { docker_host: std::env::var("DOCKER_HOST").ok(), network: stack.network }
        }
        Backend::Kind { cluster, registry: registry_host } => {
            let started = Instant::now();
            if registry_host.is_some() {
                registry::push_all(&docker, plan, None).await?;
            } else {
                let images: Vec<kind::LoadImage> = built
                    .iter()
                    .map(|b| kind::LoadImage { image: b.image.clone(), image_id: b.image_id.clone() })
                    .collect();
                kind::load(&docker, cluster, &images).await?;
            }
            for outcome in &built {
                timings.entry(outcome.component.clone()).or_default().load = Some(started.elapsed());
            }
            let context = format!("kind-{cluster}");
            let client = kube_backend::client(cluster, Some(&context)).await?;
            let started = Instant::now();
            let kube_options = kube_backend::KubeOptions {
                timeout: options.ready_timeout.unwrap_or(kube_backend::KubeOptions::default().timeout),
            };
            kube_backend::deploy(client, plan, &kube_options).await?;
            for component in plan.components() {
                timings.entry(component.name.clone()).or_default().ready = Some(started.elapsed());
            }
            Placement::Kubernetes { cluster: cluster.to_owned(), context }
        }
    };
    Ok(StackRecord {
        run_id: plan.run().as_str().to_owned(),
        consumer: plan.consumer().as_str().to_owned(),
        tag: plan.tag().as_str().to_owned(),
        components: plan.components().iter().map(|c| c.name.clone()).collect(),
        placement,
        endpoints,
        summary: summary(plan, &timings),
    })
}

/// Removes everything of one run and consumer: containers and networks found
/// by their labels, and the namespace on Kubernetes. Images stay: built ones
/// are the build cache, borrowed ones are not ours.
///
/// `kube_context` names the cluster whose namespace goes too.
/// Returns what was removed, in words.
///
/// # Errors
/// [`StackError`] when the engine or cluster refuses.
pub async fn down(
    docker: &bollard::Docker,
    run_id: &str,
    consumer: &str,
    kube_context: Option<&str>,
) -> Result<String, StackError> {
    let filters = labels::filter(run_id, consumer);
    let removed = docker_backend::remove_labelled(docker, &filters).await?;
    let mut summary = format!("{} container(s), {} network(s)", removed.containers.len(), removed.networks.len());
    if let Some(context) = kube_context {
        let client = kube_backend::client("", Some(context)).await?;
        let namespace = Namespace::of(run_id, consumer);
        kube_backend::delete_namespace(client, &namespace).await?;
        let _ = write!(summary, ", namespace {namespace}");
    }
    Ok(summary)
}

fn seconds(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), |d| format!("{:.1}s", d.as_secs_f64()))
}

/// The per-run table: component, image, build / load / ready times, cache hits.
fn summary(plan: &Plan, timings: &BTreeMap<String, Timings>) -> String {
    let width = plan.components().iter().map(|c| c.image.to_string().len()).max().unwrap_or(5);
    let mut out = format!(
        "e2e-infra: `{}` ready, tag {}\n  {:<16} {:<width$} {:>7} {:>7} {:>7}  cache\n",
        plan.consumer(),
        plan.tag(),
        "component",
        "image",
        "build",
        "load",
        "ready"
    );
    for component in plan.components() {
        let t = timings.get(&component.name);
        let build = t.and_then(|t| t.build);
        let cache = match build {
            Some((_, true)) => "hit",
            Some((_, false)) => "miss",
            None => "-",
        };
        let _ = writeln!(
            out,
            "  {:<16} {:<width$} {:>7} {:>7} {:>7}  {cache}",
            component.name,
            component.image.to_string(),
            seconds(build.map(|b| b.0)),
            seconds(t.and_then(|t| t.load)),
            seconds(t.and_then(|t| t.ready)),
        );
    }
    out
}

//! One stack, end to end: build, load, deploy, ready; and its removal.
//!
//! This is where the stages meet. Each takes the plan's references and
//! returns what the next needs; none formats a tag. `teardown` finds the
//! stacks of every run on an engine or cluster, and removes or keeps them.

pub(crate) mod teardown;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::backend::{Backend, ImageTarget, KubeTarget};
use crate::build::{self, BuildOptions, BuildOutcome};
use crate::deploy::{docker as docker_backend, kube as kube_backend};
use crate::engine;
use crate::error::error_chain;
use crate::labels::{self, StackLabels};
use crate::load::containerd::{self, LoadImage, LoadReport, Node};
use crate::load::{credentials, kind, registry};
use crate::plan::{Plan, RunKey, Tag};
use crate::record::{Placement, StackRecord, Witness};

/// How long removing a stack's containers, networks and markers from the
/// engine may take in all; a frozen engine fails the teardown with a
/// message instead of holding it forever.
pub const REMOVAL_TIMEOUT: Duration = Duration::from_secs(120);

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
    /// Finding a Kind cluster's nodes, or loading into them, failed.
    #[error(transparent)]
    Kind(#[from] kind::KindError),
    /// Loading into a node's containerd failed.
    #[error(transparent)]
    Containerd(#[from] containerd::ContainerdError),
    /// Pushing to a registry failed.
    #[error(transparent)]
    Registry(#[from] registry::LoadError),
    /// The Docker backend failed.
    #[error(transparent)]
    Docker(#[from] docker_backend::DockerError),
    /// The Kubernetes backend failed.
    #[error(transparent)]
    Kube(#[from] kube_backend::KubeError),
    /// The engine did not finish removing a stack in time.
    #[error(transparent)]
    Silent(#[from] engine::Silent),
    /// The background runtime could not run the work.
    #[error(transparent)]
    Runtime(#[from] crate::background::RuntimeError),
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
    /// Keep the stack after the run and reuse what did not change (Docker
    /// backend; see [`docker_backend::up_reusing`]).
    pub reuse: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self { backend: Backend::Docker, ready_timeout: None, build: BuildOptions::default(), reuse: false }
    }
}

/// Per component: how long each stage took.
#[derive(Default)]
struct Timings {
    build: Option<(Duration, bool)>,
    load: Option<Duration>,
    ready: Option<Duration>,
    reused: bool,
}

/// The engine a recorded stack lives on.
///
/// # Errors
/// [`StackError::Engine`] when it does not answer.
pub(crate) async fn engine_of(placement: Option<&Placement>) -> Result<bollard::Docker, StackError> {
    Ok(match placement {
        Some(Placement::Docker { docker_host: Some(host), .. }) => engine::connect_to(host).await?,
        _ => engine::connect().await?,
    })
}

/// Builds, loads, deploys and waits until ready.
///
/// # Errors
/// [`StackError`] from the first stage that fails. On Kubernetes, the
/// manifests are rendered and checked (`deploy::kube`) before the
/// build: a manifest the preflight refuses costs no build and no load.
pub async fn up(plan: &Plan, options: &StackOptions) -> Result<StackRecord, StackError> {
    up_reporting(plan, options, None).await
}

/// As [`up`], and when a stage fails, `report` writes the failure report
/// before anything of the stack is removed (on Docker, `up` removes a
/// partly started stack). The report's outcome is then in
/// [`Recorder::outcome`](crate::report::Recorder::outcome).
///
/// # Errors
/// As [`up`].
pub async fn up_reporting(
    plan: &Plan,
    options: &StackOptions,
    report: Option<&dyn Witness>,
) -> Result<StackRecord, StackError> {
    let docker = match engine::connect().await {
        Ok(docker) => docker,
        Err(error) => {
            let error = StackError::from(error);
            if let Some(report) = report {
                report.capture(&crate::error::error_chain(&error)).await;
            }
            return Err(error);
        }
    };
    up_on(&docker, plan, options, report).await
}

/// [`up_reporting`] with an engine client already connected.
///
/// # Errors
/// As [`up`].
pub async fn up_on(
    docker: &bollard::Docker,
    plan: &Plan,
    options: &StackOptions,
    report: Option<&dyn Witness>,
) -> Result<StackRecord, StackError> {
    let result = stages(docker, plan, options, report).await;
    if let (Err(error), Some(report)) = (&result, report) {
        if let StackError::Build(build::BuildError::Failed { component, output, .. }) = error {
            report.build(component, output);
        }
        report.capture(&crate::error::error_chain(error)).await;
    }
    result
}

async fn stages(
    docker: &bollard::Docker,
    plan: &Plan,
    options: &StackOptions,
    report: Option<&dyn Witness>,
) -> Result<StackRecord, StackError> {
    // A setting that cannot work fails the run before anything starts.
    build::silence_env().map_err(engine::EngineError::from)?;
    // A cluster that does not answer fails the run in seconds, before the build.
    let kube = match &options.backend {
        Backend::Kubernetes(target) => Some((target, kube_backend::connect(target.context.as_deref()).await?)),
        Backend::Docker => None,
    };
    let plan = match options.ready_timeout {
        Some(timeout) => {
            let mut overridden = plan.clone();
            overridden.set_ready_timeout(timeout);
            Cow::Owned(overridden)
        }
        None => Cow::Borrowed(plan),
    };
    let plan = &*plan;
    // What every stage marks its objects with, worked out once.
    let labels = StackLabels::of(plan);
    if kube.is_some() {
        // The preflight needs no request: a manifest that cannot be deployed
        // fails before anything is built or loaded into the nodes.
        kube_backend::render(plan, &labels)?;
    }
    let mut setup = Setup { docker, plan, labels: &labels, options, report, timings: BTreeMap::new() };
    let built = setup.build().await?;
    let deployed = match kube {
        None => setup.up_on_docker(&built).await?,
        Some((target, client)) => setup.up_on_kubernetes(&built, target, client).await?,
    };
    Ok(StackRecord {
        key: plan.key().clone(),
        tag: plan.tag().as_str().to_owned(),
        components: plan.components().iter().map(|c| c.name.clone()).collect(),
        placement: deployed.placement,
        endpoints: deployed.endpoints,
        forwarded_by: None,
        digests: deployed.digests,
        summary: format!("e2e-infra: `{}` ready, tag {}\n{}", plan.consumer(), plan.tag(), table(plan, &setup.timings)),
        plan: serde_json::to_value(plan).ok(),
        builds: built.into_iter().map(|b| (b.component, b.output)).collect(),
    })
}

/// One stack's setup as its stages go: what they share, and the time each
/// component spent in each.
struct Setup<'a> {
    docker: &'a bollard::Docker,
    plan: &'a Plan,
    labels: &'a StackLabels,
    options: &'a StackOptions,
    report: Option<&'a dyn Witness>,
    timings: BTreeMap<String, Timings>,
}

/// Where the deploy stage put the stack, for its record.
struct Deployed {
    placement: Placement,
    endpoints: BTreeMap<String, BTreeMap<u16, std::net::SocketAddr>>,
    digests: BTreeMap<String, String>,
}

impl Setup<'_> {
    /// Gives the failure report the timings so far.
    fn note(&self) {
        if let Some(report) = self.report {
            report.timings(table(self.plan, &self.timings));
        }
    }

    /// Builds every image, and tells the report each build's output.
    async fn build(&mut self) -> Result<Vec<BuildOutcome>, StackError> {
        let built: Vec<BuildOutcome> = build::build_all(self.docker, self.plan, &self.options.build).await?;
        for outcome in &built {
            self.timings.entry(outcome.component.clone()).or_default().build = Some((outcome.elapsed, outcome.cached));
        }
        if let Some(report) = self.report {
            for outcome in &built {
                report.build(&outcome.component, &outcome.output);
            }
        }
        self.note();
        Ok(built)
    }

    /// Starts the stack on the Docker engine (a reusable one keeps what
    /// still matches).
    async fn up_on_docker(&mut self, built: &[BuildOutcome]) -> Result<Deployed, StackError> {
        let (docker, plan, report) = (self.docker, self.plan, self.report);
        let stack = if self.options.reuse {
            let ids = built.iter().map(|b| (b.component.clone(), b.image_id.clone())).collect();
            let (stack, kept) = docker_backend::up_reusing(docker, plan, self.labels, &ids, report).await?;
            for component in kept {
                self.timings.entry(component).or_default().reused = true;
            }
            stack
        } else {
            docker_backend::up(docker, plan, self.labels, report).await?
        };
        let mut endpoints = BTreeMap::new();
        for running in &stack.containers {
            let timing = self.timings.entry(running.component.clone()).or_default();
            if !timing.reused {
                timing.ready = Some(running.ready_after);
            }
            endpoints.insert(running.component.clone(), running.ports.clone());
        }
        let placement = Placement::Docker { docker_host: std::env::var("DOCKER_HOST").ok(), network: stack.network };
        Ok(Deployed { placement, endpoints, digests: BTreeMap::new() })
    }

    /// Gets the images to the cluster's nodes (or its registry), then
    /// deploys and waits until ready.
    async fn up_on_kubernetes(
        &mut self,
        built: &[BuildOutcome],
        target: &KubeTarget,
        client: kube::Client,
    ) -> Result<Deployed, StackError> {
        let docker = self.docker;
        let started = Instant::now();
        let images: Vec<LoadImage> =
            built.iter().map(|b| LoadImage { image: b.image.clone(), image_id: b.image_id.clone() }).collect();
        let mut digests = BTreeMap::new();
        let mut pull_secret = None;
        let loaded = match &target.images {
            ImageTarget::Registry { host } => {
                let credential = credentials::lookup(host).map_err(registry::LoadError::from)?;
                let pushed = registry::push_all(docker, self.plan, credential.as_ref()).await?;
                pull_secret = credential.as_ref().map(credentials::Credential::docker_config_json);
                digests = registry::digests(self.plan, &pushed);
                None
            }
            ImageTarget::KindNodes { cluster } => Some(kind::load(docker, cluster, &images).await?),
            ImageTarget::Containerd { socket } => {
                Some(containerd::load(docker, &[Node::Socket { path: socket.clone() }], &images).await?)
            }
        };
        record_loads(self.plan, loaded.as_ref(), started.elapsed(), built, &mut self.timings);
        self.note();
        // What is deployed names what was pushed: `name:tag@sha256:...`.
        let mut pinned = self.plan.clone();
        pinned.pin(&digests);
        let plan = &pinned;
        let started = Instant::now();
        let kube_options = kube_backend::KubeOptions {
            timeout: self.options.ready_timeout.unwrap_or(kube_backend::DEFAULT_TIMEOUT),
            images: serde_json::to_string(&target.images).ok(),
            image_ids: built
                .iter()
                .filter_map(|b| Some((plan.image(&b.component)?.to_string(), b.image_id.clone())))
                .collect(),
            reuse: self.options.reuse,
            pull_secret,
        };
        let mut deployed = kube_backend::deploy(client, plan, self.labels, &kube_options).await;
        if let (Err(error), Some(report)) = (&mut deployed, &loaded) {
            explain_pull_failure(docker, &report.nodes, error).await;
        }
        // A component without manifests of its own is ready when the stack is.
        let stack = deployed?;
        for component in plan.components() {
            let ready = stack.ready_after.get(&component.name).copied().unwrap_or_else(|| started.elapsed());
            self.timings.entry(component.name.clone()).or_default().ready = Some(ready);
        }
        let placement = Placement::Kubernetes { target: target.clone() };
        Ok(Deployed { placement, endpoints: BTreeMap::new(), digests })
    }
}

/// Waiting reasons of a container whose image the node cannot give it.
const IMAGE_REASONS: &[&str] = &["ErrImageNeverPull", "ErrImagePull", "ImagePullBackOff"];

/// Adds to a container that cannot get its image what the first of
/// `nodes` holds of the image's repository: an earlier tag, the cache, or
/// nothing. That is the fact that settles a build/deploy tag mismatch.
pub async fn explain_pull_failure(docker: &bollard::Docker, nodes: &[Node], error: &mut kube_backend::KubeError) {
    let kube_backend::KubeError::PodFailed(failure) = error else { return };
    let Some(node) = nodes.first() else { return };
    if !IMAGE_REASONS.contains(&failure.reason.as_str()) {
        return;
    }
    let repository = failure.image.rsplit_once(':').map_or(failure.image.as_str(), |(r, _)| r).to_owned();
    let held = match containerd::node_images(docker, node).await {
        Ok(held) => {
            held.into_iter().filter(|r| r.rsplit_once(':').is_some_and(|(repo, _)| repo == repository)).collect()
        }
        Err(error) => vec![format!("(cannot list: {})", error_chain(&error).replace('\n', " "))],
    };
    failure.node_images = Some((node.to_string(), held));
}

/// Per built component, the slowest node's load time (the whole push for
/// a registry).
fn record_loads(
    plan: &Plan,
    report: Option<&LoadReport>,
    total: Duration,
    built: &[BuildOutcome],
    timings: &mut BTreeMap<String, Timings>,
) {
    for outcome in built {
        let slowest = report.map_or(total, |report| {
            report.outcomes.iter().filter(|o| o.image == outcome.image).map(|o| o.elapsed).max().unwrap_or_default()
        });
        if plan.component(&outcome.component).is_some() {
            timings.entry(outcome.component.clone()).or_default().load = Some(slowest);
        }
    }
}

/// Removes everything of one run and consumer: containers and networks found
/// by their labels; on Kubernetes (`kube`), the run's namespace and the
/// run's image references on the nodes. Images on the engine stay: built
/// ones are the build cache, borrowed ones are not ours.
///
/// Returns what was removed, in words.
///
/// # Errors
/// [`StackError`] when the engine or cluster refuses.
pub async fn down(docker: &bollard::Docker, key: &RunKey, kube: Option<&KubeTarget>) -> Result<String, StackError> {
    let filters = labels::filter(key);
    let removing = docker_backend::remove_labelled(docker, &filters);
    let removed =
        engine::within(docker, REMOVAL_TIMEOUT, "removing the stack's containers and networks", removing).await??;
    let mut summary = format!("{} container(s), {} network(s)", removed.containers.len(), removed.networks.len());
    if let Some(target) = kube {
        let client = kube_backend::connect(target.context.as_deref()).await?;
        let namespace = key.namespace();
        let released = kube_backend::release_shared(&client, &namespace).await?;
        kube_backend::delete_namespace(client, &namespace).await?;
        let nodes = match &target.images {
            ImageTarget::KindNodes { cluster } => kind::nodes(docker, cluster).await?,
            ImageTarget::Containerd { socket } => vec![Node::Socket { path: socket.clone() }],
            ImageTarget::Registry { .. } => Vec::new(),
        };
        let mut references = 0;
        for node in &nodes {
            references += containerd::remove_tagged(docker, node, &Tag::of(&namespace)).await?.len();
        }
        let _ = write!(summary, ", namespace {namespace}, {references} image reference(s) on the nodes");
        if !released.is_empty() {
            let _ = write!(summary, ", cluster-scoped objects no other run uses: {}", released.join(", "));
        }
    }
    Ok(summary)
}

fn seconds(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), |d| format!("{:.1}s", d.as_secs_f64()))
}

/// The per-run table: component, image, build / load / ready times, cache
/// hits; `-` for a stage not (yet) done.
fn table(plan: &Plan, timings: &BTreeMap<String, Timings>) -> String {
    let names = plan.components().iter().map(|c| c.name.len()).max().unwrap_or(0).max(16);
    let width = plan.components().iter().map(|c| c.image.to_string().len()).max().unwrap_or(5);
    let mut out =
        format!("  {:<names$} {:<width$} {:>7} {:>7} {:>7}  cache\n", "component", "image", "build", "load", "ready");
    for component in plan.components() {
        let t = timings.get(&component.name);
        let build = t.and_then(|t| t.build);
        let cache = match build {
            Some((_, true)) => "hit",
            Some((_, false)) => "miss",
            None => "-",
        };
        let cache = if t.is_some_and(|t| t.reused) { format!("{cache}, container reused") } else { cache.to_owned() };
        let _ = writeln!(
            out,
            "  {:<names$} {:<width$} {:>7} {:>7} {:>7}  {cache}",
            component.name,
            component.image.to_string(),
            seconds(build.map(|b| b.0)),
            seconds(t.and_then(|t| t.load)),
            seconds(t.and_then(|t| t.ready)),
        );
    }
    out
}

//! Building the images of a plan, each tagged with the plan's reference.
//!
//! The context goes to the engine as a tar stream (after `.dockerignore`);
//! a Dockerfile outside the context is added under a generated name. Every
//! image carries its provenance (the run that built it, the component, the
//! digest of its inputs) and a second reference, its cache reference
//! `<registry>/<component>:cache-<digest prefix>`. An image counts as built
//! from unchanged inputs only when found by that reference with matching
//! labels: an image that merely inherited the labels (one built `FROM` a
//! cached image, or an intermediate image of a Podman build) never does.

mod bases;
mod context;
mod dockerignore;
mod fingerprint;
pub(crate) mod housekeeping;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bollard::query_parameters::{BuildImageOptionsBuilder, TagImageOptionsBuilder};
use bollard::Docker;
use futures::{StreamExt, TryStreamExt};
use sha2::Digest as _;

use context::Context;
pub use context::ContextError;
pub use dockerignore::InvalidPattern;
pub use fingerprint::HashCounts;

use crate::catalog::{BuildSpec, Source};
use crate::engine::{self, Silent};
use crate::error::error_chain;
use crate::labels;
use crate::plan::{ImageRef, Plan, PlannedComponent};

/// How many lines of build output an error carries.
const OUTPUT_TAIL: usize = 20;
/// How many lines of build output a build keeps for the failure report.
const REPORT_TAIL: usize = 400;
/// How long one engine call around a build (inspect, tag) may take.
pub const ENGINE_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a build may go without a word from the engine before it is
/// given up as frozen. A `RUN` step may rightly be quiet for a while, so this
/// bounds silence, not the build.
pub const BUILD_SILENCE: Duration = Duration::from_secs(600);
/// Overrides [`BUILD_SILENCE`] (`90`, `90s`, `15m`).
pub const BUILD_SILENCE_ENV: &str = "E2E_INFRA_BUILD_SILENCE";
/// The tag prefix of cache references.
pub const CACHE_TAG_PREFIX: &str = "cache-";
/// How many hex digits of the input digest a cache reference carries; the
/// full digest is checked against the image's label.
const CACHE_DIGEST_HEX: usize = 20;

/// The cache reference of the image built for `image`'s component from the
/// inputs with `digest` (`sha256:<hex>`): `<registry>/<component>:cache-<20 hex>`.
pub fn cache_ref(image: &ImageRef, digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    let short: String = hex.chars().take(CACHE_DIGEST_HEX).collect();
    format!("{}:{CACHE_TAG_PREFIX}{short}", image.name())
}

/// The digest of `component`'s own build inputs: its Dockerfile, the
/// context's files after `.dockerignore` (paths, kinds, modes, contents),
/// the build arguments and the target. A cache reference is keyed by this
/// digest combined with the engine's image id of every image the
/// Dockerfile is built `FROM`, which [`build_all`] inspects.
/// The digests of files unchanged since an earlier call are reused; the
/// counts say how many files were read.
///
/// # Errors
/// [`ContextError`] for a context or Dockerfile that cannot be read.
///
/// # Example
/// ```no_run
/// # fn demo(spec: &e2e_infra::catalog::BuildSpec) -> Result<(), Box<dyn std::error::Error>> {
/// let (digest, counts) = e2e_infra::build::input_digest("datastorage", spec)?;
/// println!("{digest}: {} file(s) read, {} known", counts.hashed, counts.reused);
/// # Ok(()) }
/// ```
pub fn input_digest(component: &str, spec: &BuildSpec) -> Result<(String, HashCounts), ContextError> {
    let ctx = Context::scan(component, spec)?;
    Ok((ctx.digest, ctx.counts))
}

/// How [`build_all`] builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    /// Build even when an image with the same inputs exists, bypassing the
    /// engine's layer cache too.
    pub force: bool,
    /// How many images build at once (at least one).
    pub concurrency: usize,
    /// After a successful build, keep the run tags of this many newest runs
    /// per built component and remove older ones (see `housekeeping`:
    /// after a run that reused every image, at most every
    /// [`housekeeping::REUSE_PRUNE_EVERY`]); 0 keeps them all. Default
    /// [`housekeeping::KEEP_RUNS`], or `E2E_INFRA_KEEP_IMAGE_RUNS`.
    pub keep_runs: usize,
    /// How long a build may go without output from the engine. Default
    /// [`BUILD_SILENCE`], or `E2E_INFRA_BUILD_SILENCE`.
    pub silence: Duration,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            force: false,
            concurrency: 2,
            keep_runs: housekeeping::keep_runs_from_env(),
            silence: silence_from_env(),
        }
    }
}

/// Shortest silence `E2E_INFRA_BUILD_SILENCE` may allow: a healthy engine
/// can be quiet that long while a step starts.
pub const MIN_BUILD_SILENCE: Duration = Duration::from_secs(10);

/// [`BUILD_SILENCE`], or the duration in `E2E_INFRA_BUILD_SILENCE`; a
/// stack's `up` refuses a value that is not one ([`silence_env`]).
fn silence_from_env() -> Duration {
    silence_env().unwrap_or(BUILD_SILENCE)
}

/// The duration in `E2E_INFRA_BUILD_SILENCE`, or [`BUILD_SILENCE`].
///
/// # Errors
/// [`EnvError`](engine::EnvError) for a value that is not a duration or
/// is below [`MIN_BUILD_SILENCE`].
pub fn silence_env() -> Result<Duration, engine::EnvError> {
    engine::env_duration(BUILD_SILENCE_ENV, BUILD_SILENCE, MIN_BUILD_SILENCE)
}

/// One built (or reused) image.
#[derive(Debug, Clone)]
// Fields named for what they hold carry no doc of their own.
#[allow(missing_docs)]
pub struct BuildOutcome {
    pub component: String,
    /// The reference it is tagged with: the plan's.
    pub image: ImageRef,
    /// The engine's image id.
    pub image_id: String,
    /// Whether an image with the same inputs was reused instead of built.
    pub cached: bool,
    /// Time taken, including reading the context.
    pub elapsed: Duration,
    /// The build's last output lines, or why no build ran.
    pub output: String,
    /// Context files read to compute the input digest, and files whose
    /// digest was known from an earlier run.
    pub hashing: HashCounts,
}

/// A build error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
// Fields named for what they hold carry no doc of their own.
#[allow(missing_docs)]
pub enum BuildError {
    /// The build context could not be read.
    #[error("reading the build context of `{component}` failed")]
    Context {
        component: String,
        /// What went wrong.
        source: ContextError,
    },
    /// The engine rejected or failed the build.
    #[error("building `{component}` as `{image}` failed{}\nlast build output:\n{output}", step.as_ref().map(|s| format!(" at `{s}`")).unwrap_or_default())]
    Failed {
        component: String,
        /// The reference it was to be tagged with.
        image: ImageRef,
        /// The last step the engine started (`Step 2/3 : RUN ...`).
        step: Option<String>,
        /// The last lines of build output.
        output: String,
        /// The engine's error.
        source: bollard::errors::Error,
    },
    /// An engine call around the build failed.
    #[error("{operation} for `{component}` (`{image}`) failed")]
    Engine {
        component: String,
        image: String,
        /// What was asked of the engine.
        operation: &'static str,
        /// The engine's error.
        source: bollard::errors::Error,
    },
    /// The engine could not say which image a base reference of the
    /// component's Dockerfile names.
    #[error("inspecting base image `{base}` of `{component}` failed")]
    Base {
        component: String,
        /// The reference in the Dockerfile's `FROM`.
        base: String,
        /// The engine's error.
        source: bollard::errors::Error,
    },
    /// A borrowed image is not in the engine.
    #[error("component `{component}` borrows image `{image}`, which this engine does not have; it is never built here and cannot be pulled here: load or build it into the engine first (e.g. `docker load`, `docker build -t {image}`)")]
    BorrowedMissing { component: String, image: ImageRef },
    /// The engine sent nothing for longer than the build's silence bound.
    #[error("building `{component}` as `{image}`: the engine sent nothing for {waited:?}{}; it may be frozen or overloaded (check it with `docker info`), or the step is quiet for longer than that: allow more with {BUILD_SILENCE_ENV}\nlast build output:\n{output}", step.as_ref().map(|s| format!(" during `{s}`")).unwrap_or_default())]
    Quiet {
        /// The component.
        component: String,
        /// The reference it was to be tagged with.
        image: ImageRef,
        /// The last step the engine started.
        step: Option<String>,
        /// The last lines of build output.
        output: String,
        /// How long the engine was silent.
        waited: Duration,
    },
    /// The engine did not answer a call around the build in time.
    #[error("building `{component}` stopped")]
    Silent {
        component: String,
        /// The call and how long it was given.
        source: Silent,
    },
    /// A worker thread died.
    #[error("reading the build context of `{component}` stopped")]
    Worker {
        component: String,
        /// The join error.
        source: tokio::task::JoinError,
    },
}

/// Builds every built component of `plan`, at most `opts.concurrency` at a
/// time, and checks that every borrowed image is present. Outcomes are in
/// plan order; the first failure cancels the builds still running.
///
/// # Errors
/// [`BuildError`] naming the component: an unreadable context, a failed
/// build (with its failing step and last output lines), a missing borrowed
/// image, or an engine error.
///
/// # Example
/// ```no_run
/// # async fn demo(plan: e2e_infra::Plan) -> Result<(), Box<dyn std::error::Error>> {
/// use e2e_infra::build::{build_all, BuildOptions};
/// let docker = e2e_infra::engine::connect().await?;
/// for built in build_all(&docker, &plan, &BuildOptions::default()).await? {
///     println!("{} -> {} (cached: {})", built.component, built.image, built.cached);
/// }
/// # Ok(()) }
/// ```
pub async fn build_all(docker: &Docker, plan: &Plan, opts: &BuildOptions) -> Result<Vec<BuildOutcome>, BuildError> {
    // Every component looks for its cache at once; only builds wait for one
    // of the `concurrency` places.
    let builds = tokio::sync::Semaphore::new(opts.concurrency.max(1));
    let mut jobs = Vec::new();
    for component in plan.components() {
        match &component.spec.source {
            Source::Build(spec) => jobs.push(build_one(docker, plan, component, spec, opts, &builds)),
            Source::Borrowed(image) => ensure_present(docker, &component.name, image).await?,
        }
    }
    let mut outcomes: Vec<BuildOutcome> =
        futures::stream::iter(jobs).buffer_unordered(plan.components().len().max(1)).try_collect().await?;
    let position = |name: &str| plan.components().iter().position(|c| c.name == name);
    outcomes.sort_by_key(|o| position(&o.component));
    if opts.keep_runs > 0 && !outcomes.is_empty() {
        prune_after_builds(docker, &outcomes, opts.keep_runs).await;
    }
    Ok(outcomes)
}

/// Housekeeping after the builds: after every run that built an image, and
/// at most every [`housekeeping::REUSE_PRUNE_EVERY`] after runs that reused
/// every image (those only tagged images the grace period protects). It is
/// a courtesy: its failure must not fail the run.
async fn prune_after_builds(docker: &Docker, outcomes: &[BuildOutcome], keep: usize) {
    let components: Vec<&str> = outcomes.iter().map(|o| o.component.as_str()).collect();
    let last = housekeeping::LastPrune::of(docker, &components);
    let started = std::time::SystemTime::now();
    if outcomes.iter().all(|o| o.cached) && !last.due(started) {
        tracing::debug!("every image reused and the old run tags pruned recently: no housekeeping");
        return;
    }
    let pruning = Instant::now();
    let protect: Vec<ImageRef> = outcomes.iter().map(|o| o.image.clone()).collect();
    match housekeeping::prune_run_tags(docker, Some(&components), keep, housekeeping::GRACE, &protect).await {
        Ok(removed) => {
            last.mark(started);
            if !removed.is_empty() {
                tracing::info!(removed = removed.len(), keep, "removed the image tags of older runs");
            }
        }
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), "removing the image tags of older runs failed; `e2e-infra clean --images` retries")
        }
    }
    tracing::debug!(elapsed = ?pruning.elapsed(), "housekeeping after the builds");
}

async fn ensure_present(docker: &Docker, component: &str, image: &ImageRef) -> Result<(), BuildError> {
    let inspected = engine::within(
        docker,
        ENGINE_CALL_TIMEOUT,
        "inspecting the borrowed image",
        docker.inspect_image(&image.to_string()),
    )
    .await
    .map_err(|source| BuildError::Silent { component: component.to_owned(), source })?;
    match inspected {
        Ok(_) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
            Err(BuildError::BorrowedMissing { component: component.to_owned(), image: image.clone() })
        }
        Err(source) => Err(BuildError::Engine {
            component: component.to_owned(),
            image: image.to_string(),
            operation: "inspecting the borrowed image",
            source,
        }),
    }
}

async fn build_one(
    docker: &Docker,
    plan: &Plan,
    component: &PlannedComponent,
    spec: &BuildSpec,
    opts: &BuildOptions,
    builds: &tokio::sync::Semaphore,
) -> Result<BuildOutcome, BuildError> {
    let started = Instant::now();
    let name = component.name.as_str();
    let image = &component.image;
    let mut ctx = scan_context(name, spec).await?;
    let hashing = ctx.counts;
    tracing::debug!(component = name, elapsed = ?started.elapsed(), "input digest");
    let base_ids = bases::identify(docker, component, &ctx.bases).await?;
    ctx.digest = bases::with_bases(&ctx.digest, &ctx.bases, &base_ids);
    tracing::debug!(component = name, bases = ?ctx.bases, elapsed = ?started.elapsed(), "base image ids");
    let cache = cache_ref(image, &ctx.digest);
    let outcome = |image_id, cached, output| BuildOutcome {
        component: name.to_owned(),
        image: image.clone(),
        image_id,
        cached,
        elapsed: started.elapsed(),
        output,
        hashing,
    };
    if !opts.force {
        if let Some(id) = reuse_cached(docker, component, &cache, &ctx.digest, started).await? {
            let output =
                format!("no build ran: image `{id}`, built earlier from the same inputs, was tagged `{image}`\n");
            return Ok(outcome(id, true, output));
        }
    }
    // The semaphore is never closed: acquiring fails only if it were.
    let _place = builds.acquire().await.ok();
    let digest = ctx.digest.clone();
    let tail = match run_build(docker, plan, component, spec, opts, opts.force, ctx).await {
        Err(error) if lost_a_cached_step(&error) => {
            tracing::warn!(
                component = name,
                "the engine lost a cached step while the build used it (a clean-up on the same engine removed it); building again without the engine's cache"
            );
            let mut ctx = scan_context(name, spec).await?;
            ctx.digest = digest;
            run_build(docker, plan, component, spec, opts, true, ctx).await?
        }
        built => built?,
    };
    let image_id = tag_as_cache(docker, component, &cache).await?;
    tracing::info!(component = name, %image, %image_id, elapsed = ?started.elapsed(), "built");
    Ok(outcome(image_id, false, Vec::from(tail).join("\n")))
}

/// How an engine call of `component`'s build failed.
fn engine_error<'a>(
    component: &'a PlannedComponent,
    operation: &'static str,
) -> impl FnOnce(bollard::errors::Error) -> BuildError + 'a {
    move |source| BuildError::Engine {
        component: component.name.clone(),
        image: component.image.to_string(),
        operation,
        source,
    }
}

/// An engine call of `component`'s build that got no answer in time.
fn silent(component: &PlannedComponent) -> impl FnOnce(Silent) -> BuildError + '_ {
    move |source| BuildError::Silent { component: component.name.clone(), source }
}

/// The build context, read and hashed off the async threads.
async fn scan_context(name: &str, spec: &BuildSpec) -> Result<Context, BuildError> {
    let scan_spec = spec.clone();
    let scan_name = name.to_owned();
    tokio::task::spawn_blocking(move || Context::scan(&scan_name, &scan_spec))
        .await
        .map_err(|source| BuildError::Worker { component: name.to_owned(), source })?
        .map_err(|source| BuildError::Context { component: name.to_owned(), source })
}

/// The id of the image built earlier from the same inputs (`digest`), now
/// tagged with the run's tag too; `None` when there is none this machine
/// can trust.
async fn reuse_cached(
    docker: &Docker,
    component: &PlannedComponent,
    cache: &str,
    digest: &str,
    started: Instant,
) -> Result<Option<String>, BuildError> {
    let name = component.name.as_str();
    let image = &component.image;
    let looking_up = find_cached(docker, cache, name, digest);
    let found = engine::within(docker, ENGINE_CALL_TIMEOUT, "looking up the cache reference", looking_up)
        .await
        .map_err(silent(component))?
        .map_err(engine_error(component, "looking up the cache reference"))?;
    tracing::debug!(component = name, elapsed = ?started.elapsed(), "cache lookup");
    let record = ServedIds::of(docker, cache);
    let Some(Cached { id, references }) = found.filter(|cached| record.confirms(&cached.id)) else { return Ok(None) };
    // A run id used again (a reusable stack) finds its tag in place.
    if !references.contains(&image.to_string()) {
        let (repo, run_tag) = (image.name(), image.tag().unwrap_or("latest"));
        let tagging = docker.tag_image(&id, Some(TagImageOptionsBuilder::new().repo(&repo).tag(run_tag).build()));
        engine::within(docker, ENGINE_CALL_TIMEOUT, "tagging the cached image", tagging)
            .await
            .map_err(silent(component))?
            .map_err(engine_error(component, "tagging the image built earlier from the same inputs"))?;
    }
    tracing::info!(component = name, %image, image_id = %id, "inputs unchanged: reused the image built earlier");
    Ok(Some(id))
}

/// Whether a build failed because an image its cached steps stood on went
/// away during the build: another run's clean-up on the same engine removed
/// an old image, and with it the untagged parents this build had just
/// taken from the cache. A build without the cache makes images of its own.
fn lost_a_cached_step(error: &BuildError) -> bool {
    let BuildError::Failed { source: bollard::errors::Error::DockerStreamError { error }, .. } = error else {
        return false;
    };
    names_a_lost_parent(error)
}

/// Whether the engine's message of a failed build names an image by id that
/// it no longer has: how Docker 29's containerd store reports a cached
/// parent removed during the build (see `lost_a_cached_step`).
#[doc(hidden)]
pub fn names_a_lost_parent(message: &str) -> bool {
    message.contains("sha256:") && (message.contains("No such image") || message.contains("unable to find image"))
}

/// Builds `ctx` on the engine as the component's image (the run's tag),
/// without the engine's layer cache when `nocache`; the last lines of the
/// build's output.
async fn run_build(
    docker: &Docker,
    plan: &Plan,
    component: &PlannedComponent,
    spec: &BuildSpec,
    opts: &BuildOptions,
    nocache: bool,
    ctx: Context,
) -> Result<VecDeque<String>, BuildError> {
    let name = component.name.as_str();
    let image = &component.image;
    let mut image_labels = labels::for_image(plan.key(), name);
    image_labels.insert(labels::INPUT_DIGEST.to_owned(), ctx.digest.clone());
    let build_args: HashMap<&str, &str> = spec.args.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let tag = image.to_string();
    let options = BuildImageOptionsBuilder::new()
        .dockerfile(&ctx.dockerfile_name)
        .t(&tag)
        .rm(true)
        .forcerm(true)
        .nocache(nocache)
        .buildargs(&build_args)
        .labels(&image_labels)
        .target(spec.target.as_deref().unwrap_or_default())
        .build();

    let (body, writer) = tar_stream(ctx);
    let progress = docker.build_image(options, None, Some(bollard::body_try_stream(body)));
    let Progress { mut tail, step, failure, quiet } = read_progress(progress, opts.silence, name).await;
    if quiet {
        return Err(BuildError::Quiet {
            component: name.to_owned(),
            image: image.clone(),
            step,
            output: Vec::from(tail.split_off(tail.len().saturating_sub(OUTPUT_TAIL))).join("\n"),
            waited: opts.silence,
        });
    }
    // An unreadable context file is the cause to report, not the broken
    // stream the engine saw because of it.
    writer
        .await
        .map_err(|source| BuildError::Worker { component: name.to_owned(), source })?
        .map_err(|source| BuildError::Context { component: name.to_owned(), source })?;
    if let Some(source) = failure {
        return Err(BuildError::Failed {
            component: name.to_owned(),
            image: image.clone(),
            step,
            output: Vec::from(tail.split_off(tail.len().saturating_sub(OUTPUT_TAIL))).join("\n"),
            source,
        });
    }
    Ok(tail)
}

/// What a build's progress said: its last lines, the last step begun,
/// and how it ended.
struct Progress {
    tail: VecDeque<String>,
    step: Option<String>,
    failure: Option<bollard::errors::Error>,
    /// Nothing came for `silence`.
    quiet: bool,
}

/// Reads a build's progress until it ends, fails, or is quiet for `silence`.
async fn read_progress(
    mut progress: impl futures::Stream<Item = Result<bollard::models::BuildInfo, bollard::errors::Error>> + Unpin,
    silence: Duration,
    name: &str,
) -> Progress {
    let mut read = Progress { tail: VecDeque::with_capacity(REPORT_TAIL), step: None, failure: None, quiet: false };
    loop {
        let Ok(next) = tokio::time::timeout(silence, progress.next()).await else {
            read.quiet = true;
            return read;
        };
        match next {
            None => return read,
            Some(Err(e)) => {
                read.failure = Some(e);
                return read;
            }
            Some(Ok(info)) => {
                for line in info.stream.iter().chain(info.status.iter()).flat_map(|s| s.lines()) {
                    let line = line.trim_end();
                    if line.is_empty() {
                        continue;
                    }
                    tracing::debug!(target: "e2e_infra::build", component = name, "{line}");
                    if is_step(line) {
                        read.step = Some(line.trim().to_owned());
                    }
                    if read.tail.len() == REPORT_TAIL {
                        read.tail.pop_front();
                    }
                    read.tail.push_back(line.to_owned());
                }
            }
        }
    }
}

/// Tags the image just built as the cache reference `cache`; its id.
async fn tag_as_cache(docker: &Docker, component: &PlannedComponent, cache: &str) -> Result<String, BuildError> {
    let tag = component.image.to_string();
    let inspecting = docker.inspect_image(&tag);
    let inspected = engine::within(docker, ENGINE_CALL_TIMEOUT, "inspecting the built image", inspecting)
        .await
        .map_err(silent(component))?
        .map_err(engine_error(component, "inspecting the built image"))?;
    let image_id = inspected.id.unwrap_or_default();
    // Tagged after the build, by id: only this image, never one of the
    // build's intermediates, can then be found as the cache.
    let cache_tag = cache.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
    let repo = component.image.name();
    let tagging = docker.tag_image(&image_id, Some(TagImageOptionsBuilder::new().repo(&repo).tag(cache_tag).build()));
    engine::within(docker, ENGINE_CALL_TIMEOUT, "tagging the cache reference", tagging)
        .await
        .map_err(silent(component))?
        .map_err(engine_error(component, "tagging the cache reference"))?;
    ServedIds::of(docker, cache).record(&image_id);
    Ok(image_id)
}

/// The folder, beside the state root, of the image id each cache reference
/// named when this machine built or first reused it.
const SERVED_IDS_DIR: &str = "cache-ids";

/// The image id a cache reference of one engine is known to name. Labels
/// prove little: an image built `FROM` a cached one inherits them, and any
/// such image can be tagged onto the cache reference by hand; the id it had
/// when it was built cannot be. A record that cannot be read or written
/// costs the check, never an error.
struct ServedIds {
    path: Option<std::path::PathBuf>,
}

impl ServedIds {
    fn of(docker: &Docker, cache: &str) -> Self {
        let key = format!("{}\n{cache}", engine::address(docker));
        let path = crate::state::cache_dir(SERVED_IDS_DIR)
            .ok()
            .map(|dir| dir.join(hex::encode(&sha2::Sha256::digest(key.as_bytes())[..16])));
        Self { path }
    }

    /// Whether `id` may be served: it is the recorded one, or nothing is
    /// recorded yet (another machine or state root built it), and then it
    /// is recorded.
    fn confirms(&self, id: &str) -> bool {
        let recorded = self.path.as_ref().and_then(|p| std::fs::read_to_string(p).ok());
        match recorded.as_deref().map(str::trim) {
            Some(recorded) if recorded != id => {
                tracing::warn!(
                    recorded,
                    found = id,
                    "the cache reference names another image than the one built from these inputs; building instead"
                );
                false
            }
            Some(_) => true,
            None => {
                self.record(id);
                true
            }
        }
    }

    fn record(&self, id: &str) {
        let Some(path) = &self.path else { return };
        if let Err(error) = std::fs::write(path, id) {
            tracing::debug!(path = %path.display(), %error, "recording the cache reference's image id failed");
        }
    }
}

/// The id of the image behind the cache reference `cache`, if it exists and
/// its labels say it was built for `component` from the inputs `digest`.
/// Nothing is ever found by its labels alone: labels are inherited by every
/// image built `FROM` this one and, on Podman, by intermediate images.
/// An image found under its cache reference.
struct Cached {
    id: String,
    /// Every reference it has.
    references: Vec<String>,
}

async fn find_cached(
    docker: &Docker,
    cache: &str,
    component: &str,
    digest: &str,
) -> Result<Option<Cached>, bollard::errors::Error> {
    let image = match docker.inspect_image(cache).await {
        Ok(image) => image,
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let image_labels = image.config.and_then(|c| c.labels).unwrap_or_default();
    let matches = image_labels.get(labels::BUILT_FOR_COMPONENT).map(String::as_str) == Some(component)
        && image_labels.get(labels::INPUT_DIGEST).map(String::as_str) == Some(digest);
    if !matches {
        // Someone re-tagged the reference: build, which moves it back.
        tracing::warn!(component, cache, "the cache reference names an image with other labels; building instead");
        return Ok(None);
    }
    Ok(image.id.map(|id| Cached { id, references: image.repo_tags.unwrap_or_default() }))
}

/// Docker prints `Step 2/3 : RUN ...`, Podman `STEP 2/3: RUN ...`.
fn is_step(line: &str) -> bool {
    let line = line.trim_start();
    let Some(rest) = line.get(..5).filter(|p| p.eq_ignore_ascii_case("step ")).map(|_| &line[5..]) else {
        return false;
    };
    let counts = rest.split([' ', ':']).next().unwrap_or_default();
    counts.split_once('/').is_some_and(|(done, total)| {
        !done.is_empty() && !total.is_empty() && done.chars().chain(total.chars()).all(|c| c.is_ascii_digit())
    })
}

/// Writes the context tar on a blocking thread and streams it in chunks; the
/// handle reports the writer's own error.
fn tar_stream(
    ctx: Context,
) -> (
    impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static,
    tokio::task::JoinHandle<Result<(), ContextError>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let writer = tokio::task::spawn_blocking(move || {
        let written = ctx.write_tar(ChunkWriter { tx: tx.clone(), buf: Vec::new() });
        if let Err(e) = &written {
            // Ending the body with an error, not quietly, keeps the engine
            // from building a truncated context.
            let _ = tx.blocking_send(Err(std::io::Error::other(error_chain(e))));
        }
        written
    });
    let body = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|chunk| (chunk, rx)) });
    (body, writer)
}

const CHUNK: usize = 256 * 1024;

/// Hands the tar to the request body in chunks; a closed request (the build
/// was cancelled) ends the writer with an error.
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
    buf: Vec<u8>,
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = bytes::Bytes::from(std::mem::take(&mut self.buf));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the engine stopped reading the build context")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{is_step, lost_a_cached_step, BuildError, ImageRef};

    #[test]
    fn recognises_docker_and_podman_steps() {
        assert!(is_step("Step 2/3 : RUN /bin/busybox false"));
        assert!(is_step("STEP 2/3: RUN /bin/busybox false"));
        assert!(!is_step("Stepping 2/3"));
        assert!(!is_step(" ---> Running in 1234"));
        assert!(!is_step("step a/b: x"));
    }

    fn failed(message: &str) -> BuildError {
        BuildError::Failed {
            component: "app".to_owned(),
            image: ImageRef::borrowed("localhost/app:t").expect("ref"),
            step: None,
            output: String::new(),
            source: bollard::errors::Error::DockerStreamError { error: message.to_owned() },
        }
    }

    /// The two ways Docker 29's containerd store reports a cached parent
    /// that another clean-up removed during the build; an ordinary failed
    /// step is not one.
    #[test]
    fn a_removed_cached_parent_is_told_from_a_failed_step() {
        let id = "sha256:b136163cf8cd0b69ac9a4c89d476a6cfbf0ac8c07f45d4f543365ff714ba57e1";
        assert!(lost_a_cached_step(&failed(&format!("failed to get destination image \"{id}\": No such image: {id}"))));
        assert!(lost_a_cached_step(&failed(&format!("unable to find image \"{id}\""))));
        assert!(lost_a_cached_step(&failed(&format!("No such image: {id}"))));
        assert!(!lost_a_cached_step(&failed("The command '/bin/sh -c false' returned a non-zero code: 1")));
        assert!(!lost_a_cached_step(&failed("pull access denied for nosuch, repository does not exist")));
    }
}

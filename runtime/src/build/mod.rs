//! Building the images of a plan, each tagged with the plan's reference.
//!
//! The context goes to the engine as a tar stream (after `.dockerignore`);
//! a Dockerfile outside the context is added under a generated name. Every
//! image carries the run's labels and the digest of its inputs, and an image
//! whose inputs were already built is tagged instead of rebuilt.

mod context;
mod dockerignore;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bollard::query_parameters::{BuildImageOptionsBuilder, ListImagesOptionsBuilder, TagImageOptionsBuilder};
use bollard::Docker;
use futures::{StreamExt, TryStreamExt};

pub use context::ContextError;
pub use dockerignore::InvalidPattern;
use context::Context;

use crate::catalog::{BuildSpec, Source};
use crate::labels;
use crate::plan::{ImageRef, Plan, PlannedComponent};

/// How many lines of build output an error carries.
const OUTPUT_TAIL: usize = 20;

/// How [`build_all`] builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    /// Build even when an image with the same inputs exists, bypassing the
    /// engine's layer cache too.
    pub force: bool,
    /// How many images build at once (at least one).
    pub concurrency: usize,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self { force: false, concurrency: 2 }
    }
}

/// One built (or reused) image.
#[derive(Debug, Clone)]
pub struct BuildOutcome {
    /// The component.
    pub component: String,
    /// The reference it is tagged with: the plan's.
    pub image: ImageRef,
    /// The engine's image id.
    pub image_id: String,
    /// Whether an image with the same inputs was reused instead of built.
    pub cached: bool,
    /// Time taken, including reading the context.
    pub elapsed: Duration,
}

/// A build error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The build context could not be read.
    #[error("reading the build context of `{component}` failed: {source}")]
    Context {
        /// The component.
        component: String,
        /// What went wrong.
        source: ContextError,
    },
    /// The engine rejected or failed the build.
    #[error("building `{component}` as `{image}` failed{}: {source}\nlast build output:\n{output}", step.as_ref().map(|s| format!(" at `{s}`")).unwrap_or_default())]
    Failed {
        /// The component.
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
    #[error("{operation} for `{component}` (`{image}`) failed: {source}")]
    Engine {
        /// The component.
        component: String,
        /// The image.
        image: String,
        /// What was asked of the engine.
        operation: &'static str,
        /// The engine's error.
        source: bollard::errors::Error,
    },
    /// A borrowed image is not in the engine.
    #[error("component `{component}` borrows image `{image}`, which this engine does not have; it is never built here and cannot be pulled here: load or build it into the engine first (e.g. `docker load`, `docker build -t {image}`)")]
    BorrowedMissing {
        /// The component.
        component: String,
        /// The image.
        image: ImageRef,
    },
    /// A worker thread died.
    #[error("reading the build context of `{component}` stopped: {source}")]
    Worker {
        /// The component.
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
    let mut jobs = Vec::new();
    for component in plan.components() {
        match &component.spec.source {
            Source::Build(spec) => jobs.push(build_one(docker, plan, component, spec, opts)),
            Source::Borrowed(image) => ensure_present(docker, &component.name, image).await?,
        }
    }
    let mut outcomes: Vec<BuildOutcome> = futures::stream::iter(jobs)
        .buffer_unordered(opts.concurrency.max(1))
        .try_collect()
        .await?;
    let position = |name: &str| plan.components().iter().position(|c| c.name == name);
    outcomes.sort_by_key(|o| position(&o.component));
    Ok(outcomes)
}

async fn ensure_present(docker: &Docker, component: &str, image: &ImageRef) -> Result<(), BuildError> {
    match docker.inspect_image(&image.to_string()).await {
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
) -> Result<BuildOutcome, BuildError> {
    let started = Instant::now();
    let name = component.name.as_str();
    let image = &component.image;
    let engine_error = |operation, source| BuildError::Engine {
        component: name.to_owned(),
        image: image.to_string(),
        operation,
        source,
    };
    let worker_error = |source| BuildError::Worker { component: name.to_owned(), source };
    let scan_spec = spec.clone();
    let scan_name = name.to_owned();
    let ctx = tokio::task::spawn_blocking(move || Context::scan(&scan_name, &scan_spec))
        .await
        .map_err(worker_error)?
        .map_err(|source| BuildError::Context { component: name.to_owned(), source })?;

    if !opts.force {
        if let Some(id) = find_by_digest(docker, &ctx.digest).await.map_err(|e| engine_error("looking for an image with the same inputs", e))? {
            docker
                .tag_image(&id, Some(TagImageOptionsBuilder::new().repo(&image.name()).tag(image.tag().unwrap_or("latest")).build()))
                .await
                .map_err(|e| engine_error("tagging the image built earlier from the same inputs", e))?;
            tracing::info!(component = name, %image, image_id = %id, "inputs unchanged: reused the image built earlier");
            return Ok(BuildOutcome { component: name.to_owned(), image: image.clone(), image_id: id, cached: true, elapsed: started.elapsed() });
        }
    }

    let mut image_labels = labels::for_component(plan, name);
    image_labels.insert(labels::INPUT_DIGEST.to_owned(), ctx.digest.clone());
    let build_args: HashMap<&str, &str> = spec.args.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let tag = image.to_string();
    let options = BuildImageOptionsBuilder::new()
        .dockerfile(&ctx.dockerfile_name)
        .t(&tag)
        .rm(true)
        .forcerm(true)
        .nocache(opts.force)
        .buildargs(&build_args)
        .labels(&image_labels)
        .target(spec.target.as_deref().unwrap_or_default())
        .build();

    let (body, writer) = tar_stream(ctx);
    let mut progress = docker.build_image(options, None, Some(bollard::body_try_stream(body)));
    let mut tail = VecDeque::with_capacity(OUTPUT_TAIL);
    let mut step = None;
    let mut failure = None;
    while let Some(item) = progress.next().await {
        match item {
            Ok(info) => {
                for line in info.stream.iter().chain(info.status.iter()).flat_map(|s| s.lines()) {
                    let line = line.trim_end();
                    if line.is_empty() {
                        continue;
                    }
                    tracing::debug!(target: "e2e_infra::build", component = name, "{line}");
                    if is_step(line) {
                        step = Some(line.trim().to_owned());
                    }
                    if tail.len() == OUTPUT_TAIL {
                        tail.pop_front();
                    }
                    tail.push_back(line.to_owned());
                }
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    drop(progress);
    // An unreadable context file is the cause to report, not the broken
    // stream the engine saw because of it.
    writer
        .await
        .map_err(worker_error)?
        .map_err(|source| BuildError::Context { component: name.to_owned(), source })?;
    if let Some(source) = failure {
        return Err(BuildError::Failed {
            component: name.to_owned(),
            image: image.clone(),
            step,
            output: Vec::from(tail).join("\n"),
            source,
        });
    }
    let inspected = docker.inspect_image(&tag).await.map_err(|e| engine_error("inspecting the built image", e))?;
    let image_id = inspected.id.unwrap_or_default();
    tracing::info!(component = name, %image, %image_id, elapsed = ?started.elapsed(), "built");
    Ok(BuildOutcome { component: name.to_owned(), image: image.clone(), image_id, cached: false, elapsed: started.elapsed() })
}

/// The id of the newest image labelled with `digest`, if any.
async fn find_by_digest(docker: &Docker, digest: &str) -> Result<Option<String>, bollard::errors::Error> {
    // One label per filter: Podman 4 answers nothing when given two.
    let filter = HashMap::from([("label", vec![format!("{}={}", labels::INPUT_DIGEST, digest)])]);
    let images = docker.list_images(Some(ListImagesOptionsBuilder::new().filters(&filter).build())).await?;
    Ok(images
        .into_iter()
        .filter(|i| i.labels.get(labels::MANAGED_BY).map(String::as_str) == Some(labels::MANAGED_BY_VALUE))
        .max_by_key(|i| i.created)
        .map(|i| i.id))
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
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
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
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the engine stopped reading the build context"))
    }
}

#[cfg(test)]
mod tests {
    use super::is_step;

    #[test]
    fn recognises_docker_and_podman_steps() {
        assert!(is_step("Step 2/3 : RUN /bin/busybox false"));
        assert!(is_step("STEP 2/3: RUN /bin/busybox false"));
        assert!(!is_step("Stepping 2/3"));
        assert!(!is_step(" ---> Running in 1234"));
        assert!(!is_step("step a/b: x"));
    }
}

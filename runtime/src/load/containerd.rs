//! Loading built images into a node's containerd, the store the kubelet
//! runs containers from (namespace `k8s.io`).
//!
//! A node is reached one of two ways ([`Node`]): a Kind node is a container
//! of the engine running containerd, reached through the engine's exec API,
//! or, when the engine runs on this machine and this user may open the
//! node's containerd socket through `/proc/<pid>/root`, with `ctr -a` on
//! that socket, which spares the exec's round trips through the engine
//! ([`route`]; `E2E_INFRA_KIND_EXEC=1` keeps to the exec); a single-node
//! cluster on this machine (k3s, microk8s, kubeadm, a local
//! kubelet) exposes containerd as a socket, reached by running `ctr -a
//! <socket>` with an argument vector. Either way an image is read once from
//! the engine and streamed, chunk by chunk, into `ctr images import` on
//! every node that lacks it: no temporary tar file, and memory bounded by a
//! few chunks per node whatever the image size. The image is read from the
//! engine's own files when the engine is local and uses overlay2 (see
//! [`store`](super::store)), else from its export; [`NodeOutcome::source`]
//! says which.
//!
//! Each node gets only the layers its content store lacks (see
//! [`archive`] and [`store`](super::store)): a rebuild that
//! changed the top layer sends that layer, the config and a manifest, not
//! the layers below. A node is
//! skipped altogether when its containerd already holds the plan's reference
//! with the engine's image id recorded in the [`IMAGE_ID_LABEL`] label, which
//! this module sets after every import.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bollard::Docker;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::archive::{self, ArchiveError, LayerMap, Target, LAYERS_LABEL};
use super::content::{ContentImage, ContentStore, EngineStore};
use super::store::{StoreError, StoredImage};
use crate::engine;
use crate::error::error_chain;
use crate::plan::{ImageRef, Tag};

/// The containerd image label recording the engine's image id of an import.
pub const IMAGE_ID_LABEL: &str = "io.e2e-infra.image-id";

/// The containerd namespace the kubelet uses.
const NAMESPACE_ARG: &str = "--namespace=k8s.io";
/// Chunks of an export waiting for one node: bounds memory per node.
const CHUNKS_IN_FLIGHT: usize = 4;
/// What is kept of a command's standard error for messages.
const STDERR_KEPT: usize = 16 * 1024;
/// What is kept of a command's standard output; listings are far smaller.
const STDOUT_KEPT: usize = 4 * 1024 * 1024;
/// How long one `ctr` call that streams nothing (a listing, a tag, a label) may take.
const CTR_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// An import may take this long, plus the time to stream the image at
/// [`IMPORT_SLOWEST_RATE`].
const IMPORT_TIMEOUT: Duration = Duration::from_secs(120);
/// The slowest import, in bytes per second, that is not taken for a hang.
const IMPORT_SLOWEST_RATE: u64 = 4 * 1024 * 1024;

/// An image to load: its plan reference and the engine's id of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadImage {
    /// The reference from the plan; nodes get the image under exactly this one.
    pub image: ImageRef,
    /// The engine's image id (`sha256:...`) the build produced.
    pub image_id: String,
}

/// Set to `1`, Kind nodes are reached only through the engine's exec API.
pub const KIND_EXEC_ENV: &str = "E2E_INFRA_KIND_EXEC";

/// Where a Kind node's containerd listens inside its container.
const NODE_SOCKET: &str = "run/containerd/containerd.sock";

/// How this process reaches a node's containerd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `ctr -a <socket>` run here: a socket node, or a Kind node whose
    /// socket this process can open through `/proc/<pid>/root`.
    Socket(PathBuf),
    /// `ctr` run in the node container through the engine's exec API.
    Exec,
}

/// How this process reaches `node`. A Kind node's own socket is used only
/// when it is certainly that node's: the engine is reached through a local
/// socket, `/proc/<pid>/root` of the container's process is the container's
/// root as the engine reports it, `ctr` is installed here, and the socket
/// accepts a connection from this user. Anything else is the exec, as is
/// everything when [`KIND_EXEC_ENV`] is `1`.
///
/// The root is proven the container's by device and inode, so that this
/// process sees the engine's processes and mounts: the root itself, when
/// the engine reports it (`GraphDriver.Data.MergedDir`, the overlay2
/// driver); else the container's `/etc/hostname`, which the engine
/// bind-mounts from the file it reports (`HostnamePath`), as every engine
/// does whatever its store (the containerd image store reports no
/// `GraphDriver` data).
pub async fn route(docker: &Docker, node: &Node) -> Route {
    match node {
        Node::Socket { path } => Route::Socket(path.clone()),
        Node::Container { name, .. } => node_socket(docker, name).await.map_or(Route::Exec, Route::Socket),
    }
}

async fn node_socket(docker: &Docker, container: &str) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;

    if std::env::var(KIND_EXEC_ENV).is_ok_and(|v| v == "1")
        || !crate::engine::is_local_socket(docker)
        || !ctr_installed()
    {
        return None;
    }
    let inspected = docker.inspect_container(container, None).await.ok()?;
    let pid = inspected.state?.pid.filter(|pid| *pid > 0)?;
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let merged = inspected.graph_driver.and_then(|mut g| g.data.remove("MergedDir"));
    let (seen, expected) = match merged {
        Some(merged) => (root.clone(), PathBuf::from(merged)),
        None => (root.join("etc/hostname"), PathBuf::from(inspected.hostname_path.filter(|p| !p.is_empty())?)),
    };
    let (seen, expected) = (std::fs::metadata(&seen).ok()?, std::fs::metadata(&expected).ok()?);
    if (seen.dev(), seen.ino()) != (expected.dev(), expected.ino()) {
        return None;
    }
    let socket = root.join(NODE_SOCKET);
    tokio::net::UnixStream::connect(&socket).await.ok()?;
    Some(socket)
}

/// Whether a `ctr` executable is on this process's `PATH`.
fn ctr_installed() -> bool {
    static FOUND: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FOUND.get_or_init(|| {
        std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("ctr").is_file()))
    })
}

/// A node and the way this process reaches it, found once per operation
/// on the node rather than before every command.
struct Reached<'a> {
    docker: &'a Docker,
    node: &'a Node,
    route: Route,
}

impl<'a> Reached<'a> {
    async fn new(docker: &'a Docker, node: &'a Node) -> Self {
        Self { docker, node, route: route(docker, node).await }
    }
}

/// The start of the tag a run's image keeps on a node after the run:
/// `e2e-infra-cache-<12 hex digits of the engine's image id>`. The content
/// stays for the next run (tagged, not streamed), no reference of the run
/// does. The tag names the image it holds, so it never moves: a teardown
/// creates it or finds it there, and never takes it from under a load that
/// tags from it.
pub const CACHE_TAG: &str = "e2e-infra-cache";

/// The cache reference on a node of image `image_id` of `repository`.
fn cache_reference(repository: &str, image_id: &str) -> String {
    let hex = image_id.trim_start_matches("sha256:");
    format!("{repository}:{CACHE_TAG}-{}", &hex[..hex.len().min(12)])
}

/// Whether `reference` is a cache reference ([`CACHE_TAG`]) of `repository`.
fn is_cache_of(reference: &str, repository: &str) -> bool {
    reference
        .strip_prefix(repository)
        .and_then(|rest| rest.strip_prefix(':'))
        .is_some_and(|tag| tag == CACHE_TAG || tag.strip_prefix(CACHE_TAG).is_some_and(|t| t.starts_with('-')))
}

/// A node's containerd, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "via", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Node {
    /// A node container of a Kind cluster, reached through the engine's exec API.
    Container {
        /// The container name (`<cluster>-control-plane`, `<cluster>-worker`).
        name: String,
        /// Kind's role label (`control-plane`, `worker`).
        role: String,
    },
    /// A containerd socket on this machine, reached with `ctr -a <socket>`.
    Socket {
        /// The socket.
        path: PathBuf,
    },
}

impl Node {
    /// The container name, or the socket path.
    pub fn name(&self) -> String {
        match self {
            Self::Container { name, .. } => name.clone(),
            Self::Socket { path } => path.display().to_string(),
        }
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Container { name, .. } => write!(f, "node `{name}`"),
            Self::Socket { path } => write!(f, "containerd at `{}`", path.display()),
        }
    }
}

/// What happened to one image on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Streamed from the engine and imported.
    Loaded,
    /// The node already held this image under the plan's reference.
    Skipped,
    /// The node held this very image (same id) under another reference, from
    /// an earlier run: it was tagged with the plan's reference, not streamed.
    Tagged,
}

/// Where a load read an image it streamed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// The engine's own files (a local engine with the overlay2 driver, see
    /// [`store`](super::store)): nothing to wait for before the first byte.
    Store,
    /// The content store of the engine's containerd (a local engine with
    /// the containerd image store, see [`content`](super::content)): the
    /// engine's blobs as they are, nothing to wait for.
    ContentStore,
    /// The engine's export (`docker save`), which the engine writes whole
    /// before sending any of it.
    Export {
        /// Why the store was not read.
        reason: String,
    },
}

/// The outcome for one image on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeOutcome {
    /// The node's container name, or its socket.
    pub node: String,
    /// The image.
    pub image: ImageRef,
    /// Loaded or skipped.
    pub action: Action,
    /// Time spent: the import for a loaded image, the check for a skipped one.
    pub elapsed: Duration,
    /// Bytes streamed into the node's import: the layers it lacked, the
    /// config and the manifest; 0 when skipped or tagged.
    pub sent: u64,
    /// Where the image was read from; `None` when skipped or tagged.
    pub source: Option<Source>,
}

impl NodeOutcome {
    /// The outcome of an image that cost its node no bytes: skipped or tagged.
    fn unsent(node: &Node, image: &LoadImage, action: Action, elapsed: Duration) -> Self {
        Self { node: node.name(), image: image.image.clone(), action, elapsed, sent: 0, source: None }
    }
}

/// What [`load`] did, per node and image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// The nodes, in the order given.
    pub nodes: Vec<Node>,
    /// One outcome per node and image.
    pub outcomes: Vec<NodeOutcome>,
}

impl LoadReport {
    /// The outcomes with this action.
    pub fn with_action(&self, action: Action) -> impl Iterator<Item = &NodeOutcome> {
        self.outcomes.iter().filter(move |o| o.action == action)
    }
}

/// A failure to load images into a node's containerd.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContainerdError {
    /// The socket does not exist.
    #[error("containerd socket `{}` does not exist; start the node's containerd, or point {} at the socket it listens on", path.display(), crate::backend::CONTAINERD_SOCKET_ENV)]
    NoSocket {
        /// The socket.
        path: PathBuf,
    },
    /// The socket exists but cannot be connected to.
    #[error("cannot connect to containerd socket `{}`; permission denied means this user may not write to it (run as its owner, or grant the socket's group)", path.display())]
    Socket {
        /// The socket.
        path: PathBuf,
        /// The connect error.
        source: std::io::Error,
    },
    /// `ctr` could not be started.
    #[error("starting `ctr` for containerd at `{}` failed; install containerd's client (Debian: apt-get install containerd)", path.display())]
    Ctr {
        /// The socket.
        path: PathBuf,
        /// The spawn error.
        source: std::io::Error,
    },
    /// The engine could not inspect an image to load.
    #[error("inspecting `{image}` on the engine before loading it failed")]
    InspectImage {
        /// The image.
        image: ImageRef,
        /// The engine's error.
        source: bollard::errors::Error,
    },
    /// The engine's image under the reference is not the one built.
    #[error("`{image}` on the engine is image {found}, not {expected} as built; was it retagged during the run?")]
    ImageChanged {
        /// The image.
        image: ImageRef,
        /// The id given to [`load`].
        expected: String,
        /// The id the engine has.
        found: String,
    },
    /// Reading an image from the engine's store failed after its layers
    /// had started streaming.
    #[error("reading `{image}` from the engine's store failed")]
    Store {
        /// The image.
        image: ImageRef,
        /// What went wrong.
        source: StoreError,
    },
    /// Exporting an image from the engine, or reading the export, failed.
    #[error("exporting `{image}` from the engine failed")]
    Export {
        /// The image.
        image: ImageRef,
        /// What went wrong.
        source: ArchiveError,
    },
    /// A command in a node did not finish in time.
    #[error("`{command}` in {node} did not finish within {}; is the node's containerd answering?", humantime::format_duration(*limit))]
    Timeout {
        /// The node.
        node: String,
        /// The command line.
        command: String,
        /// The time it was given.
        limit: Duration,
    },
    /// The engine could not run a command in a node.
    #[error("running `{command}` in {node} failed")]
    Exec {
        /// The node.
        node: String,
        /// The command line.
        command: String,
        /// The engine's error.
        source: bollard::errors::Error,
    },
    /// Feeding a command's standard input failed though the command succeeded.
    #[error("streaming into `{command}` in {node} failed")]
    Stdin {
        /// The node.
        node: String,
        /// The command line.
        command: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A command in a node exited non-zero.
    #[error("`{command}` in {node} failed with exit code {}: {}", exit_code.map_or_else(|| "unknown".to_owned(), |c| c.to_string()), stderr.trim())]
    CommandFailed {
        /// The node.
        node: String,
        /// The command line.
        command: String,
        /// The exit code, when the engine reported one.
        exit_code: Option<i64>,
        /// The end of its standard error.
        stderr: String,
    },
    /// After loading, a node's reference points at another manifest than
    /// the one it was given: another load took the reference meanwhile.
    #[error("{node} lists `{image}` with manifest {found} after loading, not {expected} as sent; did another load of the same reference run at the same time?")]
    NotTheImage {
        /// The node.
        node: String,
        /// The image.
        image: ImageRef,
        /// The digest of the manifest sent.
        expected: String,
        /// The digest the node lists.
        found: String,
    },
    /// After loading, a node does not list the reference.
    #[error("{node} does not list `{image}` after loading; it has: {}", if found.is_empty() { "no images".to_owned() } else { found.join(", ") })]
    Missing {
        /// The node.
        node: String,
        /// The image.
        image: ImageRef,
        /// The references the node lists.
        found: Vec<String>,
    },
}

/// Loads `images` into every node of `nodes`.
///
/// First every image is tagged on every node from the cache reference an
/// earlier run's teardown left ([`CACHE_TAG`], named by the engine id),
/// all at once; for the next run of an unchanged build that is the whole
/// load, one round of tags and no listing. For the rest: nodes that
/// already hold an image under its plan reference (same image id) are
/// skipped; nodes that hold it under another reference get the plan's
/// reference as a tag; the others get it streamed from the engine, all
/// nodes at once, each node only the layers its content store lacks.
/// Afterwards every node that was streamed an image must list every
/// reference; on the others the listing and the tags' exit codes already
/// prove it. Only the images some node lacks are inspected on the
/// engine: a node's image carries the engine id of its verified load in
/// [`IMAGE_ID_LABEL`], which is what proves it is the build's.
///
/// # Errors
/// [`ContainerdError::NoSocket`] or [`ContainerdError::Socket`] for a
/// socket that is missing or not writable; [`ContainerdError::ImageChanged`]
/// when the engine's image under the reference of an image to stream is
/// not the one built, found before any node is changed;
/// [`ContainerdError::Export`], [`ContainerdError::Exec`],
/// [`ContainerdError::CommandFailed`] (with the command's standard error)
/// when streaming or importing fails; [`ContainerdError::Timeout`] when a
/// command does not finish in time; [`ContainerdError::Missing`] when a
/// node does not list a reference afterwards.
///
/// # Example
/// ```no_run
/// # async fn example(plan: &e2e_infra::Plan, image_id: String) -> Result<(), Box<dyn std::error::Error>> {
/// use e2e_infra::load::containerd::{load, LoadImage, Node};
///
/// let docker = bollard::Docker::connect_with_local_defaults()?;
/// let image = plan.image("datastorage").ok_or("not planned")?.clone();
/// let node = Node::Socket { path: "/run/k3s/containerd/containerd.sock".into() };
/// let report = load(&docker, &[node], &[LoadImage { image, image_id }]).await?;
/// println!("{} node(s) loaded", report.outcomes.len());
/// # Ok(())
/// # }
/// ```
pub async fn load(docker: &Docker, nodes: &[Node], images: &[LoadImage]) -> Result<LoadReport, ContainerdError> {
    load_from(docker, nodes, images, ReadFrom::StoreIfLocal).await
}

/// Where [`load_from`] may read the images it streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ReadFrom {
    /// The engine's own files when the engine is local and uses overlay2,
    /// else its export: what [`load`] does.
    #[default]
    StoreIfLocal,
    /// The engine's export always (to compare the two, or to rule the
    /// store out).
    Export,
}

/// As [`load`], reading the images it streams from `from`.
///
/// # Errors
/// As [`load`].
///
/// # Example
/// ```no_run
/// # async fn example(docker: &bollard::Docker, nodes: &[e2e_infra::load::containerd::Node], images: &[e2e_infra::load::containerd::LoadImage]) -> Result<(), Box<dyn std::error::Error>> {
/// use e2e_infra::load::containerd::{load_from, ReadFrom};
///
/// let report = load_from(docker, nodes, images, ReadFrom::Export).await?;
/// assert!(report.outcomes.iter().all(|o| o.source.as_ref().is_none_or(|s| s.to_string() == "export")));
/// # Ok(())
/// # }
/// ```
pub async fn load_from(
    docker: &Docker,
    nodes: &[Node],
    images: &[LoadImage],
    from: ReadFrom,
) -> Result<LoadReport, ContainerdError> {
    let started = Instant::now();
    for node in nodes {
        check_reachable(node).await?;
    }
    let reached = reach(docker, nodes).await;
    let from_cache = tag_from_cache(&reached, images).await;
    tracing::debug!(elapsed = ?started.elapsed(), "tagged from cache references");
    let listings = list_unsettled(&reached, images, &from_cache).await?;
    tracing::debug!(elapsed = ?started.elapsed(), "nodes listed");
    let mut needs = Needs::of(nodes, images, &from_cache, &listings);
    // Only an image some node lacks is read from the engine, so only such
    // an image is checked there, and before any node is changed. An image
    // the nodes hold (or that is tagged on them) is the build's by the
    // node's own label, which only a verified load sets.
    let mut engine_images: Vec<Option<EngineImage>> = images.iter().map(|_| None).collect();
    check_engine_images(docker, images, &needs.streams, &mut engine_images).await?;
    tracing::debug!(elapsed = ?started.elapsed(), "engine images checked");
    needs.tag(images, &reached, nodes).await?;
    tracing::debug!(elapsed = ?started.elapsed(), "tagged");
    if needs.streams.iter().all(Vec::is_empty) {
        return Ok(LoadReport { nodes: nodes.to_vec(), outcomes: needs.outcomes });
    }
    // An image whose tag found it gone meanwhile is streamed: checked now.
    check_engine_images(docker, images, &needs.streams, &mut engine_images).await?;
    let mut streaming = Streaming::new(docker, from, &reached).await?;
    for (i, targets) in std::mem::take(&mut needs.streams).into_iter().enumerate() {
        if let Some(engine_image) = engine_images[i].as_ref().filter(|_| !targets.is_empty()) {
            needs.outcomes.extend(streaming.stream(i, &images[i], engine_image, targets).await?);
        }
    }
    // Only a node that had an image streamed is listed again. On the others
    // the first listing showed every image skipped, with its id, and the
    // reference of every image tagged; `ctr images tag` exiting 0 made the
    // new reference, with the target and labels of that one.
    let labels = &streaming.labels;
    futures::future::try_join_all(reached.iter().enumerate().filter_map(|(n, node)| {
        let to_label: Vec<(&LoadImage, &[String], &str)> = images
            .iter()
            .enumerate()
            .filter_map(|(i, wanted)| labels.get(&(n, i)).map(|(l, m)| (wanted, l.as_slice(), m.as_str())))
            .collect();
        (!to_label.is_empty()).then(|| label_and_verify(node, images, to_label))
    }))
    .await?;
    tracing::debug!(elapsed = ?started.elapsed(), "streamed, labelled and verified");
    Ok(LoadReport { nodes: nodes.to_vec(), outcomes: needs.outcomes })
}

/// Finds how to reach every node, all nodes at once.
async fn reach<'a>(docker: &'a Docker, nodes: &'a [Node]) -> Vec<Reached<'a>> {
    futures::future::join_all(nodes.iter().map(|node| async move {
        let started = Instant::now();
        let reached = Reached::new(docker, node).await;
        tracing::debug!(%node, route = ?reached.route, elapsed = ?started.elapsed(), "route found");
        reached
    }))
    .await
}

/// Tags every image on every node from its cache reference, all at once,
/// before any listing: a run's teardown leaves each image on the node
/// under that reference ([`remove_tagged`]), so for the next run of an
/// unchanged build this is the whole load. The reference names the
/// engine id it holds and the tag copies its labels, as a tag from a
/// listed reference does. It never replaces a reference (no `--force`):
/// one already there is looked at by the listing. For each image, for
/// each node: how long its tag took, or `None` when it did not settle the
/// pair (no cache reference, the run's reference already there, or `ctr`
/// failing, which the listing then reports).
async fn tag_from_cache(reached: &[Reached<'_>], images: &[LoadImage]) -> Vec<Vec<Option<Duration>>> {
    futures::future::join_all(images.iter().map(|wanted| async move {
        if wanted.image.tag().is_none() || wanted.image.digest().is_some() {
            return vec![None; reached.len()];
        }
        let cache = cache_reference(&wanted.image.name(), &wanted.image_id);
        let reference = wanted.image.to_string();
        futures::future::join_all(reached.iter().map(|node| async {
            let started = Instant::now();
            let tagged = ctr(node, &["images", "tag", &cache, &reference]).await;
            tagged.is_ok().then(|| started.elapsed())
        }))
        .await
    }))
    .await
}

/// Lists, all nodes at once, the images of each node that matter to the
/// images [`tag_from_cache`] did not settle there ([`list_wanted`]); a
/// node with none is not listed. For each node, its listing and the time
/// it took.
async fn list_unsettled(
    reached: &[Reached<'_>],
    images: &[LoadImage],
    settled: &[Vec<Option<Duration>>],
) -> Result<Vec<(Vec<Listed>, Duration)>, ContainerdError> {
    futures::future::try_join_all(reached.iter().enumerate().map(|(n, node)| async move {
        let unsettled: Vec<LoadImage> =
            images.iter().zip(settled).filter(|(_, by_node)| by_node[n].is_none()).map(|(w, _)| w.clone()).collect();
        if unsettled.is_empty() {
            return Ok((Vec::new(), Duration::ZERO));
        }
        let started = Instant::now();
        let rows = list_wanted(node, &unsettled).await?;
        tracing::debug!(node = %node.node, elapsed = ?started.elapsed(), images = rows.len(), "node listed");
        Ok::<_, ContainerdError>((rows, started.elapsed()))
    }))
    .await
}

/// What each (image, node) needs, from the nodes' first listings: nothing
/// (its outcome is already known), a tag, or a stream.
struct Needs<'r> {
    /// The outcomes known so far.
    outcomes: Vec<NodeOutcome>,
    /// (image, node, the reference on the node to tag from, time the listing took).
    tags: Vec<(usize, usize, &'r str, Duration)>,
    /// For each image, the nodes it is streamed into.
    streams: Vec<Vec<usize>>,
}

impl<'r> Needs<'r> {
    fn of(
        nodes: &[Node],
        images: &'r [LoadImage],
        from_cache: &[Vec<Option<Duration>>],
        listings: &'r [(Vec<Listed>, Duration)],
    ) -> Self {
        let mut needs = Self { outcomes: Vec::new(), tags: Vec::new(), streams: vec![Vec::new(); images.len()] };
        for (i, wanted) in images.iter().enumerate() {
            for (n, (rows, checked_in)) in listings.iter().enumerate() {
                if let Some(elapsed) = from_cache[i][n] {
                    needs.outcomes.push(NodeOutcome::unsent(&nodes[n], wanted, Action::Tagged, elapsed));
                    continue;
                }
                match need(rows, wanted) {
                    Need::Nothing => {
                        needs.outcomes.push(NodeOutcome::unsent(&nodes[n], wanted, Action::Skipped, *checked_in));
                    }
                    Need::Tag(source) => needs.tags.push((i, n, source, *checked_in)),
                    Need::Stream => needs.streams[i].push(n),
                }
            }
        }
        needs
    }

    /// Runs every tag at once. `ctr images tag` copies the source's labels:
    /// the image id and layer map come along, so a tagged image needs no
    /// labelling. An image that left its node meanwhile is streamed.
    async fn tag(
        &mut self,
        images: &[LoadImage],
        reached: &[Reached<'_>],
        nodes: &[Node],
    ) -> Result<(), ContainerdError> {
        let tags = std::mem::take(&mut self.tags);
        let tagged =
            futures::future::try_join_all(tags.iter().map(|&(i, n, source, checked_in)| async move {
                let started = Instant::now();
                let done = tag_from(&reached[n], &images[i], source).await?;
                Ok::<_, ContainerdError>(done.then(|| {
                    NodeOutcome::unsent(&nodes[n], &images[i], Action::Tagged, checked_in + started.elapsed())
                }))
            }))
            .await?;
        for (outcome, (i, n, ..)) in tagged.into_iter().zip(tags) {
            match outcome {
                Some(outcome) => self.outcomes.push(outcome),
                None => self.streams[i].push(n),
            }
        }
        Ok(())
    }
}

/// Checks on the engine every image of `streams` not checked yet
/// (`checked`), all at once, and keeps what the engine says of it.
async fn check_engine_images(
    docker: &Docker,
    images: &[LoadImage],
    streams: &[Vec<usize>],
    checked: &mut [Option<EngineImage>],
) -> Result<(), ContainerdError> {
    let unchecked: Vec<usize> = (0..images.len()).filter(|&i| !streams[i].is_empty() && checked[i].is_none()).collect();
    let found =
        futures::future::try_join_all(unchecked.iter().map(|&i| check_engine_image(docker, &images[i]))).await?;
    for (i, engine_image) in unchecked.into_iter().zip(found) {
        checked[i] = Some(engine_image);
    }
    Ok(())
}

/// The state of the streams of one load: where images are read, what each
/// node holds, and the labels each streamed image gets once every image is
/// on every node.
struct Streaming<'a> {
    docker: &'a Docker,
    reached: &'a [Reached<'a>],
    /// The engine's own files, when they can be read (no export to wait
    /// for), else why not.
    store: Result<EngineStore, String>,
    /// Which layer entries of an export are which layers, from every node's labels.
    known: LayerMap,
    /// The short digests of each node's blobs, listed when it first needs a stream.
    held: HashMap<usize, BTreeSet<String>>,
    /// For each (node, image) streamed, its labels and the digest of the manifest it was given.
    labels: HashMap<(usize, usize), (Vec<String>, String)>,
}

impl<'a> Streaming<'a> {
    /// Opens the engine's store (unless `from` rules it out) and learns the
    /// layer maps of every image on the nodes, with one full listing of each.
    async fn new(docker: &'a Docker, from: ReadFrom, reached: &'a [Reached<'a>]) -> Result<Self, ContainerdError> {
        let store = async {
            match from {
                ReadFrom::StoreIfLocal => {
                    EngineStore::open(docker).await.map_err(|why| error_chain(&why).replace('\n', " "))
                }
                ReadFrom::Export => Err("the caller asked for the export".to_owned()),
            }
        };
        let listings = futures::future::try_join_all(reached.iter().map(list_images));
        let (store, listings) = tokio::join!(store, listings);
        let mut known = LayerMap::default();
        for row in listings?.iter().flatten() {
            if let Some(value) = row.labels.get(LAYERS_LABEL) {
                known.add_label(value);
            }
        }
        Ok(Self { docker, reached, store, known, held: HashMap::new(), labels: HashMap::new() })
    }

    /// Streams image `i` (`wanted`) into the nodes `targets`, each getting
    /// only the layers its content store lacks.
    async fn stream(
        &mut self,
        i: usize,
        wanted: &LoadImage,
        engine_image: &EngineImage,
        targets: Vec<usize>,
    ) -> Result<Vec<NodeOutcome>, ContainerdError> {
        let unlisted: Vec<usize> = targets.iter().copied().filter(|n| !self.held.contains_key(n)).collect();
        let reached = self.reached;
        let listed = futures::future::try_join_all(unlisted.iter().map(|&n| list_content(&reached[n]))).await?;
        self.held.extend(unlisted.into_iter().zip(listed));
        let (source, feed) = self.feed(wanted).await;
        let no_blobs = BTreeSet::new();
        let shares: Vec<(&Reached, BTreeMap<String, String>, BTreeSet<String>)> = targets
            .iter()
            .map(|n| {
                let blobs = self.held.get(n).unwrap_or(&no_blobs);
                let entries = match &feed {
                    Feed::Export => self.known.held_entries(&engine_image.layers, blobs),
                    Feed::Store(_) | Feed::Content(..) => BTreeMap::new(),
                };
                (&reached[*n], entries, blobs.clone())
            })
            .collect();
        let streamed = stream_into(self.docker, wanted, engine_image.size, shares, &feed).await?;
        // Only a docker-format export names its entries: keep what the nodes' labels knew of them.
        let layers = streamed.layers.unwrap_or_else(|| self.known.of_layers(&engine_image.layers));
        let label = layers.label();
        self.known.extend(&layers);
        let mut outcomes = Vec::new();
        for (n, (elapsed, sent)) in targets.into_iter().zip(streamed.nodes) {
            self.held.entry(n).or_default().extend(streamed.blobs.iter().map(|d| archive::short_digest(d)));
            self.labels.insert((n, i), (loaded_labels(wanted, label.clone()), streamed.manifest.clone()));
            outcomes.push(NodeOutcome {
                node: reached[n].node.name(),
                image: wanted.image.clone(),
                action: Action::Loaded,
                elapsed,
                sent,
                source: Some(source.clone()),
            });
        }
        Ok(outcomes)
    }

    /// Where `wanted` is read: the engine's store when it holds the image,
    /// else the export, with the reason.
    async fn feed(&self, wanted: &LoadImage) -> (Source, Feed<'_>) {
        let why = |e: StoreError| error_chain(&e).replace('\n', " ");
        let stored = match &self.store {
            Ok(EngineStore::Overlay2(store)) => {
                store.image(&wanted.image_id).await.map(|image| (Source::Store, Feed::Store(image))).map_err(why)
            }
            Ok(EngineStore::Content(store)) => store
                .image(&wanted.image_id)
                .await
                .map(|image| (Source::ContentStore, Feed::Content(store, image)))
                .map_err(why),
            Err(why) => Err(why.clone()),
        };
        stored.unwrap_or_else(|reason| {
            tracing::debug!(image = %wanted.image, %reason, "exporting the image instead of reading the engine's store");
            (Source::Export { reason }, Feed::Export)
        })
    }
}

/// The labels an image loaded on a node gets: its engine id and, when
/// known, its layer map.
fn loaded_labels(wanted: &LoadImage, layers: Option<String>) -> Vec<String> {
    std::iter::once(format!("{IMAGE_ID_LABEL}={}", wanted.image_id))
        .chain(layers.map(|value| format!("{LAYERS_LABEL}={value}")))
        .collect()
}

/// The references `node`'s containerd lists in the kubelet's namespace.
///
/// # Errors
/// [`ContainerdError::Exec`] or [`ContainerdError::CommandFailed`] when
/// `ctr` cannot list them (containerd not answering yet, for instance).
pub async fn node_images(docker: &Docker, node: &Node) -> Result<Vec<String>, ContainerdError> {
    Ok(list_images(&Reached::new(docker, node).await).await?.into_iter().map(|row| row.name).collect())
}

/// Removes every reference of the run whose tag is `tag` from `node`, and
/// returns them. The content stays under a cache reference
/// (`localhost/<name>:`[`CACHE_TAG`]`-<image id>`), labelled like a load, so
/// that the next run of an unchanged build tags it instead of streaming it
/// again. The cache references of other builds of the same repository are
/// removed: one build of each component stays on the node.
///
/// A cache reference is created, never moved, so a load tagging from it
/// at the same time is never left without its source; one that another
/// teardown created meanwhile is taken as it is.
///
/// # Errors
/// [`ContainerdError`] when `ctr` fails.
pub async fn remove_tagged(docker: &Docker, node: &Node, tag: &Tag) -> Result<Vec<String>, ContainerdError> {
    check_reachable(node).await?;
    let suffix = format!(":{tag}");
    let mut removed = Vec::new();
    let reached = Reached::new(docker, node).await;
    let listed = list_images(&reached).await?;
    for row in listed.clone() {
        let Some(repository) = row.name.strip_suffix(&suffix) else {
            continue;
        };
        if let Some(image_id) = row.labels.get(IMAGE_ID_LABEL) {
            let cache = cache_reference(repository, image_id);
            keep_as(&reached, &row, &cache, image_id).await?;
            for old in &listed {
                if is_cache_of(&old.name, repository) && old.name != cache {
                    remove_reference(&reached, &old.name).await?;
                }
            }
        }
        remove_reference(&reached, &row.name).await?;
        removed.push(row.name);
    }
    Ok(removed)
}

/// Tags `row` as `cache` on `node`, labelled with `image_id` and its layer
/// map, unless `cache` is there already (another teardown of the same
/// build made it: its name says which image it holds).
async fn keep_as(node: &Reached<'_>, row: &Listed, cache: &str, image_id: &str) -> Result<(), ContainerdError> {
    if let Err(error) = ctr(node, &["images", "tag", &row.name, cache]).await {
        let rows = list_images(node).await?;
        if rows.iter().any(|r| r.name == cache && r.labels.get(IMAGE_ID_LABEL).map(String::as_str) == Some(image_id)) {
            return Ok(());
        }
        if !rows.iter().any(|r| r.name == cache) {
            return Err(error);
        }
    }
    let mut args =
        vec!["images".to_owned(), "label".to_owned(), cache.to_owned(), format!("{IMAGE_ID_LABEL}={image_id}")];
    args.extend(row.labels.get(LAYERS_LABEL).map(|value| format!("{LAYERS_LABEL}={value}")));
    ctr(node, &args.iter().map(String::as_str).collect::<Vec<_>>()).await?;
    Ok(())
}

/// Removes `reference` from `node`; one already gone (another teardown
/// removed it) is no error.
async fn remove_reference(node: &Reached<'_>, reference: &str) -> Result<(), ContainerdError> {
    match ctr(node, &["images", "rm", reference]).await {
        Ok(_) => Ok(()),
        Err(error @ ContainerdError::CommandFailed { .. }) => {
            if list_images(node).await?.iter().any(|r| r.name == reference) {
                Err(error)
            } else {
                Ok(())
            }
        }
        Err(other) => Err(other),
    }
}

/// A socket that is missing, or that this user cannot write to, is named
/// before any `ctr` runs and fails with a less clear message.
async fn check_reachable(node: &Node) -> Result<(), ContainerdError> {
    let Node::Socket { path } = node else {
        return Ok(());
    };
    match tokio::net::UnixStream::connect(path).await {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Err(ContainerdError::NoSocket { path: path.clone() })
        }
        Err(source) => Err(ContainerdError::Socket { path: path.clone(), source }),
    }
}

/// What the engine says of an image to load.
struct EngineImage {
    /// Its diff ids, bottom first.
    layers: Vec<String>,
    /// Its size in bytes.
    size: u64,
}

async fn check_engine_image(docker: &Docker, wanted: &LoadImage) -> Result<EngineImage, ContainerdError> {
    let inspect = docker
        .inspect_image(&wanted.image.to_string())
        .await
        .map_err(|source| ContainerdError::InspectImage { image: wanted.image.clone(), source })?;
    let found = inspect.id.unwrap_or_default();
    if found != wanted.image_id {
        return Err(ContainerdError::ImageChanged {
            image: wanted.image.clone(),
            expected: wanted.image_id.clone(),
            found,
        });
    }
    Ok(EngineImage {
        layers: inspect.root_fs.and_then(|r| r.layers).unwrap_or_default(),
        size: inspect.size.and_then(|s| u64::try_from(s).ok()).unwrap_or_default(),
    })
}

/// One line of `ctr images ls`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listed {
    name: String,
    /// The digest of the manifest (or index) the reference points at.
    digest: String,
    labels: BTreeMap<String, String>,
}

/// Parses `ctr images ls`: the reference is the first column and the labels
/// (`k=v,k=v` or `-`) the last; the columns between may hold spaces (sizes).
fn parse_listing(stdout: &str) -> Vec<Listed> {
    stdout
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next()?.to_owned();
            let digest = fields.nth(1).unwrap_or_default().to_owned();
            let labels = fields
                .next_back()
                .filter(|l| *l != "-")
                .map(|l| {
                    l.split(',')
                        .filter_map(|pair| pair.split_once('='))
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            Some(Listed { name, digest, labels })
        })
        .collect()
}

/// What a node needs for an image, from its listing.
#[derive(Debug, PartialEq, Eq)]
enum Need<'r> {
    /// It lists the plan's reference with the wanted id.
    Nothing,
    /// It lists the wanted id under this other reference: a tag will do.
    Tag(&'r str),
    /// It holds the image under no reference: it is streamed.
    Stream,
}

fn need<'r>(rows: &'r [Listed], wanted: &LoadImage) -> Need<'r> {
    if holds(rows, wanted) {
        Need::Nothing
    } else if let Some(source) = same_image(rows, wanted) {
        Need::Tag(&source.name)
    } else {
        Need::Stream
    }
}

/// Another reference on the node to the very image wanted (same engine id),
/// e.g. an earlier run's tag of an unchanged build.
fn same_image<'r>(rows: &'r [Listed], wanted: &LoadImage) -> Option<&'r Listed> {
    rows.iter().find(|row| !wanted.image.matches(&row.name) && row.labels.get(IMAGE_ID_LABEL) == Some(&wanted.image_id))
}

fn holds(rows: &[Listed], wanted: &LoadImage) -> bool {
    rows.iter().any(|row| wanted.image.matches(&row.name) && row.labels.get(IMAGE_ID_LABEL) == Some(&wanted.image_id))
}

async fn list_images(node: &Reached<'_>) -> Result<Vec<Listed>, ContainerdError> {
    Ok(parse_listing(&ctr(node, &["images", "ls"]).await?))
}

/// The images of `node` that [`need`] looks at for `images`: those under
/// one of their references, and those labelled with one of their engine
/// ids. `ctr images ls` reads every image it lists to sum its size, so a
/// node holding many images is listed far faster this way.
async fn list_wanted(node: &Reached<'_>, images: &[LoadImage]) -> Result<Vec<Listed>, ContainerdError> {
    let quoted = |value: &str| format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""));
    let filters: Vec<String> = images
        .iter()
        .flat_map(|wanted| {
            [
                format!("name=={}", quoted(&wanted.image.to_string())),
                format!("labels.{}=={}", quoted(IMAGE_ID_LABEL), quoted(&wanted.image_id)),
            ]
        })
        .collect();
    let args: Vec<&str> = ["images", "ls"].into_iter().chain(filters.iter().map(String::as_str)).collect();
    Ok(parse_listing(&ctr(node, &args).await?))
}

/// The blobs in `node`'s content store, as short digests.
async fn list_content(node: &Reached<'_>) -> Result<BTreeSet<String>, ContainerdError> {
    let stdout = ctr(node, &["content", "ls", "--quiet"]).await?;
    Ok(stdout.lines().map(str::trim).filter(|l| !l.is_empty()).map(archive::short_digest).collect())
}

/// Where [`stream_into`] reads an image.
enum Feed<'s> {
    /// The engine's overlay2 store, found to hold the image.
    Store(StoredImage),
    /// The engine's containerd content store, found to hold the image.
    Content(&'s ContentStore, ContentImage),
    /// The engine's export.
    Export,
}

/// What a stream into nodes found out about the image.
struct Streamed {
    /// The digests of the layers' blobs the nodes now hold.
    blobs: Vec<String>,
    /// The export's layer map, when a docker-format export was read.
    layers: Option<LayerMap>,
    /// The digest of the manifest the nodes were given.
    manifest: String,
    /// For each node, how long its import took and how many bytes it was sent.
    nodes: Vec<(Duration, u64)>,
}

/// Reads `wanted` once from `feed` and streams into an import on every node
/// of `shares` at once the layers that node does not hold (the export's
/// entries and the blobs given with it).
async fn stream_into(
    docker: &Docker,
    wanted: &LoadImage,
    size: u64,
    shares: Vec<(&Reached<'_>, BTreeMap<String, String>, BTreeSet<String>)>,
    feed: &Feed<'_>,
) -> Result<Streamed, ContainerdError> {
    let started = Instant::now();
    let reference = wanted.image.to_string();
    let limit = IMPORT_TIMEOUT + Duration::from_secs(size / IMPORT_SLOWEST_RATE);
    let mut targets = Vec::new();
    let mut imports = Vec::new();
    for (node, held, blobs) in shares {
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        targets.push(Target::new(tx, held, blobs));
        let reference = reference.as_str();
        imports.push(async move {
            let input = Input { chunks: rx, image: reference };
            let imported = run(node, &["images", "import", "--snapshotter=overlayfs", "-"], Some(input), limit).await;
            (imported, started.elapsed())
        });
    }
    let splitting = async {
        let store_error = |source| ContainerdError::Store { image: wanted.image.clone(), source };
        let read = match feed {
            Feed::Store(image) => super::store::send(image, &reference, &mut targets)
                .await
                .map(|()| (image.diff_ids(), None, image.manifest_digest()))
                .map_err(store_error),
            Feed::Content(store, image) => store
                .send(image, &reference, &mut targets)
                .await
                .map(|()| (image.blobs(), None, image.manifest_digest()))
                .map_err(store_error),
            Feed::Export => {
                match archive::split(docker.export_image(&reference), &reference, &wanted.image_id, &mut targets).await
                {
                    Ok(split) => Ok((split.blobs, split.layers, split.manifest)),
                    Err(ArchiveError::Layout { image_id, entries, .. }) => {
                        let engine = engine::describe(docker).await;
                        let source = ArchiveError::Layout { image_id, entries, engine };
                        Err(ContainerdError::Export { image: wanted.image.clone(), source })
                    }
                    Err(source) => Err(ContainerdError::Export { image: wanted.image.clone(), source }),
                }
            }
        };
        let sent: Vec<u64> = targets.iter().map(|t| t.sent).collect();
        // Closing the channels is the end of every import's input.
        drop(targets);
        (read, sent)
    };
    let ((read, sent), imported) = tokio::join!(splitting, futures::future::join_all(imports));
    // A failed read truncates every import: its error is the cause to report.
    let (blobs, layers, manifest) = read?;
    let mut nodes = Vec::new();
    for ((result, elapsed), sent) in imported.into_iter().zip(sent) {
        result?;
        nodes.push((elapsed, sent));
    }
    Ok(Streamed { blobs, layers, manifest, nodes })
}

/// Tags on `node` the image `wanted` held under `source` with the plan's
/// reference; returns whether the node then holds it under that reference.
///
/// Other runs on the node change references at the same time: a teardown
/// removes the reference tagged from, a load of the same run tags the same
/// reference (`ctr images tag --force` deletes the target, then creates
/// it). A failed tag is therefore not the end: the node is listed again,
/// and the reference is taken as tagged when it holds the image, tagged
/// from another reference to the image when one is left, or reported
/// absent (`false`) so that the image is streamed.
async fn tag_from(node: &Reached<'_>, wanted: &LoadImage, source: &str) -> Result<bool, ContainerdError> {
    let reference = wanted.image.to_string();
    let mut source = source.to_owned();
    let mut tried = BTreeSet::new();
    loop {
        let error = match ctr(node, &["images", "tag", "--force", &source, &reference]).await {
            Ok(_) => return Ok(true),
            Err(error @ ContainerdError::CommandFailed { .. }) => error,
            Err(other) => return Err(other),
        };
        tracing::debug!(node = %node.node, %reference, %source, %error, "tagging failed; listing the node again");
        tried.insert(source.clone());
        let rows = list_images(node).await?;
        if holds(&rows, wanted) {
            return Ok(true);
        }
        match rows
            .iter()
            .find(|row| !tried.contains(&row.name) && same_image(std::slice::from_ref(row), wanted).is_some())
        {
            Some(other) => source = other.name.clone(),
            None => return Ok(false),
        }
    }
}

/// Checks that `node` lists every reference, each one loaded with the
/// manifest it was given (so it is the engine's image, not another that
/// took the reference meanwhile), then gives the loaded ones their labels.
async fn label_and_verify(
    reached: &Reached<'_>,
    images: &[LoadImage],
    to_label: Vec<(&LoadImage, &[String], &str)>,
) -> Result<(), ContainerdError> {
    let rows = list_images(reached).await?;
    for wanted in images {
        let Some(row) = rows.iter().find(|row| wanted.image.matches(&row.name)) else {
            return Err(ContainerdError::Missing {
                node: reached.node.to_string(),
                image: wanted.image.clone(),
                found: rows.iter().map(|r| r.name.clone()).collect(),
            });
        };
        if let Some((_, labels, manifest)) = to_label.iter().find(|(w, _, _)| *w == wanted) {
            if row.digest != *manifest {
                return Err(ContainerdError::NotTheImage {
                    node: reached.node.to_string(),
                    image: wanted.image.clone(),
                    expected: (*manifest).to_owned(),
                    found: row.digest.clone(),
                });
            }
            let args: Vec<&str> =
                ["images", "label", row.name.as_str()].into_iter().chain(labels.iter().map(String::as_str)).collect();
            ctr(reached, &args).await?;
        }
    }
    Ok(())
}

/// A command's standard input: the chunks of an image's archive.
struct Input<'i> {
    chunks: mpsc::Receiver<Bytes>,
    /// The image, named in the command line of errors.
    image: &'i str,
}

/// Runs `ctr --namespace=k8s.io <args>` against `node`, within
/// [`CTR_CALL_TIMEOUT`], and returns its standard output.
async fn ctr(node: &Reached<'_>, args: &[&str]) -> Result<String, ContainerdError> {
    run(node, args, None, CTR_CALL_TIMEOUT).await
}

/// Runs `ctr --namespace=k8s.io <args>` against `node`, feeding it `input`
/// if given, and returns its standard output; fails when it takes longer
/// than `limit`.
async fn run(
    reached: &Reached<'_>,
    args: &[&str],
    input: Option<Input<'_>>,
    limit: Duration,
) -> Result<String, ContainerdError> {
    let mut command = format!("ctr {NAMESPACE_ARG} {}", args.join(" "));
    if let Some(input) = &input {
        command.push_str(&format!(" < {}", input.image));
    }
    let stdin = input.map(|i| i.chunks);
    let node = reached.node;
    let running = async {
        match &reached.route {
            Route::Socket(path) => local_ctr(node, path, args, &command, stdin).await,
            Route::Exec => {
                let argv: Vec<&str> = ["ctr", NAMESPACE_ARG].into_iter().chain(args.iter().copied()).collect();
                exec(reached.docker, node, &node.name(), &argv, &command, stdin).await
            }
        }
    };
    tokio::time::timeout(limit, running).await.map_err(|_| ContainerdError::Timeout {
        node: node.to_string(),
        command: command.clone(),
        limit,
    })?
}

/// `ctr -a <socket>` as a child process of this one.
async fn local_ctr(
    node: &Node,
    socket: &Path,
    args: &[&str],
    command: &str,
    stdin: Option<mpsc::Receiver<Bytes>>,
) -> Result<String, ContainerdError> {
    let command = command.to_owned();
    let mut child = tokio::process::Command::new("ctr")
        .arg("-a")
        .arg(socket)
        .arg(NAMESPACE_ARG)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ContainerdError::Ctr { path: socket.to_owned(), source })?;
    let input = child.stdin.take();
    let feed = async move {
        if let (Some(mut rx), Some(mut input)) = (stdin, input) {
            while let Some(chunk) = rx.recv().await {
                input.write_all(&chunk).await?;
            }
            input.shutdown().await?;
        }
        Ok::<_, std::io::Error>(())
    };
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let (fed, stdout, stderr) = tokio::join!(feed, read_tail(stdout, STDOUT_KEPT), read_tail(stderr, STDERR_KEPT));
    let status = child.wait().await.map_err(|source| ContainerdError::Ctr { path: socket.to_owned(), source })?;
    if !status.success() {
        return Err(ContainerdError::CommandFailed {
            node: node.to_string(),
            command,
            exit_code: status.code().map(i64::from),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        });
    }
    fed.map_err(|source| ContainerdError::Stdin { node: node.to_string(), command, source })?;
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

/// The last `limit` bytes a pipe gives; nothing for no pipe or a read error
/// (the exit status reports the failure).
async fn read_tail(pipe: Option<impl AsyncRead + Unpin>, limit: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut pipe) = pipe else { return kept };
    let mut buffer = vec![0u8; 64 * 1024];
    while let Ok(read) = pipe.read(&mut buffer).await {
        if read == 0 {
            break;
        }
        engine::keep_tail(&mut kept, &buffer[..read], limit);
    }
    kept
}

/// Runs `argv` in the node container `container` through the engine's exec
/// API, feeding it the chunks of `stdin` if given, and returns its standard
/// output.
async fn exec(
    docker: &Docker,
    node: &Node,
    container: &str,
    args: &[&str],
    command: &str,
    stdin: Option<mpsc::Receiver<Bytes>>,
) -> Result<String, ContainerdError> {
    let command = command.to_owned();
    let output =
        engine::exec(docker, container, args, stdin, (STDOUT_KEPT, STDERR_KEPT)).await.map_err(
            |error| match error {
                engine::ExecError::Call(source) => {
                    ContainerdError::Exec { node: node.to_string(), command: command.clone(), source }
                }
                engine::ExecError::Detached => ContainerdError::CommandFailed {
                    node: node.to_string(),
                    command: command.clone(),
                    exit_code: None,
                    stderr: "the engine detached the command instead of attaching to it".to_owned(),
                },
            },
        )?;
    if output.exit_code != Some(0) {
        return Err(ContainerdError::CommandFailed {
            node: node.to_string(),
            command,
            exit_code: output.exit_code,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    output.fed.map_err(|source| ContainerdError::Stdin { node: node.to_string(), command, source })?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Store => "store",
            Self::ContentStore => "content store",
            Self::Export { .. } => "export",
        })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Loaded => "loaded",
            Self::Skipped => "skipped",
            Self::Tagged => "tagged",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "\
REF                                   TYPE                                                 DIGEST                                                                  SIZE      PLATFORMS   LABELS
localhost/api:notification-1a2b3c4d   application/vnd.docker.distribution.manifest.v2+json sha256:aa11 1.9 MiB   linux/amd64 io.cri-containerd.image=managed,io.e2e-infra.image-id=sha256:bb22
docker.io/library/postgres:16         application/vnd.docker.distribution.manifest.v2+json sha256:cc33 120.5 MiB linux/amd64,linux/arm64 -
";

    #[test]
    fn cache_references_name_their_image_and_are_told_from_other_tags() {
        let cache = cache_reference("localhost/api", "sha256:0123456789abcdef0123");
        assert_eq!(cache, "localhost/api:e2e-infra-cache-0123456789ab");
        assert!(is_cache_of(&cache, "localhost/api"));
        assert!(is_cache_of("localhost/api:e2e-infra-cache", "localhost/api"));
        assert!(!is_cache_of("localhost/api:e2e-infra-cachet", "localhost/api"));
        assert!(!is_cache_of("localhost/api-2:e2e-infra-cache-01", "localhost/api"));
        assert!(!is_cache_of("localhost/api:notification-1a2b3c4d", "localhost/api"));
    }

    #[test]
    fn listing_gives_names_and_labels_despite_spaces_in_sizes() {
        let rows = parse_listing(LISTING);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].name, "localhost/api:notification-1a2b3c4d");
        assert_eq!(rows[0].digest, "sha256:aa11");
        assert_eq!(rows[0].labels.get(IMAGE_ID_LABEL).map(String::as_str), Some("sha256:bb22"));
        assert_eq!(rows[0].labels.get("io.cri-containerd.image").map(String::as_str), Some("managed"));
        assert_eq!(rows[1].name, "docker.io/library/postgres:16");
        assert!(rows[1].labels.is_empty());
    }

    #[test]
    fn a_node_holds_an_image_only_under_the_reference_with_the_same_id() {
        let rows = parse_listing(LISTING);
        let postgres = ImageRef::borrowed("postgres:16").expect("ref");
        let labelled = LoadImage { image: postgres.clone(), image_id: "sha256:cc33".to_owned() };
        // Listed, but never labelled by a load: its content is unknown.
        assert!(!holds(&rows, &labelled));
        let api = ImageRef::borrowed("localhost/api:notification-1a2b3c4d").expect("ref");
        assert!(holds(&rows, &LoadImage { image: api.clone(), image_id: "sha256:bb22".to_owned() }));
        assert!(!holds(&rows, &LoadImage { image: api, image_id: "sha256:other".to_owned() }));
    }

    #[test]
    fn an_image_held_under_another_reference_is_tagged_from_it() {
        let rows = parse_listing(LISTING);
        let held = ImageRef::borrowed("localhost/api:notification-1a2b3c4d").expect("ref");
        let later = ImageRef::borrowed("localhost/api:notification-5e6f7a8b").expect("ref");
        let id = "sha256:bb22".to_owned();
        assert_eq!(need(&rows, &LoadImage { image: held, image_id: id.clone() }), Need::Nothing);
        assert_eq!(
            need(&rows, &LoadImage { image: later.clone(), image_id: id }),
            Need::Tag("localhost/api:notification-1a2b3c4d")
        );
        // Another build under the same name: its content is not on the node.
        assert_eq!(need(&rows, &LoadImage { image: later, image_id: "sha256:other".to_owned() }), Need::Stream);
        // Listed, but never labelled by a load: its content is unknown.
        let postgres = ImageRef::borrowed("postgres:16").expect("ref");
        assert_eq!(need(&rows, &LoadImage { image: postgres, image_id: "sha256:cc33".to_owned() }), Need::Stream);
    }
}

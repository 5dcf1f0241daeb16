//! Loading built images into the nodes of a Kind cluster.
//!
//! Each node is a container of the engine running containerd. An image is
//! exported once from the engine and streamed, chunk by chunk, into
//! `ctr images import` on every node that lacks it, through the engine's exec
//! API: no temporary tar file, and memory bounded by a few chunks per node
//! whatever the image size. This is what `kind load docker-image` does, minus
//! the temporary file and the CLI.
//!
//! A node is skipped when its containerd already holds the plan's reference
//! with the engine's image id recorded in the [`IMAGE_ID_LABEL`] label, which
//! this module sets after every import.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::query_parameters::ListContainersOptions;
use bollard::Docker;
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::plan::ImageRef;

/// The label Kind puts on its node containers, valued with the cluster name.
pub const CLUSTER_LABEL: &str = "io.x-k8s.kind.cluster";
/// The label Kind puts on its node containers, valued `control-plane` or `worker`.
pub const ROLE_LABEL: &str = "io.x-k8s.kind.role";
/// The containerd image label recording the engine's image id of an import.
pub const IMAGE_ID_LABEL: &str = "io.e2e-infra.image-id";

/// The containerd namespace the kubelet uses.
const NAMESPACE_ARG: &str = "--namespace=k8s.io";
/// Chunks of an export waiting for one node: bounds memory per node.
const CHUNKS_IN_FLIGHT: usize = 8;
/// What is kept of a command's standard error for messages.
const STDERR_KEPT: usize = 16 * 1024;
/// What is kept of a command's standard output; listings are far smaller.
const STDOUT_KEPT: usize = 4 * 1024 * 1024;
/// How long the engine may take to report an exit code after the output ends.
const EXIT_CODE_WAIT: Duration = Duration::from_secs(10);

/// An image to load: its plan reference and the engine's id of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadImage {
    /// The reference from the plan; nodes get the image under exactly this one.
    pub image: ImageRef,
    /// The engine's image id (`sha256:...`) the build produced.
    pub image_id: String,
}

/// A node of a Kind cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The container name (`<cluster>-control-plane`, `<cluster>-worker`).
    pub name: String,
    /// Kind's role label (`control-plane`, `worker`).
    pub role: String,
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

/// The outcome for one image on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeOutcome {
    /// The node's container name.
    pub node: String,
    /// The image.
    pub image: ImageRef,
    /// Loaded or skipped.
    pub action: Action,
    /// Time spent: the import for a loaded image, the check for a skipped one.
    pub elapsed: Duration,
}

/// What [`load`] did, per node and image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// The cluster.
    pub cluster: String,
    /// The nodes, sorted by name.
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

/// A failure to load images into a Kind cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KindError {
    /// The engine could not list containers.
    #[error("listing the node containers of Kind cluster `{cluster}` failed: {source}")]
    ListNodes {
        /// The cluster.
        cluster: String,
        /// The engine's error.
        source: bollard::errors::Error,
    },
    /// No running container carries the cluster's label.
    #[error("Kind cluster `{cluster}` has no running node on this engine (no container labelled {CLUSTER_LABEL}={cluster}); clusters present: {}", present_clusters(.present))]
    NoNodes {
        /// The cluster asked for.
        cluster: String,
        /// The clusters the engine does have.
        present: Vec<String>,
    },
    /// The engine could not inspect an image to load.
    #[error("inspecting `{image}` on the engine before loading it failed: {source}")]
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
    /// Exporting an image from the engine failed.
    #[error("exporting `{image}` from the engine failed: {source}")]
    Export {
        /// The image.
        image: ImageRef,
        /// The engine's error.
        source: bollard::errors::Error,
    },
    /// The engine could not run a command in a node.
    #[error("running `{command}` in node `{node}` failed: {source}")]
    Exec {
        /// The node.
        node: String,
        /// The command line.
        command: String,
        /// The engine's error.
        source: bollard::errors::Error,
    },
    /// Feeding a command's standard input failed though the command succeeded.
    #[error("streaming into `{command}` in node `{node}` failed: {source}")]
    Stdin {
        /// The node.
        node: String,
        /// The command line.
        command: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A command in a node exited non-zero.
    #[error("`{command}` in node `{node}` failed with exit code {}: {}", exit_code.map_or_else(|| "unknown".to_owned(), |c| c.to_string()), stderr.trim())]
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
    /// After loading, a node does not list the reference.
    #[error("node `{node}` does not list `{image}` after loading; it has: {}", if found.is_empty() { "no images".to_owned() } else { found.join(", ") })]
    Missing {
        /// The node.
        node: String,
        /// The image.
        image: ImageRef,
        /// The references the node lists.
        found: Vec<String>,
    },
}

fn present_clusters(present: &[String]) -> String {
    if present.is_empty() {
        "none".to_owned()
    } else {
        present.join(", ")
    }
}

/// Loads `images` into every node of Kind cluster `cluster`.
///
/// Nodes that already hold an image under its plan reference (same image id)
/// are skipped; the others get it streamed from the engine, all nodes at once.
/// Afterwards every node must list every reference.
///
/// # Errors
/// [`KindError::NoNodes`] (listing the clusters that do exist) when the
/// cluster has no node; [`KindError::ImageChanged`] when the engine's image
/// under a reference is not the one built; [`KindError::Export`],
/// [`KindError::Exec`], [`KindError::CommandFailed`] (with the command's
/// standard error) when streaming or importing fails; [`KindError::Missing`]
/// when a node does not list a reference afterwards.
///
/// # Example
/// ```no_run
/// # async fn example(plan: &e2e_infra::Plan, image_id: String) -> Result<(), Box<dyn std::error::Error>> {
/// use e2e_infra::load::kind::{load, LoadImage};
///
/// let docker = bollard::Docker::connect_with_local_defaults()?;
/// let image = plan.image("datastorage").ok_or("not planned")?.clone();
/// let report = load(&docker, "notification-e2e", &[LoadImage { image, image_id }]).await?;
/// println!("{} node(s) loaded", report.outcomes.len());
/// # Ok(())
/// # }
/// ```
pub async fn load(docker: &Docker, cluster: &str, images: &[LoadImage]) -> Result<LoadReport, KindError> {
    let nodes = nodes(docker, cluster).await?;
    for wanted in images {
        check_engine_image(docker, wanted).await?;
    }
    let listings = futures::future::try_join_all(nodes.iter().map(|node| async move {
        let started = Instant::now();
        list_images(docker, &node.name).await.map(|rows| (rows, started.elapsed()))
    }))
    .await?;

    let mut outcomes = Vec::new();
    for wanted in images {
        let mut targets = Vec::new();
        for (node, (rows, checked_in)) in nodes.iter().zip(&listings) {
            if holds(rows, wanted) {
                outcomes.push(NodeOutcome {
                    node: node.name.clone(),
                    image: wanted.image.clone(),
                    action: Action::Skipped,
                    elapsed: *checked_in,
                });
            } else if let Some(source) = same_image(rows, wanted) {
                let started = Instant::now();
                let reference = wanted.image.to_string();
                run(
                    docker,
                    &node.name,
                    &["ctr", NAMESPACE_ARG, "images", "tag", "--force", source, &reference],
                    None::<mpsc::Receiver<Vec<u8>>>,
                )
                .await?;
                outcomes.push(NodeOutcome {
                    node: node.name.clone(),
                    image: wanted.image.clone(),
                    action: Action::Tagged,
                    elapsed: *checked_in + started.elapsed(),
                });
            } else {
                targets.push(node.name.as_str());
            }
        }
        if targets.is_empty() {
            continue;
        }
        for (node, elapsed) in stream_into(docker, wanted, &targets).await? {
            outcomes.push(NodeOutcome {
                node: node.to_owned(),
                image: wanted.image.clone(),
                action: Action::Loaded,
                elapsed,
            });
        }
    }

    futures::future::try_join_all(nodes.iter().map(|node| {
        let loaded: Vec<&LoadImage> = images
            .iter()
            .filter(|wanted| {
                outcomes.iter().any(|o| {
                    o.node == node.name && o.image == wanted.image && matches!(o.action, Action::Loaded | Action::Tagged)
                })
            })
            .collect();
        label_and_verify(docker, &node.name, images, loaded)
    }))
    .await?;
    Ok(LoadReport { cluster: cluster.to_owned(), nodes, outcomes })
}

/// The running node containers of `cluster`, sorted by name.
///
/// # Errors
/// [`KindError::ListNodes`] when the engine cannot list containers;
/// [`KindError::NoNodes`], listing the clusters present, when none is found.
pub async fn nodes(docker: &Docker, cluster: &str) -> Result<Vec<Node>, KindError> {
    let list = |filter: String| async move {
        let options = ListContainersOptions {
            filters: Some(HashMap::from([("label".to_owned(), vec![filter])])),
            ..Default::default()
        };
        docker
            .list_containers(Some(options))
            .await
            .map_err(|source| KindError::ListNodes { cluster: cluster.to_owned(), source })
    };
    let mut nodes: Vec<Node> = list(format!("{CLUSTER_LABEL}={cluster}"))
        .await?
        .into_iter()
        .filter_map(|c| {
            let name = c.names?.into_iter().next()?.trim_start_matches('/').to_owned();
            let role = c.labels.and_then(|mut l| l.remove(ROLE_LABEL)).unwrap_or_default();
            Some(Node { name, role })
        })
        .collect();
    if nodes.is_empty() {
        let present: BTreeSet<String> =
            list(CLUSTER_LABEL.to_owned()).await?.into_iter().filter_map(|c| c.labels?.remove(CLUSTER_LABEL)).collect();
        return Err(KindError::NoNodes { cluster: cluster.to_owned(), present: present.into_iter().collect() });
    }
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(nodes)
}

/// The references `node`'s containerd lists in the kubelet's namespace.
///
/// # Errors
/// [`KindError::Exec`] or [`KindError::CommandFailed`] when `ctr` cannot
/// list them (containerd not answering yet, for instance).
pub async fn node_images(docker: &Docker, node: &str) -> Result<Vec<String>, KindError> {
    Ok(list_images(docker, node).await?.into_iter().map(|row| row.name).collect())
}

async fn check_engine_image(docker: &Docker, wanted: &LoadImage) -> Result<(), KindError> {
    let inspect = docker
        .inspect_image(&wanted.image.to_string())
        .await
        .map_err(|source| KindError::InspectImage { image: wanted.image.clone(), source })?;
    let found = inspect.id.unwrap_or_default();
    if found != wanted.image_id {
        return Err(KindError::ImageChanged { image: wanted.image.clone(), expected: wanted.image_id.clone(), found });
    }
    Ok(())
}

/// One line of `ctr images ls`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listed {
    name: String,
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
            Some(Listed { name, labels })
        })
        .collect()
}

/// Another reference on the node to the very image wanted (same engine id),
/// e.g. an earlier run's tag of an unchanged build.
fn same_image<'r>(rows: &'r [Listed], wanted: &LoadImage) -> Option<&'r str> {
    rows.iter()
        .find(|row| !wanted.image.matches(&row.name) && row.labels.get(IMAGE_ID_LABEL) == Some(&wanted.image_id))
        .map(|row| row.name.as_str())
}

fn holds(rows: &[Listed], wanted: &LoadImage) -> bool {
    rows.iter().any(|row| wanted.image.matches(&row.name) && row.labels.get(IMAGE_ID_LABEL) == Some(&wanted.image_id))
}

async fn list_images(docker: &Docker, node: &str) -> Result<Vec<Listed>, KindError> {
    let stdout = run(docker, node, &["ctr", NAMESPACE_ARG, "images", "ls"], None::<mpsc::Receiver<Vec<u8>>>).await?;
    Ok(parse_listing(&stdout))
}

/// Exports `wanted` once and streams it into an import on every node of
/// `targets` at once; returns how long each node took.
async fn stream_into<'n>(
    docker: &Docker,
    wanted: &LoadImage,
    targets: &[&'n str],
) -> Result<Vec<(&'n str, Duration)>, KindError> {
    let started = Instant::now();
    let (senders, receivers): (Vec<_>, Vec<_>) = targets.iter().map(|_| mpsc::channel(CHUNKS_IN_FLIGHT)).unzip();
    let export = docker.export_image(&wanted.image.to_string());
    let imports = futures::future::join_all(targets.iter().zip(receivers).map(|(node, rx)| async move {
        let imported = run(
            docker,
            node,
            &["ctr", NAMESPACE_ARG, "images", "import", "--digests", "--snapshotter=overlayfs", "-"],
            Some(rx),
        )
        .await;
        (*node, imported, started.elapsed())
    }));
    let (pumped, imported) = tokio::join!(fan_out(export, senders), imports);
    // A failed export truncates every import: its error is the cause to report.
    pumped.map_err(|source| KindError::Export { image: wanted.image.clone(), source })?;
    imported.into_iter().map(|(node, result, elapsed)| result.map(|_| (node, elapsed))).collect()
}

/// Copies every chunk of `source` to every sender, waiting for the slowest
/// (the channels are bounded, so memory stays flat). A receiver that went away
/// (its import failed) is dropped from the fan-out; its own error reports it.
async fn fan_out<S, B, E>(source: S, mut senders: Vec<mpsc::Sender<B>>) -> Result<(), E>
where
    S: Stream<Item = Result<B, E>>,
    B: Clone,
{
    futures::pin_mut!(source);
    while let Some(chunk) = source.next().await {
        let chunk = chunk?;
        let sent = futures::future::join_all(senders.iter().map(|tx| tx.send(chunk.clone()))).await;
        let mut sent = sent.into_iter();
        senders.retain(|_| sent.next().is_some_and(|r| r.is_ok()));
        if senders.is_empty() {
            break;
        }
    }
    Ok(())
}

/// Labels the references imported on `node` with their image id, then checks
/// that the node lists every reference.
async fn label_and_verify(
    docker: &Docker,
    node: &str,
    images: &[LoadImage],
    loaded: Vec<&LoadImage>,
) -> Result<(), KindError> {
    let rows = list_images(docker, node).await?;
    for wanted in images {
        let Some(row) = rows.iter().find(|row| wanted.image.matches(&row.name)) else {
            return Err(KindError::Missing {
                node: node.to_owned(),
                image: wanted.image.clone(),
                found: rows.iter().map(|r| r.name.clone()).collect(),
            });
        };
        if loaded.contains(&wanted) {
            let label = format!("{IMAGE_ID_LABEL}={}", wanted.image_id);
            run(
                docker,
                node,
                &["ctr", NAMESPACE_ARG, "images", "label", &row.name, &label],
                None::<mpsc::Receiver<Vec<u8>>>,
            )
            .await?;
        }
    }
    Ok(())
}

/// Runs `args` in `node` through the engine's exec API, feeding it the chunks
/// of `stdin` if given, and returns its standard output.
async fn run<B: AsRef<[u8]>>(
    docker: &Docker,
    node: &str,
    args: &[&str],
    stdin: Option<mpsc::Receiver<B>>,
) -> Result<String, KindError> {
    let command = args.join(" ");
    let exec_error = |source| KindError::Exec { node: node.to_owned(), command: command.clone(), source };
    let options = CreateExecOptions {
        cmd: Some(args.to_vec()),
        attach_stdin: Some(stdin.is_some()),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..Default::default()
    };
    let exec = docker.create_exec(node, options).await.map_err(exec_error)?;
    let (mut output, mut input) = match docker.start_exec(&exec.id, None).await.map_err(exec_error)? {
        StartExecResults::Attached { output, input } => (output, input),
        StartExecResults::Detached => {
            return Err(KindError::CommandFailed {
                node: node.to_owned(),
                command,
                exit_code: None,
                stderr: "the engine detached the command instead of attaching to it".to_owned(),
            })
        }
    };
    let feed = async move {
        if let Some(mut rx) = stdin {
            while let Some(chunk) = rx.recv().await {
                input.write_all(chunk.as_ref()).await?;
            }
        }
        // Closing our side is the end of file the command reads.
        input.shutdown().await
    };
    let read = async {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(frame) = output.next().await {
            match frame? {
                LogOutput::StdOut { message } => keep_tail(&mut stdout, &message, STDOUT_KEPT),
                LogOutput::StdErr { message } => keep_tail(&mut stderr, &message, STDERR_KEPT),
                _ => {}
            }
        }
        Ok::<_, bollard::errors::Error>((stdout, stderr))
    };
    let (fed, read) = tokio::join!(feed, read);
    let (stdout, stderr) = read.map_err(exec_error)?;
    let exit_code = exit_code(docker, &exec.id).await.map_err(exec_error)?;
    if exit_code != Some(0) {
        return Err(KindError::CommandFailed {
            node: node.to_owned(),
            command,
            exit_code,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        });
    }
    fed.map_err(|source| KindError::Stdin { node: node.to_owned(), command, source })?;
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

/// The exit code once the engine reports the command finished.
async fn exit_code(docker: &Docker, exec_id: &str) -> Result<Option<i64>, bollard::errors::Error> {
    let deadline = Instant::now() + EXIT_CODE_WAIT;
    loop {
        let inspect = docker.inspect_exec(exec_id).await?;
        if inspect.running != Some(true) || Instant::now() >= deadline {
            return Ok(inspect.exit_code);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn keep_tail(buffer: &mut Vec<u8>, more: &[u8], limit: usize) {
    buffer.extend_from_slice(more);
    if buffer.len() > limit {
        buffer.drain(..buffer.len() - limit);
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
    fn listing_gives_names_and_labels_despite_spaces_in_sizes() {
        let rows = parse_listing(LISTING);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].name, "localhost/api:notification-1a2b3c4d");
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
    fn tail_keeps_the_last_bytes() {
        let mut buffer = Vec::new();
        keep_tail(&mut buffer, b"0123456789", 4);
        keep_tail(&mut buffer, b"ab", 4);
        assert_eq!(buffer, b"89ab");
    }

    #[tokio::test]
    async fn fan_out_copies_every_chunk_to_every_receiver_and_survives_a_dropped_one() {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..100u8).map(|i| Ok(vec![i; 3])).collect();
        let (tx_a, mut rx_a) = mpsc::channel(2);
        let (tx_b, rx_b) = mpsc::channel(2);
        drop(rx_b);
        let collect = async move {
            let mut got = Vec::new();
            while let Some(chunk) = rx_a.recv().await {
                got.extend(chunk);
            }
            got
        };
        let (pumped, got) = tokio::join!(fan_out(futures::stream::iter(chunks), vec![tx_a, tx_b]), collect);
        pumped.expect("fan-out");
        let expected: Vec<u8> = (0..100u8).flat_map(|i| [i; 3]).collect();
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn fan_out_reports_a_failing_source() {
        let chunks = vec![Ok(vec![1u8]), Err(std::io::Error::other("export broke"))];
        let (tx, mut rx) = mpsc::channel(4);
        let drain = async move { while rx.recv().await.is_some() {} };
        let (pumped, ()) = tokio::join!(fan_out(futures::stream::iter(chunks), vec![tx]), drain);
        assert_eq!(pumped.expect_err("must fail").to_string(), "export broke");
    }
}

//! The nodes of a Kind cluster: the engine's containers that Kind labels
//! with the cluster's name. Loading into them is [`containerd::load`].

use std::collections::BTreeSet;

use bollard::query_parameters::ListContainersOptions;
use bollard::Docker;

use super::containerd::{self, ContainerdError, LoadImage, LoadReport, Node};

/// The label Kind puts on its node containers, valued with the cluster name.
pub const CLUSTER_LABEL: &str = "io.x-k8s.kind.cluster";
/// The label Kind puts on its node containers, valued `control-plane` or `worker`.
pub const ROLE_LABEL: &str = "io.x-k8s.kind.role";

/// A failure to find a Kind cluster's nodes, or to load into them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
// Fields named for what they hold carry no doc of their own.
#[allow(missing_docs)]
pub enum KindError {
    /// The engine could not list containers.
    #[error("listing the node containers of Kind cluster `{cluster}` failed")]
    ListNodes {
        cluster: String,
        /// The engine's error.
        source: bollard::errors::Error,
    },
    /// No running container carries the cluster's label.
    #[error("Kind cluster `{cluster}` has no running node on this engine (no container labelled {CLUSTER_LABEL}={cluster}); clusters present: {}", if present.is_empty() { "none".to_owned() } else { present.join(", ") })]
    NoNodes {
        /// The cluster asked for.
        cluster: String,
        /// The clusters the engine does have.
        present: Vec<String>,
    },
    /// Loading into a node failed.
    #[error(transparent)]
    Load(#[from] ContainerdError),
}

/// Loads `images` into every node of Kind cluster `cluster`: [`nodes`], then
/// [`containerd::load`].
///
/// # Errors
/// [`KindError::NoNodes`] (listing the clusters that do exist) when the
/// cluster has no node; [`KindError::Load`] when loading fails.
///
/// # Example
/// ```no_run
/// # async fn example(plan: &e2e_infra::Plan, image_id: String) -> Result<(), Box<dyn std::error::Error>> {
/// use e2e_infra::load::containerd::LoadImage;
///
/// let docker = bollard::Docker::connect_with_local_defaults()?;
/// let image = plan.image("datastorage").ok_or("not planned")?.clone();
/// let report = e2e_infra::load::kind::load(&docker, "notification-e2e", &[LoadImage { image, image_id }]).await?;
/// println!("{} node(s) loaded", report.outcomes.len());
/// # Ok(())
/// # }
/// ```
pub async fn load(docker: &Docker, cluster: &str, images: &[LoadImage]) -> Result<LoadReport, KindError> {
    let started = std::time::Instant::now();
    let nodes = nodes(docker, cluster).await?;
    tracing::debug!(cluster, elapsed = ?started.elapsed(), "nodes found");
    Ok(containerd::load(docker, &nodes, images).await?)
}

/// The running node containers of `cluster`, sorted by name.
///
/// # Errors
/// [`KindError::ListNodes`] when the engine cannot list containers;
/// [`KindError::NoNodes`], listing the clusters present, when none is found.
pub async fn nodes(docker: &Docker, cluster: &str) -> Result<Vec<Node>, KindError> {
    let list = |filter: String| async move {
        let options =
            ListContainersOptions { filters: Some(crate::engine::label_filter(&[filter])), ..Default::default() };
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
            Some(Node::Container { name, role })
        })
        .collect();
    if nodes.is_empty() {
        let present: BTreeSet<String> =
            list(CLUSTER_LABEL.to_owned()).await?.into_iter().filter_map(|c| c.labels?.remove(CLUSTER_LABEL)).collect();
        return Err(KindError::NoNodes { cluster: cluster.to_owned(), present: present.into_iter().collect() });
    }
    nodes.sort();
    Ok(nodes)
}

/// The references the containerd of Kind node container `node` lists.
///
/// # Errors
/// As [`containerd::node_images`].
pub async fn node_images(docker: &Docker, node: &str) -> Result<Vec<String>, ContainerdError> {
    let node = Node::Container { name: node.to_owned(), role: String::new() };
    containerd::node_images(docker, &node).await
}

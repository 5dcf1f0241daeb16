//! Where a suite runs and how its images reach a cluster: the rules the
//! attribute checks at compile time and the runtime applies to the
//! attribute joined with the environment. Both call [`resolve`], so a
//! combination the attribute refuses is refused from the environment too.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::names::{Echo, InvalidRegistry, Registry};

/// Overrides the attribute's backend at run time: `docker`, `kind` or `kubernetes`.
pub const BACKEND_ENV: &str = "E2E_INFRA_BACKEND";
/// The Kind cluster whose nodes get the images (default `kind` with `E2E_INFRA_BACKEND=kind`).
pub const KIND_CLUSTER_ENV: &str = "E2E_INFRA_KIND_CLUSTER";
/// The kubeconfig context (default: `kind-<cluster>` for Kind, else the kubeconfig's current context).
pub const KUBE_CONTEXT_ENV: &str = "E2E_INFRA_KUBE_CONTEXT";
/// A containerd socket on this machine that the cluster's only node uses.
pub const CONTAINERD_SOCKET_ENV: &str = "E2E_INFRA_CONTAINERD_SOCKET";
/// A registry (`host:port`) the cluster pulls from.
pub const REGISTRY_ENV: &str = "E2E_INFRA_REGISTRY";
/// The Kind cluster of `kind` when none is named.
pub const DEFAULT_KIND_CLUSTER: &str = "kind";

/// The backends, as the attribute's `backend` and [`BACKEND_ENV`] spell them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Flavour {
    /// Containers on a Docker engine.
    #[default]
    Docker,
    /// A Kind cluster: images go into its node containers unless a registry is named.
    Kind,
    /// Any Kubernetes cluster, told how images reach it.
    Kubernetes,
}

impl Flavour {
    /// Every spelling, in order.
    pub const NAMES: [&'static str; 3] = ["docker", "kind", "kubernetes"];

    /// The flavour a spelling names, if any.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "docker" => Some(Self::Docker),
            "kind" => Some(Self::Kind),
            "kubernetes" => Some(Self::Kubernetes),
            _ => None,
        }
    }
}

/// The backend as the attribute wrote it, everything but the flavour
/// optional. The suite's description is a `static`, hence the borrows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
// Fields named for what they hold carry no doc of their own.
#[allow(missing_docs)]
pub struct Declared<'a> {
    pub flavour: Flavour,
    pub context: Option<&'a str>,
    /// `cluster`: a Kind cluster whose node containers get the images.
    pub cluster: Option<&'a str>,
    /// `containerd`: the socket of the node's containerd.
    pub containerd: Option<&'a str>,
    /// `registry`: `host:port` the cluster pulls from.
    pub registry: Option<&'a str>,
}

/// A Kubernetes cluster and how images reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeTarget {
    /// The kubeconfig context; `None` for the kubeconfig's current context.
    pub context: Option<String>,
    /// How built images reach the cluster's nodes.
    pub images: ImageTarget,
}

/// How built images reach a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "via", rename_all = "snake_case")]
// Fields named for what they hold carry no doc of their own.
#[allow(missing_docs)]
pub enum ImageTarget {
    /// Streamed into the containerd of every node container of a Kind cluster.
    KindNodes {
        /// The Kind cluster.
        cluster: String,
    },
    /// Streamed into a containerd listening on a socket of this machine
    /// (k3s, microk8s, kubeadm, a local kubelet).
    Containerd { socket: PathBuf },
    /// Pushed to a registry the cluster pulls from.
    Registry {
        /// `host:port`.
        host: String,
    },
}

/// The declared backend and the environment do not make a backend. Each
/// message names the attribute's key and the variable that set it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
// Fields named for what they hold carry no doc of their own.
#[allow(missing_docs)]
pub enum BackendError {
    /// `E2E_INFRA_BACKEND` names no backend.
    #[error("{BACKEND_ENV}=`{}` is not a backend: use `docker`, `kind` or `kubernetes`", Echo(.0))]
    Unknown(String),
    /// Kubernetes without a way to get images to the nodes.
    #[error("the kubernetes backend needs to know how images reach the cluster: set {CONTAINERD_SOCKET_ENV} (a node's containerd socket), {KIND_CLUSTER_ENV} (a Kind cluster) or {REGISTRY_ENV} (host:port), or the attribute's `containerd`, `cluster` or `registry`")]
    NoDelivery,
    /// Both a containerd socket and a registry.
    #[error("images go either into containerd at {socket} or to registry {registry}, not both; unset {CONTAINERD_SOCKET_ENV} or {REGISTRY_ENV} (or the attribute's `containerd` or `registry`)")]
    TwoDeliveries { socket: String, registry: String },
    /// A containerd socket given as a relative path.
    #[error("containerd socket `{}` must be an absolute path, such as /run/k3s/containerd/containerd.sock", Echo(.0))]
    RelativeSocket(String),
    /// A containerd socket for a Kind cluster, whose nodes are reached
    /// through the engine.
    #[error("a containerd socket ({}) does not apply to the kind backend: Kind's nodes are reached through the engine; unset {CONTAINERD_SOCKET_ENV} (or the attribute's `containerd`), or use the kubernetes backend for a cluster whose node's containerd listens on a socket of this machine", Echo(.0))]
    KindWithContainerd(String),
    /// A registry address that is not `host[:port]`.
    #[error("registry `{}` ({REGISTRY_ENV} or the attribute's `registry`) is not an address", Echo(.0))]
    InvalidRegistry(String, #[source] InvalidRegistry),
}

/// The declared backend with the environment's overrides
/// ([`BACKEND_ENV`], [`KIND_CLUSTER_ENV`], [`KUBE_CONTEXT_ENV`],
/// [`CONTAINERD_SOCKET_ENV`], [`REGISTRY_ENV`]): `None` for Docker, else
/// the cluster. `env` gives a variable's value; the attribute, at compile
/// time, gives none.
///
/// # Errors
/// The first rule broken, as [`resolve_all`] lists them.
pub fn resolve(
    declared: &Declared<'_>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<KubeTarget>, BackendError> {
    resolve_all(declared, env).map_err(|mut broken| broken.swap_remove(0))
}

/// [`resolve`], with every rule broken.
///
/// # Errors
/// Every [`BackendError`], never none.
pub fn resolve_all(
    declared: &Declared<'_>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<KubeTarget>, Vec<BackendError>> {
    let flavour = match env(BACKEND_ENV) {
        None => declared.flavour,
        Some(name) => Flavour::parse(&name).ok_or_else(|| vec![BackendError::Unknown(name)])?,
    };
    if flavour == Flavour::Docker {
        return Ok(None);
    }
    let owned = |value: Option<&str>| value.map(str::to_owned);
    let cluster = env(KIND_CLUSTER_ENV)
        .or_else(|| owned(declared.cluster))
        .or_else(|| (flavour == Flavour::Kind).then(|| DEFAULT_KIND_CLUSTER.to_owned()));
    let socket = env(CONTAINERD_SOCKET_ENV).or_else(|| owned(declared.containerd));
    let registry = env(REGISTRY_ENV).or_else(|| owned(declared.registry));
    let context = env(KUBE_CONTEXT_ENV)
        .or_else(|| owned(declared.context))
        .or_else(|| cluster.as_ref().map(|c| format!("kind-{c}")));
    let mut broken = Vec::new();
    if let Some(socket) = &socket {
        if flavour == Flavour::Kind {
            broken.push(BackendError::KindWithContainerd(socket.clone()));
        } else if !socket.starts_with('/') {
            broken.push(BackendError::RelativeSocket(socket.clone()));
        }
    }
    if let Some(host) = &registry {
        if let Err(invalid) = Registry::new(host) {
            broken.push(BackendError::InvalidRegistry(host.clone(), invalid));
        }
    }
    let images = match (socket, registry, cluster) {
        (Some(socket), Some(registry), _) => {
            broken.push(BackendError::TwoDeliveries { socket, registry });
            None
        }
        (Some(socket), None, _) => Some(ImageTarget::Containerd { socket: PathBuf::from(socket) }),
        (None, Some(host), _) => Some(ImageTarget::Registry { host }),
        (None, None, Some(cluster)) => Some(ImageTarget::KindNodes { cluster }),
        (None, None, None) => {
            broken.push(BackendError::NoDelivery);
            None
        }
    };
    match images {
        Some(images) if broken.is_empty() => Ok(Some(KubeTarget { context, images })),
        _ => Err(broken),
    }
}

impl fmt::Display for KubeTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.context {
            Some(context) => write!(f, "context `{context}`")?,
            None => f.write_str("the kubeconfig's current context")?,
        }
        match &self.images {
            ImageTarget::KindNodes { cluster } => write!(f, ", images into the nodes of Kind cluster `{cluster}`"),
            ImageTarget::Containerd { socket } => write!(f, ", images into containerd at {}", socket.display()),
            ImageTarget::Registry { host } => write!(f, ", images through registry {host}"),
        }
    }
}

//! Where a stack runs, and how built images get there.
//!
//! The attribute declares a backend ([`Declared`]); the environment may
//! switch it at run time, so one suite runs on Docker on a laptop and on a
//! cluster in CI. [`Backend::resolve`] joins the two into what a run uses.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use e2e_infra_core::names::Echo;

use crate::plan::Delivery;

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

/// The backend as the attribute wrote it: everything optional, all `'static`
/// so that the suite's description can be a `static`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
// Fields named for what they hold carry no doc of their own.
#[allow(missing_docs)]
pub struct Declared {
    /// `backend = "kubernetes"` or `"kind"`; else Docker.
    pub kubernetes: bool,
    pub context: Option<&'static str>,
    /// `cluster`: a Kind cluster whose node containers get the images.
    pub cluster: Option<&'static str>,
    /// `containerd`: the socket of the node's containerd.
    pub containerd: Option<&'static str>,
    /// `registry`: `host:port` the cluster pulls from.
    pub registry: Option<&'static str>,
}

/// Where a run's stack runs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// Containers on the Docker engine (or Podman) that `DOCKER_HOST` names.
    Docker,
    /// Workloads in a namespace of a Kubernetes cluster.
    Kubernetes(KubeTarget),
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
#[non_exhaustive]
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
    Containerd {
        socket: PathBuf,
    },
    /// Pushed to a registry the cluster pulls from.
    Registry {
        /// `host:port`.
        host: String,
    },
}

/// The declared backend and the environment do not make a backend.
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
    TwoDeliveries {
        socket: String,
        registry: String,
    },
    /// A containerd socket given as a relative path.
    #[error("containerd socket `{}` must be an absolute path, such as /run/k3s/containerd/containerd.sock", Echo(.0))]
    RelativeSocket(String),
}

impl Backend {
    /// The declared backend with the environment's overrides
    /// ([`BACKEND_ENV`], [`KIND_CLUSTER_ENV`], [`KUBE_CONTEXT_ENV`],
    /// [`CONTAINERD_SOCKET_ENV`], [`REGISTRY_ENV`]).
    ///
    /// # Errors
    /// [`BackendError`] naming what to set.
    pub fn resolve(declared: &Declared) -> Result<Self, BackendError> {
        Self::resolve_with(declared, |name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// [`Backend::resolve`] with the environment as a function.
    ///
    /// # Errors
    /// As [`Backend::resolve`].
    pub fn resolve_with(declared: &Declared, env: impl Fn(&str) -> Option<String>) -> Result<Self, BackendError> {
        let (kubernetes, kind_default) = match env(BACKEND_ENV).as_deref() {
            None => (declared.kubernetes, false),
            Some("docker") => (false, false),
            Some("kind") => (true, true),
            Some("kubernetes") => (true, false),
            Some(other) => return Err(BackendError::Unknown(other.to_owned())),
        };
        if !kubernetes {
            return Ok(Self::Docker);
        }
        let owned = |value: Option<&'static str>| value.map(str::to_owned);
        let cluster = env(KIND_CLUSTER_ENV)
            .or_else(|| owned(declared.cluster))
            .or_else(|| kind_default.then(|| "kind".to_owned()));
        let socket = env(CONTAINERD_SOCKET_ENV).or_else(|| owned(declared.containerd));
        let registry = env(REGISTRY_ENV).or_else(|| owned(declared.registry));
        let context = env(KUBE_CONTEXT_ENV)
            .or_else(|| owned(declared.context))
            .or_else(|| cluster.as_ref().map(|c| format!("kind-{c}")));
        let images = match (socket, registry, cluster) {
            (Some(socket), Some(registry), _) => return Err(BackendError::TwoDeliveries { socket, registry }),
            (Some(socket), None, _) => {
                let socket = PathBuf::from(socket);
                if !socket.is_absolute() {
                    return Err(BackendError::RelativeSocket(socket.display().to_string()));
                }
                ImageTarget::Containerd { socket }
            }
            (None, Some(host), _) => ImageTarget::Registry { host },
            (None, None, Some(cluster)) => ImageTarget::KindNodes { cluster },
            (None, None, None) => return Err(BackendError::NoDelivery),
        };
        Ok(Self::Kubernetes(KubeTarget { context, images }))
    }

    /// How the plan names built images for this backend.
    pub fn delivery(&self) -> Delivery {
        match self {
            Self::Kubernetes(KubeTarget { images: ImageTarget::Registry { host }, .. }) => {
                Delivery::Registry(host.clone())
            }
            _ => Delivery::Local,
        }
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn resolve(declared: Declared, vars: &[(&str, &str)]) -> Result<Backend, BackendError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Backend::resolve_with(&declared, |name| vars.get(name).cloned())
    }

    fn kube(context: Option<&str>, images: ImageTarget) -> Backend {
        Backend::Kubernetes(KubeTarget { context: context.map(str::to_owned), images })
    }

    #[test]
    fn docker_unless_told_otherwise() {
        assert_eq!(resolve(Declared::default(), &[]), Ok(Backend::Docker));
        let declared = Declared { kubernetes: true, cluster: Some("e2e"), ..Declared::default() };
        assert_eq!(resolve(declared, &[(BACKEND_ENV, "docker")]), Ok(Backend::Docker));
    }

    #[test]
    fn kind_is_the_short_form_with_its_context() {
        let want = kube(Some("kind-kind"), ImageTarget::KindNodes { cluster: "kind".to_owned() });
        assert_eq!(resolve(Declared::default(), &[(BACKEND_ENV, "kind")]), Ok(want));
        let declared = Declared { kubernetes: true, cluster: Some("e2e"), ..Declared::default() };
        let want = kube(Some("kind-e2e"), ImageTarget::KindNodes { cluster: "e2e".to_owned() });
        assert_eq!(resolve(declared, &[]), Ok(want));
    }

    #[test]
    fn the_environment_gives_a_containerd_socket_and_a_context() {
        let vars = [(BACKEND_ENV, "kubernetes"), (CONTAINERD_SOCKET_ENV, "/run/node/containerd.sock"), (KUBE_CONTEXT_ENV, "local")];
        let want = kube(Some("local"), ImageTarget::Containerd { socket: "/run/node/containerd.sock".into() });
        assert_eq!(resolve(Declared::default(), &vars), Ok(want));
    }

    #[test]
    fn a_registry_delivery_names_images_after_the_registry() {
        let declared = Declared { kubernetes: true, registry: Some("registry.ci.example:5000"), ..Declared::default() };
        let backend = resolve(declared, &[]).expect("backend");
        assert_eq!(backend, kube(None, ImageTarget::Registry { host: "registry.ci.example:5000".to_owned() }));
        assert_eq!(backend.delivery(), Delivery::Registry("registry.ci.example:5000".to_owned()));
    }

    #[test]
    fn mistakes_say_what_to_set() {
        assert_eq!(resolve(Declared::default(), &[(BACKEND_ENV, "k8s")]), Err(BackendError::Unknown("k8s".to_owned())));
        let error = resolve(Declared::default(), &[(BACKEND_ENV, "kubernetes")]).expect_err("no delivery");
        assert!(error.to_string().contains(CONTAINERD_SOCKET_ENV), "{error}");
        let vars = [(BACKEND_ENV, "kubernetes"), (CONTAINERD_SOCKET_ENV, "/s.sock"), (REGISTRY_ENV, "r:5000")];
        assert!(matches!(resolve(Declared::default(), &vars), Err(BackendError::TwoDeliveries { .. })));
        let vars = [(BACKEND_ENV, "kubernetes"), (CONTAINERD_SOCKET_ENV, "node/containerd.sock")];
        assert!(matches!(resolve(Declared::default(), &vars), Err(BackendError::RelativeSocket(_))));
    }
}

//! Where a stack runs, and how built images get there.
//!
//! The attribute declares a backend ([`Declared`]); the environment may
//! switch it at run time, so one suite runs on Docker on a laptop and on a
//! cluster in CI. [`Backend::resolve`] joins the two into what a run uses,
//! by the rules the attribute checks at compile time
//! (`e2e_infra_core::backend`).

pub use e2e_infra_core::backend::{
    BackendError, Declared, Flavour, ImageTarget, KubeTarget, BACKEND_ENV, CONTAINERD_SOCKET_ENV, KIND_CLUSTER_ENV,
    KUBE_CONTEXT_ENV, REGISTRY_ENV,
};

use crate::plan::Delivery;

/// Where a run's stack runs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// Containers on the Docker engine (or Podman) that `DOCKER_HOST` names.
    Docker,
    /// Workloads in a namespace of a Kubernetes cluster.
    Kubernetes(KubeTarget),
}

impl Backend {
    /// The declared backend with the environment's overrides
    /// ([`BACKEND_ENV`], [`KIND_CLUSTER_ENV`], [`KUBE_CONTEXT_ENV`],
    /// [`CONTAINERD_SOCKET_ENV`], [`REGISTRY_ENV`]).
    ///
    /// # Errors
    /// [`BackendError`] naming what to set.
    pub fn resolve(declared: &Declared<'_>) -> Result<Self, BackendError> {
        Self::resolve_with(declared, |name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// [`Backend::resolve`] with the environment as a function.
    ///
    /// # Errors
    /// As [`Backend::resolve`].
    pub fn resolve_with(declared: &Declared<'_>, env: impl Fn(&str) -> Option<String>) -> Result<Self, BackendError> {
        Ok(e2e_infra_core::backend::resolve(declared, env)?.map_or(Self::Docker, Self::Kubernetes))
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
        let declared = Declared { flavour: Flavour::Kubernetes, cluster: Some("e2e"), ..Declared::default() };
        assert_eq!(resolve(declared, &[(BACKEND_ENV, "docker")]), Ok(Backend::Docker));
    }

    #[test]
    fn kind_is_the_short_form_with_its_context() {
        let want = kube(Some("kind-kind"), ImageTarget::KindNodes { cluster: "kind".to_owned() });
        assert_eq!(resolve(Declared::default(), &[(BACKEND_ENV, "kind")]), Ok(want));
        let declared = Declared { flavour: Flavour::Kubernetes, cluster: Some("e2e"), ..Declared::default() };
        let want = kube(Some("kind-e2e"), ImageTarget::KindNodes { cluster: "e2e".to_owned() });
        assert_eq!(resolve(declared, &[]), Ok(want));
    }

    #[test]
    fn the_environment_gives_a_containerd_socket_and_a_context() {
        let vars = [
            (BACKEND_ENV, "kubernetes"),
            (CONTAINERD_SOCKET_ENV, "/run/node/containerd.sock"),
            (KUBE_CONTEXT_ENV, "local"),
        ];
        let want = kube(Some("local"), ImageTarget::Containerd { socket: "/run/node/containerd.sock".into() });
        assert_eq!(resolve(Declared::default(), &vars), Ok(want));
    }

    #[test]
    fn a_registry_delivery_names_images_after_the_registry() {
        let declared = Declared {
            flavour: Flavour::Kubernetes,
            registry: Some("registry.ci.example:5000"),
            ..Declared::default()
        };
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
        // As the attribute refuses `backend = "kind", containerd = ...`.
        let vars = [(BACKEND_ENV, "kind"), (CONTAINERD_SOCKET_ENV, "/s.sock")];
        assert!(matches!(resolve(Declared::default(), &vars), Err(BackendError::KindWithContainerd(_))));
        let vars = [(BACKEND_ENV, "kubernetes"), (REGISTRY_ENV, "http://r:5000")];
        assert!(matches!(resolve(Declared::default(), &vars), Err(BackendError::InvalidRegistry(..))));
    }
}

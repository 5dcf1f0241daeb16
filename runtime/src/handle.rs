//! The handle every test of a suite shares: tag, image references,
//! namespace or network, endpoints, and clients for the engine and cluster.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};

use crate::deploy::kube::forward;
use crate::engine::{self, EngineError};
use crate::plan::{ImageRef, Namespace, Plan, Tag};
use crate::record::{Placement, StackRecord};

/// Why a component cannot be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
// Fields named for what they hold carry no doc of their own.
#[allow(missing_docs)]
pub enum EndpointError {
    /// The stack has no such component or port.
    #[error("component `{component}` publishes no port {port} in this stack; list it under `ports` in the catalog's docker section")]
    NotPublished {
        component: String,
        /// The port asked for.
        port: u16,
    },
    /// A port-forward could not be opened.
    #[error(transparent)]
    Forward(#[from] forward::ForwardError),
}

/// An address a test can reach a component at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    addr: SocketAddr,
}

impl Endpoint {
    /// The socket address on this machine.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The host part.
    pub fn host(&self) -> String {
        self.addr.ip().to_string()
    }

    /// The host port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://host:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.addr.fmt(f)
    }
}

/// The shared, ready handle of a suite's stack.
///
/// Clients are made anew by each call, on the caller's async runtime: every
/// `#[tokio::test]` has a runtime of its own, and a connection pool made on
/// one test's runtime breaks once that test ends.
///
/// ```no_run
/// # fn demo(infra: &e2e_infra::Infra) {
/// let url = infra.endpoint("datastorage", 8080).expect("datastorage publishes 8080").url();
/// assert!(infra.image("datastorage").expect("planned").to_string().ends_with(infra.tag().as_str()));
/// # }
/// ```
#[derive(Debug)]
pub struct Infra {
    plan: Plan,
    record: StackRecord,
    /// Port-forwards opened by this process, on Kubernetes, for ports the
    /// run's recorded forwards do not cover.
    forwards: Mutex<HashMap<(String, u16), SocketAddr>>,
    /// Set once the recorded forwards were found to lead somewhere.
    forwards_checked: OnceLock<()>,
}

impl Infra {
    pub(crate) fn new(mut plan: Plan, record: StackRecord) -> Self {
        plan.pin(&record.digests);
        Self { plan, record, forwards: Mutex::default(), forwards_checked: OnceLock::new() }
    }

    /// The run's plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// What the setup process recorded of the stack.
    pub fn record(&self) -> &StackRecord {
        &self.record
    }

    /// The one tag of every image built for this run and consumer.
    pub fn tag(&self) -> &Tag {
        self.plan.tag()
    }

    /// A component's image reference, exactly as built, loaded and deployed:
    /// on registry delivery, pinned to the digest that was pushed.
    pub fn image(&self, component: &str) -> Option<&ImageRef> {
        self.plan.image(component)
    }

    /// The Kubernetes namespace of the stack (on Docker, the network has this name).
    pub fn namespace(&self) -> &Namespace {
        self.plan.namespace()
    }

    /// Where the stack runs.
    pub fn placement(&self) -> &Placement {
        &self.record.placement
    }

    /// The Docker network of the stack, on the Docker backend.
    pub fn network(&self) -> Option<&str> {
        match &self.record.placement {
            Placement::Docker { network, .. } => Some(network),
            Placement::Kubernetes { .. } => None,
        }
    }

    /// Where a component's container port can be reached from this machine:
    /// on Docker, the port published on 127.0.0.1; on Kubernetes, a local
    /// port-forward to a ready pod behind the Service named after the
    /// component: the one the run's long-lived process holds for every
    /// test process (checked once per process: that process runs and the
    /// API server accepts connections), else one this process opens on
    /// first use and keeps for its life.
    /// `None` when the component does not publish that port; see
    /// [`Infra::try_endpoint`] for why.
    pub fn endpoint(&self, component: &str, port: u16) -> Option<Endpoint> {
        self.try_endpoint(component, port).ok()
    }

    /// As [`Infra::endpoint`], saying why an endpoint cannot be had.
    ///
    /// # Errors
    /// [`EndpointError`] for a component or port the stack does not publish,
    /// a port-forward that cannot be opened, or the run's forwards no longer
    /// lead anywhere (their process exited, the cluster does not answer).
    pub fn try_endpoint(&self, component: &str, port: u16) -> Result<Endpoint, EndpointError> {
        let unknown = || EndpointError::NotPublished { component: component.to_owned(), port };
        let recorded = self.record.endpoints.get(component).and_then(|p| p.get(&port));
        match &self.record.placement {
            Placement::Docker { .. } => Ok(Endpoint { addr: *recorded.ok_or_else(unknown)? }),
            Placement::Kubernetes { target } => {
                if let (Some(addr), Some(keeper)) = (recorded, &self.record.forwarded_by) {
                    if self.forwards_checked.get().is_none() {
                        forward::check_recorded(target.context.as_deref(), keeper, self.plan.namespace().as_str())?;
                        let _ = self.forwards_checked.set(());
                    }
                    return Ok(Endpoint { addr: *addr });
                }
                self.plan.component(component).ok_or_else(unknown)?;
                let mut forwards = self.forwards.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some(addr) = forwards.get(&(component.to_owned(), port)) {
                    return Ok(Endpoint { addr: *addr });
                }
                let addr = forward::start(forward::Target {
                    context: target.context.clone(),
                    namespace: self.plan.namespace().to_string(),
                    service: component.to_owned(),
                    port,
                })?;
                forwards.insert((component.to_owned(), port), addr);
                Ok(Endpoint { addr })
            }
        }
    }

    /// The per-run summary: component, image, build / load / ready times, cache hits.
    pub fn summary(&self) -> &str {
        &self.record.summary
    }

    /// A Docker client for the engine the stack runs on (the one that built
    /// the images), bound to the caller's runtime.
    ///
    /// # Errors
    /// [`EngineError`] when the engine does not answer.
    pub async fn docker(&self) -> Result<bollard::Docker, EngineError> {
        match &self.record.placement {
            Placement::Docker { docker_host: Some(host), .. } => engine::connect_to(host).await,
            _ => engine::connect().await,
        }
    }

    /// A Kubernetes client for the stack's cluster (on Docker, for the
    /// kubeconfig's current context), bound to the caller's runtime.
    ///
    /// # Errors
    /// [`KubeError`](crate::deploy::kube::KubeError) when the context cannot
    /// be loaded or its API server does not answer.
    pub async fn kube(&self) -> Result<kube::Client, crate::deploy::kube::KubeError> {
        let context = match &self.record.placement {
            Placement::Kubernetes { target } => target.context.as_deref(),
            Placement::Docker { .. } => None,
        };
        crate::deploy::kube::connect(context).await
    }
}

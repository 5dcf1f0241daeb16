//! Reaching a component in the cluster from this machine: a listener on
//! 127.0.0.1 whose every connection is port-forwarded to a ready pod behind
//! the component's Service. Tests then talk to a Kind stack exactly as to a
//! Docker one, through [`Infra::endpoint`](crate::Infra::endpoint).

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ListParams, Portforwarder};
use kube::config::Kubeconfig;
use kube::{Api, Client};
use tokio::net::TcpStream;

use super::{connect, KubeError, CONNECT_TIMEOUT};
use crate::background;
use crate::error::error_chain;
use crate::plan::Launcher;

/// A port-forward could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
// Fields named for what they hold carry no doc of their own.
#[allow(missing_docs)]
pub enum ForwardError {
    /// No local listener could be opened.
    #[error("opening a local port for `{service}` failed")]
    Listen {
        service: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The Service cannot be read.
    #[error("reading Service `{service}` in namespace `{namespace}` failed; the component's manifest must define a Service named after it")]
    Service {
        service: String,
        namespace: String,
        /// kube's error.
        source: kube::Error,
    },
    /// No pod behind the Service is ready.
    #[error("no ready pod behind Service `{service}` in namespace `{namespace}` (selector `{selector}`)")]
    NoPod { service: String, namespace: String, selector: String },
    /// The cluster did not answer the port-forwarding process.
    #[error("port-forwarding needs the cluster")]
    Cluster(#[from] Box<KubeError>),
    /// The process that holds the run's port-forwards has exited.
    #[error("process {pid}, which holds this run's port-forwards to namespace `{namespace}`, has exited; the run's teardown went with it: run the tests again")]
    KeeperGone { pid: u32, namespace: String },
    /// The cluster's API server accepts no connection.
    #[error("the API server of {context} at {server} accepts no connection: {problem}; start the cluster or pick another context")]
    Unreachable { context: String, server: String, problem: String },
    /// Listing pods or forwarding to one failed.
    #[error("port-forwarding to pod `{pod}` port {port} failed")]
    Pod {
        pod: String,
        port: u16,
        /// kube's error.
        source: kube::Error,
    },
}

/// Where to forward to.
#[derive(Debug, Clone)]
pub struct Target {
    /// The kubeconfig context; `None` for the current one.
    pub context: Option<String>,
    /// The namespace of the stack.
    pub namespace: String,
    /// The Service, named after the component.
    pub service: String,
    /// The container port.
    pub port: u16,
}

/// Opens a local listener and forwards its connections to `target` on the
/// process's background runtime, for the rest of the
/// process; returns the local address.
///
/// # Errors
/// [`ForwardError::Listen`] when no local port can be opened. Errors of
/// each forwarded connection are logged, and close that connection.
pub fn start(target: Target) -> Result<SocketAddr, ForwardError> {
    let (listener, addr) = bind(&target.service)?;
    let runtime = background::runtime().map_err(|e| listen_error(&target.service, std::io::Error::other(e)))?;
    runtime.spawn(async move {
        match connect(target.context.as_deref()).await {
            Ok(client) => serve(listener, client, target).await,
            Err(error) => tracing::warn!("port-forward to {}: {}", target.service, error_chain(&error)),
        }
    });
    Ok(addr)
}

/// Port-forwards to every port of the Service of each of `components` in
/// `namespace`, served on the caller's async runtime (the background one,
/// so they last as long as the process) through one client: what a run's
/// long-lived process holds for the test processes that attach, so none of
/// them needs a client, a Service lookup or a listener of its own. A
/// component without a Service gets none; its port is each Service port's
/// numeric `targetPort`, or the port itself when it names none.
///
/// # Errors
/// [`ForwardError::Cluster`] when the cluster does not answer;
/// [`ForwardError::Service`] when a Service cannot be read;
/// [`ForwardError::Listen`] when no local port can be opened.
pub(crate) async fn forward_all(
    context: Option<&str>,
    namespace: &str,
    components: &[String],
) -> Result<BTreeMap<String, BTreeMap<u16, SocketAddr>>, ForwardError> {
    let client = connect(context).await.map_err(Box::new)?;
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let mut forwards = BTreeMap::new();
    for component in components {
        let service_error =
            |source| ForwardError::Service { service: component.clone(), namespace: namespace.to_owned(), source };
        let Some(service) = services.get_opt(component).await.map_err(service_error)? else { continue };
        let mut ports = BTreeMap::new();
        for port in target_ports(&service) {
            let (listener, addr) = bind(component)?;
            let target = Target {
                context: context.map(str::to_owned),
                namespace: namespace.to_owned(),
                service: component.clone(),
                port,
            };
            let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| listen_error(component, e))?;
            tokio::spawn(accept(listener, client.clone(), target));
            ports.insert(port, addr);
        }
        forwards.insert(component.clone(), ports);
    }
    Ok(forwards)
}

/// The container ports a Service sends to.
fn target_ports(service: &Service) -> Vec<u16> {
    let ports = service.spec.as_ref().and_then(|s| s.ports.as_ref()).into_iter().flatten();
    ports
        .filter_map(|p| match &p.target_port {
            Some(IntOrString::Int(port)) => u16::try_from(*port).ok(),
            // A named port is resolved per pod: left to the process's own forward.
            Some(IntOrString::String(_)) => None,
            None => u16::try_from(p.port).ok(),
        })
        .collect()
}

/// Checks, cheaply, that forwards recorded by `keeper` still lead
/// somewhere: the process holding them runs, and the cluster's API server
/// accepts a connection within [`CONNECT_TIMEOUT`]. No request is made.
///
/// # Errors
/// [`ForwardError::KeeperGone`] or [`ForwardError::Unreachable`].
pub(crate) fn check_recorded(context: Option<&str>, keeper: &Launcher, namespace: &str) -> Result<(), ForwardError> {
    if !keeper.is_alive() {
        return Err(ForwardError::KeeperGone { pid: keeper.pid, namespace: namespace.to_owned() });
    }
    let described = context.map_or_else(|| "the current context".to_owned(), |c| format!("context `{c}`"));
    let unreachable =
        |server: String, problem: String| ForwardError::Unreachable { context: described.clone(), server, problem };
    let server = api_server(context).map_err(|problem| unreachable("(unknown)".to_owned(), problem))?;
    let addrs = server.to_socket_addrs().map_err(|e| unreachable(server.clone(), e.to_string()))?;
    let mut last = "no address".to_owned();
    for addr in addrs {
        match std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(error) => last = error.to_string(),
        }
    }
    Err(unreachable(server, last))
}

/// `host:port` of the API server of `context` in the kubeconfig.
fn api_server(context: Option<&str>) -> Result<String, String> {
    let config = Kubeconfig::read().map_err(|e| e.to_string())?;
    let name = context.map(str::to_owned).or(config.current_context.clone()).ok_or("no current context")?;
    let cluster = config
        .contexts
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .ok_or_else(|| format!("no context `{name}` in the kubeconfig"))?;
    let server = config
        .clusters
        .iter()
        .find(|c| c.name == cluster)
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone())
        .ok_or_else(|| format!("no server for cluster `{cluster}` in the kubeconfig"))?;
    let uri: http::Uri = server.parse().map_err(|e| format!("server `{server}`: {e}"))?;
    let host = uri.host().ok_or_else(|| format!("server `{server}` names no host"))?;
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("http") { 80 } else { 443 });
    Ok(format!("{}:{port}", host.trim_start_matches('[').trim_end_matches(']')))
}

fn listen_error(service: &str, source: std::io::Error) -> ForwardError {
    ForwardError::Listen { service: service.to_owned(), source }
}

/// A listener on 127.0.0.1 and its address.
fn bind(service: &str) -> Result<(std::net::TcpListener, SocketAddr), ForwardError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| listen_error(service, e))?;
    listener.set_nonblocking(true).map_err(|e| listen_error(service, e))?;
    let addr = listener.local_addr().map_err(|e| listen_error(service, e))?;
    Ok((listener, addr))
}

async fn serve(listener: std::net::TcpListener, client: Client, target: Target) {
    match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => accept(listener, client, target).await,
        Err(error) => tracing::warn!("port-forward to {}: {error}", target.service),
    }
}

/// Port-forward sessions kept open ahead of the connections that will use
/// them, per forwarded port, and as many again being opened at once:
/// opening one (a pod lookup, a WebSocket to the API server, the kubelet's
/// dial into the pod) takes a few hundred milliseconds, which a test should
/// not wait for, and test processes connect several at a time.
const SPARES: usize = 4;
/// A spare older than this is dropped unused: the server in the pod may
/// have given up on a connection that sent nothing, or the pod may be gone.
const SPARE_MAX_AGE: Duration = Duration::from_secs(15);

/// An open session to one pod's port.
struct Session {
    pod: String,
    opened: Instant,
    forwarder: Portforwarder,
}

async fn accept(listener: tokio::net::TcpListener, client: Client, target: Target) {
    let (spares, mut ready) = tokio::sync::mpsc::channel::<Session>(SPARES);
    let opener = {
        let (client, target) = (client.clone(), target.clone());
        tokio::spawn(async move {
            let opening = futures::stream::repeat_with(|| {
                let (client, target) = (client.clone(), target.clone());
                async move { open(&client, &target).await }
            })
            .buffer_unordered(SPARES);
            futures::pin_mut!(opening);
            while let Some(opened) = opening.next().await {
                match opened {
                    Ok(session) => {
                        if spares.send(session).await.is_err() {
                            return;
                        }
                    }
                    Err(error) => {
                        tracing::debug!(
                            "port-forward to {}:{}: no spare session: {}",
                            target.service,
                            target.port,
                            error_chain(&error)
                        );
                        // The next connection opens its own and reports why it cannot.
                        tokio::time::sleep(SPARE_MAX_AGE / 15).await;
                    }
                }
            }
        })
    };
    while let Ok((socket, _)) = listener.accept().await {
        let mut spare = None;
        while let Ok(session) = ready.try_recv() {
            if session.opened.elapsed() < SPARE_MAX_AGE {
                spare = Some(session);
                break;
            }
        }
        let (client, target) = (client.clone(), target.clone());
        tokio::spawn(async move {
            let session = match spare {
                Some(session) => Ok(session),
                None => open(&client, &target).await,
            };
            match session {
                Ok(session) => relay(session, target.port, socket).await,
                Err(error) => {
                    tracing::warn!("port-forward to {}:{}: {}", target.service, target.port, error_chain(&error))
                }
            }
        });
    }
    opener.abort();
}

/// Opens a session to a ready pod chosen anew, so a restarted pod is
/// picked up by the next session.
async fn open(client: &Client, target: &Target) -> Result<Session, ForwardError> {
    let services: Api<Service> = Api::namespaced(client.clone(), &target.namespace);
    let service = services.get(&target.service).await.map_err(|source| ForwardError::Service {
        service: target.service.clone(),
        namespace: target.namespace.clone(),
        source,
    })?;
    let selector = service
        .spec
        .and_then(|s| s.selector)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &target.namespace);
    let pod_error = |pod: &str| {
        let (pod, port) = (pod.to_owned(), target.port);
        move |source| ForwardError::Pod { pod, port, source }
    };
    let listed = pods.list(&ListParams::default().labels(&selector)).await.map_err(pod_error("(list)"))?;
    let pod =
        listed.items.into_iter().find(is_ready).and_then(|p| p.metadata.name).ok_or_else(|| ForwardError::NoPod {
            service: target.service.clone(),
            namespace: target.namespace.clone(),
            selector: selector.clone(),
        })?;
    let forwarder = pods.portforward(&pod, &[target.port]).await.map_err(pod_error(&pod))?;
    Ok(Session { pod, opened: Instant::now(), forwarder })
}

/// Copies one connection through `session` until either side closes.
async fn relay(mut session: Session, port: u16, mut socket: TcpStream) {
    if let Some(mut upstream) = session.forwarder.take_stream(port) {
        // Either side closing ends the connection; that is not an error.
        let _ = tokio::io::copy_bidirectional(&mut socket, &mut upstream).await;
    } else {
        tracing::warn!("port-forward to pod {} gave no stream for port {port}", session.pod);
    }
    session.forwarder.abort();
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

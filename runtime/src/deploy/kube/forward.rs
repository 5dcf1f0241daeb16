//! Reaching a component in the cluster from this machine: a listener on
//! 127.0.0.1 whose every connection is port-forwarded to a ready pod behind
//! the component's Service. Tests then talk to a Kind stack exactly as to a
//! Docker one, through [`Infra::endpoint`](crate::Infra::endpoint).

use std::net::SocketAddr;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::ListParams;
use kube::{Api, Client};
use tokio::net::TcpStream;

use super::connect;
use crate::background;
use crate::error::error_chain;

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
    NoPod {
        service: String,
        namespace: String,
        selector: String,
    },
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
/// process's [background runtime](crate::background), for the rest of the
/// process; returns the local address.
///
/// # Errors
/// [`ForwardError::Listen`] when no local port can be opened. Errors of
/// each forwarded connection are logged, and close that connection.
pub fn start(target: Target) -> Result<SocketAddr, ForwardError> {
    let service = target.service.clone();
    let listen = |source| ForwardError::Listen { service: service.clone(), source };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(listen)?;
    listener.set_nonblocking(true).map_err(listen)?;
    let addr = listener.local_addr().map_err(listen)?;
    let runtime = background::runtime().map_err(|e| listen(std::io::Error::other(e)))?;
    runtime.spawn(serve(listener, target));
    Ok(addr)
}

async fn serve(listener: std::net::TcpListener, target: Target) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => return tracing::warn!("port-forward to {}: {error}", target.service),
    };
    let client = match connect(target.context.as_deref()).await {
        Ok(client) => client,
        Err(error) => return tracing::warn!("port-forward to {}: {}", target.service, error_chain(&error)),
    };
    while let Ok((socket, _)) = listener.accept().await {
        let (client, target) = (client.clone(), target.clone());
        tokio::spawn(async move {
            if let Err(error) = pipe(client, &target, socket).await {
                tracing::warn!("port-forward to {}:{}: {}", target.service, target.port, error_chain(&error));
            }
        });
    }
}

/// Forwards one connection to a ready pod chosen anew, so a restarted pod is
/// picked up by the next connection.
async fn pipe(client: Client, target: &Target, mut socket: TcpStream) -> Result<(), ForwardError> {
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
    let pods: Api<Pod> = Api::namespaced(client, &target.namespace);
    let pod_error = |pod: &str| {
        let (pod, port) = (pod.to_owned(), target.port);
        move |source| ForwardError::Pod { pod, port, source }
    };
    let listed = pods.list(&ListParams::default().labels(&selector)).await.map_err(pod_error("(list)"))?;
    let name = listed
        .items
        .into_iter()
        .find(is_ready)
        .and_then(|p| p.metadata.name)
        .ok_or_else(|| ForwardError::NoPod {
            service: target.service.clone(),
            namespace: target.namespace.clone(),
            selector: selector.clone(),
        })?;
    let mut forwarder = pods.portforward(&name, &[target.port]).await.map_err(pod_error(&name))?;
    if let Some(mut upstream) = forwarder.take_stream(target.port) {
        // Either side closing ends the connection; that is not an error.
        let _ = tokio::io::copy_bidirectional(&mut socket, &mut upstream).await;
    }
    forwarder.abort();
    Ok(())
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

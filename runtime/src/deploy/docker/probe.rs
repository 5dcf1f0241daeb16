//! Readiness: a started container's state and probe, looked at until it is
//! ready, has stopped, or its time is up.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bollard::Docker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::super::ready::{self, Deadline, Look, Outcome};
use super::follow;
use super::logs::last_logs;
use super::{DockerError, ENGINE_CALL_TIMEOUT};
use crate::catalog::{Probe, ReadySpec};
use crate::engine;
use crate::plan::PlannedComponent;

/// How often a starting container's state and probe are checked.
const POLL: Duration = Duration::from_millis(250);
/// Longest single probe attempt.
const ATTEMPT: Duration = Duration::from_secs(2);
/// The least time a readiness poll gives the engine to answer.
const MIN_POLL_CALL: Duration = Duration::from_secs(1);

/// Waits for one container to be ready.
pub(super) struct Prober<'a> {
    component: &'a str,
    container: &'a str,
    ready: Option<&'a ReadySpec>,
}

/// What one look at the container found.
enum Seen {
    Running(Option<IpAddr>),
    Exited(i64),
}

impl<'a> Prober<'a> {
    pub(super) fn new(component: &'a PlannedComponent, container: &'a str, ready: Option<&'a ReadySpec>) -> Self {
        Self { component: &component.name, container, ready }
    }

    /// Polls the container's state and the probe until ready; returns the
    /// published ports. A container that stops is reported at once.
    pub(super) async fn wait(
        &self,
        docker: &Docker,
        id: &str,
        network: &str,
        started: Instant,
    ) -> Result<BTreeMap<u16, SocketAddr>, DockerError> {
        // Without a probe, running is ready: the first look decides.
        let deadline = Deadline::after(self.ready.map_or(ENGINE_CALL_TIMEOUT, |r| r.timeout));
        let mut looking = ContainerWatch { prober: self, docker, id, network, started, looked: false, log: None };
        match ready::until_ready(&mut looking, &deadline).await {
            Outcome::Ready(ports) => Ok(ports),
            Outcome::Failed(error) => Err(error),
            Outcome::TimedOut => Err(DockerError::NotReady {
                component: self.component.to_owned(),
                container: self.container.to_owned(),
                probe: self.ready.map_or_else(|| "running".to_owned(), |r| describe(&r.probe)),
                timeout: deadline.timeout(),
                logs: last_logs(docker, id).await,
            }),
        }
    }

    async fn attempt(&self, docker: &Docker, id: &str, ip: Option<IpAddr>, probe: &Probe) -> bool {
        match probe {
            Probe::Tcp(port) => match ip {
                Some(ip) => tcp_open(SocketAddr::new(ip, *port)).await,
                None => false,
            },
            Probe::Http(http) => match ip {
                Some(ip) => http_ok(SocketAddr::new(ip, http.port), &http.path).await,
                None => false,
            },
            // Followed by the wait ([`follow::LogFollower`]), not polled.
            Probe::Log(_) | Probe::Completes => false,
            Probe::Exec(argv) => {
                let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                let running = engine::exec(docker, id, &argv, None, (0, 0));
                matches!(tokio::time::timeout(ATTEMPT, running).await, Ok(Ok(out)) if out.exit_code == Some(0))
            }
        }
    }
}

/// One container as [`ready::until_ready`] looks at it: its state, then
/// its probe, every [`POLL`].
struct ContainerWatch<'a> {
    prober: &'a Prober<'a>,
    docker: &'a Docker,
    id: &'a str,
    network: &'a str,
    started: Instant,
    looked: bool,
    /// The followed log, for a `log` probe.
    log: Option<follow::LogFollower>,
}

impl ready::Watch for ContainerWatch<'_> {
    type Ready = BTreeMap<u16, SocketAddr>;
    type Error = DockerError;

    async fn look(&mut self, deadline: &Deadline) -> Look<Self::Ready, DockerError> {
        if std::mem::replace(&mut self.looked, true) {
            tokio::time::sleep(POLL).await;
        }
        let (prober, docker, id) = (self.prober, self.docker, self.id);
        // The deadline bounds the engine calls too, so a frozen engine
        // cannot stretch the wait; it is reported as such, not as a probe
        // that never passed.
        let inspecting = docker.inspect_container(id, None);
        let inspected =
            match engine::within(docker, deadline.left().max(MIN_POLL_CALL), "inspecting the container", inspecting)
                .await
            {
                Err(source) => {
                    return Look::Failed(DockerError::Silent { component: prober.component.to_owned(), source })
                }
                Ok(Err(source)) => {
                    return Look::Failed(DockerError::Container {
                        component: prober.component.to_owned(),
                        container: prober.container.to_owned(),
                        operation: "inspecting",
                        source,
                    })
                }
                Ok(Ok(inspected)) => inspected,
            };
        let ports = published_ports(&inspected);
        let completes = matches!(prober.ready.map(|r| &r.probe), Some(Probe::Completes));
        match seen(&inspected, self.network) {
            Seen::Exited(0) if completes => Look::Ready(ports),
            Seen::Exited(exit_code) => Look::Failed(DockerError::Exited {
                component: prober.component.to_owned(),
                container: prober.container.to_owned(),
                exit_code,
                after: self.started.elapsed(),
                logs: last_logs(docker, id).await,
            }),
            Seen::Running(ip) => {
                let ready = match prober.ready.map(|r| &r.probe) {
                    None => true,
                    Some(Probe::Log(pattern)) => {
                        self.log.get_or_insert_with(|| follow::LogFollower::new(docker, id)).saw(pattern).await
                    }
                    Some(probe) => prober.attempt(docker, id, ip, probe).await,
                };
                if ready {
                    Look::Ready(ports)
                } else {
                    Look::Waiting
                }
            }
        }
    }
}

fn seen(inspected: &bollard::models::ContainerInspectResponse, network: &str) -> Seen {
    use bollard::models::ContainerStateStatusEnum as Status;
    let state = inspected.state.clone().unwrap_or_default();
    if matches!(state.status, Some(Status::EXITED | Status::DEAD)) {
        return Seen::Exited(state.exit_code.unwrap_or(-1));
    }
    let ip = inspected
        .network_settings
        .as_ref()
        .and_then(|s| s.networks.as_ref())
        // `network` is the id the container was attached by; engines key
        // endpoints by network name, and Podman reports the name as the
        // network id too. The container is attached to that network only.
        .and_then(|n| {
            n.get(network).or_else(|| n.values().find(|e| e.network_id.as_deref() == Some(network))).or_else(|| {
                if n.len() == 1 {
                    n.values().next()
                } else {
                    None
                }
            })
        })
        .and_then(|e| e.ip_address.as_deref())
        .and_then(|ip| ip.parse().ok());
    Seen::Running(ip)
}

fn published_ports(inspected: &bollard::models::ContainerInspectResponse) -> BTreeMap<u16, SocketAddr> {
    let mut ports = BTreeMap::new();
    let map = inspected.network_settings.as_ref().and_then(|s| s.ports.as_ref());
    for (key, bindings) in map.into_iter().flatten() {
        let Some(port) = key.strip_suffix("/tcp").and_then(|p| p.parse().ok()) else { continue };
        let found = bindings.iter().flatten().find_map(|b| {
            let ip: IpAddr = match b.host_ip.as_deref() {
                None | Some("") | Some("0.0.0.0") => IpAddr::from([127, 0, 0, 1]),
                Some(ip) => ip.parse().ok()?,
            };
            let host_port = b.host_port.as_deref()?.parse().ok()?;
            Some(SocketAddr::new(ip, host_port))
        });
        if let Some(addr) = found {
            ports.insert(port, addr);
        }
    }
    ports
}

fn describe(probe: &Probe) -> String {
    match probe {
        Probe::Tcp(port) => format!("a TCP connect to port {port}"),
        Probe::Http(http) => format!("an HTTP GET of {} on port {} answering 2xx", http.path, http.port),
        Probe::Log(pattern) => format!("a log line matching `{pattern}`"),
        Probe::Completes => "running to completion with exit code 0".to_owned(),
        Probe::Exec(argv) => format!("the command {argv:?} exiting 0 inside the container"),
    }
}

async fn tcp_open(addr: SocketAddr) -> bool {
    matches!(tokio::time::timeout(ATTEMPT, TcpStream::connect(addr)).await, Ok(Ok(_)))
}

async fn http_ok(addr: SocketAddr, path: &str) -> bool {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut head = [0; 64];
        let mut read = 0;
        while read < head.len() {
            let n = stream.read(&mut head[read..]).await?;
            if n == 0 || head[..read + n].contains(&b'\n') {
                read += n;
                break;
            }
            read += n;
        }
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&head[..read]).into_owned())
    };
    match tokio::time::timeout(ATTEMPT, exchange).await {
        Ok(Ok(head)) => status_is_success(&head),
        _ => false,
    }
}

/// Whether an HTTP status line says 2xx.
fn status_is_success(head: &str) -> bool {
    let mut parts = head.split_whitespace();
    parts.next().is_some_and(|v| v.starts_with("HTTP/"))
        && parts.next().is_some_and(|code| code.len() == 3 && code.starts_with('2'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_status_lines() {
        assert!(status_is_success("HTTP/1.0 200 OK\r\n"));
        assert!(status_is_success("HTTP/1.1 204 No Content\r\n"));
        assert!(!status_is_success("HTTP/1.1 404 Not Found\r\n"));
        assert!(!status_is_success("HTTP/1.1 500 Oops\r\n"));
        assert!(!status_is_success("SSH-2.0-OpenSSH\r\n"));
        assert!(!status_is_success(""));
    }
}

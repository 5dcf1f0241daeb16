//! Readiness: a started container's state and probe, looked at until it is
//! ready, has stopped, or its time is up.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bollard::Docker;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::super::ready::{self, Deadline, Look, Outcome};
use super::follow;
use super::logs::last_logs;
use super::{DockerError, ENGINE_CALL_TIMEOUT};
use crate::catalog::{LogPattern, Probe, ReadySpec};
use crate::engine;
use crate::error::error_chain;
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
        let mut looking =
            ContainerWatch { prober: self, docker, id, network, started, looked: false, log: None, answer: None };
        match ready::until_ready(&mut looking, &deadline).await {
            Outcome::Ready(ports) => Ok(ports),
            Outcome::Failed(error) => Err(error),
            Outcome::TimedOut => Err(DockerError::NotReady {
                component: self.component.to_owned(),
                container: self.container.to_owned(),
                probe: self.ready.map_or_else(|| "running".to_owned(), |r| describe(&r.probe)),
                last_answer: looking.answer.unwrap_or_else(|| "none: no attempt finished".to_owned()),
                timeout: deadline.timeout(),
                logs: last_logs(docker, id).await,
            }),
        }
    }

    /// One attempt of `probe`; on failure, what it got instead.
    async fn attempt(&self, docker: &Docker, id: &str, ip: Option<IpAddr>, probe: &Probe) -> Result<(), String> {
        let unreachable = || "the container has no address on the run's network".to_owned();
        match probe {
            Probe::Tcp(port) => tcp_open(SocketAddr::new(ip.ok_or_else(unreachable)?, *port)).await,
            Probe::Http(http) => http_ok(SocketAddr::new(ip.ok_or_else(unreachable)?, http.port), &http.path).await,
            // Followed by the wait ([`follow::LogFollower`]), not polled.
            Probe::Log(_) => Err("no line matched".to_owned()),
            // Passes when the container exits 0, which the wait sees.
            Probe::Completes => Err("still running".to_owned()),
            Probe::Exec(argv) => {
                let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                let running = engine::exec(docker, id, &argv, None, (0, 0));
                match within_attempt(running).await? {
                    Ok(out) if out.exit_code == Some(0) => Ok(()),
                    Ok(out) => {
                        Err(out.exit_code.map_or_else(|| "no exit code".to_owned(), |c| format!("exit code {c}")))
                    }
                    Err(error) => Err(error_chain(&error)),
                }
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
    /// The followed log, for a `log` probe and for `fails_on`.
    log: Option<follow::LogFollower>,
    /// What the probe's last attempt got, for the error when time runs out.
    answer: Option<String>,
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
                let probe = prober.ready.map(|r| &r.probe);
                let fails_on = prober.ready.and_then(|r| r.fails_on.as_ref());
                let awaited = match probe {
                    Some(Probe::Log(pattern)) => Some(pattern),
                    _ => None,
                };
                // One follower reads the log for both patterns; `fails_on`
                // comes first, so a line that matches both ends the wait.
                let patterns: Vec<&LogPattern> = fails_on.into_iter().chain(awaited).collect();
                let mut logged = None;
                if !patterns.is_empty() {
                    let follower = self.log.get_or_insert_with(|| follow::LogFollower::new(docker, id));
                    logged = follower.saw(&patterns).await;
                }
                if let (Some(ready), Some(pattern), Some((0, line))) = (prober.ready, fails_on, &logged) {
                    return Look::Failed(DockerError::FailedOn {
                        component: prober.component.to_owned(),
                        container: prober.container.to_owned(),
                        probe: describe(&ready.probe),
                        pattern: pattern.to_string(),
                        line: line.clone(),
                        after: self.started.elapsed(),
                        logs: last_logs(docker, id).await,
                    });
                }
                let answer = match probe {
                    None => Ok(()),
                    Some(Probe::Log(_)) => logged.map(|_| ()).ok_or_else(|| "no line matched".to_owned()),
                    Some(probe) => prober.attempt(docker, id, ip, probe).await,
                };
                match answer {
                    Ok(()) => Look::Ready(ports),
                    Err(answer) => {
                        self.answer = Some(answer);
                        Look::Waiting
                    }
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

/// Bounds one probe attempt by [`ATTEMPT`].
async fn within_attempt<T>(attempt: impl std::future::Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(ATTEMPT, attempt).await.map_err(|_| format!("no answer within {ATTEMPT:?}"))
}

async fn tcp_open(addr: SocketAddr) -> Result<(), String> {
    within_attempt(TcpStream::connect(addr)).await?.map(drop).map_err(|e| format!("connecting to {addr}: {e}"))
}

/// One GET of `path` on a connection of its own, through hyper's HTTP/1
/// client; a 2xx status passes.
async fn http_ok(addr: SocketAddr, path: &str) -> Result<(), String> {
    let exchange = async {
        let stream = TcpStream::connect(addr).await.map_err(|e| format!("connecting to {addr}: {e}"))?;
        let (mut sender, mut connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        let request = http::Request::get(path)
            .header(http::header::HOST, addr.to_string())
            .header(http::header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("the request for {path}: {e}"))?;
        let answer = sender.send_request(request);
        tokio::pin!(answer);
        // The connection does the reading and writing; once it ends, the
        // answer is either in hand or never comes.
        let response = tokio::select! {
            response = &mut answer => response,
            _ = &mut connection => answer.await,
        };
        response.map(|r| r.status()).map_err(|e| e.to_string())
    };
    let status = within_attempt(exchange).await??;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A server on loopback that reads one request and answers `answer`;
    /// its address, and the request it read.
    async fn answering(answer: &'static str) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buffer = [0; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = stream.read(&mut buffer).await.unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buffer[..n]);
            }
            stream.write_all(answer.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&request).into_owned()
        });
        (addr, serving)
    }

    #[tokio::test]
    async fn an_http_probe_passes_on_2xx_only_and_says_what_it_got() {
        let (addr, serving) = answering("HTTP/1.1 204 No Content\r\n\r\n").await;
        assert_eq!(http_ok(addr, "/healthz").await, Ok(()));
        let request = serving.await.unwrap();
        assert!(request.starts_with("GET /healthz HTTP/1.1\r\n"), "{request}");
        assert!(request.to_lowercase().contains(&format!("host: {addr}\r\n")), "{request}");

        let (addr, _) = answering("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n").await;
        assert_eq!(http_ok(addr, "/").await, Err("HTTP 503 Service Unavailable".to_owned()));

        let (addr, _) = answering("SSH-2.0-OpenSSH\r\n").await;
        let answer = http_ok(addr, "/").await.unwrap_err();
        assert!(!answer.is_empty() && !answer.starts_with("HTTP"), "{answer}");

        let (addr, _) = answering("").await;
        assert!(http_ok(addr, "/").await.is_err());
    }

    #[tokio::test]
    async fn a_probe_of_a_closed_port_names_the_address() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let answer = tcp_open(addr).await.unwrap_err();
        assert!(answer.contains(&addr.to_string()), "{answer}");
        let answer = http_ok(addr, "/").await.unwrap_err();
        assert!(answer.contains(&addr.to_string()), "{answer}");
    }
}

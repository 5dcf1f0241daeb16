//! Connecting to the container engine: Docker, or Podman through its
//! Docker-compatible API.
//!
//! A dead engine is reported within a couple of seconds, once, naming the
//! address tried and how to start one, instead of as a 120 s request timeout
//! somewhere in the middle of a build.

use std::time::Duration;

use bollard::{Docker, API_DEFAULT_VERSION};

/// The variable that points clients at an engine.
pub const DOCKER_HOST_ENV: &str = "DOCKER_HOST";
/// Where the engine listens when `DOCKER_HOST` is not set.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";
/// How long a ping may take before the engine counts as dead.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an API request may wait for the engine's answer to begin.
const REQUEST_TIMEOUT_SECS: u64 = 120;

const HOW_TO_START: &str = "start one with `scripts/engine.sh` (Docker), `dockerd`, or `podman system service --time=0 unix:///path/podman.sock`, and point DOCKER_HOST at it if it does not listen on the default socket";

/// Which engine answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EngineKind {
    /// The Docker engine.
    Docker,
    /// Podman's Docker-compatible API.
    Podman,
}

/// Connecting to the engine failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The address has a scheme this client cannot speak.
    #[error("engine address `{host}` ({origin}) is not supported: use unix:///path/to.sock or tcp://host:port")]
    UnsupportedAddress {
        /// The address.
        host: String,
        /// Where the address came from.
        origin: &'static str,
    },
    /// The engine refused the connection, or its socket does not exist.
    #[error("no container engine answers at {host} ({origin}): {source}; {HOW_TO_START}")]
    Unreachable {
        /// The address tried.
        host: String,
        /// Where the address came from.
        origin: &'static str,
        /// What the client saw.
        source: bollard::errors::Error,
    },
    /// The engine accepted the connection but did not answer in time.
    #[error("the container engine at {host} ({origin}) did not answer a ping within {waited:?}; {HOW_TO_START}")]
    NoAnswer {
        /// The address tried.
        host: String,
        /// Where the address came from.
        origin: &'static str,
        /// How long it was given.
        waited: Duration,
    },
    /// Asking the engine for its version failed.
    #[error("asking the container engine for its version failed: {0}")]
    Version(#[source] bollard::errors::Error),
}

/// Connects to the engine named by `DOCKER_HOST` (`unix://` or `tcp://`),
/// else to the default socket, and pings it.
///
/// # Errors
/// [`EngineError`] when the address is unsupported or nothing answers within
/// [`PING_TIMEOUT`]; the message says how to start an engine.
///
/// # Example
/// ```no_run
/// # async fn demo() -> Result<(), e2e_infra::engine::EngineError> {
/// let docker = e2e_infra::engine::connect().await?;
/// # Ok(()) }
/// ```
pub async fn connect() -> Result<Docker, EngineError> {
    match std::env::var(DOCKER_HOST_ENV) {
        Ok(host) if !host.is_empty() => open(&host, "from DOCKER_HOST").await,
        _ => open(DEFAULT_HOST, "the default socket; DOCKER_HOST is not set").await,
    }
}

/// Connects to the engine at `host` (`unix:///path.sock` or
/// `tcp://host:port`), ignoring `DOCKER_HOST`, and pings it.
///
/// # Errors
/// As [`connect`].
pub async fn connect_to(host: &str) -> Result<Docker, EngineError> {
    open(host, "given explicitly").await
}

async fn open(host: &str, origin: &'static str) -> Result<Docker, EngineError> {
    let unreachable = |source| EngineError::Unreachable { host: host.to_owned(), origin, source };
    let docker = if host.starts_with("unix://") {
        Docker::connect_with_unix(host, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION).map_err(unreachable)?
    } else if host.starts_with("tcp://") || host.starts_with("http://") {
        Docker::connect_with_http(host, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION).map_err(unreachable)?
    } else {
        return Err(EngineError::UnsupportedAddress { host: host.to_owned(), origin });
    };
    // The client speaks the newest API by default; older engines (Docker
    // 20.10, Podman 4) refuse it, so settle on the engine's version first.
    let handshake = async {
        docker.ping().await?;
        docker.negotiate_version().await
    };
    match tokio::time::timeout(PING_TIMEOUT, handshake).await {
        Ok(Ok(docker)) => Ok(docker),
        Ok(Err(source)) => Err(unreachable(source)),
        Err(_) => Err(EngineError::NoAnswer { host: host.to_owned(), origin, waited: PING_TIMEOUT }),
    }
}

/// Tells Docker from Podman by the engine's version report.
///
/// # Errors
/// [`EngineError::Version`] when the engine does not answer.
pub async fn kind(docker: &Docker) -> Result<EngineKind, EngineError> {
    let version = docker.version().await.map_err(EngineError::Version)?;
    let podman = version
        .components
        .unwrap_or_default()
        .iter()
        .any(|c| c.name.to_ascii_lowercase().contains("podman"));
    Ok(if podman { EngineKind::Podman } else { EngineKind::Docker })
}

//! Connecting to the container engine: Docker, or Podman through its
//! Docker-compatible API.
//!
//! A missing engine (no socket, connection refused) is reported at once,
//! naming the address tried and how to start one. An engine that accepts
//! the connection but answers slowly (a loaded machine) is pinged again,
//! with growing waits, until a total budget runs out
//! ([`CONNECT_BUDGET`], or `E2E_INFRA_CONNECT_TIMEOUT`).
//!
//! Finding what a run owns goes through here too: [`label_filter`] is the
//! one shape of the engine's label filter, [`labelled_containers`] the one
//! listing of a stack's containers; and [`exec`] is the one way a command
//! runs inside a container.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::ContainerSummary;
use bollard::query_parameters::ListContainersOptionsBuilder;
use bollard::{Docker, API_DEFAULT_VERSION};
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use e2e_infra_core::names::Echo;

/// The variable that points clients at an engine.
pub const DOCKER_HOST_ENV: &str = "DOCKER_HOST";
/// Where the engine listens when `DOCKER_HOST` is not set.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";
/// How long the first ping may take; each later attempt gets twice as long
/// as the one before, within the connection budget.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// The total time [`connect`] gives an engine that accepts connections to
/// answer a ping, unless `E2E_INFRA_CONNECT_TIMEOUT` says otherwise.
pub const CONNECT_BUDGET: Duration = Duration::from_secs(30);
/// Overrides [`CONNECT_BUDGET`]: a number of seconds (`45`) or a duration
/// with unit (`45s`, `2m`, `500ms`).
pub const CONNECT_BUDGET_ENV: &str = "E2E_INFRA_CONNECT_TIMEOUT";
/// The oldest engine API this project speaks: Docker 20.10 and Podman 4's.
pub const MIN_API_VERSION: (usize, usize) = (1, 41);
/// The pause between a failed ping and the next one.
const RETRY_PAUSE: Duration = Duration::from_millis(250);
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
    #[error("no container engine answers at {host} ({origin}); {HOW_TO_START}")]
    Unreachable {
        /// The address tried.
        host: String,
        /// Where the address came from.
        origin: &'static str,
        /// What the client saw.
        source: bollard::errors::Error,
    },
    /// The engine accepted the connection but did not answer in time.
    #[error("the container engine at {host} ({origin}) did not answer {attempts} ping(s) within {waited:?}; it may be frozen or overloaded: check it with `docker info` (or restart the Podman service), or give it longer with {CONNECT_BUDGET_ENV}; {HOW_TO_START}")]
    NoAnswer {
        /// The address tried.
        host: String,
        /// Where the address came from.
        origin: &'static str,
        /// How long it was given in all.
        waited: Duration,
        /// How many pings were sent.
        attempts: u32,
    },
    /// An `E2E_INFRA_*` variable holds a value that cannot be used.
    #[error(transparent)]
    Env(#[from] EnvError),
    /// Asking the engine for its version failed.
    #[error("asking the container engine for its version failed")]
    Version(#[source] bollard::errors::Error),
    /// The engine speaks an API older than this project needs.
    #[error("the container engine at {host} ({origin}) is {version}, whose API {api} is older than the {}.{} this project needs (Docker 20.10 or newer, Podman 4 or newer); upgrade the engine, or point DOCKER_HOST at a newer one", MIN_API_VERSION.0, MIN_API_VERSION.1)]
    TooOld {
        /// The address tried.
        host: String,
        /// Where the address came from.
        origin: &'static str,
        /// The engine and its version, as it reports them.
        version: String,
        /// The API version it speaks.
        api: String,
    },
}

/// Connects to the engine named by `DOCKER_HOST` (`unix://` or `tcp://`),
/// else to the default socket, and pings it, retrying with growing waits
/// within the connection budget ([`CONNECT_BUDGET`] or
/// `E2E_INFRA_CONNECT_TIMEOUT`).
///
/// # Errors
/// [`EngineError`] when the address is unsupported, the socket does not
/// exist or refuses the connection (at once), or the engine does not answer
/// within the budget; the message says how to start an engine.
///
/// # Example
/// ```no_run
/// # async fn demo() -> Result<(), e2e_infra::engine::EngineError> {
/// let docker = e2e_infra::engine::connect().await?;
/// # Ok(()) }
/// ```
pub async fn connect() -> Result<Docker, EngineError> {
    check_env_text()?;
    let budget = budget_from_env()?;
    match std::env::var(DOCKER_HOST_ENV) {
        Ok(host) if !host.is_empty() => open(&host, "from DOCKER_HOST", budget).await,
        _ => open(DEFAULT_HOST, "the default socket; DOCKER_HOST is not set", budget).await,
    }
}

/// Connects to the engine at `host` (`unix:///path.sock` or
/// `tcp://host:port`), ignoring `DOCKER_HOST`, and pings it within the
/// connection budget.
///
/// # Errors
/// As [`connect`].
pub async fn connect_to(host: &str) -> Result<Docker, EngineError> {
    open(host, "given explicitly", budget_from_env()?).await
}

/// As [`connect_to`], with an explicit total budget for the pings (a
/// suite's setup timeout, say) instead of the default.
///
/// # Errors
/// As [`connect`].
///
/// # Example
/// ```no_run
/// # async fn demo() -> Result<(), e2e_infra::engine::EngineError> {
/// use std::time::Duration;
/// let docker = e2e_infra::engine::connect_within("unix:///var/run/docker.sock", Duration::from_secs(60)).await?;
/// # Ok(()) }
/// ```
pub async fn connect_within(host: &str, budget: Duration) -> Result<Docker, EngineError> {
    open(host, "given explicitly", budget).await
}

/// The address a client talks to, for messages about an engine that does
/// not answer.
pub fn address(docker: &Docker) -> String {
    // bollard keeps the address private but prints it in its Debug output.
    let debug = format!("{docker:?}");
    debug
        .split_once("client_addr: \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(addr, _)| addr.to_owned())
        .filter(|addr| !addr.is_empty())
        .unwrap_or_else(|| "the configured address".to_owned())
}

/// Whether the client talks to the engine through a unix socket, so that
/// the engine runs on this machine and its files are this machine's.
pub fn is_local_socket(docker: &Docker) -> bool {
    // bollard keeps the transport private but prints it in its Debug output.
    format!("{docker:?}").contains("client_type: Unix")
}

/// Shortest connection budget `E2E_INFRA_CONNECT_TIMEOUT` may give: a
/// healthy engine answers a ping well within it.
pub const MIN_CONNECT_BUDGET: Duration = Duration::from_secs(1);

fn budget_from_env() -> Result<Duration, EngineError> {
    Ok(env_duration(CONNECT_BUDGET_ENV, CONNECT_BUDGET, MIN_CONNECT_BUDGET)?)
}

/// An `E2E_INFRA_*` variable that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
// Fields named for what they hold carry no doc of their own.
#[allow(missing_docs)]
pub enum EnvError {
    /// A value that is not UTF-8, which no setting can be.
    #[error("{name} holds a value that is not UTF-8 text; set it to text or unset it")]
    NotText { name: String },
    /// A value that is not a duration.
    #[error("{name}=`{}` is not a duration: write seconds (`45`) or a number with a unit (`45s`, `2m`, `500ms`)", Echo(.value))]
    NotDuration { name: &'static str, value: String },
    /// A duration too short for anything to finish in.
    #[error("{name}=`{value}` is below the minimum of {min:?}: give at least that, or unset it for the default of {default:?}")]
    TooShort { name: &'static str, value: String, min: Duration, default: Duration },
}

/// Refuses an `E2E_INFRA_*` variable whose value is not UTF-8: read as
/// text it would look unset, and its default would be used unannounced.
///
/// # Errors
/// [`EnvError::NotText`], naming the first such variable.
pub fn check_env_text() -> Result<(), EnvError> {
    for (name, value) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("E2E_INFRA_") && value.to_str().is_none() {
            return Err(EnvError::NotText { name: Echo(&name).to_string() });
        }
    }
    Ok(())
}

/// The duration in variable `name`: `default` when unset or empty,
/// refused below `min`.
///
/// # Errors
/// [`EnvError`] for a value that is not text, not a duration or too short.
pub(crate) fn env_duration(name: &'static str, default: Duration, min: Duration) -> Result<Duration, EnvError> {
    let value = match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value,
        Err(std::env::VarError::NotUnicode(_)) => return Err(EnvError::NotText { name: name.to_owned() }),
        _ => return Ok(default),
    };
    let duration = parse_duration(value.trim()).ok_or_else(|| EnvError::NotDuration { name, value: value.clone() })?;
    if duration < min {
        return Err(EnvError::TooShort { name, value, min, default });
    }
    Ok(duration)
}

/// Reads `90`, `90s`, `500ms` or `2m`.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    match unit.trim() {
        "" | "s" => Some(Duration::from_secs(n)),
        "ms" => Some(Duration::from_millis(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        _ => None,
    }
}

/// Whether the client found nothing at the address: no socket file, or a
/// refused connection. Waiting would not make an engine appear, so these
/// fail at once.
fn nothing_listens(error: &bollard::errors::Error) -> bool {
    if matches!(error, bollard::errors::Error::SocketNotFoundError(_)) {
        return true;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(io.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) {
                return true;
            }
        }
        source = e.source();
    }
    false
}

async fn open(host: &str, origin: &'static str, budget: Duration) -> Result<Docker, EngineError> {
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
    let started = Instant::now();
    let mut wait = PING_TIMEOUT;
    let mut attempts = 0;
    loop {
        let remaining = budget.saturating_sub(started.elapsed());
        if remaining.is_zero() {
            return Err(EngineError::NoAnswer { host: host.to_owned(), origin, waited: started.elapsed(), attempts });
        }
        attempts += 1;
        let attempt = docker.clone();
        let handshake = async move {
            attempt.ping().await?;
            attempt.negotiate_version().await
        };
        match tokio::time::timeout(wait.min(remaining), handshake).await {
            Ok(Ok(docker)) => return check_api(docker, host, origin).await,
            Ok(Err(source)) if nothing_listens(&source) => return Err(unreachable(source)),
            Ok(Err(source)) => {
                tracing::debug!(host, attempts, error = %source, "the engine's ping failed; trying again");
                let remaining = budget.saturating_sub(started.elapsed());
                if remaining <= RETRY_PAUSE {
                    return Err(unreachable(source));
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(_) => tracing::debug!(host, attempts, ?wait, "the engine did not answer a ping in time; trying again"),
        }
        wait = wait.saturating_mul(2);
    }
}

/// Refuses an engine whose API (negotiated down to the engine's) is older
/// than [`MIN_API_VERSION`], naming the version it reports.
async fn check_api(docker: Docker, host: &str, origin: &'static str) -> Result<Docker, EngineError> {
    let api = docker.client_version();
    if (api.major_version, api.minor_version) >= MIN_API_VERSION {
        return Ok(docker);
    }
    let reported = docker.version().await.map_err(EngineError::Version)?;
    let name = reported.components.iter().flatten().next().map_or_else(|| "Engine".to_owned(), |c| c.name.clone());
    Err(EngineError::TooOld {
        host: host.to_owned(),
        origin,
        version: format!("{name} {}", reported.version.unwrap_or_else(|| "(version not reported)".to_owned())),
        api: format!("{}.{}", api.major_version, api.minor_version),
    })
}

/// The engine's version and storage driver, as `, from <engine> <version>
/// with storage driver <driver>`, for messages about what it gave; empty
/// when it does not say.
pub async fn describe(docker: &Docker) -> String {
    let (version, info) = tokio::join!(docker.version(), docker.info());
    let version = version.ok().and_then(|v| {
        let name = v.components.iter().flatten().next().map_or_else(|| "Engine".to_owned(), |c| c.name.clone());
        v.version.map(|version| format!("{name} {version}"))
    });
    let driver = info.ok().map(|info| {
        let kind = info
            .driver_status
            .iter()
            .flatten()
            .find(|pair| pair.len() == 2 && pair[0] == "driver-type")
            .map(|pair| format!(" ({})", pair[1]))
            .unwrap_or_default();
        format!("{}{kind}", info.driver.unwrap_or_default())
    });
    match (version, driver) {
        (Some(version), Some(driver)) => format!(", from {version} with storage driver {driver}"),
        (Some(version), None) => format!(", from {version}"),
        (None, Some(driver)) => format!(", from an engine with storage driver {driver}"),
        (None, None) => String::new(),
    }
}

/// An engine call that did not finish in the time it was given.
#[derive(Debug, thiserror::Error)]
#[error("the container engine at {address} did not finish {operation} within {waited:?}; it may be frozen or overloaded: check it with `docker info` (or restart the Podman service)")]
pub struct Silent {
    /// The engine's address.
    pub address: String,
    /// What was asked of it.
    pub operation: String,
    /// How long it was given.
    pub waited: Duration,
}

/// Runs one engine call, giving up after `limit`: a frozen engine accepts
/// requests and never answers, and the client's own timeout is far longer
/// than any setup timeout.
///
/// # Errors
/// [`Silent`], naming the engine and `operation`, when `limit` passes; the
/// call's own result otherwise.
pub async fn within<T>(
    docker: &Docker,
    limit: Duration,
    operation: &str,
    call: impl std::future::Future<Output = T>,
) -> Result<T, Silent> {
    tokio::time::timeout(limit, call).await.map_err(|_| Silent {
        address: address(docker),
        operation: operation.to_owned(),
        waited: limit,
    })
}

/// Tells Docker from Podman by the engine's version report.
///
/// # Errors
/// [`EngineError::Version`] when the engine does not answer.
pub async fn kind(docker: &Docker) -> Result<EngineKind, EngineError> {
    let version = docker.version().await.map_err(EngineError::Version)?;
    let podman = version.components.unwrap_or_default().iter().any(|c| c.name.to_ascii_lowercase().contains("podman"));
    Ok(if podman { EngineKind::Podman } else { EngineKind::Docker })
}

/// The engine's filter for objects that carry every one of `labels`
/// (`key=value`).
pub fn label_filter(labels: &[String]) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_owned(), labels.to_vec())])
}

/// Every container, running or stopped, that carries every one of `labels`;
/// the call borrows only the client.
///
/// # Errors
/// The engine's error when it cannot list containers.
pub fn labelled_containers<'a>(
    docker: &'a Docker,
    labels: &[String],
) -> impl std::future::Future<Output = Result<Vec<ContainerSummary>, bollard::errors::Error>> + 'a {
    let options = ListContainersOptionsBuilder::new().all(true).filters(&label_filter(labels)).build();
    docker.list_containers(Some(options))
}

/// The name a container listing gives, without its leading `/`; its id
/// when it has none.
pub fn container_name(summary: &ContainerSummary, id: &str) -> String {
    summary
        .names
        .as_ref()
        .and_then(|n| n.first())
        .map_or_else(|| id.to_owned(), |n| n.trim_start_matches('/').to_owned())
}

/// How long the engine may take to report an exit code after the output ends.
const EXIT_CODE_WAIT: Duration = Duration::from_secs(10);

/// What a command run in a container through the exec API left.
#[derive(Debug)]
pub struct ExecOutput {
    /// Its exit code, when the engine reported one in time.
    pub exit_code: Option<i64>,
    /// The end of its standard output.
    pub stdout: Vec<u8>,
    /// The end of its standard error.
    pub stderr: Vec<u8>,
    /// Whether all of its input was written.
    pub fed: std::io::Result<()>,
}

/// A command could not be run through the exec API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError {
    /// The engine refused or broke off a call.
    #[error("the engine's exec call failed")]
    Call(#[from] bollard::errors::Error),
    /// The engine started the command without attaching to it.
    #[error("the engine detached the command instead of attaching to it")]
    Detached,
}

/// Runs `argv` (an argument vector, never a shell line) in `container`
/// through the engine's exec API, feeding it the chunks of `stdin` if
/// given, and keeps the end of its standard output and error (at most
/// `kept.0` and `kept.1` bytes).
///
/// # Errors
/// [`ExecError`] when the engine refuses a call or does not attach.
pub async fn exec(
    docker: &Docker,
    container: &str,
    argv: &[&str],
    stdin: Option<mpsc::Receiver<Bytes>>,
    kept: (usize, usize),
) -> Result<ExecOutput, ExecError> {
    let options = CreateExecOptions {
        cmd: Some(argv.to_vec()),
        attach_stdin: Some(stdin.is_some()),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..Default::default()
    };
    let exec = docker.create_exec(container, options).await?;
    let StartExecResults::Attached { mut output, mut input } = docker.start_exec(&exec.id, None).await? else {
        return Err(ExecError::Detached);
    };
    let feed = async move {
        if let Some(mut rx) = stdin {
            while let Some(chunk) = rx.recv().await {
                input.write_all(&chunk).await?;
            }
        }
        // Closing our side is the end of file the command reads.
        input.shutdown().await
    };
    let read = async {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(frame) = output.next().await {
            match frame? {
                LogOutput::StdOut { message } => keep_tail(&mut stdout, &message, kept.0),
                LogOutput::StdErr { message } => keep_tail(&mut stderr, &message, kept.1),
                _ => {}
            }
        }
        Ok::<_, bollard::errors::Error>((stdout, stderr))
    };
    let (fed, read) = tokio::join!(feed, read);
    let (stdout, stderr) = read?;
    let exit_code = exit_code(docker, &exec.id).await?;
    Ok(ExecOutput { exit_code, stdout, stderr, fed })
}

/// The exit code once the engine reports the command finished.
async fn exit_code(docker: &Docker, exec_id: &str) -> Result<Option<i64>, bollard::errors::Error> {
    let deadline = Instant::now() + EXIT_CODE_WAIT;
    loop {
        let inspect = docker.inspect_exec(exec_id).await?;
        if inspect.running != Some(true) || Instant::now() >= deadline {
            return Ok(inspect.exit_code);
        }
        // Usually done at the first look; a short step keeps a call's cost
        // near the command's own.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Appends `more` to `buffer`, keeping only its last `limit` bytes.
pub(crate) fn keep_tail(buffer: &mut Vec<u8>, more: &[u8], limit: usize) {
    buffer.extend_from_slice(more);
    if buffer.len() > limit {
        buffer.drain(..buffer.len() - limit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine that answers every request on `socket` as Docker 18.09
    /// does (API 1.39): a ping, then its version.
    async fn old_engine(socket: std::path::PathBuf) {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut request = vec![0u8; 4096];
                while let Ok(read) = stream.read(&mut request).await {
                    if read == 0 {
                        return;
                    }
                    let body =
                        if request.starts_with(b"GET /_ping") || request[..read].windows(6).any(|w| w == b"/_ping") {
                            "OK".to_owned()
                        } else {
                            serde_json::json!({
                                "Version": "18.09.9", "ApiVersion": "1.39", "MinAPIVersion": "1.12",
                                "Components": [{ "Name": "Engine", "Version": "18.09.9" }],
                            })
                            .to_string()
                        };
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nApi-Version: 1.39\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    }

    #[tokio::test]
    async fn an_engine_too_old_for_the_api_is_named_at_connect_with_its_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("docker.sock");
        let server = tokio::spawn(old_engine(socket.clone()));
        while !socket.exists() {
            tokio::task::yield_now().await;
        }
        let host = format!("unix://{}", socket.display());
        let error = connect_within(&host, Duration::from_secs(10)).await.expect_err("too old");
        server.abort();
        assert!(matches!(&error, EngineError::TooOld { api, .. } if api == "1.39"), "{error:?}");
        let message = error.to_string();
        assert!(message.contains("Engine 18.09.9") && message.contains("1.41") && message.contains(&host), "{message}");
    }

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut buffer = Vec::new();
        keep_tail(&mut buffer, b"0123456789", 4);
        keep_tail(&mut buffer, b"ab", 4);
        assert_eq!(buffer, b"89ab");
    }

    #[test]
    fn budgets_parse_with_and_without_units() {
        assert_eq!(parse_duration("45"), Some(Duration::from_secs(45)));
        assert_eq!(parse_duration("45s"), Some(Duration::from_secs(45)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("5h"), None);
    }

    #[test]
    fn the_address_comes_from_the_client() {
        let docker = Docker::connect_with_http("tcp://127.0.0.1:1", 5, API_DEFAULT_VERSION).unwrap();
        assert_eq!(address(&docker), "127.0.0.1:1");
    }
}

//! The catalog's TOML shape and the checks that turn it into [`Component`]s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::template::{AddressField, BadReference, EnvTemplate, LogPattern};
use super::{CatalogError, Location, Paths};
use crate::image::ImageRef;
use crate::names::is_valid_name;

const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCatalog {
    #[serde(default)]
    pub(super) components: BTreeMap<Spanned<String>, RawComponent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawComponent {
    build: Option<Spanned<RawBuild>>,
    image: Option<Spanned<String>>,
    #[serde(default)]
    depends_on: Vec<Spanned<String>>,
    docker: Option<RawDocker>,
    kubernetes: Option<RawKubernetes>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuild {
    #[serde(default = "dot")]
    context: Spanned<PathBuf>,
    dockerfile: Option<Spanned<PathBuf>>,
    #[serde(default)]
    args: BTreeMap<String, String>,
    target: Option<String>,
}

fn dot() -> Spanned<PathBuf> {
    Spanned::new(0..0, PathBuf::from("."))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocker {
    #[serde(default)]
    ports: Vec<Spanned<u16>>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
    command: Option<Vec<String>>,
    ready: Option<Spanned<RawReady>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReady {
    tcp: Option<Spanned<u16>>,
    http: Option<String>,
    port: Option<Spanned<u16>>,
    log: Option<String>,
    completes: Option<bool>,
    exec: Option<Vec<String>>,
    fails_on: Option<String>,
    timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKubernetes {
    manifests: Vec<Spanned<PathBuf>>,
}

/// One checked component of the catalog.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Component {
    /// Where its image comes from.
    pub source: Source,
    /// Components that must be ready before this one starts.
    pub depends_on: Vec<Spanned<String>>,
    /// How the Docker backend runs it, if it can.
    pub docker: Option<DockerSpec>,
    /// How the Kubernetes backend runs it, if it can.
    pub kubernetes: Option<KubernetesSpec>,
    /// Byte offset of the component's name in the catalog.
    pub(crate) span: usize,
}

impl Component {
    /// Names of the components this one depends on.
    pub fn dependencies(&self) -> impl Iterator<Item = &str> {
        self.depends_on.iter().map(|d| d.get_ref().as_str())
    }
}

/// Where a component's image comes from. Exhaustive: every stage of a
/// run handles each.
#[derive(Debug, Clone)]
pub enum Source {
    /// Built here from a Dockerfile.
    Build(BuildSpec),
    /// An existing image, used as is: never rebuilt, never deleted.
    Borrowed(ImageRef),
}

/// How to build a component's image. Paths are absolute. Its fields are
/// open so that a build can be described without a catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    /// The build context directory.
    pub context: PathBuf,
    /// The Dockerfile; may lie outside the context.
    pub dockerfile: PathBuf,
    /// `--build-arg`s.
    pub args: BTreeMap<String, String>,
    /// The target stage.
    pub target: Option<String>,
}

/// How the Docker backend runs a component.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct DockerSpec {
    /// Container ports, published on 127.0.0.1 with ephemeral host ports.
    pub ports: Vec<u16>,
    /// Environment; values may contain `${dep.host}`, `${dep.port}`, `${dep.addr}`.
    pub env: BTreeMap<String, EnvTemplate>,
    /// Overrides the image's command.
    pub command: Option<Vec<String>>,
    /// When the component counts as ready.
    pub ready: Option<ReadySpec>,
}

/// A readiness probe and its timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
// Fields named for what they hold carry no doc of their own.
#[allow(missing_docs)]
pub struct ReadySpec {
    pub probe: Probe,
    /// How long to wait before giving up.
    pub timeout: Duration,
    /// A log line matching this means the component will never be ready
    /// (`password authentication failed`): the wait fails at once, quoting
    /// the line, instead of running out its timeout.
    pub fails_on: Option<LogPattern>,
}

/// The readiness probes. Exhaustive: the backends implement each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A TCP connect to this container port succeeds.
    Tcp(u16),
    /// An HTTP GET answers 2xx.
    Http(HttpProbe),
    /// A log line matches this regular expression.
    Log(LogPattern),
    /// The container runs to completion and exits 0 (migrations, seeders).
    Completes,
    /// This command, run inside the container, exits 0 (`psql -c 'SELECT 1'`,
    /// `redis-cli ping`): the service answers, not merely listens.
    Exec(Vec<String>),
}

/// An HTTP readiness probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    /// Container port.
    pub port: u16,
    /// Path, starting with `/`.
    pub path: String,
}

/// How the Kubernetes backend runs a component.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct KubernetesSpec {
    /// Manifest files (absolute paths), images written as `${image:<component>}`.
    pub manifests: Vec<PathBuf>,
}

impl RawComponent {
    pub(super) fn check(
        self,
        name: &str,
        span: usize,
        (base, paths): (&Path, Paths),
        ports: &FirstPorts,
        at: &dyn Fn(usize) -> Location,
    ) -> Result<Component, CatalogError> {
        if !is_valid_name(name) {
            return Err(CatalogError::InvalidName { location: at(span), name: name.to_owned() });
        }
        let problem = |problem: &str| CatalogError::Source {
            location: at(span),
            component: name.to_owned(),
            problem: problem.to_owned(),
        };
        let source =
            match (self.build, self.image) {
                (Some(_), Some(_)) => return Err(problem(
                    "has both `build` and `image`; keep `build` to build it here or `image` to use an existing image",
                )),
                (None, None) => return Err(problem(
                    "has neither `build` nor `image`; add `build = { dockerfile = \"...\" }` or `image = \"name:tag\"`",
                )),
                (Some(build), None) => Source::Build(check_build(name, build, (base, paths), at)?),
                (None, Some(image)) => {
                    let offset = image.span().start;
                    Source::Borrowed(ImageRef::borrowed(image.get_ref()).map_err(|e| CatalogError::Invalid {
                        location: at(offset),
                        component: name.to_owned(),
                        problem: format!("`image`: {e}"),
                    })?)
                }
            };
        if let Some(twice) = first_repeat(&self.depends_on) {
            return Err(CatalogError::Invalid {
                location: at(twice.span().start),
                component: name.to_owned(),
                problem: format!("`depends_on` lists `{}` twice; list each dependency once", twice.get_ref()),
            });
        }
        let docker = self.docker.map(|d| check_docker(name, d, (&self.depends_on, ports), at)).transpose()?;
        let kubernetes = match self.kubernetes {
            None => None,
            Some(k) => {
                let mut manifests = Vec::new();
                for m in k.manifests {
                    let path = base.join(m.get_ref());
                    if !path.is_file() {
                        return Err(CatalogError::MissingPath {
                            location: at(m.span().start),
                            component: name.to_owned(),
                            what: "manifest",
                            tried: path,
                        });
                    }
                    manifests.push(path);
                }
                Some(KubernetesSpec { manifests })
            }
        };
        Ok(Component { source, depends_on: self.depends_on, docker, kubernetes, span })
    }
}

fn check_build(
    name: &str,
    build: Spanned<RawBuild>,
    (base, paths): (&Path, Paths),
    at: &dyn Fn(usize) -> Location,
) -> Result<BuildSpec, CatalogError> {
    let build_span = build.span().start;
    let raw = build.into_inner();
    let context = base.join(raw.context.get_ref());
    let context_span = if raw.context.span().is_empty() { build_span } else { raw.context.span().start };
    let context_exists = context.is_dir();
    if !context_exists && paths == Paths::All {
        return Err(CatalogError::MissingPath {
            location: at(context_span),
            component: name.to_owned(),
            what: "build context",
            tried: context,
        });
    }
    let (dockerfile, dockerfile_span) = match &raw.dockerfile {
        Some(d) => (base.join(d.get_ref()), d.span().start),
        None => (context.join("Dockerfile"), build_span),
    };
    let made_later = !context_exists && dockerfile.starts_with(&context);
    if !dockerfile.is_file() && !made_later {
        return Err(CatalogError::MissingPath {
            location: at(dockerfile_span),
            component: name.to_owned(),
            what: "Dockerfile",
            tried: dockerfile,
        });
    }
    Ok(BuildSpec { context, dockerfile, args: raw.args, target: raw.target })
}

/// Each component's first port of `docker.ports`; `None` for a component
/// without one.
pub(super) type FirstPorts = BTreeMap<String, Option<u16>>;

impl RawCatalog {
    /// Each component's first Docker port, for the env references of the
    /// others.
    pub(super) fn first_ports(&self) -> FirstPorts {
        self.components
            .iter()
            .map(|(name, c)| {
                let port = c.docker.as_ref().and_then(|d| d.ports.first().map(|p| *p.get_ref()));
                (name.get_ref().clone(), port)
            })
            .collect()
    }
}

fn check_docker(
    name: &str,
    raw: RawDocker,
    (depends_on, ports): (&[Spanned<String>], &FirstPorts),
    at: &dyn Fn(usize) -> Location,
) -> Result<DockerSpec, CatalogError> {
    let invalid = |offset: usize, problem: String| CatalogError::Invalid {
        location: at(offset),
        component: name.to_owned(),
        problem,
    };
    for port in &raw.ports {
        check_port(port, "`ports`", &invalid)?;
    }
    if let Some(twice) = first_repeat(&raw.ports) {
        return Err(invalid(
            twice.span().start,
            format!("`ports` lists {} twice; list each port once", twice.get_ref()),
        ));
    }
    let mut env = BTreeMap::new();
    for (key, value) in raw.env {
        let template = check_env(&key, &value, (depends_on, ports), &invalid)?;
        env.insert(key, template);
    }
    let first_port = raw.ports.first().map(|p| *p.get_ref());
    let ready = raw.ready.map(|ready| check_ready(ready, first_port, &invalid)).transpose()?;
    Ok(DockerSpec { ports: raw.ports.into_iter().map(Spanned::into_inner).collect(), env, command: raw.command, ready })
}

/// One env value: its references name dependencies, and a port only of one
/// that lists ports.
fn check_env(
    key: &str,
    value: &Spanned<String>,
    (depends_on, ports): (&[Spanned<String>], &FirstPorts),
    invalid: &dyn Fn(usize, String) -> CatalogError,
) -> Result<EnvTemplate, CatalogError> {
    let offset = value.span().start;
    let unknown_field = |bad: BadReference| {
        match bad {
        BadReference::UnknownField { reference, dependency: dep } => invalid(
            offset,
            format!("env `{key}`: unknown reference `${{{reference}}}`; use `${{{dep}.host}}`, `${{{dep}.port}}` or `${{{dep}.addr}}`"),
        ),
        BadReference::Unclosed(rest) => invalid(
            offset,
            format!("env `{key}`: `{rest}` has no closing `}}`; a `${{` starts a reference such as `${{db.addr}}`: close it"),
        ),
    }
    };
    let template = EnvTemplate::parse(value.get_ref()).map_err(unknown_field)?;
    for (dep, field) in template.dependencies() {
        if !depends_on.iter().any(|d| d.get_ref() == dep) {
            let reference = match field {
                AddressField::Host => "host",
                AddressField::Port(_) => "port",
                AddressField::Addr(_) => "addr",
            };
            return Err(invalid(
                offset,
                format!("env `{key}` refers to `${{{dep}.{reference}}}` but `{dep}` is not in depends_on; add it there so it starts first"),
            ));
        }
    }
    // A dependency the catalog lacks is reported by the dependency
    // check, with its suggestion; here only a known one without ports.
    template
        .with_ports(|dep| match ports.get(dep) {
            Some(port) => *port,
            None => Some(0),
        })
        .map_err(|dep| {
            invalid(
                offset,
                format!("env `{key}` uses the port of `{dep}`, but `{dep}` lists no `ports` in its `docker` section; add the port it listens on there"),
            )
        })
}

/// The `ready` section: its timeout and exactly one probe. An HTTP probe
/// without a `port` probes `first_port`, the first of `ports`.
fn check_ready(
    ready: Spanned<RawReady>,
    first_port: Option<u16>,
    invalid: &dyn Fn(usize, String) -> CatalogError,
) -> Result<ReadySpec, CatalogError> {
    let offset = ready.span().start;
    let r = ready.into_inner();
    let timeout = match &r.timeout {
        None => DEFAULT_READY_TIMEOUT,
        Some(t) => humantime::parse_duration(t)
            .map_err(|e| invalid(offset, format!("ready.timeout `{t}`: {e}; write it like \"30s\" or \"2m\"")))?,
    };
    let mut probes = Vec::new();
    if let Some(port) = &r.tcp {
        check_port(port, "`ready.tcp`", invalid)?;
        probes.push(Probe::Tcp(*port.get_ref()));
    }
    if let Some(port) = &r.port {
        check_port(port, "`ready.port`", invalid)?;
    }
    if let Some(path) = r.http {
        let port = r
            .port
            .map(Spanned::into_inner)
            .or(first_port)
            .ok_or_else(|| invalid(offset, "ready.http needs `port` (or a port in `ports`)".to_owned()))?;
        if !path.starts_with('/') {
            return Err(invalid(offset, format!("ready.http path `{path}` must start with `/`")));
        }
        probes.push(Probe::Http(HttpProbe { port, path }));
    }
    if let Some(pattern) = r.log {
        let pattern = LogPattern::new(&pattern)
            .map_err(|e| invalid(offset, format!("ready.log is not a valid regular expression: {e}")))?;
        probes.push(Probe::Log(pattern));
    }
    if r.completes == Some(true) {
        probes.push(Probe::Completes);
    }
    if let Some(argv) = r.exec {
        if argv.first().is_none_or(String::is_empty) {
            return Err(invalid(offset, "ready.exec needs a command: `exec = [\"redis-cli\", \"ping\"]`".to_owned()));
        }
        probes.push(Probe::Exec(argv));
    }
    let fails_on = r
        .fails_on
        .map(|pattern| {
            LogPattern::new(&pattern)
                .map_err(|e| invalid(offset, format!("ready.fails_on is not a valid regular expression: {e}")))
        })
        .transpose()?;
    if probes.len() != 1 {
        return Err(invalid(
            offset,
            "`ready` takes exactly one probe: `tcp = PORT`, `http = \"/path\"` (with `port`), `log = \"regex\"`, `completes = true` or `exec = [\"command\", ...]`".to_owned(),
        ));
    }
    Ok(ReadySpec { probe: probes.remove(0), timeout, fails_on })
}

/// Port 0 asks the system for any free port: a container cannot be reached
/// or probed there.
fn check_port(
    port: &Spanned<u16>,
    key: &str,
    invalid: &dyn Fn(usize, String) -> CatalogError,
) -> Result<(), CatalogError> {
    if *port.get_ref() == 0 {
        return Err(invalid(
            port.span().start,
            format!("{key}: port 0 cannot be reached; give the port the container listens on, 1 to 65535"),
        ));
    }
    Ok(())
}

/// The first value of `values` that repeats an earlier one.
fn first_repeat<T: Ord>(values: &[Spanned<T>]) -> Option<&Spanned<T>> {
    let mut seen = std::collections::BTreeSet::new();
    values.iter().find(|v| !seen.insert(v.get_ref()))
}

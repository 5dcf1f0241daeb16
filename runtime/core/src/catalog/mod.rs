//! The component catalog: `e2e-infra.toml`, what a workspace can stand up.
//!
//! The format is documented in `docs/catalog.md`. Parsing keeps the byte span
//! of every key a later check may complain about, so each error names the file,
//! the line and the key.

mod schema;
mod template;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::names::{Echo, NAME_RULE};
use crate::suggest::Unknown;

pub use schema::{BuildSpec, Component, DockerSpec, HttpProbe, KubernetesSpec, Probe, ReadySpec, Source};
pub use template::{AddressField, EnvPart, EnvTemplate, LogPattern};

/// The file name looked for when walking up from a directory.
pub const CATALOG_FILE: &str = "e2e-infra.toml";
/// Environment variable naming the catalog file explicitly.
pub const CATALOG_ENV: &str = "E2E_INFRA_CONFIG";
/// Most components a catalog may declare: far more than one test run can
/// stand up, few enough that planning stays instant.
pub const MAX_COMPONENTS: usize = 1000;
/// Largest catalog file read, in bytes: room for [`MAX_COMPONENTS`]
/// components, and refused before the parser spends seconds on more.
pub const MAX_CATALOG_BYTES: usize = 1 << 20;

/// A position in a catalog file, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The catalog file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// What is wrong with a catalog.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
// Fields named for what they hold carry no doc of their own.
#[allow(missing_docs)]
pub enum CatalogError {
    /// No catalog was named and none was found.
    #[error("no {CATALOG_FILE} found in {start} or any parent directory; create one (see docs/catalog.md), name one with the attribute's `catalog` key or the command's `--config`, or point {CATALOG_ENV} at it")]
    NotFound {
        /// Where the search started.
        start: PathBuf,
    },
    /// The catalog named outright does not exist.
    #[error("catalog not found at {path} (from {named_by})")]
    Missing {
        /// The path tried.
        path: PathBuf,
        /// What named it: the `catalog` key, `--config` or the variable.
        named_by: &'static str,
    },
    /// The catalog could not be read.
    #[error("reading catalog {path} failed")]
    Read { path: PathBuf, source: std::io::Error },
    /// TOML syntax, a duplicate key, an unknown key or a value of the wrong type.
    #[error("{location}: {message}")]
    Syntax {
        location: Location,
        /// The parser's message (for unknown keys it lists the valid ones).
        message: String,
    },
    /// A catalog with no components.
    #[error("{path}: the catalog declares no components; add a [components.<name>] table")]
    Empty { path: PathBuf },
    /// A catalog with more components than any run can stand up.
    #[error("{path}: the catalog declares {count} components; a catalog may declare at most {MAX_COMPONENTS}: split it, one catalog per group of suites")]
    TooLarge { path: PathBuf, count: usize },
    /// A catalog file larger than any catalog of [`MAX_COMPONENTS`] needs.
    #[error("{path}: the catalog is {bytes} bytes; a catalog may be at most {MAX_CATALOG_BYTES} bytes: split it, one catalog per group of suites")]
    TooManyBytes { path: PathBuf, bytes: usize },
    /// A component name that cannot become an image name.
    #[error("{location}: component name `{}` is invalid: {NAME_RULE}", Echo(.name))]
    InvalidName { location: Location, name: String },
    /// A component that is both built and borrowed, or neither.
    #[error("{location}: component `{component}` {problem}")]
    Source {
        location: Location,
        component: String,
        /// What is wrong.
        problem: String,
    },
    /// `depends_on` names a component the catalog does not have.
    #[error("{location}: component `{component}` depends on an {unknown}")]
    UnknownDependency {
        location: Location,
        /// The depending component.
        component: String,
        unknown: Unknown,
    },
    /// A dependency cycle.
    #[error("{location}: dependency cycle: {}", cycle.join(" -> "))]
    Cycle {
        /// Where the first component of the cycle is declared.
        location: Location,
        /// The cycle, first name repeated at the end.
        cycle: Vec<String>,
    },
    /// A build path that does not exist.
    #[error("{location}: component `{component}`: {what} not found at {tried}")]
    MissingPath {
        location: Location,
        component: String,
        /// "Dockerfile" or "build context" or "manifest".
        what: &'static str,
        /// The path tried.
        tried: PathBuf,
    },
    /// A readiness probe or env reference that does not hold together.
    #[error("{location}: component `{component}`: {problem}")]
    Invalid {
        location: Location,
        component: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
}

/// Which of the paths a catalog names must exist when it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Paths {
    /// Every one, as before a build.
    All,
    /// Those kept with the sources: not a build context, nor a Dockerfile
    /// inside a context that does not exist yet.
    Sources,
}

/// A parsed and checked catalog.
#[derive(Debug, Clone)]
pub struct Catalog {
    path: PathBuf,
    components: BTreeMap<String, Component>,
}

impl Catalog {
    /// Finds the catalog: the path `given` outright (with what named it),
    /// else `env`, the value of [`CATALOG_ENV`], else the nearest
    /// [`CATALOG_FILE`] in `start` or a parent. Relative paths are relative
    /// to `start`: the crate's directory when the attribute compiles (where
    /// cargo also runs its tests), the current directory for the command.
    ///
    /// # Errors
    /// [`CatalogError::Missing`] when a named file does not exist,
    /// [`CatalogError::NotFound`] when the search finds none.
    pub fn locate(
        given: Option<(&Path, &'static str)>,
        env: Option<&OsStr>,
        start: &Path,
    ) -> Result<PathBuf, CatalogError> {
        let named = given.or_else(|| env.map(|env| (Path::new(env), CATALOG_ENV)));
        if let Some((path, named_by)) = named {
            let path = start.join(path);
            return if path.is_file() { Ok(path) } else { Err(CatalogError::Missing { path, named_by }) };
        }
        start
            .ancestors()
            .map(|dir| dir.join(CATALOG_FILE))
            .find(|candidate| candidate.is_file())
            .ok_or_else(|| CatalogError::NotFound { start: start.to_owned() })
    }

    /// Reads and checks the catalog at `path`, every path it names included.
    ///
    /// # Errors
    /// Any [`CatalogError`], naming the file, line and key at fault.
    pub fn load(path: &Path) -> Result<Self, CatalogError> {
        Self::read(path, Paths::All)
    }

    /// Reads and checks the catalog at `path` as the attribute does at
    /// compile time: a build context may hold what a build step makes later,
    /// so it, and a Dockerfile inside it, need not exist yet.
    ///
    /// # Errors
    /// Any [`CatalogError`], naming the file, line and key at fault.
    pub fn load_sources(path: &Path) -> Result<Self, CatalogError> {
        Self::read(path, Paths::Sources)
    }

    fn read(path: &Path, paths: Paths) -> Result<Self, CatalogError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| CatalogError::Read { path: path.to_owned(), source })?;
        Self::parse_checking(path, &text, paths)
    }

    /// Parses and checks catalog text; `path` is used for messages and to
    /// resolve relative build paths.
    ///
    /// # Errors
    /// Any [`CatalogError`], naming the file, line and key at fault.
    pub fn parse(path: &Path, text: &str) -> Result<Self, CatalogError> {
        Self::parse_checking(path, text, Paths::All)
    }

    fn parse_checking(path: &Path, text: &str, paths: Paths) -> Result<Self, CatalogError> {
        if text.len() > MAX_CATALOG_BYTES {
            return Err(CatalogError::TooManyBytes { path: path.to_owned(), bytes: text.len() });
        }
        let base = path.parent().map(Path::to_owned).unwrap_or_default();
        let raw: schema::RawCatalog = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            CatalogError::Syntax {
                location: locate(path, text, span.start),
                message: syntax_message(text, span, e.message()),
            }
        })?;
        let at = |offset: usize| locate(path, text, offset);
        if raw.components.is_empty() {
            return Err(CatalogError::Empty { path: path.to_owned() });
        }
        if raw.components.len() > MAX_COMPONENTS {
            return Err(CatalogError::TooLarge { path: path.to_owned(), count: raw.components.len() });
        }
        let ports = raw.first_ports();
        let mut components = BTreeMap::new();
        for (name, raw_component) in raw.components {
            let component = raw_component.check(name.get_ref(), name.span().start, (&base, paths), &ports, &at)?;
            components.insert(name.into_inner(), component);
        }
        let catalog = Self { path: path.to_owned(), components };
        catalog.check_dependencies(&at)?;
        Ok(catalog)
    }

    /// The catalog file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The components by name.
    pub fn components(&self) -> &BTreeMap<String, Component> {
        &self.components
    }

    /// One component.
    pub fn get(&self, name: &str) -> Option<&Component> {
        self.components.get(name)
    }

    /// Component names, comma separated, for messages.
    pub fn known_names(&self) -> String {
        crate::suggest::list(self.components.keys().map(String::as_str))
    }

    /// `name`, not a component of this catalog, as messages report it.
    pub fn unknown(&self, name: &str) -> Unknown {
        Unknown::new("component", name, self.components.keys().map(String::as_str))
    }

    fn check_dependencies(&self, at: &dyn Fn(usize) -> Location) -> Result<(), CatalogError> {
        for (name, component) in &self.components {
            for dep in &component.depends_on {
                if !self.components.contains_key(dep.get_ref()) {
                    return Err(CatalogError::UnknownDependency {
                        location: at(dep.span().start),
                        component: name.clone(),
                        unknown: self.unknown(dep.get_ref()),
                    });
                }
            }
        }
        // Depth-first search with colours, on a stack of its own rather
        // than the thread's (a chain may be as long as the catalog); the
        // first back edge found gives the cycle.
        let mut done: BTreeSet<&str> = BTreeSet::new();
        for root in self.components.keys() {
            if let Some(cycle) = self.find_cycle(root, &mut done) {
                let first = &self.components[&cycle[0]];
                return Err(CatalogError::Cycle { location: at(first.span), cycle });
            }
        }
        Ok(())
    }

    /// The first cycle reachable from `root`, first name repeated at the
    /// end; marks what it finished in `done`.
    fn find_cycle<'a>(&'a self, root: &'a str, done: &mut BTreeSet<&'a str>) -> Option<Vec<String>> {
        // The path from `root`, each name with how many of its
        // dependencies were visited.
        let mut path: Vec<(&str, usize)> = vec![(root, 0)];
        while let Some((name, next)) = path.last_mut() {
            let Some(dep) = self.components[*name].depends_on.get(*next) else {
                done.insert(name);
                path.pop();
                continue;
            };
            *next += 1;
            let dep = dep.get_ref().as_str();
            if let Some(start) = path.iter().position(|(n, _)| *n == dep) {
                let mut cycle: Vec<String> = path[start..].iter().map(|(n, _)| (*n).to_owned()).collect();
                cycle.push(dep.to_owned());
                return Some(cycle);
            }
            if !done.contains(dep) {
                path.push((dep, 0));
            }
        }
        None
    }
}

/// The parser's message with the offending line quoted: messages such as
/// "invalid type" or "duplicate key" do not name the key themselves.
fn syntax_message(text: &str, span: std::ops::Range<usize>, message: &str) -> String {
    let mut message = match text.get(span.clone()) {
        Some(key) if message == "duplicate key" && !key.is_empty() => {
            format!("duplicate key `{key}`: each component and each key may be declared once")
        }
        _ => message.to_owned(),
    };
    let start = text.get(..span.start).and_then(|t| t.rfind('\n')).map_or(0, |i| i + 1);
    let end = text.get(span.start..).and_then(|t| t.find('\n')).map_or(text.len(), |i| span.start + i);
    if let Some(line) = text.get(start..end).map(str::trim).filter(|l| !l.is_empty()) {
        message = format!("{message} (in `{line}`)");
    }
    message
}

/// Turns a byte offset into a file:line:column location.
fn locate(path: &Path, text: &str, offset: usize) -> Location {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Location { file: path.to_owned(), line, column }
}

#[cfg(test)]
mod tests;

//! The failure report: a folder that holds what every component of a stack
//! was doing when a test or its setup failed.
//!
//! It is written before anything is torn down, by the process that saw the
//! failure: the setup process when setup fails (on Docker before the partly
//! started stack is removed), the test's process when a test fails while
//! the stack is up, and `e2e-infra report` on demand. Its folder is
//! `<root>/<consumer>/<run>/<case>/` where `<case>` is `setup`, the failed
//! test's name, or `on-demand`, and `<root>` is:
//!
//! 1. `E2E_INFRA_REPORT_DIR` when set;
//! 2. else `<target>/e2e-infra`, where `<target>` is `CARGO_TARGET_DIR`
//!    when set (a relative one against the current directory);
//! 3. else the nearest folder above the running executable that cargo
//!    marked as its target directory (it holds `CACHEDIR.TAG`): test
//!    binaries run from `<target>/<profile>/deps/`;
//! 4. else the nearest `target` folder holding `CACHEDIR.TAG` from the
//!    current directory up, else `target` in the current directory.
//!
//! The folder holds `summary.txt` (what failed, what the folder holds, what
//! could not be collected), `plan.json`, `timings.txt`,
//! `build/<component>.log`, `components/<component>/` (logs and state, per
//! backend: [`docker`], [`kube`]) and, on Kubernetes, `events.txt` and
//! `node-images.txt`. Every log keeps at most [`LOG_LIMIT`] bytes, its end,
//! behind a marker line. Every call to the engine or the cluster is bounded
//! by [`CALL_LIMIT`]: a dead engine makes a shorter report, never a hung one.

pub mod docker;
pub mod kube;
pub mod logs;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::backend::Backend;
use crate::error::error_chain;
use crate::plan::{is_safe_name, Plan, RunKey};
use crate::record::{Placement, StackRecord, Witness};
use crate::stack::teardown::RunStack;
use crate::state::{Found, RunDir};

/// Overrides the folder that holds every report (default: `<target>/e2e-infra`).
pub const REPORT_DIR_ENV: &str = "E2E_INFRA_REPORT_DIR";
/// The most bytes one log file of a report keeps (its end).
pub const LOG_LIMIT: usize = 1024 * 1024;
/// The longest one engine or cluster call of a report may take.
pub const CALL_LIMIT: Duration = Duration::from_secs(15);
/// The case name of a report written on demand.
pub const ON_DEMAND: &str = "on-demand";
/// The case name of a report of a failed setup.
pub const SETUP: &str = "setup";

/// Writing a report failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// The report folder could not be made.
    #[error("creating the report folder `{}` failed; free space there or point {REPORT_DIR_ENV} at a writable folder", path.display())]
    Folder {
        /// The folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A folder on the way to the report is a symlink, not a folder, or
    /// another user's: it is neither followed nor cleared.
    #[error("the report folder `{}` {why}, so no report is written through it; remove it, or point {REPORT_DIR_ENV} at a folder of your own", path.display())]
    Untrusted {
        /// The folder on the way.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A file of the report could not be written.
    #[error("writing the report file `{}` failed; free space there or point {REPORT_DIR_ENV} at a writable folder", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// What the run knows besides the live stack.
#[derive(Debug, Clone)]
pub struct Evidence {
    /// Which stack.
    pub key: RunKey,
    /// The planned components, in dependency order.
    pub components: Vec<String>,
    /// What failed, in words: the setup error or the failed test.
    pub failure: String,
    /// The plan as JSON.
    pub plan: Option<serde_json::Value>,
    /// The run's timings table.
    pub timings: Option<String>,
    /// Per built component, the last build output.
    pub builds: BTreeMap<String, String>,
}

impl Evidence {
    /// What the plan alone tells, for `failure`.
    pub fn of_plan(plan: &Plan, failure: &str) -> Self {
        Self {
            key: plan.key().clone(),
            components: plan.components().iter().map(|c| c.name.clone()).collect(),
            failure: failure.to_owned(),
            plan: serde_json::to_value(plan).ok(),
            timings: None,
            builds: BTreeMap::new(),
        }
    }

    /// What the key alone tells, for `failure`: a stack found on the engine
    /// or cluster whose run recorded nothing here.
    pub fn of_key(key: RunKey, failure: &str) -> Self {
        Self {
            key,
            components: Vec::new(),
            failure: failure.to_owned(),
            plan: None,
            timings: None,
            builds: BTreeMap::new(),
        }
    }

    /// What a recorded stack tells, for `failure`.
    pub fn of_record(record: &StackRecord, failure: &str) -> Self {
        Self {
            key: record.key.clone(),
            components: record.components.clone(),
            failure: failure.to_owned(),
            plan: record.plan.clone(),
            timings: Some(record.summary.clone()),
            builds: record.builds.clone(),
        }
    }
}

/// The folder that holds every report; see the module's documentation.
pub fn root() -> PathBuf {
    let here = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let set = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    root_from(set(REPORT_DIR_ENV), set("CARGO_TARGET_DIR"), std::env::current_exe().ok(), &here)
}

/// [`root`] from its inputs: the two variables, the running executable and
/// the current directory.
fn root_from(report_dir: Option<PathBuf>, target_dir: Option<PathBuf>, exe: Option<PathBuf>, here: &Path) -> PathBuf {
    if let Some(dir) = report_dir {
        return here.join(dir);
    }
    if let Some(dir) = target_dir {
        return here.join(dir).join("e2e-infra");
    }
    // Cargo marks every target directory it makes with this file.
    let marked = |dir: &Path| dir.join("CACHEDIR.TAG").is_file();
    let from_exe = exe.and_then(|exe| exe.ancestors().skip(1).find(|d| marked(d)).map(Path::to_owned));
    let from_here = || here.ancestors().map(|d| d.join("target")).find(|d| marked(d));
    from_exe.or_else(from_here).unwrap_or_else(|| here.join("target")).join("e2e-infra")
}

/// The folder of one report: `<root>/<consumer>/<run>/<case>`. A case
/// name that cannot be one path component is made into one; the key's
/// names always are one.
pub fn case_dir(key: &RunKey, case: &str) -> PathBuf {
    root().join(key.consumer().as_str()).join(key.run().as_str()).join(path_name(case))
}

/// `name` as one safe path component: anything but letters, digits, `-`,
/// `_` and `.` becomes `_`.
fn path_name(name: &str) -> String {
    if is_safe_name(name) {
        return name.to_owned();
    }
    let safe: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect();
    let safe = safe.trim_start_matches('.');
    if safe.is_empty() {
        "unnamed".to_owned()
    } else {
        safe.chars().take(128).collect()
    }
}

/// A report folder being written. Files that cannot be had are noted, not
/// fatal: the summary lists them.
#[derive(Debug)]
pub(crate) struct Folder {
    path: PathBuf,
    problems: Mutex<Vec<String>>,
    failed_write: Mutex<Option<ReportError>>,
}

impl Folder {
    fn create(path: PathBuf) -> Result<Self, ReportError> {
        Self::create_under(&root(), path)
    }

    /// Creates `path`, a folder below `root`. Each folder between them is
    /// made or checked on the way down: one that is a symlink, not a
    /// folder, or another user's is refused, so a report never clears or
    /// writes a folder somewhere else. The root itself is the user's choice.
    fn create_under(root: &Path, path: PathBuf) -> Result<Self, ReportError> {
        let folder_error = |path: &Path| {
            let path = path.to_owned();
            move |source| ReportError::Folder { path, source }
        };
        if let Ok(below) = path.strip_prefix(root) {
            std::fs::create_dir_all(root).map_err(folder_error(root))?;
            let uid = crate::state::current_uid().ok();
            let mut dir = root.to_owned();
            for part in below.components() {
                dir.push(part);
                let meta = match std::fs::symlink_metadata(&dir) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        std::fs::create_dir(&dir).map_err(folder_error(&dir))?;
                        continue;
                    }
                    meta => meta.map_err(folder_error(&dir))?,
                };
                let why = if meta.file_type().is_symlink() {
                    Some("is a symlink".to_owned())
                } else if !meta.is_dir() {
                    Some("is not a folder".to_owned())
                } else {
                    uid.filter(|uid| *uid != meta.uid()).map(|_| format!("is owned by uid {}", meta.uid()))
                };
                if let Some(why) = why {
                    return Err(ReportError::Untrusted { path: dir, why });
                }
            }
        }
        // A report of the same case from an earlier attempt (a retried
        // test) would mix with this one.
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(ReportError::Folder { path, source }),
        }
        std::fs::create_dir_all(&path).map_err(|source| ReportError::Folder { path: path.clone(), source })?;
        Ok(Self { path, problems: Mutex::default(), failed_write: Mutex::default() })
    }

    /// Writes `content` to `relative` (parents created).
    pub fn write(&self, relative: &str, content: &[u8]) {
        let path = self.path.join(relative);
        let written = match path.parent() {
            Some(parent) => std::fs::create_dir_all(parent).and_then(|()| std::fs::write(&path, content)),
            None => std::fs::write(&path, content),
        };
        if let Err(source) = written {
            let mut first = self.failed_write.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            first.get_or_insert(ReportError::File { path, source });
        }
    }

    /// Writes a log, keeping its last [`LOG_LIMIT`] bytes behind a marker.
    pub(crate) fn write_log(&self, relative: &str, log: &[u8]) {
        self.write(relative, &bounded(log, LOG_LIMIT));
    }

    /// Notes something that could not be collected.
    pub(crate) fn problem(&self, text: String) {
        self.problems.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(text);
    }

    fn finish(self, summary: String) -> Result<PathBuf, ReportError> {
        let problems = self.problems.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut summary = summary;
        if problems.is_empty() {
            summary.push_str("\neverything was collected\n");
        } else {
            summary.push_str("\nnot collected:\n");
            for problem in &problems {
                let _ = writeln!(summary, "  - {}", problem.replace('\n', "\n    "));
            }
        }
        std::fs::write(self.path.join("summary.txt"), summary)
            .map_err(|source| ReportError::File { path: self.path.join("summary.txt"), source })?;
        match self.failed_write.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner) {
            Some(error) => Err(error),
            None => Ok(self.path),
        }
    }
}

/// The last `limit` bytes of `log`, after a marker line when bytes were cut.
pub fn bounded(log: &[u8], limit: usize) -> Vec<u8> {
    if log.len() <= limit {
        return log.to_vec();
    }
    let mut start = log.len() - limit;
    // Start on a line of its own.
    if let Some(newline) = log[start..].iter().position(|b| *b == b'\n') {
        start += newline + 1;
    }
    let mut out =
        format!("[e2e-infra: earlier output was cut; its last {} bytes follow]\n", log.len() - start).into_bytes();
    out.extend_from_slice(&log[start..]);
    out
}

/// Appends `chunk` to a log being read, holding at most twice
/// [`LOG_LIMIT`]: beyond that only the end is kept, one byte more than the
/// limit, so that [`Folder::write_log`] still marks the cut.
pub(crate) fn append_bounded(log: &mut Vec<u8>, chunk: &[u8]) {
    log.extend_from_slice(chunk);
    if log.len() > 2 * LOG_LIMIT {
        log.drain(..log.len() - LOG_LIMIT - 1);
    }
}

/// One backend's view of a stack: what it writes into a report.
pub(crate) trait Collect {
    /// Writes each component's logs and state into `folder` under
    /// `components/<component>/`, and the backend's own files. Calls are
    /// bounded by [`CALL_LIMIT`]; what cannot be had goes to
    /// [`Folder::problem`].
    fn collect(&self, folder: &Folder, evidence: &Evidence) -> impl Future<Output = ()> + Send;
}

/// Writes the report of `evidence` into `dir`, with what `collector` finds.
///
/// # Errors
/// [`ReportError`] when the folder or one of its files cannot be written;
/// what cannot be collected is listed in its `summary.txt` instead.
pub(crate) async fn write(dir: PathBuf, evidence: &Evidence, collector: &impl Collect) -> Result<PathBuf, ReportError> {
    let folder = Folder::create(dir)?;
    match &evidence.plan {
        Some(plan) => folder.write("plan.json", serde_json::to_string_pretty(plan).unwrap_or_default().as_bytes()),
        None => folder.problem("plan.json: the plan is recorded only for stacks of test runs".to_owned()),
    }
    match &evidence.timings {
        Some(table) => folder.write("timings.txt", table.as_bytes()),
        None => folder.problem("timings.txt: no stage finished, or the stack was not set up by a test run".to_owned()),
    }
    for (component, output) in &evidence.builds {
        folder.write_log(&format!("build/{}.log", path_name(component)), output.as_bytes());
    }
    collector.collect(&folder, evidence).await;
    let blind = !folder.problems.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_empty();
    let missing: &[u8] = if blind {
        b"nothing of this component was found, but the engine or cluster was not fully read: see summary.txt\n"
    } else {
        b"not started: nothing of this component exists on the engine or in the namespace\n"
    };
    for component in &evidence.components {
        if !folder.path.join("components").join(path_name(component)).is_dir() {
            folder.write(&format!("components/{}/state.txt", path_name(component)), missing);
        }
    }
    let components = if evidence.components.is_empty() {
        format!("{} (as found; the plan is not recorded)", listing(&folder.path.join("components"), false).join(", "))
    } else {
        evidence.components.join(", ")
    };
    let mut summary = format!(
        "e2e-infra report of the `{}` stack, run {}\nwritten at {}\n\nwhat failed:\n  {}\n\ncomponents: {components}\n\nfiles:\n",
        evidence.key.consumer(),
        evidence.key.run(),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        evidence.failure.trim_end().replace('\n', "\n  "),
    );
    for file in listing(&folder.path, true) {
        let _ = writeln!(summary, "  {file}");
    }
    folder.finish(summary)
}

/// The names in `dir`, sorted; with `deep`, every file below it, as paths
/// relative to it.
fn listing(dir: &Path, deep: bool) -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if deep && entry.path().is_dir() {
            names.extend(listing(&entry.path(), true).into_iter().map(|inner| format!("{name}/{inner}")));
        } else {
            names.push(name);
        }
    }
    names.sort();
    names
}

/// Writes the report of a stack placed at `placement`, choosing the
/// collector of its backend.
///
/// # Errors
/// As [`write`].
pub async fn write_for(dir: PathBuf, evidence: &Evidence, placement: &Placement) -> Result<PathBuf, ReportError> {
    match placement {
        Placement::Docker { docker_host, .. } => {
            let engine = docker::Collector::connect(docker_host.as_deref()).await;
            write(dir, evidence, &engine).await
        }
        Placement::Kubernetes { target } => write(dir, evidence, &kube::Collector::connect(target).await).await,
    }
}

/// Where a stack of `backend` is, before any record of it exists.
pub fn placement_of(backend: &Backend, plan: &Plan) -> Placement {
    match backend {
        Backend::Docker => on_this_engine(plan.namespace().to_string()),
        Backend::Kubernetes(target) => Placement::Kubernetes { target: target.clone() },
    }
}

/// One line for a failure message: where the report is, or why there is none.
pub fn line(outcome: &Result<PathBuf, ReportError>) -> String {
    match outcome {
        Ok(path) => format!("e2e-infra report: {}", path.display()),
        Err(error) => format!("e2e-infra report: none, {}", error_chain(error).replace('\n', " ")),
    }
}

/// What is known of a stack found on the engine or cluster, for a report
/// written on demand, and where it is. A stack of a test run has its
/// record in the run's state directory; one brought up by `e2e-infra up`
/// has only what the engine or cluster holds.
pub fn on_demand(stack: &RunStack) -> (Evidence, Placement) {
    let record = RunDir::existing(&stack.key).map(|dir| (dir.found(), dir.failed_tests()));
    let mut failure = "nothing failed: written on demand by `e2e-infra report`".to_owned();
    if let Some((_, failed)) = &record {
        if !failed.is_empty() {
            failure =
                format!("written on demand by `e2e-infra report`; failed tests of the run: {}", failed.join(", "));
        }
    }
    if let Some((Ok(Found::Ready(record)), _)) = record {
        return (Evidence::of_record(&record, &failure), record.placement);
    }
    let evidence = Evidence::of_key(stack.key.clone(), &failure);
    let placement = match &stack.kube {
        Some((_, target)) => Placement::Kubernetes { target: target.clone() },
        None => on_this_engine(stack.networks.first().cloned().unwrap_or_default()),
    };
    (evidence, placement)
}

/// A stack on the engine this process talks to (`DOCKER_HOST`).
fn on_this_engine(network: String) -> Placement {
    Placement::Docker {
        docker_host: std::env::var(crate::engine::DOCKER_HOST_ENV).ok().filter(|h| !h.is_empty()),
        network,
    }
}

/// The report of a setup in progress: gathers what the stages learn, and
/// writes the folder once, at the first failure, before anything of the
/// stack is removed.
#[derive(Debug)]
pub struct Recorder {
    dir: PathBuf,
    placement: Placement,
    evidence: Mutex<Evidence>,
    outcome: Mutex<Option<Result<PathBuf, String>>>,
}

impl Recorder {
    /// A recorder for the setup of `plan` on `backend`, writing into `dir`.
    pub fn new(dir: PathBuf, plan: &Plan, backend: &Backend) -> Self {
        Self {
            dir,
            placement: placement_of(backend, plan),
            evidence: Mutex::new(Evidence::of_plan(plan, "")),
            outcome: Mutex::default(),
        }
    }

    fn evidence(&self) -> std::sync::MutexGuard<'_, Evidence> {
        self.evidence.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The report's path, or the line saying why it could not be written;
    /// `None` when nothing failed.
    pub fn outcome(&self) -> Option<Result<PathBuf, String>> {
        self.outcome.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

impl Witness for Recorder {
    fn timings(&self, table: String) {
        self.evidence().timings = Some(table);
    }

    fn build(&self, component: &str, output: &str) {
        self.evidence().builds.insert(component.to_owned(), output.to_owned());
    }

    /// Writes the report for `failure`, unless one was written already.
    fn capture<'a>(&'a self, failure: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if self.outcome.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_some() {
                return;
            }
            let evidence = {
                let mut evidence = self.evidence();
                evidence.failure = failure.to_owned();
                evidence.clone()
            };
            let written = write_for(self.dir.clone(), &evidence, &self.placement).await;
            let line = line(&written);
            *self.outcome.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(written.map_err(|_| line));
        })
    }
}

/// Runs `call` within [`CALL_LIMIT`], saying what timed out.
pub(crate) async fn bounded_call<T, E: std::error::Error>(
    what: &str,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_LIMIT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(format!("{what}: {}", error_chain(&error).replace('\n', " "))),
        Err(_) => Err(format!("{what}: no answer within {CALL_LIMIT:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_on_the_way_to_a_report_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (root, elsewhere) = (dir.path().join("r"), dir.path().join("elsewhere"));
        std::fs::create_dir_all(elsewhere.join("run/case")).expect("elsewhere");
        std::fs::write(elsewhere.join("run/case/precious"), "keep").expect("precious");
        std::fs::create_dir(&root).expect("root");
        std::os::unix::fs::symlink(&elsewhere, root.join("consumer")).expect("symlink");
        let error = Folder::create_under(&root, root.join("consumer/run/case")).expect_err("refused");
        let text = error.to_string();
        assert!(text.contains("r/consumer` is a symlink") && text.contains(REPORT_DIR_ENV), "{text}");
        assert_eq!(std::fs::read_to_string(elsewhere.join("run/case/precious")).expect("still there"), "keep");
        std::fs::write(root.join("file"), "").expect("a file");
        let text = Folder::create_under(&root, root.join("file/run/case")).expect_err("refused").to_string();
        assert!(text.contains("is not a folder"), "{text}");
        // Real folders are made on the way down.
        let made = Folder::create_under(&root, root.join("other/run/case")).expect("created");
        assert!(made.path.is_dir());
    }

    #[test]
    fn a_short_log_is_kept_whole() {
        assert_eq!(bounded(b"one\ntwo\n", 64), b"one\ntwo\n");
    }

    #[test]
    fn a_long_log_keeps_its_end_from_a_line_start_behind_a_marker() {
        let log: Vec<u8> = (0..100).flat_map(|i| format!("line {i}\n").into_bytes()).collect();
        let kept = String::from_utf8(bounded(&log, 40)).unwrap();
        let mut lines = kept.lines();
        let marker = lines.next().unwrap();
        assert!(marker.starts_with("[e2e-infra: earlier output was cut"), "{marker}");
        let rest: Vec<&str> = lines.collect();
        assert_eq!(rest.last(), Some(&"line 99"));
        assert!(rest.iter().all(|l| l.starts_with("line ")), "{rest:?}");
        assert!(rest.join("\n").len() <= 40, "{kept}");
    }

    #[test]
    fn the_root_follows_the_documented_order() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("ws/target");
        std::fs::create_dir_all(target.join("debug/deps")).unwrap();
        std::fs::write(target.join("CACHEDIR.TAG"), "Signature: 8a477f597d28d172789f06886806bc55").unwrap();
        let exe = Some(target.join("debug/deps/suite-0123"));
        let here = dir.path().join("ws/crate");
        std::fs::create_dir_all(&here).unwrap();
        let given = |name: &str| Some(PathBuf::from(name));
        assert_eq!(root_from(given("/r"), given("/t"), exe.clone(), &here), PathBuf::from("/r"));
        assert_eq!(root_from(given("r"), None, exe.clone(), &here), here.join("r"));
        assert_eq!(root_from(None, given("/t"), exe.clone(), &here), PathBuf::from("/t/e2e-infra"));
        assert_eq!(root_from(None, None, exe, &here), target.join("e2e-infra"));
        // An installed command: the nearest marked `target` above the current directory.
        assert_eq!(root_from(None, None, given("/usr/local/bin/e2e-infra"), &here), target.join("e2e-infra"));
        let elsewhere = dir.path().join("other");
        std::fs::create_dir_all(&elsewhere).unwrap();
        assert_eq!(root_from(None, None, None, &elsewhere), elsewhere.join("target/e2e-infra"));
    }

    #[test]
    fn case_names_become_one_path_component() {
        assert_eq!(path_name("suite::a_test"), "suite__a_test");
        assert_eq!(path_name("../x"), "_x");
        assert_eq!(path_name("setup"), "setup");
    }
}

//! Run identity: what every process of one test run agrees on.

use std::fmt;
use std::io::Read as _;

use e2e_infra_core::names::{is_safe_name, Echo};

/// Overrides the run identity.
pub const RUN_ID_ENV: &str = "E2E_INFRA_RUN_ID";
/// Set by cargo-nextest to one UUID for all processes of a run.
pub const NEXTEST_RUN_ID_ENV: &str = "NEXTEST_RUN_ID";

/// Where a process runs, as far as its pid means anything: the kernel it
/// booted (`/proc/sys/kernel/random/boot_id`, the same in every container
/// on one host) and its PID namespace (the inode behind
/// `/proc/self/ns/pid`). Two processes can compare pids only when both match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Host {
    /// The boot id, as 128 bits.
    pub boot: u128,
    /// The PID namespace's inode number.
    pub pid_ns: u64,
}

impl Host {
    /// This process's host and PID namespace, if `/proc` tells both.
    pub fn current() -> Option<Self> {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let boot: String = boot.trim().chars().filter(char::is_ascii_hexdigit).collect();
        let boot = u128::from_str_radix(&boot, 16).ok()?;
        // `pid:[4026531836]`
        let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
        let link = link.to_str()?;
        let pid_ns = link.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()?;
        Some(Self { boot, pid_ns })
    }
}

/// The process that launched the tests (cargo, cargo-nextest): while it
/// lives, the run lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Launcher {
    /// Its pid, in the PID namespace of `host`.
    pub pid: u32,
    /// Its start time in clock ticks since boot, so a reused pid is not
    /// mistaken for it.
    pub start_ticks: u64,
    /// Where that pid means this process; `None` in labels written before it
    /// was recorded, which no process can then judge.
    pub host: Option<Host>,
}

/// What a process can tell about a launcher it finds in a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Same host and PID namespace, and the process runs.
    Alive,
    /// Same host and PID namespace, and the process is gone.
    Dead,
    /// Another host or PID namespace, or no record of either: this process
    /// cannot see it, so it must be treated as alive.
    Foreign,
}

impl Launcher {
    /// The parent of this process, if `/proc` tells.
    pub fn parent() -> Option<Self> {
        let ppid = std::os::unix::process::parent_id();
        Self::of(ppid)
    }

    /// The process `pid` of this PID namespace, if it is running.
    pub fn of(pid: u32) -> Option<Self> {
        Some(Self { pid, start_ticks: start_ticks(pid)?, host: Host::current() })
    }

    /// Whether this very process still runs, as seen from here. A launcher
    /// of another host or PID namespace counts as alive: nothing here can
    /// prove it gone.
    pub fn is_alive(&self) -> bool {
        self.verdict() != Verdict::Dead
    }

    /// Whether its pid runs with its start time in this process's PID
    /// namespace. Only for a process known to share that namespace, such as
    /// the teardown process its run started.
    pub(crate) fn runs_in_this_namespace(&self) -> bool {
        start_ticks(self.pid) == Some(self.start_ticks)
    }

    /// Alive, dead, or out of sight from this process.
    pub fn verdict(&self) -> Verdict {
        self.judge(Host::current(), start_ticks)
    }

    /// The judgment itself: `here` is the judging process's host, `ticks`
    /// gives the start time of a pid of its PID namespace, if it runs.
    pub fn judge(&self, here: Option<Host>, ticks: impl Fn(u32) -> Option<u64>) -> Verdict {
        match (self.host, here) {
            (Some(theirs), Some(ours)) if theirs == ours => {
                if ticks(self.pid) == Some(self.start_ticks) {
                    Verdict::Alive
                } else {
                    Verdict::Dead
                }
            }
            _ => Verdict::Foreign,
        }
    }

    /// `pid:start_ticks:boot:pid_ns` (boot in hex), as stored in labels.
    pub fn label(&self) -> String {
        match self.host {
            Some(host) => format!("{}:{}:{:032x}:{}", self.pid, self.start_ticks, host.boot, host.pid_ns),
            None => format!("{}:{}", self.pid, self.start_ticks),
        }
    }

    /// Parses [`Launcher::label`]; also the older `pid:start_ticks`, which
    /// gives a launcher without a host.
    pub fn from_label(label: &str) -> Option<Self> {
        let mut parts = label.split(':');
        let pid = parts.next()?.parse().ok()?;
        let start_ticks = parts.next()?.parse().ok()?;
        let host = match (parts.next(), parts.next()) {
            (None, None) => None,
            (Some(boot), Some(pid_ns)) => {
                Some(Host { boot: u128::from_str_radix(boot, 16).ok()?, pid_ns: pid_ns.parse().ok()? })
            }
            _ => return None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Self { pid, start_ticks, host })
    }
}

/// The start time of `pid` in this PID namespace, if it runs.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: fields
    // after it are counted from the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// `bytes` random bytes in hex, from the kernel.
///
/// # Errors
/// When `/dev/urandom` cannot be read.
pub fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(hex::encode(buf))
}

/// Where the run identity came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunSource {
    /// `E2E_INFRA_RUN_ID`.
    Explicit,
    /// `NEXTEST_RUN_ID`.
    Nextest,
    /// The launching process (pid, start time, boot).
    Launcher,
    /// Read back from a record, a label or the command line.
    Recorded,
}

/// The identity of one test run, shared by all its processes. Two run ids
/// are the same run when their text is: where a process learnt it (its
/// source, the launcher it saw) is not part of it. It serialises as its
/// text, and deserialises only from a valid one.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct RunId {
    id: String,
    source: RunSource,
    launcher: Option<Launcher>,
}

impl PartialEq for RunId {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for RunId {}

impl std::hash::Hash for RunId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl PartialOrd for RunId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for RunId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.id.cmp(&other.id)
    }
}

impl TryFrom<String> for RunId {
    type Error = IdentityError;

    fn try_from(id: String) -> Result<Self, Self::Error> {
        id.parse()
    }
}

impl From<RunId> for String {
    fn from(run: RunId) -> Self {
        run.id
    }
}

impl std::str::FromStr for RunId {
    type Err = IdentityError;

    /// A run id read back from a record, a label or the command line: no
    /// launcher known.
    fn from_str(id: &str) -> Result<Self, Self::Err> {
        let run = Self::explicit(id, None)?;
        Ok(Self { source: RunSource::Recorded, ..run })
    }
}

/// The run identity could not be established.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// An override that cannot be used in labels and file names.
    #[error("{RUN_ID_ENV}=`{}` is invalid: use 1 to 128 letters, digits, '-', '_' or '.', not starting with '.'", Echo(.0))]
    Invalid(String),
    /// No override and no `/proc` to identify the launcher.
    #[error("cannot identify the process that launched the tests (no /proc/<ppid>/stat); set {RUN_ID_ENV} to one value shared by all test processes")]
    NoLauncher,
}

impl RunId {
    /// The run identity of this process: `E2E_INFRA_RUN_ID`, else
    /// `NEXTEST_RUN_ID`, else the launching process.
    ///
    /// # Errors
    /// [`IdentityError`] when none of them can be had.
    pub fn detect() -> Result<Self, IdentityError> {
        let launcher = Launcher::parent();
        if let Ok(id) = std::env::var(RUN_ID_ENV) {
            return Self::explicit(&id, launcher);
        }
        if let Ok(id) = std::env::var(NEXTEST_RUN_ID_ENV) {
            return Ok(Self { id: format!("nextest-{id}"), source: RunSource::Nextest, launcher });
        }
        let launcher = launcher.ok_or(IdentityError::NoLauncher)?;
        // Boot id: pids and tick counts restart with every boot.
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let boot: String = boot.trim().chars().filter(char::is_ascii_hexdigit).take(8).collect();
        Ok(Self {
            id: format!("proc-{boot}-{}-{}", launcher.pid, launcher.start_ticks),
            source: RunSource::Launcher,
            launcher: Some(launcher),
        })
    }

    /// A run identity given outright (`E2E_INFRA_RUN_ID`, or a CLI session).
    ///
    /// # Errors
    /// [`IdentityError::Invalid`] for characters that labels cannot carry.
    pub fn explicit(id: &str, launcher: Option<Launcher>) -> Result<Self, IdentityError> {
        // The id names a directory under the state root: `..` or a hidden
        // name must never get there.
        if !is_safe_name(id) {
            return Err(IdentityError::Invalid(id.to_owned()));
        }
        Ok(Self { id: id.to_owned(), source: RunSource::Explicit, launcher })
    }

    /// The identity string.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// Where it came from.
    pub fn source(&self) -> RunSource {
        self.source
    }

    /// The process whose life is the run's, when known.
    pub fn launcher(&self) -> Option<Launcher> {
        self.launcher
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

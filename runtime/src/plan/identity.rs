//! Run identity: what every process of one test run agrees on.

use std::fmt;

/// Overrides the run identity.
pub const RUN_ID_ENV: &str = "E2E_INFRA_RUN_ID";
/// Set by cargo-nextest to one UUID for all processes of a run.
pub const NEXTEST_RUN_ID_ENV: &str = "NEXTEST_RUN_ID";

/// The process that launched the tests (cargo, cargo-nextest): while it
/// lives, the run lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Launcher {
    /// Its pid.
    pub pid: u32,
    /// Its start time in clock ticks since boot, so a reused pid is not
    /// mistaken for it.
    pub start_ticks: u64,
}

impl Launcher {
    /// The parent of this process, if `/proc` tells.
    pub fn parent() -> Option<Self> {
        let ppid = std::os::unix::process::parent_id();
        Self::of(ppid)
    }

    /// The process `pid`, if it is running.
    pub fn of(pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may contain spaces and parentheses: fields
        // after it are counted from the last ')'.
        let after = &stat[stat.rfind(')')? + 1..];
        let start_ticks = after.split_whitespace().nth(19)?.parse().ok()?;
        Some(Self { pid, start_ticks })
    }

    /// Whether this very process still runs.
    pub fn is_alive(&self) -> bool {
        Self::of(self.pid).is_some_and(|now| now == *self)
    }

    /// `pid:start_ticks`, as stored in labels.
    pub fn label(&self) -> String {
        format!("{}:{}", self.pid, self.start_ticks)
    }

    /// Parses [`Launcher::label`].
    pub fn from_label(label: &str) -> Option<Self> {
        let (pid, ticks) = label.split_once(':')?;
        Some(Self { pid: pid.parse().ok()?, start_ticks: ticks.parse().ok()? })
    }
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
}

/// The identity of one test run, shared by all its processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunId {
    id: String,
    source: RunSource,
    launcher: Option<Launcher>,
}

/// The run identity could not be established.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// An override that cannot be used in labels and file names.
    #[error("{RUN_ID_ENV}=`{0}` is invalid: use 1 to 128 letters, digits, '-', '_' or '.'")]
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
        let ok = !id.is_empty()
            && id.len() <= 128
            && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
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

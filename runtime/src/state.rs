//! The run's shared state on disk: how the processes of one run agree that
//! exactly one of them sets the stack up and the others attach to it.
//!
//! The state root is private to one user: `/tmp/e2e-infra-<uid>` (or
//! `E2E_INFRA_STATE_DIR`), a directory owned by that user with mode 0700. A
//! root owned by someone else, or open to group or others, is refused rather
//! than trusted: whoever can write there could plant a `stack.json` pointing
//! the tests at a foreign endpoint, or symlinks that make a teardown write
//! through them. State files are never opened through a symlink.
//!
//! One directory per run and consumer holds:
//! - `launcher`: the launcher of the run that uses this directory; a
//!   different, finished one means the directory is left from an earlier
//!   use of the same run id, and is cleared before it is trusted.
//! - `setup.lock`: held (flock) by the process setting up; the kernel drops it
//!   when that process dies, so another can take over.
//! - `attempt`: written before setup starts; found without `stack.json`, it
//!   means a setup process died half-way and its leftovers must go first.
//! - `stack.json`: the finished [`StackRecord`]; others attach to it.
//! - `error.txt`: the setup error; others fail with it at once.
//! - `failed`: names of failed tests; the stack is then kept.
//! - `kept`: why the stack was kept (the engine or cluster holds a marker
//!   too, so that `clean` from any shell sees it).
//! - `reaper.lock`, `reaper.log`: the teardown process.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read as _, Write};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use crate::plan::{Launcher, RunKey, Verdict};
use crate::record::StackRecord;

/// Overrides where run state lives (default: `/tmp/e2e-infra-<uid>`).
pub const STATE_DIR_ENV: &str = "E2E_INFRA_STATE_DIR";

/// A state directory could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
// Fields named for what they hold carry no doc of their own.
#[allow(missing_docs)]
pub enum StateError {
    /// `E2E_INFRA_STATE_DIR` is set to nothing.
    #[error("{STATE_DIR_ENV} is set but empty; name a directory private to this user, or unset it for the default /tmp/e2e-infra-<uid>")]
    EmptyRoot,
    /// A file system operation failed.
    #[error("{operation} `{}` failed", path.display())]
    Io {
        /// What was being done.
        operation: &'static str,
        /// To what.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The state root, or a directory in it, is not this user's alone.
    #[error("the e2e-infra state directory `{}` {problem}; it must be a real directory owned by uid {uid} with mode 0700: remove it if it is not yours to trust, `chmod 700` it if it is, or set {STATE_DIR_ENV} to a private directory", path.display())]
    Untrusted {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
        /// This process's user.
        uid: u32,
    },
    /// An earlier run that used the same run id kept its stack.
    #[error("run id `{}` was used by an earlier run whose `{}` stack is kept ({why}); remove it with `e2e-infra down --consumer {} --run {}`, or use another run id", key.run(), key.consumer(), key.consumer(), key.run())]
    KeptByEarlierRun {
        /// The stack kept.
        key: RunKey,
        /// Why it was kept.
        why: String,
    },
}

fn io_err<'a>(operation: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io { operation, path: path.to_owned(), source }
}

/// This process's effective user: `/proc/self` belongs to it.
pub(crate) fn current_uid() -> Result<u32, StateError> {
    let proc_self = Path::new("/proc/self");
    Ok(fs::metadata(proc_self).map_err(io_err("reading the owner of", proc_self))?.uid())
}

/// The root holding every run's directory, created if missing, refused if
/// it is not private to this user.
///
/// # Errors
/// [`StateError::Untrusted`] for a root owned by another user, open to
/// group or others, or that is a symlink; [`StateError::Io`] when it cannot
/// be created or inspected.
pub fn root() -> Result<PathBuf, StateError> {
    root_from(std::env::var_os(STATE_DIR_ENV))
}

/// [`root`] with `var` the value of [`STATE_DIR_ENV`].
fn root_from(var: Option<std::ffi::OsString>) -> Result<PathBuf, StateError> {
    let uid = current_uid()?;
    let path = match var {
        Some(dir) if dir.is_empty() => return Err(StateError::EmptyRoot),
        Some(dir) => PathBuf::from(dir),
        // Not $TMPDIR nor $XDG_RUNTIME_DIR: both differ between a login
        // shell, sudo, cron and CI jobs of one user, and every process of a
        // run must find the same directory.
        None => PathBuf::from(format!("/tmp/e2e-infra-{uid}")),
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_err("creating the parent of", parent))?;
    }
    private_dir(&path, uid)?;
    Ok(path)
}

/// A private directory beside the state root, `<root>-<name>`, for caches
/// that outlive runs; created if missing, refused like the root if it is
/// not private to this user.
///
/// # Errors
/// As [`root`].
pub fn cache_dir(name: &str) -> Result<PathBuf, StateError> {
    let uid = current_uid()?;
    let mut dir = root()?.into_os_string();
    dir.push(format!("-{name}"));
    let dir = PathBuf::from(dir);
    private_dir(&dir, uid)?;
    Ok(dir)
}

/// Creates `path` with mode 0700 unless it exists; then checks that it is a
/// directory (not a symlink) owned by `uid` and closed to everyone else.
fn private_dir(path: &Path, uid: u32) -> Result<(), StateError> {
    match DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err("creating", path)(e)),
    }
    let meta = fs::symlink_metadata(path).map_err(io_err("inspecting", path))?;
    let untrusted = |problem: String| StateError::Untrusted { path: path.to_owned(), problem, uid };
    if meta.file_type().is_symlink() {
        return Err(untrusted("is a symlink".to_owned()));
    }
    if !meta.is_dir() {
        return Err(untrusted("is not a directory".to_owned()));
    }
    if meta.uid() != uid {
        return Err(untrusted(format!("is owned by uid {}", meta.uid())));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(untrusted(format!("has mode {:04o}, open to group or others", meta.mode() & 0o7777)));
    }
    Ok(())
}

/// A directory inside the private root: nobody else can reach it, so its
/// own mode does not matter, but it must be ours and not a symlink.
fn inner_dir(path: &Path, uid: u32) -> Result<(), StateError> {
    match DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err("creating", path)(e)),
    }
    let meta = fs::symlink_metadata(path).map_err(io_err("inspecting", path))?;
    let problem = if meta.file_type().is_symlink() {
        "is a symlink".to_owned()
    } else if !meta.is_dir() {
        "is not a directory".to_owned()
    } else if meta.uid() != uid {
        format!("is owned by uid {}", meta.uid())
    } else {
        return Ok(());
    };
    Err(StateError::Untrusted { path: path.to_owned(), problem, uid })
}

/// Opens never follow a symlink planted in place of a state file.
fn no_follow() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.custom_flags(libc::O_NOFOLLOW).mode(0o600);
    options
}

/// The state directory of one run and consumer.
#[derive(Debug, Clone)]
pub(crate) struct RunDir {
    path: PathBuf,
}

/// What a process finds when it holds the setup lock.
#[derive(Debug)]
pub enum Found {
    /// Nothing yet: this process sets up.
    Nothing,
    /// A setup process died half-way: clean its leftovers, then set up.
    Abandoned,
    /// The stack is up.
    Ready(Box<StackRecord>),
    /// Setup failed with this message.
    Failed(String),
}

/// What [`RunDir::claim`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The directory is this run's (or cannot be told apart from it).
    Ours,
    /// It was left by an earlier, finished use of the same run id and has
    /// been cleared; `leftovers` when that use got as far as setting up, so
    /// what it may have left on the engine must go first.
    Reset {
        /// Whether the earlier use started a setup.
        leftovers: bool,
    },
}

impl RunDir {
    /// The directory of the stack `key` (created if missing). Both names
    /// of a key are safe path components.
    ///
    /// # Errors
    /// [`StateError::Untrusted`] for a state root that is not private,
    /// [`StateError::Io`] when it cannot be created.
    pub fn open(key: &RunKey) -> Result<Self, StateError> {
        Self::open_under(&root()?, key)
    }

    fn open_under(root: &Path, key: &RunKey) -> Result<Self, StateError> {
        let uid = current_uid()?;
        let run = root.join(key.run().as_str());
        inner_dir(&run, uid)?;
        let path = run.join(key.consumer().as_str());
        inner_dir(&path, uid)?;
        Ok(Self { path })
    }

    /// The directory, if it exists, without creating it. A root that is not
    /// private gives `None`.
    pub fn existing(key: &RunKey) -> Option<Self> {
        let path = root().ok()?.join(key.run().as_str()).join(key.consumer().as_str());
        let meta = fs::symlink_metadata(&path).ok()?;
        meta.is_dir().then_some(Self { path })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn read(&self, name: &str) -> Result<Option<String>, StateError> {
        let path = self.file(name);
        let mut file = match no_follow().read(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("opening", &path)(e)),
        };
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(io_err("reading", &path))?;
        Ok(Some(text))
    }

    fn exists(&self, name: &str) -> bool {
        fs::symlink_metadata(self.file(name)).is_ok()
    }

    /// Blocks until this process holds the setup lock. The lock is released
    /// when the returned file is dropped, or when the process dies.
    ///
    /// # Errors
    /// [`StateError`] when the lock file cannot be opened or locked.
    pub(crate) fn lock_setup(&self) -> Result<File, StateError> {
        let (file, path) = self.lock_file("setup.lock")?;
        file.lock().map_err(io_err("locking", &path))?;
        Ok(file)
    }

    fn lock_file(&self, name: &str) -> Result<(File, PathBuf), StateError> {
        let path = self.file(name);
        let file =
            no_follow().create(true).truncate(false).write(true).open(&path).map_err(io_err("opening lock", &path))?;
        Ok((file, path))
    }

    /// Takes the reaper lock if no other reaper holds it.
    ///
    /// # Errors
    /// [`StateError`] when the lock file cannot be opened.
    pub(crate) fn try_lock_reaper(&self) -> Result<Option<File>, StateError> {
        let (file, path) = self.lock_file("reaper.lock")?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(io_err("locking", &path)(e)),
        }
    }

    /// Makes the directory this run's: state left by an earlier use of the
    /// same run id (a different launcher, proven finished) is cleared, so a
    /// retry never inherits its error or its stack record. A recorded
    /// launcher that is alive, or that this process cannot judge (another
    /// host or PID namespace), shares the directory as before. Call with the
    /// setup lock held.
    ///
    /// # Errors
    /// [`StateError::KeptByEarlierRun`] when the earlier use kept its stack:
    /// clearing the record would orphan it. [`StateError::Io`] when files
    /// cannot be read, removed or written.
    pub(crate) fn claim(&self, launcher: Option<Launcher>, key: &RunKey) -> Result<Claim, StateError> {
        // Without a launcher (no /proc) nothing tells two uses apart.
        let Some(launcher) = launcher else { return Ok(Claim::Ours) };
        let mine = launcher.label();
        let recorded = self.read("launcher")?;
        let earlier = match recorded.as_deref().map(str::trim) {
            Some(label) if label == mine => return Ok(Claim::Ours),
            Some(label) => Launcher::from_label(label).is_none_or(|l| l.verdict() == Verdict::Dead),
            // No record: a fresh directory, or one written by hand or by a
            // version that did not record launchers; nothing tells it apart.
            None => false,
        };
        if !earlier {
            if recorded.is_none() {
                self.write("launcher", &mine)?;
            }
            return Ok(Claim::Ours);
        }
        if let Some(why) = self.read("kept")? {
            return Err(StateError::KeptByEarlierRun { key: key.clone(), why: why.trim().to_owned() });
        }
        let leftovers = self.exists("stack.json") || self.exists("attempt");
        for name in ["stack.json", "error.txt", "attempt", "failed"] {
            let path = self.file(name);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing stale", &path)(e)),
            }
        }
        self.write("launcher", &mine)?;
        Ok(Claim::Reset { leftovers })
    }

    /// What the previous holders of the setup lock left. Call with the lock held.
    ///
    /// # Errors
    /// [`StateError`] when a state file cannot be read or parsed.
    pub fn found(&self) -> Result<Found, StateError> {
        if let Some(text) = self.read("stack.json")? {
            let record = serde_json::from_str(&text).map_err(|e| {
                io_err("parsing", &self.file("stack.json"))(io::Error::new(io::ErrorKind::InvalidData, e))
            })?;
            return Ok(Found::Ready(Box::new(record)));
        }
        if let Some(error) = self.read("error.txt")? {
            return Ok(Found::Failed(error));
        }
        Ok(if self.exists("attempt") { Found::Abandoned } else { Found::Nothing })
    }

    /// Marks that this process starts setting up.
    ///
    /// # Errors
    /// [`StateError`] when the marker cannot be written.
    pub(crate) fn begin_attempt(&self) -> Result<(), StateError> {
        self.write("attempt", &std::process::id().to_string())
    }

    /// Records the finished stack for the other processes.
    ///
    /// # Errors
    /// [`StateError`] when it cannot be written.
    pub(crate) fn record_ready(&self, record: &StackRecord) -> Result<(), StateError> {
        let json =
            serde_json::to_string_pretty(record).map_err(|e| io_err("serializing", &self.path)(io::Error::other(e)))?;
        self.write("stack.json", &json)
    }

    /// Records the setup error for the other processes.
    ///
    /// # Errors
    /// [`StateError`] when it cannot be written.
    pub(crate) fn record_failure(&self, message: &str) -> Result<(), StateError> {
        self.write("error.txt", message)
    }

    /// Adds a failed test's name; a stack with failed tests is kept.
    ///
    /// # Errors
    /// [`StateError`] when it cannot be written.
    pub(crate) fn record_failed_test(&self, test: &str) -> Result<(), StateError> {
        let path = self.file("failed");
        let mut file = no_follow().create(true).append(true).open(&path).map_err(io_err("opening", &path))?;
        writeln!(file, "{test}").map_err(io_err("writing", &path))
    }

    /// Names of the tests that failed, if any.
    pub(crate) fn failed_tests(&self) -> Vec<String> {
        self.read("failed").ok().flatten().map(|t| t.lines().map(str::to_owned).collect()).unwrap_or_default()
    }

    /// Marks the stack as kept on purpose, so that no automatic clean removes it.
    ///
    /// # Errors
    /// [`StateError`] when it cannot be written.
    pub fn mark_kept(&self, why: &str) -> Result<(), StateError> {
        self.write("kept", why)
    }

    /// Whether the stack was kept on purpose, as recorded here.
    pub(crate) fn is_kept(&self) -> bool {
        self.exists("kept")
    }

    /// Opens the reaper's log for appending, never through a symlink.
    ///
    /// # Errors
    /// When it cannot be opened.
    pub(crate) fn open_reaper_log(&self) -> io::Result<File> {
        no_follow().create(true).append(true).open(self.file("reaper.log"))
    }

    /// Removes the directory once the stack is gone.
    ///
    /// # Errors
    /// [`StateError`] when it cannot be removed.
    pub fn remove(self) -> Result<(), StateError> {
        fs::remove_dir_all(&self.path).map_err(io_err("removing", &self.path))?;
        // The run directory goes too once its last consumer is gone.
        if let Some(run) = self.path.parent() {
            let _ = fs::remove_dir(run);
        }
        Ok(())
    }

    /// Writes atomically: readers see the old content or the new, never
    /// half. The temporary file is created new (never through a symlink)
    /// and removed again if writing it fails, so a full disk leaves nothing.
    fn write(&self, name: &str, content: &str) -> Result<(), StateError> {
        let path = self.file(name);
        let tmp = self.file(&format!(".{name}.{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        let written = no_follow()
            .create_new(true)
            .write(true)
            .open(&tmp)
            .and_then(|mut file| file.write_all(content.as_bytes()).and_then(|()| file.sync_all()));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io_err("writing", &tmp)(e));
        }
        fs::rename(&tmp, &path).map_err(io_err("renaming into", &path))
    }
}

#[cfg(test)]
mod tests;

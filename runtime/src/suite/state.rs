//! The run's shared state on disk: how the processes of one run agree that
//! exactly one of them sets the stack up and the others attach to it.
//!
//! One directory per run and consumer holds:
//! - `setup.lock`: held (flock) by the process setting up; the kernel drops it
//!   when that process dies, so another can take over.
//! - `attempt`: written before setup starts; found without `stack.json`, it
//!   means a setup process died half-way and its leftovers must go first.
//! - `stack.json`: the finished [`StackRecord`]; others attach to it.
//! - `error.txt`: the setup error; others fail with it at once.
//! - `failed`: names of failed tests; the stack is then kept.
//! - `reaper.lock`, `reaper.log`: the teardown process.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::handle::StackRecord;

/// Overrides where run state lives (default: the system temp directory).
pub const STATE_DIR_ENV: &str = "E2E_INFRA_STATE_DIR";

/// A state directory could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{operation} `{}` failed: {source}", path.display())]
pub struct StateError {
    operation: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

fn io_err<'a>(operation: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError { operation, path: path.to_owned(), source }
}

/// The root holding every run's directory.
pub fn root() -> PathBuf {
    std::env::var_os(STATE_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("e2e-infra"))
}

/// The state directory of one run and consumer.
#[derive(Debug, Clone)]
pub struct RunDir {
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
    Ready(StackRecord),
    /// Setup failed with this message.
    Failed(String),
}

impl RunDir {
    /// The directory for `run_id` and `consumer` (created if missing).
    ///
    /// # Errors
    /// [`StateError`] when it cannot be created.
    pub fn open(run_id: &str, consumer: &str) -> Result<Self, StateError> {
        let path = root().join(run_id).join(consumer);
        fs::create_dir_all(&path).map_err(io_err("creating run state directory", &path))?;
        Ok(Self { path })
    }

    /// The directory, if it exists, without creating it.
    pub fn existing(run_id: &str, consumer: &str) -> Option<Self> {
        let path = root().join(run_id).join(consumer);
        path.is_dir().then_some(Self { path })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Blocks until this process holds the setup lock. The lock is released
    /// when the returned file is dropped, or when the process dies.
    ///
    /// # Errors
    /// [`StateError`] when the lock file cannot be opened or locked.
    pub fn lock_setup(&self) -> Result<File, StateError> {
        let (file, path) = self.lock_file("setup.lock")?;
        file.lock().map_err(io_err("locking", &path))?;
        Ok(file)
    }

    fn lock_file(&self, name: &str) -> Result<(File, PathBuf), StateError> {
        let path = self.file(name);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("opening lock", &path))?;
        Ok((file, path))
    }

    /// Takes the reaper lock if no other reaper holds it.
    ///
    /// # Errors
    /// [`StateError`] when the lock file cannot be opened.
    pub fn try_lock_reaper(&self) -> Result<Option<File>, StateError> {
        let (file, path) = self.lock_file("reaper.lock")?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(io_err("locking", &path)(e)),
        }
    }

    /// What the previous holders of the setup lock left. Call with the lock held.
    ///
    /// # Errors
    /// [`StateError`] when a state file cannot be read or parsed.
    pub fn found(&self) -> Result<Found, StateError> {
        let stack = self.file("stack.json");
        if stack.exists() {
            let text = fs::read_to_string(&stack).map_err(io_err("reading", &stack))?;
            let record = serde_json::from_str(&text)
                .map_err(|e| io_err("parsing", &stack)(io::Error::new(io::ErrorKind::InvalidData, e)))?;
            return Ok(Found::Ready(record));
        }
        let error = self.file("error.txt");
        if error.exists() {
            return Ok(Found::Failed(fs::read_to_string(&error).map_err(io_err("reading", &error))?));
        }
        Ok(if self.file("attempt").exists() { Found::Abandoned } else { Found::Nothing })
    }

    /// Marks that this process starts setting up.
    ///
    /// # Errors
    /// [`StateError`] when the marker cannot be written.
    pub fn begin_attempt(&self) -> Result<(), StateError> {
        self.write("attempt", &std::process::id().to_string())
    }

    /// Records the finished stack for the other processes.
    ///
    /// # Errors
    /// [`StateError`] when it cannot be written.
    pub fn record_ready(&self, record: &StackRecord) -> Result<(), StateError> {
        let json = serde_json::to_string_pretty(record)
            .map_err(|e| io_err("serializing", &self.path)(io::Error::other(e)))?;
        self.write("stack.json", &json)
    }

    /// Records the setup error for the other processes.
    ///
    /// # Errors
    /// [`StateError`] when it cannot be written.
    pub fn record_failure(&self, message: &str) -> Result<(), StateError> {
        self.write("error.txt", message)
    }

    /// Adds a failed test's name; a stack with failed tests is kept.
    ///
    /// # Errors
    /// [`StateError`] when it cannot be written.
    pub fn record_failed_test(&self, test: &str) -> Result<(), StateError> {
        let path = self.file("failed");
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        writeln!(file, "{test}").map_err(io_err("writing", &path))
    }

    /// Names of the tests that failed, if any.
    pub fn failed_tests(&self) -> Vec<String> {
        fs::read_to_string(self.file("failed"))
            .map(|t| t.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Marks the stack as kept on purpose, so that no automatic clean removes it.
    ///
    /// # Errors
    /// [`StateError`] when it cannot be written.
    pub fn mark_kept(&self, why: &str) -> Result<(), StateError> {
        self.write("kept", why)
    }

    /// Whether the stack was kept on purpose.
    pub fn is_kept(&self) -> bool {
        self.file("kept").exists()
    }

    /// The reaper's log file.
    pub fn reaper_log(&self) -> PathBuf {
        self.file("reaper.log")
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

    /// Writes atomically: readers see the old content or the new, never half.
    fn write(&self, name: &str, content: &str) -> Result<(), StateError> {
        let path = self.file(name);
        let tmp = self.file(&format!(".{name}.{}", std::process::id()));
        fs::write(&tmp, content).map_err(io_err("writing", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("renaming into", &path))
    }
}

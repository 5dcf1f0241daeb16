//! Reading a failure report folder the way a person would: its summary,
//! its files, and each component's logs.

use std::path::{Path, PathBuf};

/// A report folder.
#[derive(Debug)]
pub struct ReportFolder {
    /// Its path.
    pub path: PathBuf,
}

impl ReportFolder {
    /// The folder at `path`, which must exist and hold a summary.
    ///
    /// # Panics
    /// When it has no `summary.txt`.
    pub fn at(path: &Path) -> Self {
        assert!(path.join("summary.txt").is_file(), "no report at {}: {:?}", path.display(), files(path));
        Self { path: path.to_owned() }
    }

    /// The text of `relative`.
    ///
    /// # Panics
    /// When it cannot be read.
    pub fn text(&self, relative: &str) -> String {
        let path = self.path.join(relative);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}; the report holds {:?}", path.display(), self.files()))
    }

    /// Every file of the folder, relative to it.
    pub fn files(&self) -> Vec<String> {
        files(&self.path)
    }

    /// The components with a folder of their own.
    pub fn components(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path.join("components"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Every log of `component`, one after the other.
    pub fn logs(&self, component: &str) -> String {
        self.matching(component, ".log")
    }

    /// The state files of `component` (`.state.txt`, `.describe.txt`), one
    /// after the other.
    pub fn state(&self, component: &str) -> String {
        self.matching(component, ".txt")
    }

    fn matching(&self, component: &str, suffix: &str) -> String {
        let dir = self.path.join("components").join(component);
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}; the report holds {:?}", dir.display(), self.files()))
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(suffix))
            .collect();
        names.sort();
        names.iter().map(|p| std::fs::read_to_string(p).unwrap_or_default()).collect::<Vec<_>>().join("\n")
    }
}

fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(relative) = path.strip_prefix(dir) {
                out.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

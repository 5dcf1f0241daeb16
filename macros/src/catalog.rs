//! Finding the catalog at compile time and reading its component names.
//!
//! Only the names are read here, to check `needs`; the runtime checks the
//! whole catalog when the suite runs.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// The file name looked for from the crate's directory upwards.
pub(crate) const FILE_NAME: &str = "e2e-infra.toml";

/// The variable naming the catalog when the attribute does not.
pub(crate) const ENV: &str = "E2E_INFRA_CONFIG";

/// A located catalog and its component names, sorted.
pub(crate) struct Catalog {
    /// Absolute, so the expansion can `include_bytes!` it.
    pub(crate) path: PathBuf,
    pub(crate) components: Vec<String>,
}

impl Catalog {
    /// The component names, for messages.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> + Clone {
        self.components.iter().map(String::as_str)
    }
}

/// Where the catalog is: the `catalog` key (relative to the crate's
/// directory), else `E2E_INFRA_CONFIG` (absolute, or relative to the crate's
/// directory), else the nearest `e2e-infra.toml` in the crate's directory or
/// a parent.
///
/// The error says which path was tried and how it was chosen.
pub(crate) fn locate(
    key: Option<&str>,
    env: Option<&OsStr>,
    manifest_dir: &Path,
) -> Result<PathBuf, String> {
    let (candidate, how) = if let Some(key) = key {
        (
            manifest_dir.join(key),
            String::from("from the `catalog` key, relative to the crate's directory"),
        )
    } else if let Some(env) = env {
        (manifest_dir.join(env), format!("from {ENV}"))
    } else {
        return manifest_dir
            .ancestors()
            .map(|dir| dir.join(FILE_NAME))
            .find(|path| path.is_file())
            .ok_or_else(|| {
                format!(
                    "no {FILE_NAME} found in {} or any parent; add one, point `catalog = \"...\"` at it, or set {ENV}",
                    manifest_dir.display()
                )
            });
    };
    if candidate.is_file() {
        Ok(candidate)
    } else {
        Err(format!(
            "catalog not found at {} ({how})",
            candidate.display()
        ))
    }
}

/// Reads the component names of the catalog at `path`.
///
/// The error names the file and, for a syntax error, the line and column.
pub(crate) fn read(path: &Path) -> Result<Catalog, String> {
    let path = path
        .canonicalize()
        .map_err(|e| format!("cannot resolve catalog path {}: {e}", path.display()))?;
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read catalog {}: {e}", path.display()))?;
    let components = component_names(&text).map_err(|e| format!("{}{e}", path.display()))?;
    Ok(Catalog { path, components })
}

/// The `[components.<name>]` table names; the error starts with `:line:col`
/// or `:` so it can follow the path.
fn component_names(text: &str) -> Result<Vec<String>, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let at = e
            .span()
            .map(|span| position(text, span.start))
            .unwrap_or_default();
        format!("{at}: TOML syntax error: {}", e.message())
    })?;
    let names: Vec<String> = match table.get("components") {
        None => Vec::new(),
        Some(toml::Value::Table(components)) => components.keys().cloned().collect(),
        Some(_) => {
            return Err(String::from(
                ": `components` must hold [components.<name>] tables",
            ))
        }
    };
    if names.is_empty() {
        return Err(String::from(
            ": the catalog declares no components; add a [components.<name>] table",
        ));
    }
    Ok(names)
}

/// `:line:column` (1-based) of byte `offset`.
fn position(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!(":{line}:{column}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn reads_component_names() {
        let names = component_names("[components.redis]\nimage = \"redis:7\"\n[components.postgres]\nimage = \"postgres:16\"\n");
        assert_eq!(names.unwrap(), ["postgres", "redis"]);
    }

    #[test]
    fn syntax_error_names_line_and_column() {
        let error =
            component_names("[components.redis]\nimage = \"redis:7\"\nports = [\n").unwrap_err();
        assert!(
            error.starts_with(":3:10: TOML syntax error: unclosed array"),
            "{error}"
        );
    }

    #[test]
    fn no_components_is_an_error() {
        assert!(component_names("[other]\nx = 1\n")
            .unwrap_err()
            .contains("declares no components"));
    }

    #[test]
    fn key_and_variable_are_relative_to_the_crate_and_the_key_wins() {
        let dir =
            std::env::temp_dir().join(format!("e2e-infra-macros-locate-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join(FILE_NAME), "").unwrap();
        assert_eq!(
            locate(None, None, &dir.join("sub")).unwrap(),
            dir.join(FILE_NAME)
        );
        assert_eq!(
            locate(Some("../e2e-infra.toml"), None, &dir.join("sub")).unwrap(),
            dir.join("sub/../e2e-infra.toml")
        );
        let env = std::ffi::OsString::from("e2e-infra.toml");
        assert_eq!(locate(None, Some(&env), &dir).unwrap(), dir.join(FILE_NAME));
        let missing = locate(Some("nope.toml"), Some(&env), &dir).unwrap_err();
        assert!(
            missing.contains("nope.toml") && missing.contains("`catalog` key"),
            "{missing}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

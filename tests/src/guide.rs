//! The guide's examples as the tests that check them read them.

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// The text of `docs/<page>`.
pub fn page(page: &str) -> String {
    let path = root().join("docs").join(page);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The fenced blocks of `markdown` in `language`, in order.
pub fn blocks(markdown: &str, language: &str) -> Vec<String> {
    let open = format!("```{language}");
    let mut found = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match &mut current {
            None if line.trim_end() == open => current = Some(String::new()),
            Some(_) if line.trim_end() == "```" => found.extend(current.take()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    found
}

/// Writes `contents` to `path`, making its directories.
pub fn write(path: &Path, contents: &str) {
    std::fs::create_dir_all(path.parent().expect("a directory")).expect("directories");
    std::fs::write(path, contents).expect("write");
}

/// Makes every Dockerfile and manifest `catalog` names, relative to `root`,
/// and its build contexts (`images` and every `context` it names, each with
/// a Dockerfile), so that its paths resolve.
pub fn lay_out(root: &Path, catalog: &str) {
    std::fs::create_dir_all(root.join("images")).expect("build context");
    // Every named context, with the Dockerfile a build without `dockerfile` reads.
    for context in catalog.split("context = \"").skip(1).filter_map(|rest| rest.split('"').next()) {
        write(&root.join(context).join("Dockerfile"), "FROM scratch\n");
    }
    let quoted = catalog.split('"').skip(1).step_by(2);
    for path in quoted.filter(|p| p.ends_with(".Dockerfile") || p.ends_with(".yaml")) {
        write(&root.join(path), "FROM scratch\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_taken_by_language_in_order() {
        let text = "a\n```toml\nx = 1\n```\n```rust\nfn f() {}\n```\n```toml\ny = 2\nz = 3\n```\n";
        assert_eq!(blocks(text, "toml"), ["x = 1\n", "y = 2\nz = 3\n"]);
        assert_eq!(blocks(text, "rust"), ["fn f() {}\n"]);
        assert!(blocks(text, "yaml").is_empty());
    }
}

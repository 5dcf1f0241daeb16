//! The runtime's modules form one-way layers: a module names only modules of
//! layers below its own, never one of its own layer or above. This test reads
//! the sources and fails on the first path that breaks that, so a cycle
//! between modules cannot come back. docs/architecture.md describes the
//! layers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom first. A module of the crate that is not listed here fails the
/// test: a new module takes a place in the order when it is made.
const LAYERS: &[&[&str]] = &[
    // The model: what a run is, in values; the background runtime; the
    // progress log.
    &["background", "error", "plan", "progress"],
    &["backend"],
    &["record"],
    // Adapters: the engine, its labels, the state directory on this machine.
    &["engine", "labels", "state"],
    // The stages of a run.
    &["build", "deploy", "load"],
    // One stack, up and down.
    &["stack"],
    // What a test and a failure see.
    &["handle", "report"],
    // The suite's lifecycle across processes.
    &["suite"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read the source folder") {
        let path = entry.expect("a folder entry").path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The top-level module a source file belongs to (`None` for `lib.rs`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).expect("a file under src");
    let first = relative.components().next()?.as_os_str().to_str()?;
    (first != "lib.rs").then(|| first.trim_end_matches(".rs").to_owned())
}

/// How deep in the crate a file's module is: `stack/mod.rs` and
/// `stack.rs` 1, `deploy/kube/wait.rs` 3.
fn depth_of(src: &Path, file: &Path) -> usize {
    let relative = file.strip_prefix(src).expect("a file under src");
    relative.components().count() - usize::from(relative.ends_with("mod.rs"))
}

/// The code of a file without its comments, line by line.
fn code(text: &str) -> String {
    text.lines().map(|line| line.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// The code with every `super::` chain that climbs to the crate root
/// written as `crate::`, so that a top-level module cannot name a sibling
/// through `super::`. `depth` is the file's module depth; inline modules
/// (`mod tests { ... }`) add theirs.
fn supers_as_crate(code: &str, depth: usize) -> String {
    let mut out = String::with_capacity(code.len());
    // Brace depths at which inline modules opened.
    let mut inline: Vec<isize> = Vec::new();
    let mut braces: isize = 0;
    let mut in_string = false;
    let mut rest = code;
    while let Some(c) = rest.chars().next() {
        // Braces inside strings and char literals are not the code's.
        let literal = if in_string {
            match c {
                '\\' => rest.chars().take(2).map(char::len_utf8).sum(),
                '"' => {
                    in_string = false;
                    1
                }
                _ => c.len_utf8(),
            }
        } else if c == '"' {
            in_string = true;
            1
        } else if rest.starts_with("'{'") || rest.starts_with("'}'") || rest.starts_with("'\"'") {
            3
        } else {
            0
        };
        if literal > 0 {
            out.push_str(&rest[..literal]);
            rest = &rest[literal..];
            continue;
        }
        let at_word = !out.chars().next_back().is_some_and(|p| p.is_alphanumeric() || p == '_');
        if at_word && rest.starts_with("super::") {
            let mut chain = 0;
            let mut after = rest;
            while let Some(next) = after.strip_prefix("super::") {
                chain += 1;
                after = next.trim_start();
            }
            if chain >= depth + inline.len() {
                out.push_str("crate::");
            } else {
                out.push_str(&rest[..rest.len() - after.len()]);
            }
            rest = after;
            continue;
        }
        if at_word && rest.starts_with("mod ") {
            let header: String = rest.chars().take_while(|&c| c != ';' && c != '{').collect();
            if rest[header.len()..].starts_with('{') {
                inline.push(braces);
            }
        }
        match c {
            '{' => braces += 1,
            '}' => {
                braces -= 1;
                if inline.last() == Some(&braces) {
                    inline.pop();
                }
            }
            _ => {}
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// What follows `crate::` in a path: its first two segments (`handle`,
/// `Infra`), or a glob.
#[derive(Debug, PartialEq)]
enum RootPath {
    Named(String, String),
    Glob,
}

/// Every path that starts at the crate root: `crate::a::b` gives `a::b`,
/// `crate::{a::b, c}` gives `a::b` and `c`.
fn crate_paths(code: &str) -> Vec<RootPath> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `e2e_infra_crate::` or the like
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let end = group
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(group.len(), |(i, _)| i);
            let mut depth = 0;
            let mut item = String::new();
            for c in group[..end].chars().chain([',']) {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.extend(root_path(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
        } else {
            found.extend(root_path(rest));
        }
    }
    found
}

fn root_path(path: &str) -> Option<RootPath> {
    let path = path.trim_start();
    if path.starts_with('*') {
        return Some(RootPath::Glob);
    }
    let first = first_segment(path);
    let second = path[first.len()..].trim_start().strip_prefix("::").map(first_segment).unwrap_or_default();
    (!first.is_empty()).then_some(RootPath::Named(first, second))
}

fn first_segment(path: &str) -> String {
    path.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// Whether the code gives the crate root another name (`use crate as x`),
/// under which its modules could be named unseen.
fn aliases_the_root(code: &str) -> bool {
    code.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .windows(2)
        .any(|pair| pair == ["crate", "as"])
}

/// What `lib.rs` re-exports, by name: the module it comes from (`None` for
/// items of other crates); at the crate root, and in `__private`.
#[derive(Debug, Default)]
struct Reexports {
    root: BTreeMap<String, Option<String>>,
    private: BTreeMap<String, Option<String>>,
}

impl Reexports {
    fn of(lib: &str) -> Self {
        let mut found = Self::default();
        let mut in_private = false;
        for line in code(lib).lines() {
            let line = line.trim();
            if line.starts_with("pub mod __private") {
                in_private = true;
            } else if in_private && line == "}" {
                in_private = false;
            }
            let Some(path) = line.strip_prefix("pub use ").and_then(|p| p.strip_suffix(';')) else { continue };
            let path = path.trim_start_matches("crate::");
            let (module, items) = match path.split_once("::{") {
                Some((module, items)) => (module, items.trim_end_matches('}').split(',').collect::<Vec<_>>()),
                None => match path.rsplit_once("::") {
                    Some((module, item)) => (module, vec![item]),
                    None => continue,
                },
            };
            let own = first_segment(module);
            let own = (layer_of(&own).is_some()).then_some(own);
            let names = if in_private { &mut found.private } else { &mut found.root };
            for item in items {
                names.insert(item.trim().to_owned(), own.clone());
            }
        }
        found
    }

    /// The module `crate::<first>::<second>` is in: `Ok(None)` for another
    /// crate's item.
    fn module_of(&self, path: &RootPath) -> Result<Option<String>, String> {
        match path {
            RootPath::Glob => Err("`crate::*` brings every module in unnamed; name each path".to_owned()),
            RootPath::Named(first, second) if first == "__private" => match self.private.get(second) {
                Some(module) => Ok(module.clone()),
                None => Err(format!("`crate::__private::{second}` is not a re-export of `__private`")),
            },
            RootPath::Named(first, _) => match self.root.get(first) {
                Some(module) => Ok(module.clone()),
                None => Ok(Some(first.clone())),
            },
        }
    }
}

/// What breaks the layers in one file of module `module` (`shown` names
/// the file), whose code is `text` at module depth `depth`.
fn broken_in(shown: &str, module: &str, own: usize, text: &str, depth: usize, reexports: &Reexports) -> Vec<String> {
    let mut broken = Vec::new();
    let text = supers_as_crate(&code(text), depth);
    if aliases_the_root(&text) {
        broken.push(format!(
            "{shown}: `crate as ...` names the crate root anew, and every module with it; write `crate::` paths"
        ));
    }
    for path in crate_paths(&text) {
        let target = match reexports.module_of(&path) {
            Ok(None) => continue,
            Ok(Some(target)) => target,
            Err(why) => {
                broken.push(format!("{shown}: {why}"));
                continue;
            }
        };
        if target == module {
            continue;
        }
        let name = match &path {
            RootPath::Named(first, second) if first == "__private" => format!("{first}::{second}"),
            RootPath::Named(first, _) => first.clone(),
            RootPath::Glob => continue,
        };
        match layer_of(&target) {
            Some(layer) if layer < own => {}
            Some(layer) => broken.push(format!(
                "{shown}: module `{module}` (layer {own}) names `crate::{name}` of module `{target}` (layer {layer}); a module may name only modules of lower layers"
            )),
            None => broken.push(format!("{shown}: `crate::{name}` is neither a module with a layer nor a re-export of lib.rs")),
        }
    }
    broken
}

#[test]
fn every_module_names_only_modules_of_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("read lib.rs");
    let reexports = Reexports::of(&lib);
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();

    let mut modules = BTreeSet::new();
    let mut broken = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else { continue };
        modules.insert(module.clone());
        let shown = file.strip_prefix(&src).unwrap_or(file).display().to_string();
        let Some(own) = layer_of(&module) else {
            broken.push(format!("module `{module}` has no layer: add it to LAYERS in {}", file!()));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read a source file");
        broken.extend(broken_in(&shown, &module, own, &text, depth_of(&src, file), &reexports));
    }
    assert!(broken.is_empty(), "the runtime's layers are broken:\n{}", broken.join("\n"));
    let listed: BTreeSet<String> = LAYERS.iter().flat_map(|l| l.iter().map(|m| (*m).to_owned())).collect();
    assert_eq!(listed, modules, "LAYERS lists modules the crate does not have, or misses some");
}

/// What [`broken_in`] finds in `text`, a file of module `plan` (the lowest
/// layer) at `depth`, with a `lib.rs` that re-exports `Infra` at the root
/// and in `__private`.
fn caught_in_plan(text: &str, depth: usize) -> Vec<String> {
    let lib = "pub use handle::Infra;\npub use e2e_infra_core::catalog;\n\
               pub mod __private {\n    pub use crate::handle::Infra;\n}";
    broken_in("plan/x.rs", "plan", 0, text, depth, &Reexports::of(lib))
}

#[test]
fn an_item_reached_through_a_re_export_counts_as_its_module() {
    let caught = caught_in_plan("use crate::Infra;", 2);
    assert!(caught.len() == 1 && caught[0].contains("of module `handle`"), "{caught:?}");
    let caught = caught_in_plan("fn f(_: &crate::__private::Infra) {}", 2);
    assert!(caught.len() == 1 && caught[0].contains("of module `handle`"), "{caught:?}");
    // Another crate's item re-exported at the root is no module's.
    assert!(caught_in_plan("use crate::catalog::Catalog;", 2).is_empty());
}

#[test]
fn a_super_path_out_of_a_top_level_module_is_caught() {
    let caught = caught_in_plan("use super::handle::Infra;", 1);
    assert!(caught.len() == 1 && caught[0].contains("names `crate::handle`"), "{caught:?}");
    let caught = caught_in_plan("mod tests {\n    use super::super::stack::up;\n}", 1);
    assert!(caught.len() == 1 && caught[0].contains("names `crate::stack`"), "{caught:?}");
    // Within the module, `super::` is its own.
    assert!(caught_in_plan("use super::Tag;", 2).is_empty());
}

#[test]
fn a_glob_of_the_root_is_caught() {
    let caught = caught_in_plan("use crate::*;", 2);
    assert!(caught.len() == 1 && caught[0].contains("`crate::*`"), "{caught:?}");
    assert_eq!(caught_in_plan("use crate::{plan::Plan, *};", 2).len(), 1);
}

#[test]
fn a_new_name_for_the_root_is_caught() {
    let caught = caught_in_plan("use crate as root;\nfn f() -> root::stack::Stack { todo!() }", 2);
    assert!(caught.iter().any(|c| c.contains("`crate as ...`")), "{caught:?}");
    assert!(caught_in_plan("pub(crate) use crate::plan::Tag as Label;", 2).is_empty());
}

#[test]
fn the_reader_finds_grouped_nested_and_plain_paths() {
    let named = |a: &str, b: &str| RootPath::Named(a.to_owned(), b.to_owned());
    let code = "use crate::{plan::{Plan, Tag}, labels};\nlet x = crate::engine::connect();\nuse my_crate::stack;";
    assert_eq!(crate_paths(code), [named("plan", ""), named("labels", ""), named("engine", "connect")]);
    assert_eq!(
        crate_paths("use crate::*;\nuse crate::{plan, *};"),
        [RootPath::Glob, named("plan", ""), RootPath::Glob]
    );
    assert!(aliases_the_root("use crate as root;"));
    assert!(!aliases_the_root("pub(crate) fn f() {}\nuse crate::plan as p;"));
}

#[test]
fn the_reader_follows_re_exports_to_their_module() {
    let lib = "pub use plan::{Plan, Tag};\npub use e2e_infra_core::catalog;\npub use handle::Infra;\n\
               pub mod __private {\n    pub use crate::handle::Infra;\n    pub use crate::suite::Suite;\n}";
    let reexports = Reexports::of(lib);
    let named = |a: &str, b: &str| RootPath::Named(a.to_owned(), b.to_owned());
    assert_eq!(reexports.module_of(&named("Tag", "")), Ok(Some("plan".to_owned())));
    assert_eq!(reexports.module_of(&named("catalog", "")), Ok(None));
    assert_eq!(reexports.module_of(&named("Infra", "")), Ok(Some("handle".to_owned())));
    assert_eq!(reexports.module_of(&named("__private", "Infra")), Ok(Some("handle".to_owned())));
    assert_eq!(reexports.module_of(&named("__private", "Suite")), Ok(Some("suite".to_owned())));
    assert!(reexports.module_of(&RootPath::Glob).is_err());
}

#[test]
fn super_paths_that_climb_to_the_root_count_as_crate_paths() {
    // A top-level module's file: one `super::` is the root.
    assert_eq!(supers_as_crate("use super::handle::Infra;", 1), "use crate::handle::Infra;");
    // In a test module of that file, two.
    let tests = "mod tests {\n    use super::*;\n    use super::super::stack;\n}\nuse super::plan;";
    assert_eq!(supers_as_crate(tests, 1), "mod tests {\n    use super::*;\n    use crate::stack;\n}\nuse crate::plan;");
    // Inside the module's own files, `super::` stays within it.
    assert_eq!(supers_as_crate("use super::super::ready;", 3), "use super::super::ready;");
    assert_eq!(supers_as_crate("use super::super::ready;", 2), "use crate::ready;");
    assert_eq!(crate_paths(&supers_as_crate("use super::*;", 1)), [RootPath::Glob]);
}

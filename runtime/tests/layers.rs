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

/// The code of a file without its comments, line by line.
fn code(text: &str) -> String {
    text.lines().map(|line| line.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// The first segment of every path that starts at the crate root:
/// `crate::a::b` gives `a`, `crate::{a::b, c}` gives `a` and `c`.
fn crate_paths(code: &str) -> Vec<String> {
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
                        found.push(first_segment(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
        } else {
            found.push(first_segment(rest));
        }
    }
    found.retain(|s| !s.is_empty());
    found
}

fn first_segment(path: &str) -> String {
    path.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// What `lib.rs` re-exports at the crate root, by name: the module it comes
/// from (`None` for items of other crates).
fn root_reexports(lib: &str) -> BTreeMap<String, Option<String>> {
    let mut names = BTreeMap::new();
    for line in code(lib).lines() {
        let Some(path) = line.trim().strip_prefix("pub use ").and_then(|p| p.strip_suffix(';')) else { continue };
        let (module, items) = match path.split_once("::{") {
            Some((module, items)) => (module, items.trim_end_matches('}').split(',').collect::<Vec<_>>()),
            None => match path.rsplit_once("::") {
                Some((module, item)) => (module, vec![item]),
                None => continue,
            },
        };
        let own = first_segment(module);
        let own = (layer_of(&own).is_some()).then_some(own);
        for item in items {
            names.insert(item.trim().to_owned(), own.clone());
        }
    }
    names
}

#[test]
fn every_module_names_only_modules_of_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("read lib.rs");
    let reexports = root_reexports(&lib);
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();

    let mut modules = BTreeSet::new();
    let mut broken = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else { continue };
        modules.insert(module.clone());
        let Some(own) = layer_of(&module) else {
            broken.push(format!("module `{module}` has no layer: add it to LAYERS in {}", file!()));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read a source file");
        for name in crate_paths(&code(&text)) {
            let target = match reexports.get(&name) {
                Some(None) => continue,
                Some(Some(from)) => from.clone(),
                None => name.clone(),
            };
            if target == module || name == "__private" {
                continue;
            }
            match layer_of(&target) {
                Some(layer) if layer < own => {}
                Some(layer) => broken.push(format!(
                    "{}: module `{module}` (layer {own}) names `crate::{name}` of module `{target}` (layer {layer}); a module may name only modules of lower layers",
                    file.strip_prefix(&src).unwrap_or(file).display()
                )),
                None => broken.push(format!(
                    "{}: `crate::{name}` is neither a module with a layer nor a re-export of lib.rs",
                    file.strip_prefix(&src).unwrap_or(file).display()
                )),
            }
        }
    }
    assert!(broken.is_empty(), "the runtime's layers are broken:\n{}", broken.join("\n"));
    let listed: BTreeSet<String> = LAYERS.iter().flat_map(|l| l.iter().map(|m| (*m).to_owned())).collect();
    assert_eq!(listed, modules, "LAYERS lists modules the crate does not have, or misses some");
}

#[test]
fn the_reader_finds_grouped_nested_and_plain_paths() {
    let code = "use crate::{plan::{Plan, Tag}, labels};\nlet x = crate::engine::connect();\nuse my_crate::stack;";
    assert_eq!(crate_paths(code), ["plan", "labels", "engine"]);
    let lib = "pub use plan::{Plan, Tag};\npub use e2e_infra_core::catalog;\npub use handle::Infra;";
    let reexports = root_reexports(lib);
    assert_eq!(reexports.get("Tag"), Some(&Some("plan".to_owned())));
    assert_eq!(reexports.get("catalog"), Some(&None));
    assert_eq!(reexports.get("Infra"), Some(&Some("handle".to_owned())));
}

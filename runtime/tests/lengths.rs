//! No function of the runtime's and the core's library code runs over
//! [`MOST_LINES`] lines: a longer one is a list of steps that wants names.
//! This test reads the modules each crate compiles (from `lib.rs`, along
//! `mod` declarations, leaving out those compiled for tests only) and fails
//! on every function, method or trait method that is longer.

use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// The most lines a function may take, from `fn` to its closing brace.
const MOST_LINES: usize = 100;

/// Whether an item is compiled for tests only (`#[cfg(test)]`, `#[test]`).
fn for_tests(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("test")
            || (attr.path().is_ident("cfg") && attr.parse_args::<syn::Ident>().is_ok_and(|arg| arg == "test"))
    })
}

/// The functions of one file over the limit, and the files of the modules
/// it declares.
#[derive(Default)]
struct Reader {
    /// `name (N lines)` per function over the limit, with its line.
    long: Vec<String>,
    /// Modules declared without a body: their names.
    declared: Vec<String>,
    /// Names of the inline modules the reader is in.
    inline: Vec<String>,
}

impl Reader {
    fn measure(&mut self, name: &syn::Ident, sig: &syn::Signature, block: &syn::Block) {
        let first = sig.fn_token.span.start().line;
        let last = block.brace_token.span.close().end().line;
        let lines = last + 1 - first;
        if lines > MOST_LINES {
            self.long.push(format!("line {first}: `{name}` takes {lines} lines"));
        }
    }
}

impl<'ast> Visit<'ast> for Reader {
    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        if !for_tests(&item.attrs) {
            self.measure(&item.sig.ident, &item.sig, &item.block);
            syn::visit::visit_item_fn(self, item);
        }
    }

    fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
        if !for_tests(&item.attrs) {
            self.measure(&item.sig.ident, &item.sig, &item.block);
            syn::visit::visit_impl_item_fn(self, item);
        }
    }

    fn visit_trait_item_fn(&mut self, item: &'ast syn::TraitItemFn) {
        if let Some(block) = &item.default {
            self.measure(&item.sig.ident, &item.sig, block);
        }
        syn::visit::visit_trait_item_fn(self, item);
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if for_tests(&item.attrs) {
            return;
        }
        match &item.content {
            None => self.declared.push(item.ident.to_string()),
            Some(_) => {
                self.inline.push(item.ident.to_string());
                syn::visit::visit_item_mod(self, item);
                self.inline.pop();
            }
        }
    }

    fn visit_item_impl(&mut self, item: &'ast syn::ItemImpl) {
        if !for_tests(&item.attrs) {
            syn::visit::visit_item_impl(self, item);
        }
    }
}

/// The functions over the limit in `code`, and the modules it declares.
fn read(code: &str) -> Result<(Vec<String>, Vec<String>), syn::Error> {
    let file = syn::parse_file(code)?;
    let mut reader = Reader::default();
    reader.visit_file(&file);
    Ok((reader.long, reader.declared))
}

/// The file of module `name` declared in `file`: `dir/name.rs` or
/// `dir/name/mod.rs`, where `dir` is the folder of `file`'s own modules.
fn module_file(file: &Path, name: &str) -> PathBuf {
    let parent = file.parent().expect("a file in a folder");
    let stem = file.file_stem().and_then(|s| s.to_str()).expect("a file name");
    let dir = if matches!(stem, "lib" | "mod") { parent.to_owned() } else { parent.join(stem) };
    let flat = dir.join(format!("{name}.rs"));
    if flat.exists() {
        flat
    } else {
        dir.join(name).join("mod.rs")
    }
}

#[test]
fn no_function_of_the_library_runs_over_the_limit() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut long = Vec::new();
    let mut read_files = 0;
    for src in [manifest.join("src"), manifest.join("core/src")] {
        let mut pending = vec![src.join("lib.rs")];
        while let Some(file) = pending.pop() {
            let code = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
            let (found, declared) = read(&code).unwrap_or_else(|e| panic!("parsing {}: {e}", file.display()));
            read_files += 1;
            let shown = file.strip_prefix(manifest).unwrap_or(&file).display().to_string();
            long.extend(found.into_iter().map(|f| format!("{shown}, {f}")));
            pending.extend(declared.iter().map(|name| module_file(&file, name)));
        }
    }
    assert!(read_files > 50, "read only {read_files} files: the walk along `mod` declarations lost its way");
    assert!(long.is_empty(), "functions over {MOST_LINES} lines; split them into named steps:\n{}", long.join("\n"));
}

#[test]
fn the_reader_measures_functions_methods_and_defaults_and_leaves_tests_out() {
    let body = |lines: usize| "    step();\n".repeat(lines);
    let code = format!(
        "fn short() {{\n{}}}\n\
         fn long() {{\n{}}}\n\
         impl Thing {{\n    fn method() {{\n{}    }}\n}}\n\
         trait Steps {{\n    fn default_body() {{\n{}    }}\n}}\n\
         mod inline {{\n    fn nested() {{\n{}    }}\n}}\n\
         #[cfg(test)]\nmod tests {{\n    fn helper() {{\n{}    }}\n}}\n\
         #[test]\nfn a_test() {{\n{}}}\n\
         mod declared;\n#[cfg(test)]\nmod tested;\n",
        body(98),
        body(99),
        body(120),
        body(101),
        body(150),
        body(200),
        body(200),
    );
    let (long, declared) = read(&code).unwrap();
    let names: Vec<&str> = long.iter().map(|l| l.split('`').nth(1).unwrap()).collect();
    assert_eq!(names, ["long", "method", "default_body", "nested"]);
    assert!(long[0].ends_with("takes 101 lines"), "{}", long[0]);
    assert_eq!(declared, ["declared"]);
}

//! The quickstart as a user follows it: a crate laid out exactly as
//! `docs/quickstart.md` says (its `Cargo.toml` lines, its catalog, its test
//! file), next to a checkout of this repository, builds with `-D warnings`
//! with and without its `e2e` feature, and so does the README's example;
//! without the feature the tests show as ignored, with the reason.

use std::path::Path;
use std::process::{Command, Output};

use e2e_infra_tests::guide::{blocks, lay_out, page, root, write};

/// The one block of `language` that contains `marker`.
fn block(markdown: &str, language: &str, marker: &str) -> String {
    let mut matching = blocks(markdown, language).into_iter().filter(|b| b.contains(marker));
    let found = matching.next().unwrap_or_else(|| panic!("no ```{language} block with `{marker}`"));
    assert!(matching.next().is_none(), "more than one ```{language} block with `{marker}`");
    found
}

/// `cargo <args>` in `dir`, with nothing of this test run's environment that
/// would change what the crate does.
fn cargo(dir: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.args(args).current_dir(dir);
    for (key, _) in std::env::vars() {
        if key.starts_with("NEXTEST") || key.starts_with("E2E_INFRA") || key.starts_with("RUST_TEST") {
            command.env_remove(key);
        }
    }
    // The dependencies are the workspace's: a target directory given to
    // this run already holds them; without one, lifecycle's serves.
    if std::env::var_os("CARGO_TARGET_DIR").is_none() {
        command.env("CARGO_TARGET_DIR", root().join("target/fixture"));
    }
    let output = command.output().expect("run cargo");
    eprintln!(
        "--- cargo {} ---\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn a_crate_set_up_as_the_quickstart_says_builds_without_warnings() {
    let guide = page("quickstart.md");
    let manifest = block(&guide, "toml", "[dev-dependencies]");
    let catalog = block(&guide, "toml", "[components.datastorage]");
    let suite = block(&guide, "rust", "mod notification_e2e");

    let dir = tempfile::tempdir().expect("temporary directory");
    // The quickstart's dependency names a checkout next to the workspace.
    std::os::unix::fs::symlink(root(), dir.path().join("e2e-infra")).expect("a checkout next to the crate");
    let krate = dir.path().join("notification");
    let package = format!(
        "[package]\nname = \"quickstart-{}\"\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\n[workspace]\n\n",
        std::process::id()
    );
    write(&krate.join("Cargo.toml"), &(package + &manifest));
    write(&krate.join("src/lib.rs"), "");
    write(&krate.join("e2e-infra.toml"), &catalog);
    write(&krate.join("tests/notification.rs"), &suite);
    // The README's example, in the same crate.
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    write(&krate.join("tests/readme.rs"), &block(&readme, "rust", "mod notification_e2e"));
    lay_out(&krate, &catalog);
    std::fs::copy(root().join("Cargo.lock"), krate.join("Cargo.lock")).expect("lock file");

    let builds =
        ["notification", "readme"].into_iter().flat_map(|test| [(test, &[][..]), (test, &["--features", "e2e"])]);
    for (test, features) in builds {
        let mut args = vec!["rustc", "--test", test];
        args.extend(features);
        args.extend(["--", "-D", "warnings"]);
        let built = cargo(&krate, &args);
        assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    }
    let ran = cargo(&krate, &["test", "--test", "notification"]);
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
    let listed = String::from_utf8_lossy(&ran.stdout);
    for test in ["datastorage_is_ready", "the_engine_runs_what_was_built"] {
        let line = format!("{test} ... ignored, needs a container engine: run with --features e2e");
        assert!(listed.contains(&line), "`{line}` is missing:\n{listed}");
    }
}

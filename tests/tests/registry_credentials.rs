//! Registry credentials from Docker's configuration folder, with credential
//! helpers: each lookup runs in a child process whose `DOCKER_CONFIG` is a
//! temporary folder and whose `PATH` starts with a fake
//! `docker-credential-e2etest` script, so no test changes its own
//! environment.

use std::path::Path;
use std::process::Command;

use e2e_infra::load::credentials::{lookup, DOCKER_CONFIG_ENV};

/// Tells the child which registry to look up.
const CHILD_ENV: &str = "E2E_INFRA_TEST_CREDENTIAL_REGISTRY";
const CHILD_TEST: &str = "lookup_in_a_child_process";
/// Starts the child's answer; libtest's own output may share its line.
const ANSWER: &str = "ANSWER: ";

/// The fake helper: knows one registry, fails loudly for another, and
/// says what Docker's helpers say for the rest.
const HELPER: &str = r#"#!/bin/sh
read server
case "$server" in
  known:5000) echo '{"ServerURL":"known:5000","Username":"helper-user","Secret":"helper-pass"}' ;;
  broken:5000) echo "the keychain is locked" >&2; exit 1 ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
"#;

#[test]
#[ignore = "the entry point of the child process the other tests start"]
fn lookup_in_a_child_process() {
    let Ok(registry) = std::env::var(CHILD_ENV) else { return };
    match lookup(&registry) {
        Ok(Some(found)) => println!("{ANSWER}FOUND {} | {}", found.source, found.username().unwrap_or("-")),
        Ok(None) => println!("{ANSWER}NONE"),
        Err(error) => println!("{ANSWER}ERROR {error}"),
    }
}

/// The child's answer for `registry`, with `config` as config.json.
fn look_up(config: &str, registry: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let (bin, docker) = (dir.path().join("bin"), dir.path().join("docker"));
    std::fs::create_dir_all(&bin).expect("bin");
    std::fs::create_dir_all(&docker).expect("docker config folder");
    std::fs::write(docker.join("config.json"), config).expect("config.json");
    write_executable(&bin.join("docker-credential-e2etest"), HELPER);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let output = Command::new(std::env::current_exe().expect("this test binary"))
        .args(["--exact", CHILD_TEST, "--ignored", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, registry)
        .env(DOCKER_CONFIG_ENV, &docker)
        .env("PATH", path)
        .output()
        .expect("the child runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    stdout
        .lines()
        .find_map(|l| Some(l.split_once(ANSWER)?.1.to_owned()))
        .unwrap_or_else(|| panic!("no answer from the child:\n{stdout}"))
}

fn write_executable(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[test]
fn a_registry_helper_gives_the_credential() {
    let answer = look_up(r#"{"credHelpers": {"known:5000": "e2etest"}}"#, "known:5000");
    assert_eq!(answer, "FOUND credential helper `docker-credential-e2etest` (credHelpers) | helper-user");
}

#[test]
fn the_store_serves_every_registry_and_one_it_does_not_know_goes_without() {
    let config = r#"{"credsStore": "e2etest"}"#;
    assert_eq!(
        look_up(config, "known:5000"),
        "FOUND credential store `docker-credential-e2etest` (credsStore) | helper-user"
    );
    assert_eq!(look_up(config, "other:5000"), "NONE");
}

#[test]
fn a_registry_helper_wins_over_auths_and_the_store() {
    let config = r#"{"credsStore": "absent", "auths": {"known:5000": {"auth": "eDp5"}}, "credHelpers": {"known:5000": "e2etest"}}"#;
    assert!(look_up(config, "known:5000").contains("(credHelpers) | helper-user"));
}

#[test]
fn a_failing_helper_is_named_with_what_it_said_and_the_fix() {
    let answer = look_up(r#"{"credHelpers": {"broken:5000": "e2etest"}}"#, "broken:5000");
    assert!(
        answer.starts_with(
            "ERROR the credential for registry broken:5000 from credential helper `docker-credential-e2etest`"
        ),
        "{answer}"
    );
    assert!(answer.contains("the keychain is locked") && answer.contains("run `docker login broken:5000`"), "{answer}");
}

#[test]
fn a_helper_that_is_not_installed_is_named() {
    let answer = look_up(r#"{"credsStore": "e2etest-not-installed"}"#, "known:5000");
    assert!(answer.contains("`docker-credential-e2etest-not-installed` cannot be run (is it on PATH?)"), "{answer}");
}

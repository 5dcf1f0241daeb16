//! `e2e-infra clean --images` as a user types it: the flags parse, and a
//! stray `--keep` without `--images` is refused before any engine is asked.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_e2e-infra");

#[test]
fn clean_documents_images_and_keep() {
    let out = Command::new(BIN).args(["clean", "--help"]).output().expect("run e2e-infra");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--images") && help.contains("--keep"), "{help}");
    assert!(help.contains("--kept"), "the stack flags stay: {help}");
}

#[test]
fn keep_without_images_is_refused() {
    let out = Command::new(BIN)
        .args(["clean", "--keep", "2"])
        // No engine is asked: a dead address would fail differently.
        .env("DOCKER_HOST", "unix:///nonexistent/e2e-infra-cli-images.sock")
        .output()
        .expect("run e2e-infra");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--images"), "{stderr}");
    assert!(!stderr.contains("no container engine"), "{stderr}");
}

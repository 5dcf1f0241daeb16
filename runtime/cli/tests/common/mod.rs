//! The project the command's tests run against: one busybox web component
//! built from `ctx`, and a private state root in `state`.

use std::os::unix::fs::DirBuilderExt as _;

const CATALOG: &str = r#"
[components.web]
build = { context = "ctx", dockerfile = "web.Dockerfile" }
[components.web.docker]
ports = [8080]
command = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/"]
ready = { tcp = 8080, timeout = "30s" }
"#;

/// A new project in a temporary folder.
pub fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("ctx")).expect("ctx");
    std::fs::copy("/bin/busybox", dir.path().join("ctx/busybox")).expect("busybox: install busybox-static");
    std::fs::write(dir.path().join("web.Dockerfile"), "FROM scratch\nCOPY busybox /bin/busybox\n").expect("dockerfile");
    std::fs::write(dir.path().join("e2e-infra.toml"), CATALOG).expect("catalog");
    // The state root must be private to its user.
    std::fs::DirBuilder::new().mode(0o700).create(dir.path().join("state")).expect("state");
    dir
}

//! Attaching to a ready stack, per test process, on Docker and on a real
//! Kubernetes cluster: one generated suite whose every test asks the
//! handle for the `api` endpoint and reads one page through it, run under
//! cargo-nextest (a process per test) once with each backend.

use std::path::Path;
use std::time::Duration;

use bollard::Docker;
use e2e_infra::backend::{BACKEND_ENV, CONTAINERD_SOCKET_ENV, KUBE_CONTEXT_ENV};

use crate::amortize::{measure, nextest, workspace, Cleanup, Measured};
use crate::report::{median, ratio, secs, Res, Section};

/// The cluster of the environment, as `scripts/cluster.sh` prints it.
const CONTEXT_ENV: &str = "E2E_KUBE_CONTEXT";
const SOCKET_ENV: &str = "E2E_CONTAINERD_SOCKET";

const CATALOG: &str = r#"[components.api]
build = { context = "image", dockerfile = "busybox.Dockerfile" }
[components.api.docker]
ports = [8080]
command = ["/bin/busybox", "sh", "-c", "echo api > /www/index.html && exec /bin/busybox httpd -f -p 8080 -h /www"]
ready = { tcp = 8080, timeout = "30s" }
[components.api.kubernetes]
manifests = ["api.yaml"]
"#;

const MANIFEST: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: { name: api }
spec:
  replicas: 1
  selector: { matchLabels: { app: api } }
  template:
    metadata: { labels: { app: api } }
    spec:
      terminationGracePeriodSeconds: 0
      containers:
        - name: api
          image: "${image:api}"
          imagePullPolicy: IfNotPresent
          command: ["/bin/busybox", "sh", "-c", "echo api > /www/index.html && exec /bin/busybox httpd -f -p 8080 -h /www"]
          ports: [{ containerPort: 8080 }]
          readinessProbe: { tcpSocket: { port: 8080 }, periodSeconds: 1 }
---
apiVersion: v1
kind: Service
metadata: { name: api }
spec:
  selector: { app: api }
  ports: [{ port: 8080, targetPort: 8080 }]
"#;

/// The suite of `tests` tests for `consumer`, laid out in `dir`.
fn lay_out(dir: &Path, consumer: &str, tests: usize) -> Res<()> {
    std::fs::create_dir_all(dir.join("tests"))?;
    std::fs::create_dir_all(dir.join("image"))?;
    let fixture = workspace().join("tests/fixture");
    for (from, to) in [
        (fixture.join("busybox.Dockerfile"), dir.join("busybox.Dockerfile")),
        (std::path::PathBuf::from(e2e_infra_tests::BUSYBOX), dir.join("image/busybox")),
        (workspace().join("Cargo.lock"), dir.join("Cargo.lock")),
    ] {
        std::fs::copy(&from, &to).map_err(|e| format!("copying {}: {e}", from.display()))?;
    }
    std::fs::write(dir.join("e2e-infra.toml"), CATALOG)?;
    std::fs::write(dir.join("api.yaml"), MANIFEST)?;
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"{consumer}\"\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\n[workspace]\n\n\
             [dev-dependencies]\ne2e-infra = {{ path = \"{}\" }}\n",
            workspace().join("runtime").display()
        ),
    )?;
    let test = "    #[test]\n    fn NAME(infra: &Infra) {\n        assert!(page(infra).contains(\"api\"));\n    }\n";
    let tests: String = (1..=tests).map(|i| test.replace("NAME", &format!("t{i:02}"))).collect();
    std::fs::write(
        dir.join("tests/attach.rs"),
        format!(
            "//! Every test reads one page of the run's `api`.\n\n\
             #[e2e_infra::e2e_infra(consumer = \"{consumer}\", needs = [\"api\"])]\nmod attach {{\n    \
             use std::io::{{BufRead, Read, Write}};\n    use e2e_infra::Infra;\n\n    \
             fn page(infra: &Infra) -> String {{\n        \
             let endpoint = infra.try_endpoint(\"api\", 8080).expect(\"api endpoint\");\n        \
             let mut stream = std::net::TcpStream::connect(endpoint.addr()).expect(\"connect\");\n        \
             write!(stream, \"GET /index.html HTTP/1.1\\r\\nHost: api\\r\\n\\r\\n\").expect(\"send\");\n        \
             let mut reader = std::io::BufReader::new(stream);\n        \
             let (mut line, mut length) = (String::new(), 0);\n        \
             while reader.read_line(&mut line).expect(\"header\") > 2 {{\n            \
             if let Some(value) = line.to_ascii_lowercase().strip_prefix(\"content-length:\") {{\n                \
             length = value.trim().parse().expect(\"a length\");\n            }}\n            line.clear();\n        }}\n        \
             let mut body = vec![0; length];\n        reader.read_exact(&mut body).expect(\"body\");\n        \
             String::from_utf8_lossy(&body).into_owned()\n    }}\n\n\
             {tests}}}\n"
        ),
    )?;
    Ok(())
}

/// The median and the slowest test process but the one that set up.
fn attached(measured: &Measured) -> (Duration, Duration) {
    let mut times = measured.per_test.clone();
    times.sort();
    // The slowest is the process that set the stack up.
    times.pop();
    (median(&times), times.last().copied().unwrap_or_default())
}

/// Benchmark 9.
pub async fn attach(docker: &Docker, tests: usize) -> Res<Section> {
    let context = std::env::var(CONTEXT_ENV).map_err(|_| format!("benchmark 9 needs a cluster: set {CONTEXT_ENV}"))?;
    let socket = std::env::var(SOCKET_ENV).map_err(|_| {
        format!("benchmark 9 loads into the cluster's node: set {SOCKET_ENV} (scripts/cluster.sh prints it)")
    })?;
    let mut section = Section::new(
        "9. Attaching to a ready stack, per test process (cargo-nextest)",
        &format!(
            "One generated suite of {tests} tests, each in a process of its own under `cargo nextest run`: a test \
             asks the handle for the `api` endpoint (a busybox httpd) and reads one page through it, by its \
             `Content-Length` as HTTP clients do. Run once on Docker and once on the real cluster (context `{context}`, images into its node's containerd). The \
             process that sets the stack up is left out; the others only attach. A test's time is nextest's, \
             from the process's start to its end."
        ),
        &["per attached test process", "Docker", "Kubernetes", "Kubernetes − Docker"],
    );
    let dir = tempfile::tempdir()?;
    let consumer = format!("bench-attach-{:04x}", std::process::id() % 0xffff);
    let cleanup = Cleanup(vec![consumer.clone()]);
    lay_out(dir.path(), &consumer, tests)?;
    let compiled = nextest(dir.path(), &["--no-run"], &[]).output()?;
    if !compiled.status.success() {
        return Err(
            format!("compiling the generated suite failed:\n{}", String::from_utf8_lossy(&compiled.stderr)).into()
        );
    }
    let on_docker = measure(docker, dir.path(), "attach", &consumer, &[(BACKEND_ENV, "docker")]).await?;
    let kube =
        [(BACKEND_ENV, "kubernetes"), (KUBE_CONTEXT_ENV, context.as_str()), (CONTAINERD_SOCKET_ENV, socket.as_str())];
    let on_kube = measure(docker, dir.path(), "attach", &consumer, &kube).await?;
    let ((docker_median, docker_slowest), (kube_median, kube_slowest)) = (attached(&on_docker), attached(&on_kube));
    let over = |kube: Duration, docker: Duration| match kube.checked_sub(docker) {
        Some(over) => format!("+{}", secs(over)),
        None => format!("−{}", secs(docker - kube)),
    };
    section.row(vec!["median".to_owned(), secs(docker_median), secs(kube_median), over(kube_median, docker_median)]);
    section.row(vec![
        "slowest".to_owned(),
        secs(docker_slowest),
        secs(kube_slowest),
        over(kube_slowest, docker_slowest),
    ]);
    section.row(vec![
        "wall time of the nextest run (with setup)".to_owned(),
        secs(on_docker.wall),
        secs(on_kube.wall),
        ratio(on_kube.wall, on_docker.wall),
    ]);
    section.target(
        "per attached test process (median) ≤ 100 ms over Docker's",
        &over(kube_median, docker_median),
        kube_median <= docker_median + Duration::from_millis(100),
    );
    section.note(&format!(
        "attached processes counted: {} on Docker, {} on Kubernetes. A client that instead reads until the \
         server closes waits about 1 s more on Kubernetes: containerd's port-forward keeps a connection the \
         pod closed open until the client closes its side, or for 1 s",
        on_docker.per_test.len().saturating_sub(1),
        on_kube.per_test.len().saturating_sub(1)
    ));
    drop(cleanup);
    Ok(section)
}

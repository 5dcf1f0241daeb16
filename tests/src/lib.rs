//! Support for the engine-backed suites: throw-away projects with a catalog,
//! scratch images holding the machine's static busybox, unique run
//! identities, and clean-up of what a test built; for the real-cluster
//! suite, the cluster under test ([`cluster`]); the guide's examples
//! ([`guide`]).
//!
//! Nothing can be pulled on the test machines, so every image is built from
//! `FROM scratch` plus `/bin/busybox` (Debian's `busybox-static`).

pub mod cluster;
pub mod guide;
pub mod kind_node;
pub mod report;
pub mod shards;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bollard::query_parameters::RemoveImageOptionsBuilder;
use bollard::Docker;
use e2e_infra::build::{build_all, BuildOptions, BuildOutcome};
use e2e_infra::{Catalog, Delivery, ImageRef, Origin, Plan, RunId};
use futures::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The static busybox the test images are made of.
pub const BUSYBOX: &str = "/bin/busybox";
/// The folder where `scripts/engine.sh` keeps the engines it starts, unless
/// [`ENGINE_DIR_ENV`] names another.
pub const ENGINE_DIR: &str = "/tmp/e2e-infra-engines";
/// Overrides [`ENGINE_DIR`], as it does for `scripts/engine.sh`.
pub const ENGINE_DIR_ENV: &str = "E2E_INFRA_ENGINE_DIR";
/// The loopback registry that `scripts/engine.sh --all` starts.
pub const REGISTRY: &str = "127.0.0.1:5000";

/// A Dockerfile for a scratch image with busybox and its applets in `/bin`
/// (so `RUN` and `sh -c` work), followed by `extra` lines.
pub fn busybox_dockerfile(extra: &str) -> String {
    format!("FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n{extra}")
}

/// As [`busybox_dockerfile`], but copying the context's unique `nonce` file
/// first (see [`Project::busybox_context`]), so that no layer is shared with
/// another test's build: removing this test's images then never removes a
/// layer that a build running in parallel is using.
pub fn unshared_busybox_dockerfile(extra: &str) -> String {
    busybox_dockerfile(extra).replacen("FROM scratch\n", "FROM scratch\nCOPY nonce /nonce\n", 1)
}

/// A name no other test process or call shares: `<prefix>-<pid>-<nanos>-<n>`.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos}-{n}", std::process::id())
}

/// A run identity no other test process shares, from [`unique`].
pub fn unique_run(area: &str) -> RunId {
    RunId::explicit(&unique(area), None).expect("valid run id")
}

/// A temporary project directory holding a catalog and build contexts;
/// removed when dropped.
pub struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    /// An empty project.
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("temporary directory") }
    }

    /// The project root.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `contents` to `relative`, creating directories.
    pub fn write(&self, relative: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create directories");
        }
        fs::write(&path, contents).expect("write file");
        path
    }

    /// Makes `relative` a build context holding `busybox` and a file with
    /// unique content, so that its input digest is this test's own and no
    /// image built by another test is reused for it.
    pub fn busybox_context(&self, relative: &str) -> PathBuf {
        let dir = self.dir.path().join(relative);
        fs::create_dir_all(&dir).expect("create context");
        fs::copy(BUSYBOX, dir.join("busybox")).expect("copy /bin/busybox (install busybox-static)");
        fs::write(dir.join("nonce"), unique_run("nonce").as_str()).expect("write nonce");
        dir
    }

    /// As [`Project::busybox_catalog`], built from
    /// [`unshared_busybox_dockerfile`]`(extra)`.
    pub fn unshared_busybox_catalog(&self, name: &str, extra: &str) -> Catalog {
        self.busybox_context(name);
        self.write(&format!("{name}/Dockerfile"), unshared_busybox_dockerfile(extra));
        self.catalog(&format!("[components.{name}]\nbuild = {{ context = \"{name}\" }}\n"))
    }

    /// Writes `toml` as the project's `e2e-infra.toml` and loads it.
    pub fn catalog(&self, toml: &str) -> Catalog {
        let path = self.write("e2e-infra.toml", toml);
        Catalog::load(&path).unwrap_or_else(|e| panic!("catalog: {e}"))
    }

    /// A catalog of one component, `name`, built in context `<name>/` from
    /// [`busybox_dockerfile`]`(extra)`.
    pub fn busybox_catalog(&self, name: &str, extra: &str) -> Catalog {
        self.busybox_context(name);
        self.write(&format!("{name}/Dockerfile"), busybox_dockerfile(extra));
        self.catalog(&format!("[components.{name}]\nbuild = {{ context = \"{name}\" }}\n"))
    }
}

impl Default for Project {
    fn default() -> Self {
        Self::new()
    }
}

/// Plans `needs` of `catalog` for `consumer` in a fresh run of `area`.
pub fn plan(catalog: &Catalog, consumer: &str, needs: &[&str], area: &str, delivery: &Delivery) -> Plan {
    Plan::new(catalog, consumer, needs, unique_run(area), delivery).unwrap_or_else(|e| panic!("plan: {e}"))
}

/// The address of the engine the tests talk to: `DOCKER_HOST`, else the
/// default socket, as [`e2e_infra::engine::connect`] picks it.
pub fn engine_host() -> String {
    std::env::var(e2e_infra::engine::DOCKER_HOST_ENV)
        .ok()
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| e2e_infra::engine::DEFAULT_HOST.to_owned())
}

/// The address of the Podman API that `scripts/engine.sh --all` starts:
/// `podman.sock` in its folder ([`ENGINE_DIR`] or [`ENGINE_DIR_ENV`]).
pub fn podman_host() -> String {
    let dir = std::env::var(ENGINE_DIR_ENV).ok().filter(|dir| !dir.is_empty()).unwrap_or_else(|| ENGINE_DIR.to_owned());
    format!("unix://{dir}/podman.sock")
}

/// Connects to the engine at `host`, or to the default one.
pub async fn engine(host: Option<&str>) -> Docker {
    let connected = match host {
        Some(host) => e2e_infra::engine::connect_to(host).await,
        None => e2e_infra::engine::connect().await,
    };
    connected.unwrap_or_else(|e| panic!("{e}"))
}

/// A busybox image built in `docker` for the tests of `area`, whose
/// reference other catalogs can borrow (`image = "..."`), so that several
/// components share one build. Remove it with [`remove_built_images`] on
/// the returned plan.
pub async fn busybox_image(docker: &Docker, project: &Project, area: &str, extra: &str) -> (Plan, BuildOutcome) {
    let catalog = project.busybox_catalog("busybox", extra);
    let plan = plan(&catalog, area, &["busybox"], area, &Delivery::Local);
    let mut built = build_all(docker, &plan, &BuildOptions::default()).await.unwrap_or_else(|e| panic!("{e}"));
    (plan, built.remove(0))
}

/// Removes the references `plan` gave its built images and their cache
/// references (an image goes when its last reference does). Borrowed
/// images are left alone.
pub async fn remove_built_images(docker: &Docker, plan: &Plan) {
    for component in plan.components().iter().filter(|c| c.origin == Origin::Built) {
        let digest = docker
            .inspect_image(&component.image.to_string())
            .await
            .ok()
            .and_then(|i| i.config)
            .and_then(|c| c.labels)
            .and_then(|l| l.get(e2e_infra::labels::INPUT_DIGEST).cloned());
        remove_image(docker, &component.image).await;
        if let Some(digest) = digest {
            let cache = e2e_infra::build::cache_ref(&component.image, &digest);
            remove_reference(docker, &cache).await;
        }
    }
}

/// Removes one reference, if the engine has it.
pub async fn remove_image(docker: &Docker, image: &ImageRef) {
    remove_reference(docker, &image.to_string()).await;
}

/// Removes one reference given as text, if the engine has it.
pub async fn remove_reference(docker: &Docker, reference: &str) {
    // `noprune`: the untagged parents are build cache that a build of
    // another test running at the same time may be using this moment.
    let options = RemoveImageOptionsBuilder::new().force(true).noprune(true).build();
    match docker.remove_image(reference, Some(options), None).await {
        Ok(_) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {}
        Err(e) => panic!("removing {reference}: {e}"),
    }
}

/// A plain HTTP/1.0 GET: the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// Runs `body`, then `cleanup` however the body ended (an error, a failed
/// assertion), then fails the test if the body did. Keeps a failing test
/// from leaving images and containers on a shared engine.
pub async fn clean_up_after<E: std::fmt::Display>(
    body: impl std::future::Future<Output = Result<(), E>>,
    cleanup: impl std::future::Future<Output = ()>,
) {
    let outcome = std::panic::AssertUnwindSafe(body).catch_unwind().await;
    cleanup.await;
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{e}"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

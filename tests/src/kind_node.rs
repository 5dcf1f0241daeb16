//! Kind node stand-ins: containers running a real containerd, named and
//! labelled the way Kind names and labels its nodes, so that loading images
//! into a cluster can be tested for real without a Kind node image. A
//! stand-in runs either the host's containerd (Debian's 1.6) or a static
//! containerd 2 (as Kind's node images have since v0.27): [`NodeKind`].
//!
//! Also builds small busybox images under a plan's references.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    BuildImageOptions, CreateContainerOptions, RemoveContainerOptions, RemoveImageOptions,
};
use bollard::Docker;
use e2e_infra::load::kind::{node_images, CLUSTER_LABEL, ROLE_LABEL};
use e2e_infra::ImageRef;
use futures::StreamExt;

use crate::unique;

/// The stand-in node image on Debian's containerd, built once and kept
/// across test runs.
pub const STAND_IN_IMAGE: &str = "localhost/e2e-infra-kind-node:stand-in";
/// The stand-in node image on containerd 2, built once and kept across test runs.
pub const STAND_IN_IMAGE_2: &str = "localhost/e2e-infra-kind-node:containerd2";
/// A folder holding static `containerd` and `ctr` of containerd 2, for the
/// stand-ins of [`NodeKind::Containerd2`].
pub const CONTAINERD2_BIN_ENV: &str = "E2E_CONTAINERD2_BIN";
/// The `engine-current` folder whose `engine.sh bin` gives that folder when
/// [`CONTAINERD2_BIN_ENV`] is not set; by default `../shared/engine-current`
/// beside the workspace.
pub const ENGINE_CURRENT_ENV: &str = "E2E_ENGINE_CURRENT";

/// Which containerd a stand-in node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// Debian's containerd 1.6, the host's binaries with their libc.
    Containerd16,
    /// A static containerd 2 ([`CONTAINERD2_BIN_ENV`]), as Kind's node
    /// images run since v0.27.
    Containerd2,
}

impl NodeKind {
    /// Both kinds.
    pub const ALL: [NodeKind; 2] = [NodeKind::Containerd16, NodeKind::Containerd2];

    /// The stand-in image of this kind.
    pub fn image(self) -> &'static str {
        match self {
            Self::Containerd16 => STAND_IN_IMAGE,
            Self::Containerd2 => STAND_IN_IMAGE_2,
        }
    }

    /// The files of the image: its path in the image and where it comes from.
    fn files(self) -> Vec<(String, PathBuf)> {
        let host = |path: &str| (path.to_owned(), PathBuf::from(path));
        match self {
            Self::Containerd16 => NODE_FILES.iter().map(|p| host(p)).collect(),
            Self::Containerd2 => {
                let bin = containerd2_bin();
                vec![
                    ("/usr/bin/containerd".to_owned(), bin.join("containerd")),
                    ("/usr/bin/ctr".to_owned(), bin.join("ctr")),
                    host("/bin/busybox"),
                ]
            }
        }
    }
}

/// The folder of containerd 2's static binaries: [`CONTAINERD2_BIN_ENV`],
/// else what `engine.sh bin` of [`ENGINE_CURRENT_ENV`] prints.
///
/// # Panics
/// When neither gives a folder holding `containerd` and `ctr`: a test on
/// containerd 2 nodes fails rather than passing without them.
pub fn containerd2_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os(CONTAINERD2_BIN_ENV).filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    let current = std::env::var_os(ENGINE_CURRENT_ENV)
        .filter(|c| !c.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/engine-current"));
    let script = current.join("engine.sh");
    let output = std::process::Command::new(&script).arg("bin").output().unwrap_or_else(|e| {
        panic!(
            "running `{} bin` for containerd 2's binaries: {e}; set {CONTAINERD2_BIN_ENV} to a folder holding static \
             `containerd` and `ctr` of containerd 2, or {ENGINE_CURRENT_ENV} to the engine-current folder",
            script.display()
        )
    });
    assert!(output.status.success(), "`{} bin` failed: {}", script.display(), String::from_utf8_lossy(&output.stderr));
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}
/// Put on every container and image the test suites create.
pub const TEST_LABEL: &str = "io.e2e-infra.test";

/// Host files the stand-in needs: containerd and ctr link only against libc.
const NODE_FILES: &[&str] = &[
    "/usr/bin/containerd",
    "/usr/bin/ctr",
    "/lib/x86_64-linux-gnu/libc.so.6",
    "/lib64/ld-linux-x86-64.so.2",
    "/bin/busybox",
];
const STAND_IN_DOCKERFILE: &str = "FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CMD [\"/usr/bin/containerd\"]
";
const READY_WITHIN: Duration = Duration::from_secs(30);

/// Builds `dockerfile` with `files` (path in the context, contents, mode)
/// as its context and tags it `tag`; returns the image id.
pub async fn build(
    docker: &Docker,
    tag: &str,
    dockerfile: &str,
    files: Vec<(String, Vec<u8>, u32)>,
    labels: HashMap<String, String>,
) -> String {
    let mut context = tar::Builder::new(Vec::new());
    let mut add = |path: &str, bytes: &[u8], mode: u32| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(mode);
        header.set_cksum();
        context.append_data(&mut header, path, bytes).expect("adding to the build context");
    };
    add("Dockerfile", dockerfile.as_bytes(), 0o644);
    for (path, bytes, mode) in files {
        add(&path, &bytes, mode);
    }
    let context = context.into_inner().expect("build context");
    let options = BuildImageOptions { t: Some(tag.to_owned()), labels: Some(labels), ..Default::default() };
    if let Err(error) = build_once(docker, options.clone(), context.clone()).await {
        // Docker 29's containerd store removes the cached parents of a
        // build when another test removes an image above them; without
        // the cache the build makes parents of its own.
        if !e2e_infra::build::names_a_lost_parent(&error) {
            panic!("building {tag} failed: {error}");
        }
        let options = BuildImageOptions { nocache: true, ..options };
        build_once(docker, options, context).await.unwrap_or_else(|e| panic!("building {tag} again failed: {e}"));
    }
    docker
        .inspect_image(tag)
        .await
        .unwrap_or_else(|e| panic!("inspecting {tag} after its build failed: {e}"))
        .id
        .expect("image id")
}

/// One build of `context`; the engine's error, if it failed.
async fn build_once(docker: &Docker, options: BuildImageOptions, context: Vec<u8>) -> Result<(), String> {
    let mut progress = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    while let Some(step) = progress.next().await {
        let step = step.map_err(|e| e.to_string())?;
        if let Some(detail) = step.error_detail {
            return Err(format!("{detail:?}"));
        }
    }
    Ok(())
}

/// Builds the stand-in image of `kind` unless the engine already has it.
pub async fn stand_in_image(docker: &Docker, kind: NodeKind) {
    if docker.inspect_image(kind.image()).await.is_ok() {
        return;
    }
    let files: Vec<(String, Vec<u8>, u32)> = kind
        .files()
        .into_iter()
        .map(|(path, from)| {
            let bytes = std::fs::read(&from)
                .unwrap_or_else(|e| panic!("reading {} for the stand-in node: {e}", from.display()));
            (format!("rootfs{path}"), bytes, 0o755)
        })
        .collect();
    let labels = HashMap::from([(TEST_LABEL.to_owned(), "kind-node".to_owned())]);
    build(docker, kind.image(), STAND_IN_DOCKERFILE, files, labels).await;
}

/// Builds a busybox image under `image` whose content differs by `marker`;
/// returns the image id.
pub async fn busybox_image(docker: &Docker, image: &ImageRef, marker: &str) -> String {
    let busybox = std::fs::read("/bin/busybox").expect("reading /bin/busybox (package busybox-static)");
    let dockerfile =
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY marker /marker\nCMD [\"/bin/busybox\", \"sleep\", \"3600\"]\n";
    let labels = HashMap::from([(TEST_LABEL.to_owned(), "kind-load".to_owned())]);
    build(
        docker,
        &image.to_string(),
        dockerfile,
        vec![("busybox".to_owned(), busybox, 0o755), ("marker".to_owned(), marker.as_bytes().to_vec(), 0o644)],
        labels,
    )
    .await
}

/// Builds under `image` the image `base` with another `/marker` on top: a
/// rebuild that changed only its top layer, whatever the engine's build
/// cache still holds (a busybox layer built again has a new `/bin`).
/// Returns the image id.
pub async fn marker_on_top(docker: &Docker, image: &ImageRef, base: &str, marker: &str) -> String {
    let labels = HashMap::from([(TEST_LABEL.to_owned(), "kind-load".to_owned())]);
    let dockerfile = format!("FROM {base}\nCOPY marker /marker\n");
    let files = vec![("marker".to_owned(), marker.as_bytes().to_vec(), 0o644)];
    build(docker, &image.to_string(), &dockerfile, files, labels).await
}

/// Runs `args` in the node container `node` through the engine; returns its
/// standard output, or what went wrong.
pub async fn node_exec(docker: &Docker, node: &str, args: &[&str]) -> Result<String, String> {
    let failed = |e: bollard::errors::Error| format!("`{}` in {node}: {e}", args.join(" "));
    let options = CreateExecOptions {
        cmd: Some(args.to_vec()),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..Default::default()
    };
    let created = docker.create_exec(node, options).await.map_err(failed)?;
    let (mut stdout, mut stderr) = (String::new(), String::new());
    if let StartExecResults::Attached { mut output, .. } = docker.start_exec(&created.id, None).await.map_err(failed)? {
        while let Some(frame) = output.next().await.transpose().map_err(failed)? {
            match frame {
                bollard::container::LogOutput::StdOut { message } => {
                    stdout.push_str(&String::from_utf8_lossy(&message))
                }
                bollard::container::LogOutput::StdErr { message } => {
                    stderr.push_str(&String::from_utf8_lossy(&message))
                }
                _ => {}
            }
        }
    }
    match docker.inspect_exec(&created.id).await.map_err(failed)?.exit_code {
        Some(0) => Ok(stdout),
        code => Err(format!("`{}` in {node} exited with {code:?}: {stderr}", args.join(" "))),
    }
}

/// The content of `path` in image `reference` as unpacked in the
/// containerd of stand-in node `node`: the image mounted read-only, read
/// with the node's busybox, unmounted.
pub async fn read_in_image(docker: &Docker, node: &str, reference: &str, path: &str) -> String {
    let mount = format!("/mnt/{}", unique("image"));
    let file = format!("{mount}{path}");
    let mounting: [&[&str]; 2] = [
        &["/bin/busybox", "mkdir", "-p", &mount, "/tmp"],
        &["ctr", "--namespace=k8s.io", "images", "mount", "--rw=false", reference, &mount],
    ];
    for args in mounting {
        node_exec(docker, node, args).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let read = node_exec(docker, node, &["/bin/busybox", "cat", &file]).await;
    let unmount = ["ctr", "--namespace=k8s.io", "images", "unmount", &mount];
    node_exec(docker, node, &unmount).await.unwrap_or_else(|e| panic!("{e}"));
    read.unwrap_or_else(|e| panic!("{e}"))
}

/// Removes the tagged images when dropped, even when a test fails.
#[derive(Debug, Default)]
pub struct ImageGuard(pub Vec<String>);

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let tags = std::mem::take(&mut self.0);
        on_fresh_runtime(move |docker| async move {
            for tag in tags {
                // Parents stay: another test's build may be using them.
                let options = RemoveImageOptions { force: true, noprune: true, ..Default::default() };
                let _ = docker.remove_image(&tag, Some(options), None).await;
            }
        });
    }
}

/// A stand-in Kind cluster: a control plane and `workers` workers, removed
/// when dropped.
#[derive(Debug)]
pub struct StandInCluster {
    /// The cluster name.
    pub name: String,
    /// Node container names, control plane first.
    pub nodes: Vec<String>,
}

impl StandInCluster {
    /// Starts the nodes on Debian's containerd and waits until containerd
    /// answers in each.
    pub async fn start(docker: &Docker, name: &str, workers: usize) -> Self {
        Self::start_with(docker, name, workers, NodeKind::Containerd16).await
    }

    /// Starts the nodes on the containerd of `kind` and waits until
    /// containerd answers in each.
    pub async fn start_with(docker: &Docker, name: &str, workers: usize, kind: NodeKind) -> Self {
        stand_in_image(docker, kind).await;
        let mut cluster = Self { name: name.to_owned(), nodes: Vec::new() };
        let roles = std::iter::once(("control-plane", "control-plane".to_owned()))
            .chain((1..=workers).map(|i| ("worker", if i == 1 { "worker".to_owned() } else { format!("worker{i}") })));
        for (role, suffix) in roles {
            let node = format!("{name}-{suffix}");
            let config = ContainerCreateBody {
                image: Some(kind.image().to_owned()),
                labels: Some(HashMap::from([
                    (CLUSTER_LABEL.to_owned(), name.to_owned()),
                    (ROLE_LABEL.to_owned(), role.to_owned()),
                    (TEST_LABEL.to_owned(), "kind-node".to_owned()),
                ])),
                host_config: Some(HostConfig {
                    cap_add: Some(vec!["SYS_ADMIN".to_owned()]),
                    security_opt: Some(vec!["seccomp=unconfined".to_owned(), "apparmor=unconfined".to_owned()]),
                    tmpfs: Some(HashMap::from([
                        ("/var/lib/containerd".to_owned(), String::new()),
                        ("/run".to_owned(), String::new()),
                    ])),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let options = CreateContainerOptions { name: Some(node.clone()), ..Default::default() };
            docker
                .create_container(Some(options), config)
                .await
                .unwrap_or_else(|e| panic!("creating stand-in node {node}: {e}"));
            cluster.nodes.push(node.clone());
            docker.start_container(&node, None).await.unwrap_or_else(|e| panic!("starting stand-in node {node}: {e}"));
        }
        for node in &cluster.nodes {
            let deadline = Instant::now() + READY_WITHIN;
            loop {
                match node_images(docker, node).await {
                    Ok(_) => break,
                    Err(e) if Instant::now() > deadline => {
                        panic!("containerd in {node} never answered: {e}")
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
        cluster
    }
}

impl Drop for StandInCluster {
    fn drop(&mut self) {
        let nodes = std::mem::take(&mut self.nodes);
        on_fresh_runtime(move |docker| async move {
            for node in nodes {
                let options = RemoveContainerOptions { force: true, v: true, ..Default::default() };
                let _ = docker.remove_container(&node, Some(options)).await;
            }
        });
    }
}

/// Runs a clean-up on its own thread and runtime: `Drop` cannot await, and
/// the test's runtime may be shutting down.
pub fn on_fresh_runtime<F, Fut>(cleanup: F)
where
    F: FnOnce(Docker) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let done = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        runtime.block_on(async move { cleanup(crate::engine(None).await).await });
    });
    let _ = done.join();
}

/// A containerd daemon of this machine, started for a test on its own
/// socket, root and state under a temporary folder; stopped (by its
/// process id) and removed when dropped. The node of a single-node cluster
/// (k3s, kubeadm, kube-local) as the loader sees it: a socket.
#[derive(Debug)]
pub struct ContainerdDaemon {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl ContainerdDaemon {
    /// Starts the containerd of `kind` (Debian's `/usr/bin/containerd`, or
    /// containerd 2's from [`containerd2_bin`]) and waits until its socket
    /// accepts connections and `ctr` lists its images.
    pub async fn start(kind: NodeKind) -> Self {
        let binary = match kind {
            NodeKind::Containerd16 => PathBuf::from("/usr/bin/containerd"),
            NodeKind::Containerd2 => containerd2_bin().join("containerd"),
        };
        let dir = tempfile::Builder::new().prefix("e2e-ctrd").tempdir_in("/tmp").expect("temporary directory");
        let path = |name: &str| dir.path().join(name).display().to_string();
        let config = format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.cri.v1.runtime\", \"io.containerd.cri.v1.images\", \"io.containerd.nri.v1.nri\"]\n\
             [grpc]\n  address = \"{}\"\n[ttrpc]\n  address = \"{}\"\n[debug]\n  address = \"{}\"\n[metrics]\n  address = \"\"\n",
            path("root"),
            path("state"),
            path("containerd.sock"),
            path("containerd.sock.ttrpc"),
            path("debug.sock"),
        );
        std::fs::write(dir.path().join("config.toml"), config).expect("containerd config");
        let log = std::fs::File::create(dir.path().join("containerd.log")).expect("containerd log");
        let child = std::process::Command::new(&binary)
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let daemon = Self { child, dir };
        let node = e2e_infra::load::containerd::Node::Socket { path: daemon.socket() };
        let docker = crate::engine(None).await;
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            match e2e_infra::load::containerd::node_images(&docker, &node).await {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => panic!(
                    "containerd {} never answered at {}: {e}; its log: {}",
                    binary.display(),
                    daemon.socket().display(),
                    std::fs::read_to_string(daemon.dir.path().join("containerd.log")).unwrap_or_default()
                ),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        daemon
    }

    /// Its socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }
}

impl Drop for ContainerdDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

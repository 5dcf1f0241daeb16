//! The Kubernetes cluster the real-cluster suite runs against: which one,
//! from the environment; clients and kubeconfig copies with one thing
//! changed; the `e2e-infra` command; and removal of what a test stood up.
//!
//! The cluster must run its containers from a containerd whose socket is on
//! this machine (kube-local's real node, k3s, a kubeadm node), so that a test
//! can load images into it and look at what it holds.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use bollard::Docker;
use e2e_infra::backend::{Backend, ImageTarget, KubeTarget};
use e2e_infra::cli_support::state::STATE_DIR_ENV;
use e2e_infra::deploy::kube::connect;
use e2e_infra::load::containerd::{node_images, Node};
use e2e_infra::plan::RunKey;
use e2e_infra::plan::RUN_ID_ENV;
use e2e_infra::{stack, Origin, Plan};
use k8s_openapi::api::core::v1::Namespace;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_yaml::Value;

use crate::kind_node::{on_fresh_runtime, ImageGuard};

/// The socket of the containerd the cluster's node runs containers from.
pub const SOCKET_ENV: &str = "E2E_CONTAINERD_SOCKET";
/// The kubeconfig context of the cluster; unset for the current context.
pub const CONTEXT_ENV: &str = "E2E_KUBE_CONTEXT";

/// The cluster under test.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The kubeconfig context; `None` for the kubeconfig's current context.
    pub context: Option<String>,
    /// The node's containerd socket.
    pub socket: PathBuf,
}

impl Cluster {
    /// The cluster named by [`SOCKET_ENV`] and [`CONTEXT_ENV`] (and
    /// `KUBECONFIG`, read by kube).
    ///
    /// # Panics
    /// When [`SOCKET_ENV`] is not set: a run that asked for the cluster tests
    /// without a cluster fails instead of passing.
    pub fn from_env() -> Self {
        let socket = std::env::var_os(SOCKET_ENV).filter(|s| !s.is_empty()).unwrap_or_else(|| {
            panic!(
                "{SOCKET_ENV} is not set: this test needs a Kubernetes cluster whose node's containerd socket is on \
                 this machine. scripts/test.sh starts kube-local for it; or set KUBECONFIG, {SOCKET_ENV} (the \
                 node's containerd socket) and, for a context other than the current one, {CONTEXT_ENV}"
            )
        });
        let context = std::env::var(CONTEXT_ENV).ok().filter(|c| !c.is_empty());
        Self { context, socket: socket.into() }
    }

    /// The cluster with images loaded into its node's containerd.
    pub fn target(&self) -> KubeTarget {
        KubeTarget { context: self.context.clone(), images: ImageTarget::Containerd { socket: self.socket.clone() } }
    }

    /// The Kubernetes backend on this cluster.
    pub fn backend(&self) -> Backend {
        Backend::Kubernetes(self.target())
    }

    /// The node's containerd.
    pub fn node(&self) -> Node {
        Node::Socket { path: self.socket.clone() }
    }

    /// A client, through the project's own [`connect`].
    pub async fn client(&self) -> Client {
        connect(self.context.as_deref()).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Whether namespace `name` exists (terminating included).
    pub async fn has_namespace(&self, name: &str) -> bool {
        let namespaces: Api<Namespace> = Api::all(self.client().await);
        namespaces.get_opt(name).await.unwrap_or_else(|e| panic!("reading namespace {name}: {e}")).is_some()
    }

    /// The node's image references whose tag is `tag`.
    pub async fn node_references(&self, docker: &Docker, tag: &str) -> Vec<String> {
        let suffix = format!(":{tag}");
        let listed = node_images(docker, &self.node()).await.unwrap_or_else(|e| panic!("{e}"));
        listed.into_iter().filter(|r| r.ends_with(&suffix)).collect()
    }

    /// Removes `reference` from the node's containerd, as an operator would
    /// with `ctr images rm`.
    pub fn remove_from_node(&self, reference: &str) {
        let output = std::process::Command::new("ctr")
            .arg("-a")
            .arg(&self.socket)
            .args(["-n", "k8s.io", "images", "rm", reference])
            .output()
            .expect("running ctr (install containerd)");
        assert!(output.status.success(), "ctr images rm {reference}: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// The `e2e-infra` flags that name this cluster: `--context <name>`, or
    /// `--kubernetes` for the current context.
    pub fn context_flags(&self) -> Vec<String> {
        match &self.context {
            Some(context) => vec!["--context".to_owned(), context.clone()],
            None => vec!["--kubernetes".to_owned()],
        }
    }

    /// A copy of the kubeconfig whose cluster entry (of this context) has
    /// `server` as its address.
    pub fn kubeconfig_with_server(&self, server: &str) -> KubeconfigCopy {
        self.kubeconfig_copy("clusters", "cluster", "server", server)
    }

    /// A copy of the kubeconfig whose user entry (of this context)
    /// impersonates `user` (`as: <user>`).
    pub fn kubeconfig_impersonating(&self, user: &str) -> KubeconfigCopy {
        self.kubeconfig_copy("users", "user", "as", user)
    }

    /// Sets `field` to `value` in the entry of `section` (`clusters`,
    /// `users`) that this context names under `entry` (`cluster`, `user`).
    /// Paths in the kubeconfig must be absolute to stay valid in the copy.
    fn kubeconfig_copy(&self, section: &str, entry: &str, field: &str, value: &str) -> KubeconfigCopy {
        let source = kubeconfig_path();
        let text = std::fs::read_to_string(&source).unwrap_or_else(|e| panic!("reading {}: {e}", source.display()));
        let mut config: Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        let context = self.context.clone().unwrap_or_else(|| {
            config["current-context"].as_str().expect("the kubeconfig names a current context").to_owned()
        });
        let named = |list: &Value, name: &str| {
            list.as_sequence().into_iter().flatten().position(|item| item["name"].as_str() == Some(name))
        };
        let at = named(&config["contexts"], &context)
            .unwrap_or_else(|| panic!("no context `{context}` in {}", source.display()));
        let name = config["contexts"][at]["context"][entry].as_str().expect("the context names its entry").to_owned();
        let at = named(&config[section], &name)
            .unwrap_or_else(|| panic!("no {section} entry `{name}` in {}", source.display()));
        let Some(body) = config[section][at][entry].as_mapping_mut() else {
            panic!("{section} entry `{name}` in {} is empty", source.display())
        };
        body.insert(field.into(), value.into());
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("kubeconfig");
        std::fs::write(&path, serde_yaml::to_string(&config).expect("kubeconfig")).expect("write kubeconfig");
        KubeconfigCopy { _dir: dir, path, context }
    }
}

/// The kubeconfig kube reads: the first file of `KUBECONFIG`, else `~/.kube/config`.
fn kubeconfig_path() -> PathBuf {
    match std::env::var_os("KUBECONFIG").filter(|k| !k.is_empty()) {
        Some(list) => std::env::split_paths(&list).next().expect("a kubeconfig path"),
        None => Path::new(&std::env::var_os("HOME").expect("HOME")).join(".kube/config"),
    }
}

/// A changed copy of the kubeconfig, removed when dropped.
#[derive(Debug)]
pub struct KubeconfigCopy {
    _dir: tempfile::TempDir,
    /// The file.
    pub path: PathBuf,
    /// The context it was changed for, by name.
    pub context: String,
}

impl KubeconfigCopy {
    /// A client of [`context`](Self::context) from this file; no request is made.
    pub async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(&self.path).unwrap_or_else(|e| panic!("{e}"));
        let options = KubeConfigOptions { context: Some(self.context.clone()), ..KubeConfigOptions::default() };
        let config = Config::from_custom_kubeconfig(kubeconfig, &options).await.unwrap_or_else(|e| panic!("{e}"));
        Client::try_from(config).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Takes a stack down when dropped, however the test ended: its namespace
/// and its image references on the node ([`stack::down`]), then the images
/// it built on the engine.
#[derive(Debug)]
pub struct StackGuard {
    key: RunKey,
    target: KubeTarget,
    _images: ImageGuard,
}

impl StackGuard {
    /// For `plan`'s stack on `target`, however it was stood up (`stack::up`,
    /// `deploy`, the CLI with the plan's run id), with the images the plan builds.
    pub fn of(plan: &Plan, target: KubeTarget) -> Self {
        let built = plan.components().iter().filter(|c| c.origin == Origin::Built);
        Self { key: plan.key().clone(), target, _images: ImageGuard(built.map(|c| c.image.to_string()).collect()) }
    }
}

impl Drop for StackGuard {
    fn drop(&mut self) {
        let (key, target) = (self.key.clone(), self.target.clone());
        on_fresh_runtime(move |docker| async move {
            if let Err(error) = stack::down(&docker, &key, Some(&target)).await {
                eprintln!("taking down {key} failed: {error}");
            }
        });
    }
}

/// The `e2e-infra` command built next to this test binary.
///
/// # Panics
/// When it has not been built: `cargo build -p e2e-infra-cli`
/// with the same target directory.
pub fn cli_binary() -> PathBuf {
    let test = std::env::current_exe().expect("the test binary's path");
    // <target>/<profile>/deps/<test binary>: the command is in <profile>.
    let profile = test.parent().and_then(Path::parent).expect("the test binary is in <target>/<profile>/deps");
    let binary = profile.join("e2e-infra");
    assert!(
        binary.is_file(),
        "{} is missing: build it with `cargo build -p e2e-infra-cli` (same CARGO_TARGET_DIR)",
        binary.display()
    );
    binary
}

/// Runs `e2e-infra args` in `dir` with a state directory of its own and
/// `env` added; returns its output and how long it ran. Its output goes to
/// the test's standard error, for the log of a failing test.
pub async fn cli(dir: &Path, args: &[&str], env: &[(&str, &OsStr)]) -> (Output, Duration) {
    let state = dir.join("state");
    std::fs::create_dir_all(&state).expect("state directory");
    let started = Instant::now();
    let output = tokio::process::Command::new(cli_binary())
        .args(args)
        .current_dir(dir)
        .env(STATE_DIR_ENV, state)
        .env_remove(RUN_ID_ENV)
        .envs(env.iter().copied())
        .output()
        .await
        .expect("running e2e-infra");
    let elapsed = started.elapsed();
    eprintln!(
        "$ e2e-infra {} ({elapsed:.1?})\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output, elapsed)
}

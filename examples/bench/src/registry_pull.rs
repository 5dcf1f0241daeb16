//! The example's images through a registry a cluster pulls from: e2e-infra's
//! registry delivery (pushes three at a time, each reference pinned to the
//! digest pushed) and the node pulling them by that digest, against
//! `docker push` of each image in turn and the node pulling it by tag.
//! Both sides push to the same TLS registry with basic auth
//! (`scripts/registry.sh`) and pull into the real node's containerd with
//! `ctr images pull --hosts-dir`, one image after another as a kubelet
//! pulls. Before each side the registry's storage and the node's copies are
//! emptied, so every side pushes and pulls every layer.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use base64::Engine;

use bollard::Docker;
use e2e_infra::build::{build_all, BuildOptions};
use e2e_infra::load::credentials::lookup_in;
use e2e_infra::load::registry::push_all;
use e2e_infra::{Catalog, Delivery, Plan, RunId};

use crate::amortize::workspace;
use crate::report::{median, median_of, ratio, Res, Section};

/// What `scripts/registry.sh start` prints, and the node's socket.
const SETUP: [&str; 5] =
    ["E2E_REGISTRY", "E2E_REGISTRY_USER", "E2E_REGISTRY_PASSWORD", "E2E_REGISTRY_HOSTS_DIR", "E2E_REGISTRY_STORAGE"];
const SOCKET_ENV: &str = "E2E_CONTAINERD_SOCKET";

struct Setup {
    registry: String,
    user: String,
    password: String,
    hosts: String,
    storage: String,
    socket: String,
}

impl Setup {
    fn from_env() -> Res<Self> {
        let var = |name: &str| {
            std::env::var(name).ok().filter(|v| !v.is_empty()).ok_or_else(|| {
                format!(
                    "benchmark 10 needs a registry the cluster's node pulls from: set {name} \
                     (scripts/registry.sh start DIR prints {}; scripts/cluster.sh prints {SOCKET_ENV})",
                    SETUP.join(", ")
                )
            })
        };
        Ok(Self {
            registry: var(SETUP[0])?,
            user: var(SETUP[1])?,
            password: var(SETUP[2])?,
            hosts: var(SETUP[3])?,
            storage: var(SETUP[4])?,
            socket: var(SOCKET_ENV)?,
        })
    }

    /// Runs `program args`, failing with its standard error.
    fn run(program: &str, args: &[&str]) -> Res<()> {
        let output = Command::new(program).args(args).output()?;
        if !output.status.success() {
            let said = String::from_utf8_lossy(&output.stderr);
            return Err(format!("`{program} {}` failed: {said}", args.join(" ")).into());
        }
        Ok(())
    }

    /// The node pulls `reference` from the registry, with the credential.
    fn node_pull(&self, reference: &str) -> Res<()> {
        let user = format!("{}:{}", self.user, self.password);
        let args = ["-a", &self.socket, "-n", "k8s.io", "images", "pull", "--hosts-dir", &self.hosts];
        Self::run("ctr", &[&args[..], &["--user", &user, reference]].concat())
    }

    /// Empties the registry and removes `references` from the node, its
    /// content collected before this returns.
    fn empty(&self, references: &[String]) -> Res<()> {
        let repositories = Path::new(&self.storage).join("docker");
        if repositories.exists() {
            std::fs::remove_dir_all(&repositories)?;
        }
        for reference in references {
            // A reference the node does not hold is no error here.
            let _ = Command::new("ctr")
                .args(["-a", &self.socket, "-n", "k8s.io", "images", "rm", "--sync", reference])
                .output()?;
        }
        Ok(())
    }
}

/// The example's stack, planned for `registry`.
fn example_plan(registry: &str) -> Res<Plan> {
    let catalog = Catalog::load(&workspace().join("examples/notification/e2e-infra.toml"))?;
    let run = RunId::explicit(&format!("bench-registry-{}", std::process::id()), None)?;
    Ok(Plan::new(&catalog, "bench-registry", &["datastorage"], run, &Delivery::Registry(registry.to_owned()))?)
}

const TITLE: &str = "10. Push + node pull of the example's images through a TLS registry";

/// Benchmark 10; without the registry, a table that says why it was not run.
pub async fn registry_pull(docker: &Docker, reps: usize) -> Res<Section> {
    let setup = match Setup::from_env() {
        Ok(setup) => setup,
        Err(missing) => {
            let mut section = Section::new(TITLE, "", &[]);
            section.note(&format!("not run: {missing}"));
            return Ok(section);
        }
    };
    let plan = example_plan(&setup.registry)?;
    let built = build_all(docker, &plan, &BuildOptions::default()).await?;
    let references: Vec<String> = built.iter().map(|b| b.image.to_string()).collect();
    let config = tempfile::tempdir()?;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", setup.user, setup.password));
    let auths = serde_json::json!({ "auths": { &setup.registry: { "auth": auth } } });
    std::fs::write(config.path().join("config.json"), auths.to_string())?;
    let credential = lookup_in(config.path(), &setup.registry)?;

    let mut section = Section::new(
        TITLE,
        &format!(
            "The example's {} built images ({}) pushed to a registry with TLS and basic auth on a host of its own \
             (`scripts/registry.sh`, a network namespace), then pulled into the real node's containerd with \
             `ctr images pull --hosts-dir`, one after another as a kubelet pulls. e2e-infra: `push_all` (three \
             pushes at a time, the credential from `DOCKER_CONFIG`), the node pulling `name:tag@sha256:<pushed \
             digest>`. Naive: `docker push` of each image in turn, the node pulling by tag. The registry and the \
             node are emptied before every side.",
            references.len(),
            plan.components().iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
        ),
        &["", "e2e-infra", "docker push + pull by tag", "ratio"],
    );
    let (mut ours, mut naive) = (Vec::new(), Vec::new());
    let mut pulled: Vec<String> = references.clone();
    for _ in 0..reps.max(1) {
        setup.empty(&pulled)?;
        let started = Instant::now();
        let pushed = push_all(docker, &plan, credential.as_ref()).await?;
        let pinned: Vec<String> = pushed.iter().map(|p| format!("{}@{}", p.image.name(), p.digest)).collect();
        for reference in &pinned {
            setup.node_pull(reference)?;
        }
        ours.push(started.elapsed());
        pulled.extend(pinned);

        setup.empty(&pulled)?;
        let started = Instant::now();
        let docker_config = config.path().to_string_lossy().into_owned();
        for reference in &references {
            Setup::run("docker", &["--config", &docker_config, "push", reference])?;
        }
        for reference in &references {
            setup.node_pull(reference)?;
        }
        naive.push(started.elapsed());
    }
    setup.empty(&pulled)?;
    section.row(vec![
        "push + node pull".to_owned(),
        median_of(&ours),
        median_of(&naive),
        ratio(median(&naive), median(&ours)),
    ]);
    Ok(section)
}

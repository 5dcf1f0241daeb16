//! Reloading after an edit: an image of a large base layer and a small top
//! layer, rebuilt with only the top layer changed, loaded again into nodes
//! that hold the first build. Against a full cold load, the CLI pipeline a
//! script would run again, and a cold load of an image as small as the
//! change.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bollard::Docker;
use e2e_infra::build::{build_all, BuildOptions};
use e2e_infra::load::containerd::{self, Action, LoadImage, LoadReport, Node};
use e2e_infra::Delivery;
use e2e_infra_tests::cluster::SOCKET_ENV;
use e2e_infra_tests::kind_node::{ImageGuard, StandInCluster};
use e2e_infra_tests::{busybox_dockerfile, plan, unique, Project};

use crate::kind_load::{clear, cli_load, random_file, read_from};
use crate::report::{median, median_of, ratio_of, Res, Section};

const MIB: u64 = 1024 * 1024;

/// Builds of one project: a base layer of `base_mb` MiB and a top layer of
/// `top_mb` MiB whose bytes each build draws anew.
struct Edits {
    project: Project,
    catalog: e2e_infra::Catalog,
    top_mb: u64,
    guard: ImageGuard,
}

impl Edits {
    fn new(base_mb: u64, top_mb: u64, with_base: bool) -> Res<Self> {
        let project = Project::new();
        let dockerfile = if with_base {
            project.busybox_context("app");
            random_file(&project.path().join("app/base"), base_mb)?;
            busybox_dockerfile("COPY base /base\nCOPY top /top\n")
        } else {
            "FROM scratch\nCOPY top /top\n".to_owned()
        };
        project.write("app/Dockerfile", dockerfile);
        let catalog = project.catalog("[components.app]\nbuild = { context = \"app\" }\n");
        Ok(Self { project, catalog, top_mb, guard: ImageGuard::default() })
    }

    /// Draws a new top layer and builds it in a new run.
    async fn build(&mut self, docker: &Docker) -> Res<LoadImage> {
        random_file(&self.project.path().join("app/top"), self.top_mb)?;
        let plan = plan(&self.catalog, "bench-delta", &["app"], "bench-delta", &Delivery::Local);
        self.guard.0.extend(plan.components().iter().map(|c| c.image.to_string()));
        let mut built = build_all(docker, &plan, &BuildOptions::default()).await?;
        let built = built.remove(0);
        self.guard
            .0
            .push(e2e_infra::build::cache_ref(&built.image, &input_digest(docker, &built.image.to_string()).await?));
        Ok(LoadImage { image: built.image, image_id: built.image_id })
    }
}

/// The input digest label of a built image, to remove its cache reference.
async fn input_digest(docker: &Docker, reference: &str) -> Res<String> {
    let labels = docker.inspect_image(reference).await?.config.and_then(|c| c.labels).unwrap_or_default();
    labels
        .get(e2e_infra::labels::INPUT_DIGEST)
        .cloned()
        .ok_or_else(|| format!("{reference} has no input digest").into())
}

/// Where the images go: stand-in nodes, or the real node's socket.
enum Nodes {
    StandIns(StandInCluster),
    Socket(PathBuf),
}

impl Nodes {
    fn list(&self) -> Vec<Node> {
        match self {
            Self::StandIns(cluster) => {
                cluster.nodes.iter().map(|name| Node::Container { name: name.clone(), role: String::new() }).collect()
            }
            Self::Socket(path) => vec![Node::Socket { path: path.clone() }],
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::StandIns(cluster) => format!("{} stand-in node(s)", cluster.nodes.len()),
            Self::Socket(_) => "the real node (kube-local)".to_owned(),
        }
    }

    /// Removes what the loads put on the nodes: every image of a stand-in;
    /// on the real node, which others use, only `images` (by reference and
    /// by the id reference the kubelet's image service adds).
    async fn clear(&self, docker: &Docker, images: &[&LoadImage]) -> Res<()> {
        match self {
            Self::StandIns(cluster) => clear(docker, cluster).await,
            Self::Socket(path) => {
                let mut args: Vec<String> = ["-n", "k8s.io", "images", "rm", "--sync"].map(str::to_owned).to_vec();
                for image in images {
                    args.push(image.image.to_string());
                    args.push(image.image_id.clone());
                }
                // A reference that is not there is reported, not an error worth stopping for.
                Command::new("ctr")
                    .arg("-a")
                    .arg(path)
                    .args(&args)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()?;
                Ok(())
            }
        }
    }

    /// The CLI pipeline into every node, one after the other.
    async fn cli(&self, reference: &str) -> Res<Duration> {
        match self {
            Self::StandIns(cluster) => cli_load(reference, &cluster.nodes, false).await,
            Self::Socket(path) => {
                let started = Instant::now();
                socket_pipeline(reference, path)?;
                Ok(started.elapsed())
            }
        }
    }
}

/// `docker save IMAGE | ctr -a SOCKET -n k8s.io images import -`.
fn socket_pipeline(image: &str, socket: &Path) -> Res<()> {
    let mut save = Command::new("docker").args(["save", image]).stdout(Stdio::piped()).spawn()?;
    let tar = save.stdout.take().ok_or("docker save has no stdout")?;
    let import = Command::new("ctr")
        .arg("-a")
        .arg(socket)
        .args(["-n", "k8s.io", "images", "import", "--snapshotter=overlayfs", "-"])
        .stdin(tar)
        .stdout(Stdio::null())
        .status()?;
    let saved = save.wait()?;
    if !saved.success() || !import.success() {
        return Err(format!("pipeline into {}: docker save {saved}, import {import}", socket.display()).into());
    }
    Ok(())
}

/// A load's time, the bytes sent to each node, and where the loader read
/// the image.
struct Timed {
    took: Duration,
    bytes: Vec<u64>,
    from: String,
}

/// Loads `image`, checks every node ended with `expected`, and returns the
/// time, the bytes sent to each node and where the image was read.
async fn timed_load(docker: &Docker, nodes: &[Node], image: &LoadImage, expected: Action) -> Res<Timed> {
    let started = Instant::now();
    let report: LoadReport = containerd::load(docker, nodes, std::slice::from_ref(image)).await?;
    let took = started.elapsed();
    if report.with_action(expected).count() != nodes.len() {
        return Err(format!("expected every node {expected}: {report:?}").into());
    }
    Ok(Timed { took, bytes: report.outcomes.iter().map(|o| o.sent).collect(), from: read_from(&report) })
}

fn mib(bytes: &[u64]) -> String {
    let each: Vec<String> = bytes.iter().map(|b| format!("{:.2}", *b as f64 / MIB as f64)).collect();
    format!("{} MiB", each.join(" / "))
}

/// Benchmark 7.
pub async fn delta_reload(docker: &Docker, base_mb: u64, top_mb: u64, reps: usize) -> Res<Section> {
    let mut section = Section::new(
        "7. Reloading after an edit",
        &format!(
            "A busybox image with a {base_mb} MiB base layer and a {top_mb} MiB top layer of random bytes, built by \
             `build_all`; then the top layer's bytes are drawn anew and the image rebuilt (the engine reuses the \
             base layer). e2e-infra: `e2e_infra::load::containerd::load` of the rebuild into nodes that hold the \
             first build, which reads the image from the engine's own store when the engine is local \
             (else from its export: column \"read from\") and sends each node only the layers its content store \
             lacks. Against: a cold load of \
             the first build into empty nodes (e2e-infra), the CLI pipeline run again for the rebuild (`docker \
             save | ctr images import` per node, one node after the other), and a cold load (e2e-infra) of an \
             image holding only a {top_mb} MiB layer, the cost of sending the change itself. Bytes are what the \
             loader streamed into each node's import (layers, config, manifest, tar headers)."
        ),
        &[
            "nodes",
            "case",
            "read from",
            "time",
            "bytes sent per node",
            "÷ full cold load",
            "÷ loading the change alone",
        ],
    );
    let mut edits = Edits::new(base_mb, top_mb, true)?;
    let first = edits.build(docker).await?;
    let second = edits.build(docker).await?;
    let mut small_edits = Edits::new(0, top_mb, false)?;
    let small = small_edits.build(docker).await?;

    let mut targets = Vec::new();
    for workers in [0usize, 2] {
        targets.push(Nodes::StandIns(StandInCluster::start(docker, &unique("bench-delta"), workers).await));
    }
    match std::env::var_os(SOCKET_ENV).filter(|s| !s.is_empty()) {
        Some(socket) => targets.push(Nodes::Socket(socket.into())),
        None => section.note(&format!("no real node: {SOCKET_ENV} is not set, so only stand-ins were measured")),
    }
    for nodes in &targets {
        let list = nodes.list();
        let all = [&first, &second, &small];
        let (mut cold, mut reload, mut alone, mut cli) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut cold_last, mut reload_last, mut alone_last) = (None, None, None);
        for rep in 0..reps {
            nodes.clear(docker, &all).await?;
            let timed = timed_load(docker, &list, &small, Action::Loaded).await?;
            alone.push(timed.took);
            alone_last = Some(timed);
            nodes.clear(docker, &all).await?;
            let timed = timed_load(docker, &list, &first, Action::Loaded).await?;
            cold.push(timed.took);
            cold_last = Some(timed);
            let timed = timed_load(docker, &list, &second, Action::Loaded).await?;
            reload.push(timed.took);
            reload_last = Some(timed);
            // The pipeline into nodes that hold the first build, as a script would run it.
            nodes.clear(docker, &[&second]).await?;
            cli.push(nodes.cli(&second.image.to_string()).await?);
            println!(
                "   {}, rep {rep}: cold {:.2} s, reload {:.2} s, change alone {:.2} s, pipeline {:.2} s",
                nodes.describe(),
                cold[rep].as_secs_f64(),
                reload[rep].as_secs_f64(),
                alone[rep].as_secs_f64(),
                cli[rep].as_secs_f64(),
            );
        }
        nodes.clear(docker, &all).await?;
        let (Some(cold_last), Some(reload_last), Some(alone_last)) = (cold_last, reload_last, alone_last) else {
            return Err("benchmark 7 needs at least one repetition".into());
        };
        let of = |samples: &[Duration], base: &[Duration]| {
            ratio_of(median(samples).as_secs_f64(), median(base).as_secs_f64())
        };
        let describe = nodes.describe();
        section.row(vec![
            describe.clone(),
            "cold load of the first build".to_owned(),
            cold_last.from,
            median_of(&cold),
            mib(&cold_last.bytes),
            "1.00×".to_owned(),
            of(&cold, &alone),
        ]);
        section.row(vec![
            describe.clone(),
            "**reload of the rebuild (e2e-infra)**".to_owned(),
            reload_last.from,
            median_of(&reload),
            mib(&reload_last.bytes),
            of(&reload, &cold),
            of(&reload, &alone),
        ]);
        section.row(vec![
            describe.clone(),
            "reload of the rebuild (CLI pipeline)".to_owned(),
            "export".to_owned(),
            median_of(&cli),
            "whole image".to_owned(),
            of(&cli, &cold),
            of(&cli, &alone),
        ]);
        let share = median(&reload).as_secs_f64() / median(&alone).as_secs_f64().max(f64::EPSILON);
        section.target(
            &format!("{describe}: reload ≤ 1.5× loading the change alone"),
            &format!("{share:.2}×"),
            share <= 1.5,
        );
        section.row(vec![
            describe,
            format!("cold load of a {top_mb} MiB image (the change alone)"),
            alone_last.from,
            median_of(&alone),
            mib(&alone_last.bytes),
            of(&alone, &cold),
            "1.00×".to_owned(),
        ]);
    }
    section.note(&format!(
        "targets: the reload at most 0.10× the full cold load and at most 1.50× loading the change alone. The \
         engine (Docker {}) writes the whole export to a temporary directory before it sends the first byte, so \
         a load that reads the export, however little it sends, first waits for {base_mb} MiB to be exported; a \
         load that reads the store reads only the layers some node lacks",
        docker.version().await?.version.unwrap_or_default()
    ));
    Ok(section)
}

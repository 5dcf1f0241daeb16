//! Loading into Kind nodes: e2e-infra's streaming loader against
//! `docker save | docker exec -i NODE ctr images import` per node, the
//! skip of an image a node already holds, and the loader's peak memory.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::Docker;
use e2e_infra::load::containerd::{Action, LoadImage, LoadReport, Source};
use e2e_infra::load::kind;
use e2e_infra::ImageRef;
use e2e_infra_tests::kind_node::{ImageGuard, StandInCluster};
use e2e_infra_tests::unique;
use e2e_infra_tests::{busybox_image, Project};
use futures::StreamExt;

use crate::report::{median, median_of, middle, ratio, ratio_of, Res, Section};

const MIB: u64 = 1024 * 1024;

/// A busybox image carrying `mb` MiB of random bytes, removed when dropped.
pub struct BigImage {
    /// What the loader is given.
    pub load: LoadImage,
    /// The engine's size of the image.
    pub bytes: u64,
    _guard: ImageGuard,
}

impl BigImage {
    /// Builds it through e2e-infra's build from a temporary context.
    pub async fn build(docker: &Docker, mb: u64) -> Res<Self> {
        let project = Project::new();
        random_file(&project.path().join("busybox/blob"), mb)?;
        let started = Instant::now();
        let (_plan, built) = busybox_image(docker, &project, "bench-load", "COPY blob /blob\n").await;
        let guard = ImageGuard(vec![built.image.to_string()]);
        let size = docker.inspect_image(&built.image.to_string()).await?.size.unwrap_or_default();
        let bytes = u64::try_from(size).unwrap_or_default();
        println!("   built {} ({} MiB) in {:.1} s", built.image, bytes / MIB, started.elapsed().as_secs_f64());
        Ok(Self { load: LoadImage { image: built.image, image_id: built.image_id }, bytes, _guard: guard })
    }

    fn reference(&self) -> String {
        self.load.image.to_string()
    }
}

/// Writes `mb` MiB of random bytes to `path`, creating its directory.
pub fn random_file(path: &std::path::Path, mb: u64) -> Res<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut random = std::io::Read::take(std::fs::File::open("/dev/urandom")?, mb * MIB);
    std::io::copy(&mut random, &mut std::fs::File::create(path)?)?;
    Ok(())
}

/// Runs `args` in `node` through the engine and fails unless it exits 0.
async fn exec(docker: &Docker, node: &str, args: &[&str]) -> Res<()> {
    let options = CreateExecOptions {
        cmd: Some(args.to_vec()),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..Default::default()
    };
    let created = docker.create_exec(node, options).await?;
    if let StartExecResults::Attached { mut output, .. } = docker.start_exec(&created.id, None).await? {
        while output.next().await.transpose()?.is_some() {}
    }
    match docker.inspect_exec(&created.id).await?.exit_code {
        Some(0) => Ok(()),
        code => Err(format!("`{}` in {node} exited with {code:?}", args.join(" ")).into()),
    }
}

/// Removes every image from the nodes' containerd, synchronously collecting
/// its content and snapshots, so the next load starts from nothing.
pub async fn clear(docker: &Docker, cluster: &StandInCluster) -> Res<()> {
    for node in &cluster.nodes {
        let refs = kind::node_images(docker, node).await?;
        if refs.is_empty() {
            continue;
        }
        let mut args = vec!["ctr", "--namespace=k8s.io", "images", "rm", "--sync"];
        args.extend(refs.iter().map(String::as_str));
        exec(docker, node, &args).await?;
        let left = kind::node_images(docker, node).await?;
        if !left.is_empty() {
            return Err(format!("{node} still lists {left:?} after removing its images").into());
        }
    }
    Ok(())
}

/// The CLI baseline for one node: `docker save IMAGE | docker exec -i NODE ctr ... import -`.
fn cli_pipeline(image: &str, node: &str) -> Res<()> {
    let mut save = Command::new("docker").args(["save", image]).stdout(Stdio::piped()).spawn()?;
    let tar = save.stdout.take().ok_or("docker save has no stdout")?;
    let import = Command::new("docker")
        .args(["exec", "-i", node, "ctr", "--namespace=k8s.io", "images", "import", "--digests"])
        .args(["--snapshotter=overlayfs", "-"])
        .stdin(tar)
        .stdout(Stdio::null())
        .status()?;
    let saved = save.wait()?;
    if !saved.success() || !import.success() {
        return Err(format!("pipeline into {node}: docker save {saved}, import {import}").into());
    }
    Ok(())
}

/// The pipelines for every node, one after the other or all at once.
pub async fn cli_load(image: &str, nodes: &[String], parallel: bool) -> Res<Duration> {
    let started = Instant::now();
    if parallel {
        let runs = nodes.iter().map(|node| {
            let (image, node) = (image.to_owned(), node.clone());
            tokio::task::spawn_blocking(move || cli_pipeline(&image, &node))
        });
        for run in futures::future::join_all(runs).await {
            run??;
        }
    } else {
        let (image, nodes) = (image.to_owned(), nodes.to_vec());
        tokio::task::spawn_blocking(move || nodes.iter().try_for_each(|node| cli_pipeline(&image, node))).await??;
    }
    Ok(started.elapsed())
}

/// e2e-infra's load, checked to have done `expected` with every image on
/// every node.
pub async fn our_load(
    docker: &Docker,
    cluster: &StandInCluster,
    images: &[LoadImage],
    expected: Action,
) -> Res<Duration> {
    Ok(our_load_from(docker, cluster, images, expected).await?.0)
}

/// As [`our_load`], also saying where the loader read what it streamed.
async fn our_load_from(
    docker: &Docker,
    cluster: &StandInCluster,
    images: &[LoadImage],
    expected: Action,
) -> Res<(Duration, String)> {
    let started = Instant::now();
    let report = kind::load(docker, &cluster.name, images).await?;
    let took = started.elapsed();
    if report.with_action(expected).count() != cluster.nodes.len() * images.len() {
        return Err(format!("expected every node {expected}: {report:?}").into());
    }
    Ok((took, read_from(&report)))
}

/// Where a load read the images it streamed (`store`, `export`, or both
/// joined by `+`), and why not the store when it read the export; `-` when
/// it streamed nothing.
pub fn read_from(report: &LoadReport) -> String {
    let mut sources: Vec<String> = report
        .outcomes
        .iter()
        .filter_map(|o| o.source.as_ref())
        .map(|source| match source {
            Source::Export { reason } => format!("export ({reason})"),
            other => other.to_string(),
        })
        .collect();
    sources.sort();
    sources.dedup();
    if sources.is_empty() {
        "-".to_owned()
    } else {
        sources.join(" + ")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Ours,
    CliSequential,
    CliParallel,
}

/// Benchmark 1: cold loads into one and three nodes, then re-loads.
pub async fn load_times(docker: &Docker, mb: u64, reps: usize) -> Res<Section> {
    let mut section = Section::new(
        "1. Loading an image into Kind nodes",
        &format!(
            "A `FROM scratch` image of busybox plus {mb} MiB of random bytes, loaded into Kind-node stand-ins \
             (containers running a real containerd, the way Kind nodes do). e2e-infra: \
             `e2e_infra::load::kind::load` (the image read once from the engine, from its own store \
             when it is local, else from its export, and streamed into every node at once, then labelled and \
             verified). Baseline: `docker save IMAGE | docker exec -i NODE ctr \
             --namespace=k8s.io images import --digests --snapshotter=overlayfs -` once per node, \
             sequentially as a script (and `kind load`) does; also all pipelines at once. Every cold \
             measurement starts from nodes whose containerd holds no image (`ctr images rm --sync` between \
             runs); the order of the ways rotates between repetitions."
        ),
        &["case", "nodes", "e2e-infra", "baseline", "baseline ÷ e2e-infra"],
    );
    let image = BigImage::build(docker, mb).await?;
    let reference = image.reference();
    for nodes in [1usize, 3] {
        let cluster = StandInCluster::start(docker, &unique("bench-kind"), nodes - 1).await;
        let ways: &[Way] = if nodes > 1 {
            &[Way::Ours, Way::CliSequential, Way::CliParallel]
        } else {
            &[Way::Ours, Way::CliSequential]
        };
        let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); ways.len()];
        let mut read = Vec::new();
        for rep in 0..reps {
            for i in (0..ways.len()).map(|i| (i + rep) % ways.len()) {
                clear(docker, &cluster).await?;
                let took = match ways[i] {
                    Way::Ours => {
                        let (took, from) =
                            our_load_from(docker, &cluster, std::slice::from_ref(&image.load), Action::Loaded).await?;
                        read.push(from);
                        took
                    }
                    Way::CliSequential => cli_load(&reference, &cluster.nodes, false).await?,
                    Way::CliParallel => cli_load(&reference, &cluster.nodes, true).await?,
                };
                println!("   {nodes} node(s), rep {rep}, {:?}: {:.2} s", ways[i], took.as_secs_f64());
                samples[i].push(took);
            }
        }
        let cases = ["cold load, pipelines one node after another", "cold load, pipelines all at once"];
        for (case, baseline) in cases.iter().zip(&samples[1..]) {
            section.row(vec![
                (*case).to_owned(),
                nodes.to_string(),
                median_of(&samples[0]),
                median_of(baseline),
                ratio(median(baseline), median(&samples[0])),
            ]);
        }
        // The cold-load targets: at most 1.0× the pipeline into one node, 0.7× into three.
        let bound = if nodes > 1 { 0.7 } else { 1.0 };
        let share = median(&samples[0]).as_secs_f64() / median(&samples[1]).as_secs_f64().max(f64::EPSILON);
        section.target(
            &format!("cold load into {nodes} node(s) ≤ {bound:.1}× the pipelines one after another"),
            &format!("{share:.2}×"),
            share <= bound,
        );
        read.sort();
        read.dedup();
        section.note(&format!("{nodes} node(s): e2e-infra's cold loads read the image from: {}", read.join("; ")));

        clear(docker, &cluster).await?;
        our_load(docker, &cluster, std::slice::from_ref(&image.load), Action::Loaded).await?;
        let mut ours = Vec::new();
        for _ in 0..reps {
            ours.push(our_load(docker, &cluster, std::slice::from_ref(&image.load), Action::Skipped).await?);
        }
        let mut cli = Vec::new();
        for _ in 0..reps {
            cli.push(cli_load(&reference, &cluster.nodes, false).await?);
        }
        section.row(vec![
            "re-load of a loaded image (e2e-infra skips; the pipeline runs again)".to_owned(),
            nodes.to_string(),
            median_of(&ours),
            median_of(&cli),
            ratio(median(&cli), median(&ours)),
        ]);
    }
    section.note(&format!("image size as the engine reports it: {} MiB", image.bytes / MIB));
    Ok(section)
}

/// Benchmark 2: the loader's peak resident memory at two image sizes, each
/// load in a child process of its own.
pub async fn peak_memory(docker: &Docker, sizes_mb: &[u64], reps: usize) -> Res<Section> {
    let mut section = Section::new(
        "2. Peak memory of the loader",
        "`e2e_infra::load::kind::load` of one image into one stand-in node, run in a child process \
         (`e2e-infra-bench load-one`) that reports its own peak resident set (`VmHWM` from \
         `/proc/self/status`) when the load is done. The loader streams the image (read from the engine's \
         store, or its export) in bounded chunks, so the peak should not follow the image size.",
        &["image", "engine's image size", "peak RSS of the loader (median)", "peak ÷ image size", "load time"],
    );
    let cluster = StandInCluster::start(docker, &unique("bench-mem"), 0).await;
    let mut peaks = Vec::new();
    for &mb in sizes_mb {
        let image = BigImage::build(docker, mb).await?;
        let mut kib: Vec<u64> = Vec::new();
        let mut times = Vec::new();
        for _ in 0..reps {
            clear(docker, &cluster).await?;
            let started = Instant::now();
            kib.push(load_in_child(&cluster.name, &image.load)?);
            times.push(started.elapsed());
        }
        let all: Vec<String> = kib.iter().map(|k| format!("{:.1}", *k as f64 / 1024.0)).collect();
        let peak = middle(&kib).map_or(0, |(low, high)| (low + high) / 2);
        section.row(vec![
            format!("busybox + {mb} MiB random"),
            format!("{} MiB", image.bytes / MIB),
            format!("{:.1} MiB ({} MiB)", peak as f64 / 1024.0, all.join(", ")),
            format!("{:.3}", (peak * 1024) as f64 / image.bytes as f64),
            median_of(&times),
        ]);
        peaks.push((mb, peak));
    }
    // The memory target, stated at 2 GiB: a peak resident set of at most 32 MiB.
    if let Some(&(mb, peak)) = peaks.iter().max_by_key(|(mb, _)| *mb) {
        let peak_mib = peak as f64 / 1024.0;
        section.target(
            &format!("peak RSS ≤ 32 MiB at 2048 MiB (measured at {mb} MiB)"),
            &format!("{peak_mib:.1} MiB"),
            peak_mib <= 32.0,
        );
    }
    if let [(small_mb, small), .., (big_mb, big)] = peaks[..] {
        section.note(&format!(
            "peak at {big_mb} MiB ÷ peak at {small_mb} MiB: {} for an image {} as large",
            ratio_of(big as f64, small as f64),
            ratio_of(big_mb as f64, small_mb as f64),
        ));
    }
    Ok(section)
}

/// Runs `load-one` in a child process; returns its peak resident set in KiB.
fn load_in_child(cluster: &str, image: &LoadImage) -> Res<u64> {
    let output = Command::new(std::env::current_exe()?)
        .args(["load-one", "--cluster", cluster, "--image", &image.image.to_string(), "--image-id", &image.image_id])
        .stderr(Stdio::inherit())
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!("load-one failed ({}): {stdout}", output.status).into());
    }
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("vmhwm_kib="))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("load-one printed no peak: {stdout}").into())
}

/// The child side: loads one image and prints its own peak resident set.
pub async fn load_one(cluster: &str, image: &str, image_id: &str) -> Res<()> {
    let docker = e2e_infra::engine::connect().await?;
    let image = LoadImage { image: ImageRef::borrowed(image)?, image_id: image_id.to_owned() };
    let report = kind::load(&docker, cluster, &[image]).await?;
    let loaded = report.with_action(Action::Loaded).count();
    if loaded != report.nodes.len() {
        return Err(format!("expected a cold load on every node: {report:?}").into());
    }
    let status = std::fs::read_to_string("/proc/self/status")?;
    let peak = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .map(|v| v.trim().trim_end_matches("kB").trim().to_owned())
        .ok_or("no VmHWM in /proc/self/status")?;
    println!("loaded={loaded}\nvmhwm_kib={peak}");
    Ok(())
}

//! Side-by-side benchmarks of e2e-infra against the naive way or the CLI
//! pipeline it replaces, measured in one run and written to
//! `docs/benchmarks.md` with the machine and the command that made them.
//!
//! Run it through `scripts/bench.sh`; `--help` lists the sizes and
//! repetitions that can be changed.

mod amortize;
mod attach;
mod delta;
mod fail_fast;
mod kind_load;
mod registry_pull;
mod report;
mod reuse;
mod shards;
mod warm;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use report::{engine_label, Machine, Res, Section};

/// The benchmarks that load or reuse images: each runs on every engine of
/// [`ENGINES_ENV`], side by side in one table.
const PER_ENGINE: [u8; 4] = [1, 2, 4, 7];
/// The engines the benchmarks of [`PER_ENGINE`] run on, separated by commas:
/// `DOCKER_HOST` addresses, or `default` for this process's own engine.
/// Each runs in a process of its own with that `DOCKER_HOST`. Unset: every
/// benchmark on this process's engine, in this process.
const ENGINES_ENV: &str = "E2E_BENCH_ENGINES";

/// Benchmarks e2e-infra against the naive way and writes docs/benchmarks.md.
#[derive(Debug, Parser)]
#[command(name = "e2e-infra-bench")]
struct Cli {
    #[command(subcommand)]
    command: Option<Child>,
    /// Which benchmarks to run (1 to 11; 6, 9 and 11 need a cluster: KUBECONFIG, and 9 and 11 its node's containerd socket; 10 also a registry the node pulls from, from scripts/registry.sh; 11 also Docker 29 and unshare; 8 fetches testcontainers from crates.io).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])]
    only: Vec<u8>,
    /// Repetitions of each cheap measurement; tables show the median.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Repetitions of the large loads of benchmarks 1 and 2.
    #[arg(long, default_value_t = 2)]
    load_reps: usize,
    /// Size in MiB of the random payload of the image loaded in benchmark 1.
    #[arg(long, default_value_t = 300)]
    load_mb: u64,
    /// Payload sizes in MiB whose loads benchmark 2 compares; the largest
    /// is the one the memory target is stated at (2 GiB).
    #[arg(long, value_delimiter = ',', default_values_t = [50, 2048])]
    memory_mb: Vec<u64>,
    /// The naive way's readiness timeout in seconds (benchmark 3).
    #[arg(long, default_value_t = 30)]
    naive_timeout: u64,
    /// Components of the catalog built and loaded in benchmark 4.
    #[arg(long, default_value_t = 4)]
    warm_components: usize,
    /// Size in MiB of each of those components' random payload.
    #[arg(long, default_value_t = 20)]
    warm_mb: u64,
    /// Size in MiB of the base layer of the image reloaded in benchmark 7.
    #[arg(long, default_value_t = 300)]
    delta_base_mb: u64,
    /// Size in MiB of its top layer, the one each rebuild changes.
    #[arg(long, default_value_t = 1)]
    delta_top_mb: u64,
    /// Tests in each generated suite of benchmarks 5, 8 and 9.
    #[arg(long, default_value_t = 16)]
    tests: usize,
    /// Tests in the generated suite of benchmark 11, split across its shards.
    #[arg(long, default_value_t = 8)]
    shard_tests: usize,
    /// Where the page goes.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/benchmarks.md"))]
    out: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Child {
    /// Computes the input digest of every component of a catalog and prints
    /// the time and counts (what benchmark 4 runs in a child process).
    HashInputs {
        /// The catalog.
        #[arg(long)]
        catalog: PathBuf,
    },
    /// Runs one benchmark on this process's engine and writes its table as
    /// JSON to `json` (what runs for every engine of `E2E_BENCH_ENGINES`).
    Section {
        /// The benchmark.
        #[arg(long)]
        benchmark: u8,
        /// Where the table goes.
        #[arg(long)]
        json: PathBuf,
    },
    /// Loads one image into a Kind cluster and prints the peak resident set
    /// (what benchmark 2 runs in a child process).
    LoadOne {
        /// The cluster.
        #[arg(long)]
        cluster: String,
        /// The image reference.
        #[arg(long)]
        image: String,
        /// The engine's id of the image.
        #[arg(long)]
        image_id: String,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    // `RUST_LOG=e2e_infra=debug` shows where a step's time goes.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let outcome = match &cli.command {
        Some(Child::LoadOne { cluster, image, image_id }) => kind_load::load_one(cluster, image, image_id).await,
        Some(Child::HashInputs { catalog }) => warm::hash_inputs(catalog),
        Some(Child::Section { benchmark, json }) => section_to_file(&cli, *benchmark, json).await,
        // Dropping the run on Ctrl-C drops its guards, which remove what it made.
        None => tokio::select! {
            outcome = run(&cli) => outcome,
            _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
        },
    };
    if let Err(e) = outcome {
        eprintln!("e2e-infra-bench: {e}");
        std::process::exit(1);
    }
}

async fn run(cli: &Cli) -> Res<()> {
    let started = Instant::now();
    let docker = e2e_infra::engine::connect().await?;
    let hosts = std::env::var(ENGINES_ENV).unwrap_or_default();
    let mut engines = Vec::new();
    for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        let engine = if host == "default" { docker.clone() } else { e2e_infra::engine::connect_to(host).await? };
        engines.push((host.to_owned(), engine_label(&engine).await?));
    }
    let labels: Vec<String> = if engines.is_empty() {
        vec![engine_label(&docker).await?]
    } else {
        engines.iter().map(|(_, l)| l.clone()).collect()
    };
    let machine = Machine::describe(labels.clone());
    let mut sections: Vec<Section> = Vec::new();
    for &benchmark in &cli.only {
        let section = if engines.is_empty() || !PER_ENGINE.contains(&benchmark) {
            section(cli, &docker, benchmark).await?
        } else {
            let mut measured = Vec::new();
            for (host, label) in &engines {
                println!("\n== benchmark {benchmark} on {label}");
                measured.push((label.clone(), section_in_child(cli, benchmark, host)?));
            }
            Section::per_engine(measured).ok_or("no engine measured")?
        };
        sections.push(section);
    }
    let summary = report::targets(&sections, &labels);
    sections.splice(0..0, summary);
    let command =
        std::iter::once("scripts/bench.sh".to_owned()).chain(std::env::args().skip(1)).collect::<Vec<_>>().join(" ");
    let page = report::page(&sections, &machine, &command, started.elapsed());
    std::fs::write(&cli.out, page)?;
    println!("\nwrote {}", cli.out.display());
    Ok(())
}

/// Runs benchmark `benchmark` on `docker`.
async fn section(cli: &Cli, docker: &bollard::Docker, benchmark: u8) -> Res<Section> {
    Ok(match benchmark {
        1 => kind_load::load_times(docker, cli.load_mb, cli.load_reps).await?,
        2 => kind_load::peak_memory(docker, &cli.memory_mb, cli.load_reps).await?,
        3 => fail_fast::fail_fast(cli.reps, Duration::from_secs(cli.naive_timeout)).await?,
        4 => warm::warm_rerun(docker, cli.warm_components, cli.warm_mb, cli.reps).await?,
        5 => amortize::amortization(docker, cli.tests).await?,
        6 => fail_fast::fail_fast_real(cli.reps, Duration::from_secs(cli.naive_timeout)).await?,
        7 => delta::delta_reload(docker, cli.delta_base_mb, cli.delta_top_mb, cli.load_reps).await?,
        8 => reuse::reuse(docker, cli.tests, cli.reps).await?,
        9 => attach::attach(docker, cli.tests).await?,
        10 => registry_pull::registry_pull(docker, cli.reps).await?,
        11 => shards::shards(cli.shard_tests)?,
        other => return Err(format!("no benchmark {other}; they are 1 to 11").into()),
    })
}

/// The child side of [`ENGINES_ENV`]: one benchmark on this process's engine.
async fn section_to_file(cli: &Cli, benchmark: u8, json: &std::path::Path) -> Res<()> {
    let docker = e2e_infra::engine::connect().await?;
    let section = section(cli, &docker, benchmark).await?;
    std::fs::write(json, serde_json::to_vec(&section)?)?;
    Ok(())
}

/// Runs benchmark `benchmark` in a child process whose `DOCKER_HOST` is
/// `host`, so that everything it runs (the CLI pipelines, the loader's
/// child, the stand-in nodes and their removal) talks to that engine.
fn section_in_child(cli: &Cli, benchmark: u8, host: &str) -> Res<Section> {
    let json = tempfile::NamedTempFile::new()?;
    let list = |values: &[u64]| values.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command.args([
        format!("--reps={}", cli.reps),
        format!("--load-reps={}", cli.load_reps),
        format!("--load-mb={}", cli.load_mb),
        format!("--memory-mb={}", list(&cli.memory_mb)),
        format!("--warm-components={}", cli.warm_components),
        format!("--warm-mb={}", cli.warm_mb),
        format!("--delta-base-mb={}", cli.delta_base_mb),
        format!("--delta-top-mb={}", cli.delta_top_mb),
        "section".to_owned(),
        format!("--benchmark={benchmark}"),
    ]);
    command.arg("--json").arg(json.path()).env_remove(ENGINES_ENV);
    if host != "default" {
        command.env(e2e_infra::engine::DOCKER_HOST_ENV, host);
    }
    let status = command.status()?;
    if !status.success() {
        return Err(format!("benchmark {benchmark} on {host} failed ({status})").into());
    }
    Ok(serde_json::from_slice(&std::fs::read(json.path())?)?)
}

//! A warm re-run: building a catalog whose inputs did not change (the cache
//! hit only tags), and loading images a node already holds.

use std::time::{Duration, Instant};

use bollard::Docker;
use std::process::{Command, Stdio};

use e2e_infra::build::{build_all, input_digest, BuildOptions, BuildOutcome, HashCounts};
use e2e_infra::catalog::Source;
use e2e_infra::cli_support::housekeeping::{self, prune_run_tags};
use e2e_infra::cli_support::state::STATE_DIR_ENV;
use e2e_infra::load::containerd::{self, Action, LoadImage, Node};
use e2e_infra::{Catalog, Delivery, Plan};
use e2e_infra_tests::kind_node::{ImageGuard, StandInCluster};
use e2e_infra_tests::unique;
use e2e_infra_tests::{busybox_dockerfile, plan, Project};

use crate::kind_load::{clear, our_load, random_file};
use crate::report::{median, median_of, ratio, ratio_of, secs, Res, Section};

/// A catalog of `count` busybox components, each with `mb` MiB of its own
/// random bytes.
fn catalog(project: &Project, count: usize, mb: u64) -> Res<(Catalog, Vec<String>)> {
    let names: Vec<String> = (1..=count).map(|i| format!("service{i}")).collect();
    let mut toml = String::new();
    for name in &names {
        project.busybox_context(name);
        random_file(&project.path().join(name).join("blob"), mb)?;
        project.write(&format!("{name}/Dockerfile"), busybox_dockerfile("COPY blob /blob\n"));
        toml.push_str(&format!("[components.{name}]\nbuild = {{ context = \"{name}\" }}\n"));
    }
    Ok((project.catalog(&toml), names))
}

/// The context files of the catalog's components, as `sha256sum` is given them.
fn context_files(catalog: &Catalog) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for component in catalog.components().values() {
        if let Source::Build(spec) = &component.source {
            let mut dirs = vec![spec.context.clone()];
            while let Some(dir) = dirs.pop() {
                for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    match entry.file_type() {
                        Ok(t) if t.is_dir() => dirs.push(entry.path()),
                        Ok(t) if t.is_file() => files.push(entry.path()),
                        _ => {}
                    }
                }
            }
        }
    }
    files
}

/// `sha256sum` of `files`: its time.
fn sha256sum(files: &[std::path::PathBuf]) -> Res<Duration> {
    let started = Instant::now();
    let status = Command::new("sha256sum").args(files).stdout(Stdio::null()).status()?;
    if !status.success() {
        return Err(format!("sha256sum exited with {status}").into());
    }
    Ok(started.elapsed())
}

/// The input digests of every component of the catalog at `path`, computed
/// in a child process whose record of file digests lives in `state`: what
/// the child measured (time, files read, bytes read, files known).
fn digests_in_child(path: &std::path::Path, state: &std::path::Path) -> Res<(Duration, HashCounts)> {
    let output = Command::new(std::env::current_exe()?)
        .args(["hash-inputs", "--catalog"])
        .arg(path)
        .env(STATE_DIR_ENV, state)
        .stderr(Stdio::inherit())
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!("hash-inputs failed ({}): {stdout}", output.status).into());
    }
    let field = |key: &str| -> Res<u64> {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("hash-inputs printed no {key}: {stdout}").into())
    };
    let counts = HashCounts {
        hashed: usize::try_from(field("hashed")?)?,
        hashed_bytes: field("hashed_bytes")?,
        reused: usize::try_from(field("reused")?)?,
    };
    Ok((Duration::from_nanos(field("elapsed_ns")?), counts))
}

/// The child side: the input digest of every component of the catalog.
pub fn hash_inputs(path: &std::path::Path) -> Res<()> {
    let catalog = Catalog::load(path)?;
    let started = Instant::now();
    let mut total = HashCounts::default();
    for (name, component) in catalog.components() {
        if let Source::Build(spec) = &component.source {
            let (_, counts) = input_digest(name, spec)?;
            total.hashed += counts.hashed;
            total.hashed_bytes += counts.hashed_bytes;
            total.reused += counts.reused;
        }
    }
    let elapsed = started.elapsed();
    println!(
        "elapsed_ns={}\nhashed={}\nhashed_bytes={}\nreused={}",
        elapsed.as_nanos(),
        total.hashed,
        total.hashed_bytes,
        total.reused
    );
    Ok(())
}

/// Builds a fresh run's plan; every reference it tags goes into `guard`.
async fn build_run(
    docker: &Docker,
    catalog: &Catalog,
    names: &[&str],
    force: bool,
    guard: &mut ImageGuard,
) -> Res<(Plan, Vec<BuildOutcome>, Duration)> {
    let plan = plan(catalog, "bench-warm", names, "bench-warm", &Delivery::Local);
    guard.0.extend(plan.components().iter().map(|c| c.image.to_string()));
    let options = BuildOptions { force, ..BuildOptions::default() };
    let started = Instant::now();
    let built = build_all(docker, &plan, &options).await?;
    let took = started.elapsed();
    if built.iter().any(|b| b.cached == force) {
        return Err(format!("expected every build {}: {built:?}", if force { "made" } else { "reused" }).into());
    }
    Ok((plan, built, took))
}

/// What a run's teardown does on the nodes: its references removed, the
/// images kept under cache references for the next run.
async fn end_run(docker: &Docker, cluster: &StandInCluster, plan: &Plan) -> Res<()> {
    for name in &cluster.nodes {
        let node = Node::Container { name: name.clone(), role: String::new() };
        containerd::remove_tagged(docker, &node, plan.tag()).await?;
    }
    Ok(())
}

fn loads(built: &[BuildOutcome]) -> Vec<LoadImage> {
    built.iter().map(|b| LoadImage { image: b.image.clone(), image_id: b.image_id.clone() }).collect()
}

/// Benchmark 4.
pub async fn warm_rerun(docker: &Docker, count: usize, mb: u64, reps: usize) -> Res<Section> {
    let mut section = Section::new(
        "4. Warm re-run",
        &format!(
            "A catalog of {count} busybox components, each with {mb} MiB of its own random bytes. Cold: \
             `build_all` with `force = true` (every image built, the engine's layer cache bypassed), as a \
             suite that rebuilds on every run does. Warm: a new run with unchanged inputs, where `build_all` \
             finds each image by its input digest and only tags it. Loads go into one Kind-node stand-in."
        ),
        &["step", "cold (naive: every time)", "warm (e2e-infra)", "cold ÷ warm"],
    );
    let project = Project::new();
    let (catalog, names) = catalog(&project, count, mb)?;
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut guard = ImageGuard::default();
    let cluster = StandInCluster::start(docker, &unique("bench-warm"), 0).await;

    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    let mut last = None;
    for rep in 0..reps {
        let (_, _, took) = build_run(docker, &catalog, &names, true, &mut guard).await?;
        cold.push(took);
        let (plan, built, took) = build_run(docker, &catalog, &names, false, &mut guard).await?;
        warm.push(took);
        println!("   rep {rep}: build cold {:.2} s, warm {:.2} s", cold[rep].as_secs_f64(), took.as_secs_f64());
        last = Some((plan, built));
    }
    section.row(vec![
        format!("`build_all` of {count} images"),
        median_of(&cold),
        median_of(&warm),
        ratio(median(&cold), median(&warm)),
    ]);

    let (last_plan, built) = last.ok_or("no repetition ran")?;
    let images = loads(&built);
    let (mut first, mut again) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        clear(docker, &cluster).await?;
        first.push(our_load(docker, &cluster, &images, Action::Loaded).await?);
        again.push(our_load(docker, &cluster, &images, Action::Skipped).await?);
    }
    section.row(vec![
        format!("`kind::load` of the {count} images into a node: first load, then the same run's re-load (skipped)"),
        median_of(&first),
        median_of(&again),
        ratio(median(&first), median(&again)),
    ]);

    // A later run tags the same images anew. The earlier run's teardown
    // left the very images on the node under cache references, so the
    // later run only tags them; each run here ends with that teardown.
    end_run(docker, &cluster, &last_plan).await?;
    let mut next_run = Vec::new();
    for _ in 0..reps {
        let (plan, built, _) = build_run(docker, &catalog, &names, false, &mut guard).await?;
        next_run.push(our_load(docker, &cluster, &loads(&built), Action::Tagged).await?);
        end_run(docker, &cluster, &plan).await?;
    }
    section.row(vec![
        "`kind::load` in a later run (new tag, same images; the node holds them under the cache references the \
         earlier run's teardown left)"
            .to_owned(),
        median_of(&first),
        median_of(&next_run),
        ratio(median(&first), median(&next_run)),
    ]);
    section.note(
        "the tag is per run, so a later run's references are new to the node; it holds the same images (same \
         engine id) under the cache references the earlier run's teardown left (`containerd::remove_tagged`, \
         as a run's teardown calls it after every run here), so they are tagged on the node instead of streamed",
    );
    section.target(
        &format!("warm overhead of the loader ≤ 100 ms for {count} images (a later run's `kind::load`, start to end)"),
        &secs(median(&next_run)),
        median(&next_run) <= Duration::from_millis(100),
    );

    // The whole warm path of a new run: plan, input digests, cache lookups
    // and tags on the engine, then the node's check and tags.
    let mut overhead = Vec::new();
    for _ in 0..reps {
        let started = Instant::now();
        let (plan, built, _) = build_run(docker, &catalog, &names, false, &mut guard).await?;
        our_load(docker, &cluster, &loads(&built), Action::Tagged).await?;
        overhead.push(started.elapsed());
        end_run(docker, &cluster, &plan).await?;
    }
    section.row(vec![
        format!("warm run in all: plan + `build_all` + `kind::load` (tagged) of the {count} images"),
        median_of(&first),
        median_of(&overhead),
        ratio(median(&first), median(&overhead)),
    ]);
    section.note(&format!(
        "a warm run in all took {}: the loader's part is the row above it, the rest is `build_all` (input digests, \
         cache lookups and tags on the engine)",
        secs(median(&overhead))
    ));

    // Housekeeping lists every image on the engine; a run that reused every
    // image skips it when it ran within REUSE_PRUNE_EVERY (as it did above,
    // after the cold builds). What it costs when it runs:
    let mut pruning = Vec::new();
    for _ in 0..reps {
        let started = Instant::now();
        prune_run_tags(docker, Some(names.as_slice()), housekeeping::KEEP_RUNS, housekeeping::GRACE, &[]).await?;
        pruning.push(started.elapsed());
    }
    let on_engine = docker.list_images(None::<bollard::query_parameters::ListImagesOptions>).await?.len();
    section.note(&format!(
        "the warm rows do not include housekeeping (removing the image tags of older runs): it lists the images \
         of the run's components by name and every untagged image, {} here with {on_engine} images on the engine, and runs after every run that built an image but at most \
         every {} after runs that reused every image",
        secs(median(&pruning)),
        humantime::format_duration(housekeeping::REUSE_PRUNE_EVERY)
    ));

    // Hashing the contexts: sha256sum against a first hashing (no record of
    // earlier digests) and a warm one, each in a child process of its own.
    let files = context_files(&catalog);
    let state = tempfile::Builder::new().prefix("bench-digests").tempdir()?;
    let (mut cli, mut fresh, mut known) = (Vec::new(), Vec::new(), Vec::new());
    let mut bytes = 0;
    for rep in 0..reps {
        cli.push(sha256sum(&files)?);
        let empty = state.path().join(format!("fresh-{rep}"));
        std::fs::create_dir(&empty)?;
        std::fs::set_permissions(&empty, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let (took, counts) = digests_in_child(&project.path().join("e2e-infra.toml"), &empty)?;
        bytes = counts.hashed_bytes;
        fresh.push(took);
        let (took, counts) = digests_in_child(&project.path().join("e2e-infra.toml"), &empty)?;
        if counts.hashed != 0 {
            return Err(format!("the warm hashing read {} file(s) again", counts.hashed).into());
        }
        known.push(took);
    }
    let rate = |d: Duration| format!("{:.0} MiB/s", bytes as f64 / 1024.0 / 1024.0 / d.as_secs_f64().max(1e-9));
    section.row(vec![
        format!(
            "input digests of the {count} contexts ({} files, {:.1} MiB): `sha256sum` / e2e-infra, first time",
            files.len(),
            bytes as f64 / 1024.0 / 1024.0
        ),
        format!("{} ({})", median_of(&cli), rate(median(&cli))),
        format!("{} ({})", median_of(&fresh), rate(median(&fresh))),
        ratio(median(&cli), median(&fresh)),
    ]);
    section.row(vec![
        "input digests again, files unchanged: e2e-infra first time / e2e-infra with its record".to_owned(),
        median_of(&fresh),
        median_of(&known),
        ratio_of(median(&fresh).as_secs_f64(), median(&known).as_secs_f64()),
    ]);
    section.note(&format!(
        "hashing runs on {} thread(s); the record keeps each file's size, modification and change times and \
         inode with its digest, and a file changed less than 2 s before the record was made is read again; \
         warm hashing took {} at the median",
        std::thread::available_parallelism().map_or(1, usize::from),
        secs(median(&known))
    ));
    Ok(section)
}

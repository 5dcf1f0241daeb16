//! A warm re-run: building a catalog whose inputs did not change (the cache
//! hit only tags), and loading images a node already holds.

use std::time::{Duration, Instant};

use bollard::Docker;
use e2e_infra::build::{build_all, BuildOptions, BuildOutcome};
use e2e_infra::load::containerd::{Action, LoadImage};
use e2e_infra::{Catalog, Delivery, Plan};
use e2e_infra_tests::kind_node::{ImageGuard, StandInCluster};
use e2e_infra_tests::unique;
use e2e_infra_tests::{busybox_dockerfile, plan, Project};

use crate::kind_load::{clear, our_load, random_file};
use crate::report::{median, median_of, ratio, Res, Section};

/// A catalog of `count` busybox components, each with `mb` MiB of its own
/// random bytes.
fn catalog(project: &Project, count: usize, mb: u64) -> Res<(Catalog, Vec<String>)> {
    let names: Vec<String> = (1..=count).map(|i| format!("service{i}")).collect();
    let mut toml = String::new();
    for name in &names {
        project.busybox_context(name);
        random_file(&project.path().join(name).join("blob"), mb)?;
        project.write(
            &format!("{name}/Dockerfile"),
            busybox_dockerfile("COPY blob /blob\n"),
        );
        toml.push_str(&format!(
            "[components.{name}]\nbuild = {{ context = \"{name}\" }}\n"
        ));
    }
    Ok((project.catalog(&toml), names))
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
    guard
        .0
        .extend(plan.components().iter().map(|c| c.image.to_string()));
    let options = BuildOptions {
        force,
        ..BuildOptions::default()
    };
    let started = Instant::now();
    let built = build_all(docker, &plan, &options).await?;
    let took = started.elapsed();
    if built.iter().any(|b| b.cached == force) {
        return Err(format!(
            "expected every build {}: {built:?}",
            if force { "made" } else { "reused" }
        )
        .into());
    }
    Ok((plan, built, took))
}

fn loads(built: &[BuildOutcome]) -> Vec<LoadImage> {
    built
        .iter()
        .map(|b| LoadImage {
            image: b.image.clone(),
            image_id: b.image_id.clone(),
        })
        .collect()
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
        println!(
            "   rep {rep}: build cold {:.2} s, warm {:.2} s",
            cold[rep].as_secs_f64(),
            took.as_secs_f64()
        );
        last = Some((plan, built));
    }
    section.row(vec![
        format!("`build_all` of {count} images"),
        median_of(&cold),
        median_of(&warm),
        ratio(median(&cold), median(&warm)),
    ]);

    let (_, built) = last.ok_or("no repetition ran")?;
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

    // A later run tags the same images anew; the node holds the very images
    // under the earlier run's references, so it only tags them.
    let mut next_run = Vec::new();
    for _ in 0..reps {
        let (_, built, _) = build_run(docker, &catalog, &names, false, &mut guard).await?;
        next_run.push(our_load(docker, &cluster, &loads(&built), Action::Tagged).await?);
    }
    section.row(vec![
        "`kind::load` in a later run (new tag, same images; the node holds them under the old tag)"
            .to_owned(),
        median_of(&first),
        median_of(&next_run),
        ratio(median(&first), median(&next_run)),
    ]);
    section.note(
        "the tag is per run, so a later run's references are new to the node; it holds the same images (same \
         engine id) under the earlier run's references, so they are tagged on the node instead of streamed",
    );
    Ok(section)
}

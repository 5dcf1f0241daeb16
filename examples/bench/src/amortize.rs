//! Amortization under cargo-nextest, which runs every test in a process of
//! its own: e2e-infra sets the stack up once per run and every other process
//! attaches, against a once-cell per process, where every process plans its
//! own run and builds, deploys and waits by itself.
//!
//! Both suites live in one generated crate laid out from `tests/fixture`
//! (its catalog of busybox servers), depending on e2e-infra by path and
//! built in this workspace's target directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::query_parameters::{EventsOptions, ListImagesOptions, RemoveImageOptions};
use bollard::Docker;
use e2e_infra::deploy::docker::remove_labelled;
use e2e_infra::labels::{BUILT_BY_CONSUMER, CONSUMER};
use e2e_infra_tests::kind_node::on_fresh_runtime;
use futures::StreamExt;

use crate::report::{median, ratio, ratio_of, secs, Res, Section};

pub(crate) fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Both suites of `tests` tests each, for consumers `ours` and `naive`.
fn lay_out(dir: &Path, ours: &str, naive: &str, tests: usize) -> Res<()> {
    let fixture = workspace().join("tests/fixture");
    std::fs::create_dir_all(dir.join("tests"))?;
    std::fs::create_dir_all(dir.join("image"))?;
    for (from, to) in [
        (fixture.join("e2e-infra.toml"), dir.join("e2e-infra.toml")),
        (fixture.join("busybox.Dockerfile"), dir.join("busybox.Dockerfile")),
        (PathBuf::from(e2e_infra_tests::BUSYBOX), dir.join("image/busybox")),
        (workspace().join("Cargo.lock"), dir.join("Cargo.lock")),
    ] {
        std::fs::copy(&from, &to).map_err(|e| format!("copying {}: {e}", from.display()))?;
    }
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"{ours}\"\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\n[workspace]\n\n\
             [dev-dependencies]\ne2e-infra = {{ path = \"{}\" }}\n\
             tokio = {{ version = \"1\", features = [\"rt\", \"rt-multi-thread\", \"macros\"] }}\n",
            workspace().join("runtime").display()
        ),
    )?;
    // `test` is one test's source with `NAME` for its name.
    let suite = |file: &str, head: String, test: &str, tail: &str| {
        let tests: String = (1..=tests).map(|i| test.replace("NAME", &format!("t{i:02}"))).collect();
        std::fs::write(dir.join("tests").join(file), format!("{head}{tests}{tail}"))
    };
    suite(
        "ours.rs",
        format!(
            "//! Every test shares the run's stack.\n\n\
             #[e2e_infra::e2e_infra(consumer = \"{ours}\", needs = [\"api\"])]\nmod ours {{\n    use e2e_infra::Infra;\n\n"
        ),
        "    #[test]\n    fn NAME(infra: &Infra) {\n        assert!(infra.endpoint(\"api\", 8080).is_some());\n    }\n",
        "}\n",
    )?;
    suite(
        "naive.rs",
        format!(
            r#"//! Every test process stands its own stack up, once, with its own run id.

use std::sync::OnceLock;

use e2e_infra::build::BuildOptions;
use e2e_infra::record::StackRecord;
use e2e_infra::stack::{{up, StackOptions}};

fn stack() -> &'static StackRecord {{
    static STACK: OnceLock<StackRecord> = OnceLock::new();
    STACK.get_or_init(|| {{
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e-infra.toml");
        let catalog = e2e_infra::Catalog::load(&path).expect("catalog");
        let run = e2e_infra::RunId::explicit(&format!("naive-{{}}", std::process::id()), None).expect("run id");
        let plan = e2e_infra::Plan::new(&catalog, "{naive}", &["api"], run, &e2e_infra::Delivery::Local).expect("plan");
        let options = StackOptions {{ build: BuildOptions {{ force: true, ..BuildOptions::default() }}, ..StackOptions::default() }};
        tokio::runtime::Runtime::new().expect("runtime").block_on(up(&plan, &options)).expect("stack up")
    }})
}}
"#
        ),
        "\n#[test]\nfn NAME() {\n    assert!(stack().endpoints.contains_key(\"api\"));\n}\n",
        "",
    )?;
    Ok(())
}

/// `cargo nextest run` in `dir` with these arguments.
pub(crate) fn nextest(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    command.args(["nextest", "run", "--color", "never"]).args(args).current_dir(dir);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("NEXTEST") || k.starts_with("E2E_INFRA")) {
        command.env_remove(key);
    }
    command.env("CARGO_TARGET_DIR", workspace().join("target")).env("E2E_INFRA_STATE_DIR", dir.join("state"));
    command.envs(env.iter().copied());
    command
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or_default())
}

/// What one suite's run did.
pub(crate) struct Measured {
    pub(crate) wall: Duration,
    pub(crate) per_test: Vec<Duration>,
    tagged: usize,
    pub(crate) containers: usize,
}

/// Runs test binary `suite` and counts what the engine saw for `consumer`.
pub(crate) async fn measure(
    docker: &Docker,
    dir: &Path,
    suite: &str,
    consumer: &str,
    env: &[(&str, &str)],
) -> Res<Measured> {
    // The engine keeps only its last 256 events for later queries, fewer
    // than a naive run makes: follow them live instead.
    let filters = HashMap::from([
        ("type".to_owned(), vec!["image".to_owned(), "container".to_owned()]),
        ("event".to_owned(), vec!["tag".to_owned(), "create".to_owned()]),
    ]);
    let options = EventsOptions { since: Some(unix_now().to_string()), until: None, filters: Some(filters) };
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let follow = {
        let (mut events, seen) = (docker.events(Some(options)), std::sync::Arc::clone(&seen));
        tokio::spawn(async move {
            while let Some(Ok(event)) = events.next().await {
                if let (Ok(mut seen), Some(attributes)) = (seen.lock(), event.actor.and_then(|a| a.attributes)) {
                    seen.push((event.action.unwrap_or_default(), attributes));
                }
            }
        })
    };
    let started = Instant::now();
    let mut command = nextest(dir, &["--test", suite, "--no-fail-fast"], env);
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    let wall = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    follow.abort();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        return Err(format!("the {suite} suite failed:\n{text}").into());
    }
    // `PASS [   0.512s] (3/17) crate::suite module::t03`.
    let per_test: Vec<Duration> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("PASS ["))
        .filter_map(|l| l.split_once('[')?.1.split_once("s]")?.0.trim().parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .collect();
    let seen = seen.lock().map_err(|_| "the event log was poisoned")?;
    let named = |action: &str, name: &dyn Fn(&str) -> bool| {
        seen.iter().filter(|(a, attributes)| a == action && attributes.get("name").is_some_and(|n| name(n))).count()
    };
    let tagged = named("tag", &|n| n.contains(&format!(":{consumer}-")));
    // Build steps run in containers that carry the labels too; a stack's
    // containers are the ones named after its namespace.
    let containers = named("create", &|n| n.starts_with(&format!("{consumer}-")));
    Ok(Measured { wall, per_test, tagged, containers })
}

/// Removes the containers, networks and images of the given consumers,
/// when dropped too (a failed run, a panic).
pub(crate) struct Cleanup(pub(crate) Vec<String>);

impl Cleanup {
    async fn run(docker: &Docker, consumers: &[String]) -> Res<()> {
        for consumer in consumers {
            let label = format!("{CONSUMER}={consumer}");
            remove_labelled(docker, std::slice::from_ref(&label)).await?;
            let built = format!("{BUILT_BY_CONSUMER}={consumer}");
            let filters = HashMap::from([("label".to_owned(), vec![built])]);
            let images = docker
                .list_images(Some(ListImagesOptions { all: true, filters: Some(filters), ..Default::default() }))
                .await?;
            for image in images {
                let options = RemoveImageOptions { force: true, noprune: true, ..Default::default() };
                let _ = docker.remove_image(&image.id, Some(options), None).await;
            }
        }
        Ok(())
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let consumers = std::mem::take(&mut self.0);
        on_fresh_runtime(move |docker| async move {
            if let Err(e) = Self::run(&docker, &consumers).await {
                eprintln!("cleaning up after a benchmark: {e}");
            }
        });
    }
}

/// Benchmark 5.
pub async fn amortization(docker: &Docker, tests: usize) -> Res<Section> {
    let mut section = Section::new(
        "5. Amortization across test processes (cargo-nextest)",
        &format!(
            "One generated crate (laid out from `tests/fixture`: a busybox `api` server that depends on a \
             `store` server, two images and two containers per stack), two suites of {tests} tests each, run \
             one after the other under `cargo nextest run`, which gives every test a process of its own. \
             e2e-infra: `#[e2e_infra]`, the stack set up once per run and attached to by every other process. \
             Naive: a `OnceLock` per process calling `e2e_infra::stack::up` with a run id of its own \
             (`RunId::explicit(\"naive-<pid>\")`) and forced builds, so every process plans, builds, deploys \
             and waits by itself. Both build cold (e2e-infra with `E2E_INFRA_FORCE_BUILD=1`). Images tagged \
             and containers created are counted from the engine's events; the suites are compiled before \
             the clock starts."
        ),
        &["", "e2e-infra", "naive (once-cell per process)", "naive ÷ e2e-infra"],
    );
    let dir = tempfile::tempdir()?;
    let tag = std::process::id() % 0xffff;
    let (ours, naive) = (format!("bench-ours-{tag:04x}"), format!("bench-naive-{tag:04x}"));
    let cleanup = Cleanup(vec![ours.clone(), naive.clone()]);
    lay_out(dir.path(), &ours, &naive, tests)?;
    let compiled = nextest(dir.path(), &["--no-run"], &[]).output()?;
    if !compiled.status.success() {
        return Err(
            format!("compiling the generated suites failed:\n{}", String::from_utf8_lossy(&compiled.stderr)).into()
        );
    }
    let a = measure(docker, dir.path(), "ours", &ours, &[("E2E_INFRA_FORCE_BUILD", "1")]).await?;
    let b = measure(docker, dir.path(), "naive", &naive, &[]).await?;
    let count = |n: usize| n as f64;
    section.row(vec![
        "images tagged (builds)".to_owned(),
        a.tagged.to_string(),
        b.tagged.to_string(),
        ratio_of(count(b.tagged), count(a.tagged)),
    ]);
    section.row(vec![
        "containers created (stacks × 2)".to_owned(),
        a.containers.to_string(),
        b.containers.to_string(),
        ratio_of(count(b.containers), count(a.containers)),
    ]);
    section.row(vec!["wall time of the nextest run".to_owned(), secs(a.wall), secs(b.wall), ratio(b.wall, a.wall)]);
    let slowest = |m: &Measured| m.per_test.iter().max().copied().unwrap_or_default();
    section.row(vec![
        "per-test process, median (attach for e2e-infra, own setup for naive)".to_owned(),
        secs(median(&a.per_test)),
        secs(median(&b.per_test)),
        ratio(median(&b.per_test), median(&a.per_test)),
    ]);
    section.row(vec![
        "per-test process, slowest (e2e-infra: the one that set up)".to_owned(),
        secs(slowest(&a)),
        secs(slowest(&b)),
        ratio(slowest(&b), slowest(&a)),
    ]);
    section.note(&format!(
        "tests counted from nextest's PASS lines: {} e2e-infra, {} naive (e2e-infra's teardown process removes \
         its stack when the run ends; the naive processes leave theirs, removed by this benchmark afterwards)",
        a.per_test.len(),
        b.per_test.len()
    ));
    drop(cleanup);
    Ok(section)
}

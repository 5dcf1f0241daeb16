//! Once per run, across processes, and teardown after the run: a fresh crate
//! that depends on e2e-infra alone is laid out from `tests/fixture`, run under
//! cargo-nextest and cargo test, and the engine is asked what happened.

use std::collections::HashMap;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bollard::query_parameters::{EventsOptions, ListContainersOptions, ListNetworksOptions};
use bollard::Docker;
use e2e_infra::plan::RunKey;
use e2e_infra_tests::cluster::cli;
use e2e_infra_tests::report::ReportFolder;
use futures::StreamExt;
use tempfile::TempDir;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// A fresh suite crate in a temporary directory.
struct Fixture {
    dir: TempDir,
    consumer: String,
}

impl Fixture {
    fn new(scenario: &str, needs: &[&str]) -> Self {
        let consumer = format!("fx-{scenario}-{:04x}", std::process::id() % 0xffff);
        let dir = tempfile::tempdir().expect("tempdir");
        let src = root().join("tests/fixture");
        std::fs::create_dir_all(dir.path().join("image")).expect("image dir");
        std::fs::create_dir_all(dir.path().join("tests")).expect("tests dir");
        std::fs::copy(src.join("e2e-infra.toml"), dir.path().join("e2e-infra.toml")).expect("catalog");
        std::fs::copy(src.join("busybox.Dockerfile"), dir.path().join("busybox.Dockerfile")).expect("dockerfile");
        std::fs::copy("/bin/busybox", dir.path().join("image/busybox")).expect("busybox: install busybox-static");
        std::fs::copy(root().join("Cargo.lock"), dir.path().join("Cargo.lock")).expect("lock");
        let needs = needs.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ");
        let suite = std::fs::read_to_string(src.join("tests/suite.rs"))
            .expect("suite")
            .replace("@CONSUMER@", &consumer)
            .replace("@NEEDS@", &needs);
        std::fs::write(dir.path().join("tests/suite.rs"), suite).expect("write suite");
        let manifest = format!(
            r#"[package]
name = "{consumer}"
version = "0.0.0"
edition = "2021"
publish = false

[workspace]

[features]
e2e = []

[dev-dependencies]
e2e-infra = {{ path = "{}" }}
tokio = {{ version = "1", features = ["rt", "rt-multi-thread", "macros"] }}
"#,
            root().join("runtime").display()
        );
        // Each fixture is its own package: in the shared target directory,
        // test binaries of equally named packages would overwrite each other.
        std::fs::write(dir.path().join("Cargo.toml"), manifest).expect("manifest");
        // The state root must be private to its user.
        std::fs::DirBuilder::new().mode(0o700).create(dir.path().join("state")).expect("state dir");
        Self { dir, consumer }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Where the suite's failure reports go: the report root of the
    /// fixture's target directory (`CARGO_TARGET_DIR`), then the consumer.
    fn reports(&self) -> PathBuf {
        root().join("target/fixture/e2e-infra").join(&self.consumer)
    }

    /// Runs the suite under `runner` ("nextest", "test", or "test-serial":
    /// cargo test with one test thread) with extra env.
    fn run(&self, runner: &str, env: &[(&str, &str)]) -> Output {
        let args: &[&str] = match runner {
            "nextest" => &["nextest", "run", "--features", "e2e", "--no-fail-fast", "--color", "never"],
            "test-serial" => &["test", "--features", "e2e", "--color", "never", "--", "--test-threads", "1"],
            _ => &["test", "--features", "e2e", "--color", "never"],
        };
        let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        command.args(args).current_dir(self.dir.path());
        for (key, _) in std::env::vars() {
            if key.starts_with("NEXTEST") || key.starts_with("E2E_INFRA") || key == "RUST_TEST_THREADS" {
                command.env_remove(key);
            }
        }
        command
            .env("CARGO_TARGET_DIR", root().join("target/fixture"))
            // One binary per suite: without debug info they stay small.
            .env("CARGO_PROFILE_DEV_DEBUG", "false")
            .env("E2E_INFRA_STATE_DIR", self.state())
            .envs(env.iter().copied());
        let output = command.output().expect("run cargo");
        eprintln!(
            "--- {runner} {} ---\n{}\n{}",
            self.consumer,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.reports());
    }
}

/// The report folders a run printed (`e2e-infra report: <path>`), each once.
fn printed_reports(all: &str) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> =
        all.lines().filter_map(|l| l.split_once("e2e-infra report: ")).map(|(_, p)| PathBuf::from(p.trim())).collect();
    paths.sort();
    paths.dedup();
    paths
}

/// The report of the failed `scenario_switch` test, with both components'
/// logs and state as the stack ran.
fn assert_failed_test_report(fixture: &Fixture, all: &str) -> PathBuf {
    let printed = printed_reports(all);
    assert_eq!(printed.len(), 1, "one report, for the one failed test:\n{all}");
    let path = printed[0].clone();
    assert!(path.starts_with(fixture.reports()), "{} is not under {}", path.display(), fixture.reports().display());
    assert!(path.ends_with("fixture_e2e__scenario_switch"), "{}", path.display());
    let report = ReportFolder::at(&path);
    assert_eq!(report.components(), ["api", "store"], "{:?}", report.files());
    assert!(report.logs("api").trim_end().ends_with("api serving on 8080"), "{}", report.logs("api"));
    assert!(report.logs("store").trim_end().ends_with("store serving on 7000"), "{}", report.logs("store"));
    assert!(report.state("api").contains("status: running"), "{}", report.state("api"));
    assert!(report.text("summary.txt").contains("scenario_switch"), "{}", report.text("summary.txt"));
    assert!(report.text("timings.txt").contains("api"), "{}", report.text("timings.txt"));
    assert!(report.text("plan.json").contains("\"store\""), "{}", report.text("plan.json"));
    assert!(!report.text("build/api.log").trim().is_empty(), "{:?}", report.files());
    path
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn docker() -> Docker {
    Docker::connect_with_local_defaults().expect("docker client")
}

fn consumer_filter(consumer: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_owned(), vec![format!("io.e2e-infra.consumer={consumer}")])])
}

/// Container and image events, followed live: the engine keeps only its last
/// few hundred events for later queries, and builds make many.
struct EventLog {
    seen: std::sync::Arc<std::sync::Mutex<Vec<bollard::models::EventMessage>>>,
    follower: tokio::task::JoinHandle<()>,
}

impl EventLog {
    fn start() -> Self {
        let filters = HashMap::from([("type".to_owned(), vec!["container".to_owned(), "image".to_owned()])]);
        // From now on, whenever the subscription reaches the engine: what
        // happened meanwhile is still in its recent-events buffer. `since`
        // counts whole seconds, so what happened earlier in this second (the
        // end of the previous run) is left out by its own time.
        let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
        let start_nanos = i64::try_from(start.as_nanos()).expect("nanoseconds fit in i64");
        let since = start.as_secs().to_string();
        let options = EventsOptions { since: Some(since), until: None, filters: Some(filters) };
        let mut stream = Box::pin(docker().events(Some(options)));
        let seen: std::sync::Arc<std::sync::Mutex<Vec<_>>> = std::sync::Arc::default();
        let sink = std::sync::Arc::clone(&seen);
        let follower = tokio::spawn(async move {
            while let Some(Ok(event)) = stream.next().await {
                if event.time_nano.is_none_or(|t| t >= start_nanos) {
                    sink.lock().expect("event log").push(event);
                }
            }
        });
        Self { seen, follower }
    }

    /// Waits until the events stop coming (bounded): the engine sends them as
    /// they happen, and the run that caused them is over.
    async fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = usize::MAX;
        while Instant::now() < deadline {
            let now = self.seen.lock().expect("event log").len();
            if now == seen {
                return;
            }
            seen = now;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Names (from `attribute`) of events of `action` whose name matches `keep`.
    fn names(&self, action: &str, keep: impl Fn(&str) -> bool) -> Vec<String> {
        self.seen
            .lock()
            .expect("event log")
            .iter()
            .filter(|e| e.action.as_deref() == Some(action))
            .filter_map(|e| e.actor.as_ref()?.attributes.as_ref()?.get("name").cloned())
            .filter(|name| keep(name))
            .collect()
    }

    /// Containers created for the consumer: the stack's are named after it
    /// (intermediate build containers carry the image's labels, not its name).
    fn containers_created(&self, consumer: &str) -> Vec<String> {
        self.names("create", |name| name.starts_with(&format!("{consumer}-")))
    }

    /// Images tagged `...:<consumer>-<hex>`: one per build or cache hit.
    fn images_tagged(&self, consumer: &str) -> Vec<String> {
        self.names("tag", |name| name.contains(&format!(":{consumer}-")))
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

/// What the consumer still owns on the engine: (containers, networks).
async fn leftovers(consumer: &str) -> (usize, usize) {
    let docker = docker();
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(consumer_filter(consumer)),
            ..Default::default()
        }))
        .await
        .expect("list containers");
    let networks = docker
        .list_networks(Some(ListNetworksOptions { filters: Some(consumer_filter(consumer)) }))
        .await
        .expect("list networks");
    (containers.len(), networks.len())
}

/// Waits (bounded) for the teardown process to remove everything.
async fn assert_torn_down(fixture: &Fixture) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = leftovers(&fixture.consumer).await;
        let states = walk(&fixture.state());
        if left == (0, 0) && states.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the run, {left:?} containers/networks and state {states:?} of {} remain",
            fixture.consumer
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

async fn once_per_run(runner: &str, scenario: &str) {
    let fixture = Fixture::new(scenario, &["api"]);
    let events = EventLog::start();
    let output = fixture.run(runner, &[]);
    let all = text(&output);
    assert!(output.status.success(), "suite failed:\n{all}");
    // The suite's nine tests and nothing else: no test stands for the teardown.
    let passed = if runner == "nextest" {
        "9 tests run: 9 passed, 0 skipped"
    } else {
        "test result: ok. 9 passed; 0 failed; 0 ignored"
    };
    assert!(all.contains(passed), "expected all 9 to pass, none skipped:\n{all}");
    events.settle().await;
    let created = events.containers_created(&fixture.consumer);
    assert_eq!(created.len(), 2, "one container per component for the whole run: {created:?}");
    let tagged = events.images_tagged(&fixture.consumer);
    assert_eq!(tagged.len(), 2, "one build (or cache tag) per image for the whole run: {tagged:?}");
    assert_torn_down(&fixture).await;
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nextest_sets_up_once_per_run_and_tears_down_after() {
    once_per_run("nextest", "nx").await;
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cargo_test_sets_up_once_per_run_and_tears_down_after() {
    once_per_run("test", "ct").await;
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cargo_test_in_sequence_shares_the_stack_across_test_runtimes() {
    once_per_run("test-serial", "seq").await;
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setup_process_killed_half_way_is_taken_over() {
    let fixture = Fixture::new("takeover", &["api"]);
    // Kill the process that sets up as soon as it has said so: its pid is in
    // the `attempt` marker. A forced build keeps it busy long enough.
    let state = fixture.state();
    let killer = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(900);
        while Instant::now() < deadline {
            let pid = walk(&state)
                .into_iter()
                .find(|p| p.ends_with("attempt"))
                .and_then(|p| std::fs::read_to_string(p).ok())
                .filter(|pid| !pid.is_empty());
            if let Some(pid) = pid {
                let killed = Command::new("kill").args(["-9", &pid]).status().is_ok_and(|s| s.success());
                return killed.then_some(pid);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    });
    let output = fixture.run("nextest", &[("E2E_INFRA_FORCE_BUILD", "1")]);
    let killed = killer.join().expect("killer thread");
    let all = text(&output);
    assert!(killed.is_some(), "the setup process was never seen:\n{all}");
    assert!(all.contains("SIGKILL"), "{all}");
    assert!(all.contains("8 passed, 1 failed"), "another process took over the setup:\n{all}");
    assert_torn_down(&fixture).await;
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_test_keeps_the_stack_and_says_how_to_remove_it() {
    let fixture = Fixture::new("keep", &["api"]);
    let output = fixture.run("nextest", &[("FIXTURE_SCENARIO", "panic")]);
    let all = text(&output);
    assert!(!output.status.success());
    assert!(all.contains("8 passed, 1 failed"), "{all}");
    assert!(all.contains("will be kept after the run"), "{all}");
    assert!(all.contains(&format!("e2e-infra down --consumer {}", fixture.consumer)), "{all}");
    // The teardown process marks it kept once the run is over.
    let deadline = Instant::now() + Duration::from_secs(30);
    let kept = loop {
        if let Some(kept) = walk(&fixture.state()).into_iter().find(|p| p.ends_with("kept")) {
            break kept;
        }
        assert!(Instant::now() < deadline, "no kept marker");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(std::fs::read_to_string(&kept).expect("kept").contains("scenario_switch"));
    assert_eq!(leftovers(&fixture.consumer).await, (2, 1), "kept stack: two containers, one network");
    assert_failed_test_report(&fixture, &all);
    let run_id = kept.parent().and_then(Path::parent).and_then(Path::file_name).expect("run dir");
    // The kept stack on demand: its logs, and a report of it as it is now.
    let cli_reports = fixture.dir.path().join("cli-reports");
    let env = [("E2E_INFRA_REPORT_DIR", cli_reports.as_os_str())];
    let run = run_id.to_string_lossy();
    let (logs, _) =
        cli(fixture.dir.path(), &["logs", "--consumer", &fixture.consumer, "--run", &run, "api"], &env).await;
    let printed = String::from_utf8_lossy(&logs.stdout);
    assert!(logs.status.success() && printed.contains("api serving on 8080"), "{printed}");
    assert!(!printed.contains("store serving"), "only the api's lines: {printed}");
    let (written, _) = cli(fixture.dir.path(), &["report", "--consumer", &fixture.consumer], &env).await;
    assert!(written.status.success(), "{}", String::from_utf8_lossy(&written.stderr));
    let expected = cli_reports.join(&fixture.consumer).join(run_id).join("on-demand");
    assert_eq!(String::from_utf8_lossy(&written.stdout).trim(), expected.display().to_string());
    let on_demand = ReportFolder::at(&expected);
    assert!(on_demand.logs("store").contains("store serving on 7000"), "{:?}", on_demand.files());
    assert!(
        on_demand.text("summary.txt").contains("failed tests of the run: fixture_e2e::scenario_switch"),
        "{}",
        on_demand.text("summary.txt")
    );
    assert!(on_demand.text("plan.json").contains("\"api\""), "{:?}", on_demand.files());
    let removed = e2e_infra::stack::down(
        &docker(),
        &RunKey::parse(&run_id.to_string_lossy(), &fixture.consumer).expect("a valid key"),
        None,
    )
    .await
    .expect("down");
    assert!(removed.contains("2 container"), "{removed}");
    assert_eq!(leftovers(&fixture.consumer).await, (0, 0));
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_test_with_keep_off_still_tears_down() {
    let fixture = Fixture::new("nokeep", &["api"]);
    let output = fixture.run("nextest", &[("FIXTURE_SCENARIO", "panic"), ("E2E_INFRA_KEEP", "0")]);
    assert!(text(&output).contains("8 passed, 1 failed"), "{}", text(&output));
    assert_torn_down(&fixture).await;
    // Written before the teardown, though the stack was not kept.
    assert_failed_test_report(&fixture, &text(&output));
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_process_killed_with_sigkill_does_not_stop_teardown() {
    let fixture = Fixture::new("kill", &["api"]);
    let output = fixture.run("nextest", &[("FIXTURE_SCENARIO", "sigkill")]);
    let all = text(&output);
    assert!(all.contains("SIGKILL"), "the test process was killed:\n{all}");
    assert!(all.contains("8 passed, 1 failed"), "{all}");
    assert_torn_down(&fixture).await;
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_setup_fails_every_test_at_once_with_the_logs() {
    let fixture = Fixture::new("crash", &["crasher"]);
    let events = EventLog::start();
    let started = Instant::now();
    let output = fixture.run("nextest", &[]);
    let elapsed = started.elapsed();
    let all = text(&output);
    assert!(all.contains("9 failed"), "{all}");
    assert!(
        all.matches("crasher cannot find its config").count() >= 9,
        "every test carries the container's log line:\n{all}"
    );
    let reported = printed_reports(&all);
    assert_eq!(reported.len(), 1, "one setup report:\n{all}");
    assert!(reported[0].starts_with(fixture.reports()) && reported[0].ends_with("setup"), "{}", reported[0].display());
    assert!(all.matches("e2e-infra report: ").count() >= 9, "every test names the report:\n{all}");
    let report = ReportFolder::at(&reported[0]);
    assert_eq!(report.components(), ["crasher"], "{:?}", report.files());
    assert!(
        report.logs("crasher").trim_end().ends_with("crasher cannot find its config"),
        "{}",
        report.logs("crasher")
    );
    assert!(report.state("crasher").contains("exit code: 3"), "{}", report.state("crasher"));
    // One setup attempt for the whole run: no retry storm.
    events.settle().await;
    let created = events.containers_created(&fixture.consumer);
    assert_eq!(created.len(), 1, "{created:?}");
    // The probe timeout is 120 s; the crash is reported long before (the
    // bound is loose: it includes compiling the suite).
    assert!(elapsed < Duration::from_secs(110), "took {elapsed:?}");
    assert_torn_down(&fixture).await;
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_at_once_do_not_share_or_disturb() {
    let a = Fixture::new("pa", &["api"]);
    let b = Fixture::new("pb", &["api"]);
    let events = EventLog::start();
    let (out_a, out_b) = std::thread::scope(|s| {
        let ha = s.spawn(|| a.run("nextest", &[]));
        let hb = s.spawn(|| b.run("nextest", &[]));
        (ha.join().expect("a"), hb.join().expect("b"))
    });
    assert!(out_a.status.success(), "{}", text(&out_a));
    assert!(out_b.status.success(), "{}", text(&out_b));
    events.settle().await;
    let created_a = events.containers_created(&a.consumer);
    let created_b = events.containers_created(&b.consumer);
    assert_eq!((created_a.len(), created_b.len()), (2, 2));
    assert!(created_a.iter().all(|n| !created_b.contains(n)), "{created_a:?} / {created_b:?}");
    assert_torn_down(&a).await;
    assert_torn_down(&b).await;
}

/// Removes a stack kept on purpose however the test ends.
struct DownOnDrop<'a>(&'a Fixture);

impl Drop for DownOnDrop<'_> {
    fn drop(&mut self) {
        let _ = Command::new(e2e_infra_tests::cluster::cli_binary())
            .args(["down", "--consumer", &self.0.consumer, "--force"])
            .env("E2E_INFRA_STATE_DIR", self.0.state())
            .output();
    }
}

/// `E2E_INFRA_REUSE=1`: the stack outlives the run; the next run reuses
/// every container whose image and configuration are unchanged and
/// replaces the others (and what depends on them); `status` lists it,
/// `clean` leaves it, `clean --reused` removes it.
#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_stack_is_replaced_only_where_something_changed() {
    let fixture = Fixture::new("ru", &["api"]);
    let _down = DownOnDrop(&fixture);
    // Inputs of its own: other tests force rebuilds of the fixture's images,
    // which would rightly count as a changed image here.
    std::fs::write(fixture.dir.path().join("image/owner"), &fixture.consumer).expect("context file");
    let reuse = [("E2E_INFRA_REUSE", "1")];
    let run = |expected_created: usize, why: &'static str| {
        let fixture = &fixture;
        async move {
            let events = EventLog::start();
            let output = fixture.run("nextest", &reuse);
            assert!(output.status.success(), "suite failed:\n{}", text(&output));
            events.settle().await;
            let created = events.containers_created(&fixture.consumer);
            assert_eq!(created.len(), expected_created, "{why}: {created:?}");
            // Kept after the run, by design.
            assert_eq!(leftovers(&fixture.consumer).await, (2, 1), "{why}: the stack stays");
            created
        }
    };
    run(2, "a cold start creates both").await;
    run(0, "nothing changed").await;

    // Only the api's command changes: the store stays.
    let catalog = fixture.dir.path().join("e2e-infra.toml");
    let text_of = std::fs::read_to_string(&catalog).expect("catalog");
    std::fs::write(&catalog, text_of.replace("echo api store=$STORE >", "echo api store=$STORE changed >"))
        .expect("catalog");
    let created = run(1, "the api's configuration changed").await;
    assert!(created[0].ends_with("-api"), "{created:?}");

    // A changed image: both are built from it, both are replaced.
    std::fs::write(fixture.dir.path().join("image/version"), "2").expect("context file");
    std::fs::write(
        fixture.dir.path().join("busybox.Dockerfile"),
        std::fs::read_to_string(fixture.dir.path().join("busybox.Dockerfile")).expect("dockerfile")
            + "COPY version /version\n",
    )
    .expect("dockerfile");
    run(2, "the image changed").await;

    let dir = fixture.dir.path();
    let state = [("E2E_INFRA_STATE_DIR", fixture.state().into_os_string())];
    let env: Vec<(&str, &std::ffi::OsStr)> = state.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
    let (status, _) = e2e_infra_tests::cluster::cli(dir, &["status"], &env).await;
    let listed = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(listed.lines().any(|l| l.starts_with(&fixture.consumer) && l.contains(" reuse ")), "{listed}");
    let (clean, _) = e2e_infra_tests::cluster::cli(dir, &["clean", "--consumer", &fixture.consumer], &env).await;
    assert!(clean.status.success());
    assert_eq!(leftovers(&fixture.consumer).await, (2, 1), "plain clean removed a reusable stack");
    let (clean, _) =
        e2e_infra_tests::cluster::cli(dir, &["clean", "--reused", "--consumer", &fixture.consumer], &env).await;
    assert!(clean.status.success());
    assert_eq!(leftovers(&fixture.consumer).await, (0, 0));
}

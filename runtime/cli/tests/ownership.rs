//! Never touch what is not yours: runs of other PID namespaces, label
//! values that look like paths, `up`s at once or with one run id, networks
//! that share a name, kept stacks seen from another shell, stale state of an
//! earlier use of a run id, and a stack that cannot be recorded. Each test
//! reproduces one way the runtime used to remove or trust what it did not
//! own, against the real engine.

use std::collections::HashMap;
use std::io::BufRead as _;
use std::os::unix::fs::DirBuilderExt as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, NetworkCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptions, ListVolumesOptions, RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use e2e_infra::__private::{Declared, Suite, SuiteSpec};
use e2e_infra::cli_support::teardown::{self, Liveness, Scope};
use e2e_infra::plan::{Consumer, Host, Launcher, RunId, RunKey};
use e2e_infra::stack::{self, StackOptions};
use e2e_infra::{labels, Catalog, Delivery, Plan};

mod common;

/// A project with one busybox component and a private state root.
struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new() -> Self {
        Self { dir: common::project() }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn state(&self) -> PathBuf {
        self.path().join("state")
    }

    fn catalog(&self) -> Catalog {
        Catalog::load(&self.path().join("e2e-infra.toml")).expect("catalog")
    }

    fn cli(&self, args: &[&str]) -> Output {
        self.cli_with(args, &self.state(), &[])
    }

    fn cli_with(&self, args: &[&str], state: &Path, env: &[(&str, &str)]) -> Output {
        let output = self.command(args, state, env).output().expect("run e2e-infra");
        eprintln!("$ e2e-infra {}\n{}{}", args.join(" "), text(&output.stdout), text(&output.stderr));
        output
    }

    fn command(&self, args: &[&str], state: &Path, env: &[(&str, &str)]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_e2e-infra"));
        command
            .args(args)
            .current_dir(self.path())
            .env("E2E_INFRA_STATE_DIR", state)
            .env_remove("E2E_INFRA_RUN_ID")
            .envs(env.iter().copied());
        command
    }

    /// Brings `consumer`'s stack up for run `run_id` as if launched by `launcher`.
    fn up(&self, consumer: &str, run_id: &str, launcher: Option<Launcher>) -> Plan {
        let run = RunId::explicit(run_id, launcher).expect("run id");
        let plan = Plan::new(&self.catalog(), consumer, &["web"], run, &Delivery::Local).expect("plan");
        runtime().block_on(stack::up(&plan, &StackOptions::default())).expect("up");
        plan
    }
}

/// Takes the consumers' stacks down however the test ends, so that a
/// failing test leaves nothing on the shared engine.
struct Cleanup<'a> {
    project: &'a Project,
    consumers: Vec<String>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for consumer in &self.consumers {
            let _ =
                self.project.command(&["down", "--consumer", consumer, "--force"], &self.project.state(), &[]).output();
        }
    }
}

fn cleanup<'a>(project: &'a Project, consumers: &[&str]) -> Cleanup<'a> {
    Cleanup { project, consumers: consumers.iter().map(|c| (*c).to_owned()).collect() }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

fn docker() -> Docker {
    Docker::connect_with_local_defaults().expect("docker client")
}

fn consumer(area: &str) -> String {
    format!("own-{area}-{}", std::process::id())
}

/// Containers (all states) labelled with `consumer`.
fn containers_of(consumer: &str) -> Vec<String> {
    let filters = HashMap::from([("label".to_owned(), vec![format!("{}={consumer}", labels::CONSUMER)])]);
    runtime()
        .block_on(docker().list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        })))
        .expect("list")
        .into_iter()
        .filter_map(|c| c.names.and_then(|n| n.into_iter().next()))
        .collect()
}

fn volumes_of(consumer: &str) -> Vec<String> {
    let filters = HashMap::from([("label".to_owned(), vec![format!("{}={consumer}", labels::CONSUMER)])]);
    runtime()
        .block_on(docker().list_volumes(Some(ListVolumesOptions { filters: Some(filters) })))
        .expect("list volumes")
        .volumes
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.name)
        .collect()
}

/// A launcher of this host and PID namespace that has exited.
fn finished_launcher() -> Launcher {
    let mut child = Command::new("sleep").arg("60").spawn().expect("spawn");
    let launcher = Launcher::of(child.id()).expect("seen while it runs");
    child.kill().expect("kill");
    child.wait().expect("wait");
    assert_eq!(launcher.verdict(), e2e_infra::plan::Verdict::Dead);
    launcher
}

/// `e2e-infra down --consumer C` succeeds and leaves no container of C.
fn down_to_nothing(project: &Project, consumer: &str) {
    assert!(project.cli(&["down", "--consumer", consumer]).status.success());
    assert!(containers_of(consumer).is_empty());
}

fn status_line(project: &Project, consumer: &str) -> Option<String> {
    text(&project.cli(&["status"]).stdout).lines().find(|l| l.starts_with(consumer)).map(str::to_owned)
}

/// Labels of e2e-infra that hold no valid run id and consumer (written by
/// hand, or by anything but a run) name no stack: listed as unrecognised,
/// never a stack: `clean`, `down` and a setup remove only stacks.
#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[test]
fn labels_that_name_no_stack_are_listed_as_unrecognised() {
    let project = Project::new();
    let bad_consumer = format!("Not_A_Consumer_{}", std::process::id());
    let volume = format!("e2e-infra-unrecognised-{}", std::process::id());
    let request = bollard::models::VolumeCreateRequest {
        name: Some(volume.clone()),
        labels: Some(HashMap::from([
            (labels::MANAGED_BY.to_owned(), labels::MANAGED_BY_VALUE.to_owned()),
            (labels::RUN.to_owned(), "../escape".to_owned()),
            (labels::CONSUMER.to_owned(), bad_consumer.clone()),
            (labels::KEPT.to_owned(), "planted".to_owned()),
        ])),
        ..Default::default()
    };
    runtime().block_on(docker().create_volume(request)).expect("planted volume");

    let listing = runtime().block_on(teardown::list(&docker())).expect("listed");
    let found = listing.unrecognised.iter().find(|u| u.names.contains(&volume));
    let stacks_named = listing.stacks.iter().filter(|s| s.key.run().as_str().contains("escape")).count();
    let status = text(&project.cli(&["status"]).stdout);
    runtime()
        .block_on(docker().remove_volume(&volume, None::<bollard::query_parameters::RemoveVolumeOptions>))
        .expect("removing the planted volume");

    let found = found.expect("listed as unrecognised");
    assert_eq!((found.run_id.as_str(), found.consumer.as_str()), ("../escape", bad_consumer.as_str()));
    assert!(found.why.contains("run id is invalid"), "{}", found.why);
    assert_eq!(stacks_named, 0, "an invalid run id made a stack");
    let line = status.lines().find(|l| l.contains(&volume)).expect("status lists it");
    assert!(line.starts_with("unrecognised:") && line.contains("`../escape`"), "{line}");
}

// ---- 1. Liveness across PID namespaces.

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[test]
fn a_run_of_another_pid_namespace_is_foreign_and_survives_setup_and_clean() {
    let project = Project::new();
    let consumer = consumer("pidns");
    let hostless = consumer.replace("pidns", "oldlabel");
    let _cleanup = cleanup(&project, &[&consumer, &hostless]);
    // What a run inside `unshare -p` or a CI container records: pid 1 of a
    // PID namespace that is not this one. Pid 1 here is another process.
    let here = Host::current().expect("boot id and PID namespace");
    let foreign = Launcher { pid: 1, start_ticks: 7, host: Some(Host { pid_ns: here.pid_ns + 1, ..here }) };
    project.up(&consumer, &format!("ns-{consumer}"), Some(foreign));

    let line = status_line(&project, &consumer).expect("listed");
    assert!(line.contains(" foreign "), "{line}");

    // What every setup of the consumer does before its own.
    let started = Instant::now();
    let removed = runtime().block_on(async {
        let docker = docker();
        let runs = teardown::list(&docker).await.expect("list").stacks;
        let consumer = Consumer::new(&consumer).expect("a valid consumer");
        let run = runs.iter().find(|r| *r.key.consumer() == consumer).expect("listed");
        assert_eq!(run.liveness(), Liveness::Foreign);
        teardown::clean_dead(&docker, runs, Some(&consumer), Scope::default()).await.expect("clean")
    });
    assert!(removed.is_empty(), "setup removed a foreign run: {removed:?}");
    let clean = project.cli(&["clean"]);
    assert!(clean.status.success());
    assert!(text(&clean.stdout).contains("left foreign stacks"), "{}", text(&clean.stdout));
    assert_eq!(containers_of(&consumer).len(), 1, "clean removed a foreign run");
    eprintln!("foreign run judged and left in {:?}", started.elapsed());

    // A label written before hosts were recorded cannot be judged either.
    project.up(&hostless, &format!("old-{hostless}"), Some(Launcher { host: None, ..foreign }));
    assert!(project.cli(&["clean"]).status.success());
    assert_eq!(containers_of(&hostless).len(), 1);

    // Scoped: a global `--foreign` would also take the live runs of other tests.
    for owner in [&consumer, &hostless] {
        assert!(project.cli(&["clean", "--foreign", "--consumer", owner]).status.success());
    }
    assert!(containers_of(&consumer).is_empty() && containers_of(&hostless).is_empty());
}

/// The inside of the `unshare` tests: what a setup does (remove the
/// consumer's dead runs, then bring its own stack up) as its own launcher,
/// pid 1 of a new PID namespace; then waits until told to stop.
#[test]
#[ignore = "run by the unshare tests inside `unshare -p`"]
fn inner_run_in_a_new_pid_namespace() {
    let Ok(dir) = std::env::var("OWNERSHIP_PROJECT") else { return };
    let consumer = std::env::var("OWNERSHIP_CONSUMER").expect("consumer");
    let run = std::env::var("OWNERSHIP_RUN").expect("run id");
    let project = Project { dir: tempfile::TempDir::new_in(&dir).expect("scratch") };
    std::fs::create_dir(project.path().join("ctx")).expect("ctx");
    std::fs::copy(Path::new(&dir).join("ctx/busybox"), project.path().join("ctx/busybox")).expect("busybox");
    for file in ["web.Dockerfile", "e2e-infra.toml"] {
        std::fs::copy(Path::new(&dir).join(file), project.path().join(file)).expect("project file");
    }
    let me = Launcher::of(std::process::id()).expect("in /proc");
    runtime().block_on(async {
        let docker = docker();
        let runs = teardown::list(&docker).await.expect("list").stacks;
        let consumer = Consumer::new(&consumer).expect("a valid consumer");
        teardown::clean_dead(&docker, runs, Some(&consumer), Scope::default()).await.expect("clean");
    });
    project.up(&consumer, &run, Some(me));
    println!("UP {}", me.label());
    let stop = Path::new(&dir).join(format!("stop-{run}"));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stop.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A run of `consumer` inside `unshare -p`, up until [`Sandbox::stop`].
struct Sandbox {
    child: std::process::Child,
    stop: PathBuf,
    label: String,
}

impl Sandbox {
    /// Starts it and waits until its stack is up.
    fn start(project: &Project, consumer: &str, run: &str) -> Self {
        let mut child = Command::new("unshare")
            .args(["-p", "-f", "--mount-proc"])
            .arg(std::env::current_exe().expect("test binary"))
            .args(["--exact", "inner_run_in_a_new_pid_namespace", "--ignored", "--nocapture"])
            .env("OWNERSHIP_PROJECT", project.path())
            .env("OWNERSHIP_CONSUMER", consumer)
            .env("OWNERSHIP_RUN", run)
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare: needs util-linux and CAP_SYS_ADMIN");
        let stdout = child.stdout.take().expect("piped");
        let (sender, labels) = std::sync::mpsc::channel();
        // Read to the end: the inner run must not die writing to a closed pipe.
        let run_name = run.to_owned();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("{run_name}: {line}");
                if let Some(label) = line.strip_prefix("UP ") {
                    let _ = sender.send(label.to_owned());
                }
            }
        });
        let label = labels.recv_timeout(Duration::from_secs(120)).expect("the inner run brought its stack up");
        let recorded = Launcher::from_label(&label).expect("label");
        assert_eq!(recorded.pid, 1, "the inner run is pid 1 of its namespace");
        Self { child, stop: project.path().join(format!("stop-{run}")), label }
    }

    fn stop(mut self) {
        std::fs::write(&self.stop, "").expect("stop");
        assert!(self.child.wait().expect("inner run").success());
    }
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[test]
fn a_real_run_under_unshare_survives_clean_outside() {
    let project = Project::new();
    let consumer = consumer("unshare");
    let _cleanup = cleanup(&project, &[&consumer]);
    let inner = Sandbox::start(&project, &consumer, &format!("unshare-{consumer}"));
    let recorded = Launcher::from_label(&inner.label).expect("label");
    assert_ne!(recorded.host.map(|h| h.pid_ns), Host::current().map(|h| h.pid_ns));

    // Outside: pid 1 is init here, so by pid alone the run looked dead.
    let clean = project.cli(&["clean"]);
    assert!(clean.status.success());
    assert_eq!(containers_of(&consumer).len(), 1, "clean outside removed a live run of another PID namespace");
    let line = status_line(&project, &consumer).expect("listed");
    assert!(line.contains(" foreign "), "{line}");

    inner.stop();
    down_to_nothing(&project, &consumer);
}

/// Two CI jobs in containers sharing the host's engine: both are pid 1 of
/// their own PID namespace, and the second one's setup of the same consumer
/// leaves the first one's stack alone.
#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[test]
fn two_sandboxes_sharing_one_engine_keep_each_others_stacks() {
    let project = Project::new();
    let consumer = consumer("sandboxes");
    let _cleanup = cleanup(&project, &[&consumer]);
    let first = Sandbox::start(&project, &consumer, &format!("first-{consumer}"));
    let second = Sandbox::start(&project, &consumer, &format!("second-{consumer}"));
    assert_eq!(containers_of(&consumer).len(), 2, "the second sandbox's setup removed the first one's stack");
    let (a, b) = (Launcher::from_label(&first.label), Launcher::from_label(&second.label));
    assert_eq!(a.map(|l| l.pid), b.map(|l| l.pid), "both are pid 1 of their namespace");
    first.stop();
    second.stop();
    down_to_nothing(&project, &consumer);
}

// ---- 2. Label values and the environment never become paths.

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[test]
fn label_values_that_look_like_paths_are_never_removed_as_directories() {
    let project = Project::new();
    let consumer = consumer("paths");
    let _cleanup = cleanup(&project, &[&consumer]);
    let plan = project.up(&consumer, &format!("ok-{consumer}"), Some(finished_launcher()));
    let image = plan.image("web").expect("planned").to_string();
    // Directories a `remove_dir_all(state_root/run/consumer)` would reach.
    let victim = project.path().join("victim");
    std::fs::create_dir_all(victim.join("c")).expect("victim");
    std::fs::write(victim.join("c/precious"), "keep me").expect("precious");
    let evil = [("../victim", "c"), ("..", "victim")];
    runtime().block_on(async {
        let docker = docker();
        for (i, (run, owner)) in evil.iter().enumerate() {
            let body = ContainerCreateBody {
                image: Some(image.clone()),
                cmd: Some(vec!["/bin/busybox".to_owned(), "true".to_owned()]),
                labels: Some(HashMap::from([
                    (labels::MANAGED_BY.to_owned(), labels::MANAGED_BY_VALUE.to_owned()),
                    (labels::RUN.to_owned(), (*run).to_owned()),
                    (labels::CONSUMER.to_owned(), (*owner).to_owned()),
                    (labels::LAUNCHER.to_owned(), finished_launcher().label()),
                    ("io.e2e-infra.test".to_owned(), consumer.clone()),
                ])),
                ..Default::default()
            };
            let name = format!("{consumer}-evil-{i}");
            docker
                .create_container(Some(CreateContainerOptionsBuilder::new().name(&name).build()), body)
                .await
                .expect("create");
        }
    });
    let started = Instant::now();
    let clean = project.cli(&["clean"]);
    eprintln!("clean with path-like labels took {:?}", started.elapsed());
    assert!(clean.status.success());
    assert_eq!(std::fs::read_to_string(victim.join("c/precious")).expect("still there"), "keep me");
    // The valid stack went; the two with path-like labels make no stack key,
    // so no command removes them: `status` lists them as unrecognised.
    assert!(containers_of(&consumer).is_empty());
    let status = text(&project.cli(&["status"]).stdout);
    for i in 0..evil.len() {
        let name = format!("{consumer}-evil-{i}");
        assert!(status.lines().any(|l| l.starts_with("unrecognised:") && l.contains(&name)), "{name} in:\n{status}");
    }
    let filters = HashMap::from([("label".to_owned(), vec![format!("io.e2e-infra.test={consumer}")])]);
    runtime().block_on(async {
        let docker = docker();
        let left = docker
            .list_containers(Some(ListContainersOptions { all: true, filters: Some(filters), ..Default::default() }))
            .await
            .expect("list");
        assert_eq!(left.len(), evil.len(), "{left:?}");
        for container in left {
            let id = container.id.expect("id");
            let force = RemoveContainerOptionsBuilder::new().force(true).build();
            docker.remove_container(&id, Some(force)).await.expect("remove");
        }
    });
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[test]
fn a_run_id_of_dot_dot_is_refused() {
    let project = Project::new();
    let consumer = consumer("dotdot");
    for bad in ["..", ".", "../x"] {
        let started = Instant::now();
        let up = project.cli_with(
            &["up", "--consumer", &consumer, "--needs", "web"],
            &project.state(),
            &[("E2E_INFRA_RUN_ID", bad)],
        );
        eprintln!("E2E_INFRA_RUN_ID={bad} refused after {:?}", started.elapsed());
        assert!(!up.status.success());
        let stderr = text(&up.stderr);
        assert!(
            stderr.contains(&format!("E2E_INFRA_RUN_ID=`{bad}` is invalid"))
                && stderr.contains("not starting with '.'"),
            "{stderr}"
        );
    }
    assert!(containers_of(&consumer).is_empty());
    assert_eq!(std::fs::read_dir(project.state()).expect("state").count(), 0, "nothing written in the state root");
}

// ---- 3. `up`: unique run ids, one stack per run id, removal by id.

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[test]
fn four_simultaneous_ups_of_one_consumer_get_four_stacks() {
    let project = Project::new();
    let consumer = consumer("four");
    let _cleanup = cleanup(&project, &[&consumer]);
    // Build once first, so that the four race on ids, not on a build.
    assert!(project.cli(&["up", "--consumer", &consumer, "--needs", "web"]).status.success());
    assert!(project.cli(&["down", "--consumer", &consumer]).status.success());
    let children: Vec<_> = (0..4)
        .map(|_| {
            project
                .command(&["up", "--consumer", &consumer, "--needs", "web"], &project.state(), &[])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("up")
        })
        .collect();
    let outputs: Vec<Output> = children.into_iter().map(|c| c.wait_with_output().expect("wait")).collect();
    let mut runs = Vec::new();
    for output in &outputs {
        eprintln!("{}{}", text(&output.stdout), text(&output.stderr));
        assert!(output.status.success(), "an up failed");
        let run = text(&output.stdout)
            .split("--run ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .expect("run id printed")
            .to_owned();
        runs.push(run);
    }
    runs.sort();
    runs.dedup();
    assert_eq!(runs.len(), 4, "run ids collided: {runs:?}");
    assert_eq!(containers_of(&consumer).len(), 4);
    let down = project.cli(&["down", "--consumer", &consumer]);
    assert!(down.status.success());
    assert!(containers_of(&consumer).is_empty());
}

fn endpoint(output: &Output) -> String {
    text(&output.stdout).lines().find_map(|l| l.trim().strip_prefix("web:8080 -> ")).expect("endpoint line").to_owned()
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[test]
fn a_second_up_with_the_same_run_id_refuses_and_leaves_the_first() {
    let project = Project::new();
    let consumer = consumer("sameid");
    let _cleanup = cleanup(&project, &[&consumer]);
    let run = format!("fixed-{consumer}");
    let env = [("E2E_INFRA_RUN_ID", run.as_str())];
    let args = ["up", "--consumer", consumer.as_str(), "--needs", "web"];
    let first = project.cli_with(&args, &project.state(), &env);
    assert!(first.status.success());
    let address = endpoint(&first);
    let started = Instant::now();
    let second = project.cli_with(&args, &project.state(), &env);
    eprintln!("second up with one run id refused after {:?}", started.elapsed());
    assert!(!second.status.success());
    assert!(text(&second.stderr).contains("is already up; nothing was created"), "{}", text(&second.stderr));
    std::net::TcpStream::connect(&address).expect("the first stack still answers");

    // Two at once with another run id: the engine's unique container names
    // decide; the loser removes only what it created.
    let raced = format!("raced-{consumer}");
    let env = [("E2E_INFRA_RUN_ID", raced.as_str())];
    let children: Vec<_> = (0..2)
        .map(|_| {
            project
                .command(&args, &project.state(), &env)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("up")
        })
        .collect();
    let outputs: Vec<Output> = children.into_iter().map(|c| c.wait_with_output().expect("wait")).collect();
    for output in &outputs {
        eprintln!("{}{}", text(&output.stdout), text(&output.stderr));
    }
    let winners: Vec<&Output> = outputs.iter().filter(|o| o.status.success()).collect();
    assert_eq!(winners.len(), 1, "exactly one up of a run id may win");
    std::net::TcpStream::connect(endpoint(winners[0])).expect("the winner's stack answers after the loser cleaned up");
    std::net::TcpStream::connect(&address).expect("the first stack still answers");

    let down = project.cli(&["down", "--consumer", &consumer]);
    assert!(down.status.success());
    assert!(containers_of(&consumer).is_empty());
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[test]
fn two_networks_of_one_name_do_not_make_down_fail() {
    let project = Project::new();
    let consumer = consumer("twonets");
    let _cleanup = cleanup(&project, &[&consumer]);
    let run = format!("dup-{consumer}");
    let name = e2e_infra::Namespace::of(&run, &consumer).to_string();
    let networks = runtime().block_on(async {
        let docker = docker();
        let mut created = 0;
        for _ in 0..2 {
            let request = NetworkCreateRequest {
                name: name.clone(),
                driver: Some("bridge".to_owned()),
                labels: Some(HashMap::from([
                    (labels::MANAGED_BY.to_owned(), labels::MANAGED_BY_VALUE.to_owned()),
                    (labels::RUN.to_owned(), run.clone()),
                    (labels::CONSUMER.to_owned(), consumer.clone()),
                    (labels::LAUNCHER.to_owned(), String::new()),
                ])),
                ..Default::default()
            };
            match docker.create_network(request).await {
                Ok(_) => created += 1,
                // Docker 25 and later refuse a second network of one name:
                // there the case cannot arise, and down removes the one.
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, .. }) if created == 1 => {
                    eprintln!("this engine refuses a second network of one name")
                }
                Err(error) => panic!("creating network {name}: {error}"),
            }
        }
        created
    });
    let started = Instant::now();
    let down = project.cli(&["down", "--consumer", &consumer]);
    eprintln!("down of {networks} same-named network(s) took {:?}", started.elapsed());
    assert!(down.status.success());
    let removed = format!("0 container(s), {networks} network(s)");
    assert!(text(&down.stdout).contains(&removed), "{}", text(&down.stdout));
}

// ---- 5. Kept stacks are known to the engine, not only to one folder.

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[test]
fn a_kept_stack_survives_clean_from_a_shell_with_another_state_root() {
    let project = Project::new();
    let consumer = consumer("kept");
    let _cleanup = cleanup(&project, &[&consumer]);
    let run = format!("kept-{consumer}");
    // As a real run does: marked kept while its launcher lives, which then ends.
    let mut child = Command::new("sleep").arg("60").spawn().expect("spawn");
    let launcher = Launcher::of(child.id()).expect("seen while it runs");
    project.up(&consumer, &run, Some(launcher));
    runtime().block_on(async {
        teardown::mark_kept(
            &docker(),
            &RunKey::parse(&run, &consumer).expect("a valid key"),
            Some(launcher),
            None,
            "failed: some_test",
        )
        .await
        .expect("marked")
    });
    child.kill().expect("kill");
    child.wait().expect("wait");
    // Another shell: another TMPDIR, another state root, nothing recorded.
    let elsewhere = project.path().join("elsewhere");
    let clean = project.cli_with(&["clean"], &elsewhere, &[]);
    assert!(clean.status.success());
    assert_eq!(containers_of(&consumer).len(), 1, "clean from another shell removed a kept stack");
    let status = text(&project.cli_with(&["status"], &elsewhere, &[]).stdout);
    assert!(status.lines().any(|l| l.starts_with(&consumer) && l.contains(" kept ")), "{status}");

    let clean = project.cli_with(&["clean", "--kept", "--consumer", &consumer], &elsewhere, &[]);
    assert!(clean.status.success());
    assert!(containers_of(&consumer).is_empty());
    assert!(volumes_of(&consumer).is_empty(), "the kept marker goes with the stack");
}

// ---- 6. Stale state and a stack that cannot be recorded.

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn suite(project: &Project, consumer: &str) -> &'static Suite {
    Box::leak(Box::new(Suite::new(SuiteSpec {
        consumer: leak(consumer.to_owned()),
        needs: &["web"],
        backend: Declared::default(),
        ready_timeout_secs: None,
        catalog: leak(project.path().join("e2e-infra.toml").display().to_string()),
    })))
}

/// The state directory of `run` and `consumer`, made as the runtime would.
fn run_dir(project: &Project, run: &str, consumer: &str) -> PathBuf {
    let dir = project.state().join(run).join(consumer);
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).expect("run dir");
    dir
}

// One process per test (nextest): the environment is this test's own.
#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[test]
fn an_error_left_by_an_earlier_use_of_the_run_id_does_not_fail_a_retry() {
    let project = Project::new();
    let consumer = consumer("retry");
    let _cleanup = cleanup(&project, &[&consumer]);
    let run = format!("retry-{consumer}");
    let dir = run_dir(&project, &run, &consumer);
    std::fs::write(dir.join("launcher"), finished_launcher().label()).expect("earlier launcher");
    std::fs::write(dir.join("error.txt"), "building `web` failed: the earlier attempt's error").expect("stale error");
    std::env::set_var("E2E_INFRA_STATE_DIR", project.state());
    std::env::set_var("E2E_INFRA_RUN_ID", &run);

    let outcome = catch_unwind(AssertUnwindSafe(|| suite(&project, &consumer).infra().endpoint("web", 8080).is_some()));
    // The suite ran in this test process: its launcher (the test runner) still runs.
    let torn_down = project.cli(&["down", "--consumer", &consumer, "--force"]);
    assert!(matches!(outcome, Ok(true)), "the retry failed with the earlier error");
    assert!(torn_down.status.success());
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[test]
fn a_stack_that_cannot_be_recorded_is_removed_and_the_error_says_why() {
    let project = Project::new();
    let consumer = consumer("unrecorded");
    let _cleanup = cleanup(&project, &[&consumer]);
    let run = format!("full-{consumer}");
    let dir = run_dir(&project, &run, &consumer);
    // Recording writes `.stack.json.<pid>` first; a directory in its place
    // makes that write fail as a full disk would.
    std::fs::create_dir(dir.join(format!(".stack.json.{}", std::process::id()))).expect("blocker");
    std::env::set_var("E2E_INFRA_STATE_DIR", project.state());
    std::env::set_var("E2E_INFRA_RUN_ID", &run);

    let started = Instant::now();
    let payload = catch_unwind(AssertUnwindSafe(|| {
        suite(&project, &consumer).infra();
    }))
    .expect_err("setup must fail");
    eprintln!("unrecordable stack reported after {:?}", started.elapsed());
    let message = payload.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("came up but recording it in")
            && message.contains("it was removed (1 container(s), 1 network(s)"),
        "{message}"
    );
    assert!(containers_of(&consumer).is_empty(), "the unrecorded stack leaked");
}

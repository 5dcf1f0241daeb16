//! `e2e-infra up`, `status`, `down` and `clean` against the real engine.

use std::path::Path;
use std::process::{Command, Output};

use e2e_infra::cli_support::teardown;
use e2e_infra::plan::{Launcher, RunId};
use e2e_infra::stack::{self, StackOptions};
use e2e_infra::{Catalog, Delivery, Plan};

mod common;

use common::project;

fn cli(dir: &Path, args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_e2e-infra"))
        .args(args)
        .current_dir(dir)
        .env("E2E_INFRA_STATE_DIR", dir.join("state"))
        .env_remove("E2E_INFRA_RUN_ID")
        .output()
        .expect("run e2e-infra");
    eprintln!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn consumer(area: &str) -> String {
    format!("cli-{area}-{}", std::process::id())
}

// One test: `clean` acts on the whole engine, so the parts must not race.
#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[test]
fn up_status_down_and_clean() {
    up_prints_endpoints_status_lists_it_and_down_removes_it();
    clean_removes_stacks_of_finished_runs_but_not_kept_ones();
}

fn up_prints_endpoints_status_lists_it_and_down_removes_it() {
    let dir = project();
    let consumer = consumer("up");
    let up = cli(dir.path(), &["up", "--consumer", &consumer, "--needs", "web"]);
    assert!(up.status.success());
    // Standard error is a pipe here, as in CI: the progress log is plain.
    let progress = String::from_utf8_lossy(&up.stderr);
    assert!(progress.contains("web") && !progress.contains('\x1b'), "{progress:?}");
    let text = stdout(&up);
    assert!(text.contains(&format!("localhost/web:{consumer}-")), "{text}");
    let endpoint = text.lines().find_map(|l| l.trim().strip_prefix("web:8080 -> ")).expect("endpoint line").to_owned();
    std::net::TcpStream::connect(&endpoint).expect("the published port answers");
    assert!(text.contains(&format!("e2e-infra down --consumer {consumer} --run up-")), "{text}");

    let status = stdout(&cli(dir.path(), &["status"]));
    let line = status.lines().find(|l| l.starts_with(&consumer)).expect("listed");
    assert!(line.contains("manual") && line.contains(&format!("{consumer}-")), "{line}");

    // `clean` leaves stacks brought up by hand alone.
    assert!(cli(dir.path(), &["clean"]).status.success());
    assert!(stdout(&cli(dir.path(), &["status"])).contains(&consumer));

    let down = cli(dir.path(), &["down", "--consumer", &consumer]);
    assert!(down.status.success());
    assert!(stdout(&down).contains("1 container(s), 1 network(s)"), "{}", stdout(&down));
    assert!(!stdout(&cli(dir.path(), &["status"])).contains(&consumer));
    let again = cli(dir.path(), &["down", "--consumer", &consumer]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("e2e-infra status"));
}

fn clean_removes_stacks_of_finished_runs_but_not_kept_ones() {
    let dir = project();
    let catalog = Catalog::load(&dir.path().join("e2e-infra.toml")).expect("catalog");
    // A launcher that ends once the stacks are up: the run it stood for is over.
    let mut child = Command::new("sleep").arg("60").spawn().expect("spawn");
    let launcher = Launcher::of(child.id()).expect("launcher seen while it runs");

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dead = consumer("dead");
    let kept = consumer("kept");
    for name in [&dead, &kept] {
        let run = RunId::explicit(&format!("dead-{name}"), Some(launcher)).expect("run id");
        let plan = Plan::new(&catalog, name, &["web"], run, &Delivery::Local).expect("plan");
        runtime.block_on(stack::up(&plan, &StackOptions::default())).expect("up");
        if name == &kept {
            // Kept as a run keeps a stack: on the engine, where the `clean` of
            // another shell (another test's state root) sees it, and in the
            // state folder.
            let docker = bollard::Docker::connect_with_local_defaults().expect("docker client");
            let marking = teardown::mark_kept(&docker, plan.key(), Some(launcher), None, "failed: some_test");
            runtime.block_on(marking).expect("marked kept");
        }
    }
    let kept_dir = dir.path().join("state").join(format!("dead-{kept}")).join(&kept);
    std::fs::create_dir_all(&kept_dir).expect("state dir");
    std::fs::write(kept_dir.join("kept"), "failed: some_test").expect("kept marker");
    child.kill().expect("kill");
    child.wait().expect("wait");
    assert!(!launcher.is_alive());

    let status = stdout(&cli(dir.path(), &["status"]));
    assert!(status.lines().any(|l| l.starts_with(&dead) && l.contains(" dead ")), "{status}");
    assert!(status.lines().any(|l| l.starts_with(&kept) && l.contains(" kept ")), "{status}");

    // The `clean` of a test running beside this one may take the dead stack
    // first: what counts is that it is gone and the kept one is not.
    let clean = stdout(&cli(dir.path(), &["clean"]));
    assert!(!clean.contains(&kept), "{clean}");
    let status = stdout(&cli(dir.path(), &["status"]));
    assert!(!status.contains(&dead) && status.contains(&kept), "{status}");

    let clean_kept = stdout(&cli(dir.path(), &["clean", "--kept", "--consumer", &kept]));
    assert!(clean_kept.contains(&format!("removed {kept} run dead-{kept}")), "{clean_kept}");
    assert!(!stdout(&cli(dir.path(), &["status"])).contains(&kept));
}

/// Runs the command with standard output on `out`.
fn cli_into(dir: &Path, args: &[&str], out: impl Into<std::process::Stdio>) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_e2e-infra"))
        .args(args)
        .current_dir(dir)
        .env("E2E_INFRA_STATE_DIR", dir.join("state"))
        .stdout(out)
        .output()
        .expect("run e2e-infra");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    output
}

/// A pipe whose reading end is already closed, as after `| head -0`.
fn closed_pipe() -> std::io::PipeWriter {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    writer
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[test]
fn a_closed_or_full_standard_output_is_exit_code_1_not_a_panic() {
    let dir = project();
    let plan = ["plan", "--consumer", "out", "--needs", "web"];
    for args in [&["status"][..], &plan] {
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full");
        for output in [cli_into(dir.path(), args, full), cli_into(dir.path(), args, closed_pipe())] {
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
            assert!(stderr.starts_with("error: writing to standard output failed\n  caused by: "), "{stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[test]
fn down_refuses_a_run_that_is_alive_unless_forced() {
    let dir = project();
    let catalog = Catalog::load(&dir.path().join("e2e-infra.toml")).expect("catalog");
    let name = consumer("alive");
    // A launcher that runs for the whole test: the run is going.
    let mut child = Command::new("sleep").arg("600").spawn().expect("spawn");
    let launcher = Launcher::of(child.id()).expect("launcher seen while it runs");
    let run = RunId::explicit(&format!("alive-{name}"), Some(launcher)).expect("run id");
    let plan = Plan::new(&catalog, &name, &["web"], run, &Delivery::Local).expect("plan");
    tokio::runtime::Runtime::new().expect("runtime").block_on(stack::up(&plan, &StackOptions::default())).expect("up");

    let down = cli(dir.path(), &["down", "--consumer", &name]);
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert_eq!(down.status.code(), Some(8), "{stderr}");
    let launched = format!("run alive-{name} (launched by pid {} (sleep))", child.id());
    for part in [launched.as_str(), "nothing was removed", "--force"] {
        assert!(stderr.contains(part), "{part}: {stderr}");
    }
    let status = stdout(&cli(dir.path(), &["status"]));
    assert!(status.lines().any(|l| l.starts_with(&name) && l.contains(" alive ")), "{status}");

    let forced = cli(dir.path(), &["down", "--consumer", &name, "--force"]);
    child.kill().expect("kill");
    child.wait().expect("wait");
    assert!(forced.status.success());
    assert!(stdout(&forced).contains("1 container(s), 1 network(s)"), "{}", stdout(&forced));
    assert!(!stdout(&cli(dir.path(), &["status"])).contains(&name));
}

/// Runs the command with `env` on top of the test's environment.
fn cli_env(dir: &Path, args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_e2e-infra"));
    command.args(args).current_dir(dir).env("E2E_INFRA_STATE_DIR", dir.join("state")).env_remove("E2E_INFRA_RUN_ID");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().expect("run e2e-infra");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    output
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[test]
fn environment_values_that_cannot_work_are_refused_with_what_to_do() {
    use std::os::unix::ffi::OsStrExt as _;
    let dir = project();
    let name = consumer("env");
    let up = ["up", "--consumer", name.as_str(), "--needs", "web"];
    let os = std::ffi::OsStr::new;
    let cases: [(&[&str], &str, &std::ffi::OsStr, &str); 6] = [
        (&["status"], "E2E_INFRA_CONNECT_TIMEOUT", os("0"), "E2E_INFRA_CONNECT_TIMEOUT=`0` is below the minimum of 1s"),
        (&["status"], "E2E_INFRA_CONNECT_TIMEOUT", os("0s"), "is below the minimum of 1s"),
        (&["status"], "E2E_INFRA_CONNECT_TIMEOUT", os("1ms"), "is below the minimum of 1s"),
        (&up, "E2E_INFRA_BUILD_SILENCE", os("0"), "E2E_INFRA_BUILD_SILENCE=`0` is below the minimum of 10s"),
        (
            &["status"],
            "E2E_INFRA_KEEP",
            std::ffi::OsStr::from_bytes(b"1\xff"),
            "E2E_INFRA_KEEP holds a value that is not UTF-8",
        ),
        (
            &up,
            "E2E_INFRA_CONNECT_TIMEOUT",
            std::ffi::OsStr::from_bytes(b"\xff"),
            "E2E_INFRA_CONNECT_TIMEOUT holds a value that is not UTF-8",
        ),
    ];
    for (args, variable, value, says) in cases {
        let output = cli_env(dir.path(), args, &[(variable, value)]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{variable}={value:?} accepted");
        assert!(stderr.contains(says), "{variable}={value:?}: {stderr}");
    }
    // Nothing came up on the way.
    assert!(!stdout(&cli(dir.path(), &["status"])).contains(&name));
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[test]
fn a_signal_during_up_removes_what_it_created() {
    let dir = project();
    // A probe that never passes: `up` waits until it is stopped.
    let catalog = std::fs::read_to_string(dir.path().join("e2e-infra.toml")).expect("catalog");
    let waiting =
        catalog.replace("ready = { tcp = 8080, timeout = \"30s\" }", "ready = { tcp = 9, timeout = \"120s\" }");
    std::fs::write(dir.path().join("e2e-infra.toml"), waiting).expect("catalog");
    for signal in ["INT", "TERM"] {
        let name = consumer(&format!("sig{}", signal.to_lowercase()));
        let (mut up, mut stderr, seen) = up_waiting_until_ready(dir.path(), &name);
        assert!(Command::new("kill")
            .args([&format!("-{signal}"), &up.id().to_string()])
            .status()
            .expect("kill")
            .success());
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut rest).expect("read");
        let status = up.wait().expect("wait");
        assert_eq!(status.code(), Some(5), "SIG{signal}: {seen}{rest}");
        assert!(
            rest.contains(&format!(
                "stopped by SIG{signal}; it removed what it had created (1 container(s), 1 network(s))"
            )),
            "{rest}"
        );
        assert!(!stdout(&cli(dir.path(), &["status"])).contains(&name), "SIG{signal} left the stack");
    }
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[test]
fn an_up_killed_half_way_leaves_a_dead_stack_that_clean_removes() {
    // A finished `up`: its stack lives until `down`, `clean` or not.
    let finished_dir = project();
    let finished = consumer("upfinished");
    assert!(cli(finished_dir.path(), &["up", "--consumer", &finished, "--needs", "web"]).status.success());

    let dir = project();
    // A probe that never passes: `up` waits until it is killed.
    let catalog = std::fs::read_to_string(dir.path().join("e2e-infra.toml")).expect("catalog");
    let waiting =
        catalog.replace("ready = { tcp = 8080, timeout = \"30s\" }", "ready = { tcp = 9, timeout = \"120s\" }");
    std::fs::write(dir.path().join("e2e-infra.toml"), waiting).expect("catalog");
    let killed = consumer("upkilled");
    let (mut up, _stderr, _) = up_waiting_until_ready(dir.path(), &killed);
    let line = |status: &str, name: &str| status.lines().find(|l| l.starts_with(name)).map(str::to_owned);
    let status = stdout(&cli(dir.path(), &["status"]));
    let going = line(&status, &killed).expect("listed while up runs");
    assert!(going.contains(" alive ") && going.contains("containers: "), "{status}");

    up.kill().expect("SIGKILL");
    up.wait().expect("wait");
    let status = stdout(&cli(dir.path(), &["status"]));
    assert!(line(&status, &killed).is_some_and(|l| l.contains(" dead ")), "{status}");
    assert!(line(&status, &finished).is_some_and(|l| l.contains(" manual ")), "{status}");

    for name in [&killed, &finished] {
        let clean = stdout(&cli(dir.path(), &["clean", "--consumer", name]));
        assert_eq!(clean.contains(&format!("removed {name} run up-")), *name == killed, "{clean}");
    }
    let status = stdout(&cli(dir.path(), &["status"]));
    assert!(line(&status, &killed).is_none() && line(&status, &finished).is_some(), "{status}");
    assert!(cli(dir.path(), &["down", "--consumer", &finished]).status.success());
}

/// Starts `up` of `name` in `project` and returns once its container waits
/// for readiness (the container exists then), with the rest of its
/// standard error and what was read of it.
fn up_waiting_until_ready(
    project: &std::path::Path,
    name: &str,
) -> (std::process::Child, std::io::BufReader<std::process::ChildStderr>, String) {
    let mut up = Command::new(env!("CARGO_BIN_EXE_e2e-infra"))
        .args(["up", "--consumer", name, "--needs", "web"])
        .current_dir(project)
        .env("E2E_INFRA_STATE_DIR", project.join("state"))
        .env_remove("E2E_INFRA_RUN_ID")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("up");
    use std::io::BufRead as _;
    let mut stderr = std::io::BufReader::new(up.stderr.take().expect("piped"));
    let mut seen = String::new();
    while !seen.contains("waiting until ready") {
        assert!(stderr.read_line(&mut seen).expect("read") > 0, "up ended early: {seen}");
    }
    (up, stderr, seen)
}

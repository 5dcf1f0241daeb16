//! Failure reports on the Docker backend: a setup that crashes or never
//! gets ready leaves a folder with every component's logs and state,
//! written before the partly started stack is removed; a dead engine makes
//! a shorter report, not a hung one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::query_parameters::ListContainersOptionsBuilder;
use bollard::Docker;
use e2e_infra::backend::Backend;
use e2e_infra::cli_support::report::{self, Evidence, Recorder};
use e2e_infra::deploy::docker::remove_labelled;
use e2e_infra::record::Placement;
use e2e_infra::stack::{self, StackOptions};
use e2e_infra::{labels, Delivery, Plan};
use e2e_infra_tests::report::ReportFolder;
use e2e_infra_tests::{clean_up_after, engine, plan, remove_built_images, unshared_busybox_dockerfile, Project};

const AREA: &str = "report-docker";

/// A project whose components `db` (healthy), `broken` (runs `broken`,
/// after `db`) and `after` (after `broken`) share one busybox build context.
fn project(broken: &str) -> (Project, Plan) {
    let project = Project::new();
    project.busybox_context("app");
    project.write("app/Dockerfile", unshared_busybox_dockerfile(""));
    let catalog = project.catalog(&format!(
        r#"
[components.db]
build = {{ context = "app" }}
docker = {{ ports = [5432], command = ["sh", "-c", "echo db listening on 5432; exec nc -ll -p 5432 -e echo hi"], ready = {{ tcp = 5432, timeout = "30s" }} }}

[components.broken]
build = {{ context = "app" }}
depends_on = ["db"]
docker = {{ ports = [8080], {broken} }}

[components.after]
build = {{ context = "app" }}
depends_on = ["broken"]
docker = {{ command = ["sleep", "600"] }}
"#
    ));
    let plan = plan(&catalog, "report", &["after"], AREA, &Delivery::Local);
    (project, plan)
}

async fn leftovers(docker: &Docker, plan: &Plan) -> usize {
    let filter = HashMap::from([("label", labels::filter(plan.key()))]);
    let options = ListContainersOptionsBuilder::new().all(true).filters(&filter).build();
    docker.list_containers(Some(options)).await.expect("listing containers").len()
}

/// Stands `plan` up with a recorder writing into `project`; the report.
async fn failed_setup(docker: &Docker, project: &Project, plan: &Plan) -> ReportFolder {
    let dir = project.path().join("reports/setup");
    let recorder = Recorder::new(dir.clone(), plan, &Backend::Docker);
    let result = stack::up_reporting(plan, &StackOptions::default(), Some(&recorder)).await;
    let error = result.expect_err("the stack should fail");
    eprintln!("{}", e2e_infra::error::error_chain(&error));
    assert_eq!(recorder.outcome(), Some(Ok(dir.clone())), "the report was written where asked");
    // Written before `up` removed the partly started stack.
    assert_eq!(leftovers(docker, plan).await, 0, "up removed what it started");
    ReportFolder::at(&dir)
}

/// What every failed-setup report holds, whatever failed.
fn assert_common(report: &ReportFolder) {
    assert_eq!(report.components(), ["after", "broken", "db"], "{:?}", report.files());
    let plan: serde_json::Value = serde_json::from_str(&report.text("plan.json")).expect("plan.json is JSON");
    let planned: Vec<&str> =
        plan["components"].as_array().expect("components").iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(planned, ["db", "broken", "after"]);
    let timings = report.text("timings.txt");
    assert!(["db", "broken", "after"].iter().all(|c| timings.contains(c)), "{timings}");
    for component in ["db", "broken", "after"] {
        assert!(!report.text(&format!("build/{component}.log")).trim().is_empty(), "no build output of {component}");
    }
    assert!(report.logs("db").contains("db listening on 5432"), "{}", report.logs("db"));
    assert!(report.state("db").contains("status: running"), "{}", report.state("db"));
    assert!(report.state("after").contains("not started"), "{}", report.state("after"));
    let summary = report.text("summary.txt");
    assert!(summary.contains("`broken`") && summary.contains("everything was collected"), "{summary}");
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn a_crash_during_setup_leaves_every_components_logs_and_state() {
    let docker = engine(None).await;
    let (project, plan) = project(
        r#"command = ["sh", "-c", "echo broken starts >&2; echo broken last words: no config >&2; exit 3"], ready = { tcp = 8080, timeout = "120s" }"#,
    );
    let body = async {
        let report = failed_setup(&docker, &project, &plan).await;
        assert_common(&report);
        let logs = report.logs("broken");
        assert!(logs.trim_end().ends_with("broken last words: no config"), "the last line is missing:\n{logs}");
        assert!(report.state("broken").contains("exit code: 3"), "{}", report.state("broken"));
        Ok::<_, String>(())
    };
    clean_up_after(body, async {
        remove_labelled(&docker, &labels::filter(plan.key())).await.expect("removing the stack");
        remove_built_images(&docker, &plan).await;
    })
    .await;
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn a_readiness_timeout_leaves_every_components_logs_and_state() {
    let docker = engine(None).await;
    let (project, plan) = project(
        r#"command = ["sh", "-c", "echo broken starts; echo broken waits forever; exec sleep 600"], ready = { tcp = 8080, timeout = "3s" }"#,
    );
    let body = async {
        let report = failed_setup(&docker, &project, &plan).await;
        assert_common(&report);
        let logs = report.logs("broken");
        assert!(logs.trim_end().ends_with("broken waits forever"), "the last line is missing:\n{logs}");
        assert!(report.state("broken").contains("status: running"), "{}", report.state("broken"));
        assert!(report.text("summary.txt").contains("not ready after"), "{}", report.text("summary.txt"));
        Ok::<_, String>(())
    };
    clean_up_after(body, async {
        remove_labelled(&docker, &labels::filter(plan.key())).await.expect("removing the stack");
        remove_built_images(&docker, &plan).await;
    })
    .await;
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn a_report_that_cannot_be_written_leaves_the_failure_as_it_was() {
    let docker = engine(None).await;
    let (project, plan) = project(
        r#"command = ["sh", "-c", "echo broken last words; exit 3"], ready = { tcp = 8080, timeout = "120s" }"#,
    );
    // A folder under a file cannot be made.
    let blocker = project.write("reports", "a file where the folder would go");
    let recorder = Recorder::new(blocker.join("setup"), &plan, &Backend::Docker);
    let body = async {
        let result = stack::up_reporting(&plan, &StackOptions::default(), Some(&recorder)).await;
        let error = e2e_infra::error::error_chain(&result.expect_err("the stack should fail"));
        assert!(error.contains("`broken`") && error.contains("broken last words"), "the original failure: {error}");
        let line = match recorder.outcome() {
            Some(Err(line)) => line,
            other => panic!("expected the report's own error, got {other:?}"),
        };
        assert!(line.starts_with("e2e-infra report: none, creating the report folder"), "{line}");
        assert!(!line.contains('\n'), "one line: {line}");
        Ok::<_, String>(())
    };
    clean_up_after(body, async {
        remove_labelled(&docker, &labels::filter(plan.key())).await.expect("removing the stack");
        remove_built_images(&docker, &plan).await;
    })
    .await;
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn an_engine_that_never_answers_gives_a_short_report_in_bounded_time() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let socket = dir.path().join("silent.sock");
    // Accepts connections and never answers.
    let listener = tokio::net::UnixListener::bind(&socket).expect("binding a socket");
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
        }
    });
    let key = e2e_infra::plan::RunKey::parse("silent-run", "silent").expect("a valid key");
    let evidence = Evidence { components: vec!["db".to_owned()], ..Evidence::of_key(key, "a test failed") };
    let placement =
        Placement::Docker { docker_host: Some(format!("unix://{}", socket.display())), network: "none".to_owned() };
    let started = Instant::now();
    let written = report::write_for(dir.path().join("report"), &evidence, &placement).await;
    let waited = started.elapsed();
    held.abort();
    let path = written.unwrap_or_else(|e| panic!("{e}"));
    assert!(waited < report::CALL_LIMIT + Duration::from_secs(5), "took {waited:?}");
    let report = ReportFolder::at(&path);
    let summary = report.text("summary.txt");
    assert!(summary.contains("not collected") && summary.contains("no answer within"), "{summary}");
    assert!(report.state("db").contains("not fully read"), "{:?}", report.files());
}

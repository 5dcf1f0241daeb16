//! `e2e-infra plan` as a user runs it: a real process, a catalog on disk, the
//! run identity taken from the environment or from the launching process.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_e2e-infra");

const CATALOG: &str = r#"
[components.postgres]
image = "postgres:16"

[components.redis]
image = "redis:7"

[components.migrate]
build = { context = ".", dockerfile = "docker/migrate.Dockerfile" }
depends_on = ["postgres"]

[components.datastorage]
build = { context = ".", dockerfile = "docker/data-storage.Dockerfile" }
depends_on = ["postgres", "redis", "migrate"]

[components.unrelated]
image = "localhost/unrelated:1"
"#;

/// A project directory holding a catalog and its Dockerfiles.
struct Project {
    dir: TempDir,
}

impl Project {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::create_dir_all(dir.path().join("docker")).expect("mkdir");
        for name in ["migrate", "data-storage"] {
            std::fs::write(dir.path().join(format!("docker/{name}.Dockerfile")), "FROM scratch\n").expect("write");
        }
        std::fs::write(dir.path().join("e2e-infra.toml"), CATALOG).expect("write catalog");
        Self { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn catalog(&self) -> PathBuf {
        self.root().join("e2e-infra.toml")
    }

    /// `e2e-infra plan` in the project root with no identity or catalog
    /// variables inherited: nextest sets `NEXTEST_RUN_ID` for this very test.
    fn plan(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .current_dir(self.root())
            .env_remove("NEXTEST_RUN_ID")
            .env_remove("E2E_INFRA_RUN_ID")
            .env_remove("E2E_INFRA_CONFIG")
            .arg("plan")
            .args(["--consumer", "notification", "--needs", "datastorage", "--format", "json"])
            .args(args);
        command
    }

    /// `e2e-infra plan --consumer <consumer> --needs <needs>` in the
    /// project root, the catalog found there.
    fn plan_for(&self, consumer: &str, needs: &str) -> Command {
        let mut command = Command::new(BIN);
        command.current_dir(self.root()).env_remove("E2E_INFRA_CONFIG").args([
            "plan",
            "--consumer",
            consumer,
            "--needs",
            needs,
        ]);
        command
    }
}

fn json(output: &Output) -> Value {
    assert!(output.status.success(), "exit {:?}; stderr:\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!("stdout is not one JSON document ({e}):\n{}", String::from_utf8_lossy(&output.stdout))
    })
}

fn run(command: &mut Command) -> Value {
    json(&command.output().expect("run e2e-infra"))
}

fn tag(plan: &Value) -> &str {
    plan["tag"].as_str().expect("tag is a string")
}

#[test]
fn json_plan_lists_components_in_dependency_order() {
    let project = Project::new();
    let plan = run(project.plan(&[]).env("E2E_INFRA_RUN_ID", "cli-json-1"));
    assert_eq!(plan["run_id"], "cli-json-1");
    assert_eq!(plan["consumer"], "notification");
    let tag = tag(&plan);
    let hex = tag.strip_prefix("notification-").expect("tag starts with the consumer");
    assert!(hex.len() == 8 && hex.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)), "{tag}");
    assert_eq!(plan["namespace"], tag);

    let components = plan["components"].as_array().expect("components array");
    let expected = [
        ("postgres", "docker.io/library/postgres:16".to_owned(), "borrowed", "IfNotPresent", vec![]),
        ("migrate", format!("localhost/migrate:{tag}"), "built", "Never", vec!["postgres"]),
        ("redis", "docker.io/library/redis:7".to_owned(), "borrowed", "IfNotPresent", vec![]),
        ("datastorage", format!("localhost/datastorage:{tag}"), "built", "Never", vec!["postgres", "redis", "migrate"]),
    ];
    assert_eq!(components.len(), expected.len(), "{plan:#}");
    for (component, (name, image, origin, pull_policy, depends_on)) in components.iter().zip(expected) {
        assert_eq!(component["name"], name);
        assert_eq!(component["image"], image.as_str());
        assert_eq!(component["origin"], origin);
        assert_eq!(component["pull_policy"], pull_policy);
        assert_eq!(component["depends_on"], serde_json::json!(depends_on));
    }
}

#[test]
fn registry_delivery_rewrites_built_images() {
    let project = Project::new();
    let plan = run(project.plan(&["--registry", "127.0.0.1:5000"]).env("E2E_INFRA_RUN_ID", "cli-registry"));
    let datastorage = &plan["components"][3];
    assert_eq!(datastorage["image"], format!("127.0.0.1:5000/datastorage:{}", tag(&plan)));
    assert_eq!(datastorage["pull_policy"], "IfNotPresent");
    assert_eq!(plan["components"][0]["image"], "docker.io/library/postgres:16");
}

#[test]
fn text_format_shows_the_tag_and_every_image() {
    let project = Project::new();
    let output = Command::new(BIN)
        .current_dir(project.root())
        .env_remove("NEXTEST_RUN_ID")
        .env_remove("E2E_INFRA_CONFIG")
        .env("E2E_INFRA_RUN_ID", "cli-text")
        .args(["plan", "--consumer", "notification", "--needs", "migrate"])
        .output()
        .expect("run");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).expect("utf-8");
    let tag = text.lines().find_map(|l| l.strip_prefix("tag")).map(str::trim).expect("tag line");
    assert!(text.contains(&format!("localhost/migrate:{tag}")), "{text}");
    assert!(text.contains("docker.io/library/postgres:16"), "{text}");
    assert!(!text.contains("datastorage"), "{text}");
}

#[test]
fn processes_of_one_nextest_run_share_the_tag() {
    let project = Project::new();
    let id = "3f1c2a9e-0000-4000-8000-cli-same";
    let a = run(project.plan(&[]).env("NEXTEST_RUN_ID", id));
    let b = run(project.plan(&[]).env("NEXTEST_RUN_ID", id));
    assert_eq!(tag(&a), tag(&b));
    assert_eq!(a["run_id"], format!("nextest-{id}"));
    assert_eq!(a["components"][3]["image"], b["components"][3]["image"]);
}

#[test]
fn different_nextest_runs_get_different_tags() {
    let project = Project::new();
    let a = run(project.plan(&[]).env("NEXTEST_RUN_ID", "run-one"));
    let b = run(project.plan(&[]).env("NEXTEST_RUN_ID", "run-two"));
    assert_ne!(tag(&a), tag(&b));
    assert_ne!(a["namespace"], b["namespace"]);
}

#[test]
fn explicit_run_id_overrides_nextest() {
    let project = Project::new();
    let a = run(project.plan(&[]).env("NEXTEST_RUN_ID", "nextest-a").env("E2E_INFRA_RUN_ID", "pinned"));
    let b = run(project.plan(&[]).env("NEXTEST_RUN_ID", "nextest-b").env("E2E_INFRA_RUN_ID", "pinned"));
    assert_eq!(a["run_id"], "pinned");
    assert_eq!(tag(&a), tag(&b));
    let nextest = run(project.plan(&[]).env("NEXTEST_RUN_ID", "nextest-a"));
    assert_ne!(tag(&a), tag(&nextest));
}

#[test]
fn invalid_explicit_run_id_is_reported() {
    let project = Project::new();
    let output = project.plan(&[]).env("E2E_INFRA_RUN_ID", "not valid/").output().expect("run");
    assert_eq!(output.status.code(), Some(3));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("E2E_INFRA_RUN_ID=`not valid/` is invalid"), "{stderr}");
}

/// Runs the plan twice from one shell: the shell is the launcher of both.
/// The trailing `exit` keeps the shell from replacing itself with the last
/// command, which would make this test process the launcher.
fn launched_by_a_shell(project: &Project, times: usize) -> std::process::Child {
    let script = vec!["\"$@\""; times].join("; ") + "; exit $?";
    let mut command = Command::new("sh");
    command
        .current_dir(project.root())
        .env_remove("NEXTEST_RUN_ID")
        .env_remove("E2E_INFRA_RUN_ID")
        .env_remove("E2E_INFRA_CONFIG")
        .args(["-c", &script, "sh", BIN, "plan", "--consumer", "notification", "--needs", "datastorage"])
        .args(["--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command.spawn().expect("spawn sh")
}

fn documents(output: &Output) -> Vec<Value> {
    assert!(output.status.success(), "stderr:\n{}", String::from_utf8_lossy(&output.stderr));
    serde_json::Deserializer::from_slice(&output.stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .expect("JSON documents")
}

#[test]
fn runs_started_together_without_overrides_get_different_tags() {
    let project = Project::new();
    // Both launchers live at the same time, within the same second.
    let first = launched_by_a_shell(&project, 2);
    let second = launched_by_a_shell(&project, 1);
    let first = documents(&first.wait_with_output().expect("wait"));
    let second = documents(&second.wait_with_output().expect("wait"));
    assert_eq!(first.len(), 2);
    assert_eq!(second.len(), 1);
    for plan in first.iter().chain(&second) {
        assert!(plan["run_id"].as_str().is_some_and(|id| id.starts_with("proc-")), "{plan:#}");
    }
    assert_eq!(tag(&first[0]), tag(&first[1]), "one launcher, one run, one tag");
    assert_ne!(tag(&first[0]), tag(&second[0]), "two launchers, two runs");
    assert_ne!(first[0]["components"][3]["image"], second[0]["components"][3]["image"]);
}

#[test]
fn config_flag_and_variable_name_the_catalog() {
    let project = Project::new();
    let elsewhere = tempfile::tempdir().expect("temporary directory");
    let catalog = project.catalog();
    let flag = run(project
        .plan(&["--config", catalog.to_str().expect("utf-8 path")])
        .current_dir(elsewhere.path())
        .env("E2E_INFRA_RUN_ID", "cli-config"));
    assert_eq!(flag["components"][3]["name"], "datastorage");

    let variable = run(project
        .plan(&[])
        .current_dir(elsewhere.path())
        .env("E2E_INFRA_CONFIG", &catalog)
        .env("E2E_INFRA_RUN_ID", "cli-config"));
    assert_eq!(variable, flag);
}

#[test]
fn config_flag_wins_over_the_variable() {
    let project = Project::new();
    let broken = project.root().join("broken.toml");
    std::fs::write(&broken, "[components.x]\n").expect("write");
    let plan = run(project
        .plan(&["--config", project.catalog().to_str().expect("utf-8 path")])
        .env("E2E_INFRA_CONFIG", &broken)
        .env("E2E_INFRA_RUN_ID", "cli-flag-wins"));
    assert_eq!(plan["consumer"], "notification");
}

#[test]
fn catalog_is_found_by_walking_up() {
    let project = Project::new();
    let deep = project.root().join("tests/e2e/notification");
    std::fs::create_dir_all(&deep).expect("mkdir");
    let from_root = run(project.plan(&[]).env("E2E_INFRA_RUN_ID", "cli-walk"));
    let from_deep = run(project.plan(&[]).current_dir(&deep).env("E2E_INFRA_RUN_ID", "cli-walk"));
    assert_eq!(from_deep, from_root);
}

/// Runs a command that must fail for its input (exit code 3, as
/// `docs/cli.md` lists); its standard error.
fn failure(command: &mut Command) -> String {
    let output = command.env("E2E_INFRA_RUN_ID", "cli-broken").output().expect("run");
    assert_eq!(output.status.code(), Some(3), "stdout:\n{}", String::from_utf8_lossy(&output.stdout));
    assert!(output.stdout.is_empty(), "stdout not empty:\n{}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8(output.stderr).expect("utf-8 stderr")
}

#[test]
fn broken_catalog_fails_with_the_message_on_stderr_only() {
    let project = Project::new();
    let text = CATALOG.replace("depends_on = [\"postgres\"]", "depends_on = [\"postgress\"]");
    std::fs::write(project.catalog(), &text).expect("write");
    let line = text.lines().position(|l| l.contains("postgress")).expect("line") + 1;
    let stderr = failure(&mut project.plan(&[]));
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(&format!("{}:{line}:", project.catalog().display())), "{stderr}");
    assert!(stderr.contains("depends on an unknown component `postgress`; did you mean `postgres`?"), "{stderr}");
}

#[test]
fn unknown_need_fails_with_a_suggestion() {
    let project = Project::new();
    let mut command = project.plan_for("notification", "datastorge");
    command.args(["--format", "json"]);
    let stderr = failure(&mut command);
    assert!(stderr.contains("unknown component `datastorge`; did you mean `datastorage`?"), "{stderr}");
}

#[test]
fn missing_catalog_says_where_it_looked() {
    let empty = tempfile::tempdir().expect("temporary directory");
    let project = Project::new();
    let stderr = failure(project.plan(&[]).current_dir(empty.path()));
    assert!(stderr.contains("no e2e-infra.toml found in"), "{stderr}");
    assert!(stderr.contains("E2E_INFRA_CONFIG"), "{stderr}");
}

/// The example's committed catalog, Dockerfiles and manifests, copied next
/// to an empty build context (the real one holds a binary built on demand).
#[test]
fn example_catalog_plans_the_notification_stack() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/notification");
    let copy = tempfile::tempdir().expect("temporary directory");
    std::fs::copy(example.join("e2e-infra.toml"), copy.path().join("e2e-infra.toml")).expect("copy catalog");
    fn copy_tree(from: &Path, to: &Path) {
        std::fs::create_dir(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read example") {
            let entry = entry.expect("entry");
            if entry.file_type().expect("file type").is_dir() {
                copy_tree(&entry.path(), &to.join(entry.file_name()));
            } else {
                std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
            }
        }
    }
    for dir in ["docker", "deploy"] {
        copy_tree(&example.join(dir), &copy.path().join(dir));
    }
    std::fs::create_dir(copy.path().join("images")).expect("mkdir");
    let plan = run(Command::new(BIN)
        .current_dir(copy.path())
        .env_remove("E2E_INFRA_CONFIG")
        .env("E2E_INFRA_RUN_ID", "cli-example")
        .args(["plan", "--consumer", "notification", "--needs", "datastorage", "--format", "json"]));
    let names: Vec<&str> =
        plan["components"].as_array().expect("array").iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["postgres", "migrate", "redis", "datastorage"]);
    for component in plan["components"].as_array().expect("array") {
        assert_eq!(
            component["image"],
            format!("localhost/{}:{}", component["name"].as_str().expect("name"), tag(&plan))
        );
    }
}

/// One rule, one message: the command rejects a consumer with the very
/// words the attribute's compile error uses (its committed snapshot).
#[test]
fn an_invalid_consumer_reads_as_the_attribute_reports_it() {
    let snapshot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/ui/fail/invalid_consumer.stderr");
    let snapshot = std::fs::read_to_string(snapshot).expect("the compile error's snapshot");
    let compile_error = snapshot.lines().next().expect("the error line");
    let stderr = failure(&mut Project::new().plan_for("Notification_E2E", "datastorage"));
    assert_eq!(stderr.lines().next(), Some(compile_error), "{stderr}");
}

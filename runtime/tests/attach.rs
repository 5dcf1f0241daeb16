//! Attaching to a stack another process of the run recorded, without an
//! engine: the state directory alone decides.

use std::os::unix::fs::DirBuilderExt as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use e2e_infra::__private::{Declared, Suite, SuiteSpec};

const CATALOG: &str = r#"
[components.db]
image = "postgres:16"

[components.cache]
image = "redis:7"
"#;

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn suite(catalog: &Path, consumer: &str, needs: &'static [&'static str]) -> &'static Suite {
    Box::leak(Box::new(Suite::new(SuiteSpec {
        consumer: leak(consumer.to_owned()),
        needs,
        backend: Declared::default(),
        ready_timeout_secs: None,
        catalog: leak(catalog.display().to_string()),
    })))
}

fn record(consumer: &str, components: &[&str]) -> String {
    let tag = e2e_infra::Namespace::of("attach-run", consumer);
    serde_json::json!({
        "run_id": "attach-run",
        "consumer": consumer,
        "tag": tag.as_str(),
        "components": components,
        "placement": { "kind": "docker", "docker_host": null, "network": tag.as_str() },
        "endpoints": { "db": { "5432": "127.0.0.1:40001" } },
        "summary": "",
    })
    .to_string()
}

fn panic_message(f: impl FnOnce()) -> String {
    let payload = catch_unwind(AssertUnwindSafe(f)).expect_err("must panic");
    payload.downcast_ref::<String>().cloned().unwrap_or_default()
}

// One test: the run identity and state directory come from the environment.
#[test]
fn processes_attach_to_the_recorded_stack_or_fail_with_its_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = dir.path().join("e2e-infra.toml");
    std::fs::write(&catalog, CATALOG).expect("catalog");
    let state = dir.path().join("state");
    // The state root must be private to its user.
    std::fs::DirBuilder::new().mode(0o700).create(&state).expect("state root");
    std::env::set_var("E2E_INFRA_STATE_DIR", &state);
    std::env::set_var("E2E_INFRA_RUN_ID", "attach-run");
    let write = |consumer: &str, file: &str, text: &str| {
        let run_dir = state.join("attach-run").join(consumer);
        std::fs::create_dir_all(&run_dir).expect("state dir");
        std::fs::write(run_dir.join(file), text).expect("state file");
    };

    // A recorded stack with the planned components: attach, no engine needed.
    write("attacher", "stack.json", &record("attacher", &["db"]));
    let infra = suite(&catalog, "attacher", &["db"]).infra();
    assert_eq!(infra.endpoint("db", 5432).expect("recorded endpoint").port(), 40001);
    assert_eq!(infra.image("db").expect("planned").to_string(), "docker.io/library/postgres:16");
    assert_eq!(infra.network(), Some(infra.namespace().as_str()));
    let why = infra.try_endpoint("db", 9999).expect_err("not published").to_string();
    assert!(why.contains("publishes no port 9999"), "{why}");

    // The same consumer planned with other needs in another test binary.
    write("mixed", "stack.json", &record("mixed", &["db"]));
    let message = panic_message(|| {
        suite(&catalog, "mixed", &["cache", "db"]).infra();
    });
    assert!(message.contains("components [db], but this suite plans [cache, db]"), "{message}");
    assert!(message.contains("different consumer names"), "{message}");

    // Setup failed in the process that tried: every other one fails with that error.
    write("broken", "error.txt", "component `db` exited with code 3; last log lines:\nno config");
    let suite = suite(&catalog, "broken", &["db"]);
    for _ in 0..2 {
        let message = panic_message(|| {
            suite.infra();
        });
        assert!(message.contains("failed in another process of this run"), "{message}");
        assert!(message.contains("no config"), "{message}");
    }
}

//! Bad input on the Docker backend, from deliberately broken catalogs
//! (`tests/fixtures/`): what a failed stand-up tells, and what it never starts.
//! Run `scripts/example.sh` first, then
//! `cargo test -p notification-e2e --features e2e --test broken`.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use bollard::query_parameters::{EventsOptionsBuilder, RemoveImageOptionsBuilder};
use e2e_infra::error::error_chain;
use e2e_infra::plan::RunId;
use e2e_infra::stack::{self, StackOptions};
use e2e_infra::{Catalog, Delivery, Plan};
use futures::StreamExt;

/// Stands the fixture's `needs` up and returns the plan and the error.
async fn fail_up(fixture: &str, needs: &[&str]) -> (Plan, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(fixture);
    let catalog = Catalog::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_nanos();
    let run = RunId::explicit(&format!("broken-{}-{nanos}", std::process::id()), None).expect("run id");
    let plan =
        Plan::new(&catalog, "notification-broken", needs, run, &Delivery::Local).unwrap_or_else(|e| panic!("{e}"));
    let error = stack::up(&plan, &StackOptions::default()).await.expect_err("the stack must not come up");
    (plan, error_chain(&error))
}

/// Removes the references the run's builds tagged (never the images other
/// references share).
async fn untag(docker: &bollard::Docker, plan: &Plan) {
    for component in plan.components() {
        let options = RemoveImageOptionsBuilder::new().noprune(true).build();
        // A build that never ran left nothing to remove.
        let _ = docker.remove_image(&component.image.to_string(), Some(options), None).await;
    }
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn postgres_with_the_wrong_password_names_component_probe_and_its_last_logs() {
    let (plan, error) = fail_up("wrong-password.toml", &["postgres"]).await;
    let docker = e2e_infra::engine::connect().await.expect("engine");
    untag(&docker, &plan).await;

    assert!(error.contains("component `postgres`"), "{error}");
    assert!(error.contains(r#"the command ["psql", "postgresql://datastorage:datastorage@127.0.0.1:5432/audit", "-c", "SELECT 1"] exiting 0"#), "{error}");
    // Postgres's own words, from its log.
    assert!(error.contains(r#"password authentication failed for user "datastorage""#), "{error}");
    // Its first refusal ended the wait (`fails_on`), not the timeout.
    assert!(error.contains("which matches `ready.fails_on`"), "{error}");
    assert!(!error.contains("was not ready after"), "{error}");
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn a_failing_migration_shows_its_logs_and_datastorage_never_starts() {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    let (plan, error) = fail_up("failing-migration.toml", &["datastorage"]).await;
    let docker = e2e_infra::engine::connect().await.expect("engine");
    untag(&docker, &plan).await;

    assert!(error.contains("component `migrate`"), "{error}");
    assert!(error.contains("exited with code 1"), "{error}");
    // The migration tool's log: which file, and PostgreSQL's refusal.
    assert!(error.contains("applying 0001_add_channel.sql"), "{error}");
    assert!(error.contains(r#"relation "audit_event" does not exist"#), "{error}");

    // The engine's own record: migrate's container started, DataStorage's never.
    let until = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() + 1;
    let started = |component: &str| format!("{}-{component}", plan.namespace());
    let filters = std::collections::HashMap::from([("type", vec!["container"]), ("event", vec!["start"])]);
    let options =
        EventsOptionsBuilder::new().since(&since.to_string()).until(&until.to_string()).filters(&filters).build();
    let names: Vec<String> = docker
        .events(Some(options))
        .filter_map(|event| async move { event.ok()?.actor?.attributes?.get("name").cloned() })
        .collect()
        .await;
    assert!(names.contains(&started("migrate")), "no start of the migration in {names:?}");
    assert!(!names.contains(&started("datastorage")), "DataStorage was started: {names:?}");
}

//! Loading images into Kind nodes, against stand-in nodes running a real
//! containerd on the local engine.

use bollard::query_parameters::TagImageOptions;
use e2e_infra::load::containerd::{Action, ContainerdError, LoadImage, Node};
use e2e_infra::load::kind::{self, KindError};
use e2e_infra::{Catalog, Delivery, Plan, RunId};
use e2e_infra_tests::kind_node::{busybox_image, ImageGuard, StandInCluster};
use e2e_infra_tests::{engine, unique};

/// A plan of `components` (each a busybox build) for a unique run.
fn plan(dir: &std::path::Path, components: &[&str], run: &str) -> Plan {
    std::fs::write(dir.join("Dockerfile"), "FROM scratch\n").expect("Dockerfile");
    let catalog: String =
        components.iter().map(|c| format!("[components.{c}]\nbuild = {{ context = \".\" }}\n")).collect();
    let path = dir.join("e2e-infra.toml");
    std::fs::write(&path, catalog).expect("catalog");
    let catalog = Catalog::load(&path).expect("catalog loads");
    let run = RunId::explicit(run, None).expect("run id");
    Plan::new(&catalog, "kindload", components, run, &Delivery::Local).expect("plan")
}

/// Builds every component of `plan` with distinct contents.
async fn build_all(docker: &bollard::Docker, plan: &Plan, guard: &mut ImageGuard) -> Vec<LoadImage> {
    let mut images = Vec::new();
    for component in plan.components() {
        guard.0.push(component.image.to_string());
        let image_id = busybox_image(docker, &component.image, &component.name).await;
        images.push(LoadImage { image: component.image.clone(), image_id });
    }
    images
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn loads_every_image_into_every_node_then_skips_a_reload() {
    let docker = engine(None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let run = unique("kind-load");
    let plan = plan(dir.path(), &["alpha", "beta", "gamma"], &run);
    let mut guard = ImageGuard::default();
    let images = build_all(&docker, &plan, &mut guard).await;
    let cluster = StandInCluster::start(&docker, &unique("e2e-kind-load"), 2).await;
    assert_eq!(cluster.nodes.len(), 3);

    let report = kind::load(&docker, &cluster.name, &images).await.expect("load");
    assert_eq!(report.nodes.len(), 3);
    assert_eq!(report.with_action(Action::Loaded).count(), 9, "{report:#?}");
    for node in &cluster.nodes {
        let listed = kind::node_images(&docker, node).await.expect("node images");
        for wanted in &images {
            assert!(listed.iter().any(|r| wanted.image.matches(r)), "{node} lacks {}: {listed:?}", wanted.image);
        }
    }
    let roles: Vec<&str> = report
        .nodes
        .iter()
        .filter_map(|n| match n {
            Node::Container { role, .. } => Some(role.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(roles, ["control-plane", "worker", "worker"]);

    let again = kind::load(&docker, &cluster.name, &images).await.expect("reload");
    assert_eq!(again.with_action(Action::Skipped).count(), 9, "{again:#?}");
    assert_eq!(again.with_action(Action::Loaded).count(), 0);
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn a_node_holding_the_image_under_another_tag_gets_the_plans_reference() {
    let docker = engine(None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let first = plan(dir.path(), &["alpha"], &unique("kind-load-first"));
    let second = plan(dir.path(), &["alpha"], &unique("kind-load-second"));
    assert_ne!(first.tag(), second.tag());
    let mut guard = ImageGuard::default();
    let first_images = build_all(&docker, &first, &mut guard).await;
    // The very image of the first run, under the second run's reference.
    let second_ref = second.image("alpha").expect("planned").clone();
    guard.0.push(second_ref.to_string());
    let options = TagImageOptions { repo: Some(second_ref.name()), tag: second_ref.tag().map(str::to_owned) };
    docker.tag_image(&first_images[0].image.to_string(), Some(options)).await.expect("tag");
    let second_images = [LoadImage { image: second_ref, image_id: first_images[0].image_id.clone() }];
    let cluster = StandInCluster::start(&docker, &unique("e2e-kind-retag"), 1).await;

    kind::load(&docker, &cluster.name, &first_images).await.expect("first load");
    let report = kind::load(&docker, &cluster.name, &second_images).await.expect("second load");
    // The nodes have that very image from the first run: tagged, not streamed again.
    assert_eq!(report.with_action(Action::Tagged).count(), 2, "{report:#?}");
    assert_eq!(report.with_action(Action::Loaded).count(), 0, "{report:#?}");
    for node in &cluster.nodes {
        let listed = kind::node_images(&docker, node).await.expect("node images");
        assert!(listed.iter().any(|r| second_images[0].image.matches(r)), "{node}: {listed:?}");
        assert!(listed.iter().any(|r| first_images[0].image.matches(r)), "{node}: {listed:?}");
    }
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn an_image_retagged_on_the_engine_is_refused_before_any_node_is_touched() {
    let docker = engine(None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = plan(dir.path(), &["alpha"], &unique("kind-load-changed"));
    let mut guard = ImageGuard::default();
    let mut images = build_all(&docker, &plan, &mut guard).await;
    let cluster = StandInCluster::start(&docker, &unique("e2e-kind-changed"), 0).await;
    let built = std::mem::replace(&mut images[0].image_id, "sha256:not-what-the-engine-has".to_owned());

    let error = kind::load(&docker, &cluster.name, &images).await.expect_err("must refuse");
    match &error {
        KindError::Load(ContainerdError::ImageChanged { image, found, .. }) => {
            assert_eq!(image, &images[0].image);
            assert_eq!(found, &built);
        }
        other => panic!("unexpected error: {other}"),
    }
    let listed = kind::node_images(&docker, &cluster.nodes[0]).await.expect("node images");
    assert!(!listed.iter().any(|r| images[0].image.matches(r)), "{listed:?}");
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn no_cluster_names_the_clusters_present() {
    let docker = engine(None).await;
    let present = StandInCluster::start(&docker, &unique("e2e-kind-present"), 0).await;
    let absent = unique("e2e-kind-absent");

    let error = kind::load(&docker, &absent, &[]).await.expect_err("no such cluster");
    match &error {
        KindError::NoNodes { cluster, present: clusters } => {
            assert_eq!(cluster, &absent);
            assert!(clusters.contains(&present.name), "{clusters:?}");
        }
        other => panic!("unexpected error: {other}"),
    }
    let message = error.to_string();
    assert!(message.contains(&absent) && message.contains(&present.name), "{message}");
}

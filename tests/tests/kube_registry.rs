//! A cluster that pulls: images pushed by registry delivery to a registry
//! on a test host of its own (TLS with a CA made for the run, basic auth),
//! pulled by the real node through its containerd host configuration and
//! the run's image pull secret. `scripts/registry.sh` makes the registry and
//! `scripts/cluster.sh registry` gives the node its CA; `scripts/test.sh`
//! does both.
//!
//! Each test points `DOCKER_CONFIG` at a folder of its own: nextest runs
//! every test in a process of its own, so no other test sees it.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use e2e_infra::backend::{Backend, ImageTarget, KubeTarget};
use e2e_infra::build::{build_all, BuildOptions};
use e2e_infra::deploy::kube::{deploy, KubeError, KubeOptions, PULL_SECRET};
use e2e_infra::error::error_chain;
use e2e_infra::labels::StackLabels;
use e2e_infra::load::credentials::{self, DOCKER_CONFIG_ENV};
use e2e_infra::load::registry::{push_all, LoadError};
use e2e_infra::stack::{self, StackError, StackOptions};
use e2e_infra::{Delivery, Plan};
use e2e_infra_tests::cluster::{Cluster, StackGuard};
use e2e_infra_tests::kind_node::ImageGuard;
use e2e_infra_tests::{busybox_dockerfile, engine, plan, Project};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::ListParams;
use kube::Api;
use serde_json::{json, Value};

/// The registry (`host:port`) with TLS and basic auth whose CA the node trusts.
const REGISTRY_ENV: &str = "E2E_REGISTRY";
/// The user and password it accepts.
const USER_ENV: &str = "E2E_REGISTRY_USER";
const PASSWORD_ENV: &str = "E2E_REGISTRY_PASSWORD";
/// A registry whose certificate no engine or node trusts.
const UNKNOWN_CA_ENV: &str = "E2E_REGISTRY_UNKNOWN_CA";
/// An address routed to the registry's host that nothing answers.
const DEAD_ENV: &str = "E2E_REGISTRY_DEAD";

const READY_WITHIN: Duration = Duration::from_secs(60);

/// `name` of the environment, which `scripts/registry.sh start` prints.
///
/// # Panics
/// When it is not set: a run that asked for these tests without the
/// registry fails instead of passing.
fn setup(name: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| {
        panic!(
            "{name} is not set: this test needs a TLS registry with basic auth that the cluster's node pulls from. \
             scripts/test.sh provides one; by hand: eval \"$(scripts/registry.sh start DIR)\", then \
             scripts/cluster.sh registry NODE_DIR \"$E2E_REGISTRY_HOSTS_DIR\" \"${{E2E_REGISTRY%:*}}\""
        )
    })
}

/// Points `DOCKER_CONFIG` at a new folder whose `config.json` has `auths`
/// for `registry` with `user` and `password`; returns the folder.
fn docker_config(registry: &str, user: &str, password: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let config = json!({ "auths": { registry: { "auth": auth } } });
    std::fs::write(dir.path().join("config.json"), config.to_string()).expect("config.json");
    std::env::set_var(DOCKER_CONFIG_ENV, dir.path());
    dir
}

/// A Deployment `name` of one pod running `image` until it is stopped.
fn deployment(name: &str, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": {
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{ "name": name, "image": image, "command": ["/bin/sh", "-c", "exec sleep 3600"] }],
                },
            },
        },
    })
}

/// A project whose components `app` and `side` are busybox images built
/// here, each deployed by a Deployment of its name.
fn two_images(project: &Project) -> e2e_infra::Catalog {
    project.busybox_context("app");
    project.write("app/Dockerfile", busybox_dockerfile(""));
    project.write("app/Dockerfile.side", busybox_dockerfile("RUN echo side > /side"));
    for name in ["app", "side"] {
        project.write(&format!("deploy/{name}.yaml"), deployment(name, &format!("${{image:{name}}}")).to_string());
    }
    project.catalog(
        "[components.app]\nbuild = { context = \"app\" }\nkubernetes = { manifests = [\"deploy/app.yaml\"] }\n\
         [components.side]\nbuild = { context = \"app\", dockerfile = \"app/Dockerfile.side\" }\n\
         depends_on = [\"app\"]\nkubernetes = { manifests = [\"deploy/side.yaml\"] }\n",
    )
}

fn registry_target(cluster: &Cluster, registry: &str) -> KubeTarget {
    KubeTarget { context: cluster.context.clone(), images: ImageTarget::Registry { host: registry.to_owned() } }
}

async fn up(plan: &Plan, target: &KubeTarget) -> Result<e2e_infra::record::StackRecord, StackError> {
    let options = StackOptions {
        backend: Backend::Kubernetes(target.clone()),
        ready_timeout: Some(READY_WITHIN),
        ..StackOptions::default()
    };
    stack::up(plan, &options).await
}

#[tokio::test]
#[ignore = "needs a cluster whose node pulls from a TLS registry: E2E_REGISTRY etc. from scripts/registry.sh (scripts/test.sh provides it); run with --run-ignored all"]
async fn pushed_images_are_pulled_by_the_node_pinned_to_their_digest() {
    let cluster = Cluster::from_env();
    let registry = setup(REGISTRY_ENV);
    let _config = docker_config(&registry, &setup(USER_ENV), &setup(PASSWORD_ENV));
    let project = Project::new();
    let catalog = two_images(&project);
    let plan = plan(&catalog, "kube-registry", &["side"], "kube-registry", &Delivery::Registry(registry.clone()));
    let target = registry_target(&cluster, &registry);
    let _stack = StackGuard::of(&plan, target.clone());

    let record = up(&plan, &target).await.unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    eprintln!("{}", record.summary);
    let client = cluster.client().await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), plan.namespace().as_str());
    let docker = engine(None).await;
    let node_images = e2e_infra::load::containerd::node_images(&docker, &cluster.node()).await.expect("node images");
    for component in ["app", "side"] {
        let digest = record.digests.get(component).unwrap_or_else(|| panic!("no digest of {component}"));
        let planned = plan.image(component).expect("planned");
        let pinned = format!("{planned}@{digest}");
        assert!(pinned.starts_with(&format!("{registry}/")), "{pinned}");
        let deployment = deployments.get(component).await.expect("the Deployment");
        let spec = deployment.spec.template.spec.expect("a pod spec");
        let container = &spec.containers[0];
        assert_eq!(container.image.as_deref(), Some(pinned.as_str()), "the rendered image");
        assert_eq!(container.image_pull_policy.as_deref(), Some("IfNotPresent"));
        let secrets: Vec<_> = spec.image_pull_secrets.unwrap_or_default().into_iter().map(|s| s.name).collect();
        assert_eq!(secrets, [PULL_SECRET]);
        // The node pulled it: it holds the pushed manifest by digest.
        let by_digest = format!("{}@{digest}", planned.name());
        assert!(node_images.contains(&by_digest), "{by_digest} not among the node's images: {node_images:?}");
    }
    let secrets: Api<Secret> = Api::namespaced(client, plan.namespace().as_str());
    let secret = secrets.get(PULL_SECRET).await.expect("the pull secret");
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/dockerconfigjson"));
    let config = &secret.data.expect("data")[".dockerconfigjson"].0;
    let config: Value = serde_json::from_slice(config).expect("json");
    assert_eq!(config["auths"][&registry]["username"], setup(USER_ENV).as_str());
}

#[tokio::test]
#[ignore = "needs a cluster whose node pulls from a TLS registry: E2E_REGISTRY etc. from scripts/registry.sh (scripts/test.sh provides it); run with --run-ignored all"]
async fn an_image_missing_from_the_registry_is_err_image_pull_with_the_registry_s_answer() {
    let cluster = Cluster::from_env();
    let registry = setup(REGISTRY_ENV);
    let _config = docker_config(&registry, &setup(USER_ENV), &setup(PASSWORD_ENV));
    // A component built elsewhere and never pushed (or deleted since): the
    // node is the first to ask the registry for it.
    let project = Project::new();
    let catalog = two_images(&project);
    let plan =
        plan(&catalog, "kube-registry-missing", &["app"], "kube-registry", &Delivery::Registry(registry.clone()));
    let missing = plan.image("app").expect("planned").to_string();
    let _stack = StackGuard::of(&plan, registry_target(&cluster, &registry));
    let credential = credentials::lookup(&registry).unwrap_or_else(|e| panic!("{e}")).expect("the test's credential");
    let mut options = KubeOptions::with_timeout(READY_WITHIN);
    options.pull_secret = Some(credential.docker_config_json());

    let result = deploy(cluster.client().await, &plan, &StackLabels::of(&plan), &options).await;
    let failed_at = SystemTime::now();
    let failure = match result {
        Err(KubeError::PodFailed(failure)) => *failure,
        Err(other) => panic!("expected a pod failure, got: {}", error_chain(&other)),
        Ok(_) => panic!("the stack came up but had to fail"),
    };
    eprintln!("{failure}");
    assert!(["ErrImagePull", "ImagePullBackOff"].contains(&failure.reason.as_str()), "{failure}");
    assert_eq!(failure.image, missing, "{failure}");
    // The registry's answer, through containerd: the manifest is unknown.
    assert!(failure.to_string().contains(&format!("{missing}: not found")), "{failure}");

    let events: Api<Event> = Api::namespaced(cluster.client().await, plan.namespace().as_str());
    let selector = format!("involvedObject.name={},reason=Failed", failure.pod);
    let listed = events.list(&ListParams::default().fields(&selector)).await.expect("listing the pod's events");
    let event = listed.items.iter().find(|e| e.message.as_deref().is_some_and(|m| m.contains("not found")));
    let event = event.expect("the kubelet's event");
    let seen = event.first_timestamp.as_ref().map(|t| t.0).or(event.event_time.as_ref().map(|t| t.0));
    let seen = seen.expect("the event's time").as_millisecond() as f64 / 1000.0;
    let after = failed_at.duration_since(UNIX_EPOCH).expect("after 1970").as_secs_f64() - seen;
    eprintln!("ErrImagePull reported {after:.2} s after the event's second");
    // 2 s, plus 1 s for the event's time being rounded down to the second.
    assert!((0.0..3.0).contains(&after), "reported {after:.1} s after the event's second");
}

/// Builds `app` for `registry` with `password` in the test's
/// `DOCKER_CONFIG`, then looks the credential up and pushes, as a stack's
/// load stage does. Asserts that this fails within 5 s with an error that
/// names the registry, the `auths` entry tried and `fix`; returns the error
/// and its report.
async fn refused_push(registry: &str, password: &str, fix: &str) -> (LoadError, String) {
    let config = docker_config(registry, &setup(USER_ENV), password);
    let docker = engine(None).await;
    let project = Project::new();
    let catalog = project.busybox_catalog("app", "");
    let plan = plan(&catalog, "kube-registry-bad", &["app"], "kube-registry", &Delivery::Registry(registry.to_owned()));
    let _images = ImageGuard(vec![plan.image("app").expect("planned").to_string()]);
    build_all(&docker, &plan, &BuildOptions::default()).await.unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let result = match credentials::lookup(registry) {
        Ok(credential) => push_all(&docker, &plan, credential.as_ref()).await.map(drop),
        Err(error) => Err(error.into()),
    };
    let elapsed = started.elapsed();
    let error = result.expect_err("the push had to fail");
    let text = error_chain(&error);
    eprintln!("after {elapsed:.2?}: {text}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert!(text.contains(&format!("registry {registry}")), "no registry in: {text}");
    let source = format!("`auths` of {}", config.path().join("config.json").display());
    assert!(text.contains(&source), "no credential source ({source}) in: {text}");
    assert!(text.contains(fix), "no `{fix}` in: {text}");
    (error, text)
}

#[tokio::test]
#[ignore = "needs a cluster whose node pulls from a TLS registry: E2E_REGISTRY etc. from scripts/registry.sh (scripts/test.sh provides it); run with --run-ignored all"]
async fn a_registry_with_an_unknown_ca_is_named_within_5_s() {
    let registry = setup(UNKNOWN_CA_ENV);
    let fix = format!("/etc/docker/certs.d/{registry}/ca.crt");
    let (error, text) = refused_push(&registry, &setup(PASSWORD_ENV), &fix).await;
    assert!(matches!(error, LoadError::Push { .. }) && text.contains("does not trust the registry's certificate"));
}

#[tokio::test]
#[ignore = "needs a cluster whose node pulls from a TLS registry: E2E_REGISTRY etc. from scripts/registry.sh (scripts/test.sh provides it); run with --run-ignored all"]
async fn wrong_credentials_are_named_with_their_source_within_5_s() {
    let registry = setup(REGISTRY_ENV);
    let (error, text) = refused_push(&registry, "not-the-password", &format!("docker login {registry}")).await;
    assert!(matches!(error, LoadError::Push { .. }) && text.contains("refused the credential"));
}

#[tokio::test]
#[ignore = "needs a cluster whose node pulls from a TLS registry: E2E_REGISTRY etc. from scripts/registry.sh (scripts/test.sh provides it); run with --run-ignored all"]
async fn a_dead_registry_address_is_named_within_5_s() {
    let (error, _) = refused_push(&setup(DEAD_ENV), &setup(PASSWORD_ENV), "E2E_INFRA_REGISTRY").await;
    assert!(matches!(error, LoadError::Unreachable { .. }), "{error}");
}

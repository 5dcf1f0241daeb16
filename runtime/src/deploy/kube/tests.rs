//! The Kubernetes stage against kube's mock service: every request is
//! recorded and answered the way an API server answers, watch events
//! included (newline-delimited JSON).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::json;

use super::mock::{
    added, client_and_server, deployment, job, modified, statefulset, waiting_pod, Log, Script, Seen,
};
use super::*;
use crate::{Catalog, Delivery, RunId};

const API_MANIFEST: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
spec:
  replicas: 1
  selector: { matchLabels: { app: api } }
  template:
    metadata: { labels: { app: api } }
    spec:
      initContainers:
        - name: migrate
          image: ${image:api}
      containers:
        - name: api
          image: ${image:api}
---
apiVersion: v1
kind: Service
metadata: { name: api }
spec: { selector: { app: api }, ports: [{ port: 8080 }] }
---
apiVersion: batch/v1
kind: Job
metadata: { name: api-seed }
spec:
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: seed
          image: ${image:api}
";

const POSTGRES_MANIFEST: &str = "\
apiVersion: apps/v1
kind: StatefulSet
metadata: { name: postgres }
spec:
  serviceName: postgres
  selector: { matchLabels: { app: postgres } }
  template:
    metadata: { labels: { app: postgres } }
    spec:
      containers:
        - name: postgres
          image: ${image:postgres}
";

/// A catalog (borrowed postgres, built api) and the plan of `api` for `run`.
fn fixture(api_manifest: &str, run: &str) -> (tempfile::TempDir, Plan) {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).expect("write fixture");
    write("Dockerfile", "FROM scratch\n");
    write("api.yaml", api_manifest);
    write("postgres.yaml", POSTGRES_MANIFEST);
    write(
        "e2e-infra.toml",
        r#"
[components.postgres]
image = "postgres:16"
kubernetes = { manifests = ["postgres.yaml"] }

[components.api]
build = { context = "." }
depends_on = ["postgres"]
kubernetes = { manifests = ["api.yaml"] }
"#,
    );
    let catalog = Catalog::load(&dir.path().join("e2e-infra.toml")).expect("catalog");
    let run = RunId::explicit(run, None).expect("run id");
    let plan = Plan::new(&catalog, "notification", &["api"], run, &Delivery::Local).expect("plan");
    (dir, plan)
}

/// The watches of a healthy stack: everything ready, the Deployment last.
fn healthy(ns: &str) -> Script {
    Script::default()
        .watch("statefulsets", Duration::ZERO, vec![added(statefulset(ns, "postgres", 1))])
        .watch("jobs", Duration::ZERO, vec![added(job(ns, "api-seed", 1))])
        .watch("deployments", Duration::ZERO, vec![added(deployment(ns, "api", 0))])
        .watch("deployments", Duration::from_millis(200), vec![modified(deployment(ns, "api", 1))])
}

fn patches(seen: &Mutex<Log>) -> Vec<Seen> {
    seen.lock().expect("log").requests.iter().filter(|s| s.method == Method::PATCH).cloned().collect()
}

#[tokio::test]
async fn applies_in_dependency_order_with_planned_images_then_waits_until_ready() {
    let (_dir, plan) = fixture(API_MANIFEST, "kube-happy");
    let ns = plan.namespace().as_str().to_owned();
    let (client, seen) = client_and_server(healthy(&ns));

    let stack = deploy(client, &plan, &KubeOptions::with_timeout(Duration::from_secs(60))).await.expect("deploy");

    assert_eq!(&stack.namespace, plan.namespace());
    let applied: Vec<String> = stack.objects.iter().map(|o| format!("{}/{}", o.kind, o.name)).collect();
    assert_eq!(applied, ["StatefulSet/postgres", "Deployment/api", "Service/api", "Job/api-seed"]);
    let patches = patches(&seen);
    let paths: Vec<&str> = patches.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            format!("/api/v1/namespaces/{ns}"),
            format!("/apis/apps/v1/namespaces/{ns}/statefulsets/postgres"),
            format!("/apis/apps/v1/namespaces/{ns}/deployments/api"),
            format!("/api/v1/namespaces/{ns}/services/api"),
            format!("/apis/batch/v1/namespaces/{ns}/jobs/api-seed"),
        ]
    );
    for patch in &patches {
        assert!(
            patch.query.contains("fieldManager=e2e-infra") && patch.query.contains("force=true"),
            "{}",
            patch.query
        );
    }
    let api = plan.image("api").expect("api planned").to_string();
    let deployment = &patches[2].body;
    assert_eq!(deployment["metadata"]["namespace"], json!(ns));
    let pod = &deployment["spec"]["template"]["spec"];
    for container in [&pod["initContainers"][0], &pod["containers"][0]] {
        assert_eq!(container["image"], json!(api));
        assert_eq!(container["imagePullPolicy"], json!("Never"));
    }
    let postgres = &patches[1].body["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(postgres["image"], json!("docker.io/library/postgres:16"));
    assert_eq!(postgres["imagePullPolicy"], json!("IfNotPresent"));
    assert_eq!(deployment["metadata"]["labels"][labels::COMPONENT], json!("api"));
}

#[tokio::test]
async fn image_pull_back_off_ends_the_wait_at_once_naming_the_image() {
    let (_dir, plan) = fixture(API_MANIFEST, "kube-pull");
    let ns = plan.namespace().as_str().to_owned();
    let api = plan.image("api").expect("api planned").to_string();
    let message = format!("Back-off pulling image \"{api}\"");
    let mut script = healthy(&ns).watch(
        "pods",
        Duration::from_millis(300),
        vec![added(waiting_pod(&ns, &api, "ImagePullBackOff", &message))],
    );
    script.events = vec![json!({
        "metadata": { "name": "api-7d9f-x2x.1", "namespace": ns },
        "involvedObject": { "kind": "Pod", "name": "api-7d9f-x2x" },
        "type": "Warning", "reason": "Failed",
        "message": format!("Failed to pull image \"{api}\": not found")
    })];
    // Never ready: only the failing pod can end the wait before the timeout.
    script.watches.remove("deployments");
    let (client, seen) = client_and_server(script);

    let started = Instant::now();
    let error =
        deploy(client, &plan, &KubeOptions::with_timeout(Duration::from_secs(120))).await.expect_err("must fail");

    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    let KubeError::PodFailed(failure) = &error else { panic!("unexpected error: {error}") };
    assert_eq!(failure.reason, "ImagePullBackOff");
    assert_eq!(failure.image, api);
    assert_eq!(failure.pod, "api-7d9f-x2x");
    assert_eq!(failure.container, "api");
    assert!(failure.events.iter().any(|e| e.contains("Failed to pull image")), "{:?}", failure.events);
    let text = error.to_string();
    assert!(text.contains(&api) && text.contains("ImagePullBackOff"), "{text}");
    let asked_events = seen
        .lock()
        .expect("log")
        .requests
        .iter()
        .any(|s| s.path.ends_with("/events") && s.query.contains("involvedObject.name%3Dapi-7d9f-x2x"));
    assert!(asked_events, "the pod's events were not asked for");
}

#[tokio::test]
async fn crash_loop_back_off_carries_the_last_log_lines() {
    let (_dir, plan) = fixture(API_MANIFEST, "kube-crash");
    let ns = plan.namespace().as_str().to_owned();
    let api = plan.image("api").expect("api planned").to_string();
    let mut script = healthy(&ns).watch(
        "pods",
        Duration::ZERO,
        vec![added(waiting_pod(&ns, &api, "CrashLoopBackOff", "back-off 40s restarting failed container"))],
    );
    script.watches.remove("deployments");
    script.logs = "starting api\nconnecting to postgres:5432: connection refused\n".to_owned();
    let (client, seen) = client_and_server(script);

    let error =
        deploy(client, &plan, &KubeOptions::with_timeout(Duration::from_secs(120))).await.expect_err("must fail");

    let KubeError::PodFailed(failure) = &error else { panic!("unexpected error: {error}") };
    assert_eq!(failure.reason, "CrashLoopBackOff");
    assert!(failure.logs.contains("connection refused"), "{}", failure.logs);
    assert!(error.to_string().contains("connection refused"), "{error}");
    let log_request = seen.lock().expect("log").requests.iter().find(|s| s.path.ends_with("/log")).cloned().expect("logs asked");
    assert_eq!(log_request.path, format!("/api/v1/namespaces/{ns}/pods/api-7d9f-x2x/log"));
    assert!(
        log_request.query.contains("previous=true") && log_request.query.contains("tailLines=20"),
        "{}",
        log_request.query
    );
}

#[tokio::test]
async fn a_timeout_names_what_is_still_not_ready() {
    let (_dir, plan) = fixture(API_MANIFEST, "kube-timeout");
    let ns = plan.namespace().as_str().to_owned();
    let mut script = healthy(&ns);
    script.watches.insert("deployments", VecDeque::from([(Duration::ZERO, vec![added(deployment(&ns, "api", 0))])]));
    let (client, _seen) = client_and_server(script);

    let error =
        deploy(client, &plan, &KubeOptions::with_timeout(Duration::from_secs(2))).await.expect_err("must time out");

    let KubeError::NotReady { pending, namespace, .. } = &error else { panic!("unexpected error: {error}") };
    assert_eq!(namespace, &ns);
    assert_eq!(pending, &["Deployment/api (0/1 available)"]);
}

#[tokio::test]
async fn preflight_refuses_a_hard_coded_image_before_any_request() {
    let hard_coded = API_MANIFEST.replacen("${image:api}", "localhost/kubernaut-datastorage:e2e-test-datastorage", 1);
    let (dir, plan) = fixture(&hard_coded, "kube-preflight");
    let (client, seen) = client_and_server(healthy(plan.namespace().as_str()));

    let error = deploy(client, &plan, &KubeOptions::default()).await.expect_err("must refuse");

    let KubeError::Preflight { problems, planned } = &error else { panic!("unexpected error: {error}") };
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].file, dir.path().join("api.yaml"));
    assert_eq!(problems[0].image, "localhost/kubernaut-datastorage:e2e-test-datastorage");
    assert_eq!(problems[0].object, "Deployment/api");
    assert_eq!(problems[0].container, "migrate");
    let api = plan.image("api").expect("api planned").to_string();
    assert!(planned.iter().any(|p| p.starts_with(&api)), "{planned:?}");
    let text = error.to_string();
    assert!(text.contains("api.yaml") && text.contains(&api), "{text}");
    tokio::task::yield_now().await;
    assert!(seen.lock().expect("log").requests.is_empty(), "requests reached the API server");
}

#[test]
fn preflight_refuses_a_stale_tag_and_an_unknown_component() {
    let stale = API_MANIFEST.replacen("${image:api}", "localhost/api:notification-deadbeef", 1).replacen(
        "${image:api}",
        "${image:datastorage}",
        1,
    );
    let (_dir, plan) = fixture(&stale, "kube-stale");
    let Err(KubeError::Preflight { problems, .. }) = render(&plan) else { panic!("must refuse") };
    let images: Vec<&str> = problems.iter().map(|p| p.image.as_str()).collect();
    assert_eq!(images, ["localhost/api:notification-deadbeef", "${image:datastorage}"]);
    assert!(problems[1].reason.contains("`datastorage` is not a component of this plan"), "{}", problems[1].reason);
}

#[test]
fn a_borrowed_image_may_be_written_literally() {
    let literal = POSTGRES_MANIFEST.replace("${image:postgres}", "postgres:16");
    let (dir, plan) = fixture(API_MANIFEST, "kube-literal");
    std::fs::write(dir.path().join("postgres.yaml"), literal).expect("write");
    let rendered = render(&plan).expect("render");
    assert_eq!(rendered.len(), 2);
    assert_eq!(rendered[0].component, "postgres");
}

#[test]
fn cluster_scoped_objects_are_refused() {
    let manifest = format!(
        "{API_MANIFEST}---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{ name: api }}\n"
    );
    let (_dir, plan) = fixture(&manifest, "kube-cluster-scoped");
    let error = render(&plan).expect_err("must refuse");
    assert!(
        matches!(&error, KubeError::InvalidObject { problem, .. } if problem.contains("ClusterRole/api")),
        "{error}"
    );
}

#[tokio::test]
async fn the_namespace_carries_legal_labels_and_the_full_values_as_annotations() {
    let long_run = format!("explicit-{}", "r".repeat(90));
    let config_only = "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: api }\ndata: { mode: test }\n";
    let (_dir, plan) = fixture(config_only, &long_run);
    std::fs::write(_dir.path().join("postgres.yaml"), config_only.replace("name: api", "name: postgres"))
        .expect("write");
    let (client, seen) = client_and_server(Script::default());

    let stack = deploy(client, &plan, &KubeOptions::default()).await.expect("deploy");

    assert_eq!(stack.objects.len(), 2);
    let namespace = patches(&seen).into_iter().next().expect("namespace applied");
    assert_eq!(namespace.path, format!("/api/v1/namespaces/{}", plan.namespace()));
    let metadata = &namespace.body["metadata"];
    let labels = metadata["labels"].as_object().expect("labels");
    for value in labels.values() {
        let value = value.as_str().expect("string");
        assert_eq!(label_value(value), value, "illegal label value {value}");
    }
    assert_eq!(labels[labels::MANAGED_BY], json!("e2e-infra"));
    assert_eq!(labels[labels::CONSUMER], json!("notification"));
    assert_ne!(labels[labels::RUN], json!(long_run));
    assert_eq!(labels[labels::RUN], json!(label_value(&long_run)));
    assert_eq!(metadata["annotations"][labels::RUN], json!(long_run));
}

#[test]
fn label_values_are_kept_when_legal_and_hashed_when_not() {
    assert_eq!(label_value("nextest-3f2a"), "nextest-3f2a");
    assert_eq!(label_value(""), "");
    for illegal in ["1234:5678", &"a".repeat(64), "-leading", "trailing."] {
        let value = label_value(illegal);
        assert!(value.starts_with("h-") && value.len() <= 63, "{value}");
        assert_eq!(label_value(&value), value);
        assert_eq!(label_value(illegal), value, "must be stable");
    }
}

#[tokio::test]
async fn deleting_an_absent_namespace_is_not_an_error() {
    let (_dir, plan) = fixture(API_MANIFEST, "kube-delete");
    let expected_path = format!("/api/v1/namespaces/{}", plan.namespace());
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let (request, send) = handle.next_request().await.expect("a request");
        assert_eq!(request.method(), Method::DELETE);
        assert_eq!(request.uri().path(), expected_path);
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
            "message": "namespace not found"
        });
        let body = Body::from(serde_json::to_vec(&status).expect("json"));
        send.send_response(Response::builder().status(404).body(body).expect("response"));
    });
    delete_namespace(Client::new(service, "default"), plan.namespace()).await.expect("absent is fine");
    server.await.expect("server");
}

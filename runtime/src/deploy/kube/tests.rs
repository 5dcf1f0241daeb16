//! The Kubernetes stage against kube's mock service: every request is
//! recorded and answered the way an API server answers, watch events
//! included (newline-delimited JSON).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::json;

use super::mock::{added, client_and_server, deployment, job, modified, statefulset, waiting_pod, Log, Script, Seen};
use super::render::{user_label, USER_LABEL_PREFIX};
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

    let stack = deploy(client, &plan, &StackLabels::of(&plan), &KubeOptions::with_timeout(Duration::from_secs(60)))
        .await
        .expect("deploy");

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
    script.watches.remove("statefulsets");
    let (client, seen) = client_and_server(script);

    let started = Instant::now();
    let error = deploy(client, &plan, &StackLabels::of(&plan), &KubeOptions::with_timeout(Duration::from_secs(120)))
        .await
        .expect_err("must fail");

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

    let error = deploy(client, &plan, &StackLabels::of(&plan), &KubeOptions::with_timeout(Duration::from_secs(120)))
        .await
        .expect_err("must fail");

    let KubeError::PodFailed(failure) = &error else { panic!("unexpected error: {error}") };
    assert_eq!(failure.reason, "CrashLoopBackOff");
    assert!(failure.logs.contains("connection refused"), "{}", failure.logs);
    assert!(error.to_string().contains("connection refused"), "{error}");
    let log_request =
        seen.lock().expect("log").requests.iter().find(|s| s.path.ends_with("/log")).cloned().expect("logs asked");
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

    let error = deploy(client, &plan, &StackLabels::of(&plan), &KubeOptions::with_timeout(Duration::from_secs(2)))
        .await
        .expect_err("must time out");

    let KubeError::NotReady { pending, namespace, .. } = &error else { panic!("unexpected error: {error}") };
    assert_eq!(namespace, &ns);
    assert_eq!(pending, &["Deployment/api (0/1 available)"]);
}

#[tokio::test]
async fn preflight_refuses_a_hard_coded_image_before_any_request() {
    let hard_coded = API_MANIFEST.replacen("${image:api}", "localhost/kubernaut-datastorage:e2e-test-datastorage", 1);
    let (dir, plan) = fixture(&hard_coded, "kube-preflight");
    let (client, seen) = client_and_server(healthy(plan.namespace().as_str()));

    let error = deploy(client, &plan, &StackLabels::of(&plan), &KubeOptions::default()).await.expect_err("must refuse");

    let KubeError::Preflight { problems, planned } = &error else { panic!("unexpected error: {error}") };
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].file, dir.path().join("api.yaml"));
    assert_eq!(problems[0].image, "localhost/kubernaut-datastorage:e2e-test-datastorage");
    assert_eq!(problems[0].object, "Deployment/api");
    assert_eq!(problems[0].container, "migrate");
    assert_eq!(problems[0].place, "init container");
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
    let Err(KubeError::Preflight { problems, .. }) = render(&plan, &StackLabels::of(&plan)) else {
        panic!("must refuse")
    };
    let images: Vec<&str> = problems.iter().map(|p| p.image.as_str()).collect();
    assert_eq!(images, ["localhost/api:notification-deadbeef", "${image:datastorage}"]);
    assert!(problems[1].reason.contains("`datastorage` is not a component of this plan"), "{}", problems[1].reason);
}

#[test]
fn a_borrowed_image_may_be_written_literally() {
    let literal = POSTGRES_MANIFEST.replace("${image:postgres}", "postgres:16");
    let (dir, plan) = fixture(API_MANIFEST, "kube-literal");
    std::fs::write(dir.path().join("postgres.yaml"), literal).expect("write");
    let rendered = render(&plan, &StackLabels::of(&plan)).expect("render");
    assert_eq!(rendered.len(), 2);
    assert_eq!(rendered[0].component, "postgres");
}

#[test]
fn a_pinned_plan_renders_what_was_pushed_by_digest() {
    let (_dir, mut plan) = fixture(API_MANIFEST, "kube-pinned");
    let digest = format!("sha256:{}", "ab".repeat(32));
    let digests = [("api", digest.as_str()), ("postgres", digest.as_str()), ("unknown", "sha256:00")];
    plan.pin(&digests.iter().map(|(c, d)| ((*c).to_owned(), (*d).to_owned())).collect());
    let pinned = format!("localhost/api:{}@{digest}", plan.tag());
    assert_eq!(plan.image("api").expect("planned").to_string(), pinned);
    // Only what the run builds is pinned; a borrowed image stays as written.
    assert_eq!(plan.image("postgres").expect("planned").to_string(), "docker.io/library/postgres:16");
    let rendered = render(&plan, &StackLabels::of(&plan)).expect("a pinned reference is the planned one");
    let text = serde_json::to_string(&rendered.iter().flat_map(|m| &m.objects).collect::<Vec<_>>()).expect("json");
    assert_eq!(text.matches(&format!("\"{pinned}\"")).count(), 3, "{text}");
}

#[test]
fn every_pod_spec_names_the_pull_secret_once() {
    let ours = json!({ "name": PULL_SECRET });
    let mut deployment = json!({ "kind": "Deployment", "spec": { "template": { "spec": { "containers": [] } } } });
    name_pull_secret(&mut deployment);
    name_pull_secret(&mut deployment);
    assert_eq!(deployment["spec"]["template"]["spec"]["imagePullSecrets"], json!([ours]));
    let mut pod = json!({ "kind": "Pod", "spec": { "imagePullSecrets": [{ "name": "theirs" }] } });
    name_pull_secret(&mut pod);
    assert_eq!(pod["spec"]["imagePullSecrets"], json!([{ "name": "theirs" }, ours]));
    let mut cron = json!({ "kind": "CronJob", "spec": { "jobTemplate": { "spec": { "template": { "spec": {} } } } } });
    name_pull_secret(&mut cron);
    assert_eq!(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["imagePullSecrets"], json!([ours]));
    let service = json!({ "kind": "Service", "spec": { "ports": [] } });
    let mut named = service.clone();
    name_pull_secret(&mut named);
    assert_eq!(named, service, "no pod spec, nothing to name");
}

#[test]
fn a_pull_the_registry_refused_says_what_to_do() {
    let failure = |reason: &str, said: &str| PodFailure {
        namespace: "ns".to_owned(),
        pod: "app-1".to_owned(),
        container: "app".to_owned(),
        image: "r:5000/app:t".to_owned(),
        reason: reason.to_owned(),
        message: String::new(),
        events: vec![format!("Warning Failed: Failed to pull image \"r:5000/app:t\": {said}")],
        logs: String::new(),
        node_images: None,
    };
    let hint = |reason: &str, said: &str| failure(reason, said).pull_hint().unwrap_or_default();
    assert!(hint("ErrImagePull", "x509: certificate signed by unknown authority").contains("config_path"));
    assert!(hint("ImagePullBackOff", "failed with status code [manifests t]: 401 Unauthorized").contains(PULL_SECRET));
    assert!(hint("ErrImagePull", "r:5000/app:t: not found").contains("never pushed"));
    assert_eq!(failure("CrashLoopBackOff", "x509:").pull_hint(), None);
    let shown = failure("ErrImagePull", "r:5000/app:t: not found").to_string();
    assert!(
        shown.contains("cannot start: ErrImagePull for image `r:5000/app:t`\nthe registry does not have"),
        "{shown}"
    );
}

/// The image the preflight must refuse: a tag written by hand for another project.
const FOREIGN: &str = "localhost/kubernaut-datastorage:e2e-test-datastorage";

/// One place a manifest can name an image.
struct Shape<'a> {
    /// The manifest of `api`, with `IMAGE` where the image goes.
    manifest: &'a str,
    /// `Kind/name` of the object.
    object: &'a str,
    /// What the preflight calls the image's holder, and its name.
    place: &'a str,
    name: &'a str,
    /// JSON pointer to the holder within the object.
    at: &'a str,
}

/// The shape's foreign image is refused naming the object and the holder;
/// `${image:api}` in its place is accepted with the plan's pull policy.
fn check_shape(run: &str, shape: &Shape<'_>) {
    let (image_key, policy_key) =
        if shape.place == "image volume" { ("reference", "pullPolicy") } else { ("image", "imagePullPolicy") };

    let (dir, plan) = fixture(&shape.manifest.replace("IMAGE", FOREIGN), run);
    let error = render(&plan, &StackLabels::of(&plan)).expect_err("a foreign image must be refused");
    let KubeError::Preflight { problems, .. } = &error else { panic!("unexpected error: {error}") };
    let refused: Vec<(&str, &str, &str, &str)> =
        problems.iter().map(|p| (p.object.as_str(), p.place, p.container.as_str(), p.image.as_str())).collect();
    assert_eq!(refused, [(shape.object, shape.place, shape.name, FOREIGN)]);
    assert_eq!(problems[0].file, dir.path().join("api.yaml"));
    let line = problems[0].to_string();
    assert!(
        line.contains(&format!("{} {} `{}` uses image `{FOREIGN}`", shape.object, shape.place, shape.name)),
        "{line}"
    );

    let (_dir, plan) = fixture(&shape.manifest.replace("IMAGE", "${image:api}"), run);
    let rendered = render(&plan, &StackLabels::of(&plan)).expect("a planned image must be accepted");
    let api = rendered.iter().find(|m| m.component == "api").expect("api rendered");
    let holder = api.objects[0].pointer(shape.at).unwrap_or_else(|| panic!("nothing at {}", shape.at));
    assert_eq!(holder[image_key], json!(plan.image("api").expect("api planned").to_string()));
    assert_eq!(holder[policy_key], json!("Never"), "{holder}");
}

#[test]
fn preflight_covers_a_pod() {
    check_shape(
        "shape-pod",
        &Shape {
            manifest: "apiVersion: v1\nkind: Pod\nmetadata: { name: api }\nspec: { containers: [{ name: api, image: IMAGE }] }\n",
            object: "Pod/api",
            place: "container",
            name: "api",
            at: "/spec/containers/0",
        },
    );
}

#[test]
fn preflight_covers_a_pod_template() {
    check_shape(
        "shape-podtemplate",
        &Shape {
            manifest: "apiVersion: v1\nkind: PodTemplate\nmetadata: { name: api }\n\
                       template: { spec: { containers: [{ name: api, image: IMAGE }] } }\n",
            object: "PodTemplate/api",
            place: "container",
            name: "api",
            at: "/template/spec/containers/0",
        },
    );
}

/// A workload whose pod spec is at `spec.template.spec`, built-in or not.
fn check_pod_template_workload(api_version: &str, kind: &str) {
    let manifest = format!(
        "apiVersion: {api_version}\nkind: {kind}\nmetadata: {{ name: api }}\n\
         spec: {{ template: {{ spec: {{ containers: [{{ name: api, image: IMAGE }}] }} }} }}\n"
    );
    let object = format!("{kind}/api");
    let shape = Shape {
        manifest: &manifest,
        object: &object,
        place: "container",
        name: "api",
        at: "/spec/template/spec/containers/0",
    };
    check_shape(&format!("shape-{}", kind.to_lowercase()), &shape);
}

#[test]
fn preflight_covers_a_deployment() {
    check_pod_template_workload("apps/v1", "Deployment");
}

#[test]
fn preflight_covers_a_stateful_set() {
    check_pod_template_workload("apps/v1", "StatefulSet");
}

#[test]
fn preflight_covers_a_daemon_set() {
    check_pod_template_workload("apps/v1", "DaemonSet");
}

#[test]
fn preflight_covers_a_replica_set() {
    check_pod_template_workload("apps/v1", "ReplicaSet");
}

#[test]
fn preflight_covers_a_replication_controller() {
    check_pod_template_workload("v1", "ReplicationController");
}

#[test]
fn preflight_covers_a_job() {
    check_pod_template_workload("batch/v1", "Job");
}

#[test]
fn preflight_covers_an_argo_rollout() {
    check_pod_template_workload("argoproj.io/v1alpha1", "Rollout");
}

#[test]
fn preflight_covers_a_knative_service() {
    check_pod_template_workload("serving.knative.dev/v1", "Service");
}

#[test]
fn preflight_covers_a_cron_job() {
    check_shape(
        "shape-cronjob",
        &Shape {
            manifest: "\
apiVersion: batch/v1
kind: CronJob
metadata: { name: api }
spec:
  schedule: '* * * * *'
  jobTemplate: { spec: { template: { spec: { containers: [{ name: api, image: IMAGE }] } } } }
",
            object: "CronJob/api",
            place: "container",
            name: "api",
            at: "/spec/jobTemplate/spec/template/spec/containers/0",
        },
    );
}

#[test]
fn preflight_covers_a_pod_spec_nested_deep_in_a_custom_resource() {
    check_shape(
        "shape-custom",
        &Shape {
            manifest: "\
apiVersion: training.example.com/v1
kind: TrainingJob
metadata: { name: api }
spec:
  replicaSpecs:
    - role: worker
      template: { spec: { containers: [{ name: trainer, image: IMAGE }] } }
",
            object: "TrainingJob/api",
            place: "container",
            name: "trainer",
            at: "/spec/replicaSpecs/0/template/spec/containers/0",
        },
    );
}

#[test]
fn preflight_covers_init_containers() {
    check_shape(
        "shape-init",
        &Shape {
            manifest: "\
apiVersion: apps/v1
kind: Deployment
metadata: { name: api }
spec:
  template:
    spec:
      initContainers: [{ name: migrate, image: IMAGE }]
      containers: [{ name: api, image: '${image:api}' }]
",
            object: "Deployment/api",
            place: "init container",
            name: "migrate",
            at: "/spec/template/spec/initContainers/0",
        },
    );
}

#[test]
fn preflight_covers_ephemeral_containers() {
    check_shape(
        "shape-ephemeral",
        &Shape {
            manifest: "\
apiVersion: v1
kind: Pod
metadata: { name: api }
spec:
  containers: [{ name: api, image: '${image:api}' }]
  ephemeralContainers: [{ name: debug, image: IMAGE }]
",
            object: "Pod/api",
            place: "ephemeral container",
            name: "debug",
            at: "/spec/ephemeralContainers/0",
        },
    );
}

#[test]
fn preflight_covers_image_volumes() {
    check_shape(
        "shape-volume",
        &Shape {
            manifest: "\
apiVersion: v1
kind: Pod
metadata: { name: api }
spec:
  containers: [{ name: api, image: '${image:api}', volumeMounts: [{ name: models, mountPath: /models }] }]
  volumes: [{ name: models, image: { reference: IMAGE } }]
",
            object: "Pod/api",
            place: "image volume",
            name: "models",
            at: "/spec/volumes/0/image",
        },
    );
}

/// An `image` field outside a pod spec: the foreign image is refused
/// naming the holder and the field's path; `${image:api}` there is accepted.
fn check_image_field(run: &str, manifest: &str, object: &str, holder: &str, field: &str) {
    let (_dir, plan) = fixture(&manifest.replace("IMAGE", FOREIGN), run);
    let error = render(&plan, &StackLabels::of(&plan)).expect_err("a foreign image must be refused");
    let KubeError::Preflight { problems, .. } = &error else { panic!("unexpected error: {error}") };
    let refused: Vec<(&str, &str, &str, &str, &str)> = problems
        .iter()
        .map(|p| (p.object.as_str(), p.place, p.container.as_str(), p.image.as_str(), p.field.as_str()))
        .collect();
    assert_eq!(refused, [(object, "image field", holder, FOREIGN, field)]);
    let line = problems[0].to_string();
    assert!(line.contains(&format!("uses image `{FOREIGN}` at `{field}`")), "{line}");

    let (_dir, plan) = fixture(&manifest.replace("IMAGE", "${image:api}"), run);
    let rendered = render(&plan, &StackLabels::of(&plan)).expect("a planned image must be accepted");
    let api = rendered.iter().find(|m| m.component == "api").expect("api rendered");
    let pointer = format!("/{}", field.replace(['.', '['], "/").replace(']', ""));
    assert_eq!(api.objects[0].pointer(&pointer), Some(&json!(plan.image("api").expect("api planned").to_string())));
}

#[test]
fn preflight_covers_argo_workflow_container_and_script_templates() {
    for (template, body) in
        [("container", "{ image: IMAGE, command: [/app] }"), ("script", "{ image: IMAGE, source: 'echo hi' }")]
    {
        let manifest = format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: Workflow\nmetadata: {{ name: api }}\n\
             spec: {{ entrypoint: main, templates: [{{ name: main, {template}: {body} }}] }}\n"
        );
        let field = format!("spec.templates[0].{template}.image");
        check_image_field(&format!("shape-argo-{template}"), &manifest, "Workflow/api", template, &field);
    }
}

#[test]
fn preflight_covers_a_tekton_task_step() {
    check_image_field(
        "shape-tekton-step",
        "\
apiVersion: tekton.dev/v1
kind: Task
metadata: { name: api }
spec:
  steps: [{ name: build, image: IMAGE, script: 'echo hi' }]
",
        "Task/api",
        "build",
        "spec.steps[0].image",
    );
}

#[test]
fn preflight_covers_a_tekton_task_sidecar() {
    check_image_field(
        "shape-tekton-sidecar",
        "\
apiVersion: tekton.dev/v1
kind: Task
metadata: { name: api }
spec:
  steps: [{ name: build, image: '${image:api}' }]
  sidecars: [{ name: db, image: IMAGE }]
",
        "Task/api",
        "db",
        "spec.sidecars[0].image",
    );
}

#[test]
fn preflight_covers_a_custom_pod_spec_with_only_init_containers() {
    check_shape(
        "shape-init-only",
        &Shape {
            manifest: "\
apiVersion: batch.example.com/v1
kind: Migration
metadata: { name: api }
spec:
  podSpec:
    initContainers: [{ name: migrate, image: IMAGE }]
",
            object: "Migration/api",
            place: "init container",
            name: "migrate",
            at: "/spec/podSpec/initContainers/0",
        },
    );
}

#[test]
fn an_image_field_that_is_not_a_reference_is_refused_with_its_path() {
    let manifest = "\
apiVersion: example.com/v1
kind: Cache
metadata: { name: api }
spec:
  server: { name: cache, image: { repository: localhost/cache, tag: v1 } }
";
    let (_dir, plan) = fixture(manifest, "shape-image-map");
    let error = render(&plan, &StackLabels::of(&plan)).expect_err("an image that cannot be checked must be refused");
    let KubeError::Preflight { problems, .. } = &error else { panic!("unexpected error: {error}") };
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!((problems[0].place, problems[0].field.as_str()), ("image field", "spec.server.image"));
    assert!(
        problems[0].reason.contains("`spec.server.image` holds a mapping, not an image reference"),
        "{}",
        problems[0].reason
    );
}

#[test]
fn fields_named_image_in_configuration_and_schemas_are_not_images() {
    let manifest = "\
apiVersion: v1
kind: ConfigMap
metadata: { name: api, labels: { image: plain } }
data: { image: 'localhost/other:v1' }
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: { name: caches.example.com }
spec:
  group: example.com
  names: { kind: Cache, plural: caches }
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema: { openAPIV3Schema: { type: object, properties: { image: { type: string } } } }
";
    let (_dir, plan) = fixture(manifest, "shape-imageless");
    render(&plan, &StackLabels::of(&plan)).expect("no image to check");
}

#[test]
fn preflight_reports_every_refused_image_of_every_object_at_once() {
    let manifest = format!(
        "\
apiVersion: v1
kind: Pod
metadata: {{ name: api }}
spec:
  containers: [{{ name: api, image: '${{image:api}}' }}]
  volumes: [{{ name: models, image: {{ reference: {FOREIGN} }} }}]
---
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {{ name: api }}
spec: {{ template: {{ spec: {{ containers: [{{ name: api, image: {FOREIGN} }}] }} }} }}
"
    );
    let (_dir, plan) = fixture(&manifest, "kube-every-problem");
    let error = render(&plan, &StackLabels::of(&plan)).expect_err("must refuse");
    let KubeError::Preflight { problems, .. } = &error else { panic!("unexpected error: {error}") };
    let refused: Vec<String> = problems.iter().map(|p| format!("{} {} {}", p.object, p.place, p.container)).collect();
    assert_eq!(refused, ["Pod/api image volume models", "Rollout/api container api"]);
    let text = error.to_string();
    assert!(text.contains("preflight refused 2 container image(s)"), "{text}");
    assert!(text.contains("Pod/api image volume `models` uses image"), "{text}");
}

#[test]
fn the_namespace_placeholder_is_the_runs_namespace() {
    let manifest = "\
apiVersion: v1
kind: ConfigMap
metadata: { name: api }
data: { peers: 'postgres.${namespace}.svc' }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: { name: notification-reader-${namespace} }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: notification-reader }
subjects: [{ kind: ServiceAccount, name: api, namespace: '${namespace}' }]
";
    let (_dir, plan) = fixture(manifest, "kube-namespace-placeholder");
    let ns = plan.namespace().as_str();
    let rendered = render(&plan, &StackLabels::of(&plan)).expect("render");
    let objects = &rendered.iter().find(|m| m.component == "api").expect("api rendered").objects;
    assert_eq!(objects[0]["data"]["peers"], json!(format!("postgres.{ns}.svc")));
    assert_eq!(objects[1]["metadata"]["name"], json!(format!("notification-reader-{ns}")));
    assert_eq!(objects[1]["subjects"][0]["namespace"], json!(ns));
}

/// Cluster-scoped objects, built-in and custom (the Widget's definition is in
/// a later component's manifest than the Widget), beside namespaced ones.
const SCOPES_API_MANIFEST: &str = "\
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: { name: notification-reader-${namespace} }
rules: [{ apiGroups: [''], resources: [pods], verbs: [get] }]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: { name: notification-reader-${namespace}, labels: { app: api } }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: notification-reader-${namespace} }
subjects: [{ kind: ServiceAccount, name: api, namespace: '${namespace}' }]
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: { name: widgets.example.com }
spec:
  group: example.com
  scope: Cluster
  names: { kind: Widget, plural: widgets }
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: { name: gadgets.example.com }
spec:
  group: example.com
  scope: Namespaced
  names: { kind: Gadget, plural: gadgets }
---
apiVersion: example.com/v1
kind: Gadget
metadata: { name: api }
---
apiVersion: other.example.com/v1
kind: Widget
metadata: { name: api }
---
apiVersion: v1
kind: ServiceAccount
metadata: { name: api }
";

#[test]
fn cluster_scoped_objects_get_no_namespace_and_only_shared_labels() {
    let (dir, plan) = fixture(SCOPES_API_MANIFEST, "kube-scopes");
    let widget = "apiVersion: example.com/v1\nkind: Widget\nmetadata: { name: shared, namespace: default }\n";
    std::fs::write(dir.path().join("postgres.yaml"), format!("{POSTGRES_MANIFEST}---\n{widget}")).expect("write");
    let ns = plan.namespace().as_str();

    let rendered = render(&plan, &StackLabels::of(&plan)).expect("render");

    let objects: Vec<(&str, &Value)> =
        rendered.iter().flat_map(|m| m.objects.iter().map(move |o| (m.component.as_str(), o))).collect();
    let placed: Vec<String> = objects
        .iter()
        .map(|(_, o)| {
            let namespace = o["metadata"].get("namespace").and_then(Value::as_str).unwrap_or("-");
            format!(
                "{}/{} {namespace}",
                o["kind"].as_str().expect("kind"),
                o["metadata"]["name"].as_str().expect("name")
            )
        })
        .collect();
    assert_eq!(
        placed,
        [
            format!("StatefulSet/postgres {ns}"),
            "Widget/shared -".to_owned(),
            format!("ClusterRole/notification-reader-{ns} -"),
            format!("ClusterRoleBinding/notification-reader-{ns} -"),
            "CustomResourceDefinition/widgets.example.com -".to_owned(),
            "CustomResourceDefinition/gadgets.example.com -".to_owned(),
            format!("Gadget/api {ns}"),
            format!("Widget/api {ns}"),
            format!("ServiceAccount/api {ns}"),
        ]
    );

    let user = user_label(plan.namespace());
    assert_eq!(user, format!("{USER_LABEL_PREFIX}{ns}"));
    for (component, object) in &objects {
        let metadata = &object["metadata"];
        if metadata.get("namespace").is_some() {
            // Namespaced objects carry exactly the run's labels, full values as annotations.
            let expected = render::kube_labels(StackLabels::of(&plan).component(component));
            assert_eq!(metadata["labels"], json!(expected.labels), "{object}");
            assert_eq!(metadata["annotations"], json!(expected.annotations), "{object}");
        } else {
            let mut expected = json!({ labels::MANAGED_BY: "e2e-infra", user.as_str(): component });
            if object["kind"] == "ClusterRoleBinding" {
                expected["app"] = json!("api");
            }
            assert_eq!(metadata["labels"], expected, "{object}");
            assert!(metadata.get("annotations").is_none(), "{object}");
        }
    }
}

#[test]
fn namespace_and_node_objects_are_refused() {
    for (object, expected) in [
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: { name: extra }\n",
            "Namespace/extra cannot be applied: a run has exactly one namespace",
        ),
        (
            "apiVersion: v1\nkind: Node\nmetadata: { name: worker }\n",
            "Node/worker cannot be applied: nodes belong to the cluster",
        ),
    ] {
        let (_dir, plan) = fixture(&format!("{API_MANIFEST}---\n{object}"), "kube-refused-kinds");
        let error = render(&plan, &StackLabels::of(&plan)).expect_err("must refuse");
        assert!(matches!(&error, KubeError::InvalidObject { problem, .. } if problem.contains(expected)), "{error}");
    }
}

#[tokio::test]
async fn the_namespace_carries_legal_labels_and_the_full_values_as_annotations() {
    let long_run = format!("explicit-{}", "r".repeat(90));
    let config_only = "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: api }\ndata: { mode: test }\n";
    let (_dir, plan) = fixture(config_only, &long_run);
    std::fs::write(_dir.path().join("postgres.yaml"), config_only.replace("name: api", "name: postgres"))
        .expect("write");
    let (client, seen) = client_and_server(Script::default());

    let stack = deploy(client, &plan, &StackLabels::of(&plan), &KubeOptions::default()).await.expect("deploy");

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
    let namespace_path = format!("/api/v1/namespaces/{}", plan.namespace());
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        // The namespace first: when it is absent, so are its pods, and
        // nothing more is asked.
        {
            let (request, send) = handle.next_request().await.expect("a request");
            assert_eq!(request.method(), Method::DELETE);
            assert_eq!(request.uri().path(), namespace_path);
            let status = json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                "message": "namespace not found"
            });
            let body = Body::from(serde_json::to_vec(&status).expect("json"));
            send.send_response(Response::builder().status(404).body(body).expect("response"));
        }
    });
    delete_namespace(Client::new(service, "default"), plan.namespace()).await.expect("absent is fine");
    server.await.expect("server");
}

//! The Kubernetes backend on a real cluster: a real kubelet runs the
//! containers, from its own containerd, into which the stack's images are
//! loaded (kube-local's real node under `scripts/test.sh`).
//!
//! One cluster serves every test at once: each stands up its own run in its
//! own namespace, and a [`StackGuard`] removes it however the test ends.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use e2e_infra::backend::{Backend, CONTAINERD_SOCKET_ENV};
use e2e_infra::build::{build_all, BuildOptions};
use e2e_infra::cli_support::report::{self as failure_report, Evidence, Recorder};
use e2e_infra::deploy::kube::{deploy, forward, mark, KubeError, KubeOptions, PodFailure};
use e2e_infra::error::error_chain;
use e2e_infra::labels::StackLabels;
use e2e_infra::load::containerd::{self, Action, ContainerdError, LoadImage};
use e2e_infra::plan::{Host, Launcher, RunId, RUN_ID_ENV};
use e2e_infra::record::StackRecord;
use e2e_infra::stack::{self, explain_pull_failure, StackError, StackOptions};
use e2e_infra::{Catalog, Delivery, Plan};
use e2e_infra_tests::cluster::{cli, Cluster, StackGuard};
use e2e_infra_tests::kind_node::{self, ImageGuard};
use e2e_infra_tests::report::ReportFolder;
use e2e_infra_tests::{busybox_dockerfile, clean_up_after, engine, http_get, plan, unique, Project};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::Api;
use serde_json::{json, Value};

/// The one component of the test projects, and the name of its objects.
const APP: &str = "app";
/// A component that depends on [`APP`].
const DEPENDENT: &str = "dependent";
/// How long a stack may take to be ready, unless the timeout is under test.
const READY_WITHIN: Duration = Duration::from_secs(60);
/// The user a restricted kubeconfig impersonates; it has no rights of its own.
const RESTRICTED: &str = "e2e-restricted";

/// One test's project and run: component [`APP`], a busybox image, deployed
/// by the objects the test gives, on the cluster of the environment. What
/// the run creates is removed when this is dropped.
struct AppRun {
    cluster: Cluster,
    project: Project,
    plan: Plan,
    _stack: StackGuard,
}

impl AppRun {
    fn new(consumer: &str, objects: &[Value]) -> Self {
        Self::with_dependent(consumer, objects, &[])
    }

    /// As [`AppRun::new`], plus, when `dependent` has objects, a component
    /// [`DEPENDENT`] built like [`APP`] that depends on it.
    fn with_dependent(consumer: &str, objects: &[Value], dependent: &[Value]) -> Self {
        let cluster = Cluster::from_env();
        let project = Project::new();
        project.busybox_context(APP);
        project.write(&format!("{APP}/Dockerfile"), busybox_dockerfile(""));
        // JSON is YAML: one document per object.
        let yaml = |objects: &[Value]| objects.iter().map(Value::to_string).collect::<Vec<_>>().join("\n---\n");
        project.write("deploy/app.yaml", yaml(objects));
        let mut catalog = format!(
            "[components.{APP}]\nbuild = {{ context = \"{APP}\" }}\n\
             [components.{APP}.kubernetes]\nmanifests = [\"deploy/app.yaml\"]\n"
        );
        let mut needs = APP;
        if !dependent.is_empty() {
            project.write("deploy/dependent.yaml", yaml(dependent));
            catalog.push_str(&format!(
                "[components.{DEPENDENT}]\nbuild = {{ context = \"{APP}\" }}\ndepends_on = [\"{APP}\"]\n\
                 [components.{DEPENDENT}.kubernetes]\nmanifests = [\"deploy/dependent.yaml\"]\n"
            ));
            needs = DEPENDENT;
        }
        let catalog = project.catalog(&catalog);
        let plan = plan(&catalog, consumer, &[needs], consumer, &Delivery::Local);
        let stack = StackGuard::of(&plan, cluster.target());
        Self { cluster, project, plan, _stack: stack }
    }

    fn namespace(&self) -> &str {
        self.plan.namespace().as_str()
    }

    /// The plan's reference of [`APP`].
    fn image(&self) -> String {
        self.plan.image(APP).expect("planned").to_string()
    }

    /// `stack::up` on the cluster, waiting `timeout` for readiness.
    async fn up(&self, timeout: Duration) -> Result<StackRecord, StackError> {
        self.up_on(self.cluster.backend(), timeout).await
    }

    /// As [`AppRun::up`], writing the failure report into the project's
    /// `reports/setup`: the result, and the report's path if one was written.
    async fn up_reported(
        &self,
        timeout: Duration,
    ) -> (Result<StackRecord, StackError>, Option<Result<PathBuf, String>>) {
        let recorder = Recorder::new(self.project.path().join("reports/setup"), &self.plan, &self.cluster.backend());
        let options =
            StackOptions { backend: self.cluster.backend(), ready_timeout: Some(timeout), ..StackOptions::default() };
        let result = stack::up_reporting(&self.plan, &options, Some(&recorder)).await;
        (result, recorder.outcome())
    }

    async fn up_on(&self, backend: Backend, timeout: Duration) -> Result<StackRecord, StackError> {
        let options = StackOptions { backend, ready_timeout: Some(timeout), ..StackOptions::default() };
        stack::up(&self.plan, &options).await
    }

    /// `e2e-infra up` of [`APP`] on `cluster`, with `env` added, as this
    /// run and consumer: the stack it stands up is this run's.
    async fn cli_up(&self, cluster: &Cluster, env: &[(&str, &OsStr)]) -> (Output, Duration) {
        let catalog = self.project.path().join("e2e-infra.toml");
        let socket = cluster.socket.display().to_string();
        let mut args = vec!["--config", path_str(&catalog), "up", "--consumer", self.plan.consumer().as_str()];
        args.extend(["--needs", APP, "--containerd", &socket]);
        let flags = cluster.context_flags();
        args.extend(flags.iter().map(String::as_str));
        let mut env = env.to_vec();
        env.push((RUN_ID_ENV, OsStr::new(self.plan.run().as_str())));
        cli(self.project.path(), &args, &env).await
    }

    /// The same stack as this run's, stood up by `stack::up` for a run
    /// whose launcher has exited: a stack its teardown never removed.
    async fn dead_launchers_stack(&self) -> (Plan, StackGuard) {
        let mut exited = std::process::Command::new("true").spawn().expect("spawning `true`");
        let pid = exited.id();
        exited.wait().expect("waiting for `true`");
        let dead = Launcher { pid, start_ticks: 0, host: Host::current() };
        let catalog = Catalog::load(&self.project.path().join("e2e-infra.toml")).expect("catalog");
        let owned = RunId::explicit(&unique(self.plan.consumer().as_str()), Some(dead)).expect("run id");
        let plan = Plan::new(&catalog, self.plan.consumer().as_str(), &[APP], owned, &Delivery::Local).expect("plan");
        let guard = StackGuard::of(&plan, self.cluster.target());
        let options = StackOptions {
            backend: self.cluster.backend(),
            ready_timeout: Some(READY_WITHIN),
            ..StackOptions::default()
        };
        stack::up(&plan, &options).await.unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        (plan, guard)
    }

    /// `e2e-infra <command> <extra>` on this run's cluster.
    async fn cli_on_cluster(&self, command: &str, extra: &[&str]) -> Output {
        let flags = self.cluster.context_flags();
        let mut args = vec![command];
        args.extend(extra);
        args.extend(flags.iter().map(String::as_str));
        cli(self.project.path(), &args, &[]).await.0
    }

    /// The line `e2e-infra status` prints for `plan`'s run.
    async fn status_line(&self, plan: &Plan) -> String {
        let listed = stdout(&self.cli_on_cluster("status", &[]).await);
        let line = listed.lines().find(|l| l.contains(plan.run().as_str()));
        line.unwrap_or_else(|| panic!("{} is not listed:\n{listed}", plan.run())).to_owned()
    }

    /// `e2e-infra clean --consumer C <extra>` on this run's cluster; what it printed.
    async fn clean(&self, extra: &[&str]) -> String {
        // Scoped to this test's consumer: other tests' stacks on the shared
        // cluster are not this test's to remove.
        let mut args = vec!["--consumer", self.plan.consumer().as_str()];
        args.extend(extra);
        let cleaned = self.cli_on_cluster("clean", &args).await;
        assert!(cleaned.status.success(), "{}", stderr(&cleaned));
        stdout(&cleaned)
    }

    /// Asserts that nothing of the run reached the cluster: no namespace, no
    /// image reference of its tag on the node.
    async fn assert_nothing_deployed(&self) {
        assert!(!self.cluster.has_namespace(self.namespace()).await, "namespace {} was created", self.namespace());
        let docker = engine(None).await;
        let loaded = self.cluster.node_references(&docker, self.plan.tag().as_str()).await;
        assert!(loaded.is_empty(), "loaded into the node: {loaded:?}");
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// A container of the app image running `script` with busybox's `sh`.
fn container(script: &str) -> Value {
    json!({ "name": APP, "image": format!("${{image:{APP}}}"), "command": ["/bin/sh", "-c", script] })
}

/// A container that runs until it is stopped.
fn sleeper() -> Value {
    container("exec /bin/sleep 3600")
}

/// A Deployment of one pod running `container`.
fn deployment(container: Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": APP },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": APP } },
            "template": {
                "metadata": { "labels": { "app": APP } },
                "spec": { "terminationGracePeriodSeconds": 0, "containers": [container] },
            },
        },
    })
}

/// A Deployment of [`DEPENDENT`] running `script`.
fn dependent_deployment(script: &str) -> Value {
    let mut service = container(script);
    service["name"] = json!(DEPENDENT);
    service["image"] = json!(format!("${{image:{DEPENDENT}}}"));
    let mut dependent = deployment(service);
    dependent["metadata"]["name"] = json!(DEPENDENT);
    dependent["spec"]["selector"]["matchLabels"]["app"] = json!(DEPENDENT);
    dependent["spec"]["template"]["metadata"]["labels"]["app"] = json!(DEPENDENT);
    dependent
}

/// What every report of an [`AppRun`] with a dependent holds: the plan,
/// the timings, both builds, both components, the app's log and the node's
/// copy of the app's image.
fn assert_common_report(report: &ReportFolder, run: &AppRun) {
    assert_eq!(report.components(), [APP, DEPENDENT], "{:?}", report.files());
    assert!(report.text("plan.json").contains(&run.image()), "{}", report.text("plan.json"));
    assert!(report.text("timings.txt").contains(DEPENDENT), "{}", report.text("timings.txt"));
    for component in [APP, DEPENDENT] {
        assert!(!report.text(&format!("build/{component}.log")).trim().is_empty(), "{:?}", report.files());
    }
    assert!(report.logs(APP).lines().any(|l| l == "app is up"), "{}", report.logs(APP));
    let images = report.text("node-images.txt");
    assert!(images.contains(&format!("{}: present", run.image())), "{images}");
}

/// A Job `name` whose one pod runs `container`, never retried.
fn job(name: &str, container: Value) -> Value {
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": { "name": name },
        "spec": {
            "backoffLimit": 0,
            "template": { "spec": { "restartPolicy": "Never", "containers": [container] } },
        },
    })
}

/// The error of an `up` that had to fail.
fn stack_error(result: Result<StackRecord, StackError>) -> StackError {
    match result {
        Ok(record) => panic!("the stack came up but had to fail:\n{}", record.summary),
        Err(error) => {
            eprintln!("{}", error_chain(&error));
            error
        }
    }
}

/// The Kubernetes error of an `up` that had to fail there.
fn kube_error(result: Result<StackRecord, StackError>) -> KubeError {
    match stack_error(result) {
        StackError::Kube(error) => error,
        other => panic!("expected a Kubernetes error, got: {}", error_chain(&other)),
    }
}

/// The containerd error of an `up` that had to fail there.
fn containerd_error(result: Result<StackRecord, StackError>) -> ContainerdError {
    match stack_error(result) {
        StackError::Containerd(error) => error,
        other => panic!("expected a containerd error, got: {}", error_chain(&other)),
    }
}

fn pod_failure(error: KubeError) -> PodFailure {
    match error {
        KubeError::PodFailed(failure) => *failure,
        other => panic!("expected a pod failure, got: {}", error_chain(&other)),
    }
}

/// Asserts that `failure` names the app's pod, container and image.
fn assert_names_the_app(failure: &PodFailure, run: &AppRun) {
    assert_eq!(failure.namespace, run.namespace(), "{failure}");
    assert!(failure.pod.starts_with(&format!("{APP}-")), "{failure}");
    assert_eq!(failure.container, APP, "{failure}");
    assert_eq!(failure.image, run.image(), "{failure}");
}

/// A 403 from the API server.
fn is_forbidden(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 403)
}

/// Waits until the API server's authorizer lets `user` patch `namespace`,
/// asking it through a SubjectAccessReview (there is no event to watch).
async fn await_granted(admin: &kube::Client, user: &str, namespace: &str) -> Result<(), Box<dyn std::error::Error>> {
    let reviews: Api<SubjectAccessReview> = Api::all(admin.clone());
    let review: SubjectAccessReview = serde_json::from_value(json!({
        "spec": {
            "user": user,
            "resourceAttributes": { "verb": "patch", "resource": "namespaces", "name": namespace },
        },
    }))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = reviews.create(&PostParams::default(), &review).await?;
        if answer.status.is_some_and(|status| status.allowed) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("the authorizer still refuses {user} to patch namespace {namespace} after 30 s").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The API server's words for a `patch` that RBAC refuses.
fn refused(user: &str, resource: &str, group: &str, namespace: &str) -> String {
    format!(r#"User "{user}" cannot patch resource "{resource}" in API group "{group}" in the namespace "{namespace}""#)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with its node's containerd on this machine: set KUBECONFIG and E2E_CONTAINERD_SOCKET (scripts/test.sh starts kube-local); run with --run-ignored all"]
async fn the_notification_example_runs_on_the_real_node() {
    let cluster = Cluster::from_env();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/notification");
    assert!(example.join("images/datastorage").is_file(), "run scripts/example.sh first: the example's images need it");
    let catalog = Catalog::load(&example.join("e2e-infra.toml")).unwrap_or_else(|e| panic!("{e}"));
    let plan = plan(&catalog, "kube-example", &["datastorage"], "kube-example", &Delivery::Local);
    let _stack = StackGuard::of(&plan, cluster.target());

    let options =
        StackOptions { backend: cluster.backend(), ready_timeout: Some(READY_WITHIN), ..StackOptions::default() };
    let record = stack::up(&plan, &options).await.unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    for component in plan.components() {
        // component, image, build, load, ready, cache
        let mut rows = record.summary.lines().map(|l| l.split_whitespace().collect::<Vec<_>>());
        let load = rows.find(|r| r[0] == component.name).and_then(|r| r.get(3).copied()).unwrap_or("-");
        assert!(load.ends_with('s'), "no load time for {}:\n{}", component.name, record.summary);
    }
    let target = forward::Target {
        context: cluster.context.clone(),
        namespace: plan.namespace().to_string(),
        service: "datastorage".to_owned(),
        port: 8080,
    };
    let datastorage = forward::start(target).unwrap_or_else(|e| panic!("{e}"));
    let (status, body) = http_get(datastorage, "/readyz").await.expect("GET /readyz through the port-forward");
    assert_eq!(status, 200, "{body}");

    let docker = engine(None).await;
    let removed = stack::down(&docker, &record.key, Some(&cluster.target()))
        .await
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    assert!(removed.contains(&format!("{} image reference(s)", plan.components().len())), "{removed}");
    assert!(!cluster.has_namespace(plan.namespace().as_str()).await, "namespace {} is still there", plan.namespace());
    assert_eq!(cluster.node_references(&docker, plan.tag().as_str()).await, Vec::<String>::new());
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with its node's containerd on this machine: set KUBECONFIG and E2E_CONTAINERD_SOCKET (scripts/test.sh starts kube-local); run with --run-ignored all"]
async fn a_hard_coded_image_is_refused_before_any_request() {
    let hard_coded = "localhost/kubernaut-datastorage:e2e-test-datastorage";
    let run = AppRun::new("kube-preflight", &[deployment(json!({ "name": "datastorage", "image": hard_coded }))]);

    let error = kube_error(run.up(READY_WITHIN).await);
    let KubeError::Preflight { problems, planned } = &error else { panic!("expected the preflight, got: {error}") };
    assert_eq!(problems.len(), 1, "{error}");
    assert_eq!((problems[0].object.as_str(), problems[0].container.as_str()), ("Deployment/app", "datastorage"));
    assert_eq!(problems[0].image, hard_coded);
    assert_eq!(planned, &[format!("{} (${{image:{APP}}})", run.image())]);
    run.assert_nothing_deployed().await;
    // Nothing was built either: a manifest that cannot deploy costs no build.
    let docker = engine(None).await;
    assert!(docker.inspect_image(&run.image()).await.is_err(), "{} was built", run.image());
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with its node's containerd on this machine: set KUBECONFIG and E2E_CONTAINERD_SOCKET (scripts/test.sh starts kube-local); run with --run-ignored all"]
async fn a_planned_image_missing_from_the_node_is_err_image_never_pull() {
    let run = AppRun::new("kube-never-pull", &[deployment(sleeper())]);
    let docker = engine(None).await;
    let built = build_all(&docker, &run.plan, &BuildOptions::default()).await.unwrap_or_else(|e| panic!("{e}"));
    let images: Vec<LoadImage> =
        built.into_iter().map(|b| LoadImage { image: b.image, image_id: b.image_id }).collect();
    containerd::load(&docker, &[run.cluster.node()], &images).await.unwrap_or_else(|e| panic!("{e}"));
    // Gone between the load and the deploy (a cleanup, a node's image GC).
    run.cluster.remove_from_node(&run.image());

    let client = run.cluster.client().await;
    let result =
        deploy(client.clone(), &run.plan, &StackLabels::of(&run.plan), &KubeOptions::with_timeout(READY_WITHIN)).await;
    let failed_at = SystemTime::now();
    let mut error = result.expect_err("the image is not on the node");
    // What `stack::up` adds: what the node holds of the repository instead.
    explain_pull_failure(&docker, &[run.cluster.node()], &mut error).await;
    let failure = pod_failure(error);
    let (node, held) = failure.node_images.clone().expect("what the node holds");
    assert_eq!(node, run.cluster.node().to_string());
    let repository = run.image().rsplit_once(':').map(|(r, _)| r.to_owned()).expect("a tag");
    assert!(!held.contains(&run.image()) && held.iter().all(|r| r.starts_with(&repository)), "{held:?}");
    assert!(failure.to_string().contains(&format!("holds of `{repository}`")), "{failure}");
    eprintln!("{failure}");
    assert_eq!(failure.reason, "ErrImageNeverPull", "{failure}");
    assert_names_the_app(&failure, &run);
    let kubelet_says = "is not present with pull policy of Never";
    assert!(failure.events.iter().any(|e| e.contains(kubelet_says)), "{failure}");

    // The failure is reported as the kubelet reports it, not at a later poll.
    let events: Api<Event> = Api::namespaced(client, run.namespace());
    let selector = format!("involvedObject.name={}", failure.pod);
    let listed = events.list(&ListParams::default().fields(&selector)).await.expect("listing the pod's events");
    let event = listed
        .items
        .iter()
        .find(|e| e.message.as_deref().is_some_and(|m| m.contains(kubelet_says)))
        .expect("the kubelet's event");
    let seen = event.first_timestamp.as_ref().map(|t| t.0).or(event.event_time.as_ref().map(|t| t.0));
    let seen = seen.expect("the event's time").as_millisecond() as f64 / 1000.0;
    let failed_at = failed_at.duration_since(UNIX_EPOCH).expect("after 1970").as_secs_f64();
    let after = failed_at - seen;
    eprintln!("reported {after:.1} s after the event's second");
    // 2 s, plus 1 s for the event's time being rounded down to the second.
    assert!((0.0..3.0).contains(&after), "reported {after:.1} s after the event's second");
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with its node's containerd on this machine: set KUBECONFIG and E2E_CONTAINERD_SOCKET (scripts/test.sh starts kube-local); run with --run-ignored all"]
async fn a_crashing_container_is_crash_loop_back_off_with_its_logs() {
    let last_words = unique("crashing-for-good");
    let mut crashing = container(&format!("echo starting; echo {last_words}; exit 3"));
    // Without a probe a container is ready as soon as it starts, which can be
    // before it exits: the Deployment would count as available.
    crashing["readinessProbe"] = json!({ "exec": { "command": ["/bin/true"] }, "initialDelaySeconds": 5 });
    let run = AppRun::new("kube-crash", &[deployment(crashing)]);

    let failure = pod_failure(kube_error(run.up(READY_WITHIN).await));
    assert_eq!(failure.reason, "CrashLoopBackOff", "{failure}");
    assert_names_the_app(&failure, &run);
    assert_eq!(failure.logs.lines().last(), Some(last_words.as_str()), "{failure}");
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with its node's containerd on this machine: set KUBECONFIG and E2E_CONTAINERD_SOCKET (scripts/test.sh starts kube-local); run with --run-ignored all"]
async fn a_failing_migration_job_reports_and_stops() {
    let last_words = unique("the-schema-is-broken");
    let migration = job("migrate", container(&format!("echo migrating; echo {last_words}; exit 1")));
    let mut service = container("exec /bin/sleep 3600");
    service["name"] = json!(DEPENDENT);
    service["image"] = json!(format!("${{image:{DEPENDENT}}}"));
    let mut dependent = deployment(service);
    dependent["metadata"]["name"] = json!(DEPENDENT);
    let run = AppRun::with_dependent("kube-job", &[migration], &[dependent]);

    // A timeout far beyond what build, load and the failing job take on a
    // busy machine: the failure must come long before it.
    let timeout = Duration::from_secs(300);
    let started = Instant::now();
    let error = kube_error(run.up(timeout).await);
    let KubeError::JobFailed { namespace, job, message, logs } = &error else {
        panic!("expected a failed job, got: {error}")
    };
    assert_eq!((namespace.as_str(), job.as_str()), (run.namespace(), "migrate"));
    assert!(message.contains("BackoffLimitExceeded"), "{message}");
    assert_eq!(logs.lines().last(), Some(last_words.as_str()), "{error}");
    assert!(started.elapsed() < timeout / 2, "the failure waited {:?}", started.elapsed());
    let client = run.cluster.client().await;
    // backoffLimit 0: the one failed pod is all there is.
    let pods: Api<Pod> = Api::namespaced(client.clone(), run.namespace());
    let listed = pods.list(&ListParams::default().labels("job-name=migrate")).await.expect("listing the job's pods");
    assert_eq!(listed.items.len(), 1);
    // What depends on the migration was never applied.
    let deployments: Api<Deployment> = Api::namespaced(client, run.namespace());
    assert!(deployments.get_opt(DEPENDENT).await.expect("get").is_none(), "the dependent was applied");
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with its node's containerd on this machine: set KUBECONFIG and E2E_CONTAINERD_SOCKET (scripts/test.sh starts kube-local); run with --run-ignored all"]
async fn a_readiness_probe_that_never_passes_names_the_timeout() {
    let mut never_ready = sleeper();
    never_ready["readinessProbe"] = json!({ "exec": { "command": ["/bin/false"] }, "periodSeconds": 1 });
    let run = AppRun::new("kube-not-ready", &[deployment(never_ready)]);
    let timeout = Duration::from_secs(15);

    let error = kube_error(run.up(timeout).await);
    let KubeError::NotReady { namespace, timeout: waited, pending, .. } = &error else {
        panic!("expected not ready, got: {error}")
    };
    assert_eq!((namespace.as_str(), *waited), (run.namespace(), timeout));
    assert_eq!(pending, &["Deployment/app (0/1 available)"]);
    let message = error.to_string();
    assert!(message.contains("not ready after 15s") && message.contains("Deployment/app"), "{message}");
    // The probe, and the kubelet's word on why it fails.
    assert!(message.contains("readiness probe exec [\"/bin/false\"]"), "{message}");
    assert!(message.contains("Readiness probe failed"), "{message}");
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with its node's containerd on this machine: set KUBECONFIG and E2E_CONTAINERD_SOCKET (scripts/test.sh starts kube-local); run with --run-ignored all"]
async fn a_missing_kubeconfig_is_named() {
    let run = AppRun::new("kube-no-kubeconfig", &[deployment(sleeper())]);
    let missing = run.project.path().join("no-such-kubeconfig");

    let (output, _) = run.cli_up(&run.cluster, &[("KUBECONFIG", missing.as_os_str())]).await;
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains(&format!("KUBECONFIG={}", missing.display())), "{message}");
    run.assert_nothing_deployed().await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with its node's containerd on this machine: set KUBECONFIG and E2E_CONTAINERD_SOCKET (scripts/test.sh starts kube-local); run with --run-ignored all"]
async fn an_unknown_context_is_named() {
    let run = AppRun::new("kube-no-context", &[deployment(sleeper())]);
    let unknown = unique("no-such-context");
    let elsewhere = Cluster { context: Some(unknown.clone()), ..run.cluster.clone() };

    let error = kube_error(run.up_on(elsewhere.backend(), READY_WITHIN).await);
    assert!(matches!(error, KubeError::Kubeconfig { .. }), "{error}");
    assert!(error.to_string().contains(&format!("context `{unknown}`")), "{error}");
    run.assert_nothing_deployed().await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with its node's containerd on this machine: set KUBECONFIG and E2E_CONTAINERD_SOCKET (scripts/test.sh starts kube-local); run with --run-ignored all"]
async fn a_dead_api_server_fails_within_5_s() {
    let run = AppRun::new("kube-dead-server", &[deployment(sleeper())]);
    // Nothing listens on a port just released.
    let refusing = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    // A listener that accepts connections and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("listener");
    let silent_addr = silent.local_addr().expect("address");
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            held.push(connection);
        }
    });

    let run = &run;
    let attempts = [refusing, silent_addr].map(|server| async move {
        let kubeconfig = run.cluster.kubeconfig_with_server(&format!("https://{server}"));
        let cluster = Cluster { context: Some(kubeconfig.context.clone()), ..run.cluster.clone() };
        let (output, took) = run.cli_up(&cluster, &[("KUBECONFIG", kubeconfig.path.as_os_str())]).await;
        (server, kubeconfig.context, output, took)
    });
    for (server, context, output, took) in futures::future::join_all(attempts).await {
        assert!(!output.status.success());
        let message = stderr(&output);
        let named = message.contains(&format!("context `{context}`")) && message.contains(&server.to_string());
        assert!(named, "{message}");
        assert!(took < Duration::from_secs(6), "{server}: failed after {took:.1?}");
    }
    holder.abort();
    run.assert_nothing_deployed().await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with its node's containerd on this machine: set KUBECONFIG and E2E_CONTAINERD_SOCKET (scripts/test.sh starts kube-local); run with --run-ignored all"]
async fn a_forbidden_verb_names_verb_resource_and_namespace() {
    let run = AppRun::new("kube-forbidden", &[deployment(sleeper())]);
    let restricted = run.cluster.kubeconfig_impersonating(RESTRICTED).client().await;
    let options = KubeOptions::with_timeout(READY_WITHIN);

    // No rights at all: the run's namespace is refused (a namespace is
    // authorized as an object in itself).
    let error = deploy(restricted.clone(), &run.plan, &StackLabels::of(&run.plan), &options)
        .await
        .expect_err("the user may do nothing");
    assert!(matches!(&error, KubeError::Namespace { source, .. } if is_forbidden(source)), "{error}");
    assert!(error_chain(&error).contains(&refused(RESTRICTED, "namespaces", "", run.namespace())), "{error}");

    // The right to its namespace only: the Deployment is refused in there.
    let admin_client = run.cluster.client().await;
    let grant = unique(RESTRICTED);
    let roles: Api<ClusterRole> = Api::all(admin_client.clone());
    let bindings: Api<ClusterRoleBinding> = Api::all(admin_client.clone());
    let role = json!({
        "metadata": { "name": grant },
        "rules": [{
            "apiGroups": [""],
            "resources": ["namespaces"],
            "resourceNames": [run.namespace()],
            "verbs": ["create", "get", "patch"],
        }],
    });
    let binding = json!({
        "metadata": { "name": grant },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": grant },
        "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": RESTRICTED }],
    });
    let granted = async {
        let post = PostParams::default();
        roles.create(&post, &serde_json::from_value(role)?).await?;
        bindings.create(&post, &serde_json::from_value(binding)?).await?;
        // The API server's authorizer learns of a new binding from its own
        // watch, a moment after the create returns.
        await_granted(&admin_client, RESTRICTED, run.namespace()).await?;
        let error = deploy(restricted, &run.plan, &StackLabels::of(&run.plan), &options)
            .await
            .expect_err("deployments are not granted");
        let KubeError::Apply { object, namespace, source, .. } = &error else {
            panic!("expected a refused apply, got: {error}")
        };
        assert!(is_forbidden(source), "{error}");
        assert_eq!((object.as_str(), namespace.as_str()), ("Deployment/app", run.namespace()));
        let message = error_chain(&error);
        assert!(message.contains(&refused(RESTRICTED, "deployments", "apps", run.namespace())), "{message}");
        Ok::<(), Box<dyn std::error::Error>>(())
    };
    let revoke = async {
        let _ = bindings.delete(&grant, &DeleteParams::default()).await;
        let _ = roles.delete(&grant, &DeleteParams::default()).await;
    };
    clean_up_after(granted, revoke).await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with its node's containerd on this machine: set KUBECONFIG and E2E_CONTAINERD_SOCKET (scripts/test.sh starts kube-local); run with --run-ignored all"]
async fn a_missing_containerd_socket_is_named() {
    let run = AppRun::new("kube-no-socket", &[deployment(sleeper())]);
    let missing = run.project.path().join("containerd.sock");
    let elsewhere = Cluster { socket: missing.clone(), ..run.cluster.clone() };

    let error = containerd_error(run.up_on(elsewhere.backend(), READY_WITHIN).await);
    assert!(matches!(&error, ContainerdError::NoSocket { path } if *path == missing), "{error}");
    let message = error.to_string();
    assert!(message.contains(path_str(&missing)) && message.contains(CONTAINERD_SOCKET_ENV), "{message}");
    run.assert_nothing_deployed().await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with its node's containerd on this machine: set KUBECONFIG and E2E_CONTAINERD_SOCKET (scripts/test.sh starts kube-local); run with --run-ignored all"]
async fn an_unwritable_containerd_socket_is_named() {
    use std::os::unix::fs::PermissionsExt;

    let run = AppRun::new("kube-closed-socket", &[deployment(sleeper())]);
    let mut socket = run.project.path().join("containerd.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("binding a socket");
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o000)).expect("chmod 000");
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        // Root connects whatever the mode says; a regular file where the
        // socket should be refuses every user.
        eprintln!("this user connects to a socket of mode 000 (root does): a regular file stands in for it");
        socket = run.project.write("not-a-socket", "");
    }
    let elsewhere = Cluster { socket: socket.clone(), ..run.cluster.clone() };

    let error = containerd_error(run.up_on(elsewhere.backend(), READY_WITHIN).await);
    assert!(matches!(&error, ContainerdError::Socket { path, .. } if *path == socket), "{error}");
    let message = error.to_string();
    assert!(message.contains(&format!("cannot connect to containerd socket `{}`", socket.display())), "{message}");
    run.assert_nothing_deployed().await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with its node's containerd on this machine: set KUBECONFIG and E2E_CONTAINERD_SOCKET (scripts/test.sh starts kube-local); run with --run-ignored all"]
async fn the_cli_stands_a_stack_up_lists_it_and_takes_it_down_as_printed() {
    let run = AppRun::new("kube-cli", &[deployment(sleeper())]);
    let (consumer, run_id, tag) = (run.plan.consumer().as_str(), run.plan.run().as_str(), run.plan.tag().as_str());
    let docker = engine(None).await;

    let (up, _) = run.cli_up(&run.cluster, &[]).await;
    assert!(up.status.success(), "{}", stderr(&up));
    let printed = stdout(&up);
    assert!(printed.contains(&format!("`{consumer}` ready, tag {tag}")), "{printed}");
    let take_down = printed
        .lines()
        .find_map(|l| l.strip_prefix("take it down with: e2e-infra "))
        .expect("the take-down command")
        .to_owned();
    let take_down: Vec<&str> = take_down.split_whitespace().collect();
    assert!(run.cluster.has_namespace(run.namespace()).await);
    assert_eq!(run.cluster.node_references(&docker, tag).await, [run.image()]);

    let mut status = vec!["status"];
    let flags = run.cluster.context_flags();
    status.extend(flags.iter().map(String::as_str));
    let (listed, _) = cli(run.project.path(), &status, &[]).await;
    assert!(listed.status.success(), "{}", stderr(&listed));
    let listed = stdout(&listed);
    let line = listed
        .lines()
        .find(|l| l.split_whitespace().next() == Some(consumer) && l.contains(run_id))
        .unwrap_or_else(|| panic!("{consumer} is not listed:\n{listed}"));
    assert!(line.contains(" manual ") && line.contains(&format!("namespace: {}", run.namespace())), "{line}");

    let (down, _) = cli(run.project.path(), &take_down, &[]).await;
    assert!(down.status.success(), "{}", stderr(&down));
    let removed = stdout(&down);
    assert!(removed.contains(&format!("namespace {}, 1 image reference(s)", run.namespace())), "{removed}");
    assert!(!run.cluster.has_namespace(run.namespace()).await, "namespace {} is still there", run.namespace());
    assert_eq!(run.cluster.node_references(&docker, tag).await, Vec::<String>::new());

    let (again, _) = cli(run.project.path(), &take_down, &[]).await;
    assert!(!again.status.success());
    let message = stderr(&again);
    assert!(message.contains(&format!("no stack of consumer `{consumer}` and run `{run_id}`")), "{message}");
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with its node's containerd on this machine: set KUBECONFIG and E2E_CONTAINERD_SOCKET (scripts/test.sh starts kube-local); run with --run-ignored all"]
async fn clean_removes_the_stack_of_a_run_whose_launcher_is_gone() {
    let run = AppRun::new("kube-clean", &[deployment(sleeper())]);
    let (plan, _stack) = run.dead_launchers_stack().await;
    let (namespace, tag) = (plan.namespace().as_str(), plan.tag().as_str());
    let docker = engine(None).await;

    let line = run.status_line(&plan).await;
    assert!(line.contains(" dead ") && line.contains(namespace), "{line}");

    let removed = run.clean(&[]).await;
    assert!(removed.contains(&format!("removed kube-clean run {}", plan.run())), "{removed}");
    assert!(!run.cluster.has_namespace(namespace).await, "namespace {namespace} is still there");
    assert_eq!(run.cluster.node_references(&docker, tag).await, Vec::<String>::new());
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with its node's containerd on this machine: set KUBECONFIG and E2E_CONTAINERD_SOCKET (scripts/test.sh starts kube-local); run with --run-ignored all"]
async fn a_kept_stack_is_kept_on_the_cluster_until_clean_kept() {
    let run = AppRun::new("kube-kept", &[deployment(sleeper())]);
    let (plan, _stack) = run.dead_launchers_stack().await;
    let namespace = plan.namespace().as_str();
    // What the teardown of a run with a failed test does; recorded on the
    // cluster, so no local state is needed to honour it.
    mark(run.cluster.client().await, namespace, e2e_infra::labels::KEPT, "failed: a_test").await.expect("mark kept");

    assert!(run.status_line(&plan).await.contains(" kept "));
    run.clean(&[]).await;
    assert!(run.cluster.has_namespace(namespace).await, "clean removed a kept stack");
    let removed = run.clean(&["--kept"]).await;
    assert!(removed.contains(&format!("removed kube-kept run {}", plan.run())), "{removed}");
    assert!(!run.cluster.has_namespace(namespace).await, "namespace {namespace} is still there");
}

/// The uids of the pods of `run`'s namespace that match `selector`.
async fn pod_uids(run: &AppRun, selector: &str) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(run.cluster.client().await, run.namespace());
    let listed = pods.list(&ListParams::default().labels(selector)).await.expect("listing pods");
    let mut uids: Vec<String> = listed
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.uid)
        .collect();
    uids.sort();
    uids
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with its node's containerd on this machine: set KUBECONFIG and E2E_CONTAINERD_SOCKET (scripts/test.sh starts kube-local); run with --run-ignored all"]
async fn a_crash_during_setup_leaves_a_report_of_every_pod() {
    let last_words = unique("dependent-gives-up");
    let app = deployment(container("echo app is up; exec /bin/sleep 3600"));
    let mut crashing = dependent_deployment(&format!("echo dependent starting; echo {last_words}; exit 3"));
    crashing["spec"]["template"]["spec"]["containers"][0]["readinessProbe"] =
        json!({ "exec": { "command": ["/bin/true"] }, "initialDelaySeconds": 5 });
    let run = AppRun::with_dependent("kube-report-crash", &[app], &[crashing]);

    let (result, outcome) = run.up_reported(READY_WITHIN).await;
    let failure = pod_failure(kube_error(result));
    assert_eq!(failure.reason, "CrashLoopBackOff", "{failure}");
    let path = outcome.expect("a report was written").unwrap_or_else(|e| panic!("{e}"));
    let report = ReportFolder::at(&path);
    assert_common_report(&report, &run);
    let logs = report.logs(DEPENDENT);
    assert!(logs.lines().any(|l| l == last_words), "the crashing pod's last line is missing:\n{logs}");
    let state = report.state(DEPENDENT);
    assert!(state.contains("exit code 3"), "{state}");
    assert!(report.text("summary.txt").contains("CrashLoopBackOff"), "{}", report.text("summary.txt"));
    // Written before anything was removed: the namespace is still there
    // until the guard takes it down.
    assert!(run.cluster.has_namespace(run.namespace()).await);
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with its node's containerd on this machine: set KUBECONFIG and E2E_CONTAINERD_SOCKET (scripts/test.sh starts kube-local); run with --run-ignored all"]
async fn a_reused_stack_rolls_only_when_an_image_changes() {
    let run = AppRun::new("kube-reuse", &[job("migrate", container("echo migrated")), deployment(sleeper())]);
    let options = StackOptions {
        backend: run.cluster.backend(),
        ready_timeout: Some(READY_WITHIN),
        reuse: true,
        ..StackOptions::default()
    };
    stack::up(&run.plan, &options).await.unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let (service, migration) = (pod_uids(&run, "app=app").await, pod_uids(&run, "job-name=migrate").await);
    assert_eq!((service.len(), migration.len()), (1, 1));

    // Nothing changed: the same pods, the migration not run again.
    stack::up(&run.plan, &options).await.unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    assert_eq!(pod_uids(&run, "app=app").await, service, "an unchanged stack was rolled");
    assert_eq!(pod_uids(&run, "job-name=migrate").await, migration, "an unchanged migration ran again");

    // The image changes under the same reference: both roll.
    run.project.write(&format!("{APP}/changed"), "1");
    run.project.write(&format!("{APP}/Dockerfile"), busybox_dockerfile("COPY changed /changed\n"));
    stack::up(&run.plan, &options).await.unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let (rolled, rerun) = (pod_uids(&run, "app=app").await, pod_uids(&run, "job-name=migrate").await);
    assert_eq!(rolled.len(), 1, "{rolled:?}");
    assert_ne!(rolled, service, "a changed image kept the old pod");
    assert_ne!(rerun, migration, "a changed image did not run the migration again");

    let listed = stdout(&run.cli_on_cluster("status", &[]).await);
    let line = listed.lines().find(|l| l.contains(run.namespace())).expect("listed").to_owned();
    assert!(line.contains(" reuse "), "{line}");
    run.clean(&[]).await;
    assert!(run.cluster.has_namespace(run.namespace()).await, "plain clean removed a reusable stack");
    run.clean(&["--reused"]).await;
    assert!(!run.cluster.has_namespace(run.namespace()).await, "clean --reused left the namespace");
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with its node's containerd on this machine: set KUBECONFIG and E2E_CONTAINERD_SOCKET (scripts/test.sh starts kube-local); run with --run-ignored all"]
async fn a_readiness_timeout_leaves_a_report_of_every_pod() {
    let mut never_ready =
        container("echo app is up; echo app waits for a probe that never passes; exec /bin/sleep 3600");
    never_ready["readinessProbe"] = json!({ "exec": { "command": ["/bin/false"] }, "periodSeconds": 1 });
    let run = AppRun::with_dependent(
        "kube-report-ready",
        &[deployment(never_ready)],
        &[dependent_deployment("exec /bin/sleep 3600")],
    );

    let (result, outcome) = run.up_reported(Duration::from_secs(15)).await;
    let error = kube_error(result);
    assert!(matches!(error, KubeError::NotReady { .. }), "{error}");
    let report = ReportFolder::at(&outcome.expect("a report was written").unwrap_or_else(|e| panic!("{e}")));
    assert_common_report(&report, &run);
    let logs = report.logs(APP);
    assert!(logs.trim_end().ends_with("app waits for a probe that never passes"), "{logs}");
    assert!(report.state(APP).contains("ready: false"), "{}", report.state(APP));
    assert!(report.text("events.txt").contains("Unhealthy"), "{}", report.text("events.txt"));
    // Never applied: it waits for the app.
    assert!(report.state(DEPENDENT).contains("not started"), "{}", report.state(DEPENDENT));
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with its node's containerd on this machine: set KUBECONFIG and E2E_CONTAINERD_SOCKET (scripts/test.sh starts kube-local); run with --run-ignored all"]
async fn a_failing_test_on_a_live_stack_gets_a_report_and_its_logs() {
    let app = deployment(container("echo app is up; exec /bin/sleep 3600"));
    let run = AppRun::with_dependent(
        "kube-report-live",
        &[app],
        &[dependent_deployment("echo dependent is up; exec /bin/sleep 3600")],
    );
    let record = run.up(READY_WITHIN).await.unwrap_or_else(|e| panic!("{}", error_chain(&e)));

    // What a failing test's guard writes.
    let dir = run.project.path().join("reports/a-test");
    let evidence = Evidence::of_record(&record, "test `a_test` failed");
    let path = failure_report::write_for(dir, &evidence, &record.placement).await.unwrap_or_else(|e| panic!("{e}"));
    let report = ReportFolder::at(&path);
    assert_common_report(&report, &run);
    assert!(report.logs(DEPENDENT).trim_end().ends_with("dependent is up"), "{}", report.logs(DEPENDENT));
    assert!(report.state(DEPENDENT).contains("ready: true"), "{}", report.state(DEPENDENT));

    // The same stack from the command line: one component's logs, and a report.
    let flags = run.cluster.context_flags();
    let consumer = run.plan.consumer().as_str();
    let mut args = vec!["logs", "--consumer", consumer, "--run", run.plan.run().as_str(), DEPENDENT];
    args.extend(flags.iter().map(String::as_str));
    let reports = run.project.path().join("cli-reports");
    let env = [("E2E_INFRA_REPORT_DIR", reports.as_os_str())];
    let (logs, _) = cli(run.project.path(), &args, &env).await;
    assert!(logs.status.success(), "{}", stderr(&logs));
    assert!(stdout(&logs).contains("dependent is up") && !stdout(&logs).contains("app is up"), "{}", stdout(&logs));
    let mut args = vec!["report", "--consumer", consumer, "--run", run.plan.run().as_str()];
    args.extend(flags.iter().map(String::as_str));
    let (written, _) = cli(run.project.path(), &args, &env).await;
    assert!(written.status.success(), "{}", stderr(&written));
    let on_demand = ReportFolder::at(Path::new(stdout(&written).trim()));
    assert!(on_demand.path.starts_with(&reports), "{}", on_demand.path.display());
    assert!(on_demand.logs(APP).contains("app is up"), "{:?}", on_demand.files());
    assert!(on_demand.logs(DEPENDENT).contains("dependent is up"), "{:?}", on_demand.files());
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with its node's containerd on this machine: set KUBECONFIG and E2E_CONTAINERD_SOCKET (scripts/test.sh starts kube-local); run with --run-ignored all"]
async fn a_rebuild_that_changed_only_the_top_layer_sends_the_node_only_that_layer_and_runs() {
    let docker = engine(None).await;
    let mut guard = ImageGuard::default();
    let busybox = std::fs::metadata("/bin/busybox").expect("busybox").len();
    // Each run removes its images when dropped: the first is kept until the
    // second is built on top of it.
    let (mut sent, mut base, mut runs) = (Vec::new(), None::<String>, Vec::new());
    for version in ["first", "second"] {
        // A marker of this run's own: the top layer is new to the node.
        let marker = unique(version);
        let script = format!("test \"$(/bin/busybox cat /marker)\" = {marker} && exec /bin/busybox sleep 3600");
        let checks_marker = json!({ "name": APP, "image": format!("${{image:{APP}}}"), "command": ["/bin/busybox", "sh", "-c", script] });
        let run = AppRun::new(&format!("kube-delta-{version}"), &[deployment(checks_marker)]);
        let image = run.plan.image(APP).expect("planned").clone();
        guard.0.push(image.to_string());
        // The second is the first with another marker on top.
        let image_id = match &base {
            None => kind_node::busybox_image(&docker, &image, &marker).await,
            Some(first) => kind_node::marker_on_top(&docker, &image, first, &marker).await,
        };
        base = Some(image.to_string());
        let report = containerd::load(&docker, &[run.cluster.node()], &[LoadImage { image, image_id }])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(report.with_action(Action::Loaded).count(), 1, "{report:#?}");
        sent.push(report.outcomes[0].sent);
        // The pod becomes ready only if its container found this version's marker.
        let client = run.cluster.client().await;
        deploy(client, &run.plan, &StackLabels::of(&run.plan), &KubeOptions::with_timeout(READY_WITHIN))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        runs.push(run);
    }
    eprintln!("bytes sent: first load {}, reload {}", sent[0], sent[1]);
    assert!(sent[1] < 64 * 1024, "the reload sent {} bytes; the busybox layer is {busybox}", sent[1]);
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with its node's containerd on this machine: set KUBECONFIG and E2E_CONTAINERD_SOCKET (scripts/test.sh starts kube-local); run with --run-ignored all"]
async fn teardown_starts_no_pod_a_second_time() {
    use futures::{StreamExt, TryStreamExt};
    use kube::api::{WatchEvent, WatchParams};
    let mut replicated = deployment(sleeper());
    replicated["spec"]["replicas"] = json!(2);
    let run = AppRun::new("kube-teardown-pods", &[replicated]);
    run.up(READY_WITHIN).await.unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let client = run.cluster.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), run.namespace());
    let listed = pods.list(&ListParams::default()).await.expect("listing pods");
    let running: std::collections::BTreeSet<String> =
        listed.items.iter().filter_map(|p| p.metadata.uid.clone()).collect();
    assert_eq!(running.len(), 2, "{running:?}");
    let version = listed.metadata.resource_version.expect("a list has a resource version");
    let mut events = pods.watch(&WatchParams::default(), &version).await.expect("watching pods").boxed();

    let started = Instant::now();
    e2e_infra::deploy::kube::delete_namespace(client, run.plan.namespace()).await.expect("namespace deleted");
    let gone_after = started.elapsed();
    eprintln!("namespace {} gone {gone_after:.1?} after teardown started", run.namespace());

    // Every pod that ever existed is deleted once the namespace is gone;
    // read the watch until each one it announced was.
    let (mut added, mut deleted) = (running.clone(), std::collections::BTreeSet::new());
    let reading = async {
        while added != deleted {
            match events.try_next().await.expect("watch") {
                Some(WatchEvent::Added(pod) | WatchEvent::Modified(pod)) => added.extend(pod.metadata.uid),
                Some(WatchEvent::Deleted(pod)) => {
                    let uid = pod.metadata.uid.expect("uid");
                    added.insert(uid.clone());
                    deleted.insert(uid);
                }
                Some(_) => {}
                None => break,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), reading).await.expect("the watch reports every pod's deletion");
    let started_again: Vec<&String> = added.difference(&running).collect();
    assert!(started_again.is_empty(), "teardown started pods again: {started_again:?} besides {running:?}");
    assert!(gone_after < Duration::from_secs(30), "{gone_after:?}");
}

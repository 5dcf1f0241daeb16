//! Failing fast on Kubernetes, against kube's mock API server: a manifest
//! that hard-codes the wrong image, and a pod stuck in `ImagePullBackOff`.
//! The naive way applies the manifests and waits for the Deployment to be
//! available until its timeout, as `kubectl apply` + `kubectl wait` do.

use std::time::{Duration, Instant};

use e2e_infra::deploy::kube::mock::{added, client_and_server, deployment, waiting_pod, Script};
use e2e_infra::deploy::kube::{connect, delete_namespace, deploy, KubeError, KubeOptions};
use e2e_infra::labels::StackLabels;
use e2e_infra::{Delivery, Plan};
use e2e_infra_tests::{plan, Project};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};
use serde_json::json;

use crate::report::{median, median_of, ratio, secs, Res, Section};

/// The image the seed's suite hard-coded while it built another.
const WRONG_IMAGE: &str = "localhost/kubernaut-datastorage:e2e-test-datastorage";
/// The timeout the seed's suites waited out.
const SEED_TIMEOUT: Duration = Duration::from_secs(300);
/// When the mock server reports the failing pod, after the pod watch starts.
const POD_FAILS_AFTER: Duration = Duration::from_millis(500);

const MANIFEST: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: datastorage }\nspec:
  { replicas: 1, selector: { matchLabels: { app: datastorage } }, template: { metadata: { labels: { app: datastorage } },
    spec: { containers: [{ name: api, image: \"${image:datastorage}\" }] } } }\n";

/// A project whose `datastorage` manifest names `image`, and its plan.
fn fixture(image: &str) -> (Project, Plan) {
    let project = Project::new();
    project.write("Dockerfile", "FROM scratch\n");
    project.write("datastorage.yaml", MANIFEST.replace("${image:datastorage}", image));
    let catalog = project.catalog(
        "[components.datastorage]\nbuild = { context = \".\" }\nkubernetes = { manifests = [\"datastorage.yaml\"] }\n",
    );
    let plan = plan(&catalog, "notification", &["datastorage"], "bench-fail", &Delivery::Local);
    (project, plan)
}

/// What the API server shows: the Deployment never available, its pod
/// unable to pull `image`.
fn stuck(namespace: &str, image: &str) -> Script {
    let mut script = Script::default()
        .watch("deployments", Duration::ZERO, vec![added(deployment(namespace, "datastorage", 0))])
        .watch(
            "pods",
            POD_FAILS_AFTER,
            vec![added(waiting_pod(
                namespace,
                image,
                "ImagePullBackOff",
                &format!("Back-off pulling image \"{image}\""),
            ))],
        );
    script.events = vec![json!({
        "metadata": { "name": "api-7d9f-x2x.1", "namespace": namespace },
        "involvedObject": { "kind": "Pod", "name": "api-7d9f-x2x" },
        "type": "Warning", "reason": "Failed",
        "message": format!("Failed to pull image \"{image}\": not found")
    })];
    script
}

/// The naive way: apply every object of the manifest as written, then wait
/// until each Deployment is available or `timeout` passes.
async fn naive(client: Client, namespace: &str, manifest: &str, timeout: Duration) -> Res<()> {
    let objects: Vec<DynamicObject> = manifest.split("\n---\n").map(serde_yaml::from_str).collect::<Result<_, _>>()?;
    let params = PatchParams::apply("naive-suite").force();
    for object in &objects {
        let types = object.types.clone().ok_or("an object without apiVersion/kind")?;
        let resource = ApiResource::from_gvk(&GroupVersionKind::try_from(&types)?);
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
        api.patch(object.metadata.name.as_deref().unwrap_or_default(), &params, &Patch::Apply(object)).await?;
    }
    let deployments: Api<Deployment> = Api::namespaced(client, namespace);
    let waits = objects
        .iter()
        .filter(|o| o.types.as_ref().is_some_and(|t| t.kind == "Deployment"))
        .filter_map(|o| o.metadata.name.clone())
        .map(|name| {
            let api = deployments.clone();
            async move { await_condition(api, &name, conditions::is_deployment_completed()).await }
        });
    tokio::time::timeout(timeout, futures::future::try_join_all(waits)).await??;
    Ok(())
}

/// Runs the naive way against `script`; it must fail. Returns how long it
/// took: it never looks at pods, so its error is the timeout.
async fn naive_run(plan: &Plan, manifest: &str, script: Script, timeout: Duration) -> Res<Duration> {
    let (client, _log) = client_and_server(script);
    let started = Instant::now();
    match naive(client, plan.namespace().as_str(), manifest, timeout).await {
        Err(e) if e.is::<tokio::time::error::Elapsed>() => Ok(started.elapsed()),
        Err(e) => Err(format!("the naive deploy failed before its timeout: {e}").into()),
        Ok(()) => Err("the naive deploy of a stuck pod succeeded".into()),
    }
}

/// How long before `end` the mock sent the failing pod.
fn since_pod_event(log: &std::sync::Mutex<e2e_infra::deploy::kube::mock::Log>, end: Instant) -> Option<Duration> {
    let log = log.lock().ok()?;
    log.watch_answers.iter().find(|(resource, _)| resource == "pods").map(|(_, at)| end - *at)
}

/// A section whose rows time e2e-infra against the naive way's measured
/// and configured timeouts.
fn timed_against_naive(title: &str, intro: &str, naive_timeout: Duration) -> Section {
    Section::new(
        title,
        intro,
        &[
            "case",
            "e2e-infra",
            &format!("naive, {} timeout (measured)", secs(naive_timeout)),
            "ratio (measured)",
            &format!("naive, {} timeout (configured)", secs(SEED_TIMEOUT)),
            "ratio (configured)",
        ],
    )
}

/// Benchmark 3.
pub async fn fail_fast(reps: usize, naive_timeout: Duration) -> Res<Section> {
    let mut section = timed_against_naive(
        "3. Failing fast on a wrong or unpullable image (Kubernetes)",
        &format!(
            "Against kube's mock API server (a `tower-test` service answering like an API server and \
             replaying watch events), so only the decision logic is timed. e2e-infra: \
             `e2e_infra::deploy::kube::deploy`. Naive way: apply the manifest as written and wait until the \
             Deployment is available (`kubectl apply` + `kubectl wait`), here with a timeout of {} (measured). \
             The seed's real suites waited {} (configured, not run here: that column is the timeout itself).",
            secs(naive_timeout),
            secs(SEED_TIMEOUT)
        ),
        naive_timeout,
    );

    // (a) The manifest hard-codes the image: e2e-infra's preflight refuses it
    // before any request; the naive way applies it and waits.
    let (_project, plan) = fixture(WRONG_IMAGE);
    let namespace = plan.namespace().as_str().to_owned();
    let mut ours = Vec::new();
    for _ in 0..reps {
        let (client, log) = client_and_server(stuck(&namespace, WRONG_IMAGE));
        let started = Instant::now();
        let error = deploy(client, &plan, &StackLabels::of(&plan), &KubeOptions::with_timeout(naive_timeout)).await;
        ours.push(started.elapsed());
        if !matches!(error, Err(KubeError::Preflight { .. })) {
            return Err(format!("expected the preflight to refuse {WRONG_IMAGE}: {error:?}").into());
        }
        tokio::task::yield_now().await;
        let requests = log.lock().map(|l| l.requests.len()).unwrap_or_default();
        if requests != 0 {
            return Err(format!("the preflight let {requests} request(s) through").into());
        }
    }
    let manifest = MANIFEST.replace("${image:datastorage}", WRONG_IMAGE);
    let naive_took = naive_run(&plan, &manifest, stuck(&namespace, WRONG_IMAGE), naive_timeout).await?;
    section.row(vec![
        format!("(a) manifest hard-codes `{WRONG_IMAGE}`: time to the error (requests sent by e2e-infra: 0)"),
        median_of(&ours),
        secs(naive_took),
        ratio(naive_took, median(&ours)),
        secs(SEED_TIMEOUT),
        ratio(SEED_TIMEOUT, median(&ours)),
    ]);

    // (b) The manifest is right but the pod cannot pull its image: timed from
    // the moment the mock sends the pod's status.
    let (_project, plan) = fixture("${image:datastorage}");
    let namespace = plan.namespace().as_str().to_owned();
    let image = plan.image("datastorage").ok_or("datastorage not planned")?.to_string();
    let mut ours = Vec::new();
    for _ in 0..reps {
        let (client, log) = client_and_server(stuck(&namespace, &image));
        let error = deploy(client, &plan, &StackLabels::of(&plan), &KubeOptions::with_timeout(naive_timeout)).await;
        let after_event = since_pod_event(&log, Instant::now()).ok_or("the pod status was never sent")?;
        match error {
            Err(KubeError::PodFailed(failure)) if failure.reason == "ImagePullBackOff" => ours.push(after_event),
            other => return Err(format!("expected ImagePullBackOff to end the deploy: {other:?}").into()),
        }
    }
    let manifest = MANIFEST.replace("${image:datastorage}", &image);
    let naive_took = naive_run(&plan, &manifest, stuck(&namespace, &image), naive_timeout).await?;
    section.row(vec![
        "(b) pod in `ImagePullBackOff`: e2e-infra from the pod status event to the error; naive from apply to its timeout error".to_owned(),
        median_of(&ours),
        secs(naive_took),
        ratio(naive_took, median(&ours)),
        secs(SEED_TIMEOUT),
        ratio(SEED_TIMEOUT, median(&ours)),
    ]);
    section.note(&format!(
        "the mock sends the failing pod {} after the pod watch starts; e2e-infra's figure in (b) includes \
         asking for the pod's events and logs to put in the error. The naive wait never looks at pods, so \
         however early the pull fails, it reports only at its timeout",
        secs(POD_FAILS_AFTER)
    ));
    Ok(section)
}

/// The run's namespace, made for the naive way, which applies into an
/// existing namespace as `kubectl apply -n` does.
async fn make_namespace(client: &Client, namespace: &str) -> Res<()> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let body = json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": namespace } });
    api.patch(namespace, &PatchParams::apply("naive-suite").force(), &Patch::Apply(&body)).await?;
    Ok(())
}

/// Benchmark 6: the two cases of benchmark 3 on a real cluster.
pub async fn fail_fast_real(reps: usize, naive_timeout: Duration) -> Res<Section> {
    let context = std::env::var("E2E_KUBE_CONTEXT").ok();
    let client = connect(context.as_deref()).await.map_err(|e| {
        format!("benchmark 6 needs a cluster (scripts/bench.sh starts kube-local when it is at hand): {e}")
    })?;
    let mut section = timed_against_naive(
        "6. Failing fast on a real cluster",
        &format!(
            "The cases of benchmark 3 on a real Kubernetes v1.36.2 (kube-local: a real API server, controllers, \
             scheduler and a real kubelet with its own containerd, on this machine). e2e-infra: \
             `e2e_infra::deploy::kube::deploy`, from its call to its error. Naive way: apply the manifest as \
             written and wait until the Deployment is available (`kubectl apply` + `kubectl wait`), with a \
             timeout of {} (measured); the seed's suites waited {} (configured).",
            secs(naive_timeout),
            secs(SEED_TIMEOUT)
        ),
        naive_timeout,
    );
    let options = KubeOptions::with_timeout(naive_timeout);
    let cases = [
        (WRONG_IMAGE, "(a) manifest hard-codes `localhost/kubernaut-datastorage:e2e-test-datastorage`: nothing sent, no namespace"),
        ("${image:datastorage}", "(b) planned image missing from the node: the kubelet's `ErrImageNeverPull`"),
    ];
    for (image, case) in cases {
        let (_project, plan) = fixture(image);
        let namespace = plan.namespace().clone();
        let mut ours = Vec::new();
        for _ in 0..reps {
            let started = Instant::now();
            let error = deploy(client.clone(), &plan, &StackLabels::of(&plan), &options).await;
            ours.push(started.elapsed());
            let expected = match &error {
                Err(KubeError::Preflight { .. }) => image == WRONG_IMAGE,
                Err(KubeError::PodFailed(failure)) => failure.reason == "ErrImageNeverPull",
                _ => false,
            };
            delete_namespace(client.clone(), &namespace).await?;
            if !expected {
                return Err(format!("{case}: unexpected outcome {error:?}").into());
            }
        }
        // The naive way gets the manifest with the reference it would have deployed.
        let written = if image == WRONG_IMAGE {
            WRONG_IMAGE.to_owned()
        } else {
            plan.image("datastorage").map(ToString::to_string).unwrap_or_default()
        };
        let manifest = MANIFEST.replace("${image:datastorage}", &written);
        make_namespace(&client, namespace.as_str()).await?;
        let started = Instant::now();
        let naive_outcome = naive(client.clone(), namespace.as_str(), &manifest, naive_timeout).await;
        let naive_took = started.elapsed();
        delete_namespace(client.clone(), &namespace).await?;
        match naive_outcome {
            Err(e) if e.is::<tokio::time::error::Elapsed>() => {}
            other => return Err(format!("{case}: the naive way did not time out: {other:?}").into()),
        }
        section.row(vec![
            case.to_owned(),
            median_of(&ours),
            secs(naive_took),
            ratio(naive_took, median(&ours)),
            secs(SEED_TIMEOUT),
            ratio(SEED_TIMEOUT, median(&ours)),
        ]);
    }
    section.note(
        "in (b) e2e-infra's time runs from its call: creating the namespace, applying, scheduling, the kubelet's \
         attempt to start the container, the event, and asking for the pod's events and what the node holds of \
         the repository to put in the error; each repetition deletes the namespace and waits until it is gone",
    );
    Ok(section)
}

//! CI shards sharing one stack on a real cluster, through the Lease in the
//! run's namespace: one setup for N shards, each a "machine" of its own
//! (PID namespace, state root, engine); a shard with another plan refused;
//! a failed setup failing every waiting shard at once; the last shard out
//! tearing down and a late shard refused; a stack whose shards all died
//! removed by `clean` once their time to live passed.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::time::{Duration, Instant};

use bollard::query_parameters::ListImagesOptions;
use e2e_infra::deploy::kube::ensure_namespace;
use e2e_infra::deploy::kube::shard::{self, Claim, Left, Phase, PlanPrint, ShardError};
use e2e_infra::labels::BUILT_BY_RUN;
use e2e_infra::{Catalog, Delivery, Plan};
use e2e_infra_tests::cluster::{cli, Cluster, StackGuard};
use e2e_infra_tests::shards::{setups, ShardSuite, ATTACHED};
use e2e_infra_tests::{unique, Project, ENGINE_DIR, ENGINE_DIR_ENV};
use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, Client};

/// A plan of one component on the cluster, and its namespace, created as
/// a shard creates it; removed when dropped.
struct Shared {
    cluster: Cluster,
    client: Client,
    plan: Plan,
    _project: Project,
    _guard: StackGuard,
}

impl Shared {
    async fn new(area: &str) -> Self {
        let cluster = Cluster::from_env();
        let project = Project::new();
        project.write("image/Dockerfile", "FROM scratch\n");
        project.write("web.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: web }\n");
        let catalog = project.write(
            "e2e-infra.toml",
            "[components.web]\nbuild = { context = \"image\" }\n[components.web.kubernetes]\nmanifests = [\"web.yaml\"]\n",
        );
        let catalog = Catalog::load(&catalog).expect("catalog");
        let plan = e2e_infra_tests::plan(&catalog, &unique(area), &["web"], area, &Delivery::Local);
        let guard = StackGuard::of(&plan, cluster.target());
        let client = cluster.client().await;
        let images = serde_json::to_string(&cluster.target().images).ok();
        ensure_namespace(&client, &plan, images).await.expect("the run's namespace");
        Self { cluster, client, plan, _project: project, _guard: guard }
    }

    fn namespace(&self) -> &str {
        self.plan.namespace().as_str()
    }

    fn print(&self, needs: &[&str], entry: &str) -> PlanPrint {
        PlanPrint {
            consumer: self.plan.consumer().as_str().to_owned(),
            needs: needs.iter().map(|n| (*n).to_owned()).collect(),
            components: BTreeMap::from([("web".to_owned(), entry.to_owned())]),
        }
    }

    async fn claim(&self, name: &str, print: &PlanPrint, ttl: Duration) -> Result<Claim, ShardError> {
        shard::claim(&self.client, self.namespace(), name, print, ttl).await
    }

    async fn namespace_exists(&self) -> bool {
        let api: Api<Namespace> = Api::all(self.client.clone());
        api.get_opt(self.namespace()).await.expect("reading the namespace").is_some()
    }
}

/// The engine the shards other than the first run on: Docker 29 of
/// engine-current, unless that is this pass's engine; then the system's.
fn second_engine() -> String {
    let folder = std::env::var(ENGINE_DIR_ENV).unwrap_or_else(|_| ENGINE_DIR.to_owned());
    let docker29 = format!("unix://{folder}/docker29/docker.sock");
    let first = e2e_infra_tests::engine_host();
    if first == docker29 {
        return e2e_infra::engine::DEFAULT_HOST.to_owned();
    }
    assert!(
        std::path::Path::new(&docker29["unix://".len()..]).exists(),
        "the second shard runs on Docker 29 at {docker29}: start it with scripts/engine.sh --all"
    );
    docker29
}

/// How many images run `run` built on the engine at `host`.
async fn built_by(host: &str, run: &str) -> usize {
    let docker = e2e_infra::engine::connect_to(host).await.expect("engine");
    let filters = HashMap::from([("label".to_owned(), vec![format!("{BUILT_BY_RUN}={run}")])]);
    let options = ListImagesOptions { filters: Some(filters), ..Default::default() };
    docker.list_images(Some(options)).await.expect("listing images").len()
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with its node's containerd on this machine: set KUBECONFIG and E2E_CONTAINERD_SOCKET (scripts/test.sh starts kube-local); run with --run-ignored all"]
async fn two_shards_on_two_engines_set_up_once_and_the_last_out_tears_down() {
    let cluster = Cluster::from_env();
    let suite = ShardSuite::new(&format!("shards-{:04x}", std::process::id() % 0xffff), 6);
    let run = unique("shards");
    let engines = [e2e_infra_tests::engine_host(), second_engine()];
    let runs = suite.run_shards(&cluster, &[run.clone(), run.clone()], &engines);
    for (i, shard) in runs.iter().enumerate() {
        eprintln!("--- shard {} ---\n{}", i + 1, shard.text);
        assert!(shard.output.status.success(), "shard {} failed", i + 1);
        assert!(shard.text.contains("3 tests run: 3 passed"), "shard {} ran its half", i + 1);
    }
    let attached = runs.iter().map(|r| r.text.matches(ATTACHED).count()).sum::<usize>();
    assert_eq!((setups(&runs), attached), (1, 1), "one shard set up, the other attached");
    let builds = [built_by(&engines[0], &run).await, built_by(&engines[1], &run).await];
    assert_eq!(builds.iter().sum::<usize>(), 1, "one build in all, on the set-up shard's engine: {builds:?}");
    // Both commands end after their teardown processes: the last one out
    // removed the namespace, and its Lease with it.
    let client = cluster.client().await;
    let namespace = e2e_infra::RunKey::parse(run.as_str(), suite.consumer.as_str()).expect("a valid key").namespace();
    let api: Api<Namespace> = Api::all(client);
    assert!(api.get_opt(namespace.as_str()).await.expect("reading").is_none(), "{namespace} was torn down");
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with its node's containerd on this machine: set KUBECONFIG and E2E_CONTAINERD_SOCKET (scripts/test.sh starts kube-local); run with --run-ignored all"]
async fn a_shard_with_another_plan_is_refused_with_the_difference() {
    let shared = Shared::new("shard-mismatch").await;
    let ttl = Duration::from_secs(30);
    assert!(matches!(shared.claim("1", &shared.print(&["web"], "aaaa"), ttl).await, Ok(Claim::SetUp)));
    let refused = shared.claim("2", &shared.print(&["web", "cache"], "bbbb"), ttl).await;
    let Err(error @ ShardError::Mismatch { .. }) = refused else { panic!("not refused: {refused:?}") };
    let message = error.to_string();
    assert!(message.contains("needs: set up [web], this shard [web, cache]"), "{message}");
    assert!(message.contains("component `web`: its catalog entry differs (set up aaaa, this shard bbbb)"), "{message}");
    let lease = shard::read(&shared.client, shared.namespace()).await.expect("read").expect("a Lease");
    assert_eq!(lease.members.keys().collect::<Vec<_>>(), ["1"], "the refused shard never joined");
    assert!(matches!(shared.claim("3", &shared.print(&["web"], "aaaa"), ttl).await, Ok(Claim::Joined(_))));
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with its node's containerd on this machine: set KUBECONFIG and E2E_CONTAINERD_SOCKET (scripts/test.sh starts kube-local); run with --run-ignored all"]
async fn a_failed_setup_fails_every_waiting_shard_at_once() {
    let shared = Shared::new("shard-failed").await;
    let (print, ttl) = (shared.print(&["web"], "aaaa"), Duration::from_secs(30));
    assert!(matches!(shared.claim("1", &print, ttl).await, Ok(Claim::SetUp)));
    let mut waiting = Vec::new();
    for name in ["2", "3"] {
        let Ok(Claim::Joined(lease)) = shared.claim(name, &print, ttl).await else { panic!("{name} joins") };
        assert_eq!(lease.phase, Phase::SettingUp);
        let client = shared.client.clone();
        waiting.push(tokio::spawn(async move { shard::await_setup(&client, *lease, name).await }));
    }
    let failed_at = Instant::now();
    let error = "building `web` failed: the Dockerfile's RUN step exited 3";
    shard::publish(&shared.client, shared.namespace(), Err(error.to_owned())).await.expect("publish");
    for waiter in waiting {
        let lease = waiter.await.expect("task").expect("the setup settled");
        assert_eq!((lease.phase, lease.error.as_deref()), (Phase::Failed, Some(error)));
    }
    assert!(failed_at.elapsed() < Duration::from_secs(2), "the watch told them in {:?}", failed_at.elapsed());
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with its node's containerd on this machine: set KUBECONFIG and E2E_CONTAINERD_SOCKET (scripts/test.sh starts kube-local); run with --run-ignored all"]
async fn the_last_shard_out_tears_down_and_a_late_shard_is_refused() {
    let shared = Shared::new("shard-last").await;
    let (print, ttl) = (shared.print(&["web"], "aaaa"), Duration::from_secs(30));
    assert!(matches!(shared.claim("1", &print, ttl).await, Ok(Claim::SetUp)));
    shard::publish(&shared.client, shared.namespace(), Ok("{}".to_owned())).await.expect("publish");
    let Ok(Claim::Joined(lease)) = shared.claim("2", &print, ttl).await else { panic!("2 joins") };
    assert_eq!(lease.phase, Phase::Ready);
    let left = shard::leave(&shared.client, shared.namespace(), "1", &[]).await.expect("1 leaves");
    assert_eq!(left, Left::Others(vec!["2".to_owned()]));
    let failed = ["t03".to_owned()];
    let last = shard::leave(&shared.client, shared.namespace(), "2", &failed).await.expect("2 leaves");
    assert_eq!(last, Left::LastOut { failed: vec!["2: t03".to_owned()] }, "the last one out keeps it for 2's failure");
    let late = shared.claim("3", &print, ttl).await;
    assert!(matches!(late, Err(ShardError::TornDown { .. })), "{late:?}");
    assert!(late.expect_err("refused").to_string().contains("is being torn down"));
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with its node's containerd on this machine: set KUBECONFIG and E2E_CONTAINERD_SOCKET (scripts/test.sh starts kube-local); run with --run-ignored all"]
async fn a_stack_whose_shards_all_died_is_removed_by_clean_after_its_time_to_live() {
    let shared = Shared::new("shard-ttl").await;
    // Long enough for `status` and a first `clean` on a loaded machine.
    let ttl = Duration::from_secs(15);
    assert!(matches!(shared.claim("1", &shared.print(&["web"], "aaaa"), ttl).await, Ok(Claim::SetUp)));
    shard::publish(&shared.client, shared.namespace(), Ok("{}".to_owned())).await.expect("publish");
    let renewed = Instant::now();
    let Ok(Claim::Joined(_)) = shared.claim("2", &shared.print(&["web"], "aaaa"), ttl).await else { panic!("2 joins") };
    let cluster_flag: Vec<&OsStr> = match &shared.cluster.context {
        Some(context) => vec![OsStr::new("--context"), OsStr::new(context)],
        None => vec![OsStr::new("--kubernetes")],
    };
    let args = |command: &'static str| -> Vec<&str> {
        std::iter::once(command).chain(cluster_flag.iter().map(|a| a.to_str().expect("utf-8"))).collect()
    };
    let dir = tempfile::tempdir().expect("folder");
    let (status, _) = cli(dir.path(), &args("status"), &[]).await;
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    let line = status.lines().skip_while(|l| !l.contains(shared.namespace())).nth(1).unwrap_or_default();
    assert!(line.contains("shards (ready, time to live 15s): 1 (set up, attached"), "{status}");
    assert!(line.contains("2 (attached"), "{status}");
    let (cleaned, _) = cli(dir.path(), &args("clean"), &[]).await;
    assert!(cleaned.status.success());
    assert!(shared.namespace_exists().await, "shards that renewed within their time to live keep the stack");
    // Both shards' machines died: nothing renews. Time passing is the event.
    tokio::time::sleep((ttl + Duration::from_secs(1)).saturating_sub(renewed.elapsed())).await;
    let (cleaned, _) = cli(dir.path(), &args("clean"), &[]).await;
    assert!(cleaned.status.success());
    assert!(!shared.namespace_exists().await, "clean removed the stack no shard renewed");
}

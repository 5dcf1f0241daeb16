#![cfg(feature = "e2e")]
//! Build, load, deploy, ready and namespace deletion against a real Kind
//! cluster. No cluster can be created on the machines this project is built
//! on, so the test is ignored there; run it with a cluster at hand:
//! `E2E_KIND_CLUSTER=<name> cargo test -p e2e-infra-tests --features e2e -- --ignored`.

use std::time::Duration;

use e2e_infra::deploy::kube::{client, delete_namespace, deploy, KubeOptions};
use e2e_infra::load::kind::{self, Action, LoadImage};
use e2e_infra::{Catalog, Delivery, Plan, RunId};
use e2e_infra_tests::kind_node::{busybox_image, ImageGuard};
use e2e_infra_tests::{engine, unique};

const MANIFEST: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata: { name: sleeper }
spec:
  replicas: 1
  selector: { matchLabels: { app: sleeper } }
  template:
    metadata: { labels: { app: sleeper } }
    spec:
      containers:
        - name: sleeper
          image: ${image:sleeper}
";

#[tokio::test]
#[ignore = "needs a Kind cluster: set E2E_KIND_CLUSTER"]
async fn builds_loads_deploys_and_deletes_on_a_kind_cluster() {
    let cluster = std::env::var("E2E_KIND_CLUSTER").expect("E2E_KIND_CLUSTER names the Kind cluster");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").expect("Dockerfile");
    std::fs::write(dir.path().join("sleeper.yaml"), MANIFEST).expect("manifest");
    let catalog =
        "[components.sleeper]\nbuild = { context = \".\" }\nkubernetes = { manifests = [\"sleeper.yaml\"] }\n";
    std::fs::write(dir.path().join("e2e-infra.toml"), catalog).expect("catalog");
    let catalog = Catalog::load(&dir.path().join("e2e-infra.toml")).expect("catalog");
    let run = RunId::explicit(&unique("kube-deploy"), None).expect("run id");
    let plan = Plan::new(&catalog, "kubedeploy", &["sleeper"], run, &Delivery::Local).expect("plan");

    let docker = engine(None).await;
    let image = plan.image("sleeper").expect("planned").clone();
    let _images = ImageGuard(vec![image.to_string()]);
    let image_id = busybox_image(&docker, &image, "sleeper").await;
    let report = kind::load(&docker, &cluster, &[LoadImage { image, image_id }]).await.expect("load");
    assert_eq!(report.with_action(Action::Loaded).count(), report.nodes.len());

    let client = client(&cluster, None).await.expect("kubeconfig for the cluster");
    let deployed = deploy(client.clone(), &plan, &KubeOptions::with_timeout(Duration::from_secs(120))).await;
    let deleted = delete_namespace(client, plan.namespace()).await;
    let stack = deployed.expect("deploy and ready");
    deleted.expect("namespace deleted");
    assert_eq!(&stack.namespace, plan.namespace());
    assert_eq!(stack.objects.len(), 1);
}

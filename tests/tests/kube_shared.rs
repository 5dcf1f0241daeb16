//! Cluster-scoped objects on a real cluster: a CustomResourceDefinition, a
//! custom resource of it and RBAC for a service account, applied by two runs
//! at once and released by each run's teardown.

use std::time::Duration;

use e2e_infra::deploy::kube::{connect, delete_namespace, deploy, release_shared, user_label, KubeOptions};
use e2e_infra::labels::StackLabels;
use e2e_infra::{Catalog, Delivery, Plan, RunId};
use e2e_infra_tests::unique;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

const MANIFESTS: &str = "\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: { name: gadgets.e2e-infra.test }
spec:
  group: e2e-infra.test
  scope: Namespaced
  names: { plural: gadgets, singular: gadget, kind: Gadget }
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: { type: object, properties: { size: { type: integer } } }
---
apiVersion: e2e-infra.test/v1
kind: Gadget
metadata: { name: first }
spec: { size: 3 }
---
apiVersion: v1
kind: ServiceAccount
metadata: { name: gadget-reader }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: { name: e2e-infra-test-gadget-reader }
rules:
  - apiGroups: [e2e-infra.test]
    resources: [gadgets]
    verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: { name: gadget-reader-${namespace} }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: e2e-infra-test-gadget-reader }
subjects:
  - { kind: ServiceAccount, name: gadget-reader, namespace: \"${namespace}\" }
";

fn plan(dir: &std::path::Path, consumer: &str) -> Plan {
    let catalog = Catalog::load(&dir.join("e2e-infra.toml")).expect("catalog");
    let run = RunId::explicit(&unique("kube-shared"), None).expect("run id");
    Plan::new(&catalog, consumer, &["gadgets"], run, &Delivery::Local).expect("plan")
}

async fn allowed(client: &Client, plan: &Plan) -> bool {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!("system:serviceaccount:{}:gadget-reader", plan.namespace())),
            resource_attributes: Some(ResourceAttributes {
                group: Some("e2e-infra.test".to_owned()),
                resource: Some("gadgets".to_owned()),
                verb: Some("list".to_owned()),
                namespace: Some(plan.namespace().to_string()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    let answer = reviews.create(&PostParams::default(), &review).await.expect("access review");
    answer.status.is_some_and(|s| s.allowed)
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: set KUBECONFIG (scripts/test.sh starts kube-local); run with --run-ignored all"]
async fn two_runs_share_a_crd_and_the_last_one_out_removes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("gadgets.yaml"), MANIFESTS).expect("manifests");
    let catalog =
        "[components.gadgets]\nimage = \"localhost/busybox:local\"\nkubernetes = { manifests = [\"gadgets.yaml\"] }\n";
    std::fs::write(dir.path().join("e2e-infra.toml"), catalog).expect("catalog");
    let (a, b) = (plan(dir.path(), "shared-a"), plan(dir.path(), "shared-b"));
    let context = std::env::var("E2E_KUBE_CONTEXT").ok();
    let client = connect(context.as_deref()).await.expect("a cluster: set KUBECONFIG");
    let options = KubeOptions::with_timeout(Duration::from_secs(60));

    let (labels_a, labels_b) = (StackLabels::of(&a), StackLabels::of(&b));
    let (deployed_a, deployed_b) =
        tokio::join!(deploy(client.clone(), &a, &labels_a, &options), deploy(client.clone(), &b, &labels_b, &options));
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let outcome = async {
        deployed_a.expect("first run deploys");
        deployed_b.expect("second run deploys at the same time");
        let crd = crds.get("gadgets.e2e-infra.test").await.expect("the definition");
        for plan in [&a, &b] {
            assert!(crd.labels().contains_key(&user_label(plan.namespace())), "{:?}", crd.labels());
            assert!(allowed(&client, plan).await, "{} cannot list gadgets", plan.namespace());
        }

        let released = release_shared(&client, a.namespace()).await.expect("release the first run");
        delete_namespace(client.clone(), a.namespace()).await.expect("delete the first namespace");
        assert_eq!(released, [format!("ClusterRoleBinding/gadget-reader-{}", a.namespace())]);
        let crd = crds.get("gadgets.e2e-infra.test").await.expect("still used by the second run");
        assert!(!crd.labels().contains_key(&user_label(a.namespace())), "{:?}", crd.labels());
        assert!(roles.get_opt("e2e-infra-test-gadget-reader").await.expect("get").is_some());
        assert!(allowed(&client, &b).await, "the second run lost its access");
    };
    outcome.await;

    let released = release_shared(&client, b.namespace()).await.expect("release the second run");
    delete_namespace(client.clone(), b.namespace()).await.expect("delete the second namespace");
    assert_eq!(released.len(), 3, "{released:?}");
    assert!(crds.get_opt("gadgets.e2e-infra.test").await.expect("get").is_none());
    assert!(roles.get_opt("e2e-infra-test-gadget-reader").await.expect("get").is_none());
    assert!(bindings.get_opt(&format!("gadget-reader-{}", b.namespace())).await.expect("get").is_none());
}

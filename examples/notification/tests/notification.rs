//! The notification suite: every test talks to one DataStorage stack, set up
//! once per run. Run it with `cargo test -p notification-e2e --features e2e`
//! or `cargo nextest run -p notification-e2e --features e2e`; with
//! `E2E_INFRA_BACKEND=kind` it runs on a Kind cluster instead.

#[e2e_infra::e2e_infra(consumer = "notification", needs = ["datastorage"])]
mod notification_e2e {
    use e2e_infra::record::Placement;
    use e2e_infra::Infra;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, ListParams};
    use notification_client::request;

    fn datastorage(infra: &Infra) -> std::net::SocketAddr {
        infra.endpoint("datastorage", 8080).expect("datastorage publishes 8080").addr()
    }

    #[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
    #[test]
    fn datastorage_is_ready(infra: &Infra) {
        let answer = request(datastorage(infra), "GET", "/readyz", "").expect("readyz");
        assert_eq!(answer.status, 200, "{}", answer.body);
    }

    #[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
    #[test]
    fn a_notification_is_stored_and_read_back(infra: &Infra) {
        let created = request(datastorage(infra), "POST", "/notifications", "{\"to\":\"oncall\"}").expect("post");
        assert_eq!(created.status, 201, "{}", created.body);
        let id: String = created.body.chars().filter(char::is_ascii_digit).collect();
        let read = request(datastorage(infra), "GET", &format!("/notifications/{id}"), "").expect("get");
        assert_eq!((read.status, read.body.as_str()), (200, "{\"to\":\"oncall\"}"));
    }

    #[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
    #[test]
    fn every_image_carries_the_run_tag(infra: &Infra) {
        for component in ["postgres", "redis", "migrate", "datastorage"] {
            let image = infra.image(component).expect("planned");
            assert_eq!(image.to_string(), format!("localhost/{component}:{}", infra.tag()));
        }
    }

    #[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
    #[tokio::test]
    async fn what_runs_is_what_was_built(infra: &Infra) {
        let planned = infra.image("datastorage").expect("planned");
        let running: Vec<String> = match infra.placement() {
            Placement::Docker { .. } => {
                let docker = infra.docker().await.expect("docker client");
                let name = format!("{}-datastorage", infra.namespace());
                let container = docker.inspect_container(&name, None).await.expect("inspect datastorage");
                container.config.and_then(|c| c.image).into_iter().collect()
            }
            _ => {
                let pods: Api<Pod> = Api::namespaced(infra.kube().await.expect("kube client"), infra.namespace().as_str());
                let listed = pods.list(&ListParams::default().labels("app=datastorage")).await.expect("list pods");
                listed
                    .items
                    .into_iter()
                    .flat_map(|p| p.spec.map(|s| s.containers).unwrap_or_default())
                    .filter_map(|c| c.image)
                    .collect()
            }
        };
        assert!(!running.is_empty() && running.iter().all(|image| planned.matches(image)), "{running:?}");
    }
}

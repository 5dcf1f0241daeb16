//! The notification suite: every test talks to one DataStorage stack, set up
//! once per run. Run it with `cargo test -p notification-e2e --features e2e`
//! or `cargo nextest run -p notification-e2e --features e2e`; with
//! `E2E_INFRA_BACKEND=kind` it runs on a Kind cluster instead.
#![cfg(feature = "e2e")]

#[e2e_infra::e2e_infra(consumer = "notification", needs = ["datastorage"])]
mod notification_e2e {
    use e2e_infra::Infra;
    use notification_client::request;

    fn datastorage(infra: &Infra) -> std::net::SocketAddr {
        infra.endpoint("datastorage", 8080).expect("datastorage publishes 8080").addr()
    }

    #[test]
    fn datastorage_is_ready(infra: &Infra) {
        let answer = request(datastorage(infra), "GET", "/readyz", "").expect("readyz");
        assert_eq!(answer.status, 200, "{}", answer.body);
    }

    #[test]
    fn a_notification_is_stored_and_read_back(infra: &Infra) {
        let created = request(datastorage(infra), "POST", "/notifications", "{\"to\":\"oncall\"}").expect("post");
        assert_eq!(created.status, 201, "{}", created.body);
        let id: String = created.body.chars().filter(char::is_ascii_digit).collect();
        let read = request(datastorage(infra), "GET", &format!("/notifications/{id}"), "").expect("get");
        assert_eq!((read.status, read.body.as_str()), (200, "{\"to\":\"oncall\"}"));
    }

    #[test]
    fn every_image_carries_the_run_tag(infra: &Infra) {
        for component in ["postgres", "redis", "migrate", "datastorage"] {
            let image = infra.image(component).expect("planned");
            assert_eq!(image.to_string(), format!("localhost/{component}:{}", infra.tag()));
        }
    }

    #[tokio::test]
    async fn the_engine_runs_what_was_built(infra: &Infra) {
        let docker = infra.docker().await.expect("docker client");
        let name = format!("{}-datastorage", infra.namespace());
        let container = docker.inspect_container(&name, None).await.expect("inspect datastorage");
        let image = container.config.and_then(|c| c.image).expect("image");
        assert!(infra.image("datastorage").expect("planned").matches(&image), "{image}");
    }
}

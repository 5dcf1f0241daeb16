//! The same build and Docker-backend code against Podman's compatible API.
//! Connects to the socket explicitly: tests run in parallel, so the process
//! environment (`DOCKER_HOST`) is left alone.
#![cfg(feature = "e2e")]

use e2e_infra::build::{build_all, BuildOptions};
use e2e_infra::deploy::docker::{remove_labelled, up};
use e2e_infra::engine::{kind, EngineKind};
use e2e_infra::{labels, Delivery};
use e2e_infra_tests::{
    busybox_dockerfile, clean_up_after, engine, http_get, plan, remove_built_images, Project,
    PODMAN_HOST,
};

const AREA: &str = "docker-podman";

#[tokio::test]
async fn podman_builds_with_args_and_reuses_unchanged_inputs() {
    let podman = engine(Some(PODMAN_HOST)).await;
    assert_eq!(kind(&podman).await.unwrap(), EngineKind::Podman);
    let project = Project::new();
    project.busybox_context("ctx");
    project.write(
        "docker/app.Dockerfile",
        busybox_dockerfile("ARG FLAVOUR\nLABEL flavour=$FLAVOUR\n"),
    );
    let catalog = project.catalog(
        "[components.app]\nbuild = { context = \"ctx\", dockerfile = \"docker/app.Dockerfile\", args = { FLAVOUR = \"podman\" } }\n",
    );
    let first = plan(&catalog, "podman", &["app"], AREA, &Delivery::Local);
    let second = plan(&catalog, "podman", &["app"], AREA, &Delivery::Local);
    let body = async {
        let built = build_all(&podman, &first, &BuildOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        assert!(!built[0].cached);
        let image = podman
            .inspect_image(&first.image("app").unwrap().to_string())
            .await
            .map_err(|e| e.to_string())?;
        let image_labels = image.config.and_then(|c| c.labels).unwrap_or_default();
        assert_eq!(
            image_labels.get("flavour").map(String::as_str),
            Some("podman")
        );
        assert_eq!(
            image_labels
                .get(labels::BUILT_FOR_COMPONENT)
                .map(String::as_str),
            Some("app")
        );

        let again = build_all(&podman, &second, &BuildOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        assert!(again[0].cached, "unchanged inputs were rebuilt on Podman");
        let tagged = podman
            .inspect_image(&second.image("app").unwrap().to_string())
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(tagged.id, image.id);
        Ok::<_, String>(())
    };
    clean_up_after(body, async {
        remove_built_images(&podman, &second).await;
        remove_built_images(&podman, &first).await;
    })
    .await;
}

#[tokio::test]
async fn podman_runs_a_two_component_stack() {
    let podman = engine(Some(PODMAN_HOST)).await;
    let project = Project::new();
    project.busybox_context("ctx");
    project.write(
        "ctx/Dockerfile",
        busybox_dockerfile("RUN mkdir /www && echo from-web > /www/index.html\n"),
    );
    let catalog = project.catalog(
        r#"
[components.web]
build = { context = "ctx" }
docker = { ports = [8080], command = ["httpd", "-f", "-p", "8080", "-h", "/www"], ready = { tcp = 8080, timeout = "30s" } }

[components.app]
build = { context = "ctx" }
depends_on = ["web"]
[components.app.docker]
ports = [9090]
env = { WEB = "http://${web.addr}/index.html" }
command = ["sh", "-c", "mkdir -p /srv && wget -q -O /srv/upstream \"$WEB\" && exec httpd -f -p 9090 -h /srv"]
ready = { http = "/upstream", timeout = "30s" }
"#,
    );
    let plan = plan(&catalog, "podman", &["app"], AREA, &Delivery::Local);
    let body = async {
        build_all(&podman, &plan, &BuildOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        let stack = up(&podman, &plan).await.map_err(|e| e.to_string())?;
        let app = stack.component("app").ok_or("no app")?;
        let (status, body) = http_get(app.ports[&9090], "/upstream")
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!((status, body.as_str()), (200, "from-web\n"));
        let removed = remove_labelled(&podman, &labels::run_filter(&plan))
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(removed.containers.len(), 2, "{removed:?}");
        assert_eq!(removed.networks, std::slice::from_ref(&stack.network));
        Ok::<_, String>(())
    };
    clean_up_after(body, async {
        remove_labelled(&podman, &labels::run_filter(&plan))
            .await
            .unwrap();
        remove_built_images(&podman, &plan).await;
    })
    .await;
}

//! The same build and Docker-backend code against Podman's compatible API.
//! Connects to the socket explicitly: tests run in parallel, so the process
//! environment (`DOCKER_HOST`) is left alone.

use std::collections::HashMap;

use bollard::query_parameters::ListImagesOptionsBuilder;
use e2e_infra::build::{build_all, cache_ref, BuildOptions};
use e2e_infra::deploy::docker::{remove_labelled, up};
use e2e_infra::engine::{kind, EngineKind};
use e2e_infra::labels::StackLabels;
use e2e_infra::{labels, Delivery};
use e2e_infra_tests::{
    clean_up_after, engine, http_get, plan, podman_host, remove_built_images, remove_reference,
    unshared_busybox_dockerfile, Project,
};

const AREA: &str = "docker-podman";

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn podman_builds_with_args_and_reuses_unchanged_inputs() {
    let podman = engine(Some(&podman_host())).await;
    assert_eq!(kind(&podman).await.unwrap(), EngineKind::Podman);
    let project = Project::new();
    project.busybox_context("ctx");
    project.write("docker/app.Dockerfile", unshared_busybox_dockerfile("ARG FLAVOUR\nLABEL flavour=$FLAVOUR\n"));
    let catalog = project.catalog(
        "[components.app]\nbuild = { context = \"ctx\", dockerfile = \"docker/app.Dockerfile\", args = { FLAVOUR = \"podman\" } }\n",
    );
    let first = plan(&catalog, "podman", &["app"], AREA, &Delivery::Local);
    let second = plan(&catalog, "podman", &["app"], AREA, &Delivery::Local);
    let body = async {
        let built = build_all(&podman, &first, &BuildOptions::default()).await.map_err(|e| e.to_string())?;
        assert!(!built[0].cached);
        let image = podman.inspect_image(&first.image("app").unwrap().to_string()).await.map_err(|e| e.to_string())?;
        let image_labels = image.config.and_then(|c| c.labels).unwrap_or_default();
        assert_eq!(image_labels.get("flavour").map(String::as_str), Some("podman"));
        assert_eq!(image_labels.get(labels::BUILT_FOR_COMPONENT).map(String::as_str), Some("app"));

        let again = build_all(&podman, &second, &BuildOptions::default()).await.map_err(|e| e.to_string())?;
        assert!(again[0].cached, "unchanged inputs were rebuilt on Podman");
        let tagged =
            podman.inspect_image(&second.image("app").unwrap().to_string()).await.map_err(|e| e.to_string())?;
        assert_eq!(tagged.id, image.id);
        Ok::<_, String>(())
    };
    clean_up_after(body, async {
        remove_built_images(&podman, &second).await;
        remove_built_images(&podman, &first).await;
    })
    .await;
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn podman_runs_a_two_component_stack() {
    let podman = engine(Some(&podman_host())).await;
    let project = Project::new();
    project.busybox_context("ctx");
    project.write("ctx/Dockerfile", unshared_busybox_dockerfile("RUN mkdir /www && echo from-web > /www/index.html\n"));
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
        build_all(&podman, &plan, &BuildOptions::default()).await.map_err(|e| e.to_string())?;
        let stack = up(&podman, &plan, &StackLabels::of(&plan), None).await.map_err(|e| e.to_string())?;
        let app = stack.component("app").ok_or("no app")?;
        let (status, body) = http_get(app.ports[&9090], "/upstream").await.map_err(|e| e.to_string())?;
        assert_eq!((status, body.as_str()), (200, "from-web\n"));
        let removed = remove_labelled(&podman, &labels::filter(plan.key())).await.map_err(|e| e.to_string())?;
        assert_eq!(removed.containers.len(), 2, "{removed:?}");
        assert_eq!(removed.networks, std::slice::from_ref(&stack.network));
        Ok::<_, String>(())
    };
    clean_up_after(body, async {
        remove_labelled(&podman, &labels::filter(plan.key())).await.unwrap();
        remove_built_images(&podman, &plan).await;
    })
    .await;
}

/// Podman puts the build's labels on every intermediate image, input digest
/// included, and another build with the same first steps reuses those
/// intermediates, so they outlive the image they were made for. Once that
/// image's references are gone, the next run must build, not pick an
/// intermediate (which has no command: its containers failed with `no
/// command or entrypoint provided`).
#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn podman_never_takes_an_intermediate_image_for_the_cache() {
    let podman = engine(Some(&podman_host())).await;
    let project = Project::new();
    project.busybox_context("ctx");
    let steps = "RUN mkdir /www && echo up > /www/index.html\n";
    project.write(
        "ctx/Dockerfile",
        unshared_busybox_dockerfile(&format!("{steps}CMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n")),
    );
    project.write("ctx/side.Dockerfile", unshared_busybox_dockerfile(&format!("{steps}CMD [\"true\"]\n")));
    let catalog = project.catalog(
        r#"
[components.web]
build = { context = "ctx" }
docker = { ports = [8080], ready = { http = "/index.html", timeout = "30s" } }

[components.side]
build = { context = "ctx", dockerfile = "ctx/side.Dockerfile" }
"#,
    );
    let first = plan(&catalog, "podman", &["web"], AREA, &Delivery::Local);
    let side = plan(&catalog, "podman", &["side"], AREA, &Delivery::Local);
    let second = plan(&catalog, "podman", &["web"], AREA, &Delivery::Local);
    let body = async {
        let built = build_all(&podman, &first, &BuildOptions::default()).await.map_err(|e| e.to_string())?;
        // Reuses the first steps, and with them web's labelled intermediates.
        build_all(&podman, &side, &BuildOptions::default()).await.map_err(|e| e.to_string())?;
        let inspected = podman.inspect_image(&built[0].image.to_string()).await.map_err(|e| e.to_string())?;
        let digest = inspected
            .config
            .and_then(|c| c.labels)
            .and_then(|l| l.get(labels::INPUT_DIGEST).cloned())
            .ok_or("no digest label")?;
        remove_reference(&podman, &built[0].image.to_string()).await;
        remove_reference(&podman, &cache_ref(&built[0].image, &digest)).await;
        let label = format!("{}={digest}", labels::INPUT_DIGEST);
        let filter = HashMap::from([("label", vec![label.as_str()])]);
        let left = podman
            .list_images(Some(ListImagesOptionsBuilder::new().all(true).filters(&filter).build()))
            .await
            .map_err(|e| e.to_string())?;
        assert!(!left.is_empty(), "no intermediate image carries web's digest label: this test would prove nothing");

        let rebuilt = build_all(&podman, &second, &BuildOptions::default()).await.map_err(|e| e.to_string())?;
        assert!(!rebuilt[0].cached, "an intermediate image was taken for the cache");
        assert!(left.iter().all(|i| i.id != rebuilt[0].image_id));
        let stack = up(&podman, &second, &StackLabels::of(&second), None).await.map_err(|e| e.to_string())?;
        let web = stack.component("web").ok_or("no web")?;
        let (status, body) = http_get(web.ports[&8080], "/index.html").await.map_err(|e| e.to_string())?;
        assert_eq!((status, body.as_str()), (200, "up\n"));
        Ok::<_, String>(())
    };
    clean_up_after(body, async {
        remove_labelled(&podman, &labels::filter(second.key())).await.unwrap();
        remove_built_images(&podman, &second).await;
        remove_built_images(&podman, &first).await;
        remove_built_images(&podman, &side).await;
    })
    .await;
}

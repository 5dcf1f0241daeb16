//! Pushing built images to the loopback registry and pulling them back by
//! the digest the push reported.

use std::io::{Read, Write};

use bollard::query_parameters::CreateImageOptionsBuilder;
use e2e_infra::build::{build_all, BuildOptions};
use e2e_infra::load::registry::{push_all, LoadError};
use e2e_infra::Delivery;
use e2e_infra_tests::{
    busybox_dockerfile, clean_up_after, engine, plan, remove_built_images, remove_image, remove_reference, Project,
    REGISTRY,
};
use futures::TryStreamExt;

const AREA: &str = "docker-registry";

/// The digest the registry serves for `name:tag` (`name` without the
/// registry), from its `Docker-Content-Digest` header.
fn served_digest(name: &str, tag: &str) -> String {
    let mut stream = std::net::TcpStream::connect(REGISTRY).expect("the loopback registry answers");
    let accept = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
                  application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";
    write!(stream, "HEAD /v2/{name}/manifests/{tag} HTTP/1.0\r\nHost: {REGISTRY}\r\nAccept: {accept}\r\n\r\n")
        .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    answer
        .lines()
        .find_map(|l| l.strip_prefix("Docker-Content-Digest: ").or_else(|| l.strip_prefix("docker-content-digest: ")))
        .unwrap_or_else(|| panic!("no digest header for {name}:{tag}:\n{answer}"))
        .trim()
        .to_owned()
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn pushed_images_pull_back_by_their_digest_with_the_same_id() {
    let docker = engine(None).await;
    let project = Project::new();
    project.busybox_context("app");
    project.write("app/Dockerfile", busybox_dockerfile(""));
    project.write("app/Dockerfile.side", busybox_dockerfile("RUN echo side > /side"));
    let catalog = project.catalog(
        "[components.app]\nbuild = { context = \"app\" }\n\
         [components.side]\nbuild = { context = \"app\", dockerfile = \"app/Dockerfile.side\" }\ndepends_on = [\"app\"]\n",
    );
    let plan = plan(&catalog, "registry", &["side"], AREA, &Delivery::Registry(REGISTRY.to_owned()));
    let body = async {
        let built = build_all(&docker, &plan, &BuildOptions::default()).await.map_err(|e| e.to_string())?;
        let pushed = push_all(&docker, &plan, None).await.map_err(|e| e.to_string())?;
        let images: Vec<_> = pushed.iter().map(|p| p.image.clone()).collect();
        assert_eq!(
            images,
            [plan.image("app").unwrap().clone(), plan.image("side").unwrap().clone()],
            "the plan's order"
        );
        for (pushed, built) in pushed.iter().zip(&built) {
            let image = &pushed.image;
            assert_eq!(image.registry(), REGISTRY);
            let repository = image.name().trim_start_matches(&format!("{REGISTRY}/")).to_owned();
            assert_eq!(pushed.digest, served_digest(&repository, image.tag().unwrap()), "what the registry serves");
            let pinned = image.pinned(&pushed.digest).map_err(|e| e.to_string())?;
            assert_eq!(pinned.to_string(), format!("{image}@{}", pushed.digest));

            remove_image(&docker, image).await;
            assert!(docker.inspect_image(&image.to_string()).await.is_err(), "the local tag remains");
            let pull =
                CreateImageOptionsBuilder::new().from_image(&format!("{}@{}", image.name(), pushed.digest)).build();
            docker.create_image(Some(pull), None, None).try_collect::<Vec<_>>().await.map_err(|e| e.to_string())?;
            let pulled = docker
                .inspect_image(&format!("{}@{}", image.name(), pushed.digest))
                .await
                .map_err(|e| e.to_string())?;
            assert_eq!(pulled.id.as_deref(), Some(built.image_id.as_str()), "{image}");
        }
        Ok::<_, String>(())
    };
    clean_up_after(body, async {
        remove_built_images(&docker, &plan).await;
        for component in ["app", "side"] {
            let name = plan.image(component).unwrap().name();
            if let Ok(image) = docker.inspect_image(&name).await {
                for digest in image.repo_digests.unwrap_or_default() {
                    remove_reference(&docker, &digest).await;
                }
            }
        }
    })
    .await;
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn a_local_plan_has_nowhere_to_push() {
    let docker = engine(None).await;
    let project = Project::new();
    let catalog = project.busybox_catalog("app", "");
    let plan = plan(&catalog, "registry", &["app"], AREA, &Delivery::Local);
    let error = push_all(&docker, &plan, None).await.expect_err("nowhere to push");
    assert!(matches!(error, LoadError::NoRegistry { .. }), "{error}");
    assert!(error.to_string().contains("Delivery::Registry"), "{error}");
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn a_registry_that_does_not_answer_is_named_within_5_s() {
    let docker = engine(None).await;
    let project = Project::new();
    let catalog = project.busybox_catalog("app", "");
    // A TCP port below 1024 that nothing on this machine serves.
    let plan = plan(&catalog, "registry", &["app"], AREA, &Delivery::Registry("127.0.0.1:9".to_owned()));
    let started = std::time::Instant::now();
    let error = push_all(&docker, &plan, None).await.expect_err("nothing listens");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
    assert!(matches!(error, LoadError::Unreachable { .. }), "{error}");
    assert!(error.to_string().starts_with("registry 127.0.0.1:9 does not answer"), "{error}");
}

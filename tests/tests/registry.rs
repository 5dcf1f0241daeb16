//! Pushing built images to the loopback registry and pulling them back.

use bollard::query_parameters::CreateImageOptionsBuilder;
use e2e_infra::build::{build_all, BuildOptions};
use e2e_infra::load::registry::{push_all, LoadError};
use e2e_infra::Delivery;
use e2e_infra_tests::{
    clean_up_after, engine, plan, remove_built_images, remove_image, Project, REGISTRY,
};
use futures::TryStreamExt;

const AREA: &str = "docker-registry";

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn a_pushed_image_pulls_back_with_the_same_id() {
    let docker = engine(None).await;
    let project = Project::new();
    let catalog = project.busybox_catalog("app", "");
    let plan = plan(
        &catalog,
        "registry",
        &["app"],
        AREA,
        &Delivery::Registry(REGISTRY.to_owned()),
    );
    let image = plan.image("app").unwrap().clone();
    assert_eq!(image.registry(), REGISTRY);
    let body = async {
        let built = build_all(&docker, &plan, &BuildOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        let pushed = push_all(&docker, &plan, None)
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(pushed.len(), 1);
        assert_eq!(pushed[0].image, image);
        assert!(
            pushed[0].digest.starts_with("sha256:") && pushed[0].digest.len() == 71,
            "{}",
            pushed[0].digest
        );

        remove_image(&docker, &image).await;
        assert!(
            docker.inspect_image(&image.to_string()).await.is_err(),
            "the local tag remains"
        );

        let pull = CreateImageOptionsBuilder::new()
            .from_image(&image.name())
            .tag(image.tag().unwrap())
            .build();
        docker
            .create_image(Some(pull), None, None)
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| e.to_string())?;
        let pulled = docker
            .inspect_image(&image.to_string())
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(pulled.id.as_deref(), Some(built[0].image_id.as_str()));
        let digests = pulled.repo_digests.unwrap_or_default();
        assert!(
            digests.contains(&format!("{}@{}", image.name(), pushed[0].digest)),
            "{digests:?}"
        );
        Ok::<_, String>(())
    };
    clean_up_after(body, async {
        remove_built_images(&docker, &plan).await;
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
    let error = push_all(&docker, &plan, None)
        .await
        .expect_err("nowhere to push");
    assert!(matches!(error, LoadError::NoRegistry { .. }), "{error}");
    assert!(error.to_string().contains("Delivery::Registry"), "{error}");
}

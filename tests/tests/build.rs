//! Image builds against the real engine.

use std::time::Duration;

use bollard::query_parameters::RemoveImageOptionsBuilder;
use e2e_infra::build::{build_all, BuildError, BuildOptions};
use e2e_infra::error::error_chain;
use e2e_infra::{labels, Delivery};
use e2e_infra_tests::{
    busybox_dockerfile, clean_up_after, engine, plan, remove_built_images, unshared_busybox_dockerfile, Project,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const AREA: &str = "docker-build";

/// The seed's layout: context `ctx`, one Dockerfile in `ctx/docker/`, one
/// outside the context; build args, a target stage and labels reach the image.
#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn dockerfiles_inside_and_outside_the_context_with_args_and_target() {
    let docker = engine(None).await;
    let project = Project::new();
    project.busybox_context("ctx");
    let stages = "ARG GREETING=unset\nLABEL greeting=$GREETING\nENV GREETING_ENV=$GREETING\nRUN echo \"$GREETING\" > /greeting\n";
    project.write("ctx/docker/x.Dockerfile", busybox_dockerfile(stages));
    let outside = format!(
        "{}FROM base AS final\nLABEL stage=final\n",
        busybox_dockerfile(stages).replace("FROM scratch", "FROM scratch AS base")
    );
    project.write("outside/y.Dockerfile", outside);
    let catalog = project.catalog(
        r#"
[components.inner]
build = { context = "ctx", dockerfile = "ctx/docker/x.Dockerfile", args = { GREETING = "hello-inner" } }

[components.outer]
build = { context = "ctx", dockerfile = "outside/y.Dockerfile", args = { GREETING = "hello-outer" }, target = "base" }
"#,
    );
    let plan = plan(&catalog, "seed", &["inner", "outer"], AREA, &Delivery::Local);
    let built = build_all(&docker, &plan, &BuildOptions::default()).await;
    let body = async {
        let built = built.map_err(|e| e.to_string())?;
        assert_eq!(built.iter().map(|b| b.component.as_str()).collect::<Vec<_>>(), ["inner", "outer"]);
        for (outcome, greeting) in built.iter().zip(["hello-inner", "hello-outer"]) {
            assert!(!outcome.cached, "{} should have been built", outcome.component);
            assert_eq!(&outcome.image, plan.image(&outcome.component).unwrap());
            let image = docker.inspect_image(&outcome.image.to_string()).await.map_err(|e| e.to_string())?;
            assert_eq!(image.id.as_deref(), Some(outcome.image_id.as_str()));
            let config = image.config.unwrap_or_default();
            let image_labels = config.labels.unwrap_or_default();
            assert_eq!(image_labels.get("greeting").map(String::as_str), Some(greeting));
            assert!(config.env.unwrap_or_default().contains(&format!("GREETING_ENV={greeting}")));
            assert_eq!(image_labels.get(labels::BUILT_BY_RUN).map(String::as_str), Some(plan.run().as_str()));
            assert_eq!(image_labels.get(labels::BUILT_BY_CONSUMER).map(String::as_str), Some("seed"));
            assert_eq!(image_labels.get(labels::BUILT_FOR_COMPONENT), Some(&outcome.component));
            // Provenance only: a container started from the image must not
            // inherit the membership of a stack.
            for membership in [labels::MANAGED_BY, labels::RUN, labels::CONSUMER, labels::COMPONENT] {
                assert!(!image_labels.contains_key(membership), "{}: image carries `{membership}`", outcome.component);
            }
            assert!(image_labels.get(labels::INPUT_DIGEST).is_some_and(|d| d.starts_with("sha256:")));
            // The target stage stops before the final stage's label.
            assert!(!image_labels.contains_key("stage"), "{}: target stage ignored", outcome.component);
        }
        Ok::<_, String>(())
    };
    clean_up_after(body, async {
        remove_built_images(&docker, &plan).await;
    })
    .await;
}

/// Unchanged inputs are tagged, not rebuilt; an ignored file does not count;
/// a changed context file and `force` rebuild.
#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn the_input_digest_decides_whether_to_build() {
    let docker = engine(None).await;
    let project = Project::new();
    let catalog = project.busybox_catalog("app", "COPY config /config\n");
    project.write("app/config", "v1");
    project.write("app/.dockerignore", "scratch-notes\n");
    project.write("app/scratch-notes", "first");
    let opts = BuildOptions::default();
    let plans = std::cell::RefCell::new(Vec::new());
    let body = async {
        let build = |force: bool| {
            let p = plan(&catalog, "cache", &["app"], AREA, &Delivery::Local);
            plans.borrow_mut().push(p.clone());
            let docker = docker.clone();
            let opts = BuildOptions { force, ..opts.clone() };
            async move {
                let built = build_all(&docker, &p, &opts).await.map_err(|e| error_chain(&e))?;
                let tagged =
                    docker.inspect_image(&p.image("app").unwrap().to_string()).await.map_err(|e| e.to_string())?;
                assert_eq!(tagged.id.as_deref(), Some(built[0].image_id.as_str()), "the run's own tag names the image");
                Ok::<_, String>(built[0].clone())
            }
        };
        let first = build(false).await?;
        assert!(!first.cached);
        let again = build(false).await?;
        assert!(again.cached, "unchanged inputs were rebuilt");
        assert_eq!(again.image_id, first.image_id);

        project.write("app/scratch-notes", "second");
        let ignored = build(false).await?;
        assert!(ignored.cached, "a .dockerignored change triggered a build");
        assert_eq!(ignored.image_id, first.image_id);

        project.write("app/config", "v2");
        let changed = build(false).await?;
        assert!(!changed.cached, "a changed context file did not trigger a build");
        assert_ne!(changed.image_id, first.image_id);

        let forced = build(true).await?;
        assert!(!forced.cached);
        assert_ne!(forced.image_id, changed.image_id, "force reused the image");
        Ok::<_, String>(())
    };
    clean_up_after(body, async {
        let made = plans.take();
        for p in &made {
            remove_built_images(&docker, p).await;
        }
    })
    .await;
}

async fn failing_build(dockerfile_tail: &str) -> BuildError {
    failing_build_with(dockerfile_tail, BuildOptions::default()).await
}

async fn failing_build_with(dockerfile_tail: &str, options: BuildOptions) -> BuildError {
    let docker = engine(None).await;
    let project = Project::new();
    let catalog = project.busybox_catalog("broken", dockerfile_tail);
    let plan = plan(&catalog, "fails", &["broken"], AREA, &Delivery::Local);
    let result = build_all(&docker, &plan, &options).await;
    remove_built_images(&docker, &plan).await;
    let error = result.expect_err("the build should fail");
    eprintln!("{error}");
    error
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn a_failing_run_step_is_named() {
    let error = failing_build("RUN echo about-to-fail\nRUN /bin/busybox false\n").await;
    let message = error.to_string();
    assert!(matches!(error, BuildError::Failed { .. }), "{message}");
    assert!(message.contains("`broken`"), "{message}");
    assert!(message.contains("RUN /bin/busybox false"), "{message}");
    assert!(message.contains("about-to-fail"), "the last output lines are missing: {message}");
}

/// A build the engine stops talking about is given up after the silence
/// bound, naming the step it was on, rather than waited for without end.
#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn a_silent_build_is_given_up_after_the_silence_bound() {
    // Steps that print nothing for a while are normal on a busy engine
    // (Docker 29's containerd store commits a step in seconds then).
    let silence = Duration::from_secs(6);
    let started = std::time::Instant::now();
    let error = failing_build_with(
        "RUN echo going-quiet\nRUN /bin/busybox sleep 120\n",
        BuildOptions { force: true, silence, ..BuildOptions::default() },
    )
    .await;
    let elapsed = started.elapsed();
    let message = error.to_string();
    assert!(matches!(error, BuildError::Quiet { .. }), "{message}");
    assert!(message.contains("RUN /bin/busybox sleep 120"), "{message}");
    assert!(message.contains("E2E_INFRA_BUILD_SILENCE"), "{message}");
    assert!(elapsed < Duration::from_secs(60), "given up after {elapsed:?}");
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn a_missing_copy_source_is_named() {
    let error = failing_build("COPY not-there /x\n").await;
    let message = error.to_string();
    assert!(message.contains("COPY not-there /x"), "{message}");
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn a_missing_borrowed_image_is_not_pulled() {
    let docker = engine(None).await;
    let project = Project::new();
    let image = format!("localhost/e2e-infra-absent:{}", std::process::id());
    let catalog = project.catalog(&format!("[components.absent]\nimage = \"{image}\"\n"));
    let plan = plan(&catalog, "borrow", &["absent"], AREA, &Delivery::Local);
    let started = std::time::Instant::now();
    let error = build_all(&docker, &plan, &BuildOptions::default()).await.expect_err("must fail");
    assert!(started.elapsed() < Duration::from_secs(20));
    let message = error.to_string();
    assert!(matches!(error, BuildError::BorrowedMissing { .. }), "{message}");
    assert!(message.contains(&image) && message.contains("cannot be pulled"), "{message}");
}

/// Builds run side by side; the first failure ends the others instead of
/// waiting for them.
#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn one_failure_stops_the_other_builds() {
    let docker = engine(None).await;
    let project = Project::new();
    project.busybox_context("ctx");
    project.write("slow.Dockerfile", busybox_dockerfile("RUN sleep 120\n"));
    project.write("fails.Dockerfile", busybox_dockerfile("RUN sleep 2 && false\n"));
    let catalog = project.catalog(
        "[components.slow]\nbuild = { context = \"ctx\", dockerfile = \"slow.Dockerfile\" }\n\
         [components.fails]\nbuild = { context = \"ctx\", dockerfile = \"fails.Dockerfile\" }\n",
    );
    let plan = plan(&catalog, "together", &["slow", "fails"], AREA, &Delivery::Local);
    let started = std::time::Instant::now();
    let result =
        build_all(&docker, &plan, &BuildOptions { force: false, concurrency: 2, ..BuildOptions::default() }).await;
    let elapsed = started.elapsed();
    let slow_tagged = docker.inspect_image(&plan.image("slow").unwrap().to_string()).await.is_ok();
    remove_built_images(&docker, &plan).await;
    let error = result.expect_err("one build fails");
    assert!(matches!(&error, BuildError::Failed { component, .. } if component == "fails"), "{error}");
    assert!(elapsed < Duration::from_secs(60), "waited {elapsed:?} for the slow build");
    assert!(!slow_tagged, "the cancelled build still produced its image");
}

/// A clean-up on the same engine that removes an old image, and with it the
/// untagged parents a running build has just taken from the cache, does not
/// fail that build: it is built again without the cache. The build is held
/// between its cached steps and the next one by an `ADD` of a URL that
/// answers only once the old image's tags are removed. (Docker 29's
/// containerd store then removes the cached parents under the build;
/// the classic store keeps them.)
#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn a_cached_step_removed_during_the_build_is_built_again() {
    let docker = engine(None).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/payload", listener.local_addr().expect("address"));
    let (asked, mut first_asked) = tokio::sync::mpsc::channel::<()>(1);
    let (answer, mut may_answer) = tokio::sync::mpsc::channel::<()>(1);
    let server = tokio::spawn(async move {
        let mut held = true;
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = [0_u8; 4096];
            let _ = stream.read(&mut request).await;
            if std::mem::take(&mut held) {
                let _ = asked.send(()).await;
                may_answer.recv().await;
            }
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 8\r\n\r\npayload\n").await;
        }
    });
    let project = Project::new();
    project.busybox_context("ctx");
    project.write("old.Dockerfile", unshared_busybox_dockerfile("LABEL which=old\n"));
    project.write("new.Dockerfile", unshared_busybox_dockerfile(&format!("ADD {url} /payload\nLABEL which=new\n")));
    let catalog = project.catalog(
        "[components.old]\nbuild = { context = \"ctx\", dockerfile = \"old.Dockerfile\" }\n\
         [components.new]\nbuild = { context = \"ctx\", dockerfile = \"new.Dockerfile\" }\n",
    );
    let old = plan(&catalog, "lost-step", &["old"], AREA, &Delivery::Local);
    let new = plan(&catalog, "lost-step", &["new"], AREA, &Delivery::Local);
    let body = async {
        let old_built = build_all(&docker, &old, &BuildOptions::default()).await.map_err(|e| error_chain(&e))?;
        let building = tokio::spawn({
            let (docker, new) = (docker.clone(), new.clone());
            async move { build_all(&docker, &new, &BuildOptions::default()).await.map_err(|e| error_chain(&e)) }
        });
        first_asked.recv().await.ok_or("the build never fetched its URL")?;
        // The old image and its untagged parents: the new build's cached steps.
        let removal = RemoveImageOptionsBuilder::new().force(false).noprune(false).build();
        let image = docker.inspect_image(&old_built[0].image_id).await.map_err(|e| e.to_string())?;
        for reference in image.repo_tags.unwrap_or_default() {
            docker.remove_image(&reference, Some(removal.clone()), None).await.map_err(|e| e.to_string())?;
        }
        answer.send(()).await.map_err(|e| e.to_string())?;
        let built = building.await.map_err(|e| e.to_string())??;
        assert!(!built[0].cached);
        let image = docker.inspect_image(&new.image("new").unwrap().to_string()).await.map_err(|e| e.to_string())?;
        let which = image.config.and_then(|c| c.labels).and_then(|l| l.get("which").cloned());
        assert_eq!(which.as_deref(), Some("new"));
        Ok::<_, String>(())
    };
    clean_up_after(body, async {
        server.abort();
        remove_built_images(&docker, &old).await;
        remove_built_images(&docker, &new).await;
    })
    .await;
}

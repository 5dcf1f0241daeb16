//! The build cache, image provenance, housekeeping and bounded engine calls,
//! against the real engine: what a cache hit is, what a built image may make
//! a container look like, which tags go, and how long a frozen or slow
//! engine may hold a run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder, TagImageOptionsBuilder};
use bollard::Docker;
use e2e_infra::build::{build_all, cache_ref, BuildError, BuildOptions, ContextError};
use e2e_infra::cli_support::housekeeping::prune_run_tags;
use e2e_infra::deploy::docker::{remove_labelled, up, DockerError};
use e2e_infra::engine::{connect_within, EngineError};
use e2e_infra::error::error_chain;
use e2e_infra::labels::StackLabels;
use e2e_infra::{labels, Delivery, ImageRef, Plan};
use e2e_infra_tests::{
    clean_up_after, engine, engine_host, plan, podman_host, remove_built_images, remove_reference, unique,
    unshared_busybox_dockerfile, Project,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};

const AREA: &str = "docker-cache";

/// Builds `dockerfile` (which may name local images in `FROM`) as `tag`,
/// the way a user would with `docker build`.
async fn build_by_hand(docker: &Docker, tag: &str, dockerfile: &str) {
    e2e_infra_tests::kind_node::build(docker, tag, dockerfile, Vec::new(), HashMap::new()).await;
}

async fn image_id(docker: &Docker, reference: &str) -> Result<String, String> {
    docker
        .inspect_image(reference)
        .await
        .map_err(|e| format!("inspecting {reference}: {e}"))?
        .id
        .ok_or_else(|| format!("{reference} has no id"))
}

async fn digest_of(docker: &Docker, image: &ImageRef) -> Result<String, String> {
    let inspected = docker.inspect_image(&image.to_string()).await.map_err(|e| e.to_string())?;
    inspected
        .config
        .and_then(|c| c.labels)
        .and_then(|l| l.get(labels::INPUT_DIGEST).cloned())
        .ok_or_else(|| format!("{image} has no input digest label"))
}

/// A user's image built `FROM` a cached one inherits its labels, input
/// digest included. It is never taken for the cache: while the cache
/// reference exists the hit is the catalog's build, and once the catalog's
/// references are gone the next run builds.
#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn a_derived_image_that_inherits_the_labels_is_not_a_cache_hit() {
    let docker = engine(None).await;
    let project = Project::new();
    let catalog = project.unshared_busybox_catalog("app", "CMD [\"sleep\", \"60\"]\n");
    let first = plan(&catalog, "derived", &["app"], AREA, &Delivery::Local);
    let second = plan(&catalog, "derived", &["app"], AREA, &Delivery::Local);
    let third = plan(&catalog, "derived", &["app"], AREA, &Delivery::Local);
    let derived = format!("localhost/{}:mine", unique("derived"));
    let body = async {
        let built = build_all(&docker, &first, &BuildOptions::default()).await.map_err(|e| error_chain(&e))?;
        let original = built[0].image_id.clone();
        let digest = digest_of(&docker, &built[0].image).await?;
        build_by_hand(
            &docker,
            &derived,
            &format!("FROM {}\nLABEL owner=someone-else\nCMD [\"true\"]\n", built[0].image),
        )
        .await;
        let derived_id = image_id(&docker, &derived).await?;
        let inherited = docker.inspect_image(&derived).await.map_err(|e| e.to_string())?;
        assert_eq!(
            inherited.config.and_then(|c| c.labels).unwrap_or_default().get(labels::INPUT_DIGEST),
            Some(&digest),
            "the derived image should inherit the digest label for this test to mean anything"
        );

        let hit = build_all(&docker, &second, &BuildOptions::default()).await.map_err(|e| error_chain(&e))?;
        assert!(hit[0].cached);
        assert_eq!(hit[0].image_id, original, "the derived image was taken for the cache");
        assert_ne!(hit[0].image_id, derived_id);

        // Only the derived image is left carrying the digest label.
        remove_reference(&docker, &first.image("app").unwrap().to_string()).await;
        remove_reference(&docker, &second.image("app").unwrap().to_string()).await;
        remove_reference(&docker, &cache_ref(&built[0].image, &digest)).await;
        let rebuilt = build_all(&docker, &third, &BuildOptions::default()).await.map_err(|e| error_chain(&e))?;
        assert!(!rebuilt[0].cached, "an image found only by its labels counted as a hit");
        assert_ne!(rebuilt[0].image_id, derived_id);
        Ok::<_, String>(())
    };
    clean_up_after(body, async {
        for p in [&first, &second, &third] {
            remove_built_images(&docker, p).await;
        }
        remove_reference(&docker, &derived).await;
    })
    .await;
}

/// A container a user starts from a built image carries only the image's
/// provenance labels, so it is nobody's stack member.
#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn a_container_started_by_hand_from_a_built_image_is_not_a_stack_member() {
    let docker = engine(None).await;
    let project = Project::new();
    let catalog = project.unshared_busybox_catalog("app", "CMD [\"sleep\", \"60\"]\n");
    let plan = plan(&catalog, "stranger", &["app"], AREA, &Delivery::Local);
    let name = unique("by-hand");
    let body = async {
        build_all(&docker, &plan, &BuildOptions::default()).await.map_err(|e| error_chain(&e))?;
        let body = ContainerCreateBody { image: Some(plan.image("app").unwrap().to_string()), ..Default::default() };
        docker
            .create_container(Some(CreateContainerOptionsBuilder::new().name(&name).build()), body)
            .await
            .map_err(|e| e.to_string())?;
        docker.start_container(&name, None).await.map_err(|e| e.to_string())?;
        let inspected = docker.inspect_container(&name, None).await.map_err(|e| e.to_string())?;
        let container_labels = inspected.config.and_then(|c| c.labels).unwrap_or_default();
        assert_eq!(
            container_labels.get(labels::BUILT_BY_RUN).map(String::as_str),
            Some(plan.run().as_str()),
            "provenance is inherited"
        );
        for membership in [labels::MANAGED_BY, labels::RUN, labels::CONSUMER, labels::COMPONENT] {
            assert!(!container_labels.contains_key(membership), "inherited `{membership}`");
        }
        let stacks = e2e_infra::cli_support::teardown::list(&docker).await.map_err(|e| e.to_string())?.stacks;
        assert!(
            stacks.iter().all(|s| !s.containers.contains(&name) && s.key.run() != plan.run()),
            "a container started by hand is listed as a stack member: {stacks:?}"
        );
        Ok::<_, String>(())
    };
    clean_up_after(body, async {
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        let _ = docker.remove_container(&name, Some(options)).await;
        remove_built_images(&docker, &plan).await;
    })
    .await;
}

/// Five runs, each with changed inputs: the run tags of the newest two stay,
/// older ones go, except one a container uses; cache references and a tag a
/// user gave stay; a build's own housekeeping spares a fresh image.
#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn old_run_tags_go_and_cache_references_user_tags_and_tags_in_use_stay() {
    let docker = engine(None).await;
    let project = Project::new();
    // A component name of its own: housekeeping looks at the whole repository.
    let component = unique("keep").replace('-', "");
    let catalog = project.unshared_busybox_catalog(&component, "COPY version /version\nCMD [\"sleep\", \"60\"]\n");
    let plans = std::cell::RefCell::new(Vec::new());
    let user_tag = format!("localhost/{component}:v1");
    let user_container = unique("uses-old-tag");
    let body = async {
        let mut caches = Vec::new();
        for version in 0..5 {
            project.write(&format!("{component}/version"), version.to_string());
            let p = plan(&catalog, "keep", &[component.as_str()], AREA, &Delivery::Local);
            let built = build_all(&docker, &p, &BuildOptions { keep_runs: 2, ..BuildOptions::default() })
                .await
                .map_err(|e| e.to_string())?;
            caches.push(cache_ref(&built[0].image, &digest_of(&docker, &built[0].image).await?));
            plans.borrow_mut().push(p);
            // Distinct creation times order the runs.
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        let run_tags: Vec<String> = plans.borrow().iter().map(|p| p.image(&component).unwrap().to_string()).collect();
        for tag in &run_tags {
            image_id(&docker, tag).await.map_err(|e| format!("the build's housekeeping removed a fresh tag: {e}"))?;
        }
        let (repo, tag) = user_tag.rsplit_once(':').unwrap();
        docker
            .tag_image(&run_tags[0], Some(TagImageOptionsBuilder::new().repo(repo).tag(tag).build()))
            .await
            .map_err(|e| e.to_string())?;
        let body = ContainerCreateBody { image: Some(run_tags[1].clone()), ..Default::default() };
        docker
            .create_container(Some(CreateContainerOptionsBuilder::new().name(&user_container).build()), body)
            .await
            .map_err(|e| e.to_string())?;

        let started = Instant::now();
        let removed = prune_run_tags(&docker, Some(&[component.as_str()]), 2, Duration::ZERO, &[])
            .await
            .map_err(|e| e.to_string())?;
        eprintln!("pruned in {:?}: {removed:?}", started.elapsed());
        let mut gone: Vec<&str> = removed.iter().map(|r| r.reference.as_str()).collect();
        gone.sort_unstable();
        let mut expected = vec![run_tags[0].as_str(), run_tags[2].as_str()];
        expected.sort_unstable();
        assert_eq!(gone, expected, "tags of runs 0 and 2 go; 1 is in use, 3 and 4 are the newest");
        for kept in [&run_tags[1], &run_tags[3], &run_tags[4], &user_tag] {
            image_id(&docker, kept).await?;
        }
        for cache in &caches {
            image_id(&docker, cache).await.map_err(|e| format!("a cache reference was removed: {e}"))?;
        }
        let again = prune_run_tags(&docker, Some(&[component.as_str()]), 2, Duration::ZERO, &[])
            .await
            .map_err(|e| e.to_string())?;
        assert!(again.is_empty(), "{again:?}");
        Ok::<_, String>(())
    };
    let cleanup_docker = docker.clone();
    clean_up_after(body, async {
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        let _ = cleanup_docker.remove_container(&user_container, Some(options)).await;
        remove_reference(&cleanup_docker, &user_tag).await;
        for p in &plans.take() {
            remove_built_images(&cleanup_docker, p).await;
        }
        // Cache references of runs whose tag housekeeping removed.
        let filter = HashMap::from([("reference", vec![format!("localhost/{component}")])]);
        let options = bollard::query_parameters::ListImagesOptionsBuilder::new().filters(&filter).build();
        for image in cleanup_docker.list_images(Some(options)).await.unwrap_or_default() {
            for reference in image.repo_tags {
                remove_reference(&cleanup_docker, &reference).await;
            }
        }
    })
    .await;
}

/// A FIFO in the context used to hang the build (and every process waiting
/// for it) forever; it is refused, by path, before anything is sent.
#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn a_fifo_in_the_build_context_is_refused_with_its_path() {
    let docker = engine(None).await;
    let project = Project::new();
    let catalog = project.unshared_busybox_catalog("app", "");
    let fifo = project.path().join("app/events.pipe");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let plan = plan(&catalog, "fifo", &["app"], AREA, &Delivery::Local);
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(20), build_all(&docker, &plan, &BuildOptions::default()))
        .await
        .expect("the build hung on the FIFO");
    let elapsed = started.elapsed();
    remove_built_images(&docker, &plan).await;
    let error = result.expect_err("a FIFO cannot be part of a context");
    eprintln!("after {elapsed:?}: {error}");
    assert!(
        matches!(&error, BuildError::Context { source: ContextError::SpecialFile { kind: "FIFO", path }, .. } if path == &fifo),
        "{error}"
    );
    assert!(error_chain(&error).contains(&fifo.display().to_string()), "{error}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
}

/// A byte stream to an engine, over a Unix socket or TCP.
trait EngineStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> EngineStream for T {}

/// Opens a connection to the engine at `host` (`unix:///path` or
/// `tcp://host:port`, as in `DOCKER_HOST`).
async fn dial(host: &str) -> std::io::Result<Box<dyn EngineStream>> {
    match (host.strip_prefix("unix://"), host.strip_prefix("tcp://")) {
        (Some(path), _) => Ok(Box::new(UnixStream::connect(path).await?)),
        (_, Some(addr)) => Ok(Box::new(TcpStream::connect(addr).await?)),
        _ => Err(std::io::Error::other(format!("unsupported engine address {host}"))),
    }
}

/// Forwards TCP connections to the engine at `host`, none before `delay`
/// has passed since the proxy started (an engine busy at first); once
/// `frozen` is set, or a request contains `freeze_at`, requests are
/// swallowed and nothing answers, as with a frozen engine. Returns the
/// `tcp://` address.
async fn proxy(host: String, delay: Duration, frozen: Arc<AtomicBool>) -> String {
    proxy_freezing_at(host, delay, frozen, None).await
}

async fn proxy_freezing_at(
    host: String,
    delay: Duration,
    frozen: Arc<AtomicBool>,
    freeze_at: Option<&'static str>,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answers_from = tokio::time::Instant::now() + delay;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let frozen = frozen.clone();
            let host = host.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(answers_from).await;
                let Ok(engine) = dial(&host).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut engine_read, mut engine_write) = tokio::io::split(engine);
                let upstream = async {
                    let mut buf = vec![0; 64 * 1024];
                    loop {
                        let n = match client_read.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let chunk = String::from_utf8_lossy(&buf[..n]);
                        if freeze_at.is_some_and(|at| chunk.contains(at)) {
                            frozen.store(true, Ordering::SeqCst);
                        }
                        if frozen.load(Ordering::SeqCst) {
                            // Hold the connection open and never answer.
                            std::future::pending::<()>().await;
                        }
                        if engine_write.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                let downstream = tokio::io::copy(&mut engine_read, &mut client_write);
                tokio::select! {
                    () = upstream => {}
                    _ = downstream => {}
                }
            });
        }
    });
    format!("tcp://{addr}")
}

/// A one-component stack with a 5 s readiness timeout, for the frozen engines.
fn frozen_engine_project() -> (Project, Plan) {
    let project = Project::new();
    project.busybox_context("ctx");
    project.write("ctx/Dockerfile", unshared_busybox_dockerfile(""));
    let catalog = project.catalog(
        "[components.web]\nbuild = { context = \"ctx\" }\ndocker = { ports = [8080], command = [\"httpd\", \"-f\", \"-p\", \"8080\"], ready = { tcp = 8080, timeout = \"5s\" } }\n",
    );
    let plan = plan(&catalog, "frozen", &["web"], AREA, &Delivery::Local);
    (project, plan)
}

/// An engine that freezes after the build: `up` used to wait on it for the
/// client's 120 s request timeout per call; it now fails within the
/// component's readiness timeout, naming the engine's address.
#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn a_frozen_engine_fails_setup_within_the_readiness_timeout() {
    let frozen = Arc::new(AtomicBool::new(false));
    let host = proxy(engine_host(), Duration::ZERO, frozen.clone()).await;
    let docker = connect_within(&host, Duration::from_secs(10)).await.unwrap();
    let direct = engine(None).await;
    let (_project, plan) = frozen_engine_project();
    let body = async {
        build_all(&docker, &plan, &BuildOptions::default()).await.map_err(|e| error_chain(&e))?;
        frozen.store(true, Ordering::SeqCst);
        let started = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(60), up(&docker, &plan, &StackLabels::of(&plan), None))
            .await
            .map_err(|_| "up still waited on the frozen engine after 60 s".to_owned())?;
        let elapsed = started.elapsed();
        let error = result.expect_err("the engine is frozen");
        eprintln!("after {elapsed:?}: {error}");
        assert!(matches!(error, DockerError::Silent { .. }), "{error}");
        let address = host.trim_start_matches("tcp://");
        assert!(error_chain(&error).contains(address), "{}", error_chain(&error));
        assert!(elapsed < Duration::from_secs(8), "{elapsed:?}");
        Ok::<_, String>(())
    };
    clean_up_after(body, async {
        remove_labelled(&direct, &labels::filter(plan.key())).await.unwrap();
        remove_built_images(&direct, &plan).await;
    })
    .await;
}

async fn slow_engine_is_waited_for(engine: String) {
    // Busy for longer than the first ping's 2 s.
    let host = proxy(engine, Duration::from_secs(3), Arc::new(AtomicBool::new(false))).await;
    let started = Instant::now();
    let docker = connect_within(&host, Duration::from_secs(20)).await.unwrap_or_else(|e| panic!("{e}"));
    let elapsed = started.elapsed();
    eprintln!("connected after {elapsed:?}");
    assert!(elapsed > Duration::from_secs(2) && elapsed < Duration::from_secs(10), "{elapsed:?}");
    docker.ping().await.unwrap();
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn a_slow_docker_engine_is_pinged_again_until_it_answers() {
    slow_engine_is_waited_for(engine_host()).await;
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn a_slow_podman_service_is_pinged_again_until_it_answers() {
    slow_engine_is_waited_for(podman_host()).await;
}

/// A refused connection means no engine: it fails at once, not after the
/// whole connection budget.
#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn a_refused_connection_fails_at_once() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let host = format!("tcp://{addr}");
    let started = Instant::now();
    let error = connect_within(&host, Duration::from_secs(30)).await.expect_err("nothing listens");
    let elapsed = started.elapsed();
    eprintln!("after {elapsed:?}: {error}");
    assert!(matches!(error, EngineError::Unreachable { .. }), "{error}");
    assert!(error.to_string().contains(&host), "{error}");
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
}

/// The engine freezes at the moment the container is created, after the
/// network: the error names the component, the call and the engine, within
/// the readiness timeout, and no cleanup waits on the frozen engine.
#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn an_engine_frozen_at_container_creation_fails_within_the_readiness_timeout() {
    let frozen = Arc::new(AtomicBool::new(false));
    let host = proxy_freezing_at(engine_host(), Duration::ZERO, frozen, Some("/containers/create")).await;
    let docker = connect_within(&host, Duration::from_secs(10)).await.unwrap();
    let direct = engine(None).await;
    let (_project, plan) = frozen_engine_project();
    let body = async {
        build_all(&direct, &plan, &BuildOptions::default()).await.map_err(|e| error_chain(&e))?;
        let started = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(60), up(&docker, &plan, &StackLabels::of(&plan), None))
            .await
            .map_err(|_| "up still waited on the frozen engine after 60 s".to_owned())?;
        let elapsed = started.elapsed();
        let error = result.expect_err("the engine is frozen");
        eprintln!("after {elapsed:?}: {error}");
        let message = error_chain(&error);
        assert!(matches!(error, DockerError::Silent { .. }), "{message}");
        assert!(message.contains("`web`") && message.contains("creating the container"), "{message}");
        assert!(message.contains(host.trim_start_matches("tcp://")), "{message}");
        assert!(elapsed < Duration::from_secs(8), "{elapsed:?}");
        Ok::<_, String>(())
    };
    clean_up_after(body, async {
        remove_labelled(&direct, &labels::filter(plan.key())).await.unwrap();
        remove_built_images(&direct, &plan).await;
    })
    .await;
}

/// Sets the modification time of `path`.
fn set_mtime(path: &std::path::Path, time: SystemTime) {
    let file = std::fs::File::options().write(true).open(path).expect("open for set_modified");
    file.set_modified(time).expect("set_modified");
}

/// The digests of a context's files are kept between runs: an unchanged
/// file is not read again, a touched one is read again and the build still
/// hits the cache, and one rewritten to the same size under a new time
/// misses it.
#[tokio::test]
async fn context_file_digests_are_reused_until_a_file_changes() {
    let docker = engine(None).await;
    let project = Project::new();
    let catalog = project.unshared_busybox_catalog("app", "COPY data /data\n");
    let data = project.write("app/data", "version 1");
    // Older than the window in which a change could hide in the clock's tick.
    let ago = |minutes: u64| SystemTime::now() - Duration::from_secs(60 * minutes);
    for entry in std::fs::read_dir(project.path().join("app")).expect("context") {
        set_mtime(&entry.expect("entry").path(), ago(60));
    }
    let plans: Vec<Plan> = (0..4).map(|_| plan(&catalog, "fingerprint", &["app"], AREA, &Delivery::Local)).collect();
    let body = async {
        let build = |p: &Plan| {
            let p = p.clone();
            let docker = docker.clone();
            async move {
                build_all(&docker, &p, &BuildOptions::default())
                    .await
                    .map(|mut b| b.remove(0))
                    .map_err(|e| e.to_string())
            }
        };
        let first = build(&plans[0]).await?;
        assert!(!first.cached);
        let files = first.hashing.hashed + first.hashing.reused;
        assert!(files >= 4, "{:?}", first.hashing);

        let unchanged = build(&plans[1]).await?;
        assert!(unchanged.cached);
        assert_eq!((unchanged.hashing.hashed, unchanged.hashing.reused), (0, files), "{:?}", unchanged.hashing);

        set_mtime(&data, ago(30));
        let touched = build(&plans[2]).await?;
        assert!(touched.cached, "a touched file with the same content missed the cache");
        assert_eq!(touched.hashing.hashed, 1, "{:?}", touched.hashing);
        assert_eq!(touched.image_id, first.image_id);

        std::fs::write(&data, "version 2").expect("rewrite");
        set_mtime(&data, ago(20));
        let changed = build(&plans[3]).await?;
        assert!(!changed.cached, "a file changed to the same size hit the cache");
        assert_eq!(changed.hashing.hashed, 1, "{:?}", changed.hashing);
        assert_ne!(changed.image_id, first.image_id);
        Ok::<_, String>(())
    };
    clean_up_after(body, async {
        for p in &plans {
            remove_built_images(&docker, p).await;
        }
    })
    .await;
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn pruning_one_consumers_run_tags_leaves_other_consumers_tags() {
    use e2e_infra::cli_support::housekeeping::prune_consumer_run_tags;
    let docker = engine(None).await;
    let project = Project::new();
    let (plan, built) = e2e_infra_tests::busybox_image(&docker, &project, "prune-consumer", "").await;
    let repository = built.image.to_string().rsplit_once(':').unwrap().0.to_owned();
    let consumer = e2e_infra_tests::unique("pruned");
    let tags: Vec<String> = ["pruned", "other"]
        .iter()
        .flat_map(|who| {
            let who = if *who == "pruned" { consumer.clone() } else { format!("{consumer}-x") };
            ["0000000a", "0000000b"].map(|hex| format!("{who}-{hex}"))
        })
        .collect();
    let body = async {
        for tag in &tags {
            let options = TagImageOptionsBuilder::new().repo(&repository).tag(tag).build();
            docker.tag_image(&built.image.to_string(), Some(options)).await.map_err(|e| e.to_string())?;
        }
        let removed = prune_consumer_run_tags(
            &docker,
            &e2e_infra::Consumer::new(&consumer).map_err(|e| e.to_string())?,
            0,
            Duration::ZERO,
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut gone: Vec<String> = removed.into_iter().map(|r| r.reference).collect();
        gone.sort_unstable();
        assert_eq!(gone, [format!("{repository}:{}", tags[0]), format!("{repository}:{}", tags[1])]);
        for other in &tags[2..] {
            image_id(&docker, &format!("{repository}:{other}"))
                .await
                .map_err(|e| format!("another consumer's tag went: {e}"))?;
        }
        image_id(&docker, &built.image.to_string()).await.map_err(|e| format!("the build's own tag went: {e}"))?;
        Ok::<_, String>(())
    };
    clean_up_after(body, async {
        for tag in &tags {
            let _ = docker
                .remove_image(
                    &format!("{repository}:{tag}"),
                    None::<bollard::query_parameters::RemoveImageOptions>,
                    None,
                )
                .await;
        }
        remove_built_images(&docker, &plan).await;
    })
    .await;
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn another_image_tagged_onto_a_cache_reference_is_not_served() {
    let docker = engine(None).await;
    let project = Project::new();
    let catalog = project.unshared_busybox_catalog("retagged", "");
    let first = plan(&catalog, "retag", &["retagged"], AREA, &Delivery::Local);
    let second = plan(&catalog, "retag", &["retagged"], AREA, &Delivery::Local);
    let derived = format!("localhost/{}:derived", unique("retag"));
    let body = async {
        let built = build_all(&docker, &first, &BuildOptions::default()).await.map_err(|e| error_chain(&e))?;
        let cache = cache_ref(&built[0].image, &digest_of(&docker, &built[0].image).await?);
        // Built FROM the cached image: it inherits every label, the input
        // digest included, and is then tagged onto the cache reference.
        build_by_hand(&docker, &derived, &format!("FROM {}\nLABEL derived=yes\n", built[0].image)).await;
        let derived_id = image_id(&docker, &derived).await?;
        let (repo, tag) = cache.rsplit_once(':').unwrap();
        let options = TagImageOptionsBuilder::new().repo(repo).tag(tag).build();
        docker.tag_image(&derived, Some(options)).await.map_err(|e| e.to_string())?;

        let again = build_all(&docker, &second, &BuildOptions::default()).await.map_err(|e| error_chain(&e))?;
        assert_ne!(again[0].image_id, derived_id, "the retagged image was served as the cache: {}", again[0].output);
        assert_eq!(image_id(&docker, &cache).await?, again[0].image_id, "the cache reference was not moved back");
        Ok::<_, String>(())
    };
    clean_up_after(body, async {
        remove_reference(&docker, &derived).await;
        remove_built_images(&docker, &first).await;
        remove_built_images(&docker, &second).await;
    })
    .await;
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn an_untagged_image_a_forced_build_left_is_removed_by_housekeeping() {
    use e2e_infra::cli_support::housekeeping::UNTAGGED;
    let docker = engine(None).await;
    let project = Project::new();
    let catalog = project.unshared_busybox_catalog("abandoned", "");
    let run = plan(&catalog, "abandon", &["abandoned"], AREA, &Delivery::Local);
    let body = async {
        let first = build_all(&docker, &run, &BuildOptions::default()).await.map_err(|e| error_chain(&e))?;
        // A forced build moves the run tag and the cache reference to a new
        // image: the first is left with its labels and no reference, as a
        // build killed before its tag leaves one.
        let forced = BuildOptions { force: true, ..BuildOptions::default() };
        let second = build_all(&docker, &run, &forced).await.map_err(|e| error_chain(&e))?;
        assert_ne!(first[0].image_id, second[0].image_id);
        let abandoned = docker.inspect_image(&first[0].image_id).await.map_err(|e| e.to_string())?;
        assert!(abandoned.repo_tags.unwrap_or_default().is_empty(), "the first image still has references");

        let component = run.components()[0].name.clone();
        let removed = prune_run_tags(&docker, Some(&[component.as_str()]), 3, Duration::ZERO, &[])
            .await
            .map_err(|e| e.to_string())?;
        let untagged: Vec<&str> =
            removed.iter().filter(|r| r.reference == UNTAGGED).map(|r| r.image_id.as_str()).collect();
        // Untagged images an earlier run of this test left under the same
        // component name go too.
        assert!(untagged.contains(&first[0].image_id.as_str()), "{untagged:?}");
        assert!(docker.inspect_image(&first[0].image_id).await.is_err(), "the untagged image is still there");
        image_id(&docker, &second[0].image.to_string()).await?;
        Ok::<_, String>(())
    };
    clean_up_after(body, remove_built_images(&docker, &run)).await;
}

/// A base image rebuilt under the same reference, as a base-image script
/// does when its inputs change, rebuilds the image built `FROM` it; the
/// base left as it is lets the image be reused.
#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn a_base_rebuilt_under_the_same_reference_rebuilds_its_dependent() {
    let docker = engine(None).await;
    let project = Project::new();
    let base = format!("localhost/{}:base", unique("rebased"));
    let other = format!("localhost/{}:other", unique("rebased"));
    project.busybox_context("dependent");
    project.write("dependent/Dockerfile", format!("ARG BASE={base}\nFROM ${{BASE}}\nCOPY nonce /nonce\n"));
    let catalog = project.catalog("[components.dependent]\nbuild = { context = \"dependent\" }\n");
    let runs: Vec<Plan> = (0..3).map(|_| plan(&catalog, "rebase", &["dependent"], AREA, &Delivery::Local)).collect();
    let body = async {
        // Layerless images of this test's own: nothing shared to remove.
        let layerless = |marker: &str| format!("FROM scratch\nLABEL marker={marker}\n");
        build_by_hand(&docker, &base, &layerless(&base)).await;
        let first = build_all(&docker, &runs[0], &BuildOptions::default()).await.map_err(|e| error_chain(&e))?;
        let same = build_all(&docker, &runs[1], &BuildOptions::default()).await.map_err(|e| error_chain(&e))?;
        assert!(same[0].cached, "the base is unchanged, yet the dependent was built: {}", same[0].output);
        assert_eq!(same[0].image_id, first[0].image_id);

        // Another image under the base's reference.
        build_by_hand(&docker, &other, &layerless(&other)).await;
        let (repo, tag) = base.rsplit_once(':').unwrap();
        let options = TagImageOptionsBuilder::new().repo(repo).tag(tag).build();
        docker.tag_image(&other, Some(options)).await.map_err(|e| e.to_string())?;
        let rebuilt = build_all(&docker, &runs[2], &BuildOptions::default()).await.map_err(|e| error_chain(&e))?;
        assert!(!rebuilt[0].cached, "the base changed, yet the dependent was reused: {}", rebuilt[0].output);
        assert_ne!(rebuilt[0].image_id, first[0].image_id);
        Ok::<_, String>(())
    };
    clean_up_after(body, async {
        for run in &runs {
            remove_built_images(&docker, run).await;
        }
        remove_reference(&docker, &base).await;
        remove_reference(&docker, &other).await;
    })
    .await;
}

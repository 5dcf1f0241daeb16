//! The Docker backend against the real engine, and connecting to no engine.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::query_parameters::ListContainersOptionsBuilder;
use bollard::Docker;
use e2e_infra::deploy::docker::{container_name, remove_labelled, up, DockerError};
use e2e_infra::engine::{connect_to, EngineError};
use e2e_infra::labels::StackLabels;
use e2e_infra::{labels, Delivery, Plan};
use e2e_infra_tests::{busybox_image, clean_up_after, engine, http_get, plan, remove_built_images, Project};

const AREA: &str = "docker-deploy";
const WWW: &str = "RUN mkdir /www && echo upstream-ok > /www/index.html\n";

/// Containers of `plan`'s run and consumer the engine still has.
async fn leftovers(docker: &Docker, plan: &Plan) -> Vec<String> {
    let filter = HashMap::from([("label", labels::filter(plan.key()))]);
    let options = ListContainersOptionsBuilder::new().all(true).filters(&filter).build();
    let containers = docker.list_containers(Some(options)).await.unwrap();
    containers.into_iter().flat_map(|c| c.names.unwrap_or_default()).collect()
}

/// Four components: a TCP stand-in, an HTTP stand-in, a one-shot migration,
/// and an app that needs all three and reads their addresses from its env.
#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn a_stack_comes_up_in_dependency_order_and_is_removed_by_label() {
    let docker = engine(None).await;
    let project = Project::new();
    let (image_plan, image) = busybox_image(&docker, &project, AREA, WWW).await;
    let catalog = project.catalog(&format!(
        r#"
[components.db]
image = "{image}"
docker = {{ ports = [5432], command = ["nc", "-ll", "-p", "5432", "-e", "echo", "db-says-hi"], ready = {{ tcp = 5432, timeout = "30s" }} }}

[components.web]
image = "{image}"
docker = {{ ports = [8080], command = ["httpd", "-f", "-p", "8080", "-h", "/www"], ready = {{ http = "/index.html", timeout = "30s" }} }}

[components.migrate]
image = "{image}"
depends_on = ["db"]
docker = {{ command = ["sh", "-c", "echo migrating $DB; sleep 1; echo done"], env = {{ DB = "${{db.addr}}" }}, ready = {{ completes = true, timeout = "30s" }} }}

[components.app]
image = "{image}"
depends_on = ["db", "web", "migrate"]
[components.app.docker]
ports = [9090]
env = {{ DB_ADDR = "${{db.addr}}", WEB_URL = "http://${{web.host}}:${{web.port}}/index.html" }}
command = ["sh", "-c", "mkdir -p /srv && wget -q -O /srv/upstream \"$WEB_URL\" && nc $(echo $DB_ADDR | tr : ' ') > /srv/db && echo $DB_ADDR > /srv/addr && exec httpd -f -p 9090 -h /srv"]
ready = {{ http = "/upstream", timeout = "30s" }}
"#,
        image = image.image
    ));
    let plan = plan(&catalog, "stack", &["app"], AREA, &Delivery::Local);
    let body = async {
        let stack = up(&docker, &plan, &StackLabels::of(&plan), None).await.map_err(|e| e.to_string())?;
        assert_eq!(stack.network, plan.namespace().as_str());
        let order: Vec<&str> = stack.containers.iter().map(|c| c.component.as_str()).collect();
        let at = |name| order.iter().position(|c| *c == name).unwrap();
        assert!(at("db") < at("migrate") && at("migrate") < at("app") && at("web") < at("app"), "{order:?}");

        let app = stack.component("app").unwrap();
        assert_eq!(app.container_name, container_name(&plan, "app"));
        let published = app.ports[&9090];
        assert!(published.ip().is_loopback() && published.port() != 9090);
        let get = |path| async move { http_get(published, path).await.map_err(|e| e.to_string()) };
        assert_eq!(get("/upstream").await?, (200, "upstream-ok\n".to_owned()), "app could not reach web by name");
        assert_eq!(get("/db").await?.1, "db-says-hi\n", "app could not reach db by name");
        assert_eq!(get("/addr").await?.1, format!("{}:5432\n", container_name(&plan, "db")));

        // Everything created carries the run's labels.
        for running in &stack.containers {
            let inspected = docker.inspect_container(&running.container_id, None).await.map_err(|e| e.to_string())?;
            let got = inspected.config.and_then(|c| c.labels).unwrap_or_default();
            for (key, value) in labels::StackLabels::of(&plan).component(&running.component) {
                assert_eq!(got.get(&key), Some(&value), "{} lacks label {key}", running.component);
            }
        }
        let network = docker.inspect_network(&stack.network, None).await.map_err(|e| e.to_string())?;
        let got = network.labels.unwrap_or_default();
        for (key, value) in labels::StackLabels::of(&plan).run() {
            assert_eq!(got.get(&key), Some(&value), "network lacks label {key}");
        }

        // A stack handle survives a round trip through a file.
        let json = serde_json::to_string(&stack).map_err(|e| e.to_string())?;
        let back: e2e_infra::deploy::docker::DockerStack = serde_json::from_str(&json).map_err(|e| e.to_string())?;
        assert_eq!(back, stack);

        let removed = remove_labelled(&docker, &labels::filter(plan.key())).await.map_err(|e| e.to_string())?;
        assert_eq!(removed.containers.len(), 4, "{removed:?}");
        assert_eq!(removed.networks, std::slice::from_ref(&stack.network));
        assert!(leftovers(&docker, &plan).await.is_empty());
        assert!(docker.inspect_network(&stack.network, None).await.is_err(), "the network remains");
        Ok::<_, String>(())
    };
    clean_up_after(body, async {
        remove_labelled(&docker, &labels::filter(plan.key())).await.unwrap();
        remove_built_images(&docker, &image_plan).await;
    })
    .await;
}

async fn failing_stack(docker_section: &str) -> (DockerError, Duration, Vec<String>) {
    let docker = engine(None).await;
    let project = Project::new();
    let (image_plan, image) = busybox_image(&docker, &project, AREA, "").await;
    let catalog =
        project.catalog(&format!("[components.broken]\nimage = \"{}\"\ndocker = {docker_section}\n", image.image));
    let plan = plan(&catalog, "failing", &["broken"], AREA, &Delivery::Local);
    let started = Instant::now();
    let result = up(&docker, &plan, &StackLabels::of(&plan), None).await;
    let elapsed = started.elapsed();
    let left = leftovers(&docker, &plan).await;
    remove_labelled(&docker, &labels::filter(plan.key())).await.unwrap();
    remove_built_images(&docker, &image_plan).await;
    let error = result.expect_err("the stack should fail");
    eprintln!("{error}");
    (error, elapsed, left)
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn a_crashing_component_fails_fast_with_its_logs() {
    let (error, elapsed, left) = failing_stack(
        r#"{ ports = [5432], command = ["sh", "-c", "echo boom; exit 3"], ready = { tcp = 5432, timeout = "120s" } }"#,
    )
    .await;
    let message = error.to_string();
    assert!(matches!(error, DockerError::Exited { exit_code: 3, .. }), "{message}");
    assert!(message.contains("`broken`") && message.contains("boom"), "{message}");
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?} of a 120 s timeout");
    assert!(left.is_empty(), "up left {left:?} behind");
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn a_component_that_never_opens_its_port_times_out() {
    let (error, elapsed, _) = failing_stack(
        r#"{ ports = [5432], command = ["sh", "-c", "echo waiting-forever; exec sleep 600"], ready = { tcp = 5432, timeout = "3s" } }"#,
    )
    .await;
    let message = error.to_string();
    assert!(matches!(error, DockerError::NotReady { .. }), "{message}");
    assert!(message.contains("`broken`") && message.contains("port 5432"), "{message}");
    assert!(message.contains("waiting-forever"), "logs missing: {message}");
    assert!(message.contains("(last answer: connecting to "), "the probe's answer missing: {message}");
    assert!(elapsed >= Duration::from_secs(3) && elapsed < Duration::from_secs(60), "{elapsed:?}");
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn an_http_probe_answered_404_times_out_naming_the_answer() {
    let (error, _, left) = failing_stack(
        r#"{ ports = [8080], command = ["httpd", "-f", "-p", "8080", "-h", "/"], ready = { http = "/missing", timeout = "3s" } }"#,
    )
    .await;
    let message = error.to_string();
    assert!(matches!(error, DockerError::NotReady { .. }), "{message}");
    assert!(message.contains("`broken`") && message.contains("GET of /missing on port 8080"), "{message}");
    assert!(message.contains("(last answer: HTTP 404 Not Found)"), "{message}");
    assert!(left.is_empty(), "up left {left:?} behind");
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn a_fails_on_line_before_the_awaited_one_ends_a_log_probe_at_once() {
    let (error, elapsed, left) = failing_stack(
        r#"{ command = ["sh", "-c", "echo FATAL: no disk; echo broken is ready; exec sleep 600"], ready = { log = "ready$", fails_on = "^FATAL: ", timeout = "120s" } }"#,
    )
    .await;
    let message = error.to_string();
    assert!(matches!(error, DockerError::FailedOn { .. }), "{message}");
    assert!(message.contains("`FATAL: no disk`") && message.contains("a log line matching `ready$`"), "{message}");
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?} of a 120 s timeout");
    assert!(left.is_empty(), "up left {left:?} behind");
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn a_failing_one_shot_component_is_reported() {
    let (error, _, _) = failing_stack(
        r#"{ command = ["sh", "-c", "echo migration failed >&2; exit 1"], ready = { completes = true } }"#,
    )
    .await;
    let message = error.to_string();
    assert!(matches!(error, DockerError::Exited { exit_code: 1, .. }), "{message}");
    assert!(message.contains("migration failed"), "{message}");
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn no_engine_at_a_missing_socket_fails_fast_and_says_how_to_start_one() {
    let socket = format!("unix:///tmp/e2e-infra-no-engine-{}.sock", std::process::id());
    let started = Instant::now();
    let error = connect_to(&socket).await.expect_err("nothing listens there");
    assert!(started.elapsed() < Duration::from_secs(5));
    let message = error.to_string();
    assert!(matches!(error, EngineError::Unreachable { .. }), "{message}");
    assert!(message.contains(&socket) && message.contains("scripts/engine.sh"), "{message}");
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn an_engine_that_never_answers_fails_within_the_connection_budget() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("silent.sock");
    // Accepts connections and never answers.
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
        }
    });
    let host = format!("unix://{}", path.display());
    let started = Instant::now();
    let error =
        e2e_infra::engine::connect_within(&host, Duration::from_secs(5)).await.expect_err("the engine is silent");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(5) && waited < Duration::from_secs(7), "{waited:?}");
    // 2 s, then the 3 s left of the budget.
    assert!(matches!(error, EngineError::NoAnswer { attempts: 2, .. }), "{error}");
    assert!(error.to_string().contains(&host));
    held.abort();
}

/// Says which engine this suite talks to (`DOCKER_HOST`, else the default
/// socket): its version and storage driver. When `E2E_EXPECT_ENGINE` holds
/// `<version> <driver>` (as `docker info --format '{{.ServerVersion}}
/// {{.Driver}}'` prints them), the engine must be that one: `scripts/test.sh`
/// sets it for each of its passes.
#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn the_engine_is_the_one_docker_host_names() {
    let docker = engine(None).await;
    let info = docker.info().await.unwrap_or_else(|e| panic!("engine info: {e}"));
    let found = format!("{} {}", info.server_version.unwrap_or_default(), info.driver.unwrap_or_default());
    eprintln!(
        "engine at {}: {found} {:?}",
        e2e_infra::engine::address(&docker),
        info.driver_status.unwrap_or_default()
    );
    if let Some(expected) = std::env::var("E2E_EXPECT_ENGINE").ok().filter(|e| !e.is_empty()) {
        assert_eq!(found, expected, "the suite talks to another engine than the one expected");
    }
}

/// An engine on a unix socket that answers `/_ping` and `/version` and
/// then never answers anything else, as a frozen engine does. Returns its
/// address; it lives as long as the returned task.
async fn frozen_after_ping(path: &std::path::Path) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn serve(mut stream: tokio::net::UnixStream) {
        let mut pending = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(read) => pending.extend_from_slice(&buffer[..read]),
                }
                continue;
            };
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
            pending.drain(..end + 4);
            let path = head.split_whitespace().nth(1).unwrap_or_default().to_owned();
            let body = if path.ends_with("/_ping") {
                "OK".to_owned()
            } else if path.ends_with("/version") {
                r#"{"ApiVersion":"1.41","MinAPIVersion":"1.12","Version":"20.10.24","Os":"linux","Arch":"amd64"}"#
                    .to_owned()
            } else {
                // Frozen: the request is taken and never answered.
                std::future::pending::<()>().await;
                return;
            };
            let kind = if body == "OK" { "text/plain" } else { "application/json" };
            let answer =
                format!("HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    }
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    (format!("unix://{}", path.display()), task)
}

#[tokio::test]
async fn listing_stacks_on_an_engine_frozen_after_its_ping_fails_within_the_listing_bound() {
    use e2e_infra::cli_support::teardown::{self, LISTING_TIMEOUT};
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("frozen.sock");
    let (host, engine) = frozen_after_ping(&socket).await;
    let docker = connect_to(&host).await.expect("the ping is answered");
    let started = Instant::now();
    let error = teardown::list(&docker).await.expect_err("the engine never lists");
    let waited = started.elapsed();
    assert!(waited >= LISTING_TIMEOUT && waited < LISTING_TIMEOUT + Duration::from_secs(3), "{waited:?}");
    let text = e2e_infra::error::error_chain(&error);
    assert!(text.contains(&socket.display().to_string()), "no engine address: {text}");
    assert!(text.contains("did not finish listing") && text.contains("check it with `docker info`"), "{text}");

    // The command says the same, in the same time, for `status`.
    let env = [("DOCKER_HOST", std::ffi::OsStr::new(&host))];
    let (output, took) = e2e_infra_tests::cluster::cli(dir.path(), &["status"], &env).await;
    assert!(!output.status.success());
    assert!(took < LISTING_TIMEOUT + Duration::from_secs(5), "{took:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&socket.display().to_string()) && stderr.contains("check it with `docker info`"),
        "{stderr}"
    );
    engine.abort();
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn kept_markers_of_runs_whose_names_join_alike_do_not_collide() {
    use e2e_infra::cli_support::teardown;
    use e2e_infra::plan::RunKey;
    let docker = engine(None).await;
    // `relk` + `a-b` and `relk-a` + `b` join to the same `relk-a-b`.
    let base = e2e_infra_tests::unique("relk");
    let first = RunKey::parse("a-b", &base).expect("a valid key");
    let second = RunKey::parse("b", &format!("{base}-a")).expect("a valid key");
    assert_ne!(teardown::kept_marker(&first), teardown::kept_marker(&second));
    for key in [&first, &second] {
        teardown::mark_kept(&docker, key, None, None, "failed: a_test").await.expect("marked kept");
    }
    let kept: Vec<(String, String)> = teardown::list(&docker)
        .await
        .expect("listed")
        .stacks
        .into_iter()
        .filter(|run| run.kept && run.key.consumer().as_str().starts_with(base.as_str()))
        .map(|run| (run.key.consumer().to_string(), run.key.run().to_string()))
        .collect();
    assert_eq!(kept, [(base.clone(), "a-b".to_owned()), (format!("{base}-a"), "b".to_owned())]);

    // A volume of the marker's name that is not the stack's marker is named, not taken.
    let third = RunKey::parse("c", &base).expect("a valid key");
    let planted = teardown::kept_marker(&third);
    let labels = HashMap::from([
        (labels::MANAGED_BY.to_owned(), labels::MANAGED_BY_VALUE.to_owned()),
        (labels::RUN.to_owned(), "other".to_owned()),
        (labels::CONSUMER.to_owned(), base.clone()),
    ]);
    let request = bollard::models::VolumeCreateRequest {
        name: Some(planted.clone()),
        labels: Some(labels),
        ..Default::default()
    };
    docker.create_volume(request).await.expect("planted");
    let error = teardown::mark_kept(&docker, &third, None, None, "failed: a_test").await.expect_err("not its marker");
    let text = error.to_string();
    assert!(text.contains(&planted) && text.contains("is not its marker") && text.contains("run `other`"), "{text}");

    for consumer in [base.clone(), format!("{base}-a")] {
        remove_labelled(&docker, &[format!("{}={consumer}", labels::CONSUMER)]).await.expect("removed");
    }
}

/// A unix socket in front of the engine's that counts the bytes the engine
/// sends back. Returns its address and the count.
async fn counting_proxy(
    path: &std::path::Path,
    engine: &str,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>, tokio::task::JoinHandle<()>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let counted = std::sync::Arc::new(AtomicU64::new(0));
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    let (engine, total) = (engine.to_owned(), counted.clone());
    let task = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(upstream) = tokio::net::UnixStream::connect(&engine).await else { continue };
            let total = total.clone();
            tokio::spawn(async move {
                let (mut client_read, mut client_write) = client.into_split();
                let (mut engine_read, mut engine_write) = upstream.into_split();
                let up = async { tokio::io::copy(&mut client_read, &mut engine_write).await.ok() };
                let down = async {
                    let mut buffer = vec![0u8; 64 * 1024];
                    while let Ok(read @ 1..) = engine_read.read(&mut buffer).await {
                        total.fetch_add(read as u64, Ordering::Relaxed);
                        if client_write.write_all(&buffer[..read]).await.is_err() {
                            break;
                        }
                    }
                };
                tokio::join!(up, down);
            });
        }
    });
    (format!("unix://{}", path.display()), counted, task)
}

#[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
#[tokio::test]
async fn a_log_probe_reads_a_long_log_once() {
    let host = std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_owned());
    let Some(socket) = host.strip_prefix("unix://") else {
        eprintln!("skipped: DOCKER_HOST {host} is not a unix socket, which the counting proxy needs");
        return;
    };
    let docker = engine(None).await;
    let project = Project::new();
    let (image_plan, image) = busybox_image(&docker, &project, "log-probe", "").await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, counted, task) = counting_proxy(&dir.path().join("engine.sock"), socket).await;
    let through_proxy = connect_to(&proxy).await.expect("the proxy answers");
    // About 2 MB of log with its frames, then the ready line 3 s later: a probe that read
    // the whole log at every look (every 250 ms) would read it a dozen times, and one that
    // followed it apart for `fails_on` twice.
    let catalog = project.catalog(&format!(
        r#"
[components.chatty]
image = "{image}"
docker = {{ command = ["sh", "-c", "seq 1 100000 | sed 's/^/filler line /'; sleep 3; echo chatty is ready; exec sleep 3600"], ready = {{ log = "^chatty is ready$", fails_on = "^chatty gives up$", timeout = "60s" }} }}
"#,
        image = image.image
    ));
    let plan = plan(&catalog, "log-probe", &["chatty"], AREA, &Delivery::Local);
    let body = async {
        let before = counted.load(std::sync::atomic::Ordering::Relaxed);
        let stack = up(&through_proxy, &plan, &StackLabels::of(&plan), None).await.map_err(|e| e.to_string())?;
        let read = counted.load(std::sync::atomic::Ordering::Relaxed) - before;
        let ready_after = stack.component("chatty").unwrap().ready_after;
        eprintln!("ready after {ready_after:?}; the engine sent {read} bytes");
        let log_size: u64 =
            (1..=100_000u64).map(|n| "filler line ".len() as u64 + n.to_string().len() as u64 + 1).sum();
        assert!(
            read < 2 * log_size,
            "the engine sent {read} bytes for a log of {log_size}: it was read more than once"
        );
        Ok::<_, String>(())
    };
    clean_up_after(body, async {
        remove_labelled(&docker, &labels::filter(plan.key())).await.expect("removed");
        remove_built_images(&docker, &image_plan).await;
    })
    .await;
    task.abort();
}

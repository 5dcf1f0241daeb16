//! Warm runs of the edit-run loop: e2e-infra's reuse mode
//! (`E2E_INFRA_REUSE=1`) against testcontainers-rs's reusable containers,
//! on the same two images and the same tests under cargo-nextest.
//!
//! Each suite is a generated crate of its own (testcontainers-rs pins an
//! older bollard than e2e-infra's, and the two cannot share a dependency
//! graph); testcontainers is a dev-dependency of its crate only. The
//! testcontainers suite starts the images e2e-infra built, under references
//! of its own.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions, TagImageOptionsBuilder};
use bollard::Docker;
use e2e_infra::{Catalog, Delivery, Plan, RunId};

use crate::amortize::{measure, nextest, Cleanup};
use crate::report::{median, median_of, ratio, secs, Res, Section};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The page fetch both suites' tests do: `GET /index.html`, retried until
/// the server answers (testcontainers is told to wait for nothing).
const GET: &str = r#"
fn get(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let page = std::net::TcpStream::connect(addr).and_then(|mut s| {
            write!(s, "GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        });
        match page {
            Ok(body) if body.contains("200 OK") => return body,
            _ if std::time::Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(50)),
            other => panic!("{addr} did not answer: {other:?}"),
        }
    }
}
"#;

/// Lays out two crates in `dir`: `ours/` with suite `ours`
/// (`#[e2e_infra]`), and `peer/` with suite `peer` (testcontainers with
/// `ReuseDirective::Always`), `tests` tests each.
fn lay_out(dir: &Path, ours: &str, peer: &str, tests: usize) -> Res<()> {
    let fixture = workspace().join("tests/fixture");
    let (ours_dir, peer_dir) = (dir.join("ours"), dir.join("peer"));
    for sub in [ours_dir.join("tests"), ours_dir.join("image"), peer_dir.join("tests")] {
        std::fs::create_dir_all(sub)?;
    }
    std::fs::copy(fixture.join("e2e-infra.toml"), ours_dir.join("e2e-infra.toml"))?;
    std::fs::copy(fixture.join("busybox.Dockerfile"), ours_dir.join("busybox.Dockerfile"))?;
    std::fs::copy(e2e_infra_tests::BUSYBOX, ours_dir.join("image/busybox"))?;
    std::fs::copy(workspace().join("Cargo.lock"), ours_dir.join("Cargo.lock"))?;
    // Inputs of its own, so that no other run's build is a cache hit here.
    std::fs::write(ours_dir.join("image/owner"), ours)?;
    let manifest = |name: &str, dependency: &str| {
        format!(
            "[package]\nname = \"{name}\"\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\n[workspace]\n\n\
             [dev-dependencies]\n{dependency}\n\
             tokio = {{ version = \"1\", features = [\"rt\", \"rt-multi-thread\", \"macros\"] }}\n"
        )
    };
    let runtime = workspace().join("runtime");
    std::fs::write(
        ours_dir.join("Cargo.toml"),
        manifest(ours, &format!("e2e-infra = {{ path = \"{}\" }}", runtime.display())),
    )?;
    std::fs::write(
        peer_dir.join("Cargo.toml"),
        manifest(peer, "testcontainers = { version = \"0.27\", features = [\"reusable-containers\"] }"),
    )?;
    let many = |test: &str| (1..=tests).map(|i| test.replace("NAME", &format!("t{i:02}"))).collect::<String>();
    std::fs::write(
        ours_dir.join("tests/ours.rs"),
        format!(
            "#[e2e_infra::e2e_infra(consumer = \"{ours}\", needs = [\"api\"])]\nmod ours {{\n    use e2e_infra::Infra;\n{GET}\n{}}}\n",
            many("    #[test]\n    fn NAME(infra: &Infra) {\n        let api = infra.endpoint(\"api\", 8080).expect(\"published\");\n        assert!(get(api.addr()).contains(\"api store=\"));\n    }\n")
        ),
    )?;
    std::fs::write(
        peer_dir.join("tests/peer.rs"),
        format!(
            r#"use testcontainers::core::{{IntoContainerPort, WaitFor}};
use testcontainers::runners::AsyncRunner;
use testcontainers::{{GenericImage, ImageExt, ReuseDirective}};
{GET}
async fn api() -> std::net::SocketAddr {{
    let store = GenericImage::new("localhost/{peer}-store", "bench")
        .with_exposed_port(7000.tcp())
        .with_wait_for(WaitFor::Nothing)
        .with_cmd(["/bin/busybox", "sh", "-c", "echo store > /www/index.html && exec /bin/busybox httpd -f -p 7000 -h /www"])
        .with_network("{peer}")
        .with_container_name("{peer}-store")
        .with_reuse(ReuseDirective::Always)
        .start()
        .await
        .expect("store");
    let api = GenericImage::new("localhost/{peer}-api", "bench")
        .with_exposed_port(8080.tcp())
        .with_wait_for(WaitFor::Nothing)
        .with_cmd(["/bin/busybox", "sh", "-c", "echo api store=$STORE > /www/index.html && exec /bin/busybox httpd -f -p 8080 -h /www"])
        .with_env_var("STORE", "{peer}-store:7000")
        .with_network("{peer}")
        .with_container_name("{peer}-api")
        .with_reuse(ReuseDirective::Always)
        .start()
        .await
        .expect("api");
    let port = api.get_host_port_ipv4(8080.tcp()).await.expect("published");
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}}
{}"#,
            many("\n#[tokio::test]\nasync fn NAME() {\n    let addr = api().await;\n    let page = tokio::task::spawn_blocking(move || get(addr)).await.expect(\"fetch\");\n    assert!(page.contains(\"api store=\"));\n}\n")
        ),
    )?;
    Ok(())
}

/// The plan of the reusable stack of `consumer`.
fn reuse_plan(dir: &Path, consumer: &str) -> Res<Plan> {
    let catalog = Catalog::load(&dir.join("e2e-infra.toml"))?;
    let uid = std::fs::metadata("/proc/self")?.uid();
    let run = RunId::explicit(&format!("reuse-u{uid}"), None)?;
    Ok(Plan::new(&catalog, consumer, &["api"], run, &Delivery::Local)?)
}

/// The reference of `component` in the reusable stack of `consumer`.
fn reused_image(dir: &Path, consumer: &str, component: &str) -> Res<String> {
    Ok(reuse_plan(dir, consumer)?.image(component).ok_or("planned")?.to_string())
}

/// Gives the images of the reusable stack the references the testcontainers
/// suite starts.
async fn tag_for_peer(docker: &Docker, dir: &Path, ours: &str, peer: &str) -> Res<()> {
    for component in ["store", "api"] {
        let source = reused_image(dir, ours, component)?;
        let repo = format!("localhost/{peer}-{component}");
        docker.tag_image(&source, Some(TagImageOptionsBuilder::new().repo(&repo).tag("bench").build())).await?;
    }
    Ok(())
}

/// Whether the container named `name` runs the image `reference` names now.
async fn runs_current_image(docker: &Docker, name: &str, reference: &str) -> Res<bool> {
    let container = docker.inspect_container(name, None).await?;
    let image = docker.inspect_image(reference).await?;
    Ok(container.image.is_some() && container.image == image.id)
}

/// How many of the peer suite's tests passed in a run that may fail.
fn passed(dir: &Path, args: &[&str]) -> Res<(usize, bool)> {
    let output = nextest(dir, args, &[]).output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    Ok((text.lines().filter(|l| l.trim_start().starts_with("PASS [")).count(), output.status.success()))
}

/// Removes the testcontainers suite's containers, network and references.
async fn remove_peer(docker: &Docker, peer: &str) -> Res<()> {
    let filters = HashMap::from([("name".to_owned(), vec![format!("{peer}-")])]);
    let options = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
    for container in docker.list_containers(Some(options)).await? {
        if let Some(id) = container.id {
            let _ =
                docker.remove_container(&id, Some(RemoveContainerOptions { force: true, ..Default::default() })).await;
        }
    }
    // Two processes at once may each have created a network of this name.
    for network in docker.list_networks(None::<bollard::query_parameters::ListNetworksOptions>).await? {
        if network.name.as_deref() == Some(peer) {
            let _ = docker.remove_network(&network.id.unwrap_or_default()).await;
        }
    }
    Ok(())
}

/// Benchmark 8.
pub async fn reuse(docker: &Docker, tests: usize, reps: usize) -> Res<Section> {
    let mut section = Section::new(
        "8. Warm runs with a reused stack, against testcontainers-rs",
        &format!(
            "The edit-run loop. One generated crate (laid out from `tests/fixture`: a busybox `api` server that \
             depends on a `store` server, two images), two suites of {tests} tests each under `cargo nextest \
             run`, every test fetching the api's page. e2e-infra: `E2E_INFRA_REUSE=1`, the stack kept between \
             runs. testcontainers-rs 0.27: each test starts both containers with `ReuseDirective::Always`, a \
             container name and a network, from the images e2e-infra built, tagged for it. Warm runs are \
             measured after one cold run of each, alternating, {reps} of each; the suites are compiled before."
        ),
        &["", "e2e-infra (reuse)", "testcontainers-rs (reuse)", "e2e-infra ÷ testcontainers"],
    );
    let dir = tempfile::tempdir()?;
    let tag = std::process::id() % 0xffff;
    let (ours, peer) = (format!("bench-reuse-{tag:04x}"), format!("bench-peer-{tag:04x}"));
    let cleanup = Cleanup(vec![ours.clone()]);
    lay_out(dir.path(), &ours, &peer, tests)?;
    let (o, p) = (dir.path().join("ours"), dir.path().join("peer"));
    for crate_dir in [&o, &p] {
        let compiled = nextest(crate_dir, &["--no-run"], &[]).output()?;
        if !compiled.status.success() {
            return Err(format!(
                "compiling the generated suites failed:\n{}",
                String::from_utf8_lossy(&compiled.stderr)
            )
            .into());
        }
    }
    let reuse = [("E2E_INFRA_REUSE", "1")];
    let result = async {
        let cold = measure(docker, &o, "ours", &ours, &reuse).await?;
        tag_for_peer(docker, &o, &ours, &peer).await?;
        // At nextest's default parallelism, as a developer's first run.
        let (cold_passed, _) = passed(&p, &["--test", "peer", "--no-fail-fast"])?;
        remove_peer(docker, &peer).await?;
        let (_, ok) = passed(&p, &["--test", "peer", "-j", "1"])?;
        if !ok {
            return Err("the testcontainers suite failed even one test at a time".into());
        }
        section.row(vec![
            "cold run at nextest's default parallelism: tests passed".to_owned(),
            format!("{} of {tests}", cold.per_test.len()),
            format!("{cold_passed} of {tests}"),
            "-".to_owned(),
        ]);
        let (mut a, mut b, mut created) = (Vec::new(), Vec::new(), 0);
        for _ in 0..reps {
            let warm = measure(docker, &o, "ours", &ours, &reuse).await?;
            created += warm.containers;
            a.push(warm.wall);
            b.push(measure(docker, &p, "peer", &peer, &[]).await?.wall);
        }
        section.row(vec![
            "warm run, wall time".to_owned(),
            median_of(&a),
            median_of(&b),
            ratio(median(&a), median(&b)),
        ]);
        section.row(vec![
            "containers created by the warm runs".to_owned(),
            created.to_string(),
            "-".to_owned(),
            "-".to_owned(),
        ]);

        // The api's image changes under the same reference.
        std::fs::write(o.join("image/changed"), "1")?;
        std::fs::write(
            o.join("busybox.Dockerfile"),
            std::fs::read_to_string(o.join("busybox.Dockerfile"))? + "COPY changed /changed\n",
        )?;
        let changed = measure(docker, &o, "ours", &ours, &reuse).await?;
        tag_for_peer(docker, &o, &ours, &peer).await?;
        let peer_after = measure(docker, &p, "peer", &peer, &[]).await?;
        let api = reused_image(&o, &ours, "api")?;
        let ours_current =
            runs_current_image(docker, &format!("{}-api", reuse_plan(&o, &ours)?.namespace()), &api).await?;
        let peer_current =
            runs_current_image(docker, &format!("{peer}-api"), &format!("localhost/{peer}-api:bench")).await?;
        let serves = |current: bool| if current { "the new image" } else { "the old container" }.to_owned();
        section.row(vec![
            "after the image changed, the api runs".to_owned(),
            format!("{} ({} containers replaced, {})", serves(ours_current), changed.containers, secs(changed.wall)),
            format!("{} ({})", serves(peer_current), secs(peer_after.wall)),
            "-".to_owned(),
        ]);
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    }
    .await;
    remove_peer(docker, &peer).await?;
    for component in ["store", "api"] {
        let _ = docker
            .remove_image(
                &format!("localhost/{peer}-{component}:bench"),
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await;
    }
    drop(cleanup);
    result?;
    section.note(
        "the testcontainers suite waits for nothing and each test retries its fetch until the page answers; \
         e2e-infra's setup waits for the catalog's readiness probes",
    );
    Ok(section)
}

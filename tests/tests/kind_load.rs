//! Loading images into Kind nodes, against stand-in nodes running a real
//! containerd on the local engine: every test runs once on nodes of
//! Debian's containerd 1.6 (module `containerd_1_6`) and once on nodes of
//! containerd 2 (module `containerd_2`). The tests of loading into a
//! containerd socket (a single-node cluster's) run on a containerd daemon of
//! each kind started for them, and on the node of the cluster under test
//! (`E2E_CONTAINERD_SOCKET`, ignored unless asked for).

use bollard::query_parameters::TagImageOptions;
use e2e_infra::load::containerd::{self, Action, ContainerdError, LoadImage, Node, ReadFrom, Route, KIND_EXEC_ENV};
use e2e_infra::load::kind::{self, KindError};
use e2e_infra::{Catalog, Delivery, Plan, RunId};
use e2e_infra_tests::kind_node::{
    busybox_image, marker_on_top, read_in_image, ContainerdDaemon, ImageGuard, NodeKind, StandInCluster,
};
use e2e_infra_tests::{engine, unique};

/// A plan of `components` (each a busybox build) for a unique run.
fn plan(dir: &std::path::Path, components: &[&str], run: &str) -> Plan {
    std::fs::write(dir.join("Dockerfile"), "FROM scratch\n").expect("Dockerfile");
    let catalog: String =
        components.iter().map(|c| format!("[components.{c}]\nbuild = {{ context = \".\" }}\n")).collect();
    let path = dir.join("e2e-infra.toml");
    std::fs::write(&path, catalog).expect("catalog");
    let catalog = Catalog::load(&path).expect("catalog loads");
    let run = RunId::explicit(run, None).expect("run id");
    Plan::new(&catalog, "kindload", components, run, &Delivery::Local).expect("plan")
}

/// Builds every component of `plan` with distinct contents.
async fn build_all(docker: &bollard::Docker, plan: &Plan, guard: &mut ImageGuard) -> Vec<LoadImage> {
    let mut images = Vec::new();
    for component in plan.components() {
        guard.0.push(component.image.to_string());
        let image_id = busybox_image(docker, &component.image, &component.name).await;
        images.push(LoadImage { image: component.image.clone(), image_id });
    }
    images
}

async fn loads_every_image_into_every_node_then_skips_a_reload(kind: NodeKind) {
    let docker = engine(None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let run = unique("kind-load");
    let plan = plan(dir.path(), &["alpha", "beta", "gamma"], &run);
    let mut guard = ImageGuard::default();
    let images = build_all(&docker, &plan, &mut guard).await;
    let cluster = StandInCluster::start_with(&docker, &unique("e2e-kind-load"), 2, kind).await;
    assert_eq!(cluster.nodes.len(), 3);

    let report = kind::load(&docker, &cluster.name, &images).await.expect("load");
    assert_eq!(report.nodes.len(), 3);
    assert_eq!(report.with_action(Action::Loaded).count(), 9, "{report:#?}");
    for node in &cluster.nodes {
        let listed = kind::node_images(&docker, node).await.expect("node images");
        for wanted in &images {
            assert!(listed.iter().any(|r| wanted.image.matches(r)), "{node} lacks {}: {listed:?}", wanted.image);
        }
    }
    let roles: Vec<&str> = report
        .nodes
        .iter()
        .filter_map(|n| match n {
            Node::Container { role, .. } => Some(role.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(roles, ["control-plane", "worker", "worker"]);

    let again = kind::load(&docker, &cluster.name, &images).await.expect("reload");
    assert_eq!(again.with_action(Action::Skipped).count(), 9, "{again:#?}");
    assert_eq!(again.with_action(Action::Loaded).count(), 0);
}

async fn a_node_is_reached_through_its_own_socket_when_visible_and_through_the_exec_when_asked(kind: NodeKind) {
    use std::os::unix::fs::MetadataExt;

    let docker = engine(None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = plan(dir.path(), &["alpha", "beta"], &unique("kind-load-route"));
    let mut guard = ImageGuard::default();
    let images = build_all(&docker, &plan, &mut guard).await;
    let cluster = StandInCluster::start_with(&docker, &unique("e2e-kind-route"), 0, kind).await;
    let node = Node::Container { name: cluster.nodes[0].clone(), role: "control-plane".to_owned() };

    // Only root may open another process's socket through /proc/<pid>/root.
    let root = std::fs::metadata("/proc/self").expect("/proc/self").uid() == 0;
    match containerd::route(&docker, &node).await {
        Route::Socket(path) => assert!(root && path.ends_with("run/containerd/containerd.sock"), "{path:?}"),
        Route::Exec => assert!(!root, "root on the engine's machine reaches the node's socket"),
    }
    let first = kind::load(&docker, &cluster.name, &images[..1]).await.expect("load by the first route");
    assert_eq!(first.with_action(Action::Loaded).count(), 1, "{first:#?}");

    // Each test has a process of its own under nextest.
    std::env::set_var(KIND_EXEC_ENV, "1");
    assert_eq!(containerd::route(&docker, &node).await, Route::Exec);
    let again = kind::load(&docker, &cluster.name, &images).await.expect("load through the exec");
    std::env::remove_var(KIND_EXEC_ENV);
    assert_eq!(again.with_action(Action::Skipped).count(), 1, "{again:#?}");
    assert_eq!(again.with_action(Action::Loaded).count(), 1, "{again:#?}");
    let listed = kind::node_images(&docker, &cluster.nodes[0]).await.expect("node images");
    for wanted in &images {
        assert!(listed.iter().any(|r| wanted.image.matches(r)), "{listed:?}");
    }
}

async fn a_node_holding_the_image_under_another_tag_gets_the_plans_reference(kind: NodeKind) {
    let docker = engine(None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let first = plan(dir.path(), &["alpha"], &unique("kind-load-first"));
    let second = plan(dir.path(), &["alpha"], &unique("kind-load-second"));
    assert_ne!(first.tag(), second.tag());
    let mut guard = ImageGuard::default();
    let first_images = build_all(&docker, &first, &mut guard).await;
    // The very image of the first run, under the second run's reference.
    let second_ref = second.image("alpha").expect("planned").clone();
    guard.0.push(second_ref.to_string());
    let options = TagImageOptions { repo: Some(second_ref.name()), tag: second_ref.tag().map(str::to_owned) };
    docker.tag_image(&first_images[0].image.to_string(), Some(options)).await.expect("tag");
    let second_images = [LoadImage { image: second_ref, image_id: first_images[0].image_id.clone() }];
    let cluster = StandInCluster::start_with(&docker, &unique("e2e-kind-retag"), 1, kind).await;

    kind::load(&docker, &cluster.name, &first_images).await.expect("first load");
    let report = kind::load(&docker, &cluster.name, &second_images).await.expect("second load");
    // The nodes have that very image from the first run: tagged, not streamed again.
    assert_eq!(report.with_action(Action::Tagged).count(), 2, "{report:#?}");
    assert_eq!(report.with_action(Action::Loaded).count(), 0, "{report:#?}");
    // The tag carried the labels over: the same run's next load finds the image.
    let again = kind::load(&docker, &cluster.name, &second_images).await.expect("same run again");
    assert_eq!(again.with_action(Action::Skipped).count(), 2, "{again:#?}");
    for node in &cluster.nodes {
        let listed = kind::node_images(&docker, node).await.expect("node images");
        assert!(listed.iter().any(|r| second_images[0].image.matches(r)), "{node}: {listed:?}");
        assert!(listed.iter().any(|r| first_images[0].image.matches(r)), "{node}: {listed:?}");
    }
}

async fn an_image_retagged_on_the_engine_is_refused_before_any_node_is_touched(kind: NodeKind) {
    let docker = engine(None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = plan(dir.path(), &["alpha"], &unique("kind-load-changed"));
    let mut guard = ImageGuard::default();
    let mut images = build_all(&docker, &plan, &mut guard).await;
    let cluster = StandInCluster::start_with(&docker, &unique("e2e-kind-changed"), 0, kind).await;
    let built = std::mem::replace(&mut images[0].image_id, "sha256:not-what-the-engine-has".to_owned());

    let error = kind::load(&docker, &cluster.name, &images).await.expect_err("must refuse");
    match &error {
        KindError::Load(ContainerdError::ImageChanged { image, found, .. }) => {
            assert_eq!(image, &images[0].image);
            assert_eq!(found, &built);
        }
        other => panic!("unexpected error: {other}"),
    }
    let listed = kind::node_images(&docker, &cluster.nodes[0]).await.expect("node images");
    assert!(!listed.iter().any(|r| images[0].image.matches(r)), "{listed:?}");
}

async fn no_cluster_names_the_clusters_present(kind: NodeKind) {
    let docker = engine(None).await;
    let present = StandInCluster::start_with(&docker, &unique("e2e-kind-present"), 0, kind).await;
    let absent = unique("e2e-kind-absent");

    let error = kind::load(&docker, &absent, &[]).await.expect_err("no such cluster");
    match &error {
        KindError::NoNodes { cluster, present: clusters } => {
            assert_eq!(cluster, &absent);
            assert!(clusters.contains(&present.name), "{clusters:?}");
        }
        other => panic!("unexpected error: {other}"),
    }
    let message = error.to_string();
    assert!(message.contains(&absent) && message.contains(&present.name), "{message}");
}

async fn a_rebuild_that_changed_only_the_top_layer_sends_each_node_only_that_layer(kind: NodeKind) {
    let docker = engine(None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let first = plan(dir.path(), &["alpha"], &unique("kind-delta-first"));
    let second = plan(dir.path(), &["alpha"], &unique("kind-delta-second"));
    let mut guard = ImageGuard::default();
    let before = build_all(&docker, &first, &mut guard).await;
    // The same layers below, another marker on top: a rebuild after an edit.
    let image = second.image("alpha").expect("planned").clone();
    guard.0.push(image.to_string());
    let edited = marker_on_top(&docker, &image, &before[0].image.to_string(), "edited").await;
    let after = [LoadImage { image: image.clone(), image_id: edited }];
    assert_ne!(before[0].image_id, after[0].image_id);
    // The busybox layer as the engine keeps it: a tar, or gzip at about half the size.
    let busybox = std::fs::metadata("/bin/busybox").expect("busybox").len() / 3;
    let cluster = StandInCluster::start_with(&docker, &unique("e2e-kind-delta"), 1, kind).await;

    let cold = kind::load(&docker, &cluster.name, &before).await.expect("first load");
    for outcome in &cold.outcomes {
        assert!(outcome.sent > busybox, "a cold load sends the busybox layer: {outcome:?}");
    }
    let reload = kind::load(&docker, &cluster.name, &after).await.expect("reload");
    assert_eq!(reload.with_action(Action::Loaded).count(), 2, "{reload:#?}");
    for outcome in &reload.outcomes {
        // The marker layer, the config and the manifest: a few KiB.
        assert!(outcome.sent < 64 * 1024, "{} was sent {} bytes: {outcome:?}", outcome.node, outcome.sent);
    }
    for node in &cluster.nodes {
        assert_eq!(read_in_image(&docker, node, &image.to_string(), "/marker").await, "edited");
        // The layer below, never sent again, is there too.
        assert!(read_in_image(&docker, node, &image.to_string(), "/bin/busybox").await.starts_with("\u{7f}ELF"));
    }
    let again = kind::load(&docker, &cluster.name, &after).await.expect("same run again");
    assert_eq!(again.with_action(Action::Skipped).count(), 2, "{again:#?}");
}

async fn a_node_that_lacks_the_layers_gets_them_while_another_gets_only_the_top(kind: NodeKind) {
    let docker = engine(None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let first = plan(dir.path(), &["alpha"], &unique("kind-mixed-first"));
    let second = plan(dir.path(), &["alpha"], &unique("kind-mixed-second"));
    let mut guard = ImageGuard::default();
    let before = build_all(&docker, &first, &mut guard).await;
    let image = second.image("alpha").expect("planned").clone();
    guard.0.push(image.to_string());
    let edited = marker_on_top(&docker, &image, &before[0].image.to_string(), "edited").await;
    let after = [LoadImage { image: image.clone(), image_id: edited }];
    // The busybox layer as the engine keeps it: a tar, or gzip at about half the size.
    let busybox = std::fs::metadata("/bin/busybox").expect("busybox").len() / 3;
    let warm = StandInCluster::start_with(&docker, &unique("e2e-kind-warm"), 0, kind).await;
    kind::load(&docker, &warm.name, &before).await.expect("first load");
    let fresh = StandInCluster::start_with(&docker, &unique("e2e-kind-fresh"), 0, kind).await;
    let nodes: Vec<Node> = [&warm, &fresh]
        .iter()
        .map(|c| Node::Container { name: c.nodes[0].clone(), role: "control-plane".to_owned() })
        .collect();

    let report = e2e_infra::load::containerd::load(&docker, &nodes, &after).await.expect("load");
    let sent = |node: &str| report.outcomes.iter().find(|o| o.node == node).map(|o| o.sent).expect("an outcome");
    assert!(sent(&warm.nodes[0]) < 64 * 1024, "{report:#?}");
    assert!(sent(&fresh.nodes[0]) > busybox, "{report:#?}");
    for node in [&warm.nodes[0], &fresh.nodes[0]] {
        assert_eq!(read_in_image(&docker, node, &image.to_string(), "/marker").await, "edited");
    }
}

/// Loads `images` into every node of `cluster` from `from`, checking every
/// node streamed them from there.
async fn load_from(
    docker: &bollard::Docker,
    cluster: &StandInCluster,
    images: &[LoadImage],
    from: ReadFrom,
) -> e2e_infra::load::containerd::LoadReport {
    let nodes: Vec<Node> =
        cluster.nodes.iter().map(|name| Node::Container { name: name.clone(), role: String::new() }).collect();
    let report = containerd::load_from(docker, &nodes, images, from).await.unwrap_or_else(|e| panic!("{e}"));
    let expected = if from == ReadFrom::Export { "export" } else { local_store(docker).await };
    for outcome in &report.outcomes {
        assert_eq!(outcome.action, Action::Loaded, "{outcome:?}");
        assert_eq!(outcome.source.as_ref().map(ToString::to_string).as_deref(), Some(expected), "{outcome:?}");
    }
    report
}

/// The source a load from a local engine's store reports: `content store`
/// on the containerd image store, `store` on overlay2.
async fn local_store(docker: &bollard::Docker) -> &'static str {
    let info = docker.info().await.expect("docker info");
    let containerd =
        info.driver_status.iter().flatten().any(|pair| pair.iter().any(|v| v == "io.containerd.snapshotter.v1"));
    if containerd {
        "content store"
    } else {
        "store"
    }
}

async fn images_loaded_from_the_export_or_the_store_reload_from_the_other_sending_only_the_change(kind: NodeKind) {
    let docker = engine(None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut guard = ImageGuard::default();
    let mut builds = Vec::new();
    for (n, marker) in ["first", "second", "third", "fourth"].into_iter().enumerate() {
        let plan = plan(dir.path(), &["alpha"], &unique(&format!("kind-paths-{n}")));
        let image = plan.image("alpha").expect("planned").clone();
        guard.0.push(image.to_string());
        let image_id = busybox_image(&docker, &image, marker).await;
        builds.push((LoadImage { image, image_id }, marker));
    }
    // The busybox layer as the engine keeps it: a tar, or gzip at about half the size.
    let busybox = std::fs::metadata("/bin/busybox").expect("busybox").len() / 3;
    let cluster = StandInCluster::start_with(&docker, &unique("e2e-kind-paths"), 1, kind).await;
    // The engine here is local with overlay2: the store is read unless the export is asked for.
    let froms = [ReadFrom::Export, ReadFrom::StoreIfLocal, ReadFrom::Export, ReadFrom::StoreIfLocal];
    for (n, ((build, marker), from)) in builds.iter().zip(froms).enumerate() {
        let report = load_from(&docker, &cluster, std::slice::from_ref(build), from).await;
        for outcome in &report.outcomes {
            if n == 0 {
                assert!(outcome.sent > busybox, "a cold load sends the busybox layer: {outcome:?}");
            } else {
                // The marker layer, the config and the manifest: a few KiB.
                assert!(outcome.sent < 64 * 1024, "load {n} from {from:?} sent {} bytes: {outcome:?}", outcome.sent);
            }
        }
        for node in &cluster.nodes {
            assert_eq!(read_in_image(&docker, node, &build.image.to_string(), "/marker").await, *marker);
            assert!(read_in_image(&docker, node, &build.image.to_string(), "/bin/busybox")
                .await
                .starts_with("\u{7f}ELF"));
        }
    }
}

async fn a_cold_load_from_the_store_gives_the_node_the_same_image_as_the_export(kind: NodeKind) {
    let docker = engine(None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut guard = ImageGuard::default();
    let plan = plan(dir.path(), &["alpha"], &unique("kind-store-cold"));
    let images = build_all(&docker, &plan, &mut guard).await;
    let stores = StandInCluster::start_with(&docker, &unique("e2e-kind-store"), 0, kind).await;
    let exports = StandInCluster::start_with(&docker, &unique("e2e-kind-export"), 0, kind).await;
    let from_store = load_from(&docker, &stores, &images, ReadFrom::StoreIfLocal).await;
    let from_export = load_from(&docker, &exports, &images, ReadFrom::Export).await;
    // Same layers, config and manifest byte for byte: the same archive size.
    assert_eq!(from_store.outcomes[0].sent, from_export.outcomes[0].sent);
    let digest = |node: &str| {
        let docker = docker.clone();
        let node = node.to_owned();
        let reference = images[0].image.to_string();
        async move {
            let listing =
                e2e_infra_tests::kind_node::node_exec(&docker, &node, &["ctr", "-n", "k8s.io", "images", "ls"])
                    .await
                    .expect("ctr images ls");
            listing
                .lines()
                .find(|l| l.starts_with(&reference))
                .and_then(|l| l.split_whitespace().find(|f| f.starts_with("sha256:")))
                .map(str::to_owned)
                .expect("the reference is listed with a digest")
        }
    };
    assert_eq!(digest(&stores.nodes[0]).await, digest(&exports.nodes[0]).await, "the manifests differ");
    assert_eq!(read_in_image(&docker, &stores.nodes[0], &images[0].image.to_string(), "/marker").await, "alpha");
}

/// `bytes` compressed by the `zstd` command (package zstd).
fn zstd(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("zstd")
        .args(["-q", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("running `zstd` (Debian: apt-get install zstd)");
    let mut stdin = child.stdin.take().expect("zstd's stdin");
    let input = bytes.to_vec();
    let feeding = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().expect("zstd runs");
    feeding.join().expect("feeding zstd").expect("zstd reads its input");
    assert!(output.status.success(), "zstd failed: {}", output.status);
    output.stdout
}

/// An OCI-layout archive, as `docker save` of Docker 25 and later writes
/// it, of image `reference`: one zstd-compressed layer holding `/marker`.
/// Returns the archive and the digest of the image's manifest.
fn zstd_archive(reference: &str, marker: &str) -> (Vec<u8>, String) {
    use sha2::Digest;
    let digest = |bytes: &[u8]| format!("sha256:{:x}", sha2::Sha256::digest(bytes));
    let tar = |files: Vec<(String, Vec<u8>)>| {
        let mut archive = tar::Builder::new(Vec::new());
        for (path, content) in files {
            let mut header = tar::Header::new_ustar();
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            archive.append_data(&mut header, path, content.as_slice()).expect("tar entry");
        }
        archive.into_inner().expect("tar")
    };
    let layer = tar(vec![("marker".to_owned(), marker.as_bytes().to_vec())]);
    let compressed = zstd(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": { "type": "layers", "diff_ids": [digest(&layer)] },
    }))
    .expect("config");
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": digest(&compressed), "size": compressed.len() }],
    }))
    .expect("manifest");
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(&manifest), "size": manifest.len(),
            "annotations": { "io.containerd.image.name": reference },
        }],
    }))
    .expect("index");
    let blob = |bytes: &[u8]| format!("blobs/sha256/{}", digest(bytes).trim_start_matches("sha256:"));
    let saved = serde_json::to_vec(&serde_json::json!([
        { "Config": blob(&config), "RepoTags": [reference], "Layers": [blob(&compressed)] },
    ]))
    .expect("manifest.json");
    let manifest_digest = digest(&manifest);
    let files = vec![
        ("oci-layout".to_owned(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        ("index.json".to_owned(), index),
        ("manifest.json".to_owned(), saved),
        (blob(&config), config),
        (blob(&manifest), manifest),
        (blob(&compressed), compressed),
    ];
    (tar(files), manifest_digest)
}

/// The manifest digest node `node` lists `reference` with.
async fn node_digest(docker: &bollard::Docker, node: &str, reference: &str) -> String {
    let listing = e2e_infra_tests::kind_node::node_exec(docker, node, &["ctr", "-n", "k8s.io", "images", "ls"])
        .await
        .expect("ctr images ls");
    listing
        .lines()
        .find(|l| l.starts_with(reference))
        .and_then(|l| l.split_whitespace().find(|f| f.starts_with("sha256:")))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("{node} does not list {reference}: {listing}"))
}

/// An image with a zstd-compressed layer, put on the engine with `docker
/// load` of an OCI-layout archive. An engine on the containerd image store
/// keeps the blob as it is, so the loader sends it unchanged and the node
/// holds the engine's manifest; a classic store unpacks it, and the node
/// gets it from the store as any other image. Docker 20.10 cannot read
/// zstd layers: on such an engine the test fails, naming it (the suite runs
/// it on Docker 29).
async fn an_image_with_a_zstd_layer_reaches_the_node_unpacked(kind: NodeKind) {
    use futures::StreamExt;
    let docker = engine(None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = plan(dir.path(), &["zstd"], &unique("kind-zstd"));
    let image = plan.image("zstd").expect("planned").clone();
    let mut guard = ImageGuard::default();
    guard.0.push(image.to_string());
    let marker = unique("zstd-marker");
    let (archive, manifest) = zstd_archive(&image.to_string(), &marker);
    let options = bollard::query_parameters::ImportImageOptions { quiet: true, ..Default::default() };
    let mut loading = docker.import_image(options, bollard::body_full(archive.into()), None);
    let mut refused = None;
    while let Some(progress) = loading.next().await {
        match progress {
            Ok(progress) => refused = refused.or(progress.error_detail.and_then(|d| d.message)),
            Err(error) => refused = refused.or(Some(error.to_string())),
        }
    }
    if let Some(error) = refused {
        let version = docker.version().await.ok().and_then(|v| v.version).unwrap_or_default();
        panic!("the engine (Docker {version}) cannot load an image with a zstd layer (Docker 29 can): {error}");
    }
    let image_id = docker.inspect_image(&image.to_string()).await.expect("the engine holds the image").id.expect("id");
    let images = [LoadImage { image: image.clone(), image_id: image_id.clone() }];
    let cluster = StandInCluster::start_with(&docker, &unique("e2e-kind-zstd"), 1, kind).await;

    let report = kind::load(&docker, &cluster.name, &images).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.with_action(Action::Loaded).count(), 2, "{report:#?}");
    for node in &cluster.nodes {
        if image_id == manifest {
            assert_eq!(node_digest(&docker, node, &image.to_string()).await, manifest, "not the engine's manifest");
        }
        assert_eq!(read_in_image(&docker, node, &image.to_string(), "/marker").await, marker);
    }
    let again = kind::load(&docker, &cluster.name, &images).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.with_action(Action::Skipped).count(), 2, "{again:#?}");
}

/// The image of `build` under the reference of a new run's plan, tagged on
/// the engine: an unchanged build in the next run.
async fn next_run(
    docker: &bollard::Docker,
    dir: &std::path::Path,
    build: &LoadImage,
    guard: &mut ImageGuard,
) -> (Plan, Vec<LoadImage>) {
    let plan = plan(dir, &["overlap"], &unique("kind-runs"));
    let image = plan.image("overlap").expect("planned").clone();
    guard.0.push(image.to_string());
    let options = TagImageOptions { repo: Some(image.name()), tag: image.tag().map(str::to_owned) };
    docker.tag_image(&build.image.to_string(), Some(options)).await.expect("tag");
    (plan, vec![LoadImage { image, image_id: build.image_id.clone() }])
}

async fn runs_that_overlap_on_a_node_never_break_each_others_loads(kind: NodeKind) {
    let docker = engine(None).await;
    let cluster = StandInCluster::start_with(&docker, &unique("e2e-kind-runs"), 0, kind).await;
    let node = Node::Container { name: cluster.nodes[0].clone(), role: "control-plane".to_owned() };
    overlapping_runs(&docker, &node).await;
}

/// 10 runs back to back, each run's teardown beside the next one's load,
/// then 2 runs at once, on `node`: every load succeeds, one cache
/// reference is left, and the next run tags from it.
async fn overlapping_runs(docker: &bollard::Docker, node: &Node) {
    let docker = docker.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut guard = ImageGuard::default();
    // A component of its own: a node shared with other tests holds other
    // builds of `alpha`.
    let first = plan(dir.path(), &["overlap"], &unique("kind-runs"));
    let build = build_all(&docker, &first, &mut guard).await.remove(0);
    let node = node.clone();
    let nodes = std::slice::from_ref(&node);
    containerd::load(&docker, nodes, std::slice::from_ref(&build)).await.expect("first load");

    // Back to back: each run's teardown overlaps the next run's load, which
    // tags the image from the reference that teardown moves to the cache.
    let mut previous = first;
    for n in 0..10 {
        let (plan, images) = next_run(&docker, dir.path(), &build, &mut guard).await;
        let (loaded, removed) = tokio::join!(
            containerd::load(&docker, nodes, &images),
            containerd::remove_tagged(&docker, &node, previous.tag())
        );
        let loaded = loaded.unwrap_or_else(|e| panic!("run {n}: {e}"));
        assert_eq!(loaded.with_action(Action::Skipped).count(), 0, "run {n}: {loaded:#?}");
        removed.unwrap_or_else(|e| panic!("teardown before run {n}: {e}"));
        previous = plan;
    }
    // Two runs at once, each a load and its teardown, beside the last one's teardown.
    let (a, a_images) = next_run(&docker, dir.path(), &build, &mut guard).await;
    let (b, b_images) = next_run(&docker, dir.path(), &build, &mut guard).await;
    let run = |plan: Plan, images: Vec<LoadImage>| {
        let (docker, node) = (docker.clone(), node.clone());
        async move {
            containerd::load(&docker, std::slice::from_ref(&node), &images).await?;
            let listed = containerd::node_images(&docker, &node).await?;
            assert!(listed.iter().any(|r| images[0].image.matches(r)), "{listed:?}");
            containerd::remove_tagged(&docker, &node, plan.tag()).await.map(|_| ())
        }
    };
    let (a, b, last) =
        tokio::join!(run(a, a_images), run(b, b_images), containerd::remove_tagged(&docker, &node, previous.tag()));
    a.expect("first concurrent run");
    b.expect("second concurrent run");
    last.expect("the last back-to-back run's teardown");
    // The build stays on the node under one cache reference, and the next run tags it.
    let listed = containerd::node_images(&docker, &node).await.expect("node images");
    let cache = format!("{}:e2e-infra-cache", build.image.name());
    let cached: Vec<&String> = listed.iter().filter(|r| r.starts_with(&cache)).collect();
    assert_eq!(cached.len(), 1, "{listed:?}");
    let (plan, images) = next_run(&docker, dir.path(), &build, &mut guard).await;
    let again = containerd::load(&docker, nodes, &images).await.expect("a run after the others");
    assert_eq!(again.with_action(Action::Tagged).count(), 1, "{again:#?}");
    containerd::remove_tagged(&docker, &node, plan.tag()).await.expect("the last teardown");
    remove_cache(&docker, &node, &build).await;
}

/// Removes the cache reference of `build` from `node`: a node shared with
/// other suites keeps nothing of a test's.
async fn remove_cache(docker: &bollard::Docker, node: &Node, build: &LoadImage) {
    let short = &build.image_id.trim_start_matches("sha256:")[..12];
    let cache = format!("{}:e2e-infra-cache-{short}", build.image.name());
    if let Node::Socket { path } = node {
        let output = tokio::process::Command::new("ctr")
            .arg("-a")
            .arg(path)
            .args(["-n", "k8s.io", "images", "rm", &cache])
            .output()
            .await
            .expect("running ctr");
        assert!(output.status.success(), "ctr images rm {cache}: {}", String::from_utf8_lossy(&output.stderr));
    }
    let listed = containerd::node_images(docker, node).await.expect("node images");
    assert!(!listed.contains(&cache) || !matches!(node, Node::Socket { .. }), "{listed:?}");
}

/// Where a socket test loads: a containerd daemon started for it, or the
/// node of the cluster under test ([`e2e_infra_tests::cluster::SOCKET_ENV`]).
#[derive(Debug, Clone, Copy)]
enum Socket {
    Own(NodeKind),
    OfTheCluster,
}

impl Socket {
    /// The node, and the daemon when it is this test's own: a node that
    /// held nothing before.
    async fn node(self) -> (Node, Option<ContainerdDaemon>) {
        match self {
            Self::Own(kind) => {
                let daemon = ContainerdDaemon::start(kind).await;
                (Node::Socket { path: daemon.socket() }, Some(daemon))
            }
            Self::OfTheCluster => (e2e_infra_tests::cluster::Cluster::from_env().node(), None),
        }
    }
}

async fn runs_that_overlap_on_a_socket_never_break_each_others_loads(socket: Socket) {
    let docker = engine(None).await;
    let (node, _daemon) = socket.node().await;
    overlapping_runs(&docker, &node).await;
}

async fn a_socket_gets_the_image_then_only_the_change_then_nothing(socket: Socket) {
    let docker = engine(None).await;
    let (node, daemon) = socket.node().await;
    let nodes = std::slice::from_ref(&node);
    let dir = tempfile::tempdir().expect("tempdir");
    let first = plan(dir.path(), &["change"], &unique("socket-first"));
    let second = plan(dir.path(), &["change"], &unique("socket-second"));
    let mut guard = ImageGuard::default();
    // Builds of their own: a node shared with other tests may hold any other.
    let mut build = |plan: &Plan| {
        let image = plan.image("change").expect("planned").clone();
        guard.0.push(image.to_string());
        let docker = docker.clone();
        async move {
            let image_id = busybox_image(&docker, &image, &unique("change")).await;
            [LoadImage { image, image_id }]
        }
    };
    let before = build(&first).await;
    let after = build(&second).await;
    // The busybox layer as the engine keeps it: a tar, or gzip at about half the size.
    let busybox = std::fs::metadata("/bin/busybox").expect("busybox").len() / 3;

    let cold = containerd::load(&docker, nodes, &before).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cold.with_action(Action::Loaded).count(), 1, "{cold:#?}");
    // A node of the cluster may hold the busybox layer from other tests.
    assert!(daemon.is_none() || cold.outcomes[0].sent > busybox, "{cold:#?}");
    let reload = containerd::load(&docker, nodes, &after).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reload.with_action(Action::Loaded).count(), 1, "{reload:#?}");
    assert!(reload.outcomes[0].sent < 64 * 1024, "{reload:#?}");
    let again = containerd::load(&docker, nodes, &after).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.with_action(Action::Skipped).count(), 1, "{again:#?}");
    for plan in [&first, &second] {
        containerd::remove_tagged(&docker, &node, plan.tag()).await.unwrap_or_else(|e| panic!("{e}"));
    }
    // The second teardown removed the first build's cache reference.
    remove_cache(&docker, &node, &after[0]).await;
}

/// One test per socket for each socket test body above.
macro_rules! on_every_socket {
    ($module:ident, $socket:expr, $gate:meta, $($test:ident),+ $(,)?) => {
        mod $module {
            $(
                #[$gate]
                #[tokio::test]
                async fn $test() {
                    super::$test($socket).await
                }
            )+
        }
    };
}

on_every_socket!(
    socket_containerd_1_6,
    super::Socket::Own(super::NodeKind::Containerd16),
    cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e"),
    runs_that_overlap_on_a_socket_never_break_each_others_loads,
    a_socket_gets_the_image_then_only_the_change_then_nothing,
);
on_every_socket!(
    socket_containerd_2,
    super::Socket::Own(super::NodeKind::Containerd2),
    cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e"),
    runs_that_overlap_on_a_socket_never_break_each_others_loads,
    a_socket_gets_the_image_then_only_the_change_then_nothing,
);
on_every_socket!(
    socket_of_the_cluster,
    super::Socket::OfTheCluster,
    ignore = "needs a Kubernetes node's containerd socket on this machine: set E2E_CONTAINERD_SOCKET (scripts/test.sh starts kube-local); run with --run-ignored all",
    runs_that_overlap_on_a_socket_never_break_each_others_loads,
    a_socket_gets_the_image_then_only_the_change_then_nothing,
);

/// One test per node kind for each test body above.
macro_rules! on_every_node_kind {
    ($($test:ident),+ $(,)?) => {
        on_every_node_kind!(@kind containerd_1_6, super::NodeKind::Containerd16, $($test),+);
        on_every_node_kind!(@kind containerd_2, super::NodeKind::Containerd2, $($test),+);
    };
    (@kind $module:ident, $kind:expr, $($test:ident),+) => {
        mod $module {
            $(
                #[cfg_attr(not(feature = "e2e"), ignore = "needs a container engine: run with --features e2e")]
                #[tokio::test]
                async fn $test() {
                    super::$test($kind).await
                }
            )+
        }
    };
}

on_every_node_kind!(
    loads_every_image_into_every_node_then_skips_a_reload,
    a_node_is_reached_through_its_own_socket_when_visible_and_through_the_exec_when_asked,
    a_node_holding_the_image_under_another_tag_gets_the_plans_reference,
    an_image_retagged_on_the_engine_is_refused_before_any_node_is_touched,
    no_cluster_names_the_clusters_present,
    a_rebuild_that_changed_only_the_top_layer_sends_each_node_only_that_layer,
    a_node_that_lacks_the_layers_gets_them_while_another_gets_only_the_top,
    images_loaded_from_the_export_or_the_store_reload_from_the_other_sending_only_the_change,
    a_cold_load_from_the_store_gives_the_node_the_same_image_as_the_export,
    runs_that_overlap_on_a_node_never_break_each_others_loads,
    an_image_with_a_zstd_layer_reaches_the_node_unpacked,
);

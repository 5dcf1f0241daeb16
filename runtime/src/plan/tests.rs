use tempfile::TempDir;

use super::*;

/// A catalog on disk: built components need their Dockerfile to exist.
struct Fixture {
    _dir: TempDir,
    catalog: Catalog,
}

const CATALOG: &str = r#"
[components.postgres]
image = "postgres:16"

[components.redis]
image = "redis:7"

[components.migrate]
build = { dockerfile = "docker/migrate.Dockerfile" }
depends_on = ["postgres"]

[components.datastorage]
build = { context = ".", dockerfile = "docker/data-storage.Dockerfile" }
depends_on = ["redis", "postgres", "migrate"]

[components.gateway]
build = { dockerfile = "docker/gateway.Dockerfile" }
depends_on = ["datastorage"]

[components.audit]
build = { dockerfile = "docker/audit.Dockerfile" }
depends_on = ["postgres"]

[components.zeta]
image = "localhost/zeta:dev"

[components.alpha]
image = "quay.io/example/alpha:1"
"#;

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::create_dir_all(dir.path().join("docker")).expect("mkdir");
    for name in ["migrate", "data-storage", "gateway", "audit"] {
        std::fs::write(dir.path().join(format!("docker/{name}.Dockerfile")), "FROM scratch\n").expect("write");
    }
    let catalog = Catalog::parse(&dir.path().join("e2e-infra.toml"), CATALOG).expect("valid catalog");
    Fixture { _dir: dir, catalog }
}

fn run(id: &str) -> RunId {
    RunId::explicit(id, None).expect("valid run id")
}

fn plan(needs: &[&str]) -> Plan {
    Plan::new(&fixture().catalog, "notification", needs, run("run-1"), &Delivery::Local).expect("plan")
}

fn names(plan: &Plan) -> Vec<&str> {
    plan.components().iter().map(|c| c.name.as_str()).collect()
}

fn plan_error(consumer: &str, needs: &[&str]) -> PlanError {
    Plan::new(&fixture().catalog, consumer, needs, run("run-1"), &Delivery::Local).expect_err("plan must fail")
}

#[test]
fn components_come_after_their_dependencies_ties_alphabetical() {
    let plan = plan(&["datastorage"]);
    assert_eq!(names(&plan), ["postgres", "migrate", "redis", "datastorage"]);
    for (i, component) in plan.components().iter().enumerate() {
        for dep in &component.depends_on {
            let at = plan.components().iter().position(|c| &c.name == dep).expect("dependency planned");
            assert!(at < i, "{} comes before its dependency {dep}", component.name);
        }
    }
}

#[test]
fn order_does_not_depend_on_the_order_of_needs() {
    let a = plan(&["gateway", "audit", "alpha", "zeta"]);
    let b = plan(&["zeta", "alpha", "audit", "gateway"]);
    assert_eq!(names(&a), names(&b));
    assert_eq!(names(&a), ["alpha", "postgres", "audit", "migrate", "redis", "datastorage", "gateway", "zeta"]);
}

#[test]
fn only_the_transitive_closure_is_planned() {
    let plan = plan(&["migrate"]);
    assert_eq!(names(&plan), ["postgres", "migrate"]);
    assert!(plan.component("datastorage").is_none());
    assert!(plan.image("redis").is_none());

    let plan = self::plan(&["gateway"]);
    assert_eq!(names(&plan), ["postgres", "migrate", "redis", "datastorage", "gateway"]);
    assert!(plan.component("audit").is_none());
}

#[test]
fn direct_dependencies_are_kept_as_declared() {
    let plan = plan(&["gateway"]);
    let datastorage = plan.component("datastorage").expect("planned");
    assert_eq!(datastorage.depends_on, ["redis", "postgres", "migrate"]);
    assert_eq!(plan.component("gateway").expect("planned").depends_on, ["datastorage"]);
    assert!(plan.component("postgres").expect("planned").depends_on.is_empty());
}

#[test]
fn one_tag_for_every_built_component() {
    let plan = plan(&["gateway", "audit"]);
    let tag = plan.tag().as_str();
    let hex = tag.strip_prefix("notification-").expect("tag starts with the consumer");
    assert_eq!(hex.len(), 8, "{tag}");
    assert!(hex.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)), "{tag}");
    assert_eq!(plan.namespace().as_str(), tag);
    let built: Vec<_> = plan.components().iter().filter(|c| c.origin == Origin::Built).collect();
    assert_eq!(built.len(), 4);
    for c in built {
        assert_eq!(c.image.tag(), Some(tag), "{}", c.name);
        assert_eq!(c.image.to_string(), format!("localhost/{}:{tag}", c.name));
        assert_eq!(c.image.registry(), "localhost");
        assert_eq!(c.image.repository(), c.name);
    }
}

#[test]
fn borrowed_images_keep_their_canonical_reference() {
    let plan = plan(&["datastorage", "zeta", "alpha"]);
    let image = |name: &str| plan.image(name).expect(name).to_string();
    assert_eq!(image("postgres"), "docker.io/library/postgres:16");
    assert_eq!(image("redis"), "docker.io/library/redis:7");
    assert_eq!(image("zeta"), "localhost/zeta:dev");
    assert_eq!(image("alpha"), "quay.io/example/alpha:1");
    for name in ["postgres", "redis", "zeta", "alpha"] {
        assert_eq!(plan.component(name).expect(name).origin, Origin::Borrowed);
    }
}

#[test]
fn local_delivery_never_pulls_built_images() {
    let plan = plan(&["datastorage"]);
    let policy = |name: &str| plan.component(name).expect(name).pull_policy;
    assert_eq!(policy("datastorage"), PullPolicy::Never);
    assert_eq!(policy("migrate"), PullPolicy::Never);
    assert_eq!(policy("postgres"), PullPolicy::IfNotPresent);
    assert_eq!(PullPolicy::Never.as_str(), "Never");
    assert_eq!(PullPolicy::IfNotPresent.as_str(), "IfNotPresent");
}

#[test]
fn registry_delivery_rewrites_built_refs_and_pulls_them() {
    let f = fixture();
    let delivery = Delivery::Registry("127.0.0.1:5000".into());
    let plan = Plan::new(&f.catalog, "notification", &["datastorage"], run("run-1"), &delivery).expect("plan");
    let local = Plan::new(&f.catalog, "notification", &["datastorage"], run("run-1"), &Delivery::Local).expect("plan");
    assert_eq!(plan.tag(), local.tag(), "the delivery does not change the tag");
    let ds = plan.component("datastorage").expect("planned");
    assert_eq!(ds.image.to_string(), format!("127.0.0.1:5000/datastorage:{}", plan.tag()));
    assert_eq!(ds.image.registry(), "127.0.0.1:5000");
    assert_eq!(ds.pull_policy, PullPolicy::IfNotPresent);
    assert_eq!(ds.origin, Origin::Built);
    let pg = plan.component("postgres").expect("planned");
    assert_eq!(pg.image.to_string(), "docker.io/library/postgres:16");
    assert_eq!(pg.pull_policy, PullPolicy::IfNotPresent);
}

#[test]
fn invalid_registry_is_rejected() {
    let f = fixture();
    for host in ["", "my registry", "host/path", "host:5000/"] {
        let err = Plan::new(&f.catalog, "notification", &["migrate"], run("r"), &Delivery::Registry(host.into()))
            .expect_err(host);
        assert!(matches!(err, PlanError::InvalidRegistry(_)), "{host}: {err:?}");
        assert!(err.to_string().contains(&format!("registry `{host}`")), "{err}");
    }
}

#[test]
fn invalid_consumers_are_rejected() {
    let long = "n".repeat(MAX_NAME_LEN + 1);
    for consumer in ["Notification", "notification_e2e", "1notification", "notification-", "", "no tification", &long] {
        let err = plan_error(consumer, &["migrate"]);
        assert!(matches!(err, PlanError::InvalidConsumer(_)), "{consumer:?}: {err:?}");
        let message = err.to_string();
        assert!(message.contains(&format!("consumer `{consumer}`")), "{message}");
        assert!(message.contains("lowercase letters"), "{message}");
    }
    let longest = "n".repeat(MAX_NAME_LEN);
    let plan = Plan::new(&fixture().catalog, &longest, &["migrate"], run("r"), &Delivery::Local).expect("40 is fine");
    assert_eq!(plan.tag().as_str().len(), MAX_NAME_LEN + 9);
    assert_eq!(plan.consumer().as_str(), longest);
}

#[test]
fn empty_needs_list_the_known_components() {
    let err = plan_error("notification", &[]);
    assert!(matches!(err, PlanError::EmptyNeeds { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("`needs` is empty"), "{message}");
    assert!(message.contains("alpha, audit, datastorage, gateway, migrate, postgres, redis, zeta"), "{message}");
}

#[test]
fn duplicate_needs_are_rejected() {
    let err = plan_error("notification", &["datastorage", "redis", "datastorage"]);
    assert!(matches!(&err, PlanError::DuplicateNeed(n) if n == "datastorage"), "{err:?}");
    assert!(err.to_string().contains("`datastorage` twice"), "{err}");
}

#[test]
fn unknown_need_suggests_the_nearest_component() {
    let f = fixture();
    let err = Plan::new(&f.catalog, "notification", &["datastorge"], run("r"), &Delivery::Local).expect_err("unknown");
    assert!(matches!(err, PlanError::UnknownComponent { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("unknown component `datastorge`; did you mean `datastorage`?"), "{message}");
    assert!(message.contains("Known: alpha, audit, datastorage"), "{message}");
    assert!(message.contains(&f.catalog.path().display().to_string()), "{message}");

    let message = plan_error("notification", &["kafka"]).to_string();
    assert!(!message.contains("did you mean"), "{message}");
}

#[test]
fn same_run_same_tag() {
    let f = fixture();
    let a = Plan::new(&f.catalog, "notification", &["datastorage"], run("run-a"), &Delivery::Local).expect("plan");
    let b = Plan::new(&f.catalog, "notification", &["gateway"], run("run-a"), &Delivery::Local).expect("plan");
    assert_eq!(a.tag(), b.tag(), "needs do not change the tag");
    assert_eq!(a.image("datastorage"), b.image("datastorage"));
}

#[test]
fn different_runs_different_tags() {
    let f = fixture();
    let tags: std::collections::HashSet<_> = (0..50)
        .map(|i| {
            let plan = Plan::new(&f.catalog, "notification", &["migrate"], run(&format!("run-{i}")), &Delivery::Local)
                .expect("plan");
            plan.tag().clone()
        })
        .collect();
    assert_eq!(tags.len(), 50);
}

#[test]
fn different_consumers_different_tags_and_namespaces() {
    let f = fixture();
    let a = Plan::new(&f.catalog, "notification", &["migrate"], run("shared"), &Delivery::Local).expect("plan");
    let b = Plan::new(&f.catalog, "gateway", &["migrate"], run("shared"), &Delivery::Local).expect("plan");
    assert_ne!(a.tag(), b.tag());
    assert_ne!(a.namespace(), b.namespace());
    let hex = |p: &Plan| p.tag().as_str().rsplit('-').next().map(str::to_owned);
    assert_ne!(hex(&a), hex(&b), "the hash covers the consumer, not only the prefix");
    assert_ne!(a.image("migrate"), b.image("migrate"));
}

#[test]
fn plan_serializes_for_the_cli() {
    let plan = plan(&["migrate"]);
    let json = serde_json::to_value(&plan).expect("serialize");
    assert_eq!(json["run_id"], "run-1");
    assert_eq!(json["consumer"], "notification");
    assert_eq!(json["tag"], plan.tag().as_str());
    assert_eq!(json["namespace"], plan.namespace().as_str());
    let migrate = &json["components"][1];
    assert_eq!(migrate["name"], "migrate");
    assert_eq!(migrate["image"], format!("localhost/migrate:{}", plan.tag()));
    assert_eq!(migrate["origin"], "built");
    assert_eq!(migrate["pull_policy"], "Never");
    assert_eq!(migrate["depends_on"], serde_json::json!(["postgres"]));
    assert_eq!(json["components"][0]["origin"], "borrowed");
}

// ---- Image references.

#[test]
fn borrowed_refs_are_canonicalized() {
    let cases = [
        ("postgres:16", "docker.io", "library/postgres", Some("16"), "docker.io/library/postgres:16"),
        ("postgres", "docker.io", "library/postgres", Some("latest"), "docker.io/library/postgres:latest"),
        ("bitnami/redis:7.2", "docker.io", "bitnami/redis", Some("7.2"), "docker.io/bitnami/redis:7.2"),
        ("docker.io/library/postgres:16", "docker.io", "library/postgres", Some("16"), "docker.io/library/postgres:16"),
        ("localhost/x:y", "localhost", "x", Some("y"), "localhost/x:y"),
        ("quay.io/a/b:1", "quay.io", "a/b", Some("1"), "quay.io/a/b:1"),
        ("registry:5000/x", "registry:5000", "x", Some("latest"), "registry:5000/x:latest"),
        ("127.0.0.1:5000/team/app:v2", "127.0.0.1:5000", "team/app", Some("v2"), "127.0.0.1:5000/team/app:v2"),
    ];
    for (input, registry, repository, tag, display) in cases {
        let image = ImageRef::borrowed(input).expect(input);
        assert_eq!(image.registry(), registry, "{input}");
        assert_eq!(image.repository(), repository, "{input}");
        assert_eq!(image.tag(), tag, "{input}");
        assert_eq!(image.to_string(), display, "{input}");
        assert_eq!(image.origin(), Origin::Borrowed);
        assert_eq!(image.name(), format!("{registry}/{repository}"));
    }
}

#[test]
fn digests_are_kept_and_imply_no_default_tag() {
    let digest = format!("sha256:{}", "ab".repeat(32));
    let image = ImageRef::borrowed(&format!("postgres@{digest}")).expect("digest ref");
    assert_eq!(image.tag(), None);
    assert_eq!(image.to_string(), format!("docker.io/library/postgres@{digest}"));
    let pinned = ImageRef::borrowed(&format!("registry:5000/x:1@{digest}")).expect("tag and digest");
    assert_eq!(pinned.tag(), Some("1"));
    assert_eq!(pinned.to_string(), format!("registry:5000/x:1@{digest}"));
    assert!(pinned.matches(&format!("registry:5000/x:1@{digest}")));
    assert!(!pinned.matches("registry:5000/x:1"));
}

#[test]
fn malformed_refs_are_rejected_with_the_reason() {
    let cases = [
        ("", "empty"),
        ("post gres:16", "white space"),
        ("Postgres:16", "lowercase"),
        ("postgres:-16", "tag"),
        ("postgres:", "tag"),
        ("postgres@abc", "digest"),
        ("a//b:1", "repository"),
        ("localhost/:1", "repository"),
    ];
    for (input, reason) in cases {
        let message = ImageRef::borrowed(input).expect_err(input).to_string();
        assert!(message.contains(&format!("`{input}` is not a valid image reference")), "{message}");
        assert!(message.contains(reason), "{input}: {message}");
    }
}

#[test]
fn matches_compares_any_spelling() {
    let postgres = ImageRef::borrowed("postgres:16").expect("valid");
    for same in ["postgres:16", "library/postgres:16", "docker.io/library/postgres:16"] {
        assert!(postgres.matches(same), "{same}");
    }
    for other in ["postgres:15", "postgres", "localhost/postgres:16", "bitnami/postgres:16", "", "Postgres:16"] {
        assert!(!postgres.matches(other), "{other}");
    }
    let redis = ImageRef::borrowed("redis").expect("valid");
    assert!(redis.matches("redis:latest"));
    assert!(redis.matches("docker.io/library/redis"));
}

#[test]
fn built_refs_match_only_their_own_spelling() {
    let plan = plan(&["datastorage"]);
    let image = plan.image("datastorage").expect("planned");
    let tag = plan.tag();
    assert!(image.matches(&format!("localhost/datastorage:{tag}")));
    // The mismatch the plan exists to rule out: another name, tag or registry.
    assert!(!image.matches("localhost/kubernaut-datastorage:e2e-test-datastorage"));
    assert!(!image.matches(&format!("datastorage:{tag}")));
    let other_run =
        Plan::new(&fixture().catalog, "notification", &["datastorage"], run("run-2"), &Delivery::Local).expect("plan");
    assert!(!image.matches(&other_run.image("datastorage").expect("planned").to_string()));
    assert!(!image.matches("localhost/datastorage"));
    // The same text parsed as a borrowed ref names the same image but is not
    // interchangeable with the plan's.
    let spelled = ImageRef::borrowed(&image.to_string()).expect("valid");
    assert!(spelled.matches(&image.to_string()));
    assert_ne!(&spelled, image);
    assert_eq!(image.origin(), Origin::Built);
}

// ---- Run identity.

#[test]
fn explicit_run_ids_are_checked() {
    for bad in ["", "has space", "a/b", "x:y", &"r".repeat(129), "..", ".", ".hidden"] {
        let err = RunId::explicit(bad, None).expect_err(bad);
        assert!(matches!(err, IdentityError::Invalid(_)), "{err:?}");
        assert!(err.to_string().contains(RUN_ID_ENV), "{err}");
    }
    let ok = RunId::explicit("ci-1234_a.b", None).expect("valid");
    assert_eq!(ok.as_str(), "ci-1234_a.b");
    assert_eq!(ok.to_string(), "ci-1234_a.b");
    assert_eq!(ok.source(), RunSource::Explicit);
    assert_eq!(ok.launcher(), None);
    RunId::explicit(&"r".repeat(128), None).expect("128 characters is fine");
}

#[test]
fn launcher_labels_round_trip() {
    let me = Launcher::of(std::process::id()).expect("this process is in /proc");
    assert!(me.is_alive());
    assert_eq!(Launcher::from_label(&me.label()), Some(me));
    let reused = Launcher { start_ticks: me.start_ticks + 1, ..me };
    assert!(!reused.is_alive(), "a pid with another start time is another process");
    assert!(me.host.is_some(), "this process's boot id and PID namespace are in /proc");
    assert_eq!(Launcher::from_label("12:x"), None);
    assert_eq!(Launcher::from_label("12:3:ab"), None);
    assert_eq!(Launcher::from_label("12:3:ab:4:5"), None);
    assert_eq!(Launcher::from_label("12"), None);
    assert!(Launcher::of(u32::MAX).is_none());
    let run = RunId::explicit("with-launcher", Some(me)).expect("valid");
    assert_eq!(run.launcher(), Some(me));
}

#[test]
fn a_launcher_is_judged_only_from_its_own_host_and_pid_namespace() {
    let here = Host { boot: 0xb007, pid_ns: 4026531836 };
    let launcher = Launcher { pid: 42, start_ticks: 1000, host: Some(here) };
    let running = |pid: u32| (pid == 42).then_some(1000);
    let reused = |pid: u32| (pid == 42).then_some(2000);
    let gone = |_: u32| None;
    assert_eq!(launcher.judge(Some(here), running), Verdict::Alive);
    assert_eq!(launcher.judge(Some(here), reused), Verdict::Dead, "a reused pid is another process");
    assert_eq!(launcher.judge(Some(here), gone), Verdict::Dead);
    // Another PID namespace on the same host (a CI job in a container, a
    // devcontainer, `unshare -p`): pid 42 here is not pid 42 there.
    let other_ns = Host { pid_ns: 4026532000, ..here };
    assert_eq!(launcher.judge(Some(other_ns), gone), Verdict::Foreign);
    assert_eq!(launcher.judge(Some(other_ns), running), Verdict::Foreign);
    // Another host on the same engine.
    let other_host = Host { boot: 0xf00d, ..here };
    assert_eq!(launcher.judge(Some(other_host), gone), Verdict::Foreign);
    // A label without a host, or a judge without /proc: cannot tell.
    assert_eq!(Launcher { host: None, ..launcher }.judge(Some(here), gone), Verdict::Foreign);
    assert_eq!(launcher.judge(None, gone), Verdict::Foreign);
    // The label carries the host and reads back.
    let label = launcher.label();
    assert_eq!(label, format!("42:1000:{:032x}:4026531836", 0xb007));
    assert_eq!(Launcher::from_label(&label), Some(launcher));
    // Labels written before hosts were recorded read as hostless.
    assert_eq!(Launcher::from_label("42:1000"), Some(Launcher { host: None, ..launcher }));
}

#[test]
fn random_hex_differs_every_time() {
    let a = random_hex(8).expect("urandom");
    assert_eq!(a.len(), 16);
    assert_ne!(a, random_hex(8).expect("urandom"));
}

// ---- Stack identity.

#[test]
fn a_run_key_deserialises_only_from_valid_names() {
    let key = RunKey::parse("ci-42", "notification").expect("valid");
    let json = serde_json::to_value(&key).expect("serialises");
    assert_eq!(json, serde_json::json!({ "run_id": "ci-42", "consumer": "notification" }));
    let back: RunKey = serde_json::from_value(json).expect("deserialises");
    assert_eq!(back, key);
    assert_eq!(back.run().source(), RunSource::Recorded);
    for (run, consumer) in [("../x", "notification"), ("", "notification"), ("ci-42", "Not-A-Name"), ("ci-42", "")] {
        let json = serde_json::json!({ "run_id": run, "consumer": consumer });
        assert!(serde_json::from_value::<RunKey>(json).is_err(), "{run:?} {consumer:?}");
        assert!(RunKey::parse(run, consumer).is_err(), "{run:?} {consumer:?}");
    }
}

#[test]
fn a_run_id_is_its_text_wherever_it_was_learnt() {
    let me = Launcher::of(std::process::id()).expect("this process is in /proc");
    let detected = RunId::explicit("ci-42", Some(me)).expect("valid");
    let recorded: RunId = "ci-42".parse().expect("valid");
    assert_eq!(detected, recorded);
    let consumer = Consumer::new("notification").expect("valid");
    let plan_key = RunKey::new(detected, consumer.clone());
    assert_eq!(plan_key, RunKey::new(recorded, consumer));
    assert_eq!(plan_key.namespace(), Namespace::of("ci-42", "notification"));
}

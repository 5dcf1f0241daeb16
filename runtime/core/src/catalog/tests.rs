use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

use super::*;

/// A workspace in a temporary directory: a catalog plus the files it names.
struct Workspace {
    dir: TempDir,
}

impl Workspace {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("temporary directory") }
    }

    /// The seed's layout: the Dockerfile lives in `docker/`, outside the
    /// context root `.`; manifests in `deploy/`.
    fn seeded() -> Self {
        let ws = Self::new();
        ws.file("docker/data-storage.Dockerfile", "FROM scratch\n");
        ws.file("docker/postgres.Dockerfile", "FROM scratch\n");
        ws.file("images/Dockerfile", "FROM scratch\n");
        ws.file("deploy/datastorage.yaml", "kind: Deployment\n");
        ws.file("deploy/datastorage-service.yaml", "kind: Service\n");
        ws
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn catalog_path(&self) -> PathBuf {
        self.root().join(CATALOG_FILE)
    }

    fn file(&self, relative: &str, contents: &str) {
        let path = self.root().join(relative);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("create directories");
        std::fs::write(path, contents).expect("write file");
    }

    fn load(&self, catalog: &str) -> Result<Catalog, CatalogError> {
        self.file(CATALOG_FILE, catalog);
        Catalog::load(&self.catalog_path())
    }

    /// Loads a catalog that must be rejected and returns the message.
    fn reject(&self, catalog: &str) -> (CatalogError, String) {
        match self.load(catalog) {
            Ok(c) => panic!("catalog was accepted: {:?}", c.components().keys().collect::<Vec<_>>()),
            Err(e) => {
                let message = e.to_string();
                (e, message)
            }
        }
    }

    /// `<catalog>:<line>:`, the prefix of a message about `line`.
    fn at_line(&self, line: usize) -> String {
        format!("{}:{line}:", self.catalog_path().display())
    }
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1).expect("needle in text")
}

fn assert_contains(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "message lacks `{part}`:\n{message}");
    }
}

const SEED: &str = r#"
[components.postgres]
image = "postgres:16"
[components.postgres.docker]
ports = [5432]
env = { POSTGRES_PASSWORD = "test" }
ready = { log = "ready to accept connections", timeout = "90s" }

[components.redis]
image = "quay.io/example/redis:7"
[components.redis.docker]
ports = [6379]
ready = { tcp = 6379 }

[components.migrate]
build = { context = ".", dockerfile = "docker/postgres.Dockerfile", target = "migrate" }
depends_on = ["postgres"]
[components.migrate.docker]
env = { DATABASE_URL = "postgres://app@${postgres.addr}/app" }
command = ["/migrate", "up"]
ready = { completes = true }

[components.datastorage]
build = { context = ".", dockerfile = "docker/data-storage.Dockerfile", args = { GOFLAGS = "-mod=vendor", VERSION = "e2e" }, target = "runtime" }
depends_on = ["postgres", "redis", "migrate"]
[components.datastorage.docker]
ports = [8080, 9090]
env = { POSTGRES_HOST = "${postgres.host}", POSTGRES_PORT = "${postgres.port}", REDIS = "${redis.addr}", LOG = "debug" }
ready = { http = "/readyz", port = 8080, timeout = "2m" }
[components.datastorage.kubernetes]
manifests = ["deploy/datastorage.yaml", "deploy/datastorage-service.yaml"]

[components.gateway]
build = { dockerfile = "images/Dockerfile", context = "images" }
depends_on = ["datastorage"]
[components.gateway.docker]
ports = [8443]
ready = { http = "/healthz" }
"#;

#[test]
fn seed_layout_builds_with_a_dockerfile_outside_the_context() {
    let ws = Workspace::seeded();
    let catalog = ws.load(SEED).expect("the seed catalog is valid");
    assert_eq!(catalog.path(), ws.catalog_path());
    assert_eq!(catalog.unknown("kafka").known, "datastorage, gateway, migrate, postgres, redis");

    let datastorage = catalog.get("datastorage").expect("datastorage");
    let Source::Build(build) = &datastorage.source else { panic!("datastorage is built: {:?}", datastorage.source) };
    assert!(build.context.is_absolute(), "{}", build.context.display());
    assert_eq!(build.context.canonicalize().expect("context exists"), ws.root().canonicalize().expect("root exists"));
    assert_eq!(build.dockerfile, ws.root().join("docker/data-storage.Dockerfile"));
    assert!(!build.dockerfile.starts_with(ws.root().join("images")));
    assert_eq!(build.args.get("GOFLAGS").map(String::as_str), Some("-mod=vendor"));
    assert_eq!(build.args.get("VERSION").map(String::as_str), Some("e2e"));
    assert_eq!(build.target.as_deref(), Some("runtime"));
    assert_eq!(datastorage.dependencies().collect::<Vec<_>>(), ["postgres", "redis", "migrate"]);

    let gateway = catalog.get("gateway").expect("gateway");
    let Source::Build(build) = &gateway.source else { panic!("gateway is built") };
    assert_eq!(build.context, ws.root().join("images"));
    assert_eq!(build.dockerfile, ws.root().join("images/Dockerfile"));
    assert!(build.args.is_empty());
    assert_eq!(build.target, None);
}

#[test]
fn dockerfile_defaults_to_the_one_in_the_context() {
    let ws = Workspace::seeded();
    let catalog = ws.load("[components.gateway]\nbuild = { context = \"images\" }\n").expect("valid");
    let Source::Build(build) = &catalog.get("gateway").expect("gateway").source else { panic!("built") };
    assert_eq!(build.dockerfile, ws.root().join("images/Dockerfile"));
}

#[test]
fn borrowed_images_are_canonical() {
    let ws = Workspace::seeded();
    let catalog = ws.load(SEED).expect("valid");
    let image = |name: &str| match &catalog.get(name).expect(name).source {
        Source::Borrowed(image) => image.to_string(),
        other => panic!("{name} is borrowed: {other:?}"),
    };
    assert_eq!(image("postgres"), "docker.io/library/postgres:16");
    assert_eq!(image("redis"), "quay.io/example/redis:7");
}

#[test]
fn every_probe_kind_is_read_with_its_timeout() {
    let ws = Workspace::seeded();
    let catalog = ws.load(SEED).expect("valid");
    let ready =
        |name: &str| catalog.get(name).expect(name).docker.as_ref().expect("docker").ready.clone().expect("ready");
    assert_eq!(
        ready("postgres"),
        ReadySpec {
            probe: Probe::Log(LogPattern::new("ready to accept connections").expect("a pattern")),
            timeout: Duration::from_secs(90),
            fails_on: None,
        }
    );
    assert_eq!(ready("redis"), ReadySpec { probe: Probe::Tcp(6379), timeout: Duration::from_secs(60), fails_on: None });
    assert_eq!(
        ready("migrate"),
        ReadySpec { probe: Probe::Completes, timeout: Duration::from_secs(60), fails_on: None }
    );
    assert_eq!(
        ready("datastorage"),
        ReadySpec {
            probe: Probe::Http(HttpProbe { port: 8080, path: "/readyz".into() }),
            timeout: Duration::from_secs(120),
            fails_on: None,
        }
    );
    // Without `port`, the HTTP probe uses the first published port.
    assert_eq!(ready("gateway").probe, Probe::Http(HttpProbe { port: 8443, path: "/healthz".into() }));
}

#[test]
fn docker_spec_keeps_ports_env_and_command() {
    let ws = Workspace::seeded();
    let catalog = ws.load(SEED).expect("valid");
    let docker = catalog.get("datastorage").expect("datastorage").docker.clone().expect("docker");
    assert_eq!(docker.ports, [8080, 9090]);
    assert_eq!(docker.env["POSTGRES_HOST"].as_str(), "${postgres.host}");
    assert_eq!(docker.env["REDIS"].as_str(), "${redis.addr}");
    assert_eq!(docker.env["LOG"].as_str(), "debug");
    assert_eq!(docker.command, None);
    let migrate = catalog.get("migrate").expect("migrate").docker.clone().expect("docker");
    assert_eq!(migrate.command, Some(vec!["/migrate".to_owned(), "up".to_owned()]));
    assert!(catalog.get("redis").expect("redis").docker.as_ref().expect("docker").env.is_empty());
}

#[test]
fn kubernetes_manifests_are_absolute_paths() {
    let ws = Workspace::seeded();
    let catalog = ws.load(SEED).expect("valid");
    let kubernetes = catalog.get("datastorage").expect("datastorage").kubernetes.clone().expect("kubernetes");
    assert_eq!(
        kubernetes.manifests,
        [ws.root().join("deploy/datastorage.yaml"), ws.root().join("deploy/datastorage-service.yaml")]
    );
    assert!(catalog.get("postgres").expect("postgres").kubernetes.is_none());
}

#[test]
fn component_without_docker_or_kubernetes_is_valid() {
    let ws = Workspace::new();
    let catalog = ws.load("[components.tool]\nimage = \"localhost/tool:dev\"\n").expect("valid");
    let tool = catalog.get("tool").expect("tool");
    assert!(tool.docker.is_none() && tool.kubernetes.is_none());
    assert_eq!(tool.dependencies().count(), 0);
}

#[test]
fn paths_are_relative_to_the_catalog_not_the_working_directory() {
    let ws = Workspace::seeded();
    ws.file("sub/e2e-infra.toml", "");
    let text = "[components.ds]\nbuild = { context = \"..\", dockerfile = \"../docker/data-storage.Dockerfile\" }\n";
    let catalog = Catalog::parse(&ws.root().join("sub").join(CATALOG_FILE), text).expect("valid");
    let Source::Build(build) = &catalog.get("ds").expect("ds").source else { panic!("built") };
    assert_eq!(build.dockerfile, ws.root().join("sub/../docker/data-storage.Dockerfile"));
    assert!(build.dockerfile.is_file());
}

#[test]
fn locate_walks_up_from_a_subdirectory() {
    let ws = Workspace::new();
    ws.file(CATALOG_FILE, "");
    let deep = ws.root().join("a/b/c");
    std::fs::create_dir_all(&deep).expect("mkdir");
    assert_eq!(Catalog::locate(None, None, &deep).expect("found"), ws.catalog_path());
}

#[test]
fn a_named_catalog_is_relative_to_the_start_and_the_given_path_wins() {
    let ws = Workspace::new();
    ws.file("sub/x.toml", "");
    ws.file("other.toml", "");
    let env = std::ffi::OsString::from("other.toml");
    let sub = ws.root().join("sub");
    assert_eq!(
        Catalog::locate(Some((Path::new("x.toml"), "`catalog`")), Some(&env), &sub).expect("given"),
        sub.join("x.toml")
    );
    assert_eq!(Catalog::locate(None, Some(&env), ws.root()).expect("env"), ws.root().join("other.toml"));
    let missing = Catalog::locate(None, Some(&env), &sub).expect_err("relative to the start");
    assert!(matches!(missing, CatalogError::Missing { named_by: CATALOG_ENV, .. }), "{missing:?}");
    assert_contains(&missing.to_string(), &[&sub.join("other.toml").display().to_string(), CATALOG_ENV]);
}

#[test]
fn locate_reports_where_it_started() {
    let ws = Workspace::new();
    let start = ws.root().join("empty");
    std::fs::create_dir_all(&start).expect("mkdir");
    let stray = start.ancestors().any(|d| d.join(CATALOG_FILE).is_file());
    if !stray {
        let message = Catalog::locate(None, None, &start).expect_err("no catalog").to_string();
        assert_contains(&message, &[&start.display().to_string(), CATALOG_FILE, CATALOG_ENV]);
    }
}

#[test]
fn unreadable_catalog_names_the_path() {
    let ws = Workspace::new();
    let missing = ws.root().join("nope.toml");
    let err = Catalog::load(&missing).expect_err("missing file");
    assert!(matches!(err, CatalogError::Read { .. }), "{err:?}");
    assert_contains(&err.to_string(), &[&missing.display().to_string()]);
}

// ---- Broken catalogs: each message names the file, the line and the culprit.

#[test]
fn unknown_component_key_lists_the_valid_ones() {
    let ws = Workspace::seeded();
    let text = "[components.ds]\nimage = \"postgres:16\"\nbuid = { context = \".\" }\n";
    let (err, message) = ws.reject(text);
    assert!(matches!(err, CatalogError::Syntax { .. }), "{err:?}");
    assert!(message.starts_with(&ws.at_line(3)), "{message}");
    assert_contains(&message, &["`buid`", "`build`", "`image`", "`depends_on`", "`docker`", "`kubernetes`"]);
}

#[test]
fn unknown_ready_key_lists_the_valid_ones() {
    let ws = Workspace::new();
    let text = "[components.ds]\nimage = \"ds:1\"\n[components.ds.docker]\nready = { http_path = \"/readyz\" }\n";
    let (_, message) = ws.reject(text);
    assert!(message.starts_with(&ws.at_line(4)), "{message}");
    assert_contains(
        &message,
        &["`http_path`", "`tcp`", "`http`", "`port`", "`log`", "`completes`", "`fails_on`", "`timeout`"],
    );
}

#[test]
fn unknown_top_level_key_lists_the_valid_ones() {
    let ws = Workspace::new();
    let text = "[component.ds]\nimage = \"ds:1\"\n";
    let (_, message) = ws.reject(text);
    assert!(message.starts_with(&ws.at_line(1)), "{message}");
    assert_contains(&message, &["`component`", "`components`"]);
}

#[test]
fn dependency_cycle_is_printed() {
    let ws = Workspace::new();
    let text = "[components.a]\nimage = \"a:1\"\ndepends_on = [\"b\"]\n\n[components.b]\nimage = \"b:1\"\ndepends_on = [\"a\"]\n";
    let (err, message) = ws.reject(text);
    assert!(matches!(err, CatalogError::Cycle { .. }), "{err:?}");
    assert!(message.starts_with(&ws.at_line(1)), "{message}");
    assert_contains(&message, &["dependency cycle", "a -> b -> a"]);
}

#[test]
fn longer_cycle_and_self_dependency_are_printed() {
    let ws = Workspace::new();
    let text = "[components.web]\nimage = \"w:1\"\ndepends_on = [\"api\"]\n\
                [components.api]\nimage = \"a:1\"\ndepends_on = [\"db\"]\n\
                [components.db]\nimage = \"d:1\"\ndepends_on = [\"web\"]\n";
    let (_, message) = ws.reject(text);
    assert_contains(&message, &["api -> db -> web -> api"]);
    assert!(message.starts_with(&ws.at_line(line_of(text, "[components.api]"))), "{message}");

    let (_, message) = ws.reject("[components.solo]\nimage = \"s:1\"\ndepends_on = [\"solo\"]\n");
    assert_contains(&message, &["solo -> solo"]);
}

#[test]
fn unknown_dependency_suggests_the_nearest_name() {
    let ws = Workspace::new();
    let text = "[components.postgres]\nimage = \"postgres:16\"\n\n[components.ds]\nimage = \"ds:1\"\ndepends_on = [\"postgress\"]\n";
    let (err, message) = ws.reject(text);
    assert!(matches!(err, CatalogError::UnknownDependency { .. }), "{err:?}");
    assert!(message.starts_with(&ws.at_line(6)), "{message}");
    assert_contains(&message, &["`ds`", "`postgress`", "did you mean `postgres`?", "Known: ds, postgres"]);
}

#[test]
fn unknown_dependency_far_from_any_name_suggests_nothing() {
    let ws = Workspace::new();
    let (_, message) = ws.reject("[components.ds]\nimage = \"ds:1\"\ndepends_on = [\"kafka\"]\n");
    assert!(!message.contains("did you mean"), "{message}");
    assert_contains(&message, &["`kafka`", "known: ds"]);
}

#[test]
fn missing_dockerfile_prints_the_path_tried() {
    let ws = Workspace::seeded();
    let text = "[components.ds]\nbuild = { context = \".\", dockerfile = \"docker/datastorage.Dockerfile\" }\n";
    let (err, message) = ws.reject(text);
    assert!(matches!(err, CatalogError::MissingPath { what: "Dockerfile", .. }), "{err:?}");
    assert!(message.starts_with(&ws.at_line(2)), "{message}");
    let tried = ws.root().join("docker/datastorage.Dockerfile");
    assert_contains(&message, &["`ds`", "Dockerfile not found", &tried.display().to_string()]);
}

#[test]
fn missing_default_dockerfile_prints_the_path_tried() {
    let ws = Workspace::seeded();
    let (_, message) = ws.reject("[components.ds]\nbuild = { context = \"docker\" }\n");
    assert_contains(&message, &["Dockerfile not found", &ws.root().join("docker/Dockerfile").display().to_string()]);
}

#[test]
fn missing_context_prints_the_path_tried() {
    let ws = Workspace::seeded();
    let text = "[components.ds]\nbuild = { context = \"src/ds\", dockerfile = \"docker/data-storage.Dockerfile\" }\n";
    let (err, message) = ws.reject(text);
    assert!(matches!(err, CatalogError::MissingPath { what: "build context", .. }), "{err:?}");
    assert!(message.starts_with(&ws.at_line(2)), "{message}");
    assert_contains(&message, &["build context not found", &ws.root().join("src/ds").display().to_string()]);
}

#[test]
fn two_components_with_one_name_are_rejected() {
    let ws = Workspace::new();
    let text = "[components.ds]\nimage = \"ds:1\"\n\n[components.ds]\nimage = \"ds:2\"\n";
    let (err, message) = ws.reject(text);
    assert!(matches!(err, CatalogError::Syntax { .. }), "{err:?}");
    assert!(message.starts_with(&ws.at_line(4)), "{message}");
    assert_contains(&message, &["duplicate key `ds`", "(in `[components.ds]`)"]);
}

#[test]
fn both_build_and_image_is_rejected() {
    let ws = Workspace::seeded();
    let text = "\n[components.ds]\nbuild = { dockerfile = \"docker/data-storage.Dockerfile\" }\nimage = \"ds:1\"\n";
    let (err, message) = ws.reject(text);
    assert!(matches!(err, CatalogError::Source { .. }), "{err:?}");
    assert!(message.starts_with(&ws.at_line(2)), "{message}");
    assert_contains(&message, &["`ds`", "both `build` and `image`"]);
}

#[test]
fn neither_build_nor_image_is_rejected() {
    let ws = Workspace::new();
    let text = "[components.ds]\ndepends_on = []\n";
    let (_, message) = ws.reject(text);
    assert!(message.starts_with(&ws.at_line(1)), "{message}");
    assert_contains(&message, &["`ds`", "neither `build` nor `image`", "build = {", "image = \""]);
}

#[test]
fn invalid_component_names_are_rejected() {
    let ws = Workspace::new();
    let long = "a".repeat(41);
    for name in ["DataStorage", "data_storage", "1postgres", "postgres-", &long] {
        let text = format!("[components.ok]\nimage = \"ok:1\"\n[components.\"{name}\"]\nimage = \"x:1\"\n");
        let (err, message) = ws.reject(&text);
        assert!(matches!(err, CatalogError::InvalidName { .. }), "{name}: {err:?}");
        assert!(message.starts_with(&ws.at_line(3)), "{message}");
        assert_contains(&message, &[&format!("`{name}`"), "lowercase letters", "at most 40"]);
    }
    ws.load(&format!("[components.{}]\nimage = \"x:1\"\n", "a".repeat(40))).expect("40 characters is fine");
}

#[test]
fn ready_with_two_probes_is_rejected() {
    let ws = Workspace::new();
    let text =
        "[components.ds]\nimage = \"ds:1\"\n[components.ds.docker]\nports = [80]\nready = { tcp = 80, http = \"/\" }\n";
    let (err, message) = ws.reject(text);
    assert!(matches!(err, CatalogError::Invalid { .. }), "{err:?}");
    assert!(message.starts_with(&ws.at_line(5)), "{message}");
    assert_contains(&message, &["`ds`", "exactly one probe", "tcp = PORT", "completes = true"]);
}

#[test]
fn an_exec_probe_is_read_and_an_empty_one_rejected() {
    let ws = Workspace::new();
    let text =
        "[components.ds]\nimage = \"ds:1\"\n[components.ds.docker]\nready = { exec = [\"redis-cli\", \"ping\"] }\n";
    let catalog = ws.load(text).expect("valid");
    let ready = catalog.get("ds").and_then(|c| c.docker.as_ref()).and_then(|d| d.ready.clone());
    assert_eq!(ready.map(|r| r.probe), Some(Probe::Exec(vec!["redis-cli".into(), "ping".into()])));
    for empty in ["[]", "[\"\"]"] {
        let text = format!("[components.ds]\nimage = \"ds:1\"\n[components.ds.docker]\nready = {{ exec = {empty} }}\n");
        let (_, message) = ws.reject(&text);
        assert!(message.starts_with(&ws.at_line(4)), "{empty}: {message}");
        assert_contains(&message, &["`ds`", "ready.exec needs a command"]);
    }
}

#[test]
fn ready_without_a_probe_is_rejected() {
    let ws = Workspace::new();
    for ready in ["{}", "{ timeout = \"5s\" }", "{ completes = false }", "{ port = 80 }"] {
        let text = format!("[components.ds]\nimage = \"ds:1\"\n[components.ds.docker]\nready = {ready}\n");
        let (_, message) = ws.reject(&text);
        assert!(message.starts_with(&ws.at_line(4)), "{ready}: {message}");
        assert_contains(&message, &["exactly one probe"]);
    }
}

#[test]
fn ready_with_a_bad_regex_is_rejected() {
    let ws = Workspace::new();
    let text = "[components.ds]\nimage = \"ds:1\"\n[components.ds.docker]\nready = { log = \"ready (\" }\n";
    let (_, message) = ws.reject(text);
    assert!(message.starts_with(&ws.at_line(4)), "{message}");
    assert_contains(&message, &["`ds`", "ready.log", "regular expression"]);
}

#[test]
fn a_line_that_fails_readiness_is_read_beside_the_probe_and_a_bad_one_rejected() {
    let ws = Workspace::new();
    let text = "[components.ds]\nimage = \"ds:1\"\n[components.ds.docker]\nports = [5432]\n\
                ready = { tcp = 5432, fails_on = \"FATAL: +password authentication failed\" }\n";
    let catalog = ws.load(text).expect("valid");
    let ready = catalog.get("ds").and_then(|c| c.docker.as_ref()).and_then(|d| d.ready.clone()).expect("ready");
    assert_eq!(ready.probe, Probe::Tcp(5432));
    let pattern = ready.fails_on.expect("fails_on");
    assert!(pattern.is_match(r#"FATAL:  password authentication failed for user "ds""#));
    assert!(!pattern.is_match("database system is ready to accept connections"));

    let text = "[components.ds]\nimage = \"ds:1\"\n[components.ds.docker]\nports = [5432]\n\
                ready = { tcp = 5432, fails_on = \"FATAL (\" }\n";
    let (_, message) = ws.reject(text);
    assert!(message.starts_with(&ws.at_line(5)), "{message}");
    assert_contains(&message, &["`ds`", "ready.fails_on", "regular expression"]);
}

#[test]
fn a_port_reference_to_a_dependency_without_ports_is_rejected_where_it_is_written() {
    let ws = Workspace::new();
    let text = "[components.db]\nimage = \"postgres:16\"\ndocker = {}\n[components.app]\nimage = \"app:1\"\ndepends_on = [\"db\"]\ndocker = { env = { A = \"${db.addr}\" } }\n";
    let (_, message) = ws.reject(text);
    assert!(message.starts_with(&ws.at_line(7)), "{message}");
    assert_contains(&message, &["`app`", "env `A`", "port of `db`", "`ports`"]);
}

#[test]
fn ready_with_a_bad_timeout_is_rejected() {
    let ws = Workspace::new();
    let text = "[components.ds]\nimage = \"ds:1\"\n[components.ds.docker]\nready = { tcp = 80, timeout = \"soon\" }\n";
    let (_, message) = ws.reject(text);
    assert!(message.starts_with(&ws.at_line(4)), "{message}");
    assert_contains(&message, &["`ds`", "ready.timeout `soon`", "\"30s\""]);
}

#[test]
fn http_probe_needs_a_port_and_an_absolute_path() {
    let ws = Workspace::new();
    let (_, message) =
        ws.reject("[components.ds]\nimage = \"ds:1\"\n[components.ds.docker]\nready = { http = \"/readyz\" }\n");
    assert!(message.starts_with(&ws.at_line(4)), "{message}");
    assert_contains(&message, &["ready.http needs `port`"]);
    let (_, message) = ws.reject(
        "[components.ds]\nimage = \"ds:1\"\n[components.ds.docker]\nready = { http = \"readyz\", port = 80 }\n",
    );
    assert_contains(&message, &["`readyz`", "must start with `/`"]);
}

#[test]
fn env_reference_outside_depends_on_is_rejected() {
    let ws = Workspace::new();
    let text = "[components.postgres]\nimage = \"postgres:16\"\n\n[components.ds]\nimage = \"ds:1\"\n\
                [components.ds.docker]\nenv = { DB = \"${postgres.addr}\" }\n";
    let (err, message) = ws.reject(text);
    assert!(matches!(err, CatalogError::Invalid { .. }), "{err:?}");
    assert!(message.starts_with(&ws.at_line(7)), "{message}");
    assert_contains(&message, &["`ds`", "env `DB`", "${postgres.addr}", "`postgres` is not in depends_on"]);
}

#[test]
fn env_reference_to_an_unknown_field_is_rejected() {
    let ws = Workspace::new();
    let text = "[components.postgres]\nimage = \"postgres:16\"\n[components.ds]\nimage = \"ds:1\"\ndepends_on = [\"postgres\"]\n\
                [components.ds.docker]\nenv = { DB = \"${postgres.url}\" }\n";
    let (_, message) = ws.reject(text);
    assert!(message.starts_with(&ws.at_line(7)), "{message}");
    assert_contains(&message, &["${postgres.url}", "${postgres.host}", "${postgres.port}", "${postgres.addr}"]);
}

#[test]
fn missing_manifest_prints_the_path_tried() {
    let ws = Workspace::seeded();
    let text = "[components.ds]\nimage = \"ds:1\"\n[components.ds.kubernetes]\nmanifests = [\n  \"deploy/datastorage.yaml\",\n  \"deploy/missing.yaml\",\n]\n";
    let (err, message) = ws.reject(text);
    assert!(matches!(err, CatalogError::MissingPath { what: "manifest", .. }), "{err:?}");
    assert!(message.starts_with(&ws.at_line(6)), "{message}");
    assert_contains(
        &message,
        &["`ds`", "manifest not found", &ws.root().join("deploy/missing.yaml").display().to_string()],
    );
}

#[test]
fn empty_catalog_is_rejected() {
    let ws = Workspace::new();
    for text in ["", "# nothing yet\n", "[components]\n"] {
        let (err, message) = ws.reject(text);
        assert!(matches!(err, CatalogError::Empty { .. }), "{text:?}: {err:?}");
        assert_contains(&message, &[&ws.catalog_path().display().to_string(), "no components", "[components.<name>]"]);
    }
}

#[test]
fn wrong_value_types_name_the_line_and_the_expected_type() {
    let ws = Workspace::new();
    let cases = [
        ("[components.ds]\nimage = \"ds:1\"\ndepends_on = \"postgres\"\n", 3, "depends_on", "sequence"),
        ("[components.ds]\nimage = \"ds:1\"\n[components.ds.docker]\nports = \"8080\"\n", 4, "ports", "sequence"),
        ("[components.ds]\nimage = \"ds:1\"\n[components.ds.docker]\nports = [70000]\n", 4, "ports", "u16"),
        ("[components.ds]\nimage = 16\n", 2, "image", "string"),
        (
            "[components.ds]\nimage = \"ds:1\"\n[components.ds.docker]\nready = { completes = \"yes\" }\n",
            4,
            "completes",
            "bool",
        ),
    ];
    for (text, line, key, expected) in cases {
        let (err, message) = ws.reject(text);
        assert!(matches!(err, CatalogError::Syntax { .. }), "{text}: {err:?}");
        assert!(message.starts_with(&ws.at_line(line)), "{text}: {message}");
        assert_contains(&message, &[expected, &format!("{key} = ")]);
    }
}

#[test]
fn toml_syntax_error_names_the_line() {
    let ws = Workspace::new();
    let (err, message) = ws.reject("[components.ds]\nimage = \"ds:1\nports = [1]\n");
    assert!(matches!(err, CatalogError::Syntax { .. }), "{err:?}");
    assert!(message.starts_with(&ws.at_line(2)), "{message}");
}

#[test]
fn invalid_borrowed_image_names_the_component() {
    let ws = Workspace::new();
    let (err, message) = ws.reject("[components.ds]\n\nimage = \"Postgres:16\"\n");
    assert!(matches!(err, CatalogError::Invalid { .. }), "{err:?}");
    assert!(message.starts_with(&ws.at_line(3)), "{message}");
    assert_contains(&message, &["`ds`", "`image`", "`Postgres:16`", "lowercase"]);
}

#[test]
fn at_compile_time_a_build_context_may_be_made_later_but_sources_must_exist() {
    let ws = Workspace::seeded();
    let later = "[components.ds]\nbuild = { context = \"out/ds\" }\n\n[components.pg]\nbuild = { context = \"out/pg\", dockerfile = \"docker/postgres.Dockerfile\" }\n";
    ws.file(CATALOG_FILE, later);
    let catalog = Catalog::load_sources(&ws.catalog_path()).expect("contexts made later");
    assert_eq!(catalog.known_names(), "ds, pg");
    let err = Catalog::load(&ws.catalog_path()).expect_err("before a build every path must exist");
    assert_contains(&err.to_string(), &["build context not found"]);

    let typo = "[components.ds]\nbuild = { context = \"out/ds\", dockerfile = \"docker/data-storge.Dockerfile\" }\n";
    ws.file(CATALOG_FILE, typo);
    let err = Catalog::load_sources(&ws.catalog_path()).expect_err("a Dockerfile of the sources");
    assert_contains(&err.to_string(), &["Dockerfile not found", "data-storge.Dockerfile"]);
}

#[test]
fn values_that_cannot_work_are_rejected_where_they_are_written() {
    let ws = Workspace::new();
    let db = "[components.db]\nimage = \"postgres:16\"\ndocker = { ports = [5432] }\n";
    // (the component's last line, the text its error points at, what the message says)
    let cases = [
        ("docker = { ports = [8080, 0] }", "0]", &["`app`", "`ports`", "port 0", "1 to 65535"][..]),
        ("docker = { ports = [8080, 9090, 8080] }", "8080]", &["`ports` lists 8080 twice"][..]),
        ("docker = { ready = { tcp = 0 } }", "0 }", &["`ready.tcp`", "port 0"][..]),
        ("docker = { ready = { http = \"/\", port = 0 } }", "0 }", &["`ready.port`", "port 0"][..]),
        ("depends_on = [\"db\", \"db\"]", "\"db\"]", &["`depends_on` lists `db` twice"][..]),
        (
            "depends_on = [\"db\"]\ndocker = { env = { A = \"${db.addr\" } }",
            "\"${db.addr\"",
            &["env `A`", "`${db.addr` has no closing `}`"][..],
        ),
    ];
    for (last, points_at, parts) in cases {
        let text = format!("{db}[components.app]\nimage = \"app:1\"\n{last}\n");
        let (err, message) = ws.reject(&text);
        assert!(matches!(err, CatalogError::Invalid { .. }), "{last}: {err:?}");
        let line = text.lines().count();
        let column = text.lines().last().expect("a line").rfind(points_at).expect("in the line") + 1;
        let at = format!("{}:{line}:{column}: ", ws.catalog_path().display());
        assert!(message.starts_with(&at), "{last}: {message} (wanted {at})");
        assert_contains(&message, parts);
    }
}

#[test]
fn a_catalog_of_absurd_size_is_refused_with_the_limit() {
    let ws = Workspace::new();
    let chain = |count: usize| {
        let mut text = String::from("[components.c0]\nimage = \"c:1\"\n");
        for i in 1..count {
            text.push_str(&format!("[components.c{i}]\nimage = \"c:1\"\ndepends_on = [\"c{}\"]\n", i - 1));
        }
        text
    };
    // Refused before parsing, from its size alone.
    let started = std::time::Instant::now();
    let (err, message) = ws.reject(&chain(200_000));
    assert!(matches!(err, CatalogError::TooManyBytes { .. }), "{err:?}");
    assert_contains(&message, &[&format!("at most {MAX_CATALOG_BYTES} bytes"), "split it"]);
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    let (err, message) = ws.reject(&chain(MAX_COMPONENTS + 1));
    assert!(matches!(err, CatalogError::TooLarge { .. }), "{err:?}");
    assert_contains(&message, &["1001 components", &format!("at most {MAX_COMPONENTS}")]);
    // The longest chain allowed is checked without recursion: a thread
    // with a small stack is enough.
    let catalog = std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(move || ws.load(&chain(MAX_COMPONENTS)).map(|c| c.components().len()))
        .expect("a thread")
        .join()
        .expect("no overflow");
    assert_eq!(catalog.expect("valid"), MAX_COMPONENTS);
}

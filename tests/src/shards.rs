//! CI shards on one machine: a generated suite crate whose tests read a
//! page of the run's `web` component, run as N `cargo nextest run
//! --partition count:i/N` commands, each a "machine" of its own: its own
//! PID namespace (`unshare --pid --fork --mount-proc`), state root and
//! engine, all against the cluster of the environment.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use e2e_infra::backend::{BACKEND_ENV, CONTAINERD_SOCKET_ENV, KUBE_CONTEXT_ENV};
use e2e_infra::cli_support::state::STATE_DIR_ENV;
use e2e_infra::deploy::kube::shard::{SHARD_ENV, SHARD_TTL_ENV};
use e2e_infra::plan::RUN_ID_ENV;

use crate::cluster::Cluster;

const CATALOG: &str = r#"[components.web]
build = { context = "image", dockerfile = "web.Dockerfile" }
[components.web.kubernetes]
manifests = ["web.yaml"]
"#;

/// `suite` holds the suite's name and when it was laid out, so that every
/// suite's image has inputs of its own: no engine holds it from an earlier
/// run, and the one build the shards do is a real one.
const DOCKERFILE: &str =
    "FROM scratch\nCOPY busybox /bin/busybox\nCOPY suite /suite\nRUN [\"/bin/busybox\", \"mkdir\", \"-p\", \"/www\"]\n";

const MANIFEST: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: { name: web }
spec:
  selector: { matchLabels: { app: web } }
  template:
    metadata: { labels: { app: web } }
    spec:
      terminationGracePeriodSeconds: 0
      containers:
        - name: web
          image: "${image:web}"
          command: ["/bin/busybox", "sh", "-c", "echo shared > /www/index.html && exec /bin/busybox httpd -f -p 8000 -h /www"]
          readinessProbe: { tcpSocket: { port: 8000 }, periodSeconds: 1 }
---
apiVersion: v1
kind: Service
metadata: { name: web }
spec:
  selector: { app: web }
  ports: [{ port: 8000, targetPort: 8000 }]
"#;

/// The line the process that attaches a shard to another shard's stack prints.
pub const ATTACHED: &str = "attached to the stack shard";

/// The workspace's root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// A generated suite crate of `tests` tests for one consumer.
#[derive(Debug)]
pub struct ShardSuite {
    dir: tempfile::TempDir,
    /// Its consumer.
    pub consumer: String,
}

/// One shard's finished run.
#[derive(Debug)]
pub struct ShardRun {
    /// nextest's output, and the shard's teardown process's once it ended.
    pub output: Output,
    /// Its standard output and error together.
    pub text: String,
    /// From start to the end of its teardown process.
    pub wall: Duration,
}

impl ShardSuite {
    /// Lays the suite out for `consumer` and compiles it.
    ///
    /// # Panics
    /// When it cannot be written or does not compile.
    pub fn new(consumer: &str, tests: usize) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let write = |relative: &str, contents: &str| {
            let path = dir.path().join(relative);
            std::fs::create_dir_all(path.parent().expect("a folder")).expect("folder");
            std::fs::write(path, contents).expect("write");
        };
        write("e2e-infra.toml", CATALOG);
        write("web.Dockerfile", DOCKERFILE);
        write("web.yaml", MANIFEST);
        std::fs::create_dir_all(dir.path().join("image")).expect("image folder");
        std::fs::copy(crate::BUSYBOX, dir.path().join("image/busybox")).expect("busybox: install busybox-static");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        write("image/suite", &format!("{consumer} {}\n", now.as_nanos()));
        std::fs::copy(workspace().join("Cargo.lock"), dir.path().join("Cargo.lock")).expect("lock");
        write(
            "Cargo.toml",
            &format!(
                "[package]\nname = \"{consumer}\"\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\n\
                 [workspace]\n\n[dev-dependencies]\ne2e-infra = {{ path = \"{}\" }}\n",
                workspace().join("runtime").display()
            ),
        );
        let test = "    #[test]\n    fn NAME(infra: &Infra) {\n        assert_eq!(page(infra), \"shared\");\n    }\n";
        let tests: String = (1..=tests).map(|i| test.replace("NAME", &format!("t{i:02}"))).collect();
        write(
            "tests/shards.rs",
            &format!(
                "//! Every test reads the run's `web` page.\n\n\
                 #[e2e_infra::e2e_infra(consumer = \"{consumer}\", needs = [\"web\"])]\nmod shards {{\n    \
                 use std::io::{{Read, Write}};\n    use e2e_infra::Infra;\n\n    \
                 fn page(infra: &Infra) -> String {{\n        \
                 let endpoint = infra.try_endpoint(\"web\", 8000).expect(\"web endpoint\");\n        \
                 let mut stream = std::net::TcpStream::connect(endpoint.addr()).expect(\"connect\");\n        \
                 write!(stream, \"GET /index.html HTTP/1.0\\r\\n\\r\\n\").expect(\"send\");\n        \
                 let mut text = String::new();\n        stream.read_to_string(&mut text).expect(\"read\");\n        \
                 text.rsplit(\"\\r\\n\\r\\n\").next().unwrap_or_default().trim().to_owned()\n    }}\n\n{tests}}}\n"
            ),
        );
        let suite = Self { dir, consumer: consumer.to_owned() };
        let compiled = suite.nextest(&["--no-run"]).output().expect("cargo nextest");
        assert!(
            compiled.status.success(),
            "the suite does not compile:\n{}",
            String::from_utf8_lossy(&compiled.stderr)
        );
        suite
    }

    /// The suite's folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn nextest(&self, args: &[&str]) -> Command {
        let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
        command.args(["nextest", "run", "--color", "never"]).args(args).current_dir(self.path());
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("NEXTEST") || k.starts_with("E2E_INFRA")) {
            command.env_remove(key);
        }
        command.env("CARGO_TARGET_DIR", workspace().join("target"));
        command
    }

    /// Starts shard `index` of `count` of run `run` on the engine at
    /// `docker_host` (its own PID namespace and state root), its shards
    /// living `ttl` without renewal. The command ends once the shard's
    /// teardown process has.
    ///
    /// # Panics
    /// When it cannot be started.
    pub fn start(
        &self,
        cluster: &Cluster,
        run: &str,
        (index, count): (usize, usize),
        docker_host: &str,
        ttl: Duration,
    ) -> std::process::Child {
        let state = self.path().join(format!("state-{index}"));
        std::fs::create_dir_all(&state).expect("state root");
        std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod");
        let partition = format!("count:{index}/{count}");
        let nextest = self.nextest(&["--partition", &partition, "--no-fail-fast", "--success-output", "immediate"]);
        let program = nextest.get_program().to_string_lossy().into_owned();
        let args: Vec<String> = nextest.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        // The teardown process lives on after the tests, in this PID
        // namespace: its first process waits for it (its lock) before it
        // ends, since the kernel kills a namespace's processes with it.
        let lock = state.join(run).join(&self.consumer).join("reaper.lock");
        let script = "\"$@\"; status=$?; flock \"$LOCK\" true 2>/dev/null; exit $status";
        let mut command = Command::new("unshare");
        command.args(["--pid", "--fork", "--mount-proc", "sh", "-c", script, "shard"]).arg(program).args(args);
        for (key, value) in nextest.get_envs() {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        command
            .current_dir(self.path())
            .env("LOCK", lock)
            .env(STATE_DIR_ENV, &state)
            .env(RUN_ID_ENV, run)
            .env(SHARD_ENV, index.to_string())
            .env(SHARD_TTL_ENV, ttl.as_secs().to_string())
            .env("DOCKER_HOST", docker_host)
            .env(BACKEND_ENV, "kubernetes")
            .env(CONTAINERD_SOCKET_ENV, &cluster.socket);
        if let Some(context) = &cluster.context {
            command.env(KUBE_CONTEXT_ENV, context);
        }
        command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        command.spawn().expect("unshare (util-linux)")
    }

    /// Runs one shard per run id of `runs` at once (the same id for shards
    /// of one stack, distinct ones for a stack each), shard i on engine
    /// `engines[i % engines.len()]`; returns each shard's run.
    pub fn run_shards(&self, cluster: &Cluster, runs: &[String], engines: &[String]) -> Vec<ShardRun> {
        let started = Instant::now();
        let count = runs.len();
        let children: Vec<_> = runs
            .iter()
            .enumerate()
            .map(|(i, run)| {
                let engine = &engines[i % engines.len()];
                self.start(cluster, run, (i + 1, count), engine, Duration::from_secs(60))
            })
            .collect();
        children
            .into_iter()
            .map(|child| {
                let output = child.wait_with_output().expect("a shard's run");
                let text =
                    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
                ShardRun { output, text, wall: started.elapsed() }
            })
            .collect()
    }
}

/// How many setups (build, delivery, deploy) `runs` did: every shard's
/// entering process prints the stack's summary, and one that attached to
/// another shard's stack also [`ATTACHED`].
pub fn setups(runs: &[ShardRun]) -> usize {
    let count = |needle: &str| runs.iter().map(|r| r.text.matches(needle).count()).sum::<usize>();
    count("` ready, tag ").saturating_sub(count(ATTACHED))
}

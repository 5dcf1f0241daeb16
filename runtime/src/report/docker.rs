//! The Docker (or Podman) side of a report: per container of the stack,
//! `components/<component>/<container>.log` (every start of the container:
//! the engine keeps one log across restarts), `<container>.inspect.json`
//! and `<container>.state.txt` (status, exit code, health, restarts).

use std::fmt::Write as _;

use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::LogsOptionsBuilder;
use bollard::Docker;
use futures::StreamExt;

use super::{append_bounded, bounded_call, path_name, Collect, Evidence, Folder, CALL_LIMIT};
use crate::{engine, labels};

/// Collects from the engine a stack runs on.
#[derive(Debug)]
pub(crate) struct Collector {
    engine: Result<Docker, String>,
}

impl Collector {
    /// Connects to the engine at `host` (else `DOCKER_HOST` or the default
    /// socket) within [`CALL_LIMIT`]; a failure is kept for the summary.
    pub async fn connect(host: Option<&str>) -> Self {
        let connecting = async {
            match host {
                Some(host) => crate::engine::connect_to(host).await,
                None => crate::engine::connect().await,
            }
        };
        Self { engine: bounded_call("connecting to the container engine", connecting).await }
    }
}

impl Collect for Collector {
    async fn collect(&self, folder: &Folder, evidence: &Evidence) {
        let docker = match &self.engine {
            Ok(docker) => docker,
            Err(problem) => return folder.problem(format!("every container's logs and state: {problem}")),
        };
        let listing = engine::labelled_containers(docker, &labels::filter(&evidence.key));
        let containers = match bounded_call("listing the stack's containers", listing).await {
            Ok(containers) => containers,
            Err(problem) => return folder.problem(problem),
        };
        for container in containers {
            let Some(id) = container.id.clone() else { continue };
            let name = engine::container_name(&container, &id);
            let component = container
                .labels
                .and_then(|l| l.get(labels::COMPONENT).cloned())
                .unwrap_or_else(|| "unlabelled".to_owned());
            let base = format!("components/{}/{}", path_name(&component), path_name(&name));
            match bounded_call(&format!("inspecting container `{name}`"), docker.inspect_container(&id, None)).await {
                Ok(inspected) => {
                    folder.write(
                        &format!("{base}.inspect.json"),
                        serde_json::to_string_pretty(&inspected).unwrap_or_default().as_bytes(),
                    );
                    folder.write(&format!("{base}.state.txt"), state_text(&name, &inspected).as_bytes());
                }
                Err(problem) => folder.problem(problem),
            }
            let (log, problem) = logs(docker, &id).await;
            folder.write_log(&format!("{base}.log"), &log);
            if let Some(problem) = problem {
                folder.problem(format!("the logs of container `{name}`: {problem}"));
            }
        }
    }
}

/// Every line a container wrote (stdout and stderr), its end kept, within
/// [`CALL_LIMIT`]; what stopped the reading early, if anything.
pub async fn logs(docker: &Docker, id: &str) -> (Vec<u8>, Option<String>) {
    let options = LogsOptionsBuilder::new().stdout(true).stderr(true).tail("all").build();
    let mut stream = docker.logs(id, Some(options));
    let mut log = Vec::new();
    let mut problem = None;
    let reading = async {
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(output) => append_bounded(&mut log, &output.into_bytes()),
                Err(error) => {
                    problem = Some(error.to_string());
                    break;
                }
            }
        }
    };
    if tokio::time::timeout(CALL_LIMIT, reading).await.is_err() {
        problem = Some(format!("the engine did not send them all within {CALL_LIMIT:?}"));
    }
    (log, problem)
}

/// Status, exit code, health and restarts, for people.
fn state_text(name: &str, inspected: &ContainerInspectResponse) -> String {
    let mut out = format!("container {name}\n");
    if let Some(state) = &inspected.state {
        let _ =
            writeln!(out, "status: {}", state.status.map(|s| s.to_string()).unwrap_or_else(|| "unknown".to_owned()));
        let _ = writeln!(out, "exit code: {}", state.exit_code.map_or_else(|| "-".to_owned(), |c| c.to_string()));
        let _ = writeln!(out, "oom killed: {}", state.oom_killed.unwrap_or(false));
        if let Some(error) = state.error.as_deref().filter(|e| !e.is_empty()) {
            let _ = writeln!(out, "error: {error}");
        }
        let _ = writeln!(out, "started at: {}", state.started_at.as_deref().unwrap_or("-"));
        let _ = writeln!(out, "finished at: {}", state.finished_at.as_deref().unwrap_or("-"));
        match &state.health {
            Some(health) => {
                let _ = writeln!(
                    out,
                    "health: {}",
                    health.status.map(|s| s.to_string()).unwrap_or_else(|| "unknown".to_owned())
                );
                for check in health.log.iter().flatten() {
                    let _ = writeln!(
                        out,
                        "  check exit {}: {}",
                        check.exit_code.unwrap_or_default(),
                        check.output.as_deref().unwrap_or("").trim()
                    );
                }
            }
            None => out.push_str("health: no health check\n"),
        }
    }
    let _ = writeln!(out, "restarts: {}", inspected.restart_count.unwrap_or_default());
    if let Some(image) = inspected.config.as_ref().and_then(|c| c.image.as_deref()) {
        let _ = writeln!(out, "image: {image}");
    }
    out
}

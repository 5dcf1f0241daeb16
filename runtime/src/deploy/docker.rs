//! The Docker backend: one network per run and consumer, one container per
//! component, each started once its dependencies are ready.
//!
//! Works against the Docker engine and against Podman's compatible API.
//! Readiness probes connect to the container's address on the run's network
//! rather than to the published port: the engine's port proxy accepts
//! connections on the published port even while nothing listens inside.
//!
//! One concern a file: [`DockerError`] (`error`), the run's network
//! (`network`), starting the components in dependency order (`start`), the
//! readiness probes (`probe`, and `follow` for the log probe), the logs an
//! error carries (`logs`), removal (`remove`), and reusable stacks (`reuse`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bollard::Docker;
use serde::{Deserialize, Serialize};

use crate::labels::StackLabels;
use crate::plan::Plan;
use crate::record::Witness;

mod error;
mod follow;
mod logs;
mod network;
mod probe;
mod remove;
mod reuse;
mod start;
pub use error::DockerError;
pub use remove::{remove_labelled, Removed};
pub use reuse::up_reusing;
pub use start::container_name;

/// How long one engine call of `up` may take for a component that has no
/// readiness timeout; otherwise each call gets at most the component's
/// readiness timeout, and the readiness polls only what is left of it.
pub const ENGINE_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A stack the Docker backend stood up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerStack {
    /// The run's network, named after the plan's namespace.
    pub network: String,
    /// The components, in the order they became ready.
    pub containers: Vec<RunningComponent>,
}

impl DockerStack {
    /// One component's container.
    pub fn component(&self, name: &str) -> Option<&RunningComponent> {
        self.containers.iter().find(|c| c.component == name)
    }
}

/// One ready component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Fields named for what they hold carry no doc of their own.
#[allow(missing_docs)]
pub struct RunningComponent {
    pub component: String,
    pub container_id: String,
    /// The container name, also its host name on the run's network.
    pub container_name: String,
    /// Container port to the address it is published on (127.0.0.1).
    pub ports: BTreeMap<u16, SocketAddr>,
    /// Time from start to ready.
    pub ready_after: Duration,
}

/// Creates the run's network and starts every component of `plan`, marked
/// with `labels`, each once
/// its dependencies are ready, components whose dependencies are ready
/// starting together. If a component fails, `report` (if any) writes the
/// failure report, then what `up` created is removed (the error carries
/// the failed component's logs).
///
/// # Errors
/// [`DockerError`] naming the component: no `docker` section, an env
/// reference that cannot be resolved, an engine error, a container that
/// exited before it was ready (reported at once) or a probe timeout.
///
/// # Example
/// ```no_run
/// # async fn demo(plan: e2e_infra::Plan) -> Result<(), Box<dyn std::error::Error>> {
/// let docker = e2e_infra::engine::connect().await?;
/// let labels = e2e_infra::labels::StackLabels::of(&plan);
/// let stack = e2e_infra::deploy::docker::up(&docker, &plan, &labels, None).await?;
/// let db = stack.component("postgres").and_then(|c| c.ports.get(&5432));
/// # Ok(()) }
/// ```
pub async fn up(
    docker: &Docker,
    plan: &Plan,
    labels: &StackLabels,
    report: Option<&dyn Witness>,
) -> Result<DockerStack, DockerError> {
    let envs = start::resolve_envs(plan)?;
    let network_id = network::create_network(docker, plan, labels, false).await?;
    start::start_on(docker, plan, labels, &network_id, envs, start::Started::default(), report).await
}

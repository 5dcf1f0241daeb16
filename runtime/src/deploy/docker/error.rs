//! The Docker backend's error: each variant names the component, container,
//! network or volume and what was asked of the engine.

use std::time::Duration;

use crate::engine::Silent;

/// A Docker backend error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
// Fields named for what they hold carry no doc of their own.
#[allow(missing_docs)]
pub enum DockerError {
    /// The component has no `[components.<name>.docker]` section.
    #[error("component `{component}` has no `docker` section in the catalog, so the Docker backend cannot run it; add one (ports, env, ready)")]
    NotForDocker { component: String },
    /// A network operation failed.
    #[error("{operation} network `{network}` failed")]
    Network {
        network: String,
        /// What was asked of the engine.
        operation: &'static str,
        /// The engine's error.
        source: bollard::errors::Error,
    },
    /// A container operation failed.
    #[error("{operation} container `{container}` of `{component}` failed")]
    Container {
        component: String,
        /// The container name.
        container: String,
        /// What was asked of the engine.
        operation: &'static str,
        /// The engine's error.
        source: bollard::errors::Error,
    },
    /// The container stopped before it was ready.
    #[error("component `{component}` (container `{container}`) exited with code {exit_code} {after:.1?} after start, before it was ready; last log lines:\n{logs}")]
    Exited {
        component: String,
        /// The container name.
        container: String,
        exit_code: i64,
        /// Time from start to exit seen.
        after: Duration,
        /// Its last log lines.
        logs: String,
    },
    /// The probe did not succeed within its timeout.
    #[error("component `{component}` (container `{container}`) was not ready after {timeout:?}: {probe} never succeeded (last answer: {last_answer}); last log lines:\n{logs}")]
    NotReady {
        component: String,
        /// The container name.
        container: String,
        /// The probe, described.
        probe: String,
        /// What the probe's last attempt got instead.
        last_answer: String,
        timeout: Duration,
        /// Its last log lines.
        logs: String,
    },
    /// A log line matched the component's `ready.fails_on`: it will never
    /// be ready, so the wait stopped before its timeout.
    #[error("component `{component}` (container `{container}`) will not become ready: {after:.1?} after start, while waiting for {probe}, its log has the line `{line}`, which matches `ready.fails_on` (`{pattern}`); fix what the line says, or change `fails_on` if the line is harmless; last log lines:\n{logs}")]
    FailedOn {
        component: String,
        /// The container name.
        container: String,
        /// The probe, described.
        probe: String,
        /// The `fails_on` pattern.
        pattern: String,
        /// The log line that matched.
        line: String,
        /// Time from start to the line seen.
        after: Duration,
        /// Its last log lines.
        logs: String,
    },
    /// A stack of the same run and consumer is already on the engine.
    #[error("the engine already holds a stack of run `{run_id}` and consumer `{consumer}` (network `{network}`); this call left nothing behind. Take it down with `e2e-infra down --consumer {consumer} --run {run_id}`, or use another run id")]
    StackExists {
        run_id: String,
        consumer: String,
        /// The network found.
        network: String,
    },
    /// A marker volume operation failed.
    #[error("{operation} marker volume `{volume}` failed")]
    Marker {
        volume: String,
        /// What was asked of the engine.
        operation: &'static str,
        /// The engine's error.
        source: bollard::errors::Error,
    },
    /// A volume of a marker's name (kept, or `up` finished) exists but is
    /// not that stack's marker.
    #[error("marking run `{run_id}` of consumer `{consumer}` with `{label}` failed: volume `{volume}` already exists and is not its marker (it is labelled for run `{found_run}` of consumer `{found_consumer}`); the stack is not marked, so `e2e-infra clean` may remove it. Remove that volume if nothing uses it, and mark the stack again")]
    MarkerTaken {
        volume: String,
        /// The marker's label.
        label: &'static str,
        run_id: String,
        consumer: String,
        /// The run its labels name.
        found_run: String,
        /// The consumer its labels name.
        found_consumer: String,
    },
    /// The engine did not answer a call in time (a frozen engine).
    #[error("starting `{component}` stopped")]
    Silent {
        /// The component, or the network for the run's network.
        component: String,
        /// The call and how long it was given.
        source: Silent,
    },
    /// Listing resources to remove failed.
    #[error("listing {what} labelled {filters:?} failed")]
    List {
        /// Containers or networks.
        what: &'static str,
        /// The label filters.
        filters: Vec<String>,
        /// The engine's error.
        source: bollard::errors::Error,
    },
}

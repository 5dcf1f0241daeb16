//! What a set-up stack leaves for the processes that attach to it, and what
//! the stages tell the failure report as they go.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::backend::KubeTarget;
use crate::plan::{Launcher, RunKey};

/// Where a stack runs, as recorded for the processes that attach to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Placement {
    /// Containers on a Docker (or Podman) engine.
    Docker {
        /// The engine address the stack was created on (`DOCKER_HOST`), if not the default.
        docker_host: Option<String>,
        /// The network of the stack.
        network: String,
    },
    /// Workloads in a Kubernetes namespace.
    Kubernetes {
        /// The cluster and where the images went.
        target: KubeTarget,
    },
}

/// What the setup process records for the others: everything the handle
/// carries that the plan alone does not tell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Fields named for what they hold carry no doc of their own.
#[allow(missing_docs)]
pub struct StackRecord {
    /// Which stack.
    #[serde(flatten)]
    pub key: RunKey,
    pub tag: String,
    /// The components, in dependency order, to check that attaching
    /// processes planned the same stack.
    pub components: Vec<String>,
    /// Where it runs.
    pub placement: Placement,
    /// Addresses on this machine: component -> container port -> address.
    /// On Docker, the ports published on 127.0.0.1; on Kubernetes, the
    /// port-forwards that process [`forwarded_by`](Self::forwarded_by) holds.
    pub endpoints: BTreeMap<String, BTreeMap<u16, SocketAddr>>,
    /// On Kubernetes, the run's long-lived process that holds the
    /// port-forwards of `endpoints` for every test process of the run.
    #[serde(default)]
    pub forwarded_by: Option<Launcher>,
    /// On registry delivery, the digest the registry stored for each built
    /// component: every process pins its plan's references to them.
    #[serde(default)]
    pub digests: BTreeMap<String, String>,
    /// The one-per-run summary table.
    pub summary: String,
    /// The plan as JSON, for failure reports.
    #[serde(default)]
    pub plan: Option<serde_json::Value>,
    /// Per built component, the last build output, for failure reports.
    #[serde(default)]
    pub builds: BTreeMap<String, String>,
}

/// What the stages of a setup tell whoever writes its failure report: the
/// report itself ([`Recorder`](crate::report::Recorder)) lives above the
/// stages and reads the engine and cluster, so the stages see only this.
pub trait Witness: Sync {
    /// Notes the timings table as it stands.
    fn timings(&self, table: String);
    /// Notes a component's last build output.
    fn build(&self, component: &str, output: &str);
    /// A stage failed with `failure`: called before it removes anything it
    /// started, so the report shows the stack as it was.
    fn capture<'a>(&'a self, failure: &'a str) -> BoxFuture<'a, ()>;
}

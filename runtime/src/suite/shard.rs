//! One stack for the CI shards of a run: N machines, each running a
//! partition of the suite (`cargo nextest run --partition count:i/N`),
//! with one run id (`E2E_INFRA_RUN_ID`) and a shard name of their own
//! ([`SHARD_ENV`]).
//!
//! On each machine the run's processes agree as always, through the state
//! folder: the first one enters for the whole machine. Across machines, the
//! cluster decides, through the Lease of `deploy::kube::shard` in the run's
//! namespace: the shard that creates it builds, delivers and deploys, and
//! records the stack (or its error) there; the others never build: they
//! watch the Lease until the stack is ready, and attach. Each machine's
//! teardown process renews its shard on the Lease while the machine's
//! tests run, holds the machine's port-forwards, and at the end leaves;
//! the last shard out removes the stack.

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::SuiteError;
use crate::backend::{Backend, KubeTarget};
use crate::deploy::kube::shard::{self as lease, Claim, Phase, PlanPrint, ShardError};
use crate::deploy::kube::{self as kube_backend};
use crate::plan::{Plan, RunId, RunSource};
use crate::record::{Placement, StackRecord};
use crate::stack::StackError;

pub(crate) use crate::deploy::kube::shard::SHARD_ENV;

/// This machine's shard of a shared stack.
#[derive(Debug, Clone)]
pub(super) struct Shard {
    /// Its name, from [`SHARD_ENV`].
    pub(super) name: String,
    /// How long it counts without renewing.
    pub(super) ttl: Duration,
    /// The cluster.
    pub(super) target: KubeTarget,
}

/// How this machine entered the shared stack.
#[derive(Debug)]
pub(super) enum Entered {
    /// It created the Lease: it sets the stack up.
    SetUp,
    /// Another shard set it up: here is its record.
    Attached {
        /// The shard that set up.
        holder: String,
        /// The stack.
        record: Box<StackRecord>,
    },
}

impl Shard {
    /// The shard of this process, if [`SHARD_ENV`] names one and the stack
    /// runs on Kubernetes (a Docker stack is one machine's by nature).
    ///
    /// # Errors
    /// [`SuiteError::Shard`] for a bad setting, or a run id that is not
    /// given outright: shards on different machines share nothing else.
    pub(super) fn of(backend: &Backend, run: &RunId, reuse: bool) -> Result<Option<Self>, SuiteError> {
        let Some((name, ttl)) = lease::from_env()? else { return Ok(None) };
        let Backend::Kubernetes(target) = backend else { return Ok(None) };
        if reuse {
            return Ok(None);
        }
        if run.source() != RunSource::Explicit {
            return Err(ShardError::Setting {
                variable: SHARD_ENV,
                value: name,
                expected:
                    "shards share a stack by their run id: set E2E_INFRA_RUN_ID to the CI run's id in every shard",
            }
            .into());
        }
        Ok(Some(Self { name, ttl, target: target.clone() }))
    }

    /// Claims the stack on the cluster, or joins it and waits until the
    /// shard that sets it up is done.
    ///
    /// # Errors
    /// [`SuiteError::FailedInShard`] when that setup failed; the Lease's
    /// refusals ([`ShardError::Mismatch`], [`ShardError::TornDown`]) and
    /// the cluster's errors.
    pub(super) async fn enter(&self, plan: &Plan, print: &PlanPrint) -> Result<Entered, SuiteError> {
        let client = kube_backend::connect(self.target.context.as_deref()).await.map_err(StackError::from)?;
        let images = serde_json::to_string(&self.target.images).ok();
        kube_backend::ensure_namespace(&client, plan, images).await.map_err(StackError::from)?;
        let namespace = plan.namespace().as_str();
        let joined = match lease::claim(&client, namespace, &self.name, print, self.ttl).await? {
            Claim::SetUp => return Ok(Entered::SetUp),
            Claim::Joined(joined) => joined,
        };
        if joined.holder == self.name && joined.phase == Phase::SettingUp {
            // This machine's setup process died half-way. The other shards
            // wait on this one: they fail with it rather than wait for a
            // setup that no process does any more.
            let message = format!(
                "the process of shard `{}` that set the stack up died half-way; remove what it left with \
                 `e2e-infra clean` and run again with a new {}",
                self.name,
                crate::plan::RUN_ID_ENV
            );
            lease::publish(&client, namespace, Err(message.clone())).await?;
            return Err(SuiteError::FailedInShard {
                consumer: plan.consumer().as_str().to_owned(),
                holder: self.name.clone(),
                message,
            });
        }
        tracing::info!(shard = %self.name, holder = %joined.holder, "waiting for the shared setup");
        let settled = lease::await_setup(&client, *joined, &self.name).await?;
        match (settled.phase, settled.record, settled.error) {
            (Phase::Ready, Some(record), _) => {
                let record: StackRecord = serde_json::from_str(&record).map_err(|e| ShardError::Setting {
                    variable: "the Lease's record",
                    value: e.to_string(),
                    expected: "the record of a stack, as JSON: the shards run different versions of e2e-infra",
                })?;
                // This machine reaches the cluster through its own context.
                let record = StackRecord { placement: Placement::Kubernetes { target: self.target.clone() }, ..record };
                Ok(Entered::Attached { holder: settled.holder, record: Box::new(record) })
            }
            (_, _, error) => Err(SuiteError::FailedInShard {
                consumer: plan.consumer().as_str().to_owned(),
                holder: settled.holder,
                message: error.unwrap_or_else(|| "no error was recorded".to_owned()),
            }),
        }
    }

    /// Records the setup's outcome on the Lease for the waiting shards:
    /// the record without what only this machine can use (its
    /// port-forwards, its build output).
    ///
    /// # Errors
    /// The cluster's.
    pub(super) async fn publish(&self, plan: &Plan, outcome: Result<&StackRecord, String>) -> Result<(), SuiteError> {
        let client = kube_backend::connect(self.target.context.as_deref()).await.map_err(StackError::from)?;
        let outcome = match outcome {
            Ok(record) => {
                let shared = StackRecord {
                    endpoints: Default::default(),
                    forwarded_by: None,
                    builds: Default::default(),
                    ..record.clone()
                };
                Ok(serde_json::to_string(&shared).unwrap_or_default())
            }
            Err(error) => Err(error),
        };
        Ok(lease::publish(&client, plan.namespace().as_str(), outcome).await?)
    }
}

/// What the shards compare: the consumer, the needs, and each planned
/// component's catalog entry, with the catalog's own folder left out, so
/// that checkouts in different folders agree.
pub(super) fn print(plan: &Plan, needs: &[&str], catalog: &Path) -> PlanPrint {
    let folder = catalog.parent().map(|p| p.display().to_string()).unwrap_or_default();
    let components = plan
        .components()
        .iter()
        .map(|c| {
            let spec = &c.spec;
            let dependencies: Vec<&str> = spec.dependencies().collect();
            let entry = format!("{:?}|{dependencies:?}|{:?}|{:?}", spec.source, spec.docker, spec.kubernetes);
            let entry = if folder.is_empty() { entry } else { entry.replace(&folder, "<catalog>") };
            (c.name.clone(), hex::encode(&Sha256::digest(entry)[..8]))
        })
        .collect();
    PlanPrint {
        consumer: plan.consumer().as_str().to_owned(),
        needs: needs.iter().map(|n| (*n).to_owned()).collect(),
        components,
    }
}

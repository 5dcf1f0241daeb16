//! Finding and removing what runs left behind, by their labels.
//!
//! A run's teardown process removes its stack when the run ends. When that
//! process could not (the machine went down, it was killed), the leftovers
//! carry the launcher's pid, start time, boot id and PID namespace. A run is
//! removed automatically only when it is proven over: its launcher was
//! recorded on this host, in this PID namespace, and is gone. A launcher of
//! another host or PID namespace (a CI job in a container sharing the
//! engine, a devcontainer, another machine on the same `DOCKER_HOST`)
//! cannot be judged from here: its stack is *foreign*, and is removed only
//! by `e2e-infra clean --foreign`, or automatically once it is older than
//! [`FOREIGN_TTL`]. Stacks kept on purpose (a failed test,
//! `E2E_INFRA_KEEP=1`) carry a marker on the engine or cluster and are left
//! alone unless asked. A stack brought up by hand (`e2e-infra up`) records
//! the `up` process as its launcher and gets a marker once `up` finished:
//! with the marker it is removed only by `e2e-infra down`; without it, it
//! lives as long as that `up` process, so an `up` killed half-way leaves a
//! dead stack.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::models::VolumeCreateRequest;
use bollard::query_parameters::{ListContainersOptions, ListNetworksOptions, ListVolumesOptions};
use bollard::Docker;
use sha2::{Digest, Sha256};

use crate::backend::{ImageTarget, KubeTarget};
use crate::deploy::docker::DockerError;
use crate::deploy::kube as kube_backend;
use crate::deploy::kube::shard::ShardLease;
use crate::engine;
use crate::error::error_chain;
use crate::labels::{self, StackLabels};
use crate::plan::{Consumer, Launcher, RunKey, Verdict};
use crate::stack::{self, StackError};
use crate::state::RunDir;

/// How long a foreign run (one whose launcher cannot be judged from here)
/// is presumed alive, from its stack's creation: 24 hours, longer than any
/// test run should last. After it, setup and `e2e-infra clean` remove it
/// like a dead one.
pub const FOREIGN_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// How long [`list`] gives the engine to list what runs own. A healthy
/// engine answers in milliseconds, a loaded one in seconds; one that
/// answers its ping and then nothing else (frozen) fails `status`, `down`,
/// `up`'s check and every setup's cleanup with a message after this, not
/// after the client's own two minutes.
pub const LISTING_TIMEOUT: Duration = Duration::from_secs(20);

/// Whether a run is still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Its launcher runs.
    Alive,
    /// Its launcher is gone.
    Dead,
    /// Its launcher runs on another host or in another PID namespace, or
    /// was recorded without either: nothing here can tell.
    Foreign,
    /// Brought up by hand by an `up` that finished; lives until
    /// `e2e-infra down`.
    Manual,
}

/// What one run and consumer owns on the engine.
#[derive(Debug, Clone)]
// Fields named for what they hold carry no doc of their own.
#[allow(missing_docs)]
pub struct RunStack {
    /// Which stack.
    pub key: RunKey,
    /// The launcher recorded in the labels.
    pub launcher: Option<Launcher>,
    /// Container names.
    pub containers: Vec<String>,
    /// Network names.
    pub networks: Vec<String>,
    /// The namespace and cluster, for a stack on Kubernetes.
    pub kube: Option<(String, KubeTarget)>,
    /// Kept on purpose.
    pub kept: bool,
    /// A reusable stack: outlives its runs until `down` or `clean --reused`.
    pub reused: bool,
    /// Brought up by an `e2e-infra up` that finished: lives until `down`.
    pub up_finished: bool,
    /// When its oldest resource was created, in seconds since the Unix
    /// epoch, if the engine or cluster said.
    pub created: Option<i64>,
    /// For a stack the CI shards of a run share, its Lease: the stack
    /// lives while a shard does, whatever its launcher.
    pub shards: Option<ShardLease>,
}

/// Things labelled as e2e-infra's whose run id or consumer label breaks
/// its rule: no run made them, so they are never a stack's, never removed,
/// only listed for people to look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unrecognised {
    /// The run id label, as found.
    pub run_id: String,
    /// The consumer label, as found.
    pub consumer: String,
    /// The containers, networks, volumes or namespace that carry them.
    pub names: Vec<String>,
    /// Why the two do not make a [`RunKey`].
    pub why: String,
}

/// What a listing of an engine or a cluster found.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// The stacks of runs.
    pub stacks: Vec<RunStack>,
    /// What carries e2e-infra's labels but names no valid stack.
    pub unrecognised: Vec<Unrecognised>,
}

impl Listing {
    /// Adds what another listing found.
    pub fn extend(&mut self, other: Listing) {
        self.stacks.extend(other.stacks);
        self.unrecognised.extend(other.unrecognised);
    }
}

/// What [`clean_dead`] may remove besides runs proven dead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scope {
    /// Also stacks kept on purpose.
    pub kept: bool,
    /// Also foreign runs younger than [`FOREIGN_TTL`].
    pub foreign: bool,
    /// Also reusable stacks.
    pub reused: bool,
}

impl RunStack {
    /// Whether the run is still going.
    pub fn liveness(&self) -> Liveness {
        if self.up_finished {
            return Liveness::Manual;
        }
        if let Some(lease) = &self.shards {
            // Its launcher is the set-up shard's, which may be gone while
            // other shards still test; the shards' renewals tell.
            return if lease.expired(kube_backend::shard::now_ms()) { Liveness::Dead } else { Liveness::Alive };
        }
        match self.launcher.map(|l| l.verdict()) {
            None => Liveness::Manual,
            Some(Verdict::Alive) => Liveness::Alive,
            Some(Verdict::Dead) => Liveness::Dead,
            Some(Verdict::Foreign) => Liveness::Foreign,
        }
    }

    /// Whether a foreign run has outlived [`FOREIGN_TTL`] at `now` (seconds
    /// since the Unix epoch). A run of unknown age never has.
    pub fn expired(&self, now: i64) -> bool {
        let ttl = i64::try_from(FOREIGN_TTL.as_secs()).unwrap_or(i64::MAX);
        self.created.is_some_and(|created| now.saturating_sub(created) > ttl)
    }

    /// Whether `clean` with `scope` removes this run, judged as `liveness`
    /// at `now` (seconds since the Unix epoch).
    pub(crate) fn removable(&self, liveness: Liveness, scope: Scope, now: i64) -> bool {
        if self.reused {
            return scope.reused;
        }
        if self.kept && !scope.kept {
            return false;
        }
        match liveness {
            Liveness::Dead => true,
            Liveness::Foreign => scope.foreign || self.expired(now),
            Liveness::Alive | Liveness::Manual => false,
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Parses an engine timestamp (RFC 3339) to seconds since the Unix epoch.
fn epoch_seconds(rfc3339: &str) -> Option<i64> {
    let time = humantime::parse_rfc3339_weak(rfc3339.trim_end_matches('Z').split('.').next()?).ok()?;
    i64::try_from(time.duration_since(UNIX_EPOCH).ok()?.as_secs()).ok()
}

/// The name of the volume that marks the stack `key` as kept on the
/// engine: `e2e-infra-kept-` and the SHA-256 of the run and consumer, so
/// that no two stacks share one (joining the names with `-` would give run
/// `a-b` of consumer `c` and run `b` of consumer `c-a` the same).
pub fn kept_marker(key: &RunKey) -> String {
    marker_name("kept", key)
}

/// `e2e-infra-{kind}-` and the SHA-256 of the run and consumer.
fn marker_name(kind: &str, key: &RunKey) -> String {
    let digest = Sha256::digest(format!("{}\0{}", key.run(), key.consumer()));
    format!("e2e-infra-{kind}-{}", hex::encode(digest))
}

/// Records on the engine (a small labelled volume) or the cluster (an
/// annotation on the namespace) that the stack `key`
/// is kept, and `why`. Unlike the state folder, every shell and machine
/// that lists stacks sees it.
///
/// # Errors
/// [`StackError`] when the engine or cluster refuses;
/// [`DockerError::MarkerTaken`] when a volume of the marker's name exists
/// and is not this stack's marker.
pub async fn mark_kept(
    docker: &Docker,
    key: &RunKey,
    launcher: Option<Launcher>,
    kube: Option<&KubeTarget>,
    why: &str,
) -> Result<(), StackError> {
    mark(docker, key, launcher, kube, (labels::KEPT, why), kept_marker(key)).await
}

/// Records on the engine (a small labelled volume) or the cluster (an
/// annotation on the namespace) that the `e2e-infra up` of the stack `key`
/// finished, so that the stack outlives `launcher`, that `up` process,
/// until `e2e-infra down`.
///
/// # Errors
/// As [`mark_kept`].
pub async fn mark_up_finished(
    docker: &Docker,
    key: &RunKey,
    launcher: Option<Launcher>,
    kube: Option<&KubeTarget>,
) -> Result<(), StackError> {
    mark(docker, key, launcher, kube, (labels::UP_FINISHED, "true"), marker_name("up", key)).await
}

/// Puts the marker `label` (with its value) on the stack `key`: as a
/// volume named `name` on the engine, or an annotation on the cluster.
async fn mark(
    docker: &Docker,
    key: &RunKey,
    launcher: Option<Launcher>,
    kube: Option<&KubeTarget>,
    (label, value): (&'static str, &str),
    name: String,
) -> Result<(), StackError> {
    if let Some(target) = kube {
        let client = kube_backend::connect(target.context.as_deref()).await?;
        kube_backend::mark(client, key.namespace().as_str(), label, value).await?;
        return Ok(());
    }
    let request = VolumeCreateRequest {
        name: Some(name.clone()),
        labels: Some(
            StackLabels::new(key, launcher).run().into_iter().chain([(label.to_owned(), value.to_owned())]).collect(),
        ),
        ..Default::default()
    };
    // Creating a volume that exists returns the existing one: its labels
    // say whose marker it is.
    let volume = docker.create_volume(request).await.map_err(|source| {
        StackError::Docker(DockerError::Marker { volume: name.clone(), operation: "creating", source })
    })?;
    let labelled = |key: &str| volume.labels.get(key).cloned().unwrap_or_default();
    let (run_id, consumer) = (labelled(labels::RUN), labelled(labels::CONSUMER));
    if run_id != key.run().as_str() || consumer != key.consumer().as_str() || !volume.labels.contains_key(label) {
        return Err(StackError::Docker(DockerError::MarkerTaken {
            volume: name,
            label,
            run_id: key.run().to_string(),
            consumer: key.consumer().to_string(),
            found_run: run_id,
            found_consumer: consumer,
        }));
    }
    Ok(())
}

fn managed_filter() -> HashMap<String, Vec<String>> {
    engine::label_filter(&[format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE)])
}

fn listing(what: &'static str, source: bollard::errors::Error) -> StackError {
    StackError::Docker(DockerError::List { what, filters: managed_filter()["label"].clone(), source })
}

/// Every run and consumer that owns containers, networks or a kept marker
/// on the engine. Labels that do not make a [`RunKey`] are listed apart,
/// as [`Unrecognised`].
///
/// # Errors
/// [`StackError::Docker`] when the engine cannot list them;
/// [`StackError::Silent`], naming the engine's address, when it has not
/// answered within [`LISTING_TIMEOUT`].
pub async fn list(docker: &Docker) -> Result<Listing, StackError> {
    let listing_all = async {
        let containers = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(managed_filter()),
                ..Default::default()
            }))
            .await
            .map_err(|source| listing("containers", source))?;
        let networks = docker
            .list_networks(Some(ListNetworksOptions { filters: Some(managed_filter()) }))
            .await
            .map_err(|source| listing("networks", source))?;
        let volumes = docker
            .list_volumes(Some(ListVolumesOptions { filters: Some(managed_filter()) }))
            .await
            .map_err(|source| listing("volumes", source))?;
        Ok::<_, StackError>((containers, networks, volumes))
    };
    let operation = "listing the containers, networks and marker volumes of e2e-infra's runs";
    let (containers, networks, volumes) = engine::within(docker, LISTING_TIMEOUT, operation, listing_all).await??;
    enum Kind {
        Container,
        Network,
        Marker,
    }
    let mut runs: BTreeMap<RunKey, RunStack> = BTreeMap::new();
    let mut unrecognised: BTreeMap<(String, String), Unrecognised> = BTreeMap::new();
    let owned = containers
        .into_iter()
        .map(|c| (c.labels, c.names.and_then(|n| n.into_iter().next()), c.created, Kind::Container))
        .chain(networks.into_iter().map(|n| {
            let created = n.created.as_deref().and_then(epoch_seconds);
            (n.labels, n.name, created, Kind::Network)
        }))
        .chain(volumes.volumes.unwrap_or_default().into_iter().map(|v| {
            let created = v.created_at.as_deref().and_then(epoch_seconds);
            (Some(v.labels), Some(v.name), created, Kind::Marker)
        }));
    for (labels, name, created, kind) in owned {
        let Some(labels) = labels else { continue };
        let (Some(run_id), Some(consumer)) = (labels.get(labels::RUN), labels.get(labels::CONSUMER)) else {
            continue;
        };
        let name = name.unwrap_or_default().trim_start_matches('/').to_owned();
        let key = match RunKey::parse(run_id, consumer) {
            Ok(key) => key,
            Err(invalid) => {
                unrecognised
                    .entry((run_id.clone(), consumer.clone()))
                    .or_insert_with(|| Unrecognised {
                        run_id: run_id.clone(),
                        consumer: consumer.clone(),
                        names: Vec::new(),
                        why: error_chain(&invalid),
                    })
                    .names
                    .push(name);
                continue;
            }
        };
        let run = runs.entry(key.clone()).or_insert_with(|| RunStack {
            kept: RunDir::existing(&key).is_some_and(|d| d.is_kept()),
            key,
            launcher: None,
            containers: Vec::new(),
            networks: Vec::new(),
            kube: None,
            reused: false,
            up_finished: false,
            created: None,
            shards: None,
        });
        run.reused |= labels.contains_key(labels::REUSE);
        if run.launcher.is_none() {
            run.launcher = labels.get(labels::LAUNCHER).and_then(|l| Launcher::from_label(l));
        }
        run.created = match (run.created, created) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match kind {
            Kind::Container => run.containers.push(name),
            Kind::Network => run.networks.push(name),
            Kind::Marker => {
                run.kept |= labels.contains_key(labels::KEPT);
                run.up_finished |= labels.contains_key(labels::UP_FINISHED);
            }
        }
    }
    Ok(Listing { stacks: runs.into_values().collect(), unrecognised: unrecognised.into_values().collect() })
}

/// Every run and consumer that owns a namespace on the cluster of
/// kubeconfig context `context` (the current one when `None`). A namespace
/// that does not record where its images went is skipped with a warning.
///
/// # Errors
/// [`StackError::Kube`] when the cluster does not answer or refuses.
pub async fn list_kube(context: Option<&str>) -> Result<Listing, StackError> {
    let client = kube_backend::connect(context).await?;
    let mut leases = kube_backend::shard::all(&client).await.map_err(kube_backend::KubeError::from)?;
    let mut listing = Listing::default();
    for found in kube_backend::run_namespaces(client).await? {
        let key = match RunKey::parse(&found.run_id, &found.consumer) {
            Ok(key) => key,
            Err(invalid) => {
                listing.unrecognised.push(Unrecognised {
                    why: error_chain(&invalid),
                    run_id: found.run_id,
                    consumer: found.consumer,
                    names: vec![found.name],
                });
                continue;
            }
        };
        let Some(images) = found.images.as_deref().and_then(|i| serde_json::from_str::<ImageTarget>(i).ok()) else {
            tracing::warn!(
                "namespace `{}` of run {} does not record where its images went; remove it with `kubectl delete namespace {}`",
                found.name,
                found.run_id,
                found.name
            );
            continue;
        };
        let shards = leases.remove(&found.name);
        listing.stacks.push(RunStack {
            shards,
            kept: found.kept.is_some() || RunDir::existing(&key).is_some_and(|d| d.is_kept()),
            key,
            created: found.created,
            launcher: Launcher::from_label(&found.launcher),
            kube: Some((found.name, KubeTarget { context: context.map(str::to_owned), images })),
            containers: Vec::new(),
            networks: Vec::new(),
            reused: found.reused,
            up_finished: found.up_finished,
        });
    }
    Ok(listing)
}

/// Removes the stacks among `runs` (of `consumer` only, when given) that
/// are proven dead, foreign ones past [`FOREIGN_TTL`], and what `scope`
/// adds. Returns each removed stack with what was removed.
///
/// # Errors
/// [`StackError`] when the engine or cluster refuses.
pub async fn clean_dead(
    docker: &Docker,
    runs: Vec<RunStack>,
    consumer: Option<&Consumer>,
    scope: Scope,
) -> Result<Vec<(RunStack, String)>, StackError> {
    let mut removed = Vec::new();
    let now = now();
    for run in runs {
        let ours = consumer.is_none_or(|c| c == run.key.consumer());
        if !ours || !run.removable(run.liveness(), scope, now) {
            continue;
        }
        let kube = run.kube.as_ref().map(|(_, target)| target);
        let summary = stack::down(docker, &run.key, kube).await?;
        if let Some(dir) = RunDir::existing(&run.key) {
            let _ = dir.remove();
        }
        removed.push((run, summary));
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(kept: bool, created: Option<i64>) -> RunStack {
        RunStack {
            key: RunKey::parse("r", "c").expect("a valid key"),
            launcher: None,
            containers: Vec::new(),
            networks: Vec::new(),
            kube: None,
            kept,
            reused: false,
            up_finished: false,
            created,
            shards: None,
        }
    }

    #[test]
    fn a_reusable_stack_goes_only_when_asked() {
        let now = 1_000_000_000;
        let reused = RunStack { reused: true, ..run(false, Some(now)) };
        for liveness in [Liveness::Alive, Liveness::Dead, Liveness::Foreign, Liveness::Manual] {
            assert!(!reused.removable(liveness, Scope { kept: true, foreign: true, reused: false }, now));
            assert!(reused.removable(liveness, Scope { reused: true, ..Scope::default() }, now));
        }
    }

    #[test]
    fn only_proven_dead_runs_are_removed_unless_asked() {
        let now = 1_000_000_000;
        let day = i64::try_from(FOREIGN_TTL.as_secs()).expect("fits");
        let auto = Scope::default();
        let fresh = run(false, Some(now - 60));
        assert!(fresh.removable(Liveness::Dead, auto, now));
        assert!(!fresh.removable(Liveness::Alive, auto, now));
        assert!(!fresh.removable(Liveness::Manual, auto, now));
        assert!(!fresh.removable(Liveness::Manual, Scope { kept: true, foreign: true, reused: false }, now));
        // Foreign: alive as far as anyone here knows.
        assert!(!fresh.removable(Liveness::Foreign, auto, now));
        assert!(!fresh.removable(Liveness::Foreign, Scope { kept: true, foreign: false, reused: false }, now));
        assert!(fresh.removable(Liveness::Foreign, Scope { kept: false, foreign: true, reused: false }, now));
        // ... until its time to live is over.
        let old = run(false, Some(now - day - 1));
        assert!(old.removable(Liveness::Foreign, auto, now));
        assert!(!run(false, Some(now - day + 60)).removable(Liveness::Foreign, auto, now));
        assert!(!run(false, None).removable(Liveness::Foreign, auto, now), "unknown age never expires");
        // Kept wins over everything but an explicit --kept.
        let kept = run(true, Some(now - 10 * day));
        for liveness in [Liveness::Dead, Liveness::Foreign] {
            assert!(!kept.removable(liveness, auto, now));
            assert!(!kept.removable(liveness, Scope { kept: false, foreign: true, reused: false }, now));
            assert!(kept.removable(liveness, Scope { kept: true, foreign: true, reused: false }, now));
        }
    }

    #[test]
    fn an_up_is_judged_by_its_process_until_it_marks_the_stack_finished() {
        let here = crate::plan::Host::current();
        let gone = Launcher { pid: u32::MAX, start_ticks: 1, host: here };
        let going = Launcher::of(std::process::id()).expect("this process is seen");
        let killed = RunStack { launcher: Some(gone), ..run(false, None) };
        assert_eq!(killed.liveness(), if here.is_some() { Liveness::Dead } else { Liveness::Foreign });
        assert_eq!(RunStack { launcher: Some(going), ..run(false, None) }.liveness(), Liveness::Alive);
        assert_eq!(RunStack { up_finished: true, ..killed }.liveness(), Liveness::Manual);
        assert_eq!(run(false, None).liveness(), Liveness::Manual, "an older `up` recorded no launcher");
    }

    #[test]
    fn engine_timestamps_are_read() {
        assert_eq!(epoch_seconds("1970-01-01T00:01:40Z"), Some(100));
        assert_eq!(epoch_seconds("2026-11-27T22:19:58.123456789Z"), Some(1_795_817_998));
        assert_eq!(epoch_seconds("not a time"), None);
    }
}

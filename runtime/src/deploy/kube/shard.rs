//! CI shards that share one stack: a `Lease` (coordination.k8s.io/v1) in
//! the run's namespace says who sets the stack up, what plan it stands for,
//! how far setup got and which shards use it.
//!
//! Every change is a read and a replace under the Lease's
//! `resourceVersion`, retried on conflict, so two shards never both believe
//! they set up, a shard never joins a stack whose teardown began, and
//! exactly one shard finds itself the last one out.
//!
//! The Lease holds, besides its `holderIdentity` (the shard that set up),
//! `leaseDurationSeconds` (the shards' time to live) and `renewTime` (the
//! last renewal of any shard), these annotations:
//! - [`PHASE_ANNOTATION`]: `setting-up`, `ready`, `failed` or `tearing-down`;
//! - [`PLAN_ANNOTATION`]: the set-up shard's [`PlanPrint`];
//! - [`RECORD_ANNOTATION`]: the stack's record once it is ready;
//! - [`ERROR_ANNOTATION`]: the setup's error once it failed;
//! - [`SHARDS_ANNOTATION`]: every shard that joined, its last renewal,
//!   whether it left, and the tests that failed in it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::api::{ListParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Api, Client, ResourceExt};
use serde::{Deserialize, Serialize};

use crate::labels;

/// Names this process's shard and turns sharing on: every shard of one run
/// (one [`RUN_ID_ENV`](crate::plan::RUN_ID_ENV)) on a Kubernetes backend
/// shares one stack. A name of 1 to 63 letters, digits, `-`, `_` or `.`.
pub const SHARD_ENV: &str = "E2E_INFRA_SHARD";
/// Seconds a shard stays a member without renewing (default
/// [`DEFAULT_TTL`]); its teardown process renews every third of it.
pub const SHARD_TTL_ENV: &str = "E2E_INFRA_SHARD_TTL";
/// How long a shard that stopped renewing (its machine died) still counts.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// The Lease's name in the run's namespace.
pub const LEASE: &str = "e2e-infra-shards";
/// How far the shared setup got.
pub const PHASE_ANNOTATION: &str = "io.e2e-infra.phase";
/// The set-up shard's plan, as JSON.
pub const PLAN_ANNOTATION: &str = "io.e2e-infra.plan";
/// The stack's record, as JSON, once ready.
pub const RECORD_ANNOTATION: &str = "io.e2e-infra.record";
/// The setup's error, once failed.
pub const ERROR_ANNOTATION: &str = "io.e2e-infra.error";
/// The shards, as JSON.
pub const SHARDS_ANNOTATION: &str = "io.e2e-infra.shards";

/// How far the shared setup got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The holder is building, delivering and deploying.
    SettingUp,
    /// The stack is up; its record is on the Lease.
    Ready,
    /// Setup failed; its error is on the Lease.
    Failed,
    /// The last shard out is removing the stack: no shard joins any more.
    TearingDown,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Self::SettingUp => "setting-up",
            Self::Ready => "ready",
            Self::Failed => "failed",
            Self::TearingDown => "tearing-down",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [Self::SettingUp, Self::Ready, Self::Failed, Self::TearingDown].into_iter().find(|p| p.as_str() == text)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a stack stands for, compared between shards: the consumer, the
/// needs, and a digest of each planned component's catalog entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanPrint {
    /// The consumer.
    pub consumer: String,
    /// The needs, as the suite names them.
    pub needs: Vec<String>,
    /// Each planned component and the digest of its catalog entry.
    pub components: BTreeMap<String, String>,
}

impl PlanPrint {
    /// The digest of the whole print.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let text = serde_json::to_string(self).unwrap_or_default();
        hex::encode(&Sha256::digest(text)[..12])
    }

    /// How `self` (a joining shard's) differs from `recorded` (the set-up
    /// shard's), one difference a line; empty when they agree.
    pub fn difference(&self, recorded: &Self) -> Vec<String> {
        let mut lines = Vec::new();
        if self.consumer != recorded.consumer {
            lines.push(format!("consumer: set up `{}`, this shard `{}`", recorded.consumer, self.consumer));
        }
        if self.needs != recorded.needs {
            lines.push(format!(
                "needs: set up [{}], this shard [{}]",
                recorded.needs.join(", "),
                self.needs.join(", ")
            ));
        }
        for (name, digest) in &recorded.components {
            match self.components.get(name) {
                None => lines.push(format!("component `{name}`: in the set-up stack, not planned by this shard")),
                Some(ours) if ours != digest => lines.push(format!(
                    "component `{name}`: its catalog entry differs (set up {digest}, this shard {ours})"
                )),
                Some(_) => {}
            }
        }
        for name in self.components.keys().filter(|n| !recorded.components.contains_key(*n)) {
            lines.push(format!("component `{name}`: planned by this shard, not in the set-up stack"));
        }
        lines
    }
}

/// One shard as the Lease records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// When it joined, in milliseconds since the Unix epoch.
    pub joined: i64,
    /// Its last renewal, in milliseconds since the Unix epoch.
    pub renewed: i64,
    /// It left (its tests ended).
    #[serde(default)]
    pub left: bool,
    /// Tests that failed in it: the last shard out keeps the stack then.
    #[serde(default)]
    pub failed: Vec<String>,
}

/// The Lease of a shared stack, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardLease {
    /// The run's namespace.
    pub namespace: String,
    /// The shard that set up.
    pub holder: String,
    /// How far setup got.
    pub phase: Phase,
    /// How long a shard counts without renewing.
    pub ttl: Duration,
    /// The set-up shard's plan.
    pub plan: Option<PlanPrint>,
    /// The stack's record, as JSON, once ready.
    pub record: Option<String>,
    /// The setup's error, once failed.
    pub error: Option<String>,
    /// Every shard that joined.
    pub members: BTreeMap<String, Member>,
    resource_version: Option<String>,
}

impl ShardLease {
    /// Whether shard `name` still counts at `now_ms`: it has not left and
    /// renewed within the time to live.
    pub fn is_live(&self, name: &str, now_ms: i64) -> bool {
        let ttl = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        self.members.get(name).is_some_and(|m| !m.left && now_ms.saturating_sub(m.renewed) <= ttl)
    }

    /// The shards that still count at `now_ms`.
    pub fn live(&self, now_ms: i64) -> Vec<&str> {
        self.members.keys().map(String::as_str).filter(|n| self.is_live(n, now_ms)).collect()
    }

    /// Whether every shard is gone (left, or silent past the time to live):
    /// nothing uses the stack, and `clean` may remove it.
    pub fn expired(&self, now_ms: i64) -> bool {
        self.live(now_ms).is_empty()
    }

    /// Every failed test of every shard, as `shard: test`.
    pub fn failed_tests(&self) -> Vec<String> {
        self.members.iter().flat_map(|(shard, m)| m.failed.iter().map(move |t| format!("{shard}: {t}"))).collect()
    }

    fn read(lease: &Lease) -> Self {
        let annotation = |key: &str| lease.annotations().get(key).cloned();
        let spec = lease.spec.clone().unwrap_or_default();
        Self {
            namespace: lease.namespace().unwrap_or_default(),
            holder: spec.holder_identity.unwrap_or_default(),
            // An unreadable phase is taken as teardown: nothing joins it.
            phase: annotation(PHASE_ANNOTATION).and_then(|p| Phase::parse(&p)).unwrap_or(Phase::TearingDown),
            ttl: Duration::from_secs(spec.lease_duration_seconds.and_then(|s| u64::try_from(s).ok()).unwrap_or(60)),
            plan: annotation(PLAN_ANNOTATION).and_then(|p| serde_json::from_str(&p).ok()),
            record: annotation(RECORD_ANNOTATION),
            error: annotation(ERROR_ANNOTATION),
            members: annotation(SHARDS_ANNOTATION).and_then(|m| serde_json::from_str(&m).ok()).unwrap_or_default(),
            resource_version: lease.resource_version(),
        }
    }

    fn write(&self) -> Lease {
        let mut lease = Lease::default();
        lease.metadata.name = Some(LEASE.to_owned());
        lease.metadata.namespace = Some(self.namespace.clone());
        lease.metadata.resource_version = self.resource_version.clone();
        lease.metadata.labels =
            Some(BTreeMap::from([(labels::MANAGED_BY.to_owned(), labels::MANAGED_BY_VALUE.to_owned())]));
        let mut annotations = BTreeMap::from([
            (PHASE_ANNOTATION.to_owned(), self.phase.as_str().to_owned()),
            (SHARDS_ANNOTATION.to_owned(), serde_json::to_string(&self.members).unwrap_or_default()),
        ]);
        let optional = [
            (PLAN_ANNOTATION, self.plan.as_ref().and_then(|p| serde_json::to_string(p).ok())),
            (RECORD_ANNOTATION, self.record.clone()),
            (ERROR_ANNOTATION, self.error.clone()),
        ];
        annotations.extend(optional.into_iter().filter_map(|(k, v)| Some((k.to_owned(), v?))));
        lease.metadata.annotations = Some(annotations);
        let renewed = self.members.values().map(|m| m.renewed).max().unwrap_or_else(now_ms);
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.holder.clone()),
            lease_duration_seconds: Some(i32::try_from(self.ttl.as_secs()).unwrap_or(i32::MAX)),
            renew_time: micro_time(renewed),
            ..LeaseSpec::default()
        });
        lease
    }
}

/// `MicroTime` of `ms` milliseconds since the Unix epoch.
fn micro_time(ms: i64) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime> {
    let time = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).ok()?);
    serde_json::from_value(serde_json::Value::String(humantime::format_rfc3339_micros(time).to_string())).ok()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A shared stack could not be set up, joined, renewed or left.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
// Fields named for what they hold carry no doc of their own.
#[allow(missing_docs)]
pub enum ShardError {
    /// The cluster refused a request on the Lease.
    #[error("{operation} Lease `{LEASE}` in namespace `{namespace}` failed")]
    Lease {
        /// What was being done.
        operation: &'static str,
        namespace: String,
        /// kube's error.
        #[source]
        source: kube::Error,
    },
    /// Watching the Lease failed.
    #[error("watching Lease `{LEASE}` in namespace `{namespace}` for the setup of shard `{holder}` failed")]
    Watch {
        namespace: String,
        holder: String,
        /// The watch's error.
        #[source]
        source: kube::runtime::wait::Error,
    },
    /// The set-up shard planned another stack.
    #[error("shard `{shard}` plans another stack than shard `{holder}` set up in namespace `{namespace}` (plan {ours}, set up {theirs}); it was not attached:\n{}\ngive every shard of a run the same catalog, consumer and needs", difference.iter().map(|d| format!("  - {d}")).collect::<Vec<_>>().join("\n"))]
    Mismatch {
        shard: String,
        holder: String,
        namespace: String,
        /// This shard's plan digest.
        ours: String,
        /// The set-up shard's plan digest.
        theirs: String,
        /// One line per difference.
        difference: Vec<String>,
    },
    /// The stack's teardown began before this shard joined.
    #[error("shard `{shard}` came too late: the shared stack in namespace `{namespace}` is being torn down (every shard that used it left); run again with a new E2E_INFRA_RUN_ID")]
    TornDown { shard: String, namespace: String },
    /// The shard that set up stopped renewing before setup finished.
    #[error("shard `{holder}`, which was setting the stack up in namespace `{namespace}`, stopped renewing its Lease more than {} ago: its machine or its tests died; remove the stack with `e2e-infra clean` and run again", humantime::format_duration(*ttl))]
    SetupDied { holder: String, namespace: String, ttl: Duration },
    /// The Lease disappeared while this shard waited.
    #[error("Lease `{LEASE}` in namespace `{namespace}` disappeared while shard `{shard}` waited for the setup: the stack was removed (`e2e-infra clean`, or a namespace deleted by hand)")]
    Gone { shard: String, namespace: String },
    /// `E2E_INFRA_SHARD` or `E2E_INFRA_SHARD_TTL` cannot be used.
    #[error("{variable}=`{value}` cannot be used: {expected}")]
    Setting { variable: &'static str, value: String, expected: &'static str },
}

/// This process's shard and the shards' time to live, from
/// [`SHARD_ENV`] and [`SHARD_TTL_ENV`]; `None` when sharing is off.
///
/// # Errors
/// [`ShardError::Setting`] for a name that cannot key the Lease's record,
/// or a time to live that is not a whole number of seconds from 3.
pub fn from_env() -> Result<Option<(String, Duration)>, ShardError> {
    let Some(name) = std::env::var(SHARD_ENV).ok().filter(|s| !s.is_empty()) else { return Ok(None) };
    let safe = name.len() <= 63 && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !safe {
        return Err(ShardError::Setting {
            variable: SHARD_ENV,
            value: name,
            expected: "name the shard with 1 to 63 letters, digits, '-', '_' or '.' (the CI matrix index will do)",
        });
    }
    let ttl = match std::env::var(SHARD_TTL_ENV).ok().filter(|s| !s.is_empty()) {
        None => DEFAULT_TTL,
        Some(text) => match text.parse::<u64>() {
            Ok(secs) if secs >= 3 => Duration::from_secs(secs),
            _ => {
                return Err(ShardError::Setting {
                    variable: SHARD_TTL_ENV,
                    value: text,
                    expected: "give whole seconds, 3 or more",
                })
            }
        },
    };
    Ok(Some((name, ttl)))
}

/// What [`claim`] found.
#[derive(Debug)]
pub enum Claim {
    /// This shard created the Lease: it sets the stack up.
    SetUp,
    /// Another shard sets up or did; this one joined.
    Joined(Box<ShardLease>),
}

fn api(client: &Client, namespace: &str) -> Api<Lease> {
    Api::namespaced(client.clone(), namespace)
}

fn failed<'a>(operation: &'static str, namespace: &'a str) -> impl FnOnce(kube::Error) -> ShardError + 'a {
    move |source| ShardError::Lease { operation, namespace: namespace.to_owned(), source }
}

/// Creates the Lease in `namespace` (which must exist) with this shard as
/// its holder, or, when another shard created it first, joins it: refused
/// when the plans differ or teardown began.
///
/// # Errors
/// [`ShardError::Mismatch`], [`ShardError::TornDown`]; [`ShardError::Lease`]
/// when the cluster refuses.
pub async fn claim(
    client: &Client,
    namespace: &str,
    shard: &str,
    plan: &PlanPrint,
    ttl: Duration,
) -> Result<Claim, ShardError> {
    let now = now_ms();
    let fresh = ShardLease {
        namespace: namespace.to_owned(),
        holder: shard.to_owned(),
        phase: Phase::SettingUp,
        ttl,
        plan: Some(plan.clone()),
        record: None,
        error: None,
        members: BTreeMap::from([(
            shard.to_owned(),
            Member { joined: now, renewed: now, left: false, failed: vec![] },
        )]),
        resource_version: None,
    };
    match api(client, namespace).create(&PostParams::default(), &fresh.write()).await {
        Ok(_) => return Ok(Claim::SetUp),
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        // The last shard out is deleting the namespace.
        Err(kube::Error::Api(status)) if status.code == 403 && status.message.contains("terminat") => {
            return Err(ShardError::TornDown { shard: shard.to_owned(), namespace: namespace.to_owned() })
        }
        Err(source) => return Err(failed("creating", namespace)(source)),
    }
    let joined = update(client, namespace, |lease| {
        if lease.phase == Phase::TearingDown {
            return Err(ShardError::TornDown { shard: shard.to_owned(), namespace: namespace.to_owned() });
        }
        let recorded = lease.plan.clone().unwrap_or_else(|| PlanPrint {
            consumer: String::new(),
            needs: Vec::new(),
            components: BTreeMap::new(),
        });
        if recorded != *plan {
            return Err(ShardError::Mismatch {
                shard: shard.to_owned(),
                holder: lease.holder.clone(),
                namespace: namespace.to_owned(),
                ours: plan.digest(),
                theirs: recorded.digest(),
                difference: plan.difference(&recorded),
            });
        }
        let now = now_ms();
        let member = lease.members.entry(shard.to_owned()).or_insert(Member {
            joined: now,
            renewed: now,
            left: false,
            failed: Vec::new(),
        });
        member.renewed = now;
        member.left = false;
        Ok(true)
    })
    .await?;
    let joined = joined.ok_or_else(|| ShardError::Gone { shard: shard.to_owned(), namespace: namespace.to_owned() })?;
    Ok(Claim::Joined(Box::new(joined)))
}

/// Reads the Lease, applies `change` and replaces it under the version
/// read, until no other shard changed it in between. `change` returns
/// whether to write. `None` when there is no Lease.
async fn update(
    client: &Client,
    namespace: &str,
    mut change: impl FnMut(&mut ShardLease) -> Result<bool, ShardError>,
) -> Result<Option<ShardLease>, ShardError> {
    let api = api(client, namespace);
    loop {
        let Some(found) = api.get_opt(LEASE).await.map_err(failed("reading", namespace))? else { return Ok(None) };
        let mut lease = ShardLease::read(&found);
        if !change(&mut lease)? {
            return Ok(Some(lease));
        }
        match api.replace(LEASE, &PostParams::default(), &lease.write()).await {
            Ok(written) => return Ok(Some(ShardLease::read(&written))),
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(source) => return Err(failed("updating", namespace)(source)),
        }
    }
}

/// Records the end of the setup: the stack's record (JSON) when it came
/// up, the error otherwise. Every waiting shard sees it at once.
///
/// # Errors
/// [`ShardError::Lease`] when the cluster refuses.
pub async fn publish(client: &Client, namespace: &str, outcome: Result<String, String>) -> Result<(), ShardError> {
    update(client, namespace, |lease| {
        match &outcome {
            Ok(record) => {
                lease.phase = Phase::Ready;
                lease.record = Some(record.clone());
            }
            Err(error) => {
                lease.phase = Phase::Failed;
                lease.error = Some(error.clone());
            }
        }
        Ok(true)
    })
    .await
    .map(drop)
}

/// Waits (a watch on the Lease) until the setup `lease` describes is
/// ready or failed; between events, every time to live, checks that the
/// holder still renews.
///
/// # Errors
/// [`ShardError::SetupDied`] when the holder went silent,
/// [`ShardError::TornDown`], [`ShardError::Gone`], [`ShardError::Watch`].
pub async fn await_setup(client: &Client, lease: ShardLease, shard: &str) -> Result<ShardLease, ShardError> {
    let namespace = lease.namespace.clone();
    let mut lease = lease;
    loop {
        match lease.phase {
            Phase::Ready | Phase::Failed => return Ok(lease),
            Phase::TearingDown => {
                return Err(ShardError::TornDown { shard: shard.to_owned(), namespace });
            }
            Phase::SettingUp if !lease.is_live(&lease.holder, now_ms()) => {
                return Err(ShardError::SetupDied { holder: lease.holder, namespace, ttl: lease.ttl })
            }
            Phase::SettingUp => {}
        }
        let settled = |l: Option<&Lease>| {
            l.is_none_or(|l| l.annotations().get(PHASE_ANNOTATION).is_none_or(|p| p != Phase::SettingUp.as_str()))
        };
        let watched = await_condition(api(client, &namespace), LEASE, settled);
        let found = match tokio::time::timeout(lease.ttl, watched).await {
            Ok(Ok(found)) => found,
            Ok(Err(source)) => {
                return Err(ShardError::Watch { namespace: namespace.clone(), holder: lease.holder, source })
            }
            // No change within a time to live: read again to judge the holder.
            Err(_) => api(client, &namespace).get_opt(LEASE).await.map_err(failed("reading", &namespace))?,
        };
        let Some(found) = found else { return Err(ShardError::Gone { shard: shard.to_owned(), namespace }) };
        lease = ShardLease::read(&found);
    }
}

/// Renews shard `shard`'s membership. Returns the Lease as written, `None`
/// when it is gone.
///
/// # Errors
/// [`ShardError::Lease`] when the cluster refuses.
pub async fn renew(client: &Client, namespace: &str, shard: &str) -> Result<Option<ShardLease>, ShardError> {
    update(client, namespace, |lease| {
        let Some(member) = lease.members.get_mut(shard).filter(|m| !m.left) else { return Ok(false) };
        member.renewed = now_ms();
        Ok(true)
    })
    .await
}

/// What [`leave`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Left {
    /// Other shards still use the stack.
    Others(Vec<String>),
    /// This shard was the last: the Lease now says `tearing-down`, and this
    /// shard removes the stack (or keeps it for these failed tests).
    LastOut {
        /// Every failed test of every shard.
        failed: Vec<String>,
    },
    /// There is no Lease, or another shard went last: the stack is gone
    /// or going.
    Gone,
}

/// Shard `shard` leaves with the tests that failed in it. The shard that
/// leaves no live shard behind also sets the phase to `tearing-down`, in
/// the same write: no shard joins after it, and no other shard finds
/// itself last.
///
/// # Errors
/// [`ShardError::Lease`] when the cluster refuses.
pub async fn leave(client: &Client, namespace: &str, shard: &str, failed: &[String]) -> Result<Left, ShardError> {
    let (mut others, mut torn_down) = (Vec::new(), false);
    let written = update(client, namespace, |lease| {
        if lease.phase == Phase::TearingDown {
            // Another shard saw this one silent and went last.
            torn_down = true;
            return Ok(false);
        }
        let now = now_ms();
        // A shard that was refused never joined: it leaves nothing.
        let Some(member) = lease.members.get_mut(shard) else {
            others = lease.live(now).into_iter().map(str::to_owned).collect();
            others.push(String::new());
            return Ok(false);
        };
        member.left = true;
        member.failed = failed.to_vec();
        others = lease.live(now).into_iter().map(str::to_owned).collect();
        if others.is_empty() {
            lease.phase = Phase::TearingDown;
        }
        Ok(true)
    })
    .await?;
    Ok(match written {
        None => Left::Gone,
        Some(_) if torn_down => Left::Gone,
        Some(lease) if lease.phase == Phase::TearingDown && others.is_empty() => {
            Left::LastOut { failed: lease.failed_tests() }
        }
        Some(_) => Left::Others(others.into_iter().filter(|o| !o.is_empty()).collect()),
    })
}

/// The Lease of the shared stack in `namespace`, if there is one.
///
/// # Errors
/// [`ShardError::Lease`] when the cluster refuses.
pub async fn read(client: &Client, namespace: &str) -> Result<Option<ShardLease>, ShardError> {
    let found = api(client, namespace).get_opt(LEASE).await.map_err(failed("reading", namespace))?;
    Ok(found.as_ref().map(ShardLease::read))
}

/// Every shared stack's Lease on the cluster, by namespace.
///
/// # Errors
/// [`ShardError::Lease`] when the cluster refuses.
pub async fn all(client: &Client) -> Result<BTreeMap<String, ShardLease>, ShardError> {
    let api: Api<Lease> = Api::all(client.clone());
    let selector = format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE);
    let listed = api.list(&ListParams::default().labels(&selector)).await.map_err(failed("listing every", "(all)"))?;
    Ok(listed
        .items
        .iter()
        .filter(|l| l.name_any() == LEASE)
        .map(|l| {
            let lease = ShardLease::read(l);
            (lease.namespace.clone(), lease)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn print(needs: &[&str], components: &[(&str, &str)]) -> PlanPrint {
        PlanPrint {
            consumer: "c".to_owned(),
            needs: needs.iter().map(|s| (*s).to_owned()).collect(),
            components: components.iter().map(|(n, d)| ((*n).to_owned(), (*d).to_owned())).collect(),
        }
    }

    #[test]
    fn the_difference_names_needs_and_components() {
        let set_up = print(&["api"], &[("api", "aaa"), ("store", "sss")]);
        let ours = print(&["api", "cache"], &[("api", "bbb"), ("store", "sss"), ("cache", "ccc")]);
        let difference = ours.difference(&set_up);
        assert_eq!(difference.len(), 3, "{difference:?}");
        assert!(difference[0].contains("set up [api], this shard [api, cache]"), "{difference:?}");
        assert!(difference.iter().any(|d| d.contains("`api`: its catalog entry differs")), "{difference:?}");
        assert!(difference.iter().any(|d| d.contains("`cache`: planned by this shard")), "{difference:?}");
        assert!(set_up.difference(&set_up).is_empty());
        assert_ne!(ours.digest(), set_up.digest());
    }

    #[test]
    fn a_shard_counts_until_it_leaves_or_its_time_to_live_passes() {
        let member = |renewed, left| Member { joined: 0, renewed, left, failed: vec!["t".to_owned()] };
        let lease = ShardLease {
            namespace: "ns".to_owned(),
            holder: "1".to_owned(),
            phase: Phase::Ready,
            ttl: Duration::from_secs(10),
            plan: None,
            record: None,
            error: None,
            members: BTreeMap::from([
                ("1".to_owned(), member(100_000, false)),
                ("2".to_owned(), member(105_000, true)),
            ]),
            resource_version: None,
        };
        assert_eq!(lease.live(110_000), vec!["1"]);
        assert!(!lease.expired(110_000));
        assert!(lease.expired(110_001), "silent for longer than its time to live");
        assert_eq!(lease.failed_tests(), vec!["1: t", "2: t"]);
        let written = ShardLease::read(&lease.write());
        assert_eq!(ShardLease { namespace: "ns".to_owned(), ..written }, lease);
    }
}

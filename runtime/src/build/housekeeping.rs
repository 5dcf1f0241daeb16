//! Image housekeeping: every run gives each built image one more reference,
//! its run tag (`<registry>/<component>:<consumer>-<8 hex>`). Left alone they
//! pile up; this keeps the run tags of the newest runs per component and
//! removes the older ones. It also removes the images this project built
//! that were left with no reference at all (a build killed before its tag),
//! once they are older than the grace period.
//!
//! What is never removed:
//! - a cache reference (`:cache-<digest prefix>`): it is the build cache;
//! - any reference that is not a run tag on an image this project built for
//!   that component (a borrowed image, a tag a user gave, an image built
//!   `FROM` one of ours under another name);
//! - a run tag that some container on the engine was created from, or whose
//!   run still has its network (a run in progress, a kept stack);
//! - the references the caller protects (the run that just built);
//! - any run tag of an image created or tagged within the grace period
//!   ([`GRACE`]): another run may have just built or tagged it and not yet
//!   started its containers. Docker records when an image was last tagged;
//!   Podman does not, so there a cache hit's tag on an older image is
//!   protected only once that run's network exists.
//!
//! After builds, housekeeping runs whenever a run built an image, and at most
//! every [`REUSE_PRUNE_EVERY`] per engine and set of components when a run
//! reused every image: listing the images costs in proportion to all the
//! engine holds (hundreds of milliseconds on an engine with a thousand
//! images), while such a run only tagged images that the grace period
//! protects anyway.
//!
//! The engine does not record when each tag was given, so runs are ordered
//! by the creation time of their image, newest first; run tags on one image
//! (cache hits) are ordered by name. Removing a tag never deletes an image
//! that still has another reference, and the engine refuses to delete an
//! image a container uses.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListImagesOptionsBuilder, ListNetworksOptionsBuilder, RemoveImageOptionsBuilder,
};
use bollard::Docker;
use sha2::{Digest, Sha256};

use super::{CACHE_TAG_PREFIX, ENGINE_CALL_TIMEOUT};
use crate::engine::{self, Silent};
use crate::labels;
use crate::plan::{Consumer, ImageRef};

/// How many runs' tags are kept per component by default.
pub const KEEP_RUNS: usize = 3;
/// Overrides [`KEEP_RUNS`]; `0` turns housekeeping after builds off.
pub const KEEP_RUNS_ENV: &str = "E2E_INFRA_KEEP_IMAGE_RUNS";
/// Run tags of an image created or tagged this recently are never removed.
pub const GRACE: Duration = Duration::from_secs(10 * 60);

/// How often housekeeping runs after builds that reused every image.
pub const REUSE_PRUNE_EVERY: Duration = Duration::from_secs(5 * 60);
/// The directory, beside the state root, of the times of the last prunes.
const PRUNES_DIR: &str = "image-prunes";

/// A housekeeping error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
// Fields named for what they hold carry no doc of their own.
#[allow(missing_docs)]
pub enum HousekeepingError {
    /// Listing images, containers or networks failed.
    #[error("listing the {what} on the engine to find old image tags failed")]
    List {
        /// What was listed.
        what: &'static str,
        /// The engine's error.
        source: bollard::errors::Error,
    },
    /// Removing a tag failed for another reason than being in use.
    #[error("removing the image tag `{reference}` failed; remove it with `docker rmi {reference}` or leave it")]
    Remove {
        reference: String,
        /// The engine's error.
        source: bollard::errors::Error,
    },
    /// The engine did not answer in time.
    #[error(transparent)]
    Silent(#[from] Silent),
}

/// One removed run tag, or untagged image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedTag {
    /// The component the image was built for.
    pub component: String,
    /// The reference removed; [`UNTAGGED`] for an image that had none.
    pub reference: String,
    /// The image it named.
    pub image_id: String,
}

/// [`KEEP_RUNS`], or the number in `E2E_INFRA_KEEP_IMAGE_RUNS`. A value that
/// is not a number is reported once in the log and the default used.
pub fn keep_runs_from_env() -> usize {
    match std::env::var(KEEP_RUNS_ENV) {
        Ok(value) if !value.trim().is_empty() => value.trim().parse().unwrap_or_else(|_| {
            tracing::warn!(
                value,
                "{KEEP_RUNS_ENV} is not a number; keeping the tags of {KEEP_RUNS} runs per component"
            );
            KEEP_RUNS
        }),
        _ => KEEP_RUNS,
    }
}

/// Whether `tag` has the shape of a run tag: `<consumer>-<8 lowercase hex>`.
pub(crate) fn is_run_tag(tag: &str) -> bool {
    if tag.starts_with(CACHE_TAG_PREFIX) {
        return false;
    }
    tag.rsplit_once('-').is_some_and(|(consumer, hex)| {
        !consumer.is_empty() && hex.len() == 8 && hex.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    })
}

#[derive(Debug)]
struct Candidate {
    component: String,
    reference: String,
    tag: String,
    image_id: String,
    created: i64,
}

impl Candidate {
    /// The consumer whose run the tag names: the tag without its 8 hex digits.
    fn consumer(&self) -> &str {
        self.tag.rsplit_once('-').map_or("", |(consumer, _)| consumer)
    }
}

/// Removes the run tags of all but the newest `keep` runs of each built
/// component (all components when `components` is `None`), sparing what
/// the module documentation lists, the references in `protect`, and
/// the tags of images created or tagged within `grace` ([`GRACE`] unless a
/// caller knows better). Returns what was removed.
///
/// # Errors
/// [`HousekeepingError`] when the engine cannot list its images, containers
/// or networks, refuses a removal for a reason other than the image being
/// in use, or does not answer in time.
///
/// # Example
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use e2e_infra::cli_support::housekeeping::prune_run_tags;
/// let docker = e2e_infra::engine::connect().await?;
/// use e2e_infra::cli_support::housekeeping::GRACE;
/// for removed in prune_run_tags(&docker, None, 3, GRACE, &[]).await? {
///     println!("removed {}", removed.reference);
/// }
/// # Ok(()) }
/// ```
pub async fn prune_run_tags(
    docker: &Docker,
    components: Option<&[&str]>,
    keep: usize,
    grace: Duration,
    protect: &[ImageRef],
) -> Result<Vec<RemovedTag>, HousekeepingError> {
    prune(docker, None, components, keep, grace, protect).await
}

/// As [`prune_run_tags`] for every component, but only among the run tags
/// of `consumer` (`<consumer>-<8 hex>`): per component, all but the newest
/// `keep` of its runs go, and other consumers' run tags are not touched.
///
/// # Errors
/// As [`prune_run_tags`].
pub async fn prune_consumer_run_tags(
    docker: &Docker,
    consumer: &Consumer,
    keep: usize,
    grace: Duration,
) -> Result<Vec<RemovedTag>, HousekeepingError> {
    prune(docker, Some(consumer), None, keep, grace, &[]).await
}

async fn prune(
    docker: &Docker,
    consumer: Option<&Consumer>,
    components: Option<&[&str]>,
    keep: usize,
    grace: Duration,
    protect: &[ImageRef],
) -> Result<Vec<RemovedTag>, HousekeepingError> {
    let mut removed = remove_abandoned(docker, consumer, components, grace).await?;
    let mut by_repository: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
    let candidates = run_tags(docker, components).await?.into_iter();
    for candidate in candidates.filter(|c| consumer.is_none_or(|consumer| c.consumer() == consumer.as_str())) {
        let repository = candidate.reference.rsplit_once(':').map(|(r, _)| r.to_owned()).unwrap_or_default();
        by_repository.entry(repository).or_default().push(candidate);
    }
    if by_repository.values().all(|c| c.len() <= keep) {
        return Ok(removed);
    }
    let in_use = in_use(docker).await?;
    let protected: HashSet<String> = protect.iter().map(ToString::to_string).collect();
    let mut fresh: HashMap<String, bool> = HashMap::new();
    for candidates in by_repository.values_mut() {
        candidates.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.tag.cmp(&b.tag)));
        for old in candidates.iter().skip(keep) {
            if protected.contains(&old.reference)
                || in_use.references.contains(&old.reference)
                || in_use.runs.contains(&old.tag)
            {
                continue;
            }
            let recent = match fresh.get(&old.image_id) {
                Some(recent) => *recent,
                None => {
                    let recent = recently_touched(docker, old, grace).await?;
                    fresh.insert(old.image_id.clone(), recent);
                    recent
                }
            };
            if recent {
                continue;
            }
            let options = RemoveImageOptionsBuilder::new().force(false).noprune(false).build();
            let removal = docker.remove_image(&old.reference, Some(options), None);
            match engine::within(docker, ENGINE_CALL_TIMEOUT, "removing an old run tag", removal).await? {
                Ok(_) => {
                    tracing::debug!(reference = %old.reference, "removed the tag of an older run");
                    removed.push(RemovedTag {
                        component: old.component.clone(),
                        reference: old.reference.clone(),
                        image_id: old.image_id.clone(),
                    });
                }
                // Gone meanwhile, or a container uses the image: both fine.
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 404 | 409, .. }) => {}
                Err(source) => return Err(HousekeepingError::Remove { reference: old.reference.clone(), source }),
            }
        }
    }
    Ok(removed)
}

/// When housekeeping after builds last ran for a set of components on one
/// engine, recorded beside the state root. A record that cannot be read or
/// written costs a prune, never an error.
pub(crate) struct LastPrune {
    path: Option<PathBuf>,
}

impl LastPrune {
    pub(crate) fn of(docker: &Docker, components: &[&str]) -> Self {
        let mut components = components.to_vec();
        components.sort_unstable();
        components.dedup();
        let key = format!("{}\n{}", engine::address(docker), components.join("\n"));
        let path = crate::state::cache_dir(PRUNES_DIR)
            .ok()
            .map(|dir| dir.join(format!("{}.at", hex::encode(&Sha256::digest(key.as_bytes())[..16]))));
        Self { path }
    }

    /// Whether a run that reused every image should prune at `now`.
    pub(crate) fn due(&self, now: SystemTime) -> bool {
        let last = self
            .path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|text| text.trim().parse::<u64>().ok())
            .map(|secs| UNIX_EPOCH + Duration::from_secs(secs));
        due(last, now, REUSE_PRUNE_EVERY)
    }

    /// Records a prune that started at `at`.
    pub(crate) fn mark(&self, at: SystemTime) {
        let (Some(path), Ok(since)) = (&self.path, at.duration_since(UNIX_EPOCH)) else {
            return;
        };
        if let Err(error) = std::fs::write(path, since.as_secs().to_string()) {
            tracing::debug!(path = %path.display(), %error, "recording the time of the prune failed");
        }
    }
}

/// Whether a prune last run at `last` is due again at `now`; one never run,
/// or recorded in the future (a clock set back), is.
fn due(last: Option<SystemTime>, now: SystemTime, every: Duration) -> bool {
    last.and_then(|at| now.duration_since(at).ok()).is_none_or(|age| age >= every)
}

/// Whether `candidate`'s image was created or last tagged within `grace`.
async fn recently_touched(docker: &Docker, candidate: &Candidate, grace: Duration) -> Result<bool, HousekeepingError> {
    let now = SystemTime::now();
    let within = |at: SystemTime| now.duration_since(at).map_or(true, |age| age < grace);
    let created = UNIX_EPOCH + Duration::from_secs(u64::try_from(candidate.created).unwrap_or_default());
    if grace.is_zero() {
        return Ok(false);
    }
    if within(created) {
        return Ok(true);
    }
    let inspecting = docker.inspect_image(&candidate.image_id);
    let inspected = match engine::within(docker, ENGINE_CALL_TIMEOUT, "inspecting an image", inspecting).await? {
        Ok(inspected) => inspected,
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => return Ok(true),
        Err(source) => return Err(HousekeepingError::List { what: "image details", source }),
    };
    let tagged = inspected.metadata.and_then(|m| m.last_tag_time).and_then(|t| humantime::parse_rfc3339_weak(&t).ok());
    Ok(tagged.is_some_and(within))
}

/// What [`RemovedTag::reference`] says of an image that had no reference.
pub const UNTAGGED: &str = "<untagged>";

/// Removes the images this project built (of `consumer` and `components`,
/// if given) that have no reference at all and were created before
/// `grace`: a build killed between its last step and its tag (a forced
/// build under SIGKILL) leaves one, which no run will ever use. Images a
/// container uses, and layers of other images, stay: the engine refuses
/// to remove them.
async fn remove_abandoned(
    docker: &Docker,
    consumer: Option<&Consumer>,
    components: Option<&[&str]>,
    grace: Duration,
) -> Result<Vec<RemovedTag>, HousekeepingError> {
    let mut wanted = vec![labels::BUILT_FOR_COMPONENT.to_owned()];
    wanted.extend(consumer.map(|c| format!("{}={c}", labels::BUILT_BY_CONSUMER)));
    let filter = HashMap::from([("label", wanted), ("dangling", vec!["true".to_owned()])]);
    let listing = docker.list_images(Some(ListImagesOptionsBuilder::new().filters(&filter).build()));
    let images = engine::within(docker, ENGINE_CALL_TIMEOUT, "listing untagged images", listing)
        .await?
        .map_err(|source| HousekeepingError::List { what: "untagged images", source })?;
    let now = SystemTime::now();
    let mut removed = Vec::new();
    for image in images {
        let Some(component) = image.labels.get(labels::BUILT_FOR_COMPONENT) else { continue };
        let tagged = image.repo_tags.iter().any(|t| t != "<none>:<none>");
        let created = UNIX_EPOCH + Duration::from_secs(u64::try_from(image.created).unwrap_or_default());
        let recent = now.duration_since(created).map_or(true, |age| age < grace);
        if tagged || recent || components.is_some_and(|wanted| !wanted.contains(&component.as_str())) {
            continue;
        }
        let options = RemoveImageOptionsBuilder::new().force(false).noprune(false).build();
        let removal = docker.remove_image(&image.id, Some(options), None);
        match engine::within(docker, ENGINE_CALL_TIMEOUT, "removing an untagged image", removal).await? {
            Ok(_) => {
                tracing::debug!(image = %image.id, component, "removed an untagged image a killed build left");
                removed.push(RemovedTag {
                    component: component.clone(),
                    reference: UNTAGGED.to_owned(),
                    image_id: image.id,
                });
            }
            // Gone meanwhile, or a container or another image uses it.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404 | 409, .. }) => {}
            Err(source) => return Err(HousekeepingError::Remove { reference: image.id, source }),
        }
    }
    Ok(removed)
}

/// Every run tag on an image this project built, of `components` if given.
async fn run_tags(docker: &Docker, components: Option<&[&str]>) -> Result<Vec<Candidate>, HousekeepingError> {
    // Known components are listed by name, and their label checked below:
    // Docker's containerd image store reads every image's configuration to
    // match a label, which took 7 s with 600 images, against 0.2 s by name.
    // One pattern per depth of `<registry>/<component>`, as engines differ
    // in which spelling of a reference they match.
    let filter = match components {
        Some(components) => HashMap::from([(
            "reference",
            components.iter().flat_map(|c| [format!("{c}:*"), format!("*/{c}:*"), format!("*/*/{c}:*")]).collect(),
        )]),
        None => HashMap::from([("label", vec![labels::BUILT_FOR_COMPONENT.to_owned()])]),
    };
    let listing = docker.list_images(Some(ListImagesOptionsBuilder::new().filters(&filter).build()));
    let images = engine::within(docker, ENGINE_CALL_TIMEOUT, "listing images", listing)
        .await?
        .map_err(|source| HousekeepingError::List { what: "images", source })?;
    let mut found = Vec::new();
    for image in images {
        let Some(component) = image.labels.get(labels::BUILT_FOR_COMPONENT) else { continue };
        if components.is_some_and(|wanted| !wanted.contains(&component.as_str())) {
            continue;
        }
        for reference in &image.repo_tags {
            let Some((repository, tag)) = reference.rsplit_once(':') else { continue };
            // Only `<registry>/<component>`: the same image may also be
            // known under a name a user gave it.
            let ours = repository.rsplit_once('/').is_some_and(|(_, name)| name == component);
            if ours && is_run_tag(tag) {
                found.push(Candidate {
                    component: component.clone(),
                    reference: reference.clone(),
                    tag: tag.to_owned(),
                    image_id: image.id.clone(),
                    created: image.created,
                });
            }
        }
    }
    Ok(found)
}

struct InUse {
    /// References containers were created from.
    references: HashSet<String>,
    /// Run tags (the same text as the run's network) of runs whose network
    /// exists.
    runs: HashSet<String>,
}

async fn in_use(docker: &Docker) -> Result<InUse, HousekeepingError> {
    let listing = docker.list_containers(Some(ListContainersOptionsBuilder::new().all(true).build()));
    let containers = engine::within(docker, ENGINE_CALL_TIMEOUT, "listing containers", listing)
        .await?
        .map_err(|source| HousekeepingError::List { what: "containers", source })?;
    let managed = format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE);
    let filter = HashMap::from([("label", vec![managed.as_str()])]);
    let listing = docker.list_networks(Some(ListNetworksOptionsBuilder::new().filters(&filter).build()));
    let networks = engine::within(docker, ENGINE_CALL_TIMEOUT, "listing networks", listing)
        .await?
        .map_err(|source| HousekeepingError::List { what: "networks", source })?;
    let mut references = HashSet::new();
    for image in containers.into_iter().filter_map(|c| c.image) {
        // Docker shows `localhost/app:t`; a reference without a registry
        // part would be `docker.io/library/...` and is never ours.
        references.insert(image);
    }
    Ok(InUse { references, runs: networks.into_iter().filter_map(|n| n.name).collect() })
}

#[cfg(test)]
mod tests {
    use super::{due, is_run_tag};
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn a_prune_is_due_when_never_run_or_run_long_enough_ago() {
        let every = Duration::from_secs(300);
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(due(None, now, every));
        assert!(!due(Some(now - Duration::from_secs(60)), now, every));
        assert!(!due(Some(now), now, every));
        assert!(due(Some(now - every), now, every));
        assert!(due(Some(now - Duration::from_secs(3600)), now, every));
        // Recorded in the future: the clock was set back.
        assert!(due(Some(now + Duration::from_secs(60)), now, every));
    }

    #[test]
    fn only_run_tags_have_the_run_tag_shape() {
        assert!(is_run_tag("notification-1a2b3c4d"));
        assert!(is_run_tag("my-consumer-00ff00ff"));
        assert!(!is_run_tag("cache-1a2b3c4d5e6f7a8b9c0d"));
        assert!(!is_run_tag("cache-1a2b3c4d"));
        assert!(!is_run_tag("latest"));
        assert!(!is_run_tag("v1-2"));
        assert!(!is_run_tag("-1a2b3c4d"));
        assert!(!is_run_tag("x-1A2B3C4D"));
    }
}

//! The plan: from a consumer and its needs, the one tag of the run and the
//! typed image reference of every component, in dependency order.
//!
//! Every later stage takes its references from here; none formats a tag.

mod identity;
mod key;

use std::collections::{BTreeMap, BTreeSet};

use e2e_infra_core::names::Echo;
use e2e_infra_core::suggest::Unknown;

use crate::catalog::{Catalog, Component, Source};

pub use e2e_infra_core::image::{ImageRef, InvalidImageRef, Origin};
pub use e2e_infra_core::names::{
    is_safe_name, Consumer, InvalidConsumer, InvalidRegistry, Namespace, Registry, Tag, MAX_NAME_LEN,
};
pub use identity::{
    random_hex, Host, IdentityError, Launcher, RunId, RunSource, Verdict, NEXTEST_RUN_ID_ENV, RUN_ID_ENV,
};
pub use key::{InvalidRunKey, RunKey};

/// A planning error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
// Fields named for what they hold carry no doc of their own.
#[allow(missing_docs)]
pub enum PlanError {
    /// The consumer name cannot make a tag and a namespace.
    #[error(transparent)]
    InvalidConsumer(#[from] InvalidConsumer),
    /// Nothing needed.
    #[error("`needs` is empty: name at least one component of the catalog; known: {known}")]
    EmptyNeeds {
        /// Known component names.
        known: String,
    },
    /// A need named twice.
    #[error("`needs` names `{}` twice; name each component once", Echo(.0))]
    DuplicateNeed(String),
    /// A need the catalog does not have.
    #[error("{unknown} (catalog: {catalog})")]
    UnknownComponent {
        /// The name asked for, among the known ones.
        unknown: Unknown,
        catalog: String,
    },
    /// The run identity.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A registry host that cannot prefix an image reference.
    #[error(transparent)]
    InvalidRegistry(#[from] InvalidRegistry),
}

/// How built images reach the place that runs them; it decides their
/// registry part and the pull policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Delivery {
    /// The engine that built them runs them (Docker backend), or they are
    /// loaded into Kind nodes: `localhost/<component>:<tag>`, never pulled.
    #[default]
    Local,
    /// Pushed to a registry the cluster pulls from: `<registry>/<component>:<tag>`.
    Registry(String),
}

/// Kubernetes `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum PullPolicy {
    /// The image is already on the node; pulling would fail.
    Never,
    /// Pull when the node does not have it.
    IfNotPresent,
}

impl PullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Never => "Never",
            Self::IfNotPresent => "IfNotPresent",
        }
    }
}

/// One component as the run will stand it up.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlannedComponent {
    /// Component name.
    pub name: String,
    /// Its image, the one every stage uses.
    pub image: ImageRef,
    /// Built here or borrowed.
    pub origin: Origin,
    /// How Kubernetes gets it.
    pub pull_policy: PullPolicy,
    /// Direct dependencies.
    pub depends_on: Vec<String>,
    /// The catalog entry.
    #[serde(skip)]
    pub spec: Component,
}

/// The plan of one run for one consumer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    #[serde(flatten)]
    key: RunKey,
    tag: Tag,
    namespace: Namespace,
    components: Vec<PlannedComponent>,
}

impl Plan {
    /// Resolves `needs` and their transitive dependencies into a plan.
    ///
    /// # Errors
    /// [`PlanError`] for an invalid consumer, empty or duplicate needs, an
    /// unknown component, or an invalid registry.
    pub fn new(
        catalog: &Catalog,
        consumer: &str,
        needs: &[&str],
        run: RunId,
        delivery: &Delivery,
    ) -> Result<Self, PlanError> {
        let consumer = Consumer::new(consumer)?;
        if needs.is_empty() {
            return Err(PlanError::EmptyNeeds { known: catalog.known_names() });
        }
        let mut seen = BTreeSet::new();
        for need in needs {
            if !seen.insert(*need) {
                return Err(PlanError::DuplicateNeed((*need).to_owned()));
            }
            if catalog.get(need).is_none() {
                return Err(PlanError::UnknownComponent {
                    unknown: catalog.unknown(need),
                    catalog: catalog.path().display().to_string(),
                });
            }
        }
        let registry = match delivery {
            Delivery::Local => "localhost".to_owned(),
            Delivery::Registry(host) => Registry::new(host)?.to_string(),
        };
        let key = RunKey::new(run, consumer);
        let namespace = key.namespace();
        let tag = Tag::of(&namespace);
        let components = dependency_order(catalog, needs)
            .into_iter()
            .map(|name| {
                let spec = catalog.components()[&name].clone();
                let (image, pull_policy) = match &spec.source {
                    Source::Build(_) => {
                        let policy = match delivery {
                            Delivery::Local => PullPolicy::Never,
                            Delivery::Registry(_) => PullPolicy::IfNotPresent,
                        };
                        (ImageRef::built(&registry, &name, &tag), policy)
                    }
                    Source::Borrowed(image) => (image.clone(), PullPolicy::IfNotPresent),
                };
                PlannedComponent {
                    depends_on: spec.dependencies().map(str::to_owned).collect(),
                    origin: image.origin(),
                    name,
                    image,
                    pull_policy,
                    spec,
                }
            })
            .collect();
        Ok(Self { key, tag, namespace, components })
    }

    /// Which stack this plans: its run and consumer.
    pub fn key(&self) -> &RunKey {
        &self.key
    }

    /// The run.
    pub fn run(&self) -> &RunId {
        self.key.run()
    }

    /// The consumer.
    pub fn consumer(&self) -> &Consumer {
        self.key.consumer()
    }

    /// The one tag of every built image.
    pub fn tag(&self) -> &Tag {
        &self.tag
    }

    /// The namespace (Kubernetes) or network (Docker) of this run and consumer.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// Components in dependency order: each after everything it depends on.
    pub fn components(&self) -> &[PlannedComponent] {
        &self.components
    }

    /// One component.
    pub fn component(&self, name: &str) -> Option<&PlannedComponent> {
        self.components.iter().find(|c| c.name == name)
    }

    /// Replaces every component's readiness timeout.
    pub(crate) fn set_ready_timeout(&mut self, timeout: std::time::Duration) {
        for component in &mut self.components {
            if let Some(ready) = component.spec.docker.as_mut().and_then(|d| d.ready.as_mut()) {
                ready.timeout = timeout;
            }
        }
    }

    /// Pins built components to the digests a registry stored for them
    /// (component -> `sha256:...`), so every later stage and the handle name
    /// `registry/name:tag@sha256:...`. Borrowed components, unknown ones
    /// and malformed digests are left out.
    pub(crate) fn pin(&mut self, digests: &BTreeMap<String, String>) {
        for component in self.components.iter_mut().filter(|c| c.origin == Origin::Built) {
            if let Some(pinned) = digests.get(&component.name).and_then(|d| component.image.pinned(d).ok()) {
                component.image = pinned;
            }
        }
    }

    /// The planned reference of `component`.
    pub fn image(&self, component: &str) -> Option<&ImageRef> {
        self.component(component).map(|c| &c.image)
    }
}

/// The needs and all they depend on, each after its dependencies; among
/// components free to go next, the alphabetically first goes first.
fn dependency_order(catalog: &Catalog, needs: &[&str]) -> Vec<String> {
    let mut wanted = BTreeSet::new();
    let mut stack: Vec<&str> = needs.to_vec();
    while let Some(name) = stack.pop() {
        if wanted.insert(name.to_owned()) {
            stack.extend(catalog.components()[name].dependencies());
        }
    }
    let mut remaining: BTreeMap<&str, BTreeSet<&str>> =
        wanted.iter().map(|n| (n.as_str(), catalog.components()[n].dependencies().collect())).collect();
    let mut order = Vec::with_capacity(remaining.len());
    // The catalog is checked for cycles, so some component is always free.
    while let Some(next) = remaining.iter().find(|(_, deps)| deps.is_empty()).map(|(n, _)| *n) {
        remaining.remove(next);
        for deps in remaining.values_mut() {
            deps.remove(next);
        }
        order.push(next.to_owned());
    }
    order
}

#[cfg(test)]
mod tests;

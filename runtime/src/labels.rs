//! The labels put on everything a run creates, so that it can be found,
//! listed and removed later without touching anything else.

use std::collections::HashMap;

use crate::plan::{Launcher, Plan, RunKey};

/// Present on everything e2e-infra creates.
pub const MANAGED_BY: &str = "io.e2e-infra.managed-by";
/// The value of [`MANAGED_BY`].
pub const MANAGED_BY_VALUE: &str = "e2e-infra";
/// The run identity.
pub const RUN: &str = "io.e2e-infra.run";
/// The consumer.
pub const CONSUMER: &str = "io.e2e-infra.consumer";
/// The component.
pub const COMPONENT: &str = "io.e2e-infra.component";
/// The launcher (`pid:start_ticks:boot_id:pid_namespace`) whose death ends
/// the run; for a stack of `e2e-infra up`, the `up` process; empty for
/// stacks of `up` from before it was recorded.
pub const LAUNCHER: &str = "io.e2e-infra.launcher";
/// On a kept stack's marker (a volume on Docker, the namespace on
/// Kubernetes): why it was kept. `clean` leaves it alone unless asked.
pub const KEPT: &str = "io.e2e-infra.kept";
/// On the marker of a stack brought up by `e2e-infra up` (a volume on
/// Docker, the namespace on Kubernetes), created once `up` finished: the
/// stack then lives until `down`. Without it, the stack lives only as long
/// as the `up` process recorded as its launcher.
pub const UP_FINISHED: &str = "io.e2e-infra.up-finished";
/// On a reusable stack (`E2E_INFRA_REUSE=1`): it outlives its run and is
/// reused by the next one while nothing it runs changed.
pub const REUSE: &str = "io.e2e-infra.reuse";
/// On a reusable stack's container: the digest of what it runs (image id,
/// resolved environment, command, ports, probe). A container whose
/// fingerprint differs from the new run's is replaced.
pub const FINGERPRINT: &str = "io.e2e-infra.fingerprint";
/// The digest of a build's inputs (images only).
pub const INPUT_DIGEST: &str = "io.e2e-infra.input-digest";
/// The run that built an image (images only): provenance, not membership.
pub const BUILT_BY_RUN: &str = "io.e2e-infra.built-by.run";
/// The consumer whose run built an image (images only).
pub const BUILT_BY_CONSUMER: &str = "io.e2e-infra.built-by.consumer";
/// The component an image was built for (images only).
pub const BUILT_FOR_COMPONENT: &str = "io.e2e-infra.built-for.component";

/// The labels one stack puts on what it creates, derived once from its key
/// and its launcher; the stages take these instead of working them out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackLabels {
    key: RunKey,
    run: HashMap<String, String>,
}

impl StackLabels {
    /// The labels of the stack `key` whose run ends with `launcher`. The
    /// launcher label is always set, empty for a stack without one (brought
    /// up by hand, or reusable): a container would otherwise inherit one
    /// from its image.
    pub fn new(key: &RunKey, launcher: Option<Launcher>) -> Self {
        let run = HashMap::from([
            (MANAGED_BY.to_owned(), MANAGED_BY_VALUE.to_owned()),
            (RUN.to_owned(), key.run().to_string()),
            (CONSUMER.to_owned(), key.consumer().to_string()),
            (LAUNCHER.to_owned(), launcher.map(|l| l.label()).unwrap_or_default()),
        ]);
        Self { key: key.clone(), run }
    }

    /// The labels of the stack `plan` plans, ended by its run's launcher.
    pub fn of(plan: &Plan) -> Self {
        Self::new(plan.key(), plan.run().launcher())
    }

    /// Which stack.
    pub fn key(&self) -> &RunKey {
        &self.key
    }

    /// Labels for a resource of the whole stack (its network, namespace, marker).
    pub fn run(&self) -> HashMap<String, String> {
        self.run.clone()
    }

    /// Labels for one component's resource.
    pub fn component(&self, component: &str) -> HashMap<String, String> {
        let mut labels = self.run();
        labels.insert(COMPONENT.to_owned(), component.to_owned());
        labels
    }

    /// `key=value` filters selecting everything of the stack.
    pub fn filter(&self) -> Vec<String> {
        filter(&self.key)
    }
}

/// Labels for an image the stack `key` built: where it came from, under
/// keys of their own. Every container started from the image, or from an
/// image built `FROM` it, inherits its labels; with the membership keys
/// ([`MANAGED_BY`], [`RUN`], [`CONSUMER`], [`COMPONENT`]) a stranger's
/// container would count as part of a stack and be listed and removed
/// with it.
pub(crate) fn for_image(key: &RunKey, component: &str) -> HashMap<String, String> {
    HashMap::from([
        (BUILT_BY_RUN.to_owned(), key.run().to_string()),
        (BUILT_BY_CONSUMER.to_owned(), key.consumer().to_string()),
        (BUILT_FOR_COMPONENT.to_owned(), component.to_owned()),
    ])
}

/// The label that marks a reusable stack's resources.
pub fn reuse() -> (String, String) {
    (REUSE.to_owned(), "1".to_owned())
}

/// `key=value` filters selecting everything of one stack.
pub fn filter(key: &RunKey) -> Vec<String> {
    vec![
        format!("{MANAGED_BY}={MANAGED_BY_VALUE}"),
        format!("{RUN}={}", key.run()),
        format!("{CONSUMER}={}", key.consumer()),
    ]
}

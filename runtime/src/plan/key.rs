//! Which stack: a run and a consumer, both checked.

use std::fmt;

use e2e_infra_core::names::{Consumer, InvalidConsumer, Namespace};

use super::identity::{IdentityError, RunId};

/// Which stack: a run and a consumer. A stack's labels, its namespace, its
/// tag and its state folder all follow from it, so removal, marking and
/// lookup take this, not two strings that could be swapped. Both parts are
/// checked when it is made and when it is deserialised: a label or a record
/// that does not hold valid names gives no key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct RunKey {
    #[serde(rename = "run_id")]
    run: RunId,
    consumer: Consumer,
}

/// A run id and consumer, as a label or the command line gave them, that do
/// not make a [`RunKey`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidRunKey {
    /// The run id breaks its rule.
    #[error("the run id is invalid")]
    Run(#[source] IdentityError),
    /// The consumer breaks its rule.
    #[error("the consumer is invalid")]
    Consumer(#[source] InvalidConsumer),
}

impl RunKey {
    /// The stack of `run` and `consumer`.
    pub fn new(run: RunId, consumer: Consumer) -> Self {
        Self { run, consumer }
    }

    /// The stack that a run id and a consumer found as text (in labels, on
    /// the command line) name.
    ///
    /// # Errors
    /// [`InvalidRunKey`] when either breaks its rule.
    pub fn parse(run: &str, consumer: &str) -> Result<Self, InvalidRunKey> {
        Ok(Self {
            run: run.parse().map_err(InvalidRunKey::Run)?,
            consumer: Consumer::new(consumer).map_err(InvalidRunKey::Consumer)?,
        })
    }

    /// The run.
    pub fn run(&self) -> &RunId {
        &self.run
    }

    /// The consumer.
    pub fn consumer(&self) -> &Consumer {
        &self.consumer
    }

    /// The stack's network on Docker, its namespace on Kubernetes; the
    /// run's tag is the same text.
    pub fn namespace(&self) -> Namespace {
        Namespace::of(self.run.as_str(), self.consumer.as_str())
    }
}

impl fmt::Display for RunKey {
    /// `<consumer> run <run id>`, as messages name a stack.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} run {}", self.consumer, self.run)
    }
}

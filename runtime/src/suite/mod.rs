//! The suite lifecycle: set the stack up once per run, share it with every
//! test of every process of the run, tear it down after the run.
//!
//! Within a process, the first test that needs the handle runs setup and
//! the others wait for it ([`OnceLock`]). Across the processes of a run
//! (cargo-nextest runs every test in a process of its own; `cargo test` runs
//! one process per test binary), a lock file in the run's state directory
//! decides: the first process sets up and records the stack, the others
//! attach to the record. Setup that dies half-way is taken over by the next
//! process; setup that fails is recorded, and every other process fails with
//! that error at once.
//!
//! Teardown runs in a separate process started by the setup process: it
//! waits for the process that launched the run (cargo, cargo-nextest) to
//! exit, then removes everything the run owns, unless a test failed or
//! `E2E_INFRA_KEEP=1`.

mod reaper;
mod shard;

use std::sync::OnceLock;
use std::time::Duration;

use crate::backend::{Backend, BackendError, Declared};
use crate::background;
use crate::catalog::Catalog;
use crate::error::error_chain;
use crate::handle::Infra;
use crate::plan::{Consumer, Launcher, Plan, RunId, RunKey};
use crate::record::{StackRecord, Witness};
use crate::report::{self, Evidence, Recorder};
use crate::stack::{self, teardown, StackError, StackOptions};
use crate::state::{self, Claim, Found, RunDir};

/// `1`: keep the stack after the run whatever the results; `0`: remove it
/// even when a test failed; unset: keep it when a test failed.
pub const KEEP_ENV: &str = "E2E_INFRA_KEEP";
/// `1`: rebuild every image even when one built from the same inputs exists.
pub const FORCE_BUILD_ENV: &str = "E2E_INFRA_FORCE_BUILD";
/// `1`: keep the stack after the run and let the next run reuse every
/// container (Docker) or workload (Kubernetes) whose image and configuration
/// did not change.
pub const REUSE_ENV: &str = "E2E_INFRA_REUSE";
/// What the attribute knows about a suite.
#[derive(Debug)]
pub struct SuiteSpec {
    /// The consumer name.
    pub consumer: &'static str,
    /// The components the suite needs.
    pub needs: &'static [&'static str],
    /// Where it runs, unless the environment says otherwise.
    pub backend: Declared<'static>,
    /// Overrides every readiness timeout.
    pub ready_timeout_secs: Option<u64>,
    /// The catalog the attribute was checked against.
    pub catalog: &'static str,
}

/// Why a suite's stack could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
// Fields named for what they hold carry no doc of their own.
#[allow(missing_docs)]
pub enum SuiteError {
    /// The catalog is broken.
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    /// The plan could not be made.
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    /// The run's shared state could not be used.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// Setup failed in this process.
    #[error(transparent)]
    Stack(#[from] StackError),
    /// Setup failed in another process of the run.
    #[error("setting up `{consumer}` failed in another process of this run:\n{message}")]
    FailedElsewhere {
        consumer: String,
        /// That process's error.
        message: String,
    },
    /// Another CI shard of the run set the stack up, and that failed.
    #[error("setting up `{consumer}` failed in shard `{holder}` of this run:\n{message}")]
    FailedInShard {
        consumer: String,
        /// The shard that set up.
        holder: String,
        /// Its error, as recorded on the Lease.
        message: String,
    },
    /// The shards of the run could not share the stack.
    #[error(transparent)]
    Shard(#[from] crate::deploy::kube::shard::ShardError),
    /// Another test binary of the run set the consumer's stack up with
    /// other components.
    #[error("the `{consumer}` stack of this run was set up by another test binary with components [{}], but this suite plans [{}]; one consumer has one set of needs per run: give these suites different consumer names", recorded.join(", "), planned.join(", "))]
    StackMismatch {
        consumer: String,
        /// The components of the recorded stack.
        recorded: Vec<String>,
        /// The components this suite planned.
        planned: Vec<String>,
    },
    /// The declared backend and the environment do not make a backend.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The stack came up but could not be recorded for the run's other
    /// processes; it has been removed again.
    #[error("the `{consumer}` stack came up but recording it in `{}` failed, so no other test process could use it nor teardown find it; it was removed ({removed}). Free space in the state directory (or set E2E_INFRA_STATE_DIR) and run again", dir.display())]
    Unrecorded {
        consumer: String,
        /// The run's state directory.
        dir: std::path::PathBuf,
        /// What was removed, or why removing failed.
        removed: String,
        /// Why recording failed.
        #[source]
        source: state::StateError,
    },
    /// Setup failed in this process; `report` says where its failure
    /// report is, or why there is none.
    #[error("{failure}\n{report}")]
    Reported {
        /// The setup error and its causes.
        failure: String,
        /// One line: the report's path, or why it could not be written.
        report: String,
    },
    /// The background runtime could not run setup or teardown.
    #[error(transparent)]
    Runtime(#[from] background::RuntimeError),
}

/// One suite: the static the attribute generates.
#[derive(Debug)]
pub struct Suite {
    spec: SuiteSpec,
    backend: OnceLock<Result<Backend, BackendError>>,
    infra: OnceLock<Result<Infra, String>>,
}

impl Suite {
    /// A suite that sets nothing up until a test asks.
    pub const fn new(spec: SuiteSpec) -> Self {
        Self { spec, backend: OnceLock::new(), infra: OnceLock::new() }
    }

    /// The shared handle; sets the stack up on first use, once per run.
    ///
    /// # Panics
    /// With the setup error, in every test that asks, when setup failed.
    pub fn infra(&'static self) -> &'static Infra {
        match self.infra.get_or_init(|| self.setup().map_err(|e| error_chain(&e))) {
            Ok(infra) => infra,
            Err(message) => panic!("e2e-infra: {message}"),
        }
    }

    /// A guard for one test: if the test panics, the failure is recorded and
    /// the stack is kept after the run.
    pub fn guard(&'static self) -> TestGuard {
        TestGuard { suite: self, test: std::thread::current().name().unwrap_or("test").to_owned() }
    }

    fn backend(&self) -> Result<Backend, SuiteError> {
        Ok(self.backend.get_or_init(|| Backend::resolve(&self.spec.backend)).clone()?)
    }

    fn plan(&self, run: RunId) -> Result<Plan, SuiteError> {
        let catalog = Catalog::load(std::path::Path::new(self.spec.catalog))?;
        Ok(Plan::new(&catalog, self.spec.consumer, self.spec.needs, run, &self.backend()?.delivery())?)
    }

    fn options(&self) -> Result<StackOptions, SuiteError> {
        let mut options = StackOptions {
            backend: self.backend()?,
            ready_timeout: self.spec.ready_timeout_secs.map(Duration::from_secs),
            reuse: reuse_requested(),
            ..StackOptions::default()
        };
        options.build.force = std::env::var(FORCE_BUILD_ENV).is_ok_and(|v| v == "1");
        if options.reuse {
            // The reusable stack's tag is the same in every run: a run adds
            // no tag to prune, and listing every image costs a warm run most.
            options.build.keep_runs = 0;
        }
        Ok(options)
    }

    /// The run id the stack is planned and recorded under, and the launcher
    /// of this test run. A reusable stack has one id per user and consumer,
    /// the same in every run, and records no launcher on the engine: its
    /// life is not a run's.
    fn identity(&self) -> Result<(RunId, Option<Launcher>), SuiteError> {
        let detected = RunId::detect().map_err(crate::plan::PlanError::from)?;
        let launcher = detected.launcher();
        if !reuse_requested() {
            return Ok((detected, launcher));
        }
        let uid = state::current_uid()?;
        let reused = RunId::explicit(&format!("reuse-u{uid}"), None).map_err(crate::plan::PlanError::from)?;
        Ok((reused, launcher))
    }

    fn setup(&'static self) -> Result<Infra, SuiteError> {
        init_logging();
        let (run, launcher) = self.identity()?;
        let reuse = reuse_requested();
        let plan = self.plan(run)?;
        let dir = RunDir::open(plan.key())?;
        let _lock = dir.lock_setup()?;
        // An earlier use of this run id (a retry with the same
        // E2E_INFRA_RUN_ID, or the previous run of a reusable stack) must
        // not hand its error or stack to this run.
        let claim = dir.claim(launcher, plan.key())?;
        let found = dir.found()?;
        let mut keeper = None;
        let record = match found {
            Found::Ready(record) => *record,
            Found::Failed(message) => {
                return Err(SuiteError::FailedElsewhere { consumer: self.spec.consumer.to_owned(), message })
            }
            Found::Nothing | Found::Abandoned => {
                let shard = shard::Shard::of(&self.backend()?, plan.run(), reuse)?;
                // A reusable stack is kept by design: no teardown, and what
                // an earlier run left is what setup reuses or replaces. A
                // shared stack is the Lease's to judge, not this machine's.
                let abandoned = !reuse
                    && shard.is_none()
                    && (matches!(found, Found::Abandoned) || matches!(claim, Claim::Reset { leftovers: true }));
                if !reuse {
                    let kube = match self.backend()? {
                        Backend::Kubernetes(target) => Some(target),
                        Backend::Docker => None,
                    };
                    keeper = reaper::spawn(&plan, kube, &dir, shard.as_ref());
                }
                dir.begin_attempt()?;
                let set_up = self.set_up_or_attach(&plan, shard.as_ref(), abandoned);
                match set_up {
                    Ok(mut record) => {
                        if let Some(keeper) = keeper.take() {
                            keeper.forward_into(&mut record);
                        }
                        if let Err(source) = dir.record_ready(&record) {
                            if shard.is_some() {
                                // The stack is the shards', not this machine's
                                // to remove: the last shard out does.
                                return Err(source.into());
                            }
                            return Err(self.unrecorded(&plan, &dir, source));
                        }
                        // Once per run. Test harnesses capture it: it shows
                        // with a failing test's output, or with --nocapture.
                        eprint!("{}", record.summary);
                        record
                    }
                    Err(error) => {
                        if let Err(state) = dir.record_failure(&error_chain(&error)) {
                            // The other processes will retry setup and fail
                            // the same way; this one's error still counts.
                            eprintln!("e2e-infra: recording the setup error failed: {state}");
                        }
                        return Err(error);
                    }
                }
            }
        };
        let planned: Vec<String> = plan.components().iter().map(|c| c.name.clone()).collect();
        if record.components != planned {
            return Err(SuiteError::StackMismatch {
                consumer: self.spec.consumer.to_owned(),
                recorded: record.components,
                planned,
            });
        }
        Ok(Infra::new(plan, record))
    }

    /// Sets the stack up, or, as a CI shard that another shard beat to it,
    /// attaches to the stack that shard set up (and publishes a setup's
    /// outcome on the shards' Lease for the others).
    fn set_up_or_attach(
        &self,
        plan: &Plan,
        shard: Option<&shard::Shard>,
        abandoned: bool,
    ) -> Result<StackRecord, SuiteError> {
        let entered = match shard {
            Some(shard) => {
                let print = shard::print(plan, self.spec.needs, std::path::Path::new(self.spec.catalog));
                self.in_runtime(|| shard.enter(plan, &print))
            }
            None => Ok(shard::Entered::SetUp),
        };
        match entered {
            Ok(shard::Entered::SetUp) => {
                let case = report::case_dir(plan.key(), report::SETUP);
                let recorder = Recorder::new(case, plan, &self.backend()?);
                let result = self.run_setup(plan, abandoned, &recorder).map_err(|error| reported(&error, &recorder));
                if let Some(shard) = shard {
                    let outcome = result.as_ref().map_err(|e| error_chain(e));
                    if let Err(error) = self.in_runtime(|| shard.publish(plan, outcome)) {
                        // The waiting shards then fail when this
                        // one's teardown leaves; this error counts.
                        eprintln!(
                            "e2e-infra: recording the setup on the shards' Lease failed: {}",
                            error_chain(&error)
                        );
                    }
                }
                result
            }
            Ok(shard::Entered::Attached { holder, record }) => {
                eprintln!("e2e-infra: `{}` attached to the stack shard `{holder}` set up", plan.consumer());
                Ok(*record)
            }
            Err(error) => Err(error),
        }
    }

    /// Runs setup on a thread of its own with its own async runtime: the
    /// caller may be a `#[tokio::test]` whose runtime must not be blocked on
    /// from inside, and whose runtime ends with that test.
    fn run_setup(&self, plan: &Plan, abandoned: bool, recorder: &Recorder) -> Result<StackRecord, SuiteError> {
        let options = self.options()?;
        self.in_runtime(|| async {
            let result = self.setup_stages(plan, &options, abandoned, recorder).await;
            if let Err(error) = &result {
                // Failures before the stages (cleaning leftovers) get a
                // report too; one already written stays.
                recorder.capture(&error_chain(error)).await;
            }
            result
        })
    }

    async fn setup_stages(
        &self,
        plan: &Plan,
        options: &StackOptions,
        abandoned: bool,
        recorder: &Recorder,
    ) -> Result<StackRecord, SuiteError> {
        let docker = stack::engine_of(None).await?;
        let kube = match &options.backend {
            Backend::Kubernetes(target) => Some(target),
            Backend::Docker => None,
        };
        if abandoned {
            tracing::info!("{}: a setup process died half-way; removing what it left", plan.consumer());
            stack::down(&docker, plan.key(), kube).await?;
        }
        // Leftovers of this consumer's runs that ended without
        // their teardown; other suites' stacks are theirs.
        let mut listing = teardown::list(&docker).await?;
        if let Some(target) = kube {
            listing.extend(teardown::list_kube(target.context.as_deref()).await?);
        }
        let consumer = Some(plan.consumer());
        for (dead, removed) in
            teardown::clean_dead(&docker, listing.stacks, consumer, teardown::Scope::default()).await?
        {
            tracing::info!("removed the stack of finished run {}: {removed}", dead.key);
        }
        Ok(stack::up_on(&docker, plan, options, Some(recorder)).await?)
    }

    /// The stack is up but the other processes cannot learn of it (a full
    /// disk): nothing would tear it down, so it goes now.
    fn unrecorded(&self, plan: &Plan, dir: &RunDir, source: state::StateError) -> SuiteError {
        let removal = self.in_runtime(|| async {
            let docker = stack::engine_of(None).await?;
            let kube = match self.options()?.backend {
                Backend::Kubernetes(target) => Some(target),
                Backend::Docker => None,
            };
            Ok(stack::down(&docker, plan.key(), kube.as_ref()).await?)
        });
        SuiteError::Unrecorded {
            consumer: plan.consumer().as_str().to_owned(),
            dir: dir.path().to_owned(),
            removed: removal.unwrap_or_else(|e| format!("removing it failed too: {}", error_chain(&e))),
            source,
        }
    }

    /// Runs `work` on the process's background runtime.
    fn in_runtime<T, F, Fut>(&self, work: F) -> Result<T, SuiteError>
    where
        T: Send,
        F: FnOnce() -> Fut + Send,
        Fut: std::future::Future<Output = Result<T, SuiteError>>,
    {
        background::block_on(work)?
    }

    /// The state directory of this process's run, if it exists.
    fn run_dir(&self) -> Option<RunDir> {
        let (run, _) = self.identity().ok()?;
        RunDir::existing(&RunKey::new(run, Consumer::new(self.spec.consumer).ok()?))
    }
}

/// Records a failed test when dropped during a panic.
#[derive(Debug)]
pub struct TestGuard {
    suite: &'static Suite,
    test: String,
}

impl TestGuard {
    /// Writes the report of this failed test; one line saying where.
    fn report(&self, infra: &Infra) -> String {
        let record = infra.record();
        let case = report::case_dir(&record.key, &self.test);
        let evidence = Evidence::of_record(
            record,
            &format!("test `{}` failed; its panic message is in the test's output", self.test),
        );
        let written =
            self.suite.in_runtime(|| async { Ok(report::write_for(case, &evidence, infra.placement()).await) });
        match written {
            Ok(outcome) => report::line(&outcome),
            Err(error) => format!("e2e-infra report: none, {}", error_chain(&error).replace('\n', " ")),
        }
    }
}

impl Drop for TestGuard {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        // Only a stack this process attached to can be kept: a failed setup
        // keeps nothing, and wrote its own report.
        let Some(Ok(infra)) = self.suite.infra.get() else { return };
        // Before anything else: the run's teardown may follow this process.
        let report = self.report(infra);
        let Some(dir) = self.suite.run_dir() else { return };
        if dir.record_failed_test(&self.test).is_ok() {
            eprintln!(
                "e2e-infra: `{}` failed; the `{}` stack will be kept after the run (state: {}). \
                 Remove it with `e2e-infra clean --kept` or `e2e-infra down --consumer {}`.\n{report}",
                self.test,
                self.suite.spec.consumer,
                dir.path().display(),
                self.suite.spec.consumer
            );
        } else {
            eprintln!("{report}");
        }
    }
}

/// A setup error with the line that says where its report is.
fn reported(error: &SuiteError, recorder: &Recorder) -> SuiteError {
    let report = match recorder.outcome() {
        Some(Ok(path)) => report::line(&Ok(path)),
        Some(Err(line)) => line,
        None => "e2e-infra report: none, the error came before anything was set up".to_owned(),
    };
    SuiteError::Reported { failure: error_chain(error), report }
}

/// Whether `E2E_INFRA_REUSE=1`.
fn reuse_requested() -> bool {
    std::env::var(REUSE_ENV).is_ok_and(|v| v == "1")
}

/// Quiet by default inside tests; `RUST_LOG` turns the detail on.
fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        crate::progress::init(tracing_subscriber::EnvFilter::from_default_env());
    }
}

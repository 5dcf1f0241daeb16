//! One tag, one build, one deploy per end-to-end test run.
//!
//! ```ignore
//! #[e2e_infra::e2e_infra(consumer = "notification", needs = ["datastorage"])]
//! mod notification_e2e {
//!     use e2e_infra::Infra;
//!
//!     #[test]
//!     fn stores_a_notification(infra: &Infra) {
//!         let url = infra.endpoint("datastorage", 8080).expect("endpoint").url();
//!         // ...
//!     }
//! }
//! ```
//!
//! A run flows one way: [`catalog`] + attribute -> [`plan`] (the one tag, typed
//! image references) -> build -> load -> deploy -> ready -> the shared handle
//! -> teardown after the run. Each stage is a module with its own errors;
//! the modules form one-way layers (docs/architecture.md).

// In layers: a module names only modules of layers below its own (the
// test `layers` in runtime/tests keeps it so; docs/architecture.md says
// what each layer is for). Public: what a suite author uses and the guide
// documents; the command's own needs are in `cli_support`.
pub mod backend;
mod background;
pub mod build;
pub mod deploy;
pub mod engine;
pub mod error;
pub mod handle;
pub mod labels;
pub mod load;
pub mod plan;
mod progress;
pub mod record;
mod report;
pub mod stack;
mod state;
mod suite;

pub use catalog::{Catalog, CatalogError};
pub use e2e_infra_core::catalog;
pub use e2e_infra_core::Echo;
pub use e2e_infra_macros::e2e_infra;
pub use handle::{Endpoint, EndpointError, Infra};
pub use plan::{Consumer, Delivery, ImageRef, Namespace, Origin, Plan, PlanError, PullPolicy, RunId, RunKey, Tag};
pub use suite::SuiteError;

/// What the `e2e-infra` command needs beyond the public API, and this
/// project's own test suites with it: listing and removing the stacks of
/// every run, the state folder, failure reports on demand, pruning of
/// images, the progress log. Not a stable API: it changes with the command.
#[doc(hidden)]
pub mod cli_support {
    /// Pruning the images of earlier runs.
    pub mod housekeeping {
        pub use crate::build::housekeeping::*;
    }
    /// The log of stages.
    pub mod progress {
        pub use crate::progress::*;
    }
    /// Failure reports, and a stack's logs.
    pub mod report {
        pub use crate::report::*;
    }
    /// The state folder of this machine.
    pub mod state {
        pub use crate::state::*;
    }
    /// Listing, marking and removing the stacks of every run.
    pub mod teardown {
        pub use crate::stack::teardown::*;
    }
}

#[doc(hidden)]
pub mod __private {
    //! What the attribute's expansion names; not a public API.
    pub use crate::backend::{Declared, Flavour};
    pub use crate::handle::Infra;
    pub use crate::suite::{Suite, SuiteSpec, TestGuard};
}

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
// what each layer is for).
pub mod backend;
pub mod background;
pub mod build;
pub mod deploy;
pub mod engine;
pub mod error;
pub mod handle;
pub mod labels;
pub mod load;
pub mod plan;
pub mod progress;
pub mod record;
pub mod report;
pub mod stack;
pub mod state;
pub mod suite;

pub use catalog::{Catalog, CatalogError};
pub use e2e_infra_core::catalog;
pub use e2e_infra_core::Echo;
pub use e2e_infra_macros::e2e_infra;
pub use handle::{Endpoint, EndpointError, Infra};
pub use plan::{Consumer, Delivery, ImageRef, Namespace, Origin, Plan, PlanError, PullPolicy, RunId, Tag};

#[doc(hidden)]
pub mod __private {
    //! What the attribute's expansion names; not a public API.
    pub use crate::backend::{Declared, Flavour};
    pub use crate::handle::Infra;
    pub use crate::suite::{Suite, SuiteSpec, TestGuard};
}

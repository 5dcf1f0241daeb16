//! What the `#[e2e_infra]` attribute and the e2e-infra runtime both know:
//! names and their rules, the backend rules, the catalog and its
//! diagnostics, the "did you mean" suggestion. Nothing here talks to a container engine or a cluster,
//! so the attribute checks a suite at compile time with the very code that
//! the runtime runs it with.
//!
//! Users depend on the `e2e-infra` crate, which re-exports what they need.

pub mod backend;
pub mod catalog;
pub mod image;
pub mod names;
pub mod suggest;

pub use catalog::{Catalog, CatalogError, CATALOG_ENV, CATALOG_FILE, MAX_CATALOG_BYTES, MAX_COMPONENTS};
pub use image::{ImageRef, InvalidImageRef, Origin};
pub use names::{Consumer, Echo, InvalidConsumer, InvalidRegistry, Namespace, Registry, Tag, MAX_NAME_LEN};

//! The `#[e2e_infra]` attribute. Use it through the `e2e-infra` crate, which
//! re-exports it and provides everything the expansion calls.
//!
//! The attribute is read in [`attr`], the annotated module in [`ast`], both are
//! checked in [`check`] against the catalog, which `e2e-infra-core` finds and
//! checks whole, as the runtime does; [`render`] writes the expansion.
//! [`expand`] ties the stages together.

mod ast;
mod attr;
mod check;
mod diag;
mod expand;
mod render;

use proc_macro::TokenStream;

/// Stands a suite's infrastructure up once per test run and hands every test
/// of the module the shared handle.
///
/// ```ignore
/// #[e2e_infra::e2e_infra(consumer = "notification", needs = ["datastorage"])]
/// mod notification_e2e {
///     use e2e_infra::Infra;
///
///     #[test]
///     fn stores_a_notification(infra: &Infra) {
///         // ...
///     }
/// }
/// ```
///
/// Keys: `consumer` and `needs` (required), `backend`, `cluster`,
/// `registry`, `timeout`, `catalog` and `crate`; see `docs/attribute.md`.
#[proc_macro_attribute]
pub fn e2e_infra(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::expand(attr.into(), item.into()).into()
}

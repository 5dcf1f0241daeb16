//! The `#[e2e_infra]` attribute. Use it through the `e2e-infra` crate.

use proc_macro::TokenStream;

/// Stands up a suite's infrastructure once per test run; see the `e2e-infra` crate.
#[proc_macro_attribute]
pub fn e2e_infra(_attr: TokenStream, item: TokenStream) -> TokenStream {
    item
}

//! The attribute end to end: read, check, render; on any mistake, the user's
//! item unchanged in meaning plus every error.

use std::path::PathBuf;

use proc_macro2::{Span, TokenStream};

use crate::diag::Errors;
use crate::{ast, attr, check, render};

/// Expands `#[e2e_infra(<attr>)] <item>`.
pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = attr::parse(attr, &mut errors);
    let krate = check::crate_path(args.as_ref(), &mut errors);
    let env = check::Env {
        manifest_dir: std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_default(),
        config: std::env::var_os(e2e_infra_core::CATALOG_ENV),
    };
    let spec = args.as_ref().and_then(|args| check::attribute(args, &env, &mut errors));
    let module = errors.take(ast::parse(item.clone()));
    if let Some(module) = &module {
        check::module(module, &mut errors);
    }
    match (errors.finish(()), spec, module) {
        (Ok(()), Some(spec), Some(module)) => render::suite(&spec, &krate, module),
        (Err(error), _, module) => render::fallback(item, module, &krate, &error),
        // Every check that yields nothing records why; this is a guard, not a path.
        (Ok(()), _, module) => render::fallback(
            item,
            module,
            &krate,
            &syn::Error::new(Span::call_site(), "e2e-infra: the attribute could not be expanded"),
        ),
    }
}

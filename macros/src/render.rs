//! The expansion: the suite's static, the handle accessor and the
//! rewritten tests. Besides the handle's type as the user
//! wrote it, generated code names only `<crate>::__private` and `::core`,
//! so a user's imports cannot shadow it.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::spanned::Spanned;
use syn::{FnArg, Ident, Item, ItemFn, Stmt, Type};

use crate::ast::{self, Module};
use e2e_infra_core::backend::Flavour;

use crate::check::{Backend, Spec};

/// The static every generated statement refers to.
fn suite_ident() -> Ident {
    Ident::new("__E2E_INFRA_SUITE", Span::call_site())
}

/// The module with its tests rewritten and the suite's items appended.
pub(crate) fn suite(spec: &Spec, krate: &syn::Path, module: Module) -> TokenStream {
    let mut item = module.item;
    if let Some((_, items)) = &mut item.content {
        for it in items.iter_mut() {
            if let Item::Fn(f) = it {
                if f.attrs.iter().any(ast::is_test_attr) {
                    rewrite_test(f);
                }
            }
        }
        items.push(Item::Verbatim(generated(spec, krate)));
    }
    quote!(#item)
}

/// Prepends the guard to a test and, when it takes `&Infra`, turns the
/// parameter into a binding of the shared handle.
fn rewrite_test(f: &mut ItemFn) {
    let suite = suite_ident();
    // Mixed-site: the user cannot name (or shadow) the guard.
    let guard = Ident::new("__e2e_infra_guard", Span::mixed_site());
    let mut prelude: Vec<Stmt> = vec![syn::parse_quote!(let #guard = #suite.guard();)];
    if let Some(FnArg::Typed(param)) = f.sig.inputs.first() {
        let (attrs, pat) = (&param.attrs, &param.pat);
        // The type as the user wrote it, so the `use` that names it counts
        // as used; only its lifetime becomes the handle's.
        let mut ty = (*param.ty).clone();
        if let Type::Reference(reference) = &mut ty {
            reference.lifetime = Some(syn::Lifetime::new("'static", Span::call_site()));
        }
        // Spanned at the parameter so anything wrong with it points there.
        prelude.push(syn::parse_quote_spanned!(param.span()=>
            #(#attrs)* let #pat: #ty = #suite.infra();
        ));
        f.sig.inputs.clear();
    }
    f.block.stmts.splice(0..0, prelude);
}

/// The items appended to the module.
fn generated(spec: &Spec, krate: &syn::Path) -> TokenStream {
    let suite = suite_ident();
    let private = quote!(#krate::__private);
    let consumer = &spec.consumer;
    let needs = &spec.needs;
    let text = |value: &Option<String>| option(value.as_ref().map(|v| quote!(#v)));
    let Backend { flavour, context, cluster, containerd, registry } = &spec.backend;
    let flavour = match flavour {
        Flavour::Docker => quote!(Docker),
        Flavour::Kind => quote!(Kind),
        Flavour::Kubernetes => quote!(Kubernetes),
    };
    let (context, cluster, containerd, registry) = (text(context), text(cluster), text(containerd), text(registry));
    let backend = quote!(#private::Declared {
        flavour: #private::Flavour::#flavour,
        context: #context,
        cluster: #cluster,
        containerd: #containerd,
        registry: #registry,
    });
    let timeout = option(spec.ready_timeout_secs.map(|s| quote!(#s)));
    let catalog = spec.catalog.display().to_string();
    let env = e2e_infra_core::CATALOG_ENV;
    quote! {
        #[doc(hidden)]
        static #suite: #private::Suite = #private::Suite::new(#private::SuiteSpec {
            consumer: #consumer,
            needs: &[#(#needs),*],
            backend: #backend,
            ready_timeout_secs: #timeout,
            catalog: #catalog,
        });

        // Editing the catalog, or pointing the variable elsewhere, recompiles the suite.
        const _: &[u8] = ::core::include_bytes!(#catalog);
        const _: ::core::option::Option<&str> = ::core::option_env!(#env);

        /// The suite's shared handle; sets the stack up on first use.
        #[allow(dead_code)]
        pub fn infra() -> &'static #private::Infra {
            #suite.infra()
        }
    }
}

fn option(value: Option<TokenStream>) -> TokenStream {
    match value {
        Some(v) => quote!(::core::option::Option::Some(#v)),
        None => quote!(::core::option::Option::None),
    }
}

/// The user's item as written plus the errors, so the rest of the crate
/// (and an IDE) still sees the module. Tests that take the handle lose
/// their test attribute, which would otherwise add "tests cannot take
/// arguments" to the real mistakes; `infra()` is stubbed for the same reason.
pub(crate) fn fallback(
    item: TokenStream,
    module: Option<Module>,
    krate: &syn::Path,
    error: &syn::Error,
) -> TokenStream {
    let errors = error.to_compile_error();
    let Some(Module { mut item }) = module else {
        return quote!(#item #errors);
    };
    if let Some((_, items)) = &mut item.content {
        let mut defines_infra = false;
        for it in items.iter_mut() {
            if let Item::Fn(f) = it {
                defines_infra |= f.sig.ident == "infra";
                if !f.sig.inputs.is_empty() {
                    f.attrs.retain(|a| !ast::is_test_attr(a));
                }
            }
        }
        if !defines_infra {
            items.push(syn::parse_quote! {
                #[allow(dead_code)]
                pub fn infra() -> &'static #krate::__private::Infra {
                    ::core::unreachable!()
                }
            });
        }
    }
    quote!(#item #errors)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use std::path::PathBuf;

    use quote::ToTokens;
    use syn::ItemMod;

    use super::*;

    fn render(module: ItemMod, backend: Backend) -> ItemMod {
        let spec = Spec {
            consumer: "notification".into(),
            needs: vec!["datastorage".into()],
            backend,
            ready_timeout_secs: Some(90),
            catalog: PathBuf::from("/catalogs/e2e-infra.toml"),
        };
        let out = suite(&spec, &syn::parse_quote!(::e2e_infra), Module { item: module });
        syn::parse2(out).unwrap()
    }

    fn function<'a>(module: &'a ItemMod, name: &str) -> &'a ItemFn {
        module
            .content
            .as_ref()
            .unwrap()
            .1
            .iter()
            .find_map(|item| match item {
                Item::Fn(f) if f.sig.ident == name => Some(f),
                _ => None,
            })
            .unwrap()
    }

    fn statements(f: &ItemFn) -> Vec<String> {
        f.block.stmts.iter().map(|s| s.to_token_stream().to_string()).collect()
    }

    #[test]
    fn a_test_taking_the_handle_gets_it_bound_after_the_guard() {
        let out = render(
            syn::parse_quote!(
                mod suite {
                    #[test]
                    fn stores(infra: &Infra) {
                        infra.check();
                    }
                    #[tokio::test(flavor = "multi_thread")]
                    async fn stores_async(mut handle: &'static e2e_infra::Infra) {
                        handle.check();
                    }
                }
            ),
            Backend::default(),
        );
        for (name, binding) in [
            ("stores", "let infra : & 'static Infra"),
            ("stores_async", "let mut handle : & 'static e2e_infra :: Infra"),
        ] {
            let f = function(&out, name);
            assert!(f.sig.inputs.is_empty(), "{name} keeps its parameter");
            let stmts = statements(f);
            assert_eq!(stmts[0], "let __e2e_infra_guard = __E2E_INFRA_SUITE . guard () ;");
            assert_eq!(stmts[1], format!("{binding} = __E2E_INFRA_SUITE . infra () ;"));
            assert_eq!(stmts.len(), 3, "{name}: the body follows the prelude");
        }
    }

    #[test]
    fn a_test_without_the_handle_only_gets_the_guard_and_other_items_are_untouched() {
        let out = render(
            syn::parse_quote!(
                mod suite {
                    fn helper(n: u32) -> u32 {
                        n
                    }
                    #[test]
                    fn plain() {
                        helper(1);
                    }
                }
            ),
            Backend::default(),
        );
        assert_eq!(statements(function(&out, "plain")).len(), 2);
        let helper = function(&out, "helper");
        assert_eq!(helper.sig.inputs.len(), 1);
        assert_eq!(statements(helper), ["n"]);
    }

    #[test]
    fn the_suite_items_are_appended() {
        let out = render(
            syn::parse_quote!(
                mod suite {}
            ),
            Backend {
                flavour: Flavour::Kubernetes,
                cluster: Some("e2e".into()),
                registry: Some("127.0.0.1:5000".into()),
                ..Backend::default()
            },
        );
        let text = out.to_token_stream().to_string();
        for expected in [
            "static __E2E_INFRA_SUITE : :: e2e_infra :: __private :: Suite",
            "consumer : \"notification\"",
            "needs : & [\"datastorage\"]",
            "Declared { flavour : :: e2e_infra :: __private :: Flavour :: Kubernetes , context : :: core :: option :: Option :: None , cluster : :: core :: option :: Option :: Some (\"e2e\") , containerd : :: core :: option :: Option :: None , registry : :: core :: option :: Option :: Some (\"127.0.0.1:5000\") , }",
            "ready_timeout_secs : :: core :: option :: Option :: Some (90u64)",
            ":: core :: include_bytes ! (\"/catalogs/e2e-infra.toml\")",
            ":: core :: option_env ! (\"E2E_INFRA_CONFIG\")",
        ] {
            assert!(text.contains(expected), "missing `{expected}` in {text}");
        }
        assert_eq!(statements(function(&out, "infra")), ["__E2E_INFRA_SUITE . infra ()"]);
        let items = &out.content.as_ref().unwrap().1;
        assert!(
            !items.iter().any(|item| matches!(item, Item::Fn(f) if f.attrs.iter().any(ast::is_test_attr))),
            "the suite adds no test of its own: {text}"
        );
    }

    #[test]
    fn on_error_the_module_stays_with_the_errors_and_an_accessor() {
        let module = syn::parse_quote!(
            mod suite {
                #[test]
                fn takes_handle(infra: &Infra) {}
                #[test]
                fn plain() {}
            }
        );
        let error = syn::Error::new(Span::call_site(), "wrong");
        let out = fallback(TokenStream::new(), Some(Module { item: module }), &syn::parse_quote!(::e2e_infra), &error);
        let text = out.to_string();
        assert!(text.contains("compile_error ! { \"wrong\" }"), "{text}");
        let out: syn::File = syn::parse2(out).unwrap();
        let Item::Mod(module) = &out.items[0] else { panic!("not a module: {text}") };
        assert!(!function(module, "takes_handle").attrs.iter().any(ast::is_test_attr));
        assert!(function(module, "plain").attrs.iter().any(ast::is_test_attr));
        assert_eq!(statements(function(module, "infra")), [":: core :: unreachable ! ()"]);
    }
}

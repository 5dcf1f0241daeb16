//! The annotated item: an inline module, and which of its functions are tests.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::{Attribute, Item, ItemFn, ItemMod, Type};

/// An inline module, as `#[e2e_infra]` requires.
pub(crate) struct Module {
    pub(crate) item: ItemMod,
}

impl Module {
    /// The module's items (it has a body: `parse` made sure).
    pub(crate) fn items(&self) -> &[Item] {
        self.item.content.as_ref().map_or(&[], |(_, items)| items)
    }

    /// The module's test functions.
    pub(crate) fn tests(&self) -> impl Iterator<Item = &ItemFn> {
        self.items().iter().filter_map(test_fn)
    }
}

/// Reads the annotated item; anything but `mod name { ... }` is an error at
/// the item.
pub(crate) fn parse(item: TokenStream) -> syn::Result<Module> {
    let module: ItemMod = syn::parse2(item.clone()).map_err(|_| {
        let parsed = syn::parse2::<Item>(item.clone()).ok();
        let what = parsed.as_ref().map_or("this item", describe);
        // A function is pointed at by its signature rather than its whole body.
        let at: &dyn ToTokens = match &parsed {
            Some(Item::Fn(f)) => &f.sig,
            _ => &item,
        };
        syn::Error::new_spanned(
            at,
            format!("#[e2e_infra] applies to an inline module (`mod suite {{ ... }}`), not to {what}; put the tests in a module and annotate the module"),
        )
    })?;
    if module.content.is_none() {
        return Err(syn::Error::new_spanned(
            &module,
            format!("#[e2e_infra] needs the module's content inline: write `mod {} {{ ... }}`", module.ident),
        ));
    }
    Ok(Module { item: module })
}

/// A function with a test attribute (`#[test]`, `#[tokio::test]`, ...).
pub(crate) fn test_fn(item: &Item) -> Option<&ItemFn> {
    match item {
        Item::Fn(f) if f.attrs.iter().any(is_test_attr) => Some(f),
        _ => None,
    }
}

/// Whether the attribute's path ends in `test`.
pub(crate) fn is_test_attr(attr: &Attribute) -> bool {
    attr.path().segments.last().is_some_and(|s| s.ident == "test")
}

fn describe(item: &Item) -> &'static str {
    match item {
        Item::Fn(_) => "a function",
        Item::Struct(_) => "a struct",
        Item::Enum(_) => "an enum",
        Item::Impl(_) => "an impl block",
        Item::Trait(_) => "a trait",
        Item::Const(_) | Item::Static(_) => "a constant or static",
        Item::Use(_) => "a `use` declaration",
        _ => "this item",
    }
}

/// Whether `ty` is `&Infra` (any path ending in `Infra`, any lifetime).
pub(crate) fn is_handle(ty: &Type) -> bool {
    matches!(ty, Type::Reference(r) if r.mutability.is_none() && names_infra(&r.elem))
}

/// Whether `ty` is `&mut Infra`, which gets its own hint.
pub(crate) fn is_mut_handle(ty: &Type) -> bool {
    matches!(ty, Type::Reference(r) if r.mutability.is_some() && names_infra(&r.elem))
}

fn names_infra(ty: &Type) -> bool {
    match ty {
        Type::Path(p) => {
            p.qself.is_none() && p.path.segments.last().is_some_and(|s| s.ident == "Infra" && s.arguments.is_none())
        }
        _ => false,
    }
}

//! What the attribute and the module mean, every mistake reported at once.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e_infra_core::suggest::Unknown;
use e2e_infra_core::{Catalog, Consumer, Echo, Registry};
use proc_macro2::Span;
use syn::{FnArg, Item, LitStr};

use crate::ast::{self, Module};
use crate::attr::{Args, Given, Key};
use crate::diag::{self, Errors};

const BACKENDS: [&str; 3] = ["docker", "kind", "kubernetes"];

const DEFAULT_CLUSTER: &str = "kind";

/// A checked attribute: everything the expansion writes down.
pub(crate) struct Spec {
    pub(crate) consumer: String,
    pub(crate) needs: Vec<String>,
    pub(crate) backend: Backend,
    pub(crate) ready_timeout_secs: Option<u64>,
    /// Absolute.
    pub(crate) catalog: PathBuf,
}

/// Where the suite's stack runs.
pub(crate) enum Backend {
    Docker,
    /// `kind` is the short form: its cluster defaults to `kind`.
    Kubernetes {
        context: Option<String>,
        cluster: Option<String>,
        containerd: Option<String>,
        registry: Option<String>,
    },
}

/// What the compiler's environment says about where the catalog is.
pub(crate) struct Env {
    /// `CARGO_MANIFEST_DIR` of the crate being compiled.
    pub(crate) manifest_dir: PathBuf,
    /// `E2E_INFRA_CONFIG`, if set.
    pub(crate) config: Option<OsString>,
}

/// The runtime crate's path: the `crate` key, else `::e2e_infra`.
pub(crate) fn crate_path(args: Option<&Args>, errors: &mut Errors) -> syn::Path {
    let given = args.and_then(|a| a.krate.as_ref());
    // Parsing through the literal gives the path its span, so an unresolved
    // path is reported at the `crate` value.
    given
        .and_then(|g| {
            errors.take(g.value.parse::<syn::Path>().map_err(|_| {
                syn::Error::new(
                    g.value.span(),
                    format!("`crate` takes a path to the e2e-infra crate such as `::e2e_infra` or `my_reexport::e2e_infra`, not {:?}", g.value.value()),
                )
            }))
        })
        .unwrap_or_else(|| syn::parse_quote!(::e2e_infra))
}

/// Checks the attribute against the catalog.
pub(crate) fn attribute(args: &Args, env: &Env, errors: &mut Errors) -> Option<Spec> {
    let catalog = errors.take(find_catalog(args, env));
    let consumer = consumer(args, errors);
    let needs = needs(args, catalog.as_ref(), errors);
    let backend = backend(args, errors);
    let ready_timeout_secs = timeout(args, errors);
    Some(Spec {
        consumer: consumer?,
        needs: needs?,
        backend: backend?,
        ready_timeout_secs: ready_timeout_secs?,
        catalog: catalog?.path().to_owned(),
    })
}

/// Checks the module's test functions and names.
pub(crate) fn module(module: &Module, errors: &mut Errors) {
    for item in module.items() {
        if let Item::Fn(f) = item {
            if f.sig.ident == "infra" {
                errors.at(
                    f.sig.ident.span(),
                    "#[e2e_infra] generates `infra()`, the accessor of the suite's shared handle, in this module; rename this function",
                );
            }
        }
    }
    for test in module.tests() {
        let mut params = test.sig.inputs.iter();
        if let Some(first) = params.next() {
            match first {
                FnArg::Typed(p) if ast::is_handle(&p.ty) => {}
                FnArg::Typed(p) if ast::is_mut_handle(&p.ty) => errors.spanned(
                    &p.ty,
                    "take the handle as `&Infra`: every test of the suite shares it, so it cannot be borrowed mutably",
                ),
                other => errors.spanned(
                    other,
                    format!(
                        "a test in an #[e2e_infra] module takes no parameter or one `&Infra` (the suite's shared handle); `{}` is not `&Infra`",
                        diag::show(other)
                    ),
                ),
            }
        }
        for extra in params {
            errors.spanned(
                extra,
                format!(
                    "a test in an #[e2e_infra] module takes at most one parameter, the shared handle `&Infra`; remove `{}`",
                    diag::show(extra)
                ),
            );
        }
    }
}

/// The catalog, found and checked whole by the code the runtime runs it
/// with, so a broken catalog fails the build rather than the tests.
fn find_catalog(args: &Args, env: &Env) -> syn::Result<Catalog> {
    let key = args.catalog.as_ref().map(|g| &g.value);
    let span = key.map_or_else(Span::call_site, LitStr::span);
    let given = key.map(LitStr::value);
    Catalog::locate(
        given.as_deref().map(|k| (Path::new(k), "the `catalog` key")),
        env.config.as_deref(),
        &env.manifest_dir,
    )
    .and_then(|path| Catalog::load_sources(&path))
    .map_err(|error| syn::Error::new(span, error))
}

fn missing(args: &Args, key: Key, what: &str, example: String, errors: &mut Errors) {
    errors.at(
        Span::call_site(),
        format!(
            "missing required key `{}` ({what}); add it: `{}`",
            key.name(),
            args.corrected(&[example])
        ),
    );
}

fn consumer(args: &Args, errors: &mut Errors) -> Option<String> {
    let Some(Given { value, .. }) = &args.consumer else {
        if !args.wrote(Key::Consumer) {
            missing(
                args,
                Key::Consumer,
                "the suite's name",
                Key::Consumer.example().to_owned(),
                errors,
            );
        }
        return None;
    };
    Consumer::new(&value.value())
        .map_err(|invalid| errors.at(value.span(), invalid))
        .ok()
        .map(|c| c.as_str().to_owned())
}

fn needs(args: &Args, catalog: Option<&Catalog>, errors: &mut Errors) -> Option<Vec<String>> {
    let known = catalog.map(Catalog::known_names).unwrap_or_default();
    let Some(Given { value: given, .. }) = &args.needs else {
        if !args.wrote(Key::Needs) {
            let first = catalog
                .and_then(|c| c.components().keys().next())
                .map_or("datastorage", String::as_str);
            let example = format!("needs = [{first:?}]");
            let what = if known.is_empty() {
                String::from("the components the suite needs")
            } else {
                format!("the components the suite needs, from: {known}")
            };
            missing(args, Key::Needs, &what, example, errors);
        }
        return None;
    };
    if given.names.is_empty() {
        let hint = if known.is_empty() {
            String::new()
        } else {
            format!("; known: {known}")
        };
        errors.at(
            given.span,
            format!("`needs` is empty: name at least one component of the catalog{hint}"),
        );
        return None;
    }
    let mut ok = true;
    let mut names: Vec<String> = Vec::new();
    for lit in &given.names {
        let name = lit.value();
        if names.contains(&name) {
            errors.at(
                lit.span(),
                format!("`needs` names `{}` twice; name each component once", Echo(&name)),
            );
            ok = false;
            continue;
        }
        if let Some(catalog) = catalog {
            if catalog.get(&name).is_none() {
                errors.at(
                    lit.span(),
                    format!(
                        "{} (catalog: {})",
                        catalog.unknown(&name),
                        catalog.path().display()
                    ),
                );
                ok = false;
            }
        }
        names.push(name);
    }
    ok.then_some(names)
}

fn backend(args: &Args, errors: &mut Errors) -> Option<Backend> {
    let (kubernetes, kind) = match &args.backend {
        None => (false, false),
        Some(Given { value, .. }) => match value.value().as_str() {
            "docker" => (false, false),
            "kind" => (true, true),
            "kubernetes" => (true, false),
            other => {
                errors.at(
                    value.span(),
                    Unknown::new("backend", other, BACKENDS),
                );
                return None;
            }
        },
    };
    let cluster_keys = [&args.cluster, &args.context, &args.containerd, &args.registry];
    if !kubernetes {
        for given in cluster_keys.into_iter().flatten() {
            cluster_only(args, given, errors);
        }
        return (!cluster_keys.iter().any(|k| k.is_some())).then_some(Backend::Docker);
    }
    let mut ok = true;
    let mut text = |given: &Option<Given<LitStr>>, what: &str| match given {
        Some(Given { key, value }) if value.value().is_empty() => {
            errors.at(
                value.span(),
                format!("`{key}` is empty; give {what}, e.g. `{}`", example_of(key)),
            );
            ok = false;
            None
        }
        Some(Given { value, .. }) => Some(value.value()),
        None => None,
    };
    let cluster = text(&args.cluster, "the Kind cluster's name");
    let context = text(&args.context, "a context of the kubeconfig");
    let containerd = text(&args.containerd, "the node's containerd socket");
    let registry = text(&args.registry, "the registry as `host[:port]`");
    let cluster = cluster.or_else(|| kind.then(|| DEFAULT_CLUSTER.to_owned()));
    if let (Some(given), Some(path)) = (&args.containerd, &containerd) {
        if kind {
            errors.at(
                given.key.span(),
                "`containerd` does not apply to `backend = \"kind\"`: Kind's nodes are reached through the engine; use `backend = \"kubernetes\"` for a cluster whose node's containerd listens on a socket of this machine",
            );
            ok = false;
        } else if !path.starts_with('/') {
            errors.at(
                given.value.span(),
                format!("`containerd` takes an absolute socket path, e.g. `{}`; got {path:?}", Key::Containerd.example()),
            );
            ok = false;
        }
    }
    if let (Some(given), Some(host)) = (&args.registry, &registry) {
        if let Err(invalid) = Registry::new(host) {
            errors.at(given.value.span(), invalid);
            ok = false;
        }
        if let Some(socket) = &args.containerd {
            errors.at(
                socket.key.span(),
                "images go either into the node's containerd or to a registry, not both; remove `containerd` or `registry`",
            );
            ok = false;
        }
    }
    if ok && cluster.is_none() && containerd.is_none() && registry.is_none() {
        let span = args.backend.as_ref().map_or_else(Span::call_site, |b| b.value.span());
        errors.at(
            span,
            format!(
                "`backend = \"kubernetes\"` needs to know how images reach the cluster: add `{}` (a node's containerd on this machine), `{}` (a Kind cluster's nodes) or `{}` (a registry the cluster pulls from)",
                Key::Containerd.example(),
                Key::Cluster.example(),
                Key::Registry.example()
            ),
        );
        ok = false;
    }
    ok.then_some(Backend::Kubernetes { context, cluster, containerd, registry })
}

fn example_of(key: &syn::Ident) -> &'static str {
    crate::attr::Key::from_ident(key).map_or("", Key::example)
}

/// A cluster key on a suite that runs on Docker.
fn cluster_only(args: &Args, given: &Given<LitStr>, errors: &mut Errors) {
    let key = given.key.to_string();
    let message = match &args.backend {
        Some(Given { value, .. }) => format!(
            "`{key}` only applies to `backend = \"kind\"` or `\"kubernetes\"`, but this suite uses `backend = {:?}`; switch the backend or remove `{key}`",
            value.value()
        ),
        None => format!(
            "`{key}` only applies to `backend = \"kind\"` or `\"kubernetes\"` (the default backend is docker); add it: `{}`",
            args.corrected(&[String::from(if key == "containerd" { "backend = \"kubernetes\"" } else { "backend = \"kind\"" })])
        ),
    };
    errors.at(given.key.span(), message);
}

/// `Some(None)` when not given; `None` when invalid.
fn timeout(args: &Args, errors: &mut Errors) -> Option<Option<u64>> {
    let Some(Given { value, .. }) = &args.timeout else {
        return Some(None);
    };
    let text = value.value();
    match humantime::parse_duration(&text) {
        Ok(d) if d >= Duration::from_secs(1) => {
            Some(Some(d.as_secs() + u64::from(d.subsec_nanos() > 0)))
        }
        Ok(_) => {
            errors.at(value.span(), format!("`timeout = {text:?}` is shorter than a second; give the stack time to start, e.g. `{}`", Key::Timeout.example()));
            None
        }
        Err(e) => {
            errors.at(
                value.span(),
                format!("`timeout = {text:?}` is not a duration ({e}); write it like \"300s\", \"5m\" or \"1m 30s\""),
            );
            None
        }
    }
}

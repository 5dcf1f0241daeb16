//! What the attribute and the module mean, every mistake reported at once.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e_infra_core::backend::{self as rules, BackendError, Declared, Flavour};
use e2e_infra_core::suggest::Unknown;
use e2e_infra_core::{Catalog, Consumer, Echo};
use proc_macro2::Span;
use syn::{FnArg, Item, LitStr};

use crate::ast::{self, Module};
use crate::attr::{Args, Given, Key};
use crate::diag::{self, Errors};

/// A checked attribute: everything the expansion writes down.
pub(crate) struct Spec {
    pub(crate) consumer: String,
    pub(crate) needs: Vec<String>,
    pub(crate) backend: Backend,
    pub(crate) ready_timeout_secs: Option<u64>,
    /// Absolute.
    pub(crate) catalog: PathBuf,
}

/// Where the suite's stack runs, as the attribute declares it.
#[derive(Default)]
pub(crate) struct Backend {
    pub(crate) flavour: Flavour,
    pub(crate) context: Option<String>,
    pub(crate) cluster: Option<String>,
    pub(crate) containerd: Option<String>,
    pub(crate) registry: Option<String>,
}

impl Backend {
    /// What the runtime receives.
    fn declared(&self) -> Declared<'_> {
        Declared {
            flavour: self.flavour,
            context: self.context.as_deref(),
            cluster: self.cluster.as_deref(),
            containerd: self.containerd.as_deref(),
            registry: self.registry.as_deref(),
        }
    }
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
        format!("missing required key `{}` ({what}); add it: `{}`", key.name(), args.corrected(&[example])),
    );
}

fn consumer(args: &Args, errors: &mut Errors) -> Option<String> {
    let Some(Given { value, .. }) = &args.consumer else {
        if !args.wrote(Key::Consumer) {
            missing(args, Key::Consumer, "the suite's name", Key::Consumer.example().to_owned(), errors);
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
            let first = catalog.and_then(|c| c.components().keys().next()).map_or("datastorage", String::as_str);
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
        let hint = if known.is_empty() { String::new() } else { format!("; known: {known}") };
        errors.at(given.span, format!("`needs` is empty: name at least one component of the catalog{hint}"));
        return None;
    }
    let mut ok = true;
    let mut names: Vec<String> = Vec::new();
    for lit in &given.names {
        let name = lit.value();
        if names.contains(&name) {
            errors.at(lit.span(), format!("`needs` names `{}` twice; name each component once", Echo(&name)));
            ok = false;
            continue;
        }
        if let Some(catalog) = catalog {
            if catalog.get(&name).is_none() {
                errors.at(lit.span(), format!("{} (catalog: {})", catalog.unknown(&name), catalog.path().display()));
                ok = false;
            }
        }
        names.push(name);
    }
    ok.then_some(names)
}

fn backend(args: &Args, errors: &mut Errors) -> Option<Backend> {
    let flavour = match &args.backend {
        None => Flavour::Docker,
        Some(Given { value, .. }) => match Flavour::parse(&value.value()) {
            Some(flavour) => flavour,
            None => {
                errors.at(value.span(), Unknown::new("backend", &value.value(), Flavour::NAMES));
                return None;
            }
        },
    };
    let cluster_keys = [&args.cluster, &args.context, &args.containerd, &args.registry];
    if flavour == Flavour::Docker {
        for given in cluster_keys.into_iter().flatten() {
            cluster_only(args, given, errors);
        }
        return (!cluster_keys.iter().any(|k| k.is_some())).then_some(Backend::default());
    }
    let mut ok = true;
    let mut text = |given: &Option<Given<LitStr>>, what: &str| match given {
        Some(Given { key, value }) if value.value().is_empty() => {
            errors.at(value.span(), format!("`{key}` is empty; give {what}, e.g. `{}`", example_of(key)));
            ok = false;
            None
        }
        Some(Given { value, .. }) => Some(value.value()),
        None => None,
    };
    let backend = Backend {
        flavour,
        cluster: text(&args.cluster, "the Kind cluster's name"),
        context: text(&args.context, "a context of the kubeconfig"),
        containerd: text(&args.containerd, "the node's containerd socket"),
        registry: text(&args.registry, "the registry as `host[:port]`"),
    };
    if !ok {
        return None;
    }
    // The runtime's rules, without the environment it adds at run time.
    match rules::resolve_all(&backend.declared(), |_| None) {
        Ok(_) => Some(backend),
        Err(broken) => {
            for error in &broken {
                broken_rule(args, error, errors);
            }
            None
        }
    }
}

/// A backend rule the attribute breaks, at the key that breaks it, in the
/// attribute's words.
fn broken_rule(args: &Args, error: &BackendError, errors: &mut Errors) {
    let key_span = |given: &Option<Given<LitStr>>| given.as_ref().map_or_else(Span::call_site, |g| g.key.span());
    let value_span = |given: &Option<Given<LitStr>>| given.as_ref().map_or_else(Span::call_site, |g| g.value.span());
    match error {
        BackendError::KindWithContainerd(_) => errors.at(
            key_span(&args.containerd),
            "`containerd` does not apply to `backend = \"kind\"`: Kind's nodes are reached through the engine; use `backend = \"kubernetes\"` for a cluster whose node's containerd listens on a socket of this machine",
        ),
        BackendError::RelativeSocket(path) => errors.at(
            value_span(&args.containerd),
            format!("`containerd` takes an absolute socket path, e.g. `{}`; got {path:?}", Key::Containerd.example()),
        ),
        BackendError::InvalidRegistry(_, invalid) => errors.at(value_span(&args.registry), invalid),
        BackendError::TwoDeliveries { .. } => errors.at(
            key_span(&args.containerd),
            "images go either into the node's containerd or to a registry, not both; remove `containerd` or `registry`",
        ),
        BackendError::NoDelivery => errors.at(
            args.backend.as_ref().map_or_else(Span::call_site, |b| b.value.span()),
            format!(
                "`backend = \"kubernetes\"` needs to know how images reach the cluster: add `{}` (a node's containerd on this machine), `{}` (a Kind cluster's nodes) or `{}` (a registry the cluster pulls from)",
                Key::Containerd.example(),
                Key::Cluster.example(),
                Key::Registry.example()
            ),
        ),
        other => errors.at(Span::call_site(), other),
    }
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
        Ok(d) if d >= Duration::from_secs(1) => Some(Some(d.as_secs() + u64::from(d.subsec_nanos() > 0))),
        Ok(_) => {
            errors.at(
                value.span(),
                format!(
                    "`timeout = {text:?}` is shorter than a second; give the stack time to start, e.g. `{}`",
                    Key::Timeout.example()
                ),
            );
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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use std::collections::HashMap;

    use e2e_infra_core::backend::{
        BACKEND_ENV, CONTAINERD_SOCKET_ENV, KIND_CLUSTER_ENV, KUBE_CONTEXT_ENV, REGISTRY_ENV,
    };

    use super::*;
    use crate::attr;

    /// The attribute's verdict on a backend written as its keys: the
    /// cluster the runtime would use, or refused.
    fn from_attribute(keys: &[(&str, &str)]) -> Result<Option<rules::KubeTarget>, ()> {
        let written: Vec<String> = keys.iter().map(|(key, value)| format!("{key} = {value:?}")).collect();
        let tokens = format!("consumer = \"c\", needs = [\"a\"], {}", written.join(", "));
        let mut errors = Errors::default();
        let args = attr::parse(tokens.parse().unwrap(), &mut errors).unwrap();
        let backend = backend(&args, &mut errors);
        match (errors.finish(()), backend) {
            // What the expansion hands the runtime, in an empty environment.
            (Ok(()), Some(backend)) => Ok(rules::resolve(&backend.declared(), |_| None).unwrap()),
            _ => Err(()),
        }
    }

    /// The runtime's verdict on the same values given as its variables,
    /// for a suite that declares nothing.
    fn from_environment(keys: &[(&str, &str)]) -> Result<Option<rules::KubeTarget>, ()> {
        let variable = |key: &str| match key {
            "backend" => BACKEND_ENV,
            "cluster" => KIND_CLUSTER_ENV,
            "context" => KUBE_CONTEXT_ENV,
            "containerd" => CONTAINERD_SOCKET_ENV,
            _ => REGISTRY_ENV,
        };
        let vars: HashMap<&str, String> =
            keys.iter().map(|(key, value)| (variable(key), (*value).to_owned())).collect();
        rules::resolve(&Declared::default(), |name| vars.get(name).cloned()).map_err(drop)
    }

    #[test]
    fn the_attribute_and_the_environment_agree_on_every_combination() {
        let mut combinations = 0;
        for backend in [None, Some("docker"), Some("kind"), Some("kubernetes")] {
            for cluster in [None, Some("e2e")] {
                for context in [None, Some("local")] {
                    for containerd in [None, Some("/run/containerd/containerd.sock"), Some("run/containerd.sock")] {
                        for registry in [None, Some("127.0.0.1:5000"), Some("http://127.0.0.1:5000")] {
                            let keys: Vec<(&str, &str)> = [
                                ("backend", backend),
                                ("cluster", cluster),
                                ("context", context),
                                ("containerd", containerd),
                                ("registry", registry),
                            ]
                            .into_iter()
                            .filter_map(|(key, value)| Some((key, value?)))
                            .collect();
                            let attribute = from_attribute(&keys);
                            let environment = from_environment(&keys);
                            let on_docker = matches!(backend, None | Some("docker"));
                            if on_docker && keys.iter().any(|(key, _)| *key != "backend") {
                                // A key that does nothing is a mistake in the
                                // attribute; a variable left set is ignored.
                                assert_eq!(attribute, Err(()), "{keys:?}");
                                assert_eq!(environment, Ok(None), "{keys:?}");
                            } else {
                                assert_eq!(attribute, environment, "{keys:?}");
                            }
                            combinations += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(combinations, 4 * 2 * 2 * 3 * 3);
    }
}

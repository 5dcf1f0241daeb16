//! The attribute's arguments as written: which keys, each given once, each
//! value of the type its key takes. What the values mean (a valid consumer,
//! known components) is checked in `check`.

use e2e_infra_core::suggest::Unknown;
use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, Ident, Lit, LitStr, Token};

use crate::diag::Errors;

/// A key the attribute understands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Key {
    Consumer,
    Needs,
    Backend,
    Cluster,
    Context,
    Containerd,
    Registry,
    Timeout,
    Catalog,
    Crate,
}

impl Key {
    const ALL: [Key; 10] = [
        Key::Consumer,
        Key::Needs,
        Key::Backend,
        Key::Cluster,
        Key::Context,
        Key::Containerd,
        Key::Registry,
        Key::Timeout,
        Key::Catalog,
        Key::Crate,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Key::Consumer => "consumer",
            Key::Needs => "needs",
            Key::Backend => "backend",
            Key::Cluster => "cluster",
            Key::Context => "context",
            Key::Containerd => "containerd",
            Key::Registry => "registry",
            Key::Timeout => "timeout",
            Key::Catalog => "catalog",
            Key::Crate => "crate",
        }
    }

    /// A well-formed use of the key, for messages.
    pub(crate) fn example(self) -> &'static str {
        match self {
            Key::Consumer => r#"consumer = "notification""#,
            Key::Needs => r#"needs = ["datastorage"]"#,
            Key::Backend => r#"backend = "kind""#,
            Key::Cluster => r#"cluster = "kind""#,
            Key::Context => r#"context = "kind-kind""#,
            Key::Containerd => r#"containerd = "/run/k3s/containerd/containerd.sock""#,
            Key::Registry => r#"registry = "127.0.0.1:5000""#,
            Key::Timeout => r#"timeout = "300s""#,
            Key::Catalog => r#"catalog = "e2e-infra.toml""#,
            Key::Crate => r#"crate = "::e2e_infra""#,
        }
    }

    fn names() -> impl Iterator<Item = &'static str> + Clone {
        Key::ALL.into_iter().map(Key::name)
    }

    fn from_name(name: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The key an identifier as written names.
    pub(crate) fn from_ident(ident: &Ident) -> Option<Key> {
        Key::from_name(&ident.unraw().to_string())
    }
}

/// A key as written, with its value.
pub(crate) struct Given<T> {
    pub(crate) key: Ident,
    pub(crate) value: T,
}

/// The value of `needs = [...]`.
pub(crate) struct Needs {
    /// The whole array, for "empty" errors.
    pub(crate) span: Span,
    pub(crate) names: Vec<LitStr>,
}

/// The arguments whose values have the right type.
#[derive(Default)]
pub(crate) struct Args {
    pub(crate) consumer: Option<Given<LitStr>>,
    pub(crate) needs: Option<Given<Needs>>,
    pub(crate) backend: Option<Given<LitStr>>,
    pub(crate) cluster: Option<Given<LitStr>>,
    pub(crate) context: Option<Given<LitStr>>,
    pub(crate) containerd: Option<Given<LitStr>>,
    pub(crate) registry: Option<Given<LitStr>>,
    pub(crate) timeout: Option<Given<LitStr>>,
    pub(crate) catalog: Option<Given<LitStr>>,
    pub(crate) krate: Option<Given<LitStr>>,
    /// Every known key written, even with a value of the wrong type, so a
    /// wrong value is not also reported as a missing key.
    seen: Vec<Key>,
}

impl Args {
    /// Whether `key` was written at all.
    pub(crate) fn wrote(&self, key: Key) -> bool {
        self.seen.contains(&key)
    }

    /// The attribute as written (well-typed keys only) plus `extra`, for
    /// messages that show the corrected attribute.
    pub(crate) fn corrected(&self, extra: &[String]) -> String {
        let strings = [
            (Key::Consumer, &self.consumer),
            (Key::Backend, &self.backend),
            (Key::Cluster, &self.cluster),
            (Key::Context, &self.context),
            (Key::Containerd, &self.containerd),
            (Key::Registry, &self.registry),
            (Key::Timeout, &self.timeout),
            (Key::Catalog, &self.catalog),
            (Key::Crate, &self.krate),
        ];
        let mut parts: Vec<String> = strings
            .iter()
            .filter_map(|(key, given)| given.as_ref().map(|g| format!("{} = {:?}", key.name(), g.value.value())))
            .collect();
        if let Some(needs) = &self.needs {
            let names: Vec<String> = needs.value.names.iter().map(|n| format!("{:?}", n.value())).collect();
            parts.insert(parts.len().min(1), format!("needs = [{}]", names.join(", ")));
        }
        parts.extend(extra.iter().cloned());
        format!("#[e2e_infra({})]", parts.join(", "))
    }

    fn set(&mut self, key: Key, given: Given<LitStr>) {
        let slot = match key {
            Key::Consumer => &mut self.consumer,
            Key::Backend => &mut self.backend,
            Key::Cluster => &mut self.cluster,
            Key::Context => &mut self.context,
            Key::Containerd => &mut self.containerd,
            Key::Registry => &mut self.registry,
            Key::Timeout => &mut self.timeout,
            Key::Catalog => &mut self.catalog,
            Key::Crate => &mut self.krate,
            // `needs` has its own slot and type; `parse` never routes it here.
            Key::Needs => return,
        };
        *slot = Some(given);
    }
}

/// `key` or `key = value`; a missing value is reported with the key's meaning.
struct RawArg {
    key: Ident,
    value: Option<Expr>,
}

impl Parse for RawArg {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        // `crate` is a keyword; `parse_any` accepts it as a key.
        let key = Ident::parse_any(input)?;
        let value = if input.parse::<Option<Token![=]>>()?.is_some() { Some(input.parse()?) } else { None };
        Ok(RawArg { key, value })
    }
}

/// Reads the arguments, recording every mistake. `None` when the tokens are
/// not `key = value, ...` at all.
pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> Option<Args> {
    let raw = errors.take(Punctuated::<RawArg, Token![,]>::parse_terminated.parse2(tokens))?;
    let mut args = Args::default();
    for RawArg { key: ident, value } in raw {
        let name = ident.unraw().to_string();
        let Some(key) = Key::from_name(&name) else {
            errors.at(ident.span(), Unknown::new("key", &name, Key::names()).listed_as("Valid keys"));
            continue;
        };
        if args.wrote(key) {
            errors.at(ident.span(), format!("`{name}` is given twice; keep one"));
            continue;
        }
        args.seen.push(key);
        let Some(value) = value else {
            errors.at(ident.span(), format!("`{name}` needs a value, e.g. `{}`", key.example()));
            continue;
        };
        if key == Key::Needs {
            if let Some(needs) = errors.take(needs(&value)) {
                args.needs = Some(Given { key: ident, value: needs });
            }
        } else if let Some(string) = errors.take(string(key, &value)) {
            args.set(key, Given { key: ident, value: string });
        }
    }
    Some(args)
}

/// A string value; a bare word or number gets the quoted spelling suggested.
fn string(key: Key, value: &Expr) -> syn::Result<LitStr> {
    if let Some(Lit::Str(s)) = literal(value) {
        return Ok(s.clone());
    }
    let name = key.name();
    let message = match bare_text(value) {
        Some(bare) => {
            // A bare number of seconds is the likeliest timeout slip.
            let unit = if key == Key::Timeout && matches!(literal(value), Some(Lit::Int(_))) { "s" } else { "" };
            format!("`{name}` takes a string; write `{name} = \"{bare}{unit}\"`")
        }
        None => format!("`{name}` takes a string, e.g. `{}`", key.example()),
    };
    Err(syn::Error::new(value.span(), message))
}

/// `["a", "b"]`; every element that is not a string is reported.
fn needs(value: &Expr) -> syn::Result<Needs> {
    let Expr::Array(array) = value else {
        let message = match literal(value) {
            Some(Lit::Str(s)) => {
                format!("`needs` takes an array of component names; write `needs = [{:?}]`", s.value())
            }
            _ => format!("`needs` takes an array of component names, e.g. `{}`", Key::Needs.example()),
        };
        return Err(syn::Error::new(value.span(), message));
    };
    let mut errors = Errors::default();
    let mut names = Vec::new();
    for element in &array.elems {
        match literal(element) {
            Some(Lit::Str(s)) => names.push(s.clone()),
            _ => {
                let mut message = String::from("`needs` takes component names as strings");
                if let Some(bare) = bare_text(element) {
                    message.push_str(&format!("; write `\"{bare}\"`"));
                }
                errors.at(element.span(), message);
            }
        }
    }
    errors.finish(Needs { span: array.bracket_token.span.join(), names })
}

fn literal(value: &Expr) -> Option<&Lit> {
    match value {
        Expr::Lit(lit) => Some(&lit.lit),
        _ => None,
    }
}

/// The text of a bare word or number, to show it quoted.
fn bare_text(value: &Expr) -> Option<String> {
    match value {
        Expr::Lit(lit) => match &lit.lit {
            Lit::Int(i) => Some(i.to_string()),
            Lit::Float(f) => Some(f.to_string()),
            Lit::Bool(b) => Some(b.value.to_string()),
            _ => None,
        },
        Expr::Path(path) => path.path.get_ident().map(Ident::to_string),
        _ => None,
    }
}

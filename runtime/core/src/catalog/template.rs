//! The catalog's values that hold a small language of their own, read once
//! when the catalog loads: env values with `${dep.field}` references, and the
//! regular expression of a `log` readiness probe. The backends only fill in
//! or match; they never parse again, so they have no parse error to report.

use std::fmt;

/// A value of a component's `docker.env`: text, and references to the
/// address of a dependency, which the Docker backend fills in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvTemplate {
    text: String,
    parts: Vec<EnvPart>,
}

/// One piece of an [`EnvTemplate`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnvPart {
    /// Text, as written.
    Text(String),
    /// `${<dependency>.host}`, `.port` or `.addr`.
    Address {
        /// The component referred to, one of the component's dependencies.
        dependency: String,
        /// Which part of its address.
        field: AddressField,
    },
}

/// What an env reference asks of a dependency's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressField {
    /// Its host name on the stack's network.
    Host,
    /// Its first port of `docker.ports`, which the catalog guarantees.
    Port(u16),
    /// `host:port`.
    Addr(u16),
}

/// A reference an env value cannot have, before the catalog adds where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum BadReference {
    /// A field other than `host`, `port` or `addr`.
    UnknownField {
        /// The reference without its braces, e.g. `db.user`.
        reference: String,
        /// The component it names.
        dependency: String,
    },
    /// A `${` with no `}` after it: the text from `${` to the end.
    Unclosed(String),
}

impl EnvTemplate {
    /// Splits `text` into text and references. A `${` always starts a
    /// reference, so one without a closing brace is an error rather than
    /// text that would reach the container as written. Ports are filled in
    /// by [`EnvTemplate::with_ports`].
    pub(super) fn parse(text: &str) -> Result<Self, BadReference> {
        let mut parts = Vec::new();
        let mut pieces = text.split("${");
        let mut literal = pieces.next().unwrap_or_default().to_owned();
        for piece in pieces {
            let Some((reference, rest)) = piece.split_once('}') else {
                return Err(BadReference::Unclosed(format!("${{{piece}")));
            };
            let (dependency, field) = reference.split_once('.').unwrap_or((reference, ""));
            let field = match field {
                "host" => AddressField::Host,
                "port" => AddressField::Port(0),
                "addr" => AddressField::Addr(0),
                _ => {
                    return Err(BadReference::UnknownField {
                        reference: reference.to_owned(),
                        dependency: dependency.to_owned(),
                    })
                }
            };
            if !literal.is_empty() {
                parts.push(EnvPart::Text(std::mem::take(&mut literal)));
            }
            parts.push(EnvPart::Address { dependency: dependency.to_owned(), field });
            literal.push_str(rest);
        }
        if !literal.is_empty() {
            parts.push(EnvPart::Text(literal));
        }
        Ok(Self { text: text.to_owned(), parts })
    }

    /// The value as written in the catalog.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The pieces, in order.
    pub fn parts(&self) -> &[EnvPart] {
        &self.parts
    }

    /// The components the value refers to.
    pub fn dependencies(&self) -> impl Iterator<Item = (&str, AddressField)> {
        self.parts.iter().filter_map(|part| match part {
            EnvPart::Address { dependency, field } => Some((dependency.as_str(), *field)),
            EnvPart::Text(_) => None,
        })
    }

    /// Fills in each `port` and `addr` reference's port from `port_of`
    /// (a dependency's first port); the first dependency without one is
    /// the error.
    pub(super) fn with_ports(mut self, port_of: impl Fn(&str) -> Option<u16>) -> Result<Self, String> {
        for part in &mut self.parts {
            if let EnvPart::Address { dependency, field: AddressField::Port(port) | AddressField::Addr(port) } = part {
                *port = port_of(dependency).ok_or_else(|| dependency.clone())?;
            }
        }
        Ok(self)
    }

    /// The value with each reference replaced by `host_of` the dependency
    /// and its port.
    pub fn fill(&self, host_of: impl Fn(&str) -> String) -> String {
        self.parts
            .iter()
            .map(|part| match part {
                EnvPart::Text(text) => text.clone(),
                EnvPart::Address { dependency, field } => match field {
                    AddressField::Host => host_of(dependency),
                    AddressField::Port(port) => port.to_string(),
                    AddressField::Addr(port) => format!("{}:{port}", host_of(dependency)),
                },
            })
            .collect()
    }
}

impl fmt::Display for EnvTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The regular expression of a `log` readiness probe, compiled once.
#[derive(Debug, Clone)]
pub struct LogPattern(regex::Regex);

impl LogPattern {
    /// Compiles `pattern`.
    ///
    /// # Errors
    /// The compiler's message when `pattern` is not a regular expression.
    pub fn new(pattern: &str) -> Result<Self, String> {
        regex::Regex::new(pattern).map(Self).map_err(|e| e.to_string())
    }

    /// Whether `line` matches.
    pub fn is_match(&self, line: &str) -> bool {
        self.0.is_match(line)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl PartialEq for LogPattern {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for LogPattern {}

impl fmt::Display for LogPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(dependency: &str, field: AddressField) -> EnvPart {
        EnvPart::Address { dependency: dependency.to_owned(), field }
    }

    #[test]
    fn references_are_read_in_any_position() {
        let parse = |text| EnvTemplate::parse(text).expect("parses").parts;
        assert_eq!(
            parse("postgres://app@${postgres.addr}/app"),
            [
                EnvPart::Text("postgres://app@".into()),
                address("postgres", AddressField::Addr(0)),
                EnvPart::Text("/app".into()),
            ]
        );
        assert_eq!(
            parse("${a.host}:${b.port}"),
            [address("a", AddressField::Host), EnvPart::Text(":".into()), address("b", AddressField::Port(0)),]
        );
        assert_eq!(parse("plain value"), [EnvPart::Text("plain value".into())]);
        assert_eq!(parse("$HOME and {braces}"), [EnvPart::Text("$HOME and {braces}".into())]);
    }

    #[test]
    fn an_unknown_field_names_the_reference() {
        assert_eq!(
            EnvTemplate::parse("x ${db.user} y"),
            Err(BadReference::UnknownField { reference: "db.user".into(), dependency: "db".into() })
        );
    }

    #[test]
    fn an_unclosed_reference_is_an_error_not_text() {
        assert_eq!(EnvTemplate::parse("http://${a.addr"), Err(BadReference::Unclosed("${a.addr".into())));
        assert_eq!(EnvTemplate::parse("${a.host} ${b"), Err(BadReference::Unclosed("${b".into())));
    }

    #[test]
    fn filling_uses_the_host_and_the_ports_given_once() {
        let template = EnvTemplate::parse("${db.host} ${db.addr} ${db.port}")
            .expect("parses")
            .with_ports(|dep| (dep == "db").then_some(5432))
            .expect("db has a port");
        assert_eq!(template.fill(|dep| format!("run-{dep}")), "run-db run-db:5432 5432");
        let portless = EnvTemplate::parse("${cache.addr}").expect("parses");
        assert_eq!(portless.with_ports(|_| None), Err("cache".to_owned()));
    }
}

//! Names and their rules: consumers, component names, run ids, tags,
//! namespaces and registries. Each rule is written once, here, with the one
//! message that states it.

use std::fmt;

use sha2::{Digest, Sha256};

/// Longest consumer or component name: `<consumer>-<8 hex>` must stay a
/// legal namespace name (63 characters) with room to spare.
pub const MAX_NAME_LEN: usize = 40;

/// The rule for consumer and component names, as messages state it.
pub const NAME_RULE: NameRule = NameRule;

/// Displays the rule of [`is_valid_name`].
#[derive(Debug, Clone, Copy)]
pub struct NameRule;

impl fmt::Display for NameRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "use lowercase letters, digits and '-', starting with a letter, not ending with '-', at most {MAX_NAME_LEN} characters"
        )
    }
}

/// Whether `name` can be a consumer or a component: it becomes part of image
/// names, tags and namespace names. See [`NAME_RULE`].
pub fn is_valid_name(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The nearest valid name to `name`, if one can be made from it.
fn nearest_valid_name(name: &str) -> Option<String> {
    let mut out = String::new();
    for c in name.chars().map(|c| c.to_ascii_lowercase()) {
        if c.is_ascii_lowercase() || (c.is_ascii_digit() && !out.is_empty()) {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.truncate(MAX_NAME_LEN);
    let out = out.trim_end_matches('-');
    is_valid_name(out).then(|| out.to_owned())
}

/// Most characters of a given name a message repeats.
pub const MAX_ECHO: usize = 64;

/// A name as every message repeats it: control characters (and the
/// characters that reorder text on a terminal) escaped, so they never reach
/// the terminal raw, and cut after [`MAX_ECHO`] characters with the length of
/// the original, so a huge value cannot flood the output.
#[derive(Debug, Clone, Copy)]
pub struct Echo<'a>(pub &'a str);

impl fmt::Display for Echo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.0.chars();
        for c in chars.by_ref().take(MAX_ECHO) {
            if c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
                write!(f, "{}", c.escape_unicode())?;
            } else {
                fmt::Write::write_char(f, c)?;
            }
        }
        if chars.next().is_some() {
            write!(f, "... ({} bytes in all)", self.0.len())?;
        }
        Ok(())
    }
}

/// Whether `part` can be a run id or consumer name inside labels and as one
/// component of a path: 1 to 128 letters, digits, '-', '_' or '.', not
/// starting with '.', so never `.`, `..` or a hidden name.
pub fn is_safe_name(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 128
        && !part.starts_with('.')
        && part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A consumer name that breaks the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("consumer `{}` is invalid: {NAME_RULE} (it becomes part of image tags and namespace names){}", Echo(.name), example(.suggestion))]
pub struct InvalidConsumer {
    name: String,
    suggestion: Option<String>,
}

impl InvalidConsumer {
    /// The name given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The nearest valid name, if one can be made from the given one.
    pub fn suggestion(&self) -> Option<&str> {
        self.suggestion.as_deref()
    }
}

fn example(suggestion: &Option<String>) -> String {
    suggestion.as_ref().map(|s| format!("; e.g. `consumer = \"{s}\"`")).unwrap_or_default()
}

/// A checked consumer name: the suite's name. Deserialising checks it too,
/// so a record or a label can only give a valid one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Consumer(String);

impl TryFrom<String> for Consumer {
    type Error = InvalidConsumer;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        Self::new(&name)
    }
}

impl From<Consumer> for String {
    fn from(consumer: Consumer) -> Self {
        consumer.0
    }
}

impl std::str::FromStr for Consumer {
    type Err = InvalidConsumer;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::new(name)
    }
}

impl Consumer {
    /// Checks a consumer name.
    ///
    /// # Errors
    /// [`InvalidConsumer`], with the nearest valid name when there is one.
    pub fn new(name: &str) -> Result<Self, InvalidConsumer> {
        if is_valid_name(name) {
            Ok(Self(name.to_owned()))
        } else {
            Err(InvalidConsumer { name: name.to_owned(), suggestion: nearest_valid_name(name) })
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Kubernetes namespace (or Docker network) name owned by one run and consumer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Namespace(String);

impl Namespace {
    /// The name owned by `run_id` and `consumer`: `<consumer>-<8 hex>`, the
    /// first 8 hex digits of SHA-256 over both. The run's tag is the same text.
    pub fn of(run_id: &str, consumer: &str) -> Self {
        let digest = Sha256::digest(format!("{run_id}\0{consumer}"));
        Self(format!("{consumer}-{}", hex::encode(&digest[..4])))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The one tag of a run and consumer: `<consumer>-<8 hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Tag(String);

impl Tag {
    /// The tag of the run that owns `namespace`: the same text.
    pub fn of(namespace: &Namespace) -> Self {
        Self(namespace.0.clone())
    }

    /// The tag text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A registry address that cannot prefix an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("registry `{}` is invalid: give host[:port], e.g. 127.0.0.1:5000", Echo(.0))]
pub struct InvalidRegistry(pub String);

/// A registry a cluster pulls from: `host` or `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Registry(String);

impl Registry {
    /// Checks a registry address: a host of letters, digits, '.' and '-',
    /// then optionally `:` and a port from 1 to 65535.
    ///
    /// # Errors
    /// [`InvalidRegistry`].
    pub fn new(address: &str) -> Result<Self, InvalidRegistry> {
        let (host, port) = match address.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (address, None),
        };
        let host_ok = !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'));
        let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
        if host_ok && port_ok {
            Ok(Self(address.to_owned()))
        } else {
            Err(InvalidRegistry(address.to_owned()))
        }
    }

    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rule() {
        let longest = "a".repeat(MAX_NAME_LEN);
        for good in ["notification", "a", "notification-e2e", "v2-api", &longest] {
            assert!(is_valid_name(good), "{good}");
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        for bad in ["", "Notification", "2fa", "-x", "x-", "x_y", "x.y", "né", &long] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn an_invalid_consumer_gets_the_rule_and_the_nearest_valid_name() {
        let error = Consumer::new("Notification_E2E").expect_err("invalid");
        assert_eq!(
            error.to_string(),
            "consumer `Notification_E2E` is invalid: use lowercase letters, digits and '-', starting with a letter, \
             not ending with '-', at most 40 characters (it becomes part of image tags and namespace names); \
             e.g. `consumer = \"notification-e2e\"`"
        );
        for (given, near) in [("2fa service-", Some("fa-service")), ("my..suite", Some("my-suite")), ("__", None)] {
            assert_eq!(Consumer::new(given).expect_err(given).suggestion(), near, "{given}");
        }
        let long = Consumer::new(&"Ab_".repeat(30)).expect_err("too long");
        assert!(is_valid_name(long.suggestion().expect("a suggestion")));
    }

    #[test]
    fn the_tag_is_the_namespace_of_run_and_consumer() {
        let namespace = Namespace::of("run-1", "notification");
        assert_eq!(namespace, Namespace::of("run-1", "notification"));
        assert_ne!(namespace, Namespace::of("run-2", "notification"));
        let (name, hash) = namespace.as_str().rsplit_once('-').expect("a dash");
        assert_eq!((name, hash.len()), ("notification", 8));
        assert_eq!(Tag::of(&namespace).as_str(), namespace.as_str());
    }

    #[test]
    fn registry_is_a_host_and_an_optional_port() {
        for good in ["127.0.0.1:5000", "registry.local:443", "ghcr.io", "localhost"] {
            assert_eq!(Registry::new(good).map(|r| r.to_string()), Ok(good.to_owned()));
        }
        for bad in ["", ":5000", "host:0", "host:port", "host:70000", "a/b:5000", "my registry", "host:5000/"] {
            assert_eq!(Registry::new(bad), Err(InvalidRegistry(bad.to_owned())), "{bad}");
        }
    }

    #[test]
    fn an_echoed_name_is_cut_and_its_control_characters_escaped() {
        assert_eq!(Echo("web").to_string(), "web");
        assert_eq!(Echo("a\u{1b}[31mb\nc\u{202e}").to_string(), "a\\u{1b}[31mb\\u{a}c\\u{202e}");
        let huge = "x".repeat(1_000_000);
        assert_eq!(Echo(&huge).to_string(), format!("{}... (1000000 bytes in all)", "x".repeat(MAX_ECHO)));
        let consumer = Consumer::new(&format!("\u{1b}]0;{huge}")).expect_err("invalid").to_string();
        assert!(consumer.len() < 400 && consumer.contains("(1000004 bytes in all)"), "{consumer}");
        assert!(!consumer.contains('\u{1b}') && consumer.contains("\\u{1b}]0;"), "{consumer}");
        let registry = InvalidRegistry(huge).to_string();
        assert!(registry.len() < 300, "{registry}");
    }

    #[test]
    fn safe_names_cannot_leave_a_directory() {
        for bad in ["", ".", "..", "../x", ".hidden", "a/b", "a b", "x\0", &"x".repeat(129)] {
            assert!(!is_safe_name(bad), "{bad}");
        }
        for good in ["nextest-1234", "proc-ab-1-2", "a.b_c"] {
            assert!(is_safe_name(good), "{good}");
        }
    }
}

//! The "did you mean" hint of every message about an unknown name.

use std::fmt;

use crate::names::Echo;

/// The name of `known` nearest to `name`, if near enough to be a typo: at
/// most two edits, or a third of the known name's length for long names.
/// `name` itself is never suggested.
pub fn nearest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (strsim::damerau_levenshtein(name, k), k))
        .filter(|&(distance, k)| distance > 0 && distance <= 2.max(k.chars().count() / 3))
        .min()
        .map(|(_, k)| k)
}

/// `a, b, c`.
pub fn list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names.into_iter().collect::<Vec<_>>().join(", ")
}

/// An unknown name among known ones, as every message about one reads:
/// ``unknown component `datastorge`; did you mean `datastorage`? Known: datastorage, postgres``.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknown {
    /// What kind of name: "component", "key", "backend".
    pub what: &'static str,
    /// The name given.
    pub name: String,
    /// The nearest known name, if any is near enough.
    pub near: Option<String>,
    /// Every known name.
    pub known: String,
    /// What the list is called: "Known", "Valid keys".
    pub known_as: &'static str,
}

impl Unknown {
    /// `name`, unknown among `known`, listed as "Known".
    pub fn new<'a>(what: &'static str, name: &str, known: impl IntoIterator<Item = &'a str> + Clone) -> Self {
        Self {
            what,
            name: name.to_owned(),
            near: nearest(name, known.clone()).map(str::to_owned),
            known: list(known),
            known_as: "Known",
        }
    }

    /// The same message with the list called `known_as`.
    pub fn listed_as(self, known_as: &'static str) -> Self {
        Self { known_as, ..self }
    }
}

impl fmt::Display for Unknown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { what, name, near, known, known_as } = self;
        match near {
            Some(near) => write!(f, "unknown {what} `{}`; did you mean `{near}`? {known_as}: {known}", Echo(name)),
            None => write!(f, "unknown {what} `{}`; {}: {known}", Echo(name), known_as.to_lowercase()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMPONENTS: [&str; 3] = ["datastorage", "postgres", "redis"];

    #[test]
    fn suggests_the_nearest_name_for_a_typo() {
        assert_eq!(nearest("datastorge", COMPONENTS), Some("datastorage"));
        assert_eq!(nearest("postgre", COMPONENTS), Some("postgres"));
        assert_eq!(nearest("rdis", COMPONENTS), Some("redis"));
        assert_eq!(nearest("consumr", ["consumer", "needs", "crate"]), Some("consumer"));
    }

    #[test]
    fn suggests_nothing_for_a_far_name_or_the_name_itself() {
        assert_eq!(nearest("kafka", COMPONENTS), None);
        assert_eq!(nearest("mysql", COMPONENTS), None);
        assert_eq!(nearest("redis", ["redis"]), None);
    }

    #[test]
    fn unknown_lists_every_known_name() {
        assert_eq!(
            Unknown::new("component", "datastorge", COMPONENTS).to_string(),
            "unknown component `datastorge`; did you mean `datastorage`? Known: datastorage, postgres, redis"
        );
        assert_eq!(
            Unknown::new("component", "kafka", COMPONENTS).to_string(),
            "unknown component `kafka`; known: datastorage, postgres, redis"
        );
        assert_eq!(
            Unknown::new("key", "nede", ["needs"]).listed_as("Valid keys").to_string(),
            "unknown key `nede`; did you mean `needs`? Valid keys: needs"
        );
    }
}

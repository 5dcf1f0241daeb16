//! Image references, typed so that a build, a load and a deploy cannot disagree.

use std::fmt;

use crate::names::{Echo, Tag};

/// An image reference that is not valid.
#[derive(Debug, thiserror::Error)]
#[error("`{}` is not a valid image reference: {reason}", Echo(.input))]
pub struct InvalidImageRef {
    input: String,
    reason: &'static str,
}

/// Where an image comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Built by this run from the catalog's Dockerfile.
    Built,
    /// An existing image used as is: never rebuilt, never deleted.
    Borrowed,
}

/// A canonical image reference: `registry/repository:tag`, with
/// `docker.io/library/` filled in the way the engine does, so that two
/// spellings of one image compare equal.
///
/// A reference to an image a run builds is made from the run's [`Tag`] by
/// [`ImageRef::built`], which the run's plan alone calls; borrowed
/// references are parsed with [`ImageRef::borrowed`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
    origin: OriginKey,
}

/// Kept inside the ref so that equality also says where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum OriginKey {
    Built,
    Borrowed,
}

impl ImageRef {
    /// Parses an existing image's reference and canonicalizes it
    /// (`postgres:16` is `docker.io/library/postgres:16`; `localhost/x:y` stays).
    ///
    /// # Errors
    /// [`InvalidImageRef`] for an empty or malformed reference.
    pub fn borrowed(input: &str) -> Result<Self, InvalidImageRef> {
        let (registry, repository, tag, digest) = parse(input)?;
        Ok(Self { registry, repository, tag, digest, origin: OriginKey::Borrowed })
    }

    /// The reference of `component` as the run tagged `tag` builds it, in
    /// `registry`. The run's plan makes these, so that every stage takes its
    /// reference from the plan.
    pub fn built(registry: &str, component: &str, tag: &Tag) -> Self {
        Self {
            registry: registry.to_owned(),
            repository: component.to_owned(),
            tag: Some(tag.as_str().to_owned()),
            digest: None,
            origin: OriginKey::Built,
        }
    }

    /// This reference pinned to `digest`, the manifest a registry stored for
    /// it: `registry/repository:tag@sha256:<hex>`, which a node pulls by
    /// digest, so what runs is what was pushed even where others push the
    /// same tag.
    ///
    /// # Errors
    /// [`InvalidImageRef`] when `digest` is not `sha256:` and 64 lowercase
    /// hex digits.
    pub fn pinned(&self, digest: &str) -> Result<Self, InvalidImageRef> {
        let hex = digest.strip_prefix("sha256:").unwrap_or_default();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(InvalidImageRef {
                input: format!("{self}@{digest}"),
                reason: "the digest must be sha256: and 64 lowercase hex digits",
            });
        }
        Ok(Self { digest: Some(digest.to_owned()), ..self.clone() })
    }

    /// Whether the run builds this image or borrows it.
    pub fn origin(&self) -> Origin {
        match self.origin {
            OriginKey::Built => Origin::Built,
            OriginKey::Borrowed => Origin::Borrowed,
        }
    }

    /// The registry host (`localhost`, `docker.io`, `127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path without registry (`library/postgres`, `datastorage`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if any (`sha256:...`).
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// Whether `other` (any spelling, as an engine or a manifest prints it)
    /// names this same image.
    pub fn matches(&self, other: &str) -> bool {
        parse(other)
            .is_ok_and(|(r, p, t, d)| r == self.registry && p == self.repository && t == self.tag && d == self.digest)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl serde::Serialize for ImageRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

type Parts = (String, String, Option<String>, Option<String>);

/// Splits a reference the way the Docker engine does: the first path part is a
/// registry when it has a `.` or `:` or is `localhost`.
fn parse(input: &str) -> Result<Parts, InvalidImageRef> {
    let bad = |reason| InvalidImageRef { input: input.to_owned(), reason };
    if input.is_empty() {
        return Err(bad("it is empty"));
    }
    if input.chars().any(char::is_whitespace) {
        return Err(bad("it contains white space"));
    }
    let (rest, digest) = match input.split_once('@') {
        Some((r, d)) => {
            if !d.contains(':') {
                return Err(bad("the digest must look like sha256:<hex>"));
            }
            (r, Some(d.to_owned()))
        }
        None => (input, None),
    };
    let (name, tag) = match rest.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, Some(t.to_owned())),
        _ => (rest, None),
    };
    if let Some(t) = &tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            && !t.starts_with(['.', '-']);
        if !ok {
            return Err(bad("the tag may hold letters, digits, '_', '.' and '-', at most 128"));
        }
    }
    let (registry, repository) = match name.split_once('/') {
        Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
            (first.to_owned(), path.to_owned())
        }
        _ if name.contains('/') => ("docker.io".to_owned(), name.to_owned()),
        _ => ("docker.io".to_owned(), format!("library/{name}")),
    };
    let path_ok = !repository.is_empty()
        && repository.split('/').all(|part| {
            !part.is_empty()
                && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
        });
    if !path_ok {
        return Err(bad("the repository must be lowercase letters, digits, '.', '_' and '-' separated by '/'"));
    }
    let tag = if tag.is_none() && digest.is_none() { Some("latest".to_owned()) } else { tag };
    Ok((registry, repository, tag, digest))
}

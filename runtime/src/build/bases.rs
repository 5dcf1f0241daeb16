//! The base images a Dockerfile is built `FROM`, and what the engine holds
//! under each reference. A base rebuilt or pulled under the same reference
//! gets another image id, so the id is an input of every image built from it.

use std::collections::{BTreeMap, HashMap};

use bollard::Docker;
use sha2::{Digest, Sha256};

use super::{silent, BuildError, ENGINE_CALL_TIMEOUT};
use crate::engine;
use crate::plan::PlannedComponent;

/// The distinct base references of every stage of `dockerfile`, in the
/// order they first appear: `scratch` and earlier stages named by their
/// alias are left out, `--platform=` and other flags ignored, and the
/// `ARG`s declared before the first `FROM` substituted in their `${NAME}`
/// and `$NAME` forms, with the value of the build arg `args` gives or else
/// their default (an `ARG` with neither is empty, as the engine makes it).
pub(crate) fn references(dockerfile: &str, args: &BTreeMap<String, String>) -> Vec<String> {
    let mut meta: HashMap<String, String> = HashMap::new();
    let mut stages: Vec<String> = Vec::new();
    let mut found: Vec<String> = Vec::new();
    for instruction in instructions(dockerfile) {
        let mut words = instruction.split_whitespace();
        let Some(keyword) = words.next() else { continue };
        if keyword.eq_ignore_ascii_case("arg") && stages.is_empty() {
            for declaration in words {
                let (name, default) = match declaration.split_once('=') {
                    Some((name, value)) => (name, Some(value.trim_matches(|c| c == '"' || c == '\''))),
                    None => (declaration, None),
                };
                let value = args.get(name).map(String::as_str).or(default).unwrap_or_default();
                meta.insert(name.to_owned(), value.to_owned());
            }
        } else if keyword.eq_ignore_ascii_case("from") {
            let mut operands = words.filter(|word| !word.starts_with("--"));
            let Some(image) = operands.next().map(|word| substitute(word, &meta)) else { continue };
            let is_stage = stages.iter().any(|stage| stage.eq_ignore_ascii_case(&image));
            if !image.eq_ignore_ascii_case("scratch") && !is_stage && !found.contains(&image) {
                found.push(image);
            }
            match (operands.next(), operands.next()) {
                (Some(word), Some(alias)) if word.eq_ignore_ascii_case("as") => stages.push(alias.to_owned()),
                // A stage without an alias still marks that `ARG`s from here on are a stage's own.
                _ => stages.push(String::new()),
            }
        }
    }
    found
}

/// The instructions of `dockerfile`, each on one line: comment lines and
/// blank lines dropped (inside a continuation too, as the engine does) and
/// lines ending in `\` joined to the next.
fn instructions(dockerfile: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    out
}

fn is_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `word` with its `${NAME}` and `$NAME` replaced by their values in `meta`
/// (empty when undeclared); other `$` forms are left as they are.
fn substitute(word: &str, meta: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = word;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let braced = after.strip_prefix('{').and_then(|inner| inner.find('}').map(|end| (&inner[..end], end + 2)));
        let bare = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
        let (name, used) = match braced {
            Some((name, used)) if is_name(name) => (name, used),
            Some(_) => ("", 0),
            None => (&after[..bare], bare),
        };
        if name.is_empty() {
            out.push('$');
        } else {
            out.push_str(meta.get(name).map_or("", String::as_str));
        }
        rest = &after[used..];
    }
    out.push_str(rest);
    out
}

/// The engine's image id for each of `references`, inspected concurrently;
/// `None` for one the engine does not hold (the build will pull it).
pub(super) async fn identify(
    docker: &Docker,
    component: &PlannedComponent,
    references: &[String],
) -> Result<Vec<Option<String>>, BuildError> {
    futures::future::try_join_all(references.iter().map(|reference| async move {
        let inspecting = docker.inspect_image(reference);
        let inspected = engine::within(docker, ENGINE_CALL_TIMEOUT, "inspecting a base image", inspecting)
            .await
            .map_err(silent(component))?;
        match inspected {
            Ok(image) => Ok(image.id),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
            Err(source) => Err(BuildError::Base { component: component.name.clone(), base: reference.clone(), source }),
        }
    }))
    .await
}

/// `digest` (the component's own inputs) combined with its bases: each
/// reference with the id the engine holds for it, or a mark that it holds
/// none. A Dockerfile with no base but `scratch` keeps `digest`.
pub(super) fn with_bases(digest: &str, references: &[String], ids: &[Option<String>]) -> String {
    if references.is_empty() {
        return digest.to_owned();
    }
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    field(b"e2e-infra base images v1");
    field(digest.as_bytes());
    for (reference, id) in references.iter().zip(ids) {
        field(reference.as_bytes());
        match id {
            Some(id) => {
                field(b"id");
                field(id.as_bytes());
            }
            None => field(b"absent"),
        }
    }
    format!("sha256:{}", hex::encode(hash.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(dockerfile: &str, args: &[(&str, &str)]) -> Vec<String> {
        let args = args.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        references(dockerfile, &args)
    }

    #[test]
    fn every_stage_counts_once_and_scratch_and_stage_aliases_do_not() {
        let dockerfile = "\
# syntax=docker/dockerfile:1
FROM --platform=$BUILDPLATFORM golang:1.22 AS Build
RUN go build
from debian:bookworm as runtime
FROM build AS again
FROM scratch
COPY --from=build /app /app
FROM debian:bookworm
FROM runtime
";
        assert_eq!(refs(dockerfile, &[]), ["golang:1.22", "debian:bookworm"]);
    }

    #[test]
    fn args_before_the_first_from_are_substituted_from_build_args_or_defaults() {
        let dockerfile = "\
ARG REGISTRY=docker.io VERSION=\"12\"
ARG FLAVOUR
FROM ${REGISTRY}/library/debian:$VERSION-slim
ARG LATE=ignored
FROM base-$FLAVOUR:${LATE}x
FROM ${UNDECLARED:-kept}
";
        assert_eq!(
            refs(dockerfile, &[("VERSION", "13")]),
            ["docker.io/library/debian:13-slim", "base-:x", "${UNDECLARED:-kept}"]
        );
        assert_eq!(refs(dockerfile, &[("FLAVOUR", "alpine")])[1], "base-alpine:x");
    }

    #[test]
    fn comments_blank_lines_and_continuations_are_read_as_the_engine_reads_them() {
        let dockerfile = "\
FROM \\
  # a comment inside the continuation
\t--platform=linux/amd64 \\

  localhost/base:one \\
  AS first
#FROM commented:out
  FROM first
RUN echo FROM not:this
";
        assert_eq!(refs(dockerfile, &[]), ["localhost/base:one"]);
    }

    #[test]
    fn the_digest_changes_with_a_base_id_and_only_scratch_keeps_it() {
        let own = "sha256:00";
        assert_eq!(with_bases(own, &[], &[]), own);
        let base = ["debian:bookworm".to_owned()];
        let one = with_bases(own, &base, &[Some("sha256:aa".into())]);
        let other = with_bases(own, &base, &[Some("sha256:bb".into())]);
        let absent = with_bases(own, &base, &[None]);
        assert!(one != own && one != other && one != absent && other != absent);
        assert_eq!(one, with_bases(own, &base, &[Some("sha256:aa".into())]));
    }
}

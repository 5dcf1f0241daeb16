//! Registry credentials where Docker users keep them: `config.json` in
//! `DOCKER_CONFIG` (else `~/.docker`), its `auths`, `credHelpers` and
//! `credsStore`, read through the `docker_credential` crate, which runs the
//! `docker-credential-<name>` helpers as `docker login` left them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use bollard::auth::DockerCredentials;
use docker_credential::{CredentialRetrievalError, DockerCredential};
use serde::Deserialize;

/// The variable that moves Docker's configuration folder.
pub const DOCKER_CONFIG_ENV: &str = "DOCKER_CONFIG";

/// Where a registry's credential comes from, as `config.json` says.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// `credHelpers.<registry>`: the helper `docker-credential-<name>`.
    Helper(String),
    /// `auths.<registry>` of the file.
    Auths(PathBuf),
    /// `credsStore`: the helper `docker-credential-<name>`, for every registry.
    Store(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Helper(name) => write!(f, "credential helper `docker-credential-{name}` (credHelpers)"),
            Self::Auths(file) => write!(f, "`auths` of {}", file.display()),
            Self::Store(name) => write!(f, "credential store `docker-credential-{name}` (credsStore)"),
        }
    }
}

/// A registry's credential and where it came from.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// The registry, `host:port`.
    pub registry: String,
    /// Where it was found.
    pub source: Source,
    secret: Secret,
}

#[derive(Clone, PartialEq, Eq)]
enum Secret {
    Password { username: String, password: String },
    IdentityToken(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret itself.
        f.debug_struct("Credential")
            .field("registry", &self.registry)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// The user name, for a user name and password.
    pub fn username(&self) -> Option<&str> {
        match &self.secret {
            Secret::Password { username, .. } => Some(username),
            Secret::IdentityToken(_) => None,
        }
    }

    /// What the engine's push takes.
    pub fn for_engine(&self) -> DockerCredentials {
        let mut credentials =
            DockerCredentials { serveraddress: Some(self.registry.clone()), ..DockerCredentials::default() };
        match &self.secret {
            Secret::Password { username, password } => {
                credentials.username = Some(username.clone());
                credentials.password = Some(password.clone());
            }
            Secret::IdentityToken(token) => credentials.identitytoken = Some(token.clone()),
        }
        credentials
    }

    /// The `.dockerconfigjson` of an image pull secret for this registry.
    /// Kubelets take a user name and password; an identity token is
    /// handed over as the password of user `<token>`, as Docker does.
    pub fn docker_config_json(&self) -> String {
        let (username, password) = match &self.secret {
            Secret::Password { username, password } => (username.as_str(), password.as_str()),
            Secret::IdentityToken(token) => ("<token>", token.as_str()),
        };
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        serde_json::json!({ "auths": { &self.registry: { "username": username, "password": password, "auth": auth } } })
            .to_string()
    }
}

/// A credential that `config.json` names but that cannot be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
// Fields named for what they hold carry no doc of their own.
#[allow(missing_docs)]
pub enum CredentialError {
    /// `config.json` cannot be read or parsed.
    #[error("reading Docker's configuration {} for registry {registry} failed; fix the file, or point {DOCKER_CONFIG_ENV} at a folder with a valid config.json", file.display())]
    Config {
        registry: String,
        file: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The source `config.json` names for the registry gave no credential.
    #[error("the credential for registry {registry} from {source_tried} could not be had: {problem}; run `docker login {registry}` (or fix {source_tried}) and run again")]
    Unavailable { registry: String, source_tried: Source, problem: String },
}

/// What of `config.json` says where a registry's credential is.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Config {
    #[serde(default)]
    auths: BTreeMap<String, serde_json::Value>,
    creds_store: Option<String>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
}

/// Docker's configuration folder: `DOCKER_CONFIG`, else `~/.docker`.
pub fn config_dir() -> Option<PathBuf> {
    std::env::var_os(DOCKER_CONFIG_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".docker")))
}

/// What a push to `registry` went with, for its errors: `credential`'s
/// source, or where none was found.
pub fn tried(registry: &str, credential: Option<&Credential>) -> String {
    match credential {
        Some(credential) => format!("the credential from {}", credential.source),
        None => match config_dir() {
            Some(dir) => format!("no credential ({} has none for {registry})", dir.join("config.json").display()),
            None => format!("no credential (neither {DOCKER_CONFIG_ENV} nor HOME is set)"),
        },
    }
}

/// The credential for `registry` (`host:port`) in Docker's configuration
/// folder ([`config_dir`]); `None` when none is configured, and the
/// registry is then used without one.
///
/// # Errors
/// [`CredentialError`] naming the registry, the source tried and how to
/// fix it, when the configuration names a source that gives nothing.
pub fn lookup(registry: &str) -> Result<Option<Credential>, CredentialError> {
    match config_dir() {
        Some(dir) => lookup_in(&dir, registry),
        None => Ok(None),
    }
}

/// As [`lookup`], in the configuration folder `dir`.
///
/// # Errors
/// As [`lookup`].
pub fn lookup_in(dir: &Path, registry: &str) -> Result<Option<Credential>, CredentialError> {
    let file = dir.join("config.json");
    let config_error = |source| CredentialError::Config { registry: registry.to_owned(), file: file.clone(), source };
    let text = match std::fs::read(&file) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(config_error(error)),
    };
    let config: Config = serde_json::from_slice(&text).map_err(|e| config_error(std::io::Error::other(e)))?;
    // The crate's order: a registry's helper, then its `auths` entry, then the store.
    let source = if let Some(helper) = config.cred_helpers.get(registry).filter(|h| !h.is_empty()) {
        Source::Helper(helper.clone())
    } else if config.auths.contains_key(registry) {
        Source::Auths(file.clone())
    } else if let Some(store) = config.creds_store.filter(|s| !s.is_empty()) {
        Source::Store(store)
    } else {
        return Ok(None);
    };
    let unavailable = |problem: String| CredentialError::Unavailable {
        registry: registry.to_owned(),
        source_tried: source.clone(),
        problem,
    };
    let secret = match docker_credential::get_credential_from_reader(text.as_slice(), registry) {
        Ok(DockerCredential::UsernamePassword(username, password)) => Secret::Password { username, password },
        Ok(DockerCredential::IdentityToken(token)) => Secret::IdentityToken(token),
        // A store holds every registry `docker login` was given: one it
        // does not know is used without a credential, as Docker does.
        Err(CredentialRetrievalError::HelperFailure { stdout, .. })
            if matches!(source, Source::Store(_)) && stdout.contains("credentials not found") =>
        {
            return Ok(None)
        }
        Err(CredentialRetrievalError::HelperFailure { helper, stdout, stderr }) => {
            let said =
                [stdout.trim(), stderr.trim()].into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>().join("; ");
            return Err(unavailable(format!("`{helper} get` failed: {said}")));
        }
        Err(CredentialRetrievalError::HelperCommunicationError) => {
            let name = match &source {
                Source::Helper(name) | Source::Store(name) => name.as_str(),
                Source::Auths(_) => "",
            };
            return Err(unavailable(format!("`docker-credential-{name}` cannot be run (is it on PATH?)")));
        }
        Err(error) => return Err(unavailable(error.to_string())),
    };
    Ok(Some(Credential { registry: registry.to_owned(), source, secret }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("config.json"), json).expect("config.json");
        dir
    }

    #[test]
    fn auths_give_the_user_and_password() {
        let auth = base64::engine::general_purpose::STANDARD.encode("pusher:s3cret");
        let dir = config(&format!(r#"{{"auths": {{"10.0.0.1:5000": {{"auth": "{auth}"}}}}}}"#));
        let found = lookup_in(dir.path(), "10.0.0.1:5000").expect("read").expect("a credential");
        assert_eq!(found.source, Source::Auths(dir.path().join("config.json")));
        assert_eq!(found.username(), Some("pusher"));
        let engine = found.for_engine();
        assert_eq!((engine.username.as_deref(), engine.password.as_deref()), (Some("pusher"), Some("s3cret")));
        assert_eq!(engine.serveraddress.as_deref(), Some("10.0.0.1:5000"));
        let secret: serde_json::Value = serde_json::from_str(&found.docker_config_json()).expect("json");
        assert_eq!(secret["auths"]["10.0.0.1:5000"]["auth"], auth.as_str());
        assert!(!format!("{found:?}").contains("s3cret"), "{found:?}");
    }

    #[test]
    fn no_file_or_no_entry_means_no_credential() {
        let empty = tempfile::tempdir().expect("temp dir");
        assert!(lookup_in(empty.path(), "r:5000").expect("no file is fine").is_none());
        let other = config(r#"{"auths": {"elsewhere:5000": {"auth": "eDp5"}}}"#);
        assert!(lookup_in(other.path(), "r:5000").expect("read").is_none());
    }

    #[test]
    fn a_broken_entry_names_the_registry_the_file_and_the_fix() {
        let dir = config(r#"{"auths": {"r:5000": {"auth": "not base64!"}}}"#);
        let error = lookup_in(dir.path(), "r:5000").expect_err("undecodable");
        let text = error.to_string();
        assert!(
            text.contains("registry r:5000") && text.contains("`auths` of") && text.contains("docker login r:5000"),
            "{text}"
        );
        let broken = config("{ not json");
        let error = lookup_in(broken.path(), "r:5000").expect_err("unparsable");
        assert!(
            matches!(error, CredentialError::Config { .. }) && error.to_string().contains("config.json"),
            "{error}"
        );
    }

    #[test]
    fn a_missing_helper_is_named_with_its_command() {
        let dir = config(r#"{"credHelpers": {"r:5000": "e2e-infra-test-absent"}}"#);
        let error = lookup_in(dir.path(), "r:5000").expect_err("no such helper");
        let text = error.to_string();
        assert!(text.contains("docker-credential-e2e-infra-test-absent") && text.contains("credHelpers"), "{text}");
        assert!(text.contains("docker login r:5000"), "{text}");
    }
}

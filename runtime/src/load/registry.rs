//! Pushing a plan's built images to the registry its references name, for a
//! cluster that pulls them (`Delivery::Registry`), a few at a time; the
//! digests the registry stored pin the references the manifests name.

use std::time::Duration;

use bollard::query_parameters::PushImageOptionsBuilder;
use bollard::Docker;
use futures::{StreamExt, TryStreamExt};

use super::credentials::{self, Credential, CredentialError};
use crate::plan::{ImageRef, Origin, Plan};

/// How long a registry may take to accept a connection before it counts as
/// not answering.
const ANSWER_WITHIN: Duration = Duration::from_secs(3);

/// Pushes at once: enough to overlap one image's upload with another's
/// compression in the engine, few enough not to crowd a small machine.
const PUSHES_AT_ONCE: usize = 3;

/// One pushed image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The reference pushed (the plan's).
    pub image: ImageRef,
    /// The manifest digest the registry stored (`sha256:...`).
    pub digest: String,
}

/// A registry load error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
// Fields named for what they hold carry no doc of their own.
#[allow(missing_docs)]
pub enum LoadError {
    /// The plan delivers images locally; there is nowhere to push them.
    #[error("`{image}` names no registry (the plan was made with Delivery::Local); make the plan with Delivery::Registry(\"host:port\") to push")]
    NoRegistry { image: ImageRef },
    /// The registry's credential cannot be had.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// Nothing answers at the registry's address.
    #[error("registry {registry} does not answer: {problem} (credential: {tried}); start it, or set E2E_INFRA_REGISTRY to where it listens")]
    Unreachable {
        registry: String,
        problem: String,
        /// The credential the push would have used ([`credentials::tried`]).
        tried: String,
    },
    /// The push failed; `hint` says what to do when the cause is known.
    #[error("pushing `{image}` to registry {registry} with {tried} failed{hint}")]
    Push {
        image: ImageRef,
        registry: String,
        /// The credential the push used ([`credentials::tried`]).
        tried: String,
        hint: String,
        /// The engine's error.
        source: bollard::errors::Error,
    },
    /// The engine did not report what the registry stored.
    #[error("pushing `{image}` finished but the engine reported no digest for it")]
    NoDigest { image: ImageRef },
}

/// Pushes every built image of `plan` to the registry in its reference,
/// [`PUSHES_AT_ONCE`] at a time, and returns them in the plan's order.
/// Borrowed images are left alone: the cluster pulls them from where they are.
///
/// `credential` is the registry's, from [`credentials::lookup`]; `None`
/// pushes without one.
///
/// # Errors
/// [`LoadError`] naming the image: a plan without a registry, a registry
/// that does not answer within 3 s, a failed push (saying whether the
/// engine distrusts the registry's certificate or the registry refused the
/// credential, and where that came from), or no digest reported.
///
/// # Example
/// ```no_run
/// # async fn demo(plan: e2e_infra::Plan) -> Result<(), Box<dyn std::error::Error>> {
/// let docker = e2e_infra::engine::connect().await?;
/// for pushed in e2e_infra::load::registry::push_all(&docker, &plan, None).await? {
///     println!("{} = {}", pushed.image, pushed.digest);
/// }
/// # Ok(()) }
/// ```
pub async fn push_all(docker: &Docker, plan: &Plan, credential: Option<&Credential>) -> Result<Vec<Pushed>, LoadError> {
    let built: Vec<_> = plan.components().iter().filter(|c| c.origin == Origin::Built).collect();
    if let Some(first) = built.first() {
        if first.image.registry() == "localhost" {
            return Err(LoadError::NoRegistry { image: first.image.clone() });
        }
        answers(first.image.registry(), credential).await?;
    }
    futures::stream::iter(built.into_iter().map(|c| push_one(docker, &c.image, credential)))
        .buffered(PUSHES_AT_ONCE)
        .try_collect()
        .await
}

/// The digests of `pushed`, by component, for [`Plan`]'s pinning.
pub(crate) fn digests(plan: &Plan, pushed: &[Pushed]) -> std::collections::BTreeMap<String, String> {
    plan.components()
        .iter()
        .filter_map(|c| Some((c.name.clone(), pushed.iter().find(|p| p.image == c.image)?.digest.clone())))
        .collect()
}

/// Whether something accepts a connection at `registry` (`host:port`).
async fn answers(registry: &str, credential: Option<&Credential>) -> Result<(), LoadError> {
    let unreachable = |problem: String| LoadError::Unreachable {
        registry: registry.to_owned(),
        problem,
        tried: credentials::tried(registry, credential),
    };
    match tokio::time::timeout(ANSWER_WITHIN, tokio::net::TcpStream::connect(registry)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(unreachable(error.to_string())),
        Err(_) => Err(unreachable(format!("no connection within {}", humantime::format_duration(ANSWER_WITHIN)))),
    }
}

/// What to do about a failed push, from what the engine said.
fn hint(registry: &str, said: &str, credential: Option<&Credential>) -> String {
    let said = said.to_ascii_lowercase();
    if said.contains("x509") || said.contains("certificate") {
        return format!(
            ": the engine does not trust the registry's certificate; put the CA that signed it in \
             /etc/docker/certs.d/{registry}/ca.crt on the engine's machine (read at every push)"
        );
    }
    if ["unauthorized", "authentication required", "no basic auth credentials", "denied"]
        .iter()
        .any(|w| said.contains(w))
    {
        return match credential {
            Some(credential) => format!(
                ": the registry refused the credential; fix it in {}, or run `docker login {registry}`",
                credential.source
            ),
            None => format!(
                ": the registry wants a credential; run `docker login {registry}`, or set {} to a folder \
                 whose config.json has one",
                credentials::DOCKER_CONFIG_ENV
            ),
        };
    }
    String::new()
}

async fn push_one(docker: &Docker, image: &ImageRef, credential: Option<&Credential>) -> Result<Pushed, LoadError> {
    let registry = image.registry();
    let push_error = |source: bollard::errors::Error| LoadError::Push {
        image: image.clone(),
        registry: registry.to_owned(),
        tried: credentials::tried(registry, credential),
        hint: hint(registry, &source.to_string(), credential),
        source,
    };
    let options = PushImageOptionsBuilder::new().tag(image.tag().unwrap_or("latest")).build();
    let mut progress = docker.push_image(&image.name(), Some(options), credential.map(Credential::for_engine));
    let mut digest = None;
    while let Some(item) = progress.next().await {
        let info = item.map_err(push_error)?;
        if let Some(status) = info.status {
            tracing::debug!(target: "e2e_infra::load", %image, "{status}");
            // The engine's last status line: `<tag>: digest: sha256:... size: N`.
            if let Some(found) = status.split_whitespace().skip_while(|w| *w != "digest:").nth(1) {
                digest = Some(found.to_owned());
            }
        }
    }
    let digest = digest.ok_or_else(|| LoadError::NoDigest { image: image.clone() })?;
    tracing::info!(target: "e2e_infra::load", %image, %digest, "pushed");
    Ok(Pushed { image: image.clone(), digest })
}

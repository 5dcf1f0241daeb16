//! Pushing a plan's built images to the registry its references name, for a
//! cluster that pulls them (`Delivery::Registry`), a few at a time; the
//! digests the registry stored pin the references the manifests name.

use bollard::auth::DockerCredentials;
use bollard::query_parameters::PushImageOptionsBuilder;
use bollard::Docker;
use futures::{StreamExt, TryStreamExt};

use crate::plan::{ImageRef, Origin, Plan};

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
    NoRegistry {
        image: ImageRef,
    },
    /// The push failed.
    #[error("pushing `{image}` to {registry} failed")]
    Push {
        image: ImageRef,
        registry: String,
        /// The engine's error.
        source: bollard::errors::Error,
    },
    /// The engine did not report what the registry stored.
    #[error("pushing `{image}` finished but the engine reported no digest for it")]
    NoDigest {
        image: ImageRef,
    },
}

/// Pushes every built image of `plan` to the registry in its reference,
/// [`PUSHES_AT_ONCE`] at a time, and returns them in the plan's order.
/// Borrowed images are left alone: the cluster pulls them from where they are.
///
/// # Errors
/// [`LoadError`] naming the image: a plan without a registry, a failed push,
/// or no digest reported.
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
pub async fn push_all(
    docker: &Docker,
    plan: &Plan,
    registry_auth: Option<DockerCredentials>,
) -> Result<Vec<Pushed>, LoadError> {
    let built = plan.components().iter().filter(|c| c.origin == Origin::Built);
    futures::stream::iter(built.map(|c| push_one(docker, &c.image, registry_auth.clone())))
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

async fn push_one(docker: &Docker, image: &ImageRef, auth: Option<DockerCredentials>) -> Result<Pushed, LoadError> {
    if image.registry() == "localhost" {
        return Err(LoadError::NoRegistry { image: image.clone() });
    }
    let push_error = |source| LoadError::Push { image: image.clone(), registry: image.registry().to_owned(), source };
    let options = PushImageOptionsBuilder::new().tag(image.tag().unwrap_or("latest")).build();
    let mut progress = docker.push_image(&image.name(), Some(options), auth);
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

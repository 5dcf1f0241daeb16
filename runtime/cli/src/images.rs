//! `e2e-infra clean --images`: the image housekeeping of builds, on demand.

use e2e_infra::cli_support::housekeeping::{self, prune_consumer_run_tags, prune_run_tags};
use e2e_infra::engine;
use e2e_infra::plan::Consumer;

use crate::error::CliError;
use crate::output::say;

/// The image part of `clean`.
#[derive(clap::Args)]
pub struct ImagesArgs {
    /// Also remove the image tags of older runs: per built component, all
    /// but the newest runs' (see --keep), sparing cache references,
    /// borrowed images, tags a user gave, tags a container or a run in
    /// progress uses, and images built or tagged in the last 10 minutes.
    #[arg(long)]
    images: bool,
    /// With --images: how many runs' tags to keep per component (default:
    /// E2E_INFRA_KEEP_IMAGE_RUNS, else 3).
    #[arg(long, requires = "images")]
    keep: Option<usize>,
}

/// Removes old run tags when `--images` was given, printing each: of
/// `consumer`'s runs only when one is given (`clean --consumer C`), else of
/// every consumer's.
pub fn clean(args: &ImagesArgs, consumer: Option<&Consumer>) -> Result<(), CliError> {
    if !args.images {
        return Ok(());
    }
    // 0 turns housekeeping after builds off; here it would remove every
    // tag, which only an explicit --keep 0 should do.
    let keep = args.keep.unwrap_or_else(|| match housekeeping::keep_runs_from_env() {
        0 => housekeeping::KEEP_RUNS,
        n => n,
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(CliError::AsyncRuntime)?;
    runtime.block_on(async {
        let docker = engine::connect().await?;
        let removed = match consumer {
            Some(consumer) => prune_consumer_run_tags(&docker, consumer, keep, housekeeping::GRACE).await,
            None => prune_run_tags(&docker, None, keep, housekeeping::GRACE, &[]).await,
        }
        .map_err(CliError::Images)?;
        if removed.is_empty() {
            say!("no image tags to remove: every component has the tags of at most {keep} run(s) not in use")?;
        }
        for tag in removed {
            say!("removed image tag {} ({}, image {})", tag.reference, tag.component, short_id(&tag.image_id))?;
        }
        Ok(())
    })
}

fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    hex.get(..12).unwrap_or(hex)
}

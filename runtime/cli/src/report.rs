//! `e2e-infra logs` and `e2e-infra report`: a stack's evidence, live or kept.

use e2e_infra::cli_support::report::{self, logs};
use e2e_infra::cli_support::teardown::RunStack;
use e2e_infra::engine;
use e2e_infra::plan::{Consumer, RunId};

use crate::error::CliError;
use crate::output::say;
use crate::stacks::{not_found, runtime, select, stacks, ClusterArgs};

/// Which stack.
#[derive(clap::Args)]
pub struct StackArgs {
    /// The consumer whose stack it is.
    #[arg(long)]
    consumer: Consumer,
    /// The run (default: the consumer's only stack).
    #[arg(long)]
    run: Option<RunId>,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Arguments of `logs`.
#[derive(clap::Args)]
pub struct LogsArgs {
    /// Only this component's containers.
    component: Option<String>,
    #[command(flatten)]
    stack: StackArgs,
    /// Keep printing new lines until the containers end (Ctrl-C stops).
    #[arg(long)]
    follow: bool,
}

/// Arguments of `report`.
#[derive(clap::Args)]
pub struct ReportArgs {
    #[command(flatten)]
    stack: StackArgs,
}

/// The one stack `args` names.
async fn find(args: &StackArgs) -> Result<RunStack, CliError> {
    let docker = engine::connect().await?;
    let mut found: Vec<RunStack> = stacks(&docker, args.cluster.wanted()).await?;
    select(&mut found, &args.consumer, args.run.as_ref());
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(not_found(&args.consumer, args.run.as_ref(), &args.cluster)),
        _ => Err(CliError::Ambiguous {
            consumer: args.consumer.to_string(),
            runs: found.into_iter().map(|s| s.key.run().to_string()).collect(),
        }),
    }
}

/// Runs `logs`.
pub fn logs(args: &LogsArgs) -> Result<(), CliError> {
    runtime()?.block_on(async {
        let stack = find(&args.stack).await?;
        let (_, placement) = report::on_demand(&stack);
        let selection = logs::Selection { key: stack.key, component: args.component.clone(), follow: args.follow };
        logs::print(&placement, &selection, &mut std::io::stdout().lock()).await.map_err(CliError::Logs)
    })
}

/// Runs `report`.
pub fn report(args: &ReportArgs) -> Result<(), CliError> {
    runtime()?.block_on(async {
        let stack = find(&args.stack).await?;
        let (evidence, placement) = report::on_demand(&stack);
        let dir = report::case_dir(&stack.key, report::ON_DEMAND);
        let path = report::write_for(dir, &evidence, &placement).await.map_err(CliError::Report)?;
        say!("{}", path.display())?;
        Ok(())
    })
}

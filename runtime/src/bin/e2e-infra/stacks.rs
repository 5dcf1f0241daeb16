//! `e2e-infra up`, `down`, `status` and `clean`: stacks for people.

use std::path::Path;

use e2e_infra::plan::RunId;
use e2e_infra::stack::{self, StackOptions};
use e2e_infra::suite::{error_chain, Backend};
use e2e_infra::teardown::{self, Liveness};
use e2e_infra::{engine, Plan};

/// Arguments of `up`.
#[derive(clap::Args)]
pub struct UpArgs {
    /// The consumer name (lowercase letters, digits, '-').
    #[arg(long)]
    consumer: String,
    /// Components to bring up, comma separated; their dependencies follow.
    #[arg(long, value_delimiter = ',', required = true)]
    needs: Vec<String>,
    /// Run on this Kind cluster instead of the Docker engine.
    #[arg(long)]
    kind: Option<String>,
    /// With --kind: push to this registry (host:port) instead of loading into nodes.
    #[arg(long, requires = "kind")]
    registry: Option<String>,
    /// Rebuild even when an image of the same inputs exists.
    #[arg(long)]
    force_build: bool,
}

/// Arguments of `down`.
#[derive(clap::Args)]
pub struct DownArgs {
    /// Remove this consumer's stacks.
    #[arg(long)]
    consumer: String,
    /// Only the stack of this run (default: every run of the consumer).
    #[arg(long)]
    run: Option<String>,
    /// The kubeconfig context, to delete the stack's namespace too.
    #[arg(long)]
    context: Option<String>,
}

/// Arguments of `clean`.
#[derive(clap::Args)]
pub struct CleanArgs {
    /// Also remove stacks kept because a test failed or E2E_INFRA_KEEP=1.
    #[arg(long)]
    kept: bool,
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("starting an async runtime failed: {e}"))
}

/// Runs `up`.
pub fn up(config: Option<&Path>, args: UpArgs) -> Result<(), String> {
    let catalog = crate::plan::catalog(config)?;
    let id = std::env::var(e2e_infra::plan::RUN_ID_ENV).unwrap_or_else(|_| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        format!("up-{:x}", now.as_millis())
    });
    // No launcher: a stack brought up by hand lives until `down`.
    let run = RunId::explicit(&id, None).map_err(|e| e.to_string())?;
    // The process ends after `up`; leaking the names gives the 'static the
    // backend description takes.
    let backend = match args.kind {
        Some(cluster) => Backend::Kind {
            cluster: Box::leak(cluster.into_boxed_str()),
            registry: args.registry.map(|r| &*Box::leak(r.into_boxed_str())),
        },
        None => Backend::Docker,
    };
    let needs: Vec<&str> = args.needs.iter().map(String::as_str).collect();
    let plan = Plan::new(&catalog, &args.consumer, &needs, run, &backend.delivery()).map_err(|e| e.to_string())?;
    let mut options = StackOptions { backend, ..StackOptions::default() };
    options.build.force = args.force_build;
    let record = runtime()?.block_on(stack::up(&plan, &options)).map_err(|e| {
        format!(
            "{}\nwhat was created is labelled; remove it with `e2e-infra down --consumer {} --run {}`",
            error_chain(&e),
            args.consumer,
            plan.run()
        )
    })?;
    print!("{}", record.summary);
    for (component, ports) in &record.endpoints {
        for (port, addr) in ports {
            println!("  {component}:{port} -> {addr}");
        }
    }
    println!("take it down with: e2e-infra down --consumer {} --run {}", args.consumer, plan.run());
    Ok(())
}

/// Runs `down`.
pub fn down(args: &DownArgs) -> Result<(), String> {
    runtime()?.block_on(async {
        let docker = engine::connect().await.map_err(|e| error_chain(&e))?;
        let runs = teardown::list(&docker).await.map_err(|e| error_chain(&e))?;
        let mut found = false;
        for run in runs.iter().filter(|r| {
            r.consumer == args.consumer && args.run.as_ref().is_none_or(|id| *id == r.run_id)
        }) {
            found = true;
            let summary = stack::down(&docker, &run.run_id, &run.consumer, args.context.as_deref())
                .await
                .map_err(|e| error_chain(&e))?;
            println!("removed {} run {}: {summary}", run.consumer, run.run_id);
        }
        if !found && args.context.is_none() {
            return Err(format!(
                "no stack of consumer `{}`{} on this engine; `e2e-infra status` lists what there is",
                args.consumer,
                args.run.as_ref().map(|r| format!(" and run `{r}`")).unwrap_or_default()
            ));
        }
        Ok(())
    })
}

/// Runs `status`.
pub fn status() -> Result<(), String> {
    runtime()?.block_on(async {
        let docker = engine::connect().await.map_err(|e| error_chain(&e))?;
        let runs = teardown::list(&docker).await.map_err(|e| error_chain(&e))?;
        if runs.is_empty() {
            println!("no e2e-infra stacks on this engine");
        }
        for run in runs {
            let state = match (run.liveness(), run.kept) {
                (_, true) => "kept",
                (Liveness::Alive, _) => "alive",
                (Liveness::Dead, _) => "dead",
                (Liveness::Manual, _) => "manual",
            };
            println!(
                "{:<14} {:<7} run {}  containers: {}  networks: {}",
                run.consumer,
                state,
                run.run_id,
                if run.containers.is_empty() { "-".to_owned() } else { run.containers.join(", ") },
                if run.networks.is_empty() { "-".to_owned() } else { run.networks.join(", ") },
            );
        }
        Ok(())
    })
}

/// Runs `clean`.
pub fn clean(args: &CleanArgs) -> Result<(), String> {
    runtime()?.block_on(async {
        let docker = engine::connect().await.map_err(|e| error_chain(&e))?;
        let removed = teardown::clean_dead(&docker, None, args.kept).await.map_err(|e| error_chain(&e))?;
        if removed.is_empty() {
            println!("nothing to clean: no stack of a finished run is left");
        }
        for (run, summary) in removed {
            println!("removed {} run {}: {summary}", run.consumer, run.run_id);
        }
        Ok(())
    })
}

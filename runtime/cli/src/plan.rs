//! `e2e-infra plan`.

use std::path::Path;

use e2e_infra::{Catalog, Delivery, Plan, RunId};

use crate::error::CliError;

/// Arguments of `plan`.
#[derive(clap::Args)]
pub struct Args {
    /// The consuming suite's name (lowercase letters, digits, '-').
    #[arg(long)]
    consumer: String,
    /// Components the suite needs, comma separated; their dependencies follow.
    #[arg(long, value_delimiter = ',', required = true)]
    needs: Vec<String>,
    /// Push built images to this registry (host:port) instead of loading them.
    #[arg(long)]
    registry: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

/// Loads the catalog named by `--config`, else by `E2E_INFRA_CONFIG`, else
/// found from the current directory upwards.
pub fn catalog(config: Option<&Path>) -> Result<Catalog, CliError> {
    let here = std::env::current_dir().map_err(CliError::CurrentDir)?;
    let env = std::env::var_os(e2e_infra::catalog::CATALOG_ENV);
    let path = Catalog::locate(config.map(|c| (c, "--config")), env.as_deref(), &here)?;
    Ok(Catalog::load(&path)?)
}

/// Runs `plan`.
pub fn run(config: Option<&Path>, args: &Args) -> Result<(), CliError> {
    let catalog = catalog(config)?;
    let run = RunId::detect()?;
    let delivery = args.registry.clone().map_or(Delivery::Local, Delivery::Registry);
    let needs: Vec<&str> = args.needs.iter().map(String::as_str).collect();
    let plan = Plan::new(&catalog, &args.consumer, &needs, run, &delivery)?;
    let mut text = String::new();
    match args.format {
        Format::Json => {
            text = serde_json::to_string_pretty(&plan).map_err(|e| CliError::Output(e.into()))?;
            text.push('\n');
        }
        Format::Text => {
            text.push_str(&format!(
                "run       {}\nconsumer  {}\ntag       {}\nnamespace {}\n",
                plan.run(),
                plan.consumer(),
                plan.tag(),
                plan.namespace()
            ));
            for c in plan.components() {
                let deps = if c.depends_on.is_empty() { "-".to_owned() } else { c.depends_on.join(",") };
                text.push_str(&format!(
                    "  {:<16} {:<48} {:<8} {:<12} after {deps}\n",
                    c.name,
                    c.image.to_string(),
                    format!("{:?}", c.origin).to_lowercase(),
                    c.pull_policy.as_str()
                ));
            }
        }
    }
    crate::output::write(format_args!("{text}"))
}

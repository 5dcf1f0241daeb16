//! `e2e-infra plan`.

use std::io::Write;
use std::path::Path;

use e2e_infra::{Catalog, Delivery, Plan, RunId};

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

/// Loads the catalog named by `--config`, or found from the current directory.
pub fn catalog(config: Option<&Path>) -> Result<Catalog, String> {
    let path = match config {
        Some(path) => path.to_owned(),
        None => {
            let here = std::env::current_dir().map_err(|e| format!("reading the current directory: {e}"))?;
            Catalog::locate(&here).map_err(|e| e.to_string())?
        }
    };
    Catalog::load(&path).map_err(|e| e.to_string())
}

/// Runs `plan`.
pub fn run(config: Option<&Path>, args: &Args) -> Result<(), String> {
    let catalog = catalog(config)?;
    let run = RunId::detect().map_err(|e| e.to_string())?;
    let delivery = args.registry.clone().map_or(Delivery::Local, Delivery::Registry);
    let needs: Vec<&str> = args.needs.iter().map(String::as_str).collect();
    let plan = Plan::new(&catalog, &args.consumer, &needs, run, &delivery).map_err(|e| e.to_string())?;
    let mut text = String::new();
    match args.format {
        Format::Json => {
            text = serde_json::to_string_pretty(&plan).map_err(|e| e.to_string())?;
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
    // A reader that stops early (`| head`) is not an error.
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(format!("writing the plan: {e}")),
        _ => Ok(()),
    }
}

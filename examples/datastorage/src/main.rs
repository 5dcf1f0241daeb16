//! DataStorage, the notification example's audit store, and the tool that
//! prepares its database.
//!
//! ```text
//! datastorage serve     HTTP API on $PORT (8080)
//! datastorage migrate   applies the SQL files in $MIGRATIONS (/migrations), once each
//! ```
//!
//! Both read PostgreSQL's address from `DATABASE_URL`
//! (`postgres://user:password@host:port/db`); `serve` reads Redis's from
//! `REDIS` (`host:port`).

mod api;
mod cache;
mod migrate;
mod store;

use std::path::PathBuf;
use std::process::ExitCode;

/// Errors of either command, shown with their causes by [`report`].
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("environment variable {name} is not set: {what}")]
    Missing { name: &'static str, what: &'static str },
    #[error("environment variable {name} is not {what}: {value:?}")]
    Invalid { name: &'static str, value: String, what: &'static str },
    #[error("starting the runtime")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Migrate(#[from] migrate::MigrateError),
    #[error(transparent)]
    Serve(#[from] api::ServeError),
}

fn main() -> ExitCode {
    let command = std::env::args().nth(1).unwrap_or_default();
    let result = match command.as_str() {
        "serve" => runtime().and_then(|rt| rt.block_on(serve())),
        "migrate" => runtime().and_then(|rt| rt.block_on(migrate())),
        _ => {
            eprintln!("usage: datastorage serve | datastorage migrate");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("datastorage {command}: {}", report(&error));
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(Error::Runtime)
}

async fn serve() -> Result<(), Error> {
    let database = required("DATABASE_URL", "the PostgreSQL URL")?;
    let redis = required("REDIS", "Redis's host:port")?;
    let port = match std::env::var("PORT") {
        Err(_) => 8080,
        Ok(value) => value.parse().map_err(|_| Error::Invalid { name: "PORT", value, what: "a port number" })?,
    };
    api::serve(port, store::Store::new(&database), cache::Cache::new(redis)).await?;
    Ok(())
}

async fn migrate() -> Result<(), Error> {
    let database = required("DATABASE_URL", "the PostgreSQL URL")?;
    let dir = std::env::var_os("MIGRATIONS").map_or_else(|| PathBuf::from("/migrations"), PathBuf::from);
    migrate::run(&database, &dir).await?;
    Ok(())
}

fn required(name: &'static str, what: &'static str) -> Result<String, Error> {
    std::env::var(name).map_err(|_| Error::Missing { name, what })
}

/// An error and its causes on one line.
fn report(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

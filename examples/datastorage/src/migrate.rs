//! Applies the SQL migrations: every `NNNN_name.sql` file of a folder, in
//! order of its number, each once. `schema_migrations` records what was
//! applied, so a second run is a no-op; an advisory lock keeps two runs from
//! applying the same file at once.

use std::path::{Path, PathBuf};

use tokio_postgres::NoTls;

/// The advisory lock every migration run takes (any constant will do, as
/// long as every run takes the same one).
const LOCK: i64 = 0x6532_6569_6e66_7261;

/// Why migrating failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("reading the migrations folder {dir}")]
    Folder {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: a migration is named NNNN_name.sql, with a number of its own")]
    Name { file: PathBuf },
    #[error("reading {file}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to PostgreSQL")]
    Connect(#[source] tokio_postgres::Error),
    #[error("{what}")]
    Sql {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// One migration file.
struct Migration {
    version: i32,
    name: String,
    file: PathBuf,
}

/// Applies what `dir` holds that the database lacks.
pub async fn run(url: &str, dir: &Path) -> Result<(), MigrateError> {
    let migrations = list(dir)?;
    let (mut client, connection) = tokio_postgres::connect(url, NoTls).await.map_err(MigrateError::Connect)?;
    let connection = tokio::spawn(connection);
    let sql = |what: &str| {
        let what = what.to_owned();
        move |source| MigrateError::Sql { what, source }
    };
    client.execute("SELECT pg_advisory_lock($1)", &[&LOCK]).await.map_err(sql("taking the migration lock"))?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version integer PRIMARY KEY,
                 name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(sql("creating schema_migrations"))?;
    let mut applied = 0;
    for migration in &migrations {
        let done = client
            .query_opt("SELECT 1 FROM schema_migrations WHERE version = $1", &[&migration.version])
            .await
            .map_err(sql("reading schema_migrations"))?;
        if done.is_some() {
            continue;
        }
        let text = std::fs::read_to_string(&migration.file)
            .map_err(|source| MigrateError::Read { file: migration.file.clone(), source })?;
        let applying = format!("applying {}", migration.name);
        let transaction = client.transaction().await.map_err(sql(&applying))?;
        transaction.batch_execute(&text).await.map_err(sql(&applying))?;
        transaction
            .execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                &[&migration.version, &migration.name],
            )
            .await
            .map_err(sql(&applying))?;
        transaction.commit().await.map_err(sql(&applying))?;
        println!("migrate: applied {}", migration.name);
        applied += 1;
    }
    println!("migrate: {applied} applied, {} already there", migrations.len() - applied);
    drop(client);
    // The connection task ends once the client is gone; its outcome adds nothing.
    let _ = connection.await;
    Ok(())
}

/// The folder's migrations, by number.
fn list(dir: &Path) -> Result<Vec<Migration>, MigrateError> {
    let folder = |source| MigrateError::Folder { dir: dir.to_owned(), source };
    let mut migrations = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(folder)? {
        let file = entry.map_err(folder)?.path();
        let Some(name) = file.file_name().and_then(|n| n.to_str()).filter(|n| n.ends_with(".sql")) else { continue };
        let version = name
            .split_once('_')
            .and_then(|(number, _)| number.parse().ok())
            .ok_or_else(|| MigrateError::Name { file: file.clone() })?;
        migrations.push(Migration { version, name: name.to_owned(), file });
    }
    migrations.sort_by_key(|m| m.version);
    if let Some(twin) = migrations.windows(2).find(|pair| pair[0].version == pair[1].version) {
        return Err(MigrateError::Name { file: twin[1].file.clone() });
    }
    Ok(migrations)
}

//! Tiny stand-ins for the services of the notification example, in one static
//! binary so that the example's images can be built `FROM scratch` on a
//! machine that cannot pull anything.
//!
//! ```text
//! stand-ins postgres    --port 5432
//! stand-ins redis       --port 6379
//! stand-ins migrate     --postgres HOST:PORT
//! stand-ins datastorage --port 8080 --postgres HOST:PORT --redis HOST:PORT
//! ```
//!
//! A flag left out is read from the environment variable of its name in
//! capitals (`POSTGRES`, `REDIS`, `PORT`), which is how the catalog and the
//! manifests pass addresses.

mod datastorage;
mod http;
mod store;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::ExitCode;
use std::time::Duration;

/// How long `migrate` keeps trying to reach postgres.
const MIGRATE_PATIENCE: Duration = Duration::from_secs(10);

/// Each role and the flags it takes.
const ROLES: &[(&str, &[&str])] = &[
    ("postgres", &["port"]),
    ("redis", &["port"]),
    ("migrate", &["postgres"]),
    ("datastorage", &["port", "postgres", "redis"]),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("stand-ins: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let (role, rest) = args.split_first().ok_or_else(usage)?;
    let allowed = ROLES.iter().find(|(name, _)| name == role).map(|(_, flags)| *flags).ok_or_else(usage)?;
    let mut flags = Flags::parse(role, rest, allowed)?;
    flags.fill_from(allowed, |name| std::env::var(name.to_uppercase()).ok());
    match role.as_str() {
        "postgres" | "redis" => {
            let port = flags.port(if role == "postgres" { 5432 } else { 6379 })?;
            let listener = bind(role, port)?;
            println!("{role} stand-in ready on port {port}");
            store::serve(role, &listener);
            Ok(())
        }
        "migrate" => migrate(flags.required("postgres")?, MIGRATE_PATIENCE),
        _ => {
            let postgres = flags.required("postgres")?;
            let redis = flags.required("redis")?;
            datastorage::check_schema(postgres)?;
            let port = flags.port(8080)?;
            let listener = bind(role, port)?;
            println!("datastorage listening on port {port} (postgres {postgres}, redis {redis})");
            datastorage::serve(&listener, postgres, redis);
            Ok(())
        }
    }
}

fn usage() -> String {
    let roles: Vec<String> = ROLES
        .iter()
        .map(|(name, flags)| {
            let flags: Vec<String> = flags.iter().map(|f| format!("--{f} <{}>", f.to_uppercase())).collect();
            format!("  stand-ins {name} {}", flags.join(" "))
        })
        .collect();
    format!("usage:\n{}", roles.join("\n"))
}

fn bind(role: &str, port: u16) -> Result<TcpListener, String> {
    TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("{role}: cannot listen on port {port}: {e}"))
}

/// Writes the schema marker, as a migration job would create the tables.
fn migrate(postgres: &str, patience: Duration) -> Result<(), String> {
    let command = format!("SET {} {}", store::SCHEMA_KEY, store::SCHEMA_VERSION);
    let reply = store::query_until(postgres, &command, patience)
        .map_err(|e| format!("migrate: cannot reach postgres at {postgres} within {patience:?}: {e}"))?;
    if reply != "OK" {
        return Err(format!("migrate: postgres at {postgres} answered `{reply}` to `{command}`"));
    }
    println!("migrate: schema {} applied on {postgres}", store::SCHEMA_VERSION);
    Ok(())
}

/// `--name value` pairs, checked against the flags a role takes.
#[derive(Debug)]
struct Flags(BTreeMap<String, String>);

impl Flags {
    fn parse(role: &str, args: &[String], allowed: &[&str]) -> Result<Self, String> {
        let mut flags = BTreeMap::new();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let name = arg
                .strip_prefix("--")
                .filter(|name| allowed.contains(name))
                .ok_or_else(|| format!("{role}: unexpected argument `{arg}`\n{}", usage()))?;
            let value = args.next().ok_or_else(|| format!("{role}: `--{name}` needs a value"))?;
            flags.insert(name.to_owned(), value.clone());
        }
        Ok(Self(flags))
    }

    /// Takes the flags not given on the command line from `lookup`.
    fn fill_from(&mut self, allowed: &[&str], lookup: impl Fn(&str) -> Option<String>) {
        for name in allowed {
            if !self.0.contains_key(*name) {
                if let Some(value) = lookup(name) {
                    self.0.insert((*name).to_owned(), value);
                }
            }
        }
    }

    fn required(&self, name: &str) -> Result<&str, String> {
        self.0.get(name).map(String::as_str).ok_or_else(|| {
            format!("`--{name} HOST:PORT` (or the environment variable {}) is required", name.to_uppercase())
        })
    }

    fn port(&self, default: u16) -> Result<u16, String> {
        match self.0.get("port") {
            None => Ok(default),
            Some(p) => p.parse().map_err(|_| format!("`--port {p}` is not a port number")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn flags_are_checked_per_role() {
        let flags = Flags::parse("datastorage", &strings(&["--port", "9", "--redis", "r:1"]), &["port", "redis"])
            .expect("valid flags");
        assert_eq!(flags.port(8080), Ok(9));
        assert_eq!(flags.required("redis"), Ok("r:1"));
        let missing = flags.required("postgres").expect_err("not given");
        assert_eq!(missing, "`--postgres HOST:PORT` (or the environment variable POSTGRES) is required");

        let err = Flags::parse("redis", &strings(&["--postgres", "x"]), &["port"]).expect_err("rejected");
        assert!(err.starts_with("redis: unexpected argument `--postgres`"), "{err}");
        let err = Flags::parse("redis", &strings(&["--port"]), &["port"]).expect_err("rejected");
        assert_eq!(err, "redis: `--port` needs a value");
        let flags = Flags::parse("redis", &strings(&["--port", "high"]), &["port"]).expect("parsed");
        assert!(flags.port(6379).is_err());
        assert_eq!(Flags::parse("redis", &[], &["port"]).expect("parsed").port(6379), Ok(6379));
    }

    #[test]
    fn missing_flags_come_from_the_environment() {
        let mut flags =
            Flags::parse("migrate", &strings(&["--postgres", "given:1"]), &["postgres", "port"]).expect("valid flags");
        flags.fill_from(&["postgres", "port"], |name| Some(format!("env-{name}")));
        assert_eq!(flags.required("postgres"), Ok("given:1"), "the command line wins");
        assert_eq!(flags.0.get("port").map(String::as_str), Some("env-port"));
    }

    #[test]
    fn unknown_role_prints_usage() {
        let err = run(&strings(&["mysql"])).expect_err("rejected");
        assert!(err.contains("stand-ins datastorage --port <PORT> --postgres <POSTGRES> --redis <REDIS>"), "{err}");
        assert!(run(&[]).is_err());
    }

    #[test]
    fn migrate_writes_the_schema_marker() {
        let (addr, _server) = store::tests::spawn_store();
        migrate(&addr, Duration::from_secs(5)).expect("migrated");
        let marker = store::query(&addr, "GET schema", Duration::from_secs(5)).expect("query");
        assert_eq!(marker, store::SCHEMA_VERSION);
    }

    #[test]
    fn migrate_gives_up_when_postgres_is_unreachable() {
        let addr = store::tests::closed_port();
        let err = migrate(&addr, Duration::from_millis(300)).expect_err("no postgres");
        assert!(err.starts_with(&format!("migrate: cannot reach postgres at {addr}")), "{err}");
    }
}

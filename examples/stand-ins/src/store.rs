//! The postgres and redis stand-ins: a line protocol over TCP, backed by a map.
//!
//! One command per line, one reply line each: `PING` -> `PONG`,
//! `SET <key> <value>` -> `OK`, `GET <key>` -> the value or `NIL`. The schema
//! marker `migrate` writes is the key [`SCHEMA_KEY`].

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// The key holding the schema version.
pub const SCHEMA_KEY: &str = "schema";
/// The schema version `migrate` applies and `datastorage` requires.
pub const SCHEMA_VERSION: &str = "v1";

type Data = Arc<Mutex<HashMap<String, String>>>;

/// Serves the line protocol on `listener`, one thread per connection, forever.
pub fn serve(role: &str, listener: &TcpListener) {
    let data = Data::default();
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let data = Arc::clone(&data);
                let role = role.to_owned();
                thread::spawn(move || {
                    if let Err(e) = session(stream, &data) {
                        eprintln!("{role}: connection ended: {e}");
                    }
                });
            }
            Err(e) => eprintln!("{role}: accept failed: {e}"),
        }
    }
}

fn session(stream: TcpStream, data: &Data) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    for line in BufReader::new(stream).lines() {
        writeln!(writer, "{}", answer(&line?, data))?;
    }
    Ok(())
}

/// The reply to one command line.
fn answer(line: &str, data: &Data) -> String {
    let mut data = data.lock().unwrap_or_else(PoisonError::into_inner);
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [command] if command.eq_ignore_ascii_case("PING") => "PONG".to_owned(),
        [command, key, value] if command.eq_ignore_ascii_case("SET") => {
            data.insert((*key).to_owned(), (*value).to_owned());
            "OK".to_owned()
        }
        [command, key] if command.eq_ignore_ascii_case("GET") => {
            data.get(*key).cloned().unwrap_or_else(|| "NIL".to_owned())
        }
        _ => "ERR expected PING, SET <key> <value> or GET <key>".to_owned(),
    }
}

/// Sends one command to the stand-in at `addr` (`host:port`) and returns its reply.
pub fn query(addr: &str, command: &str, timeout: Duration) -> io::Result<String> {
    let target = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("`{addr}` resolves to no address")))?;
    let stream = TcpStream::connect_timeout(&target, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    writeln!(&stream, "{command}")?;
    let mut reply = String::new();
    if BufReader::new(&stream).read_line(&mut reply)? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed without a reply"));
    }
    Ok(reply.trim_end().to_owned())
}

/// [`query`], retried until it gets a reply or `patience` runs out: the
/// service may still be starting.
pub fn query_until(addr: &str, command: &str, patience: Duration) -> io::Result<String> {
    let deadline = Instant::now() + patience;
    loop {
        match query(addr, command, Duration::from_secs(1)) {
            Ok(reply) => return Ok(reply),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A store on a loopback port, served by a background thread.
    pub(crate) fn spawn_store() -> (String, thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address").to_string();
        (addr, thread::spawn(move || serve("test", &listener)))
    }

    /// A loopback address nothing listens on.
    pub(crate) fn closed_port() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").to_string()
    }

    #[test]
    fn answers_the_line_protocol() {
        let data = Data::default();
        assert_eq!(answer("PING", &data), "PONG");
        assert_eq!(answer("ping", &data), "PONG");
        assert_eq!(answer("GET schema", &data), "NIL");
        assert_eq!(answer("SET schema v1", &data), "OK");
        assert_eq!(answer("GET schema", &data), "v1");
        assert_eq!(answer("SET schema v2", &data), "OK");
        assert_eq!(answer("get schema", &data), "v2");
        for bad in ["", "PING extra", "SET key", "GET", "DROP TABLE x"] {
            assert!(answer(bad, &data).starts_with("ERR "), "{bad:?}");
        }
    }

    #[test]
    fn serves_over_tcp() {
        let (addr, _server) = spawn_store();
        let timeout = Duration::from_secs(5);
        assert_eq!(query(&addr, "PING", timeout).expect("ping"), "PONG");
        assert_eq!(query(&addr, "SET k value", timeout).expect("set"), "OK");
        assert_eq!(query(&addr, "GET k", timeout).expect("get"), "value", "state survives connections");
    }

    #[test]
    fn query_fails_when_nothing_listens() {
        let addr = closed_port();
        assert!(query(&addr, "PING", Duration::from_secs(1)).is_err());
        assert!(query_until(&addr, "PING", Duration::from_millis(300)).is_err());
        assert!(query("no-such-host.invalid:1", "PING", Duration::from_secs(1)).is_err());
    }
}

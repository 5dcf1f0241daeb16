//! Redis as the deduplication cache: the first `SET event:<id> NX` of a
//! notification id wins, every later one is a duplicate. The few commands
//! this needs are spoken in RESP over one connection, made again when it
//! breaks.

use std::io;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// How long a notification id is remembered.
const REMEMBER_SECONDS: &str = "86400";

/// Why Redis could not answer.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("talking to Redis at {addr}")]
    Io {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("Redis at {addr} answered {command} with {answer:?}")]
    Answer { addr: String, command: &'static str, answer: String },
}

/// One answer, as far as these commands need it.
enum Reply {
    /// `+OK`, `+PONG`.
    Simple(String),
    /// `$-1`: a `SET NX` that found the key.
    Nil,
    /// Anything else, as text.
    Other(String),
}

/// Redis at `host:port`, connected on first use.
pub struct Cache {
    addr: String,
    connection: Mutex<Option<BufReader<TcpStream>>>,
}

impl Cache {
    pub fn new(addr: String) -> Self {
        Self { addr, connection: Mutex::new(None) }
    }

    /// Redis answers `PING`.
    pub async fn ping(&self) -> Result<(), CacheError> {
        match self.command("PING", &["PING"]).await? {
            Reply::Simple(pong) if pong == "PONG" => Ok(()),
            other => Err(self.unexpected("PING", other)),
        }
    }

    /// Remembers the id; `false` when it was remembered already.
    pub async fn first_sight(&self, notification_id: &str) -> Result<bool, CacheError> {
        let key = format!("event:{notification_id}");
        match self.command("SET NX", &["SET", &key, "1", "NX", "EX", REMEMBER_SECONDS]).await? {
            Reply::Simple(ok) if ok == "OK" => Ok(true),
            Reply::Nil => Ok(false),
            other => Err(self.unexpected("SET NX", other)),
        }
    }

    /// Forgets the id again (its event could not be stored).
    pub async fn forget(&self, notification_id: &str) -> Result<(), CacheError> {
        self.command("DEL", &["DEL", &format!("event:{notification_id}")]).await.map(drop)
    }

    fn unexpected(&self, command: &'static str, reply: Reply) -> CacheError {
        let answer = match reply {
            Reply::Simple(text) | Reply::Other(text) => text,
            Reply::Nil => "nil".to_owned(),
        };
        CacheError::Answer { addr: self.addr.clone(), command, answer }
    }

    async fn command(&self, name: &'static str, args: &[&str]) -> Result<Reply, CacheError> {
        let mut slot = self.connection.lock().await;
        let result = async {
            if slot.is_none() {
                *slot = Some(BufReader::new(TcpStream::connect(&self.addr).await?));
            }
            let Some(connection) = slot.as_mut() else { return Err(io::Error::other("no connection to Redis")) };
            let mut request = format!("*{}\r\n", args.len());
            for arg in args {
                request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
            }
            connection.get_mut().write_all(request.as_bytes()).await?;
            read_reply(connection).await
        }
        .await;
        if result.is_err() {
            // A broken connection is made again by the next command.
            *slot = None;
        }
        match result {
            Ok(Reply::Other(error)) if error.starts_with('-') => {
                Err(CacheError::Answer { addr: self.addr.clone(), command: name, answer: error })
            }
            Ok(reply) => Ok(reply),
            Err(source) => Err(CacheError::Io { addr: self.addr.clone(), source }),
        }
    }
}

async fn read_reply(connection: &mut BufReader<TcpStream>) -> io::Result<Reply> {
    let mut line = String::new();
    if connection.read_line(&mut line).await? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "Redis closed the connection"));
    }
    let line = line.trim_end();
    Ok(match line.split_at(line.len().min(1)) {
        ("+", text) => Reply::Simple(text.to_owned()),
        ("$", "-1") => Reply::Nil,
        ("$", length) => {
            let length: usize =
                length.parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidData, line.to_owned()))?;
            let mut body = vec![0; length + 2];
            connection.read_exact(&mut body).await?;
            body.truncate(length);
            Reply::Other(String::from_utf8_lossy(&body).into_owned())
        }
        _ => Reply::Other(line.to_owned()),
    })
}

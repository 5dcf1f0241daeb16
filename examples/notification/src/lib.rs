//! The notification service's view of DataStorage: a tiny HTTP client, as a
//! consumer's own code would have one. The end-to-end suite in `tests/`
//! stands DataStorage up with e2e-infra and calls it through this client.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: String,
}

/// Sends one HTTP/1.1 request with `Connection: close` and reads the answer.
///
/// # Errors
/// Any I/O error, or `InvalidData` for an answer that is not HTTP.
pub fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> io::Result<Answer> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let invalid = || io::Error::new(io::ErrorKind::InvalidData, format!("not an HTTP answer: {raw:?}"));
    let status = raw.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(invalid)?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).ok_or_else(invalid)?;
    Ok(Answer { status, body })
}

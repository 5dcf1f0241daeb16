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

/// Sends one HTTP/1.1 request with `Connection: close` and reads the answer,
/// as far as its `Content-Length` (to the close when it has none).
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
    // The answer ends where its Content-Length says, without waiting for
    // the server's close to come through whatever forwards the connection.
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    let invalid = |raw: &[u8]| {
        io::Error::new(io::ErrorKind::InvalidData, format!("not an HTTP answer: {:?}", String::from_utf8_lossy(raw)))
    };
    let (head_len, status, body_len) = loop {
        let read = stream.read(&mut chunk)?;
        raw.extend_from_slice(&chunk[..read]);
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]);
            let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok());
            let length = head.lines().find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok()).flatten()
            });
            break (end + 4, status, length);
        }
        if read == 0 {
            return Err(invalid(&raw));
        }
    };
    match body_len {
        Some(length) => {
            while raw.len() < head_len + length {
                let read = stream.read(&mut chunk)?;
                if read == 0 {
                    return Err(invalid(&raw));
                }
                raw.extend_from_slice(&chunk[..read]);
            }
        }
        None => {
            stream.read_to_end(&mut raw)?;
        }
    }
    let status = status.ok_or_else(|| invalid(&raw))?;
    let body = String::from_utf8_lossy(&raw[head_len..]).into_owned();
    Ok(Answer { status, body })
}

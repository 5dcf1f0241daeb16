//! Just enough HTTP/1.1 for the DataStorage stand-in: one request per
//! connection, bodies sized by `Content-Length`.

use std::fmt;
use std::io::{self, BufRead, Read, Write};

/// Longest request line or header line.
const MAX_LINE: u64 = 8 * 1024;
/// Most header lines.
const MAX_HEADERS: usize = 64;
/// Largest body.
pub const MAX_BODY: usize = 1024 * 1024;

/// A parsed request.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Why a request could not be read.
#[derive(Debug)]
pub enum RequestError {
    Io(io::Error),
    Malformed(&'static str),
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "reading the request failed: {e}"),
            Self::Malformed(why) => write!(f, "malformed request: {why}"),
        }
    }
}

impl From<io::Error> for RequestError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl Request {
    /// Reads one request.
    pub fn read(reader: &mut impl BufRead) -> Result<Self, RequestError> {
        let line = read_line(reader)?;
        let mut parts = line.split(' ');
        let (Some(method), Some(target), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(RequestError::Malformed("the request line must be `METHOD /path HTTP/1.1`"));
        };
        if !version.starts_with("HTTP/1.") || !target.starts_with('/') || method.is_empty() {
            return Err(RequestError::Malformed("the request line must be `METHOD /path HTTP/1.1`"));
        }
        let path = target.split('?').next().unwrap_or(target).to_owned();
        let mut headers = Vec::new();
        loop {
            let line = read_line(reader)?;
            if line.is_empty() {
                break;
            }
            if headers.len() == MAX_HEADERS {
                return Err(RequestError::Malformed("too many headers"));
            }
            let (name, value) = line.split_once(':').ok_or(RequestError::Malformed("a header line lacks `:`"))?;
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        let mut request = Self { method: method.to_owned(), path, headers, body: Vec::new() };
        if request.header("transfer-encoding").is_some() {
            return Err(RequestError::Malformed("chunked bodies are not supported; send Content-Length"));
        }
        let length = match request.header("content-length") {
            None => 0,
            Some(n) => n.parse::<usize>().map_err(|_| RequestError::Malformed("Content-Length is not a number"))?,
        };
        if length > MAX_BODY {
            return Err(RequestError::Malformed("the body is larger than 1 MiB"));
        }
        request.body = vec![0; length];
        reader.read_exact(&mut request.body)?;
        Ok(request)
    }

    /// A header's value; names compare case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One line without its CRLF (or bare LF), at most [`MAX_LINE`] bytes.
fn read_line(reader: &mut impl BufRead) -> Result<String, RequestError> {
    let mut line = String::new();
    let n = reader.by_ref().take(MAX_LINE).read_line(&mut line)?;
    if n == 0 {
        return Err(RequestError::Malformed("the connection closed before the request ended"));
    }
    if !line.ends_with('\n') {
        return Err(RequestError::Malformed("a line is longer than 8 KiB"));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// A response.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: String,
    pub location: Option<String>,
    pub body: Vec<u8>,
}

impl Response {
    /// A `text/plain` response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::with_type(status, "text/plain; charset=utf-8", body.into().into_bytes())
    }

    /// An `application/json` response.
    pub fn json(status: u16, body: impl Into<String>) -> Self {
        Self::with_type(status, "application/json", body.into().into_bytes())
    }

    /// A response with any content type.
    pub fn with_type(status: u16, content_type: &str, body: Vec<u8>) -> Self {
        Self { status, content_type: content_type.to_owned(), location: None, body }
    }

    /// Writes the response; the connection closes after it.
    pub fn write_to(&self, writer: &mut impl Write) -> io::Result<()> {
        write!(writer, "HTTP/1.1 {} {}\r\n", self.status, reason(self.status))?;
        write!(writer, "Content-Type: {}\r\nContent-Length: {}\r\n", self.content_type, self.body.len())?;
        if let Some(location) = &self.location {
            write!(writer, "Location: {location}\r\n")?;
        }
        writer.write_all(b"Connection: close\r\n\r\n")?;
        writer.write_all(&self.body)?;
        writer.flush()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<Request, RequestError> {
        Request::read(&mut raw.as_bytes())
    }

    fn malformed(raw: &str) -> String {
        match parse(raw) {
            Err(RequestError::Malformed(why)) => why.to_owned(),
            other => panic!("{raw:?} gave {other:?}"),
        }
    }

    #[test]
    fn reads_a_get_with_headers() {
        let request =
            parse("GET /readyz?verbose=1 HTTP/1.1\r\nHost: localhost:8080\r\nAccept: */*\r\n\r\n").expect("valid");
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/readyz");
        assert_eq!(request.header("host"), Some("localhost:8080"));
        assert_eq!(request.header("ACCEPT"), Some("*/*"));
        assert_eq!(request.header("content-length"), None);
        assert!(request.body.is_empty());
    }

    #[test]
    fn reads_a_post_body_by_content_length() {
        let raw = "POST /notifications HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"to\":\"ops\"}\nEXTRA";
        let request = parse(raw).expect("valid");
        assert_eq!(request.method, "POST");
        assert_eq!(request.body, b"{\"to\":\"ops\"}\n");
    }

    #[test]
    fn accepts_bare_line_feeds() {
        let request = parse("GET / HTTP/1.0\nHost: x\n\n").expect("valid");
        assert_eq!(request.path, "/");
        assert_eq!(request.header("host"), Some("x"));
    }

    #[test]
    fn rejects_malformed_requests() {
        assert!(malformed("").contains("closed"));
        assert!(malformed("GET /\r\n\r\n").contains("request line"));
        assert!(malformed("GET readyz HTTP/1.1\r\n\r\n").contains("request line"));
        assert!(malformed("GET / SPDY/3\r\n\r\n").contains("request line"));
        assert!(malformed("GET / HTTP/1.1\r\nHost\r\n\r\n").contains("`:`"));
        assert!(malformed("GET / HTTP/1.1\r\nHost: x\r\n").contains("closed"));
        assert!(malformed("POST / HTTP/1.1\r\nContent-Length: ten\r\n\r\n").contains("Content-Length"));
        assert!(malformed("POST / HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n").contains("1 MiB"));
        assert!(malformed("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").contains("chunked"));
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(9000));
        assert!(malformed(&long).contains("8 KiB"));
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "X: y\r\n".repeat(65));
        assert!(malformed(&many).contains("too many headers"));
    }

    #[test]
    fn truncated_body_is_an_io_error() {
        let raw = "POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort";
        assert!(matches!(parse(raw), Err(RequestError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof));
    }

    #[test]
    fn writes_a_response() {
        let mut response = Response::json(201, "{\"id\":1}");
        response.location = Some("/notifications/1".to_owned());
        let mut out = Vec::new();
        response.write_to(&mut out).expect("write");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\
             Location: /notifications/1\r\nConnection: close\r\n\r\n{\"id\":1}"
        );
        let mut out = Vec::new();
        Response::text(503, "").write_to(&mut out).expect("write");
        assert!(out.starts_with(b"HTTP/1.1 503 Service Unavailable\r\n"));
    }
}

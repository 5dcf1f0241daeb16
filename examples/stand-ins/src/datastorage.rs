//! The DataStorage stand-in: stores notifications in memory behind a small
//! HTTP API, and is ready only while postgres and redis answer.

use std::io::BufReader;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use crate::http::{Request, Response};
use crate::store;

/// How long start-up waits for postgres to answer.
const STARTUP_PATIENCE: Duration = Duration::from_secs(5);
/// How long a readiness check waits for each backend.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// Refuses to start without the schema, as the real service fails on
/// missing tables.
pub fn check_schema(postgres: &str) -> Result<(), String> {
    let command = format!("GET {}", store::SCHEMA_KEY);
    let schema = store::query_until(postgres, &command, STARTUP_PATIENCE)
        .map_err(|e| format!("datastorage: cannot reach postgres at {postgres}: {e}"))?;
    if schema != store::SCHEMA_VERSION {
        return Err(format!(
            "datastorage: the schema is missing in postgres at {postgres} (marker `{}` is `{schema}`, need `{}`); \
             run `stand-ins migrate --postgres {postgres}` first",
            store::SCHEMA_KEY,
            store::SCHEMA_VERSION
        ));
    }
    Ok(())
}

/// Serves the API on `listener`, one thread per connection, forever.
pub fn serve(listener: &TcpListener, postgres: &str, redis: &str) {
    let backends = [("postgres", postgres.to_owned()), ("redis", redis.to_owned())];
    let app = Arc::new(App::new(move || {
        backends
            .iter()
            .filter(|(_, addr)| store::query(addr, "PING", PING_TIMEOUT).map_or(true, |reply| reply != "PONG"))
            .map(|(name, _)| *name)
            .collect()
    }));
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let app = Arc::clone(&app);
                thread::spawn(move || connection(stream, &app));
            }
            Err(e) => eprintln!("datastorage: accept failed: {e}"),
        }
    }
}

fn connection<P: Fn() -> Vec<&'static str>>(stream: TcpStream, app: &App<P>) {
    let response = match stream.set_read_timeout(Some(Duration::from_secs(10))) {
        Err(e) => Response::text(400, e.to_string()),
        Ok(()) => match Request::read(&mut BufReader::new(&stream)) {
            Ok(request) => app.handle(&request),
            Err(e) => Response::text(400, e.to_string()),
        },
    };
    if let Err(e) = response.write_to(&mut &stream) {
        eprintln!("datastorage: writing a response failed: {e}");
    }
}

/// A stored notification.
struct Notification {
    content_type: String,
    body: Vec<u8>,
}

/// The routes, with the readiness check injected so they can be tested alone.
pub struct App<P> {
    /// Names the backends that do not answer.
    unreachable: P,
    notifications: Mutex<Vec<Notification>>,
}

impl<P: Fn() -> Vec<&'static str>> App<P> {
    pub fn new(unreachable: P) -> Self {
        Self { unreachable, notifications: Mutex::new(Vec::new()) }
    }

    /// Answers one request.
    ///
    /// - `GET /readyz`: 200, or 503 naming the unreachable backends
    /// - `POST /notifications`: stores the body, 201 with `{"id":N}`
    /// - `GET /notifications/<id>`: the stored body, or 404
    /// - `GET /notifications`: `{"count":N}`
    pub fn handle(&self, request: &Request) -> Response {
        let mut notifications = self.notifications.lock().unwrap_or_else(PoisonError::into_inner);
        let segments: Vec<&str> = request.path.trim_matches('/').split('/').collect();
        match (request.method.as_str(), segments.as_slice()) {
            ("GET", ["readyz"]) => {
                let down = (self.unreachable)();
                if down.is_empty() {
                    Response::text(200, "ready\n")
                } else {
                    Response::text(503, format!("unreachable: {}\n", down.join(", ")))
                }
            }
            ("POST", ["notifications"]) => {
                let content_type = request.header("content-type").unwrap_or("application/octet-stream");
                notifications.push(Notification { content_type: content_type.to_owned(), body: request.body.clone() });
                let id = notifications.len();
                let mut response = Response::json(201, format!("{{\"id\":{id}}}"));
                response.location = Some(format!("/notifications/{id}"));
                response
            }
            ("GET", ["notifications"]) => Response::json(200, format!("{{\"count\":{}}}", notifications.len())),
            ("GET", ["notifications", id]) => {
                let stored =
                    id.parse::<usize>().ok().and_then(|id| id.checked_sub(1)).and_then(|i| notifications.get(i));
                match stored {
                    Some(n) => Response::with_type(200, &n.content_type, n.body.clone()),
                    None => Response::text(404, format!("no notification `{id}`\n")),
                }
            }
            (_, ["readyz" | "notifications"] | ["notifications", _]) => {
                Response::text(405, format!("{} is not allowed on {}\n", request.method, request.path))
            }
            _ => Response::text(404, format!("no route for {}\n", request.path)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, path: &str, body: &str) -> Request {
        Request {
            method: method.to_owned(),
            path: path.to_owned(),
            headers: vec![("Content-Type".to_owned(), "application/json".to_owned())],
            body: body.as_bytes().to_vec(),
        }
    }

    fn all_up() -> App<impl Fn() -> Vec<&'static str>> {
        App::new(Vec::new)
    }

    fn text(response: &Response) -> &str {
        std::str::from_utf8(&response.body).expect("utf-8")
    }

    #[test]
    fn readyz_follows_the_backends() {
        assert_eq!(all_up().handle(&request("GET", "/readyz", "")).status, 200);
        let app = App::new(|| vec!["postgres", "redis"]);
        let response = app.handle(&request("GET", "/readyz", ""));
        assert_eq!(response.status, 503);
        assert_eq!(text(&response), "unreachable: postgres, redis\n");
    }

    #[test]
    fn stores_and_returns_notifications() {
        let app = all_up();
        let created = app.handle(&request("POST", "/notifications", "{\"to\":\"ops\"}"));
        assert_eq!(created.status, 201);
        assert_eq!(text(&created), "{\"id\":1}");
        assert_eq!(created.location.as_deref(), Some("/notifications/1"));
        let second = app.handle(&request("POST", "/notifications/", "{\"to\":\"dev\"}"));
        assert_eq!(text(&second), "{\"id\":2}");

        let fetched = app.handle(&request("GET", "/notifications/1", ""));
        assert_eq!(fetched.status, 200);
        assert_eq!(fetched.content_type, "application/json");
        assert_eq!(text(&fetched), "{\"to\":\"ops\"}");
        assert_eq!(text(&app.handle(&request("GET", "/notifications/2", ""))), "{\"to\":\"dev\"}");

        let count = app.handle(&request("GET", "/notifications", ""));
        assert_eq!((count.status, text(&count)), (200, "{\"count\":2}"));
    }

    #[test]
    fn unknown_ids_and_routes_are_not_found() {
        let app = all_up();
        app.handle(&request("POST", "/notifications", "x"));
        for path in ["/notifications/0", "/notifications/2", "/notifications/abc", "/notifications/-1"] {
            assert_eq!(app.handle(&request("GET", path, "")).status, 404, "{path}");
        }
        for path in ["/", "/healthz", "/notifications/1/extra"] {
            assert_eq!(app.handle(&request("GET", path, "")).status, 404, "{path}");
        }
    }

    #[test]
    fn wrong_methods_are_not_allowed() {
        let app = all_up();
        assert_eq!(app.handle(&request("DELETE", "/notifications/1", "")).status, 405);
        assert_eq!(app.handle(&request("POST", "/readyz", "")).status, 405);
        assert_eq!(app.handle(&request("PUT", "/notifications", "")).status, 405);
    }

    #[test]
    fn start_up_requires_the_schema() {
        let (addr, _server) = store::tests::spawn_store();
        let err = check_schema(&addr).expect_err("no schema yet");
        assert!(err.contains("the schema is missing"), "{err}");
        assert!(err.contains(&format!("stand-ins migrate --postgres {addr}")), "{err}");
        let timeout = Duration::from_secs(5);
        assert_eq!(store::query(&addr, "SET schema v1", timeout).expect("set"), "OK");
        check_schema(&addr).expect("schema present");
    }

    #[test]
    fn serves_http_over_tcp() {
        use std::io::{Read, Write};
        let (store_addr, _store) = store::tests::spawn_store();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let dead = store::tests::closed_port();
        thread::spawn(move || serve(&listener, &store_addr, &dead));
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.write_all(b"GET /readyz HTTP/1.1\r\nHost: test\r\n\r\n").expect("send");
        let mut reply = String::new();
        stream.read_to_string(&mut reply).expect("read");
        assert!(reply.starts_with("HTTP/1.1 503 "), "{reply}");
        assert!(reply.ends_with("unreachable: redis\n"), "{reply}");
    }
}

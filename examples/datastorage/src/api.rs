//! The HTTP API.
//!
//! | Request                    | Answer |
//! |----------------------------|--------|
//! | `GET /healthz`             | 200 while the process serves |
//! | `GET /readyz`              | 200 when PostgreSQL answers with the schema this build needs and Redis answers `PING`; 503 with the reason otherwise |
//! | `POST /events`             | stores `{"notification_id", "event_type"?, "payload"}`: 201 with the event, or 200 with `"duplicate": true` when the id was seen before |
//! | `GET /events/<id>`         | the event of notification `<id>`, or 404 |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::cache::Cache;
use crate::store::{NewEvent, Store};

/// The largest request body accepted.
const MAX_BODY: usize = 1 << 20;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("listening on port {port}")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("handling SIGTERM")]
    Signal(#[source] std::io::Error),
}

struct State {
    store: Store,
    cache: Cache,
}

/// Serves until the process is stopped.
pub async fn serve(port: u16, store: Store, cache: Cache) -> Result<(), ServeError> {
    let listener = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)))
        .await
        .map_err(|source| ServeError::Bind { port, source })?;
    println!("datastorage: listening on port {port}");
    let state = Arc::new(State { store, cache });
    // PID 1 in its container: without a handler, SIGTERM would be ignored.
    let mut terminate = signal(SignalKind::terminate()).map_err(ServeError::Signal)?;
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    eprintln!("datastorage: accepting a connection: {error}");
                    continue;
                }
            },
            _ = terminate.recv() => return Ok(()),
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(answer(&state, request).await) }
            });
            if let Err(error) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                eprintln!("datastorage: serving a connection: {error}");
            }
        });
    }
}

async fn answer(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    match (request.method(), path.as_str()) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, json!({ "status": "up" })),
        (&Method::GET, "/readyz") => ready(state).await,
        (&Method::POST, "/events") => store(state, request).await,
        (&Method::GET, events) if events.starts_with("/events/") => {
            let id = &events["/events/".len()..];
            match state.store.get(id).await {
                Ok(Some(event)) => reply(StatusCode::OK, json!(event)),
                Ok(None) => reply(StatusCode::NOT_FOUND, json!({ "error": format!("no event for notification {id}") })),
                Err(error) => failure(&error),
            }
        }
        _ => reply(StatusCode::NOT_FOUND, json!({ "error": format!("no route for {} {path}", request.method()) })),
    }
}

async fn ready(state: &State) -> Response<Full<Bytes>> {
    if let Err(error) = state.store.ready().await {
        return unavailable("postgres", &error);
    }
    if let Err(error) = state.cache.ping().await {
        return unavailable("redis", &error);
    }
    reply(StatusCode::OK, json!({ "status": "ready" }))
}

async fn store(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({ "error": format!("reading the body (at most {MAX_BODY} bytes): {error}") }),
            )
        }
    };
    let event: NewEvent = match serde_json::from_slice(&body) {
        Ok(event) => event,
        Err(error) => return reply(StatusCode::BAD_REQUEST, json!({ "error": format!("not an event: {error}") })),
    };
    if event.notification_id.is_empty() {
        return reply(StatusCode::BAD_REQUEST, json!({ "error": "notification_id is empty" }));
    }
    match state.cache.first_sight(&event.notification_id).await {
        Ok(true) => {}
        Ok(false) => {
            return reply(
                StatusCode::OK,
                json!({ "notification_id": event.notification_id, "duplicate": true, "deduplicated_by": "redis" }),
            )
        }
        Err(error) => return unavailable("redis", &error),
    }
    match state.store.insert(&event).await {
        Ok(Some(stored)) => reply(StatusCode::CREATED, json!(stored)),
        // Redis forgot the id (a restart) but the table has it.
        Ok(None) => reply(
            StatusCode::OK,
            json!({ "notification_id": event.notification_id, "duplicate": true, "deduplicated_by": "postgres" }),
        ),
        Err(error) => {
            // Let a retry of this event through again.
            if let Err(forget) = state.cache.forget(&event.notification_id).await {
                eprintln!("datastorage: {}", crate::report(&forget));
            }
            failure(&error)
        }
    }
}

fn unavailable(what: &str, error: &dyn std::error::Error) -> Response<Full<Bytes>> {
    reply(StatusCode::SERVICE_UNAVAILABLE, json!({ "error": format!("{what}: {}", crate::report(error)) }))
}

fn failure(error: &dyn std::error::Error) -> Response<Full<Bytes>> {
    eprintln!("datastorage: {}", crate::report(error));
    reply(StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": crate::report(error) }))
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    response
}

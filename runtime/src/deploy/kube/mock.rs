//! A mock Kubernetes API server for tests and benchmarks of the Kubernetes
//! stage: kube's client talks to a `tower-test` service pair, every request
//! is recorded, and each is answered the way an API server answers, watch
//! events included (newline-delimited JSON, sent after a scripted delay).
//!
//! Enabled by the `mock` feature; never part of a normal build.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use tower_test::mock::{Handle, SendResponse};

/// A request as the mock API server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The HTTP method.
    pub method: Method,
    /// The URI path.
    pub path: String,
    /// The URI query, `""` when none.
    pub query: String,
    /// The JSON body, `Null` when none.
    pub body: Value,
}

/// What the mock API server answers.
#[derive(Debug, Default)]
pub struct Script {
    /// Per resource (`pods`, `deployments`), the answers to successive
    /// watches: a delay, then these watch events. Later watches never answer.
    pub watches: HashMap<&'static str, VecDeque<(Duration, Vec<Value>)>>,
    /// The items of an event list.
    pub events: Vec<Value>,
    /// A pod's log.
    pub logs: String,
}

impl Script {
    /// Adds the answer to the next watch of `resource`: `events` after `delay`.
    pub fn watch(mut self, resource: &'static str, delay: Duration, events: Vec<Value>) -> Self {
        self.watches.entry(resource).or_default().push_back((delay, events));
        self
    }
}

/// What the mock API server recorded.
#[derive(Debug, Default)]
pub struct Log {
    /// Every request, in arrival order.
    pub requests: Vec<Seen>,
    /// When each scripted watch answer was sent, with its resource.
    pub watch_answers: Vec<(String, Instant)>,
}

/// A client whose requests the mock server answers from `script`, and the
/// server's log. The server runs on the current Tokio runtime.
pub fn client_and_server(script: Script) -> (Client, Arc<Mutex<Log>>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let log = Arc::new(Mutex::new(Log::default()));
    tokio::spawn(serve(handle, script, Arc::clone(&log)));
    (Client::new(service, "default"), log)
}

async fn serve(mut handle: Handle<Request<Body>, Response<Body>>, mut script: Script, log: Arc<Mutex<Log>>) {
    let mut parked: Vec<SendResponse<Response<Body>>> = Vec::new();
    while let Some((request, send)) = handle.next_request().await {
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let path = parts.uri.path().to_owned();
        let query = parts.uri.query().unwrap_or_default().to_owned();
        if let Ok(mut log) = log.lock() {
            log.requests.push(Seen {
                method: parts.method.clone(),
                path: path.clone(),
                query: query.clone(),
                body: body.clone(),
            });
        }
        let resource = path.rsplit('/').next().unwrap_or_default();
        let collection = path.split('/').nth_back(if parts.method == Method::GET { 0 } else { 1 }).unwrap_or_default();
        match parts.method {
            Method::PATCH => {
                let mut object = body;
                object["metadata"]["resourceVersion"] = json!("1");
                send.send_response(json_response(&object));
            }
            Method::DELETE => send.send_response(json_response(&json!({
                "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": resource }
            }))),
            Method::GET if resource == "log" => {
                send.send_response(Response::new(Body::from(script.logs.clone().into_bytes())))
            }
            Method::GET if query.contains("watch=true") => {
                match script.watches.get_mut(collection).and_then(VecDeque::pop_front) {
                    Some((delay, events)) => {
                        let (log, collection) = (Arc::clone(&log), collection.to_owned());
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let lines: String = events.iter().map(|e| format!("{e}\n")).collect();
                            if let Ok(mut log) = log.lock() {
                                log.watch_answers.push((collection, Instant::now()));
                            }
                            send.send_response(Response::new(Body::from(lines.into_bytes())));
                        });
                    }
                    None => parked.push(send),
                }
            }
            Method::GET => {
                let items = if collection == "events" { script.events.clone() } else { Vec::new() };
                send.send_response(json_response(&json!({ "metadata": { "resourceVersion": "1" }, "items": items })));
            }
            _ => {
                let mut refused = Response::new(Body::from(Vec::new()));
                *refused.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
                send.send_response(refused);
            }
        }
    }
}

fn json_response(value: &Value) -> Response<Body> {
    Response::new(Body::from(serde_json::to_vec(value).unwrap_or_default()))
}

/// A watch event announcing `object`.
pub fn added(object: Value) -> Value {
    json!({ "type": "ADDED", "object": object })
}

/// A watch event changing `object`.
pub fn modified(object: Value) -> Value {
    json!({ "type": "MODIFIED", "object": object })
}

fn template() -> Value {
    json!({ "metadata": {}, "spec": { "containers": [] } })
}

/// A Deployment of one replica with `available` available.
pub fn deployment(ns: &str, name: &str, available: i32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": name, "namespace": ns, "resourceVersion": "2" },
        "spec": { "replicas": 1, "selector": {}, "template": template() },
        "status": { "availableReplicas": available, "updatedReplicas": 1 }
    })
}

/// A StatefulSet of one replica with `ready` ready.
pub fn statefulset(ns: &str, name: &str, ready: i32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": { "name": name, "namespace": ns, "resourceVersion": "2" },
        "spec": { "serviceName": name, "selector": {}, "template": template() },
        "status": { "replicas": 1, "readyReplicas": ready }
    })
}

/// A Job with `succeeded` completions.
pub fn job(ns: &str, name: &str, succeeded: i32) -> Value {
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": { "name": name, "namespace": ns, "resourceVersion": "2" },
        "spec": { "template": template() },
        "status": { "succeeded": succeeded }
    })
}

/// Pod `api-7d9f-x2x` whose container `api` waits with `reason`.
pub fn waiting_pod(ns: &str, image: &str, reason: &str, message: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "api-7d9f-x2x", "namespace": ns, "resourceVersion": "3" },
        "spec": { "containers": [{ "name": "api", "image": image }] },
        "status": { "containerStatuses": [{
            "name": "api", "image": image, "imageID": "", "ready": false, "restartCount": 4,
            "state": { "waiting": { "reason": reason, "message": message } }
        }] }
    })
}

//! The notification controller: for every `NotificationRequest`
//! (`notification.e2e-infra.io/v1alpha1`) in its namespace, it checks the
//! request, records it as an audit event in DataStorage and sets the
//! request's status: `Sent` with the event's notification id, or `Failed`
//! with the reason.
//!
//! Environment: `WATCH_NAMESPACE` (the namespace to serve), `DATASTORAGE_URL`
//! (`http://host:port`). The API server is found the usual way (in-cluster
//! service account, or a kubeconfig).
//!
//! Once it has listed the requests it serves, it creates [`READY_FILE`];
//! `notification-controller ready` exits 0 when that file is there, which
//! is its pod's readiness probe: until then a request would wait for the
//! controller's first list.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde::Deserialize;
use serde_json::json;
use tokio::signal::unix::{signal, SignalKind};

/// The channels a notification can go out on.
const CHANNELS: &[&str] = &["email", "slack", "pagerduty"];
/// Created once the controller has listed its namespace's requests.
const READY_FILE: &str = "/ready";
/// How long a request waits before another try when DataStorage did not take its event.
const RETRY: Duration = Duration::from_secs(2);

/// What a `NotificationRequest` asks for.
#[derive(Debug, Deserialize)]
struct Spec {
    #[serde(default)]
    recipient: String,
    #[serde(default)]
    channel: String,
    #[serde(default)]
    message: String,
}

/// Why a request could not be handled now (it is tried again).
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("environment variable {0} is not set")]
    Missing(&'static str),
    #[error("handling SIGTERM")]
    Signal(#[source] std::io::Error),
    #[error("making a Kubernetes client")]
    Client(#[source] kube::Error),
    #[error("NotificationRequest {0} has no name or uid")]
    Unnamed(String),
    #[error("sending the audit event of {request} to DataStorage at {url}")]
    Send {
        request: String,
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("DataStorage at {url} refused the audit event of {request}: {status} {body}")]
    Refused { request: String, url: String, status: u16, body: String },
    #[error("setting the status of NotificationRequest {request}")]
    Status {
        request: String,
        #[source]
        source: kube::Error,
    },
}

struct Context {
    requests: Api<DynamicObject>,
    http: HttpClient<HttpConnector, Full<Bytes>>,
    datastorage: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    if std::env::args().nth(1).as_deref() == Some("ready") {
        return if std::path::Path::new(READY_FILE).exists() {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        };
    }
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            let mut text = error.to_string();
            let mut cause = std::error::Error::source(&error);
            while let Some(inner) = cause {
                text.push_str(&format!(": {inner}"));
                cause = inner.source();
            }
            eprintln!("notification-controller: {text}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Error> {
    let namespace = std::env::var("WATCH_NAMESPACE").map_err(|_| Error::Missing("WATCH_NAMESPACE"))?;
    let datastorage = std::env::var("DATASTORAGE_URL").map_err(|_| Error::Missing("DATASTORAGE_URL"))?;
    let client = kube::Client::try_default().await.map_err(Error::Client)?;
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("notification.e2e-infra.io", "v1alpha1", "NotificationRequest"),
        "notificationrequests",
    );
    let requests: Api<DynamicObject> = Api::namespaced_with(client, &namespace, &resource);
    let context = Arc::new(Context {
        requests: requests.clone(),
        http: HttpClient::builder(TokioExecutor::new()).build_http(),
        datastorage: datastorage.trim_end_matches('/').to_owned(),
    });
    println!("notification-controller: serving NotificationRequests in {namespace}, DataStorage at {datastorage}");
    let controller = Controller::new_with(requests, watcher::Config::default(), resource);
    // Marks the controller ready beside its run.
    let listed = controller.store();
    let ready = async move {
        let marked = match listed.wait_until_ready().await {
            Ok(()) => std::fs::write(READY_FILE, "").map_err(|e| format!("creating {READY_FILE}: {e}")),
            Err(error) => Err(error.to_string()),
        };
        match marked {
            Ok(()) => println!("notification-controller: ready, the requests of {namespace} listed"),
            Err(error) => eprintln!("notification-controller: not ready: {error}"),
        }
    };
    let controller = controller.run(reconcile, |_, error, _| retry(error), context).for_each(|result| async move {
        match result {
            Ok((request, _)) => println!("notification-controller: reconciled {}", request.name),
            Err(error) => eprintln!("notification-controller: {error}"),
        }
    });
    // PID 1 in its container: without a handler, SIGTERM would be ignored.
    let mut terminate = signal(SignalKind::terminate()).map_err(Error::Signal)?;
    tokio::select! {
        _ = futures::future::join(controller, ready) => {}
        _ = terminate.recv() => {}
    }
    Ok(())
}

fn retry(error: &Error) -> Action {
    eprintln!("notification-controller: {error}; trying again in {} s", RETRY.as_secs());
    Action::requeue(RETRY)
}

async fn reconcile(request: Arc<DynamicObject>, context: Arc<Context>) -> Result<Action, Error> {
    let name = request.metadata.name.clone().ok_or_else(|| Error::Unnamed(format!("{:?}", request.metadata)))?;
    let uid = request.metadata.uid.clone().ok_or_else(|| Error::Unnamed(name.clone()))?;
    let decided = request.data.pointer("/status/phase").and_then(|p| p.as_str()).is_some();
    if decided {
        return Ok(Action::await_change());
    }
    let spec = request.data.get("spec").cloned().map(serde_json::from_value::<Spec>);
    let status = match spec {
        None => json!({ "phase": "Failed", "reason": "the request has no spec" }),
        Some(Err(error)) => json!({ "phase": "Failed", "reason": format!("the spec is not a notification: {error}") }),
        Some(Ok(spec)) => match rejected(&spec) {
            Some(reason) => json!({ "phase": "Failed", "reason": reason }),
            None => {
                let event = json!({
                    "notification_id": uid,
                    "event_type": "notification.sent",
                    "payload": { "request": name, "recipient": spec.recipient, "channel": spec.channel, "message": spec.message },
                });
                record(&context, &name, &event).await?;
                json!({ "phase": "Sent", "notificationId": uid })
            }
        },
    };
    context
        .requests
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({ "status": status })))
        .await
        .map_err(|source| Error::Status { request: name.clone(), source })?;
    Ok(Action::await_change())
}

/// Why the controller will not send this request, if it will not.
fn rejected(spec: &Spec) -> Option<String> {
    if spec.recipient.trim().is_empty() {
        return Some("spec.recipient is empty: name who gets the notification".to_owned());
    }
    if !CHANNELS.contains(&spec.channel.as_str()) {
        return Some(format!("unsupported channel `{}`: use one of {}", spec.channel, CHANNELS.join(", ")));
    }
    None
}

/// Stores the audit event; a duplicate (a retry after a lost status update) counts as stored.
async fn record(context: &Context, name: &str, event: &serde_json::Value) -> Result<(), Error> {
    let url = format!("{}/events", context.datastorage);
    let send = |source: Box<dyn std::error::Error + Send + Sync>| Error::Send {
        request: name.to_owned(),
        url: url.clone(),
        source,
    };
    let request = hyper::Request::post(&url)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(event.to_string())))
        .map_err(|e| send(e.into()))?;
    let response = context.http.request(request).await.map_err(|e| send(e.into()))?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| send(e.into()))?.to_bytes();
    if !status.is_success() {
        return Err(Error::Refused {
            request: name.to_owned(),
            url,
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    Ok(())
}

//! The last lines of a container's log, for an error that reports it.

use std::time::Duration;

use bollard::query_parameters::LogsOptionsBuilder;
use bollard::Docker;
use futures::StreamExt;

/// How many log lines an error carries.
const LOG_TAIL: &str = "30";
/// How long fetching logs for an error message may take.
const LOGS_TIMEOUT: Duration = Duration::from_secs(5);

async fn fetch_logs(docker: &Docker, id: &str, tail: &str) -> String {
    let options = LogsOptionsBuilder::new().stdout(true).stderr(true).tail(tail).build();
    let mut text = String::new();
    let mut logs = docker.logs(id, Some(options));
    let reading = async {
        while let Some(chunk) = logs.next().await {
            match chunk {
                Ok(out) => text.push_str(&out.to_string()),
                Err(e) => {
                    text.push_str(&format!("<reading the logs failed: {e}>"));
                    break;
                }
            }
        }
    };
    if tokio::time::timeout(LOGS_TIMEOUT, reading).await.is_err() {
        text.push_str(&format!("\n{LOGS_SILENT} within {LOGS_TIMEOUT:?}>"));
    }
    text
}

/// Marks logs cut short because the engine stopped sending them.
const LOGS_SILENT: &str = "<the engine did not send the logs";

pub(super) async fn last_logs(docker: &Docker, id: &str) -> String {
    let text = fetch_logs(docker, id, LOG_TAIL).await;
    if text.trim().is_empty() {
        "<no output>".to_owned()
    } else {
        text.trim_end().to_owned()
    }
}

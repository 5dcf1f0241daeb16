//! The one async runtime of a process's background work: the port-forwards
//! of the handle, and the setup, teardown and failure reports that the
//! suite runs from synchronous test code. Made at first use, it lives as
//! long as the process, so a forward outlives the test that opened it.

use std::future::Future;
use std::sync::OnceLock;

/// Worker threads: the work is waiting on sockets, not computing.
const WORKERS: usize = 2;

/// No async runtime could be started.
#[derive(Debug, thiserror::Error)]
#[error("starting the background async runtime failed: {0}")]
pub struct RuntimeError(String);

/// The process's background runtime.
///
/// # Errors
/// [`RuntimeError`] when the runtime cannot start (no threads left, say);
/// every later call gives the same error.
pub fn runtime() -> Result<&'static tokio::runtime::Runtime, RuntimeError> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    let made = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .thread_name("e2e-infra")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    });
    made.as_ref().map_err(|message| RuntimeError(message.clone()))
}

/// Runs `work` to its end on the background runtime and returns its
/// output, from synchronous code. The caller's thread only waits, on a
/// thread of its own, so a caller that is itself inside an async runtime
/// (a `#[tokio::test]`) is not refused.
///
/// # Errors
/// [`RuntimeError`] when the runtime cannot start, or the waiting thread
/// cannot be made or panicked.
pub fn block_on<T, F, Fut>(work: F) -> Result<T, RuntimeError>
where
    T: Send,
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = T>,
{
    let runtime = runtime()?;
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("e2e-infra-wait".to_owned())
            .spawn_scoped(scope, || runtime.block_on(work()))
            .map_err(|e| RuntimeError(format!("no thread to wait on: {e}")))?
            .join()
            .map_err(|_| RuntimeError("the waiting thread panicked".to_owned()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_runs_from_plain_code_and_from_inside_another_runtime() {
        assert_eq!(block_on(|| async { 1 + 1 }).expect("ran"), 2);
        let inner = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
        let nested = inner.block_on(async { block_on(|| async { "inside" }) });
        assert_eq!(nested.expect("ran"), "inside");
    }

    #[test]
    fn spawned_work_outlives_the_call_that_spawned_it() {
        let (tx, rx) = std::sync::mpsc::channel();
        block_on(|| async move {
            runtime().expect("runtime").spawn(async move {
                tokio::task::yield_now().await;
                let _ = tx.send("still running");
            });
        })
        .expect("ran");
        assert_eq!(rx.recv().expect("the task ran"), "still running");
    }
}

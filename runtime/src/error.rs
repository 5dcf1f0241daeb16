//! How an error is told: its message, then each cause on a line of its own.
//!
//! This crate's errors say what failed and reach their cause through
//! `source()` alone; their message never quotes it. [`error_chain`] is the
//! one place that walks the chain, for the suite, the command and the
//! failure report.

/// An error and its sources, one per line. A cause whose text was already
/// said is left out: errors of other crates (the engine's client, the
/// cluster's) often quote their own cause.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str("\n  caused by: ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

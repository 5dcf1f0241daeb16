//! The progress log: one short line per stage and component on standard
//! error, for the command and, with `RUST_LOG`, for a suite.

use std::ffi::OsStr;
use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// Sends the progress log through `filter` to standard error, coloured
/// only when standard error is a terminal and `NO_COLOR` is unset or empty
/// (<https://no-color.org>): a CI log or a test runner's captured output
/// gets plain text. Does nothing when the process already has a log.
pub fn init(filter: EnvFilter) {
    let ansi = colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
    // Another subscriber already installed (by the test program) wins.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .without_time()
        .with_target(false)
        .try_init();
}

/// Whether to colour: only on a terminal, and never when `NO_COLOR` holds
/// a value.
fn colour(terminal: bool, no_color: Option<&OsStr>) -> bool {
    terminal && no_color.is_none_or(OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
        assert!(!colour(false, Some(OsStr::new("1"))));
    }
}

//! The `log` readiness probe and `fails_on`: the container's log is
//! followed from its start, once for both, and each line is read and
//! matched once, however often the probe looks. Reading the whole log
//! again at every look would cost in proportion to its length each time: a
//! container that writes a million lines before it is ready kept a core
//! busy until the deadline.

use std::time::Duration;

use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptionsBuilder;
use bollard::Docker;
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::catalog::LogPattern;

/// How long one look waits for more of the log once the engine has
/// nothing more to send at once.
const IDLE: Duration = Duration::from_millis(50);
/// How long one look reads at most before it gives the container back to
/// the wait, which looks at its state in between.
const READ_PER_LOOK: Duration = Duration::from_secs(2);

/// A container's followed log and the line each of its streams has begun.
pub(super) struct LogFollower {
    stream: BoxStream<'static, Result<LogOutput, bollard::errors::Error>>,
    /// The unfinished last line of standard output and of standard error
    /// (or of the terminal, for a container with one).
    partial: [Vec<u8>; 2],
    /// The engine ended the log (the container stopped) or failed it.
    ended: bool,
}

impl LogFollower {
    /// Starts following the log of container `id`, from its first line.
    pub(super) fn new(docker: &Docker, id: &str) -> Self {
        let options = LogsOptionsBuilder::new().stdout(true).stderr(true).follow(true).tail("all").build();
        Self { stream: docker.logs(id, Some(options)).boxed(), partial: [Vec::new(), Vec::new()], ended: false }
    }

    /// The first line read since the last call, the one being written
    /// included, that matches one of `patterns`, with the index of the
    /// first pattern it matches. Reads what the engine has sent since the
    /// last call, until it pauses for [`IDLE`], for [`READ_PER_LOOK`] at
    /// most.
    pub(super) async fn saw(&mut self, patterns: &[&LogPattern]) -> Option<(usize, String)> {
        let started = tokio::time::Instant::now();
        while !self.ended && started.elapsed() < READ_PER_LOOK {
            match tokio::time::timeout(IDLE, self.stream.next()).await {
                // Nothing new for a moment: the rest comes at a later look.
                Err(_) => break,
                Ok(Some(Ok(output))) => {
                    if let Some(seen) = self.take(&output, patterns) {
                        return Some(seen);
                    }
                }
                Ok(Some(Err(error))) => {
                    tracing::debug!(%error, "following the container's log failed; the wait goes on without it");
                    self.ended = true;
                }
                Ok(None) => self.ended = true,
            }
        }
        self.partial.iter().find_map(|line| matching(&String::from_utf8_lossy(line), patterns))
    }

    /// Adds one chunk of output; the first line it finished that matches.
    fn take(&mut self, output: &LogOutput, patterns: &[&LogPattern]) -> Option<(usize, String)> {
        let (index, bytes) = match output {
            LogOutput::StdErr { message } => (1, message),
            LogOutput::StdOut { message } | LogOutput::Console { message } => (0, message),
            LogOutput::StdIn { .. } => return None,
        };
        let partial = &mut self.partial[index];
        let mut matched = None;
        for piece in bytes.split_inclusive(|b| *b == b'\n') {
            partial.extend_from_slice(piece);
            if partial.ends_with(b"\n") {
                let line = String::from_utf8_lossy(&partial[..partial.len() - 1]);
                let line = line.trim_end_matches('\r');
                if matched.is_none() {
                    matched = matching(line, patterns);
                }
                partial.clear();
            }
        }
        matched
    }
}

/// `line` with the index of the first of `patterns` it matches.
fn matching(line: &str, patterns: &[&LogPattern]) -> Option<(usize, String)> {
    patterns.iter().position(|pattern| pattern.is_match(line)).map(|index| (index, line.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follower() -> LogFollower {
        LogFollower { stream: futures::stream::empty().boxed(), partial: [Vec::new(), Vec::new()], ended: true }
    }

    #[test]
    fn lines_are_matched_once_whole_across_chunks_and_apart_per_stream() {
        let fatal = LogPattern::new("^FATAL: ").unwrap();
        let ready = LogPattern::new("^ready on port \\d+$").unwrap();
        let patterns = [&fatal, &ready];
        let mut log = follower();
        let out = |text: &str| LogOutput::StdOut { message: text.as_bytes().to_vec().into() };
        let err = |text: &str| LogOutput::StdErr { message: text.as_bytes().to_vec().into() };
        assert_eq!(log.take(&out("starting\nready on "), &patterns), None);
        // A line of standard error in between does not join the other's.
        assert_eq!(log.take(&err("warning: slow disk\n"), &patterns), None);
        let seen = log.take(&out("port 8080\nserving\n"), &patterns);
        assert_eq!(seen, Some((1, "ready on port 8080".to_owned())));
        assert_eq!(log.take(&out("serving\n"), &patterns), None);
        // The first line that matches decides, whichever pattern it matches.
        let seen = log.take(&err("FATAL: no disk\nready on port 8080\n"), &patterns);
        assert_eq!(seen, Some((0, "FATAL: no disk".to_owned())));
    }
}

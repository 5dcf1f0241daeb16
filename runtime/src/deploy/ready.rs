//! Readiness, for both backends: something started is looked at until it is
//! ready, has failed, or its deadline has passed. A backend says how to look
//! ([`Watch`]): Docker inspects the container and runs its probe, Kubernetes
//! takes the next watch event of the namespace. This module owns the
//! deadline and the decision, so both backends stop at the same moment for
//! the same reasons, and each turns the outcome into its own error.

use std::time::Duration;

use tokio::time::Instant;

/// The end of a wait: one timeout from one start.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    started: Instant,
    timeout: Duration,
}

impl Deadline {
    /// `timeout` from now.
    pub fn after(timeout: Duration) -> Self {
        Self { started: Instant::now(), timeout }
    }

    /// The moment it passes.
    pub fn at(&self) -> Instant {
        self.started + self.timeout
    }

    /// The whole timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The time since the start.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The time left, zero once passed.
    pub fn left(&self) -> Duration {
        self.timeout.saturating_sub(self.elapsed())
    }

    /// Whether it has passed.
    pub fn passed(&self) -> bool {
        self.elapsed() >= self.timeout
    }
}

/// What one look found.
#[derive(Debug)]
pub enum Look<T, E> {
    /// Ready, with what the backend learned (published ports, say).
    Ready(T),
    /// Not yet.
    Waiting,
    /// It cannot become ready: a container exited, an image cannot be
    /// pulled, a Job failed. Reported at once, not at the deadline.
    Failed(E),
}

/// How a wait ended.
#[derive(Debug)]
pub enum Outcome<T, E> {
    /// A look found it ready.
    Ready(T),
    /// A look found it failed.
    Failed(E),
    /// The deadline passed first.
    TimedOut,
}

/// One thing being waited for, as a backend looks at it.
pub trait Watch {
    /// What a ready look gives.
    type Ready;
    /// What a failed look gives.
    type Error;

    /// Looks once. A look bounds its own wait: it returns
    /// [`Look::Waiting`] by the deadline at the latest (a watch waiting for
    /// an event), or, for a call it cannot cut short without losing what
    /// went wrong (an engine that stopped answering), fails with that.
    async fn look(&mut self, deadline: &Deadline) -> Look<Self::Ready, Self::Error>;
}

/// Looks at `watch` until it is ready or failed, or the deadline passes.
pub async fn until_ready<W: Watch>(watch: &mut W, deadline: &Deadline) -> Outcome<W::Ready, W::Error> {
    loop {
        match watch.look(deadline).await {
            Look::Ready(ready) => return Outcome::Ready(ready),
            Look::Failed(error) => return Outcome::Failed(error),
            Look::Waiting if deadline.passed() => return Outcome::TimedOut,
            Look::Waiting => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gives the looks it was made with, then waits for the deadline.
    struct Scripted(Vec<Look<u8, &'static str>>);

    impl Watch for Scripted {
        type Ready = u8;
        type Error = &'static str;

        async fn look(&mut self, deadline: &Deadline) -> Look<u8, &'static str> {
            if self.0.is_empty() {
                tokio::time::sleep_until(deadline.at()).await;
                return Look::Waiting;
            }
            self.0.remove(0)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_ready_or_failed_look_ends_the_wait() {
        let deadline = Deadline::after(Duration::from_secs(60));
        let mut ready = Scripted(vec![Look::Waiting, Look::Waiting, Look::Ready(7)]);
        assert!(matches!(until_ready(&mut ready, &deadline).await, Outcome::Ready(7)));
        let mut failed = Scripted(vec![Look::Waiting, Look::Failed("exited 1"), Look::Ready(7)]);
        assert!(matches!(until_ready(&mut failed, &deadline).await, Outcome::Failed("exited 1")));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_past_the_deadline_times_out_at_the_deadline() {
        let deadline = Deadline::after(Duration::from_secs(30));
        let mut never = Scripted(vec![Look::Waiting]);
        assert!(matches!(until_ready(&mut never, &deadline).await, Outcome::TimedOut));
        assert_eq!(deadline.elapsed(), Duration::from_secs(30));
        assert_eq!(deadline.left(), Duration::ZERO);
    }
}

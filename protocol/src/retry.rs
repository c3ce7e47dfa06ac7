//! The one way taskwire tries a call again after an error that may pass (an election, a
//! reconnect, a bucket still being created): waits that double from a first delay up to a
//! longest one, for as long as the caller's patience lasts.

use std::time::Duration;

use tokio::time::Instant;

/// The waits between tries of one call.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    longest: Duration,
    /// No try starts after this.
    until: Option<Instant>,
}

impl Backoff {
    /// Waits of `first`, twice that, ... up to `longest` each, without end.
    pub fn new(first: Duration, longest: Duration) -> Self {
        Self {
            next: first,
            longest,
            until: None,
        }
    }

    /// No more tries once `patience` has passed from now.
    pub fn for_at_most(mut self, patience: Duration) -> Self {
        self.until = Some(Instant::now() + patience);
        self
    }

    /// The wait before the next try, or `None` when the patience would run out before it.
    pub fn next_wait(&mut self) -> Option<Duration> {
        let wait = self.next;
        if self
            .until
            .is_some_and(|until| Instant::now() + wait > until)
        {
            return None;
        }
        self.next = (self.next * 2).min(self.longest);
        Some(wait)
    }

    /// Sleeps before the next try; false at once when the patience would run out first.
    pub async fn wait(&mut self) -> bool {
        match self.next_wait() {
            Some(wait) => {
                tokio::time::sleep(wait).await;
                true
            }
            None => false,
        }
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self, first: Duration) {
        self.next = first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_longest() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let waits: Vec<_> = (0..4).filter_map(|_| backoff.next_wait()).collect();
        assert_eq!(
            waits,
            [100, 200, 350, 350].map(Duration::from_millis).to_vec()
        );
    }

    #[test]
    fn patience_ends_the_tries() {
        let mut patient = Backoff::new(Duration::from_secs(1), Duration::from_secs(1))
            .for_at_most(Duration::from_millis(1500));
        assert_eq!(patient.next_wait(), Some(Duration::from_secs(1)));
        let mut short = Backoff::new(Duration::from_secs(2), Duration::from_secs(2))
            .for_at_most(Duration::from_secs(1));
        assert_eq!(short.next_wait(), None);
    }
}

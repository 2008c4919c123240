//! How many calls go to one cloud at once: sized by the cloud's own answers.
//!
//! Per cloud identity (Keystone URL and project, the unit clouds rate-limit
//! by) the operator keeps a limit of calls in flight, between 1 and
//! `--concurrency`. It starts at the top. When the cloud pushes back (429,
//! IMS `APIG.0308`, a 5xx, a timeout, a refused connection) the limit is
//! halved, once per round: push-backs to calls sent before the last cut
//! say nothing new and are not counted again. Every answer that is not a
//! push-back grows it by `1/limit`, i.e. by one per round of calls
//! (additive increase, multiplicative decrease, as TCP does). A call that finds the limit taken
//! waits for a call of the same identity to finish; other clouds are not
//! held up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What an answer says about the cloud's capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// An answer (any, including an error the cloud gave on purpose).
    Fine,
    /// Throttled, unavailable, timed out: fewer at once.
    PushBack,
}

/// The arithmetic, apart from the waiting.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    pub limit: usize,
    growth: f64,
    /// How many cuts so far: a call remembers the count it was sent under.
    pub cuts: u64,
}

impl Window {
    pub fn new(limit: usize) -> Window {
        Window {
            limit: limit.max(1),
            growth: 0.0,
            cuts: 0,
        }
    }

    /// The new limit after the answer to a call sent after `sent_after`
    /// cuts (`ceiling` is `--concurrency`).
    pub fn answer(&mut self, signal: Signal, sent_after: u64, ceiling: usize) -> usize {
        match signal {
            Signal::Fine => {
                self.growth += 1.0 / self.limit as f64;
                if self.growth >= 1.0 {
                    self.growth = 0.0;
                    self.limit = (self.limit + 1).min(ceiling.max(1));
                }
            }
            // Sent before the last cut: the cut already answered it.
            Signal::PushBack if sent_after < self.cuts => {}
            Signal::PushBack => {
                self.limit = (self.limit / 2).max(1);
                self.growth = 0.0;
                self.cuts += 1;
            }
        }
        self.limit
    }
}

struct Entry {
    window: Window,
    semaphore: Arc<Semaphore>,
    /// Permits to drop instead of returning, after a cut that found them in use.
    owed: usize,
}

/// The limits of all cloud identities.
pub struct Limits {
    ceiling: usize,
    entries: Mutex<HashMap<String, Entry>>,
}

/// One call's place; give it back with [`Permit::done`].
pub struct Permit {
    limits: Arc<Limits>,
    key: String,
    permit: Option<OwnedSemaphorePermit>,
    sent_after: u64,
}

impl Limits {
    pub fn new(ceiling: usize) -> Arc<Limits> {
        Arc::new(Limits {
            ceiling: ceiling.max(1),
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// Waits for a place for a call to the cloud identity `key`.
    pub async fn acquire(self: &Arc<Self>, key: &str) -> Permit {
        let semaphore = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            entries
                .entry(key.to_owned())
                .or_insert_with(|| Entry {
                    window: Window::new(self.ceiling),
                    semaphore: Arc::new(Semaphore::new(self.ceiling)),
                    owed: 0,
                })
                .semaphore
                .clone()
        };
        // The semaphore is never closed.
        let permit = semaphore.acquire_owned().await.ok();
        let sent_after = self
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .map_or(0, |e| e.window.cuts);
        Permit {
            limits: self.clone(),
            key: key.to_owned(),
            permit,
            sent_after,
        }
    }

    /// The current limit for `key` (for metrics and tests).
    pub fn limit(&self, key: &str) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .map_or(self.ceiling, |e| e.window.limit)
    }
}

impl Permit {
    /// The call is over; `signal` is what its answer said.
    pub fn done(mut self, signal: Signal) {
        let mut entries = self
            .limits
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Some(e) = entries.get_mut(&self.key) else {
            return;
        };
        let before = e.window.limit;
        let after = e
            .window
            .answer(signal, self.sent_after, self.limits.ceiling);
        if after > before {
            let more = after - before;
            let repaid = more.min(e.owed);
            e.owed -= repaid;
            e.semaphore.add_permits(more - repaid);
        } else if after < before {
            tracing::warn!(
                calls_at_once = after,
                "the cloud pushed back (throttled or unavailable): fewer calls to it at once"
            );
            let fewer = before - after;
            let forgotten = e.semaphore.forget_permits(fewer);
            e.owed += fewer - forgotten;
        }
        if e.owed > 0
            && let Some(p) = self.permit.take()
        {
            p.forget();
            e.owed -= 1;
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // Dropped without `done` (a cancelled reconcile): returned as is,
        // unless a cut is still owed.
        if let Some(p) = self.permit.take() {
            let mut entries = self
                .limits
                .entries
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(e) = entries.get_mut(&self.key)
                && e.owed > 0
            {
                p.forget();
                e.owed -= 1;
            }
        }
    }
}

/// What a call's result says about capacity.
pub fn signal_of<T>(result: &Result<T, crate::cloud::error::CloudError>) -> Signal {
    use crate::cloud::error::ErrorKind;
    match result {
        Err(e) if matches!(e.kind, ErrorKind::Throttled | ErrorKind::Unavailable) => {
            Signal::PushBack
        }
        _ => Signal::Fine,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> std::time::Duration {
        std::time::Duration::from_millis(n)
    }

    #[test]
    fn halves_once_per_round_of_push_backs_and_grows_by_one_a_round() {
        let mut w = Window::new(16);
        assert_eq!(w.answer(Signal::PushBack, 0, 16), 8);
        // The same push-back seen by the other calls sent before the cut: one cut.
        assert_eq!(w.answer(Signal::PushBack, 0, 16), 8);
        // A call sent after the cut is pushed back too: another cut.
        assert_eq!(w.answer(Signal::PushBack, 1, 16), 4);
        // One round of 4 answers: 5.
        for _ in 0..3 {
            assert_eq!(w.answer(Signal::Fine, 2, 16), 4);
        }
        assert_eq!(w.answer(Signal::Fine, 2, 16), 5);
        // Never above the ceiling, never below 1.
        for _ in 0..1000 {
            w.answer(Signal::Fine, 2, 16);
        }
        assert_eq!(w.limit, 16);
        for _ in 0..10 {
            let now = w.cuts;
            w.answer(Signal::PushBack, now, 16);
        }
        assert_eq!(w.limit, 1);
    }

    #[tokio::test]
    async fn a_cut_takes_effect_even_with_every_place_in_use() {
        let limits = Limits::new(4);
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(limits.acquire("a").await);
        }
        // All four in flight; the first answer is a push-back: 2 places from now on.
        held.remove(0).done(Signal::PushBack);
        assert_eq!(limits.limit("a"), 2);
        held.remove(0).done(Signal::Fine);
        // Two calls still in flight = the new limit: a fifth waits.
        let waiting = tokio::time::timeout(ms(50), limits.acquire("a")).await;
        assert!(waiting.is_err(), "over the limit");
        // Another identity is not held up.
        let other = tokio::time::timeout(ms(50), limits.acquire("b")).await;
        assert!(other.is_ok());
        // One finishes: a place frees.
        held.remove(0).done(Signal::Fine);
        let next = tokio::time::timeout(ms(50), limits.acquire("a")).await;
        assert!(next.is_ok());
    }
}

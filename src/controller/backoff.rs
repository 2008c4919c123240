//! Per-object retry pacing: exponential backoff with jitter, fast for
//! transient failures, slow for ones a person has to fix, and never sooner
//! than the cloud's `Retry-After`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// How quickly a failure is worth retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// The cloud was unreachable, busy or throttling: waiting briefly helps.
    Fast,
    /// Protected, forbidden, bad credentials...: a person has to act first.
    Slow,
}

/// The settings of the retry pacing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    pub fast_base: Duration,
    pub slow_base: Duration,
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            fast_base: Duration::from_secs(2),
            slow_base: Duration::from_secs(30),
            max: Duration::from_secs(300),
        }
    }
}

/// The delay before retry number `failures` (1 for the first failure).
/// `jitter` in [0, 1) picks a point in the upper half of the window
/// ("equal jitter"), so retries of many objects spread out but none comes
/// back immediately.
pub fn delay(
    cfg: &BackoffConfig,
    pace: Pace,
    failures: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    let base = match pace {
        Pace::Fast => cfg.fast_base,
        Pace::Slow => cfg.slow_base,
    };
    let exp = failures.saturating_sub(1).min(30);
    let window = base.saturating_mul(1u32 << exp.min(20)).min(cfg.max);
    let jitter = jitter.clamp(0.0, 1.0);
    let jittered = window / 2 + window.mul_f64(jitter / 2.0);
    match retry_after {
        Some(ra) => jittered.max(ra.min(cfg.max)),
        None => jittered,
    }
}

/// [`delay`] with a freshly drawn jitter.
pub fn jittered(
    cfg: &BackoffConfig,
    pace: Pace,
    failures: u32,
    retry_after: Option<Duration>,
) -> Duration {
    delay(
        cfg,
        pace,
        failures,
        retry_after,
        rand::Rng::random(&mut rand::rng()),
    )
}

/// A count per object: consecutive failures (reset by a success), or checks
/// of an accepted deletion.
#[derive(Default)]
pub struct Counts {
    counts: Mutex<HashMap<String, u32>>,
}

impl Counts {
    /// Counts one more for `key` and returns the new count.
    pub fn record(&self, key: &str) -> u32 {
        let mut m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    /// How many in a row so far (0 when none).
    pub fn count(&self, key: &str) -> u32 {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    pub fn reset(&self, key: &str) {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: BackoffConfig = BackoffConfig {
        fast_base: Duration::from_secs(2),
        slow_base: Duration::from_secs(30),
        max: Duration::from_secs(300),
    };

    #[test]
    fn grows_exponentially_up_to_the_cap() {
        let d = |n| delay(&CFG, Pace::Fast, n, None, 1.0);
        assert_eq!(d(1), Duration::from_secs(2));
        assert_eq!(d(2), Duration::from_secs(4));
        assert_eq!(d(3), Duration::from_secs(8));
        assert_eq!(d(20), Duration::from_secs(300));
        assert_eq!(d(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn slow_failures_start_slower() {
        assert_eq!(
            delay(&CFG, Pace::Slow, 1, None, 1.0),
            Duration::from_secs(30)
        );
        assert_eq!(
            delay(&CFG, Pace::Slow, 2, None, 1.0),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn jitter_stays_in_the_upper_half_of_the_window() {
        assert_eq!(
            delay(&CFG, Pace::Fast, 3, None, 0.0),
            Duration::from_secs(4)
        );
        let mid = delay(&CFG, Pace::Fast, 3, None, 0.5);
        assert!(
            mid > Duration::from_secs(4) && mid < Duration::from_secs(8),
            "{mid:?}"
        );
    }

    #[test]
    fn retry_after_is_a_floor_bounded_by_the_cap() {
        assert_eq!(
            delay(&CFG, Pace::Fast, 1, Some(Duration::from_secs(20)), 0.0),
            Duration::from_secs(20)
        );
        assert_eq!(
            delay(&CFG, Pace::Fast, 1, Some(Duration::from_secs(9999)), 0.0),
            Duration::from_secs(300)
        );
        assert_eq!(
            delay(&CFG, Pace::Fast, 5, Some(Duration::from_secs(1)), 1.0),
            Duration::from_secs(32)
        );
    }

    #[test]
    fn failures_count_per_object_and_reset() {
        let f = Counts::default();
        assert_eq!(f.record("a"), 1);
        assert_eq!(f.record("a"), 2);
        assert_eq!(f.record("b"), 1);
        f.reset("a");
        assert_eq!(f.record("a"), 1);
    }
}

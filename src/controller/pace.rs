//! How image lookups are spread over time, so that thousands of objects
//! never turn into a burst of GETs that trips a cloud's rate limit.
//!
//! - **Periodic checks are spread by construction.** Each object has a
//!   phase in the resync period, derived from its uid ([`phase`]); a sweeper
//!   wakes once a second and requeues the objects whose phase has come
//!   ([`due`]). Every object is looked up once per period, the objects of
//!   a period evenly over it, and no timer is kept per object.
//! - **A restart (or a new leader) does not look everything up again.** An
//!   object whose status is the cloud's answer for its generation ([`settled`]) is not
//!   looked up by its first reconcile in this process: its phase comes
//!   within one period. New or changed objects, and objects with a problem,
//!   are looked up at once.
//! - **Lookups are rate-limited per cloud identity** ([`Buckets`], a token
//!   bucket: `--check-rate` per second, as many at once): what a sweep, a
//!   restart after a spec change or a GitOps sync of thousands of new
//!   objects asks for comes at that rate at most. A lookup that finds no
//!   token reserves the next free one and is requeued for that moment; it
//!   holds no reconcile slot while it waits, and waiters do not poll.
//!   Deletions are never rate-limited here.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::crd::CloudImageStatus;

use super::conditions::READY;
use super::reason::Reason;

/// The second of the period (`0..period_secs`) in which the object with
/// `uid` is looked up.
pub fn phase(uid: &str, period_secs: u64) -> u64 {
    let mut h = DefaultHasher::new();
    uid.hash(&mut h);
    h.finish() % period_secs.max(1)
}

/// Whether an object of phase `phase` is due in one of the seconds
/// `(from, to]` (seconds since the epoch, or any steady count).
pub fn due(phase: u64, period_secs: u64, from: u64, to: u64) -> bool {
    let period = period_secs.max(1);
    if to <= from {
        return false;
    }
    if to - from >= period {
        return true;
    }
    let (a, b) = (from % period, to % period);
    if a < b {
        phase > a && phase <= b
    } else {
        phase > a || phase <= b
    }
}

/// Whether `status` is a settled answer for `generation`: `Ready` says what
/// the cloud answered to the last lookup for this generation (the image is
/// there, is not active, or is not found), not that the lookup failed (a
/// failure is retried on its own schedule).
pub fn settled(status: Option<&CloudImageStatus>, generation: Option<i64>) -> bool {
    let Some(s) = status else { return false };
    if s.observed_generation != generation || s.deletion.is_some() {
        return false;
    }
    s.conditions.iter().any(|c| {
        c.type_ == READY
            && c.observed_generation == generation
            && ANSWERS.contains(&c.reason.as_str())
    })
}

/// The `Ready` reasons that are the cloud's answer to a lookup.
const ANSWERS: [&str; 3] = [
    Reason::ImageAvailable.as_str(),
    Reason::ImageNotActive.as_str(),
    Reason::ImageNotFound.as_str(),
];

/// What this process knows of an object's lookups (by hashed uid): nothing
/// (never reconciled), seen (reconciled, no answer yet), or when the cloud
/// last answered a lookup, and for which generation.
#[derive(Default)]
pub struct Seen(Mutex<HashMap<u64, Option<Answered>>>);

/// When the cloud last answered a lookup, and for which generation.
type Answered = (Instant, Option<i64>);

/// Whether an object is looked up now.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Yes: the sweeper's turn, a new generation, or no answer yet.
    Now,
    /// No: its status holds the answer, and this is its first reconcile in
    /// this process (a restart, a new leader).
    FirstSeen,
    /// No: the cloud answered a lookup for this generation less than half a
    /// resync period ago (a second trigger for the same object: a slot
    /// freeing, a token becoming free, before the cache has the new status).
    Recent,
}

impl Seen {
    /// Whether to look `uid` up now; remembers that it was seen.
    pub fn decide(
        &self,
        uid: &str,
        generation: Option<i64>,
        settled: bool,
        now: Instant,
        fresh_for: Duration,
    ) -> Lookup {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let entry = seen.entry(hash(uid));
        let first = matches!(entry, std::collections::hash_map::Entry::Vacant(_));
        match *entry.or_insert(None) {
            Some((at, g)) if g == generation && now.saturating_duration_since(at) < fresh_for => {
                Lookup::Recent
            }
            _ if first && settled => Lookup::FirstSeen,
            _ => Lookup::Now,
        }
    }

    /// The cloud answered a lookup of `uid` (found or not) at `now`.
    pub fn answered(&self, uid: &str, generation: Option<i64>, now: Instant) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash(uid), Some((now, generation)));
    }

    /// The sweeper sends `uid` for its periodic lookup: not a first sight.
    pub fn due(&self, uid: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(hash(uid))
            .or_insert(None);
    }

    /// A lookup of `uid` failed: the next one is not held back.
    pub fn failed(&self, uid: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash(uid), None);
    }

    pub fn forget(&self, uid: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&hash(uid));
    }
}

fn hash(s: &str) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// How late a lookup may come for its reserved turn and still use it.
const LATE: Duration = Duration::from_millis(250);

/// A token bucket: `rate` tokens a second, at most `rate` saved up.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One token bucket per key (a cloud identity). A lookup that finds no
/// token reserves the next free one and is told when it comes, so that
/// waiting lookups take turns instead of polling.
pub struct Buckets {
    rate: f64,
    state: Mutex<BucketState>,
}

#[derive(Default)]
struct BucketState {
    buckets: HashMap<String, Bucket>,
    /// Reserved tokens, by object (hashed uid): when each may go.
    reserved: HashMap<u64, Instant>,
}

impl Buckets {
    pub fn new(per_second: u32) -> Buckets {
        Buckets {
            rate: f64::from(per_second.max(1)),
            state: Mutex::default(),
        }
    }

    /// Takes a token for the lookup of object `uid` against `key`, or
    /// reserves the next one and says how long until it is there (asking
    /// again then takes it).
    pub fn take(&self, key: &str, uid: &str, now: Instant) -> Result<(), Duration> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let who = hash(uid);
        if let Some(&at) = st.reserved.get(&who) {
            if now + Duration::from_millis(20) < at {
                return Err(at - now);
            }
            st.reserved.remove(&who);
            // On time (timers may fire a little early, or a little late):
            // its turn. Later than that, its turn has passed: going now
            // would add to the turns of others, so it takes a new one.
            if now <= at + LATE {
                return Ok(());
            }
        }
        let rate = self.rate;
        if st.buckets.len() > 4096 && !st.buckets.contains_key(key) {
            // Full buckets are no different from new ones.
            st.buckets
                .retain(|_, b| refill(*b, rate, now).tokens < rate);
        }
        let b = st.buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: rate,
            at: now,
        });
        *b = refill(*b, rate, now);
        b.tokens -= 1.0;
        if b.tokens >= 0.0 {
            return Ok(());
        }
        let wait = Duration::from_secs_f64(-b.tokens / rate);
        st.reserved.insert(who, now + wait);
        Err(wait)
    }

    /// `uid` is gone: its reservation goes too.
    pub fn forget(&self, uid: &str) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reserved
            .remove(&hash(uid));
    }
}

fn refill(b: Bucket, rate: f64, now: Instant) -> Bucket {
    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
    Bucket {
        tokens: (b.tokens + elapsed * rate).min(rate),
        at: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    #[test]
    fn phases_spread_evenly_over_the_period() {
        let period = 300;
        let mut per_second = vec![0u32; period as usize];
        for i in 0..30_000 {
            per_second[phase(&format!("uid-{i}"), period) as usize] += 1;
        }
        // 100 a second on average; no second gets a burst.
        assert!(
            per_second.iter().all(|&n| (50..=160).contains(&n)),
            "{per_second:?}"
        );
    }

    #[test]
    fn every_phase_is_due_once_per_period() {
        let period = 7;
        for p in 0..period {
            let hits = (0..70).filter(|t| due(p, period, *t, t + 1)).count();
            assert_eq!(hits, 10, "phase {p}");
        }
        // A late sweep catches up on what it missed; a whole period late, everything.
        assert!(due(3, period, 1, 5));
        assert!(!due(6, period, 1, 5));
        assert!(due(6, period, 5, 8)); // wraps: 6, 0, 1
        assert!(due(1, period, 5, 8));
        assert!(due(4, period, 0, 100));
        assert!(!due(4, period, 10, 10));
    }

    fn condition(type_: &str, reason: &str, generation: i64) -> Condition {
        Condition {
            type_: type_.into(),
            status: "False".into(),
            reason: reason.into(),
            message: String::new(),
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            observed_generation: Some(generation),
        }
    }

    #[test]
    fn only_the_clouds_answer_for_this_generation_is_settled() {
        let status = |conds: Vec<Condition>| CloudImageStatus {
            observed_generation: Some(2),
            conditions: conds,
            ..Default::default()
        };
        for answer in ["ImageAvailable", "ImageNotActive", "ImageNotFound"] {
            let st = status(vec![
                condition(READY, answer, 2),
                condition("Stalled", answer, 2),
            ]);
            assert!(settled(Some(&st), Some(2)), "{answer}");
            assert!(!settled(Some(&st), Some(3)), "{answer}: spec changed since");
        }
        for failure in [
            "AuthFailed",
            "CloudUnavailable",
            "CredentialsMissing",
            "InvalidSpec",
        ] {
            let st = status(vec![condition(READY, failure, 2)]);
            assert!(
                !settled(Some(&st), Some(2)),
                "{failure} is retried on its own schedule"
            );
        }
        assert!(!settled(None, Some(1)), "never looked at");
        assert!(!settled(Some(&status(vec![])), Some(2)));
        let old = status(vec![condition(READY, "ImageAvailable", 1)]);
        assert!(!settled(Some(&old), Some(2)));
    }

    #[test]
    fn a_bucket_lets_through_its_rate_and_gives_waiters_turns() {
        let b = Buckets::new(5);
        let t0 = Instant::now();
        for i in 0..5 {
            assert_eq!(b.take("a", &format!("o{i}"), t0), Ok(()));
        }
        // The next ones reserve a turn each, 200 ms apart.
        let w5 = b.take("a", "o5", t0).expect_err("reserved");
        let w6 = b.take("a", "o6", t0).expect_err("reserved");
        assert!(
            w5 > Duration::from_millis(150) && w5 <= Duration::from_millis(200),
            "{w5:?}"
        );
        assert!(
            w6 > Duration::from_millis(350) && w6 <= Duration::from_millis(400),
            "{w6:?}"
        );
        // Asking again early: the same turn, no new reservation.
        assert_eq!(
            b.take("a", "o6", t0 + Duration::from_millis(100)),
            Err(w6 - Duration::from_millis(100))
        );
        // At its turn it goes.
        assert_eq!(b.take("a", "o5", t0 + w5), Ok(()));
        assert_eq!(b.take("a", "o6", t0 + w6), Ok(()));
        // Ten reserve turns (2 s of them); all come back late at once:
        // only what the bucket holds goes, the others take new turns.
        let t1 = t0 + Duration::from_secs(100);
        for i in 0..5 {
            assert_eq!(b.take("c", &format!("r{i}"), t1), Ok(()));
        }
        for i in 0..10 {
            assert!(b.take("c", &format!("l{i}"), t1).is_err());
        }
        let back = t1 + Duration::from_millis(2500);
        let went = (0..10)
            .filter(|i| b.take("c", &format!("l{i}"), back).is_ok())
            .count();
        assert!(went <= 3, "{went} of 10 late turns went at once");
        // Another identity has its own bucket.
        assert_eq!(b.take("b", "x", t0), Ok(()));
        // Saved up to the rate, never more.
        let later = t0 + Duration::from_secs(60);
        let through = (0..20)
            .filter(|i| b.take("a", &format!("p{i}"), later).is_ok())
            .count();
        assert_eq!(through, 5);
        // A forgotten object's reservation goes.
        b.forget("p19");
        assert!(
            !b.state
                .lock()
                .expect("lock")
                .reserved
                .contains_key(&hash("p19"))
        );
    }

    #[test]
    fn a_settled_object_is_looked_up_by_its_sweep_not_by_a_restart_or_a_repeat() {
        let s = Seen::default();
        let t0 = Instant::now();
        let fresh = Duration::from_secs(150);
        let g = Some(1);
        // A restart: settled, first seen -> no lookup; the sweep later -> lookup.
        assert_eq!(s.decide("u", g, true, t0, fresh), Lookup::FirstSeen);
        assert_eq!(s.decide("u", g, true, t0, fresh), Lookup::Now);
        s.answered("u", g, t0);
        // A second trigger soon after the answer, settled in the cache or not yet: none.
        let soon = t0 + Duration::from_secs(1);
        assert_eq!(s.decide("u", g, true, soon, fresh), Lookup::Recent);
        assert_eq!(s.decide("u", g, false, soon, fresh), Lookup::Recent);
        // A new generation (spec changed): a lookup at once.
        assert_eq!(s.decide("u", Some(2), false, soon, fresh), Lookup::Now);
        // The next sweep, a period later: a lookup.
        assert_eq!(
            s.decide("u", g, true, t0 + Duration::from_secs(300), fresh),
            Lookup::Now
        );
        // A failed lookup is retried on its own schedule, never held back.
        s.failed("u");
        assert_eq!(s.decide("u", g, false, soon, fresh), Lookup::Now);
        // New objects: a lookup.
        assert_eq!(s.decide("v", g, false, t0, fresh), Lookup::Now);
        // Never reconciled here (not reconciled when listed), then due: a lookup.
        s.due("w");
        assert_eq!(s.decide("w", g, true, t0, fresh), Lookup::Now);
        // Forgotten (the object is gone): first seen again.
        s.forget("u");
        assert_eq!(s.decide("u", g, true, t0, fresh), Lookup::FirstSeen);
    }
}

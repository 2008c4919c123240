//! Recording Events (`events.k8s.io/v1`) with a bounded memory.
//!
//! `kube::runtime::events::Recorder` keeps every Event it recorded in the
//! last six minutes, whole, to turn repeats into a series, and scans that
//! cache on every publish: at start-up with 10,000 objects that is tens of
//! megabytes and a quadratic amount of work. This sink does the same
//! aggregation (a repeat of the same Event about the same object within
//! [`SERIES_WINDOW`] patches the first one's `series` instead of creating
//! another) but remembers at most [`REMEMBERED`] recent Events, as a hash and
//! a name each. When it forgets one, a later repeat is a new Event: that
//! costs a write, never a wrong one.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;

/// How long a repeat counts as part of the same series.
pub const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);
/// How many recent Events are remembered for series.
pub const REMEMBERED: usize = 512;

/// One Event to record.
pub struct Note<'a> {
    pub type_: EventType,
    pub reason: &'a str,
    pub action: &'a str,
    pub note: String,
}

/// Who records: `reportingController` and `reportingInstance`.
#[derive(Clone, Debug)]
pub struct Reporter {
    pub controller: String,
    pub instance: Option<String>,
}

struct Remembered {
    namespace: String,
    name: String,
    count: i32,
    last: Timestamp,
}

pub struct EventSink {
    client: kube::Client,
    reporter: Reporter,
    recent: Mutex<HashMap<u64, Remembered>>,
}

impl EventSink {
    pub fn new(client: kube::Client, reporter: Reporter) -> EventSink {
        EventSink {
            client,
            reporter,
            recent: Mutex::new(HashMap::new()),
        }
    }

    /// Records `note` about `regarding`: a new Event, or the next count of
    /// the series of the same Event recorded within [`SERIES_WINDOW`].
    pub async fn publish(
        &self,
        note: &Note<'_>,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let key = key_of(note, regarding);
        let now = Timestamp::now();
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let repeat = {
            let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            recent
                .get(&key)
                .filter(|r| r.last + SERIES_WINDOW > now)
                .map(|r| (r.namespace.clone(), r.name.clone(), r.count + 1))
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let (name, count) = match repeat {
            Some((ns, name, count)) => {
                let patch = serde_json::json!({
                    "series": EventSeries { count, last_observed_time: MicroTime(now) }
                });
                let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
                match api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => (name, count),
                    // Expired or removed by the API server: start again.
                    Err(kube::Error::Api(e)) if e.code == 404 => {
                        let ev = self.event(note, regarding, &namespace, now);
                        let name = ev.metadata.name.clone().unwrap_or_default();
                        api.create(&PostParams::default(), &ev).await?;
                        (name, 1)
                    }
                    Err(e) => return Err(e),
                }
            }
            None => {
                let ev = self.event(note, regarding, &namespace, now);
                let name = ev.metadata.name.clone().unwrap_or_default();
                api.create(&PostParams::default(), &ev).await?;
                (name, 1)
            }
        };
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if !recent.contains_key(&key) {
            make_room(&mut recent, now);
        }
        recent.insert(
            key,
            Remembered {
                namespace,
                name,
                count,
                last: now,
            },
        );
        Ok(())
    }

    fn event(
        &self,
        note: &Note<'_>,
        regarding: &ObjectReference,
        namespace: &str,
        now: Timestamp,
    ) -> Event {
        let base = regarding
            .name
            .as_deref()
            .unwrap_or(&self.reporter.controller);
        Event {
            metadata: ObjectMeta {
                name: Some(format!("{base}.{:x}", now.as_nanosecond())),
                namespace: Some(namespace.to_owned()),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some(note.action.to_owned()),
            reason: Some(note.reason.to_owned()),
            note: Some(note.note.clone()),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            type_: Some(
                match note.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_owned(),
            ),
            ..Default::default()
        }
    }
}

/// Keeps `recent` below [`REMEMBERED`] entries: first forgets what is past
/// its series window, then, if still full, the oldest quarter (so this runs
/// once per [`REMEMBERED`]/4 new Events at most).
fn make_room(recent: &mut HashMap<u64, Remembered>, now: Timestamp) {
    if recent.len() < REMEMBERED {
        return;
    }
    recent.retain(|_, r| r.last + SERIES_WINDOW > now);
    if recent.len() >= REMEMBERED {
        let mut times: Vec<Timestamp> = recent.values().map(|r| r.last).collect();
        times.sort_unstable();
        let cut = times[times.len() / 4];
        recent.retain(|_, r| r.last > cut);
    }
}

/// What makes two Events the same: the object (by uid, else by name), type,
/// reason, action and note.
fn key_of(note: &Note<'_>, regarding: &ObjectReference) -> u64 {
    let mut h = DefaultHasher::new();
    regarding.uid.hash(&mut h);
    regarding.kind.hash(&mut h);
    regarding.namespace.hash(&mut h);
    regarding.name.hash(&mut h);
    matches!(note.type_, EventType::Warning).hash(&mut h);
    note.reason.hash(&mut h);
    note.action.hash(&mut h);
    note.note.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(uid: &str) -> ObjectReference {
        ObjectReference {
            kind: Some("CloudImage".into()),
            namespace: Some("ns".into()),
            name: Some("a".into()),
            uid: Some(uid.into()),
            ..Default::default()
        }
    }

    fn note(text: &str) -> Note<'_> {
        Note {
            type_: EventType::Warning,
            reason: "AuthFailed",
            action: "DeleteImage",
            note: text.to_owned(),
        }
    }

    #[test]
    fn the_same_event_about_the_same_object_is_one_key() {
        assert_eq!(
            key_of(&note("x"), &reference("1")),
            key_of(&note("x"), &reference("1"))
        );
        assert_ne!(
            key_of(&note("x"), &reference("1")),
            key_of(&note("x"), &reference("2"))
        );
        assert_ne!(
            key_of(&note("x"), &reference("1")),
            key_of(&note("y"), &reference("1"))
        );
        let mut normal = note("x");
        normal.type_ = EventType::Normal;
        assert_ne!(
            key_of(&note("x"), &reference("1")),
            key_of(&normal, &reference("1"))
        );
    }

    fn remembered(at: Timestamp) -> Remembered {
        Remembered {
            namespace: "ns".into(),
            name: "e".into(),
            count: 1,
            last: at,
        }
    }

    #[test]
    fn memory_stays_bounded() {
        let now = Timestamp::now();
        let mut recent = HashMap::new();
        for i in 0..(REMEMBERED as u64 * 10) {
            make_room(&mut recent, now);
            // Distinct times, all within the window.
            recent.insert(i, remembered(now + SignedDuration::from_millis(i as i64)));
            assert!(recent.len() <= REMEMBERED);
        }
        // The newest is kept, the oldest forgotten.
        assert!(recent.contains_key(&(REMEMBERED as u64 * 10 - 1)));
        assert!(!recent.contains_key(&0));
    }

    #[test]
    fn what_is_past_the_window_goes_first() {
        let now = Timestamp::now();
        let mut recent = HashMap::new();
        for i in 0..REMEMBERED as u64 {
            let at = if i % 2 == 0 { now - SERIES_WINDOW } else { now };
            recent.insert(i, remembered(at));
        }
        make_room(&mut recent, now);
        assert_eq!(recent.len(), REMEMBERED / 2);
        assert!(recent.values().all(|r| r.last == now));
    }
}

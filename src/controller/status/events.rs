//! The controller's Events (`events.k8s.io/v1`), published as Kubernetes' own recorders do: the
//! first occurrence creates an Event, and a repeat within [`SERIES_WINDOW`] grows that Event's
//! `series` (one PATCH) instead of creating another.
//!
//! To know what repeats, kube-runtime's `Recorder` keeps a copy of every Event it sent in the last
//! six minutes, and its key (two `ObjectReference`s, the note, a dozen strings: a few kilobytes
//! each), and scans them all on every publish. A fleet that is adopted at once publishes one
//! Event per SiteCache: 10,000 of those copies were the controller's largest cache after the
//! SiteCaches themselves (29 MiB of its 128 MiB peak in `make bench-fleet`). This recorder keeps a
//! table entry of 48 bytes per Event: a keyed hash of what makes two Events the same, when the
//! first was created (which names it), when the last was, and how many there were.
//!
//! What makes two Events the same: the object they are about (uid, namespace, name), the type,
//! the reason, the action and the note. The note is part of it (kube-runtime's and client-go's
//! keys leave it out, so a second `Promoted` within six minutes would count on the first one's
//! text): a different message is a different Event that `kubectl describe` shows.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::{Mutex, MutexGuard};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use crate::api::SiteCache;

/// How long a published Event can grow a series (kube-runtime's and client-go's window).
pub const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);

/// How often the Events older than the window are forgotten (each publish would scan them all).
const SWEEP_EVERY: SignedDuration = SignedDuration::from_secs(30);

/// Publishes Events about SiteCaches.
pub struct Recorder {
    client: kube::Client,
    /// `reportingController`.
    controller: String,
    /// `reportingInstance`: the pod's name, or the controller's when it has none.
    instance: String,
    series: Mutex<Series>,
}

/// One Event to publish.
pub struct Note<'a> {
    pub type_: EventType,
    pub reason: &'a str,
    pub action: &'a str,
    pub note: &'a str,
}

impl Recorder {
    pub fn new(client: kube::Client, controller: &str, instance: Option<String>) -> Self {
        Recorder {
            client,
            controller: controller.to_owned(),
            instance: instance.unwrap_or_else(|| controller.to_owned()),
            series: Mutex::new(Series::default()),
        }
    }

    /// Publishes `what` about `sc`: a new Event, or one more in the series of the same Event
    /// published within the window. An Event that is gone (deleted, or expired by the API
    /// server's `--event-ttl`) is created again.
    pub async fn publish(&self, sc: &SiteCache, what: &Note<'_>) -> kube::Result<()> {
        let now = Timestamp::now();
        let (key, send) = {
            let mut series = self.lock();
            let key = series.key(sc, what);
            (key, series.observe(key, now))
        };
        let ns = sc.namespace().unwrap_or_else(|| "default".to_owned());
        let events: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        if let Send::Grow { first, count } = send {
            let series = serde_json::json!({
                "series": { "count": count, "lastObservedTime": MicroTime(now) }
            });
            match events
                .patch(
                    &event_name(sc, first),
                    &PatchParams::default(),
                    &Patch::Merge(&series),
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    self.lock().forget(key);
                    return Err(e);
                }
            }
            // Gone: this occurrence starts a new Event.
            self.lock().restart(key, now);
        }
        let event = self.event(sc, what, now);
        let created = events.create(&PostParams::default(), &event).await;
        if created.is_err() {
            self.lock().forget(key);
        }
        created.map(|_| ())
    }

    fn event(&self, sc: &SiteCache, what: &Note<'_>, now: Timestamp) -> Event {
        Event {
            metadata: ObjectMeta {
                name: Some(event_name(sc, now)),
                namespace: sc.namespace(),
                ..Default::default()
            },
            action: Some(what.action.to_owned()),
            reason: Some(what.reason.to_owned()),
            note: Some(what.note.to_owned()),
            type_: Some(
                match what.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_owned(),
            ),
            event_time: Some(MicroTime(now)),
            regarding: Some(sc.object_ref(&())),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, Series> {
        self.series.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An Event's name: the object's name and when the Event was first created (as kube-runtime and
/// client-go name theirs), so that a series' PATCH finds it from the time alone.
fn event_name(sc: &SiteCache, first: Timestamp) -> String {
    format!("{}.{:x}", sc.name_any(), first.as_nanosecond())
}

/// What to send for an occurrence.
#[derive(Debug, PartialEq, Eq)]
enum Send {
    /// A new Event, named for now.
    Create,
    /// The Event first created at `first` occurred again: its series now counts `count`.
    Grow { first: Timestamp, count: i32 },
}

/// The Events published within the window, by key.
#[derive(Default)]
struct Series {
    seen: HashMap<u64, Seen>,
    /// Keys are hashed with a per-process random key, so no object name can aim at a collision.
    hasher: RandomState,
    swept: Option<Timestamp>,
}

#[derive(Clone, Copy, Debug)]
struct Seen {
    /// When the Event was created (its name).
    first: Timestamp,
    /// When it last occurred.
    last: Timestamp,
    count: i32,
}

impl Series {
    fn key(&self, sc: &SiteCache, what: &Note<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        let meta = sc.meta();
        (&meta.uid, &meta.namespace, &meta.name).hash(&mut h);
        matches!(what.type_, EventType::Warning).hash(&mut h);
        (what.reason, what.action, what.note).hash(&mut h);
        h.finish()
    }

    /// Records an occurrence of `key` at `now` and says what to send.
    fn observe(&mut self, key: u64, now: Timestamp) -> Send {
        self.sweep(now);
        match self.seen.get_mut(&key) {
            Some(seen) if now < seen.last + SERIES_WINDOW => {
                seen.last = now;
                // A first occurrence without a series counts as one; the first repeat makes two.
                seen.count = seen.count.saturating_add(1);
                Send::Grow {
                    first: seen.first,
                    count: seen.count,
                }
            }
            _ => {
                self.restart(key, now);
                Send::Create
            }
        }
    }

    /// `key`'s Event is (re)created at `now`.
    fn restart(&mut self, key: u64, now: Timestamp) {
        self.seen.insert(
            key,
            Seen {
                first: now,
                last: now,
                count: 1,
            },
        );
    }

    /// An occurrence could not be sent: the next one starts over.
    fn forget(&mut self, key: u64) {
        self.seen.remove(&key);
    }

    /// Forgets the Events that can no longer grow, at most every [`SWEEP_EVERY`].
    fn sweep(&mut self, now: Timestamp) {
        if self.swept.is_some_and(|at| now < at + SWEEP_EVERY) {
            return;
        }
        self.swept = Some(now);
        self.seen.retain(|_, s| now < s.last + SERIES_WINDOW);
        if self.seen.capacity() > 2 * self.seen.len() + 64 {
            self.seen.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests;

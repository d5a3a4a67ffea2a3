//! Kubernetes Events about models (`events.k8s.io/v1`), in series: the same event about the
//! same object (type, reason, action) repeated within [`SERIES_WINDOW`] bumps the first one's
//! `series.count` instead of creating another object, which is what `kubectl events` and
//! `kubectl describe` fold together.
//!
//! Only what a repeat needs (the Event's name and count) is remembered, never the Event: after
//! a thousand models are applied at once, several thousand Events are within their window, and
//! whole Event objects would be most of the operator's memory.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};

/// How long a repeat joins the series of an earlier Event.
pub const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// How often remembered series past their window are forgotten.
const FORGET_EVERY: Duration = Duration::from_secs(30);

/// An Event already created: its name, and how many times it happened.
#[derive(Clone, Debug, PartialEq)]
struct Series {
    namespace: String,
    name: String,
    count: i32,
    last: Timestamp,
}

/// What to do with an event.
#[derive(Debug, PartialEq)]
enum Write {
    /// Create a new Event.
    Create,
    /// Bump the series of this Event to `count`.
    Bump {
        namespace: String,
        name: String,
        count: i32,
    },
}

/// The series remembered, by a hash of (object, type, reason, action).
#[derive(Debug, Default)]
struct Remembered {
    series: HashMap<u64, Series>,
    forgotten_at: Option<Timestamp>,
}

impl Remembered {
    fn forget_old(&mut self, now: Timestamp) {
        let due = self
            .forgotten_at
            .is_none_or(|at| now.duration_since(at).unsigned_abs() >= FORGET_EVERY);
        if due {
            self.series
                .retain(|_, s| now.duration_since(s.last).unsigned_abs() < SERIES_WINDOW);
            self.forgotten_at = Some(now);
        }
    }

    fn write_for(&mut self, key: u64, now: Timestamp) -> Write {
        self.forget_old(now);
        match self.series.get(&key) {
            Some(s) if now.duration_since(s.last).unsigned_abs() < SERIES_WINDOW => Write::Bump {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                count: s.count + 1,
            },
            _ => Write::Create,
        }
    }

    fn written(&mut self, key: u64, series: Series) {
        self.series.insert(key, series);
    }
}

/// Records Events under one controller name and instance. Cheap to clone: the series are
/// shared.
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    controller: String,
    instance: String,
    remembered: Arc<Mutex<Remembered>>,
}

fn key_of(event: &Event, regarding: &ObjectReference) -> u64 {
    let mut h = DefaultHasher::new();
    (&regarding.uid, &regarding.namespace, &regarding.name, &regarding.kind).hash(&mut h);
    matches!(event.type_, EventType::Warning).hash(&mut h);
    (&event.reason, &event.action).hash(&mut h);
    h.finish()
}

impl Recorder {
    /// A recorder for `controller` (the Event's `reportingController`), as `instance` (its
    /// `reportingInstance`, this replica).
    pub fn new(client: kube::Client, controller: &str, instance: &str) -> Self {
        Self {
            client,
            controller: controller.to_owned(),
            instance: instance.to_owned(),
            remembered: Arc::default(),
        }
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, Remembered> {
        self.remembered.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `event` about `regarding`: a new Event, or one more of a recent series.
    pub async fn publish(&self, event: &Event, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = key_of(event, regarding);
        let write = self.remembered().write_for(key, now);
        let series = match write {
            Write::Bump { namespace, name, count } => {
                let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
                let patch = serde_json::json!({
                    "series": EventSeries { count, last_observed_time: MicroTime(now) },
                });
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
                Series {
                    namespace,
                    name,
                    count,
                    last: now,
                }
            }
            Write::Create => {
                let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".to_owned());
                let name = format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(&self.controller),
                    now.as_nanosecond()
                );
                let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
                api.create(&PostParams::default(), &self.new_event(event, regarding, &name, now))
                    .await?;
                Series {
                    namespace,
                    name,
                    count: 1,
                    last: now,
                }
            }
        };
        self.remembered().written(key, series);
        Ok(())
    }

    fn new_event(&self, event: &Event, regarding: &ObjectReference, name: &str, now: Timestamp) -> K8sEvent {
        K8sEvent {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: regarding.namespace.clone(),
                ..Default::default()
            },
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            note: event.note.clone(),
            type_: Some(
                match event.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_owned(),
            ),
            regarding: Some(regarding.clone()),
            related: event.secondary.clone(),
            event_time: Some(MicroTime(now)),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("a timestamp")
    }

    fn created(name: &str, count: i32, secs: i64) -> Series {
        Series {
            namespace: "ns".into(),
            name: name.into(),
            count,
            last: at(secs),
        }
    }

    #[test]
    fn a_repeat_within_the_window_bumps_the_series_and_a_late_one_starts_anew() {
        let mut r = Remembered::default();
        assert_eq!(r.write_for(1, at(0)), Write::Create);
        r.written(1, created("iris.1", 1, 0));
        assert_eq!(r.write_for(2, at(1)), Write::Create, "another event is its own");
        assert_eq!(
            r.write_for(1, at(60)),
            Write::Bump {
                namespace: "ns".into(),
                name: "iris.1".into(),
                count: 2
            }
        );
        r.written(1, created("iris.1", 2, 60));
        assert_eq!(r.write_for(1, at(60 + 6 * 60)), Write::Create, "past the window");
    }

    #[test]
    fn series_past_their_window_are_forgotten() {
        let mut r = Remembered::default();
        for key in 0..1000 {
            r.written(key, created("m.1", 1, 0));
        }
        r.written(5000, created("m.2", 1, 300));
        r.forget_old(at(400));
        assert_eq!(r.series.len(), 1, "only the recent series is kept");
    }

    #[test]
    fn the_key_tells_objects_reasons_and_types_apart() {
        let regarding = |name: &str| ObjectReference {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            uid: Some(format!("uid-{name}")),
            kind: Some("MLModel".into()),
            ..Default::default()
        };
        let event = |reason: &str, warning: bool| Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.into(),
            note: Some("a note".into()),
            action: "Reconcile".into(),
            secondary: None,
        };
        let base = key_of(&event("Ready", false), &regarding("a"));
        assert_eq!(base, key_of(&event("Ready", false), &regarding("a")));
        assert_ne!(base, key_of(&event("Ready", false), &regarding("b")));
        assert_ne!(base, key_of(&event("Failed", false), &regarding("a")));
        assert_ne!(base, key_of(&event("Ready", true), &regarding("a")));
    }
}

//! The Warning Events that say why a child makes no progress, in the words of the component
//! that cannot go on: a provisioner that cannot make a claim's volume (`ProvisioningFailed`),
//! a kubelet that cannot mount or attach a pod's volume or create its sandbox, a Job
//! controller that cannot create its pod (`FailedCreate`: a quota, an admission check).
//!
//! One watch of Warning Events (`type=Warning`) per watched namespace or cluster; only the
//! Events of those kinds and reasons are kept, as a [`Warning`] each, so the memory is that of
//! the children in trouble, not that of the cluster's Events.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::jiff::Timestamp;

use crate::lifecycle::observe::Warning;

/// The reasons kept, per kind of the object the Event is about.
const KEPT: &[(&str, &[&str])] = &[
    ("PersistentVolumeClaim", &["ProvisioningFailed"]),
    ("Pod", &["FailedMount", "FailedAttachVolume", "FailedCreatePodSandBox"]),
    ("Job", &["FailedCreate"]),
];

/// Longest message kept; an Event's message can be long and only its start is shown.
const MESSAGE_LIMIT: usize = 1024;

/// The object an Event is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Involved {
    /// Its kind: `PersistentVolumeClaim`, `Pod` or `Job`.
    pub kind: &'static str,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// One kept Event.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Entry {
    /// The uid of the object it is about: a re-created object of the same name is another.
    uid: Option<String>,
    warning: Warning,
}

/// Kept Events, per object they are about, then per Event name.
pub(crate) type Kept = HashMap<Involved, BTreeMap<String, Entry>>;

/// What one Event says, if it is one that is kept.
pub(crate) fn kept(event: &Event) -> Option<(Involved, String, Entry)> {
    let about = &event.involved_object;
    let kind = about.kind.as_deref()?;
    let reason = event.reason.as_deref()?;
    let (kind, _) = KEPT
        .iter()
        .find(|(k, reasons)| *k == kind && reasons.contains(&reason))?;
    let involved = Involved {
        kind,
        namespace: about.namespace.clone().or_else(|| event.metadata.namespace.clone())?,
        name: about.name.clone()?,
    };
    let created = event.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let event_time = event.event_time.as_ref().map(|t| t.0);
    let first = event.first_timestamp.as_ref().map(|t| t.0).or(event_time).or(created);
    let last = event
        .series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref())
        .map(|t| t.0)
        .or(event.last_timestamp.as_ref().map(|t| t.0))
        .or(first);
    let message: String = event
        .message
        .as_deref()
        .unwrap_or_default()
        .trim()
        .chars()
        .take(MESSAGE_LIMIT)
        .collect();
    let entry = Entry {
        uid: about.uid.clone().filter(|u| !u.is_empty()),
        warning: Warning {
            reason: reason.to_owned(),
            message,
            first,
            last,
        },
    };
    Some((involved, event.metadata.name.clone()?, entry))
}

/// The kept Events of every watch.
#[derive(Default)]
pub(crate) struct Warnings(RwLock<Kept>);

impl Warnings {
    /// Keeps (or updates) one Event; returns the object it is about when it is kept.
    pub fn apply(&self, event: &Event) -> Option<Involved> {
        let (involved, name, entry) = kept(event)?;
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        map.entry(involved.clone()).or_default().insert(name, entry);
        Some(involved)
    }

    /// Forgets one Event (it expired or was deleted).
    pub fn delete(&self, event: &Event) -> Option<Involved> {
        let (involved, name, _) = kept(event)?;
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        if let Some(events) = map.get_mut(&involved) {
            events.remove(&name);
            if events.is_empty() {
                map.remove(&involved);
            }
        }
        Some(involved)
    }

    /// Replaces what a relist of `namespace` (`None`: the whole cluster) listed; returns the
    /// objects whose Events changed.
    pub fn replace(&self, namespace: Option<&str>, fresh: Kept) -> Vec<Involved> {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        let ours = |i: &Involved| namespace.is_none_or(|ns| ns == i.namespace);
        let mut changed: Vec<Involved> = map
            .iter()
            .filter(|(i, events)| ours(i) && fresh.get(*i) != Some(*events))
            .map(|(i, _)| i.clone())
            .collect();
        for (involved, events) in &fresh {
            if map.get(involved) != Some(events) && !changed.contains(involved) {
                changed.push(involved.clone());
            }
        }
        map.retain(|i, _| !ours(i));
        map.extend(fresh);
        changed
    }

    /// The latest Warning about the object, Events about an earlier object of the same name
    /// (another uid) left out.
    pub fn latest(&self, kind: &str, namespace: &str, name: &str, uid: Option<&str>) -> Option<Warning> {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        let key = KEPT.iter().find(|(k, _)| *k == kind).map(|(k, _)| Involved {
            kind: k,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })?;
        map.get(&key)?
            .values()
            .filter(|e| match (&e.uid, uid) {
                (Some(theirs), Some(ours)) => theirs == ours,
                _ => true,
            })
            .max_by_key(|e| e.warning.last.unwrap_or(Timestamp::UNIX_EPOCH))
            .map(|e| e.warning.clone())
    }

    /// How many objects have kept Events (for tests and metrics).
    pub fn len(&self) -> usize {
        self.0.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no Event is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn event(name: &str, kind: &str, about: &str, uid: &str, reason: &str, at: i64) -> Event {
        Event {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("ml".to_owned()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                kind: Some(kind.to_owned()),
                name: Some(about.to_owned()),
                namespace: Some("ml".to_owned()),
                uid: Some(uid.to_owned()),
                ..Default::default()
            },
            reason: Some(reason.to_owned()),
            message: Some(format!("{reason} at {at}")),
            type_: Some("Warning".to_owned()),
            first_timestamp: Some(Time(Timestamp::from_second(at).unwrap())),
            last_timestamp: Some(Time(Timestamp::from_second(at + 10).unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn only_the_reasons_that_explain_a_stuck_child_are_kept() {
        let w = Warnings::default();
        assert!(
            w.apply(&event(
                "a",
                "PersistentVolumeClaim",
                "iris-model",
                "u1",
                "ProvisioningFailed",
                100
            ))
            .is_some()
        );
        assert!(
            w.apply(&event("b", "Pod", "iris-serving-x", "p1", "FailedMount", 100))
                .is_some()
        );
        assert!(
            w.apply(&event("c", "Job", "iris-download-1", "j1", "FailedCreate", 100))
                .is_some()
        );
        // Other kinds and reasons: somebody else's business, or already read elsewhere.
        assert!(
            w.apply(&event("d", "Pod", "iris-serving-x", "p1", "BackOff", 100))
                .is_none()
        );
        assert!(
            w.apply(&event("e", "Deployment", "iris-serving", "d1", "FailedCreate", 100))
                .is_none()
        );
        assert!(
            w.apply(&event("f", "MLModel", "iris", "m1", "FailedMount", 100))
                .is_none()
        );
        assert_eq!(w.len(), 3);
        let warning = w
            .latest("PersistentVolumeClaim", "ml", "iris-model", Some("u1"))
            .unwrap();
        assert_eq!(warning.reason, "ProvisioningFailed");
        assert_eq!(warning.message, "ProvisioningFailed at 100");
        assert_eq!(warning.first, Some(Timestamp::from_second(100).unwrap()));
        assert_eq!(warning.last, Some(Timestamp::from_second(110).unwrap()));
    }

    #[test]
    fn the_latest_event_of_this_object_wins_and_an_earlier_objects_are_ignored() {
        let w = Warnings::default();
        w.apply(&event("old", "Pod", "p", "uid-1", "FailedMount", 500));
        w.apply(&event("first", "Pod", "p", "uid-2", "FailedMount", 100));
        w.apply(&event("second", "Pod", "p", "uid-2", "FailedAttachVolume", 200));
        let latest = w.latest("Pod", "ml", "p", Some("uid-2")).unwrap();
        assert_eq!(latest.reason, "FailedAttachVolume");
        assert_eq!(
            w.latest("Pod", "ml", "p", Some("uid-1")).unwrap().message,
            "FailedMount at 500"
        );
        assert!(w.latest("Pod", "ml", "other", None).is_none());
        assert!(w.latest("Service", "ml", "p", None).is_none());

        w.delete(&event("second", "Pod", "p", "uid-2", "FailedAttachVolume", 200));
        assert_eq!(w.latest("Pod", "ml", "p", Some("uid-2")).unwrap().reason, "FailedMount");
    }

    #[test]
    fn a_relist_replaces_its_namespace_and_names_what_changed() {
        let w = Warnings::default();
        w.apply(&event("a", "Pod", "gone", "u", "FailedMount", 1));
        w.apply(&event("b", "Pod", "stays", "u", "FailedMount", 1));
        let mut other = event("c", "Pod", "elsewhere", "u", "FailedMount", 1);
        other.involved_object.namespace = Some("other".to_owned());
        w.apply(&other);

        let mut fresh = Kept::new();
        for e in [
            event("b", "Pod", "stays", "u", "FailedMount", 1),
            event("d", "Pod", "new", "u", "FailedMount", 1),
        ] {
            let (involved, name, entry) = kept(&e).unwrap();
            fresh.entry(involved).or_default().insert(name, entry);
        }
        let mut changed: Vec<String> = w.replace(Some("ml"), fresh).into_iter().map(|i| i.name).collect();
        changed.sort();
        assert_eq!(changed, ["gone", "new"]);
        assert!(w.latest("Pod", "ml", "gone", None).is_none());
        assert!(w.latest("Pod", "ml", "new", None).is_some());
        assert!(
            w.latest("Pod", "other", "elsewhere", None).is_some(),
            "another namespace's are kept"
        );
    }
}

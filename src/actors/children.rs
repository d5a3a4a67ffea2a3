//! The operator's children as its caches keep them: for each object, what the lifecycle core
//! reads of it ([`crate::lifecycle::observe`]'s summary, made once as the event arrives) and
//! what the caches need to place it (its model, owner, uid and resourceVersion). Nothing else
//! of the object is kept: at thousands of models, the API objects themselves (metadata, status
//! and the maps and lists inside them) would be most of the operator's memory.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::ModelKey;
use crate::lifecycle::cached::{CachedDeployment, CachedJob, CachedPod, CachedPvc, CachedService};
use crate::lifecycle::observe::{self, DeploymentObs, JobObs, PodObs, PvcObs, ServiceObs};

/// A child's controller, as its controller owner reference names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Controller {
    /// The controller's uid.
    pub uid: String,
    /// Its name, when it is an MLModel.
    pub model: Option<String>,
}

impl Controller {
    /// The controller `meta` names, if any.
    pub fn of(meta: &ObjectMeta) -> Option<Self> {
        let o = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))?;
        Some(Self {
            uid: o.uid.clone(),
            model: (o.kind == "MLModel").then(|| o.name.clone()),
        })
    }
}

/// One child as cached.
#[derive(Debug, PartialEq)]
pub struct Summary<O> {
    /// Its name.
    pub name: String,
    /// The model its model label names (in the child's namespace).
    pub model: String,
    /// Its uid.
    pub uid: Option<String>,
    /// Its resourceVersion.
    pub resource_version: Option<String>,
    /// Its controller (pods are placed by `model_uid` instead).
    pub controller: Option<Controller>,
    /// The uid of the model it serves, from its label (pods).
    pub model_uid: Option<String>,
    /// What the lifecycle core reads of it.
    pub obs: O,
}

impl<O> Summary<O> {
    /// A summary of the object `meta` describes, if it carries a model label: `model` is that
    /// label's value, `obs` what `observe` made of the object.
    fn new(meta: &ObjectMeta, model: Option<&String>, obs: O) -> Option<Self> {
        Some(Self {
            name: meta.name.clone()?,
            model: model?.clone(),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            controller: Controller::of(meta),
            model_uid: None,
            obs,
        })
    }
}

/// How each watched kind is summarised.
pub trait Summarise: k8s_openapi::Metadata<Ty = ObjectMeta> + Send + Sync + 'static {
    /// What `observe` makes of it.
    type Obs: Send + Sync + 'static;
    /// Its summary; `None` for an object without a model label.
    fn summarise(&self) -> Option<Summary<Self::Obs>>;

    /// Its namespace and summary, with the key of the model it belongs to.
    fn placed(&self) -> Option<(ModelKey, Summary<Self::Obs>)> {
        let namespace = self.metadata().namespace.clone()?;
        let summary = self.summarise()?;
        let key = ModelKey {
            namespace,
            name: summary.model.clone(),
        };
        Some((key, summary))
    }
}

impl Summarise for CachedPvc {
    type Obs = PvcObs;
    fn summarise(&self) -> Option<Summary<PvcObs>> {
        let claim = PersistentVolumeClaim {
            metadata: self.metadata.clone(),
            spec: self.spec.clone(),
            status: self.status.clone(),
        };
        Summary::new(&self.metadata, self.tags.model.as_ref(), observe::pvc(&claim))
    }
}

impl Summarise for CachedJob {
    type Obs = Option<JobObs>;
    fn summarise(&self) -> Option<Summary<Option<JobObs>>> {
        Summary::new(&self.metadata, self.tags.model.as_ref(), observe::job(self))
    }
}

impl Summarise for CachedPod {
    type Obs = PodObs;
    fn summarise(&self) -> Option<Summary<PodObs>> {
        let mut summary = Summary::new(&self.metadata, self.tags.model.as_ref(), observe::pod(self))?;
        // A pod's owner is its Job or ReplicaSet; the uid label says which model it serves.
        summary.controller = None;
        summary.model_uid.clone_from(&self.tags.model_uid);
        Some(summary)
    }
}

impl Summarise for CachedDeployment {
    type Obs = DeploymentObs;
    fn summarise(&self) -> Option<Summary<DeploymentObs>> {
        Summary::new(&self.metadata, self.tags.model.as_ref(), observe::deployment(self))
    }
}

impl Summarise for CachedService {
    type Obs = ServiceObs;
    fn summarise(&self) -> Option<Summary<ServiceObs>> {
        let obs = ServiceObs {
            spec_hash: self.tags.spec_hash.clone(),
            deleting: self.metadata.deletion_timestamp.is_some(),
        };
        Summary::new(&self.metadata, self.tags.model.as_ref(), obs)
    }
}

/// Summaries by namespace, then name.
pub type Listed<O> = HashMap<String, HashMap<String, Arc<Summary<O>>>>;

/// One kind's cache: the summaries of its objects, by namespace and name.
pub struct ChildCache<O>(RwLock<Listed<O>>);

impl<O> Default for ChildCache<O> {
    fn default() -> Self {
        Self(RwLock::default())
    }
}

impl<O> ChildCache<O> {
    /// The child `name` in `namespace`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Summary<O>>> {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        map.get(namespace)?.get(name).cloned()
    }

    /// Stores (or replaces) a child.
    pub fn insert(&self, namespace: &str, summary: Summary<O>) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        let names = match map.get_mut(namespace) {
            Some(names) => names,
            None => map.entry(namespace.to_owned()).or_default(),
        };
        names.insert(summary.name.clone(), Arc::new(summary));
    }

    /// Forgets a child.
    pub fn remove(&self, namespace: &str, name: &str) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        if let Some(names) = map.get_mut(namespace) {
            names.remove(name);
            if names.is_empty() {
                map.remove(namespace);
            }
        }
    }

    /// Replaces the children in `namespace` (all of them for `None`) with what a relist of it
    /// found.
    pub fn replace(&self, namespace: Option<&str>, fresh: Listed<O>) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        match namespace {
            None => *map = fresh,
            Some(ns) => {
                map.remove(ns);
                map.extend(fresh.into_iter().filter(|(n, _)| n == ns));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(name: &str, rv: &str) -> Summary<()> {
        Summary {
            name: name.into(),
            model: "iris".into(),
            uid: None,
            resource_version: Some(rv.into()),
            controller: None,
            model_uid: None,
            obs: (),
        }
    }

    #[test]
    fn a_relist_of_one_namespace_replaces_that_namespace_only() {
        let cache = ChildCache::default();
        cache.insert("ml", summary("a", "1"));
        cache.insert("ml", summary("b", "1"));
        cache.insert("other", summary("a", "1"));
        let fresh = HashMap::from([(
            "ml".to_owned(),
            HashMap::from([("b".to_owned(), Arc::new(summary("b", "2")))]),
        )]);
        cache.replace(Some("ml"), fresh);
        assert_eq!(cache.get("ml", "a"), None);
        assert_eq!(
            cache.get("ml", "b").and_then(|s| s.resource_version.clone()).as_deref(),
            Some("2")
        );
        assert!(cache.get("other", "a").is_some());
        cache.remove("other", "a");
        assert_eq!(cache.get("other", "a"), None);
    }

    #[test]
    fn an_object_without_a_model_label_is_not_kept() {
        let pvc: CachedPvc = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "data", "namespace": "ml", "labels": {"app": "x"}}
        }))
        .unwrap();
        assert!(pvc.summarise().is_none());
    }

    #[test]
    fn a_claim_is_kept_as_what_the_lifecycle_reads_without_its_managed_fields() {
        let pvc: CachedPvc = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "iris-model", "namespace": "ml", "uid": "c1", "resourceVersion": "7",
                "labels": {crate::resources::MODEL_LABEL: "iris"},
                "ownerReferences": [{"apiVersion": "oda.tmforum.org/v1beta1", "kind": "MLModel",
                    "name": "iris", "uid": "u1", "controller": true}],
                "managedFields": [{"manager": "m", "operation": "Apply", "fieldsV1": {"f:spec": {}}}]
            },
            "spec": {"resources": {"requests": {"storage": "1Gi"}}},
            "status": {"phase": "Bound", "capacity": {"storage": "2Gi"}}
        }))
        .unwrap();
        assert_eq!(pvc.metadata.managed_fields, None);
        let summary = pvc.summarise().expect("a summary");
        assert_eq!((summary.name.as_str(), summary.model.as_str()), ("iris-model", "iris"));
        assert_eq!(
            summary.controller,
            Some(Controller {
                uid: "u1".into(),
                model: Some("iris".into())
            })
        );
        assert_eq!(summary.resource_version.as_deref(), Some("7"));
        assert_eq!(
            (
                summary.obs.phase.as_str(),
                summary.obs.requested.as_deref(),
                summary.obs.capacity.as_deref()
            ),
            ("Bound", Some("1Gi"), Some("2Gi"))
        );
    }
}

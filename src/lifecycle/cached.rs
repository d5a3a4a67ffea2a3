//! The children as the operator's caches keep them: their metadata and the part of their
//! status that [`super::observe`] reads, deserialized straight from the watch. The full API
//! types inline every optional part (a `Pod` is 2.4 KB before any of its contents, its spec
//! included even when absent), which at thousands of models is most of the operator's memory.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition};
use k8s_openapi::api::batch::v1::{Job, JobCondition};
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{NamespaceResourceScope, Resource};
use serde::Deserialize;

/// Implements the API type's identity (group, version, kind, path) for a cached view of it,
/// so that it can be listed and watched as that type.
macro_rules! view_of {
    ($view:ty, $api:ty) => {
        impl Resource for $view {
            const API_VERSION: &'static str = <$api as Resource>::API_VERSION;
            const GROUP: &'static str = <$api as Resource>::GROUP;
            const KIND: &'static str = <$api as Resource>::KIND;
            const VERSION: &'static str = <$api as Resource>::VERSION;
            const URL_PATH_SEGMENT: &'static str = <$api as Resource>::URL_PATH_SEGMENT;
            type Scope = NamespaceResourceScope;
        }

        impl k8s_openapi::Metadata for $view {
            type Ty = ObjectMeta;

            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }

            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

/// A pod: metadata and status, no spec.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct CachedPod {
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Its status.
    pub status: Option<PodStatus>,
}
view_of!(CachedPod, Pod);

impl From<&Pod> for CachedPod {
    fn from(p: &Pod) -> Self {
        Self {
            metadata: p.metadata.clone(),
            status: p.status.clone(),
        }
    }
}

/// A Job: metadata and its conditions, no spec.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct CachedJob {
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Its status, conditions only.
    pub status: Option<CachedJobStatus>,
}
view_of!(CachedJob, Job);

/// What is kept of a Job's status.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct CachedJobStatus {
    /// Complete, Failed and the others.
    pub conditions: Option<Vec<JobCondition>>,
}

impl From<&Job> for CachedJob {
    fn from(j: &Job) -> Self {
        Self {
            metadata: j.metadata.clone(),
            status: j.status.as_ref().map(|s| CachedJobStatus {
                conditions: s.conditions.clone(),
            }),
        }
    }
}

/// A Deployment: metadata, its pod template's labels, its ready replicas and conditions.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct CachedDeployment {
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Its spec, pod template labels only.
    pub spec: Option<CachedDeploymentSpec>,
    /// Its status.
    pub status: Option<CachedDeploymentStatus>,
}
view_of!(CachedDeployment, Deployment);

/// What is kept of a Deployment's spec.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct CachedDeploymentSpec {
    /// The pod template.
    #[serde(default)]
    pub template: CachedTemplate,
}

/// What is kept of a pod template.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct CachedTemplate {
    /// Its metadata.
    pub metadata: Option<CachedTemplateMeta>,
}

/// What is kept of a pod template's metadata.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct CachedTemplateMeta {
    /// Its labels (the version it serves).
    pub labels: Option<BTreeMap<String, String>>,
}

/// What is kept of a Deployment's status.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CachedDeploymentStatus {
    /// Pods ready.
    pub ready_replicas: Option<i32>,
    /// Progressing, ReplicaFailure and the others.
    pub conditions: Option<Vec<DeploymentCondition>>,
}

impl From<&Deployment> for CachedDeployment {
    fn from(d: &Deployment) -> Self {
        Self {
            metadata: d.metadata.clone(),
            spec: d.spec.as_ref().map(|s| CachedDeploymentSpec {
                template: CachedTemplate {
                    metadata: s.template.metadata.as_ref().map(|m| CachedTemplateMeta {
                        labels: m.labels.clone(),
                    }),
                },
            }),
            status: d.status.as_ref().map(|s| CachedDeploymentStatus {
                ready_replicas: s.ready_replicas,
                conditions: s.conditions.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watched_pod_keeps_its_status_and_drops_its_spec() {
        let json = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "ns", "labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        });
        let pod: CachedPod = serde_json::from_value(json.clone()).expect("a cached pod");
        let full: Pod = serde_json::from_value(json).expect("a pod");
        assert_eq!(pod, CachedPod::from(&full));
        assert_eq!(pod.status.and_then(|s| s.phase).as_deref(), Some("Running"));
        assert!(std::mem::size_of::<CachedPod>() < std::mem::size_of::<Pod>() / 2);
    }

    #[test]
    fn a_watched_deployment_keeps_its_template_labels_and_readiness() {
        let json = serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "namespace": "ns"},
            "spec": {"selector": {}, "template": {"metadata": {"labels": {"v": "2"}}, "spec": {"containers": []}}},
            "status": {"readyReplicas": 1, "replicas": 2,
                       "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}
        });
        let cached: CachedDeployment = serde_json::from_value(json.clone()).expect("a cached Deployment");
        let full: Deployment = serde_json::from_value(json).expect("a Deployment");
        assert_eq!(cached, CachedDeployment::from(&full));
        assert_eq!(cached.status.as_ref().and_then(|s| s.ready_replicas), Some(1));
        let labels = cached.spec.and_then(|s| s.template.metadata).and_then(|m| m.labels);
        assert_eq!(labels.and_then(|l| l.get("v").cloned()).as_deref(), Some("2"));
    }

    #[test]
    fn a_watched_job_keeps_its_conditions() {
        let json = serde_json::json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "j", "namespace": "ns"},
            "spec": {"template": {"spec": {"containers": []}}},
            "status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
        });
        let cached: CachedJob = serde_json::from_value(json.clone()).expect("a cached Job");
        let full: Job = serde_json::from_value(json).expect("a Job");
        assert_eq!(cached, CachedJob::from(&full));
        assert_eq!(cached.status.and_then(|s| s.conditions).map(|c| c.len()), Some(1));
    }
}

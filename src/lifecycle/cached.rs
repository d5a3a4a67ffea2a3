//! The children as the operator's watches read them: their metadata and the part of their
//! status that [`super::observe`] reads, deserialized straight from the watch and summarised
//! at once (the caches keep only the summary). The full API types inline every optional part
//! (a `Pod` is 2.4 KB before any of its contents, its spec included even when absent), so
//! even a passing copy of one is worth avoiding at thousands of events. For the same reason
//! the few labels and annotations read are lifted out of the metadata into [`ChildTags`].

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition};
use k8s_openapi::api::batch::v1::{Job, JobCondition};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimStatus, Pod, PodStatus, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{NamespaceResourceScope, Resource};
use serde::Deserialize;

use crate::resources::{
    COMPONENT_LABEL, MODEL_LABEL, MODEL_UID_LABEL, SOURCE_ANNOTATION, SPEC_HASH_ANNOTATION, VERSION_LABEL,
};

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

/// The labels and annotations of a child that the operator reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChildTags {
    /// The model it belongs to (`MODEL_LABEL`).
    pub model: Option<String>,
    /// The uid of that model (`MODEL_UID_LABEL`, on pods).
    pub model_uid: Option<String>,
    /// The version of the artifact it downloads or serves (`VERSION_LABEL`).
    pub version: Option<String>,
    /// What it is (`COMPONENT_LABEL`).
    pub component: Option<String>,
    /// Hash of the desired object it was applied from (`SPEC_HASH_ANNOTATION`).
    pub spec_hash: Option<String>,
    /// The artifact a download Job fetches, as status may show it (`SOURCE_ANNOTATION`).
    pub source: Option<String>,
}

impl ChildTags {
    /// Takes the tags out of `meta`, and drops its labels and annotations with them.
    pub fn lift(meta: &mut ObjectMeta) -> Self {
        let mut labels = meta.labels.take().unwrap_or_default();
        let mut annotations = meta.annotations.take().unwrap_or_default();
        Self {
            model: labels.remove(MODEL_LABEL),
            model_uid: labels.remove(MODEL_UID_LABEL),
            version: labels.remove(VERSION_LABEL),
            component: labels.remove(COMPONENT_LABEL),
            spec_hash: annotations.remove(SPEC_HASH_ANNOTATION),
            source: annotations.remove(SOURCE_ANNOTATION),
        }
    }

    /// The version as a number.
    pub fn version(&self) -> Option<i64> {
        self.version.as_deref()?.parse().ok()
    }
}

/// Deserializes a cached view through its raw form (the API object's metadata and the kept
/// parts, as listed), lifting its tags out of the metadata.
macro_rules! lifted {
    ($view:ident, $raw:ident { $($field:ident: $ty:ty),* }) => {
        #[derive(Deserialize)]
        struct $raw {
            #[serde(default, deserialize_with = "lean_meta")]
            metadata: ObjectMeta,
            $($field: $ty,)*
        }

        impl From<$raw> for $view {
            fn from(mut raw: $raw) -> Self {
                let tags = ChildTags::lift(&mut raw.metadata);
                Self {
                    metadata: raw.metadata,
                    tags,
                    $($field: raw.$field,)*
                }
            }
        }
    };
}

/// Object metadata as read from a list or a watch, without its managed fields: they are
/// never read, and as nested JSON maps they cost more than the rest of the object (the lists
/// a restarted operator reads at 1,000 models held about 15 MB of them).
pub fn lean_meta<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Lean {
        annotations: Option<BTreeMap<String, String>>,
        creation_timestamp: Option<Time>,
        deletion_grace_period_seconds: Option<i64>,
        deletion_timestamp: Option<Time>,
        finalizers: Option<Vec<String>>,
        generate_name: Option<String>,
        generation: Option<i64>,
        labels: Option<BTreeMap<String, String>>,
        name: Option<String>,
        namespace: Option<String>,
        owner_references: Option<Vec<OwnerReference>>,
        resource_version: Option<String>,
        uid: Option<String>,
    }
    let m = Lean::deserialize(d)?;
    Ok(ObjectMeta {
        annotations: m.annotations,
        creation_timestamp: m.creation_timestamp,
        deletion_grace_period_seconds: m.deletion_grace_period_seconds,
        deletion_timestamp: m.deletion_timestamp,
        finalizers: m.finalizers,
        generate_name: m.generate_name,
        generation: m.generation,
        labels: m.labels,
        name: m.name,
        namespace: m.namespace,
        owner_references: m.owner_references,
        resource_version: m.resource_version,
        uid: m.uid,
        ..Default::default()
    })
}

/// A PersistentVolumeClaim: metadata, spec and status.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(from = "RawPvc")]
pub struct CachedPvc {
    /// Standard object metadata, without labels and annotations.
    pub metadata: ObjectMeta,
    /// Its labels and annotations that are read.
    pub tags: ChildTags,
    /// Its spec.
    pub spec: Option<PersistentVolumeClaimSpec>,
    /// Its status.
    pub status: Option<PersistentVolumeClaimStatus>,
}
view_of!(CachedPvc, PersistentVolumeClaim);
lifted!(
    CachedPvc,
    RawPvc {
        spec: Option<PersistentVolumeClaimSpec>,
        status: Option<PersistentVolumeClaimStatus>
    }
);

/// A Service: its metadata only.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(from = "RawService")]
pub struct CachedService {
    /// Standard object metadata, without labels and annotations.
    pub metadata: ObjectMeta,
    /// Its labels and annotations that are read.
    pub tags: ChildTags,
}
view_of!(CachedService, Service);
lifted!(CachedService, RawService {});

/// A pod: metadata and status, no spec.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(from = "RawPod")]
pub struct CachedPod {
    /// Standard object metadata, without labels and annotations.
    pub metadata: ObjectMeta,
    /// Its labels and annotations that are read.
    pub tags: ChildTags,
    /// Its status.
    pub status: Option<PodStatus>,
}
view_of!(CachedPod, Pod);
lifted!(CachedPod, RawPod { status: Option<PodStatus> });

impl From<&Pod> for CachedPod {
    fn from(p: &Pod) -> Self {
        RawPod {
            metadata: p.metadata.clone(),
            status: p.status.clone(),
        }
        .into()
    }
}

/// A Job: metadata and its conditions, no spec.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(from = "RawJob")]
pub struct CachedJob {
    /// Standard object metadata, without labels and annotations.
    pub metadata: ObjectMeta,
    /// Its labels and annotations that are read.
    pub tags: ChildTags,
    /// Its status, conditions only.
    pub status: Option<CachedJobStatus>,
}
view_of!(CachedJob, Job);
lifted!(CachedJob, RawJob { status: Option<CachedJobStatus> });

/// What is kept of a Job's status.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct CachedJobStatus {
    /// Complete, Failed and the others.
    pub conditions: Option<Vec<JobCondition>>,
}

impl From<&Job> for CachedJob {
    fn from(j: &Job) -> Self {
        RawJob {
            metadata: j.metadata.clone(),
            status: j.status.as_ref().map(|s| CachedJobStatus {
                conditions: s.conditions.clone(),
            }),
        }
        .into()
    }
}

/// A Deployment: metadata, its pod template's labels, its ready replicas and conditions.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(from = "RawDeployment")]
pub struct CachedDeployment {
    /// Standard object metadata, without labels and annotations.
    pub metadata: ObjectMeta,
    /// Its labels and annotations that are read.
    pub tags: ChildTags,
    /// Its spec, the pod template's version only.
    pub spec: Option<CachedDeploymentSpec>,
    /// Its status.
    pub status: Option<CachedDeploymentStatus>,
}
view_of!(CachedDeployment, Deployment);
lifted!(
    CachedDeployment,
    RawDeployment {
        spec: Option<CachedDeploymentSpec>,
        status: Option<CachedDeploymentStatus>
    }
);

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
    /// The version its pods serve (`VERSION_LABEL`).
    #[serde(rename = "labels", default, deserialize_with = "version_label")]
    pub version: Option<String>,
}

/// The version label of a label map.
fn version_label<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let labels = Option::<BTreeMap<String, String>>::deserialize(d)?;
    Ok(labels.and_then(|mut l| l.remove(VERSION_LABEL)))
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
        RawDeployment {
            metadata: d.metadata.clone(),
            spec: d.spec.as_ref().map(|s| CachedDeploymentSpec {
                template: CachedTemplate {
                    metadata: s.template.metadata.as_ref().map(|m| CachedTemplateMeta {
                        version: m.labels.as_ref().and_then(|l| l.get(VERSION_LABEL).cloned()),
                    }),
                },
            }),
            status: d.status.as_ref().map(|s| CachedDeploymentStatus {
                ready_replicas: s.ready_replicas,
                conditions: s.conditions.clone(),
            }),
        }
        .into()
    }
}

/// An MLModel as cached: its metadata, and its spec and status as compact JSON text.
///
/// Kept untyped, so that one object the current schema cannot read (written under an older
/// CRD, or by hand) cannot break the watch for the others: it is read when a decision needs
/// it, and reported then. As text rather than a `serde_json::Value` tree, whose every key and
/// node is an allocation of its own, a model costs a fraction of the memory.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct CachedModel {
    /// Standard object metadata.
    #[serde(default, deserialize_with = "lean_meta")]
    pub metadata: ObjectMeta,
    /// Its spec, as JSON.
    #[serde(default, deserialize_with = "compact_json")]
    pub spec: Option<Box<str>>,
    /// Its status, as JSON.
    #[serde(default, deserialize_with = "compact_json")]
    pub status: Option<Box<str>>,
}

// The MLModel kind's identity, as `crate::api::MLModel` declares it (a unit test holds the two
// together): the derive does not make it available as constants.
impl Resource for CachedModel {
    const API_VERSION: &'static str = "oda.tmforum.org/v1beta1";
    const GROUP: &'static str = "oda.tmforum.org";
    const KIND: &'static str = "MLModel";
    const VERSION: &'static str = "v1beta1";
    const URL_PATH_SEGMENT: &'static str = "mlmodels";
    type Scope = NamespaceResourceScope;
}

impl k8s_openapi::Metadata for CachedModel {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Any JSON value, kept as its compact text.
fn compact_json<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<str>>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(d)?;
    Ok(value.map(|v| v.to_string().into_boxed_str()))
}

impl CachedModel {
    /// Reads the model with the current schema; the error names what does not fit.
    pub fn parse(&self) -> Result<crate::api::MLModel, serde_json::Error> {
        use serde_json::Value;
        let mut object = serde_json::Map::new();
        object.insert("apiVersion".into(), Value::from(Self::API_VERSION));
        object.insert("kind".into(), Value::from(Self::KIND));
        object.insert("metadata".into(), serde_json::to_value(&self.metadata)?);
        for (field, text) in [("spec", &self.spec), ("status", &self.status)] {
            if let Some(text) = text {
                object.insert(field.into(), serde_json::from_str(text)?);
            }
        }
        serde_json::from_value(Value::Object(object))
    }

    /// The status message, if the status has one (read even when the rest does not parse).
    pub fn status_message(&self) -> Option<String> {
        let status: serde_json::Value = serde_json::from_str(self.status.as_deref()?).ok()?;
        status.get("message")?.as_str().map(str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_model_reads_back_as_the_model_it_was_listed_as() {
        let json = serde_json::json!({
            "apiVersion": "oda.tmforum.org/v1beta1",
            "kind": "MLModel",
            "metadata": {"name": "iris", "namespace": "ml", "uid": "u1", "generation": 2},
            "spec": {"modelURL": "https://example.com/iris.tar.gz", "replicas": 2},
            "status": {"phase": "Ready", "message": "serving version 1"}
        });
        let cached: CachedModel = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(cached.status_message().as_deref(), Some("serving version 1"));
        let model = cached.parse().unwrap();
        let expected: crate::api::MLModel = serde_json::from_value(json).unwrap();
        assert_eq!(
            serde_json::to_value(model).unwrap(),
            serde_json::to_value(expected).unwrap()
        );
    }

    #[test]
    fn a_cached_model_is_watched_as_the_mlmodel_kind() {
        use kube::Resource as _;
        let (kind, version) = (crate::api::MLModel::kind(&()), crate::api::MLModel::api_version(&()));
        let plural = crate::api::MLModel::plural(&());
        assert_eq!(
            (CachedModel::KIND, CachedModel::API_VERSION),
            (kind.as_ref(), version.as_ref())
        );
        assert_eq!(CachedModel::URL_PATH_SEGMENT, plural.as_ref());
        assert_eq!(
            (CachedModel::GROUP, CachedModel::VERSION),
            (
                crate::api::MLModel::group(&()).as_ref(),
                crate::api::MLModel::version(&()).as_ref()
            )
        );
    }

    #[test]
    fn a_model_the_schema_cannot_read_is_cached_and_reported_when_read() {
        let cached: CachedModel = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "odd", "namespace": "ml"},
            "spec": {"modelURL": "https://example.com/m", "replicas": "three"},
            "status": {"message": "before"}
        }))
        .unwrap();
        let error = cached.parse().unwrap_err().to_string();
        assert!(error.contains("invalid type"), "{error}");
        assert_eq!(cached.status_message().as_deref(), Some("before"));
    }

    #[test]
    fn a_watched_pod_keeps_its_status_and_drops_its_spec() {
        let json = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "ns", "labels": {
                "a": "b", MODEL_LABEL: "iris", MODEL_UID_LABEL: "u1", VERSION_LABEL: "3", COMPONENT_LABEL: "serving"
            }, "annotations": {"note": "x"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        });
        let pod: CachedPod = serde_json::from_value(json.clone()).expect("a cached pod");
        let full: Pod = serde_json::from_value(json).expect("a pod");
        assert_eq!(pod, CachedPod::from(&full));
        assert_eq!(
            (pod.metadata.labels.as_ref(), pod.metadata.annotations.as_ref()),
            (None, None)
        );
        let tags = &pod.tags;
        assert_eq!(
            (
                tags.model.as_deref(),
                tags.model_uid.as_deref(),
                tags.version(),
                tags.component.as_deref()
            ),
            (Some("iris"), Some("u1"), Some(3), Some("serving"))
        );
        assert_eq!(pod.status.and_then(|s| s.phase).as_deref(), Some("Running"));
        assert!(std::mem::size_of::<CachedPod>() < std::mem::size_of::<Pod>() / 2);
    }

    #[test]
    fn a_watched_deployment_keeps_its_template_version_and_readiness() {
        let json = serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "namespace": "ns", "annotations": {SPEC_HASH_ANNOTATION: "h1"}},
            "spec": {"selector": {}, "template": {"metadata": {"labels": {"v": "1", VERSION_LABEL: "2"}}, "spec": {"containers": []}}},
            "status": {"readyReplicas": 1, "replicas": 2,
                       "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}
        });
        let cached: CachedDeployment = serde_json::from_value(json.clone()).expect("a cached Deployment");
        let full: Deployment = serde_json::from_value(json).expect("a Deployment");
        assert_eq!(cached, CachedDeployment::from(&full));
        assert_eq!(cached.status.as_ref().and_then(|s| s.ready_replicas), Some(1));
        assert_eq!(cached.tags.spec_hash.as_deref(), Some("h1"));
        let version = cached.spec.and_then(|s| s.template.metadata).and_then(|m| m.version);
        assert_eq!(version.as_deref(), Some("2"));
    }

    #[test]
    fn a_watched_job_keeps_its_conditions() {
        let json = serde_json::json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "j", "namespace": "ns", "annotations": {SOURCE_ANNOTATION: "s3://b/k"}},
            "spec": {"template": {"spec": {"containers": []}}},
            "status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
        });
        let cached: CachedJob = serde_json::from_value(json.clone()).expect("a cached Job");
        let full: Job = serde_json::from_value(json).expect("a Job");
        assert_eq!(cached, CachedJob::from(&full));
        assert_eq!(cached.tags.source.as_deref(), Some("s3://b/k"));
        assert_eq!(cached.status.and_then(|s| s.conditions).map(|c| c.len()), Some(1));
    }
}

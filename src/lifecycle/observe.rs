//! What the lifecycle core needs to know about a model's children, extracted from the API
//! objects. Small owned summaries: actors keep these, not whole objects.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};

use super::cached::{CachedDeployment, CachedJob, CachedPod};

use crate::resources::{COMPONENT_DOWNLOAD, SPEC_HASH_ANNOTATION};

/// Everything observed about one model's children at one instant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// The model's volume claim.
    pub pvc: Option<PvcObs>,
    /// Download Jobs of every version still present.
    pub jobs: Vec<JobObs>,
    /// Pods of the download Jobs and of the serving Deployment.
    pub pods: Vec<PodObs>,
    /// The serving Deployment.
    pub deployment: Option<DeploymentObs>,
    /// The Service.
    pub service: Option<ServiceObs>,
    /// The current time, passed in so the core never reads a clock.
    pub now: Timestamp,
    /// Objects (`kind/name`) with the model's labels or a child's name, still owned by an
    /// MLModel of the same name with another uid: a deleted model's children, going away.
    pub previous_owner: Vec<String>,
    /// Objects (`kind/name`) with the model's labels or a child's name that neither this model
    /// nor a previous one of its name owns.
    pub foreign: Vec<String>,
    /// The `storageSize` the API server refused to expand the claim to, with its message.
    pub resize_refused: Option<(String, String)>,
}

impl Observed {
    /// Whether any child still exists.
    pub fn has_children(&self) -> bool {
        self.pvc.is_some()
            || !self.jobs.is_empty()
            || !self.pods.is_empty()
            || self.deployment.is_some()
            || self.service.is_some()
    }
}

/// A Warning Event a component of the cluster reported about a child, in its own words:
/// a provisioner that cannot make the claim's volume, a kubelet that cannot mount it, a Job
/// controller that cannot create its pod.
#[derive(Clone, Debug, PartialEq)]
pub struct Warning {
    /// The Event's reason, e.g. `ProvisioningFailed`, `FailedMount`, `FailedCreate`.
    pub reason: String,
    /// The Event's message.
    pub message: String,
    /// When it was first reported.
    pub first: Option<Timestamp>,
    /// When it was last reported.
    pub last: Option<Timestamp>,
}

/// The volume claim.
#[derive(Clone, Debug, PartialEq)]
pub struct PvcObs {
    /// The claim's uid: a claim deleted and made again is another volume.
    pub uid: Option<String>,
    /// When the claim was created.
    pub created: Option<Timestamp>,
    /// `Pending`, `Bound` or `Lost`.
    pub phase: String,
    /// Deletion requested.
    pub deleting: bool,
    /// The storage it requests (`spec.resources.requests.storage`).
    pub requested: Option<String>,
    /// The storage its volume has (`status.capacity.storage`), once bound.
    pub capacity: Option<String>,
    /// The provisioner's latest `ProvisioningFailed` Event.
    pub warning: Option<Warning>,
}

/// A download Job.
#[derive(Clone, Debug, PartialEq)]
pub struct JobObs {
    /// Object name.
    pub name: String,
    /// Artifact version it downloads.
    pub version: i64,
    /// Digest of the source (URL and checksum) it downloads.
    pub source: Option<String>,
    /// Completed successfully.
    pub succeeded: bool,
    /// Failed permanently: (reason, message) of the Job's `Failed` condition.
    pub failed: Option<(String, String)>,
    /// Deletion requested.
    pub deleting: bool,
    /// When the Job was created: a Job older than the claim filled another volume.
    pub created: Option<Timestamp>,
    /// The Job controller's latest `FailedCreate` Event: it cannot create the pod.
    pub warning: Option<Warning>,
}

/// A container's termination.
#[derive(Clone, Debug, PartialEq)]
pub struct Terminated {
    /// Container name.
    pub container: String,
    /// e.g. `Error`, `OOMKilled`, `Completed`.
    pub reason: String,
    /// Exit code.
    pub exit_code: i32,
    /// The termination message (the downloader's classified line).
    pub message: String,
}

/// A pod of the model.
#[derive(Clone, Debug, PartialEq)]
pub struct PodObs {
    /// Object name.
    pub name: String,
    /// True for download pods, false for serving pods.
    pub download: bool,
    /// Artifact version.
    pub version: Option<i64>,
    /// Pod phase.
    pub phase: String,
    /// Ready condition true.
    pub ready: bool,
    /// Deletion requested.
    pub deleting: bool,
    /// When the pod was created.
    pub created: Option<Timestamp>,
    /// PodScheduled=False with reason Unschedulable: (message, since).
    pub unschedulable: Option<(String, Option<Timestamp>)>,
    /// A container waiting for a reason other than starting: (container, reason, message, image).
    pub waiting: Option<(String, String, String, String)>,
    /// The most recent termination of a container, current or last.
    pub terminated: Option<Terminated>,
    /// Highest restart count among its containers.
    pub restarts: i32,
    /// The kubelet's latest Warning Event about starting it: a volume it cannot mount or
    /// attach, a sandbox it cannot create.
    pub warning: Option<Warning>,
}

/// The serving Deployment.
#[derive(Clone, Debug, PartialEq)]
pub struct DeploymentObs {
    /// Artifact version its pod template serves.
    pub version: Option<i64>,
    /// Hash of the desired object it was applied from.
    pub spec_hash: Option<String>,
    /// Ready replicas.
    pub ready_replicas: i32,
    /// Deletion requested.
    pub deleting: bool,
    /// Why the Deployment's controller cannot go on, in its own words: its `ReplicaFailure`
    /// condition (pods it cannot create: quota, admission) or a `Progressing` condition past
    /// its deadline, as (reason, message).
    pub stalled: Option<(String, String)>,
}

/// The Service.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceObs {
    /// Hash of the desired object it was applied from.
    pub spec_hash: Option<String>,
    /// Deletion requested.
    pub deleting: bool,
}

/// Summarises a PVC.
pub fn pvc(p: &PersistentVolumeClaim) -> PvcObs {
    PvcObs {
        uid: p.metadata.uid.clone(),
        created: p.metadata.creation_timestamp.as_ref().map(|t| t.0),
        phase: p
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_else(|| "Pending".to_owned()),
        deleting: p.metadata.deletion_timestamp.is_some(),
        requested: p
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.clone()),
        capacity: p
            .status
            .as_ref()
            .and_then(|s| s.capacity.as_ref())
            .and_then(|c| c.get("storage"))
            .map(|q| q.0.clone()),
        warning: None,
    }
}

/// Summarises a download Job; `None` when it carries no version label (not ours).
pub fn job(j: &CachedJob) -> Option<JobObs> {
    let version = j.tags.version()?;
    let conditions = j.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    let is_true = |t: &str| conditions.iter().find(|c| c.type_ == t && c.status == "True");
    Some(JobObs {
        name: j.name_any(),
        version,
        source: j.tags.source.clone(),
        succeeded: is_true("Complete").is_some(),
        failed: is_true("Failed").map(|c| {
            (
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        }),
        deleting: j.metadata.deletion_timestamp.is_some(),
        created: j.metadata.creation_timestamp.as_ref().map(|t| t.0),
        warning: None,
    })
}

/// Summarises a pod.
pub fn pod(p: &CachedPod) -> PodObs {
    let status = p.status.clone().unwrap_or_default();
    let conditions = status.conditions.unwrap_or_default();
    let ready = conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
    let unschedulable = conditions
        .iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable"))
        .map(|c| {
            (
                c.message.clone().unwrap_or_default(),
                c.last_transition_time.as_ref().map(|t| t.0),
            )
        });
    let containers = status.container_statuses.unwrap_or_default();
    let waiting = containers.iter().find_map(|c| {
        let w = c.state.as_ref()?.waiting.as_ref()?;
        let reason = w.reason.clone().unwrap_or_default();
        (!reason.is_empty() && reason != "ContainerCreating" && reason != "PodInitializing").then(|| {
            (
                c.name.clone(),
                reason,
                w.message.clone().unwrap_or_default(),
                c.image.clone(),
            )
        })
    });
    let terminated = containers.iter().find_map(|c| {
        let t = c
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .or_else(|| c.last_state.as_ref().and_then(|s| s.terminated.as_ref()))?;
        Some(Terminated {
            container: c.name.clone(),
            reason: t.reason.clone().unwrap_or_default(),
            exit_code: t.exit_code,
            message: t.message.clone().unwrap_or_default(),
        })
    });
    PodObs {
        name: p.name_any(),
        download: p.tags.component.as_deref() == Some(COMPONENT_DOWNLOAD),
        version: p.tags.version(),
        phase: status.phase.unwrap_or_else(|| "Pending".to_owned()),
        ready,
        deleting: p.metadata.deletion_timestamp.is_some(),
        created: p.metadata.creation_timestamp.as_ref().map(|t| t.0),
        unschedulable,
        waiting,
        terminated,
        restarts: containers.iter().map(|c| c.restart_count).max().unwrap_or(0),
        warning: None,
    }
}

/// Summarises the serving Deployment.
pub fn deployment(d: &CachedDeployment) -> DeploymentObs {
    DeploymentObs {
        version: d
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.version.as_deref())
            .and_then(|v| v.parse().ok()),
        spec_hash: d.tags.spec_hash.clone(),
        ready_replicas: d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0),
        deleting: d.metadata.deletion_timestamp.is_some(),
        stalled: d
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|conditions| {
                let found = |type_: &str, status: &str| {
                    conditions
                        .iter()
                        .find(|c| c.type_ == type_ && c.status == status)
                        .map(|c| {
                            (
                                c.reason.clone().unwrap_or_default(),
                                c.message.clone().unwrap_or_default(),
                            )
                        })
                };
                found("ReplicaFailure", "True").or_else(|| {
                    found("Progressing", "False").filter(|(reason, _)| reason == "ProgressDeadlineExceeded")
                })
            }),
    }
}

/// Summarises the Service (its metadata is all that is needed).
pub fn service<K: Resource<DynamicType = ()>>(s: &K) -> ServiceObs {
    ServiceObs {
        spec_hash: s.annotations().get(SPEC_HASH_ANNOTATION).cloned(),
        deleting: s.meta().deletion_timestamp.is_some(),
    }
}

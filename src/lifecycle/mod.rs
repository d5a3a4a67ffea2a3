//! The pure lifecycle core: given a model and what is observed of its children, [`decide`]
//! returns the actions to take and the status to report. No client, no clock, no I/O: the
//! model actor executes the actions and feeds the results back as new observations.

pub mod cached;
mod deletion;
mod download;
pub mod observe;
mod pods;
mod report;
mod serving;
mod storage;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Service};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::api::{FINALIZER, MLModel, MLModelStatus, Phase};
use crate::resources::{self, BuildSettings, quantity_bytes};
pub use observe::{Observed, PodObs};
use report::{Report, Wakeup};
use storage::Storage;

/// Tunables of the lifecycle, with the defaults the operator's flags document.
#[derive(Clone, Debug)]
pub struct Settings {
    /// What the builders need.
    pub build: BuildSettings,
    /// How long a pod may stay unschedulable before the model is Failed.
    pub unschedulable_grace: Duration,
    /// How long an image may fail to pull before the model is Failed.
    pub image_pull_grace: Duration,
    /// Restarts of a crash-looping container before the model is Failed.
    pub crash_loop_restarts: i32,
    /// How long deletion waits for children before it forces them.
    pub force_delete_after: Duration,
    /// How long a claim's provisioning, or a pod's volume mount, may keep failing before the
    /// model is Failed.
    pub storage_grace: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            build: BuildSettings::default(),
            unschedulable_grace: Duration::from_secs(30),
            image_pull_grace: Duration::from_secs(120),
            crash_loop_restarts: 3,
            force_delete_after: Duration::from_secs(60),
            storage_grace: Duration::from_secs(120),
        }
    }
}

/// A child the actor can delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChildRef {
    /// The PersistentVolumeClaim.
    Pvc(String),
    /// A download Job (its pods go with it).
    Job(String),
    /// The serving Deployment.
    Deployment(String),
    /// The Service.
    Service(String),
    /// A pod.
    Pod(String),
}

/// One effect for the actor to carry out.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Add the cleanup finalizer to the model.
    AddFinalizer,
    /// Remove the cleanup finalizer, letting the model go.
    RemoveFinalizer,
    /// Server-side apply the PVC.
    ApplyPvc(Box<PersistentVolumeClaim>),
    /// Server-side apply the existing PVC with a larger storage request, to expand it. A
    /// refusal (a StorageClass that cannot expand) is reported, never a failure of the model.
    ResizePvc(Box<PersistentVolumeClaim>),
    /// Server-side apply a download Job.
    ApplyJob(Box<Job>),
    /// Server-side apply the serving Deployment.
    ApplyDeployment(Box<Deployment>),
    /// Server-side apply the Service.
    ApplyService(Box<Service>),
    /// Delete a child.
    Delete(ChildRef),
    /// Remove a stuck child's finalizers and delete it with no grace period.
    ForceDelete(ChildRef),
}

/// What [`decide`] returns.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Effects, in order.
    pub actions: Vec<Action>,
    /// The status to report.
    pub status: MLModelStatus,
    /// Wake the actor after this long even if nothing changes (a grace period ends).
    pub requeue_after: Option<Duration>,
}

/// A spec the schema could not reject but the operator cannot act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidSpec {
    /// The field, e.g. `spec.storageSize`.
    pub field: &'static str,
    /// Why.
    pub message: String,
}

/// Checks what the CRD schema cannot.
pub fn validate(model: &MLModel) -> Result<(), InvalidSpec> {
    let spec = &model.spec;
    match (&spec.model_url, &spec.model_url_from) {
        (Some(url), None) => validate_url(url)?,
        // The URL is in a Secret the operator never reads; the downloader checks it.
        (None, Some(_)) => {}
        _ => {
            return Err(InvalidSpec {
                field: "spec.modelURL",
                message: "exactly one of spec.modelURL and spec.modelURLFrom must be set".into(),
            });
        }
    }
    if quantity_bytes(&spec.storage_size) == Some(0) {
        return Err(InvalidSpec {
            field: "spec.storageSize",
            message: "must be greater than zero".into(),
        });
    }
    if let Some(image) = spec.runtime.as_ref().and_then(|r| r.image.as_ref())
        && (image.chars().any(char::is_whitespace) || image.starts_with('-'))
    {
        return Err(InvalidSpec {
            field: "spec.runtime.image",
            message: format!("{image:?} is not an image reference"),
        });
    }
    Ok(())
}

fn validate_url(raw: &str) -> Result<(), InvalidSpec> {
    let url = url::Url::parse(raw).map_err(|e| InvalidSpec {
        field: "spec.modelURL",
        message: format!("not a valid URL: {e}"),
    })?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(InvalidSpec {
            field: "spec.modelURL",
            message: format!("{} URL needs a host or bucket", url.scheme()),
        });
    }
    if matches!(url.scheme(), "s3" | "gs") && url.path().trim_start_matches('/').is_empty() {
        return Err(InvalidSpec {
            field: "spec.modelURL",
            message: "object URL needs a key after the bucket".into(),
        });
    }
    if url.username() != "" || url.password().is_some() {
        return Err(InvalidSpec {
            field: "spec.modelURL",
            message: "credentials must not be embedded in the URL; reference a Secret in spec.credentials".into(),
        });
    }
    Ok(())
}

/// The artifact version the current spec needs: a version already downloaded (or downloading)
/// from the same source is reused, otherwise the model's generation.
pub fn target_version(model: &MLModel, observed: &Observed) -> i64 {
    let source = resources::source_digest(model);
    let generation = model.metadata.generation.unwrap_or(1);
    let serving = model.status.as_ref().and_then(|s| s.serving.as_ref());
    let candidates = observed
        .jobs
        .iter()
        .filter(|j| j.source.as_deref() == Some(&source) && j.failed.is_none())
        .map(|j| j.version)
        .chain(
            serving
                .filter(|s| s.source.as_deref() == Some(&source))
                .map(|s| s.generation),
        );
    candidates.max().unwrap_or(generation)
}

/// Reasons reported in conditions, Events and `lastFailure`.
pub mod reason {
    /// The spec cannot be acted on.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The model actor failed repeatedly.
    pub const CONTROLLER_ERROR: &str = "ControllerError";
    /// The model's volume lost its PersistentVolume.
    pub const VOLUME_LOST: &str = "VolumeLost";
    /// The model's claim cannot be provisioned (its provisioner's `ProvisioningFailed`).
    pub const STORAGE_UNAVAILABLE: &str = "StorageUnavailable";
    /// The model's claim was deleted while the model lives; it starts again on a new claim.
    pub const VOLUME_DELETED: &str = "VolumeDeleted";
    /// The kubelet cannot mount a pod's volume (its `FailedMount` Event).
    pub const FAILED_MOUNT: &str = "FailedMount";
    /// The kubelet cannot attach a pod's volume to its node (its `FailedAttachVolume` Event).
    pub const FAILED_ATTACH_VOLUME: &str = "FailedAttachVolume";
    /// The kubelet cannot create a pod's sandbox (its `FailedCreatePodSandBox` Event).
    pub const FAILED_CREATE_POD_SANDBOX: &str = "FailedCreatePodSandBox";
    /// A write was refused with 403 for want of a permission (RBAC or an admission policy
    /// that names no other cause).
    pub const FORBIDDEN: &str = "Forbidden";
    /// A write was refused because it would exceed a ResourceQuota.
    pub const QUOTA_EXCEEDED: &str = "QuotaExceeded";
    /// A write was refused by an admission check: a LimitRange, a validating admission policy
    /// or webhook, Pod Security admission.
    pub const ADMISSION_DENIED: &str = "AdmissionDenied";
    /// A write was refused because the namespace is being deleted.
    pub const NAMESPACE_TERMINATING: &str = "NamespaceTerminating";
    /// A spec change could not be rolled out; the previous version keeps serving.
    pub const UPDATE_FAILED: &str = "UpdateFailed";
    /// The download Job failed.
    pub const DOWNLOAD_FAILED: &str = "DownloadFailed";
    /// The serving pods cannot be scheduled.
    pub const UNSCHEDULABLE: &str = "Unschedulable";
    /// An object with a child's name exists and the model does not own it.
    pub const RESOURCE_EXISTS: &str = "ResourceExists";
    /// Children of a deleted model of the same name are still being removed.
    pub const WAITING_FOR_PREVIOUS_MODEL: &str = "WaitingForPreviousModel";
    /// A container's image cannot be pulled.
    pub const IMAGE_PULL_BACK_OFF: &str = "ImagePullBackOff";
    /// A serving container keeps exiting.
    pub const CRASH_LOOP_BACK_OFF: &str = "CrashLoopBackOff";
    /// A serving container ran out of memory.
    pub const OOM_KILLED: &str = "OOMKilled";
    /// A serving pod failed for good.
    pub const POD_FAILED: &str = "PodFailed";
    /// The Deployment cannot create the serving pods, for a cause other than a quota or an
    /// admission check (its `ReplicaFailure` condition's reason).
    pub const FAILED_CREATE: &str = "FailedCreate";
    /// The Deployment's rollout passed its progress deadline (its `Progressing` condition).
    pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
    /// `StorageResized`: the claim is being expanded to the new `storageSize`.
    pub const RESIZING: &str = "Resizing";
    /// `StorageResized`: the claim has the size `storageSize` asks for.
    pub const RESIZED: &str = "Resized";
    /// `StorageResized`: the API server refused to expand the claim (its StorageClass does
    /// not allow expansion, for one); the model goes on with the volume it has.
    pub const EXPANSION_REFUSED: &str = "ExpansionRefused";

    /// Every reason a failure can carry (besides a kubelet's own waiting reason, passed
    /// through): README's troubleshooting table has one row for each, and a test holds the two
    /// together.
    pub const FAILURES: &[&str] = &[
        INVALID_SPEC,
        DOWNLOAD_FAILED,
        UNSCHEDULABLE,
        IMAGE_PULL_BACK_OFF,
        CRASH_LOOP_BACK_OFF,
        OOM_KILLED,
        POD_FAILED,
        FAILED_CREATE,
        PROGRESS_DEADLINE_EXCEEDED,
        VOLUME_LOST,
        STORAGE_UNAVAILABLE,
        FAILED_MOUNT,
        FAILED_ATTACH_VOLUME,
        FAILED_CREATE_POD_SANDBOX,
        QUOTA_EXCEEDED,
        ADMISSION_DENIED,
        NAMESPACE_TERMINATING,
        FORBIDDEN,
        CONTROLLER_ERROR,
        RESOURCE_EXISTS,
        UPDATE_FAILED,
    ];
}

/// The reason for a write the API server refused with 403, from its message: quota,
/// admission (LimitRange, admission policies and webhooks, Pod Security), a namespace being
/// deleted, or else a missing permission.
pub fn refusal_reason(message: &str) -> &'static str {
    let m = message.to_ascii_lowercase();
    if m.contains("exceeded quota") || m.contains("must specify limits") || m.contains("must specify requests") {
        reason::QUOTA_EXCEEDED
    } else if m.contains("because it is being terminated") {
        reason::NAMESPACE_TERMINATING
    } else if m.contains("validatingadmissionpolicy")
        || m.contains("admission webhook")
        || m.contains("violates podsecurity")
        || m.contains(" per container ")
        || m.contains(" per pod ")
        || m.contains(" per persistentvolumeclaim ")
        || m.contains("denied the request")
    {
        reason::ADMISSION_DENIED
    } else {
        reason::FORBIDDEN
    }
}

/// The status of a model that failed for `reason` outside the core's own decisions (the API
/// server rejected a child, or the model's actor kept failing).
pub fn failed_status(model: &MLModel, reason: &str, message: &str, now: Timestamp) -> MLModelStatus {
    let mut report = Report::new(model, now, &Settings::default());
    report.fail(reason, message.to_owned());
    report.into_decision(Vec::new(), None).status
}

/// What the stages build together: the status, the actions and the earliest wake-up.
pub(crate) struct Plan {
    report: Report,
    actions: Vec<Action>,
    requeue: Wakeup,
}

impl Plan {
    fn into_decision(self) -> Decision {
        self.report.into_decision(self.actions, self.requeue.0)
    }
}

/// Computes the actions and status for `model` given what is observed: the stages storage,
/// download and serving in turn, or deletion.
pub fn decide(model: &MLModel, observed: &Observed, settings: &Settings) -> Decision {
    let report = Report::new(model, observed.now, settings);
    let has_finalizer = model.finalizers().iter().any(|f| f == FINALIZER);

    if let Some(deleted_at) = model.metadata.deletion_timestamp.as_ref().map(|t| t.0) {
        return deletion::terminate(model, observed, settings, deleted_at, has_finalizer, report);
    }
    let mut plan = Plan {
        report,
        actions: Vec::new(),
        requeue: Wakeup::default(),
    };
    if !has_finalizer {
        plan.actions.push(Action::AddFinalizer);
    }
    if let Err(invalid) = validate(model) {
        plan.report
            .fail(reason::INVALID_SPEC, format!("{}: {}", invalid.field, invalid.message));
        serving::availability(observed, &mut plan);
        return plan.into_decision();
    }
    // A model whose actor kept failing stays Failed until its spec changes.
    if plan.report.failed_for_this_generation(reason::CONTROLLER_ERROR) {
        return Decision {
            actions: plan.actions,
            status: plan.report.previous.clone(),
            requeue_after: None,
        };
    }

    // Never adopt: an object with a child's name that this model does not own is left as it
    // is, and the model says which one (it recovers once the name is free).
    if !observed.foreign.is_empty() {
        let message = format!(
            "{} already exist(s) and is not owned by this MLModel; delete or rename it",
            observed.foreign.join(", ")
        );
        plan.report.fail(reason::RESOURCE_EXISTS, message);
        serving::availability(observed, &mut plan);
        return plan.into_decision();
    }
    if !observed.previous_owner.is_empty() {
        let message = format!(
            "waiting for {} of a deleted MLModel named {} to be removed",
            observed.previous_owner.join(", "),
            model.name_any()
        );
        plan.report
            .phase(Phase::Pending, reason::WAITING_FOR_PREVIOUS_MODEL, message);
        return plan.into_decision();
    }
    let storage = storage::storage(model, observed, settings, &mut plan);
    if matches!(storage, Storage::Failed | Storage::Deleted) {
        return plan.into_decision();
    }
    let version = target_version(model, observed);
    if !download::download(model, observed, settings, version, &mut plan) {
        serving::serving_of_previous_version(model, observed, &mut plan);
        if let Storage::Unbound(message) = storage
            && plan.report.status.phase == Some(Phase::Downloading)
        {
            plan.report.phase(Phase::CreatingStorage, "CreatingStorage", message);
        }
        return plan.into_decision();
    }
    serving::serve(model, observed, settings, version, &mut plan);
    plan.into_decision()
}

/// A Kubernetes Event to record on the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventNote {
    /// `Normal` or `Warning`.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable note.
    pub note: String,
}

/// The Event a status change deserves: one per phase change or new failure.
pub fn transition_event(old: Option<&MLModelStatus>, new: &MLModelStatus) -> Option<EventNote> {
    let old_phase = old.and_then(|s| s.phase);
    let new_failure = new
        .last_failure
        .as_ref()
        .filter(|f| old.and_then(|o| o.last_failure.as_ref()) != Some(*f));
    if matches!(new.phase, Some(Phase::Failed | Phase::UpdateFailed))
        && let Some(f) = new_failure
    {
        return Some(EventNote {
            warning: true,
            reason: f.reason.clone(),
            note: f.message.clone(),
        });
    }
    // A volume deleted under the model takes it down until it is served again: a warning,
    // whatever the phase was.
    let ready_reason = |s: &MLModelStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.reason.clone())
    };
    if ready_reason(new).as_deref() == Some(reason::VOLUME_DELETED)
        && old.and_then(ready_reason).as_deref() != Some(reason::VOLUME_DELETED)
    {
        return Some(EventNote {
            warning: true,
            reason: reason::VOLUME_DELETED.to_owned(),
            note: new.message.clone().unwrap_or_default(),
        });
    }
    if old_phase == new.phase {
        return None;
    }
    let phase = new.phase?;
    Some(EventNote {
        warning: false,
        reason: phase.as_str().to_owned(),
        note: new.message.clone().unwrap_or_else(|| phase.as_str().to_owned()),
    })
}

#[cfg(test)]
mod tests;

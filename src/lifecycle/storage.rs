//! Stage one of [`super::decide`]: the model's volume claim.

use kube::ResourceExt;

use super::observe::PvcObs;
use super::pods::elapsed;
use super::{Action, ChildRef, Observed, Plan, Settings, reason, serving};
use crate::api::{MLModel, Phase};
use crate::resources;

/// Where the model's volume stands.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Storage {
    /// Bound: the download can use it.
    Bound,
    /// Requested or not bound yet, with what the model waits for.
    Unbound(String),
    /// The claim lost its volume, or its volume cannot be provisioned: the model is Failed.
    Failed,
    /// The claim was deleted while the model lives: its pods are stopped so that it can go,
    /// and the model starts again on a new claim.
    Deleted,
}

/// Requests the claim when it is missing, and reports a claim that cannot be provisioned, a
/// lost volume, or a claim deleted under the model.
pub(super) fn storage(model: &MLModel, observed: &Observed, settings: &Settings, plan: &mut Plan) -> Storage {
    let name = resources::pvc_name(&model.name_any());
    match &observed.pvc {
        // The claim and the download Job are created together: the Job's pod waits for the
        // claim to bind, and no round trip is spent waiting for it here.
        None => {
            plan.actions
                .push(Action::ApplyPvc(Box::new(resources::persistent_volume_claim(model))));
            Storage::Unbound("creating the model's volume".to_owned())
        }
        Some(pvc) if pvc.deleting => {
            deleted(model, observed, plan);
            Storage::Deleted
        }
        Some(pvc) if pvc.phase == "Lost" => {
            let message = format!("volume {name} lost its PersistentVolume; delete the claim to have it re-created");
            plan.report.downloaded(false, reason::VOLUME_LOST, &message);
            plan.report.fail(reason::VOLUME_LOST, message);
            Storage::Failed
        }
        Some(pvc) if pvc.phase != "Bound" => {
            plan.report.claim_uid = pvc.uid.clone();
            // A provisioner that reports failures may still succeed on a retry (a StorageClass
            // created late, a backend back up): failed only once it has failed for the grace.
            let failing = pvc.warning.as_ref().filter(|w| w.reason == "ProvisioningFailed");
            match failing {
                Some(w) => {
                    let since = w.first.or(pvc.created).unwrap_or(observed.now);
                    let waited = elapsed(since, observed.now);
                    if waited >= settings.storage_grace {
                        let message = format!("volume {name} cannot be provisioned: {}", w.message);
                        plan.report.downloaded(false, reason::STORAGE_UNAVAILABLE, &message);
                        plan.report.fail(reason::STORAGE_UNAVAILABLE, message);
                        serving::availability(observed, plan);
                        return Storage::Failed;
                    }
                    plan.requeue.at(settings.storage_grace - waited);
                    Storage::Unbound(format!(
                        "waiting for volume {name} to be provisioned (it is {}); the provisioner retries after: {}",
                        pvc.phase, w.message
                    ))
                }
                None => Storage::Unbound(format!("waiting for volume {name} to be bound (it is {})", pvc.phase)),
            }
        }
        Some(pvc) => {
            plan.report.claim_uid = pvc.uid.clone();
            resize(model, pvc, observed.resize_refused.as_ref(), plan);
            Storage::Bound
        }
    }
}

/// The claim was deleted while the model lives. Its `kubernetes.io/pvc-protection` finalizer
/// holds it while pods mount it: the serving Deployment and the download Jobs are deleted so
/// that it can go, and the next reconcile makes a new claim and downloads into it.
fn deleted(model: &MLModel, observed: &Observed, plan: &mut Plan) {
    let name = resources::pvc_name(&model.name_any());
    if observed.deployment.as_ref().is_some_and(|d| !d.deleting) {
        plan.actions
            .push(Action::Delete(ChildRef::Deployment(resources::deployment_name(
                &model.name_any(),
            ))));
    }
    for job in observed.jobs.iter().filter(|j| !j.deleting) {
        plan.actions.push(Action::Delete(ChildRef::Job(job.name.clone())));
    }
    let message = format!(
        "volume {name} was deleted: the model's pods are stopped so that it can go, then the model is downloaded \
         into a new volume and served again"
    );
    let report = &mut plan.report;
    report.status.serving = None;
    report.status.service_endpoint = None;
    report.downloaded(false, reason::VOLUME_DELETED, &message);
    report.available(false, reason::VOLUME_DELETED, &message);
    report.phase(Phase::CreatingStorage, reason::VOLUME_DELETED, message);
}

/// Grows the bound claim to a larger `storageSize` (the schema refuses a smaller one), and
/// says in the `StorageResized` condition how that goes: asked, refused by the API server
/// (the model goes on with the volume it has), waiting for the volume to grow, done.
fn resize(model: &MLModel, pvc: &PvcObs, refused: Option<&(String, String)>, plan: &mut Plan) {
    let wanted = &model.spec.storage_size;
    let bytes = |q: Option<&String>| q.and_then(|q| resources::quantity_bytes(q));
    let (Some(wanted_bytes), Some(requested_bytes)) = (bytes(Some(wanted)), bytes(pvc.requested.as_ref())) else {
        return;
    };
    let requested = pvc.requested.as_deref().unwrap_or_default();
    let capacity = pvc.capacity.as_deref().unwrap_or(requested);
    let name = resources::pvc_name(&model.name_any());
    let report = &mut plan.report;
    if wanted_bytes > requested_bytes {
        match refused.filter(|(size, _)| size == wanted) {
            Some((_, message)) => report.condition(
                CONDITION,
                false,
                reason::EXPANSION_REFUSED,
                &format!("volume {name} stays at {capacity}: expanding it to {wanted} was refused: {message}"),
            ),
            None => {
                plan.actions
                    .push(Action::ResizePvc(Box::new(resources::persistent_volume_claim(model))));
                report.condition(
                    CONDITION,
                    false,
                    reason::RESIZING,
                    &format!("expanding volume {name} from {requested} to {wanted}"),
                );
            }
        }
    } else if bytes(Some(&capacity.to_owned())).is_some_and(|c| c < requested_bytes) {
        report.condition(
            CONDITION,
            false,
            reason::RESIZING,
            &format!("volume {name} has {capacity} of the {requested} asked for; the storage provider is expanding it"),
        );
    } else if report.status.conditions.iter().any(|c| c.type_ == CONDITION) {
        report.condition(
            CONDITION,
            true,
            reason::RESIZED,
            &format!("volume {name} has {capacity}"),
        );
    }
}

/// The condition an expansion of the model's volume is reported in.
pub const CONDITION: &str = "StorageResized";

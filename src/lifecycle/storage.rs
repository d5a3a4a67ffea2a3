//! Stage one of [`super::decide`]: the model's volume claim.

use kube::ResourceExt;

use super::observe::PvcObs;
use super::{Action, Observed, Plan, reason};
use crate::api::MLModel;
use crate::resources;

/// Where the model's volume stands.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Storage {
    /// Bound: the download can use it.
    Bound,
    /// Requested or not bound yet, with what the model waits for.
    Unbound(String),
    /// The claim lost its volume: the model is Failed.
    Lost,
}

/// Requests the claim when it is missing and reports a lost volume.
pub(super) fn storage(model: &MLModel, observed: &Observed, plan: &mut Plan) -> Storage {
    match &observed.pvc {
        // The claim and the download Job are created together: the Job's pod waits for the
        // claim to bind, and no round trip is spent waiting for it here.
        None => {
            plan.actions
                .push(Action::ApplyPvc(Box::new(resources::persistent_volume_claim(model))));
            Storage::Unbound("creating the model's volume".to_owned())
        }
        Some(pvc) if pvc.phase == "Lost" => {
            let message = format!(
                "volume {} lost its PersistentVolume; delete the claim to have it re-created",
                resources::pvc_name(&model.name_any())
            );
            plan.report.downloaded(false, reason::VOLUME_LOST, &message);
            plan.report.fail(reason::VOLUME_LOST, message);
            Storage::Lost
        }
        Some(pvc) if pvc.phase != "Bound" => Storage::Unbound(format!(
            "waiting for volume {} to be bound (it is {})",
            resources::pvc_name(&model.name_any()),
            pvc.phase
        )),
        Some(pvc) => {
            if !pvc.deleting {
                resize(model, pvc, observed.resize_refused.as_ref(), plan);
            }
            Storage::Bound
        }
    }
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

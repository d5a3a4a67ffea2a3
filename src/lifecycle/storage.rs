//! Stage one of [`super::decide`]: the model's volume claim.

use kube::ResourceExt;

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
        Some(_) => Storage::Bound,
    }
}

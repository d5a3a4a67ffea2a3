//! The deletion stage of [`super::decide`]: children asked to go, forced after a grace period,
//! then the finalizer released.

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::pods::elapsed;
use super::report::Report;
use super::{Action, ChildRef, Decision, Observed, Settings};
use crate::api::{MLModel, Phase};
use crate::resources;

/// Deletes the children of a model being deleted and releases the finalizer once they are gone
/// (or forced).
pub(super) fn terminate(
    model: &MLModel,
    observed: &Observed,
    settings: &Settings,
    deleted_at: Timestamp,
    has_finalizer: bool,
    mut report: Report,
) -> Decision {
    let name = model.name_any();
    let mut actions = Vec::new();
    if !has_finalizer {
        return Decision {
            actions,
            status: report.previous.clone(),
            requeue_after: None,
        };
    }
    let mut children = Vec::new();
    if let Some(d) = &observed.deployment {
        children.push((ChildRef::Deployment(resources::deployment_name(&name)), d.deleting));
    }
    if let Some(s) = &observed.service {
        children.push((ChildRef::Service(resources::service_name(&name)), s.deleting));
    }
    children.extend(
        observed
            .jobs
            .iter()
            .map(|j| (ChildRef::Job(j.name.clone()), j.deleting)),
    );
    children.extend(
        observed
            .pods
            .iter()
            .map(|p| (ChildRef::Pod(p.name.clone()), p.deleting)),
    );
    if let Some(p) = &observed.pvc {
        children.push((ChildRef::Pvc(resources::pvc_name(&name)), p.deleting));
    }
    if children.is_empty() {
        actions.push(Action::RemoveFinalizer);
        report.phase(Phase::Terminating, "Deleted", "every child is gone".into());
        return report.into_decision(actions, None);
    }
    let waited = elapsed(deleted_at, observed.now);
    if waited >= settings.force_delete_after {
        actions.extend(children.into_iter().map(|(c, _)| Action::ForceDelete(c)));
        actions.push(Action::RemoveFinalizer);
        report.phase(
            Phase::Terminating,
            "ForcedDeletion",
            "children did not go away in time and were forced".into(),
        );
        return report.into_decision(actions, None);
    }
    let remaining: Vec<String> = children.iter().map(|(c, _)| child_label(c)).collect();
    actions.extend(
        children
            .into_iter()
            .filter(|(c, deleting)| !deleting && !matches!(c, ChildRef::Pod(_)))
            .map(|(c, _)| Action::Delete(c)),
    );
    report.phase(
        Phase::Terminating,
        "Terminating",
        format!("waiting for {} to be deleted", remaining.join(", ")),
    );
    let requeue = settings.force_delete_after.saturating_sub(waited);
    report.into_decision(actions, Some(requeue))
}

pub(super) fn child_label(c: &ChildRef) -> String {
    match c {
        ChildRef::Pvc(n) => format!("persistentvolumeclaim/{n}"),
        ChildRef::Job(n) => format!("job/{n}"),
        ChildRef::Deployment(n) => format!("deployment/{n}"),
        ChildRef::Service(n) => format!("service/{n}"),
        ChildRef::Pod(n) => format!("pod/{n}"),
    }
}

//! Stage three of [`super::decide`]: the serving Deployment, the Service, and readiness.

use kube::ResourceExt;

use super::observe::DeploymentObs;
use super::pods::{Problem, diagnose};
use super::{Action, ChildRef, Observed, Plan, PodObs, Settings, reason};
use crate::api::{MLModel, Phase};
use crate::resources;

/// Applies the Deployment and Service of `version` (on the volume) and reports how many of
/// its pods serve, or why they do not.
pub(super) fn serve(model: &MLModel, observed: &Observed, settings: &Settings, version: i64, plan: &mut Plan) {
    let Plan {
        report,
        actions,
        requeue,
    } = plan;
    let desired = resources::with_spec_hash(resources::serving_deployment(model, version));
    let up_to_date = observed
        .deployment
        .as_ref()
        .is_some_and(|d| d.spec_hash.as_ref() == resources::spec_hash(&desired));
    if !up_to_date {
        actions.push(Action::ApplyDeployment(Box::new(desired)));
    }
    expose(model, observed, actions);

    let replicas = model.spec.replicas;
    let current: Vec<&PodObs> = observed
        .pods
        .iter()
        .filter(|p| !p.download && !p.deleting && p.version == Some(version))
        .collect();
    let ready = current.iter().filter(|p| p.ready).count() as i32;
    let old_ready = observed
        .pods
        .iter()
        .filter(|p| !p.download && p.ready && p.version != Some(version))
        .count() as i32;
    report.replicas(ready, replicas);
    let mut problems: Vec<Problem> = current
        .iter()
        .filter_map(|p| diagnose(p, observed.now, settings))
        .collect();
    problems.sort_by(|a, b| a.pod.cmp(&b.pod));
    // What the pods cannot tell: pods the Deployment cannot create, a rollout past its
    // deadline. After the pods' own problems, which are more precise; and only while pods are
    // missing, since the Deployment clears its condition a moment after they come.
    if up_to_date
        && ready < replicas
        && let Some(stalled) = observed.deployment.as_ref().and_then(|d| stalled(model, d))
    {
        problems.push(stalled);
    }
    for after in problems.iter().filter(|p| !p.fatal).filter_map(|p| p.fatal_in) {
        requeue.at(after);
    }
    report.degraded(ready > 0 && !problems.is_empty(), problems.first());

    if replicas == 0 {
        report.available(false, "ScaledToZero", "replicas is 0");
        report.ready(
            version,
            "ScaledToZero",
            "replicas is 0: the model is downloaded and no pod serves it".into(),
        );
    } else if ready >= replicas && up_to_date {
        report.available(
            true,
            "MinimumReplicasAvailable",
            &format!("{ready}/{replicas} serving pods ready"),
        );
        report.ready(
            version,
            "Ready",
            format!("serving version {version}: {ready}/{replicas} pods ready"),
        );
    } else if let Some(fatal) = problems.iter().find(|p| p.fatal).filter(|_| ready == 0) {
        let still = if old_ready > 0 {
            format!("; the previous version still serves on {old_ready} pods")
        } else {
            String::new()
        };
        report.available(old_ready > 0, &fatal.reason, &fatal.message);
        report.fail(&fatal.reason, format!("{}{still}", fatal.message));
        if old_ready > 0 {
            report.status.service_endpoint = report.endpoint.clone();
        }
    } else {
        let detail = match problems.first() {
            Some(p) => format!(": {}", p.message),
            None => String::new(),
        };
        report.available(
            ready + old_ready > 0,
            "Progressing",
            &format!("{ready}/{replicas} serving pods ready"),
        );
        report.phase(
            Phase::Serving,
            problems.first().map_or("Progressing", |p| p.reason.as_str()),
            format!("starting version {version}: {ready}/{replicas} pods ready{detail}"),
        );
        // Pods that are ready serve through the Service whatever else is going on.
        if ready + old_ready > 0 {
            report.status.service_endpoint = report.endpoint.clone();
        }
    }
}

/// While a new version downloads, the previous version's Deployment and Service stay as they
/// are; only a missing Service is restored.
pub(super) fn serving_of_previous_version(model: &MLModel, observed: &Observed, plan: &mut Plan) {
    let Plan { report, actions, .. } = plan;
    if observed.deployment.is_none() {
        report.available(false, "NotServing", "no version has been downloaded yet");
        return;
    }
    expose(model, observed, actions);
    let ready = observed.pods.iter().filter(|p| !p.download && p.ready).count() as i32;
    report.available(
        ready > 0,
        "PreviousVersion",
        &format!("the previous version serves on {ready} pods"),
    );
    if ready > 0 {
        report.status.service_endpoint = report.endpoint.clone();
    }
}

/// Why the Deployment cannot go on, as a problem in the cluster's own words: pods it cannot
/// create (a quota, an admission check: the reason a refused write of the operator's would
/// get; anything else `FailedCreate`), or `ProgressDeadlineExceeded`.
fn stalled(model: &MLModel, deployment: &DeploymentObs) -> Option<Problem> {
    let (why, message) = deployment.stalled.as_ref()?;
    let reason = match why.as_str() {
        reason::PROGRESS_DEADLINE_EXCEEDED => reason::PROGRESS_DEADLINE_EXCEEDED,
        _ => match super::refusal_reason(message) {
            reason::FORBIDDEN => reason::FAILED_CREATE,
            other => other,
        },
    };
    let name = resources::deployment_name(&model.name_any());
    Some(Problem {
        pod: name.clone(),
        reason: reason.to_owned(),
        message: format!("deployment {name}: {why}: {message}"),
        fatal: true,
        fatal_in: None,
    })
}

/// `Available` when the spec cannot be acted on: whatever serves now goes on serving.
pub(super) fn availability(observed: &Observed, plan: &mut Plan) {
    let ready = observed.pods.iter().filter(|p| !p.download && p.ready).count();
    if ready > 0 {
        plan.report.available(
            true,
            "PreviousVersion",
            &format!("the previous version serves on {ready} pods"),
        );
    } else {
        plan.report.available(false, "NotServing", "no pod serves the model");
    }
}

fn expose(model: &MLModel, observed: &Observed, actions: &mut Vec<Action>) {
    let desired = resources::with_spec_hash(resources::service(model));
    match (&observed.service, model.spec.expose) {
        (Some(s), true) if s.spec_hash.as_ref() == resources::spec_hash(&desired) => {}
        (_, true) => actions.push(Action::ApplyService(Box::new(desired))),
        (Some(s), false) if !s.deleting => actions.push(Action::Delete(ChildRef::Service(resources::service_name(
            &model.name_any(),
        )))),
        (_, false) => {}
    }
}

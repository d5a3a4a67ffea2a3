//! Stage two of [`super::decide`]: the download Job of the version the spec needs.

use kube::ResourceExt;

use super::observe::JobObs;
use super::pods::{Problem, diagnose, first_line};
use super::{Action, ChildRef, Observed, Plan, PodObs, Settings, observe, reason};
use crate::api::{MLModel, Phase};
use crate::resources::{self, DownloadContext};

/// Creates or follows the download of `version`, deletes Jobs of versions nothing uses, and
/// reports the download's progress or failure. True once `version` is on the volume.
pub(super) fn download(
    model: &MLModel,
    observed: &Observed,
    settings: &Settings,
    version: i64,
    plan: &mut Plan,
) -> bool {
    let Plan {
        report,
        actions,
        requeue,
    } = plan;
    let job = observed.jobs.iter().find(|j| j.version == version);
    for stale in observed.jobs.iter().filter(|j| j.version != version && !j.deleting) {
        let in_use = observed.deployment.as_ref().and_then(|d| d.version) == Some(stale.version);
        if !in_use {
            actions.push(Action::Delete(ChildRef::Job(stale.name.clone())));
        }
    }
    // The volume is the truth: a version counts as downloaded only into the claim that exists
    // now. A Job created before the claim filled another volume; a serving version recorded
    // with another claim's uid was on another volume.
    let pvc = observed.pvc.as_ref();
    let into_this_claim = |j: &&JobObs| match (j.created, pvc.and_then(|p| p.created)) {
        (Some(job), Some(claim)) => job >= claim,
        _ => pvc.is_some(),
    };
    let downloaded = job.filter(into_this_claim).is_some_and(|j| j.succeeded)
        || report.previous.serving.as_ref().is_some_and(|s| {
            s.generation == version
                && pvc.is_some_and(|p| s.claim_uid.is_none() || s.claim_uid == p.uid)
                && job.is_none_or(|j| !j.succeeded || into_this_claim(&j))
        });
    if !downloaded {
        match job {
            Some(j) if j.succeeded => {
                // Succeeded into a claim that is gone: downloaded again once that Job is.
                if !j.deleting {
                    actions.push(Action::Delete(ChildRef::Job(j.name.clone())));
                }
                let message = format!(
                    "volume {} is new: version {version} is downloaded into it again",
                    resources::pvc_name(&model.name_any())
                );
                report.phase(Phase::Downloading, "Downloading", message.clone());
                report.downloaded(false, "Downloading", &message);
            }
            None => {
                // What pods serve stays on the volume; older versions go as this one comes.
                let mut keep_versions: Vec<i64> = observed
                    .deployment
                    .iter()
                    .filter_map(|d| d.version)
                    .chain(observed.pods.iter().filter(|p| !p.download).filter_map(|p| p.version))
                    .collect();
                keep_versions.sort_unstable();
                keep_versions.dedup();
                let ctx = DownloadContext {
                    traceparent: report.previous.traceparent.clone(),
                    keep_versions,
                };
                let job = resources::download_job(model, version, &settings.build, &ctx);
                actions.push(Action::ApplyJob(Box::new(job)));
                report.phase(
                    Phase::Downloading,
                    "Downloading",
                    format!("downloading {}", model.spec.shown_source()),
                );
                report.downloaded(false, "Downloading", "the download Job was created");
            }
            Some(j) if j.failed.is_some() => {
                let message = download_failure_message(j, &observed.pods);
                report.downloaded(false, reason::DOWNLOAD_FAILED, &message);
                report.fail(reason::DOWNLOAD_FAILED, message);
            }
            Some(j) => {
                let pods: Vec<&PodObs> = observed
                    .pods
                    .iter()
                    .filter(|p| p.download && p.version == Some(version))
                    .collect();
                let problem = pods
                    .iter()
                    .filter_map(|p| diagnose(p, observed.now, settings))
                    .min_by_key(|p| p.pod.clone())
                    .or_else(|| pods.is_empty().then(|| cannot_create(j)).flatten());
                match problem {
                    // The scheduler reports an unbound claim until it retries after the
                    // claim binds: that is the storage stage's to judge (a claim that cannot
                    // be provisioned is StorageUnavailable), never a failure of the pod.
                    Some(p) if p.message.contains("unbound immediate PersistentVolumeClaims") => {
                        report.phase(
                            Phase::Downloading,
                            "Downloading",
                            format!("downloading {}", model.spec.shown_source()),
                        );
                        report.downloaded(false, "Downloading", "the download Job is waiting for its volume");
                    }
                    Some(p) if p.fatal => {
                        report.downloaded(false, &p.reason, &p.message);
                        report.fail(&p.reason, format!("download Job {}: {}", j.name, p.message));
                    }
                    Some(p) => {
                        if let Some(after) = p.fatal_in {
                            requeue.at(after);
                        }
                        report.phase(
                            Phase::Downloading,
                            &p.reason,
                            format!("download Job {}: {}", j.name, p.message),
                        );
                        report.downloaded(false, &p.reason, &p.message);
                    }
                    None => {
                        report.phase(
                            Phase::Downloading,
                            "Downloading",
                            format!("downloading {}", model.spec.shown_source()),
                        );
                        report.downloaded(false, "Downloading", "the download Job is running");
                    }
                }
            }
        }
        return false;
    }
    report.downloaded(true, "Downloaded", &format!("version {version} is on the volume"));
    true
}

/// A Job with no pod whose controller reports it cannot create one: a quota, an admission
/// check (the reason a refused write of the operator's would get; anything else
/// `FailedCreate`). The Job controller retries by itself.
fn cannot_create(job: &JobObs) -> Option<Problem> {
    let w = job.warning.as_ref().filter(|w| w.reason == "FailedCreate")?;
    let why = match super::refusal_reason(&w.message) {
        reason::FORBIDDEN => reason::FAILED_CREATE,
        other => other,
    };
    Some(Problem {
        pod: job.name.clone(),
        reason: why.to_owned(),
        message: format!("cannot create its pod: {}", w.message),
        fatal: true,
        fatal_in: None,
    })
}

fn download_failure_message(job: &observe::JobObs, pods: &[PodObs]) -> String {
    // The downloader writes one classified line to its termination log; prefer it over the
    // Job's generic condition. The newest pod of the Job holds the final attempt.
    let line = pods
        .iter()
        .filter(|p| p.download && p.version == Some(job.version))
        .filter_map(|p| {
            p.terminated
                .as_ref()
                .filter(|t| t.exit_code != 0)
                .map(|t| (p.created, t))
        })
        .max_by_key(|(created, _)| *created)
        .map(|(_, t)| first_line(&t.message))
        .filter(|l| !l.is_empty());
    let (reason, message) = job.failed.clone().unwrap_or_default();
    match line {
        Some(line) => format!("download failed: {line}"),
        None => format!("download Job {} failed ({reason}): {message}", job.name),
    }
}

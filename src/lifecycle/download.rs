//! Stage two of [`super::decide`]: the download Job of the version the spec needs.

use super::pods::{diagnose, first_line};
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
    let downloaded = job.is_some_and(|j| j.succeeded)
        || report
            .previous
            .serving
            .as_ref()
            .is_some_and(|s| s.generation == version);
    if !downloaded {
        match job {
            None => {
                let ctx = DownloadContext {
                    traceparent: report.previous.traceparent.clone(),
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
                    .min_by_key(|p| p.pod.clone());
                match problem {
                    Some(p) if p.fatal => {
                        report.downloaded(false, &p.reason, &p.message);
                        report.fail(&p.reason, format!("download Job {}: {}", j.name, p.message));
                    }
                    // The scheduler reports an unbound claim until it retries after the
                    // claim binds; while within the grace period that is not news.
                    Some(p) if p.message.contains("unbound immediate PersistentVolumeClaims") => {
                        if let Some(after) = p.fatal_in {
                            requeue.at(after);
                        }
                        report.phase(
                            Phase::Downloading,
                            "Downloading",
                            format!("downloading {}", model.spec.shown_source()),
                        );
                        report.downloaded(false, "Downloading", "the download Job is waiting for its volume");
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

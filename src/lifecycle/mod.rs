//! The pure lifecycle core: given a model and what is observed of its children, [`decide`]
//! returns the actions to take and the status to report. No client, no clock, no I/O: the
//! model actor executes the actions and feeds the results back as new observations.

pub mod observe;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::api::{FINALIZER, Failure, MLModel, MLModelStatus, Phase, ServingVersion};
use crate::download::redact_url;
use crate::resources::{self, BuildSettings, DownloadContext};
pub use observe::{Observed, PodObs};

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
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            build: BuildSettings::default(),
            unschedulable_grace: Duration::from_secs(30),
            image_pull_grace: Duration::from_secs(120),
            crash_loop_restarts: 3,
            force_delete_after: Duration::from_secs(60),
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
    let url = url::Url::parse(&spec.model_url).map_err(|e| InvalidSpec {
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
    if quantity_is_zero(&spec.storage_size) {
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

fn quantity_is_zero(q: &str) -> bool {
    let digits: String = q.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    digits.parse::<f64>().map(|v| v == 0.0).unwrap_or(false)
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
    /// The operator lacks a permission it needs.
    pub const FORBIDDEN: &str = "Forbidden";
    /// The download Job failed.
    pub const DOWNLOAD_FAILED: &str = "DownloadFailed";
    /// The serving pods cannot be scheduled.
    pub const UNSCHEDULABLE: &str = "Unschedulable";
}

/// The status of a model that failed for `reason` outside the core's own decisions (the API
/// server rejected a child, or the model's actor kept failing).
pub fn failed_status(model: &MLModel, reason: &str, message: &str, now: Timestamp) -> MLModelStatus {
    let mut report = Report::new(model, now, &Settings::default());
    report.fail(reason, message.to_owned());
    report.status
}

/// Computes the actions and status for `model` given what is observed.
pub fn decide(model: &MLModel, observed: &Observed, settings: &Settings) -> Decision {
    let mut report = Report::new(model, observed.now, settings);
    let mut actions = Vec::new();
    let has_finalizer = model.finalizers().iter().any(|f| f == FINALIZER);

    if let Some(deleted_at) = model.metadata.deletion_timestamp.as_ref().map(|t| t.0) {
        return terminate(model, observed, settings, deleted_at, has_finalizer, report);
    }
    if !has_finalizer {
        actions.push(Action::AddFinalizer);
    }
    if let Err(invalid) = validate(model) {
        report.fail(reason::INVALID_SPEC, format!("{}: {}", invalid.field, invalid.message));
        return report.into_decision(actions, None);
    }
    // A model whose actor kept failing stays Failed until its spec changes.
    if report.failed_for_this_generation(reason::CONTROLLER_ERROR) {
        return Decision {
            actions,
            status: report.previous.clone(),
            requeue_after: None,
        };
    }

    // Storage.
    let mut unbound = None;
    match &observed.pvc {
        // The claim and the download Job are created together: the Job's pod waits for the
        // claim to bind, and no round trip is spent waiting for it here.
        None => {
            actions.push(Action::ApplyPvc(Box::new(resources::persistent_volume_claim(model))));
            unbound = Some("creating the model's volume".to_owned());
        }
        Some(pvc) if pvc.phase == "Lost" => {
            let message = format!(
                "volume {} lost its PersistentVolume; delete the claim to have it re-created",
                resources::pvc_name(&model.name_any())
            );
            report.downloaded(false, reason::VOLUME_LOST, &message);
            report.fail(reason::VOLUME_LOST, message);
            return report.into_decision(actions, None);
        }
        Some(pvc) if pvc.phase != "Bound" => {
            unbound = Some(format!(
                "waiting for volume {} to be bound (it is {})",
                resources::pvc_name(&model.name_any()),
                pvc.phase
            ));
        }
        Some(_) => {}
    }

    // Download.
    let version = target_version(model, observed);
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
    let mut requeue = Wakeup::default();
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
                    format!("downloading {}", redact_url(&model.spec.model_url)),
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
                            format!("downloading {}", redact_url(&model.spec.model_url)),
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
                            format!("downloading {}", redact_url(&model.spec.model_url)),
                        );
                        report.downloaded(false, "Downloading", "the download Job is running");
                    }
                }
            }
        }
        serving_of_previous_version(model, observed, &mut report, &mut actions);
        if let Some(message) = unbound.filter(|_| report.status.phase == Some(Phase::Downloading)) {
            report.phase(Phase::CreatingStorage, "CreatingStorage", message);
        }
        return report.into_decision(actions, requeue.0);
    }
    report.downloaded(true, "Downloaded", &format!("version {version} is on the volume"));

    // Serving.
    let desired = resources::with_spec_hash(resources::serving_deployment(model, version));
    let up_to_date = observed
        .deployment
        .as_ref()
        .is_some_and(|d| d.spec_hash.as_ref() == resources::spec_hash(&desired));
    if !up_to_date {
        actions.push(Action::ApplyDeployment(Box::new(desired)));
    }
    expose(model, observed, &mut actions);

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
    report.into_decision(actions, requeue.0)
}

/// While a new version downloads, the previous version's Deployment and Service stay as they
/// are; only a missing Service is restored.
fn serving_of_previous_version(model: &MLModel, observed: &Observed, report: &mut Report, actions: &mut Vec<Action>) {
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

fn terminate(
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

fn child_label(c: &ChildRef) -> String {
    match c {
        ChildRef::Pvc(n) => format!("persistentvolumeclaim/{n}"),
        ChildRef::Job(n) => format!("job/{n}"),
        ChildRef::Deployment(n) => format!("deployment/{n}"),
        ChildRef::Service(n) => format!("service/{n}"),
        ChildRef::Pod(n) => format!("pod/{n}"),
    }
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

fn first_line(s: &str) -> String {
    let line = s.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    line.chars().take(1024).collect()
}

/// Why one pod is not running as it should.
#[derive(Clone, Debug, PartialEq)]
struct Problem {
    pod: String,
    reason: String,
    message: String,
    fatal: bool,
    /// When a grace period will make it fatal; `None` when time alone changes nothing.
    fatal_in: Option<Duration>,
}

fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO)
}

fn diagnose(pod: &PodObs, now: Timestamp, settings: &Settings) -> Option<Problem> {
    let grace = |since: Option<Timestamp>, grace: Duration| {
        let waited = since.map_or(Duration::ZERO, |s| elapsed(s, now));
        (waited >= grace, Some(grace.saturating_sub(waited)))
    };
    let problem = |reason: &str, message: String, (fatal, fatal_in): (bool, Option<Duration>)| Problem {
        pod: pod.name.clone(),
        reason: reason.to_owned(),
        message: format!("pod {}: {message}", pod.name),
        fatal,
        fatal_in,
    };
    if let Some((message, since)) = &pod.unschedulable {
        return Some(problem(
            reason::UNSCHEDULABLE,
            message.clone(),
            grace(since.or(pod.created), settings.unschedulable_grace),
        ));
    }
    let last_exit = pod
        .terminated
        .as_ref()
        .map(|t| {
            let msg = first_line(&t.message);
            let msg = if msg.is_empty() {
                String::new()
            } else {
                format!(": {msg}")
            };
            format!("last exit {} (exit code {}){msg}", t.reason, t.exit_code)
        })
        .unwrap_or_default();
    if let Some((container, reason, message, image)) = &pod.waiting {
        return Some(match reason.as_str() {
            "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull" => problem(
                "ImagePullBackOff",
                format!("container {container} cannot pull image {image}: {reason}: {message}"),
                if reason == "InvalidImageName" {
                    (true, None)
                } else {
                    grace(pod.created, settings.image_pull_grace)
                },
            ),
            "CrashLoopBackOff" => {
                let oom = pod.terminated.as_ref().is_some_and(|t| t.reason == "OOMKilled");
                problem(
                    if oom { "OOMKilled" } else { "CrashLoopBackOff" },
                    format!(
                        "container {container} is crash-looping after {} restarts, {last_exit}",
                        pod.restarts
                    ),
                    (pod.restarts >= settings.crash_loop_restarts, None),
                )
            }
            _ => problem(
                reason,
                format!("container {container} is waiting: {reason}: {message}"),
                grace(pod.created, settings.image_pull_grace),
            ),
        });
    }
    if pod.phase == "Failed" && !pod.download {
        return Some(problem("PodFailed", format!("pod failed, {last_exit}"), (true, None)));
    }
    if pod.terminated.as_ref().is_some_and(|t| t.reason == "OOMKilled") && !pod.ready {
        return Some(problem(
            "OOMKilled",
            format!("container was OOMKilled, {last_exit}"),
            (pod.restarts >= settings.crash_loop_restarts, None),
        ));
    }
    None
}

/// Earliest pending wake-up.
#[derive(Default)]
struct Wakeup(Option<Duration>);

impl Wakeup {
    fn at(&mut self, d: Duration) {
        // A second of slack so the grace period has surely ended when the actor wakes.
        let d = d + Duration::from_secs(1);
        self.0 = Some(self.0.map_or(d, |cur| cur.min(d)));
    }
}

/// Builds the status: phase, message and conditions, keeping transition times of unchanged
/// conditions.
struct Report {
    previous: MLModelStatus,
    status: MLModelStatus,
    generation: i64,
    now: Timestamp,
    source: String,
    model_url: String,
    endpoint: Option<String>,
}

impl Report {
    fn new(model: &MLModel, now: Timestamp, settings: &Settings) -> Self {
        let previous = model.status.clone().unwrap_or_default();
        let generation = model.metadata.generation.unwrap_or(1);
        let status = MLModelStatus {
            observed_generation: Some(generation),
            conditions: previous.conditions.clone(),
            serving: previous.serving.clone(),
            last_failure: previous.last_failure.clone(),
            trace_id: previous.trace_id.clone(),
            traceparent: previous.traceparent.clone(),
            ready_replicas: previous.ready_replicas,
            ready: previous.ready.clone(),
            ..Default::default()
        };
        Self {
            previous,
            status,
            generation,
            now,
            source: resources::source_digest(model),
            model_url: redact_url(&model.spec.model_url),
            endpoint: model
                .spec
                .expose
                .then(|| resources::service_endpoint(model, &settings.build)),
        }
    }

    fn failed_for_this_generation(&self, reason: &str) -> bool {
        self.previous.phase == Some(Phase::Failed)
            && self.previous.observed_generation == Some(self.generation)
            && self.previous.last_failure.as_ref().is_some_and(|f| f.reason == reason)
    }

    fn condition(&mut self, type_: &str, status: bool, reason: &str, message: &str) {
        let status = if status { "True" } else { "False" }.to_owned();
        let reason = if reason.is_empty() { "Unknown" } else { reason };
        let previous = self.status.conditions.iter().find(|c| c.type_ == type_);
        let last_transition_time = match previous {
            Some(c) if c.status == status => c.last_transition_time.clone(),
            _ => Time(self.now),
        };
        let condition = Condition {
            type_: type_.to_owned(),
            status,
            reason: reason.to_owned(),
            message: message.chars().take(32 * 1024).collect(),
            observed_generation: Some(self.generation),
            last_transition_time,
        };
        self.status.conditions.retain(|c| c.type_ != type_);
        self.status.conditions.push(condition);
        self.status.conditions.sort_by_key(|c| condition_rank(&c.type_));
    }

    fn phase(&mut self, phase: Phase, reason: &str, message: String) {
        self.condition("Ready", phase == Phase::Ready, reason, &message);
        self.status.phase = Some(phase);
        self.status.message = Some(message);
    }

    fn fail(&mut self, reason: &str, message: String) {
        let same = self
            .previous
            .last_failure
            .as_ref()
            .filter(|f| f.reason == reason && f.message == message)
            .filter(|_| self.previous.phase == Some(Phase::Failed));
        let time = same.map_or(Time(self.now), |f| f.time.clone());
        self.status.last_failure = Some(Failure {
            reason: reason.to_owned(),
            message: message.clone(),
            time,
        });
        self.phase(Phase::Failed, reason, message);
    }

    fn downloaded(&mut self, done: bool, reason: &str, message: &str) {
        self.condition("Downloaded", done, reason, message);
    }

    fn available(&mut self, available: bool, reason: &str, message: &str) {
        self.condition("Available", available, reason, message);
    }

    fn degraded(&mut self, degraded: bool, problem: Option<&Problem>) {
        if degraded {
            let (reason, message) = problem.map_or(("Degraded", ""), |p| (p.reason.as_str(), p.message.as_str()));
            self.condition("Degraded", true, reason, message);
        } else if self.status.conditions.iter().any(|c| c.type_ == "Degraded") {
            let reason = if problem.is_some() {
                "NoReplicaReady"
            } else {
                "AllReplicasHealthy"
            };
            self.condition("Degraded", false, reason, "");
        }
    }

    fn replicas(&mut self, ready: i32, desired: i32) {
        self.status.ready_replicas = Some(ready);
        self.status.ready = Some(format!("{ready}/{desired}"));
    }

    fn ready(&mut self, version: i64, reason: &str, message: String) {
        self.status.serving = Some(ServingVersion {
            generation: version,
            model_url: self.model_url.clone(),
            source: Some(self.source.clone()),
        });
        self.status.service_endpoint = self.endpoint.clone();
        self.phase(Phase::Ready, reason, message);
    }

    fn into_decision(self, actions: Vec<Action>, requeue_after: Option<Duration>) -> Decision {
        Decision {
            actions,
            status: self.status,
            requeue_after,
        }
    }
}

fn condition_rank(type_: &str) -> usize {
    ["Ready", "Downloaded", "Available", "Degraded"]
        .iter()
        .position(|t| *t == type_)
        .unwrap_or(usize::MAX)
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
    if new.phase == Some(Phase::Failed)
        && let Some(f) = new_failure
    {
        return Some(EventNote {
            warning: true,
            reason: f.reason.clone(),
            note: f.message.clone(),
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

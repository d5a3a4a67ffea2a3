//! The status a decision reports: phase, message and conditions, built stage by stage.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::pods::Problem;
use super::{Action, Decision, Settings, reason};
use crate::api::{Failure, MLModel, MLModelStatus, Phase, ServingVersion};
use crate::resources;

/// Earliest pending wake-up.
#[derive(Default)]
pub(super) struct Wakeup(pub Option<Duration>);

impl Wakeup {
    pub(super) fn at(&mut self, d: Duration) {
        // A second of slack so the grace period has surely ended when the actor wakes.
        let d = d + Duration::from_secs(1);
        self.0 = Some(self.0.map_or(d, |cur| cur.min(d)));
    }
}

/// Builds the status: phase, message and conditions, keeping transition times of unchanged
/// conditions.
pub(super) struct Report {
    pub previous: MLModelStatus,
    pub status: MLModelStatus,
    pub generation: i64,
    pub now: Timestamp,
    pub source: String,
    pub model_url: String,
    pub endpoint: Option<String>,
    /// The uid of the model's claim, once it exists: where the serving version is.
    pub claim_uid: Option<String>,
}

impl Report {
    pub(super) fn new(model: &MLModel, now: Timestamp, settings: &Settings) -> Self {
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
            model_url: model.spec.shown_source(),
            endpoint: model
                .spec
                .expose
                .then(|| resources::service_endpoint(model, &settings.build)),
            claim_uid: None,
        }
    }

    pub(super) fn failed_for_this_generation(&self, reason: &str) -> bool {
        matches!(self.previous.phase, Some(Phase::Failed | Phase::UpdateFailed))
            && self.previous.observed_generation == Some(self.generation)
            && self.previous.last_failure.as_ref().is_some_and(|f| f.reason == reason)
    }

    pub(super) fn condition(&mut self, type_: &str, status: bool, reason: &str, message: &str) {
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

    pub(super) fn phase(&mut self, phase: Phase, reason: &str, message: String) {
        self.condition("Ready", phase == Phase::Ready, reason, &message);
        self.status.phase = Some(phase);
        self.status.message = Some(message);
    }

    pub(super) fn fail(&mut self, reason: &str, message: String) {
        let same = self
            .previous
            .last_failure
            .as_ref()
            .filter(|f| f.reason == reason && f.message == message)
            .filter(|_| matches!(self.previous.phase, Some(Phase::Failed | Phase::UpdateFailed)));
        let time = same.map_or(Time(self.now), |f| f.time.clone());
        self.status.last_failure = Some(Failure {
            reason: reason.to_owned(),
            message: message.clone(),
            time,
        });
        self.phase(Phase::Failed, reason, message);
    }

    pub(super) fn downloaded(&mut self, done: bool, reason: &str, message: &str) {
        self.condition("Downloaded", done, reason, message);
    }

    pub(super) fn available(&mut self, available: bool, reason: &str, message: &str) {
        self.condition("Available", available, reason, message);
    }

    pub(super) fn degraded(&mut self, degraded: bool, problem: Option<&Problem>) {
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

    pub(super) fn replicas(&mut self, ready: i32, desired: i32) {
        self.status.ready_replicas = Some(ready);
        self.status.ready = Some(format!("{ready}/{desired}"));
    }

    pub(super) fn ready(&mut self, version: i64, reason: &str, message: String) {
        self.status.serving = Some(ServingVersion {
            generation: version,
            model_url: self.model_url.clone(),
            source: Some(self.source.clone()),
            claim_uid: self.claim_uid.clone(),
        });
        self.status.service_endpoint = self.endpoint.clone();
        self.phase(Phase::Ready, reason, message);
    }

    /// A failure while an earlier version keeps serving is a failed update, not a model that
    /// is down: the phase says so, `Ready` is False with reason `UpdateFailed`, and
    /// `Available`, `serving` and `serviceEndpoint` stay what they are.
    fn failed_update(&mut self) {
        let available = self
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == "Available" && c.status == "True");
        let ready_now =
            self.previous.phase == Some(Phase::Ready) && self.previous.observed_generation == Some(self.generation);
        if ready_now {
            return;
        }
        let (Some(Phase::Failed), true, Some(serving), Some(failure)) = (
            self.status.phase,
            available,
            self.status.serving.clone(),
            self.status.last_failure.clone(),
        ) else {
            return;
        };
        let message = format!(
            "the update to generation {} failed ({}): {}; version {} keeps serving",
            self.generation, failure.reason, failure.message, serving.generation
        );
        self.condition("Ready", false, reason::UPDATE_FAILED, &message);
        self.status.phase = Some(Phase::UpdateFailed);
        self.status.message = Some(message);
        if self.status.service_endpoint.is_none() {
            self.status.service_endpoint = self.endpoint.clone();
        }
    }

    pub(super) fn into_decision(mut self, actions: Vec<Action>, requeue_after: Option<Duration>) -> Decision {
        self.failed_update();
        Decision {
            actions,
            status: self.status,
            requeue_after,
        }
    }
}

fn condition_rank(type_: &str) -> usize {
    [
        "Ready",
        "Downloaded",
        "Available",
        "Degraded",
        super::storage::CONDITION,
    ]
    .iter()
    .position(|t| *t == type_)
    .unwrap_or(usize::MAX)
}

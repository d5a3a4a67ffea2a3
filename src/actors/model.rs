//! The model actor: owns one MLModel's lifecycle. It keeps what it has observed of the
//! model's children (fed by the dispatcher's messages), asks the pure core what to do, carries
//! out the actions, writes the status and records Events; [`super::rollout`] traces the rollout.
//!
//! Events are coalesced: every message only updates the observed state and, if none is
//! pending, schedules one `Reconcile`, so a burst of pod updates costs one decision.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::DynamicObject;
use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{Instrument, Span};

use super::messages::{ChildUpdate, ModelMsg};
use super::rollout::RolloutTrace;
use super::{ModelKey, SharedContext, backoff};
use crate::api::{MLModel, MLModelStatus};
use crate::cluster::{ClusterError, ModelWriter};
use crate::lifecycle::{self, Action, EventNote, Observed, reason};

/// The model actor.
pub struct ModelActor;

/// A model actor's state: what it observed and what it last reported.
pub struct ModelState {
    key: ModelKey,
    ctx: SharedContext,
    writer: ModelWriter,
    observed: Observed,
    /// The status last written; the operator is its only writer, so this is the truth even
    /// before the watch echoes the write back.
    status: Option<MLModelStatus>,
    reconcile_pending: bool,
    timer: Option<JoinHandle<Result<(), ractor::MessagingErr<ModelMsg>>>>,
    retries: u32,
    trace: RolloutTrace,
}

/// Parses the cached untyped object into an MLModel.
pub fn parse_model(obj: &DynamicObject) -> Result<MLModel, serde_json::Error> {
    serde_json::to_value(obj).and_then(serde_json::from_value)
}

impl ModelState {
    fn schedule(&mut self, myself: &ActorRef<ModelMsg>) {
        if !self.reconcile_pending {
            self.reconcile_pending = true;
            let _ = myself.cast(ModelMsg::Reconcile);
        }
    }

    fn wake_after(&mut self, myself: &ActorRef<ModelMsg>, after: Duration) {
        if let Some(t) = self.timer.take() {
            t.abort();
        }
        self.timer = Some(myself.send_after(after, || ModelMsg::Reconcile));
    }

    fn apply_update(&mut self, update: ChildUpdate) {
        let o = &mut self.observed;
        match update {
            ChildUpdate::Pvc(p) => o.pvc = p,
            ChildUpdate::Deployment(d) => o.deployment = d,
            ChildUpdate::Service(s) => o.service = s,
            ChildUpdate::Job(name, job) => {
                o.jobs.retain(|j| j.name != name);
                o.jobs.extend(job);
                o.jobs.sort_by_key(|j| j.version);
            }
            ChildUpdate::Pod(name, pod) => {
                if let (Some(span), Some(p)) = (self.trace.phase_span(), pod.as_ref()) {
                    let before = o.pods.iter().find(|x| x.name == name);
                    if before.map(|b| (&b.phase, b.ready)) != Some((&p.phase, p.ready)) {
                        tracing::info!(parent: span, pod = %name, phase = %p.phase, ready = p.ready, "pod status changed");
                    }
                }
                o.pods.retain(|p| p.name != name);
                o.pods.extend(pod.map(|p| *p));
                o.pods.sort_by(|a, b| a.name.cmp(&b.name));
            }
        }
    }

    /// Feeds the result of an action back into what is observed, so a decision made before
    /// the watch echoes the write does not repeat it.
    fn assume(&mut self, action: &Action) {
        use crate::lifecycle::observe::*;
        use crate::resources::{SOURCE_ANNOTATION, spec_hash};
        match action {
            Action::ApplyPvc(_) if self.observed.pvc.is_none() => {
                self.observed.pvc = Some(PvcObs {
                    phase: "Pending".into(),
                    deleting: false,
                })
            }
            Action::ApplyJob(j) => {
                if let Some(mut obs) = job(j) {
                    obs.source = j
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(SOURCE_ANNOTATION).cloned());
                    if !self.observed.jobs.iter().any(|x| x.name == obs.name) {
                        self.observed.jobs.push(obs);
                    }
                }
            }
            Action::ApplyDeployment(d) => {
                let ready = self.observed.deployment.as_ref().map_or(0, |x| x.ready_replicas);
                self.observed.deployment = Some(DeploymentObs {
                    ready_replicas: ready,
                    ..deployment(d)
                });
                if let Some(x) = self.observed.deployment.as_mut() {
                    x.spec_hash = spec_hash(d.as_ref()).cloned();
                }
            }
            Action::ApplyService(s) => self.observed.service = Some(service(s)),
            _ => {}
        }
    }
}

impl Actor for ModelActor {
    type Msg = ModelMsg;
    type State = ModelState;
    type Arguments = (ModelKey, SharedContext);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (key, ctx): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let writer = ctx.writer(&key.namespace);
        let observed = ctx.caches.observed(&key);
        let mut state = ModelState {
            key,
            ctx,
            writer,
            observed,
            status: None,
            reconcile_pending: false,
            timer: None,
            retries: 0,
            trace: RolloutTrace::default(),
        };
        state.schedule(&myself);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ModelMsg::ModelChanged => state.schedule(&myself),
            ModelMsg::Child(update) => {
                state.apply_update(update);
                state.schedule(&myself);
            }
            ModelMsg::Reconcile => {
                state.reconcile_pending = false;
                // Inside the current phase's span, so log lines carry the model's trace id.
                let span = match state.trace.phase_span() {
                    Some(phase) => tracing::info_span!(parent: phase, "reconcile"),
                    None => Span::none(),
                };
                reconcile(&myself, state).instrument(span).await?;
            }
        }
        Ok(())
    }

    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.timer.take() {
            t.abort();
        }
        Ok(())
    }
}

async fn reconcile(myself: &ActorRef<ModelMsg>, state: &mut ModelState) -> Result<(), ActorProcessingErr> {
    let Some(obj) = state.ctx.caches.model(&state.key) else {
        return Ok(());
    };
    let mut model = match parse_model(&obj) {
        Ok(model) => model,
        Err(error) => {
            // Written by an older CRD or by hand: report and wait for the object to change.
            tracing::warn!(model = %state.key, %error, "skipping a malformed MLModel");
            state.ctx.metrics.reconcile_error("malformed");
            let already = obj
                .data
                .pointer("/status/message")
                .and_then(|m| m.as_str())
                .is_some_and(|m| m.contains(&error.to_string()));
            if !already
                && let Err(e) = state
                    .writer
                    .report_unreadable(&state.key.name, &error.to_string())
                    .await
            {
                tracing::warn!(model = %state.key, error = %e, "could not report the malformed MLModel");
            }
            return Ok(());
        }
    };
    #[cfg(feature = "fault-injection")]
    if model
        .annotations()
        .get("mlmodel.oda.tmforum.org/inject-fault")
        .map(String::as_str)
        == Some("panic")
    {
        panic!("fault injected by annotation mlmodel.oda.tmforum.org/inject-fault=panic");
    }
    if state.status.is_none() {
        state.status = model.status.clone();
    }
    if state.status.is_some() {
        model.status = state.status.clone();
    }
    // Before deciding, so the download Job it may create carries the rollout's context.
    let mut status = model.status.clone().unwrap_or_default();
    if model.metadata.deletion_timestamp.is_none() {
        state.trace.begin(&model, &mut status);
    } else {
        state.trace.begin_deletion(&model, &mut status);
    }
    model.status = Some(status);
    let observed = Observed {
        now: Timestamp::now(),
        ..state.observed.clone()
    };
    let decision = lifecycle::decide(&model, &observed, &state.ctx.settings);
    let forced: Vec<String> = decision
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::ForceDelete(c) => Some(format!("{c:?}")),
            _ => None,
        })
        .collect();
    // Every action but the finalizer's release is independent of the others (each child is
    // applied whole and owned by the model), so they run concurrently; the release waits for
    // the rest, so a model is never let go before its children are asked to go.
    let (release, independent): (Vec<&Action>, Vec<&Action>) = decision
        .actions
        .iter()
        .partition(|a| matches!(a, Action::RemoveFinalizer));
    for batch in [independent, release] {
        let results = futures::future::join_all(batch.iter().map(|a| state.writer.execute(&model, a))).await;
        for (action, result) in batch.into_iter().zip(results) {
            if let Err(error) = result {
                return handle_error(myself, state, &model, error).await;
            }
            state.assume(action);
            if matches!(action, Action::RemoveFinalizer) {
                state.trace.deletion_done(&model);
            }
        }
    }
    state.retries = 0;
    if !forced.is_empty() {
        let note = EventNote {
            warning: true,
            reason: "ForcedDeletion".into(),
            note: format!("forced: {}", forced.join(", ")),
        };
        state.writer.event(&model, &note, "Delete").await;
    }
    if let Err(error) = report(state, &model, decision.status).await {
        return handle_error(myself, state, &model, error).await;
    }
    if let Some(after) = decision.requeue_after {
        state.wake_after(myself, after);
    }
    Ok(())
}

async fn report(state: &mut ModelState, model: &MLModel, status: MLModelStatus) -> Result<(), ClusterError> {
    if model.metadata.deletion_timestamp.is_some() && !model.finalizers().iter().any(|f| f == crate::api::FINALIZER) {
        return Ok(());
    }
    if state.status.as_ref() == Some(&status) {
        return Ok(());
    }
    state.writer.write_status(model, &status).await?;
    let event = lifecycle::transition_event(state.status.as_ref(), &status);
    state.trace.phase_reported(model, &status, &state.ctx.metrics);
    if let Some(note) = event {
        tracing::info!(model = %state.key, phase = ?status.phase, reason = %note.reason, "{}", note.note);
        state.writer.event(model, &note, "Reconcile").await;
    }
    state.status = Some(status);
    Ok(())
}

async fn handle_error(
    myself: &ActorRef<ModelMsg>,
    state: &mut ModelState,
    model: &MLModel,
    error: ClusterError,
) -> Result<(), ActorProcessingErr> {
    state.ctx.metrics.reconcile_error(error.category());
    match error {
        ClusterError::Transient { .. } => {
            // Never Failed for a transient error: retry with capped backoff and jitter.
            let delay = backoff(
                state.retries,
                Duration::from_millis(200),
                state.ctx.supervision.max_backoff,
            );
            state.retries = state.retries.saturating_add(1);
            tracing::warn!(model = %state.key, %error, retry_in_ms = delay.as_millis() as u64, "API call failed; will retry");
            state.wake_after(myself, delay);
            Ok(())
        }
        ClusterError::Fenced { .. } => {
            tracing::info!(model = %state.key, %error, "not writing: leadership is not certain");
            Ok(())
        }
        ClusterError::Rejected { code, .. } => {
            // 403 means the operator's RBAC is missing a permission, not that the spec is wrong.
            let reason = if code == 403 {
                reason::FORBIDDEN
            } else {
                reason::INVALID_SPEC
            };
            let status = lifecycle::failed_status(model, reason, &error.to_string(), Timestamp::now());
            match report(state, model, status).await {
                Ok(()) => Ok(()),
                // The failure could not be written either: try the whole reconcile again later.
                Err(error) => {
                    state.ctx.metrics.reconcile_error(error.category());
                    let delay = backoff(
                        state.retries,
                        Duration::from_millis(200),
                        state.ctx.supervision.max_backoff,
                    );
                    state.retries = state.retries.saturating_add(1);
                    tracing::warn!(model = %state.key, %error, "could not report the failure; will retry");
                    state.wake_after(myself, delay);
                    Ok(())
                }
            }
        }
    }
}

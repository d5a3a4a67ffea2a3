//! The model actor: owns one MLModel (one uid) and its lifecycle. On every reconcile it reads
//! what it observes from the dispatcher's caches, asks the pure core what to do, carries out
//! the actions, writes the status and records Events; [`super::rollout`] traces the rollout.
//!
//! Wake-ups are coalesced: a message only schedules one `Reconcile` if none is pending, so a
//! burst of pod updates costs one decision, made on the latest state of the caches.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{Semaphore, SemaphorePermit};
use tracing::{Instrument, Span};

use super::messages::{ModelMsg, Priority};
use super::rollout::RolloutTrace;
use super::{ModelKey, SharedContext, backoff};
use crate::api::{MLModel, MLModelStatus, Phase};
use crate::cluster::{ClusterError, ModelWriter, WriteOutcome, Written};
use crate::lifecycle::{self, Action, EventNote, Observed, reason};

/// How long a write the caches have not shown yet is taken as done.
const IN_FLIGHT_TTL: Duration = Duration::from_secs(15);

/// How often a model whose child's name is taken tries again.
const CONFLICT_RETRY: Duration = Duration::from_secs(5);
/// Attempts refused for a missing permission (RBAC) before the status says so: with the
/// 0.5 s doubling backoff, a refusal that lasts about 7 s.
const FORBIDDEN_RETRIES_BEFORE_REPORT: u32 = 4;

/// The model actor.
pub struct ModelActor;

/// What the supervisor tells a model actor even while it waits for a turn: that its work
/// became a user's (a change to the model), which goes ahead of background work until the
/// model settles (Ready, Failed, UpdateFailed); or that it is being stopped, so it stops
/// waiting for a turn instead of reconciling once more.
#[derive(Debug)]
pub struct Signals {
    urgent: AtomicBool,
    stopping: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Signals {
    /// The signals of a model first woken with `priority`.
    pub fn new(priority: Priority) -> Self {
        Self {
            urgent: AtomicBool::new(priority == Priority::User),
            stopping: AtomicBool::new(false),
            notify: tokio::sync::Notify::new(),
        }
    }

    /// Marks the model's work as a user's.
    pub fn raise(&self) {
        self.urgent.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// No more turns: the actor is being stopped.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    fn lower(&self) {
        self.urgent.store(false, Ordering::SeqCst);
    }

    /// A turn for one reconcile. A background one first waits for one of the background
    /// turns, unless the model is made urgent meanwhile. `None` once the actor is being
    /// stopped or the semaphores close.
    async fn turn<'a>(&self, turns: &'a Semaphore, background_turns: &'a Semaphore) -> Option<Turn<'a>> {
        let mut background = None;
        loop {
            // Registered before the flags are read, so a signal in between is not missed.
            let signalled = self.notify.notified();
            if self.stopping.load(Ordering::SeqCst) {
                return None;
            }
            if background.is_none() && !self.urgent.load(Ordering::SeqCst) {
                tokio::select! {
                    permit = background_turns.acquire() => background = Some(permit.ok()?),
                    () = signalled => {}
                }
                continue;
            }
            tokio::select! {
                permit = turns.acquire() => {
                    return Some(Turn {
                        _turn: permit.ok()?,
                        _background: background,
                    });
                }
                () = signalled => {}
            }
        }
    }
}

/// The permits one reconcile holds while it runs.
struct Turn<'a> {
    _turn: SemaphorePermit<'a>,
    _background: Option<SemaphorePermit<'a>>,
}

/// A model actor's state: whom it serves, what it last reported, and its timers.
pub struct ModelState {
    key: ModelKey,
    uid: String,
    ctx: SharedContext,
    writer: ModelWriter,
    /// The status last written; the operator is its only writer, so this is the truth even
    /// before the watch echoes the write back.
    status: Option<MLModelStatus>,
    /// Children written and not yet seen back through the watch, so a decision made in the
    /// meantime does not repeat the write. Each lasts until the cache shows the write (or a
    /// short while): the caches stay the source of truth.
    in_flight: Vec<(WriteOutcome, Instant)>,
    reconcile_pending: bool,
    timer: Option<JoinHandle<Result<(), ractor::MessagingErr<ModelMsg>>>>,
    retries: u32,
    trace: RolloutTrace,
    /// The `storageSize` the API server refused to expand the claim to, with its message;
    /// not asked again until `storageSize` changes.
    resize_refused: Option<(String, String)>,
    /// Whether its reconciles go ahead of background work, and whether it is being stopped.
    signals: Arc<Signals>,
}

fn version_number(rv: Option<&str>) -> Option<u64> {
    rv.and_then(|v| v.parse().ok())
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

    /// What the caches show now, with the writes they do not show yet.
    fn observe(&mut self) -> Observed {
        let caches = &self.ctx.caches;
        let mut observed = caches.observed(&self.key, &self.uid);
        let namespace = self.key.namespace.clone();
        self.in_flight.retain(|(w, at)| {
            let cached = version_number(caches.resource_version(&w.written, &namespace, &w.name).as_deref());
            let written = version_number(w.resource_version.as_deref());
            let seen = matches!((cached, written), (Some(c), Some(w)) if c >= w);
            !seen && at.elapsed() < IN_FLIGHT_TTL
        });
        if self.in_flight.is_empty() {
            // Most models rest with nothing in flight: their list costs nothing then.
            self.in_flight = Vec::new();
        }
        for (w, _) in &self.in_flight {
            match &w.written {
                Written::Pvc(p) => match observed.pvc.as_mut() {
                    // An expansion written and not seen yet: not asked for again.
                    Some(cached) => cached.requested.clone_from(&p.requested),
                    None => observed.pvc = Some(p.clone()),
                },
                Written::Job(j) => {
                    if !observed.jobs.iter().any(|x| x.name == j.name) {
                        observed.jobs.push(j.clone());
                        observed.jobs.sort_by_key(|j| j.version);
                    }
                }
                Written::Deployment(d) => {
                    let ready = observed.deployment.as_ref().map_or(0, |x| x.ready_replicas);
                    observed.deployment = Some(lifecycle::observe::DeploymentObs {
                        ready_replicas: ready,
                        ..d.clone()
                    });
                }
                Written::Service(s) => observed.service = Some(s.clone()),
                Written::Finalizer => {}
            }
        }
        observed.resize_refused.clone_from(&self.resize_refused);
        observed.now = Timestamp::now();
        observed
    }
}

/// Whether the caches (or a write in flight) show the child `action` applies.
fn child_exists(observed: &Observed, action: &Action) -> bool {
    match action {
        Action::ApplyPvc(_) | Action::ResizePvc(_) => observed.pvc.is_some(),
        Action::ApplyJob(j) => observed.jobs.iter().any(|x| Some(&x.name) == j.metadata.name.as_ref()),
        Action::ApplyDeployment(_) => observed.deployment.is_some(),
        Action::ApplyService(_) => observed.service.is_some(),
        _ => true,
    }
}

impl Actor for ModelActor {
    type Msg = ModelMsg;
    type State = ModelState;
    type Arguments = (ModelKey, String, SharedContext, Arc<Signals>);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (key, uid, ctx, signals): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let writer = ctx.writer(&key.namespace);
        let mut state = ModelState {
            key,
            uid,
            ctx,
            writer,
            status: None,
            in_flight: Vec::new(),
            reconcile_pending: false,
            timer: None,
            retries: 0,
            trace: RolloutTrace::default(),
            resize_refused: None,
            signals,
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
            ModelMsg::Wake => state.schedule(&myself),
            ModelMsg::Reconcile => {
                state.reconcile_pending = false;
                // Inside the current phase's span, so log lines carry the model's trace id.
                let span = match state.trace.phase_span() {
                    Some(phase) => tracing::info_span!(parent: phase, "reconcile"),
                    None => Span::none(),
                };
                // A turn first; the reconcile's own (large) state is allocated only then.
                let ctx = state.ctx.clone();
                let signals = state.signals.clone();
                let Some(_turn) = signals.turn(&ctx.reconciles, &ctx.background).await else {
                    return Ok(());
                };
                let result = Box::pin(reconcile(&myself, state).instrument(span)).await;
                // The reconcile's span is closed, and with it a phase that just ended.
                state.trace.end_outcome();
                result?;
                if state
                    .status
                    .as_ref()
                    .and_then(|s| s.phase)
                    .is_some_and(Phase::is_settled)
                {
                    state.signals.lower();
                }
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
    // Another model of the same name: the supervisor replaces this actor.
    if obj.metadata.uid.as_deref() != Some(state.uid.as_str()) {
        return Ok(());
    }
    let mut model = match obj.parse() {
        Ok(model) => model,
        Err(error) => {
            // Written by an older CRD or by hand: report and wait for the object to change.
            tracing::warn!(model = %state.key, %error, "skipping a malformed MLModel");
            state.ctx.metrics.reconcile_error("malformed");
            let already = obj.status_message().is_some_and(|m| m.contains(&error.to_string()));
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
    let observed = state.observe();
    // The finalizer just added, before the cache shows it: not added twice (a stale object's
    // resourceVersion would only make the second attempt conflict).
    if state.in_flight.iter().any(|(w, _)| w.written == Written::Finalizer)
        && !model.finalizers().iter().any(|f| f == crate::api::FINALIZER)
    {
        model
            .metadata
            .finalizers
            .get_or_insert_with(Vec::new)
            .push(crate::api::FINALIZER.to_owned());
    }
    let decision = lifecycle::decide(&model, &observed, &state.ctx.settings);
    // A new rollout's trace context is recorded before any child carries it: a download Job
    // created first would join a trace that an operator restarted in between never continues.
    let stored_context = state.status.as_ref().and_then(|s| s.traceparent.as_ref());
    let record_context = decision.status.traceparent.as_ref() != stored_context
        && decision.actions.iter().any(|a| matches!(a, Action::ApplyJob(_)));
    let forced: Vec<String> = decision
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::ForceDelete(c) => Some(format!("{c:?}")),
            _ => None,
        })
        .collect();
    // Every action but the finalizer's release is independent of the others (each child is
    // applied whole and owned by the model), so they run concurrently, with two exceptions: a
    // claim that does not exist yet is created first (beside the trace context's write, which
    // the download Job waits for too), so no download Job ever mounts a claim of that name that
    // turns out not to be the model's; and the release waits for the rest, so a model is never
    // let go before its children are asked to go.
    let (release, rest): (Vec<&Action>, Vec<&Action>) = decision
        .actions
        .iter()
        .partition(|a| matches!(a, Action::RemoveFinalizer));
    let (claim, independent): (Vec<&Action>, Vec<&Action>) = rest
        .into_iter()
        .partition(|a| matches!(a, Action::ApplyPvc(_)) && !child_exists(&observed, a));
    // The Event of a phase change written with the trace context, recorded once the children
    // are asked for (an Event is never worth a round trip before them).
    let mut transition = None;
    for (first, batch) in [(true, claim), (false, independent), (false, release)] {
        let writer = &state.writer;
        let context = async {
            if first && record_context {
                Some(writer.write_status(&model, &decision.status).await)
            } else {
                None
            }
        };
        let (context, results) = futures::join!(
            context,
            futures::future::join_all(
                batch
                    .iter()
                    .map(|a| writer.execute(&model, a, child_exists(&observed, a))),
            )
        );
        let mut failed = None;
        match context {
            Some(Ok(version)) => {
                // The finalizer, added next, is a compare-and-swap on the model as written now.
                if version.is_some() {
                    model.metadata.resource_version = version;
                }
                transition = reported(state, &model, decision.status.clone());
            }
            Some(Err(error)) => failed = Some(error),
            None => {}
        }
        for (action, result) in batch.into_iter().zip(results) {
            match result {
                // A claim its StorageClass cannot expand: the model goes on with the volume it
                // has, and the status says why it did not grow.
                Err(error @ (ClusterError::Refused { .. } | ClusterError::Rejected { .. }))
                    if matches!(action, Action::ResizePvc(_)) =>
                {
                    tracing::warn!(model = %state.key, %error, "the model's volume cannot be expanded");
                    state.resize_refused = Some((model.spec.storage_size.clone(), error.to_string()));
                    state.schedule(myself);
                }
                // The writes that did succeed are remembered all the same.
                Err(error) => failed = failed.or(Some(error)),
                Ok(Some(written)) => state.in_flight.push((written, Instant::now())),
                Ok(None) if matches!(action, Action::RemoveFinalizer) => state.trace.deletion_done(&model),
                Ok(None) => {}
            }
        }
        if let Some(error) = failed {
            announce(state, &model, transition).await;
            return handle_error(myself, state, &model, &observed, error).await;
        }
    }
    state.retries = 0;
    announce(state, &model, transition).await;
    if !forced.is_empty() {
        let note = EventNote {
            warning: true,
            reason: "ForcedDeletion".into(),
            note: format!("forced: {}", forced.join(", ")),
        };
        state.writer.event(&model, &note, "Delete").await;
    }
    if let Err(error) = report(state, &model, decision.status).await {
        return handle_error(myself, state, &model, &observed, error).await;
    }
    if let Some(after) = decision.requeue_after {
        state.wake_after(myself, after);
    }
    Ok(())
}

/// Writes `status` unless it is what was last written, and records the Event its change
/// deserves.
async fn report(state: &mut ModelState, model: &MLModel, status: MLModelStatus) -> Result<(), ClusterError> {
    if model.metadata.deletion_timestamp.is_some() && !model.finalizers().iter().any(|f| f == crate::api::FINALIZER) {
        return Ok(());
    }
    if state.status.as_ref() == Some(&status) {
        return Ok(());
    }
    state.writer.write_status(model, &status).await?;
    let event = reported(state, model, status);
    announce(state, model, event).await;
    Ok(())
}

/// Takes note that `status` was written: the rollout's trace follows its phase, and it is the
/// status last written. Returns the Event its change deserves.
fn reported(state: &mut ModelState, model: &MLModel, status: MLModelStatus) -> Option<EventNote> {
    let event = lifecycle::transition_event(state.status.as_ref(), &status);
    state.trace.phase_reported(model, &status, &state.ctx.metrics);
    state.status = Some(status);
    event
}

/// Logs and records the Event of a status change, if there is one.
async fn announce(state: &ModelState, model: &MLModel, event: Option<EventNote>) {
    if let Some(note) = event {
        let phase = state.status.as_ref().and_then(|s| s.phase);
        tracing::info!(model = %state.key, ?phase, reason = %note.reason, "{}", note.note);
        state.writer.event(model, &note, "Reconcile").await;
    }
}

async fn handle_error(
    myself: &ActorRef<ModelMsg>,
    state: &mut ModelState,
    model: &MLModel,
    observed: &Observed,
    error: ClusterError,
) -> Result<(), ActorProcessingErr> {
    state.ctx.metrics.reconcile_error(error.category());
    match error {
        ClusterError::Conflict { object, previous_owner } => {
            // The object is not in the caches (it does not carry the operator's labels): the
            // core reports it as if it were, and the model tries again in a while.
            let mut observed = observed.clone();
            if previous_owner {
                observed.previous_owner.push(object);
            } else {
                observed.foreign.push(object);
            }
            let decision = lifecycle::decide(model, &observed, &state.ctx.settings);
            if let Err(error) = report(state, model, decision.status).await {
                tracing::warn!(model = %state.key, %error, "could not report the conflict");
            }
            state.wake_after(myself, CONFLICT_RETRY);
            Ok(())
        }
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
            tracing::info!(model = %state.key, %error, "not writing: leadership is not certain, or the operator is shutting down");
            Ok(())
        }
        ClusterError::Refused { ref message, .. } => {
            // Quota, admission, a terminating namespace or RBAC: the status names the cause in
            // the API server's words, and the write is tried again with backoff, so the model
            // goes on by itself once the cause is gone.
            let reason = lifecycle::refusal_reason(message);
            // An API server that has just (re)started denies every request until its RBAC
            // caches are filled: a missing permission is reported only once it persists.
            let settling = reason == reason::FORBIDDEN && state.retries < FORBIDDEN_RETRIES_BEFORE_REPORT;
            if !settling {
                let status = lifecycle::failed_status(model, reason, &error.to_string(), Timestamp::now());
                if let Err(error) = report(state, model, status).await {
                    state.ctx.metrics.reconcile_error(error.category());
                    tracing::warn!(model = %state.key, %error, "could not report the refusal");
                }
            }
            let delay = backoff(
                state.retries,
                Duration::from_millis(500),
                state.ctx.supervision.max_backoff,
            );
            state.retries = state.retries.saturating_add(1);
            tracing::warn!(model = %state.key, %error, %reason, retry_in_ms = delay.as_millis() as u64, "write refused; will retry");
            state.wake_after(myself, delay);
            Ok(())
        }
        ClusterError::Rejected { .. } => {
            let status = lifecycle::failed_status(model, reason::INVALID_SPEC, &error.to_string(), Timestamp::now());
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::Semaphore;

    use super::{Priority, Signals};

    /// Whether a turn is granted to `signals`' actor within a short while.
    async fn granted(signals: &Signals, turns: &Semaphore, background: &Semaphore) -> bool {
        tokio::time::timeout(Duration::from_millis(50), signals.turn(turns, background))
            .await
            .is_ok_and(|t| t.is_some())
    }

    /// An actor of `priority` waiting for a turn while every background turn is taken.
    fn waiting(priority: Priority) -> (Arc<Signals>, tokio::task::JoinHandle<bool>) {
        let turns = Arc::new(Semaphore::new(2));
        let background = Arc::new(Semaphore::new(0));
        let signals = Arc::new(Signals::new(priority));
        let task = tokio::spawn({
            let signals = signals.clone();
            async move { signals.turn(&turns, &background).await.is_some() }
        });
        (signals, task)
    }

    #[tokio::test]
    async fn a_users_change_takes_a_turn_the_background_work_cannot_have() {
        let turns = Semaphore::new(2);
        let background = Semaphore::new(1);
        let starting = Signals::new(Priority::Background);
        let held = starting
            .turn(&turns, &background)
            .await
            .expect("a first background turn");
        // Background work has used its share: another background reconcile waits ...
        assert!(!granted(&Signals::new(Priority::Background), &turns, &background).await);
        // ... while a user's change takes the turn left free.
        assert!(granted(&Signals::new(Priority::User), &turns, &background).await);
        drop(held);
        assert!(granted(&Signals::new(Priority::Background), &turns, &background).await);
    }

    #[tokio::test]
    async fn a_background_reconcile_waiting_for_a_turn_goes_ahead_once_the_user_changes_the_model() {
        let (signals, task) = waiting(Priority::Background);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !task.is_finished(),
            "a background reconcile waits while background turns are taken"
        );
        signals.raise();
        let granted = tokio::time::timeout(Duration::from_secs(5), task).await;
        assert!(matches!(granted, Ok(Ok(true))), "raised, it takes a free turn at once");
    }

    #[tokio::test]
    async fn an_actor_being_stopped_stops_waiting_for_a_turn() {
        let (signals, task) = waiting(Priority::Background);
        tokio::time::sleep(Duration::from_millis(50)).await;
        signals.stop();
        let ended = tokio::time::timeout(Duration::from_secs(5), task).await;
        assert!(
            matches!(ended, Ok(Ok(false))),
            "stopped, it gets no turn and waits no more"
        );
        // Once stopped, never a turn, however free they are.
        let turns = Semaphore::new(1);
        assert!(!granted(&signals, &turns, &Semaphore::new(1)).await);
    }

    #[tokio::test]
    async fn a_settled_model_is_background_work_again() {
        let turns = Semaphore::new(2);
        let background = Semaphore::new(0);
        let signals = Signals::new(Priority::User);
        assert!(granted(&signals, &turns, &background).await);
        signals.lower();
        assert!(!granted(&signals, &turns, &background).await);
    }

    #[tokio::test]
    async fn no_turn_once_the_turns_are_closed() {
        let turns = Semaphore::new(1);
        let background = Semaphore::new(1);
        turns.close();
        assert!(Signals::new(Priority::User).turn(&turns, &background).await.is_none());
    }
}

//! The rollout-trace state machine of one model: one trace per rollout of a generation (and
//! one per deletion), a span per phase, continued from the traceparent stored on the object so
//! a restarted operator or a new leader carries on the same trace.

use std::time::Instant;

use tracing::Span;

use crate::api::{MLModel, MLModelStatus, Phase};
use crate::metrics::Metrics;
use crate::telemetry;

/// The trace of one rollout: a root span (ended at once, so it is exported even if the
/// operator dies) and one span per phase, parented to the root through its traceparent.
struct Rollout {
    generation: i64,
    traceparent: String,
    phase: Option<Phase>,
    span: Option<Span>,
}

/// The trace state of one model's actor.
pub struct RolloutTrace {
    current: Option<Rollout>,
    phase_since: Instant,
    /// The outcome span (`mlmodel.ready`, `mlmodel.failed`) of a rollout that just ended, held
    /// until the reconcile that reported it is over: the last phase's span closes only with
    /// that reconcile, and the outcome must reach the collector after it, so that a trace
    /// whose outcome is visible is complete.
    outcome: Option<Span>,
}

impl Default for RolloutTrace {
    fn default() -> Self {
        Self {
            current: None,
            phase_since: Instant::now(),
            outcome: None,
        }
    }
}

impl RolloutTrace {
    /// The span of the current phase, parent of the reconciles and log lines made in it.
    pub fn phase_span(&self) -> Option<&Span> {
        self.current.as_ref().and_then(|r| r.span.as_ref())
    }

    /// Starts (or continues, from the traceparent stored on the object) the trace of the model's
    /// current generation, and records it in `status`.
    pub fn begin(&mut self, model: &MLModel, status: &mut MLModelStatus) {
        let generation = model.metadata.generation.unwrap_or(1);
        let continuing = self.current.as_ref().is_some_and(|r| r.generation == generation);
        if continuing {
            return;
        }
        let previous = model.status.as_ref().filter(|s| s.traceparent.is_some());
        // A restarted operator (or a new leader) continues the trace stored on the object.
        let stored = previous
            .filter(|s| s.observed_generation == Some(generation))
            .and_then(|s| s.traceparent.clone());
        let traceparent = stored.or_else(|| {
            let root = rollout_span("mlmodel.rollout", model, current_phase(model));
            telemetry::traceparent_of(&root)
        });
        if let Some(tp) = traceparent {
            status.trace_id = tp.split('-').nth(1).map(str::to_owned);
            status.traceparent = Some(tp.clone());
            self.current = Some(Rollout {
                generation,
                traceparent: tp,
                phase: None,
                span: None,
            });
        }
    }

    /// Ends the outcome span of a rollout that ended in the reconcile just finished (after the
    /// span of its last phase, which that reconcile kept open).
    pub fn end_outcome(&mut self) {
        self.outcome.take();
    }

    /// Records the phase `status` reports: ends the previous phase's span and opens the next,
    /// or the rollout's outcome.
    pub fn phase_reported(&mut self, model: &MLModel, status: &MLModelStatus, metrics: &Metrics) {
        let Some(rollout) = self.current.as_mut() else { return };
        let Some(phase) = status.phase else { return };
        if rollout.phase == Some(phase) {
            return;
        }
        let elapsed = self.phase_since.elapsed().as_secs_f64();
        if let Some(previous) = rollout.phase {
            metrics.phase_transition(previous.as_str(), phase.as_str(), elapsed, status.trace_id.as_deref());
        }
        self.phase_since = std::time::Instant::now();
        rollout.phase = Some(phase);
        // Dropping the previous span ends it, so each phase is exported as it finishes. The
        // span only closes once the reconcile running inside it does, so it is entered and left
        // first: its end time is then the moment of the transition, not the end of that
        // reconcile, and it does not overlap the next phase.
        if let Some(previous) = rollout.span.take() {
            drop(previous.enter());
        }
        if phase.is_settled() {
            let outcome = rollout_span(
                if phase == Phase::Ready {
                    "mlmodel.ready"
                } else {
                    "mlmodel.failed"
                },
                model,
                phase,
            );
            telemetry::set_parent_from_traceparent(&outcome, &rollout.traceparent);
            self.outcome.take();
            if let Some(f) = status.last_failure.as_ref().filter(|_| phase != Phase::Ready) {
                outcome.record("otel.status_code", "ERROR");
                // tracing-opentelemetry's field for the status message (`otel.status_message`
                // would only be an attribute).
                outcome.record("otel.status_description", f.message.as_str());
                outcome.record("mlmodel.failure.reason", f.reason.as_str());
            }
            self.outcome = Some(outcome);
            return;
        }
        let span = rollout_span(&format!("phase {phase}"), model, phase);
        telemetry::set_parent_from_traceparent(&span, &rollout.traceparent);
        rollout.span = Some(span);
    }

    /// Deletion is a trace of its own: a root `mlmodel.delete`, the Terminating phase, and
    /// `mlmodel.deleted` once the finalizer is released.
    pub fn begin_deletion(&mut self, model: &MLModel, status: &mut MLModelStatus) {
        if self.current.as_ref().is_some_and(|r| r.generation == DELETION) {
            return;
        }
        let stored = model
            .status
            .as_ref()
            .filter(|s| s.phase == Some(Phase::Terminating))
            .and_then(|s| s.traceparent.clone());
        let traceparent =
            stored.or_else(|| telemetry::traceparent_of(&rollout_span("mlmodel.delete", model, Phase::Terminating)));
        if let Some(tp) = traceparent {
            status.trace_id = tp.split('-').nth(1).map(str::to_owned);
            status.traceparent = Some(tp.clone());
            self.current = Some(Rollout {
                generation: DELETION,
                traceparent: tp,
                phase: None,
                span: None,
            });
        }
    }

    /// Ends the deletion's trace once the finalizer is released.
    pub fn deletion_done(&mut self, model: &MLModel) {
        let Some(mut rollout) = self.current.take().filter(|r| r.generation == DELETION) else {
            return;
        };
        if let Some(span) = rollout.span.take() {
            drop(span.enter());
        }
        let done = rollout_span("mlmodel.deleted", model, Phase::Terminating);
        telemetry::set_parent_from_traceparent(&done, &rollout.traceparent);
    }
}

/// The generation marker of a deletion's trace.
const DELETION: i64 = -1;

fn current_phase(model: &MLModel) -> Phase {
    model.status.as_ref().and_then(|s| s.phase).unwrap_or_default()
}

fn rollout_span(name: &str, model: &MLModel, phase: Phase) -> Span {
    tracing::info_span!(
        parent: None,
        "mlmodel",
        otel.name = name,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        mlmodel.failure.reason = tracing::field::Empty,
        k8s.namespace.name = model.metadata.namespace.as_deref().unwrap_or_default(),
        mlmodel.name = model.metadata.name.as_deref().unwrap_or_default(),
        mlmodel.uid = model.metadata.uid.as_deref().unwrap_or_default(),
        mlmodel.generation = model.metadata.generation.unwrap_or_default(),
        mlmodel.phase = phase.as_str(),
    )
}

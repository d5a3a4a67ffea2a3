//! The supervisor: one linked [`ModelActor`] per MLModel. It spawns an actor when a model
//! appears, stops it when the model is gone, restarts a failed actor with backoff, and after
//! too many restarts in a window marks the model Failed (`ControllerError`) and leaves it alone
//! until its spec changes.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::messages::{ModelMsg, SupervisorMsg};
use super::model::{ModelActor, parse_model};
use super::{ModelKey, SharedContext, backoff};
use crate::lifecycle::{self, reason};

/// The supervisor actor.
pub struct ModelSupervisor;

/// The supervisor's state.
pub struct SupervisorState {
    ctx: SharedContext,
    actors: HashMap<ModelKey, ActorRef<ModelMsg>>,
    keys: HashMap<ActorId, ModelKey>,
    restarts: HashMap<ModelKey, VecDeque<Instant>>,
    /// Models given up on, with the generation that failed.
    given_up: HashMap<ModelKey, i64>,
    /// Models waiting for a delayed restart.
    pending: HashMap<ModelKey, ()>,
}

impl SupervisorState {
    async fn spawn(&mut self, myself: &ActorRef<SupervisorMsg>, key: ModelKey) {
        if self.actors.contains_key(&key) {
            return;
        }
        match Actor::spawn_linked(None, ModelActor, (key.clone(), self.ctx.clone()), myself.get_cell()).await {
            Ok((actor, _)) => {
                self.ctx.metrics.actor_started();
                self.keys.insert(actor.get_id(), key.clone());
                self.actors.insert(key, actor);
            }
            Err(error) => tracing::error!(model = %key, %error, "could not start the model actor"),
        }
    }

    fn forget(&mut self, cell: &ActorCell) -> Option<ModelKey> {
        let key = self.keys.remove(&cell.get_id())?;
        if self.actors.get(&key).is_some_and(|a| a.get_id() == cell.get_id()) {
            self.actors.remove(&key);
            self.ctx.metrics.actor_stopped();
        }
        Some(key)
    }

    fn generation(&self, key: &ModelKey) -> Option<i64> {
        self.ctx.caches.model(key).and_then(|o| o.metadata.generation)
    }
}

impl Actor for ModelSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SharedContext;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        ctx: SharedContext,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = SupervisorState {
            ctx,
            actors: HashMap::new(),
            keys: HashMap::new(),
            restarts: HashMap::new(),
            given_up: HashMap::new(),
            pending: HashMap::new(),
        };
        // A new leader rebuilds everything from the caches: one actor per existing model.
        let mut keys: Vec<ModelKey> = state
            .ctx
            .caches
            .models
            .state()
            .iter()
            .filter_map(|m| {
                Some(ModelKey {
                    namespace: m.metadata.namespace.clone()?,
                    name: m.metadata.name.clone()?,
                })
            })
            .collect();
        keys.sort();
        for key in keys {
            state.spawn(&myself, key).await;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Model { key, deleted: true } => {
                state.given_up.remove(&key);
                state.restarts.remove(&key);
                if let Some(actor) = state.actors.remove(&key) {
                    state.keys.remove(&actor.get_id());
                    state.ctx.metrics.actor_stopped();
                    actor.stop(Some("model deleted".into()));
                }
            }
            SupervisorMsg::Model { key, deleted: false } => {
                if let Some(actor) = state.actors.get(&key) {
                    let _ = actor.cast(ModelMsg::ModelChanged);
                } else if state.pending.contains_key(&key) {
                    // A restart is already scheduled.
                } else if state.given_up.get(&key).copied() == state.generation(&key) {
                    // Failed with ControllerError for this generation; wait for a spec change.
                } else {
                    state.given_up.remove(&key);
                    state.spawn(&myself, key).await;
                }
            }
            SupervisorMsg::Child { key, update } => {
                if let Some(actor) = state.actors.get(&key) {
                    let _ = actor.cast(ModelMsg::Child(update));
                }
            }
            SupervisorMsg::Respawn(key) => {
                state.pending.remove(&key);
                if state.ctx.caches.model(&key).is_some() {
                    state.spawn(&myself, key).await;
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.forget(&cell);
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                let Some(key) = state.forget(&cell) else { return Ok(()) };
                state.ctx.metrics.actor_restarted();
                state.ctx.metrics.reconcile_error("actor_failed");
                let now = Instant::now();
                let window = state.ctx.supervision.restart_window;
                let history = state.restarts.entry(key.clone()).or_default();
                history.retain(|t| now.duration_since(*t) < window);
                history.push_back(now);
                let count = history.len();
                tracing::error!(model = %key, restarts = count, %error, "model actor failed");
                if count > state.ctx.supervision.max_restarts {
                    state.restarts.remove(&key);
                    if let Some(generation) = state.generation(&key) {
                        state.given_up.insert(key.clone(), generation);
                    }
                    give_up(&state.ctx, &key, count, &error.to_string()).await;
                } else {
                    let delay = backoff(
                        count as u32 - 1,
                        state.ctx.supervision.restart_backoff,
                        state.ctx.supervision.max_backoff,
                    );
                    state.pending.insert(key.clone(), ());
                    myself.send_after(delay, move || SupervisorMsg::Respawn(key));
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        for (_, actor) in state.actors.drain() {
            actor.stop(Some("supervisor stopped".into()));
            state.ctx.metrics.actor_stopped();
        }
        Ok(())
    }
}

/// Marks a model Failed with reason `ControllerError` and the actor's error.
async fn give_up(ctx: &SharedContext, key: &ModelKey, restarts: usize, error: &str) {
    let Some(model) = ctx.caches.model(key).and_then(|o| parse_model(&o).ok()) else {
        return;
    };
    let message = format!("the model's controller failed {restarts} times; last error: {error}");
    let status = lifecycle::failed_status(
        &model,
        reason::CONTROLLER_ERROR,
        &message,
        k8s_openapi::jiff::Timestamp::now(),
    );
    let writer = ctx.writer(&key.namespace);
    if let Err(error) = writer.write_status(&model, &status).await {
        tracing::error!(model = %key, %error, "could not mark the model Failed");
    }
    let note = lifecycle::EventNote {
        warning: true,
        reason: reason::CONTROLLER_ERROR.into(),
        note: message,
    };
    writer.event(&model, &note, "Supervise").await;
}

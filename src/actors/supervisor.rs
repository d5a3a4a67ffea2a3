//! The supervisor: one linked [`ModelActor`] per MLModel. It spawns an actor when a model
//! appears (bound to its uid), stops it when the model is gone, restarts a failed actor with backoff, and after
//! too many restarts in a window marks the model Failed (`ControllerError`) and leaves it alone
//! until its spec changes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::messages::{ModelMsg, Priority, SupervisorMsg};
use super::model::{ModelActor, Signals};
use super::{ModelKey, SharedContext, backoff};
use crate::lifecycle::{self, reason};

/// The supervisor actor.
pub struct ModelSupervisor;

/// Models are woken for the periodic resync in this many shares, one share per tick, so a
/// resync of 10,000 models is spread over the whole period instead of arriving at once.
const RESYNC_SHARES: u32 = 16;

/// A model's running actor.
struct Running {
    uid: String,
    actor: ActorRef<ModelMsg>,
    share: u32,
    signals: std::sync::Arc<Signals>,
}

/// The supervisor's state.
pub struct SupervisorState {
    ctx: SharedContext,
    actors: HashMap<ModelKey, Running>,
    keys: HashMap<ActorId, ModelKey>,
    restarts: HashMap<ModelKey, VecDeque<Instant>>,
    /// Models given up on, with the uid and generation that failed.
    given_up: HashMap<ModelKey, (String, Option<i64>)>,
    /// Models waiting for a delayed restart.
    pending: HashSet<ModelKey>,
    /// Resync ticks so far.
    ticks: u32,
}

impl SupervisorState {
    /// The uid and generation the cache shows for `key`.
    fn current(&self, key: &ModelKey) -> Option<(String, Option<i64>)> {
        let obj = self.ctx.caches.model(key)?;
        Some((obj.metadata.uid.clone()?, obj.metadata.generation))
    }

    /// Makes sure the actor of `key` runs for the model the cache shows now: starts it, or
    /// replaces an actor bound to an older uid of the same name.
    /// With `wake`, a running actor of the same uid is woken too. `priority` says whose
    /// change this is (a user's makes the model's work go ahead of background work).
    async fn ensure(&mut self, myself: &ActorRef<SupervisorMsg>, key: ModelKey, priority: Priority, wake: bool) {
        let Some((uid, generation)) = self.current(&key) else {
            return;
        };
        match self.actors.get(&key) {
            Some(running) if running.uid == uid => {
                if wake {
                    if priority == Priority::User {
                        running.signals.raise();
                    }
                    let _ = running.actor.cast(ModelMsg::Wake);
                }
                return;
            }
            Some(_) => {
                // Re-created under the same name: a fresh actor, with a fresh status.
                self.stop(&key, "model re-created");
                self.restarts.remove(&key);
            }
            None => {}
        }
        if self.pending.contains(&key) {
            return; // A restart is already scheduled.
        }
        if self.given_up.get(&key) == Some(&(uid.clone(), generation)) {
            return; // Failed with ControllerError for this generation; wait for a spec change.
        }
        self.given_up.remove(&key);
        let signals = std::sync::Arc::new(Signals::new(priority));
        let args = (key.clone(), uid.clone(), self.ctx.clone(), signals.clone());
        match Actor::spawn_linked(None, ModelActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.ctx.metrics.actor_started();
                self.keys.insert(actor.get_id(), key.clone());
                let share = rand::random_range(0..RESYNC_SHARES);
                self.actors.insert(
                    key,
                    Running {
                        uid,
                        actor,
                        share,
                        signals,
                    },
                );
            }
            Err(error) => tracing::error!(model = %key, %error, "could not start the model actor"),
        }
    }

    fn stop(&mut self, key: &ModelKey, reason: &str) {
        if let Some(running) = self.actors.remove(key) {
            self.keys.remove(&running.actor.get_id());
            self.ctx.metrics.actor_stopped();
            running.signals.stop();
            running.actor.stop(Some(reason.into()));
        }
    }

    /// One actor per model in the cache, none for a model that is gone.
    async fn sync(&mut self, myself: &ActorRef<SupervisorMsg>) {
        let mut keys: Vec<ModelKey> = self
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
        let gone: Vec<ModelKey> = self
            .actors
            .keys()
            .filter(|k| keys.binary_search(k).is_err())
            .cloned()
            .collect();
        for key in gone {
            self.stop(&key, "model deleted");
        }
        for key in keys {
            self.ensure(myself, key, Priority::Background, false).await;
        }
    }

    fn forget(&mut self, cell: &ActorCell) -> Option<ModelKey> {
        let key = self.keys.remove(&cell.get_id())?;
        if self.actors.get(&key).is_some_and(|a| a.actor.get_id() == cell.get_id()) {
            self.actors.remove(&key);
            self.ctx.metrics.actor_stopped();
        }
        Some(key)
    }

    fn schedule_resync(&self, myself: &ActorRef<SupervisorMsg>) {
        let tick = self.ctx.supervision.resync_period / RESYNC_SHARES;
        let jittered = tick.mul_f64(rand::random_range(0.9..=1.1));
        myself.send_after(jittered, || SupervisorMsg::Resync);
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
        // Actors are started by `Sync`, once the route to this supervisor is published: a
        // model event that arrives meanwhile waits in the mailbox instead of being lost.
        let state = SupervisorState {
            ctx,
            actors: HashMap::new(),
            keys: HashMap::new(),
            restarts: HashMap::new(),
            given_up: HashMap::new(),
            pending: HashSet::new(),
            ticks: 0,
        };
        state.schedule_resync(&myself);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Model {
                key,
                uid,
                deleted: true,
                ..
            } => {
                // A late Delete of an older uid must not stop the actor of a re-created model.
                if state.actors.get(&key).is_some_and(|r| r.uid == uid) {
                    state.given_up.remove(&key);
                    state.restarts.remove(&key);
                    state.stop(&key, "model deleted");
                }
            }
            SupervisorMsg::Model {
                key,
                deleted: false,
                priority,
                ..
            } => state.ensure(&myself, key, priority, true).await,
            SupervisorMsg::Child { key } => {
                if let Some(running) = state.actors.get(&key) {
                    let _ = running.actor.cast(ModelMsg::Wake);
                }
            }
            SupervisorMsg::Sync => {
                state.sync(&myself).await;
                tracing::info!(actors = state.actors.len(), "every model has its actor");
            }
            SupervisorMsg::Resync => {
                state.ticks = state.ticks.wrapping_add(1);
                let share = state.ticks % RESYNC_SHARES;
                if share == 0 {
                    state.sync(&myself).await;
                }
                for running in state.actors.values().filter(|r| r.share == share) {
                    let _ = running.actor.cast(ModelMsg::Wake);
                }
                state.schedule_resync(&myself);
            }
            SupervisorMsg::Respawn(key) => {
                state.pending.remove(&key);
                state.ensure(&myself, key, Priority::Background, false).await;
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
                    if let Some(current) = state.current(&key) {
                        state.given_up.insert(key.clone(), current);
                    }
                    give_up(&state.ctx, &key, count, &error.to_string()).await;
                } else {
                    let delay = backoff(
                        count as u32 - 1,
                        state.ctx.supervision.restart_backoff,
                        state.ctx.supervision.max_backoff,
                    );
                    state.pending.insert(key.clone());
                    myself.send_after(delay, move || SupervisorMsg::Respawn(key));
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(&self, myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        // Every actor is stopped and awaited (bounded): once this returns, no model actor of
        // this replica writes any more.
        // An actor waiting for a turn stops waiting, instead of reconciling once more first.
        for running in state.actors.values() {
            running.signals.stop();
        }
        let timeout = state.ctx.supervision.stop_timeout;
        myself
            .stop_children_and_wait(Some("supervisor stopped".into()), Some(timeout))
            .await;
        for _ in state.actors.drain() {
            state.ctx.metrics.actor_stopped();
        }
        Ok(())
    }
}

/// Marks a model Failed with reason `ControllerError` and the actor's error.
async fn give_up(ctx: &SharedContext, key: &ModelKey, restarts: usize, error: &str) {
    let Some(model) = ctx.caches.model(key).and_then(|o| o.parse().ok()) else {
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

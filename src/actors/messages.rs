//! The messages the actors exchange, in one place: the dispatcher sends [`SupervisorMsg`], the
//! supervisor sends [`ModelMsg`], and neither module needs the other's types.
//!
//! A message carries no state: the caches are the one source of truth, so "something about
//! this model changed" is all an actor needs to hear, and repeated wake-ups coalesce.

use super::ModelKey;

/// Messages of the supervisor.
#[derive(Debug)]
pub enum SupervisorMsg {
    /// A model was added, changed (other than by a status write) or (deleted) removed.
    Model {
        /// Which model.
        key: ModelKey,
        /// Its uid: a model re-created under the same name is another model.
        uid: String,
        /// Whether it is gone.
        deleted: bool,
    },
    /// A child of a model changed.
    Child {
        /// Which model.
        key: ModelKey,
    },
    /// Bring the actors in line with the cache: one per model, none for a model that is gone.
    Sync,
    /// Periodic resync: wake the next share of the models.
    Resync,
    /// Start (again) the actor of a model, after a restart delay.
    Respawn(ModelKey),
}

/// Messages of a model actor.
#[derive(Debug)]
pub enum ModelMsg {
    /// Something about the model or its children changed: reconcile (once, however many
    /// wake-ups arrive before it runs).
    Wake,
    /// Decide and act on what the caches show now.
    Reconcile,
}

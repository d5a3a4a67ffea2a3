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
        /// Whose change it is: a user's, seen while the operator runs, or the start-up list's.
        priority: Priority,
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

/// Whose work a reconcile does. A user's change (a model applied, edited or deleted while the
/// operator runs) is carried through ahead of background work (the models the operator finds
/// when it starts or takes over, and the periodic resync), so a new model is acted on at once
/// even while thousands of others are still being brought in line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// A user's change: its reconciles take any free turn, until the model settles.
    User,
    /// Start-up, takeover, resync: at most [`super::MAX_BACKGROUND_RECONCILES`] turns at once.
    Background,
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

//! The messages the actors exchange, in one place: the dispatcher sends [`SupervisorMsg`], the
//! supervisor sends [`ModelMsg`], and neither module needs the other's types.

use super::ModelKey;
use crate::lifecycle::observe;

/// A change to one child of a model, already summarised.
#[derive(Clone, Debug)]
pub enum ChildUpdate {
    /// The PVC changed or (None) is gone.
    Pvc(Option<observe::PvcObs>),
    /// A download Job changed or is gone.
    Job(String, Option<observe::JobObs>),
    /// A pod changed or is gone.
    Pod(String, Option<Box<observe::PodObs>>),
    /// The Deployment changed or is gone.
    Deployment(Option<observe::DeploymentObs>),
    /// The Service changed or is gone.
    Service(Option<observe::ServiceObs>),
}

/// Messages of the supervisor.
#[derive(Debug)]
pub enum SupervisorMsg {
    /// A model was added, changed or (deleted) removed.
    Model {
        /// Which model.
        key: ModelKey,
        /// Whether it is gone.
        deleted: bool,
    },
    /// A child of a model changed.
    Child {
        /// Which model.
        key: ModelKey,
        /// What changed.
        update: ChildUpdate,
    },
    /// Start (again) the actor of a model, after a restart delay.
    Respawn(ModelKey),
}

/// Messages of a model actor.
#[derive(Debug)]
pub enum ModelMsg {
    /// The MLModel changed; its current state is in the cache.
    ModelChanged,
    /// A child changed.
    Child(ChildUpdate),
    /// Decide and act on the latest observed state.
    Reconcile,
}

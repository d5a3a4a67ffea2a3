//! The actor runtime: a [`dispatcher`] turns the operator's watch streams into [`messages`], the
//! [`supervisor`] keeps one [`model`] actor per MLModel alive, and each model actor owns its
//! model's lifecycle.

mod children;
pub mod dispatcher;
pub mod messages;
pub mod model;
pub mod rollout;
pub mod supervisor;
mod warnings;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;

use crate::lifecycle::Settings;
use crate::metrics::Metrics;
use dispatcher::Caches;

/// Identifies a model: namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl fmt::Display for ModelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// How the supervisor treats failing model actors.
#[derive(Clone, Debug)]
pub struct SupervisionSettings {
    /// Restarts allowed within `restart_window` before the model is marked Failed.
    pub max_restarts: usize,
    /// The window over which restarts are counted.
    pub restart_window: Duration,
    /// First restart delay; doubles per restart.
    pub restart_backoff: Duration,
    /// Upper bound of the restart delay and of API retry delays.
    pub max_backoff: Duration,
    /// Every model is reconciled at least this often, whatever the events (jittered).
    pub resync_period: Duration,
    /// How long stopping the actors (leadership lost, shutdown) may take.
    pub stop_timeout: Duration,
}

impl Default for SupervisionSettings {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            restart_window: Duration::from_secs(300),
            restart_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            resync_period: Duration::from_secs(300),
            stop_timeout: Duration::from_secs(10),
        }
    }
}

/// What every actor shares.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Watch caches.
    pub caches: Caches,
    /// Lifecycle tunables.
    pub settings: Settings,
    /// Supervision tunables.
    pub supervision: SupervisionSettings,
    /// Metrics.
    pub metrics: Metrics,
    /// Records Events, under this replica's identity (one for every model: its cache of
    /// recent Events is shared).
    pub recorder: crate::events::Recorder,
    /// Refuses writes unless this replica surely leads.
    pub fence: Arc<crate::leader::Fence>,
    /// The client-side request rate limit of every write.
    pub limiter: Arc<crate::cluster::RateLimiter>,
    /// Reconciles under way at once, across every model (see [`MAX_CONCURRENT_RECONCILES`]).
    pub reconciles: tokio::sync::Semaphore,
    /// Background reconciles under way or waiting for a turn (see
    /// [`MAX_BACKGROUND_RECONCILES`]).
    pub background: tokio::sync::Semaphore,
}

/// Reconciles under way at once. A reconcile mostly waits for its writes, which the rate
/// limiter lets through 32 at a time, so more than this only adds waiting reconciles, each
/// holding its decision and its requests in memory: when thousands of models are applied at
/// once (or a new leader reconciles them all) they take turns, first come first served within
/// their priority, and each one's Job follows its apply instead of every model advancing one
/// write at a time.
pub const MAX_CONCURRENT_RECONCILES: usize = 64;

/// Turns that background reconciles (start-up, takeover, resync) may hold or wait for at once:
/// the rest stay free for users' changes, so a model applied while 10,000 others are being
/// brought in line does not queue behind them (see [`messages::Priority`]).
pub const MAX_BACKGROUND_RECONCILES: usize = 48;

impl Context {
    /// A writer for models in `namespace`.
    pub fn writer(&self, namespace: &str) -> crate::cluster::ModelWriter {
        crate::cluster::ModelWriter::new(
            self.client.clone(),
            namespace,
            self.recorder.clone(),
            self.metrics.clone(),
            self.fence.clone(),
            self.limiter.clone(),
        )
    }
}

/// Shared context handle.
pub type SharedContext = Arc<Context>;

pub use crate::backoff;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        assert!(backoff(0, base, max) <= base);
        assert!(backoff(3, base, max) >= Duration::from_millis(400));
        for attempt in 5..40 {
            assert!(backoff(attempt, base, max) <= max);
        }
    }
}

//! Leader election over a `coordination.k8s.io/v1` Lease, with fencing.
//!
//! The holder renews every `retry_period`. A standby takes the lease only after it has seen the
//! same holder and renew time for longer than the Lease record's own `leaseDurationSeconds`
//! (the holder's setting, not the standby's) by its own clock, so clocks of different nodes
//! never need to agree. A standby watches the Lease: a released lease is taken at once, and an
//! abandoned one as soon as its duration has passed, not at the next retry. The holder stops acting (and the [`Fence`] refuses
//! every write) once its last successful renewal is older than `renew_deadline`, which is
//! strictly shorter than `lease_duration`: a leader that was paused or partitioned has stopped
//! writing before anyone else can take over.
//!
//! The algorithm is client-go's, written out here because the fence must be checked on every
//! write of the model actors, which none of the crates available exposes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::{Notify, watch};

/// Lease timings and identity.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Lease name.
    pub name: String,
    /// Lease namespace (the operator's own).
    pub namespace: String,
    /// This replica's identity: its pod name.
    pub identity: String,
    /// How long a lease is valid after its last renewal.
    pub lease_duration: Duration,
    /// How long the holder keeps acting without a successful renewal.
    pub renew_deadline: Duration,
    /// How often to try to acquire or renew.
    pub retry_period: Duration,
}

/// Whether this replica may write right now. Checked before every write.
#[derive(Debug)]
pub struct Fence {
    leading: AtomicBool,
    renewed_at: Mutex<Option<Instant>>,
    renew_deadline: Duration,
    always: bool,
    /// Shutting down: no write from now on, with or without leader election.
    closed: AtomicBool,
}

impl Fence {
    /// A fence for a replica that runs without leader election: always open.
    pub fn open() -> Self {
        Self {
            leading: AtomicBool::new(true),
            renewed_at: Mutex::new(None),
            renew_deadline: Duration::MAX,
            always: true,
            closed: AtomicBool::new(false),
        }
    }

    fn new(renew_deadline: Duration) -> Self {
        Self {
            leading: AtomicBool::new(false),
            renewed_at: Mutex::new(None),
            renew_deadline,
            always: false,
            closed: AtomicBool::new(false),
        }
    }

    /// Refuses every write from now on: the replica is shutting down, and the model actors'
    /// next writes fail at once instead of holding up the handover. A write already in
    /// flight still completes (or is cut off at its own deadline).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// True while this replica leads, its last renewal is within the renew deadline, and it
    /// is not shutting down.
    pub fn may_write(&self) -> bool {
        !self.closed.load(Ordering::SeqCst) && self.leads()
    }

    /// True while this replica leads and its last renewal is within the renew deadline,
    /// closed or not.
    fn leads(&self) -> bool {
        if self.always {
            return true;
        }
        let renewed = self.renewed_at.lock().map(|r| *r).unwrap_or(None);
        self.leading.load(Ordering::SeqCst) && renewed.is_some_and(|t| t.elapsed() < self.renew_deadline)
    }

    /// How long writes stay allowed: `None` without leader election, zero when this replica
    /// may not write. A write still in flight when this ends is cut off.
    pub fn remaining(&self) -> Option<Duration> {
        if self.closed.load(Ordering::SeqCst) {
            return Some(Duration::ZERO);
        }
        if self.always {
            return None;
        }
        let renewed = self.renewed_at.lock().map(|r| *r).unwrap_or(None);
        let left = match renewed {
            Some(t) if self.leading.load(Ordering::SeqCst) => self.renew_deadline.saturating_sub(t.elapsed()),
            _ => Duration::ZERO,
        };
        Some(left)
    }

    fn renewed(&self, at: Instant) {
        if let Ok(mut r) = self.renewed_at.lock() {
            *r = Some(at);
        }
        self.leading.store(true, Ordering::SeqCst);
    }

    fn lost(&self) {
        self.leading.store(false, Ordering::SeqCst);
    }
}

/// Runs a leader elector.
pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
    fence: Arc<Fence>,
    /// (holder, renew time) last seen and when this replica first saw it.
    observed: Option<(Option<String>, Option<Timestamp>, Instant)>,
    /// When the lease held by another replica expires, by this replica's clock.
    expires: Option<Instant>,
}

impl LeaderElector {
    /// An elector for `settings`; its fence guards the operator's writes.
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        let fence = Arc::new(Fence::new(settings.renew_deadline));
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            fence,
            observed: None,
            expires: None,
        }
    }

    /// The write fence.
    pub fn fence(&self) -> Arc<Fence> {
        self.fence.clone()
    }

    /// Tries to acquire or renew until `stop` turns true; publishes leadership on `leading`.
    /// On stop, a held lease is released so a standby takes over at once.
    pub async fn run(mut self, leading: watch::Sender<bool>, mut stop: watch::Receiver<bool>) {
        let changed = Arc::new(Notify::new());
        let lease_watch = tokio::spawn(watch_lease(
            self.api.clone(),
            self.settings.name.clone(),
            changed.clone(),
        ));
        loop {
            let attempt_started = Instant::now();
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    self.fence.renewed(attempt_started);
                    if !*leading.borrow() {
                        tracing::info!(identity = %self.settings.identity, lease = %self.settings.name, "acquired leadership");
                        let _ = leading.send(true);
                    }
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "could not acquire or renew the lease"),
            }
            if *leading.borrow() && !self.fence.leads() {
                tracing::warn!(identity = %self.settings.identity, "lost leadership: no renewal within the renew deadline");
                self.fence.lost();
                let _ = leading.send(false);
            }
            // A standby tries again when the lease changes (released, or taken) or just after
            // it expires, whichever comes first; the holder renews every retry period.
            let mut wait = self.settings.retry_period;
            if !*leading.borrow()
                && let Some(expires) = self.expires
            {
                wait = wait.min(expires.saturating_duration_since(Instant::now()) + Duration::from_millis(20));
            }
            let leader = *leading.borrow();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = changed.notified(), if !leader => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        lease_watch.abort();
        if *leading.borrow() {
            self.fence.lost();
            let _ = leading.send(false);
            match self.release().await {
                Ok(()) => tracing::info!(identity = %self.settings.identity, "released the lease"),
                Err(error) => tracing::warn!(%error, "could not release the lease"),
            }
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let me = self.settings.identity.clone();
        let own_duration = i32::try_from(self.settings.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    lease_duration_seconds: Some(own_duration),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let renew = spec.renew_time.as_ref().map(|t| t.0);
        let seen = (holder.clone(), renew);
        let first_seen = match &self.observed {
            Some((h, r, at)) if (h, r) == (&seen.0, &seen.1) => *at,
            _ => Instant::now(),
        };
        self.observed = Some((seen.0, seen.1, first_seen));
        let held_by_me = holder.as_deref() == Some(me.as_str());
        // The holder's own duration decides, whatever this replica was configured with.
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.settings.lease_duration, Duration::from_secs);
        let expired = holder.is_none() || first_seen.elapsed() > duration;
        self.expires = (!held_by_me && holder.is_some()).then(|| first_seen + duration);
        if !held_by_me && !expired {
            return Ok(false);
        }
        if !held_by_me {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(me);
        spec.lease_duration_seconds = Some(own_duration);
        spec.renew_time = Some(MicroTime(now));
        // Replace carries the resourceVersion: a concurrent writer makes this fail with 409.
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Releases the lease: no holder, so a standby takes it at once.
    async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        spec.acquire_time = None;
        self.api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
            .map(drop)
    }
}

/// Notifies `changed` on every change of the Lease `name` (the watch restarts by itself).
async fn watch_lease(api: Api<Lease>, name: String, changed: Arc<Notify>) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone) => changed.notify_one(),
            Ok(_) => {}
            Err(error) => tracing::debug!(%error, "lease watch error; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_allowed_only_until_the_renew_deadline() {
        assert_eq!(Fence::open().remaining(), None, "no leader election: no deadline");
        let fence = Fence::new(Duration::from_secs(10));
        assert_eq!(fence.remaining(), Some(Duration::ZERO), "not leading yet");
        fence.renewed(Instant::now());
        let left = fence.remaining().unwrap_or_default();
        assert!(
            left > Duration::from_secs(9) && left <= Duration::from_secs(10),
            "{left:?}"
        );
        if let Some(long_ago) = Instant::now().checked_sub(Duration::from_secs(11)) {
            fence.renewed(long_ago);
            assert_eq!(fence.remaining(), Some(Duration::ZERO), "the renewal is too old");
            assert!(!fence.may_write());
        }
        fence.renewed(Instant::now());
        fence.lost();
        assert_eq!(fence.remaining(), Some(Duration::ZERO), "leadership lost");
    }

    #[test]
    fn a_closed_fence_refuses_every_write_even_to_a_leader_or_without_election() {
        let fence = Fence::new(Duration::from_secs(10));
        fence.renewed(Instant::now());
        fence.close();
        assert!(!fence.may_write());
        assert_eq!(fence.remaining(), Some(Duration::ZERO));
        fence.renewed(Instant::now());
        assert!(!fence.may_write(), "a renewal does not open a closed fence");
        let single = Fence::open();
        single.close();
        assert!(!single.may_write());
        assert_eq!(single.remaining(), Some(Duration::ZERO));
    }
}

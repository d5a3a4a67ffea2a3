//! `mlmodel-operator run`: wires the watches, leader election, the supervisor, metrics and
//! health endpoints, and shuts all of it down in order on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use ractor::Actor;
use tokio::sync::watch;

use crate::actors::messages::SupervisorMsg;
use crate::actors::supervisor::ModelSupervisor;
use crate::actors::{Context, SupervisionSettings, dispatcher};
use crate::cluster::RateLimiter;
use crate::events::Recorder;
use crate::leader::{Fence, LeaderElector, LeaseSettings};
use crate::lifecycle::Settings;
use crate::metrics::{self, Metrics};

/// Everything `run` needs.
#[derive(Clone, Debug)]
pub struct RunSettings {
    /// Lifecycle tunables.
    pub lifecycle: Settings,
    /// Supervision tunables.
    pub supervision: SupervisionSettings,
    /// Lease settings; `None` runs without leader election (a single replica).
    pub lease: Option<LeaseSettings>,
    /// (namespace, name) of this replica's Pod, whose container image becomes the download
    /// Jobs' image; `None` keeps `lifecycle.build.downloader_image`.
    pub downloader_image_from_pod: Option<(String, String)>,
    /// Address of /metrics, /healthz and /readyz.
    pub metrics_addr: SocketAddr,
    /// This replica's identity (pod name), recorded on Events.
    pub identity: String,
    /// Upper bound of a graceful shutdown.
    pub shutdown_timeout: Duration,
    /// Client-side rate limit of the operator's writes, in requests per second.
    pub api_qps: f64,
    /// Requests allowed in a burst above `api_qps`.
    pub api_burst: u32,
    /// The namespaces the operator watches and writes.
    pub scope: WatchScope,
    /// How each watch gets the objects that exist when it starts.
    pub initial_list: InitialList,
}

/// How a watch gets the objects that exist when it starts, and again after it lost its place.
///
/// A list is the default: it is the faster of the two at scale (the benchmark's restart at
/// 10,000 models synced in 6–7 s listed and 11 s streamed); a stream lowers a restarted
/// replica's memory peak (at 1,000 models, 38 MiB streamed and 50 MiB listed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum InitialList {
    /// One list request per kind, served from the API server's cache.
    #[default]
    List,
    /// A watch that sends the existing objects one by one (`sendInitialEvents`; Kubernetes
    /// 1.34+, or 1.27+ with the `WatchList` feature gate): the operator never holds a whole
    /// list at once.
    Stream,
    /// `stream` where the API server serves it (asked once at start-up), else `list`.
    Auto,
}

/// Where the operator acts: the whole cluster, or only the listed namespaces (a namespaced
/// install, whose Roles grant nothing elsewhere).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum WatchScope {
    /// Every namespace (needs the ClusterRole).
    #[default]
    Cluster,
    /// Only these namespaces, each watched on its own.
    Namespaces(Vec<String>),
}

impl WatchScope {
    /// The scope of a `--namespaces` list: blanks are ignored, duplicates dropped, and an empty
    /// list is the whole cluster.
    pub fn new(namespaces: impl IntoIterator<Item = String>) -> Self {
        let mut list: Vec<String> = namespaces
            .into_iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        list.sort();
        list.dedup();
        if list.is_empty() {
            WatchScope::Cluster
        } else {
            WatchScope::Namespaces(list)
        }
    }

    /// One entry per watch: `None` for the whole cluster, or each namespace.
    pub fn watches(&self) -> Vec<Option<String>> {
        match self {
            WatchScope::Cluster => vec![None],
            WatchScope::Namespaces(list) => list.iter().cloned().map(Some).collect(),
        }
    }
}

/// Errors that stop the operator.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No usable kubeconfig or in-cluster configuration.
    #[error("cannot connect to Kubernetes: {0}")]
    Client(#[from] kube::Error),
    /// The metrics port could not be bound.
    #[error("cannot listen on {addr} for metrics and health checks: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The supervisor could not start.
    #[error("cannot start the model supervisor: {0}")]
    Supervisor(String),
}

/// The image of `pod`'s operator container (the one named `manager`, else its first).
async fn own_image(client: &Client, namespace: &str, pod: &str) -> Result<String, String> {
    let pod = Api::<Pod>::namespaced(client.clone(), namespace)
        .get(pod)
        .await
        .map_err(|e| e.to_string())?;
    let containers = pod.spec.map(|s| s.containers).unwrap_or_default();
    containers
        .iter()
        .find(|c| c.name == "manager")
        .or(containers.first())
        .and_then(|c| c.image.clone())
        .ok_or_else(|| "the Pod has no container image".to_owned())
}

/// Runs the operator until SIGTERM or Ctrl-C.
pub async fn run(settings: RunSettings) -> Result<(), RunError> {
    let client = Client::try_default().await?;
    let metrics = Metrics::new();
    let (stop_tx, stop_rx) = watch::channel(false);

    let listener = tokio::net::TcpListener::bind(settings.metrics_addr)
        .await
        .map_err(|source| RunError::Listen {
            addr: settings.metrics_addr,
            source,
        })?;
    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(metrics::serve_on(metrics.clone(), listener, async move {
        let _ = server_stop.wait_for(|s| *s).await;
    }));

    tokio::spawn(crate::memory::release_periodically());
    let (route_tx, route_rx) = watch::channel(None);
    let watches = settings.scope.watches();
    let streamed = match settings.initial_list {
        InitialList::Stream => true,
        InitialList::List => false,
        InitialList::Auto => {
            let ns = watches.first().and_then(|w| w.as_deref());
            dispatcher::probe_streaming_lists(&client, ns).await
        }
    };
    let (caches, mut synced) = dispatcher::start(client.clone(), route_rx, &watches, streamed);
    let initial_list = if streamed { "stream" } else { "list" };
    tracing::info!(scope = ?settings.scope, %initial_list, "watching");

    let (leading_tx, mut leading_rx) = watch::channel(settings.lease.is_none());
    let (fence, elector) = match settings.lease.clone() {
        Some(lease) => {
            let elector = LeaderElector::new(client.clone(), lease);
            (elector.fence(), Some(elector))
        }
        None => (Arc::new(Fence::open()), None),
    };
    let elector_task = elector.map(|e| tokio::spawn(e.run(leading_tx, stop_rx.clone())));
    metrics.set_leader(settings.lease.is_none());

    let mut lifecycle = settings.lifecycle.clone();
    if let Some((namespace, pod)) = &settings.downloader_image_from_pod {
        match own_image(&client, namespace, pod).await {
            Ok(image) => lifecycle.build.downloader_image = image,
            Err(error) => tracing::warn!(
                %error,
                image = %lifecycle.build.downloader_image,
                "cannot read this replica's image from its Pod; download Jobs run the default image"
            ),
        }
    }
    tracing::info!(image = %lifecycle.build.downloader_image, "download Jobs' image");
    let ctx = Arc::new(Context {
        caches,
        settings: lifecycle,
        supervision: settings.supervision.clone(),
        metrics: metrics.clone(),
        recorder: Recorder::new(client.clone(), "mlmodel-operator", &settings.identity),
        client,
        fence,
        limiter: Arc::new(RateLimiter::new(settings.api_qps, settings.api_burst)),
        reconciles: tokio::sync::Semaphore::new(crate::actors::MAX_CONCURRENT_RECONCILES),
        background: tokio::sync::Semaphore::new(crate::actors::MAX_BACKGROUND_RECONCILES),
    });

    // Standbys keep their caches warm; only once synced is a replica ready (and able to lead).
    let _ = synced.wait_for(|s| *s).await;
    metrics.set_ready(true);
    tracing::info!("watches synced");

    let mut shutdown = Box::pin(shutdown_signal());
    let mut supervisor = None;
    loop {
        let leading = *leading_rx.borrow_and_update();
        match (leading, supervisor.take()) {
            (true, None) => {
                let (actor, handle) = Actor::spawn(None, ModelSupervisor, ctx.clone())
                    .await
                    .map_err(|e| RunError::Supervisor(e.to_string()))?;
                // The route first, then the actors: an event from now on waits in the
                // supervisor's mailbox, and `Sync` starts an actor for every cached model.
                let _ = route_tx.send(Some(actor.clone()));
                let _ = actor.cast(SupervisorMsg::Sync);
                metrics.set_leader(true);
                tracing::info!("leading: supervising every model");
                supervisor = Some((actor, handle));
            }
            (false, Some((actor, handle))) => {
                let _ = route_tx.send(None);
                metrics.set_leader(false);
                actor.stop(Some("leadership lost".into()));
                // Bounded: the supervisor awaits its actors for at most the stop timeout.
                if tokio::time::timeout(settings.shutdown_timeout, handle).await.is_err() {
                    tracing::error!("model actors did not stop in time after leadership was lost");
                }
                tracing::warn!("no longer leading: every model actor stopped");
            }
            (_, current) => supervisor = current,
        }
        tokio::select! {
            _ = &mut shutdown => break,
            changed = leading_rx.changed() => if changed.is_err() {
                // No elector (single replica): leadership never changes.
                (&mut shutdown).await;
                break;
            },
        }
    }

    tracing::info!("shutting down");
    // No new write from here: a reconcile under way ends at its next write instead of
    // carrying on while the standby waits for the lease.
    ctx.fence.close();
    let _ = route_tx.send(None);
    if let Some((actor, handle)) = supervisor {
        actor.stop(Some("shutdown".into()));
        if tokio::time::timeout(settings.shutdown_timeout, handle).await.is_err() {
            tracing::warn!("model actors did not stop in time");
        }
    }
    // Release the lease only after every actor stopped: a standby that takes over never
    // overlaps with this replica's writes.
    let _ = stop_tx.send(true);
    if let Some(task) = elector_task {
        let _ = tokio::time::timeout(settings.shutdown_timeout, task).await;
    }
    let _ = server.await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::WatchScope;

    #[test]
    fn an_empty_namespace_list_is_the_whole_cluster() {
        assert_eq!(WatchScope::new(Vec::new()), WatchScope::Cluster);
        assert_eq!(WatchScope::new([" ".to_owned(), String::new()]), WatchScope::Cluster);
        assert_eq!(WatchScope::Cluster.watches(), vec![None]);
    }

    #[test]
    fn a_namespace_list_is_one_watch_per_namespace() {
        let scope = WatchScope::new(["b".to_owned(), " a".to_owned(), "b".to_owned()]);
        assert_eq!(scope, WatchScope::Namespaces(vec!["a".to_owned(), "b".to_owned()]));
        assert_eq!(scope.watches(), vec![Some("a".to_owned()), Some("b".to_owned())]);
    }
}

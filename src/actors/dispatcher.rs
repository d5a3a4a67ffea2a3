//! One watch stream per kind for the whole operator. Each stream feeds a cache (so a model
//! actor that starts can read its model's current state) and routes every event, as a
//! message, to the supervisor, which hands it to the actor of the model it belongs to.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector::store::Writer};
use kube::{Api, Client, Resource, ResourceExt};
use ractor::ActorRef;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::ModelKey;
use super::messages::{ChildUpdate, SupervisorMsg};
use crate::api::MLModel;
use crate::lifecycle::observe;
use crate::resources::{MANAGED_BY, MANAGED_BY_LABEL, MODEL_LABEL};

/// The caches behind the watch streams. Cheap to clone.
#[derive(Clone)]
pub struct Caches {
    /// MLModels, kept untyped so one malformed object cannot break the stream for the others.
    pub models: Store<DynamicObject>,
    /// The operator's PVCs.
    pub pvcs: Store<PersistentVolumeClaim>,
    /// The operator's Jobs.
    pub jobs: Store<Job>,
    /// The operator's pods.
    pub pods: Store<Pod>,
    /// The operator's Deployments.
    pub deployments: Store<Deployment>,
    /// The operator's Services.
    pub services: Store<Service>,
}

impl Caches {
    /// The model's current object, if it exists.
    pub fn model(&self, key: &ModelKey) -> Option<Arc<DynamicObject>> {
        let ar = ApiResource::erase::<MLModel>(&());
        self.models
            .get(&ObjectRef::new_with(&key.name, ar).within(&key.namespace))
    }

    /// Everything cached about `key`'s children, as the lifecycle core sees it.
    pub fn observed(&self, key: &ModelKey) -> observe::Observed {
        let ours = |labels: &std::collections::BTreeMap<String, String>| {
            labels.get(MODEL_LABEL).map(String::as_str) == Some(key.name.as_str())
        };
        observe::Observed {
            pvc: self
                .pvcs
                .get(&obj_ref(crate::resources::pvc_name(&key.name), key))
                .map(|p| observe::pvc(&p)),
            jobs: self
                .jobs
                .state_filter(|j| j.namespace().as_deref() == Some(&key.namespace) && ours(j.labels()))
                .iter()
                .filter_map(|j| observe::job(j))
                .collect(),
            pods: self
                .pods
                .state_filter(|p| p.namespace().as_deref() == Some(&key.namespace) && ours(p.labels()))
                .iter()
                .map(|p| observe::pod(p))
                .collect(),
            deployment: self
                .deployments
                .get(&obj_ref(crate::resources::deployment_name(&key.name), key))
                .map(|d| observe::deployment(&d)),
            service: self
                .services
                .get(&obj_ref(crate::resources::service_name(&key.name), key))
                .map(|s| observe::service(&s)),
            now: k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        }
    }
}

fn obj_ref<K: Resource<DynamicType = ()>>(name: String, key: &ModelKey) -> ObjectRef<K> {
    ObjectRef::new(&name).within(&key.namespace)
}

/// Tracks which watches have listed everything once.
#[derive(Clone)]
pub struct Readiness {
    synced: Arc<AtomicUsize>,
    total: usize,
    tx: Arc<watch::Sender<bool>>,
}

impl Readiness {
    fn new(total: usize) -> (Self, watch::Receiver<bool>) {
        let (tx, rx) = watch::channel(false);
        (
            Self {
                synced: Arc::new(AtomicUsize::new(0)),
                total,
                tx: Arc::new(tx),
            },
            rx,
        )
    }

    fn one_synced(&self) {
        if self.synced.fetch_add(1, Ordering::SeqCst) + 1 == self.total {
            let _ = self.tx.send(true);
        }
    }
}

/// Where routed events go: the supervisor while this replica leads, nowhere otherwise.
pub type Route = watch::Receiver<Option<ActorRef<SupervisorMsg>>>;

/// Starts the six watch streams. Returns the caches and a receiver that turns true once every
/// stream has listed its objects. The streams run until the process ends.
pub fn start(client: Client, route: Route) -> (Caches, watch::Receiver<bool>) {
    let (ready, ready_rx) = Readiness::new(6);
    let selector = format!("{MANAGED_BY_LABEL}={MANAGED_BY}");
    let children = watcher::Config::default().labels(&selector).any_semantic();

    let ar = ApiResource::erase::<MLModel>(&());
    let w = Writer::new(ar.clone());
    let models = w.as_reader();
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    spawn_stream(
        "MLModel",
        watcher::watcher(api, watcher::Config::default().any_semantic()),
        w,
        ready.clone(),
        route.clone(),
        |obj, deleted| {
            Some(SupervisorMsg::Model {
                key: key_of(obj)?,
                deleted,
            })
        },
    );
    let (pvcs, w) = reflector::store();
    spawn_stream(
        "PersistentVolumeClaim",
        watch_all(&client, children.clone()),
        w,
        ready.clone(),
        route.clone(),
        |p: &PersistentVolumeClaim, deleted| child(p, ChildUpdate::Pvc((!deleted).then(|| observe::pvc(p)))),
    );
    let (jobs, w) = reflector::store();
    spawn_stream(
        "Job",
        watch_all(&client, children.clone()),
        w,
        ready.clone(),
        route.clone(),
        |j: &Job, deleted| {
            child(
                j,
                ChildUpdate::Job(j.name_any(), if deleted { None } else { observe::job(j) }),
            )
        },
    );
    let (pods, w) = reflector::store();
    spawn_stream(
        "Pod",
        watch_all(&client, children.clone()),
        w,
        ready.clone(),
        route.clone(),
        |p: &Pod, deleted| {
            child(
                p,
                ChildUpdate::Pod(p.name_any(), (!deleted).then(|| Box::new(observe::pod(p)))),
            )
        },
    );
    let (deployments, w) = reflector::store();
    spawn_stream(
        "Deployment",
        watch_all(&client, children.clone()),
        w,
        ready.clone(),
        route.clone(),
        |d: &Deployment, deleted| child(d, ChildUpdate::Deployment((!deleted).then(|| observe::deployment(d)))),
    );
    let (services, w) = reflector::store();
    spawn_stream(
        "Service",
        watch_all(&client, children),
        w,
        ready,
        route,
        |s: &Service, deleted| child(s, ChildUpdate::Service((!deleted).then(|| observe::service(s)))),
    );
    (
        Caches {
            models,
            pvcs,
            jobs,
            pods,
            deployments,
            services,
        },
        ready_rx,
    )
}

fn watch_all<K>(
    client: &Client,
    config: watcher::Config,
) -> impl Stream<Item = watcher::Result<Event<K>>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    watcher::watcher(Api::<K>::all(client.clone()), config)
}

fn key_of<K: Resource>(obj: &K) -> Option<ModelKey> {
    Some(ModelKey {
        namespace: obj.meta().namespace.clone()?,
        name: obj.meta().name.clone()?,
    })
}

fn child<K: Resource>(obj: &K, update: ChildUpdate) -> Option<SupervisorMsg> {
    let model = obj.meta().labels.as_ref()?.get(MODEL_LABEL)?.clone();
    Some(SupervisorMsg::Child {
        key: ModelKey {
            namespace: obj.meta().namespace.clone()?,
            name: model,
        },
        update,
    })
}

fn spawn_stream<K, S, F>(
    kind: &'static str,
    stream: S,
    writer: Writer<K>,
    ready: Readiness,
    route: Route,
    to_message: F,
) where
    K: Resource + Clone + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
    S: Stream<Item = watcher::Result<Event<K>>> + Send + 'static,
    F: Fn(&K, bool) -> Option<SupervisorMsg> + Send + 'static,
{
    let stream = stream
        .default_backoff()
        .modify(|o: &mut K| {
            // Managed fields are the bulk of most objects and no decision needs them.
            o.meta_mut().managed_fields = None;
        })
        .reflect(writer);
    // Deliberately not instrumented: a span here would live as long as the process and
    // every model's trace would collapse into it.
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            let event = match item {
                Ok(event) => event,
                Err(error) => {
                    tracing::warn!(%error, kind, "watch error; retrying");
                    continue;
                }
            };
            let (obj, deleted) = match &event {
                Event::Apply(o) | Event::InitApply(o) => (o, false),
                Event::Delete(o) => (o, true),
                Event::InitDone => {
                    ready.one_synced();
                    continue;
                }
                Event::Init => continue,
            };
            let Some(message) = to_message(obj, deleted) else {
                continue;
            };
            let supervisor = route.borrow().clone();
            if let Some(supervisor) = supervisor {
                // A stopped supervisor means leadership was lost; the event is in the cache.
                let _ = supervisor.cast(message);
            }
        }
    });
}

//! One watch stream per kind for the whole operator (per kind and watched namespace when the
//! operator is limited to a list of namespaces). Each stream feeds a cache and an index
//! from model to children, and wakes the model an event concerns. The caches are the one source
//! of truth: a model actor rebuilds what it observes from them ([`Caches::observed`]) on every
//! reconcile, so a message carries nothing but "look again".
//!
//! A relist (410 Gone, an API server restart, a long disconnect) replaces a cache without a
//! Delete event for objects deleted in the gap; the index is replaced with it, and every model
//! whose children differ afterwards is woken.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use futures::{Stream, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{WatchEvent, WatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use ractor::ActorRef;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::ModelKey;
use super::children::{ChildCache, Controller, Listed, Summarise, Summary};
use super::messages::{Priority, SupervisorMsg};
use super::warnings::{Involved, Kept, Warnings, kept};
use crate::cluster::Written;
use crate::lifecycle::cached::{CachedDeployment, CachedJob, CachedModel, CachedPod, CachedPvc, CachedService};
use crate::lifecycle::observe::{self, DeploymentObs, JobObs, PodObs, PvcObs, ServiceObs};
use crate::resources::{MANAGED_BY, MANAGED_BY_LABEL};

/// Child names per model.
type ChildNames = HashMap<ModelKey, Names>;

/// The names of a model's children of one kind: a sorted list, as there are one or two (a
/// `BTreeSet` node would cost ten times the names themselves).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Names(Vec<String>);

impl Names {
    fn insert(&mut self, name: String) {
        if let Err(at) = self.0.binary_search(&name) {
            self.0.insert(at, name);
        }
    }

    fn remove(&mut self, name: &str) {
        if let Ok(at) = self.0.binary_search_by(|n| n.as_str().cmp(name)) {
            self.0.remove(at);
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = &String> {
        self.0.iter()
    }
}

#[cfg(test)]
impl<const N: usize> From<[String; N]> for Names {
    fn from(names: [String; N]) -> Self {
        let mut list = Self::default();
        for name in names {
            list.insert(name);
        }
        list
    }
}

/// A relist in progress: the names it listed so far, and the models whose children changed.
type Relist = (ChildNames, HashSet<ModelKey>);

/// Names of one kind's children, per model.
#[derive(Default)]
struct KindIndex(RwLock<ChildNames>);

impl KindIndex {
    fn names(&self, key: &ModelKey) -> Vec<String> {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        map.get(key).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }

    fn insert(&self, key: ModelKey, name: String) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        map.entry(key).or_default().insert(name);
    }

    fn remove(&self, key: &ModelKey, name: &str) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        if let Some(names) = map.get_mut(key) {
            names.remove(name);
            if names.is_empty() {
                map.remove(key);
            }
        }
    }

    /// Replaces the index of the models in `namespace` (all of them for `None`) after a
    /// relist of that namespace; returns the models whose children differ.
    fn replace(&self, namespace: Option<&str>, fresh: ChildNames) -> HashSet<ModelKey> {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        let within = |k: &ModelKey| namespace.is_none_or(|ns| k.namespace == ns);
        let mut changed: HashSet<ModelKey> = map
            .iter()
            .filter(|(k, names)| within(k) && fresh.get(*k) != Some(*names))
            .map(|(k, _)| k.clone())
            .collect();
        changed.extend(fresh.keys().filter(|k| !map.contains_key(*k)).cloned());
        map.retain(|k, _| !within(k));
        map.extend(fresh);
        changed
    }
}

/// The index from model (namespace, name) to its children, one per kind.
#[derive(Default)]
struct Index {
    pvcs: KindIndex,
    jobs: KindIndex,
    pods: KindIndex,
    deployments: KindIndex,
    services: KindIndex,
}

/// One kind's cache: a store per watch, that is one for the whole cluster or one per watched
/// namespace. Cheap to clone.
pub struct Stores<K: Resource + Clone + 'static>(Vec<(Option<String>, Store<K>)>)
where
    K::DynamicType: Eq + Hash + Clone;

impl<K: Resource + Clone + 'static> Default for Stores<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<K: Resource + Clone + 'static> Clone for Stores<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<K: Resource + Clone + 'static> Stores<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    fn push(&mut self, namespace: &Option<String>, store: Store<K>) {
        self.0.push((namespace.clone(), store));
    }

    /// The cached object `key` names, from the store of its namespace.
    pub fn get(&self, key: &ObjectRef<K>) -> Option<Arc<K>> {
        let ns = key.namespace.as_deref();
        let (_, store) = self.0.iter().find(|(w, _)| w.is_none() || w.as_deref() == ns)?;
        store.get(key)
    }

    /// Every cached object.
    pub fn state(&self) -> Vec<Arc<K>> {
        self.0.iter().flat_map(|(_, store)| store.state()).collect()
    }
}

/// The caches behind the watch streams. Cheap to clone.
#[derive(Clone)]
pub struct Caches {
    /// MLModels, spec and status kept as text so one malformed object cannot break the stream
    /// for the others.
    pub models: Stores<CachedModel>,
    /// The operator's PVCs, Jobs, pods, Deployments and Services, each as its summary.
    children: Arc<Children>,
    index: Arc<Index>,
    warnings: Arc<Warnings>,
}

/// The operator's children by kind, each as its summary.
#[derive(Default)]
struct Children {
    pvcs: ChildCache<PvcObs>,
    jobs: ChildCache<Option<JobObs>>,
    pods: ChildCache<PodObs>,
    deployments: ChildCache<DeploymentObs>,
    services: ChildCache<ServiceObs>,
}

/// Who owns a child, as seen from one model.
#[derive(Debug, PartialEq, Eq)]
enum Owner {
    /// The model itself (this uid).
    This,
    /// An MLModel of the same name with another uid: a deleted model whose children are
    /// being garbage-collected.
    Previous,
    /// Anything else.
    Foreign,
}

fn owner_of(controller: Option<&Controller>, key: &ModelKey, uid: &str) -> Owner {
    match controller {
        Some(c) if c.uid == uid => Owner::This,
        Some(c) if c.model.as_deref() == Some(key.name.as_str()) => Owner::Previous,
        _ => Owner::Foreign,
    }
}

impl Caches {
    /// The model's current object, if it exists.
    pub fn model(&self, key: &ModelKey) -> Option<Arc<CachedModel>> {
        self.models.get(&ObjectRef::new(&key.name).within(&key.namespace))
    }

    /// The resourceVersion the caches hold for the child `written` names.
    pub fn resource_version(&self, written: &Written, namespace: &str, name: &str) -> Option<String> {
        fn rv<O>(cache: &ChildCache<O>, ns: &str, name: &str) -> Option<String> {
            cache.get(ns, name)?.resource_version.clone()
        }
        let children = &self.children;
        match written {
            Written::Pvc(_) => rv(&children.pvcs, namespace, name),
            Written::Job(_) => rv(&children.jobs, namespace, name),
            Written::Deployment(_) => rv(&children.deployments, namespace, name),
            Written::Service(_) => rv(&children.services, namespace, name),
            Written::Finalizer => self
                .model(&ModelKey {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                })?
                .resource_version(),
        }
    }

    /// What the caches show of the children of model `key` with `uid`, as the lifecycle core
    /// sees it. Read through the index: the cost is that of the model's own children.
    pub fn observed(&self, key: &ModelKey, uid: &str) -> observe::Observed {
        let mut observed = observe::Observed::default();
        let mut sort = |controller: Option<&Controller>, name: &str, kind: &str| -> bool {
            match owner_of(controller, key, uid) {
                Owner::This => true,
                Owner::Previous => {
                    observed.previous_owner.push(format!("{kind}/{name}"));
                    false
                }
                Owner::Foreign => {
                    observed.foreign.push(format!("{kind}/{name}"));
                    false
                }
            }
        };
        let children = &self.children;
        let mut pvc = None;
        for p in lookup(&children.pvcs, &self.index.pvcs, key) {
            if sort(p.controller.as_ref(), &p.name, "persistentvolumeclaim")
                && p.name == crate::resources::pvc_name(&key.name)
            {
                pvc = Some(observe::PvcObs {
                    warning: self.warning(&p, &key.namespace, "PersistentVolumeClaim"),
                    ..p.obs.clone()
                });
            }
        }
        let mut jobs = Vec::new();
        for j in lookup(&children.jobs, &self.index.jobs, key) {
            if sort(j.controller.as_ref(), &j.name, "job")
                && let Some(obs) = &j.obs
            {
                jobs.push(observe::JobObs {
                    warning: self.warning(&j, &key.namespace, "Job"),
                    ..obs.clone()
                });
            }
        }
        let mut deployment = None;
        for d in lookup(&children.deployments, &self.index.deployments, key) {
            if sort(d.controller.as_ref(), &d.name, "deployment")
                && d.name == crate::resources::deployment_name(&key.name)
            {
                deployment = Some(d.obs.clone());
            }
        }
        let mut service = None;
        for s in lookup(&children.services, &self.index.services, key) {
            if sort(s.controller.as_ref(), &s.name, "service") && s.name == crate::resources::service_name(&key.name) {
                service = Some(s.obs.clone());
            }
        }
        // Pods belong to a Job or a ReplicaSet; the uid label says which model they serve.
        // Pods of a previous model are gone with its Jobs and Deployment, never waited for.
        let pods = lookup(&children.pods, &self.index.pods, key)
            .filter(|p| p.model_uid.as_deref().is_none_or(|u| u == uid))
            .map(|p| observe::PodObs {
                warning: self.warning(&p, &key.namespace, "Pod"),
                ..p.obs.clone()
            })
            .collect::<Vec<_>>();
        observed.pvc = pvc;
        observed.jobs = jobs;
        observed.jobs.sort_by_key(|j| j.version);
        observed.pods = pods;
        observed.pods.sort_by(|a, b| a.name.cmp(&b.name));
        observed.deployment = deployment;
        observed.service = service;
        observed
    }
}

impl Caches {
    /// The latest kept Warning Event about a child.
    fn warning<O>(&self, child: &Summary<O>, namespace: &str, kind: &str) -> Option<observe::Warning> {
        if self.warnings.is_empty() {
            return None;
        }
        self.warnings.latest(kind, namespace, &child.name, child.uid.as_deref())
    }

    /// The model a child of `kind` belongs to, from the caches.
    fn model_of_child(&self, involved: &Involved) -> Option<ModelKey> {
        let (ns, name) = (involved.namespace.as_str(), involved.name.as_str());
        let children = &self.children;
        let model = match involved.kind {
            "Pod" => children.pods.get(ns, name)?.model.clone(),
            "Job" => children.jobs.get(ns, name)?.model.clone(),
            "PersistentVolumeClaim" => children.pvcs.get(ns, name)?.model.clone(),
            _ => return None,
        };
        Some(ModelKey {
            namespace: involved.namespace.clone(),
            name: model,
        })
    }
}

fn lookup<'a, O>(
    cache: &'a ChildCache<O>,
    index: &KindIndex,
    key: &'a ModelKey,
) -> impl Iterator<Item = Arc<Summary<O>>> + 'a {
    index
        .names(key)
        .into_iter()
        .filter_map(move |name| cache.get(&key.namespace, &name))
}

/// Tracks which streams have listed everything once: ready when every one of them has, and
/// never because one stream relisted twice.
#[derive(Clone)]
pub struct Readiness {
    listed: Arc<[AtomicBool]>,
    tx: Arc<watch::Sender<bool>>,
}

impl Readiness {
    fn new(streams: usize) -> (Self, watch::Receiver<bool>) {
        let (tx, rx) = watch::channel(false);
        let listed: Vec<AtomicBool> = (0..streams).map(|_| AtomicBool::new(false)).collect();
        (
            Self {
                listed: listed.into(),
                tx: Arc::new(tx),
            },
            rx,
        )
    }

    fn listed(&self, stream: usize) {
        if let Some(flag) = self.listed.get(stream) {
            flag.store(true, Ordering::SeqCst);
        }
        if self.listed.iter().all(|f| f.load(Ordering::SeqCst)) {
            let _ = self.tx.send(true);
        }
    }
}

/// Where wake-ups go: the supervisor while this replica leads, nowhere otherwise (a new
/// leader's supervisor rebuilds every model from the caches).
pub type Route = watch::Receiver<Option<ActorRef<SupervisorMsg>>>;

fn send(route: &Route, message: SupervisorMsg) {
    let supervisor = route.borrow().clone();
    if let Some(supervisor) = supervisor {
        // A stopped supervisor means leadership was lost; the next one reads the caches.
        let _ = supervisor.cast(message);
    }
}

/// The kinds the operator watches, in the order of their readiness flags.
const STREAMS: [&str; 7] = [
    "MLModel",
    "PersistentVolumeClaim",
    "Job",
    "Pod",
    "Deployment",
    "Service",
    "Event",
];

/// Starts the seven watch streams of each entry of `watches` (`None`: the whole cluster; a
/// namespace: that namespace only). Returns the caches and a receiver that turns true once
/// every stream has listed its objects. The streams run until the process ends.
/// `streamed`: each stream's first listing (and every relisting) is a watch that sends the
/// existing objects one by one ([`probe_streaming_lists`]), instead of a list that arrives
/// as one response.
pub fn start(
    client: Client,
    route: Route,
    watches: &[Option<String>],
    streamed: bool,
) -> (Caches, watch::Receiver<bool>) {
    let (ready, ready_rx) = Readiness::new(STREAMS.len() * watches.len());
    let config = if streamed {
        watcher::Config::default().streaming_lists()
    } else {
        watcher::Config::default().any_semantic()
    };
    let selector = format!("{MANAGED_BY_LABEL}={MANAGED_BY}");
    let children_config = config.clone().labels(&selector);
    let index = Arc::new(Index::default());
    let children = Arc::new(Children::default());
    let mut caches = Caches {
        models: Stores::default(),
        children: children.clone(),
        index: index.clone(),
        warnings: Arc::default(),
    };
    for (n, namespace) in watches.iter().enumerate() {
        let ns = namespace.as_deref();
        // Readiness flags of this watch: one per kind, in the order of STREAMS.
        let flag = |kind: usize| n * STREAMS.len() + kind;
        let (store, w) = reflector::store();
        caches.models.push(namespace, store);
        let stream = watch(&client, ns, config.clone()).modify(trim_model).reflect(w);
        tokio::spawn(run_model_stream(stream, ready.clone(), flag(0), route.clone()));

        let child = |kind: usize| ChildStream {
            kind: STREAMS[kind],
            flag: flag(kind),
            namespace: namespace.clone(),
            index: index.clone(),
            children: children.clone(),
            ready: ready.clone(),
            route: route.clone(),
        };
        let stream = watch::<CachedPvc>(&client, ns, children_config.clone());
        child(1).spawn(stream, |c| &c.pvcs, |i| &i.pvcs);
        let stream = watch::<CachedJob>(&client, ns, children_config.clone());
        child(2).spawn(stream, |c| &c.jobs, |i| &i.jobs);
        let stream = watch::<CachedPod>(&client, ns, children_config.clone());
        child(3).spawn(stream, |c| &c.pods, |i| &i.pods);
        let stream = watch::<CachedDeployment>(&client, ns, children_config.clone());
        child(4).spawn(stream, |c| &c.deployments, |i| &i.deployments);
        let stream = watch::<CachedService>(&client, ns, children_config.clone());
        child(5).spawn(stream, |c| &c.services, |i| &i.services);
        let warnings = watch(&client, ns, config.clone().fields("type=Warning"));
        tokio::spawn(run_warning_stream(
            warnings,
            caches.clone(),
            namespace.clone(),
            ready.clone(),
            flag(6),
            route.clone(),
        ));
    }
    (caches, ready_rx)
}

/// Whether the API server streams a watch's initial objects (`sendInitialEvents`, served by
/// default from Kubernetes 1.34): a watch of MLModels in `ns` that matches none must end its
/// initial events with the bookmark that says so, within a few seconds. A refusal (the
/// `WatchList` feature gate off), an error or silence all answer no.
pub async fn probe_streaming_lists(client: &Client, ns: Option<&str>) -> bool {
    const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";
    let api: Api<CachedModel> = api_in(client, ns);
    // No name has a slash, so the selector matches no model.
    let params = WatchParams::streaming_lists().fields("metadata.name=/").timeout(5);
    let answer = async {
        let stream = match api.watch(&params, "0").await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::info!(%error, "the API server does not stream initial lists");
                return false;
            }
        };
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(WatchEvent::Bookmark(b)) if b.metadata.annotations.contains_key(INITIAL_EVENTS_END) => {
                    return true;
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::info!(%error, "the API server's streamed list failed");
                    return false;
                }
            }
        }
        tracing::info!("the API server's watch ended without the bookmark that ends its initial events");
        false
    };
    let bound = std::time::Duration::from_secs(10);
    tokio::time::timeout(bound, answer).await.unwrap_or_else(|_| {
        tracing::info!(?bound, "the API server did not finish a streamed list in time");
        false
    })
}

/// A watch of kind `K` in namespace `ns`, or in the whole cluster.
fn watch<K>(
    client: &Client,
    ns: Option<&str>,
    config: watcher::Config,
) -> impl Stream<Item = watcher::Result<Event<K>>> + Send + 'static
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    watcher::watcher(api_in(client, ns), config).default_backoff()
}

/// Kind `K` in namespace `ns`, or in the whole cluster.
fn api_in<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The model as cached (its managed fields are not even read): `kubectl apply`'s copy of the
/// last applied manifest (the whole spec again) is not kept.
fn trim_model(o: &mut CachedModel) {
    if let Some(annotations) = o.metadata.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// One child stream of one watch: which kind, its readiness flag, the namespace it lists.
struct ChildStream {
    kind: &'static str,
    flag: usize,
    namespace: Option<String>,
    index: Arc<Index>,
    children: Arc<Children>,
    ready: Readiness,
    route: Route,
}

impl ChildStream {
    /// Runs the stream: keeps its kind's summaries and its part of the index, and wakes the
    /// model each event concerns.
    fn spawn<K, S>(self, stream: S, cache: fn(&Children) -> &ChildCache<K::Obs>, part: fn(&Index) -> &KindIndex)
    where
        K: Summarise,
        S: Stream<Item = watcher::Result<Event<K>>> + Send + 'static,
    {
        let ChildStream {
            kind,
            flag,
            namespace,
            index,
            children,
            ready,
            route,
        } = self;
        // Deliberately not instrumented: a span here would live as long as the process and every
        // model's trace would collapse into it.
        tokio::spawn(async move {
            hold_for_fault_injection(kind).await;
            futures::pin_mut!(stream);
            let mut relist: Option<(Relist, Listed<K::Obs>)> = None;
            while let Some(item) = stream.next().await {
                let event = match item {
                    Ok(event) => event,
                    Err(error) => {
                        tracing::warn!(%error, kind, "watch error; retrying");
                        continue;
                    }
                };
                match event {
                    Event::Apply(o) => {
                        let Some((key, summary)) = o.placed() else { continue };
                        part(&index).insert(key.clone(), summary.name.clone());
                        cache(&children).insert(&key.namespace, summary);
                        send(&route, SupervisorMsg::Child { key });
                    }
                    Event::Delete(o) => {
                        let Some((key, summary)) = o.placed() else { continue };
                        part(&index).remove(&key, &summary.name);
                        cache(&children).remove(&key.namespace, &summary.name);
                        send(&route, SupervisorMsg::Child { key });
                    }
                    Event::Init => relist = Some(Default::default()),
                    Event::InitApply(o) => {
                        let (Some((key, summary)), Some(((fresh, changed), listed))) = (o.placed(), relist.as_mut())
                        else {
                            continue;
                        };
                        // The cache still shows the state before the relist: a model whose child
                        // changed in the gap is woken once the relist is complete.
                        let before = cache(&children).get(&key.namespace, &summary.name);
                        if before.is_none_or(|b| b.resource_version != summary.resource_version) {
                            changed.insert(key.clone());
                        }
                        let name = summary.name.clone();
                        listed
                            .entry(key.namespace.clone())
                            .or_default()
                            .insert(name.clone(), Arc::new(summary));
                        fresh.entry(key).or_default().insert(name);
                    }
                    Event::InitDone => {
                        let ((fresh, mut changed), listed) = relist.take().unwrap_or_default();
                        cache(&children).replace(namespace.as_deref(), listed);
                        changed.extend(part(&index).replace(namespace.as_deref(), fresh));
                        tracing::debug!(kind, woken = changed.len(), "watch listed");
                        ready.listed(flag);
                        for key in changed {
                            send(&route, SupervisorMsg::Child { key });
                        }
                    }
                }
            }
        });
    }
}

/// What a model event must change to wake its actor: identity, generation (the spec),
/// deletion, finalizers, labels and annotations. A status write alone (the operator's own,
/// echoed back) wakes nobody.
fn fingerprint(meta: &ObjectMeta) -> u64 {
    let mut h = DefaultHasher::new();
    meta.uid.hash(&mut h);
    meta.generation.hash(&mut h);
    meta.deletion_timestamp.as_ref().map(|t| t.0.as_second()).hash(&mut h);
    meta.finalizers.hash(&mut h);
    meta.labels.hash(&mut h);
    meta.annotations.hash(&mut h);
    h.finish()
}

fn model_key(meta: &ObjectMeta) -> Option<ModelKey> {
    Some(ModelKey {
        namespace: meta.namespace.clone()?,
        name: meta.name.clone()?,
    })
}

/// Runs the MLModel stream: tells the supervisor about models that appear, change (other than
/// by a status write) or go.
async fn run_model_stream<S>(stream: S, ready: Readiness, flag: usize, route: Route)
where
    S: Stream<Item = watcher::Result<Event<CachedModel>>> + Send + 'static,
{
    hold_for_fault_injection(STREAMS[0]).await;
    futures::pin_mut!(stream);
    // Per model: its uid and fingerprint.
    let mut seen: HashMap<ModelKey, (String, u64)> = HashMap::new();
    let mut relist: Option<HashMap<ModelKey, (String, u64)>> = None;
    let mut listed = false;
    let changed =
        |seen: &HashMap<ModelKey, (String, u64)>, key: &ModelKey, entry: &(String, u64)| seen.get(key) != Some(entry);
    while let Some(item) = stream.next().await {
        let event = match item {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(%error, kind = "MLModel", "watch error; retrying");
                continue;
            }
        };
        match event {
            Event::Apply(o) => {
                let Some(key) = model_key(&o.metadata) else { continue };
                let entry = (o.metadata.uid.clone().unwrap_or_default(), fingerprint(&o.metadata));
                if changed(&seen, &key, &entry) {
                    let uid = entry.0.clone();
                    seen.insert(key.clone(), entry);
                    send(
                        &route,
                        SupervisorMsg::Model {
                            key,
                            uid,
                            deleted: false,
                            priority: Priority::User,
                        },
                    );
                }
            }
            Event::Delete(o) => {
                let Some(key) = model_key(&o.metadata) else { continue };
                seen.remove(&key);
                let uid = o.metadata.uid.clone().unwrap_or_default();
                send(
                    &route,
                    SupervisorMsg::Model {
                        key,
                        uid,
                        deleted: true,
                        priority: Priority::User,
                    },
                );
            }
            Event::Init => relist = Some(HashMap::new()),
            Event::InitApply(o) => {
                if let (Some(key), Some(fresh)) = (model_key(&o.metadata), relist.as_mut()) {
                    fresh.insert(
                        key,
                        (o.metadata.uid.clone().unwrap_or_default(), fingerprint(&o.metadata)),
                    );
                }
            }
            Event::InitDone => {
                let fresh = relist.take().unwrap_or_default();
                // The first list is what the operator finds as it starts: background work. A
                // later relist's differences are users' changes the watch missed.
                let priority = if listed { Priority::User } else { Priority::Background };
                listed = true;
                let mut messages = Vec::new();
                for (key, (uid, _)) in seen.iter().filter(|(k, v)| fresh.get(*k).is_none_or(|f| f.0 != v.0)) {
                    messages.push(SupervisorMsg::Model {
                        key: key.clone(),
                        uid: uid.clone(),
                        deleted: true,
                        priority,
                    });
                }
                for (key, entry) in fresh.iter().filter(|(k, v)| changed(&seen, k, v)) {
                    messages.push(SupervisorMsg::Model {
                        key: key.clone(),
                        uid: entry.0.clone(),
                        deleted: false,
                        priority,
                    });
                }
                seen = fresh;
                tracing::debug!(kind = "MLModel", changed = messages.len(), "watch listed");
                ready.listed(flag);
                for message in messages {
                    send(&route, message);
                }
            }
        }
    }
}

/// Runs the Warning Event stream: keeps the Events that explain a stuck child and wakes the
/// model of the child each one is about.
async fn run_warning_stream<S>(
    stream: S,
    caches: Caches,
    namespace: Option<String>,
    ready: Readiness,
    flag: usize,
    route: Route,
) where
    S: Stream<Item = watcher::Result<Event<k8s_openapi::api::core::v1::Event>>> + Send + 'static,
{
    hold_for_fault_injection(STREAMS[6]).await;
    futures::pin_mut!(stream);
    let mut relist: Option<Kept> = None;
    let wake = |involved: &Involved| {
        if let Some(key) = caches.model_of_child(involved) {
            send(&route, SupervisorMsg::Child { key });
        }
    };
    while let Some(item) = stream.next().await {
        let event = match item {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(%error, kind = "Event", "watch error; retrying");
                continue;
            }
        };
        match event {
            Event::Apply(e) => {
                if let Some(involved) = caches.warnings.apply(&e) {
                    wake(&involved);
                }
            }
            Event::Delete(e) => {
                if let Some(involved) = caches.warnings.delete(&e) {
                    wake(&involved);
                }
            }
            Event::Init => relist = Some(Kept::new()),
            Event::InitApply(e) => {
                if let (Some((involved, name, entry)), Some(fresh)) = (kept(&e), relist.as_mut()) {
                    fresh.entry(involved).or_default().insert(name, entry);
                }
            }
            Event::InitDone => {
                let fresh = relist.take().unwrap_or_default();
                let changed = caches.warnings.replace(namespace.as_deref(), fresh);
                tracing::debug!(kind = "Event", woken = changed.len(), "watch listed");
                ready.listed(flag);
                changed.iter().for_each(wake);
            }
        }
    }
}

/// With the `fault-injection` feature, `MLMODEL_FAULT_DELAY_WATCH=<Kind>:<seconds>` holds one
/// stream back before it starts, so tests can watch readiness wait for it.
async fn hold_for_fault_injection(kind: &str) {
    #[cfg(feature = "fault-injection")]
    if let Ok(spec) = std::env::var("MLMODEL_FAULT_DELAY_WATCH")
        && let Some((k, secs)) = spec.split_once(':')
        && k == kind
        && let Ok(secs) = secs.parse::<u64>()
    {
        tracing::warn!(kind, secs, "fault injected: the watch starts late");
        tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = kind;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ModelKey {
        ModelKey {
            namespace: "ml".into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_relist_reports_the_models_whose_children_changed() {
        let index = KindIndex::default();
        index.insert(key("a"), "a-v1".into());
        index.insert(key("b"), "b-v1".into());
        index.insert(key("c"), "c-v1".into());
        let fresh = HashMap::from([
            (key("a"), Names::from(["a-v1".to_owned()])),
            (key("b"), Names::from(["b-v2".to_owned()])),
            (key("d"), Names::from(["d-v1".to_owned()])),
        ]);
        let changed = index.replace(None, fresh);
        assert_eq!(changed, HashSet::from([key("b"), key("c"), key("d")]));
        assert_eq!(index.names(&key("c")), Vec::<String>::new());
        assert_eq!(index.names(&key("b")), vec!["b-v2".to_owned()]);
    }

    #[test]
    fn a_relist_of_one_namespace_leaves_the_others_index_alone() {
        let index = KindIndex::default();
        let other = ModelKey {
            namespace: "other".into(),
            name: "a".into(),
        };
        index.insert(key("a"), "a-v1".into());
        index.insert(other.clone(), "a-v1".into());
        let changed = index.replace(Some("ml"), HashMap::new());
        assert_eq!(changed, HashSet::from([key("a")]));
        assert_eq!(index.names(&key("a")), Vec::<String>::new());
        assert_eq!(index.names(&other), vec!["a-v1".to_owned()]);
    }

    #[test]
    fn ownership_tells_this_model_a_previous_one_and_strangers_apart() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        let owned = |kind: &str, name: &str, uid: &str| ObjectMeta {
            owner_references: Some(vec![OwnerReference {
                kind: kind.into(),
                name: name.into(),
                uid: uid.into(),
                controller: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(
            owner_of(
                Controller::of(&owned("MLModel", "iris", "u2")).as_ref(),
                &key("iris"),
                "u2"
            ),
            Owner::This
        );
        assert_eq!(
            owner_of(
                Controller::of(&owned("MLModel", "iris", "u1")).as_ref(),
                &key("iris"),
                "u2"
            ),
            Owner::Previous
        );
        assert_eq!(
            owner_of(
                Controller::of(&owned("MLModel", "other", "u1")).as_ref(),
                &key("iris"),
                "u2"
            ),
            Owner::Foreign
        );
        assert_eq!(
            owner_of(Controller::of(&ObjectMeta::default()).as_ref(), &key("iris"), "u2"),
            Owner::Foreign
        );
    }

    #[test]
    fn a_status_write_does_not_change_the_fingerprint() {
        let meta = ObjectMeta {
            uid: Some("u1".into()),
            generation: Some(1),
            resource_version: Some("10".into()),
            ..Default::default()
        };
        let echoed = ObjectMeta {
            resource_version: Some("11".into()),
            ..meta.clone()
        };
        assert_eq!(fingerprint(&meta), fingerprint(&echoed));
        let respec = ObjectMeta {
            generation: Some(2),
            ..meta.clone()
        };
        assert_ne!(fingerprint(&meta), fingerprint(&respec));
    }
}

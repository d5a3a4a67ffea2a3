//! Cluster I/O for the model actors: children created (never adopted) and then kept by
//! server-side apply with one field manager, deletes, finalizers, status writes through the
//! status subresource, and Events. Every request waits for the client-side rate limit and ends
//! with the leadership fence.

use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::api::{FINALIZER, MLModel, MLModelStatus};
use crate::events::Recorder;
use crate::leader::Fence;
use crate::lifecycle::observe::{self, DeploymentObs, JobObs, PvcObs, ServiceObs};
use crate::lifecycle::{Action, ChildRef, EventNote};
use crate::metrics::Metrics;

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "mlmodel-operator";

/// A failed API call, classified by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Worth retrying with backoff: connection errors, 5xx, 429, 409 conflicts, timeouts.
    #[error("transient API error during {action}: {source}")]
    Transient {
        /// What was being done.
        action: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// This replica is not (or no longer surely) the leader, or it is shutting down; nothing
    /// was written.
    #[error("not the leader, or shutting down: {action} was not carried out")]
    Fenced {
        /// What was refused.
        action: String,
    },
    /// An object with a child's name exists and this model does not own it: it is never
    /// adopted.
    #[error("{object} already exists and is not owned by this MLModel")]
    Conflict {
        /// `kind/name` of the object.
        object: String,
        /// Owned by an MLModel of the same name with another uid (a deleted model whose
        /// children are being garbage-collected).
        previous_owner: bool,
    },
    /// The API server refused a write with 403: a ResourceQuota, a LimitRange, an admission
    /// policy, a terminating namespace or missing RBAC. Retried with backoff, since the cause
    /// can go away without the spec changing; the model's status says why meanwhile.
    #[error("the API server refused {action}: {message}")]
    Refused {
        /// What was being done.
        action: String,
        /// The server's message.
        message: String,
    },
    /// The API server refused the object (422 Invalid, 400): retrying will not help until
    /// the spec changes.
    #[error("the API server rejected {action}: {message}")]
    Rejected {
        /// HTTP status code.
        code: u16,
        /// What was being done.
        action: String,
        /// The server's message.
        message: String,
    },
}

impl ClusterError {
    /// Stable label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            ClusterError::Transient { .. } => "transient",
            ClusterError::Refused { .. } => "forbidden",
            ClusterError::Rejected { .. } => "rejected",
            ClusterError::Fenced { .. } => "fenced",
            ClusterError::Conflict { .. } => "conflict",
        }
    }

    fn classify(action: String, source: kube::Error) -> Self {
        match &source {
            // Retried: an API server that has just started answers 403 until its authorizer
            // has synced RBAC, and quota can be raised or a policy changed at any time.
            kube::Error::Api(status) if status.code == 403 => ClusterError::Refused {
                action,
                message: status.message.clone(),
            },
            kube::Error::Api(status) if matches!(status.code, 400 | 422) => ClusterError::Rejected {
                code: status.code,
                action,
                message: status.message.clone(),
            },
            _ => ClusterError::Transient { action, source },
        }
    }
}

/// A client-side request rate limit: a token bucket of `burst` tokens refilled at `qps` per
/// second, shared by every writer, so a failover with thousands of models does not flood the
/// API server. (A 429 answer is retried by the client itself, after its `Retry-After`.)
/// It also bounds the requests in flight: each one holds an HTTP/1.1 connection (and its TLS
/// buffers), which the client's pool then keeps.
#[derive(Debug)]
pub struct RateLimiter {
    qps: f64,
    burst: f64,
    bucket: Mutex<(f64, Instant)>,
    in_flight: tokio::sync::Semaphore,
}

/// Requests in flight at once; beyond a few dozen, more connections add memory, not
/// throughput.
const MAX_IN_FLIGHT: usize = 32;

impl RateLimiter {
    /// A limiter of `qps` requests per second with bursts of up to `burst`.
    pub fn new(qps: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            qps: qps.max(0.001),
            burst,
            bucket: Mutex::new((burst, Instant::now())),
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
        }
    }

    /// How long the caller must wait before its request; takes its token.
    fn reserve(&self) -> Duration {
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, at) = &mut *bucket;
        let now = Instant::now();
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.qps).min(self.burst);
        *at = now;
        *tokens -= 1.0;
        if *tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-*tokens / self.qps)
        }
    }

    /// Waits for a token and a free slot; the request holds the slot until it is dropped.
    pub async fn acquire(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let wait = self.reserve();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        self.in_flight.acquire().await.ok()
    }
}

/// A child as the API server returned it from a write, before the watch brings it back.
#[derive(Clone, Debug, PartialEq)]
pub enum Written {
    /// The claim.
    Pvc(PvcObs),
    /// A download Job.
    Job(JobObs),
    /// The serving Deployment.
    Deployment(DeploymentObs),
    /// The Service.
    Service(ServiceObs),
    /// The model itself: its cleanup finalizer was added.
    Finalizer,
}

/// What a write of a child returned: its name, resourceVersion and summary.
#[derive(Clone, Debug)]
pub struct WriteOutcome {
    /// Object name.
    pub name: String,
    /// Its resourceVersion after the write.
    pub resource_version: Option<String>,
    /// Its summary.
    pub written: Written,
}

/// Writes on behalf of one model.
#[derive(Clone)]
pub struct ModelWriter {
    client: Client,
    namespace: String,
    recorder: Recorder,
    metrics: Metrics,
    fence: Arc<Fence>,
    limiter: Arc<RateLimiter>,
}

/// Adds the fields of `other` (a `FieldsV1` set: nested objects whose leaves are `{}`) to
/// `fields`.
fn merge_fields(fields: &mut serde_json::Value, other: serde_json::Value) {
    match (fields, other) {
        (serde_json::Value::Object(mine), serde_json::Value::Object(theirs)) => {
            for (key, value) in theirs {
                merge_fields(mine.entry(key).or_insert(serde_json::Value::Null), value);
            }
        }
        (slot @ serde_json::Value::Null, value) => *slot = value,
        _ => {}
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl ModelWriter {
    /// A writer for models in `namespace`.
    pub fn new(
        client: Client,
        namespace: &str,
        recorder: Recorder,
        metrics: Metrics,
        fence: Arc<Fence>,
        limiter: Arc<RateLimiter>,
    ) -> Self {
        Self {
            recorder,
            client,
            namespace: namespace.to_owned(),
            metrics,
            fence,
            limiter,
        }
    }

    /// Sends one request: after the rate limit, refused unless this replica surely leads,
    /// and cut off when the fence closes (a request still in flight then might land after a
    /// new leader's).
    async fn send<T>(
        &self,
        what: impl Fn() -> String,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<Result<T, kube::Error>, ClusterError> {
        let _slot = self.limiter.acquire().await;
        let fenced = || ClusterError::Fenced { action: what() };
        match self.fence.remaining() {
            None => Ok(request.await),
            Some(left) if left.is_zero() => Err(fenced()),
            Some(left) => tokio::time::timeout(left, request).await.map_err(|_| fenced()),
        }
    }

    fn guard(&self, action: impl FnOnce() -> String) -> Result<(), ClusterError> {
        if self.fence.may_write() {
            Ok(())
        } else {
            Err(ClusterError::Fenced { action: action() })
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Debug,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn record<T>(&self, verb: &'static str, kind: &'static str, r: &Result<T, kube::Error>) {
        let outcome = match r {
            Ok(_) => "ok",
            Err(e) if is_not_found(e) => "not_found",
            Err(_) => "error",
        };
        self.metrics.api_request(verb, kind, outcome);
    }

    /// Creates a child the caches do not show (`exists` false) and server-side applies one they
    /// do. An object of that name this model does not own is never taken over.
    async fn apply<K>(
        &self,
        model: &MLModel,
        kind: &'static str,
        obj: &K,
        exists: bool,
        summary: fn(&K) -> Option<Written>,
    ) -> Result<Option<WriteOutcome>, ClusterError>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + Serialize
            + Debug,
    {
        let name = obj.name_any();
        let what = || format!("apply {kind}/{name}");
        let api = self.api::<K>();
        let written = if exists {
            if matches!(kind, "deployment" | "service") {
                self.own_created_fields::<K>(kind, &name).await?;
            }
            let params = PatchParams::apply(FIELD_MANAGER).force();
            let r = self.send(what, api.patch(&name, &params, &Patch::Apply(obj))).await?;
            self.record("apply", kind, &r);
            r.map_err(|e| ClusterError::classify(what(), e))?
        } else {
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..Default::default()
            };
            let r = self.send(what, api.create(&params, obj)).await?;
            self.record("create", kind, &r);
            match r {
                Ok(created) => created,
                Err(kube::Error::Api(status)) if status.code == 409 => self.existing(model, kind, &name).await?,
                Err(e) => return Err(ClusterError::classify(what(), e)),
            }
        };
        Ok(summary(&written).map(|w| WriteOutcome {
            name,
            resource_version: written.resource_version(),
            written: w,
        }))
    }

    /// A child is created with POST (so that an object of its name is never taken over), which
    /// records its fields under an `Update` entry of the operator's field manager. A later
    /// server-side apply does not remove what that entry still owns: an earlier version's
    /// volume mount, a port of an earlier framework would stay. Before a Deployment or Service
    /// is applied, that entry is folded into the operator's `Apply` entry (what `kubectl`
    /// does when an object moves to server-side apply); once done, there is nothing to fold
    /// and this is one read.
    async fn own_created_fields<K>(&self, kind: &'static str, name: &str) -> Result<(), ClusterError>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Debug,
    {
        let ours = |f: &ManagedFieldsEntry, operation: &str| {
            f.manager.as_deref() == Some(FIELD_MANAGER)
                && f.operation.as_deref() == Some(operation)
                && f.subresource.as_deref().is_none_or(str::is_empty)
        };
        // A concurrent write (the Deployment controller's status) moves the resourceVersion:
        // read again and retry.
        for _ in 0..3 {
            let what = || format!("read {kind}/{name}");
            let object = match self.send(what, self.api::<K>().get(name)).await? {
                Ok(o) => o,
                Err(e) if is_not_found(&e) => return Ok(()),
                Err(e) => return Err(ClusterError::classify(what(), e)),
            };
            let mut fields = object.meta().managed_fields.clone().unwrap_or_default();
            let Some(i) = fields.iter().position(|f| ours(f, "Update")) else {
                return Ok(());
            };
            let created = fields.remove(i);
            match fields.iter_mut().find(|f| ours(f, "Apply")) {
                Some(applied) => {
                    let mut union = applied.fields_v1.take().map(|f| f.0).unwrap_or_default();
                    merge_fields(&mut union, created.fields_v1.map(|f| f.0).unwrap_or_default());
                    applied.fields_v1 = Some(FieldsV1(union));
                }
                None => fields.push(ManagedFieldsEntry {
                    operation: Some("Apply".to_owned()),
                    ..created
                }),
            }
            let patch = serde_json::json!({
                "metadata": { "resourceVersion": object.resource_version(), "managedFields": fields }
            });
            let what = || format!("take over the created fields of {kind}/{name}");
            let params = PatchParams::default();
            match self
                .send(what, self.api::<K>().patch(name, &params, &Patch::Merge(&patch)))
                .await?
            {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(status)) if status.code == 409 => continue,
                Err(e) => return Err(ClusterError::classify(what(), e)),
            }
        }
        Ok(())
    }

    /// The object of a child's name that already exists: this model's own (not yet in the
    /// caches), or a conflict.
    async fn existing<K>(&self, model: &MLModel, kind: &'static str, name: &str) -> Result<K, ClusterError>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Debug,
    {
        let what = || format!("read {kind}/{name}");
        let r = self.send(what, self.api::<K>().get(name)).await?;
        self.record("get", kind, &r);
        let existing = r.map_err(|e| ClusterError::classify(what(), e))?;
        let owner = existing
            .meta()
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true));
        match owner {
            Some(o) if Some(&o.uid) == model.metadata.uid.as_ref() => Ok(existing),
            owner => Err(ClusterError::Conflict {
                object: format!("{kind}/{name}"),
                previous_owner: owner
                    .is_some_and(|o| o.kind == "MLModel" && Some(&o.name) == model.metadata.name.as_ref()),
            }),
        }
    }

    async fn delete<K>(&self, kind: &'static str, name: &str, force: bool) -> Result<(), ClusterError>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Debug,
    {
        let api = self.api::<K>();
        if force {
            // A stuck child is usually held by a finalizer; drop them so deletion completes.
            let patch = json!({"metadata": {"finalizers": null}});
            let r = self
                .send(
                    || format!("remove finalizers of {kind}/{name}"),
                    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)),
                )
                .await?;
            self.record("patch", kind, &r);
            if let Err(e) = r
                && !is_not_found(&e)
            {
                return Err(ClusterError::classify(format!("remove finalizers of {kind}/{name}"), e));
            }
        }
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            grace_period_seconds: force.then_some(0),
            ..Default::default()
        };
        let r = self
            .send(|| format!("delete {kind}/{name}"), api.delete(name, &params))
            .await?;
        self.record("delete", kind, &r);
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(ClusterError::classify(format!("delete {kind}/{name}"), e)),
        }
    }

    /// Carries out one action of the lifecycle core; `exists` says whether the caches show
    /// the child it applies. Returns what a write of a child returned.
    pub async fn execute(
        &self,
        model: &MLModel,
        action: &Action,
        exists: bool,
    ) -> Result<Option<WriteOutcome>, ClusterError> {
        self.guard(|| format!("{action:?}").chars().take(80).collect())?;
        match action {
            Action::AddFinalizer => self.add_finalizer(model).await,
            Action::RemoveFinalizer => self.remove_finalizer(model).await.map(|()| None),
            Action::ApplyPvc(o) | Action::ResizePvc(o) => {
                self.apply(model, "persistentvolumeclaim", o.as_ref(), exists, |p| {
                    Some(Written::Pvc(observe::pvc(p)))
                })
                .await
            }
            Action::ApplyJob(o) => {
                self.apply(model, "job", o.as_ref(), exists, |j| {
                    observe::job(&j.into()).map(Written::Job)
                })
                .await
            }
            Action::ApplyDeployment(o) => {
                self.apply(model, "deployment", o.as_ref(), exists, |d| {
                    Some(Written::Deployment(observe::deployment(&d.into())))
                })
                .await
            }
            Action::ApplyService(o) => {
                self.apply(model, "service", o.as_ref(), exists, |s| {
                    Some(Written::Service(observe::service(s)))
                })
                .await
            }
            Action::Delete(child) => self.delete_child(child, false).await.map(|()| None),
            Action::ForceDelete(child) => self.delete_child(child, true).await.map(|()| None),
        }
    }

    async fn delete_child(&self, child: &ChildRef, force: bool) -> Result<(), ClusterError> {
        match child {
            ChildRef::Pvc(n) => {
                self.delete::<PersistentVolumeClaim>("persistentvolumeclaim", n, force)
                    .await
            }
            ChildRef::Job(n) => self.delete::<Job>("job", n, force).await,
            ChildRef::Deployment(n) => self.delete::<Deployment>("deployment", n, force).await,
            ChildRef::Service(n) => self.delete::<Service>("service", n, force).await,
            ChildRef::Pod(n) => self.delete::<Pod>("pod", n, force).await,
        }
    }

    async fn add_finalizer(&self, model: &MLModel) -> Result<Option<WriteOutcome>, ClusterError> {
        let mut finalizers = model.finalizers().to_vec();
        if finalizers.iter().any(|f| f == FINALIZER) {
            return Ok(None);
        }
        finalizers.push(FINALIZER.to_owned());
        let written = self.set_finalizers(model, finalizers, "add finalizer").await?;
        Ok(written.map(|m| WriteOutcome {
            name: m.name_any(),
            resource_version: m.resource_version(),
            written: Written::Finalizer,
        }))
    }

    async fn remove_finalizer(&self, model: &MLModel) -> Result<(), ClusterError> {
        let finalizers: Vec<String> = model.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
        if finalizers.len() == model.finalizers().len() {
            return Ok(());
        }
        self.set_finalizers(model, finalizers, "remove finalizer")
            .await
            .map(drop)
    }

    async fn set_finalizers(
        &self,
        model: &MLModel,
        finalizers: Vec<String>,
        what: &str,
    ) -> Result<Option<MLModel>, ClusterError> {
        let name = model.name_any();
        // resourceVersion turns the merge patch into a compare-and-swap: a concurrent change to
        // the list fails with 409 and is retried from fresh state instead of being overwritten.
        let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": model.resource_version()}});
        let api = self.api::<MLModel>();
        let r = self
            .send(
                || format!("{what} on mlmodel/{name}"),
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)),
            )
            .await?;
        self.record("patch", "mlmodel", &r);
        match r {
            Ok(patched) => Ok(Some(patched)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(ClusterError::classify(format!("{what} on mlmodel/{name}"), e)),
        }
    }

    /// Writes the model's status through the status subresource (server-side apply, so
    /// fields the operator no longer sets are removed). Returns the model's new
    /// resourceVersion (`None` if the model is gone).
    pub async fn write_status(&self, model: &MLModel, status: &MLModelStatus) -> Result<Option<String>, ClusterError> {
        let name = model.name_any();
        self.guard(|| format!("write status of mlmodel/{name}"))?;
        let body = json!({
            "apiVersion": MLModel::api_version(&()),
            "kind": MLModel::kind(&()),
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let api = self.api::<MLModel>();
        let r = self
            .send(
                || format!("write status of mlmodel/{name}"),
                api.patch_status(&name, &params, &Patch::Apply(&body)),
            )
            .await?;
        self.record("patch_status", "mlmodel", &r);
        match r {
            Ok(written) => Ok(written.resource_version()),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(ClusterError::classify(format!("write status of mlmodel/{name}"), e)),
        }
    }

    /// Reports a model object that cannot be read (written under an older schema, say):
    /// phase Failed with reason `InvalidSpec`, written untyped since the object does not parse.
    pub async fn report_unreadable(&self, name: &str, error: &str) -> Result<(), ClusterError> {
        self.guard(|| format!("write status of mlmodel/{name}"))?;
        let message = format!("the object cannot be read: {error}; fix or re-create it");
        let patch = json!({"status": {"phase": "Failed", "message": message}});
        let ar = kube::api::ApiResource::erase::<MLModel>(&());
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(self.client.clone(), &self.namespace, &ar);
        let r = self
            .send(
                || format!("write status of mlmodel/{name}"),
                api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)),
            )
            .await?;
        self.record("patch_status", "mlmodel", &r);
        r.map(drop)
            .map_err(|e| ClusterError::classify(format!("write status of mlmodel/{name}"), e))
    }

    /// Records an Event on the model (best effort: a lost Event is logged, never fatal).
    pub async fn event(&self, model: &MLModel, note: &EventNote, action: &str) {
        if self.guard(String::new).is_err() {
            return;
        }
        let event = Event {
            type_: if note.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: note.reason.clone(),
            note: Some(note.note.chars().take(1000).collect()),
            action: action.to_owned(),
            secondary: None,
        };
        let reference: ObjectReference = model.object_ref(&());
        match self
            .send(|| "record Event".to_owned(), self.recorder.publish(&event, &reference))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, reason = %note.reason, "could not record Event"),
            Err(e) => tracing::debug!(error = %e, reason = %note.reason, "Event not recorded"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fields_sets_merge_into_their_union() {
        let mut applied = serde_json::json!({"f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"server\"}": {".": {}, "f:args": {}}}}}}});
        let created = serde_json::json!({"f:metadata": {"f:labels": {".": {}}}, "f:spec": {"f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"server\"}": {"f:volumeMounts": {"k:{\"mountPath\":\"/models/iris/1\"}": {".": {}}}}}}}}});
        merge_fields(&mut applied, created);
        assert_eq!(
            applied,
            serde_json::json!({
                "f:metadata": {"f:labels": {".": {}}},
                "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"server\"}": {
                    ".": {}, "f:args": {}, "f:volumeMounts": {"k:{\"mountPath\":\"/models/iris/1\"}": {".": {}}}
                }}}}}
            })
        );
    }

    use super::*;

    #[test]
    fn the_rate_limit_allows_a_burst_then_paces_requests() {
        let limiter = RateLimiter::new(10.0, 3);
        for _ in 0..3 {
            assert_eq!(limiter.reserve(), Duration::ZERO, "within the burst");
        }
        let wait = limiter.reserve();
        assert!(
            wait > Duration::from_millis(50) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        let next = limiter.reserve();
        assert!(next > wait, "each request past the burst waits its turn: {next:?}");
    }
}

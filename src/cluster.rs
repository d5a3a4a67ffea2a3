//! Cluster I/O for the model actors: server-side apply of children with one field manager,
//! deletes, finalizers, status writes through the status subresource, and Events.

use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim, Pod, Service};
use kube::api::{DeleteParams, Patch, PatchParams, PropagationPolicy};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::api::{FINALIZER, MLModel, MLModelStatus};
use crate::leader::Fence;
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
    /// This replica is not (or no longer surely) the leader; nothing was written.
    #[error("not the leader: {action} was not carried out")]
    Fenced {
        /// What was refused.
        action: String,
    },
    /// The API server refused the object (422 Invalid, 400, 403): retrying will not help
    /// until the spec or the operator's permissions change.
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
            ClusterError::Rejected { code: 403, .. } => "forbidden",
            ClusterError::Rejected { .. } => "rejected",
            ClusterError::Fenced { .. } => "fenced",
        }
    }

    fn classify(action: String, source: kube::Error) -> Self {
        // 403 is retried like other transient errors: an API server that has just started
        // answers 403 until its authorizer has synced RBAC.
        match &source {
            kube::Error::Api(status) if matches!(status.code, 400 | 422) => ClusterError::Rejected {
                code: status.code,
                action,
                message: status.message.clone(),
            },
            _ => ClusterError::Transient { action, source },
        }
    }
}

/// Writes on behalf of one model.
#[derive(Clone)]
pub struct ModelWriter {
    client: Client,
    namespace: String,
    recorder: Recorder,
    metrics: Metrics,
    fence: Arc<Fence>,
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl ModelWriter {
    /// A writer for models in `namespace`.
    pub fn new(client: Client, namespace: &str, reporter: Reporter, metrics: Metrics, fence: Arc<Fence>) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            namespace: namespace.to_owned(),
            metrics,
            fence,
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

    async fn apply<K>(&self, kind: &'static str, obj: &K) -> Result<(), ClusterError>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + Serialize
            + Debug,
    {
        let name = obj.name_any();
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let r = self.api::<K>().patch(&name, &params, &Patch::Apply(obj)).await;
        self.record("apply", kind, &r);
        r.map(drop)
            .map_err(|e| ClusterError::classify(format!("apply {kind}/{name}"), e))
    }

    async fn delete<K>(&self, kind: &'static str, name: &str, force: bool) -> Result<(), ClusterError>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Debug,
    {
        let api = self.api::<K>();
        if force {
            // A stuck child is usually held by a finalizer; drop them so deletion completes.
            let patch = json!({"metadata": {"finalizers": null}});
            let r = api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await;
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
        let r = api.delete(name, &params).await;
        self.record("delete", kind, &r);
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(ClusterError::classify(format!("delete {kind}/{name}"), e)),
        }
    }

    /// Carries out one action of the lifecycle core.
    pub async fn execute(&self, model: &MLModel, action: &Action) -> Result<(), ClusterError> {
        self.guard(|| format!("{action:?}").chars().take(80).collect())?;
        match action {
            Action::AddFinalizer => self.add_finalizer(model).await,
            Action::RemoveFinalizer => self.remove_finalizer(model).await,
            Action::ApplyPvc(o) => {
                self.apply::<PersistentVolumeClaim>("persistentvolumeclaim", o.as_ref())
                    .await
            }
            Action::ApplyJob(o) => self.apply::<Job>("job", o.as_ref()).await,
            Action::ApplyDeployment(o) => self.apply::<Deployment>("deployment", o.as_ref()).await,
            Action::ApplyService(o) => self.apply::<Service>("service", o.as_ref()).await,
            Action::Delete(child) => self.delete_child(child, false).await,
            Action::ForceDelete(child) => self.delete_child(child, true).await,
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

    async fn add_finalizer(&self, model: &MLModel) -> Result<(), ClusterError> {
        let mut finalizers = model.finalizers().to_vec();
        if finalizers.iter().any(|f| f == FINALIZER) {
            return Ok(());
        }
        finalizers.push(FINALIZER.to_owned());
        self.set_finalizers(model, finalizers, "add finalizer").await
    }

    async fn remove_finalizer(&self, model: &MLModel) -> Result<(), ClusterError> {
        let finalizers: Vec<String> = model.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
        if finalizers.len() == model.finalizers().len() {
            return Ok(());
        }
        self.set_finalizers(model, finalizers, "remove finalizer").await
    }

    async fn set_finalizers(&self, model: &MLModel, finalizers: Vec<String>, what: &str) -> Result<(), ClusterError> {
        let name = model.name_any();
        // resourceVersion turns the merge patch into a compare-and-swap: a concurrent change to
        // the list fails with 409 and is retried from fresh state instead of being overwritten.
        let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": model.resource_version()}});
        let r = self
            .api::<MLModel>()
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        self.record("patch", "mlmodel", &r);
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(ClusterError::classify(format!("{what} on mlmodel/{name}"), e)),
        }
    }

    /// Writes the model's status through the status subresource (server-side apply, so
    /// fields the operator no longer sets are removed).
    pub async fn write_status(&self, model: &MLModel, status: &MLModelStatus) -> Result<(), ClusterError> {
        let name = model.name_any();
        self.guard(|| format!("write status of mlmodel/{name}"))?;
        let body = json!({
            "apiVersion": MLModel::api_version(&()),
            "kind": MLModel::kind(&()),
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let r = self
            .api::<MLModel>()
            .patch_status(&name, &params, &Patch::Apply(&body))
            .await;
        self.record("patch_status", "mlmodel", &r);
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
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
        let r = api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
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
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %e, reason = %note.reason, "could not record Event");
        }
    }
}

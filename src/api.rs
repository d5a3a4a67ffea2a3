//! The `MLModel` custom resource (`oda.tmforum.org/v1beta1`).
//!
//! The field doc comments below become the CRD's schema descriptions, so they are what
//! `kubectl explain mlmodel.spec` prints. The CRD YAML in `deploy/crd/` is generated from
//! these types by `mlmodel-operator crd`; never edit it by hand.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, EnvVar, LocalObjectReference, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::CustomResourceExt;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the resource.
pub const GROUP: &str = "oda.tmforum.org";
/// Finalizer that lets the operator remove a model's children before the model goes away.
pub const FINALIZER: &str = "mlmodel.oda.tmforum.org/cleanup";

/// Kubernetes quantity syntax (non-negative), as accepted by `resource.Quantity`.
const QUANTITY_PATTERN: &str =
    r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";
/// Supported artifact URL schemes; anything else is refused at apply time.
const MODEL_URL_PATTERN: &str = r"^(https?|s3|gs)://[^\s]+$";

/// Desired state of a served machine-learning model.
///
/// The first five fields keep the names and meaning they had in the proof of concept this
/// operator replaces, so its manifests apply unchanged apart from `apiVersion`.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "oda.tmforum.org",
    version = "v1beta1",
    kind = "MLModel",
    plural = "mlmodels",
    shortname = "mlm",
    category = "all",
    namespaced,
    status = "MLModelStatus",
    doc = "MLModel downloads a machine-learning model into a volume and serves it with a model server behind a Service.",
    validation = Rule::new("self.metadata.name.size() <= 45").message("metadata.name: must be at most 45 characters so that the names of the model's children stay valid"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase", description = "Lifecycle phase"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.ready", description = "Ready serving replicas / desired replicas"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.serviceEndpoint", description = "In-cluster address of the model's Service"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "Framework", type_ = "string", json_path = ".spec.framework", priority = "1", description = "Serving runtime"),
    printcolumn(name = "Message", type_ = "string", json_path = ".status.message", priority = "1", description = "What is happening now, or why it failed")
)]
#[x_kube(validation = Rule::new("self.framework != 'custom' || (has(self.runtime) && has(self.runtime.image))").message("spec.runtime.image: required when spec.framework is 'custom'"))]
#[x_kube(validation = Rule::new("has(self.modelURL) != has(self.modelURLFrom)").message("exactly one of spec.modelURL and spec.modelURLFrom must be set"))]
#[x_kube(validation = Rule::new("quantity(self.storageSize).compareTo(quantity(oldSelf.storageSize)) >= 0").message("spec.storageSize: a model's volume cannot shrink, it may only grow; for a smaller volume, delete the model and create it again").field_path(".storageSize"))]
#[serde(rename_all = "camelCase")]
pub struct MLModelSpec {
    /// Where the model artifact is downloaded from: an `http://`, `https://`, `s3://bucket/key`
    /// or `gs://bucket/key` URL. A `.tar`, `.tar.gz`/`.tgz` or `.zip` archive is unpacked;
    /// any other file is placed as-is. Credentials never go in the URL: use `credentials`.
    /// Exactly one of `modelURL` and `modelURLFrom` is set; a presigned or tokened URL belongs
    /// in a Secret referenced by `modelURLFrom`, since this field is readable by anyone who may
    /// read the MLModel and it is passed to the download pod as an argument.
    #[serde(rename = "modelURL", default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), regex(pattern = MODEL_URL_PATTERN))]
    pub model_url: Option<String>,

    /// Where to read the artifact URL from instead of `modelURL`: a key of a Secret in the
    /// model's namespace, for presigned or tokened URLs. The download pod receives it through
    /// its environment; the operator never reads the Secret, and status, Events and logs name
    /// the Secret and key, never the URL. The rollout follows the Secret's name and key: to
    /// roll out a new URL, reference a new key (or a new Secret).
    #[serde(rename = "modelURLFrom", default, skip_serializing_if = "Option::is_none")]
    pub model_url_from: Option<ModelUrlSource>,

    /// Size of the volume that holds the model, as a Kubernetes quantity (e.g. `1Gi`, `500Mi`).
    /// It must hold the artifact and its unpacked contents. Default `1Gi`. It may grow (the
    /// claim is expanded where its StorageClass allows it) but never shrink.
    #[serde(default = "default_storage_size")]
    #[schemars(length(max = 64), regex(pattern = QUANTITY_PATTERN))]
    pub storage_size: String,

    /// The serving runtime: `tensorflow` (tensorflow/serving, REST port 8501), `triton`
    /// (NVIDIA Triton, port 8000), `mlserver` (Seldon MLServer, port 8080), `sklearn` and
    /// `xgboost` (MLServer with that implementation), or `custom` (requires `runtime.image`).
    /// Default `tensorflow`.
    #[serde(default)]
    pub framework: Framework,

    /// Number of serving pods. `0` keeps the model downloaded but serves nothing. Default 1.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,

    /// Whether to create a ClusterIP Service in front of the serving pods. Default true.
    #[serde(default = "default_true")]
    pub expose: bool,

    /// Expected SHA-256 digest (64 lowercase hex characters) of the downloaded artifact, before
    /// unpacking. The download fails with `ChecksumMismatch` when it differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-f0-9]{64}$"))]
    pub sha256: Option<String>,

    /// Secret with the credentials the downloader needs, in the model's namespace. Its keys are
    /// passed to the download Job as environment variables: `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL` for `s3://`;
    /// `GOOGLE_SERVICE_ACCOUNT_KEY` for `gs://`; `HTTP_BEARER_TOKEN` or `HTTP_USERNAME` and
    /// `HTTP_PASSWORD` for `http(s)://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<SecretReference>,

    /// Overrides of the runtime that `framework` selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeOverride>,

    /// Limits of the download Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download: Option<DownloadPolicy>,

    /// Volume settings beyond `storageSize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StoragePolicy>,

    /// Where and as whom the model's pods run, and their metadata: node selection, taints
    /// tolerated, affinity, priority, image pull Secrets, ServiceAccount, labels and
    /// annotations. Scheduling (`nodeSelector`, `tolerations`, `affinity`,
    /// `priorityClassName`) applies to the download Job's pod too: it writes the volume the
    /// serving pods read, and with `ReadWriteOnce` runs on their node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodSettings>,
}

/// Settings of the model's pods.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSettings {
    /// Labels a node must have for the model's pods (serving and download) to run on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Taints the model's pods (serving and download) tolerate, e.g. the
    /// `nvidia.com/gpu:NoSchedule` taint of GPU nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub tolerations: Option<Vec<Toleration>>,

    /// Node and pod affinity of the model's pods (serving and download). With a
    /// `ReadWriteOnce` volume the operator adds a required pod affinity that keeps them on
    /// the node of the model's running pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// PriorityClass of the model's pods (serving and download).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,

    /// Secrets in the model's namespace for pulling the model server's image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,

    /// ServiceAccount of the serving pods (its token is not mounted). The download Job runs
    /// as the namespace's default ServiceAccount, without a token either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub service_account_name: Option<String>,

    /// Labels added to the serving pods. The operator's own labels (`app.kubernetes.io/*`,
    /// `mlmodel.oda.tmforum.org/*`) take precedence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,

    /// Annotations added to the serving pods (e.g. a service mesh's or a scraper's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// Serving runtimes the operator knows how to run.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Framework {
    /// tensorflow/serving; serves `<model>/<version>/saved_model.pb` over REST on port 8501.
    #[default]
    Tensorflow,
    /// NVIDIA Triton Inference Server; HTTP on port 8000.
    Triton,
    /// Seldon MLServer; HTTP on port 8080.
    Mlserver,
    /// MLServer with its scikit-learn implementation.
    Sklearn,
    /// MLServer with its XGBoost implementation.
    Xgboost,
    /// Any image given in `runtime.image`.
    Custom,
}

impl Framework {
    /// The lowercase name used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Framework::Tensorflow => "tensorflow",
            Framework::Triton => "triton",
            Framework::Mlserver => "mlserver",
            Framework::Sklearn => "sklearn",
            Framework::Xgboost => "xgboost",
            Framework::Custom => "custom",
        }
    }
}

/// A reference to a Secret in the model's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretReference {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub name: String,
}

/// Where a model's URL is read from.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelUrlSource {
    /// A key of a Secret in the model's namespace whose value is the artifact URL (the same
    /// schemes as `modelURL`).
    pub secret_key_ref: SecretKeySelector,
}

/// A key of a Secret in the model's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub name: String,
    /// Key in the Secret's data.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

impl MLModelSpec {
    /// Where the artifact comes from, as status, Events and logs show it: the URL without
    /// credentials or signed query strings, or `secretKeyRef:<secret>/<key>` for a URL given
    /// by reference.
    pub fn shown_source(&self) -> String {
        match (&self.model_url, &self.model_url_from) {
            (Some(url), _) => crate::download::redact_url(url),
            (None, Some(from)) => format!("secretKeyRef:{}/{}", from.secret_key_ref.name, from.secret_key_ref.key),
            (None, None) => String::new(),
        }
    }
}

/// Overrides of the serving runtime.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeOverride {
    /// Container image of the model server. Required when `framework` is `custom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Arguments passed to the image's entrypoint, replacing the runtime's defaults. No shell is
    /// involved: each item is one argument.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub args: Option<Vec<String>>,

    /// HTTP port the model server listens on; the Service and the readiness probe use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,

    /// HTTP path answering 200 once the model is loaded, used as the readiness probe. Defaults to
    /// the runtime's model-status endpoint; for `custom`, a TCP check of `port` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024), regex(pattern = r"^/"))]
    pub readiness_path: Option<String>,

    /// Compute resources of the model server, e.g. `limits: {nvidia.com/gpu: 1}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Extra environment variables of the model server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,
}

/// Limits of the download Job.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DownloadPolicy {
    /// Deadline of the whole download in seconds, retries included. Default 600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: Option<i64>,

    /// Retries of transient failures (connection errors, HTTP 5xx and 429) inside one download
    /// attempt. Permanent failures (HTTP 404 or 403, checksum mismatch) are never retried.
    /// Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10))]
    pub retries: Option<i32>,

    /// Compute resources of the download pod; the operator's defaults (its
    /// `--downloader-requests` and `--downloader-limits`) when unset. Namespaces whose quota
    /// asks every pod for requests or limits need them set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// Settings of the model's PersistentVolumeClaim.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoragePolicy {
    /// StorageClass of the volume; the cluster's default class when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,

    /// Access modes of the volume. Default `[ReadWriteOnce]`; use `ReadOnlyMany` or
    /// `ReadWriteMany` when serving pods spread over several nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4))]
    pub access_modes: Option<Vec<AccessMode>>,
}

/// PersistentVolume access modes.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AccessMode {
    /// Mounted read-write by one node.
    ReadWriteOnce,
    /// Mounted read-only by many nodes.
    ReadOnlyMany,
    /// Mounted read-write by many nodes.
    ReadWriteMany,
    /// Mounted read-write by one pod.
    ReadWriteOncePod,
}

impl AccessMode {
    /// The name Kubernetes uses.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessMode::ReadWriteOnce => "ReadWriteOnce",
            AccessMode::ReadOnlyMany => "ReadOnlyMany",
            AccessMode::ReadWriteMany => "ReadWriteMany",
            AccessMode::ReadWriteOncePod => "ReadWriteOncePod",
        }
    }
}

fn default_storage_size() -> String {
    "1Gi".to_owned()
}

fn default_replicas() -> i32 {
    1
}

fn default_true() -> bool {
    true
}

/// Lifecycle phase of a model.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Phase {
    /// Accepted; the operator is validating the spec.
    #[default]
    Pending,
    /// The model's volume is being provisioned.
    CreatingStorage,
    /// The download Job is fetching the artifact.
    Downloading,
    /// The serving pods are starting.
    Serving,
    /// Every desired serving pod is ready (or zero replicas were asked for).
    Ready,
    /// The model cannot make progress until something changes; see `lastFailure`.
    Failed,
    /// A spec change could not be rolled out, and the version in `status.serving` keeps
    /// answering (`Available=True`, `Ready=False` with reason `UpdateFailed`); see
    /// `lastFailure` for why. A later spec change rolls forward; reverting the spec to the
    /// serving version recovers at once.
    UpdateFailed,
    /// The model is being deleted.
    Terminating,
}

impl Phase {
    /// The name shown in `kubectl get`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::CreatingStorage => "CreatingStorage",
            Phase::Downloading => "Downloading",
            Phase::Serving => "Serving",
            Phase::Ready => "Ready",
            Phase::Failed => "Failed",
            Phase::UpdateFailed => "UpdateFailed",
            Phase::Terminating => "Terminating",
        }
    }

    /// Whether a rollout has come to rest: `Ready`, `Failed` or `UpdateFailed`.
    pub fn is_settled(self) -> bool {
        matches!(self, Phase::Ready | Phase::Failed | Phase::UpdateFailed)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Observed state of a model, written only by the operator.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MLModelStatus {
    /// Lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// What is happening now, or why the model failed, in words a person can act on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// In-cluster address of the model's Service, `<name>.<namespace>.svc.cluster.local:<port>`,
    /// set once the model is Ready and `expose` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_endpoint: Option<String>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Standard conditions: `Ready`, `Downloaded`, `Available`, `Degraded`; `StorageResized`
    /// once `storageSize` has grown (`Resizing`, `Resized` or `ExpansionRefused`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// Serving pods that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,

    /// Ready pods over desired pods, e.g. `1/1` (the `Ready` column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,

    /// The model version that serves traffic now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<ServingVersion>,

    /// The most recent failure, kept after recovery for reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<Failure>,

    /// OpenTelemetry trace id of the current rollout; search for it in Jaeger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,

    /// W3C traceparent of the current rollout. A restarted operator, or a new leader, continues
    /// this trace; the download Job receives it as `TRACEPARENT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// Which version of the model is serving.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServingVersion {
    /// The `metadata.generation` whose artifact is serving.
    pub generation: i64,
    /// The artifact URL of that generation, with credentials and signed query strings removed;
    /// `secretKeyRef:<secret>/<key>` when the URL was given by reference (`modelURLFrom`).
    #[serde(rename = "modelURL")]
    pub model_url: String,
    /// Digest of the `modelURL` (or `modelURLFrom`) and `sha256` that produced this version. A spec change that
    /// keeps both reuses the downloaded artifact instead of downloading it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The uid of the volume claim this version was downloaded into. A claim deleted and made
    /// again is another volume: the version is downloaded into it again before it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_uid: Option<String>,
}

/// A failure, as reported to the user.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// Machine-readable reason, e.g. `DownloadFailed`, `ImagePullBackOff`, `Unschedulable`.
    pub reason: String,
    /// What went wrong, with the details the component that failed reported.
    pub message: String,
    /// When it was observed.
    pub time: Time,
}

impl MLModel {
    /// The CRD as YAML, exactly as `deploy/crd/mlmodels.yaml` holds it.
    pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
        let header = "# Generated by `mlmodel-operator crd` from src/api.rs; do not edit.\n";
        Ok(format!("{header}{}", serde_yaml::to_string(&MLModel::crd())?))
    }
}

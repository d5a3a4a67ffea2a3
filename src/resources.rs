//! Builders of a model's children: the PVC, the download Job, the serving Deployment and the
//! Service. Pure functions of the model and the operator's settings, so every replica and every
//! restart builds byte-identical objects and server-side apply is idempotent.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction, Lifecycle,
    LifecycleHandler, PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PodAffinity,
    PodAffinityTerm, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretEnvSource, SecretKeySelector, SecurityContext, Service, ServicePort, ServiceSpec, SleepAction,
    TCPSocketAction, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::api::{AccessMode, Framework, MLModel};

/// Label every child carries; the operator's watches select on it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "mlmodel-operator";
/// Label naming the model a child belongs to.
pub const MODEL_LABEL: &str = "mlmodel.oda.tmforum.org/name";
/// Label with the artifact version (a model generation) a Job or serving pod works on.
pub const VERSION_LABEL: &str = "mlmodel.oda.tmforum.org/version";
/// Label on the pods of a model's Job and Deployment: the uid of the MLModel they serve, so
/// pods of a deleted model never count for a re-created one of the same name.
pub const MODEL_UID_LABEL: &str = "mlmodel.oda.tmforum.org/uid";
/// Label telling the download pods from the serving pods.
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// Annotation with a digest of the desired object a child was applied from; a differing digest
/// means the child must be applied again.
pub const SPEC_HASH_ANNOTATION: &str = "mlmodel.oda.tmforum.org/spec-hash";
/// Annotation on a download Job with the digest of the source (URL and checksum) it fetches.
pub const SOURCE_ANNOTATION: &str = "mlmodel.oda.tmforum.org/source";
/// Where the model volume is mounted in the download and serving pods.
pub const MODEL_MOUNT: &str = "/models";
/// Seconds a serving pod keeps answering after its deletion starts (its preStop hook), so
/// the Service stops routing to it before the server shuts down.
pub const DRAIN_SECONDS: i64 = 10;

/// Component value of the download Job's pods.
pub const COMPONENT_DOWNLOAD: &str = "download";
/// Component value of the serving pods.
pub const COMPONENT_SERVING: &str = "serving";

/// Operator-wide settings the builders need.
#[derive(Clone, Debug)]
pub struct BuildSettings {
    /// Image of the download Job: the operator's own image, which carries the `download` subcommand.
    pub downloader_image: String,
    /// DNS suffix of the cluster's Services.
    pub cluster_domain: String,
    /// Image pull policy of the download Job (`IfNotPresent` by default).
    pub downloader_pull_policy: String,
    /// OpenTelemetry export settings (`OTEL_EXPORTER_OTLP_*`) passed to the download Job, so
    /// the downloader's spans reach the same collector as the operator's.
    pub downloader_telemetry_env: Vec<(String, String)>,
    /// Let downloads without `credentials` use the node's instance or web-identity credentials
    /// (`--ambient-credentials`); off, such a download is anonymous.
    pub allow_ambient_credentials: bool,
    /// Compute resources of a download pod whose model sets none (`spec.download.resources`).
    pub downloader_resources: ResourceRequirements,
}

/// Requests of a download pod by default: the downloader streams, so little memory.
pub const DEFAULT_DOWNLOADER_REQUESTS: &str = "cpu=100m,memory=64Mi";
/// Limits of a download pod by default, so that namespaces whose quota asks for limits admit it.
pub const DEFAULT_DOWNLOADER_LIMITS: &str = "cpu=2,memory=512Mi";

/// Parses `name=quantity,name=quantity` (e.g. `cpu=100m,memory=64Mi`) into a resource list;
/// the error names the item that is not one.
pub fn resource_list(text: &str) -> Result<BTreeMap<String, Quantity>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| match item.split_once('=') {
            Some((name, value)) if !name.trim().is_empty() && quantity_bytes(value.trim()).is_some() => {
                Ok((name.trim().to_owned(), Quantity(value.trim().to_owned())))
            }
            _ => Err(format!("{item:?} is not name=quantity (e.g. cpu=100m,memory=64Mi)")),
        })
        .collect()
}

impl Default for BuildSettings {
    fn default() -> Self {
        Self {
            downloader_image: format!("mlmodel-operator:{}", env!("CARGO_PKG_VERSION")),
            cluster_domain: "cluster.local".to_owned(),
            downloader_pull_policy: "IfNotPresent".to_owned(),
            downloader_telemetry_env: Vec::new(),
            allow_ambient_credentials: false,
            downloader_resources: ResourceRequirements {
                requests: resource_list(DEFAULT_DOWNLOADER_REQUESTS).ok(),
                limits: resource_list(DEFAULT_DOWNLOADER_LIMITS).ok(),
                ..Default::default()
            },
        }
    }
}

/// Environment variable of the download container that holds a URL given by reference.
pub const MODEL_URL_ENV: &str = "MLMODEL_MODEL_URL";

/// Digest of what determines the artifact: the URL (or the Secret key it is read from) and the
/// expected checksum. Two generations with the same digest share one downloaded version.
pub fn source_digest(model: &MLModel) -> String {
    let mut h = Sha256::new();
    match (&model.spec.model_url, &model.spec.model_url_from) {
        (Some(url), _) => h.update(url.as_bytes()),
        // Never a URL (no `://`), so never the digest of one.
        (None, Some(from)) => {
            h.update(format!("secretKeyRef:{}/{}", from.secret_key_ref.name, from.secret_key_ref.key).as_bytes())
        }
        (None, None) => {}
    }
    h.update(b"\n");
    h.update(model.spec.sha256.as_deref().unwrap_or("").as_bytes());
    hex::encode(&h.finalize()[..8])
}

/// Stamps `obj` with the digest of its own content in [`SPEC_HASH_ANNOTATION`].
pub fn with_spec_hash<K: Resource + Serialize>(mut obj: K) -> K {
    let digest = serde_json::to_vec(&obj)
        .map(|bytes| hex::encode(&Sha256::digest(&bytes)[..8]))
        .unwrap_or_default();
    obj.meta_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(SPEC_HASH_ANNOTATION.to_owned(), digest);
    obj
}

/// The digest [`with_spec_hash`] stamped on `obj`.
pub fn spec_hash<K: Resource>(obj: &K) -> Option<&String> {
    obj.meta().annotations.as_ref()?.get(SPEC_HASH_ANNOTATION)
}

/// The number of bytes a Kubernetes quantity (`1Gi`, `500M`, `1.5e9`) stands for, rounded up;
/// `None` when it is not a quantity or does not fit.
pub fn quantity_bytes(q: &str) -> Option<u64> {
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent => 10f64.powi(exponent.strip_prefix(['e', 'E'])?.parse().ok()?),
    };
    let bytes = (number * factor).ceil();
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// Name of the model's PersistentVolumeClaim.
pub fn pvc_name(model_name: &str) -> String {
    format!("{model_name}-model")
}

/// Name of the download Job of one artifact version.
pub fn job_name(model_name: &str, version: i64) -> String {
    format!("{model_name}-download-{version}")
}

/// Name of the serving Deployment.
pub fn deployment_name(model_name: &str) -> String {
    format!("{model_name}-serving")
}

/// Name of the Service; the model's own name, so the endpoint reads naturally.
pub fn service_name(model_name: &str) -> String {
    model_name.to_owned()
}

/// The serving runtime a model resolves to: its framework's defaults with the spec's overrides.
#[derive(Clone, Debug, PartialEq)]
pub struct Runtime {
    /// Container image.
    pub image: String,
    /// Container arguments (no shell).
    pub args: Vec<String>,
    /// HTTP port.
    pub port: i32,
    /// HTTP readiness path; `None` means a TCP check of `port`.
    pub readiness_path: Option<String>,
    /// Environment variables the runtime needs to find the model.
    pub env: Vec<EnvVar>,
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// MLServer's logging (Python `dictConfig`, in `MLSERVER_LOGGING_SETTINGS`). MLServer exits
/// with code 0 when a model fails to load, so the kubelet never falls back to its logs for the
/// termination message: its errors are also written to the termination log, where the model's
/// status finds the server's own reason. The file is truncated whenever it would pass the
/// 4 KiB the kubelet keeps, so errors during serving never fill the node's disk. MLServer
/// hands the same settings to uvicorn, whose loggers keep writing to stdout.
static MLSERVER_LOGGING: LazyLock<String> = LazyLock::new(|| {
    serde_json::json!({
        "version": 1,
        "disable_existing_loggers": false,
        "formatters": {
            "message": {"format": "%(message)s"},
            "uvicorn": {"format": "%(levelname)s:     %(message)s"},
        },
        "handlers": {
            "termination": {
                "class": "logging.handlers.RotatingFileHandler",
                "filename": "/dev/termination-log",
                "maxBytes": 4096,
                "level": "ERROR",
                "formatter": "message",
                // With no backups, a "rollover" only reopens the file: in mode "w", truncated.
                ".": {"mode": "w"},
            },
            "stdout": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout", "formatter": "uvicorn"},
        },
        "loggers": {"uvicorn": {"handlers": ["stdout"], "level": "INFO", "propagate": false}},
        "root": {"handlers": ["termination"]},
    })
    .to_string()
});

/// Resolves the runtime of `model` serving artifact `version`.
pub fn runtime(model: &MLModel, version: i64) -> Runtime {
    let name = model_name(model);
    let spec = &model.spec;
    let model_dir = format!("{MODEL_MOUNT}/{name}");
    let mlserver = |implementation: Option<&str>| {
        let mut env = vec![
            env("MLSERVER_MODEL_NAME", name.clone()),
            env("MLSERVER_MODEL_URI", format!("{model_dir}/{version}")),
            env("MLSERVER_HTTP_PORT", "8080"),
            env("MLSERVER_LOGGING_SETTINGS", MLSERVER_LOGGING.as_str()),
        ];
        if let Some(implementation) = implementation {
            env.push(self::env("MLSERVER_MODEL_IMPLEMENTATION", implementation));
        }
        Runtime {
            image: "docker.io/seldonio/mlserver:1.7.1".to_owned(),
            args: vec![
                "mlserver".to_owned(),
                "start".to_owned(),
                format!("{model_dir}/{version}"),
            ],
            port: 8080,
            readiness_path: Some(format!("/v2/models/{name}/ready")),
            env,
        }
    };
    let mut runtime = match spec.framework {
        Framework::Tensorflow => Runtime {
            image: "docker.io/tensorflow/serving:2.19.1".to_owned(),
            args: vec![
                "--port=8500".to_owned(),
                "--rest_api_port=8501".to_owned(),
                format!("--model_name={name}"),
                format!("--model_base_path={model_dir}"),
            ],
            port: 8501,
            // The status endpoint (/v1/models/<name>) answers 200 while a version is still
            // LOADING or has failed; the metadata endpoint answers only once a version is
            // AVAILABLE.
            readiness_path: Some(format!("/v1/models/{name}/metadata")),
            env: Vec::new(),
        },
        Framework::Triton => Runtime {
            image: "nvcr.io/nvidia/tritonserver:25.10-py3".to_owned(),
            args: vec![
                "tritonserver".to_owned(),
                format!("--model-repository={MODEL_MOUNT}"),
                "--http-port=8000".to_owned(),
                "--strict-model-config=false".to_owned(),
            ],
            port: 8000,
            readiness_path: Some(format!("/v2/models/{name}/ready")),
            env: Vec::new(),
        },
        Framework::Mlserver => mlserver(None),
        Framework::Sklearn => mlserver(Some("mlserver_sklearn.SKLearnModel")),
        Framework::Xgboost => mlserver(Some("mlserver_xgboost.XGBoostModel")),
        Framework::Custom => Runtime {
            image: String::new(),
            args: Vec::new(),
            port: 8080,
            readiness_path: None,
            env: vec![
                env("MODEL_NAME", name.clone()),
                env("MODEL_PATH", format!("{model_dir}/{version}")),
            ],
        },
    };
    if let Some(o) = &spec.runtime {
        if let Some(image) = &o.image {
            runtime.image = image.clone();
        }
        if let Some(args) = &o.args {
            runtime.args = args.clone();
        }
        if let Some(port) = o.port {
            runtime.port = port;
        }
        if let Some(path) = &o.readiness_path {
            runtime.readiness_path = Some(path.clone());
        }
        if let Some(extra) = &o.env {
            runtime.env.extend(extra.iter().cloned());
        }
    }
    runtime
}

fn model_name(model: &MLModel) -> String {
    model.metadata.name.clone().unwrap_or_default()
}

/// The labels every child of `model` carries.
pub fn labels(model: &MLModel, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "mlmodel".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), model_name(model)),
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (MODEL_LABEL.to_owned(), model_name(model)),
        (COMPONENT_LABEL.to_owned(), component.to_owned()),
    ])
}

/// The labels of the pods of `model`'s Jobs and Deployment: the children's labels and the
/// model's uid.
fn pod_template_labels(model: &MLModel, mut labels: BTreeMap<String, String>) -> BTreeMap<String, String> {
    if let Some(uid) = &model.metadata.uid {
        labels.insert(MODEL_UID_LABEL.to_owned(), uid.clone());
    }
    labels
}

fn owner_reference(model: &MLModel) -> Option<OwnerReference> {
    model.controller_owner_ref(&())
}

fn child_meta(model: &MLModel, name: String, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: model.metadata.namespace.clone(),
        labels: Some(labels(model, component)),
        owner_references: owner_reference(model).map(|o| vec![o]),
        ..Default::default()
    }
}

/// Keeps every pod that mounts a single-node volume (`ReadWriteOnce`, the default) on one node:
/// each of the model's pods (download and serving) must go where the model's other running
/// pods are, so a new version's download Job and a rollout's surge pods join the serving pods
/// on the node that has the volume attached. The first pod, with no other running, goes
/// wherever the scheduler (and the volume's own node affinity, for local volumes) puts it.
/// Volumes that many nodes mount (`ReadWriteMany`, `ReadOnlyMany`) need no such rule.
fn volume_affinity(model: &MLModel) -> Option<Affinity> {
    let modes = model.spec.storage.as_ref().and_then(|s| s.access_modes.as_ref());
    let many_nodes = modes.is_some_and(|m| {
        m.iter()
            .any(|m| matches!(m, AccessMode::ReadWriteMany | AccessMode::ReadOnlyMany))
    });
    if many_nodes {
        return None;
    }
    Some(Affinity {
        pod_affinity: Some(PodAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                label_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(MODEL_LABEL.to_owned(), model_name(model))])),
                    ..Default::default()
                }),
                topology_key: "kubernetes.io/hostname".to_owned(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// `spec.pod`'s scheduling on one of the model's pod specs (download or serving): node
/// selector, tolerations, priority, and the user's affinity with the volume's pod affinity
/// added to its required terms.
fn schedule(model: &MLModel, spec: &mut PodSpec) {
    let pod = model.spec.pod.clone().unwrap_or_default();
    spec.node_selector = pod.node_selector;
    spec.tolerations = pod.tolerations;
    spec.priority_class_name = pod.priority_class_name;
    spec.affinity = match (pod.affinity, volume_affinity(model)) {
        (Some(mut user), Some(volume)) => {
            let ours = volume
                .pod_affinity
                .and_then(|a| a.required_during_scheduling_ignored_during_execution)
                .unwrap_or_default();
            user.pod_affinity
                .get_or_insert_with(Default::default)
                .required_during_scheduling_ignored_during_execution
                .get_or_insert_with(Vec::new)
                .extend(ours);
            Some(user)
        }
        (user, volume) => user.or(volume),
    };
}

/// The model's PersistentVolumeClaim.
pub fn persistent_volume_claim(model: &MLModel) -> PersistentVolumeClaim {
    let storage = model.spec.storage.clone().unwrap_or_default();
    let access_modes = storage
        .access_modes
        .unwrap_or_else(|| vec![AccessMode::ReadWriteOnce])
        .into_iter()
        .map(|m| m.as_str().to_owned())
        .collect();
    PersistentVolumeClaim {
        metadata: child_meta(model, pvc_name(&model_name(model)), "storage"),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(access_modes),
            storage_class_name: storage.storage_class_name,
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(model.spec.storage_size.clone()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The security context the `restricted` Pod Security Standard asks for.
fn restricted_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Default::default()
        }),
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn restricted_pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        run_as_group: Some(65532),
        fs_group: Some(65532),
        // Only a volume whose root is not yet the group's is walked and re-owned, not the
        // whole model on every pod start.
        fs_group_change_policy: Some("OnRootMismatch".to_owned()),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn model_volume(model: &MLModel, read_only: bool) -> Volume {
    Volume {
        name: "model".to_owned(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: pvc_name(&model_name(model)),
            read_only: Some(read_only),
        }),
        ..Default::default()
    }
}

/// Inputs of the download Job that are not in the spec.
#[derive(Clone, Debug, Default)]
pub struct DownloadContext {
    /// W3C traceparent of the rollout, so the downloader's spans join the model's trace.
    pub traceparent: Option<String>,
    /// Versions pods still serve: they stay on the volume, every other one is removed.
    pub keep_versions: Vec<i64>,
}

/// The download Job of artifact `version`: the operator image's `download` subcommand with the
/// URL and target as arguments (no shell), credentials from the referenced Secret as env. A URL
/// given by reference reaches the downloader through its environment, read by the kubelet from
/// the Secret, so it is in no pod spec and the operator never reads it.
pub fn download_job(model: &MLModel, version: i64, settings: &BuildSettings, ctx: &DownloadContext) -> Job {
    let name = model_name(model);
    let download = model.spec.download.clone().unwrap_or_default();
    let timeout = download.timeout_seconds.unwrap_or(600);
    let mut env = vec![env("RUST_LOG", "info"), env("LOG_FORMAT", "json")];
    let url_arg = match (&model.spec.model_url, &model.spec.model_url_from) {
        (Some(url), _) => format!("--url={url}"),
        (None, from) => {
            env.extend(from.as_ref().map(|from| EnvVar {
                name: MODEL_URL_ENV.to_owned(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: from.secret_key_ref.name.clone(),
                        key: from.secret_key_ref.key.clone(),
                        optional: Some(false),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }));
            format!("--url-env={MODEL_URL_ENV}")
        }
    };
    let mut args = vec![
        "download".to_owned(),
        url_arg,
        format!("--dest={MODEL_MOUNT}"),
        format!("--model-name={name}"),
        format!("--version={version}"),
        format!("--timeout={timeout}"),
        format!("--retries={}", download.retries.unwrap_or(3)),
        // What the framework's server loads is checked once unpacked (custom: nothing).
        format!("--framework={}", model.spec.framework.as_str()),
    ];
    if let Some(sha) = &model.spec.sha256 {
        args.push(format!("--sha256={sha}"));
    }
    // The claim's requested size bounds what an archive may unpack to: free space on a
    // hostPath-backed volume is the host's disk, not the claim.
    if let Some(bytes) = quantity_bytes(&model.spec.storage_size) {
        args.push(format!("--max-unpacked-bytes={bytes}"));
    }
    if settings.allow_ambient_credentials {
        args.push("--ambient-credentials".to_owned());
    }
    args.push("--prune".to_owned());
    args.extend(
        ctx.keep_versions
            .iter()
            .filter(|v| **v != version)
            .map(|v| format!("--keep-version={v}")),
    );
    if let Some(tp) = &ctx.traceparent {
        env.push(self::env("TRACEPARENT", tp.clone()));
    }
    env.extend(
        settings
            .downloader_telemetry_env
            .iter()
            .map(|(k, v)| self::env(k, v.clone())),
    );
    let mut labels = labels(model, COMPONENT_DOWNLOAD);
    labels.insert(VERSION_LABEL.to_owned(), version.to_string());
    let mut meta = child_meta(model, job_name(&name, version), COMPONENT_DOWNLOAD);
    meta.labels = Some(labels.clone());
    meta.annotations = Some(BTreeMap::from([(SOURCE_ANNOTATION.to_owned(), source_digest(model))]));
    let container = Container {
        name: "download".to_owned(),
        image: Some(settings.downloader_image.clone()),
        image_pull_policy: Some(settings.downloader_pull_policy.clone()),
        args: Some(args),
        env: Some(env),
        env_from: model.spec.credentials.as_ref().map(|c| {
            vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: c.name.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }]
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "model".to_owned(),
            mount_path: MODEL_MOUNT.to_owned(),
            ..Default::default()
        }]),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        security_context: Some(restricted_container_security()),
        resources: Some(
            download
                .resources
                .unwrap_or_else(|| settings.downloader_resources.clone()),
        ),
        ..Default::default()
    };
    let mut pod_spec = PodSpec {
        restart_policy: Some("Never".to_owned()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(restricted_pod_security()),
        containers: vec![container],
        volumes: Some(vec![model_volume(model, false)]),
        ..Default::default()
    };
    schedule(model, &mut pod_spec);
    Job {
        metadata: meta,
        spec: Some(JobSpec {
            backoff_limit: Some(1),
            // The downloader enforces its own deadline; this one is the backstop for a stuck pod.
            active_deadline_seconds: Some(timeout * 2 + 120),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_template_labels(model, labels)),
                    ..Default::default()
                }),
                spec: Some(pod_spec),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn serving_selector(model: &MLModel) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MODEL_LABEL.to_owned(), model_name(model)),
        (COMPONENT_LABEL.to_owned(), COMPONENT_SERVING.to_owned()),
    ])
}

/// The serving Deployment of artifact `version`. The volume is mounted read-only with only that
/// version's directory visible, so a newer download never changes what running pods serve; a
/// new version rolls out as a normal rolling update with no unavailable replica.
pub fn serving_deployment(model: &MLModel, version: i64) -> Deployment {
    let name = model_name(model);
    let rt = runtime(model, version);
    let mut pod_labels = labels(model, COMPONENT_SERVING);
    pod_labels.insert(VERSION_LABEL.to_owned(), version.to_string());
    let mut meta = child_meta(model, deployment_name(&name), COMPONENT_SERVING);
    meta.labels = Some(pod_labels.clone());
    let probe_handler_port = IntOrString::Int(rt.port);
    let readiness = match &rt.readiness_path {
        Some(path) => Probe {
            http_get: Some(HTTPGetAction {
                path: Some(path.clone()),
                port: probe_handler_port,
                ..Default::default()
            }),
            period_seconds: Some(5),
            failure_threshold: Some(3),
            ..Default::default()
        },
        None => Probe {
            tcp_socket: Some(TCPSocketAction {
                port: probe_handler_port,
                ..Default::default()
            }),
            period_seconds: Some(5),
            ..Default::default()
        },
    };
    let container = Container {
        name: "server".to_owned(),
        image: Some(rt.image),
        args: (!rt.args.is_empty()).then_some(rt.args),
        env: (!rt.env.is_empty()).then_some(rt.env),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_owned()),
            container_port: rt.port,
            ..Default::default()
        }]),
        readiness_probe: Some(readiness),
        // A pod being replaced keeps serving until the Service stops sending it requests: the
        // endpoint is removed when deletion starts, and kube-proxy needs a moment to apply it.
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction { seconds: DRAIN_SECONDS }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        resources: model.spec.runtime.as_ref().and_then(|r| r.resources.clone()),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "model".to_owned(),
                mount_path: format!("{MODEL_MOUNT}/{name}/{version}"),
                sub_path: Some(format!("{name}/{version}")),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "tmp".to_owned(),
                mount_path: "/tmp".to_owned(),
                ..Default::default()
            },
        ]),
        security_context: Some(restricted_container_security()),
        ..Default::default()
    };
    let pod = model.spec.pod.clone().unwrap_or_default();
    let mut pod_spec = PodSpec {
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(restricted_pod_security()),
        service_account_name: pod.service_account_name,
        image_pull_secrets: pod.image_pull_secrets,
        containers: vec![container],
        volumes: Some(vec![
            model_volume(model, true),
            Volume {
                name: "tmp".to_owned(),
                empty_dir: Some(Default::default()),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    schedule(model, &mut pod_spec);
    // The user's labels first: the operator's own (selector, model, version, uid) win.
    let mut template_labels = pod.labels.unwrap_or_default();
    template_labels.extend(pod_template_labels(model, pod_labels));
    Deployment {
        metadata: meta,
        spec: Some(DeploymentSpec {
            replicas: Some(model.spec.replicas),
            selector: LabelSelector {
                match_labels: Some(serving_selector(model)),
                ..Default::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(template_labels),
                    annotations: pod.annotations,
                    ..Default::default()
                }),
                spec: Some(pod_spec),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The ClusterIP Service in front of the serving pods.
pub fn service(model: &MLModel) -> Service {
    let name = model_name(model);
    let port = runtime(model, 0).port;
    Service {
        metadata: child_meta(model, service_name(&name), COMPONENT_SERVING),
        spec: Some(ServiceSpec {
            selector: Some(serving_selector(model)),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port,
                target_port: Some(IntOrString::String("http".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The address the Service answers on inside the cluster.
pub fn service_endpoint(model: &MLModel, settings: &BuildSettings) -> String {
    let name = model_name(model);
    let ns = model.metadata.namespace.as_deref().unwrap_or("default");
    format!(
        "{}.{ns}.svc.{}:{}",
        service_name(&name),
        settings.cluster_domain,
        runtime(model, 0).port
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{MLModelSpec, RuntimeOverride};

    fn model(framework: Framework) -> MLModel {
        let mut m = MLModel::new(
            "iris",
            MLModelSpec {
                model_url: Some("https://models.example.com/iris.tar.gz".to_owned()),
                model_url_from: None,
                storage_size: "2Gi".to_owned(),
                framework,
                replicas: 2,
                expose: true,
                sha256: None,
                credentials: None,
                runtime: None,
                download: None,
                storage: None,
                pod: None,
            },
        );
        m.metadata.namespace = Some("ml".to_owned());
        m.metadata.uid = Some("uid-1".to_owned());
        m
    }

    #[test]
    fn tensorflow_runtime_serves_the_model_base_path_on_8501() {
        let rt = runtime(&model(Framework::Tensorflow), 3);
        assert_eq!(rt.port, 8501);
        assert_eq!(rt.readiness_path.as_deref(), Some("/v1/models/iris/metadata"));
        assert!(rt.args.contains(&"--model_base_path=/models/iris".to_owned()));
    }

    #[test]
    fn overrides_replace_the_framework_defaults() {
        let mut m = model(Framework::Custom);
        m.spec.runtime = Some(RuntimeOverride {
            image: Some("registry.example/server:1".to_owned()),
            port: Some(9000),
            ..Default::default()
        });
        let rt = runtime(&m, 1);
        assert_eq!(rt.image, "registry.example/server:1");
        assert_eq!(rt.port, 9000);
        assert_eq!(rt.readiness_path, None);
    }

    #[test]
    fn download_job_passes_the_url_as_one_argument_and_credentials_by_reference() {
        let mut m = model(Framework::Tensorflow);
        m.spec.model_url = Some("https://h/x;$(reboot)".to_owned());
        m.spec.credentials = Some(crate::api::SecretReference {
            name: "s3-creds".to_owned(),
        });
        let job = download_job(&m, 4, &BuildSettings::default(), &DownloadContext::default());
        let spec = job.spec.unwrap().template.spec.unwrap();
        let c = &spec.containers[0];
        assert_eq!(c.command, None, "no shell, the image's entrypoint runs");
        let args = c.args.clone().unwrap();
        assert!(args.contains(&"--url=https://h/x;$(reboot)".to_owned()));
        assert!(args.contains(&"--version=4".to_owned()));
        let env_from = c.env_from.clone().unwrap();
        assert_eq!(env_from[0].secret_ref.as_ref().unwrap().name, "s3-creds");
        assert_eq!(job.metadata.name.as_deref(), Some("iris-download-4"));
        assert_eq!(job.metadata.owner_references.unwrap()[0].uid, "uid-1");
    }

    #[test]
    fn a_url_given_by_reference_reaches_the_downloader_only_through_its_environment() {
        let mut m = model(Framework::Tensorflow);
        m.spec.model_url = None;
        m.spec.model_url_from = Some(crate::api::ModelUrlSource {
            secret_key_ref: crate::api::SecretKeySelector {
                name: "presigned".to_owned(),
                key: "url".to_owned(),
            },
        });
        let job = download_job(&m, 1, &BuildSettings::default(), &DownloadContext::default());
        let c = &job.spec.unwrap().template.spec.unwrap().containers[0];
        let args = c.args.clone().unwrap();
        assert!(args.contains(&format!("--url-env={MODEL_URL_ENV}")), "{args:?}");
        assert!(
            !args.iter().any(|a| a.starts_with("--url=")),
            "no URL in the args: {args:?}"
        );
        let env = c.env.clone().unwrap();
        let url = env.iter().find(|e| e.name == MODEL_URL_ENV).expect("the URL variable");
        assert_eq!(url.value, None, "the value is never in the pod spec");
        let secret = url.value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref()).unwrap();
        assert_eq!((secret.name.as_str(), secret.key.as_str()), ("presigned", "url"));
        assert_eq!(secret.optional, Some(false));
    }

    #[test]
    fn the_rollout_follows_the_referenced_secret_and_key() {
        let by_ref = |name: &str, key: &str| {
            let mut m = model(Framework::Tensorflow);
            m.spec.model_url = None;
            m.spec.model_url_from = Some(crate::api::ModelUrlSource {
                secret_key_ref: crate::api::SecretKeySelector {
                    name: name.to_owned(),
                    key: key.to_owned(),
                },
            });
            m
        };
        let digest = |m: &MLModel| source_digest(m);
        assert_eq!(digest(&by_ref("s", "url")), digest(&by_ref("s", "url")));
        assert_ne!(digest(&by_ref("s", "url")), digest(&by_ref("s", "url-v2")));
        assert_ne!(digest(&by_ref("s", "url")), digest(&by_ref("t", "url")));
        assert_ne!(digest(&by_ref("s", "url")), digest(&model(Framework::Tensorflow)));
        assert_eq!(by_ref("s", "url").spec.shown_source(), "secretKeyRef:s/url");
    }

    #[test]
    fn unpacking_is_capped_at_the_claims_requested_size() {
        let args = |size: &str| {
            let mut m = model(Framework::Tensorflow);
            m.spec.storage_size = size.to_owned();
            let job = download_job(&m, 1, &BuildSettings::default(), &DownloadContext::default());
            job.spec.unwrap().template.spec.unwrap().containers[0]
                .args
                .clone()
                .unwrap()
        };
        assert!(args("2Gi").contains(&"--max-unpacked-bytes=2147483648".to_owned()));
        assert!(args("500M").contains(&"--max-unpacked-bytes=500000000".to_owned()));
        assert!(args("1.5Ki").contains(&"--max-unpacked-bytes=1536".to_owned()));
    }

    #[test]
    fn quantities_are_read_as_bytes() {
        for (q, bytes) in [
            ("1Gi", Some(1 << 30)),
            ("1G", Some(1_000_000_000)),
            ("2.5G", Some(2_500_000_000)),
            ("1e3", Some(1000)),
            ("1E6", Some(1_000_000)),
            ("128974848", Some(128_974_848)),
            ("500m", Some(1)),
            ("0", Some(0)),
            ("0.0Mi", Some(0)),
            ("1Xi", None),
            ("Gi", None),
            ("1e400", None),
        ] {
            assert_eq!(quantity_bytes(q), bytes, "{q}");
        }
    }

    #[test]
    fn ambient_credentials_only_when_the_operator_allows_them() {
        let m = model(Framework::Tensorflow);
        let args = |allow: bool| {
            let settings = BuildSettings {
                allow_ambient_credentials: allow,
                ..Default::default()
            };
            let job = download_job(&m, 1, &settings, &DownloadContext::default());
            job.spec.unwrap().template.spec.unwrap().containers[0]
                .args
                .clone()
                .unwrap()
        };
        assert!(!args(false).contains(&"--ambient-credentials".to_owned()));
        assert!(args(true).contains(&"--ambient-credentials".to_owned()));
    }

    #[test]
    fn volumes_are_re_owned_only_when_their_root_is_not_the_groups() {
        let m = model(Framework::Tensorflow);
        let job = download_job(&m, 1, &BuildSettings::default(), &DownloadContext::default());
        let deployment = serving_deployment(&m, 1);
        for pod in [
            job.spec.unwrap().template.spec.unwrap(),
            deployment.spec.unwrap().template.spec.unwrap(),
        ] {
            let security = pod.security_context.unwrap();
            assert_eq!(security.fs_group, Some(65532));
            assert_eq!(security.fs_group_change_policy.as_deref(), Some("OnRootMismatch"));
        }
    }

    #[test]
    fn serving_pods_mount_only_their_version_read_only() {
        let d = serving_deployment(&model(Framework::Tensorflow), 7);
        let pod = d.spec.unwrap().template.spec.unwrap();
        let mount = &pod.containers[0].volume_mounts.as_ref().unwrap()[0];
        assert_eq!(mount.sub_path.as_deref(), Some("iris/7"));
        assert_eq!(mount.mount_path, "/models/iris/7");
        assert_eq!(mount.read_only, Some(true));
    }

    #[test]
    fn endpoint_is_the_service_dns_name_and_port() {
        let m = model(Framework::Tensorflow);
        assert_eq!(
            service_endpoint(&m, &BuildSettings::default()),
            "iris.ml.svc.cluster.local:8501"
        );
    }

    #[test]
    fn mlserver_writes_its_errors_to_a_bounded_termination_log_and_uvicorn_to_stdout() {
        let runtime = runtime(&model(Framework::Sklearn), 1);
        let settings = runtime
            .env
            .iter()
            .find(|e| e.name == "MLSERVER_LOGGING_SETTINGS")
            .and_then(|e| e.value.as_deref())
            .expect("MLSERVER_LOGGING_SETTINGS");
        let settings: serde_json::Value = serde_json::from_str(settings).expect("JSON");
        let termination = &settings["handlers"]["termination"];
        assert_eq!(termination["filename"], "/dev/termination-log");
        assert_eq!(termination["level"], "ERROR");
        assert_eq!(termination["maxBytes"], 4096);
        assert_eq!(termination["."]["mode"], "w", "a full file is truncated, not renamed");
        assert!(termination.get("backupCount").is_none());
        assert_eq!(settings["root"]["handlers"], serde_json::json!(["termination"]));
        assert_eq!(
            settings["loggers"]["uvicorn"]["handlers"],
            serde_json::json!(["stdout"])
        );
        assert_eq!(settings["disable_existing_loggers"], false);
    }

    #[test]
    fn pods_sharing_a_single_node_volume_go_where_the_models_other_pods_run() {
        let m = model(Framework::Sklearn);
        let job = download_job(&m, 1, &BuildSettings::default(), &DownloadContext::default());
        let deployment = serving_deployment(&m, 1);
        for affinity in [
            job.spec.unwrap().template.spec.unwrap().affinity,
            deployment.spec.unwrap().template.spec.unwrap().affinity,
        ] {
            let terms = affinity
                .and_then(|a| a.pod_affinity)
                .and_then(|p| p.required_during_scheduling_ignored_during_execution)
                .expect("required pod affinity");
            assert_eq!(terms.len(), 1);
            assert_eq!(terms[0].topology_key, "kubernetes.io/hostname");
            let labels = terms[0].label_selector.as_ref().and_then(|s| s.match_labels.clone());
            assert_eq!(
                labels,
                Some(BTreeMap::from([(MODEL_LABEL.to_owned(), "iris".to_owned())]))
            );
        }

        let mut shared = model(Framework::Sklearn);
        shared.spec.storage = Some(crate::api::StoragePolicy {
            access_modes: Some(vec![AccessMode::ReadWriteMany]),
            ..Default::default()
        });
        let job = download_job(&shared, 1, &BuildSettings::default(), &DownloadContext::default());
        assert_eq!(job.spec.unwrap().template.spec.unwrap().affinity, None);
        let deployment = serving_deployment(&shared, 1);
        assert_eq!(deployment.spec.unwrap().template.spec.unwrap().affinity, None);
    }

    fn with_pod_settings() -> MLModel {
        let mut m = model(Framework::Sklearn);
        let gpu = k8s_openapi::api::core::v1::Toleration {
            key: Some("nvidia.com/gpu".to_owned()),
            operator: Some("Exists".to_owned()),
            effect: Some("NoSchedule".to_owned()),
            ..Default::default()
        };
        let zone = k8s_openapi::api::core::v1::NodeAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![Default::default()]),
            ..Default::default()
        };
        m.spec.pod = Some(crate::api::PodSettings {
            node_selector: Some(BTreeMap::from([("accelerator".to_owned(), "a100".to_owned())])),
            tolerations: Some(vec![gpu]),
            affinity: Some(Affinity {
                node_affinity: Some(zone),
                ..Default::default()
            }),
            priority_class_name: Some("models".to_owned()),
            image_pull_secrets: Some(vec![k8s_openapi::api::core::v1::LocalObjectReference {
                name: "registry".to_owned(),
            }]),
            service_account_name: Some("iris-server".to_owned()),
            labels: Some(BTreeMap::from([
                ("team".to_owned(), "vision".to_owned()),
                (MODEL_LABEL.to_owned(), "not-iris".to_owned()),
            ])),
            annotations: Some(BTreeMap::from([("mesh/inject".to_owned(), "true".to_owned())])),
        });
        m
    }

    #[test]
    fn pod_settings_reach_the_serving_pods_and_scheduling_reaches_the_download_pod() {
        let m = with_pod_settings();
        let deployment = serving_deployment(&m, 1);
        let template = deployment.spec.expect("spec").template;
        let meta = template.metadata.expect("metadata");
        let labels = meta.labels.expect("labels");
        assert_eq!(labels.get("team").map(String::as_str), Some("vision"));
        assert_eq!(
            labels.get(MODEL_LABEL).map(String::as_str),
            Some("iris"),
            "the operator's label wins"
        );
        assert_eq!(
            meta.annotations,
            Some(BTreeMap::from([("mesh/inject".to_owned(), "true".to_owned())]))
        );
        let serving = template.spec.expect("pod spec");
        assert_eq!(serving.service_account_name.as_deref(), Some("iris-server"));
        assert_eq!(serving.automount_service_account_token, Some(false));
        assert_eq!(
            serving.image_pull_secrets.as_ref().map(|s| s[0].name.as_str()),
            Some("registry")
        );

        let job = download_job(&m, 1, &BuildSettings::default(), &DownloadContext::default());
        let download = job.spec.expect("spec").template.spec.expect("pod spec");
        assert_eq!(download.service_account_name, None);
        assert_eq!(download.image_pull_secrets, None);
        for spec in [&serving, &download] {
            assert_eq!(
                spec.node_selector,
                Some(BTreeMap::from([("accelerator".to_owned(), "a100".to_owned())]))
            );
            assert_eq!(
                spec.tolerations.as_ref().and_then(|t| t[0].key.as_deref()),
                Some("nvidia.com/gpu")
            );
            assert_eq!(spec.priority_class_name.as_deref(), Some("models"));
            // The user's node affinity is kept and the volume's pod affinity added to it.
            let affinity = spec.affinity.as_ref().expect("affinity");
            assert!(affinity.node_affinity.is_some());
            let terms = affinity
                .pod_affinity
                .as_ref()
                .and_then(|p| p.required_during_scheduling_ignored_during_execution.as_ref())
                .expect("the volume's pod affinity");
            assert_eq!(terms.len(), 1);
            assert_eq!(terms[0].topology_key, "kubernetes.io/hostname");
        }
    }

    #[test]
    fn a_model_without_pod_settings_renders_the_serving_pods_as_before() {
        // No field of spec.pod set adds nothing to the pod template, so upgrading the operator
        // rolls out no serving Deployment.
        let mut m = model(Framework::Sklearn);
        let before = serde_json::to_value(serving_deployment(&m, 1)).expect("json");
        m.spec.pod = Some(crate::api::PodSettings::default());
        let after = serde_json::to_value(serving_deployment(&m, 1)).expect("json");
        assert_eq!(before, after);
        let template = &before["spec"]["template"];
        assert_eq!(template["metadata"].get("annotations"), None);
        for absent in [
            "nodeSelector",
            "tolerations",
            "priorityClassName",
            "serviceAccountName",
            "imagePullSecrets",
        ] {
            assert_eq!(template["spec"].get(absent), None, "{absent}");
        }
    }

    #[test]
    fn download_pods_get_the_operators_resources_unless_the_model_sets_its_own() {
        let mut m = model(Framework::Sklearn);
        let resources_of = |m: &MLModel| {
            let job = download_job(m, 1, &BuildSettings::default(), &DownloadContext::default());
            job.spec.expect("spec").template.spec.expect("pod spec").containers[0]
                .resources
                .clone()
                .expect("resources")
        };
        let defaults = resources_of(&m);
        let quantity = |list: &Option<BTreeMap<String, Quantity>>, name: &str| {
            list.as_ref().and_then(|l| l.get(name)).map(|q| q.0.clone())
        };
        assert_eq!(quantity(&defaults.requests, "cpu").as_deref(), Some("100m"));
        assert_eq!(quantity(&defaults.requests, "memory").as_deref(), Some("64Mi"));
        assert_eq!(quantity(&defaults.limits, "cpu").as_deref(), Some("2"));
        assert_eq!(quantity(&defaults.limits, "memory").as_deref(), Some("512Mi"));

        let own = ResourceRequirements {
            limits: Some(BTreeMap::from([("memory".to_owned(), Quantity("1Gi".to_owned()))])),
            ..Default::default()
        };
        m.spec.download = Some(crate::api::DownloadPolicy {
            resources: Some(own.clone()),
            ..Default::default()
        });
        assert_eq!(resources_of(&m), own);
    }

    #[test]
    fn resource_lists_are_parsed_and_a_bad_item_is_named() {
        let list = resource_list("cpu=250m, memory=1.5Gi,ephemeral-storage=2G").expect("valid");
        assert_eq!(list.get("cpu"), Some(&Quantity("250m".to_owned())));
        assert_eq!(list.get("memory"), Some(&Quantity("1.5Gi".to_owned())));
        assert_eq!(list.len(), 3);
        assert_eq!(resource_list("").expect("empty"), BTreeMap::new());
        for bad in ["cpu", "cpu=", "cpu=lots", "=1", "memory=1.2.3Gi", "memory=1GB"] {
            let error = resource_list(bad).expect_err(bad);
            assert!(error.contains(bad), "{error}");
        }
    }

    #[test]
    fn serving_pods_drain_before_their_server_stops() {
        let d = serving_deployment(&model(Framework::Sklearn), 1);
        let pod = d.spec.and_then(|s| s.template.spec).expect("pod spec");
        let stop = pod.containers[0]
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|h| h.sleep.as_ref())
            .map(|s| s.seconds);
        assert_eq!(stop, Some(DRAIN_SECONDS));
        // The drain fits in the grace period (30 s unless set).
        assert!(pod.termination_grace_period_seconds.unwrap_or(30) > DRAIN_SECONDS);
    }
}

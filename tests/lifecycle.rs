//! The model lifecycle on a real control plane: apply → Ready, children and their owners,
//! phases, conditions and Events, scale, spec changes, healing, deletion.

mod operator;
mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use mlmodel_operator::api::{MLModel, Phase};
use support::TestNamespace;

const TIMEOUT: Duration = Duration::from_secs(60);

fn model_yaml(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: oda.tmforum.org/v1beta1\nkind: MLModel\nmetadata:\n  name: {name}\nspec:\n  \
         modelURL: https://models.example.com/{name}/model.tar.gz\n{extra}"
    )
}

fn condition(m: &MLModel, type_: &str) -> Option<(String, String)> {
    let c = m.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone()))
}

fn is_ready(m: &MLModel) -> bool {
    m.status.as_ref().and_then(|s| s.phase) == Some(Phase::Ready)
        && m.status.as_ref().and_then(|s| s.observed_generation) == m.metadata.generation
}

async fn setup(prefix: &str) -> TestNamespace {
    operator::shared();
    support::namespace(prefix).await
}

async fn events_for(ns: &TestNamespace, name: &str) -> Vec<Event> {
    let mut events: Vec<Event> = ns
        .api::<Event>()
        .list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| {
            let regarding = e.regarding.as_ref();
            regarding.and_then(|r| r.kind.as_deref()) == Some("MLModel")
                && regarding.and_then(|r| r.name.as_deref()) == Some(name)
        })
        .collect();
    events.sort_by_key(|e| {
        e.event_time
            .as_ref()
            .map(|t| t.0)
            .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
    });
    events
}

#[tokio::test]
async fn apply_to_ready_creates_owned_children_and_reports_every_phase() {
    let ns = setup("ready").await;
    let poc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/samples/iris-poc.yaml")).unwrap();
    ns.apply_yaml(&poc);
    let models = ns.api::<MLModel>();
    let model = support::wait_for(&models, "iris", TIMEOUT, is_ready).await;
    let uid = model.uid().unwrap();
    let status = model.status.clone().unwrap();

    // Children exist, each owned by the model.
    let owned = |refs: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>| {
        refs.is_some_and(|r| r.iter().any(|o| o.uid == uid && o.controller == Some(true)))
    };
    let pvc = ns.api::<PersistentVolumeClaim>().get("iris-model").await.unwrap();
    assert!(owned(pvc.metadata.owner_references.as_ref()), "PVC owned by the model");
    assert_eq!(pvc.status.unwrap().phase.as_deref(), Some("Bound"));
    let job = ns.api::<Job>().get("iris-download-1").await.unwrap();
    assert!(owned(job.metadata.owner_references.as_ref()), "Job owned by the model");
    let args = job.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert_eq!(args[0], "download");
    assert!(args.contains(&"--url=https://storage.googleapis.com/ml-models/iris/model.tar.gz".to_owned()));
    let deploy = ns.api::<Deployment>().get("iris-serving").await.unwrap();
    assert!(
        owned(deploy.metadata.owner_references.as_ref()),
        "Deployment owned by the model"
    );
    let pod_spec = deploy.spec.unwrap().template.spec.unwrap();
    let probe = pod_spec.containers[0].readiness_probe.clone().unwrap();
    assert_eq!(
        probe.http_get.unwrap().path.as_deref(),
        Some("/v1/models/iris/metadata")
    );
    let svc = ns.api::<Service>().get("iris").await.unwrap();
    assert!(
        owned(svc.metadata.owner_references.as_ref()),
        "Service owned by the model"
    );

    // Status a user reads.
    assert_eq!(
        status.service_endpoint.as_deref(),
        Some(format!("iris.{}.svc.cluster.local:8501", ns.name).as_str())
    );
    assert_eq!(status.ready.as_deref(), Some("1/1"));
    for c in ["Ready", "Downloaded", "Available"] {
        assert_eq!(
            condition(&model, c).map(|c| c.0).as_deref(),
            Some("True"),
            "condition {c}"
        );
    }
    assert!(
        status.trace_id.as_ref().is_some_and(|t| t.len() == 32),
        "trace id in status"
    );
    assert!(
        model
            .finalizers()
            .contains(&mlmodel_operator::api::FINALIZER.to_owned())
    );

    // One Event per phase, in order.
    let reasons: Vec<String> = events_for(&ns, "iris")
        .await
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert_eq!(
        reasons,
        ["CreatingStorage", "Downloading", "Serving", "Ready"],
        "events: {reasons:?}"
    );

    // A plain rollout meets no error on its way: no write refused, in conflict or retried.
    let about_it = format!("model={}/iris ", ns.name);
    let logs = operator::shared().logs();
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains(&about_it))
        .collect();
    assert!(warnings.is_empty(), "warnings about the model: {warnings:#?}");

    // kubectl wait works on the Ready condition; kubectl get shows the columns.
    let out = ns
        .kubectl()
        .args(["wait", "--for=condition=Ready", "mlmodel/iris", "--timeout=10s"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ns.kubectl().args(["get", "mlm", "-o", "wide"]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "PHASE", "READY", "ENDPOINT", "AGE", "FRAMEWORK", "MESSAGE"]
    );
    assert!(
        table.contains("Ready") && table.contains("1/1") && table.contains("tensorflow"),
        "{table}"
    );
}

#[tokio::test]
async fn twenty_models_at_once_all_reach_ready_with_one_of_each_child() {
    let ns = setup("twenty").await;
    let yaml: Vec<String> = (0..20).map(|i| model_yaml(&format!("m{i}"), "")).collect();
    ns.apply_yaml(&yaml.join("---\n"));
    let models = ns.api::<MLModel>();
    for i in 0..20 {
        support::wait_for(&models, &format!("m{i}"), Duration::from_secs(120), is_ready).await;
    }
    let lp = ListParams::default();
    assert_eq!(ns.api::<Job>().list(&lp).await.unwrap().items.len(), 20);
    assert_eq!(ns.api::<Deployment>().list(&lp).await.unwrap().items.len(), 20);
    assert_eq!(ns.api::<Service>().list(&lp).await.unwrap().items.len(), 20);
    assert_eq!(
        ns.api::<PersistentVolumeClaim>().list(&lp).await.unwrap().items.len(),
        20
    );
    for i in 0..20 {
        let name = format!("m{i}");
        assert!(
            ns.api::<Job>()
                .get_opt(&format!("{name}-download-1"))
                .await
                .unwrap()
                .is_some()
        );
    }
}

#[tokio::test]
async fn delete_removes_every_child_and_releases_the_finalizer() {
    let ns = setup("delete").await;
    ns.apply_yaml(&model_yaml("gone", ""));
    let models = ns.api::<MLModel>();
    support::wait_for(&models, "gone", TIMEOUT, is_ready).await;
    let started = std::time::Instant::now();
    models.delete("gone", &DeleteParams::default()).await.unwrap();
    support::wait_for_deletion(&models, "gone", Duration::from_secs(30)).await;
    eprintln!("model deleted in {:?}", started.elapsed());
    let lp = ListParams::default().labels("mlmodel.oda.tmforum.org/name=gone");
    support::poll_until("children gone", Duration::from_secs(30), || async {
        let jobs = ns.api::<Job>().list(&lp).await.ok()?.items.len();
        let pods = ns.api::<Pod>().list(&lp).await.ok()?.items.len();
        let deps = ns.api::<Deployment>().list(&lp).await.ok()?.items.len();
        let svcs = ns.api::<Service>().list(&lp).await.ok()?.items.len();
        let pvcs = ns.api::<PersistentVolumeClaim>().list(&lp).await.ok()?.items.len();
        (jobs + pods + deps + svcs + pvcs == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn hand_deleted_service_and_deployment_come_back() {
    let ns = setup("heal").await;
    ns.apply_yaml(&model_yaml("heal", ""));
    let models = ns.api::<MLModel>();
    support::wait_for(&models, "heal", TIMEOUT, is_ready).await;
    let services = ns.api::<Service>();
    let old = services.get("heal").await.unwrap().uid();
    services.delete("heal", &DeleteParams::default()).await.unwrap();
    support::wait_for(&services, "heal", TIMEOUT, |s| s.uid() != old).await;
    let deployments = ns.api::<Deployment>();
    let old = deployments.get("heal-serving").await.unwrap().uid();
    deployments
        .delete("heal-serving", &DeleteParams::background())
        .await
        .unwrap();
    support::wait_for(&deployments, "heal-serving", TIMEOUT, |d| d.uid() != old).await;
    support::wait_for(&models, "heal", TIMEOUT, is_ready).await;
}

#[tokio::test]
async fn zero_replicas_is_a_clearly_reported_ready_state() {
    let ns = setup("zero").await;
    ns.apply_yaml(&model_yaml("zero", "  replicas: 0\n"));
    let models = ns.api::<MLModel>();
    let m = support::wait_for(&models, "zero", TIMEOUT, is_ready).await;
    let status = m.status.unwrap();
    assert_eq!(status.ready.as_deref(), Some("0/0"));
    assert!(status.message.unwrap().contains("replicas is 0"));
    let available = status.conditions.iter().find(|c| c.type_ == "Available").unwrap();
    assert_eq!(
        (available.status.as_str(), available.reason.as_str()),
        ("False", "ScaledToZero")
    );
}

/// A larger `storageSize`: the default class cannot expand, so that claim keeps its size and
/// the `StorageResized` condition quotes the API server; a class that allows expansion takes
/// the new request, and the condition waits for the storage provider. Neither model stops
/// being Ready.
#[tokio::test]
async fn a_larger_storage_size_expands_the_claim_where_its_class_allows_it() {
    let ns = setup("resize").await;
    let class = format!("{}-expandable", ns.name);
    support::cluster().apply_yaml(
        None,
        &format!(
            "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n  name: {class}\n\
             provisioner: kubernetes.io/host-path\nallowVolumeExpansion: true\nvolumeBindingMode: Immediate\n"
        ),
    );
    let storage = format!("  storage:\n    storageClassName: {class}\n");
    ns.apply_yaml(&format!(
        "{}---\n{}",
        model_yaml("fixed", "  storageSize: 1Gi\n"),
        model_yaml("grows", &format!("  storageSize: 1Gi\n{storage}"))
    ));
    let models = ns.api::<MLModel>();
    for name in ["fixed", "grows"] {
        support::wait_for(&models, name, TIMEOUT, is_ready).await;
        let patch = serde_json::json!({"spec": {"storageSize": "2Gi"}});
        models
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }
    let requested = |claim: PersistentVolumeClaim| {
        claim
            .spec
            .and_then(|s| s.resources)
            .and_then(|r| r.requests)
            .map(|r| r["storage"].0.clone())
    };
    let resized = |m: &MLModel| {
        m.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "StorageResized"))
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };

    let fixed = support::wait_for(&models, "fixed", TIMEOUT, |m| {
        resized(m).is_some_and(|(_, reason, _)| reason == "ExpansionRefused")
    })
    .await;
    let (status, _, message) = resized(&fixed).unwrap();
    assert_eq!(status, "False");
    assert!(
        message.starts_with("volume fixed-model stays at 1Gi: expanding it to 2Gi was refused: ")
            && message.contains("the storageclass that provisions the pvc must support resize"),
        "{message}"
    );
    assert!(
        is_ready(&fixed),
        "a refused expansion never takes the model down: {:?}",
        fixed.status
    );
    let claims = ns.api::<PersistentVolumeClaim>();
    assert_eq!(
        requested(claims.get("fixed-model").await.unwrap()).as_deref(),
        Some("1Gi")
    );

    let grows = support::wait_for(&models, "grows", TIMEOUT, |m| {
        resized(m).is_some_and(|(_, reason, message)| reason == "Resizing" && message.contains("of the 2Gi asked for"))
    })
    .await;
    assert_eq!(
        resized(&grows).unwrap().2,
        "volume grows-model has 1Gi of the 2Gi asked for; the storage provider is expanding it"
    );
    assert!(is_ready(&grows), "{:?}", grows.status);
    assert_eq!(
        requested(claims.get("grows-model").await.unwrap()).as_deref(),
        Some("2Gi")
    );

    // A refused expansion is a condition, not a failure: no Warning Event.
    let events = events_for(&ns, "fixed").await;
    assert!(
        events.iter().all(|e| e.type_.as_deref() != Some("Warning")),
        "{:?}",
        events.iter().map(|e| e.note.clone()).collect::<Vec<_>>()
    );
    support::cluster().kubectl_ok(&["delete", "storageclass", &class]);
}

/// A ResourceQuota that lets the Deployment create one serving pod of two: the model stays
/// Ready for what serves and says it is degraded, in the quota's words from the Deployment's
/// `ReplicaFailure` condition; raising the quota lets the Deployment go on by itself.
/// A StorageClass that does not exist: the provisioner says so in `ProvisioningFailed` Events,
/// and after the grace the model is Failed in its words (`StorageUnavailable`). Creating the
/// class lets the claim bind, and the model goes on to Ready by itself.
#[tokio::test]
async fn a_claim_that_cannot_be_provisioned_fails_in_the_provisioners_words_and_recovers() {
    let ns = setup("no-class").await;
    let class = format!("{}-later", ns.name);
    ns.apply_yaml(&model_yaml(
        "unbound",
        &format!("  storage:\n    storageClassName: {class}\n"),
    ));
    let models = ns.api::<MLModel>();
    let failed = support::wait_for(&models, "unbound", TIMEOUT, |m| {
        m.status.as_ref().and_then(|s| s.phase) == Some(Phase::Failed)
    })
    .await;
    let failure = failed.status.as_ref().unwrap().last_failure.clone().unwrap();
    assert_eq!(failure.reason, "StorageUnavailable");
    assert_eq!(
        failure.message,
        format!("volume unbound-model cannot be provisioned: storageclass.storage.k8s.io \"{class}\" not found")
    );
    assert_eq!(
        condition(&failed, "Ready"),
        Some(("False".to_owned(), "StorageUnavailable".to_owned()))
    );

    support::cluster().apply_yaml(
        None,
        &format!(
            "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n  name: {class}\n\
             provisioner: kubernetes.io/host-path\nvolumeBindingMode: Immediate\n"
        ),
    );
    // The volume controller retries the claim on its next sync (15 s).
    let ready = support::wait_for(&models, "unbound", Duration::from_secs(120), is_ready).await;
    assert_eq!(
        ready.status.unwrap().last_failure.map(|f| f.reason).as_deref(),
        Some("StorageUnavailable"),
        "the failure is kept for reference"
    );
    support::cluster().kubectl_ok(&["delete", "storageclass", &class, "--wait=false"]);
}

/// A claim deleted under a Ready model: the pods that hold it (`pvc-protection`) are stopped so
/// that it can go, a new claim is made, the model is downloaded into it again (the status
/// alone is not the volume), and the model is Ready on the new claim.
#[tokio::test]
async fn a_claim_deleted_under_a_ready_model_comes_back_on_a_new_claim() {
    let ns = setup("claim-deleted").await;
    ns.apply_yaml(&model_yaml("reclaimed", ""));
    let models = ns.api::<MLModel>();
    let ready = support::wait_for(&models, "reclaimed", TIMEOUT, is_ready).await;
    let claims = ns.api::<PersistentVolumeClaim>();
    let old_claim = claims.get("reclaimed-model").await.unwrap().uid().unwrap();
    let serving = ready.status.as_ref().and_then(|s| s.serving.clone()).unwrap();
    assert_eq!(serving.claim_uid.as_deref(), Some(old_claim.as_str()));
    let job_uid = || async { ns.api::<Job>().get("reclaimed-download-1").await.unwrap().uid() };
    let old_job = job_uid().await;

    claims
        .delete("reclaimed-model", &DeleteParams::default())
        .await
        .unwrap();
    let back = support::wait_for(&models, "reclaimed", Duration::from_secs(120), |m| {
        is_ready(m)
            && m.status
                .as_ref()
                .and_then(|s| s.serving.as_ref())
                .and_then(|s| s.claim_uid.as_deref())
                .is_some_and(|uid| uid != old_claim)
    })
    .await;
    let new_claim = claims.get("reclaimed-model").await.unwrap().uid().unwrap();
    assert_ne!(new_claim, old_claim);
    assert_eq!(
        back.status.unwrap().serving.unwrap().claim_uid.as_deref(),
        Some(new_claim.as_str())
    );
    let new_job = job_uid().await;
    assert_ne!(new_job, old_job, "downloaded again into the new claim");
    let warnings: Vec<(Option<String>, Option<String>)> = events_for(&ns, "reclaimed")
        .await
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .map(|e| (e.reason, e.note))
        .collect();
    assert_eq!(
        warnings,
        [(
            Some("VolumeDeleted".to_owned()),
            Some(
                "volume reclaimed-model was deleted: the model's pods are stopped so that it can go, then the \
                 model is downloaded into a new volume and served again"
                    .to_owned()
            )
        )],
        "a Warning Event says what happened"
    );
}

#[tokio::test]
async fn pods_the_deployment_cannot_create_are_reported_in_the_quotas_words() {
    use k8s_openapi::api::core::v1::ResourceQuota;

    let ns = setup("pod-quota").await;
    ns.apply_yaml("apiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: pods\nspec:\n  hard:\n    pods: \"1\"\n");
    // Admission only enforces a quota once the quota controller has computed its usage.
    support::wait_for(&ns.api::<ResourceQuota>(), "pods", TIMEOUT, |q| {
        q.status.as_ref().and_then(|s| s.hard.as_ref()).is_some()
    })
    .await;
    ns.apply_yaml(&model_yaml("capped", ""));
    let models = ns.api::<MLModel>();
    support::wait_for(&models, "capped", TIMEOUT, is_ready).await;

    let patch = serde_json::json!({"spec": {"replicas": 2}});
    models
        .patch("capped", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let degraded = |m: &MLModel| {
        m.status
            .as_ref()
            .and_then(|s| {
                s.conditions
                    .iter()
                    .find(|c| c.type_ == "Degraded" && c.status == "True")
            })
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    let m = support::wait_for(&models, "capped", TIMEOUT, |m| degraded(m).is_some()).await;
    let (reason, message) = degraded(&m).unwrap();
    assert_eq!(reason, "QuotaExceeded", "{message}");
    assert!(
        message.starts_with("deployment capped-serving: FailedCreate: pods \"capped-serving-")
            && message.contains("is forbidden: exceeded quota: pods, requested: pods=1, used: pods=1, limited: pods=1"),
        "{message}"
    );
    let status = m.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(Phase::Serving), "{status:?}");
    assert_eq!(status.ready.as_deref(), Some("1/2"));
    assert_eq!(
        condition(&m, "Available"),
        Some(("True".to_owned(), "Progressing".to_owned()))
    );

    ns.api::<ResourceQuota>()
        .patch(
            "pods",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": { "hard": { "pods": "2" } } })),
        )
        .await
        .unwrap();
    let m = support::wait_for(&models, "capped", Duration::from_secs(120), is_ready).await;
    assert_eq!(m.status.as_ref().unwrap().ready.as_deref(), Some("2/2"));
    assert_eq!(degraded(&m), None);
}

#[tokio::test]
async fn a_spec_change_rolls_out_the_new_generation() {
    let ns = setup("update").await;
    ns.apply_yaml(&model_yaml("upd", ""));
    let models = ns.api::<MLModel>();
    support::wait_for(&models, "upd", TIMEOUT, is_ready).await;

    // Scaling reuses the downloaded version: no new download.
    let patch = serde_json::json!({"spec": {"replicas": 2}});
    models
        .patch("upd", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let m = support::wait_for(&models, "upd", TIMEOUT, |m| {
        is_ready(m) && m.metadata.generation == Some(2)
    })
    .await;
    assert_eq!(m.status.as_ref().unwrap().ready.as_deref(), Some("2/2"));
    assert_eq!(m.status.as_ref().unwrap().serving.as_ref().unwrap().generation, 1);
    assert!(
        ns.api::<Job>().get_opt("upd-download-2").await.unwrap().is_none(),
        "no new download for a scale"
    );

    // A new URL downloads version 3 and rolls it out.
    let patch = serde_json::json!({"spec": {"modelURL": "https://models.example.com/upd/v2.tar.gz"}});
    models
        .patch("upd", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let m = support::wait_for(&models, "upd", TIMEOUT, |m| {
        is_ready(m) && m.metadata.generation == Some(3)
    })
    .await;
    let serving = m.status.unwrap().serving.unwrap();
    assert_eq!(serving.generation, 3);
    assert_eq!(serving.model_url, "https://models.example.com/upd/v2.tar.gz");
    assert!(ns.api::<Job>().get_opt("upd-download-3").await.unwrap().is_some());
    // The Deployment controller scales the old ReplicaSet down once the new pods are ready,
    // which may be just after the model reports Ready.
    let pod_api = ns.api::<Pod>();
    support::poll_until("serving pods of version 3 only", TIMEOUT, || async {
        let pods = pod_api
            .list(&ListParams::default().labels("app.kubernetes.io/component=serving"))
            .await
            .ok()?;
        let versions: Vec<_> = pods
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.labels().get("mlmodel.oda.tmforum.org/version").cloned())
            .collect();
        (!versions.is_empty() && versions.iter().all(|v| v == "3")).then_some(())
    })
    .await;
    support::wait_for_deletion(&ns.api::<Job>(), "upd-download-1", TIMEOUT).await;
    // The pod template mounts version 3 alone: the mount of version 1, written when the
    // Deployment was created, is gone with the apply of version 3.
    let deployment = ns.api::<Deployment>().get("upd-serving").await.unwrap();
    let mounts: Vec<String> = deployment.spec.unwrap().template.spec.unwrap().containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| m.name == "model")
        .map(|m| m.mount_path.clone())
        .collect();
    assert_eq!(mounts, ["/models/upd/3"]);
}

#[tokio::test]
async fn an_invalid_spec_fails_naming_the_field_and_creates_nothing() {
    let ns = setup("invalid").await;
    ns.apply_yaml(&model_yaml("bad", "  storageSize: \"0\"\n"));
    let models = ns.api::<MLModel>();
    let m = support::wait_for(&models, "bad", TIMEOUT, |m| {
        m.status.as_ref().and_then(|s| s.phase) == Some(Phase::Failed)
    })
    .await;
    let status = m.status.unwrap();
    assert_eq!(status.last_failure.as_ref().unwrap().reason, "InvalidSpec");
    assert!(status.message.unwrap().contains("spec.storageSize"));
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "InvalidSpec"));
    assert!(
        ns.api::<PersistentVolumeClaim>()
            .get_opt("bad-model")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        ns.api::<Job>()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn pods_satisfy_the_restricted_pod_security_standard() {
    operator::shared();
    let ns = support::restricted_namespace("restricted").await;
    ns.apply_yaml(&model_yaml("psa", ""));
    let models = ns.api::<MLModel>();
    support::wait_for(&models, "psa", TIMEOUT, is_ready).await;
}

#[tokio::test]
async fn unschedulable_pods_fail_the_model_with_the_schedulers_reason() {
    let ns = setup("gpu").await;
    let sample =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/samples/gpu-too-big.yaml")).unwrap();
    ns.apply_yaml(&sample);
    let models = ns.api::<MLModel>();
    let m = support::wait_for(&models, "resnet-gpu", TIMEOUT, |m| {
        m.status.as_ref().and_then(|s| s.phase) == Some(Phase::Failed)
    })
    .await;
    let failure = m.status.unwrap().last_failure.unwrap();
    assert_eq!(failure.reason, "Unschedulable");
    assert!(
        failure.message.contains("Insufficient nvidia.com/gpu"),
        "{}",
        failure.message
    );
    let _: Api<Pod> = ns.api();
}

#[tokio::test]
async fn deletion_forces_a_stuck_child_and_says_so() {
    let ns = setup("stuck").await;
    ns.apply_yaml(&model_yaml("stuck", ""));
    let models = ns.api::<MLModel>();
    support::wait_for(&models, "stuck", TIMEOUT, is_ready).await;
    // Someone else's finalizer holds the claim: deletion must not hang on it.
    let hold = serde_json::json!({"metadata": {"finalizers": ["example.com/hold", "kubernetes.io/pvc-protection"]}});
    let pvcs = ns.api::<PersistentVolumeClaim>();
    pvcs.patch("stuck-model", &PatchParams::default(), &Patch::Merge(&hold))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    models.delete("stuck", &DeleteParams::default()).await.unwrap();
    let m = support::wait_for(&models, "stuck", TIMEOUT, |m| {
        m.status.as_ref().and_then(|s| s.phase) == Some(Phase::Terminating)
    })
    .await;
    assert!(
        m.status
            .unwrap()
            .message
            .unwrap()
            .contains("persistentvolumeclaim/stuck-model")
    );
    // The shared operator forces after 20 s.
    support::wait_for_deletion(&models, "stuck", Duration::from_secs(45)).await;
    eprintln!("deletion with a stuck child took {:?}", started.elapsed());
    support::wait_for_deletion(&pvcs, "stuck-model", Duration::from_secs(30)).await;
    let forced = events_for(&ns, "stuck")
        .await
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("ForcedDeletion"));
    let note = forced.and_then(|e| e.note).unwrap_or_default();
    assert!(
        note.contains("stuck-model"),
        "a Warning Event names what was forced: {note:?}"
    );
}

/// Nodes of the live pods matching `selector`, by pod name.
async fn pod_nodes(ns: &TestNamespace, selector: &str) -> Vec<(String, String)> {
    ns.api::<Pod>()
        .list(&ListParams::default().labels(selector))
        .await
        .expect("list pods")
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| Some((p.name_any(), p.spec?.node_name?)))
        .collect()
}

/// With a `ReadWriteOnce` volume (the default) every pod that mounts it shares one node: the
/// serving replicas, and the download Job of a new version, which joins them there. A
/// `ReadWriteMany` volume carries no such rule.
#[tokio::test]
async fn pods_of_a_single_node_volume_share_its_node() {
    let ns = setup("rwo").await;
    ns.apply_yaml(&model_yaml("rwo", "  replicas: 3\n"));
    let models = ns.api::<MLModel>();
    support::wait_for(&models, "rwo", TIMEOUT, is_ready).await;
    let serving = pod_nodes(&ns, "app.kubernetes.io/component=serving").await;
    assert_eq!(serving.len(), 3, "{serving:?}");
    let node = serving[0].1.clone();
    assert!(serving.iter().all(|(_, n)| *n == node), "{serving:?}");

    models
        .patch(
            "rwo",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": { "modelURL": "https://models.example.com/rwo/v2.tar.gz" } })),
        )
        .await
        .unwrap();
    let download = support::poll_until("the new version's download pod scheduled", TIMEOUT, || {
        let ns = &ns;
        async move {
            let pods = pod_nodes(
                ns,
                "app.kubernetes.io/component=download,mlmodel.oda.tmforum.org/version=2",
            )
            .await;
            (!pods.is_empty()).then_some(pods)
        }
    })
    .await;
    assert!(download.iter().all(|(_, n)| *n == node), "{download:?} on {node}");
    support::wait_for(&models, "rwo", TIMEOUT, is_ready).await;
    let serving = pod_nodes(&ns, "app.kubernetes.io/component=serving").await;
    assert!(serving.iter().all(|(_, n)| *n == node), "{serving:?} on {node}");

    ns.apply_yaml(&model_yaml(
        "rwx",
        "  replicas: 3\n  storage:\n    accessModes: [ReadWriteMany]\n",
    ));
    let deployment = support::wait_for(&ns.api::<Deployment>(), "rwx-serving", TIMEOUT, |_| true).await;
    let affinity = deployment.spec.and_then(|s| s.template.spec).and_then(|s| s.affinity);
    assert_eq!(affinity, None);
}

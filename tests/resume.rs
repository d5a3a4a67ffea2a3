//! Resume after a crash: the operator is SIGKILLed while models sit in each phase; a new
//! process continues every model from what the cluster shows, with no duplicate child. Then a
//! graceful SIGTERM stops it within a bounded time.
//!
//! One test in this binary: it runs its own operator processes, and two operators without
//! leader election must never run at once.

mod kubelet;
mod operator;
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use mlmodel_operator::api::{MLModel, Phase};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

fn phase(m: &MLModel) -> Option<Phase> {
    m.status.as_ref().and_then(|s| s.phase)
}

async fn count<K>(api: &Api<K>, model: &str) -> usize
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let lp = ListParams::default().labels(&format!("mlmodel.oda.tmforum.org/name={model}"));
    api.list(&lp)
        .await
        .expect("list")
        .items
        .iter()
        .filter(|o| o.meta().deletion_timestamp.is_none())
        .count()
}

#[tokio::test]
async fn a_killed_operator_resumes_every_model_from_the_cluster() {
    let slow = [("UNSCHEDULABLE_GRACE_SECONDS", "300")];
    let mut first = operator::start("first", &slow);
    first.wait_ready(TIMEOUT);
    let ns = support::namespace("resume").await;
    let client = ns.client.clone();

    // A storage class nobody provisions: the model waits in CreatingStorage.
    let class = format!("unprovisioned-{}", ns.name);
    let sc: StorageClass = serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": class}, "provisioner": "example.com/none"
    }))
    .unwrap();
    Api::<StorageClass>::all(client.clone())
        .create(&PostParams::default(), &sc)
        .await
        .unwrap();

    let manifests = [
        (
            "storage",
            format!("  modelURL: https://models.example.com/s.tar.gz\n  storage:\n    storageClassName: {class}\n"),
        ),
        ("download", format!("  modelURL: {}\n", kubelet::HELD_URL)),
        (
            "serving",
            format!(
                "  modelURL: https://models.example.com/v.tar.gz\n  framework: custom\n  runtime:\n    image: {}\n",
                kubelet::HELD_IMAGE
            ),
        ),
    ];
    for (name, spec) in &manifests {
        ns.apply_yaml(&format!(
            "apiVersion: oda.tmforum.org/v1beta1\nkind: MLModel\nmetadata:\n  name: {name}\nspec:\n{spec}"
        ));
    }
    let models = ns.api::<MLModel>();
    let expected = BTreeMap::from([
        ("storage", Phase::CreatingStorage),
        ("download", Phase::Downloading),
        ("serving", Phase::Serving),
    ]);
    for (name, p) in &expected {
        support::wait_for(&models, name, TIMEOUT, |m| phase(m) == Some(*p)).await;
    }

    first.kill();
    let second = operator::start("second", &slow);
    second.wait_ready(TIMEOUT);
    // After the restart each model is still where it was: nothing lost, nothing reset.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (name, p) in &expected {
        let m = models.get(name).await.unwrap();
        assert_eq!(phase(&m), Some(*p), "{name} after the restart");
    }

    // Let each model go on, as the cluster would have.
    let pv: PersistentVolume = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": format!("pv-{}", ns.name)},
        "spec": {
            "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
            "storageClassName": class, "persistentVolumeReclaimPolicy": "Delete",
            "hostPath": {"path": format!("/tmp/hostpath_pv/{}", ns.name)},
            "claimRef": {"namespace": ns.name, "name": "storage-model"}
        }
    }))
    .unwrap();
    Api::<PersistentVolume>::all(client.clone())
        .create(&PostParams::default(), &pv)
        .await
        .unwrap();
    let pods: Api<Pod> = ns.api();
    for pod in kubelet::pods(
        &pods,
        "mlmodel.oda.tmforum.org/name=download,app.kubernetes.io/component=download",
        1,
    )
    .await
    {
        kubelet::terminated(&pods, &pod, 0, "").await;
    }
    for pod in kubelet::pods(
        &pods,
        "mlmodel.oda.tmforum.org/name=serving,app.kubernetes.io/component=serving",
        1,
    )
    .await
    {
        kubelet::ready(&pods, &pod).await;
    }
    for name in expected.keys() {
        support::wait_for(&models, name, TIMEOUT, |m| phase(m) == Some(Phase::Ready)).await;
    }
    for name in expected.keys() {
        assert_eq!(count(&ns.api::<Job>(), name).await, 1, "{name}: one Job");
        assert_eq!(count(&ns.api::<Deployment>(), name).await, 1, "{name}: one Deployment");
        assert_eq!(count(&ns.api::<Service>(), name).await, 1, "{name}: one Service");
        assert_eq!(
            count(&ns.api::<PersistentVolumeClaim>(), name).await,
            1,
            "{name}: one PVC"
        );
    }

    // Graceful shutdown: actors stop, the process exits in bounded time.
    let mut second = second;
    let took = second.terminate(Duration::from_secs(25));
    eprintln!("SIGTERM to exit: {took:?}");
    assert!(second.logs().contains("shutting down"));
    let _ = Api::<StorageClass>::all(client.clone())
        .delete(&class, &Default::default())
        .await;
    let _ = Api::<PersistentVolume>::all(client)
        .delete(&pv.name_any(), &Default::default())
        .await;
}

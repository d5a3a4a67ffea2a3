//! Smoke tests of the local test cluster itself: the controllers, the scheduler, kwok's
//! simulated pod lifecycle, garbage collection and volume provisioning all work.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Node, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use support::{FAIL_LABEL, NODES, TERMINATION_MESSAGE_ANNOTATION, wait_for, wait_for_deletion};

const TIMEOUT: Duration = Duration::from_secs(60);

fn job(name: &str, labels: serde_json::Value, annotations: serde_json::Value) -> Job {
    serde_json::from_value(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": { "name": name },
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": { "labels": labels, "annotations": annotations },
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{ "name": "main", "image": "busybox:1.36", "command": ["true"] }]
                }
            }
        }
    }))
    .expect("valid Job")
}

fn job_condition<'a>(job: &'a Job, type_: &str) -> Option<&'a k8s_openapi::api::batch::v1::JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

#[tokio::test]
async fn job_with_succeeding_pod_completes() {
    let ns = support::namespace("smoke-job-ok").await;
    let jobs = ns.api::<Job>();
    jobs.create(&PostParams::default(), &job("ok", json!({}), json!({})))
        .await
        .expect("create Job");

    let done = wait_for(&jobs, "ok", TIMEOUT, |j| {
        job_condition(j, "Complete").is_some() || job_condition(j, "Failed").is_some()
    })
    .await;
    assert!(
        job_condition(&done, "Complete").is_some(),
        "Job did not complete: {:?}",
        done.status
    );
    assert_eq!(done.status.as_ref().and_then(|s| s.succeeded), Some(1));
}

#[tokio::test]
async fn job_with_failing_pod_fails_with_backoff_limit_exceeded() {
    let ns = support::namespace("smoke-job-fail").await;
    let jobs = ns.api::<Job>();
    let message = "download failed: checksum mismatch";
    jobs.create(
        &PostParams::default(),
        &job(
            "fail",
            json!({ FAIL_LABEL: "true" }),
            json!({ TERMINATION_MESSAGE_ANNOTATION: message }),
        ),
    )
    .await
    .expect("create Job");

    let done = wait_for(&jobs, "fail", TIMEOUT, |j| {
        job_condition(j, "Complete").is_some() || job_condition(j, "Failed").is_some()
    })
    .await;
    let failed = job_condition(&done, "Failed").unwrap_or_else(|| panic!("Job did not fail: {:?}", done.status));
    assert_eq!(failed.reason.as_deref(), Some("BackoffLimitExceeded"));

    let pods = ns
        .api::<Pod>()
        .list(&ListParams::default().labels("batch.kubernetes.io/job-name=fail"))
        .await
        .expect("list pods");
    assert_eq!(pods.items.len(), 1, "pods: {:?}", support::names(&pods.items));
    let status = pods.items[0].status.as_ref().expect("pod status");
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    let terminated = status
        .container_statuses
        .as_ref()
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .unwrap_or_else(|| panic!("no terminated container state: {status:?}"));
    assert_eq!(terminated.exit_code, 1);
    assert_eq!(terminated.reason.as_deref(), Some("Error"));
    assert_eq!(terminated.message.as_deref(), Some(message));
}

#[tokio::test]
async fn deployment_gets_ready_pods_on_fake_nodes_and_is_garbage_collected() {
    let ns = support::namespace("smoke-deploy").await;
    let deployments = ns.api::<Deployment>();
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": {
                    "containers": [{
                        "name": "web",
                        "image": "nginx:1.27",
                        "resources": { "requests": { "cpu": "100m", "memory": "64Mi" } }
                    }]
                }
            }
        }
    }))
    .expect("valid Deployment");
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create Deployment");

    wait_for(&deployments, "web", TIMEOUT, |d| {
        d.status.as_ref().and_then(|s| s.ready_replicas) == Some(2)
    })
    .await;

    let pods = ns
        .api::<Pod>()
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("list pods");
    let running: Vec<&Pod> = pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    assert_eq!(running.len(), 2, "pods: {:?}", support::names(&pods.items));
    for pod in running {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or_default();
        assert!(
            node.starts_with("kwok-node-"),
            "pod {:?} on node {node:?}",
            pod.metadata.name
        );
        assert_eq!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Running"));
    }

    let replica_sets = ns
        .api::<ReplicaSet>()
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("list ReplicaSets");
    assert_eq!(replica_sets.items.len(), 1);
    let rs_name = replica_sets.items[0].metadata.name.clone().expect("RS name");

    deployments
        .delete("web", &DeleteParams::background())
        .await
        .expect("delete Deployment");
    wait_for_deletion(&ns.api::<ReplicaSet>(), &rs_name, TIMEOUT).await;
    support::poll_until("the Deployment's pods to be deleted", TIMEOUT, || async {
        let pods = ns
            .api::<Pod>()
            .list(&ListParams::default().labels("app=web"))
            .await
            .expect("list pods");
        pods.items.is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn dependent_is_garbage_collected_with_its_owner() {
    let ns = support::namespace("smoke-gc").await;
    let config_maps = ns.api::<ConfigMap>();
    let owner = config_maps
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: kube::api::ObjectMeta {
                    name: Some("owner".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("create owner");
    let dependent: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "dependent",
            "ownerReferences": [{
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "name": "owner",
                "uid": owner.metadata.uid.clone().expect("owner uid"),
            }]
        },
        "data": { "k": "v" }
    }))
    .expect("valid ConfigMap");
    config_maps
        .create(&PostParams::default(), &dependent)
        .await
        .expect("create dependent");

    config_maps
        .delete("owner", &DeleteParams::background())
        .await
        .expect("delete owner");
    wait_for_deletion(&config_maps, "dependent", TIMEOUT).await;
}

#[tokio::test]
async fn pvc_binds_with_the_default_class_and_its_pod_is_scheduled() {
    let ns = support::namespace("smoke-pvc").await;
    let classes = Api::<StorageClass>::all(ns.client.clone());
    let standard = classes.get("standard").await.expect("StorageClass standard");
    assert_eq!(
        standard
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("storageclass.kubernetes.io/is-default-class"))
            .map(String::as_str),
        Some("true")
    );

    let claims = ns.api::<PersistentVolumeClaim>();
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": { "name": "data" },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": { "requests": { "storage": "1Gi" } }
        }
    }))
    .expect("valid PVC");
    claims.create(&PostParams::default(), &claim).await.expect("create PVC");
    let bound = wait_for(&claims, "data", TIMEOUT, |c| {
        c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
    })
    .await;
    assert_eq!(
        bound.spec.as_ref().and_then(|s| s.storage_class_name.as_deref()),
        Some("standard")
    );

    let pods = ns.api::<Pod>();
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "uses-data" },
        "spec": {
            "containers": [{
                "name": "main",
                "image": "busybox:1.36",
                "volumeMounts": [{ "name": "data", "mountPath": "/data" }]
            }],
            "volumes": [{ "name": "data", "persistentVolumeClaim": { "claimName": "data" } }]
        }
    }))
    .expect("valid Pod");
    pods.create(&PostParams::default(), &pod).await.expect("create Pod");
    let scheduled = wait_for(&pods, "uses-data", TIMEOUT, |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await;
    let node = scheduled
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default();
    assert!(node.starts_with("kwok-node-"), "scheduled on {node:?}");
}

#[tokio::test]
async fn fake_nodes_are_ready_with_gpus() {
    let cluster = support::cluster();
    let out = cluster.kubectl_ok(&["get", "nodes", "--no-headers"]);
    for name in NODES {
        let line = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("node {name} missing from `kubectl get nodes`:\n{out}"));
        assert_eq!(
            line.split_whitespace().nth(1),
            Some("Ready"),
            "`kubectl get nodes`:\n{out}"
        );
    }

    let nodes = Api::<Node>::all(cluster.client().await);
    for name in NODES {
        let node = nodes.get(name).await.expect("get node");
        let allocatable: BTreeMap<String, String> = node
            .status
            .and_then(|s| s.allocatable)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        assert_eq!(allocatable.get("nvidia.com/gpu").map(String::as_str), Some("1"));
        assert_eq!(allocatable.get("cpu").map(String::as_str), Some("32"));
    }
    support::poll_until("the fake nodes to have no taints", TIMEOUT, || async {
        let list = nodes
            .list(&ListParams::default().labels("type=kwok"))
            .await
            .expect("list nodes");
        list.items
            .iter()
            .all(|n| {
                n.spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .is_none_or(Vec::is_empty)
            })
            .then_some(())
    })
    .await;
}

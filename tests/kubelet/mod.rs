//! Plays the kubelet for pods kwok leaves alone: pods whose image or arguments mention the
//! host `kubelet.test` (see `tests/cluster/manifests/kwok/pod-ready.yaml`). Tests write the
//! pod statuses a real kubelet would write for image pull errors, crash loops and failures.
#![allow(dead_code)]

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

/// An image kwok never starts.
pub const HELD_IMAGE: &str = "kubelet.test/model-server:1";
/// A model URL whose download pod kwok never runs.
pub const HELD_URL: &str = "http://kubelet.test/models/held.tar.gz";

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

async fn patch(pods: &Api<Pod>, name: &str, status: Value) {
    let patch = json!({ "status": status });
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("patching status of pod {name}: {e}"));
}

fn container(pod: &Pod) -> (String, String) {
    let c = &pod.spec.as_ref().expect("pod spec").containers[0];
    (c.name.clone(), c.image.clone().unwrap_or_default())
}

fn conditions(ready: bool) -> Value {
    let s = if ready { "True" } else { "False" };
    json!([
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": now()},
        {"type": "Initialized", "status": "True", "lastTransitionTime": now()},
        {"type": "ContainersReady", "status": s, "lastTransitionTime": now()},
        {"type": "Ready", "status": s, "lastTransitionTime": now()},
    ])
}

/// The pods of `selector`, once at least `count` of them exist and are scheduled.
pub async fn pods(api: &Api<Pod>, selector: &str, count: usize) -> Vec<Pod> {
    let lp = ListParams::default().labels(selector);
    let start = std::time::Instant::now();
    loop {
        let list: Vec<Pod> = api
            .list(&lp)
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
            .collect();
        if list.len() >= count {
            return list;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "fewer than {count} scheduled pods for {selector}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The container runs and is ready.
pub async fn ready(api: &Api<Pod>, pod: &Pod) {
    let (name, image) = container(pod);
    let status = json!({
        "phase": "Running",
        "conditions": conditions(true),
        "containerStatuses": [{
            "name": name, "image": image, "imageID": "", "ready": true, "started": true, "restartCount": 0,
            "state": {"running": {"startedAt": now()}}
        }]
    });
    patch(api, &pod.name_any(), status).await;
}

/// The container is waiting for `reason` (e.g. `ImagePullBackOff`).
pub async fn waiting(api: &Api<Pod>, pod: &Pod, reason: &str, message: &str) {
    let (name, image) = container(pod);
    let status = json!({
        "phase": "Pending",
        "conditions": conditions(false),
        "containerStatuses": [{
            "name": name, "image": image, "imageID": "", "ready": false, "started": false, "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": message}}
        }]
    });
    patch(api, &pod.name_any(), status).await;
}

/// The container crash-loops: `restarts` restarts, the last one terminated with `reason`
/// and `exit_code`.
pub async fn crash_looping(api: &Api<Pod>, pod: &Pod, restarts: i32, reason: &str, exit_code: i32, message: &str) {
    let (name, image) = container(pod);
    let status = json!({
        "phase": "Running",
        "conditions": conditions(false),
        "containerStatuses": [{
            "name": name, "image": image, "imageID": "", "ready": false, "started": false, "restartCount": restarts,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
            "lastState": {"terminated": {"exitCode": exit_code, "reason": reason, "message": message,
                "startedAt": now(), "finishedAt": now()}}
        }]
    });
    patch(api, &pod.name_any(), status).await;
}

/// The container ran to completion with `exit_code`, leaving `message` in its termination log.
pub async fn terminated(api: &Api<Pod>, pod: &Pod, exit_code: i32, message: &str) {
    let (name, image) = container(pod);
    let phase = if exit_code == 0 { "Succeeded" } else { "Failed" };
    let status = json!({
        "phase": phase,
        "conditions": conditions(false),
        "containerStatuses": [{
            "name": name, "image": image, "imageID": "", "ready": false, "started": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": exit_code, "reason": if exit_code == 0 { "Completed" } else { "Error" },
                "message": message, "startedAt": now(), "finishedAt": now()}}
        }]
    });
    patch(api, &pod.name_any(), status).await;
}

/// The kubelet's Warning Event about the pod (e.g. `FailedMount`), as it records one: a
/// core/v1 Event about the pod, with its uid, from component `kubelet`.
pub async fn warning_event(client: kube::Client, pod: &Pod, reason: &str, message: &str) {
    use k8s_openapi::api::core::v1::Event;
    let namespace = pod.namespace().expect("a namespaced pod");
    let events: Api<Event> = Api::namespaced(client, &namespace);
    let event: Event = serde_json::from_value(json!({
        "metadata": { "generateName": format!("{}.", pod.name_any()) },
        "involvedObject": {
            "kind": "Pod", "apiVersion": "v1", "namespace": namespace,
            "name": pod.name_any(), "uid": pod.uid(),
        },
        "reason": reason,
        "message": message,
        "type": "Warning",
        "source": { "component": "kubelet", "host": pod.spec.as_ref().and_then(|s| s.node_name.clone()) },
        "firstTimestamp": now(),
        "lastTimestamp": now(),
        "count": 1,
    }))
    .expect("an Event");
    events
        .create(&Default::default(), &event)
        .await
        .unwrap_or_else(|e| panic!("recording {reason} for pod {}: {e}", pod.name_any()));
}

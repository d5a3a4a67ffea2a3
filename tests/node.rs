//! Smoke tests of the local cluster's real node: containers really run there, with real
//! volumes, probes, networking, pull errors and termination messages, so what the operator
//! builds on (download Jobs, model servers, Services) is tested against a real kubelet.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, ContainerStateWaiting, Pod, Service};
use kube::api::PostParams;
use serde_json::json;
use support::{TestNamespace, real_node, wait_for};

const TIMEOUT: Duration = Duration::from_secs(120);
const BUSYBOX: &str = "docker.io/library/busybox:1.35";
const PYTHON: &str = "docker.io/seldonio/mlserver:1.7.1";

fn operator_image() -> String {
    format!("docker.io/library/mlmodel-operator:{}", env!("CARGO_PKG_VERSION"))
}

/// The securityContext the `restricted` Pod Security Standard asks of every container.
fn restricted_context(uid: i64) -> serde_json::Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": uid,
        "runAsGroup": uid,
        "allowPrivilegeEscalation": false,
        "capabilities": { "drop": ["ALL"] },
        "seccompProfile": { "type": "RuntimeDefault" }
    })
}

fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("valid object")
}

fn job_finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
}

fn job_completed(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Complete" && c.status == "True"))
}

fn terminated(pod: &Pod) -> Option<&ContainerStateTerminated> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .terminated
        .as_ref()
}

fn waiting(pod: &Pod) -> Option<&ContainerStateWaiting> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .waiting
        .as_ref()
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref()
}

/// Creates a pod and waits until its first container terminated; returns the pod.
async fn run_pod(ns: &TestNamespace, pod: serde_json::Value) -> Pod {
    let pods = ns.api::<Pod>();
    let pod: Pod = from_json(pod);
    let name = pod.metadata.name.clone().expect("named pod");
    pods.create(&PostParams::default(), &pod).await.expect("create Pod");
    wait_for(&pods, &name, TIMEOUT, |p| terminated(p).is_some()).await
}

/// `kubectl logs` of a pod.
fn logs(ns: &TestNamespace, pod: &str) -> String {
    let out = ns
        .kubectl()
        .args(["logs", pod])
        .stdin(Stdio::null())
        .output()
        .expect("run kubectl logs");
    assert!(
        out.status.success(),
        "kubectl logs {pod}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn a_restricted_download_job_writes_a_fresh_claim_as_user_65532() {
    let ns = support::node_namespace("node-volume", true).await;
    let node = real_node();
    let body = format!("model bytes for {}\n", ns.name);
    let dir = node.store_dir.join(&ns.name);
    std::fs::create_dir_all(&dir).expect("store dir");
    std::fs::write(dir.join("model.txt"), &body).expect("store file");

    ns.apply_yaml(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\n\
         spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 16Mi}}}\n",
    );
    let url = format!("{}/{}/model.txt", node.store_url, ns.name);
    let jobs = ns.api::<Job>();
    let job: Job = from_json(json!({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": { "name": "download" },
        "spec": { "backoffLimit": 0, "template": { "spec": {
            "restartPolicy": "Never",
            "securityContext": { "fsGroup": 65532 },
            "containers": [{
                "name": "download", "image": operator_image(), "imagePullPolicy": "Never",
                "args": ["download", "--url", url, "--dest", "/models", "--model-name", "smoke", "--version", "1"],
                "securityContext": restricted_context(65532),
                "volumeMounts": [{ "name": "data", "mountPath": "/models" }]
            }],
            "volumes": [{ "name": "data", "persistentVolumeClaim": { "claimName": "data" } }]
        }}}
    }));
    jobs.create(&PostParams::default(), &job)
        .await
        .expect("create Job (restricted namespace)");
    let done = wait_for(&jobs, "download", TIMEOUT, job_finished).await;
    assert!(job_completed(&done), "the download Job failed: {:?}", done.status);

    // What the Job wrote, read back by another non-root pod from the same claim.
    let reader = run_pod(
        &ns,
        json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "reader" },
            "spec": {
                "restartPolicy": "Never",
                "containers": [{
                    "name": "read", "image": BUSYBOX, "imagePullPolicy": "Never",
                    "command": ["sh", "-c", "id -u; stat -c %u /models/smoke/1/model.txt; cat /models/smoke/1/model.txt"],
                    "securityContext": restricted_context(65532),
                    "volumeMounts": [{ "name": "data", "mountPath": "/models", "readOnly": true }]
                }],
                "volumes": [{ "name": "data", "persistentVolumeClaim": { "claimName": "data", "readOnly": true } }]
            }
        }),
    )
    .await;
    assert_eq!(
        node_of(&reader),
        Some(node.name.as_str()),
        "pods meant to run must land on the real node"
    );
    assert_eq!(
        terminated(&reader).map(|t| t.exit_code),
        Some(0),
        "reader: {:?}",
        reader.status
    );
    let out = logs(&ns, "reader");
    assert_eq!(out, format!("65532\n65532\n{body}"), "uid, file owner, content");
}

#[tokio::test]
async fn a_probed_deployment_is_reached_through_its_cluster_ip_from_host_and_pods() {
    let ns = support::node_namespace("node-service", true).await;
    let page = format!("hello from {}", ns.name);
    let deployment: Deployment = from_json(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": "web" },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": "web" } },
            "template": { "metadata": { "labels": { "app": "web" } }, "spec": {
                // httpd as PID 1 ignores SIGTERM: do not hold the namespace's deletion for 30 s.
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "web", "image": BUSYBOX, "imagePullPolicy": "Never",
                    "command": ["sh", "-c", format!("mkdir -p /tmp/www && echo '{page}' > /tmp/www/index.html && touch /tmp/www/ready && exec httpd -f -p 8080 -h /tmp/www")],
                    "ports": [{ "containerPort": 8080 }],
                    "readinessProbe": { "httpGet": { "path": "/ready", "port": 8080 }, "periodSeconds": 1 },
                    "securityContext": restricted_context(65532)
                }]
            }}
        }
    }));
    let deployments = ns.api::<Deployment>();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create Deployment");
    ns.apply_yaml(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n\
         spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n",
    );
    wait_for(&deployments, "web", TIMEOUT, |d| {
        d.status.as_ref().and_then(|s| s.ready_replicas) == Some(1)
    })
    .await;
    let service = ns.api::<Service>().get("web").await.expect("get Service");
    let ip = service.spec.and_then(|s| s.cluster_ip).expect("a ClusterIP");
    let url = format!("http://{ip}/index.html");

    // From the host, through kube-proxy's rules (the endpoint may take a moment to be programmed).
    let from_host = support::poll_until("the Service answering from the host", TIMEOUT, || {
        let url = url.clone();
        async move {
            let out = Command::new("curl")
                .args(["-fsS", "--max-time", "2", &url])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        }
    })
    .await;
    assert_eq!(from_host.trim(), page);

    // From another pod on the node.
    let client = run_pod(
        &ns,
        json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "client" },
            "spec": { "restartPolicy": "Never", "containers": [{
                "name": "client", "image": BUSYBOX, "imagePullPolicy": "Never",
                // busybox's own HTTP client; its body after the header's blank line.
                "command": ["sh", "-c", format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc {ip} 80 | tr -d '\\r' | sed '1,/^$/d'")],
                "securityContext": restricted_context(65532)
            }]}
        }),
    )
    .await;
    assert_eq!(
        terminated(&client).map(|t| t.exit_code),
        Some(0),
        "client pod: {:?}",
        client.status
    );
    assert_eq!(logs(&ns, "client").trim(), page);
}

#[tokio::test]
async fn a_failing_container_leaves_its_termination_message() {
    let ns = support::node_namespace("node-exit", true).await;
    let container = |name: &str, script: &str, policy: &str| {
        json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name },
            "spec": { "restartPolicy": "Never", "containers": [{
                "name": "main", "image": BUSYBOX, "imagePullPolicy": "Never",
                "command": ["sh", "-c", script],
                "terminationMessagePolicy": policy,
                "securityContext": restricted_context(65532)
            }]}
        })
    };
    let written = run_pod(
        &ns,
        container(
            "written",
            "echo 'DiskFull: no space left on /models' > /dev/termination-log; exit 3",
            "File",
        ),
    )
    .await;
    let t = terminated(&written).expect("terminated");
    assert_eq!((t.exit_code, t.reason.as_deref()), (3, Some("Error")));
    assert_eq!(t.message.as_deref(), Some("DiskFull: no space left on /models\n"));

    let from_logs = run_pod(
        &ns,
        container(
            "from-logs",
            "echo loading; echo 'model failed to load: bad header'; exit 1",
            "FallbackToLogsOnError",
        ),
    )
    .await;
    let t = terminated(&from_logs).expect("terminated");
    assert_eq!(t.exit_code, 1);
    assert_eq!(
        t.message.as_deref(),
        Some("loading\nmodel failed to load: bad header\n")
    );
}

#[tokio::test]
async fn a_missing_image_ends_in_the_kubelets_pull_error() {
    let ns = support::node_namespace("node-pull", true).await;
    let pods = ns.api::<Pod>();
    let pod: Pod = from_json(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "missing" },
        "spec": { "containers": [{
            "name": "main", "image": "registry.invalid/model-server:1", "imagePullPolicy": "IfNotPresent",
            "securityContext": restricted_context(65532)
        }]}
    }));
    pods.create(&PostParams::default(), &pod).await.expect("create Pod");
    let pod = wait_for(&pods, "missing", TIMEOUT, |p| {
        waiting(p).is_some_and(|w| matches!(w.reason.as_deref(), Some("ErrImagePull" | "ImagePullBackOff")))
    })
    .await;
    let w = waiting(&pod).expect("waiting");
    let message = w.message.as_deref().unwrap_or_default();
    assert!(
        message.contains("registry.invalid/model-server:1"),
        "the kubelet's message names the image: {message}"
    );
    // No registry is configured: the pull goes to the configured nowhere, never off the machine.
    assert!(
        w.reason.as_deref() == Some("ImagePullBackOff") || message.contains("127.0.0.1:9"),
        "the pull must not leave the machine: {message}"
    );
}

/// Reads lines of a child's stdout until one contains `needle`; returns it. The rest of its
/// output is drained, so the child never writes to a closed pipe.
fn read_until(child: &mut Child, needle: &str, timeout: Duration) -> String {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted = needle.to_owned();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(&wanted) {
                let _ = tx.send(line);
            }
        }
    });
    rx.recv_timeout(timeout)
        .unwrap_or_else(|_| panic!("no line containing {needle:?} within {timeout:?}"))
}

#[tokio::test]
async fn kubectl_logs_exec_and_port_forward_reach_the_node() {
    let ns = support::node_namespace("node-kubectl", true).await;
    let pods = ns.api::<Pod>();
    let pod: Pod = from_json(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "shell" },
        "spec": { "terminationGracePeriodSeconds": 1, "containers": [{
            "name": "main", "image": BUSYBOX, "imagePullPolicy": "Never",
            "command": ["sh", "-c", "echo started; mkdir -p /tmp/www && echo forwarded > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"],
            "securityContext": restricted_context(65532)
        }]}
    }));
    pods.create(&PostParams::default(), &pod).await.expect("create Pod");
    wait_for(&pods, "shell", TIMEOUT, |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await;

    assert_eq!(logs(&ns, "shell"), "started\n");

    let out = ns
        .kubectl()
        .args(["exec", "shell", "--", "id", "-u"])
        .stdin(Stdio::null())
        .output()
        .expect("kubectl exec");
    assert!(
        out.status.success(),
        "kubectl exec: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "65532\n");

    let mut forward = ns
        .kubectl()
        .args(["port-forward", "pod/shell", ":8080"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl port-forward");
    // "Forwarding from 127.0.0.1:41235 -> 8080"
    let line = read_until(&mut forward, "Forwarding from 127.0.0.1:", Duration::from_secs(30));
    let port = line
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a local port")
        .to_owned();
    let started = Instant::now();
    let body = loop {
        let out = Command::new("curl")
            .args([
                "-fsS",
                "--max-time",
                "5",
                &format!("http://127.0.0.1:{port}/index.html"),
            ])
            .output()
            .expect("curl");
        if out.status.success() || started.elapsed() > Duration::from_secs(20) {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let _ = forward.kill();
    let _ = forward.wait();
    assert_eq!(body, "forwarded\n");
}

#[tokio::test]
async fn pods_reach_the_api_server_and_the_store_and_nothing_beyond() {
    let ns = support::node_namespace("node-network", false).await;
    let node = real_node();
    let dir = node.store_dir.join(&ns.name);
    std::fs::create_dir_all(&dir).expect("store dir");
    std::fs::write(dir.join("ping.txt"), "pong").expect("store file");
    // The API server through the `kubernetes` Service, verified against the cluster CA with the
    // pod's own token; the model store at the host's bridge address; a name on the internet
    // fails at once (no DNS answers, nothing is routed off the bridge).
    let script = format!(
        r#"
import json, ssl, time, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
req = urllib.request.Request("https://10.96.0.1/version", headers={{"Authorization": "Bearer " + open(sa + "/token").read()}})
print("api", json.load(urllib.request.urlopen(req, context=ctx, timeout=10))["gitVersion"])
print("store", urllib.request.urlopen("{store}/{ns}/ping.txt", timeout=10).read().decode())
start = time.monotonic()
try:
    urllib.request.urlopen("http://models.example.com/model.tar.gz", timeout=30)
    print("internet reachable")
except Exception as e:
    print("internet unreachable", type(e).__name__, round(time.monotonic() - start) < 5)
"#,
        store = node.store_url,
        ns = ns.name
    );
    let pod = run_pod(
        &ns,
        json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "net" },
            "spec": { "restartPolicy": "Never", "containers": [{
                "name": "main", "image": PYTHON, "imagePullPolicy": "Never",
                "command": ["python3", "-c", script]
            }]}
        }),
    )
    .await;
    let out = logs(&ns, "net");
    assert_eq!(terminated(&pod).map(|t| t.exit_code), Some(0), "pod failed: {out}");
    let version = support::cluster()
        .kubectl_ok(&["version", "-o", "json"])
        .parse::<serde_json::Value>()
        .ok()
        .and_then(|v| v["serverVersion"]["gitVersion"].as_str().map(str::to_owned))
        .expect("server version");
    assert_eq!(
        out,
        format!("api {version}\nstore pong\ninternet unreachable URLError True\n"),
        "what the pod saw"
    );
}

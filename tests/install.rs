//! The operator installed in the cluster the way platform teams install it, running on the
//! real node from its own image: `kubectl apply -k` of an overlay of `deploy/` that only sets
//! the image, and the Helm chart in `deploy/helm/mlmodel-operator` (lint, template, install,
//! upgrade, uninstall). The chart renders exactly what `deploy/` renders, Helm's labels
//! aside, and refuses bad values naming them.
//!
//! `cargo test --test install`

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use mlmodel_operator::api::MLModel;
use serde::Deserialize;
use serde_yaml::Value;
use support::iris::{answer_of, answered, artifact, model_yaml, ready_at_generation, service_address};
use support::{TestCluster, TestNamespace, node_cluster, poll_until, wait_for};

/// The operator's image as the test bed builds it, given the way the README says to.
const REPOSITORY: &str = "docker.io/library/mlmodel-operator";
const TAG: &str = env!("CARGO_PKG_VERSION");
const READY_TIMEOUT: Duration = Duration::from_secs(240);
/// Where `kubectl apply -k deploy/` puts the operator.
const KUSTOMIZE_NAMESPACE: &str = "mlmodel-system";
/// The Helm release: its own namespace and names, beside what other tests installed.
const RELEASE: &str = "mlmodel";
const HELM_NAMESPACE: &str = "mlmodel-helm";
const HELM_NAME: &str = "mlmodel-helm";
const MANAGER_SELECTOR: &str = "app.kubernetes.io/name=mlmodel-operator,app.kubernetes.io/component=manager";

/// One in-cluster operator at a time: two would both act on every model.
static IN_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> String {
    repo().join("deploy/helm/mlmodel-operator").display().to_string()
}

fn image() -> String {
    format!("{REPOSITORY}:{TAG}")
}

// ---------------------------------------------------------------------------------------
// The chart against deploy/, without installing anything.

/// The objects of a multi-document YAML stream, keyed by kind and name.
fn objects(yaml: &str) -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let mut value = Value::deserialize(document).unwrap_or_else(|e| panic!("not YAML: {e}"));
        if value.is_null() {
            continue;
        }
        without_helm_labels(&mut value);
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        let name = value["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        assert!(
            out.insert((kind.clone(), name.clone()), value).is_none(),
            "{kind} {name} twice"
        );
    }
    out
}

/// Drops the labels Helm puts on a release's objects, and label maps left empty; numbers
/// compare as numbers.
fn without_helm_labels(value: &mut Value) {
    match value {
        Value::Mapping(map) => {
            if let Some(Value::Mapping(labels)) = map.get_mut("labels") {
                for key in [
                    "helm.sh/chart",
                    "app.kubernetes.io/instance",
                    "app.kubernetes.io/version",
                ] {
                    labels.remove(key);
                }
                if labels.get("app.kubernetes.io/managed-by").and_then(Value::as_str) == Some("Helm") {
                    labels.remove("app.kubernetes.io/managed-by");
                }
                if labels.is_empty() {
                    map.remove("labels");
                }
            }
            for (_, child) in map.iter_mut() {
                without_helm_labels(child);
            }
        }
        Value::Sequence(items) => items.iter_mut().for_each(without_helm_labels),
        // kustomize writes `10.0` as `10`: the same number to the API server.
        Value::Number(n) => {
            if let Some(f) = n.as_f64() {
                *value = Value::Number(f.into());
            }
        }
        _ => {}
    }
}

fn helm_template(cluster: &TestCluster, extra: &[&str]) -> Output {
    let chart = chart();
    let mut args = vec![
        "template",
        "mlmodel-operator",
        chart.as_str(),
        "--namespace",
        KUSTOMIZE_NAMESPACE,
    ];
    args.extend_from_slice(extra);
    cluster.helm().args(&args).output().expect("running helm")
}

fn stdout_of(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// With its default values, the chart renders every object `kubectl apply -k deploy/` applies
/// (the CRD included), equal field for field, Helm's labels aside; only the namespace is left
/// to `helm install --create-namespace`. A change to one that is not made to the other fails.
#[test]
fn the_chart_renders_what_deploy_renders() {
    let cluster = node_cluster();
    let kustomized = cluster.kubectl_ok(&["kustomize", &repo().join("deploy").display().to_string()]);
    let mut expected = objects(&kustomized);
    expected.retain(|(kind, _), _| kind != "Namespace");
    let rendered = objects(&stdout_of(
        "helm template",
        &helm_template(cluster, &["--include-crds"]),
    ));

    let keys = |m: &BTreeMap<(String, String), Value>| m.keys().cloned().collect::<BTreeSet<_>>();
    assert_eq!(
        keys(&rendered),
        keys(&expected),
        "the chart and deploy/ render different objects"
    );
    for (key, want) in &expected {
        if let Some(difference) = first_difference(&rendered[key], want, "") {
            panic!(
                "{} {} differs between the chart and deploy/: {difference}",
                key.0, key.1
            );
        }
    }
}

/// Where two YAML values first differ: a path and both sides.
fn first_difference(got: &Value, want: &Value, path: &str) -> Option<String> {
    match (got, want) {
        (Value::Mapping(g), Value::Mapping(w)) => {
            let keys: BTreeSet<String> = g
                .keys()
                .chain(w.keys())
                .map(|k| serde_yaml::to_string(k).unwrap_or_default().trim().to_owned())
                .collect();
            keys.iter().find_map(|k| {
                let key = Value::String(k.clone());
                let (a, b) = (g.get(&key).unwrap_or(&Value::Null), w.get(&key).unwrap_or(&Value::Null));
                first_difference(a, b, &format!("{path}.{k}"))
            })
        }
        (Value::Sequence(g), Value::Sequence(w)) if g.len() == w.len() => g
            .iter()
            .zip(w)
            .enumerate()
            .find_map(|(i, (a, b))| first_difference(a, b, &format!("{path}[{i}]"))),
        _ if got == want => None,
        _ => Some(format!(
            "at {path}: the chart has {}, deploy/ has {}",
            serde_yaml::to_string(got).unwrap_or_default().trim(),
            serde_yaml::to_string(want).unwrap_or_default().trim()
        )),
    }
}

/// `helm lint` passes, and the CRD the chart ships is the committed one, byte for byte (which
/// `deploy`'s tests check against `mlmodel-operator crd`).
#[test]
fn the_chart_lints_and_ships_the_generated_crd() {
    let cluster = node_cluster();
    let lint = cluster
        .helm()
        .args(["lint", "--strict", &chart()])
        .output()
        .expect("helm");
    let report = stdout_of("helm lint --strict", &lint);
    assert!(report.contains("0 chart(s) failed"), "{report}");
    let read =
        |path: &str| std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    assert!(
        read("deploy/helm/mlmodel-operator/crds/mlmodels.yaml") == read("deploy/crd/mlmodels.yaml"),
        "deploy/helm/mlmodel-operator/crds/mlmodels.yaml differs from deploy/crd/mlmodels.yaml: run `make crd`"
    );
}

/// Values that cannot work are refused before anything is applied, each naming the value.
#[test]
fn the_chart_refuses_bad_values_naming_them() {
    let cluster = node_cluster();
    for (set, names) in [
        ("replicaCount=-1", ["replicaCount", "minimum"]),
        (
            "leaderElection.renewDeadlineSeconds=20",
            ["leaderElection.renewDeadlineSeconds (20)", "leaseDurationSeconds (15)"],
        ),
        ("log.format=xml", ["format", "json"]),
        ("image.pullPolicy=Sometimes", ["pullPolicy", "IfNotPresent"]),
        (
            "leaderElection.enabled=false",
            ["replicaCount (2)", "leaderElection.enabled"],
        ),
    ] {
        let out = helm_template(cluster, &["--set", set]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--set {set} was accepted");
        for name in names {
            assert!(
                stderr.contains(name),
                "--set {set}: {name:?} not in the error:\n{stderr}"
            );
        }
    }
}

/// The ServiceMonitor is rendered where the Prometheus Operator's API exists, not elsewhere;
/// the operator's settings reach its container.
#[test]
fn the_chart_renders_a_servicemonitor_only_where_its_api_exists_and_passes_settings_on() {
    let cluster = node_cluster();
    let plain = stdout_of("helm template", &helm_template(cluster, &[]));
    assert!(!plain.contains("kind: ServiceMonitor"), "{plain}");
    let with_api = stdout_of(
        "helm template",
        &helm_template(
            cluster,
            &[
                "--api-versions",
                "monitoring.coreos.com/v1/ServiceMonitor",
                "--set",
                "serviceMonitor.labels.release=prometheus",
            ],
        ),
    );
    let monitor = &objects(&with_api)[&("ServiceMonitor".to_owned(), "mlmodel-operator".to_owned())];
    assert_eq!(monitor["metadata"]["labels"]["release"].as_str(), Some("prometheus"));
    assert_eq!(monitor["spec"]["endpoints"][0]["port"].as_str(), Some("metrics"));

    let set = stdout_of(
        "helm template",
        &helm_template(
            cluster,
            &[
                "--set",
                "image.repository=registry.example.com/ml/operator,image.tag=1.2.3",
                "--set",
                "otel.sampler=parentbased_traceidratio,log.level=debug",
                "--set-string",
                "otel.samplerArg=0.25",
                "--set-string",
                "downloader.limits=cpu=1\\,memory=1Gi",
                "--set-json",
                r#"extraArgs=["--crash-loop-restarts=5"]"#,
                "--set",
                "nodeSelector.pool=system,podAnnotations.team=ml,priorityClassName=operators",
            ],
        ),
    );
    let deployment = &objects(&set)[&("Deployment".to_owned(), "mlmodel-operator".to_owned())];
    let pod = &deployment["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    assert_eq!(
        container["image"].as_str(),
        Some("registry.example.com/ml/operator:1.2.3")
    );
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(args, ["run", "--crash-loop-restarts=5"]);
    let env: BTreeMap<&str, &str> = container["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
        .collect();
    assert_eq!(env.get("OTEL_TRACES_SAMPLER"), Some(&"parentbased_traceidratio"));
    assert_eq!(env.get("OTEL_TRACES_SAMPLER_ARG"), Some(&"0.25"));
    assert_eq!(env.get("DOWNLOADER_LIMITS"), Some(&"cpu=1,memory=1Gi"));
    assert!(env.get("RUST_LOG").is_some_and(|f| f.starts_with("debug,")), "{env:?}");
    // Unset, the download Jobs' image is read by the operator from its own Pod.
    assert_eq!(env.get("DOWNLOADER_IMAGE"), None);
    assert_eq!(pod["spec"]["nodeSelector"]["pool"].as_str(), Some("system"));
    assert_eq!(pod["metadata"]["annotations"]["team"].as_str(), Some("ml"));
    assert_eq!(pod["spec"]["priorityClassName"].as_str(), Some("operators"));
}

// ---------------------------------------------------------------------------------------
// Installed for real, on the real node.

/// The operator's pods in `namespace` that are not being deleted: (name, ready).
async fn operator_pods(client: &Client, namespace: &str) -> Vec<(String, bool)> {
    live_operator_pods(client, namespace)
        .await
        .iter()
        .map(|p| {
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            (p.name_any(), ready)
        })
        .collect()
}

/// Waits until exactly `count` operator pods run and are ready, none of them restarted (a
/// restart shows the container's last termination, its log tail included); returns their names.
async fn ready_operator_pods(client: &Client, namespace: &str, count: usize) -> Vec<String> {
    let pods = poll_until("the operator's pods ready", Duration::from_secs(90), || async move {
        let pods = operator_pods(client, namespace).await;
        (pods.len() == count && pods.iter().all(|(_, ready)| *ready)).then_some(pods)
    })
    .await;
    for pod in live_operator_pods(client, namespace).await {
        for status in pod.status.iter().flat_map(|s| s.container_statuses.iter().flatten()) {
            assert_eq!(
                status.restart_count,
                0,
                "{} restarted; its last termination: {:?}",
                pod.name_any(),
                status.last_state.as_ref().and_then(|s| s.terminated.as_ref())
            );
        }
    }
    pods.into_iter().map(|(name, _)| name).collect()
}

async fn live_operator_pods(client: &Client, namespace: &str) -> Vec<Pod> {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(MANAGER_SELECTOR))
        .await
        .expect("listing the operator's pods");
    pods.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

/// The Lease's holder.
async fn leader(client: &Client, namespace: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), namespace)
        .get_opt("mlmodel-operator")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

/// The holder once it is one of the operator's live pods (a Lease left by an earlier holder
/// expires first).
async fn pod_leader(client: &Client, namespace: &str, not: Option<&str>) -> String {
    poll_until(
        "one of the operator's pods leading",
        Duration::from_secs(90),
        || async move {
            let holder = leader(client, namespace).await?;
            let pods = operator_pods(client, namespace).await;
            (pods.iter().any(|(name, _)| *name == holder) && Some(holder.as_str()) != not).then_some(holder)
        },
    )
    .await
}

fn rollout_status(cluster: &TestCluster, namespace: &str, deployment: &str) {
    cluster.kubectl_ok(&[
        "-n",
        namespace,
        "rollout",
        "status",
        &format!("deployment/{deployment}"),
        "--timeout=240s",
    ]);
}

/// What the operator made for the model in `ns`: (kind, name) of its Deployments, Services,
/// Jobs and claims, and the names of its running pods; objects on their way out (a pod of
/// the previous version draining, a superseded Job) are not counted.
async fn children(ns: &TestNamespace) -> BTreeSet<(String, String)> {
    async fn live<K>(ns: &TestNamespace, kind: &str, keep: impl Fn(&K) -> bool) -> Vec<(String, String)>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let lp = ListParams::default().labels("app.kubernetes.io/managed-by=mlmodel-operator");
        let items = ns.api::<K>().list(&lp).await.expect("list").items;
        items
            .into_iter()
            .filter(|o| o.meta().deletion_timestamp.is_none() && keep(o))
            .map(|o| (kind.to_owned(), o.name_any()))
            .collect()
    }
    let running = |p: &Pod| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    let mut out = BTreeSet::new();
    out.extend(live::<Deployment>(ns, "Deployment", |_| true).await);
    out.extend(live::<Service>(ns, "Service", |_| true).await);
    out.extend(live::<Job>(ns, "Job", |_| true).await);
    out.extend(live::<PersistentVolumeClaim>(ns, "PersistentVolumeClaim", |_| true).await);
    out.extend(live::<Pod>(ns, "Pod", running).await);
    out
}

/// [`children`] once two reads a second apart agree: a rollout that just ended may still be
/// removing what it replaced.
async fn settled_children(ns: &TestNamespace) -> BTreeSet<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = children(ns).await;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = children(ns).await;
        if now == last {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the model's children did not settle in 60 s: {now:?}"
        );
        last = now;
    }
}

/// Records every moment `iris` in `ns` is not `Available` until `stop` is set.
fn watch_available(ns: &TestNamespace, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<String>> {
    let models = ns.api::<MLModel>();
    tokio::spawn(async move {
        let mut lapses = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            match models.get("iris").await {
                Ok(m) => {
                    let available = m.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == "Available" && c.status == "True")
                    });
                    if !available {
                        lapses.push(serde_yaml::to_string(&m.status).unwrap_or_default());
                    }
                }
                Err(e) => lapses.push(format!("get failed: {e}")),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        lapses
    })
}

/// `GET path` over HTTP/1.1; the body of a 200.
fn http_get(address: &str, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&address.parse().ok()?, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// The operator deployed by `kubectl apply -k`, removed again (the CRD, RBAC and policy stay:
/// other tests use them) when the test ends, however it ends.
struct KustomizeInstall(&'static TestCluster);

impl Drop for KustomizeInstall {
    fn drop(&mut self) {
        let _ = self
            .0
            .kubectl()
            .args(["-n", KUSTOMIZE_NAMESPACE, "delete", "deployment/mlmodel-operator"])
            .args([
                "service/mlmodel-operator-metrics",
                "--ignore-not-found",
                "--timeout=90s",
            ])
            .output();
    }
}

/// A user's overlay of `deploy/` that only names the image, as the README shows, made beside
/// the checkout (kustomize refuses absolute paths to a base).
fn overlay() -> tempfile::TempDir {
    let target = repo().join("target");
    std::fs::create_dir_all(&target).expect("target dir");
    let dir = tempfile::Builder::new()
        .prefix("install-overlay-")
        .tempdir_in(&target)
        .expect("overlay dir");
    let kustomization = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ../../deploy\n\
         images:\n  - name: mlmodel-operator\n    newName: {REPOSITORY}\n    newTag: \"{TAG}\"\n"
    );
    std::fs::write(dir.path().join("kustomization.yaml"), kustomization).expect("writing the overlay");
    dir
}

/// The model's Service answers with `version`'s predictions. Every answer is a success; the
/// previous version may still answer for the moment its pods drain after the rollout.
async fn serves(ns: &TestNamespace, version: &str) {
    let address = service_address(ns, "iris").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, json) = answered(&address).await;
        assert_eq!(code, 200, "{json}");
        let (answered_by, predictions) = answer_of(&json);
        assert_eq!(predictions, [0, 1, 2], "{json}");
        if answered_by == version {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{version} does not answer after 30 s: {json}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `kubectl apply -k` of an overlay that sets only the image: both replicas start and pass
/// their probes, one leads, a model reaches Ready and answers, and the download Job ran the
/// operator's image. The leader pod is deleted mid-rollout: the other takes over and finishes
/// it. `kubectl rollout restart` of the operator keeps the model Available throughout and
/// changes none of its children. Metrics are scraped through the metrics Service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_k_runs_two_replicas_that_keep_a_model_served_through_leader_loss_and_restart() {
    let _one = IN_CLUSTER.lock().await;
    let cluster = node_cluster();
    let (v1, v2) = (artifact("v1"), artifact("v2"));
    let ns = support::node_namespace("install-kustomize", true).await;
    let client = cluster.client().await;
    let overlay = overlay();
    let _installed = KustomizeInstall(cluster);

    let started = Instant::now();
    cluster.kubectl_ok(&["apply", "-k", &overlay.path().display().to_string()]);
    rollout_status(cluster, KUSTOMIZE_NAMESPACE, "mlmodel-operator");
    ready_operator_pods(&client, KUSTOMIZE_NAMESPACE, 2).await;
    let deployment = Api::<Deployment>::namespaced(client.clone(), KUSTOMIZE_NAMESPACE)
        .get("mlmodel-operator")
        .await
        .expect("the operator's Deployment");
    let container = &deployment
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod spec")
        .containers[0];
    assert_eq!(container.image.as_deref(), Some(image().as_str()));
    let first_leader = pod_leader(&client, KUSTOMIZE_NAMESPACE, None).await;
    let running = started.elapsed();

    ns.apply_yaml(&model_yaml("iris", &v1.url, Some(&v1.sha256), ""));
    let models = ns.api::<MLModel>();
    wait_for(&models, "iris", READY_TIMEOUT, ready_at_generation).await;
    println!(
        "kubectl apply -k to both replicas ready and one leading: {:.1} s; to the first model Ready: {:.1} s",
        running.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let job = ns.api::<Job>().get("iris-download-1").await.expect("the download Job");
    let job_image = job
        .spec
        .and_then(|s| s.template.spec)
        .map(|s| s.containers[0].image.clone());
    assert_eq!(
        job_image,
        Some(Some(image())),
        "the download Job runs the operator's own image"
    );
    serves(&ns, "v1").await;

    // The leader goes away while a rollout is under way; the other replica finishes it.
    ns.apply_yaml(&model_yaml("iris", &v2.url, Some(&v2.sha256), ""));
    wait_for(&models, "iris", READY_TIMEOUT, |m| {
        m.status.as_ref().and_then(|s| s.observed_generation) == Some(2) && !ready_at_generation(m)
    })
    .await;
    let deleted = Instant::now();
    cluster.kubectl_ok(&[
        "-n",
        KUSTOMIZE_NAMESPACE,
        "delete",
        "pod",
        &first_leader,
        "--wait=false",
    ]);
    let second_leader = pod_leader(&client, KUSTOMIZE_NAMESPACE, Some(&first_leader)).await;
    println!(
        "leader pod {first_leader} deleted: {second_leader} leads after {:.1} s",
        deleted.elapsed().as_secs_f64()
    );
    let model = wait_for(&models, "iris", READY_TIMEOUT, ready_at_generation).await;
    assert_eq!(model.status.and_then(|s| s.serving).map(|s| s.generation), Some(2));
    serves(&ns, "v2").await;
    rollout_status(cluster, KUSTOMIZE_NAMESPACE, "mlmodel-operator");
    ready_operator_pods(&client, KUSTOMIZE_NAMESPACE, 2).await;

    // A restart of the operator changes nothing a user sees.
    let before = settled_children(&ns).await;
    let stop = Arc::new(AtomicBool::new(false));
    let lapses = watch_available(&ns, stop.clone());
    let restarted = Instant::now();
    cluster.kubectl_ok(&[
        "-n",
        KUSTOMIZE_NAMESPACE,
        "rollout",
        "restart",
        "deployment/mlmodel-operator",
    ]);
    rollout_status(cluster, KUSTOMIZE_NAMESPACE, "mlmodel-operator");
    let after_restart = pod_leader(&client, KUSTOMIZE_NAMESPACE, Some(&second_leader)).await;
    // The new leader has reconciled the model once its watches synced (readiness).
    ready_operator_pods(&client, KUSTOMIZE_NAMESPACE, 2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    let lapses = lapses.await.expect("the watcher");
    println!(
        "rollout restart: {after_restart} leads, {:.1} s after the restart began",
        restarted.elapsed().as_secs_f64()
    );
    assert!(
        lapses.is_empty(),
        "the model was not Available during the restart:\n{}",
        lapses.join("\n")
    );
    assert_eq!(children(&ns).await, before, "the restart changed the model's children");
    serves(&ns, "v2").await;

    // Metrics of every replica through the metrics Service.
    let metrics = Api::<Service>::namespaced(client.clone(), KUSTOMIZE_NAMESPACE)
        .get("mlmodel-operator-metrics")
        .await
        .expect("the metrics Service");
    let address = format!("{}:8080", metrics.spec.and_then(|s| s.cluster_ip).expect("a ClusterIP"));
    let mut leaders = BTreeSet::new();
    for _ in 0..60 {
        let body = poll_until("/metrics through the Service", Duration::from_secs(10), || {
            let address = address.clone();
            async move { http_get(&address, "/metrics") }
        })
        .await;
        assert!(body.contains("mlmodel_actors_alive"), "{body}");
        if let Some(line) = body.lines().find(|l| l.starts_with("mlmodel_is_leader ")) {
            leaders.insert(line.to_owned());
        }
        if leaders.len() == 2 {
            break;
        }
    }
    assert_eq!(
        leaders,
        BTreeSet::from(["mlmodel_is_leader 0".to_owned(), "mlmodel_is_leader 1".to_owned()]),
        "both replicas answer through the Service, one leading"
    );

    ready_operator_pods(&client, KUSTOMIZE_NAMESPACE, 2).await;

    // Models go before the operator that removes their children.
    ns.kubectl()
        .args(["delete", "mlmodel", "iris", "--timeout=120s"])
        .output()
        .expect("kubectl");
}

/// Uninstalls the release (if the test did not) and removes what a failed test left.
/// `observability/jaeger.yaml` applied as a user applies it, its image (the official one's
/// name) built from Jaeger's Go module and imported into the node; deleted when dropped.
struct InClusterJaeger(&'static TestCluster);

impl InClusterJaeger {
    fn apply(cluster: &'static TestCluster) -> Self {
        let images = repo().join("tests/cluster/images.sh");
        for step in ["build", "import"] {
            support::run_ok(std::process::Command::new(&images).args([step, "jaeger"]));
        }
        let manifest = repo().join("observability/jaeger.yaml").display().to_string();
        cluster.kubectl_ok(&["apply", "-f", &manifest]);
        let jaeger = Self(cluster);
        rollout_status(cluster, "observability", "jaeger");
        jaeger
    }

    /// `<ClusterIP>:<port>` of one of its Services.
    async fn address(client: &Client, service: &str, port: u16) -> String {
        let svc = Api::<Service>::namespaced(client.clone(), "observability")
            .get(service)
            .await
            .expect("Jaeger's Service");
        format!("{}:{port}", svc.spec.and_then(|s| s.cluster_ip).expect("a ClusterIP"))
    }
}

impl Drop for InClusterJaeger {
    fn drop(&mut self) {
        let manifest = repo().join("observability/jaeger.yaml").display().to_string();
        let _ = self
            .0
            .kubectl()
            .args(["delete", "-f", &manifest, "--ignore-not-found", "--wait=false"])
            .output();
    }
}

struct HelmRelease(&'static TestCluster);

impl Drop for HelmRelease {
    fn drop(&mut self) {
        let _ = self
            .0
            .helm()
            .args(["uninstall", RELEASE, "-n", HELM_NAMESPACE, "--wait"])
            .output();
        let _ = self
            .0
            .kubectl()
            .args([
                "delete",
                "namespace",
                HELM_NAMESPACE,
                "--ignore-not-found",
                "--wait=false",
            ])
            .output();
    }
}

/// `helm install` into its own namespace, a model Ready whose `pod` settings (node selector,
/// labels, annotations) and download resources reach its real pods; `helm upgrade` to one replica at
/// debug level, the model still answering and a new version rolled out by the upgraded
/// operator; `helm uninstall` removes the operator and leaves the CRD, the model and what
/// serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_helm_chart_installs_upgrades_and_uninstalls_with_a_model_ready_between() {
    let _one = IN_CLUSTER.lock().await;
    let cluster = node_cluster();
    let (v1, v2) = (artifact("v1"), artifact("v2"));
    let ns = support::node_namespace("install-helm", true).await;
    let client = cluster.client().await;
    let chart = chart();
    // The traces go to the Jaeger of observability/jaeger.yaml, by its collector's ClusterIP
    // (the test bed has no cluster DNS to resolve the chart's default name).
    let _jaeger = InClusterJaeger::apply(cluster);
    let collector = InClusterJaeger::address(&client, "jaeger-collector", 4317).await;
    let query = format!(
        "http://{}",
        InClusterJaeger::address(&client, "jaeger-query", 16686).await
    );
    let _release = HelmRelease(cluster);

    let started = Instant::now();
    let repository = format!("image.repository={REPOSITORY}");
    let name = format!("fullnameOverride={HELM_NAME}");
    let otel = format!("otel.endpoint=http://{collector}");
    cluster.helm_ok(&[
        "install",
        RELEASE,
        &chart,
        "-n",
        HELM_NAMESPACE,
        "--create-namespace",
        "--set",
        &repository,
        "--set",
        &name,
        "--set",
        &otel,
        "--wait",
        "--timeout=240s",
    ]);
    let installed = started.elapsed();
    pod_leader(&client, HELM_NAMESPACE, None).await;
    // The model's pods settings, as a user on a real cluster sets them.
    let pod_settings = format!(
        "  pod:\n    nodeSelector:\n      kubernetes.io/hostname: {}\n    labels:\n      team: vision\n    \
         annotations:\n      example.com/owner: ml-platform\n  download:\n    resources:\n      limits:\n        \
         memory: 300Mi\n",
        support::real_node().name
    );
    ns.apply_yaml(&model_yaml("iris", &v1.url, Some(&v1.sha256), &pod_settings));
    let models = ns.api::<MLModel>();
    wait_for(&models, "iris", READY_TIMEOUT, ready_at_generation).await;
    println!(
        "helm install --wait: {:.1} s; to the first model Ready: {:.1} s",
        installed.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    serves(&ns, "v1").await;
    // The rollout is one trace in that Jaeger: the operator's spans from its pod, the
    // downloader's from the Job's pod, both through the collector's Service.
    let trace_id = models
        .get("iris")
        .await
        .expect("the model")
        .status
        .and_then(|s| s.trace_id)
        .expect("status.traceId");
    let spans = poll_until(
        "the rollout's trace in the Jaeger of observability/jaeger.yaml",
        Duration::from_secs(60),
        || {
            let (query, trace_id) = (query.clone(), trace_id.clone());
            async move {
                let spans = mlmodel_operator::traceview::fetch_trace(&query, &trace_id).await.ok()?;
                let has = |name: &str| spans.iter().any(|s| s.name == name);
                (has("mlmodel.ready") && has("download.unpack")).then_some(spans)
            }
        },
    )
    .await;
    let service_of = |name: &str| spans.iter().find(|s| s.name == name).map(|s| s.service.as_str());
    assert_eq!(service_of("mlmodel.rollout"), Some("mlmodel-operator"));
    assert_eq!(service_of("mlmodel.download"), Some("mlmodel-downloader"));
    let operator_pod = spans
        .iter()
        .find(|s| s.name == "mlmodel.rollout")
        .and_then(|s| s.process_tags.get("k8s.pod.name"))
        .cloned()
        .unwrap_or_default();
    assert!(
        operator_pod.starts_with(HELM_NAME),
        "the rollout was traced by the installed operator's pod: {operator_pod:?}"
    );
    println!(
        "the Jaeger of observability/jaeger.yaml has the rollout {trace_id}: {} spans from {:?}",
        spans.len(),
        spans.iter().map(|s| s.service.as_str()).collect::<BTreeSet<_>>()
    );
    let serving = ns
        .api::<Pod>()
        .list(&ListParams::default().labels("app.kubernetes.io/component=serving,team=vision"))
        .await
        .expect("list")
        .items;
    assert_eq!(serving.len(), 1, "the serving pod carries the model's labels");
    assert_eq!(
        serving[0].annotations().get("example.com/owner").map(String::as_str),
        Some("ml-platform")
    );
    let job = ns.api::<Job>().get("iris-download-1").await.expect("the download Job");
    let limits = job
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers[0].resources.clone());
    assert_eq!(
        limits
            .and_then(|r| r.limits)
            .and_then(|l| l.get("memory").map(|q| q.0.clone())),
        Some("300Mi".to_owned())
    );

    cluster.helm_ok(&[
        "upgrade",
        RELEASE,
        &chart,
        "-n",
        HELM_NAMESPACE,
        "--reuse-values",
        "--set",
        "replicaCount=1",
        "--set",
        "log.level=debug",
        "--wait",
        "--timeout=240s",
    ]);
    let deployment = Api::<Deployment>::namespaced(client.clone(), HELM_NAMESPACE)
        .get(HELM_NAME)
        .await
        .expect("the operator's Deployment");
    let spec = deployment.spec.expect("spec");
    assert_eq!(spec.replicas, Some(1));
    let rust_log = spec.template.spec.expect("pod spec").containers[0]
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "RUST_LOG")
        .and_then(|e| e.value.clone());
    assert!(
        rust_log.as_deref().is_some_and(|f| f.starts_with("debug,")),
        "{rust_log:?}"
    );
    let status = cluster.helm_ok(&["status", RELEASE, "-n", HELM_NAMESPACE, "-o", "json"]);
    let status: serde_json::Value = serde_json::from_str(&status).expect("helm status JSON");
    assert_eq!(status["version"], 2, "{status}");
    serves(&ns, "v1").await;
    // The upgraded operator rolls out a new version.
    ns.apply_yaml(&model_yaml("iris", &v2.url, Some(&v2.sha256), &pod_settings));
    wait_for(&models, "iris", READY_TIMEOUT, ready_at_generation).await;
    serves(&ns, "v2").await;

    cluster.helm_ok(&["uninstall", RELEASE, "-n", HELM_NAMESPACE, "--wait", "--timeout=120s"]);
    let deployments = Api::<Deployment>::namespaced(client.clone(), HELM_NAMESPACE);
    assert!(deployments.get_opt(HELM_NAME).await.expect("get").is_none());
    let role = cluster
        .kubectl()
        .args(["get", "clusterrole", HELM_NAME])
        .output()
        .expect("kubectl");
    assert!(!role.status.success(), "the ClusterRole outlived the release");
    cluster.kubectl_ok(&["get", "crd", "mlmodels.oda.tmforum.org"]);
    let model = models.get("iris").await.expect("the model outlives the release");
    assert!(model.metadata.deletion_timestamp.is_none());
    serves(&ns, "v2").await;

    // Without an operator nobody removes the finalizer: the README's way out.
    ns.kubectl()
        .args([
            "patch",
            "mlmodel",
            "iris",
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ])
        .output()
        .expect("kubectl");
}

//! The operator's main job on the real node: a real artifact downloaded by its Job, served by
//! MLServer, answering inference requests through the model's Service; real download
//! failures; scaling; updates under continuous traffic; deletion.

mod operator;
mod support;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use mlmodel_operator::api::{Failure, MLModel, Phase};
use serde_json::json;
use support::iris::{answer_of, answered, artifact, infer, model_yaml, ready_at_generation, service_address};
use support::{TestNamespace, real_node, wait_for, wait_for_deletion};

const READY_TIMEOUT: Duration = Duration::from_secs(180);

fn phase(m: &MLModel) -> Option<Phase> {
    m.status.as_ref().and_then(|s| s.phase)
}

fn message(m: &MLModel) -> String {
    m.status.as_ref().and_then(|s| s.message.clone()).unwrap_or_default()
}

/// Waits until model `name` is Failed; returns it.
async fn failed(ns: &TestNamespace, name: &str, timeout: Duration) -> MLModel {
    wait_for(&ns.api::<MLModel>(), name, timeout, |m| phase(m) == Some(Phase::Failed)).await
}

/// The model's `status.lastFailure`.
fn last_failure(m: &MLModel) -> &Failure {
    m.status
        .as_ref()
        .and_then(|s| s.last_failure.as_ref())
        .expect("lastFailure")
}

async fn setup(prefix: &str) -> TestNamespace {
    let ns = support::node_namespace(prefix, true).await;
    operator::shared();
    ns
}

#[tokio::test]
async fn a_real_model_becomes_ready_and_answers_through_its_service() {
    let ns = setup("serve-ready").await;
    let v1 = artifact("v1");
    ns.apply_yaml(&model_yaml("iris", &v1.url, Some(&v1.sha256), ""));
    let models = ns.api::<MLModel>();
    let model = wait_for(&models, "iris", READY_TIMEOUT, ready_at_generation).await;
    let status = model.status.as_ref().expect("status");
    assert_eq!(status.ready.as_deref(), Some("1/1"));
    assert_eq!(
        status.service_endpoint.as_deref(),
        Some(format!("iris.{}.svc.cluster.local:8080", ns.name).as_str())
    );

    let address = service_address(&ns, "iris").await;
    let (code, json) = answered(&address).await;
    assert_eq!(code, 200, "{json}");
    assert_eq!(json["model_name"], "iris");
    assert_eq!(answer_of(&json), ("v1".to_owned(), vec![0, 1, 2]), "{json}");
}

/// A Secret holding S3 credentials for the node's S3 store, signed with `secret_key`.
fn s3_secret_yaml(name: &str, secret_key: &str) -> String {
    let s3 = &real_node().s3;
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\nstringData:\n  \
         AWS_ACCESS_KEY_ID: {}\n  AWS_SECRET_ACCESS_KEY: {secret_key}\n  AWS_REGION: us-east-1\n  \
         AWS_ENDPOINT_URL: {}\n",
        s3.access_key, s3.url
    )
}

#[tokio::test]
async fn a_model_in_an_s3_bucket_is_served_with_the_credentials_of_its_secret() {
    let ns = setup("serve-s3").await;
    let v1 = artifact("v1");
    let s3 = &real_node().s3;
    let key = format!("{}/model.tar.gz", ns.name);
    let object = s3.dir.join("models").join(&key);
    std::fs::create_dir_all(object.parent().expect("parent")).expect("bucket dir");
    let local = real_node().store_dir.join("serving-tests/v1/model.tar.gz");
    std::fs::copy(&local, &object).expect("object in the bucket");
    ns.apply_yaml(&s3_secret_yaml("s3-good", &s3.secret_key));
    ns.apply_yaml(&s3_secret_yaml("s3-wrong", "not-the-secret"));
    let url = format!("s3://models/{key}");
    ns.apply_yaml(&model_yaml(
        "iris",
        &url,
        Some(&v1.sha256),
        "  credentials:\n    name: s3-good\n",
    ));
    ns.apply_yaml(&model_yaml(
        "denied",
        &url,
        Some(&v1.sha256),
        "  credentials:\n    name: s3-wrong\n",
    ));
    ns.apply_yaml(&model_yaml(
        "absent",
        &format!("s3://models/{}/absent.tar.gz", ns.name),
        None,
        "  credentials:\n    name: s3-good\n",
    ));

    let models = ns.api::<MLModel>();
    wait_for(&models, "iris", READY_TIMEOUT, ready_at_generation).await;
    let address = service_address(&ns, "iris").await;
    let (code, json) = answered(&address).await;
    assert_eq!(code, 200, "{json}");
    assert_eq!(answer_of(&json), ("v1".to_owned(), vec![0, 1, 2]), "{json}");

    let denied = wait_for(&models, "denied", READY_TIMEOUT, |m| phase(m) == Some(Phase::Failed)).await;
    assert!(
        message(&denied).starts_with("download failed: AuthFailed: "),
        "{}",
        message(&denied)
    );
    assert!(!message(&denied).contains("not-the-secret"), "{}", message(&denied));
    let absent = wait_for(&models, "absent", READY_TIMEOUT, |m| phase(m) == Some(Phase::Failed)).await;
    assert_eq!(
        message(&absent),
        format!(
            "download failed: NotFound: HTTP 404 fetching s3://models/{}/absent.tar.gz",
            ns.name
        )
    );
}

#[tokio::test]
async fn download_failures_carry_the_downloaders_line_from_the_real_pod() {
    let ns = setup("serve-download-fail").await;
    let v1 = artifact("v1");
    let missing = v1.url.replace("/v1/", "/v404/");
    ns.apply_yaml(&model_yaml("missing", &missing, None, ""));
    ns.apply_yaml(&model_yaml("wrong-sha", &v1.url, Some(&"0".repeat(64)), ""));
    for (name, expected) in [
        (
            "missing",
            format!("download failed: NotFound: HTTP 404 fetching {missing}"),
        ),
        (
            "wrong-sha",
            format!(
                "download failed: ChecksumMismatch: expected {}, got {}",
                "0".repeat(64),
                v1.sha256
            ),
        ),
    ] {
        let model = failed(&ns, name, READY_TIMEOUT).await;
        assert_eq!(last_failure(&model).reason, "DownloadFailed", "{name}");
        assert_eq!(message(&model), expected, "{name}");
    }
}

/// A `.tar.gz` of one file `name` holding `contents`, put in the node's model store for the
/// test namespace `ns`; returns its URL.
fn archive_in_store(ns: &TestNamespace, name: &str, contents: &str) -> String {
    let dir = real_node().store_dir.join(&ns.name);
    std::fs::create_dir_all(dir.join("content")).expect("store dir");
    std::fs::write(dir.join("content").join(name), contents).expect("file");
    let out = Command::new("tar")
        .arg("-czf")
        .arg(dir.join("model.tar.gz"))
        .arg("-C")
        .arg(dir.join("content"))
        .arg(name)
        .output()
        .expect("tar");
    assert!(out.status.success(), "tar: {}", String::from_utf8_lossy(&out.stderr));
    format!("{}/{}/model.tar.gz", real_node().store_url, ns.name)
}

#[tokio::test]
async fn a_wrong_model_layout_fails_the_download_naming_what_is_missing() {
    let ns = setup("serve-layout").await;
    let url = archive_in_store(&ns, "README.txt", "not a model\n");
    ns.apply_yaml(&model_yaml("readme", &url, None, ""));
    let model = failed(&ns, "readme", READY_TIMEOUT).await;
    assert_eq!(
        message(&model),
        "download failed: InvalidModelLayout: sklearn needs model-settings.json or one of model.joblib, \
         model.pkl, model.pickle; found: README.txt"
    );
}

/// A model file MLServer cannot load: the server exits (with code 0), restarts, and the model
/// fails with the server's own error, read from the container's termination message.
#[tokio::test]
async fn a_model_the_server_cannot_load_fails_with_the_servers_reason() {
    let ns = setup("serve-corrupt").await;
    let url = archive_in_store(&ns, "model.joblib", "not a model\n");
    ns.apply_yaml(&model_yaml("corrupt", &url, None, ""));
    // Three restarts with the kubelet's back-off (10 s, 20 s, 40 s) and MLServer's start-ups.
    let model = failed(&ns, "corrupt", Duration::from_secs(300)).await;
    let failure = last_failure(&model);
    assert_eq!(failure.reason, "CrashLoopBackOff", "{model:?}");
    for expected in [
        "container server is crash-looping",
        "(exit code 0)",
        "Some of the models failed to load during startup!",
        "KeyError: 110",
    ] {
        assert!(
            failure.message.contains(expected),
            "the status carries the server's reason ({expected}): {}",
            failure.message
        );
    }
}

#[tokio::test]
async fn a_runtime_image_that_is_not_present_fails_with_the_kubelets_reason() {
    let ns = setup("serve-no-image").await;
    let v1 = artifact("v1");
    let extra = "  runtime:\n    image: registry.invalid/mlserver:0.0.0\n";
    ns.apply_yaml(&model_yaml("no-image", &v1.url, Some(&v1.sha256), extra));
    let model = failed(&ns, "no-image", READY_TIMEOUT).await;
    let failure = last_failure(&model);
    assert_eq!(failure.reason, "ImagePullBackOff", "{model:?}");
    assert!(
        failure.message.contains("registry.invalid/mlserver:0.0.0"),
        "the kubelet's message names the image: {}",
        failure.message
    );
}

#[tokio::test]
async fn two_replicas_serve_from_one_volume_and_scale_to_zero_and_back() {
    let ns = setup("serve-scale").await;
    let v1 = artifact("v1");
    ns.apply_yaml(&model_yaml("iris", &v1.url, Some(&v1.sha256), "  replicas: 2\n"));
    let models = ns.api::<MLModel>();
    let model = wait_for(&models, "iris", READY_TIMEOUT, ready_at_generation).await;
    assert_eq!(
        model.status.as_ref().and_then(|s| s.ready.clone()).as_deref(),
        Some("2/2")
    );
    let address = service_address(&ns, "iris").await;
    // Ready pods are routed once kube-proxy has programmed their endpoints, a moment later.
    answered(&address).await;
    for _ in 0..6 {
        let (code, json) = infer(&address, "iris").expect("the Service answers");
        assert_eq!((code, answer_of(&json).1), (200, vec![0, 1, 2]), "{json}");
    }

    let patch = |replicas: i32| Patch::Merge(json!({ "spec": { "replicas": replicas } }));
    models
        .patch("iris", &PatchParams::default(), &patch(0))
        .await
        .expect("scale to 0");
    let model = wait_for(&models, "iris", READY_TIMEOUT, |m| {
        m.status.as_ref().and_then(|s| s.observed_generation) == m.metadata.generation
            && m.status.as_ref().and_then(|s| s.ready.clone()).as_deref() == Some("0/0")
    })
    .await;
    assert_ne!(
        phase(&model),
        Some(Phase::Failed),
        "scaled to zero is not a failure: {:?}",
        model.status
    );

    models
        .patch("iris", &PatchParams::default(), &patch(1))
        .await
        .expect("scale to 1");
    let model = wait_for(&models, "iris", READY_TIMEOUT, ready_at_generation).await;
    assert_eq!(
        model.status.as_ref().and_then(|s| s.ready.clone()).as_deref(),
        Some("1/1")
    );
    let (code, json) = answered(&address).await;
    assert_eq!((code, answer_of(&json).1), (200, vec![0, 1, 2]), "{json}");
}

/// The time of day (UTC), to line failures up with the cluster's logs.
fn clock() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() % 86_400_000)
        .unwrap_or_default();
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// What a client sending requests without pause saw.
#[derive(Default, Debug)]
struct Traffic {
    ok: u64,
    failed: u64,
    /// model_version of every successful answer, in order.
    versions: Vec<String>,
    errors: Vec<String>,
}

/// Sends an inference request every 40 ms (25 a second) until `stop`.
fn client(address: String, stop: Arc<AtomicBool>, seen: Arc<Mutex<Traffic>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let result = infer(&address, "iris");
            let mut t = seen.lock().expect("traffic");
            match result {
                Ok((200, json)) => {
                    t.ok += 1;
                    t.versions.push(answer_of(&json).0);
                }
                Ok((code, json)) => {
                    t.failed += 1;
                    t.errors.push(format!("HTTP {code}: {json}"));
                }
                Err(e) => {
                    t.failed += 1;
                    t.errors.push(format!("{} {e}", clock()));
                }
            }
            drop(t);
            std::thread::sleep(Duration::from_millis(40).saturating_sub(started.elapsed()));
        }
    })
}

async fn update_under_traffic(
    prefix: &str,
    new_url: impl Fn() -> (String, Option<String>),
) -> (TestNamespace, Traffic) {
    let ns = setup(prefix).await;
    let v1 = artifact("v1");
    ns.apply_yaml(&model_yaml("iris", &v1.url, Some(&v1.sha256), ""));
    let models = ns.api::<MLModel>();
    wait_for(&models, "iris", READY_TIMEOUT, ready_at_generation).await;
    let address = service_address(&ns, "iris").await;
    answered(&address).await;
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Traffic::default()));
    let handle = client(address, stop.clone(), seen.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (url, sha) = new_url();
    let spec = json!({ "spec": { "modelURL": url, "sha256": sha } });
    models
        .patch("iris", &PatchParams::default(), &Patch::Merge(spec))
        .await
        .expect("update");
    // The update settles: Ready at the new generation, or its download failed.
    wait_for(&models, "iris", READY_TIMEOUT, |m| {
        ready_at_generation(m)
            || m.status
                .as_ref()
                .and_then(|s| s.last_failure.as_ref())
                .is_some_and(|f| f.reason == "DownloadFailed")
    })
    .await;
    // Keep the client going while the old pods drain.
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop.store(true, Ordering::Relaxed);
    handle.join().expect("client thread");
    let traffic = std::mem::take(&mut *seen.lock().expect("traffic"));
    eprintln!(
        "{prefix}: {} requests, {} failed, versions answered: {:?}",
        traffic.ok + traffic.failed,
        traffic.failed,
        dedup(&traffic.versions)
    );
    (ns, traffic)
}

fn dedup(versions: &[String]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for v in versions {
        if out.last() != Some(&v.as_str()) {
            out.push(v);
        }
    }
    out
}

#[tokio::test]
async fn an_update_rolls_out_with_no_failed_request() {
    let (_ns, traffic) = update_under_traffic("serve-update", || {
        let v2 = artifact("v2");
        (v2.url.clone(), Some(v2.sha256.clone()))
    })
    .await;
    assert_eq!(
        traffic.failed, 0,
        "failed requests during the update: {:?}",
        traffic.errors
    );
    assert!(traffic.ok >= 100, "the client kept sending: {} answers", traffic.ok);
    // v1 first; while both versions' pods are endpoints (the rollout's surge) either answers;
    // from some moment on, only v2.
    assert_eq!(traffic.versions.first().map(String::as_str), Some("v1"));
    let last_v1 = traffic.versions.iter().rposition(|v| v == "v1").expect("v1 answered");
    let after = &traffic.versions[last_v1 + 1..];
    assert!(
        after.len() >= 50 && after.iter().all(|v| v == "v2"),
        "after the last v1 answer only v2 answers, for good: {} answers after it, switches {:?}",
        after.len(),
        dedup(&traffic.versions)
    );
}

#[tokio::test]
async fn a_failed_update_keeps_the_old_version_answering() {
    let (ns, traffic) = update_under_traffic("serve-update-404", || {
        let v1 = artifact("v1");
        (v1.url.replace("/v1/", "/v404/"), None)
    })
    .await;
    assert_eq!(
        traffic.failed, 0,
        "failed requests during the failed update: {:?}",
        traffic.errors
    );
    assert_eq!(dedup(&traffic.versions), vec!["v1"], "the old version keeps answering");
    let model = ns.api::<MLModel>().get("iris").await.expect("model");
    let status = model.status.as_ref().expect("status");
    assert_eq!(
        status.service_endpoint.as_deref(),
        Some(format!("iris.{}.svc.cluster.local:8080", ns.name).as_str())
    );
    assert!(
        message(&model).contains("HTTP 404"),
        "the status says why the update failed: {:?}",
        status
    );
    // A failed update is not a model that is down.
    assert_eq!(phase(&model), Some(Phase::UpdateFailed), "{status:?}");
    let condition = |type_: &str| {
        let c = status.conditions.iter().find(|c| c.type_ == type_).expect("condition");
        (c.status.clone(), c.reason.clone())
    };
    assert_eq!(condition("Available").0, "True");
    assert_eq!(condition("Ready"), ("False".to_owned(), "UpdateFailed".to_owned()));
    assert_eq!(status.serving.as_ref().map(|s| s.generation), Some(1));

    // Reverting the spec recovers at once: version 1 is on the volume, no new download.
    let v1 = artifact("v1");
    let spec = json!({ "spec": { "modelURL": v1.url, "sha256": v1.sha256 } });
    let models = ns.api::<MLModel>();
    models
        .patch("iris", &PatchParams::default(), &Patch::Merge(spec))
        .await
        .expect("revert");
    wait_for(&models, "iris", Duration::from_secs(30), ready_at_generation).await;
    let jobs: Vec<String> = ns
        .api::<k8s_openapi::api::batch::v1::Job>()
        .list(&Default::default())
        .await
        .expect("jobs")
        .items
        .iter()
        .filter(|j| j.metadata.deletion_timestamp.is_none())
        .filter_map(|j| j.metadata.name.clone())
        .collect();
    assert_eq!(jobs, vec!["iris-download-1".to_owned()]);
}

#[tokio::test]
async fn deleting_a_model_removes_its_children_and_releases_its_volume() {
    let ns = setup("serve-delete").await;
    let v1 = artifact("v1");
    ns.apply_yaml(&model_yaml("iris", &v1.url, Some(&v1.sha256), ""));
    let models = ns.api::<MLModel>();
    wait_for(&models, "iris", READY_TIMEOUT, ready_at_generation).await;
    let claim = ns
        .api::<PersistentVolumeClaim>()
        .get("iris-model")
        .await
        .expect("the model's claim");
    let volume = claim.spec.and_then(|s| s.volume_name).expect("a bound volume");
    let pv = kube::Api::<k8s_openapi::api::core::v1::PersistentVolume>::all(ns.client.clone());
    let path = pv
        .get(&volume)
        .await
        .expect("the volume")
        .spec
        .and_then(|s| s.host_path.map(|h| h.path).or(s.local.map(|l| l.path)))
        .expect("a local path");
    assert!(
        std::path::Path::new(&path).join("iris/1").is_dir(),
        "the model was unpacked into {path}"
    );

    models.delete("iris", &Default::default()).await.expect("delete");
    wait_for_deletion(&models, "iris", Duration::from_secs(120)).await;
    support::poll_until("every child gone", Duration::from_secs(60), || {
        let out = ns
            .kubectl()
            .args(["get", "deployments,jobs,services,pvc,pods", "-o", "name"])
            .output()
            .expect("kubectl get");
        async move { String::from_utf8_lossy(&out.stdout).trim().is_empty().then_some(()) }
    })
    .await;
    wait_for_deletion(&pv, &volume, Duration::from_secs(60)).await;
    support::poll_until("the volume's directory removed", Duration::from_secs(60), || {
        let gone = !std::path::Path::new(&path).exists();
        async move { gone.then_some(()) }
    })
    .await;
}

/// The host directory behind the model's volume (local-path makes it on the node, which is
/// this machine).
async fn volume_path(ns: &TestNamespace, claim: &str) -> std::path::PathBuf {
    let claim = ns
        .api::<PersistentVolumeClaim>()
        .get(claim)
        .await
        .expect("the model's claim");
    let volume = claim.spec.and_then(|s| s.volume_name).expect("a bound volume");
    let pv = kube::Api::<k8s_openapi::api::core::v1::PersistentVolume>::all(ns.client.clone());
    pv.get(&volume)
        .await
        .expect("the volume")
        .spec
        .and_then(|s| s.host_path.map(|h| h.path).or(s.local.map(|l| l.path)))
        .expect("a local path")
        .into()
}

/// What is on the volume: the model's version directories and any temporary directory.
fn on_volume(root: &std::path::Path, model: &str) -> Vec<String> {
    let list = |dir: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut found: Vec<String> = list(&root.join(model))
        .into_iter()
        .map(|v| format!("{model}/{v}"))
        .collect();
    found.extend(list(root).into_iter().filter(|n| n.starts_with(".tmp-")));
    found.sort();
    found
}

/// Successive updates to new artifacts: each download removes the versions no pod runs any
/// more, so the volume holds the serving version and the new one, never the history. (A pod
/// still terminating keeps its version until the next download after it is gone, so each
/// update here waits for the previous version's pods to go.)
#[tokio::test]
async fn successive_updates_keep_only_the_versions_in_use_on_the_volume() {
    let ns = setup("serve-prune").await;
    let (v1, v2) = (artifact("v1"), artifact("v2"));
    ns.apply_yaml(&model_yaml("iris", &v1.url, Some(&v1.sha256), ""));
    let models = ns.api::<MLModel>();
    wait_for(&models, "iris", READY_TIMEOUT, ready_at_generation).await;
    let root = volume_path(&ns, "iris-model").await;
    assert_eq!(on_volume(&root, "iris"), ["iris/1"]);

    // Each update is another artifact (the store ignores the query), so another download.
    let updates = [
        (format!("{}?update=2", v2.url), "v2", ["iris/1", "iris/2"]),
        (format!("{}?update=3", v1.url), "v1", ["iris/2", "iris/3"]),
        (format!("{}?update=4", v2.url), "v2", ["iris/3", "iris/4"]),
    ];
    for (generation, (url, answers, expected)) in (2..).zip(updates) {
        let spec = json!({ "spec": { "modelURL": url, "sha256": null } });
        models
            .patch("iris", &PatchParams::default(), &Patch::Merge(spec))
            .await
            .expect("update");
        let m = wait_for(&models, "iris", READY_TIMEOUT, |m| {
            ready_at_generation(m)
                && m.status.as_ref().and_then(|s| s.serving.as_ref()).map(|s| s.generation) == Some(generation)
        })
        .await;
        assert_eq!(m.metadata.generation, Some(generation));
        let pods = ns.api::<k8s_openapi::api::core::v1::Pod>();
        support::poll_until("only the new version's pods", Duration::from_secs(90), || {
            let pods = pods.clone();
            async move {
                let lp = kube::api::ListParams::default().labels("app.kubernetes.io/component=serving");
                let list = pods.list(&lp).await.ok()?.items;
                list.iter()
                    .all(|p| p.labels().get("mlmodel.oda.tmforum.org/version") == Some(&generation.to_string()))
                    .then_some(())
            }
        })
        .await;
        assert_eq!(
            on_volume(&root, "iris"),
            expected,
            "after update {generation}: the version that served during the download and the new one"
        );
        let address = service_address(&ns, "iris").await;
        support::poll_until(
            &format!("the Service answering with {answers}"),
            Duration::from_secs(30),
            || {
                let answer = infer(&address, "iris").ok().map(|(_, json)| answer_of(&json).0);
                async move { (answer.as_deref() == Some(answers)).then_some(()) }
            },
        )
        .await;
    }
}

/// One span of a trace as Jaeger's query API (`/api/traces/<id>`) returns it.
#[derive(Debug, Clone)]
struct JaegerSpan {
    id: String,
    parent: Option<String>,
    name: String,
    service: String,
    start: u64,
}

/// The spans of `trace_id` in the cluster's Jaeger, once `complete` holds for them.
async fn jaeger_trace(trace_id: &str, complete: impl Fn(&[JaegerSpan]) -> bool) -> Vec<JaegerSpan> {
    let url = format!("{}/api/traces/{trace_id}", real_node().jaeger_query);
    let mut last = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let out = Command::new("curl")
            .args(["-fsS", "--max-time", "5", &url])
            .output()
            .expect("curl");
        if out.status.success() {
            let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let trace = &json["data"][0];
            let spans: Vec<JaegerSpan> = trace["spans"]
                .as_array()
                .map(|spans| {
                    spans
                        .iter()
                        .map(|s| JaegerSpan {
                            id: s["spanID"].as_str().unwrap_or_default().to_owned(),
                            parent: s["references"]
                                .as_array()
                                .and_then(|r| r.iter().find(|r| r["refType"] == "CHILD_OF"))
                                .and_then(|r| r["spanID"].as_str())
                                .map(str::to_owned),
                            name: s["operationName"].as_str().unwrap_or_default().to_owned(),
                            service: trace["processes"][s["processID"].as_str().unwrap_or_default()]["serviceName"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                            start: s["startTime"].as_u64().unwrap_or_default(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            if complete(&spans) {
                return spans;
            }
            last = spans;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("trace {trace_id} incomplete in Jaeger after 60s: {last:#?}")
}

#[tokio::test]
async fn a_rollout_is_one_trace_in_jaeger_with_the_downloaders_spans_from_the_pod() {
    let ns = setup("serve-trace").await;
    let v1 = artifact("v1");
    ns.apply_yaml(&model_yaml("iris", &v1.url, Some(&v1.sha256), ""));
    let model = wait_for(&ns.api::<MLModel>(), "iris", READY_TIMEOUT, ready_at_generation).await;
    let trace_id = model
        .status
        .as_ref()
        .and_then(|s| s.trace_id.clone())
        .expect("status.traceId");

    let has = |spans: &[JaegerSpan], name: &str| spans.iter().any(|s| s.name == name);
    let spans = jaeger_trace(&trace_id, |spans| {
        ["mlmodel.ready", "download.unpack", "phase Serving"]
            .iter()
            .all(|n| has(spans, n))
    })
    .await;
    let one = |name: &str| -> &JaegerSpan {
        let found: Vec<&JaegerSpan> = spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "one {name} span in {spans:#?}");
        found[0]
    };
    let root = one("mlmodel.rollout");
    assert_eq!(
        (root.parent.as_deref(), root.service.as_str()),
        (None, "mlmodel-operator")
    );
    // The phases, in order, then the outcome, all children of the rollout.
    let mut top: Vec<&JaegerSpan> = spans
        .iter()
        .filter(|s| s.parent.as_deref() == Some(root.id.as_str()) && s.service == "mlmodel-operator")
        .collect();
    top.sort_by_key(|s| s.start);
    let names: Vec<&str> = top.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "phase CreatingStorage",
            "phase Downloading",
            "phase Serving",
            "mlmodel.ready"
        ],
        "the rollout's phases"
    );
    // The downloader ran in the Job's pod on the node and joined the same trace.
    let download = one("mlmodel.download");
    assert_eq!(
        (download.parent.as_deref(), download.service.as_str()),
        (Some(root.id.as_str()), "mlmodel-downloader")
    );
    for step in ["download.fetch", "download.verify", "download.unpack"] {
        let span = one(step);
        assert_eq!(span.service, "mlmodel-downloader");
        let mut ancestor = span.parent.clone();
        let mut chain = Vec::new();
        while let Some(id) = ancestor {
            let Some(parent) = spans.iter().find(|s| s.id == id) else {
                break;
            };
            chain.push(parent.name.clone());
            ancestor = parent.parent.clone();
        }
        assert!(
            chain.contains(&"mlmodel.download".to_owned())
                && chain.last().map(String::as_str) == Some("mlmodel.rollout"),
            "{step}: {chain:?}"
        );
    }

    // Found by service and model name, as a person searches.
    let search = format!(
        "{}/api/traces?service=mlmodel-operator&tags=%7B%22mlmodel.name%22%3A%22iris%22%2C%22k8s.namespace.name%22%3A%22{}%22%7D",
        real_node().jaeger_query,
        ns.name
    );
    let out = Command::new("curl")
        .args(["-fsS", "--max-time", "5", &search])
        .output()
        .expect("curl");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("search answer");
    let found: Vec<&str> = json["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["traceID"].as_str())
        .collect();
    assert_eq!(found, vec![trace_id.as_str()], "one trace for this model's one rollout");
}

//! Failures that tell the truth: each failure surface a user meets, with the phase, reason and
//! message they read in `kubectl describe`, recovery, and supervision of failing actors.

mod kubelet;
mod operator;
mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use mlmodel_operator::api::{MLModel, Phase};
use support::TestNamespace;

const TIMEOUT: Duration = Duration::from_secs(60);

async fn setup(prefix: &str) -> TestNamespace {
    operator::shared();
    support::namespace(prefix).await
}

fn yaml(name: &str, spec: &str) -> String {
    format!("apiVersion: oda.tmforum.org/v1beta1\nkind: MLModel\nmetadata:\n  name: {name}\nspec:\n{spec}")
}

fn held_server(name: &str, replicas: i32) -> String {
    yaml(
        name,
        &format!(
            "  modelURL: https://models.example.com/{name}.tar.gz\n  replicas: {replicas}\n  framework: custom\n  \
             runtime:\n    image: {}\n",
            kubelet::HELD_IMAGE
        ),
    )
}

fn phase(m: &MLModel) -> Option<Phase> {
    m.status.as_ref().and_then(|s| s.phase)
}

fn condition<'a>(m: &'a MLModel, type_: &str) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    m.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

/// What `kubectl describe mlmodel` prints.
fn describe(ns: &TestNamespace, name: &str) -> String {
    let out = ns
        .kubectl()
        .args(["describe", "mlmodel", name])
        .output()
        .expect("kubectl describe");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Serves 404 for everything on a loopback port; returns the base URL.
fn not_found_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    format!("http://{addr}")
}

/// Runs the real downloader as the download pod's container would, against a local server,
/// and returns the line it leaves in its termination log.
fn run_downloader(url: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("termination-log");
    let status = Command::new(env!("CARGO_BIN_EXE_mlmodel-operator"))
        .args([
            "download",
            "--url",
            url,
            "--model-name",
            "m",
            "--version",
            "1",
            "--retries",
            "0",
        ])
        .arg("--dest")
        .arg(dir.path())
        .arg("--termination-log")
        .arg(&log)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .status()
        .expect("run the downloader");
    assert!(!status.success(), "the download must fail");
    std::fs::read_to_string(&log)
        .expect("termination log")
        .trim()
        .to_owned()
}

#[tokio::test]
async fn a_failed_download_reports_the_downloaders_own_error() {
    let ns = setup("download-fails").await;
    let url = format!("{}/models/missing.tar.gz", not_found_server());
    let line = run_downloader(&url);
    assert!(line.starts_with("NotFound: HTTP 404 fetching"), "{line}");
    ns.apply_yaml(&yaml("missing", &format!("  modelURL: {}\n", kubelet::HELD_URL)));

    // The Job retries once (backoffLimit 1): both of its pods fail as the downloader would.
    let pods: Api<Pod> = ns.api();
    for attempt in 1..=2 {
        let all = kubelet::pods(&pods, "app.kubernetes.io/component=download", attempt).await;
        for pod in all
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Failed"))
        {
            kubelet::terminated(&pods, pod, 1, &line).await;
        }
    }
    support::wait_for(&ns.api::<Job>(), "missing-download-1", TIMEOUT, |j| {
        j.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Failed"))
    })
    .await;
    let m = support::wait_for(&ns.api::<MLModel>(), "missing", TIMEOUT, |m| {
        phase(m) == Some(Phase::Failed)
    })
    .await;
    let failure = m.status.as_ref().unwrap().last_failure.clone().unwrap();
    assert_eq!(failure.reason, "DownloadFailed");
    assert_eq!(failure.message, format!("download failed: {line}"));
    let ready = condition(&m, "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "DownloadFailed")
    );
    let text = describe(&ns, "missing");
    assert!(
        text.contains("NotFound: HTTP 404 fetching"),
        "describe shows the downloader's line:\n{text}"
    );
    assert!(
        text.contains("DownloadFailed"),
        "a Warning Event names the reason:\n{text}"
    );
}

#[tokio::test]
async fn an_image_that_cannot_be_pulled_fails_after_the_grace_period_and_recovery_returns_to_ready() {
    let ns = setup("image-pull").await;
    ns.apply_yaml(&held_server("pull", 1));
    let pods: Api<Pod> = ns.api();
    let pod = kubelet::pods(&pods, "app.kubernetes.io/component=serving", 1)
        .await
        .remove(0);
    kubelet::waiting(
        &pods,
        &pod,
        "ImagePullBackOff",
        "Back-off pulling image \"kubelet.test/model-server:1\"",
    )
    .await;
    let models = ns.api::<MLModel>();
    let m = support::wait_for(&models, "pull", TIMEOUT, |m| phase(m) == Some(Phase::Failed)).await;
    let failure = m.status.unwrap().last_failure.unwrap();
    assert_eq!(failure.reason, "ImagePullBackOff");
    assert!(
        failure.message.contains("kubelet.test/model-server:1"),
        "{}",
        failure.message
    );

    // The image becomes pullable: the pod starts and the model is Ready again.
    kubelet::ready(&pods, &pod).await;
    let m = support::wait_for(&models, "pull", TIMEOUT, |m| phase(m) == Some(Phase::Ready)).await;
    assert_eq!(m.status.unwrap().ready.as_deref(), Some("1/1"));
}

#[tokio::test]
async fn a_crash_loop_fails_with_the_last_exit_reason_and_code() {
    let ns = setup("crash").await;
    ns.apply_yaml(&held_server("crash", 1));
    let pods: Api<Pod> = ns.api();
    let pod = kubelet::pods(&pods, "app.kubernetes.io/component=serving", 1)
        .await
        .remove(0);
    kubelet::crash_looping(&pods, &pod, 4, "Error", 3, "could not load saved_model.pb").await;
    let m = support::wait_for(&ns.api::<MLModel>(), "crash", TIMEOUT, |m| {
        phase(m) == Some(Phase::Failed)
    })
    .await;
    let failure = m.status.unwrap().last_failure.unwrap();
    assert_eq!(failure.reason, "CrashLoopBackOff");
    for part in [
        "after 4 restarts",
        "Error (exit code 3)",
        "could not load saved_model.pb",
    ] {
        assert!(failure.message.contains(part), "{part:?} in {:?}", failure.message);
    }
    let text = describe(&ns, "crash");
    assert!(text.contains("CrashLoopBackOff"), "{text}");
}

#[tokio::test]
async fn an_out_of_memory_kill_is_named_as_such() {
    let ns = setup("oom").await;
    ns.apply_yaml(&held_server("oom", 1));
    let pods: Api<Pod> = ns.api();
    let pod = kubelet::pods(&pods, "app.kubernetes.io/component=serving", 1)
        .await
        .remove(0);
    kubelet::crash_looping(&pods, &pod, 3, "OOMKilled", 137, "").await;
    let m = support::wait_for(&ns.api::<MLModel>(), "oom", TIMEOUT, |m| {
        phase(m) == Some(Phase::Failed)
    })
    .await;
    let failure = m.status.unwrap().last_failure.unwrap();
    assert_eq!(failure.reason, "OOMKilled");
    assert!(failure.message.contains("exit code 137"), "{}", failure.message);
}

#[tokio::test]
async fn some_failing_replicas_make_the_model_degraded_not_failed() {
    let ns = setup("degraded").await;
    ns.apply_yaml(&held_server("half", 2));
    let pods: Api<Pod> = ns.api();
    let serving = kubelet::pods(&pods, "app.kubernetes.io/component=serving", 2).await;
    kubelet::ready(&pods, &serving[0]).await;
    kubelet::crash_looping(&pods, &serving[1], 5, "Error", 1, "segfault").await;
    let models = ns.api::<MLModel>();
    let m = support::wait_for(&models, "half", TIMEOUT, |m| {
        condition(m, "Degraded").is_some_and(|c| c.status == "True")
    })
    .await;
    assert_eq!(phase(&m), Some(Phase::Serving), "serving, not Failed");
    assert_eq!(condition(&m, "Available").unwrap().status, "True");
    assert_eq!(condition(&m, "Degraded").unwrap().reason, "CrashLoopBackOff");
    assert_eq!(m.status.as_ref().unwrap().ready.as_deref(), Some("1/2"));
    // Held for a while, it stays degraded and never turns Failed.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(phase(&models.get("half").await.unwrap()), Some(Phase::Serving));
}

#[cfg(feature = "fault-injection")]
#[tokio::test]
async fn a_panicking_actor_is_restarted_then_the_model_fails_with_controller_error() {
    use kube::api::{Patch, PatchParams};
    let ns = setup("supervision").await;
    ns.apply_yaml(&yaml(
        "healthy",
        "  modelURL: https://models.example.com/healthy.tar.gz\n",
    ));
    let faulty = yaml("faulty", "  modelURL: https://models.example.com/faulty.tar.gz\n").replace(
        "  name: faulty\n",
        "  name: faulty\n  annotations:\n    mlmodel.oda.tmforum.org/inject-fault: panic\n",
    );
    ns.apply_yaml(&faulty);
    let models = ns.api::<MLModel>();
    let m = support::wait_for(&models, "faulty", TIMEOUT, |m| phase(m) == Some(Phase::Failed)).await;
    let failure = m.status.unwrap().last_failure.unwrap();
    assert_eq!(failure.reason, "ControllerError");
    assert!(failure.message.contains("failed 3 times"), "{}", failure.message);
    assert!(failure.message.contains("fault injected"), "{}", failure.message);
    // The other model is untouched by its neighbour's failures.
    support::wait_for(&models, "healthy", TIMEOUT, |m| phase(m) == Some(Phase::Ready)).await;
    // It stays Failed (no retry loop) until the spec changes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(phase(&models.get("faulty").await.unwrap()), Some(Phase::Failed));
    let fix = serde_json::json!({
        "metadata": {"annotations": {"mlmodel.oda.tmforum.org/inject-fault": null}},
        "spec": {"replicas": 2}
    });
    models
        .patch("faulty", &PatchParams::default(), &Patch::Merge(&fix))
        .await
        .unwrap();
    let m = support::wait_for(&models, "faulty", TIMEOUT, |m| phase(m) == Some(Phase::Ready)).await;
    assert_eq!(m.status.unwrap().observed_generation, Some(2));
}

/// A ResourceQuota that refuses the download Job: the model says so in the API server's words
/// (reason `QuotaExceeded`) while the operator keeps trying, and goes on by itself once the
/// quota is raised.
#[tokio::test]
async fn a_quota_that_refuses_the_job_is_reported_and_clears_when_raised() {
    use k8s_openapi::api::core::v1::ResourceQuota;
    use kube::api::{Patch, PatchParams};

    let ns = setup("quota").await;
    ns.apply_yaml(
        "apiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: jobs\nspec:\n  hard:\n    count/jobs.batch: \"0\"\n",
    );
    // Admission only enforces a quota once the quota controller has computed its usage.
    support::wait_for(&ns.api::<ResourceQuota>(), "jobs", TIMEOUT, |q| {
        q.status.as_ref().and_then(|s| s.hard.as_ref()).is_some()
    })
    .await;
    ns.apply_yaml(&held_server("quota", 1));
    let models = ns.api::<MLModel>();
    let m = support::wait_for(&models, "quota", TIMEOUT, |m| phase(m) == Some(Phase::Failed)).await;
    let failure = m.status.as_ref().unwrap().last_failure.clone().unwrap();
    assert_eq!(failure.reason, "QuotaExceeded", "{failure:?}");
    assert!(
        failure
            .message
            .contains("exceeded quota: jobs, requested: count/jobs.batch=1"),
        "{failure:?}"
    );
    let ready = condition(&m, "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "QuotaExceeded")
    );
    assert!(describe(&ns, "quota").contains("QuotaExceeded"));

    ns.api::<ResourceQuota>()
        .patch(
            "jobs",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": { "hard": { "count/jobs.batch": "1" } } })),
        )
        .await
        .unwrap();
    let m = support::wait_for(&models, "quota", TIMEOUT, |m| {
        matches!(phase(m), Some(Phase::Downloading | Phase::Serving | Phase::Ready))
    })
    .await;
    assert!(
        ns.api::<Job>().get_opt("quota-download-1").await.unwrap().is_some(),
        "{:?}",
        m.status
    );
}

/// A volume the kubelet cannot mount: the model waits through the grace, then fails quoting
/// the kubelet's Event, and is Ready again once the pod starts.
#[tokio::test]
async fn a_volume_that_cannot_be_mounted_fails_in_the_kubelets_words_and_recovers() {
    let ns = setup("mount").await;
    ns.apply_yaml(&held_server("mount", 1));
    let pods: Api<Pod> = ns.api();
    let pod = kubelet::pods(&pods, "app.kubernetes.io/component=serving", 1)
        .await
        .remove(0);
    let mount = "MountVolume.SetUp failed for volume \"model\" : mount failed: exit status 32";
    kubelet::warning_event(ns.client.clone(), &pod, "FailedMount", mount).await;
    let models = ns.api::<MLModel>();
    let m = support::wait_for(&models, "mount", TIMEOUT, |m| phase(m) == Some(Phase::Failed)).await;
    let failure = m.status.as_ref().unwrap().last_failure.clone().unwrap();
    assert_eq!(failure.reason, "FailedMount");
    assert_eq!(
        failure.message,
        format!(
            "pod {}: cannot start: FailedMount: {mount}",
            kube::ResourceExt::name_any(&pod)
        )
    );
    assert!(describe(&ns, "mount").contains("FailedMount"));

    kubelet::ready(&pods, &pod).await;
    let m = support::wait_for(&models, "mount", TIMEOUT, |m| phase(m) == Some(Phase::Ready)).await;
    assert_eq!(m.status.unwrap().ready.as_deref(), Some("1/1"));
}

/// A quota that refuses the download Job's pod (not the Job): the Job controller says so only
/// in an Event; the model quotes it (reason `QuotaExceeded`) and goes on once the quota is
/// raised.
#[tokio::test]
async fn a_quota_that_refuses_the_download_pod_is_reported_and_clears_when_raised() {
    use k8s_openapi::api::core::v1::ResourceQuota;
    use kube::api::{Patch, PatchParams};

    let ns = setup("pod-quota").await;
    ns.apply_yaml("apiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: pods\nspec:\n  hard:\n    pods: \"0\"\n");
    support::wait_for(&ns.api::<ResourceQuota>(), "pods", TIMEOUT, |q| {
        q.status.as_ref().and_then(|s| s.hard.as_ref()).is_some()
    })
    .await;
    ns.apply_yaml(&held_server("podquota", 1));
    let models = ns.api::<MLModel>();
    let m = support::wait_for(&models, "podquota", TIMEOUT, |m| phase(m) == Some(Phase::Failed)).await;
    let failure = m.status.as_ref().unwrap().last_failure.clone().unwrap();
    assert_eq!(failure.reason, "QuotaExceeded", "{failure:?}");
    assert!(
        failure
            .message
            .starts_with("download Job podquota-download-1: cannot create its pod: Error creating: pods ")
            && failure.message.contains("exceeded quota: pods, requested: pods=1"),
        "{failure:?}"
    );

    ns.api::<ResourceQuota>()
        .patch(
            "pods",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": { "hard": { "pods": "5" } } })),
        )
        .await
        .unwrap();
    // The Job controller retries with its own backoff; the download pod then runs and the
    // serving pod is created (held: kwok never starts it).
    let m = support::wait_for(&models, "podquota", Duration::from_secs(120), |m| {
        matches!(phase(m), Some(Phase::Serving | Phase::Ready))
    })
    .await;
    assert!(
        m.status
            .unwrap()
            .last_failure
            .is_some_and(|f| f.reason == "QuotaExceeded")
    );
}

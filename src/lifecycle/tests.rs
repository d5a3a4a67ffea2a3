//! Table-driven tests of the lifecycle core.
//!
//! Every test builds a model and what is observed of its children from plain values, calls the
//! core and checks the actions, the phase, the conditions and the wake-up it asks for. Read
//! top to bottom they describe the lifecycle: storage, download, serving, failures, spec
//! changes, invalid specs and deletion, then the Events and the observation of API objects.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, PersistentVolumeClaim,
    PersistentVolumeClaimStatus, Pod, PodCondition, PodStatus, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::observe::{self, DeploymentObs, JobObs, PvcObs, ServiceObs, Terminated};
use super::{
    Action, ChildRef, Decision, Observed, PodObs, Settings, child_label, decide, failed_status, reason, target_version,
    transition_event, validate,
};
use crate::api::{FINALIZER, Failure, Framework, MLModel, MLModelSpec, MLModelStatus, Phase, RuntimeOverride};
use crate::resources::{self, BuildSettings, DownloadContext};

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

const URL: &str = "https://models.example.com/iris.tar.gz";
const SERVER_IMAGE: &str = "docker.io/tensorflow/serving:9.9.9";
const ENDPOINT: &str = "iris.ml.svc.cluster.local:8501";

/// `secs` seconds after the fixed instant the tests call "now" (negative: before it).
fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + secs).unwrap()
}

fn now() -> Timestamp {
    at(0)
}

fn ago(secs: i64) -> Timestamp {
    at(-secs)
}

fn settings() -> Settings {
    Settings::default()
}

/// The model `ml/iris` at generation 1, with the cleanup finalizer and no status.
fn model() -> MLModel {
    let mut m = MLModel::new(
        "iris",
        MLModelSpec {
            model_url: URL.to_owned(),
            storage_size: "1Gi".to_owned(),
            framework: Framework::Tensorflow,
            replicas: 1,
            expose: true,
            sha256: None,
            credentials: None,
            runtime: None,
            download: None,
            storage: None,
        },
    );
    m.metadata.namespace = Some("ml".to_owned());
    m.metadata.uid = Some("0b0c7a52-iris".to_owned());
    m.metadata.generation = Some(1);
    m.metadata.finalizers = Some(vec![FINALIZER.to_owned()]);
    m
}

/// The same model at a later generation whose status is `previous`.
fn next_generation(m: &MLModel, previous: MLModelStatus) -> MLModel {
    let mut next = m.clone();
    next.metadata.generation = Some(m.metadata.generation.unwrap_or(1) + 1);
    next.status = Some(previous);
    next
}

fn with_status(m: &MLModel, status: MLModelStatus) -> MLModel {
    let mut m = m.clone();
    m.status = Some(status);
    m
}

/// Nothing observed yet.
fn nothing() -> Observed {
    Observed {
        now: now(),
        ..Default::default()
    }
}

fn pvc(phase: &str) -> Option<PvcObs> {
    Some(PvcObs {
        phase: phase.to_owned(),
        deleting: false,
    })
}

/// A running download Job of `version` fetching `m`'s current source.
fn running_job(m: &MLModel, version: i64) -> JobObs {
    JobObs {
        name: resources::job_name("iris", version),
        version,
        source: Some(resources::source_digest(m)),
        succeeded: false,
        failed: None,
        deleting: false,
    }
}

fn succeeded_job(m: &MLModel, version: i64) -> JobObs {
    JobObs {
        succeeded: true,
        ..running_job(m, version)
    }
}

fn failed_job(m: &MLModel, version: i64) -> JobObs {
    JobObs {
        failed: Some((
            "BackoffLimitExceeded".to_owned(),
            "Job has reached the specified backoff limit".to_owned(),
        )),
        ..running_job(m, version)
    }
}

/// The Deployment as the operator applied it for `m` serving `version`: up to date.
fn deployment_of(m: &MLModel, version: i64) -> DeploymentObs {
    let desired = resources::with_spec_hash(resources::serving_deployment(m, version));
    DeploymentObs {
        version: Some(version),
        spec_hash: resources::spec_hash(&desired).cloned(),
        ready_replicas: 0,
        deleting: false,
    }
}

/// The Service as the operator applied it for `m`: up to date.
fn service_of(m: &MLModel) -> ServiceObs {
    let desired = resources::with_spec_hash(resources::service(m));
    ServiceObs {
        spec_hash: resources::spec_hash(&desired).cloned(),
        deleting: false,
    }
}

/// A serving pod of `version`, running for a minute, not ready yet.
fn pod(name: &str, version: i64) -> PodObs {
    PodObs {
        name: name.to_owned(),
        download: false,
        version: Some(version),
        phase: "Running".to_owned(),
        ready: false,
        deleting: false,
        created: Some(ago(60)),
        unschedulable: None,
        waiting: None,
        terminated: None,
        restarts: 0,
    }
}

fn ready_pod(name: &str, version: i64) -> PodObs {
    PodObs {
        ready: true,
        ..pod(name, version)
    }
}

/// A pod of the download Job of `version`.
fn download_pod(name: &str, version: i64) -> PodObs {
    PodObs {
        download: true,
        ..pod(name, version)
    }
}

fn waiting(reason: &str, message: &str) -> Option<(String, String, String, String)> {
    Some((
        "server".to_owned(),
        reason.to_owned(),
        message.to_owned(),
        SERVER_IMAGE.to_owned(),
    ))
}

fn exited(reason: &str, exit_code: i32, message: &str) -> Option<Terminated> {
    Some(Terminated {
        container: "server".to_owned(),
        reason: reason.to_owned(),
        exit_code,
        message: message.to_owned(),
    })
}

/// A serving pod in CrashLoopBackOff after `restarts` restarts, its last exit `last_exit`.
fn crash_looping(name: &str, restarts: i32, last_exit: (&str, i32)) -> PodObs {
    PodObs {
        waiting: waiting("CrashLoopBackOff", "back-off 40s restarting failed container"),
        terminated: exited(last_exit.0, last_exit.1, ""),
        restarts,
        ..pod(name, 1)
    }
}

/// Everything `m` needs to serve `version` exists and is up to date; `pods` are the pods.
fn serving(m: &MLModel, version: i64, pods: Vec<PodObs>) -> Observed {
    Observed {
        pvc: pvc("Bound"),
        jobs: vec![succeeded_job(m, version)],
        pods,
        deployment: Some(deployment_of(m, version)),
        service: m.spec.expose.then(|| service_of(m)),
        now: now(),
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the decision
// ---------------------------------------------------------------------------------------------

/// The actions in words: `ApplyJob iris-download-1`, `Delete job/iris-download-1`, ...
fn summary(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .map(|a| match a {
            Action::AddFinalizer => "AddFinalizer".to_owned(),
            Action::RemoveFinalizer => "RemoveFinalizer".to_owned(),
            Action::ApplyPvc(p) => format!("ApplyPvc {}", p.name_any()),
            Action::ApplyJob(j) => format!("ApplyJob {}", j.name_any()),
            Action::ApplyDeployment(d) => format!("ApplyDeployment {}", d.name_any()),
            Action::ApplyService(s) => format!("ApplyService {}", s.name_any()),
            Action::Delete(c) => format!("Delete {}", child_label(c)),
            Action::ForceDelete(c) => format!("ForceDelete {}", child_label(c)),
        })
        .collect()
}

fn condition<'a>(status: &'a MLModelStatus, type_: &str) -> &'a Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {:#?}", status.conditions))
}

/// `(type, status)` of every condition, in the order the status lists them.
fn conditions(status: &MLModelStatus) -> Vec<(&str, &str)> {
    status
        .conditions
        .iter()
        .map(|c| (c.type_.as_str(), c.status.as_str()))
        .collect()
}

fn message(d: &Decision) -> &str {
    d.status.message.as_deref().unwrap_or("")
}

fn last_failure(d: &Decision) -> &Failure {
    d.status.last_failure.as_ref().expect("lastFailure is set")
}

fn applied_job(d: &Decision) -> &Job {
    d.actions
        .iter()
        .find_map(|a| match a {
            Action::ApplyJob(j) => Some(&**j),
            _ => None,
        })
        .expect("an ApplyJob action")
}

fn applied_deployment(d: &Decision) -> &Deployment {
    d.actions
        .iter()
        .find_map(|a| match a {
            Action::ApplyDeployment(d) => Some(&**d),
            _ => None,
        })
        .expect("an ApplyDeployment action")
}

fn applied_service(d: &Decision) -> &Service {
    d.actions
        .iter()
        .find_map(|a| match a {
            Action::ApplyService(s) => Some(&**s),
            _ => None,
        })
        .expect("an ApplyService action")
}

fn template_version(d: &Deployment) -> Option<&str> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .labels
        .as_ref()?
        .get(resources::VERSION_LABEL)
        .map(String::as_str)
}

fn secs(s: u64) -> Option<Duration> {
    Some(Duration::from_secs(s))
}

// ---------------------------------------------------------------------------------------------
// Creation: finalizer, storage, download, serving
// ---------------------------------------------------------------------------------------------

#[test]
fn a_new_model_gets_the_finalizer_and_its_volume() {
    let mut m = model();
    m.metadata.finalizers = None;
    m.metadata.generation = Some(3);

    let d = decide(&m, &nothing(), &settings());

    assert_eq!(
        summary(&d.actions),
        ["AddFinalizer", "ApplyPvc iris-model", "ApplyJob iris-download-3"],
        "the claim and the download Job are created in one pass"
    );
    assert_eq!(d.status.phase, Some(Phase::CreatingStorage));
    assert_eq!(d.status.observed_generation, Some(3));
    assert_eq!(
        conditions(&d.status),
        [("Ready", "False"), ("Downloaded", "False"), ("Available", "False")]
    );
    assert!(d.status.conditions.iter().all(|c| c.observed_generation == Some(3)));
    assert!(
        d.status
            .conditions
            .iter()
            .all(|c| c.last_transition_time == Time(now()))
    );
    assert_eq!(d.requeue_after, None);

    let Some(Action::ApplyPvc(claim)) = d.actions.get(1) else {
        panic!("second action is ApplyPvc")
    };
    assert_eq!(claim.namespace().as_deref(), Some("ml"));
    assert_eq!(claim.owner_references()[0].uid, "0b0c7a52-iris");
    let requests = claim
        .spec
        .as_ref()
        .unwrap()
        .resources
        .as_ref()
        .unwrap()
        .requests
        .as_ref()
        .unwrap();
    assert_eq!(requests["storage"].0, "1Gi");
}

/// One row per step of a first rollout: what is observed, what the core does about it.
#[test]
fn a_first_rollout_goes_through_storage_download_and_serving() {
    struct Case {
        name: &'static str,
        observed: Observed,
        actions: &'static [&'static str],
        phase: Phase,
        reason: &'static str,
        message: &'static str,
        downloaded: &'static str,
    }
    let m = model();
    let cases = [
        Case {
            name: "no volume yet",
            observed: nothing(),
            actions: &["ApplyPvc iris-model", "ApplyJob iris-download-1"],
            phase: Phase::CreatingStorage,
            reason: "CreatingStorage",
            message: "creating the model's volume",
            downloaded: "False",
        },
        Case {
            name: "volume pending: the Job starts, since a WaitForFirstConsumer claim binds only for a pod",
            observed: Observed {
                pvc: pvc("Pending"),
                ..nothing()
            },
            actions: &["ApplyJob iris-download-1"],
            phase: Phase::CreatingStorage,
            reason: "CreatingStorage",
            message: "waiting for volume iris-model to be bound (it is Pending)",
            downloaded: "False",
        },
        Case {
            name: "volume pending, Job created",
            observed: Observed {
                pvc: pvc("Pending"),
                jobs: vec![running_job(&m, 1)],
                pods: vec![PodObs {
                    phase: "Pending".to_owned(),
                    ..download_pod("iris-download-1-x7k2p", 1)
                }],
                ..nothing()
            },
            actions: &[],
            phase: Phase::CreatingStorage,
            reason: "CreatingStorage",
            message: "waiting for volume iris-model to be bound (it is Pending)",
            downloaded: "False",
        },
        Case {
            name: "volume bound, no Job",
            observed: Observed {
                pvc: pvc("Bound"),
                ..nothing()
            },
            actions: &["ApplyJob iris-download-1"],
            phase: Phase::Downloading,
            reason: "Downloading",
            message: "downloading https://models.example.com/iris.tar.gz",
            downloaded: "False",
        },
        Case {
            name: "Job created, its pod pending",
            observed: Observed {
                pvc: pvc("Bound"),
                jobs: vec![running_job(&m, 1)],
                pods: vec![PodObs {
                    phase: "Pending".to_owned(),
                    ..download_pod("iris-download-1-x7k2p", 1)
                }],
                ..nothing()
            },
            actions: &[],
            phase: Phase::Downloading,
            reason: "Downloading",
            message: "downloading https://models.example.com/iris.tar.gz",
            downloaded: "False",
        },
        Case {
            name: "Job running",
            observed: Observed {
                pvc: pvc("Bound"),
                jobs: vec![running_job(&m, 1)],
                pods: vec![download_pod("iris-download-1-x7k2p", 1)],
                ..nothing()
            },
            actions: &[],
            phase: Phase::Downloading,
            reason: "Downloading",
            message: "downloading https://models.example.com/iris.tar.gz",
            downloaded: "False",
        },
        Case {
            name: "Job succeeded",
            observed: Observed {
                pvc: pvc("Bound"),
                jobs: vec![succeeded_job(&m, 1)],
                ..nothing()
            },
            actions: &["ApplyDeployment iris-serving", "ApplyService iris"],
            phase: Phase::Serving,
            reason: "Progressing",
            message: "starting version 1: 0/1 pods ready",
            downloaded: "True",
        },
        Case {
            name: "Deployment applied, pod starting",
            observed: serving(&m, 1, vec![pod("iris-serving-5d9f-abcde", 1)]),
            actions: &[],
            phase: Phase::Serving,
            reason: "Progressing",
            message: "starting version 1: 0/1 pods ready",
            downloaded: "True",
        },
        Case {
            name: "pod ready",
            observed: serving(&m, 1, vec![ready_pod("iris-serving-5d9f-abcde", 1)]),
            actions: &[],
            phase: Phase::Ready,
            reason: "Ready",
            message: "serving version 1: 1/1 pods ready",
            downloaded: "True",
        },
    ];
    for case in cases {
        let d = decide(&m, &case.observed, &settings());
        assert_eq!(summary(&d.actions), case.actions, "{}: actions", case.name);
        assert_eq!(d.status.phase, Some(case.phase), "{}: phase", case.name);
        assert_eq!(
            condition(&d.status, "Ready").reason,
            case.reason,
            "{}: reason",
            case.name
        );
        assert_eq!(message(&d), case.message, "{}: message", case.name);
        assert_eq!(
            condition(&d.status, "Downloaded").status,
            case.downloaded,
            "{}: Downloaded",
            case.name
        );
        assert_eq!(d.status.observed_generation, Some(1), "{}", case.name);
        assert_eq!(d.requeue_after, None, "{}: requeue", case.name);
    }
}

#[test]
fn the_download_job_is_named_after_the_generation_it_downloads() {
    let mut m = model();
    m.metadata.generation = Some(4);
    let observed = Observed {
        pvc: pvc("Bound"),
        ..nothing()
    };

    let d = decide(&m, &observed, &settings());

    assert_eq!(summary(&d.actions), ["ApplyJob iris-download-4"]);
    let job = applied_job(&d);
    assert_eq!(job.labels()[resources::VERSION_LABEL], "4");
    assert_eq!(
        job.annotations()[resources::SOURCE_ANNOTATION],
        resources::source_digest(&m)
    );
    assert_eq!(job.owner_references()[0].uid, "0b0c7a52-iris");
    assert_eq!(condition(&d.status, "Available").reason, "NotServing");
}

#[test]
fn the_download_job_continues_the_rollout_trace() {
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let m = with_status(
        &model(),
        MLModelStatus {
            traceparent: Some(traceparent.to_owned()),
            ..Default::default()
        },
    );
    let observed = Observed {
        pvc: pvc("Bound"),
        ..nothing()
    };

    let d = decide(&m, &observed, &settings());

    let env = applied_job(&d)
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .env
        .clone()
        .unwrap();
    assert!(
        env.iter()
            .any(|e| e.name == "TRACEPARENT" && e.value.as_deref() == Some(traceparent))
    );
    assert_eq!(d.status.traceparent.as_deref(), Some(traceparent));
}

#[test]
fn credentials_in_a_signed_url_never_reach_the_status() {
    let mut m = model();
    m.spec.model_url = "https://h.example/m.tar.gz?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA".to_owned();
    let downloading = Observed {
        pvc: pvc("Bound"),
        ..nothing()
    };
    let d = decide(&m, &downloading, &settings());
    assert_eq!(message(&d), "downloading https://h.example/m.tar.gz");

    let d = decide(&m, &serving(&m, 1, vec![ready_pod("iris-serving-a", 1)]), &settings());
    assert_eq!(d.status.phase, Some(Phase::Ready));
    let serving = d.status.serving.expect("serving is set");
    assert_eq!(serving.model_url, "https://h.example/m.tar.gz");
}

// ---------------------------------------------------------------------------------------------
// Download problems
// ---------------------------------------------------------------------------------------------

/// A download pod that cannot run: fatal past its grace period, a wake-up at its end otherwise.
#[test]
fn download_pod_problems_fail_the_model_after_their_grace_period() {
    struct Case {
        name: &'static str,
        pod: PodObs,
        phase: Phase,
        reason: &'static str,
        message: &'static str,
        requeue: Option<Duration>,
    }
    let unschedulable =
        |since: Option<Timestamp>| Some(("0/3 nodes are available: 3 Insufficient memory.".to_owned(), since));
    let cases = [
        Case {
            name: "unschedulable for 40s, grace 30s",
            pod: PodObs {
                phase: "Pending".to_owned(),
                unschedulable: unschedulable(Some(ago(40))),
                ..download_pod("iris-download-1-x7k2p", 1)
            },
            phase: Phase::Failed,
            reason: "Unschedulable",
            message: "download Job iris-download-1: pod iris-download-1-x7k2p: 0/3 nodes are available: 3 Insufficient memory.",
            requeue: None,
        },
        Case {
            name: "unschedulable for 10s, grace 30s",
            pod: PodObs {
                phase: "Pending".to_owned(),
                unschedulable: unschedulable(Some(ago(10))),
                ..download_pod("iris-download-1-x7k2p", 1)
            },
            phase: Phase::Downloading,
            reason: "Unschedulable",
            message: "download Job iris-download-1: pod iris-download-1-x7k2p: 0/3 nodes are available: 3 Insufficient memory.",
            requeue: secs(20 + 1),
        },
        Case {
            name: "unschedulable since unknown, pod created 45s ago",
            pod: PodObs {
                phase: "Pending".to_owned(),
                created: Some(ago(45)),
                unschedulable: unschedulable(None),
                ..download_pod("iris-download-1-x7k2p", 1)
            },
            phase: Phase::Failed,
            reason: "Unschedulable",
            message: "download Job iris-download-1: pod iris-download-1-x7k2p: 0/3 nodes are available: 3 Insufficient memory.",
            requeue: None,
        },
        Case {
            name: "downloader image not pulled for 150s, grace 120s",
            pod: PodObs {
                phase: "Pending".to_owned(),
                created: Some(ago(150)),
                waiting: waiting("ImagePullBackOff", "Back-off pulling image"),
                ..download_pod("iris-download-1-x7k2p", 1)
            },
            phase: Phase::Failed,
            reason: "ImagePullBackOff",
            message: "download Job iris-download-1: pod iris-download-1-x7k2p: container server cannot pull image docker.io/tensorflow/serving:9.9.9: ImagePullBackOff: Back-off pulling image",
            requeue: None,
        },
    ];
    let m = model();
    for case in cases {
        let observed = Observed {
            pvc: pvc("Bound"),
            jobs: vec![running_job(&m, 1)],
            pods: vec![case.pod],
            ..nothing()
        };
        let d = decide(&m, &observed, &settings());
        assert!(d.actions.is_empty(), "{}: {:?}", case.name, summary(&d.actions));
        assert_eq!(d.status.phase, Some(case.phase), "{}: phase", case.name);
        assert_eq!(condition(&d.status, "Ready").reason, case.reason, "{}", case.name);
        assert_eq!(message(&d), case.message, "{}: message", case.name);
        assert_eq!(condition(&d.status, "Downloaded").status, "False", "{}", case.name);
        assert_eq!(d.requeue_after, case.requeue, "{}: requeue", case.name);
        let failed = case.phase == Phase::Failed;
        assert_eq!(d.status.last_failure.is_some(), failed, "{}: lastFailure", case.name);
    }
}

#[test]
fn an_unbound_volume_does_not_hide_a_failed_download() {
    let m = model();
    let cases = [
        (
            "download pod unschedulable past its grace",
            running_job(&m, 1),
            PodObs {
                phase: "Pending".to_owned(),
                unschedulable: Some((
                    "0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims.".to_owned(),
                    Some(ago(45)),
                )),
                ..download_pod("iris-download-1-x7k2p", 1)
            },
            "Unschedulable",
        ),
        (
            "Job failed",
            failed_job(&m, 1),
            download_pod("iris-download-1-x7k2p", 1),
            "DownloadFailed",
        ),
    ];
    for (name, job, pod, reason) in cases {
        let observed = Observed {
            pvc: pvc("Pending"),
            jobs: vec![job],
            pods: vec![pod],
            ..nothing()
        };
        let d = decide(&m, &observed, &settings());
        assert_eq!(d.status.phase, Some(Phase::Failed), "{name}");
        assert_eq!(last_failure(&d).reason, reason, "{name}");
    }
}

#[test]
fn a_failed_download_reports_the_downloaders_termination_message() {
    let m = model();
    let observed = Observed {
        pvc: pvc("Bound"),
        jobs: vec![failed_job(&m, 1)],
        pods: vec![PodObs {
            phase: "Failed".to_owned(),
            terminated: exited("Error", 1, "NotFound: HTTP 404 fetching https://h/m.tar.gz\n"),
            ..download_pod("iris-download-1-x7k2p", 1)
        }],
        ..nothing()
    };

    let d = decide(&m, &observed, &settings());

    assert!(d.actions.is_empty(), "{:?}", summary(&d.actions));
    assert_eq!(d.status.phase, Some(Phase::Failed));
    assert_eq!(
        message(&d),
        "download failed: NotFound: HTTP 404 fetching https://h/m.tar.gz"
    );
    let failure = last_failure(&d);
    assert_eq!(failure.reason, "DownloadFailed");
    assert!(
        failure
            .message
            .contains("NotFound: HTTP 404 fetching https://h/m.tar.gz")
    );
    assert_eq!(failure.time, Time(now()));
    let downloaded = condition(&d.status, "Downloaded");
    assert_eq!(
        (downloaded.status.as_str(), downloaded.reason.as_str()),
        ("False", "DownloadFailed")
    );
    assert_eq!(condition(&d.status, "Ready").reason, "DownloadFailed");
}

#[test]
fn a_failed_download_message_comes_from_the_newest_attempt_or_the_job() {
    struct Case {
        name: &'static str,
        pods: Vec<PodObs>,
        message: &'static str,
    }
    let attempt = |name: &str, created: i64, code: i32, message: &str| PodObs {
        phase: "Failed".to_owned(),
        created: Some(ago(created)),
        terminated: exited("Error", code, message),
        ..download_pod(name, 1)
    };
    let cases = [
        Case {
            name: "the newest attempt's line wins",
            pods: vec![
                attempt(
                    "iris-download-1-bbbbb",
                    30,
                    1,
                    "NotFound: HTTP 404 fetching https://h/m.tar.gz",
                ),
                attempt("iris-download-1-aaaaa", 90, 1, "Timeout: no answer from h in 30s"),
            ],
            message: "download failed: NotFound: HTTP 404 fetching https://h/m.tar.gz",
        },
        Case {
            name: "only the first non-blank line",
            pods: vec![attempt(
                "iris-download-1-aaaaa",
                30,
                1,
                "\n  ChecksumMismatch: expected ab12, got cd34  \nstack trace\n",
            )],
            message: "download failed: ChecksumMismatch: expected ab12, got cd34",
        },
        Case {
            name: "no termination message",
            pods: vec![attempt("iris-download-1-aaaaa", 30, 1, "")],
            message: "download Job iris-download-1 failed (BackoffLimitExceeded): Job has reached the specified backoff limit",
        },
        Case {
            name: "no pod left",
            pods: vec![],
            message: "download Job iris-download-1 failed (BackoffLimitExceeded): Job has reached the specified backoff limit",
        },
        Case {
            name: "a successful exit carries no failure",
            pods: vec![attempt("iris-download-1-aaaaa", 30, 0, "done")],
            message: "download Job iris-download-1 failed (BackoffLimitExceeded): Job has reached the specified backoff limit",
        },
        Case {
            name: "pods of another version are not read",
            pods: vec![PodObs {
                version: Some(2),
                ..attempt("iris-download-2-aaaaa", 30, 1, "Forbidden: HTTP 403")
            }],
            message: "download Job iris-download-1 failed (BackoffLimitExceeded): Job has reached the specified backoff limit",
        },
    ];
    let m = model();
    for case in cases {
        let observed = Observed {
            pvc: pvc("Bound"),
            jobs: vec![failed_job(&m, 1)],
            pods: case.pods,
            ..nothing()
        };
        let d = decide(&m, &observed, &settings());
        assert_eq!(d.status.phase, Some(Phase::Failed), "{}", case.name);
        assert_eq!(last_failure(&d).reason, reason::DOWNLOAD_FAILED, "{}", case.name);
        assert_eq!(last_failure(&d).message, case.message, "{}", case.name);
        assert_eq!(message(&d), case.message, "{}", case.name);
    }
}

// ---------------------------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------------------------

#[test]
fn a_finished_download_applies_the_deployment_and_the_service() {
    let m = model();
    let observed = Observed {
        pvc: pvc("Bound"),
        jobs: vec![succeeded_job(&m, 1)],
        ..nothing()
    };

    let d = decide(&m, &observed, &settings());

    assert_eq!(
        summary(&d.actions),
        ["ApplyDeployment iris-serving", "ApplyService iris"]
    );
    let deployment = applied_deployment(&d);
    let expected = resources::with_spec_hash(resources::serving_deployment(&m, 1));
    assert!(resources::spec_hash(deployment).is_some());
    assert_eq!(resources::spec_hash(deployment), resources::spec_hash(&expected));
    assert_eq!(template_version(deployment), Some("1"));
    assert!(resources::spec_hash(applied_service(&d)).is_some());

    assert_eq!(d.status.phase, Some(Phase::Serving));
    let downloaded = condition(&d.status, "Downloaded");
    assert_eq!(
        (downloaded.status.as_str(), downloaded.message.as_str()),
        ("True", "version 1 is on the volume")
    );
    assert_eq!(condition(&d.status, "Available").status, "False");
    assert_eq!(d.status.ready.as_deref(), Some("0/1"));
    assert_eq!(d.status.service_endpoint, None);
}

#[test]
fn a_model_whose_pods_are_ready_is_ready() {
    let m = model();
    let d = decide(&m, &serving(&m, 1, vec![ready_pod("iris-serving-a", 1)]), &settings());

    assert!(d.actions.is_empty(), "{:?}", summary(&d.actions));
    assert_eq!(d.status.phase, Some(Phase::Ready));
    assert_eq!(d.status.service_endpoint.as_deref(), Some(ENDPOINT));
    assert_eq!(d.status.ready.as_deref(), Some("1/1"));
    assert_eq!(d.status.ready_replicas, Some(1));
    let serving = d.status.serving.as_ref().expect("serving is set");
    assert_eq!(serving.generation, 1);
    assert_eq!(serving.model_url, URL);
    assert_eq!(serving.source.as_deref(), Some(resources::source_digest(&m).as_str()));
    assert_eq!(
        conditions(&d.status),
        [("Ready", "True"), ("Downloaded", "True"), ("Available", "True")]
    );
    assert_eq!(condition(&d.status, "Available").reason, "MinimumReplicasAvailable");
    assert_eq!(d.status.last_failure, None);
    assert_eq!(d.requeue_after, None);
}

#[test]
fn ready_needs_every_replica_and_an_up_to_date_deployment() {
    struct Case {
        name: &'static str,
        replicas: i32,
        pods: Vec<PodObs>,
        stale_deployment: bool,
        phase: Phase,
        ready: &'static str,
    }
    let cases = [
        Case {
            name: "2 of 2 ready",
            replicas: 2,
            pods: vec![ready_pod("iris-serving-a", 1), ready_pod("iris-serving-b", 1)],
            stale_deployment: false,
            phase: Phase::Ready,
            ready: "2/2",
        },
        Case {
            name: "1 of 2 ready",
            replicas: 2,
            pods: vec![ready_pod("iris-serving-a", 1), pod("iris-serving-b", 1)],
            stale_deployment: false,
            phase: Phase::Serving,
            ready: "1/2",
        },
        Case {
            name: "a ready pod being deleted does not count",
            replicas: 1,
            pods: vec![PodObs {
                deleting: true,
                ..ready_pod("iris-serving-a", 1)
            }],
            stale_deployment: false,
            phase: Phase::Serving,
            ready: "0/1",
        },
        Case {
            name: "a ready download pod does not count",
            replicas: 1,
            pods: vec![PodObs {
                download: true,
                ..ready_pod("iris-download-1-x7k2p", 1)
            }],
            stale_deployment: false,
            phase: Phase::Serving,
            ready: "0/1",
        },
        Case {
            name: "pods ready but the Deployment differs from the spec",
            replicas: 1,
            pods: vec![ready_pod("iris-serving-a", 1)],
            stale_deployment: true,
            phase: Phase::Serving,
            ready: "1/1",
        },
    ];
    for case in cases {
        let mut m = model();
        m.spec.replicas = case.replicas;
        let mut observed = serving(&m, 1, case.pods);
        if case.stale_deployment {
            observed.deployment.as_mut().unwrap().spec_hash = Some("0000000000000000".to_owned());
        }
        let d = decide(&m, &observed, &settings());
        assert_eq!(d.status.phase, Some(case.phase), "{}", case.name);
        assert_eq!(d.status.ready.as_deref(), Some(case.ready), "{}", case.name);
        let applies = d.actions.iter().any(|a| matches!(a, Action::ApplyDeployment(_)));
        assert_eq!(
            applies,
            case.stale_deployment,
            "{}: {:?}",
            case.name,
            summary(&d.actions)
        );
    }
}

#[test]
fn expose_decides_whether_the_service_exists() {
    struct Case {
        name: &'static str,
        expose: bool,
        service: Option<ServiceObs>,
        actions: &'static [&'static str],
        endpoint: Option<&'static str>,
    }
    let m = model();
    let cases = [
        Case {
            name: "exposed, Service up to date",
            expose: true,
            service: Some(service_of(&m)),
            actions: &[],
            endpoint: Some(ENDPOINT),
        },
        Case {
            name: "exposed, Service missing",
            expose: true,
            service: None,
            actions: &["ApplyService iris"],
            endpoint: Some(ENDPOINT),
        },
        Case {
            name: "exposed, Service from an older spec",
            expose: true,
            service: Some(ServiceObs {
                spec_hash: Some("0000000000000000".to_owned()),
                deleting: false,
            }),
            actions: &["ApplyService iris"],
            endpoint: Some(ENDPOINT),
        },
        Case {
            name: "not exposed, no Service",
            expose: false,
            service: None,
            actions: &[],
            endpoint: None,
        },
        Case {
            name: "not exposed, Service left over",
            expose: false,
            service: Some(service_of(&m)),
            actions: &["Delete service/iris"],
            endpoint: None,
        },
        Case {
            name: "not exposed, Service already being deleted",
            expose: false,
            service: Some(ServiceObs {
                deleting: true,
                ..service_of(&m)
            }),
            actions: &[],
            endpoint: None,
        },
    ];
    for case in cases {
        let mut m = model();
        m.spec.expose = case.expose;
        let observed = Observed {
            service: case.service,
            ..serving(&m, 1, vec![ready_pod("iris-serving-a", 1)])
        };
        let d = decide(&m, &observed, &settings());
        assert_eq!(summary(&d.actions), case.actions, "{}", case.name);
        assert_eq!(d.status.phase, Some(Phase::Ready), "{}", case.name);
        assert_eq!(d.status.service_endpoint.as_deref(), case.endpoint, "{}", case.name);
    }
}

#[test]
fn zero_replicas_is_ready_and_says_it_is_scaled_to_zero() {
    let mut m = model();
    m.spec.replicas = 0;

    let d = decide(&m, &serving(&m, 1, vec![]), &settings());

    assert!(d.actions.is_empty(), "{:?}", summary(&d.actions));
    assert_eq!(d.status.phase, Some(Phase::Ready));
    let ready = condition(&d.status, "Ready");
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("True", "ScaledToZero"));
    assert!(message(&d).contains("replicas is 0"), "{}", message(&d));
    assert_eq!(d.status.ready.as_deref(), Some("0/0"));
    let available = condition(&d.status, "Available");
    assert_eq!(
        (available.status.as_str(), available.reason.as_str()),
        ("False", "ScaledToZero")
    );
    assert_eq!(d.status.serving.as_ref().map(|s| s.generation), Some(1));
}

/// Serving pods in trouble: degraded while some pod serves, failed when none does and the
/// problem is past its grace period or threshold.
#[test]
fn serving_pod_problems() {
    struct Case {
        name: &'static str,
        replicas: i32,
        pods: Vec<PodObs>,
        phase: Phase,
        reason: &'static str,
        message: &'static [&'static str],
        degraded: Option<&'static str>,
        requeue: Option<Duration>,
    }
    let cases = [
        Case {
            name: "one pod ready, the other crash-looping: degraded",
            replicas: 2,
            pods: vec![
                ready_pod("iris-serving-a", 1),
                crash_looping("iris-serving-b", 5, ("Error", 1)),
            ],
            phase: Phase::Serving,
            reason: "CrashLoopBackOff",
            message: &["starting version 1: 1/2 pods ready: pod iris-serving-b"],
            degraded: Some("CrashLoopBackOff"),
            requeue: None,
        },
        Case {
            name: "every pod crash-looping past the restart threshold",
            replicas: 2,
            pods: vec![
                crash_looping("iris-serving-a", 3, ("Error", 1)),
                crash_looping("iris-serving-b", 4, ("Error", 1)),
            ],
            phase: Phase::Failed,
            reason: "CrashLoopBackOff",
            message: &[
                "pod iris-serving-a",
                "crash-looping after 3 restarts",
                "last exit Error (exit code 1)",
            ],
            degraded: None,
            requeue: None,
        },
        Case {
            name: "crash-looping below the restart threshold",
            replicas: 1,
            pods: vec![crash_looping("iris-serving-a", 2, ("Error", 1))],
            phase: Phase::Serving,
            reason: "CrashLoopBackOff",
            message: &["after 2 restarts"],
            degraded: None,
            requeue: None,
        },
        Case {
            name: "crash-looping after being OOMKilled",
            replicas: 1,
            pods: vec![crash_looping("iris-serving-a", 4, ("OOMKilled", 137))],
            phase: Phase::Failed,
            reason: "OOMKilled",
            message: &["last exit OOMKilled (exit code 137)"],
            degraded: None,
            requeue: None,
        },
        Case {
            name: "running again after an OOMKill, not ready, past the threshold",
            replicas: 1,
            pods: vec![PodObs {
                terminated: exited("OOMKilled", 137, ""),
                restarts: 3,
                ..pod("iris-serving-a", 1)
            }],
            phase: Phase::Failed,
            reason: "OOMKilled",
            message: &["container was OOMKilled, last exit OOMKilled (exit code 137)"],
            degraded: None,
            requeue: None,
        },
        Case {
            name: "image not pulled past the grace period",
            replicas: 1,
            pods: vec![PodObs {
                phase: "Pending".to_owned(),
                created: Some(ago(150)),
                waiting: waiting("ImagePullBackOff", "Back-off pulling image"),
                ..pod("iris-serving-a", 1)
            }],
            phase: Phase::Failed,
            reason: "ImagePullBackOff",
            message: &["cannot pull image docker.io/tensorflow/serving:9.9.9"],
            degraded: None,
            requeue: None,
        },
        Case {
            name: "ErrImagePull past the grace period",
            replicas: 1,
            pods: vec![PodObs {
                phase: "Pending".to_owned(),
                created: Some(ago(120)),
                waiting: waiting("ErrImagePull", "manifest unknown"),
                ..pod("iris-serving-a", 1)
            }],
            phase: Phase::Failed,
            reason: "ImagePullBackOff",
            message: &["docker.io/tensorflow/serving:9.9.9: ErrImagePull: manifest unknown"],
            degraded: None,
            requeue: None,
        },
        Case {
            name: "image not pulled within the grace period",
            replicas: 1,
            pods: vec![PodObs {
                phase: "Pending".to_owned(),
                created: Some(ago(20)),
                waiting: waiting("ImagePullBackOff", "Back-off pulling image"),
                ..pod("iris-serving-a", 1)
            }],
            phase: Phase::Serving,
            reason: "ImagePullBackOff",
            message: &["cannot pull image docker.io/tensorflow/serving:9.9.9"],
            degraded: None,
            requeue: secs(100 + 1),
        },
        Case {
            name: "invalid image name fails at once",
            replicas: 1,
            pods: vec![PodObs {
                phase: "Pending".to_owned(),
                created: Some(now()),
                waiting: waiting("InvalidImageName", "couldn't parse image name"),
                ..pod("iris-serving-a", 1)
            }],
            phase: Phase::Failed,
            reason: "ImagePullBackOff",
            message: &["cannot pull image docker.io/tensorflow/serving:9.9.9: InvalidImageName"],
            degraded: None,
            requeue: None,
        },
        Case {
            name: "unschedulable past the grace period",
            replicas: 1,
            pods: vec![PodObs {
                phase: "Pending".to_owned(),
                unschedulable: Some(("0/3 nodes are available".to_owned(), Some(ago(31)))),
                ..pod("iris-serving-a", 1)
            }],
            phase: Phase::Failed,
            reason: "Unschedulable",
            message: &["pod iris-serving-a: 0/3 nodes are available"],
            degraded: None,
            requeue: None,
        },
        Case {
            name: "another waiting reason past the image pull grace",
            replicas: 1,
            pods: vec![PodObs {
                phase: "Pending".to_owned(),
                created: Some(ago(130)),
                waiting: waiting("CreateContainerConfigError", "secret \"x\" not found"),
                ..pod("iris-serving-a", 1)
            }],
            phase: Phase::Failed,
            reason: "CreateContainerConfigError",
            message: &["container server is waiting: CreateContainerConfigError: secret \"x\" not found"],
            degraded: None,
            requeue: None,
        },
        Case {
            name: "a serving pod that failed",
            replicas: 1,
            pods: vec![PodObs {
                phase: "Failed".to_owned(),
                terminated: exited("Error", 2, "model not found\n"),
                ..pod("iris-serving-a", 1)
            }],
            phase: Phase::Failed,
            reason: "PodFailed",
            message: &["pod failed, last exit Error (exit code 2): model not found"],
            degraded: None,
            requeue: None,
        },
    ];
    for case in cases {
        let mut m = model();
        m.spec.replicas = case.replicas;
        let d = decide(&m, &serving(&m, 1, case.pods), &settings());
        assert!(d.actions.is_empty(), "{}: {:?}", case.name, summary(&d.actions));
        assert_eq!(d.status.phase, Some(case.phase), "{}: phase", case.name);
        assert_eq!(
            condition(&d.status, "Ready").reason,
            case.reason,
            "{}: reason",
            case.name
        );
        for part in case.message {
            assert!(
                message(&d).contains(part),
                "{}: {:?} lacks {part:?}",
                case.name,
                message(&d)
            );
        }
        let degraded = d
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "Degraded" && c.status == "True")
            .map(|c| c.reason.as_str());
        assert_eq!(degraded, case.degraded, "{}: Degraded", case.name);
        assert_eq!(d.requeue_after, case.requeue, "{}: requeue", case.name);
        if case.phase == Phase::Failed {
            assert_eq!(last_failure(&d).reason, case.reason, "{}", case.name);
            assert_eq!(last_failure(&d).message, message(&d), "{}", case.name);
        } else {
            assert_eq!(d.status.last_failure, None, "{}", case.name);
        }
    }
}

#[test]
fn a_degraded_model_keeps_serving() {
    let mut m = model();
    m.spec.replicas = 2;
    let pods = vec![
        ready_pod("iris-serving-a", 1),
        crash_looping("iris-serving-b", 9, ("Error", 1)),
    ];

    let d = decide(&m, &serving(&m, 1, pods), &settings());

    assert_eq!(d.status.phase, Some(Phase::Serving));
    assert_eq!(condition(&d.status, "Available").status, "True");
    let degraded = condition(&d.status, "Degraded");
    assert_eq!(degraded.status, "True");
    assert!(
        degraded.message.starts_with("pod iris-serving-b: "),
        "{}",
        degraded.message
    );
    assert_eq!(d.status.last_failure, None);
}

#[test]
fn a_failed_model_recovers_when_its_pods_become_ready() {
    let m = model();
    let crashing = serving(&m, 1, vec![crash_looping("iris-serving-a", 3, ("Error", 1))]);
    let failed = decide(
        &m,
        &Observed {
            now: ago(60),
            ..crashing
        },
        &settings(),
    )
    .status;
    assert_eq!(failed.phase, Some(Phase::Failed));
    let failure = failed.last_failure.clone().unwrap();

    let m = with_status(&m, failed.clone());
    let d = decide(&m, &serving(&m, 1, vec![ready_pod("iris-serving-a", 1)]), &settings());

    assert!(d.actions.is_empty(), "{:?}", summary(&d.actions));
    assert_eq!(d.status.phase, Some(Phase::Ready));
    assert_eq!(d.status.service_endpoint.as_deref(), Some(ENDPOINT));
    let ready = condition(&d.status, "Ready");
    assert_eq!((ready.status.as_str(), ready.last_transition_time.0), ("True", now()));
    assert_eq!(
        d.status.last_failure,
        Some(failure),
        "the last failure is kept for reference"
    );
    let event = transition_event(Some(&failed), &d.status).expect("an Event");
    assert_eq!((event.warning, event.reason.as_str()), (false, "Ready"));
}

#[test]
fn a_failure_seen_again_keeps_its_time() {
    let m = model();
    let crashing = |now| Observed {
        now,
        ..serving(&m, 1, vec![crash_looping("iris-serving-a", 3, ("Error", 1))])
    };
    let first = decide(&m, &crashing(ago(60)), &settings()).status;
    let m = with_status(&m, first.clone());

    let d = decide(&m, &crashing(now()), &settings());

    assert_eq!(d.status.last_failure, first.last_failure);
    assert_eq!(d.status.conditions, first.conditions);
    assert_eq!(transition_event(Some(&first), &d.status), None);
}

// ---------------------------------------------------------------------------------------------
// Spec changes
// ---------------------------------------------------------------------------------------------

#[test]
fn target_version_reuses_an_artifact_of_the_same_source() {
    struct Case {
        name: &'static str,
        jobs: Vec<JobObs>,
        serving: Option<(i64, Option<String>)>,
        version: i64,
    }
    let m = model();
    let mut other = model();
    other.spec.model_url = "https://models.example.com/iris-v2.tar.gz".to_owned();
    let mut checked = model();
    checked.spec.sha256 = Some("a".repeat(64));
    let digest = resources::source_digest(&m);
    let cases = [
        Case {
            name: "nothing downloaded: the generation",
            jobs: vec![],
            serving: None,
            version: 5,
        },
        Case {
            name: "a Job of the same source",
            jobs: vec![running_job(&m, 2)],
            serving: None,
            version: 2,
        },
        Case {
            name: "a failed Job of the same source is not reused",
            jobs: vec![failed_job(&m, 2)],
            serving: None,
            version: 5,
        },
        Case {
            name: "a Job of another URL",
            jobs: vec![running_job(&other, 2)],
            serving: None,
            version: 5,
        },
        Case {
            name: "a Job of the same URL with another checksum",
            jobs: vec![running_job(&checked, 2)],
            serving: None,
            version: 5,
        },
        Case {
            name: "the newest of several Jobs of the same source",
            jobs: vec![succeeded_job(&m, 1), succeeded_job(&m, 3)],
            serving: None,
            version: 3,
        },
        Case {
            name: "the serving version of the same source",
            jobs: vec![],
            serving: Some((1, Some(digest.clone()))),
            version: 1,
        },
        Case {
            name: "the serving version of another source",
            jobs: vec![],
            serving: Some((1, Some(resources::source_digest(&other)))),
            version: 5,
        },
        Case {
            name: "a serving version of unknown source",
            jobs: vec![],
            serving: Some((1, None)),
            version: 5,
        },
    ];
    for case in cases {
        let mut m = model();
        m.metadata.generation = Some(5);
        m.status = case.serving.map(|(generation, source)| MLModelStatus {
            serving: Some(crate::api::ServingVersion {
                generation,
                model_url: URL.to_owned(),
                source,
            }),
            ..Default::default()
        });
        let observed = Observed {
            jobs: case.jobs,
            ..nothing()
        };
        assert_eq!(target_version(&m, &observed), case.version, "{}", case.name);
    }
}

/// Generation 1 serves; generation 2 changes the URL. The new version downloads while the old
/// one keeps serving, then rolls out, then the old Job goes.
#[test]
fn a_new_model_url_downloads_a_new_version_while_the_old_one_serves() {
    let v1 = model();
    let old_pod = ready_pod("iris-serving-old", 1);
    let serving_v1 = serving(&v1, 1, vec![old_pod.clone()]);
    let ready = decide(&v1, &serving_v1, &settings()).status;
    assert_eq!(ready.phase, Some(Phase::Ready));

    let mut v2 = next_generation(&v1, ready);
    v2.spec.model_url = "https://models.example.com/iris-v2.tar.gz".to_owned();
    assert_eq!(target_version(&v2, &serving_v1), 2);

    // The download of version 2 starts; version 1 is left alone.
    let d = decide(&v2, &serving_v1, &settings());
    assert_eq!(summary(&d.actions), ["ApplyJob iris-download-2"]);
    assert_eq!(d.status.phase, Some(Phase::Downloading));
    assert_eq!(d.status.observed_generation, Some(2));
    let available = condition(&d.status, "Available");
    assert_eq!(
        (available.status.as_str(), available.reason.as_str()),
        ("True", "PreviousVersion")
    );
    assert_eq!(d.status.service_endpoint.as_deref(), Some(ENDPOINT));
    assert_eq!(d.status.serving.as_ref().map(|s| s.generation), Some(1));
    assert_eq!(condition(&d.status, "Downloaded").status, "False");

    // While it downloads, the Job of version 1 is kept: the Deployment still uses it.
    let v2 = with_status(&v2, d.status);
    let mut downloading = serving_v1.clone();
    downloading.jobs.push(running_job(&v2, 2));
    downloading.pods.push(download_pod("iris-download-2-x7k2p", 2));
    let d = decide(&v2, &downloading, &settings());
    assert!(d.actions.is_empty(), "{:?}", summary(&d.actions));
    assert_eq!(d.status.phase, Some(Phase::Downloading));
    assert_eq!(condition(&d.status, "Available").status, "True");
    assert_eq!(d.status.service_endpoint.as_deref(), Some(ENDPOINT));

    // Downloaded: the Deployment moves to version 2.
    let mut downloaded = serving_v1.clone();
    downloaded.jobs.push(succeeded_job(&v2, 2));
    let d = decide(&v2, &downloaded, &settings());
    assert_eq!(summary(&d.actions), ["ApplyDeployment iris-serving"]);
    assert_eq!(template_version(applied_deployment(&d)), Some("2"));
    assert_eq!(d.status.phase, Some(Phase::Serving));
    assert_eq!(condition(&d.status, "Downloaded").status, "True");
    let available = condition(&d.status, "Available");
    assert_eq!(
        (available.status.as_str(), available.reason.as_str()),
        ("True", "Progressing")
    );

    // Rolled out: version 2 serves and the Job of version 1 is deleted.
    let mut rolled_out = serving(&v2, 2, vec![ready_pod("iris-serving-new", 2)]);
    rolled_out.jobs.insert(0, succeeded_job(&v1, 1));
    let d = decide(&v2, &rolled_out, &settings());
    assert_eq!(summary(&d.actions), ["Delete job/iris-download-1"]);
    assert_eq!(d.status.phase, Some(Phase::Ready));
    let serving = d.status.serving.as_ref().unwrap();
    assert_eq!(
        (serving.generation, serving.model_url.as_str()),
        (2, "https://models.example.com/iris-v2.tar.gz")
    );
}

/// Generation 2 changes only the replicas: version 1's artifact is reused, no new download.
#[test]
fn a_change_that_keeps_the_source_reuses_the_downloaded_version() {
    let v1 = model();
    let ready = decide(&v1, &serving(&v1, 1, vec![ready_pod("iris-serving-a", 1)]), &settings()).status;
    assert_eq!(
        ready.serving.as_ref().unwrap().source.as_deref(),
        Some(resources::source_digest(&v1).as_str())
    );
    let mut v2 = next_generation(&v1, ready);
    v2.spec.replicas = 2;

    for (name, jobs) in [
        ("the Job of version 1 is still there", vec![succeeded_job(&v1, 1)]),
        ("the Job of version 1 is gone", vec![]),
    ] {
        let observed = Observed {
            jobs,
            ..serving(&v1, 1, vec![ready_pod("iris-serving-a", 1)])
        };
        assert_eq!(target_version(&v2, &observed), 1, "{name}");
        let d = decide(&v2, &observed, &settings());
        assert_eq!(summary(&d.actions), ["ApplyDeployment iris-serving"], "{name}");
        let deployment = applied_deployment(&d);
        assert_eq!(template_version(deployment), Some("1"), "{name}");
        assert_eq!(deployment.spec.as_ref().unwrap().replicas, Some(2), "{name}");
        assert_eq!(d.status.phase, Some(Phase::Serving), "{name}");
        assert_eq!(d.status.ready.as_deref(), Some("1/2"), "{name}");
        assert_eq!(d.status.observed_generation, Some(2), "{name}");
        assert_eq!(condition(&d.status, "Downloaded").status, "True", "{name}");
    }
}

#[test]
fn jobs_of_older_versions_are_deleted_once_nothing_uses_them() {
    struct Case {
        name: &'static str,
        old_job: JobObs,
        deployment_version: i64,
        deleted: bool,
    }
    let v1 = model();
    let mut v2 = model();
    v2.metadata.generation = Some(2);
    v2.spec.model_url = "https://models.example.com/iris-v2.tar.gz".to_owned();
    let cases = [
        Case {
            name: "the Deployment serves version 2",
            old_job: succeeded_job(&v1, 1),
            deployment_version: 2,
            deleted: true,
        },
        Case {
            name: "the Deployment still serves version 1",
            old_job: succeeded_job(&v1, 1),
            deployment_version: 1,
            deleted: false,
        },
        Case {
            name: "the old Job is already being deleted",
            old_job: JobObs {
                deleting: true,
                ..succeeded_job(&v1, 1)
            },
            deployment_version: 2,
            deleted: false,
        },
        Case {
            name: "a failed old Job",
            old_job: failed_job(&v1, 1),
            deployment_version: 2,
            deleted: true,
        },
    ];
    for case in cases {
        let observed = Observed {
            jobs: vec![case.old_job, running_job(&v2, 2)],
            deployment: Some(deployment_of(&v2, case.deployment_version)),
            ..serving(&v2, 2, vec![])
        };
        let d = decide(&v2, &observed, &settings());
        let deletes = d
            .actions
            .contains(&Action::Delete(ChildRef::Job("iris-download-1".to_owned())));
        assert_eq!(deletes, case.deleted, "{}: {:?}", case.name, summary(&d.actions));
        assert!(
            !d.actions
                .contains(&Action::Delete(ChildRef::Job("iris-download-2".to_owned()))),
            "{}",
            case.name
        );
    }
}

#[test]
fn a_download_superseded_by_a_newer_spec_is_deleted() {
    let v1 = model();
    let mut v2 = model();
    v2.metadata.generation = Some(2);
    v2.spec.model_url = "https://models.example.com/iris-v2.tar.gz".to_owned();
    let observed = Observed {
        pvc: pvc("Bound"),
        jobs: vec![running_job(&v1, 1)],
        pods: vec![download_pod("iris-download-1-x7k2p", 1)],
        ..nothing()
    };

    let d = decide(&v2, &observed, &settings());

    assert_eq!(
        summary(&d.actions),
        ["Delete job/iris-download-1", "ApplyJob iris-download-2"]
    );
    assert_eq!(d.status.phase, Some(Phase::Downloading));
    assert_eq!(condition(&d.status, "Available").reason, "NotServing");
}

// ---------------------------------------------------------------------------------------------
// Specs the operator cannot act on
// ---------------------------------------------------------------------------------------------

#[test]
fn validate_accepts_what_the_operator_can_act_on() {
    let ok = [
        ("https://models.example.com/iris.tar.gz", "1Gi"),
        ("http://10.0.0.1:8080/m.zip", "500Mi"),
        ("s3://bucket/models/iris.tar.gz", "1"),
        ("gs://bucket/iris", "0.5Gi"),
        ("https://h/m?version=3", "1e3"),
    ];
    for (url, size) in ok {
        let mut m = model();
        m.spec.model_url = url.to_owned();
        m.spec.storage_size = size.to_owned();
        assert_eq!(validate(&m), Ok(()), "{url} {size}");
    }
}

#[test]
fn an_invalid_spec_fails_without_touching_children() {
    struct Case {
        name: &'static str,
        url: &'static str,
        storage_size: &'static str,
        image: Option<&'static str>,
        field: &'static str,
        message: &'static str,
    }
    let case = |name, url, storage_size, field, message| Case {
        name,
        url,
        storage_size,
        image: None,
        field,
        message,
    };
    let cases = [
        case(
            "zero storage",
            URL,
            "0",
            "spec.storageSize",
            "must be greater than zero",
        ),
        case(
            "zero storage with a unit",
            URL,
            "0Gi",
            "spec.storageSize",
            "must be greater than zero",
        ),
        case(
            "zero storage, decimal",
            URL,
            "0.0Mi",
            "spec.storageSize",
            "must be greater than zero",
        ),
        case(
            "credentials in the URL",
            "https://user:pw@h/m",
            "1Gi",
            "spec.modelURL",
            "credentials must not be embedded in the URL",
        ),
        case(
            "a user name in the URL",
            "https://user@h/m",
            "1Gi",
            "spec.modelURL",
            "credentials must not be embedded in the URL",
        ),
        case(
            "an S3 bucket with no key",
            "s3://bucket",
            "1Gi",
            "spec.modelURL",
            "object URL needs a key after the bucket",
        ),
        case(
            "a GCS bucket with no key",
            "gs://bucket/",
            "1Gi",
            "spec.modelURL",
            "object URL needs a key after the bucket",
        ),
        case(
            "not a URL",
            "models/iris.tar.gz",
            "1Gi",
            "spec.modelURL",
            "not a valid URL",
        ),
        Case {
            image: Some("tensorflow/serving --rest_api_port=1"),
            ..case(
                "an image with whitespace",
                URL,
                "1Gi",
                "spec.runtime.image",
                "is not an image reference",
            )
        },
        Case {
            image: Some("-v"),
            ..case(
                "an image that is a flag",
                URL,
                "1Gi",
                "spec.runtime.image",
                "is not an image reference",
            )
        },
    ];
    for case in cases {
        let mut m = model();
        m.spec.model_url = case.url.to_owned();
        m.spec.storage_size = case.storage_size.to_owned();
        m.spec.runtime = case.image.map(|i| RuntimeOverride {
            image: Some(i.to_owned()),
            ..Default::default()
        });
        let invalid = validate(&m).expect_err(case.name);
        assert_eq!(invalid.field, case.field, "{}", case.name);

        // Children exist, yet nothing is applied or deleted.
        let observed = serving(&model(), 1, vec![ready_pod("iris-serving-a", 1)]);
        let d = decide(&m, &observed, &settings());
        assert!(d.actions.is_empty(), "{}: {:?}", case.name, summary(&d.actions));
        assert_eq!(d.status.phase, Some(Phase::Failed), "{}", case.name);
        let failure = last_failure(&d);
        assert_eq!(failure.reason, "InvalidSpec", "{}", case.name);
        assert!(
            failure.message.starts_with(&format!("{}: ", case.field)),
            "{}: {}",
            case.name,
            failure.message
        );
        assert!(
            failure.message.contains(case.message),
            "{}: {}",
            case.name,
            failure.message
        );
        assert_eq!(message(&d), failure.message, "{}", case.name);
        assert_eq!(d.requeue_after, None, "{}", case.name);

        // A model seen for the first time still gets its finalizer, and nothing else.
        m.metadata.finalizers = None;
        let d = decide(&m, &nothing(), &settings());
        assert_eq!(summary(&d.actions), ["AddFinalizer"], "{}", case.name);
        assert_eq!(d.status.phase, Some(Phase::Failed), "{}", case.name);
    }
}

#[test]
fn a_url_with_credentials_is_reported_without_them() {
    let mut m = model();
    m.spec.model_url = "https://user:hunter2@h/m".to_owned();

    let d = decide(&m, &nothing(), &settings());

    assert_eq!(last_failure(&d).reason, reason::INVALID_SPEC);
    let status = serde_json::to_string(&d.status).unwrap();
    assert!(!status.contains("hunter2"), "{status}");
}

// ---------------------------------------------------------------------------------------------
// Failures reported from outside the core
// ---------------------------------------------------------------------------------------------

#[test]
fn failed_status_reports_the_given_failure() {
    let mut m = model();
    m.metadata.generation = Some(2);

    let status = failed_status(&m, reason::FORBIDDEN, "cannot create jobs.batch in ml", ago(5));

    assert_eq!(status.phase, Some(Phase::Failed));
    assert_eq!(status.observed_generation, Some(2));
    assert_eq!(status.message.as_deref(), Some("cannot create jobs.batch in ml"));
    let failure = status.last_failure.as_ref().unwrap();
    assert_eq!(
        (failure.reason.as_str(), failure.message.as_str(), &failure.time),
        ("Forbidden", "cannot create jobs.batch in ml", &Time(ago(5)))
    );
    let ready = condition(&status, "Ready");
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "Forbidden"));
}

#[test]
fn a_controller_error_holds_until_the_spec_changes() {
    struct Case {
        name: &'static str,
        reason: &'static str,
        generation: i64,
        holds: bool,
    }
    let cases = [
        Case {
            name: "ControllerError, same generation",
            reason: reason::CONTROLLER_ERROR,
            generation: 1,
            holds: true,
        },
        Case {
            name: "ControllerError, newer generation",
            reason: reason::CONTROLLER_ERROR,
            generation: 2,
            holds: false,
        },
        Case {
            name: "another failure, same generation",
            reason: reason::FORBIDDEN,
            generation: 1,
            holds: false,
        },
    ];
    for case in cases {
        let previous = failed_status(&model(), case.reason, "the model actor failed 5 times", ago(100));
        let mut m = with_status(&model(), previous.clone());
        m.metadata.generation = Some(case.generation);

        let d = decide(&m, &nothing(), &settings());

        if case.holds {
            assert!(d.actions.is_empty(), "{}: {:?}", case.name, summary(&d.actions));
            assert_eq!(d.status, previous, "{}", case.name);
            assert_eq!(d.requeue_after, None, "{}", case.name);
        } else {
            let job = format!("ApplyJob iris-download-{}", case.generation);
            assert_eq!(
                summary(&d.actions),
                ["ApplyPvc iris-model", job.as_str()],
                "{}",
                case.name
            );
            assert_eq!(d.status.phase, Some(Phase::CreatingStorage), "{}", case.name);
            assert_eq!(d.status.observed_generation, Some(case.generation), "{}", case.name);
        }
    }
}

#[test]
fn a_controller_error_still_adds_a_missing_finalizer() {
    let previous = failed_status(&model(), reason::CONTROLLER_ERROR, "panicked", ago(100));
    let mut m = with_status(&model(), previous.clone());
    m.metadata.finalizers = None;

    let d = decide(&m, &nothing(), &settings());

    assert_eq!(summary(&d.actions), ["AddFinalizer"]);
    assert_eq!(d.status, previous);
}

// ---------------------------------------------------------------------------------------------
// Deletion
// ---------------------------------------------------------------------------------------------

#[test]
fn deletion_removes_the_children_then_the_finalizer() {
    struct Case {
        name: &'static str,
        finalizer: bool,
        deleted_ago: i64,
        observed: Observed,
        actions: &'static [&'static str],
        reason: Option<&'static str>,
        requeue: Option<Duration>,
    }
    let m = model();
    let children = || Observed {
        pvc: pvc("Bound"),
        jobs: vec![succeeded_job(&m, 1)],
        pods: vec![ready_pod("iris-serving-a", 1)],
        deployment: Some(deployment_of(&m, 1)),
        service: Some(service_of(&m)),
        now: now(),
    };
    let being_deleted = || {
        let mut o = children();
        o.pvc.as_mut().unwrap().deleting = true;
        o.jobs[0].deleting = true;
        o.pods[0].deleting = true;
        o.deployment.as_mut().unwrap().deleting = true;
        o.service.as_mut().unwrap().deleting = true;
        o
    };
    let cases = [
        Case {
            name: "children present",
            finalizer: true,
            deleted_ago: 10,
            observed: children(),
            actions: &[
                "Delete deployment/iris-serving",
                "Delete service/iris",
                "Delete job/iris-download-1",
                "Delete persistentvolumeclaim/iris-model",
            ],
            reason: Some("Terminating"),
            requeue: secs(50),
        },
        Case {
            name: "children already being deleted",
            finalizer: true,
            deleted_ago: 10,
            observed: being_deleted(),
            actions: &[],
            reason: Some("Terminating"),
            requeue: secs(50),
        },
        Case {
            name: "only a pod left",
            finalizer: true,
            deleted_ago: 20,
            observed: Observed {
                pods: vec![ready_pod("iris-serving-a", 1)],
                ..nothing()
            },
            actions: &[],
            reason: Some("Terminating"),
            requeue: secs(40),
        },
        Case {
            name: "no child left",
            finalizer: true,
            deleted_ago: 10,
            observed: nothing(),
            actions: &["RemoveFinalizer"],
            reason: Some("Deleted"),
            requeue: None,
        },
        Case {
            name: "children stuck past force_delete_after",
            finalizer: true,
            deleted_ago: 60,
            observed: being_deleted(),
            actions: &[
                "ForceDelete deployment/iris-serving",
                "ForceDelete service/iris",
                "ForceDelete job/iris-download-1",
                "ForceDelete pod/iris-serving-a",
                "ForceDelete persistentvolumeclaim/iris-model",
                "RemoveFinalizer",
            ],
            reason: Some("ForcedDeletion"),
            requeue: None,
        },
        Case {
            name: "no finalizer",
            finalizer: false,
            deleted_ago: 10,
            observed: children(),
            actions: &[],
            reason: None,
            requeue: None,
        },
    ];
    for case in cases {
        let mut m = model();
        m.metadata.deletion_timestamp = Some(Time(ago(case.deleted_ago)));
        if !case.finalizer {
            m.metadata.finalizers = None;
        }
        let d = decide(&m, &case.observed, &settings());
        assert_eq!(summary(&d.actions), case.actions, "{}", case.name);
        assert_eq!(d.requeue_after, case.requeue, "{}: requeue", case.name);
        match case.reason {
            Some(reason) => {
                assert_eq!(d.status.phase, Some(Phase::Terminating), "{}", case.name);
                assert_eq!(condition(&d.status, "Ready").reason, reason, "{}", case.name);
            }
            None => assert_eq!(d.status, MLModelStatus::default(), "{}: status unchanged", case.name),
        }
    }
}

#[test]
fn terminating_names_what_it_waits_for() {
    let mut m = model();
    m.metadata.deletion_timestamp = Some(Time(ago(5)));
    let observed = Observed {
        pvc: pvc("Bound"),
        pods: vec![ready_pod("iris-serving-a", 1)],
        ..nothing()
    };

    let d = decide(&m, &observed, &settings());

    assert_eq!(summary(&d.actions), ["Delete persistentvolumeclaim/iris-model"]);
    assert_eq!(
        message(&d),
        "waiting for pod/iris-serving-a, persistentvolumeclaim/iris-model to be deleted"
    );
}

#[test]
fn deletion_wins_over_an_invalid_spec_and_a_controller_error() {
    let mut invalid = model();
    invalid.spec.storage_size = "0".to_owned();
    let mut stuck = with_status(
        &model(),
        failed_status(&model(), reason::CONTROLLER_ERROR, "panicked", ago(100)),
    );
    for m in [&mut invalid, &mut stuck] {
        m.metadata.deletion_timestamp = Some(Time(ago(1)));
        let d = decide(m, &nothing(), &settings());
        assert_eq!(summary(&d.actions), ["RemoveFinalizer"]);
        assert_eq!(d.status.phase, Some(Phase::Terminating));
    }
}

// ---------------------------------------------------------------------------------------------
// Conditions
// ---------------------------------------------------------------------------------------------

#[test]
fn a_condition_keeps_its_transition_time_until_its_status_changes() {
    let m = model();
    let creating = Observed {
        now: at(-300),
        ..nothing()
    };
    let first = decide(&m, &creating, &settings()).status;
    assert_eq!(
        conditions(&first),
        [("Ready", "False"), ("Downloaded", "False"), ("Available", "False")]
    );

    let m = with_status(&m, first);
    let downloading = Observed {
        pvc: pvc("Bound"),
        now: at(-100),
        ..nothing()
    };
    let second = decide(&m, &downloading, &settings()).status;
    let ready = condition(&second, "Ready");
    assert_eq!(
        (
            ready.status.as_str(),
            ready.reason.as_str(),
            ready.last_transition_time.0
        ),
        ("False", "Downloading", at(-300))
    );
    assert_eq!(condition(&second, "Downloaded").last_transition_time.0, at(-300));
    assert_eq!(condition(&second, "Available").last_transition_time.0, at(-300));

    let m = with_status(&m, second);
    let third = decide(&m, &serving(&m, 1, vec![ready_pod("iris-serving-a", 1)]), &settings()).status;
    let times: Vec<(&str, &str, Timestamp)> = third
        .conditions
        .iter()
        .map(|c| (c.type_.as_str(), c.status.as_str(), c.last_transition_time.0))
        .collect();
    assert_eq!(
        times,
        [
            ("Ready", "True", now()),
            ("Downloaded", "True", now()),
            ("Available", "True", now()),
        ]
    );
}

#[test]
fn degraded_turns_false_once_every_replica_is_healthy() {
    let mut m = model();
    m.spec.replicas = 2;
    let degraded_pods = vec![
        ready_pod("iris-serving-a", 1),
        crash_looping("iris-serving-b", 5, ("Error", 1)),
    ];
    let degraded = decide(
        &m,
        &Observed {
            now: ago(30),
            ..serving(&m, 1, degraded_pods)
        },
        &settings(),
    )
    .status;
    assert_eq!(condition(&degraded, "Degraded").status, "True");

    let m = with_status(&m, degraded);
    let healthy = vec![ready_pod("iris-serving-a", 1), ready_pod("iris-serving-b", 1)];
    let d = decide(&m, &serving(&m, 1, healthy), &settings());

    assert_eq!(d.status.phase, Some(Phase::Ready));
    let c = condition(&d.status, "Degraded");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str(), c.last_transition_time.0),
        ("False", "AllReplicasHealthy", now())
    );
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

#[test]
fn transition_event_reports_phase_changes_and_new_failures() {
    fn status(phase: Phase, failure: Option<(&str, &str)>) -> MLModelStatus {
        MLModelStatus {
            phase: Some(phase),
            message: Some(format!("now {phase}")),
            last_failure: failure.map(|(reason, message)| Failure {
                reason: reason.to_owned(),
                message: message.to_owned(),
                time: Time(ago(10)),
            }),
            ..Default::default()
        }
    }
    let f1 = Some(("DownloadFailed", "download failed: NotFound: HTTP 404"));
    let f2 = Some(("CrashLoopBackOff", "pod iris-serving-a: crash-looping"));
    /// `event` is (warning, reason, note), or `None` for no Event.
    struct Case {
        name: &'static str,
        old: Option<MLModelStatus>,
        new: MLModelStatus,
        event: Option<(bool, &'static str, &'static str)>,
    }
    let cases = [
        Case {
            name: "first status",
            old: None,
            new: status(Phase::CreatingStorage, None),
            event: Some((false, "CreatingStorage", "now CreatingStorage")),
        },
        Case {
            name: "phase change",
            old: Some(status(Phase::Downloading, None)),
            new: status(Phase::Serving, None),
            event: Some((false, "Serving", "now Serving")),
        },
        Case {
            name: "no change",
            old: Some(status(Phase::Downloading, None)),
            new: status(Phase::Downloading, None),
            event: None,
        },
        Case {
            name: "a new failure",
            old: Some(status(Phase::Downloading, None)),
            new: status(Phase::Failed, f1),
            event: Some((true, "DownloadFailed", "download failed: NotFound: HTTP 404")),
        },
        Case {
            name: "the same failure again",
            old: Some(status(Phase::Failed, f1)),
            new: status(Phase::Failed, f1),
            event: None,
        },
        Case {
            name: "another failure while failed",
            old: Some(status(Phase::Failed, f1)),
            new: status(Phase::Failed, f2),
            event: Some((true, "CrashLoopBackOff", "pod iris-serving-a: crash-looping")),
        },
        Case {
            name: "recovery keeps the failure for reference",
            old: Some(status(Phase::Failed, f1)),
            new: status(Phase::Ready, f1),
            event: Some((false, "Ready", "now Ready")),
        },
        Case {
            name: "a failure recorded while not Failed is no Warning",
            old: Some(status(Phase::Ready, None)),
            new: status(Phase::Ready, f2),
            event: None,
        },
    ];
    for case in cases {
        let event = transition_event(case.old.as_ref(), &case.new);
        let got = event.as_ref().map(|e| (e.warning, e.reason.as_str(), e.note.as_str()));
        assert_eq!(got, case.event, "{}", case.name);
    }
}

#[test]
fn decisions_produce_the_expected_events() {
    let m = model();
    let first = decide(&m, &nothing(), &settings()).status;
    let event = transition_event(None, &first).unwrap();
    assert_eq!((event.warning, event.reason.as_str()), (false, "CreatingStorage"));

    let m = with_status(&m, first.clone());
    let again = decide(&m, &nothing(), &settings()).status;
    assert_eq!(transition_event(Some(&first), &again), None);

    let observed = Observed {
        pvc: pvc("Bound"),
        jobs: vec![failed_job(&m, 1)],
        ..nothing()
    };
    let failed = decide(&m, &observed, &settings()).status;
    let event = transition_event(Some(&first), &failed).unwrap();
    assert_eq!((event.warning, event.reason.as_str()), (true, "DownloadFailed"));
    assert_eq!(event.note, failed.last_failure.as_ref().unwrap().message);
}

// ---------------------------------------------------------------------------------------------
// Observation of API objects
// ---------------------------------------------------------------------------------------------

fn labelled(name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some("ml".to_owned()),
        labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
        creation_timestamp: Some(Time(ago(60))),
        ..Default::default()
    }
}

fn container(name: &str, state: ContainerState, last: Option<ContainerState>, restarts: i32) -> ContainerStatus {
    ContainerStatus {
        name: name.to_owned(),
        image: SERVER_IMAGE.to_owned(),
        restart_count: restarts,
        state: Some(state),
        last_state: last,
        ..Default::default()
    }
}

fn waiting_state(reason: &str, message: &str) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
        }),
        ..Default::default()
    }
}

fn terminated_state(reason: &str, exit_code: i32, message: Option<&str>) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            reason: Some(reason.to_owned()),
            exit_code,
            message: message.map(str::to_owned),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn k8s_pod(meta: ObjectMeta, phase: &str, conditions: Vec<PodCondition>, containers: Vec<ContainerStatus>) -> Pod {
    Pod {
        metadata: meta,
        status: Some(PodStatus {
            phase: Some(phase.to_owned()),
            conditions: Some(conditions),
            container_statuses: Some(containers),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn serving_meta(name: &str, version: &str) -> ObjectMeta {
    labelled(
        name,
        &[
            (resources::COMPONENT_LABEL, resources::COMPONENT_SERVING),
            (resources::VERSION_LABEL, version),
        ],
    )
}

#[test]
fn observe_pod_reads_an_unschedulable_download_pod() {
    let meta = labelled(
        "iris-download-2-x7k2p",
        &[
            (resources::COMPONENT_LABEL, resources::COMPONENT_DOWNLOAD),
            (resources::VERSION_LABEL, "2"),
        ],
    );
    let scheduled = PodCondition {
        type_: "PodScheduled".to_owned(),
        status: "False".to_owned(),
        reason: Some("Unschedulable".to_owned()),
        message: Some("0/3 nodes are available: 3 Insufficient memory.".to_owned()),
        last_transition_time: Some(Time(ago(45))),
        ..Default::default()
    };

    let obs = observe::pod(&k8s_pod(meta, "Pending", vec![scheduled], vec![]));

    assert_eq!(
        obs,
        PodObs {
            name: "iris-download-2-x7k2p".to_owned(),
            download: true,
            version: Some(2),
            phase: "Pending".to_owned(),
            ready: false,
            deleting: false,
            created: Some(ago(60)),
            unschedulable: Some((
                "0/3 nodes are available: 3 Insufficient memory.".to_owned(),
                Some(ago(45))
            )),
            waiting: None,
            terminated: None,
            restarts: 0,
        }
    );
}

#[test]
fn observe_pod_reads_container_states() {
    struct Case {
        name: &'static str,
        pod: Pod,
        waiting: Option<(&'static str, &'static str)>,
        terminated: Option<(&'static str, i32, &'static str)>,
        restarts: i32,
        ready: bool,
    }
    let ready = PodCondition {
        type_: "Ready".to_owned(),
        status: "True".to_owned(),
        ..Default::default()
    };
    let not_scheduled_yet = PodCondition {
        type_: "PodScheduled".to_owned(),
        status: "False".to_owned(),
        reason: Some("SchedulingGated".to_owned()),
        ..Default::default()
    };
    let cases = [
        Case {
            name: "image pull back-off",
            pod: k8s_pod(
                serving_meta("iris-serving-a", "1"),
                "Pending",
                vec![],
                vec![container(
                    "server",
                    waiting_state("ImagePullBackOff", "Back-off pulling image"),
                    None,
                    0,
                )],
            ),
            waiting: Some(("ImagePullBackOff", "Back-off pulling image")),
            terminated: None,
            restarts: 0,
            ready: false,
        },
        Case {
            name: "crash loop after an OOMKill",
            pod: k8s_pod(
                serving_meta("iris-serving-a", "1"),
                "Running",
                vec![],
                vec![container(
                    "server",
                    waiting_state("CrashLoopBackOff", "back-off 1m20s"),
                    Some(terminated_state("OOMKilled", 137, None)),
                    4,
                )],
            ),
            waiting: Some(("CrashLoopBackOff", "back-off 1m20s")),
            terminated: Some(("OOMKilled", 137, "")),
            restarts: 4,
            ready: false,
        },
        Case {
            name: "a container still being created is not waiting for a problem",
            pod: k8s_pod(
                serving_meta("iris-serving-a", "1"),
                "Pending",
                vec![not_scheduled_yet],
                vec![container("server", waiting_state("ContainerCreating", ""), None, 0)],
            ),
            waiting: None,
            terminated: None,
            restarts: 0,
            ready: false,
        },
        Case {
            name: "a terminated container with its message",
            pod: k8s_pod(
                serving_meta("iris-serving-a", "1"),
                "Failed",
                vec![],
                vec![container(
                    "server",
                    terminated_state("Error", 1, Some("NotFound: HTTP 404")),
                    None,
                    0,
                )],
            ),
            waiting: None,
            terminated: Some(("Error", 1, "NotFound: HTTP 404")),
            restarts: 0,
            ready: false,
        },
        Case {
            name: "ready, restarted before, highest restart count of its containers",
            pod: k8s_pod(
                serving_meta("iris-serving-a", "1"),
                "Running",
                vec![ready],
                vec![
                    container("sidecar", ContainerState::default(), None, 1),
                    container(
                        "server",
                        ContainerState::default(),
                        Some(terminated_state("Error", 2, None)),
                        6,
                    ),
                ],
            ),
            waiting: None,
            terminated: Some(("Error", 2, "")),
            restarts: 6,
            ready: true,
        },
    ];
    for case in cases {
        let obs = observe::pod(&case.pod);
        let waiting = obs.waiting.as_ref().map(|(c, r, m, i)| {
            assert_eq!((c.as_str(), i.as_str()), ("server", SERVER_IMAGE), "{}", case.name);
            (r.as_str(), m.as_str())
        });
        assert_eq!(waiting, case.waiting, "{}: waiting", case.name);
        let terminated = obs
            .terminated
            .as_ref()
            .map(|t| (t.reason.as_str(), t.exit_code, t.message.as_str()));
        assert_eq!(terminated, case.terminated, "{}: terminated", case.name);
        assert_eq!(obs.restarts, case.restarts, "{}: restarts", case.name);
        assert_eq!(obs.ready, case.ready, "{}: ready", case.name);
        assert_eq!(obs.unschedulable, None, "{}", case.name);
        assert!(!obs.download, "{}", case.name);
        assert_eq!(obs.version, Some(1), "{}", case.name);
    }
}

#[test]
fn observe_pod_defaults_an_empty_pod() {
    let mut meta = labelled("stray", &[]);
    meta.deletion_timestamp = Some(Time(now()));
    let obs = observe::pod(&Pod {
        metadata: meta,
        ..Default::default()
    });
    assert_eq!(
        (
            obs.phase.as_str(),
            obs.version,
            obs.download,
            obs.deleting,
            obs.restarts
        ),
        ("Pending", None, false, true, 0)
    );
}

#[test]
fn observe_job_reads_conditions_version_and_source() {
    fn condition(type_: &str, status: &str, reason: &str, message: &str) -> JobCondition {
        JobCondition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            ..Default::default()
        }
    }
    struct Case {
        name: &'static str,
        conditions: Vec<JobCondition>,
        succeeded: bool,
        failed: Option<(&'static str, &'static str)>,
    }
    let cases = [
        Case {
            name: "running",
            conditions: vec![],
            succeeded: false,
            failed: None,
        },
        Case {
            name: "complete",
            conditions: vec![
                condition("SuccessCriteriaMet", "True", "CompletionsReached", ""),
                condition(
                    "Complete",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                ),
            ],
            succeeded: true,
            failed: None,
        },
        Case {
            name: "failed",
            conditions: vec![
                condition(
                    "FailureTarget",
                    "True",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                ),
                condition(
                    "Failed",
                    "True",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                ),
            ],
            succeeded: false,
            failed: Some(("BackoffLimitExceeded", "Job has reached the specified backoff limit")),
        },
        Case {
            name: "conditions that are not True do not count",
            conditions: vec![
                condition("Complete", "False", "", ""),
                condition("Failed", "Unknown", "DeadlineExceeded", ""),
            ],
            succeeded: false,
            failed: None,
        },
    ];
    let m = model();
    for case in cases {
        let mut job = resources::download_job(&m, 3, &BuildSettings::default(), &DownloadContext::default());
        job.status = Some(JobStatus {
            conditions: Some(case.conditions),
            ..Default::default()
        });
        let obs = observe::job(&job).expect("a versioned Job");
        let failed = case.failed.map(|(r, m)| (r.to_owned(), m.to_owned()));
        assert_eq!(
            obs,
            JobObs {
                name: "iris-download-3".to_owned(),
                version: 3,
                source: Some(resources::source_digest(&m)),
                succeeded: case.succeeded,
                failed,
                deleting: false,
            },
            "{}",
            case.name
        );
    }
}

#[test]
fn observe_job_ignores_jobs_without_a_version() {
    let unversioned = Job {
        metadata: labelled("someone-elses-job", &[(resources::COMPONENT_LABEL, "download")]),
        ..Default::default()
    };
    assert_eq!(observe::job(&unversioned), None);

    let garbled = Job {
        metadata: labelled("iris-download-x", &[(resources::VERSION_LABEL, "latest")]),
        ..Default::default()
    };
    assert_eq!(observe::job(&garbled), None);
}

#[test]
fn observe_reads_the_objects_the_builders_make() {
    let m = model();
    let deployment = resources::with_spec_hash(resources::serving_deployment(&m, 2));
    let obs = observe::deployment(&deployment);
    assert_eq!(obs.version, Some(2));
    assert_eq!(obs.spec_hash.as_ref(), resources::spec_hash(&deployment));
    assert_eq!(obs, deployment_of(&m, 2));

    let service = resources::with_spec_hash(resources::service(&m));
    assert_eq!(observe::service(&service), service_of(&m));

    let claim = resources::persistent_volume_claim(&m);
    assert_eq!(observe::pvc(&claim), pvc("Pending").unwrap());
    let bound = PersistentVolumeClaim {
        status: Some(PersistentVolumeClaimStatus {
            phase: Some("Bound".to_owned()),
            ..Default::default()
        }),
        ..claim
    };
    assert_eq!(observe::pvc(&bound), pvc("Bound").unwrap());
}

#[test]
fn an_observed_world_is_decided_the_same_as_its_summaries() {
    let m = model();
    let job = resources::download_job(&m, 1, &BuildSettings::default(), &DownloadContext::default());
    let mut job = job;
    job.status = Some(JobStatus {
        conditions: Some(vec![JobCondition {
            type_: "Complete".to_owned(),
            status: "True".to_owned(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    let ready = PodCondition {
        type_: "Ready".to_owned(),
        status: "True".to_owned(),
        ..Default::default()
    };
    let pod = k8s_pod(
        serving_meta("iris-serving-a", "1"),
        "Running",
        vec![ready],
        vec![container("server", ContainerState::default(), None, 0)],
    );
    let observed = Observed {
        pvc: Some(PvcObs {
            phase: "Bound".to_owned(),
            deleting: false,
        }),
        jobs: observe::job(&job).into_iter().collect(),
        pods: vec![observe::pod(&pod)],
        deployment: Some(observe::deployment(&resources::with_spec_hash(
            resources::serving_deployment(&m, 1),
        ))),
        service: Some(observe::service(&resources::with_spec_hash(resources::service(&m)))),
        now: now(),
    };

    let d = decide(&m, &observed, &settings());

    assert!(d.actions.is_empty(), "{:?}", summary(&d.actions));
    assert_eq!(d.status.phase, Some(Phase::Ready));
}

// ---------------------------------------------------------------------------------------------
// Known defects: each asserts the correct behaviour and is ignored until the core is fixed
// ---------------------------------------------------------------------------------------------

/// The same failure after a recovery is a new occurrence: it gets a new time and a Warning.
#[test]
fn a_failure_that_recurs_after_a_recovery_is_a_new_failure() {
    let mut broken = model();
    broken.spec.storage_size = "0".to_owned();
    let failed = decide(
        &broken,
        &Observed {
            now: at(-600),
            ..nothing()
        },
        &settings(),
    )
    .status;
    assert_eq!(failed.phase, Some(Phase::Failed));

    let mut fixed = next_generation(&broken, failed);
    fixed.spec.storage_size = "1Gi".to_owned();
    let observed = Observed {
        now: at(-300),
        ..serving(&fixed, 1, vec![ready_pod("iris-serving-a", 1)])
    };
    let recovered = decide(&fixed, &observed, &settings()).status;
    assert_eq!(recovered.phase, Some(Phase::Ready));
    assert!(recovered.last_failure.is_some(), "kept for reference");

    let mut broken_again = next_generation(&fixed, recovered.clone());
    broken_again.spec.storage_size = "0".to_owned();
    let d = decide(&broken_again, &nothing(), &settings());

    assert_eq!(d.status.phase, Some(Phase::Failed));
    assert_eq!(last_failure(&d).time, Time(now()), "the failure happened now");
    let event = transition_event(Some(&recovered), &d.status).expect("an Event");
    assert_eq!((event.warning, event.reason.as_str()), (true, "InvalidSpec"));
}

/// While a scale-up or a rollout is in progress, the Service keeps answering on the pods that
/// are ready, as it does while a new version downloads.
#[test]
fn the_endpoint_stays_while_ready_pods_serve_during_a_rollout() {
    let v1 = model();
    let ready = decide(&v1, &serving(&v1, 1, vec![ready_pod("iris-serving-a", 1)]), &settings()).status;
    assert_eq!(ready.service_endpoint.as_deref(), Some(ENDPOINT));

    let mut v2 = next_generation(&v1, ready);
    v2.spec.replicas = 2;
    let scaling = serving(&v1, 1, vec![ready_pod("iris-serving-a", 1), pod("iris-serving-b", 1)]);
    let d = decide(&v2, &scaling, &settings());

    assert_eq!(d.status.phase, Some(Phase::Serving));
    assert_eq!(condition(&d.status, "Available").status, "True");
    assert_eq!(d.status.service_endpoint.as_deref(), Some(ENDPOINT));
}

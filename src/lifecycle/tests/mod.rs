//! Table-driven tests of the lifecycle core, one file per stage of `decide`.
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

use super::deletion::child_label;
use super::observe::{self, DeploymentObs, JobObs, PvcObs, ServiceObs, Terminated, Warning};
use super::{
    Action, ChildRef, Decision, Observed, PodObs, Settings, decide, failed_status, reason, refusal_reason,
    target_version, transition_event, validate,
};
use crate::api::{FINALIZER, Failure, Framework, MLModel, MLModelSpec, MLModelStatus, Phase, RuntimeOverride};
use crate::resources::{self, BuildSettings, DownloadContext};

mod deletion;
mod download;
mod observation;
mod serving;
mod storage;

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
            model_url: Some(URL.to_owned()),
            model_url_from: None,
            storage_size: "1Gi".to_owned(),
            framework: Framework::Tensorflow,
            replicas: 1,
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

/// The uid of the claim [`pvc`] observes.
const CLAIM_UID: &str = "0b6c2d1e-claim";

fn pvc(phase: &str) -> Option<PvcObs> {
    Some(PvcObs {
        uid: Some(CLAIM_UID.to_owned()),
        created: Some(ago(3600)),
        phase: phase.to_owned(),
        deleting: false,
        requested: None,
        capacity: None,
        warning: None,
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
        created: None,
        warning: None,
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
        stalled: None,
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
        warning: None,
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
        ..Default::default()
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
            Action::ResizePvc(p) => format!("ResizePvc {}", p.name_any()),
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

/// The container of the download Job the decision applies.
fn applied_job_container(d: &Decision) -> &k8s_openapi::api::core::v1::Container {
    &applied_job(d)
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("a pod spec")
        .containers[0]
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
// A whole rollout
// ---------------------------------------------------------------------------------------------
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
        m.spec.model_url = Some(url.to_owned());
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
        m.spec.model_url = Some(case.url.to_owned());
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
    m.spec.model_url = Some("https://user:hunter2@h/m".to_owned());

    let d = decide(&m, &nothing(), &settings());

    assert_eq!(last_failure(&d).reason, reason::INVALID_SPEC);
    let status = serde_json::to_string(&d.status).unwrap();
    assert!(!status.contains("hunter2"), "{status}");
}

fn by_reference(m: &mut MLModel) {
    m.spec.model_url = None;
    m.spec.model_url_from = Some(crate::api::ModelUrlSource {
        secret_key_ref: crate::api::SecretKeySelector {
            name: "presigned".to_owned(),
            key: "url".to_owned(),
        },
    });
}

#[test]
fn a_url_given_by_reference_is_reported_by_its_secret_and_key() {
    let mut m = model();
    by_reference(&mut m);
    let observed = Observed {
        pvc: pvc("Bound"),
        ..nothing()
    };

    let d = decide(&m, &observed, &settings());

    assert_eq!(d.status.phase, Some(Phase::Downloading));
    assert_eq!(
        d.status.message.as_deref(),
        Some("downloading secretKeyRef:presigned/url")
    );
    assert!(d.actions.iter().any(|a| matches!(a, Action::ApplyJob(_))));
}

#[test]
fn a_model_with_neither_or_both_urls_is_an_invalid_spec() {
    let mut neither = model();
    neither.spec.model_url = None;
    let mut both = model();
    by_reference(&mut both);
    both.spec.model_url = Some(URL.to_owned());
    for m in [neither, both] {
        let d = decide(&m, &nothing(), &settings());
        assert_eq!(last_failure(&d).reason, reason::INVALID_SPEC);
        assert!(
            d.status
                .message
                .as_deref()
                .is_some_and(|msg| msg.contains("exactly one of spec.modelURL and spec.modelURLFrom")),
            "{:?}",
            d.status.message
        );
        assert!(!d.actions.iter().any(|a| matches!(a, Action::ApplyPvc(_))));
    }
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

// ---------------------------------------------------------------------------------------------
// Objects the model does not own
// ---------------------------------------------------------------------------------------------

#[test]
fn a_foreign_object_with_a_childs_name_fails_the_model_and_is_left_alone() {
    let m = with_status(&model(), MLModelStatus::default());
    let observed = Observed {
        foreign: vec!["service/iris".to_owned(), "persistentvolumeclaim/iris-model".to_owned()],
        ..nothing()
    };
    let d = decide(&m, &observed, &settings());
    assert!(d.actions.is_empty(), "nothing is applied: {:?}", summary(&d.actions));
    assert_eq!(d.status.phase, Some(Phase::Failed));
    assert_eq!(last_failure(&d).reason, "ResourceExists");
    assert!(message(&d).contains("service/iris"), "{}", message(&d));
    assert!(
        message(&d).contains("persistentvolumeclaim/iris-model"),
        "{}",
        message(&d)
    );

    // Once the name is free, the model goes on from the start.
    let after = decide(&with_status(&m, d.status.clone()), &nothing(), &settings());
    assert_ne!(after.status.phase, Some(Phase::Failed));
    assert!(summary(&after.actions).iter().any(|a| a.starts_with("ApplyPvc")));
}

#[test]
fn children_of_a_deleted_model_of_the_same_name_are_waited_for() {
    let m = model();
    let observed = Observed {
        previous_owner: vec!["job/iris-v1".to_owned()],
        ..nothing()
    };
    let d = decide(&m, &observed, &settings());
    assert!(d.actions.is_empty(), "nothing is applied: {:?}", summary(&d.actions));
    assert_eq!(d.status.phase, Some(Phase::Pending));
    assert!(message(&d).contains("job/iris-v1"), "{}", message(&d));
    assert_eq!(condition(&d.status, "Ready").reason, "WaitingForPreviousModel");
}

/// 403 answers are told apart by the API server's own words.
#[test]
fn refusals_are_classified_from_the_api_servers_message() {
    for (message, expected) in [
        (
            r#"jobs.batch "iris-download-1" is forbidden: exceeded quota: jobs, requested: count/jobs.batch=1, used: count/jobs.batch=1, limited: count/jobs.batch=1"#,
            "QuotaExceeded",
        ),
        (
            r#"persistentvolumeclaims "iris-model" is forbidden: exceeded quota: storage, requested: requests.storage=1Gi, used: requests.storage=0, limited: requests.storage=100Mi"#,
            "QuotaExceeded",
        ),
        (
            r#"persistentvolumeclaims "iris-model" is forbidden: maximum storage usage per PersistentVolumeClaim is 500Mi, but request is 1Gi"#,
            "AdmissionDenied",
        ),
        (
            r#"deployments.apps "iris-serving" is forbidden: ValidatingAdmissionPolicy 'no-gpu' with binding 'no-gpu' denied request: no GPUs here"#,
            "AdmissionDenied",
        ),
        (
            r#"admission webhook "policy.example.com" denied the request: image not allowed"#,
            "AdmissionDenied",
        ),
        (
            r#"jobs.batch "iris-download-1" is forbidden: unable to create new content in namespace ml because it is being terminated"#,
            "NamespaceTerminating",
        ),
        (
            r#"jobs.batch is forbidden: User "system:serviceaccount:mlmodel-system:mlmodel-operator" cannot create resource "jobs" in API group "batch" in the namespace "ml""#,
            "Forbidden",
        ),
    ] {
        assert_eq!(refusal_reason(message), expected, "{message}");
    }
}

/// README's troubleshooting table and the code name the same reasons, row for row.
#[test]
fn the_readme_documents_every_failure_reason_and_no_other() {
    let readme = include_str!("../../../README.md");
    let section = readme
        .split("## Troubleshooting by reason")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has a troubleshooting section");
    let mut documented: Vec<&str> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .collect();
    documented.sort_unstable();
    let mut code: Vec<&str> = reason::FAILURES.to_vec();
    code.sort_unstable();
    assert_eq!(documented, code);
}

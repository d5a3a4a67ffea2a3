//! Observation: API objects summarised as the core sees them.

use super::*;
use crate::lifecycle::cached::CachedPod;

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

    let obs = observe::pod(&(&k8s_pod(meta, "Pending", vec![scheduled], vec![])).into());

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
            warning: None,
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
        let obs = observe::pod(&(&case.pod).into());
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
    let obs = observe::pod(&CachedPod {
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
        let obs = observe::job(&(&job).into()).expect("a versioned Job");
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
                created: None,
                warning: None,
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
    assert_eq!(observe::job(&(&unversioned).into()), None);

    let garbled = Job {
        metadata: labelled("iris-download-x", &[(resources::VERSION_LABEL, "latest")]),
        ..Default::default()
    };
    assert_eq!(observe::job(&(&garbled).into()), None);
}

#[test]
fn observe_reads_the_objects_the_builders_make() {
    let m = model();
    let deployment = resources::with_spec_hash(resources::serving_deployment(&m, 2));
    let obs = observe::deployment(&(&deployment).into());
    assert_eq!(obs.version, Some(2));
    assert_eq!(obs.spec_hash.as_ref(), resources::spec_hash(&deployment));
    assert_eq!(obs, deployment_of(&m, 2));

    let service = resources::with_spec_hash(resources::service(&m));
    assert_eq!(observe::service(&service), service_of(&m));

    let claim = resources::persistent_volume_claim(&m);
    let asked = |phase: &str, capacity: Option<&str>| PvcObs {
        requested: Some(m.spec.storage_size.clone()),
        capacity: capacity.map(str::to_owned),
        // The built claim has no uid and no creation time yet.
        uid: None,
        created: None,
        ..pvc(phase).unwrap()
    };
    assert_eq!(observe::pvc(&claim), asked("Pending", None));
    let bound = PersistentVolumeClaim {
        status: Some(PersistentVolumeClaimStatus {
            phase: Some("Bound".to_owned()),
            capacity: Some(std::collections::BTreeMap::from([(
                "storage".to_owned(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity("2Gi".to_owned()),
            )])),
            ..Default::default()
        }),
        ..claim
    };
    assert_eq!(observe::pvc(&bound), asked("Bound", Some("2Gi")));

    let mut stalled = deployment.clone();
    stalled.status = Some(k8s_openapi::api::apps::v1::DeploymentStatus {
        conditions: Some(vec![
            k8s_openapi::api::apps::v1::DeploymentCondition {
                type_: "Progressing".to_owned(),
                status: "True".to_owned(),
                reason: Some("ReplicaSetUpdated".to_owned()),
                ..Default::default()
            },
            k8s_openapi::api::apps::v1::DeploymentCondition {
                type_: "ReplicaFailure".to_owned(),
                status: "True".to_owned(),
                reason: Some("FailedCreate".to_owned()),
                message: Some("pods \"x\" is forbidden: exceeded quota: pods".to_owned()),
                ..Default::default()
            },
        ]),
        ..Default::default()
    });
    assert_eq!(
        observe::deployment(&(&stalled).into()).stalled,
        Some((
            "FailedCreate".to_owned(),
            "pods \"x\" is forbidden: exceeded quota: pods".to_owned()
        ))
    );
    let progressing = |status: &str, reason: &str| {
        let mut d = deployment.clone();
        d.status = Some(k8s_openapi::api::apps::v1::DeploymentStatus {
            conditions: Some(vec![k8s_openapi::api::apps::v1::DeploymentCondition {
                type_: "Progressing".to_owned(),
                status: status.to_owned(),
                reason: Some(reason.to_owned()),
                message: Some("ReplicaSet \"x\" has timed out progressing.".to_owned()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        observe::deployment(&(&d).into()).stalled.map(|(reason, _)| reason)
    };
    assert_eq!(
        progressing("False", "ProgressDeadlineExceeded").as_deref(),
        Some("ProgressDeadlineExceeded")
    );
    assert_eq!(progressing("True", "NewReplicaSetAvailable"), None);
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
        pvc: pvc("Bound"),
        jobs: observe::job(&(&job).into()).into_iter().collect(),
        pods: vec![observe::pod(&(&pod).into())],
        deployment: Some(observe::deployment(
            &(&resources::with_spec_hash(resources::serving_deployment(&m, 1))).into(),
        )),
        service: Some(observe::service(&resources::with_spec_hash(resources::service(&m)))),
        now: now(),
        ..Default::default()
    };

    let d = decide(&m, &observed, &settings());

    assert!(d.actions.is_empty(), "{:?}", summary(&d.actions));
    assert_eq!(d.status.phase, Some(Phase::Ready));
}

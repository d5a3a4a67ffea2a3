//! The serving stage: Deployment, Service, readiness and pod problems.

use super::*;

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

/// What only the Deployment knows: pods it cannot create, a rollout past its deadline. Told in
/// its own words, after any problem the pods show themselves.
#[test]
fn a_deployment_that_cannot_go_on_is_reported_in_its_own_words() {
    let quota = "pods \"iris-serving-7d9f-x2\" is forbidden: exceeded quota: pods, requested: pods=1, used: \
                 pods=1, limited: pods=1";
    let stalled = |m: &MLModel, pods: Vec<PodObs>, why: &str, message: &str| {
        let mut observed = serving(m, 1, pods);
        observed.deployment.as_mut().unwrap().stalled = Some((why.to_owned(), message.to_owned()));
        decide(m, &observed, &settings())
    };
    let mut m = model();
    m.spec.replicas = 2;

    // One pod serves, the second cannot be created: degraded, in the quota's words.
    let d = stalled(&m, vec![ready_pod("iris-serving-a", 1)], "FailedCreate", quota);
    assert_eq!(d.status.phase, Some(Phase::Serving));
    let degraded = condition(&d.status, "Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "QuotaExceeded")
    );
    assert!(
        degraded
            .message
            .contains(&format!("deployment iris-serving: FailedCreate: {quota}")),
        "{}",
        degraded.message
    );
    assert!(message(&d).contains("1/2 pods ready"), "{}", message(&d));

    // No pod at all: the model fails with that reason, and recovers when pods come (the
    // Deployment retries by itself).
    for (why, text, reason) in [
        ("FailedCreate", quota, "QuotaExceeded"),
        (
            "FailedCreate",
            "pods \"iris-serving-7d9f-x2\" is forbidden: error looking up service account ml/iris-server: \
             serviceaccount \"iris-server\" not found",
            "FailedCreate",
        ),
        (
            "ProgressDeadlineExceeded",
            "ReplicaSet \"iris-serving-7d9f\" has timed out progressing.",
            "ProgressDeadlineExceeded",
        ),
    ] {
        let d = stalled(&m, Vec::new(), why, text);
        assert_eq!(d.status.phase, Some(Phase::Failed), "{why}: {text}");
        assert_eq!(last_failure(&d).reason, reason, "{text}");
        assert_eq!(message(&d), format!("deployment iris-serving: {why}: {text}"));
        let recovered = decide(
            &with_status(&m, d.status),
            &serving(
                &m,
                1,
                vec![ready_pod("iris-serving-a", 1), ready_pod("iris-serving-b", 1)],
            ),
            &settings(),
        );
        assert_eq!(recovered.status.phase, Some(Phase::Ready), "{reason}");
    }

    // A pod's own problem is the more precise one.
    let d = stalled(
        &m,
        vec![crash_looping("iris-serving-a", 5, ("Error", 1))],
        "ProgressDeadlineExceeded",
        "ReplicaSet \"iris-serving-7d9f\" has timed out progressing.",
    );
    assert_eq!(last_failure(&d).reason, "CrashLoopBackOff");
}

//! The download stage: the download Job, its problems, and the versions a spec change needs.

use super::*;

// ---------------------------------------------------------------------------------------------
// Creation: download
// ---------------------------------------------------------------------------------------------
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

    let env = applied_job_container(&d).env.clone().unwrap();
    assert!(
        env.iter()
            .any(|e| e.name == "TRACEPARENT" && e.value.as_deref() == Some(traceparent))
    );
    assert_eq!(d.status.traceparent.as_deref(), Some(traceparent));
}

#[test]
fn credentials_in_a_signed_url_never_reach_the_status() {
    let mut m = model();
    m.spec.model_url = Some("https://h.example/m.tar.gz?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA".to_owned());
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

/// A claim slow to bind is progress, however long the scheduler has said so: only the
/// provisioner's own failure fails the model (`StorageUnavailable`). A failed download is
/// still reported while the claim is unbound.
#[test]
fn an_unbound_volume_is_waited_for_and_does_not_hide_a_failed_download() {
    let m = model();
    let waiting = PodObs {
        phase: "Pending".to_owned(),
        unschedulable: Some((
            "0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims.".to_owned(),
            Some(ago(600)),
        )),
        ..download_pod("iris-download-1-x7k2p", 1)
    };
    let observed = Observed {
        pvc: pvc("Pending"),
        jobs: vec![running_job(&m, 1)],
        pods: vec![waiting],
        ..nothing()
    };
    let d = decide(&m, &observed, &settings());
    assert_eq!(d.status.phase, Some(Phase::CreatingStorage));
    assert_eq!(message(&d), "waiting for volume iris-model to be bound (it is Pending)");
    assert!(d.status.last_failure.is_none());

    let observed = Observed {
        pvc: pvc("Pending"),
        jobs: vec![failed_job(&m, 1)],
        pods: vec![download_pod("iris-download-1-x7k2p", 1)],
        ..nothing()
    };
    let d = decide(&m, &observed, &settings());
    assert_eq!(d.status.phase, Some(Phase::Failed));
    assert_eq!(last_failure(&d).reason, "DownloadFailed");
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
    other.spec.model_url = Some("https://models.example.com/iris-v2.tar.gz".to_owned());
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
                claim_uid: None,
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
    v2.spec.model_url = Some("https://models.example.com/iris-v2.tar.gz".to_owned());
    assert_eq!(target_version(&v2, &serving_v1), 2);

    // The download of version 2 starts; version 1 is left alone.
    let d = decide(&v2, &serving_v1, &settings());
    assert_eq!(summary(&d.actions), ["ApplyJob iris-download-2"]);
    let args = applied_job_container(&d).args.clone().unwrap();
    assert!(
        args.contains(&"--prune".to_owned()) && args.contains(&"--keep-version=1".to_owned()),
        "version 1 serves, so it stays on the volume; any older one goes: {args:?}"
    );
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
    v2.spec.model_url = Some("https://models.example.com/iris-v2.tar.gz".to_owned());
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
    v2.spec.model_url = Some("https://models.example.com/iris-v2.tar.gz".to_owned());
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

/// A new version that fails to download while the old one serves is a failed update: the
/// model stays Available on its endpoint, `Ready` is False with reason `UpdateFailed`, and
/// reverting the spec recovers at once with no new download.
#[test]
fn a_failed_update_keeps_the_model_available_and_says_the_update_failed() {
    let v1 = model();
    let serving_v1 = serving(&v1, 1, vec![ready_pod("iris-serving-old", 1)]);
    let ready = decide(&v1, &serving_v1, &settings()).status;
    let mut v2 = next_generation(&v1, ready.clone());
    v2.spec.model_url = Some("https://models.example.com/absent.tar.gz".to_owned());
    let mut failing = serving_v1.clone();
    failing.jobs.push(failed_job(&v2, 2));

    let d = decide(&v2, &failing, &settings());
    assert_eq!(d.status.phase, Some(Phase::UpdateFailed));
    let ready_condition = condition(&d.status, "Ready");
    assert_eq!(
        (ready_condition.status.as_str(), ready_condition.reason.as_str()),
        ("False", "UpdateFailed")
    );
    assert!(
        message(&d)
            .starts_with("the update to generation 2 failed (DownloadFailed): download Job iris-download-2 failed"),
        "{}",
        message(&d)
    );
    assert!(message(&d).ends_with("; version 1 keeps serving"), "{}", message(&d));
    assert_eq!(last_failure(&d).reason, "DownloadFailed");
    assert_eq!(condition(&d.status, "Available").status, "True");
    assert_eq!(d.status.service_endpoint.as_deref(), Some(ENDPOINT));
    assert_eq!(d.status.serving.as_ref().map(|s| s.generation), Some(1));
    let event = transition_event(Some(&ready), &d.status).expect("an Event");
    assert!(event.warning);
    assert_eq!(event.reason, "DownloadFailed");

    // Reverting the URL: version 1 is what the spec needs again, already on the volume.
    let mut v3 = next_generation(&v2, d.status);
    v3.spec.model_url = v1.spec.model_url.clone();
    assert_eq!(target_version(&v3, &failing), 1);
    let d = decide(&v3, &failing, &settings());
    assert_eq!(d.status.phase, Some(Phase::Ready));
    assert!(
        !summary(&d.actions).iter().any(|a| a.starts_with("ApplyJob")),
        "{:?}",
        summary(&d.actions)
    );
}

/// Without a version serving, a failed download is plainly Failed.
#[test]
fn a_failed_first_rollout_is_failed_not_a_failed_update() {
    let m = model();
    let mut observed = nothing();
    observed.pvc = pvc("Bound");
    observed.jobs.push(failed_job(&m, 1));
    let d = decide(&m, &observed, &settings());
    assert_eq!(d.status.phase, Some(Phase::Failed));
    assert_eq!(condition(&d.status, "Ready").reason, "DownloadFailed");
}

//! The storage stage: finalizer and volume claim.

use super::*;

// ---------------------------------------------------------------------------------------------
// Creation: finalizer and storage
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

// ---------------------------------------------------------------------------------------------
// A larger storageSize
// ---------------------------------------------------------------------------------------------

/// A Ready model whose claim asks for `requested` and has `capacity`, its spec asking for
/// `wanted`.
fn sized(wanted: &str, requested: &str, capacity: &str) -> (MLModel, Observed) {
    let mut m = model();
    m.spec.storage_size = wanted.to_owned();
    let mut observed = serving(&m, 1, vec![ready_pod("iris-serving-a", 1)]);
    observed.pvc = Some(PvcObs {
        requested: Some(requested.to_owned()),
        capacity: Some(capacity.to_owned()),
        ..pvc("Bound").unwrap()
    });
    let ready = decide(&m, &observed, &settings());
    assert_eq!(ready.status.phase, Some(Phase::Ready), "{:?}", ready.status);
    (with_status(&m, ready.status), observed)
}

#[test]
fn a_larger_storage_size_expands_the_claim_and_says_so_until_the_volume_has_grown() {
    let (m, mut observed) = sized("2Gi", "1Gi", "1Gi");
    let d = decide(&m, &observed, &settings());
    assert_eq!(summary(&d.actions), ["ResizePvc iris-model"]);
    let Some(Action::ResizePvc(claim)) = d.actions.first() else {
        panic!("a resize")
    };
    let requests = claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref());
    assert_eq!(requests.map(|r| r["storage"].0.as_str()), Some("2Gi"));
    let resized = condition(&d.status, "StorageResized");
    assert_eq!(
        (resized.status.as_str(), resized.reason.as_str()),
        ("False", "Resizing")
    );
    assert_eq!(resized.message, "expanding volume iris-model from 1Gi to 2Gi");
    assert_eq!(d.status.phase, Some(Phase::Ready), "the model serves on meanwhile");

    // Asked for; the storage provider has not grown the volume yet.
    observed.pvc.as_mut().unwrap().requested = Some("2Gi".to_owned());
    let m = with_status(&m, d.status);
    let d = decide(&m, &observed, &settings());
    assert!(d.actions.is_empty(), "{:?}", summary(&d.actions));
    let resized = condition(&d.status, "StorageResized");
    assert_eq!(
        (resized.status.as_str(), resized.reason.as_str()),
        ("False", "Resizing")
    );
    assert_eq!(
        resized.message,
        "volume iris-model has 1Gi of the 2Gi asked for; the storage provider is expanding it"
    );

    // Grown.
    observed.pvc.as_mut().unwrap().capacity = Some("2Gi".to_owned());
    let m = with_status(&m, d.status);
    let d = decide(&m, &observed, &settings());
    let resized = condition(&d.status, "StorageResized");
    assert_eq!((resized.status.as_str(), resized.reason.as_str()), ("True", "Resized"));
    assert_eq!(resized.message, "volume iris-model has 2Gi");
}

#[test]
fn a_refused_expansion_is_reported_and_never_fails_the_model() {
    let (m, mut observed) = sized("2Gi", "1Gi", "1Gi");
    let refusal = "the API server refused apply persistentvolumeclaim/iris-model: only dynamically \
                   provisioned pvc can be resized and the storageclass that provisions the pvc must support resize";
    observed.resize_refused = Some(("2Gi".to_owned(), refusal.to_owned()));
    let d = decide(&m, &observed, &settings());
    assert!(d.actions.is_empty(), "not asked again: {:?}", summary(&d.actions));
    assert_eq!(d.status.phase, Some(Phase::Ready));
    assert!(d.status.last_failure.is_none());
    let resized = condition(&d.status, "StorageResized");
    assert_eq!(
        (resized.status.as_str(), resized.reason.as_str()),
        ("False", "ExpansionRefused")
    );
    assert_eq!(
        resized.message,
        format!("volume iris-model stays at 1Gi: expanding it to 2Gi was refused: {refusal}")
    );

    // A new size is a new request.
    let (m, _) = sized("3Gi", "1Gi", "1Gi");
    let d = decide(&m, &observed, &settings());
    assert_eq!(summary(&d.actions), ["ResizePvc iris-model"]);
}

#[test]
fn an_unchanged_storage_size_reports_no_resizing() {
    for (wanted, requested) in [("1Gi", "1Gi"), ("1024Mi", "1Gi"), ("1G", "1Gi")] {
        let (m, observed) = sized(wanted, requested, requested);
        let d = decide(&m, &observed, &settings());
        assert!(d.actions.is_empty(), "{wanted}: {:?}", summary(&d.actions));
        assert!(
            d.status.conditions.iter().all(|c| c.type_ != "StorageResized"),
            "{wanted}: {:?}",
            d.status.conditions
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A claim that cannot be provisioned, a claim deleted or made again: the volume is the truth
// ---------------------------------------------------------------------------------------------

fn provisioning_failed(first_ago: i64) -> Option<Warning> {
    Some(Warning {
        reason: "ProvisioningFailed".to_owned(),
        message: r#"storageclass.storage.k8s.io "fast" not found"#.to_owned(),
        first: Some(ago(first_ago)),
        last: Some(ago(1)),
    })
}

#[test]
fn a_claim_that_cannot_be_provisioned_is_waited_for_then_fails_in_the_provisioners_words() {
    let m = model();
    let mut observed = Observed {
        pvc: Some(PvcObs {
            warning: provisioning_failed(30),
            ..pvc("Pending").unwrap()
        }),
        jobs: vec![running_job(&m, 1)],
        now: now(),
        ..Default::default()
    };
    let d = decide(&m, &observed, &settings());
    assert_eq!(d.status.phase, Some(Phase::CreatingStorage));
    assert_eq!(
        message(&d),
        r#"waiting for volume iris-model to be provisioned (it is Pending); the provisioner retries after: storageclass.storage.k8s.io "fast" not found"#
    );
    assert_eq!(d.requeue_after, secs(91), "woken when the grace ends");

    observed.pvc.as_mut().unwrap().warning = provisioning_failed(121);
    let d = decide(&m, &observed, &settings());
    assert_eq!(d.status.phase, Some(Phase::Failed));
    assert_eq!(last_failure(&d).reason, "StorageUnavailable");
    assert_eq!(
        last_failure(&d).message,
        r#"volume iris-model cannot be provisioned: storageclass.storage.k8s.io "fast" not found"#
    );
    assert!(d.actions.is_empty(), "{:?}", summary(&d.actions));

    // The StorageClass is created and the claim binds: the model goes on.
    let failed = with_status(&m, d.status);
    observed.pvc = Some(PvcObs {
        warning: provisioning_failed(200),
        ..pvc("Bound").unwrap()
    });
    let d = decide(&failed, &observed, &settings());
    assert_eq!(d.status.phase, Some(Phase::Downloading), "{:?}", d.status.message);

    // A claim slow to bind, with no failure reported, is only waited for.
    observed.pvc = pvc("Pending");
    let d = decide(&m, &observed, &settings());
    assert_eq!(d.status.phase, Some(Phase::CreatingStorage));
    assert_eq!(d.requeue_after, None);
}

#[test]
fn a_claim_deleted_under_a_serving_model_stops_its_pods_and_starts_again_on_a_new_claim() {
    let m = model();
    let mut observed = serving(&m, 1, vec![ready_pod("iris-serving-a", 1)]);
    let ready = decide(&m, &observed, &settings());
    assert_eq!(ready.status.phase, Some(Phase::Ready));
    assert_eq!(
        ready.status.serving.as_ref().and_then(|s| s.claim_uid.as_deref()),
        Some(CLAIM_UID),
        "the serving version records the claim it is on"
    );
    let m = with_status(&m, ready.status);

    // Held by pvc-protection while the pods mount it.
    observed.pvc.as_mut().unwrap().deleting = true;
    let d = decide(&m, &observed, &settings());
    assert_eq!(
        summary(&d.actions),
        ["Delete deployment/iris-serving", "Delete job/iris-download-1"]
    );
    assert_eq!(d.status.phase, Some(Phase::CreatingStorage));
    assert_eq!(condition(&d.status, "Ready").reason, "VolumeDeleted");
    assert_eq!(
        message(&d),
        "volume iris-model was deleted: the model's pods are stopped so that it can go, then the model is \
         downloaded into a new volume and served again"
    );
    assert_eq!(condition(&d.status, "Available").status, "False");
    assert_eq!(d.status.serving, None);
    assert_eq!(d.status.service_endpoint, None);
}

#[test]
fn a_claim_made_again_is_downloaded_into_before_anything_serves_from_it() {
    let m = model();
    let ready = decide(&m, &serving(&m, 1, vec![ready_pod("iris-serving-a", 1)]), &settings());
    let m = with_status(&m, ready.status);
    let new_claim = || PvcObs {
        uid: Some("a-new-claim".to_owned()),
        created: Some(ago(5)),
        ..pvc("Bound").unwrap()
    };

    // The old download Job is still there: it filled the old claim.
    let old_job = JobObs {
        created: Some(ago(3000)),
        ..succeeded_job(&m, 1)
    };
    let observed = Observed {
        pvc: Some(new_claim()),
        jobs: vec![old_job],
        now: now(),
        ..Default::default()
    };
    let d = decide(&m, &observed, &settings());
    assert_eq!(summary(&d.actions), ["Delete job/iris-download-1"]);
    assert_eq!(d.status.phase, Some(Phase::Downloading));
    assert_eq!(
        message(&d),
        "volume iris-model is new: version 1 is downloaded into it again"
    );

    // Once it is gone, version 1 is downloaded again: the status alone is not the volume.
    let observed = Observed {
        pvc: Some(new_claim()),
        now: now(),
        ..Default::default()
    };
    let d = decide(&m, &observed, &settings());
    assert_eq!(summary(&d.actions), ["ApplyJob iris-download-1"]);

    // Downloaded into the new claim: served, and the status records the new claim.
    let observed = Observed {
        pvc: Some(new_claim()),
        jobs: vec![JobObs {
            created: Some(ago(4)),
            ..succeeded_job(&m, 1)
        }],
        pods: vec![ready_pod("iris-serving-b", 1)],
        deployment: Some(deployment_of(&m, 1)),
        service: Some(service_of(&m)),
        now: now(),
        ..Default::default()
    };
    let d = decide(&m, &observed, &settings());
    assert_eq!(d.status.phase, Some(Phase::Ready));
    assert_eq!(
        d.status.serving.and_then(|s| s.claim_uid).as_deref(),
        Some("a-new-claim")
    );
}

#[test]
fn a_pod_whose_volume_cannot_be_mounted_fails_with_the_kubelets_words_after_the_grace() {
    let m = model();
    let mount = |first_ago: i64| PodObs {
        phase: "Pending".to_owned(),
        warning: Some(Warning {
            reason: "FailedMount".to_owned(),
            message: "MountVolume.SetUp failed for volume \"model\" : mount failed: exit status 32".to_owned(),
            first: Some(ago(first_ago)),
            last: Some(ago(1)),
        }),
        ..pod("iris-serving-a", 1)
    };
    let d = decide(&m, &serving(&m, 1, vec![mount(10)]), &settings());
    assert_eq!(d.status.phase, Some(Phase::Serving));
    assert_eq!(d.requeue_after, secs(111));

    let d = decide(&m, &serving(&m, 1, vec![mount(130)]), &settings());
    assert_eq!(d.status.phase, Some(Phase::Failed));
    assert_eq!(last_failure(&d).reason, "FailedMount");
    assert_eq!(
        last_failure(&d).message,
        "pod iris-serving-a: cannot start: FailedMount: MountVolume.SetUp failed for volume \"model\" : mount \
         failed: exit status 32"
    );

    // Once the pod runs, an old Event says nothing.
    let running = PodObs {
        phase: "Running".to_owned(),
        ready: true,
        ..mount(130)
    };
    let d = decide(&m, &serving(&m, 1, vec![running]), &settings());
    assert_eq!(d.status.phase, Some(Phase::Ready));
}

#[test]
fn a_download_job_that_cannot_create_its_pod_says_why() {
    let m = model();
    let quota = r#"Error creating: pods "iris-download-1-x" is forbidden: exceeded quota: pods, requested: pods=1, used: pods=2, limited: pods=2"#;
    let observed = Observed {
        pvc: pvc("Bound"),
        jobs: vec![JobObs {
            warning: Some(Warning {
                reason: "FailedCreate".to_owned(),
                message: quota.to_owned(),
                first: Some(ago(5)),
                last: Some(ago(5)),
            }),
            ..running_job(&m, 1)
        }],
        now: now(),
        ..Default::default()
    };
    let d = decide(&m, &observed, &settings());
    assert_eq!(d.status.phase, Some(Phase::Failed));
    assert_eq!(last_failure(&d).reason, "QuotaExceeded");
    assert_eq!(
        last_failure(&d).message,
        format!("download Job iris-download-1: cannot create its pod: {quota}")
    );

    // Once its pod exists, the old Event says nothing.
    let mut observed = observed;
    observed.pods = vec![download_pod("iris-download-1-x", 1)];
    let d = decide(&m, &observed, &settings());
    assert_eq!(d.status.phase, Some(Phase::Downloading));
}

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
        phase: "Bound".to_owned(),
        deleting: false,
        requested: Some(requested.to_owned()),
        capacity: Some(capacity.to_owned()),
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

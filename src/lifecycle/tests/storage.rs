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

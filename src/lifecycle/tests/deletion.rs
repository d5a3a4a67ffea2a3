//! The deletion stage.

use super::*;

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
        ..Default::default()
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

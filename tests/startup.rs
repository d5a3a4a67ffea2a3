//! No event is lost while the operator starts: with many models already present, a model
//! applied and a download Job that completes while a new operator process starts are both
//! acted on.
//!
//! One test in this binary: it runs its own operator processes, and two operators without
//! leader election must never run at once.

mod kubelet;
mod operator;
mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use mlmodel_operator::api::{MLModel, Phase};

const TIMEOUT: Duration = Duration::from_secs(90);
const MODELS: usize = 60;

fn held(name: &str) -> String {
    format!(
        "apiVersion: oda.tmforum.org/v1beta1\nkind: MLModel\nmetadata:\n  name: {name}\nspec:\n  modelURL: {}\n",
        kubelet::HELD_URL
    )
}

#[tokio::test]
async fn a_model_applied_and_a_job_completed_during_start_up_are_acted_on() {
    let mut first = operator::start("first", &[]);
    first.wait_ready(TIMEOUT);
    let ns = support::namespace("startup").await;
    let manifests: String = (0..MODELS)
        .map(|i| format!("---\n{}", held(&format!("m-{i}"))))
        .collect();
    ns.apply_yaml(&manifests);
    let models = ns.api::<MLModel>();
    for i in 0..MODELS {
        support::wait_for(&models, &format!("m-{i}"), TIMEOUT, |m| {
            m.status.as_ref().and_then(|s| s.phase) == Some(Phase::Downloading)
        })
        .await;
    }
    let pods: Api<Pod> = ns.api();
    let download = kubelet::pods(
        &pods,
        "mlmodel.oda.tmforum.org/name=m-0,app.kubernetes.io/component=download",
        1,
    )
    .await;
    first.kill();

    // The new process starts; while it lists and starts its actors, a model is applied and
    // the download of m-0 completes.
    // It streams its initial lists: a model found that way is acted on like a listed one.
    let second = operator::start("second", &[("INITIAL_LIST", "auto")]);
    ns.apply_yaml(&held("late"));
    kubelet::terminated(&pods, &download[0], 0, "").await;

    support::wait_for(&ns.api::<Job>(), "late-download-1", TIMEOUT, |_| true).await;
    support::wait_for(&ns.api::<Deployment>(), "m-0-serving", TIMEOUT, |_| true).await;
    support::wait_for(&models, "m-0", TIMEOUT, |m| {
        m.status.as_ref().and_then(|s| s.phase) == Some(Phase::Serving)
            || m.status.as_ref().and_then(|s| s.phase) == Some(Phase::Ready)
    })
    .await;
    support::wait_for(&models, "late", TIMEOUT, |m| {
        m.status.as_ref().and_then(|s| s.phase) == Some(Phase::Downloading)
    })
    .await;
    assert!(second.logs().contains("every model has its actor"), "{}", second.logs());
    // The test bed's API server streams initial lists (`initial_list` has one that does not).
    assert!(second.logs().contains("initial_list=stream"), "{}", second.logs());
}

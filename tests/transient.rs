//! A transient API failure (here: the API server is down while a model's state changes) is
//! retried with backoff inside the model's actor and never decides the model's fate by itself.
//!
//! Own test binary: it stops and restarts the API server of its cluster.

mod operator;
mod support;

use std::time::Duration;

use mlmodel_operator::api::{MLModel, Phase};

const TIMEOUT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn an_api_outage_is_retried_and_never_fails_a_model_by_itself() {
    let op = operator::shared();
    let cluster = support::cluster();
    let ns = support::namespace("outage").await;
    let sample =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/samples/gpu-too-big.yaml")).unwrap();
    ns.apply_yaml(&sample);
    let models = ns.api::<MLModel>();
    // Serving, with the scheduler's complaint, inside its 5 s grace period.
    support::wait_for(&models, "resnet-gpu", TIMEOUT, |m| {
        m.status.as_ref().is_some_and(|s| {
            s.phase == Some(Phase::Serving) && s.message.as_deref().is_some_and(|m| m.contains("nvidia.com/gpu"))
        })
    })
    .await;

    // The grace period ends while the API server is down: the status write fails.
    support::restart_apiserver(&cluster.state_dir, Duration::from_secs(8));
    let client = ns.client.clone();
    support::poll_until("the API server is back", TIMEOUT, || async {
        kube::Api::<MLModel>::namespaced(client.clone(), &ns.name)
            .list(&Default::default())
            .await
            .ok()
    })
    .await;

    let m = support::wait_for(&models, "resnet-gpu", TIMEOUT, |m| {
        m.status.as_ref().and_then(|s| s.phase) == Some(Phase::Failed)
    })
    .await;
    let failure = m.status.unwrap().last_failure.unwrap();
    assert_eq!(
        failure.reason, "Unschedulable",
        "the model's own failure, not the outage: {failure:?}"
    );
    let logs = op.logs();
    assert!(
        logs.contains("API call failed; will retry"),
        "the outage was met and retried:\n{logs}"
    );
}

//! The caches are the one source of truth: a child deleted while the operator's watches are cut
//! (the operator paused, the API server restarted) no longer shows in the model's status once
//! the watches recover, even when the watch resumes with a relist and no Delete event.
//!
//! Own test binary: it restarts the API server of its cluster.

mod kubelet;
mod operator;
mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::DeleteParams;
use kube::{Api, ResourceExt};
use mlmodel_operator::api::MLModel;

const TIMEOUT: Duration = Duration::from_secs(90);

fn degraded(m: &MLModel) -> Option<(String, String)> {
    let c = m.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Degraded")?;
    Some((c.status.clone(), c.message.clone()))
}

#[tokio::test]
async fn a_child_deleted_while_the_watches_are_cut_leaves_the_status() {
    let op = operator::shared();
    let cluster = support::cluster();
    let ns = support::namespace("relist").await;
    ns.apply_yaml(&format!(
        "apiVersion: oda.tmforum.org/v1beta1\nkind: MLModel\nmetadata:\n  name: pair\nspec:\n  \
         modelURL: https://models.example.com/pair.tar.gz\n  replicas: 2\n  framework: custom\n  runtime:\n    \
         image: {}\n",
        kubelet::HELD_IMAGE
    ));
    let pods: Api<Pod> = ns.api();
    let serving = kubelet::pods(
        &pods,
        "mlmodel.oda.tmforum.org/name=pair,app.kubernetes.io/component=serving",
        2,
    )
    .await;
    let (good, bad) = (&serving[0], &serving[1]);
    kubelet::ready(&pods, good).await;
    kubelet::crash_looping(&pods, bad, 1, "Error", 1, "boom").await;
    let models = ns.api::<MLModel>();
    let bad_name = bad.name_any();
    support::wait_for(&models, "pair", TIMEOUT, |m| {
        degraded(m).is_some_and(|(s, msg)| s == "True" && msg.contains(&bad_name))
    })
    .await;

    // The operator sees nothing while the pod goes and the API server restarts.
    op.signal("STOP");
    pods.delete(&bad_name, &DeleteParams::default().grace_period(0))
        .await
        .expect("delete the crash-looping pod");
    support::wait_for_deletion(&pods, &bad_name, TIMEOUT).await;
    support::restart_apiserver(&cluster.state_dir, Duration::from_secs(2));
    let client = ns.client.clone();
    support::poll_until("the API server is back", TIMEOUT, || async {
        Api::<MLModel>::namespaced(client.clone(), &ns.name)
            .list(&Default::default())
            .await
            .ok()
    })
    .await;
    op.signal("CONT");

    let m = support::wait_for(&models, "pair", TIMEOUT, |m| {
        degraded(m).is_none_or(|(s, msg)| s != "True" && !msg.contains(&bad_name))
            && !m
                .status
                .as_ref()
                .and_then(|s| s.message.as_deref())
                .unwrap_or_default()
                .contains(&bad_name)
    })
    .await;
    eprintln!(
        "status after the watches recovered: {:?}",
        m.status.and_then(|s| s.message)
    );
}

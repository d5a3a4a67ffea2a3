//! A model is its uid, not its name: a model deleted and re-created under the same name while
//! no operator runs gets a new download and a fresh status, never the old model's.
//!
//! One test in this binary: it runs its own operator processes, and two operators without
//! leader election must never run at once.

mod kubelet;
mod operator;
mod support;

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use mlmodel_operator::api::{MLModel, Phase};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(90);

fn manifest(url: &str) -> String {
    format!("apiVersion: oda.tmforum.org/v1beta1\nkind: MLModel\nmetadata:\n  name: iris\nspec:\n  modelURL: {url}\n")
}

fn phase(m: &MLModel) -> Option<Phase> {
    m.status.as_ref().and_then(|s| s.phase)
}

#[tokio::test]
async fn a_model_recreated_during_an_outage_gets_a_new_download_and_a_fresh_status() {
    let mut first = operator::start("first", &[]);
    first.wait_ready(TIMEOUT);
    let ns = support::namespace("identity").await;
    ns.apply_yaml(&manifest("https://models.example.com/iris.tar.gz"));
    let models = ns.api::<MLModel>();
    let old = support::wait_for(&models, "iris", TIMEOUT, |m| phase(m) == Some(Phase::Ready)).await;
    let old_uid = old.uid().expect("uid");

    // The operator is down: the model is deleted (its finalizer removed by hand) and
    // re-created under the same name, with a download that does not finish by itself.
    first.kill();
    ns.kubectl()
        .args(["delete", "mlmodel", "iris", "--wait=false"])
        .output()
        .expect("kubectl delete");
    models
        .patch(
            "iris",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("remove the finalizer");
    support::wait_for_deletion(&models, "iris", TIMEOUT).await;
    ns.apply_yaml(&manifest(kubelet::HELD_URL));
    let new_uid = models.get("iris").await.expect("the new model").uid().expect("uid");
    assert_ne!(old_uid, new_uid);

    let second = operator::start("second", &[]);
    second.wait_ready(TIMEOUT);

    // A download Job of the new model: owned by the new uid.
    let jobs: Api<Job> = ns.api();
    let job = support::poll_until("a download Job of the new model", TIMEOUT, || async {
        jobs.list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|j| j.owner_references().iter().any(|o| o.uid == new_uid))
    })
    .await;
    eprintln!("new download Job {}", job.name_any());

    // Its status is its own: downloading, nothing served, never the old model's Ready.
    let m = support::wait_for(&models, "iris", TIMEOUT, |m| phase(m) == Some(Phase::Downloading)).await;
    let status = m.status.expect("status");
    assert!(status.serving.is_none(), "no version served yet: {status:?}");
    assert_ne!(status.ready.as_deref(), Some("1/1"), "{status:?}");
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let m = models.get("iris").await.expect("the model");
        assert_ne!(
            phase(&m),
            Some(Phase::Ready),
            "never the old model's status: {:?}",
            m.status
        );
    }
}

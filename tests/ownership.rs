//! Never adopt: a Service and a claim that exist under a child's name and that the model does
//! not own are left untouched; the model is Failed naming them and recovers once the names are
//! free.

mod operator;
mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Service};
use kube::Api;
use kube::api::DeleteParams;
use mlmodel_operator::api::{MLModel, Phase};

const TIMEOUT: Duration = Duration::from_secs(90);

fn failed_naming(m: &MLModel, object: &str) -> bool {
    m.status.as_ref().is_some_and(|s| {
        s.phase == Some(Phase::Failed)
            && s.last_failure.as_ref().is_some_and(|f| f.reason == "ResourceExists")
            && s.message.as_deref().is_some_and(|msg| msg.contains(object))
    })
}

fn untouched(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
    assert!(meta.owner_references.is_none(), "not adopted: {meta:?}");
    assert!(
        meta.labels.as_ref().is_none_or(|l| l.keys().all(|k| k == "owner")),
        "labels untouched: {meta:?}"
    );
}

#[tokio::test]
async fn a_foreign_service_and_claim_are_never_adopted() {
    operator::shared();
    let ns = support::namespace("ownership").await;
    ns.apply_yaml(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: iris-model\n  labels:\n    owner: someone-else\n\
         spec:\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: 1Gi\n\
         ---\napiVersion: v1\nkind: Service\nmetadata:\n  name: iris\n  labels:\n    owner: someone-else\n\
         spec:\n  selector:\n    app: someone-else\n  ports:\n  - port: 80\n",
    );
    ns.apply_yaml(
        "apiVersion: oda.tmforum.org/v1beta1\nkind: MLModel\nmetadata:\n  name: iris\nspec:\n  \
         modelURL: https://models.example.com/iris.tar.gz\n",
    );
    let models = ns.api::<MLModel>();
    let claims: Api<PersistentVolumeClaim> = ns.api();
    let services: Api<Service> = ns.api();

    // The claim comes first: the model stops there, and nothing mounts the user's claim.
    support::wait_for(&models, "iris", TIMEOUT, |m| {
        failed_naming(m, "persistentvolumeclaim/iris-model")
    })
    .await;
    untouched(&claims.get("iris-model").await.expect("the claim").metadata);
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = ns.api();
    assert!(
        jobs.list(&Default::default()).await.expect("jobs").items.is_empty(),
        "no download Job while the claim is not the model's"
    );

    claims
        .delete("iris-model", &DeleteParams::default())
        .await
        .expect("delete the foreign claim");
    support::wait_for(&models, "iris", TIMEOUT, |m| failed_naming(m, "service/iris")).await;
    let service = services.get("iris").await.expect("the Service");
    untouched(&service.metadata);
    assert_eq!(
        service
            .spec
            .and_then(|s| s.selector)
            .and_then(|s| s.get("app").cloned()),
        Some("someone-else".to_owned()),
        "the Service's spec is untouched"
    );

    services
        .delete("iris", &DeleteParams::default())
        .await
        .expect("delete the foreign Service");
    support::wait_for(&models, "iris", TIMEOUT, |m| {
        m.status.as_ref().and_then(|s| s.phase) == Some(Phase::Ready)
    })
    .await;
    let service = services.get("iris").await.expect("the model's Service");
    assert!(
        service.metadata.owner_references.is_some(),
        "the model's own Service now"
    );
}

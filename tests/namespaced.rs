//! A namespace-scoped install (`deploy/namespaced/`): the operator started with
//! `--namespaces <a>` and only the Roles of that overlay (no ClusterRole) serves a model in
//! `a` and leaves a model in another namespace alone.
//!
//! `cargo test --test namespaced`

mod operator;
mod support;

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::ResourceExt;
use kube::api::ListParams;
use mlmodel_operator::api::{MLModel, Phase};

const TIMEOUT: Duration = Duration::from_secs(90);

fn repo_path(path: &str) -> String {
    format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))
}

fn model(name: &str) -> String {
    format!(
        "apiVersion: oda.tmforum.org/v1beta1\nkind: MLModel\nmetadata:\n  name: {name}\nspec:\n  \
         modelURL: https://models.example.com/{name}.tar.gz\n"
    )
}

#[tokio::test]
async fn a_namespaced_operator_acts_only_in_its_namespaces() {
    let cluster = support::cluster();
    // The overlay as an administrator applies it; its example namespace must exist first.
    cluster.kubectl_ok(&["create", "namespace", "ml-models"]);
    cluster.kubectl_ok(&["apply", "-k", &repo_path("deploy/namespaced")]);
    operator::wait_for_crd();
    let clusterroles = cluster.kubectl_ok(&["get", "clusterrolebindings", "-o", "name"]);
    assert!(
        !clusterroles.contains("clusterrolebinding.rbac.authorization.k8s.io/mlmodel-operator"),
        "the namespaced install binds no ClusterRole"
    );

    let watched = support::namespace("watched").await;
    let other = support::namespace("other").await;
    cluster.kubectl_ok(&[
        "apply",
        "-n",
        &watched.name,
        "-f",
        &repo_path("deploy/namespaced/role/role.yaml"),
    ]);
    let kubeconfig = operator::service_account_kubeconfig();
    let op = operator::start_with(
        &kubeconfig,
        "namespaced",
        &[("WATCH_NAMESPACES", watched.name.as_str())],
    );
    op.wait_ready(Duration::from_secs(60));

    other.apply_yaml(&model("ignored"));
    watched.apply_yaml(&model("served"));
    support::wait_for(&watched.api::<MLModel>(), "served", TIMEOUT, |m| {
        m.status.as_ref().and_then(|s| s.phase) == Some(Phase::Ready)
    })
    .await;

    // The model in the other namespace: no status, no finalizer, no children.
    let ignored = other.api::<MLModel>().get("ignored").await.expect("the model");
    assert!(ignored.status.is_none(), "untouched: {:?}", ignored.status);
    assert!(
        ignored.finalizers().is_empty(),
        "no finalizer: {:?}",
        ignored.finalizers()
    );
    let claims = other.api::<PersistentVolumeClaim>().list(&ListParams::default()).await;
    assert!(claims.expect("claims").items.is_empty());
    let jobs = other.api::<Job>().list(&ListParams::default()).await;
    assert!(jobs.expect("jobs").items.is_empty());
    let logs = op.logs();
    assert!(
        !logs.contains("forbidden") && !logs.contains("watch error"),
        "every watch and write stayed within the Roles:\n{logs}"
    );
}

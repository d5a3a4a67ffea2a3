//! A malformed MLModel in the watch (written under a looser, older schema) is reported and
//! skipped; it never stalls the watch for the other models.
//!
//! Own test binary: it swaps the CRD's schema for a moment, which no other test may see.

mod operator;
mod support;

use std::time::Duration;

use kube::api::DynamicObject;
use kube::api::{Api, ApiResource};
use mlmodel_operator::api::{MLModel, Phase};

const TIMEOUT: Duration = Duration::from_secs(60);

fn yaml(name: &str) -> String {
    format!(
        "apiVersion: oda.tmforum.org/v1beta1\nkind: MLModel\nmetadata:\n  name: {name}\nspec:\n  \
         modelURL: https://models.example.com/{name}.tar.gz\n"
    )
}

#[tokio::test]
async fn a_malformed_object_is_reported_and_does_not_stall_the_others() {
    operator::shared();
    let cluster = support::cluster();
    let ns = support::namespace("malformed").await;
    let models = ns.api::<MLModel>();
    ns.apply_yaml(&yaml("before"));
    support::wait_for(&models, "before", TIMEOUT, |m| {
        m.status.as_ref().and_then(|s| s.phase) == Some(Phase::Ready)
    })
    .await;

    // An older, looser schema lets a malformed object in...
    let loose = r#"[{"op": "replace", "path": "/spec/versions/0/schema/openAPIV3Schema",
        "value": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}]"#;
    cluster.kubectl_ok(&["patch", "crd", "mlmodels.oda.tmforum.org", "--type=json", "-p", loose]);
    let bad = "apiVersion: oda.tmforum.org/v1beta1\nkind: MLModel\nmetadata:\n  name: legacy\nspec:\n  \
               modelURL: 42\n  replicas: lots\n";
    support::poll_until("the loose schema is served", TIMEOUT, || async {
        let out = ns
            .kubectl()
            .args(["apply", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        let mut out = out;
        use std::io::Write;
        out.stdin.take()?.write_all(bad.as_bytes()).ok()?;
        out.wait().ok()?.success().then_some(())
    })
    .await;
    // ...and the current schema comes back.
    let crd = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/crd/mlmodels.yaml");
    cluster.kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", crd]);

    // The malformed object is reported on its own status.
    let ar = ApiResource::erase::<MLModel>(&());
    let raw: Api<DynamicObject> = Api::namespaced_with(ns.client.clone(), &ns.name, &ar);
    let legacy = support::poll_until("the malformed object is reported", TIMEOUT, || async {
        let obj = raw.get("legacy").await.ok()?;
        let message = obj.data.pointer("/status/message")?.as_str()?.to_owned();
        (obj.data.pointer("/status/phase")?.as_str()? == "Failed").then_some(message)
    })
    .await;
    assert!(legacy.contains("cannot be read"), "{legacy}");

    // Other models are still served: the watch did not stall.
    ns.apply_yaml(&yaml("after"));
    support::wait_for(&models, "after", TIMEOUT, |m| {
        m.status.as_ref().and_then(|s| s.phase) == Some(Phase::Ready)
    })
    .await;
}

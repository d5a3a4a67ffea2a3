//! Least privilege on a real API server: with `deploy/policy/` installed, the operator's
//! ServiceAccount cannot change or delete objects it does not manage, and still takes a model
//! through its lifecycle; a URL given by reference never appears in what the operator writes;
//! the optional image policy refuses MLModels with an image from elsewhere.
//!
//! `cargo test --test security`

mod operator;
mod support;

use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource};
use mlmodel_operator::api::{MLModel, Phase};
use serde::Serialize;
use serde::de::DeserializeOwned;
use support::TestNamespace;

const TIMEOUT: Duration = Duration::from_secs(90);
/// The user the API server sees for the operator's ServiceAccount.
const OPERATOR_USER: &str = "system:serviceaccount:mlmodel-system:mlmodel-operator";
const MANAGED_ONLY: &str = "mlmodel-operator-managed-only";
const ALLOWED_IMAGES: &str = "mlmodel-allowed-images";

fn repo_path(path: &str) -> String {
    format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))
}

/// A client that acts as the operator's ServiceAccount (the admin impersonating it).
async fn operator_client() -> Client {
    let mut config = support::cluster().config().await;
    config.auth_info.impersonate = Some(OPERATOR_USER.to_owned());
    Client::try_from(config).expect("building the impersonating client")
}

/// Installs the CRD, the RBAC and the managed-only policy once, and waits until the API server
/// enforces the policy (policies are loaded asynchronously).
async fn install_policy() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    if INSTALLED.get().is_none() {
        operator::install();
        support::cluster().kubectl_ok(&["apply", "-k", &repo_path("deploy/policy")]);
        // A dry-run change of a foreign Service in the operator's namespace, until denied.
        let probe = "policy-probe";
        support::cluster().apply_yaml(
            Some(operator::OPERATOR_NAMESPACE),
            &format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {probe}\nspec:\n  ports:\n  - port: 80\n"),
        );
        let services: Api<Service> = Api::namespaced(operator_client().await, operator::OPERATOR_NAMESPACE);
        support::poll_until("the managed-only policy to be enforced", TIMEOUT, || {
            let services = services.clone();
            async move {
                let params = PatchParams {
                    dry_run: true,
                    ..Default::default()
                };
                match services.patch(probe, &params, &annotate()).await {
                    Err(kube::Error::Api(s)) if s.message.contains(MANAGED_ONLY) => Some(()),
                    _ => None,
                }
            }
        })
        .await;
        let _ = INSTALLED.set(());
    }
}

fn annotate() -> Patch<serde_json::Value> {
    Patch::Merge(serde_json::json!({"metadata": {"annotations": {"example.com/touched": "yes"}}}))
}

const MANAGED_LABELS: &str = "    app.kubernetes.io/managed-by: mlmodel-operator\n";
const FOREIGN_LABELS: &str = "    app.kubernetes.io/managed-by: someone-else\n";

/// One object of each kind the policy guards, named `name`, with `labels`.
fn objects(name: &str, labels: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  labels:\n{labels}spec:\n  \
         replicas: 0\n  selector:\n    matchLabels:\n      app: {name}\n  template:\n    metadata:\n      \
         labels:\n        app: {name}\n    spec:\n      containers:\n      - name: c\n        \
         image: registry.example.com/c:1\n---\n\
         apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  labels:\n{labels}spec:\n  \
         selector:\n    app: {name}\n  ports:\n  - port: 80\n---\n\
         apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\n  labels:\n{labels}spec:\n  \
         suspend: true\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      \
         - name: c\n        image: registry.example.com/c:1\n---\n\
         apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: {name}\n  labels:\n{labels}spec:\n  \
         accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: 1Mi\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n{labels}spec:\n  \
         containers:\n  - name: c\n    image: registry.example.com/c:1\n"
    )
}

/// Patch and delete of `name` as the operator: `Ok` when allowed, the API server's message
/// when denied.
async fn patch_and_delete<K>(api: &Api<K>, name: &str) -> (Result<(), String>, Result<(), String>)
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let message = |e: kube::Error| match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => panic!("not an API answer: {other}"),
    };
    let patched = api.patch(name, &PatchParams::default(), &annotate()).await;
    let deleted = api.delete(name, &DeleteParams::default()).await;
    (
        patched.map(|_| ()).map_err(message),
        deleted.map(|_| ()).map_err(message),
    )
}

#[tokio::test]
async fn the_operators_identity_cannot_change_or_delete_objects_it_does_not_manage() {
    install_policy().await;
    let ns = support::namespace("foreign").await;
    ns.apply_yaml(&objects("foreign", FOREIGN_LABELS));
    ns.apply_yaml(&objects("unlabelled", "    app: x\n"));
    ns.apply_yaml(&objects("managed", MANAGED_LABELS));
    let client = operator_client().await;
    let at = |kind: &str| format!("{kind} in {}", ns.name);

    let mut denials = Vec::new();
    for name in ["foreign", "unlabelled"] {
        let outcomes = [
            (
                "deployment",
                patch_and_delete(&Api::<Deployment>::namespaced(client.clone(), &ns.name), name).await,
            ),
            (
                "service",
                patch_and_delete(&Api::<Service>::namespaced(client.clone(), &ns.name), name).await,
            ),
            (
                "job",
                patch_and_delete(&Api::<Job>::namespaced(client.clone(), &ns.name), name).await,
            ),
            (
                "persistentvolumeclaim",
                patch_and_delete(
                    &Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns.name),
                    name,
                )
                .await,
            ),
            (
                "pod",
                patch_and_delete(&Api::<Pod>::namespaced(client.clone(), &ns.name), name).await,
            ),
        ];
        for (kind, (patched, deleted)) in outcomes {
            for (verb, outcome) in [("patch", patched), ("delete", deleted)] {
                let message = outcome.expect_err(&format!("{verb} of the {name} {} must be denied", at(kind)));
                assert!(
                    message.contains(MANAGED_ONLY) && message.contains("(403)"),
                    "{verb} {kind}/{name}: denied by the policy, got: {message}"
                );
                denials.push(format!("{verb} {kind}/{name}: {message}"));
            }
        }
    }
    eprintln!("denied writes:\n{}", denials.join("\n"));

    // Taking a foreign object over by labelling it is a change of a foreign object too.
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let relabel = Patch::Merge(serde_json::json!({
        "metadata": {"labels": {"app.kubernetes.io/managed-by": "mlmodel-operator"}}
    }));
    let taken = services.patch("unlabelled", &PatchParams::default(), &relabel).await;
    assert!(
        taken.is_err(),
        "labelling a foreign Service as the operator's is denied"
    );
    // Creating an object without the label is denied; with it, allowed.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let unlabelled: Deployment = serde_yaml::from_str(
        objects("new-foreign", "    app: x\n")
            .split("---")
            .next()
            .expect("the Deployment"),
    )
    .expect("a Deployment");
    let created = deployments.create(&Default::default(), &unlabelled).await;
    assert!(
        matches!(&created, Err(kube::Error::Api(s)) if s.message.contains(MANAGED_ONLY)),
        "creating an unlabelled Deployment is denied: {created:?}"
    );

    // The operator's own objects: changed and deleted as before.
    let outcomes = [
        patch_and_delete(&Api::<Deployment>::namespaced(client.clone(), &ns.name), "managed").await,
        patch_and_delete(&Api::<Service>::namespaced(client.clone(), &ns.name), "managed").await,
        patch_and_delete(&Api::<Job>::namespaced(client.clone(), &ns.name), "managed").await,
        patch_and_delete(
            &Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns.name),
            "managed",
        )
        .await,
        patch_and_delete(&Api::<Pod>::namespaced(client.clone(), &ns.name), "managed").await,
    ];
    for (kind, (patched, deleted)) in ["deployment", "service", "job", "pvc", "pod"].iter().zip(outcomes) {
        assert_eq!(patched, Ok(()), "patch of the operator's {kind}");
        assert_eq!(deleted, Ok(()), "delete of the operator's {kind}");
    }

    // Anyone else is not concerned by the policy.
    let admin: Api<Service> = ns.api();
    admin
        .patch("foreign", &PatchParams::default(), &annotate())
        .await
        .expect("the admin changes a foreign Service");
}

async fn events_about(ns: &TestNamespace, name: &str) -> Vec<String> {
    ns.api::<Event>()
        .list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| format!("{}: {}", e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

fn is_ready(m: &MLModel) -> bool {
    m.status.as_ref().and_then(|s| s.phase) == Some(Phase::Ready)
}

/// The operator, under its ServiceAccount, the RBAC of `deploy/rbac` and the policy, takes a
/// model whose URL is in a Secret from apply to Ready and through deletion; nothing it wrote
/// holds the URL.
#[tokio::test]
async fn the_operator_serves_a_model_under_the_policy_without_revealing_its_url() {
    install_policy().await;
    let op = operator::shared();
    let ns = support::namespace("by-reference").await;
    let secret_url = "https://models.example.com/iris.tar.gz?X-Amz-Signature=topsecret";
    ns.apply_yaml(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: presigned\nstringData:\n  url: \"{secret_url}\"\n---\n\
         apiVersion: oda.tmforum.org/v1beta1\nkind: MLModel\nmetadata:\n  name: iris\nspec:\n  \
         modelURLFrom:\n    secretKeyRef:\n      name: presigned\n      key: url\n---\n\
         apiVersion: oda.tmforum.org/v1beta1\nkind: MLModel\nmetadata:\n  name: signed\nspec:\n  \
         modelURL: \"https://models.example.com/signed.tar.gz?X-Amz-Signature=topsecret&v=1\"\n"
    ));
    let models = ns.api::<MLModel>();
    let iris = support::wait_for(&models, "iris", TIMEOUT, is_ready).await;
    let signed = support::wait_for(&models, "signed", TIMEOUT, is_ready).await;

    let serving = iris.status.as_ref().and_then(|s| s.serving.clone()).expect("serving");
    assert_eq!(serving.model_url, "secretKeyRef:presigned/url");
    let serving = signed.status.as_ref().and_then(|s| s.serving.clone()).expect("serving");
    assert_eq!(serving.model_url, "https://models.example.com/signed.tar.gz");

    // The download Job reads the URL from the Secret; its spec holds neither URL nor value.
    let job = ns.api::<Job>().get("iris-download-1").await.expect("the download Job");
    let job_yaml = serde_yaml::to_string(&job).expect("yaml");
    assert!(!job_yaml.contains("topsecret"), "no URL in the Job:\n{job_yaml}");
    let container = &job.spec.and_then(|s| s.template.spec).expect("pod spec").containers[0];
    assert!(
        container
            .args
            .as_ref()
            .is_some_and(|a| a.contains(&"--url-env=MLMODEL_MODEL_URL".to_owned()))
    );

    // Status, Events and the operator's log show the redacted form only.
    for name in ["iris", "signed"] {
        let model = models.get(name).await.expect("model");
        let status = serde_json::to_string(&model.status).expect("json");
        assert!(!status.contains("topsecret"), "{name}'s status: {status}");
        let events = events_about(&ns, name).await;
        assert!(!events.is_empty(), "{name} has Events");
        assert!(
            events.iter().all(|e| !e.contains("topsecret")),
            "{name}'s Events: {events:?}"
        );
    }
    assert!(
        !op.logs().contains("topsecret"),
        "the operator never logs the signature"
    );

    // Deletion goes through the policy too (children are labelled as the operator's).
    for name in ["iris", "signed"] {
        models.delete(name, &DeleteParams::default()).await.expect("delete");
    }
    for name in ["iris", "signed"] {
        support::wait_for_deletion(&models, name, TIMEOUT).await;
    }
    assert!(
        !op.logs().contains(MANAGED_ONLY),
        "no write of the operator was denied by the policy"
    );
}

/// The optional image policy: a custom image from a registry not on the list is refused at
/// apply time with the policy's message; one from a listed registry is admitted.
#[tokio::test]
async fn the_image_policy_refuses_images_from_other_registries() {
    operator::install();
    let cluster = support::cluster();
    cluster.kubectl_ok(&["apply", "-k", &repo_path("deploy/image-policy")]);
    let ns = support::namespace("images").await;
    let model = |name: &str, image: &str| {
        format!(
            "apiVersion: oda.tmforum.org/v1beta1\nkind: MLModel\nmetadata:\n  name: {name}\nspec:\n  \
             modelURL: https://models.example.com/{name}.tar.gz\n  replicas: 0\n  framework: custom\n  \
             runtime:\n    image: {image}\n"
        )
    };
    let apply = |yaml: String| {
        let mut cmd = ns.kubectl();
        cmd.args(["apply", "--dry-run=server", "-f", "-"]);
        use std::io::Write;
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(yaml.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("kubectl");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // Policies are loaded asynchronously: wait for the first refusal.
    let refusal = support::poll_until("the image policy to be enforced", TIMEOUT, || {
        let outcome = apply(model("elsewhere", "docker.io/someone/server:1"));
        async move { (!outcome.0 && outcome.1.contains(ALLOWED_IMAGES)).then_some(outcome.1) }
    })
    .await;
    eprintln!("refused: {refusal}");
    assert!(
        refusal.contains("spec.runtime.image docker.io/someone/server:1 is not from an allowed registry"),
        "{refusal}"
    );
    // A prefix of the host is not the host.
    let (ok, err) = apply(model("lookalike", "registry.example.com.evil.io/server:1"));
    assert!(!ok && err.contains(ALLOWED_IMAGES), "{err}");
    // Listed registries, and models on their framework's built-in image, are admitted.
    for yaml in [
        model("listed", "registry.example.com/team/server:1"),
        model("org", "ghcr.io/example-org/server:2"),
        "apiVersion: oda.tmforum.org/v1beta1\nkind: MLModel\nmetadata:\n  name: builtin\nspec:\n  \
         modelURL: https://models.example.com/builtin.tar.gz\n"
            .to_owned(),
    ] {
        let (ok, err) = apply(yaml.clone());
        assert!(ok, "admitted:\n{yaml}\n{err}");
    }
}

//! The manifests in `deploy/` are valid against a real API server, and the committed CRD is the
//! one the code generates.
//!
//! `cargo test --test deploy`

mod support;

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `kubectl apply -k deploy/ --dry-run=server`: kustomize renders the tree and the API server
/// validates every object (schemas, CRD structure, RBAC references, Pod Security admission).
#[test]
fn kustomization_applies_with_server_dry_run() {
    let cluster = support::cluster();
    let deploy = repo().join("deploy");
    // A server-side dry run does not create the namespace, so the namespaced objects would be
    // rejected with "namespace not found" in a fresh cluster: create it for real first.
    cluster.kubectl_ok(&["apply", "-f", &deploy.join("rbac/namespace.yaml").to_string_lossy()]);
    let out = cluster
        .kubectl()
        .args(["apply", "-k", &deploy.to_string_lossy(), "--dry-run=server"])
        .output()
        .expect("running kubectl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kubectl apply -k deploy/ --dry-run=server failed ({})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
    for object in [
        "namespace/mlmodel-system",
        "customresourcedefinition.apiextensions.k8s.io/mlmodels.oda.tmforum.org",
        "serviceaccount/mlmodel-operator",
        "clusterrole.rbac.authorization.k8s.io/mlmodel-operator",
        "deployment.apps/mlmodel-operator",
        "validatingadmissionpolicy.admissionregistration.k8s.io/mlmodel-operator-managed-only",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/mlmodel-operator-managed-only",
    ] {
        assert!(
            stdout.contains(object),
            "{object} missing from the dry run's output:\n{stdout}"
        );
    }
    // Pod Security admission only warns on a Deployment whose pods it would reject.
    assert!(
        !stderr.contains("violate PodSecurity"),
        "the Deployment's pods would be rejected by Pod Security \"restricted\":\n{stderr}"
    );
}

/// `deploy/crd/mlmodels.yaml` is exactly what `mlmodel-operator crd` prints.
#[test]
fn committed_crd_matches_generated() {
    let path = repo().join("deploy/crd/mlmodels.yaml");
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let out = Command::new(env!("CARGO_BIN_EXE_mlmodel-operator"))
        .arg("crd")
        .output()
        .expect("running mlmodel-operator crd");
    assert!(
        out.status.success(),
        "mlmodel-operator crd failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = String::from_utf8(out.stdout).expect("the CRD is UTF-8");
    if committed != generated {
        let first = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        let show = |text: &str| text.lines().skip(first).take(5).collect::<Vec<_>>().join("\n");
        panic!(
            "{} is out of date: run `make crd` and commit the result \
             (or see the whole difference with `cargo run -- crd | diff {} -`).\n\
             First difference at line {}:\n--- committed ---\n{}\n--- generated ---\n{}",
            path.display(),
            path.display(),
            first + 1,
            show(&committed),
            show(&generated),
        );
    }
}

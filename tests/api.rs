//! The MLModel API as a user meets it on a real kube-apiserver (no operator running): the CRD
//! installs, valid manifests apply and get their defaults, bad manifests are refused by
//! `kubectl apply` with a message naming the field, printer columns, and `kubectl explain`.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mlmodel_operator::api::MLModel;
use serde_json::Value;
use support::{TestCluster, TestNamespace};

const CRD_NAME: &str = "mlmodels.oda.tmforum.org";
const API_VERSION: &str = "oda.tmforum.org/v1beta1";
/// How long to wait for the apiserver to publish the CRD's OpenAPI (used by `kubectl explain`).
const OPENAPI_TIMEOUT: Duration = Duration::from_secs(60);

fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// What one kubectl run printed.
struct Ran {
    success: bool,
    status: String,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn describe(&self) -> String {
        format!(
            "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` (stdin from `input` when given) and captures its output; never panics on failure.
fn run(cmd: &mut Command, input: Option<&str>) -> Ran {
    use std::io::Write;
    let mut child = cmd
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if let Some(input) = input {
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input.as_bytes())
            .expect("writing kubectl stdin");
    }
    let out = child.wait_with_output().expect("waiting for kubectl");
    Ran {
        success: out.status.success(),
        status: out.status.to_string(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `cmd` and returns its stdout, panicking with its output unless it succeeds.
fn run_ok(cmd: &mut Command) -> String {
    let what = format!("{cmd:?}");
    let ran = run(cmd, None);
    assert!(ran.success, "{what} failed: {}", ran.describe());
    ran.stdout
}

static CRD_INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

/// The shared cluster with the MLModel CRD installed and Established (installed once per binary).
fn cluster_with_crd() -> &'static TestCluster {
    let cluster = support::cluster();
    let installed = CRD_INSTALLED.get_or_init(|| {
        let crd = repo_path("deploy/crd/mlmodels.yaml");
        let apply = run(cluster.kubectl().args(["apply", "--server-side", "-f"]).arg(&crd), None);
        if !apply.success {
            return Err(format!("installing {} failed: {}", crd.display(), apply.describe()));
        }
        cluster.wait_crd_established(CRD_NAME, Duration::from_secs(60))
    });
    if let Err(message) = installed {
        panic!("{message}");
    }
    cluster
}

/// A fresh namespace in the cluster, with the CRD installed.
async fn namespace(prefix: &str) -> TestNamespace {
    cluster_with_crd();
    support::namespace(prefix).await
}

fn model_yaml(name: &str, spec: &str) -> String {
    format!("apiVersion: {API_VERSION}\nkind: MLModel\nmetadata:\n  name: {name}\nspec:\n{spec}")
}

/// `kubectl apply -f -` in the namespace, returning what happened (success or not).
fn try_apply(ns: &TestNamespace, yaml: &str) -> Ran {
    run(ns.kubectl().args(["apply", "-f", "-"]), Some(yaml))
}

fn get_json(ns: &TestNamespace, name: &str) -> Value {
    let out = run_ok(ns.kubectl().args(["get", "mlmodel", name, "-o", "json"]));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl get -o json printed invalid JSON ({e}):\n{out}"))
}

fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `kubectl explain <path>`, retried until the apiserver has published the CRD's OpenAPI.
/// Returns the output with whitespace collapsed (explain wraps long descriptions).
async fn explain(path: &str) -> String {
    let cluster = cluster_with_crd();
    let started = Instant::now();
    loop {
        let ran = run(cluster.kubectl().args(["explain", path]), None);
        if ran.success {
            return collapse_whitespace(&ran.stdout);
        }
        assert!(
            started.elapsed() < OPENAPI_TIMEOUT,
            "kubectl explain {path} still failing after {OPENAPI_TIMEOUT:?}: {}",
            ran.describe()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn assert_contains_all(text: &str, phrases: &[&str], what: &str) {
    let missing: Vec<&str> = phrases.iter().copied().filter(|p| !text.contains(p)).collect();
    assert!(missing.is_empty(), "{what} lacks {missing:?}; it printed:\n{text}");
}

// ---------------------------------------------------------------------------------------------
// The CRD
// ---------------------------------------------------------------------------------------------

#[test]
fn deployed_crd_is_generated_from_the_types() {
    let generated = MLModel::crd_yaml().expect("serializing the CRD");
    let path = repo_path("deploy/crd/mlmodels.yaml");
    let deployed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(
        generated == deployed,
        "{} is stale; regenerate it with `cargo run -q -- crd > deploy/crd/mlmodels.yaml`",
        path.display()
    );
}

#[tokio::test]
async fn crd_installs_and_is_established() {
    let cluster = cluster_with_crd();
    let out = run_ok(cluster.kubectl().args(["get", "crd", CRD_NAME, "-o", "json"]));
    let crd: Value = serde_json::from_str(&out).expect("CRD as JSON");
    let conditions = crd["status"]["conditions"].as_array().cloned().unwrap_or_default();
    for type_ in ["Established", "NamesAccepted"] {
        assert!(
            conditions.iter().any(|c| c["type"] == type_ && c["status"] == "True"),
            "CRD condition {type_} is not True: {conditions:#?}"
        );
    }
    let accepted = &crd["status"]["acceptedNames"];
    assert_eq!(accepted["kind"], "MLModel");
    assert_eq!(accepted["plural"], "mlmodels");
    assert_eq!(accepted["shortNames"], serde_json::json!(["mlm"]));
    assert_eq!(accepted["categories"], serde_json::json!(["all"]));

    let resources = run_ok(
        cluster
            .kubectl()
            .args(["api-resources", "--api-group=oda.tmforum.org", "-o", "wide"]),
    );
    let row = resources
        .lines()
        .find(|l| l.starts_with("mlmodels "))
        .unwrap_or_else(|| panic!("mlmodels missing from api-resources:\n{resources}"));
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &columns[..5],
        ["mlmodels", "mlm", API_VERSION, "true", "MLModel"],
        "api-resources row: {row}"
    );
}

// ---------------------------------------------------------------------------------------------
// Valid manifests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn proof_of_concept_manifest_applies_unchanged() {
    let ns = namespace("api-poc").await;
    let sample = repo_path("deploy/samples/iris-poc.yaml");
    let out = run_ok(ns.kubectl().args(["apply", "-f"]).arg(&sample));
    assert!(
        out.contains("mlmodel.oda.tmforum.org/iris created"),
        "apply printed: {out}"
    );

    let iris = get_json(&ns, "iris");
    let spec = &iris["spec"];
    assert_eq!(
        spec["modelURL"],
        "https://storage.googleapis.com/ml-models/iris/model.tar.gz"
    );
    assert_eq!(spec["storageSize"], "1Gi");
    assert_eq!(spec["framework"], "tensorflow");
    assert_eq!(spec["replicas"], 1);
    assert_eq!(spec["expose"], true);

    // Applying it again is a no-op, as with any manifest kept in Git.
    let again = run_ok(ns.kubectl().args(["apply", "-f"]).arg(&sample));
    assert!(
        again.contains("mlmodel.oda.tmforum.org/iris unchanged"),
        "re-apply printed: {again}"
    );
}

#[tokio::test]
async fn minimal_manifest_gets_documented_defaults() {
    let ns = namespace("api-defaults").await;
    ns.apply_yaml(&model_yaml(
        "minimal",
        "  modelURL: https://models.example.com/minimal/model.tar.gz\n",
    ));

    let model = get_json(&ns, "minimal");
    let spec = model["spec"].as_object().expect("spec is an object");
    assert_eq!(spec["modelURL"], "https://models.example.com/minimal/model.tar.gz");
    assert_eq!(spec["storageSize"], "1Gi", "spec: {spec:#?}");
    assert_eq!(spec["framework"], "tensorflow", "spec: {spec:#?}");
    assert_eq!(spec["replicas"], 1, "spec: {spec:#?}");
    assert_eq!(spec["expose"], true, "spec: {spec:#?}");
    let mut keys: Vec<&str> = spec.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["expose", "framework", "modelURL", "replicas", "storageSize"],
        "only the defaulted fields are added: {spec:#?}"
    );
    assert!(model.get("status").is_none(), "no one wrote a status: {model:#?}");
}

#[tokio::test]
async fn valid_edge_cases_are_accepted() {
    let ns = namespace("api-valid").await;
    let name_45 = format!("m{}", "x".repeat(44));
    let cases: Vec<(&str, String, String)> = vec![
        (
            "custom framework with an image",
            "custom".to_owned(),
            "  modelURL: https://models.example.com/custom/model.bin\n  framework: custom\n  runtime:\n    \
             image: registry.example.com/my-server:1.2\n    port: 9000\n    readinessPath: /healthz\n    \
             args: [\"--model-dir\", \"/models\"]\n"
                .to_owned(),
        ),
        (
            "s3 URL, zero replicas, sha256, credentials, download and storage settings",
            "s3-full".to_owned(),
            format!(
                "  modelURL: s3://bucket/models/resnet.tar.gz\n  replicas: 0\n  expose: false\n  \
                 storageSize: 500Mi\n  framework: triton\n  sha256: {}\n  credentials:\n    name: s3-creds\n  \
                 download:\n    timeoutSeconds: 86400\n    retries: 10\n  storage:\n    storageClassName: standard\n    \
                 accessModes: [ReadWriteMany]\n",
                "0123456789abcdef".repeat(4)
            ),
        ),
        (
            "gs URL, 100 replicas, decimal quantity, GPU resources",
            "gs-max".to_owned(),
            "  modelURL: gs://bucket/xgb/model.json\n  replicas: 100\n  storageSize: 2.5G\n  framework: xgboost\n  \
             runtime:\n    port: 65535\n    resources:\n      limits:\n        nvidia.com/gpu: 1\n    env:\n    \
             - name: LOG_LEVEL\n      value: debug\n"
                .to_owned(),
        ),
        (
            "plain http URL, mlserver and sklearn",
            "http-sklearn".to_owned(),
            "  modelURL: http://10.0.0.7:8080/iris.joblib\n  framework: sklearn\n".to_owned(),
        ),
        (
            "a 45-character name",
            name_45.clone(),
            "  modelURL: https://models.example.com/long/model.tar.gz\n".to_owned(),
        ),
    ];
    for (what, name, spec) in &cases {
        let ran = try_apply(&ns, &model_yaml(name, spec));
        assert!(
            ran.success,
            "{what}: the server refused a valid model: {}",
            ran.describe()
        );
    }
    let listed = run_ok(ns.kubectl().args(["get", "mlmodels", "-o", "name"]));
    for (what, name, _) in &cases {
        assert!(
            listed.lines().any(|l| l == format!("mlmodel.oda.tmforum.org/{name}")),
            "{what}: {name} not stored; listed:\n{listed}"
        );
    }
    let custom = get_json(&ns, "custom");
    assert_eq!(custom["spec"]["framework"], "custom");
    assert_eq!(custom["spec"]["runtime"]["image"], "registry.example.com/my-server:1.2");
}

// ---------------------------------------------------------------------------------------------
// Invalid manifests
// ---------------------------------------------------------------------------------------------

struct BadCase {
    what: &'static str,
    name: String,
    spec: String,
    /// Each must appear in kubectl's stderr.
    expect: &'static [&'static str],
}

fn bad(what: &'static str, spec: &str, expect: &'static [&'static str]) -> BadCase {
    BadCase {
        what,
        name: "bad".to_owned(),
        spec: spec.to_owned(),
        expect,
    }
}

const URL: &str = "  modelURL: https://models.example.com/bad/model.tar.gz\n";

#[tokio::test]
async fn invalid_manifests_are_refused_naming_the_field() {
    let ns = namespace("api-invalid").await;
    let long_url = format!("https://models.example.com/{}", "a".repeat(3000 - 27));
    assert_eq!(long_url.len(), 3000);

    let cases = vec![
        bad(
            "missing modelURL",
            "  replicas: 1\n",
            &["exactly one of spec.modelURL and spec.modelURLFrom must be set"],
        ),
        bad(
            "both modelURL and modelURLFrom",
            &format!("{URL}  modelURLFrom:\n    secretKeyRef:\n      name: s\n      key: url\n"),
            &["exactly one of spec.modelURL and spec.modelURLFrom must be set"],
        ),
        bad(
            "modelURLFrom without a key",
            "  modelURLFrom:\n    secretKeyRef:\n      name: s\n",
            &["spec.modelURLFrom.secretKeyRef.key", "Required value"],
        ),
        bad(
            "replicas of the wrong type",
            &format!("{URL}  replicas: \"two\"\n"),
            &["spec.replicas", "integer"],
        ),
        bad(
            "negative replicas",
            &format!("{URL}  replicas: -1\n"),
            &["spec.replicas", "greater than or equal to 0"],
        ),
        bad(
            "too many replicas",
            &format!("{URL}  replicas: 1000\n"),
            &["spec.replicas", "less than or equal to 100"],
        ),
        bad(
            "malformed storage quantity",
            &format!("{URL}  storageSize: lots\n"),
            &["spec.storageSize"],
        ),
        bad(
            "unknown framework",
            &format!("{URL}  framework: pytorch\n"),
            &[
                "spec.framework",
                "pytorch",
                "\"tensorflow\"",
                "\"triton\"",
                "\"mlserver\"",
                "\"sklearn\"",
                "\"xgboost\"",
                "\"custom\"",
            ],
        ),
        bad(
            "unsupported URL scheme",
            "  modelURL: ftp://models.example.com/model.tar.gz\n",
            &["spec.modelURL"],
        ),
        bad(
            "URL with whitespace",
            "  modelURL: \"https://models.example.com/my model.tar.gz\"\n",
            &["spec.modelURL"],
        ),
        bad(
            "custom framework without a runtime",
            &format!("{URL}  framework: custom\n"),
            &["spec.runtime.image", "custom"],
        ),
        bad(
            "custom framework with a runtime but no image",
            &format!("{URL}  framework: custom\n  runtime:\n    port: 8080\n"),
            &["spec.runtime.image", "custom"],
        ),
        bad(
            "over-long modelURL",
            &format!("  modelURL: {long_url}\n"),
            &["spec.modelURL", "2048"],
        ),
        bad(
            "sha256 that is not a digest",
            &format!("{URL}  sha256: not-a-digest\n"),
            &["spec.sha256"],
        ),
        bad(
            "sha256 in uppercase",
            &format!("{URL}  sha256: {}\n", "0123456789ABCDEF".repeat(4)),
            &["spec.sha256"],
        ),
        bad(
            "runtime port out of range",
            &format!("{URL}  runtime:\n    port: 70000\n"),
            &["spec.runtime.port", "65535"],
        ),
        BadCase {
            what: "60-character name",
            name: format!("m{}", "x".repeat(59)),
            spec: URL.to_owned(),
            expect: &["metadata.name", "45"],
        },
    ];

    let mut failures = Vec::new();
    for case in &cases {
        let ran = try_apply(&ns, &model_yaml(&case.name, &case.spec));
        if ran.success {
            failures.push(format!(
                "{}: accepted, but must be refused: {}",
                case.what,
                ran.describe()
            ));
            continue;
        }
        eprintln!("{}: {}", case.what, ran.stderr.trim());
        let missing: Vec<&str> = case
            .expect
            .iter()
            .copied()
            .filter(|e| !ran.stderr.contains(e))
            .collect();
        if !missing.is_empty() {
            failures.push(format!(
                "{}: refused, but the message lacks {missing:?}; the server said:\n{}",
                case.what,
                ran.stderr.trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad manifests were not refused as expected:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );

    let stored = run_ok(ns.kubectl().args(["get", "mlmodels", "-o", "name"]));
    assert!(
        stored.trim().is_empty(),
        "refused manifests left objects behind:\n{stored}"
    );
}

/// `storageSize` may grow but never shrink, whatever units each side is written in; the
/// refusal names the field and says what to do.
#[tokio::test]
async fn a_storage_size_may_grow_but_never_shrink() {
    let ns = namespace("api-storage").await;
    let spec = |size: &str| format!("{URL}  storageSize: {size}\n");
    let applied = try_apply(&ns, &model_yaml("sized", &spec("2Gi")));
    assert!(applied.success, "{}", applied.describe());

    for smaller in ["1Gi", "2000Mi", "2G"] {
        let ran = try_apply(&ns, &model_yaml("sized", &spec(smaller)));
        assert!(!ran.success, "2Gi -> {smaller} was accepted");
        assert_contains_all(
            &ran.stderr,
            &[
                "spec.storageSize",
                "cannot shrink",
                "delete the model and create it again",
            ],
            &format!("the refusal of 2Gi -> {smaller}"),
        );
    }
    assert_eq!(get_json(&ns, "sized")["spec"]["storageSize"], "2Gi");

    for same_or_larger in ["2048Mi", "3Gi", "3.5Gi"] {
        let ran = try_apply(&ns, &model_yaml("sized", &spec(same_or_larger)));
        assert!(ran.success, "-> {same_or_larger}: {}", ran.describe());
        assert_eq!(get_json(&ns, "sized")["spec"]["storageSize"], same_or_larger);
    }
}

// ---------------------------------------------------------------------------------------------
// kubectl get
// ---------------------------------------------------------------------------------------------

fn header(table: &str) -> Vec<&str> {
    table.lines().next().unwrap_or_default().split_whitespace().collect()
}

fn row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&name))
        .unwrap_or_else(|| panic!("no row for {name} in:\n{table}"))
}

#[tokio::test]
async fn kubectl_get_prints_the_printer_columns() {
    let ns = namespace("api-columns").await;
    ns.apply_yaml(&model_yaml(
        "columns",
        "  modelURL: https://models.example.com/columns/model.tar.gz\n  framework: triton\n",
    ));

    let table = run_ok(ns.kubectl().args(["get", "mlm"]));
    assert_eq!(
        header(&table),
        ["NAME", "PHASE", "READY", "ENDPOINT", "AGE"],
        "kubectl get mlm:\n{table}"
    );
    row(&table, "columns");

    let wide = run_ok(ns.kubectl().args(["get", "mlm", "-o", "wide"]));
    assert_eq!(
        header(&wide),
        ["NAME", "PHASE", "READY", "ENDPOINT", "AGE", "FRAMEWORK", "MESSAGE"],
        "kubectl get mlm -o wide:\n{wide}"
    );
    assert!(
        row(&wide, "columns").contains(&"triton"),
        "FRAMEWORK column missing the framework:\n{wide}"
    );

    for resource in ["mlmodel", "mlmodels", "mlmodels.oda.tmforum.org", "mlm.oda.tmforum.org"] {
        let out = run_ok(ns.kubectl().args(["get", resource, "-o", "name"]));
        assert_eq!(out.trim(), "mlmodel.oda.tmforum.org/columns", "kubectl get {resource}");
    }

    // Category `all`.
    let all = run_ok(ns.kubectl().args(["get", "all", "-o", "name"]));
    assert!(
        all.lines().any(|l| l == "mlmodel.oda.tmforum.org/columns"),
        "kubectl get all does not list the model:\n{all}"
    );
}

// ---------------------------------------------------------------------------------------------
// kubectl explain
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn kubectl_explain_prints_the_field_docs() {
    let kind = explain("mlmodel").await;
    assert_contains_all(
        &kind,
        &[
            "GROUP: oda.tmforum.org",
            "KIND: MLModel",
            "VERSION: v1beta1",
            "MLModel downloads a machine-learning model into a volume and serves it with a model server behind a Service.",
            "spec <Object> -required-",
            "status <Object>",
        ],
        "kubectl explain mlmodel",
    );

    let url = explain("mlmodel.spec.modelURL").await;
    assert_contains_all(
        &url,
        &[
            "FIELD: modelURL <string>",
            "Where the model artifact is downloaded from",
            "`s3://bucket/key`",
            "Credentials never go in the URL: use `credentials`.",
        ],
        "kubectl explain mlmodel.spec.modelURL",
    );

    let spec = explain("mlmodel.spec").await;
    assert_contains_all(
        &spec,
        &[
            "Desired state of a served machine-learning model.",
            "manifests apply unchanged apart from `apiVersion`",
            "modelURL <string>",
            "Where the model artifact is downloaded from",
            "modelURLFrom <Object>",
            "Where to read the artifact URL from instead of `modelURL`",
            "storageSize <string>",
            "Size of the volume that holds the model",
            "framework <string>",
            "The serving runtime:",
            "replicas <integer>",
            "Number of serving pods.",
            "expose <boolean>",
            "Whether to create a ClusterIP Service",
            "sha256 <string>",
            "Expected SHA-256 digest",
            "credentials <Object>",
            "runtime <Object>",
            "Overrides of the runtime that `framework` selects.",
            "download <Object>",
            "Limits of the download Job.",
            "storage <Object>",
            "Volume settings beyond `storageSize`.",
        ],
        "kubectl explain mlmodel.spec",
    );

    let framework = explain("mlmodel.spec.framework").await;
    assert_contains_all(
        &framework,
        &[
            "tensorflow",
            "triton",
            "mlserver",
            "sklearn",
            "xgboost",
            "custom",
            "requires `runtime.image`",
        ],
        "kubectl explain mlmodel.spec.framework",
    );

    let runtime = explain("mlmodel.spec.runtime").await;
    assert_contains_all(
        &runtime,
        &[
            "image <string>",
            "Required when `framework` is `custom`.",
            "port <integer>",
            "readinessPath <string>",
            "resources <Object>",
            "env <[]Object>",
        ],
        "kubectl explain mlmodel.spec.runtime",
    );
}

#[tokio::test]
async fn kubectl_explain_shows_the_status_schema() {
    let conditions = explain("mlmodel.status.conditions").await;
    assert_contains_all(
        &conditions,
        &[
            "FIELD: conditions <[]Object>",
            "Standard conditions: `Ready`, `Downloaded`, `Available`, `Degraded`; `StorageResized` once \
             `storageSize` has grown (`Resizing`, `Resized` or `ExpansionRefused`).",
            "type <string> -required-",
            "status <string> -required-",
            "reason <string> -required-",
            "lastTransitionTime <string> -required-",
        ],
        "kubectl explain mlmodel.status.conditions",
    );

    let status = explain("mlmodel.status").await;
    assert_contains_all(
        &status,
        &[
            "Observed state of a model, written only by the operator.",
            "phase <string>",
            "message <string>",
            "serviceEndpoint <string>",
            "observedGeneration <integer>",
            "ready <string>",
            "lastFailure <Object>",
        ],
        "kubectl explain mlmodel.status",
    );
}

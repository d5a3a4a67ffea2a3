//! The traces of model rollouts, end to end: the real operator (and the real downloader)
//! exporting over OTLP/gRPC to an in-process receiver, on the local control plane.
//!
//! Every test starts its own operator(s), and an operator acts on the models of every
//! namespace, so the tests of this binary run one at a time (see [`serial`]).

mod kubelet;
mod operator;
mod otlp_receiver;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use mlmodel_operator::api::{MLModel, Phase};
use otlp_receiver::{ReceivedSpan, Receiver};
use support::TestNamespace;

const TIMEOUT: Duration = Duration::from_secs(60);
/// How long ended spans may take to arrive (the operators export every 100 ms).
const EXPORT_WAIT: Duration = Duration::from_secs(15);
const OPERATOR_SERVICE: &str = "mlmodel-operator";
const DOWNLOADER_SERVICE: &str = "mlmodel-downloader";
/// The phases of a rollout that succeeds, in order.
const PHASE_SPANS: [&str; 3] = ["phase CreatingStorage", "phase Downloading", "phase Serving"];

/// Held by each test for its whole run: only one test's operators may be running at a time.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

// ---------------------------------------------------------------------------------------------
// Waiting for spans

/// Waits until `predicate` holds for the spans received; returns them. Panics on timeout with
/// what was received.
async fn wait_for(receiver: &Receiver, what: &str, predicate: impl Fn(&[ReceivedSpan]) -> bool) -> Vec<ReceivedSpan> {
    match receiver.wait_for(predicate, EXPORT_WAIT).await {
        Some(spans) => spans,
        None => panic!(
            "{what}: not received within {EXPORT_WAIT:?}; received:\n{}",
            describe(&receiver.spans())
        ),
    }
}

/// Waits for the span `name` in trace `trace_id`; returns it and every span received.
async fn wait_for_span(receiver: &Receiver, trace_id: &str, name: &str) -> (ReceivedSpan, Vec<ReceivedSpan>) {
    let is_it = |s: &ReceivedSpan| s.trace_id == trace_id && s.name == name;
    let spans = wait_for(receiver, &format!("span {name:?} in trace {trace_id}"), |spans| {
        spans.iter().any(is_it)
    })
    .await;
    let span = spans.iter().find(|s| is_it(s)).cloned().unwrap();
    (span, spans)
}

fn describe(spans: &[ReceivedSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "  {} trace={} span={} parent={:?} service={:?} pod={:?} status={} attrs={:?}",
                s.name,
                s.trace_id,
                s.span_id,
                s.parent_span_id,
                s.service_name,
                s.pod_name(),
                s.status_code,
                s.attributes
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// An operator exporting its spans to `receiver`, with short failure thresholds and `extra`
/// environment (which wins).
fn start_operator(identity: &str, receiver: &Receiver, extra: &[(&str, &str)]) -> operator::Operator {
    let endpoint = receiver.endpoint();
    let mut env: Vec<(&str, &str)> = operator::SHORT_THRESHOLDS.to_vec();
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint));
    env.push(("OTEL_BSP_SCHEDULE_DELAY", "100"));
    env.extend_from_slice(extra);
    let op = operator::start(identity, &env);
    op.wait_ready(TIMEOUT);
    op
}

fn model_yaml(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: oda.tmforum.org/v1beta1\nkind: MLModel\nmetadata:\n  name: {name}\nspec:\n  \
         modelURL: https://models.example.com/{name}/model.tar.gz\n{extra}"
    )
}

fn phase(m: &MLModel) -> Option<Phase> {
    m.status.as_ref().and_then(|s| s.phase)
}

fn is_ready(m: &MLModel) -> bool {
    phase(m) == Some(Phase::Ready) && m.status.as_ref().and_then(|s| s.observed_generation) == m.metadata.generation
}

/// The model's rollout trace as its status tells it: (trace id, root span id).
fn trace_of(m: &MLModel) -> (String, String) {
    let status = m.status.as_ref().expect("status");
    let trace_id = status.trace_id.clone().expect("status.traceId");
    let traceparent = status.traceparent.clone().expect("status.traceparent");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {traceparent:?}");
    assert_eq!(parts[1], trace_id, "status.traceId is the traceparent's trace id");
    assert_eq!(parts[3], "01", "the rollout is sampled: {traceparent}");
    (trace_id, parts[2].to_owned())
}

/// The spans that describe `model` (they carry its uid).
fn of_model<'a>(spans: &'a [ReceivedSpan], model: &MLModel) -> Vec<&'a ReceivedSpan> {
    let uid = model.uid().expect("uid");
    spans
        .iter()
        .filter(|s| s.attr("mlmodel.uid") == Some(uid.as_str()))
        .collect()
}

/// The one span named `name` in `trace_id`.
fn one<'a>(spans: &'a [ReceivedSpan], trace_id: &str, name: &str) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.trace_id == trace_id && s.name == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one {name:?} in trace {trace_id}; received:\n{}",
        describe(spans)
    );
    found[0]
}

/// Asserts the resource attributes every rollout span carries.
fn assert_describes(span: &ReceivedSpan, ns: &TestNamespace, model: &MLModel) {
    let expected = [
        ("k8s.namespace.name", ns.name.clone()),
        ("mlmodel.name", model.name_any()),
        ("mlmodel.uid", model.uid().unwrap()),
        ("mlmodel.generation", model.metadata.generation.unwrap().to_string()),
    ];
    for (key, value) in expected {
        assert_eq!(span.attr(key), Some(value.as_str()), "{key} of {span:#?}");
    }
}

/// Asserts the whole trace of a model that reached Ready; returns its trace id.
async fn assert_ready_rollout(receiver: &Receiver, ns: &TestNamespace, model: &MLModel) -> String {
    let (trace_id, root_id) = trace_of(model);
    let (_, spans) = wait_for_span(receiver, &trace_id, "mlmodel.ready").await;

    // One trace for the model, the one its status names.
    let traces: BTreeSet<&str> = of_model(&spans, model).iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(
        traces,
        BTreeSet::from([trace_id.as_str()]),
        "trace ids of {}:\n{}",
        model.name_any(),
        describe(&spans)
    );

    let root = one(&spans, &trace_id, "mlmodel.rollout");
    assert_eq!(root.span_id, root_id, "status.traceparent names the root span");
    assert_eq!(root.parent_span_id, None, "the rollout span is a root: {root:#?}");
    assert_describes(root, ns, model);

    // A span per phase, then the outcome, each a child of the root, in this order.
    let mut sequence: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.trace_id == trace_id && (s.name.starts_with("phase ") || s.name.starts_with("mlmodel.")))
        .filter(|s| s.name != "mlmodel.rollout")
        .collect();
    sequence.sort_by_key(|s| s.start_unix_nano);
    let names: Vec<&str> = sequence.iter().map(|s| s.name.as_str()).collect();
    let mut expected = PHASE_SPANS.to_vec();
    expected.push("mlmodel.ready");
    assert_eq!(names, expected, "spans of trace {trace_id} by start time");
    for span in &sequence {
        assert_eq!(
            span.parent_span_id.as_deref(),
            Some(root_id.as_str()),
            "parent of {span:#?}"
        );
        assert_describes(span, ns, model);
        assert_ne!(span.status_code, 2, "{span:#?}");
        assert!(
            span.start_unix_nano >= root.start_unix_nano,
            "{} starts before the root",
            span.name
        );
    }
    // Each phase ends when the next begins.
    for pair in sequence.windows(2) {
        assert!(
            pair[0].end_unix_nano <= pair[1].start_unix_nano,
            "{} (ended {}) overlaps {} (started {})",
            pair[0].name,
            pair[0].end_unix_nano,
            pair[1].name,
            pair[1].start_unix_nano
        );
    }

    // Everything in the trace (reconciles included) comes from the operator.
    for span in spans.iter().filter(|s| s.trace_id == trace_id) {
        assert_eq!(
            span.service_name.as_deref(),
            Some(OPERATOR_SERVICE),
            "service.name of {span:#?}"
        );
    }
    assert!(
        spans.iter().any(|s| s.trace_id == trace_id && s.name == "reconcile"),
        "reconciles are traced inside the rollout"
    );
    trace_id
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn each_rollout_is_one_trace_with_a_span_per_phase() {
    let _serial = serial().await;
    let receiver = otlp_receiver::start().await;
    let _op = start_operator("traces-ready", &receiver, &[]);
    let ns = support::namespace("traces-ready").await;
    ns.apply_yaml(&format!("{}---\n{}", model_yaml("first", ""), model_yaml("second", "")));
    let models = ns.api::<MLModel>();
    let first = support::wait_for(&models, "first", TIMEOUT, is_ready).await;
    let second = support::wait_for(&models, "second", TIMEOUT, is_ready).await;

    let first_trace = assert_ready_rollout(&receiver, &ns, &first).await;
    let second_trace = assert_ready_rollout(&receiver, &ns, &second).await;
    assert_ne!(first_trace, second_trace, "two models, two traces");

    // Deletion is a trace of its own: a root, the Terminating phase, and the end.
    models.delete("first", &Default::default()).await.unwrap();
    support::wait_for_deletion(&models, "first", TIMEOUT).await;
    let uid = first.uid().unwrap();
    let spans = wait_for(&receiver, "the deletion's spans", |spans| {
        spans
            .iter()
            .filter(|s| s.name == "mlmodel.deleted" && s.attr("mlmodel.uid") == Some(uid.as_str()))
            .any(|d| {
                spans
                    .iter()
                    .any(|s| s.trace_id == d.trace_id && s.name == "phase Terminating")
            })
    })
    .await;
    let deleted = spans
        .iter()
        .find(|s| s.name == "mlmodel.deleted" && s.attr("mlmodel.uid") == Some(uid.as_str()))
        .unwrap();
    assert_ne!(
        deleted.trace_id, first_trace,
        "deletion is not part of the rollout's trace"
    );
    let root = one(&spans, &deleted.trace_id, "mlmodel.delete");
    assert_eq!(root.parent_span_id, None);
    assert_eq!(deleted.parent_span_id.as_deref(), Some(root.span_id.as_str()));
    let terminating = one(&spans, &deleted.trace_id, "phase Terminating");
    assert_eq!(terminating.parent_span_id.as_deref(), Some(root.span_id.as_str()));
    // (Deletion bumps a custom resource's generation, so only the identity is compared.)
    assert_eq!(terminating.attr("mlmodel.name"), Some("first"));
    assert_eq!(terminating.attr("k8s.namespace.name"), Some(ns.name.as_str()));
}

#[tokio::test]
async fn the_downloaders_spans_join_the_models_trace() {
    let _serial = serial().await;
    let receiver = otlp_receiver::start().await;
    let _op = start_operator("traces-download", &receiver, &[]);
    let ns = support::namespace("traces-download").await;
    ns.apply_yaml(&model_yaml("fetched", ""));

    // The Job the operator created, as a kubelet would see it.
    let job = support::wait_for(&ns.api::<Job>(), "fetched-download-1", TIMEOUT, |_| true).await;
    let container = job.spec.unwrap().template.spec.unwrap().containers.remove(0);
    let args = container.args.unwrap_or_default();
    let arg = |flag: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{flag}=")).map(str::to_owned))
            .unwrap_or_else(|| panic!("--{flag} in {args:?}"))
    };
    let (model_name, version) = (arg("model-name"), arg("version"));
    let traceparent = container
        .env
        .unwrap_or_default()
        .into_iter()
        .find(|e| e.name == "TRACEPARENT")
        .and_then(|e| e.value)
        .expect("TRACEPARENT in the download Job");
    // The rollout's trace context is recorded in the status before any child carries it.
    let model = ns.api::<MLModel>().get("fetched").await.unwrap();
    let (trace_id, root_id) = trace_of(&model);
    assert_eq!(
        model.status.as_ref().unwrap().traceparent.as_deref(),
        Some(traceparent.as_str()),
        "the Job carries the rollout's traceparent"
    );

    // What the Job's container would fetch, served locally.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/fetched/model.bin", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/fetched/model.bin", axum::routing::get(|| async { "model weights" }));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("models");
    let termination_log = dir.path().join("termination-log");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mlmodel-operator"));
    for var in otlp_receiver::EXPORTER_ENV_OVERRIDES {
        cmd.env_remove(var);
    }
    let out = cmd
        .arg("download")
        .arg("--url")
        .arg(&url)
        .arg("--dest")
        .arg(&dest)
        .arg("--model-name")
        .arg(&model_name)
        .arg("--version")
        .arg(&version)
        .arg("--termination-log")
        .arg(&termination_log)
        .env("TRACEPARENT", &traceparent)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("RUST_LOG", "info")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run the downloader");
    assert!(
        out.status.success(),
        "downloader failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let fetched = dest.join(&model_name).join(&version).join("model.bin");
    assert_eq!(std::fs::read_to_string(&fetched).unwrap(), "model weights");

    let spans = wait_for(&receiver, "the downloader's spans", |spans| {
        ["mlmodel.download", "download.fetch", "mlmodel.rollout"]
            .iter()
            .all(|name| spans.iter().any(|s| s.trace_id == trace_id && s.name == *name))
    })
    .await;
    let root = one(&spans, &trace_id, "mlmodel.rollout");
    assert_eq!(root.service_name.as_deref(), Some(OPERATOR_SERVICE));
    let download = one(&spans, &trace_id, "mlmodel.download");
    assert_eq!(
        download.parent_span_id.as_deref(),
        Some(root_id.as_str()),
        "mlmodel.download is a child of the rollout's root: {download:#?}"
    );
    assert_eq!(download.service_name.as_deref(), Some(DOWNLOADER_SERVICE));
    let fetch = one(&spans, &trace_id, "download.fetch");
    assert_eq!(fetch.service_name.as_deref(), Some(DOWNLOADER_SERVICE));
    assert_ne!(fetch.status_code, 2, "{fetch:#?}");
    // download.fetch hangs below mlmodel.download (through the `download` span).
    let ids: BTreeMap<&str, &ReceivedSpan> = spans
        .iter()
        .filter(|s| s.trace_id == trace_id)
        .map(|s| (s.span_id.as_str(), s))
        .collect();
    let mut ancestor = fetch.parent_span_id.as_deref();
    let mut chain = Vec::new();
    while let Some(id) = ancestor {
        let Some(span) = ids.get(id) else { break };
        chain.push(span.name.as_str());
        ancestor = span.parent_span_id.as_deref();
    }
    assert!(
        chain.contains(&"mlmodel.download") && chain.last() == Some(&"mlmodel.rollout"),
        "ancestors of download.fetch: {chain:?}"
    );
}

#[tokio::test]
async fn a_failed_rollout_ends_with_an_error_span_naming_the_reason() {
    let _serial = serial().await;
    let receiver = otlp_receiver::start().await;
    let _op = start_operator("traces-failed", &receiver, &[("UNSCHEDULABLE_GRACE_SECONDS", "3")]);
    let ns = support::namespace("traces-failed").await;
    let sample =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/samples/gpu-too-big.yaml")).unwrap();
    ns.apply_yaml(&sample);
    let model = support::wait_for(&ns.api::<MLModel>(), "resnet-gpu", TIMEOUT, |m| {
        phase(m) == Some(Phase::Failed)
    })
    .await;
    let (trace_id, root_id) = trace_of(&model);

    // The phase's span and the failure's span end at the same moment and may reach the
    // collector in different export batches: wait for both.
    let (failed, _) = wait_for_span(&receiver, &trace_id, "mlmodel.failed").await;
    let (_, spans) = wait_for_span(&receiver, &trace_id, "phase Serving").await;
    assert_eq!(failed.parent_span_id.as_deref(), Some(root_id.as_str()), "{failed:#?}");
    assert_eq!(failed.status_code, 2, "error status: {failed:#?}");
    assert_eq!(
        failed.attr("mlmodel.failure.reason"),
        Some("Unschedulable"),
        "{failed:#?}"
    );
    assert!(
        failed.status_message.contains("Insufficient nvidia.com/gpu"),
        "status message: {failed:#?}"
    );
    assert_describes(&failed, &ns, &model);
    assert_eq!(failed.service_name.as_deref(), Some(OPERATOR_SERVICE));
    assert!(
        !spans
            .iter()
            .any(|s| s.trace_id == trace_id && s.name == "mlmodel.ready"),
        "no mlmodel.ready in a failed rollout"
    );
    let serving = one(&spans, &trace_id, "phase Serving");
    assert!(
        serving.end_unix_nano <= failed.start_unix_nano,
        "the Serving phase ends when the failure starts"
    );
}

#[tokio::test]
async fn a_restarted_operator_continues_the_rollouts_trace() {
    let _serial = serial().await;
    let receiver = otlp_receiver::start().await;
    let mut first = start_operator("traces-first", &receiver, &[]);
    let ns = support::namespace("traces-restart").await;
    ns.apply_yaml(&model_yaml(
        "held",
        &format!("  framework: custom\n  runtime:\n    image: {}\n", kubelet::HELD_IMAGE),
    ));
    let models = ns.api::<MLModel>();
    let model = support::wait_for(&models, "held", TIMEOUT, |m| phase(m) == Some(Phase::Serving)).await;
    let (trace_id, root_id) = trace_of(&model);
    // What the first operator ended before dying has been exported.
    let (downloading, _) = wait_for_span(&receiver, &trace_id, "phase Downloading").await;
    assert_eq!(downloading.pod_name(), Some("traces-first"));
    first.kill();

    let _second = start_operator("traces-second", &receiver, &[]);
    let pods: Api<Pod> = ns.api();
    let pod = kubelet::pods(&pods, "app.kubernetes.io/component=serving", 1)
        .await
        .remove(0);
    kubelet::ready(&pods, &pod).await;
    let model = support::wait_for(&models, "held", TIMEOUT, is_ready).await;
    assert_eq!(
        trace_of(&model),
        (trace_id.clone(), root_id.clone()),
        "the status keeps the rollout's trace"
    );

    let (ready, spans) = wait_for_span(&receiver, &trace_id, "mlmodel.ready").await;
    assert_eq!(ready.pod_name(), Some("traces-second"), "{ready:#?}");
    assert_eq!(ready.parent_span_id.as_deref(), Some(root_id.as_str()), "{ready:#?}");
    assert_describes(&ready, &ns, &model);
    let root = one(&spans, &trace_id, "mlmodel.rollout");
    assert_eq!(root.pod_name(), Some("traces-first"));
    let traces: BTreeSet<&str> = of_model(&spans, &model).iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(
        traces,
        BTreeSet::from([trace_id.as_str()]),
        "one trace across both operators:\n{}",
        describe(&spans)
    );
    let pods_seen: BTreeSet<&str> = of_model(&spans, &model).iter().filter_map(|s| s.pod_name()).collect();
    assert_eq!(pods_seen, BTreeSet::from(["traces-first", "traces-second"]));
}

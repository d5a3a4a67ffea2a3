//! The traces of model rollouts, end to end, read back as a user would: the real operator (and
//! the real downloader) export over OTLP to a real Jaeger beside the local control plane
//! (`cluster.sh up --jaeger`), and the tests ask Jaeger's query API, by `status.traceId` and by
//! search on `mlmodel.name`.
//!
//! Every test starts its own operator(s), and an operator acts on the models of every
//! namespace, so the tests of this binary run one at a time (see [`serial`]).

mod kubelet;
mod operator;
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use mlmodel_operator::api::{MLModel, Phase};
use mlmodel_operator::traceview::{self, Span};
use support::TestNamespace;

const TIMEOUT: Duration = Duration::from_secs(60);
/// How long ended spans may take to be searchable in Jaeger (the operators export every
/// 100 ms, Jaeger batches every 200 ms).
const EXPORT_WAIT: Duration = Duration::from_secs(30);
const OPERATOR_SERVICE: &str = "mlmodel-operator";
const DOWNLOADER_SERVICE: &str = "mlmodel-downloader";
/// The phases of a rollout that succeeds, in order.
const PHASE_SPANS: [&str; 3] = ["phase CreatingStorage", "phase Downloading", "phase Serving"];

/// Held by each test for its whole run: only one test's operators may be running at a time.
/// Also makes sure the binary's cluster is the one with a Jaeger.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let guard = SERIAL.lock().await;
    support::jaeger_cluster();
    guard
}

// ---------------------------------------------------------------------------------------------
// Asking Jaeger

/// The spans of `trace_id` in Jaeger once `complete` holds for them. Panics on timeout with
/// what Jaeger had.
async fn jaeger_trace(trace_id: &str, what: &str, complete: impl Fn(&[Span]) -> bool) -> Vec<Span> {
    let jaeger = &support::jaeger().query_url;
    let deadline = tokio::time::Instant::now() + EXPORT_WAIT;
    loop {
        let last = traceview::fetch_trace(jaeger, trace_id).await;
        if let Ok(spans) = &last
            && complete(spans)
        {
            return spans.clone();
        }
        if tokio::time::Instant::now() >= deadline {
            let had = match last {
                Ok(spans) => describe(&spans),
                Err(error) => error.to_string(),
            };
            panic!("{what}: not in Jaeger's trace {trace_id} within {EXPORT_WAIT:?}; it has:\n{had}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits for the span `name` in trace `trace_id`; returns it and the whole trace.
async fn wait_for_span(trace_id: &str, name: &str) -> (Span, Vec<Span>) {
    let spans = jaeger_trace(trace_id, &format!("span {name:?}"), |spans| {
        spans.iter().any(|s| s.name == name)
    })
    .await;
    let span = spans.iter().find(|s| s.name == name).cloned().unwrap();
    (span, spans)
}

/// The traces Jaeger finds for the operator's service and `mlmodel.name` in namespace `ns`,
/// once `complete` holds for them, as the UI's search would list them.
async fn search(ns: &TestNamespace, model: &str, complete: impl Fn(&[Vec<Span>]) -> bool) -> Vec<Vec<Span>> {
    let jaeger = &support::jaeger().query_url;
    let tags = [("mlmodel.name", model), ("k8s.namespace.name", ns.name.as_str())];
    support::poll_until(
        &format!("Jaeger's search for mlmodel.name={model}"),
        EXPORT_WAIT,
        || async {
            traceview::search_traces(jaeger, OPERATOR_SERVICE, &tags)
                .await
                .ok()
                .filter(|traces| complete(traces))
        },
    )
    .await
}

fn describe(spans: &[Span]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "  {} span={} parent={:?} service={} pod={:?} tags={:?}",
                s.name,
                s.span_id,
                s.parent_id,
                s.service,
                pod_name(s),
                s.tags
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn pod_name(span: &Span) -> Option<&str> {
    span.process_tags.get("k8s.pod.name").map(String::as_str)
}

/// The one span named `name` in `spans`.
fn one<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "exactly one {name:?}; trace:\n{}", describe(spans));
    found[0]
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// An operator exporting its spans to the cluster's Jaeger, with short failure thresholds and
/// `extra` environment (which wins).
fn start_operator(identity: &str, extra: &[(&str, &str)]) -> operator::Operator {
    let endpoint = support::jaeger().otlp_grpc.clone();
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

fn held_model_yaml(name: &str) -> String {
    model_yaml(
        name,
        &format!("  framework: custom\n  runtime:\n    image: {}\n", kubelet::HELD_IMAGE),
    )
}

fn phase(m: &MLModel) -> Option<Phase> {
    m.status.as_ref().and_then(|s| s.phase)
}

fn is_ready(m: &MLModel) -> bool {
    phase(m) == Some(Phase::Ready) && m.status.as_ref().and_then(|s| s.observed_generation) == m.metadata.generation
}

fn has_trace(m: &MLModel) -> bool {
    m.status
        .as_ref()
        .is_some_and(|s| s.trace_id.is_some() && s.traceparent.is_some())
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

/// Asserts the identity attributes every rollout span carries.
fn assert_describes(span: &Span, ns: &TestNamespace, model: &MLModel) {
    let expected = [
        ("k8s.namespace.name", ns.name.clone()),
        ("mlmodel.name", model.name_any()),
        ("mlmodel.uid", model.uid().unwrap()),
        ("mlmodel.generation", model.metadata.generation.unwrap().to_string()),
    ];
    for (key, value) in expected {
        assert_eq!(span.tag(key), Some(value.as_str()), "{key} of {span:#?}");
    }
}

/// The phase and outcome spans of a rollout trace (children of the root named `phase …` or
/// `mlmodel.*`), by start time.
fn sequence(spans: &[Span]) -> Vec<&Span> {
    let mut sequence: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name.starts_with("phase ") || s.name.starts_with("mlmodel."))
        .filter(|s| s.name != "mlmodel.rollout" && s.service == OPERATOR_SERVICE)
        .collect();
    sequence.sort_by_key(|s| s.start_us);
    sequence
}

/// Asserts the whole trace of a model that reached Ready through `phases`, as Jaeger has it;
/// returns its id.
async fn assert_ready_rollout(ns: &TestNamespace, model: &MLModel, phases: &[&str]) -> String {
    let (trace_id, root_id) = trace_of(model);
    let (_, spans) = wait_for_span(&trace_id, "mlmodel.ready").await;

    let root = one(&spans, "mlmodel.rollout");
    assert_eq!(root.span_id, root_id, "status.traceparent names the root span");
    assert_eq!(root.parent_id, None, "the rollout span is a root: {root:#?}");
    assert_describes(root, ns, model);

    // A span per phase, then the outcome, each a child of the root, in this order.
    let sequence = sequence(&spans);
    let names: Vec<&str> = sequence.iter().map(|s| s.name.as_str()).collect();
    let mut expected = phases.to_vec();
    expected.push("mlmodel.ready");
    assert_eq!(names, expected, "spans of trace {trace_id} by start time");
    for span in &sequence {
        assert_eq!(span.parent_id.as_deref(), Some(root_id.as_str()), "parent of {span:#?}");
        assert_describes(span, ns, model);
        assert!(!span.is_error(), "{span:#?}");
        assert!(span.start_us >= root.start_us, "{} starts before the root", span.name);
    }
    // Each phase ends when the next begins.
    for pair in sequence.windows(2) {
        assert!(
            pair[0].end_us() <= pair[1].start_us,
            "{} (ended {}) overlaps {} (started {})",
            pair[0].name,
            pair[0].end_us(),
            pair[1].name,
            pair[1].start_us
        );
    }

    // Everything in the trace (reconciles included) comes from the operator.
    for span in &spans {
        assert_eq!(span.service, OPERATOR_SERVICE, "service of {span:#?}");
    }
    assert!(
        spans.iter().any(|s| s.name == "reconcile"),
        "reconciles are traced inside the rollout"
    );
    trace_id
}

/// The `mlmodel.rollout` traces among `traces` (a search's answer).
fn rollouts(traces: &[Vec<Span>]) -> Vec<&Vec<Span>> {
    traces
        .iter()
        .filter(|t| t.iter().any(|s| s.name == "mlmodel.rollout"))
        .collect()
}

/// A free loopback port for the operator's /metrics.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The value of the unlabelled counter `name` on the operator's /metrics at `addr`.
async fn counter(addr: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn each_rollout_is_one_trace_with_a_span_per_phase() {
    let _serial = serial().await;
    let _op = start_operator("traces-ready", &[]);
    let ns = support::namespace("traces-ready").await;
    ns.apply_yaml(&format!("{}---\n{}", model_yaml("first", ""), model_yaml("second", "")));
    let models = ns.api::<MLModel>();
    let first = support::wait_for(&models, "first", TIMEOUT, is_ready).await;
    let second = support::wait_for(&models, "second", TIMEOUT, is_ready).await;

    let first_trace = assert_ready_rollout(&ns, &first, &PHASE_SPANS).await;
    let second_trace = assert_ready_rollout(&ns, &second, &PHASE_SPANS).await;
    assert_ne!(first_trace, second_trace, "two models, two traces");

    // Searched by name, the model has one rollout trace per generation: the one its status
    // names.
    let traces = search(&ns, "first", |traces| !rollouts(traces).is_empty()).await;
    let found: BTreeSet<&str> = rollouts(&traces).iter().map(|t| t[0].trace_id.as_str()).collect();
    assert_eq!(
        found,
        BTreeSet::from([first_trace.as_str()]),
        "rollout traces of `first`"
    );

    // A new generation is a new rollout, a trace of its own; with the model already stored,
    // it only serves anew.
    ns.apply_yaml(&model_yaml("second", "  replicas: 2\n"));
    let second = support::wait_for(&models, "second", TIMEOUT, |m| {
        is_ready(m) && m.metadata.generation == Some(2)
    })
    .await;
    let next_trace = assert_ready_rollout(&ns, &second, &["phase Serving"]).await;
    assert_ne!(next_trace, second_trace, "a new generation, a new trace");
    let traces = search(&ns, "second", |traces| rollouts(traces).len() >= 2).await;
    let generations: BTreeSet<(String, String)> = rollouts(&traces)
        .iter()
        .map(|t| {
            let root = one(t, "mlmodel.rollout");
            (
                root.tag("mlmodel.generation").unwrap_or_default().to_owned(),
                root.trace_id.clone(),
            )
        })
        .collect();
    assert_eq!(
        generations,
        BTreeSet::from([("1".to_owned(), second_trace), ("2".to_owned(), next_trace)]),
        "one rollout trace per generation of `second`"
    );

    // Deletion is a trace of its own: a root, the Terminating phase, and the end.
    models.delete("first", &Default::default()).await.unwrap();
    support::wait_for_deletion(&models, "first", TIMEOUT).await;
    let traces = search(&ns, "first", |traces| {
        traces.iter().any(|t| {
            ["mlmodel.delete", "phase Terminating", "mlmodel.deleted"]
                .iter()
                .all(|name| t.iter().any(|s| s.name == *name))
        })
    })
    .await;
    let deletion = traces
        .iter()
        .find(|t| t.iter().any(|s| s.name == "mlmodel.deleted"))
        .unwrap();
    assert_ne!(
        deletion[0].trace_id, first_trace,
        "deletion is not part of the rollout's trace"
    );
    let root = one(deletion, "mlmodel.delete");
    assert_eq!(root.parent_id, None);
    let deleted = one(deletion, "mlmodel.deleted");
    assert_eq!(deleted.parent_id.as_deref(), Some(root.span_id.as_str()));
    let terminating = one(deletion, "phase Terminating");
    assert_eq!(terminating.parent_id.as_deref(), Some(root.span_id.as_str()));
    // (Deletion bumps a custom resource's generation, so only the identity is compared.)
    assert_eq!(terminating.tag("mlmodel.uid"), first.uid().as_deref());
    assert_eq!(terminating.tag("k8s.namespace.name"), Some(ns.name.as_str()));
}

#[tokio::test]
async fn the_downloaders_spans_join_the_models_trace() {
    let _serial = serial().await;
    let _op = start_operator("traces-download", &[]);
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
    let model = support::wait_for(&ns.api::<MLModel>(), "fetched", TIMEOUT, has_trace).await;
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
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mlmodel-operator"))
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
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
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &support::jaeger().otlp_grpc)
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

    let spans = jaeger_trace(&trace_id, "the downloader's spans", |spans| {
        ["mlmodel.download", "download.fetch", "mlmodel.rollout"]
            .iter()
            .all(|name| spans.iter().any(|s| s.name == *name))
    })
    .await;
    let root = one(&spans, "mlmodel.rollout");
    assert_eq!(root.service, OPERATOR_SERVICE);
    let download = one(&spans, "mlmodel.download");
    assert_eq!(
        download.parent_id.as_deref(),
        Some(root_id.as_str()),
        "mlmodel.download is a child of the rollout's root: {download:#?}"
    );
    assert_eq!(download.service, DOWNLOADER_SERVICE);
    let fetch = one(&spans, "download.fetch");
    assert_eq!(fetch.service, DOWNLOADER_SERVICE);
    assert!(!fetch.is_error(), "{fetch:#?}");
    // download.fetch hangs below mlmodel.download, which hangs below the rollout.
    let order = traceview::tree_order(&spans);
    let depth = |name: &str| order.iter().find(|(_, s)| s.name == name).map(|(d, _)| *d);
    assert_eq!(depth("mlmodel.rollout"), Some(0));
    assert_eq!(depth("mlmodel.download"), Some(1));
    assert!(depth("download.fetch") > Some(1), "{}", describe(&spans));
    let ids: std::collections::HashMap<&str, &Span> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut ancestor = fetch.parent_id.as_deref();
    let mut chain = Vec::new();
    while let Some(span) = ancestor.and_then(|id| ids.get(id)) {
        chain.push(span.name.as_str());
        ancestor = span.parent_id.as_deref();
    }
    assert!(
        chain.contains(&"mlmodel.download") && chain.last() == Some(&"mlmodel.rollout"),
        "ancestors of download.fetch: {chain:?}"
    );
}

#[tokio::test]
async fn a_failed_rollout_ends_with_an_error_span_naming_the_reason() {
    let _serial = serial().await;
    let _op = start_operator("traces-failed", &[("UNSCHEDULABLE_GRACE_SECONDS", "3")]);
    let ns = support::namespace("traces-failed").await;
    let sample =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/samples/gpu-too-big.yaml")).unwrap();
    ns.apply_yaml(&sample);
    let model = support::wait_for(&ns.api::<MLModel>(), "resnet-gpu", TIMEOUT, |m| {
        phase(m) == Some(Phase::Failed) && has_trace(m)
    })
    .await;
    let (trace_id, root_id) = trace_of(&model);

    // The phase's span and the failure's span end at the same moment and may reach the
    // collector in different export batches: wait for both.
    let spans = jaeger_trace(&trace_id, "the failure and the Serving phase", |spans| {
        ["mlmodel.failed", "phase Serving"]
            .iter()
            .all(|name| spans.iter().any(|s| s.name == *name))
    })
    .await;
    let failed = one(&spans, "mlmodel.failed");
    assert_eq!(failed.parent_id.as_deref(), Some(root_id.as_str()), "{failed:#?}");
    assert!(failed.is_error(), "error status: {failed:#?}");
    assert_eq!(
        failed.tag("mlmodel.failure.reason"),
        Some("Unschedulable"),
        "{failed:#?}"
    );
    assert!(
        failed
            .tag("otel.status_description")
            .is_some_and(|m| m.contains("Insufficient nvidia.com/gpu")),
        "status message: {failed:#?}"
    );
    assert_describes(failed, &ns, &model);
    assert_eq!(failed.service, OPERATOR_SERVICE);
    assert!(
        !spans.iter().any(|s| s.name == "mlmodel.ready"),
        "no mlmodel.ready in a failed rollout"
    );
    let names: Vec<&str> = sequence(&spans).iter().map(|s| s.name.as_str()).collect();
    let mut expected = PHASE_SPANS.to_vec();
    expected.push("mlmodel.failed");
    assert_eq!(names, expected, "spans of trace {trace_id} by start time");
    let serving = one(&spans, "phase Serving");
    assert!(
        serving.end_us() <= failed.start_us,
        "the Serving phase ends when the failure starts"
    );
}

#[tokio::test]
async fn a_restarted_operator_continues_the_rollouts_trace() {
    let _serial = serial().await;
    let mut first = start_operator("traces-first", &[]);
    let ns = support::namespace("traces-restart").await;
    ns.apply_yaml(&held_model_yaml("held"));
    let models = ns.api::<MLModel>();
    let model = support::wait_for(&models, "held", TIMEOUT, |m| {
        phase(m) == Some(Phase::Serving) && has_trace(m)
    })
    .await;
    let (trace_id, root_id) = trace_of(&model);
    // What the first operator ended before dying has been exported.
    let (downloading, _) = wait_for_span(&trace_id, "phase Downloading").await;
    assert_eq!(pod_name(&downloading), Some("traces-first"));
    first.kill();

    let _second = start_operator("traces-second", &[]);
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
    assert_continued(&ns, &model, &trace_id, "traces-first", "traces-second").await;
}

#[tokio::test]
async fn a_new_leader_continues_the_rollouts_trace() {
    let _serial = serial().await;
    let lease = [
        ("LEADER_ELECT", "true"),
        ("LEASE_NAME", "mlmodel-operator-traces"),
        ("LEASE_DURATION_SECONDS", "4"),
        ("LEASE_RENEW_DEADLINE_SECONDS", "3"),
        ("LEASE_RETRY_PERIOD_SECONDS", "1"),
    ];
    let mut leader = start_operator("traces-leader", &lease);
    let ns = support::namespace("traces-failover").await;
    ns.apply_yaml(&held_model_yaml("led"));
    let models = ns.api::<MLModel>();
    let model = support::wait_for(&models, "led", TIMEOUT, |m| {
        phase(m) == Some(Phase::Serving) && has_trace(m)
    })
    .await;
    let (trace_id, root_id) = trace_of(&model);
    // The standby starts once the leader acts, so the leader is the one that began the trace.
    let _standby = start_operator("traces-standby", &lease);
    let (downloading, _) = wait_for_span(&trace_id, "phase Downloading").await;
    assert_eq!(pod_name(&downloading), Some("traces-leader"));
    leader.kill();

    let pods: Api<Pod> = ns.api();
    let pod = kubelet::pods(&pods, "app.kubernetes.io/component=serving", 1)
        .await
        .remove(0);
    kubelet::ready(&pods, &pod).await;
    let model = support::wait_for(&models, "led", TIMEOUT, is_ready).await;
    assert_eq!(
        trace_of(&model),
        (trace_id.clone(), root_id),
        "the status keeps the rollout's trace"
    );
    assert_continued(&ns, &model, &trace_id, "traces-leader", "traces-standby").await;
}

/// Asserts that the rollout trace `trace_id` of `model`, begun by operator `before`, was
/// ended by operator `after`: one trace, the outcome under the same root.
async fn assert_continued(ns: &TestNamespace, model: &MLModel, trace_id: &str, before: &str, after: &str) {
    let (ready, spans) = wait_for_span(trace_id, "mlmodel.ready").await;
    let (_, root_id) = trace_of(model);
    assert_eq!(pod_name(&ready), Some(after), "{ready:#?}");
    assert_eq!(ready.parent_id.as_deref(), Some(root_id.as_str()), "{ready:#?}");
    assert_describes(&ready, ns, model);
    let root = one(&spans, "mlmodel.rollout");
    assert_eq!(pod_name(root), Some(before));
    let names: Vec<&str> = sequence(&spans).iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names.last(), Some(&"mlmodel.ready"), "{}", describe(&spans));
    let pods_seen: BTreeSet<&str> = spans.iter().filter_map(pod_name).collect();
    assert_eq!(pods_seen, BTreeSet::from([before, after]), "{}", describe(&spans));

    // Searched by name, the model's rollout is that one trace.
    let traces = search(ns, &model.name_any(), |traces| !rollouts(traces).is_empty()).await;
    let found: BTreeSet<&str> = rollouts(&traces).iter().map(|t| t[0].trace_id.as_str()).collect();
    assert_eq!(found, BTreeSet::from([trace_id]), "one trace across both operators");
}

#[tokio::test]
async fn the_trace_subcommand_draws_the_rollout_from_jaeger() {
    let _serial = serial().await;
    let _op = start_operator("traces-view", &[]);
    let ns = support::namespace("traces-view").await;
    ns.apply_yaml(&model_yaml("drawn", ""));
    let model = support::wait_for(&ns.api::<MLModel>(), "drawn", TIMEOUT, is_ready).await;
    let (trace_id, _) = trace_of(&model);
    wait_for_span(&trace_id, "mlmodel.ready").await;

    let cluster = support::cluster();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mlmodel-operator"))
        .args([
            "trace",
            "drawn",
            "-n",
            &ns.name,
            "--jaeger",
            &support::jaeger().query_url,
        ])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("JAEGER_URL")
        .output()
        .await
        .expect("run `mlmodel-operator trace`");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "trace failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with(&format!("trace {trace_id}")), "{stdout}");
    for line in &lines {
        assert!(
            line.chars().count() <= traceview::WIDTH,
            "wider than the waterfall: {line:?}"
        );
    }
    // The spans' lines, then the split of the rollout's time.
    let (drawn, split) = lines[2..].split_at(lines[2..].iter().take_while(|l| l.contains('│')).count());
    let split = split.join(" ");
    assert!(
        split.starts_with("time by phase: CreatingStorage ")
            && split.contains(", Downloading ")
            && split.contains(", Serving ")
            && split.contains("; the operator's own work: "),
        "{stdout}"
    );
    // The shape: the root first, then its phases and outcome one level in, in order, each
    // drawn by the operator's service, none an error.
    let outline: Vec<(usize, &str)> = drawn
        .iter()
        .map(|l| {
            let indent = l.len() - l.trim_start().len();
            let name = l.trim_start().split("  ").next().unwrap_or_default();
            (indent / 2, name)
        })
        .filter(|(_, name)| *name != "reconcile")
        .collect();
    let mut expected = vec![(0, "mlmodel.rollout")];
    expected.extend(PHASE_SPANS.iter().map(|p| (1, *p)));
    expected.push((1, "mlmodel.ready"));
    assert_eq!(outline, expected, "{stdout}");
    assert!(drawn.iter().all(|l| l.contains(OPERATOR_SERVICE)), "{stdout}");
    assert!(!stdout.contains(traceview::ERROR_MARK), "{stdout}");
    // Reconciles are drawn below the phase they happened in.
    assert!(lines.iter().any(|l| l.starts_with("    reconcile")), "{stdout}");
}

#[tokio::test]
async fn a_stopped_collector_never_holds_a_rollout_back() {
    let _serial = serial().await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let _op = start_operator("traces-no-collector", &[("METRICS_ADDR", metrics.as_str())]);
    let ns = support::namespace("traces-no-collector").await;
    // Jaeger is killed mid-run and started again (with its traces gone) when the test ends.
    let _stopped = support::kill_component(&support::cluster().state_dir, "jaeger");

    ns.apply_yaml(&format!(
        "{}---\n{}",
        model_yaml("unseen", ""),
        model_yaml("unheard", "")
    ));
    let models = ns.api::<MLModel>();
    for name in ["unseen", "unheard"] {
        let model = support::wait_for(&models, name, TIMEOUT, is_ready).await;
        assert!(has_trace(&model), "the status still names the rollout's trace");
    }
    let dropped = support::poll_until("dropped spans counted", EXPORT_WAIT, || async {
        counter(&metrics, "mlmodel_trace_spans_dropped_total")
            .await
            .filter(|n| *n > 0.0)
    })
    .await;
    eprintln!("mlmodel_trace_spans_dropped_total {dropped}");
}

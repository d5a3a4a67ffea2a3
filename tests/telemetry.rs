//! End-to-end span export over OTLP/gRPC to an in-process receiver.
//!
//! `telemetry::init` installs a process-wide subscriber, so every test here shares one
//! initialisation (and one receiver on its own runtime, outliving each test's runtime).

mod otlp_receiver;

use std::sync::OnceLock;
use std::time::Duration;

use mlmodel_operator::telemetry::{self, LogFormat, TelemetryGuard};
use otlp_receiver::{ReceivedSpan, Receiver};

const SERVICE: &str = "mlmodel-operator-test";
const WAIT: Duration = Duration::from_secs(10);
/// Handed to the process as `TRACEPARENT`, as the operator does for a download Job.
const JOB_TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

struct Shared {
    receiver: Receiver,
    guard: TelemetryGuard,
    _runtime: tokio::runtime::Runtime,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let receiver = otlp_receiver::start_on(runtime.handle());
        // SAFETY: runs once, before `init` and before any test reads these variables; the other
        // tests of this binary are blocked on this `OnceLock` meanwhile.
        unsafe {
            for var in otlp_receiver::EXPORTER_ENV_OVERRIDES {
                std::env::remove_var(var);
            }
            std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint());
            std::env::set_var("POD_NAME", "mlmodel-operator-0");
            std::env::set_var("POD_NAMESPACE", "mlmodel-system");
            std::env::set_var("TRACEPARENT", JOB_TRACEPARENT);
        }
        let guard = telemetry::init(SERVICE, LogFormat::Json).expect("telemetry init");
        assert!(guard.is_exporting());
        Shared {
            receiver,
            guard,
            _runtime: runtime,
        }
    })
}

fn named<'a>(spans: &'a [ReceivedSpan], name: &str) -> Option<&'a ReceivedSpan> {
    spans.iter().find(|s| s.name == name)
}

#[tokio::test]
async fn root_and_child_spans_are_exported_with_parent_link_and_resource() {
    let shared = shared();
    let root_trace_id;
    {
        let root = tracing::info_span!("e2e.rollout", mlmodel.name = "bert", mlmodel.namespace = "ml");
        let _root = root.enter();
        root_trace_id = telemetry::current_trace_id().expect("sampled trace id");
        let child = tracing::info_span!("e2e.phase", phase = "Downloading");
        let _child = child.enter();
        tracing::info!("phase started");
    }

    // No flush: spans are exported on their own shortly after they end.
    let spans = shared
        .receiver
        .wait_for(
            |spans| named(spans, "e2e.rollout").is_some() && named(spans, "e2e.phase").is_some(),
            WAIT,
        )
        .await
        .unwrap_or_else(|| panic!("spans not exported: {:#?}", shared.receiver.spans()));
    let root = named(&spans, "e2e.rollout").unwrap();
    let child = named(&spans, "e2e.phase").unwrap();

    assert_eq!(root.trace_id, root_trace_id);
    assert_eq!(child.trace_id, root.trace_id);
    assert!(root.is_root(), "{root:?}");
    assert_eq!(child.parent_span_id.as_deref(), Some(root.span_id.as_str()));
    assert_eq!(root.attributes["mlmodel.name"], "bert");
    assert_eq!(root.attributes["mlmodel.namespace"], "ml");
    assert_eq!(child.attributes["phase"], "Downloading");
    assert_eq!(child.events, vec!["phase started".to_owned()]);

    assert_eq!(root.service_name.as_deref(), Some(SERVICE));
    assert_eq!(root.resource["service.version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(root.resource["k8s.pod.name"], "mlmodel-operator-0");
    assert_eq!(root.resource["k8s.namespace.name"], "mlmodel-system");
    assert_eq!(root.scope, "mlmodel-operator");
}

#[tokio::test]
async fn span_parented_to_traceparent_joins_the_remote_trace() {
    let shared = shared();
    let remote_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let remote_span = "00f067aa0ba902b7";
    {
        let span = tracing::info_span!("e2e.remote_child");
        assert!(telemetry::set_parent_from_traceparent(
            &span,
            &format!("00-{remote_trace}-{remote_span}-01")
        ));
        assert_eq!(telemetry::trace_id_of(&span).as_deref(), Some(remote_trace));
    }
    let span = shared
        .receiver
        .wait_for_span("e2e.remote_child", WAIT)
        .await
        .expect("span exported");
    assert_eq!(span.trace_id, remote_trace);
    assert_eq!(span.parent_span_id.as_deref(), Some(remote_span));
}

#[tokio::test]
async fn traceparent_of_hands_the_trace_to_a_downstream_span() {
    let shared = shared();
    let traceparent;
    {
        let upstream = tracing::info_span!("e2e.upstream");
        traceparent = telemetry::traceparent_of(&upstream).expect("traceparent");
        let downstream = tracing::info_span!(parent: None, "e2e.downstream");
        assert!(telemetry::set_parent_from_traceparent(&downstream, &traceparent));
        let _entered = downstream.enter();
    }
    let spans = shared
        .receiver
        .wait_for(
            |spans| named(spans, "e2e.upstream").is_some() && named(spans, "e2e.downstream").is_some(),
            WAIT,
        )
        .await
        .expect("spans exported");
    let upstream = named(&spans, "e2e.upstream").unwrap();
    let downstream = named(&spans, "e2e.downstream").unwrap();
    assert_eq!(traceparent, format!("00-{}-{}-01", upstream.trace_id, upstream.span_id));
    assert_eq!(downstream.trace_id, upstream.trace_id);
    assert_eq!(downstream.parent_span_id.as_deref(), Some(upstream.span_id.as_str()));
}

#[tokio::test]
async fn download_root_span_joins_traceparent_from_environment() {
    let shared = shared();
    {
        let span = tracing::info_span!("e2e.download");
        assert!(telemetry::parent_from_env(&span));
        let _entered = span.enter();
    }
    let span = shared
        .receiver
        .wait_for_span("e2e.download", WAIT)
        .await
        .expect("span exported");
    assert_eq!(span.trace_id, "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(span.parent_span_id.as_deref(), Some("b7ad6b7169203331"));
}

#[tokio::test]
async fn error_events_mark_the_span_as_failed() {
    let shared = shared();
    {
        let span = tracing::info_span!("e2e.failing");
        let _entered = span.enter();
        tracing::error!("image pull failed");
    }
    let span = shared
        .receiver
        .wait_for_span("e2e.failing", WAIT)
        .await
        .expect("span exported");
    assert_eq!(span.status_code, 2, "{span:?}");
    assert_eq!(span.events, vec!["image pull failed".to_owned()]);
}

#[tokio::test]
async fn flush_exports_ended_spans_immediately() {
    let shared = shared();
    drop(tracing::info_span!("e2e.flushed").entered());
    shared.guard.flush().expect("flush");
    let spans = shared.receiver.spans();
    assert!(named(&spans, "e2e.flushed").is_some(), "{spans:#?}");
}

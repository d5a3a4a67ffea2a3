//! End-to-end span export over OTLP/HTTP (protobuf) to an in-process receiver. A separate test
//! binary from `telemetry.rs` because `telemetry::init` configures the whole process.

mod otlp_receiver;

use std::time::Duration;

use mlmodel_operator::telemetry::{self, LogFormat};

#[tokio::test]
async fn spans_are_exported_over_http_protobuf_and_flushed_on_shutdown() {
    // The receiver gets its own runtime so that it keeps serving while this test's
    // single-threaded runtime is blocked in `shutdown`.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let receiver = otlp_receiver::start_http_on(runtime.handle());
    // SAFETY: the only test in this binary, run before `init` reads the environment.
    unsafe {
        for var in otlp_receiver::EXPORTER_ENV_OVERRIDES.into_iter().chain(["POD_NAME"]) {
            std::env::remove_var(var);
        }
        // The generic endpoint: the exporter appends `/v1/traces` itself.
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint());
        std::env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
        std::env::set_var("OTEL_SERVICE_NAME", "renamed-by-env");
        std::env::set_var("HOSTNAME", "downloader-abc12");
    }
    let guard = telemetry::init("mlmodel-downloader", LogFormat::Text).expect("telemetry init");
    assert!(guard.is_exporting());

    {
        let root = tracing::info_span!("http.download", mlmodel.name = "resnet");
        let _root = root.enter();
        let child = tracing::info_span!("http.fetch", bytes = 1024_u64);
        let _child = child.enter();
        tracing::info!("fetched");
    }
    let spans = receiver
        .wait_for(|spans| spans.len() >= 2, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("spans not exported: {:#?}", receiver.spans()));
    let root = spans.iter().find(|s| s.name == "http.download").unwrap();
    let child = spans.iter().find(|s| s.name == "http.fetch").unwrap();
    assert_eq!(child.trace_id, root.trace_id);
    assert_eq!(child.parent_span_id.as_deref(), Some(root.span_id.as_str()));
    assert_eq!(root.attributes["mlmodel.name"], "resnet");
    assert_eq!(child.attributes["bytes"], "1024");
    assert_eq!(root.service_name.as_deref(), Some("renamed-by-env"));
    assert_eq!(root.resource["k8s.pod.name"], "downloader-abc12");

    // Ended just before shutdown, well inside the batch delay: shutdown must flush it.
    drop(tracing::info_span!("http.last").entered());
    guard.shutdown().expect("shutdown flushes");
    assert!(
        receiver.spans().iter().any(|s| s.name == "http.last"),
        "{:#?}",
        receiver.spans()
    );
    runtime.shutdown_background();
}

//! Tracing: the global `tracing` subscriber (filtering, text or JSON logs that carry the trace id),
//! OpenTelemetry span export over OTLP, and the W3C trace-context helpers that carry one trace
//! across the operator, its model actors and the download Jobs.
//!
//! OTLP export is configured only through the standard OpenTelemetry environment variables
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `..._PROTOCOL`,
//! `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`, `OTEL_RESOURCE_ATTRIBUTES`, ...). Without an
//! endpoint nothing is exported, but spans still get W3C ids so that logs carry `trace_id` and
//! trace context still flows to the download Jobs.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry::{InstrumentationScope, KeyValue, global};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::resource::TelemetryResourceDetector;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider, SpanData};
use prometheus_client::metrics::counter::Counter;
use tracing::dispatcher::WeakDispatch;
use tracing::{Dispatch, Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::{DefaultFields, Format, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::{LookupSpan, Registry};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Log filter used when `RUST_LOG` is unset or empty.
pub const DEFAULT_LOG_FILTER: &str = "info,kube=warn,tower=warn,hyper=warn,ractor=warn";

/// Environment variable carrying a W3C `traceparent` into a download Job.
pub const TRACEPARENT_ENV: &str = "TRACEPARENT";

/// How long finished spans wait before being exported, unless `OTEL_BSP_SCHEDULE_DELAY` says
/// otherwise. Short, so that a crash mid-rollout still leaves the finished phase spans behind.
const DEFAULT_SCHEDULE_DELAY: Duration = Duration::from_millis(500);

const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
const OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";

/// Spans the OTLP exporter could not deliver (collector down or unreachable), which are
/// dropped rather than retried: export never holds a reconcile back.
static SPANS_DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// The count of spans dropped because the collector did not take them; the operator's
/// metrics publish it as `mlmodel_trace_spans_dropped_total`.
pub fn spans_dropped() -> Counter {
    SPANS_DROPPED.clone()
}

/// An exporter that counts the spans of every batch its inner exporter fails to deliver.
#[derive(Debug)]
struct CountingExporter<E> {
    inner: E,
    dropped: Counter,
}

impl<E: opentelemetry_sdk::trace::SpanExporter> opentelemetry_sdk::trace::SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.inner.export(batch).await;
        if result.is_err() {
            self.dropped.inc_by(spans);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Errors raised while installing telemetry or shutting it down.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `RUST_LOG` holds a directive that cannot be parsed.
    #[error(
        "RUST_LOG={value:?} is not a valid log filter; use comma-separated directives such as \
         `info,mlmodel_operator=debug`"
    )]
    InvalidLogFilter {
        /// The rejected value.
        value: String,
        /// Why it was rejected.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// The OTLP protocol variable names a protocol this build cannot speak.
    #[error("{var}={value:?} is not supported; set it to `grpc` (the default) or `http/protobuf`")]
    UnsupportedProtocol {
        /// The variable that was read.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// The OTLP span exporter could not be built from the configuration.
    #[error(
        "cannot set up OTLP span export to {endpoint:?} over {protocol}; check \
         OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT and the related \
         OTEL_EXPORTER_OTLP_* variables"
    )]
    Exporter {
        /// The configured endpoint.
        endpoint: String,
        /// The configured protocol.
        protocol: &'static str,
        /// The exporter's complaint.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// The background runtime that drives gRPC export could not be started.
    #[error("cannot start the OTLP export thread")]
    ExportRuntime(#[source] std::io::Error),
    /// A global `tracing` subscriber (or `log` logger) was already installed.
    #[error("a global tracing subscriber is already installed; call telemetry::init once per process")]
    AlreadyInitialized(#[source] tracing_subscriber::util::TryInitError),
    /// Flushing or shutting down the tracer provider failed; spans may have been lost.
    #[error("flushing spans to the OTLP endpoint failed; some spans may be lost")]
    Flush(#[source] opentelemetry_sdk::error::OTelSdkError),
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable single-line text.
    #[default]
    Text,
    /// One JSON object per line, event fields flattened, with the current span and span list.
    Json,
}

/// Keeps span export alive. Dropping it (or calling [`TelemetryGuard::shutdown`]) flushes the
/// spans still queued and shuts the tracer provider down; keep it alive for the whole process.
#[must_use = "dropping the guard stops span export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    /// Runtime owning the gRPC channel. Kept apart from the application's runtime so that
    /// flushing never waits on a runtime that the flushing thread itself is blocking.
    export_runtime: Option<tokio::runtime::Runtime>,
    exporting: bool,
}

impl fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelemetryGuard")
            .field("exporting", &self.exporting)
            .finish_non_exhaustive()
    }
}

impl TelemetryGuard {
    /// Whether spans are being exported over OTLP (an endpoint was configured).
    pub fn is_exporting(&self) -> bool {
        self.exporting
    }

    /// Exports every span that has ended so far, blocking until the exporter answers.
    pub fn flush(&self) -> Result<(), TelemetryError> {
        match &self.provider {
            Some(provider) if self.exporting => provider.force_flush().map_err(TelemetryError::Flush),
            _ => Ok(()),
        }
    }

    /// Flushes the remaining spans and shuts the tracer provider down.
    pub fn shutdown(mut self) -> Result<(), TelemetryError> {
        self.shutdown_inner()
    }

    fn shutdown_inner(&mut self) -> Result<(), TelemetryError> {
        let result = match self.provider.take() {
            Some(provider) => provider.shutdown().map_err(TelemetryError::Flush),
            None => Ok(()),
        };
        if let Some(runtime) = self.export_runtime.take() {
            // Unlike a plain drop, this does not panic when called from async code.
            runtime.shutdown_background();
        }
        result
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(error) = self.shutdown_inner() {
            tracing::warn!(error = %error, "telemetry shutdown incomplete");
        }
    }
}

/// Installs the global tracing subscriber: an env filter (`RUST_LOG`, default
/// [`DEFAULT_LOG_FILTER`]), logs on stderr as text or JSON with `trace_id`/`span_id` on every
/// line emitted inside a span, and an OpenTelemetry layer. When an OTLP endpoint is configured
/// the layer exports spans as they end; otherwise it only assigns ids. Also sets the global
/// text-map propagator to W3C TraceContext.
///
/// `RUST_LOG` governs the logs only; spans are traced at the [`DEFAULT_LOG_FILTER`] levels
/// whatever it says, so that quieter logs never cut a trace short.
///
/// `service_name_default` is the `service.name` unless `OTEL_SERVICE_NAME` (or a `service.name`
/// in `OTEL_RESOURCE_ATTRIBUTES`) overrides it. Call once per process; gRPC export needs no
/// surrounding Tokio runtime (it brings its own thread).
pub fn init(service_name_default: &str, log_format: LogFormat) -> Result<TelemetryGuard, TelemetryError> {
    let filter = log_filter(std::env::var("RUST_LOG").ok())?;
    let otlp = OtlpConfig::from_env(env_var)?;

    let mut builder = SdkTracerProvider::builder().with_resource(build_resource(service_name_default, env_var));
    let mut export_runtime = None;
    if let Some(config) = &otlp {
        let (exporter, runtime) = build_exporter(config)?;
        export_runtime = runtime;
        let mut batch = BatchConfigBuilder::default();
        if env_var("OTEL_BSP_SCHEDULE_DELAY").is_none() {
            batch = batch.with_scheduled_delay(DEFAULT_SCHEDULE_DELAY);
        }
        // The SDK's batch processor runs on its own thread, which suits both transports: the
        // gRPC channel lives on `export_runtime`, and the blocking HTTP client must stay off
        // Tokio worker threads.
        let exporter = CountingExporter {
            inner: exporter,
            dropped: spans_dropped(),
        };
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch.build())
            .build();
        builder = builder.with_span_processor(processor);
    }
    let provider = builder.build();
    // Built before installing anything so that every early return above leaves no global state.
    let guard = TelemetryGuard {
        provider: Some(provider.clone()),
        export_runtime,
        exporting: otlp.is_some(),
    };

    subscriber(filter, log_format, std::io::stderr, tracer(&provider))
        .try_init()
        .map_err(TelemetryError::AlreadyInitialized)?;
    global::set_text_map_propagator(TraceContextPropagator::new());
    // Silences the SDK's informational "global tracer provider is set" line.
    tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
        global::set_tracer_provider(provider)
    });

    match &otlp {
        Some(config) => tracing::info!(
            endpoint = %config.endpoint,
            protocol = config.protocol.as_str(),
            "exporting spans over OTLP"
        ),
        None => tracing::debug!("no OTLP endpoint configured; spans are not exported"),
    }
    Ok(guard)
}

/// Hex trace id of the current `tracing` span, if it belongs to a valid, sampled trace.
pub fn current_trace_id() -> Option<String> {
    trace_id_of(&tracing::Span::current())
}

/// Hex trace id of `span`, if it belongs to a valid, sampled trace.
///
/// Starts the OpenTelemetry span if it has not started yet, after which its parent is fixed.
pub fn trace_id_of(span: &tracing::Span) -> Option<String> {
    span_context_of(span)
        .filter(SpanContext::is_sampled)
        .map(|context| context.trace_id().to_string())
}

/// W3C `traceparent` (`00-<trace id>-<span id>-<flags>`) identifying `span`, for handing the
/// trace to another process (the download Job's `TRACEPARENT`).
///
/// Starts the OpenTelemetry span if it has not started yet, after which its parent is fixed.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    span_context_of(span).map(|context| {
        format!(
            "00-{}-{}-{:02x}",
            context.trace_id(),
            context.span_id(),
            context.trace_flags().to_u8()
        )
    })
}

/// Makes `span` a child of the remote span described by the W3C `traceparent`.
///
/// Returns `false` when the header is malformed, when no OpenTelemetry layer is installed, or
/// when the span has already started (been entered, or its context read): call it right after
/// creating the span.
pub fn set_parent_from_traceparent(span: &tracing::Span, traceparent: &str) -> bool {
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.trim().to_owned())]);
    // The concrete propagator rather than the global one: this must work whatever the
    // global propagator is, including before `init`.
    let parent = TraceContextPropagator::new().extract(&carrier);
    if !parent.span().span_context().is_valid() {
        return false;
    }
    span.set_parent(parent).is_ok()
}

/// Makes `span` a child of the trace handed over in the `TRACEPARENT` environment variable,
/// when it is set and valid. Returns whether the parent was applied.
pub fn parent_from_env(span: &tracing::Span) -> bool {
    env_var(TRACEPARENT_ENV).is_some_and(|traceparent| set_parent_from_traceparent(span, &traceparent))
}

fn span_context_of(span: &tracing::Span) -> Option<SpanContext> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.trim().is_empty())
}

fn log_filter(rust_log: Option<String>) -> Result<EnvFilter, TelemetryError> {
    match rust_log.filter(|value| !value.trim().is_empty()) {
        Some(value) => EnvFilter::try_new(&value).map_err(|source| TelemetryError::InvalidLogFilter { value, source }),
        None => Ok(EnvFilter::new(DEFAULT_LOG_FILTER)),
    }
}

fn tracer(provider: &SdkTracerProvider) -> SdkTracer {
    provider.tracer_with_scope(
        InstrumentationScope::builder(env!("CARGO_PKG_NAME"))
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    )
}

/// Resource attributes, lowest precedence first: the defaults and pod identity, then
/// `OTEL_RESOURCE_ATTRIBUTES`, then `OTEL_SERVICE_NAME`.
fn build_resource(service_name_default: &str, env: impl Fn(&str) -> Option<String>) -> Resource {
    let mut builder = Resource::builder_empty()
        .with_detector(Box::new(TelemetryResourceDetector))
        .with_service_name(service_name_default.to_owned())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if let Some(pod) = env("POD_NAME").or_else(|| env("HOSTNAME")) {
        builder = builder.with_attribute(KeyValue::new("k8s.pod.name", pod));
    }
    if let Some(namespace) = env("POD_NAMESPACE") {
        builder = builder.with_attribute(KeyValue::new("k8s.namespace.name", namespace));
    }
    if let Some(attributes) = env("OTEL_RESOURCE_ATTRIBUTES") {
        builder = builder.with_attributes(parse_resource_attributes(&attributes));
    }
    if let Some(name) = env("OTEL_SERVICE_NAME") {
        builder = builder.with_service_name(name);
    }
    builder.build()
}

/// `key1=value1,key2=value2` as in `OTEL_RESOURCE_ATTRIBUTES`, values percent-decoded as the
/// specification requires (the SDK's own detector does not decode).
fn parse_resource_attributes(raw: &str) -> Vec<KeyValue> {
    raw.split(',')
        .filter_map(|entry| entry.split_once('='))
        .map(|(key, value)| (key.trim(), value.trim()))
        .filter(|(key, _)| !key.is_empty())
        .map(|(key, value)| {
            let decoded = crate::percent_decode(value).unwrap_or_else(|| value.to_owned());
            KeyValue::new(key.to_owned(), decoded)
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

impl OtlpProtocol {
    fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct OtlpConfig {
    endpoint: String,
    protocol: OtlpProtocol,
}

impl OtlpConfig {
    /// `None` when no endpoint is configured or export is switched off by
    /// `OTEL_SDK_DISABLED=true` / `OTEL_TRACES_EXPORTER=none`.
    fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, TelemetryError> {
        if env("OTEL_SDK_DISABLED").is_some_and(|value| value.trim().eq_ignore_ascii_case("true"))
            || env("OTEL_TRACES_EXPORTER").is_some_and(|value| value.trim().eq_ignore_ascii_case("none"))
        {
            return Ok(None);
        }
        let Some(endpoint) = env(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT).or_else(|| env(OTEL_EXPORTER_OTLP_ENDPOINT))
        else {
            return Ok(None);
        };
        // Read here rather than left to the exporter crate, whose default with both transports
        // compiled in is HTTP, while the specification's (and ours) is gRPC.
        let mut protocol = OtlpProtocol::Grpc;
        for var in [OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, OTEL_EXPORTER_OTLP_PROTOCOL] {
            if let Some(value) = env(var) {
                protocol = match value.trim().to_ascii_lowercase().as_str() {
                    "grpc" => OtlpProtocol::Grpc,
                    "http/protobuf" => OtlpProtocol::HttpProtobuf,
                    _ => return Err(TelemetryError::UnsupportedProtocol { var, value }),
                };
                break;
            }
        }
        Ok(Some(OtlpConfig {
            endpoint: endpoint.trim().to_owned(),
            protocol,
        }))
    }
}

/// Builds the exporter; endpoint, headers, timeout and compression come from the environment
/// through `opentelemetry-otlp` itself.
fn build_exporter(config: &OtlpConfig) -> Result<(SpanExporter, Option<tokio::runtime::Runtime>), TelemetryError> {
    let exporter_error = |source| TelemetryError::Exporter {
        endpoint: config.endpoint.clone(),
        protocol: config.protocol.as_str(),
        source,
    };
    match config.protocol {
        OtlpProtocol::Grpc => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("otlp-export")
                .enable_all()
                .build()
                .map_err(TelemetryError::ExportRuntime)?;
            // tonic spawns the channel's worker on the runtime current at build time.
            let built = {
                let _entered = runtime.enter();
                SpanExporter::builder().with_tonic().build()
            };
            match built {
                Ok(exporter) => Ok((exporter, Some(runtime))),
                Err(source) => {
                    runtime.shutdown_background();
                    Err(exporter_error(source))
                }
            }
        }
        OtlpProtocol::HttpProtobuf => SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build()
            .map(|exporter| (exporter, None))
            .map_err(exporter_error),
    }
}

/// The subscriber `init` installs. `log_filter` (from `RUST_LOG`) filters only the logs: spans
/// are traced at [`DEFAULT_LOG_FILTER`] levels whatever the log verbosity, so quieting the logs
/// never breaks traces or the trace context handed to download Jobs.
fn subscriber<W>(
    log_filter: EnvFilter,
    log_format: LogFormat,
    writer: W,
    tracer: SdkTracer,
) -> impl Subscriber + for<'a> LookupSpan<'a> + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::registry()
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(EnvFilter::new(DEFAULT_LOG_FILTER)),
        )
        .with(fmt_layer(log_format, writer).with_filter(log_filter))
}

/// The log layer for `format`, writing to `writer`.
fn fmt_layer<S, W>(format: LogFormat, writer: W) -> Box<dyn Layer<S> + Send + Sync + 'static>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let dispatch = Arc::new(OnceLock::new());
    let capture = CaptureDispatch {
        dispatch: dispatch.clone(),
    };
    match format {
        LogFormat::Text => capture
            .and_then(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_ansi(false)
                    .fmt_fields(DefaultFields::new())
                    .event_format(WithTraceIds {
                        inner: Format::default().with_ansi(false),
                        json: false,
                        dispatch,
                    }),
            )
            .boxed(),
        LogFormat::Json => capture
            .and_then(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_ansi(false)
                    .fmt_fields(JsonFields::new())
                    .event_format(WithTraceIds {
                        inner: Format::default()
                            .json()
                            .flatten_event(true)
                            .with_current_span(true)
                            .with_span_list(true),
                        json: true,
                        dispatch,
                    }),
            )
            .boxed(),
    }
}

/// The subscriber a [`WithTraceIds`] formatter belongs to, recorded when it is registered.
type DispatchCell = Arc<OnceLock<WeakDispatch>>;

/// Records the subscriber's `Dispatch` for [`WithTraceIds`]. The formatter cannot use
/// `tracing::dispatcher::get_default` instead: while an event is being dispatched, that yields
/// the no-op dispatcher whenever any scoped dispatcher exists in the process.
struct CaptureDispatch {
    dispatch: DispatchCell,
}

impl<S: Subscriber> Layer<S> for CaptureDispatch {
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        // Weak: the subscriber owns this layer, so a strong handle would keep it alive forever.
        let _ = self.dispatch.set(subscriber.downgrade());
    }
}

/// Wraps an event formatter to add the OpenTelemetry `trace_id` and `span_id` of the event's
/// innermost span. Reads the ids from the OpenTelemetry layer, so they are exactly those
/// exported, whichever span (root or nested, local or remote parent) the event is in.
struct WithTraceIds<F> {
    inner: F,
    json: bool,
    dispatch: DispatchCell,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let ids = self
            .dispatch
            .get()
            .and_then(WeakDispatch::upgrade)
            .and_then(|dispatch| event_trace_ids(event, &dispatch));
        let Some((trace_id, span_id)) = ids else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        if self.json {
            // The ids become members of the JSON object tracing-subscriber wrote, one flat
            // object per line.
            let Ok(serde_json::Value::Object(mut object)) = serde_json::from_str(&line) else {
                return writer.write_str(&line);
            };
            object.insert("trace_id".to_owned(), trace_id.to_string().into());
            object.insert("span_id".to_owned(), span_id.to_string().into());
            return writeln!(writer, "{}", serde_json::Value::Object(object));
        }
        let (body, newline) = match line.strip_suffix('\n') {
            Some(body) => (body, "\n"),
            None => (line.as_str(), ""),
        };
        write!(writer, "{body} trace_id={trace_id} span_id={span_id}{newline}")
    }
}

/// Ids of the innermost span around `event` that the OpenTelemetry layer knows.
fn event_trace_ids(event: &Event<'_>, dispatch: &Dispatch) -> Option<(TraceId, SpanId)> {
    // The registry itself rather than the formatter's context: the context hides spans that
    // the log filter disabled, yet those spans may well be traced.
    let registry = dispatch.downcast_ref::<Registry>()?;
    let leaf = if event.is_contextual() {
        dispatch.current_span().id()?.clone()
    } else {
        event.parent()?.clone()
    };
    let span_ids: Vec<tracing::span::Id> = registry.span(&leaf)?.scope().map(|span| span.id()).collect();
    for id in &span_ids {
        // No span extensions are held here, as `get_otel_context` requires. `None` means this
        // span is not traced (filtered out for the OpenTelemetry layer): try its parent.
        let Some(context) = tracing_opentelemetry::get_otel_context(id, dispatch) else {
            continue;
        };
        let span_context = context.span().span_context().clone();
        if span_context.is_valid() {
            return Some((span_context.trace_id(), span_context.span_id()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Collects log output in memory.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Buffer {
        fn contents(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'w self) -> Buffer {
            self.clone()
        }
    }

    /// A subscriber like the one `init` installs, without export, logging into a buffer.
    /// The subscriber `init` would install, without export, logging into a buffer.
    fn test_subscriber_filtered(format: LogFormat, filter: &str) -> (impl Subscriber + Send + Sync, Buffer) {
        let buffer = Buffer::default();
        let provider = SdkTracerProvider::builder().build();
        let subscriber = subscriber(EnvFilter::new(filter), format, buffer.clone(), tracer(&provider));
        (subscriber, buffer)
    }

    fn test_subscriber(format: LogFormat) -> (impl Subscriber + Send + Sync, Buffer) {
        test_subscriber_filtered(format, "debug")
    }

    #[test]
    fn quiet_logs_keep_tracing() {
        let (subscriber, buffer) = test_subscriber_filtered(LogFormat::Json, "warn");
        let trace_id = tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("reconcile");
            let _entered = span.enter();
            tracing::info!("filtered out");
            tracing::warn!("kept");
            current_trace_id().unwrap()
        });
        let output = buffer.contents();
        assert_eq!(output.lines().count(), 1, "{output}");
        let line: serde_json::Value = serde_json::from_str(output.trim()).unwrap();
        assert_eq!(line["message"], "kept");
        assert_eq!(line["trace_id"], trace_id);
    }

    fn env_from(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned().filter(|v| !v.trim().is_empty())
    }

    #[test]
    fn json_logs_carry_trace_id_of_enclosing_span() {
        let (subscriber, buffer) = test_subscriber(LogFormat::Json);
        let expected = tracing::subscriber::with_default(subscriber, || {
            let root = tracing::info_span!("reconcile", mlmodel.name = "bert");
            let _root = root.enter();
            let child = tracing::info_span!("phase");
            let _child = child.enter();
            tracing::info!(replicas = 2, "scaled");
            (
                trace_id_of(&root).unwrap(),
                span_context_of(&child).unwrap().span_id().to_string(),
            )
        });
        let output = buffer.contents();
        let line: serde_json::Value = serde_json::from_str(output.trim()).unwrap();
        assert_eq!(line["trace_id"], expected.0, "{output}");
        assert_eq!(line["span_id"], expected.1, "{output}");
        assert_eq!(line["message"], "scaled");
        assert_eq!(line["replicas"], 2);
        assert_eq!(line["span"]["name"], "phase");
        assert_eq!(line["spans"][0]["mlmodel.name"], "bert");
    }

    #[test]
    fn text_logs_carry_trace_id_of_enclosing_span() {
        let (subscriber, buffer) = test_subscriber(LogFormat::Text);
        let trace_id = tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("reconcile");
            let _entered = span.enter();
            tracing::warn!("slow");
            current_trace_id().unwrap()
        });
        let output = buffer.contents();
        assert_eq!(output.lines().count(), 1, "{output}");
        assert!(output.contains("slow"), "{output}");
        assert!(
            output.trim_end().contains(&format!("trace_id={trace_id} span_id=")),
            "{output}"
        );
    }

    #[test]
    fn logs_in_untraced_debug_span_carry_ids_of_traced_ancestor() {
        let (subscriber, buffer) = test_subscriber(LogFormat::Json);
        let (trace_id, span_id) = tracing::subscriber::with_default(subscriber, || {
            let root = tracing::info_span!("reconcile");
            let _root = root.enter();
            let detail = tracing::debug_span!("diff");
            let _detail = detail.enter();
            tracing::debug!("computed");
            let context = span_context_of(&root).unwrap();
            (context.trace_id().to_string(), context.span_id().to_string())
        });
        let line: serde_json::Value = serde_json::from_str(buffer.contents().trim()).unwrap();
        assert_eq!(line["span"]["name"], "diff", "logged within the debug span");
        assert_eq!(line["trace_id"], trace_id);
        assert_eq!(line["span_id"], span_id);
    }

    #[test]
    fn logs_with_explicit_parent_carry_its_ids() {
        let (subscriber, buffer) = test_subscriber(LogFormat::Json);
        let (trace_id, span_id) = tracing::subscriber::with_default(subscriber, || {
            let actor = tracing::info_span!("actor");
            let _elsewhere = tracing::info_span!("elsewhere").entered();
            tracing::info!(parent: &actor, "mailbox drained");
            let context = span_context_of(&actor).unwrap();
            (context.trace_id().to_string(), context.span_id().to_string())
        });
        let line: serde_json::Value = serde_json::from_str(buffer.contents().trim()).unwrap();
        assert_eq!(line["trace_id"], trace_id);
        assert_eq!(line["span_id"], span_id);
    }

    #[test]
    fn logs_outside_spans_have_no_trace_id() {
        let (subscriber, buffer) = test_subscriber(LogFormat::Json);
        tracing::subscriber::with_default(subscriber, || tracing::info!("starting"));
        let line: serde_json::Value = serde_json::from_str(buffer.contents().trim()).unwrap();
        assert_eq!(line["message"], "starting");
        assert!(line.get("trace_id").is_none());
    }

    #[test]
    fn logs_in_span_joined_to_remote_parent_carry_remote_trace_id() {
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (subscriber, buffer) = test_subscriber(LogFormat::Json);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("download");
            assert!(set_parent_from_traceparent(&span, traceparent));
            let _entered = span.enter();
            tracing::info!("fetching");
        });
        let line: serde_json::Value = serde_json::from_str(buffer.contents().trim()).unwrap();
        assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn traceparent_round_trip() {
        let (subscriber, _buffer) = test_subscriber(LogFormat::Text);
        tracing::subscriber::with_default(subscriber, || {
            let upstream = tracing::info_span!("rollout");
            let traceparent = traceparent_of(&upstream).unwrap();
            let parts: Vec<&str> = traceparent.split('-').collect();
            assert_eq!(parts.len(), 4, "{traceparent}");
            assert_eq!((parts[0], parts[3]), ("00", "01"));
            assert_eq!(parts[1], trace_id_of(&upstream).unwrap());

            let downstream = tracing::info_span!("download");
            assert!(set_parent_from_traceparent(&downstream, &traceparent));
            assert_eq!(trace_id_of(&downstream).unwrap(), parts[1]);
            assert_ne!(traceparent_of(&downstream).unwrap(), traceparent, "a new span id");
            // The parent is fixed once the span has started.
            assert!(!set_parent_from_traceparent(&downstream, &traceparent));
        });
    }

    #[test]
    fn malformed_traceparent_is_rejected() {
        let (subscriber, _buffer) = test_subscriber(LogFormat::Text);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("download");
            for bad in ["", "garbage", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"] {
                assert!(!set_parent_from_traceparent(&span, bad), "{bad:?}");
            }
        });
    }

    #[test]
    fn helpers_return_none_without_opentelemetry_layer() {
        let subscriber = tracing_subscriber::registry();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("x");
            assert_eq!(trace_id_of(&span), None);
            assert_eq!(traceparent_of(&span), None);
            assert!(!set_parent_from_traceparent(
                &span,
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            ));
        });
    }

    #[test]
    fn otlp_is_off_without_endpoint() {
        assert_eq!(OtlpConfig::from_env(env_from(&[])).unwrap(), None);
        let protocol_only = env_from(&[(OTEL_EXPORTER_OTLP_PROTOCOL, "http/protobuf")]);
        assert_eq!(OtlpConfig::from_env(protocol_only).unwrap(), None);
        let disabled = env_from(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4317"),
            ("OTEL_SDK_DISABLED", "true"),
        ]);
        assert_eq!(OtlpConfig::from_env(disabled).unwrap(), None);
        let none = env_from(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4317"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ]);
        assert_eq!(OtlpConfig::from_env(none).unwrap(), None);
    }

    #[test]
    fn otlp_protocol_defaults_to_grpc_and_signal_variables_win() {
        let config = OtlpConfig::from_env(env_from(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4317")]))
            .unwrap()
            .unwrap();
        assert_eq!(config.protocol, OtlpProtocol::Grpc);
        assert_eq!(config.endpoint, "http://c:4317");

        let config = OtlpConfig::from_env(env_from(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4317"),
            (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "http://t:4318/v1/traces"),
            (OTEL_EXPORTER_OTLP_PROTOCOL, "grpc"),
            (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, "HTTP/protobuf"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(config.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(config.endpoint, "http://t:4318/v1/traces");
    }

    #[test]
    fn unsupported_protocol_is_an_actionable_error() {
        let error = OtlpConfig::from_env(env_from(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4318"),
            (OTEL_EXPORTER_OTLP_PROTOCOL, "http/json"),
        ]))
        .unwrap_err();
        let message = error.to_string();
        assert!(message.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{message}");
        assert!(message.contains("http/protobuf"), "{message}");
    }

    #[test]
    fn invalid_rust_log_is_an_actionable_error() {
        assert!(log_filter(None).is_ok());
        assert!(log_filter(Some("  ".into())).is_ok());
        assert!(log_filter(Some("debug,kube=warn".into())).is_ok());
        let error = log_filter(Some("info,foo=[[".into())).unwrap_err();
        assert!(error.to_string().contains("RUST_LOG"), "{error}");
    }

    fn attribute(resource: &Resource, key: &'static str) -> Option<String> {
        resource
            .get(&opentelemetry::Key::from_static_str(key))
            .map(|v| v.to_string())
    }

    #[test]
    fn resource_names_service_and_pod() {
        let resource = build_resource(
            "mlmodel-operator",
            env_from(&[("HOSTNAME", "host-1"), ("POD_NAMESPACE", "ml")]),
        );
        assert_eq!(
            attribute(&resource, "service.name").as_deref(),
            Some("mlmodel-operator")
        );
        assert_eq!(
            attribute(&resource, "service.version").as_deref(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(attribute(&resource, "k8s.pod.name").as_deref(), Some("host-1"));
        assert_eq!(attribute(&resource, "k8s.namespace.name").as_deref(), Some("ml"));
        assert_eq!(attribute(&resource, "telemetry.sdk.language").as_deref(), Some("rust"));

        let resource = build_resource(
            "mlmodel-operator",
            env_from(&[("HOSTNAME", "host-1"), ("POD_NAME", "op-0")]),
        );
        assert_eq!(attribute(&resource, "k8s.pod.name").as_deref(), Some("op-0"));
        assert_eq!(attribute(&resource, "k8s.namespace.name"), None);
    }

    #[test]
    fn resource_environment_overrides_defaults() {
        let resource = build_resource(
            "mlmodel-operator",
            env_from(&[(
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=from-attrs,team=ml%20platform,deployment.environment=prod",
            )]),
        );
        assert_eq!(attribute(&resource, "service.name").as_deref(), Some("from-attrs"));
        assert_eq!(attribute(&resource, "team").as_deref(), Some("ml platform"));
        assert_eq!(attribute(&resource, "deployment.environment").as_deref(), Some("prod"));

        let resource = build_resource(
            "mlmodel-operator",
            env_from(&[
                ("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs"),
                ("OTEL_SERVICE_NAME", "from-name"),
            ]),
        );
        assert_eq!(attribute(&resource, "service.name").as_deref(), Some("from-name"));
    }

    #[test]
    fn resource_attribute_values_are_percent_decoded_and_malformed_escapes_left_alone() {
        let decoded: Vec<(String, String)> = parse_resource_attributes("a=x%2Cy, b=100%, c=%zz, d=%ff")
            .into_iter()
            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
            .collect();
        let pairs = [("a", "x,y"), ("b", "100%"), ("c", "%zz"), ("d", "%ff")];
        assert_eq!(decoded, pairs.map(|(k, v)| (k.to_owned(), v.to_owned())).to_vec());
    }
}

//! In-process OTLP trace receivers for integration tests: a gRPC `TraceService` and an
//! HTTP/protobuf `/v1/traces` endpoint, each on 127.0.0.1 with an ephemeral port, recording
//! every span they receive.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;

/// The OpenTelemetry SDK variables, besides `OTEL_EXPORTER_OTLP_ENDPOINT`, that could send a
/// process's spans elsewhere, in another protocol or under another name, or not at all: a test
/// that points an exporter at a receiver clears them first.
pub const EXPORTER_ENV_OVERRIDES: [&str; 8] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
];

/// One span as received, with ids in lowercase hex and times in Unix nanoseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub span_id: String,
    /// `None` for a root span.
    pub parent_span_id: Option<String>,
    pub name: String,
    /// OTLP `SpanKind` number (1 internal, 2 server, 3 client, ...).
    pub kind: i32,
    pub attributes: BTreeMap<String, String>,
    /// Event names, in order.
    pub events: Vec<String>,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
    /// The resource's `service.name`.
    pub service_name: Option<String>,
    pub resource: BTreeMap<String, String>,
    /// Instrumentation scope name.
    pub scope: String,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
}

impl ReceivedSpan {
    pub fn is_root(&self) -> bool {
        self.parent_span_id.is_none()
    }

    /// The span attribute `key`.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    /// The resource's `k8s.pod.name`: which process exported the span.
    pub fn pod_name(&self) -> Option<&str> {
        self.resource.get("k8s.pod.name").map(String::as_str)
    }
}

/// Spans received so far, in arrival order.
pub type Spans = Arc<Mutex<Vec<ReceivedSpan>>>;

/// A running receiver. Runs until the runtime it was started on shuts down.
#[derive(Clone, Debug)]
pub struct Receiver {
    addr: SocketAddr,
    spans: Spans,
}

impl Receiver {
    /// `http://127.0.0.1:<port>`: the value for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A snapshot of the spans received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.spans.lock().unwrap().clear();
    }

    /// Polls until `predicate` holds for the received spans, returning them; `None` on timeout.
    pub async fn wait_for(
        &self,
        predicate: impl Fn(&[ReceivedSpan]) -> bool,
        timeout: Duration,
    ) -> Option<Vec<ReceivedSpan>> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if predicate(&spans) {
                return Some(spans);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until a span named `name` arrives.
    pub async fn wait_for_span(&self, name: &str, timeout: Duration) -> Option<ReceivedSpan> {
        let spans = self
            .wait_for(|spans| spans.iter().any(|s| s.name == name), timeout)
            .await?;
        spans.into_iter().find(|s| s.name == name)
    }
}

/// Starts an OTLP/gRPC receiver on the current Tokio runtime.
pub async fn start() -> Receiver {
    start_on(&tokio::runtime::Handle::current())
}

/// Starts an OTLP/gRPC receiver on `runtime`, e.g. one shared by several tests.
pub fn start_on(runtime: &tokio::runtime::Handle) -> Receiver {
    let (listener, addr) = bind(runtime);
    let spans = Spans::default();
    let service = TraceServiceServer::new(GrpcCollector { spans: spans.clone() });
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    Receiver { addr, spans }
}

/// Starts an OTLP/HTTP (protobuf) receiver serving `POST /v1/traces` on the current runtime.
pub async fn start_http() -> Receiver {
    start_http_on(&tokio::runtime::Handle::current())
}

/// Starts an OTLP/HTTP (protobuf) receiver on `runtime`.
pub fn start_http_on(runtime: &tokio::runtime::Handle) -> Receiver {
    let (listener, addr) = bind(runtime);
    let spans = Spans::default();
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(http_export))
        .with_state(spans.clone());
    runtime.spawn(async move { axum::serve(listener, app).await });
    Receiver { addr, spans }
}

fn bind(runtime: &tokio::runtime::Handle) -> (tokio::net::TcpListener, SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let _entered = runtime.enter();
    (tokio::net::TcpListener::from_std(listener).unwrap(), addr)
}

struct GrpcCollector {
    spans: Spans,
}

#[tonic::async_trait]
impl TraceService for GrpcCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        record(&self.spans, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn http_export(
    State(spans): State<Spans>,
    body: Bytes,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], Vec<u8>) {
    let content_type = [(header::CONTENT_TYPE, "application/x-protobuf")];
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            record(&spans, request);
            let response = ExportTraceServiceResponse::default().encode_to_vec();
            (StatusCode::OK, content_type, response)
        }
        Err(_) => (StatusCode::BAD_REQUEST, content_type, Vec::new()),
    }
}

fn record(spans: &Spans, request: ExportTraceServiceRequest) {
    let mut received = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service_name = resource.get("service.name").cloned();
        for scope_spans in resource_spans.scope_spans {
            let scope = scope_spans.scope.map(|s| s.name).unwrap_or_default();
            for span in scope_spans.spans {
                let status = span.status.unwrap_or_default();
                received.push(ReceivedSpan {
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: (!span.parent_span_id.is_empty()).then(|| hex::encode(&span.parent_span_id)),
                    name: span.name,
                    kind: span.kind,
                    attributes: attributes(&span.attributes),
                    events: span.events.into_iter().map(|e| e.name).collect(),
                    status_code: status.code,
                    status_message: status.message,
                    service_name: service_name.clone(),
                    resource: resource.clone(),
                    scope: scope.clone(),
                    start_unix_nano: span.start_time_unix_nano,
                    end_unix_nano: span.end_time_unix_nano,
                });
            }
        }
    }
    spans.lock().unwrap().extend(received);
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), kv.value.as_ref().map(render).unwrap_or_default()))
        .collect()
}

fn render(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(b)) => hex::encode(b),
        Some(any_value::Value::ArrayValue(array)) => {
            let items: Vec<String> = array.values.iter().map(render).collect();
            format!("[{}]", items.join(","))
        }
        Some(any_value::Value::KvlistValue(list)) => format!("{:?}", attributes(&list.values)),
        // Dictionary-encoded strings (profiles signal only) and empty values.
        _ => String::new(),
    }
}

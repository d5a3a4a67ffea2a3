//! Prometheus metrics and the health endpoints.
//!
//! [`Metrics`] owns an OpenMetrics registry with the operator's metrics; [`serve`] exposes it on
//! `GET /metrics` next to `/healthz` (liveness) and `/readyz` (watches synced).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

/// Content type of [`Metrics::render`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds, in seconds, of the phase-duration buckets: from quick status flips to
/// hour-long downloads of large models.
const PHASE_BUCKETS: [f64; 14] = [
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    from: String,
    to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TraceExemplar {
    trace_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabels {
    category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    verb: &'static str,
    kind: &'static str,
    outcome: &'static str,
}

type PhaseHistogram = HistogramWithExemplars<TraceExemplar>;

fn phase_histogram() -> PhaseHistogram {
    HistogramWithExemplars::new(PHASE_BUCKETS.into_iter())
}

struct Inner {
    registry: Registry,
    phase_duration: Family<PhaseLabels, PhaseHistogram, fn() -> PhaseHistogram>,
    actors_alive: Gauge,
    actor_restarts: Counter,
    reconcile_errors: Family<CategoryLabels, Counter>,
    api_requests: Family<ApiLabels, Counter>,
    is_leader: Gauge,
    ready: AtomicBool,
}

/// The operator's metrics. Cheap to clone: clones share the same registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered at zero; not ready.
    pub fn new() -> Self {
        let phase_duration = Family::new_with_constructor(phase_histogram as fn() -> PhaseHistogram);
        let actors_alive = Gauge::default();
        let actor_restarts = Counter::default();
        let reconcile_errors = Family::<CategoryLabels, Counter>::default();
        let api_requests = Family::<ApiLabels, Counter>::default();
        let is_leader = Gauge::default();

        let mut registry = Registry::default();
        registry.register_with_unit(
            "mlmodel_phase_duration",
            "Time an MLModel spent in a phase before moving to the next one",
            Unit::Seconds,
            phase_duration.clone(),
        );
        registry.register(
            "mlmodel_actors_alive",
            "Model actors currently running",
            actors_alive.clone(),
        );
        // prometheus-client appends the `_total` suffix to counters itself.
        registry.register(
            "mlmodel_actor_restarts",
            "Model actors restarted by the supervisor after a failure",
            actor_restarts.clone(),
        );
        registry.register(
            "mlmodel_reconcile_errors",
            "Reconcile errors by category",
            reconcile_errors.clone(),
        );
        registry.register(
            "mlmodel_api_requests",
            "Kubernetes API requests made by the operator, by verb, kind and outcome",
            api_requests.clone(),
        );
        registry.register(
            "mlmodel_trace_spans_dropped",
            "Spans dropped because the OTLP collector did not take them (export never waits)",
            crate::telemetry::spans_dropped(),
        );
        registry.register(
            "mlmodel_is_leader",
            "1 while this replica holds the leader lease, else 0",
            is_leader.clone(),
        );

        Metrics {
            inner: Arc::new(Inner {
                registry,
                phase_duration,
                actors_alive,
                actor_restarts,
                reconcile_errors,
                api_requests,
                is_leader,
                ready: AtomicBool::new(false),
            }),
        }
    }

    /// Records that a model spent `seconds` in phase `from` before moving to `to`, with the
    /// rollout's trace id as exemplar so a slow bucket links to its trace.
    pub fn phase_transition(&self, from: &str, to: &str, seconds: f64, trace_id: Option<&str>) {
        // NaN and negative durations (clock steps) would corrupt the sum; count them as zero.
        let seconds = if seconds.is_finite() { seconds.max(0.0) } else { 0.0 };
        let exemplar = trace_id.filter(|id| !id.is_empty()).map(|id| TraceExemplar {
            trace_id: id.to_owned(),
        });
        let labels = PhaseLabels {
            from: from.to_owned(),
            to: to.to_owned(),
        };
        self.inner
            .phase_duration
            .get_or_create(&labels)
            .observe(seconds, exemplar, Some(SystemTime::now()));
    }

    /// A model actor started.
    pub fn actor_started(&self) {
        self.inner.actors_alive.inc();
    }

    /// A model actor stopped (for any reason).
    pub fn actor_stopped(&self) {
        self.inner.actors_alive.dec();
    }

    /// The supervisor restarted a failed model actor.
    pub fn actor_restarted(&self) {
        self.inner.actor_restarts.inc();
    }

    /// A reconcile failed; `category` is a small fixed set (e.g. `"api"`, `"validation"`).
    pub fn reconcile_error(&self, category: &'static str) {
        self.inner
            .reconcile_errors
            .get_or_create(&CategoryLabels { category })
            .inc();
    }

    /// A Kubernetes API request finished, e.g. `("patch", "Deployment", "success")`.
    pub fn api_request(&self, verb: &'static str, kind: &'static str, outcome: &'static str) {
        self.inner
            .api_requests
            .get_or_create(&ApiLabels { verb, kind, outcome })
            .inc();
    }

    /// Whether this replica currently holds the leader lease.
    pub fn set_leader(&self, is_leader: bool) {
        self.inner.is_leader.set(i64::from(is_leader));
    }

    /// Marks the operator ready (its watches have synced): `/readyz` answers 200 from then on.
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Release);
    }

    /// Whether [`Metrics::set_ready`] was last called with `true`.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// The registry in OpenMetrics text format, ending with `# EOF`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(error) = encode(&mut out, &self.inner.registry) {
            // Only a metric's own encoder can fail here; serve what was encoded.
            tracing::warn!(%error, "encoding metrics failed");
        }
        out
    }
}

/// The `/metrics`, `/healthz` and `/readyz` routes.
pub fn router(metrics: Metrics) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(metrics)
}

/// Serves GET `/metrics`, `/healthz` (200 "ok" while the process runs) and `/readyz` (200 only
/// after `set_ready(true)`, else 503) on `addr` until `shutdown` resolves.
pub async fn serve(
    metrics: Metrics,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|error| {
        std::io::Error::new(
            error.kind(),
            format!("cannot listen on {addr} for metrics and health endpoints: {error}"),
        )
    })?;
    serve_on(metrics, listener, shutdown).await
}

/// Like [`serve`], on an already bound listener (e.g. port 0 in tests).
pub async fn serve_on(
    metrics: Metrics,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    }
    axum::serve(listener, router(metrics))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics_handler(State(metrics): State<Metrics>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], metrics.render())
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(metrics): State<Metrics>) -> (StatusCode, &'static str) {
    if metrics.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn render_lists_unlabelled_metrics_at_zero() {
        let text = Metrics::new().render();
        for expected in [
            "# TYPE mlmodel_actors_alive gauge",
            "mlmodel_actors_alive 0",
            "# TYPE mlmodel_actor_restarts counter",
            "mlmodel_actor_restarts_total 0",
            "# TYPE mlmodel_is_leader gauge",
            "mlmodel_is_leader 0",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        // Labelled families show up with their first sample.
        assert!(!text.contains("mlmodel_reconcile_errors"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn phase_transition_records_histogram_with_trace_exemplar() {
        let metrics = Metrics::new();
        let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
        metrics.phase_transition("Downloading", "Ready", 42.0, Some(trace_id));
        metrics.phase_transition("Pending", "Downloading", 0.2, None);
        let text = metrics.render();

        assert!(
            text.contains("# TYPE mlmodel_phase_duration_seconds histogram"),
            "{text}"
        );
        assert!(text.contains("# UNIT mlmodel_phase_duration_seconds seconds"), "{text}");
        let labels = r#"from="Downloading",to="Ready""#;
        assert!(
            text.contains(&format!("mlmodel_phase_duration_seconds_count{{{labels}}} 1")),
            "{text}"
        );
        assert!(
            text.contains(&format!("mlmodel_phase_duration_seconds_sum{{{labels}}} 42.0")),
            "{text}"
        );
        // 42 s falls in the 60 s bucket, which carries the exemplar.
        let bucket = text
            .lines()
            .find(|line| {
                line.starts_with(&format!(
                    "mlmodel_phase_duration_seconds_bucket{{le=\"60.0\",{labels}}}"
                ))
            })
            .unwrap_or_else(|| panic!("no 60 s bucket in\n{text}"));
        assert!(
            bucket.contains(&format!(r#"1 # {{trace_id="{trace_id}"}} 42.0 "#)),
            "{bucket}"
        );
        let below = text
            .lines()
            .find(|line| {
                line.starts_with(&format!(
                    "mlmodel_phase_duration_seconds_bucket{{le=\"30.0\",{labels}}}"
                ))
            })
            .unwrap();
        assert!(below.ends_with(" 0"), "{below}");

        let pending = text
            .lines()
            .find(|line| {
                line.starts_with(r#"mlmodel_phase_duration_seconds_bucket{le="0.5",from="Pending",to="Downloading"}"#)
            })
            .unwrap_or_else(|| panic!("{text}"));
        assert!(pending.ends_with(" 1"), "no exemplar without a trace id: {pending}");
    }

    #[test]
    fn phase_transition_clamps_bad_durations() {
        let metrics = Metrics::new();
        metrics.phase_transition("A", "B", f64::NAN, Some(""));
        metrics.phase_transition("A", "B", -3.0, None);
        let text = metrics.render();
        assert!(
            text.contains(r#"mlmodel_phase_duration_seconds_sum{from="A",to="B"} 0.0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"mlmodel_phase_duration_seconds_count{from="A",to="B"} 2"#),
            "{text}"
        );
        assert!(!text.contains("trace_id"), "{text}");
    }

    #[test]
    fn counters_and_gauges() {
        let metrics = Metrics::new();
        let clone = metrics.clone();
        metrics.actor_started();
        metrics.actor_started();
        clone.actor_stopped();
        metrics.actor_restarted();
        metrics.reconcile_error("api");
        metrics.reconcile_error("api");
        metrics.reconcile_error("validation");
        metrics.api_request("patch", "Deployment", "success");
        metrics.api_request("patch", "Deployment", "conflict");
        metrics.api_request("patch", "Deployment", "success");
        metrics.set_leader(true);
        let text = clone.render();
        for expected in [
            "# TYPE mlmodel_reconcile_errors counter",
            "# TYPE mlmodel_api_requests counter",
            "mlmodel_actors_alive 1",
            "mlmodel_actor_restarts_total 1",
            r#"mlmodel_reconcile_errors_total{category="api"} 2"#,
            r#"mlmodel_reconcile_errors_total{category="validation"} 1"#,
            r#"mlmodel_api_requests_total{verb="patch",kind="Deployment",outcome="success"} 2"#,
            r#"mlmodel_api_requests_total{verb="patch",kind="Deployment",outcome="conflict"} 1"#,
            "mlmodel_is_leader 1",
            "# TYPE mlmodel_trace_spans_dropped counter",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        metrics.set_leader(false);
        assert!(metrics.render().contains("mlmodel_is_leader 0"));
    }

    /// Minimal HTTP/1.1 GET, enough for these endpoints: status, headers, body.
    async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head.to_ascii_lowercase(), body.to_owned())
    }

    #[tokio::test]
    async fn http_server_serves_metrics_and_health() {
        let metrics = Metrics::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_on(metrics.clone(), listener, async {
            let _ = stopped.await;
        }));

        let (status, _, body) = http_get(addr, "/healthz").await;
        assert_eq!((status, body.as_str()), (200, "ok"));
        let (status, _, body) = http_get(addr, "/readyz").await;
        assert_eq!((status, body.as_str()), (503, "not ready"));

        metrics.set_ready(true);
        metrics.phase_transition("Downloading", "Ready", 1.5, Some("0af7651916cd43dd8448eb211c80319c"));
        let (status, _, body) = http_get(addr, "/readyz").await;
        assert_eq!((status, body.as_str()), (200, "ok"));

        let (status, head, body) = http_get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(head.contains("content-type: application/openmetrics-text"), "{head}");
        assert!(
            body.contains(r#"trace_id="0af7651916cd43dd8448eb211c80319c""#),
            "{body}"
        );
        assert!(body.ends_with("# EOF\n"));

        let (status, _, _) = http_get(addr, "/nope").await;
        assert_eq!(status, 404);

        metrics.set_ready(false);
        assert_eq!(http_get(addr, "/readyz").await.0, 503);

        stop.send(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .expect("server stops on shutdown")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn serve_reports_the_address_it_cannot_bind() {
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let error = serve(Metrics::new(), addr, async {}).await.unwrap_err();
        assert!(error.to_string().contains(&addr.to_string()), "{error}");
    }
}

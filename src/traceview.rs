//! The `trace` subcommand: a model's current rollout trace, fetched from Jaeger's query API
//! and drawn in the terminal as a waterfall (Jaeger's web UI is not always at hand).
//!
//! [`parse_traces`] reads the answer of Jaeger's `/api/traces` endpoints into plain
//! [`Span`]s and [`waterfall`] turns them into lines; both are pure. [`run`] adds the I/O:
//! the model's `status.traceId` from the cluster, the trace from Jaeger.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use kube::{Api, Client};
use serde_json::Value;

use crate::api::MLModel;

/// Width of the waterfall, in columns.
pub const WIDTH: usize = 100;
const NAME_WIDTH: usize = 36;
const SERVICE_WIDTH: usize = 19;
const TIME_WIDTH: usize = 8;
/// Columns left for the bar: name, service, start and duration with a space after each, the
/// bar's two borders and the error mark take the rest.
const BAR_WIDTH: usize = WIDTH - NAME_WIDTH - SERVICE_WIDTH - 2 * TIME_WIDTH - 4 - 3;
/// Marks a span whose status is an error.
pub const ERROR_MARK: char = '✗';

/// Flags of `mlmodel-operator trace`.
#[derive(clap::Args, Debug, Clone)]
pub struct TraceArgs {
    /// Name of the MLModel.
    pub model: String,
    /// Namespace of the MLModel; the kubeconfig context's namespace by default.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Base URL of Jaeger's query API.
    #[arg(long, env = "JAEGER_URL", default_value = "http://localhost:16686")]
    pub jaeger: String,
}

/// Why a trace cannot be shown.
#[derive(Debug, thiserror::Error)]
pub enum TraceViewError {
    /// The cluster could not be reached or the model read.
    #[error("cannot read MLModel {namespace}/{name}: {source}")]
    Model {
        /// Namespace of the model.
        namespace: String,
        /// Name of the model.
        name: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// No kubeconfig (or in-cluster config) could be loaded.
    #[error("cannot load a kubeconfig: {0}")]
    Config(#[source] kube::Error),
    /// The model has no `status.traceId` (the operator has not started its rollout yet).
    #[error("MLModel {0} has no status.traceId yet; is the operator running?")]
    NoTraceId(String),
    /// Jaeger could not be reached or answered with an error.
    #[error("cannot fetch {url}: {message}; is Jaeger's query API there (--jaeger, JAEGER_URL)?")]
    Query {
        /// The URL asked.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// Jaeger does not know the trace (yet: spans are exported in batches).
    #[error("Jaeger at {jaeger} has no trace {trace_id} (yet); try again in a few seconds")]
    NotFound {
        /// Base URL of Jaeger.
        jaeger: String,
        /// The trace asked for.
        trace_id: String,
    },
    /// Jaeger's answer is not what its query API returns.
    #[error("unexpected answer from Jaeger: {0}")]
    Answer(String),
}

/// One span as Jaeger's query API returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// Hex trace id.
    pub trace_id: String,
    /// Hex span id.
    pub span_id: String,
    /// Parent span id (`CHILD_OF` reference), `None` for a root.
    pub parent_id: Option<String>,
    /// Operation name.
    pub name: String,
    /// `service.name` of the process that recorded it.
    pub service: String,
    /// Start, microseconds since the Unix epoch.
    pub start_us: u64,
    /// Duration in microseconds.
    pub duration_us: u64,
    /// Span attributes, values as strings.
    pub tags: BTreeMap<String, String>,
    /// Resource attributes of the process that recorded it (`k8s.pod.name`, ...).
    pub process_tags: BTreeMap<String, String>,
}

impl Span {
    /// A span attribute.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }

    /// Whether the span's status is an error.
    pub fn is_error(&self) -> bool {
        self.tag("error") == Some("true") || self.tag("otel.status_code") == Some("ERROR")
    }

    /// The error's description: the status message, else the failure reason attribute.
    pub fn error_message(&self) -> Option<&str> {
        self.tag("otel.status_description")
            .or_else(|| self.tag("mlmodel.failure.reason"))
    }

    /// End, microseconds since the Unix epoch.
    pub fn end_us(&self) -> u64 {
        self.start_us + self.duration_us
    }
}

/// The traces in an answer of Jaeger's `/api/traces/<id>` or `/api/traces?service=...`
/// endpoints, each a list of spans in the answer's order.
pub fn parse_traces(answer: &Value) -> Result<Vec<Vec<Span>>, TraceViewError> {
    let data = answer["data"]
        .as_array()
        .ok_or_else(|| TraceViewError::Answer("no `data` array".to_owned()))?;
    data.iter().map(parse_trace).collect()
}

fn parse_trace(trace: &Value) -> Result<Vec<Span>, TraceViewError> {
    let processes = &trace["processes"];
    let spans = trace["spans"]
        .as_array()
        .ok_or_else(|| TraceViewError::Answer("a trace without `spans`".to_owned()))?;
    spans
        .iter()
        .map(|span| {
            let text = |key: &str| {
                span[key]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| TraceViewError::Answer(format!("a span without `{key}`")))
            };
            let process = &processes[span["processID"].as_str().unwrap_or_default()];
            let parent_id = span["references"].as_array().and_then(|references| {
                references
                    .iter()
                    .find(|r| r["refType"] == "CHILD_OF")
                    .and_then(|r| r["spanID"].as_str())
                    .map(str::to_owned)
            });
            Ok(Span {
                trace_id: text("traceID")?,
                span_id: text("spanID")?,
                parent_id,
                name: text("operationName")?,
                service: process["serviceName"].as_str().unwrap_or_default().to_owned(),
                start_us: span["startTime"].as_u64().unwrap_or_default(),
                duration_us: span["duration"].as_u64().unwrap_or_default(),
                tags: tags(&span["tags"]),
                process_tags: tags(&process["tags"]),
            })
        })
        .collect()
}

/// Jaeger's `[{key, type, value}]` as a map of strings.
fn tags(list: &Value) -> BTreeMap<String, String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|tag| {
            let key = tag["key"].as_str()?.to_owned();
            let value = match &tag["value"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            Some((key, value))
        })
        .collect()
}

/// The spans in waterfall order (each after its parent, siblings by start time) with their
/// depth. A span whose parent is not in the trace is drawn as a root.
pub fn tree_order(spans: &[Span]) -> Vec<(usize, &Span)> {
    let ids: HashMap<&str, &Span> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut children: HashMap<Option<&str>, Vec<&Span>> = HashMap::new();
    for span in spans {
        let parent = span.parent_id.as_deref().filter(|p| ids.contains_key(p));
        children.entry(parent).or_default().push(span);
    }
    for list in children.values_mut() {
        list.sort_by(|a, b| (a.start_us, &a.name).cmp(&(b.start_us, &b.name)));
    }
    let mut out = Vec::with_capacity(spans.len());
    let mut stack: Vec<(usize, &Span)> = children
        .get(&None)
        .map(|roots| roots.iter().rev().map(|s| (0, *s)).collect())
        .unwrap_or_default();
    while let Some((depth, span)) = stack.pop() {
        out.push((depth, span));
        if let Some(list) = children.get(&Some(span.span_id.as_str())) {
            stack.extend(list.iter().rev().map(|s| (depth + 1, *s)));
        }
    }
    out
}

/// The waterfall of one trace, [`WIDTH`] columns wide: a header, then one line per span in
/// [`tree_order`] (name indented by depth, service, start offset, duration, a bar scaled to
/// the trace, [`ERROR_MARK`] on errors), an error's description on the line below it.
pub fn waterfall(spans: &[Span]) -> Vec<String> {
    let Some(t0) = spans.iter().map(|s| s.start_us).min() else {
        return vec!["(no spans)".to_owned()];
    };
    let end = spans.iter().map(Span::end_us).max().unwrap_or(t0);
    let total = (end - t0).max(1);
    let mut lines = vec![
        format!(
            "trace {}  {} spans  {}",
            spans[0].trace_id,
            spans.len(),
            human_duration(end - t0)
        ),
        format!(
            "{:<NAME_WIDTH$} {:<SERVICE_WIDTH$} {:>TIME_WIDTH$} {:>TIME_WIDTH$} {}",
            "SPAN", "SERVICE", "START", "DURATION", "",
        )
        .trim_end()
        .to_owned(),
    ];
    for (depth, span) in tree_order(spans) {
        let name = fit(&format!("{}{}", "  ".repeat(depth), span.name), NAME_WIDTH);
        let service = fit(&span.service, SERVICE_WIDTH);
        let from = scale(span.start_us - t0, total);
        let to = scale(span.end_us() - t0, total).max(from + 1).min(BAR_WIDTH);
        let from = from.min(to - 1);
        let bar: String = (0..BAR_WIDTH)
            .map(|i| if (from..to).contains(&i) { '█' } else { ' ' })
            .collect();
        let mark = if span.is_error() { ERROR_MARK } else { ' ' };
        let line = format!(
            "{name:<NAME_WIDTH$} {service:<SERVICE_WIDTH$} {:>TIME_WIDTH$} {:>TIME_WIDTH$} │{bar}│{mark}",
            human_duration(span.start_us - t0),
            human_duration(span.duration_us),
        );
        lines.push(line.trim_end().to_owned());
        if span.is_error()
            && let Some(message) = span.error_message()
        {
            let indent = "  ".repeat(depth + 1);
            lines.extend(wrap(&format!("{ERROR_MARK} {message}"), &indent, WIDTH));
        }
    }
    if let Some(split) = split(spans) {
        lines.extend(wrap(&split, "", WIDTH));
    }
    lines
}

/// Where a rollout's time went, in one sentence: each phase's duration (the volume, the
/// download Job with the downloader's own share, serving: the server's start, its model load
/// and readiness probes), and the operator's own work, its reconciles. `None` for a trace
/// without phases.
pub fn split(spans: &[Span]) -> Option<String> {
    let phases: Vec<String> = tree_order(spans)
        .into_iter()
        .filter_map(|(_, s)| Some((s.name.strip_prefix("phase ")?, s)))
        .map(|(phase, span)| {
            let mut part = format!("{phase} {}", human_duration(span.duration_us));
            if phase == "Downloading"
                && let Some(download) = spans.iter().find(|s| s.name == "mlmodel.download")
            {
                part.push_str(&format!(" (the downloader {})", human_duration(download.duration_us)));
            }
            part
        })
        .collect();
    if phases.is_empty() {
        return None;
    }
    let reconciles: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "reconcile" && s.service == "mlmodel-operator")
        .collect();
    let busy: u64 = reconciles.iter().map(|s| s.duration_us).sum();
    Some(format!(
        "time by phase: {}; the operator's own work: {} reconciles, {} in all",
        phases.join(", "),
        reconciles.len(),
        human_duration(busy)
    ))
}

/// Bar column of `offset` microseconds into a trace `total` long.
fn scale(offset: u64, total: u64) -> usize {
    ((u128::from(offset) * BAR_WIDTH as u128) / u128::from(total)) as usize
}

/// `text` in lines of at most `width` characters, each starting with `indent`, broken
/// between words (a word longer than a line is cut).
fn wrap(text: &str, indent: &str, width: usize) -> Vec<String> {
    let room = width.saturating_sub(indent.chars().count()).max(1);
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let needed = line.chars().count() + usize::from(!line.is_empty()) + word.chars().count();
        if !line.is_empty() && needed > room {
            lines.push(format!("{indent}{line}"));
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(format!("{indent}{line}"));
    }
    lines.into_iter().map(|l| fit(&l, width)).collect()
}

/// `text` cut to `width` characters, an ellipsis marking the cut.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(width - 1).collect();
    cut.push('…');
    cut
}

/// `0.4ms`, `312ms`, `4.27s`, `2m05s`.
fn human_duration(us: u64) -> String {
    match us {
        0..1_000 => format!("{:.1}ms", us as f64 / 1_000.0),
        1_000..1_000_000 => format!("{}ms", us / 1_000),
        1_000_000..60_000_000 => format!("{:.2}s", us as f64 / 1_000_000.0),
        _ => format!("{}m{:02}s", us / 60_000_000, (us / 1_000_000) % 60),
    }
}

/// Fetches trace `trace_id` from Jaeger at `jaeger` (`/api/traces/<id>`).
pub async fn fetch_trace(jaeger: &str, trace_id: &str) -> Result<Vec<Span>, TraceViewError> {
    let url = format!("{}/api/traces/{trace_id}", jaeger.trim_end_matches('/'));
    let (status, answer) = get_json(&url).await?;
    if status == reqwest::StatusCode::NOT_FOUND {
        return Err(TraceViewError::NotFound {
            jaeger: jaeger.to_owned(),
            trace_id: trace_id.to_owned(),
        });
    }
    parse_traces(&answer)?
        .into_iter()
        .next()
        .ok_or_else(|| TraceViewError::NotFound {
            jaeger: jaeger.to_owned(),
            trace_id: trace_id.to_owned(),
        })
}

/// Searches Jaeger at `jaeger` for the traces of `service` (in the last hour) with a span
/// carrying every attribute of `tags` (`/api/traces?service=...&tags={...}`), as the UI's
/// search does.
pub async fn search_traces(
    jaeger: &str,
    service: &str,
    tags: &[(&str, &str)],
) -> Result<Vec<Vec<Span>>, TraceViewError> {
    let tags: serde_json::Map<String, Value> = tags
        .iter()
        .map(|(key, value)| ((*key).to_owned(), Value::from(*value)))
        .collect();
    let tags = Value::Object(tags).to_string();
    let mut url = url::Url::parse(&format!("{}/api/traces", jaeger.trim_end_matches('/'))).map_err(|e| {
        TraceViewError::Query {
            url: jaeger.to_owned(),
            message: e.to_string(),
        }
    })?;
    url.query_pairs_mut()
        .append_pair("service", service)
        .append_pair("tags", &tags)
        .append_pair("lookback", "1h")
        .append_pair("limit", "100");
    let (_, answer) = get_json(url.as_str()).await?;
    parse_traces(&answer)
}

async fn get_json(url: &str) -> Result<(reqwest::StatusCode, Value), TraceViewError> {
    let query_error = |message: String| TraceViewError::Query {
        url: url.to_owned(),
        message,
    };
    let response = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| query_error(e.to_string()))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| query_error(e.to_string()))?;
    if !status.is_success() && status != reqwest::StatusCode::NOT_FOUND {
        return Err(query_error(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body).trim()
        )));
    }
    let answer = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Ok((status, answer))
}

/// `mlmodel-operator trace`: prints the waterfall of the model's current rollout trace.
pub async fn run(args: &TraceArgs) -> Result<Vec<String>, TraceViewError> {
    let client = Client::try_default().await.map_err(TraceViewError::Config)?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let model = Api::<MLModel>::namespaced(client, &namespace)
        .get(&args.model)
        .await
        .map_err(|source| TraceViewError::Model {
            namespace: namespace.clone(),
            name: args.model.clone(),
            source,
        })?;
    let trace_id = model
        .status
        .and_then(|s| s.trace_id)
        .ok_or_else(|| TraceViewError::NoTraceId(format!("{namespace}/{}", args.model)))?;
    let spans = fetch_trace(&args.jaeger, &trace_id).await?;
    Ok(waterfall(&spans))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded() -> Vec<Span> {
        let answer: Value = serde_json::from_str(include_str!("../tests/fixtures/jaeger-trace.json")).unwrap();
        let mut traces = parse_traces(&answer).unwrap();
        assert_eq!(traces.len(), 1);
        traces.remove(0)
    }

    #[test]
    fn parses_a_recorded_answer() {
        let spans = recorded();
        let root = spans.iter().find(|s| s.name == "mlmodel.rollout").unwrap();
        assert_eq!(root.parent_id, None);
        assert_eq!(root.service, "mlmodel-operator");
        assert!(root.process_tags.contains_key("k8s.pod.name"));
        let failed = spans.iter().find(|s| s.name == "mlmodel.failed").unwrap();
        assert_eq!(failed.parent_id.as_deref(), Some(root.span_id.as_str()));
        assert!(failed.is_error());
        assert_eq!(failed.tag("mlmodel.failure.reason"), Some("Unschedulable"));
        assert!(!root.is_error());
    }

    #[test]
    fn tree_order_puts_children_under_parents_by_start() {
        let spans = recorded();
        let order: Vec<(usize, &str)> = tree_order(&spans)
            .into_iter()
            .filter(|(_, s)| s.name != "reconcile")
            .map(|(depth, s)| (depth, s.name.as_str()))
            .collect();
        assert_eq!(
            order,
            [
                (0, "mlmodel.rollout"),
                (1, "phase CreatingStorage"),
                (1, "phase Downloading"),
                (1, "phase Serving"),
                (1, "mlmodel.failed"),
            ]
        );
        assert_eq!(tree_order(&spans).len(), spans.len(), "every span drawn once");
    }

    #[test]
    fn waterfall_is_aligned_within_width_and_marks_errors() {
        let lines = waterfall(&recorded());
        for line in &lines {
            assert!(line.chars().count() <= WIDTH, "{line:?} is wider than {WIDTH}");
        }
        assert!(lines[0].starts_with("trace "), "{lines:#?}");
        // Every span line has its bar between borders at the same columns.
        let borders: Vec<usize> = lines
            .iter()
            .filter(|l| l.contains('│'))
            .map(|l| l.chars().position(|c| c == '│').unwrap())
            .collect();
        assert!(borders.len() >= 5);
        assert!(borders.iter().all(|b| *b == borders[0]), "{lines:#?}");
        let failed = lines
            .iter()
            .position(|l| l.trim_start().starts_with("mlmodel.failed"))
            .unwrap();
        assert!(lines[failed].ends_with(ERROR_MARK), "{}", lines[failed]);
        let reason = lines[failed + 1..]
            .iter()
            .flat_map(|l| l.split_whitespace())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(lines[failed + 1].trim_start().starts_with(ERROR_MARK), "{lines:#?}");
        assert!(reason.contains("Insufficient nvidia.com/gpu"), "{lines:#?}");
        let root = lines.iter().find(|l| l.starts_with("mlmodel.rollout")).unwrap();
        assert!(root.contains("mlmodel-operator") && root.contains('█'), "{root}");
    }

    #[test]
    fn bars_are_scaled_to_the_trace() {
        let lines = waterfall(&recorded());
        let bar = |prefix: &str| -> String {
            let line = lines.iter().find(|l| l.trim_start().starts_with(prefix)).unwrap();
            line.split('│').nth(1).unwrap().to_owned()
        };
        // The rollout's root ends at once; the failure comes last, at the right border.
        assert!(bar("mlmodel.rollout").starts_with('█'), "{lines:#?}");
        assert!(bar("mlmodel.failed").ends_with('█'), "{lines:#?}");
        // The Serving phase lasts most of the trace.
        assert!(bar("phase Serving").matches('█').count() > BAR_WIDTH / 2, "{lines:#?}");
    }

    fn span(name: &str, service: &str, start_us: u64, duration_us: u64) -> Span {
        Span {
            trace_id: "t".to_owned(),
            span_id: format!("{name}@{start_us}"),
            parent_id: None,
            name: name.to_owned(),
            service: service.to_owned(),
            start_us,
            duration_us,
            tags: BTreeMap::new(),
            process_tags: BTreeMap::new(),
        }
    }

    #[test]
    fn the_split_names_each_phase_the_downloaders_share_and_the_operators_work() {
        let spans = [
            span("mlmodel.rollout", "mlmodel-operator", 0, 100),
            span("phase CreatingStorage", "mlmodel-operator", 0, 1_200_000),
            span("reconcile", "mlmodel-operator", 0, 30_000),
            span("phase Downloading", "mlmodel-operator", 1_200_000, 3_400_000),
            span("reconcile", "mlmodel-operator", 1_200_000, 12_000),
            span("mlmodel.download", "mlmodel-downloader", 2_000_000, 310_000),
            span("phase Serving", "mlmodel-operator", 4_600_000, 5_300_000),
            span("reconcile", "mlmodel-operator", 9_900_000, 8_000),
            span("mlmodel.ready", "mlmodel-operator", 9_900_000, 50),
        ];
        assert_eq!(
            split(&spans).as_deref(),
            Some(
                "time by phase: CreatingStorage 1.20s, Downloading 3.40s (the downloader 310ms), \
                 Serving 5.30s; the operator's own work: 3 reconciles, 50ms in all"
            )
        );
        assert_eq!(split(&spans[..1]), None, "a trace without phases has no split");
        let lines = waterfall(&spans);
        let at = lines
            .iter()
            .position(|l| l.starts_with("time by phase"))
            .expect("the split");
        assert!(
            lines[at..].join(" ").ends_with("50ms in all"),
            "the split ends the waterfall: {lines:#?}"
        );
        assert!(lines.iter().all(|l| l.chars().count() <= WIDTH), "{lines:#?}");
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(human_duration(400), "0.4ms");
        assert_eq!(human_duration(312_000), "312ms");
        assert_eq!(human_duration(4_270_000), "4.27s");
        assert_eq!(human_duration(125_000_000), "2m05s");
    }

    #[test]
    fn long_names_are_cut_with_an_ellipsis() {
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(fit("abc", 4), "abc");
        assert_eq!(wrap("aa bb cc", "  ", 7), ["  aa bb", "  cc"]);
    }

    #[test]
    fn an_empty_answer_is_no_trace() {
        assert!(parse_traces(&serde_json::json!({"data": []})).unwrap().is_empty());
        assert!(parse_traces(&serde_json::json!({"errors": ["x"]})).is_err());
        assert_eq!(waterfall(&[]), ["(no spans)"]);
    }
}

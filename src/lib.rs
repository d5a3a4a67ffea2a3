//! mlmodel-operator: turns `MLModel` resources into served machine-learning models.
//!
//! The modules follow the architecture:
//! - [`api`]: the `MLModel` custom resource (spec, status, CRD generation).
//! - [`lifecycle`]: the pure core. Observed state in, actions and status out; no I/O.
//! - [`resources`]: builders for the children (PVC, download Job, serving Deployment, Service).
//! - [`actors`]: the dispatcher, the supervisor and one actor per model.
//! - [`cluster`]: cluster I/O (server-side apply, status patches, Events).
//! - [`leader`]: leader election over a `coordination.k8s.io` Lease.
//! - [`telemetry`] and [`metrics`]: traces, logs, Prometheus metrics and health endpoints.
//! - [`memory`]: the allocator's free memory given back to the system.
//! - [`download`]: the `download` subcommand run by each model's download Job.
//! - [`traceview`]: the `trace` subcommand, a model's rollout trace drawn from Jaeger.

pub mod actors;
pub mod api;
pub mod cluster;
pub mod download;
pub mod events;
pub mod leader;
pub mod lifecycle;
pub mod memory;
pub mod metrics;
pub mod operator;
pub mod resources;
pub mod telemetry;
pub mod traceview;

use std::time::Duration;

/// `%XX` escapes decoded, for every percent-encoded input the crate reads (URL parts,
/// `OTEL_RESOURCE_ATTRIBUTES`); malformed escapes stay as they are, and `None` means the
/// result is not UTF-8.
pub fn percent_decode(input: &str) -> Option<String> {
    percent_encoding::percent_decode_str(input)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// Capped exponential backoff with jitter, for every retry in the crate (the model actors'
/// API calls, the downloader's fetches): attempt 0 waits between `base / 2` and `base`, each
/// further attempt twice as long, up to `max`; the jitter keeps many retries from moving in
/// step.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let exp = base.saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX));
    let capped = exp.min(max);
    capped.mul_f64(rand::random_range(0.5..=1.0))
}

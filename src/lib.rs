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
//! - [`download`]: the `download` subcommand run by each model's download Job.
//! - [`traceview`]: the `trace` subcommand, a model's rollout trace drawn from Jaeger.

pub mod actors;
pub mod api;
pub mod cluster;
pub mod download;
pub mod leader;
pub mod lifecycle;
pub mod metrics;
pub mod operator;
pub mod resources;
pub mod telemetry;
pub mod traceview;

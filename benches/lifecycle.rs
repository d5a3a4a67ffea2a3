//! Benchmark of the operator's reaction times on the local control plane: from `apply` to the
//! download Job's creation, and from the Job's completion to the serving Deployment's
//! creation, over many models applied at once. Prints median, p99 and max, plus the
//! operator's memory. Run with `cargo bench --bench lifecycle` (`BENCH_MODELS` sets the count).
//!
//! Times are when this process observed each event through its own watches, so every figure
//! includes the API server's watch delivery, as a user would see it.

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "../tests/operator/mod.rs"]
mod operator;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::{Resource, ResourceExt};
use mlmodel_operator::api::{MLModel, MLModelSpec, Phase};

type Seen = Arc<Mutex<HashMap<String, Instant>>>;

fn model_of<K: Resource>(obj: &K) -> Option<String> {
    obj.meta().labels.as_ref()?.get("mlmodel.oda.tmforum.org/name").cloned()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn report(what: &str, mut xs: Vec<Duration>) {
    xs.sort();
    println!(
        "{what:<38} n={:<4} median {:>8.1} ms   p99 {:>8.1} ms   max {:>8.1} ms",
        xs.len(),
        percentile(&xs, 0.5).as_secs_f64() * 1e3,
        percentile(&xs, 0.99).as_secs_f64() * 1e3,
        xs.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::main]
async fn main() {
    let count: usize = std::env::var("BENCH_MODELS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let op = operator::start("bench", &[("RUST_LOG", "warn,mlmodel_operator::operator=info")]);
    op.wait_ready(Duration::from_secs(60));
    let ns = support::namespace("bench").await;
    let idle_rss = rss_kib(op.pid());

    let job_created: Seen = Arc::default();
    let job_completed: Seen = Arc::default();
    let deployment_created: Seen = Arc::default();
    let ready: Seen = Arc::default();
    {
        let (created, completed) = (job_created.clone(), job_completed.clone());
        let jobs: Api<Job> = ns.api();
        tokio::spawn(async move {
            let mut stream = watcher::watcher(jobs, watcher::Config::default()).boxed();
            while let Some(event) = stream.next().await {
                let Ok(Event::Apply(j) | Event::InitApply(j)) = event else {
                    continue;
                };
                let Some(model) = model_of(&j) else { continue };
                let now = Instant::now();
                created.lock().unwrap().entry(model.clone()).or_insert(now);
                let done = j
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Complete" && c.status == "True"));
                if done {
                    completed.lock().unwrap().entry(model).or_insert(now);
                }
            }
        });
        let created = deployment_created.clone();
        let deployments: Api<Deployment> = ns.api();
        tokio::spawn(async move {
            let mut stream = watcher::watcher(deployments, watcher::Config::default()).boxed();
            while let Some(event) = stream.next().await {
                let Ok(Event::Apply(d) | Event::InitApply(d)) = event else {
                    continue;
                };
                if let Some(model) = model_of(&d) {
                    created.lock().unwrap().entry(model).or_insert_with(Instant::now);
                }
            }
        });
        let ready = ready.clone();
        let models: Api<MLModel> = ns.api();
        tokio::spawn(async move {
            let mut stream = watcher::watcher(models, watcher::Config::default()).boxed();
            while let Some(event) = stream.next().await {
                let Ok(Event::Apply(m) | Event::InitApply(m)) = event else {
                    continue;
                };
                if m.status.as_ref().and_then(|s| s.phase) == Some(Phase::Ready) {
                    ready.lock().unwrap().entry(m.name_any()).or_insert_with(Instant::now);
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let models: Api<MLModel> = ns.api();
    // Warm-up, not measured: the API server builds its server-side-apply type models and the
    // operator its connections on first use.
    let warmup = support::namespace("bench-warmup").await;
    let spec: MLModelSpec =
        serde_json::from_value(serde_json::json!({"modelURL": "https://models.example.com/warmup.tar.gz"}))
            .expect("spec");
    warmup
        .api::<MLModel>()
        .create(&PostParams::default(), &MLModel::new("warmup", spec))
        .await
        .expect("create");
    support::wait_for(&warmup.api::<MLModel>(), "warmup", Duration::from_secs(120), |m| {
        m.status.as_ref().and_then(|s| s.phase) == Some(Phase::Ready)
    })
    .await;

    let mut applied = HashMap::new();
    let burst = Instant::now();
    for i in 0..count {
        let name = format!("bench-{i}");
        let spec: MLModelSpec = serde_json::from_value(serde_json::json!({
            "modelURL": format!("https://models.example.com/{name}.tar.gz")
        }))
        .expect("spec");
        let model = MLModel::new(&name, spec);
        applied.insert(name.clone(), Instant::now());
        models.create(&PostParams::default(), &model).await.expect("create");
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while ready.lock().unwrap().len() < count {
        assert!(Instant::now() < deadline, "not every model became Ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_ready = burst.elapsed();
    let busy_rss = rss_kib(op.pid());

    let diff = |later: &Seen, earlier: &HashMap<String, Instant>| -> Vec<Duration> {
        let later = later.lock().unwrap();
        earlier
            .iter()
            .filter_map(|(k, t0)| later.get(k).map(|t1| t1.saturating_duration_since(*t0)))
            .collect()
    };
    let completed: HashMap<String, Instant> = job_completed.lock().unwrap().clone();
    println!("mlmodel-operator lifecycle benchmark: {count} models created in one burst");
    report("apply -> download Job created", diff(&job_created, &applied));
    report(
        "Job complete -> Deployment created",
        diff(&deployment_created, &completed),
    );
    report("apply -> Ready", diff(&ready, &applied));
    println!(
        "all {count} models Ready {:.2} s after the first apply",
        all_ready.as_secs_f64()
    );
    println!(
        "operator RSS: idle {} KiB, after {count} models {} KiB",
        idle_rss.map_or("?".into(), |v| v.to_string()),
        busy_rss.map_or("?".into(), |v| v.to_string())
    );
}

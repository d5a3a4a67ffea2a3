//! Benchmark of the controller core on the local control plane (kwok nodes, no kubelet): many
//! models applied at once, then a restart and a leader failover, with the operator's memory and
//! API traffic. Prints one table.
//!
//! `make bench` runs it at 1,000 models; `BENCH_MODELS=10000 make bench` runs it at 10,000
//! (tens of minutes on a small machine; the test bed's controller-manager and scheduler, at
//! their default 20 requests per second, dominate the Ready figures at that size).
//!
//! The benchmark prepares the test bed for the count: extra kwok nodes with room for every pod,
//! and a StorageClass with no provisioner whose claims it binds itself, to a PersistentVolume it
//! creates per claim (the controller-manager's binder, at about 100 claims a minute, would
//! otherwise be what is measured).
//!
//! `BENCH_READY_SECONDS` bounds the wait for every model of the burst to be Ready (default
//! 3600); past it the figures are those of the models Ready so far, said so in the table, and
//! the restart and failover are measured with the rest still rolling out.
//! `BENCH_BURST_ONLY=1` stops after the burst (no restart, no failover);
//! `BENCH_TRACES=1` runs the test bed with a Jaeger the operator exports to, and after the
//! burst compares apply -> Ready with Jaeger running and with it killed (then stops);
//! `MLMODEL_OPERATOR_BIN=<path>` measures another build of the operator. The test bed's
//! controller-manager and scheduler run with client limits of 300 requests per second, burst
//! 600 (`KUBE_API_QPS` and `KUBE_API_BURST` override them).
//!
//! Times are when this process observed each event through its own watches, so every figure
//! includes the API server's watch delivery, as a user would see it.

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "../tests/operator/mod.rs"]
mod operator;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Resource, ResourceExt};
use mlmodel_operator::api::{MLModel, Phase};
use serde_json::json;

const STORAGE_CLASS: &str = "bench-prebound";
const LEASE: &str = "mlmodel-operator-bench";
const PODS_PER_NODE: usize = 1000;

type Seen = Arc<Mutex<HashMap<String, Instant>>>;

fn model_of<K: Resource>(obj: &K) -> Option<String> {
    obj.meta().labels.as_ref()?.get("mlmodel.oda.tmforum.org/name").cloned()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The operator's /metrics text.
fn scrape(port: u16) -> String {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

/// Sum of the samples of `metric` (every label set).
fn metric(port: u16, metric: &str) -> f64 {
    scrape(port)
        .lines()
        .filter(|l| l.starts_with(metric) && !l.starts_with('#'))
        .filter(|l| l[metric.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Samples the RSS of a process every 100 ms; returns the peak so far on demand.
struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    p.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Self { peak, stop }
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Extra kwok nodes with room for `pods` pods.
async fn add_nodes(client: &kube::Client, pods: usize) {
    let nodes: Api<Node> = Api::all(client.clone());
    for i in 0..pods.div_ceil(PODS_PER_NODE) {
        let name = format!("bench-node-{i}");
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {"type": "kwok", "kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux",
                           "kubernetes.io/hostname": name}
            },
            "spec": {},
            "status": {
                "allocatable": {"cpu": "1000", "memory": "4Ti", "pods": PODS_PER_NODE.to_string()},
                "capacity": {"cpu": "1000", "memory": "4Ti", "pods": PODS_PER_NODE.to_string()},
                "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux"}
            }
        }))
        .expect("node");
        let _ = nodes.create(&PostParams::default(), &node).await;
    }
}

/// A StorageClass nobody provisions, and a task that binds each of its claims in `namespace`
/// to a PersistentVolume made for it, as the binder would (volume, claim, then both statuses).
async fn bind_claims_of(client: kube::Client, namespace: String) {
    let sc: StorageClass = serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": STORAGE_CLASS},
        "provisioner": "kubernetes.io/no-provisioner",
        "volumeBindingMode": "Immediate",
        "reclaimPolicy": "Delete"
    }))
    .expect("storage class");
    let _ = Api::<StorageClass>::all(client.clone())
        .create(&PostParams::default(), &sc)
        .await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    tokio::spawn(async move {
        let mut stream = watcher::watcher(claims.clone(), watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        let bound = Arc::new(tokio::sync::Semaphore::new(32));
        while let Some(claim) = stream.next().await {
            let Ok(claim) = claim else { continue };
            if claim.spec.as_ref().and_then(|s| s.volume_name.as_ref()).is_some() {
                continue;
            }
            let (claims, volumes, permit) = (claims.clone(), volumes.clone(), bound.clone().acquire_owned().await);
            tokio::spawn(async move {
                let _permit = permit;
                bind(&claims, &volumes, &namespace_of(&claim), &claim).await;
            });
        }
    });
}

fn namespace_of(claim: &PersistentVolumeClaim) -> String {
    claim.namespace().unwrap_or_default()
}

async fn bind(
    claims: &Api<PersistentVolumeClaim>,
    volumes: &Api<PersistentVolume>,
    ns: &str,
    claim: &PersistentVolumeClaim,
) {
    let name = claim.name_any();
    let pv_name = format!(
        "bench-{}-{name}",
        claim.uid().unwrap_or_default().get(..8).unwrap_or("x")
    );
    let pv: PersistentVolume = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": pv_name, "annotations": {"pv.kubernetes.io/bound-by-controller": "yes"}},
        "spec": {
            "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
            "storageClassName": STORAGE_CLASS, "persistentVolumeReclaimPolicy": "Delete",
            "hostPath": {"path": format!("/tmp/bench_pv/{pv_name}")},
            "claimRef": {"kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": ns, "name": name,
                         "uid": claim.uid(), "resourceVersion": claim.resource_version()}
        }
    }))
    .expect("volume");
    let pp = PatchParams::default();
    if volumes.create(&PostParams::default(), &pv).await.is_err() {
        return;
    }
    let _ = volumes
        .patch_status(&pv_name, &pp, &Patch::Merge(json!({"status": {"phase": "Bound"}})))
        .await;
    let _ = claims
        .patch(
            &name,
            &pp,
            &Patch::Merge(json!({
                "metadata": {"annotations": {"pv.kubernetes.io/bind-completed": "yes",
                                             "pv.kubernetes.io/bound-by-controller": "yes"}},
                "spec": {"volumeName": pv_name}
            })),
        )
        .await;
    let _ = claims
        .patch_status(
            &name,
            &pp,
            &Patch::Merge(json!({"status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"],
                                            "capacity": {"storage": "1Gi"}}})),
        )
        .await;
}

fn model(name: &str) -> MLModel {
    serde_json::from_value(json!({
        "apiVersion": "oda.tmforum.org/v1beta1", "kind": "MLModel",
        "metadata": {"name": name},
        "spec": {"modelURL": format!("https://models.example.com/{name}.tar.gz"),
                 "storage": {"storageClassName": STORAGE_CLASS}}
    }))
    .expect("model")
}

/// Watches the namespace's Jobs, Deployments and models, recording when each model's Job was
/// created and completed, its Deployment created and the model Ready.
struct Observer {
    job_created: Seen,
    job_completed: Seen,
    deployment_created: Seen,
    ready: Seen,
}

impl Observer {
    fn start(ns: &support::TestNamespace) -> Self {
        let this = Self {
            job_created: Arc::default(),
            job_completed: Arc::default(),
            deployment_created: Arc::default(),
            ready: Arc::default(),
        };
        let (created, completed) = (this.job_created.clone(), this.job_completed.clone());
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
        let created = this.deployment_created.clone();
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
        let ready = this.ready.clone();
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
        this
    }
}

/// Creates `count` models named `<prefix>-<i>`, 32 at a time; returns when each was sent.
async fn create_models(models: &Api<MLModel>, prefix: &str, count: usize) -> HashMap<String, Instant> {
    let applied: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    futures::stream::iter(0..count)
        .for_each_concurrent(32, |i| {
            let (models, applied) = (models.clone(), applied.clone());
            async move {
                let name = format!("{prefix}-{i}");
                applied.lock().unwrap().insert(name.clone(), Instant::now());
                models
                    .create(&PostParams::default(), &model(&name))
                    .await
                    .expect("create");
            }
        })
        .await;
    applied.lock().unwrap().clone()
}

fn diff(later: &Seen, earlier: &HashMap<String, Instant>) -> Vec<Duration> {
    let later = later.lock().unwrap();
    let mut xs: Vec<Duration> = earlier
        .iter()
        .filter_map(|(k, t0)| later.get(k).map(|t1| t1.saturating_duration_since(*t0)))
        .collect();
    xs.sort();
    xs
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// Waits until `done`, at most `bound`; returns how long that took, or `None` past the bound.
async fn wait_bounded(bound: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() >= bound {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some(start.elapsed())
}

/// Models applied one at a time after the burst, at each pace, for the latency of a single
/// apply.
const PACED_MODELS: usize = 100;
/// The paces of those applies, each with the prefix of its models' names: a steady stream, then
/// a brisk one. Each model's rollout costs the test bed's control plane about 50 writes (the
/// operator's, the controllers', the scheduler's, kwok's and its volume's); five a second keep
/// a 2-core machine's CPU nearly busy, so that row shows the API server's queue as well.
const PACES: [(Duration, &str); 2] = [
    (Duration::from_secs(1), "steady"),
    (Duration::from_millis(200), "paced"),
];

/// What the paced applies measured, each sorted.
struct Paced {
    /// Apply -> Job created, per model.
    to_job: Vec<Duration>,
    /// How long the API server took to answer each create of a model: a write like each of the
    /// operator's, so its tail is the test bed's share of the figure above.
    create: Vec<Duration>,
}

/// Applies `count` models named `<prefix>-<i>`, one `every` so long.
async fn apply_paced(models: &Api<MLModel>, observer: &Observer, prefix: &str, every: Duration, count: usize) -> Paced {
    let mut applied = HashMap::new();
    let mut create = Vec::with_capacity(count);
    for i in 0..count {
        let name = format!("{prefix}-{i}");
        let at = Instant::now();
        applied.insert(name.clone(), at);
        models
            .create(&PostParams::default(), &model(&name))
            .await
            .expect("create");
        create.push(at.elapsed());
        tokio::time::sleep(every).await;
    }
    create.sort();
    wait_until("a Job for every paced model", Duration::from_secs(600), || {
        let jobs = observer.job_created.lock().unwrap();
        applied.keys().all(|name| jobs.contains_key(name))
    })
    .await;
    Paced {
        to_job: diff(&observer.job_created, &applied),
        create,
    }
}

/// How long a model applied after a restart or takeover is waited for. (With thousands of
/// models still rolling out, it takes its turn behind theirs.)
const ACT_BOUND: Duration = Duration::from_secs(600);

/// Applies one model and returns how long until its download Job was created, as a figure
/// (or that there was none within [`ACT_BOUND`]).
async fn act_on_new_model(models: &Api<MLModel>, observer: &Observer, name: &str) -> String {
    let applied = Instant::now();
    models
        .create(&PostParams::default(), &model(name))
        .await
        .expect("create");
    let seen = wait_bounded(ACT_BOUND, || observer.job_created.lock().unwrap().contains_key(name)).await;
    match seen {
        Some(_) => ms(observer.job_created.lock().unwrap()[name].saturating_duration_since(applied)),
        None => format!("no Job within {ACT_BOUND:?}"),
    }
}

fn start_operator(identity: &str, port: u16, leader: bool) -> operator::Operator {
    let addr = format!("127.0.0.1:{port}");
    let mut env = vec![
        (
            "RUST_LOG",
            "warn,mlmodel_operator::operator=info,mlmodel_operator::actors::supervisor=info",
        ),
        ("METRICS_ADDR", addr.as_str()),
        ("RESYNC_SECONDS", "300"),
    ];
    if let Some(jaeger) = &support::cluster().jaeger {
        env.extend([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", jaeger.otlp_grpc.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ]);
    }
    if leader {
        env.extend([("LEADER_ELECT", "true"), ("LEASE_NAME", LEASE)]);
    }
    operator::start(identity, &env)
}

/// Waits until the operator on `port` runs `count` actors; returns how long that took.
async fn actors_back(port: u16, count: usize) -> Duration {
    wait_until("every actor back", Duration::from_secs(600), || {
        metric(port, "mlmodel_actors_alive") >= count as f64
    })
    .await
}

/// The test bed's controller-manager and scheduler client limits during the benchmark (their
/// defaults, 20 and 50 requests per second, would queue the pods of thousands of models).
const TEST_BED_QPS: (&str, &str) = ("300", "600");

fn main() {
    for (var, value) in [("KUBE_API_QPS", TEST_BED_QPS.0), ("KUBE_API_BURST", TEST_BED_QPS.1)] {
        if std::env::var_os(var).is_none() {
            // SAFETY: no other thread exists yet; `cluster.sh` reads them when it starts.
            unsafe { std::env::set_var(var, value) };
        }
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(bench());
}

async fn bench() {
    let count: usize = std::env::var("BENCH_MODELS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let traces = std::env::var_os("BENCH_TRACES").is_some();
    let ready_bound = Duration::from_secs(
        std::env::var("BENCH_READY_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3600),
    );
    if traces {
        support::jaeger_cluster();
    }
    let client = support::client().await;
    add_nodes(&client, 2 * (count + PACES.len() * PACED_MODELS) + 1000).await;
    let ns = support::namespace("bench").await;
    bind_claims_of(client.clone(), ns.name.clone()).await;
    let observer = Observer::start(&ns);
    let models: Api<MLModel> = ns.api();
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |k: &str, v: String| {
        println!("  {k:<58} {v}");
        rows.push((k.to_owned(), v));
    };
    println!("mlmodel-operator benchmark: {count} models");

    // 1. A burst of models on a fresh operator.
    let port = free_port();
    let mut op = start_operator("bench-a", port, false);
    op.wait_ready(Duration::from_secs(120));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = rss_kib(op.pid());
    let sampler = RssSampler::start(op.pid());
    // Warm-up, not measured: the API server builds its server-side-apply type models and the
    // operator its connections on first use.
    act_on_new_model(&models, &observer, "warmup").await;
    wait_until("warm-up Ready", Duration::from_secs(300), || {
        observer.ready.lock().unwrap().contains_key("warmup")
    })
    .await;
    let requests_before = metric(port, "mlmodel_api_requests_total");

    let burst = Instant::now();
    let applied = create_models(&models, "bench", count).await;
    let created_in = burst.elapsed();
    let all_ready = wait_bounded(ready_bound, || observer.ready.lock().unwrap().len() > count).await;
    let ready_count = observer.ready.lock().unwrap().len() - 1;
    let requests = metric(port, "mlmodel_api_requests_total") - requests_before;
    let peak = sampler.peak();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let settled = rss_kib(op.pid());
    let idle_before = metric(port, "mlmodel_api_requests_total");
    tokio::time::sleep(Duration::from_secs(60)).await;
    let idle_per_minute = metric(port, "mlmodel_api_requests_total") - idle_before;
    // One model at a time once the burst is done (while it still rolls out, a new model waits
    // its turn behind it, which the burst figures already show).
    let mut paced = Vec::new();
    if all_ready.is_some() {
        for (every, prefix) in PACES {
            paced.push(apply_paced(&models, &observer, prefix, every, PACED_MODELS).await);
        }
    }
    let present = count + 1 + paced.iter().map(|p| p.to_job.len()).sum::<usize>();

    let completed: HashMap<String, Instant> = observer.job_completed.lock().unwrap().clone();
    let to_job = diff(&observer.job_created, &applied);
    let to_deployment = diff(&observer.deployment_created, &completed);
    let p50_p99 = |xs: &[Duration]| format!("{} / {}", ms(percentile(xs, 0.5)), ms(percentile(xs, 0.99)));
    // Past the bound, the figures that need every model Ready are those of the models so far.
    let so_far = match all_ready {
        Some(_) => String::new(),
        None => format!(" [{ready_count} of {count} Ready]"),
    };
    row("operator RSS idle (no model)", mib(idle_rss));
    row("operator RSS peak", mib(Some(peak)));
    row(
        &format!("operator RSS settled (20 s after all Ready){so_far}"),
        mib(settled),
    );
    row("apply -> Job created p50 / p99 (the burst)", p50_p99(&to_job));
    for (i, (every, _)) in PACES.into_iter().enumerate() {
        let measured = paced.get(i);
        row(
            &format!("apply -> Job created p50 / p99 ({PACED_MODELS} more, one every {every:?})"),
            measured.map_or("not measured (the burst was still rolling out)".into(), |p| {
                p50_p99(&p.to_job)
            }),
        );
        row(
            "the API server's answer to each of those creates p50 / p99",
            measured.map_or("not measured".into(), |p| p50_p99(&p.create)),
        );
    }
    row("Job complete -> Deployment created p50 / p99", p50_p99(&to_deployment));
    row(
        "models created by the benchmark per second (32 at a time)",
        format!("{:.0}", count as f64 / created_in.as_secs_f64()),
    );
    row(
        "all Ready after the first apply",
        match all_ready {
            Some(t) => format!("{:.1} s", t.as_secs_f64()),
            None => format!("{ready_count} of {count} within {ready_bound:?}"),
        },
    );
    row(
        &format!("API requests per model to Ready (operator writes){so_far}"),
        format!("{:.1}", requests / count as f64),
    );
    row(
        &format!("API requests per minute when idle (operator writes){so_far}"),
        format!("{idle_per_minute:.0}"),
    );

    if traces {
        // The same burst again with the collector gone: export must not slow a rollout.
        let with_jaeger = diff(&observer.ready, &applied);
        let _stopped = support::kill_component(&support::cluster().state_dir, "jaeger");
        let applied = create_models(&models, "nojaeger", count).await;
        wait_until("every model Ready without Jaeger", Duration::from_secs(3600), || {
            let ready = observer.ready.lock().unwrap();
            applied.keys().all(|name| ready.contains_key(name))
        })
        .await;
        let without_jaeger = diff(&observer.ready, &applied);
        row("apply -> Ready p50, Jaeger running", ms(percentile(&with_jaeger, 0.5)));
        row(
            "apply -> Ready p50, Jaeger killed",
            ms(percentile(&without_jaeger, 0.5)),
        );
        row(
            "spans dropped (Jaeger killed)",
            format!("{}", metric(port, "mlmodel_trace_spans_dropped_total")),
        );
        op.kill();
        return;
    }

    if std::env::var_os("BENCH_BURST_ONLY").is_some() {
        op.kill();
        return;
    }

    // 2. SIGKILL, then a new process.
    op.kill();
    drop(sampler);
    let port = free_port();
    let started = Instant::now();
    let op = start_operator("bench-b", port, false);
    // A new process lists everything at once and starts every actor: its own peak.
    let restart_sampler = RssSampler::start(op.pid());
    op.wait_ready(Duration::from_secs(600));
    let synced = started.elapsed();
    let back = actors_back(port, present).await + synced;
    row(
        "restart: start -> caches synced",
        format!("{:.2} s", synced.as_secs_f64()),
    );
    row(
        "restart: start -> every actor back",
        format!("{:.2} s", back.as_secs_f64()),
    );
    let react = act_on_new_model(&models, &observer, "after-restart").await;
    row("restart: apply right after sync -> Job created", react);
    row(
        "restart: RSS peak of the new process",
        mib(Some(restart_sampler.peak())),
    );
    drop(restart_sampler);
    drop(op);

    // 3. Leader failover: two replicas, the leader SIGKILLed, then a graceful handover.
    let leases: Api<Lease> = Api::namespaced(client.clone(), operator::OPERATOR_NAMESPACE);
    let holder = |leases: Api<Lease>| async move {
        leases
            .get_opt(LEASE)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
            .filter(|h| !h.is_empty())
    };
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = start_operator("bench-leader-a", port_a, true);
    a.wait_ready(Duration::from_secs(600));
    let start = Instant::now();
    while holder(leases.clone()).await.as_deref() != Some("bench-leader-a") {
        assert!(start.elapsed() < Duration::from_secs(120), "bench-leader-a never led");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    actors_back(port_a, present + 1).await;
    let mut b = start_operator("bench-leader-b", port_b, true);
    b.wait_ready(Duration::from_secs(600));
    a.kill();
    let killed = Instant::now();
    while holder(leases.clone()).await.as_deref() != Some("bench-leader-b") {
        assert!(
            killed.elapsed() < Duration::from_secs(120),
            "bench-leader-b never took over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = killed.elapsed();
    let back = actors_back(port_b, present + 1).await;
    row(
        "failover: leader SIGKILLed -> lease taken (lease 15 s)",
        format!("{:.2} s", took.as_secs_f64()),
    );
    row(
        "failover: lease taken -> every actor back",
        format!("{:.2} s", back.as_secs_f64()),
    );
    let react = act_on_new_model(&models, &observer, "after-failover").await;
    row("failover: apply after takeover -> Job created", react);
    let mut c = start_operator("bench-leader-c", port_a, true);
    c.wait_ready(Duration::from_secs(600));
    b.signal("TERM");
    let released = Instant::now();
    while holder(leases.clone()).await.as_deref() != Some("bench-leader-c") {
        assert!(
            released.elapsed() < Duration::from_secs(120),
            "bench-leader-c never took over"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    row(
        "handover: leader SIGTERMed -> lease taken by the standby",
        ms(released.elapsed()),
    );
    let _ = b.terminate(Duration::from_secs(60));
    c.kill();

    println!();
    println!("| {count} models | |");
    println!("| --- | --- |");
    for (k, v) in &rows {
        println!("| {k} | {v} |");
    }
}

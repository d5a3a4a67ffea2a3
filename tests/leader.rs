//! Several operator replicas behind leader election: exactly one acts at a time, a standby
//! takes over after SIGKILL and after SIGTERM, and a paused leader never writes after it lost
//! the lease.
//!
//! One test in this binary: the scenarios share the operator processes and must not overlap
//! with other operators acting on the same models.

mod kubelet;
mod operator;
mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;
use mlmodel_operator::api::{MLModel, Phase};
use operator::Operator;
use support::TestNamespace;

const TIMEOUT: Duration = Duration::from_secs(90);
const LEASE: &str = "mlmodel-operator-test";

fn lease_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("LEADER_ELECT", "true"),
        ("LEASE_NAME", LEASE),
        ("LEASE_DURATION_SECONDS", "4"),
        ("LEASE_RENEW_DEADLINE_SECONDS", "3"),
        ("LEASE_RETRY_PERIOD_SECONDS", "1"),
    ]
}

fn start(identity: &str) -> Operator {
    let op = operator::start(identity, &lease_env());
    op.wait_ready(TIMEOUT);
    op
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt(LEASE)
        .await
        .ok()??
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

/// Waits until the lease is held by one of `candidates`; returns it and how long it took.
async fn wait_for_holder(leases: &Api<Lease>, candidates: &[&str], not: Option<&str>) -> (String, Duration) {
    let start = Instant::now();
    loop {
        if let Some(h) = holder(leases).await
            && candidates.contains(&h.as_str())
            && Some(h.as_str()) != not
        {
            return (h, start.elapsed());
        }
        assert!(start.elapsed() < TIMEOUT, "no leader among {candidates:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn yaml(name: &str, url: &str) -> String {
    format!("apiVersion: oda.tmforum.org/v1beta1\nkind: MLModel\nmetadata:\n  name: {name}\nspec:\n  modelURL: {url}\n")
}

async fn wait_phase(ns: &TestNamespace, name: &str, phase: Phase) {
    support::wait_for(&ns.api::<MLModel>(), name, TIMEOUT, |m| {
        m.status.as_ref().and_then(|s| s.phase) == Some(phase)
    })
    .await;
}

/// Event reporters (the replicas that wrote Events) for the namespace, with event times.
async fn reporters(ns: &TestNamespace) -> Vec<(String, k8s_openapi::jiff::Timestamp)> {
    let events = ns
        .api::<Event>()
        .list(&ListParams::default())
        .await
        .expect("events")
        .items;
    events
        .into_iter()
        .filter(|e| e.reporting_controller.as_deref() == Some("mlmodel-operator"))
        .map(|e| {
            let at = e
                .event_time
                .map(|t| t.0)
                .or(e.metadata.creation_timestamp.map(|t| t.0))
                .unwrap_or_default();
            (e.reporting_instance.unwrap_or_default(), at)
        })
        .collect()
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

#[tokio::test]
async fn one_replica_acts_and_standbys_take_over_safely() {
    let ns = support::namespace("leader").await;
    let leases: Api<Lease> = Api::namespaced(ns.client.clone(), operator::OPERATOR_NAMESPACE);
    let mut ops: Vec<Operator> = ["a", "b", "c"].iter().map(|i| start(i)).collect();
    let (leader, _) = wait_for_holder(&leases, &["a", "b", "c"], None).await;

    // Only the leader writes: every Event comes from it, and only it supervises.
    for i in 0..5 {
        ns.apply_yaml(&yaml(&format!("first-{i}"), "https://models.example.com/m.tar.gz"));
    }
    for i in 0..5 {
        wait_phase(&ns, &format!("first-{i}"), Phase::Ready).await;
    }
    let writers: std::collections::BTreeSet<String> = reporters(&ns).await.into_iter().map(|r| r.0).collect();
    assert_eq!(
        writers.into_iter().collect::<Vec<_>>(),
        vec![leader.clone()],
        "only the leader writes"
    );
    for op in &ops {
        let supervises = op.logs().contains("leading: supervising every model");
        assert_eq!(
            supervises,
            op.identity == leader,
            "{} supervises only if it leads",
            op.identity
        );
    }

    // SIGKILL the leader mid-rollout: a standby takes over and finishes every model once.
    for i in 0..3 {
        ns.apply_yaml(&yaml(&format!("held-{i}"), kubelet::HELD_URL));
    }
    for i in 0..3 {
        wait_phase(&ns, &format!("held-{i}"), Phase::Downloading).await;
    }
    let idx = ops.iter().position(|o| o.identity == leader).unwrap();
    let mut killed = ops.remove(idx);
    killed.kill();
    let others: Vec<&str> = ops.iter().map(|o| o.identity.as_str()).collect();
    let (second, takeover) = wait_for_holder(&leases, &others, Some(&leader)).await;
    eprintln!("takeover after SIGKILL: {takeover:?} (lease 4 s, renew deadline 3 s, retry 1 s)");
    let pods: Api<Pod> = ns.api();
    for i in 0..3 {
        let selector = format!("mlmodel.oda.tmforum.org/name=held-{i},app.kubernetes.io/component=download");
        for pod in kubelet::pods(&pods, &selector, 1).await {
            kubelet::terminated(&pods, &pod, 0, "").await;
        }
    }
    for i in 0..3 {
        wait_phase(&ns, &format!("held-{i}"), Phase::Ready).await;
    }
    let jobs = ns.api::<Job>().list(&ListParams::default()).await.unwrap().items.len();
    assert_eq!(jobs, 8, "one Job per model, no duplicate after the takeover");

    // SIGTERM the leader: it stops its actors, releases the lease, the standby takes over.
    let mut handovers = Vec::new();
    let idx = ops.iter().position(|o| o.identity == second).unwrap();
    let mut stopped = ops.remove(idx);
    let sent = Instant::now();
    stopped.signal("TERM");
    let remaining = ops[0].identity.clone();
    let (third, _) = wait_for_holder(&leases, &[remaining.as_str()], None).await;
    handovers.push(sent.elapsed());
    stopped.terminate(Duration::from_secs(20));
    assert!(stopped.logs().contains("released the lease"), "{}", stopped.logs());
    // Two more handovers, between fresh replicas, for a median.
    let mut current = ops.remove(0);
    for name in ["d", "e"] {
        let standby = start(name);
        let sent = Instant::now();
        current.signal("TERM");
        wait_for_holder(&leases, &[name], None).await;
        handovers.push(sent.elapsed());
        current.terminate(Duration::from_secs(20));
        current = standby;
    }
    eprintln!(
        "handover after SIGTERM: {handovers:?}, median {:?}",
        median(handovers.clone())
    );
    let _ = third;

    // A leader that cannot renew (paused past the renew deadline) stops writing before a
    // standby takes over, and writes nothing after it resumes.
    let standby = start("f");
    let paused_id = current.identity.clone();
    current.signal("STOP");
    let (new_leader, took) = wait_for_holder(&leases, &["f"], None).await;
    eprintln!("takeover from a paused leader: {took:?}");
    let taken_at = k8s_openapi::jiff::Timestamp::now();
    ns.apply_yaml(&yaml("after-pause", "https://models.example.com/p.tar.gz"));
    current.signal("CONT");
    wait_phase(&ns, "after-pause", Phase::Ready).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let late: Vec<_> = reporters(&ns)
        .await
        .into_iter()
        .filter(|(who, at)| *who == paused_id && *at > taken_at)
        .collect();
    assert!(
        late.is_empty(),
        "the paused leader wrote after losing the lease: {late:?}"
    );
    assert!(current.logs().contains("lost leadership"), "{}", current.logs());
    assert_eq!(new_leader, "f");
    drop(standby);
}

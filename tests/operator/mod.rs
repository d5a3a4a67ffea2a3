//! Runs the real operator binary against the test cluster, under the ServiceAccount and RBAC
//! from `deploy/` (never as admin), so a missing permission fails a test.
//!
//! Use from a test binary with `mod support; mod operator;`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kube::config::Kubeconfig;

use crate::support;

/// Namespace of the operator's own objects (ServiceAccount, Lease).
pub const OPERATOR_NAMESPACE: &str = "mlmodel-system";

static INSTALLED: OnceLock<PathBuf> = OnceLock::new();

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Installs the CRD, the operator's RBAC and the managed-only admission policy of
/// `deploy/policy` (once per test binary) and returns a kubeconfig that authenticates as the
/// operator's ServiceAccount: every operator the tests start runs with the rights a
/// cluster-wide install gives it, and under the policy.
pub fn install() -> &'static Path {
    INSTALLED.get_or_init(|| {
        let cluster = support::cluster();
        let deploy = repo().join("deploy");
        for path in ["crd/mlmodels.yaml", "rbac/namespace.yaml", "rbac/rbac.yaml"] {
            cluster.kubectl_ok(&["apply", "--server-side", "-f", &deploy.join(path).to_string_lossy()]);
        }
        cluster.kubectl_ok(&["apply", "-k", &deploy.join("policy").to_string_lossy()]);
        wait_for_crd();
        let kubeconfig = service_account_kubeconfig();
        wait_for_policy(&kubeconfig);
        kubeconfig
    })
}

/// Waits until the API server enforces the managed-only policy (policies load
/// asynchronously): a dry-run create of an unlabelled Service as the operator is denied.
fn wait_for_policy(kubeconfig: &Path) {
    let cluster = support::cluster();
    let kubectl = cluster.bin_dir.join("kubectl");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new(&kubectl)
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args([
                "-n",
                OPERATOR_NAMESPACE,
                "create",
                "service",
                "clusterip",
                "policy-probe",
            ])
            .args(["--tcp=80:80", "--dry-run=server", "-o", "name"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run kubectl: {e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("mlmodel-operator-managed-only") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the managed-only policy is not enforced after 60s: {stderr}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the MLModel CRD is served.
pub fn wait_for_crd() {
    if let Err(message) = support::cluster().wait_crd_established("mlmodels.oda.tmforum.org", Duration::from_secs(30)) {
        panic!("{message}");
    }
}

/// Writes a kubeconfig that authenticates with a token of the operator's ServiceAccount
/// (which must exist) and returns its path.
pub fn service_account_kubeconfig() -> PathBuf {
    let cluster = support::cluster();
    let token = cluster.kubectl_ok(&[
        "create",
        "token",
        "mlmodel-operator",
        "-n",
        OPERATOR_NAMESPACE,
        "--duration=24h",
    ]);
    let mut config = match Kubeconfig::read_from(&cluster.kubeconfig) {
        Ok(c) => c,
        Err(e) => panic!("cannot read {}: {e}", cluster.kubeconfig.display()),
    };
    for auth in config.auth_infos.iter_mut() {
        if let Some(info) = auth.auth_info.as_mut() {
            info.token = Some(token.trim().to_owned().into());
        }
    }
    let path = cluster.state_dir.join("operator.kubeconfig");
    let yaml = serde_yaml::to_string(&config).unwrap_or_else(|e| panic!("cannot encode kubeconfig: {e}"));
    std::fs::write(&path, yaml).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

/// One operator process.
pub struct Operator {
    child: Child,
    /// Its log file.
    pub log: PathBuf,
    /// Its identity (Lease holder, Event reporter).
    pub identity: String,
}

/// Starts an operator with the given extra environment, with the RBAC of [`install`].
pub fn start(identity: &str, env: &[(&str, &str)]) -> Operator {
    start_with(install(), identity, env)
}

/// Starts an operator that authenticates with `kubeconfig`.
pub fn start_with(kubeconfig: &Path, identity: &str, env: &[(&str, &str)]) -> Operator {
    let cluster = support::cluster();
    let log = cluster
        .state_dir
        .join("logs")
        .join(format!("operator-{identity}-{}.log", rand::random::<u32>()));
    let file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
    let err = file.try_clone().unwrap_or_else(|e| panic!("cannot dup log file: {e}"));
    // MLMODEL_OPERATOR_BIN runs another build of the operator (the benchmark compares one).
    let bin = std::env::var_os("MLMODEL_OPERATOR_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_mlmodel-operator").into());
    let mut cmd = Command::new(bin);
    cmd.arg("run")
        .env("KUBECONFIG", kubeconfig)
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("POD_NAME", identity)
        .env("POD_NAMESPACE", OPERATOR_NAMESPACE)
        .env("RUST_LOG", "info,mlmodel_operator=debug")
        // Hours: a test passes because no event was lost, never because a resync covered it.
        .env("RESYNC_SECONDS", "14400")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start the operator: {e}"));
    reap_with_test_process(child.id());
    Operator {
        child,
        log,
        identity: identity.to_owned(),
    }
}

/// Kills `pid` when this test process exits, however it exits.
fn reap_with_test_process(pid: u32) {
    let script = "tail --pid=\"$1\" -f /dev/null; kill -9 \"$2\" 2>/dev/null || true";
    let _ = Command::new("setsid")
        .args([
            "bash",
            "-c",
            script,
            "reaper",
            &std::process::id().to_string(),
            &pid.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

/// Failure thresholds short enough for tests.
pub const SHORT_THRESHOLDS: &[(&str, &str)] = &[
    ("UNSCHEDULABLE_GRACE_SECONDS", "5"),
    ("IMAGE_PULL_GRACE_SECONDS", "3"),
    ("STORAGE_GRACE_SECONDS", "5"),
    ("CRASH_LOOP_RESTARTS", "3"),
    ("FORCE_DELETE_AFTER_SECONDS", "20"),
    ("MAX_ACTOR_RESTARTS", "2"),
    ("ACTOR_RESTART_WINDOW_SECONDS", "120"),
];

/// The operator shared by every test of a binary, started on first use.
pub fn shared() -> &'static Operator {
    static SHARED: OnceLock<Operator> = OnceLock::new();
    SHARED.get_or_init(|| {
        // On a cluster with a real node, the operator (and the download Jobs it creates)
        // export their traces to the cluster's Jaeger.
        let mut env = SHORT_THRESHOLDS.to_vec();
        if let Some(node) = &support::cluster().node {
            env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", node.jaeger_otlp.as_str()));
            env.push(("OTEL_BSP_SCHEDULE_DELAY", "200"));
        }
        let op = start("shared", &env);
        op.wait_ready(Duration::from_secs(60));
        op
    })
}

impl Operator {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until its watches are synced.
    pub fn wait_ready(&self, timeout: Duration) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.logs().contains("watches synced") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "operator {} not ready after {timeout:?}; log:\n{}",
            self.identity,
            self.logs()
        );
    }

    /// SIGKILL, as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (e.g. "STOP", "CONT", "TERM").
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "kill -{signal} {} failed",
            self.pid()
        );
    }

    /// SIGTERM and wait for the exit; returns how long the exit took.
    pub fn terminate(&mut self, timeout: Duration) -> Duration {
        let start = Instant::now();
        self.signal("TERM");
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(
                    status.success(),
                    "operator exited with {status} after SIGTERM; log:\n{}",
                    self.logs()
                );
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "operator did not exit within {timeout:?} of SIGTERM; log:\n{}",
            self.logs()
        );
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

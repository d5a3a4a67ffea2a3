//! Shared support for the integration tests: a local Kubernetes control plane started once
//! per test binary (`tests/cluster/cluster.sh`), one namespace per test, and wait helpers.
//!
//! Use it from a test binary with `mod support;`.
//!
//! The cluster is started on first use and torn down by the script's reaper as soon as the
//! test binary exits (also when it is killed). Set `MLMODEL_TEST_CLUSTER=<state-dir>` to
//! reuse a cluster already started with `tests/cluster/cluster.sh up <state-dir>`.
//!
//! Tests whose pods must really run ask for [`node_cluster`] (or [`node_namespace`]) first:
//! a cluster with a real node. Only one real node can run per machine, so the test command
//! starts one and names it in `MLMODEL_TEST_NODE_CLUSTER`; without it the binary starts its
//! own with `up --real-node`, which fails at once if another real node runs.
//!
//! Tests that read traces ask for [`jaeger_cluster`] first: a kwok cluster with a Jaeger
//! (`up --jaeger`), its addresses in [`TestCluster::jaeger`].
#![allow(dead_code)]

pub mod iris;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Label that makes kwok fail a pod (phase Failed, containers terminated with exit code 1,
/// reason `Error`).
pub const FAIL_LABEL: &str = "kwok.x-k8s.io/fail";
/// Annotation whose value kwok writes to `state.terminated.message` of a failed pod.
pub const TERMINATION_MESSAGE_ANNOTATION: &str = "kwok.x-k8s.io/termination-message";
/// Annotation whose value kwok writes to `state.terminated.exitCode` of a failed pod.
pub const EXIT_CODE_ANNOTATION: &str = "kwok.x-k8s.io/exit-code";
/// Names of the fake nodes kwok keeps Ready.
pub const NODES: [&str; 2] = ["kwok-node-0", "kwok-node-1"];

/// A running local cluster.
#[derive(Debug)]
pub struct TestCluster {
    /// Admin kubeconfig (token in group `system:masters`).
    pub kubeconfig: PathBuf,
    /// Directory holding `kubectl`, `kube-apiserver`, `etcd`, `kwok`, ...
    pub bin_dir: PathBuf,
    /// State directory of the cluster (logs in `logs/`).
    pub state_dir: PathBuf,
    /// `https://<address>:<port>`
    pub apiserver_url: String,
    /// The real node, when the cluster has one.
    pub node: Option<RealNode>,
    /// Jaeger, when the cluster has one (`--jaeger`, or a real node).
    pub jaeger: Option<Jaeger>,
}

/// The Jaeger of a cluster started with `--jaeger` (or `--real-node`).
#[derive(Debug, Clone)]
pub struct Jaeger {
    /// `http://<address>:<port>` of its OTLP gRPC receiver.
    pub otlp_grpc: String,
    /// `http://<address>:<port>` of its OTLP HTTP receiver.
    pub otlp_http: String,
    /// `http://127.0.0.1:<port>` of its query API (`/api/traces`, `/api/v3/...`).
    pub query_url: String,
    /// Its pid file in the cluster's state dir (read it to stop Jaeger mid-test).
    pub pid_file: PathBuf,
}

/// The real node of a cluster started with `--real-node`.
#[derive(Debug, Clone)]
pub struct RealNode {
    /// Node name (its pods really run; kwok nodes are tainted away from them).
    pub name: String,
    /// The host's address on the node's bridge, where pods reach the API server and the store.
    pub ip: String,
    /// Directory served by the model store.
    pub store_dir: PathBuf,
    /// `http://<ip>:<port>` of the model store, reachable from the host and from pods.
    pub store_url: String,
    /// The S3-compatible store (s3s-fs): one directory per bucket under `s3_dir`.
    pub s3: S3Store,
    /// Jaeger's OTLP gRPC endpoint, reachable from the host and from pods.
    pub jaeger_otlp: String,
    /// Jaeger's query API (`/api/traces`, `/api/v3/...`), on loopback.
    pub jaeger_query: String,
}

/// The real node's S3-compatible model store, which checks signatures against one key pair.
#[derive(Debug, Clone)]
pub struct S3Store {
    /// `http://<ip>:<port>`, reachable from the host and from pods.
    pub url: String,
    /// Its root: bucket `b`, key `k` is the file `<dir>/b/k`.
    pub dir: PathBuf,
    /// The access key it accepts.
    pub access_key: String,
    /// The secret key it accepts.
    pub secret_key: String,
}

static CLUSTER: OnceLock<Result<TestCluster, String>> = OnceLock::new();

/// The cluster shared by every test of this binary, started on first call.
///
/// Panics with the start-up script's output when the cluster cannot start (in every test
/// that asks for it; the start is attempted once).
pub fn cluster() -> &'static TestCluster {
    let cluster = CLUSTER.get_or_init(|| match std::env::var_os("MLMODEL_TEST_CLUSTER") {
        Some(dir) if !dir.is_empty() => TestCluster::existing(PathBuf::from(dir)),
        _ => TestCluster::start(false),
    });
    match cluster {
        Ok(cluster) => cluster,
        Err(message) => panic!("{message}"),
    }
}

/// The cluster with a real node shared by every test of this binary; call it (or
/// [`node_namespace`]) before anything else that uses the cluster.
///
/// Panics when the cluster cannot start, or when this binary already uses a cluster without a
/// real node.
pub fn node_cluster() -> &'static TestCluster {
    let cluster = CLUSTER.get_or_init(|| match std::env::var_os("MLMODEL_TEST_NODE_CLUSTER") {
        Some(dir) if !dir.is_empty() => TestCluster::existing(PathBuf::from(dir)),
        _ => TestCluster::start(true),
    });
    match cluster {
        Ok(cluster) if cluster.node.is_some() => cluster,
        Ok(cluster) => panic!(
            "this test binary already uses {}, which has no real node",
            cluster.state_dir.display()
        ),
        Err(message) => panic!("{message}"),
    }
}

/// A cluster whose API server runs with the feature `gates` given (`Name=false,...`), shared
/// by every test of this binary; call it before anything else that uses the cluster.
///
/// Panics when the cluster cannot start.
pub fn cluster_with_api_feature_gates(gates: &str) -> &'static TestCluster {
    let cluster = CLUSTER.get_or_init(|| TestCluster::start_with(&["--api-feature-gates", gates]));
    match cluster {
        Ok(cluster) => cluster,
        Err(message) => panic!("{message}"),
    }
}

/// The cluster with a Jaeger shared by every test of this binary; call it before anything
/// else that uses the cluster. `MLMODEL_TEST_CLUSTER` may name one started with `--jaeger`.
///
/// Panics when the cluster cannot start, or when this binary already uses a cluster without
/// a Jaeger.
pub fn jaeger_cluster() -> &'static TestCluster {
    let cluster = CLUSTER.get_or_init(|| match std::env::var_os("MLMODEL_TEST_CLUSTER") {
        Some(dir) if !dir.is_empty() => TestCluster::existing(PathBuf::from(dir)),
        _ => TestCluster::start_with(&["--jaeger"]),
    });
    match cluster {
        Ok(cluster) => {
            cluster.jaeger();
            cluster
        }
        Err(message) => panic!("{message}"),
    }
}

/// The Jaeger of [`jaeger_cluster`].
pub fn jaeger() -> &'static Jaeger {
    jaeger_cluster().jaeger()
}

/// The real node of [`node_cluster`].
pub fn real_node() -> &'static RealNode {
    node_cluster().node.as_ref().expect("node_cluster has a real node")
}

/// A fresh namespace in the cluster with a real node, deleted when dropped.
pub async fn node_namespace(prefix: &str, restricted: bool) -> TestNamespace {
    node_cluster();
    if restricted {
        restricted_namespace(prefix).await
    } else {
        namespace(prefix).await
    }
}

/// Admin client for the shared cluster (one per test: a client is bound to its runtime).
pub async fn client() -> Client {
    cluster().client().await
}

/// A fresh namespace in the shared cluster, deleted when dropped.
pub async fn namespace(prefix: &str) -> TestNamespace {
    TestNamespace::create(prefix, BTreeMap::new()).await
}

/// A fresh namespace enforcing the `restricted` Pod Security Standard.
pub async fn restricted_namespace(prefix: &str) -> TestNamespace {
    let labels = BTreeMap::from([("pod-security.kubernetes.io/enforce".to_owned(), "restricted".to_owned())]);
    TestNamespace::create(prefix, labels).await
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl TestCluster {
    fn start(real_node: bool) -> Result<Self, String> {
        Self::start_with(if real_node { &["--real-node"] } else { &[] })
    }

    /// Starts a cluster with `cluster.sh up` and the extra `flags`.
    fn start_with(flags: &[&str]) -> Result<Self, String> {
        let script = repo_root().join("tests/cluster/cluster.sh");
        let state_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "cluster-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let started = Instant::now();
        let mut cmd = Command::new(&script);
        cmd.arg("up")
            .arg(&state_dir)
            .arg("--watch-pid")
            .arg(std::process::id().to_string());
        cmd.args(flags);
        let output = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !output.status.success() {
            return Err(format!(
                "local test cluster failed to start ({}, after {:.1?}); state dir {}\n\
                 --- stdout ---\n{}\n--- stderr ---\n{}",
                output.status,
                started.elapsed(),
                state_dir.display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
            ));
        }
        eprintln!(
            "local test cluster up in {:.1?} (state dir {})",
            started.elapsed(),
            state_dir.display()
        );
        Self::existing(state_dir)
    }

    fn existing(state_dir: PathBuf) -> Result<Self, String> {
        let path = state_dir.join("cluster.env");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let env: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
        let get = |key: &str| {
            env.get(key)
                .map(|v| (*v).to_owned())
                .ok_or_else(|| format!("{key} missing in {}", path.display()))
        };
        let node = match env.get("REAL_NODE") {
            Some(name) => Some(RealNode {
                name: (*name).to_owned(),
                ip: get("NODE_IP")?,
                store_dir: PathBuf::from(get("MODEL_STORE_DIR")?),
                store_url: get("MODEL_STORE_URL")?,
                s3: S3Store {
                    url: get("S3_STORE_URL")?,
                    dir: PathBuf::from(get("S3_STORE_DIR")?),
                    access_key: get("S3_ACCESS_KEY")?,
                    secret_key: get("S3_SECRET_KEY")?,
                },
                jaeger_otlp: get("JAEGER_OTLP_GRPC")?,
                jaeger_query: get("JAEGER_QUERY_URL")?,
            }),
            None => None,
        };
        let jaeger = match env.get("JAEGER_QUERY_URL") {
            Some(query_url) => Some(Jaeger {
                otlp_grpc: get("JAEGER_OTLP_GRPC")?,
                otlp_http: get("JAEGER_OTLP_HTTP")?,
                query_url: (*query_url).to_owned(),
                pid_file: state_dir.join("pids/jaeger.pid"),
            }),
            None => None,
        };
        Ok(Self {
            kubeconfig: PathBuf::from(get("KUBECONFIG")?),
            bin_dir: PathBuf::from(get("BIN_DIR")?),
            apiserver_url: get("APISERVER_URL")?,
            node,
            jaeger,
            state_dir,
        })
    }

    /// The cluster's Jaeger; panics when it has none.
    pub fn jaeger(&self) -> &Jaeger {
        self.jaeger.as_ref().unwrap_or_else(|| {
            panic!(
                "the cluster in {} has no Jaeger (start it with `cluster.sh up --jaeger`)",
                self.state_dir.display()
            )
        })
    }

    /// kube client configuration for the admin identity.
    pub async fn config(&self) -> Config {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)
            .unwrap_or_else(|e| panic!("reading {}: {e}", self.kubeconfig.display()));
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .unwrap_or_else(|e| panic!("loading {}: {e}", self.kubeconfig.display()))
    }

    /// An admin client; build one per test (clients are bound to the runtime they were made on).
    pub async fn client(&self) -> Client {
        Client::try_from(self.config().await).expect("building the kube client")
    }

    /// `kubectl --kubeconfig <admin kubeconfig>`.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("kubectl"));
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd
    }

    /// Runs kubectl with `args`, panicking with its output unless it succeeds; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        run_ok(self.kubectl().args(args))
    }

    /// Waits until the CustomResourceDefinition `name` is Established. (`kubectl wait
    /// --for=condition=Established` fails at once, rather than waiting, on a definition so new
    /// that it has no conditions yet.)
    pub fn wait_crd_established(&self, name: &str, timeout: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let out = self
                .kubectl()
                .args(["get", "crd", name, "-o"])
                .arg(r#"jsonpath={.status.conditions[?(@.type=="Established")].status}"#)
                .output()
                .map_err(|e| format!("running kubectl: {e}"))?;
            let status = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if out.status.success() && status == "True" {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "crd/{name} is not Established after {timeout:?} (Established={status:?}): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `helm` (built with the cluster's components) against this cluster, its cache, config
    /// and data in the cluster's state dir.
    pub fn helm(&self) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("helm"));
        let home = self.state_dir.join("helm");
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"));
        cmd
    }

    /// Runs helm with `args`, panicking with its output unless it succeeds; returns stdout.
    pub fn helm_ok(&self, args: &[&str]) -> String {
        run_ok(self.helm().args(args))
    }

    /// `kubectl apply -f -` with `yaml` on stdin; panics unless it succeeds.
    pub fn apply_yaml(&self, namespace: Option<&str>, yaml: &str) -> String {
        let mut cmd = self.kubectl();
        if let Some(ns) = namespace {
            cmd.arg("--namespace").arg(ns);
        }
        cmd.args(["apply", "-f", "-"]);
        run_with_stdin(&mut cmd, yaml)
    }

    /// Path of a component's log (`etcd`, `kube-apiserver`, `kube-controller-manager`,
    /// `kube-scheduler`, `kwok`).
    pub fn log_path(&self, component: &str) -> PathBuf {
        self.state_dir.join("logs").join(format!("{component}.log"))
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion; panics with its output unless it succeeds. Returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", describe(cmd)));
    check_output(cmd, &out)
}

fn run_with_stdin(cmd: &mut Command, input: &str) -> String {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", describe(cmd)));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())
        .expect("writing kubectl stdin");
    let out = child.wait_with_output().expect("waiting for kubectl");
    check_output(cmd, &out)
}

fn check_output(cmd: &Command, out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{} failed ({})\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
        describe(cmd),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A namespace owned by one test; deleted (without waiting) on drop.
pub struct TestNamespace {
    pub name: String,
    pub client: Client,
    cluster: &'static TestCluster,
}

impl TestNamespace {
    async fn create(prefix: &str, labels: BTreeMap<String, String>) -> Self {
        let cluster = cluster();
        let client = cluster.client().await;
        let mut base: String = prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(50)
            .collect();
        base = base.trim_matches('-').to_owned();
        if base.is_empty() {
            base.push_str("test");
        }
        let name = format!("{base}-{:08x}", rand::random::<u32>());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        let this = Self { name, client, cluster };
        // Pods can only be created once the ServiceAccount controller made `default`.
        wait_for(
            &this.api::<ServiceAccount>(),
            "default",
            Duration::from_secs(30),
            |_| true,
        )
        .await;
        this
    }

    /// A namespaced API in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// `kubectl --kubeconfig <admin> --namespace <this>`.
    pub fn kubectl(&self) -> Command {
        let mut cmd = self.cluster.kubectl();
        cmd.arg("--namespace").arg(&self.name);
        cmd
    }

    /// `kubectl apply -f -` in this namespace; panics unless it succeeds.
    pub fn apply_yaml(&self, yaml: &str) -> String {
        self.cluster.apply_yaml(Some(&self.name), yaml)
    }
}

impl Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = self
            .cluster
            .kubectl()
            .args(["delete", "namespace", &self.name, "--wait=false"])
            .args(["--ignore-not-found", "--request-timeout=10s"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn object_ref<K: Resource<DynamicType = ()>>(api: &Api<K>, name: &str) -> String {
    let kind = K::kind(&());
    match api.namespace() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// The object as YAML for a failure message: its status first (what a failure is about), and
/// without `managedFields`, which would push everything else out of a truncated log.
fn dump<K: Serialize>(obj: &K) -> String {
    let mut value = match serde_json::to_value(obj) {
        Ok(value) => value,
        Err(e) => return format!("<unserializable: {e}>"),
    };
    if let Some(metadata) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        metadata.remove("managedFields");
    }
    let status = value.as_object_mut().and_then(|o| o.remove("status"));
    let yaml = |v: &serde_json::Value| serde_yaml::to_string(v).unwrap_or_else(|e| format!("<unserializable: {e}>"));
    match status {
        Some(status) => format!("status:\n{}{}", indent(&yaml(&status)), yaml(&value)),
        None => yaml(&value),
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}\n")).collect()
}

/// Waits until object `name` exists and satisfies `condition`; returns it.
/// Panics on timeout with the object's last state.
pub async fn wait_for<K, F>(api: &Api<K>, name: &str, timeout: Duration, condition: F) -> K
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned + Send + 'static,
    F: Fn(&K) -> bool,
{
    let what = object_ref(api, name);
    let cond = |obj: Option<&K>| obj.is_some_and(&condition);
    let waited = tokio::time::timeout(timeout, kube::runtime::wait::await_condition(api.clone(), name, cond)).await;
    match waited {
        Ok(Ok(Some(obj))) => obj,
        Ok(Ok(None)) => panic!("{what}: condition matched a missing object"),
        Ok(Err(e)) => panic!("{what}: watch failed: {e}"),
        Err(_) => {
            let last = match api.get_opt(name).await {
                Ok(Some(obj)) => dump(&obj),
                Ok(None) => "<does not exist>".to_owned(),
                Err(e) => format!("<get failed: {e}>"),
            };
            panic!("{what}: condition not met within {timeout:?}; last state:\n{last}")
        }
    }
}

/// Waits until object `name` no longer exists. Panics on timeout with the object's last state.
pub async fn wait_for_deletion<K>(api: &Api<K>, name: &str, timeout: Duration)
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned + Send + 'static,
{
    let what = object_ref(api, name);
    // `is_deleted` compares uids: with the object's own uid it waits for this very object to
    // go (and also accepts a re-created one with a new uid).
    let uid = match api.get_opt(name).await {
        Ok(Some(obj)) => obj.uid().unwrap_or_default(),
        Ok(None) => return,
        Err(e) => panic!("{what}: get failed: {e}"),
    };
    let waited = tokio::time::timeout(
        timeout,
        kube::runtime::wait::await_condition(api.clone(), name, kube::runtime::wait::conditions::is_deleted(&uid)),
    )
    .await;
    match waited {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("{what}: watch failed: {e}"),
        Err(_) => {
            let last = match api.get_opt(name).await {
                Ok(Some(obj)) => dump(&obj),
                Ok(None) => return,
                Err(e) => format!("<get failed: {e}>"),
            };
            panic!("{what}: still present after {timeout:?}; last state:\n{last}")
        }
    }
}

/// Polls `probe` every 200 ms until it returns `Some`, which is returned.
/// Panics after `timeout`, naming `what`.
pub async fn poll_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether a `status.conditions`-style list has `type_` with status `"True"`.
pub fn has_true_condition<'a, I>(conditions: I, type_: &str) -> bool
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    conditions.into_iter().any(|(t, s)| t == type_ && s == "True")
}

/// Names of the objects, for assertion messages.
pub fn names<K: ResourceExt>(objs: &[K]) -> Vec<String> {
    objs.iter().map(ResourceExt::name_any).collect()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A cluster component killed by [`kill_component`]. [`Stopped::start_again`] (or dropping
/// it) starts it again with the same command line and environment, recording the new pid
/// where `cluster.sh down` finds it.
#[derive(Debug)]
pub struct Stopped {
    pid_file: PathBuf,
    log: PathBuf,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    started: bool,
}

/// SIGKILLs the component `name` (`kube-apiserver`, `jaeger`, ...) of the cluster in
/// `state_dir` and waits until it is gone.
pub fn kill_component(state_dir: &Path, name: &str) -> Stopped {
    let pid_file = state_dir.join(format!("pids/{name}.pid"));
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", pid_file.display()))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()));
    let nul_separated = |file: &str| -> Vec<String> {
        std::fs::read(format!("/proc/{pid}/{file}"))
            .unwrap_or_else(|e| panic!("reading /proc/{pid}/{file}: {e}"))
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    };
    let argv = nul_separated("cmdline");
    let env = nul_separated("environ")
        .into_iter()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    assert!(
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success()),
        "kill -9 {pid} ({name}) failed"
    );
    let start = Instant::now();
    while alive(pid) {
        assert!(start.elapsed() < Duration::from_secs(10), "{name} did not die");
        std::thread::sleep(Duration::from_millis(20));
    }
    Stopped {
        pid_file,
        log: state_dir.join(format!("logs/{name}.log")),
        argv,
        env,
        started: false,
    }
}

impl Stopped {
    /// Starts the component again (once).
    pub fn start_again(&mut self) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.log.display()));
        // The cluster's own `down` stops the new process (by the pid recorded below), as it
        // did the first one; this process never waits for it.
        #[allow(clippy::zombie_processes)]
        let child = Command::new("setsid")
            .args(&self.argv)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("restarting {:?}: {e}", self.argv));
        std::fs::write(&self.pid_file, child.id().to_string())
            .unwrap_or_else(|e| panic!("writing {}: {e}", self.pid_file.display()));
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        self.start_again();
    }
}

/// Kills the API server, keeps it down for `outage`, and starts it again with the same
/// command line, recording the new pid where `cluster.sh down` finds it.
pub fn restart_apiserver(state_dir: &Path, outage: Duration) {
    let mut stopped = kill_component(state_dir, "kube-apiserver");
    std::thread::sleep(outage);
    stopped.start_again();
}

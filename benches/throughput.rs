//! Download throughput on the real node: the downloader (`mlmodel-operator download`, in the
//! operator's image) against `curl`, each in a pod on the same node, fetching the same
//! 256 MiB artifact from the node's model store into an `emptyDir`; five runs each,
//! interleaved, and the medians. The downloader's figure is its own `download complete`
//! line (the fetch, hashing as it goes); curl's is its `time_total`.
//!
//! `make bench` runs it. It starts a cluster with the real node in `target/bench-node`, or
//! uses the one named by `MLMODEL_BENCH_NODE_CLUSTER` (a state directory of
//! `tests/cluster/cluster.sh up --real-node`). Needs root, like the real node.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ARTIFACT_BYTES: u64 = 256 << 20;
const RUNS: usize = 5;
const POD_TIMEOUT: Duration = Duration::from_secs(180);

fn main() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let (state, own) = match std::env::var("MLMODEL_BENCH_NODE_CLUSTER") {
        Ok(dir) => (PathBuf::from(dir), false),
        Err(_) => {
            let dir = repo.join("target/bench-node");
            let _ = Command::new(repo.join("tests/cluster/cluster.sh"))
                .args(["down"])
                .arg(&dir)
                .output();
            run(Command::new(repo.join("tests/cluster/cluster.sh"))
                .arg("up")
                .arg(&dir)
                .args(["--real-node", "--watch-pid", &std::process::id().to_string()])
                .stdout(Stdio::null()));
            (dir, true)
        }
    };
    let images = repo.join("tests/cluster/images.sh");
    run(Command::new(&images).args(["build", "curl"]));
    run(Command::new(&images).args(["import", "curl"]));

    let env = cluster_env(&state);
    let kubectl = Kubectl {
        bin: PathBuf::from(&env["BIN_DIR"]).join("kubectl"),
        kubeconfig: PathBuf::from(&env["KUBECONFIG"]),
    };
    let store = PathBuf::from(&env["MODEL_STORE_DIR"]);
    let url = format!("{}/bench/artifact.bin", env["MODEL_STORE_URL"]);
    make_artifact(&store.join("bench/artifact.bin"));

    let namespace = format!("mlmodel-bench-{}", std::process::id());
    kubectl.ok(&["create", "namespace", &namespace]);
    let operator_image = format!("docker.io/library/mlmodel-operator:{}", env!("CARGO_PKG_VERSION"));
    let mut downloader = Vec::new();
    let mut curl = Vec::new();
    for i in 0..RUNS {
        let args = [
            "download".to_owned(),
            format!("--url={url}"),
            "--dest=/data".to_owned(),
            "--model-name=bench".to_owned(),
            "--version=1".to_owned(),
            "--framework=custom".to_owned(),
            "--retries=0".to_owned(),
        ];
        let logs = kubectl.run_pod(&namespace, &format!("downloader-{i}"), &operator_image, &args);
        let secs = field(&logs, "duration_ms=").map(|ms| ms / 1000.0);
        downloader.push(secs.unwrap_or_else(|| panic!("no `download complete` line in:\n{logs}")));

        let args = [
            "-sS".to_owned(),
            "-o".to_owned(),
            "/data/artifact.bin".to_owned(),
            "-w".to_owned(),
            "time_total=%{time_total}\n".to_owned(),
            url.clone(),
        ];
        let logs = kubectl.run_pod(
            &namespace,
            &format!("curl-{i}"),
            "docker.io/library/curl:bookworm",
            &args,
        );
        curl.push(field(&logs, "time_total=").unwrap_or_else(|| panic!("no time_total in:\n{logs}")));
        println!(
            "run {}: downloader {:.3}s ({:.0} MB/s), curl {:.3}s ({:.0} MB/s)",
            i + 1,
            downloader[i],
            mb_per_s(downloader[i]),
            curl[i],
            mb_per_s(curl[i])
        );
    }
    kubectl.ok(&["delete", "namespace", &namespace, "--wait=false"]);

    let (d, c) = (median(&mut downloader), median(&mut curl));
    println!(
        "download of {} MiB on the real node, median of {RUNS}: downloader {d:.3}s ({:.0} MB/s), curl {c:.3}s \
         ({:.0} MB/s); downloader/curl time ratio {:.2}",
        ARTIFACT_BYTES >> 20,
        mb_per_s(d),
        mb_per_s(c),
        d / c
    );
    if own {
        let _ = Command::new(repo.join("tests/cluster/cluster.sh"))
            .arg("down")
            .arg(&state)
            .output();
    }
}

struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg(format!("--kubeconfig={}", self.kubeconfig.display()));
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.command().args(args).output().expect("kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs one pod to completion on the real node, as the `restricted` Pod Security
    /// Standard asks, and returns its logs.
    fn run_pod(&self, namespace: &str, name: &str, image: &str, args: &[String]) -> String {
        let pod = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": name, "namespace": namespace },
            "spec": {
                "restartPolicy": "Never",
                "securityContext": {
                    "runAsNonRoot": true,
                    "runAsUser": 65532,
                    "runAsGroup": 65532,
                    "seccompProfile": { "type": "RuntimeDefault" }
                },
                "containers": [{
                    "name": "fetch",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "args": args,
                    "volumeMounts": [{ "name": "data", "mountPath": "/data" }],
                    "securityContext": {
                        "allowPrivilegeEscalation": false,
                        "capabilities": { "drop": ["ALL"] }
                    }
                }],
                "volumes": [{ "name": "data", "emptyDir": {} }]
            }
        });
        let mut child = self
            .command()
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("kubectl apply");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(pod.to_string().as_bytes())
            .expect("write the pod");
        assert!(child.wait().expect("kubectl apply").success(), "creating pod {name}");
        let started = Instant::now();
        let phase = loop {
            let phase = self.ok(&["-n", namespace, "get", "pod", name, "-o", "jsonpath={.status.phase}"]);
            if phase == "Succeeded" || phase == "Failed" {
                break phase;
            }
            assert!(started.elapsed() < POD_TIMEOUT, "pod {name} still {phase:?}");
            std::thread::sleep(Duration::from_millis(200));
        };
        let logs = self.ok(&["-n", namespace, "logs", name]);
        assert_eq!(phase, "Succeeded", "pod {name}:\n{logs}");
        logs
    }
}

fn run(command: &mut Command) {
    let status = command.status().expect("run");
    assert!(status.success(), "{command:?} failed");
}

fn cluster_env(state: &Path) -> BTreeMap<String, String> {
    let path = state.join("cluster.env");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let env: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert!(
        env.contains_key("REAL_NODE"),
        "{} is not a cluster with a real node",
        state.display()
    );
    env
}

/// Incompressible bytes (a xorshift stream), written once.
fn make_artifact(path: &Path) {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == ARTIFACT_BYTES) {
        return;
    }
    std::fs::create_dir_all(path.parent().expect("parent")).expect("store dir");
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("artifact"));
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..(ARTIFACT_BYTES >> 20) {
        for chunk in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        file.write_all(&block).expect("write artifact");
    }
    file.flush().expect("flush artifact");
}

/// The number after `key` on the line that has it.
fn field(logs: &str, key: &str) -> Option<f64> {
    let rest = &logs[logs.find(key)? + key.len()..];
    let number: String = rest
        .chars()
        .skip_while(|c| *c == '"')
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    number.parse().ok()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn mb_per_s(secs: f64) -> f64 {
    ARTIFACT_BYTES as f64 / 1e6 / secs.max(1e-9)
}

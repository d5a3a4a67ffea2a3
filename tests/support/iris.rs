//! The iris classifier the real-node tests serve: its artifact in the node's model store
//! (made by `deploy/samples/models/iris.py` in the MLServer image), its MLModel, and V2
//! inference requests through a model's Service.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use mlmodel_operator::api::{MLModel, Phase};

use super::{TestNamespace, real_node};

pub const MLSERVER: &str = "docker.io/seldonio/mlserver:1.7.1";
/// Three flowers, one of each class for the v1 model.
pub const FLOWERS: &str = "[[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3]]";

/// An artifact in the model store: its URL and sha256.
pub struct Artifact {
    pub url: String,
    pub sha256: String,
}

/// The iris classifier of `version` ("v1", "v2"), made once per test binary by
/// `deploy/samples/models/iris.py` in the model server's image and put in the model store.
pub fn artifact(version: &'static str) -> &'static Artifact {
    static V1: OnceLock<Artifact> = OnceLock::new();
    static V2: OnceLock<Artifact> = OnceLock::new();
    let cell = if version == "v1" { &V1 } else { &V2 };
    cell.get_or_init(|| {
        let node = real_node();
        let dir = node.store_dir.join("serving-tests").join(version);
        std::fs::create_dir_all(&dir).expect("store dir");
        let scripts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/samples/models");
        let out = Command::new("podman")
            .env(
                "CONTAINERS_CONF",
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cluster/images/containers.conf"),
            )
            .args(["run", "--rm", "--network=none", "--user", "0"])
            .arg("-v")
            .arg(format!("{}:/src:ro", scripts.display()))
            .arg("-v")
            .arg(format!("{}:/out", dir.display()))
            .args([MLSERVER, "python3", "/src/iris.py", "/out/model.tar.gz", version])
            .output()
            .expect("run podman");
        assert!(
            out.status.success(),
            "making the {version} artifact: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sum = Command::new("sha256sum")
            .arg(dir.join("model.tar.gz"))
            .output()
            .expect("sha256sum");
        let sha256 = String::from_utf8_lossy(&sum.stdout)
            .split_whitespace()
            .next()
            .expect("a digest")
            .to_owned();
        Artifact {
            url: format!("{}/serving-tests/{version}/model.tar.gz", node.store_url),
            sha256,
        }
    })
}

/// `host:port` of the model's Service (its ClusterIP, routed by kube-proxy).
pub async fn service_address(ns: &TestNamespace, name: &str) -> String {
    let svc = ns.api::<Service>().get(name).await.expect("the model's Service");
    let spec = svc.spec.expect("spec");
    let port = spec
        .ports
        .as_ref()
        .and_then(|p| p.first())
        .map(|p| p.port)
        .expect("a port");
    format!("{}:{port}", spec.cluster_ip.expect("a ClusterIP"))
}

/// One V2 inference request over HTTP/1.1: (status, body).
pub fn infer(address: &str, model: &str) -> std::io::Result<(u16, serde_json::Value)> {
    let body =
        format!(r#"{{"inputs": [{{"name": "flowers", "shape": [3, 4], "datatype": "FP64", "data": {FLOWERS}}}]}}"#);
    let mut stream = TcpStream::connect_timeout(&address.parse().expect("address"), Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "POST /v2/models/{model}/infer HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, payload) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let json = serde_json::from_str(payload).unwrap_or(serde_json::Value::Null);
    Ok((status, json))
}

/// The first answer of the model server through the Service. The Service routes to a pod
/// once kube-proxy has programmed the pod's endpoint, which follows the pod's readiness (and
/// so the model's Ready) by a moment. Until then a connection is refused, or, on a machine
/// whose network answers for addresses it does not know, answered by something else than
/// MLServer, whose every answer is JSON.
pub async fn answered(address: &str) -> (u16, serde_json::Value) {
    super::poll_until(
        "the model server answering through the Service",
        Duration::from_secs(30),
        || {
            let address = address.to_owned();
            async move { infer(&address, "iris").ok().filter(|(_, json)| !json.is_null()) }
        },
    )
    .await
}

/// (model_version, predictions) of a successful answer.
pub fn answer_of(json: &serde_json::Value) -> (String, Vec<i64>) {
    let version = json["model_version"].as_str().unwrap_or_default().to_owned();
    let data = json["outputs"][0]["data"]
        .as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_i64).collect())
        .unwrap_or_default();
    (version, data)
}

pub fn model_yaml(name: &str, url: &str, sha256: Option<&str>, extra: &str) -> String {
    let sha = sha256.map(|s| format!("  sha256: \"{s}\"\n")).unwrap_or_default();
    format!(
        "apiVersion: oda.tmforum.org/v1beta1\nkind: MLModel\nmetadata:\n  name: {name}\nspec:\n  \
         modelURL: {url}\n{sha}  framework: sklearn\n{extra}"
    )
}

pub fn ready_at_generation(m: &MLModel) -> bool {
    m.status.as_ref().and_then(|s| s.phase) == Some(Phase::Ready)
        && m.status.as_ref().and_then(|s| s.observed_generation) == m.metadata.generation
}

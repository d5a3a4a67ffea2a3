//! Integration tests of the model downloader against a local HTTP server.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mlmodel_operator::api::Framework;
use mlmodel_operator::download::{self, DownloadArgs, DownloadError, redact_url};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the test server answers to one request.
#[derive(Clone)]
enum Reply {
    /// 200 with the whole body.
    Ok(Vec<u8>),
    /// The status with an empty body.
    Status(u16),
    /// 200 announcing the whole length but sending only `sent` bytes, then closing.
    Truncated(Vec<u8>, usize),
    /// 200 sending the body one byte at a time, `pause` apart.
    Slow(Vec<u8>, Duration),
}

type Script = dyn Fn(usize, &str) -> Reply + Send + Sync;

/// A tiny HTTP/1.1 server: one response per connection, requests counted and recorded.
struct Server {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Server {
    async fn start(script: impl Fn(usize, &str) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let counter = Arc::clone(&hits);
        let recorded = Arc::clone(&heads);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let script = Arc::clone(&script);
                let counter = Arc::clone(&counter);
                let recorded = Arc::clone(&recorded);
                tokio::spawn(async move {
                    let _ = handle(stream, script, counter, recorded).await;
                });
            }
        });
        Self { addr, hits, heads }
    }

    /// The request lines and headers received so far.
    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn handle(
    mut stream: TcpStream,
    script: Arc<Script>,
    counter: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    heads.lock().unwrap().push(head.to_string());
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let index = counter.fetch_add(1, Ordering::SeqCst);
    let reply = script(index, &path);
    // ETag and Last-Modified: the S3 client requires them.
    let header = |status: &str, len: usize| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {len}\r\nETag: \"1\"\r\n\
             Last-Modified: Wed, 25 Nov 2026 00:00:00 GMT\r\nConnection: close\r\n\r\n"
        )
    };
    match reply {
        Reply::Ok(body) => {
            stream.write_all(header("200 OK", body.len()).as_bytes()).await?;
            stream.write_all(&body).await?;
        }
        Reply::Status(code) => {
            stream
                .write_all(header(&format!("{code} Status"), 0).as_bytes())
                .await?;
        }
        Reply::Truncated(body, sent) => {
            stream.write_all(header("200 OK", body.len()).as_bytes()).await?;
            stream.write_all(&body[..sent]).await?;
        }
        Reply::Slow(body, pause) => {
            stream.write_all(header("200 OK", body.len()).as_bytes()).await?;
            for byte in body {
                stream.write_all(&[byte]).await?;
                stream.flush().await?;
                tokio::time::sleep(pause).await;
            }
        }
    }
    stream.flush().await?;
    stream.shutdown().await
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dest: PathBuf,
    log: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("models");
        std::fs::create_dir(&dest).unwrap();
        let log = tmp.path().join("termination-log");
        Self { _tmp: tmp, dest, log }
    }

    fn args(&self, url: &str) -> DownloadArgs {
        DownloadArgs {
            url: Some(url.to_string()),
            url_env: None,
            dest: self.dest.clone(),
            model_name: "resnet".to_string(),
            version: 1,
            sha256: None,
            timeout: 30,
            retries: 3,
            termination_log: self.log.clone(),
            s3_endpoint: None,
            framework: Framework::Custom,
            max_unpacked_bytes: None,
            max_entries: download::DEFAULT_MAX_ENTRIES,
            prune: false,
            keep_version: Vec::new(),
            ambient_credentials: false,
        }
    }

    fn version_dir(&self) -> PathBuf {
        self.dest.join("resnet").join("1")
    }

    fn log_line(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Nothing of a failed run may remain: no model directory, no temporary directory.
    fn assert_clean(&self) {
        let left: Vec<_> = std::fs::read_dir(&self.dest)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn model_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn tar_gz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    for (path, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, path, *data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// A tar whose entry names are written raw, bypassing the builder's own path checks.
fn raw_tar(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind, link, data) in entries {
        let mut header = tar::Header::new_old();
        let field = &mut header.as_old_mut().name;
        field[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(*kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        if !link.is_empty() {
            let field = &mut header.as_old_mut().linkname;
            field[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (path, data) in entries {
        if path.ends_with('/') {
            writer.add_directory(*path, options).unwrap();
        } else {
            writer.start_file(*path, options).unwrap();
            writer.write_all(data).unwrap();
        }
    }
    writer.finish().unwrap().into_inner()
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn single_file_is_placed_under_its_name() {
    let body = model_bytes(100_000);
    let served = body.clone();
    let server = Server::start(move |_, _| Reply::Ok(served.clone())).await;
    let fx = Fixture::new();

    let report = download::run(fx.args(&server.url("/models/model.onnx"))).await.unwrap();

    assert_eq!(report.bytes, body.len() as u64);
    assert_eq!(report.sha256, sha256(&body));
    assert_eq!(report.attempts, 1);
    assert!(!report.skipped);
    assert_eq!(report.path, fx.version_dir());
    assert_eq!(std::fs::read(fx.version_dir().join("model.onnx")).unwrap(), body);
    assert_eq!(
        dir_names(&fx.version_dir()),
        vec![".mlmodel-download.json", "model.onnx"]
    );
    assert_eq!(dir_names(&fx.dest), vec!["resnet"]);
    let marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fx.version_dir().join(".mlmodel-download.json")).unwrap()).unwrap();
    assert_eq!(marker["sha256"], sha256(&body));
    assert_eq!(marker["size"], body.len() as u64);
    assert_eq!(marker["url"], server.url("/models/model.onnx"));
    assert!(!fx.log.exists(), "no termination log on success");
}

#[tokio::test]
async fn not_found_is_permanent_and_reported() {
    let server = Server::start(|_, _| Reply::Status(404)).await;
    let fx = Fixture::new();
    let url = server.url("/path/model.tar.gz");

    let err = download::run(fx.args(&url)).await.unwrap_err();

    assert!(matches!(err, DownloadError::NotFound(_)), "{err:?}");
    assert_eq!(fx.log_line(), format!("NotFound: HTTP 404 fetching {url}"));
    assert_eq!(server.hits(), 1, "404 is not retried");
    fx.assert_clean();
}

#[tokio::test]
async fn unauthorized_is_auth_failed_without_retry() {
    let server = Server::start(|_, _| Reply::Status(403)).await;
    let fx = Fixture::new();

    let err = download::run(fx.args(&server.url("/m.bin"))).await.unwrap_err();

    assert_eq!(err.category(), "AuthFailed");
    assert!(fx.log_line().starts_with("AuthFailed: HTTP 403 fetching"));
    assert_eq!(server.hits(), 1);
    fx.assert_clean();
}

#[tokio::test]
async fn server_errors_are_retried_until_success() {
    let body = model_bytes(5000);
    let served = body.clone();
    let server = Server::start(move |i, _| match i {
        0 => Reply::Status(500),
        1 => Reply::Status(429),
        _ => Reply::Ok(served.clone()),
    })
    .await;
    let fx = Fixture::new();

    let report = download::run(fx.args(&server.url("/m.bin"))).await.unwrap();

    assert_eq!(report.attempts, 3);
    assert_eq!(server.hits(), 3);
    assert_eq!(std::fs::read(fx.version_dir().join("m.bin")).unwrap(), body);
}

#[tokio::test]
async fn persistent_server_errors_end_as_unavailable() {
    let server = Server::start(|_, _| Reply::Status(503)).await;
    let fx = Fixture::new();
    let mut args = fx.args(&server.url("/m.bin"));
    args.retries = 1;

    let err = download::run(args).await.unwrap_err();

    assert_eq!(err.category(), "Unavailable");
    assert_eq!(server.hits(), 2, "one try and one retry");
    let line = fx.log_line();
    assert!(line.starts_with("Unavailable: HTTP 503 fetching"), "{line}");
    fx.assert_clean();
}

#[tokio::test]
async fn connection_refused_is_unavailable() {
    // Bind and drop a listener so that the port is very likely closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let fx = Fixture::new();
    let mut args = fx.args(&format!("http://127.0.0.1:{port}/m.bin"));
    args.retries = 1;

    let err = download::run(args).await.unwrap_err();

    assert_eq!(err.category(), "Unavailable", "{err}");
    eprintln!("{}", fx.log_line());
    assert!(fx.log_line().starts_with("Unavailable: "));
    fx.assert_clean();
}

#[tokio::test]
async fn slow_server_hits_the_deadline() {
    let server = Server::start(|_, _| Reply::Slow(model_bytes(1000), Duration::from_millis(50))).await;
    let fx = Fixture::new();
    let mut args = fx.args(&server.url("/m.bin"));
    args.timeout = 1;

    let started = Instant::now();
    let err = download::run(args).await.unwrap_err();

    assert_eq!(err.category(), "Timeout", "{err}");
    eprintln!("{}", fx.log_line());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(fx.log_line().starts_with("Timeout: "));
    fx.assert_clean();
}

#[tokio::test]
async fn truncated_body_is_retried() {
    let body = model_bytes(50_000);
    let served = body.clone();
    let server = Server::start(move |i, _| match i {
        0 => Reply::Truncated(served.clone(), 20_000),
        _ => Reply::Ok(served.clone()),
    })
    .await;
    let fx = Fixture::new();

    let report = download::run(fx.args(&server.url("/m.bin"))).await.unwrap();

    assert_eq!(report.attempts, 2);
    assert_eq!(report.sha256, sha256(&body));
    assert_eq!(std::fs::read(fx.version_dir().join("m.bin")).unwrap(), body);
}

#[tokio::test]
async fn always_truncated_body_fails_after_retries() {
    let server = Server::start(|_, _| Reply::Truncated(model_bytes(50_000), 100)).await;
    let fx = Fixture::new();
    let mut args = fx.args(&server.url("/m.bin"));
    args.retries = 1;

    let err = download::run(args).await.unwrap_err();

    assert_eq!(err.category(), "Unavailable", "{err}");
    eprintln!("{}", fx.log_line());
    assert_eq!(server.hits(), 2);
    fx.assert_clean();
}

#[tokio::test]
async fn matching_checksum_is_accepted() {
    let body = model_bytes(10_000);
    let served = body.clone();
    let server = Server::start(move |_, _| Reply::Ok(served.clone())).await;
    let fx = Fixture::new();
    let mut args = fx.args(&server.url("/m.bin"));
    args.sha256 = Some(sha256(&body));

    let report = download::run(args).await.unwrap();

    assert_eq!(report.sha256, sha256(&body));
}

#[tokio::test]
async fn checksum_mismatch_leaves_nothing() {
    let body = model_bytes(10_000);
    let served = body.clone();
    let server = Server::start(move |_, _| Reply::Ok(served.clone())).await;
    let fx = Fixture::new();
    let mut args = fx.args(&server.url("/m.tar.gz"));
    let wrong = "0".repeat(64);
    args.sha256 = Some(wrong.clone());

    let err = download::run(args).await.unwrap_err();

    assert_eq!(err.category(), "ChecksumMismatch");
    assert_eq!(
        fx.log_line(),
        format!("ChecksumMismatch: expected {wrong}, got {}", sha256(&body))
    );
    assert_eq!(server.hits(), 1, "a mismatch is not retried");
    fx.assert_clean();
}

#[tokio::test]
async fn tar_gz_with_top_level_directory_is_flattened() {
    let archive = tar_gz(&[
        ("my-model/saved_model.pb", b"graph"),
        ("my-model/variables/variables.index", b"index"),
    ]);
    let server = Server::start(move |_, _| Reply::Ok(archive.clone())).await;
    let fx = Fixture::new();

    download::run(fx.args(&server.url("/m.tar.gz"))).await.unwrap();

    let version = fx.version_dir();
    assert_eq!(std::fs::read(version.join("saved_model.pb")).unwrap(), b"graph");
    assert_eq!(
        std::fs::read(version.join("variables/variables.index")).unwrap(),
        b"index"
    );
    assert_eq!(
        dir_names(&version),
        vec![".mlmodel-download.json", "saved_model.pb", "variables"]
    );
    assert_eq!(dir_names(&fx.dest), vec!["resnet"], "temporary directory removed");
}

#[tokio::test]
async fn a_layout_its_framework_cannot_load_fails_and_leaves_nothing() {
    let archive = tar_gz(&[("my-model/model.onnx", b"weights"), ("my-model/README.md", b"read me")]);
    let server = Server::start(move |_, _| Reply::Ok(archive.clone())).await;
    let fx = Fixture::new();
    let mut args = fx.args(&server.url("/m.tar.gz"));
    args.framework = Framework::Tensorflow;

    let err = download::run(args).await.unwrap_err();
    assert_eq!(err.category(), "InvalidModelLayout");
    assert_eq!(
        fx.log_line(),
        "InvalidModelLayout: tensorflow needs a SavedModel (saved_model.pb); found: README.md, model.onnx"
    );
    assert!(
        !fx.version_dir().exists(),
        "no version directory for a model that cannot load"
    );
    fx.assert_clean();
}

#[tokio::test]
async fn zip_is_unpacked() {
    let archive = zip(&[
        ("saved_model.pb", b"graph"),
        ("variables/", b""),
        ("variables/variables.data-00000-of-00001", b"weights"),
    ]);
    let server = Server::start(move |_, _| Reply::Ok(archive.clone())).await;
    let fx = Fixture::new();

    download::run(fx.args(&server.url("/export/model.zip"))).await.unwrap();

    let version = fx.version_dir();
    assert_eq!(std::fs::read(version.join("saved_model.pb")).unwrap(), b"graph");
    assert_eq!(
        std::fs::read(version.join("variables/variables.data-00000-of-00001")).unwrap(),
        b"weights"
    );
}

async fn assert_rejected_archive(name: &str, archive: Vec<u8>) {
    let server = Server::start(move |_, _| Reply::Ok(archive.clone())).await;
    let fx = Fixture::new();
    let outside = fx.dest.parent().unwrap().to_path_buf();
    let before = dir_names(&outside);

    let err = download::run(fx.args(&server.url(&format!("/{name}"))))
        .await
        .unwrap_err();

    assert_eq!(err.category(), "InvalidArchive", "{err}");
    eprintln!("{}", fx.log_line());
    assert!(fx.log_line().starts_with("InvalidArchive: "), "{}", fx.log_line());
    fx.assert_clean();
    let mut after = dir_names(&outside);
    after.retain(|n| n != "termination-log");
    assert_eq!(before, after, "nothing written outside the volume");
    assert!(!Path::new("/tmp/mlmodel-evil-absolute").exists());
}

#[tokio::test]
async fn tar_with_parent_dir_entry_is_rejected() {
    let archive = raw_tar(&[
        ("saved_model.pb", tar::EntryType::Regular, "", b"ok"),
        ("../evil", tar::EntryType::Regular, "", b"evil"),
    ]);
    assert_rejected_archive("m.tar", archive).await;
}

#[tokio::test]
async fn tar_with_absolute_entry_is_rejected() {
    let archive = raw_tar(&[("/tmp/mlmodel-evil-absolute", tar::EntryType::Regular, "", b"evil")]);
    assert_rejected_archive("m.tar", archive).await;
}

#[tokio::test]
async fn tar_with_escaping_symlink_is_rejected() {
    let archive = raw_tar(&[
        ("link", tar::EntryType::Symlink, "../../..", b""),
        ("link/evil", tar::EntryType::Regular, "", b"evil"),
    ]);
    assert_rejected_archive("m.tar", archive).await;
}

#[tokio::test]
async fn tar_with_escaping_hard_link_is_rejected() {
    let archive = raw_tar(&[("hard", tar::EntryType::Link, "/etc/passwd", b"")]);
    assert_rejected_archive("m.tar", archive).await;
}

#[tokio::test]
async fn zip_with_parent_dir_entry_is_rejected() {
    let archive = zip(&[("../evil", b"evil")]);
    assert_rejected_archive("m.zip", archive).await;
}

#[tokio::test]
async fn corrupt_archive_is_rejected() {
    assert_rejected_archive("m.tar.gz", b"definitely not gzip".to_vec()).await;
}

#[tokio::test]
async fn rerun_with_marker_does_not_fetch() {
    let body = model_bytes(1000);
    let served = body.clone();
    let server = Server::start(move |_, _| Reply::Ok(served.clone())).await;
    let fx = Fixture::new();
    let url = server.url("/m.bin");

    let first = download::run(fx.args(&url)).await.unwrap();
    assert!(!first.skipped);

    let mut again = fx.args(&url);
    again.sha256 = Some(sha256(&body));
    let second = download::run(again).await.unwrap();

    assert!(second.skipped);
    assert_eq!(second.attempts, 0);
    assert_eq!(second.sha256, first.sha256);
    assert_eq!(second.bytes, first.bytes);
    assert_eq!(server.hits(), 1, "the second run did not hit the server");
}

#[tokio::test]
async fn rerun_with_other_digest_replaces_the_version() {
    let old = model_bytes(1000);
    let new = model_bytes(2000);
    let served = (old.clone(), new.clone());
    let server = Server::start(move |i, _| Reply::Ok(if i == 0 { served.0.clone() } else { served.1.clone() })).await;
    let fx = Fixture::new();
    let url = server.url("/m.bin");

    download::run(fx.args(&url)).await.unwrap();
    let mut again = fx.args(&url);
    again.sha256 = Some(sha256(&new));
    let report = download::run(again).await.unwrap();

    assert!(!report.skipped);
    assert_eq!(std::fs::read(fx.version_dir().join("m.bin")).unwrap(), new);
    assert_eq!(dir_names(&fx.dest), vec!["resnet"]);
}

#[tokio::test]
async fn shell_metacharacters_are_just_data() {
    let server = Server::start(|_, _| Reply::Status(404)).await;
    let fx = Fixture::new();
    let canary = fx.dest.parent().unwrap().join("pwned");
    let canary = canary.display();

    for url in [
        "; rm -rf /".to_string(),
        format!("$(touch {canary})"),
        format!("`touch {canary}`"),
        server.url(&format!("/m.bin;touch%20{canary}")),
        server.url(&format!("/$(touch%20{canary})")),
        server.url(&format!("/`touch%20{canary}`")),
    ] {
        let err = download::run(fx.args(&url)).await.unwrap_err();
        assert!(matches!(err.category(), "InvalidURL" | "NotFound"), "{url}: {err}");
        fx.assert_clean();
    }
    assert!(!fx.dest.parent().unwrap().join("pwned").exists());
}

#[tokio::test]
async fn credentials_in_the_url_never_reach_the_log() {
    let server = Server::start(|_, _| Reply::Status(404)).await;
    let fx = Fixture::new();
    let url = format!(
        "http://user:hunter2@{}/m.bin?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=deadbeef",
        server.addr
    );

    let err = download::run(fx.args(&url)).await.unwrap_err();

    let line = fx.log_line();
    assert_eq!(line, format!("NotFound: HTTP 404 fetching {}", server.url("/m.bin")));
    for secret in ["hunter2", "AKIAEXAMPLE", "deadbeef"] {
        assert!(!line.contains(secret));
        assert!(!err.to_string().contains(secret));
    }
    assert_eq!(redact_url(&url), server.url("/m.bin"));
}

#[tokio::test]
async fn invalid_arguments_are_reported() {
    let fx = Fixture::new();
    let mut args = fx.args("http://127.0.0.1:9/m.bin");
    args.model_name = "../etc".into();
    let err = download::run(args).await.unwrap_err();
    assert_eq!(err.category(), "InvalidArgument");
    assert!(fx.log_line().starts_with("InvalidArgument: "));

    let mut args = fx.args("ftp://example.com/m.bin");
    args.sha256 = None;
    let err = download::run(args).await.unwrap_err();
    assert_eq!(err.category(), "InvalidURL");
    fx.assert_clean();
}

/// Serves `root` (one directory per bucket) as an S3-compatible endpoint that checks
/// SigV4 signatures made with the given key pair.
async fn start_s3(root: &Path, access_key: &str, secret_key: &str) -> String {
    let fs = s3s_fs::FileSystem::new(root).unwrap();
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(access_key, secret_key));
    let service = builder.build();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service.clone();
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

const S3_ACCESS_KEY: &str = "AKIDMLMODELTEST";
const S3_SECRET_KEY: &str = "mlmodel-test-secret-key";

/// The S3 download itself. It needs AWS credentials in the environment, which a test
/// must not change in its own multi-threaded process, so [`s3_download`] runs it in a
/// child process with the variables set.
#[tokio::test]
#[ignore = "run by s3_download in a child process with AWS credentials set"]
async fn s3_download_in_child() {
    let tmp = tempfile::tempdir().unwrap();
    let storage = tmp.path().join("s3");
    let object_dir = storage.join("models-bucket").join("exports");
    std::fs::create_dir_all(&object_dir).unwrap();
    let archive = tar_gz(&[("saved_model.pb", b"graph"), ("variables/variables.index", b"index")]);
    std::fs::write(object_dir.join("model.tar.gz"), &archive).unwrap();
    let endpoint = start_s3(&storage, S3_ACCESS_KEY, S3_SECRET_KEY).await;
    let fx = Fixture::new();

    let mut args = fx.args("s3://models-bucket/exports/model.tar.gz");
    args.s3_endpoint = Some(endpoint.clone());
    args.sha256 = Some(sha256(&archive));
    let report = download::run(args).await.unwrap();

    assert_eq!(report.sha256, sha256(&archive));
    assert_eq!(
        std::fs::read(fx.version_dir().join("saved_model.pb")).unwrap(),
        b"graph"
    );

    let mut missing = fx.args("s3://models-bucket/exports/absent.tar.gz");
    missing.s3_endpoint = Some(endpoint);
    missing.version = 2;
    let err = download::run(missing).await.unwrap_err();
    assert_eq!(err.category(), "NotFound", "{err}");
    assert_eq!(
        fx.log_line(),
        "NotFound: HTTP 404 fetching s3://models-bucket/exports/absent.tar.gz"
    );
}

/// Signs with a secret the server does not know.
#[tokio::test]
#[ignore = "run by s3_wrong_secret in a child process with AWS credentials set"]
async fn s3_wrong_secret_in_child() {
    let tmp = tempfile::tempdir().unwrap();
    let storage = tmp.path().join("s3");
    std::fs::create_dir_all(storage.join("models-bucket")).unwrap();
    std::fs::write(storage.join("models-bucket").join("m.bin"), b"weights").unwrap();
    let endpoint = start_s3(&storage, S3_ACCESS_KEY, S3_SECRET_KEY).await;
    let fx = Fixture::new();

    let mut args = fx.args("s3://models-bucket/m.bin");
    args.s3_endpoint = Some(endpoint);
    let err = download::run(args).await.unwrap_err();

    assert_eq!(err.category(), "AuthFailed", "{err}");
    assert!(fx.log_line().starts_with("AuthFailed: "), "{}", fx.log_line());
    assert!(!fx.log_line().contains("wrong-secret"));
    fx.assert_clean();
}

/// Runs one of the `*_in_child` tests in a child process with the given AWS secret.
fn run_s3_child(test: &str, secret_key: &str) {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--ignored", "--test-threads=1"])
        .env("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", secret_key)
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn s3_download() {
    run_s3_child("s3_download_in_child", S3_SECRET_KEY);
}

#[test]
fn s3_wrong_secret() {
    run_s3_child("s3_wrong_secret_in_child", "wrong-secret");
}

// ---------------------------------------------------------------------------------------------
// Unpacking limits
// ---------------------------------------------------------------------------------------------

/// Serves `artifact` as `name` and runs the downloader with the given limits; the run must
/// fail as `InvalidArchive` with `expected` in its line, leaving nothing on the volume.
async fn assert_over_limit(name: &str, artifact: Vec<u8>, max_bytes: Option<u64>, max_entries: u64, expected: &str) {
    let server = Server::start(move |_, _| Reply::Ok(artifact.clone())).await;
    let fx = Fixture::new();
    let mut args = fx.args(&server.url(&format!("/{name}")));
    args.max_unpacked_bytes = max_bytes;
    args.max_entries = max_entries;

    let err = download::run(args).await.unwrap_err();

    assert_eq!(err.category(), "InvalidArchive", "{err}");
    let line = fx.log_line();
    assert!(
        line.starts_with("InvalidArchive: ") && line.contains(expected),
        "{line}"
    );
    fx.assert_clean();
}

const MIB: u64 = 1 << 20;

#[tokio::test]
async fn zip_bomb_stops_at_the_byte_cap_and_leaves_nothing() {
    let zeros = vec![0u8; 32 * MIB as usize];
    let archive = zip(&[("saved_model.pb", b"graph"), ("variables/huge.data", &zeros)]);
    assert!(archive.len() < 100_000, "highly compressible: {} bytes", archive.len());
    assert_over_limit(
        "m.zip",
        archive,
        Some(MIB),
        100,
        "archive unpacks to more than 1048576 bytes (--max-unpacked-bytes",
    )
    .await;
}

#[tokio::test]
async fn tar_gz_bomb_stops_at_the_byte_cap_and_leaves_nothing() {
    let zeros = vec![0u8; 32 * MIB as usize];
    let archive = tar_gz(&[("saved_model.pb", b"graph"), ("variables/huge.data", &zeros)]);
    assert!(archive.len() < 200_000, "highly compressible: {} bytes", archive.len());
    assert_over_limit("m.tar.gz", archive, Some(MIB), 100, "more than 1048576 bytes").await;
}

#[tokio::test]
async fn many_small_files_add_up_to_the_byte_cap() {
    let chunk = vec![7u8; 100_000];
    let names: Vec<String> = (0..20).map(|i| format!("shard-{i}")).collect();
    let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), chunk.as_slice())).collect();
    assert_over_limit("m.tar.gz", tar_gz(&entries), Some(MIB), 100, "more than 1048576 bytes").await;
}

#[tokio::test]
async fn a_single_file_larger_than_the_cap_is_refused() {
    assert_over_limit(
        "model.onnx",
        model_bytes(50_000),
        Some(10_000),
        100,
        "artifact is more than 10000 bytes",
    )
    .await;
}

#[tokio::test]
async fn an_archive_within_the_caps_is_unpacked() {
    let archive = tar_gz(&[("saved_model.pb", &[1u8; 1000]), ("variables/v", &[2u8; 1000])]);
    let server = Server::start(move |_, _| Reply::Ok(archive.clone())).await;
    let fx = Fixture::new();
    let mut args = fx.args(&server.url("/m.tar.gz"));
    args.max_unpacked_bytes = Some(2000);
    args.max_entries = 2;

    download::run(args).await.unwrap();

    assert_eq!(
        std::fs::read(fx.version_dir().join("variables/v")).unwrap(),
        [2u8; 1000]
    );
}

#[tokio::test]
async fn too_many_tar_entries_is_invalid_archive() {
    let names: Vec<String> = (0..50).map(|i| format!("f{i}")).collect();
    let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
    assert_over_limit(
        "m.tar.gz",
        tar_gz(&entries),
        None,
        10,
        "archive has more than 10 entries (--max-entries)",
    )
    .await;
}

#[tokio::test]
async fn too_many_zip_entries_is_invalid_archive() {
    let names: Vec<String> = (0..50).map(|i| format!("f{i}")).collect();
    let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
    assert_over_limit("m.zip", zip(&entries), None, 10, "archive has more than 10 entries").await;
}

// ---------------------------------------------------------------------------------------------
// The downloader as a process: the URL by reference, anonymous S3, SIGTERM
// ---------------------------------------------------------------------------------------------

/// The downloader binary writing into `fx`, with an empty environment but for `env`.
fn downloader(fx: &Fixture, args: &[&str], env: &[(&str, &str)]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_mlmodel-operator"));
    command
        .env_clear()
        .envs(env.iter().copied())
        .arg("download")
        .arg(format!("--dest={}", fx.dest.display()))
        .args(["--model-name=resnet", "--version=1", "--timeout=30", "--retries=0"])
        .arg(format!("--termination-log={}", fx.log.display()))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs the command to its end: (success, stdout and stderr together).
async fn output(mut command: tokio::process::Command) -> (bool, String) {
    let out = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("the downloader finishes")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn a_url_given_by_reference_never_appears_in_any_output() {
    let body = model_bytes(5000);
    let served = body.clone();
    let server = Server::start(move |_, path| {
        if path.starts_with("/m.bin") {
            Reply::Ok(served.clone())
        } else {
            Reply::Status(404)
        }
    })
    .await;
    let secrets = ["S3KR1T-T0KEN", "AKIAREFERENCE", "51GNATURE"];
    let query = "?token=S3KR1T-T0KEN&X-Amz-Credential=AKIAREFERENCE&X-Amz-Signature=51GNATURE";

    let fx = Fixture::new();
    let url = format!("{}{query}\n", server.url("/m.bin"));
    let (ok, logs) = output(downloader(
        &fx,
        &["--url-env=MODEL_URL_FROM_SECRET"],
        &[("MODEL_URL_FROM_SECRET", &url)],
    ))
    .await;
    assert!(ok, "{logs}");
    assert_eq!(std::fs::read(fx.version_dir().join("m.bin")).unwrap(), body);
    assert!(
        logs.contains(&server.url("/m.bin")),
        "the redacted URL is logged: {logs}"
    );
    let marker = std::fs::read_to_string(fx.version_dir().join(download::MARKER_FILE)).unwrap();
    assert!(
        server.heads()[0].starts_with(&format!("GET /m.bin{query} ")),
        "the full URL was fetched: {:?}",
        server.heads()
    );

    let failing = Fixture::new();
    let url = format!("{}{query}", server.url("/absent.bin"));
    let (ok, failed_logs) = output(downloader(
        &failing,
        &["--url-env=MODEL_URL_FROM_SECRET"],
        &[("MODEL_URL_FROM_SECRET", &url)],
    ))
    .await;
    assert!(!ok);
    let line = failing.log_line();
    assert_eq!(
        line,
        format!("NotFound: HTTP 404 fetching {}", server.url("/absent.bin"))
    );

    for secret in secrets {
        for (what, text) in [
            ("logs", &logs),
            ("marker", &marker),
            ("failure logs", &failed_logs),
            ("termination message", &line),
        ] {
            assert!(!text.contains(secret), "{secret} in the {what}: {text}");
        }
    }
}

#[tokio::test]
async fn a_missing_url_variable_is_an_invalid_argument() {
    let fx = Fixture::new();
    let (ok, logs) = output(downloader(&fx, &["--url-env=MODEL_URL_FROM_SECRET"], &[])).await;
    assert!(!ok, "{logs}");
    assert!(
        fx.log_line()
            .starts_with("InvalidArgument: environment variable MODEL_URL_FROM_SECRET (--url-env)"),
        "{}",
        fx.log_line()
    );
    fx.assert_clean();
}

/// An S3 endpoint and instance-metadata endpoint in one: serves `/models-bucket/m.bin` and
/// answers 404 to everything else (the metadata paths).
async fn s3_and_metadata_server(body: Vec<u8>) -> Server {
    Server::start(move |_, path| {
        if path == "/models-bucket/m.bin" {
            Reply::Ok(body.clone())
        } else {
            Reply::Status(404)
        }
    })
    .await
}

/// Variables a node or a careless Secret may provide, none of which may be used without
/// `--ambient-credentials`.
fn node_credentials(server: &Server) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_METADATA_ENDPOINT", server.url("")),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", server.url("")),
        ("AWS_PROFILE", "node".to_owned()),
        ("AWS_ACCESS_KEY_ID", "AKIAONLYHALFAPAIR".to_owned()),
    ]
}

#[tokio::test]
async fn s3_without_keys_is_fetched_anonymously_never_with_the_nodes_credentials() {
    let body = model_bytes(3000);
    let server = s3_and_metadata_server(body.clone()).await;
    let fx = Fixture::new();
    let env = node_credentials(&server);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let endpoint = format!("--s3-endpoint={}", server.url(""));

    let (ok, logs) = output(downloader(&fx, &["--url=s3://models-bucket/m.bin", &endpoint], &env)).await;

    assert!(ok, "{logs}");
    assert_eq!(std::fs::read(fx.version_dir().join("m.bin")).unwrap(), body);
    let heads = server.heads();
    assert_eq!(heads.len(), 1, "only the object was requested: {heads:?}");
    assert!(heads[0].starts_with("GET /models-bucket/m.bin "), "{heads:?}");
    assert!(
        !heads[0].to_ascii_lowercase().contains("\nauthorization:"),
        "unsigned: {heads:?}"
    );
}

#[tokio::test]
async fn ambient_credentials_are_looked_up_only_with_the_flag() {
    let server = s3_and_metadata_server(model_bytes(3000)).await;
    let fx = Fixture::new();
    let metadata = server.url("");
    let env = [("AWS_METADATA_ENDPOINT", metadata.as_str())];
    let endpoint = format!("--s3-endpoint={}", server.url(""));

    let _ = output(downloader(
        &fx,
        &["--url=s3://models-bucket/m.bin", &endpoint, "--ambient-credentials"],
        &env,
    ))
    .await;

    assert!(
        server.heads().iter().any(|h| h.contains(" /latest/")),
        "the instance metadata endpoint was asked: {:?}",
        server.heads()
    );
}

#[tokio::test]
async fn sigterm_stops_the_download_and_removes_its_staging_directory() {
    let server = Server::start(|_, _| Reply::Slow(model_bytes(100_000), Duration::from_millis(20))).await;
    let fx = Fixture::new();
    let mut child = downloader(&fx, &[&format!("--url={}", server.url("/m.tar.gz"))], &[])
        .spawn()
        .unwrap();

    let started = Instant::now();
    while !dir_names(&fx.dest).iter().any(|n| n.starts_with(".tmp-resnet-1-")) || server.hits() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the download never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());

    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("stops promptly")
        .unwrap();
    assert!(!status.success());
    assert_eq!(status.code(), Some(1), "exits with an error, not killed by the signal");
    let line = fx.log_line();
    assert!(line.starts_with("Terminated: ") && line.contains("SIGTERM"), "{line}");
    fx.assert_clean();
}

// ---------------------------------------------------------------------------------------------
// Fuzzing inputs replayed (tests/fuzz): the seeds, and every input that once crashed a target
// ---------------------------------------------------------------------------------------------

/// The files of `tests/fuzz/corpus/<target>` and `tests/fuzz/regressions/<target>`.
fn fuzz_inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
    let mut inputs = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            inputs.push((path, data));
        }
    }
    assert!(!inputs.is_empty(), "no inputs for {target}");
    inputs
}

#[test]
fn fuzz_inputs_for_unpacking_stay_within_the_caps() {
    let limits = download::Limits {
        max_bytes: Some(64 * 1024),
        max_entries: 32,
    };
    for (path, data) in fuzz_inputs("unpack") {
        let Some((&selector, archive)) = data.split_first() else {
            continue;
        };
        let kind = [
            download::ArtifactKind::Tar,
            download::ArtifactKind::TarGz,
            download::ArtifactKind::Zip,
        ][usize::from(selector % 3)];
        let tmp = tempfile::tempdir().unwrap();
        let into = tmp.path().join("content");
        std::fs::create_dir(&into).unwrap();
        let result = download::fuzzing::unpack(archive, kind, &into, limits);
        if path.parent().unwrap().parent().unwrap().ends_with("corpus") {
            assert!(result.is_ok(), "{}: {:?}", path.display(), result);
        }
        assert_eq!(dir_names(tmp.path()), vec!["content"], "{}", path.display());
    }
}

#[test]
fn fuzz_inputs_for_urls_never_show_credentials() {
    for (path, data) in fuzz_inputs("url") {
        let Ok(raw) = std::str::from_utf8(&data) else {
            continue;
        };
        let shown = redact_url(raw);
        assert!(
            !download::fuzzing::leaks_credentials(&shown),
            "{}: {shown}",
            path.display()
        );
        if let Ok((shown, _)) = download::fuzzing::parse_url(raw) {
            assert!(
                !download::fuzzing::leaks_credentials(&shown),
                "{}: {shown}",
                path.display()
            );
        }
        let _ = download::fuzzing::scrub_message(raw);
    }
}

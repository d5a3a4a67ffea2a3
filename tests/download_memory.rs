//! The downloader streams: peak memory does not grow with the artifact's size.
//!
//! Kept in its own test binary so that no other test shares the process whose peak RSS
//! is measured.

use std::time::Instant;

use mlmodel_operator::api::Framework;
use mlmodel_operator::download::{self, DownloadArgs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const ARTIFACT_BYTES: u64 = 256 << 20;
const BUDGET_BYTES: u64 = 64 << 20;

/// Peak resident set size so far (VmHWM), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Serves `ARTIFACT_BYTES` generated on the fly, 64 KiB at a time.
async fn serve_generated() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let header =
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {ARTIFACT_BYTES}\r\nConnection: close\r\n\r\n");
                if stream.write_all(header.as_bytes()).await.is_err() {
                    return;
                }
                let chunk: Vec<u8> = (0..65536u32).map(|i| (i % 253) as u8).collect();
                let mut left = ARTIFACT_BYTES;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    if stream.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    left -= n as u64;
                }
                let _ = stream.shutdown().await;
            });
        }
    });
    format!("http://{addr}/big-model.bin")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_download_runs_in_constant_memory() {
    let url = serve_generated().await;
    let tmp = tempfile::tempdir().unwrap();
    let before = peak_rss();

    let started = Instant::now();
    let report = download::run(DownloadArgs {
        url: Some(url),
        url_env: None,
        dest: tmp.path().to_path_buf(),
        model_name: "big".into(),
        version: 1,
        sha256: None,
        timeout: 300,
        retries: 0,
        termination_log: tmp.path().join("termination-log"),
        s3_endpoint: None,
        framework: Framework::Custom,
        max_unpacked_bytes: None,
        max_entries: download::DEFAULT_MAX_ENTRIES,
        prune: false,
        keep_version: Vec::new(),
        ambient_credentials: false,
    })
    .await
    .unwrap();
    let elapsed = started.elapsed();

    let growth = peak_rss().saturating_sub(before);
    eprintln!(
        "downloaded {} MiB in {elapsed:?}; peak RSS growth {} MiB",
        report.bytes >> 20,
        growth >> 20
    );
    assert_eq!(report.bytes, ARTIFACT_BYTES);
    assert_eq!(
        std::fs::metadata(report.path.join("big-model.bin")).unwrap().len(),
        ARTIFACT_BYTES
    );
    assert!(
        growth < BUDGET_BYTES,
        "peak RSS grew by {} MiB, budget {} MiB",
        growth >> 20,
        BUDGET_BYTES >> 20
    );
}

/// Throughput against an external local server, for measurements by hand:
/// `MLMODEL_BENCH_URL=http://127.0.0.1:8000/model.bin cargo test --release
/// --test download_memory -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs MLMODEL_BENCH_URL pointing at a local server"]
async fn throughput_from_bench_url() {
    let Ok(url) = std::env::var("MLMODEL_BENCH_URL") else {
        eprintln!("MLMODEL_BENCH_URL not set; nothing measured");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let report = download::run(DownloadArgs {
        url: Some(url),
        url_env: None,
        dest: tmp.path().to_path_buf(),
        model_name: "bench".into(),
        version: 1,
        sha256: None,
        timeout: 600,
        retries: 0,
        termination_log: tmp.path().join("termination-log"),
        s3_endpoint: None,
        framework: Framework::Custom,
        max_unpacked_bytes: None,
        max_entries: download::DEFAULT_MAX_ENTRIES,
        prune: false,
        keep_version: Vec::new(),
        ambient_credentials: false,
    })
    .await
    .unwrap();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "downloaded {} bytes in {secs:.2}s: {:.0} MB/s; peak RSS {} MiB",
        report.bytes,
        report.bytes as f64 / 1e6 / secs,
        peak_rss() >> 20
    );
}

//! `/readyz` turns true only once every watch stream has listed its objects: with one stream
//! held back, the operator stays unready although all the others have listed.
//!
//! Own test binary (compiled with the `fault-injection` feature): its operator holds back the
//! Pod watch.
#![cfg(feature = "fault-injection")]

mod operator;
mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(90);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The status code of GET /readyz, or None while nothing listens.
fn readyz(port: u16) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn readiness_waits_for_every_stream_to_list() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let op = operator::start(
        "readiness",
        &[("METRICS_ADDR", addr.as_str()), ("MLMODEL_FAULT_DELAY_WATCH", "Pod:15")],
    );
    let others = ["MLModel", "PersistentVolumeClaim", "Job", "Deployment", "Service"];
    let start = Instant::now();
    loop {
        let logs = op.logs();
        let listed = |kind: &str| {
            let field = [format!("kind=\"{kind}\""), format!("kind={kind} ")];
            logs.lines()
                .any(|l| l.contains("watch listed") && field.iter().any(|f| l.contains(f.as_str())))
        };
        if others.iter().all(|k| listed(k)) {
            assert!(!listed("Pod"), "the Pod watch was held back:\n{logs}");
            break;
        }
        assert!(start.elapsed() < TIMEOUT, "the other streams did not list:\n{logs}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(readyz(port), Some(503), "not ready while the Pod stream has not listed");

    let start = Instant::now();
    while readyz(port) != Some(200) {
        assert!(start.elapsed() < TIMEOUT, "never ready:\n{}", op.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        op.logs()
            .lines()
            .any(|l| l.contains("watch listed") && l.contains("Pod")),
        "ready only after the Pod stream listed"
    );
}

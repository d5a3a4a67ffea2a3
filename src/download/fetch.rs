//! Streaming the artifact to disk with hashing, progress and retries.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};
use std::io::Write;
use tracing::{info, warn};

use super::archive::Limits;
use super::error::DownloadError;
use super::source::{AttemptError, ResponseObserver, classify};

/// How often, at most, a progress line is logged.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// Write buffer: large enough that writes to the volume are few and big.
const WRITE_BUFFER: usize = 1 << 20;
/// First backoff delay; doubled after each failed attempt.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest backoff delay.
const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// A fetched artifact.
#[derive(Debug)]
pub(crate) struct Fetched {
    /// Bytes written.
    pub(crate) bytes: u64,
    /// Lowercase hex SHA-256 of those bytes.
    pub(crate) sha256: String,
    /// Attempts made, the successful one included.
    pub(crate) attempts: u32,
}

/// The failure of the whole fetch and how many attempts it took.
#[derive(Debug)]
pub(crate) struct FetchFailure {
    pub(crate) error: DownloadError,
    pub(crate) attempts: u32,
}

/// Downloads `location` into `file`, trying again on transient failures up to `retries`
/// times with exponential backoff and jitter. Each attempt starts from scratch (the file
/// is truncated and the hash restarted), so a retry never mixes bytes of two responses.
pub(crate) async fn fetch_with_retries(
    store: &dyn ObjectStore,
    location: &ObjectPath,
    file: &Path,
    retries: u32,
    observer: &ResponseObserver,
    shown: &str,
    limits: Limits,
) -> Result<Fetched, FetchFailure> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        observer.reset();
        match fetch_once(store, location, file, observer, shown, limits).await {
            Ok((bytes, sha256)) => {
                return Ok(Fetched {
                    bytes,
                    sha256,
                    attempts: attempt,
                });
            }
            Err(failure) if failure.transient && attempt <= retries => {
                let delay = backoff(attempt);
                warn!(
                    attempt,
                    retries,
                    delay_ms = delay.as_millis() as u64,
                    error = %failure.error,
                    "transient download failure, retrying"
                );
                tokio::time::sleep(delay).await;
            }
            Err(failure) => {
                let error = match failure.error {
                    DownloadError::Unavailable(message) if failure.transient && attempt > 1 => {
                        DownloadError::Unavailable(format!("{message} (gave up after {attempt} attempts)"))
                    }
                    other => other,
                };
                return Err(FetchFailure {
                    error,
                    attempts: attempt,
                });
            }
        }
    }
}

/// The delay before retry number `attempt` (1-based): `base * 2^(attempt-1)`, capped,
/// then jittered into `[d/2, d)` so that many Jobs failing together do not retry in step.
fn backoff(attempt: u32) -> Duration {
    crate::backoff(attempt.saturating_sub(1), BACKOFF_BASE, BACKOFF_CAP)
}

async fn fetch_once(
    store: &dyn ObjectStore,
    location: &ObjectPath,
    file: &Path,
    observer: &ResponseObserver,
    shown: &str,
    limits: Limits,
) -> Result<(u64, String), AttemptError> {
    let response = store
        .get(location)
        .await
        .map_err(|e| classify(&e, observer.last_status(), shown))?;
    let expected = response.meta.size;
    // The artifact lands on the same volume as what it unpacks to, so it is held to the
    // same cap; a size announced up front is refused before anything is written.
    let too_big = || AttemptError::permanent(limits.too_many_bytes("artifact is"));
    let over = |n: u64| limits.max_bytes.is_some_and(|max| n > max);
    if over(expected) {
        return Err(too_big());
    }
    let mut body = response.into_stream();

    let io_error = |what: &str, e: &std::io::Error| {
        AttemptError::permanent(DownloadError::from_io(&format!("{what} {}", file.display()), e))
    };
    let out = tokio::fs::File::create(file)
        .await
        .map_err(|e| io_error("cannot create", &e))?;
    let (chunks, sink) = sink(out.into_std().await);
    let mut progress = Progress::new(expected);
    let received = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                let mut failure = classify(&e, None, shown);
                // Whatever breaks mid-body (reset, EOF before Content-Length) is worth a retry.
                failure.transient = true;
                if let DownloadError::Unavailable(message) = &mut failure.error {
                    *message = format!("{message} after {} of {expected} bytes", progress.bytes);
                }
                failure
            })?;
            if over(progress.bytes + chunk.len() as u64) {
                return Err(too_big());
            }
            let len = chunk.len() as u64;
            // Closed: the sink stopped on a write error, which its result tells.
            if chunks.send(chunk).await.is_err() {
                break;
            }
            progress.advance(len);
        }
        Ok(())
    }
    .await;
    // The sink finishes before this attempt ends, so that a retry's truncated file never
    // receives bytes of this one.
    drop(chunks);
    let written = sink.await.unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
    received?;
    let sha256 = written.map_err(|e| io_error("cannot write", &e))?;

    if progress.bytes != expected {
        return Err(AttemptError::transient(format!(
            "truncated body fetching {shown}: got {} of {expected} bytes",
            progress.bytes
        )));
    }
    progress.finish();
    Ok((progress.bytes, sha256))
}

/// Chunks of the body in flight between the network and the disk.
const SINK_CHUNKS: usize = 16;

/// Hashes and writes chunks sent to it on a blocking thread, so that the network is read
/// while earlier bytes are hashed and written; returns the hex SHA-256 once the channel
/// closes, or the first write error.
fn sink<C: AsRef<[u8]> + Send + 'static>(
    file: std::fs::File,
) -> (
    tokio::sync::mpsc::Sender<C>,
    tokio::task::JoinHandle<std::io::Result<String>>,
) {
    let (chunks, mut received) = tokio::sync::mpsc::channel::<C>(SINK_CHUNKS);
    let sink = tokio::task::spawn_blocking(move || {
        let mut out = std::io::BufWriter::with_capacity(WRITE_BUFFER, file);
        let mut hasher = Sha256::new();
        while let Some(chunk) = received.blocking_recv() {
            hasher.update(chunk.as_ref());
            out.write_all(chunk.as_ref())?;
        }
        out.flush()?;
        Ok(hex::encode(hasher.finalize()))
    });
    (chunks, sink)
}

/// Throughput reporting for one attempt.
struct Progress {
    start: Instant,
    last_log: Instant,
    bytes: u64,
    total: u64,
}

impl Progress {
    fn new(total: u64) -> Self {
        let now = Instant::now();
        Self {
            start: now,
            last_log: now,
            bytes: 0,
            total,
        }
    }

    fn advance(&mut self, n: u64) {
        self.bytes += n;
        if self.last_log.elapsed() >= PROGRESS_INTERVAL {
            self.last_log = Instant::now();
            info!(
                bytes = self.bytes,
                total_bytes = self.total,
                mb_per_s = format!("{:.1}", mb_per_s(self.bytes, self.start.elapsed())),
                "download progress"
            );
        }
    }

    fn finish(&self) {
        let elapsed = self.start.elapsed();
        info!(
            bytes = self.bytes,
            duration_ms = elapsed.as_millis() as u64,
            mb_per_s = format!("{:.1}", mb_per_s(self.bytes, elapsed)),
            "download complete"
        );
    }
}

fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64().max(1e-6);
    bytes as f64 / 1_000_000.0 / secs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 1..=3u32 {
            let nominal = BACKOFF_BASE * (1 << (attempt - 1));
            let d = backoff(attempt);
            assert!(d >= nominal / 2 && d <= nominal, "{attempt}: {d:?}");
        }
        assert!(backoff(40) <= BACKOFF_CAP);
    }
}

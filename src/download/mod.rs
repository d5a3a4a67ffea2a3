//! The model downloader: the `download` subcommand run by each model's download Job.
//!
//! It fetches one artifact, verifies it, and lays it out as
//! `<dest>/<model-name>/<version>/` (tensorflow/serving's layout, which the other
//! runtimes share):
//!
//! 1. The artifact is streamed (constant memory) into a temporary directory on the same
//!    volume, `<dest>/.tmp-<model-name>-<version>-<random>`, and hashed with SHA-256 on the
//!    way. If `--sha256` is given and differs, the download fails with `ChecksumMismatch`.
//! 2. `.tar`, `.tar.gz`/`.tgz` and `.zip` artifacts are unpacked there (entries escaping
//!    the directory are rejected as `InvalidArchive`); any other file is kept as is, named
//!    by the URL's last path segment. The bytes fetched and the bytes unpacked are each
//!    capped by `--max-unpacked-bytes` (the operator passes the volume claim's requested
//!    size: a hostPath volume's free space is the host's, no bound), and the entries of an
//!    archive by `--max-entries` ([`DEFAULT_MAX_ENTRIES`]); passing either is
//!    `InvalidArchive` naming the limit, and nothing past the cap is written.
//! 3. Flattening: if the unpacked archive holds exactly one top-level entry and it is a
//!    directory (e.g. `my-model/saved_model.pb`), that directory's contents become the
//!    version directory, so `<version>/saved_model.pb` results. Only one level is
//!    flattened.
//! 4. The result is checked against what `--framework`'s server loads (a SavedModel for
//!    TF Serving, `config.pbtxt` and a numbered version for Triton, `model-settings.json` or
//!    a model file for MLServer's runtimes); a wrong layout is `InvalidModelLayout`.
//! 5. A marker `.mlmodel-download.json` (redacted URL, SHA-256 and size of the artifact)
//!    is written, and the directory is renamed into place in one step. A later run whose
//!    marker matches (same redacted URL, and same SHA-256 when one is given) returns at
//!    once without fetching.
//!
//! The temporary directory is removed on every path, success or failure, and when the
//! downloader is stopped with SIGTERM (it then fails as `Terminated`). On failure one line
//! `<Category>: <message>` is written to the termination log (see
//! [`DownloadError::category`]).
//!
//! # Credentials
//!
//! Credentials come only from these environment variables (the Job fills them from the
//! model's Secret):
//! - S3 (`s3://bucket/key`): `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//!   `AWS_SESSION_TOKEN`, `AWS_REGION` or `AWS_DEFAULT_REGION` (default `us-east-1`).
//!   `--s3-endpoint`/`AWS_ENDPOINT_URL` selects an S3-compatible server (path-style
//!   requests, plain HTTP allowed).
//! - GCS (`gs://bucket/key`): `GOOGLE_SERVICE_ACCOUNT_KEY` (the JSON key itself) or
//!   `GOOGLE_APPLICATION_CREDENTIALS` (a path to it).
//! - HTTP(S): `HTTP_BEARER_TOKEN`, or `HTTP_USERNAME` + `HTTP_PASSWORD` (basic auth).
//!   Presigned URLs need nothing else; their signatures are redacted from all output.
//!
//! Without them an `s3://` or `gs://` object is fetched anonymously (unsigned requests). The
//! node's own credentials (web identity, container or instance metadata, profiles,
//! application default credentials) are used only with `--ambient-credentials`: without it
//! anyone allowed to create a model could read whatever the node's role can.
//!
//! Credentials never appear in logs, errors or the marker: every URL shown goes through
//! [`redact_url`]. A URL that is itself a secret (presigned, or with a token in its query)
//! is best given by reference, `--url-env VAR`, so that it is not in the pod spec either.

mod archive;
mod error;
mod fetch;
mod layout;
mod redact;
mod source;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{Instrument, error, info, info_span, warn};

pub use archive::{ArtifactKind, DEFAULT_MAX_ENTRIES, Limits};
pub use error::DownloadError;
pub use redact::redact_url;
pub use source::CredentialMode;

use crate::api::Framework;
use source::{Credentials, ResponseObserver, Source};

/// Name of the marker file written into each completed version directory.
pub const MARKER_FILE: &str = ".mlmodel-download.json";

/// Arguments of `mlmodel-operator download`.
// `--version` is the model version here; the program's own version flag must not clash
// with it even when the top-level command propagates it.
#[derive(Debug, Clone, clap::Args)]
#[command(disable_version_flag = true)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["url", "url_env"])))]
pub struct DownloadArgs {
    /// Artifact URL: http://, https://, s3://bucket/key or gs://bucket/key. It is visible in
    /// the pod spec; a URL that is a secret itself belongs in `--url-env`.
    #[arg(long)]
    pub url: Option<String>,

    /// Name of an environment variable holding the artifact URL, instead of `--url`. The URL
    /// read from it is never printed: logs, spans and messages show it redacted.
    #[arg(long, value_name = "VAR")]
    pub url_env: Option<String>,

    /// Base directory of the mounted model volume (e.g. /models).
    #[arg(long, env = "MODEL_DEST")]
    pub dest: PathBuf,

    /// Model name (a DNS-1123 label); the first level under `--dest`.
    #[arg(long, env = "MODEL_NAME")]
    pub model_name: String,

    /// Model version (the MLModel's generation); the second level under `--dest`.
    #[arg(long, env = "MODEL_VERSION")]
    pub version: u64,

    /// Expected lowercase hex SHA-256 of the artifact as fetched (before unpacking).
    #[arg(long, env = "MODEL_SHA256")]
    pub sha256: Option<String>,

    /// Overall deadline in seconds.
    #[arg(long, env = "DOWNLOAD_TIMEOUT_SECONDS", default_value_t = 600)]
    pub timeout: u64,

    /// Retries on transient errors (connection errors, 5xx, 429, truncated bodies).
    #[arg(long, env = "DOWNLOAD_RETRIES", default_value_t = 3)]
    pub retries: u32,

    /// File that receives the one-line failure reason.
    #[arg(long, env = "TERMINATION_LOG", default_value = "/dev/termination-log")]
    pub termination_log: PathBuf,

    /// S3-compatible endpoint (path-style requests, plain HTTP allowed).
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub s3_endpoint: Option<String>,

    /// The model server the version is for; what it needs is checked after unpacking
    /// (`custom` checks nothing).
    #[arg(long, env = "MODEL_FRAMEWORK", default_value = "custom", value_parser = parse_framework)]
    pub framework: Framework,

    /// Most bytes the artifact may have and an archive may unpack to (the volume claim's
    /// requested size); more is `InvalidArchive`. Without it only the volume bounds them.
    #[arg(long, value_name = "N")]
    pub max_unpacked_bytes: Option<u64>,

    /// Most entries an archive may hold; more is `InvalidArchive`.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_ENTRIES)]
    pub max_entries: u64,

    /// Before fetching, remove the model's other versions from the volume (all but this one
    /// and the `--keep-version`s) and the temporary directories of downloads that were killed,
    /// so that the volume holds the versions in use and no more.
    #[arg(long)]
    pub prune: bool,

    /// With `--prune`: a version that stays (one that pods still serve). Repeatable.
    #[arg(long, value_name = "N")]
    pub keep_version: Vec<u64>,

    /// Let `s3://` and `gs://` fall back to the node's credentials (web identity, container
    /// or instance metadata, profiles, application default credentials) when the
    /// environment holds no keys. Off: such sources are fetched anonymously.
    #[arg(long)]
    pub ambient_credentials: bool,
}

impl DownloadArgs {
    /// The artifact URL: `--url`, or the value of the variable `--url-env` names (trimmed, as
    /// Secret values often end with a newline).
    pub fn model_url(&self) -> Result<String, DownloadError> {
        match (&self.url, &self.url_env) {
            (Some(url), None) => Ok(url.clone()),
            (None, Some(var)) => std::env::var(var)
                .ok()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    DownloadError::InvalidArgument(format!(
                        "environment variable {var} (--url-env) is not set, empty or not UTF-8"
                    ))
                }),
            _ => Err(DownloadError::InvalidArgument(
                "exactly one of --url and --url-env is required".into(),
            )),
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_bytes: self.max_unpacked_bytes,
            max_entries: self.max_entries,
        }
    }
}

fn parse_framework(value: &str) -> Result<Framework, String> {
    serde_json::from_value(serde_json::Value::String(value.to_owned()))
        .map_err(|_| "expected one of tensorflow, triton, mlserver, sklearn, xgboost, custom".to_owned())
}

/// What a successful run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadReport {
    /// Size of the artifact in bytes.
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the artifact.
    pub sha256: String,
    /// The version directory, `<dest>/<model-name>/<version>`.
    pub path: PathBuf,
    /// Fetch attempts made (0 when skipped).
    pub attempts: u32,
    /// Whether the version was already present and nothing was fetched.
    pub skipped: bool,
}

/// Contents of [`MARKER_FILE`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Marker {
    url: String,
    sha256: String,
    size: u64,
    #[serde(default)]
    completed_at_unix: u64,
}

/// Runs the download; on failure writes the classified line to the termination log and returns Err.
///
/// SIGTERM stops it: the temporary directory is removed and the run fails as `Terminated`.
pub async fn run(args: DownloadArgs) -> Result<DownloadReport, DownloadError> {
    let (terminate, terminated) = watch::channel(false);
    let listener = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut sigterm) => Some(tokio::spawn(async move {
            if sigterm.recv().await.is_some() {
                warn!("SIGTERM received, stopping");
                let _ = terminate.send(true);
            }
        })),
        Err(e) => {
            warn!("cannot listen for SIGTERM: {e}");
            None
        }
    };
    let url = args.model_url();
    let shown = url.as_deref().map_or_else(|_| String::new(), redact_url);
    let span = info_span!(
        "download",
        url = %shown,
        model_name = %args.model_name,
        version = args.version,
        error.category = tracing::field::Empty,
    );
    let result = match url {
        Ok(url) => download(&args, &url, terminated).instrument(span.clone()).await,
        Err(e) => Err(e),
    };
    if let Some(listener) = listener {
        listener.abort();
    }
    match &result {
        Ok(report) => info!(
            parent: &span,
            path = %report.path.display(),
            bytes = report.bytes,
            sha256 = %report.sha256,
            attempts = report.attempts,
            skipped = report.skipped,
            "model ready"
        ),
        Err(err) => {
            span.record("error.category", err.category());
            let line = err.termination_line();
            error!(parent: &span, error.category = err.category(), "{line}");
            if let Err(e) = std::fs::write(&args.termination_log, &line) {
                warn!(
                    parent: &span,
                    path = %args.termination_log.display(),
                    "cannot write termination log: {e}"
                );
            }
        }
    }
    result
}

async fn download(
    args: &DownloadArgs,
    url: &str,
    terminated: watch::Receiver<bool>,
) -> Result<DownloadReport, DownloadError> {
    validate_model_name(&args.model_name)?;
    let expected_sha = args.sha256.as_deref().map(validate_sha256).transpose()?;
    let source = Source::parse(url)?;
    let shown = source.display();
    let file_name = source.file_name()?;
    let kind = ArtifactKind::from_file_name(&file_name);

    let model_dir = args.dest.join(&args.model_name);
    let target = model_dir.join(args.version.to_string());
    if args.prune {
        let mut keep = args.keep_version.clone();
        keep.push(args.version);
        prune(&args.dest, &args.model_name, &keep).await;
    }
    if let Some(marker) = read_marker(&target).await
        && marker.url == shown
        && expected_sha.as_ref().is_none_or(|sha| *sha == marker.sha256)
    {
        info!(path = %target.display(), "model version already present, skipping download");
        return Ok(DownloadReport {
            bytes: marker.size,
            sha256: marker.sha256,
            path: target,
            attempts: 0,
            skipped: true,
        });
    }

    let timeout = Duration::from_secs(args.timeout.max(1));
    let stop = Stop {
        deadline: tokio::time::Instant::now() + timeout,
        terminated,
    };
    let stopped = |why: Stopped| match why {
        Stopped::Deadline => DownloadError::Timeout(format!(
            "download of {shown} did not finish within {}s",
            timeout.as_secs()
        )),
        Stopped::Terminated => {
            DownloadError::Terminated(format!("download of {shown} stopped: the downloader received SIGTERM"))
        }
    };
    let limits = args.limits();

    tokio::fs::create_dir_all(&args.dest)
        .await
        .map_err(|e| DownloadError::from_io(&format!("cannot create {}", args.dest.display()), &e))?;
    let prefix = format!(".tmp-{}-{}-", args.model_name, args.version);
    remove_stale_staging(&args.dest, &args.model_name, Some(args.version)).await;
    let staging = Staging::create(&args.dest, &prefix).await?;
    let artifact = staging.path.join("artifact");
    let content = staging.path.join("content");

    // Fetch.
    let observer = ResponseObserver::default();
    let (store, location) = source.open(
        &Credentials::from_env(args.ambient_credentials),
        args.s3_endpoint.as_deref(),
        timeout,
        &observer,
    )?;
    let fetch_span = info_span!(
        "download.fetch",
        bytes = tracing::field::Empty,
        attempts = tracing::field::Empty,
        retries = tracing::field::Empty,
        requests = tracing::field::Empty,
        duration_ms = tracing::field::Empty,
        error.category = tracing::field::Empty,
    );
    let started = Instant::now();
    let fetched = stop
        .run(
            fetch::fetch_with_retries(
                store.as_ref(),
                &location,
                &artifact,
                args.retries,
                &observer,
                &shown,
                limits,
            )
            .instrument(fetch_span.clone()),
        )
        .await;
    fetch_span.record("duration_ms", started.elapsed().as_millis() as u64);
    fetch_span.record("requests", observer.requests());
    let fetched = match fetched {
        Ok(Ok(fetched)) => fetched,
        Ok(Err(failure)) => {
            fetch_span.record("attempts", failure.attempts);
            fetch_span.record("retries", failure.attempts.saturating_sub(1));
            fetch_span.record("error.category", failure.error.category());
            return Err(failure.error);
        }
        Err(why) => {
            let err = stopped(why);
            fetch_span.record("error.category", err.category());
            return Err(err);
        }
    };
    fetch_span.record("bytes", fetched.bytes);
    fetch_span.record("attempts", fetched.attempts);
    fetch_span.record("retries", fetched.attempts - 1);

    // Verify.
    {
        let _verify = info_span!(
            "download.verify",
            sha256 = %fetched.sha256,
            error.category = tracing::field::Empty,
        )
        .entered();
        if let Some(expected) = expected_sha {
            if expected != fetched.sha256 {
                let err = DownloadError::ChecksumMismatch {
                    expected,
                    actual: fetched.sha256.clone(),
                };
                tracing::Span::current().record("error.category", err.category());
                return Err(err);
            }
            info!("checksum verified");
        }
    }

    // Unpack or place, then check and mark, all off the async threads.
    let unpack_span = info_span!(
        "download.unpack",
        kind = ?kind,
        duration_ms = tracing::field::Empty,
        error.category = tracing::field::Empty,
    );
    let started = Instant::now();
    let cancel = Arc::new(AtomicBool::new(false));
    let marker = Marker {
        url: shown.clone(),
        sha256: fetched.sha256.clone(),
        size: fetched.bytes,
        completed_at_unix: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    };
    let framework = args.framework;
    let mut unpacking = tokio::task::spawn_blocking({
        let cancel = Arc::clone(&cancel);
        let span = unpack_span.clone();
        move || {
            span.in_scope(|| {
                prepare_version(
                    &artifact, kind, &file_name, &content, &marker, framework, limits, &cancel,
                )
            })
        }
    });
    let version_root = match stop.run(&mut unpacking).await {
        Ok(joined) => joined.map_err(|e| DownloadError::Io(format!("unpack task failed: {e}")))?,
        Err(why) => {
            cancel.store(true, Ordering::Relaxed);
            // Let the task stop before the staging directory is removed under it.
            let _ = unpacking.await;
            Err(stopped(why))
        }
    };
    unpack_span.record("duration_ms", started.elapsed().as_millis() as u64);
    let version_root = version_root.inspect_err(|e| {
        unpack_span.record("error.category", e.category());
    })?;

    // Publish.
    tokio::fs::create_dir_all(&model_dir)
        .await
        .map_err(|e| DownloadError::from_io(&format!("cannot create {}", model_dir.display()), &e))?;
    if tokio::fs::symlink_metadata(&target).await.is_ok() {
        // An incomplete or different version is in the way: move it aside first; it goes
        // away with the staging directory.
        warn!(path = %target.display(), "replacing existing version directory");
        tokio::fs::rename(&target, staging.path.join("previous"))
            .await
            .map_err(|e| DownloadError::from_io(&format!("cannot move aside {}", target.display()), &e))?;
    }
    tokio::fs::rename(&version_root, &target)
        .await
        .map_err(|e| DownloadError::from_io(&format!("cannot move model into {}", target.display()), &e))?;
    drop(staging);

    Ok(DownloadReport {
        bytes: fetched.bytes,
        sha256: fetched.sha256,
        path: target,
        attempts: fetched.attempts,
        skipped: false,
    })
}

/// What ends a download before it finishes.
struct Stop {
    deadline: tokio::time::Instant,
    terminated: watch::Receiver<bool>,
}

/// Why a download was stopped.
enum Stopped {
    Deadline,
    Terminated,
}

impl Stop {
    /// Runs `work` until it finishes, the deadline passes or SIGTERM arrives.
    async fn run<F: std::future::Future>(&self, work: F) -> Result<F::Output, Stopped> {
        let mut terminated = self.terminated.clone();
        tokio::select! {
            output = work => Ok(output),
            () = tokio::time::sleep_until(self.deadline) => Err(Stopped::Deadline),
            // A closed channel (no signal listener) never stops the work.
            Ok(_) = terminated.wait_for(|t| *t) => Err(Stopped::Terminated),
        }
    }
}

/// Builds the version directory's contents in `content`, checks them against what
/// `framework`'s server loads, and returns the directory to rename into place (see the module
/// docs for the flattening rule).
#[allow(clippy::too_many_arguments)]
fn prepare_version(
    artifact: &Path,
    kind: ArtifactKind,
    file_name: &str,
    content: &Path,
    marker: &Marker,
    framework: Framework,
    limits: Limits,
    cancel: &Arc<AtomicBool>,
) -> Result<PathBuf, DownloadError> {
    let io_err = |what: &str, e: std::io::Error| DownloadError::from_io(&format!("{what} {}", content.display()), &e);
    std::fs::create_dir(content).map_err(|e| io_err("cannot create", e))?;
    let root = if kind == ArtifactKind::File {
        std::fs::rename(artifact, content.join(file_name)).map_err(|e| io_err("cannot move artifact into", e))?;
        content.to_path_buf()
    } else {
        archive::unpack(artifact, kind, content, limits, cancel).map_err(|e| {
            if cancel.load(Ordering::Relaxed) {
                DownloadError::Timeout("download deadline passed while unpacking".into())
            } else {
                e
            }
        })?;
        // The archive is no longer needed; free its space before the rename.
        let _ = std::fs::remove_file(artifact);
        let root = archive::content_root(content)?;
        archive::check_symlinks(&root)?;
        root
    };
    layout::check(framework, &root, MARKER_FILE)?;
    let json =
        serde_json::to_vec_pretty(marker).map_err(|e| DownloadError::Io(format!("cannot encode marker: {e}")))?;
    std::fs::write(root.join(MARKER_FILE), json).map_err(|e| io_err("cannot write marker in", e))?;
    info!(root = %root.display(), "model files prepared");
    Ok(root)
}

async fn read_marker(target: &Path) -> Option<Marker> {
    let bytes = tokio::fs::read(target.join(MARKER_FILE)).await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Removes the model's version directories other than `keep`, and the temporary directories
/// of every earlier download of the model (of any version) that was killed before it could
/// clean up. Failures are logged: what cannot be removed only takes space.
async fn prune(dest: &Path, model_name: &str, keep: &[u64]) {
    let model_dir = dest.join(model_name);
    if let Ok(mut entries) = tokio::fs::read_dir(&model_dir).await {
        while let Ok(Some(entry)) = entries.next_entry().await {
            let name = entry.file_name();
            let Some(version) = name.to_str().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            if !keep.contains(&version) {
                info!(path = %entry.path().display(), "removing a version no pod serves");
                if let Err(e) = tokio::fs::remove_dir_all(entry.path()).await {
                    warn!(path = %entry.path().display(), error = %e, "cannot remove an old version");
                }
            }
        }
    }
    remove_stale_staging(dest, model_name, None).await;
}

/// Removes the temporary directories of earlier downloads of the model that were killed
/// before they could clean up: of `version` only, or of every version.
async fn remove_stale_staging(dest: &Path, model_name: &str, version: Option<u64>) {
    let Ok(mut entries) = tokio::fs::read_dir(dest).await else {
        return;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        if is_staging_of(&entry.file_name().to_string_lossy(), model_name, version) {
            warn!(path = %entry.path().display(), "removing the temporary directory of a killed download");
            let _ = tokio::fs::remove_dir_all(entry.path()).await;
        }
    }
}

/// Whether `name` is exactly `.tmp-<model_name>-<version>-<16 hex digits>` (of `version` when
/// given): a bare prefix match would also catch another model's (`resnet` version 1 and
/// `resnet-1` version 5).
fn is_staging_of(name: &str, model_name: &str, version: Option<u64>) -> bool {
    let Some((v, suffix)) = name
        .strip_prefix(".tmp-")
        .and_then(|n| n.strip_prefix(model_name))
        .and_then(|n| n.strip_prefix('-'))
        .and_then(|n| n.split_once('-'))
    else {
        return false;
    };
    let is_version = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
    is_version
        && version.is_none_or(|version| v.parse() == Ok(version))
        && suffix.len() == 16
        && suffix.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The temporary directory; removed when dropped, whatever happened.
struct Staging {
    path: PathBuf,
}

impl Staging {
    async fn create(dest: &Path, prefix: &str) -> Result<Self, DownloadError> {
        let suffix: u64 = rand::rng().random();
        let path = dest.join(format!("{prefix}{suffix:016x}"));
        tokio::fs::create_dir(&path)
            .await
            .map_err(|e| DownloadError::from_io(&format!("cannot create {}", path.display()), &e))?;
        Ok(Self { path })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(path = %self.path.display(), "cannot remove temporary directory: {e}");
        }
    }
}

/// Entry points for the fuzz targets in `tests/fuzz`: the parsers of hostile input, reached
/// without a network or a volume. Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    use std::path::{Path, PathBuf};

    use super::{ArtifactKind, DownloadError, Limits, archive, redact, source::Source};

    /// Parses a model URL as the downloader does: the URL as shown and the artifact's file name.
    pub fn parse_url(raw: &str) -> Result<(String, String), DownloadError> {
        let source = Source::parse(raw)?;
        Ok((source.display(), source.file_name()?))
    }

    /// Redacts every URL inside a free-form message, as done for lower layers' errors.
    pub fn scrub_message(message: &str) -> String {
        redact::scrub_message(message)
    }

    /// Whether a URL as shown still carries a credential: userinfo, a query parameter named
    /// like one, or (when it does not parse) any query or fragment.
    pub fn leaks_credentials(shown: &str) -> bool {
        match url::Url::parse(shown) {
            Ok(url) => {
                !url.username().is_empty()
                    || url.password().is_some()
                    || url.query_pairs().any(|(name, _)| redact::is_credential_param(&name))
            }
            Err(_) => shown.contains(['?', '#']),
        }
    }

    /// Unpacks `data` as an archive of `kind` into the empty directory `into` within `limits`,
    /// then checks the result as before publishing it; returns the version directory.
    pub fn unpack(data: &[u8], kind: ArtifactKind, into: &Path, limits: Limits) -> Result<PathBuf, DownloadError> {
        archive::unpack_from(std::io::Cursor::new(data), kind, into, limits)?;
        let root = archive::content_root(into)?;
        archive::check_symlinks(&root)?;
        Ok(root)
    }
}

/// A DNS-1123 label: it becomes a directory name, so anything else (`..`, `/`) is refused.
fn validate_model_name(name: &str) -> Result<(), DownloadError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(DownloadError::InvalidArgument(format!(
            "model name {name:?} is not a DNS-1123 label"
        )))
    }
}

/// Accepts a 64-digit hex digest; upper case is folded to the canonical lower case.
fn validate_sha256(sha: &str) -> Result<String, DownloadError> {
    if sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(sha.to_ascii_lowercase())
    } else {
        Err(DownloadError::InvalidArgument(format!(
            "--sha256 must be 64 hex digits, got {:?}",
            sha.chars().take(80).collect::<String>()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    #[command(version, propagate_version = true)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Command {
        Download(DownloadArgs),
    }

    #[test]
    fn parses_flags_with_defaults() {
        let cli = Cli::try_parse_from([
            "mlmodel-operator",
            "download",
            "--url",
            "https://h/m.tar.gz",
            "--dest",
            "/models",
            "--model-name",
            "resnet",
            "--version",
            "7",
        ])
        .unwrap();
        let Command::Download(args) = cli.command;
        assert_eq!(args.version, 7);
        assert_eq!(args.timeout, 600);
        assert_eq!(args.retries, 3);
        assert_eq!(args.termination_log, PathBuf::from("/dev/termination-log"));
        assert!(args.sha256.is_none());
        assert_eq!(args.max_unpacked_bytes, None);
        assert_eq!(args.max_entries, DEFAULT_MAX_ENTRIES);
        assert!(!args.ambient_credentials);
        assert_eq!(args.model_url().unwrap(), "https://h/m.tar.gz");
    }

    fn parse(extra: &[&str]) -> Result<DownloadArgs, clap::Error> {
        let base = [
            "mlmodel-operator",
            "download",
            "--dest=/models",
            "--model-name=m",
            "--version=1",
        ];
        let cli = Cli::try_parse_from(base.iter().chain(extra))?;
        let Command::Download(args) = cli.command;
        Ok(args)
    }

    #[test]
    fn exactly_one_of_url_and_url_env() {
        assert!(parse(&[]).is_err(), "a source is required");
        assert!(parse(&["--url=https://h/m.bin", "--url-env=MODEL_URL_SECRET"]).is_err());
        let args = parse(&["--url-env=PATH"]).unwrap();
        assert_eq!(args.url_env.as_deref(), Some("PATH"));
        assert!(args.url.is_none());
        let args = parse(&["--url-env=MLMODEL_TEST_SURELY_UNSET_VARIABLE"]).unwrap();
        let err = args.model_url().unwrap_err();
        assert_eq!(err.category(), "InvalidArgument");
        assert!(err.to_string().contains("MLMODEL_TEST_SURELY_UNSET_VARIABLE"), "{err}");
    }

    #[test]
    fn limit_and_credential_flags() {
        let args = parse(&[
            "--url=s3://b/m.tar",
            "--max-unpacked-bytes=1073741824",
            "--max-entries=10",
            "--ambient-credentials",
        ])
        .unwrap();
        assert_eq!(
            args.limits(),
            Limits {
                max_bytes: Some(1 << 30),
                max_entries: 10
            }
        );
        assert!(args.ambient_credentials);
        assert!(parse(&["--url=s3://b/m.tar", "--max-unpacked-bytes=-1"]).is_err());
    }

    #[test]
    fn model_names() {
        assert!(validate_model_name("resnet-50").is_ok());
        for bad in ["", "-a", "a-", "A", "a/b", "..", &"a".repeat(64)] {
            assert_eq!(validate_model_name(bad).unwrap_err().category(), "InvalidArgument");
        }
    }

    #[tokio::test]
    async fn only_this_versions_stale_staging_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let ours = tmp.path().join(".tmp-resnet-1-0123456789abcdef");
        let other_model = tmp.path().join(".tmp-resnet-1-5-0123456789abcdef");
        std::fs::create_dir(&ours).unwrap();
        std::fs::create_dir(&other_model).unwrap();
        remove_stale_staging(tmp.path(), "resnet", Some(1)).await;
        assert!(!ours.exists());
        assert!(other_model.exists());
    }

    #[tokio::test]
    async fn pruning_keeps_this_version_and_the_served_ones_and_no_killed_downloads() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = |p: &str| {
            let path = tmp.path().join(p);
            std::fs::create_dir_all(&path).unwrap();
            std::fs::write(path.join("saved_model.pb"), b"x").unwrap();
            path
        };
        let (v1, v2, v3) = (dir("resnet/1"), dir("resnet/2"), dir("resnet/3"));
        let not_a_version = dir("resnet/notes");
        let killed = [
            dir(".tmp-resnet-2-0123456789abcdef"),
            dir(".tmp-resnet-1-fedcba9876543210"),
        ];
        let other_models = [dir("resnet-1/1"), dir(".tmp-resnet-1-5-0123456789abcdef")];
        let args = parse(&["--url=https://h/m.tar", "--prune", "--keep-version=2"]).unwrap();
        assert!(args.prune);
        assert_eq!(args.keep_version, [2]);

        prune(tmp.path(), "resnet", &[2, 3]).await;
        assert!(!v1.exists(), "a version no pod serves is removed");
        assert!(v2.exists() && v3.exists());
        assert!(not_a_version.exists(), "only version directories are the downloader's");
        for path in &killed {
            assert!(!path.exists(), "a killed download's {} is removed", path.display());
        }
        for path in &other_models {
            assert!(path.exists(), "{} is another model's", path.display());
        }
    }

    #[test]
    fn digests() {
        assert_eq!(validate_sha256(&"AB".repeat(32)).unwrap(), "ab".repeat(32));
        assert!(validate_sha256("abc").is_err());
        assert!(validate_sha256(&"g".repeat(64)).is_err());
    }
}

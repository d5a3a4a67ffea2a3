//! Where an artifact comes from: URL parsing, building the `object_store` client for it,
//! and classifying the client's errors into transient and permanent ones.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};
use object_store::gcp::{GcpCredential, GoogleCloudStorageBuilder};
use object_store::http::HttpBuilder;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, HeaderMap, HeaderValue, ObjectStore, RetryConfig, StaticCredentialProvider};
use url::Url;

use super::error::DownloadError;
use super::redact::{redact_url, scrub_message};
use crate::percent_decode;

/// Longest stall between two reads of a response before the attempt counts as failed.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a TCP/TLS connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed `--url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// `http://` or `https://`: fetched as is, query string included.
    Http {
        /// The URL without userinfo (which becomes basic auth instead).
        url: Url,
        /// `user:password` taken from the URL, if any.
        userinfo: Option<(String, String)>,
    },
    /// `s3://bucket/key`.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Object key (percent-decoded).
        key: String,
    },
    /// `gs://bucket/key`.
    Gcs {
        /// Bucket name.
        bucket: String,
        /// Object key (percent-decoded).
        key: String,
    },
}

impl Source {
    /// Parses and validates a model URL.
    pub(crate) fn parse(raw: &str) -> Result<Self, DownloadError> {
        let shown = redact_url(raw);
        let invalid = |why: &str| DownloadError::InvalidUrl(format!("{why}: {shown}"));
        let mut url = Url::parse(raw).map_err(|e| invalid(&format!("cannot parse URL ({e})")))?;
        let source = match url.scheme() {
            "http" | "https" => {
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(invalid("URL has no host"));
                }
                let userinfo = if url.username().is_empty() {
                    None
                } else {
                    let user =
                        percent_decode(url.username()).ok_or_else(|| invalid("URL user name is not valid UTF-8"))?;
                    let password = percent_decode(url.password().unwrap_or(""))
                        .ok_or_else(|| invalid("URL password is not valid UTF-8"))?;
                    Some((user, password))
                };
                // Credentials travel in the Authorization header, never in the request line.
                let _ = url.set_username("");
                let _ = url.set_password(None);
                url.set_fragment(None);
                Self::Http { url, userinfo }
            }
            scheme @ ("s3" | "gs") => {
                let bucket = url
                    .host_str()
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| invalid("URL has no bucket"))?
                    .to_string();
                if url.query().is_some() {
                    return Err(invalid("object-store URLs take no query string"));
                }
                let key = percent_decode(url.path().trim_start_matches('/'))
                    .ok_or_else(|| invalid("object key is not valid UTF-8"))?;
                ObjectPath::parse(&key).map_err(|e| invalid(&format!("invalid object key ({e})")))?;
                if scheme == "s3" {
                    Self::S3 { bucket, key }
                } else {
                    Self::Gcs { bucket, key }
                }
            }
            other => {
                return Err(invalid(&format!(
                    "unsupported scheme `{other}` (expected http, https, s3 or gs)"
                )));
            }
        };
        source.file_name()?;
        Ok(source)
    }

    /// The last path segment: the name a single-file artifact is stored under, and what
    /// decides whether the artifact is unpacked.
    pub(crate) fn file_name(&self) -> Result<String, DownloadError> {
        let last = match self {
            Self::Http { url, .. } => {
                let segment = url.path_segments().and_then(|mut s| s.next_back());
                segment.and_then(percent_decode)
            }
            Self::S3 { key, .. } | Self::Gcs { key, .. } => key.rsplit('/').next().map(str::to_string),
        };
        match last {
            Some(name) if !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0']) => {
                Ok(name)
            }
            _ => Err(DownloadError::InvalidUrl(format!(
                "URL does not name a file (empty or invalid last path segment): {}",
                self.display()
            ))),
        }
    }

    /// The URL as shown in logs and messages, without credentials.
    pub(crate) fn display(&self) -> String {
        match self {
            Self::Http { url, .. } => redact_url(url.as_str()),
            Self::S3 { bucket, key } => format!("s3://{bucket}/{key}"),
            Self::Gcs { bucket, key } => format!("gs://{bucket}/{key}"),
        }
    }

    /// Builds the client for this source and the location of the artifact in it.
    ///
    /// `object_store`'s own retries are disabled so that every retry is the downloader's
    /// (counted, logged, backed off with jitter, bounded by `--retries`). Its whole-request
    /// timeout is disabled too, because large artifacts take longer than any fixed bound;
    /// the overall `--timeout` deadline and a per-read stall timeout apply instead.
    pub(crate) fn open(
        &self,
        credentials: &Credentials,
        s3_endpoint: Option<&str>,
        deadline: Duration,
        observer: &ResponseObserver,
    ) -> Result<(Arc<dyn ObjectStore>, ObjectPath), DownloadError> {
        let no_retries = RetryConfig {
            max_retries: 0,
            ..RetryConfig::default()
        };
        let options = ClientOptions::new()
            .with_timeout_disabled()
            .with_connect_timeout(CONNECT_TIMEOUT.min(deadline))
            .with_read_timeout(READ_TIMEOUT.min(deadline));
        let connector = ObservingConnector {
            observer: observer.clone(),
        };
        let build_failed = |e: object_store::Error| {
            DownloadError::InvalidUrl(format!(
                "cannot configure a client for {}: {}",
                self.display(),
                scrub_message(&e.to_string())
            ))
        };
        match self {
            Self::Http { url, userinfo } => {
                let mut options = options.with_allow_http(url.scheme() == "http");
                let headers = credentials.http_headers(userinfo.as_ref())?;
                if !headers.is_empty() {
                    options = options.with_default_headers(headers);
                }
                // The store's base URL is the artifact's full URL (query included) and the
                // object path is empty, so the request goes to exactly that URL.
                let store = HttpBuilder::new()
                    .with_url(url.as_str())
                    .with_client_options(options)
                    .with_retry(no_retries)
                    .with_http_connector(connector)
                    .build()
                    .map_err(build_failed)?;
                Ok((Arc::new(store), ObjectPath::default()))
            }
            Self::S3 { bucket, key } => {
                let mut builder = credentials
                    .s3_builder()
                    .with_bucket_name(bucket)
                    .with_client_options(options)
                    .with_retry(no_retries)
                    .with_http_connector(connector);
                if let Some(endpoint) = s3_endpoint.filter(|e| !e.is_empty()) {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_virtual_hosted_style_request(false)
                        .with_allow_http(true);
                }
                let store = builder.build().map_err(build_failed)?;
                let path = ObjectPath::parse(key)
                    .map_err(|e| DownloadError::InvalidUrl(format!("invalid object key {key}: {e}")))?;
                Ok((Arc::new(store), path))
            }
            Self::Gcs { bucket, key } => {
                let store = credentials
                    .gcs_builder()
                    .with_bucket_name(bucket)
                    .with_client_options(options)
                    .with_retry(no_retries)
                    .with_http_connector(connector)
                    .build()
                    .map_err(|e| {
                        DownloadError::AuthFailed(format!(
                            "cannot configure GCS credentials for {}: {}",
                            self.display(),
                            scrub_message(&e.to_string())
                        ))
                    })?;
                let path = ObjectPath::parse(key)
                    .map_err(|e| DownloadError::InvalidUrl(format!("invalid object key {key}: {e}")))?;
                Ok((Arc::new(store), path))
            }
        }
    }
}

/// How an `s3://` or `gs://` client authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialMode {
    /// With the keys given in the environment (which the Job fills from the model's Secret).
    Explicit,
    /// Without credentials: requests are not signed, so only public objects can be read.
    Anonymous,
    /// With whatever the client library finds: web identity, container or instance
    /// metadata credentials, profiles, application default credentials. Only with
    /// `--ambient-credentials`, as these are the node's rights, not the model owner's.
    Ambient,
}

/// Credentials from the environment: only the variables named here are read, whatever else
/// the environment holds, unless ambient credentials are allowed.
#[derive(Clone, Default)]
pub(crate) struct Credentials {
    /// `HTTP_BEARER_TOKEN`.
    pub(crate) bearer_token: Option<String>,
    /// `HTTP_USERNAME` and `HTTP_PASSWORD`.
    pub(crate) basic: Option<(String, String)>,
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    aws_keys: Option<(String, String)>,
    /// `AWS_SESSION_TOKEN`.
    aws_session_token: Option<String>,
    /// `AWS_REGION`, else `AWS_DEFAULT_REGION`.
    aws_region: Option<String>,
    /// `GOOGLE_SERVICE_ACCOUNT_KEY`: the JSON key itself.
    gcs_key: Option<String>,
    /// `GOOGLE_APPLICATION_CREDENTIALS`: a path to a credentials file.
    gcs_credentials_path: Option<String>,
    /// Whether the client libraries' own credential chains may be used (`--ambient-credentials`).
    ambient: bool,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |present: bool| if present { "<redacted>" } else { "<none>" };
        f.debug_struct("Credentials")
            .field("bearer_token", &shown(self.bearer_token.is_some()))
            .field("basic", &shown(self.basic.is_some()))
            .field("aws_keys", &shown(self.aws_keys.is_some()))
            .field("aws_session_token", &shown(self.aws_session_token.is_some()))
            .field("aws_region", &self.aws_region)
            .field("gcs_key", &shown(self.gcs_key.is_some()))
            .field("gcs_credentials_path", &self.gcs_credentials_path)
            .field("ambient", &self.ambient)
            .finish()
    }
}

impl Credentials {
    /// Reads the credential variables from the process environment.
    pub(crate) fn from_env(ambient: bool) -> Self {
        Self::from_lookup(|name| std::env::var(name).ok(), ambient)
    }

    /// Reads the credential variables through `env` (empty values count as absent).
    pub(crate) fn from_lookup(env: impl Fn(&str) -> Option<String>, ambient: bool) -> Self {
        let var = |name: &str| env(name).filter(|v| !v.is_empty());
        Self {
            bearer_token: var("HTTP_BEARER_TOKEN"),
            basic: var("HTTP_USERNAME").map(|user| (user, var("HTTP_PASSWORD").unwrap_or_default())),
            aws_keys: var("AWS_ACCESS_KEY_ID").zip(var("AWS_SECRET_ACCESS_KEY")),
            aws_session_token: var("AWS_SESSION_TOKEN"),
            aws_region: var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")),
            gcs_key: var("GOOGLE_SERVICE_ACCOUNT_KEY"),
            gcs_credentials_path: var("GOOGLE_APPLICATION_CREDENTIALS"),
            ambient,
        }
    }

    /// How an `s3://` client authenticates.
    pub(crate) fn s3_mode(&self) -> CredentialMode {
        self.mode(self.aws_keys.is_some())
    }

    /// How a `gs://` client authenticates.
    pub(crate) fn gcs_mode(&self) -> CredentialMode {
        self.mode(self.gcs_key.is_some() || self.gcs_credentials_path.is_some())
    }

    fn mode(&self, explicit: bool) -> CredentialMode {
        if explicit {
            CredentialMode::Explicit
        } else if self.ambient {
            CredentialMode::Ambient
        } else {
            CredentialMode::Anonymous
        }
    }

    /// An S3 client builder configured with exactly these credentials.
    pub(crate) fn s3_builder(&self) -> AmazonS3Builder {
        let builder = match (self.s3_mode(), &self.aws_keys) {
            (CredentialMode::Explicit, Some((id, secret))) => {
                let builder = AmazonS3Builder::new()
                    .with_access_key_id(id)
                    .with_secret_access_key(secret);
                match &self.aws_session_token {
                    Some(token) => builder.with_token(token),
                    None => builder,
                }
            }
            (CredentialMode::Ambient, _) => AmazonS3Builder::from_env(),
            _ => AmazonS3Builder::new().with_skip_signature(true),
        };
        builder.with_region(self.aws_region.as_deref().unwrap_or("us-east-1"))
    }

    /// A GCS client builder configured with exactly these credentials.
    pub(crate) fn gcs_builder(&self) -> GoogleCloudStorageBuilder {
        match self.gcs_mode() {
            CredentialMode::Explicit => {
                let builder = GoogleCloudStorageBuilder::new();
                match (&self.gcs_key, &self.gcs_credentials_path) {
                    (Some(key), _) => builder.with_service_account_key(key),
                    (None, Some(path)) => builder.with_application_credentials(path),
                    (None, None) => builder,
                }
            }
            CredentialMode::Ambient => GoogleCloudStorageBuilder::from_env(),
            // A fixed empty credential keeps the builder from looking for application
            // default credentials on its own; unsigned requests never use it.
            CredentialMode::Anonymous => GoogleCloudStorageBuilder::new()
                .with_skip_signature(true)
                .with_credentials(Arc::new(StaticCredentialProvider::new(GcpCredential {
                    bearer: String::new(),
                }))),
        }
    }

    /// The `Authorization` header for an HTTP(S) source. A bearer token wins over basic
    /// auth; environment credentials win over userinfo in the URL.
    pub(crate) fn http_headers(&self, url_userinfo: Option<&(String, String)>) -> Result<HeaderMap, DownloadError> {
        let value = if let Some(token) = &self.bearer_token {
            Some(format!("Bearer {token}"))
        } else {
            self.basic
                .as_ref()
                .or(url_userinfo)
                .map(|(user, password)| format!("Basic {}", base64(format!("{user}:{password}").as_bytes())))
        };
        let mut headers = HeaderMap::new();
        if let Some(value) = value {
            let mut value = HeaderValue::from_str(&value).map_err(|_| {
                DownloadError::AuthFailed("HTTP credentials contain characters not allowed in a header".into())
            })?;
            value.set_sensitive(true);
            headers.insert("authorization", value);
        }
        Ok(headers)
    }
}

/// Standard base64 with padding (RFC 4648), for HTTP basic auth.
fn base64(input: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(input)
}

/// Records what the HTTP layer saw, because `object_store` reports 5xx and 429 responses
/// only as opaque errors: the status of the last response and the number of requests.
#[derive(Debug, Clone, Default)]
pub(crate) struct ResponseObserver {
    last_status: Arc<AtomicU16>,
    requests: Arc<AtomicU64>,
}

impl ResponseObserver {
    /// Forgets the last status, before a new attempt.
    pub(crate) fn reset(&self) {
        self.last_status.store(0, Ordering::Relaxed);
    }

    /// The status of the last response, if one was received since [`reset`](Self::reset).
    pub(crate) fn last_status(&self) -> Option<u16> {
        match self.last_status.load(Ordering::Relaxed) {
            0 => None,
            status => Some(status),
        }
    }

    /// How many HTTP requests were sent.
    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct ObservingConnector {
    observer: ResponseObserver,
}

impl HttpConnector for ObservingConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(ObservingService {
            inner,
            observer: self.observer.clone(),
        }))
    }
}

#[derive(Debug)]
struct ObservingService {
    inner: HttpClient,
    observer: ResponseObserver,
}

type ResponseFuture<'a> = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'a>>;

impl HttpService for ObservingService {
    fn call<'life0, 'async_trait>(&'life0 self, req: HttpRequest) -> ResponseFuture<'async_trait>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.observer.requests.fetch_add(1, Ordering::Relaxed);
            let response = self.inner.execute(req).await?;
            self.observer
                .last_status
                .store(response.status().as_u16(), Ordering::Relaxed);
            Ok(response)
        })
    }
}

/// A failed attempt: the error, and whether trying again may help.
#[derive(Debug)]
pub(crate) struct AttemptError {
    /// What went wrong.
    pub(crate) error: DownloadError,
    /// Whether the failure is transient (connection, 5xx, 429, truncated body).
    pub(crate) transient: bool,
}

impl AttemptError {
    pub(crate) fn permanent(error: DownloadError) -> Self {
        Self {
            error,
            transient: false,
        }
    }

    pub(crate) fn transient(message: String) -> Self {
        Self {
            error: DownloadError::Unavailable(message),
            transient: true,
        }
    }
}

/// Classifies an error from `object_store` (request or body) for the source shown as
/// `shown`, using the last HTTP status the observer saw.
pub(crate) fn classify(err: &object_store::Error, status: Option<u16>, shown: &str) -> AttemptError {
    let status = status.filter(|s| !(200..300).contains(s));
    let http_status = |s: u16| format!("HTTP {s} fetching {shown}");
    match (err, status) {
        (object_store::Error::NotFound { .. }, s) => {
            AttemptError::permanent(DownloadError::NotFound(http_status(s.unwrap_or(404))))
        }
        (object_store::Error::Unauthenticated { .. } | object_store::Error::PermissionDenied { .. }, s) => {
            AttemptError::permanent(DownloadError::AuthFailed(match s {
                Some(s) => http_status(s),
                None => format!("access denied fetching {shown}"),
            }))
        }
        (_, Some(s)) => match s {
            408 | 429 | 500..=599 => AttemptError::transient(http_status(s)),
            404 | 410 => AttemptError::permanent(DownloadError::NotFound(http_status(s))),
            401 | 403 | 407 => AttemptError::permanent(DownloadError::AuthFailed(http_status(s))),
            300..=399 => AttemptError::permanent(DownloadError::InvalidUrl(format!(
                "{} (redirect not followed; wrong region or endpoint?)",
                http_status(s)
            ))),
            _ => AttemptError::permanent(DownloadError::InvalidUrl(http_status(s))),
        },
        (err, None) => match find_http_error(err) {
            Some(http) => AttemptError::transient(format!(
                "{} fetching {shown}: {}",
                transport_kind(http.kind()),
                scrub_message(&root_cause(http))
            )),
            // Neither a status nor a transport failure: e.g. a response without
            // Content-Length, or credentials that cannot be loaded. Retrying won't help.
            None => AttemptError::permanent(DownloadError::Unavailable(format!(
                "unusable response fetching {shown}: {}",
                scrub_message(&root_cause(err))
            ))),
        },
    }
}

fn transport_kind(kind: HttpErrorKind) -> &'static str {
    match kind {
        HttpErrorKind::Connect => "connection failed",
        HttpErrorKind::Request => "request failed",
        HttpErrorKind::Timeout => "read timed out",
        HttpErrorKind::Interrupted => "connection interrupted",
        HttpErrorKind::Decode => "response body broken",
        _ => "transport error",
    }
}

fn find_http_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a HttpError> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(http) = e.downcast_ref::<HttpError>() {
            return Some(http);
        }
        current = e.source();
    }
    None
}

/// The innermost error's message: the lower layers' outer messages tend to repeat the
/// request URL, the innermost one says what actually happened.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_supported_schemes() {
        let http = Source::parse("https://u:p%40ss@example.com/m/model.tar.gz?sig=1").unwrap();
        match &http {
            Source::Http { url, userinfo } => {
                assert_eq!(url.as_str(), "https://example.com/m/model.tar.gz?sig=1");
                assert_eq!(userinfo, &Some(("u".to_string(), "p@ss".to_string())));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(http.file_name().unwrap(), "model.tar.gz");
        assert_eq!(http.display(), "https://example.com/m/model.tar.gz");

        let s3 = Source::parse("s3://bucket/dir/my%20model.zip").unwrap();
        assert_eq!(
            s3,
            Source::S3 {
                bucket: "bucket".into(),
                key: "dir/my model.zip".into()
            }
        );
        assert_eq!(s3.file_name().unwrap(), "my model.zip");

        let gs = Source::parse("gs://b/m.onnx").unwrap();
        assert_eq!(gs.display(), "gs://b/m.onnx");
    }

    #[test]
    fn rejects_bad_urls() {
        for raw in [
            "; rm -rf /",
            "$(touch /tmp/x)",
            "`id`",
            "ftp://h/m.bin",
            "file:///etc/passwd",
            "https://h/",
            "https://h",
            "s3://bucket/",
            "s3:///key",
            "s3://bucket/a//b",
            "https://h/%2e%2e",
        ] {
            let err = Source::parse(raw).expect_err(raw);
            assert_eq!(err.category(), "InvalidURL", "{raw}");
        }
    }

    #[test]
    fn basic_auth_header() {
        let creds = Credentials {
            basic: Some(("Aladdin".into(), "open sesame".into())),
            ..Credentials::default()
        };
        let headers = creds.http_headers(None).unwrap();
        assert_eq!(
            headers.get("authorization").unwrap(),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        let bearer = Credentials {
            bearer_token: Some("tok".into()),
            ..Credentials::default()
        };
        let headers = bearer.http_headers(Some(&("u".into(), "p".into()))).unwrap();
        assert_eq!(headers.get("authorization").unwrap(), "Bearer tok");
        assert!(!format!("{bearer:?}").contains("tok\""));
    }

    fn credentials(vars: &[(&str, &str)], ambient: bool) -> Credentials {
        let env: std::collections::HashMap<String, String> =
            vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Credentials::from_lookup(|name| env.get(name).cloned(), ambient)
    }

    #[test]
    fn credential_mode_follows_the_secret_and_the_ambient_flag() {
        use CredentialMode::{Ambient, Anonymous, Explicit};
        let aws = [("AWS_ACCESS_KEY_ID", "AKID"), ("AWS_SECRET_ACCESS_KEY", "s")];
        let node = [
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/secrets/token"),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/node"),
            ("AWS_PROFILE", "default"),
            ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/credentials"),
        ];
        let gcs = [("GOOGLE_SERVICE_ACCOUNT_KEY", "{}")];
        let adc = [("GOOGLE_APPLICATION_CREDENTIALS", "/etc/gcs/key.json")];
        for (vars, ambient, s3, gs) in [
            (&[][..], false, Anonymous, Anonymous),
            (&node[..], false, Anonymous, Anonymous),
            (&[("AWS_ACCESS_KEY_ID", "AKID")][..], false, Anonymous, Anonymous),
            (
                &[("AWS_ACCESS_KEY_ID", ""), ("AWS_SECRET_ACCESS_KEY", "")][..],
                false,
                Anonymous,
                Anonymous,
            ),
            (&aws[..], false, Explicit, Anonymous),
            (&gcs[..], false, Anonymous, Explicit),
            (&adc[..], false, Anonymous, Explicit),
            (&[][..], true, Ambient, Ambient),
            (&node[..], true, Ambient, Ambient),
            (&aws[..], true, Explicit, Ambient),
        ] {
            let creds = credentials(vars, ambient);
            assert_eq!(creds.s3_mode(), s3, "{vars:?} ambient={ambient}");
            assert_eq!(creds.gcs_mode(), gs, "{vars:?} ambient={ambient}");
        }
    }

    #[test]
    fn s3_builder_signs_only_with_the_given_keys() {
        use object_store::aws::AmazonS3ConfigKey as Key;
        let anonymous = credentials(&[("AWS_WEB_IDENTITY_TOKEN_FILE", "/t")], false).s3_builder();
        assert_eq!(anonymous.get_config_value(&Key::SkipSignature).as_deref(), Some("true"));
        assert_eq!(anonymous.get_config_value(&Key::AccessKeyId), None);
        assert_eq!(anonymous.get_config_value(&Key::Region).as_deref(), Some("us-east-1"));

        let explicit = credentials(
            &[
                ("AWS_ACCESS_KEY_ID", "AKID"),
                ("AWS_SECRET_ACCESS_KEY", "s"),
                ("AWS_SESSION_TOKEN", "t"),
                ("AWS_DEFAULT_REGION", "eu-west-1"),
            ],
            false,
        )
        .s3_builder();
        assert_eq!(explicit.get_config_value(&Key::SkipSignature).as_deref(), Some("false"));
        assert_eq!(explicit.get_config_value(&Key::AccessKeyId).as_deref(), Some("AKID"));
        assert_eq!(explicit.get_config_value(&Key::Token).as_deref(), Some("t"));
        assert_eq!(explicit.get_config_value(&Key::Region).as_deref(), Some("eu-west-1"));
    }

    #[test]
    fn gcs_builder_without_a_key_is_unsigned() {
        use object_store::gcp::GoogleConfigKey as Key;
        let anonymous = credentials(&[], false).gcs_builder();
        assert_eq!(anonymous.get_config_value(&Key::SkipSignature).as_deref(), Some("true"));
        let keyed = credentials(&[("GOOGLE_SERVICE_ACCOUNT_KEY", "{}")], false).gcs_builder();
        assert_eq!(keyed.get_config_value(&Key::SkipSignature).as_deref(), Some("false"));
        assert_eq!(keyed.get_config_value(&Key::ServiceAccountKey).as_deref(), Some("{}"));
    }

    #[test]
    fn credentials_debug_hides_secrets() {
        let creds = credentials(
            &[("AWS_ACCESS_KEY_ID", "AKID"), ("AWS_SECRET_ACCESS_KEY", "hunter2")],
            false,
        );
        let shown = format!("{creds:?}");
        assert!(!shown.contains("AKID") && !shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn base64_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%2Fc").as_deref(), Some("a b/c"));
        assert_eq!(percent_decode("100%").as_deref(), Some("100%"));
        assert_eq!(percent_decode("%zz").as_deref(), Some("%zz"));
        assert_eq!(percent_decode("%ff"), None);
    }
}

//! The downloader's error type and its stable failure categories.

use std::io;

/// Longest termination-log line written, in bytes. Kubernetes keeps at most 4 KiB of the
/// termination message; one short line is what the operator surfaces in status.
const MAX_LINE_BYTES: usize = 1024;

/// Why a download failed.
///
/// Each variant maps to a stable [`category`](DownloadError::category) that prefixes the
/// line written to the termination log (`<Category>: <message>`). Messages never contain
/// credentials: URLs in them are passed through [`redact_url`](super::redact_url).
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The URL cannot be parsed, has an unsupported scheme, names no object, or the server
    /// rejected the request as malformed.
    #[error("{0}")]
    InvalidUrl(String),
    /// Another argument (model name, digest) is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The object does not exist (HTTP 404/410).
    #[error("{0}")]
    NotFound(String),
    /// The credentials were missing, wrong or insufficient (HTTP 401/403/407).
    #[error("{0}")]
    AuthFailed(String),
    /// The source kept failing transiently (5xx, 429, connection errors, truncated bodies)
    /// until the retries ran out, or answered in a way the downloader cannot use.
    #[error("{0}")]
    Unavailable(String),
    /// The overall deadline (`--timeout`) passed.
    #[error("{0}")]
    Timeout(String),
    /// The downloader was asked to stop (SIGTERM) before it finished.
    #[error("{0}")]
    Terminated(String),
    /// The artifact's SHA-256 differs from the expected one.
    #[error("expected {expected}, got {actual}")]
    ChecksumMismatch {
        /// The digest given with `--sha256`.
        expected: String,
        /// The digest of the bytes fetched.
        actual: String,
    },
    /// The archive is corrupt, unsupported, has entries escaping the target directory, or
    /// passes a limit (`--max-unpacked-bytes`, `--max-entries`).
    #[error("{0}")]
    InvalidArchive(String),
    /// The unpacked model lacks what its framework's server loads.
    #[error("{0}")]
    InvalidModelLayout(String),
    /// The volume ran out of space or quota (ENOSPC, EDQUOT).
    #[error("{0}")]
    DiskFull(String),
    /// Any other local I/O failure.
    #[error("{0}")]
    Io(String),
}

impl DownloadError {
    /// The stable category name, used as the termination-log prefix and as the
    /// `error.category` span field.
    pub fn category(&self) -> &'static str {
        match self {
            Self::InvalidUrl(_) => "InvalidURL",
            Self::InvalidArgument(_) => "InvalidArgument",
            Self::NotFound(_) => "NotFound",
            Self::AuthFailed(_) => "AuthFailed",
            Self::Unavailable(_) => "Unavailable",
            Self::Timeout(_) => "Timeout",
            Self::Terminated(_) => "Terminated",
            Self::ChecksumMismatch { .. } => "ChecksumMismatch",
            Self::InvalidArchive(_) => "InvalidArchive",
            Self::InvalidModelLayout(_) => "InvalidModelLayout",
            Self::DiskFull(_) => "DiskFull",
            Self::Io(_) => "IO",
        }
    }

    /// The single line written to the termination log: `<Category>: <message>`, without
    /// line breaks and at most 1 KiB long.
    pub fn termination_line(&self) -> String {
        let line = format!("{}: {}", self.category(), self);
        let mut line: String = line.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        if line.len() > MAX_LINE_BYTES {
            let mut end = MAX_LINE_BYTES - 3;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line.truncate(end);
            line.push_str("...");
        }
        line
    }

    /// Classifies a local I/O error: a full volume is `DiskFull`, anything else `IO`.
    pub(crate) fn from_io(context: &str, err: &io::Error) -> Self {
        if is_disk_full(err) {
            Self::DiskFull(format!("{context}: {err}"))
        } else {
            Self::Io(format!("{context}: {err}"))
        }
    }
}

/// Whether an I/O error means the volume is out of space or quota.
pub(crate) fn is_disk_full(err: &io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    matches!(err.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
        || matches!(err.raw_os_error(), Some(ENOSPC | EDQUOT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_has_category_prefix_and_no_newline() {
        let err = DownloadError::NotFound("HTTP 404 fetching https://h/m.tar.gz\nmore".into());
        assert_eq!(
            err.termination_line(),
            "NotFound: HTTP 404 fetching https://h/m.tar.gz more"
        );
    }

    #[test]
    fn checksum_line_names_both_digests() {
        let err = DownloadError::ChecksumMismatch {
            expected: "aa".into(),
            actual: "bb".into(),
        };
        assert_eq!(err.termination_line(), "ChecksumMismatch: expected aa, got bb");
    }

    #[test]
    fn line_is_bounded() {
        let err = DownloadError::Io("é".repeat(2000));
        let line = err.termination_line();
        assert!(line.len() <= MAX_LINE_BYTES);
        assert!(line.starts_with("IO: "));
    }

    #[test]
    fn enospc_is_disk_full() {
        let err = io::Error::from_raw_os_error(28);
        assert_eq!(DownloadError::from_io("write", &err).category(), "DiskFull");
        let err = io::Error::from_raw_os_error(13);
        assert_eq!(DownloadError::from_io("write", &err).category(), "IO");
    }
}

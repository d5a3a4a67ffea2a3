//! Removing credentials from URLs before they reach logs, errors or status.

use url::Url;

/// Query parameter names (lowercase) that carry credentials in presigned or tokenised URLs.
const CREDENTIAL_PARAMS: &[&str] = &[
    "sig",
    "signature",
    "token",
    "access_token",
    "id_token",
    "refresh_token",
    "code",
    "key",
    "apikey",
    "api_key",
    "api-key",
    "password",
    "passwd",
    "pwd",
    "secret",
    "client_secret",
    "auth",
    "authorization",
    "credential",
    "credentials",
    "awsaccesskeyid",
    "googleaccessid",
];

/// Substrings of parameter names (lowercase) that mark them as credentials, covering
/// `X-Amz-Signature`, `X-Amz-Credential`, `X-Amz-Security-Token`, `X-Goog-Signature`, ...
const CREDENTIAL_FRAGMENTS: &[&str] = &["signature", "credential", "token", "secret", "password"];

/// Returns `raw` without credentials: the userinfo (`user:password@`) and the fragment are
/// removed, and so is the whole query string if any of its parameters looks like a
/// credential (`X-Amz-Signature`, `X-Amz-Credential`, `sig`, `signature`, `token`,
/// `access_token`, `X-Goog-Signature`, ...). Other query strings are kept, since they may
/// tell versions apart. A string that does not parse as a URL is cut at the first `?` or
/// `#`, and anything up to an `@` in its authority is dropped.
pub fn redact_url(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(mut url) => {
            // Fails only for URLs that cannot carry userinfo anyway.
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_fragment(None);
            let leaks = url.query_pairs().any(|(name, _)| is_credential_param(&name));
            if leaks {
                url.set_query(None);
            }
            url.to_string()
        }
        // What is left may parse as a URL once cut (a parser strips leading control
        // characters, say): then it is redacted as one.
        Err(_) => {
            let shown = redact_unparsable(raw);
            if Url::parse(&shown).is_ok() {
                redact_url(&shown)
            } else {
                shown
            }
        }
    }
}

/// Whether a query parameter's name marks it as a credential.
pub(crate) fn is_credential_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    CREDENTIAL_PARAMS.contains(&name.as_str()) || CREDENTIAL_FRAGMENTS.iter().any(|f| name.contains(f))
}

fn redact_unparsable(raw: &str) -> String {
    let cut = raw.find(['?', '#']).unwrap_or(raw.len());
    let head = &raw[..cut];
    // A scheme is what comes before the first `:`, if it looks like one; any number of
    // slashes may follow it (`http:/user@host` is parsed leniently by URL libraries too).
    let (scheme, rest) = match head.find(':') {
        Some(i)
            if i > 0
                && head[..i]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
        {
            let after = &head[i + 1..];
            let slashes = after.len() - after.trim_start_matches(['/', '\\']).len();
            (&head[..i + 1 + slashes], &after[slashes..])
        }
        _ => ("", head),
    };
    let authority_end = rest.find(['/', '\\']).unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    format!("{scheme}{rest}")
}

/// Redacts every URL-looking token (`scheme://...`) inside a free-form message, so that
/// errors from lower layers (which may quote the request URL) can be shown safely.
pub(crate) fn scrub_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(pos) = rest.find("://") {
        // The scheme starts after the last character that cannot be in one (which may be
        // wider than a byte).
        let start = rest[..pos]
            .char_indices()
            .rev()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let end = rest[pos..]
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '(' | '"' | '\'' | '<' | '>' | '`'))
            .map_or(rest.len(), |i| pos + i);
        out.push_str(&rest[..start]);
        out.push_str(&redact_url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_userinfo() {
        assert_eq!(
            redact_url("https://alice:s3cret@example.com/models/m.tar.gz"),
            "https://example.com/models/m.tar.gz"
        );
    }

    /// Found by the `url` fuzz target: a string no URL parser takes, with one slash after the
    /// scheme, still loses what looks like userinfo.
    #[test]
    fn removes_userinfo_from_an_unparsable_url_with_one_slash() {
        let shown = redact_url("http:/alice:s3cret@h:40400\0?x=1");
        assert_eq!(shown, "http://h:40400/");
        // What remains after the cut parses as a URL with userinfo: it is redacted as a URL.
        let shown = redact_url("@\0tp://alice,s@host=3#x");
        assert!(!shown.contains("alice"), "{shown:?}");
    }

    #[test]
    fn removes_presigned_s3_query() {
        let url = "https://bucket.s3.amazonaws.com/m.tgz?X-Amz-Algorithm=AWS4-HMAC-SHA256\
                   &X-Amz-Credential=AKIA%2F20261123&X-Amz-Signature=abcdef&X-Amz-Expires=60";
        assert_eq!(redact_url(url), "https://bucket.s3.amazonaws.com/m.tgz");
    }

    #[test]
    fn removes_gcs_signed_and_token_queries() {
        assert_eq!(
            redact_url("https://storage.googleapis.com/b/m.zip?X-Goog-Signature=00ff&X-Goog-Date=1"),
            "https://storage.googleapis.com/b/m.zip"
        );
        assert_eq!(redact_url("https://h/m.bin?access_token=abc"), "https://h/m.bin");
        assert_eq!(redact_url("https://h/m.bin?sv=1&sig=abc"), "https://h/m.bin");
        assert_eq!(redact_url("https://h/m.bin?Token=abc"), "https://h/m.bin");
    }

    #[test]
    fn removes_session_tokens_and_other_signed_queries() {
        for url in [
            "https://b.s3.amazonaws.com/m.tgz?X-Amz-Security-Token=FwoG&X-Amz-Date=1",
            "https://d.cloudfront.net/m.tgz?Expires=1&Signature=abc&Key-Pair-Id=K1",
            "https://acct.blob.core.windows.net/c/m.tgz?sv=2024&se=2026&sp=r&sig=abc",
            "https://h/m.tgz?api_key=abc",
            "https://h/m.tgz?X-Auth-Token=abc",
        ] {
            assert!(!redact_url(url).contains('?'), "{url}");
        }
    }

    #[test]
    fn keeps_harmless_query_and_drops_fragment() {
        assert_eq!(
            redact_url("https://h/m.bin?versionId=3#access_token=x"),
            "https://h/m.bin?versionId=3"
        );
    }

    #[test]
    fn keeps_object_store_urls() {
        assert_eq!(redact_url("s3://bucket/a/b.tar.gz"), "s3://bucket/a/b.tar.gz");
        assert_eq!(redact_url("gs://bucket/m.zip"), "gs://bucket/m.zip");
    }

    #[test]
    fn unparsable_input_loses_query_and_userinfo() {
        assert_eq!(redact_url("http://u:p@[bad/x?token=1"), "http://[bad/x");
        assert_eq!(redact_url("; rm -rf /"), "; rm -rf /");
    }

    #[test]
    fn scrubs_urls_inside_messages() {
        let msg = "error sending request for url (https://u:p@h/m?sig=1): connection refused";
        assert_eq!(
            scrub_message(msg),
            "error sending request for url (https://h/m): connection refused"
        );
        assert_eq!(scrub_message("no url here"), "no url here");
        // Found by the `url` fuzz target: a multi-byte character right before the scheme.
        assert_eq!(scrub_message("\u{3d7}ttp://u:oken=2"), "\u{3d7}ttp://u:oken=2");
        assert_eq!(scrub_message("é http://u:p@h/x"), "é http://h/x");
    }
}

//! URL parsing and redaction: no input panics, and what is shown never carries userinfo or
//! a credential-looking query parameter.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mlmodel_operator::download::{fuzzing, redact_url};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let shown = redact_url(raw);
    assert!(!fuzzing::leaks_credentials(&shown), "{raw:?} shown as {shown:?}");
    if let Ok((shown, file_name)) = fuzzing::parse_url(raw) {
        assert!(!fuzzing::leaks_credentials(&shown), "{raw:?} shown as {shown:?}");
        assert!(
            !file_name.is_empty() && !file_name.contains(['/', '\0']),
            "{file_name:?}"
        );
    }
    let _ = fuzzing::scrub_message(raw);
});

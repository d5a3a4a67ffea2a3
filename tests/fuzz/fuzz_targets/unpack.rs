//! Archive unpacking (tar, tar.gz, zip) of hostile input, with small limits: whatever the
//! input, nothing is written outside the target, the byte and entry caps hold, and a failure
//! is a classified error, never a panic.
//!
//! Input: one byte choosing the format (`0` tar, `1` tar.gz, `2` zip, modulo 3), then the
//! archive.

#![no_main]

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mlmodel_operator::download::{ArtifactKind, Limits, fuzzing};

const LIMITS: Limits = Limits {
    max_bytes: Some(64 * 1024),
    max_entries: 32,
};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, archive)) = data.split_first() else {
        return;
    };
    let kind = [ArtifactKind::Tar, ArtifactKind::TarGz, ArtifactKind::Zip][usize::from(selector % 3)];
    let tmp = tempfile::tempdir().expect("temporary directory");
    let into = tmp.path().join("content");
    std::fs::create_dir(&into).expect("content directory");

    if let Err(err) = fuzzing::unpack(archive, kind, &into, LIMITS) {
        assert!(
            matches!(err.category(), "InvalidArchive" | "IO"),
            "unexpected category: {}",
            err.termination_line()
        );
    }

    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["content"], "written outside the target");
    let (bytes, files) = usage(&into);
    assert!(bytes <= LIMITS.max_bytes.unwrap_or(u64::MAX), "{bytes} bytes written");
    assert!(files <= LIMITS.max_entries, "{files} files written");
});

/// Bytes in regular files (apparent size, each inode once: hard links share theirs) and
/// entries other than directories under `dir`.
fn usage(dir: &Path) -> (u64, u64) {
    let mut inodes = HashSet::new();
    let (mut bytes, mut files) = (0, 0);
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("list") {
            let path = entry.expect("entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            if meta.is_dir() {
                pending.push(path);
                continue;
            }
            files += 1;
            if meta.is_file() && inodes.insert(meta.ino()) {
                bytes += meta.len();
            }
        }
    }
    (bytes, files)
}

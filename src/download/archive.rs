//! Unpacking artifacts safely and choosing the directory that becomes the version.
//!
//! Every entry path must be relative and stay inside the target: entries with `..`,
//! absolute paths, entries written through a symlink, hard links to anything but an
//! already unpacked file, and symlinks resolving outside the final directory are rejected
//! as `InvalidArchive`. Device nodes and FIFOs are rejected too.
//!
//! Unpacking is bounded ([`Limits`]): the bytes written and the number of entries. A limit
//! is checked before anything of the entry that would pass it is written, so a bomb (a small
//! archive claiming a huge size or millions of entries) fails as `InvalidArchive` without
//! filling the volume.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use flate2::read::GzDecoder;
use tar::EntryType;

use super::error::{DownloadError, is_disk_full};

/// Entries an archive may hold when `--max-entries` is not given.
pub const DEFAULT_MAX_ENTRIES: u64 = 100_000;

/// Bounds on what unpacking one artifact may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of file contents written in total; `None` leaves only the volume's size.
    pub max_bytes: Option<u64>,
    /// Most entries (files, directories, links, extension headers) an archive may hold.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: None,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

impl Limits {
    /// The error for an artifact bigger than `max_bytes`.
    pub(crate) fn too_many_bytes(&self, what: &str) -> DownloadError {
        DownloadError::InvalidArchive(format!(
            "{what} more than {} bytes (--max-unpacked-bytes, the volume claim's requested size)",
            self.max_bytes.unwrap_or(u64::MAX)
        ))
    }

    fn too_many_entries(&self) -> DownloadError {
        DownloadError::InvalidArchive(format!(
            "archive has more than {} entries (--max-entries)",
            self.max_entries
        ))
    }
}

/// Running totals of one unpacking, checked against its [`Limits`].
struct Budget {
    limits: Limits,
    bytes: u64,
    entries: u64,
}

impl Budget {
    fn new(limits: Limits) -> Self {
        Self {
            limits,
            bytes: 0,
            entries: 0,
        }
    }

    /// Counts one more entry.
    fn entry(&mut self) -> Result<(), DownloadError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(self.limits.too_many_entries());
        }
        Ok(())
    }

    /// Reserves `n` more bytes, failing (before they are written) if that passes the cap.
    fn reserve(&mut self, n: u64) -> Result<(), DownloadError> {
        let total = self.bytes.saturating_add(n);
        if self.limits.max_bytes.is_some_and(|max| total > max) {
            return Err(self.limits.too_many_bytes("archive unpacks to"));
        }
        self.bytes = total;
        Ok(())
    }
}

/// How an artifact is placed, decided by its file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactKind {
    /// `.tar`
    Tar,
    /// `.tar.gz` or `.tgz`
    TarGz,
    /// `.zip`
    Zip,
    /// Anything else: placed as is.
    File,
}

impl ArtifactKind {
    /// The kind for a file name (case-insensitive suffix match).
    pub fn from_file_name(name: &str) -> Self {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
            Self::TarGz
        } else if lower.ends_with(".tar") {
            Self::Tar
        } else if lower.ends_with(".zip") {
            Self::Zip
        } else {
            Self::File
        }
    }
}

/// Unpacks the archive at `artifact` into the empty directory `into`, within `limits`. Stops
/// early with an error once `cancel` is set.
pub(crate) fn unpack(
    artifact: &Path,
    kind: ArtifactKind,
    into: &Path,
    limits: Limits,
    cancel: &Arc<AtomicBool>,
) -> Result<(), DownloadError> {
    let file =
        File::open(artifact).map_err(|e| DownloadError::from_io(&format!("cannot open {}", artifact.display()), &e))?;
    let reader = Cancellable {
        inner: BufReader::with_capacity(1 << 16, file),
        cancel: Arc::clone(cancel),
    };
    unpack_from(reader, kind, into, limits)
}

/// Unpacks the archive read from `reader` into the empty directory `into`, within `limits`.
pub fn unpack_from<R: Read + Seek>(
    reader: R,
    kind: ArtifactKind,
    into: &Path,
    limits: Limits,
) -> Result<(), DownloadError> {
    let mut budget = Budget::new(limits);
    match kind {
        ArtifactKind::Tar => unpack_tar(reader, into, &mut budget),
        ArtifactKind::TarGz => unpack_tar(GzDecoder::new(reader), into, &mut budget),
        ArtifactKind::Zip => unpack_zip(reader, into, &mut budget),
        ArtifactKind::File => Ok(()),
    }
}

/// The directory whose contents become `<model>/<version>/`: if `root` holds exactly one
/// entry and that entry is a real directory (for instance `my-model/saved_model.pb` at the
/// archive's top), that directory; otherwise `root` itself. Only one level is flattened.
pub fn content_root(root: &Path) -> Result<PathBuf, DownloadError> {
    let io_err = |e: io::Error| DownloadError::from_io(&format!("cannot list {}", root.display()), &e);
    let mut entries = fs::read_dir(root).map_err(io_err)?;
    let first = entries.next().transpose().map_err(io_err)?;
    let second = entries.next().transpose().map_err(io_err)?;
    match (first, second) {
        (Some(only), None) if only.file_type().map_err(io_err)?.is_dir() => Ok(only.path()),
        _ => Ok(root.to_path_buf()),
    }
}

/// Checks that every symlink under `root` resolves to something inside `root`, as it will
/// be served from there.
pub fn check_symlinks(root: &Path) -> Result<(), DownloadError> {
    let canonical_root = fs::canonicalize(root)
        .map_err(|e| DownloadError::from_io(&format!("cannot resolve {}", root.display()), &e))?;
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let io_err = |e: io::Error| DownloadError::from_io(&format!("cannot list {}", dir.display()), &e);
        for entry in fs::read_dir(&dir).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            let file_type = entry.file_type().map_err(io_err)?;
            let path = entry.path();
            if file_type.is_symlink() {
                let shown = path.strip_prefix(root).unwrap_or(&path).display().to_string();
                match fs::canonicalize(&path) {
                    Ok(target) if target.starts_with(&canonical_root) => {}
                    Ok(_) => {
                        return Err(DownloadError::InvalidArchive(format!(
                            "symlink {shown} points outside the model directory"
                        )));
                    }
                    Err(_) => {
                        return Err(DownloadError::InvalidArchive(format!(
                            "symlink {shown} points to a missing target"
                        )));
                    }
                }
            } else if file_type.is_dir() {
                pending.push(path);
            }
        }
    }
    Ok(())
}

fn unpack_tar<R: Read>(reader: R, into: &Path, budget: &mut Budget) -> Result<(), DownloadError> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let entries = archive.entries().map_err(|e| read_error("tar", &e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| read_error("tar", &e))?;
        budget.entry()?;
        let raw_path = entry.path().map_err(|e| read_error("tar", &e))?.into_owned();
        let Some(relative) = safe_relative(&raw_path)? else {
            continue;
        };
        ensure_no_symlink_ancestor(into, &relative)?;
        match entry.header().entry_type() {
            EntryType::Directory => {}
            EntryType::Regular | EntryType::Continuous => budget.reserve(entry.size())?,
            // A sparse file's length is its real size, not the data stored.
            EntryType::GNUSparse => {
                let real_size = entry.header().as_gnu().map_or(Ok(0), |gnu| gnu.real_size());
                let real_size = real_size.map_err(|e| read_error("tar", &e))?;
                budget.reserve(entry.size().max(real_size))?;
            }
            EntryType::Symlink => {
                let target = entry.link_name().map_err(|e| read_error("tar", &e))?.ok_or_else(|| {
                    DownloadError::InvalidArchive(format!("symlink {} has no target", relative.display()))
                })?;
                check_symlink_target(&relative, &target)?;
            }
            EntryType::Link => {
                let target = entry.link_name().map_err(|e| read_error("tar", &e))?.ok_or_else(|| {
                    DownloadError::InvalidArchive(format!("hard link {} has no target", relative.display()))
                })?;
                check_hard_link_target(into, &relative, &target)?;
            }
            EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink => continue,
            other => {
                return Err(DownloadError::InvalidArchive(format!(
                    "entry {} has unsupported type {other:?}",
                    relative.display()
                )));
            }
        }
        let unpacked = entry.unpack_in(into).map_err(|e| write_error(&relative, &e))?;
        if !unpacked {
            return Err(DownloadError::InvalidArchive(format!(
                "entry {} escapes the target directory",
                raw_path.display()
            )));
        }
    }
    Ok(())
}

fn unpack_zip<R: Read + Seek>(reader: R, into: &Path, budget: &mut Budget) -> Result<(), DownloadError> {
    let mut archive = zip::ZipArchive::new(reader).map_err(zip_error)?;
    // The central directory lists every entry: refuse before writing anything.
    if archive.len() as u64 > budget.limits.max_entries {
        return Err(budget.limits.too_many_entries());
    }
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(zip_error)?;
        budget.entry()?;
        let raw_name = entry.name().to_string();
        let Some(relative) = safe_relative(Path::new(&raw_name))? else {
            continue;
        };
        if entry.enclosed_name().is_none() {
            return Err(DownloadError::InvalidArchive(format!(
                "entry {raw_name} escapes the target directory"
            )));
        }
        ensure_no_symlink_ancestor(into, &relative)?;
        let path = into.join(&relative);
        let io_err = |e: io::Error| write_error(&relative, &e);
        if entry.is_dir() {
            fs::create_dir_all(&path).map_err(io_err)?;
            continue;
        }
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err)?;
        }
        if entry.is_symlink() {
            let mut target = Vec::new();
            // A link target is a path; anything longer than PATH_MAX is not one.
            (&mut entry)
                .take(4096)
                .read_to_end(&mut target)
                .map_err(|e| read_error("zip", &e))?;
            let target = PathBuf::from(String::from_utf8(target).map_err(|_| {
                DownloadError::InvalidArchive(format!("symlink {} has a non-UTF-8 target", relative.display()))
            })?);
            check_symlink_target(&relative, &target)?;
            remove_existing(&path).map_err(io_err)?;
            std::os::unix::fs::symlink(&target, &path).map_err(io_err)?;
            continue;
        }
        remove_existing(&path).map_err(io_err)?;
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err)?;
        // The declared size may lie: every chunk is counted as it is written.
        copy_within_budget(&mut entry, &mut out, budget).map_err(|e| match e {
            CopyError::Budget(e) => e,
            CopyError::Read(e) => read_error("zip", &e),
            CopyError::Write(e) => write_error(&relative, &e),
        })?;
        if let Some(mode) = entry.unix_mode() {
            use std::os::unix::fs::PermissionsExt;
            // Keep the executable bits; never setuid/setgid/sticky or world-writable.
            let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io_err)?;
        }
    }
    Ok(())
}

/// Why [`copy_within_budget`] stopped.
enum CopyError {
    /// The byte cap would be passed.
    Budget(DownloadError),
    /// Reading (decompressing) failed.
    Read(io::Error),
    /// Writing failed.
    Write(io::Error),
}

/// Copies `from` to `to` one buffer at a time, reserving each buffer in `budget` before it
/// is written, so nothing is written past the cap.
fn copy_within_budget(from: &mut impl Read, to: &mut impl Write, budget: &mut Budget) -> Result<(), CopyError> {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        budget.reserve(n as u64).map_err(CopyError::Budget)?;
        to.write_all(&buf[..n]).map_err(CopyError::Write)?;
    }
}

/// Removes a file or symlink left by an earlier entry of the same name, so that the new
/// entry replaces it instead of writing through it.
fn remove_existing(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a directory of the same name exists",
        )),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The entry's path as plain relative components, or `None` for the archive root
/// itself (`./`). `..`, absolute paths and drive prefixes are rejected.
fn safe_relative(path: &Path) -> Result<Option<PathBuf>, DownloadError> {
    let mut relative = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(DownloadError::InvalidArchive(format!(
                    "entry {} contains `..`",
                    path.display()
                )));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(DownloadError::InvalidArchive(format!(
                    "entry {} has an absolute path",
                    path.display()
                )));
            }
        }
    }
    Ok((!relative.as_os_str().is_empty()).then_some(relative))
}

/// Rejects entries whose parent directories include a symlink: writing through one could
/// land anywhere.
fn ensure_no_symlink_ancestor(root: &Path, relative: &Path) -> Result<(), DownloadError> {
    let mut current = root.to_path_buf();
    let mut parents = relative.components().peekable();
    while let Some(component) = parents.next() {
        if parents.peek().is_none() {
            break;
        }
        current.push(component);
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(DownloadError::InvalidArchive(format!(
                    "entry {} is inside a symlink",
                    relative.display()
                )));
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    Ok(())
}

/// A symlink's target must be relative and, resolved from the link's directory without
/// following links, stay inside the root. Links through other links are checked once
/// everything is unpacked ([`check_symlinks`]).
fn check_symlink_target(link: &Path, target: &Path) -> Result<(), DownloadError> {
    let escapes = || {
        DownloadError::InvalidArchive(format!(
            "symlink {} points outside the target directory ({})",
            link.display(),
            target.display()
        ))
    };
    let mut resolved: Vec<OsString> = link
        .parent()
        .map(|p| p.components().map(|c| c.as_os_str().to_owned()).collect())
        .unwrap_or_default();
    for component in target.components() {
        match component {
            Component::Normal(part) => resolved.push(part.to_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                resolved.pop().ok_or_else(escapes)?;
            }
            Component::RootDir | Component::Prefix(_) => return Err(escapes()),
        }
    }
    Ok(())
}

/// A hard link's target (relative to the archive root) must be a regular file unpacked
/// earlier, reached without symlinks.
fn check_hard_link_target(root: &Path, link: &Path, target: &Path) -> Result<(), DownloadError> {
    let invalid = || {
        DownloadError::InvalidArchive(format!(
            "hard link {} points outside the unpacked files ({})",
            link.display(),
            target.display()
        ))
    };
    let relative = safe_relative(target).map_err(|_| invalid())?.ok_or_else(invalid)?;
    ensure_no_symlink_ancestor(root, &relative).map_err(|_| invalid())?;
    match fs::symlink_metadata(root.join(&relative)) {
        Ok(meta) if meta.file_type().is_file() => Ok(()),
        _ => Err(invalid()),
    }
}

/// An error while reading the archive: corrupt data is `InvalidArchive`.
fn read_error(format: &str, err: &io::Error) -> DownloadError {
    if is_disk_full(err) {
        DownloadError::DiskFull(format!("unpacking {format} archive: {err}"))
    } else {
        DownloadError::InvalidArchive(format!("cannot read {format} archive: {err}"))
    }
}

/// An error while unpacking one entry: the volume's fault unless the data was corrupt.
fn write_error(entry: &Path, err: &io::Error) -> DownloadError {
    match err.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::UnexpectedEof => {
            DownloadError::InvalidArchive(format!("cannot unpack {}: {err}", entry.display()))
        }
        _ => DownloadError::from_io(&format!("cannot unpack {}", entry.display()), err),
    }
}

fn zip_error(err: zip::result::ZipError) -> DownloadError {
    match err {
        zip::result::ZipError::Io(e) => read_error("zip", &e),
        other => DownloadError::InvalidArchive(format!("cannot read zip archive: {other}")),
    }
}

/// A reader that fails once the download is cancelled (deadline passed), so a long unpack
/// stops promptly instead of writing on after the caller gave up.
struct Cancellable<R> {
    inner: R,
    cancel: Arc<AtomicBool>,
}

impl<R> Cancellable<R> {
    fn check(&self) -> io::Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(io::Error::other("download cancelled"))
        } else {
            Ok(())
        }
    }
}

impl<R: Read> Read for Cancellable<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.check()?;
        self.inner.read(buf)
    }
}

impl<R: Seek> Seek for Cancellable<R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.check()?;
        self.inner.seek(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_from_name() {
        assert_eq!(ArtifactKind::from_file_name("m.tar.gz"), ArtifactKind::TarGz);
        assert_eq!(ArtifactKind::from_file_name("M.TGZ"), ArtifactKind::TarGz);
        assert_eq!(ArtifactKind::from_file_name("m.tar"), ArtifactKind::Tar);
        assert_eq!(ArtifactKind::from_file_name("m.zip"), ArtifactKind::Zip);
        assert_eq!(ArtifactKind::from_file_name("model.onnx"), ArtifactKind::File);
        assert_eq!(ArtifactKind::from_file_name("m.gz"), ArtifactKind::File);
    }

    #[test]
    fn relative_paths() {
        assert_eq!(safe_relative(Path::new("./a/b")).unwrap(), Some(PathBuf::from("a/b")));
        assert_eq!(safe_relative(Path::new("./")).unwrap(), None);
        assert!(safe_relative(Path::new("../evil")).is_err());
        assert!(safe_relative(Path::new("a/../../evil")).is_err());
        assert!(safe_relative(Path::new("/etc/passwd")).is_err());
    }

    #[test]
    fn symlink_targets() {
        assert!(check_symlink_target(Path::new("a/link"), Path::new("../b")).is_ok());
        assert!(check_symlink_target(Path::new("a/link"), Path::new("b/./c")).is_ok());
        assert!(check_symlink_target(Path::new("link"), Path::new("../x")).is_err());
        assert!(check_symlink_target(Path::new("a/link"), Path::new("../../x")).is_err());
        assert!(check_symlink_target(Path::new("link"), Path::new("/etc/passwd")).is_err());
    }

    fn limits(max_bytes: u64, max_entries: u64) -> Limits {
        Limits {
            max_bytes: Some(max_bytes),
            max_entries,
        }
    }

    #[test]
    fn budget_refuses_what_would_pass_the_cap() {
        let mut budget = Budget::new(limits(100, 2));
        budget.reserve(60).unwrap();
        budget.reserve(40).unwrap();
        let err = budget.reserve(1).unwrap_err();
        assert_eq!(
            err.termination_line(),
            "InvalidArchive: archive unpacks to more than 100 bytes (--max-unpacked-bytes, the volume claim's \
             requested size)"
        );
        assert_eq!(budget.bytes, 100, "the refused bytes are not counted as written");
        budget.entry().unwrap();
        budget.entry().unwrap();
        assert_eq!(
            budget.entry().unwrap_err().termination_line(),
            "InvalidArchive: archive has more than 2 entries (--max-entries)"
        );
        let mut unbounded = Budget::new(Limits::default());
        unbounded.reserve(u64::MAX).unwrap();
        unbounded.reserve(u64::MAX).unwrap();
    }

    #[test]
    fn copy_writes_nothing_past_the_cap_whatever_the_reader_claims() {
        // A reader producing far more than any size it may have declared.
        let mut endless = io::repeat(0).take(10 << 20);
        let mut out = Vec::new();
        let mut budget = Budget::new(limits(200_000, 10));
        let Err(CopyError::Budget(err)) = copy_within_budget(&mut endless, &mut out, &mut budget) else {
            panic!("the cap must stop the copy");
        };
        assert_eq!(err.category(), "InvalidArchive");
        assert!(out.len() <= 200_000, "{} bytes written", out.len());
    }

    #[test]
    fn tar_entry_count_is_checked_before_unpacking_more() {
        let mut builder = tar::Builder::new(Vec::new());
        for i in 0..5 {
            let mut header = tar::Header::new_gnu();
            header.set_size(1);
            header.set_mode(0o644);
            builder.append_data(&mut header, format!("f{i}"), &b"x"[..]).unwrap();
        }
        let data = builder.into_inner().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let err = unpack_from(io::Cursor::new(&data), ArtifactKind::Tar, tmp.path(), limits(1000, 3)).unwrap_err();
        assert_eq!(err.to_string(), "archive has more than 3 entries (--max-entries)");
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 3);

        let tmp = tempfile::tempdir().unwrap();
        let err = unpack_from(io::Cursor::new(&data), ArtifactKind::Tar, tmp.path(), limits(3, 10)).unwrap_err();
        assert!(err.to_string().contains("more than 3 bytes"), "{err}");
        assert_eq!(
            fs::read_dir(tmp.path()).unwrap().count(),
            3,
            "the fourth byte is never written"
        );
    }

    #[test]
    fn flattens_single_directory() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("model")).unwrap();
        fs::write(tmp.path().join("model/saved_model.pb"), b"x").unwrap();
        assert_eq!(content_root(tmp.path()).unwrap(), tmp.path().join("model"));
        fs::write(tmp.path().join("README"), b"x").unwrap();
        assert_eq!(content_root(tmp.path()).unwrap(), tmp.path());
    }

    #[test]
    fn symlink_walk_rejects_escape_and_dangling() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        fs::write(root.join("f"), b"x").unwrap();
        std::os::unix::fs::symlink("f", root.join("ok")).unwrap();
        assert!(check_symlinks(&root).is_ok());
        std::os::unix::fs::symlink("..", root.join("up")).unwrap();
        assert!(check_symlinks(&root).is_err());
        fs::remove_file(root.join("up")).unwrap();
        std::os::unix::fs::symlink("missing", root.join("dangling")).unwrap();
        assert!(check_symlinks(&root).is_err());
    }
}

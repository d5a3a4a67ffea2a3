//! Unpacking artifacts safely and choosing the directory that becomes the version.
//!
//! Every entry path must be relative and stay inside the target: entries with `..`,
//! absolute paths, entries written through a symlink, hard links to anything but an
//! already unpacked file, and symlinks resolving outside the final directory are rejected
//! as `InvalidArchive`. Device nodes and FIFOs are rejected too.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use flate2::read::GzDecoder;
use tar::EntryType;

use super::error::{DownloadError, is_disk_full};

/// How an artifact is placed, decided by its file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArtifactKind {
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
    pub(crate) fn from_file_name(name: &str) -> Self {
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

/// Unpacks the archive at `artifact` into the empty directory `into`. Stops early with an
/// error once `cancel` is set.
pub(crate) fn unpack(
    artifact: &Path,
    kind: ArtifactKind,
    into: &Path,
    cancel: &Arc<AtomicBool>,
) -> Result<(), DownloadError> {
    let file =
        File::open(artifact).map_err(|e| DownloadError::from_io(&format!("cannot open {}", artifact.display()), &e))?;
    let reader = Cancellable {
        inner: BufReader::with_capacity(1 << 16, file),
        cancel: Arc::clone(cancel),
    };
    match kind {
        ArtifactKind::Tar => unpack_tar(reader, into),
        ArtifactKind::TarGz => unpack_tar(GzDecoder::new(reader), into),
        ArtifactKind::Zip => unpack_zip(reader, into),
        ArtifactKind::File => Ok(()),
    }
}

/// The directory whose contents become `<model>/<version>/`: if `root` holds exactly one
/// entry and that entry is a real directory (for instance `my-model/saved_model.pb` at the
/// archive's top), that directory; otherwise `root` itself. Only one level is flattened.
pub(crate) fn content_root(root: &Path) -> Result<PathBuf, DownloadError> {
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
pub(crate) fn check_symlinks(root: &Path) -> Result<(), DownloadError> {
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

fn unpack_tar<R: Read>(reader: R, into: &Path) -> Result<(), DownloadError> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let entries = archive.entries().map_err(|e| read_error("tar", &e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| read_error("tar", &e))?;
        let raw_path = entry.path().map_err(|e| read_error("tar", &e))?.into_owned();
        let Some(relative) = safe_relative(&raw_path)? else {
            continue;
        };
        ensure_no_symlink_ancestor(into, &relative)?;
        match entry.header().entry_type() {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse | EntryType::Directory => {}
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

fn unpack_zip<R: Read + Seek>(reader: R, into: &Path) -> Result<(), DownloadError> {
    let mut archive = zip::ZipArchive::new(reader).map_err(zip_error)?;
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(zip_error)?;
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
        io::copy(&mut entry, &mut out).map_err(|e| {
            if e.kind() == io::ErrorKind::Other || e.kind() == io::ErrorKind::InvalidData {
                read_error("zip", &e)
            } else {
                write_error(&relative, &e)
            }
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

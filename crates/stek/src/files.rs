//! Key files: the key directory as an open handle ([`KeyDir`]), the check that it lives in
//! memory only and belongs to us, atomic writes and erasure (docs/DESIGN.md §5, "Key
//! directory").
//!
//! Every operation inside the key directory is relative to a directory handle opened once and
//! checked through `fstat` of the handle, never by path: a path can be swapped for a symbolic
//! link between a check and a use, a handle cannot. Symbolic links inside the directory are
//! never followed: a subdirectory that is a link is refused, a key file name that is a link is
//! unlinked itself (the link, never its target) and the log says so.

use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use tracing::warn;

use crate::sys;

/// Where key files may go, as decided by [`check_dir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirCheck {
    /// On tmpfs or ramfs (the name says which).
    Memory(&'static str),
    /// On a persistent file system (named), allowed by the operator's explicit override.
    PersistentAllowed(String),
}

/// Why a key directory (DIR or one of its subdirectories) was refused.
#[derive(Debug)]
#[non_exhaustive]
pub enum DirError {
    /// The directory lies on a persistent file system.
    Persistent {
        /// The directory asked for.
        dir: PathBuf,
        /// The file system's type, e.g. `ext4`.
        fs: String,
    },
    /// The file system could not be examined (the directory, and the system's error as the
    /// source).
    Io(PathBuf, io::Error),
    /// The directory belongs to another user or others may write into it: whoever can write
    /// there can plant links that make stek write keys where they can read them, or erase files
    /// stek never wrote.
    NotPrivate {
        /// The directory.
        dir: PathBuf,
        /// Its owner.
        uid: u32,
        /// Its permission bits.
        mode: u32,
        /// The uid stek runs as, which must own it.
        want_uid: u32,
    },
    /// The directory is a symbolic link (stek never follows one in its key directory).
    Symlink {
        /// The link.
        dir: PathBuf,
        /// Where it points, if readable.
        target: Option<PathBuf>,
        /// Whether the target exists.
        dangling: bool,
    },
    /// Something other than a directory is in the way.
    NotDir(PathBuf),
}

impl std::fmt::Display for DirError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DirError::Persistent { dir, fs } => write!(
                f,
                "{} is on {fs}, a persistent file system: ticket keys must live on tmpfs or ramfs \
                 (pick a directory under /dev/shm or /run, or pass --allow-persistent-dir to \
                 override)",
                dir.display()
            ),
            DirError::Io(dir, _) => write!(f, "cannot examine {}", dir.display()),
            DirError::NotPrivate {
                dir,
                uid,
                mode,
                want_uid,
            } => write!(
                f,
                "refusing key directory {}: owner uid {uid}, mode {mode:04o}; it must be owned by \
                 uid {want_uid} (stek's user) and not writable by group or others (chown it and \
                 chmod 0700, or remove it and let stek create it)",
                dir.display()
            ),
            DirError::Symlink {
                dir,
                target,
                dangling,
            } => {
                write!(
                    f,
                    "refusing key directory {}: it is a symbolic link",
                    dir.display()
                )?;
                if let Some(t) = target {
                    write!(f, " to {}", t.display())?;
                }
                if *dangling {
                    write!(f, " (which does not exist)")?;
                }
                write!(
                    f,
                    "; stek never follows symbolic links in its key directory: give the real \
                     directory, or remove the link"
                )
            }
            DirError::NotDir(dir) => write!(
                f,
                "refusing key directory {}: it exists and is not a directory",
                dir.display()
            ),
        }
    }
}

impl std::error::Error for DirError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DirError::Io(_, e) => Some(e),
            _ => None,
        }
    }
}

impl From<DirError> for io::Error {
    fn from(e: DirError) -> io::Error {
        io::Error::other(e)
    }
}

/// The nearest existing ancestor of `dir` (itself if it exists, a symbolic link included): it
/// shares its file system with whatever would be created below it.
fn existing_ancestor(dir: &Path) -> &Path {
    dir.ancestors()
        .find(|a| a.symlink_metadata().is_ok())
        .unwrap_or_else(|| Path::new("/"))
}

fn classify(magic: i64, fs: impl FnOnce() -> Option<String>) -> Result<DirCheck, String> {
    match magic {
        sys::TMPFS_MAGIC => Ok(DirCheck::Memory("tmpfs")),
        sys::RAMFS_MAGIC => Ok(DirCheck::Memory("ramfs")),
        other => Err(fs().unwrap_or_else(|| format!("file system type 0x{other:x}"))),
    }
}

/// Checks, without creating anything, that `dir` lies (or would lie) on tmpfs or ramfs. A
/// preliminary look by path (for choosing the default directory and before creating one);
/// [`KeyDir::open`] decides on the opened handle.
pub fn check_dir(dir: &Path, allow_persistent: bool) -> Result<DirCheck, DirError> {
    let anc = existing_ancestor(dir);
    let magic = sys::fs_magic(anc).map_err(|e| DirError::Io(dir.to_owned(), e))?;
    persistent_policy(dir, classify(magic, || fs_name(anc)), allow_persistent)
}

fn persistent_policy(
    dir: &Path,
    found: Result<DirCheck, String>,
    allow_persistent: bool,
) -> Result<DirCheck, DirError> {
    match found {
        Ok(c) => Ok(c),
        Err(fs) if allow_persistent => Ok(DirCheck::PersistentAllowed(fs)),
        Err(fs) => Err(DirError::Persistent {
            dir: dir.to_owned(),
            fs,
        }),
    }
}

/// The type name of the mount holding `path`, from `/proc/self/mounts` (longest mount point
/// that is a prefix of the canonical path).
fn fs_name(path: &Path) -> Option<String> {
    let path = fs::canonicalize(path).ok()?;
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (_dev, mnt, ty) = (f.next()?, f.next()?, f.next()?);
            // /proc/self/mounts escapes spaces as \040.
            let mnt = PathBuf::from(mnt.replace("\\040", " "));
            path.starts_with(&mnt).then(|| (mnt, ty.to_owned()))
        })
        .max_by_key(|(m, _)| m.as_os_str().len())
        .map(|(_, ty)| ty)
}

/// The first of `/run/stek`, `$XDG_RUNTIME_DIR/stek`, `/dev/shm/stek` on tmpfs or ramfs.
pub fn default_dir() -> Option<PathBuf> {
    default_candidates(std::env::var_os("XDG_RUNTIME_DIR"))
        .into_iter()
        .find(|c| matches!(check_dir(c, false), Ok(DirCheck::Memory(_))))
}

/// Where [`default_dir`] looks, in order, given `$XDG_RUNTIME_DIR` (ignored when empty).
fn default_candidates(xdg_runtime_dir: Option<OsString>) -> Vec<PathBuf> {
    let mut candidates = vec![PathBuf::from("/run/stek")];
    if let Some(x) = xdg_runtime_dir.filter(|x| !x.is_empty()) {
        candidates.push(PathBuf::from(x).join("stek"));
    }
    candidates.push(PathBuf::from("/dev/shm/stek"));
    candidates
}

/// Flags of every directory handle: no link followed at the last component, not inherited by
/// the reload command or other children.
fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// The key directory (or one of its subdirectories) as an open, checked handle. Every file
/// operation is relative to the handle; the path is kept for messages and for the paths handed
/// to servers (nginx's include file, HAProxy's runtime API).
#[derive(Debug, Clone)]
pub struct KeyDir {
    fd: Arc<OwnedFd>,
    path: PathBuf,
}

impl KeyDir {
    /// Opens the key directory `path` at start, creating it (and missing parents) with mode
    /// 0700 if absent, and checks through the opened handle that it is a directory, owned by the
    /// running uid, not writable by group or others (it is tightened to 0700 otherwise), and on
    /// tmpfs or ramfs (or on a persistent file system when `allow_persistent`). `path` itself
    /// must not be a symbolic link. Nothing is written before the checks pass, except the
    /// creation of a missing directory.
    pub fn open(path: &Path, allow_persistent: bool) -> Result<(KeyDir, DirCheck), DirError> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => return Err(symlink_error(path)),
            // Anything else that exists is opened and checked through its handle below (not a
            // directory: ENOTDIR, without opening it).
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Never create anything on a persistent disk by mistake: look first.
                check_dir(path, allow_persistent)?;
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(parent)
                        .map_err(|e| DirError::Io(parent.to_owned(), e))?;
                }
                // In a shared directory (/dev/shm) another user may create the name first:
                // mkdir does not follow or replace anything, and the handle opened next is
                // what gets checked.
                match rustix::fs::mkdir(path, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(DirError::Io(path.to_owned(), e.into())),
                }
            }
            Err(e) => return Err(DirError::Io(path.to_owned(), e)),
        }
        let fd = match rustix::fs::open(path, dir_flags(), Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::LOOP) => return Err(symlink_error(path)),
            Err(Errno::NOTDIR) => return Err(DirError::NotDir(path.to_owned())),
            Err(e) => return Err(DirError::Io(path.to_owned(), e.into())),
        };
        // The file system first: a refused directory is not even tightened.
        let st = rustix::fs::fstatfs(&fd).map_err(|e| DirError::Io(path.to_owned(), e.into()))?;
        #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets.
        let check = persistent_policy(
            path,
            classify(st.f_type as i64, || fs_name(path)),
            allow_persistent,
        )?;
        verify_private(&fd, path)?;
        Ok((
            KeyDir {
                fd: Arc::new(fd),
                path: path.to_owned(),
            },
            check,
        ))
    }

    /// The directory's path, for messages and for servers that read the files by path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the subdirectory `name` (one path component), creating it with mode 0700 if
    /// absent, with the same checks as [`KeyDir::open`]: a symbolic link, another owner or a
    /// group- or world-writable mode is refused, nothing is written through it.
    pub fn subdir(&self, name: &str) -> Result<KeyDir, DirError> {
        let path = self.path.join(name);
        if !is_component(OsStr::new(name)) {
            return Err(DirError::Io(
                path,
                io::Error::new(io::ErrorKind::InvalidInput, "not a single path component"),
            ));
        }
        match rustix::fs::mkdirat(&*self.fd, name, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(DirError::Io(path, e.into())),
        }
        let fd = match rustix::fs::openat(&*self.fd, name, dir_flags(), Mode::empty()) {
            Ok(fd) => fd,
            Err(e @ (Errno::LOOP | Errno::NOTDIR)) => {
                return Err(match self.lstat(name) {
                    Ok(Some(FileType::Symlink)) => self.symlink_error_at(name),
                    Ok(Some(_)) => DirError::NotDir(path),
                    _ => DirError::Io(path, e.into()),
                })
            }
            Err(e) => return Err(DirError::Io(path, e.into())),
        };
        verify_private(&fd, &path)?;
        Ok(KeyDir {
            fd: Arc::new(fd),
            path,
        })
    }

    /// Writes `bytes` to the file `name` atomically with mode 0600: a new temporary file with an
    /// unpredictable name (created exclusively, so a planted file or link at that name makes
    /// the write fail instead of being written through), written and synced, then renamed over
    /// `name`. Readers see the old file or the new one, never a partial key. A symbolic link at
    /// `name` is replaced by the file (rename never follows it), and the log says so.
    pub fn write_atomic(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.write_atomic_at(name, bytes, None)
    }

    /// [`KeyDir::write_atomic`], with the file's modification (and access) time set to `mtime`
    /// (since the Unix epoch) before it takes the name. For servers that re-read a key file when
    /// its modification time changes and compare it with their own clock (lighttpd, h2o): the
    /// time comes from the caller's clock, the one the file's contents are computed with.
    pub fn write_atomic_mtime(&self, name: &str, bytes: &[u8], mtime: Duration) -> io::Result<()> {
        self.write_atomic_at(name, bytes, Some(mtime))
    }

    fn write_atomic_at(&self, name: &str, bytes: &[u8], mtime: Option<Duration>) -> io::Result<()> {
        if !is_component(OsStr::new(name)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not a single path component"),
            ));
        }
        let mut rand = [0u8; 16];
        stek_core::key::fill_random(&mut rand).map_err(io::Error::other)?;
        let tmp = format!(".{name}.{}.tmp", hex(&rand));
        let fd = self.create_new(&tmp)?;
        let result = (|| {
            let mut f = File::from(fd);
            f.write_all(bytes)?;
            if let Some(t) = mtime {
                let at = Timespec {
                    tv_sec: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
                    tv_nsec: t.subsec_nanos().into(),
                };
                rustix::fs::futimens(
                    &f,
                    &Timestamps {
                        last_access: at,
                        last_modification: at,
                    },
                )?;
            }
            f.sync_all()?;
            if self.lstat(name)? == Some(FileType::Symlink) {
                warn!(
                    "{} was a symbolic link: replaced by the file, the link's target untouched",
                    self.path.join(name).display()
                );
            }
            rustix::fs::renameat(&*self.fd, tmp.as_str(), &*self.fd, name)?;
            Ok(())
        })();
        if result.is_err() {
            let _ = rustix::fs::unlinkat(&*self.fd, tmp.as_str(), AtFlags::empty());
        }
        result
    }

    /// Creates the file `name` (mode 0600) for writing: never an existing file or through a
    /// link planted at the name, and not inherited by the reload command or other children.
    fn create_new(&self, name: &str) -> rustix::io::Result<OwnedFd> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        rustix::fs::openat(&*self.fd, name, flags, Mode::from_raw_mode(0o600))
    }

    /// Opens the existing `name` with `access` (`RDONLY` to peek, `WRONLY` to overwrite)
    /// without following a link (a link planted or swapped in fails with ELOOP), without
    /// waiting (a FIFO without a peer opens at once for reading, fails with ENXIO for writing,
    /// instead of hanging), without taking a terminal, not inherited by children.
    fn open_existing(&self, name: &OsStr, access: OFlags) -> rustix::io::Result<OwnedFd> {
        let flags = access | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        rustix::fs::openat(&*self.fd, name, flags, Mode::empty())
    }

    /// The first `max` bytes of the regular file `name` (fewer if it is shorter), or `None` if
    /// there is no such file. Opened without following links and without blocking (a FIFO
    /// planted there cannot hang the caller); anything but a regular file is an error. For the
    /// public head of a key file (lighttpd's times and key name), to tell whether it already
    /// holds what would be written.
    pub fn read_head(&self, name: &str, max: usize) -> io::Result<Option<Vec<u8>>> {
        use std::io::Read as _;
        let fd = match self.open_existing(OsStr::new(name), OFlags::RDONLY) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) != FileType::RegularFile {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a regular file", self.path.join(name).display()),
            ));
        }
        let mut head = Vec::with_capacity(max);
        File::from(fd)
            .take(u64::try_from(max).unwrap_or(u64::MAX))
            .read_to_end(&mut head)?;
        Ok(Some(head))
    }

    /// The names in the directory (without `.` and `..`).
    pub fn names(&self) -> io::Result<Vec<OsString>> {
        let mut out = Vec::new();
        for entry in rustix::fs::Dir::read_from(&*self.fd)? {
            let name = entry?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                out.push(OsString::from_vec(name));
            }
        }
        Ok(out)
    }

    /// Erases the temporary files a crashed or killed stek may have left here (names `.*.tmp`,
    /// which only [`KeyDir::write_atomic`] makes, also as older versions named them): they may
    /// hold key bytes that no rotation would otherwise erase. Returns how many were found. Call
    /// it only while no other stek writes in this directory (at start).
    pub fn erase_temporaries(&self) -> io::Result<usize> {
        let mut found = 0;
        for name in self.names()? {
            let b = name.as_bytes();
            if b.len() > ".x.tmp".len() && b.starts_with(b".") && b.ends_with(b".tmp") {
                self.erase(&name)?;
                found += 1;
            }
        }
        Ok(found)
    }

    /// Erases the file `name`: overwrites it with zeros, syncs it, then removes it. Missing
    /// files are fine. Only a regular file opened without following links, owned by us and
    /// with a single link is overwritten; a symbolic link is removed itself (its target is
    /// never opened); a file with other links or another owner is only unlinked (overwriting it
    /// would change a file that is not only ours); anything else (a directory, a FIFO, a device)
    /// is left alone. Each of these cases is logged.
    pub fn erase(&self, name: &OsStr) -> io::Result<()> {
        let shown = self.path.join(name);
        if !is_component(name) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a single path component", shown.display()),
            ));
        }
        match self.lstat(name)? {
            None => return Ok(()),
            Some(FileType::Symlink) => {
                warn!(
                    "{} is a symbolic link: removed the link, its target untouched",
                    shown.display()
                );
                return self.unlink(name);
            }
            Some(FileType::RegularFile) => {}
            Some(other) => {
                warn!(
                    "{} is not a regular file ({other:?}): left alone, not erased",
                    shown.display()
                );
                return Ok(());
            }
        }
        let fd = match self.open_existing(name, OFlags::WRONLY) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(()),
            Err(Errno::LOOP) => {
                warn!(
                    "{} became a symbolic link: removed the link, its target untouched",
                    shown.display()
                );
                return self.unlink(name);
            }
            Err(e) => return Err(e.into()),
        };
        let st = rustix::fs::fstat(&fd)?;
        let me = rustix::process::geteuid().as_raw();
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            warn!(
                "{} is not a regular file: left alone, not erased",
                shown.display()
            );
            return Ok(());
        }
        if st.st_nlink != 1 || st.st_uid != me {
            warn!(
                "{} has {} links and owner uid {}: unlinked without overwriting (the content is \
                 not only stek's)",
                shown.display(),
                st.st_nlink,
                st.st_uid
            );
            return self.unlink(name);
        }
        let len = usize::try_from(st.st_size).unwrap_or(0).min(1 << 20);
        let mut f = File::from(fd);
        f.write_all(&vec![0u8; len])?;
        f.sync_all()?;
        self.unlink(name)
    }

    fn unlink(&self, name: &OsStr) -> io::Result<()> {
        match rustix::fs::unlinkat(&*self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The type of `name` without following a link; `None` if absent.
    fn lstat(&self, name: impl rustix::path::Arg) -> io::Result<Option<FileType>> {
        match rustix::fs::statat(&*self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn symlink_error_at(&self, name: &str) -> DirError {
        let target = rustix::fs::readlinkat(&*self.fd, name, Vec::new())
            .ok()
            .map(|t| PathBuf::from(OsStr::from_bytes(t.as_bytes())));
        let dangling = rustix::fs::statat(&*self.fd, name, AtFlags::empty()).is_err();
        DirError::Symlink {
            dir: self.path.join(name),
            target,
            dangling,
        }
    }
}

fn symlink_error(path: &Path) -> DirError {
    DirError::Symlink {
        dir: path.to_owned(),
        target: fs::read_link(path).ok(),
        dangling: fs::metadata(path).is_err(),
    }
}

/// A name that stays inside its directory.
fn is_component(name: &OsStr) -> bool {
    let b = name.as_bytes();
    !b.is_empty() && b != b"." && b != b".." && !b.contains(&b'/') && !b.contains(&0)
}

/// Checks an opened directory handle: a directory, owned by us, not writable by group or
/// others; tightens other permission bits to 0700 (keys are for stek's user and the servers it
/// feeds, which run as root at load).
fn verify_private(fd: &impl AsFd, path: &Path) -> Result<(), DirError> {
    let st = rustix::fs::fstat(fd).map_err(|e| DirError::Io(path.to_owned(), e.into()))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return Err(DirError::NotDir(path.to_owned()));
    }
    let me = rustix::process::geteuid().as_raw();
    let mode = st.st_mode & 0o7777;
    if st.st_uid != me || mode & 0o022 != 0 {
        return Err(DirError::NotPrivate {
            dir: path.to_owned(),
            uid: st.st_uid,
            mode,
            want_uid: me,
        });
    }
    if mode != 0o700 {
        rustix::fs::fchmod(fd, Mode::from_raw_mode(0o700))
            .map_err(|e| DirError::Io(path.to_owned(), e.into()))?;
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Creates `path` with mode 0600 and writes `bytes`, refusing to overwrite an existing file
/// (for private keys made by `stek keygen`).
pub fn create_new_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                io::Error::new(e.kind(), "the file exists; refusing to overwrite a key")
            } else {
                e
            }
        })?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// What `op` returns on another thread, which must not take 10 s (a FIFO opened without
    /// `O_NONBLOCK` or `O_DIRECTORY` waits for a writer forever; the thread is then left).
    fn unblocked<T: Send + 'static>(
        k: &KeyDir,
        op: impl FnOnce(&KeyDir) -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        let k = k.clone();
        std::thread::spawn(move || tx.send(op(&k)));
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("opening a FIFO blocked")
    }

    /// A file `victim` holding "precious" outside the key directory `dir/keys`, and a link to
    /// it at `keys/name`: returns the victim's path.
    fn planted_link(dir: &Path, name: &str) -> PathBuf {
        let victim = dir.join("victim");
        fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("keys").join(name)).unwrap();
        victim
    }

    /// Whether `fd` is closed on exec (not inherited by the reload command or other children).
    fn cloexec(fd: impl AsFd) -> bool {
        rustix::io::fcntl_getfd(fd)
            .unwrap()
            .contains(rustix::io::FdFlags::CLOEXEC)
    }

    fn key_dir() -> (tempfile::TempDir, KeyDir) {
        let d = tempfile::tempdir_in("/dev/shm").unwrap();
        let (k, check) = KeyDir::open(&d.path().join("keys"), false).unwrap();
        assert_eq!(check, DirCheck::Memory("tmpfs"));
        (d, k)
    }

    #[test]
    fn dir_errors_keep_the_systems_error() {
        use std::error::Error as _;
        let e = DirError::Io(PathBuf::from("/x"), io::Error::other("EACCES"));
        assert_eq!(e.to_string(), "cannot examine /x");
        assert_eq!(e.source().unwrap().to_string(), "EACCES");
    }

    #[test]
    fn atomic_write_is_private_and_complete() {
        let (d, k) = key_dir();
        let p = d.path().join("keys/k.key");
        k.write_atomic("k.key", &[1; 80]).unwrap();
        k.write_atomic("k.key", &[2; 80]).unwrap();
        assert_eq!(fs::read(&p).unwrap(), vec![2; 80]);
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            k.names().unwrap(),
            vec![OsString::from("k.key")],
            "no temp file left"
        );
        k.erase(OsStr::new("k.key")).unwrap();
        assert!(!p.exists());
        k.erase(OsStr::new("k.key")).unwrap();
        assert!(k.write_atomic("../k.key", b"x").is_err());
        assert!(k.erase(OsStr::new("..")).is_err());
    }

    /// Erasing overwrites the key bytes in place before the name goes: a reader that still has
    /// the file open (the inode outlives the name) sees zeros, not the key.
    #[test]
    fn erase_zeroes_the_bytes_before_unlinking() {
        use std::io::{Read as _, Seek as _};
        let (d, k) = key_dir();
        k.write_atomic("k.key", &[0xA5; 80]).unwrap();
        let mut open = fs::File::open(d.path().join("keys/k.key")).unwrap();
        k.erase(OsStr::new("k.key")).unwrap();
        assert!(!d.path().join("keys/k.key").exists());
        let mut left = Vec::new();
        open.rewind().unwrap();
        open.read_to_end(&mut left).unwrap();
        assert_eq!(left, vec![0u8; 80], "the inode still held key bytes");
    }

    #[test]
    fn private_dirs_are_created_and_tightened() {
        let d = tempfile::tempdir_in("/dev/shm").unwrap();
        let top = d.path().join("a/b");
        let (k, _) = KeyDir::open(&top, false).unwrap();
        let sub = k.subdir("nginx").unwrap().subdir("keys").unwrap();
        assert_eq!(sub.path(), top.join("nginx/keys"));
        for p in [&top, &top.join("nginx"), &top.join("nginx/keys")] {
            assert_eq!(fs::metadata(p).unwrap().mode() & 0o777, 0o700, "{p:?}");
        }
        // Our own directory, readable by others: tightened, not refused.
        fs::set_permissions(top.join("nginx"), fs::Permissions::from_mode(0o755)).unwrap();
        k.subdir("nginx").unwrap();
        assert_eq!(
            fs::metadata(top.join("nginx")).unwrap().mode() & 0o777,
            0o700
        );
        assert!(k.subdir("a/b").is_err());
    }

    #[test]
    fn writable_by_others_is_refused_naming_owner_and_mode() {
        let d = tempfile::tempdir_in("/dev/shm").unwrap();
        let top = d.path().join("open");
        fs::create_dir(&top).unwrap();
        fs::set_permissions(&top, fs::Permissions::from_mode(0o777)).unwrap();
        let e = KeyDir::open(&top, false).unwrap_err();
        let me = rustix::process::geteuid().as_raw();
        assert!(
            matches!(e, DirError::NotPrivate { mode: 0o777, .. }),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains(&top.display().to_string())
                && msg.contains(&format!("owner uid {me}"))
                && msg.contains("mode 0777"),
            "{msg}"
        );
        // The same for a subdirectory opened later.
        fs::set_permissions(&top, fs::Permissions::from_mode(0o700)).unwrap();
        let (k, _) = KeyDir::open(&top, false).unwrap();
        fs::create_dir(top.join("apache")).unwrap();
        fs::set_permissions(top.join("apache"), fs::Permissions::from_mode(0o770)).unwrap();
        assert!(matches!(
            k.subdir("apache"),
            Err(DirError::NotPrivate { mode: 0o770, .. })
        ));
    }

    #[test]
    fn another_owner_is_refused() {
        if rustix::process::geteuid().as_raw() != 0 {
            // Only root can give a directory away; CI and this machine run tests as root.
            eprintln!("skipped: needs root to chown");
            return;
        }
        let d = tempfile::tempdir_in("/dev/shm").unwrap();
        let top = d.path().join("theirs");
        fs::create_dir(&top).unwrap();
        std::os::unix::fs::chown(&top, Some(65534), Some(65534)).unwrap();
        fs::set_permissions(&top, fs::Permissions::from_mode(0o700)).unwrap();
        let e = KeyDir::open(&top, false).unwrap_err();
        assert!(
            matches!(e, DirError::NotPrivate { uid: 65534, .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("owner uid 65534"), "{e}");
        assert_eq!(fs::read_dir(&top).unwrap().count(), 0, "nothing written");
    }

    #[test]
    fn symlinks_are_never_followed() {
        let (d, k) = key_dir();
        // A file the link points at, outside the key directory: erasure removes the link only.
        let victim = d.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, d.path().join("keys/1000.key")).unwrap();
        k.erase(OsStr::new("1000.key")).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(d.path().join("keys/1000.key").symlink_metadata().is_err());
        // A hard link: unlinked, the other name keeps its content.
        fs::hard_link(&victim, d.path().join("keys/1004.key")).unwrap();
        k.erase(OsStr::new("1004.key")).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(!d.path().join("keys/1004.key").exists());
        // A link at a name being written: replaced, not written through.
        std::os::unix::fs::symlink(&victim, d.path().join("keys/ticket.key")).unwrap();
        let (written, log) = crate::testlog::capture(|| k.write_atomic("ticket.key", &[7; 48]));
        written.unwrap();
        assert!(
            log.contains("ticket.key was a symbolic link: replaced by the file"),
            "{log}"
        );
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        // Written again, over the file it now is: nothing to say.
        let (written, log) = crate::testlog::capture(|| k.write_atomic("ticket.key", &[8; 48]));
        written.unwrap();
        assert!(log.is_empty(), "{log}");
        let m = d.path().join("keys/ticket.key").symlink_metadata().unwrap();
        assert!(m.is_file() && m.mode() & 0o777 == 0o600);
        // Temporary files left by a crash are erased at start; other names are not.
        fs::write(d.path().join("keys/.ticket.key.1234.tmp"), [9; 48]).unwrap();
        fs::write(d.path().join("keys/.tmp"), b"x").unwrap();
        // The shortest name counted as stek's: a dot, two characters, `.tmp`.
        fs::write(d.path().join("keys/.x.tmp"), b"x").unwrap();
        fs::write(d.path().join("keys/.xy.tmp"), b"x").unwrap();
        assert_eq!(k.erase_temporaries().unwrap(), 2);
        assert!(d.path().join("keys/.x.tmp").exists() && !d.path().join("keys/.xy.tmp").exists());
        assert!(!d.path().join("keys/.ticket.key.1234.tmp").exists());
        assert!(d.path().join("keys/.tmp").exists() && d.path().join("keys/ticket.key").exists());
        // A directory is left alone.
        fs::create_dir(d.path().join("keys/sub")).unwrap();
        k.erase(OsStr::new("sub")).unwrap();
        assert!(d.path().join("keys/sub").is_dir());
    }

    #[test]
    fn symlinked_directories_are_refused() {
        let (d, k) = key_dir();
        let elsewhere = d.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(elsewhere.join("f"), b"x").unwrap();
        std::os::unix::fs::symlink(&elsewhere, d.path().join("keys/nginx")).unwrap();
        let e = k.subdir("nginx").unwrap_err();
        assert!(
            matches!(
                e,
                DirError::Symlink {
                    dangling: false,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(fs::metadata(&elsewhere).unwrap().mode() & 0o777, 0o755);
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 1);
        // DIR itself: a link to a directory, and a dangling one.
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        assert!(matches!(
            KeyDir::open(&link, false),
            Err(DirError::Symlink {
                dangling: false,
                ..
            })
        ));
        let dangling = d.path().join("dangling");
        std::os::unix::fs::symlink(d.path().join("nowhere"), &dangling).unwrap();
        let e = KeyDir::open(&dangling, false).unwrap_err();
        assert!(e.to_string().contains("(which does not exist)"), "{e}");
        assert!(!d.path().join("nowhere").exists());
    }

    #[test]
    fn persistent_dirs_are_refused_by_name() {
        // At least one of these is on a disk wherever the tests run (the build tree may be on
        // tmpfs, /var/tmp rarely is, /etc never is); each refused one is refused by name and
        // left uncreated.
        let mut refused = 0;
        for base in [env!("CARGO_MANIFEST_DIR"), "/var/tmp", "/etc"] {
            let dir = Path::new(base).join("stek-not/yet");
            match check_dir(&dir, false) {
                Err(DirError::Persistent { fs, .. }) => {
                    assert!(!fs.is_empty());
                    assert!(matches!(
                        KeyDir::open(&dir, false),
                        Err(DirError::Persistent { .. })
                    ));
                    // `--allow-persistent-dir` lets it through, named.
                    assert!(
                        matches!(check_dir(&dir, true), Ok(DirCheck::PersistentAllowed(ref f)) if *f == fs)
                    );
                    refused += 1;
                }
                Ok(DirCheck::Memory(_)) => {}
                other => panic!("unexpected {other:?} for {}", dir.display()),
            }
            assert!(!dir.exists(), "checking must not create anything");
            assert!(!Path::new(base).join("stek-not").exists());
        }
        assert!(refused > 0, "no persistent file system found to check");
        assert!(matches!(
            check_dir(Path::new("/dev/shm/stek-test/x"), false),
            Ok(DirCheck::Memory("tmpfs"))
        ));
    }

    /// The mount type named in a refusal is the one `/proc/self/mounts` gives the path.
    #[test]
    fn file_systems_are_named_from_the_mount_table() {
        assert_eq!(fs_name(Path::new("/dev/shm")).as_deref(), Some("tmpfs"));
        assert_eq!(fs_name(Path::new("/proc/self")).as_deref(), Some("proc"));
        assert_eq!(fs_name(Path::new("/no/such/path")), None);
    }

    /// The default directory: the first candidate in memory, `$XDG_RUNTIME_DIR/stek` between
    /// `/run/stek` and `/dev/shm/stek`, an empty `$XDG_RUNTIME_DIR` ignored (it would make a
    /// relative path).
    #[test]
    fn the_default_dir_is_the_first_candidate_in_memory() {
        let run = PathBuf::from("/run/stek");
        let shm = PathBuf::from("/dev/shm/stek");
        assert_eq!(default_candidates(None), [run.clone(), shm.clone()]);
        assert_eq!(
            default_candidates(Some(OsString::new())),
            [run.clone(), shm.clone()]
        );
        assert_eq!(
            default_candidates(Some("/run/user/1000".into())),
            [run, PathBuf::from("/run/user/1000/stek"), shm]
        );
        let dir = default_dir().expect("/dev/shm is tmpfs here");
        assert!(dir.is_absolute() && dir.ends_with("stek"), "{dir:?}");
        assert!(matches!(check_dir(&dir, false), Ok(DirCheck::Memory(_))));
    }

    /// A path the system cannot even look up (a component is a file) is an error about that
    /// path, with the system's reason; nothing is created on the way.
    #[test]
    fn an_unusable_path_is_refused_with_the_systems_reason() {
        let d = tempfile::tempdir_in("/dev/shm").unwrap();
        let file = d.path().join("file");
        fs::write(&file, b"").unwrap();
        let path = file.join("keys");
        match KeyDir::open(&path, false) {
            Err(DirError::Io(p, e)) => {
                assert_eq!(p, path);
                assert_eq!(e.kind(), io::ErrorKind::NotADirectory, "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(KeyDir::open(&file, false), Err(DirError::NotDir(p)) if p == file));
    }

    /// A file, or a FIFO (whose plain open would wait for a writer forever), planted where a
    /// subdirectory goes is refused at once as not a directory; the handles of the directories
    /// are not inherited by the reload command.
    #[test]
    fn a_planted_file_or_fifo_is_not_a_directory() {
        let (d, k) = key_dir();
        fs::write(d.path().join("keys/file"), b"").unwrap();
        rustix::fs::mkfifoat(&*k.fd, "fifo", Mode::from_raw_mode(0o600)).unwrap();
        for name in ["file", "fifo"] {
            let got = unblocked(&k, move |k| k.subdir(name).map(|_| ()));
            assert!(
                matches!(got, Err(DirError::NotDir(ref p)) if p.ends_with(name)),
                "{got:?}"
            );
        }
        for fd in [&*k.fd, &*k.subdir("nginx").unwrap().fd] {
            assert!(cloexec(fd));
        }
    }

    /// A new file is never an existing one nor written through a link at its name, is 0600,
    /// and its descriptor is not inherited by children.
    #[test]
    fn new_files_are_new_private_and_not_inherited() {
        let (d, k) = key_dir();
        let victim = planted_link(d.path(), "link");
        fs::write(d.path().join("keys/file"), b"old").unwrap();
        for planted in ["link", "file"] {
            assert_eq!(
                k.create_new(planted).unwrap_err(),
                Errno::EXIST,
                "{planted}"
            );
        }
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(fs::read(d.path().join("keys/file")).unwrap(), b"old");
        let fd = k.create_new("new").unwrap();
        assert!(cloexec(&fd));
        let m = fs::metadata(d.path().join("keys/new")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o600);
    }

    /// The head of a key file: a link is not followed, a FIFO neither blocks nor is read,
    /// a missing file is `None`, and the descriptor is not inherited by children.
    #[test]
    fn a_files_head_is_read_without_following_or_waiting() {
        let (d, k) = key_dir();
        fs::write(d.path().join("keys/stek.key"), [5u8; 92]).unwrap();
        assert_eq!(k.read_head("stek.key", 12).unwrap(), Some(vec![5u8; 12]));
        assert_eq!(k.read_head("stek.key", 500).unwrap(), Some(vec![5u8; 92]));
        assert_eq!(k.read_head("absent", 12).unwrap(), None);
        planted_link(d.path(), "link");
        assert!(k.read_head("link", 12).is_err());
        rustix::fs::mkfifoat(&*k.fd, "fifo", Mode::from_raw_mode(0o600)).unwrap();
        let got = unblocked(&k, |k| k.read_head("fifo", 12).map_err(|e| e.kind()));
        assert_eq!(got, Err(io::ErrorKind::InvalidData));
        let fd = k
            .open_existing(OsStr::new("stek.key"), OFlags::RDONLY)
            .unwrap();
        assert!(cloexec(&fd));
    }

    /// The erasure's open: a link is not followed, a FIFO without a reader fails at once
    /// (ENXIO) instead of waiting, and the descriptor is not inherited by children.
    #[test]
    fn the_erasures_open_never_follows_or_waits() {
        let (d, k) = key_dir();
        let victim = planted_link(d.path(), "link");
        assert_eq!(
            k.open_existing(OsStr::new("link"), OFlags::WRONLY)
                .unwrap_err(),
            Errno::LOOP
        );
        rustix::fs::mkfifoat(&*k.fd, "fifo", Mode::from_raw_mode(0o600)).unwrap();
        let got = unblocked(&k, |k| {
            k.open_existing(OsStr::new("fifo"), OFlags::WRONLY)
                .map(|_| ())
        });
        assert_eq!(got, Err(Errno::NXIO));
        fs::write(d.path().join("keys/k.key"), [1u8; 80]).unwrap();
        let fd = k
            .open_existing(OsStr::new("k.key"), OFlags::WRONLY)
            .unwrap();
        assert!(cloexec(&fd));
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
    }

    /// `stek keygen`'s private keys: 0600, all the bytes, never over an existing file or
    /// through a link at the name, and the refusal says why.
    #[test]
    fn private_keys_are_created_new_and_private() {
        let d = tempfile::tempdir_in("/dev/shm").unwrap();
        let path = d.path().join("group.key");
        create_new_private(&path, b"secret key text").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"secret key text");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let e = create_new_private(&path, b"other").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert!(e.to_string().contains("refusing to overwrite a key"), "{e}");
        assert_eq!(fs::read(&path).unwrap(), b"secret key text");
        let victim = d.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, d.path().join("link.key")).unwrap();
        let e = create_new_private(&d.path().join("link.key"), b"other").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        // Other errors keep the system's own text.
        let e = create_new_private(&d.path().join("no/such/dir.key"), b"x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(!e.to_string().contains("refusing"), "{e}");
    }

    #[test]
    fn temporary_names_are_lowercase_hex() {
        assert_eq!(hex(&[0x00, 0xab, 0x7f, 0x10]), "00ab7f10");
        assert_eq!(hex(&[]), "");
    }
}

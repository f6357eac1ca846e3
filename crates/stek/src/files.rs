//! Key files: the one helper that writes them, the check that they live in memory only, and
//! erasure.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::sys;

/// Where key files may go, as decided by [`check_dir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirCheck {
    /// On tmpfs or ramfs (the name says which).
    Memory(&'static str),
    /// On a persistent file system (named), allowed by the operator's explicit override.
    PersistentAllowed(String),
}

/// Why a directory was refused.
#[derive(Debug)]
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
        }
    }
}

impl std::error::Error for DirError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DirError::Io(_, e) => Some(e),
            DirError::Persistent { .. } => None,
        }
    }
}

/// The nearest existing ancestor of `dir` (itself if it exists): it shares its file system
/// with whatever would be created below it.
fn existing_ancestor(dir: &Path) -> &Path {
    dir.ancestors()
        .find(|a| a.exists())
        .unwrap_or_else(|| Path::new("/"))
}

/// Checks, without creating anything, that `dir` lies (or would lie) on tmpfs or ramfs.
pub fn check_dir(dir: &Path, allow_persistent: bool) -> Result<DirCheck, DirError> {
    let anc = existing_ancestor(dir);
    let magic = sys::fs_magic(anc).map_err(|e| DirError::Io(dir.to_owned(), e))?;
    match magic {
        sys::TMPFS_MAGIC => Ok(DirCheck::Memory("tmpfs")),
        sys::RAMFS_MAGIC => Ok(DirCheck::Memory("ramfs")),
        other => {
            let fs = fs_name(anc).unwrap_or_else(|| format!("file system type 0x{other:x}"));
            if allow_persistent {
                Ok(DirCheck::PersistentAllowed(fs))
            } else {
                Err(DirError::Persistent {
                    dir: dir.to_owned(),
                    fs,
                })
            }
        }
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
    let mut candidates = vec![PathBuf::from("/run/stek")];
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|x| !x.is_empty()) {
        candidates.push(PathBuf::from(x).join("stek"));
    }
    candidates.push(PathBuf::from("/dev/shm/stek"));
    candidates
        .into_iter()
        .find(|c| matches!(check_dir(c, false), Ok(DirCheck::Memory(_))))
}

/// Creates `dir` (and parents) with mode 0700, and tightens an existing one to 0700.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Writes `bytes` to `path` atomically with mode 0600: a temporary file in the same directory,
/// written and synced, then renamed over `path`. Readers see the old file or the new one, never
/// a partial key.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // An older temporary file may have had other permissions.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
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

/// Overwrites a key file with zeros, then removes it. Missing files are fine.
pub fn erase(path: &Path) -> io::Result<()> {
    match fs::metadata(path) {
        Ok(m) => {
            if let Ok(mut f) = OpenOptions::new().write(true).open(path) {
                let len = usize::try_from(m.len()).unwrap_or(0).min(1 << 20);
                f.write_all(&vec![0u8; len])?;
                f.sync_all()?;
            }
            fs::remove_file(path)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn dir_errors_keep_the_systems_error() {
        use std::error::Error as _;
        let e = DirError::Io(PathBuf::from("/x"), io::Error::other("EACCES"));
        assert_eq!(e.to_string(), "cannot examine /x");
        assert_eq!(e.source().unwrap().to_string(), "EACCES");
    }

    #[test]
    fn atomic_write_is_private_and_complete() {
        let d = tempfile::tempdir_in("/dev/shm").unwrap();
        let p = d.path().join("k.key");
        write_atomic(&p, &[1; 80]).unwrap();
        write_atomic(&p, &[2; 80]).unwrap();
        assert_eq!(fs::read(&p).unwrap(), vec![2; 80]);
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temp file left"
        );
        erase(&p).unwrap();
        assert!(!p.exists());
        erase(&p).unwrap();
    }

    #[test]
    fn private_dirs() {
        let d = tempfile::tempdir_in("/dev/shm").unwrap();
        let sub = d.path().join("a/b");
        ensure_private_dir(&sub).unwrap();
        assert_eq!(fs::metadata(&sub).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn persistent_dirs_are_refused_by_name() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("not/yet");
        match check_dir(&dir, false) {
            Err(DirError::Persistent { fs, .. }) => assert!(!fs.is_empty()),
            Ok(DirCheck::Memory(_)) => {} // a target dir on tmpfs: nothing to check here
            other => panic!("unexpected {other:?}"),
        }
        assert!(!dir.exists(), "checking must not create anything");
        assert!(matches!(
            check_dir(Path::new("/dev/shm/stek-test/x"), false),
            Ok(DirCheck::Memory("tmpfs"))
        ));
    }
}

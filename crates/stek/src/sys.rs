//! The only module with `unsafe`: thin calls into libc for process hygiene and file-system
//! identification. Each block states why it is sound.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `statfs(2)` magic of tmpfs.
pub const TMPFS_MAGIC: i64 = 0x0102_1994;
/// `statfs(2)` magic of ramfs.
pub const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// The file-system type magic of the file system holding `path`.
pub fn fs_magic(path: &Path) -> io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut buf = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call; `buf` points to
    // writable memory of the size statfs expects.
    let rc = unsafe { libc::statfs(c.as_ptr(), buf.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statfs returned 0, so it initialised the whole struct.
    let st = unsafe { buf.assume_init() };
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets.
    Ok(st.f_type as i64)
}

/// What process hygiene achieved; each field is `Err` with the reason when a step failed.
#[derive(Debug)]
pub struct Hygiene {
    /// Core dumps disabled (RLIMIT_CORE = 0).
    pub no_core: io::Result<()>,
    /// Marked not dumpable (no ptrace attach by other users, no core).
    pub not_dumpable: io::Result<()>,
    /// All memory locked (never swapped to disk).
    pub locked: io::Result<()>,
    /// The open-file limit raised to its hard limit (the memcached server holds one descriptor
    /// per client), with the new soft limit.
    pub files: io::Result<u64>,
}

/// Disables core dumps, marks the process not dumpable and locks its memory where permitted.
///
/// Memory is locked only when the process may lock without a limit (root with CAP_IPC_LOCK, or
/// `RLIMIT_MEMLOCK` infinite): with `MCL_FUTURE` under a small limit, later allocations would
/// fail, which is worse than the risk it removes.
pub fn harden() -> Hygiene {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads a valid rlimit struct we own.
    let no_core = check(unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) });
    // SAFETY: PR_SET_DUMPABLE takes integer arguments only.
    let not_dumpable = check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) });

    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a valid rlimit struct we own.
    let got = check(unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) });
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let locked = match got {
        Err(e) => Err(e),
        Ok(()) if root || lim.rlim_cur == libc::RLIM_INFINITY => {
            // SAFETY: mlockall takes flags only.
            check(unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) })
        }
        Ok(()) => Err(io::Error::other(format!(
            "RLIMIT_MEMLOCK is {} bytes; run as root or with LimitMEMLOCK=infinity to lock memory",
            lim.rlim_cur
        ))),
    };
    let mut nofile = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a valid rlimit struct we own.
    let files =
        check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut nofile) }).and_then(|()| {
            if nofile.rlim_cur < nofile.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: nofile.rlim_max,
                    rlim_max: nofile.rlim_max,
                };
                // SAFETY: setrlimit reads a valid rlimit struct we own.
                check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) })?;
                nofile.rlim_cur = nofile.rlim_max;
            }
            #[allow(clippy::useless_conversion)] // rlim_t's width differs between targets.
            Ok(u64::from(nofile.rlim_cur))
        });
    Hygiene {
        no_core,
        not_dumpable,
        locked,
        files,
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_shm_is_tmpfs_and_proc_is_not() {
        assert_eq!(fs_magic(Path::new("/dev/shm")).unwrap(), TMPFS_MAGIC);
        // Another file system reads as another magic (procfs, 0x9fa0, wherever Linux runs).
        assert_eq!(fs_magic(Path::new("/proc")).unwrap(), 0x9fa0);
        assert!(fs_magic(Path::new("/nonexistent/really")).is_err());
    }
}

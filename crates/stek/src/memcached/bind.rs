//! Turning an address string into a bound [`Listener`], with the checks that keep the keys
//! local: loopback TCP unless remote access is asked for, unix sockets usable by the owner
//! only (mode 0600), or by the owner and one group (mode 0660, the socket's group set).
//!
//! A socket inside stek's key directory (mode 0700) cannot be reached by anyone but its owner,
//! whatever the socket's own mode: a group that must connect needs a directory it can
//! traverse. [`prepare_socket_dir`] makes one (mode 0750, stek's uid, the group) for the
//! default path, a sibling of the key directory (`/run/stek` -> `/run/stek-memcached/`); it
//! holds the socket only, no key file.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, UnixListener, UnixStream};

use super::server::Listener;

/// The longest unix socket path Linux accepts (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Why an address could not be served on.
#[derive(Debug)]
#[non_exhaustive]
pub enum BindError {
    /// The address is neither `HOST:PORT` nor a path (a path contains `/`).
    BadAddress {
        /// The address as given.
        addr: String,
        /// What the resolver said.
        source: io::Error,
    },
    /// The address is not a loopback address and remote access was not allowed: anyone who
    /// can reach it could read the ticket keys.
    NotLoopback {
        /// The address as given.
        addr: String,
        /// The non-loopback address it resolved to.
        ip: IpAddr,
    },
    /// Something that is not a socket exists at the socket path; stek never removes it.
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A server is listening on the socket path already.
    InUse {
        /// The path.
        path: PathBuf,
    },
    /// The socket path is longer than the 107 bytes the kernel accepts.
    PathTooLong {
        /// The path.
        path: PathBuf,
    },
    /// The socket directory exists and is not a directory stek owns (a symlink, another
    /// user's directory): someone else could replace the socket in it.
    UnsafeDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// Binding, or setting the socket file's mode, failed.
    Io {
        /// What was being done.
        action: &'static str,
        /// The address or path.
        target: String,
        /// The system's error.
        source: io::Error,
    },
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The causes are the sources, not repeated here.
            BindError::BadAddress { addr, .. } => write!(
                f,
                "{addr:?} is neither HOST:PORT (like 127.0.0.1:11211 or [::1]:11211) nor a unix \
                 socket path (a path contains '/')"
            ),
            BindError::NotLoopback { addr, ip } => write!(
                f,
                "{addr} is not a loopback address ({ip}): anyone who can reach it could read the \
                 ticket keys; use 127.0.0.1:PORT, [::1]:PORT or a unix socket path, or allow \
                 remote access explicitly (--memcached-allow-remote)"
            ),
            BindError::NotASocket { path } => write!(
                f,
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ),
            BindError::InUse { path } => write!(
                f,
                "another server is listening on {} already",
                path.display()
            ),
            BindError::PathTooLong { path } => write!(
                f,
                "unix socket path {} is longer than the {MAX_SOCKET_PATH} bytes the kernel accepts",
                path.display()
            ),
            BindError::UnsafeDir { path, why } => write!(
                f,
                "refusing the socket directory {}: {why}; remove it or choose another --dir or --memcached PATH",
                path.display()
            ),
            BindError::Io { action, target, .. } => write!(f, "cannot {action} {target}"),
        }
    }
}

impl std::error::Error for BindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BindError::BadAddress { source, .. } | BindError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// How [`bind_with`] binds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BindOptions {
    /// Allow a TCP address that is not loopback.
    pub allow_remote: bool,
    /// Give unix sockets this group and mode 0660 (else mode 0600).
    pub group: Option<u32>,
}

impl BindOptions {
    /// Loopback TCP only, unix sockets 0600.
    pub fn new() -> BindOptions {
        BindOptions::default()
    }
}

/// Binds `addr`: a unix socket path if it contains `/`, else `HOST:PORT`.
///
/// - `HOST:PORT` must resolve to loopback addresses only (127.0.0.0/8, ::1) unless
///   `allow_remote`. Port 0 picks a free port ([`Listener::tcp_addr`] tells which).
/// - A socket path gets mode 0600. It is bound under a temporary name in the same directory,
///   given its mode, then renamed into place, so the socket is never reachable with looser
///   permissions. A stale socket (nobody listening) at the path is replaced; a live one, or
///   anything that is not a socket (a symlink included), is refused.
pub async fn bind(addr: &str, allow_remote: bool) -> Result<Listener, BindError> {
    bind_with(
        addr,
        BindOptions {
            allow_remote,
            ..BindOptions::new()
        },
    )
    .await
}

/// [`bind`], and with [`BindOptions::group`] a unix socket of mode 0660 in that group (set
/// under the temporary name, before the socket is reachable at its path). Its directory is
/// left as it is: the group must be able to traverse it (see [`prepare_socket_dir`]).
pub async fn bind_with(addr: &str, options: BindOptions) -> Result<Listener, BindError> {
    let allow_remote = options.allow_remote;
    if addr.contains('/') {
        return bind_unix(Path::new(addr), options.group).await;
    }
    let addrs: Vec<SocketAddr> = match addr.parse::<SocketAddr>() {
        Ok(a) => vec![a],
        Err(_) => tokio::net::lookup_host(addr)
            .await
            .map_err(|source| BindError::BadAddress {
                addr: addr.to_owned(),
                source,
            })?
            .collect(),
    };
    if !allow_remote {
        if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            return Err(BindError::NotLoopback {
                addr: addr.to_owned(),
                ip: a.ip(),
            });
        }
    }
    let l = TcpListener::bind(&addrs[..])
        .await
        .map_err(|source| BindError::Io {
            action: "listen on",
            target: addr.to_owned(),
            source,
        })?;
    Ok(Listener::Tcp(l))
}

/// Makes `dir` a directory for a socket the group `gid` may use: created if missing (mode
/// 0750), then checked to be a real directory (not a symlink) owned by this process's uid, and
/// given group `gid` and mode 0750 (only stek may create or replace files in it; the group may
/// reach the socket). Its parent must exist. The checks and changes act on the open
/// directory, not its path, so a directory swapped in meanwhile is not the one changed.
pub fn prepare_socket_dir(dir: &Path, gid: u32) -> Result<(), BindError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
    let io_err = |action| {
        let target = dir.display().to_string();
        move |source| BindError::Io {
            action,
            target,
            source,
        }
    };
    match std::fs::DirBuilder::new().mode(0o750).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err("create the socket directory")(e)),
    }
    let unsafe_dir = |why: String| BindError::UnsafeDir {
        path: dir.to_owned(),
        why,
    };
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir);
    let d = match opened {
        Ok(d) => d,
        // O_NOFOLLOW on a symlink: ELOOP; O_DIRECTORY on anything else: ENOTDIR.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
            return Err(unsafe_dir("it is not a directory (or is a symlink)".into()))
        }
        Err(e) => return Err(io_err("open the socket directory")(e)),
    };
    let m = d
        .metadata()
        .map_err(io_err("inspect the socket directory"))?;
    let own = rustix::process::geteuid().as_raw();
    if m.uid() != own {
        return Err(unsafe_dir(format!(
            "it belongs to uid {}, not to stek's uid {own}",
            m.uid()
        )));
    }
    if m.gid() != gid {
        std::os::unix::fs::fchown(&d, None, Some(gid))
            .map_err(io_err("give the group to the socket directory"))?;
    }
    if m.mode() & 0o7777 != 0o750 {
        d.set_permissions(std::fs::Permissions::from_mode(0o750))
            .map_err(io_err("set mode 0750 on the socket directory"))?;
    }
    Ok(())
}

/// Gives a freshly bound socket its mode, and its group when it has one.
fn set_socket_access(path: &Path, group: Option<u32>) -> Result<(), BindError> {
    let io_err = |action, source| BindError::Io {
        action,
        target: path.display().to_string(),
        source,
    };
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid))
            .map_err(|e| io_err("give the group to", e))?;
    }
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
        io_err(
            if group.is_some() {
                "set mode 0660 on"
            } else {
                "set mode 0600 on"
            },
            e,
        )
    })
}

async fn bind_unix(path: &Path, group: Option<u32>) -> Result<Listener, BindError> {
    let io_err = |action, path: &Path| {
        let target = path.display().to_string();
        move |source| BindError::Io {
            action,
            target,
            source,
        }
    };
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(BindError::PathTooLong {
            path: path.to_owned(),
        });
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match UnixStream::connect(path).await {
            Ok(_) => {
                return Err(BindError::InUse {
                    path: path.to_owned(),
                })
            }
            // Nobody listening: a stale socket, replaced below.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("check the existing socket", path)(e)),
        },
        Ok(_) => {
            return Err(BindError::NotASocket {
                path: path.to_owned(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspect", path)(e)),
    }

    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".stek-{}.sock.tmp", std::process::id()));
    if name.is_none() || tmp.as_os_str().len() > MAX_SOCKET_PATH {
        // No room for a temporary name: bind in place; the directory's own mode (0700 for
        // stek's) then covers the moment before chmod.
        let l = UnixListener::bind(path).map_err(io_err("listen on", path))?;
        set_socket_access(path, group)?;
        return Ok(Listener::Unix(l));
    }
    // A leftover from a process that had our pid: ours to replace only if it is a socket.
    if let Ok(m) = std::fs::symlink_metadata(&tmp) {
        if !m.file_type().is_socket() {
            return Err(BindError::NotASocket { path: tmp });
        }
        std::fs::remove_file(&tmp).map_err(io_err("remove", &tmp))?;
    }
    let l = UnixListener::bind(&tmp).map_err(io_err("listen on", &tmp))?;
    let placed = set_socket_access(&tmp, group)
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io_err("move the socket to", path)));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(Listener::Unix(l))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tcp_must_be_loopback_unless_allowed() {
        let l = bind("127.0.0.1:0", false).await.unwrap();
        assert!(l.tcp_addr().unwrap().ip().is_loopback());
        assert_ne!(l.tcp_addr().unwrap().port(), 0);
        // ::1 may be missing in containers without IPv6; only check it is not refused as
        // remote.
        if let Err(e) = bind("[::1]:0", false).await {
            assert!(matches!(e, BindError::Io { .. }), "{e}");
        }
        for remote in ["0.0.0.0:0", "192.0.2.1:0", "[::]:0"] {
            let e = bind(remote, false).await.unwrap_err();
            assert!(matches!(e, BindError::NotLoopback { .. }), "{remote}: {e}");
            assert!(e.to_string().contains("not a loopback address"), "{e}");
        }
        // Allowed explicitly: 0.0.0.0 binds.
        assert!(bind("0.0.0.0:0", true).await.is_ok());
        for bad in ["nonsense", "127.0.0.1", "127.0.0.1:99999", ""] {
            let e = bind(bad, false).await.unwrap_err();
            assert!(matches!(e, BindError::BadAddress { .. }), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn unix_sockets_are_private_and_stale_ones_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mc.sock");
        let p = path.to_str().unwrap();
        let l = bind(p, false).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(l, Listener::Unix(_)));
        // Live: refused.
        let e = bind(p, false).await.unwrap_err();
        assert!(matches!(e, BindError::InUse { .. }), "{e}");
        // Stale: replaced.
        drop(l);
        let l = bind(p, false).await.unwrap();
        assert!(UnixStream::connect(&path).await.is_ok());
        drop(l);
        // Not a socket: never removed.
        let file = dir.path().join("file");
        std::fs::write(&file, b"keep me").unwrap();
        let e = bind(file.to_str().unwrap(), false).await.unwrap_err();
        assert!(matches!(e, BindError::NotASocket { .. }), "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let e = bind(link.to_str().unwrap(), false).await.unwrap_err();
        assert!(matches!(e, BindError::NotASocket { .. }), "{e}");
        // Too long.
        let long = format!("/tmp/{}", "x".repeat(120));
        assert!(matches!(
            bind(&long, false).await.unwrap_err(),
            BindError::PathTooLong { .. }
        ));
        // Missing directory: a clear I/O error naming the path.
        let e = bind("/nonexistent-stek-dir/mc.sock", false)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent-stek-dir/"), "{e}");
        // The system's error is the source, not repeated in the message.
        let cause = std::error::Error::source(&e).unwrap().to_string();
        assert!(!e.to_string().contains(&cause), "{e}");
        // No temporary file left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// A gid this process may give its files: its own, or (as root, as in CI) nogroup's.
    fn other_gid() -> u32 {
        if rustix::process::geteuid().is_root() {
            65534
        } else {
            rustix::process::getegid().as_raw()
        }
    }

    #[tokio::test]
    async fn a_group_socket_is_0660_in_the_group() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mc.sock");
        let gid = other_gid();
        let options = BindOptions {
            group: Some(gid),
            ..BindOptions::new()
        };
        let l = bind_with(path.to_str().unwrap(), options).await.unwrap();
        let m = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(m.mode() & 0o777, 0o660);
        assert_eq!(m.gid(), gid);
        drop(l);
    }

    #[test]
    fn the_socket_dir_is_made_private_to_stek_and_the_group() {
        use std::os::unix::fs::MetadataExt;
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("stek-memcached");
        let gid = other_gid();
        prepare_socket_dir(&dir, gid).unwrap();
        let m = std::fs::symlink_metadata(&dir).unwrap();
        assert!(m.is_dir());
        assert_eq!((m.mode() & 0o7777, m.gid()), (0o750, gid));
        // An existing directory of ours with a looser mode is tightened.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        prepare_socket_dir(&dir, gid).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o7777, 0o750);
        // A symlink (even to a good directory) and a file are refused.
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let e = prepare_socket_dir(&link, gid).unwrap_err();
        assert!(matches!(e, BindError::UnsafeDir { .. }), "{e}");
        let file = base.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(matches!(
            prepare_socket_dir(&file, gid).unwrap_err(),
            BindError::UnsafeDir { .. }
        ));
        // Another user's directory is refused, not taken over (root can make one to try).
        if rustix::process::geteuid().is_root() {
            let theirs = base.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let e = prepare_socket_dir(&theirs, gid).unwrap_err();
            assert!(e.to_string().contains("belongs to uid 65534"), "{e}");
            assert_eq!(std::fs::metadata(&theirs).unwrap().uid(), 65534);
        }
        // A missing parent: an I/O error naming the directory.
        let e = prepare_socket_dir(&base.path().join("a/b"), gid).unwrap_err();
        assert!(matches!(e, BindError::Io { .. }), "{e}");
    }
}

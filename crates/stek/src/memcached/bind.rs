//! Turning an address string into a bound [`Listener`], with the checks that keep the keys
//! local: loopback TCP unless remote access is asked for, unix sockets readable by the owner
//! only.

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

/// Binds `addr`: a unix socket path if it contains `/`, else `HOST:PORT`.
///
/// - `HOST:PORT` must resolve to loopback addresses only (127.0.0.0/8, ::1) unless
///   `allow_remote`. Port 0 picks a free port ([`Listener::tcp_addr`] tells which).
/// - A socket path gets mode 0600. It is bound under a temporary name in the same directory,
///   given its mode, then renamed into place, so the socket is never reachable with looser
///   permissions. A stale socket (nobody listening) at the path is replaced; a live one, or
///   anything that is not a socket (a symlink included), is refused.
pub async fn bind(addr: &str, allow_remote: bool) -> Result<Listener, BindError> {
    if addr.contains('/') {
        return bind_unix(Path::new(addr)).await;
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

async fn bind_unix(path: &Path) -> Result<Listener, BindError> {
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
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err("set mode 0600 on", path))?;
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
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("set mode 0600 on", &tmp))
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
}

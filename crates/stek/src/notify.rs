//! systemd's readiness protocol (sd_notify(3)): with `Type=notify`, systemd starts the units
//! ordered `After=` this one only once it sends `READY=1` to the datagram socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace). stek sends it once, after the
//! first complete set of key files, so nginx started `After=stek-agent.service` never looks for
//! an include file that is not there yet.
//!
//! Off unless the binary turns it on ([`enable`]): a program that embeds stek keeps its own
//! readiness.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{debug, warn};

static ENABLED: AtomicBool = AtomicBool::new(false);
static SENT: AtomicBool = AtomicBool::new(false);

/// Let [`ready`] speak to systemd (the `stek up` and `stek agent` binaries do).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Tell systemd the service is ready, once per process; nothing when not enabled or not started
/// by systemd with `Type=notify`. Failures are logged, never fatal: the keys are in place.
pub fn ready() {
    if !ENABLED.load(Ordering::Relaxed) || SENT.swap(true, Ordering::Relaxed) {
        return;
    }
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    match send(
        &socket.to_string_lossy(),
        "READY=1\nSTATUS=key files in place, rotating",
    ) {
        Ok(()) => debug!("told systemd: READY=1"),
        Err(e) => warn!(
            "could not tell systemd the service is ready ($NOTIFY_SOCKET {}): {e}",
            socket.to_string_lossy()
        ),
    }
}

/// Send `state` to the notification socket `socket` (a path, or `@name` for the abstract
/// namespace).
pub fn send(socket: &str, state: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    match socket.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        }
        None if socket.starts_with('/') => {
            sock.send_to(state.as_bytes(), socket)?;
        }
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a socket path or @abstract name",
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_and_to_an_abstract_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        send(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("stek-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        send(&format!("@{name}"), "READY=1").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        assert!(send("relative", "READY=1").is_err());
    }
}

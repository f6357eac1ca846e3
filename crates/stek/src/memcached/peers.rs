//! Connections per peer, so that one local user (or one remote host) cannot take every
//! connection slot and starve the others.
//!
//! The accept loop asks for a [`PeerSlot`] before handing a connection to a worker; the slot
//! goes with the connection and gives its place back when dropped, on whichever worker thread
//! the connection ends. The table holds an entry only for peers with an open connection, so it
//! never holds more entries than there are connections.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// What connections are counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum PeerKey {
    /// A unix socket peer's uid.
    Uid(u32),
    /// A TCP peer's address (IPv4-mapped IPv6 addresses as IPv4).
    Ip(IpAddr),
}

/// Open connections by peer. One lock per connection opened and closed: a few hundred
/// nanoseconds, far from the request path.
#[derive(Debug, Default)]
pub(crate) struct Peers {
    open: Mutex<HashMap<PeerKey, usize>>,
}

impl Peers {
    fn lock(&self) -> MutexGuard<'_, HashMap<PeerKey, usize>> {
        // The map stays consistent across a panic (each update is one statement).
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for one more connection of `peer`, or `None` if it holds `cap` already.
    pub(crate) fn open(self: &Arc<Self>, peer: PeerKey, cap: usize) -> Option<PeerSlot> {
        let mut open = self.lock();
        let n = open.entry(peer).or_insert(0);
        if *n >= cap {
            if *n == 0 {
                open.remove(&peer);
            }
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            peers: self.clone(),
            peer,
        })
    }

    /// Open connections of `peer`.
    #[cfg(test)]
    pub(crate) fn count(&self, peer: PeerKey) -> usize {
        self.lock().get(&peer).copied().unwrap_or(0)
    }
}

/// One connection's place in its peer's count; given back on drop.
#[derive(Debug)]
pub(crate) struct PeerSlot {
    peers: Arc<Peers>,
    peer: PeerKey,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.peers.lock();
        if let Some(n) = open.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_peer_is_capped_alone_and_entries_go() {
        let peers = Arc::new(Peers::default());
        let (a, b) = (PeerKey::Uid(33), PeerKey::Ip([127, 0, 0, 1].into()));
        let held: Vec<PeerSlot> = (0..3).map(|_| peers.open(a, 3).unwrap()).collect();
        assert!(peers.open(a, 3).is_none(), "a is at its cap");
        let other = peers.open(b, 3).expect("b is not");
        assert_eq!((peers.count(a), peers.count(b)), (3, 1));
        drop(held);
        drop(other);
        assert_eq!(peers.lock().len(), 0, "no entry without a connection");
        assert!(peers.open(a, 0).is_none());
        assert_eq!(peers.lock().len(), 0);
    }
}

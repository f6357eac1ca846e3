//! The memcached-protocol server's table as a sink: every ring becomes a new [`KeyTable`] that
//! the server's connections read from (a `watch` channel: readers never wait on the agent),
//! including a ring whose only change is a key held ahead of the window.

use std::sync::Arc;

use stek_core::Ring;
use tokio::sync::watch;

use super::{Delivered, Sink};
use crate::memcached::{KeyTable, NghttpxCipher};

/// Publishes each ring as the table of keys the memcached-protocol server answers from.
#[derive(Debug)]
pub struct TableSink {
    tx: watch::Sender<Arc<KeyTable>>,
    nghttpx: NghttpxCipher,
}

impl TableSink {
    /// A sink and the receiver to hand to `memcached::serve` (empty until the first ring).
    /// `nghttpx` is the layout of the keys served to nghttpx (its `--tls-ticket-key-cipher`).
    pub fn new(nghttpx: NghttpxCipher) -> (TableSink, watch::Receiver<Arc<KeyTable>>) {
        let (tx, rx) = watch::channel(Arc::new(KeyTable::default()));
        (TableSink { tx, nghttpx }, rx)
    }
}

impl Sink for TableSink {
    fn name(&self) -> &'static str {
        "memcached"
    }

    fn deliver(&mut self, ring: &Ring) -> std::io::Result<Delivered> {
        self.tx
            .send_replace(Arc::new(KeyTable::from_ring_with(ring, self.nghttpx)));
        Ok(Delivered::Handed)
    }

    /// `ticket-key/<slot start>` includes the slot after next as soon as it is held: clients
    /// fetch it at the boundary before it (Cloudflare's within 100 ms) and cache a miss.
    fn serves_ahead(&self) -> bool {
        true
    }
}

//! In-process consumers of rings as a sink (the rustls ticketer of `stek-rustls`, for one).
//! The embedding API around it is [`crate::feed`].

use std::fmt;
use std::sync::Arc;

use stek_core::Ring;

use super::{Delivered, Sink};

/// A consumer of rings.
pub type RingListener = Arc<dyn Fn(&Ring) + Send + Sync>;

/// The consumers of an agent's rings, called in order with every delivered ring.
///
/// Listeners run inside the agent loop: keep them short (installing ticket keys takes tens of
/// microseconds) and never block on the agent.
#[derive(Clone, Default)]
pub struct RingFeed {
    listeners: Vec<RingListener>,
}

impl RingFeed {
    /// A feed without listeners.
    pub fn new() -> RingFeed {
        RingFeed::default()
    }

    /// The same feed with one more listener.
    pub fn with(mut self, listener: impl Fn(&Ring) + Send + Sync + 'static) -> RingFeed {
        self.listeners.push(Arc::new(listener));
        self
    }

    /// Adds a listener.
    pub fn push(&mut self, listener: RingListener) {
        self.listeners.push(listener);
    }

    /// Calls every listener with `ring`.
    pub fn deliver(&self, ring: &Ring) {
        for l in &self.listeners {
            l(ring);
        }
    }

    /// How many listeners there are.
    pub fn len(&self) -> usize {
        self.listeners.len()
    }

    /// Whether there is no listener.
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }
}

impl fmt::Debug for RingFeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingFeed")
            .field("listeners", &self.listeners.len())
            .finish()
    }
}

impl Sink for RingFeed {
    fn name(&self) -> &'static str {
        "feed"
    }

    fn deliver(&mut self, ring: &Ring) -> std::io::Result<Delivered> {
        RingFeed::deliver(self, ring);
        Ok(Delivered::Handed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_feed_does_nothing() {
        let f = RingFeed::new();
        assert!(f.is_empty());
        assert_eq!(format!("{f:?}"), "RingFeed { listeners: 0 }");
    }
}

//! How connections end when the server stops.
//!
//! Every connection task lives in one [`Connections`] set. At shutdown the server stops
//! accepting, then aborts every connection and waits until each task is gone, so that when
//! [`serve`](super::serve) returns no connection still holds a table (and its keys) or a reply
//! buffer. Aborting is safe for a read-only server: no request is left half-applied; a client
//! cut mid-reply sees a closed connection and retries elsewhere or later.
//!
//! The alternative, a shutdown future polled by every connection (mini-redis), would cost each
//! connection a poll of a shared notifier every time it waits for a request.

use std::future::Future;

use tokio::task::JoinSet;

/// The tasks of a server's connections.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    tasks: JoinSet<()>,
}

impl Connections {
    /// Starts a connection task.
    pub(crate) fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Waits for any task to finish and forgets it; pending forever when there is none, so it
    /// can sit in a `select!` next to `accept`.
    pub(crate) async fn reap(&mut self) {
        if self.tasks.is_empty() {
            std::future::pending::<()>().await;
        }
        if let Some(Err(e)) = self.tasks.join_next().await {
            // A panic in a connection is a bug; it ends that connection only.
            if e.is_panic() {
                tracing::error!("a memcached connection task panicked: {e}");
            }
        }
    }

    /// Aborts every task and waits until all are gone.
    pub(crate) async fn close_all(&mut self) {
        self.tasks.shutdown().await;
    }
}

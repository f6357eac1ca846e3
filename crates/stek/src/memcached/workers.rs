//! Connection threads, as memcached has them: each worker is a thread running its own
//! single-threaded tokio runtime, with its own event loop, serving the connections the accept
//! loop hands it in turn.
//!
//! Why not the caller's multi-threaded runtime: there one thread at a time polls the event
//! loop for every connection and wakes tasks onto the others, so each request costs a
//! cross-thread wake-up, and a worker the OS preempts while holding the event loop stalls every
//! connection. With one event loop per thread a request is read, answered and written on the
//! thread whose loop saw it, and a preempted thread stalls only its own connections.

use std::io;
use std::sync::Arc;

use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error};

use super::connection::{self, Shared};
use super::peers::PeerSlot;
use super::server::Peer;
use super::shutdown::Connections;
use super::stats::ConnectionGuard;
use super::table::KeyTable;

/// The stack of a worker thread. Under `mlockall` every page of a thread's stack is resident, so
/// the default 2 MiB would cost 2 MiB of locked memory per worker; a worker's deepest path (a
/// `get` of many keys, `stats`) uses a few tens of KiB.
const WORKER_STACK: usize = 256 * 1024;

/// An accepted connection on its way to a worker: detached from the accepting runtime's
/// event loop, so the worker's can take it.
pub(crate) enum Detached {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

/// One connection for a worker.
pub(crate) struct Job {
    pub(crate) stream: Detached,
    pub(crate) peer: Peer,
    /// Counts the connection open until it ends.
    pub(crate) guard: ConnectionGuard,
    /// Counts it against its peer's cap until it ends.
    pub(crate) slot: PeerSlot,
}

/// The worker threads of one server.
pub(crate) struct Workers {
    senders: Vec<mpsc::UnboundedSender<Job>>,
    done: Vec<oneshot::Receiver<()>>,
    next: usize,
}

impl Workers {
    /// Starts `n` workers (at least one). Fails only if a thread or its runtime cannot be
    /// made.
    pub(crate) async fn start(
        n: usize,
        table: &watch::Receiver<Arc<KeyTable>>,
        shared: &Arc<Shared>,
    ) -> io::Result<Workers> {
        let mut workers = Workers {
            senders: Vec::new(),
            done: Vec::new(),
            next: 0,
        };
        for i in 0..n.max(1) {
            let (tx, rx) = mpsc::unbounded_channel();
            let (ready_tx, ready_rx) = oneshot::channel();
            let (done_tx, done_rx) = oneshot::channel();
            let (table, shared) = (table.clone(), shared.clone());
            // The runtime is made (and dropped) on its own thread: dropping a runtime inside
            // the caller's async context would panic.
            std::thread::Builder::new()
                .name(format!("stek-mc-{i}"))
                .stack_size(WORKER_STACK)
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    rt.block_on(run(rx, table, shared));
                    // Every connection task is gone (run waited for them); the runtime's own
                    // resources go now, before serve is told.
                    drop(rt);
                    let _ = done_tx.send(());
                })?;
            // On failure, the workers already started stop when `workers` is dropped (their
            // channels close).
            ready_rx.await.unwrap_or_else(|_| {
                Err(io::Error::other("a memcached worker thread died at start"))
            })?;
            workers.senders.push(tx);
            workers.done.push(done_rx);
        }
        Ok(workers)
    }

    /// Hands a connection to the next worker in turn.
    pub(crate) fn dispatch(&mut self, job: Job) {
        let i = self.next % self.senders.len();
        self.next = i + 1;
        if self.senders[i].send(job).is_err() {
            // Only if the worker's thread died, which a bug alone can cause: the connection is
            // closed as the job is dropped.
            error!("memcached worker {i} is gone; connection dropped");
        }
    }

    /// Stops every worker: each closes its connections and waits for them to end.
    pub(crate) async fn stop(self) {
        drop(self.senders);
        for done in self.done {
            let _ = done.await;
        }
    }
}

/// A worker's loop: serve each connection handed over until the server stops.
async fn run(
    mut jobs: mpsc::UnboundedReceiver<Job>,
    table: watch::Receiver<Arc<KeyTable>>,
    shared: Arc<Shared>,
) {
    let mut connections = Connections::default();
    loop {
        tokio::select! {
            job = jobs.recv() => match job {
                Some(job) => connections.spawn(serve_one(job, table.clone(), shared.clone())),
                None => break,
            },
            () = connections.reap() => {}
        }
    }
    connections.close_all().await;
}

async fn serve_one(job: Job, table: watch::Receiver<Arc<KeyTable>>, shared: Arc<Shared>) {
    let Job {
        stream,
        peer,
        guard: _guard,
        slot: _slot,
    } = job;
    let r = match stream {
        Detached::Tcp(s) => match TcpStream::from_std(s) {
            Ok(s) => connection::run(s, table, &shared).await,
            Err(e) => Err(e),
        },
        Detached::Unix(s) => match UnixStream::from_std(s) {
            Ok(s) => connection::run(s, table, &shared).await,
            Err(e) => Err(e),
        },
    };
    match r {
        Ok(end) => debug!(%peer, "memcached connection ended: {end:?}"),
        Err(e) => debug!(%peer, "memcached connection ended: {e}"),
    }
}

//! Feeding the ticketer in process: a stek agent runs inside the server and hands it every new
//! ring (`stek::feed`).
//!
//! To show what "fleet-wide" buys, this process plays two hosts of one group: each has its own
//! embedded agent, its own `Ticketer` and its own HTTPS server on loopback; both agents read the
//! same (embedded, in-memory) store, as two hosts read their local copy of a replicated store.
//! A client makes a full handshake with host A and resumes that session on host B.
//!
//! ```text
//! cargo run -p stek-rustls --example in_process
//! ```

mod common;

use std::net::TcpListener;
use std::sync::Arc;

use rustls::HandshakeKind;
use stek::feed::RingFeed;
use stek_core::Schedule;
use stek_rustls::Ticketer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pki = common::pki();
    let hosts = ["host-a", "host-b"];
    let ticketers: Vec<Ticketer> = hosts.iter().map(|_| Ticketer::new()).collect();

    // The in-process feed: every ring an agent delivers goes straight into its ticketer.
    let feeds = ticketers
        .iter()
        .map(|t| {
            let t = t.clone();
            RingFeed::new().with(move |ring| {
                if let Err(e) = t.install_ring(ring) {
                    eprintln!("could not install the ticket keys: {e}");
                }
            })
        })
        .collect();
    let stek = common::EmbeddedStek::start(Schedule::default(), feeds);
    for t in &ticketers {
        common::wait_for_keys(t);
    }

    let mut addrs = Vec::new();
    let mut servers = Vec::new();
    for (host, ticketer) in hosts.into_iter().zip(&ticketers) {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        addrs.push(listener.local_addr()?);
        let config = common::server_config(&pki, Arc::new(ticketer.clone()));
        let t = ticketer.clone();
        servers.push(std::thread::spawn(move || {
            common::serve_https(listener, config, t, host, Some(2))
        }));
    }

    let client = common::client_config(&pki);
    let mut kinds = Vec::new();
    for (step, addr) in [addrs[0], addrs[1], addrs[0], addrs[1]]
        .into_iter()
        .enumerate()
    {
        let (kind, body) = common::https_get(addr, &client)?;
        println!("request {} to {addr}: {kind:?}\n{body}", step + 1);
        kinds.push(kind);
    }
    for s in servers {
        let _ = s.join();
    }
    stek.stop();

    if kinds[1..].iter().all(|k| *k == HandshakeKind::Resumed) {
        println!("host B resumed host A's session (and back): fleet-wide tickets work");
        Ok(())
    } else {
        Err(format!("expected resumption after the first request, got {kinds:?}").into())
    }
}

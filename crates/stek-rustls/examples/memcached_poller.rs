//! Feeding the ticketer from a running stek agent's memcached interface: no agent, store
//! client or async runtime in your server, one plain thread polling the local agent.
//!
//! ```text
//! # against a running `stek up` or `stek agent` (its --memcached address):
//! cargo run -p stek-rustls --example memcached_poller -- /run/stek/memcached.sock
//! cargo run -p stek-rustls --example memcached_poller -- 127.0.0.1:11211
//! # or, with no argument, against a stand-in agent started in this process:
//! cargo run -p stek-rustls --example memcached_poller
//! # add --watch to keep polling and print the poller's status every 5 s
//! ```

mod common;

use std::sync::Arc;
use std::time::Duration;

use rustls::server::ProducesTickets;
use stek::feed::RingFeed;
use stek::memcached::{self, KeyTable, Limits};
use stek_core::Schedule;
use stek_rustls::memcached::{fetch, Endpoint, PollOptions, Poller};
use stek_rustls::Ticketer;
use tokio::sync::watch;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let watch_mode = args.iter().any(|a| a == "--watch");
    let given = args.iter().find(|a| !a.starts_with("--"));

    // Without an address: a stand-in agent (embedded stek serving its ring over stek's own
    // memcached server on a unix socket), so the example runs anywhere.
    let mut stand_in = None;
    let endpoint: Endpoint = match given {
        Some(a) => a.parse()?,
        None => {
            let dir = std::env::temp_dir().join(format!("stek-poller-demo-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let sock = dir.join("memcached.sock");
            let (table, served) = watch::channel(Arc::new(KeyTable::default()));
            let feed = RingFeed::new().with(move |ring| {
                table.send_replace(Arc::new(KeyTable::from_ring(ring)));
            });
            let stek = common::EmbeddedStek::start(Schedule::default(), vec![feed]);
            let listener = stek
                .rt
                .block_on(memcached::bind(sock.to_str().ok_or("path")?, false))?;
            stek.rt.spawn(memcached::serve(
                listener,
                served,
                Limits::default(),
                std::future::pending(),
            ));
            println!(
                "no address given: a stand-in agent serves {}",
                sock.display()
            );
            stand_in = Some((stek, dir));
            Endpoint::Unix(sock)
        }
    };

    // One fetch, to show what the agent serves (retrying while a fresh agent has no ring yet).
    let mut snapshot = fetch(&endpoint, Duration::from_secs(2));
    for _ in 0..50 {
        if snapshot.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        snapshot = fetch(&endpoint, Duration::from_secs(2));
    }
    let snapshot = snapshot.map_err(|e| format!("{endpoint}: {e}"))?;
    println!(
        "{endpoint}: slot {} (started at {}), period {} s, lifetime {} s, {} keys:",
        snapshot.slot,
        snapshot.start,
        snapshot.period,
        snapshot.keys.lifetime(),
        snapshot.keys.len()
    );
    for (i, name) in snapshot.keys.names().enumerate() {
        println!("  {name}{}", if i == 0 { "  (seals)" } else { "" });
    }

    // The poller keeps the ticketer in step with the agent from now on.
    let ticketer = Ticketer::new();
    let poller = Poller::spawn(endpoint.clone(), ticketer.clone(), PollOptions::default())?;
    common::wait_for_keys(&ticketer);
    let ticket = ticketer.encrypt(b"a rustls session").ok_or("no ticket")?;
    assert_eq!(
        ticketer.decrypt(&ticket).as_deref(),
        Some(&b"a rustls session"[..])
    );
    println!(
        "ticketer fed: a {}-byte ticket under key {}, lifetime hint {} s",
        ticket.len(),
        stek_core::KeyName(ticket[..16].try_into()?),
        ticketer.lifetime()
    );
    println!("poller: {:?}", poller.status());

    if watch_mode {
        loop {
            std::thread::sleep(Duration::from_secs(5));
            println!("poller: {:?}", poller.status());
        }
    }
    poller.stop();
    if let Some((stek, dir)) = stand_in {
        stek.stop();
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

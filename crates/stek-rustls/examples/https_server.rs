//! An HTTPS server whose session tickets are the fleet's: every server of a stek group resumes
//! the sessions of every other, across rotations, with no reload and no key file.
//!
//! ```text
//! # tickets from the host's stek agent (`stek up` or `stek agent`, its --memcached address):
//! cargo run -p stek-rustls --example https_server -- --memcached /run/stek/memcached.sock
//! # or from a stek agent embedded in this process (one machine, no setup):
//! cargo run -p stek-rustls --example https_server -- --embedded
//!
//! options: --listen ADDR (default 127.0.0.1:8443), --ca-out FILE (where the throwaway CA's
//!          certificate is written, default $TMPDIR/stek-https-ca.pem), --max-connections N
//! ```
//!
//! Then, with the CA it prints:
//!
//! ```text
//! curl --cacert /tmp/stek-https-ca.pem https://localhost:8443/
//! openssl s_client -connect 127.0.0.1:8443 -servername localhost -sess_out /tmp/s </dev/null
//! openssl s_client -connect 127.0.0.1:8443 -servername localhost -sess_in /tmp/s </dev/null | grep Reused
//! ```
//!
//! Run two of them on different ports against the same agent (or against agents of the same
//! group on two hosts) and a session saved from one resumes on the other.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;

use stek::feed::RingFeed;
use stek_core::Schedule;
use stek_rustls::memcached::{Endpoint, PollOptions, Poller};
use stek_rustls::Ticketer;

enum Source {
    Memcached(Endpoint),
    Embedded,
}

fn usage() -> String {
    "usage: https_server (--memcached ADDR | --embedded) [--listen ADDR] [--ca-out FILE] [--max-connections N]".into()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut source = None;
    let mut listen = "127.0.0.1:8443".to_owned();
    let mut ca_out = std::env::temp_dir().join("stek-https-ca.pem");
    let mut max = None;
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(usage);
        match a.as_str() {
            "--memcached" => source = Some(Source::Memcached(value()?.parse()?)),
            "--embedded" => source = Some(Source::Embedded),
            "--listen" => listen = value()?,
            "--ca-out" => ca_out = PathBuf::from(value()?),
            "--max-connections" => max = Some(value()?.parse::<usize>()?),
            _ => return Err(usage().into()),
        }
    }
    let source = source.ok_or_else(usage)?;

    let ticketer = Ticketer::new();
    // Keep whichever feeder runs alive for as long as the server serves.
    let _feeder: Box<dyn std::any::Any> = match source {
        Source::Memcached(endpoint) => {
            println!("tickets: polling the stek agent at {endpoint}");
            Box::new(Poller::spawn(
                endpoint,
                ticketer.clone(),
                PollOptions::default(),
            )?)
        }
        Source::Embedded => {
            println!("tickets: from a stek agent embedded in this process");
            let t = ticketer.clone();
            let feed = RingFeed::new().with(move |ring| {
                if let Err(e) = t.install_ring(ring) {
                    eprintln!("could not install the ticket keys: {e}");
                }
            });
            Box::new(common::EmbeddedStek::start(Schedule::default(), vec![feed]))
        }
    };

    let pki = common::pki();
    std::fs::write(&ca_out, &pki.ca_pem)?;
    let listener = TcpListener::bind(&listen)?;
    println!(
        "serving https://localhost:{}/ (CA certificate: {})",
        listener.local_addr()?.port(),
        ca_out.display()
    );
    let config = common::server_config(&pki, Arc::new(ticketer.clone()));
    common::serve_https(listener, config, ticketer, "https_server", max);
    Ok(())
}

//! Shared by the examples: a throwaway PKI, a tiny blocking HTTPS server and client, and an
//! embedded stek (store + generator + agent) in this process.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::ProducesTickets;
use rustls::{
    ClientConfig, ClientConnection, HandshakeKind, RootCertStore, ServerConfig, ServerConnection,
    StreamOwned,
};
use stek::agent::{AgentConfig, PlainOpener};
use stek::clock::{Clock, SystemClock};
use stek::feed::{run_embedded_agent, RingFeed};
use stek::generator::{generator_round, run_generator, GroupPlan, RecordCheck};
use stek::metrics::Metrics;
use stek::store::MemoryStore;
use stek_core::{Record, Schedule, SlotKey};
use stek_rustls::Ticketer;
use tokio::sync::watch;

pub(crate) const SERVER_NAME: &str = "localhost";

/// A CA and a certificate for `localhost` signed by it, made at start.
pub(crate) struct Pki {
    pub(crate) ca: CertificateDer<'static>,
    pub(crate) ca_pem: String,
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivatePkcs8KeyDer<'static>,
}

pub(crate) fn pki() -> Pki {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "stek example CA");
    let ca =
        rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().expect("key"))
            .expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut leaf =
        rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned(), "127.0.0.1".to_owned()])
            .expect("params");
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, SERVER_NAME);
    let leaf = leaf.signed_by(&key, &ca).expect("certificate");
    Pki {
        ca: ca.der().clone(),
        ca_pem: ca.pem(),
        chain: vec![leaf.der().clone(), ca.der().clone()],
        key: PrivatePkcs8KeyDer::from(key.serialize_der()),
    }
}

pub(crate) fn server_config(pki: &Pki, ticketer: Arc<dyn ProducesTickets>) -> Arc<ServerConfig> {
    let mut c = ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(pki.chain.clone(), PrivateKeyDer::Pkcs8(pki.key.clone_key()))
    .expect("certificate");
    c.ticketer = ticketer;
    Arc::new(c)
}

pub(crate) fn client_config(pki: &Pki) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.clone()).expect("CA");
    Arc::new(
        ClientConfig::builder_with_provider(
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// Serves HTTPS on `listener` until `max` connections were served (forever if `None`), one
/// thread per connection. Each response says how the TLS session was set up.
pub(crate) fn serve_https(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    ticketer: Ticketer,
    host: &'static str,
    max: Option<usize>,
) {
    let mut served = 0;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let config = config.clone();
        let ticketer = ticketer.clone();
        let worker = std::thread::spawn(move || {
            if let Err(e) = answer(stream, config, &ticketer, host) {
                eprintln!("{host}: connection failed: {e}");
            }
        });
        served += 1;
        if max.is_some_and(|m| served >= m) {
            let _ = worker.join();
            return;
        }
    }
}

fn answer(
    stream: TcpStream,
    config: Arc<ServerConfig>,
    ticketer: &Ticketer,
    host: &str,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let conn = ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut tls = StreamOwned::new(conn, stream);
    // Read the request head (the handshake happens on the first read).
    let mut reader = BufReader::new(&mut tls);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
    }
    let version = tls
        .conn
        .protocol_version()
        .map_or("?".to_owned(), |v| format!("{v:?}"));
    let resumed = tls.conn.handshake_kind() == Some(HandshakeKind::Resumed);
    let sealing = ticketer
        .current()
        .map_or("none (no keys yet)".to_owned(), |k| k.encrypting().to_hex());
    let body = format!(
        "served by {host}\n{version}, {}\ntickets sealed with key {sealing}\n",
        if resumed {
            "resumed session"
        } else {
            "full handshake"
        }
    );
    write!(
        tls,
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    tls.conn.send_close_notify();
    tls.flush()?;
    Ok(())
}

/// One HTTPS GET with `config` (whose session store keeps tickets between calls): how the
/// handshake went and the response body.
pub(crate) fn https_get(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
) -> std::io::Result<(HandshakeKind, String)> {
    let name = ServerName::try_from(SERVER_NAME).expect("name");
    let conn = ClientConnection::new(config.clone(), name).map_err(std::io::Error::other)?;
    let mut tls = StreamOwned::new(conn, TcpStream::connect(addr)?);
    write!(
        tls,
        "GET / HTTP/1.1\r\nhost: {SERVER_NAME}\r\nconnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    // A server that closes without close_notify is fine for this demo.
    let _ = tls.read_to_string(&mut response);
    let kind = tls.conn.handshake_kind().unwrap_or(HandshakeKind::Full);
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    Ok((kind, body))
}

/// An embedded stek on a tokio runtime of its own: an in-memory store, a generator, and one
/// agent per entry of `feeds` (one per simulated host), each handing its rings to its feed.
pub(crate) struct EmbeddedStek {
    pub(crate) rt: tokio::runtime::Runtime,
    stop: watch::Sender<bool>,
}

impl EmbeddedStek {
    pub(crate) fn start(schedule: Schedule, feeds: Vec<RingFeed>) -> EmbeddedStek {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let (stop, stopped) = watch::channel(false);
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
        let store = Arc::new(MemoryStore::new(clock.clone()));
        let plan = GroupPlan::new(
            "demo".into(),
            schedule,
            Arc::new(move |k: &SlotKey| Ok(Record::plain(&schedule, "demo", k).encode())),
            RecordCheck::Plain,
        );
        let metrics = Metrics::new();
        // The first keys exist before any agent looks.
        rt.block_on(generator_round(
            &*store,
            std::slice::from_ref(&plan),
            clock.now(),
            &metrics,
        ));
        let until_stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        rt.spawn(run_generator(
            store.clone(),
            vec![plan],
            clock.clone(),
            metrics,
            until_stopped(stopped.clone()),
        ));
        for feed in feeds {
            rt.spawn(run_embedded_agent(
                store.clone(),
                PlainOpener,
                AgentConfig::new("demo", schedule),
                clock.clone(),
                feed,
                Metrics::new(),
                until_stopped(stopped.clone()),
            ));
        }
        EmbeddedStek { rt, stop }
    }

    pub(crate) fn stop(self) {
        let _ = self.stop.send(true);
        self.rt.shutdown_timeout(Duration::from_secs(2));
    }
}

/// Waits until `ticketer` has keys (the embedded agent's first ring).
pub(crate) fn wait_for_keys(ticketer: &Ticketer) {
    for _ in 0..500 {
        if ticketer.enabled() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no ticket keys after 5 s");
}

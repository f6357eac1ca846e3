//! Helpers: a test PKI, injectable time for rustls, server and client configs, and a handshake
//! over in-memory connections.

use std::collections::BTreeSet;
use std::ops::DerefMut;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::{NoServerSessionStorage, ProducesTickets};
use rustls::time_provider::TimeProvider;
use rustls::{
    ClientConfig, ClientConnection, ConnectionCommon, HandshakeKind, RootCertStore, ServerConfig,
    ServerConnection, SideData, SupportedProtocolVersion,
};
use stek_rustls::Ticketer;

/// The name the test certificate is for.
pub(crate) const SERVER_NAME: &str = "stek.test";

/// A CA and a leaf certificate for [`SERVER_NAME`] signed by it, made once per test binary.
pub(crate) struct Pki {
    pub(crate) ca: CertificateDer<'static>,
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: Vec<u8>,
}

pub(crate) fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "stek test CA");
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let mut leaf = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()]).unwrap();
        leaf.distinguished_name
            .push(rcgen::DnType::CommonName, SERVER_NAME);
        let leaf = leaf.signed_by(&leaf_key, &ca).unwrap();
        Pki {
            ca: ca.der().clone(),
            chain: vec![leaf.der().clone(), ca.der().clone()],
            key: leaf_key.serialize_der(),
        }
    })
}

/// A clock rustls reads, set by the test (Unix seconds).
#[derive(Debug, Clone, Default)]
pub(crate) struct SimTime(Arc<AtomicU64>);

impl SimTime {
    pub(crate) fn at(secs: u64) -> SimTime {
        SimTime(Arc::new(AtomicU64::new(secs)))
    }

    pub(crate) fn set(&self, secs: u64) {
        self.0.store(secs, Ordering::SeqCst);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl TimeProvider for SimTime {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(Duration::from_secs(self.get())))
    }
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A server config with `ticketer`, its clock and one protocol version. Stateful resumption is
/// off, so a resumed handshake can only come from a ticket.
pub(crate) fn server_config(
    ticketer: Arc<dyn ProducesTickets>,
    time: SimTime,
    version: &'static SupportedProtocolVersion,
) -> Arc<ServerConfig> {
    let pki = pki();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key.clone()));
    let mut c = ServerConfig::builder_with_details(provider(), Arc::new(time))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(pki.chain.clone(), key)
        .unwrap();
    c.ticketer = ticketer;
    c.session_storage = Arc::new(NoServerSessionStorage {});
    Arc::new(c)
}

/// A client config with its own, empty session store.
pub(crate) fn client_config(
    time: SimTime,
    version: &'static SupportedProtocolVersion,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(pki().ca.clone()).unwrap();
    let mut c = ClientConfig::builder_with_details(provider(), Arc::new(time))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.resumption = Resumption::in_memory_sessions(32);
    Arc::new(c)
}

/// Moves every pending TLS byte from `from` to `to`; returns how many moved.
fn pump<A, B, SA: SideData, SB: SideData>(from: &mut A, to: &mut B) -> usize
where
    A: DerefMut<Target = ConnectionCommon<SA>>,
    B: DerefMut<Target = ConnectionCommon<SB>>,
{
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).unwrap();
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).unwrap();
        to.process_new_packets().unwrap();
    }
    buf.len()
}

/// A complete handshake (and the tickets that follow it) between a new client of `client` and a
/// new server of `server`. Returns how the handshake went, as both sides saw it.
pub(crate) fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) -> HandshakeKind {
    let name = ServerName::try_from(SERVER_NAME).unwrap();
    let mut c = ClientConnection::new(client.clone(), name).unwrap();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    for _ in 0..16 {
        let moved = pump(&mut c, &mut s) + pump(&mut s, &mut c);
        if moved == 0 && !c.is_handshaking() && !s.is_handshaking() {
            break;
        }
    }
    assert!(
        !c.is_handshaking() && !s.is_handshaking(),
        "handshake stalled"
    );
    let kind = c.handshake_kind().unwrap();
    assert_eq!(s.handshake_kind(), Some(kind), "client and server disagree");
    kind
}

/// A ticketer that records the key name of every ticket it issues.
#[derive(Debug, Default)]
pub(crate) struct Recording {
    pub(crate) inner: Ticketer,
    pub(crate) issued_names: Mutex<BTreeSet<[u8; 16]>>,
}

impl ProducesTickets for Recording {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let t = self.inner.encrypt(plain)?;
        let mut name = [0u8; 16];
        name.copy_from_slice(&t[..16]);
        self.issued_names.lock().unwrap().insert(name);
        Some(t)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.inner.decrypt(cipher)
    }
}

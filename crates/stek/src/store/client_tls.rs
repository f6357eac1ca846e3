//! The TLS client configuration of a store connection (`etcds://`): the server verified against
//! `--store-ca` (or the system's roots), an optional client certificate (`--store-cert`,
//! `--store-key`).
//!
//! The crypto provider is named here, never taken from the process default: the workspace enables
//! both of rustls's providers (ring for `stek scan`, aws-lc-rs for stek-rustls), and with two
//! compiled in rustls has no default and `ClientConfig::builder()` would panic at run time.

use std::sync::Arc;

use rustls::crypto::ring as provider;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::{LoadedAccess, StoreError};

/// A rustls client configuration for `access` (TLS 1.2 and 1.3, ring), speaking `alpn` if given.
pub(crate) fn client_config(access: &LoadedAccess) -> Result<ClientConfig, StoreError> {
    let roots = match &access.ca_pem {
        Some(pem) => ca_roots(pem)?,
        None => system_roots()?,
    };
    let builder = ClientConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| setup("the TLS protocol versions", Some(Arc::new(e))))?
        .with_root_certificates(roots);
    match (&access.cert_pem, &access.key_pem) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| setup("--store-cert is not PEM", Some(Arc::new(e))))?;
            if chain.is_empty() {
                return Err(setup("--store-cert holds no certificate", None));
            }
            // The error says why without quoting the key.
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
                .map_err(|e| setup("--store-key holds no usable private key", Some(Arc::new(e))))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| setup("--store-cert and --store-key", Some(Arc::new(e))))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// A configuration for connections that never use TLS (the connector wants one anyway).
pub(crate) fn unused_config() -> ClientConfig {
    ClientConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.with_root_certificates(RootCertStore::empty())
                .with_no_client_auth()
        })
        // Invariant: ring's default provider supports the safe default versions.
        .expect("ring supports TLS 1.2 and 1.3")
}

fn ca_roots(pem: &[u8]) -> Result<RootCertStore, StoreError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| setup("--store-ca is not PEM", Some(Arc::new(e))))?;
        roots.add(cert).map_err(|e| {
            setup(
                "--store-ca holds an unusable certificate",
                Some(Arc::new(e)),
            )
        })?;
    }
    if roots.is_empty() {
        return Err(setup("--store-ca holds no certificate", None));
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, StoreError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    // Unparsable system certificates are skipped, as every TLS client does.
    let (_added, _skipped) = roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(setup(
            "no system CA certificates found: give the store's CA with --store-ca",
            None,
        ));
    }
    Ok(roots)
}

fn setup(what: &str, source: Option<super::Cause>) -> StoreError {
    StoreError::Access {
        what: what.to_owned(),
        source,
    }
}

/// The TLS error (a certificate the server or client would not accept, a handshake the peer
/// broke off) somewhere in `e`'s chain of causes, if there is one.
pub(crate) fn tls_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // An io::Error's `source` skips the error it wraps: follow the wrapped one instead
        // (tokio-rustls wraps rustls's error in one, hyper-rustls that in another).
        next = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as _),
            None => e.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_pem_is_one_clear_error() {
        let access = LoadedAccess {
            ca_pem: Some(b"not a certificate".to_vec()),
            ..Default::default()
        };
        let e = client_config(&access).unwrap_err().to_string();
        assert_eq!(
            e,
            "the store access settings are unusable: --store-ca holds no certificate"
        );
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let access = LoadedAccess {
            ca_pem: Some(ca.cert.pem().into_bytes()),
            cert_pem: Some(ca.cert.pem().into_bytes()),
            key_pem: Some(zeroize::Zeroizing::new("junk".into())),
            ..Default::default()
        };
        let e = client_config(&access).unwrap_err().to_string();
        assert!(
            e.ends_with("--store-key holds no usable private key"),
            "{e}"
        );
        let access = LoadedAccess {
            ca_pem: Some(ca.cert.pem().into_bytes()),
            cert_pem: Some(ca.cert.pem().into_bytes()),
            key_pem: Some(zeroize::Zeroizing::new(ca.signing_key.serialize_pem())),
            ..Default::default()
        };
        client_config(&access).unwrap();
    }
}

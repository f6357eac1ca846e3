//! `version`.

/// The version stek announces: memcached-style `major.minor.patch` first, because clients
/// such as libmemcached parse it as numbers (libmemcached 1.1 reads `1.6.0` from this), then
/// what actually answers, joined without spaces so `STAT version` stays one token.
pub(crate) const VERSION: &str = concat!("1.6.0-stek-", env!("CARGO_PKG_VERSION"));

/// Appends the reply to `version`.
pub(crate) fn execute(out: &mut Vec<u8>) {
    out.extend_from_slice(b"VERSION ");
    out.extend_from_slice(VERSION.as_bytes());
    out.extend_from_slice(b"\r\n");
}

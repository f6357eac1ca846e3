//! A read-only memcached-protocol server for ticket keys (text and binary protocols).
//!
//! TLS servers that fetch their session ticket keys over memcached (Cloudflare's open-source
//! lua-ssl-nginx-module, nghttpx, or any memcached client on the host) read them from stek
//! directly: no key file, no reload. The server only answers reads; it never stores anything a
//! client sends.
//!
//! # Keys served
//!
//! | key | value |
//! |---|---|
//! | `ticket-key/<slot start>` | one slot's key, 48 bytes in Cloudflare's layout: name16 aes16 hmac16 |
//! | `ticket-ring/nginx-80` | the whole ring, 80-byte nginx keys concatenated, nginx order |
//! | `ticket-ring/nginx-48` | the same with 48-byte nginx keys |
//! | `ticket-ring/memcached-48` | the same in Cloudflare's 48-byte layout |
//! | `ticket-ring/haproxy-80` | three 80-byte keys in HAProxy order: previous, encrypting, next |
//! | `ticket-ring/apache-48` | the encrypting key alone, 48 bytes in Apache's layout |
//! | `ticket-ring/rustls-48` | the whole ring for stek's rustls ticketer (crate `stek-rustls`), 48-byte keys (name16 aead32), nginx order |
//! | `nghttpx:tls-ticket-key` | the whole ring for nghttpx (`--tls-ticket-key-memcached`): u32 version 1, then per key a u16 length and the key, nginx order; 48-byte keys name16 aes16 hmac16 (`--nghttpx-cipher aes-128-cbc`, the default, the same bytes as `ticket-key/`) or 80-byte name16 aes32 hmac32 (`aes-256-cbc`); at most 327 or 199 keys, the oldest left out ([`nghttpx`]) |
//! | `ticket-schedule` | text, no secrets: `period=<s> lifetime=<s> slot=<n> start=<unix s> encrypting=<key name hex> keys=<n> shared=<n> ahead=<n>` |
//!
//! - `<slot start>` is the Unix time in seconds at which the slot begins (slot number times
//!   the period), as Cloudflare's client computes it (`memc_key_prefix = "ticket-key/"`,
//!   keyed by the slot start timestamp). Every slot of the window (the next slot, the current
//!   one, and the past ones a ticket may still need) is served, but only when this host has
//!   the group's shared key for it: a host-local stand-in key is never served alone, since a
//!   client would install it as if the whole group used it. The slot after next is served too,
//!   from the moment the agent holds its key (generators publish it shortly before the next
//!   slot begins; [`stek_core::Ring::ahead`]): Cloudflare's client asks for it within 100 ms
//!   after that boundary and caches a miss, so it must be there before this host rotates.
//! - `ticket-ring/*` values hold every key of the ring, shared and local alike: their client
//!   is a TLS server on this host, which needs a full-length ring in the same order the key
//!   files have (nginx order: the encrypting key first, then the next key, then past keys
//!   newest first). A ring of `n` keys of `k` bytes is `n * k` bytes; split it every `k`
//!   bytes.
//! - `ticket-schedule`: `slot` and `start` are the current slot and its start; `encrypting`
//!   is the name (first 16 bytes of every ticket) of the encrypting key; `keys` counts the
//!   ring's keys; `shared` counts the ring's shared keys and `ahead` the keys held for slots
//!   after the window: together, the `ticket-key/` entries.
//! - Flags are always 0. The `gets` cas unique is a hash of the public key names in the
//!   value: stable while the value is, different when any key in it changes.
//!
//! # Protocol
//!
//! `get`/`gets` with any number of keys, `version`, `stats` (also `stats settings`; no
//! secrets), `quit`. Storage commands (`set`, `add`, `replace`, `append`, `prepend`, `cas`,
//! meta `ms`) have their data block swallowed, then get `SERVER_ERROR read-only: stek serves
//! ticket keys only` (nothing with `noreply`); other writes (`delete`, `incr`, `decr`,
//! `touch`, `gat`, `flush_all`, `verbosity`, ...) get the same reply. Unknown commands get
//! `ERROR`, malformed ones `CLIENT_ERROR <why>`. See [`Limits`] for the caps.
//!
//! A connection whose first byte is 0x80 speaks the binary protocol for its whole life: GET,
//! GETQ, GETK, GETKQ, NOOP, VERSION, QUIT, QUITQ; every other opcode gets an error status
//! (writes and STAT "not supported", the rest "unknown command") after its body is dropped;
//! malformed requests and bodies over 1 MiB get an error and a close before the body is read
//! ([`binary`]). Same listeners, access rules, caps and timeouts as the text protocol.
//!
//! # Who is served, and for how long
//!
//! On a unix socket: root, stek's uid and the members of one group ([`Access`], checked by the
//! peer's credentials); others get `SERVER_ERROR forbidden`. On TCP: anyone who can connect.
//! Each peer (uid, or IP address) holds at most [`Limits::max_connections_per_peer`]
//! connections, the server [`Limits::max_connections`]. A request must arrive whole, and each
//! batch of replies be read, within [`Limits::request_timeout`]. Refusals and timeouts are
//! counted in [`Stats`]. [`Limits`] states the memory bound.
//!
//! # Layout
//!
//! [`frame`] cuts lines, [`parse`] turns one into a [`parse::Command`], [`binary`] frames and
//! decides binary requests, `cmd` answers each command, [`nghttpx`] makes nghttpx's value,
//! [`session`] is the per-connection protocol
//! state without I/O, `connection`, `server` and `workers` do the I/O, `access` and `peers`
//! decide who is admitted, `shutdown` ends connections, [`bind`] makes a [`Listener`].
//!
//! ```no_run
//! use std::sync::Arc;
//! use stek::memcached::{self, KeyTable, Limits};
//! use tokio::sync::watch;
//!
//! # async fn run(ring: stek_core::Ring) -> Result<(), Box<dyn std::error::Error>> {
//! let listener = memcached::bind("127.0.0.1:11211", false).await?;
//! let (tx, rx) = watch::channel(Arc::new(KeyTable::from_ring(&ring)));
//! let server = tokio::spawn(memcached::serve(listener, rx, Limits::default(), async {
//!     let _ = tokio::signal::ctrl_c().await;
//! }));
//! // On every ring change:
//! tx.send_replace(Arc::new(KeyTable::from_ring(&ring)));
//! server.await??;
//! # Ok(()) }
//! ```

mod access;
pub mod binary;
mod bind;
mod cmd;
mod connection;
pub mod frame;
pub mod nghttpx;
pub mod parse;
mod peers;
mod server;
pub mod session;
mod shutdown;
pub mod stats;
mod table;
mod workers;

pub use access::{Access, AccessError, PeerCred};
pub use bind::{bind, bind_with, prepare_socket_dir, BindError, BindOptions};
pub use nghttpx::{NghttpxCipher, UnknownCipher, NGHTTPX_KEY};
pub use server::{
    serve, serve_with, Limits, LimitsError, Listener, ServeOptions, FORBIDDEN, MAX_CONNECTIONS,
    MAX_LINE, MAX_REQUEST_TIMEOUT, MAX_THREADS, MIN_LINE, TOO_MANY_CONNECTIONS,
};
pub use stats::{Refusal, Stats};
pub use table::{KeyTable, RingSummary, TICKET_KEY_PREFIX, TICKET_RING_PREFIX, TICKET_SCHEDULE};

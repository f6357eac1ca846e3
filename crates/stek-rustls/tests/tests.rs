//! Integration tests of stek-rustls: real rustls clients and servers over in-memory connections,
//! and the memcached feed against stek's own memcached server.

mod util;

mod fleet;
mod poller;
mod tickets;

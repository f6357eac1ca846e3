//! `stek scan`: audit a TLS server's session resumption from the outside.

pub mod probe;
pub mod weak;
pub mod wire;

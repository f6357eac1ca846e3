//! What `stek scan` reads from a TLS server it audits: arbitrary server bytes, in plaintext and
//! inside TLS 1.3 records protected under the scan's own traffic secrets (so the fuzzer reaches
//! the handshake messages past the AEAD: EncryptedExtensions, Finished, NewSessionTicket, ...);
//! our own resumption ClientHello as read back from a state file; tickets given to the
//! weak-key check; the server's answer to `HEAD /` given to the family check. Never a panic,
//! never a runaway allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stek::scan::report::VersionReport;
use stek::scan::{family, weak, wire};
use zeroize::Zeroizing;

const HANDSHAKE: [u8; 32] = [1; 32];
const APPLICATION: [u8; 32] = [2; 32];
const FINISHED: [u8; 36] = {
    let mut m = [9u8; 36];
    m[0] = 20;
    m[1] = 0;
    m[2] = 0;
    m[3] = 32;
    m
};

/// Split the input into (inner content type, content) records: [type, len, content...]...
fn records(data: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    let mut rest = data;
    while let [typ, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        out.push((*typ, &tail[..n]));
        rest = &tail[n..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let secrets = wire::Secrets {
        handshake: Some(Zeroizing::new(HANDSHAKE.to_vec())),
        application: Some(Zeroizing::new(APPLICATION.to_vec())),
    };
    match mode % 5 {
        // Raw server bytes: records, plaintext handshake messages, alerts.
        0 => {
            let _ = wire::parse_server_flight(rest, &secrets);
        }
        // TLS 1.3: the fuzzer's records under the handshake key.
        1 => {
            let mut flight = wire::server_hello13(0x1301, mode & 0x10 != 0);
            if let Ok(r) = wire::protect(0x1301, &HANDSHAKE, &records(rest)) {
                flight.extend(r);
                let _ = wire::parse_server_flight(&flight, &secrets);
            }
        }
        // TLS 1.3: a Finished, then the fuzzer's records under the application key.
        2 => {
            let mut flight = wire::server_hello13(0x1303, false);
            flight.extend(wire::protect(0x1303, &HANDSHAKE, &[(22, &FINISHED)]).expect("seal"));
            if let Ok(r) = wire::protect(0x1303, &APPLICATION, &records(rest)) {
                flight.extend(r);
                let f = wire::parse_server_flight(&flight, &secrets);
                if let Ok(f) = f {
                    assert!(f.finished, "the Finished was read");
                }
            }
        }
        // The server's answer to `HEAD /`, with ticket facts taken from the input too.
        4 => {
            let v = VersionReport {
                supported: true,
                tickets_issued: rest.len() > 3,
                ticket_len: rest.first().map(|&b| usize::from(b)),
                lifetime_hint: rest.get(1).map(|&b| u32::from(b) * 300),
                tickets_per_connection: rest.get(2).map_or(0, |&b| usize::from(b % 4)),
                ..VersionReport::default()
            };
            let (f, found) = family::identify(&family::Signals {
                http: Some(rest),
                tls12: &v,
                tls13: &v,
                weak_families: &["go", "apache"][..usize::from(mode >> 6).min(2)],
            });
            assert_eq!(f.id(), found.id);
        }
        // Our ClientHello as stored, and tickets for the weak-key check.
        _ => {
            let _ = wire::offered_ticket(rest);
            let _ = weak::check(rest);
        }
    }
});

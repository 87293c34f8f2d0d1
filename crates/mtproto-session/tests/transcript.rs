//! A whole handshake and the first envelope, byte for byte: a seeded RNG and a fixed clock make
//! the protocol deterministic, and every message is compared with a stored transcript
//! (`tests/vectors/handshake_transcript.json`), as grammers and quinn pin theirs. A change to any
//! byte the client or the server sends — a field, an encoding, a KDF, the padding rule — fails
//! here even when both sides change together and still agree.
//!
//! After an intended change of the wire format, write the transcript again with
//! `MTPROTO_WRITE_TRANSCRIPT=1 cargo test -p mtproto-session --test transcript` and say why in the
//! commit (the browser's interop vectors must then change too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use mtproto_crypto::rand_core::{CryptoRng, Error as RandError, RngCore};
use mtproto_crypto::{DhGroup, ServerSigningKey};
use mtproto_session::{ClientHandshake, ClientId, ServerHandshake, ServerPin, UnixTime};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// SHA-256 in counter mode over a label: deterministic, and different for every label.
/// Test-only; nothing in the crates accepts anything but the caller's CSPRNG.
struct SeededRng {
    label: &'static str,
    counter: u64,
    buf: Vec<u8>,
}

impl SeededRng {
    fn new(label: &'static str) -> Self {
        Self {
            label,
            counter: 0,
            buf: Vec::new(),
        }
    }
}

impl RngCore for SeededRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        while self.buf.len() < dest.len() {
            let block = Sha256::new()
                .chain_update(self.label.as_bytes())
                .chain_update(self.counter.to_le_bytes())
                .finalize();
            self.counter += 1;
            self.buf.extend_from_slice(&block);
        }
        let rest = self.buf.split_off(dest.len());
        dest.copy_from_slice(&self.buf);
        self.buf = rest;
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), RandError> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for SeededRng {}

/// Runs the handshake and one authenticated request with seeded randomness; returns every
/// message as it crosses the wire.
fn transcript() -> Value {
    let now = UnixTime::from_secs(1_800_000_000);
    let mut client_rng = SeededRng::new("client");
    let mut server_rng = SeededRng::new("server");
    let key = ServerSigningKey::generate(&mut SeededRng::new("server key"));
    let group = DhGroup::mtproto();
    let server = ServerHandshake::new(&key, &group);
    let pin = ServerPin::Fingerprint(key.public().fingerprint());

    let (c, req_pq) = ClientHandshake::start(pin, ClientId::new("alice").unwrap(), &mut client_rng);
    let (mut pending, res_pq) = server.handle_req_pq(&req_pq, now, &mut server_rng).unwrap();
    let (c, req_dh) = c.handle_res_pq(&res_pq).unwrap();
    let server_dh = server
        .handle_req_dh_params(&mut pending, &req_dh, now, &mut server_rng)
        .unwrap();
    let (c, set_dh) = c
        .handle_server_dh_params(&server_dh, now, &mut client_rng)
        .unwrap();
    let (est, dh_gen_ok) = server
        .handle_set_client_dh_params(pending, &set_dh, now, &mut server_rng)
        .unwrap();
    let mut session = c.handle_dh_gen_ok(&dh_gen_ok).unwrap();
    assert_eq!(session.auth_key(), &est.auth_key, "both sides hold the same key");
    let first = session
        .encode_request(br#"{"method":"publish_key"}"#, now, &mut client_rng)
        .unwrap();

    json!({
        "server_public_key": hex::encode(key.public().as_bytes()),
        "req_pq": req_pq,
        "res_pq": res_pq,
        "req_dh_params": req_dh,
        "server_dh_params": server_dh,
        "set_client_dh_params": set_dh,
        "dh_gen_ok": dh_gen_ok,
        "auth_key_id": est.auth_key.id().to_hex(),
        "first_envelope": { "msg_id": first.msg_id.0, "packet": hex::encode(&first.packet) },
    })
}

const STORED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/vectors/handshake_transcript.json"
);

#[test]
fn the_handshake_and_first_envelope_match_the_stored_transcript_byte_for_byte() {
    let got = transcript();
    assert_eq!(got, transcript(), "seeded runs are identical");
    if std::env::var_os("MTPROTO_WRITE_TRANSCRIPT").is_some() {
        std::fs::write(STORED, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
        panic!("wrote {STORED}; run again without MTPROTO_WRITE_TRANSCRIPT");
    }
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(STORED).unwrap()).unwrap();
    for (step, value) in stored.as_object().unwrap() {
        assert_eq!(&got[step], value, "{step} differs from the stored transcript");
    }
    assert_eq!(got, stored);
}

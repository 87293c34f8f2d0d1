//! The handshake in memory, both sides, with every rule broken once.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use mtproto_crypto::{rand_core::OsRng, DhGroup, ServerSigningKey};
use mtproto_session::{
    handshake::HANDSHAKE_TTL_SECS, wire::Hex, AwaitingDhGen, AwaitingDhParams, ClientHandshake, ClientId,
    ClientSession, DhGenOk, HandshakeError, PendingHandshake, ReqDhParams, ServerDhParams, ServerHandshake,
    ServerPin, SetClientDhParams, UnixTime,
};

struct Pair {
    key: ServerSigningKey,
    group: DhGroup,
    now: UnixTime,
}

impl Pair {
    fn new() -> Self {
        Self {
            key: ServerSigningKey::generate(&mut OsRng),
            group: DhGroup::mtproto(),
            now: UnixTime::from_secs(1_800_000_000),
        }
    }
    fn server(&self) -> ServerHandshake<'_> {
        ServerHandshake::new(&self.key, &self.group)
    }
    fn pin(&self) -> ServerPin {
        ServerPin::Fingerprint(self.key.public().fingerprint())
    }
    /// Runs up to the answer of req_dh_params.
    fn to_dh_params(&self, pin: ServerPin) -> (AwaitingDhParams, ReqDhParams, PendingHandshake) {
        let (c, req) = ClientHandshake::start(pin, ClientId::new("alice").unwrap(), &mut OsRng);
        let (pending, res) = self.server().handle_req_pq(&req, self.now, &mut OsRng).unwrap();
        let (c, req) = c.handle_res_pq(&res).unwrap();
        (c, req, pending)
    }
    fn to_client_dh(&self) -> (AwaitingDhGen, SetClientDhParams, PendingHandshake, ServerDhParams) {
        let (c, req, mut pending) = self.to_dh_params(self.pin());
        let res = self
            .server()
            .handle_req_dh_params(&mut pending, &req, self.now, &mut OsRng)
            .unwrap();
        let (c, req) = c.handle_server_dh_params(&res, self.now, &mut OsRng).unwrap();
        (c, req, pending, res)
    }
    fn full(&self) -> (ClientSession, mtproto_session::Established) {
        let (c, req, pending, _) = self.to_client_dh();
        let (est, res) = self
            .server()
            .handle_set_client_dh_params(pending, &req, self.now, &mut OsRng)
            .unwrap();
        (c.handle_dh_gen_ok(&res).unwrap(), est)
    }
}

/// Every string (as base64 and as hex, when it decodes) and every byte array in `v`.
fn wire_bytes(v: &serde_json::Value, out: &mut Vec<u8>) {
    use base64::Engine as _;
    match v {
        serde_json::Value::String(s) => {
            out.extend(s.as_bytes());
            out.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .unwrap_or_default(),
            );
            out.extend(hex::decode(s).unwrap_or_default());
        }
        serde_json::Value::Array(items) if items.iter().all(serde_json::Value::is_u64) => {
            out.extend(
                items
                    .iter()
                    .filter_map(|i| i.as_u64())
                    .filter_map(|b| u8::try_from(b).ok()),
            );
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| wire_bytes(i, out)),
        serde_json::Value::Object(fields) => fields.values().for_each(|f| wire_bytes(f, out)),
        _ => {}
    }
}

#[test]
fn full_handshake_agrees_and_never_sends_the_key() {
    let pair = Pair::new();
    let (c, req, pending, dh_params) = pair.to_client_dh();
    let (est, res) = pair
        .server()
        .handle_set_client_dh_params(pending, &req, pair.now, &mut OsRng)
        .unwrap();
    // Every byte the server sent, decoded as the wire carries it (base64 strings, hex strings,
    // byte arrays): no 8-byte run of the auth key is in any of them.
    let sent = [
        serde_json::to_value(&res).unwrap(),
        serde_json::to_value(&dh_params).unwrap(),
        serde_json::to_value(&req).unwrap(),
    ];
    let mut decoded = Vec::new();
    for v in &sent {
        wire_bytes(v, &mut decoded);
    }
    assert!(
        decoded.len() > 256,
        "the DH values were decoded: {}",
        decoded.len()
    );
    let key = est.auth_key.expose_secret();
    for window in key.windows(8) {
        assert!(
            !decoded.windows(8).any(|w| w == window),
            "the auth key must never cross the wire"
        );
    }
    assert_eq!(res.status, "Auth key established");
    let client = c.handle_dh_gen_ok(&res).unwrap();
    assert_eq!(client.auth_key(), &est.auth_key);
    assert_eq!(client.session_id(), est.session.session_id());
    assert_eq!(est.client_id.as_str(), "alice");
    assert_eq!(client.server_key(), &pair.key.public());
}

#[test]
fn wrong_nonces_are_refused_at_every_step() {
    let pair = Pair::new();
    // resPQ with another nonce.
    let (c, req) = ClientHandshake::start(pair.pin(), ClientId::new("a").unwrap(), &mut OsRng);
    let (_, mut res) = pair.server().handle_req_pq(&req, pair.now, &mut OsRng).unwrap();
    res.nonce.0[0] ^= 1;
    assert_eq!(
        c.handle_res_pq(&res).unwrap_err(),
        HandshakeError::NonceMismatch { which: "nonce" }
    );
    // req_dh_params with another server_nonce.
    let (_, mut req, mut pending) = pair.to_dh_params(pair.pin());
    req.server_nonce.0[3] ^= 1;
    assert_eq!(
        pair.server()
            .handle_req_dh_params(&mut pending, &req, pair.now, &mut OsRng)
            .unwrap_err(),
        HandshakeError::NonceMismatch {
            which: "server_nonce"
        }
    );
    // server_DH_params with another nonce.
    let (c, req, mut pending) = pair.to_dh_params(pair.pin());
    let mut res = pair
        .server()
        .handle_req_dh_params(&mut pending, &req, pair.now, &mut OsRng)
        .unwrap();
    res.nonce.0[15] ^= 1;
    assert!(matches!(
        c.handle_server_dh_params(&res, pair.now, &mut OsRng),
        Err(HandshakeError::NonceMismatch { .. })
    ));
    // set_client_dh_params with another nonce.
    let (_, mut req, pending, _) = pair.to_client_dh();
    req.nonce.0[0] ^= 0x80;
    assert!(matches!(
        pair.server()
            .handle_set_client_dh_params(pending, &req, pair.now, &mut OsRng),
        Err(HandshakeError::NonceMismatch { which: "nonce" })
    ));
}

#[test]
fn bad_proof_of_work_is_refused_before_dh_work() {
    let pair = Pair::new();
    let (_, mut req, mut pending) = pair.to_dh_params(pair.pin());
    let before = format!("{:?}", pending.stage);
    std::mem::swap(&mut req.p, &mut req.q);
    assert_eq!(
        pair.server()
            .handle_req_dh_params(&mut pending, &req, pair.now, &mut OsRng)
            .unwrap_err(),
        HandshakeError::BadProofOfWork
    );
    req.p = Hex(vec![0, 1]); // not minimal
    assert!(matches!(
        pair.server()
            .handle_req_dh_params(&mut pending, &req, pair.now, &mut OsRng),
        Err(HandshakeError::Malformed { field: "q" | "p", .. })
    ));
    assert_eq!(format!("{:?}", pending.stage), before, "no DH secret drawn");
}

#[test]
fn a_server_nonce_serves_once_and_steps_cannot_be_skipped_or_repeated() {
    let pair = Pair::new();
    let (_, req, mut pending) = pair.to_dh_params(pair.pin());
    pair.server()
        .handle_req_dh_params(&mut pending, &req, pair.now, &mut OsRng)
        .unwrap();
    assert!(matches!(
        pair.server()
            .handle_req_dh_params(&mut pending, &req, pair.now, &mut OsRng),
        Err(HandshakeError::StepOutOfOrder {
            expected: "set_client_dh_params",
            got: "req_dh_params"
        })
    ));
    // set_client_dh_params straight after req_pq.
    let (_, _, pending2) = pair.to_dh_params(pair.pin());
    let (_, req3, _, _) = pair.to_client_dh();
    let mut req3 = req3;
    req3.nonce = mtproto_session::wire::Bytes(pending2.nonce.to_vec());
    req3.server_nonce = mtproto_session::wire::Bytes(pending2.server_nonce.to_vec());
    assert!(matches!(
        pair.server()
            .handle_set_client_dh_params(pending2, &req3, pair.now, &mut OsRng),
        Err(HandshakeError::StepOutOfOrder {
            expected: "req_dh_params",
            got: "set_client_dh_params"
        })
    ));
}

#[test]
fn expired_handshakes_are_refused() {
    let pair = Pair::new();
    let (_, req, mut pending) = pair.to_dh_params(pair.pin());
    let late = pair.now.plus_secs(HANDSHAKE_TTL_SECS);
    assert_eq!(
        pair.server()
            .handle_req_dh_params(&mut pending, &req, late, &mut OsRng)
            .unwrap_err(),
        HandshakeError::Expired
    );
    let (_, req, pending, _) = pair.to_client_dh();
    assert!(matches!(
        pair.server()
            .handle_set_client_dh_params(pending, &req, late, &mut OsRng),
        Err(HandshakeError::Expired)
    ));
}

#[test]
fn g_b_out_of_range_is_refused() {
    let pair = Pair::new();
    for bad in [
        vec![0u8; 256],
        {
            let mut v = vec![0u8; 256];
            v[255] = 1;
            v
        },
        mtproto_crypto::MTPROTO_DH_PRIME.to_vec(),
        vec![1u8; 255],
    ] {
        let (_, mut req, pending, _) = pair.to_client_dh();
        req.g_b = Hex(bad);
        assert!(matches!(
            pair.server()
                .handle_set_client_dh_params(pending, &req, pair.now, &mut OsRng),
            Err(HandshakeError::Dh(_) | HandshakeError::Malformed { .. })
        ));
    }
}

#[test]
fn forged_signature_and_unpinned_servers_are_refused() {
    let pair = Pair::new();
    // A flipped signature bit.
    let (c, req, mut pending) = pair.to_dh_params(pair.pin());
    let mut res = pair
        .server()
        .handle_req_dh_params(&mut pending, &req, pair.now, &mut OsRng)
        .unwrap();
    res.signature.0[10] ^= 1;
    assert_eq!(
        c.handle_server_dh_params(&res, pair.now, &mut OsRng).unwrap_err(),
        HandshakeError::BadSignature
    );
    // A changed g_a with the original signature (a man in the middle).
    let (c, req, mut pending) = pair.to_dh_params(pair.pin());
    let mut res = pair
        .server()
        .handle_req_dh_params(&mut pending, &req, pair.now, &mut OsRng)
        .unwrap();
    res.g_a.0[100] ^= 1;
    assert_eq!(
        c.handle_server_dh_params(&res, pair.now, &mut OsRng).unwrap_err(),
        HandshakeError::BadSignature
    );
    // Another server (its own valid signature) while the client pins ours.
    let impostor = Pair {
        key: ServerSigningKey::generate(&mut OsRng),
        ..Pair::new()
    };
    let (c, req) = ClientHandshake::start(pair.pin(), ClientId::new("a").unwrap(), &mut OsRng);
    let (_, res) = impostor
        .server()
        .handle_req_pq(&req, pair.now, &mut OsRng)
        .unwrap();
    assert!(matches!(
        c.handle_res_pq(&res),
        Err(HandshakeError::UntrustedServer { .. })
    ));
    // The impostor lies about its fingerprint in resPQ but must sign with its own key.
    let (c, req) = ClientHandshake::start(pair.pin(), ClientId::new("a").unwrap(), &mut OsRng);
    let (mut pending, mut res) = impostor
        .server()
        .handle_req_pq(&req, pair.now, &mut OsRng)
        .unwrap();
    res.fingerprint = Hex(pair.key.public().fingerprint().as_bytes().to_vec());
    let (c, req) = c.handle_res_pq(&res).unwrap();
    let res = impostor
        .server()
        .handle_req_dh_params(&mut pending, &req, pair.now, &mut OsRng)
        .unwrap();
    assert!(matches!(
        c.handle_server_dh_params(&res, pair.now, &mut OsRng),
        Err(HandshakeError::UntrustedServer { .. })
    ));
    // Trust on first use accepts any key and reports it.
    let (c, req, mut pending) = impostor.to_dh_params(ServerPin::TrustOnFirstUse);
    let res = impostor
        .server()
        .handle_req_dh_params(&mut pending, &req, impostor.now, &mut OsRng)
        .unwrap();
    let (c, _) = c.handle_server_dh_params(&res, impostor.now, &mut OsRng).unwrap();
    assert_eq!(c.server_key(), &impostor.key.public());
}

fn tampered(f: impl Fn(&mut DhGenOk)) -> HandshakeError {
    let pair = Pair::new();
    let (c, req, pending, _) = pair.to_client_dh();
    let (_, mut res) = pair
        .server()
        .handle_set_client_dh_params(pending, &req, pair.now, &mut OsRng)
        .unwrap();
    f(&mut res);
    c.handle_dh_gen_ok(&res).unwrap_err()
}

#[test]
fn tampered_key_confirmation_is_refused() {
    assert_eq!(
        tampered(|r| r.key_confirmation.0[0] ^= 1),
        HandshakeError::KeyConfirmation
    );
    assert_eq!(
        tampered(|r| r.auth_key_id.0[7] ^= 1),
        HandshakeError::KeyConfirmation
    );
    // session_id and salt are bound into the confirmation.
    assert_eq!(
        tampered(|r| r.session_id.0[0] ^= 1),
        HandshakeError::KeyConfirmation
    );
    assert_eq!(tampered(|r| r.salt.0[0] ^= 1), HandshakeError::KeyConfirmation);
    assert!(matches!(
        tampered(|r| r.salt.0.push(0)),
        HandshakeError::Malformed { .. }
    ));
}

#[test]
fn a_changed_client_id_fails_the_confirmation() {
    let pair = Pair::new();
    let (c, mut req, pending, _) = pair.to_client_dh();
    req.client_id = ClientId::new("mallory").unwrap();
    let (est, res) = pair
        .server()
        .handle_set_client_dh_params(pending, &req, pair.now, &mut OsRng)
        .unwrap();
    assert_eq!(est.client_id.as_str(), "mallory");
    assert_eq!(
        c.handle_dh_gen_ok(&res).unwrap_err(),
        HandshakeError::KeyConfirmation
    );
}

#[test]
fn pending_state_survives_serialization() {
    let pair = Pair::new();
    let (c, req, mut pending) = pair.to_dh_params(pair.pin());
    let res = pair
        .server()
        .handle_req_dh_params(&mut pending, &req, pair.now, &mut OsRng)
        .unwrap();
    let json = serde_json::to_string(&pending).unwrap();
    assert!(
        format!("{pending:?}").contains("redacted"),
        "the DH secret never prints"
    );
    let restored: PendingHandshake = serde_json::from_str(&json).unwrap();
    let (c, req) = c.handle_server_dh_params(&res, pair.now, &mut OsRng).unwrap();
    let (_, res) = pair
        .server()
        .handle_set_client_dh_params(restored, &req, pair.now, &mut OsRng)
        .unwrap();
    c.handle_dh_gen_ok(&res).unwrap();
}

#[test]
fn full_runs_many_times() {
    let pair = Pair::new();
    for _ in 0..3 {
        let (client, est) = pair.full();
        assert_eq!(client.auth_key_id(), est.auth_key.id());
    }
}

//! Vectors shared with the browser client (`tests/browser/interop_vectors.json`): fixed inputs,
//! the bytes this crate produces. The browser test recomputes each with Web Crypto and must get
//! the same bytes. Set `UPDATE_INTEROP_VECTORS=1` to rewrite the file after a deliberate change.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use mtproto_crypto::{
    legacy, AuthKey, ChatKey, Direction, Framing, Layout, Mode, Nonce128, Nonce256, RecoveryCode,
};
use mtproto_session::{handshake::key_confirmation, ClientId, ServerSalt, SessionId};
use serde_json::json;

fn seq(n: usize, mul: u8, add: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(mul).wrapping_add(add))
        .collect()
}

fn compute() -> serde_json::Value {
    let auth_key_bytes = seq(256, 7, 3);
    let auth_key = AuthKey::from_slice(&auth_key_bytes).unwrap();
    // Envelope: salt ‖ session ‖ msg_id ‖ seq_no ‖ len ‖ JSON body, CBC, x = 0 and x = 8.
    let body = br#"{"method":"list_peers"}"#;
    let mut payload = seq(8, 1, 0x10);
    payload.extend(seq(8, 1, 0x20));
    payload.extend(7_000_000_000_000_000_004u64.to_le_bytes());
    payload.extend(3u32.to_le_bytes());
    payload.extend((body.len() as u32).to_le_bytes());
    payload.extend_from_slice(body);
    let pad_len = 12 + (16 - (payload.len() + 12) % 16) % 16;
    let padding = seq(pad_len, 3, 1);
    let env = Framing::new(Mode::Cbc, Layout::MTPROTO_OPAQUE);
    let c2s = env
        .seal_with_padding(&auth_key, Direction::ClientToServer, &payload, &padding)
        .unwrap();
    let s2c = env
        .seal_with_padding(&auth_key, Direction::ServerToClient, &payload, &padding)
        .unwrap();
    // End-to-end packet under a chat key.
    let chat_key_bytes = seq(256, 13, 5);
    let chat_key = ChatKey::from_slice(&chat_key_bytes).unwrap();
    let mut data = seq(8, 1, 0xa0); // random_id
    data.extend(5u32.to_le_bytes());
    data.extend(4u32.to_le_bytes());
    data.extend(1_800_000_000_123u64.to_le_bytes());
    data.extend_from_slice("héllo, world".as_bytes());
    let mut e2e_payload = (data.len() as u32).to_le_bytes().to_vec();
    e2e_payload.extend(&data);
    let pad = 12 + (16 - (e2e_payload.len() + 12) % 16) % 16;
    let e2e_padding = seq(pad, 5, 2);
    let e2e = Framing::new(Mode::Cbc, Layout::LENGTH_PREFIXED);
    let e2e_packet = e2e
        .seal_with_padding(&chat_key, Direction::ServerToClient, &e2e_payload, &e2e_padding)
        .unwrap();
    // Key confirmation over a fixed transcript.
    let g_a = seq(256, 11, 1);
    let g_b = seq(256, 17, 9);
    let nonce = Nonce128::from_slice(&seq(16, 1, 0)).unwrap();
    let server_nonce = Nonce128::from_slice(&seq(16, 1, 0x40)).unwrap();
    let conf = key_confirmation(
        &auth_key,
        &nonce,
        &server_nonce,
        &g_a,
        &g_b,
        &ClientId::new("alice").unwrap(),
        SessionId([1, 2, 3, 4, 5, 6, 7, 8]),
        ServerSalt([9, 10, 11, 12, 13, 14, 15, 16]),
    );
    let nn = Nonce256::from_bytes(seq(32, 1, 0).try_into().unwrap());
    // Account recovery (docs/protocol.md §1 "Recovery"): a fixed code, typed back in another
    // form, its public key, and its proof for a fixed handshake (Ed25519 is deterministic).
    let code = RecoveryCode::parse(&hex::encode(seq(16, 9, 0x31)).to_uppercase()).unwrap();
    let recovery_nonce: [u8; 16] = seq(16, 3, 0x70).try_into().unwrap();
    let recovery_key_id: [u8; 8] = seq(8, 5, 0xc0).try_into().unwrap();
    let proof = code.prove("alice", &recovery_nonce, &recovery_key_id);
    json!({
        "source": "computed by mtproto-session's tests/interop_vectors.rs from the fixed inputs below",
        "auth_key": hex::encode(&auth_key_bytes),
        "auth_key_id": auth_key.id().to_hex(),
        "envelope_payload": hex::encode(&payload),
        "envelope_padding": hex::encode(&padding),
        "envelope_packet_x0": hex::encode(&c2s),
        "envelope_packet_x8": hex::encode(&s2c),
        "chat_key": hex::encode(&chat_key_bytes),
        "e2e_payload": hex::encode(&e2e_payload),
        "e2e_padding": hex::encode(&e2e_padding),
        "e2e_packet_x8": hex::encode(&e2e_packet),
        "fingerprint": chat_key.fingerprint().to_string(),
        "confirmation_inputs": {
            "nonce": nonce.to_hex(), "server_nonce": server_nonce.to_hex(),
            "g_a": hex::encode(&g_a), "g_b": hex::encode(&g_b), "client_id": "alice",
            "session_id": "0102030405060708", "salt": "090a0b0c0d0e0f10"
        },
        "key_confirmation": hex::encode(conf),
        "new_nonce_hash1_plain": hex::encode(legacy::new_nonce_hash(&nn, 1, auth_key.aux_hash())),
        "recovery": {
            "code_bytes": hex::encode(seq(16, 9, 0x31)),
            "code": code.to_string(),
            "public_key": hex::encode(code.public().as_bytes()),
            "client_id": "alice",
            "server_nonce": hex::encode(recovery_nonce),
            "auth_key_id": hex::encode(recovery_key_id),
            "proof": hex::encode(proof),
        },
    })
}

#[test]
fn interop_vectors_match_the_committed_file() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/browser/interop_vectors.json"
    );
    let computed = compute();
    if std::env::var_os("UPDATE_INTEROP_VECTORS").is_some() {
        std::fs::write(path, serde_json::to_string_pretty(&computed).unwrap() + "\n").unwrap();
    }
    let committed: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(
        committed, computed,
        "the Rust output changed: browser and Rust would disagree"
    );
}

//! The double ratchet's forward secrecy and post-compromise security, checked on saved states:
//! no key in a state saved after a message can open it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use base64::Engine as _;
use common::{load, now, saved, started, TestRng};
use mtproto_crypto::{
    hazmat,
    kdf::{hkdf_sha256, hmac_sha256},
    ChatKey, Direction,
};
use mtproto_session::{
    e2e::E2E,
    ratchet::ROOT_INFO,
    ratchet_chat::{PACKET_KEY_LABEL, RATCHET_PREFIX_LEN, START_PREFIX_LEN},
    E2eError,
};

fn ad(p: &common::Peers) -> [u8; 64] {
    let mut ad = [0u8; 64];
    ad[..32].copy_from_slice(p.alice.public().as_bytes());
    ad[32..].copy_from_slice(p.bob.public().as_bytes());
    ad
}

/// Every 32-byte value in a saved state (secret or public), and the static chat key.
fn values_in(json: &str) -> (Vec<[u8; 32]>, Vec<[u8; 256]>) {
    fn walk(v: &serde_json::Value, k32: &mut Vec<[u8; 32]>, k256: &mut Vec<[u8; 256]>) {
        match v {
            serde_json::Value::String(s) => {
                if let Ok(b) = base64::engine::general_purpose::STANDARD.decode(s) {
                    if let Ok(a) = <[u8; 32]>::try_from(b.as_slice()) {
                        k32.push(a);
                    }
                    if let Ok(a) = <[u8; 256]>::try_from(b.as_slice()) {
                        k256.push(a);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, k32, k256)),
            serde_json::Value::Object(o) => o.values().for_each(|x| walk(x, k32, k256)),
            _ => {}
        }
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    walk(&serde_json::from_str(json).unwrap(), &mut a, &mut b);
    (a, b)
}

fn try_key(k: &[u8; 256], frame: &[u8]) -> bool {
    let key = ChatKey::from_bytes(*k);
    [Direction::ClientToServer, Direction::ServerToClient]
        .iter()
        .any(|d| E2E.open(&key, *d, frame).is_ok())
}

fn packet_key(mk: &[u8; 32], ad: &[u8; 64]) -> [u8; 256] {
    let mut k = [0u8; 256];
    hkdf_sha256(PACKET_KEY_LABEL, mk, ad, &mut k).unwrap();
    k
}

/// Whether anything in a saved state opens `packet`: any value as a message key; as a chain key
/// followed up to 20 steps; as a root key with any X25519 of two values (state and header),
/// then up to 3 chain steps (the messages searched for are within 3 of a chain's start); the static chat key as the packet key.
fn state_opens(json: &str, packet: &[u8], ad: &[u8; 64]) -> bool {
    let prefix = if packet[0] == 0x02 {
        START_PREFIX_LEN
    } else {
        RATCHET_PREFIX_LEN
    };
    let frame = &packet[prefix..];
    let header_dh: [u8; 32] = packet[prefix - 40..prefix - 8].try_into().unwrap();
    let (k32, k256) = values_in(json);
    if k256.iter().any(|k| try_key(k, frame)) {
        return true;
    }
    let chain_opens = |ck: [u8; 32], steps: usize| {
        let mut ck = ck;
        (0..steps).any(|_| {
            let mk = *hmac_sha256(&ck, &[&[1]]);
            ck = *hmac_sha256(&ck, &[&[2]]);
            try_key(&packet_key(&mk, ad), frame)
        })
    };
    if k32
        .iter()
        .any(|v| try_key(&packet_key(v, ad), frame) || chain_opens(*v, 20))
    {
        return true;
    }
    let mut publics = k32.clone();
    publics.push(header_dh);
    for rk in &k32 {
        for x in &k32 {
            for y in &publics {
                let Ok(dh) = hazmat::x25519(x, y) else { continue };
                let mut out = [0u8; 64];
                hkdf_sha256(rk, &dh[..], ROOT_INFO, &mut out).unwrap();
                if chain_opens(out[32..].try_into().unwrap(), 3) {
                    return true;
                }
            }
        }
    }
    false
}

#[test]
fn forward_secrecy_for_the_recipient() {
    let (mut p, mut a, mut b) = started(b"fs recipient");
    let ad = ad(&p);
    let n = a.seal(b"message N", now(), &mut p.rng).unwrap();
    let before = saved(&b);
    // Control: the harness does find the key in the state from before N was opened.
    assert!(
        state_opens(&before, &n.packet, &ad),
        "the search must be able to succeed"
    );
    assert_eq!(b.open(&n.packet, now(), &mut p.rng).unwrap().body, b"message N");
    let next = a.seal(b"N+1", now(), &mut p.rng).unwrap();
    b.open(&next.packet, now(), &mut p.rng).unwrap();
    // The whole saved state of the recipient: restored, it refuses N; searched, nothing opens it.
    let after = saved(&b);
    let mut thief = load(&after);
    assert_eq!(
        thief.open(&n.packet, now(), &mut p.rng).unwrap_err(),
        E2eError::MessageKeyGone { n: 1 }
    );
    assert!(!state_opens(&after, &n.packet, &ad));
}

#[test]
fn forward_secrecy_for_the_sender_after_a_dh_step() {
    let (mut p, mut a, mut b) = started(b"fs sender");
    let ad = ad(&p);
    let before = saved(&a);
    let m = a.seal(b"recorded", now(), &mut p.rng).unwrap();
    assert!(
        state_opens(&before, &m.packet, &ad),
        "control: the sender's old state holds the chain"
    );
    b.open(&m.packet, now(), &mut p.rng).unwrap();
    let reply = b.seal(b"reply", now(), &mut p.rng).unwrap();
    a.open(&reply.packet, now(), &mut p.rng).unwrap(); // DH ratchet step for Alice
    let _ = a.seal(b"after the step", now(), &mut p.rng).unwrap();
    assert!(!state_opens(&saved(&a), &m.packet, &ad));
    assert!(!state_opens(&saved(&b), &m.packet, &ad));
}

#[test]
fn post_compromise_security_once_each_side_sent() {
    for steal_alice in [false, true] {
        let (mut p, mut a, mut b) = started(b"pcs");
        let ad = ad(&p);
        // A steady conversation, then the theft of one side's complete state.
        let r = b.seal(b"before", now(), &mut p.rng).unwrap();
        a.open(&r.packet, now(), &mut p.rng).unwrap();
        let stolen = if steal_alice { saved(&a) } else { saved(&b) };
        let mut thief_rng = TestRng::new(b"the thief's own randomness");
        // Each side sends one message after the theft, then the conversation goes on.
        let m1 = a.seal(b"m1", now(), &mut p.rng).unwrap();
        b.open(&m1.packet, now(), &mut p.rng).unwrap();
        let m2 = b.seal(b"m2", now(), &mut p.rng).unwrap();
        a.open(&m2.packet, now(), &mut p.rng).unwrap();
        let mut new = Vec::new();
        for i in 0..3u8 {
            let x = a.seal(&[i], now(), &mut p.rng).unwrap();
            b.open(&x.packet, now(), &mut p.rng).unwrap();
            let y = b.seal(&[i], now(), &mut p.rng).unwrap();
            a.open(&y.packet, now(), &mut p.rng).unwrap();
            new.extend([x.packet, y.packet]);
        }
        // The stolen state is a real copy: it reads the first message sent to it under a key
        // it already held (Bob's m1; Alice's m2, answering her key from before the theft).
        let control = if steal_alice { &m2.packet } else { &m1.packet };
        assert!(load(&stolen).open(control, now(), &mut thief_rng).is_ok());
        // After each side sent one message, it opens none of the new ones: neither following
        // the conversation as a passive thief would, nor one by one, nor by trying every value
        // in it as a message, chain or root key (both directions).
        let to_stolen: Vec<&Vec<u8>> = new.iter().skip(usize::from(!steal_alice)).step_by(2).collect();
        let mut thief = load(&stolen);
        let _ = thief.open(control, now(), &mut thief_rng);
        for pk in to_stolen {
            assert!(thief.open(pk, now(), &mut thief_rng).is_err());
            assert!(load(&stolen).open(pk, now(), &mut thief_rng).is_err());
        }
        if !steal_alice {
            assert!(!state_opens(&stolen, &m2.packet, &ad));
        }
        for pk in &new {
            assert!(
                !state_opens(&stolen, pk, &ad),
                "stolen {}",
                if steal_alice { "Alice" } else { "Bob" }
            );
        }
    }
}

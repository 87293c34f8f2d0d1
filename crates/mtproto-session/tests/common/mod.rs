//! Shared by the ratchet tests: a deterministic RNG and two peers in memory.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::indexing_slicing)]

use mtproto_crypto::rand_core::{CryptoRng, Error as RandError, RngCore};
use mtproto_crypto::{IdentitySecret, IdentitySigningKey};
use mtproto_session::{x3dh::Prekeys, RatchetChat, UnixTime};
use sha2::{Digest, Sha256};

/// A deterministic stream for tests and vectors: block i = SHA-256("mtproto-relay/test-rng/v1" ‖
/// seed ‖ i as u64 LE), the blocks concatenated, bytes handed out in order. A JavaScript
/// implementation reproduces the vectors by drawing the same bytes in the same order.
pub struct TestRng {
    seed: Vec<u8>,
    counter: u64,
    buf: Vec<u8>,
}

impl TestRng {
    pub fn new(seed: &[u8]) -> Self {
        Self {
            seed: seed.to_vec(),
            counter: 0,
            buf: Vec::new(),
        }
    }
}

impl RngCore for TestRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for d in dest {
            if self.buf.is_empty() {
                let block = Sha256::new()
                    .chain_update(b"mtproto-relay/test-rng/v1")
                    .chain_update(&self.seed)
                    .chain_update(self.counter.to_le_bytes())
                    .finalize();
                self.counter += 1;
                self.buf = block.iter().rev().copied().collect();
            }
            *d = self.buf.pop().unwrap();
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), RandError> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for TestRng {}

pub fn now() -> UnixTime {
    UnixTime::from_secs(1_800_000_000)
}

/// Alice and Bob with identities and Bob's prekeys.
pub struct Peers {
    pub alice: IdentitySecret,
    pub bob: IdentitySecret,
    pub bob_signing: IdentitySigningKey,
    pub bob_prekeys: Prekeys,
    pub rng: TestRng,
}

pub fn peers(seed: &[u8]) -> Peers {
    let mut rng = TestRng::new(seed);
    let alice = IdentitySecret::generate(&mut rng);
    let bob = IdentitySecret::generate(&mut rng);
    let bob_signing = IdentitySigningKey::generate(&mut rng);
    let bob_prekeys = Prekeys::new(&bob, &bob_signing, now(), &mut rng);
    Peers {
        alice,
        bob,
        bob_signing,
        bob_prekeys,
        rng,
    }
}

/// A started conversation: Alice sent "hello" with a one-time prekey, Bob accepted it.
pub fn started(seed: &[u8]) -> (Peers, RatchetChat, RatchetChat) {
    let mut p = peers(seed);
    let opk = p.bob_prekeys.generate_one_time(5, &mut p.rng).unwrap().pop();
    let bundle = p.bob_prekeys.bundle(opk);
    let (mut a, _) = RatchetChat::initiate(&p.alice, &bundle, &p.bob.public(), &mut p.rng).unwrap();
    let first = a.seal(b"hello", now(), &mut p.rng).unwrap();
    let (b, acc) = RatchetChat::accept(&p.bob, &mut p.bob_prekeys, &first.packet, now(), &mut p.rng).unwrap();
    assert_eq!(acc.received.body, b"hello");
    (p, a, b)
}

/// Save and restore through JSON, as a client's store would.
pub fn saved(c: &RatchetChat) -> String {
    serde_json::to_string(&c.data()).unwrap()
}

pub fn load(json: &str) -> RatchetChat {
    RatchetChat::restore(serde_json::from_str(json).unwrap()).unwrap()
}

/// A started conversation in which Bob answered once, so Alice's packets carry no start.
pub fn answered(seed: &[u8]) -> (Peers, RatchetChat, RatchetChat) {
    let (mut p, mut a, mut b) = started(seed);
    let r = b.seal(b"answer", now(), &mut p.rng).unwrap();
    a.open(&r.packet, now(), &mut p.rng).unwrap();
    assert!(!a.start_pending());
    (p, a, b)
}
